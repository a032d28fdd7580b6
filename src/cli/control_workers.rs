//! The control workers a process runs: on the Kafka control topic (`matyan control`,
//! `matyan serve --source kafka`) or on the embedded queue's control topic with the outbox
//! publisher appending to it (`matyan serve`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use matyan::app::AppState;
use matyan::control::{ControlDeadLetters, ControlHandle, ControlWorkers, WorkersConfig};
use matyan::ingest::apply::Applier;
use matyan::ingest::dlq::KafkaDeadLetters;
use matyan::ingest::kafka::{KafkaSource, client_config};
use matyan::ingest::outbox::OutboxPublisher;
use matyan::ingest::{EmbeddedSource, Queue};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often the embedded outbox publisher looks for pending events.
const OUTBOX_INTERVAL: Duration = Duration::from_secs(1);

/// Partitions of the embedded control topic: one, as the reference's helm default, so events
/// are handled in the order they were published.
const CONTROL_PARTITIONS: u32 = 1;

/// Running control workers, with the embedded outbox publisher when they read the embedded queue.
pub struct Control {
    handle: ControlHandle,
    outbox: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Control {
    /// Starts the workers on the Kafka control topic, group `control.consumer_group`, dead letters
    /// to `kafka.dead_letter_topic`.
    pub fn start_kafka(state: &AppState) -> anyhow::Result<Self> {
        let kafka = &state.config.kafka;
        let mut base = client_config(kafka);
        base.set("session.timeout.ms", kafka.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", kafka.heartbeat_interval_ms.to_string());
        let group = &state.config.control.consumer_group;
        let source = KafkaSource::new(base, group, &kafka.control_events_topic)
            .context("cannot create the control-events consumer")?;
        let letters = KafkaDeadLetters::from_config(kafka).context("cannot create the dead-letter producer")?;
        let handle = ControlWorkers::start(
            Arc::new(source),
            Arc::clone(&state.blobs.store),
            ControlDeadLetters::Kafka(letters),
            WorkersConfig::from_config(&state.config),
        )
        .context("cannot start the control workers")?;
        tracing::info!(topic = %kafka.control_events_topic, group = %group, "control workers consuming kafka");
        Ok(Self { handle, outbox: None })
    }

    /// Starts the workers on the embedded queue's control topic (created with one partition if
    /// absent), and the outbox publisher appending the store's pending events to it.
    pub async fn start_embedded(state: &AppState) -> anyhow::Result<Self> {
        let topic = state.config.kafka.control_events_topic.as_str();
        let ours = &state.layout.dirs.ours;
        let queue = match Queue::open_existing(&state.db, ours, topic).await? {
            Some(queue) => queue,
            None => Queue::open(&state.db, ours, topic, CONTROL_PARTITIONS).await?,
        };
        let applier = Applier::new((*state.layout).clone());
        let retry = state.config.storage.retry.options();
        let publisher = OutboxPublisher::to_queue(state.db.clone(), applier.clone(), queue.clone(), retry);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            publisher
                .run(OUTBOX_INTERVAL, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        let group = &state.config.control.consumer_group;
        let source = EmbeddedSource::new(queue, group)
            .await
            .with_context(|| format!("cannot open the consumer of topic {topic:?}"))?;
        let letters = ControlDeadLetters::embedded(state.db.clone(), applier, retry);
        let handle = ControlWorkers::start(
            Arc::new(source),
            Arc::clone(&state.blobs.store),
            letters,
            WorkersConfig::from_config(&state.config),
        )
        .context("cannot start the control workers")?;
        tracing::info!(topic, group = %group, "control workers consuming the embedded queue");
        Ok(Self { handle, outbox: Some((stop, task)) })
    }

    /// The workers' handle, for the process's [`AppState`] (the chaos route).
    pub fn handle(&self) -> ControlHandle {
        self.handle.clone()
    }

    /// Stops the outbox publisher, then the workers (each partition's watermark committed).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        if let Some((stop, task)) = self.outbox {
            let _ = stop.send(());
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "outbox publisher task failed");
            }
        }
        self.handle.shutdown().await.context("control workers did not shut down cleanly")
    }
}
