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
