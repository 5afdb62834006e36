//! Finding a cloud the way openstacksdk (and so the `openstack` CLI) finds it: clouds.yaml with
//! secure.yaml merged over it, vendor profiles, regions, or the `OS_*` environment variables as
//! the cloud named `envvars`. `tests/clouds_parity.rs` compares the result with openstacksdk's
//! own, case by case; where glance-sync deliberately differs, README.md says so and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{AUTH_KEYS, CLOUD_KEYS, CloudEntry};

/// What `[clouds.X] cloud = "$OS_CLOUD"` means: the cloud openstacksdk picks when none is named.
pub(crate) const DEFAULT_CLOUD: &str = "$OS_CLOUD";

/// The process environment, the search path and where openstacksdk's vendor profiles are,
/// injectable so tests do not depend on the machine.
pub(crate) struct Environment {
    vars: BTreeMap<String, String>,
    search_dirs: Vec<PathBuf>,
    vendor_dirs: Vec<PathBuf>,
}

impl Environment {
    pub(crate) fn from_process() -> Environment {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        let cwd = std::env::current_dir().ok();
        Environment {
            search_dirs: search_dirs(&vars, cwd.as_deref()),
            vendor_dirs: vendor_dirs(&vars),
            vars,
        }
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
            vendor_dirs: vec![],
        }
    }

    fn var(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The first file named `stem.{yaml,yml,json}` in the search path; `override_var` names an
    /// environment variable holding an explicit path that is looked at first.
    fn find(&self, override_var: &str, stem: &str) -> Option<PathBuf> {
        // An explicit path wins even when it is wrong: the caller reports it missing rather than
        // silently reading another file (openstacksdk skips it silently).
        if let Some(p) = self.var(override_var) {
            return Some(expand_tilde(p, self.var("HOME")));
        }
        self.search_dirs.iter().find_map(|dir| {
            ["yaml", "yml", "json"]
                .iter()
                .map(|ext| dir.join(format!("{stem}.{ext}")))
                .find(|p| p.is_file())
        })
    }

    fn searched(&self) -> String {
        self.search_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The name of the cloud built from `OS_*` variables.
    fn env_cloud_name(&self) -> &str {
        self.var("OS_CLOUD_NAME").unwrap_or("envvars")
    }

    /// Whether `OS_*` variables define a cloud: any but the ones that only select or locate one.
    fn env_cloud_exists(&self) -> bool {
        const SELECTORS: &[&str] = &[
            "OS_CLOUD",
            "OS_REGION_NAME",
            "OS_CLIENT_CONFIG_FILE",
            "OS_CLIENT_SECURE_FILE",
            "OS_CLOUD_NAME",
        ];
        self.vars.iter().any(|(k, v)| {
            k.starts_with("OS_")
                && !v.is_empty()
                && !SELECTORS.contains(&k.as_str())
                && !["OS_TEST", "OS_STD", "OS_LOG"]
                    .iter()
                    .any(|p| k.starts_with(p))
        })
    }
}

/// Where openstacksdk looks for clouds.yaml, secure.yaml and clouds-public.yaml, in order: the
/// current directory, `$XDG_CONFIG_HOME/openstack` (when absolute) or `~/.config/openstack`,
/// `~/.config/openstack`, each `$XDG_CONFIG_DIRS` entry's `openstack` (default
/// `/etc/xdg/openstack`), `/etc/openstack`.
fn search_dirs(vars: &BTreeMap<String, String>, cwd: Option<&Path>) -> Vec<PathBuf> {
    let var = |k: &str| vars.get(k).filter(|v| !v.is_empty());
    let home = var("HOME").map(PathBuf::from);
    let mut dirs: Vec<PathBuf> = Vec::new();
    dirs.extend(cwd.map(Path::to_path_buf));
    match var("XDG_CONFIG_HOME").map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() => dirs.push(xdg.join("openstack")),
        _ => dirs.extend(home.as_ref().map(|h| h.join(".config/openstack"))),
    }
    dirs.extend(home.as_ref().map(|h| h.join(".config/openstack")));
    // openstacksdk searches none of several XDG_CONFIG_DIRS (it joins them into one bogus path);
    // each is searched here, in order.
    let site: Vec<PathBuf> = var("XDG_CONFIG_DIRS")
        .map(|v| {
            v.split(':')
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .collect()
        })
        .unwrap_or_default();
    if site.is_empty() {
        dirs.push(PathBuf::from("/etc/xdg/openstack"));
    } else {
        dirs.extend(site.into_iter().map(|d| d.join("openstack")));
    }
    dirs.push(PathBuf::from("/etc/openstack"));
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// Where an installed openstacksdk keeps its vendor profiles (`openstack/config/vendors`): in the
/// active virtualenv, or in the system's Python packages.
fn vendor_dirs(vars: &BTreeMap<String, String>) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = vars
        .get("VIRTUAL_ENV")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    roots.extend(["/usr/local", "/usr"].map(PathBuf::from));
    let mut found = Vec::new();
    for root in roots {
        for lib in ["lib", "lib64"] {
            let Ok(entries) = std::fs::read_dir(root.join(lib)) else {
                continue;
            };
            let mut pythons: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("python3"))
                })
                .collect();
            pythons.sort();
            for python in pythons {
                for packages in ["site-packages", "dist-packages"] {
                    let dir = python.join(packages).join("openstack/config/vendors");
                    if dir.is_dir() {
                        found.push(dir);
                    }
                }
            }
        }
    }
    found
}

