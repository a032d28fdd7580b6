//! `matyan api`: the HTTP role alone (REST API, health probes, metrics), with no ingestion pipeline, until SIGINT or SIGTERM.

use clap::Args;

use super::ConfigArgs;
use super::common;

/// Flags of `matyan api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Address to listen on [default: server.host, i.e. 0.0.0.0].
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: server.port, i.e. 53800].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
}

/// Serves the API until a shutdown signal, with `serve.addr` in the data directory meanwhile
/// (so `matyan kv dump` reaches the store through it), then closes the store.
pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let config = args.common.load(|c| {
        if let Some(host) = &args.host {
            c.server.host = host.clone();
        }
        if let Some(port) = args.port {
            c.server.port = port;
        }
    })?;
    let handle = common::install_metrics(&config)?;
    let data_dir = config.storage.data_dir.clone();
    let host = config.server.host.clone();
    let port = config.server.port;
    let state = common::open_state(config, handle).await?;
    let (listener, _) = common::bind(&host, port).await?;
    common::serve_api_until_signal(listener, state, &data_dir).await?;
    tracing::info!("stopped");
    Ok(())
}
