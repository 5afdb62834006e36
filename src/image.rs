//! The image model: what Glance v2 says about an image, what of it is replicated, and how two images'
//! contents and metadata are compared.
//!
//! Pure data and pure functions: no I/O. The Glance client produces [`Image`]s, the planner compares them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Property naming the cloud (as named in our config) an image was copied from.
pub const MARKER_SOURCE_CLOUD: &str = "glance_sync_source_cloud";
/// Property naming the source image id an image was copied from.
pub const MARKER_SOURCE_ID: &str = "glance_sync_source_id";

/// An image as Glance v2 returns it. Base properties are fields; everything else (custom properties
/// and server-owned extras such as `self`, `file`, `virtual_size`, `stores`) lands in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub status: String,
    #[serde(default = "default_visibility")]
    pub visibility: String,
    #[serde(default)]
    pub protected: bool,
    #[serde(default)]
    pub os_hidden: bool,
    #[serde(default)]
    pub disk_format: Option<String>,
    #[serde(default)]
    pub container_format: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    #[serde(default)]
    pub os_hash_value: Option<String>,
    #[serde(default)]
    pub min_disk: u64,
    #[serde(default)]
    pub min_ram: u64,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn default_visibility() -> String {
    "shared".to_string()
}

impl Image {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    pub fn is_deactivated(&self) -> bool {
        self.status == "deactivated"
    }

    /// An image whose data upload finished: the only kind that can count as a copy.
    pub fn is_established(&self) -> bool {
        self.is_active() || self.is_deactivated()
    }

    /// Custom (string-valued) properties, as Glance stores them.
    pub fn properties(&self) -> BTreeMap<String, String> {
        self.extra
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
            .collect()
    }

    pub fn property(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }

    /// The provenance marker, if this image claims to be a copy made by glance-sync.
    pub fn marker(&self) -> Option<(&str, &str)> {
        Some((
            self.property(MARKER_SOURCE_CLOUD)?,
            self.property(MARKER_SOURCE_ID)?,
        ))
    }

    /// The digest that names this image's content, preferring the multihash.
    pub fn content_digest(&self) -> Option<String> {
        match (&self.os_hash_algo, &self.os_hash_value, &self.checksum) {
            (Some(algo), Some(value), _) => Some(format!("{algo}:{value}")),
            (_, _, Some(md5)) => Some(format!("md5:{md5}")),
            _ => None,
        }
    }

    /// `name` plus content digest, as recorded in state and shown to operators.
    pub fn identity(&self) -> String {
        format!(
            "{}@{}",
            self.name.as_deref().unwrap_or(""),
            self.content_digest().unwrap_or_else(|| "-".into())
        )
    }
}

/// Whether two images hold the same bytes, judged from what their servers computed.
///
/// The multihash is compared when both sides used the same algorithm; otherwise the MD5
/// `checksum`. Without a digest in common the answer is "no": never assume equality.
pub fn same_content(a: &Image, b: &Image) -> bool {
    content_verdict(a, b) == Some(true)
}

/// Whether two images provably hold different bytes: their sizes, or a digest both have in
/// common, differ. Stricter than `!same_content`, which also says "not the same" when nothing can
/// be compared; this one answers "different" only on evidence, as it decides deletions.
pub fn provably_different_content(a: &Image, b: &Image) -> bool {
    content_verdict(a, b) == Some(false)
}

/// Same bytes or not, as far as the sizes and a digest both images have tell; None when they
/// have no digest in common.
fn content_verdict(a: &Image, b: &Image) -> Option<bool> {
    if a.size.is_some() && b.size.is_some() && a.size != b.size {
        return Some(false);
    }
    if let (Some(aa), Some(av), Some(ba), Some(bv)) = (
        &a.os_hash_algo,
        &a.os_hash_value,
        &b.os_hash_algo,
        &b.os_hash_value,
    ) && aa == ba
    {
        return Some(av.eq_ignore_ascii_case(bv));
    }
    match (&a.checksum, &b.checksum) {
        (Some(x), Some(y)) => Some(x.eq_ignore_ascii_case(y)),
        _ => None,
    }
}

/// Same name and same content: the identity the diff is made on.
pub fn same_identity(a: &Image, b: &Image) -> bool {
    a.name == b.name && same_content(a, b)
}

