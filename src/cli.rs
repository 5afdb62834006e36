//! Commands, output formats and exit codes. The only place that uses `anyhow`: errors from the
//! library are typed; here they only need to reach the operator, with the right exit code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use glance_sync::config::{Config, DEFAULT_CONFIG_PATH};
use glance_sync::daemon;
use glance_sync::engine::{Engine, JobPlan, JobReport};
use glance_sync::metrics::Metrics;
use glance_sync::plan::ActionKind;
use glance_sync::progress::Progress;
use glance_sync::pushgateway;
use glance_sync::state::State;
use glance_sync::terminal::{self, escape, human_size, print_table, table_name};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
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
        /// After the run, push its metrics to this Prometheus Pushgateway (grouping key
        /// job="glance-sync", instance=<hostname>; replaces [metrics] pushgateway).
        #[arg(long, value_name = "URL")]
        pushgateway: Option<String>,
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
    Check {
        /// `json`: per cloud, what its configuration resolved to (auth URL and type, user,
        /// project, domains, region, interface) and the image endpoint and project it reached.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List images on the targets that carry glance-sync's marker but are missing from the state
    /// database (lost or restored); with --yes, record them as the job's copies.
    Adopt {
        #[arg(long = "job")]
        jobs: Vec<String>,
        /// Take over instead the copies the state database records for job OLD (a job that was
        /// renamed), from the same source cloud; needs exactly one --job.
        #[arg(long, value_name = "OLD")]
        from_job: Option<String>,
        /// Record the adoptable images in the ledger. Without it nothing changes.
        #[arg(long)]
        yes: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `glance-sync man | man -l -`.
    Man,
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
    // Generated from the definitions above, so they never drift from the CLI; no config needed.
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "glance-sync",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("glance-sync: cannot write the man page: {e}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
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
            let message = error_chain(&f.error);
            match log_format {
                LogFormat::Json => tracing::error!("{message}"),
                LogFormat::Text => eprintln!("glance-sync: {}", terminal::escape_lines(&message)),
            }
            ExitCode::from(f.code)
        }
    }
}

/// An error and its causes on one line, each cause only if the text so far does not already say
/// it (our errors quote their cause; anyhow's `{:#}` would repeat it).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
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
        // Log lines quote image names: escaped for a terminal, exact in JSON.
        LogFormat::Text => builder.fmt_fields(terminal::EscapedFields).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn dispatch(cli: Cli, progress: Progress) -> Result<ExitCode, Failure> {
    let config = Config::load(&cli.config).map_err(usage)?;
    match cli.command {
        Command::Run {
            jobs,
            metrics_textfile,
            pushgateway,
        } => {
            let pushgateway = match pushgateway {
                Some(text) => Some(
                    glance_sync::config::pushgateway_url(&text, "--pushgateway")
                        .map_err(|e| usage(anyhow::anyhow!(e)))?,
                ),
                None => config.metrics.pushgateway.clone(),
            };
            let outputs = MetricsOutputs {
                textfile: metrics_textfile.as_deref(),
                pushgateway: pushgateway.as_ref(),
            };
            run(&config, &jobs, progress, outputs).await
        }
        Command::Daemon => daemon::run(config)
            .await
            .map(|()| ExitCode::SUCCESS)
            .map_err(usage),
        Command::Plan { jobs, format } => plan(&config, &jobs, format).await,
        Command::Status { format } => status(&config, format),
        Command::Check { format } => check(&config, format).await,
        Command::Adopt {
            jobs,
            from_job: Some(old),
            yes,
        } => adopt_renamed(&config, &jobs, &old, yes),
        Command::Adopt {
            jobs,
            from_job: None,
            yes,
        } => adopt(&config, &jobs, yes).await,
        Command::Completions { .. } | Command::Man => unreachable!("answered before any config"),
    }
}

