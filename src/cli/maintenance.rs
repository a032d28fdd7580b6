//! The maintenance commands: `matyan reindex`, `finish-stale`, `cleanup-tombstones`,
//! `cleanup-orphan-blobs`, `backup`, `restore` and `migrate sequences` (jobs in
//! `matyan::maintenance`).
//!
//! Each opens the store itself; when a running `matyan serve` holds the embedded store's lock, it
//! runs the job in that server through the loopback admin route `POST /admin/maintenance/` (found
//! through `serve.addr`), as `kv dump` does, and shows the server's progress events. A progress bar
//! is drawn on a terminal; otherwise progress goes to plain log lines. Dry-run lines and the final
//! summary go to stdout.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use matyan::app::{AppError, open_database};
use matyan::blobs::Blobs;
use matyan::config::Backend;
use matyan::maintenance::{self, EXIT_FAILED, Event, Job, JobRequest, Reporter, Settings};
use matyan::storage::kv::KvError;
use matyan::storage::layout::{Layout, SequenceLayoutKind};

use super::ConfigArgs;
use super::common;

/// The exit status of a maintenance command, returned as an error so that `main` exits with it
/// (after the command has reported why).
#[derive(Debug)]
pub struct ExitStatus(pub u8);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

/// The exit statuses, shown at the end of every maintenance command's `--help`.
pub const EXIT_CODES_HELP: &str = "Exit status (for a Kubernetes CronJob): 0 done; 1 failed (what was committed stays, \
the next run resumes after it; retry); 2 bad command line; 3 another maintenance job holds the storage job lock, \
nothing done (skip this time); 4 stopped before the end by SIGTERM or --max-batches (run again to resume).";

/// Flags of every maintenance command.
#[derive(Debug, Clone, Args)]
pub struct JobFlags {
    /// Time to live of the storage job lock in seconds; renewed while the job runs. 0 or absent:
    /// maintenance.lock_ttl_seconds (600). (The reference takes no lock at 0; this build always locks.)
    #[arg(long, value_name = "S", env = "CLEANUP_JOB_LOCK_TTL_SECONDS")]
    lock_ttl_seconds: Option<u64>,
    /// Stop after this many committed batches (exit status 4); the next run resumes. For drills.
    #[arg(long, value_name = "N", hide = true)]
    max_batches: Option<u64>,
    #[command(flatten)]
    common: ConfigArgs,
}

/// `matyan reindex`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct ReindexArgs {
    /// Show the ghost runs that would be purged; clear and write nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    flags: JobFlags,
}

/// `matyan finish-stale`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct FinishStaleArgs {
    /// Finish active runs created more than this many hours ago [default: maintenance.stale_timeout_hours, i.e. 24].
    #[arg(long, value_name = "H")]
    timeout_hours: Option<f64>,
    /// Show the runs that would be finished; write nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    flags: JobFlags,
}

/// `matyan cleanup-tombstones`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct CleanupTombstonesArgs {
    /// Clear tombstones older than this many hours [default: maintenance.tombstone_older_than_hours,
    /// i.e. 168; env TOMBSTONE_CLEANUP_OLDER_THAN_HOURS].
    #[arg(long, value_name = "H")]
    older_than_hours: Option<f64>,
    /// Show the tombstones that would be cleared; write nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    flags: JobFlags,
}

/// `matyan cleanup-orphan-blobs`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct CleanupOrphanBlobsArgs {
    /// Show the blob prefixes that would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Handle only the first N tombstones (key order); 0: all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: u64,
    #[command(flatten)]
    flags: JobFlags,
}

/// `matyan backup`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct BackupArgs {
    /// A run to back up (repeat for several).
    #[arg(long = "run", value_name = "RUN_ID", required = true)]
    runs: Vec<String>,
    /// The archive to write (docs/backup-format.md); written as FILE.partial, renamed at the end.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    flags: JobFlags,
}

