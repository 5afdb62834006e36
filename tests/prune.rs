//! Opt-in pruning against real Glance: copies whose source image is gone are hidden or deleted;
//! protected copies and images glance-sync did not create are untouched; `max_deletes` guards.

mod support;

use serde_json::json;
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::scenario::copies_by_source;
use support::sync_cli::{glance_sync, plan_json, write_config};

fn prune_config(
    dir: &std::path::Path,
    src: &str,
    dst: &str,
    job_lines: &str,
) -> std::path::PathBuf {
    write_config(
        dir,
        &[("prod", src), ("dr", dst)],
        "prod",
        &["dr"],
        job_lines,
    )
}

#[tokio::test]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn pruning_hides_or_deletes_only_our_copies_of_gone_images_within_max_deletes() {
    let src = RealGlance::start("prune-src");
    let dst = RealGlance::start("prune-dst");
    let (source, target) = (Api::new(&src.url), Api::new(&dst.url));
    let mut ids = Vec::new();
    for (i, protected) in [(0, false), (1, false), (2, true), (3, false)] {
        let img = source
            .create_with_data(
                image_body(&format!("img-{i}"), "raw", json!({"protected": protected})),
                random_bytes(64 * 1024, i),
            )
            .await;
        ids.push(img["id"].as_str().unwrap().to_string());
    }
    // Someone else's images on the target: one plain, one even carrying a forged marker.
    let foreign = target
        .create_with_data(
            image_body("theirs", "raw", json!({})),
            random_bytes(1000, 50),
        )
        .await;
    let forged = target
        .create_with_data(
            image_body(
                "forged",
                "raw",
                json!({"glance_sync_source_cloud": "prod", "glance_sync_source_id": ids[0]}),
            ),
            random_bytes(1000, 51),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = prune_config(dir.path(), &src.url, &dst.url, "prune = \"hide\"\n");
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let copies = copies_by_source(&target).await;
    let copy_id = |i: usize| {
        copies[&ids[i]]
            .iter()
            .find(|c| c["name"] != "forged")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Images 0, 1 and 2 (protected) disappear from the source.
    source
        .patch(
            &ids[2],
            json!([{"op": "replace", "path": "/protected", "value": false}]),
        )
        .await;
    for id in &ids[..3] {
        source.delete(id).await;
    }

    // hide: every orphaned copy of ours, protected or not, gets os_hidden; nothing is deleted.
    let plan = plan_json(&cfg).await;
    let prunes = plan[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "prune")
        .count();
    assert_eq!(prunes, 3, "{plan:#}");
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("3 pruned"), "{}", run.stdout);
    for i in 0..3 {
        let c = target.get(&copy_id(i)).await;
        assert_eq!(c["os_hidden"], true, "copy of img-{i}");
    }
    assert_eq!(target.get(&copy_id(3)).await["os_hidden"], false);

    // delete with a guard of 1: two deletions would happen, so none does, and the run fails.
    let cfg = prune_config(
        dir.path(),
        &src.url,
        &dst.url,
        "prune = \"delete\"\nmax_deletes = 1\n",
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains("more than max_deletes = 1"),
        "{}",
        run.stdout
    );
    for i in 0..3 {
        assert!(
            target.try_get(&copy_id(i)).await.is_some(),
            "guard tripped, copy {i} must stay"
        );
    }

    // delete: our unprotected orphans go; the protected copy stays; foreign images stay.
    let cfg = prune_config(dir.path(), &src.url, &dst.url, "prune = \"delete\"\n");
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    assert!(target.try_get(&copy_id(0)).await.is_none());
    assert!(target.try_get(&copy_id(1)).await.is_none());
    assert!(
        target.try_get(&copy_id(2)).await.is_some(),
        "protected copy kept"
    );
    assert!(
        target.try_get(&copy_id(3)).await.is_some(),
        "live copy kept"
    );
    for f in [&foreign, &forged] {
        let now = target.get(f["id"].as_str().unwrap()).await;
        assert_eq!(now["os_hidden"], false);
        assert_eq!(now["updated_at"], f["updated_at"], "foreign image modified");
    }

    // prune_protected: the protected orphan is unprotected, then deleted.
    let cfg = prune_config(
        dir.path(),
        &src.url,
        &dst.url,
        "prune = \"delete\"\nprune_protected = true\n",
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    assert!(target.try_get(&copy_id(2)).await.is_none());
    assert_eq!(
        target.list_all().await.len(),
        3,
        "live copy + two foreign images"
    );
}
