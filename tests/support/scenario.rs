//! The acceptance scenario of `glance-sync run`: a source cloud seeded with every kind of image an
//! operator has (raw and qcow2, tags, non-ASCII properties, protected, hidden, community, two images
//! with one name, a queued one, a deactivated one, a kernel referenced by another image), and the
//! checks that a target holds exact copies of the eligible ones.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::glance_api::{Api, image_body, qcow2_bytes, random_bytes};

pub struct Seeded {
    /// Source images that must be copied: id → name.
    pub eligible: BTreeMap<String, String>,
    /// Source images that must be reported as skipped.
    pub skipped: BTreeSet<String>,
    pub kernel_id: String,
    pub vm_id: String,
}

const KIB: usize = 1024;

pub async fn seed_source(api: &Api) -> Seeded {
    let mut eligible = BTreeMap::new();
    let mut skipped = BTreeSet::new();
    let mut add = |img: &Value, ok: bool| {
        let id = img["id"].as_str().unwrap().to_string();
        if ok {
            eligible.insert(id, img["name"].as_str().unwrap_or("").to_string());
        } else {
            skipped.insert(id);
        }
    };

    let img = api
        .create_with_data(
            image_body(
                "ubuntu-24.04",
                "raw",
                json!({"visibility": "public", "tags": ["golden", "linux"], "min_disk": 2,
                       "min_ram": 512, "os_distro": "ubuntu",
                       "description": "Ubuntu — Noble Numbat ✓ 日本語 Ünïcødé"}),
            ),
            random_bytes(1536 * KIB, 1),
        )
        .await;
    add(&img, true);
    let img = api
        .create_with_data(
            image_body(
                "cirros-0.6",
                "qcow2",
                json!({"visibility": "public", "hw_disk_bus": "scsi", "tags": ["golden"]}),
            ),
            qcow2_bytes(1024 * KIB, 2),
        )
        .await;
    add(&img, true);
    let img = api
        .create_with_data(
            image_body(
                "windows-2022",
                "raw",
                json!({"visibility": "public", "protected": true, "os_type": "windows"}),
            ),
            random_bytes(1024 * KIB, 3),
        )
        .await;
    add(&img, true);
    let img = api
        .create_with_data(
            image_body(
                "hidden-appliance",
                "raw",
                json!({"os_hidden": true, "visibility": "private"}),
            ),
            random_bytes(512 * KIB, 4),
        )
        .await;
    add(&img, true);
    let img = api
        .create_with_data(
            image_body("community-tool", "raw", json!({"visibility": "community"})),
            random_bytes(512 * KIB, 5),
        )
        .await;
    add(&img, true);
    for seed in [6, 7] {
        let img = api
            .create_with_data(
                image_body("same-name", "raw", json!({"build": format!("b{seed}")})),
                random_bytes(300 * KIB, seed),
            )
            .await;
        add(&img, true);
    }
    let kernel = api
        .create_with_data(
            image_body("vmlinuz-6.8", "raw", json!({"visibility": "public"})),
            random_bytes(128 * KIB, 8),
        )
        .await;
    add(&kernel, true);
    let kernel_id = kernel["id"].as_str().unwrap().to_string();
    let vm = api
        .create_with_data(
            image_body(
                "vm-with-kernel",
                "raw",
                json!({"visibility": "public", "kernel_id": kernel_id}),
            ),
            random_bytes(256 * KIB, 9),
        )
        .await;
    add(&vm, true);
    let vm_id = vm["id"].as_str().unwrap().to_string();

    let queued = api
        .create(image_body("queued-only", "raw", json!({})))
        .await;
    add(&queued, false);
    let old = api
        .create_with_data(
            image_body("deactivated-old", "raw", json!({})),
            random_bytes(200 * KIB, 10),
        )
        .await;
    let old_id = old["id"].as_str().unwrap().to_string();
    api.action(&old_id, "deactivate").await;
    add(&old, false);

    Seeded {
        eligible,
        skipped,
        kernel_id,
        vm_id,
    }
}

/// Keys whose values belong to one cloud: never compared between a source image and its copy.
const CLOUD_LOCAL: &[&str] = &[
    "id",
    "status",
    "created_at",
    "updated_at",
    "self",
    "file",
    "schema",
    "owner",
    "virtual_size",
    "stores",
    "locations",
    "direct_url",
    "kernel_id",
];

/// The image's replicable metadata, as a test sees it: everything but cloud-local keys, reserved
/// `os_glance_*` keys and our provenance marker; tags as a set.
pub fn replicable(img: &Value) -> BTreeMap<String, Value> {
    img.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| {
            !CLOUD_LOCAL.contains(&k.as_str())
                && !k.starts_with("os_glance")
                && !k.starts_with("glance_sync_")
        })
        .map(|(k, v)| {
            let v = if k == "tags" {
                let set: BTreeSet<String> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_string())
                    .collect();
                json!(set)
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// Target images by the source id in their provenance marker.
pub async fn copies_by_source(target: &Api) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for img in target.list_all().await {
        if let Some(src) = img["glance_sync_source_id"].as_str() {
            out.entry(src.to_string()).or_default().push(img.clone());
        }
    }
    out
}

/// Every eligible source image has exactly one copy on `target`: active, same size, checksum and
/// os_hash_value, same metadata apart from the marker, kernel reference remapped. Returns the copies
/// by source id.
pub async fn assert_exact_copies(
    source: &Api,
    target: &Api,
    seeded: &Seeded,
    source_cloud: &str,
) -> BTreeMap<String, Value> {
    let copies = copies_by_source(target).await;
    let mut out = BTreeMap::new();
    for (id, name) in &seeded.eligible {
        let src = source.get(id).await;
        let list = copies
            .get(id)
            .unwrap_or_else(|| panic!("no copy of '{name}' ({id}) on the target"));
        assert_eq!(list.len(), 1, "'{name}' copied {} times", list.len());
        let copy = &list[0];
        assert_eq!(copy["status"], "active", "'{name}'");
        for key in ["size", "checksum", "os_hash_algo", "os_hash_value"] {
            assert_eq!(copy[key], src[key], "'{name}': {key}");
            assert!(!copy[key].is_null(), "'{name}': {key} is null");
        }
        assert_eq!(
            replicable(copy),
            replicable(&src),
            "'{name}': metadata differs apart from the marker"
        );
        assert_eq!(copy["glance_sync_source_cloud"], source_cloud);
        out.insert(id.clone(), copy.clone());
    }
    for id in &seeded.skipped {
        assert!(!copies.contains_key(id), "skipped image {id} was copied");
    }
    let kernel_copy = &out[&seeded.kernel_id];
    assert_eq!(
        out[&seeded.vm_id]["kernel_id"], kernel_copy["id"],
        "kernel_id must point at the kernel's copy on the target"
    );
    out
}
