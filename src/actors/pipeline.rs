//! The ingest pipeline's public face: [`IngestPipeline::start`] and the [`PipelineHandle`] through
//! which the rest of the crate (CLI, admin routes, tests) shuts it down, kills actors for chaos
//! drills and reads counters. No actix type crosses this boundary.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::flush::{DeadLetters, Flusher};
use super::models::{DeadLetterTarget, KillTarget, PipelineConfig, PipelineError};
use super::runtime::{self, SystemThread};
use super::stats::{PipelineCounters, Stats};
use super::supervisor::{Control, Supervisor};
use crate::ingest::dlq::DeadLetterSink;
use crate::ingest::{Applier, Source};
use crate::storage::kv::Database;
use crate::storage::layout::Layout;

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
            clock: config.clock,
        };
        let thread_stats = Arc::clone(&stats);
        let system = SystemThread::spawn(runtime::THREAD_NAME, move || async move {
            Supervisor::new(source, config, flusher, thread_stats, control_rx).run().await;
        })?;
        Ok(PipelineHandle { inner: Arc::new(Inner { control: control_tx, stats, system }) })
    }
}

struct Inner {
    control: mpsc::Sender<Control>,
    stats: Arc<Stats>,
    system: SystemThread,
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
        self.inner.system.join().await;
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
