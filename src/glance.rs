//! A thin Glance v2 client: exactly the calls replication needs, each with an error that names the
//! cloud, the operation and the image.
//!
//! Requests without a body stream are retried once after a 401 with a renewed token. Uploads are not
//! (their body is consumed): a refused upload fails that copy, and the next run copies it again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::auth::{Access, AuthError, CloudSession, error_chain};
use crate::image::{Image, Member};
use crate::metadata::PatchOp;

const PATCH_MEDIA_TYPE: &str = "application/openstack-images-v2.1-json-patch";
/// Glance caps `limit` at 1000 silently; asking for it saves round trips on big clouds.
const PAGE_LIMIT: usize = 1000;

/// One page of `GET /v2/images`.
#[derive(serde::Deserialize)]
struct Page {
    images: Vec<Image>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GlanceError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(
        "cloud '{cloud}': {operation} failed: HTTP {status}: {message}{request_id}{what_to_do}"
    )]
    Http {
        cloud: String,
        operation: String,
        status: u16,
        message: String,
        request_id: String,
        /// "; <advice>" for the statuses an operator can act on, else empty.
        what_to_do: String,
    },
    #[error("cloud '{cloud}': {operation} failed: {message}")]
    Transport {
        cloud: String,
        operation: String,
        message: String,
    },
    #[error(
        "cloud '{cloud}': {operation}: Glance answered something the API does not promise: {message}"
    )]
    Protocol {
        cloud: String,
        operation: String,
        message: String,
    },
}

