//! Real OpenStack Glance instances for integration tests.
//!
//! Thin wrapper over `tests/harness/glance.sh`: each [`RealGlance`] is one real
//! Glance 33.0.0 API (uWSGI, SQLite, file store) on its own loopback port with
//! its own fresh state under `$GLANCE_SYNC_HARNESS/state/NAME-PORT`; dropping it
//! stops the server and removes that state (`GLANCE_KEEP_STATE=1` keeps it).
//!
//! The venvs come from `tests/harness/install.sh`, which `tests/run.sh` (the
//! project's test command) runs first; tests that need real Glance are marked
//! `#[ignore = "needs real Glance: run tests/run.sh"]` so that a bare
//! `cargo test` stays quick and self-contained.
//!
//! Default auth is "fakeauth": no token means admin of project `admin`;
//! `X-Auth-Token: user:project:role1,role2` acts as that identity, with Glance's
//! real policy checks. With `GLANCE_AUTH=keystone` the instance validates real
//! tokens against `$KEYSTONE_URL` (started by `tests/harness/keystone.sh`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Exit code of `glance.sh start` when the port is already taken.
const PORT_IN_USE: i32 = 3;
/// Attempts with a fresh random port before giving up.
const PORT_ATTEMPTS: usize = 5;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where install.sh put the venvs and where instance state lives:
/// `$GLANCE_SYNC_HARNESS`, default `<repo>/target/harness`.
pub fn harness_dir() -> PathBuf {
    match std::env::var_os("GLANCE_SYNC_HARNESS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target").join("harness"),
    }
}

fn glance_sh() -> PathBuf {
    repo_root().join("tests").join("harness").join("glance.sh")
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0 to pick a free port")
}

fn assert_installed() {
    let h = harness_dir();
    let uwsgi = h.join("venv-glance").join("bin").join("uwsgi");
    let template = h.join("template").join("glance.sqlite");
    if !uwsgi.exists() || !template.exists() {
        panic!(
            "real Glance is not installed under {} (missing {} or {}): \
             run tests/run.sh, which installs real Glance \
             (or tests/harness/install.sh alone)",
            h.display(),
            uwsgi.display(),
            template.display()
        );
    }
}

fn glance_cmd(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(glance_sh())
        .args(args)
        .env("GLANCE_SYNC_HARNESS", harness_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", glance_sh().display()))
}

/// One running real Glance; stopped (and its state removed) on drop.
pub struct RealGlance {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    pub port: u16,
    name: String,
    env: Vec<(String, String)>,
}

impl RealGlance {
    /// Starts a fresh real Glance (fakeauth) on a free loopback port.
    pub fn start(name: &str) -> RealGlance {
        Self::start_with(name, None, &[])
    }

    /// Same with explicit env knobs for `glance.sh`, e.g.
    /// `[("GLANCE_HASH_ALGO", "sha256")]`, or `[("GLANCE_AUTH", "keystone")]` with
    /// the fixed port that Keystone's catalog names (19392/19393 by default).
    /// Knobs: GLANCE_AUTH, KEYSTONE_URL, GLANCE_HASH_ALGO, GLANCE_THREADS,
    /// GLANCE_FORMAT_MATCH, GLANCE_DEBUG, GLANCE_KEEP_STATE, GLANCE_EXTRA_DEFAULT (lines for
    /// `[DEFAULT]`, e.g. `image_size_cap = 1048576`).
    /// Panics (with Glance's log tail) if it does not come up within 60 s.
    pub fn start_with(name: &str, port: Option<u16>, env: &[(&str, &str)]) -> RealGlance {
        assert_installed();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let attempts = if port.is_some() { 1 } else { PORT_ATTEMPTS };
        let mut failures = String::new();
        for attempt in 1..=attempts {
            let port = port.unwrap_or_else(free_port);
            let port_s = port.to_string();
            let out = glance_cmd(&["start", name, &port_s], &env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
                assert!(
                    url.starts_with("http://"),
                    "glance.sh start printed {url:?} instead of a URL; stderr:\n{stderr}"
                );
                return RealGlance {
                    url,
                    port,
                    name: name.to_string(),
                    env,
                };
            }
            failures.push_str(&format!(
                "--- attempt {attempt}, port {port}, {}:\n{stderr}\n",
                out.status
            ));
            if out.status.code() != Some(PORT_IN_USE) {
                break;
            }
        }
        panic!("real Glance {name:?} did not start:\n{failures}");
    }

    /// `self.url` + `path` (path starts with `/`).
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// The instance's state dir (config, DB, image files, logs under `log/`).
    pub fn state_dir(&self) -> PathBuf {
        harness_dir()
            .join("state")
            .join(format!("{}-{}", self.name, self.port))
    }
}

impl RealGlance {
    /// Every request this Glance has answered so far, as "METHOD /path?query (status)", in order,
    /// read from uWSGI's request log (so tests see what reached the server, not what a client
    /// meant to send). The harness's own /healthcheck probes are left out.
    pub fn requests(&self) -> Vec<String> {
        let log = self.state_dir().join("log").join("uwsgi.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // "... [Fri Nov 27 07:18:08 2026] POST /v2/images => generated ... (HTTP/1.1 201) ..."
                let (head, tail) = line.split_once(" => generated ")?;
                let request = head.rsplit_once("] ")?.1;
                let status = tail.split_once("(HTTP/1.1 ")?.1.get(..3)?;
                (!request.starts_with("GET /healthcheck")).then(|| format!("{request} ({status})"))
            })
            .collect()
    }

    /// Every request answered so far with the User-Agent that sent it (the harness logs it in
    /// quotes at the end of each line): tells glance-sync's own requests from another Glance's
    /// pull (glance-download sends `Python-urllib/...`).
    pub fn requests_with_agent(&self) -> Vec<(String, String)> {
        let log = self.state_dir().join("log").join("uwsgi.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (head, tail) = line.split_once(" => generated ")?;
                let request = head.rsplit_once("] ")?.1;
                let agent = tail.trim_end().strip_suffix('"')?.rsplit_once(" \"")?.1;
                (!request.starts_with("GET /healthcheck"))
                    .then(|| (request.to_string(), agent.to_string()))
            })
            .collect()
    }

    /// The requests that could change something: every method but GET and HEAD.
    pub fn write_requests(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| !r.starts_with("GET ") && !r.starts_with("HEAD "))
            .collect()
    }
}

impl Drop for RealGlance {
    fn drop(&mut self) {
        let port = self.port.to_string();
        let out = glance_cmd(&["stop", &self.name, &port], &self.env);
        if !out.status.success() {
            eprintln!(
                "glance.sh stop {} {} failed ({}):\n{}",
                self.name,
                port,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
