//! The policy file: which clouds exist, how to authenticate to each, and which jobs copy what where.
//!
//! Loading turns the TOML (plus clouds.yaml, secure.yaml and `OS_*` variables for clouds that refer to
//! them) into validated, resolved types. Nothing here talks to a network; nothing outside this module
//! parses configuration.

mod clouds_yaml;
mod permissions;
mod policy;

pub use policy::{
    Globs, MetadataRules, OwnerRule, PreserveIds, ProjectMap, TargetPolicy, TransferMethod,
};
use policy::{KeyPath, PathPart, key};

use jiff::tz::TimeZone;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::image::Image;
use crate::schedule::Schedule;
use std::net::SocketAddr;

/// Where the config is read from when neither `--config` nor `$GLANCE_SYNC_CONFIG` says.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/glance-sync/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cloud '{cloud}' in {path}: {message}")]
    Cloud {
        path: PathBuf,
        cloud: String,
        message: String,
    },
}

/// The validated policy.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub state_path: PathBuf,
    pub transfer: TransferSettings,
    pub daemon: DaemonSettings,
    pub metrics: MetricsSettings,
    pub clouds: BTreeMap<String, CloudConfig>,
    pub jobs: Vec<Job>,
}

#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// How long transfers in flight get to abort and clean up after SIGTERM.
    pub shutdown_grace: std::time::Duration,
}

/// `[metrics]`: the daemon's HTTP listener and where one-shot runs push their metrics.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// Where `/metrics`, `/healthz`, `/readyz` and the status page are served.
    pub listen: SocketAddr,
    /// When set, every path but `/healthz` and `/readyz` needs `Authorization: Bearer <token>`,
    /// the token being this file's content. Only the daemon reads it (`bearer_token`), so
    /// `plan` or `status` run by another user do not need to.
    pub bearer_token_file: Option<PathBuf>,
    /// The Pushgateway `run` pushes its metrics to (`--pushgateway` overrides it).
    pub pushgateway: Option<url::Url>,
}

#[derive(Debug, Clone)]
pub struct TransferSettings {
    /// Images in flight at once, each streamed to all its targets.
    pub max_parallel_images: usize,
    /// A download or upload that moves no byte for this long fails.
    pub stall_timeout: std::time::Duration,
    /// Whole-request timeout for API calls that carry no image data.
    pub api_timeout: std::time::Duration,
    /// Retries of a request that failed in a way that may pass (connection error, timeout, 408,
    /// 429, 5xx gateway errors), and resumes of a broken download.
    pub retries: usize,
    /// The longest wait between two retries (exponential backoff with jitter up to this).
    pub retry_max_delay: std::time::Duration,
    /// Nice value (0-19) of the threads that hash a transfer: above 0 they yield to the threads
    /// that move bytes (see verify.rs).
    pub hashing_nice: i32,
    /// Which of the source's digests a copy computes and checks.
    pub verify_digests: VerifyDigests,
    /// The limit on all source downloads of the process together.
    pub max_bandwidth: crate::bandwidth::Limit,
}

/// `[transfer] verify_digests`: which digests a copy computes while the bytes stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyDigests {
    /// The source's multihash alone (`os_hash_algo`); MD5 only for a source that has no
    /// multihash. A match of the multihash proves the bytes as well as both would.
    Strongest,
    /// MD5 and the multihash, each checked against what the source recorded.
    All,
}

/// One cloud, resolved: its credentials and how to find its image endpoint.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub name: String,
    pub auth: AuthConfig,
    pub region_name: Option<String>,
    pub interface: String,
    pub cacert: Option<PathBuf>,
    pub verify: bool,
    pub image_endpoint_override: Option<String>,
    /// The project glance-sync works as, for clouds without Keystone (`[clouds.X] project_id`);
    /// with Keystone it comes from the token.
    pub project_id: Option<String>,
}

/// What a cloud's configuration resolved to, without secrets: what `glance-sync check --format
/// json` prints, so that people and tests can compare it with what openstacksdk resolves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResolvedCloud {
    pub auth_type: String,
    pub auth_url: Option<String>,
    pub username: Option<String>,
    pub user_id: Option<String>,
    pub user_domain_id: Option<String>,
    pub user_domain_name: Option<String>,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub project_domain_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub application_credential_id: Option<String>,
    pub application_credential_name: Option<String>,
    pub region_name: Option<String>,
    pub interface: String,
    pub image_endpoint_override: Option<String>,
    pub verify: bool,
    pub cacert: Option<PathBuf>,
}

impl CloudConfig {
    pub fn resolved(&self) -> ResolvedCloud {
        let mut r = ResolvedCloud {
            region_name: self.region_name.clone(),
            interface: self.interface.clone(),
            image_endpoint_override: self.image_endpoint_override.clone(),
            verify: self.verify,
            cacert: self.cacert.clone(),
            project_id: self.project_id.clone(),
            ..Default::default()
        };
        let domain = |d: &DomainRef| match d {
            DomainRef::Id(id) => (Some(id.clone()), None),
            DomainRef::Name(n) => (None, Some(n.clone())),
        };
        let user = |u: &UserRef, r: &mut ResolvedCloud| match u {
            UserRef::Id(id) => r.user_id = Some(id.clone()),
            UserRef::Name { name, domain: d } => {
                r.username = Some(name.clone());
                (r.user_domain_id, r.user_domain_name) = domain(d);
            }
        };
        let project = |p: &ProjectRef, r: &mut ResolvedCloud| match p {
            ProjectRef::Id(id) => r.project_id = Some(id.clone()),
            ProjectRef::Name { name, domain: d } => {
                r.project_name = Some(name.clone());
                (r.project_domain_id, r.project_domain_name) = domain(d);
            }
        };
        match &self.auth {
            AuthConfig::Password {
                auth_url,
                user: u,
                project: p,
                ..
            } => {
                r.auth_type = "password".into();
                r.auth_url = Some(auth_url.clone());
                user(u, &mut r);
                project(p, &mut r);
            }
            AuthConfig::ApplicationCredential {
                auth_url,
                credential,
                ..
            } => {
                r.auth_type = "v3applicationcredential".into();
                r.auth_url = Some(auth_url.clone());
                match credential {
                    AppCredentialRef::Id(id) => r.application_credential_id = Some(id.clone()),
                    AppCredentialRef::Name { name, user: u } => {
                        r.application_credential_name = Some(name.clone());
                        user(u, &mut r);
                    }
                }
            }
            AuthConfig::Token {
                auth_url,
                project: p,
                ..
            } => {
                r.auth_type = "token".into();
                r.auth_url = auth_url.clone();
                if let Some(p) = p {
                    project(p, &mut r);
                }
            }
            AuthConfig::None => r.auth_type = "none".into(),
        }
        r
    }
}