/// `~/x` as `$HOME/x`; anything else unchanged.
pub(crate) fn expand_tilde(path: &str, home: Option<&str>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => Path::new(home).join(rest),
        _ if path == "~" => home.map(PathBuf::from).unwrap_or_else(|| path.into()),
        _ => PathBuf::from(path),
    }
}

/// A cloud entry resolved from clouds.yaml or the environment, and what glance-sync noticed on
/// the way (keys it does not use, deprecated forms), each naming the file and the cloud.
pub(crate) struct Resolved {
    pub entry: CloudEntry,
    pub warnings: Vec<String>,
}

/// The entry `reference` from clouds.yaml (or the environment), with the TOML entry's own keys
/// taking precedence. `reference` may be [`DEFAULT_CLOUD`]: the cloud openstacksdk picks when
/// none is named (`OS_CLOUD`, else the `envvars` cloud, else the only cloud defined).
pub(crate) fn merge_over(
    reference: &str,
    toml_entry: &CloudEntry,
    env: &Environment,
) -> Result<Resolved, String> {
    let files = CloudFiles::load(env)?;
    let name = if reference == DEFAULT_CLOUD {
        files.default_cloud(env)?
    } else {
        reference.to_string()
    };
    let (mut entry, origin) = if env.env_cloud_exists() && name == env.env_cloud_name() {
        (
            from_env_vars(env)?,
            "the OS_* environment variables".to_string(),
        )
    } else {
        files.entry(&name, env)?
    };
    let mut warnings = Vec::new();
    select_region(&mut entry, toml_entry.region_name.as_deref(), &mut warnings)?;
    let (base, unused) = normalise(entry)?;
    for key in unused {
        warnings.push(format!(
            "key '{key}' is not used by glance-sync (it has no effect on the image service, \
             authentication or TLS here); remove it to silence this"
        ));
    }
    let mut overlay = serde_json::to_value(toml_entry).map_err(|e| e.to_string())?;
    if let Value::Object(m) = &mut overlay {
        m.remove("cloud");
        // The TOML's region chose among the entry's regions above (as openstacksdk's
        // region_name argument does); it wins as a value too.
    }
    let mut merged = base;
    deep_merge(&mut merged, overlay);
    let entry: CloudEntry =
        serde_json::from_value(merged).map_err(|e| format!("cloud '{name}' in {origin}: {e}"))?;
    Ok(Resolved {
        entry,
        warnings: warnings
            .into_iter()
            .map(|w| format!("cloud '{name}' in {origin}: {w}"))
            .collect(),
    })
}