/// Keys never copied: server-owned, reserved, or meaningful only inside the source cloud.
/// (`kernel_id`/`ramdisk_id` are not here: they are remapped, see [`desired_metadata`].)
const EXCLUDED_KEYS: &[&str] = &[
    // server-owned or read-only
    "self",
    "file",
    "schema",
    "updated_at",
    "virtual_size",
    "stores",
    "locations",
    "direct_url",
    "location",
    "deleted",
    "deleted_at",
    // cloud-local references (glance-api.md §1 and quirk 19)
    "owner",
    "instance_uuid",
    "base_image_ref",
    "image_location",
    "image_state",
    "user_id",
    "owner_id",
    "block_device_mapping",
    "bdm_v2",
    "root_device_name",
    "boot_roles",
    // a signature refers to a certificate in the source cloud's Barbican: the target would
    // refuse the upload (quirk 20)
    "img_signature",
    "img_signature_hash_method",
    "img_signature_key_type",
    "img_signature_certificate_uuid",
];

/// Whether a property key is never replicated (and never compared).
pub fn is_excluded_key(key: &str) -> bool {
    EXCLUDED_KEYS.contains(&key)
        || key.starts_with("os_glance")
        || key.starts_with("cinder_encryption_key_")
}

/// Glance's default `image_property_quota`: custom properties per image, `os_glance_*` not
/// counted. Our marker's two properties are left out of a copy that would exceed it.
pub const PROPERTY_QUOTA: usize = 128;

/// Properties whose value is the id of another image in the same cloud.
pub const IMAGE_REFERENCE_KEYS: &[&str] = &["kernel_id", "ramdisk_id"];

/// The metadata glance-sync keeps equal between a source image and its copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    pub name: Option<String>,
    pub visibility: String,
    pub protected: bool,
    pub os_hidden: bool,
    pub min_disk: u64,
    pub min_ram: u64,
    pub tags: BTreeSet<String>,
    pub properties: BTreeMap<String, String>,
}

/// The metadata an image has now, as far as replication is concerned.
pub fn current_metadata(image: &Image) -> Metadata {
    Metadata {
        name: image.name.clone(),
        visibility: image.visibility.clone(),
        protected: image.protected,
        os_hidden: image.os_hidden,
        min_disk: image.min_disk,
        min_ram: image.min_ram,
        tags: image.tags.iter().cloned().collect(),
        properties: image
            .properties()
            .into_iter()
            .filter(|(k, _)| !is_excluded_key(k))
            .collect(),
    }
}

/// The metadata a copy of `source` must carry on a target: the source's replicable metadata, the
/// provenance marker, and image references remapped to the target's ids. `copy_id_of` maps a
/// source image id to the id of its copy on this target; a reference without a copy is dropped,
/// because a source id means nothing (or something else) on another cloud.
///
/// The marker only informs (the ledger decides what is ours), so it is left out when the copy
/// would otherwise carry more properties than Glance allows by default: an image with 127
/// properties is still copied.
pub fn desired_metadata(
    source: &Image,
    source_cloud: &str,
    copy_id_of: impl Fn(&str) -> Option<String>,
) -> Metadata {
    let mut meta = current_metadata(source);
    for key in IMAGE_REFERENCE_KEYS {
        if let Some(source_ref) = meta.properties.remove(*key)
            && let Some(target_ref) = copy_id_of(&source_ref)
        {
            meta.properties.insert((*key).to_string(), target_ref);
        }
    }
    let own = meta
        .properties
        .keys()
        .filter(|k| *k != MARKER_SOURCE_CLOUD && *k != MARKER_SOURCE_ID)
        .count();
    if own + 2 <= PROPERTY_QUOTA {
        meta.properties
            .insert(MARKER_SOURCE_CLOUD.into(), source_cloud.into());
        meta.properties
            .insert(MARKER_SOURCE_ID.into(), source.id.clone());
    } else {
        meta.properties.remove(MARKER_SOURCE_CLOUD);
        meta.properties.remove(MARKER_SOURCE_ID);
    }
    meta
}

/// One operation of a Glance v2.1 JSON patch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchOp {
    pub op: &'static str,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

impl PatchOp {
    fn set(key: &str, value: Value) -> PatchOp {
        // v2.1 `add` is an upsert; `replace` on a missing custom property is a 409 (quirk 14).
        PatchOp {
            op: "add",
            path: pointer(key),
            value: Some(value),
        }
    }
    fn replace(key: &str, value: Value) -> PatchOp {
        PatchOp {
            op: "replace",
            path: pointer(key),
            value: Some(value),
        }
    }
    fn remove(key: &str) -> PatchOp {
        PatchOp {
            op: "remove",
            path: pointer(key),
            value: None,
        }
    }
}

