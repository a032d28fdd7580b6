//! Trimming of the embedded queue: records every consumer group has committed are removed, so the
//! queue's disk and memory follow the live data instead of growing with everything ever sent
//! (1M points left ~300 B per point of queue behind them, issue 12).
//!
//! One pass visits every topic and partition and calls [`Queue::trim_consumed`], which reads the
//! groups' committed offsets and the partition's bounds and moves the start offset up to the
//! slowest. Where the store keeps the partition's records apart (fjall stores created since ADR
//! 0013) that one small transaction is all, and the records below the start are forgotten after it
//! (fjall drops their tables whole); elsewhere the transactions clear the records themselves, at
//! most `queue.trim_batch_records` records each. A topic no group has committed on (the control
//! events before a control consumer ever ran) keeps everything. `matyan serve` runs
//! [`QueueTrimmer`] every `queue.trim_interval_ms`.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::QueueConfig;
use crate::ingest::queue::{Queue, QueueError};
use crate::storage::kv::Database;

/// What one pass over a topic found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTrim {
    /// The topic.
    pub topic: String,
    /// Records removed by this pass.
    pub trimmed: u64,
    /// Records the topic still holds (end minus start, over its partitions).
    pub held: u64,
}

/// How much a pass trims: the consumed records kept per partition and the records one
/// transaction removes at most (`[queue]` `retain_consumed_records`, `trim_batch_records`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimSettings {
    /// Consumed records kept per partition.
    pub retain: u64,
    /// Records one trim transaction removes at most.
    pub batch: u64,
}

impl TrimSettings {
    /// The settings of `[queue]`.
    pub fn from_config(queue: &QueueConfig) -> Self {
        Self { retain: queue.retain_consumed_records, batch: queue.trim_batch_records }
    }
}

/// Trims every topic of the queue under `ours` once, as far as `settings` allow, in as many
/// transactions as its record budget needs, and records the metrics.
pub async fn trim_once(db: &Database, ours: &[u8], settings: TrimSettings) -> Result<Vec<TopicTrim>, QueueError> {
    let mut report = Vec::new();
    for topic in Queue::topics(db, ours).await? {
        let Some(queue) = Queue::open_existing(db, ours, &topic).await? else { continue };
        let (mut trimmed, mut held) = (0u64, 0u64);
        for partition in queue.partition_ids() {
            loop {
                let trim = queue.trim_consumed(partition, settings.retain, settings.batch).await?;
                trimmed += trim.trimmed();
                if trim.complete {
                    held += trim.held();
                    break;
                }
            }
        }
        crate::metrics::queue_trimmed(&topic, trimmed, held);
        report.push(TopicTrim { topic, trimmed, held });
    }
    Ok(report)
}

/// The background task that trims the queue periodically. Stopping it between or during passes
/// is safe: each trim is one transaction.
#[derive(Debug)]
pub struct QueueTrimmer {
    task: JoinHandle<()>,
}

impl QueueTrimmer {
    /// Starts trimming the queue under `ours` every `interval` as `settings` say. A failed pass is
    /// logged and the next one tries again.
    pub fn spawn(db: Database, ours: Vec<u8>, interval: Duration, settings: TrimSettings) -> Self {
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match trim_once(&db, &ours, settings).await {
                    Ok(report) => {
                        for t in report.iter().filter(|t| t.trimmed > 0) {
                            tracing::debug!(topic = %t.topic, trimmed = t.trimmed, held = t.held, "queue trimmed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "queue trim failed; trying again at the next interval"),
                }
            }
        });
        Self { task }
    }

    /// Stops the task.
    pub fn stop(self) {
        self.task.abort();
    }
}
