//! `glance-sync daemon`: schedules, metrics, overlap, SIGTERM during a transfer, SIGHUP reloads.

mod support;

use std::time::Duration;

use serde_json::json;
use support::daemon_proc::{DaemonProc, free_port, metric_value};
use support::fake_glance::{FakeGlance, Faults, ImageData, ImageSpec};
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::prometheus::Prometheus;
use support::sync_cli::write_config;

fn daemon_extra(job_lines: &str, port: u16, more: &str) -> String {
    format!("{job_lines}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{more}")
}

/// `promtool check metrics` on an exposition; panics with its complaints.
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; tests/run.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn daemon_runs_the_job_on_schedule_and_metrics_show_what_it_copied() {
    let test_start = jiff::Timestamp::now().as_second() as f64;
    let src = RealGlance::start("dmn-src");
    let dst = RealGlance::start("dmn-dst");
    let source = Api::new(&src.url);
    let mut total = 0u64;
    for (i, kib) in [700usize, 300, 129].iter().enumerate() {
        let img = source
            .create_with_data(
                image_body(&format!("img-{i}"), "raw", json!({})),
                random_bytes(kib * 1024, i as u64),
            )
            .await;
        total += img["size"].as_u64().unwrap();
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        &daemon_extra("interval = \"2s\"", port, ""),
    );
    let mut d = DaemonProc::start(&cfg, port).await;
    let runs = [("sync_job", "job"), ("result", "success")];
    d.wait_for(Duration::from_secs(60), "two successful runs", || async {
        d.metric("glance_sync_runs_total", &runs)
            .await
            .unwrap_or(0.0)
            >= 2.0
    })
    .await;

    let text = d.metrics().await;
    let target = [("sync_job", "job"), ("target", "dr")];
    let streamed = [("sync_job", "job"), ("target", "dr"), ("method", "stream")];
    assert_eq!(
        metric_value(&text, "glance_sync_bytes_copied_total", &streamed),
        Some(total as f64)
    );
    assert_eq!(
        metric_value(&text, "glance_sync_images_copied_total", &target),
        Some(3.0),
        "the second cycle copied nothing"
    );
    assert_eq!(
        metric_value(
            &text,
            "glance_sync_images",
            &[("sync_job", "job"), ("target", "dr"), ("state", "in_sync")]
        ),
        Some(3.0)
    );
    let last = metric_value(
        &text,
        "glance_sync_last_success_timestamp_seconds",
        &[("sync_job", "job")],
    )
    .unwrap();
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        test_start <= last && last <= now + 1.0,
        "{test_start} <= {last} <= {now}"
    );
    assert!(
        metric_value(
            &text,
            "glance_sync_api_requests_total",
            &[
                ("cloud", "dr"),
                ("operation", "upload"),
                ("status_class", "2xx")
            ]
        )
        .is_some()
    );
    assert_eq!(
        metric_value(
            &text,
            "glance_sync_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(text.contains("process_resident_memory_bytes"));
    assert_eq!(Api::new(&dst.url).list_all().await.len(), 3);
    promtool_check_metrics(&text);

    let healthz = reqwest::get(format!("{}/healthz", d.metrics_url))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);

    d.signal(libc::SIGTERM);
    let (code, _) = d.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "{}", d.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_outlasts_its_interval_is_skipped_not_doubled_and_counted() {
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new("slow", ImageData::synthetic(4 << 20, 3)));
    // The first download stalls: that run lasts the whole stall_timeout (3 s), three intervals.
    source.set_faults(Faults {
        stall_at: Some(1 << 20),
        data_fault_limit: Some(1),
        ..Faults::default()
    });
    let target = FakeGlance::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        &daemon_extra(
            "interval = \"1s\"",
            port,
            "[transfer]\nstall_timeout = \"3s\"\n",
        ),
    );
    let mut d = DaemonProc::start(&cfg, port).await;
    d.wait_for(
        Duration::from_secs(30),
        "a successful run after the stalled one",
        || async {
            d.metric("glance_sync_runs_total", &[("result", "success")])
                .await
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    let text = d.metrics().await;
    let skipped = metric_value(
        &text,
        "glance_sync_runs_skipped_total",
        &[("sync_job", "job")],
    )
    .unwrap();
    assert!(skipped >= 2.0, "skipped {skipped}");
    let downloads: Vec<String> = source
        .request_log()
        .into_iter()
        .filter(|r| r.contains("/file"))
        .collect();
    assert_eq!(
        downloads.len(),
        2,
        "one stalled, one good, none doubled: {downloads:?}"
    );
    assert!(
        d.log()
            .contains("skipped: the previous run was still going")
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)).await.0, 0);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn sigterm_during_a_large_transfer_exits_cleanly_and_the_next_start_completes_it() {
    const SIZE: u64 = 400 << 20;
    let source = FakeGlance::start().await;
    let id = source.add_image(ImageSpec::new("big-400m", ImageData::synthetic(SIZE, 9)));
    let dst = RealGlance::start("sigterm-dst");
    let target = Api::new(&dst.url);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        &daemon_extra(
            "interval = \"1h\"",
            port,
            "[daemon]\nshutdown_grace = \"20s\"\n",
        ),
    );
    let mut d = DaemonProc::start(&cfg, port).await;
    d.wait_for(
        Duration::from_secs(30),
        "the transfer to be under way",
        || async { source.bytes_served() > 40 << 20 },
    )
    .await;
    assert!(
        source.bytes_served() < SIZE,
        "the transfer finished too early to test"
    );
    d.signal(libc::SIGTERM);
    let (code, took) = d.wait_exit(Duration::from_secs(25)).await;
    assert_eq!(code, 0, "{}", d.log());
    assert!(
        took < Duration::from_secs(20),
        "exit took {took:?}, over the grace"
    );
    let left = target.list_all().await;
    assert!(
        left.is_empty(),
        "half-made image left on the target: {left:?}"
    );
    let db = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");

    let d2 = DaemonProc::start(&cfg, port).await;
    d2.wait_for(
        Duration::from_secs(120),
        "the copy to complete after restart",
        || async {
            d2.metric("glance_sync_runs_total", &[("result", "success")])
                .await
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    let copies = target.list_all().await;
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["status"], "active");
    assert_eq!(
        copies[0]["checksum"],
        source.image(&id).unwrap()["checksum"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_changed_job_list_and_keeps_the_old_config_when_the_new_is_broken() {
    let source = FakeGlance::start().await;
    let id = source.add_image(ImageSpec::new(
        "img",
        ImageData::Bytes(vec![1u8; 8192].into()),
    ));
    let t1 = FakeGlance::start().await;
    let t2 = FakeGlance::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let clouds = [
        ("prod", source.url.as_str()),
        ("t1", &t1.url),
        ("t2", &t2.url),
    ];
    let cfg = write_config(
        dir.path(),
        &clouds,
        "prod",
        &["t1"],
        &daemon_extra("interval = \"1s\"", port, ""),
    );
    let mut d = DaemonProc::start(&cfg, port).await;
    d.wait_for(Duration::from_secs(20), "job copied to t1", || async {
        !t1.images().is_empty()
    })
    .await;
    assert!(t2.images().is_empty());

    // A second job appears: it runs without a restart.
    let original = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{original}\n[[jobs]]\nname = \"second\"\nsource = \"prod\"\ntargets = [\"t2\"]\ninterval = \"1s\"\n"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for(
        Duration::from_secs(20),
        "second job copied to t2",
        || async { !t2.images().is_empty() },
    )
    .await;
    assert_eq!(t2.images()[0]["glance_sync_source_id"], id.as_str());

    // A broken file: logged, the running config stays.
    std::fs::write(&cfg, "this is [not toml").unwrap();
    let before = d
        .metric(
            "glance_sync_runs_total",
            &[("sync_job", "second"), ("result", "success")],
        )
        .await
        .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for(
        Duration::from_secs(20),
        "the old config to keep running",
        || async {
            d.metric(
                "glance_sync_runs_total",
                &[("sync_job", "second"), ("result", "success")],
            )
            .await
            .unwrap()
                > before + 1.0
        },
    )
    .await;
    assert!(d.log().contains("new configuration refused"), "{}", d.log());
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)).await.0, 0);
}

