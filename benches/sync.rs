//! The performance benchmark of glance-sync (docs/benchmarks.md): one command that measures, in the
//! same run and side by side, the hash ceiling of this machine, glance-sync's streamed copy between
//! two fast fake Glance servers, the openstacksdk peer on the same fakes, glance-sync against the
//! `curl GET | curl PUT` pipe between two real Glance servers, a no-op run over 10,000 images, the
//! plan step alone, four images in parallel and a two-target fan-out; then prints a table of medians
//! and checks the issue's targets.
//!
//! ```text
//! cargo bench --bench sync -- [--size-mib N] [--reps N] [--quick] [--only LIST] ...
//! ```
//! `--help` lists the options. Run by `cargo test --all-targets` (no `--bench` argument) it behaves
//! as `--quick`: tiny sizes, one repetition, no real Glance, a few seconds.

#[path = "../tests/support/fake_glance.rs"]
mod fake_glance;
#[path = "../tests/support/sync_cli.rs"]
mod sync_cli;

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::{Digest, Md5};
use serde_json::{Value, json};
use sha2::Sha512;

use fake_glance::{FakeGlance, FakeOptions, ImageData, ImageSpec, synthetic_bytes};
use glance_sync::config::{Filter, Job};
use glance_sync::image::{Image, MARKER_SOURCE_CLOUD, MARKER_SOURCE_ID};
use glance_sync::plan::{Ledger, OwnedImage, PlanInput, plan};
use sync_cli::write_config;

const MIB: u64 = 1 << 20;
const SECTIONS: &[&str] = &[
    "hash",
    "copy",
    "peer",
    "real",
    "noop",
    "plan",
    "parallel",
    "fanout",
    "firstrun",
    "bandwidth",
    "scale",
    "million",
    "servercopy",
];

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

struct Args {
    /// (2)/(3): the image copied between the fakes.
    size_mib: u64,
    reps: usize,
    quick: bool,
    /// (1): in-memory data hashed per repetition.
    hash_mib: u64,
    /// (4): the image copied between the real Glance servers.
    real_mib: u64,
    /// (7): size of each of the four images.
    parallel_mib: u64,
    /// (5): images already in sync.
    noop_images: usize,
    /// (6): source images (and as many target copies).
    plan_images: usize,
    /// (8): source images, each already on every target.
    firstrun_images: usize,
    /// (10): source images, each already on every one of `scale_targets` targets.
    scale_images: usize,
    scale_targets: usize,
    /// (11): source images, each already on the one target.
    million_images: usize,
    /// (12): size of each of the four images copied server-side and streamed.
    servercopy_mib: u64,
    only: Vec<String>,
    /// (3b): also the peer without `stream=True` (holds the image in memory).
    peer_in_memory: bool,
    /// Another glance-sync binary to measure (e.g. a build with an engine change).
    exe: Option<PathBuf>,
    /// (2p): the previous release's binary, measured in (2)'s repetitions beside this one.
    previous: Option<PathBuf>,
}

const USAGE: &str = "\
cargo bench --bench sync -- [OPTIONS]
  --size-mib N          image copied between the fakes, (2) (3) and the fan-out (default 2048)
  --reps N              repetitions per measurement, medians reported (default 5)
  --quick               tiny sizes, 1 repetition, no real Glance (what `cargo test` runs)
  --hash-mib N          in-memory data hashed in (1) (default 512)
  --real-size-mib N     image copied between the real Glance servers, (4) (default 512)
  --parallel-mib N      size of each of the 4 parallel images, (7) (default 512)
  --noop-images N       images in sync for the no-op run, (5) (default 10000)
  --plan-images N       source images (and target copies) planned, (6) (default 10000)
  --firstrun-images N   images already on the target for the first run with a fresh state, (8)
                        (default 100000)
  --scale-images N      images already on each target for the first and no-op runs of (10)
                        (default 100000)
  --scale-targets N     targets in (10) (default 4)
  --million-images N    images already on the one target for the no-op run of (11)
                        (default 1000000)
  --servercopy-mib N    size of each of the 4 images copied to 2 real Glance targets by
                        glance-download and by stream, (12) (default 512)
  --no-peer-in-memory   skip (3b), the peer downloading into memory (2 × the image in RAM)
  --glance-sync PATH    measure this glance-sync binary instead of this build's (A/B of a change)
  --previous PATH       also copy (2) with this binary (the previous release) in each repetition,
                        and judge the speed-up on the pairs, (2p)
  --only LIST           comma-separated subset of: hash,copy,peer,real,noop,plan,parallel,fanout,
                        firstrun,bandwidth,scale,million,servercopy
";

fn parse_args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then this is a smoke test.
    let bench_mode = argv.iter().any(|a| a == "--bench");
    let mut a = Args {
        size_mib: 2048,
        reps: 5,
        quick: !bench_mode,
        hash_mib: 512,
        real_mib: 512,
        servercopy_mib: 512,
        parallel_mib: 512,
        noop_images: 10_000,
        plan_images: 10_000,
        firstrun_images: 100_000,
        scale_images: 100_000,
        scale_targets: 4,
        million_images: 1_000_000,
        only: Vec::new(),
        peer_in_memory: true,
        exe: None,
        previous: None,
    };
    let mut explicit: Vec<&str> = Vec::new();
    let mut it = argv.iter();
    let num = |it: &mut std::slice::Iter<String>, flag: &str| -> u64 {
        it.next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| die(&format!("{flag} needs a number\n{USAGE}")))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--size-mib" => {
                a.size_mib = num(&mut it, arg);
                explicit.push("size");
            }
            "--reps" => {
                a.reps = num(&mut it, arg).max(1) as usize;
                explicit.push("reps");
            }
            "--hash-mib" => {
                a.hash_mib = num(&mut it, arg);
                explicit.push("hash");
            }
            "--real-size-mib" => a.real_mib = num(&mut it, arg),
            "--servercopy-mib" => a.servercopy_mib = num(&mut it, arg),
            "--parallel-mib" => {
                a.parallel_mib = num(&mut it, arg);
                explicit.push("parallel");
            }
            "--noop-images" => {
                a.noop_images = num(&mut it, arg) as usize;
                explicit.push("noop");
            }
            "--plan-images" => a.plan_images = num(&mut it, arg) as usize,
            "--firstrun-images" => {
                a.firstrun_images = num(&mut it, arg) as usize;
                explicit.push("firstrun");
            }
            "--scale-images" => {
                a.scale_images = num(&mut it, arg) as usize;
                explicit.push("scale");
            }
            "--scale-targets" => a.scale_targets = num(&mut it, arg).max(1) as usize,
            "--million-images" => {
                a.million_images = num(&mut it, arg) as usize;
                explicit.push("million");
            }
            "--quick" => a.quick = true,
            "--no-peer-in-memory" => a.peer_in_memory = false,
            "--glance-sync" => {
                a.exe = Some(PathBuf::from(it.next().unwrap_or_else(|| die(USAGE))));
            }
            "--previous" => {
                a.previous = Some(PathBuf::from(it.next().unwrap_or_else(|| die(USAGE))));
            }
            "--only" => {
                let list = it.next().unwrap_or_else(|| die(USAGE));
                for s in list.split(',').filter(|s| !s.is_empty()) {
                    if !SECTIONS.contains(&s) {
                        die(&format!("--only: unknown section {s}\n{USAGE}"));
                    }
                    a.only.push(s.to_owned());
                }
            }
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            // cargo's own flags (--bench) and a test runner's (--include-ignored, filters).
            _ => {}
        }
    }
    if a.quick {
        let keep = |name: &str| explicit.contains(&name);
        if !keep("size") {
            a.size_mib = 8;
        }
        if !keep("reps") {
            a.reps = 1;
        }
        if !keep("hash") {
            a.hash_mib = 8;
        }
        if !keep("parallel") {
            a.parallel_mib = 4;
        }
        if !keep("noop") {
            a.noop_images = 100;
        }
        if !keep("firstrun") {
            a.firstrun_images = 100;
        }
        if !keep("scale") {
            a.scale_images = 300;
            a.scale_targets = 2;
        }
        if !keep("million") {
            a.million_images = 1000;
        }
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2);
}

