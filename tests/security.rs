//! What glance-sync must never do with credentials and TLS: print or store a secret at any log
//! level, talk to an unverified server unless told to, or leave a secret-bearing config readable by
//! others without a word.
//!
//! `no_secret_appears_in_logs_errors_or_outputs_at_any_level` needs the Keystone that tests/run.sh
//! starts (tests/harness/keystone.sh), whose catalog names Glance on 127.0.0.1:19392
//! (region-source) and :19393 (region-target). The TLS test needs only the `openssl` and `python3`
//! commands: it serves a minimal HTTPS Glance stand-in of its own.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::{RealGlance, free_port};
use support::keystone::{DEMO_PASSWORD, keystone_url};
use support::scenario::seed_source;
use support::sync_cli::{SyncRun, glance_sync};

const PASSWORD: &str = DEMO_PASSWORD;
const WRONG_PASSWORD: &str = "wrong-password-7d1e";
/// Every Fernet token starts with this (version byte 0x80 and a timestamp, base64url).
const FERNET_PREFIX: &str = "gAAAAA";

/// `glance-sync --config CONFIG ARGS...` with extra environment (e.g. `RUST_LOG=trace`, which
/// [`glance_sync`] removes).
async fn glance_sync_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> SyncRun {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_glance-sync"))
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run glance-sync");
    SyncRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---- secrets ----------------------------------------------------------------------------------

/// A project-scoped token for the demo user and the token's body, checked to be a Fernet token.
async fn demo_token() -> (String, Value) {
    let (token, body) = support::keystone::demo_token().await;
    assert!(token.starts_with(FERNET_PREFIX), "not a Fernet token");
    (token, body)
}

/// An application credential of the demo user: (id, secret), or `None` if Keystone's policy does
/// not let the user create one.
async fn create_application_credential(token: &str, user_id: &str) -> Option<(String, String)> {
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/v3/users/{user_id}/application_credentials",
            keystone_url()
        ))
        .header("X-Auth-Token", token)
        .json(&json!({"application_credential": {
            "name": format!("glance-sync-security-{}", uuid::Uuid::new_v4()),
            "description": "tests/security.rs"}}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    if status == 403 {
        eprintln!("Keystone does not let the demo user create application credentials: skipped");
        return None;
    }
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "create application credential: {body}");
    let cred = &body["application_credential"];
    Some((
        cred["id"].as_str().unwrap().to_string(),
        cred["secret"].as_str().unwrap().to_string(),
    ))
}

fn password_cloud(name: &str, region: &str, password: &str) -> String {
    format!(
        "[clouds.{name}]\nauth_type = \"password\"\nregion_name = \"{region}\"\n\
         [clouds.{name}.auth]\nauth_url = \"{}/v3\"\nusername = \"demo\"\npassword = \"{password}\"\n\
         project_name = \"demo\"\nuser_domain_name = \"Default\"\nproject_domain_name = \"Default\"\n\n",
        keystone_url()
    )
}

fn appcred_cloud(name: &str, region: &str, id: &str, secret: &str) -> String {
    format!(
        "[clouds.{name}]\nauth_type = \"v3applicationcredential\"\nregion_name = \"{region}\"\n\
         [clouds.{name}.auth]\nauth_url = \"{}/v3\"\napplication_credential_id = \"{id}\"\n\
         application_credential_secret = \"{secret}\"\n\n",
        keystone_url()
    )
}

fn write_keystone_config(dir: &Path, clouds: &str, job_extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[state]\npath = \"{}\"\n\n{clouds}[[jobs]]\nname = \"sec\"\nsource = \"prod\"\n\
             targets = [\"dr\"]\n{job_extra}",
            dir.join("state.db").display()
        ),
    )
    .unwrap();
    path
}

/// Everything the operator (or a log collector) gets to see, by where it came from.
#[derive(Default)]
struct Seen(Vec<(String, Vec<u8>)>);

