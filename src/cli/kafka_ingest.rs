//! The Kafka ingestion a process runs (`matyan ingest`, `matyan serve --source kafka`): the actor
//! pipeline on the `kafka.data_ingestion_topic` consumer group with dead letters to
//! `kafka.dead_letter_topic`, and the outbox publisher sending `run_deleted` to
//! `kafka.control_events_topic`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use matyan::actors::{DeadLetterTarget, IngestPipeline, PipelineConfig, PipelineHandle};
use matyan::app::AppState;
use matyan::ingest::apply::Applier;
use matyan::ingest::dlq::KafkaDeadLetters;
use matyan::ingest::kafka::KafkaSource;
use matyan::ingest::outbox::OutboxPublisher;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often the outbox publisher looks for pending events.
const OUTBOX_INTERVAL: Duration = Duration::from_secs(1);

/// How long the last outbox pass may take at shutdown.
const OUTBOX_FINAL_PASS: Duration = Duration::from_secs(10);

/// A running Kafka ingestion: the pipeline, its consumer and the outbox publisher.
pub struct KafkaIngest {
    pipeline: PipelineHandle,
    source: Arc<KafkaSource>,
    outbox: OutboxPublisher,
    outbox_stop: oneshot::Sender<()>,
    outbox_task: JoinHandle<()>,
}

impl KafkaIngest {
    /// Starts consuming into `state`'s storage.
    pub fn start(state: &AppState) -> anyhow::Result<Self> {
        let kafka = &state.config.kafka;
        let retry = state.config.storage.retry.options();
        let dead_letters = KafkaDeadLetters::from_config(kafka).context("cannot create the dead-letter producer")?;
        let source = Arc::new(KafkaSource::from_config(kafka).context("cannot create the kafka consumer")?);
        let pipeline = IngestPipeline::start_with(
            state.db.clone(),
            (*state.layout).clone(),
            Arc::clone(&source),
            PipelineConfig::from_config(&state.config),
            DeadLetterTarget::Kafka(dead_letters),
        )
        .context("cannot start the ingest pipeline")?;
        tracing::info!(
            topic = %kafka.data_ingestion_topic,
            group = %kafka.consumer_group,
            bootstrap = %kafka.bootstrap_servers,
            dead_letter_topic = %kafka.dead_letter_topic,
            "ingest pipeline consuming kafka"
        );
        let outbox =
            OutboxPublisher::from_config(state.db.clone(), Applier::new((*state.layout).clone()), kafka, retry)
                .context("cannot create the outbox publisher")?;
        let (outbox_stop, outbox_stopped) = oneshot::channel::<()>();
        let outbox_task = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                outbox
                    .run(OUTBOX_INTERVAL, async move {
                        let _ = outbox_stopped.await;
                    })
                    .await;
            })
        };
        Ok(Self { pipeline, source, outbox, outbox_stop, outbox_task })
    }

    /// The pipeline's handle, for the process's [`AppState`].
    pub fn pipeline(&self) -> PipelineHandle {
        self.pipeline.clone()
    }

    /// Flushes every run and commits every partition, leaves the group, then gives the outbox a
    /// last pass (what it cannot publish stays for the next start).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let drained = self.pipeline.shutdown().await;
        self.source.unsubscribe();
        let _ = self.outbox_stop.send(());
        if let Err(e) = self.outbox_task.await {
            tracing::warn!(error = %e, "outbox publisher task failed");
        }
        match tokio::time::timeout(OUTBOX_FINAL_PASS, self.outbox.publish_pending()).await {
            Ok(Ok(n)) => tracing::debug!(published = n, "last outbox pass done"),
            Ok(Err(e)) => tracing::warn!(error = %e, "last outbox pass failed; pending events stay for the next start"),
            Err(_) => tracing::warn!("last outbox pass timed out; pending events stay for the next start"),
        }
        drained.context("ingest pipeline did not shut down cleanly")
    }
}
