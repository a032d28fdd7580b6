//! The maintenance jobs of `ingest-storage.md` §2.7, run by the `matyan reindex`, `finish-stale`,
//! `cleanup-tombstones`, `cleanup-orphan-blobs`, `backup` and `restore` commands (and ours,
//! `migrate sequences`), in the command's
//! process or in a running `matyan serve` (the admin route `POST /admin/maintenance/`).
//!
//! Every job holds the storage job lock (`storage::job_lock`) and writes in batches, one
//! transaction each, within `[maintenance]`'s budgets. Each batch saves how far the job got in the
//! same transaction as its writes (like the Record Layer's online index build), so a job that
//! stops, crashes or is killed resumes at its next start where it stopped.
//!
//! - `progress.rs`: the saved progress and the batch context every job runs in;
//! - `reindex.rs`, `stale.rs`, `tombstones.rs`, `orphans.rs`, `migrate.rs`: one job each;
//! - `archive.rs`, `backup.rs`, `restore.rs`: the run archive (`docs/backup-format.md`), and
//!   `backup` and `restore` of runs through it.

mod archive;
mod backup;
mod migrate;
mod orphans;
mod progress;
mod reindex;
mod restore;
mod stale;
mod tombstones;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::blobs::{BlobError, BlobStore};
use crate::config::MaintenanceConfig;
use crate::storage::job_lock::{self, JobLock, JobLockError};
use crate::storage::kv::{Database, KvError, RetryOptions, RetryableError};
use crate::storage::layout::{Layout, LayoutError, SequenceLayoutKind};

pub use archive::ARCHIVE_FORMAT;
use progress::Ctx;

/// Exit status: the job finished.
pub const EXIT_DONE: u8 = 0;
/// Exit status: the job failed; what it committed stays, and the next run resumes after it.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: the command line is wrong (clap's own status).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: another job holds the storage job lock; nothing was done.
pub const EXIT_LOCKED: u8 = 3;
/// Exit status: the job stopped before the end (`--max-batches`, SIGTERM); the next run resumes it.
pub const EXIT_STOPPED: u8 = 4;

/// A job and its flags, as the command line gives them (and as the admin route takes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "kebab-case")]
pub enum Job {
    /// Rebuilds every index entry from run data and purges ghost runs.
    Reindex { dry_run: bool },
    /// Finishes active runs created more than `timeout_hours` ago.
    FinishStale { timeout_hours: f64, dry_run: bool },
    /// Clears tombstones older than `older_than_hours`.
    CleanupTombstones { older_than_hours: f64, dry_run: bool },
    /// Deletes the blobs of every tombstoned run (the first `limit` when > 0).
    CleanupOrphanBlobs { limit: u64, dry_run: bool },
    /// Writes the runs to an archive file.
    Backup { runs: Vec<String>, out: PathBuf },
    /// Restores the runs of an archive file and clears their tombstones.
    Restore { archive: PathBuf, replace: bool, dry_run: bool },
    /// Moves every series to the sequence layout `to`, online.
    MigrateSequences { to: SequenceLayoutKind, dry_run: bool },
}

impl Job {
    /// The job's name: its command, its lock holder's job and its progress key.
    pub fn name(&self) -> &'static str {
        match self {
            Job::Reindex { .. } => "reindex",
            Job::FinishStale { .. } => "finish-stale",
            Job::CleanupTombstones { .. } => "cleanup-tombstones",
            Job::CleanupOrphanBlobs { .. } => "cleanup-orphan-blobs",
            Job::Backup { .. } => "backup",
            Job::Restore { .. } => "restore",
            Job::MigrateSequences { .. } => "migrate-sequences",
        }
    }
}

/// A job with the run's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    #[serde(flatten)]
    pub job: Job,
    /// Stop after this many committed batches (drills and tests of resumption); `None`: run to the end.
    #[serde(default)]
    pub max_batches: Option<u64>,
    /// Lock time to live in seconds; `None`: `maintenance.lock_ttl_seconds`.
    #[serde(default)]
    pub lock_ttl_seconds: Option<u64>,
}

