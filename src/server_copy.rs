//! Copies whose bytes Glance moves itself: the target Glance pulls the image from the source
//! region (`glance-download`, an interoperable import method since Zed).
//!
//! ```text
//!   glance-sync: create our copy (queued) ─▶ POST /import {glance-download} ─▶ poll
//!   target Glance ──GET /v2/images/{id}/file (the caller's token)──▶ source Glance
//!   glance-sync: active, lock gone ─▶ size + digests = the source's ─▶ one metadata patch
//! ```
//! Glance's pull checks only the byte count, copies almost no metadata and reports every
//! failure as "Internal Error". glance-sync makes it safe: our copy's id is in the ledger before
//! the create call (as for a stream), the copy is verified against the source's recorded
//! digests once active, a copy that fails is deleted, and the metadata Glance did not set is set
//! with one patch, after the import released its lock (a patch before that can be undone by the
//! import's last step).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::{MetadataRules, TransferMethod};
use crate::glance::{GlanceClient, GlanceError};
use crate::image::Image;
use crate::metadata::{Metadata, current_metadata, metadata_patch};
use crate::transfer::{CopyMethod, CopyOutcome, CopyTarget, FailureReason, TransferError};
use crate::verify;

/// The import method a target must offer.
pub const GLANCE_DOWNLOAD: &str = "glance-download";

/// The property Glance keeps on an image while one of its imports holds the image's lock.
const IMPORT_LOCK: &str = "os_glance_import_task";

/// An import is given `stall_timeout` plus its size at this rate before glance-sync gives up on
/// it. Glance shows no byte progress during a pull, so this is the only bound there is.
const MIN_PULL_BYTES_PER_SECOND: u64 = 10_000_000;

/// How a run copies to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// glance-sync streams the bytes (transfer.rs).
    Stream,
    /// The target pulls from the source region.
    Pull(PullFrom),
    /// `transfer = "glance-download"` cannot work here: every copy to this target fails with
    /// this reason.
    Refuse(String),
}

/// Where the target pulls from: the source cloud as the target's Keystone catalog names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullFrom {
    pub region: String,
    pub interface: String,
}

/// Decides how this run copies from `source` to `target` for the job's `transfer` setting: one
/// `GET /v2/info/import` on the target for `auto`. Returns the route and, for `auto` choosing a
/// stream, why (said once per run).
pub async fn discover(
    source: &GlanceClient,
    target: &GlanceClient,
    wanted: TransferMethod,
) -> (Route, Option<String>) {
    if wanted == TransferMethod::Stream {
        return (Route::Stream, None);
    }
    let cannot = |why: String| match wanted {
        TransferMethod::Auto => (Route::Stream, Some(why)),
        _ => (
            Route::Refuse(format!(
                "transfer = \"glance-download\" cannot work from cloud '{}' to cloud '{}': {why}; \
                 use transfer = \"auto\" or \"stream\"",
                source.cloud(),
                target.cloud()
            )),
            None,
        ),
    };
    let (from, to) = (source.session().keystone(), target.session().keystone());
    let Some(keystone) = from.as_ref().filter(|k| to.as_ref() == Some(*k)) else {
        return cannot(format!(
            "the target pulls with glance-sync's token, so both clouds must authenticate against \
             the same Keystone (auth_url: source {}, target {})",
            from.as_deref().unwrap_or("none"),
            to.as_deref().unwrap_or("none")
        ));
    };
    let region = match source.identity().await {
        Ok(access) => access.region,
        Err(e) => return cannot(format!("the source cloud did not authenticate: {e}")),
    };
    let Some(region) = region else {
        return cannot(format!(
            "the source's region in the catalog of {keystone} is unknown: set region_name for \
             cloud '{}'",
            source.cloud()
        ));
    };
    let from = PullFrom {
        region,
        interface: source.session().interface().to_string(),
    };
    if wanted == TransferMethod::GlanceDownload {
        // Asked for explicitly: a target without the method says so on the first import.
        return (Route::Pull(from), None);
    }
    match target.import_methods().await {
        Ok(methods) if methods.iter().any(|m| m == GLANCE_DOWNLOAD) => (Route::Pull(from), None),
        Ok(methods) => cannot(format!(
            "cloud '{}' does not offer the glance-download import method (it offers: {}; \
             enabled_import_methods in its glance-api.conf)",
            target.cloud(),
            if methods.is_empty() {
                "none".to_string()
            } else {
                methods.join(", ")
            }
        )),
        Err(e) => cannot(format!("its import methods could not be read: {e}")),
    }
}