impl Args {
    fn wants(&self, section: &str) -> bool {
        if (section == "real" || section == "servercopy") && self.quick {
            return false;
        }
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// User + system CPU seconds of this process so far (the fakes run in it).
fn self_cpu() -> f64 {
    // SAFETY: plain FFI call; `rusage` is a POD struct the kernel fills in.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds of the calling thread.
fn thread_cpu() -> f64 {
    // SAFETY: plain FFI call filling a POD struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// A child process run to completion, measured by the kernel.
struct ChildRun {
    code: i32,
    wall: f64,
    /// User + system CPU seconds of the child (wait4's rusage).
    cpu: f64,
    /// Peak RSS of the child's own program (VmHWM), see [`run_child`].
    peak_rss_mib: f64,
    stdout: String,
    stderr: String,
}

impl ChildRun {
    fn check(&self, what: &str) -> &Self {
        if self.code != 0 {
            panic!(
                "{what} exited {}\n--- stdout\n{}\n--- stderr (tail)\n{}",
                self.code,
                tail(&self.stdout, 4000),
                tail(&self.stderr, 8000)
            );
        }
        self
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// VmHWM of a live process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd` with stdout/stderr in files under `dir`; blocking (the fakes keep serving on the
/// runtime's worker threads meanwhile).
///
/// Peak RSS is the child's VmHWM, sampled every 5 ms until it exits (VmHWM is a high-water mark,
/// so only growth in its last few milliseconds could be missed). wait4's `ru_maxrss` is not used:
/// Linux carries the pre-exec high-water mark into it, i.e. the RSS of this (large) bench process
/// that spawned the child. The child is reaped by wait4 after waitid(WNOWAIT) saw it exit, so its
/// pid cannot be reused while it is sampled.
// The child is reaped by wait4 (which also yields its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn run_child(mut cmd: Command, dir: &Path, tag: &str) -> ChildRun {
    let out_path = dir.join(format!("{tag}.stdout"));
    let err_path = dir.join(format!("{tag}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {tag}: {e} ({cmd:?})"));
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = vm_hwm_kib(pid) {
                    peak = peak.max(kib);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        })
    };
    loop {
        // SAFETY: plain FFI call; `siginfo_t` is a POD struct the kernel fills in.
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
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "waitid {tag}: {err}"
        );
    }
    let wall = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let peak_kib = sampler.join().unwrap();
    let mut status = 0;
    // SAFETY: plain FFI call; `rusage` is a POD struct the kernel fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as libc::pid_t, "wait4 {tag}");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    ChildRun {
        code,
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        peak_rss_mib: peak_kib as f64 / 1024.0,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    rows: Vec<[String; 4]>,
    targets: Vec<(String, String, Option<bool>)>,
}

impl Report {
    fn row(&mut self, id: &str, what: &str, value: String, detail: String) {
        self.rows
            .push([id.to_owned(), what.to_owned(), value, detail]);
        let r = self.rows.last().unwrap();
        eprintln!("[bench] {:<5} {:<44} {:>22}  {}", r[0], r[1], r[2], r[3]);
    }

    fn target(&mut self, what: &str, measured: String, met: Option<bool>) {
        self.targets.push((what.to_owned(), measured, met));
    }

    fn print(&self, header: &str) {
        let mut out = String::new();
        writeln!(out, "\n{header}").unwrap();
        let w = [
            5,
            self.rows.iter().map(|r| r[1].len()).max().unwrap_or(0),
            self.rows.iter().map(|r| r[2].len()).max().unwrap_or(0),
        ];
        writeln!(
            out,
            "| {:<w0$} | {:<w1$} | {:>w2$} | detail |",
            "#",
            "measure",
            "median",
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        )
        .unwrap();
        writeln!(
            out,
            "|{}|{}|{}:|---|",
            "-".repeat(w[0] + 2),
            "-".repeat(w[1] + 2),
            "-".repeat(w[2] + 1)
        )
        .unwrap();
        for r in &self.rows {
            writeln!(
                out,
                "| {:<w0$} | {:<w1$} | {:>w2$} | {} |",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2]
            )
            .unwrap();
        }
        if !self.targets.is_empty() {
            writeln!(out, "\n| target | measured | met |\n|---|---|---|").unwrap();
            for (what, measured, met) in &self.targets {
                let m = match met {
                    Some(true) => "met",
                    Some(false) => "NOT met",
                    None => "n/a",
                };
                writeln!(out, "| {what} | {measured} | {m} |").unwrap();
            }
        }
        print!("{out}");
    }
}

/// The transfer rates glance-sync logs per copy ("copied 'x' to t: 2147.5 MB in 4.6 s (466.8 MB/s)").
fn logged_mbps(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("copied '"))
        .filter_map(|l| {
            let end = l.find(" MB/s)")?;
            let start = l[..end].rfind('(')? + 1;
            l[start..end].trim().parse().ok()
        })
        .collect()
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

// ---------------------------------------------------------------------------------------------
// glance-sync and its config
// ---------------------------------------------------------------------------------------------

/// The glance-sync binary of this build (cargo builds it for the bench: target/release with
/// `cargo bench`). Built with `cargo build --release` if it is missing.
fn glance_sync_exe() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_glance-sync"));
    if !exe.exists() {
        eprintln!("[bench] {} missing: cargo build --release", exe.display());
        let st = Command::new(env!("CARGO"))
            .args(["build", "--release", "--bin", "glance-sync"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build");
        assert!(st.success(), "cargo build --release failed");
        let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/glance-sync");
        return if exe.exists() { exe } else { release };
    }
    exe
}

/// The config of one job copying from cloud "src" at `src` to cloud "dst" at `dst`.
fn src_to_dst_config(dir: &Path, src: &str, dst: &str, extra: &str) -> PathBuf {
    write_config(dir, &[("src", src), ("dst", dst)], "src", &["dst"], extra)
}

fn glance_sync_run(exe: &Path, config: &Path) -> Command {
    let mut c = Command::new(exe);
    c.arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("RUST_LOG");
    c
}

/// Runs `f` while sampling every 50 ms the bytes `target` has received: what the limit paces,
/// measured past every buffer on the way (the source's side runs ahead by the socket buffers).
fn sampled<T>(target: &FakeGlance, f: impl FnOnce() -> T) -> (Vec<(Instant, u64)>, T) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push((Instant::now(), target.bytes_received()));
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        let out = f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (sampler.join().unwrap(), out)
    })
}

/// Bytes per second between the samples where `from` and `to` bytes had been served.
fn rate_between(samples: &[(Instant, u64)], from: u64, to: u64) -> f64 {
    let a = samples
        .iter()
        .find(|(_, b)| *b >= from)
        .expect("copy started");
    let b = samples
        .iter()
        .find(|(_, b)| *b >= to)
        .expect("copy went on");
    (b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64()
}

/// (10) and (11): the runs over a source of `n` public images and `targets` targets, each of
/// which holds an identical public image of another project for every one (all in sync, nothing
/// to copy). Per repetition, with a fresh state: the first run (it records `n × targets` rows),
/// then a run that changes nothing.
struct ScaleRuns {
    first: Vec<ChildRun>,
    noop: Vec<ChildRun>,
    /// CPU seconds of this process (the fakes) during each no-op run.
    fake_cpu: Vec<f64>,
    /// HTTP requests of the last no-op run, all clouds.
    requests: usize,
}

fn scale_runs(
    rt: &tokio::runtime::Runtime,
    base: &Path,
    exe: &Path,
    tag: &str,
    n: usize,
    targets: usize,
    reps: usize,
) -> ScaleRuns {
    // The fakes answer each page from a cached order, as Glance answers from an index: else a
    // page would cost a sort of the whole cloud and the fakes would be the bottleneck.
    let fake = || {
        rt.block_on(FakeGlance::start_with(FakeOptions {
            cache_listings: true,
            ..FakeOptions::default()
        }))
    };
    let source = fake();
    let dsts: Vec<FakeGlance> = (0..targets).map(|_| fake()).collect();
    for i in 0..n {
        let data = ImageData::Bytes(Bytes::from(format!("tiny image number {i}\n")));
        let mut spec = ImageSpec::new(format!("tiny-{i:07}"), data);
        spec.visibility = "public".into();
        spec.properties.insert("os_distro".into(), "cirros".into());
        source.add_image(spec.clone());
        spec.owner = Some("another-project".into());
        for d in &dsts {
            d.add_image(spec.clone());
        }
    }
    let mut clouds = vec![("src".to_string(), source.url.clone())];
    for (i, d) in dsts.iter().enumerate() {
        clouds.push((format!("dst{i}"), d.url.clone()));
    }
    let cloud_refs: Vec<(&str, &str)> = clouds
        .iter()
        .map(|(n, u)| (n.as_str(), u.as_str()))
        .collect();
    let target_names: Vec<&str> = cloud_refs[1..].iter().map(|(n, _)| *n).collect();
    let mut out = ScaleRuns {
        first: vec![],
        noop: vec![],
        fake_cpu: vec![],
        requests: 0,
    };
    for i in 0..reps {
        let dir = subdir(base, &format!("{tag}-{i}"));
        let cfg = write_config(&dir, &cloud_refs, "src", &target_names, "");
        let r = run_child(glance_sync_run(exe, &cfg), &dir, "first");
        r.check(&format!("glance-sync run ({tag}, first run)"));
        out.first.push(r);
        source.clear_requests();
        for d in &dsts {
            d.clear_requests();
        }
        let c0 = self_cpu();
        let r = run_child(glance_sync_run(exe, &cfg), &dir, "noop");
        out.fake_cpu.push(self_cpu() - c0);
        r.check(&format!("glance-sync run ({tag}, no-op)"));
        let expected = format!("{} in sync", n * targets);
        assert!(
            r.stdout.contains(&expected),
            "{tag}: every image in sync ({expected}): {}",
            r.stdout
        );
        out.noop.push(r);
        let writes: usize =
            source.write_requests() + dsts.iter().map(|d| d.write_requests()).sum::<usize>();
        assert_eq!(writes, 0, "{tag}: nothing to write");
        out.requests =
            source.request_log().len() + dsts.iter().map(|d| d.request_log().len()).sum::<usize>();
    }
    out
}

fn walls(runs: &[ChildRun]) -> Vec<f64> {
    runs.iter().map(|r| r.wall).collect()
}

fn peaks(runs: &[ChildRun]) -> Vec<f64> {
    runs.iter().map(|r| r.peak_rss_mib).collect()
}

fn cpus(runs: &[ChildRun]) -> Vec<f64> {
    runs.iter().map(|r| r.cpu).collect()
}

/// A fresh directory under the bench's temp dir.
fn subdir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fake target that neither keeps nor hashes an upload of `data`'s size (it reports `data`'s
/// digests), so it costs only the socket reads.
fn fast_target(rt: &tokio::runtime::Runtime, data: &[&ImageData]) -> FakeGlance {
    let t = rt.block_on(FakeGlance::start_with(FakeOptions {
        store_data: false,
        hash_uploads: false,
        ..FakeOptions::default()
    }));
    for d in data {
        t.declare_upload(d);
    }
    t
}

/// The copy of `name` on `target` is active with `source_image`'s size and digests.
fn assert_copied(target: &FakeGlance, name: &str, source_image: &Value) {
    let copy = target
        .images()
        .into_iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no copy of {name} on the target"));
    assert_eq!(copy["status"], "active", "{copy}");
    for k in ["size", "checksum", "os_hash_value"] {
        assert_eq!(copy[k], source_image[k], "{k} of the copy of {name}");
    }
}

// ---------------------------------------------------------------------------------------------
// (1) the hash limit
// ---------------------------------------------------------------------------------------------

/// One run of (1): MD5 and SHA-512 over the same in-memory data on two threads.
struct HashRun {
    /// MB/s until both are done (wall clock): the ceiling of one verified stream.
    both: f64,
    /// Per CPU-second of each thread: what a core does when it is not shared.
    md5_cpu: f64,
    sha512_cpu: f64,
}

/// MD5 and SHA-512 over the same in-memory data on two threads, 1 MiB at a time.
fn hash_two_threads(data: &Arc<Vec<u8>>) -> HashRun {
    fn hash_on_thread<D: Digest>(d: Arc<Vec<u8>>) -> std::thread::JoinHandle<f64> {
        std::thread::spawn(move || {
            let c0 = thread_cpu();
            let mut h = D::new();
            for c in d.chunks(MIB as usize) {
                h.update(c);
            }
            std::hint::black_box(h.finalize());
            thread_cpu() - c0
        })
    }
    let len = data.len() as u64;
    let started = Instant::now();
    let md5 = hash_on_thread::<Md5>(data.clone());
    let sha = hash_on_thread::<Sha512>(data.clone());
    let (cm, cs) = (md5.join().unwrap(), sha.join().unwrap());
    HashRun {
        both: mbps(len, started.elapsed().as_secs_f64()),
        md5_cpu: mbps(len, cm),
        sha512_cpu: mbps(len, cs),
    }
}

/// (1c) One core's rate (MB per CPU-second) of each SHA-2 implementation at hand, per algorithm:
/// RustCrypto `sha2` and `aws-lc-rs` (built anyway for rustls). `ring` is not in this build's
/// tree (rustls uses aws-lc-rs); measured once by hand it was no faster than either.
fn sha2_candidates(data: &[u8]) -> Vec<(&'static str, &'static str, f64)> {
    fn rate(data: &[u8], hash: impl FnOnce(&[u8])) -> f64 {
        let c0 = thread_cpu();
        hash(data);
        mbps(data.len() as u64, thread_cpu() - c0)
    }
    fn rust_crypto<D: Digest>(data: &[u8]) {
        let mut h = D::new();
        for c in data.chunks(MIB as usize) {
            h.update(c);
        }
        std::hint::black_box(h.finalize());
    }
    fn aws_lc(algo: &'static aws_lc_rs::digest::Algorithm, data: &[u8]) {
        let mut h = aws_lc_rs::digest::Context::new(algo);
        for c in data.chunks(MIB as usize) {
            h.update(c);
        }
        std::hint::black_box(h.finish());
    }
    use aws_lc_rs::digest::{SHA256, SHA384, SHA512};
    vec![
        ("sha512", "sha2", rate(data, rust_crypto::<Sha512>)),
        ("sha512", "aws-lc-rs", rate(data, |d| aws_lc(&SHA512, d))),
        ("sha384", "sha2", rate(data, rust_crypto::<sha2::Sha384>)),
        ("sha384", "aws-lc-rs", rate(data, |d| aws_lc(&SHA384, d))),
        ("sha256", "sha2", rate(data, rust_crypto::<sha2::Sha256>)),
        ("sha256", "aws-lc-rs", rate(data, |d| aws_lc(&SHA256, d))),
    ]
}

// ---------------------------------------------------------------------------------------------
// (3) the openstacksdk peer
// ---------------------------------------------------------------------------------------------

fn venv_python() -> PathBuf {
    let harness = std::env::var_os("GLANCE_SYNC_HARNESS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/harness"));
    harness.join("venv-glance/bin/python")
}

