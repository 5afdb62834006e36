//! The setup most real-Glance tests start from: a source and a target real Glance, and a config
//! with one job `job` from cloud `prod` to cloud `dr`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::glance_api::Api;
use super::harness::RealGlance;
use super::scenario::copies_by_source;
use super::sync_cli::write_config;

pub struct RealPair {
    pub src: RealGlance,
    pub dst: RealGlance,
    /// Clients for the tests' own requests (admin of project `admin`, as fakeauth makes them).
    pub source: Api,
    pub target: Api,
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
}

impl RealPair {
    /// Instances named `NAME-src` and `NAME-dst`; `job_lines` go into the job's section.
    pub fn start(name: &str, job_lines: &str) -> RealPair {
        let src = RealGlance::start(&format!("{name}-src"));
        let dst = RealGlance::start(&format!("{name}-dst"));
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(
            dir.path(),
            &[("prod", &src.url), ("dr", &dst.url)],
            "prod",
            &["dr"],
            job_lines,
        );
        RealPair {
            source: Api::new(&src.url),
            target: Api::new(&dst.url),
            src,
            dst,
            dir,
            cfg,
        }
    }

    /// Waits (at most a minute) until the target holds a copy of source image `source_id`,
    /// finished or not: a copy is under way.
    pub async fn wait_for_copy(&self, source_id: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !copies_by_source(&self.target).await.contains_key(source_id) {
            assert!(
                Instant::now() < deadline,
                "no copy of {source_id} appeared on the target"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