/// `matyan restore`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct RestoreArgs {
    /// The archive `matyan backup` wrote.
    #[arg(value_name = "FILE")]
    archive: PathBuf,
    /// Overwrite runs that exist in the store (refused otherwise).
    #[arg(long)]
    replace: bool,
    /// Show what would be restored; write nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    flags: JobFlags,
}

/// `matyan migrate ...`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    command: MigrateCommand,
}

#[derive(Debug, Subcommand)]
enum MigrateCommand {
    /// Move every series (run, context, name) to another sequence layout, online: while it runs,
    /// every reader sees both layouts merged and new points go to the new one; resumable, locked
    /// (docs/adr/0009-sequence-migration.md).
    Sequences(MigrateSequencesArgs),
}

/// `matyan migrate sequences`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct MigrateSequencesArgs {
    /// The layout to move every series to: chunked, or key_per_step (the reference's: at the end
    /// the store is byte for byte what the Python backend writes).
    #[arg(long, value_name = "LAYOUT", value_parser = super::bench::parse_layout)]
    to: SequenceLayoutKind,
    /// Count the series and points that would move; write nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    flags: JobFlags,
}

/// Absolute, so that a server reading or writing the file on our behalf finds the same one.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) })
}

pub async fn reindex(args: ReindexArgs) -> anyhow::Result<()> {
    run(&args.flags, |_| Ok(Job::Reindex { dry_run: args.dry_run })).await
}

pub async fn finish_stale(args: FinishStaleArgs) -> anyhow::Result<()> {
    run(&args.flags, |c| {
        let timeout_hours = args.timeout_hours.unwrap_or(c.maintenance.stale_timeout_hours as f64);
        Ok(Job::FinishStale { timeout_hours, dry_run: args.dry_run })
    })
    .await
}

pub async fn cleanup_tombstones(args: CleanupTombstonesArgs) -> anyhow::Result<()> {
    run(&args.flags, |c| {
        let older_than_hours = args.older_than_hours.unwrap_or(c.maintenance.tombstone_older_than_hours as f64);
        Ok(Job::CleanupTombstones { older_than_hours, dry_run: args.dry_run })
    })
    .await
}

pub async fn cleanup_orphan_blobs(args: CleanupOrphanBlobsArgs) -> anyhow::Result<()> {
    run(&args.flags, |_| Ok(Job::CleanupOrphanBlobs { limit: args.limit, dry_run: args.dry_run })).await
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let out = absolute(&args.out)?;
    run(&args.flags, |_| Ok(Job::Backup { runs: args.runs.clone(), out: out.clone() })).await
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let archive = absolute(&args.archive)?;
    run(&args.flags, |_| Ok(Job::Restore { archive: archive.clone(), replace: args.replace, dry_run: args.dry_run }))
        .await
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    match args.command {
        MigrateCommand::Sequences(args) => {
            run(&args.flags, |_| Ok(Job::MigrateSequences { to: args.to, dry_run: args.dry_run })).await
        }
    }
}

/// Builds the job from the configuration, runs it here or in the server holding the store, and
/// turns its end into the exit status.
async fn run(flags: &JobFlags, job: impl FnOnce(&matyan::config::Config) -> anyhow::Result<Job>) -> anyhow::Result<()> {
    let config = flags.common.load(|_| {})?;
    let request =
        JobRequest { job: job(&config)?, max_batches: flags.max_batches, lock_ttl_seconds: flags.lock_ttl_seconds };
    let data_dir = config.storage.data_dir.clone();
    match config.storage.backend {
        Backend::Memory => bail!("storage.backend is memory: there is no stored data to maintain"),
        Backend::Embedded if !data_dir.exists() => bail!("no store at {}", data_dir.display()),
        _ => {}
    }
    let reporter = Console::new();
    let code = match open_database(&config.storage) {
        Ok(db) => {
            let layout = Layout::open(&db).await.context("cannot open the store's directories")?;
            let blobs = Blobs::from_config(&config).context("blobs")?;
            let settings = Settings::new(&config.maintenance, config.storage.retry.options());
            // SIGTERM (a CronJob's deadline) or Ctrl-C: end after the current batch, release the
            // lock, exit 4; the next run resumes.
            let stop = Arc::new(AtomicBool::new(false));
            let on_signal = {
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    super::common::shutdown_signal().await;
                    stop.store(true, Ordering::Relaxed);
                })
            };
            let result =
                maintenance::run(&db, &layout, blobs.store.as_ref(), &settings, &request, &reporter, &stop).await;
            on_signal.abort();
            match result {
                Ok(outcome) => outcome.code(),
                Err(e) => e.code(),
            }
        }
        Err(AppError::Storage(KvError::Locked(what))) => via_server(&data_dir, &request, &what, &reporter)?,
        Err(e) => return Err(e).context("cannot open the store"),
    };
    reporter.close();
    if code == 0 { Ok(()) } else { Err(ExitStatus(code).into()) }
}

