//! What the ingest actors pass each other and are configured with, in one place below every actor
//! (after Quickwit's `models/`): failure reports, the report of flushed offsets, chaos kill
//! targets, the pipeline's errors and the settings of the pipeline and of a run actor. Every actor
//! file imports from here; nothing here imports an actor, so the dependencies point one way.

use std::str::FromStr;
use std::time::Duration;

use actix::prelude::*;
use thiserror::Error;

use crate::clock::Clock;
use crate::config::Config;
use crate::ingest::dlq::KafkaDeadLetters;
use crate::ingest::{BatchBudget, DecodeError, IngestMessage, Record};
use crate::storage::kv::RetryOptions;

/// The kinds of actor the supervisor restarts; [`as_str`](Self::as_str) is the `actor` label of
/// `matyan_ingest_actor_restarts_total` and the first half of a restart counter's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActorKind {
    /// The source loop: its failure restarts every partition.
    Source,
    /// A partition actor: its failure restarts its group.
    Partition,
    /// A run actor: its failure restarts its partition's group.
    Run,
}

impl ActorKind {
    /// The `actor` label value, also the first half of a restart counter's key (`run/chaos`).
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Source => "source",
            ActorKind::Partition => "partition",
            ActorKind::Run => "run",
        }
    }
}

impl std::fmt::Display for ActorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an actor stopped and its group restarts (after Quickwit's `ActorExitStatus`);
/// [`as_str`](Self::as_str) is the `cause` label of `matyan_ingest_actor_restarts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureCause {
    /// A chaos kill (not a failure: restarted without backoff).
    Chaos,
    /// A poll of the source failed.
    SourceError,
    /// A task panicked or was cancelled.
    Panic,
    /// A run actor's mailbox closed under a delivery.
    MailboxClosed,
    /// Dead letters could not be written or forwarded.
    DeadLetter,
    /// A commit to the source failed with an error that retrying does not fix.
    SourceCommit,
    /// A flush transaction timed out after its retries.
    StorageTimeout,
    /// A flush transaction failed after its retries.
    Storage,
    /// Stored data is not in the layout's format.
    Corrupt,
}

impl FailureCause {
    /// The `cause` label value, also the second half of a restart counter's key.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Chaos => "chaos",
            FailureCause::SourceError => "source_error",
            FailureCause::Panic => "panic",
            FailureCause::MailboxClosed => "mailbox_closed",
            FailureCause::DeadLetter => "dead_letter",
            FailureCause::SourceCommit => "source_commit",
            FailureCause::StorageTimeout => "storage_timeout",
            FailureCause::Storage => "storage",
            FailureCause::Corrupt => "corrupt",
        }
    }
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure reported by an actor of partition group `epoch`.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The partition of the group.
    pub partition: i32,
    /// The group's epoch; reports of an older group are ignored.
    pub epoch: u64,
    /// The actor that failed (a partition or a run actor).
    pub actor: ActorKind,
    /// Why it failed.
    pub cause: FailureCause,
}

/// Why an actor did not do what a request asked (answers of [`FlushNow`], [`Surrender`], a drain
/// and a commit request). A failure it answers was already reported to the supervisor.
///
/// [`FlushNow`]: super::run_actor::FlushNow
/// [`Surrender`]: super::run_actor::Surrender
#[derive(Debug, Error)]
pub enum ActorExit {
    /// The actor's group was killed (chaos, revoke, restart): it stopped without flushing.
    #[error("{0} actor killed")]
    Killed(ActorKind),
    /// The actor failed and stopped.
    #[error("{0} actor failed: {1}")]
    Failed(ActorKind, FailureCause),
    /// Some run actors of a drained partition did not flush; their records are replayed.
    #[error("{0} run actors failed to flush")]
    RunsNotFlushed(usize),
    /// The source refused a commit.
    #[error("{0}")]
    Commit(#[from] crate::ingest::SourceError),
    /// The actor was gone before it answered.
    #[error("{0}")]
    Mailbox(#[from] MailboxError),
}

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
    /// What every actor of the pipeline reads time from.
    pub clock: Clock,
}

impl Default for PipelineConfig {
    /// Returns the default budgets, 30 s idle timeout, polls of 500 records or 50 ms, commits every
    /// 100 ms, restart backoff from 50 ms to 5 s, topic `data-ingestion`, staged dead letters
    /// forwarded, the consumer lag read every second and 1,000 run actors per partition. Its
    /// budgets and retry equal the built-in config (a config test keeps them so); roles build it
    /// with [`PipelineConfig::from_config`].
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
            clock: Clock::System,
        }
    }
}

impl PipelineConfig {
    /// Builds the settings of a validated [`Config`]: `[ingest]` budgets, idle timeout and run
    /// actor cap, `[storage.retry]`, `kafka.data_ingestion_topic`.
    pub fn from_config(config: &Config) -> Self {
        let ingest = &config.ingest;
        Self {
            budget: BatchBudget::from_config(ingest),
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

/// Offsets committed to storage (or dead-lettered), reported to the partition actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flushed {
    /// The offsets, in the partition.
    pub offsets: Vec<i64>,
}

/// Settings of one run actor.
pub struct RunActorConfig {
    /// When a run's batch is sealed (bytes, messages, age).
    pub budget: BatchBudget,
    /// Time without records before the actor asks to stop.
    pub idle_timeout: Duration,
    /// What the actor reads time from (batch deadlines, idleness).
    pub clock: Clock,
}

/// A record read from the source and its value decoded, off the actor thread (the source loop
/// decodes each poll on the offload runtime); the partition actor routes the message or
/// dead-letters the record with the decoding error. A decoded record's bytes are dropped where it
/// was decoded, so the actor thread frees none of them.
#[derive(Debug)]
pub struct Polled {
    /// The record's partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// Its value decoded, or the record's bytes with why they do not decode.
    pub message: Result<IngestMessage, Undecoded>,
}

/// A record whose value does not decode: what its dead letter keeps.
#[derive(Debug)]
pub struct Undecoded {
    /// Why it does not decode.
    pub error: DecodeError,
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's value.
    pub value: Vec<u8>,
}

impl Polled {
    /// Decodes `records`, in order.
    pub fn decode_all(records: Vec<Record>) -> Vec<Polled> {
        records
            .into_iter()
            .map(|record| {
                let message = crate::ingest::decode(&record.value).map_err(|error| Undecoded {
                    error,
                    key: record.key,
                    value: record.value,
                });
                Polled { partition: record.partition, offset: record.offset, message }
            })
            .collect()
    }
}
