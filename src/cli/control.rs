//! `matyan control`: the control role alone, until SIGINT or SIGTERM.
//!
//! It consumes `kafka.control_events_topic` in the group `control.consumer_group`
//! (`control-workers`) and removes deleted runs' objects from the blob store (`BlobJanitor`),
//! committing an event's offset only once its work is done; malformed events go to
//! `kafka.dead_letter_topic` with their reason. It serves `/health/live/`, `/health/ready/` and
//! `/metrics/` on `metrics.port` (0 disables the listener). The outbox that feeds the topic is
//! published by `matyan ingest` (run deletions) and the API processes.

use super::common;
use super::control_workers::Control;

/// Flags of `matyan control`.
pub type ControlArgs = common::WorkerArgs;

/// Runs the control role until a shutdown signal.
pub async fn run(args: ControlArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let handle = common::install_metrics(&config)?;
    let metrics_port = config.metrics.port;
    let state = common::open_state(config, handle).await?;
    let control = Control::start_kafka(&state)?;
    let state = state.with_control(control.handle());
    let probes = common::ProbeListener::start(&args.metrics_host, metrics_port, &state).await?;

    common::shutdown_signal().await;

    let drained = control.shutdown().await;
    let served = probes.stop().await;
    drained?;
    served?;
    tracing::info!("stopped");
    Ok(())
}