/// The budgets a job runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Items per batch transaction at most.
    pub batch_size: usize,
    /// Bytes one batch transaction writes at most.
    pub max_txn_bytes: usize,
    /// Lock time to live.
    pub lock_ttl: Duration,
    /// The retry loop of each transaction.
    pub retry: RetryOptions,
}

impl Settings {
    /// The settings of `[maintenance]` with the transaction retry loop `retry`.
    pub fn new(config: &MaintenanceConfig, retry: RetryOptions) -> Self {
        Self {
            batch_size: config.batch_size as usize,
            max_txn_bytes: config.txn_bytes().as_usize(),
            lock_ttl: config.lock_ttl(),
            retry,
        }
    }
}

/// What a job tells its operator as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The job holds the lock and knows (or estimates) how many items it will visit.
    Start { job: String, total: u64, resumed_at: u64 },
    /// Items visited so far (runs, tombstones, entities, archive lines).
    Progress { done: u64 },
    /// A line for the operator (dry-run lines, milestones).
    Line { text: String },
    /// The end: the exit status and a one-line summary.
    Finish { code: u8, summary: String },
}

/// Receives a job's events: a progress bar, log lines, or the admin route's response stream.
pub trait Reporter: Send + Sync {
    /// One event.
    fn event(&self, event: Event);
}

/// How a job ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was done.
    Done(String),
    /// The batch limit stopped it; the saved progress resumes it.
    Stopped(String),
}

impl Outcome {
    /// The exit status.
    pub fn code(&self) -> u8 {
        match self {
            Outcome::Done(_) => EXIT_DONE,
            Outcome::Stopped(_) => EXIT_STOPPED,
        }
    }

