//! Pushing a one-shot run's metrics to a Prometheus Pushgateway, so cron and systemd-timer runs
//! alert like the daemon does.
//!
//! The group is `job="glance-sync"`, `instance=<this host>`, replaced whole by a PUT: the last
//! run's metrics stand until the next run, and series of replication jobs a later config dropped
//! disappear with it. Every series carries its replication job as `sync_job`, so several jobs of
//! one config arrive side by side in one group.
//!
//! A run of only some jobs (`run --job a --job b`) pushes to its own group, with the extra key
//! `sync_jobs="a,b"`: timers that run different jobs of one host must not replace each other's
//! last success.

use std::time::Duration;

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

/// Which metrics group a run replaces.
#[derive(Debug, Clone)]
pub struct Group {
    pub instance: String,
    /// The jobs a `--job` run selected, sorted; `None` for a run of every job.
    pub selected_jobs: Option<Vec<String>>,
}

/// Where `group` lives under the Pushgateway's base URL.
pub fn group_url(base: &Url, group: &Group) -> Url {
    let instance = group.instance.as_str();
    let mut url = base.clone();
    {
        let mut path = url
            .path_segments_mut()
            .expect("the config accepts only http(s) URLs, which have a path");
        path.pop_if_empty().extend(["metrics", "job", GROUP_JOB]);
        // An empty label value needs the Pushgateway's base64 form (`=` is the empty string); a
        // `/` would split the path even percent-encoded, and no real hostname has one.
        if instance.is_empty() {
            path.extend(["instance@base64", "="]);
        } else {
            path.extend(["instance", &instance.replace('/', "_")]);
        }
        if let Some(jobs) = &group.selected_jobs {
            path.extend(["sync_jobs", &jobs.join(",").replace('/', "_")]);
        }
    }
    url
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

/// Replaces this host's group with `exposition` (Prometheus text format).
pub async fn push(base: &Url, group: &Group, exposition: String) -> Result<(), PushError> {
    let url = group_url(base, group);
    let unreachable = |source| PushError::Unreachable {
        url: redacted(&url),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(unreachable)?;
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
        url: redacted(&url),
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

    fn host(name: &str) -> Group {
        Group {
            instance: name.into(),
            selected_jobs: None,
        }
    }

    #[test]
    fn the_group_is_job_glance_sync_and_this_instance_under_any_base_path() {
        let base = Url::parse("http://pg:9091").unwrap();
        assert_eq!(
            group_url(&base, &host("node-1")).as_str(),
            "http://pg:9091/metrics/job/glance-sync/instance/node-1"
        );
        let behind_proxy = Url::parse("https://proxy/pushgateway/").unwrap();
        assert_eq!(
            group_url(&behind_proxy, &host("node-1")).as_str(),
            "https://proxy/pushgateway/metrics/job/glance-sync/instance/node-1"
        );
    }

    #[test]
    fn an_empty_or_odd_hostname_still_makes_a_valid_group() {
        let base = Url::parse("http://pg:9091").unwrap();
        assert_eq!(
            group_url(&base, &host("")).as_str(),
            "http://pg:9091/metrics/job/glance-sync/instance@base64/="
        );
        assert_eq!(
            group_url(&base, &host("a/b c")).as_str(),
            "http://pg:9091/metrics/job/glance-sync/instance/a_b%20c"
        );
    }

    #[test]
    fn a_run_of_some_jobs_has_a_group_of_its_own() {
        let base = Url::parse("http://pg:9091").unwrap();
        let group = Group {
            instance: "h".into(),
            selected_jobs: Some(vec!["a".into(), "b".into()]),
        };
        assert_eq!(
            group_url(&base, &group).as_str(),
            "http://pg:9091/metrics/job/glance-sync/instance/h/sync_jobs/a,b"
        );
    }

    #[test]
    fn a_password_in_the_url_never_reaches_an_error_message() {
        let url = Url::parse("http://user:s3cret@pg:9091/").unwrap();
        let shown = redacted(&group_url(&url, &host("h"))).to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
