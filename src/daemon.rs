//! The daemon: every job on its schedule, metrics and health over HTTP, signals, systemd notify.
//!
//! Each job has its own loop; loops of one config are a *generation*. SIGHUP loads the config again
//! and, if it is valid, replaces the generation: old loops start no new run, runs in flight finish,
//! and a per-job lock shared across generations keeps two runs of one job from overlapping.
//! SIGTERM/SIGINT stop every loop, abort transfers in flight (their half-made copies are deleted)
//! and wait up to `shutdown_grace` for that cleanup.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, Job};
use crate::engine::Engine;
use crate::http::Site;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::state::{State, StateError};
use crate::status::JobClocks;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("cannot serve metrics on {addr}: {source}; change [metrics] listen")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A lock per job name, shared by every generation: a job's runs never overlap, even across a
/// reload.
type JobLocks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// What every job loop shares.
struct Shared {
    state: Arc<State>,
    metrics: Arc<Metrics>,
    locks: JobLocks,
    /// Fired on SIGTERM/SIGINT: aborts transfers in flight.
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Kept across reloads: a reload changes the limits of transfers in flight.
    bandwidth: Arc<crate::bandwidth::Registry>,
    /// Transfers in flight, for the status page; shared by every generation's engine.
    progress: Progress,
    /// Next due time and running state per job, for the status page.
    clocks: Clocks,
    /// Generations started so far: the next one's number.
    generations: std::sync::atomic::AtomicU64,
    site: Arc<Site>,
}

type Clocks = Arc<Mutex<JobClocks>>;

/// The loops of one config.
struct Generation {
    /// Fired when the generation is replaced or the daemon stops: no new run starts.
    stop: CancellationToken,
    config: Config,
}

/// Runs until SIGTERM or SIGINT. Errors are those that prevent starting at all.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    require_schedules(&config)?;
    let state = Arc::new(State::open(&config.state_path)?);
    let metrics = Metrics::new();
    crate::engine::seed_metrics(&config, &state, &metrics)?;
    crate::engine::warn_jobs_not_in_config(&config, &state)?;
    // What the last runs saw, until the next run counts again.
    for u in state.unadopted()? {
        if config
            .jobs
            .iter()
            .any(|j| j.name == u.job && j.targets.contains(&u.target))
        {
            metrics.set_unadopted(&u.job, &u.target, u.images);
        }
    }
    let addr = config.metrics.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    let token = bearer_token(&config)?;
    if token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "[metrics] listen = {addr} is reachable beyond this host and nothing protects it: \
             anyone who reaches it reads image names, errors and metrics; set [metrics] \
             bearer_token_file, or listen on 127.0.0.1 behind a proxy"
        );
    }
    let bandwidth = {
        let m = metrics.clone();
        Arc::new(crate::bandwidth::Registry::new(
            crate::bandwidth::Limit::NONE,
            move |job, rate| m.set_bandwidth_limit(job, rate),
        ))
    };
    let progress = Progress::default();
    let clocks = Clocks::default();
    let site = Arc::new(Site {
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
        bandwidth: bandwidth.clone(),
        state: State::open_read_only(&config.state_path)?
            .expect("State::open created the database"),
        config: Mutex::new(Arc::new(config.clone())),
        token: Mutex::new(token),
        clocks: clocks.clone(),
        progress: progress.clone(),
    });
    let shared = Shared {
        state,
        metrics: metrics.clone(),
        locks: JobLocks::default(),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        bandwidth,
        progress,
        clocks,
        generations: Default::default(),
        site: site.clone(),
    };
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(crate::http::serve(
        listener,
        site.clone(),
        http_stop.clone(),
    ));
    let mut generation = start_generation(config, &shared)?;
    site.ready.store(true, Ordering::SeqCst);
    tracing::info!(
        metrics = %addr,
        jobs = generation.config.jobs.len(),
        "daemon ready: serving the status page, /metrics, /healthz, /readyz on http://{addr}"
    );
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("waiting for the next scheduled run"),
    ]);
    let watchdog = spawn_watchdog();

    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                generation = reload(generation, &shared);
            }
        }
    }

    notify(&[sd_notify::NotifyState::Stopping]);
    let grace = generation.config.daemon.shutdown_grace;
    generation.stop.cancel();
    shared.shutdown.cancel();
    shared.tracker.close();
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "transfers still cleaning up after shutdown_grace ({} s); exiting anyway: \
             the next start deletes what is left (the ids are in the state database)",
            grace.as_secs()
        );
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    http_stop.cancel();
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
}

