//! `glance-sync run` and `plan` against real Glance 33 servers on loopback (tests/harness).

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::glance_api::Api;
use support::harness::RealGlance;
use support::scenario::{assert_exact_copies, copies_by_source, seed_source};
use support::sync_cli::{glance_sync, plan_json, write_config};

/// (source id, target, action) of every plan entry.
fn plan_entries(plan: &Value) -> BTreeSet<(String, String, String)> {
    plan.as_array()
        .unwrap()
        .iter()
        .flat_map(|job| job["actions"].as_array().unwrap().iter())
        .map(|a| {
            (
                a["source_id"].as_str().unwrap().to_string(),
                a["target"].as_str().unwrap().to_string(),
                a["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn with_action(entries: &BTreeSet<(String, String, String)>, action: &str) -> BTreeSet<String> {
    entries
        .iter()
        .filter(|(_, _, a)| a == action)
        .map(|(s, _, _)| s.clone())
        .collect()
}

#[tokio::test]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn run_copies_every_eligible_image_exactly_and_plan_predicted_it() {
    let src = RealGlance::start("acc-src");
    let dst = RealGlance::start("acc-dst");
    let (source, target) = (Api::new(&src.url), Api::new(&dst.url));
    let seeded = seed_source(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        "",
    );

    let plan = plan_entries(&plan_json(&cfg).await);
    assert!(
        target.list_all().await.is_empty(),
        "plan must not write anything"
    );

    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(0);

    let copies = assert_exact_copies(&source, &target, &seeded, "prod").await;
    assert_eq!(
        target.list_all().await.len(),
        seeded.eligible.len(),
        "nothing but the copies"
    );

    // The plan listed exactly what the run did.
    let copied: BTreeSet<String> = copies.keys().cloned().collect();
    assert_eq!(with_action(&plan, "copy"), copied);
    assert_eq!(with_action(&plan, "skip"), seeded.skipped);
    assert_eq!(plan.len(), seeded.eligible.len() + seeded.skipped.len());

    // Skipped images are recorded as skipped, not failed, with their reason.
    let db = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let mut q = db
        .prepare("SELECT source_id, state, last_error FROM replicas WHERE state != 'in_sync'")
        .unwrap();
    let rows: Vec<(String, String, Option<String>)> = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let skipped: BTreeSet<String> = rows
        .iter()
        .filter(|(_, s, _)| s == "skipped")
        .map(|(id, _, _)| id.clone())
        .collect();
    assert_eq!(skipped, seeded.skipped, "{rows:?}");
    assert!(rows.iter().all(|(_, s, _)| s == "skipped"), "{rows:?}");

    // Protected on the source → protected on the copy, set after verification.
    let protected: Vec<&Value> = copies.values().filter(|c| c["protected"] == true).collect();
    assert_eq!(protected.len(), 1);
    assert_eq!(protected[0]["name"], "windows-2022");

    // Status reports the run.
    let status = glance_sync(&cfg, &["status", "--format", "json"]).await;
    status.assert_code(0);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["runs"][0]["result"], "success");
    assert_eq!(
        status["runs"][0]["images_copied"],
        json!(seeded.eligible.len())
    );
    assert!(status["failing"].as_array().unwrap().is_empty());
}

#[tokio::test]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn second_run_copies_nothing_and_makes_no_write_call() {
    let src = RealGlance::start("idem-src");
    let dst = RealGlance::start("idem-dst");
    let source = Api::new(&src.url);
    seed_source(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        "",
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let (src_writes, dst_writes) = (src.write_requests().len(), dst.write_requests().len());
    let (src_reads, dst_reads) = (src.requests().len(), dst.requests().len());

    let second = glance_sync(&cfg, &["run"]).await;
    second.assert_code(0);
    assert!(second.stdout.contains("(0 copied"), "{}", second.stdout);
    assert_eq!(
        src.write_requests().len(),
        src_writes,
        "writes to the source"
    );
    assert_eq!(
        dst.write_requests().len(),
        dst_writes,
        "writes to the target: {:?}",
        &dst.write_requests()[dst_writes..]
    );
    let downloads = src.requests()[src_reads..]
        .iter()
        .filter(|r| r.contains("/file"))
        .count();
    assert_eq!(downloads, 0, "second run read image data");
    assert!(dst.requests().len() > dst_reads, "the target was listed");

    let plan = plan_entries(&plan_json(&cfg).await);
    assert!(
        plan.iter().all(|(_, _, a)| a == "in_sync" || a == "skip"),
        "{plan:?}"
    );
}

#[tokio::test]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn every_kind_of_source_drift_is_patched_in_place() {
    let src = RealGlance::start("drift-src");
    let dst = RealGlance::start("drift-dst");
    let (source, target) = (Api::new(&src.url), Api::new(&dst.url));
    let seeded = seed_source(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        "",
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let before = copies_by_source(&target).await;
    let id_of = |name: &str| {
        seeded
            .eligible
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| id.clone())
            .unwrap()
    };
    let ubuntu = id_of("ubuntu-24.04");
    let cirros = id_of("cirros-0.6");
    let windows = id_of("windows-2022");
    let hidden = id_of("hidden-appliance");
    let community = id_of("community-tool");

    // Property added, changed, removed; tag added and removed; min_disk, min_ram.
    source
        .patch(
            &ubuntu,
            json!([
                {"op": "add", "path": "/hw_qemu_guest_agent", "value": "yes"},
                {"op": "replace", "path": "/description", "value": "changed — ✓"},
                {"op": "remove", "path": "/os_distro"},
                {"op": "replace", "path": "/tags", "value": ["golden", "lts"]},
                {"op": "replace", "path": "/min_disk", "value": 10},
                {"op": "replace", "path": "/min_ram", "value": 2048},
            ]),
        )
        .await;
    // protected on and off, visibility, os_hidden.
    source
        .patch(
            &cirros,
            json!([{"op": "replace", "path": "/protected", "value": true}]),
        )
        .await;
    source
        .patch(
            &windows,
            json!([{"op": "replace", "path": "/protected", "value": false}]),
        )
        .await;
    source
        .patch(
            &hidden,
            json!([{"op": "replace", "path": "/os_hidden", "value": false}]),
        )
        .await;
    source
        .patch(
            &community,
            json!([{"op": "replace", "path": "/visibility", "value": "public"}]),
        )
        .await;
    // And one source image deactivated.
    let kernel = seeded.kernel_id.clone();
    source.action(&kernel, "deactivate").await;

    let plan = plan_entries(&plan_json(&cfg).await);
    let patched: BTreeSet<String> = [&ubuntu, &cirros, &windows, &hidden, &community]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(with_action(&plan, "update_metadata"), patched);
    assert_eq!(
        with_action(&plan, "deactivate"),
        BTreeSet::from([kernel.clone()])
    );
    assert!(with_action(&plan, "copy").is_empty());

    let writes_before = dst.write_requests().len();
    let src_reads_before = src.requests().len();
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let writes: Vec<String> = dst.write_requests()[writes_before..].to_vec();
    assert_eq!(
        writes.iter().filter(|w| w.starts_with("PATCH")).count(),
        5,
        "one JSON patch per drifted image: {writes:?}"
    );
    assert!(
        writes
            .iter()
            .all(|w| !w.contains("/file") && !w.starts_with("POST /v2/images ")),
        "no re-upload: {writes:?}"
    );
    assert!(
        src.requests()[src_reads_before..]
            .iter()
            .all(|r| !r.contains("/file")),
        "no source data read"
    );

    let mut live = seeded.eligible.clone();
    live.remove(&kernel);
    let reduced = support::scenario::Seeded {
        eligible: live,
        skipped: Default::default(),
        kernel_id: seeded.kernel_id.clone(),
        vm_id: seeded.vm_id.clone(),
    };
    let after = copies_by_source(&target).await;
    for (id, name) in &reduced.eligible {
        let (src_img, copy) = (source.get(id).await, &after[id][0]);
        assert_eq!(
            copy["id"], before[id][0]["id"],
            "'{name}': target id changed"
        );
        assert_eq!(
            support::scenario::replicable(copy),
            support::scenario::replicable(&src_img),
            "'{name}' after drift"
        );
    }
    assert_eq!(after[&kernel][0]["status"], "deactivated");

    // Reactivated on the source → reactivated on the target.
    source.action(&kernel, "reactivate").await;
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    assert_eq!(
        target.get(after[&kernel][0]["id"].as_str().unwrap()).await["status"],
        "active"
    );

    // Nothing left to do.
    let third = glance_sync(&cfg, &["run"]).await;
    third.assert_code(0);
    assert!(third.stdout.contains("0 updated"), "{}", third.stdout);
}

#[tokio::test]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn two_targets_receive_every_image_from_one_read_of_the_source() {
    let src = RealGlance::start("fan-src");
    let dst_a = RealGlance::start("fan-a");
    let dst_b = RealGlance::start("fan-b");
    let source = Api::new(&src.url);
    let seeded = seed_source(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("a", &dst_a.url), ("b", &dst_b.url)],
        "prod",
        &["a", "b"],
        "",
    );
    let reads_before = src.requests().len();
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    assert_exact_copies(&source, &Api::new(&dst_a.url), &seeded, "prod").await;
    assert_exact_copies(&source, &Api::new(&dst_b.url), &seeded, "prod").await;
    let downloads: Vec<String> = src.requests()[reads_before..]
        .iter()
        .filter(|r| r.contains("/file"))
        .cloned()
        .collect();
    for id in seeded.eligible.keys() {
        let n = downloads.iter().filter(|d| d.contains(id.as_str())).count();
        assert_eq!(
            n, 1,
            "image {id} read {n} times from the source: {downloads:?}"
        );
    }
    assert_eq!(downloads.len(), seeded.eligible.len());
}
