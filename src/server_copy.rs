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
const MIN_PULL_BYTES_PER_SECOND: u64 = 2_000_000;

/// How a run copies to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// glance-sync streams the bytes (transfer.rs).
    Stream,
    /// The target pulls from the source region.
    Pull(PullFrom),
    /// No copy to this target can be made this run (`transfer = "glance-download"` cannot work,
    /// a store the job names is missing): every one fails with this reason.
    Refuse(String, FailureReason),
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
            Route::Refuse(
                format!(
                    "transfer = \"glance-download\" cannot work from cloud '{}' to cloud '{}': \
                     {why}; use transfer = \"auto\" or \"stream\"",
                    source.cloud(),
                    target.cloud()
                ),
                FailureReason::TargetImport,
            ),
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
        // Asked for explicitly: the first import says whether the method is there.
        Err(_) if wanted == TransferMethod::GlanceDownload => (Route::Pull(from), None),
        Err(e) => cannot(format!("its import methods could not be read: {e}")),
    }
}

/// What became of one pull.
pub struct Pulled {
    pub outcome: CopyOutcome,
    /// Why a stream should make this copy instead (`transfer = "auto"`): the pull failed before
    /// any byte reached the copy, or could not be verified. The copy is then still ours and
    /// `queued` (an upload ignores a lock a failed pull left), or was never created.
    pub stream_instead: Option<String>,
    /// Whether the copy exists on the target (false: nothing was created, or it was deleted).
    pub created: bool,
    /// The copy's id was given to Glance and deleted: a stream needs a new one.
    pub id_spent: bool,
    /// The reason holds for every image to this target (the method, the catalog, filtering,
    /// a converting import), not just this copy: stream to it for the rest of the run.
    pub whole_target: bool,
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
///
/// A copy that fails is deleted, so nothing half-made stays behind, unless it carries the
/// source's id (`preserve_ids`): Glance never gives a deleted id out again, so such a copy is
/// left `queued` (or importing) and the next run imports or uploads into it.
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
            // A create that timed out may still have happened: the ledger keeps the id.
            created: true,
            id_spent: false,
            whole_target: false,
        };
    }
    let failed = match pull(p, &t, cancel).await {
        Ok(copy) => {
            let (result, removed) = finish(p, &t, &copy).await;
            // Bytes Glance changed on the way (an import plugin converting formats, say): a
            // stream puts the source's own bytes into a new copy.
            let stream_instead = match &result {
                Err(e) if p.may_stream && removed && e.reason == FailureReason::Verification => {
                    Some(e.message.clone())
                }
                _ => None,
            };
            return Pulled {
                outcome: outcome(&t, result, removed),
                created: !removed,
                id_spent: stream_instead.is_some(),
                whole_target: stream_instead.is_some(),
                stream_instead,
            };
        }
        Err(f) => f,
    };
    if p.may_stream && failed.nothing_stored && !cancel.is_cancelled() {
        return Pulled {
            stream_instead: Some(failed.error.message.clone()),
            whole_target: failed.whole_target,
            outcome: outcome(&t, Err(failed.error), false),
            created: true,
            id_spent: false,
        };
    }
    let removed = !t.preserving_id && crate::transfer::remove_failed_copy(&t).await;
    Pulled {
        outcome: outcome(&t, Err(failed.error), removed),
        stream_instead: None,
        created: !removed,
        id_spent: false,
        whole_target: false,
    }
}

