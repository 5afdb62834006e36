//! The command-line contract operators and scripts rely on: exit codes, where the config comes
//! from, refusal of a second run on the same state, log formats.

mod support;

use std::time::Duration;

use support::fake_glance::{FakeGlance, Faults, ImageData, ImageSpec};
use support::sync_cli::{glance_sync, write_config};

/// A source cloud "prod" with one 4 KiB image named `name`, an empty target "dr", and the config
/// of a job between them. The fakes and the directory live as long as the returned values.
async fn one_image_to_copy(
    name: &str,
) -> (
    FakeGlance,
    FakeGlance,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new(
        name,
        ImageData::Bytes(vec![7u8; 4096].into()),
    ));
    let target = FakeGlance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        "",
    );
    (source, target, dir, cfg)
}

#[tokio::test]
async fn invalid_config_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("a", "http://127.0.0.1:1"), ("b", "http://127.0.0.1:2")],
        "a",
        &["b"],
        "[transfer]\nmax_paralel_images = 3\n",
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains(&cfg.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("max_paralel_images"), "{}", run.stderr);
    assert!(run.stderr.contains("line 18"), "{}", run.stderr);
    assert!(!dir.path().join("state.db").exists(), "nothing touched");
}

#[tokio::test]
async fn a_bad_replication_policy_value_exits_2_naming_file_line_and_key() {
    for (lines, line, key) in [
        (
            "[jobs.metadata]\nvisibility = \"everyone\"\n",
            18,
            "metadata.visibility",
        ),
        (
            "[jobs.metadata]\nignore_properties = [\"ok\", \"[bad\"]\n",
            18,
            "metadata.ignore_properties[1]",
        ),
        (
            "[jobs.metadata]\nproject_map = { src = 42 }\n",
            18,
            "metadata.project_map.src",
        ),
        (
            "[jobs.filter]\nmax_size = \"huge\"\n",
            18,
            "filter.max_size",
        ),
        ("preserve_ids = \"always\"\n", 17, "preserve_ids"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(
            dir.path(),
            &[("a", "http://127.0.0.1:1"), ("b", "http://127.0.0.1:2")],
            "a",
            &["b"],
            lines,
        );
        let run = glance_sync(&cfg, &["plan"]).await;
        run.assert_code(2);
        let expected = format!("{}: line {line}, key '{key}'", cfg.display());
        assert!(run.stderr.contains(&expected), "{lines}: {}", run.stderr);
    }
}

#[tokio::test]
async fn job_naming_an_unknown_cloud_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("a", "http://127.0.0.1:1")],
        "a",
        &["nowhere"],
        "",
    );
    let run = glance_sync(&cfg, &["plan"]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("target 'nowhere' is not a cloud"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("{}: line 11, key 'targets[0]'", cfg.display())),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("state.db").exists(), "nothing touched");
}

#[tokio::test]
async fn bad_cron_expression_and_same_source_and_target_exit_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("a", "http://127.0.0.1:1"), ("b", "http://127.0.0.1:2")],
        "a",
        &["b"],
        "schedule = \"*/5 * * * * *\"\n",
    );
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("line 17, key 'schedule'") && run.stderr.contains("6 fields"),
        "{}",
        run.stderr
    );

    let cfg = write_config(dir.path(), &[("a", "http://127.0.0.1:1")], "a", &["a"], "");
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("key 'targets[0]'") && run.stderr.contains("both source and target"),
        "{}",
        run.stderr
    );
    let cfg = write_config(dir.path(), &[("a", "http://127.0.0.1:1")], "a", &[], "");
    let run = glance_sync(&cfg, &["run"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("targets is empty"), "{}", run.stderr);
}

#[tokio::test]
async fn invalid_toml_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        "[state]\npath = \"/tmp/x.db\"\n\n[clouds.a\nauth_type = \"none\"\n",
    )
    .unwrap();
    let run = glance_sync(&cfg, &["check"]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains(&cfg.display().to_string()) && run.stderr.contains("line 4"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn unknown_job_on_the_command_line_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("a", "http://127.0.0.1:1"), ("b", "http://127.0.0.1:2")],
        "a",
        &["b"],
        "",
    );
    let run = glance_sync(&cfg, &["run", "--job", "nope"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("no job named 'nope'"), "{}", run.stderr);
}

