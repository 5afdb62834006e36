//! Pushing a one-shot run's metrics to a Prometheus Pushgateway, so cron and systemd-timer runs
//! alert like the daemon does.
//!
//! Every group has the grouping key `job="glance-sync"`, `instance=<this host>`: one group per
//! replication job, keyed also by its `sync_job` (the same value its series carry), and one for
//! the series of no job in particular (API requests per cloud, process, build). Each is replaced
//! whole by a PUT. A run of some jobs only (`run --job a`) replaces only their groups and leaves
//! the other jobs' last push standing, so timers running different jobs of one host never
//! replace each other's last success. A job removed from the config keeps its last group until
//! it is deleted from the Pushgateway (its web page, or `curl -X DELETE <group URL>`).

use std::time::Duration;

use base64::Engine as _;
use url::Url;

/// The Pushgateway's `job` grouping key: the same value Prometheus' scrape job of the daemon has
/// in deploy/prometheus, so dashboards and alerts read pushed and scraped series alike.
pub const GROUP_JOB: &str = "glance-sync";

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(
        "cannot push metrics to the Pushgateway at {url}: {source}; check that it runs and that \
         [metrics] pushgateway (or --pushgateway) names it"
    )]
    Unreachable {
        url: Url,
        #[source]
        source: reqwest::Error,
    },
    #[error("the Pushgateway at {url} refused the metrics: HTTP {status}: {body}")]
    Refused {
        url: Url,
        status: reqwest::StatusCode,
        body: String,
    },
}

/// One group of a run's metrics.
#[derive(Debug, Clone)]
pub struct Group {
    pub instance: String,
    /// The replication job whose series the group holds; `None` for the series of no job.
    pub sync_job: Option<String>,
}

/// Where `group` lives under the Pushgateway's base URL.
pub fn group_url(base: &Url, group: &Group) -> Url {
    let mut url = base.clone();
    {
        let mut path = url
            .path_segments_mut()
            .expect("the config accepts only http(s) URLs, which have a path");
        path.pop_if_empty().extend(["metrics", "job", GROUP_JOB]);
        push_label(&mut path, "instance", &group.instance);
        if let Some(job) = &group.sync_job {
            push_label(&mut path, "sync_job", job);
        }
    }
    url
}

/// A label of the grouping key as the Pushgateway reads it: plain when that is unambiguous, else
/// in its base64 form (an empty value, `/`, `.` or `..`, anything beyond plain characters).
fn push_label(path: &mut url::PathSegmentsMut<'_>, name: &str, value: &str) {
    let plain = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if plain {
        path.extend([name, value]);
    } else {
        let encoded = base64::engine::general_purpose::URL_SAFE.encode(value);
        // The Pushgateway's spelling of the empty value.
        let encoded = if encoded.is_empty() {
            "=".into()
        } else {
            encoded
        };
        path.extend([&format!("{name}@base64"), &encoded]);
    }
}

/// This host's name, the `instance` of the group.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// Replaces each of `groups` (its `sync_job`, or none, and its exposition) on the Pushgateway,
/// every one even when an earlier one failed; the first failure is returned.
pub async fn push(
    base: &Url,
    instance: &str,
    groups: Vec<(Option<String>, String)>,
) -> Result<usize, PushError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|source| PushError::Unreachable {
            url: redacted(base),
            source,
        })?;
    let mut first_error = None;
    let mut pushed = 0;
    for (sync_job, exposition) in groups {
        let group = Group {
            instance: instance.to_string(),
            sync_job,
        };
        match put(&client, &group_url(base, &group), exposition).await {
            Ok(()) => pushed += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(pushed),
    }
}

async fn put(client: &reqwest::Client, url: &Url, exposition: String) -> Result<(), PushError> {
    let unreachable = |source| PushError::Unreachable {
        url: redacted(url),
        source,
    };
    let response = client
        .put(url.clone())
        .header(
            reqwest::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(exposition)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(PushError::Refused {
        url: redacted(url),
        status,
        body: body.trim().chars().take(500).collect(),
    })
}

/// The URL without a password a Pushgateway behind basic auth may have been given in.
pub fn redacted(url: &Url) -> Url {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("REDACTED"));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(instance: &str, sync_job: Option<&str>) -> Group {
        Group {
            instance: instance.into(),
            sync_job: sync_job.map(str::to_string),
        }
    }

    #[test]
    fn the_group_is_job_glance_sync_this_instance_and_the_sync_job_under_any_base_path() {
        let base = Url::parse("http://pg:9091").unwrap();
        assert_eq!(
            group_url(&base, &group("node-1", None)).as_str(),
            "http://pg:9091/metrics/job/glance-sync/instance/node-1"
        );
        assert_eq!(
            group_url(&base, &group("node-1", Some("nightly"))).as_str(),
            "http://pg:9091/metrics/job/glance-sync/instance/node-1/sync_job/nightly"
        );
        let behind_proxy = Url::parse("https://proxy/pushgateway/").unwrap();
        assert_eq!(
            group_url(&behind_proxy, &group("node-1", None)).as_str(),
            "https://proxy/pushgateway/metrics/job/glance-sync/instance/node-1"
        );
    }

    #[test]
    fn odd_label_values_use_the_pushgateways_base64_form() {
        let base = Url::parse("http://pg:9091").unwrap();
        assert_eq!(
            group_url(&base, &group("", None)).as_str(),
            "http://pg:9091/metrics/job/glance-sync/instance@base64/="
        );
        // "a/b" and "..": as they are, they would change the path.
        assert_eq!(
            group_url(&base, &group("h", Some("a/b"))).as_str(),
            "http://pg:9091/metrics/job/glance-sync/instance/h/sync_job@base64/YS9i"
        );
        assert_eq!(
            group_url(&base, &group("h", Some(".."))).as_str(),
            "http://pg:9091/metrics/job/glance-sync/instance/h/sync_job@base64/Li4="
        );
    }

    #[test]
    fn a_password_in_the_url_never_reaches_an_error_message() {
        let url = Url::parse("http://user:s3cret@pg:9091/").unwrap();
        let shown = redacted(&group_url(&url, &group("h", None))).to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
