//! The image model: what Glance v2 says about an image, which of its keys are never replicated,
//! and how two images' contents are compared. What a copy's metadata should be is in
//! [`crate::metadata`].
//!
//! Pure data and pure functions: no I/O. The Glance client produces [`Image`]s, the planner compares them.

use std::collections::BTreeMap;

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

/// A project an image is shared with (`visibility = shared`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub project: String,
    /// pending | accepted | rejected
    pub status: String,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metadata::current_metadata;

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
}