/// Runs the job in the `matyan serve` that holds the store; returns the job's exit status.
fn via_server(data_dir: &Path, request: &JobRequest, locked: &str, reporter: &Console) -> anyhow::Result<u8> {
    let body = serde_json::to_vec(request)?;
    let head = format!(
        "POST /admin/maintenance/ HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}",
        body.len()
    );
    let (addr, reader) = common::admin_request(data_dir, locked, "the job", "so the job can run in it", &head, &body)?;
    tracing::info!(server = %addr, "the store is held by a running server: the job runs there");
    for line in reader.lines() {
        let line = line?;
        let event: Event = serde_json::from_str(&line)
            .with_context(|| format!("server at {addr} sent an unreadable event: {line}"))?;
        let end = match &event {
            Event::Finish { code, .. } => Some(*code),
            _ => None,
        };
        reporter.event(event);
        if let Some(code) = end {
            return Ok(code);
        }
    }
    reporter.event(Event::Finish {
        code: EXIT_FAILED,
        summary: format!("the server at {addr} closed the stream before the job ended"),
    });
    Ok(EXIT_FAILED)
}

/// Shows a job's events: a progress bar on a terminal, plain log lines otherwise.
struct Console {
    bar: Mutex<Option<ProgressBar>>,
    tty: bool,
    /// The last tenth of the total logged (non-terminal output).
    logged_tenth: Mutex<u64>,
    total: Mutex<u64>,
}

impl Console {
    fn new() -> Self {
        Self {
            bar: Mutex::new(None),
            tty: std::io::stderr().is_terminal(),
            logged_tenth: Mutex::new(0),
            total: Mutex::new(0),
        }
    }

    /// Prints a stdout line without tearing the bar.
    fn println(&self, text: &str) {
        let bar = self.bar.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }

    fn close(&self) {
        if let Some(bar) = self.bar.lock().ok().and_then(|mut b| b.take()) {
            bar.finish_and_clear();
        }
        let _ = std::io::stdout().flush();
    }
}

impl Reporter for Console {
    fn event(&self, event: Event) {
        match event {
            Event::Start { job, total, resumed_at } => {
                if let Ok(mut t) = self.total.lock() {
                    *t = total;
                }
                if self.tty {
                    let bar = ProgressBar::new(total);
                    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_message(job);
                    bar.set_position(resumed_at);
                    if let Ok(mut slot) = self.bar.lock() {
                        *slot = Some(bar);
                    }
                } else {
                    tracing::info!(job, total, resumed_at, "job started");
                }
            }
            Event::Progress { done } => {
                if let Some(bar) = self.bar.lock().ok().and_then(|b| b.clone()) {
                    bar.set_position(done);
                    return;
                }
                let total = self.total.lock().map(|t| *t).unwrap_or(0).max(1);
                let tenth = done.saturating_mul(10) / total;
                if let Ok(mut last) = self.logged_tenth.lock()
                    && tenth > *last
                {
                    *last = tenth;
                    tracing::info!(done, total, "job progress");
                }
            }
            Event::Line { text } => self.println(&text),
            Event::Finish { code, summary } => {
                self.close();
                if code == 0 || code == maintenance::EXIT_STOPPED {
                    println!("{summary}");
                } else {
                    tracing::error!(code, "{summary}");
                }
            }
        }
    }
}
