//! Replication policies against real Glance: metadata rules per job and per target, the source's
//! image ids kept, owners and members carried across projects, and the new filter keys. Projects
//! are real Glance's per-project identities (fakeauth tokens `user:project:roles`).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::real_pair::RealPair;
use support::scenario::copies_by_source;
use support::sync_cli::{clouds_toml, command, glance_sync, plan_json};

/// A config with clouds `prod` (source) and the given targets, and `job` (TOML lines of one
/// `[[jobs]]` entry after its name and source).
fn config(dir: &std::path::Path, clouds: &[(&str, &str)], job: &str) -> std::path::PathBuf {
    let text = format!(
        "[state]\npath = \"{}\"\n\n{}[[jobs]]\nname = \"job\"\nsource = \"prod\"\n{job}\n",
        dir.join("state.db").display(),
        clouds_toml(clouds, None),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn tags(img: &Value) -> Vec<String> {
    let mut t: Vec<String> = img["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    t.sort();
    t
}

fn uploads(glance: &RealGlance) -> usize {
    glance
        .write_requests()
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("/file"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn metadata_rules_apply_per_job_and_target_and_a_changed_rule_only_patches() {
    let src = RealGlance::start("pol-meta-src");
    let dr = RealGlance::start("pol-meta-dr");
    let edge = RealGlance::start("pol-meta-edge");
    let source = Api::new(&src.url);
    let img = source
        .create_with_data(
            image_body(
                "ubuntu",
                "raw",
                json!({"visibility": "public", "tags": ["golden", "wip-1"], "site_rack": "r1",
                       "owner_specified.openstack.md5": "x", "os_distro": "ubuntu"}),
            ),
            random_bytes(200 * 1024, 1),
        )
        .await;
    let id = img["id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = |visibility: &str| {
        format!(
            "targets = [\"dr\", {{ cloud = \"edge\", metadata = {{ visibility = \"private\", add_tags = [\"edge\"], protected = true }} }}]\n\
             [jobs.metadata]\nvisibility = \"{visibility}\"\nset_properties = {{ replicated_by = \"glance-sync\" }}\n\
             ignore_properties = [\"owner_specified.*\", \"site_*\"]\nadd_tags = [\"replica\"]\nignore_tags = [\"wip-*\"]\n"
        )
    };
    let clouds = [
        ("prod", src.url.as_str()),
        ("dr", &dr.url),
        ("edge", &edge.url),
    ];
    let cfg = config(dir.path(), &clouds, &job("shared"));
    glance_sync(&cfg, &["run"]).await.assert_code(0);

    let (on_dr, on_edge) = (Api::new(&dr.url), Api::new(&edge.url));
    let copy = copies_by_source(&on_dr).await[id][0].clone();
    assert_eq!(copy["visibility"], "shared");
    assert_eq!(copy["replicated_by"], "glance-sync");
    assert_eq!(copy["os_distro"], "ubuntu");
    assert!(copy.get("site_rack").is_none() && copy.get("owner_specified.openstack.md5").is_none());
    assert_eq!(tags(&copy), ["golden", "replica"]);
    let edge_copy = copies_by_source(&on_edge).await[id][0].clone();
    assert_eq!(edge_copy["visibility"], "private");
    assert_eq!(edge_copy["protected"], true);
    assert_eq!(
        tags(&edge_copy),
        ["edge", "golden"],
        "the target's add_tags replace the job's"
    );

    // Someone annotates our copy on dr with keys the rules ignore: they survive.
    let copy_id = copy["id"].as_str().unwrap().to_string();
    on_dr
        .patch(
            &copy_id,
            json!([{"op": "add", "path": "/site_local", "value": "rack-9"},
                   {"op": "replace", "path": "/tags", "value": ["golden", "replica", "wip-local"]}]),
        )
        .await;
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(0);
    let copy = on_dr.get(&copy_id).await;
    assert_eq!(copy["site_local"], "rack-9");
    assert_eq!(tags(&copy), ["golden", "replica", "wip-local"]);

    // A rule changed between runs: the copy is patched, not uploaded again.
    let uploads_before = uploads(&dr);
    let cfg = config(dir.path(), &clouds, &job("community"));
    let plan = glance_sync(&cfg, &["plan"]).await;
    assert!(
        plan.stdout
            .contains("update metadata: visibility community (rule)"),
        "{}",
        plan.stdout
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let copy = on_dr.get(&copy_id).await;
    assert_eq!(copy["visibility"], "community");
    assert_eq!(copy["site_local"], "rack-9");
    assert_eq!(uploads(&dr), uploads_before, "no upload for a rule change");
    assert_eq!(on_dr.list_all().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn preserve_ids_keeps_the_source_id_and_falls_back_or_fails_when_it_is_taken() {
    let pair = RealPair::start("pol-ids", "");
    let (source, target) = (&pair.source, &pair.target);
    let mut ids = Vec::new();
    for i in 0..3 {
        let img = source
            .create_with_data(
                image_body(&format!("img-{i}"), "raw", json!({})),
                random_bytes(64 * 1024, 10 + i),
            )
            .await;
        ids.push(img["id"].as_str().unwrap().to_string());
    }
    // On the target, img-1's id is held by someone else's image, and img-2's was held by an
    // image since deleted (Glance never gives a deleted id out again).
    target
        .create(image_body("squatter", "raw", json!({"id": ids[1]})))
        .await;
    target
        .create(image_body("gone", "raw", json!({"id": ids[2]})))
        .await;
    target.delete(&ids[2]).await;
    let dir = &pair.dir;
    let clouds = [("prod", pair.src.url.as_str()), ("dr", &pair.dst.url)];

    let cfg = config(
        dir.path(),
        &clouds,
        "targets = [\"dr\"]\npreserve_ids = \"require\"\n",
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(1);
    assert!(
        target.try_get(&ids[0]).await.is_some(),
        "img-0 keeps its id"
    );
    assert!(
        run.stdout.contains("preserve_ids = require") && run.stdout.contains("img-1"),
        "{}",
        run.stdout
    );
    let copies = copies_by_source(target).await;
    assert!(!copies.contains_key(&ids[1]) && !copies.contains_key(&ids[2]));

    let cfg = config(
        dir.path(),
        &clouds,
        "targets = [\"dr\"]\npreserve_ids = \"prefer\"\n",
    );
    let plan = glance_sync(&cfg, &["plan"]).await;
    assert!(
        plan.stdout
            .contains("with a new id: the source's is held by image 'squatter'"),
        "{}",
        plan.stdout
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(0);
    assert!(
        run.stderr
            .contains(&format!("refuses the source image's id {}", ids[2])),
        "{}",
        run.stderr
    );
    let copies = copies_by_source(target).await;
    for id in &ids[1..] {
        let copy = &copies[id.as_str()];
        assert_eq!(copy.len(), 1);
        assert_ne!(
            copy[0]["id"],
            id.as_str(),
            "a new id where the source's is taken"
        );
        assert_eq!(copy[0]["status"], "active");
    }
    let status = glance_sync(&cfg, &["status"]).await;
    status.assert_code(0);
    let listed = status
        .stdout
        .split_once("copies with a new id")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_else(|| {
            panic!(
                "status does not list copies with a new id:\n{}",
                status.stdout
            )
        });
    assert!(
        listed.contains("img-1") && listed.contains("img-2") && !listed.contains("img-0"),
        "{}",
        status.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_visibility_the_target_refuses_fails_that_image_with_the_role_it_needs() {
    let src = RealGlance::start("pol-403-src");
    let dst = RealGlance::start("pol-403-dst");
    let source = Api::new(&src.url);
    let mut ids = Vec::new();
    for (i, (name, visibility)) in [("open", "public"), ("closed", "private")]
        .into_iter()
        .enumerate()
    {
        let img = source
            .create_with_data(
                image_body(name, "raw", json!({ "visibility": visibility })),
                random_bytes(8192, 30 + i as u64),
            )
            .await;
        ids.push(img["id"].as_str().unwrap().to_string());
    }
    // On the target glance-sync works as a plain member of its project: Glance's default policy
    // lets only an admin make an image public.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[state]\npath = \"{}\"\n\n{}[clouds.dr]\nauth_type = \"token\"\n\
             image_endpoint_override = \"{}\"\nproject_id = \"p-sync\"\n[clouds.dr.auth]\n\
             token = \"sync:p-sync:member,reader\"\n\n[[jobs]]\nname = \"job\"\n\
             source = \"prod\"\ntargets = [\"dr\"]\n",
            dir.path().join("state.db").display(),
            clouds_toml(&[("prod", &src.url)], None),
            dst.url
        ),
    )
    .unwrap();
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains("HTTP 403")
            && run.stdout.contains("making an image public")
            && run.stdout.contains("need the admin role"),
        "{}",
        run.stdout
    );
    let copies = copies_by_source(&Api::new(&dst.url)).await;
    assert!(!copies.contains_key(ids[0].as_str()), "no public copy");
    assert_eq!(
        copies[ids[1].as_str()][0]["status"],
        "active",
        "the other image is copied"
    );
    assert_eq!(copies[ids[1].as_str()][0]["owner"], "p-sync");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_copy_killed_between_create_and_upload_still_ends_with_the_source_id() {
    let pair = RealPair::start("pol-kill", "preserve_ids = \"require\"\n");
    let img = pair
        .source
        .create_streamed(image_body("big", "raw", json!({})), 512 << 20, 3)
        .await;
    let id = img["id"].as_str().unwrap().to_string();
    let mut child = command(&pair.cfg).arg("run").spawn().unwrap();
    pair.wait_for_copy(&id).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // The upload broke with the connection: Glance (which may still be reading what was sent)
    // puts the image back to queued. Until then a plan waits instead of losing the id.
    let plan = glance_sync(&pair.cfg, &["plan"]).await;
    assert!(!plan.stdout.contains("delete our"), "{}", plan.stdout);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut queued_since: Option<std::time::Instant> = None;
    loop {
        let queued = pair.target.get(&id).await["status"] == "queued";
        queued_since = if queued {
            queued_since.or(Some(std::time::Instant::now()))
        } else {
            None
        };
        if queued_since.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never went back to queued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plan = glance_sync(&pair.cfg, &["plan"]).await;
    assert!(
        plan.stdout
            .contains("into our unfinished copy that has the source's id"),
        "{}",
        plan.stdout
    );
    glance_sync(&pair.cfg, &["run"]).await.assert_code(0);
    let copy = pair.target.get(&id).await;
    assert_eq!(copy["status"], "active");
    assert_eq!(copy["checksum"], img["checksum"]);
    assert_eq!(pair.target.list_all().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn owner_and_members_follow_the_source_through_the_project_map() {
    let src = RealGlance::start("pol-own-src");
    let dst = RealGlance::start("pol-own-dst");
    let owner = Api::with_token(&src.url, "alice:p-src:member,reader");
    let img = owner
        .create_with_data(
            image_body("shared-img", "raw", json!({"visibility": "shared"})),
            random_bytes(64 * 1024, 20),
        )
        .await;
    let id = img["id"].as_str().unwrap().to_string();
    for member in ["m1", "m2", "m9"] {
        owner.add_member(&id, member).await;
    }
    Api::with_token(&src.url, "bob:m1:member,reader")
        .set_member_status(&id, "m1", "accepted")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "targets = [\"dr\"]\n[jobs.filter]\nowners = [\"p-src\"]\n[jobs.metadata]\nowner = \"source\"\n\
         members = true\nproject_map = { p-src = \"p-dst\", m1 = \"n1\", m2 = \"n2\" }\n",
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(0);
    assert!(
        run.stderr
            .contains("member m9 of the source image is not in the job's project_map"),
        "{}",
        run.stderr
    );
    let target = Api::new(&dst.url);
    let copy = copies_by_source(&target).await[id.as_str()][0].clone();
    let copy_id = copy["id"].as_str().unwrap().to_string();
    assert_eq!(copy["owner"], "p-dst");
    let members = |list: Value| -> Vec<(String, String)> {
        let mut m: Vec<(String, String)> = list["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["member_id"].as_str().unwrap().to_string(),
                    m["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        m.sort();
        m
    };
    assert_eq!(
        members(target.members(&copy_id).await),
        [
            ("n1".into(), "accepted".into()),
            ("n2".into(), "pending".into())
        ],
        "mapped, with the status set as admin"
    );

    // On the source, m2 is removed and m1 changes its mind.
    owner.remove_member(&id, "m2").await;
    Api::with_token(&src.url, "bob:m1:member,reader")
        .set_member_status(&id, "m1", "rejected")
        .await;
    let plan = glance_sync(&cfg, &["plan"]).await;
    assert!(
        plan.stdout.contains("members: -n2, n1 rejected"),
        "{}",
        plan.stdout
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    assert_eq!(
        members(target.members(&copy_id).await),
        [("n1".into(), "rejected".into())]
    );

    // An owner outside the project map: that image is refused, with the reason.
    let stranger = Api::with_token(&src.url, "eve:p-other:member,reader")
        .create_with_data(
            image_body("stranger", "raw", json!({"visibility": "shared"})),
            random_bytes(4096, 21),
        )
        .await;
    let cfg = config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "targets = [\"dr\"]\n[jobs.filter]\nowners = [\"*\"]\n[jobs.metadata]\nowner = \"source\"\n\
         project_map = { p-src = \"p-dst\" }\n",
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(1);
    assert!(
        run.stdout
            .contains("project p-other, is not in the job's project_map"),
        "{}",
        run.stdout
    );
    assert!(
        !copies_by_source(&target)
            .await
            .contains_key(stranger["id"].as_str().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn each_filter_key_selects_exactly_its_images() {
    let pair = RealPair::start("pol-filter", "");
    let mut ids = std::collections::BTreeMap::new();
    for (name, format, size, distro) in [
        ("small-ubuntu-raw", "raw", 2 * 1024, "ubuntu"),
        ("big-ubuntu-raw", "raw", 3 << 20, "ubuntu"),
        ("mid-debian-raw", "raw", 512 * 1024, "debian"),
        ("mid-ubuntu-qcow2", "qcow2", 512 * 1024, "ubuntu-core"),
    ] {
        let data = if format == "qcow2" {
            support::glance_api::qcow2_bytes(size, 30)
        } else {
            random_bytes(size, 31 + ids.len() as u64)
        };
        let img = pair
            .source
            .create_with_data(image_body(name, format, json!({"os_distro": distro})), data)
            .await;
        ids.insert(name, img["id"].as_str().unwrap().to_string());
    }
    let dir = &pair.dir;
    let clouds = [("prod", pair.src.url.as_str()), ("dr", &pair.dst.url)];
    for (filter, expected) in [
        (
            "properties = { os_distro = \"ubuntu*\" }",
            vec!["big-ubuntu-raw", "mid-ubuntu-qcow2", "small-ubuntu-raw"],
        ),
        (
            "properties = { os_distro = \"ubuntu\" }",
            vec!["big-ubuntu-raw", "small-ubuntu-raw"],
        ),
        ("disk_formats = [\"qcow2\"]", vec!["mid-ubuntu-qcow2"]),
        (
            "min_size = \"100KiB\"",
            vec!["big-ubuntu-raw", "mid-debian-raw", "mid-ubuntu-qcow2"],
        ),
        (
            "max_size = \"1MiB\"",
            vec!["mid-debian-raw", "mid-ubuntu-qcow2", "small-ubuntu-raw"],
        ),
        (
            "min_size = \"100KiB\"\nmax_size = \"1MiB\"\ndisk_formats = [\"raw\"]",
            vec!["mid-debian-raw"],
        ),
    ] {
        let cfg = config(
            dir.path(),
            &clouds,
            &format!("targets = [\"dr\"]\n[jobs.filter]\n{filter}\n"),
        );
        let plan = plan_json(&cfg).await;
        let mut selected: Vec<&str> = plan[0]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        selected.sort();
        assert_eq!(selected, expected, "{filter}");
    }
}
