//! The real Keystone that tests/run.sh starts (tests/harness/keystone.sh): its URL and a token for
//! its demo user.
#![allow(dead_code)]

use serde_json::{Value, json};

/// The demo user's password (project demo, roles member, reader and admin there).
pub const DEMO_PASSWORD: &str = "demo-secret";

pub fn keystone_url() -> String {
    std::env::var("KEYSTONE_URL").unwrap_or_else(|_| "http://127.0.0.1:15000".into())
}

/// A project-scoped token for the demo user, and the token's body (user, expiry, catalog).
pub async fn demo_token() -> (String, Value) {
    token("demo", DEMO_PASSWORD, "demo").await
}

/// A token for `user` scoped to `project` (both in domain Default), and the token's body.
/// keystone.sh also makes `admin`/`admin-secret` in project `admin`: another tenant for tests.
pub async fn token(user: &str, password: &str, project: &str) -> (String, Value) {
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}});
    let resp = reqwest::Client::new()
        .post(format!("{}/v3/auth/tokens", keystone_url()))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Keystone at {} (start it with tests/run.sh): {e}",
                keystone_url()
            )
        });
    assert_eq!(resp.status(), 201, "Keystone refused user {user}");
    let token = resp.headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_string();
    (token, resp.json().await.unwrap())
}

/// Registers `region` in Keystone's catalog with `glance_url` as its image endpoint (public,
/// internal and admin), so that a Glance started on a free port can be named by region: by
/// glance-sync's `region_name`, and by another Glance pulling from it (glance-download).
/// Remove it with [`remove_region`] at the end of the test.
pub async fn add_region(region: &str, glance_url: &str) {
    // A test that failed earlier left its region behind, with endpoints to a Glance now gone.
    remove_region(region).await;
    let (admin, _) = token("admin", "admin-secret", "admin").await;
    let http = admin_client();
    let ks = keystone_url();
    let created = http
        .post(format!("{ks}/v3/regions"))
        .header("X-Auth-Token", &admin)
        .json(&json!({"region": {"id": region}}))
        .send()
        .await
        .unwrap();
    assert!(
        created.status() == 201 || created.status() == 409,
        "create region {region}: {}",
        created.status()
    );
    let services: Value = http
        .get(format!("{ks}/v3/services?type=image"))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let service = services["services"][0]["id"]
        .as_str()
        .expect("keystone.sh registers an image service")
        .to_string();
    for interface in ["public", "internal", "admin"] {
        let r = http
            .post(format!("{ks}/v3/endpoints"))
            .header("X-Auth-Token", &admin)
            .json(
                &json!({"endpoint": {"service_id": service, "interface": interface,
                                       "region_id": region, "url": glance_url}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create endpoint in {region}");
    }
}

/// Takes `region` and its endpoints out of Keystone's catalog again.
pub async fn remove_region(region: &str) {
    let (admin, _) = token("admin", "admin-secret", "admin").await;
    let http = admin_client();
    let ks = keystone_url();
    let endpoints: Value = http
        .get(format!("{ks}/v3/endpoints?region_id={region}"))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for ep in endpoints["endpoints"].as_array().into_iter().flatten() {
        let id = ep["id"].as_str().unwrap();
        http.delete(format!("{ks}/v3/endpoints/{id}"))
            .header("X-Auth-Token", &admin)
            .send()
            .await
            .unwrap();
    }
    http.delete(format!("{ks}/v3/regions/{region}"))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .unwrap();
}

/// A client that keeps no idle connection: Keystone's uWSGI may close one between two requests.
fn admin_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}
