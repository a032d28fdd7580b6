//! The ingest pipeline's public face: [`IngestPipeline::start`] and the [`PipelineHandle`] through
//! which the rest of the crate (CLI, admin routes, tests) shuts it down, kills actors for chaos
//! drills and reads counters. No actix type crosses this boundary.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use super::run_actor::{DeadLetters, Flusher};
use super::runtime;
use super::stats::{PipelineCounters, Stats};
use super::supervisor::{Control, Supervisor};
use crate::config::Config;
use crate::ingest::dlq::{DeadLetterSink, KafkaDeadLetters};
use crate::ingest::{Applier, BatchBudget, Source};
use crate::storage::kv::{Database, RetryOptions};
use crate::storage::layout::Layout;

/// Why a pipeline request failed.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// The pipeline is not running (stopped, or never started).
    #[error("the ingest pipeline is not running")]
    Stopped,
    /// A chaos target that has no live actor.
    #[error("no such target: {0}")]
    NoSuchTarget(String),
    /// A target string that does not parse.
    #[error("invalid kill target: {0}")]
    InvalidTarget(String),
    /// The actor thread could not be started.
    #[error("cannot start the ingest thread: {0}")]
    Spawn(#[from] std::io::Error),
    /// A budget is invalid.
    #[error("invalid ingest budget: {0}")]
    Budget(String),
    /// Some runs could not be flushed at shutdown (they will be replayed at the next start).
    #[error("flush at shutdown failed: {0}")]
    Flush(String),
}

/// What a chaos kill stops, without flushing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillTarget {
    /// The partition actor of a partition (and with it its run actors).
    Partition(i32),
    /// The run actor of a run.
    Run(String),
    /// The source loop (every partition restarts).
    Source,
    /// One of the above, at random among live actors.
    Random,
}

impl KillTarget {
    /// Builds a target from the admin route's parameters: `target` is `partition`, `run`, `source`
    /// or `random`; `partition` and `run` name the actor.
    pub fn parse(target: &str, partition: Option<i32>, run: Option<&str>) -> Result<Self, PipelineError> {
        match target {
            "partition" => partition
                .map(KillTarget::Partition)
                .ok_or_else(|| PipelineError::InvalidTarget("target=partition needs partition=".to_owned())),
            "run" => run
                .filter(|r| !r.is_empty())
                .map(|r| KillTarget::Run(r.to_owned()))
                .ok_or_else(|| PipelineError::InvalidTarget("target=run needs run=".to_owned())),
            "source" => Ok(KillTarget::Source),
            "random" => Ok(KillTarget::Random),
            other => Err(PipelineError::InvalidTarget(format!("{other:?}: expected partition, run, source or random"))),
        }
    }
}

impl FromStr for KillTarget {
    type Err = PipelineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KillTarget::parse(s, None, None)
    }
}

/// Settings of a pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Flush budgets of run batches (validated at start).
    pub budget: BatchBudget,
    /// Retry options of each transaction.
    pub retry: RetryOptions,
    /// Time without records after which a run actor stops.
    pub run_idle_timeout: Duration,
    /// Records per poll at most.
    pub poll_max_records: usize,
    /// Longest wait of one poll (also the longest delay of a restart or a shutdown).
    pub poll_timeout: Duration,
    /// How often partition actors commit their watermark.
    pub commit_interval: Duration,
    /// First restart backoff of a failing partition.
    pub restart_backoff_initial: Duration,
    /// Cap of the restart backoff.
    pub restart_backoff_max: Duration,
    /// The topic the source reads, named as the origin of dead letters.
    pub topic: String,
    /// How often dead letters staged in the keyspace are forwarded to the dead-letter topic (only
    /// with [`DeadLetterTarget::Kafka`]).
    pub dead_letter_forward_interval: Duration,
    /// How often the consumer-lag gauge is read from the source's backlog.
    pub lag_interval: Duration,
    /// Live run actors per partition at most; a new run at a full partition evicts the least
    /// recently used ones, each after flushing (at least 1).
    pub max_run_actors_per_partition: usize,
}

impl Default for PipelineConfig {
    /// Returns the default budgets, 30 s idle timeout, polls of 500 records or 50 ms, commits every
    /// 100 ms, restart backoff from 50 ms to 5 s, topic `data-ingestion`, staged dead letters
    /// forwarded, the consumer lag read every second and 1,000 run actors per partition.
    fn default() -> Self {
        Self {
            budget: BatchBudget::default(),
            retry: RetryOptions::default(),
            run_idle_timeout: Duration::from_secs(30),
            poll_max_records: 500,
            poll_timeout: Duration::from_millis(50),
            commit_interval: Duration::from_millis(100),
            restart_backoff_initial: Duration::from_millis(50),
            restart_backoff_max: Duration::from_secs(5),
            topic: "data-ingestion".to_owned(),
            dead_letter_forward_interval: Duration::from_secs(1),
            lag_interval: Duration::from_secs(1),
            max_run_actors_per_partition: 1000,
        }
    }
}

