//! Commands, output formats and exit codes. The only place that uses `anyhow`: errors from the
//! library are typed; here they only need to reach the operator, with the right exit code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use glance_sync::config::{Config, DEFAULT_CONFIG_PATH};
use glance_sync::daemon;
use glance_sync::engine::{Engine, JobPlan, JobReport};
use glance_sync::metrics::Metrics;
use glance_sync::plan::{ActionKind, Ledger};
use glance_sync::progress::Progress;
use glance_sync::state::State;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "glance-sync",
    version,
    about = "Keeps OpenStack Glance images identical across clouds"
)]
struct Cli {
    /// The policy file.
    #[arg(long, global = true, env = "GLANCE_SYNC_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More log detail (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less log detail (-q warnings, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One pass over the jobs, then exit.
    Run {
        /// Only this job (repeatable). Default: every job.
        #[arg(long = "job")]
        jobs: Vec<String>,
        /// Also write the run's metrics to this file (atomically), for node_exporter's textfile
        /// collector.
        #[arg(long, value_name = "PATH")]
        metrics_textfile: Option<PathBuf>,
    },
    /// Run every job on its schedule until stopped; serve metrics over HTTP.
    Daemon,
    /// Show what `run` would do, per image and target. Writes nothing anywhere.
    Plan {
        #[arg(long = "job")]
        jobs: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Last run per job and the images currently failing, from the state database.
    Status {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Validate the config, authenticate against every cloud, print each image endpoint.
    Check,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// An error on its way to the operator, with the exit code it means.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

/// Configuration or usage: nothing was touched.
fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn failed(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: error.into(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = Progress::new(
        cli.log_format == LogFormat::Text
            && std::io::stderr().is_terminal()
            && matches!(cli.command, Command::Run { .. }),
    );
    init_logging(&cli, &progress);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("glance-sync: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let log_format = cli.log_format;
    match runtime.block_on(dispatch(cli, progress)) {
        Ok(code) => code,
        Err(f) => {
            match log_format {
                LogFormat::Json => tracing::error!("{:#}", f.error),
                LogFormat::Text => eprintln!("glance-sync: {:#}", f.error),
            }
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(cli: &Cli, progress: &Progress) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let ours = match (cli.verbose as i8) - (cli.quiet as i8) {
            i8::MIN..=-2 => "error",
            -1 => "warn",
            0 => "info",
            1 => "debug",
            _ => "trace",
        };
        // Libraries stay at warn: their debug output is noise to an operator.
        EnvFilter::new(format!("warn,glance_sync={ours},glance_sync_cli={ours}"))
    });
    // Colours only for a person at a terminal: journald, files and pipes get plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress.log_writer())
        .with_ansi(colour)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn dispatch(cli: Cli, progress: Progress) -> Result<ExitCode, Failure> {
    let config = Config::load(&cli.config).map_err(usage)?;
    match cli.command {
        Command::Run {
            jobs,
            metrics_textfile,
        } => run(&config, &jobs, progress, metrics_textfile.as_deref()).await,
        Command::Daemon => daemon::run(config)
            .await
            .map(|()| ExitCode::SUCCESS)
            .map_err(usage),
        Command::Plan { jobs, format } => plan(&config, &jobs, format).await,
        Command::Status { format } => status(&config, format),
        Command::Check => check(&config).await,
    }
}

async fn run(
    config: &Config,
    jobs: &[String],
    progress: Progress,
    metrics_textfile: Option<&Path>,
) -> Result<ExitCode, Failure> {
    let jobs = config.select_jobs(jobs).map_err(usage)?;
    let metrics = Metrics::new();
    let engine = Engine::new(config, progress, metrics.clone()).map_err(usage)?;
    let state = State::open(&config.state_path).map_err(usage)?;
    // SIGTERM/SIGINT abort the transfers in flight and delete their half-made copies.
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::warn!("signal received: aborting transfers in flight and cleaning up");
            cancel.cancel();
        }
    });
    let mut all_ok = true;
    for job in &jobs {
        if cancel.is_cancelled() {
            all_ok = false;
            break;
        }
        let started = std::time::Instant::now();
        match engine.run_job(job, &state, &cancel).await {
            Ok(report) => {
                all_ok &= !report.failed();
                println!("{}", summary_line(&report, started.elapsed().as_secs_f64()));
            }
            Err(e) => {
                all_ok = false;
                tracing::error!(job = %job.name, "{e}");
                println!("job {}: failed: {e}", job.name);
            }
        }
    }
    if let Some(path) = metrics_textfile {
        metrics
            .write_textfile(path)
            .with_context(|| format!("cannot write metrics textfile {}", path.display()))
            .map_err(failed)?;
    }
    Ok(ExitCode::from(if all_ok { 0 } else { 1 }))
}

fn summary_line(r: &JobReport, seconds: f64) -> String {
    let count = |f: &dyn Fn(&ActionKind) -> bool| {
        r.results
            .iter()
            .filter(|x| x.error.is_none() && f(&x.action.kind))
            .count()
    };
    let in_sync = count(&|k| matches!(k, ActionKind::InSync { .. }));
    let updated = count(&|k| {
        matches!(
            k,
            ActionKind::UpdateMetadata { .. }
                | ActionKind::Deactivate { .. }
                | ActionKind::Reactivate { .. }
        )
    });
    let skipped = count(&|k| matches!(k, ActionKind::Skip { .. }));
    let pruned = count(&|k| matches!(k, ActionKind::Prune { .. }));
    let mut line = format!(
        "job {}: {} ({} copied, {:.1} MB; {updated} updated; {in_sync} in sync; {skipped} skipped; {pruned} pruned; {} failed) in {seconds:.1} s",
        r.job,
        r.summary.result,
        r.summary.images_copied,
        r.summary.bytes_copied as f64 / 1e6,
        r.summary.images_failed,
    );
    for u in &r.unreachable_targets {
        line.push_str(&format!("\n  target {} not reached: {}", u.target, u.error));
    }
    for x in r.results.iter().filter(|x| x.error.is_some()) {
        line.push_str(&format!(
            "\n  FAILED {} '{}' ({}) on {}: {}",
            x.action.describe(),
            x.action.name.as_deref().unwrap_or(""),
            x.action.source_id,
            x.action.target,
            x.error.as_deref().unwrap_or("")
        ));
    }
    line
}

async fn plan(config: &Config, jobs: &[String], format: Format) -> Result<ExitCode, Failure> {
    let jobs = config.select_jobs(jobs).map_err(usage)?;
    let engine = Engine::new(config, Progress::default(), Metrics::new()).map_err(usage)?;
    let state = State::open_read_only(&config.state_path).map_err(failed)?;
    let mut plans: Vec<JobPlan> = Vec::new();
    for job in &jobs {
        let ledger = match &state {
            Some(s) => s.ledger(&job.source).map_err(failed)?,
            None => Ledger::default(),
        };
        let (p, _) = engine.plan_job(job, &ledger).await.map_err(failed)?;
        plans.push(p);
    }
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&plans).expect("plans serialise")
        ),
        Format::Table => {
            for p in &plans {
                println!(
                    "job {} (source {}): {} actions, {} source images not selected by the filter",
                    p.plan.job,
                    p.plan.source,
                    p.plan.actions.len(),
                    p.plan.not_selected
                );
                let rows: Vec<[String; 5]> = p
                    .plan
                    .actions
                    .iter()
                    .map(|a| {
                        [
                            a.target.clone(),
                            a.name.clone().unwrap_or_default(),
                            a.source_id.clone(),
                            a.size.map(human_size).unwrap_or_default(),
                            a.describe(),
                        ]
                    })
                    .collect();
                print_table(&["TARGET", "IMAGE", "SOURCE ID", "SIZE", "ACTION"], &rows);
                for u in &p.unreachable_targets {
                    println!("  target {} not reached: {}", u.target, u.error);
                }
            }
        }
    }
    let unreachable = plans.iter().any(|p| !p.unreachable_targets.is_empty());
    Ok(ExitCode::from(if unreachable { 1 } else { 0 }))
}

