//! Replication policies of a job, per target: whether copies keep the source's image id, and the
//! rules that turn a source image's metadata into its copy's (visibility, protection, properties
//! and tags set or left alone, owner, members). Also the filter keys on properties, disk formats
//! and sizes. Read from the TOML by hand, so that every bad value names its key.

use std::collections::{BTreeMap, BTreeSet};

use globset::{Glob, GlobSet, GlobSetBuilder};
use toml::Value;

/// One step of a key's path in the config file, to name the line of an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Key(String),
    Index(usize),
}

pub type KeyPath = Vec<PathPart>;

/// A config error: where (relative to the job) and what.
pub type Invalid = (KeyPath, String);

pub fn key(parts: &[&str]) -> KeyPath {
    parts.iter().map(|p| PathPart::Key(p.to_string())).collect()
}

fn at(mut path: KeyPath, more: &[PathPart]) -> KeyPath {
    path.extend_from_slice(more);
    path
}

/// Whether copies are created with their source image's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreserveIds {
    #[default]
    Off,
    /// Keep it when the target allows (the id is free); else a new id, said in plan and logs.
    Prefer,
    /// Keep it or fail that image.
    Require,
}

/// Who moves a copy's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransferMethod {
    /// glance-sync downloads from the source and uploads to the target.
    #[default]
    Stream,
    /// The target Glance pulls the image from the source region (`glance-download` import):
    /// both clouds must share a Keystone and the target must offer the method.
    GlanceDownload,
    /// glance-download where the run's discovery says it can work, else stream; a pull that
    /// fails for a reason a stream would not have falls back to streaming that image.
    Auto,
}

impl TransferMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferMethod::Stream => "stream",
            TransferMethod::GlanceDownload => "glance-download",
            TransferMethod::Auto => "auto",
        }
    }
}

/// Whose project owns the copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OwnerRule {
    /// The project glance-sync works as on the target.
    #[default]
    Sync,
    /// The source image's owner, mapped through `project_map` (needs admin on the target).
    Source,
}

/// Source project ids to target project ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectMap {
    /// `"*" = "*"`: every project is itself (one Keystone shared by both clouds).
    pub identity: bool,
    pub map: BTreeMap<String, String>,
}

impl ProjectMap {
    pub fn map(&self, project: &str) -> Option<String> {
        self.map
            .get(project)
            .cloned()
            .or_else(|| self.identity.then(|| project.to_string()))
    }
}

/// A set of globs, with the patterns kept for messages.
#[derive(Debug, Clone, Default)]
pub struct Globs {
    set: GlobSet,
    pub patterns: Vec<String>,
}

impl Globs {
    pub fn is_match(&self, s: &str) -> bool {
        !self.patterns.is_empty() && self.set.is_match(s)
    }
}

/// How a copy's metadata is derived from its source image's. The default is "exactly the source's".
#[derive(Debug, Clone, Default)]
pub struct MetadataRules {
    pub visibility: Option<String>,
    pub protected: Option<bool>,
    /// Set on every copy, over the source's value.
    pub set_properties: BTreeMap<String, String>,
    /// Never copied, never changed or removed on copies.
    pub ignore_properties: Globs,
    pub add_tags: BTreeSet<String>,
    /// Never copied, never changed or removed on copies.
    pub ignore_tags: Globs,
    pub owner: OwnerRule,
    /// Copy the source image's members through `project_map`.
    pub members: bool,
    pub project_map: ProjectMap,
}

impl MetadataRules {
    /// Whether the rules ask for the source's members or owner: both need the project map.
    pub fn maps_projects(&self) -> bool {
        self.members || self.owner == OwnerRule::Source
    }
}

/// What a job does on one target.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    pub preserve_ids: PreserveIds,
    pub metadata: MetadataRules,
    pub transfer: TransferMethod,
    /// Stores of a multi-store target that every copy must be in (empty: Glance's default).
    pub stores: Vec<String>,
}

const VISIBILITIES: &[&str] = &["public", "community", "shared", "private"];

fn expect_str<'v>(v: &'v Value, path: &KeyPath, what: &str) -> Result<&'v str, Invalid> {
    v.as_str().ok_or_else(|| {
        (
            path.clone(),
            format!("{what} must be a string, not {}", v.type_str()),
        )
    })
}

fn str_list(v: &Value, path: &KeyPath, what: &str) -> Result<Vec<String>, Invalid> {
    let items = v.as_array().ok_or_else(|| {
        (
            path.clone(),
            format!("{what} must be a list of strings, not {}", v.type_str()),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            expect_str(item, &at(path.clone(), &[PathPart::Index(i)]), what).map(str::to_string)
        })
        .collect()
}

fn str_map(v: &Value, path: &KeyPath, what: &str) -> Result<BTreeMap<String, String>, Invalid> {
    let table = v.as_table().ok_or_else(|| {
        (
            path.clone(),
            format!("{what} must be a table of strings, not {}", v.type_str()),
        )
    })?;
    table
        .iter()
        .map(|(k, item)| {
            let value = expect_str(
                item,
                &at(path.clone(), &[PathPart::Key(k.clone())]),
                &format!("{what}.{k}"),
            )?;
            Ok((k.clone(), value.to_string()))
        })
        .collect()
}

pub fn globs(patterns: Vec<String>, path: &KeyPath, what: &str) -> Result<Globs, Invalid> {
    let mut builder = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        let glob = Glob::new(p).map_err(|e| {
            (
                at(path.clone(), &[PathPart::Index(i)]),
                format!("{what} '{p}' is not a valid glob: {e}"),
            )
        })?;
        builder.add(glob);
    }
    let set = builder
        .build()
        .map_err(|e| (path.clone(), format!("{what}: {e}")))?;
    Ok(Globs { set, patterns })
}