/// The clouds of clouds.yaml with secure.yaml merged over them.
struct CloudFiles {
    clouds: Map<String, Value>,
    /// Whether a clouds.yaml or a secure.yaml was found at all.
    found: bool,
    /// "clouds.yaml at PATH (with secure.yaml at PATH)", for messages.
    origin: String,
}

impl CloudFiles {
    fn load(env: &Environment) -> Result<CloudFiles, String> {
        let clouds_path = env.find("OS_CLIENT_CONFIG_FILE", "clouds");
        let secure_path = env.find("OS_CLIENT_SECURE_FILE", "secure");
        for (var, path) in [
            ("OS_CLIENT_CONFIG_FILE", &clouds_path),
            ("OS_CLIENT_SECURE_FILE", &secure_path),
        ] {
            if let Some(path) = path.as_ref().filter(|p| !p.is_file())
                && env.var(var).is_some()
            {
                return Err(format!(
                    "{var} names {}, which does not exist. openstacksdk would silently search the \
                     usual places instead and might find another cloud of the same name; \
                     glance-sync refuses: fix {var} or unset it",
                    path.display()
                ));
            }
        }
        let mut clouds = Value::Object(Map::new());
        let mut origin = Vec::new();
        if let Some(path) = &clouds_path {
            clouds = read_clouds(path)?;
            origin.push(path.display().to_string());
        }
        if let Some(path) = &secure_path {
            deep_merge(&mut clouds, read_clouds(path)?);
            origin.push(format!("{} (secure)", path.display()));
        }
        let Value::Object(clouds) = clouds else {
            return Err("the 'clouds' key of clouds.yaml is not a mapping".into());
        };
        Ok(CloudFiles {
            clouds,
            found: !origin.is_empty(),
            origin: if origin.is_empty() {
                "no clouds.yaml".into()
            } else {
                origin.join(" + ")
            },
        })
    }

