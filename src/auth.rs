//! OpenStack authentication: Keystone v3 tokens and the image endpoint from the service catalog.
//!
//! A [`CloudSession`] owns one cloud's HTTP client (TLS settings included) and its current token. It
//! renews the token before it expires and on demand after a 401, so a run of many hours keeps
//! working. Token values never leave this module except as the `X-Auth-Token` header value.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::config::{
    AppCredentialRef, AuthConfig, CloudConfig, DomainRef, ProjectRef, TransferSettings, UserRef,
};
use crate::metrics::Metrics;

/// keystoneauth renews a token that has less than this left; so do we.
const MIN_TOKEN_LIFE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "cloud '{cloud}': Keystone at {url} refused the credentials (HTTP {status}): {message}. \
         Check the user, project and secret configured for this cloud"
    )]
    Rejected {
        cloud: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error(
        "cloud '{cloud}': {url} is not a Keystone v3 endpoint (it answered HTTP {status} to a \
         token request): set auth_url to Keystone's URL, e.g. https://keystone.example:5000/v3"
    )]
    NotKeystone {
        cloud: String,
        url: String,
        status: u16,
    },
    #[error("cloud '{cloud}': cannot reach Keystone at {url}: {message}")]
    Unreachable {
        cloud: String,
        url: String,
        message: String,
    },
    #[error("cloud '{cloud}': Keystone at {url} answered something unexpected: {message}")]
    Protocol {
        cloud: String,
        url: String,
        message: String,
    },
    #[error(
        "cloud '{cloud}': the service catalog has no image endpoint for interface '{interface}'{region}; \
         it lists: {available}. Set region_name/interface, or image_endpoint_override"
    )]
    NoEndpoint {
        cloud: String,
        interface: String,
        region: String,
        available: String,
    },
    #[error(
        "cloud '{cloud}': no region is chosen and the catalog has {interface} image endpoints in \
         several regions ({regions}): set region_name (or image_region_name) for this cloud. \
         openstacksdk would take the first in catalog order, which may be the wrong region; \
         glance-sync does not guess"
    )]
    NoRegionChosen {
        cloud: String,
        interface: String,
        regions: String,
    },
    #[error("cloud '{cloud}': TLS setup failed: {message}")]
    Tls { cloud: String, message: String },
}

/// Whether Glance's default policy (`role:admin`) grants these roles admin rights; oslo.policy
/// compares role names without case.
pub fn has_admin_role(roles: &[String]) -> bool {
    roles.iter().any(|r| r.eq_ignore_ascii_case("admin"))
}

/// What a request to Glance needs: where to send it and which token to present.
#[derive(Clone)]
pub struct Access {
    /// Glance's service root, without a trailing `/` or `/v2`.
    pub endpoint: String,
    token: Option<SecretString>,
    /// The project the token is scoped to (from Keystone), or the cloud's `project_id` when
    /// there is no Keystone; `None` when unknown.
    pub project_id: Option<String>,
    /// The token's role names; `None` without Keystone (unknown).
    pub roles: Option<Vec<String>>,
    /// The catalog region of the image endpoint (or `region_name` with an endpoint override);
    /// `None` without Keystone. Another region's Glance names this one by it (glance-download).
    pub region: Option<String>,
}

impl Access {
    /// Whether the token is known to lack the admin role (`false` when the roles are unknown).
    pub fn known_without_admin(&self) -> bool {
        self.roles.as_deref().is_some_and(|r| !has_admin_role(r))
    }

    /// The `X-Auth-Token` value, if this cloud uses one.
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.expose_secret())
    }
}

struct Cached {
    access: Access,
    expires_at: Option<Timestamp>,
}

pub struct CloudSession {
    pub name: String,
    config: CloudConfig,
    http: reqwest::Client,
    api_timeout: Duration,
    retries: usize,
    retry_max_delay: Duration,
    metrics: Arc<Metrics>,
    cached: Mutex<Option<Cached>>,
}