    /// The summary line.
    pub fn summary(&self) -> &str {
        match self {
            Outcome::Done(s) | Outcome::Stopped(s) => s,
        }
    }
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The storage job lock is held by another job, or was lost.
    #[error(transparent)]
    Lock(#[from] JobLockError),
    /// The store failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// Stored data does not decode.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The archive file cannot be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The archive is not one `restore` can read.
    #[error("{0}")]
    Archive(String),
    /// The job cannot do what was asked (a run to restore exists, a run to back up does not).
    #[error("{0}")]
    Refused(String),
}

impl RetryableError for MaintenanceError {
    fn kv_error(&self) -> Option<&KvError> {
        match self {
            MaintenanceError::Kv(e) => Some(e),
            MaintenanceError::Layout(LayoutError::Kv(e)) => Some(e),
            MaintenanceError::Lock(JobLockError::Kv(e)) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::storage::layout::sequences::SeqError> for MaintenanceError {
    fn from(e: crate::storage::layout::sequences::SeqError) -> Self {
        MaintenanceError::Layout(e.into())
    }
}

impl MaintenanceError {
    /// The exit status: [`EXIT_LOCKED`] when another job holds the lock, else [`EXIT_FAILED`].
    pub fn code(&self) -> u8 {
        match self {
            MaintenanceError::Lock(JobLockError::Held { .. }) => EXIT_LOCKED,
            _ => EXIT_FAILED,
        }
    }
}

/// Takes the storage job lock, runs `request`'s job under it (renewing the lock), releases it and
/// reports the end. The lock is released whether the job succeeds or fails. Once `stop` is set
/// (SIGTERM, a CronJob's deadline), the job ends after its current batch, as with `max_batches`.
pub async fn run(
    db: &Database,
    layout: &Layout,
    blobs: &dyn BlobStore,
    settings: &Settings,
    request: &JobRequest,
    reporter: &dyn Reporter,
    stop: &AtomicBool,
) -> Result<Outcome, MaintenanceError> {
    let mut settings = settings.clone();
    if let Some(ttl) = request.lock_ttl_seconds.filter(|t| *t > 0) {
        settings.lock_ttl = Duration::from_secs(ttl);
    }
    let job = &request.job;
    let acquired = JobLock::acquire(
        db,
        &layout.dirs.ours,
        job.name(),
        &job_lock::this_process(),
        settings.lock_ttl,
        crate::clock::now_secs(),
        &settings.retry,
    )
    .await;
    let lock = match acquired {
        Ok(lock) => lock,
        Err(e) => {
            let e = MaintenanceError::from(e);
            reporter.event(Event::Finish { code: e.code(), summary: e.to_string() });
            return Err(e);
        }
    };
    let lock = Arc::new(lock);
    let renewals = lock.keep_alive();
    let ctx = Ctx {
        db,
        layout,
        blobs,
        settings: &settings,
        lock: &lock,
        reporter,
        max_batches: request.max_batches,
        stop,
        batches: AtomicU64::new(0),
    };
    let result = match job {
        Job::Reindex { dry_run } => reindex::run(&ctx, *dry_run).await,
        Job::FinishStale { timeout_hours, dry_run } => stale::run(&ctx, *timeout_hours, *dry_run).await,
        Job::CleanupTombstones { older_than_hours, dry_run } => {
            tombstones::run(&ctx, *older_than_hours, *dry_run).await
        }
        Job::CleanupOrphanBlobs { limit, dry_run } => orphans::run(&ctx, *limit, *dry_run).await,
        Job::Backup { runs, out } => backup::backup(&ctx, runs, out).await,
        Job::Restore { archive, replace, dry_run } => restore::run(&ctx, archive, *replace, *dry_run).await,
        Job::MigrateSequences { to, dry_run } => migrate::run(&ctx, *to, *dry_run).await,
    };
    drop(renewals);
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "cannot release the storage job lock; it expires by itself");
    }
    match &result {
        Ok(outcome) => reporter.event(Event::Finish { code: outcome.code(), summary: outcome.summary().to_owned() }),
        Err(e) => reporter.event(Event::Finish { code: e.code(), summary: e.to_string() }),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::LocalDirStore;
    use crate::storage::layout::Layout;

    #[derive(Default)]
    struct Events(std::sync::Mutex<Vec<Event>>);

    impl Reporter for Events {
        fn event(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    async fn tombstoned(db: &Database, layout: &Layout, runs: &[&str]) {
        db.run(&RetryOptions::default(), |tx| async move {
            for run in runs {
                layout.indexes().mark_deleted(&tx, run, 1.0);
            }
            Ok::<_, KvError>(())
        })
        .await
        .unwrap();
    }

    async fn tombstones(db: &Database, layout: &Layout) -> usize {
        let tx = db.create_trx().unwrap();
        layout.indexes().tombstones(&tx).await.unwrap().len()
    }

    #[tokio::test]
    async fn a_stop_request_ends_the_job_after_its_current_batch_and_the_next_run_resumes() {
        let db = Database::memory();
        let layout = Layout::open(&db).await.unwrap();
        tombstoned(&db, &layout, &["r1", "r2", "r3"]).await;
        let dir = tempfile::tempdir().unwrap();
        let blobs = LocalDirStore::new(dir.path());
        let settings = Settings {
            batch_size: 1,
            max_txn_bytes: 1_000_000,
            lock_ttl: Duration::from_secs(60),
            retry: RetryOptions::default(),
        };
        let request = JobRequest {
            job: Job::CleanupTombstones { older_than_hours: 0.0, dry_run: false },
            max_batches: None,
            lock_ttl_seconds: None,
        };
        let events = Events::default();
        let stopped = AtomicBool::new(true);
        let outcome = run(&db, &layout, &blobs, &settings, &request, &events, &stopped).await.unwrap();
        assert_eq!(outcome.code(), EXIT_STOPPED, "{outcome:?}");
        assert_eq!(tombstones(&db, &layout).await, 2, "one batch committed");
        let last = events.0.lock().unwrap().last().cloned();
        assert!(matches!(last, Some(Event::Finish { code: EXIT_STOPPED, .. })), "{last:?}");

        let outcome = run(&db, &layout, &blobs, &settings, &request, &events, &AtomicBool::new(false)).await.unwrap();
        assert_eq!(outcome, Outcome::Done("cleared 2 tombstones older than 0 h (3 visited)".into()));
        assert_eq!(tombstones(&db, &layout).await, 0);
    }
}