struct PullFailure {
    error: TransferError,
    /// No byte of the image is on the target: the copy is `queued`, its import over.
    nothing_stored: bool,
    /// Every pull to this target would fail so (see [`Pulled::whole_target`]).
    whole_target: bool,
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
    let fail = |reason, message: String, nothing_stored| PullFailure {
        error: TransferError::new(reason, message),
        nothing_stored,
        whole_target: false,
    };
    if let Err(e) = t.client.import_image(id, &body).await
        && let Some(refused) = refused_import(t, e).await
    {
        return Err(refused);
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
            )),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(2));
        let copy = match t.client.get_image(id).await {
            Ok(copy) => copy,
            Err(e) if e.status() == Some(404) => {
                return Err(fail(
                    FailureReason::TargetImport,
                    format!(
                        "copy {id} on cloud '{cloud}' disappeared during its import (deleted by \
                         someone else?); the next run copies again"
                    ),
                    false,
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
                    format!(
                        "copy {id} on cloud '{cloud}' became {other} during its import; the \
                         target's glance-api log says why"
                    ),
                    false,
                ));
            }
        }
        if started.elapsed() > limit {
            return Err(fail(
                FailureReason::TargetImport,
                format!(
                    "the import of copy {id} on cloud '{cloud}' did not finish within {} s \
                     (status {}; glance-sync allows stall_timeout plus 1 s per {} MB): the \
                     target's import worker may be stuck or the link between the regions slow; \
                     its glance-api log says more. Raise [transfer] stall_timeout for slow \
                     links, or use transfer = \"stream\"",
                    limit.as_secs(),
                    copy.status,
                    MIN_PULL_BYTES_PER_SECOND / 1_000_000
                ),
                false,
            ));
        }
    }
}

/// Why the target refused to start the pull; `None` when the import is going after all (a first
/// request got through, its answer was lost, and the retry was refused).
async fn refused_import(t: &CopyTarget, e: GlanceError) -> Option<PullFailure> {
    let cloud = t.client.cloud();
    let id = &t.target_id;
    let text = e.to_string();
    // Refused before anything started: `whole_target` when every image would be refused so.
    let fail = |message: String, nothing_stored, whole_target| PullFailure {
        error: TransferError::new(FailureReason::TargetImport, message),
        nothing_stored,
        whole_target,
    };
    Some(match e.status() {
        Some(400) if text.contains("Unknown import method") => fail(
            format!(
                "cloud '{cloud}' does not offer the glance-download import method (add it to \
                 enabled_import_methods in its glance-api.conf, or use transfer = \"auto\" or \
                 \"stream\"): {text}"
            ),
            true,
            true,
        ),
        // The import may be going after all: our first request got through and its answer
        // was lost, and the retry was refused. What the image shows decides.
        Some(409) => match import_state(t).await {
            ImportState::Going => return None,
            ImportState::Locked(task) => fail(
                format!(
                    "copy {id} on cloud '{cloud}' is locked by an earlier import (task {task}) \
                     that failed while downloading; Glance keeps that lock for an hour. The \
                     next run makes a new copy (or, with preserve_ids, uploads into it with \
                     transfer = \"auto\"): {text}"
                ),
                true,
                // One copy's lock: other images can still be pulled.
                false,
            ),
            ImportState::Other => fail(text.clone(), false, false),
        },
        Some(403) => fail(
            format!(
                "cloud '{cloud}' forbids glance-sync's user to import images (Glance's policy); \
                 allow it, or use transfer = \"stream\": {text}"
            ),
            true,
            true,
        ),
        // No answer, or a 5xx after the retries: the import may have started all the same.
        None | Some(500..) if matches!(import_state(t).await, ImportState::Going) => return None,
        _ => fail(text.clone(), true, false),
    })
}

/// What an image shows about an import glance-sync may or may not have started.
enum ImportState {
    /// Importing, or locked by a task that has not failed.
    Going,
    /// Locked by a task that failed (the id).
    Locked(String),
    Other,
}

