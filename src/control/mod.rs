//! The control actors: consume `control-events` and act on them (spec `ingest-storage.md` §1.5,
//! §2.6), supervised like the ingest pipeline and behind one typed handle.
//!
//! Module map:
//! - [`event`]: decoding and checking an event (malformed ones are dead-lettered with a reason);
//! - [`supervisor`]: the source loop, restarts (backoff, chaos), rebalances, on its own thread;
//! - [`consumer`]: the `ControlConsumer` actor of one partition: routes events, commits the low
//!   watermark once the work below it is done;
//! - [`janitor`]: the `BlobJanitor` actor: removes a deleted run's objects by pages and batches,
//!   retrying with backoff;
//! - [`dead_letters`]: the dead-letter topic or our keyspace;
//! - [`stats`]: counters read by the handle without a message.
//!
//! What each event does, as the reference's control worker (§1.5): `run_deleted` removes the
//! run's objects; `run_archived`, `run_unarchived`, `experiment_deleted` and `tag_deleted` need no
//! work (the REST write completed them) and are logged and counted; an unknown type likewise.

pub mod consumer;
pub mod dead_letters;
pub mod event;
pub mod janitor;
pub mod stats;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

pub use dead_letters::ControlDeadLetters;
pub use janitor::JanitorConfig;
pub use stats::ControlCounters;

use crate::actors::runtime::SystemThread;
use crate::blobs::BlobStore;
use crate::config::Config;
use crate::ingest::Source;
use stats::ControlStats;
use supervisor::{Command, ControlSupervisor};

/// The consumer group of the control workers (the reference's).
pub const CONTROL_GROUP: &str = "control-workers";

/// Name of the thread that runs the control actors.
pub const THREAD_NAME: &str = "matyan-control";

/// Why a control request failed.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The workers are not running.
    #[error("the control workers are not running")]
    Stopped,
    /// Nothing to kill.
    #[error("no such target: {0}")]
    NoSuchTarget(String),
    /// A chaos target that does not parse.
    #[error("invalid control kill target: {0}")]
    InvalidTarget(String),
    /// The actor thread could not be started.
    #[error("cannot start the control thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// What a chaos kill of the control workers names (every group is stopped either way; the name
/// is what the restart is counted under).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKill {
    /// The consumers, mid-batch: their commits stop, the groups replay from the committed offsets.
    Consumer,
    /// The janitors, mid-clean.
    Janitor,
}

impl ControlKill {
    /// Parses the chaos route's `target`: `control` or `janitor`.
    pub fn parse(target: &str) -> Result<Self, ControlError> {
        match target {
            "control" => Ok(ControlKill::Consumer),
            "janitor" => Ok(ControlKill::Janitor),
            other => Err(ControlError::InvalidTarget(format!("{other:?}: expected control or janitor"))),
        }
    }
}

/// Settings of the control workers.
#[derive(Debug, Clone)]
pub struct WorkersConfig {
    /// The topic read, named as the origin of dead letters.
    pub topic: String,
    /// Records per poll at most.
    pub poll_max_records: usize,
    /// Longest wait of one poll.
    pub poll_timeout: Duration,
    /// Run deletions in the janitors' hands at most; the topic is not read meanwhile.
    pub max_backlog: u64,
    /// The janitor's retry budgets.
    pub janitor: JanitorConfig,
    /// First restart backoff of a failing group.
    pub restart_backoff_initial: Duration,
    /// Cap of the restart backoff.
    pub restart_backoff_max: Duration,
}

impl Default for WorkersConfig {
    /// Returns topic `control-events`, polls of 100 records or 100 ms, a backlog of 1,000, the
    /// janitor's defaults and restarts from 200 ms to 10 s.
    fn default() -> Self {
        Self {
            topic: "control-events".to_owned(),
            poll_max_records: 100,
            poll_timeout: Duration::from_millis(100),
            max_backlog: 1000,
            janitor: JanitorConfig::default(),
            restart_backoff_initial: Duration::from_millis(200),
            restart_backoff_max: Duration::from_secs(10),
        }
    }
}

impl WorkersConfig {
    /// The settings of a validated [`Config`]: `[control]` and `kafka.control_events_topic`.
    pub fn from_config(config: &Config) -> Self {
        let c = &config.control;
        Self {
            topic: config.kafka.control_events_topic.clone(),
            max_backlog: c.max_backlog,
            janitor: JanitorConfig {
                max_attempts: c.janitor_max_attempts,
                initial_backoff: Duration::from_millis(c.janitor_initial_backoff_ms),
                max_backoff: Duration::from_millis(c.janitor_max_backoff_ms),
            },
            restart_backoff_max: Duration::from_millis(c.restart_backoff_max_ms),
            ..Self::default()
        }
    }
}

/// Starts control workers.
pub struct ControlWorkers;

impl ControlWorkers {
    /// Starts the actor system on its own thread, consuming `source` and removing deleted runs'
    /// objects from `store`, until [`ControlHandle::shutdown`].
    pub fn start<S: Source + 'static>(
        source: Arc<S>,
        store: Arc<dyn BlobStore>,
        dead_letters: ControlDeadLetters,
        config: WorkersConfig,
    ) -> Result<ControlHandle, ControlError> {
        let stats = Arc::new(ControlStats::default());
        let (tx, rx) = mpsc::channel(16);
        let thread_stats = Arc::clone(&stats);
        let dead_letters = Arc::new(dead_letters);
        let system = SystemThread::spawn(THREAD_NAME, move || async move {
            ControlSupervisor::new(source, store, dead_letters, config, thread_stats, rx).run().await;
        })?;
        Ok(ControlHandle { inner: Arc::new(Inner { commands: tx, stats, system }) })
    }
}

struct Inner {
    commands: mpsc::Sender<Command>,
    stats: Arc<ControlStats>,
    system: SystemThread,
}

/// The handle of running control workers. Cheap to clone; dropping every clone stops them.
#[derive(Clone)]
pub struct ControlHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ControlHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlHandle").field("running", &self.is_running()).finish()
    }
}

impl ControlHandle {
    /// Commits every partition's watermark, stops the actors and waits for the thread to end.
    /// Cleans in progress are dropped and replayed at the next start.
    pub async fn shutdown(&self) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        let result = match self.inner.commands.send(Command::Shutdown(tx)).await {
            Ok(()) => rx.await.unwrap_or(Err(ControlError::Stopped)),
            Err(_) => Err(ControlError::Stopped),
        };
        self.inner.system.join().await;
        result
    }

    /// Kills the control actors without committing (chaos); they restart from the committed
    /// offsets. Answers what was killed.
    pub async fn kill(&self, target: ControlKill) -> Result<String, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.inner.commands.send(Command::Kill(target, tx)).await.map_err(|_| ControlError::Stopped)?;
        rx.await.map_err(|_| ControlError::Stopped)?
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> ControlCounters {
        self.inner.stats.snapshot()
    }

    /// Whether the supervisor runs.
    pub fn is_running(&self) -> bool {
        self.inner.stats.is_running()
    }
}
