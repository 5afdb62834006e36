//! What a copy's metadata should be (its source image's, with the job's rules for that target
//! applied) and the one JSON patch that turns a copy's metadata into it.
//!
//! Pure functions: no I/O. The planner asks here for every copy it creates or checks.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::config::{MetadataRules, OwnerRule};
use crate::image::{Image, MARKER_SOURCE_CLOUD, MARKER_SOURCE_ID, is_excluded_key};

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
    /// The project that must own the copy; `None`: whoever creates it (glance-sync's project).
    pub owner: Option<String>,
    /// Keys whose value a rule of the job decided, not the source image: plans say so.
    #[serde(skip)]
    pub by_rule: BTreeSet<String>,
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
        owner: image.owner.clone(),
        by_rule: BTreeSet::new(),
    }
}

/// The metadata a copy of `source` must carry on a target: the source's replicable metadata with
/// `rules` applied, the provenance marker, and image references remapped to the target's ids.
/// `copy_id_of` maps a source image id to the id of its copy on this target; a reference
/// without a copy is dropped, because a source id means nothing (or something else) on another
/// cloud. Err: why the rules cannot be followed for this image (an owner not in the project map).
///
/// The marker only informs (the ledger decides what is ours), so it is left out when the copy
/// would otherwise carry more properties than Glance allows by default: an image with 127
/// properties is still copied.
pub fn desired_metadata(
    source: &Image,
    source_cloud: &str,
    copy_id_of: impl Fn(&str) -> Option<String>,
    rules: &MetadataRules,
) -> Result<Metadata, String> {
    let mut meta = current_metadata(source);
    meta.owner = None;
    for key in IMAGE_REFERENCE_KEYS {
        if let Some(source_ref) = meta.properties.remove(*key)
            && let Some(target_ref) = copy_id_of(&source_ref)
        {
            meta.properties.insert((*key).to_string(), target_ref);
        }
    }
    let is_marker = |k: &str| k == MARKER_SOURCE_CLOUD || k == MARKER_SOURCE_ID;
    meta.properties
        .retain(|k, _| is_marker(k) || !rules.ignore_properties.is_match(k));
    for (k, v) in &rules.set_properties {
        meta.properties.insert(k.clone(), v.clone());
        meta.by_rule.insert(k.clone());
    }
    if let Some(visibility) = &rules.visibility {
        meta.visibility = visibility.clone();
        meta.by_rule.insert("visibility".into());
    }
    if let Some(protected) = rules.protected {
        meta.protected = protected;
        meta.by_rule.insert("protected".into());
    }
    meta.tags.retain(|t| !rules.ignore_tags.is_match(t));
    if !rules.add_tags.is_empty() {
        meta.tags.extend(rules.add_tags.iter().cloned());
        meta.by_rule.insert("tags".into());
    }
    if rules.owner == OwnerRule::Source {
        let owner = source.owner.as_deref().unwrap_or("");
        let mapped = rules.project_map.map(owner).ok_or_else(|| {
            format!(
                "its owner, project {owner}, is not in the job's project_map (owner = \"source\"): \
                 map it to a project of the target, or use owner = \"self\""
            )
        })?;
        meta.owner = Some(mapped);
        meta.by_rule.insert("owner".into());
    }
    let own = meta.properties.keys().filter(|k| !is_marker(k)).count();
    if own + 2 <= PROPERTY_QUOTA {
        meta.properties
            .insert(MARKER_SOURCE_CLOUD.into(), source_cloud.into());
        meta.properties
            .insert(MARKER_SOURCE_ID.into(), source.id.clone());
    } else {
        meta.properties.remove(MARKER_SOURCE_CLOUD);
        meta.properties.remove(MARKER_SOURCE_ID);
    }
    Ok(meta)
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

    pub fn replace(key: &str, value: Value) -> PatchOp {
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

    /// The top-level key it changes, as written (not JSON-pointer escaped).
    fn key(&self) -> String {
        self.path
            .trim_start_matches('/')
            .replace("~1", "/")
            .replace("~0", "~")
    }
}

/// A JSON pointer to a top-level key (RFC 6901 escaping: `~` → `~0`, `/` → `~1`).
fn pointer(key: &str) -> String {
    format!("/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// The JSON patch that turns `current` into `desired`, in one request (the whole patch is atomic
/// on the server). Properties and tags that `rules` ignore are neither set nor removed: what
/// someone added on the target stays. `protected` goes last, so a patch that fails never leaves a
/// half-updated image that can no longer be deleted.
pub fn metadata_patch(
    current: &Metadata,
    desired: &Metadata,
    rules: &MetadataRules,
) -> Vec<PatchOp> {
    let mut ops = Vec::new();
    if current.name != desired.name {
        ops.push(PatchOp::replace("name", serde_json::json!(desired.name)));
    }
    if let Some(owner) = &desired.owner
        && current.owner.as_ref() != Some(owner)
    {
        ops.push(PatchOp::replace("owner", Value::from(owner.clone())));
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
    let (ignored_tags, kept_tags): (BTreeSet<&String>, BTreeSet<&String>) = current
        .tags
        .iter()
        .partition(|t| rules.ignore_tags.is_match(t));
    if kept_tags != desired.tags.iter().collect() {
        // `tags` is replaced whole: the ignored ones go back in.
        let mut tags: BTreeSet<String> = desired.tags.clone();
        tags.extend(ignored_tags.into_iter().cloned());
        ops.push(PatchOp::replace(
            "tags",
            Value::from(tags.into_iter().collect::<Vec<_>>()),
        ));
    }
    let is_marker = |k: &str| k == MARKER_SOURCE_CLOUD || k == MARKER_SOURCE_ID;
    let ignored = |k: &str| !is_marker(k) && rules.ignore_properties.is_match(k);
    for (key, value) in &desired.properties {
        if !ignored(key) && current.properties.get(key) != Some(value) {
            ops.push(PatchOp::set(key, Value::from(value.clone())));
        }
    }
    for key in current.properties.keys() {
        if !ignored(key) && !desired.properties.contains_key(key) {
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

/// What a patch changes, for plans and logs: keys as written (`a/b`, not `a~1b`); a value a
/// rule decided is shown with it: `visibility private (rule)`.
pub fn describe_patch(ops: &[PatchOp], by_rule: &BTreeSet<String>) -> String {
    ops.iter()
        .map(|op| {
            let key = op.key();
            match (op.op, &op.value) {
                ("remove", _) => format!("-{key}"),
                (_, Some(value)) if by_rule.contains(&key) => {
                    let shown = match value {
                        Value::String(s) => s.clone(),
                        Value::Array(items) => items
                            .iter()
                            .map(|i| i.as_str().unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(" "),
                        other => other.to_string(),
                    };
                    format!("{key} {shown} (rule)")
                }
                _ => key,
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
    if let Some(owner) = &meta.owner {
        body.insert("owner".into(), Value::from(owner.clone()));
    }
    for (k, v) in &meta.properties {
        body.insert(k.clone(), Value::from(v.clone()));
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::image;

    fn plain() -> MetadataRules {
        MetadataRules::default()
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
        let meta = desired_metadata(
            &src,
            "prod",
            |id| (id == "k-src").then(|| "k-tgt".into()),
            &plain(),
        )
        .unwrap();
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
        let ops = metadata_patch(&cur, &want, &plain());
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
        assert!(metadata_patch(&want, &want, &plain()).is_empty());
        assert_eq!(
            describe_patch(&ops, &BTreeSet::new()),
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
        let meta = desired_metadata(&src, "prod", |_| None, &plain()).unwrap();
        assert_eq!(
            meta.properties.len(),
            PROPERTY_QUOTA,
            "126 + the marker fit"
        );
        assert_eq!(meta.properties[MARKER_SOURCE_ID], "src");

        src.extra.insert("p126".into(), Value::from("v"));
        let meta = desired_metadata(&src, "prod", |_| None, &plain()).unwrap();
        assert_eq!(meta.properties.len(), PROPERTY_QUOTA - 1);
        assert!(!meta.properties.contains_key(MARKER_SOURCE_ID));
        assert!(!meta.properties.contains_key(MARKER_SOURCE_CLOUD));
    }

    fn rules(toml_text: &str) -> MetadataRules {
        crate::config::tests::metadata_rules(toml_text)
    }

    #[test]
    fn rules_set_visibility_protection_properties_and_tags_and_say_so() {
        let mut src = image("s", "ubuntu", "m");
        src.tags = vec!["golden".into(), "wip-1".into()];
        src.extra.insert("site_rack".into(), Value::from("r1"));
        src.extra.insert("os_distro".into(), Value::from("ubuntu"));
        let r = rules(
            "visibility = \"private\"\nprotected = true\nset_properties = { replicated_by = \"gs\" }\n\
             ignore_properties = [\"site_*\"]\nadd_tags = [\"replica\"]\nignore_tags = [\"wip-*\"]",
        );
        let want = desired_metadata(&src, "prod", |_| None, &r).unwrap();
        assert_eq!(want.visibility, "private");
        assert!(want.protected);
        assert_eq!(want.properties["replicated_by"], "gs");
        assert!(!want.properties.contains_key("site_rack"));
        assert_eq!(want.tags.iter().collect::<Vec<_>>(), ["golden", "replica"]);
        // A copy made before the rules, plus a tag and a property someone added on the target.
        let mut copy = image("c", "ubuntu", "m");
        copy.tags = vec!["golden".into(), "wip-local".into()];
        copy.extra
            .insert("site_rack".into(), Value::from("target-local"));
        copy.extra.insert("os_distro".into(), Value::from("ubuntu"));
        copy.extra
            .insert(MARKER_SOURCE_CLOUD.into(), Value::from("prod"));
        copy.extra.insert(MARKER_SOURCE_ID.into(), Value::from("s"));
        let ops = metadata_patch(&current_metadata(&copy), &want, &r);
        assert_eq!(
            describe_patch(&ops, &want.by_rule),
            "visibility private (rule), tags golden replica wip-local (rule), \
             replicated_by gs (rule), protected true (rule)"
        );
        // Converged: the ignored tag and property stay, and nothing more is asked.
        let mut patched = copy.clone();
        patched.visibility = "private".into();
        patched.protected = true;
        patched.tags = vec!["golden".into(), "replica".into(), "wip-local".into()];
        patched
            .extra
            .insert("replicated_by".into(), Value::from("gs"));
        assert!(metadata_patch(&current_metadata(&patched), &want, &r).is_empty());
    }

    #[test]
    fn owner_source_maps_the_owner_or_says_why_it_cannot() {
        let mut src = image("s", "x", "m");
        src.owner = Some("p-src".into());
        let r = rules("owner = \"source\"\nproject_map = { p-src = \"p-dst\" }");
        let want = desired_metadata(&src, "prod", |_| None, &r).unwrap();
        assert_eq!(want.owner.as_deref(), Some("p-dst"));
        assert_eq!(
            create_body("new", &src, &want)["owner"],
            Value::from("p-dst")
        );
        src.owner = Some("unknown".into());
        let err = desired_metadata(&src, "prod", |_| None, &r).unwrap_err();
        assert!(
            err.contains("project unknown, is not in the job's project_map"),
            "{err}"
        );
    }
}
