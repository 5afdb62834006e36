//! Server-side copies on real Glance 33 regions sharing the real Keystone: the target Glance
//! pulls from the source region (`transfer = "glance-download"`), glance-sync drives, verifies
//! and sets the metadata. Each test starts its own two regions on free ports and registers them
//! in Keystone's catalog (the pull finds the source through the caller's catalog).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::keystone::{self, DEMO_PASSWORD, demo_token, keystone_url};
use support::scenario::{assert_exact_copies, copies_by_source, seed_source};
use support::sync_cli::{command, glance_sync};

const WITH_GLANCE_DOWNLOAD: &str = "glance-direct,web-download,copy-image,glance-download";

/// Two regions of one cloud: Glance `src` and `dst` on free ports, both validating tokens with
/// the harness's Keystone, registered in its catalog as regions `<tag>-src` and `<tag>-dst`.
struct Regions {
    src: RealGlance,
    dst: RealGlance,
    tag: String,
    source: Api,
    target: Api,
    dir: tempfile::TempDir,
}

impl Regions {
    /// `target_stores`: "a,b" for a multi-store target, "" for a single store.
    async fn start(tag: &str, target_methods: &str, target_stores: &str) -> Regions {
        Self::start_with(tag, target_methods, target_stores, &[]).await
    }

