//! A small Glance v2 client for tests: seeding source clouds and inspecting targets, independent of
//! the crate's own client (so a bug there cannot hide itself).
#![allow(dead_code)]

use serde_json::{Value, json};

pub struct Api {
    pub url: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    pub fn new(url: &str) -> Api {
        Api {
            url: url.trim_end_matches('/').to_string(),
            // No idle keep-alive connections: the harness's uWSGI serves a connection with one
            // of its few threads until it closes, so a test's idle connection could starve
            // glance-sync (or the test itself) of Glance threads for reqwest's 90 s idle timeout.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            token: None,
        }
    }

    pub fn with_token(url: &str, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..Api::new(url)
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("Accept", "application/json");
        if let Some(t) = &self.token {
            r = r.header("X-Auth-Token", t);
        }
        r
    }

    async fn expect(resp: reqwest::Response, what: &str) -> reqwest::Response {
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            panic!("{what}: HTTP {status}: {body}");
        }
        resp
    }

    /// `POST /v2/images`; returns the created image.
    pub async fn create(&self, body: Value) -> Value {
        let r = self
            .req(reqwest::Method::POST, "/v2/images")
            .json(&body)
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("create {body}"))
            .await
            .json()
            .await
            .unwrap()
    }

    pub async fn upload(&self, id: &str, data: Vec<u8>) {
        let r = self
            .req(reqwest::Method::PUT, &format!("/v2/images/{id}/file"))
            .header("Content-Type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("upload {id}")).await;
    }

    /// Creates an image and streams `len` pseudo-random bytes (seed `seed`) into it without holding
    /// them in memory; returns the image as Glance then shows it.
    pub async fn create_streamed(&self, body: Value, len: u64, seed: u64) -> Value {
        const CHUNK: u64 = 1 << 20;
        let img = self.create(body).await;
        let id = img["id"].as_str().unwrap().to_string();
        let chunks = futures_util::stream::iter((0..len.div_ceil(CHUNK)).map(move |i| {
            let n = CHUNK.min(len - i * CHUNK) as usize;
            Ok::<_, std::io::Error>(random_bytes(n, seed.wrapping_mul(1_000_003) + i))
        }));
        let r = self
            .req(reqwest::Method::PUT, &format!("/v2/images/{id}/file"))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("upload {id}")).await;
        self.get(&id).await
    }

    /// Creates an image and uploads `data`; returns the image as Glance then shows it.
    pub async fn create_with_data(&self, body: Value, data: Vec<u8>) -> Value {
        let img = self.create(body).await;
        let id = img["id"].as_str().unwrap().to_string();
        self.upload(&id, data).await;
        self.get(&id).await
    }

    pub async fn get(&self, id: &str) -> Value {
        let r = self
            .req(reqwest::Method::GET, &format!("/v2/images/{id}"))
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("get {id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    pub async fn try_get(&self, id: &str) -> Option<Value> {
        let r = self
            .req(reqwest::Method::GET, &format!("/v2/images/{id}"))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return None;
        }
        Some(
            Self::expect(r, &format!("get {id}"))
                .await
                .json()
                .await
                .unwrap(),
        )
    }

    pub async fn download(&self, id: &str) -> Vec<u8> {
        let r = self
            .req(reqwest::Method::GET, &format!("/v2/images/{id}/file"))
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("download {id}"))
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// Every image, hidden and community ones included, following `next` links.
    pub async fn list_all(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for hidden in ["false", "true"] {
            let mut next = Some(format!(
                "/v2/images?visibility=all&os_hidden={hidden}&limit=50"
            ));
            while let Some(path) = next.take() {
                let r = self.req(reqwest::Method::GET, &path).send().await.unwrap();
                let page: Value = Self::expect(r, "list").await.json().await.unwrap();
                out.extend(page["images"].as_array().unwrap().iter().cloned());
                next = page["next"].as_str().map(str::to_string);
            }
        }
        out
    }

    pub async fn patch(&self, id: &str, ops: Value) -> Value {
        let r = self
            .req(reqwest::Method::PATCH, &format!("/v2/images/{id}"))
            .header(
                "Content-Type",
                "application/openstack-images-v2.1-json-patch",
            )
            .body(ops.to_string())
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("patch {id} {ops}"))
            .await
            .json()
            .await
            .unwrap()
    }

    pub async fn action(&self, id: &str, action: &str) {
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("/v2/images/{id}/actions/{action}"),
            )
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("{action} {id}")).await;
    }

    /// `GET /v2/images/{id}/members`.
    pub async fn members(&self, id: &str) -> Value {
        let r = self
            .req(reqwest::Method::GET, &format!("/v2/images/{id}/members"))
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("members of {id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    pub async fn add_member(&self, id: &str, project: &str) {
        let r = self
            .req(reqwest::Method::POST, &format!("/v2/images/{id}/members"))
            .json(&json!({ "member": project }))
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("add member {project} to {id}")).await;
    }

    pub async fn set_member_status(&self, id: &str, project: &str, status: &str) {
        let r = self
            .req(
                reqwest::Method::PUT,
                &format!("/v2/images/{id}/members/{project}"),
            )
            .json(&json!({ "status": status }))
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("member {project} of {id} {status}")).await;
    }

    pub async fn remove_member(&self, id: &str, project: &str) {
        let r = self
            .req(
                reqwest::Method::DELETE,
                &format!("/v2/images/{id}/members/{project}"),
            )
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("remove member {project} from {id}")).await;
    }

    pub async fn delete(&self, id: &str) {
        let r = self
            .req(reqwest::Method::DELETE, &format!("/v2/images/{id}"))
            .send()
            .await
            .unwrap();
        Self::expect(r, &format!("delete {id}")).await;
    }
}

/// Deterministic pseudo-random bytes (so tests are repeatable), different per seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A minimal valid qcow2 v3 image (header + random payload): Glance's format inspection accepts it
/// as qcow2, so it can be uploaded with disk_format qcow2.
pub fn qcow2_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut hdr = Vec::new();
    hdr.extend_from_slice(b"QFI\xfb");
    hdr.extend_from_slice(&3u32.to_be_bytes()); // version
    hdr.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset
    hdr.extend_from_slice(&0u32.to_be_bytes()); // backing_file_size
    hdr.extend_from_slice(&16u32.to_be_bytes()); // cluster_bits
    hdr.extend_from_slice(&(64u64 << 20).to_be_bytes()); // virtual size
    hdr.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
    hdr.extend_from_slice(&1u32.to_be_bytes()); // l1_size
    hdr.extend_from_slice(&0x30000u64.to_be_bytes()); // l1_table_offset
    hdr.extend_from_slice(&0x10000u64.to_be_bytes()); // refcount_table_offset
    hdr.extend_from_slice(&1u32.to_be_bytes()); // refcount_table_clusters
    hdr.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    hdr.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    hdr.extend_from_slice(&0u64.to_be_bytes()); // incompatible_features
    hdr.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
    hdr.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
    hdr.extend_from_slice(&4u32.to_be_bytes()); // refcount_order
    hdr.extend_from_slice(&104u32.to_be_bytes()); // header_length
    assert_eq!(hdr.len(), 104);
    hdr.resize(512, 0);
    hdr.extend_from_slice(&random_bytes(len - 512, seed));
    hdr
}

/// The body for creating an image: defaults plus `extra` keys.
pub fn image_body(name: &str, disk_format: &str, extra: Value) -> Value {
    let mut body = json!({"name": name, "disk_format": disk_format, "container_format": "bare"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}
