//! Memory stays bounded whatever the image size: a 2 GiB image streams from a fake source to a fake
//! target (neither is the bottleneck nor keeps the bytes) and the glance-sync process's peak RSS,
//! measured by the kernel (its VmHWM), stays under 64 MiB. And whatever the number of
//! images: listing and planning six times more images does not take more memory.

mod support;

use std::process::{Command, Stdio};

use support::fake_glance::{FakeGlance, FakeOptions, ImageData, ImageSpec};
use support::sync_cli::write_config;

const SIZE: u64 = 2 << 30;
const LIMIT_KIB: i64 = 64 * 1024;

/// The high-water mark of a running process's resident memory, from /proc.
fn vm_hwm_kib(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs glance-sync to completion and returns (exit code, peak RSS in KiB, stdout).
///
/// The peak is the process's own VmHWM, sampled every 5 ms while it runs (it only grows, so
/// the last sample misses at most the last 5 ms). Not wait4's ru_maxrss: a child spawned with
/// vfork records the high-water mark of its parent's memory at exec, and this test process
/// holds fakes of 40,000 images.
// The child is reaped by wait4, not by Child::wait.
#[allow(clippy::zombie_processes)]
fn run_measured(config: &std::path::Path) -> (i32, i64, String) {
    let child = Command::new(support::sync_cli::bin())
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn glance-sync");
    let pid = child.id();
    let mut stdout = child.stdout.expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kib) = vm_hwm_kib(pid) {
                    peak = peak.max(kib);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        })
    };
    // Wait for the exit without reaping, so that the sampler never reads a reused pid.
    // SAFETY: plain FFI calls; `siginfo_t` and `rusage` are POD structs the kernel fills in.
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            break;
        }
        assert_eq!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::Interrupted
        );
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as libc::pid_t, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, peak, reader.join().unwrap())
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

/// A source of `n` public images and a target holding an identical public image of another
/// project for each (in sync, nothing to copy), in `dir`; returns the configuration.
async fn in_sync_clouds(
    n: usize,
    dir: &std::path::Path,
) -> (FakeGlance, FakeGlance, std::path::PathBuf) {
    let opts = || FakeOptions {
        cache_listings: true,
        ..FakeOptions::default()
    };
    let source = FakeGlance::start_with(opts()).await;
    let target = FakeGlance::start_with(opts()).await;
    for i in 0..n {
        let data = ImageData::Bytes(bytes::Bytes::from(format!("tiny image number {i}\n")));
        for (glance, owner) in [(&source, None), (&target, Some("another-project"))] {
            let mut spec = ImageSpec::new(format!("tiny-{i:06}"), data.clone());
            spec.visibility = "public".into();
            spec.properties
                .insert("description".into(), "x".repeat(200));
            if let Some(owner) = owner {
                spec.owner = Some(owner.into());
            }
            glance.add_image(spec);
        }
    }
    let cfg = write_config(
        dir,
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        "",
    );
    (source, target, cfg)
}

/// Peak RSS in KiB of the first run (recording a row per image) and of a run that changes
/// nothing, over `n` images in sync.
async fn peaks_over(n: usize) -> (i64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let (_source, target, cfg) = in_sync_clouds(n, dir.path()).await;
    let mut peaks = Vec::new();
    for run in ["first", "no-op"] {
        let cfg = cfg.clone();
        let (code, peak_kib, stdout) = tokio::task::spawn_blocking(move || run_measured(&cfg))
            .await
            .unwrap();
        assert_eq!(code, 0, "{stdout}");
        assert!(
            stdout.contains(&format!("{n} in sync")),
            "{run} run over {n} images: {stdout}"
        );
        assert_eq!(target.write_requests(), 0, "nothing to write");
        eprintln!(
            "{n} images, {run} run: peak RSS {:.1} MiB",
            peak_kib as f64 / 1024.0
        );
        peaks.push(peak_kib);
    }
    (peaks[0], peaks[1])
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_and_planning_memory_does_not_grow_with_the_number_of_images() {
    let (small_first, small_noop) = peaks_over(10_000).await;
    let (large_first, large_noop) = peaks_over(60_000).await;
    // Holding the listings would cost about 3 KiB per image and target (1.16 GB for 400,000
    // in the previous release, 221 MiB here for 40,000): 50,000 more images would add over
    // 140 MiB. Both sizes fill a batch, its read-ahead and the listing file's cache; what is
    // left is the allocator's arenas settling.
    const SLACK_KIB: i64 = 24 * 1024;
    assert!(
        large_first - small_first < SLACK_KIB,
        "first run: {small_first} KiB for 10,000 images, {large_first} KiB for 60,000"
    );
    assert!(
        large_noop - small_noop < SLACK_KIB,
        "no-op run: {small_noop} KiB for 10,000 images, {large_noop} KiB for 60,000"
    );
}