/// How a cloud authenticates. Secrets are `SecretString`s: they print as `[REDACTED]`.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    Password {
        auth_url: String,
        user: UserRef,
        password: SecretString,
        project: ProjectRef,
    },
    ApplicationCredential {
        auth_url: String,
        credential: AppCredentialRef,
        secret: SecretString,
    },
    /// An existing token; re-scoped through Keystone when `auth_url` is known.
    Token {
        auth_url: Option<String>,
        token: SecretString,
        project: Option<ProjectRef>,
    },
    /// No Keystone: requires `image_endpoint_override`.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProjectRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

#[derive(Debug, Clone, PartialEq)]
pub enum DomainRef {
    Id(String),
    Name(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AppCredentialRef {
    Id(String),
    Name { name: String, user: UserRef },
}

/// A replication job: images of `source` selected by `filter`, kept on every target.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub source: String,
    pub targets: Vec<String>,
    /// What the job does on each target (ids, metadata rules); see [`Job::policy`].
    pub policies: BTreeMap<String, TargetPolicy>,
    pub filter: Filter,
    /// When the daemon runs the job; `None` for jobs only run by `glance-sync run`.
    pub schedule: Option<Schedule>,
    /// What happens to our copies whose source image is gone.
    pub prune: PrunePolicy,
    /// Whether the daemon runs the job as soon as it starts, before the first scheduled time.
    pub run_on_start: bool,
    /// The limit on this job's source downloads together (beside the process's).
    pub max_bandwidth: crate::bandwidth::Limit,
}

impl Job {
    /// The job's policy on `target` (the default one for a cloud that is not its target).
    pub fn policy(&self, target: &str) -> &TargetPolicy {
        static DEFAULT: std::sync::OnceLock<TargetPolicy> = std::sync::OnceLock::new();
        self.policies
            .get(target)
            .unwrap_or_else(|| DEFAULT.get_or_init(TargetPolicy::default))
    }
}

/// Pruning of copies whose source image no longer exists. Only images glance-sync created are
/// ever pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePolicy {
    pub mode: PruneMode,
    /// Whether protected copies may be pruned (they are unprotected first).
    pub protected: bool,
    /// Above this many deletions in one run, nothing is deleted and the run fails.
    pub max_deletes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMode {
    Off,
    /// Set os_hidden: instances keep working, listings stay clean.
    Hide,
    Delete,
}

impl Default for PrunePolicy {
    fn default() -> PrunePolicy {
        PrunePolicy {
            mode: PruneMode::Off,
            protected: false,
            max_deletes: 10,
        }
    }
}

/// Which source images a job selects.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
    tags: Vec<String>,
    visibility: Vec<String>,
    owners: Owners,
    /// Property name and the glob its value must match.
    properties: Vec<(String, Globs)>,
    disk_formats: Vec<String>,
    min_size: Option<u64>,
    max_size: Option<u64>,
}

/// Whose private and shared source images a job copies, besides those of the project it
/// authenticates as (public and community images are always candidates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owners {
    /// Only the job's own project (the default).
    Own,
    /// Also these projects (ids).
    Listed(Vec<String>),
    /// Every project: `owners = ["*"]`.
    All,
}

impl Filter {
    pub fn everything() -> Filter {
        Filter {
            include: None,
            exclude: GlobSet::empty(),
            tags: vec![],
            visibility: vec![],
            owners: Owners::Own,
            properties: vec![],
            disk_formats: vec![],
            min_size: None,
            max_size: None,
        }
    }

    /// Whether `filter.owners` lets the job copy private and shared images of project `owner`
    /// (the job's own project is allowed without it).
    pub fn allows_owner(&self, owner: Option<&str>) -> bool {
        match &self.owners {
            Owners::Own => false,
            Owners::All => true,
            Owners::Listed(ids) => owner.is_some_and(|o| ids.iter().any(|id| id == o)),
        }
    }

    #[cfg(test)]
    pub(crate) fn with_owners(mut self, owners: Owners) -> Filter {
        self.owners = owners;
        self
    }

    pub fn selects(&self, image: &Image) -> bool {
        let name = image.name.as_deref().unwrap_or("");
        let size = image.size.unwrap_or(0);
        self.include.as_ref().is_none_or(|g| g.is_match(name))
            && !self.exclude.is_match(name)
            && self.tags.iter().all(|t| image.tags.contains(t))
            && (self.visibility.is_empty() || self.visibility.contains(&image.visibility))
            && self
                .properties
                .iter()
                .all(|(k, g)| image.property(k).is_some_and(|v| g.is_match(v)))
            && (self.disk_formats.is_empty()
                || image
                    .disk_format
                    .as_ref()
                    .is_some_and(|f| self.disk_formats.contains(f)))
            && self.min_size.is_none_or(|min| size >= min)
            && self.max_size.is_none_or(|max| size <= max)
    }
}

/// A Pushgateway's base URL, from the config or `--pushgateway`.
pub fn pushgateway_url(text: &str, what: &str) -> Result<url::Url, String> {
    // What an error quotes: never a password given in the URL (user:password@host).
    let shown = match (text.find("://"), text.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://…@{}", &text[..scheme_end], &text[at + 1..])
        }
        _ => text.to_string(),
    };
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(u),
        Ok(u) => Err(format!(
            "{what} is {shown:?}: the scheme must be http or https, not {}",
            u.scheme()
        )),
        Err(e) => Err(format!(
            "{what} is {shown:?}, not a URL ({e}); write it as \"http://pushgateway.example:9091\""
        )),
    }
}

#[cfg(test)]
mod pushgateway_url_tests {
    use super::pushgateway_url;

