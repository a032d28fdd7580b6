//! `matyan bench gateway`: N concurrent WebSocket clients speaking the SDK's protocol (frames of
//! 100 `log_metric` messages, stop-and-wait) against the whole `matyan serve` stack in this
//! process (gateway, embedded queue, ingest pipeline, embedded store, one loopback listener).
//! Baselines in the same run: the same frames encoded and appended to the queue by one task, and
//! the gateway with its queue but no pipeline (what the gateway alone takes on these cores).
//!
//! Figures: points/s accepted (every frame answered `ok`), points/s stored (every point applied by
//! the pipeline, from the first frame sent), p50/p99 frame latency (send to reply), peak RSS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use thiserror::Error;
use tokio_tungstenite::tungstenite::Message;

use super::memory::{MemoryPeaks, MemorySampler, stop as stop_sampler};
use crate::actors::{IngestPipeline, PipelineConfig};
use crate::app::AppState;
use crate::config::{Backend, Config};
use crate::gateway::{Gateway, QueueSink, datetime, frame};
use crate::ingest::queue::{AppendRecord, DEFAULT_PARTITIONS, INGESTION_GROUP};
use crate::ingest::{EmbeddedSource, Queue};

/// What to run.
#[derive(Debug, Clone)]
pub struct GatewayBenchConfig {
    /// Concurrent clients, one run each.
    pub clients: usize,
    /// Points each client logs.
    pub points_per_client: u64,
    /// Messages per frame (the SDK's `MATYAN_WS_BATCH_SIZE`, 100).
    pub frame_messages: usize,
}

/// One phase's figures.
#[derive(Debug, Clone)]
pub struct GatewayRow {
    pub phase: &'static str,
    pub points: u64,
    pub secs: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    /// The embedded engine's memory during the phase, each part's largest sample.
    pub memory: Option<MemoryPeaks>,
}

impl GatewayRow {
    /// Points per second over the phase.
    pub fn points_per_sec(&self) -> f64 {
        self.points as f64 / self.secs.max(1e-9)
    }
}

/// Why the benchmark failed.
#[derive(Debug, Error)]
pub enum GatewayBenchError {
    #[error("{0}")]
    Setup(String),
    #[error("client {client}: {reason}")]
    Client { client: usize, reason: String },
    #[error("timed out: {0}")]
    Timeout(String),
}

fn setup(e: impl std::fmt::Display) -> GatewayBenchError {
    GatewayBenchError::Setup(e.to_string())
}

fn run_id(client: usize) -> String {
    format!("{:032x}", 0xbe7c_0000_0000_0000_u64 + client as u64)
}

/// One frame of `n` metrics of `client` starting at `step`, as the SDK's `json.dumps` writes it.
fn frame_text(client: usize, step: u64, n: usize) -> String {
    let run = run_id(client);
    let mut out = String::with_capacity(n * 260);
    out.push('[');
    for i in 0..n as u64 {
        if i > 0 {
            out.push_str(", ");
        }
        let s = step + i;
        out.push_str(&format!(
            "{{\"type\": \"log_metric\", \"run_id\": \"{run}\", \"name\": \"loss\", \"value\": {}, \"step\": {s}, \
             \"epoch\": 0, \"context\": {{\"subset\": \"train\"}}, \"dtype\": \"float\", \
             \"client_datetime\": \"2026-01-01T00:00:00.123456+00:00\"}}",
            1.0 / (s as f64 + 1.0)
        ));
    }
    out.push(']');
    out
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get(((last as f64) * q).round() as usize).copied()
}

/// Runs both phases under `dir`.
pub async fn run(dir: &Path, cfg: &GatewayBenchConfig) -> Result<Vec<GatewayRow>, GatewayBenchError> {
    if cfg.clients == 0 || cfg.points_per_client == 0 || cfg.frame_messages == 0 {
        return Err(GatewayBenchError::Setup("clients, points and frame size must be positive".into()));
    }
    let mut config = Config::from_toml_str("bench", "").map_err(setup)?;
    config.storage.backend = Backend::Embedded;
    // The whole stack runs first, so that its peak is that of a fresh process (an allocator keeps
    // what earlier phases freed); the baselines follow and are printed first.
    config.storage.data_dir = dir.join("serve");
    let serve = gateway_phases(config.clone(), cfg, true).await?;
    let mut rows = vec![append_ceiling(&dir.join("ceiling"), &config, cfg).await?];
    config.storage.data_dir = dir.join("gateway-only");
    rows.extend(gateway_phases(config, cfg, false).await?);
    rows.extend(serve);
    Ok(rows)
}

