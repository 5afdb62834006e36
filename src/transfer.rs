//! The transfer pipeline: one download from the source, streamed into an upload on every target at
//! once, hashed on the side, and held back at the last chunk until the digests prove the bytes are
//! the source's.
//!
//! ```text
//!   source GET /file ──chunks──┬──▶ hash thread (MD5)
//!                              ├──▶ hash thread (sha512 | sha384 | sha256)
//!                              ├──▶ bounded queue ──▶ target A PUT /file
//!                              └──▶ bounded queue ──▶ target B PUT /file
//! ```
//! Nothing touches the disk and memory is bounded by the queue lengths, whatever the image size. A
//! slow target slows the others (the queues fill); a failing target drops out and the others go on.
//! Digests are checked before the final chunk is released: a corrupt or truncated stream is aborted,
//! so Glance never sees a complete body and never makes the image active.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::glance::{GlanceClient, GlanceError};
use crate::image::Image;
use crate::metadata::PatchOp;
use crate::verify::{self, Proven, StreamHasher};

/// Chunks queued per target. With reqwest's chunks of at most a few hundred KiB this keeps a
/// transfer's memory to a few MiB per target.
const UPLOAD_QUEUE_CHUNKS: usize = 8;

/// Why a copy to one target failed. A small fixed set, fit for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    SourceRead,
    SourceCorrupt,
    TargetCreate,
    TargetUpload,
    Verification,
    TargetMetadata,
    /// The target's Glance could not import the image from the source (glance-download).
    TargetImport,
    /// The copy is not in every store the job names (a store unknown, copy-image failed).
    TargetStore,
    /// The process is shutting down.
    Interrupted,
}

impl FailureReason {
    /// Every reason, so that metrics can show each at 0 before it first happens.
    pub const ALL: [FailureReason; 9] = [
        FailureReason::SourceRead,
        FailureReason::SourceCorrupt,
        FailureReason::TargetCreate,
        FailureReason::TargetUpload,
        FailureReason::Verification,
        FailureReason::TargetMetadata,
        FailureReason::TargetImport,
        FailureReason::TargetStore,
        FailureReason::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::SourceRead => "source_read",
            FailureReason::SourceCorrupt => "source_corrupt",
            FailureReason::TargetCreate => "target_create",
            FailureReason::TargetUpload => "target_upload",
            FailureReason::Verification => "verification",
            FailureReason::TargetMetadata => "target_metadata",
            FailureReason::TargetImport => "target_import",
            FailureReason::TargetStore => "target_store",
            FailureReason::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransferError {
    pub reason: FailureReason,
    pub message: String,
    /// The HTTP status the cloud answered, when the failure was an answer.
    pub status: Option<u16>,
}

impl TransferError {
    pub(crate) fn new(reason: FailureReason, message: impl std::fmt::Display) -> TransferError {
        TransferError {
            reason,
            message: message.to_string(),
            status: None,
        }
    }

    pub(crate) fn from_glance(reason: FailureReason, e: GlanceError) -> TransferError {
        TransferError {
            reason,
            status: e.status(),
            message: e.to_string(),
        }
    }
}

/// One target of a copy: where to create the image and with what.
pub struct CopyTarget {
    pub client: GlanceClient,
    pub target_id: String,
    pub create_body: Value,
    /// Set `protected` once the copy is verified.
    pub protect: bool,
    /// The image exists already (our unfinished copy, queued): upload into it, create nothing.
    pub reuse_existing: bool,
    /// `target_id` is the source image's id (`preserve_ids`): if the target refuses it (409:
    /// an image holds it, or a deleted one did), this id and body are used instead, when given.
    pub fallback: Option<(String, Value)>,
    pub preserving_id: bool,
    /// The store of a multi-store target to upload into (`stores`: the first one).
    pub store: Option<String>,
}

/// What moved a copy's bytes (the `method` label of `glance_sync_bytes_copied_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMethod {
    /// Through glance-sync: download from the source, upload to the target.
    Stream,
    /// The target's Glance pulled from the source region.
    GlanceDownload,
}

impl CopyMethod {
    pub const ALL: [CopyMethod; 2] = [CopyMethod::Stream, CopyMethod::GlanceDownload];

    pub fn as_str(self) -> &'static str {
        match self {
            CopyMethod::Stream => "stream",
            CopyMethod::GlanceDownload => "glance-download",
        }
    }
}