impl Seen {
    fn run(&mut self, what: &str, run: &SyncRun) {
        self.0
            .push((format!("{what}: stdout"), run.stdout.clone().into_bytes()));
        self.0
            .push((format!("{what}: stderr"), run.stderr.clone().into_bytes()));
    }

    /// The state database (and its WAL, lock and any metrics textfile) in `dir`: every file but
    /// the config, which holds the secrets by design.
    fn files(&mut self, what: &str, dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() && path.file_name().unwrap() != "config.toml" {
                let bytes = std::fs::read(&path).unwrap();
                self.0
                    .push((format!("{what}: file {}", path.display()), bytes));
            }
        }
    }

    fn assert_nowhere(&self, secrets: &[(&str, &str)]) {
        let mut leaks = Vec::new();
        for (what, bytes) in &self.0 {
            for (name, secret) in secrets {
                assert!(secret.len() >= 6, "{name} is too short to grep for");
                if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                    leaks.push(format!("{what} contains {name}"));
                }
            }
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn no_secret_appears_in_logs_errors_or_outputs_at_any_level() {
    let env = [("GLANCE_AUTH", "keystone")];
    let src = RealGlance::start_with("sec-src", Some(19392), &env);
    let _dst = RealGlance::start_with("sec-dst", Some(19393), &env);
    let (token, token_body) = demo_token().await;
    let user_id = token_body["token"]["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let source = Api::with_token(&src.url, &token);
    seed_source(&source).await;

    let trace = [("RUST_LOG", "trace")];
    let mut seen = Seen::default();

    // Password auth, every command, at debug/trace level and with text and JSON logs.
    let dir = tempfile::tempdir().unwrap();
    let clouds = password_cloud("prod", "region-source", PASSWORD)
        + &password_cloud("dr", "region-target", PASSWORD);
    let cfg = write_keystone_config(dir.path(), &clouds, "");
    let textfile = dir.path().join("metrics.prom");
    let textfile_arg = textfile.to_str().unwrap();

    let r = glance_sync(&cfg, &["-vv", "check"]).await;
    r.assert_code(0);
    seen.run("check -vv", &r);
    let r = glance_sync_env(&cfg, &["check"], &trace).await;
    r.assert_code(0);
    seen.run("check RUST_LOG=trace", &r);
    let r = glance_sync(&cfg, &["-vv", "plan"]).await;
    r.assert_code(0);
    seen.run("plan -vv", &r);
    let r = glance_sync(
        &cfg,
        &["-vv", "--log-format", "json", "plan", "--format", "json"],
    )
    .await;
    r.assert_code(0);
    seen.run("plan -vv --format json", &r);
    let r = glance_sync_env(&cfg, &["run", "--metrics-textfile", textfile_arg], &trace).await;
    r.assert_code(0);
    assert!(!r.stdout.contains("(0 copied"), "{}", r.stdout);
    assert!(r.stderr.contains("TRACE"), "RUST_LOG=trace had no effect");
    seen.run("run RUST_LOG=trace", &r);
    // One more image, so that a -vv run transfers data too.
    source
        .create_with_data(
            image_body("after-first-run", "raw", json!({"visibility": "public"})),
            random_bytes(200 * 1024, 21),
        )
        .await;
    let r = glance_sync(&cfg, &["-vv", "run"]).await;
    r.assert_code(0);
    assert!(r.stdout.contains("(1 copied"), "{}", r.stdout);
    assert!(r.stderr.contains("DEBUG"), "-vv had no effect");
    seen.run("run -vv", &r);
    let r = glance_sync(&cfg, &["-vv", "--log-format", "json", "run"]).await;
    r.assert_code(0);
    seen.run("run -vv --log-format json", &r);
    let r = glance_sync(&cfg, &["-vv", "status"]).await;
    r.assert_code(0);
    seen.run("status -vv", &r);
    let r = glance_sync_env(&cfg, &["status", "--format", "json"], &trace).await;
    r.assert_code(0);
    seen.run("status --format json RUST_LOG=trace", &r);

    // A wrong password: the refusal is reported, the password (right or wrong) is not.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(PASSWORD, WRONG_PASSWORD),
    )
    .unwrap();
    let r = glance_sync(&cfg, &["-vv", "check"]).await;
    r.assert_code(1);
    assert!(
        r.stdout.contains("refused the credentials (HTTP 401)"),
        "{}",
        r.stdout
    );
    seen.run("check -vv, wrong password", &r);
    let r = glance_sync_env(&cfg, &["check"], &trace).await;
    r.assert_code(1);
    seen.run("check RUST_LOG=trace, wrong password", &r);
    let r = glance_sync_env(&cfg, &["run"], &trace).await;
    r.assert_code(1);
    seen.run("run RUST_LOG=trace, wrong password", &r);
    seen.files("password config", dir.path());

    // Application credential auth, if Keystone lets the demo user create one.
    let mut secrets: Vec<(&str, String)> = vec![
        ("the password", PASSWORD.into()),
        ("the wrong password", WRONG_PASSWORD.into()),
        ("the demo user's token", token.clone()),
        ("a Fernet token", FERNET_PREFIX.into()),
    ];
    let (token2, _) = demo_token().await;
    secrets.push(("a second demo token", token2.clone()));
    let appcred_dir = tempfile::tempdir().unwrap();
    if let Some((cred_id, cred_secret)) = create_application_credential(&token2, &user_id).await {
        secrets.push(("the application credential secret", cred_secret.clone()));
        // Keystone checks secrets with bcrypt, which reads only the first 72 bytes: a wrong
        // secret must differ early.
        let wrong_secret = format!("wrong-{cred_secret}");
        let clouds = appcred_cloud("prod", "region-source", &cred_id, &cred_secret)
            + &appcred_cloud("dr", "region-target", &cred_id, &cred_secret);
        // Its own state: only the image seeded now is this job's to copy.
        let cfg = write_keystone_config(
            appcred_dir.path(),
            &clouds,
            "[jobs.filter]\ninclude = [\"appcred-*\"]\n",
        );
        source
            .create_with_data(
                image_body("appcred-only", "raw", json!({"visibility": "public"})),
                random_bytes(100 * 1024, 22),
            )
            .await;
        let r = glance_sync(&cfg, &["-vv", "check"]).await;
        r.assert_code(0);
        seen.run("appcred check -vv", &r);
        let r = glance_sync_env(&cfg, &["plan", "--format", "json"], &trace).await;
        r.assert_code(0);
        seen.run("appcred plan --format json RUST_LOG=trace", &r);
        let r = glance_sync_env(&cfg, &["run"], &trace).await;
        r.assert_code(0);
        assert!(r.stdout.contains("(1 copied"), "{}", r.stdout);
        seen.run("appcred run RUST_LOG=trace", &r);
        let r = glance_sync(&cfg, &["-vv", "run"]).await;
        r.assert_code(0);
        seen.run("appcred run -vv", &r);
        let r = glance_sync(&cfg, &["-vv", "status", "--format", "json"]).await;
        r.assert_code(0);
        seen.run("appcred status -vv", &r);
        std::fs::write(
            &cfg,
            std::fs::read_to_string(&cfg)
                .unwrap()
                .replace(&cred_secret, &wrong_secret),
        )
        .unwrap();
        let r = glance_sync_env(&cfg, &["check"], &trace).await;
        r.assert_code(1);
        assert!(
            r.stdout.contains("refused the credentials (HTTP 401)"),
            "{}",
            r.stdout
        );
        seen.run("appcred check RUST_LOG=trace, wrong secret", &r);
        seen.files("appcred config", appcred_dir.path());
        secrets.push(("the wrong application credential secret", wrong_secret));
    }

    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(n, s)| (*n, s.as_str())).collect();
    seen.assert_nowhere(&secrets);
}

