//! Token renewal, against a minimal Keystone + Glance written here: a token close to expiry is
//! renewed before use, and a token the cloud refuses (401) is replaced once and the call retried.
//! (Real Keystone cannot be told to expire a token early or Glance to refuse a valid one.)

mod support;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;
use support::sync_cli::glance_sync;

#[derive(Default)]
struct Cloud {
    url: String,
    /// Seconds of life of each token issued.
    ttl: i64,
    issued: u32,
    /// Tokens Glance answers 401 to.
    rejected: Vec<String>,
    /// Token seen on each Glance call.
    seen: Vec<String>,
}

type Shared = Arc<Mutex<Cloud>>;

async fn issue(State(c): State<Shared>) -> impl IntoResponse {
    let mut c = c.lock().unwrap();
    c.issued += 1;
    let token = format!("tok-{}", c.issued);
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(c.ttl);
    let body = json!({"token": {"expires_at": expires.to_string(), "catalog": [
        {"type": "image", "endpoints": [
            {"interface": "public", "region_id": "R1", "url": format!("{}/v2/", c.url)}]}]}});
    (
        StatusCode::CREATED,
        [
            ("x-subject-token", token),
            ("content-type", "application/json".into()),
        ],
        body.to_string(),
    )
}

async fn images(State(c): State<Shared>, headers: HeaderMap) -> impl IntoResponse {
    let token = headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut c = c.lock().unwrap();
    c.seen.push(token.clone());
    if c.rejected.contains(&token) {
        return (
            StatusCode::UNAUTHORIZED,
            json!({"message": "bad token"}).to_string(),
        );
    }
    (StatusCode::OK, json!({"images": []}).to_string())
}

async fn start(ttl: i64, rejected: &[&str]) -> Shared {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cloud = Arc::new(Mutex::new(Cloud {
        url,
        ttl,
        rejected: rejected.iter().map(|s| s.to_string()).collect(),
        ..Cloud::default()
    }));
    let app = axum::Router::new()
        .route("/v3/auth/tokens", post(issue))
        .route("/v2/images", get(images))
        .with_state(cloud.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    cloud
}

fn config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[state]\npath = \"{}/state.db\"\n\n[clouds.c]\nauth_type = \"password\"\n\
             [clouds.c.auth]\nauth_url = \"{url}\"\nusername = \"u\"\npassword = \"p\"\n\
             project_name = \"p\"\n\n[clouds.lab]\nauth_type = \"none\"\n\
             image_endpoint_override = \"{url}\"\n\n\
             [[jobs]]\nname = \"j\"\nsource = \"c\"\ntargets = [\"lab\"]\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_with_long_life_is_reused() {
    let cloud = start(3600, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = cloud.lock().unwrap().url.clone();
    glance_sync(&config(dir.path(), &url), &["check"])
        .await
        .assert_code(0);
    let c = cloud.lock().unwrap();
    assert_eq!(c.issued, 1);
    assert!(
        c.seen
            .iter()
            .filter(|t| !t.is_empty())
            .all(|t| t == "tok-1"),
        "{:?}",
        c.seen
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_close_to_expiry_is_renewed_before_use() {
    // 60 s left is under the two minutes keystoneauth (and glance-sync) keep in reserve.
    let cloud = start(60, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = cloud.lock().unwrap().url.clone();
    glance_sync(&config(dir.path(), &url), &["check"])
        .await
        .assert_code(0);
    let c = cloud.lock().unwrap();
    // One token for the endpoint lookup, then a new one instead of reusing it for the call.
    assert_eq!(c.issued, 2);
    let authed: Vec<&String> = c.seen.iter().filter(|t| !t.is_empty()).collect();
    assert_eq!(authed, ["tok-2"], "the cloud without auth sends no token");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_is_replaced_once_and_the_call_retried() {
    let cloud = start(3600, &["tok-1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = cloud.lock().unwrap().url.clone();
    let run = glance_sync(&config(dir.path(), &url), &["check"]).await;
    run.assert_code(0);
    let c = cloud.lock().unwrap();
    assert_eq!(c.issued, 2);
    let authed: Vec<&String> = c.seen.iter().filter(|t| !t.is_empty()).collect();
    assert_eq!(authed, ["tok-1", "tok-2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cloud_that_refuses_every_token_fails_after_one_retry() {
    let cloud = start(3600, &["tok-1", "tok-2", "tok-3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = cloud.lock().unwrap().url.clone();
    let run = glance_sync(&config(dir.path(), &url), &["check"]).await;
    run.assert_code(1);
    assert!(run.stdout.contains("HTTP 401"), "{}", run.stdout);
    assert_eq!(cloud.lock().unwrap().issued, 2, "one renewal, no loop");
}
