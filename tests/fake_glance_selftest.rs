//! Checks that the fake Glance behaves like the real Glance 33 transcript
//! (shared/reference/real-glance/transcript.md) for what it implements, and that
//! its injected faults do what the replication tests rely on.

#[path = "support/fake_glance.rs"]
mod fake_glance;

use std::time::Duration;

use bytes::Bytes;
use fake_glance::{FakeGlance, FakeOptions, Faults, ImageData, ImageSpec, synthetic_bytes};
use md5::{Digest, Md5};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OCTET: &str = "application/octet-stream";
const PATCH_CT: &str = "application/openstack-images-v2.1-json-patch";

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

fn md5_hex(b: &[u8]) -> String {
    base16ct::lower::encode_string(&Md5::digest(b))
}

fn sha512_hex(b: &[u8]) -> String {
    base16ct::lower::encode_string(&sha2::Sha512::digest(b))
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    synthetic_bytes(seed, 0, n).to_vec()
}

async fn json_of(resp: reqwest::Response) -> Value {
    resp.json::<Value>().await.expect("json body")
}

/// A new queued raw/bare image; its id.
async fn create_raw(g: &FakeGlance, c: &reqwest::Client) -> String {
    create(
        g,
        c,
        json!({"disk_format": "raw", "container_format": "bare"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn create(g: &FakeGlance, c: &reqwest::Client, body: Value) -> Value {
    let resp = c
        .post(format!("{}/v2/images", g.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "create {body}");
    json_of(resp).await
}

async fn upload(g: &FakeGlance, c: &reqwest::Client, id: &str, data: Vec<u8>) -> reqwest::Response {
    c.put(format!("{}/v2/images/{id}/file", g.url))
        .header("content-type", OCTET)
        .body(data)
        .send()
        .await
        .unwrap()
}

async fn show(g: &FakeGlance, c: &reqwest::Client, id: &str) -> Value {
    let resp = c
        .get(format!("{}/v2/images/{id}", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    json_of(resp).await
}

async fn patch(g: &FakeGlance, c: &reqwest::Client, id: &str, ops: Value) -> reqwest::Response {
    c.patch(format!("{}/v2/images/{id}", g.url))
        .header("content-type", PATCH_CT)
        .header("accept", "application/json")
        .body(ops.to_string())
        .send()
        .await
        .unwrap()
}

async fn list(g: &FakeGlance, c: &reqwest::Client, path_and_query: &str) -> (StatusCode, Value) {
    let resp = c
        .get(format!("{}{path_and_query}", g.url))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, json_of(resp).await)
}

fn ids(page: &Value) -> Vec<String> {
    page["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_for_status(g: &FakeGlance, id: &str, want: &str) {
    for _ in 0..200 {
        if g.image(id).unwrap()["status"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("image {id} never reached {want}: {}", g.image(id).unwrap());
}

/// Sends a raw HTTP/1.1 request (so no client adds headers) and returns the whole answer.
async fn raw_request(g: &FakeGlance, request: &str) -> String {
    let addr = g.url.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    sock.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_returns_queued_image_with_all_base_keys() {
    let g = FakeGlance::start().await;
    let c = client();
    let resp = c
        .post(format!("{}/v2/images", g.url))
        .json(&json!({"name": "cirros-test", "disk_format": "qcow2", "container_format": "bare",
                      "min_disk": 1, "min_ram": 64, "tags": ["t1", "t2", "t1"], "my_prop": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        resp.headers()["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req-")
    );
    assert_eq!(resp.headers()["content-type"], "application/json");
    let img = json_of(resp).await;
    let id = img["id"].as_str().unwrap();
    assert_eq!(location, format!("{}/v2/images/{id}", g.url));
    let expected = json!({
        "my_prop": "hello", "name": "cirros-test", "disk_format": "qcow2", "container_format": "bare",
        "visibility": "shared", "size": null, "virtual_size": null, "status": "queued", "checksum": null,
        "protected": false, "min_ram": 64, "min_disk": 1, "owner": "admin", "os_hidden": false,
        "os_hash_algo": null, "os_hash_value": null, "id": id,
        "created_at": img["created_at"], "updated_at": img["updated_at"], "tags": ["t1", "t2"],
        "self": format!("/v2/images/{id}"), "file": format!("/v2/images/{id}/file"), "schema": "/v2/schemas/image"
    });
    assert_eq!(img, expected);
    let ts = img["created_at"].as_str().unwrap();
    assert_eq!(ts.len(), 20, "YYYY-MM-DDThh:mm:ssZ, got {ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T');
    assert_eq!(g.image(id).unwrap(), img);

    // Defaults when nearly everything is omitted.
    let bare = create(&g, &c, json!({"name": "default-vis"})).await;
    assert_eq!(bare["visibility"], "shared");
    assert_eq!(bare["disk_format"], Value::Null);
    assert_eq!(bare["tags"], json!([]));
}

#[tokio::test]
async fn create_with_existing_or_deleted_id_is_409() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = "253fece7-92a9-4a9c-96fc-357a99dd6287";
    let img = create(
        &g,
        &c,
        json!({"id": id, "name": "chosen-id", "disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    assert_eq!(img["id"], id);
    let dup = c
        .post(format!("{}/v2/images", g.url))
        .json(&json!({"id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), StatusCode::CONFLICT);
    let del = c
        .delete(format!("{}/v2/images/{id}", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let again = c
        .get(format!("{}/v2/images/{id}", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let del2 = c
        .delete(format!("{}/v2/images/{id}", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(del2.status(), StatusCode::NOT_FOUND);
    let reuse = c
        .post(format!("{}/v2/images", g.url))
        .header("accept", "application/json")
        .json(&json!({"id": id, "name": "reuse-deleted-id"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reuse.status(), StatusCode::CONFLICT);
    let body = json_of(reuse).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("Image ID {id} already exists!"))
    );
    assert_eq!(g.deleted_ids(), vec![id.to_owned()]);

    let bad = c
        .post(format!("{}/v2/images", g.url))
        .json(&json!({"id": "not-a-uuid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn create_rejects_read_only_reserved_and_non_string_properties() {
    let g = FakeGlance::start().await;
    let c = client();
    let base = json!({"name": "reserved-test", "disk_format": "raw", "container_format": "bare"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (key, value) in [
        ("status", json!("active")),
        ("checksum", json!("0123456789abcdef0123456789abcdef")),
        ("size", json!(5)),
        ("virtual_size", json!(5)),
        ("created_at", json!("2020-01-01T00:00:00Z")),
        ("self", json!("x")),
        ("file", json!("x")),
        ("schema", json!("x")),
        ("direct_url", json!("x")),
        ("stores", json!("x")),
        ("location", json!("http://x")),
        ("locations", json!([])),
        ("deleted", json!("False")),
        ("os_glance_foo", json!("x")),
    ] {
        let resp = c
            .post(format!("{}/v2/images", g.url))
            .json(&with(key, value))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{key}");
    }
    let resp = c
        .post(format!("{}/v2/images", g.url))
        .json(&with("number_prop", json!(5)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Quirk: multihash keys are silently ignored on create.
    let img = create(&g, &c, with("os_hash_value", json!("abc"))).await;
    assert_eq!(img["os_hash_value"], Value::Null);
    // Unknown keys are just custom properties.
    let img = create(&g, &c, with("is_public", json!("true"))).await;
    assert_eq!(img["is_public"], "true");
    assert_eq!(g.images().len(), 2);
}

#[tokio::test]
async fn upload_then_get_reports_md5_and_sha512_of_bytes() {
    let g = FakeGlance::start().await;
    let c = client();
    let img = create(
        &g,
        &c,
        json!({"name": "raw-random", "disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    let id = img["id"].as_str().unwrap();
    let data = random_bytes(4 << 20, 7);
    let resp = upload(&g, &c, id, data.clone()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let img = show(&g, &c, id).await;
    assert_eq!(img["status"], "active");
    assert_eq!(img["size"], data.len());
    assert_eq!(img["virtual_size"], data.len());
    assert_eq!(img["checksum"], md5_hex(&data));
    assert_eq!(img["os_hash_algo"], "sha512");
    assert_eq!(img["os_hash_value"], sha512_hex(&data));
    assert_eq!(g.image_data(id).unwrap(), Bytes::from(data.clone()));

    let resp = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], OCTET);
    assert_eq!(
        resp.headers()["content-md5"].to_str().unwrap(),
        md5_hex(&data)
    );
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        data.len().to_string()
    );
    let body = resp.bytes().await.unwrap();
    assert_eq!(body, Bytes::from(data.clone()));
    assert_eq!(g.bytes_served(), data.len() as u64);

    // Second upload to an active image.
    let again = upload(&g, &c, id, data).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn hash_algo_option_changes_os_hash_algo() {
    let g = FakeGlance::start_with(FakeOptions {
        hash_algo: "sha256".into(),
        ..Default::default()
    })
    .await;
    let c = client();
    let id = create_raw(&g, &c).await;
    let data = random_bytes(100_000, 1);
    assert_eq!(
        upload(&g, &c, &id, data.clone()).await.status(),
        StatusCode::NO_CONTENT
    );
    let img = show(&g, &c, &id).await;
    assert_eq!(img["os_hash_algo"], "sha256");
    assert_eq!(
        img["os_hash_value"],
        base16ct::lower::encode_string(&sha2::Sha256::digest(&data))
    );
    assert_eq!(img["checksum"], md5_hex(&data));
}

#[tokio::test]
async fn upload_preconditions_match_glance() {
    let g = FakeGlance::start().await;
    let c = client();
    let no_formats = create(&g, &c, json!({"name": "no-formats"})).await;
    let id = no_formats["id"].as_str().unwrap();
    let resp = upload(&g, &c, id, vec![1, 2, 3]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(g.image(id).unwrap()["status"], "queued");

    let ok = create(
        &g,
        &c,
        json!({"disk_format": "raw", "container_format": "bare"}),
    )
    .await;
    let id = ok["id"].as_str().unwrap();
    let wrong_type = c
        .put(format!("{}/v2/images/{id}/file", g.url))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let missing = upload(&g, &c, "00000000-0000-0000-0000-000000000000", vec![1]).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // Chunked upload (no Content-Length) is accepted.
    let chunks = vec![
        Ok::<_, std::io::Error>(Bytes::from_static(b"abc")),
        Ok(Bytes::from_static(b"def")),
    ];
    let resp = c
        .put(format!("{}/v2/images/{id}/file", g.url))
        .header("content-type", OCTET)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(g.image(id).unwrap()["checksum"], md5_hex(b"abcdef"));
}

#[tokio::test]
async fn upload_size_header_mismatch_is_400_and_image_stays_queued() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = create_raw(&g, &c).await;
    for declared in ["10", "1000"] {
        let resp = c
            .put(format!("{}/v2/images/{id}/file", g.url))
            .header("content-type", OCTET)
            .header("x-openstack-image-size", declared)
            .body(vec![0u8; 100])
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "declared {declared}"
        );
        let img = g.image(&id).unwrap();
        assert_eq!(img["status"], "queued");
        assert_eq!(img["size"], Value::Null);
        assert_eq!(img["checksum"], Value::Null);
    }
    let resp = c
        .put(format!("{}/v2/images/{id}/file", g.url))
        .header("content-type", OCTET)
        .header("x-openstack-image-size", "100")
        .body(vec![0u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn upload_cut_mid_stream_returns_image_to_queued() {
    let g = FakeGlance::start().await;
    let c = client();
    let addr = g.url.trim_start_matches("http://").to_owned();
    for chunked in [false, true] {
        let id = create(
            &g,
            &c,
            json!({"disk_format": "raw", "container_format": "bare"}),
        )
        .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let part = vec![7u8; 1 << 20];
        if chunked {
            let head = format!(
                "PUT /v2/images/{id}/file HTTP/1.1\r\nHost: x\r\nContent-Type: {OCTET}\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            sock.write_all(head.as_bytes()).await.unwrap();
            sock.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .await
                .unwrap();
            sock.write_all(&part).await.unwrap();
            sock.write_all(b"\r\n").await.unwrap();
        } else {
            let head = format!(
                "PUT /v2/images/{id}/file HTTP/1.1\r\nHost: x\r\nContent-Type: {OCTET}\r\nContent-Length: {}\r\n\r\n",
                64 << 20
            );
            sock.write_all(head.as_bytes()).await.unwrap();
            sock.write_all(&part).await.unwrap();
        }
        wait_for_status(&g, &id, "saving").await;
        // A download while saving has no data yet.
        let during = c
            .get(format!("{}/v2/images/{id}/file", g.url))
            .send()
            .await
            .unwrap();
        assert_eq!(during.status(), StatusCode::NO_CONTENT);
        // A second upload while saving conflicts.
        assert_eq!(
            upload(&g, &c, &id, vec![1]).await.status(),
            StatusCode::CONFLICT
        );
        drop(sock);
        wait_for_status(&g, &id, "queued").await;
        let img = g.image(&id).unwrap();
        assert_eq!(img["size"], Value::Null);
        assert_eq!(img["checksum"], Value::Null);
        assert_eq!(img["os_hash_value"], Value::Null);
        // Retrying the upload on the same id works.
        assert_eq!(
            upload(&g, &c, &id, vec![1, 2, 3]).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(g.image(&id).unwrap()["status"], "active");
    }
}

#[tokio::test]
async fn image_deleted_during_upload_answers_410() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = create_raw(&g, &c).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let put = c
        .put(format!("{}/v2/images/{id}/file", g.url))
        .header("content-type", OCTET)
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let put = tokio::spawn(put);
    tx.send(Ok(Bytes::from(vec![1u8; 4096]))).await.unwrap();
    wait_for_status(&g, &id, "saving").await;
    let del = c
        .delete(format!("{}/v2/images/{id}", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    tx.send(Ok(Bytes::from(vec![2u8; 4096]))).await.unwrap();
    drop(tx);
    let resp = put.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
    assert!(g.image(&id).is_none());
}

#[tokio::test]
async fn qcow2_format_is_inspected_like_glance_33() {
    let g = FakeGlance::start().await;
    let c = client();
    // Random bytes declared qcow2: 415, image queued but with the stale hashes, retry 500.
    let id = create(
        &g,
        &c,
        json!({"name": "mismatch", "disk_format": "qcow2", "container_format": "bare"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let data = random_bytes(1 << 20, 3);
    let resp = upload(&g, &c, &id, data.clone()).await;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let img = g.image(&id).unwrap();
    assert_eq!(img["status"], "queued");
    assert_eq!(img["size"], Value::Null);
    assert_eq!(img["checksum"], md5_hex(&data));
    assert_eq!(img["os_hash_value"], sha512_hex(&data));
    assert_eq!(
        upload(&g, &c, &id, data).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(g.image(&id).unwrap()["status"], "queued");

    // A minimal qcow2 v3 header: virtual_size comes from the header.
    let mut qcow = Vec::new();
    qcow.extend_from_slice(b"QFI\xfb");
    qcow.extend_from_slice(&3u32.to_be_bytes());
    qcow.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
    qcow.extend_from_slice(&0u32.to_be_bytes());
    qcow.extend_from_slice(&16u32.to_be_bytes());
    qcow.extend_from_slice(&(64u64 << 20).to_be_bytes()); // virtual size
    qcow.resize(104, 0);
    qcow[100..104].copy_from_slice(&104u32.to_be_bytes());
    qcow.resize(512, 0);
    qcow.extend_from_slice(&random_bytes(4096, 9));
    let id = create(
        &g,
        &c,
        json!({"disk_format": "qcow2", "container_format": "bare"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        upload(&g, &c, &id, qcow.clone()).await.status(),
        StatusCode::NO_CONTENT
    );
    let img = g.image(&id).unwrap();
    assert_eq!(img["virtual_size"], 64u64 << 20);
    assert_eq!(img["size"], qcow.len());
}

#[tokio::test]
async fn store_data_false_hashes_but_discards_bytes() {
    let g = FakeGlance::start_with(FakeOptions {
        store_data: false,
        ..Default::default()
    })
    .await;
    let c = client();
    let id = create_raw(&g, &c).await;
    let data = random_bytes(300_000, 5);
    assert_eq!(
        upload(&g, &c, &id, data.clone()).await.status(),
        StatusCode::NO_CONTENT
    );
    let img = g.image(&id).unwrap();
    assert_eq!(img["status"], "active");
    assert_eq!(img["checksum"], md5_hex(&data));
    assert!(g.image_data(&id).is_none());
    let dl = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(dl.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn queued_image_download_is_204_and_lost_data_too() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = g.add_image(ImageSpec {
        status: Some("queued".into()),
        ..ImageSpec::new("q", ImageData::Bytes(Bytes::new()))
    });
    let resp = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers().get("content-md5").is_none());

    let id = g.add_image(ImageSpec::new(
        "lost",
        ImageData::Bytes(Bytes::from_static(b"hello")),
    ));
    g.lose_data(&id);
    let resp = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(g.image(&id).unwrap()["status"], "active");
}

#[tokio::test]
async fn range_request_returns_206_with_content_range() {
    let g = FakeGlance::start().await;
    let c = client();
    let data = random_bytes(1000, 11);
    let id = g.add_image(ImageSpec::new(
        "r",
        ImageData::Bytes(Bytes::from(data.clone())),
    ));
    let url = format!("{}/v2/images/{id}/file", g.url);
    for (range, start, end) in [
        ("bytes=0-9", 0, 9),
        ("bytes=990-", 990, 999),
        ("bytes=-2", 998, 999),
        ("bytes=500-99999", 500, 999),
    ] {
        let resp = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            resp.headers()["content-range"].to_str().unwrap(),
            format!("bytes {start}-{end}/1000")
        );
        // Content-MD5 stays the whole-image MD5 on 206.
        assert_eq!(
            resp.headers()["content-md5"].to_str().unwrap(),
            md5_hex(&data)
        );
        assert_eq!(
            resp.headers()["content-length"].to_str().unwrap(),
            (end - start + 1).to_string()
        );
        assert_eq!(
            resp.bytes().await.unwrap(),
            Bytes::copy_from_slice(&data[start..=end]),
            "{range}"
        );
    }
    for range in ["bytes=1000-", "bytes=5-2", "items=0-1"] {
        let resp = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
    }
    let resp = c
        .get(&url)
        .header("range", "bytes=0-1,5-6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn synthetic_image_served_bytes_hash_to_recorded_checksum() {
    let g = FakeGlance::start().await;
    let c = client();
    let size = (3 << 20) + 12345;
    let id = g.add_image(ImageSpec::new("synth", ImageData::synthetic(size, 42)));
    let img = g.image(&id).unwrap();
    let body = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len() as u64, size);
    assert_eq!(img["checksum"], md5_hex(&body));
    assert_eq!(img["os_hash_value"], sha512_hex(&body));
    assert_eq!(img["virtual_size"], size);
    assert!(g.image_data(&id).is_none());
    // Unaligned ranges come from the same stream.
    let part = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .header("range", "bytes=1048571-1048590")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(part, body.slice(1_048_571..1_048_591));
    assert_eq!(
        ImageData::synthetic(size, 42).digests("sha512"),
        (md5_hex(&body), sha512_hex(&body))
    );
}

#[test]
fn synthetic_stream_is_the_same_whichever_way_it_is_cut() {
    // 3 MiB covers the 1 MiB period twice over and pieces served from the cached block.
    let whole = synthetic_bytes(9, 0, 3 << 20);
    for (offset, len) in [
        (0u64, 1usize),
        (7, 13),
        (1_048_800, 64),
        ((1 << 20) - 3, 1 << 20),
        (2_097_000, 1 << 20),
        (5, (3 << 20) - 5),
    ] {
        assert_eq!(
            synthetic_bytes(9, offset, len),
            whole.slice(offset as usize..offset as usize + len),
            "offset {offset}, len {len}"
        );
    }
    assert_ne!(synthetic_bytes(9, 0, 64), synthetic_bytes(10, 0, 64));
    assert_ne!(whole.slice(..64), whole.slice(1 << 20..(1 << 20) + 64));
}

#[tokio::test]
async fn synthetic_2gib_image_is_served_without_buffering() {
    let g = FakeGlance::start().await;
    let c = client();
    let size: u64 = 2 << 30;
    // Digests skipped: hashing 2 GiB in an unoptimised test build takes minutes.
    let id = g.add_image(ImageSpec {
        with_checksum: false,
        with_multihash: false,
        ..ImageSpec::new("big", ImageData::synthetic(size, 2))
    });
    let hwm_before = vm_kib("VmHWM:");
    let mut resp = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.content_length(), Some(size));
    assert!(resp.headers().get("content-md5").is_none());
    let mut received: u64 = 0;
    let mut first = None;
    let mut last = Bytes::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        if first.is_none() {
            first = Some(chunk.slice(..chunk.len().min(4096)));
        }
        received += chunk.len() as u64;
        last = chunk;
    }
    let hwm_after = vm_kib("VmHWM:");
    assert_eq!(received, size);
    assert_eq!(g.bytes_served(), size);
    let first = first.unwrap();
    assert_eq!(first, synthetic_bytes(2, 0, first.len()));
    assert_eq!(
        last,
        synthetic_bytes(2, size - last.len() as u64, last.len())
    );
    let grown_mib = hwm_after.saturating_sub(hwm_before) / 1024;
    eprintln!("2 GiB served; peak RSS grew by {grown_mib} MiB (HWM {hwm_after} KiB)");
    assert!(
        grown_mib < 256,
        "peak RSS grew by {grown_mib} MiB while serving 2 GiB"
    );
}

#[tokio::test]
async fn corrupt_fault_serves_bytes_not_matching_checksum() {
    let g = FakeGlance::start().await;
    let c = client();
    let data = random_bytes(3 << 20, 21);
    let id = g.add_image(ImageSpec::new(
        "c",
        ImageData::Bytes(Bytes::from(data.clone())),
    ));
    g.set_faults(Faults {
        corrupt_data: true,
        ..Default::default()
    });
    let resp = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-md5"].to_str().unwrap(),
        md5_hex(&data)
    );
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), data.len());
    assert_ne!(md5_hex(&body), md5_hex(&data));
    assert_eq!(g.image(&id).unwrap()["checksum"], md5_hex(&data));
    let diffs: Vec<usize> = (0..data.len()).filter(|&i| body[i] != data[i]).collect();
    assert_eq!(diffs, vec![data.len() / 2]);

    g.set_faults(Faults::default());
    let clean = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(md5_hex(&clean), md5_hex(&data));
}

#[tokio::test]
async fn truncate_fault_cuts_connection_and_range_resume_completes() {
    let g = FakeGlance::start().await;
    let c = client();
    let data = random_bytes((2 << 20) + 777, 31);
    let id = g.add_image(ImageSpec::new(
        "t",
        ImageData::Bytes(Bytes::from(data.clone())),
    ));
    let cut = 1_500_000u64;
    g.set_faults(Faults {
        truncate_at: Some(cut),
        data_fault_limit: Some(1),
        ..Default::default()
    });
    let url = format!("{}/v2/images/{id}/file", g.url);
    let mut resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.content_length(), Some(data.len() as u64));
    let mut got = Vec::new();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => panic!("stream ended cleanly after {} bytes", got.len()),
            Err(e) => break e,
        }
    };
    assert_eq!(got.len() as u64, cut, "bytes before the cut ({err})");
    // The fault was limited to one response: resuming with Range completes the image.
    let rest = c
        .get(&url)
        .header("range", format!("bytes={cut}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::PARTIAL_CONTENT);
    got.extend_from_slice(&rest.bytes().await.unwrap());
    assert_eq!(md5_hex(&got), md5_hex(&data));
}

#[tokio::test]
async fn stall_fault_stops_sending_but_keeps_connection_open() {
    let g = FakeGlance::start().await;
    let c = client();
    let data = random_bytes(1 << 20, 41);
    let id = g.add_image(ImageSpec::new("s", ImageData::Bytes(Bytes::from(data))));
    g.set_faults(Faults {
        stall_at: Some(1000),
        ..Default::default()
    });
    let mut resp = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .send()
        .await
        .unwrap();
    let mut got = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), resp.chunk()).await {
            Ok(Ok(Some(chunk))) => got += chunk.len(),
            Ok(other) => panic!("expected a stall, got {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(got, 1000);
}

#[tokio::test]
async fn injected_upload_and_create_failures() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = create_raw(&g, &c).await;
    g.set_faults(Faults {
        fail_uploads_with: Some(503),
        fail_creates_with: Some(413),
        ..Default::default()
    });
    assert_eq!(
        upload(&g, &c, &id, vec![5u8; 1000]).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(g.image(&id).unwrap()["status"], "queued");
    let resp = c
        .post(format!("{}/v2/images", g.url))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(g.images().len(), 1);
    g.set_faults(Faults::default());
    assert_eq!(
        upload(&g, &c, &id, vec![5u8; 1000]).await.status(),
        StatusCode::NO_CONTENT
    );

    // The answer is lost behind a 409, but the upload went through.
    let id = create_raw(&g, &c).await;
    g.set_faults(Faults {
        answer_uploads_with: Some(409),
        ..Default::default()
    });
    assert_eq!(
        upload(&g, &c, &id, vec![6u8; 1000]).await.status(),
        StatusCode::CONFLICT
    );
    let img = g.image(&id).unwrap();
    assert_eq!(img["status"], "active");
    assert_eq!(img["checksum"], md5_hex(&[6u8; 1000]));
}

#[tokio::test]
async fn a_corrupting_store_makes_the_image_active_with_the_digests_of_what_it_kept() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = create_raw(&g, &c).await;
    g.set_faults(Faults {
        corrupt_uploads: true,
        ..Default::default()
    });
    let sent = random_bytes(5000, 4);
    assert_eq!(
        upload(&g, &c, &id, sent.clone()).await.status(),
        StatusCode::NO_CONTENT
    );
    let mut kept = sent.clone();
    kept[0] ^= 0xFF;
    let img = g.image(&id).unwrap();
    assert_eq!(img["status"], "active");
    assert_eq!(img["checksum"], md5_hex(&kept));
    assert_eq!(img["os_hash_value"], sha512_hex(&kept));
    assert_eq!(g.image_data(&id).unwrap(), kept);
}

#[tokio::test]
async fn list_follows_next_links_across_pages() {
    let g = FakeGlance::start().await;
    let c = client();
    // Created within the same second: order must still be newest first.
    let made: Vec<String> = (0..7)
        .map(|i| {
            g.add_image(ImageSpec::new(
                format!("img{i}"),
                ImageData::Bytes(Bytes::new()),
            ))
        })
        .collect();
    let mut expected = made.clone();
    expected.reverse();

    let (status, page) = list(&g, &c, "/v2/images?limit=3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["first"], "/v2/images?limit=3");
    assert_eq!(page["schema"], "/v2/schemas/images");
    assert_eq!(
        page["next"],
        format!("/v2/images?limit=3&marker={}", expected[2])
    );
    let mut seen = ids(&page);
    let mut next = page["next"].as_str().map(str::to_owned);
    let mut pages = 1;
    while let Some(n) = next {
        let (status, page) = list(&g, &c, &n).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["first"], "/v2/images?limit=3");
        seen.extend(ids(&page));
        next = page["next"].as_str().map(str::to_owned);
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);

    // A full last page still carries `next`, which then yields an empty page without one.
    g.add_image(ImageSpec::new("img7", ImageData::Bytes(Bytes::new())));
    g.add_image(ImageSpec::new("img8", ImageData::Bytes(Bytes::new())));
    let (_, p1) = list(&g, &c, "/v2/images?limit=3").await;
    let (_, p2) = list(&g, &c, p1["next"].as_str().unwrap()).await;
    let (_, p3) = list(&g, &c, p2["next"].as_str().unwrap()).await;
    assert_eq!(ids(&p3).len(), 3);
    let (_, p4) = list(&g, &c, p3["next"].as_str().unwrap()).await;
    assert!(ids(&p4).is_empty());
    assert!(p4.get("next").is_none());

    // Default limit is 25; no next when fewer rows.
    let (_, all) = list(&g, &c, "/v2/images").await;
    assert_eq!(ids(&all).len(), 9);
    assert_eq!(all["first"], "/v2/images");
    assert!(all.get("next").is_none());

    // A marker that does not exist (or was deleted) is 400.
    let (status, _) = list(
        &g,
        &c,
        "/v2/images?marker=00000000-0000-0000-0000-000000000000",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = list(&g, &c, "/v2/images?limit=-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = list(&g, &c, "/v2/images?limit=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Ascending sort and the link encoding of the query.
    let (_, asc) = list(&g, &c, "/v2/images?sort=created_at:asc&limit=2").await;
    assert_eq!(ids(&asc), made[..2].to_vec());
    assert_eq!(asc["first"], "/v2/images?sort=created_at%3Aasc&limit=2");
    assert_eq!(
        asc["next"],
        format!(
            "/v2/images?sort=created_at%3Aasc&limit=2&marker={}",
            made[1]
        )
    );
    let (_, named) = list(&g, &c, "/v2/images?sort_key=name&sort_dir=asc&limit=1").await;
    assert_eq!(ids(&named), vec![made[0].clone()]);
}

#[tokio::test]
async fn hidden_images_listed_only_with_os_hidden_true() {
    let g = FakeGlance::start().await;
    let c = client();
    let visible = g.add_image(ImageSpec::new("visible", ImageData::Bytes(Bytes::new())));
    let hidden = g.add_image(ImageSpec {
        os_hidden: true,
        ..ImageSpec::new("hidden", ImageData::Bytes(Bytes::new()))
    });
    let (_, page) = list(&g, &c, "/v2/images").await;
    assert_eq!(ids(&page), vec![visible.clone()]);
    // Even an explicit id filter does not reveal it.
    let (_, page) = list(&g, &c, &format!("/v2/images?id=in:{hidden}")).await;
    assert!(ids(&page).is_empty());
    let (_, page) = list(&g, &c, "/v2/images?os_hidden=true").await;
    assert_eq!(ids(&page), vec![hidden.clone()]);
    assert_eq!(page["first"], "/v2/images?os_hidden=true");
    let (status, _) = list(&g, &c, "/v2/images?os_hidden=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // GET by id works regardless.
    assert_eq!(show(&g, &c, &hidden).await["os_hidden"], true);
}

#[tokio::test]
async fn list_filters_match_glance_semantics() {
    let g = FakeGlance::start().await;
    let c = client();
    let empty = || ImageData::Bytes(Bytes::new());
    let a = g.add_image(ImageSpec {
        tags: vec!["t1".into(), "blue".into()],
        properties: [("my_prop".to_owned(), "hello".to_owned())].into(),
        ..ImageSpec::new("alpha", empty())
    });
    let b = g.add_image(ImageSpec {
        status: Some("queued".into()),
        tags: vec!["t1".into()],
        ..ImageSpec::new("beta", empty())
    });
    let community_mine = g.add_image(ImageSpec {
        visibility: "community".into(),
        ..ImageSpec::new("c-mine", empty())
    });
    let community_other = g.add_image(ImageSpec {
        visibility: "community".into(),
        owner: Some("other".into()),
        ..ImageSpec::new("c-other", empty())
    });
    let public = g.add_image(ImageSpec {
        visibility: "public".into(),
        ..ImageSpec::new("pub", empty())
    });
    let killed = g.add_image(ImageSpec {
        status: Some("killed".into()),
        ..ImageSpec::new("dead", empty())
    });

    let q = |query: &'static str| {
        let g = &g;
        let c = &c;
        async move {
            let (status, page) = list(g, c, query).await;
            assert_eq!(status, StatusCode::OK, "{query}");
            let mut v = ids(&page);
            v.sort();
            v
        }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    // Default: community images of other projects and killed images are not listed.
    assert_eq!(
        q("/v2/images").await,
        sorted(vec![
            a.clone(),
            b.clone(),
            community_mine.clone(),
            public.clone()
        ])
    );
    assert_eq!(
        q("/v2/images?visibility=all").await,
        sorted(vec![
            a.clone(),
            b.clone(),
            community_mine.clone(),
            community_other.clone(),
            public.clone()
        ])
    );
    assert_eq!(
        q("/v2/images?visibility=community").await,
        sorted(vec![community_mine.clone(), community_other])
    );
    assert_eq!(q("/v2/images?visibility=public").await, vec![public]);
    assert_eq!(q("/v2/images?name=alpha").await, vec![a.clone()]);
    assert_eq!(q("/v2/images?status=queued").await, vec![b.clone()]);
    assert_eq!(
        q("/v2/images?status=in:queued,active&name=in:alpha,beta").await,
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(
        q("/v2/images?tag=t1").await,
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(q("/v2/images?tag=t1&tag=blue").await, vec![a.clone()]);
    assert_eq!(q("/v2/images?my_prop=hello").await, vec![a.clone()]);
    // Unknown query keys are property filters.
    assert!(q("/v2/images?fields=id").await.is_empty());
    assert!(q("/v2/images?visibility=").await.is_empty());
    assert!(q("/v2/images?status=killed").await.is_empty());
    assert!(g.image(&killed).is_some());
    let (status, _) = list(&g, &c, "/v2/images?visibility=everything").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = list(&g, &c, "/v2/images?sort_key=owner").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = list(&g, &c, "/v2/images?name=weird:name").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a colon in a name filter is read as an operator"
    );
    // Repeated tags collapse to the last one in the links (as Glance's dict(params) does).
    let (_, page) = list(&g, &c, "/v2/images?tag=t1&tag=blue").await;
    assert_eq!(page["first"], "/v2/images?tag=blue");
    let (_, page) = list(
        &g,
        &c,
        "/v2/images?created_at=gte:2000-01-01T00:00:00Z&limit=1",
    )
    .await;
    assert_eq!(
        page["first"],
        "/v2/images?created_at=gte%3A2000-01-01T00%3A00%3A00Z&limit=1"
    );
    assert_eq!(ids(&page).len(), 1);
    assert!(
        q("/v2/images?created_at=lt:2000-01-01T00:00:00Z")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn patch_replace_missing_property_is_409() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = create(
        &g,
        &c,
        json!({"name": "p", "disk_format": "raw", "container_format": "bare", "my_prop": "hello"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = g.image(&id).unwrap();
    let resp = patch(
        &g,
        &c,
        &id,
        json!([{"op": "replace", "path": "/nope", "value": "x"}]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let err = json_of(resp).await;
    assert_eq!(err["code"], "409 Conflict");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("Property nope does not exist.")
    );
    let resp = patch(&g, &c, &id, json!([{"op": "remove", "path": "/nope"}])).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // Atomic: the valid first op is not applied either.
    let resp = patch(
        &g,
        &c,
        &id,
        json!([{"op": "add", "path": "/atomic_test", "value": "1"}, {"op": "remove", "path": "/does_not_exist"}]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(g.image(&id).unwrap(), before);

    // add = upsert, replace of an existing one, remove, base props, tags as a set.
    let resp = patch(
        &g,
        &c,
        &id,
        json!([
            {"op": "add", "path": "/new_prop", "value": "v1"},
            {"op": "add", "path": "/new_prop", "value": "v2"},
            {"op": "replace", "path": "/my_prop", "value": "world"},
            {"op": "replace", "path": "/protected", "value": true},
            {"op": "replace", "path": "/name", "value": null},
            {"op": "replace", "path": "/tags", "value": ["a", "b", "a"]},
            {"op": "add", "path": "/with~1slash~0tilde", "value": "esc"}
        ]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let img = json_of(resp).await;
    assert_eq!(img["new_prop"], "v2");
    assert_eq!(img["my_prop"], "world");
    assert_eq!(img["protected"], true);
    assert_eq!(img["name"], Value::Null);
    assert_eq!(img["tags"], json!(["a", "b"]));
    assert_eq!(img["with/slash~tilde"], "esc");
    assert_eq!(g.image(&id).unwrap(), img);
    let resp = patch(
        &g,
        &c,
        &id,
        json!([{"op": "remove", "path": "/with~1slash~0tilde"}]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(json_of(resp).await.get("with/slash~tilde").is_none());
}

#[tokio::test]
async fn patch_rejections_match_glance() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = g.add_image(ImageSpec::new(
        "active",
        ImageData::Bytes(Bytes::from_static(b"data")),
    ));
    for path in [
        "/status",
        "/checksum",
        "/size",
        "/id",
        "/os_hash_value",
        "/os_hash_algo",
        "/virtual_size",
        "/created_at",
        "/self",
    ] {
        let resp = patch(
            &g,
            &c,
            &id,
            json!([{"op": "replace", "path": path, "value": "x"}]),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let cases = [
        (
            json!([{"op": "add", "path": "/os_glance_foo", "value": "x"}]),
            StatusCode::FORBIDDEN,
        ),
        (
            json!([{"op": "replace", "path": "/stores", "value": "x"}]),
            StatusCode::CONFLICT,
        ),
        (
            json!([{"op": "add", "path": "/num_prop", "value": 5}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "replace", "path": "/min_ram", "value": -1}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "replace", "path": "/disk_format", "value": "raw"}]),
            StatusCode::FORBIDDEN,
        ),
        (
            json!([{"op": "remove", "path": "/name"}]),
            StatusCode::FORBIDDEN,
        ),
        (
            json!([{"op": "move", "path": "/name"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "add", "path": "/tags/-", "value": "x"}]),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"op": "add"}), StatusCode::BAD_REQUEST),
    ];
    for (ops, want) in cases {
        let resp = patch(&g, &c, &id, ops.clone()).await;
        assert_eq!(resp.status(), want, "{ops}");
    }
    let resp = c
        .patch(format!("{}/v2/images/{id}", g.url))
        .header("content-type", "application/json")
        .body(r#"[{"op":"add","path":"/x","value":"y"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        resp.headers()["accept-patch"],
        "application/openstack-images-v2.0-json-patch, application/openstack-images-v2.1-json-patch"
    );
    let missing = patch(&g, &c, "00000000-0000-0000-0000-000000000000", json!([])).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // Admin may change the owner; visibility/os_hidden are plain replaces.
    let resp = patch(
        &g,
        &c,
        &id,
        json!([{"op": "replace", "path": "/owner", "value": "someproject"},
               {"op": "replace", "path": "/visibility", "value": "public"}]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(resp).await["owner"], "someproject");
}

#[tokio::test]
async fn delete_of_protected_image_is_403() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = g.add_image(ImageSpec {
        protected: true,
        ..ImageSpec::new("p", ImageData::Bytes(Bytes::from_static(b"x")))
    });
    let resp = c
        .delete(format!("{}/v2/images/{id}", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(g.image(&id).is_some());
    assert_eq!(
        patch(
            &g,
            &c,
            &id,
            json!([{"op": "replace", "path": "/protected", "value": false}])
        )
        .await
        .status(),
        StatusCode::OK
    );
    let resp = c
        .delete(format!("{}/v2/images/{id}", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(g.image(&id).is_none());
}

#[tokio::test]
async fn tags_and_deactivation_endpoints() {
    let g = FakeGlance::start().await;
    let c = client();
    let data = Bytes::from_static(b"payload");
    let id = g.add_image(ImageSpec {
        tags: vec!["t1".into()],
        ..ImageSpec::new("x", ImageData::Bytes(data.clone()))
    });
    let base = format!("{}/v2/images/{id}", g.url);
    for _ in 0..2 {
        assert_eq!(
            c.put(format!("{base}/tags/foo"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(g.image(&id).unwrap()["tags"], json!(["t1", "foo"]));
    assert_eq!(
        c.delete(format!("{base}/tags/t1"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.delete(format!("{base}/tags/t1"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    for _ in 0..2 {
        let resp = c
            .post(format!("{base}/actions/deactivate"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(g.image(&id).unwrap()["status"], "deactivated");
    // fakeauth is admin: data still downloadable; uploads conflict.
    let dl = c.get(format!("{base}/file")).send().await.unwrap();
    assert_eq!(dl.status(), StatusCode::OK);
    assert_eq!(dl.bytes().await.unwrap(), data);
    assert_eq!(
        upload(&g, &c, &id, vec![1]).await.status(),
        StatusCode::CONFLICT
    );
    for _ in 0..2 {
        let resp = c
            .post(format!("{base}/actions/reactivate"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(g.image(&id).unwrap()["status"], "active");

    let queued = g.add_image(ImageSpec {
        status: Some("queued".into()),
        ..ImageSpec::new("q", ImageData::Bytes(Bytes::new()))
    });
    let resp = c
        .post(format!("{}/v2/images/{queued}/actions/deactivate", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn error_bodies_follow_the_accept_header_and_carry_request_ids() {
    let g = FakeGlance::start().await;
    let c = client();
    let missing = "00000000-0000-0000-0000-000000000000";
    let resp = c
        .get(format!("{}/v2/images/{missing}", g.url))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(
        resp.headers()["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req-")
    );
    let body = json_of(resp).await;
    assert_eq!(
        body,
        json!({"message": format!("No image found with ID {missing}<br /><br />\n\n\n"),
               "code": "404 Not Found", "title": "Not Found"})
    );
    // reqwest's default Accept (*/*) gets WebOb's HTML page, as from real Glance.
    let resp = c
        .get(format!("{}/v2/images/{missing}", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/html; charset=UTF-8");
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("No image found with ID")
    );
    // No Accept at all: plain text.
    let raw = raw_request(
        &g,
        &format!("GET /v2/images/{missing} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("content-type: text/plain; charset=utf-8")
    );
    assert!(
        raw.to_ascii_lowercase()
            .contains("x-openstack-request-id: req-")
    );

    let ids: std::collections::HashSet<String> = futures_util::future::join_all(
        (0..5).map(|_| c.get(format!("{}/v2/images", g.url)).send()),
    )
    .await
    .into_iter()
    .map(|r| {
        r.unwrap().headers()["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    })
    .collect();
    assert_eq!(ids.len(), 5, "request ids are unique");

    let resp = c.get(format!("{}/", g.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::MULTIPLE_CHOICES);
    let versions = json_of(resp).await;
    assert_eq!(versions["versions"][0]["id"], "v2.18");
}

#[tokio::test]
async fn request_log_counts_writes_and_bytes_served() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = g.add_image(ImageSpec::new(
        "x",
        ImageData::Bytes(Bytes::from_static(b"0123456789")),
    ));
    let _ = c
        .get(format!("{}/v2/images?limit=5", g.url))
        .send()
        .await
        .unwrap();
    let _ = c
        .get(format!("{}/v2/images/{id}/file", g.url))
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    let _ = patch(
        &g,
        &c,
        &id,
        json!([{"op": "add", "path": "/k", "value": "v"}]),
    )
    .await;
    let _ = c
        .put(format!("{}/v2/images/{id}/tags/t", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        g.requests(),
        vec![
            ("GET".to_owned(), "/v2/images?limit=5".to_owned()),
            ("GET".to_owned(), format!("/v2/images/{id}/file")),
            ("PATCH".to_owned(), format!("/v2/images/{id}")),
            ("PUT".to_owned(), format!("/v2/images/{id}/tags/t")),
        ]
    );
    assert_eq!(g.write_requests(), 2);
    assert_eq!(
        g.write_request_log(),
        vec![
            format!("PATCH /v2/images/{id} (200)"),
            format!("PUT /v2/images/{id}/tags/t (204)"),
        ]
    );
    assert_eq!(
        g.request_log()[1],
        format!("GET /v2/images/{id}/file (206)")
    );
    assert_eq!(g.bytes_served(), 4);
    g.clear_requests();
    assert!(g.requests().is_empty());
}

#[tokio::test]
async fn stuck_saving_image_rejects_uploads_like_a_crashed_worker() {
    let g = FakeGlance::start().await;
    let c = client();
    let id = g.add_image(ImageSpec {
        status: Some("queued".into()),
        ..ImageSpec::new("s", ImageData::Bytes(Bytes::new()))
    });
    g.set_status(&id, "saving");
    assert_eq!(
        upload(&g, &c, &id, vec![1]).await.status(),
        StatusCode::CONFLICT
    );
    let del = c
        .delete(format!("{}/v2/images/{id}", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
}

/// Walks every page of `query` (limit 3) and returns the ids in listing order.
async fn walk(g: &FakeGlance, c: &reqwest::Client, query: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut next = Some(format!("/v2/images?{query}&limit=3"));
    while let Some(path) = next.take() {
        let (status, page) = list(g, c, &path).await;
        assert_eq!(status, StatusCode::OK);
        all.extend(ids(&page));
        next = page["next"].as_str().map(str::to_owned);
    }
    all
}

#[tokio::test]
async fn a_cached_listing_pages_exactly_as_an_uncached_one() {
    let plain = FakeGlance::start().await;
    let cached = FakeGlance::start_with(FakeOptions {
        cache_listings: true,
        ..Default::default()
    })
    .await;
    let c = client();
    for g in [&plain, &cached] {
        for name in ["b", "a", "c", "a", "e", "d", "b"] {
            create(g, &c, json!({"name": name})).await;
        }
    }
    let order = |g: &FakeGlance, ids: &[String]| -> Vec<String> {
        ids.iter()
            .map(|id| g.image(id).unwrap()["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for query in [
        "visibility=all",
        "sort=name:asc",
        "sort_key=name&sort_dir=desc",
    ] {
        let a = walk(&plain, &c, query).await;
        let b = walk(&cached, &c, query).await;
        assert_eq!(a.len(), 7);
        assert_eq!(order(&plain, &a), order(&cached, &b), "{query}");
    }
    // A write is seen by the next listing.
    create(&cached, &c, json!({"name": "0-new"})).await;
    let b = walk(&cached, &c, "sort=name:asc").await;
    assert_eq!(order(&cached, &b)[0], "0-new");
}
