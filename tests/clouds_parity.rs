//! clouds.yaml parity with openstacksdk, by difference: for each case, the same files and
//! environment are given to openstacksdk 4.22 (`get_one`, then the session's image endpoint,
//! through tests/harness/sdk_resolve.py) and to `glance-sync check --format json`, against the
//! harness's real Keystone (whose catalog has Glance in two regions, with public and internal
//! endpoints) and real Glance. What is resolved must agree; the deliberate differences are the
//! cases marked so, and README.md lists them with the reason.
//!
//! Every case runs in a fresh temporary HOME and current directory, with no `OS_*` or `XDG_*`
//! variable but its own; nothing is written outside the temporary directory.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::harness::{RealGlance, harness_dir, repo_root};
use support::keystone::{DEMO_PASSWORD, demo_token, keystone_url};
use support::sync_cli::bin;

/// What the comparison of one case must show.
#[derive(Clone, Copy)]
enum Expect {
    /// Both resolve the same auth URL, user, project, domains, region, interface, TLS
    /// verification and image endpoint (or both refuse the configuration).
    Same,
    /// Deliberate: glance-sync refuses, saying this, where openstacksdk goes on.
    OursRefuses(&'static str),
    /// Deliberate: glance-sync resolves and reaches Keystone where openstacksdk cannot.
    OursWorks,
}

struct Case {
    name: &'static str,
    /// (path, content): a relative path is under HOME; `cwd/` is the current directory.
    /// `{ks}` becomes Keystone's v3 URL, `{home}` the HOME, `{pw}` demo's password, `{acid}`
    /// and `{acname}` an application credential of demo's, `{secret}` its secret.
    files: &'static [(&'static str, &'static str)],
    env: &'static [(&'static str, &'static str)],
    /// The clouds.yaml cloud glance-sync's `[clouds.c] cloud = ...` names; `$OS_CLOUD` for
    /// openstacksdk's own choice (get_one with no name).
    cloud: &'static str,
    expect: Expect,
}

const DEMO: &str = "auth: {auth_url: '{ks}', username: demo, password: '{pw}', project_name: demo, user_domain_name: Default, project_domain_name: Default}";

const CASES: &[Case] = &[
    // ---- where the files are
    Case {
        name: "clouds.yaml in the current directory",
        files: &[(
            "cwd/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "clouds.yaml in ~/.config/openstack",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-target\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "the current directory wins over ~/.config/openstack",
        files: &[
            (
                "cwd/clouds.yaml",
                "clouds:\n  c:\n    region_name: region-source\n    DEMO\n",
            ),
            (
                ".config/openstack/clouds.yaml",
                "clouds:\n  c:\n    region_name: region-target\n    DEMO\n",
            ),
        ],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "XDG_CONFIG_HOME wins over ~/.config/openstack",
        files: &[
            (
                "xdg/openstack/clouds.yaml",
                "clouds:\n  c:\n    region_name: region-target\n    DEMO\n",
            ),
            (
                ".config/openstack/clouds.yaml",
                "clouds:\n  c:\n    region_name: region-source\n    DEMO\n",
            ),
        ],
        env: &[("XDG_CONFIG_HOME", "{home}/xdg")],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "clouds.yaml only in one XDG_CONFIG_DIRS entry",
        files: &[(
            "site/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-target\n    DEMO\n",
        )],
        env: &[("XDG_CONFIG_DIRS", "{home}/site")],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "clouds.yaml in the second of two XDG_CONFIG_DIRS (openstacksdk searches neither)",
        files: &[(
            "site2/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-target\n    DEMO\n",
        )],
        env: &[("XDG_CONFIG_DIRS", "{home}/site1:{home}/site2")],
        cloud: "c",
        expect: Expect::OursWorks,
    },
    Case {
        name: "clouds.yml",
        files: &[(
            ".config/openstack/clouds.yml",
            "clouds:\n  c:\n    region_name: region-source\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "clouds.json",
        files: &[(
            ".config/openstack/clouds.json",
            r#"{"clouds": {"c": {"region_name": "region-target", "auth": {"auth_url": "{ks}", "username": "demo", "password": "{pw}", "project_name": "demo", "user_domain_name": "Default", "project_domain_name": "Default"}}}}"#,
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "OS_CLIENT_CONFIG_FILE",
        files: &[(
            "elsewhere/my-clouds.yaml",
            "clouds:\n  c:\n    region_name: region-target\n    DEMO\n",
        )],
        env: &[("OS_CLIENT_CONFIG_FILE", "{home}/elsewhere/my-clouds.yaml")],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "OS_CLIENT_CONFIG_FILE naming a missing file (openstacksdk falls back silently)",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    DEMO\n",
        )],
        env: &[("OS_CLIENT_CONFIG_FILE", "{home}/missing.yaml")],
        cloud: "c",
        expect: Expect::OursRefuses("OS_CLIENT_CONFIG_FILE names"),
    },
    Case {
        name: "secure.yaml merged over clouds.yaml",
        files: &[
            (
                ".config/openstack/clouds.yaml",
                "clouds:\n  c:\n    region_name: region-source\n    auth: {auth_url: '{ks}', username: demo, password: wrong, project_name: demo, user_domain_name: Default, project_domain_name: Default}\n",
            ),
            (
                ".config/openstack/secure.yaml",
                "clouds:\n  c:\n    auth: {password: '{pw}'}\n",
            ),
        ],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "secure.yaml and no clouds.yaml",
        files: &[(
            ".config/openstack/secure.yaml",
            "clouds:\n  c:\n    region_name: region-target\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    // ---- environment
    Case {
        name: "the envvars cloud",
        files: &[],
        env: &[
            ("OS_AUTH_URL", "{ks}"),
            ("OS_USERNAME", "demo"),
            ("OS_PASSWORD", "{pw}"),
            ("OS_PROJECT_NAME", "demo"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_PROJECT_DOMAIN_NAME", "Default"),
            ("OS_REGION_NAME", "region-target"),
        ],
        cloud: "envvars",
        expect: Expect::Same,
    },
    Case {
        name: "legacy openrc variables (tenant, endpoint type)",
        files: &[],
        env: &[
            ("OS_AUTH_URL", "{ks}"),
            ("OS_USERNAME", "demo"),
            ("OS_PASSWORD", "{pw}"),
            ("OS_TENANT_NAME", "demo"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_PROJECT_DOMAIN_NAME", "Default"),
            ("OS_REGION_NAME", "region-source"),
            ("OS_ENDPOINT_TYPE", "internalURL"),
        ],
        cloud: "envvars",
        expect: Expect::Same,
    },
    Case {
        name: "OS_CLOUD picks among several clouds",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  a:\n    region_name: region-source\n    DEMO\n  b:\n    region_name: region-target\n    DEMO\n",
        )],
        env: &[("OS_CLOUD", "b")],
        cloud: "$OS_CLOUD",
        expect: Expect::Same,
    },
    Case {
        name: "no cloud named and no OS_CLOUD: the only cloud",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  only:\n    region_name: region-target\n    DEMO\n",
        )],
        env: &[],
        cloud: "$OS_CLOUD",
        expect: Expect::Same,
    },
    Case {
        name: "OS_REGION_NAME does not apply to a named cloud",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    DEMO\n",
        )],
        env: &[("OS_REGION_NAME", "region-target")],
        cloud: "c",
        expect: Expect::Same,
    },
    // ---- authentication
    Case {
        name: "application credential by id",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    auth_type: v3applicationcredential\n    region_name: region-source\n    auth: {auth_url: '{ks}', application_credential_id: '{acid}', application_credential_secret: '{secret}'}\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "application credential by name, user and user domain",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    auth_type: v3applicationcredential\n    region_name: region-target\n    auth: {auth_url: '{ks}', application_credential_name: '{acname}', application_credential_secret: '{secret}', username: demo, user_domain_name: Default}\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "domains by id",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    auth: {auth_url: '{ks}', username: demo, password: '{pw}', project_name: demo, user_domain_id: default, project_domain_id: default}\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "domain_name for both user and project",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    auth: {auth_url: '{ks}', username: demo, password: '{pw}', project_name: demo, domain_name: Default}\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "default_domain_id",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-target\n    auth: {auth_url: '{ks}', username: demo, password: '{pw}', project_name: demo, default_domain_id: default}\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "no domain at all (openstacksdk sends none and Keystone refuses it)",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    auth: {auth_url: '{ks}', username: demo, password: '{pw}', project_name: demo}\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::OursWorks,
    },
    Case {
        name: "top-level project_name wins over auth's, tenant_name alias",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    project_name: demo\n    auth: {auth_url: '{ks}', username: demo, password: '{pw}', tenant_name: other, user_domain_name: Default, project_domain_name: Default}\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "auth keys at the top level and auth_url without /v3",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-target\n    auth_url: '{ks_root}'\n    username: demo\n    password: '{pw}'\n    project_name: demo\n    user_domain_name: Default\n    project_domain_name: Default\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    // ---- regions and interfaces of the image service
    Case {
        name: "regions listed: the first wins over region_name",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    regions: [region-target, region-source]\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "regions listed without region_name",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    regions: [region-source, region-target]\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "regions as name and values",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    regions:\n      - name: region-target\n        values: {image_interface: internal}\n      - name: region-source\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "image_region_name over region_name",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    image_region_name: region-target\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "interface internal",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    interface: internal\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "endpoint_type internalURL beats interface",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-target\n    interface: public\n    endpoint_type: internalURL\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "image_interface over interface",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    interface: public\n    image_interface: internal\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "image_endpoint_override",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    image_endpoint_override: 'http://127.0.0.1:19393'\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "no region with the image service in two regions (openstacksdk takes the first)",
        files: &[(".config/openstack/clouds.yaml", "clouds:\n  c:\n    DEMO\n")],
        env: &[],
        cloud: "c",
        expect: Expect::OursRefuses("no region is chosen"),
    },
    // ---- profiles and YAML
    Case {
        name: "profile from clouds-public.yaml",
        files: &[
            (
                ".config/openstack/clouds-public.yaml",
                "public-clouds:\n  harness:\n    auth: {auth_url: '{ks}', user_domain_name: Default, project_domain_name: Default}\n    regions: [region-target, region-source]\n",
            ),
            (
                ".config/openstack/clouds.yaml",
                "clouds:\n  c:\n    profile: harness\n    auth: {username: demo, password: '{pw}', project_name: demo}\n",
            ),
        ],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "a vendor profile of the installed openstacksdk",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    profile: limestonenetworks\n    auth: {username: demo, password: '{pw}', project_name: demo, user_domain_name: Default, project_domain_name: Default}\n",
        )],
        // Where glance-sync finds openstacksdk's own profiles: the harness's virtualenv.
        env: &[("VIRTUAL_ENV", "{venv}")],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "an unknown profile (openstacksdk only warns)",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    profile: nosuch\n    region_name: region-source\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::OursRefuses("which is unknown"),
    },
    Case {
        name: "YAML anchors and merge keys",
        files: &[(
            ".config/openstack/clouds.yaml",
            "base: &base\n  region_name: region-source\n  auth: &auth {auth_url: '{ks}', username: demo, password: '{pw}', user_domain_name: Default, project_domain_name: Default}\nclouds:\n  c:\n    <<: *base\n    region_name: region-target\n    auth:\n      <<: *auth\n      project_name: demo\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    // ---- TLS
    Case {
        name: "insecure: true",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    insecure: true\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "verify: false",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-source\n    verify: false\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
    Case {
        name: "cacert under ~",
        files: &[(
            ".config/openstack/clouds.yaml",
            "clouds:\n  c:\n    region_name: region-target\n    cacert: ~/ca.pem\n    DEMO\n",
        )],
        env: &[],
        cloud: "c",
        expect: Expect::Same,
    },
];

/// Substitutions shared by every case.
struct Fixture {
    ks: String,
    acid: String,
    acname: String,
    secret: String,
}

impl Fixture {
    fn fill(&self, text: &str, home: &Path) -> String {
        text.replace("DEMO", DEMO)
            .replace("{ks_root}", &keystone_url())
            .replace("{ks}", &self.ks)
            .replace("{home}", &home.display().to_string())
            .replace("{pw}", DEMO_PASSWORD)
            .replace("{acid}", &self.acid)
            .replace("{acname}", &self.acname)
            .replace("{secret}", &self.secret)
            .replace(
                "{venv}",
                &harness_dir().join("venv-glance").display().to_string(),
            )
    }
}

/// An application credential of demo's, made for this run.
async fn application_credential() -> (String, String, String) {
    let (token, body) = demo_token().await;
    let user = body["token"]["user"]["id"].as_str().unwrap().to_string();
    let name = format!("parity-{}", uuid::Uuid::new_v4());
    let secret = "parity-secret".to_string();
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/v3/users/{user}/application_credentials",
            keystone_url()
        ))
        .header("X-Auth-Token", &token)
        .json(&json!({"application_credential": {"name": name, "secret": secret}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let created: Value = resp.json().await.unwrap();
    let id = created["application_credential"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    (id, name, secret)
}

/// A command with only the case's environment: HOME, the current directory, PATH.
fn isolated(program: &Path, home: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(home.join("cwd"))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn json_of(out: std::process::Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The fields both must agree on, normalised (trailing slashes, `URL` suffixes, an empty
/// region as none, TLS verification as false, true or a CA path).
fn comparable(v: &Value) -> Value {
    let s = |k: &str| v[k].as_str().map(|x| x.trim_end_matches('/').to_string());
    let endpoint = s("image_endpoint").map(|e| e.trim_end_matches("/v2").to_string());
    json!({
        "auth_url": s("auth_url"),
        "username": s("username"),
        "user_domain_id": s("user_domain_id"),
        "user_domain_name": s("user_domain_name"),
        "project_id": s("project_id"),
        "project_name": s("project_name"),
        "project_domain_id": s("project_domain_id"),
        "project_domain_name": s("project_domain_name"),
        "application_credential_id": s("application_credential_id"),
        "application_credential_name": s("application_credential_name"),
        "region_name": s("region_name").filter(|r| !r.is_empty()),
        "interface": s("interface").map(|i| i.trim_end_matches("URL").to_string()),
        "verify": v["verify"].clone(),
        "image_endpoint": endpoint,
    })
}

/// glance-sync's answer in the same shape as openstacksdk's.
fn ours_as_sdk(cloud: &Value) -> Value {
    let mut v = cloud.clone();
    // openstacksdk's verify is false, true, or the CA file it verifies with.
    v["verify"] = match (cloud["verify"].as_bool(), cloud["cacert"].as_str()) {
        (Some(false), _) => json!(false),
        (_, Some(ca)) => json!(ca),
        _ => json!(true),
    };
    // The token-scoped project for credentials that name none (application credentials).
    v
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn glance_sync_resolves_clouds_yaml_as_openstacksdk_does() {
    let env = [("GLANCE_AUTH", "keystone")];
    let _src = RealGlance::start_with("parity-src", Some(19392), &env);
    let _dst = RealGlance::start_with("parity-dst", Some(19393), &env);
    let (acid, acname, secret) = application_credential().await;
    let fixture = Fixture {
        ks: format!("{}/v3", keystone_url()),
        acid,
        acname,
        secret,
    };
    let python = harness_dir().join("venv-glance/bin/python");
    let resolver = repo_root().join("tests/harness/sdk_resolve.py");
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        std::fs::create_dir_all(home.join("cwd")).unwrap();
        for (path, content) in case.files {
            let path = home.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, fixture.fill(content, home)).unwrap();
        }
        let ca = home.join("ca.pem");
        std::fs::write(&ca, TEST_CA).unwrap();
        let env: Vec<(String, String)> = case
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), fixture.fill(v, home)))
            .collect();

        let sdk_cloud = if case.cloud == "$OS_CLOUD" {
            ""
        } else {
            case.cloud
        };
        let sdk = json_of(
            isolated(&python, home, &env)
                .arg(&resolver)
                .arg(sdk_cloud)
                .output()
                .unwrap(),
            case.name,
        );

        let config = home.join("glance-sync.toml");
        std::fs::write(
            &config,
            format!(
                "[state]\npath = \"{}\"\n\n[clouds.c]\ncloud = \"{}\"\n\n[clouds.other]\n\
                 auth_type = \"none\"\nimage_endpoint_override = \"http://127.0.0.1:19392\"\n\n\
                 [[jobs]]\nname = \"j\"\nsource = \"c\"\ntargets = [\"other\"]\n",
                home.join("state.db").display(),
                case.cloud
            ),
        )
        .unwrap();
        let out = isolated(&bin(), home, &env)
            .args(["--config"])
            .arg(&config)
            .args(["check", "--format", "json"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let ours: Option<Value> = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .map(|v| v["clouds"]["c"].clone());

        let sdk_ok = sdk.get("error").is_none() && sdk.get("image_endpoint_error").is_none();
        let ours_ok = ours.as_ref().is_some_and(|c| c["ok"] == true);
        let verdict = match case.expect {
            Expect::Same => match (&ours, sdk.get("error")) {
                (Some(o), None)
                    if comparable(&ours_as_sdk(o)) == comparable(&sdk) && ours_ok == sdk_ok =>
                {
                    Ok(())
                }
                (None, Some(_)) => Ok(()), // both refuse the configuration
                _ => Err(format!(
                    "differs\n  openstacksdk: {}\n  glance-sync:  {}\n  glance-sync stderr: {stderr}",
                    comparable(&sdk),
                    ours.as_ref()
                        .map(|o| comparable(&ours_as_sdk(o)).to_string())
                        .unwrap_or_else(|| "refused".into())
                )),
            },
            Expect::OursRefuses(said) => {
                let refused = !ours_ok
                    && (stderr.contains(said)
                        || ours.as_ref().is_some_and(|o| {
                            o["error"].as_str().is_some_and(|e| e.contains(said))
                        }));
                if refused && sdk_ok {
                    Ok(())
                } else {
                    Err(format!(
                        "expected glance-sync to refuse ({said}) where openstacksdk works; \
                         openstacksdk: {sdk}\n  glance-sync: {ours:?}\n  stderr: {stderr}"
                    ))
                }
            }
            Expect::OursWorks => {
                if ours_ok && !sdk_ok {
                    Ok(())
                } else {
                    Err(format!(
                        "expected glance-sync to work where openstacksdk fails; openstacksdk: \
                         {sdk}\n  glance-sync: {ours:?}\n  stderr: {stderr}"
                    ))
                }
            }
        };
        report.push(format!(
            "{:<4} {}",
            if verdict.is_ok() { "ok" } else { "FAIL" },
            case.name
        ));
        if let Err(e) = verdict {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    eprintln!("{} cases:\n{}", CASES.len(), report.join("\n"));
    assert!(CASES.len() >= 30);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A CA certificate for the `cacert` case: only its path is compared (Keystone here is plain
/// HTTP), but glance-sync reads and parses it, as openstacksdk's requests would.
const TEST_CA: &str = include_str!("support/test-ca.pem");

#[test]
fn a_clouds_yaml_key_glance_sync_does_not_use_is_warned_about_with_file_and_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    std::fs::create_dir_all(home.join("cwd")).unwrap();
    let clouds = home.join("clouds.yaml");
    std::fs::write(
        &clouds,
        "clouds:\n  c:\n    region_name: r\n    client_side_widget: 3\n    compute_api_version: 2\n    \
         auth: {auth_url: 'http://127.0.0.1:9/v3', username: u, password: p, project_name: p,\n      \
         user_domain_name: D, project_domain_name: D}\n",
    )
    .unwrap();
    let config = home.join("glance-sync.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\npath = \"{}\"\n\n[clouds.c]\ncloud = \"c\"\n\n[clouds.other]\n\
             auth_type = \"none\"\nimage_endpoint_override = \"http://127.0.0.1:9\"\n\n\
             [[jobs]]\nname = \"j\"\nsource = \"c\"\ntargets = [\"other\"]\n",
            home.join("state.db").display()
        ),
    )
    .unwrap();
    let env = [(
        "OS_CLIENT_CONFIG_FILE".to_string(),
        clouds.display().to_string(),
    )];
    let out = isolated(&bin(), home, &env)
        .arg("--config")
        .arg(&config)
        .args(["status"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cloud 'c' in {}", clouds.display()))
            && stderr.contains("key 'client_side_widget' is not used by glance-sync"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("compute_api_version"),
        "another service's key is not noise: {stderr}"
    );
}
