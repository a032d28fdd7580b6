//! `matyan ingest`: the Kafka → storage role, with its own health and metrics listener, until SIGINT or SIGTERM.
//!
//! It consumes `kafka.data_ingestion_topic` in the group `kafka.consumer_group` through the actor
//! pipeline into the configured storage, publishes the outbox's control events to
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

use super::common;
use super::kafka_ingest::KafkaIngest;

/// Flags of `matyan ingest`.
pub type IngestArgs = common::WorkerArgs;

/// Runs the ingestion role until a shutdown signal.
pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let handle = common::install_metrics(&config)?;
    let metrics_port = config.metrics.port;
    let state = common::open_state(config, handle).await?;
    let ingest = KafkaIngest::start(&state)?;
    let state = state.with_pipeline(ingest.pipeline());
    let probes = common::ProbeListener::start(&args.metrics_host, metrics_port, &state).await?;

    common::shutdown_signal().await;

    // The pipeline first: every run flushed, every watermark committed, then leave the group.
    let drained = ingest.shutdown().await;
    let served = probes.stop().await;
    drained?;
    served?;
    tracing::info!("stopped");
    Ok(())
}