#[derive(Debug)]
pub struct CopyOutcome {
    pub target: String,
    pub method: CopyMethod,
    /// Ids recorded for this copy that the target never got: the source's id it refused.
    pub refused_ids: Vec<String>,
    pub target_id: String,
    pub result: Result<(), TransferError>,
    /// Our image is known to be gone (deleted after a failure). When false after a failure, it may
    /// still exist; it stays in the ownership ledger and the next run's plan deals with it.
    pub removed: bool,
}

/// Reports bytes as they flow, e.g. to a progress bar.
pub trait ProgressSink: Send + Sync {
    fn advance(&self, bytes: u64);
}

impl ProgressSink for () {
    fn advance(&self, _: u64) {}
}

#[derive(Clone)]
pub struct Settings {
    pub stall_timeout: Duration,
    /// Nice value of the hashing threads (`[transfer] hashing_nice`).
    pub hashing_nice: i32,
    /// Which digests to compute (`[transfer] verify_digests`).
    pub verify_digests: crate::config::VerifyDigests,
    /// The limits the source download is paced by (the process's and the job's).
    pub bandwidth: crate::bandwidth::Limiters,
}

/// Copies `image` from `source` to every target, reading the source once.
pub async fn copy_image(
    source: &GlanceClient,
    image: &Image,
    targets: Vec<CopyTarget>,
    settings: &Settings,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Vec<CopyOutcome> {
    let size = image.size.unwrap_or(0);
    let fail_all = |targets: Vec<CopyTarget>, err: TransferError| {
        targets
            .into_iter()
            .map(|t| CopyOutcome {
                target: t.client.cloud().to_string(),
                method: CopyMethod::Stream,
                refused_ids: vec![],
                target_id: t.target_id,
                result: Err(err.clone()),
                removed: false,
            })
            .collect::<Vec<_>>()
    };

    // Open the download before creating anything, so an unreadable source writes nothing.
    let response = match source.download(&image.id).await {
        Ok(r) => r,
        Err(e) => return fail_all(targets, TransferError::new(FailureReason::SourceRead, e)),
    };
    if let Some(len) = response.content_length()
        && len != size
    {
        let err = TransferError::new(
            FailureReason::SourceCorrupt,
            format!(
                "cloud '{}': image {} has size {size} but its download announces {len} bytes",
                source.cloud(),
                image.id
            ),
        );
        return fail_all(targets, err);
    }

    let mut outcomes = Vec::new();
    let created = join_all(targets.into_iter().map(create)).await;
    let mut live = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    for (t, r, refused_id) in created {
        if let Some(id) = refused_id {
            refused.push((t.client.cloud().to_string(), id));
        }
        match r {
            Ok(()) => live.push(t),
            Err(e) => outcomes.push(CopyOutcome {
                target: t.client.cloud().to_string(),
                method: CopyMethod::Stream,
                refused_ids: vec![],
                target_id: t.target_id,
                result: Err(e),
                // A create that timed out may still have happened: keep the id in the ledger.
                removed: false,
            }),
        }
    }
    let with_refused = |mut outcomes: Vec<CopyOutcome>| {
        for o in &mut outcomes {
            o.refused_ids = refused
                .iter()
                .filter(|(cloud, _)| *cloud == o.target)
                .map(|(_, id)| id.clone())
                .collect();
        }
        outcomes
    };
    if live.is_empty() {
        return with_refused(outcomes);
    }

    let mut lanes: Vec<Lane> = live
        .iter()
        .map(|t| Lane::start(t.client.clone(), t.target_id.clone(), size, t.store.clone()))
        .collect();

    let streamed = pump(
        source, image, response, &mut lanes, settings, progress, cancel,
    )
    .await;

    let finished = join_all(live.into_iter().zip(lanes).map(|(t, lane)| {
        let streamed = &streamed;
        async move {
            let upload = lane.finish(&t, settings.stall_timeout).await;
            let verified = match (streamed, upload) {
                (Err(e), _) => Err(e.clone()),
                // 409: the image is no longer `queued`. If it went active with exactly our bytes
                // (an earlier answer was lost), the copy is done; anything else fails below.
                (Ok(Some(digests)), Err(e)) if e.status == Some(409) => {
                    check_copy(&t, digests).await.map_err(|_| e)
                }
                (Ok(_), Err(e)) => Err(e),
                (Ok(None), Ok(())) => Err(TransferError::new(
                    FailureReason::TargetUpload,
                    format!(
                        "cloud '{}': upload of image {} ended before all bytes were sent",
                        t.client.cloud(),
                        t.target_id
                    ),
                )),
                (Ok(Some(digests)), Ok(())) => check_copy(&t, digests).await,
            };
            let (result, removed) = match verified {
                // Verified bytes: a failure to protect the copy leaves it in place; the next
                // run's metadata patch sets `protected`.
                Ok(()) => (protect(&t).await, false),
                Err(e) => (Err(e), remove_failed_copy(&t).await),
            };
            CopyOutcome {
                target: t.client.cloud().to_string(),
                method: CopyMethod::Stream,
                refused_ids: vec![],
                target_id: t.target_id,
                result,
                removed,
            }
        }
    }))
    .await;
    outcomes.extend(finished);
    with_refused(outcomes)
}

/// Creates the image a copy goes into (unless it exists already), under the source's id when
/// asked and allowed, else under the fallback id. Returns the target (its `target_id` the id in
/// use), the result, and the source's id when the target refused it.
pub(crate) async fn create(
    mut t: CopyTarget,
) -> (CopyTarget, Result<(), TransferError>, Option<String>) {
    if t.reuse_existing {
        return (t, Ok(()), None);
    }
    let cloud = t.client.cloud().to_string();
    match t.client.create_image(&t.create_body).await {
        Ok(_) => (t, Ok(()), None),
        Err(e) if t.preserving_id && e.status() == Some(409) => {
            let refused = std::mem::take(&mut t.target_id);
            let Some((id, body)) = t.fallback.take() else {
                let err = TransferError::new(
                    FailureReason::TargetCreate,
                    format!(
                        "cloud '{cloud}' refuses the source image's id {refused} (another image \
                         holds it, or a deleted one did: Glance never reuses ids), and \
                         preserve_ids = require: {e}"
                    ),
                );
                t.target_id = refused.clone();
                return (t, Err(err), Some(refused));
            };
            tracing::warn!(
                cloud = %cloud,
                image = %refused,
                "cloud '{cloud}' refuses the source image's id {refused} (another image holds \
                 it, or a deleted one did): copying with the new id {id} (preserve_ids = prefer)"
            );
            t.target_id = id;
            t.create_body = body;
            // The fallback id is any id: a copy under it that fails goes like any other.
            t.preserving_id = false;
            let r = t
                .client
                .create_image(&t.create_body)
                .await
                .map(drop)
                .map_err(|e| TransferError::new(FailureReason::TargetCreate, e));
            (t, r, Some(refused))
        }
        Err(e) => (
            t,
            Err(TransferError::new(FailureReason::TargetCreate, e)),
            None,
        ),
    }
}

/// One target's upload in flight: the queue feeding its request body, and the request itself.
struct Lane {
    tx: Option<mpsc::Sender<Bytes>>,
    abort: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), crate::glance::GlanceError>>,
    cloud: String,
    target_id: String,
    /// Set when this lane was dropped by the pump (stalled target).
    error: Option<TransferError>,
}

