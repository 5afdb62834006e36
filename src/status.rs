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

/// What the daemon's job loops post: each job's next due time, by the loop of the newest config
/// generation only (a replaced generation's loop may still be finishing its run), and whether a
/// run of it is going, by whichever loop runs it.
#[derive(Debug, Default)]
pub struct JobClocks {
    due: HashMap<String, (u64, Option<Timestamp>)>,
    running: HashMap<String, Timestamp>,
}

impl JobClocks {
    /// `None` while the job runs: it is due again only once the run ended.
    pub fn set_due(&mut self, job: &str, generation: u64, due: Option<Timestamp>) {
        match self.due.get(job) {
            Some((newer, _)) if *newer > generation => {}
            _ => {
                self.due.insert(job.to_string(), (generation, due));
            }
        }
    }

    pub fn set_running(&mut self, job: &str, since: Option<Timestamp>) {
        match since {
            Some(t) => self.running.insert(job.to_string(), t),
            None => self.running.remove(job),
        };
    }

    pub fn snapshot(&self) -> HashMap<String, JobClock> {
        let mut clocks: HashMap<String, JobClock> = HashMap::new();
        for (job, (_, due)) in &self.due {
            clocks.entry(job.clone()).or_default().next_due = *due;
        }
        for (job, since) in &self.running {
            clocks.entry(job.clone()).or_default().running_since = Some(*since);
        }
        clocks
    }
}

/// The daemon's live view: its job clocks and transfers in flight.
#[derive(Default)]
pub struct Live {
    pub clocks: HashMap<String, JobClock>,
    pub in_flight: Vec<InFlight>,
}

fn zero_counts(job: &crate::config::Job) -> Vec<TargetCounts> {
    job.targets
        .iter()
        .map(|t| TargetCounts {
            target: t.clone(),
            ..TargetCounts::default()
        })
        .collect()
}

fn job_status(job: &crate::config::Job, targets: Vec<TargetCounts>, live: &Live) -> JobStatus {
    let clock = live.clocks.get(&job.name).copied().unwrap_or_default();
    JobStatus {
        name: job.name.clone(),
        source: job.source.clone(),
        schedule: job.schedule.as_ref().map(|s| s.describe()),
        next_due: clock.next_due.map(|t| t.to_string()),
        running_since: clock.running_since.map(|t| t.to_string()),
        targets: if targets.is_empty() {
            zero_counts(job)
        } else {
            targets
        },
    }
}

/// The report for `config`'s jobs from `state` (`None`: no database yet, no run has happened),
/// with the daemon's `live` view when there is one.
pub fn gather(config: &Config, state: Option<&State>, live: &Live) -> Result<Report, StateError> {
    let Some(state) = state else {
        return Ok(Report {
            generated_at: Timestamp::now().to_string(),
            jobs: config
                .jobs
                .iter()
                .map(|j| job_status(j, vec![], live))
                .collect(),
            runs: vec![],
            failing: vec![],
            unadopted: vec![],
            copies_with_new_ids: vec![],
            in_flight: live.in_flight.clone(),
        });
    };
    let mut jobs = Vec::with_capacity(config.jobs.len());
    for job in &config.jobs {
        let mut targets = zero_counts(job);
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
        jobs.push(job_status(job, targets, live));
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
        // Failures of jobs or targets the config no longer has are history: nothing retries them.
        failing: state
            .failing_images()?
            .into_iter()
            .filter(|f| {
                config
                    .jobs
                    .iter()
                    .any(|j| j.name == f.job && j.targets.contains(&f.target))
            })
            .collect(),
        unadopted: state.unadopted()?,
        copies_with_new_ids,
        in_flight: live.in_flight.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_generations_loop_never_overwrites_the_newer_ones_due_time() {
        let mut clocks = JobClocks::default();
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        clocks.set_due("j", 2, Some(t(200)));
        // The old loop, finishing a run it started before the reload:
        clocks.set_due("j", 1, Some(t(100)));
        clocks.set_running("j", Some(t(50)));
        let shown = clocks.snapshot()["j"];
        assert_eq!(shown.next_due, Some(t(200)));
        assert_eq!(
            shown.running_since,
            Some(t(50)),
            "the old loop's run is still shown"
        );
        clocks.set_running("j", None);
        assert_eq!(clocks.snapshot()["j"].running_since, None);
    }
}