/// SIGINT and SIGTERM for one-shot commands. The first one cancels: no new work starts,
/// transfers abort and clean up, and the command exits with 128 + the signal's number. A second
/// one exits at once (the ledger lets the next run clean up what is left).
struct Interrupt {
    cancel: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Interrupt {
    fn watch() -> Result<Interrupt, Failure> {
        let cancel = CancellationToken::new();
        let received = Arc::new(AtomicI32::new(0));
        let mut term = signal(SignalKind::terminate())
            .context("cannot install a SIGTERM handler")
            .map_err(failed)?;
        let mut int = signal(SignalKind::interrupt())
            .context("cannot install a SIGINT handler")
            .map_err(failed)?;
        tokio::spawn({
            let cancel = cancel.clone();
            let received = received.clone();
            async move {
                loop {
                    let signo = tokio::select! {
                        _ = term.recv() => libc::SIGTERM,
                        _ = int.recv() => libc::SIGINT,
                    };
                    if received.swap(signo, Ordering::SeqCst) != 0 {
                        tracing::warn!(
                            "second signal: exiting now; the next run deletes what this one \
                             left half-made (the ids are in the state database)"
                        );
                        std::process::exit(128 + signo);
                    }
                    tracing::warn!(
                        "signal received: stopping, aborting transfers in flight and cleaning up \
                         (a second signal exits at once)"
                    );
                    cancel.cancel();
                }
            }
        });
        Ok(Interrupt {
            cancel,
            signal: received,
        })
    }

    /// 128 + the signal's number (130 for SIGINT, 143 for SIGTERM) once one was received.
    fn exit_code(&self) -> Option<ExitCode> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            signo => Some(ExitCode::from((128 + signo) as u8)),
        }
    }
}

/// Where a one-shot run's metrics go besides the log.
struct MetricsOutputs<'a> {
    textfile: Option<&'a Path>,
    pushgateway: Option<&'a url::Url>,
}

async fn run(
    config: &Config,
    selected: &[String],
    progress: Progress,
    outputs: MetricsOutputs<'_>,
) -> Result<ExitCode, Failure> {
    let jobs = config.select_jobs(selected).map_err(usage)?;
    let metrics = Metrics::new();
    let engine = Engine::new(config, progress, metrics.clone()).map_err(usage)?;
    let interrupt = Interrupt::watch()?;
    let cancel = interrupt.cancel.clone();
    let state = State::open(&config.state_path).map_err(usage)?;
    glance_sync::engine::warn_jobs_not_in_config(config, &state).map_err(failed)?;
    glance_sync::engine::seed_metrics(config, &state, &metrics).map_err(failed)?;
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
                println!("job {}: failed: {}", job.name, escape(&e.to_string()));
            }
        }
    }
    // Both outputs are attempted whatever became of the other. Alerts on these metrics go
    // quiet when they are not delivered: a successful run says so by its exit code; a failed
    // run's own exit code is never hidden behind this one.
    if let Some(path) = outputs.textfile
        && let Err(e) = metrics.write_textfile(path)
    {
        tracing::error!(
            "cannot write the metrics textfile {}: {e}; node_exporter keeps showing the \
             previous run's metrics",
            path.display()
        );
        all_ok = false;
    }
    if let Some(url) = outputs.pushgateway {
        let selected: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        // The jobs this run did not run keep the groups their last run pushed.
        let groups: Vec<_> = metrics
            .render_by_sync_job()
            .into_iter()
            .filter(|(job, _)| job.as_deref().is_none_or(|j| selected.contains(&j)))
            .collect();
        let instance = pushgateway::hostname();
        match pushgateway::push(url, &instance, groups).await {
            Ok(n) => tracing::info!(
                "metrics pushed to the Pushgateway {} (job=\"{}\", instance=\"{instance}\"; \
                 {n} groups: one per replication job, one for the rest)",
                pushgateway::redacted(url),
                pushgateway::GROUP_JOB
            ),
            Err(e) => {
                tracing::error!("{e}");
                all_ok = false;
            }
        }
    }
    if let Some(code) = interrupt.exit_code() {
        return Ok(code);
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
    let in_sync = count(&|k| matches!(k, ActionKind::InSync { .. })) as u64 + r.bookkept.in_sync;
    let updated = count(&|k| {
        matches!(
            k,
            ActionKind::UpdateMetadata { .. }
                | ActionKind::Relink { .. }
                | ActionKind::Deactivate { .. }
                | ActionKind::Reactivate { .. }
        )
    });
    let skipped = count(&|k| matches!(k, ActionKind::Skip { .. } | ActionKind::InFlight { .. }))
        as u64
        + r.bookkept.skipped;
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
        line.push_str(&format!(
            "\n  target {} not reached: {}",
            u.target,
            escape(&u.error)
        ));
    }
    for x in r.results.iter().filter(|x| x.error.is_some()) {
        let what = x.action.describe();
        let error = x.error.as_deref().unwrap_or("");
        // A refusal's description is its reason: said once.
        let said = if what.contains(error) {
            String::new()
        } else {
            format!(": {}", escape(error))
        };
        line.push_str(&format!(
            "\n  FAILED {} '{}' ({}) on {}{said}",
            escape(&what),
            escape(x.action.name.as_deref().unwrap_or("")),
            x.action.source_id,
            x.action.target,
        ));
    }
    line
}

