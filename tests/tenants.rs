//! Tenant isolation against real Glance, with tenants made by its per-project tokens (fakeauth:
//! `X-Auth-Token: user:project:roles`). glance-sync works as project `admin` with admin rights,
//! so it sees every project's images, as operators' sync accounts usually do.

mod support;

use serde_json::{Value, json};
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::scenario::copies_by_source;
use support::sync_cli::{clouds_toml, glance_sync};

fn config(dir: &std::path::Path, src: &str, dst: &str, filter: &str) -> std::path::PathBuf {
    let text = format!(
        "[state]\npath = \"{}\"\n\n{}[[jobs]]\nname = \"job\"\nsource = \"prod\"\ntargets = [\"dr\"]\n{filter}",
        dir.join("state.db").display(),
        clouds_toml(&[("prod", src), ("dr", dst)], Some("admin")),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn image(api: &Api, name: &str, visibility: &str, seed: u64) -> String {
    let img: Value = api
        .create_with_data(
            image_body(name, "raw", json!({"visibility": visibility})),
            random_bytes(64 * 1024, seed),
        )
        .await;
    img["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn other_projects_private_and_shared_images_are_copied_only_when_owners_names_them() {
    let src = RealGlance::start("ten-src");
    let dst = RealGlance::start("ten-dst");
    let ours = Api::new(&src.url);
    let tenant = Api::with_token(&src.url, "alice:tenant:admin,member,reader");
    let mine = image(&ours, "ours-private", "private", 1).await;
    let public = image(&tenant, "tenant-public", "public", 2).await;
    let community = image(&tenant, "tenant-community", "community", 3).await;
    let private = image(&tenant, "tenant-private", "private", 4).await;
    let shared = image(&tenant, "tenant-shared", "shared", 5).await;
    let target = Api::new(&dst.url);

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &src.url, &dst.url, "");
    let plan = glance_sync(&cfg, &["-vv", "plan"]).await;
    plan.assert_code(0);
    assert!(
        plan.stdout
            .contains("2 private or shared images of other projects left out"),
        "{}",
        plan.stdout
    );
    for name in ["tenant-private", "tenant-shared"] {
        assert!(
            plan.stderr.contains(&format!("'{name}'"))
                && plan.stderr.contains("left out: ")
                && plan.stderr.contains("of project tenant, not of admin"),
            "-vv says why {name} is left out: {}",
            plan.stderr
        );
    }
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let copies = copies_by_source(&target).await;
    for id in [&mine, &public, &community] {
        assert!(copies.contains_key(id.as_str()), "{id} must be copied");
    }
    for id in [&private, &shared] {
        assert!(!copies.contains_key(id.as_str()), "{id} must not be copied");
    }

    let cfg = config(
        dir.path(),
        &src.url,
        &dst.url,
        "[jobs.filter]\nowners = [\"tenant\"]\n",
    );
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let copies = copies_by_source(&target).await;
    for id in [&private, &shared] {
        assert!(
            copies.contains_key(id.as_str()),
            "owners names tenant: {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_tenants_private_image_with_the_same_bytes_does_not_block_the_public_copy() {
    let src = RealGlance::start("ten-blk-src");
    let dst = RealGlance::start("ten-blk-dst");
    let source = Api::new(&src.url);
    let target = Api::new(&dst.url);
    let blocked = image(&source, "ubuntu", "public", 10).await;
    let stood_in = image(&source, "debian", "public", 11).await;
    // On the target, tenants got there first: a private image with ubuntu's name and bytes, and
    // a public one with debian's.
    let squatter = Api::with_token(&dst.url, "eve:tenant:member,reader");
    let private = image(&squatter, "ubuntu", "private", 10).await;
    let publisher = Api::with_token(&dst.url, "pat:other:admin,member,reader");
    let public = image(&publisher, "debian", "public", 11).await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &src.url, &dst.url, "");
    glance_sync(&cfg, &["run"]).await.assert_code(0);
    let copies = copies_by_source(&target).await;
    let copy = &copies
        .get(&blocked)
        .expect("a public copy beside the tenant's private image")[0];
    assert_eq!(copy["visibility"], "public");
    assert_eq!(copy["owner"], "admin");
    assert!(
        !copies.contains_key(&stood_in),
        "the public image stands in"
    );
    // Neither tenant's image was touched.
    assert_eq!(target.get(&private).await["visibility"], "private");
    assert_eq!(target.get(&public).await["owner"], "other");
    assert_eq!(target.list_all().await.len(), 3);
}
