//! Fault injection: a fake Glance with switchable faults, and the end state glance-sync must reach
//! despite them (see the fakes' `Faults` for what each one does).

mod support;

use support::fake_glance::{FakeGlance, Faults, ImageData, ImageSpec, Transient};
use support::sync_cli::{SyncRun, glance_sync, write_config};

const FAST_RETRIES: &str =
    "[transfer]\nretries = 3\nretry_max_delay = \"1s\"\nstall_timeout = \"2s\"\n";

/// A source with one image (returned), an empty target, and a config between them.
async fn pair(size: u64) -> (FakeGlance, FakeGlance, String, tempfile::TempDir) {
    let source = FakeGlance::start().await;
    let id = source.add_image(ImageSpec::new("img", ImageData::synthetic(size, 7)));
    let target = FakeGlance::start().await;
    let dir = tempfile::tempdir().unwrap();
    (source, target, id, dir)
}

async fn run(dir: &tempfile::TempDir, source: &FakeGlance, target: &FakeGlance) -> SyncRun {
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        FAST_RETRIES,
    );
    glance_sync(&cfg, &["run"]).await
}

/// The target holds exactly one image, active, with the source image's digests.
fn assert_one_exact_copy(source: &FakeGlance, target: &FakeGlance, id: &str) {
    let images = target.images();
    assert_eq!(images.len(), 1, "{images:?}");
    let (copy, original) = (&images[0], source.image(id).unwrap());
    assert_eq!(copy["status"], "active");
    for key in ["size", "checksum", "os_hash_value"] {
        assert_eq!(copy[key], original[key], "{key}");
    }
}