async fn plan(config: &Config, jobs: &[String], format: Format) -> Result<ExitCode, Failure> {
    let jobs = config.select_jobs(jobs).map_err(usage)?;
    let interrupt = Interrupt::watch()?;
    let engine = Engine::new(config, Progress::default(), Metrics::new()).map_err(usage)?;
    let state = State::open_read_only(&config.state_path).map_err(failed)?;
    if let Some(state) = &state {
        glance_sync::engine::warn_jobs_not_in_config(config, state).map_err(failed)?;
    }
    let planning = async {
        let mut plans: Vec<JobPlan> = Vec::new();
        for job in &jobs {
            let (p, _) = engine
                .plan_job(job, state.as_ref(), None)
                .await
                .map_err(failed)?;
            plans.push(p);
        }
        Ok::<_, Failure>(plans)
    };
    // A plan cut short would mislead: on a signal nothing is printed.
    let plans = tokio::select! {
        plans = planning => plans?,
        _ = interrupt.cancel.cancelled() => {
            return Ok(interrupt.exit_code().unwrap_or(ExitCode::FAILURE));
        }
    };
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&plans).expect("plans serialise")
        ),
        Format::Table => {
            for p in &plans {
                let mut heading = format!(
                    "job {} (source {}): {} actions, {} source images not selected by the filter",
                    p.plan.job,
                    p.plan.source,
                    p.plan.actions.len(),
                    p.plan.not_selected
                );
                if !p.plan.left_out.is_empty() {
                    heading.push_str(&format!(
                        ", {} private or shared images of other projects left out (-vv lists them)",
                        p.plan.left_out.len()
                    ));
                }
                println!("{heading}");
                let rows: Vec<[String; 5]> = p
                    .plan
                    .actions
                    .iter()
                    .map(|a| {
                        [
                            a.target.clone(),
                            table_name(a.name.as_deref().unwrap_or_default()),
                            a.source_id.clone(),
                            a.size.map(human_size).unwrap_or_default(),
                            a.describe(),
                        ]
                    })
                    .collect();
                print_table(&["TARGET", "IMAGE", "SOURCE ID", "SIZE", "ACTION"], &rows);
                for u in &p.unreachable_targets {
                    println!("  target {} not reached: {}", u.target, escape(&u.error));
                }
                for (target, count) in p.plan.unadopted_per_target() {
                    if count > 0 {
                        println!(
                            "  target {target}: {count} image(s) with glance-sync's marker are not \
                             in the state database (lost or restored?): see glance-sync adopt --job {}",
                            p.plan.job
                        );
                    }
                }
            }
        }
    }
    let unreachable = plans.iter().any(|p| !p.unreachable_targets.is_empty());
    Ok(ExitCode::from(if unreachable { 1 } else { 0 }))
}

