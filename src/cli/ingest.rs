//! `matyan ingest`: the Kafka → storage role, with its own health and metrics listener, until SIGINT or SIGTERM.
//!
//! It consumes `kafka.data_ingestion_topic` in the group `kafka.consumer_group` through the actor
//! pipeline into the configured storage, publishes the outbox's `run_deleted` events to
//! `kafka.control_events_topic`, and serves `/health/live/`, `/health/ready/` and `/metrics/` on
//! `metrics.port` (0 disables the listener). Records that cannot be decoded or applied go to
//! `kafka.dead_letter_topic` (`data-ingestion-dlq`, which must exist) with `reason` and origin
//! headers; a partition's offset is committed past a dead letter only after the broker acknowledged
//! it. Records failing at apply are staged in the store with their run's transaction and forwarded
//! from there by the pipeline.
//!
//! Rebalances of the consumer group are handled by the pipeline (see `actors/supervisor.rs`): a
//! revoked partition's actors stop, an assigned one gets fresh actors under its new lease.
//!
//! On a signal the pipeline flushes every run and commits every partition first, then the
//! consumer leaves the group, the outbox gets a last pass, and the listener stops.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use matyan::actors::{DeadLetterTarget, IngestPipeline, PipelineConfig};
use matyan::ingest::apply::Applier;
use matyan::ingest::dlq::KafkaDeadLetters;
use matyan::ingest::kafka::KafkaSource;
use matyan::ingest::outbox::OutboxPublisher;
use tokio::sync::oneshot;

use super::ConfigArgs;
use super::common;

/// How often the outbox publisher looks for pending events.
const OUTBOX_INTERVAL: Duration = Duration::from_secs(1);

/// How long the last outbox pass may take at shutdown.
const OUTBOX_FINAL_PASS: Duration = Duration::from_secs(10);

/// Flags of `matyan ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Address of the health and metrics listener.
    #[arg(long, value_name = "HOST", default_value = "0.0.0.0")]
    pub metrics_host: String,
    /// Port of the health and metrics listener; 0 disables it [default: metrics.port, i.e. 9090].
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
}

/// Runs the ingestion role until a shutdown signal.
pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let config = args.common.load(|c| {
        if let Some(port) = args.metrics_port {
            c.metrics.port = port;
        }
    })?;
    let handle = common::install_metrics(&config)?;
    let metrics_port = config.metrics.port;
    let state = common::open_state(config, handle).await?;
    let kafka = state.config.kafka.clone();

    let retry = state.config.storage.retry.options();
    let dead_letters = KafkaDeadLetters::from_config(&kafka).context("cannot create the dead-letter producer")?;
    let source = Arc::new(KafkaSource::from_config(&kafka).context("cannot create the kafka consumer")?);
    let pipeline = IngestPipeline::start_with(
        state.db.clone(),
        (*state.layout).clone(),
        Arc::clone(&source),
        PipelineConfig::from_config(&state.config),
        DeadLetterTarget::Kafka(dead_letters),
    )
    .context("cannot start the ingest pipeline")?;
    matyan::actors::pipeline::set_serving(Some(pipeline.clone()));
    tracing::info!(
        topic = %kafka.data_ingestion_topic,
        group = %kafka.consumer_group,
        bootstrap = %kafka.bootstrap_servers,
        dead_letter_topic = %kafka.dead_letter_topic,
        "ingest pipeline consuming kafka"
    );

    let outbox = OutboxPublisher::from_config(state.db.clone(), Applier::new((*state.layout).clone()), &kafka, retry)
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

    let (probes_stop, probes_stopped) = oneshot::channel::<()>();
    let probes = if metrics_port == 0 {
        tracing::info!("metrics.port is 0: no health and metrics listener");
        None
    } else {
        let (listener, bound) = common::bind(&args.metrics_host, metrics_port).await?;
        tracing::info!(addr = %bound, "health and metrics listening");
        let state = state.clone();
        Some(tokio::spawn(matyan::http::serve_probes(listener, state, async move {
            let _ = probes_stopped.await;
        })))
    };

    common::shutdown_signal().await;

    // The pipeline first: every run flushed, every watermark committed, then leave the group.
    let drained = pipeline.shutdown().await;
    matyan::actors::pipeline::set_serving(None);
    source.unsubscribe();
    let _ = outbox_stop.send(());
    if let Err(e) = outbox_task.await {
        tracing::warn!(error = %e, "outbox publisher task failed");
    }
    match tokio::time::timeout(OUTBOX_FINAL_PASS, outbox.publish_pending()).await {
        Ok(Ok(n)) => tracing::debug!(published = n, "last outbox pass done"),
        Ok(Err(e)) => tracing::warn!(error = %e, "last outbox pass failed; pending events stay for the next start"),
        Err(_) => tracing::warn!("last outbox pass timed out; pending events stay for the next start"),
    }
    let _ = probes_stop.send(());
    let served = match probes {
        Some(task) => task.await.context("health and metrics listener task failed")?,
        None => Ok(()),
    };
    drained.context("ingest pipeline did not shut down cleanly")?;
    served.context("health and metrics listener failed")?;
    tracing::info!("stopped");
    Ok(())
}
