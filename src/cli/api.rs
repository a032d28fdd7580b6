//! `matyan api`: the HTTP role alone (REST API, health probes, metrics), with no ingestion pipeline, until SIGINT or SIGTERM.

use clap::Args;

use super::common;
use super::{ConfigArgs, ListenArgs};

/// Flags of `matyan api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
}

/// Serves the API until a shutdown signal, with `serve.addr` in the data directory meanwhile
/// (so `matyan kv dump` reaches the store through it), then closes the store.
pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let config = args.common.load(|c| {
        args.listen.apply(c);
    })?;
    let handle = common::install_metrics(&config)?;
    let data_dir = config.storage.data_dir.clone();
    let host = config.server.host.clone();
    let port = config.server.port;
    let ui = matyan::http::ui::UiBuild::load(&config.ui)?;
    let state = common::open_state(config, handle).await?.with_ui(ui);
    let (listener, _) = common::bind(&host, port).await?;
    common::serve_api_until_signal(listener, state, &data_dir).await?;
    tracing::info!("stopped");
    Ok(())
}