    #[test]
    fn a_pushgateway_url_keeps_its_credentials_but_errors_never_show_them() {
        let u = pushgateway_url("https://user:s3cret@pg:9091", "x").unwrap();
        assert_eq!(u.password(), Some("s3cret"));
        let e = pushgateway_url("ftp://user:s3cret@pg:9091", "x").unwrap_err();
        assert!(!e.contains("s3cret") && e.contains("ftp"), "{e}");
        let e = pushgateway_url("http://user:s3cret@[pg", "x").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}

impl MetricsSettings {
    /// The token of `bearer_token_file`: the file's content without surrounding whitespace.
    pub fn bearer_token(&self) -> Result<Option<SecretString>, String> {
        self.bearer_token_file
            .as_deref()
            .map(read_bearer_token)
            .transpose()
    }
}

fn read_bearer_token(full: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(full).map_err(|e| {
        format!(
            "[metrics] bearer_token_file {}: cannot read it: {e}; the daemon's user must be able \
             to read it",
            full.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "[metrics] bearer_token_file {} must hold one token (no spaces, not empty)",
            full.display()
        ));
    }
    Ok(SecretString::from(token.to_string()))
}

// ---- the file as written --------------------------------------------------------------------

// No Debug on the file's structs: they hold secrets as plain strings until resolved.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    state: StateSection,
    #[serde(default)]
    transfer: TransferSection,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    daemon: DaemonSection,
    #[serde(default)]
    clouds: BTreeMap<String, CloudEntry>,
    #[serde(default)]
    jobs: Vec<JobEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateSection {
    path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: Option<SocketAddr>,
    bearer_token_file: Option<PathBuf>,
    pushgateway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    shutdown_grace: Option<jiff::SignedDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferSection {
    max_parallel_images: Option<usize>,
    stall_timeout: Option<jiff::SignedDuration>,
    api_timeout: Option<jiff::SignedDuration>,
    retries: Option<usize>,
    retry_max_delay: Option<jiff::SignedDuration>,
    hashing_nice: Option<i32>,
    verify_digests: Option<VerifyDigests>,
    max_bandwidth: Option<toml::Value>,
}

/// The keys of a clouds.yaml cloud entry that glance-sync understands, plus `cloud` to refer to one.
/// Also the shape a clouds.yaml entry is read into (after dropping keys we do not use).
#[derive(Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CloudEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    cloud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<String>,
    /// The interface for the image service alone; wins over `interface`.
    #[serde(skip_serializing_if = "Option::is_none")]
    image_interface: Option<String>,
    /// The region for the image service alone; wins over `region_name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    image_region_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cacert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_endpoint_override: Option<String>,
    /// glance-sync's own key (not a clouds.yaml one, so not in `CLOUD_KEYS`): the project a
    /// cloud without Keystone works as.
    #[serde(skip_serializing_if = "Option::is_none")]
    project_id: Option<String>,
    #[serde(default, skip_serializing_if = "AuthEntry::is_empty")]
    auth: AuthEntry,
}

#[derive(Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_domain_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_domain_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project_domain_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project_domain_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_domain_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_domain_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    application_credential_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    application_credential_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    application_credential_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl AuthEntry {
    fn is_empty(&self) -> bool {
        *self == AuthEntry::default()
    }
}

/// Keys of [`CloudEntry`] (without `cloud` and `auth`) and of [`AuthEntry`], used to keep only
/// what we understand from a clouds.yaml entry, which may carry many more.
pub(crate) const CLOUD_KEYS: &[&str] = &[
    "auth_type",
    "region_name",
    "interface",
    "image_interface",
    "image_region_name",
    "cacert",
    "verify",
    "image_endpoint_override",
];
pub(crate) const AUTH_KEYS: &[&str] = &[
    "auth_url",
    "username",
    "user_id",
    "password",
    "project_name",
    "project_id",
    "user_domain_name",
    "user_domain_id",
    "project_domain_name",
    "project_domain_id",
    "domain_name",
    "domain_id",
    "default_domain_id",
    "default_domain_name",
    "application_credential_id",
    "application_credential_name",
    "application_credential_secret",
    "token",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobEntry {
    name: String,
    source: String,
    /// Cloud names, or tables `{ cloud, preserve_ids, metadata, transfer, stores }` (read by
    /// `policy`).
    targets: Vec<toml::Value>,
    preserve_ids: Option<toml::Value>,
    transfer: Option<toml::Value>,
    stores: Option<toml::Value>,
    metadata: Option<toml::Value>,
    #[serde(default)]
    filter: FilterEntry,
    schedule: Option<String>,
    timezone: Option<String>,
    interval: Option<jiff::SignedDuration>,
    run_on_start: Option<bool>,
    prune: Option<String>,
    prune_protected: Option<bool>,
    max_deletes: Option<usize>,
    max_bandwidth: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterEntry {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    visibility: Vec<String>,
    /// Project ids whose private and shared images the job copies too; `["*"]` for all.
    #[serde(default)]
    owners: Vec<String>,
    /// Property name → glob; all must match.
    properties: Option<toml::Value>,
    #[serde(default)]
    disk_formats: Vec<String>,
    min_size: Option<toml::Value>,
    max_size: Option<toml::Value>,
}

const VISIBILITIES: &[&str] = &["public", "community", "shared", "private"];

// ---- loading --------------------------------------------------------------------------------

impl Config {
    /// Reads, resolves and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(warning) = permissions::secrets_readable_by_others(path, &text) {
            tracing::warn!("{warning}");
        }
        Config::parse(path, &text, &clouds_yaml::Environment::from_process())
    }

    fn parse(
        path: &Path,
        text: &str,
        env: &clouds_yaml::Environment,
    ) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };

        let mut clouds = BTreeMap::new();
        for (name, entry) in &file.clouds {
            let mut warnings = Vec::new();
            let cloud = resolve_cloud(name, entry, env, &mut warnings).map_err(|message| {
                ConfigError::Cloud {
                    path: path.to_path_buf(),
                    cloud: name.clone(),
                    message,
                }
            })?;
            // Nothing a cloud's configuration says is dropped silently.
            for w in warnings {
                tracing::warn!(cloud = %name, "{}, [clouds.{name}]: {w}", path.display());
            }
            clouds.insert(name.clone(), cloud);
        }

        if file.jobs.is_empty() {
            return Err(invalid(
                "no [[jobs]] defined: add at least one job with name, source and targets".into(),
            ));
        }
        let mut names = BTreeSet::new();
        let mut jobs = Vec::new();
        for (i, job) in file.jobs.iter().enumerate() {
            let validated = validate_job(job, &clouds, &mut names).map_err(|(path, message)| {
                let mut full = vec![PathPart::Key("jobs".into()), PathPart::Index(i)];
                full.extend(path.iter().cloned());
                let named = path
                    .iter()
                    .map(|p| match p {
                        PathPart::Key(k) => format!(".{k}"),
                        PathPart::Index(i) => format!("[{i}]"),
                    })
                    .collect::<String>();
                let at = policy::line_of_path(text, &full).map(|line| {
                    if named.is_empty() {
                        format!("line {line} ([[jobs]] entry)")
                    } else {
                        format!("line {line}, key '{}'", named.trim_start_matches('.'))
                    }
                });
                invalid(match at {
                    Some(at) => format!("{at}: {message}"),
                    None => message,
                })
            })?;
            jobs.push(validated);
        }

        let transfer = TransferSettings {
            max_parallel_images: file.transfer.max_parallel_images.unwrap_or(2),
            stall_timeout: positive_duration(
                file.transfer.stall_timeout,
                60,
                "[transfer] stall_timeout",
            )
            .map_err(&invalid)?,
            api_timeout: positive_duration(
                file.transfer.api_timeout,
                300,
                "[transfer] api_timeout",
            )
            .map_err(&invalid)?,
            retries: file.transfer.retries.unwrap_or(4),
            retry_max_delay: positive_duration(
                file.transfer.retry_max_delay,
                30,
                "[transfer] retry_max_delay",
            )
            .map_err(&invalid)?,
            hashing_nice: file.transfer.hashing_nice.unwrap_or(19),
            verify_digests: file
                .transfer
                .verify_digests
                .unwrap_or(VerifyDigests::Strongest),
            max_bandwidth: match &file.transfer.max_bandwidth {
                None => crate::bandwidth::Limit::NONE,
                Some(v) => bandwidth_limit(v, TimeZone::system())
                    .map_err(|e| invalid(format!("[transfer] max_bandwidth: {e}")))?,
            },
        };
        if !(0..=19).contains(&transfer.hashing_nice) {
            return Err(invalid(format!(
                "[transfer] hashing_nice is {}: it must be between 0 (normal priority) and 19 (lowest)",
                transfer.hashing_nice
            )));
        }
        if transfer.max_parallel_images == 0 {
            return Err(invalid(
                "[transfer] max_parallel_images must be at least 1".into(),
            ));
        }

        let metrics = MetricsSettings {
            listen: file
                .metrics
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9420))),
            bearer_token_file: file.metrics.bearer_token_file,
            pushgateway: file
                .metrics
                .pushgateway
                .as_deref()
                .map(|u| pushgateway_url(u, "[metrics] pushgateway"))
                .transpose()
                .map_err(&invalid)?,
        };
        let daemon = DaemonSettings {
            shutdown_grace: positive_duration(
                file.daemon.shutdown_grace,
                30,
                "[daemon] shutdown_grace",
            )
            .map_err(&invalid)?,
        };

        Ok(Config {
            path: path.to_path_buf(),
            state_path: file.state.path,
            metrics,
            transfer,
            daemon,
            clouds,
            jobs,
        })
    }

    /// The jobs named in `wanted`, or all of them when it is empty.
    pub fn select_jobs(&self, wanted: &[String]) -> Result<Vec<Job>, ConfigError> {
        if wanted.is_empty() {
            return Ok(self.jobs.clone());
        }
        wanted
            .iter()
            .map(|name| {
                self.jobs
                    .iter()
                    .find(|j| &j.name == name)
                    .cloned()
                    .ok_or_else(|| ConfigError::Invalid {
                        path: self.path.clone(),
                        message: format!(
                            "no job named '{name}' (jobs: {})",
                            self.jobs
                                .iter()
                                .map(|j| j.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })
            })
            .collect()
    }
}

fn positive_duration(
    value: Option<jiff::SignedDuration>,
    default_secs: u64,
    key: &str,
) -> Result<std::time::Duration, String> {
    match value {
        None => Ok(std::time::Duration::from_secs(default_secs)),
        Some(d) => std::time::Duration::try_from(d)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{key} must be a positive duration such as \"60s\"")),
    }
}

