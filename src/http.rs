//! The daemon's HTTP listener: `/metrics`, `/healthz`, `/readyz`, the status page (`/`,
//! `/jobs/NAME`) and its JSON (`/api/v1/status`). With `[metrics] bearer_token_file`, every path
//! but the two health checks needs the token: `Authorization: Bearer <token>` (Prometheus,
//! scripts), or as the password of HTTP basic authentication with any user name, which is what a
//! browser can send (it asks for it when refused).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::bandwidth;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::state::{State, StateError};
use crate::status::{self, JobClocks, Live, Report};
use crate::status_page;

/// What the listener reads. The config and token change on SIGHUP; the rest lives as long as the
/// daemon.
pub struct Site {
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    pub bandwidth: Arc<bandwidth::Registry>,
    /// A read-only handle: the page never waits behind a run's writes.
    pub state: State,
    pub config: Mutex<Arc<Config>>,
    pub token: Mutex<Option<SecretString>>,
    pub clocks: Arc<Mutex<JobClocks>>,
    pub progress: Progress,
}

impl Site {
    fn report(&self) -> Result<(Arc<Config>, Report), StateError> {
        let config = self.config.lock().expect("not poisoned").clone();
        let live = Live {
            clocks: self.clocks.lock().expect("not poisoned").snapshot(),
            in_flight: self.progress.in_flight(),
        };
        let report = status::gather(&config, Some(&self.state), &live)?;
        Ok((config, report))
    }
}

pub async fn serve(listener: tokio::net::TcpListener, site: Arc<Site>, stop: CancellationToken) {
    let protected = axum::Router::new()
        .route("/metrics", get(metrics_page))
        .route("/", get(index_page))
        .route("/jobs/{name}", get(job_page))
        .route("/api/v1/status", get(status_json))
        .route_layer(axum::middleware::from_fn_with_state(
            site.clone(),
            require_token,
        ));
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(site);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!("metrics server stopped: {e}");
    }
}

async fn require_token(
    AxumState(site): AxumState<Arc<Site>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = match &*site.token.lock().expect("not poisoned") {
        None => true,
        Some(token) => presented_token(request.headers())
            .is_some_and(|given| same_secret(&given, token.expose_secret())),
    };
    if allowed {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        // Basic, so that a browser asks for the token; Bearer works without being asked.
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"glance-sync\", charset=\"UTF-8\"",
        )],
        "the token of [metrics] bearer_token_file is required: send Authorization: Bearer \
         <token>, or give it as the password (any user name) when the browser asks\n",
    )
        .into_response()
}

/// The token of `Authorization: Bearer <token>`, or the password of `Basic <user:password>`.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let (_user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// Compares digests, so the time taken says nothing about how much of the token was right.
fn same_secret(given: &str, expected: &str) -> bool {
    Sha256::digest(given.as_bytes()) == Sha256::digest(expected.as_bytes())
}

async fn metrics_page(AxumState(site): AxumState<Arc<Site>>) -> impl IntoResponse {
    // The limit in force changes at timetable boundaries whether or not anything is copied.
    site.bandwidth.refresh();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        site.metrics.render(),
    )
}

async fn readyz(AxumState(site): AxumState<Arc<Site>>) -> impl IntoResponse {
    if site.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Runs `f` on the blocking pool: SQLite reads must not hold up the async workers.
async fn with_report<T: Send + 'static>(
    site: Arc<Site>,
    f: impl FnOnce(&Site, Arc<Config>, Report) -> Result<T, StateError> + Send + 'static,
) -> Result<T, Response> {
    let result = tokio::task::spawn_blocking(move || {
        let (config, report) = site.report()?;
        f(&site, config, report)
    })
    .await
    .expect("status report does not panic");
    result.map_err(|e| {
        tracing::error!("status page: {e}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the state database: {e}\n"),
        )
            .into_response()
    })
}

async fn index_page(AxumState(site): AxumState<Arc<Site>>) -> Result<Html<String>, Response> {
    with_report(site, |site, _, report| {
        let mut runs = std::collections::HashMap::new();
        for job in &report.jobs {
            runs.insert(job.name.clone(), site.state.job_runs(&job.name, 5)?);
        }
        Ok(Html(status_page::index(&report, |job| {
            runs.get(job).cloned().unwrap_or_default()
        })))
    })
    .await
}

async fn job_page(
    AxumState(site): AxumState<Arc<Site>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, Response> {
    with_report(site, move |site, _, report| {
        let Some(job) = report.jobs.iter().find(|j| j.name == name) else {
            return Ok(
                (StatusCode::NOT_FOUND, Html(status_page::unknown_job(&name))).into_response(),
            );
        };
        let runs = site.state.job_runs(&name, status::JOB_HISTORY)?;
        Ok(Html(status_page::job(&report, job, &runs)).into_response())
    })
    .await
}

async fn status_json(AxumState(site): AxumState<Arc<Site>>) -> Result<Response, Response> {
    with_report(site, |_, _, report| {
        let body = serde_json::to_string_pretty(&report).expect("status serialises");
        Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(presented_token(&h).as_deref(), Some("s3cret"));
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cre", "s3cret"));
        assert!(!same_secret("", "s3cret"));
        // A browser's basic authentication: "anyone:s3cret".
        h.insert(
            header::AUTHORIZATION,
            "Basic YW55b25lOnMzY3JldA==".parse().unwrap(),
        );
        assert_eq!(presented_token(&h).as_deref(), Some("s3cret"));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert_eq!(presented_token(&h), None);
        h.insert(header::AUTHORIZATION, "Digest s3cret".parse().unwrap());
        assert_eq!(presented_token(&h), None);
    }
}