    /// Same, with more of `glance.sh`'s knobs for the target.
    async fn start_with(
        tag: &str,
        target_methods: &str,
        target_stores: &str,
        target_env: &[(&str, &str)],
    ) -> Regions {
        let src =
            RealGlance::start_with(&format!("{tag}-src"), None, &[("GLANCE_AUTH", "keystone")]);
        let mut env = vec![
            ("GLANCE_AUTH", "keystone"),
            ("GLANCE_IMPORT_METHODS", target_methods),
        ];
        if !target_stores.is_empty() {
            env.push(("GLANCE_STORES", target_stores));
        }
        env.extend_from_slice(target_env);
        let dst = RealGlance::start_with(&format!("{tag}-dst"), None, &env);
        keystone::add_region(&format!("{tag}-src"), &src.url).await;
        keystone::add_region(&format!("{tag}-dst"), &dst.url).await;
        let (token, _) = demo_token().await;
        Regions {
            source: Api::with_token(&src.url, &token),
            target: Api::with_token(&dst.url, &token),
            src,
            dst,
            tag: tag.to_string(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A config whose job copies from `src` to `dst` with the given job lines (`transfer`...);
    /// `source_region` overrides the source cloud's `region_name`.
    fn config(&self, job_lines: &str, source_region: Option<&str>) -> std::path::PathBuf {
        let cloud = |name: &str, region: &str| {
            format!(
                "[clouds.{name}]\nauth_type = \"password\"\nregion_name = \"{region}\"\n\
                 [clouds.{name}.auth]\nauth_url = \"{}/v3\"\nusername = \"demo\"\n\
                 password = \"{DEMO_PASSWORD}\"\nproject_name = \"demo\"\n\
                 user_domain_name = \"Default\"\nproject_domain_name = \"Default\"\n\n",
                keystone_url()
            )
        };
        let src_region = format!("{}-src", self.tag);
        let mut src = cloud("src", &src_region);
        if let Some(region) = source_region {
            // The endpoint stays the real one; only the region the target is told differs.
            src = src.replace(
                &format!("region_name = \"{src_region}\"\n"),
                &format!(
                    "region_name = \"{region}\"\nimage_endpoint_override = \"{}\"\n",
                    self.src.url
                ),
            );
        }
        let path = self.dir.path().join("config.toml");
        std::fs::write(
            &path,
            format!(
                "[state]\npath = \"{}\"\n\n{src}{}[[jobs]]\nname = \"gd\"\nsource = \"src\"\n\
                 targets = [\"dst\"]\n{job_lines}\n",
                self.dir.path().join("state.db").display(),
                cloud("dst", &format!("{}-dst", self.tag)),
            ),
        )
        .unwrap();
        path
    }

    fn metrics_path(&self) -> String {
        self.dir.path().join("metrics.prom").display().to_string()
    }

    fn metrics(&self) -> String {
        std::fs::read_to_string(self.metrics_path()).unwrap()
    }

    /// The target holds no image at all.
    async fn assert_target_empty(&self, why: &str) {
        let images = self.target.list_all().await;
        assert!(images.is_empty(), "{why}: {images:?}");
    }

    /// The target holds one image, a verified copy of `source`: active, same bytes.
    async fn assert_only_copy_of(&self, source: &serde_json::Value) {
        let copies = copies_by_source(&self.target).await;
        let id = source["id"].as_str().unwrap();
        assert_eq!(copies.get(id).map(Vec::len), Some(1), "{copies:?}");
        let copy = &copies[id][0];
        assert_eq!(copy["status"], "active");
        for key in ["size", "checksum", "os_hash_value", "disk_format"] {
            assert_eq!(copy[key], source[key], "{key}");
        }
        assert_eq!(self.target.list_all().await.len(), 1, "no other image left");
    }

    async fn remove_regions(&self) {
        keystone::remove_region(&format!("{}-src", self.tag)).await;
        keystone::remove_region(&format!("{}-dst", self.tag)).await;
    }
}

/// The sum of every series of `name` whose labels include `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The source's `GET .../file` requests, with their User-Agent.
fn downloads(glance: &RealGlance) -> Vec<(String, String)> {
    glance
        .requests_with_agent()
        .into_iter()
        .filter(|(r, _)| r.starts_with("GET /v2/images/") && r.ends_with("/file"))
        .collect()
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn glance_download_makes_exact_copies_without_a_byte_through_glance_sync() {
    let r = Regions::start("gd-exact", WITH_GLANCE_DOWNLOAD, "").await;
    let seeded = seed_source(&r.source).await;
    let config = r.config("transfer = \"glance-download\"", None);

    let run = glance_sync(
        &config,
        &["-v", "run", "--metrics-textfile", &r.metrics_path()],
    )
    .await;
    run.assert_code(0);
    assert_exact_copies(&r.source, &r.target, &seeded, "src").await;
    // Every copy's bytes came from the target's pull: the source served each image's file once,
    // to Glance's own client, and glance-sync downloaded and uploaded nothing.
    let pulls = downloads(&r.src);
    assert_eq!(pulls.len(), seeded.eligible.len(), "{pulls:?}");
    for (request, agent) in &pulls {
        assert!(agent.starts_with("Python-urllib"), "{request} by {agent}");
    }
    let metrics = r.metrics();
    let total: u64 = {
        let mut sum = 0;
        for id in seeded.eligible.keys() {
            sum += r.source.get(id).await["size"].as_u64().unwrap();
        }
        sum
    };
    let by = |method| {
        metric_sum(
            &metrics,
            "glance_sync_bytes_copied_total",
            &[("method", method)],
        )
    };
    assert_eq!(by("glance-download"), total as f64);
    assert_eq!(by("stream"), 0.0);
    for operation in ["download", "upload"] {
        assert_eq!(
            metric_sum(
                &metrics,
                "glance_sync_api_requests_total",
                &[("operation", operation)]
            ),
            0.0,
            "glance-sync made {operation} requests"
        );
    }
    assert!(
        run.stderr.contains("by glance-download"),
        "the log says which method moved the bytes:\n{}",
        run.stderr
    );
    // Glance's import bookkeeping stays on the copies and is neither replicated nor drift.
    let copies = copies_by_source(&r.target).await;
    assert!(
        copies
            .values()
            .flatten()
            .any(|c| c.get("os_glance_import_task").is_some()
                || c.get("os_glance_failed_import").is_some()),
        "Glance leaves its os_glance_* properties on imported copies"
    );

    // A second run is a no-op: nothing written on the target, nothing pulled.
    let writes = r.dst.write_requests().len();
    glance_sync(&config, &["run"]).await.assert_code(0);
    assert_eq!(
        r.dst.write_requests().len(),
        writes,
        "{:?}",
        r.dst.write_requests()
    );
    assert_eq!(downloads(&r.src).len(), pulls.len());
    r.remove_regions().await;
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn auto_streams_to_a_target_without_glance_download_which_glance_download_names() {
    let r = Regions::start("gd-off", "glance-direct,web-download,copy-image", "").await;
    let img = r
        .source
        .create_with_data(
            image_body("plain", "raw", json!({})),
            random_bytes(300_000, 7),
        )
        .await;

    let explicit = r.config("transfer = \"glance-download\"", None);
    let run = glance_sync(&explicit, &["run"]).await;
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("does not offer the glance-download import method"),
        "{}",
        run.stderr
    );
    assert!(downloads(&r.src).is_empty(), "nothing was pulled");
    r.assert_target_empty("nothing was created on a target that cannot pull")
        .await;

    let auto = r.config("transfer = \"auto\"", None);
    let run = glance_sync(&auto, &["run", "--metrics-textfile", &r.metrics_path()]).await;
    run.assert_code(0);
    assert!(
        run.stderr.contains("streaming to dst")
            && run.stderr.contains("does not offer the glance-download"),
        "auto says why it streams:\n{}",
        run.stderr
    );
    let copies = copies_by_source(&r.target).await;
    let copy = &copies[img["id"].as_str().unwrap()];
    assert_eq!(copy.len(), 1);
    assert_eq!(copy[0]["os_hash_value"], img["os_hash_value"]);
    assert_eq!(
        metric_sum(
            &r.metrics(),
            "glance_sync_bytes_copied_total",
            &[("method", "stream")]
        ),
        300_000.0
    );
    assert_eq!(r.target.list_all().await.len(), 1, "no leftover copy");
    r.remove_regions().await;
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn a_pull_from_a_region_the_target_does_not_know_fails_clearly_and_auto_streams() {
    let r = Regions::start("gd-region", WITH_GLANCE_DOWNLOAD, "").await;
    let img = r
        .source
        .create_with_data(
            image_body("far", "raw", json!({})),
            random_bytes(200_000, 8),
        )
        .await;
    let id = img["id"].as_str().unwrap();

    let explicit = r.config("transfer = \"glance-download\"", Some("Nowhere"));
    let run = glance_sync(&explicit, &["run"]).await;
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("failed before any data was stored")
            && run.stderr.contains("source region unknown"),
        "{}",
        run.stderr
    );
    r.assert_target_empty("the failed pull's copy was deleted")
        .await;

    let other = r
        .source
        .create_with_data(
            image_body("farther", "raw", json!({})),
            random_bytes(100_000, 11),
        )
        .await;
    let auto = r.config("transfer = \"auto\"", Some("Nowhere"));
    let run = glance_sync(&auto, &["run"]).await;
    run.assert_code(0);
    assert_eq!(
        run.stderr
            .matches("streams to it for the rest of this run")
            .count(),
        1,
        "the fallback is said once:\n{}",
        run.stderr
    );
    let copies = copies_by_source(&r.target).await;
    assert_eq!(copies[id].len(), 1, "{copies:?}");
    assert_eq!(copies[id][0]["status"], "active");
    assert_eq!(copies[id][0]["os_hash_value"], img["os_hash_value"]);
    let other = &copies[other["id"].as_str().unwrap()];
    assert_eq!(other[0]["status"], "active");
    assert_eq!(r.target.list_all().await.len(), 2, "no leftover copy");
    r.remove_regions().await;
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn a_source_serving_short_data_leaves_no_locked_or_half_made_copy() {
    let r = Regions::start("gd-short", WITH_GLANCE_DOWNLOAD, "").await;
    let img = r
        .source
        .create_with_data(
            image_body("short", "raw", json!({})),
            random_bytes(500_000, 9),
        )
        .await;
    let id = img["id"].as_str().unwrap();
    // The source's Glance still lists the image as active, but its file is gone: the pull gets
    // no data, and Glance's import fails while downloading, keeping the image's import lock.
    std::fs::remove_file(r.src.state_dir().join("images").join(id)).unwrap();

    let config = r.config("transfer = \"glance-download\"", None);
    for _ in 0..2 {
        let run = glance_sync(&config, &["run"]).await;
        assert_ne!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stderr
                .contains("failed while downloading from the source"),
            "{}",
            run.stderr
        );
        r.assert_target_empty("the locked copy was deleted").await;
    }
    r.remove_regions().await;
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn killed_during_an_import_then_run_again_leaves_one_verified_copy() {
    let r = Regions::start("gd-kill", WITH_GLANCE_DOWNLOAD, "").await;
    let img = r
        .source
        .create_streamed(image_body("big", "raw", json!({})), 192 << 20, 10)
        .await;
    let config = r.config("transfer = \"glance-download\"", None);

    let mut child = command(&config)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let seen = loop {
        let images = r.target.list_all().await;
        if let Some(status) = images.first().and_then(|c| c["status"].as_str())
            && (status == "importing" || status == "active")
        {
            break status.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no import started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().await.unwrap(); // SIGKILL: no cleanup of any kind
    assert_eq!(seen, "importing", "killed during the import");

    glance_sync(&config, &["run"]).await.assert_code(0);
    r.assert_only_copy_of(&img).await;
    r.remove_regions().await;
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn copies_go_into_every_store_listed_and_a_missing_store_is_filled_by_copy_image() {
    let r = Regions::start("gd-stores", WITH_GLANCE_DOWNLOAD, "a,b").await;
    let first = r
        .source
        .create_with_data(
            image_body("first", "raw", json!({"protected": true})),
            random_bytes(400_000, 12),
        )
        .await;
    let first_id = first["id"].as_str().unwrap();

    // `check` lists the target's stores and flags a name it does not have.
    let unknown = r.config("stores = [\"a\", \"zz\"]", None);
    let check = glance_sync(&unknown, &["check"]).await;
    check.assert_code(1);
    assert!(
        check.stdout.contains("stores a, b") && check.stdout.contains("has no store zz"),
        "{}",
        check.stdout
    );

    // Streamed into store b only: not Glance's default store (a), so the upload named it.
    let only_b = r.config("stores = [\"b\"]", None);
    glance_sync(&only_b, &["run"]).await.assert_code(0);
    let copy = &copies_by_source(&r.target).await[first_id][0];
    assert_eq!(copy["stores"], "b");
    let copy_id = copy["id"].as_str().unwrap().to_string();

    // Both stores wanted: the copy is completed by copy-image, not uploaded again; a new image
    // is pulled into both at once.
    let second = r
        .source
        .create_with_data(
            image_body("second", "raw", json!({})),
            random_bytes(300_000, 13),
        )
        .await;
    let both = r.config(
        "stores = [\"b\", \"a\"]\ntransfer = \"glance-download\"",
        None,
    );
    let plan = glance_sync(&both, &["plan"]).await;
    plan.assert_code(0);
    assert!(
        plan.stdout.contains("copy into store a (copy-image)"),
        "{}",
        plan.stdout
    );
    let writes_before = r.dst.write_requests().len();
    glance_sync(&both, &["run"]).await.assert_code(0);
    let writes: Vec<String> = r.dst.write_requests()[writes_before..].to_vec();
    assert!(
        !writes
            .iter()
            .any(|w| w.contains(&format!("{copy_id}/file"))),
        "the copy was uploaded again: {writes:?}"
    );
    assert!(
        writes
            .iter()
            .any(|w| w.starts_with(&format!("POST /v2/images/{copy_id}/import"))),
        "{writes:?}"
    );
    // A streamed copy goes into the first store, then into the others in the same run.
    let third = r
        .source
        .create_with_data(
            image_body("third", "raw", json!({})),
            random_bytes(200_000, 14),
        )
        .await;
    let streamed = r.config("stores = [\"b\", \"a\"]", None);
    glance_sync(&streamed, &["run"]).await.assert_code(0);
    let copies = copies_by_source(&r.target).await;
    for (id, name) in [
        (first_id, "first"),
        (second["id"].as_str().unwrap(), "second"),
        (third["id"].as_str().unwrap(), "third"),
    ] {
        let copy = &copies[id][0];
        let mut stores: Vec<&str> = copy["stores"].as_str().unwrap().split(',').collect();
        stores.sort();
        assert_eq!(stores, ["a", "b"], "'{name}'");
        for store in ["a", "b"] {
            let file = r
                .dst
                .state_dir()
                .join(format!("images-{store}"))
                .join(copy["id"].as_str().unwrap());
            assert!(file.exists(), "'{name}' has no file in store {store}");
        }
    }
    assert_eq!(copies[first_id][0]["protected"], true);
    // In sync now: nothing more to do.
    let writes = r.dst.write_requests().len();
    glance_sync(&streamed, &["run"]).await.assert_code(0);
    assert_eq!(r.dst.write_requests().len(), writes);
    r.remove_regions().await;
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn a_preserved_id_survives_a_pull_that_left_its_lock_and_auto_streams_into_it() {
    let r = Regions::start("gd-keep", WITH_GLANCE_DOWNLOAD, "").await;
    let img = r
        .source
        .create_with_data(
            image_body("kept", "raw", json!({})),
            random_bytes(400_000, 15),
        )
        .await;
    let id = img["id"].as_str().unwrap();
    let file = r.src.state_dir().join("images").join(id);
    let saved = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();

    let pull = r.config(
        "transfer = \"glance-download\"\npreserve_ids = \"require\"",
        None,
    );
    let run = glance_sync(&pull, &["run"]).await;
    assert_ne!(run.code, 0, "{}", run.stderr);
    let copy = r.target.get(id).await;
    assert_eq!(
        copy["status"], "queued",
        "the copy under the source's id is kept"
    );
    assert!(
        copy.get("os_glance_import_task").is_some(),
        "the failed pull left Glance's import lock: {copy}"
    );

    // The source is whole again; a pull cannot go into the locked copy, a stream can.
    std::fs::write(&file, saved).unwrap();
    let auto = r.config("transfer = \"auto\"\npreserve_ids = \"require\"", None);
    let run = glance_sync(&auto, &["run"]).await;
    run.assert_code(0);
    assert!(
        run.stderr.contains("locked by an earlier import"),
        "{}",
        run.stderr
    );
    r.assert_only_copy_of(&img).await;
    assert!(
        r.target.try_get(id).await.is_some(),
        "the copy has the source's id"
    );
    r.remove_regions().await;
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn stopped_during_an_import_leaves_no_half_made_copy() {
    let r = Regions::start("gd-term", WITH_GLANCE_DOWNLOAD, "").await;
    r.source
        .create_streamed(image_body("big", "raw", json!({})), 768 << 20, 16)
        .await;
    let config = r.config("transfer = \"glance-download\"", None);
    let child = command(&config)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let images = r.target.list_all().await;
        if images.first().is_some_and(|c| c["status"] == "importing") {
            break;
        }
        assert!(
            images.iter().all(|c| c["status"] != "active"),
            "the import ended first"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no import started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("shutting down during the import"),
        "{stderr}"
    );
    r.assert_target_empty("the copy being imported was deleted")
        .await;
    r.remove_regions().await;
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn a_pull_that_changes_the_bytes_is_refused_and_auto_streams_the_sources_own() {
    // The target converts every imported image to raw (Glance's image_conversion plugin, with
    // qemu-img): a pulled copy never holds the source's bytes. A stream is not converted.
    let r = Regions::start_with(
        "gd-convert",
        WITH_GLANCE_DOWNLOAD,
        "",
        &[(
            "GLANCE_EXTRA_SECTIONS",
            "[image_import_opts]\nimage_import_plugins = [image_conversion]\n\n\
             [image_conversion]\noutput_format = raw\n",
        )],
    )
    .await;
    let qcow2 = r.dir.path().join("disk.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("16M")
        .status()
        .expect("qemu-img (Debian package qemu-utils; tests/run.sh installs it)");
    assert!(made.success());
    let img = r
        .source
        .create_with_data(
            image_body("disk", "qcow2", json!({})),
            std::fs::read(&qcow2).unwrap(),
        )
        .await;

    let pull = r.config("transfer = \"glance-download\"", None);
    let run = glance_sync(&pull, &["run"]).await;
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("failed verification after its import"),
        "{}",
        run.stderr
    );
    r.assert_target_empty("the converted copy was deleted")
        .await;

    let auto = r.config("transfer = \"auto\"", None);
    let run = glance_sync(&auto, &["run"]).await;
    run.assert_code(0);
    assert!(
        run.stderr.contains("streams to it for the rest"),
        "{}",
        run.stderr
    );
    r.assert_only_copy_of(&img).await;
    // The ledger holds the copy made, not the id spent on the converted one: a second run
    // changes nothing.
    let writes = r.dst.write_requests().len();
    glance_sync(&auto, &["run"]).await.assert_code(0);
    assert_eq!(
        r.dst.write_requests().len(),
        writes,
        "{:?}",
        r.dst.write_requests()
    );
    r.remove_regions().await;
}