/// Lists, per job and target, the images owned by glance-sync's project that carry its marker for
/// the job's source cloud but are missing from the ledger, with what adopting each would mean;
/// `--yes` records the adoptable ones as the job's copies.
async fn adopt(config: &Config, jobs: &[String], yes: bool) -> Result<ExitCode, Failure> {
    let jobs = config.select_jobs(jobs).map_err(usage)?;
    let engine = Engine::new(config, Progress::default(), Metrics::new()).map_err(usage)?;
    // Recording needs the run lock; listing does not (it works while a run goes on).
    let writer = if yes {
        Some(State::open(&config.state_path).map_err(usage)?)
    } else {
        None
    };
    let reader = match &writer {
        Some(_) => None,
        None => State::open_read_only(&config.state_path).map_err(failed)?,
    };
    let mut adoptable_total = 0;
    let mut unreachable = false;
    for job in &jobs {
        // Read again per job: an image adopted for one job is no longer unadopted for the next.
        // Only the unadopted images matter here: in-sync and skipped ones are not kept.
        let mut forget = |_: &std::collections::HashMap<&str, &glance_sync::image::Image>,
                          _: Vec<glance_sync::plan::Action>| Ok(());
        let (p, _) = engine
            .plan_job(job, writer.as_ref().or(reader.as_ref()), Some(&mut forget))
            .await
            .map_err(failed)?;
        unreachable |= !p.unreachable_targets.is_empty();
        for u in &p.unreachable_targets {
            println!("  target {} not reached: {}", u.target, escape(&u.error));
        }
        let unadopted = &p.plan.unadopted;
        println!(
            "job {} (source {}): {} image(s) with glance-sync's marker not in the ledger",
            job.name,
            job.source,
            unadopted.len()
        );
        if unadopted.is_empty() {
            continue;
        }
        let rows: Vec<[String; 5]> = unadopted
            .iter()
            .map(|u| {
                [
                    u.target.clone(),
                    table_name(u.name.as_deref().unwrap_or_default()),
                    u.target_id.clone(),
                    u.marker_source_id.clone(),
                    format!(
                        "{}: {}",
                        if u.adoptable { "adopt" } else { "leave" },
                        u.verdict
                    ),
                ]
            })
            .collect();
        print_table(
            &["TARGET", "IMAGE", "IMAGE ID", "MARKER SOURCE ID", "VERDICT"],
            &rows,
        );
        for u in unadopted.iter().filter(|u| u.adoptable) {
            adoptable_total += 1;
            if let Some(state) = &writer {
                state
                    .adopt(
                        &job.name,
                        &job.source,
                        &u.marker_source_id,
                        &u.target,
                        &u.target_id,
                    )
                    .map_err(failed)?;
            }
        }
    }
    if yes {
        println!("{adoptable_total} image(s) recorded in the ledger");
    } else if adoptable_total > 0 {
        println!(
            "nothing changed: run again with --yes to record the {adoptable_total} adoptable image(s)"
        );
    }
    Ok(ExitCode::from(if unreachable { 1 } else { 0 }))
}

