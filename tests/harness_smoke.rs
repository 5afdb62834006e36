//! The real-Glance test rig itself works: an instance starts, answers the v2
//! API, and is stopped again when dropped.

mod support;

use support::harness::RealGlance;

#[test]
#[ignore = "needs real Glance: run tests/run.sh"]
fn real_glance_starts_and_answers() {
    let glance = RealGlance::start("smoke");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (status, body) = rt.block_on(async {
        let resp = reqwest::get(glance.endpoint("/v2/images"))
            .await
            .expect("GET /v2/images");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("JSON body");
        (status, body)
    });
    assert_eq!(status, reqwest::StatusCode::OK, "body: {body}");
    assert!(body["images"].is_array(), "no `images` array in {body}");
    let state = glance.state_dir();
    assert!(state.join("glance.sqlite").exists(), "{}", state.display());
    drop(glance);
    assert!(
        !state.exists(),
        "state dir left behind: {}",
        state.display()
    );
}