#[tokio::test]
async fn metrics_textfile_of_a_one_shot_run_is_valid_and_complete() {
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new(
        "img",
        ImageData::Bytes(vec![5u8; 10_000].into()),
    ));
    let target = FakeGlance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        "",
    );
    let prom = dir.path().join("glance-sync.prom");
    support::sync_cli::glance_sync(&cfg, &["run", "--metrics-textfile", prom.to_str().unwrap()])
        .await
        .assert_code(0);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        metric_value(
            &text,
            "glance_sync_bytes_copied_total",
            &[("sync_job", "job"), ("target", "dr"), ("method", "stream")]
        ),
        Some(10_000.0)
    );
    assert_eq!(
        metric_value(&text, "glance_sync_runs_total", &[("result", "success")]),
        Some(1.0)
    );
    promtool_check_metrics(&text);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary file left behind");
}

#[test]
fn alert_rules_and_scrape_config_pass_promtool() {
    let root = env!("CARGO_MANIFEST_DIR");
    for args in [
        vec!["check", "rules", "deploy/prometheus/alerts.yml"],
        vec!["check", "config", "deploy/prometheus/prometheus.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(root)
            .output()
            .expect("promtool (Debian package prometheus; tests/run.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let units = [
        "glance-sync.service",
        "glance-sync-run.service",
        "glance-sync-run.timer",
    ];
    for u in units {
        let text =
            std::fs::read_to_string(format!("{}/deploy/systemd/{u}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        // verify checks that ExecStart's binary exists: point it at the one just built.
        std::fs::write(
            dir.path().join(u),
            text.replace(
                "/usr/local/bin/glance-sync",
                env!("CARGO_BIN_EXE_glance-sync"),
            ),
        )
        .unwrap();
    }
    // --man=no: their Documentation= names the man page, which only the Debian package
    // installs (tests/package.sh verifies the installed units with it).
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units.iter().map(|u| dir.path().join(u)))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_tells_systemd_ready_status_and_pings_the_watchdog() {
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new(
        "img",
        ImageData::Bytes(vec![3u8; 4096].into()),
    ));
    let target = FakeGlance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        &daemon_extra("interval = \"1h\"", port, ""),
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_glance-sync"))
        .arg("--config")
        .arg(&cfg)
        .arg("daemon")
        .env("NOTIFY_SOCKET", &socket_path)
        // systemd's WatchdogSec=1s: pings are due every half second.
        .env("WATCHDOG_USEC", "1000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Without WATCHDOG_PID, WATCHDOG_USEC applies to whichever process reads it: the daemon.
    let messages = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(8) {
            let Ok(n) = socket.recv(&mut buf) else { break };
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let all = seen.join("\n");
            if all.contains("READY=1")
                && all.matches("WATCHDOG=1").count() >= 2
                && all.contains("STATUS=running job")
            {
                break;
            }
        }
        seen
    })
    .await
    .unwrap();
    let all = messages.join("\n");
    assert!(all.contains("READY=1"), "{messages:?}");
    assert!(all.contains("STATUS=running job job"), "{messages:?}");
    assert!(all.matches("WATCHDOG=1").count() >= 2, "{messages:?}");
    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_the_daemon_and_loads_the_alert_rules() {
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new(
        "img",
        ImageData::Bytes(vec![9u8; 4096].into()),
    ));
    let target = FakeGlance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        &daemon_extra("interval = \"1h\"", port, ""),
    );
    let mut d = DaemonProc::start(&cfg, port).await;

    // The shipped scrape config and rules, pointed at this daemon and scraping every second.
    let prometheus = Prometheus::start_with_shipped_config(
        dir.path(),
        &[("127.0.0.1:9420", &format!("127.0.0.1:{port}"))],
    );
    let api = prometheus.api.clone();
    let query = |q: &'static str| {
        let api = api.clone();
        async move {
            let r = reqwest::get(format!("{api}/query?query={q}")).await.ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            v["data"]["result"]
                .as_array()
                .filter(|a| !a.is_empty())
                .cloned()
        }
    };
    d.wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape the daemon",
        || async { query("glance_sync_bytes_copied_total").await.is_some() },
    )
    .await;
    let series = query("glance_sync_bytes_copied_total{method=\"stream\"}")
        .await
        .unwrap();
    // Without honor_labels: Prometheus' own `job` is the scrape job, the replication job is
    // `sync_job`, and nothing is renamed to exported_job.
    assert_eq!(series[0]["metric"]["job"], "glance-sync", "{series:?}");
    assert_eq!(series[0]["metric"]["sync_job"], "job", "{series:?}");
    assert!(
        series[0]["metric"].get("exported_job").is_none(),
        "{series:?}"
    );
    assert_eq!(series[0]["value"][1], "4096");
    let up = query("up{job=\"glance-sync\"}").await.unwrap();
    assert_eq!(up[0]["value"][1], "1");
    let rules: serde_json::Value = reqwest::get(format!("{api}/rules"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, |r| r.len());
    assert_eq!(loaded, 5, "{rules}");

    // Every query of the shipped Grafana dashboard is valid PromQL against the live series.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/glance-sync.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$job", ".*");
            let r: serde_json::Value = client
                .get(format!("{api}/query"))
                .query(&[("query", expr.as_str())])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(r["status"], "success", "{}: {expr}: {r}", panel["title"]);
        }
    }
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)).await.0, 0);
}

