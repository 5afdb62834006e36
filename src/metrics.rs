//! Prometheus metrics: their names and labels (fixed: dashboards and alerts depend on them), how a
//! run's report turns into them, and the text exposition for `/metrics` and node_exporter textfiles.
//!
//! No image names or ids are ever labels: cardinality stays (jobs × targets × a few states).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::Job;
use crate::engine::JobReport;
use crate::plan::ActionKind;
use crate::transfer::{CopyMethod, FailureReason};

/// The `operation` label values of `glance_sync_api_requests_total`.
pub const API_OPERATIONS: &[&str] = &[
    "authenticate",
    "list",
    "show",
    "download",
    "upload",
    "create",
    "update",
    "delete",
    "deactivate",
    "reactivate",
    "import",
    "members",
    "other",
];

/// Replica states shown by `glance_sync_images`.
pub const IMAGE_STATES: &[&str] = &["in_sync", "pending", "failed", "skipped"];

pub struct Metrics {
    registry: Registry,
    runs: IntCounterVec,
    run_duration: HistogramVec,
    last_run: GaugeVec,
    last_success: GaugeVec,
    images: IntGaugeVec,
    images_copied: IntCounterVec,
    bytes_copied: IntCounterVec,
    transfer_failures: IntCounterVec,
    verification_failures: IntCounterVec,
    runs_skipped: IntCounterVec,
    unadopted: IntGaugeVec,
    job_interval: GaugeVec,
    bandwidth_limit: GaugeVec,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let m = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let m = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector");
        let build = IntGaugeVec::new(
            Opts::new(
                "glance_sync_build_info",
                "Version of the running glance-sync (always 1)",
            ),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build.clone())).expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let images = IntGaugeVec::new(
            Opts::new(
                "glance_sync_images",
                "Selected source images per target by replication state after the job's last run",
            ),
            &["sync_job", "target", "state"],
        )
        .expect("valid metric");
        r.register(Box::new(images.clone())).expect("unique metric");
        let unadopted = IntGaugeVec::new(
            Opts::new(
                "glance_sync_unadopted_images",
                "Images owned by glance-sync's project on the target that carry its provenance \
                 marker for the job's source cloud but are not in the state database's ledger \
                 (lost or restored state database; see glance-sync adopt)",
            ),
            &["sync_job", "target"],
        )
        .expect("valid metric");
        r.register(Box::new(unadopted.clone()))
            .expect("unique metric");
        Arc::new(Metrics {
            unadopted,
            runs: counter(
                &r,
                "glance_sync_runs_total",
                "Finished job runs by result",
                &["sync_job", "result"],
            ),
            run_duration: histogram(
                &r,
                "glance_sync_run_duration_seconds",
                "Wall time of job runs",
                &["sync_job"],
                vec![
                    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                    14400.0,
                ],
            ),
            bandwidth_limit: gauge(
                &r,
                "glance_sync_bandwidth_limit_bytes_per_second",
                "The source download limit in force (max_bandwidth), 0 for none; sync_job=\"\" is \
                 the whole process's",
                &["sync_job"],
            ),
            last_run: gauge(
                &r,
                "glance_sync_last_run_timestamp_seconds",
                "When the job's last run finished (Unix time)",
                &["sync_job"],
            ),
            last_success: gauge(
                &r,
                "glance_sync_last_success_timestamp_seconds",
                "When the job last finished with every image in sync (Unix time)",
                &["sync_job"],
            ),
            images,
            images_copied: counter(
                &r,
                "glance_sync_images_copied_total",
                "Images copied and verified",
                &["sync_job", "target"],
            ),
            bytes_copied: counter(
                &r,
                "glance_sync_bytes_copied_total",
                "Bytes of images copied and verified, by what moved them (stream: through \
                 glance-sync; glance-download: the target's Glance pulled them)",
                &["sync_job", "target", "method"],
            ),
            transfer_failures: counter(
                &r,
                "glance_sync_transfer_failures_total",
                "Failed image copies by reason",
                &["sync_job", "target", "reason"],
            ),
            verification_failures: counter(
                &r,
                "glance_sync_verification_failures_total",
                "Copies refused because bytes or digests did not match the source",
                &["sync_job", "target"],
            ),
            runs_skipped: counter(
                &r,
                "glance_sync_runs_skipped_total",
                "Scheduled runs skipped because the job's previous run was still going",
                &["sync_job"],
            ),
            job_interval: gauge(
                &r,
                "glance_sync_job_interval_seconds",
                "Nominal time between scheduled runs of the job (for staleness alerts)",
                &["sync_job"],
            ),
            api_requests: counter(
                &r,
                "glance_sync_api_requests_total",
                "Requests to OpenStack APIs",
                &["cloud", "operation", "status_class"],
            ),
            api_duration: histogram(
                &r,
                "glance_sync_api_request_duration_seconds",
                "Time to the response headers of OpenStack API requests",
                &["cloud", "operation"],
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            registry: r,
        })
    }

    /// One API request answered with `status` (None: no answer at all).
    pub fn observe_api(&self, cloud: &str, operation: &str, status: Option<u16>, took: Duration) {
        let class = match status {
            Some(s) => format!("{}xx", s / 100),
            None => "error".to_string(),
        };
        self.api_requests
            .with_label_values(&[cloud, operation, &class])
            .inc();
        self.api_duration
            .with_label_values(&[cloud, operation])
            .observe(took.as_secs_f64());
    }

    /// Declares a cloud's API request counters at zero, so that `increase(...) > 0` fires on the
    /// first error ever.
    pub fn register_cloud(&self, cloud: &str) {
        for operation in API_OPERATIONS {
            for class in ["2xx", "3xx", "4xx", "5xx", "error"] {
                self.api_requests
                    .with_label_values(&[cloud, operation, class]);
            }
        }
    }

    /// Declares a job's series at zero, so dashboards and `increase()` see them before the first
    /// event: every label value of a job's counters is known in advance.
    pub fn register_job(&self, job: &Job) {
        let targets = &job.targets;
        if let Some(schedule) = &job.schedule {
            self.job_interval
                .with_label_values(&[&job.name])
                .set(schedule.nominal_interval().as_secs_f64());
        }
        let job = job.name.as_str();
        self.runs_skipped.with_label_values(&[job]);
        for result in ["success", "partial", "failure"] {
            self.runs.with_label_values(&[job, result]);
        }
        for t in targets {
            self.images_copied.with_label_values(&[job, t]);
            for method in CopyMethod::ALL {
                self.bytes_copied
                    .with_label_values(&[job, t, method.as_str()]);
            }
            self.verification_failures.with_label_values(&[job, t]);
            self.unadopted.with_label_values(&[job, t]);
            for reason in FailureReason::ALL {
                self.transfer_failures
                    .with_label_values(&[job, t, reason.as_str()]);
            }
        }
    }

    /// The bandwidth limit now in force for `job` ("" for the process); `None` is no limit,
    /// `Some(0)` a job that no longer exists (its series goes).
    pub fn set_bandwidth_limit(&self, job: &str, rate: Option<u64>) {
        match rate {
            Some(0) => {
                let _ = self.bandwidth_limit.remove_label_values(&[job]);
            }
            rate => self
                .bandwidth_limit
                .with_label_values(&[job])
                .set(rate.unwrap_or(0) as f64),
        }
    }

    /// Images with our marker on `target` that the ledger does not know, as `job`'s run saw them.
    pub fn set_unadopted(&self, job: &str, target: &str, images: u64) {
        self.unadopted
            .with_label_values(&[job, target])
            .set(images as i64);
    }

    pub fn record_skipped_run(&self, job: &str) {
        self.runs_skipped.with_label_values(&[job]).inc();
    }

    /// A finished run. `counts` are the replica states per target from the state database.
    pub fn record_run(&self, report: &JobReport, took: Duration, counts: &[(String, String, u64)]) {
        let job = report.job.as_str();
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        self.runs
            .with_label_values(&[job, report.summary.result])
            .inc();
        self.run_duration
            .with_label_values(&[job])
            .observe(took.as_secs_f64());
        self.last_run.with_label_values(&[job]).set(now);
        if report.summary.result == "success" {
            self.last_success.with_label_values(&[job]).set(now);
        }
        for r in &report.results {
            let target = r.action.target.as_str();
            if !matches!(r.action.kind, ActionKind::Copy { .. }) {
                continue;
            }
            match r.failure {
                None => {
                    self.images_copied.with_label_values(&[job, target]).inc();
                    let method = r.method.unwrap_or(CopyMethod::Stream).as_str();
                    self.bytes_copied
                        .with_label_values(&[job, target, method])
                        .inc_by(r.action.size.unwrap_or(0));
                }
                Some(reason) => {
                    self.transfer_failures
                        .with_label_values(&[job, target, reason.as_str()])
                        .inc();
                    if matches!(
                        reason,
                        FailureReason::SourceCorrupt | FailureReason::Verification
                    ) {
                        self.verification_failures
                            .with_label_values(&[job, target])
                            .inc();
                    }
                }
            }
        }
        self.set_image_counts(job, counts);
    }

    /// A run that stopped before it could plan (source unreachable, state database error).
    pub fn record_failed_run(&self, job: &str, took: Duration) {
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        self.runs.with_label_values(&[job, "failure"]).inc();
        self.run_duration
            .with_label_values(&[job])
            .observe(took.as_secs_f64());
        self.last_run.with_label_values(&[job]).set(now);
    }

    /// Sets `glance_sync_images` for a job from the state database's counts.
    pub fn set_image_counts(&self, job: &str, counts: &[(String, String, u64)]) {
        let targets: std::collections::BTreeSet<&str> =
            counts.iter().map(|(t, _, _)| t.as_str()).collect();
        for t in targets {
            for state in IMAGE_STATES {
                let n = counts
                    .iter()
                    .find(|(ct, cs, _)| ct == t && cs == state)
                    .map(|(_, _, n)| *n)
                    .unwrap_or(0);
                self.images
                    .with_label_values(&[job, t, state])
                    .set(n as i64);
            }
        }
    }

    /// What the job's earlier runs left in the state database, until this process has run it:
    /// so that a failed run, or a restart, does not hide when the job last succeeded (a pushed
    /// group replaces the previous push whole).
    pub fn seed_run_times(&self, job: &str, last_run: Option<f64>, last_success: Option<f64>) {
        if let Some(t) = last_run {
            self.last_run.with_label_values(&[job]).set(t);
        }
        if let Some(t) = last_success {
            self.last_success.with_label_values(&[job]).set(t);
        }
    }

    /// The exposition split by replication job: one text per `sync_job` value (`Some(name)`),
    /// and one (`None`) for the series of no job in particular (API requests per cloud, process,
    /// build, the process-wide bandwidth limit). What a Pushgateway gets, one group each.
    pub fn render_by_sync_job(&self) -> Vec<(Option<String>, String)> {
        use std::collections::BTreeMap;
        let mut groups: BTreeMap<Option<String>, Vec<prometheus::proto::MetricFamily>> =
            BTreeMap::new();
        for mut family in self.registry.gather() {
            let mut by_job: BTreeMap<Option<String>, Vec<prometheus::proto::Metric>> =
                BTreeMap::new();
            for metric in family.take_metric() {
                let job = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "sync_job")
                    .map(|l| l.value().to_string())
                    .filter(|j| !j.is_empty());
                by_job.entry(job).or_default().push(metric);
            }
            for (job, metrics) in by_job {
                let mut part = family.clone();
                part.set_metric(metrics);
                groups.entry(job).or_default().push(part);
            }
        }
        groups
            .into_iter()
            .map(|(job, families)| {
                let mut buf = Vec::new();
                TextEncoder::new()
                    .encode(&families, &mut buf)
                    .expect("text encoding never fails");
                (job, String::from_utf8(buf).expect("exposition is UTF-8"))
            })
            .collect()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }

    /// Writes the exposition for node_exporter's textfile collector: to a temporary file in the same
    /// directory, then renamed, so the collector never reads half a file.
    pub fn write_textfile(&self, path: &Path) -> std::io::Result<()> {
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replication_job_gets_its_own_part_of_the_exposition_and_the_rest_one_more() {
        let m = Metrics::new();
        m.set_unadopted("alpha", "dr", 2);
        m.record_skipped_run("beta");
        m.set_bandwidth_limit("", Some(1000));
        m.register_cloud("dr");
        let parts = m.render_by_sync_job();
        let keys: Vec<Option<&str>> = parts.iter().map(|(j, _)| j.as_deref()).collect();
        assert_eq!(keys, [None, Some("alpha"), Some("beta")]);
        let text = |k: Option<&str>| &parts.iter().find(|(j, _)| j.as_deref() == k).unwrap().1;
        assert!(text(Some("alpha")).contains("glance_sync_unadopted_images{sync_job=\"alpha\""));
        assert!(!text(Some("alpha")).contains("beta"));
        assert!(text(Some("beta")).contains("glance_sync_runs_skipped_total{sync_job=\"beta\"} 1"));
        let rest = text(None);
        assert!(rest.contains("glance_sync_build_info"), "{rest}");
        assert!(
            rest.contains("glance_sync_api_requests_total{cloud=\"dr\""),
            "{rest}"
        );
        assert!(
            rest.contains("sync_job=\"\""),
            "the process-wide limit: {rest}"
        );
        assert!(!rest.contains("alpha") && !rest.contains("beta"), "{rest}");
        // Every part is a valid exposition with its HELP and TYPE.
        assert!(text(Some("beta")).contains("# TYPE glance_sync_runs_skipped_total counter"));
    }
}
