//! The same sync through a real Keystone: password auth, project-scoped token, each Glance found in
//! the service catalog by region. Needs the Keystone that tests/run.sh starts (tests/harness/keystone.sh),
//! whose catalog names Glance on 127.0.0.1:19392 (region-source) and :19393 (region-target).

mod support;

use support::glance_api::Api;
use support::glance_api::{image_body, random_bytes};
use support::harness::RealGlance;
use support::keystone::{self, DEMO_PASSWORD, demo_token, keystone_url};
use support::scenario::copies_by_source;
use support::scenario::{assert_exact_copies, seed_source};
use support::sync_cli::glance_sync;

const PASSWORD: &str = DEMO_PASSWORD;

fn cloud(name: &str, region: &str) -> String {
    format!(
        "[clouds.{name}]\nauth_type = \"password\"\nregion_name = \"{region}\"\ninterface = \"public\"\n\
         [clouds.{name}.auth]\nauth_url = \"{}/v3\"\nusername = \"demo\"\npassword = \"{PASSWORD}\"\n\
         project_name = \"demo\"\nuser_domain_name = \"Default\"\nproject_domain_name = \"Default\"\n\n",
        keystone_url()
    )
}

#[tokio::test]
#[ignore = "needs real Glance and Keystone: run tests/run.sh"]
async fn sync_through_real_keystone_with_password_auth_and_catalog_endpoints() {
    let env = [("GLANCE_AUTH", "keystone")];
    let src = RealGlance::start_with("ks-src", Some(19392), &env);
    let dst = RealGlance::start_with("ks-dst", Some(19393), &env);
    let (token, _) = demo_token().await;
    let (source, target) = (
        Api::with_token(&src.url, &token),
        Api::with_token(&dst.url, &token),
    );
    let seeded = seed_source(&source).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\npath = \"{}\"\n\n{}{}[[jobs]]\nname = \"ks\"\nsource = \"prod\"\ntargets = [\"dr\"]\n",
            dir.path().join("state.db").display(),
            cloud("prod", "region-source"),
            cloud("dr", "region-target"),
        ),
    )
    .unwrap();

    let check = glance_sync(&config, &["check"]).await;
    check.assert_code(0);
    assert!(
        check
            .stdout
            .contains("prod: ok, image endpoint http://127.0.0.1:19392"),
        "{}",
        check.stdout
    );
    assert!(
        check
            .stdout
            .contains("dr: ok, image endpoint http://127.0.0.1:19393"),
        "{}",
        check.stdout
    );

    let run = glance_sync(&config, &["-v", "run"]).await;
    run.assert_code(0);
    assert_exact_copies(&source, &target, &seeded, "prod").await;

    // Copies belong to the project the credentials are scoped to.
    for img in target.list_all().await {
        assert_eq!(
            img["owner"],
            source.get(seeded.kernel_id.as_str()).await["owner"]
        );
    }

    // No secret in anything the operator sees, even at debug level.
    for (what, text) in [
        ("check stdout", &check.stdout),
        ("run stdout", &run.stdout),
        ("run stderr", &run.stderr),
    ] {
        assert!(!text.contains(PASSWORD), "{what} shows the password");
        assert!(!text.contains("gAAAAA"), "{what} shows a Fernet token");
    }
    // Another project's private image on the source: demo has the admin role and so sees it,
    // but the token is scoped to project demo, so the job leaves it out.
    let (admin_token, _) = keystone::token("admin", "admin-secret", "admin").await;
    let other = Api::with_token(&src.url, &admin_token)
        .create_with_data(
            image_body(
                "admins-private",
                "raw",
                serde_json::json!({"visibility": "private"}),
            ),
            random_bytes(4096, 77),
        )
        .await;
    let plan = glance_sync(&config, &["-vv", "plan"]).await;
    plan.assert_code(0);
    assert!(
        plan.stderr.contains("'admins-private'")
            && plan.stderr.contains("private image of project"),
        "{}",
        plan.stderr
    );
    glance_sync(&config, &["run"]).await.assert_code(0);
    assert!(
        !copies_by_source(&target)
            .await
            .contains_key(other["id"].as_str().unwrap()),
        "another project's private image was copied"
    );

    // owner = "source" needs the admin role on the target: check says so for a user without it.
    let viewer = dir.path().join("viewer.toml");
    std::fs::write(
        &viewer,
        format!(
            "[state]\npath = \"{}\"\n\n{}{}[[jobs]]\nname = \"ks\"\nsource = \"prod\"\n\
             targets = [\"dr\"]\n[jobs.metadata]\nowner = \"source\"\nproject_map = {{ \"*\" = \"*\" }}\n",
            dir.path().join("viewer.db").display(),
            cloud("prod", "region-source"),
            cloud("dr", "region-target")
                .replace("username = \"demo\"", "username = \"viewer\"")
                .replace(PASSWORD, "viewer-secret"),
        ),
    )
    .unwrap();
    let check = glance_sync(&viewer, &["check"]).await;
    check.assert_code(1);
    assert!(
        check
            .stdout
            .contains("dr: FAILED: job(s) ks set owner = \"source\"")
            && check.stdout.contains("needs the admin role here")
            && check.stdout.contains("member"),
        "{}",
        check.stdout
    );

    // members = true as the same user: the copy gets the source's members, but only an admin may
    // set another project's member status, so they stay pending and plan says why.
    let shared = source
        .create_with_data(
            image_body(
                "shared-with-x",
                "raw",
                serde_json::json!({"visibility": "shared"}),
            ),
            random_bytes(4096, 78),
        )
        .await;
    let shared_id = shared["id"].as_str().unwrap();
    source.add_member(shared_id, "project-x").await;
    source
        .set_member_status(shared_id, "project-x", "accepted")
        .await;
    let members_cfg = dir.path().join("members.toml");
    std::fs::write(
        &members_cfg,
        std::fs::read_to_string(&viewer)
            .unwrap()
            .replace("viewer.db", "members.db")
            .replace("owner = \"source\"", "members = true")
            .replace(
                "targets = [\"dr\"]",
                "targets = [\"dr\"]\n[jobs.filter]\ninclude = [\"shared-with-x\"]",
            ),
    )
    .unwrap();
    let plan = glance_sync(&members_cfg, &["plan"]).await;
    plan.assert_code(0);
    assert!(
        plan.stdout.contains("+project-x pending")
            && plan.stdout.contains(
                "status not replicated, it needs the admin role on the target: project-x accepted"
            ),
        "{}",
        plan.stdout
    );
    glance_sync(&members_cfg, &["run"]).await.assert_code(0);
    let copy = copies_by_source(&target).await[shared_id][0].clone();
    let members = target.members(copy["id"].as_str().unwrap()).await;
    assert_eq!(members["members"][0]["member_id"], "project-x");
    assert_eq!(members["members"][0]["status"], "pending");

    let db = std::fs::read(dir.path().join("state.db")).unwrap();
    assert!(
        !db.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()),
        "state database holds the password"
    );

    // A wrong password is reported as a Keystone refusal, naming the cloud.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replacen(PASSWORD, "wrong-password", 1),
    )
    .unwrap();
    let bad = glance_sync(&config, &["check"]).await;
    bad.assert_code(1);
    assert!(
        bad.stdout
            .contains("prod: FAILED: cloud 'prod': Keystone at")
            && bad.stdout.contains("refused the credentials (HTTP 401)"),
        "{}",
        bad.stdout
    );
}