/// A JSON pointer to a top-level key (RFC 6901 escaping: `~` → `~0`, `/` → `~1`).
fn pointer(key: &str) -> String {
    format!("/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// The JSON patch that turns `current` into `desired`, in one request (the whole patch is atomic
/// on the server). `protected` goes last, so a patch that fails never leaves a half-updated image
/// that can no longer be deleted.
pub fn metadata_patch(current: &Metadata, desired: &Metadata) -> Vec<PatchOp> {
    let mut ops = Vec::new();
    if current.name != desired.name {
        ops.push(PatchOp::replace("name", serde_json::json!(desired.name)));
    }
    if current.visibility != desired.visibility {
        ops.push(PatchOp::replace(
            "visibility",
            Value::from(desired.visibility.clone()),
        ));
    }
    if current.os_hidden != desired.os_hidden {
        ops.push(PatchOp::replace(
            "os_hidden",
            Value::from(desired.os_hidden),
        ));
    }
    if current.min_disk != desired.min_disk {
        ops.push(PatchOp::replace("min_disk", Value::from(desired.min_disk)));
    }
    if current.min_ram != desired.min_ram {
        ops.push(PatchOp::replace("min_ram", Value::from(desired.min_ram)));
    }
    if current.tags != desired.tags {
        ops.push(PatchOp::replace(
            "tags",
            Value::from(desired.tags.iter().cloned().collect::<Vec<_>>()),
        ));
    }
    for (key, value) in &desired.properties {
        if current.properties.get(key) != Some(value) {
            ops.push(PatchOp::set(key, Value::from(value.clone())));
        }
    }
    for key in current.properties.keys() {
        if !desired.properties.contains_key(key) {
            ops.push(PatchOp::remove(key));
        }
    }
    if current.protected != desired.protected {
        ops.push(PatchOp::replace(
            "protected",
            Value::from(desired.protected),
        ));
    }
    ops
}

/// Human-readable names of what a patch changes, for plans and logs: the keys as written, not as
/// JSON pointers (`a/b`, not `a~1b`).
pub fn describe_patch(ops: &[PatchOp]) -> String {
    ops.iter()
        .map(|op| {
            let key = op
                .path
                .trim_start_matches('/')
                .replace("~1", "/")
                .replace("~0", "~");
            match op.op {
                "remove" => format!("-{key}"),
                _ => key.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The body of `POST /v2/images` for a copy with the client-chosen `id`. `protected` is always false
/// here: it is set after verification, so a failed copy can still be deleted.
pub fn create_body(id: &str, source: &Image, meta: &Metadata) -> Value {
    let mut body = serde_json::Map::new();
    body.insert("id".into(), Value::from(id));
    body.insert("name".into(), serde_json::json!(meta.name));
    body.insert("disk_format".into(), serde_json::json!(source.disk_format));
    body.insert(
        "container_format".into(),
        serde_json::json!(source.container_format),
    );
    body.insert("visibility".into(), Value::from(meta.visibility.clone()));
    body.insert("os_hidden".into(), Value::from(meta.os_hidden));
    body.insert("min_disk".into(), Value::from(meta.min_disk));
    body.insert("min_ram".into(), Value::from(meta.min_ram));
    body.insert(
        "tags".into(),
        Value::from(meta.tags.iter().cloned().collect::<Vec<_>>()),
    );
    for (k, v) in &meta.properties {
        body.insert(k.clone(), Value::from(v.clone()));
    }
    Value::Object(body)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal active image for tests.
    pub fn image(id: &str, name: &str, md5: &str) -> Image {
        Image {
            id: id.into(),
            name: Some(name.into()),
            status: "active".into(),
            visibility: "public".into(),
            protected: false,
            os_hidden: false,
            disk_format: Some("raw".into()),
            container_format: Some("bare".into()),
            size: Some(1024),
            checksum: Some(md5.into()),
            os_hash_algo: Some("sha512".into()),
            os_hash_value: Some(format!("sha-of-{md5}")),
            min_disk: 0,
            min_ram: 0,
            tags: vec![],
            owner: Some("admin".into()),
            created_at: Some("2026-01-01T00:00:00Z".into()),
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn glance_json_parses_with_custom_properties_flattened() {
        let json = r#"{"my_prop": "héllo", "name": "cirros", "disk_format": "qcow2",
            "container_format": "bare", "visibility": "shared", "size": 4194304, "virtual_size": 67108864,
            "status": "active", "checksum": "abc", "protected": false, "min_ram": 64, "min_disk": 1,
            "owner": "admin", "os_hidden": false, "os_hash_algo": "sha512", "os_hash_value": "def",
            "id": "6b1c", "created_at": "2026-11-27T05:33:39Z", "updated_at": "2026-11-27T05:33:39Z",
            "tags": ["t1"], "self": "/v2/images/6b1c", "file": "/v2/images/6b1c/file",
            "schema": "/v2/schemas/image", "os_glance_importing_to_stores": ""}"#;
        let img: Image = serde_json::from_str(json).unwrap();
        assert_eq!(img.size, Some(4194304));
        let meta = current_metadata(&img);
        assert_eq!(
            meta.properties.keys().collect::<Vec<_>>(),
            vec!["my_prop"],
            "server-owned keys must not count as properties"
        );
        assert_eq!(meta.properties["my_prop"], "héllo");
    }

    #[test]
    fn content_is_compared_by_multihash_when_algorithms_match() {
        let a = image("a", "x", "m1");
        let mut b = image("b", "x", "m1");
        b.os_hash_value = Some("other".into());
        assert!(!same_content(&a, &b), "same md5 but different sha512");
    }

    #[test]
    fn content_falls_back_to_md5_when_algorithms_differ() {
        let a = image("a", "x", "m1");
        let mut b = image("b", "x", "m1");
        b.os_hash_algo = Some("sha256".into());
        b.os_hash_value = Some("unrelated".into());
        assert!(same_content(&a, &b));
        b.checksum = Some("m2".into());
        assert!(!same_content(&a, &b));
    }

    #[test]
    fn images_without_a_common_digest_are_never_equal() {
        let mut a = image("a", "x", "m1");
        let mut b = image("b", "x", "m1");
        a.checksum = None;
        b.checksum = None;
        b.os_hash_algo = Some("sha256".into());
        assert!(!same_content(&a, &b));
    }

    #[test]
    fn desired_metadata_strips_cloud_local_keys_and_remaps_kernel() {
        let mut src = image("src", "vm", "m");
        for (k, v) in [
            ("kernel_id", "k-src"),
            ("ramdisk_id", "r-src"),
            ("instance_uuid", "i"),
            ("os_glance_failed_import", ""),
            ("cinder_encryption_key_id", "x"),
            ("hw_disk_bus", "scsi"),
        ] {
            src.extra.insert(k.into(), Value::from(v));
        }
        let meta = desired_metadata(&src, "prod", |id| (id == "k-src").then(|| "k-tgt".into()));
        let keys: Vec<_> = meta.properties.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "glance_sync_source_cloud",
                "glance_sync_source_id",
                "hw_disk_bus",
                "kernel_id"
            ]
        );
        assert_eq!(meta.properties["kernel_id"], "k-tgt");
    }

    #[test]
    fn patch_upserts_changed_properties_and_removes_dropped_ones() {
        let mut cur = current_metadata(&image("t", "vm", "m"));
        cur.properties.insert("old".into(), "1".into());
        cur.properties.insert("same".into(), "s".into());
        let mut want = cur.clone();
        want.properties.remove("old");
        want.properties.insert("new/key~x".into(), "2".into());
        want.tags.insert("golden".into());
        want.protected = true;
        let ops = metadata_patch(&cur, &want);
        let json = serde_json::to_value(&ops).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"op": "replace", "path": "/tags", "value": ["golden"]},
                {"op": "add", "path": "/new~1key~0x", "value": "2"},
                {"op": "remove", "path": "/old"},
                {"op": "replace", "path": "/protected", "value": true},
            ])
        );
        assert!(metadata_patch(&want, &want).is_empty());
        assert_eq!(
            describe_patch(&ops),
            "tags, new/key~x, -old, protected",
            "keys as written, not JSON-pointer escaped"
        );
    }

    #[test]
    fn a_copy_that_would_exceed_the_property_quota_goes_without_the_marker() {
        let mut src = image("src", "many", "m");
        for i in 0..PROPERTY_QUOTA - 2 {
            src.extra.insert(format!("p{i:03}"), Value::from("v"));
        }
        let meta = desired_metadata(&src, "prod", |_| None);
        assert_eq!(
            meta.properties.len(),
            PROPERTY_QUOTA,
            "126 + the marker fit"
        );
        assert_eq!(meta.properties[MARKER_SOURCE_ID], "src");

        src.extra.insert("p126".into(), Value::from("v"));
        let meta = desired_metadata(&src, "prod", |_| None);
        assert_eq!(meta.properties.len(), PROPERTY_QUOTA - 1);
        assert!(!meta.properties.contains_key(MARKER_SOURCE_ID));
        assert!(!meta.properties.contains_key(MARKER_SOURCE_CLOUD));
    }
}