#[tokio::test]
async fn config_path_comes_from_the_environment_when_not_given() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_glance-sync"))
        .arg("status")
        .env("GLANCE_SYNC_CONFIG", "/nonexistent/glance-sync.toml")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/glance-sync.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_on_the_same_state_is_refused_while_the_first_runs() {
    let source = FakeGlance::start().await;
    source.add_image(ImageSpec::new("slow", ImageData::synthetic(8 << 20, 1)));
    // The download stops after 1 MiB but the connection stays open: the first run sits mid-copy.
    source.set_faults(Faults {
        stall_at: Some(1 << 20),
        ..Faults::default()
    });
    let target = FakeGlance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        "[transfer]\nstall_timeout = \"30s\"\n",
    );
    let mut first = tokio::process::Command::new(env!("CARGO_BIN_EXE_glance-sync"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !source.request_log().iter().any(|r| r.contains("/file")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first run never started copying"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let second = glance_sync(&cfg, &["run"]).await;
    second.assert_code(2);
    assert!(
        second.stderr.contains("in use by another glance-sync run"),
        "{}",
        second.stderr
    );
    // Reading is still allowed meanwhile.
    glance_sync(&cfg, &["status"]).await.assert_code(0);
    first.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_the_result_fields() {
    let (_source, _target, _dir, cfg) = one_image_to_copy("tiny").await;
    let run = glance_sync(&cfg, &["--log-format", "json", "run"]).await;
    run.assert_code(0);
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let copied = lines
        .iter()
        .find(|l| l["result"] == "copied")
        .unwrap_or_else(|| panic!("no copied line in {lines:?}"));
    assert_eq!(copied["image"], "tiny");
    assert_eq!(copied["target"], "dr");
    assert_eq!(copied["size"], 4096);
    assert!(copied.get("mb_per_s").is_some() && copied.get("seconds").is_some());
}

#[tokio::test]
async fn v_logs_every_api_request_and_vv_every_plan_decision() {
    let (_source, _target, _dir, cfg) = one_image_to_copy("ubuntu").await;
    let request = "GET /v2/images?visibility=all&os_hidden=false&limit=1000 -> 200 in";
    let decision = "plan: 'ubuntu' on dr: copy";

    let quiet = glance_sync(&cfg, &["plan"]).await;
    quiet.assert_code(0);
    assert!(!quiet.stderr.contains(request), "{}", quiet.stderr);

    let v = glance_sync(&cfg, &["plan", "-v"]).await;
    v.assert_code(0);
    assert!(v.stderr.contains(request), "{}", v.stderr);
    assert!(v.stderr.contains("cloud=dr"), "{}", v.stderr);
    assert!(!v.stderr.contains('\x1b'), "no colour codes off a terminal");
    assert!(!v.stderr.contains(decision), "{}", v.stderr);

    let vv = glance_sync(&cfg, &["plan", "-vv"]).await;
    vv.assert_code(0);
    assert!(vv.stderr.contains(request), "{}", vv.stderr);
    assert!(vv.stderr.contains(decision), "{}", vv.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_run_draws_a_progress_bar_per_transfer_and_keeps_the_log_lines() {
    let source = FakeGlance::start().await;
    // The first frame is drawn at once; a 64 MiB copy in a test build takes a few more.
    source.add_image(ImageSpec::new(
        "bar-image",
        ImageData::synthetic(64 << 20, 5),
    ));
    let target = FakeGlance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &source.url), ("dr", &target.url)],
        "prod",
        &["dr"],
        "",
    );
    // util-linux `script` gives the command a pseudo-terminal and copies what it draws.
    let command = format!(
        "{} --config {} run",
        env!("CARGO_BIN_EXE_glance-sync"),
        cfg.display()
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("RUST_LOG")
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run script(1) from util-linux");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("bar-image") && screen.contains("/64.00 MiB") && screen.contains("eta"),
        "no progress bar drawn:\n{screen}"
    );
    assert!(screen.contains("copied 'bar-image' to dr"), "{screen}");
    assert_eq!(target.images().len(), 1);
}

#[tokio::test]
async fn completions_and_the_man_page_come_from_the_cli_itself_without_a_config() {
    let nowhere = std::path::Path::new("/nonexistent/glance-sync.toml");
    let subcommands = [
        "run",
        "daemon",
        "plan",
        "status",
        "check",
        "adopt",
        "completions",
        "man",
    ];
    let bash = glance_sync(nowhere, &["completions", "bash"]).await;
    bash.assert_code(0);
    for sub in subcommands {
        assert!(bash.stdout.contains(sub), "bash completion lacks {sub}");
    }
    // The script loads in a real bash and registers itself for the command.
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), &bash.stdout).unwrap();
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p glance-sync",
            script.path().display()
        ))
        .output()
        .unwrap();
    assert!(
        loaded.status.success() && String::from_utf8_lossy(&loaded.stdout).contains("glance-sync"),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = glance_sync(nowhere, &["completions", shell]).await;
        out.assert_code(0);
        assert!(out.stdout.contains("adopt"), "{shell}: {}", out.stdout);
    }

    let man = glance_sync(nowhere, &["man"]).await;
    man.assert_code(0);
    assert!(man.stdout.contains(".TH glance-sync 1"), "{}", man.stdout);
    // Rendered by groff (what `man` uses) without a warning, naming every subcommand.
    let page = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(page.path(), &man.stdout).unwrap();
    let rendered = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww"])
        .arg(page.path())
        .output()
        .expect("groff (Debian package groff-base, which man-db needs)");
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(
        rendered.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    for sub in subcommands {
        assert!(text.contains(sub), "the man page lacks {sub}:\n{text}");
    }
}
