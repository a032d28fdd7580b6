//! `matyan serve`: every role in one process on the configured storage (embedded by default), until
//! SIGINT or SIGTERM.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use std::sync::Arc;

use matyan::actors::{IngestPipeline, PipelineConfig, PipelineHandle};
use matyan::app::AppState;
use matyan::ingest::queue::{DEFAULT_PARTITIONS, INGESTION_GROUP};
use matyan::ingest::{EmbeddedSource, Queue};
use tokio::net::TcpListener;

use super::ConfigArgs;

/// The file under the data directory holding the address of a running server.
pub const ADDR_FILE: &str = "serve.addr";

/// How long open requests may run after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Flags of `matyan serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Address to listen on [default: server.host, i.e. 0.0.0.0].
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: server.port, i.e. 53800].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Enables the chaos admin route `POST /admin/chaos/kill/` [default: ingest.chaos].
    #[arg(long)]
    pub chaos: bool,
}

/// Runs the server until a shutdown signal, then removes `serve.addr` and closes the store.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.common.load(|c| {
        if let Some(host) = &args.host {
            c.server.host = host.clone();
        }
        if let Some(port) = args.port {
            c.server.port = port;
        }
        if args.chaos {
            c.ingest.chaos = true;
        }
    })?;
    let handle = if config.metrics.enabled {
        Some(matyan::metrics::install_prometheus().context("cannot install the metrics recorder")?)
    } else {
        None
    };
    matyan::metrics::build_info(env!("CARGO_PKG_VERSION"));
    if let Some(h) = &handle {
        // Histograms need periodic upkeep to drain their buffers.
        let h = h.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                h.run_upkeep();
            }
        });
    }

    let data_dir = config.storage.data_dir.clone();
    let host = config.server.host.clone();
    let port = config.server.port;
    let backend = config.storage.backend.as_str();
    let state = AppState::open(config, handle)
        .await
        .with_context(|| format!("cannot open {backend} storage (data dir {})", data_dir.display()))?;
    tracing::info!(backend, engine = state.db.backend(), data_dir = %data_dir.display(), "storage open");
    let pipeline = start_ingest(&state).await?;

    let listener =
        TcpListener::bind((host.as_str(), port)).await.with_context(|| format!("cannot listen on {host}:{port}"))?;
    let bound = listener.local_addr().context("cannot read the bound address")?;
    let addr_file = data_dir.join(ADDR_FILE);
    write_addr_file(&addr_file, connectable(bound)).with_context(|| format!("cannot write {}", addr_file.display()))?;
    tracing::info!(addr = %bound, addr_file = %addr_file.display(), "listening");

    // After the signal, open requests get a grace period; a client holding a connection open
    // must not keep the process (and the store) alive forever.
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = {
        let stopping = std::sync::Arc::clone(&stopping);
        async move {
            shutdown_signal().await;
            stopping.notify_one();
        }
    };
    let served = tokio::select! {
        r = matyan::http::serve(listener, state, signal) => r,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace_ms = SHUTDOWN_GRACE.as_millis() as u64, "open connections cut after the grace period");
            Ok(())
        }
    };
    // Whatever the outcome, the address is no longer served.
    if let Err(e) = std::fs::remove_file(&addr_file) {
        tracing::warn!(error = %e, path = %addr_file.display(), "cannot remove address file");
    }
    // Ingestion stops before the store closes: every run flushed, every watermark committed.
    matyan::actors::pipeline::set_serving(None);
    let drained = pipeline.shutdown().await;
    served.context("http server failed")?;
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

/// An address a client on this machine can connect to: a wildcard bind becomes loopback.
fn connectable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), bound.port()),
        _ => bound,
    }
}

/// Writes `addr` and a newline to `path` atomically (write then rename), so a reader never sees a
/// partial address.
fn write_addr_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("addr.tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for sigint");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "sigint", "shutting down"),
        () = terminate => tracing::info!(signal = "sigterm", "shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_written_as_loopback() {
        let a: SocketAddr = "0.0.0.0:1234".parse().unwrap();
        assert_eq!(connectable(a).to_string(), "127.0.0.1:1234");
        let a: SocketAddr = "[::]:1234".parse().unwrap();
        assert_eq!(connectable(a).to_string(), "[::1]:1234");
        let a: SocketAddr = "10.0.0.1:1234".parse().unwrap();
        assert_eq!(connectable(a), a);
    }

    #[test]
    fn the_addr_file_holds_the_address_and_a_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(ADDR_FILE);
        write_addr_file(&path, "127.0.0.1:9".parse().unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1:9\n");
        assert!(!dir.path().join("sub").join("serve.addr.tmp").exists());
    }
}