/// What became of one pull.
pub struct Pulled {
    pub outcome: CopyOutcome,
    /// The pull failed before any byte reached the copy, which is still ours and `queued` (or
    /// holds a lock that an upload ignores): with `transfer = "auto"` the caller streams into it.
    pub stream_instead: Option<String>,
}

/// Everything a pull needs besides the copy itself.
pub struct Pull<'a> {
    pub source: &'a Image,
    pub from: &'a PullFrom,
    /// The copy's metadata (set by one patch after verification, `protected` included).
    pub metadata: &'a Metadata,
    pub rules: &'a MetadataRules,
    /// `transfer = "auto"`: a failure a stream would not have is handed back for streaming.
    pub may_stream: bool,
    pub stall_timeout: Duration,
    /// Stores of a multi-store target to import into (empty: its default).
    pub stores: &'a [String],
}

/// Has `t`'s Glance pull `p.source` into our copy, then verifies it and sets its metadata.
pub async fn glance_download(p: &Pull<'_>, t: CopyTarget, cancel: &CancellationToken) -> Pulled {
    let (t, created, refused) = crate::transfer::create(t).await;
    let outcome = |t: &CopyTarget, result: Result<(), TransferError>, removed: bool| CopyOutcome {
        target: t.client.cloud().to_string(),
        method: CopyMethod::GlanceDownload,
        refused_ids: refused.iter().cloned().collect(),
        target_id: t.target_id.clone(),
        result,
        removed,
    };
    if let Err(e) = created {
        return Pulled {
            outcome: outcome(&t, Err(e), false),
            stream_instead: None,
        };
    }
    let failed = match pull(p, &t, cancel).await {
        Ok(copy) => {
            return Pulled {
                outcome: outcome(&t, finish(p, &t, &copy).await, false),
                stream_instead: None,
            };
        }
        Err(f) => f,
    };
    let stream_instead = (p.may_stream && failed.nothing_stored && !cancel.is_cancelled())
        .then(|| failed.error.message.clone());
    if stream_instead.is_some() {
        return Pulled {
            outcome: outcome(&t, Err(failed.error), false),
            stream_instead,
        };
    }
    // A copy under the source's id is kept (Glance never gives a deleted id out again); any
    // other failed copy goes, so nothing half-made stays behind.
    let removed = !failed.keep && !t.preserving_id && crate::transfer::remove_failed_copy(&t).await;
    Pulled {
        outcome: outcome(&t, Err(failed.error), removed),
        stream_instead: None,
    }
}

struct PullFailure {
    error: TransferError,
    /// No byte of the image is on the target: the copy is `queued`.
    nothing_stored: bool,
    /// Leave the copy as it is: it is queued, without lock, and the next run imports into it.
    keep: bool,
}

