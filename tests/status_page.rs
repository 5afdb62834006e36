//! The daemon's status page (`/`, `/jobs/NAME`, `/api/v1/status`) in a real headless Chromium
//! while a real copy runs, and the bearer token that guards it.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::daemon_proc::{DaemonProc, free_port};
use support::fake_glance::{FakeGlance, ImageData, ImageSpec};
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::{RealGlance, repo_root};
use support::sync_cli::{clouds_toml, glance_sync};

const HOSTILE: &str = "<script>alert(1)</script>";

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Chromium (Debian's `chromium`, installed by tests/run.sh) run headless on `url`.
fn chromium(args: &[&str], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (Debian package chromium; tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Text as the browser serialises it inside an element.
fn as_html_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_real_browser_shows_the_job_a_running_copy_and_a_failing_hostile_name_as_text() {
    let src = RealGlance::start("page-src");
    let dst = RealGlance::start("page-dst");
    // Images above 1 MiB fail on this target: the hostile name fails there while the big image
    // is still being copied to `dr`.
    let capped = RealGlance::start_with(
        "page-capped",
        None,
        &[("GLANCE_EXTRA_DEFAULT", "image_size_cap = 1048576")],
    );
    let source = Api::new(&src.url);
    let big = source
        .create_with_data(
            image_body("ubuntu-24.04", "raw", json!({})),
            random_bytes(64 << 20, 1),
        )
        .await;
    source
        .create_with_data(
            image_body(HOSTILE, "raw", json!({})),
            random_bytes(2 << 20, 2),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[state]\npath = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [transfer]\nmax_parallel_images = 2\n\n{}\
             [[jobs]]\nname = \"nightly\"\nsource = \"prod\"\ntargets = [\"dr\", \"capped\"]\n\
             interval = \"1h\"\nrun_on_start = true\nmax_bandwidth = \"1MB/s\"\n",
            dir.path().join("state.db").display(),
            clouds_toml(
                &[
                    ("prod", &src.url),
                    ("dr", &dst.url),
                    ("capped", &capped.url)
                ],
                None
            ),
        ),
    )
    .unwrap();
    let d = DaemonProc::start(&cfg, port).await;
    let base = d.metrics_url.clone();

    // The hostile image has failed on `capped` while the big one is still on its way.
    let status_url = format!("{base}/api/v1/status");
    d.wait_for(
        Duration::from_secs(60),
        "a failing image and a transfer in flight",
        || async {
            let s = get_json(&status_url).await;
            s["failing"].as_array().is_some_and(|f| !f.is_empty())
                && s["in_flight"].as_array().is_some_and(|t| {
                    t.iter()
                        .any(|t| t["source_id"] == big["id"] && t["bytes_done"].as_u64() > Some(0))
                })
        },
    )
    .await;
    let status = get_json(&status_url).await;
    let failing = &status["failing"][0];
    assert_eq!(failing["name"], HOSTILE, "{status:#}");
    assert_eq!(failing["target"], "capped");
    let error = failing["last_error"].as_str().unwrap().to_string();
    assert!(!error.is_empty());

    // What a person sees, as the browser built it.
    let dom = String::from_utf8(chromium(&["--dump-dom"], &format!("{base}/")).stdout).unwrap();
    assert!(dom.contains("<title>glance-sync status</title>"), "{dom}");
    assert!(dom.contains(r#"id="job-nightly""#), "the job's card: {dom}");
    assert!(dom.contains("every 1h"), "its schedule: {dom}");
    let transfer = dom
        .split("<tr class=\"transfer\">")
        .nth(1)
        .expect("a transfer row in flight");
    assert!(transfer.contains("ubuntu-24.04"), "{transfer}");
    assert!(transfer.contains("<progress"), "{transfer}");
    assert!(transfer.contains("MB/s"), "{transfer}");
    let failing_row = dom
        .split("<tr class=\"failing-image\">")
        .nth(1)
        .expect("a failing image row");
    // The hostile name is text: escaped in the DOM, and no script element exists at all.
    assert!(
        failing_row.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{failing_row}"
    );
    assert!(!dom.contains("<script"), "{dom}");
    let shown_error: String = error.chars().take(60).collect();
    assert!(
        failing_row.contains(&as_html_text(&shown_error)),
        "the error '{error}' in {failing_row}"
    );

    // The job's own page, and the screenshot kept for people to look at.
    let job_dom =
        String::from_utf8(chromium(&["--dump-dom"], &format!("{base}/jobs/nightly")).stdout)
            .unwrap();
    let history = job_dom
        .split("<section id=\"history\">")
        .nth(1)
        .expect("the job's history");
    assert_eq!(
        history.matches("<tr class=\"run\">").count(),
        1,
        "{history}"
    );
    assert!(history.contains(">running<"), "{history}");
    let artifacts = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    // As a desktop, a phone (Chromium's headless screenshots apply the viewport meta) and a
    // wall screen show it.
    for (file, size) in [
        ("status-page.png", "1280,1100"),
        ("status-page-phone.png", "412,1400"),
        ("status-page-wall.png", "1920,1080"),
    ] {
        let shot = artifacts.join(file);
        let _ = std::fs::remove_file(&shot);
        chromium(
            &[
                &format!("--screenshot={}", shot.display()),
                &format!("--window-size={size}"),
            ],
            &format!("{base}/"),
        );
        let png = std::fs::read(&shot).expect("the screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{file}: {} bytes",
            png.len()
        );
    }

    // `status --format json` has the same shape; only the daemon knows what is in flight.
    let cli = glance_sync(&cfg, &["status", "--format", "json"]).await;
    cli.assert_code(0);
    let cli: Value = serde_json::from_str(&cli.stdout).unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&cli), keys(&status));
    assert_eq!(cli["in_flight"], json!([]));
    assert_eq!(cli["failing"][0]["name"], HOSTILE);
    assert!(status["jobs"][0]["next_due"].is_null());
    assert!(status["jobs"][0]["running_since"].is_string(), "{status:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_token_guards_every_page_but_the_health_checks_and_follows_a_reload() {
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new(
        "img",
        ImageData::Bytes(vec![1u8; 10].into()),
    ));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first-token\n").unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[state]\npath = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             bearer_token_file = \"{}\"\n\n{}\
             [[jobs]]\nname = \"job\"\nsource = \"prod\"\ntargets = [\"dr\"]\ninterval = \"1h\"\n",
            dir.path().join("state.db").display(),
            token_file.display(),
            clouds_toml(&[("prod", &source.url), ("dr", &source.url)], None),
        ),
    )
    .unwrap();
    let d = DaemonProc::start(&cfg, port).await;
    let client = reqwest::Client::new();
    let status = |path: &str, token: Option<&str>| {
        let mut req = client.get(format!("{}{path}", d.metrics_url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // What a browser does: asked for basic authentication, it sends the token as the password.
    let refused = client
        .get(format!("{}/", d.metrics_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.headers()["www-authenticate"],
        "Basic realm=\"glance-sync\", charset=\"UTF-8\""
    );
    let as_browser = client
        .get(format!("{}/", d.metrics_url))
        .basic_auth("anyone", Some("first-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(as_browser.status(), 200);
    for path in ["/", "/jobs/job", "/api/v1/status", "/metrics"] {
        assert_eq!(status(path, None).await, 401, "{path}");
        assert_eq!(status(path, Some("wrong")).await, 401, "{path}");
        assert_eq!(status(path, Some("first-token")).await, 200, "{path}");
    }
    assert_eq!(status("/jobs/nope", Some("first-token")).await, 404);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(status(path, None).await, 200, "{path}");
    }

    // A new token takes effect on SIGHUP; the old one stops working.
    std::fs::write(&token_file, "second-token").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for(Duration::from_secs(10), "the new token", || async {
        status("/api/v1/status", Some("second-token")).await == 200
    })
    .await;
    assert_eq!(status("/api/v1/status", Some("first-token")).await, 401);
    assert!(!d.log().contains("first-token") && !d.log().contains("second-token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_listening_beyond_loopback_without_a_token_says_so() {
    let source = FakeGlance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[state]\npath = \"{}\"\n\n[metrics]\nlisten = \"0.0.0.0:{port}\"\n\n{}\
             [[jobs]]\nname = \"job\"\nsource = \"prod\"\ntargets = [\"dr\"]\ninterval = \"1h\"\n",
            dir.path().join("state.db").display(),
            clouds_toml(&[("prod", &source.url), ("dr", &source.url)], None),
        ),
    )
    .unwrap();
    let d = DaemonProc::start(&cfg, port).await;
    assert!(
        d.log().contains("bearer_token_file"),
        "no warning about an open listener:\n{}",
        d.log()
    );
}
