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

/// The glance-sync binary the tests run: this build's, or `$GLANCE_SYNC_BIN` (to show that a
/// test fails against an older build).
pub fn bin() -> PathBuf {
    match std::env::var_os("GLANCE_SYNC_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_glance-sync")),
    }
}

/// `glance-sync --config CONFIG` with a clean environment for logs, ready for its arguments.
pub fn command(config: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// Runs `glance-sync --config CONFIG ARGS...` to completion (async, so an in-process fake Glance
/// keeps serving meanwhile).
pub async fn glance_sync(config: &Path, args: &[&str]) -> SyncRun {
    finish(command(config).args(args)).await
}

/// The binary, copied once per test process into a directory anyone may read, so that another
/// user can run it whatever the permissions of the checkout it was built in.
pub fn bin_for_any_user() -> &'static Path {
    use std::os::unix::fs::PermissionsExt;
    static BIN: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, exe) = BIN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.path().join("glance-sync");
        std::fs::copy(bin(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, exe)
    });
    exe
}

/// The same as another user (uid = gid = `uid`), with the config's directory made readable to it.
pub async fn glance_sync_as(uid: u32, config: &Path, args: &[&str]) -> SyncRun {
    use std::os::unix::fs::PermissionsExt;
    let dir = config.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = tokio::process::Command::new(bin_for_any_user());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .env("HOME", "/nonexistent")
        .current_dir("/")
        .stdin(Stdio::null())
        .uid(uid)
        .gid(uid);
    finish(&mut cmd).await
}

/// Waits for a prepared glance-sync command and collects what it printed. A process killed by
/// signal N gets code 128 + N, as a shell (and systemd's log) reports it.
pub async fn finish(cmd: &mut tokio::process::Command) -> SyncRun {
    use std::os::unix::process::ExitStatusExt;
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot start glance-sync: {e}"));
    SyncRun {
        code: out
            .status
            .code()
            .or_else(|| out.status.signal().map(|s| 128 + s))
            .unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `[clouds.NAME]` sections for `auth_type = none` clouds at the given URLs, each working as
/// project `project` when given (real Glance's fakeauth makes a token-less caller admin of
/// project `admin`).
pub fn clouds_toml(clouds: &[(&str, &str)], project: Option<&str>) -> String {
    let mut text = String::new();
    for (name, url) in clouds {
        text.push_str(&format!(
            "[clouds.{name}]\nauth_type = \"none\"\nimage_endpoint_override = \"{url}\"\n"
        ));
        if let Some(p) = project {
            text.push_str(&format!("project_id = \"{p}\"\n"));
        }
        text.push('\n');
    }
    text
}

/// `glance-sync plan --format json` parsed.
pub async fn plan_json(config: &Path) -> serde_json::Value {
    let run = glance_sync(config, &["plan", "--format", "json"]).await;
    run.assert_code(0);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("plan JSON: {e}\n{}", run.stdout))
}
