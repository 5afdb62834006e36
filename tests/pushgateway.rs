//! `run --pushgateway` / `[metrics] pushgateway`: one-shot runs push their metrics to a real
//! Prometheus Pushgateway (Debian's `prometheus-pushgateway`), which a real Prometheus scrapes
//! with the shipped config.

mod support;

use std::time::Duration;

use serde_json::json;
use support::daemon_proc::{free_port, metric_value};
use support::fake_glance::{FakeGlance, ImageData, ImageSpec};
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::prometheus::{KillOnDrop, Prometheus};
use support::sync_cli::{clouds_toml, glance_sync};

/// A Pushgateway on a free loopback port, keeping nothing on disk.
async fn start_pushgateway() -> (KillOnDrop, String) {
    let port = free_port();
    let child = KillOnDrop(
        std::process::Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--persistence.file=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus-pushgateway (Debian package; tests/run.sh installs it)"),
    );
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(format!("{url}/-/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return (child, url);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the Pushgateway did not start on {url}");
}

async fn pushed(pushgateway: &str) -> String {
    reqwest::get(format!("{pushgateway}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// A config of two replication jobs, `alpha` and `beta`, each copying its own images.
fn two_jobs(
    dir: &std::path::Path,
    source: &str,
    target: &str,
    metrics: &str,
) -> std::path::PathBuf {
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[state]\npath = \"{}\"\n\n{metrics}\n{}\
             [[jobs]]\nname = \"alpha\"\nsource = \"prod\"\ntargets = [\"dr\"]\n\
             interval = \"1h\"\n[jobs.filter]\ninclude = [\"alpha-*\"]\n\n\
             [[jobs]]\nname = \"beta\"\nsource = \"prod\"\ntargets = [\"dr\"]\n\
             interval = \"1h\"\n[jobs.filter]\ninclude = [\"beta-*\"]\n",
            dir.join("state.db").display(),
            clouds_toml(&[("prod", source), ("dr", target)], None),
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_one_shot_run_pushes_every_sync_job_and_prometheus_reads_them_with_the_shipped_config() {
    let src = RealGlance::start("push-src");
    let dst = RealGlance::start("push-dst");
    let source = Api::new(&src.url);
    for (name, seed) in [("alpha-ubuntu", 1), ("beta-debian", 2)] {
        source
            .create_with_data(image_body(name, "raw", json!({})), random_bytes(4096, seed))
            .await;
    }
    let (_pg, pg_url) = start_pushgateway().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_jobs(
        dir.path(),
        &src.url,
        &dst.url,
        &format!("[metrics]\npushgateway = \"{pg_url}\"\n"),
    );

    glance_sync(&cfg, &["run"]).await.assert_code(0);

    let text = pushed(&pg_url).await;
    let host = hostname();
    for job in ["alpha", "beta"] {
        let group = [
            ("job", "glance-sync"),
            ("instance", host.as_str()),
            ("sync_job", job),
        ];
        let runs = [&group[..], &[("result", "success")]].concat();
        assert_eq!(
            metric_value(&text, "glance_sync_runs_total", &runs),
            Some(1.0),
            "{job}:\n{text}"
        );
        let copied = [&group[..], &[("target", "dr")]].concat();
        assert_eq!(
            metric_value(&text, "glance_sync_images_copied_total", &copied),
            Some(1.0),
            "{job}:\n{text}"
        );
        assert!(
            metric_value(&text, "glance_sync_last_success_timestamp_seconds", &group).is_some()
        );
    }

    // The series of no job in particular have a group of their own.
    let rest = [("job", "glance-sync"), ("instance", host.as_str())];
    assert_eq!(
        metric_value(&text, "glance_sync_build_info", &rest),
        Some(1.0),
        "{text}"
    );

    // A run of one job replaces only that job's group: the other job's last push stays.
    let last_run = |text: &str, job: &str| {
        metric_value(
            text,
            "glance_sync_last_run_timestamp_seconds",
            &[("sync_job", job)],
        )
        .unwrap()
    };
    let (alpha_before, beta_before) = (last_run(&text, "alpha"), last_run(&text, "beta"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    glance_sync(&cfg, &["run", "--job", "beta"])
        .await
        .assert_code(0);
    let text = pushed(&pg_url).await;
    assert_eq!(last_run(&text, "alpha"), alpha_before, "{text}");
    assert!(last_run(&text, "beta") > beta_before, "{text}");

    // The shipped scrape config, pointed at this Pushgateway, keeps the grouping key as the
    // series' job and instance.
    let prometheus = Prometheus::start_with_shipped_config(
        dir.path(),
        &[("127.0.0.1:9091", pg_url.trim_start_matches("http://"))],
    );
    let query = format!(
        "{}/query?query=glance_sync_runs_total{{result=\"success\"}}",
        prometheus.api
    );
    let mut series = Vec::new();
    for _ in 0..600 {
        if let Ok(r) = reqwest::get(&query).await
            && let Ok(v) = r.json::<serde_json::Value>().await
            && let Some(found) = v["data"]["result"].as_array()
            && found.len() == 2
        {
            series = found.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        series.len(),
        2,
        "Prometheus never saw both jobs' pushed runs"
    );
    let mut jobs: Vec<&str> = series
        .iter()
        .map(|s| {
            assert_eq!(s["metric"]["job"], "glance-sync", "{s}");
            assert_eq!(s["metric"]["instance"], host.as_str(), "{s}");
            assert!(s["metric"].get("exported_job").is_none(), "{s}");
            s["metric"]["sync_job"].as_str().unwrap()
        })
        .collect();
    jobs.sort();
    assert_eq!(jobs, ["alpha", "beta"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_push_fails_a_successful_run_but_never_hides_a_failed_one() {
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new(
        "alpha-img",
        ImageData::Bytes(vec![3u8; 1000].into()),
    ));
    let target = FakeGlance::start().await;
    // Nothing listens here.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_jobs(dir.path(), &source.url, &target.url, "");

    let ok_run = glance_sync(&cfg, &["run", "--pushgateway", &nowhere]).await;
    ok_run.assert_code(1);
    assert!(
        ok_run
            .stderr
            .contains("cannot push metrics to the Pushgateway"),
        "{}",
        ok_run.stderr
    );
    assert!(ok_run.stdout.contains("job alpha"), "{}", ok_run.stdout);
    assert_eq!(target.images().len(), 1, "the run itself did its work");

    // The same push failing after a failed run: the run's failure is what the output says.
    let broken = two_jobs(dir.path(), &source.url, &nowhere, "");
    let failed_run = glance_sync(&broken, &["run", "--pushgateway", &nowhere]).await;
    failed_run.assert_code(1);
    assert!(
        failed_run.stdout.contains("failed"),
        "{}",
        failed_run.stdout
    );
    assert!(
        failed_run
            .stderr
            .contains("cannot push metrics to the Pushgateway"),
        "{}",
        failed_run.stderr
    );

    // A URL that is not one is refused before anything runs.
    let bad = glance_sync(&cfg, &["run", "--pushgateway", "pushgateway:9091"]).await;
    bad.assert_code(2);
    assert!(bad.stderr.contains("--pushgateway"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pushgateway_that_refuses_the_push_is_reported_with_its_answer() {
    // A Pushgateway refuses a push whose series carry a `job` label other than the group's:
    // what the previous label name made every push do. Here it refuses for a group it has
    // metrics of another type for: pushed first by something else under the same name.
    let source = FakeGlance::start().await;
    let target = FakeGlance::start().await;
    let (_pg, pg_url) = start_pushgateway().await;
    let host = hostname();
    let conflicting = "# TYPE glance_sync_runs_total gauge\nglance_sync_runs_total 1\n";
    let r = reqwest::Client::new()
        .put(format!("{pg_url}/metrics/job/other/instance/{host}"))
        .body(conflicting)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_jobs(dir.path(), &source.url, &target.url, "");
    let run = glance_sync(&cfg, &["run", "--pushgateway", &pg_url]).await;
    run.assert_code(1);
    assert!(
        run.stderr.contains("refused the metrics: HTTP 400"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_pushes_when_its_job_last_succeeded_so_staleness_alerts_can_fire() {
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new(
        "alpha-img",
        ImageData::Bytes(vec![5u8; 100].into()),
    ));
    let target = FakeGlance::start().await;
    let (_pg, pg_url) = start_pushgateway().await;
    let dir = tempfile::tempdir().unwrap();
    let push = format!("[metrics]\npushgateway = \"{pg_url}\"\n");
    let cfg = two_jobs(dir.path(), &source.url, &target.url, &push);
    glance_sync(&cfg, &["run", "--job", "alpha"])
        .await
        .assert_code(0);
    let alpha = [("sync_job", "alpha")];
    let text = pushed(&pg_url).await;
    let succeeded = metric_value(&text, "glance_sync_last_success_timestamp_seconds", &alpha)
        .expect("a success pushed");

    // The target goes away: the next run fails, and its push still says when alpha last
    // succeeded (from the state database), not nothing.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let broken = two_jobs(dir.path(), &source.url, &nowhere, &push);
    glance_sync(&broken, &["run", "--job", "alpha"])
        .await
        .assert_code(1);
    let text = pushed(&pg_url).await;
    let seeded = metric_value(&text, "glance_sync_last_success_timestamp_seconds", &alpha)
        .expect("the last success, seeded from the state database");
    assert!((seeded - succeeded).abs() < 2.0, "{seeded} != {succeeded}");
    let failed_run = metric_value(&text, "glance_sync_last_run_timestamp_seconds", &alpha).unwrap();
    assert!(failed_run > seeded, "{text}");
    assert_eq!(
        metric_value(
            &text,
            "glance_sync_runs_total",
            &[("sync_job", "alpha"), ("result", "failure")]
        ),
        Some(1.0),
        "{text}"
    );
}
