//! The state database as operators meet it, against real Glance: read by a monitoring account
//! that may not write it, restored from a backup without its `-wal`/`-shm` files, on a full
//! disk, and left behind by a killed run.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::json;
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::real_pair::RealPair;
use support::sync_cli::{command, glance_sync, glance_sync_as, write_config};

/// The user a monitoring account would be: may read, may not write.
const NOBODY: u32 = 65534;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test runs glance-sync as another user (nobody) and mounts a tmpfs: run it as root"
    );
}

/// `dir` and the database in it readable by everyone, writable by root only.
fn read_only_for_others(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

fn assert_reads_state(run: &support::sync_cli::SyncRun, what: &str) {
    run.assert_code(0);
    assert!(
        !run.stderr.contains("readonly") && !run.stdout.contains("readonly"),
        "{what}: {}{}",
        run.stdout,
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn plan_and_status_work_for_a_user_who_cannot_write_the_database() {
    require_root();
    let pair = RealPair::start("sa-ro", "");
    pair.source
        .create_with_data(image_body("img", "raw", json!({})), random_bytes(4096, 1))
        .await;
    let (dir, cfg) = (&pair.dir, &pair.cfg);
    glance_sync(cfg, &["run"]).await.assert_code(0);
    read_only_for_others(dir.path());

    // After a clean run only the database file is left (SQLite removes -wal and -shm).
    let status = glance_sync_as(NOBODY, cfg, &["status"]).await;
    assert_reads_state(&status, "status");
    assert!(status.stdout.contains("success"), "{}", status.stdout);
    let plan = glance_sync_as(NOBODY, cfg, &["plan"]).await;
    assert_reads_state(&plan, "plan");
    assert!(plan.stdout.contains("in sync"), "{}", plan.stdout);

    // While a writer has it open, its -wal and -shm exist (and are not writable by nobody).
    let writer = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    writer
        .execute("INSERT INTO unadopted VALUES ('other', 'x', 0, 'now')", [])
        .unwrap();
    read_only_for_others(dir.path());
    assert_reads_state(
        &glance_sync_as(NOBODY, cfg, &["status"]).await,
        "status (WAL)",
    );
    assert_reads_state(&glance_sync_as(NOBODY, cfg, &["plan"]).await, "plan (WAL)");
    drop(writer);

    // A restore from a backup: the database file alone, in a directory nobody may write.
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("state.db"),
        restored.path().join("state.db"),
    )
    .unwrap();
    read_only_for_others(restored.path());
    let text = std::fs::read_to_string(cfg).unwrap().replace(
        &dir.path().join("state.db").display().to_string(),
        &restored.path().join("state.db").display().to_string(),
    );
    std::fs::write(cfg, text).unwrap();
    assert_reads_state(
        &glance_sync_as(NOBODY, cfg, &["status"]).await,
        "status (restored)",
    );
    let plan = glance_sync_as(NOBODY, cfg, &["plan"]).await;
    assert_reads_state(&plan, "plan (restored)");
    assert!(plan.stdout.contains("in sync"), "{}", plan.stdout);
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Fills the filesystem, leaving `free` bytes.
    fn fill_leaving(&self, free: u64) {
        let stat = nix_statvfs(self.path());
        let avail = stat.0 * stat.1;
        let filler = avail.saturating_sub(free);
        std::fs::write(self.path().join("filler"), vec![0u8; filler as usize]).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

/// (fragment size, available fragments) of the filesystem holding `path`.
fn nix_statvfs(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_frsize, st.f_bavail)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_full_disk_is_reported_as_disk_full_with_the_path() {
    require_root();
    let src = RealGlance::start("sa-full-src");
    let dst = RealGlance::start("sa-full-dst");
    let source = Api::new(&src.url);
    source
        .create_with_data(image_body("first", "raw", json!({})), random_bytes(4096, 2))
        .await;
    let fs = Tmpfs::mount("2m");
    let cfg = write_config(
        fs.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        "",
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    // A new image to record, and room for SQLite's shared-memory file but not for the log.
    source
        .create_with_data(
            image_body("second", "raw", json!({})),
            random_bytes(4096, 3),
        )
        .await;
    fs.fill_leaving(36 * 1024);
    let run = glance_sync(&cfg, &["run"]).await;
    assert_ne!(run.code, 0, "{}", run.stdout);
    let db = fs.path().join("state.db");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains(&format!("state database {}: disk full", db.display())),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_killed_run_shows_as_abandoned_not_running() {
    let pair = RealPair::start("sa-kill", "");
    let img = pair
        .source
        .create_streamed(image_body("big", "raw", json!({})), 512 << 20, 4)
        .await;
    let cfg = &pair.cfg;
    let mut child = command(cfg).arg("run").spawn().unwrap();
    pair.wait_for_copy(img["id"].as_str().unwrap()).await;
    let status = glance_sync(cfg, &["status", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["runs"][0]["result"], "running", "while it runs");
    child.start_kill().unwrap(); // SIGKILL: no chance to record anything
    child.wait().await.unwrap();
    let status = glance_sync(cfg, &["status"]).await;
    status.assert_code(0);
    assert!(status.stdout.contains("abandoned"), "{}", status.stdout);
    assert!(!status.stdout.contains("running"), "{}", status.stdout);
}