    /// The cloud openstacksdk picks when none is named.
    fn default_cloud(&self, env: &Environment) -> Result<String, String> {
        if let Some(cloud) = env.var("OS_CLOUD") {
            return Ok(cloud.to_string());
        }
        if env.env_cloud_exists() {
            return Ok(env.env_cloud_name().to_string());
        }
        match self.clouds.keys().collect::<Vec<_>>().as_slice() {
            [only] => Ok(only.to_string()),
            names => Err(format!(
                "cloud = \"{DEFAULT_CLOUD}\", but OS_CLOUD is not set, no OS_* variables define \
                 a cloud, and {} defines {} clouds ({}): set OS_CLOUD or name the cloud",
                self.origin,
                names.len(),
                names
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Entry `name`, with its vendor profile (`profile:`) expanded under it.
    fn entry(&self, name: &str, env: &Environment) -> Result<(Value, String), String> {
        if !self.found {
            return Err(format!(
                "refers to cloud '{name}' in clouds.yaml, but neither clouds.yaml nor secure.yaml \
                 was found ($OS_CLIENT_CONFIG_FILE, then {})",
                env.searched()
            ));
        }
        let entry = self.clouds.get(name).cloned().ok_or_else(|| {
            format!(
                "cloud '{name}' is not in {} (it defines: {})",
                self.origin,
                self.clouds
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let Value::Object(mut entry) = entry else {
            return Err(format!(
                "cloud '{name}' in {} is not a mapping of keys",
                self.origin
            ));
        };
        // In clouds.yaml, `cloud:` is openstacksdk's old name for `profile:`.
        let profile = entry
            .remove("profile")
            .or_else(|| entry.remove("cloud"))
            .and_then(|p| p.as_str().map(str::to_string));
        let entry = match profile {
            Some(profile) => {
                let mut base = vendor_profile(&profile, name, env)?;
                auth_update(&mut base, Value::Object(entry));
                base
            }
            None => Value::Object(entry),
        };
        Ok((entry, self.origin.clone()))
    }
}

/// The `clouds:` mapping of a clouds.yaml or secure.yaml.
fn read_clouds(path: &Path) -> Result<Value, String> {
    let doc = read_yaml(path)?;
    Ok(doc
        .get("clouds")
        .cloned()
        .unwrap_or(Value::Object(Map::new())))
}

fn read_yaml(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display()));
    }
    serde_saphyr::from_str(&text).map_err(|e| format!("{} is not valid YAML: {e}", path.display()))
}

/// The keys of vendor profile `profile`: from clouds-public.yaml (`public-clouds:`) in the search
/// path, else from an installed openstacksdk's own profiles.
fn vendor_profile(profile: &str, cloud: &str, env: &Environment) -> Result<Value, String> {
    if let Some(path) = env.find("OS_CLIENT_VENDOR_FILE", "clouds-public") {
        let doc = read_yaml(&path)?;
        if let Some(found) = doc.get("public-clouds").and_then(|p| p.get(profile)) {
            return Ok(found.clone());
        }
    }
    // openstacksdk's own files: `name` and `profile` keys; a JSON file wins over a YAML one.
    let mut best: Option<(bool, Value)> = None;
    for dir in &env.vendor_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let is_json = path.extension().is_some_and(|e| e == "json");
            let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if !is_json && !is_yaml {
                continue;
            }
            let Ok(doc) = read_yaml(&path) else { continue };
            if doc.get("name").and_then(Value::as_str) == Some(profile)
                && best.as_ref().is_none_or(|(json, _)| !json)
            {
                best = Some((is_json, doc));
            }
        }
        if best.is_some() {
            break;
        }
    }
    let Some((_, doc)) = best else {
        return Err(format!(
            "cloud '{cloud}' uses profile '{profile}', which is unknown (openstacksdk would only \
             warn and go on without it): define it under public-clouds: in a clouds-public.yaml \
             next to clouds.yaml{}",
            if env.vendor_dirs.is_empty() {
                " (no installed openstacksdk with its vendor profiles was found)".to_string()
            } else {
                String::new()
            }
        ));
    };
    let message = doc.get("message").and_then(Value::as_str).unwrap_or("");
    match doc.get("status").and_then(Value::as_str) {
        Some("shutdown") => {
            return Err(format!(
                "cloud '{cloud}' uses profile '{profile}', a cloud that no longer exists: {message}"
            ));
        }
        Some("deprecated") => {
            tracing::warn!("cloud '{cloud}': profile '{profile}' is deprecated: {message}")
        }
        _ => {}
    }
    let profile_keys = doc.get("profile").cloned().unwrap_or(Value::Null);
    if let Some(url) = profile_keys.get("profile").and_then(Value::as_str) {
        return Err(format!(
            "cloud '{cloud}' uses profile '{profile}', which openstacksdk fetches from {url} at \
             every start; glance-sync does not fetch configuration: copy what that URL returns \
             under public-clouds: in a clouds-public.yaml"
        ));
    }
    Ok(profile_keys)
}

/// openstacksdk's merge of a cloud entry over its profile: top-level keys replaced, `auth`
/// merged key by key.
fn auth_update(base: &mut Value, overlay: Value) {
    let (Value::Object(b), Value::Object(o)) = (base, overlay) else {
        return;
    };
    for (k, v) in o {
        match (k.as_str(), b.get_mut(&k), v) {
            ("auth", Some(Value::Object(ba)), Value::Object(oa)) => {
                ba.extend(oa);
            }
            (_, _, v) => {
                b.insert(k, v);
            }
        }
    }
}

/// Chooses the region, as openstacksdk does: with `regions:` listed, `requested` (the TOML's
/// `region_name`) must be one of them and defaults to the first (an entry's own `region_name` is
/// then ignored); the chosen region's `values` apply over the entry.
fn select_region(
    entry: &mut Value,
    requested: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let Value::Object(map) = entry else {
        return Ok(());
    };
    let regions = match map.remove("regions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(name) => Ok((name, Value::Object(Map::new()))),
                Value::Object(mut m)
                    if m.keys().all(|k| k == "name" || k == "values")
                        && m.get("name").is_some_and(Value::is_string) =>
                {
                    let name = m["name"].as_str().unwrap_or_default().to_string();
                    Ok((
                        name,
                        m.remove("values").unwrap_or(Value::Object(Map::new())),
                    ))
                }
                other => Err(format!(
                    "regions: entry {other} is neither a name nor {{name, values}}"
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("regions: {other} is not a list")),
    };
    if regions.is_empty() {
        if let Some(r) = requested {
            map.insert("region_name".into(), Value::from(r));
        } else if let Some(Value::String(r)) = map.get("region_name")
            && r.contains(',')
        {
            let first = r.split(',').next().unwrap_or_default().trim().to_string();
            warnings.push(format!(
                "region_name '{r}' is a comma-separated list (deprecated in openstacksdk): the \
                 first, '{first}', is used; list them under regions: instead"
            ));
            map.insert("region_name".into(), Value::from(first));
        }
        return Ok(());
    }
    let chosen = match requested {
        None => &regions[0],
        Some(r) => regions.iter().find(|(n, _)| n == r).ok_or_else(|| {
            format!(
                "region_name '{r}' is not one of its regions ({}); region names are case \
                 sensitive",
                regions
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?,
    };
    if requested.is_none()
        && let Some(Value::String(own)) = map.get("region_name")
        && own != &chosen.0
    {
        warnings.push(format!(
            "region_name '{own}' is ignored because regions: is listed (as openstacksdk does): \
             its first region, '{}', is used; set region_name in glance-sync's [clouds.X] to \
             choose another",
            chosen.0
        ));
    }
    map.insert("region_name".into(), Value::from(chosen.0.clone()));
    let values = chosen.1.clone();
    auth_update(entry, values);
    Ok(())
}

/// The cloud openstacksdk builds from `OS_*` variables: key = the lower-cased rest of the name.
fn from_env_vars(env: &Environment) -> Result<Value, String> {
    let mut entry = Map::new();
    for (k, v) in &env.vars {
        if let Some(rest) = k.strip_prefix("OS_")
            && ![
                "CLOUD",
                "CLOUD_NAME",
                "CLIENT_CONFIG_FILE",
                "CLIENT_SECURE_FILE",
            ]
            .contains(&rest)
            && !v.is_empty()
        {
            entry.insert(rest.to_ascii_lowercase(), Value::from(v.clone()));
        }
    }
    if let Some(token) = entry.remove("auth_token") {
        entry.entry("token").or_insert(token);
    }
    if !entry.contains_key("auth_url") && !entry.contains_key("token") {
        return Err("refers to the environment cloud, but no OS_AUTH_URL is set".into());
    }
    Ok(Value::Object(entry))
}

/// Keys of a clouds.yaml entry that glance-sync knowingly does not use: they configure other
/// services or client behaviour that has no bearing on the image service. Any other key it does
/// not use is warned about.
fn is_irrelevant(key: &str) -> bool {
    const KEYS: &[&str] = &[
        "identity_api_version",
        "image_api_version",
        "api_timeout",
        "cache",
        "networks",
        "floating_ip_source",
        "image_format",
        "disable_vendor_agent",
        "requires_floating_ip",
        "image_download_required",
        "interface_ip_version",
        "force_ipv4",
        "prefer_ipv6",
        "display_name",
        "message",
        "status",
        "split_loggers",
        "statsd_host",
        "statsd_port",
        "statsd_prefix",
        "influxdb_config",
        "metrics",
        "auth_methods",
        "secgroup_source",
        "nat_destination",
        "nat_source",
        "default_interface",
        "external_network",
        "internal_network",
        "identity_interface",
        "identity_endpoint_override",
        "identity_region_name",
    ];
    const SERVICE_SUFFIXES: &[&str] = &[
        "_api_version",
        "_endpoint_override",
        "_endpoint",
        "_interface",
        "_service_type",
        "_service_name",
        "_region_name",
        "_status_code_retries",
        "_connect_retries",
    ];
    KEYS.contains(&key)
        || (!key.starts_with("image_") && SERVICE_SUFFIXES.iter().any(|s| key.ends_with(s)))
}

/// Applies openstacksdk's aliases and precedences, moves auth keys found at the top level under
/// `auth` (which wins is openstacksdk's: the top level for project, domain and token keys,
/// `auth` for the rest), stringifies auth values, and keeps the keys glance-sync uses. Returns
/// the keys it did not use (other than the knowingly irrelevant ones).
fn normalise(entry: Value) -> Result<(Value, Vec<String>), String> {
    let Value::Object(raw) = entry else {
        return Err("the cloud entry is not a mapping of keys".into());
    };
    // Dashes are underscores at every depth.
    let canon = |m: Map<String, Value>| -> Map<String, Value> {
        m.into_iter()
            .map(|(k, v)| (k.replace('-', "_"), v))
            .collect()
    };
    let mut top = canon(raw);
    let mut auth = match top.remove("auth") {
        Some(Value::Object(a)) => canon(a),
        Some(Value::Null) | None => Map::new(),
        Some(other) => return Err(format!("auth: {other} is not a mapping of keys")),
    };
    let mut unused = Vec::new();

    // `*endpoint_type` is the old name of `*interface`, and openstacksdk lets it win.
    if let Some(v) = top.remove("endpoint_type") {
        top.insert("interface".into(), v);
    }
    if let Some(v) = top.remove("image_endpoint_type") {
        if top.get("image_interface").is_some_and(|i| i != &v) {
            return Err(
                "image_interface and image_endpoint_type (its old name) are both set, to \
                 different values: keep one"
                    .into(),
            );
        }
        top.insert("image_interface".into(), v);
    }
    for key in ["interface", "image_interface"] {
        if let Some(Value::String(s)) = top.get(key) {
            let s = s.trim_end_matches("URL").to_string();
            top.insert(key.into(), Value::from(s));
        }
    }
    if let Some(v) = top.remove("image_endpoint") {
        top.entry("image_endpoint_override").or_insert(v);
    }
    if let Some(insecure) = top.remove("insecure") {
        let insecure = insecure.as_bool().unwrap_or_else(|| {
            insecure
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("true"))
        });
        if insecure {
            top.insert("verify".into(), Value::from(false));
        }
    }
    if let Some(Value::String(s)) = top.get("verify") {
        // openstacksdk passes the string on to requests, which reads "false" as a CA file path
        // and fails; the meaning is plain.
        let b = !s.eq_ignore_ascii_case("false");
        top.insert("verify".into(), Value::from(b));
    }

    // Project, domain and token keys: the top level wins, and of the aliases the last listed.
    let aliases: &[(&str, &[&str])] = &[
        ("project_id", &["tenant_id", "project_id"]),
        ("project_name", &["tenant_name", "project_name"]),
        ("token", &["auth_token", "token"]),
    ];
    for (target, names) in aliases {
        let mut winner = None;
        for name in *names {
            for map in [&mut auth, &mut top] {
                if let Some(v) = map.remove(*name) {
                    winner = Some(v);
                }
            }
        }
        if let Some(v) = winner {
            auth.insert((*target).to_string(), v);
        }
    }
    for key in [
        "domain_id",
        "domain_name",
        "user_domain_id",
        "user_domain_name",
        "project_domain_id",
        "project_domain_name",
    ] {
        if let Some(v) = top.remove(key) {
            auth.insert(key.to_string(), v);
        }
    }
    // The other auth keys: `auth` wins.
    for key in AUTH_KEYS {
        if let Some(v) = top.remove(*key) {
            auth.entry((*key).to_string()).or_insert(v);
        }
    }
    // With no Keystone, `auth.endpoint` is the endpoint of every service.
    if let Some(endpoint) = auth.remove("endpoint") {
        top.entry("image_endpoint_override").or_insert(endpoint);
    }

    let mut out = Map::new();
    for key in CLOUD_KEYS {
        if let Some(v) = top.remove(*key) {
            out.insert((*key).to_string(), v);
        }
    }
    unused.extend(top.keys().filter(|k| !is_irrelevant(k)).cloned());
    let mut kept = Map::new();
    for (k, v) in auth {
        if !AUTH_KEYS.contains(&k.as_str()) {
            unused.push(format!("auth.{k}"));
            continue;
        }
        let s = match v {
            Value::Null => continue,
            Value::String(s) => s,
            other => other.to_string(),
        };
        kept.insert(k, Value::from(s));
    }
    if !kept.is_empty() {
        out.insert("auth".into(), Value::Object(kept));
    }
    Ok((Value::Object(out), unused))
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

    fn merge(name: &str, dir: &Path, vars: &[(&str, &str)]) -> Result<Resolved, String> {
        merge_over(name, &CloudEntry::default(), &env_with(dir, vars))
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
        let merged = merge_over("dr", &toml_entry, &env_with(dir.path(), &[]))
            .unwrap()
            .entry;
        assert_eq!(merged.region_name.as_deref(), Some("RegionThree"));
        assert_eq!(merged.interface.as_deref(), Some("internal"));
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
        let Err(err) = merge("zz", dir.path(), &[]) else {
            panic!("a missing cloud must be an error")
        };
        assert!(err.contains("it defines: a, b"), "{err}");
    }

    #[test]
    fn envvars_cloud_comes_from_os_variables() {
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            ("OS_AUTH_URL", "http://ks:5000/v3"),
            ("OS_USERNAME", "u"),
            ("OS_PASSWORD", "p"),
            ("OS_PROJECT_NAME", "proj"),
            ("OS_REGION_NAME", "R1"),
            ("OS_INSECURE", "true"),
        ];
        let merged = merge("envvars", dir.path(), &vars).unwrap().entry;
        assert_eq!(merged.auth.username.as_deref(), Some("u"));
        assert_eq!(merged.auth.password.as_deref(), Some("p"));
        assert_eq!(merged.region_name.as_deref(), Some("R1"));
        assert_eq!(merged.verify, Some(false));
    }

    #[test]
    fn the_search_path_is_openstacksdks_with_every_xdg_config_dir() {
        let vars: BTreeMap<String, String> = [
            ("HOME", "/home/u"),
            ("XDG_CONFIG_HOME", "/x/conf"),
            ("XDG_CONFIG_DIRS", "/a:relative:/b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let dirs = search_dirs(&vars, Some(Path::new("/cwd")));
        let dirs: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(
            dirs,
            [
                "/cwd",
                "/x/conf/openstack",
                "/home/u/.config/openstack",
                "/a/openstack",
                "/b/openstack",
                "/etc/openstack"
            ]
        );
        let plain: BTreeMap<String, String> = [("HOME".to_string(), "/h".to_string())].into();
        let dirs = search_dirs(&plain, None);
        assert_eq!(
            dirs,
            [
                PathBuf::from("/h/.config/openstack"),
                PathBuf::from("/etc/xdg/openstack"),
                PathBuf::from("/etc/openstack")
            ]
        );
    }

    #[test]
    fn regions_listed_choose_the_first_and_apply_its_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  c:\n    region_name: R1\n    regions:\n      - name: R2\n        values:\n          \
             image_interface: internal\n      - R1\n    auth: {auth_url: 'http://ks/v3'}\n",
        )
        .unwrap();
        let r = merge("c", dir.path(), &[]).unwrap();
        assert_eq!(r.entry.region_name.as_deref(), Some("R2"));
        assert_eq!(r.entry.image_interface.as_deref(), Some("internal"));
        assert!(
            r.warnings[0].contains("region_name 'R1' is ignored"),
            "{:?}",
            r.warnings
        );
        let toml = CloudEntry {
            region_name: Some("R9".into()),
            ..Default::default()
        };
        let err = merge_over("c", &toml, &env_with(dir.path(), &[]))
            .err()
            .unwrap();
        assert!(err.contains("not one of its regions (R2, R1)"), "{err}");
    }

    #[test]
    fn a_profile_from_clouds_public_yaml_is_under_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("clouds-public.yaml"),
            "public-clouds:\n  acme:\n    auth: {auth_url: 'https://ks.acme/v3', project_name: p0}\n    \
             regions: [east, west]\n    image_interface: internal\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  c:\n    profile: acme\n    auth: {username: u, project_name: mine}\n",
        )
        .unwrap();
        let r = merge("c", dir.path(), &[]).unwrap().entry;
        assert_eq!(r.auth.auth_url.as_deref(), Some("https://ks.acme/v3"));
        assert_eq!(
            r.auth.project_name.as_deref(),
            Some("mine"),
            "the entry wins"
        );
        assert_eq!(r.region_name.as_deref(), Some("east"));
        assert_eq!(r.image_interface.as_deref(), Some("internal"));
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  c:\n    profile: nosuch\n",
        )
        .unwrap();
        let err = merge("c", dir.path(), &[]).err().unwrap();
        assert!(
            err.contains("profile 'nosuch', which is unknown")
                && err.contains("clouds-public.yaml"),
            "{err}"
        );
    }

    #[test]
    fn keys_glance_sync_does_not_use_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  c:\n    compute_api_version: 2\n    client_cert_thing: x\n    \
             auth: {auth_url: 'http://ks/v3', bogus: 1}\n",
        )
        .unwrap();
        let r = merge("c", dir.path(), &[]).unwrap();
        let said = r.warnings.join("\n");
        assert!(said.contains("key 'client_cert_thing'"), "{said}");
        assert!(said.contains("key 'auth.bogus'"), "{said}");
        assert!(!said.contains("compute_api_version"), "{said}");
    }

    #[test]
    fn the_default_cloud_is_os_cloud_then_envvars_then_the_only_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  only:\n    auth: {auth_url: 'http://only/v3'}\n",
        )
        .unwrap();
        let url = |vars: &[(&str, &str)]| {
            merge(DEFAULT_CLOUD, dir.path(), vars)
                .map(|r| r.entry.auth.auth_url.unwrap_or_default())
        };
        assert_eq!(url(&[]).unwrap(), "http://only/v3");
        assert_eq!(
            url(&[("OS_AUTH_URL", "http://env/v3")]).unwrap(),
            "http://env/v3"
        );
        assert_eq!(
            url(&[("OS_AUTH_URL", "http://env/v3"), ("OS_CLOUD", "only")]).unwrap(),
            "http://only/v3"
        );
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  a: {}\n  b: {}\n",
        )
        .unwrap();
        assert!(url(&[]).unwrap_err().contains("set OS_CLOUD"));
    }

    #[test]
    fn secure_yaml_alone_is_enough() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("secure.yaml"),
            "clouds:\n  c:\n    auth: {auth_url: 'http://ks/v3', password: s}\n",
        )
        .unwrap();
        let r = merge("c", dir.path(), &[]).unwrap().entry;
        assert_eq!(r.auth.password.as_deref(), Some("s"));
    }

    #[test]
    fn top_level_project_keys_win_and_endpoint_type_beats_interface() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  c:\n    project_name: TOP\n    interface: public\n    endpoint_type: admin\n    \
             auth: {auth_url: 'http://ks/v3', project_name: AUTH, username: inner}\n    username: outer\n",
        )
        .unwrap();
        let r = merge("c", dir.path(), &[]).unwrap().entry;
        assert_eq!(r.auth.project_name.as_deref(), Some("TOP"));
        assert_eq!(r.auth.username.as_deref(), Some("inner"));
        assert_eq!(r.interface.as_deref(), Some("admin"));
    }
}
