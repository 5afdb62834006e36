//! Finding a cloud the way openstacksdk (and so the `openstack` CLI) finds it: clouds.yaml with
//! secure.yaml merged over it, or the `OS_*` environment variables as the cloud named `envvars`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{AUTH_KEYS, CLOUD_KEYS, CloudEntry};

/// The process environment and search path, injectable so tests do not depend on the machine.
pub(crate) struct Environment {
    vars: BTreeMap<String, String>,
    search_dirs: Vec<PathBuf>,
}

impl Environment {
    pub(crate) fn from_process() -> Environment {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        let mut search_dirs = vec![PathBuf::from(".")];
        if let Some(home) = vars.get("HOME") {
            search_dirs.push(Path::new(home).join(".config/openstack"));
        }
        search_dirs.push(PathBuf::from("/etc/openstack"));
        Environment { vars, search_dirs }
    }

    #[cfg(test)]
    pub(crate) fn empty() -> Environment {
        Environment::with(&[], vec![])
    }

    #[cfg(test)]
    pub(crate) fn with(vars: &[(&str, &str)], search_dirs: Vec<PathBuf>) -> Environment {
        Environment {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            search_dirs,
        }
    }

    fn var(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// The first file named `stem.{yaml,yml,json}` in the search path; `override_var` names an
    /// environment variable holding an explicit path that is looked at first.
    fn find(&self, override_var: &str, stem: &str) -> Option<PathBuf> {
        // An explicit path wins even when it is wrong: the caller reports it missing rather than
        // silently reading another file.
        if let Some(p) = self.var(override_var) {
            return Some(PathBuf::from(p));
        }
        self.search_dirs.iter().find_map(|dir| {
            ["yaml", "yml", "json"]
                .iter()
                .map(|ext| dir.join(format!("{stem}.{ext}")))
                .find(|p| p.is_file())
        })
    }
}

/// The entry `reference` from clouds.yaml (or the environment), with the TOML entry's own keys
/// taking precedence.
pub(crate) fn merge_over(
    reference: &str,
    toml_entry: &CloudEntry,
    env: &Environment,
) -> Result<CloudEntry, String> {
    let env_cloud_name = env.var("OS_CLOUD_NAME").unwrap_or("envvars");
    let base = if reference == env_cloud_name {
        from_env_vars(env)?
    } else {
        from_clouds_yaml(reference, env)?
    };
    let mut overlay = serde_json::to_value(toml_entry).map_err(|e| e.to_string())?;
    if let Value::Object(m) = &mut overlay {
        m.remove("cloud");
    }
    let mut merged = base;
    deep_merge(&mut merged, overlay);
    serde_json::from_value(merged).map_err(|e| format!("cloud '{reference}': {e}"))
}

fn from_clouds_yaml(reference: &str, env: &Environment) -> Result<Value, String> {
    let path = env.find("OS_CLIENT_CONFIG_FILE", "clouds").ok_or_else(|| {
        format!(
            "refers to cloud '{reference}' in clouds.yaml, but no clouds.yaml was found \
             ($OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack/clouds.yaml, \
             /etc/openstack/clouds.yaml)"
        )
    })?;
    let mut clouds = read_clouds(&path)?;
    if let Some(secure) = env.find("OS_CLIENT_SECURE_FILE", "secure") {
        deep_merge(&mut clouds, read_clouds(&secure)?);
    }
    let entry = clouds.get(reference).cloned().ok_or_else(|| {
        let known: Vec<_> = clouds
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        format!(
            "cloud '{reference}' is not in {} (it defines: {})",
            path.display(),
            known.join(", ")
        )
    })?;
    Ok(normalise(entry))
}

/// The `clouds:` mapping of a clouds.yaml or secure.yaml.
fn read_clouds(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: Value = serde_saphyr::from_str(&text)
        .map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
    Ok(doc
        .get("clouds")
        .cloned()
        .unwrap_or(Value::Object(Map::new())))
}

/// The cloud openstacksdk builds from `OS_*` variables: key = the lower-cased rest of the name,
/// authentication keys moved under `auth`.
fn from_env_vars(env: &Environment) -> Result<Value, String> {
    let mut entry = Map::new();
    for (k, v) in &env.vars {
        if let Some(rest) = k.strip_prefix("OS_") {
            entry.insert(rest.to_ascii_lowercase(), Value::from(v.clone()));
        }
    }
    if let Some(token) = entry.remove("auth_token") {
        entry.entry("token").or_insert(token);
    }
    if !entry.contains_key("auth_url") && !entry.contains_key("token") {
        return Err("refers to the environment cloud, but no OS_AUTH_URL is set".into());
    }
    Ok(normalise(Value::Object(entry)))
}

/// Applies openstacksdk's aliases, moves auth keys found at the top level under `auth` (top-level
/// values win), stringifies auth values and drops every key glance-sync does not use.
fn normalise(entry: Value) -> Value {
    let Value::Object(mut top) = entry else {
        return Value::Object(Map::new());
    };
    let mut auth = match top.remove("auth") {
        Some(Value::Object(a)) => a,
        _ => Map::new(),
    };
    let renames = [
        ("tenant_name", "project_name"),
        ("tenant_id", "project_id"),
        ("endpoint_type", "interface"),
    ];
    for map in [&mut top, &mut auth] {
        let keys: Vec<String> = map.keys().cloned().collect();
        for k in keys {
            let canonical = k.replace('-', "_");
            let canonical = renames
                .iter()
                .find(|(from, _)| *from == canonical)
                .map(|(_, to)| to.to_string())
                .unwrap_or(canonical);
            if canonical != k {
                let v = map.remove(&k).unwrap();
                map.entry(canonical).or_insert(v);
            }
        }
    }
    if let Some(insecure) = top.remove("insecure") {
        let insecure = insecure.as_bool().unwrap_or_else(|| {
            insecure
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("true"))
        });
        top.entry("verify").or_insert(Value::from(!insecure));
    }
    if let Some(Value::String(s)) = top.get("verify") {
        let b = !s.eq_ignore_ascii_case("false");
        top.insert("verify".into(), Value::from(b));
    }
    for key in AUTH_KEYS {
        if let Some(v) = top.remove(*key) {
            auth.insert((*key).to_string(), v);
        }
    }
    let mut out = Map::new();
    for key in CLOUD_KEYS {
        if let Some(v) = top.remove(*key) {
            out.insert((*key).to_string(), v);
        }
    }
    let auth: Map<String, Value> = auth
        .into_iter()
        .filter(|(k, _)| AUTH_KEYS.contains(&k.as_str()))
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, Value::from(s))
        })
        .collect();
    if !auth.is_empty() {
        out.insert("auth".into(), Value::Object(auth));
    }
    Value::Object(out)
}