fn validate_job(
    job: &JobEntry,
    clouds: &BTreeMap<String, CloudConfig>,
    names: &mut BTreeSet<String>,
) -> Result<Job, policy::Invalid> {
    let at = format!("job '{}'", job.name);
    let err = |path: &[&str], message: String| (key(path), format!("{at}: {message}"));
    if job.name.is_empty() {
        return Err((key(&["name"]), "a job has an empty name".into()));
    }
    if !names.insert(job.name.clone()) {
        return Err(err(&["name"], "is defined twice".into()));
    }
    let known = || clouds.keys().cloned().collect::<Vec<_>>().join(", ");
    if !clouds.contains_key(&job.source) {
        return Err(err(
            &["source"],
            format!(
                "source '{}' is not a cloud defined under [clouds] (defined: {})",
                job.source,
                known()
            ),
        ));
    }
    if job.targets.is_empty() {
        return Err(err(
            &["targets"],
            "targets is empty; name at least one cloud".into(),
        ));
    }
    let prefixed = |(path, message): policy::Invalid| (path, format!("{at}: {message}"));
    let job_preserve = match &job.preserve_ids {
        Some(v) => policy::preserve_ids(v, &key(&["preserve_ids"])).map_err(prefixed)?,
        None => PreserveIds::Off,
    };
    let job_metadata = match &job.metadata {
        Some(v) => {
            policy::metadata(v, &key(&["metadata"]), &MetadataRules::default()).map_err(prefixed)?
        }
        None => MetadataRules::default(),
    };
    let job_transfer = match &job.transfer {
        Some(v) => policy::transfer(v, &key(&["transfer"])).map_err(prefixed)?,
        None => TransferMethod::default(),
    };
    let job_stores = match &job.stores {
        Some(v) => policy::stores(v, &key(&["stores"])).map_err(prefixed)?,
        None => vec![],
    };
    let mut targets = Vec::new();
    let mut policies = BTreeMap::new();
    for (i, entry) in job.targets.iter().enumerate() {
        let here: KeyPath = vec![PathPart::Key("targets".into()), PathPart::Index(i)];
        let sub = |k: &str| {
            let mut p = here.clone();
            p.push(PathPart::Key(k.into()));
            p
        };
        let mut target_policy = TargetPolicy {
            preserve_ids: job_preserve,
            metadata: job_metadata.clone(),
            transfer: job_transfer,
            stores: job_stores.clone(),
        };
        let t = match entry {
            toml::Value::String(t) => t.clone(),
            toml::Value::Table(table) => {
                for k in table.keys() {
                    const KEYS: [&str; 5] =
                        ["cloud", "preserve_ids", "metadata", "transfer", "stores"];
                    if !KEYS.contains(&k.as_str()) {
                        return Err((
                            sub(k),
                            format!("{at}: unknown key '{k}' in a target ({})", KEYS.join(", ")),
                        ));
                    }
                }
                let cloud = table
                    .get("cloud")
                    .and_then(toml::Value::as_str)
                    .ok_or_else(|| {
                        (
                            here.clone(),
                            format!("{at}: a target table needs cloud = \"NAME\""),
                        )
                    })?;
                if let Some(v) = table.get("preserve_ids") {
                    target_policy.preserve_ids =
                        policy::preserve_ids(v, &sub("preserve_ids")).map_err(prefixed)?;
                }
                if let Some(v) = table.get("metadata") {
                    target_policy.metadata =
                        policy::metadata(v, &sub("metadata"), &job_metadata).map_err(prefixed)?;
                }
                if let Some(v) = table.get("transfer") {
                    target_policy.transfer =
                        policy::transfer(v, &sub("transfer")).map_err(prefixed)?;
                }
                if let Some(v) = table.get("stores") {
                    target_policy.stores = policy::stores(v, &sub("stores")).map_err(prefixed)?;
                }
                cloud.to_string()
            }
            other => {
                return Err((
                    here,
                    format!(
                        "{at}: a target is a cloud name or a table, not {}",
                        other.type_str()
                    ),
                ));
            }
        };
        if !clouds.contains_key(&t) {
            return Err((
                here,
                format!(
                    "{at}: target '{t}' is not a cloud defined under [clouds] (defined: {})",
                    known()
                ),
            ));
        }
        if t == job.source {
            return Err((
                here,
                format!(
                    "{at}: cloud '{t}' is both source and target; an image cannot be copied onto itself"
                ),
            ));
        }
        if targets.contains(&t) {
            return Err((here, format!("{at}: target '{t}' is listed twice")));
        }
        targets.push(t.clone());
        policies.insert(t, target_policy);
    }
    for v in &job.filter.visibility {
        if !VISIBILITIES.contains(&v.as_str()) {
            return Err(err(
                &["filter", "visibility"],
                format!(
                    "filter.visibility '{v}' is not one of {}",
                    VISIBILITIES.join(", ")
                ),
            ));
        }
    }
    let globs = |patterns: &[String], name: &str| -> Result<GlobSet, policy::Invalid> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(
                Glob::new(p)
                    .map_err(|e| err(&["filter", name], format!("filter.{name} '{p}': {e}")))?,
            );
        }
        b.build()
            .map_err(|e| err(&["filter", name], format!("filter.{name}: {e}")))
    };
    let schedule = match (&job.schedule, &job.interval, &job.timezone) {
        (Some(_), Some(_), _) => {
            return Err(err(
                &["interval"],
                "set schedule or interval, not both".into(),
            ));
        }
        (None, _, Some(_))
            if !job
                .max_bandwidth
                .as_ref()
                .is_some_and(toml::Value::is_table) =>
        {
            return Err(err(
                &["timezone"],
                "timezone applies to schedule and to a max_bandwidth timetable, neither of \
                 which is set"
                    .into(),
            ));
        }
        (None, Some(d), _) => Some(Schedule::Interval(
            positive_duration(Some(*d), 0, "interval").map_err(|e| err(&["interval"], e))?,
        )),
        (None, None, _) => None,
        (Some(expr), None, tz) => {
            let k = if e_is_tz(expr, tz.as_deref()) {
                "timezone"
            } else {
                "schedule"
            };
            Some(Schedule::cron(expr, tz.as_deref()).map_err(|e| err(&[k], e.to_string()))?)
        }
    };
    let max_bandwidth = match &job.max_bandwidth {
        None => crate::bandwidth::Limit::NONE,
        Some(v) => {
            let timezone = match &job.timezone {
                // Already checked with the schedule.
                Some(name) => TimeZone::get(name).map_err(|e| {
                    err(
                        &["timezone"],
                        format!("timezone \"{name}\" is not a known IANA time zone: {e}"),
                    )
                })?,
                // As for the job's schedule.
                None => TimeZone::UTC,
            };
            bandwidth_limit(v, timezone)
                .map_err(|e| err(&["max_bandwidth"], format!("max_bandwidth: {e}")))?
        }
    };
    let size = |v: &Option<toml::Value>, name: &str| -> Result<Option<u64>, policy::Invalid> {
        v.as_ref()
            .map(|v| {
                policy::size(v, &key(&["filter", name]), &format!("filter.{name}"))
                    .map_err(prefixed)
            })
            .transpose()
    };
    Ok(Job {
        schedule,
        max_bandwidth,
        run_on_start: job.run_on_start.unwrap_or(true),
        prune: PrunePolicy {
            mode: match job.prune.as_deref() {
                None | Some("off") => PruneMode::Off,
                Some("hide") => PruneMode::Hide,
                Some("delete") => PruneMode::Delete,
                Some(other) => {
                    return Err(err(
                        &["prune"],
                        format!("prune = \"{other}\" is not one of \"off\", \"hide\", \"delete\""),
                    ));
                }
            },
            protected: job.prune_protected.unwrap_or(false),
            max_deletes: job.max_deletes.unwrap_or(10),
        },
        name: job.name.clone(),
        source: job.source.clone(),
        targets,
        policies,
        filter: Filter {
            include: if job.filter.include.is_empty() {
                None
            } else {
                Some(globs(&job.filter.include, "include")?)
            },
            exclude: globs(&job.filter.exclude, "exclude")?,
            tags: job.filter.tags.clone(),
            visibility: job.filter.visibility.clone(),
            owners: match job.filter.owners.as_slice() {
                [] => Owners::Own,
                [all] if all == "*" => Owners::All,
                ids if ids.iter().any(|id| id == "*") => {
                    return Err(err(
                        &["filter", "owners"],
                        "filter.owners mixes \"*\" with project ids; \"*\" alone means every \
                         project"
                            .into(),
                    ));
                }
                ids => Owners::Listed(ids.to_vec()),
            },
            properties: match &job.filter.properties {
                Some(v) => {
                    policy::property_globs(v, &key(&["filter", "properties"])).map_err(prefixed)?
                }
                None => vec![],
            },
            disk_formats: job.filter.disk_formats.clone(),
            min_size: size(&job.filter.min_size, "min_size")?,
            max_size: size(&job.filter.max_size, "max_size")?,
        },
    })
}