impl PipelineConfig {
    /// Builds the settings of a validated [`Config`]: `[ingest]` budgets, idle timeout and run
    /// actor cap, `[storage.retry]`, `kafka.data_ingestion_topic`.
    pub fn from_config(config: &Config) -> Self {
        let ingest = &config.ingest;
        Self {
            budget: BatchBudget {
                max_bytes: usize::try_from(ingest.max_txn_bytes).unwrap_or(usize::MAX),
                max_messages: ingest.max_messages_per_txn as usize,
                max_age: ingest.max_txn_age(),
            },
            retry: config.storage.retry.options(),
            run_idle_timeout: ingest.run_idle_timeout(),
            topic: config.kafka.data_ingestion_topic.clone(),
            max_run_actors_per_partition: ingest.max_run_actors_per_partition as usize,
            ..Self::default()
        }
    }
}

/// Where a pipeline sends records that cannot be decoded or applied.
#[derive(Debug, Clone, Default)]
pub enum DeadLetterTarget {
    /// Our keyspace of the store (`matyan serve`, the embedded queue).
    #[default]
    Embedded,
    /// The dead-letter topic, with reason and origin headers (`matyan ingest`). Records failing at
    /// apply are staged in the keyspace with their run's transaction and forwarded from there: by
    /// the flush, and by a pass every `dead_letter_forward_interval` (and one at shutdown) for
    /// what a failure or a crash left staged.
    Kafka(KafkaDeadLetters),
}

/// Starts pipelines.
pub struct IngestPipeline;

impl IngestPipeline {
    /// Starts the actor system on its own thread and consumes `source` into `db` through the
    /// `layout`'s handlers, until [`PipelineHandle::shutdown`]. Dead letters go to the keyspace.
    pub fn start<S: Source + 'static>(
        db: Database,
        layout: Layout,
        source: Arc<S>,
        config: PipelineConfig,
    ) -> Result<PipelineHandle, PipelineError> {
        Self::start_with(db, layout, source, config, DeadLetterTarget::Embedded)
    }

    /// Like [`start`](Self::start), with dead letters sent to `dead_letters`.
    pub fn start_with<S: Source + 'static>(
        db: Database,
        layout: Layout,
        source: Arc<S>,
        config: PipelineConfig,
        dead_letters: DeadLetterTarget,
    ) -> Result<PipelineHandle, PipelineError> {
        config.budget.validate().map_err(|e| PipelineError::Budget(e.to_string()))?;
        if config.max_run_actors_per_partition == 0 {
            return Err(PipelineError::Budget("max_run_actors_per_partition must be at least 1".to_owned()));
        }
        let stats = Stats::new();
        let (control_tx, control_rx) = mpsc::channel(64);
        let (done_tx, done_rx) = oneshot::channel();
        let applier = Applier::new(layout);
        let mut letters = DeadLetters::embedded(db.clone(), applier.clone(), config.retry, config.topic.clone());
        if let DeadLetterTarget::Kafka(kafka) = dead_letters {
            letters.sink = DeadLetterSink::Kafka(kafka);
        }
        let flusher = Flusher {
            db,
            applier,
            retry: config.retry,
            stats: Arc::clone(&stats),
            dead_letters: Arc::new(letters),
            offload: Flusher::offload_runtime(),
            transactions: Flusher::transaction_slots(),
        };
        let thread_stats = Arc::clone(&stats);
        let thread = runtime::spawn_system(move || async move {
            Supervisor::new(source, config, flusher, thread_stats, control_rx).run().await;
            let _ = done_tx.send(());
        })?;
        Ok(PipelineHandle {
            inner: Arc::new(Inner {
                control: control_tx,
                stats,
                done: Mutex::new(Some(done_rx)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }
}

struct Inner {
    control: mpsc::Sender<Control>,
    stats: Arc<Stats>,
    done: Mutex<Option<oneshot::Receiver<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The handle of a running pipeline. Cheap to clone; dropping every clone drains and stops it.
#[derive(Clone)]
pub struct PipelineHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PipelineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineHandle").field("running", &self.is_running()).finish()
    }
}

impl PipelineHandle {
    /// Flushes every run (reason `shutdown`), commits every partition's watermark, stops the actors
    /// and waits for the actor thread to end.
    pub async fn shutdown(&self) -> Result<(), PipelineError> {
        let (tx, rx) = oneshot::channel();
        let result = match self.inner.control.send(Control::Shutdown(tx)).await {
            Ok(()) => rx.await.unwrap_or(Err(PipelineError::Stopped)),
            Err(_) => Err(PipelineError::Stopped),
        };
        let done = self.inner.done.lock().take();
        if let Some(done) = done {
            let _ = done.await;
        }
        let thread = self.inner.thread.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }

    /// Kills an actor without flushing (chaos); the supervisor recovers from storage and the
    /// source. Answers what was killed.
    pub async fn kill(&self, target: KillTarget) -> Result<String, PipelineError> {
        let (tx, rx) = oneshot::channel();
        self.inner.control.send(Control::Kill(target, tx)).await.map_err(|_| PipelineError::Stopped)?;
        rx.await.map_err(|_| PipelineError::Stopped)?
    }

    /// Returns a snapshot of the counters (read without queueing behind data).
    pub fn counters(&self) -> PipelineCounters {
        self.inner.stats.snapshot()
    }

    /// Tells whether the supervisor runs.
    pub fn is_running(&self) -> bool {
        self.inner.stats.is_running()
    }
}