async fn import_state(t: &CopyTarget) -> ImportState {
    let Ok(copy) = t.client.get_image(&t.target_id).await else {
        return ImportState::Other;
    };
    if copy.status == "importing" {
        return ImportState::Going;
    }
    if copy.property(IMPORT_LOCK).is_none() {
        return ImportState::Other;
    }
    match t.client.image_tasks(&t.target_id).await {
        Ok(tasks) => match tasks.into_iter().next() {
            Some(task) if task.status == "failure" => ImportState::Locked(task.id),
            Some(_) => ImportState::Going,
            None => ImportState::Other,
        },
        Err(_) => ImportState::Other,
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
    // Glance reverts an early failure by putting the image back to `queued`, then dropping the
    // lock, and only then marks the task failed: the image read before the task may show
    // `queued` with the lock still held. Read again now that the task has failed.
    let locked = locked && {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match t.client.get_image(id).await {
            Ok(copy) => copy.property(IMPORT_LOCK).is_some(),
            Err(_) => locked,
        }
    };
    let said = format!(
        "Glance's task {} says \"{}\"; the cause is in cloud '{cloud}''s glance-api log (search \
         for the task id)",
        task.id, task.message
    );
    let message = if locked {
        // Failed while downloading: the image keeps the import lock, so no import can retry
        // into it for an hour. An upload still can.
        format!(
            "the import of copy {id} on cloud '{cloud}' failed while downloading from the \
             source (short or broken data from the source's Glance, or the connection between \
             the regions); {said}"
        )
    } else {
        format!(
            "the import of copy {id} on cloud '{cloud}' failed before any data was stored: the \
             source region unknown to the target's catalog, no endpoint for the interface, the \
             source image not visible to the target's credentials, or the target's URI \
             filtering ([import_filtering_opts] allowed_hosts and allowed_ports); {said}"
        )
    };
    Some(PullFailure {
        error: TransferError::new(FailureReason::TargetImport, message),
        nothing_stored: true,
        // Before any data: the catalog, the filtering, the source's visibility to the target.
        whole_target: !locked,
    })
}

/// Verifies an imported copy against the source's record, then sets its metadata. A copy whose
/// bytes differ is deleted (it is active: nothing can be uploaded into it). Returns the result
/// and whether the copy was deleted.
async fn finish(p: &Pull<'_>, t: &CopyTarget, copy: &Image) -> (Result<(), TransferError>, bool) {
    let cloud = t.client.cloud();
    if let Err(e) = verify::check_copy(&verify::Proven::recorded_by(p.source), copy) {
        let removed = crate::transfer::remove_failed_copy(t).await;
        let error = TransferError::new(
            FailureReason::Verification,
            format!(
                "cloud '{cloud}': copy {} failed verification after its import: {e}{}",
                t.target_id,
                if removed { "; it was deleted" } else { "" }
            ),
        );
        return (Err(error), removed);
    }
    let patch = metadata_patch(&current_metadata(copy), p.metadata, p.rules);
    if !patch.is_empty()
        && let Err(e) = t.client.patch_image(&t.target_id, &patch).await
    {
        let error = TransferError::new(
            FailureReason::TargetMetadata,
            format!(
                "copy {} on cloud '{cloud}' was imported and verified, but setting its metadata \
                 failed (the next run sets it): {e}",
                t.target_id
            ),
        );
        return (Err(error), false);
    }
    (Ok(()), false)
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
/// one of them: until the import's lock is gone (Glance sets it before answering the request).
pub async fn copy_to_stores(
    client: &GlanceClient,
    id: &str,
    stores: &[String],
    stall_timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(), GlanceError> {
    let operation = format!("copy image {id} into store {}", stores.join(", "));
    if cancel.is_cancelled() {
        return Err(client.protocol(&operation, "shutting down: not started".into()));
    }
    let body = json!({"method": {"name": "copy-image"}, "stores": stores});
    if let Err(e) = client.import_image(id, &body).await {
        let advice = match e.status() {
            Some(403) => {
                "copy-image needs the admin role in Glance's default policy (copy_image): give \
                 glance-sync's user that role on this cloud, or drop stores for this target"
            }
            Some(409) => {
                "another import holds the image's lock (Glance keeps a failed one for an hour); \
                 the next run tries again"
            }
            _ => "the next run tries again",
        };
        return Err(client.protocol(&operation, format!("{e}; {advice}")));
    }
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Err(client.protocol(
                &operation,
                "shutting down before the copy finished; the next run completes it".into(),
            )),
            _ = tokio::time::sleep(wait) => {}
        }
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
        let have = listed("stores");
        if image.property(IMPORT_LOCK).is_none() {
            let missing: Vec<&str> = stores
                .iter()
                .filter(|s| !have.contains(s))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            return Err(client.protocol(
                &operation,
                format!(
                    "Glance's copy ended without store {} (failed: {}); the cause is in cloud \
                     '{}''s glance-api log; the next run tries again",
                    missing.join(", "),
                    listed("os_glance_failed_import").join(", "),
                    client.cloud()
                ),
            ));
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
