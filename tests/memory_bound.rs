//! Memory stays bounded whatever the image size: a 2 GiB image streams from a fake source to a fake
//! target (neither is the bottleneck nor keeps the bytes) and the glance-sync process's peak RSS,
//! measured by the kernel (wait4's ru_maxrss), stays under 64 MiB.

mod support;

use std::process::{Command, Stdio};

use support::fake_glance::{FakeGlance, FakeOptions, ImageData, ImageSpec};
use support::sync_cli::write_config;

const SIZE: u64 = 2 << 30;
const LIMIT_KIB: i64 = 64 * 1024;

/// Runs glance-sync to completion and returns (exit code, peak RSS in KiB, stdout).
// The child is reaped by wait4 (which also yields its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn run_measured(config: &std::path::Path) -> (i32, i64, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_glance-sync"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn glance-sync");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let mut status = 0;
    // SAFETY: plain FFI call; `rusage` is a POD struct the kernel fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, usage.ru_maxrss, reader.join().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gib_image_syncs_with_peak_rss_under_64_mib() {
    let source = FakeGlance::start().await;
    let id = source.add_image(ImageSpec::new("big-2g", ImageData::synthetic(SIZE, 42)));
    let target = FakeGlance::start_with(FakeOptions {
        store_data: false,
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        "",
    );

    let started = std::time::Instant::now();
    let cfg2 = cfg.clone();
    let (code, peak_kib, stdout) = tokio::task::spawn_blocking(move || run_measured(&cfg2))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "2 GiB copy: peak RSS {:.1} MiB, {secs:.1} s ({:.0} MB/s)",
        peak_kib as f64 / 1024.0,
        SIZE as f64 / 1e6 / secs
    );
    assert_eq!(code, 0, "{stdout}");

    let copy = target
        .images()
        .into_iter()
        .find(|i| i["glance_sync_source_id"] == id.as_str())
        .expect("copy on the target");
    let original = source.image(&id).unwrap();
    assert_eq!(copy["status"], "active");
    assert_eq!(copy["size"], SIZE);
    assert_eq!(copy["checksum"], original["checksum"]);
    assert_eq!(copy["os_hash_value"], original["os_hash_value"]);
    assert_eq!(source.bytes_served(), SIZE, "read once");
    assert!(
        peak_kib < LIMIT_KIB,
        "peak RSS {peak_kib} KiB is over {LIMIT_KIB} KiB"
    );
}