impl CloudSession {
    pub fn new(
        config: CloudConfig,
        transfer: &TransferSettings,
        metrics: Arc<Metrics>,
    ) -> Result<CloudSession, AuthError> {
        let tls_err = |message: String| AuthError::Tls {
            cloud: config.name.clone(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(50))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("glance-sync/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.cacert {
            let pem = std::fs::read(path)
                .map_err(|e| tls_err(format!("cannot read cacert {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                tls_err(format!(
                    "cacert {} is not a PEM bundle: {e}",
                    path.display()
                ))
            })?;
            builder = builder.tls_certs_only(certs);
        }
        if !config.verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| tls_err(e.to_string()))?;
        Ok(CloudSession {
            name: config.name.clone(),
            config,
            http,
            api_timeout: transfer.api_timeout,
            retries: transfer.retries,
            retry_max_delay: transfer.retry_max_delay,
            metrics,
            cached: Mutex::new(None),
        })
    }

    /// The Keystone this cloud authenticates against (its v3 URL without credentials), `None`
    /// without Keystone. Two clouds on the same Keystone can pull from each other.
    pub fn keystone(&self) -> Option<String> {
        let url = match &self.config.auth {
            AuthConfig::None | AuthConfig::Token { auth_url: None, .. } => return None,
            AuthConfig::Token {
                auth_url: Some(url),
                ..
            } => url,
            AuthConfig::Password { auth_url, .. } => auth_url,
            AuthConfig::ApplicationCredential { auth_url, .. } => auth_url,
        };
        Some(without_userinfo(&keystone_v3(url)))
    }

    /// The endpoint interface this cloud uses (public, internal, admin).
    pub fn interface(&self) -> &str {
        &self.config.interface
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn api_timeout(&self) -> Duration {
        self.api_timeout
    }

    /// Waits between retries of one request: exponential from 0.5 s, with jitter, at most
    /// `retry_max_delay`, `retries` of them.
    pub fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(self.retry_max_delay)
            .with_max_times(self.retries)
            .with_jitter()
            .build()
    }

    pub fn retry_max_delay(&self) -> Duration {
        self.retry_max_delay
    }

    pub fn retries(&self) -> usize {
        self.retries
    }

    /// Counts one API request to this cloud.
    /// Records one API request in the metrics, and in the log at debug level (`-v`): which
    /// request, its answer and how long it took. `what` is the method and URL or path (formatted
    /// only when the line is logged); callers leave credentials out of it.
    pub fn observe(
        &self,
        operation: &str,
        what: std::fmt::Arguments<'_>,
        status: Option<u16>,
        took: Duration,
    ) {
        self.metrics
            .observe_api(&self.name, operation, status, took);
        tracing::debug!(
            cloud = %self.name,
            operation,
            status,
            ms = took.as_millis() as u64,
            "{what} -> {} in {} ms",
            status.map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
            took.as_millis()
        );
    }

    /// A token with comfortable life left, and the image endpoint; authenticates when needed.
    pub async fn access(&self) -> Result<Access, AuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = c.expires_at.is_none_or(|exp| {
                exp.duration_since(Timestamp::now())
                    .try_into()
                    .is_ok_and(|left: Duration| left > MIN_TOKEN_LIFE)
            });
            if fresh {
                return Ok(c.access.clone());
            }
            tracing::debug!(cloud = %self.name, "token close to expiry, renewing");
        }
        let fresh = self.authenticate().await?;
        let access = fresh.access.clone();
        *cached = Some(fresh);
        Ok(access)
    }

    /// Forgets the current token after the cloud answered 401 to it, so the next
    /// [`access`](Self::access) authenticates again.
    pub async fn invalidate(&self, rejected: &Access) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|c| c.access.token() == rejected.token())
        {
            *cached = None;
        }
    }

    async fn authenticate(&self) -> Result<Cached, AuthError> {
        let (auth_url, body) = match &self.config.auth {
            AuthConfig::None => {
                return Ok(Cached {
                    access: Access {
                        endpoint: self.override_endpoint(),
                        token: None,
                        project_id: self.config.project_id.clone(),
                        roles: None,
                        region: None,
                    },
                    expires_at: None,
                });
            }
            AuthConfig::Token {
                auth_url: None,
                token,
                ..
            } => {
                return Ok(Cached {
                    access: Access {
                        endpoint: self.override_endpoint(),
                        token: Some(token.clone()),
                        project_id: self.config.project_id.clone(),
                        roles: None,
                        region: None,
                    },
                    expires_at: None,
                });
            }
            AuthConfig::Token {
                auth_url: Some(url),
                token,
                project,
            } => {
                let mut body = json!({"auth": {"identity": {"methods": ["token"],
                    "token": {"id": token.expose_secret()}}}});
                if let Some(p) = project {
                    body["auth"]["scope"] = json!({"project": project_json(p)});
                }
                (url, body)
            }
            AuthConfig::Password {
                auth_url,
                user,
                password,
                project,
            } => {
                let mut user = user_json(user);
                user["password"] = Value::from(password.expose_secret());
                (
                    auth_url,
                    json!({"auth": {
                        "identity": {"methods": ["password"], "password": {"user": user}},
                        "scope": {"project": project_json(project)}}}),
                )
            }
            AuthConfig::ApplicationCredential {
                auth_url,
                credential,
                secret,
            } => {
                // No scope: an application credential's token is scoped to its own project, and
                // Keystone answers 401 if one is asked for.
                let mut cred = match credential {
                    AppCredentialRef::Id(id) => json!({"id": id}),
                    AppCredentialRef::Name { name, user } => {
                        json!({"name": name, "user": user_json(user)})
                    }
                };
                cred["secret"] = Value::from(secret.expose_secret());
                (
                    auth_url,
                    json!({"auth": {"identity": {"methods": ["application_credential"],
                        "application_credential": cred}}}),
                )
            }
        };
        let url = format!("{}/auth/tokens", keystone_v3(auth_url));
        // What errors and logs show: an auth_url may carry `user:password@`.
        let shown = without_userinfo(&url);
        let unreachable = |message: String| AuthError::Unreachable {
            cloud: self.name.clone(),
            url: shown.clone(),
            message,
        };
        let protocol = |message: String| AuthError::Protocol {
            cloud: self.name.clone(),
            url: shown.clone(),
            message,
        };
        let started = std::time::Instant::now();
        let resp = self
            .http
            .post(&url)
            .timeout(self.api_timeout)
            .json(&body)
            .send()
            .await;
        self.observe(
            "authenticate",
            format_args!("POST {shown}"),
            resp.as_ref().ok().map(|r| r.status().as_u16()),
            started.elapsed(),
        );
        // reqwest's error text repeats the URL, userinfo included.
        let resp = resp.map_err(|e| unreachable(error_chain(&e.without_url())))?;
        let status = resp.status();
        // Keystone answers a bad token request with 400/401/403; a version list (300) or a
        // missing route (404, 405) means the URL is something else, e.g. Glance's.
        if matches!(status.as_u16(), 300 | 404 | 405) {
            return Err(AuthError::NotKeystone {
                cloud: self.name.clone(),
                url: shown.clone(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(AuthError::Rejected {
                cloud: self.name.clone(),
                url: shown.clone(),
                status: status.as_u16(),
                message: keystone_message(&text),
            });
        }
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(|s| SecretString::from(s.to_string()))
            .ok_or_else(|| protocol("no X-Subject-Token header in the answer".into()))?;
        let body: Value = resp
            .json()
            .await
            .map_err(|e| protocol(format!("body is not JSON: {e}")))?;
        let expires_at = body["token"]["expires_at"]
            .as_str()
            .and_then(|s| s.parse::<Timestamp>().ok());
        let (endpoint, region) = match &self.config.image_endpoint_override {
            Some(_) => (self.override_endpoint(), self.config.region_name.clone()),
            None => {
                let (url, region) = self.endpoint_from_catalog(&body["token"]["catalog"])?;
                (url, Some(region))
            }
        };
        tracing::debug!(cloud = %self.name, %endpoint, expires_at = ?expires_at, "authenticated");
        // The owner glance-sync's images get; it decides whose images are "ours" (tenant rules).
        let project_id = body["token"]["project"]["id"].as_str().map(str::to_string);
        let roles = body["token"]["roles"].as_array().map(|roles| {
            roles
                .iter()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect()
        });
        Ok(Cached {
            access: Access {
                endpoint,
                token: Some(token),
                project_id,
                roles,
                region,
            },
            expires_at,
        })
    }

    fn override_endpoint(&self) -> String {
        normalise_endpoint(self.config.image_endpoint_override.as_deref().unwrap_or(""))
    }

    /// The image endpoint this cloud's settings pick from the catalog, and its region.
    fn endpoint_from_catalog(&self, catalog: &Value) -> Result<(String, String), AuthError> {
        let endpoints = catalog
            .as_array()
            .into_iter()
            .flatten()
            .filter(|svc| svc["type"] == "image")
            .flat_map(|svc| svc["endpoints"].as_array().into_iter().flatten());
        let mut available = Vec::new();
        let mut matching: Vec<(&str, &str)> = Vec::new();
        for ep in endpoints {
            let interface = ep["interface"].as_str().unwrap_or("");
            let region = ep["region_id"]
                .as_str()
                .or(ep["region"].as_str())
                .unwrap_or("");
            available.push(format!("{interface}@{region}"));
            let region_ok = self
                .config
                .region_name
                .as_deref()
                .is_none_or(|r| r == region);
            if interface == self.config.interface
                && region_ok
                && let Some(url) = ep["url"].as_str()
            {
                matching.push((region, url));
            }
        }
        match matching.as_slice() {
            [(region, url)] => return Ok((normalise_endpoint(url), region.to_string())),
            [(first_region, url), rest @ ..] => {
                // Picking one region at random could copy images into the wrong one.
                if rest.iter().all(|(r, _)| r == first_region) {
                    return Ok((normalise_endpoint(url), first_region.to_string()));
                }
                return Err(AuthError::NoRegionChosen {
                    cloud: self.name.clone(),
                    interface: self.config.interface.clone(),
                    regions: matching
                        .iter()
                        .map(|(r, _)| *r)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            [] => {}
        }
        Err(AuthError::NoEndpoint {
            cloud: self.name.clone(),
            interface: self.config.interface.clone(),
            region: self
                .config
                .region_name
                .as_ref()
                .map(|r| format!(" in region '{r}'"))
                .unwrap_or_default(),
            available: if available.is_empty() {
                "no image service at all".into()
            } else {
                available.join(", ")
            },
        })
    }
}

/// `auth_url` as found in clouds.yaml may or may not end in `/v3`.
fn keystone_v3(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        base.to_string()
    } else {
        format!("{base}/v3")
    }
}

/// Catalogs may register Glance with or without `/v2`; we always append `/v2/...` ourselves.
fn normalise_endpoint(url: &str) -> String {
    let url = url.trim_end_matches('/');
    url.strip_suffix("/v2").unwrap_or(url).to_string()
}

fn domain_json(d: &DomainRef) -> Value {
    match d {
        DomainRef::Id(id) => json!({"id": id}),
        DomainRef::Name(n) => json!({"name": n}),
    }
}

fn user_json(u: &UserRef) -> Value {
    match u {
        UserRef::Id(id) => json!({"id": id}),
        UserRef::Name { name, domain } => json!({"name": name, "domain": domain_json(domain)}),
    }
}

fn project_json(p: &ProjectRef) -> Value {
    match p {
        ProjectRef::Id(id) => json!({"id": id}),
        ProjectRef::Name { name, domain } => json!({"name": name, "domain": domain_json(domain)}),
    }
}

/// Keystone's `{"error": {"message": ...}}`, or the start of whatever else it sent.
fn keystone_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// A reqwest error with its causes, which carry the useful part ("connection refused").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s
}

/// `url` without a `user:password@` part, for logs.
fn without_userinfo(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        // Shown as written, so the operator sees what is wrong with it, unless it may hold a
        // password.
        Err(_) if !url.contains('@') => url.to_string(),
        Err(_) => "(an unparseable URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_normalised_to_the_service_root() {
        assert_eq!(normalise_endpoint("http://g:9292/v2/"), "http://g:9292");
        assert_eq!(
            normalise_endpoint("https://cloud/image/"),
            "https://cloud/image"
        );
        assert_eq!(keystone_v3("http://ks:5000"), "http://ks:5000/v3");
        assert_eq!(keystone_v3("http://ks:5000/v3/"), "http://ks:5000/v3");
    }

    #[test]
    fn logged_urls_leave_out_user_and_password() {
        assert_eq!(
            without_userinfo("https://admin:s3cret@keystone.example:5000/v3/auth/tokens"),
            "https://keystone.example:5000/v3/auth/tokens"
        );
    }
}
