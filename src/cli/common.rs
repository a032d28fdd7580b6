//! Start-up pieces shared by the server roles (`serve`, `api`, `ingest`): metrics, storage, listeners, signals.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use matyan::app::AppState;
use matyan::config::Config;
use matyan::gateway::KafkaSink;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// Flags of the worker roles (`ingest`, `control`): the configuration and their health and
/// metrics listener.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: super::ConfigArgs,
    /// Address of the health and metrics listener.
    #[arg(long, value_name = "HOST", default_value = "0.0.0.0")]
    pub metrics_host: String,
    /// Port of the health and metrics listener; 0 disables it [default: metrics.port, i.e. 9090].
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
}

impl WorkerArgs {
    /// Loads the configuration (see [`super::ConfigArgs::load`]) with `--metrics-port` applied.
    pub fn load(&self) -> anyhow::Result<Config> {
        self.common.load(|c| {
            if let Some(port) = self.metrics_port {
                c.metrics.port = port;
            }
        })
    }
}

/// The file under the data directory holding the address of a running API server.
pub const ADDR_FILE: &str = "serve.addr";

/// Sends one admin request to the `matyan serve` that holds the store under `data_dir` (locked by
/// it, `locked` says how), found by its [`ADDR_FILE`]; returns the server's address and the
/// answer's body once the server accepted it (200), else an error naming `what` and the server's
/// answer. `head` is the request line and headers without the blank line; `body` follows them.
/// HTTP/1.0: the server closes the connection at the end of the body, so no chunked decoding.
pub fn admin_request(
    data_dir: &Path,
    locked: &str,
    what: &str,
    missing_hint: &str,
    head: &str,
    body: &[u8],
) -> anyhow::Result<(String, BufReader<TcpStream>)> {
    let addr_file = data_dir.join(ADDR_FILE);
    let addr = std::fs::read_to_string(&addr_file).with_context(|| {
        format!(
            "the store is locked by another process ({locked}) and {} does not exist: \
             stop that process, or run `matyan serve` {missing_hint}",
            addr_file.display()
        )
    })?;
    let addr = addr.trim().to_owned();
    let mut stream =
        TcpStream::connect(&addr).with_context(|| format!("store locked and the server at {addr} does not answer"))?;
    write!(stream, "{head}\r\nHost: {addr}\r\n\r\n")?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    if status.split_whitespace().nth(1).is_none_or(|code| code != "200") {
        let mut rest = String::new();
        reader.read_to_string(&mut rest)?;
        anyhow::bail!("server at {addr} refused {what}: {} {}", status.trim(), rest.trim());
    }
    Ok((addr, reader))
}

/// How long open requests may run after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Installs the Prometheus recorder when `metrics.enabled` (with its periodic upkeep) and records
/// the build info.
pub fn install_metrics(config: &Config) -> anyhow::Result<Option<PrometheusHandle>> {
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
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                h.run_upkeep();
            }
        });
    }
    Ok(handle)
}

/// Opens the configured storage and its directories.
pub async fn open_state(config: Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<AppState> {
    let data_dir = config.storage.data_dir.clone();
    let backend = config.storage.backend.as_str();
    let state = AppState::open(config, metrics)
        .await
        .with_context(|| format!("cannot open {backend} storage (data dir {})", data_dir.display()))?;
    tracing::info!(backend, engine = state.db.backend(), data_dir = %data_dir.display(), "storage open");
    Ok(state)
}

/// The producer of ingestion records (gateway frames, REST `delete_run`) to
/// `kafka.data_ingestion_topic`, with the `[gateway]` delivery settings.
pub fn kafka_sink(config: &Config) -> anyhow::Result<KafkaSink> {
    let g = &config.gateway;
    KafkaSink::new(
        matyan::ingest::kafka::client_config(&config.kafka),
        &config.kafka.data_ingestion_topic,
        g.kafka_delivery_timeout(),
        g.kafka_linger(),
    )
    .context("cannot create the gateway's kafka producer")
}

/// Binds `host:port` and returns the listener with its bound address.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((host, port)).await.with_context(|| format!("cannot listen on {host}:{port}"))?;
    let bound = listener.local_addr().context("cannot read the bound address")?;
    Ok((listener, bound))
}

/// Serves the full HTTP API on `listener` until SIGINT or SIGTERM, with `<data_dir>/serve.addr`
/// holding the address meanwhile. After the signal, open requests get a grace period; the address
/// file is removed whatever the outcome. Returns the server's result.
pub async fn serve_api_until_signal(listener: TcpListener, state: AppState, data_dir: &Path) -> anyhow::Result<()> {
    let bound = listener.local_addr().context("cannot read the bound address")?;
    let shutdown = shutdown_signal();
    let addr_file = data_dir.join(ADDR_FILE);
    write_addr_file(&addr_file, connectable(bound)).with_context(|| format!("cannot write {}", addr_file.display()))?;
    tracing::info!(addr = %bound, addr_file = %addr_file.display(), "listening");

    // A client holding a connection open must not keep the process (and the store) alive forever.
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let stopping = Arc::clone(&stopping);
        async move {
            shutdown.await;
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
    served.context("http server failed")
}

/// An address a client on this machine can connect to: a wildcard bind becomes loopback.
pub fn connectable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), bound.port()),
        _ => bound,
    }
}

/// Writes `addr` and a newline to `path` atomically (write then rename), so a reader never sees a
/// partial address.
pub fn write_addr_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("addr.tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// The health and metrics listener of a worker role (`matyan ingest`, `matyan control`), which
/// has no API of its own: `/health/live/`, `/health/ready/` and `/metrics/` on `metrics.port`.
pub struct ProbeListener {
    stop: tokio::sync::oneshot::Sender<()>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl ProbeListener {
    /// Starts serving the probes of `state` on `host:port`; port 0 starts nothing (logged).
    pub async fn start(host: &str, port: u16, state: &AppState) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = if port == 0 {
            tracing::info!("metrics.port is 0: no health and metrics listener");
            None
        } else {
            let (listener, bound) = bind(host, port).await?;
            tracing::info!(addr = %bound, "health and metrics listening");
            Some(tokio::spawn(matyan::http::serve_probes(listener, state.clone(), async move {
                let _ = stopped.await;
            })))
        };
        Ok(Self { stop, task })
    }

    /// Stops the listener and waits for it; the role stops it after draining, so probes answer
    /// until then.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match self.task {
            Some(task) => task
                .await
                .context("health and metrics listener task failed")?
                .context("health and metrics listener failed"),
            None => Ok(()),
        }
    }
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a role calls it before it announces its address,
/// so a signal sent as soon as the address is readable stops it cleanly instead of killing it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind).inspect_err(|e| tracing::warn!(error = %e, signal = name, "cannot listen for the signal")).ok()
        };
        let (mut interrupt, mut terminate) =
            (listen(SignalKind::interrupt(), "sigint"), listen(SignalKind::terminate(), "sigterm"));
        async move {
            tokio::select! {
                _ = recv(interrupt.as_mut()) => tracing::info!(signal = "sigint", "shutting down"),
                _ = recv(terminate.as_mut()) => tracing::info!(signal = "sigterm", "shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for sigint");
            std::future::pending::<()>().await;
        }
        tracing::info!(signal = "sigint", "shutting down");
    }
}

/// The next delivery of `signal`; never, when it could not be listened for.
#[cfg(unix)]
async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
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
