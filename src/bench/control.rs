//! `matyan bench control`: deletes R runs of B blobs each through the REST API of the whole
//! `matyan serve` stack in this process (router, embedded ingestion queue and pipeline, outbox
//! publisher, embedded control topic, control workers, the configured blob store: a local
//! directory or an S3 bucket), and, as the baseline of the same run, removes the same number of
//! objects with the janitor's cleaning alone on that store. The command runs it once per store it
//! is given, the local one first, so S3's figures print beside the local store's.
//!
//! Run ids are random per invocation, so a shared bucket's leftovers of an earlier invocation are
//! never counted; an S3 bucket is created if missing.
//!
//! Figures: objects removed per second (baseline: the janitor alone on the store; end to end: from
//! the first REST `DELETE` to the last object gone), and per run the time from its `DELETE` to its
//! last object gone (p50, p99, max). The end-to-end latency includes the outbox publisher's poll
//! interval (1 s, as in `matyan serve`) and the wait behind the runs cleaned before (one janitor
//! per control partition, one partition).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use thiserror::Error;
use tower::ServiceExt as _;

use crate::actors::{IngestPipeline, PipelineConfig};
use crate::app::AppState;
use crate::blobs::{BlobStore, S3Settings, S3Store};
use crate::config::{Backend, BlobBackend, Config};
use crate::control::janitor::{Clean, clean};
use crate::control::stats::ControlStats;
use crate::control::{ControlDeadLetters, ControlWorkers, WorkersConfig};
use crate::gateway::QueueSink;
use crate::ingest::apply::Applier;
use crate::ingest::outbox::OutboxPublisher;
use crate::ingest::queue::{AppendRecord, DEFAULT_PARTITIONS, INGESTION_GROUP};
use crate::ingest::{EmbeddedSource, Queue};

/// What to run.
#[derive(Debug, Clone)]
pub struct ControlBenchConfig {
    /// Runs deleted.
    pub runs: usize,
    /// Blobs of each run.
    pub blobs_per_run: usize,
    /// The stack's configuration, the blob store (`blobs`) included. Its storage is replaced by an
    /// embedded store under the bench's directory, and a local blob store goes there too.
    pub config: Config,
}

/// The figures.
#[derive(Debug, Clone)]
pub struct ControlReport {
    /// Objects removed in each phase.
    pub objects: u64,
    /// The janitor alone on the store: seconds to remove every object.
    pub janitor_secs: f64,
    /// End to end: seconds from the first `DELETE` to the last object gone.
    pub end_to_end_secs: f64,
    /// Per run, seconds from its `DELETE` to its last object gone, sorted.
    pub per_run_secs: Vec<f64>,
    /// Objects the janitor reported removed: baseline, end to end.
    pub removed: (u64, u64),
}