fn bearer_token(config: &Config) -> Result<Option<secrecy::SecretString>, DaemonError> {
    config
        .metrics
        .bearer_token()
        .map_err(|message| DaemonError::Invalid {
            path: config.path.clone(),
            message,
        })
}

fn require_schedules(config: &Config) -> Result<(), DaemonError> {
    let unscheduled: Vec<&str> = config
        .jobs
        .iter()
        .filter(|j| j.schedule.is_none())
        .map(|j| j.name.as_str())
        .collect();
    if unscheduled.is_empty() {
        return Ok(());
    }
    Err(DaemonError::Invalid {
        path: config.path.clone(),
        message: format!(
            "the daemon runs jobs on their schedule, and these have none: {}; \
             add schedule = \"*/30 * * * *\" or interval = \"30m\" to each",
            unscheduled.join(", ")
        ),
    })
}

fn start_generation(config: Config, shared: &Shared) -> Result<Generation, DaemonError> {
    let engine = Arc::new(Engine::with_bandwidth(
        &config,
        shared.progress.clone(),
        shared.metrics.clone(),
        shared.bandwidth.clone(),
    )?);
    let stop = CancellationToken::new();
    let generation = shared.generations.fetch_add(1, Ordering::SeqCst);
    for job in &config.jobs {
        let lock = shared
            .locks
            .lock()
            .expect("job locks poisoned")
            .entry(job.name.clone())
            .or_default()
            .clone();
        tracing::info!(
            job = %job.name,
            "scheduled {}{}",
            job.schedule.as_ref().map(|s| s.describe()).unwrap_or_default(),
            if job.run_on_start { ", and now" } else { "" }
        );
        shared.tracker.spawn(job_loop(
            job.clone(),
            engine.clone(),
            shared.state.clone(),
            shared.metrics.clone(),
            lock,
            shared.shutdown.clone(),
            ClockHand {
                job: job.name.clone(),
                clocks: shared.clocks.clone(),
                generation,
                stop: stop.clone(),
            },
        ));
    }
    Ok(Generation { stop, config })
}

/// SIGHUP: the new config replaces the old one if it is valid; otherwise the old one keeps running.
fn reload(old: Generation, shared: &Shared) -> Generation {
    let path = old.config.path.clone();
    let fresh = Config::load(&path)
        .map_err(DaemonError::from)
        .and_then(|c| {
            require_schedules(&c)?;
            if c.state_path != old.config.state_path
                || c.metrics.listen != old.config.metrics.listen
            {
                return Err(DaemonError::Invalid {
                    path: path.clone(),
                    message: "[state] path and [metrics] listen change only with a restart".into(),
                });
            }
            Ok(c)
        });
    let fresh = fresh.and_then(|c| Ok((bearer_token(&c)?, c)));
    match fresh.and_then(|(token, c)| {
        let generation = start_generation_replacing(c, &old, shared)?;
        let mut current = shared.site.token.lock().expect("not poisoned");
        if current.is_some() && token.is_none() {
            tracing::warn!(
                "SIGHUP: [metrics] bearer_token_file is no longer set: the status page and \
                 /metrics now answer without a token"
            );
        }
        *current = token;
        drop(current);
        *shared.site.config.lock().expect("not poisoned") = Arc::new(generation.config.clone());
        Ok(generation)
    }) {
        Ok(generation) => {
            tracing::info!(
                jobs = generation.config.jobs.len(),
                "SIGHUP: configuration reloaded from {}",
                path.display()
            );
            generation
        }
        Err(e) => {
            tracing::error!(
                "SIGHUP: new configuration refused, the previous one keeps running: {e}"
            );
            old
        }
    }
}