pub fn preserve_ids(v: &Value, path: &KeyPath) -> Result<PreserveIds, Invalid> {
    match expect_str(v, path, "preserve_ids")? {
        "off" => Ok(PreserveIds::Off),
        "prefer" => Ok(PreserveIds::Prefer),
        "require" => Ok(PreserveIds::Require),
        other => Err((
            path.clone(),
            format!("preserve_ids = \"{other}\" is not one of \"off\", \"prefer\", \"require\""),
        )),
    }
}

pub fn transfer(v: &Value, path: &KeyPath) -> Result<TransferMethod, Invalid> {
    match expect_str(v, path, "transfer")? {
        "stream" => Ok(TransferMethod::Stream),
        "glance-download" => Ok(TransferMethod::GlanceDownload),
        "auto" => Ok(TransferMethod::Auto),
        other => Err((
            path.clone(),
            format!(
                "transfer = \"{other}\" is not one of \"stream\", \"glance-download\", \"auto\""
            ),
        )),
    }
}

/// A list of store ids, each named once.
pub fn stores(v: &Value, path: &KeyPath) -> Result<Vec<String>, Invalid> {
    let stores = str_list(v, path, "stores")?;
    for (i, s) in stores.iter().enumerate() {
        if s.is_empty() || stores[..i].contains(s) {
            return Err((
                at(path.clone(), &[PathPart::Index(i)]),
                format!("stores: '{s}' is empty or listed twice"),
            ));
        }
    }
    Ok(stores)
}

/// `rules` with the keys of the `[metadata]` table `v` applied over them (a target's table
/// overrides the job's key by key).
pub fn metadata(v: &Value, path: &KeyPath, base: &MetadataRules) -> Result<MetadataRules, Invalid> {
    let table = v.as_table().ok_or_else(|| {
        (
            path.clone(),
            format!("metadata must be a table, not {}", v.type_str()),
        )
    })?;
    let mut rules = base.clone();
    for (k, item) in table {
        let here = at(path.clone(), &[PathPart::Key(k.clone())]);
        match k.as_str() {
            "visibility" => {
                let vis = expect_str(item, &here, "visibility")?;
                if !VISIBILITIES.contains(&vis) {
                    return Err((
                        here,
                        format!(
                            "visibility '{vis}' is not one of {}",
                            VISIBILITIES.join(", ")
                        ),
                    ));
                }
                rules.visibility = Some(vis.to_string());
            }
            "protected" => {
                rules.protected =
                    Some(item.as_bool().ok_or_else(|| {
                        (here.clone(), "protected must be true or false".to_string())
                    })?)
            }
            "set_properties" => rules.set_properties = str_map(item, &here, "set_properties")?,
            "ignore_properties" => {
                rules.ignore_properties = globs(
                    str_list(item, &here, "ignore_properties")?,
                    &here,
                    "ignore_properties",
                )?
            }
            "add_tags" => rules.add_tags = str_list(item, &here, "add_tags")?.into_iter().collect(),
            "ignore_tags" => {
                rules.ignore_tags =
                    globs(str_list(item, &here, "ignore_tags")?, &here, "ignore_tags")?
            }
            "owner" => {
                rules.owner = match expect_str(item, &here, "owner")? {
                    "self" => OwnerRule::Sync,
                    "source" => OwnerRule::Source,
                    other => {
                        return Err((
                            here,
                            format!("owner = \"{other}\" is not one of \"self\", \"source\""),
                        ));
                    }
                }
            }
            "members" => {
                rules.members = item
                    .as_bool()
                    .ok_or_else(|| (here.clone(), "members must be true or false".to_string()))?
            }
            "project_map" => {
                let map = str_map(item, &here, "project_map")?;
                let mut pm = ProjectMap::default();
                for (from, to) in map {
                    match (from.as_str(), to.as_str()) {
                        ("*", "*") => pm.identity = true,
                        ("*", _) | (_, "*") => {
                            return Err((
                                at(here.clone(), &[PathPart::Key(from.clone())]),
                                "\"*\" maps only to \"*\" (every project to itself)".to_string(),
                            ));
                        }
                        _ => {
                            pm.map.insert(from, to);
                        }
                    }
                }
                rules.project_map = pm;
            }
            other => {
                return Err((
                    here,
                    format!(
                        "unknown key '{other}' in metadata (visibility, protected, \
                         set_properties, ignore_properties, add_tags, ignore_tags, owner, \
                         members, project_map)"
                    ),
                ));
            }
        }
    }
    Ok(rules)
}