/// Why the benchmark failed.
#[derive(Debug, Error)]
pub enum ControlBenchError {
    #[error("{0}")]
    Setup(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

fn setup(e: impl std::fmt::Display) -> ControlBenchError {
    ControlBenchError::Setup(e.to_string())
}

fn run_id(nonce: u64, i: usize) -> String {
    format!("{nonce:016x}{:016x}", 0xc0de_0000_0000_0000_u64 + i as u64)
}

/// Blob writes in flight while the runs' objects are put.
const PUTS_IN_FLIGHT: usize = 64;

/// The `p` quantile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get(((last as f64) * q).round() as usize).copied()
}

/// Longest wait of a phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);

async fn put_blobs(store: &Arc<dyn BlobStore>, runs: &[String], per_run: usize) -> Result<(), ControlBenchError> {
    use futures_util::StreamExt as _;
    let keys = runs.iter().flat_map(|run| (0..per_run).map(move |i| format!("{run}/seq/images/{i}.png")));
    let mut puts = futures_util::stream::iter(keys)
        .map(|key| async move { store.put(&key, vec![0u8; 64], None).await })
        .buffer_unordered(PUTS_IN_FLIGHT);
    while let Some(result) = puts.next().await {
        result.map_err(setup)?;
    }
    Ok(())
}

/// The store of the baseline: a directory of its own, or the configured bucket (created if missing).
async fn baseline_store(dir: &Path, config: &Config) -> Result<Arc<dyn BlobStore>, ControlBenchError> {
    Ok(match config.blobs.backend {
        BlobBackend::Local => Arc::new(crate::blobs::LocalDirStore::new(dir.join("baseline"))),
        BlobBackend::S3 => {
            let store = S3Store::new(&S3Settings::from_config(&config.blobs));
            store.create_bucket().await.map_err(setup)?;
            Arc::new(store)
        }
    })
}

/// Runs the baseline, then the end-to-end phase, under `dir`.
pub async fn run(dir: &Path, cfg: &ControlBenchConfig) -> Result<ControlReport, ControlBenchError> {
    if cfg.runs == 0 || cfg.blobs_per_run == 0 {
        return Err(ControlBenchError::Setup("runs and blobs per run must be positive".into()));
    }
    let objects = (cfg.runs * cfg.blobs_per_run) as u64;
    let mut config = cfg.config.clone();
    config.storage.backend = Backend::Embedded;
    if config.blobs.backend == BlobBackend::Local {
        config.blobs.dir = dir.join("serve-blobs");
    }
    let (baseline_nonce, nonce): (u64, u64) = (rand::random(), rand::random());
    let baseline_runs: Vec<String> = (0..cfg.runs).map(|i| run_id(baseline_nonce, i)).collect();
    let runs: Vec<String> = (0..cfg.runs).map(|i| run_id(nonce, i)).collect();

    // Baseline: the janitor's cleaning alone, one run after the other, on the same kind of store.
    let baseline = baseline_store(dir, &config).await?;
    put_blobs(&baseline, &baseline_runs, cfg.blobs_per_run).await?;
    tracing::info!(objects, "baseline blobs written");
    let stats = Arc::new(ControlStats::default());
    let started = Instant::now();
    for run in &baseline_runs {
        let job = Clean { run_id: run.clone(), blob_keys: Vec::new() };
        clean(Arc::clone(&baseline), WorkersConfig::default().janitor, Arc::clone(&stats), job).await.map_err(setup)?;
    }
    let janitor_secs = started.elapsed().as_secs_f64();
    tracing::info!(janitor_secs, "baseline done");

    config.storage.data_dir = dir.join("serve");
    let state = AppState::open(config, None).await.map_err(setup)?;
    let (db, ours) = (state.db.clone(), state.layout.dirs.ours.clone());
    let ingestion =
        Queue::open(&db, &ours, &state.config.kafka.data_ingestion_topic, DEFAULT_PARTITIONS).await.map_err(setup)?;
    let pipeline = IngestPipeline::start(
        db.clone(),
        (*state.layout).clone(),
        Arc::new(EmbeddedSource::new(ingestion.clone(), INGESTION_GROUP).await.map_err(setup)?),
        PipelineConfig::from_config(&state.config),
    )
    .map_err(setup)?;
    let control_queue = Queue::open(&db, &ours, &state.config.kafka.control_events_topic, 1).await.map_err(setup)?;
    let applier = Applier::new((*state.layout).clone());
    let retry = state.config.storage.retry.options();
    let publisher = OutboxPublisher::to_queue(db.clone(), applier.clone(), control_queue.clone(), retry);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let outbox = tokio::spawn(async move {
        publisher
            .run(Duration::from_secs(1), async move {
                let _ = stopped.await;
            })
            .await;
    });
    let control = ControlWorkers::start(
        Arc::new(EmbeddedSource::new(control_queue, &state.config.control.consumer_group).await.map_err(setup)?),
        Arc::clone(&state.blobs.store),
        ControlDeadLetters::embedded(db.clone(), applier, retry),
        WorkersConfig::from_config(&state.config),
    )
    .map_err(setup)?;
    let sink = QueueSink::start(ingestion.clone(), state.config.gateway.append_batch_bytes);
    let state = state.with_record_sink(Arc::new(sink));

    // The runs, created through ingestion as the SDK's create_run does, and their blobs.
    let values: Vec<(String, Vec<u8>)> = runs
        .iter()
        .map(|r| {
            let v = serde_json::json!({"type": "create_run", "run_id": r, "timestamp": "2026-01-01T00:00:00Z",
                "payload": {"force_resume": false}});
            (r.clone(), serde_json::to_vec(&v).unwrap_or_default())
        })
        .collect();
    let records: Vec<AppendRecord<'_>> = values.iter().map(|(k, v)| (Some(k.as_bytes()), v.as_slice(), 0)).collect();
    ingestion.append(&records).await.map_err(setup)?;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while pipeline.counters().applied < cfg.runs as u64 {
        if Instant::now() > deadline {
            return Err(ControlBenchError::Timeout("runs not created".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    put_blobs(&state.blobs.store, &runs, cfg.blobs_per_run).await?;
    tracing::info!(objects, "runs and blobs written; deleting");

    let started = Instant::now();
    let mut deleted_at = Vec::with_capacity(runs.len());
    for run in &runs {
        let req = Request::builder()
            .method("DELETE")
            .uri(format!("/api/v1/rest/runs/{run}/"))
            .body(Body::empty())
            .map_err(setup)?;
        let resp = crate::http::service(state.clone()).oneshot(req).await.map_err(setup)?;
        if !resp.status().is_success() {
            return Err(ControlBenchError::Setup(format!("DELETE {run}: {}", resp.status())));
        }
        deleted_at.push(Instant::now());
    }
    let mut cleaning_order: Vec<usize> = (0..runs.len()).collect();
    cleaning_order.sort_by_key(|&i| (ingestion.partition_for_key(runs[i].as_bytes()), i));
    let mut gone: Vec<Option<Instant>> = vec![None; runs.len()];
    let mut seen = 0usize;
    while seen < runs.len() {
        if Instant::now() > deadline + PHASE_TIMEOUT {
            return Err(ControlBenchError::Timeout(format!("{:?}", control.counters())));
        }
        // The janitor cleans runs one at a time in the order their run_deleted events reach the
        // one control partition: the outbox's order, by ingestion partition, then by offset
        // (deletion order). A run counts as processed right after its last object is removed, so
        // the k-th processed event is the k-th run of that order. Reading the counter costs no IO
        // (listing the directories would compete with the janitor for the disk).
        let processed = (control.counters().processed as usize).min(runs.len());
        let now = Instant::now();
        for &i in &cleaning_order[seen..processed] {
            gone[i] = Some(now);
        }
        seen = seen.max(processed);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for run in &runs {
        let left = state.blobs.store.list(&format!("{run}/"), None, 1).await.map_err(setup)?;
        if !left.objects.is_empty() {
            return Err(ControlBenchError::Setup(format!("{run} has objects left after its cleanup")));
        }
    }
    let last = gone.iter().flatten().max().copied().unwrap_or(started);
    let end_to_end_secs = last.duration_since(started).as_secs_f64();
    let mut per_run_secs: Vec<f64> = gone
        .iter()
        .zip(&deleted_at)
        .filter_map(|(g, d)| g.map(|g| g.saturating_duration_since(*d).as_secs_f64()))
        .collect();
    per_run_secs.sort_by(f64::total_cmp);

    let removed = (stats.snapshot().objects_removed, control.counters().objects_removed);
    let _ = stop.send(());
    let _ = outbox.await;
    control.shutdown().await.map_err(setup)?;
    pipeline.shutdown().await.map_err(setup)?;
    Ok(ControlReport { objects, janitor_secs, end_to_end_secs, per_run_secs, removed })
}
