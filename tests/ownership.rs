//! Ownership under many jobs and changing sources, against real Glance: a job touches only the
//! copies the ledger records for it, never a copy in flight, and the ledger (not a property
//! anyone can edit) decides what is pruned.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::daemon_proc::{DaemonProc, free_port, metric_value};
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::real_pair::RealPair;
use support::scenario::copies_by_source;
use support::sync_cli::{clouds_toml, command, glance_sync, plan_json};

/// Two jobs from `prod` to `dr`: `big` copies images named `big*` on `big_schedule`, `small`
/// the others on `small_schedule`.
fn two_jobs(dir: &Path, src: &str, dst: &str, big_schedule: &str, small_schedule: &str) -> PathBuf {
    let port = free_port();
    let text = format!(
        "[state]\npath = \"{}\"\n\n{}[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [[jobs]]\nname = \"big\"\nsource = \"prod\"\ntargets = [\"dr\"]\n{big_schedule}\n\
         [jobs.filter]\ninclude = [\"big*\"]\n\n\
         [[jobs]]\nname = \"small\"\nsource = \"prod\"\ntargets = [\"dr\"]\n{small_schedule}\n\
         [jobs.filter]\nexclude = [\"big*\"]\n",
        dir.join("state.db").display(),
        clouds_toml(&[("prod", src), ("dr", dst)], None),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn metrics_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .unwrap();
    listen.trim_end_matches('"').parse().unwrap()
}

/// The copies on `target` of `source`'s images, by source id; panics unless every source image
/// has exactly one active copy with its size, checksum and multihash, and nothing else is there.
async fn assert_each_copied_once(source: &Api, target: &Api) {
    let originals = source.list_all().await;
    let copies = copies_by_source(target).await;
    let everything = target.list_all().await;
    assert_eq!(
        everything.len(),
        originals.len(),
        "one copy per source image and nothing else: {:?}",
        everything
            .iter()
            .map(|i| (&i["name"], &i["status"]))
            .collect::<Vec<_>>()
    );
    for original in &originals {
        let id = original["id"].as_str().unwrap();
        let list = copies
            .get(id)
            .unwrap_or_else(|| panic!("no copy of {}", original["name"]));
        assert_eq!(
            list.len(),
            1,
            "{} copied {} times",
            original["name"],
            list.len()
        );
        assert_eq!(list[0]["status"], "active");
        for key in ["size", "checksum", "os_hash_value"] {
            assert_eq!(list[0][key], original[key], "{}: {key}", original["name"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_frequent_job_never_deletes_the_copy_another_job_is_uploading() {
    let src = RealGlance::start("own-big-src");
    let dst = RealGlance::start("own-big-dst");
    let (source, target) = (Api::new(&src.url), Api::new(&dst.url));
    source
        .create_streamed(image_body("big-1g", "raw", json!({})), 1 << 30, 1)
        .await;
    for i in 0..3 {
        source
            .create_with_data(
                image_body(&format!("small-{i}"), "raw", json!({})),
                random_bytes(256 * 1024, 10 + i),
            )
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_jobs(
        dir.path(),
        &src.url,
        &dst.url,
        "interval = \"1h\"",
        "interval = \"5s\"",
    );
    let mut daemon = DaemonProc::start(&cfg, metrics_port(&cfg)).await;
    let started = Instant::now();
    // Done when `big`'s run says so (the image turns active on the target before glance-sync has
    // read it back and recorded it).
    daemon
        .wait_for(Duration::from_secs(240), "the 1 GiB copy", || async {
            daemon
                .metric(
                    "glance_sync_runs_total",
                    &[("sync_job", "big"), ("result", "success")],
                )
                .await
                .is_some_and(|n| n >= 1.0)
        })
        .await;
    let took = started.elapsed();
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit(Duration::from_secs(60)).await;

    // `small` planned at least once while `big`'s copy existed unfinished on the target, and
    // deleted nothing.
    let db = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let (created, big_end): (String, String) = db
        .query_row(
            "SELECT o.created_at, r.finished_at FROM owned_images o, runs r
             WHERE o.job = 'big' AND r.job = 'big' AND r.result = 'success'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or_else(|e| panic!("big's run did not succeed ({e}); log:\n{}", daemon.log()));
    let overlapping: i64 = db
        .query_row(
            "SELECT count(*) FROM runs WHERE job = 'small' AND started_at > ?1 AND started_at < ?2",
            [&created, &big_end],
            |r| r.get(0),
        )
        .unwrap();
    eprintln!("1 GiB copy: created {created}, its run finished {big_end}; seen after {took:?}");
    let runs: Vec<String> = db
        .prepare("SELECT job, started_at, finished_at, result FROM runs ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok(format!(
                "{} {} {:?} {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        overlapping >= 1,
        "no run of 'small' started while the 1 GiB copy was uploading ({created} to {big_end}): \
         the test proves nothing (make the image bigger); runs: {runs:#?}\n{}",
        daemon.log()
    );
    let deletes: Vec<String> = dst
        .write_requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE"))
        .collect();
    assert!(deletes.is_empty(), "deleted on the target: {deletes:?}");
    assert_each_copied_once(&source, &target).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn two_concurrent_jobs_killed_ten_times_end_with_every_image_once_and_verified() {
    let src = RealGlance::start("own-loop-src");
    let dst = RealGlance::start("own-loop-dst");
    let (source, target) = (Api::new(&src.url), Api::new(&dst.url));
    source
        .create_streamed(image_body("big-a", "raw", json!({})), 200 << 20, 2)
        .await;
    source
        .create_streamed(
            image_body("big-b", "raw", json!({"protected": true})),
            120 << 20,
            3,
        )
        .await;
    for i in 0..4 {
        source
            .create_with_data(
                image_body(&format!("small-{i}"), "raw", json!({"tags": ["t"]})),
                random_bytes(3 << 20, 20 + i),
            )
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_jobs(
        dir.path(),
        &src.url,
        &dst.url,
        "interval = \"1s\"",
        "interval = \"1s\"",
    );
    let port = metrics_port(&cfg);
    // SIGKILL at moments spread over listing, creates, uploads and verification of both jobs.
    let mut killed = 0;
    for delay_ms in [300u64, 700, 1100, 1500, 1900, 2400, 2900, 3500, 4200, 5000] {
        let mut daemon = DaemonProc::start(&cfg, port).await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        daemon.child.start_kill().unwrap();
        daemon.child.wait().await.unwrap();
        killed += 1;
    }
    assert_eq!(killed, 10);

    // Then left alone, the daemon brings both jobs to the end.
    let mut daemon = DaemonProc::start(&cfg, port).await;
    daemon
        .wait_for(Duration::from_secs(300), "both jobs in sync", || async {
            let runs = daemon
                .metric("glance_sync_runs_total", &[("result", "success")])
                .await;
            runs.is_some_and(|n| n >= 1.0)
                && daemon
                    .metric(
                        "glance_sync_runs_total",
                        &[("sync_job", "big"), ("result", "success")],
                    )
                    .await
                    .is_some_and(|n| n >= 1.0)
                && daemon
                    .metric(
                        "glance_sync_runs_total",
                        &[("sync_job", "small"), ("result", "success")],
                    )
                    .await
                    .is_some_and(|n| n >= 1.0)
        })
        .await;
    daemon.signal(libc::SIGTERM);
    let (code, _) = daemon.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code, 0, "{}", daemon.log());
    assert_each_copied_once(&source, &target).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn plan_during_a_run_shows_the_copy_in_flight_instead_of_deleting_it() {
    let pair = RealPair::start("own-fly", "");
    let big = pair
        .source
        .create_streamed(image_body("big", "raw", json!({})), 768 << 20, 4)
        .await;
    let mut run = command(&pair.cfg).arg("run").spawn().unwrap();
    pair.wait_for_copy(big["id"].as_str().unwrap()).await;
    let plan = plan_json(&pair.cfg).await;
    let actions = plan[0]["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{plan:#}");
    assert_eq!(actions[0]["action"], "in_flight", "{plan:#}");
    assert_eq!(actions[0]["job"], "job");
    assert!(run.wait().await.unwrap().success());
    assert_each_copied_once(&pair.source, &pair.target).await;
}

/// A pair where image `reup` was copied once, with `job_lines` in the job; returns the image.
async fn copied_once(name: &str, job_lines: &str) -> (RealPair, Value) {
    let pair = RealPair::start(name, job_lines);
    let img = pair
        .source
        .create_with_data(
            image_body(
                "reup",
                "raw",
                json!({"visibility": "public", "os_distro": "x"}),
            ),
            random_bytes(300 * 1024, 7),
        )
        .await;
    glance_sync(&pair.cfg, &["run"]).await.assert_code(0);
    (pair, img)
}

fn actions_of(plan: &Value) -> Vec<(String, String)> {
    plan[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_string(),
                a["source_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_deleted_and_recreated_source_image_keeps_its_copy_relinked() {
    for prune in ["hide", "delete"] {
        let (pair, old) = copied_once("own-reup", &format!("prune = \"{prune}\"\n")).await;
        let (source, target, cfg) = (&pair.source, &pair.target, &pair.cfg);
        let old_id = old["id"].as_str().unwrap();
        let copy_id = copies_by_source(target).await[old_id][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        source.delete(old_id).await;
        let new = source
            .create_with_data(
                image_body(
                    "reup",
                    "raw",
                    json!({"visibility": "public", "os_distro": "x"}),
                ),
                random_bytes(300 * 1024, 7),
            )
            .await;
        let new_id = new["id"].as_str().unwrap().to_string();

        let plan = plan_json(cfg).await;
        assert_eq!(
            actions_of(&plan),
            [("relink".to_string(), new_id.clone())],
            "prune = {prune}: {plan:#}"
        );
        glance_sync(cfg, &["run"]).await.assert_code(0);
        let copy = target.get(&copy_id).await;
        assert_eq!(copy["os_hidden"], false, "prune = {prune}");
        assert_eq!(copy["glance_sync_source_id"], new_id.as_str());
        assert_eq!(target.list_all().await.len(), 1, "no second copy");
        // Settled: the next plan has nothing to do.
        let plan = plan_json(cfg).await;
        assert_eq!(actions_of(&plan), [("in_sync".to_string(), new_id)]);
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_tampered_marker_is_restored_and_the_copy_stays() {
    let (pair, img) = copied_once("own-tamper", "prune = \"delete\"\n").await;
    let (target, cfg) = (&pair.target, &pair.cfg);
    let id = img["id"].as_str().unwrap();
    let copy_id = copies_by_source(target).await[id][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    target
        .patch(
            &copy_id,
            json!([{"op": "replace", "path": "/glance_sync_source_id", "value": "forged"}]),
        )
        .await;
    let run = glance_sync(cfg, &["run"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("0 pruned"), "{}", run.stdout);
    let copy = target.get(&copy_id).await;
    assert_eq!(copy["glance_sync_source_id"], id);
    assert_eq!(copy["status"], "active");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn hiding_more_copies_than_max_deletes_hides_nothing_and_fails_the_run() {
    let pair = RealPair::start("own-hide", "prune = \"hide\"\nmax_deletes = 2\n");
    let (source, target, cfg) = (&pair.source, &pair.target, &pair.cfg);
    let mut ids = Vec::new();
    for i in 0..3 {
        let img = source
            .create_with_data(
                image_body(&format!("img-{i}"), "raw", json!({})),
                random_bytes(64 * 1024, 30 + i),
            )
            .await;
        ids.push(img["id"].as_str().unwrap().to_string());
    }
    glance_sync(cfg, &["run"]).await.assert_code(0);
    // The source suddenly lists nothing.
    for id in &ids {
        source.delete(id).await;
    }
    let run = glance_sync(cfg, &["run"]).await;
    run.assert_code(1);
    let reason = "3 copies would be hidden, more than max_deletes = 2; nothing is pruned";
    assert!(run.stdout.contains(reason), "{}", run.stdout);
    for line in run.stdout.lines().filter(|l| l.contains("FAILED")) {
        assert_eq!(line.matches(reason).count(), 1, "said once: {line}");
    }
    for img in target.list_all().await {
        assert_eq!(img["os_hidden"], false, "{}", img["name"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_lost_state_database_is_reported_and_adopt_restores_ownership() {
    let src = RealGlance::start("own-lost-src");
    let dst = RealGlance::start("own-lost-dst");
    let (source, target) = (Api::new(&src.url), Api::new(&dst.url));
    let mut names = Vec::new();
    for i in 0..2 {
        let img = source
            .create_with_data(
                image_body(&format!("img-{i}"), "raw", json!({"visibility": "public"})),
                random_bytes(100 * 1024, 40 + i),
            )
            .await;
        names.push(img["id"].as_str().unwrap().to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    // Both clouds work as project "admin", as fakeauth makes a token-less caller.
    let text = format!(
        "[state]\npath = \"{}\"\n\n{}[[jobs]]\nname = \"job\"\nsource = \"prod\"\ntargets = [\"dr\"]\n",
        state.display(),
        clouds_toml(&[("prod", &src.url), ("dr", &dst.url)], Some("admin")),
    );
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, text).unwrap();
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    // A tenant forges our marker on an image of its own: never ours to adopt.
    let tenant = Api::with_token(&dst.url, "mallory:tenant:member,reader");
    tenant
        .create_with_data(
            image_body(
                "forged",
                "raw",
                json!({"glance_sync_source_cloud": "prod", "glance_sync_source_id": names[0]}),
            ),
            random_bytes(1000, 49),
        )
        .await;

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", state.display()));
    }
    let warning = "target 'dr': 2 image(s) owned by glance-sync's project carry its marker";
    let textfile = dir.path().join("metrics.prom");
    let run = glance_sync(
        &cfg,
        &["run", "--metrics-textfile", textfile.to_str().unwrap()],
    )
    .await;
    run.assert_code(0);
    assert!(run.stderr.contains(warning), "run: {}", run.stderr);
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics.contains("glance_sync_unadopted_images{sync_job=\"job\",target=\"dr\"} 2"),
        "{metrics}"
    );
    let plan = glance_sync(&cfg, &["plan"]).await;
    assert!(
        plan.stderr.contains(warning) && plan.stdout.contains("see glance-sync adopt"),
        "plan: {}{}",
        plan.stdout,
        plan.stderr
    );
    let status = glance_sync(&cfg, &["status"]).await;
    assert!(
        status
            .stderr
            .contains("target 'dr': 2 image(s) owned by glance-sync's project"),
        "status: {}",
        status.stderr
    );

    // Without --yes: a list, and nothing changes.
    let listed = glance_sync(&cfg, &["adopt"]).await;
    listed.assert_code(0);
    assert!(
        listed.stdout.contains("adopt: copy of source image") && !listed.stdout.contains("forged"),
        "{}",
        listed.stdout
    );
    assert!(
        listed.stdout.contains("nothing changed"),
        "{}",
        listed.stdout
    );
    assert!(glance_sync(&cfg, &["plan"]).await.stderr.contains(warning));

    let adopted = glance_sync(&cfg, &["adopt", "--yes"]).await;
    adopted.assert_code(0);
    assert!(
        adopted.stdout.contains("2 image(s) recorded in the ledger"),
        "{}",
        adopted.stdout
    );
    // Ours again: a renamed source image renames its copy instead of getting a second one.
    source
        .patch(
            &names[0],
            json!([{"op": "replace", "path": "/name", "value": "renamed"}]),
        )
        .await;
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(0);
    assert!(!run.stderr.contains("carry its marker"), "{}", run.stderr);
    let copies = copies_by_source(&target).await;
    assert_eq!(
        copies[&names[0]].len(),
        2,
        "ours, plus the tenant's forgery"
    );
    assert!(
        copies[&names[0]]
            .iter()
            .any(|c| c["name"] == "renamed" && c["owner"] == "admin")
    );
    assert_eq!(target.list_all().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn two_jobs_selecting_the_same_images_at_the_same_moment_copy_each_once() {
    let src = RealGlance::start("own-race-src");
    let dst = RealGlance::start("own-race-dst");
    let (source, target) = (Api::new(&src.url), Api::new(&dst.url));
    for i in 0..3 {
        source
            .create_streamed(
                image_body(&format!("img-{i}"), "raw", json!({})),
                48 << 20,
                50 + i,
            )
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut text = format!(
        "[state]\npath = \"{}\"\n\n{}[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n",
        dir.path().join("state.db").display(),
        clouds_toml(&[("prod", &src.url), ("dr", &dst.url)], None),
    );
    // Both select everything and both start at once.
    for job in ["first", "second"] {
        text.push_str(&format!(
            "[[jobs]]\nname = \"{job}\"\nsource = \"prod\"\ntargets = [\"dr\"]\ninterval = \"1h\"\n\n"
        ));
    }
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut daemon = DaemonProc::start(&cfg, port).await;
    daemon
        .wait_for(
            Duration::from_secs(120),
            "both jobs' first runs",
            || async {
                let metrics = daemon.metrics().await;
                ["first", "second"].iter().all(|job| {
                    metric_value(
                        &metrics,
                        "glance_sync_runs_total",
                        &[("sync_job", job), ("result", "success")],
                    )
                    .is_some_and(|n| n >= 1.0)
                })
            },
        )
        .await;
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit(Duration::from_secs(30)).await;
    assert_each_copied_once(&source, &target).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_renamed_job_is_warned_about_and_takes_its_copies_over_with_adopt_from_job() {
    let (pair, img) = copied_once("own-rename", "").await;
    let id = img["id"].as_str().unwrap();
    let renamed = std::fs::read_to_string(&pair.cfg)
        .unwrap()
        .replace("name = \"job\"", "name = \"golden\"");
    std::fs::write(&pair.cfg, renamed).unwrap();

    let run = glance_sync(&pair.cfg, &["run"]).await;
    run.assert_code(0);
    assert!(
        run.stderr
            .contains("1 copies from source cloud 'prod' are recorded for job 'job'")
            && run
                .stderr
                .contains("glance-sync adopt --job NEW --from-job job --yes"),
        "{}",
        run.stderr
    );
    let plan = plan_json(&pair.cfg).await;
    assert_eq!(plan[0]["actions"][0]["foreign"], true, "{plan:#}");

    let dry = glance_sync(
        &pair.cfg,
        &["adopt", "--job", "golden", "--from-job", "job"],
    )
    .await;
    dry.assert_code(0);
    assert!(dry.stdout.contains("nothing changed"), "{}", dry.stdout);
    glance_sync(
        &pair.cfg,
        &["adopt", "--job", "golden", "--from-job", "job", "--yes"],
    )
    .await
    .assert_code(0);
    let plan = plan_json(&pair.cfg).await;
    assert_eq!(actions_of(&plan), [("in_sync".to_string(), id.to_string())]);
    assert_eq!(plan[0]["actions"][0]["foreign"], false, "{plan:#}");
    let run = glance_sync(&pair.cfg, &["run"]).await;
    assert!(
        !run.stderr.contains("recorded for job 'job'"),
        "{}",
        run.stderr
    );
}