/// The same records appended straight to a fresh queue by one task, in transactions of
/// `gateway.append_batch_bytes`: what the queue takes without the gateway.
async fn append_ceiling(
    dir: &Path,
    config: &Config,
    cfg: &GatewayBenchConfig,
) -> Result<GatewayRow, GatewayBenchError> {
    let mut config = config.clone();
    config.storage.data_dir = dir.to_path_buf();
    let state = AppState::open(config, None).await.map_err(setup)?;
    let queue =
        Queue::open(&state.db, &state.layout.dirs.ours, "data-ingestion", DEFAULT_PARTITIONS).await.map_err(setup)?;
    let limits = frame::FrameLimits { max_messages: cfg.frame_messages, max_record_bytes: 1 << 20 };
    let stamp = datetime::receive_timestamp(crate::clock::now_micros());
    let budget = state.config.gateway.append_batch_bytes;
    crate::bench::ingest::reset_peak_rss();
    let sampler = MemorySampler::start(&state.db);
    let start = Instant::now();
    let mut points = 0;
    for client in 0..cfg.clients {
        let run = run_id(client);
        let mut step = 0;
        while step < cfg.points_per_client {
            let mut values = Vec::new();
            // Frames are encoded as the gateway encodes them, then appended in budget-sized batches.
            let mut cost = 0;
            while cost < budget && step < cfg.points_per_client {
                let n = cfg.frame_messages.min((cfg.points_per_client - step) as usize);
                let text = frame_text(client, step, n);
                let encoded = frame::encode(&run, &text, &stamp, limits).map_err(setup)?;
                step += encoded.len() as u64;
                cost += encoded.iter().map(|v| queue.append_cost(Some(run.as_bytes()), v)).sum::<usize>();
                values.extend(encoded);
            }
            let records: Vec<AppendRecord<'_>> =
                values.iter().map(|v| (Some(run.as_bytes()), v.as_slice(), 0)).collect();
            queue.append(&records).await.map_err(setup)?;
            points += records.len() as u64;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(GatewayRow {
        phase: "queue append, 1 task",
        points,
        secs,
        p50_ms: None,
        p99_ms: None,
        peak_rss_kib: crate::bench::ingest::peak_rss_kib(),
        memory: stop_sampler(sampler).await,
    })
}

/// `matyan serve`'s stack in process, and the clients against it; without `pipeline`, the gateway
/// and its queue alone (what the gateway takes when nothing else competes for the cores).
async fn gateway_phases(
    config: Config,
    cfg: &GatewayBenchConfig,
    pipeline: bool,
) -> Result<Vec<GatewayRow>, GatewayBenchError> {
    let state = AppState::open(config, None).await.map_err(setup)?;
    let queue =
        Queue::open(&state.db, &state.layout.dirs.ours, &state.config.kafka.data_ingestion_topic, DEFAULT_PARTITIONS)
            .await
            .map_err(setup)?;
    let sink = QueueSink::start(queue.clone(), state.config.gateway.append_batch_bytes);
    let pipeline = if pipeline {
        let source = EmbeddedSource::new(queue, INGESTION_GROUP).await.map_err(setup)?;
        let config = PipelineConfig::from_config(&state.config);
        Some(
            IngestPipeline::start(state.db.clone(), (*state.layout).clone(), Arc::new(source), config)
                .map_err(setup)?,
        )
    } else {
        None
    };
    let gateway = Gateway::new(&state.config, Arc::new(sink), Arc::clone(&state.blobs.store));
    let state = state.with_gateway(gateway);
    let db = state.db.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(setup)?;
    let addr = listener.local_addr().map_err(setup)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::http::serve(listener, state, async move {
        let _ = stopped.await;
    }));

    crate::bench::ingest::reset_peak_rss();
    let sampler = MemorySampler::start(&db);
    let total = cfg.clients as u64 * cfg.points_per_client;
    let start = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..cfg.clients {
        let (points, frame_messages) = (cfg.points_per_client, cfg.frame_messages);
        clients.spawn(async move { client_loop(addr, client, points, frame_messages).await });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = clients.join_next().await {
        latencies.extend(joined.map_err(setup)??);
    }
    let accepted_secs = start.elapsed().as_secs_f64();
    let accepted_rss = crate::bench::ingest::peak_rss_kib();
    latencies.sort_by(f64::total_cmp);
    let accepted = GatewayRow {
        phase: if pipeline.is_some() { "gateway accepted" } else { "gateway alone accepted" },
        points: total,
        secs: accepted_secs,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        peak_rss_kib: accepted_rss,
        memory: None,
    };
    let Some(pipeline) = pipeline else {
        let _ = stop.send(());
        let _ = server.await;
        return Ok(vec![GatewayRow { memory: stop_sampler(sampler).await, ..accepted }]);
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while pipeline.counters().applied < total {
        if Instant::now() > deadline {
            return Err(GatewayBenchError::Timeout(format!("{} of {total} applied", pipeline.counters().applied)));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let stored_secs = start.elapsed().as_secs_f64();
    let stored_rss = crate::bench::ingest::peak_rss_kib();
    let memory = stop_sampler(sampler).await;
    let _ = stop.send(());
    let _ = server.await;
    pipeline.shutdown().await.map_err(setup)?;
    Ok(vec![
        accepted,
        GatewayRow {
            phase: "gateway stored",
            points: total,
            secs: stored_secs,
            p50_ms: None,
            p99_ms: None,
            peak_rss_kib: stored_rss,
            memory,
        },
    ])
}

/// One SDK-like client: connect, then stop-and-wait frames; returns each frame's latency in ms.
async fn client_loop(
    addr: SocketAddr,
    client: usize,
    points: u64,
    frame_messages: usize,
) -> Result<Vec<f64>, GatewayBenchError> {
    let fail = |reason: String| GatewayBenchError::Client { client, reason };
    let url = format!("ws://{addr}/api/v1/ws/runs/{}", run_id(client));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| fail(e.to_string()))?;
    let mut latencies = Vec::with_capacity((points as usize).div_ceil(frame_messages));
    let mut step = 0;
    while step < points {
        let n = frame_messages.min((points - step) as usize);
        let text = frame_text(client, step, n);
        let sent = Instant::now();
        ws.send(Message::text(text)).await.map_err(|e| fail(e.to_string()))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(reply))) => {
                    if !reply.as_str().starts_with(r#"{"status":"ok""#) {
                        return Err(fail(format!("frame at step {step} refused: {}", reply.as_str())));
                    }
                    break;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => return Err(fail(format!("connection ended: {other:?}"))),
            }
        }
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
        step += n as u64;
    }
    let _ = ws.close(None).await;
    Ok(latencies)
}