/// A config file holding a password and readable by others gets a warning with the fix; the same
/// file at 0600 does not. (Needs `config::permissions` wired into loading the config.) `status`
/// loads the config and talks to no cloud.
#[tokio::test]
async fn config_with_secrets_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = "hunter2-inline-secret";
    let clouds = format!(
        "[clouds.prod]\nauth_type = \"password\"\n[clouds.prod.auth]\n\
         auth_url = \"http://127.0.0.1:{}/v3\"\nusername = \"demo\"\npassword = \"{secret}\"\n\
         project_name = \"demo\"\n\n\
         [clouds.dr]\nauth_type = \"none\"\nimage_endpoint_override = \"http://127.0.0.1:{}\"\n\n",
        free_port(),
        free_port()
    );
    let cfg = write_keystone_config(dir.path(), &clouds, "");

    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = glance_sync(&cfg, &["status"]).await;
    open.assert_code(0);
    let file = cfg.display().to_string();
    assert!(
        open.stderr.contains(&format!("chmod 600 {file}")),
        "no warning about a 0644 config holding a password:\n--- stdout\n{}\n--- stderr\n{}",
        open.stdout,
        open.stderr
    );
    assert!(open.stderr.contains("0644"), "{}", open.stderr);
    for text in [&open.stdout, &open.stderr] {
        assert!(
            !text.contains(secret),
            "the warning shows the secret: {text}"
        );
    }

    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let closed = glance_sync(&cfg, &["status"]).await;
    closed.assert_code(0);
    assert!(
        !closed.stderr.contains("chmod 600"),
        "warning about a 0600 config: {}",
        closed.stderr
    );
}