impl GlanceError {
    pub fn status(&self) -> Option<u16> {
        match self {
            GlanceError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct GlanceClient {
    session: Arc<CloudSession>,
}

impl GlanceClient {
    pub fn new(session: Arc<CloudSession>) -> GlanceClient {
        GlanceClient { session }
    }

    pub fn cloud(&self) -> &str {
        &self.session.name
    }

    /// The cloud's Keystone and endpoint settings (no secrets exposed).
    pub fn session(&self) -> &CloudSession {
        &self.session
    }

    /// The project glance-sync works as on this cloud, when known (authenticates if needed).
    pub async fn project_id(&self) -> Result<Option<String>, GlanceError> {
        Ok(self.session.access().await?.project_id)
    }

    /// The image endpoint, the project and the token's roles (when known), from one
    /// authentication.
    pub async fn identity(&self) -> Result<crate::auth::Access, GlanceError> {
        Ok(self.session.access().await?)
    }

    /// Every image the credentials can see: hidden ones and community ones included.
    pub async fn list_images(&self) -> Result<Vec<Image>, GlanceError> {
        let mut seen = HashSet::new();
        let mut images = Vec::new();
        self.list_images_paged(|page| {
            images.extend(page.into_iter().filter(|i| seen.insert(i.id.clone())));
            Ok::<_, GlanceError>(())
        })
        .await?;
        Ok(images)
    }

    /// Every image the credentials can see, handed to `on_page` one page at a time, so that a
    /// caller can keep memory bounded by the page size. An image whose `os_hidden` flips between
    /// the two passes may be handed over twice: the caller keeps the first.
    pub async fn list_images_paged<E: From<GlanceError>>(
        &self,
        mut on_page: impl FnMut(Vec<Image>) -> Result<(), E>,
    ) -> Result<(), E> {
        // The default listing hides os_hidden images and other projects' community images (quirk
        // 10): one pass per value of the os_hidden filter, both with visibility=all.
        for hidden in ["false", "true"] {
            let mut next = Some(format!(
                "/v2/images?visibility=all&os_hidden={hidden}&limit={PAGE_LIMIT}"
            ));
            let mut markers = HashSet::new();
            while let Some(path) = next.take() {
                let operation = "list images";
                let body = self
                    .call(operation, Method::GET, |b| b, &path)
                    .await?
                    .bytes()
                    .await
                    .map_err(|e| self.protocol(operation, format!("page not read: {e}")))?;
                // Straight into images: a page of 1000 is not built as a JSON tree first. Only
                // a page that does not parse so is looked at again, to say what is wrong.
                let page: Page = match serde_json::from_slice(&body) {
                    Ok(page) => page,
                    Err(e) => return Err(self.page_error(operation, &path, &body, e).into()),
                };
                on_page(page.images)?;
                if let Some(link) = page.next.as_deref() {
                    // A repeated link means a server paging in circles; a listing can never be
                    // longer than that, so the guard costs one string per page, not per image.
                    if !markers.insert(link.to_string()) {
                        return Err(self
                            .protocol(
                                operation,
                                format!("'next' link {link} repeats: paging would never end"),
                            )
                            .into());
                    }
                    next = Some(link.to_string());
                }
            }
        }
        Ok(())
    }

    /// One cheap authenticated call, to show that the endpoint answers as Glance v2.
    pub async fn probe(&self) -> Result<(), GlanceError> {
        let operation = "list images (probe)";
        let page: Value = self
            .json(operation, Method::GET, |b| b, "/v2/images?limit=1")
            .await?;
        if page.get("images").and_then(Value::as_array).is_none() {
            return Err(self.protocol(
                operation,
                "no 'images' array: is this a Glance v2 endpoint?".into(),
            ));
        }
        Ok(())
    }

    pub async fn get_image(&self, id: &str) -> Result<Image, GlanceError> {
        let operation = format!("show image {id}");
        self.json(&operation, Method::GET, |b| b, &format!("/v2/images/{id}"))
            .await
    }

    /// `POST /v2/images`: the image is `queued` afterwards, with no data.
    pub async fn create_image(&self, body: &Value) -> Result<Image, GlanceError> {
        let id = body["id"].as_str().unwrap_or("?");
        let name = body["name"].as_str().unwrap_or("");
        let operation = format!("create image {id} ('{name}')");
        match self
            .json(&operation, Method::POST, |b| b.json(body), "/v2/images")
            .await
        {
            // The id is ours: a 409 after a retried create means the first attempt got through.
            Err(e) if e.status() == Some(409) => match self.get_image(id).await {
                Ok(img)
                    if img.status == "queued"
                        && img.property(crate::image::MARKER_SOURCE_ID)
                            == body[crate::image::MARKER_SOURCE_ID].as_str() =>
                {
                    Ok(img)
                }
                _ => Err(e),
            },
            other => other,
        }
    }

    /// Applies a JSON patch in one request (atomic on the server).
    pub async fn patch_image(&self, id: &str, ops: &[PatchOp]) -> Result<Image, GlanceError> {
        let operation = format!("update metadata of image {id}");
        let body = serde_json::to_vec(ops).expect("patch ops serialise");
        self.json(
            &operation,
            Method::PATCH,
            |b| {
                b.header(reqwest::header::CONTENT_TYPE, PATCH_MEDIA_TYPE)
                    .body(body.clone())
            },
            &format!("/v2/images/{id}"),
        )
        .await
    }

    pub async fn delete_image(&self, id: &str) -> Result<(), GlanceError> {
        let operation = format!("delete image {id}");
        self.call(
            &operation,
            Method::DELETE,
            |b| b,
            &format!("/v2/images/{id}"),
        )
        .await
        .map(drop)
    }

    pub async fn deactivate(&self, id: &str) -> Result<(), GlanceError> {
        let operation = format!("deactivate image {id}");
        let path = format!("/v2/images/{id}/actions/deactivate");
        self.call(&operation, Method::POST, |b| b, &path)
            .await
            .map(drop)
    }

    pub async fn reactivate(&self, id: &str) -> Result<(), GlanceError> {
        let operation = format!("reactivate image {id}");
        let path = format!("/v2/images/{id}/actions/reactivate");
        self.call(&operation, Method::POST, |b| b, &path)
            .await
            .map(drop)
    }

    /// `POST /v2/images/{id}/import`: starts one of Glance's import flows. Accepted (202) says
    /// nothing about the outcome: the image's status and its tasks do.
    pub async fn import_image(&self, id: &str, body: &Value) -> Result<(), GlanceError> {
        let method = body["method"]["name"].as_str().unwrap_or("?");
        let operation = format!("import image {id} ({method})");
        self.call(
            &operation,
            Method::POST,
            |b| b.json(body),
            &format!("/v2/images/{id}/import"),
        )
        .await
        .map(drop)
    }

    /// The tasks of an image's imports, newest first.
    pub async fn image_tasks(&self, id: &str) -> Result<Vec<ImportTask>, GlanceError> {
        #[derive(serde::Deserialize)]
        struct Tasks {
            tasks: Vec<ImportTask>,
        }
        let operation = format!("list import tasks of image {id}");
        let mut tasks: Tasks = self
            .json(
                &operation,
                Method::GET,
                |b| b,
                &format!("/v2/images/{id}/tasks"),
            )
            .await?;
        tasks.tasks.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(tasks.tasks)
    }

    /// The import methods this Glance offers (`GET /v2/info/import`).
    pub async fn import_methods(&self) -> Result<Vec<String>, GlanceError> {
        let operation = "list import methods";
        let info: Value = self
            .json(operation, Method::GET, |b| b, "/v2/info/import")
            .await?;
        Ok(info["import-methods"]["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect())
    }

    /// The stores of a multi-store Glance (`GET /v2/info/stores`); `None` when it has a single
    /// store (it answers 404 then).
    pub async fn stores(&self) -> Result<Option<Vec<String>>, GlanceError> {
        let operation = "list stores";
        match self
            .json::<Value>(operation, Method::GET, |b| b, "/v2/info/stores")
            .await
        {
            Ok(info) => Ok(Some(
                info["stores"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["id"].as_str().map(str::to_string))
                    .collect(),
            )),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The projects an image is shared with, and each one's acceptance status.
    pub async fn list_members(&self, id: &str) -> Result<Vec<Member>, GlanceError> {
        let operation = format!("list members of image {id}");
        let page: Value = self
            .json(
                &operation,
                Method::GET,
                |b| b,
                &format!("/v2/images/{id}/members"),
            )
            .await?;
        let members = page
            .get("members")
            .and_then(Value::as_array)
            .ok_or_else(|| self.protocol(&operation, "no 'members' array".into()))?;
        Ok(members
            .iter()
            .filter_map(|m| {
                Some(Member {
                    project: m.get("member_id")?.as_str()?.to_string(),
                    status: m.get("status")?.as_str()?.to_string(),
                })
            })
            .collect())
    }

    /// Shares image `id` with `project` (its status starts `pending`).
    pub async fn add_member(&self, id: &str, project: &str) -> Result<(), GlanceError> {
        let operation = format!("add member {project} to image {id}");
        let body = serde_json::json!({ "member": project });
        self.call(
            &operation,
            Method::POST,
            |b| b.json(&body),
            &format!("/v2/images/{id}/members"),
        )
        .await
        .map(drop)
    }

    /// Sets a member's status: by default only an admin, or the member project itself, may.
    pub async fn set_member_status(
        &self,
        id: &str,
        project: &str,
        status: &str,
    ) -> Result<(), GlanceError> {
        let operation = format!("set member {project} of image {id} to {status}");
        let body = serde_json::json!({ "status": status });
        self.call(
            &operation,
            Method::PUT,
            |b| b.json(&body),
            &format!("/v2/images/{id}/members/{project}"),
        )
        .await
        .map(drop)
    }

    pub async fn remove_member(&self, id: &str, project: &str) -> Result<(), GlanceError> {
        let operation = format!("remove member {project} from image {id}");
        self.call(
            &operation,
            Method::DELETE,
            |b| b,
            &format!("/v2/images/{id}/members/{project}"),
        )
        .await
        .map(drop)
    }

    /// `GET /file`: the response, whose body is then streamed by the caller. A 204 is an error: it
    /// means the image has no data even when its status says otherwise (quirk 9).
    pub async fn download(&self, id: &str) -> Result<Response, GlanceError> {
        let operation = format!("download image {id}");
        let path = format!("/v2/images/{id}/file");
        // No whole-request timeout (the body may take hours), but the headers must come in time.
        let resp = tokio::time::timeout(
            self.session.api_timeout(),
            self.send_streaming(&operation, Method::GET, |b| b, &path),
        )
        .await
        .map_err(|_| GlanceError::Transport {
            cloud: self.cloud().to_string(),
            operation: operation.clone(),
            message: format!(
                "no response within {} s (api_timeout)",
                self.session.api_timeout().as_secs()
            ),
        })??;
        if resp.status() != StatusCode::OK {
            return Err(self.protocol(
                &operation,
                format!(
                    "HTTP {} instead of 200 with the image data (the store may have lost it)",
                    resp.status().as_u16()
                ),
            ));
        }
        Ok(resp)
    }

    /// `GET /file` from byte `offset` on, to resume a broken download. Returns the response and how
    /// many bytes of its body to skip: 0 when the server honoured the Range (206), `offset` when it
    /// sent the whole image again (200).
    pub async fn download_from(
        &self,
        id: &str,
        offset: u64,
    ) -> Result<(Response, u64), GlanceError> {
        let operation = format!("resume download of image {id} at byte {offset}");
        let path = format!("/v2/images/{id}/file");
        let range = format!("bytes={offset}-");
        let resp = tokio::time::timeout(
            self.session.api_timeout(),
            self.send_streaming(
                &operation,
                Method::GET,
                |b| b.header(reqwest::header::RANGE, &range),
                &path,
            ),
        )
        .await
        .map_err(|_| self.protocol(&operation, "no response within api_timeout".into()))??;
        match resp.status() {
            StatusCode::OK => Ok((resp, offset)),
            StatusCode::PARTIAL_CONTENT => {
                let content_range = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if content_range.starts_with(&format!("bytes {offset}-")) {
                    Ok((resp, 0))
                } else {
                    Err(self.protocol(
                        &operation,
                        format!("206 with Content-Range '{content_range}', not from byte {offset}"),
                    ))
                }
            }
            other => Err(self.protocol(
                &operation,
                format!("HTTP {} instead of 200 or 206", other.as_u16()),
            )),
        }
    }

    pub fn retries(&self) -> usize {
        self.session.retries()
    }

    /// `PUT /file` with a streamed body of exactly `size` bytes, into `store` of a multi-store
    /// Glance when given. Not retried: the body is consumed.
    pub async fn upload(
        &self,
        id: &str,
        size: u64,
        body: reqwest::Body,
        store: Option<&str>,
    ) -> Result<(), GlanceError> {
        let operation = format!("upload data of image {id}");
        let access = self.session.access().await?;
        let url = format!("{}/v2/images/{id}/file", access.endpoint);
        let mut req = self
            .session
            .http()
            .put(&url)
            // Without it Glance words its errors as an HTML page.
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            // Without a length reqwest sends the stream chunked and Glance cannot check quota or
            // size up front (quirk 5).
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header("x-openstack-image-size", size)
            .body(body);
        if let Some(t) = token_header(&access) {
            req = req.header("X-Auth-Token", t);
        }
        if let Some(store) = store {
            req = req.header("X-Image-Meta-Store", store);
        }
        let started = Instant::now();
        let resp = req.send().await;
        self.session.observe(
            "upload",
            format_args!("PUT /v2/images/{id}/file ({size} bytes)"),
            resp.as_ref().ok().map(|r| r.status().as_u16()),
            started.elapsed(),
        );
        let resp = resp.map_err(|e| self.transport(&operation, &e))?;
        self.check(&operation, resp).await.map(drop)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        operation: &str,
        method: Method,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
        path: &str,
    ) -> Result<T, GlanceError> {
        self.call(operation, method, build, path)
            .await?
            .json()
            .await
            .map_err(|e| self.protocol(operation, format!("body not understood: {e}")))
    }

    /// One API call with the whole-request timeout, retried once with a new token on 401.
    async fn call(
        &self,
        operation: &str,
        method: Method,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
        path: &str,
    ) -> Result<Response, GlanceError> {
        let timeout = self.session.api_timeout();
        self.send_with_reauth(operation, method, |b| build(b).timeout(timeout), path)
            .await
    }

    /// Like [`call`](Self::call) but without a whole-request timeout: the body may take hours.
    async fn send_streaming(
        &self,
        operation: &str,
        method: Method,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
        path: &str,
    ) -> Result<Response, GlanceError> {
        self.send_with_reauth(operation, method, build, path).await
    }

    /// Sends a request until it succeeds, fails for good, or runs out of retries: a 401 renews
    /// the token once; connection errors, timeouts, 408, 429, 500, 502, 503 and 504 are retried
    /// with backoff (honouring `Retry-After`); any other answer is final.
    async fn send_with_reauth(
        &self,
        operation: &str,
        method: Method,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
        path: &str,
    ) -> Result<Response, GlanceError> {
        let mut retried = false;
        let mut backoff = self.session.backoff();
        loop {
            let access = self.session.access().await?;
            let started = Instant::now();
            let resp = self
                .request(&access, method.clone(), path, &build)
                .send()
                .await;
            self.session.observe(
                operation_kind(&method, path),
                format_args!("{method} {path}"),
                resp.as_ref().ok().map(|r| r.status().as_u16()),
                started.elapsed(),
            );
            let resp = match resp {
                Ok(r) => r,
                Err(e) if is_transient(&e) => match backoff.next() {
                    Some(wait) => {
                        tracing::warn!(cloud = %self.cloud(), operation, "{}; retrying in {:.1} s", error_chain(&e), wait.as_secs_f64());
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    None => return Err(self.transport(operation, &e)),
                },
                Err(e) => return Err(self.transport(operation, &e)),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !retried {
                tracing::info!(cloud = %self.cloud(), operation, "token refused (401), authenticating again");
                self.session.invalidate(&access).await;
                retried = true;
                continue;
            }
            if is_retryable(status)
                && let Some(wait) = backoff.next()
            {
                let wait = retry_after(&resp)
                    .map(|w| w.min(self.session.retry_max_delay()))
                    .unwrap_or(wait);
                tracing::warn!(
                    cloud = %self.cloud(), operation,
                    "HTTP {}; retrying in {:.1} s", status.as_u16(), wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            return self.check(operation, resp).await;
        }
    }

    fn request(
        &self,
        access: &Access,
        method: Method,
        path: &str,
        build: &impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> RequestBuilder {
        let mut req = self
            .session
            .http()
            .request(method, format!("{}{path}", access.endpoint))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = token_header(access) {
            req = req.header("X-Auth-Token", t);
        }
        build(req)
    }

    async fn check(&self, operation: &str, resp: Response) -> Result<Response, GlanceError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let request_id = resp
            .headers()
            .get("x-openstack-request-id")
            .and_then(|v| v.to_str().ok())
            .map(|id| format!(" (request {id})"))
            .unwrap_or_default();
        let text = resp.text().await.unwrap_or_default();
        let message = glance_message(&text);
        Err(GlanceError::Http {
            cloud: self.cloud().to_string(),
            operation: operation.to_string(),
            status: status.as_u16(),
            what_to_do: what_to_do(status.as_u16(), self.cloud(), &message)
                .map(|advice| format!("; {advice}"))
                .unwrap_or_default(),
            message,
            request_id,
        })
    }

    fn transport(&self, operation: &str, e: &reqwest::Error) -> GlanceError {
        let cause = error_chain(e);
        let cloud = self.cloud();
        let lower = cause.to_ascii_lowercase();
        let advice = if lower.contains("certificate") {
            format!("give cloud '{cloud}' the CA that signed its certificate (cacert)")
        } else if lower.contains("writing a body") {
            // A server that refuses an upload early (quota, size cap) may close the connection
            // before its answer can be read.
            format!(
                "cloud '{cloud}' closed the connection during the upload, possibly refusing the \
                 image (quota or size cap): its logs say why; the next run tries again"
            )
        } else {
            format!(
                "check that the image endpoint of cloud '{cloud}' is reachable from this host; the \
                 next run tries again"
            )
        };
        GlanceError::Transport {
            cloud: cloud.to_string(),
            operation: operation.to_string(),
            message: format!("{cause}; {advice}"),
        }
    }

    /// What is wrong with a page of the image listing that did not parse.
    fn page_error(
        &self,
        operation: &str,
        path: &str,
        body: &[u8],
        error: serde_json::Error,
    ) -> GlanceError {
        let message = match serde_json::from_slice::<Value>(body) {
            Err(e) => format!("page is not JSON: {e}"),
            Ok(page) => match page.get("images").and_then(Value::as_array) {
                None => format!("page {path} has no 'images' array"),
                Some(items) => items
                    .iter()
                    .find_map(|item| serde_json::from_value::<Image>(item.clone()).err())
                    .map_or_else(
                        || format!("page {path} not understood: {error}"),
                        |e| format!("image entry not understood: {e}"),
                    ),
            },
        };
        self.protocol(operation, message)
    }

    pub(crate) fn protocol(&self, operation: &str, message: String) -> GlanceError {
        GlanceError::Protocol {
            cloud: self.cloud().to_string(),
            operation: operation.to_string(),
            message,
        }
    }
}

/// What an operator can do about a final HTTP error, for the statuses where we know. `message` is
/// Glance's own explanation: a 413 means one of several limits.
fn what_to_do(status: u16, cloud: &str, message: &str) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    Some(match status {
        401 => format!(
            "the token was refused: check the credentials of cloud '{cloud}' ([clouds.{cloud}] \
             or its clouds.yaml entry)"
        ),
        403 => format!(
            "the user of cloud '{cloud}' lacks the permission: check its roles against Glance's \
             policy (by default making an image public, setting an image's owner and setting \
             another project's member status need the admin role)"
        ),
        404 => format!(
            "cloud '{cloud}' knows no such thing: an image deleted meanwhile (the next run plans \
             again), or, if even listing fails, a wrong image endpoint (interface, region_name \
             or image_endpoint_override)"
        ),
        409 => {
            "the image changed state meanwhile (another client?); the next run plans again".into()
        }
        413 if lower.contains("image properties") => format!(
            "the image has more properties than cloud '{cloud}' allows (image_property_quota, \
             128 by default): raise it in the cloud's glance-api.conf, or leave the image out \
             with the job's filter"
        ),
        413 if lower.contains("tags") => format!(
            "the image has more tags than cloud '{cloud}' allows (image_tag_quota, 128 by \
             default): raise it, or leave the image out with the job's filter"
        ),
        413 => format!(
            "cloud '{cloud}' refuses the size (image quota, storage quota or image_size_cap): \
             raise the project's quota, or leave the image out with the job's filter"
        ),
        415 => format!(
            "cloud '{cloud}' does not accept this image's disk or container format: allow it in \
             its glance-api.conf, or leave the image out with the job's filter"
        ),
        500..=599 => format!(
            "Glance on cloud '{cloud}' is failing: its logs say why (search for the request \
             id); the next run tries again"
        ),
        _ => return None,
    })
}

/// Failures to reach the cloud that may pass if tried again. A certificate that does not verify
/// will not verify next time either: retrying it only delays the error.
fn is_transient(e: &reqwest::Error) -> bool {
    let chain = error_chain(e).to_ascii_lowercase();
    (e.is_connect() || e.is_timeout() || e.is_request())
        && !chain.contains("certificate")
        && !chain.contains("tls handshake")
}

/// Answers that may pass if asked again.
fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` in seconds (the HTTP-date form is rare from OpenStack; it falls back to backoff).
fn retry_after(resp: &Response) -> Option<std::time::Duration> {
    let secs: u64 = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs(secs))
}

/// The `operation` label of API metrics: a small fixed set derived from the request.
fn operation_kind(method: &Method, path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["v2", "images"]) => "list",
        ("GET", ["v2", "images", _]) => "show",
        ("GET", ["v2", "images", _, "file"]) => "download",
        ("POST", ["v2", "images"]) => "create",
        ("PATCH", ["v2", "images", _]) => "update",
        ("DELETE", ["v2", "images", _]) => "delete",
        ("POST", ["v2", "images", _, "actions", "deactivate"]) => "deactivate",
        ("POST", ["v2", "images", _, "actions", "reactivate"]) => "reactivate",
        ("POST", ["v2", "images", _, "import"]) => "import",
        (_, ["v2", "images", _, "members", ..]) => "members",
        _ => "other",
    }
}

/// One import task of an image, as far as glance-sync reads it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ImportTask {
    pub id: String,
    /// pending | processing | success | failure
    pub status: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// The token as a header value marked sensitive, so no HTTP-layer debug output can print it.
fn token_header(access: &Access) -> Option<reqwest::header::HeaderValue> {
    let mut v = reqwest::header::HeaderValue::from_str(access.token()?).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// WebOb's error body: JSON `{"message": ...}` with HTML breaks, plain text (quirk 22), or an
/// HTML page (Glance without `Accept: application/json`, or a proxy in front of it), reduced to
/// its text on one line.
fn glance_message(body: &str) -> String {
    let raw = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    let cleaned = html_text(&raw)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    cleaned.chars().take(300).collect()
}

/// The text of an HTML fragment: tags dropped (a page's `<title>` with them, as the heading
/// repeats it), the common entities decoded. Text without tags comes back unchanged.
fn html_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('>') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let tag = rest[open + 1..open + close].to_ascii_lowercase();
        rest = &rest[open + close + 1..];
        if tag == "title" {
            rest = rest
                .find("</title>")
                .or_else(|| rest.find("</TITLE>"))
                .map_or("", |end| &rest[end + "</title>".len()..]);
        }
        out.push(' ');
    }
    out.push_str(rest);
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webob_json_error_body_becomes_one_clean_line() {
        let body = r#"{"message": "Image status transition from active to saving is not allowed<br /><br />\n\n\n", "code": "409 Conflict", "title": "Conflict"}"#;
        assert_eq!(
            glance_message(body),
            "Image status transition from active to saving is not allowed"
        );
    }

    #[test]
    fn an_html_error_page_becomes_its_text() {
        // Real Glance 33 answers a download of a missing image like this without an Accept header.
        let body = "<html>\n <head>\n  <title>404 Not Found</title>\n </head>\n <body>\n  \
                    <h1>404 Not Found</h1>\n  No image found with ID x &amp; y<br /><br />\n\n\n\n \
                    </body>\n</html>";
        assert_eq!(
            glance_message(body),
            "404 Not Found No image found with ID x & y"
        );
        assert_eq!(glance_message("plain text, 5 < 6"), "plain text, 5 < 6");
    }

    #[test]
    fn a_refused_property_count_names_the_property_limit() {
        let message = "The limit has been exceeded on the number of allowed image properties. \
                       Attempted: 129, Maximum: 128";
        let advice = what_to_do(413, "dr", message).unwrap();
        assert!(advice.contains("image_property_quota"), "{advice}");
        assert!(!advice.contains("size"), "{advice}");
    }

    #[test]
    fn errors_an_operator_can_act_on_say_what_to_do_on_which_cloud() {
        let e = GlanceError::Http {
            cloud: "dr".into(),
            operation: "create image 'x'".into(),
            status: 403,
            message: "Forbidden".into(),
            request_id: " (request req-1)".into(),
            what_to_do: format!("; {}", what_to_do(403, "dr", "Forbidden").unwrap()),
        };
        assert_eq!(
            e.to_string(),
            "cloud 'dr': create image 'x' failed: HTTP 403: Forbidden (request req-1); the user \
             of cloud 'dr' lacks the permission: check its roles against Glance's policy (by \
             default making an image public, setting an image's owner and setting another \
             project's member status need the admin role)"
        );
        for status in [401, 403, 404, 409, 413, 415, 500, 503] {
            assert!(what_to_do(status, "dr", "").is_some(), "{status}");
        }
        // A 400's message is the advice: Glance says what it found invalid.
        assert_eq!(what_to_do(400, "dr", ""), None);
    }
}