fn start_generation_replacing(
    config: Config,
    old: &Generation,
    shared: &Shared,
) -> Result<Generation, DaemonError> {
    let generation = start_generation(config, shared)?;
    old.stop.cancel();
    Ok(generation)
}

/// Where a job loop posts its next due time and running state for the status page.
struct ClockHand {
    job: String,
    clocks: Clocks,
    /// The loop's config generation: a replaced generation's loop may still be finishing a run,
    /// and no longer says when the job is due.
    generation: u64,
    /// Fired when the loop's generation is replaced or the daemon stops.
    stop: CancellationToken,
}

impl ClockHand {
    fn due(&self, due: Option<Timestamp>) {
        self.clocks
            .lock()
            .expect("not poisoned")
            .set_due(&self.job, self.generation, due);
    }

    fn running(&self, since: Option<Timestamp>) {
        self.clocks
            .lock()
            .expect("not poisoned")
            .set_running(&self.job, since);
    }
}

/// One job: wait for the next due time, run unless the previous run is still going, repeat.
async fn job_loop(
    job: Job,
    engine: Arc<Engine>,
    state: Arc<State>,
    metrics: Arc<Metrics>,
    lock: Arc<tokio::sync::Mutex<()>>,
    shutdown: CancellationToken,
    clock: ClockHand,
) {
    let stop = clock.stop.clone();
    let schedule = job.schedule.clone().expect("daemon jobs have a schedule");
    let mut due = if job.run_on_start {
        Timestamp::now()
    } else {
        schedule.next_after(Timestamp::now())
    };
    loop {
        clock.due(Some(due));
        let wait = due
            .duration_since(Timestamp::now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match lock.clone().try_lock_owned() {
            Err(_) => {
                // Only possible across a reload: the old generation's run is still going.
                metrics.record_skipped_run(&job.name);
                tracing::warn!(job = %job.name, "run skipped: the previous run of this job is still going");
            }
            Ok(_guard) => {
                notify(&[sd_notify::NotifyState::Status(&format!(
                    "running job {}",
                    job.name
                ))]);
                clock.due(None);
                clock.running(Some(Timestamp::now()));
                let started = std::time::Instant::now();
                match engine.run_job(&job, &state, &shutdown).await {
                    Ok(r) => tracing::info!(
                        job = %job.name,
                        result = r.summary.result,
                        copied = r.summary.images_copied,
                        bytes = r.summary.bytes_copied,
                        failed = r.summary.images_failed,
                        seconds = format_args!("{:.1}", started.elapsed().as_secs_f64()),
                        "run finished: {}", r.summary.result
                    ),
                    Err(e) => tracing::error!(job = %job.name, "run failed: {e}"),
                }
                clock.running(None);
                notify(&[sd_notify::NotifyState::Status(
                    "waiting for the next scheduled run",
                )]);
            }
        }
        // Due times that passed while the job ran are skipped, not run back to back.
        let now = Timestamp::now();
        due = schedule.next_after(due);
        while due <= now && !stop.is_cancelled() {
            metrics.record_skipped_run(&job.name);
            tracing::warn!(
                job = %job.name,
                "run due at {due} skipped: the previous run was still going"
            );
            due = schedule.next_after(due);
        }
    }
}

/// Tells systemd, when it is listening (NOTIFY_SOCKET set); a no-op elsewhere.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("systemd notify failed: {e}");
    }
}

/// Pings systemd's watchdog at half its interval when `WatchdogSec=` is set.
fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()? / 2;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }))
}
