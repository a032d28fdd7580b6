//! `matyan api`: the HTTP role alone (REST API, health probes, metrics), with no ingestion pipeline, until SIGINT or SIGTERM.
//!
//! Its REST deletions publish `delete_run` where the ingestion workers read: the embedded queue of
//! its store, or with `ingest.source = "kafka"` (`--source kafka`) `kafka.data_ingestion_topic`, as
//! the reference's API does in front of Kafka.

use std::sync::Arc;

use clap::Args;
use matyan::config::IngestSource;

use super::common;
use super::{ConfigArgs, ListenArgs};

/// Flags of `matyan api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Where REST deletions publish `delete_run`: the embedded queue of this store, or the Kafka
    /// topic (brokers from KAFKA_BOOTSTRAP_SERVERS) [default: ingest.source, i.e. embedded].
    #[arg(long, value_enum, value_name = "SOURCE")]
    pub source: Option<IngestSource>,
}

/// Serves the API until a shutdown signal, with `serve.addr` in the data directory meanwhile
/// (so `matyan kv dump` reaches the store through it), then closes the store.
pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let config = args.common.load(|c| {
        args.listen.apply(c);
        if let Some(source) = args.source {
            c.ingest.source = source;
        }
    })?;
    let handle = common::install_metrics(&config)?;
    let data_dir = config.storage.data_dir.clone();
    let host = config.server.host.clone();
    let port = config.server.port;
    let ui = matyan::http::ui::UiBuild::load(&config.ui)?;
    let mut state = common::open_state(config, handle).await?.with_ui(ui);
    if state.config.ingest.source == IngestSource::Kafka {
        let sink = common::kafka_sink(&state.config)?;
        state = state.with_record_sink(Arc::new(sink));
    }
    let (listener, _) = common::bind(&host, port).await?;
    common::serve_api_until_signal(listener, state, &data_dir).await?;
    tracing::info!("stopped");
    Ok(())
}
