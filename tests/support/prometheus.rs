//! A real Prometheus (Debian's `prometheus`) running the shipped scrape config and alert rules,
//! and child processes that end with the test.
#![allow(dead_code)]

use std::path::Path;

use super::daemon_proc::free_port;

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Prometheus {
    _child: KillOnDrop,
    /// `http://127.0.0.1:PORT/api/v1`
    pub api: String,
}

impl Prometheus {
    /// deploy/prometheus/prometheus.yml and alerts.yml copied into `dir`, scraping and
    /// evaluating every second, each `(from, to)` of `targets` replaced (the shipped addresses by
    /// the test's), then Prometheus started on them.
    pub fn start_with_shipped_config(dir: &Path, targets: &[(&str, &str)]) -> Prometheus {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
        let mut scrape = std::fs::read_to_string(root.join("prometheus.yml"))
            .unwrap()
            .replace(
                "scrape_interval: 30s",
                "scrape_interval: 1s\n  evaluation_interval: 1s",
            );
        for (from, to) in targets {
            assert!(scrape.contains(from), "{from} is not in the shipped config");
            scrape = scrape.replace(from, to);
        }
        std::fs::write(dir.join("prometheus.yml"), scrape).unwrap();
        std::fs::copy(root.join("alerts.yml"), dir.join("alerts.yml")).unwrap();
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; tests/run.sh installs it)");
        Prometheus {
            _child: KillOnDrop(child),
            api: format!("http://127.0.0.1:{port}/api/v1"),
        }
    }
}