/// `"1MiB"`, `"50GiB"`, `"10GB"`, `"512"` or an integer: a size in bytes.
pub fn size(v: &Value, path: &KeyPath, what: &str) -> Result<u64, Invalid> {
    let bad = || {
        (
            path.clone(),
            format!("{what} must be a size such as \"1MiB\", \"50GiB\" or a number of bytes"),
        )
    };
    if let Some(n) = v.as_integer() {
        return u64::try_from(n).map_err(|_| bad());
    }
    let s = v.as_str().ok_or_else(bad)?.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = (s[..split].trim(), s[split..].trim());
    let number: f64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u64.pow(2),
        "g" | "gb" => 1000u64.pow(3),
        "t" | "tb" => 1000u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    Ok((number * factor as f64).round() as u64)
}

/// The filter keys on properties (globs on each named key; all must match).
pub fn property_globs(v: &Value, path: &KeyPath) -> Result<Vec<(String, Globs)>, Invalid> {
    str_map(v, path, "filter.properties")?
        .into_iter()
        .map(|(k, pattern)| {
            let here = at(path.clone(), &[PathPart::Key(k.clone())]);
            let g = globs(vec![pattern], &here, &format!("filter.properties.{k}"))
                .map_err(|(_, m)| (here.clone(), m))?;
            Ok((k, g))
        })
        .collect()
}

/// The line (1-based) of the key at `path` in the TOML `text`, as far as it can be followed.
pub fn line_of_path(text: &str, path: &[PathPart]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut offset = doc.span().start;
    let mut value: Option<&DeValue> = None;
    for part in path {
        match (part, value) {
            (PathPart::Key(k), None) => {
                let (key, v) = table.get_key_value(k.as_str())?;
                offset = key.span().start;
                value = Some(v.get_ref());
            }
            (PathPart::Key(k), Some(DeValue::Table(t))) => {
                table = t;
                let (key, v) = table.get_key_value(k.as_str())?;
                offset = key.span().start;
                value = Some(v.get_ref());
            }
            (PathPart::Index(i), Some(DeValue::Array(items))) => {
                let item = items.get(*i)?;
                offset = item.span().start;
                value = Some(item.get_ref());
            }
            _ => break,
        }
    }
    Some(text[..offset.min(text.len())].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(toml_text: &str) -> Value {
        toml::from_str::<toml::Table>(toml_text).unwrap()["x"].clone()
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        let p = key(&["min_size"]);
        assert_eq!(size(&v("x = \"1MiB\""), &p, "min_size").unwrap(), 1 << 20);
        assert_eq!(size(&v("x = \"50GiB\""), &p, "s").unwrap(), 50 << 30);
        assert_eq!(size(&v("x = \"10GB\""), &p, "s").unwrap(), 10_000_000_000);
        assert_eq!(size(&v("x = 512"), &p, "s").unwrap(), 512);
        assert!(size(&v("x = \"ten\""), &p, "s").is_err());
    }

    #[test]
    fn a_target_table_overrides_the_jobs_metadata_key_by_key() {
        let job = metadata(
            &v("x = { visibility = \"shared\", add_tags = [\"replica\"] }"),
            &key(&["metadata"]),
            &MetadataRules::default(),
        )
        .unwrap();
        let target = metadata(
            &v("x = { visibility = \"private\" }"),
            &key(&["targets"]),
            &job,
        )
        .unwrap();
        assert_eq!(target.visibility.as_deref(), Some("private"));
        assert!(target.add_tags.contains("replica"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = MetadataRules::default();
        let (path, msg) = metadata(
            &v("x = { visibility = \"everyone\" }"),
            &key(&["metadata"]),
            &base,
        )
        .unwrap_err();
        assert_eq!(path, key(&["metadata", "visibility"]));
        assert!(msg.contains("not one of"), "{msg}");
        let (path, _) = metadata(
            &v("x = { project_map = { a = 1 } }"),
            &key(&["metadata"]),
            &base,
        )
        .unwrap_err();
        assert_eq!(path, key(&["metadata", "project_map", "a"]));
        let (path, msg) = metadata(
            &v("x = { ignore_properties = [\"ok\", \"bad[\"] }"),
            &key(&["metadata"]),
            &base,
        )
        .unwrap_err();
        assert_eq!(
            path,
            vec![
                PathPart::Key("metadata".into()),
                PathPart::Key("ignore_properties".into()),
                PathPart::Index(1)
            ]
        );
        assert!(msg.contains("not a valid glob"), "{msg}");
    }

    #[test]
    fn lines_are_found_for_nested_keys() {
        let text = "[state]\npath = \"x\"\n\n[[jobs]]\nname = \"a\"\n\n[[jobs]]\nname = \"b\"\n\
                    [jobs.metadata]\nvisibility = \"nope\"\n";
        let path = vec![
            PathPart::Key("jobs".into()),
            PathPart::Index(1),
            PathPart::Key("metadata".into()),
            PathPart::Key("visibility".into()),
        ];
        assert_eq!(line_of_path(text, &path), Some(10));
    }
}