impl Lane {
    fn start(client: GlanceClient, target_id: String, size: u64, store: Option<String>) -> Lane {
        let (tx, rx) = mpsc::channel::<Bytes>(UPLOAD_QUEUE_CHUNKS);
        let abort = CancellationToken::new();
        let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(
            (rx, abort.clone()),
            |(mut rx, abort)| async move {
                tokio::select! {
                    biased;
                    // An error makes hyper abort the request: Glance sees a broken upload and puts
                    // the image back to `queued`, never `active`.
                    _ = abort.cancelled() => Some((
                        Err(io::Error::other("transfer aborted by glance-sync")),
                        (rx, abort),
                    )),
                    chunk = rx.recv() => chunk.map(|c| (Ok::<_, io::Error>(c), (rx, abort))),
                }
            },
        ));
        let cloud = client.cloud().to_string();
        let id = target_id.clone();
        let task =
            tokio::spawn(async move { client.upload(&id, size, body, store.as_deref()).await });
        Lane {
            tx: Some(tx),
            abort,
            task,
            cloud,
            target_id,
            error: None,
        }
    }

    fn is_open(&self) -> bool {
        self.tx.is_some()
    }

    /// Hands a chunk to this target; drops the lane if its upload ended or stalled.
    async fn send(&mut self, chunk: Bytes, stall: Duration) {
        let Some(tx) = &self.tx else { return };
        match tokio::time::timeout(stall, tx.send(chunk)).await {
            Ok(Ok(())) => {}
            // The request ended early (its error is collected from the task).
            Ok(Err(_)) => self.tx = None,
            Err(_) => {
                self.error = Some(TransferError::new(
                    FailureReason::TargetUpload,
                    format!(
                        "cloud '{}': upload of image {} stalled: the target accepted no data for {} s",
                        self.cloud,
                        self.target_id,
                        stall.as_secs()
                    ),
                ));
                self.abort.cancel();
                self.tx = None;
            }
        }
    }

    fn abort(&mut self) {
        self.abort.cancel();
        self.tx = None;
    }

    /// Waits for the upload's answer. A target that took every byte but does not answer within
    /// `stall` is given up on: dropping the request closes its connection.
    async fn finish(self, t: &CopyTarget, stall: Duration) -> Result<(), TransferError> {
        let Lane {
            task, error, tx, ..
        } = self;
        drop(tx);
        if let Some(e) = error {
            task.abort();
            return Err(e);
        }
        let upload_error = |message: String| {
            TransferError::new(
                FailureReason::TargetUpload,
                format!(
                    "cloud '{}': upload of image {}: {message}",
                    t.client.cloud(),
                    t.target_id
                ),
            )
        };
        let abort = task.abort_handle();
        match tokio::time::timeout(stall, task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(TransferError::from_glance(FailureReason::TargetUpload, e)),
            Ok(Err(join)) => Err(upload_error(format!("upload task failed: {join}"))),
            Err(_) => {
                abort.abort();
                Err(upload_error(format!(
                    "no answer within {} s after the body was sent",
                    stall.as_secs()
                )))
            }
        }
    }
}

