//! The engine: one job, end to end. Listing → plan → transfer → verify → record.
//!
//! This is the imperative shell around the pure planner: it lists both sides, asks the planner what
//! to do, carries the actions out (copies through the transfer pipeline, patches and
//! (de)activations through the Glance client) and records every outcome in the state database.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;

use crate::auth::{AuthError, CloudSession};
use crate::bandwidth;
use crate::config::{Config, Job, TransferMethod};
use crate::glance::{GlanceClient, GlanceError};
use crate::image::Image;
use crate::listing::{self, Listing, ListingError};
use crate::metrics::Metrics;
use crate::plan::{self, Action, ActionKind, Ledger, NewCopyId, Plan, PlanInput};
use crate::progress::{self, Progress};
use crate::server_copy::{self, Route};
use crate::state::{Outcome, RunSummary, State, StateError};
use crate::transfer::{self, CopyMethod, CopyTarget, FailureReason};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("job '{job}': cannot list the source images, nothing was done: {source}")]
    SourceListing {
        job: String,
        source: Box<GlanceError>,
    },
    #[error(
        "job '{job}': cannot learn which project glance-sync works as on the source (it tells \
         the project's own images from other projects'), nothing was done: {source}"
    )]
    SourceProject {
        job: String,
        source: Box<GlanceError>,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Listing(#[from] ListingError),
}

/// Why listing a cloud into the [`Listing`] stopped.
enum ListError {
    Glance(Box<GlanceError>),
    Spill(ListingError),
}

impl From<GlanceError> for ListError {
    fn from(e: GlanceError) -> Self {
        ListError::Glance(Box::new(e))
    }
}

/// Records the in-sync and skipped actions of one range of names (their source images at hand),
/// as the plan is made.
pub type Bookkeeping<'a> =
    dyn FnMut(&HashMap<&str, &Image>, Vec<Action>) -> Result<(), EngineError> + Send + 'a;

/// Images (over all sides) per range of names planned at once: a batch's memory, and the
/// ledger queries per batch (two per target).
const PLAN_BATCH: usize = 4000;

/// A plan plus the targets that could not be listed (and so are not in it).
#[derive(Debug, Clone, Serialize)]
pub struct JobPlan {
    #[serde(flatten)]
    pub plan: Plan,
    pub unreachable_targets: Vec<UnreachableTarget>,
    /// How far the ledger had been written when this plan read it (see
    /// [`State::record_copy_started`]).
    #[serde(skip)]
    pub ledger_mark: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnreachableTarget {
    pub target: String,
    pub error: String,
}

/// What a run of one job did.
#[derive(Debug, Serialize)]
pub struct JobReport {
    pub job: String,
    pub run_id: i64,
    /// What was done, except for images found in sync or skipped: those are only counted.
    pub results: Vec<ActionResult>,
    pub bookkept: Bookkept,
    pub unreachable_targets: Vec<UnreachableTarget>,
    pub summary: RunSummary,
}

impl JobReport {
    pub fn failed(&self) -> bool {
        self.summary.images_failed > 0 || !self.unreachable_targets.is_empty()
    }
}

/// How many (source image, target) pairs a run found in sync, or skipped, without calling any
/// cloud.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Bookkept {
    pub in_sync: u64,
    pub skipped: u64,
}

impl Bookkept {
    fn add(&mut self, actions: &[Action]) {
        for a in actions {
            match a.kind {
                ActionKind::InSync { .. } => self.in_sync += 1,
                ActionKind::Skip { .. } => self.skipped += 1,
                _ => {}
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ActionResult {
    #[serde(flatten)]
    pub action: Action,
    pub error: Option<String>,
    /// For failed copies, why (a small fixed set, used as a metric label).
    #[serde(skip)]
    pub failure: Option<FailureReason>,
    /// For copies, what moved the bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<transfer::CopyMethod>,
    pub seconds: f64,
}

pub struct Engine {
    metrics: Arc<Metrics>,
    bandwidth: Arc<bandwidth::Registry>,
    clients: BTreeMap<String, GlanceClient>,
    settings: transfer::Settings,
    max_parallel_images: usize,
    progress: Progress,
}

impl Engine {
    /// Sets up a session for every cloud (nothing is sent until the first call).
    pub fn new(
        config: &Config,
        progress: Progress,
        metrics: Arc<Metrics>,
    ) -> Result<Engine, AuthError> {
        let m = metrics.clone();
        let bandwidth = Arc::new(bandwidth::Registry::new(
            bandwidth::Limit::NONE,
            move |job, rate| m.set_bandwidth_limit(job, rate),
        ));
        Engine::with_bandwidth(config, progress, metrics, bandwidth)
    }

    /// Like [`Engine::new`], with bandwidth limiters that outlive this engine (the daemon's,
    /// given each reloaded configuration's limits).
    pub fn with_bandwidth(
        config: &Config,
        progress: Progress,
        metrics: Arc<Metrics>,
        bandwidth: Arc<bandwidth::Registry>,
    ) -> Result<Engine, AuthError> {
        let mut clients = BTreeMap::new();
        for (name, cloud) in &config.clouds {
            metrics.register_cloud(name);
            let session = CloudSession::new(cloud.clone(), &config.transfer, metrics.clone())?;
            clients.insert(name.clone(), GlanceClient::new(Arc::new(session)));
        }
        for job in &config.jobs {
            metrics.register_job(job);
        }
        // Last: a configuration refused above (a reload) must not change the limits in force.
        bandwidth.configure(
            config.transfer.max_bandwidth.clone(),
            config
                .jobs
                .iter()
                .map(|j| (j.name.as_str(), j.max_bandwidth.clone())),
        );
        Ok(Engine {
            metrics,
            bandwidth,
            clients,
            settings: transfer::Settings {
                stall_timeout: config.transfer.stall_timeout,
                hashing_nice: config.transfer.hashing_nice,
                verify_digests: config.transfer.verify_digests,
                bandwidth: bandwidth::Limiters::default(),
            },
            max_parallel_images: config.transfer.max_parallel_images,
            progress,
        })
    }

    pub fn client(&self, cloud: &str) -> &GlanceClient {
        &self.clients[cloud]
    }

    /// How this run copies to each target it has copies for (`transfer`): discovered once per
    /// run, and only for targets that need it, so a run with nothing to copy asks nothing.
    async fn routes(&self, job: &Job, actions: &[Action]) -> HashMap<String, Route> {
        let targets: BTreeSet<&str> = actions
            .iter()
            .filter(|a| matches!(a.kind, ActionKind::Copy { .. }))
            .map(|a| a.target.as_str())
            .collect();
        let source = self.client(&job.source);
        let mut routes = HashMap::new();
        for target in targets {
            let policy = job.policy(target);
            let (mut route, why) =
                server_copy::discover(source, self.client(target), policy.transfer).await;
            if let Err(why) = server_copy::check_stores(self.client(target), &policy.stores).await {
                route = Route::Refuse(why, FailureReason::TargetStore);
            }
            if let Some(why) = why {
                tracing::info!(job = %job.name, target, "transfer = \"auto\": streaming to {target}: {why}");
            }
            if let Route::Pull(from) = &route {
                tracing::debug!(job = %job.name, target, region = %from.region, "{target} pulls from the source's region {} (glance-download)", from.region);
            }
            routes.insert(target.to_string(), route);
        }
        routes
    }

    /// Lists the job's source and targets into a [`Listing`], then plans a range of names at a
    /// time, reading the ledger (from `state`; empty without one) for each. Writes nothing
    /// anywhere but through `bookkeeping`: when given, the in-sync and skipped actions of each
    /// range go there (to be recorded) instead of into the plan, so that memory holds the
    /// actions that change something, not one per image. The ledger is read after listing: any
    /// copy of ours that the listing shows is in it by then (it is recorded before it is
    /// created).
    ///
    /// Returns the plan and the source images its actions need.
    pub async fn plan_job(
        &self,
        job: &Job,
        state: Option<&State>,
        mut bookkeeping: Option<&mut Bookkeeping<'_>>,
    ) -> Result<(JobPlan, HashMap<String, Image>), EngineError> {
        let listing_started = Instant::now();
        let listing = Arc::new(Listing::new(&job.source, &job.targets)?);
        let source = self.client(&job.source);
        // One task per cloud, so that the pages of several clouds are parsed on several cores.
        // Dropped (a signal), the set aborts them.
        let mut tasks = tokio::task::JoinSet::new();
        let clouds: Vec<&String> = std::iter::once(&job.source).chain(&job.targets).collect();
        for (side, cloud) in clouds.iter().enumerate() {
            let client = self.client(cloud).clone();
            let listing = listing.clone();
            tasks.spawn(async move {
                let listed = client
                    .list_images_paged(|page| listing.add(side, page).map_err(ListError::Spill))
                    .await;
                (side, listed)
            });
        }
        let mut listed: Vec<Option<Result<(), ListError>>> = clouds.iter().map(|_| None).collect();
        while let Some(done) = tasks.join_next().await {
            let (side, result) = done.expect("a listing task panicked");
            listed[side] = Some(result);
        }
        let mut listed = listed
            .into_iter()
            .map(|l| l.expect("every listing task ended"));
        let source_listed = listed.next().expect("the source's listing");
        let targets: Vec<(String, Result<(), ListError>)> =
            job.targets.iter().cloned().zip(listed).collect();
        match source_listed {
            Ok(()) => {}
            Err(ListError::Spill(e)) => return Err(e.into()),
            Err(ListError::Glance(source)) => {
                return Err(EngineError::SourceListing {
                    job: job.name.clone(),
                    source,
                });
            }
        }
        // Whose images are whose decides what is copied and what may stand in for a copy: a
        // project that cannot be learnt is an error, never "unknown" (that would count every
        // image as the cloud's own).
        let mut projects = BTreeMap::new();
        match source.project_id().await {
            Ok(Some(project)) => {
                projects.insert(job.source.clone(), project);
            }
            Ok(None) => {}
            Err(source) => {
                return Err(EngineError::SourceProject {
                    job: job.name.clone(),
                    source: Box::new(source),
                });
            }
        }
        let mut reachable = job.clone();
        let mut unreachable_targets = Vec::new();
        let mut without_admin = BTreeSet::new();
        for (t, listed) in targets {
            let listed = match listed {
                Ok(()) => self.client(&t).identity().await,
                Err(ListError::Spill(e)) => return Err(e.into()),
                Err(ListError::Glance(e)) => Err(*e),
            };
            match listed {
                Ok(access) => {
                    if access.known_without_admin() {
                        without_admin.insert(t.clone());
                    }
                    if let Some(project) = access.project_id {
                        projects.insert(t.clone(), project);
                    }
                }
                Err(e) => {
                    reachable.targets.retain(|r| *r != t);
                    unreachable_targets.push(UnreachableTarget {
                        target: t,
                        error: e.to_string(),
                    })
                }
            }
        }
        listing.finish()?;
        tracing::info!(
            job = %job.name,
            "listed {} images on the source and targets in {:.1} s; planning",
            listing.images_listed()?,
            listing_started.elapsed().as_secs_f64()
        );
        let ledger_mark = match state {
            Some(s) => s.ledger_mark()?,
            None => 0,
        };
        let mut read_ledger = |target: &str, target_ids: &[&str], source_ids: &[&str]| match state {
            Some(s) => s
                .ledger_slice(target, target_ids, &job.source, source_ids)
                .map_err(EngineError::from),
            None => Ok(Vec::new()),
        };
        // One id per (target, source image) for the whole run, whichever range plans it.
        let mut new_ids: HashMap<(String, String), String> = HashMap::new();
        let mut new_id = |target: &str, source_id: &str| {
            new_ids
                .entry((target.to_string(), source_id.to_string()))
                .or_insert_with(|| uuid::Uuid::new_v4().to_string())
                .clone()
        };
        let mut plan = Plan {
            job: job.name.clone(),
            source: job.source.clone(),
            targets: reachable.targets.clone(),
            actions: Vec::new(),
            not_selected: 0,
            left_out: Vec::new(),
            copies_left_out: Vec::new(),
            unadopted: Vec::new(),
        };
        let mut sources: HashMap<String, Image> = HashMap::new();
        // The next range's images are read and decoded on a blocking thread while this one is
        // planned and recorded: the two take about as long.
        let ranges = listing.ranges(PLAN_BATCH)?;
        let read_ahead = |range: &listing::NameRange| {
            let (listing, range) = (listing.clone(), range.clone());
            tokio::task::spawn_blocking(move || listing.in_range(&range))
        };
        let mut next = ranges.first().map(read_ahead);
        for (i, range) in ranges.iter().enumerate() {
            // Let a signal's `select!` in the caller see it between two ranges: everything below
            // may complete without ever waiting.
            tokio::task::yield_now().await;
            let in_range = next
                .take()
                .expect("each range is read ahead")
                .await
                .expect("reading a range of the listing panicked")?;
            next = ranges.get(i + 1).map(read_ahead);
            let batch = listing.batch(range, in_range, &reachable, &mut read_ledger)?;
            let mut members = self
                .list_members(&reachable, &batch.source, &batch.targets, &batch.ledger)
                .await;
            members.status_needs_admin = without_admin.clone();
            let part = plan::plan(
                &PlanInput {
                    job: &reachable,
                    source_images: &batch.source,
                    target_images: &batch.targets,
                    ledger: &batch.ledger,
                    projects: &projects,
                    members: &members,
                    scope: &|name| range.contains(name),
                },
                &mut new_id,
            );
            for l in &part.left_out {
                tracing::trace!(
                    job = %job.name,
                    image = l.name.as_deref().unwrap_or(""),
                    source_id = %l.source_id,
                    "plan: '{}' ({}) left out: {}",
                    l.name.as_deref().unwrap_or(""),
                    l.source_id,
                    l.reason
                );
            }
            // Every decision, in-sync ones included, for `-vv`: why an image is (not) touched.
            for a in &part.actions {
                tracing::trace!(
                    job = %job.name,
                    image = a.name.as_deref().unwrap_or(""),
                    source_id = %a.source_id,
                    target = %a.target,
                    "plan: '{}' on {}: {}",
                    a.name.as_deref().unwrap_or(""),
                    a.target,
                    a.describe()
                );
            }
            let batch_sources: HashMap<&str, &Image> =
                batch.source.iter().map(|i| (i.id.as_str(), i)).collect();
            let (kept, bookkept): (Vec<Action>, Vec<Action>) =
                part.actions.into_iter().partition(|a| {
                    bookkeeping.is_none()
                        || !matches!(a.kind, ActionKind::InSync { .. } | ActionKind::Skip { .. })
                });
            if let Some(record) = bookkeeping.as_deref_mut() {
                record(&batch_sources, bookkept)?;
            }
            for a in &kept {
                if let Some(s) = batch_sources.get(a.source_id.as_str()) {
                    sources
                        .entry(a.source_id.clone())
                        .or_insert_with(|| (*s).clone());
                }
            }
            plan.actions.extend(kept);
            plan.not_selected += part.not_selected;
            plan.left_out.extend(part.left_out);
            plan.copies_left_out.extend(part.copies_left_out);
            plan.unadopted.extend(part.unadopted);
        }
        // Each range refused its own prunes over max_deletes; the limit is the run's.
        plan::refuse_prunes_over_max(&reachable, &mut plan.actions);
        warn_unadopted(job, &plan);
        warn_copies_left_out(job, &plan);
        Ok((
            JobPlan {
                plan,
                unreachable_targets,
                ledger_mark,
            },
            sources,
        ))
    }

    /// The members of the job's source images and of its copies on the targets whose rules copy
    /// members (`members = true`); nothing when none does. Only shared images have members, so
    /// only they are asked; a listing that fails leaves that image out (its members are then not
    /// touched this run).
    async fn list_members(
        &self,
        job: &Job,
        source_images: &[Image],
        target_images: &BTreeMap<String, Vec<Image>>,
        ledger: &Ledger,
    ) -> plan::Members {
        let mut members = plan::Members::default();
        let targets: Vec<&String> = job
            .targets
            .iter()
            .filter(|t| job.policy(t).metadata.members)
            .collect();
        if targets.is_empty() {
            return members;
        }
        let source_ids: Vec<String> = source_images
            .iter()
            .filter(|i| job.filter.selects(i) && i.visibility == "shared")
            .map(|i| i.id.clone())
            .collect();
        for i in source_images.iter().filter(|i| i.visibility != "shared") {
            members.source.insert(i.id.clone(), vec![]);
        }
        for (id, listed) in list_each(self.client(&job.source), source_ids).await {
            members.source.insert(id, listed);
        }
        for target in targets {
            let Some(images) = target_images.get(target) else {
                continue;
            };
            let mut shared_ids = Vec::new();
            for i in images {
                if !ledger
                    .owned(target, &i.id)
                    .is_some_and(|o| o.belongs_to(job))
                {
                    continue;
                }
                if i.visibility == "shared" {
                    shared_ids.push(i.id.clone());
                } else {
                    members
                        .target
                        .insert((target.clone(), i.id.clone()), vec![]);
                }
            }
            for (id, listed) in list_each(self.client(target), shared_ids).await {
                members.target.insert((target.clone(), id), listed);
            }
        }
        members
    }

    /// Runs one job, records it in the state database and the metrics. Errors are only those that
    /// stop the whole job. Once `cancel` fires no new action starts and transfers in flight are
    /// aborted (their half-made copies deleted).
    pub async fn run_job(
        &self,
        job: &Job,
        state: &State,
        cancel: &CancellationToken,
    ) -> Result<JobReport, EngineError> {
        let started = Instant::now();
        let report = self.run_job_unmetered(job, state, cancel).await;
        let took = started.elapsed();
        match &report {
            Ok(r) if r.summary.result != "interrupted" => {
                let counts = state.replica_counts(&job.name).unwrap_or_default();
                self.metrics.record_run(r, took, &counts);
            }
            Ok(_) => {}
            Err(_) => self.metrics.record_failed_run(&job.name, took),
        }
        report
    }

    async fn run_job_unmetered(
        &self,
        job: &Job,
        state: &State,
        cancel: &CancellationToken,
    ) -> Result<JobReport, EngineError> {
        let run_id = state.begin_run(&job.name)?;
        // Listing and planning write nothing but the rows of images found in sync or skipped,
        // which say only what is so: a signal stops them at once.
        let mut bookkept = Bookkept::default();
        let mut record = |sources: &HashMap<&str, &Image>, actions: Vec<Action>| {
            bookkept.add(&actions);
            record_bookkeeping(state, job, sources, actions)
        };
        let planned = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            planned = self.plan_job(job, Some(state), Some(&mut record)) => Some(planned),
        };
        let (job_plan, sources) = match planned {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                state.finish_run(run_id, &RunSummary::failure(&e))?;
                return Err(e);
            }
            None => {
                let summary = RunSummary::interrupted();
                state.finish_run(run_id, &summary)?;
                return Ok(JobReport {
                    job: job.name.clone(),
                    run_id,
                    results: vec![],
                    bookkept,
                    unreachable_targets: vec![],
                    summary,
                });
            }
        };
        for u in &job_plan.unreachable_targets {
            tracing::error!(job = %job.name, target = %u.target, "target skipped this run: {}", u.error);
        }
        for (target, count) in job_plan.plan.unadopted_per_target() {
            state.record_unadopted(&job.name, target, count)?;
            self.metrics.set_unadopted(&job.name, target, count);
        }
        let routes = self.routes(job, &job_plan.plan.actions).await;
        let exec = Execution {
            engine: self,
            job,
            run_id,
            ledger_mark: job_plan.ledger_mark,
            state,
            sources: &sources,
            cancel,
            routes,
            streaming_instead: Default::default(),
        };
        let results = match exec.execute(job_plan.plan.actions).await {
            Ok(r) => r,
            Err(e) => {
                // The database itself failed: try to close the run record anyway.
                let _ = state.finish_run(run_id, &RunSummary::failure(&e));
                return Err(e);
            }
        };

        let copied: Vec<&ActionResult> = results
            .iter()
            .filter(|r| r.error.is_none() && matches!(r.action.kind, ActionKind::Copy { .. }))
            .collect();
        let failed = results.iter().filter(|r| r.error.is_some()).count() as u64;
        let unreachable = !job_plan.unreachable_targets.is_empty();
        let result = if cancel.is_cancelled() {
            "interrupted"
        } else if failed == 0 && !unreachable {
            "success"
        } else if results.iter().any(|r| r.error.is_none())
            || bookkept.in_sync + bookkept.skipped > 0
        {
            "partial"
        } else {
            "failure"
        };
        let summary = RunSummary {
            result,
            images_copied: copied.len() as u64,
            bytes_copied: copied.iter().map(|r| r.action.size.unwrap_or(0)).sum(),
            images_failed: failed,
            error: unreachable.then(|| {
                job_plan
                    .unreachable_targets
                    .iter()
                    .map(|u| u.error.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        };
        state.finish_run(run_id, &summary)?;
        Ok(JobReport {
            job: job.name.clone(),
            run_id,
            results,
            bookkept,
            unreachable_targets: job_plan.unreachable_targets,
            summary,
        })
    }
}

/// Carries out one plan.
struct Execution<'a> {
    engine: &'a Engine,
    job: &'a Job,
    run_id: i64,
    ledger_mark: i64,
    state: &'a State,
    sources: &'a HashMap<String, Image>,
    cancel: &'a CancellationToken,
    /// How each target with copies to make is copied to this run.
    routes: HashMap<String, Route>,
    /// Targets whose pull failed this run for a reason a stream does not have.
    streaming_instead: std::sync::Mutex<HashSet<String>>,
}

/// Rows of in-sync and skipped images written per transaction.
const RECORD_BATCH: usize = 2000;

impl Execution<'_> {
    async fn execute(&self, actions: Vec<Action>) -> Result<Vec<ActionResult>, EngineError> {
        let mut results = Vec::new();
        let mut copies: Vec<Vec<Action>> = Vec::new();
        let mut later = Vec::new();
        for action in actions {
            match &action.kind {
                // Our failed copies go first: they may hold the quota the copies need.
                ActionKind::DeleteFailedCopy { .. } => {
                    if !self.cancel.is_cancelled() {
                        results.push(self.simple(action).await?)
                    }
                }
                ActionKind::Copy { .. } => match copies
                    .iter_mut()
                    .find(|g| g[0].source_id == action.source_id)
                {
                    Some(group) => group.push(action),
                    None => copies.push(vec![action]),
                },
                _ => later.push(action),
            }
        }
        let copied: Vec<Result<Vec<ActionResult>, EngineError>> =
            futures_util::stream::iter(copies)
                .map(|group| self.copy(group))
                .buffer_unordered(self.engine.max_parallel_images)
                .collect()
                .await;
        for group in copied {
            results.extend(group?);
        }
        for action in later {
            if self.cancel.is_cancelled() {
                break;
            }
            results.push(self.simple(action).await?);
        }
        Ok(results)
    }

    fn source(&self, id: &str) -> Option<&Image> {
        self.sources.get(id)
    }

    /// One source image to all the targets that need it, through one download.
    async fn copy(&self, group: Vec<Action>) -> Result<Vec<ActionResult>, EngineError> {
        if self.cancel.is_cancelled() {
            return Ok(vec![]); // shutting down: no new transfer starts
        }
        let started = Instant::now();
        let image = self
            .source(&group[0].source_id)
            .expect("planned from the listing");
        let mut targets = Vec::new();
        let mut results = Vec::new();
        let mut group_copying = Vec::new();
        for mut action in group {
            let ActionKind::Copy {
                target_id,
                protect,
                create_body,
                id,
                fallback_body,
                members: _,
                metadata: _,
            } = &action.kind
            else {
                unreachable!("copy groups hold copies only")
            };
            if let Some(Route::Refuse(reason, failure)) = self.routes.get(&action.target) {
                self.state.record_outcome(
                    &self.job.name,
                    &self.job.source,
                    image,
                    &action.target,
                    Outcome::Failed {
                        target_id: None,
                        error: reason,
                    },
                )?;
                tracing::error!(
                    job = %self.job.name, image = image.name.as_deref().unwrap_or(""),
                    source_id = %image.id, target = %action.target, result = "failed",
                    "copy of '{}' ({}) to {} failed: {reason}",
                    image.name.as_deref().unwrap_or(""), image.id, action.target
                );
                results.push(ActionResult {
                    error: Some(reason.clone()),
                    failure: Some(*failure),
                    method: None,
                    seconds: 0.0,
                    action,
                });
                continue;
            }
            // Every id the copy may get is in the ledger before the create call; an id the target
            // refuses is forgotten again afterwards.
            let record = |target_id: &str| {
                self.state.record_copy_started(
                    &self.job.name,
                    self.run_id,
                    self.ledger_mark,
                    &self.job.source,
                    image,
                    &action.target,
                    target_id,
                )
            };
            let mut taken = record(target_id)?;
            let fallback = match (id, fallback_body) {
                (
                    NewCopyId::Source {
                        fallback: Some(other),
                        ..
                    },
                    Some(body),
                ) if taken.is_none() => {
                    taken = record(other)?;
                    Some((other.clone(), body.clone()))
                }
                _ => None,
            };
            if let Some(taken) = taken {
                // Another job planned this copy at the same moment and got there first.
                action.kind = match taken.run_id {
                    Some(run_id) => ActionKind::InFlight {
                        target_id: taken.target_id,
                        job: taken.job,
                        run_id,
                    },
                    None => ActionKind::InSync {
                        target_id: taken.target_id,
                        foreign: true,
                    },
                };
                tracing::info!(
                    job = %self.job.name, image = image.name.as_deref().unwrap_or(""),
                    source_id = %image.id, target = %action.target, result = result_word(&action.kind),
                    "'{}' on {}: {}", image.name.as_deref().unwrap_or(""), action.target, action.describe()
                );
                results.push(ActionResult {
                    action,
                    error: None,
                    failure: None,
                    method: None,
                    seconds: 0.0,
                });
                continue;
            }
            targets.push(CopyTarget {
                client: self.engine.client(&action.target).clone(),
                target_id: target_id.clone(),
                create_body: create_body.clone(),
                protect: *protect,
                reuse_existing: matches!(id, NewCopyId::Reuse { .. }),
                // A reused copy is one left unfinished under the source's id.
                preserving_id: matches!(id, NewCopyId::Source { .. } | NewCopyId::Reuse { .. }),
                fallback,
                store: self.job.policy(&action.target).stores.first().cloned(),
            });
            group_copying.push(action);
        }
        let group = group_copying;
        if targets.is_empty() {
            return Ok(results);
        }
        let size = image.size.unwrap_or(0);
        let label = image.name.clone().unwrap_or_else(|| image.id.clone());
        let outcomes = self.transfer(image, &label, &group, targets).await;
        let seconds = started.elapsed().as_secs_f64();

        for action in group {
            let outcome = outcomes
                .iter()
                .find(|o| o.target == action.target)
                .expect("one outcome per target");
            let error = outcome.result.as_ref().err().map(|e| e.message.clone());
            let mut failure = outcome.result.as_ref().err().map(|e| e.reason);
            // The ids this copy did not get are not ours: the source's id the target refused
            // (another image holds it), or the fallback it did not need.
            let mut unused: Vec<&str> = outcome.refused_ids.iter().map(String::as_str).collect();
            if let ActionKind::Copy {
                id:
                    NewCopyId::Source {
                        fallback: Some(other),
                        ..
                    },
                ..
            } = &action.kind
                && *other != outcome.target_id
            {
                unused.push(other);
            }
            for id in unused {
                self.state.copy_settled(&action.target, id)?;
                self.state.record_deleted(&action.target, id)?;
            }
            self.state
                .copy_settled(&action.target, &outcome.target_id)?;
            // The copy is made and verified: then it goes into the other stores wanted (a pull
            // went into all of them at once) and gets its members.
            let mut error = error;
            let stores = &self.job.policy(&action.target).stores;
            if error.is_none()
                && outcome.method == transfer::CopyMethod::Stream
                && stores.len() > 1
                && let Err(e) = server_copy::copy_to_stores(
                    self.engine.client(&action.target),
                    &outcome.target_id,
                    &stores[1..],
                    self.engine.settings.stall_timeout,
                    self.cancel,
                )
                .await
            {
                error = Some(format!(
                    "copied and verified, but not into every store: {e}"
                ));
                failure = Some(if self.cancel.is_cancelled() {
                    FailureReason::Interrupted
                } else {
                    FailureReason::TargetStore
                });
            }
            if error.is_none()
                && let ActionKind::Copy {
                    members: Some(changes),
                    ..
                } = &action.kind
                && let Err(e) = apply_members(
                    self.engine.client(&action.target),
                    &outcome.target_id,
                    changes,
                )
                .await
            {
                error = Some(format!("copied and verified, but its members: {e}"));
            }
            match &error {
                None => {
                    self.state.record_outcome(
                        &self.job.name,
                        &self.job.source,
                        image,
                        &action.target,
                        Outcome::InSync {
                            target_id: &outcome.target_id,
                            foreign: false,
                            bytes: size,
                        },
                    )?;
                    tracing::info!(
                        job = %self.job.name,
                        image = %label,
                        source_id = %image.id,
                        target = %action.target,
                        target_id = %outcome.target_id,
                        result = "copied",
                        method = outcome.method.as_str(),
                        size,
                        seconds = format_args!("{seconds:.1}"),
                        mb_per_s = format_args!("{:.1}", size as f64 / 1e6 / seconds.max(1e-9)),
                        "copied '{label}' to {} by {}: {:.1} MB in {seconds:.1} s ({:.1} MB/s), verified",
                        action.target,
                        outcome.method.as_str(),
                        size as f64 / 1e6,
                        size as f64 / 1e6 / seconds.max(1e-9)
                    );
                }
                Some(e) => {
                    if outcome.removed {
                        self.state
                            .record_deleted(&action.target, &outcome.target_id)?;
                    }
                    self.state.record_outcome(
                        &self.job.name,
                        &self.job.source,
                        image,
                        &action.target,
                        Outcome::Failed {
                            target_id: Some(&outcome.target_id),
                            error: e,
                        },
                    )?;
                    tracing::error!(
                        job = %self.job.name,
                        image = %label,
                        source_id = %image.id,
                        target = %action.target,
                        result = "failed",
                        size,
                        seconds = format_args!("{seconds:.1}"),
                        "copy of '{label}' ({}) to {} failed: {e}",
                        image.id,
                        action.target
                    );
                }
            }
            results.push(ActionResult {
                action,
                error,
                failure,
                method: Some(outcome.method),
                seconds,
            });
        }
        Ok(results)
    }

    /// Moves one image's bytes to `targets` (in the order of `actions`), each by its route:
    /// glance-sync streams to some while the others' Glance pulls; a pull that fails for a
    /// reason a stream would not have (`transfer = "auto"`) is streamed into instead, and that
    /// target is streamed to for the rest of the run.
    async fn transfer(
        &self,
        image: &Image,
        label: &str,
        actions: &[Action],
        targets: Vec<CopyTarget>,
    ) -> Vec<transfer::CopyOutcome> {
        let mut streams = Vec::new();
        let mut pulls = Vec::new();
        let mut outcomes = Vec::new();
        // Only glance-sync's own hashing can prove the bytes of an image without a digest.
        let provable = image.checksum.is_some() || image.os_hash_value.is_some();
        for (action, t) in actions.iter().zip(targets) {
            match self.pull_route(&action.target) {
                Some(from) if provable => pulls.push((action, t, from)),
                Some(_) if self.job.policy(&action.target).transfer == TransferMethod::Auto => {
                    tracing::info!(
                        job = %self.job.name, target = %action.target, source_id = %image.id,
                        "streaming '{label}' to {}: its source records no digest, so a pulled \
                         copy could not be verified",
                        action.target
                    );
                    streams.push(t);
                }
                Some(_) => outcomes.push(transfer::CopyOutcome {
                    target: action.target.clone(),
                    method: transfer::CopyMethod::GlanceDownload,
                    refused_ids: vec![],
                    // Nothing was created: a new id goes from the ledger again.
                    removed: !t.reuse_existing,
                    target_id: t.target_id,
                    result: Err(transfer::TransferError::new(
                        FailureReason::TargetImport,
                        format!(
                            "source image {} records no checksum or os_hash_value, so a copy \
                             {} pulls could not be verified; use transfer = \"auto\" or \
                             \"stream\" (glance-sync hashes what it reads)",
                            image.id, action.target
                        ),
                    )),
                }),
                None => streams.push(t),
            }
        }
        let pulled = futures_util::future::join_all(pulls.into_iter().map(|(action, t, from)| {
            let ActionKind::Copy { metadata, .. } = &action.kind else {
                unreachable!("copy groups hold copies only")
            };
            let policy = self.job.policy(&action.target);
            async move {
                let pull = server_copy::Pull {
                    source: image,
                    from: &from,
                    metadata,
                    rules: &policy.metadata,
                    may_stream: policy.transfer == TransferMethod::Auto,
                    stall_timeout: self.engine.settings.stall_timeout,
                    stores: &policy.stores,
                };
                let _shown = self.engine.progress.start(progress::Transfer {
                    job: &self.job.name,
                    image: label,
                    source_id: &image.id,
                    targets: vec![action.target.clone()],
                    method: CopyMethod::GlanceDownload,
                    size: image.size.unwrap_or(0),
                });
                server_copy::glance_download(&pull, t, self.cancel).await
            }
        }));
        let (streamed, pulled) = tokio::join!(self.stream(image, label, streams), pulled);
        outcomes.extend(streamed);
        let mut again = Vec::new();
        // The ids a pull's create refused stay refused whatever moves the bytes afterwards.
        let mut refused: Vec<(String, Vec<String>)> = Vec::new();
        for p in pulled {
            let Some(why) = p.stream_instead else {
                outcomes.push(p.outcome);
                continue;
            };
            let action = actions
                .iter()
                .find(|a| a.target == p.outcome.target)
                .expect("one action per target");
            let ActionKind::Copy {
                protect,
                create_body,
                ..
            } = &action.kind
            else {
                unreachable!("copy groups hold copies only")
            };
            let mut create_body = create_body.clone();
            let mut ids = p.outcome.refused_ids;
            let spent_source_id = p.id_spent && p.outcome.target_id == image.id;
            if spent_source_id
                && self.job.policy(&action.target).preserve_ids
                    == crate::config::PreserveIds::Require
            {
                // A new id would break the job's rule: the image fails instead.
                outcomes.push(transfer::CopyOutcome {
                    refused_ids: ids,
                    ..p.outcome
                });
                continue;
            }
            let target_id = if p.id_spent {
                // Glance never gives a deleted id out again: a new one, in the ledger first.
                let id = uuid::Uuid::new_v4().to_string();
                match self.record_started(image, &action.target, &id) {
                    Ok(()) => {}
                    Err(why) => {
                        tracing::error!(job = %self.job.name, target = %action.target, "{why}");
                        outcomes.push(transfer::CopyOutcome {
                            refused_ids: ids,
                            ..p.outcome
                        });
                        continue;
                    }
                }
                create_body["id"] = id.clone().into();
                // The spent id is no longer ours: it goes from the ledger with the outcome.
                ids.push(p.outcome.target_id);
                id
            } else {
                p.outcome.target_id
            };
            refused.push((p.outcome.target.clone(), ids));
            if p.whole_target {
                self.stream_from_now_on(&action.target, &why);
            } else {
                tracing::warn!(
                    job = %self.job.name, target = %action.target, source_id = %image.id,
                    "glance-download of '{label}' to {} failed, so glance-sync streams it \
                     (transfer = \"auto\"): {why}",
                    action.target
                );
            }
            again.push(CopyTarget {
                client: self.engine.client(&action.target).clone(),
                preserving_id: target_id == image.id,
                target_id,
                create_body,
                protect: *protect,
                reuse_existing: p.created,
                fallback: None,
                store: self.job.policy(&action.target).stores.first().cloned(),
            });
        }
        for mut o in self.stream(image, label, again).await {
            if let Some((_, ids)) = refused.iter_mut().find(|(t, _)| *t == o.target) {
                o.refused_ids.append(ids);
            }
            outcomes.push(o);
        }
        outcomes
    }

    /// Records a new copy's id in the ledger before it is created; `Err` says why the copy
    /// cannot be made now (another job recorded one meanwhile, or the database failed).
    fn record_started(&self, image: &Image, target: &str, id: &str) -> Result<(), String> {
        match self.state.record_copy_started(
            &self.job.name,
            self.run_id,
            self.ledger_mark,
            &self.job.source,
            image,
            target,
            id,
        ) {
            Ok(None) => Ok(()),
            Ok(Some(taken)) => Err(format!(
                "copy of '{}' to {target} not streamed again: job '{}' recorded its copy {} \
                 meanwhile",
                image.name.as_deref().unwrap_or(""),
                taken.job,
                taken.target_id
            )),
            Err(e) => Err(format!("the state database refused a new copy's id: {e}")),
        }
    }

    /// Streams one image to `targets` through glance-sync, with a progress bar.
    async fn stream(
        &self,
        image: &Image,
        label: &str,
        targets: Vec<CopyTarget>,
    ) -> Vec<transfer::CopyOutcome> {
        if targets.is_empty() {
            return vec![];
        }
        let bar = self.engine.progress.start(progress::Transfer {
            job: &self.job.name,
            image: label,
            source_id: &image.id,
            targets: targets
                .iter()
                .map(|t| t.client.cloud().to_string())
                .collect(),
            method: CopyMethod::Stream,
            size: image.size.unwrap_or(0),
        });
        transfer::copy_image(
            self.engine.client(&self.job.source),
            image,
            targets,
            &transfer::Settings {
                bandwidth: self.engine.bandwidth.for_job(&self.job.name),
                ..self.engine.settings.clone()
            },
            &bar,
            self.cancel,
        )
        .await
    }

    /// Where `target` pulls from this run, or `None` when glance-sync streams to it.
    fn pull_route(&self, target: &str) -> Option<server_copy::PullFrom> {
        if self
            .streaming_instead
            .lock()
            .expect("not poisoned")
            .contains(target)
        {
            return None;
        }
        match self.routes.get(target) {
            Some(Route::Pull(from)) => Some(from.clone()),
            _ => None,
        }
    }

    /// A pull to `target` failed for a reason streaming does not have: said once per run.
    fn stream_from_now_on(&self, target: &str, why: &str) {
        if self
            .streaming_instead
            .lock()
            .expect("not poisoned")
            .insert(target.to_string())
        {
            tracing::warn!(
                job = %self.job.name, target,
                "glance-download to {target} failed, so glance-sync streams to it for the rest \
                 of this run (transfer = \"auto\"): {why}"
            );
        }
    }

    async fn prune(
        &self,
        client: &GlanceClient,
        target: &str,
        target_id: &str,
        delete: bool,
        unprotect: bool,
    ) -> Result<(), GlanceError> {
        let set = |key: &str, value: bool| crate::metadata::PatchOp {
            op: "replace",
            path: format!("/{key}"),
            value: Some(value.into()),
        };
        if !delete {
            client
                .patch_image(target_id, &[set("os_hidden", true)])
                .await?;
        } else {
            if unprotect {
                client
                    .patch_image(target_id, &[set("protected", false)])
                    .await?;
            }
            match client.delete_image(target_id).await {
                Err(e) if e.status() != Some(404) => return Err(e),
                _ => {}
            }
            self.state
                .record_deleted(target, target_id)
                .map_err(|e| client.protocol("record prune", e.to_string()))?;
        }
        self.state
            .forget_replica(target, target_id)
            .map_err(|e| client.protocol("record prune", e.to_string()))?;
        Ok(())
    }

    /// Every action other than a copy: at most one API call, then the record.
    async fn simple(&self, action: Action) -> Result<ActionResult, EngineError> {
        let started = Instant::now();
        let client = self.engine.client(&action.target);
        let call: Result<(), GlanceError> = match &action.kind {
            ActionKind::UpdateMetadata {
                target_id, patch, ..
            } => client.patch_image(target_id, patch).await.map(drop),
            ActionKind::Relink {
                target_id, patch, ..
            } => {
                // The ledger decides what is ours: it follows first, the marker with the patch.
                let source = self
                    .source(&action.source_id)
                    .expect("planned from the listing");
                self.state.relink(
                    &self.job.name,
                    &self.job.source,
                    source,
                    &action.target,
                    target_id,
                )?;
                if patch.is_empty() {
                    Ok(())
                } else {
                    client.patch_image(target_id, patch).await.map(drop)
                }
            }
            ActionKind::SyncMembers { target_id, changes } => {
                apply_members(client, target_id, changes).await
            }
            ActionKind::CopyToStores { target_id, stores } => {
                server_copy::copy_to_stores(
                    client,
                    target_id,
                    stores,
                    self.engine.settings.stall_timeout,
                    self.cancel,
                )
                .await
            }
            ActionKind::Deactivate { target_id } => client.deactivate(target_id).await,
            ActionKind::Reactivate { target_id } => client.reactivate(target_id).await,
            ActionKind::DeleteFailedCopy { target_id, .. } => {
                match client.delete_image(target_id).await {
                    Err(e) if e.status() != Some(404) => Err(e),
                    _ => {
                        self.state.record_deleted(&action.target, target_id)?;
                        Ok(())
                    }
                }
            }
            ActionKind::Prune {
                target_id,
                delete,
                unprotect,
            } => {
                self.prune(client, &action.target, target_id, *delete, *unprotect)
                    .await
            }
            ActionKind::PruneRefused { reason, .. } | ActionKind::Refused { reason } => {
                tracing::error!(
                    job = %self.job.name, image = action.name.as_deref().unwrap_or(""),
                    source_id = %action.source_id, target = %action.target, result = "refused",
                    "'{}' on {}: {}", action.name.as_deref().unwrap_or(""), action.target,
                    action.describe()
                );
                return Ok(ActionResult {
                    error: Some(reason.clone()),
                    action,
                    failure: None,
                    method: None,
                    seconds: 0.0,
                });
            }
            ActionKind::InSync { .. } | ActionKind::InFlight { .. } | ActionKind::Skip { .. } => {
                Ok(())
            }
            ActionKind::Copy { .. } => unreachable!("copies go through the transfer pipeline"),
        };
        let error = call.err().map(|e| e.to_string());
        let seconds = started.elapsed().as_secs_f64();
        if let Some(source) = self.source(&action.source_id) {
            let outcome = outcome_of(&action, error.as_deref(), source);
            // Deleting a failed copy says nothing about the source image's own status, and a
            // copy in flight is recorded by the run making it.
            if !matches!(
                action.kind,
                ActionKind::DeleteFailedCopy { .. } | ActionKind::InFlight { .. }
            ) {
                self.state.record_outcome(
                    &self.job.name,
                    &self.job.source,
                    source,
                    &action.target,
                    outcome,
                )?;
            }
        }
        self.log_outcome(&action, error.as_deref(), seconds);
        Ok(ActionResult {
            action,
            error,
            failure: None,
            method: None,
            seconds,
        })
    }

    fn log_outcome(&self, action: &Action, error: Option<&str>, seconds: f64) {
        log_outcome(self.job, action, error, seconds)
    }
}

/// Actions that call no cloud (in sync, skipped): recorded in transactions of [`RECORD_BATCH`]
/// rows, so that the first run over a large cloud in sync costs one fsync per batch instead of
/// one per image.
fn record_bookkeeping(
    state: &State,
    job: &Job,
    sources: &HashMap<&str, &Image>,
    actions: Vec<Action>,
) -> Result<(), EngineError> {
    for chunk in actions.chunks(RECORD_BATCH) {
        let rows: Vec<_> = chunk
            .iter()
            .filter_map(|a| {
                let source = *sources.get(a.source_id.as_str())?;
                Some((source, a.target.as_str(), outcome_of(a, None, source)))
            })
            .collect();
        state.record_outcomes(&job.name, &job.source, rows)?;
        for action in chunk {
            log_outcome(job, action, None, 0.0);
        }
    }
    Ok(())
}

fn log_outcome(job: &Job, action: &Action, error: Option<&str>, seconds: f64) {
    let name = action.name.clone().unwrap_or_default();
    match error {
        Some(e) => tracing::error!(
            job = %job.name, image = %name, source_id = %action.source_id,
            target = %action.target, result = "failed",
            "{} of '{name}' on {} failed: {e}", action.describe(), action.target
        ),
        None if action.writes() => tracing::info!(
            job = %job.name, image = %name, source_id = %action.source_id,
            target = %action.target, result = result_word(&action.kind),
            size = action.size.unwrap_or(0), seconds = format_args!("{seconds:.1}"),
            "'{name}' on {}: {}", action.target, action.describe()
        ),
        // One line per image and target found in sync would flood the log of a large cloud at
        // every run: those are for -v (the run's summary counts them).
        None if matches!(action.kind, ActionKind::InSync { .. }) => tracing::debug!(
            job = %job.name, image = %name, source_id = %action.source_id,
            target = %action.target, result = result_word(&action.kind),
            size = action.size.unwrap_or(0),
            "'{name}' on {}: {}", action.target, action.describe()
        ),
        None => tracing::info!(
            job = %job.name, image = %name, source_id = %action.source_id,
            target = %action.target, result = result_word(&action.kind),
            size = action.size.unwrap_or(0),
            "'{name}' on {}: {}", action.target, action.describe()
        ),
    }
}

/// Copies recorded for jobs the config no longer has (renamed or removed) are maintained by no
/// job: said at every run and plan, with what to do.
pub fn warn_jobs_not_in_config(config: &Config, state: &State) -> Result<(), StateError> {
    for (job, source, count) in state.ledger_jobs()? {
        if config.jobs.iter().any(|j| j.name == job) {
            continue;
        }
        tracing::warn!(
            job = %job,
            images = count,
            "{count} copies from source cloud '{source}' are recorded for job '{job}', which is \
             not in {}: no job maintains or prunes them. If the job was renamed, run \
             `glance-sync adopt --job NEW --from-job {job} --yes`",
            config.path.display()
        );
    }
    Ok(())
}

/// The metrics of earlier runs that the state database remembers, for a process that has not
/// run the jobs yet: when each job last ran and last succeeded, and its replica counts. A daemon
/// restart or a failed one-shot run then does not make a job look as if it never succeeded.
pub fn seed_metrics(config: &Config, state: &State, metrics: &Metrics) -> Result<(), StateError> {
    let seconds = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond() as f64 / 1000.0)
    };
    let times = state.run_times()?;
    for job in &config.jobs {
        metrics.set_image_counts(&job.name, &state.replica_counts(&job.name)?);
        if let Some(t) = times.iter().find(|t| t.job == job.name) {
            metrics.seed_run_times(
                &job.name,
                seconds(&t.last_finished),
                seconds(&t.last_success),
            );
        }
    }
    Ok(())
}

/// Copies this job made of images the tenant rule now leaves out: never deleted automatically
/// (an operator decides), but never silent either.
fn warn_copies_left_out(job: &Job, plan: &Plan) {
    let mut per_target: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in &plan.copies_left_out {
        per_target.entry(&c.target).or_default().push(&c.target_id);
    }
    for (target, ids) in per_target {
        tracing::warn!(
            job = %job.name,
            target = %target,
            images = ids.len(),
            "target '{target}': {} of this job's copies are of other projects' private or shared \
             images that the job now leaves out: they are no longer maintained and may be seen by \
             people their owners did not share them with. List the projects in [jobs.filter] \
             owners, or delete the copies ({})",
            ids.len(),
            ids.join(", ")
        );
    }
}

/// Images with our marker that the ledger does not know: after a lost or restored state database
/// they are treated as anyone's, and a renamed source image would get a second copy. One warning
/// per target, with what to do.
fn warn_unadopted(job: &Job, plan: &Plan) {
    for (target, count) in plan.unadopted_per_target() {
        if count > 0 {
            tracing::warn!(
                job = %job.name,
                target = %target,
                images = count,
                "target '{target}': {count} image(s) owned by glance-sync's project carry its \
                 marker for source cloud '{}' but are not in the state database's ledger (was it \
                 lost or restored?); they are left untouched as foreign images. \
                 `glance-sync adopt --job {}` lists them, and with --yes records them",
                job.source,
                job.name
            );
        }
    }
}

/// The members of each image in `ids` (8 at a time); an image whose listing fails is left out,
/// with a warning.
async fn list_each(
    client: &GlanceClient,
    ids: Vec<String>,
) -> Vec<(String, Vec<crate::image::Member>)> {
    futures_util::stream::iter(ids)
        .map(|id| {
            let client = client.clone();
            async move {
                match client.list_members(&id).await {
                    Ok(m) => Some((id, m)),
                    Err(e) => {
                        tracing::warn!("{e}; its members are left as they are this run");
                        None
                    }
                }
            }
        })
        .buffer_unordered(8)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

/// Gives copy `target_id` the member changes planned for it. A status the credentials may not
/// set (by default only an admin or the member project itself may) leaves that member pending,
/// with a warning: the image is shared either way, and the member can still accept it.
async fn apply_members(
    client: &GlanceClient,
    target_id: &str,
    changes: &plan::MemberChanges,
) -> Result<(), GlanceError> {
    for m in &changes.add {
        client.add_member(target_id, &m.project).await?;
    }
    for project in &changes.remove {
        match client.remove_member(target_id, project).await {
            Err(e) if e.status() != Some(404) => return Err(e),
            _ => {}
        }
    }
    let statuses = changes
        .add
        .iter()
        .filter(|m| m.status != "pending")
        .chain(&changes.set_status);
    for m in statuses {
        match client
            .set_member_status(target_id, &m.project, &m.status)
            .await
        {
            Err(e) if e.status() == Some(403) => tracing::warn!(
                cloud = client.cloud(),
                image = %target_id,
                "member {} of image {target_id} stays pending instead of {}: only an admin or \
                 that project may set its status ({e})",
                m.project,
                m.status
            ),
            other => other?,
        }
    }
    for project in &changes.unmapped {
        tracing::warn!(
            cloud = client.cloud(),
            image = %target_id,
            "member {project} of the source image is not in the job's project_map: not shared \
             on cloud '{}'",
            client.cloud()
        );
    }
    Ok(())
}

/// What the state database records for a (source image, target) pair after `action`.
fn outcome_of<'a>(action: &'a Action, error: Option<&'a str>, source: &Image) -> Outcome<'a> {
    let bytes = source.size.unwrap_or(0);
    match (error, &action.kind) {
        (Some(error), _) => Outcome::Failed {
            target_id: action.target_id(),
            error,
        },
        (None, ActionKind::Skip { reason }) => Outcome::Skipped { reason },
        (None, ActionKind::InSync { target_id, foreign }) => Outcome::InSync {
            target_id,
            foreign: *foreign,
            bytes,
        },
        (None, _) => Outcome::InSync {
            target_id: action.target_id().unwrap_or_default(),
            foreign: false,
            bytes,
        },
    }
}

/// The `result` field of a log line: one word per kind of outcome, for log queries.
fn result_word(kind: &ActionKind) -> &'static str {
    match kind {
        ActionKind::Copy { .. } => "copied",
        ActionKind::UpdateMetadata { .. } => "updated",
        ActionKind::Relink { .. } => "relinked",
        ActionKind::InFlight { .. } => "in_flight",
        ActionKind::Deactivate { .. } => "deactivated",
        ActionKind::Reactivate { .. } => "reactivated",
        ActionKind::InSync { foreign: false, .. } => "in_sync",
        ActionKind::InSync { foreign: true, .. } => "in_sync_foreign",
        ActionKind::DeleteFailedCopy { .. } => "deleted_failed_copy",
        ActionKind::Skip { .. } => "skipped",
        ActionKind::Prune { delete: true, .. } => "pruned_deleted",
        ActionKind::Prune { delete: false, .. } => "pruned_hidden",
        ActionKind::PruneRefused { .. } => "prune_refused",
        ActionKind::Refused { .. } => "refused",
        ActionKind::SyncMembers { .. } => "members",
        ActionKind::CopyToStores { .. } => "stored",
    }
}