/// Whether a cron schedule fails because of its time zone rather than its expression.
/// `max_bandwidth`: a rate string, or a table of "HH:MM" = rate (a daily timetable).
fn bandwidth_limit(v: &toml::Value, timezone: TimeZone) -> Result<crate::bandwidth::Limit, String> {
    match v {
        toml::Value::String(rate) => {
            crate::bandwidth::parse_rate(rate).map(crate::bandwidth::Limit::Fixed)
        }
        toml::Value::Table(t) => {
            let entries = t
                .iter()
                .map(|(at, rate)| match rate {
                    toml::Value::String(r) => Ok((at.clone(), r.clone())),
                    _ => Err(format!("\"{at}\" = {rate}: the rate must be a string such as \"20MiB/s\" or \"off\"")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            crate::bandwidth::parse_timetable(&entries, timezone)
        }
        other => Err(format!(
            "{other} is neither a rate (\"100MiB/s\") nor a timetable ({{ \"08:00\" = \"20MiB/s\", \"20:00\" = \"off\" }})"
        )),
    }
}

fn e_is_tz(expr: &str, tz: Option<&str>) -> bool {
    Schedule::cron(expr, None).is_ok() && tz.is_some()
}

/// Merges the TOML entry over the clouds.yaml entry it refers to, then turns the result into a
/// [`CloudConfig`]. Errors are plain messages; the caller adds the file and cloud name.
fn resolve_cloud(
    name: &str,
    entry: &CloudEntry,
    env: &clouds_yaml::Environment,
    warnings: &mut Vec<String>,
) -> Result<CloudConfig, String> {
    let merged = match &entry.cloud {
        Some(reference) => {
            let resolved = clouds_yaml::merge_over(reference, entry, env)?;
            warnings.extend(resolved.warnings);
            resolved.entry
        }
        None => entry.clone(),
    };
    let auth_type = merged
        .auth_type
        .clone()
        .unwrap_or_else(|| "password".into());
    let a = &merged.auth;
    let need = |v: &Option<String>, key: &str| {
        v.clone()
            .ok_or_else(|| format!("auth_type '{auth_type}' needs auth.{key}"))
    };
    // A user or project named without a domain: `domain_*`, then `default_domain_*` (as
    // openstacksdk's generic plugins do), else Keystone's own default domain. openstacksdk sends
    // no domain at all there and Keystone refuses the request (400); guessing `default` is a
    // deliberate difference, said once per cloud.
    let guessed = std::cell::Cell::new(false);
    let domain = |id: &Option<String>, name: &Option<String>| -> DomainRef {
        let candidates = [
            (id, false),
            (name, true),
            (&a.domain_id, false),
            (&a.domain_name, true),
            (&a.default_domain_id, false),
            (&a.default_domain_name, true),
        ];
        match candidates
            .iter()
            .find_map(|(v, is_name)| v.as_ref().map(|v| (v, *is_name)))
        {
            Some((v, true)) => DomainRef::Name(v.clone()),
            Some((v, false)) => DomainRef::Id(v.clone()),
            None => {
                guessed.set(true);
                DomainRef::Id("default".into())
            }
        }
    };
    let user = || -> Result<UserRef, String> {
        match (&a.user_id, &a.username) {
            (Some(id), _) => Ok(UserRef::Id(id.clone())),
            (None, Some(n)) => Ok(UserRef::Name {
                name: n.clone(),
                domain: domain(&a.user_domain_id, &a.user_domain_name),
            }),
            _ => Err(format!(
                "auth_type '{auth_type}' needs auth.username or auth.user_id"
            )),
        }
    };
    let project = || -> Option<ProjectRef> {
        match (&a.project_id, &a.project_name) {
            (Some(id), _) => Some(ProjectRef::Id(id.clone())),
            (None, Some(n)) => Some(ProjectRef::Name {
                name: n.clone(),
                domain: domain(&a.project_domain_id, &a.project_domain_name),
            }),
            _ => None,
        }
    };
    let auth = match auth_type.as_str() {
        "password" | "v3password" => AuthConfig::Password {
            auth_url: need(&a.auth_url, "auth_url")?,
            user: user()?,
            password: need(&a.password, "password")?.into(),
            project: project().ok_or_else(|| {
                "password auth needs auth.project_name or auth.project_id: Glance needs a \
                 project-scoped token"
                    .to_string()
            })?,
        },
        "v3applicationcredential" | "applicationcredential" => {
            let credential = match (&a.application_credential_id, &a.application_credential_name) {
                (Some(id), _) => AppCredentialRef::Id(id.clone()),
                (None, Some(n)) => AppCredentialRef::Name {
                    name: n.clone(),
                    user: user()?,
                },
                _ => {
                    return Err("application credential auth needs \
                         auth.application_credential_id or auth.application_credential_name"
                        .into());
                }
            };
            AuthConfig::ApplicationCredential {
                auth_url: need(&a.auth_url, "auth_url")?,
                credential,
                secret: need(
                    &a.application_credential_secret,
                    "application_credential_secret",
                )?
                .into(),
            }
        }
        "token" | "v3token" => AuthConfig::Token {
            auth_url: a.auth_url.clone(),
            token: need(&a.token, "token")?.into(),
            project: project(),
        },
        "none" | "noauth" => AuthConfig::None,
        other => {
            return Err(format!(
                "auth_type '{other}' is not supported (password, v3applicationcredential, token, none)"
            ));
        }
    };
    let no_keystone = matches!(
        auth,
        AuthConfig::None | AuthConfig::Token { auth_url: None, .. }
    );
    if merged.project_id.is_some() && !no_keystone {
        return Err(
            "project_id names the project of a cloud without Keystone (auth_type none, or a \
             token without auth_url); with Keystone the token's project is used: set \
             auth.project_id or auth.project_name instead"
                .into(),
        );
    }
    if no_keystone && merged.image_endpoint_override.is_none() {
        return Err(format!(
            "auth_type '{auth_type}' without auth.auth_url has no service catalog: \
             set image_endpoint_override to the Glance URL"
        ));
    }
    if guessed.get() {
        warnings.push(format!(
            "cloud '{name}': no user or project domain is set, so Keystone's default domain \
             'default' is used (openstacksdk would send none, and Keystone refuses that): set \
             user_domain_name and project_domain_name (or domain_name) to be explicit"
        ));
    }
    // For the image service: image_interface over interface, image_region_name over region_name.
    let interface = merged
        .image_interface
        .clone()
        .or_else(|| merged.interface.clone())
        .unwrap_or_else(|| "public".into())
        .trim_end_matches("URL")
        .to_string();
    if !["public", "internal", "admin"].contains(&interface.as_str()) {
        return Err(format!(
            "interface '{interface}' is not one of public, internal, admin"
        ));
    }
    let verify = merged.verify.unwrap_or(true);
    if !verify {
        tracing::warn!(
            cloud = name,
            "TLS certificate verification is OFF for cloud '{name}' (verify = false): \
             anyone on the path can read its credentials and images"
        );
    }
    Ok(CloudConfig {
        name: name.to_string(),
        auth,
        region_name: merged
            .image_region_name
            .clone()
            .or_else(|| merged.region_name.clone()),
        interface,
        cacert: merged
            .cacert
            .as_deref()
            .map(|c| clouds_yaml::expand_tilde(c, std::env::var("HOME").ok().as_deref())),
        verify,
        image_endpoint_override: merged.image_endpoint_override.clone(),
        project_id: merged.project_id.clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// Metadata rules from the keys of a `[jobs.metadata]` table, for other modules' tests.
    pub(crate) fn metadata_rules(toml_text: &str) -> MetadataRules {
        let table: toml::Value = toml::from_str(toml_text).unwrap();
        policy::metadata(&table, &key(&["metadata"]), &MetadataRules::default()).unwrap()
    }

    const BASE: &str = r#"
[state]
path = "/tmp/state.db"

[clouds.prod]
auth_type = "password"
region_name = "RegionOne"
[clouds.prod.auth]
auth_url = "https://keystone.prod.example:5000/v3"
username = "image-sync"
password = "s3cret"
project_name = "images"
user_domain_name = "Default"
project_domain_name = "Default"

[clouds.lab]
auth_type = "none"
image_endpoint_override = "http://127.0.0.1:9292"

[[jobs]]
name = "golden"
source = "prod"
targets = ["lab"]
[jobs.filter]
include = ["ubuntu-*", "debian-*"]
exclude = ["*-rc*"]
tags = ["golden"]
visibility = ["public", "community"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("test.toml"),
            text,
            &clouds_yaml::Environment::empty(),
        )
    }

    #[test]
    fn example_policy_resolves_password_and_none_clouds() {
        let cfg = parse(BASE).unwrap();
        match &cfg.clouds["prod"].auth {
            AuthConfig::Password {
                user,
                password,
                project,
                ..
            } => {
                assert_eq!(
                    user,
                    &UserRef::Name {
                        name: "image-sync".into(),
                        domain: DomainRef::Name("Default".into())
                    }
                );
                assert_eq!(password.expose_secret(), "s3cret");
                assert!(matches!(project, ProjectRef::Name { .. }));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(cfg.clouds["lab"].auth, AuthConfig::None));
        assert_eq!(cfg.transfer.max_parallel_images, 2);
    }

    #[test]
    fn hashing_runs_at_nice_19_unless_configured_within_0_to_19() {
        assert_eq!(parse(BASE).unwrap().transfer.hashing_nice, 19);
        let with = |v: &str| format!("[transfer]\nhashing_nice = {v}\n{BASE}");
        assert_eq!(parse(&with("0")).unwrap().transfer.hashing_nice, 0);
        let err = parse(&with("20")).unwrap_err().to_string();
        assert!(err.contains("hashing_nice is 20"), "{err}");
        assert!(parse(&with("-5")).is_err());
    }

    #[test]
    fn max_bandwidth_is_a_rate_or_a_timetable_for_the_process_and_per_job() {
        use crate::bandwidth::Limit;
        let cfg = parse(&format!("[transfer]\nmax_bandwidth = \"100MiB/s\"\n{BASE}")).unwrap();
        assert_eq!(cfg.transfer.max_bandwidth, Limit::Fixed(Some(100 << 20)));
        assert_eq!(cfg.jobs[0].max_bandwidth, Limit::NONE);
        let job = |extra: &str| {
            BASE.replace(
                "targets = [\"lab\"]\n",
                &format!("targets = [\"lab\"]\n{extra}\n"),
            )
        };
        let cfg = parse(&job(
            "timezone = \"Europe/Paris\"\nmax_bandwidth = { \"08:00\" = \"20MiB/s\", \"20:00\" = \"off\" }",
        ))
        .unwrap();
        let Limit::Timetable { entries, timezone } = &cfg.jobs[0].max_bandwidth else {
            panic!("{:?}", cfg.jobs[0].max_bandwidth)
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(timezone.iana_name(), Some("Europe/Paris"));
        for (bad, says) in [
            ("max_bandwidth = \"fast\"", "is not a rate"),
            (
                "max_bandwidth = { \"8am\" = \"off\" }",
                "is not a time of day",
            ),
            (
                "max_bandwidth = { \"08:00\" = 5 }",
                "the rate must be a string",
            ),
            ("max_bandwidth = 5", "neither a rate"),
            (
                "timezone = \"UTC\"",
                "timezone applies to schedule and to a max_bandwidth",
            ),
        ] {
            let err = parse(&job(bad)).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = parse(&format!("[transfer]\nmax_bandwidth = \"1 GB\"\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[transfer] max_bandwidth"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let cfg = parse(BASE).unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_key_is_an_error_naming_key_and_line() {
        let text = BASE.replace("region_name = \"RegionOne\"", "regoin_name = \"RegionOne\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("regoin_name"), "{err}");
        assert!(err.contains("line 7"), "{err}");
    }

    #[test]
    fn job_with_unknown_target_cloud_is_rejected() {
        let err = parse(&BASE.replace("targets = [\"lab\"]", "targets = [\"dr\"]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("target 'dr' is not a cloud"), "{err}");
        assert!(
            err.contains("test.toml: line 23, key 'targets[0]'"),
            "{err}"
        );
    }

    #[test]
    fn targets_may_be_tables_that_override_the_jobs_policy() {
        let text = BASE.replace(
            "targets = [\"lab\"]",
            "targets = [{ cloud = \"lab\", preserve_ids = \"require\", metadata = { visibility = \"private\" } }]\n\
             preserve_ids = \"prefer\"\n\
             [jobs.metadata]\nvisibility = \"shared\"\nadd_tags = [\"replica\"]\n\
             set_properties = { replicated_by = \"glance-sync\" }\nignore_properties = [\"site_*\"]\n\
             owner = \"source\"\nmembers = true\nproject_map = { \"*\" = \"*\", a = \"b\" }",
        );
        let cfg = parse(&text).unwrap();
        let job = &cfg.jobs[0];
        let p = job.policy("lab");
        assert_eq!(p.preserve_ids, PreserveIds::Require);
        assert_eq!(p.metadata.visibility.as_deref(), Some("private"));
        assert!(
            p.metadata.add_tags.contains("replica"),
            "the job's rules stay"
        );
        assert!(p.metadata.ignore_properties.is_match("site_x"));
        assert_eq!(p.metadata.owner, OwnerRule::Source);
        assert_eq!(p.metadata.project_map.map("a").as_deref(), Some("b"));
        assert_eq!(p.metadata.project_map.map("z").as_deref(), Some("z"));
    }

    #[test]
    fn transfer_and_stores_are_set_per_job_and_overridden_per_target() {
        let clouds = BASE.replace(
            "targets = [\"lab\"]",
            "targets = [\"lab\", { cloud = \"dr\", transfer = \"stream\", stores = [\"c\"] }]\n\
             transfer = \"auto\"\nstores = [\"a\", \"b\"]",
        );
        let text = format!(
            "{clouds}\n[clouds.dr]\nauth_type = \"none\"\nimage_endpoint_override = \"http://127.0.0.1:1\"\n"
        );
        let cfg = parse(&text).unwrap();
        let job = &cfg.jobs[0];
        assert_eq!(job.policy("lab").transfer, TransferMethod::Auto);
        assert_eq!(job.policy("lab").stores, ["a", "b"]);
        assert_eq!(job.policy("dr").transfer, TransferMethod::Stream);
        assert_eq!(job.policy("dr").stores, ["c"]);
        let bad = parse(&BASE.replace(
            "targets = [\"lab\"]",
            "targets = [\"lab\"]\ntransfer = \"rsync\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(bad.contains("transfer = \"rsync\" is not one of"), "{bad}");
        let twice = parse(&BASE.replace(
            "targets = [\"lab\"]",
            "targets = [\"lab\"]\nstores = [\"a\", \"a\"]",
        ))
        .unwrap_err()
        .to_string();
        assert!(twice.contains("listed twice"), "{twice}");
    }

    #[test]
    fn a_bad_policy_value_names_its_line_and_key() {
        for (replacement, line, key_name) in [
            (
                "[jobs.metadata]\nvisibility = \"everyone\"",
                25,
                "metadata.visibility",
            ),
            (
                "[jobs.metadata]\nignore_tags = [\"a[\"]",
                25,
                "metadata.ignore_tags[0]",
            ),
            (
                "[jobs.metadata]\nproject_map = { a = 3 }",
                25,
                "metadata.project_map.a",
            ),
            ("preserve_ids = \"maybe\"", 24, "preserve_ids"),
        ] {
            let text = BASE.replace("[jobs.filter]", &format!("{replacement}\n[jobs.filter]"));
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(&format!("line {line}, key '{key_name}'")),
                "{replacement}: {err}"
            );
        }
        let text = BASE.replace(
            "tags = [\"golden\"]",
            "tags = [\"golden\"]\nmin_size = \"lots\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("key 'filter.min_size'"), "{err}");
    }

    #[test]
    fn filters_select_by_property_disk_format_and_size() {
        let text = BASE.replace(
            "tags = [\"golden\"]\nvisibility = [\"public\", \"community\"]",
            "disk_formats = [\"qcow2\"]\nmin_size = \"1KiB\"\nmax_size = \"1MiB\"\n\
             properties = { os_distro = \"ubuntu*\" }",
        );
        let cfg = parse(&text).unwrap();
        let f = &cfg.jobs[0].filter;
        let mut img = crate::image::tests::image("i", "ubuntu-24.04", "m");
        img.disk_format = Some("qcow2".into());
        img.size = Some(4096);
        img.extra.insert("os_distro".into(), "ubuntu".into());
        assert!(f.selects(&img));
        for broken in [
            |i: &mut Image| i.disk_format = Some("raw".into()),
            |i: &mut Image| i.size = Some(100),
            |i: &mut Image| i.size = Some(2 << 20),
            |i: &mut Image| {
                i.extra.insert("os_distro".into(), "debian".into());
            },
            |i: &mut Image| {
                i.extra.remove("os_distro");
            },
        ] {
            let mut other = img.clone();
            broken(&mut other);
            assert!(!f.selects(&other), "{other:?}");
        }
    }

    #[test]
    fn same_cloud_as_source_and_target_is_rejected() {
        let err = parse(&BASE.replace("targets = [\"lab\"]", "targets = [\"prod\"]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("both source and target"), "{err}");
    }

    #[test]
    fn empty_target_list_is_rejected() {
        let err = parse(&BASE.replace("targets = [\"lab\"]", "targets = []"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("targets is empty"), "{err}");
    }

    #[test]
    fn schedule_and_interval_are_exclusive_and_validated() {
        let both = BASE.replace(
            "targets = [\"lab\"]",
            "targets = [\"lab\"]\nschedule = \"*/5 * * * *\"\ninterval = \"5m\"",
        );
        assert!(parse(&both).unwrap_err().to_string().contains("not both"));
        let bad = BASE.replace(
            "targets = [\"lab\"]",
            "targets = [\"lab\"]\nschedule = \"*/5 * * *\"",
        );
        let err = parse(&bad).unwrap_err().to_string();
        assert!(
            err.contains("job 'golden'") && err.contains("4 fields"),
            "{err}"
        );
        assert!(err.contains("line 24, key 'schedule'"), "{err}");
        let ok = BASE.replace(
            "targets = [\"lab\"]",
            "targets = [\"lab\"]\ninterval = \"30m\"\nrun_on_start = false",
        );
        let cfg = parse(&ok).unwrap();
        assert!(matches!(cfg.jobs[0].schedule, Some(Schedule::Interval(d)) if d.as_secs() == 1800));
        assert!(!cfg.jobs[0].run_on_start);
        assert_eq!(cfg.metrics.listen.to_string(), "127.0.0.1:9420");
        assert!(cfg.metrics.bearer_token_file.is_none() && cfg.metrics.pushgateway.is_none());
        assert_eq!(cfg.daemon.shutdown_grace.as_secs(), 30);
    }

    #[test]
    fn filter_selects_by_glob_tags_and_visibility() {
        let cfg = parse(BASE).unwrap();
        let f = &cfg.jobs[0].filter;
        let mut img = crate::image::tests::image("1", "ubuntu-24.04", "m");
        img.tags = vec!["golden".into()];
        assert!(f.selects(&img));
        img.name = Some("ubuntu-24.04-rc1".into());
        assert!(!f.selects(&img), "excluded by *-rc*");
        img.name = Some("centos".into());
        assert!(!f.selects(&img), "not included");
        img.name = Some("debian-12".into());
        img.visibility = "private".into();
        assert!(!f.selects(&img), "visibility");
        img.visibility = "community".into();
        img.tags.clear();
        assert!(!f.selects(&img), "missing tag");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  dr:\n    auth:\n      auth_url: https://ks.dr:5000\n      \
             username: u\n      password: p\n      project_name: images\n",
        )
        .unwrap();
        let env = clouds_yaml::Environment::with(
            &[
                ("OS_AUTH_URL", "https://ks.env:5000/v3"),
                ("OS_APPLICATION_CREDENTIAL_ID", "abc"),
                ("OS_APPLICATION_CREDENTIAL_SECRET", "xyz"),
                ("OS_AUTH_TYPE", "v3applicationcredential"),
            ],
            vec![dir.path().to_path_buf()],
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg = Config::parse(&path, &text, &env).unwrap();
        assert_eq!(cfg.clouds.len(), 5);
        assert!(matches!(
            cfg.clouds["env"].auth,
            AuthConfig::ApplicationCredential { .. }
        ));
        assert_eq!(cfg.jobs[0].targets, vec!["dr", "lab"]);
    }

    #[test]
    fn every_cloud_and_auth_key_list_entry_is_a_field() {
        // The key lists drive what is kept from clouds.yaml; a typo there would silently drop a key.
        let mut cloud = serde_json::Map::new();
        for k in CLOUD_KEYS {
            let v = if *k == "verify" {
                serde_json::json!(true)
            } else {
                serde_json::json!("x")
            };
            cloud.insert((*k).into(), v);
        }
        let auth: serde_json::Map<_, _> = AUTH_KEYS
            .iter()
            .map(|k| ((*k).to_string(), serde_json::json!("x")))
            .collect();
        cloud.insert("auth".into(), serde_json::Value::Object(auth));
        let entry: CloudEntry = serde_json::from_value(serde_json::Value::Object(cloud)).unwrap();
        let back = serde_json::to_value(&entry).unwrap();
        assert_eq!(back["auth"].as_object().unwrap().len(), AUTH_KEYS.len());
        assert_eq!(back.as_object().unwrap().len(), CLOUD_KEYS.len() + 1);
    }
}