/// Moves the source's bytes into every open lane, then verifies them before releasing the last chunk.
async fn pump(
    source: &GlanceClient,
    image: &Image,
    response: reqwest::Response,
    lanes: &mut [Lane],
    settings: &Settings,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<Option<Proven>, TransferError> {
    let size = image.size.unwrap_or(0);
    let read_error = |message: String| {
        TransferError::new(
            FailureReason::SourceRead,
            format!(
                "cloud '{}': reading image {} failed: {message}",
                source.cloud(),
                image.id
            ),
        )
    };
    let mut stream = response.bytes_stream();
    let mut hasher = StreamHasher::start(
        &verify::digests_to_compute(image, settings.verify_digests),
        settings.hashing_nice,
    );
    let mut held: Option<Bytes> = None;
    let mut read: u64 = 0;
    let mut resumes = 0;
    let mut skip: u64 = 0;
    let outcome = loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => {
                break Err(TransferError::new(
                    FailureReason::Interrupted,
                    format!(
                        "copy of image {} interrupted by shutdown after {read} of {size} bytes",
                        image.id
                    ),
                ));
            }
            next = tokio::time::timeout(settings.stall_timeout, stream.next()) => next,
        };
        let broken = match next {
            Err(_) => format!(
                "no data for {} s after {read} of {size} bytes",
                settings.stall_timeout.as_secs()
            ),
            Ok(Some(Err(e))) => format!(
                "stream broke after {read} of {size} bytes: {}",
                crate::auth::error_chain(&e)
            ),
            Ok(None) if read < size => format!("stream ended after {read} of {size} bytes"),
            Ok(None) => break Ok(()),
            Ok(Some(Ok(chunk))) => {
                // After a resume that the server answered with the whole image, drop what we
                // already have: targets never receive a byte twice.
                let chunk = if skip >= chunk.len() as u64 {
                    skip -= chunk.len() as u64;
                    continue;
                } else {
                    let c = chunk.slice(skip as usize..);
                    skip = 0;
                    c
                };
                read += chunk.len() as u64;
                if read > size {
                    break Err(TransferError::new(
                        FailureReason::SourceCorrupt,
                        format!(
                            "cloud '{}': image {} sent more bytes than its size {size}",
                            source.cloud(),
                            image.id
                        ),
                    ));
                }
                // Paced before the chunk goes anywhere: every target gets the same bytes at the
                // same rate. A shutdown does not wait for the pause.
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = settings.bandwidth.take(chunk.len() as u64) => {}
                }
                progress.advance(chunk.len() as u64);
                hasher.feed(chunk.clone()).await;
                if let Some(previous) = held.replace(chunk) {
                    for lane in lanes.iter_mut() {
                        lane.send(previous.clone(), settings.stall_timeout).await;
                    }
                }
                if !lanes.iter().any(Lane::is_open) {
                    break Ok(()); // every target failed: stop reading
                }
                continue;
            }
        };
        // The download broke: resume from the byte reached, up to `retries` times. The digests
        // keep running over the whole image, so a resume that splices wrong data still fails
        // verification before the last chunk is released.
        if resumes >= source.retries() {
            break Err(read_error(format!(
                "{broken}; gave up after {resumes} resumes"
            )));
        }
        resumes += 1;
        tracing::warn!(
            cloud = source.cloud(),
            image = %image.id,
            "{broken}; resuming at byte {read} (attempt {resumes})"
        );
        match source.download_from(&image.id, read).await {
            Ok((response, to_skip)) => {
                stream = response.bytes_stream();
                skip = to_skip;
            }
            Err(e) => break Err(read_error(format!("{broken}; resume failed: {e}"))),
        }
    };
    let digests = hasher.finish().await;
    let verdict = outcome.and_then(|()| {
        if !lanes.iter().any(Lane::is_open) {
            // Every upload ended early; their own errors say why.
            return Ok(None);
        }
        let proven = verify::check_against_source(&digests, image).map_err(|e| {
            TransferError::new(
                FailureReason::SourceCorrupt,
                format!(
                    "cloud '{}': image {} ('{}'): {e}; nothing was made active on any target",
                    source.cloud(),
                    image.id,
                    image.name.as_deref().unwrap_or("")
                ),
            )
        })?;
        Ok(Some(proven))
    });
    match &verdict {
        Ok(_) => {
            if let Some(last) = held {
                for lane in lanes.iter_mut() {
                    lane.send(last.clone(), settings.stall_timeout).await;
                }
            }
            for lane in lanes.iter_mut() {
                lane.tx = None; // end of body
            }
        }
        Err(_) => lanes.iter_mut().for_each(Lane::abort),
    }
    verdict
}

