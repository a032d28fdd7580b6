//! `matyan serve`: every role in one process on the configured storage (embedded by default), until
//! SIGINT or SIGTERM.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use matyan::actors::{IngestPipeline, PipelineConfig, PipelineHandle};
use matyan::app::AppState;
use matyan::ingest::queue::{DEFAULT_PARTITIONS, INGESTION_GROUP};
use matyan::ingest::{EmbeddedSource, Queue};

use super::common;
use super::{ConfigArgs, ListenArgs};

/// The file under the data directory holding the address of a running server.
pub use super::common::ADDR_FILE;

/// Flags of `matyan serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Enables the chaos admin route `POST /admin/chaos/kill/` [default: ingest.chaos].
    #[arg(long)]
    pub chaos: bool,
}

/// Runs the server until a shutdown signal, then removes `serve.addr` and closes the store.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.common.load(|c| {
        args.listen.apply(c);
        if args.chaos {
            c.ingest.chaos = true;
        }
    })?;
    let handle = common::install_metrics(&config)?;
    let data_dir = config.storage.data_dir.clone();
    let host = config.server.host.clone();
    let port = config.server.port;
    let ui = matyan::http::ui::UiBuild::load(&config.ui)?;
    let state = common::open_state(config, handle).await?.with_ui(ui);
    let pipeline = start_ingest(&state).await?;

    let (listener, _) = common::bind(&host, port).await?;
    let served = common::serve_api_until_signal(listener, state, &data_dir).await;
    // Ingestion stops before the store closes: every run flushed, every watermark committed.
    matyan::actors::pipeline::set_serving(None);
    let drained = pipeline.shutdown().await;
    served?;
    drained.context("ingest pipeline did not shut down cleanly")?;
    // The router (and with it the last handle on the store) was dropped when serving ended: every
    // committed transaction is already synced, so dropping closes the store cleanly.
    tracing::info!("stopped");
    Ok(())
}

/// Opens the embedded queue's ingestion topic (created with 6 partitions if absent) and starts the
/// ingest pipeline on it as the consumer group `ingestion-workers`.
async fn start_ingest(state: &AppState) -> anyhow::Result<PipelineHandle> {
    let topic = state.config.kafka.data_ingestion_topic.as_str();
    let ours = &state.layout.dirs.ours;
    let queue = match Queue::open_existing(&state.db, ours, topic).await? {
        Some(queue) => queue,
        None => Queue::open(&state.db, ours, topic, DEFAULT_PARTITIONS).await?,
    };
    let partitions = queue.partitions();
    let source = EmbeddedSource::new(queue, INGESTION_GROUP)
        .await
        .with_context(|| format!("cannot open the consumer of topic {topic:?}"))?;
    let pipeline = IngestPipeline::start(
        state.db.clone(),
        (*state.layout).clone(),
        Arc::new(source),
        PipelineConfig::from_config(&state.config),
    )
    .context("cannot start the ingest pipeline")?;
    matyan::actors::pipeline::set_serving(Some(pipeline.clone()));
    tracing::info!(
        topic,
        partitions,
        group = INGESTION_GROUP,
        chaos = state.config.ingest.chaos,
        "ingest pipeline consuming the embedded queue"
    );
    Ok(pipeline)
}