// ---- TLS --------------------------------------------------------------------------------------

/// A child process killed (and reaped) when dropped, panics included.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require_command(cmd: &str, version_arg: &str) {
    let ok = Command::new(cmd)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs the `{cmd}` command (Debian: apt-get install {})",
        if cmd == "openssl" {
            "openssl"
        } else {
            "python3"
        }
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`PREFIX-ca.pem`, `PREFIX-ca.key`) in `dir`.
fn make_ca(dir: &Path, prefix: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{prefix}-ca.key"),
            "-out",
            &format!("{prefix}-ca.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=glance-sync test CA {prefix}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `server.pem` / `server.key` for IP 127.0.0.1, signed by the CA `PREFIX-ca`.
fn make_server_cert(dir: &Path, ca_prefix: &str) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca_prefix}-ca.pem"),
            "-CAkey",
            &format!("{ca_prefix}-ca.key"),
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

/// An HTTPS stand-in for Glance: `GET /v2/images...` → `{"images": []}`, anything else 404. Each
/// answered request is appended to `requests.log`. It prints its port once listening, and exits
/// when its stdin closes (so it dies with the test process even if that is killed).
const TLS_GLANCE_PY: &str = r#"
import http.server, json, os, ssl, sys, threading
cert, key, log = sys.argv[1:4]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/v2/images" or self.path.startswith("/v2/images?"):
            code, body = 200, json.dumps({"images": []}).encode()
        else:
            code, body = 404, b'{"error": "not found"}'
        with open(log, "a") as f:
            f.write("GET %s %d\n" % (self.path, code))
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # handshakes refused by the client are the point of the test

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = Server(("127.0.0.1", 0), Handler)
# Handshake in the handler thread, so a client that hangs up cannot stall accept().
srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)

def exit_with_parent():
    sys.stdin.read()
    os._exit(0)

