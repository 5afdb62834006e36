//! Running the real `glance-sync` binary against a config written for the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

pub struct SyncRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl SyncRun {
    pub fn assert_code(&self, code: i32) -> &SyncRun {
        assert_eq!(
            self.code, code,
            "glance-sync exited {} (expected {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// A config with `auth_type = none` clouds at the given URLs and one job `job` from `source` to
/// `targets`. `extra` is appended verbatim (more clouds, filters).
pub fn write_config(
    dir: &Path,
    clouds: &[(&str, &str)],
    source: &str,
    targets: &[&str],
    extra: &str,
) -> PathBuf {
    let mut text = format!("[state]\npath = \"{}\"\n\n", dir.join("state.db").display());
    for (name, url) in clouds {
        text.push_str(&format!(
            "[clouds.{name}]\nauth_type = \"none\"\nimage_endpoint_override = \"{url}\"\n\n"
        ));
    }
    text.push_str(&format!(
        "[[jobs]]\nname = \"job\"\nsource = \"{source}\"\ntargets = [{}]\n\n{extra}",
        targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `glance-sync --config CONFIG ARGS...` to completion (async, so an in-process fake Glance
/// keeps serving meanwhile).
pub async fn glance_sync(config: &Path, args: &[&str]) -> SyncRun {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_glance-sync"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
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

/// `glance-sync plan --format json` parsed.
pub async fn plan_json(config: &Path) -> serde_json::Value {
    let run = glance_sync(config, &["plan", "--format", "json"]).await;
    run.assert_code(0);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("plan JSON: {e}\n{}", run.stdout))
}
