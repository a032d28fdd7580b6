//! `matyan gateway`: the SDK gateway alone, producing the SDK's records to
//! `kafka.data_ingestion_topic` (brokers from KAFKA_BOOTSTRAP_SERVERS) exactly as the reference
//! gateway does, with uploads into the local blob store, until SIGINT or SIGTERM.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use matyan::blobs::Blobs;
use matyan::gateway::Gateway;

use super::ConfigArgs;
use super::common;

/// The file under the data directory holding the address of a running gateway.
pub const GATEWAY_ADDR_FILE: &str = "gateway.addr";

/// How long queued records may take to reach Kafka at shutdown.
const FLUSH_AT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// Flags of `matyan gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Address to listen on.
    #[arg(long, value_name = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (the reference gateway's); 0 picks a free one, written to
    /// `<data dir>/gateway.addr`.
    #[arg(long, value_name = "PORT", default_value_t = 53801)]
    pub port: u16,
}

/// Serves the gateway until a shutdown signal, then waits for queued records to reach Kafka.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let config = args.common.load(|_| {})?;
    let handle = common::install_metrics(&config)?;
    let sink = Arc::new(common::kafka_sink(&config)?);
    let blobs = Blobs::from_config(&config).context("blobs.uri_secret")?;
    let gateway = Gateway::new(&config, sink.clone(), blobs.store);
    let router = gateway.standalone_routes(handle);

    let (listener, bound) = common::bind(&args.host, args.port).await?;
    let addr_file = config.storage.data_dir.join(GATEWAY_ADDR_FILE);
    common::write_addr_file(&addr_file, common::connectable(bound))
        .with_context(|| format!("cannot write {}", addr_file.display()))?;
    tracing::info!(
        addr = %bound,
        topic = %config.kafka.data_ingestion_topic,
        bootstrap = %config.kafka.bootstrap_servers,
        "gateway listening"
    );
    let closing = gateway.clone();
    let served = matyan::http::serve_router(listener, router, async move {
        common::shutdown_signal().await;
        closing.close_connections();
    })
    .await;
    if let Err(e) = std::fs::remove_file(&addr_file) {
        tracing::warn!(error = %e, path = %addr_file.display(), "cannot remove address file");
    }
    if let Err(e) = sink.flush(FLUSH_AT_SHUTDOWN) {
        tracing::warn!(error = %e, "records still queued for kafka at shutdown");
    }
    served.context("gateway listener failed")?;
    tracing::info!("stopped");
    Ok(())
}