threading.Thread(target=exit_with_parent, daemon=True).start()
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// Starts the stand-in with `server.pem`/`server.key` in `dir`; returns it and its port.
fn start_tls_glance(dir: &Path) -> (KillOnDrop, u16) {
    std::fs::write(dir.join("tls_glance.py"), TLS_GLANCE_PY).unwrap();
    let mut child = KillOnDrop(
        Command::new("python3")
            .arg(dir.join("tls_glance.py"))
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .arg(dir.join("requests.log"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3"),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the HTTPS stand-in did not start (printed {line:?})"));
    (child, port)
}

/// A config whose two clouds (`a` → `b`) both use the stand-in at `url` with `tls` settings, and
/// the default retries: a refused certificate must fail at once, not after retries.
fn tls_config(dir: &Path, url: &str, tls: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let mut text = format!("[state]\npath = \"{}\"\n\n", dir.join("state.db").display());
    for name in ["a", "b"] {
        text.push_str(&format!(
            "[clouds.{name}]\nauth_type = \"none\"\nimage_endpoint_override = \"{url}\"\n{tls}\n"
        ));
    }
    text.push_str("[[jobs]]\nname = \"tls\"\nsource = \"a\"\ntargets = [\"b\"]\n");
    std::fs::write(&path, text).unwrap();
    path
}

fn served(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("requests.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn assert_tls_refused(run: &SyncRun, what: &str) {
    run.assert_code(1);
    let out = format!("{}\n{}", run.stdout, run.stderr).to_lowercase();
    assert!(
        out.contains("certificate") || out.contains("tls"),
        "{what}: the failure does not say it is about TLS:\n--- stdout\n{}\n--- stderr\n{}",
        run.stdout,
        run.stderr
    );
}

#[tokio::test]
async fn tls_is_verified_by_default_and_cacert_is_honoured() {
    require_command("openssl", "version");
    require_command("python3", "--version");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "test");
    make_ca(d, "other");
    make_server_cert(d, "test");
    let (_server, port) = start_tls_glance(d);
    let url = format!("https://127.0.0.1:{port}");
    let ca = d.join("test-ca.pem");
    let other_ca = d.join("other-ca.pem");

    // Default: the system roots, which do not know the test CA. No request gets through.
    let cfg = tls_config(d, &url, "");
    let started = std::time::Instant::now();
    let r = glance_sync(&cfg, &["check"]).await;
    assert_tls_refused(&r, "no cacert");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "a certificate failure was retried ({:?})",
        started.elapsed()
    );
    assert_eq!(
        served(d),
        0,
        "a request reached the server over unverified TLS"
    );

    // cacert replaces the system roots: the right CA works ...
    let cfg = tls_config(d, &url, &format!("cacert = \"{}\"\n", ca.display()));
    let r = glance_sync(&cfg, &["check"]).await;
    r.assert_code(0);
    assert!(
        r.stdout.contains(&format!("a: ok, image endpoint {url}")),
        "{}",
        r.stdout
    );
    assert!(served(d) >= 2, "both clouds probed the server");
    assert!(
        !r.stderr.to_lowercase().contains("verification is off"),
        "{}",
        r.stderr
    );

    // ... another CA does not.
    let before = served(d);
    let cfg = tls_config(d, &url, &format!("cacert = \"{}\"\n", other_ca.display()));
    let r = glance_sync(&cfg, &["check"]).await;
    assert_tls_refused(&r, "cacert of another CA");
    assert_eq!(served(d), before);

    // The certificate names 127.0.0.1, not localhost: the right CA is not enough for another name.
    // (Only where localhost is 127.0.0.1, so that the connection itself succeeds.)
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))
        .is_ok_and(|mut addrs| addrs.any(|a| a == loopback))
    {
        let localhost = format!("https://localhost:{port}");
        let cfg = tls_config(d, &localhost, &format!("cacert = \"{}\"\n", ca.display()));
        let r = glance_sync(&cfg, &["check"]).await;
        assert_tls_refused(&r, "host name not in the certificate");
        assert_eq!(served(d), before);
    }

    // verify = false works with any certificate, and says so on stderr.
    let cfg = tls_config(d, &url, "verify = false\n");
    let r = glance_sync(&cfg, &["check"]).await;
    r.assert_code(0);
    assert!(
        r.stderr
            .to_lowercase()
            .contains("tls certificate verification is off"),
        "no warning that TLS verification is off:\n{}",
        r.stderr
    );
    assert!(served(d) > before);
}
