//! Misbehaving clouds that real Glance cannot be made to produce, played by the fake Glance: the
//! copy must fail loudly and leave nothing active on the target.

mod support;

use bytes::Bytes;
use support::fake_glance::{FakeGlance, Faults, ImageData, ImageSpec};
use support::glance_api::{Api, random_bytes};
use support::harness::RealGlance;
use support::sync_cli::{glance_sync, write_config};

fn image(name: &str, len: usize, seed: u64) -> (ImageSpec, Bytes) {
    let data = Bytes::from(random_bytes(len, seed));
    let mut spec = ImageSpec::new(name, ImageData::Bytes(data.clone()));
    spec.visibility = "public".into();
    (spec, data)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn corrupt_source_bytes_never_become_an_active_image_on_the_target() {
    let source = FakeGlance::start().await;
    // Both are created within the same second, so the planner's order (oldest, then id) puts the
    // bad one first; with one image at a time, it is the first and only corrupted download.
    let (mut bad, bad_bytes) = image("corrupted-appliance", 3 << 20, 1);
    bad.id = Some("00000000-0000-4000-8000-000000000001".into());
    let bad_id = source.add_image(bad);
    let (mut good, _) = image("healthy", 1 << 20, 2);
    good.id = Some("ffffffff-0000-4000-8000-000000000002".into());
    let good_id = source.add_image(good);
    source.set_faults(Faults {
        corrupt_data: true,
        data_fault_limit: Some(1),
        ..Faults::default()
    });
    let dst = RealGlance::start("corrupt-dst");
    let target = Api::new(&dst.url);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        "[transfer]\nmax_parallel_images = 1\n",
    );

    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains("corrupted-appliance") && run.stdout.contains(&bad_id),
        "the failure must name the image:\n{}",
        run.stdout
    );
    assert!(run.stdout.contains("corrupt"), "{}", run.stdout);

    // No image on the target holds the corrupt bytes or claims to be the bad image, in any state.
    let on_target = target.list_all().await;
    assert!(
        on_target
            .iter()
            .all(|i| i["glance_sync_source_id"] != bad_id.as_str()),
        "a copy of the corrupt image survived: {on_target:?}"
    );
    for img in &on_target {
        if img["status"] == "active" {
            let bytes = target.download(img["id"].as_str().unwrap()).await;
            assert_ne!(
                bytes.len(),
                bad_bytes.len(),
                "active image with the corrupt image's size"
            );
        }
    }
    let healthy: Vec<_> = on_target
        .iter()
        .filter(|i| i["glance_sync_source_id"] == good_id.as_str())
        .collect();
    assert_eq!(healthy.len(), 1, "the healthy image is still copied");
    assert_eq!(healthy[0]["status"], "active");

    // The failure is recorded and shown by status.
    let status = glance_sync(&cfg, &["status"]).await;
    status.assert_code(0);
    assert!(
        status.stdout.contains("corrupted-appliance"),
        "{}",
        status.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn truncated_download_fails_the_image_and_leaves_no_half_made_copy() {
    let source = FakeGlance::start().await;
    // Every response breaks after 1 MiB: 8 MiB would need 7 resumes, more than the default 4.
    let (spec, _) = image("cut-short", 8 << 20, 3);
    let id = source.add_image(spec);
    source.set_faults(Faults {
        truncate_at: Some(1 << 20),
        ..Faults::default()
    });
    let dst = RealGlance::start("trunc-dst");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        "",
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(1);
    assert!(run.stdout.contains(&id), "{}", run.stdout);
    assert!(
        run.stdout.contains("gave up after 4 resumes"),
        "{}",
        run.stdout
    );
    assert!(
        Api::new(&dst.url).list_all().await.is_empty(),
        "the aborted copy must be deleted"
    );

    // Once the source behaves, the next run completes the copy.
    source.set_faults(Faults::default());
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let copies = Api::new(&dst.url).list_all().await;
    assert_eq!(copies.len(), 1);
    assert_eq!(
        copies[0]["checksum"],
        source.image(&id).unwrap()["checksum"]
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_failing_target_never_breaks_the_other_targets() {
    let source = FakeGlance::start().await;
    let (spec, _) = image("fan-out", 2 << 20, 4);
    let id = source.add_image(spec);
    let broken = FakeGlance::start().await;
    broken.set_faults(Faults {
        fail_uploads_with: Some(503),
        ..Faults::default()
    });
    let good = RealGlance::start("fanfail-good");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[
            ("prod", &source.url),
            ("broken", &broken.url),
            ("good", &good.url),
        ],
        "prod",
        &["broken", "good"],
        "",
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(1);
    assert!(run.stdout.contains("on broken"), "{}", run.stdout);
    let copies = Api::new(&good.url).list_all().await;
    assert_eq!(copies.len(), 1, "the healthy target got its copy");
    assert_eq!(copies[0]["status"], "active");
    assert_eq!(
        copies[0]["checksum"],
        source.image(&id).unwrap()["checksum"]
    );
    assert!(
        broken.images().is_empty(),
        "the failed copy on the broken target was deleted: {:?}",
        broken.images()
    );
    assert_eq!(
        source.bytes_served(),
        2 << 20,
        "the source was read once for both targets"
    );
}

/// `[transfer] verify_digests`: `strongest` hashes only the source's multihash (MD5 only for a
/// source without one), `all` both; either way a flipped byte in the download fails the copy,
/// whichever algorithm the source recorded, and the clean bytes are copied.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_byte_is_caught_with_either_digest_policy_for_every_source_algorithm() {
    for policy in ["strongest", "all"] {
        let source = FakeGlance::start().await;
        let mut ids = Vec::new();
        for (i, algo) in ["sha512", "sha384", "sha256", "legacy-md5-only"]
            .into_iter()
            .enumerate()
        {
            let (mut spec, _) = image(algo, 1 << 20, 40 + i as u64);
            if algo.starts_with("sha") {
                spec.hash_algo = Some(algo.into());
            } else {
                spec.with_multihash = false;
            }
            ids.push((algo, source.add_image(spec)));
        }
        let target = FakeGlance::start().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(
            dir.path(),
            &[("prod", &source.url), ("dr", &target.url)],
            "prod",
            &["dr"],
            &format!("[transfer]\nverify_digests = \"{policy}\"\nretries = 0\n"),
        );
        source.set_faults(Faults {
            corrupt_data: true,
            ..Faults::default()
        });
        let run = glance_sync(&cfg, &["run"]).await;
        run.assert_code(1);
        for (algo, id) in &ids {
            assert!(
                run.stdout.contains(&format!("image {id} ('{algo}')"))
                    && run.stdout.contains("the data is corrupt"),
                "{policy}: the corrupt download of '{algo}' was not caught:\n{}",
                run.stdout
            );
        }
        assert!(
            target.images().iter().all(|i| i["status"] != "active"),
            "{policy}: an active copy of corrupt bytes"
        );

        source.set_faults(Faults::default());
        glance_sync(&cfg, &["run"]).await.assert_code(0);
        let copies = Api::new(&target.url).list_all().await;
        for (algo, id) in &ids {
            assert!(
                copies
                    .iter()
                    .any(|c| c["glance_sync_source_id"] == id.as_str() && c["status"] == "active"),
                "{policy}: '{algo}' not copied once the bytes were clean"
            );
        }
    }
}