/// `max_bandwidth` paces a copy, the gauge shows the limit in force, and SIGHUP lifts it for the
/// copy in flight: it speeds up and finishes without being started again.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_changes_the_bandwidth_limit_of_a_copy_in_flight() {
    let size: u64 = 24 << 20;
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new("paced", ImageData::synthetic(size, 5)));
    let target = FakeGlance::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = |limit: &str| {
        write_config(
            dir.path(),
            &[("prod", &source.url), ("dr", &target.url)],
            "prod",
            &["dr"],
            &daemon_extra(
                "interval = \"1h\"",
                port,
                // Hashing at normal priority: on a busy machine, hashing at nice 19 could pace
                // the copy instead of the limit.
                &format!("[transfer]\nmax_bandwidth = \"{limit}\"\nhashing_nice = 0\n"),
            ),
        )
    };
    let cfg = config("2MiB/s");
    let d = DaemonProc::start(&cfg, port).await;
    d.wait_for(Duration::from_secs(20), "the copy to start", || async {
        source.bytes_served() > 0
    })
    .await;
    assert_eq!(
        d.metric(
            "glance_sync_bandwidth_limit_bytes_per_second",
            &[("sync_job", "")]
        )
        .await,
        Some(2.0 * 1024.0 * 1024.0)
    );
    // Paced: after 2 s, far from the 24 MiB a loopback copy moves in well under a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paced = source.bytes_served();
    assert!(paced < 12 << 20, "{paced} bytes read in 2 s at 2 MiB/s");

    config("off");
    d.signal(libc::SIGHUP);
    // At 2 MiB/s the rest would take ~10 s more.
    d.wait_for(Duration::from_secs(5), "the rest read unpaced", || async {
        source.bytes_served() >= size
    })
    .await;
    d.wait_for(Duration::from_secs(60), "the copy to be active", || async {
        target.images().iter().any(|i| i["status"] == "active")
    })
    .await;
    assert_eq!(source.bytes_served(), size, "read once: not restarted");
    assert_eq!(
        d.metric(
            "glance_sync_bandwidth_limit_bytes_per_second",
            &[("sync_job", "")]
        )
        .await,
        Some(0.0)
    );
}
