//! A `glance-sync daemon` child process for tests: start, scrape, signal, wait.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub struct DaemonProc {
    pub child: tokio::process::Child,
    pub metrics_url: String,
    stderr_path: std::path::PathBuf,
}

impl DaemonProc {
    /// Starts the daemon (stderr to `<config dir>/daemon.log`) and waits until /readyz says ready.
    pub async fn start(config: &Path, metrics_port: u16) -> DaemonProc {
        let stderr_path = config.with_file_name("daemon.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        let child = tokio::process::Command::new(super::sync_cli::bin())
            .arg("--config")
            .arg(config)
            .arg("daemon")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn glance-sync daemon");
        let d = DaemonProc {
            child,
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
            stderr_path,
        };
        d.wait_for(Duration::from_secs(30), "/readyz to answer 200", || async {
            reqwest::get(format!("{}/readyz", d.metrics_url))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.metrics_url))
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .unwrap()
    }

    /// The value of the sample `name{labels}` (labels given as `k="v"` pairs, all must match).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Polls `check` every 100 ms until it holds; panics with the daemon's log after `limit`.
    pub async fn wait_for<F, Fut>(&self, limit: Duration, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !check().await {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; daemon log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.id().expect("daemon still running") as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Waits for the process to exit; returns its exit code and how long that took.
    pub async fn wait_exit(&mut self, limit: Duration) -> (i32, Duration) {
        let start = Instant::now();
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("daemon did not exit within {limit:?}; log:\n{}", self.log())
            })
            .unwrap();
        (status.code().unwrap_or(-1), start.elapsed())
    }
}

/// The value of sample `name` whose labels include all of `labels`, from a text exposition.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_part) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())?
        })
        .next()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
