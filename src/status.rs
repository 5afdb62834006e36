//! What an operator sees of the jobs: last runs, per-target counts, failing images, copies under
//! new ids, and (in the daemon) schedules and transfers in flight. One report for
//! `status --format json`, `GET /api/v1/status` and the status page, so they never disagree.

use std::collections::HashMap;

use jiff::Timestamp;
use serde::Serialize;

use crate::config::{Config, PreserveIds};
use crate::progress::InFlight;
use crate::state::{CopyUnderOtherId, FailingImage, RunRecord, State, StateError, UnadoptedCount};

/// How many runs `GET /jobs/NAME` shows.
pub const JOB_HISTORY: u32 = 50;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When this report was made (UTC).
    pub generated_at: String,
    /// Every job of the config, in its order.
    pub jobs: Vec<JobStatus>,
    /// The newest run of each job that ever ran (also of jobs no longer in the config).
    pub runs: Vec<RunRecord>,
    pub failing: Vec<FailingImage>,
    pub unadopted: Vec<UnadoptedCount>,
    /// Copies whose id differs from their source image's where `preserve_ids` asks for the same.
    pub copies_with_new_ids: Vec<CopyUnderOtherId>,
    /// Transfers in flight in this process: always empty for `status` (the daemon's are in
    /// `/api/v1/status`).
    pub in_flight: Vec<InFlight>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub name: String,
    pub source: String,
    /// e.g. `every 30m`, `cron "0 3 * * *" (UTC)`; `None` for a job run only by `run`.
    pub schedule: Option<String>,
    /// When the daemon runs it next; only the daemon knows (`None` from `status`).
    pub next_due: Option<String>,
    /// When its run in the daemon started, while it runs.
    pub running_since: Option<String>,
    pub targets: Vec<TargetCounts>,
}

/// Selected source images per replication state on one target, after the job's last run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetCounts {
    pub target: String,
    pub in_sync: u64,
    pub pending: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// What only the daemon knows about a job.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobClock {
    pub next_due: Option<Timestamp>,
    pub running_since: Option<Timestamp>,
}

/// The daemon's live view: its job clocks and transfers in flight.
#[derive(Default)]
pub struct Live {
    pub clocks: HashMap<String, JobClock>,
    pub in_flight: Vec<InFlight>,
}

/// The report for `config`'s jobs from `state`, with the daemon's `live` view when there is one.
pub fn gather(config: &Config, state: &State, live: &Live) -> Result<Report, StateError> {
    let mut jobs = Vec::with_capacity(config.jobs.len());
    for job in &config.jobs {
        let mut targets: Vec<TargetCounts> = job
            .targets
            .iter()
            .map(|t| TargetCounts {
                target: t.clone(),
                ..TargetCounts::default()
            })
            .collect();
        for (target, replica_state, n) in state.replica_counts(&job.name)? {
            // Counts of targets no longer in the job are history, not status.
            let Some(t) = targets.iter_mut().find(|t| t.target == target) else {
                continue;
            };
            match replica_state.as_str() {
                "in_sync" => t.in_sync += n,
                "pending" => t.pending += n,
                "failed" => t.failed += n,
                "skipped" => t.skipped += n,
                _ => {}
            }
        }
        let clock = live.clocks.get(&job.name).copied().unwrap_or_default();
        jobs.push(JobStatus {
            name: job.name.clone(),
            source: job.source.clone(),
            schedule: job.schedule.as_ref().map(|s| s.describe()),
            next_due: clock.next_due.map(|t| t.to_string()),
            running_since: clock.running_since.map(|t| t.to_string()),
            targets,
        });
    }
    // Where ids are to be preserved, a copy under another id is worth knowing: templates naming
    // the source's id will not find it.
    let copies_with_new_ids = state
        .copies_under_other_ids()?
        .into_iter()
        .filter(|c| {
            config.jobs.iter().any(|j| {
                j.name == c.job
                    && j.targets.contains(&c.target)
                    && j.policy(&c.target).preserve_ids != PreserveIds::Off
            })
        })
        .collect();
    Ok(Report {
        generated_at: Timestamp::now().to_string(),
        jobs,
        runs: state.last_runs()?,
        failing: state.failing_images()?,
        unadopted: state.unadopted()?,
        copies_with_new_ids,
        in_flight: live.in_flight.clone(),
    })
}