/// After a successful upload: read the copy back and check what its server stored.
async fn check_copy(t: &CopyTarget, digests: &Proven) -> Result<(), TransferError> {
    let cloud = t.client.cloud();
    let copy = t
        .client
        .get_image(&t.target_id)
        .await
        .map_err(|e| TransferError::new(FailureReason::Verification, e))?;
    verify::check_copy(digests, &copy).map_err(|e| {
        let reason = match e {
            verify::VerifyError::SourceRecordDisagrees { .. } => FailureReason::SourceCorrupt,
            _ => FailureReason::Verification,
        };
        TransferError::new(
            reason,
            format!(
                "cloud '{cloud}': copy {} failed verification: {e}",
                t.target_id
            ),
        )
    })
}

/// Sets `protected` on a verified copy whose source is protected.
async fn protect(t: &CopyTarget) -> Result<(), TransferError> {
    if t.protect {
        let op = PatchOp {
            op: "replace",
            path: "/protected".into(),
            value: Some(Value::from(true)),
        };
        t.client
            .patch_image(&t.target_id, &[op])
            .await
            .map_err(|e| TransferError::new(FailureReason::TargetMetadata, e))?;
    }
    Ok(())
}

/// Deletes our image after a failed copy, so no half-made or unverified image stays behind. A
/// copy under the source's id (`preserve_ids`) that is not active is kept: Glance never gives a
/// deleted id out again, and the next run uploads into it. Returns whether the copy is gone.
pub(crate) async fn remove_failed_copy(t: &CopyTarget) -> bool {
    if t.preserving_id
        && t.client
            .get_image(&t.target_id)
            .await
            .is_ok_and(|copy| !copy.is_established())
    {
        tracing::info!(
            cloud = t.client.cloud(),
            image = %t.target_id,
            "the failed copy has the source's id (preserve_ids): kept for the next run to upload into"
        );
        return false;
    }
    // An aborted upload puts the image back to `queued` within a moment; a delete during `saving`
    // is allowed too, so no wait is needed.
    match t.client.delete_image(&t.target_id).await {
        Ok(()) => true,
        Err(e) if e.status() == Some(404) => true,
        Err(e) => {
            tracing::warn!(
                cloud = t.client.cloud(),
                image = %t.target_id,
                "could not delete the failed copy; it stays in the ownership ledger: {e}"
            );
            false
        }
    }
}