fn deep_merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                deep_merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(dir: &Path, vars: &[(&str, &str)]) -> Environment {
        Environment::with(vars, vec![dir.to_path_buf()])
    }

    #[test]
    fn secure_yaml_is_merged_over_clouds_yaml_and_toml_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  dr:\n    region_name: RegionTwo\n    endpoint_type: internalURL\n    \
             identity_api_version: 3\n    auth:\n      auth_url: https://ks.dr:5000\n      \
             username: repl\n      tenant_name: images\n      project_id: 1234\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("secure.yaml"),
            "clouds:\n  dr:\n    auth:\n      password: from-secure\n",
        )
        .unwrap();
        let toml_entry = CloudEntry {
            cloud: Some("dr".into()),
            region_name: Some("RegionThree".into()),
            ..Default::default()
        };
        let merged = merge_over("dr", &toml_entry, &env_with(dir.path(), &[])).unwrap();
        assert_eq!(merged.region_name.as_deref(), Some("RegionThree"));
        assert_eq!(merged.interface.as_deref(), Some("internalURL"));
        assert_eq!(merged.auth.password.as_deref(), Some("from-secure"));
        assert_eq!(merged.auth.project_name.as_deref(), Some("images"));
        assert_eq!(merged.auth.project_id.as_deref(), Some("1234"));
    }

    #[test]
    fn missing_cloud_lists_the_ones_defined() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  a: {}\n  b: {}\n",
        )
        .unwrap();
        let Err(err) = merge_over("zz", &CloudEntry::default(), &env_with(dir.path(), &[])) else {
            panic!("a missing cloud must be an error")
        };
        assert!(err.contains("it defines: a, b"), "{err}");
    }

    #[test]
    fn envvars_cloud_comes_from_os_variables() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with(
            dir.path(),
            &[
                ("OS_AUTH_URL", "http://ks:5000/v3"),
                ("OS_USERNAME", "u"),
                ("OS_PASSWORD", "p"),
                ("OS_PROJECT_NAME", "proj"),
                ("OS_REGION_NAME", "R1"),
                ("OS_INSECURE", "true"),
            ],
        );
        let merged = merge_over("envvars", &CloudEntry::default(), &env).unwrap();
        assert_eq!(merged.auth.username.as_deref(), Some("u"));
        assert_eq!(merged.auth.password.as_deref(), Some("p"));
        assert_eq!(merged.region_name.as_deref(), Some("R1"));
        assert_eq!(merged.verify, Some(false));
    }
}