/// Starts the import and waits for its end: the copy active with the import's lock released.
async fn pull(
    p: &Pull<'_>,
    t: &CopyTarget,
    cancel: &CancellationToken,
) -> Result<Image, PullFailure> {
    let cloud = t.client.cloud();
    let id = &t.target_id;
    let mut body = import_body(&p.source.id, p.from);
    if !p.stores.is_empty() {
        body["stores"] = json!(p.stores);
    }
    let fail = |reason, message: String, nothing_stored, keep| PullFailure {
        error: TransferError::new(reason, message),
        nothing_stored,
        keep,
    };
    if let Err(e) = t.client.import_image(id, &body).await {
        let text = e.to_string();
        return Err(match e.status() {
            Some(400) if text.contains("Unknown import method") => fail(
                FailureReason::TargetImport,
                format!(
                    "cloud '{cloud}' does not offer the glance-download import method (add it to \
                     enabled_import_methods in its glance-api.conf, or use transfer = \"auto\" \
                     or \"stream\"): {text}"
                ),
                true,
                true,
            ),
            Some(409) if text.contains("active task") => fail(
                FailureReason::TargetImport,
                format!(
                    "copy {id} on cloud '{cloud}' is locked by an earlier import that failed while \
                     downloading (Glance keeps the lock for an hour): {text}"
                ),
                true,
                false,
            ),
            _ => PullFailure {
                error: TransferError::from_glance(FailureReason::TargetImport, e),
                nothing_stored: true,
                keep: true,
            },
        });
    }
    let size = p.source.size.unwrap_or(0);
    let limit = p.stall_timeout + Duration::from_secs(size / MIN_PULL_BYTES_PER_SECOND);
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Err(fail(
                FailureReason::Interrupted,
                format!("shutting down during the import of copy {id} on cloud '{cloud}'"),
                false,
                false,
            )),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(2));
        let copy = match t.client.get_image(id).await {
            Ok(copy) => copy,
            Err(e) if e.status() == Some(404) => {
                return Err(fail(
                    FailureReason::TargetImport,
                    format!("copy {id} on cloud '{cloud}' disappeared during its import"),
                    false,
                    true,
                ));
            }
            // A passing error: the deadline bounds how long this goes on.
            Err(e) => {
                tracing::debug!(cloud, image = %id, "reading the copy during its import: {e}");
                continue;
            }
        };
        let locked = copy.property(IMPORT_LOCK).is_some();
        match copy.status.as_str() {
            "active" if !locked => return Ok(copy),
            "queued" => {
                if let Some(failure) = task_failure(t, locked).await {
                    return Err(failure);
                }
            }
            "active" | "importing" | "saving" | "uploading" => {}
            other => {
                return Err(fail(
                    FailureReason::TargetImport,
                    format!("copy {id} on cloud '{cloud}' became {other} during its import"),
                    false,
                    false,
                ));
            }
        }
        if started.elapsed() > limit {
            return Err(fail(
                FailureReason::TargetImport,
                format!(
                    "the import of copy {id} on cloud '{cloud}' did not finish within {} s \
                     (status {}): the target's Glance import worker may be stuck; its \
                     glance-api log says more",
                    limit.as_secs(),
                    copy.status
                ),
                false,
                false,
            ));
        }
    }
}

/// The import's failure, once its task says so (Glance puts a failed pull's image back to
/// `queued`, and reports every cause as "Internal Error": the cause is only in its log).
async fn task_failure(t: &CopyTarget, locked: bool) -> Option<PullFailure> {
    let cloud = t.client.cloud();
    let id = &t.target_id;
    let task = match t.client.image_tasks(id).await {
        Ok(tasks) => tasks.into_iter().next()?,
        Err(_) => return None,
    };
    if task.status != "failure" {
        return None;
    }
    let said = format!(
        "Glance's task {} says \"{}\"; the cause is in cloud '{cloud}''s glance-api log (search \
         for the task id)",
        task.id, task.message
    );
    Some(if locked {
        // Failed while downloading: the image keeps the import lock, so no import can retry
        // into it for an hour. An upload still can.
        PullFailure {
            error: TransferError::new(
                FailureReason::TargetImport,
                format!(
                    "the import of copy {id} on cloud '{cloud}' failed while downloading from the \
                     source (short or broken data from the source's Glance, or the connection \
                     between the regions); {said}"
                ),
            ),
            nothing_stored: true,
            keep: false,
        }
    } else {
        PullFailure {
            error: TransferError::new(
                FailureReason::TargetImport,
                format!(
                    "the import of copy {id} on cloud '{cloud}' failed before any data was \
                     stored: the source region unknown to the target's catalog, no endpoint for \
                     the interface, the source image not visible to the target's credentials, or \
                     the target's URI filtering ([import_filtering_opts] allowed_hosts and \
                     allowed_ports); {said}"
                ),
            ),
            nothing_stored: true,
            keep: true,
        }
    })
}

