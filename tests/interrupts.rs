//! Ctrl-C and SIGTERM in every phase of a one-shot command, against real Glance: an interrupted
//! `run` cleans up and exits 128 + the signal (130 for SIGINT, 143 for SIGTERM), at once when
//! there is nothing to clean; an interrupted `plan` prints no partial plan.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::real_pair::RealPair;
use support::sync_cli::{command, write_config};

/// A TCP server that accepts connections and never answers: a Glance that hangs.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

fn send(child: &tokio::process::Child, signal: libc::c_int) {
    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_signal_while_listing_ends_run_and_plan_at_once_with_128_plus_the_signal() {
    let src = RealGlance::start("int-list-src");
    Api::new(&src.url)
        .create_with_data(image_body("img", "raw", json!({})), random_bytes(1024, 1))
        .await;
    let (hung, _server) = black_hole().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &hung)],
        "prod",
        &["dr"],
        "",
    );
    for (args, signal, code) in [
        (["run", ""], libc::SIGINT, 130),
        (["run", ""], libc::SIGTERM, 143),
        (["plan", "--format=json"], libc::SIGINT, 130),
        (["plan", ""], libc::SIGTERM, 143),
    ] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let child = command(&cfg)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Listing the target hangs: wait until the command is surely in it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        send(&child, signal);
        let sent = Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .expect("exits after the signal")
            .unwrap();
        let took = sent.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(took < Duration::from_secs(2), "{args:?} took {took:?}");
        if args[0] == "plan" {
            assert_eq!(stdout, "", "no partial plan");
        }
    }
    // The interrupted runs are recorded as such.
    let db = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let interrupted: i64 = db
        .query_row(
            "SELECT count(*) FROM runs WHERE result = 'interrupted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(interrupted, 2);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn sigterm_during_a_copy_deletes_the_half_made_copy_then_exits_143() {
    let pair = RealPair::start("int-copy", "");
    let img = pair
        .source
        .create_streamed(image_body("big", "raw", json!({})), 768 << 20, 2)
        .await;
    let child = command(&pair.cfg)
        .arg("run")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    pair.wait_for_copy(img["id"].as_str().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&child, libc::SIGTERM);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("exits after cleaning up")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pair.target.list_all().await.is_empty(),
        "the half-made copy is deleted before exiting"
    );
}
