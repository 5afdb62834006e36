//! Crashes: glance-sync killed with SIGKILL at any moment, then run again, ends exactly where one
//! clean run ends; an image left in `saving` by a dead Glance worker is replaced.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::fake_glance::{FakeGlance, ImageData, ImageSpec};
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::scenario::copies_by_source;
use support::sync_cli::{glance_sync, write_config};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn killed_at_ten_moments_then_run_to_completion_ends_like_one_clean_run() {
    let src = RealGlance::start("crash-src");
    let dst = RealGlance::start("crash-dst");
    let (source, target) = (Api::new(&src.url), Api::new(&dst.url));
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let img = source
            .create_with_data(
                image_body(
                    &format!("img-{i}"),
                    "raw",
                    json!({"protected": i == 0, "tags": ["t"]}),
                ),
                random_bytes(24 << 20, 100 + i),
            )
            .await;
        ids.push(img["id"].as_str().unwrap().to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        "",
    );

    // Kill moments spread over listing, creates, uploads, verification and protection; later
    // ones land in runs that have less left to do.
    let mut killed = 0;
    for delay_ms in [30u64, 120, 250, 400, 600, 800, 1000, 1300, 1700, 2200] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_glance-sync"))
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL: no cleanup of any kind
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        killed >= 5,
        "only {killed} runs were still going when killed"
    );

    let last = glance_sync(&cfg, &["run"]).await;
    last.assert_code(0);

    let images = target.list_all().await;
    assert!(
        images.iter().all(|i| i["status"] == "active"),
        "half-made images left: {:?}",
        images
            .iter()
            .map(|i| (&i["id"], &i["status"]))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        images.len(),
        ids.len(),
        "exactly one copy per image, nothing else"
    );
    let copies = copies_by_source(&target).await;
    for id in &ids {
        let original = source.get(id).await;
        let list = &copies[id];
        assert_eq!(list.len(), 1, "{id} copied {} times", list.len());
        for key in ["size", "checksum", "os_hash_value", "protected", "tags"] {
            assert_eq!(list[0][key], original[key], "{id}: {key}");
        }
    }
    let db = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let second = glance_sync(&cfg, &["run"]).await;
    second.assert_code(0);
    assert!(second.stdout.contains("(0 copied"), "{}", second.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_stuck_in_saving_after_its_glance_died_is_deleted_and_copied_again() {
    let source = FakeGlance::start().await;
    let id = source.add_image(ImageSpec::new("img", ImageData::synthetic(1 << 20, 5)));
    let target = FakeGlance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        "",
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let first = target.images()[0]["id"].as_str().unwrap().to_string();
    // What a glance-api worker killed mid-upload leaves behind: `saving` forever, no data.
    target.set_status(&first, "saving");

    let plan = glance_sync(&cfg, &["plan"]).await;
    assert!(
        plan.stdout
            .contains("delete our unfinished copy (status saving)"),
        "{}",
        plan.stdout
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let images = target.images();
    assert_eq!(images.len(), 1);
    assert_ne!(images[0]["id"], first.as_str(), "replaced by a new copy");
    assert_eq!(images[0]["status"], "active");
    assert_eq!(
        images[0]["checksum"],
        source.image(&id).unwrap()["checksum"]
    );
    assert!(target.deleted_ids().contains(&first));
}