fn status(config: &Config, format: Format) -> Result<ExitCode, Failure> {
    let Some(state) = State::open_read_only(&config.state_path).map_err(failed)? else {
        println!(
            "no state database at {} yet: no run has happened",
            config.state_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let runs = state.last_runs().map_err(failed)?;
    let failing = state.failing_images().map_err(failed)?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"runs": runs, "failing": failing}))
                .expect("status serialises")
        ),
        Format::Table => {
            let rows: Vec<[String; 6]> = runs
                .iter()
                .map(|r| {
                    [
                        r.job.clone(),
                        r.started_at.clone(),
                        r.finished_at.clone().unwrap_or_else(|| "-".into()),
                        r.result.clone(),
                        r.images_copied.to_string(),
                        human_size(r.bytes_copied),
                    ]
                })
                .collect();
            print_table(
                &["JOB", "STARTED", "FINISHED", "RESULT", "COPIED", "BYTES"],
                &rows,
            );
            if failing.is_empty() {
                println!("\nno image is failing");
            } else {
                println!("\nfailing images:");
                let rows: Vec<[String; 5]> = failing
                    .iter()
                    .map(|f| {
                        [
                            f.job.clone(),
                            f.name.clone().unwrap_or_default(),
                            f.target.clone(),
                            f.attempts.to_string(),
                            f.last_error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(&["JOB", "IMAGE", "TARGET", "ATTEMPTS", "LAST ERROR"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(config: &Config) -> Result<ExitCode, Failure> {
    let engine = Engine::new(config, Progress::default(), Metrics::new()).map_err(usage)?;
    let mut ok = true;
    for name in config.clouds.keys() {
        let client = engine.client(name);
        match client.endpoint().await {
            Ok(endpoint) => match client.probe().await {
                Ok(()) => println!("{name}: ok, image endpoint {endpoint}"),
                Err(e) => {
                    ok = false;
                    println!(
                        "{name}: FAILED: image endpoint {endpoint} does not answer as Glance v2: {e}"
                    );
                }
            },
            Err(e) => {
                ok = false;
                println!("{name}: FAILED: {e}");
            }
        }
    }
    check_state_dir(&config.state_path).map_err(usage)?;
    Ok(ExitCode::from(if ok { 0 } else { 1 }))
}

fn check_state_dir(path: &Path) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if dir.exists() {
        let meta =
            std::fs::metadata(dir).with_context(|| format!("state directory {}", dir.display()))?;
        anyhow::ensure!(
            meta.is_dir(),
            "state path parent {} is not a directory",
            dir.display()
        );
    }
    println!("state: {}", path.display());
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