/// `adopt --from-job OLD --job NEW`: a renamed job takes over the copies of its old name.
fn adopt_renamed(
    config: &Config,
    jobs: &[String],
    old: &str,
    yes: bool,
) -> Result<ExitCode, Failure> {
    let [job] = config.select_jobs(jobs).map_err(usage)?.try_into().map_err(|_| {
        usage(anyhow::anyhow!(
            "--from-job {old} gives the copies of one old job to one job: name it with exactly one --job"
        ))
    })?;
    if config.jobs.iter().any(|j| j.name == old) {
        return Err(usage(anyhow::anyhow!(
            "job '{old}' is still in {}: its copies are its own; remove or rename it first",
            config.path.display()
        )));
    }
    let recorded: u64 = match State::open_read_only(&config.state_path).map_err(failed)? {
        Some(s) => s
            .ledger_jobs()
            .map_err(failed)?
            .into_iter()
            .filter(|(j, cloud, _)| j == old && *cloud == job.source)
            .map(|(_, _, n)| n)
            .sum(),
        None => 0,
    };
    if !yes {
        println!(
            "{recorded} copies from source cloud '{}' are recorded for job '{old}'; nothing \
             changed: run again with --yes to give them to job '{}'",
            job.source, job.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    let state = State::open(&config.state_path).map_err(usage)?;
    let moved = state
        .reassign_job(old, &job.name, &job.source)
        .map_err(failed)?;
    println!(
        "{moved} copies of job '{old}' now belong to job '{}'",
        job.name
    );
    Ok(ExitCode::SUCCESS)
}

fn status(config: &Config, format: Format) -> Result<ExitCode, Failure> {
    let state = State::open_read_only(&config.state_path).map_err(failed)?;
    if state.is_none() && format == Format::Table {
        println!(
            "no state database at {} yet: no run has happened",
            config.state_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let report =
        glance_sync::status::gather(config, state.as_ref(), &Default::default()).map_err(failed)?;
    let (runs, failing, new_ids) = (&report.runs, &report.failing, &report.copies_with_new_ids);
    for u in &report.unadopted {
        tracing::warn!(
            job = %u.job,
            target = %u.target,
            images = u.images,
            "target '{}': {} image(s) owned by glance-sync's project carry its marker but are not \
             in the state database's ledger (seen by job '{}' at {}): `glance-sync adopt --job {}` \
             lists them",
            u.target,
            u.images,
            u.job,
            u.seen_at,
            u.job
        );
    }
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("status serialises")
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
                            table_name(f.name.as_deref().unwrap_or_default()),
                            f.target.clone(),
                            f.attempts.to_string(),
                            f.last_error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(&["JOB", "IMAGE", "TARGET", "ATTEMPTS", "LAST ERROR"], &rows);
            }
            if !new_ids.is_empty() {
                println!(
                    "\ncopies with a new id (preserve_ids is on, but the target refused the \
                     source's id, or the copy is older than the rule):"
                );
                let rows: Vec<[String; 5]> = new_ids
                    .iter()
                    .map(|c| {
                        [
                            c.job.clone(),
                            table_name(c.name.as_deref().unwrap_or_default()),
                            c.target.clone(),
                            c.source_id.clone(),
                            c.target_id.clone(),
                        ]
                    })
                    .collect();
                print_table(&["JOB", "IMAGE", "TARGET", "SOURCE ID", "COPY ID"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(config: &Config, format: Format) -> Result<ExitCode, Failure> {
    let engine = Engine::new(config, Progress::default(), Metrics::new()).map_err(usage)?;
    let mut ok = true;
    let mut report = serde_json::Map::new();
    for (name, cloud) in &config.clouds {
        let client = engine.client(name);
        let mut entry = serde_json::to_value(cloud.resolved()).expect("resolved cloud serialises");
        let outcome = match client.identity().await {
            Ok(access) => {
                let endpoint = access.endpoint.clone();
                entry["image_endpoint"] = endpoint.clone().into();
                entry["token_project_id"] = access.project_id.clone().into();
                entry["token_roles"] = access.roles.clone().into();
                match client.probe().await {
                    Ok(()) => admin_needed(config, name, access.roles.as_deref())
                        .map(|()| format!("ok, image endpoint {endpoint}")),
                    Err(e) => Err(format!(
                        "image endpoint {endpoint} does not answer as Glance v2: {e}"
                    )),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match &outcome {
            Ok(_) => entry["ok"] = true.into(),
            Err(e) => {
                ok = false;
                entry["ok"] = false.into();
                entry["error"] = e.clone().into();
            }
        }
        if format == Format::Table {
            match outcome {
                Ok(line) => println!("{name}: {line}"),
                Err(e) => println!("{name}: FAILED: {}", escape(&e)),
            }
        }
        report.insert(name.clone(), entry);
    }
    let transfers = check_transfers(config, &engine, format, &mut ok).await;
    check_state_dir(&config.state_path).map_err(usage)?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "clouds": report,
                "jobs": transfers,
                "state": config.state_path,
            }))
            .expect("check report serialises")
        ),
        Format::Table => println!("state: {}", config.state_path.display()),
    }
    Ok(ExitCode::from(if ok { 0 } else { 1 }))
}

/// For each job and target: how a run would move the bytes (`transfer`, discovered as a run
/// does), the target's stores and whether it has those the job names.
async fn check_transfers(
    config: &Config,
    engine: &Engine,
    format: Format,
    ok: &mut bool,
) -> serde_json::Value {
    use glance_sync::server_copy::{self, Route};
    let mut jobs = serde_json::Map::new();
    for job in &config.jobs {
        let mut targets = serde_json::Map::new();
        for target in &job.targets {
            let policy = job.policy(target);
            let client = engine.client(target);
            let (route, why) =
                server_copy::discover(engine.client(&job.source), client, policy.transfer).await;
            let (how, mut error) = match &route {
                Route::Stream => (
                    format!(
                        "stream{}",
                        why.as_deref()
                            .map(|w| format!(" (transfer = \"auto\": {w})"))
                            .unwrap_or_default()
                    ),
                    None,
                ),
                Route::Pull(from) => (format!("glance-download from region {}", from.region), None),
                Route::Refuse(reason, _) => ("none".to_string(), Some(reason.clone())),
            };
            let stores = client.stores().await;
            let listed = match &stores {
                Ok(Some(have)) => format!("stores {}", have.join(", ")),
                Ok(None) => "single store".to_string(),
                Err(e) => format!("stores unknown ({e})"),
            };
            if error.is_none()
                && let Err(e) = server_copy::check_stores(client, &policy.stores).await
            {
                error = Some(e);
            }
            *ok &= error.is_none();
            if format == Format::Table {
                match &error {
                    None => println!("job {} -> {target}: {how}; {listed}", job.name),
                    Some(e) => println!(
                        "job {} -> {target}: FAILED: {}; {listed}",
                        job.name,
                        escape(e)
                    ),
                }
            }
            targets.insert(
                target.clone(),
                serde_json::json!({
                    "transfer": policy.transfer.as_str(),
                    "moves_bytes": how,
                    "stores": stores.ok().flatten(),
                    "wanted_stores": policy.stores,
                    "ok": error.is_none(),
                    "error": error,
                }),
            );
        }
        jobs.insert(job.name.clone(), targets.into());
    }
    jobs.into()
}

/// Rules that need the admin role on `cloud` (copies owned by the source image's project), said
/// before a run fails on them. Without Keystone the roles are unknown and nothing is said.
fn admin_needed(config: &Config, cloud: &str, roles: Option<&[String]>) -> Result<(), String> {
    let Some(roles) = roles else { return Ok(()) };
    if glance_sync::auth::has_admin_role(roles) {
        return Ok(());
    }
    let jobs: Vec<&str> = config
        .jobs
        .iter()
        .filter(|j| {
            j.targets.iter().any(|t| t == cloud)
                && j.policy(cloud).metadata.owner == glance_sync::config::OwnerRule::Source
        })
        .map(|j| j.name.as_str())
        .collect();
    if jobs.is_empty() {
        return Ok(());
    }
    Err(format!(
        "job(s) {} set owner = \"source\" for this cloud, which needs the admin role here \
         (creating images owned by other projects); the token has: {}",
        jobs.join(", "),
        roles.join(", ")
    ))
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
    Ok(())
}