fn venv_has_openstacksdk() -> bool {
    let py = venv_python();
    py.exists()
        && Command::new(&py)
            .args(["-c", "import openstack"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// The real-Glance venv (Glance + openstacksdk), installed by tests/harness/install.sh if missing.
fn ensure_harness() -> PathBuf {
    let py = venv_python();
    if !venv_has_openstacksdk() {
        eprintln!("[bench] no openstacksdk venv: running tests/harness/install.sh");
        let st =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/install.sh"))
                .status()
                .expect("run install.sh");
        assert!(st.success(), "tests/harness/install.sh failed");
    }
    py
}

fn write_clouds_yaml(dir: &Path, clouds: &[(&str, &str)]) -> PathBuf {
    let mut y = String::from("clouds:\n");
    for (name, url) in clouds {
        y.push_str(&format!(
            "  {name}:\n    auth_type: none\n    auth:\n      endpoint: {url}\n    image_endpoint_override: {url}\n"
        ));
    }
    let p = dir.join("clouds.yaml");
    std::fs::write(&p, y).unwrap();
    p
}

/// Other ways of writing the peer, each a flag of benches/peer_openstacksdk.py, shown as rows
/// 3b and 3c. The "(2) ≥ 3 × (3)" target is judged against row 3, the fastest way the SDK's
/// documentation shows; it is also shown against 3c, the way its guide's example writes it.
const PEER_VARIANTS: [(&str, &str); 2] = [
    (
        "--in-memory-download",
        "same, download_image without stream=True (whole image in memory)",
    ),
    (
        "--guide-example",
        "same, download as the SDK guide's streaming example (1 KiB chunks, MD5)",
    ),
];

fn peer_cmd(py: &Path, clouds_yaml: &Path, image: &str, workdir: &Path) -> Command {
    let mut c = Command::new(py);
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer_openstacksdk.py"))
        .args(["--source", "src", "--target", "dst", "--image", image])
        .arg("--workdir")
        .arg(workdir)
        .env("OS_CLIENT_CONFIG_FILE", clouds_yaml)
        .env("PYTHONWARNINGS", "ignore");
    c
}

// ---------------------------------------------------------------------------------------------
// (4) real Glance
// ---------------------------------------------------------------------------------------------

/// A real Glance 33 (tests/harness/glance.sh) under a harness root of the bench's own, so that a
/// test run's `glance.sh stop-all` does not stop it; stopped on drop.
struct RealGlance {
    harness: PathBuf,
    name: String,
    port: u16,
    url: String,
    /// The uWSGI master: its own session and process group (setsid).
    pgid: i32,
}

fn glance_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/glance.sh")
}

/// target/bench-harness: links to the shared venv and template DB, its own `state/`.
fn bench_harness() -> PathBuf {
    let py = ensure_harness();
    let shared = py
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-harness");
    std::fs::create_dir_all(&root).unwrap();
    for name in ["venv-glance", "venv-keystone", "template"] {
        let link = root.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(shared.join(name), &link).unwrap();
        }
    }
    root
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

impl RealGlance {
    fn start(harness: &Path, name: &str) -> RealGlance {
        Self::start_with(harness, name, &[])
    }

    /// With `glance.sh`'s env knobs (`GLANCE_AUTH`, `GLANCE_IMPORT_METHODS`...).
    fn start_with(harness: &Path, name: &str, env: &[(&str, &str)]) -> RealGlance {
        for _ in 0..5 {
            let port = free_port();
            let out = Command::new(glance_sh())
                .args(["start", name, &port.to_string()])
                .env("GLANCE_SYNC_HARNESS", harness)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .output()
                .expect("glance.sh start");
            if out.status.success() {
                let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                let pidfile = harness.join(format!("state/{name}-{port}/uwsgi.pid"));
                let pgid = std::fs::read_to_string(&pidfile)
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
                    .unwrap_or(-1);
                return RealGlance {
                    harness: harness.to_owned(),
                    name: name.to_owned(),
                    port,
                    url,
                    pgid,
                };
            }
            if out.status.code() != Some(3) {
                panic!(
                    "glance.sh start {name} {port} failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        panic!("no free port for real Glance {name}");
    }
}

impl RealGlance {
    /// CPU seconds used so far by every process of this Glance (uWSGI master and workers).
    fn cpu(&self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut ticks = 0u64;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after "(comm)": state ppid pgrp ... utime(12th) stime(13th).
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 12 && f[2].parse::<i32>().ok() == Some(self.pgid) {
                ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
            }
        }
        ticks as f64 / tick
    }
}

impl Drop for RealGlance {
    fn drop(&mut self) {
        let _ = Command::new(glance_sh())
            .args(["stop", &self.name, &self.port.to_string()])
            .env("GLANCE_SYNC_HARNESS", &self.harness)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn glance_create(http: &reqwest::Client, url: &str, name: &str) -> String {
    let r = http
        .post(format!("{url}/v2/images"))
        .json(&json!({"name": name, "disk_format": "raw", "container_format": "bare"}))
        .send()
        .await
        .expect("create image");
    assert_eq!(
        r.status(),
        201,
        "create {name}: {}",
        r.text().await.unwrap()
    );
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn glance_images_named(http: &reqwest::Client, url: &str, name: &str) -> Vec<Value> {
    let mut attempt = 0;
    loop {
        let r = http
            .get(format!("{url}/v2/images"))
            .query(&[("name", name), ("limit", "100")])
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await.expect("image list JSON");
                return v["images"].as_array().cloned().unwrap_or_default();
            }
            other if attempt < 3 => {
                attempt += 1;
                eprintln!("[bench] listing {url} failed ({other:?}), retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            other => panic!("list images on {url}: {other:?}"),
        }
    }
}

async fn glance_delete_named(http: &reqwest::Client, url: &str, name: &str) {
    for img in glance_images_named(http, url, name).await {
        let id = img["id"].as_str().unwrap();
        if img["protected"] == true {
            http.patch(format!("{url}/v2/images/{id}"))
                .header(
                    "content-type",
                    "application/openstack-images-v2.1-json-patch",
                )
                .body(r#"[{"op":"replace","path":"/protected","value":false}]"#)
                .send()
                .await
                .unwrap();
        }
        let r = http
            .delete(format!("{url}/v2/images/{id}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "delete {id}: {}", r.status());
    }
}

/// The one image called `name` on `url` is active with `expect`'s size and digests.
async fn glance_assert_copy(http: &reqwest::Client, url: &str, name: &str, expect: &Value) {
    let imgs = glance_images_named(http, url, name).await;
    assert_eq!(imgs.len(), 1, "copies of {name} on {url}: {imgs:?}");
    for k in ["status", "size", "checksum", "os_hash_value"] {
        assert_eq!(imgs[0][k], expect[k], "{k} of the copy of {name} on {url}");
    }
}

// ---------------------------------------------------------------------------------------------
// (6) the planner
// ---------------------------------------------------------------------------------------------

fn synthetic_image(id: &str, name: &str, n: usize) -> Image {
    Image {
        id: id.into(),
        name: Some(name.into()),
        status: "active".into(),
        visibility: "public".into(),
        protected: false,
        os_hidden: false,
        disk_format: Some("qcow2".into()),
        container_format: Some("bare".into()),
        size: Some(1 << 30),
        checksum: Some(format!("{n:032x}")),
        os_hash_algo: Some("sha512".into()),
        os_hash_value: Some(format!("{n:0128x}")),
        min_disk: 10,
        min_ram: 512,
        tags: vec!["golden".into(), format!("build-{}", n % 97)],
        owner: Some("admin".into()),
        created_at: Some("2026-01-01T00:00:00Z".into()),
        extra: [
            ("os_distro", "ubuntu"),
            ("os_version", "24.04"),
            ("hw_disk_bus", "virtio"),
            ("hw_vif_model", "virtio"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::from(v)))
        .collect(),
    }
}

/// Plans `n` source images against their `n` copies on one target (all in sync, as on every run
/// that finds nothing to do); returns the thread CPU seconds of `plan()` alone.
fn plan_cpu(n: usize, reps: usize) -> (Vec<f64>, usize) {
    let source: Vec<Image> = (0..n)
        .map(|i| synthetic_image(&format!("s-{i:08}"), &format!("image-{i:05}"), i))
        .collect();
    let mut ledger = Ledger::default();
    let copies: Vec<Image> = source
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut c = s.clone();
            c.id = format!("t-{i:08}");
            c.extra
                .insert(MARKER_SOURCE_CLOUD.into(), Value::from("src"));
            c.extra
                .insert(MARKER_SOURCE_ID.into(), Value::from(s.id.clone()));
            ledger.record(
                "dst",
                &c.id,
                OwnedImage {
                    job: Some("bench".into()),
                    source_cloud: "src".into(),
                    source_id: s.id.clone(),
                    in_flight: None,
                },
            );
            c
        })
        .collect();
    let targets = [("dst".to_owned(), copies)].into_iter().collect();
    let job = Job {
        name: "bench".into(),
        source: "src".into(),
        targets: vec!["dst".into()],
        filter: Filter::everything(),
        schedule: None,
        run_on_start: true,
        max_bandwidth: glance_sync::bandwidth::Limit::NONE,
        prune: Default::default(),
        policies: Default::default(),
    };
    let input = PlanInput {
        job: &job,
        source_images: &source,
        target_images: &targets,
        ledger: &ledger,
        projects: &Default::default(),
        members: &Default::default(),
        scope: &glance_sync::plan::every_name,
    };
    let mut times = Vec::new();
    let mut writes = 0;
    for _ in 0..reps {
        let mut next = 0u64;
        let t0 = thread_cpu();
        let p = plan(&input, &mut |_, _| {
            next += 1;
            format!("new-{next}")
        });
        times.push(thread_cpu() - t0);
        assert_eq!(p.actions.len(), n, "one action per image and target");
        writes = p.actions.iter().filter(|a| a.writes()).count();
        drop(std::hint::black_box(p));
    }
    (times, writes)
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{} CPUs ({cpu}), load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.join(" ")
    )
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tmp = tempfile::Builder::new()
        .prefix("glance-sync-bench-")
        .tempdir()
        .expect("temp dir");
    let base = tmp.path();
    let exe = args.exe.clone().unwrap_or_else(glance_sync_exe);
    let started = Instant::now();
    let machine_before = machine();
    eprintln!(
        "[bench] {} | reps {} | copy {} MiB | binary {}",
        machine_before,
        args.reps,
        args.size_mib,
        exe.display()
    );
    let mut rep = Report::default();
    let quick = args.quick;
    let size = args.size_mib * MIB;

    // ---- (1) the hash limit, (2) glance-sync and (3) the peer, interleaved ------------------
    // One repetition of each in turn, so that a change in the machine's load (it is shared)
    // hits all three alike and their ratios stay meaningful.
    let mut hash_limit = None;
    let mut hash_cpu_per_gb: Option<f64> = None;
    let mut sha512_chosen: Option<f64> = None;
    let mut copy_cpu_per_gb: Option<f64> = None;
    let mut paired_hash_ratio = None;
    let mut paired_peer_ratio = None;
    let mut paired_guide_ratio = None;
    let mut copy_mbps = None;
    let mut copy_rss = None;
    let mut paired_previous_ratio = None;
    let mut peer_mbps_med = None;
    if args.wants("hash") || args.wants("copy") || args.wants("peer") {
        let hash_data = args.wants("hash").then(|| {
            let mut buf = vec![0u8; (args.hash_mib * MIB) as usize];
            fake_glance::synthetic_fill(1, 0, &mut buf);
            Arc::new(buf)
        });
        let data = ImageData::synthetic(size, 42);
        let source = rt.block_on(FakeGlance::start());
        let t = Instant::now();
        let id = source.add_image(ImageSpec::new("big", data.clone()));
        if args.wants("copy") || args.wants("peer") {
            eprintln!(
                "[bench] source image of {} MiB hashed once in {:.1} s",
                args.size_mib,
                t.elapsed().as_secs_f64()
            );
        }
        let original = source.image(&id).unwrap();
        // A quick run (CI) does not install the harness: without it, no peer.
        let py = if !args.wants("peer") {
            None
        } else if quick && !venv_has_openstacksdk() {
            eprintln!("[bench] no openstacksdk venv (tests/harness/install.sh): peer skipped");
            None
        } else {
            Some(ensure_harness())
        };
        let (mut both, mut md5s, mut shas) = (vec![], vec![], vec![]);
        let (mut gs, mut gs_cpu, mut gs_rss, mut fake_cpu) = (vec![], vec![], vec![], vec![]);
        let (mut prev, mut prev_cpu) = (vec![], vec![]);
        let mut gs_logged = vec![];
        let mut candidates: std::collections::BTreeMap<(&str, &str), Vec<f64>> =
            std::collections::BTreeMap::new();
        let mut peer_variant: [Vec<f64>; PEER_VARIANTS.len()] = Default::default();
        let mut peer_variant_rss: [Vec<f64>; PEER_VARIANTS.len()] = Default::default();
        let mut peer_variant_cpu: [Vec<f64>; PEER_VARIANTS.len()] = Default::default();
        let (mut peer, mut peer_cpu, mut peer_rss, mut peer_fake_cpu) =
            (vec![], vec![], vec![], vec![]);
        let gb = size as f64 / 1e9;
        for i in 0..args.reps {
            if let Some(d) = &hash_data {
                for (algo, implementation, rate) in sha2_candidates(d) {
                    candidates
                        .entry((algo, implementation))
                        .or_default()
                        .push(rate);
                }
                let h = hash_two_threads(d);
                both.push(h.both);
                md5s.push(h.md5_cpu);
                shas.push(h.sha512_cpu);
                eprintln!(
                    "[bench]   rep {i}: hash limit {:.0} MB/s (per CPU-s: MD5 {:.0}, SHA-512 {:.0})",
                    h.both, h.md5_cpu, h.sha512_cpu
                );
            }
            if args.wants("copy") {
                let target = fast_target(&rt, &[&data]);
                let dir = subdir(base, &format!("copy-{i}"));
                let cfg = src_to_dst_config(&dir, &source.url, &target.url, "");
                let served = source.bytes_served();
                let c0 = self_cpu();
                let r = run_child(glance_sync_run(&exe, &cfg), &dir, "glance-sync");
                fake_cpu.push((self_cpu() - c0) / gb);
                r.check("glance-sync run");
                assert_copied(&target, "big", &original);
                assert_eq!(source.bytes_served() - served, size, "source read once");
                gs.push(mbps(size, r.wall));
                gs_cpu.push(r.cpu / gb);
                gs_rss.push(r.peak_rss_mib);
                gs_logged.extend(logged_mbps(&r.stderr));
                eprintln!(
                    "[bench]   rep {i}: glance-sync {:.0} MB/s, {:.2} CPU-s/GB, {:.1} MiB",
                    mbps(size, r.wall),
                    r.cpu / gb,
                    r.peak_rss_mib
                );
                if let Some(previous) = &args.previous {
                    let target = fast_target(&rt, &[&data]);
                    let dir = subdir(base, &format!("copy-previous-{i}"));
                    let cfg = src_to_dst_config(&dir, &source.url, &target.url, "");
                    let r = run_child(glance_sync_run(previous, &cfg), &dir, "previous");
                    r.check("the previous release's glance-sync run");
                    assert_copied(&target, "big", &original);
                    prev.push(mbps(size, r.wall));
                    prev_cpu.push(r.cpu / gb);
                    eprintln!(
                        "[bench]   rep {i}: previous release {:.0} MB/s, {:.2} CPU-s/GB",
                        mbps(size, r.wall),
                        r.cpu / gb
                    );
                }
            }
            if let Some(py) = &py {
                let target = fast_target(&rt, &[&data]);
                let dir = subdir(base, &format!("peer-{i}"));
                let clouds = write_clouds_yaml(&dir, &[("src", &source.url), ("dst", &target.url)]);
                let c0 = self_cpu();
                let r = run_child(peer_cmd(py, &clouds, "big", &dir), &dir, "peer");
                peer_fake_cpu.push((self_cpu() - c0) / gb);
                r.check("peer_openstacksdk.py");
                assert_copied(&target, "big", &original);
                peer.push(mbps(size, r.wall));
                peer_cpu.push(r.cpu / gb);
                peer_rss.push(r.peak_rss_mib);
                eprintln!(
                    "[bench]   rep {i}: openstacksdk {:.0} MB/s, {:.2} CPU-s/GB, {:.1} MiB",
                    mbps(size, r.wall),
                    r.cpu / gb,
                    r.peak_rss_mib
                );
                for (k, (flag, what)) in PEER_VARIANTS.iter().enumerate() {
                    if *flag == "--in-memory-download" && !args.peer_in_memory {
                        continue;
                    }
                    let target = fast_target(&rt, &[&data]);
                    let dir = subdir(base, &format!("peer-{k}-{i}"));
                    let clouds =
                        write_clouds_yaml(&dir, &[("src", &source.url), ("dst", &target.url)]);
                    let mut cmd = peer_cmd(py, &clouds, "big", &dir);
                    cmd.arg(flag);
                    let r = run_child(cmd, &dir, "peer");
                    r.check(&format!("peer_openstacksdk.py {flag}"));
                    assert_copied(&target, "big", &original);
                    peer_variant[k].push(mbps(size, r.wall));
                    peer_variant_rss[k].push(r.peak_rss_mib);
                    peer_variant_cpu[k].push(r.cpu / gb);
                    eprintln!(
                        "[bench]   rep {i}: openstacksdk, {what} {:.0} MB/s, {:.1} MiB",
                        mbps(size, r.wall),
                        r.peak_rss_mib
                    );
                }
            }
        }
        let paired = |a: &[f64], b: &[f64]| {
            let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
            (!r.is_empty()).then(|| median(&r))
        };
        paired_hash_ratio = paired(&gs, &both);
        paired_previous_ratio = paired(&gs, &prev);
        if let (false, Some(previous)) = (prev.is_empty(), &args.previous) {
            let (lo, hi) = range(&prev);
            rep.row(
                "2p",
                &format!("the previous release, {} MiB, fake → fake", args.size_mib),
                format!("{:.0} MB/s", median(&prev)),
                format!(
                    "range {lo:.0}–{hi:.0}; {:.2} CPU-s/GB; {}",
                    median(&prev_cpu),
                    previous.display()
                ),
            );
        }
        paired_peer_ratio = paired(&gs, &peer);
        let guide = PEER_VARIANTS
            .iter()
            .position(|(flag, _)| *flag == "--guide-example")
            .expect("the guide's example is a peer variant");
        paired_guide_ratio = paired(&gs, &peer_variant[guide]);
        if !both.is_empty() {
            let (lo, hi) = range(&both);
            hash_limit = Some(median(&both));
            // What the copy itself hashes (verify_digests = strongest): SHA-512 alone, with the
            // implementation glance-sync uses.
            hash_cpu_per_gb = candidates
                .get(&("sha512", "aws-lc-rs"))
                .map(|r| 1000.0 / median(r));
            sha512_chosen = candidates.get(&("sha512", "aws-lc-rs")).map(|r| median(r));
            rep.row(
                "1",
                "hash limit: MD5 ‖ SHA-512, two threads",
                format!("{:.0} MB/s", median(&both)),
                format!(
                    "range {lo:.0}–{hi:.0}; per CPU-second MD5 {:.0}, SHA-512 (sha2) {:.0} MB/s, i.e. both cost {:.2} CPU-s/GB; {} MiB in memory",
                    median(&md5s),
                    median(&shas),
                    1000.0 / median(&md5s) + 1000.0 / median(&shas),
                    args.hash_mib
                ),
            );
            let mut algos: Vec<&str> = candidates.keys().map(|(a, _)| *a).collect();
            algos.dedup();
            for algo in algos {
                let mut line: Vec<(&str, f64)> = candidates
                    .iter()
                    .filter(|((a, _), _)| *a == algo)
                    .map(|((_, i), rates)| (*i, median(rates)))
                    .collect();
                line.sort_by(|a, b| b.1.total_cmp(&a.1));
                rep.row(
                    "1c",
                    &format!("{algo}, one core, per implementation"),
                    format!("{} {:.0} MB/s", line[0].0, line[0].1),
                    line.iter()
                        .map(|(i, r)| format!("{i} {r:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + " MB/s per CPU-second (fastest first); glance-sync uses aws-lc-rs \
                           for sha512 and sha384, sha2 for sha256",
                );
            }
        }
        if !gs.is_empty() {
            let (lo, hi) = range(&gs);
            copy_mbps = Some(median(&gs));
            copy_cpu_per_gb = Some(median(&gs_cpu));
            copy_rss = Some(range(&gs_rss).1);
            rep.row(
                "2",
                &format!("glance-sync, {} MiB, fake → fake", args.size_mib),
                format!("{:.0} MB/s", median(&gs)),
                format!(
                    "range {lo:.0}–{hi:.0}; transfer alone {} MB/s (its log); {:.2} CPU-s/GB{}; peak RSS {:.1} MiB (max of reps); fakes {:.2} CPU-s/GB",
                    if gs_logged.is_empty() {
                        "?".to_owned()
                    } else {
                        format!("{:.0}", median(&gs_logged))
                    },
                    median(&gs_cpu),
                    hash_cpu_per_gb.map_or(String::new(), |h| format!(
                        " ({:.0}% of it hashing SHA-512)",
                        100.0 * h / median(&gs_cpu)
                    )),
                    range(&gs_rss).1,
                    median(&fake_cpu)
                ),
            );
        }
        if !peer.is_empty() {
            let (lo, hi) = range(&peer);
            peer_mbps_med = Some(median(&peer));
            rep.row(
                "3",
                &format!("openstacksdk peer, {} MiB, fake → fake", args.size_mib),
                format!("{:.0} MB/s", median(&peer)),
                format!(
                    "range {lo:.0}–{hi:.0}; {:.2} CPU-s/GB; peak RSS {:.1} MiB; fakes {:.2} CPU-s/GB; download_image(stream=True) to a file, then create_image(filename=)",
                    median(&peer_cpu),
                    range(&peer_rss).1,
                    median(&peer_fake_cpu)
                ),
            );
        }
        for (k, row) in ["3b", "3c"].into_iter().enumerate() {
            let rates = &peer_variant[k];
            if rates.is_empty() {
                continue;
            }
            let (lo, hi) = range(rates);
            rep.row(
                row,
                PEER_VARIANTS[k].1,
                format!("{:.0} MB/s", median(rates)),
                format!(
                    "range {lo:.0}–{hi:.0}; {:.2} CPU-s/GB; peak RSS {:.1} MiB; glance-sync / this = {:.2}",
                    median(&peer_variant_cpu[k]),
                    range(&peer_variant_rss[k]).1,
                    median(&gs) / median(rates)
                ),
            );
        }
    }

    // ---- (4) real Glance: glance-sync vs curl | curl ---------------------------------------
    let mut real_ratio = None;
    if args.wants("real") {
        let real_size = args.real_mib * MIB;
        let harness = bench_harness();
        let t = Instant::now();
        let src = RealGlance::start(&harness, "bench-src");
        let dst = RealGlance::start(&harness, "bench-dst");
        eprintln!(
            "[bench] real Glance up in {:.1} s: {} → {}",
            t.elapsed().as_secs_f64(),
            src.url,
            dst.url
        );
        // No pooled connections: each call on a fresh one, so a keep-alive connection that
        // uWSGI let go stale cannot fail a call.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .expect("http client");
        let name = "real-big";
        let source_image: Value = rt.block_on(async {
            let id = glance_create(&http, &src.url, name).await;
            let body = synthetic_bytes(7, 0, real_size as usize);
            let t = Instant::now();
            let r = http
                .put(format!("{}/v2/images/{id}/file", src.url))
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .await
                .expect("upload source image");
            assert!(r.status().is_success(), "upload: {}", r.status());
            eprintln!(
                "[bench] source image uploaded to real Glance at {:.0} MB/s",
                mbps(real_size, t.elapsed().as_secs_f64())
            );
            http.get(format!("{}/v2/images/{id}", src.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        let source_id = source_image["id"].as_str().unwrap().to_owned();
        let checksum = source_image["checksum"].as_str().unwrap().to_owned();
        let sha512 = source_image["os_hash_value"].as_str().unwrap().to_owned();
        // Variants: 0 glance-sync; 1 the pipe as typed; 2 the pipe without `Expect:
        // 100-continue` (curl sends it for uploads and waits up to 1 s for an answer uWSGI never
        // gives); 3 that pipe with MD5 and SHA-512 checked on the side (tee into md5sum and
        // sha512sum), i.e. doing the same verification work as glance-sync.
        const VARIANTS: usize = 4;
        let labels = [
            "",
            "curl GET → curl PUT pipe, as typed",
            "same pipe, PUT without Expect: 100-continue",
            "same, plus tee → md5sum, sha512sum (verified)",
        ];
        let mut rate: [Vec<f64>; VARIANTS] = Default::default();
        let mut client_cpu: [Vec<f64>; VARIANTS] = Default::default();
        // CPU-s/GB of the two Glance servers, per variant.
        let mut glance_cpu: [Vec<f64>; VARIANTS] = Default::default();
        let mut gs_logged = vec![];
        let gb = real_size as f64 / 1e9;
        for i in 0..args.reps {
            // Rotate the order, so that a drift in the machine's load hits all alike.
            for k in 0..VARIANTS {
                let which = (i + k) % VARIANTS;
                let dir = subdir(base, &format!("real-{i}-{which}"));
                let servers0 = src.cpu() + dst.cpu();
                let r = if which == 0 {
                    let cfg = src_to_dst_config(&dir, &src.url, &dst.url, "");
                    let r = run_child(glance_sync_run(&exe, &cfg), &dir, "glance-sync");
                    r.check("glance-sync run (real Glance)");
                    gs_logged.extend(logged_mbps(&r.stderr));
                    r
                } else {
                    let target_id = rt.block_on(glance_create(&http, &dst.url, name));
                    let get = format!("curl -sS --fail {}/v2/images/{source_id}/file", src.url);
                    let put = format!(
                        "curl -sS --fail -X PUT {}-H 'Content-Type: application/octet-stream' \
                         -T - {}/v2/images/{target_id}/file",
                        if which == 1 { "" } else { "-H 'Expect:' " },
                        dst.url
                    );
                    let d = dir.display();
                    let script = if which == 3 {
                        format!(
                            "set -o pipefail; {get} | tee >(md5sum > {d}/md5) >(sha512sum > {d}/sha) \
                             | {put} || exit 1; \
                             for _ in $(seq 1000); do [ -s {d}/md5 ] && [ -s {d}/sha ] && break; sleep 0.005; done; \
                             grep -q {checksum} {d}/md5 && grep -q {sha512} {d}/sha"
                        )
                    } else {
                        format!("set -o pipefail; {get} | {put}")
                    };
                    let mut c = Command::new("bash");
                    c.args(["-c", &script]);
                    let r = run_child(c, &dir, "curl");
                    r.check(labels[which]);
                    r
                };
                glance_cpu[which].push((src.cpu() + dst.cpu() - servers0) / gb);
                rate[which].push(mbps(real_size, r.wall));
                // For the pipes: bash and the curls (md5sum/sha512sum are not waited for by
                // bash, so their CPU is not in it).
                client_cpu[which].push(r.cpu / gb);
                eprintln!(
                    "[bench]   rep {i}: {} {:.0} MB/s",
                    if which == 0 {
                        "glance-sync"
                    } else {
                        labels[which]
                    },
                    mbps(real_size, r.wall)
                );
                rt.block_on(async {
                    glance_assert_copy(&http, &dst.url, name, &source_image).await;
                    glance_delete_named(&http, &dst.url, name).await;
                });
            }
        }
        let best_pipe = median(&rate[1]).max(median(&rate[2]));
        let ratio = median(&rate[0]) / best_pipe;
        real_ratio = Some(ratio);
        let (lo, hi) = range(&rate[0]);
        rep.row(
            "4",
            &format!("glance-sync, {} MiB, real Glance → real Glance", args.real_mib),
            format!("{:.0} MB/s", median(&rate[0])),
            format!(
                "range {lo:.0}–{hi:.0}; transfer alone {} MB/s (its log); glance-sync {:.2} CPU-s/GB, the two Glance {:.2} CPU-s/GB",
                if gs_logged.is_empty() {
                    "?".to_owned()
                } else {
                    format!("{:.0}", median(&gs_logged))
                },
                median(&client_cpu[0]),
                median(&glance_cpu[0])
            ),
        );
        for (which, label) in labels.iter().enumerate().skip(1) {
            let (lo, hi) = range(&rate[which]);
            rep.row(
                "4",
                label,
                format!("{:.0} MB/s", median(&rate[which])),
                format!(
                    "range {lo:.0}–{hi:.0}; glance-sync / this = {:.2}; the two Glance {:.2} CPU-s/GB, curls {:.2} CPU-s/GB; the target image's create is not timed",
                    median(&rate[0]) / median(&rate[which]),
                    median(&glance_cpu[which]),
                    median(&client_cpu[which])
                ),
            );
        }
        drop(dst);
        drop(src);
    }

    // ---- (5) no-op run over N images in sync ----------------------------------------------
    let mut noop = None;
    if args.wants("noop") {
        let n = args.noop_images;
        let source = rt.block_on(FakeGlance::start());
        for i in 0..n {
            let mut spec = ImageSpec::new(
                format!("tiny-{i:05}"),
                ImageData::Bytes(Bytes::from(format!("tiny image number {i}\n"))),
            );
            spec.properties.insert("os_distro".into(), "cirros".into());
            source.add_image(spec);
        }
        let target = rt.block_on(FakeGlance::start());
        let dir = subdir(base, "noop");
        // The first run copies everything (more images in flight to make that quicker); the
        // measured runs use the default settings over the same state.
        let prep_cfg = src_to_dst_config(
            &dir,
            &source.url,
            &target.url,
            "[transfer]\nmax_parallel_images = 8\n",
        );
        let r = run_child(glance_sync_run(&exe, &prep_cfg), &dir, "prep");
        r.check("glance-sync run (copying the tiny images)");
        assert_eq!(target.images().len(), n, "every tiny image copied");
        let prep = r.wall;
        let cfg = src_to_dst_config(&dir, &source.url, &target.url, "");
        let (mut walls, mut reqs, mut cpus, mut fake_cpus) = (vec![], vec![], vec![], vec![]);
        let mut log_example = Vec::new();
        for i in 0..args.reps {
            source.clear_requests();
            target.clear_requests();
            let c0 = self_cpu();
            let r = run_child(glance_sync_run(&exe, &cfg), &dir, &format!("noop-{i}"));
            fake_cpus.push(self_cpu() - c0);
            r.check("glance-sync run (no-op)");
            let writes = source.write_requests() + target.write_requests();
            assert_eq!(writes, 0, "a no-op run writes nothing");
            let s_log = source.request_log();
            let t_log = target.request_log();
            reqs.push((s_log.len() + t_log.len()) as f64);
            walls.push(r.wall);
            cpus.push(r.cpu);
            if i == 0 {
                log_example = s_log
                    .iter()
                    .map(|l| format!("src {l}"))
                    .chain(t_log.iter().map(|l| format!("dst {l}")))
                    .collect();
            }
        }
        eprintln!(
            "[bench] no-op requests (rep 0):\n  {}",
            log_example.join("\n  ")
        );
        let (lo, hi) = range(&walls);
        noop = Some((median(&walls), range(&reqs).1));
        rep.row(
            "5",
            &format!("no-op run, {n} images in sync (fakes)"),
            format!("{:.2} s", median(&walls)),
            format!(
                "range {lo:.2}–{hi:.2} s; {:.0} HTTP requests (max of reps); glance-sync {:.2} CPU-s, the fakes {:.2} CPU-s; first run (copying them) {prep:.1} s",
                range(&reqs).1,
                median(&cpus),
                median(&fake_cpus)
            ),
        );
    }

    // ---- (6) the plan step alone ----------------------------------------------------------
    let mut plan_med = None;
    if args.wants("plan") {
        let n = args.plan_images;
        let (times, writes) = plan_cpu(n, args.reps);
        assert_eq!(writes, 0, "every image is in sync");
        let (lo, hi) = range(&times);
        plan_med = Some(median(&times));
        rep.row(
            "6",
            &format!("plan {n} source × {n} target images"),
            format!("{:.3} s", median(&times)),
            format!("range {lo:.3}–{hi:.3} s; thread CPU time of glance_sync::plan::plan()"),
        );
    }

    // ---- (8) the first run over a target that already holds every image -----------------
    // A fresh state database (a new deployment, or a lost one): every image is in sync through
    // an identical public image on the target, and each (image, target) pair gets its row.
    let mut firstrun = None;
    if args.wants("firstrun") {
        let n = args.firstrun_images;
        let source = rt.block_on(FakeGlance::start());
        let target = rt.block_on(FakeGlance::start());
        for i in 0..n {
            let data = ImageData::Bytes(Bytes::from(format!("tiny image number {i}\n")));
            for (glance, owner) in [(&source, None), (&target, Some("another-project"))] {
                let mut spec = ImageSpec::new(format!("tiny-{i:06}"), data.clone());
                spec.visibility = "public".into();
                if let Some(owner) = owner {
                    spec.owner = Some(owner.into());
                }
                glance.add_image(spec);
            }
        }
        let (mut walls, mut cpus, mut rss) = (vec![], vec![], vec![]);
        for i in 0..args.reps {
            let dir = subdir(base, &format!("firstrun-{i}"));
            let cfg = src_to_dst_config(&dir, &source.url, &target.url, "");
            let r = run_child(glance_sync_run(&exe, &cfg), &dir, "glance-sync");
            r.check("glance-sync run (first run over images in sync)");
            assert_eq!(target.write_requests(), 0, "nothing to copy or patch");
            walls.push(r.wall);
            cpus.push(r.cpu);
            rss.push(r.peak_rss_mib);
        }
        let (lo, hi) = range(&walls);
        firstrun = Some(median(&walls));
        rep.row(
            "8",
            &format!("first run, fresh state, {n} images already on the target (fakes)"),
            format!("{:.2} s", median(&walls)),
            format!(
                "range {lo:.2}–{hi:.2} s; glance-sync {:.2} CPU-s, peak RSS {:.0} MiB; {n} rows recorded",
                median(&cpus),
                median(&rss)
            ),
        );
    }

    // ---- (10) 100,000 images on 4 targets: the first run, then no-op runs ----------------
    let mut scale = None;
    if args.wants("scale") {
        let (n, t) = (args.scale_images, args.scale_targets);
        let runs = scale_runs(&rt, base, &exe, "scale", n, t, args.reps);
        let (f, nw) = (walls(&runs.first), walls(&runs.noop));
        rep.row(
            "10",
            &format!("first run, fresh state, {n} images × {t} targets in sync (fakes)"),
            format!("{:.2} s", median(&f)),
            format!(
                "range {:.2}–{:.2} s; glance-sync {:.2} CPU-s, peak RSS {:.0} MiB; {} rows recorded",
                range(&f).0,
                range(&f).1,
                median(&cpus(&runs.first)),
                median(&peaks(&runs.first)),
                n * t
            ),
        );
        rep.row(
            "10b",
            &format!("no-op run, {n} images × {t} targets in sync (fakes)"),
            format!("{:.2} s", median(&nw)),
            format!(
                "range {:.2}–{:.2} s; peak RSS {:.0} MiB; glance-sync {:.2} CPU-s, the fakes {:.2} CPU-s; {} HTTP requests",
                range(&nw).0,
                range(&nw).1,
                median(&peaks(&runs.noop)),
                median(&cpus(&runs.noop)),
                median(&runs.fake_cpu),
                runs.requests
            ),
        );
        scale = Some((
            median(&f),
            range(&peaks(&runs.first)).1,
            median(&nw),
            range(&peaks(&runs.noop)).1,
        ));
    }

    // ---- (11) 1,000,000 images on 1 target: no-op runs ----------------------------------
    let mut million = None;
    if args.wants("million") {
        let n = args.million_images;
        let runs = scale_runs(&rt, base, &exe, "million", n, 1, args.reps);
        let (f, nw) = (walls(&runs.first), walls(&runs.noop));
        rep.row(
            "11",
            &format!("no-op run, {n} images × 1 target in sync (fakes)"),
            format!("{:.2} s", median(&nw)),
            format!(
                "range {:.2}–{:.2} s; peak RSS {:.0} MiB; glance-sync {:.2} CPU-s, the fakes {:.2} CPU-s; first run {:.1} s, peak RSS {:.0} MiB",
                range(&nw).0,
                range(&nw).1,
                median(&peaks(&runs.noop)),
                median(&cpus(&runs.noop)),
                median(&runs.fake_cpu),
                median(&f),
                median(&peaks(&runs.first))
            ),
        );
        million = Some((median(&nw), range(&peaks(&runs.noop)).1));
    }

    // ---- (9) max_bandwidth: the rate held, and a timetable boundary ----------------------
    // The rate is measured on the target's side (bytes it received), over the middle 80 % of the
    // copy, so process start, listing and read-back do not count.
    let mut bandwidth = None;
    if args.wants("bandwidth") {
        let (rate_mib, seconds) = if quick { (8u64, 2.0) } else { (50u64, 30.0) };
        let size = (rate_mib as f64 * seconds) as u64 * MIB;
        let data = ImageData::synthetic(size, 11);
        let source = rt.block_on(FakeGlance::start());
        source.add_image(ImageSpec::new("paced", data.clone()));
        let target = fast_target(&rt, &[&data]);
        let dir = subdir(base, "bandwidth");
        let cfg = src_to_dst_config(
            &dir,
            &source.url,
            &target.url,
            &format!("[transfer]\nmax_bandwidth = \"{rate_mib}MiB/s\"\n"),
        );
        let (samples, r) = sampled(&target, || {
            run_child(glance_sync_run(&exe, &cfg), &dir, "glance-sync")
        });
        r.check("glance-sync run (max_bandwidth)");
        let achieved = rate_between(&samples, size / 10, size * 9 / 10) / MIB as f64;
        let error = achieved / rate_mib as f64 - 1.0;
        rep.row(
            "9",
            &format!(
                "max_bandwidth = \"{rate_mib}MiB/s\", {} MiB copy",
                size / MIB
            ),
            format!("{achieved:.2} MiB/s"),
            format!(
                "{:+.1} % off the limit, over the middle 80 % of the bytes",
                error * 100.0
            ),
        );
        // The boundary: a job timetable (UTC) going from the limit to twice it at the next
        // whole minute, with the copy started 10 s before it.
        let boundary = if quick {
            None
        } else {
            let now = jiff::Timestamp::now();
            let mut at = now
                .round(
                    jiff::TimestampRound::new()
                        .smallest(jiff::Unit::Minute)
                        .mode(jiff::RoundMode::Ceil),
                )
                .unwrap();
            if at.duration_since(now).as_secs_f64() < 12.0 {
                at += jiff::SignedDuration::from_secs(60);
            }
            let fmt = |t: jiff::Timestamp| {
                t.to_zoned(jiff::tz::TimeZone::UTC)
                    .strftime("%H:%M")
                    .to_string()
            };
            let before = at - jiff::SignedDuration::from_secs(60);
            let size = rate_mib * 10 * MIB + 2 * rate_mib * 15 * MIB;
            let data = ImageData::synthetic(size, 12);
            let source = rt.block_on(FakeGlance::start());
            source.add_image(ImageSpec::new("timetabled", data.clone()));
            let target = fast_target(&rt, &[&data]);
            let dir = subdir(base, "bandwidth-timetable");
            let cfg = write_config(
                &dir,
                &[("src", &source.url), ("dst", &target.url)],
                "src",
                &["dst"],
                "",
            );
            let text = std::fs::read_to_string(&cfg).unwrap().replace(
                "targets = [\"dst\"]\n",
                &format!(
                    "targets = [\"dst\"]\ntimezone = \"UTC\"\nmax_bandwidth = {{ \"{}\" = \"{rate_mib}MiB/s\", \"{}\" = \"{}MiB/s\" }}\n",
                    fmt(before),
                    fmt(at),
                    2 * rate_mib
                ),
            );
            std::fs::write(&cfg, text).unwrap();
            let start = at - jiff::SignedDuration::from_secs(10);
            std::thread::sleep(start.duration_since(jiff::Timestamp::now()).unsigned_abs());
            let boundary_at = Instant::now()
                + Duration::from_secs_f64(at.duration_since(jiff::Timestamp::now()).as_secs_f64());
            let (samples, r) = sampled(&target, || {
                run_child(glance_sync_run(&exe, &cfg), &dir, "glance-sync")
            });
            r.check("glance-sync run (max_bandwidth timetable)");
            // When the pace first exceeds 1.5 × the old limit over a quarter of a second.
            let changed = samples.windows(6).find(|w| {
                let (t0, b0) = w[0];
                let (t1, b1) = w[5];
                (b1 - b0) as f64 / (t1 - t0).as_secs_f64() > 1.5 * (rate_mib * MIB) as f64
            });
            // Judged at the end of that window: the change happened by then.
            changed.map(|w| {
                let delay = if w[5].0 >= boundary_at {
                    w[5].0.duration_since(boundary_at).as_secs_f64()
                } else {
                    -boundary_at.duration_since(w[5].0).as_secs_f64()
                };
                rep.row(
                    "9b",
                    &format!(
                        "timetable {rate_mib} → {} MiB/s at {} UTC",
                        2 * rate_mib,
                        fmt(at)
                    ),
                    format!("{delay:+.2} s"),
                    "end of the first 0.25 s window in which the target's pace exceeded 1.5 × the \
                     old limit, from the boundary"
                        .into(),
                );
                delay
            })
        };
        bandwidth = Some((error, boundary));
    }

    // ---- (7) four images in parallel ------------------------------------------------------
    let mut par = None;
    if args.wants("parallel") {
        let psize = args.parallel_mib * MIB;
        let data = ImageData::synthetic(psize, 9);
        let source = rt.block_on(FakeGlance::start());
        let names: Vec<String> = (0..4).map(|i| format!("par-{i}")).collect();
        let ids: Vec<String> = names
            .iter()
            .map(|n| source.add_image(ImageSpec::new(n.clone(), data.clone())))
            .collect();
        let original = source.image(&ids[0]).unwrap();
        let (mut rates, mut rss, mut cpu) = (vec![], vec![], vec![]);
        let total = 4 * psize;
        for i in 0..args.reps {
            let target = fast_target(&rt, &[&data]);
            let dir = subdir(base, &format!("par-{i}"));
            let cfg = src_to_dst_config(
                &dir,
                &source.url,
                &target.url,
                "[transfer]\nmax_parallel_images = 4\n",
            );
            let r = run_child(glance_sync_run(&exe, &cfg), &dir, "glance-sync");
            r.check("glance-sync run (4 in parallel)");
            for n in &names {
                assert_copied(&target, n, &original);
            }
            rates.push(mbps(total, r.wall));
            rss.push(r.peak_rss_mib);
            cpu.push(r.cpu / (total as f64 / 1e9));
        }
        let (lo, hi) = range(&rates);
        par = Some((median(&rates), range(&rss).1));
        rep.row(
            "7",
            &format!("4 × {} MiB in parallel (fakes)", args.parallel_mib),
            format!("{:.0} MB/s", median(&rates)),
            format!(
                "range {lo:.0}–{hi:.0} total; {:.2} CPU-s/GB; peak RSS {:.1} MiB (max of reps)",
                median(&cpu),
                range(&rss).1
            ),
        );
    }

    // ---- fan-out: two targets, the source is read once ------------------------------------
    let mut fanout = None;
    if args.wants("servercopy") {
        server_copy_rows(
            &rt,
            base,
            &exe,
            args.servercopy_mib * MIB,
            args.reps,
            &mut rep,
        );
    }

    if args.wants("fanout") {
        let fsize = (size / 4).max(MIB);
        let data = ImageData::synthetic(fsize, 5);
        let source = rt.block_on(FakeGlance::start());
        let id = source.add_image(ImageSpec::new("fan", data.clone()));
        let original = source.image(&id).unwrap();
        let a = fast_target(&rt, &[&data]);
        let b = fast_target(&rt, &[&data]);
        let dir = subdir(base, "fanout");
        let cfg = write_config(
            &dir,
            &[("src", &source.url), ("a", &a.url), ("b", &b.url)],
            "src",
            &["a", "b"],
            "",
        );
        let r = run_child(glance_sync_run(&exe, &cfg), &dir, "glance-sync");
        r.check("glance-sync run (fan-out)");
        assert_copied(&a, "fan", &original);
        assert_copied(&b, "fan", &original);
        let served = source.bytes_served();
        fanout = Some((served, fsize));
        rep.row(
            "fan",
            &format!("fan-out of {} MiB to 2 targets", fsize / MIB),
            format!("{:.0} MB/s", mbps(fsize, r.wall)),
            format!(
                "source served {served} bytes for an image of {fsize}; peak RSS {:.1} MiB",
                r.peak_rss_mib
            ),
        );
    }

    // ---- targets --------------------------------------------------------------------------
    let meaningful = |m: bool| if quick { None } else { Some(m) };
    // Judged on the median of the per-repetition ratios (each pair measured back to back); the
    // ratio of the medians is shown beside it.
    if let (Some(c), Some(h), Some(r)) = (copy_mbps, hash_limit, paired_hash_ratio) {
        rep.target(
            "(2) against (1), MD5 ‖ SHA-512 (shown only: the copy no longer hashes MD5)",
            format!(
                "{r:.2} × (median of per-rep ratios; medians {c:.0} / {h:.0} = {:.2})",
                c / h
            ),
            None,
        );
    }
    if let (Some(c), Some(sha)) = (copy_mbps, sha512_chosen) {
        rep.target(
            "(2) ≥ 0.85 × one core's SHA-512 (1c, the implementation used)",
            format!("{:.2} × ({c:.0} / {sha:.0})", c / sha),
            meaningful(c / sha >= 0.85),
        );
    }
    if let Some(r) = paired_previous_ratio {
        rep.target(
            "(2) ≥ 1.8 × the previous release (2p)",
            format!("{r:.2} × (median of per-rep ratios)"),
            meaningful(r >= 1.8),
        );
    }
    if let Some(cpu) = copy_cpu_per_gb {
        rep.target(
            "(2) ≤ 1.6 CPU-s/GB",
            format!("{cpu:.2} CPU-s/GB"),
            meaningful(cpu <= 1.6),
        );
    }
    if let (Some(c), Some(p), Some(r)) = (copy_mbps, peer_mbps_med, paired_peer_ratio) {
        rep.target(
            "(2) ≥ 3 × (3)",
            format!(
                "{r:.2} × (median of per-rep ratios; medians {c:.0} / {p:.0} = {:.2})",
                c / p
            ),
            meaningful(r >= 3.0),
        );
    }
    if let Some(r) = paired_guide_ratio {
        rep.target(
            "(2) ≥ 3 × (3c): the same target against the peer as the SDK guide's example writes it (row 3 is the one that counts)",
            format!("{r:.2} × (median of per-rep ratios)"),
            meaningful(r >= 3.0),
        );
    }
    if let Some(r) = real_ratio {
        rep.target(
            "(4) glance-sync ≥ 1.0 × curl pipe (the faster unverified variant)",
            format!("{r:.2} ×"),
            meaningful(r >= 1.0),
        );
    }
    if let Some(r) = copy_rss {
        rep.target(
            "peak RSS ≤ 32 MiB in (2)",
            format!("{r:.1} MiB"),
            meaningful(r <= 32.0),
        );
    }
    if let Some((_, r)) = par {
        rep.target(
            "peak RSS ≤ 160 MiB in (7)",
            format!("{r:.1} MiB"),
            meaningful(r <= 160.0),
        );
    }
    if let Some((w, n)) = noop {
        rep.target(
            "(5) ≤ 0.5 s wall and ≤ 24 HTTP requests",
            format!("{w:.2} s, {n:.0} requests"),
            meaningful(w <= 0.5 && n <= 24.0),
        );
    }
    if let Some(w) = firstrun {
        let n = args.firstrun_images;
        // Shown only: the issue's target (15 s for 100,000 images on each of 4 targets) is
        // judged on row 10, which runs exactly that.
        rep.target(
            "(8) rows recorded per second (shown only; (10) is the target)",
            format!("{:.0} rows/s", n as f64 / w),
            None,
        );
    }
    if let Some((first, first_rss, noop, noop_rss)) = scale {
        rep.target(
            "(10) first run ≤ 15 s",
            format!("{first:.2} s (peak RSS {first_rss:.0} MiB)"),
            meaningful(first <= 15.0),
        );
        rep.target(
            "(10b) no-op ≤ 6 s and ≤ 128 MiB",
            format!("{noop:.2} s, {noop_rss:.0} MiB (highest of reps)"),
            meaningful(noop <= 6.0 && noop_rss <= 128.0),
        );
    }
    if let Some((noop, rss)) = million {
        rep.target(
            "(11) no-op ≤ 60 s and ≤ 192 MiB",
            format!("{noop:.2} s, {rss:.0} MiB (highest of reps)"),
            meaningful(noop <= 60.0 && rss <= 192.0),
        );
    }
    if let Some((error, boundary)) = bandwidth {
        // The limiter's accuracy does not depend on the machine's speed: judged in quick mode too.
        rep.target(
            "(9) max_bandwidth rate within ±5 %",
            format!("{:+.1} %", error * 100.0),
            Some(error.abs() <= 0.05),
        );
        if !quick {
            rep.target(
                "(9b) a timetable boundary takes effect within 1 s",
                boundary.map_or("no change seen".into(), |d| format!("{d:+.2} s")),
                // Never before the boundary (50 ms for the two clocks and the sampling step).
                Some(boundary.is_some_and(|d| (-0.05..=1.0).contains(&d))),
            );
        }
    }
    if let Some(p) = plan_med {
        rep.target("(6) ≤ 0.5 s", format!("{p:.3} s"), meaningful(p <= 0.5));
    }
    if let Some((served, fsize)) = fanout {
        // Correctness, not speed: checked in quick mode too.
        rep.target(
            "fan-out to 2 targets reads the source once",
            format!("{served} bytes served for {fsize}"),
            Some(served == fsize),
        );
    }

    let header = format!(
        "glance-sync benchmark{}: {} repetition(s), medians; {:.0} s\nmachine before: {machine_before}\nmachine after:  {}",
        if quick {
            " (QUICK: sizes too small to mean anything)"
        } else {
            ""
        },
        args.reps,
        started.elapsed().as_secs_f64(),
        machine()
    );
    rep.print(&header);
    if fanout.is_some_and(|(s, f)| s != f) || bandwidth.is_some_and(|(e, _)| e.abs() > 0.05) {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// (12) server-side copy: the targets pull (glance-download) vs glance-sync streams
// ---------------------------------------------------------------------------------------------

/// The harness's Keystone (tests/harness/keystone.sh) under the bench's harness root, on a free
/// port, with one catalog region per real Glance of the row; stopped on drop.
struct BenchKeystone {
    harness: PathBuf,
}

impl BenchKeystone {
    fn start(harness: &Path, port: u16, regions: &[(&str, &str)]) -> BenchKeystone {
        let keystone_sh = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/keystone.sh");
        let extra: Vec<String> = regions.iter().map(|(r, u)| format!("{r}={u}")).collect();
        let out = Command::new(keystone_sh)
            .arg("start")
            .env("GLANCE_SYNC_HARNESS", harness)
            .env("KEYSTONE_PORT", port.to_string())
            .env("GLANCE_EXTRA_REGIONS", extra.join(" "))
            .stdin(Stdio::null())
            .output()
            .expect("keystone.sh start");
        assert!(
            out.status.success(),
            "keystone.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        BenchKeystone {
            harness: harness.to_owned(),
        }
    }
}

impl Drop for BenchKeystone {
    fn drop(&mut self) {
        let _ =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/keystone.sh"))
                .arg("stop")
                .env("GLANCE_SYNC_HARNESS", &self.harness)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
    }
}

/// The bytes a Glance served for `GET .../file` to clients whose User-Agent starts with `agent`,
/// from its request log (the harness logs the agent at the end of each line).
fn served_file_bytes(glance: &RealGlance, agent: &str) -> u64 {
    let log = glance.harness.join(format!(
        "state/{}-{}/log/uwsgi.log",
        glance.name, glance.port
    ));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/file => generated ") && l.contains(&format!("\"{agent}")))
        .filter_map(|l| {
            let after = l.split_once(" => generated ")?.1;
            after.split_once(' ')?.0.parse::<u64>().ok()
        })
        .sum()
}

fn server_copy_rows(
    rt: &tokio::runtime::Runtime,
    base: &Path,
    exe: &Path,
    size: u64,
    reps: usize,
    rep: &mut Report,
) {
    const IMAGES: usize = 4;
    let harness = bench_harness();
    let ks_port = free_port();
    let ks_url = format!("http://127.0.0.1:{ks_port}");
    let keystone_env = |methods: &'static str| {
        vec![
            ("GLANCE_AUTH", "keystone".to_string()),
            ("KEYSTONE_URL", ks_url.clone()),
            ("GLANCE_IMPORT_METHODS", methods.to_string()),
            // Four copies at once plus glance-sync's idle pooled connections, each of which
            // holds a uWSGI thread: 4 threads (the harness's default) starve the fourth upload.
            ("GLANCE_THREADS", "8".to_string()),
        ]
    };
    let start = |name: &str, methods: &'static str| {
        let env = keystone_env(methods);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        RealGlance::start_with(&harness, name, &env)
    };
    let t = Instant::now();
    let src = start("bench-sc-src", "glance-direct,web-download,copy-image");
    let pulling = "glance-direct,web-download,copy-image,glance-download";
    let t1 = start("bench-sc-t1", pulling);
    let t2 = start("bench-sc-t2", pulling);
    let _keystone = BenchKeystone::start(
        &harness,
        ks_port,
        &[
            ("bench-sc-src", &src.url),
            ("bench-sc-t1", &t1.url),
            ("bench-sc-t2", &t2.url),
        ],
    );
    eprintln!(
        "[bench] Keystone and three real Glance up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let token: String = rt.block_on(async {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "demo", "domain": {"name": "Default"}, "password": "demo-secret"}}},
            "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}});
        let r = http
            .post(format!("{ks_url}/v3/auth/tokens"))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.headers()["x-subject-token"].to_str().unwrap().to_owned()
    });
    let sources: Vec<Value> = rt.block_on(async {
        let mut out = vec![];
        for i in 0..IMAGES {
            let r = http
                .post(format!("{}/v2/images", src.url))
                .header("x-auth-token", &token)
                .json(&json!({"name": format!("sc-{i}"), "disk_format": "raw",
                               "container_format": "bare"}))
                .send()
                .await
                .unwrap();
            let img: Value = r.json().await.unwrap();
            let id = img["id"].as_str().unwrap().to_owned();
            let r = http
                .put(format!("{}/v2/images/{id}/file", src.url))
                .header("x-auth-token", &token)
                .header("content-type", "application/octet-stream")
                .body(synthetic_bytes(40 + i as u64, 0, size as usize))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "upload: {}", r.status());
            let img: Value = http
                .get(format!("{}/v2/images/{id}", src.url))
                .header("x-auth-token", &token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            out.push(img);
        }
        out
    });
    let cloud = |name: &str, region: &str| {
        format!(
            "[clouds.{name}]\nauth_type = \"password\"\nregion_name = \"{region}\"\n\
             [clouds.{name}.auth]\nauth_url = \"{ks_url}/v3\"\nusername = \"demo\"\n\
             password = \"demo-secret\"\nproject_name = \"demo\"\n\
             user_domain_name = \"Default\"\nproject_domain_name = \"Default\"\n\n"
        )
    };
    let total = size * IMAGES as u64;
    for (method, id) in [("glance-download", "12"), ("stream", "12s")] {
        let mut walls = vec![];
        let mut through = vec![];
        for r in 0..reps {
            let dir = subdir(base, &format!("servercopy-{method}-{r}"));
            let config = dir.join("config.toml");
            std::fs::write(
                &config,
                format!(
                    "[state]\npath = \"{}\"\n\n[transfer]\nmax_parallel_images = {IMAGES}\n\n{}{}{}\
                     [[jobs]]\nname = \"sc\"\nsource = \"src\"\ntargets = [\"t1\", \"t2\"]\n\
                     transfer = \"{method}\"\n",
                    dir.join("state.db").display(),
                    cloud("src", "bench-sc-src"),
                    cloud("t1", "bench-sc-t1"),
                    cloud("t2", "bench-sc-t2"),
                ),
            )
            .unwrap();
            let textfile = dir.join("metrics.prom");
            let served0 = served_file_bytes(&src, "glance-sync");
            let mut cmd = glance_sync_run(exe, &config);
            cmd.arg("--metrics-textfile").arg(&textfile);
            let run = run_child(cmd, &dir, "glance-sync");
            run.check(&format!("glance-sync run, transfer = {method}"));
            let metrics = std::fs::read_to_string(&textfile).unwrap_or_default();
            let streamed: f64 = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("glance_sync_bytes_copied_total")
                        && l.contains("method=\"stream\"")
                })
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum();
            let read = served_file_bytes(&src, "glance-sync") - served0;
            // Through glance-sync: read from the source plus written to the targets.
            through.push(read as f64 + streamed);
            walls.push(run.wall);
            eprintln!(
                "[bench]   {method} rep {r}: {:.1} s, {:.0} MB through glance-sync",
                run.wall,
                (read as f64 + streamed) / 1e6
            );
            rt.block_on(async {
                for target in [&t1, &t2] {
                    let list: Value = http
                        .get(format!("{}/v2/images", target.url))
                        .header("x-auth-token", &token)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let copies = list["images"].as_array().unwrap();
                    assert_eq!(copies.len(), IMAGES, "copies on {}", target.url);
                    for copy in copies {
                        let original = sources
                            .iter()
                            .find(|s| s["name"] == copy["name"])
                            .expect("a copy of a source image");
                        for k in ["status", "size", "checksum", "os_hash_value"] {
                            assert_eq!(copy[k], original[k], "{k} of {}", copy["name"]);
                        }
                        let id = copy["id"].as_str().unwrap();
                        http.delete(format!("{}/v2/images/{id}", target.url))
                            .header("x-auth-token", &token)
                            .send()
                            .await
                            .unwrap();
                    }
                }
            });
        }
        let (lo, hi) = range(&walls);
        rep.row(
            id,
            &format!(
                "{IMAGES} × {} MiB to 2 real Glance targets, {method}",
                size / MIB
            ),
            format!("{:.1} s", median(&walls)),
            format!(
                "range {lo:.1}–{hi:.1} s; {:.0} MB through glance-sync (of {:.0} MB copied), \
                 {:.0} MB/s per target",
                median(&through) / 1e6,
                2.0 * total as f64 / 1e6,
                total as f64 / 1e6 / median(&walls)
            ),
        );
    }
}
