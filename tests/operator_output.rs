//! What operators read, against real Glance: names chosen by uploaders cannot drive their
//! terminal, errors say what happened once and in plain text, an image at Glance's property limit
//! is still copied, and counters exist at 0 before the first failure.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::daemon_proc::{DaemonProc, free_port};
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::scenario::copies_by_source;
use support::sync_cli::{glance_sync, plan_json, write_config};

const HOSTILE: &str = "evil\u{1b}[2J\u{7}\r\0name\u{202e}txt.exe";
const HOSTILE_ESCAPED: &str = "evil\\u{1b}[2J\\u{7}\\u{d}\\u{0}name\\u{202e}txt.exe";

/// Characters that must never reach a terminal from an image's name, tag or property.
fn assert_no_raw_controls(what: &str, text: &str) {
    for c in ['\u{1b}', '\u{7}', '\r', '\0', '\u{202e}'] {
        assert!(
            !text.contains(c),
            "{what} prints {c:?} raw:\n{}",
            text.escape_debug()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn hostile_names_are_escaped_for_people_and_exact_in_json() {
    let src = RealGlance::start("out-esc-src");
    // Images above 1 MiB fail on this target, so that `status` lists a failing hostile name.
    let dst = RealGlance::start_with(
        "out-esc-dst",
        None,
        &[("GLANCE_EXTRA_DEFAULT", "image_size_cap = 1048576")],
    );
    let source = Api::new(&src.url);
    let long = format!("long-{}", "n".repeat(95));
    for (name, size, seed) in [(HOSTILE, 2 << 20, 1), (long.as_str(), 1024, 2)] {
        source
            .create_with_data(
                image_body(
                    name,
                    "raw",
                    json!({"tags": ["t\u{1b}[31m"], "note": "bell\u{7}"}),
                ),
                random_bytes(size, seed),
            )
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        "",
    );

    let plan = glance_sync(&cfg, &["plan"]).await;
    plan.assert_code(0);
    assert_no_raw_controls("plan", &plan.stdout);
    assert!(plan.stdout.contains(HOSTILE_ESCAPED), "{}", plan.stdout);
    let shortened = format!("{}…", &long[..63]);
    assert!(plan.stdout.contains(&shortened), "{}", plan.stdout);
    assert!(!plan.stdout.contains(&long), "{}", plan.stdout);
    let json_plan = plan_json(&cfg).await;
    let names: Vec<&str> = json_plan[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert!(names.contains(&HOSTILE), "JSON keeps the exact name");
    assert!(names.contains(&long.as_str()));

    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(1);
    assert_no_raw_controls("run (stdout)", &run.stdout);
    assert_no_raw_controls("run (text log)", &run.stderr);
    assert!(run.stderr.contains(HOSTILE_ESCAPED), "{}", run.stderr);
    let status = glance_sync(&cfg, &["status"]).await;
    assert_no_raw_controls("status", &status.stdout);
    assert!(status.stdout.contains(HOSTILE_ESCAPED), "{}", status.stdout);

    let run = glance_sync(&cfg, &["--log-format", "json", "run"]).await;
    let logged: Vec<Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        logged.iter().any(|l| l["image"] == HOSTILE),
        "JSON logs keep the exact name: {}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn an_image_with_127_properties_is_copied_and_a_lower_limit_is_named() {
    let src = RealGlance::start("out-prop-src");
    let dst = RealGlance::start("out-prop-dst");
    let low = RealGlance::start_with(
        "out-prop-low",
        None,
        &[("GLANCE_EXTRA_DEFAULT", "image_property_quota = 64")],
    );
    let source = Api::new(&src.url);
    let mut extra = serde_json::Map::new();
    for i in 0..127 {
        extra.insert(format!("p{i:03}"), json!(format!("v{i}")));
    }
    let img = source
        .create_with_data(
            image_body("many-properties", "raw", Value::Object(extra)),
            random_bytes(8192, 5),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url), ("low", &low.url)],
        "prod",
        &["dr", "low"],
        "",
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(1);
    // Copied to dr, without the marker (the ledger owns it anyway).
    let target = Api::new(&dst.url);
    let copies = target.list_all().await;
    assert_eq!(copies.len(), 1);
    let copy = &copies[0];
    assert_eq!(copy["status"], "active");
    assert_eq!(copy["checksum"], img["checksum"]);
    assert_eq!(copy["p126"], "v126");
    assert!(copy.get("glance_sync_source_id").is_none());
    // `low` allows 64 properties: the error says so, not that the image is too big.
    let failed = run
        .stdout
        .lines()
        .find(|l| l.contains("FAILED") && l.contains(" on low"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(failed.contains("image_property_quota"), "{failed}");
    assert!(!failed.contains("refuses the size"), "{failed}");
    // Ours by the ledger: the next run finds it in sync and writes nothing to dr.
    let writes_before = dst.write_requests().len();
    let plan = plan_json(&cfg).await;
    let on_dr: Vec<&Value> = plan[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["target"] == "dr")
        .collect();
    assert_eq!(on_dr.len(), 1);
    assert_eq!(on_dr[0]["action"], "in_sync", "{plan:#}");
    assert_eq!(on_dr[0]["foreign"], false);
    glance_sync(&cfg, &["run"]).await;
    assert_eq!(dst.write_requests().len(), writes_before);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn messages_say_what_happened_once_and_plainly() {
    let src = RealGlance::start("out-msg-src");
    let dst = RealGlance::start("out-msg-dst");
    let (source, target) = (Api::new(&src.url), Api::new(&dst.url));
    let img = source
        .create_with_data(image_body("img", "raw", json!({})), random_bytes(4096, 6))
        .await;
    let id = img["id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        "",
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let copy_id = copies_by_source(&target).await[id][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A property key with a slash is named as written, not as a JSON pointer.
    source
        .patch(id, json!([{"op": "add", "path": "/a~1b", "value": "x"}]))
        .await;
    let plan = glance_sync(&cfg, &["plan"]).await;
    assert!(
        plan.stdout.contains("update metadata: a/b") && !plan.stdout.contains("a~1b"),
        "{}",
        plan.stdout
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);

    // Someone deactivated our copy: the plan says that is why it reactivates.
    target.action(&copy_id, "deactivate").await;
    let plan = glance_sync(&cfg, &["plan"]).await;
    assert!(
        plan.stdout
            .contains("reactivate (our copy is deactivated, the source image is active)"),
        "{}",
        plan.stdout
    );

    // A URL that is not Keystone's is called that, not a refusal of the credentials.
    let not_keystone = dir.path().join("keystone.toml");
    std::fs::write(
        &not_keystone,
        format!(
            "[state]\npath = \"{}\"\n\n[clouds.prod]\nauth_type = \"password\"\n\
             [clouds.prod.auth]\nauth_url = \"{}\"\nusername = \"u\"\npassword = \"p\"\n\
             project_name = \"p\"\n\n[clouds.dr]\nauth_type = \"none\"\n\
             image_endpoint_override = \"{}\"\n\n\
             [[jobs]]\nname = \"job\"\nsource = \"prod\"\ntargets = [\"dr\"]\n",
            dir.path().join("other.db").display(),
            src.url,
            dst.url
        ),
    )
    .unwrap();
    let check = glance_sync(&not_keystone, &["check"]).await;
    check.assert_code(1);
    assert!(
        check
            .stdout
            .contains("is not a Keystone v3 endpoint (it answered HTTP 300")
            && !check.stdout.contains("refused the credentials"),
        "{}",
        check.stdout
    );

    // A damaged state database: SQLite's complaint is said once.
    std::fs::write(dir.path().join("state.db"), vec![7u8; 64 * 1024]).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("state.db{suffix}")));
    }
    let run = glance_sync(&cfg, &["run"]).await;
    assert_ne!(run.code, 0);
    let complaint = "file is not a database";
    assert_eq!(
        run.stderr.matches(complaint).count(),
        1,
        "said once: {}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn failure_counters_exist_at_zero_before_the_first_failure_and_errors_are_plain_text() {
    let src = RealGlance::start("out-zero-src");
    let dst = RealGlance::start_with(
        "out-zero-dst",
        None,
        &[("GLANCE_EXTRA_DEFAULT", "image_size_cap = 1048576")],
    );
    Api::new(&src.url)
        .create_with_data(
            image_body("too-big", "raw", json!({})),
            random_bytes(2 << 20, 7),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        &format!(
            "interval = \"3s\"\nrun_on_start = false\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    let mut d = DaemonProc::start(&cfg, port).await;
    let before = d.metrics().await;
    for reason in [
        "source_read",
        "source_corrupt",
        "target_create",
        "target_upload",
        "verification",
        "target_metadata",
        "interrupted",
    ] {
        let series = format!(
            "glance_sync_transfer_failures_total{{reason=\"{reason}\",sync_job=\"job\",target=\"dr\"}} 0"
        );
        assert!(before.contains(&series), "missing {series}:\n{before}");
    }
    for series in [
        "glance_sync_runs_total{result=\"failure\",sync_job=\"job\"} 0",
        "glance_sync_unadopted_images{sync_job=\"job\",target=\"dr\"} 0",
        "glance_sync_api_requests_total{cloud=\"dr\",operation=\"upload\",status_class=\"4xx\"} 0",
    ] {
        assert!(before.contains(series), "missing {series}:\n{before}");
    }
    d.wait_for(Duration::from_secs(60), "the refused upload", || async {
        d.metric(
            "glance_sync_transfer_failures_total",
            &[("reason", "target_upload")],
        )
        .await
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(30)).await;
    let log = d.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("copy of 'too-big'") && l.contains("failed"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(refusal.contains("HTTP 413"), "{refusal}");
    assert!(
        !refusal.contains('<') && !refusal.contains("&gt;"),
        "Glance's error in plain text: {refusal}"
    );
}