fn count(log: &[String], prefix: &str) -> usize {
    log.iter().filter(|r| r.starts_with(prefix)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_errors_are_retried_honouring_retry_after_and_the_copy_completes() {
    let (source, target, id, dir) = pair(1 << 20).await;
    source.set_faults(Faults {
        transient: Some(Transient {
            request_prefix: "GET /v2/images".into(),
            status: 503,
            times: 2,
            retry_after: Some(1),
        }),
        ..Faults::default()
    });
    target.set_faults(Faults {
        transient: Some(Transient {
            request_prefix: "POST /v2/images".into(),
            status: 502,
            times: 1,
            retry_after: None,
        }),
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    run(&dir, &source, &target).await.assert_code(0);
    assert!(
        started.elapsed().as_secs_f64() >= 2.0,
        "Retry-After: 1 was honoured twice"
    );
    assert_one_exact_copy(&source, &target, &id);
    assert!(count(&source.request_log(), "GET /v2/images?") >= 2 + 2);
    assert_eq!(count(&target.request_log(), "POST /v2/images"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_the_configured_bound() {
    let (source, target, _, dir) = pair(1 << 20).await;
    source.set_faults(Faults {
        transient: Some(Transient {
            request_prefix: "GET /v2/images".into(),
            status: 429,
            times: 100,
            retry_after: None,
        }),
        ..Faults::default()
    });
    let run = run(&dir, &source, &target).await;
    run.assert_code(1);
    assert!(run.stdout.contains("HTTP 429"), "{}", run.stdout);
    // First pass of the listing: 1 try + 3 retries, then the job stops.
    assert_eq!(count(&source.request_log(), "GET /v2/images?"), 4);
    assert!(target.images().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn client_errors_fail_the_image_at_once_without_retry() {
    let (source, target, id, dir) = pair(1 << 20).await;
    target.set_faults(Faults {
        fail_creates_with: Some(403),
        ..Faults::default()
    });
    let run = run(&dir, &source, &target).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains(&id) && run.stdout.contains("HTTP 403"),
        "{}",
        run.stdout
    );
    assert_eq!(count(&target.request_log(), "POST /v2/images"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_cut_mid_stream_resumes_with_a_range_request_and_no_byte_is_sent_twice() {
    const SIZE: u64 = 6 << 20;
    let (source, target, id, dir) = pair(SIZE).await;
    source.set_faults(Faults {
        truncate_at: Some(2 << 20),
        data_fault_limit: Some(1),
        ..Faults::default()
    });
    run(&dir, &source, &target).await.assert_code(0);
    assert_one_exact_copy(&source, &target, &id);
    let downloads: Vec<String> = source
        .request_log()
        .into_iter()
        .filter(|r| r.contains("/file"))
        .collect();
    assert_eq!(downloads.len(), 2, "{downloads:?}");
    assert!(
        downloads[1].ends_with("(206)"),
        "resumed with Range: {downloads:?}"
    );
    assert_eq!(
        source.bytes_served(),
        SIZE,
        "only the missing bytes were read again"
    );
    // The target's upload saw each byte once: its size is exact and its digest matches.
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_ignoring_range_is_read_again_from_the_start_and_the_sent_part_skipped() {
    const SIZE: u64 = 6 << 20;
    let (source, target, id, dir) = pair(SIZE).await;
    source.set_faults(Faults {
        truncate_at: Some(2 << 20),
        data_fault_limit: Some(1),
        ignore_range: true,
        ..Faults::default()
    });
    run(&dir, &source, &target).await.assert_code(0);
    assert_one_exact_copy(&source, &target, &id);
    let downloads: Vec<String> = source
        .request_log()
        .into_iter()
        .filter(|r| r.contains("/file"))
        .collect();
    assert!(downloads[1].ends_with("(200)"), "{downloads:?}");
    assert_eq!(source.bytes_served(), SIZE + (2 << 20));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_download_is_abandoned_after_stall_timeout_and_resumed() {
    let (source, target, id, dir) = pair(4 << 20).await;
    source.set_faults(Faults {
        stall_at: Some(1 << 20),
        data_fault_limit: Some(1),
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    run(&dir, &source, &target).await.assert_code(0);
    assert!(started.elapsed().as_secs() >= 2, "waited for stall_timeout");
    assert_one_exact_copy(&source, &target, &id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_whose_stream_keeps_breaking_fails_the_image_after_the_resume_budget() {
    // Every response breaks after 1 MiB: 8 MiB would need 7 resumes, the budget is 3.
    let (source, target, id, dir) = pair(8 << 20).await;
    source.set_faults(Faults {
        truncate_at: Some(1 << 20),
        ..Faults::default()
    });
    let run = run(&dir, &source, &target).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains(&id) && run.stdout.contains("gave up after 3 resumes"),
        "{}",
        run.stdout
    );
    assert!(target.images().is_empty(), "the aborted copy was deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quota_refusal_fails_that_image_and_the_others_go_on() {
    let source = FakeGlance::start().await;
    let big = source.add_image(ImageSpec::new("big", ImageData::synthetic(3 << 20, 1)));
    let small = source.add_image(ImageSpec::new("small", ImageData::synthetic(1 << 20, 2)));
    let target = FakeGlance::start().await;
    target.set_faults(Faults {
        size_cap: Some(2 << 20),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let run = run(&dir, &source, &target).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains(&big) && run.stdout.contains("HTTP 413"),
        "{}",
        run.stdout
    );
    let images = target.images();
    assert_eq!(
        images.len(),
        1,
        "only the small image, and no leftover of the big one"
    );
    assert_eq!(images[0]["glance_sync_source_id"], small.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_stored_corrupt_whose_delete_failed_is_deleted_by_the_next_run_and_copied_again() {
    let (source, target, id, dir) = pair(1 << 20).await;
    target.set_faults(Faults {
        corrupt_uploads: true,
        transient: Some(Transient {
            request_prefix: "DELETE /v2/images".into(),
            status: 503,
            times: 100,
            retry_after: None,
        }),
        ..Faults::default()
    });
    let first = run(&dir, &source, &target).await;
    first.assert_code(1);
    // The read-back check caught it, but the copy could not be deleted: it stays active.
    let images = target.images();
    assert_eq!(images.len(), 1, "{images:?}");
    let bad = images[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(images[0]["status"], "active");
    assert_ne!(
        images[0]["checksum"],
        source.image(&id).unwrap()["checksum"]
    );

    target.set_faults(Faults::default());
    let second = run(&dir, &source, &target).await;
    second.assert_code(0);
    assert!(
        target.deleted_ids().contains(&bad),
        "{:?}",
        target.deleted_ids()
    );
    assert_one_exact_copy(&source, &target, &id);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_answered_409_counts_when_the_image_went_active_with_our_bytes() {
    let (source, target, id, dir) = pair(1 << 20).await;
    target.set_faults(Faults {
        answer_uploads_with: Some(409),
        ..Faults::default()
    });
    run(&dir, &source, &target).await.assert_code(0);
    assert_one_exact_copy(&source, &target, &id);
    assert!(target.deleted_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_answered_409_fails_and_cleans_up_when_the_image_is_not_active() {
    let (source, target, id, dir) = pair(1 << 20).await;
    target.set_faults(Faults {
        fail_uploads_with: Some(409),
        ..Faults::default()
    });
    let failed = run(&dir, &source, &target).await;
    failed.assert_code(1);
    assert!(failed.stdout.contains("HTTP 409"), "{}", failed.stdout);
    assert!(target.images().is_empty(), "{:?}", target.images());

    target.set_faults(Faults::default());
    run(&dir, &source, &target).await.assert_code(0);
    assert_one_exact_copy(&source, &target, &id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_is_down_fails_its_images_and_the_other_target_is_served() {
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new("img", ImageData::synthetic(1 << 20, 3)));
    let good = FakeGlance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let down = format!("http://127.0.0.1:{}", support::daemon_proc::free_port());
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("down", &down), ("good", &good.url)],
        "prod",
        &["down", "good"],
        "[transfer]\nretries = 1\nretry_max_delay = \"1s\"\n",
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains("target down not reached"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("check that the image endpoint of cloud 'down' is reachable"),
        "says what to do: {}",
        run.stdout
    );
    assert_eq!(good.images().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_listings_are_clear_errors_and_nothing_is_written() {
    for (body, expected) in [
        ("{not json", "page is not JSON"),
        (r#"{"first": "/v2/images"}"#, "has no 'images' array"),
        (
            r#"{"images": [], "next": "/v2/images?limit=1000&marker=x"}"#,
            "repeats: paging would never end",
        ),
        (
            r#"{"images": [{"name": "no id or status"}]}"#,
            "image entry not understood",
        ),
    ] {
        let (source, target, _, dir) = pair(1 << 20).await;
        source.set_faults(Faults {
            list_body: Some(body.to_string()),
            ..Faults::default()
        });
        let run = run(&dir, &source, &target).await;
        run.assert_code(1);
        assert!(
            run.stdout.contains(expected) && run.stdout.contains("cloud 'prod'"),
            "{body}: {}",
            run.stdout
        );
        assert_eq!(target.write_requests(), 0, "{body}: something was written");
    }
}