/// Verifies an imported copy against the source's record, then sets its metadata. A copy whose
/// bytes differ is deleted.
async fn finish(p: &Pull<'_>, t: &CopyTarget, copy: &Image) -> Result<(), TransferError> {
    let cloud = t.client.cloud();
    if let Err(e) = verify::check_copy(&verify::Proven::recorded_by(p.source), copy) {
        let removed = crate::transfer::remove_failed_copy(t).await;
        return Err(TransferError::new(
            FailureReason::Verification,
            format!(
                "cloud '{cloud}': copy {} failed verification after its import: {e}{}",
                t.target_id,
                if removed { "; it was deleted" } else { "" }
            ),
        ));
    }
    let patch = metadata_patch(&current_metadata(copy), p.metadata, p.rules);
    if !patch.is_empty() {
        t.client
            .patch_image(&t.target_id, &patch)
            .await
            .map_err(|e| TransferError::from_glance(FailureReason::TargetMetadata, e))?;
    }
    Ok(())
}

/// `POST /v2/images/{id}/import`'s body for a pull of `source_id`.
fn import_body(source_id: &str, from: &PullFrom) -> Value {
    json!({"method": {
        "name": GLANCE_DOWNLOAD,
        "glance_image_id": source_id,
        "glance_region": from.region,
        "glance_service_interface": from.interface,
    }})
}

/// Has a multi-store target copy one of its images into `stores` from a store it is in
/// (`copy-image`, admin-only in Glance's default policy), and waits until the image is in every
/// one of them.
pub async fn copy_to_stores(
    client: &GlanceClient,
    id: &str,
    stores: &[String],
    stall_timeout: Duration,
) -> Result<(), GlanceError> {
    let operation = format!("copy image {id} into store {}", stores.join(", "));
    let body = json!({"method": {"name": "copy-image"}, "stores": stores});
    client.import_image(id, &body).await?;
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
        let image = client.get_image(id).await?;
        let listed = |key: &str| -> Vec<String> {
            image
                .property(key)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let failed: Vec<String> = listed("os_glance_failed_import")
            .into_iter()
            .filter(|s| stores.contains(s))
            .collect();
        if !failed.is_empty() {
            return Err(client.protocol(
                &operation,
                format!(
                    "Glance could not copy it into store {} (os_glance_failed_import); the cause \
                     is in cloud '{}''s glance-api log",
                    failed.join(", "),
                    client.cloud()
                ),
            ));
        }
        let have = listed("stores");
        if stores.iter().all(|s| have.contains(s)) && image.property(IMPORT_LOCK).is_none() {
            return Ok(());
        }
        let limit = stall_timeout
            + Duration::from_secs(image.size.unwrap_or(0) / MIN_PULL_BYTES_PER_SECOND);
        if started.elapsed() > limit {
            return Err(client.protocol(
                &operation,
                format!(
                    "not in every store within {} s (in: {}): the target's import worker may be \
                     stuck; its glance-api log says more",
                    limit.as_secs(),
                    have.join(", ")
                ),
            ));
        }
    }
}

/// Whether `target` has every store in `wanted`: `Err` says which it lacks, or that it has a
/// single store.
pub async fn check_stores(target: &GlanceClient, wanted: &[String]) -> Result<(), String> {
    if wanted.is_empty() {
        return Ok(());
    }
    match target.stores().await {
        Ok(Some(have)) => {
            let unknown: Vec<&str> = wanted
                .iter()
                .filter(|s| !have.contains(s))
                .map(String::as_str)
                .collect();
            if unknown.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "cloud '{}' has no store {} (it has: {}): fix stores in the job",
                    target.cloud(),
                    unknown.join(", "),
                    have.join(", ")
                ))
            }
        }
        Ok(None) => Err(format!(
            "cloud '{}' is a single-store Glance, but the job names stores {}: remove stores \
             for this target",
            target.cloud(),
            wanted.join(", ")
        )),
        Err(e) => Err(format!(
            "the stores of cloud '{}' could not be read: {e}",
            target.cloud()
        )),
    }
}
