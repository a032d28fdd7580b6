//! `matyan bench ingest`: N `log_metric` records of the golden shape through the ingest pipeline
//! into a fresh fjall store, from the embedded queue and (optionally) from a Kafka topic, with the
//! source's bare read rate measured in the same invocation as the ceiling.
//!
//! Method:
//! - **Rate**: the clock starts when the pipeline is running and the first record is about to be
//!   appended (embedded, live), or when the pipeline starts on a queue already holding every
//!   record (embedded, backlog) or on the pre-produced topic (Kafka); it stops when the pipeline's
//!   `applied` counter (messages applied in committed storage transactions) reaches every record.
//!   Points/s is metric records over that time. The live figure cannot exceed the appender's
//!   rate; the backlog figure is the pipeline's own.
//! - **Visibility** (embedded only): the records are appended in batches while the pipeline runs;
//!   the last record of every batch is a sample, stamped when its append transaction commits. A
//!   poller re-reads each pending sample's `(run, loss, step)` point from storage every 2 ms in a
//!   fresh snapshot and records the time it first sees it. The figure therefore includes any
//!   backlog the pipeline has at that moment (the producer appends as fast as it can), so it is an
//!   upper bound of the latency under saturation, with 2 ms resolution. The Kafka topic is filled
//!   before its pipeline starts (to compare its rate with the bare consumer on the same data), so
//!   no visibility figure is taken there.
//! - **Peak RSS**: `VmHWM` of `/proc/self/status`, reset before each phase by writing `5` to
//!   `/proc/self/clear_refs` (when the kernel allows it; otherwise the figure is the process peak).
//! - **Ceilings**: the embedded queue read back page by page (500 records per read, no apply), and
//!   a bare rdkafka consumer subscribed in a fresh group reading the whole topic (no apply). With
//!   the trimmer on, the live queue is trimmed under the pipeline, so the queue's ceiling is read
//!   on the backlog phase's store once filled, before its pipeline starts.
//! - **Trimming** (`trim`, off by default so figures stay comparable with earlier ones): the live
//!   phase runs the queue trimmer as `matyan serve` does (`QueueTrimmer` every interval, the
//!   shipped `[queue]` retention and batch), and says how many records it removed. After the
//!   phase's clock stops, one more pass (timed on its own) trims what the group had committed by
//!   then and the phase's last interval left, so that the store's size on disk after it does not
//!   depend on where the phase ended between two passes. The records applied since the pipeline's
//!   last commit of offsets stay.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;
use tokio::sync::mpsc;

use super::memory::{MemoryPeaks, MemorySampler, stop};
use crate::actors::{IngestPipeline, PipelineConfig, PipelineError, PipelineHandle};
use crate::ingest::kafka::{KafkaSource, KafkaSourceError};
use crate::ingest::queue::{AppendRecord, EmbeddedSource, INGESTION_GROUP, Queue, QueueError};
use crate::ingest::queue_trim::{QueueTrimmer, TrimSettings};
use crate::storage::context_id::context_to_id;
use crate::storage::kv::{Database, EmbeddedEngine, EmbeddedOptions, KvError, Limits};
use crate::storage::layout::{Columns, Layout, LayoutError, SeqId, SequenceLayoutKind};

/// The benchmark's parameters.
#[derive(Debug, Clone)]
pub struct IngestBenchConfig {
    /// `log_metric` records (points) to ingest.
    pub records: u64,
    /// Runs the records are spread over (one `create_run` each, before its points).
    pub runs: u32,
    /// Partitions of the embedded queue and of the Kafka topic.
    pub partitions: u32,
    /// Records per append transaction (embedded) — also the visibility sampling period.
    pub append_batch: usize,
    /// Kafka bootstrap servers; `None` skips the Kafka phases.
    pub kafka: Option<String>,
    /// Longest wait for one phase to finish.
    pub timeout: Duration,
    /// The sequence layout of the stores written.
    pub layout: SequenceLayoutKind,
    /// The stores' engine memory (`[storage]` `cache_bytes`, `memtable_bytes`).
    pub store: EmbeddedOptions,
    /// The queue trimmer of the live phase: its interval and settings (`[queue]`), `None` to run
    /// the live phase without it.
    pub trim: Option<(Duration, TrimSettings)>,
}

impl Default for IngestBenchConfig {
    fn default() -> Self {
        Self {
            records: 1_000_000,
            runs: 8,
            partitions: 6,
            append_batch: 500,
            kafka: None,
            timeout: Duration::from_secs(600),
            layout: SequenceLayoutKind::Chunked,
            store: EmbeddedOptions::default(),
            trim: None,
        }
    }
}

/// Figures of one phase.
#[derive(Debug, Clone)]
pub struct IngestRow {
    /// What was measured.
    pub phase: &'static str,
    /// Records moved (metric points plus `create_run`s).
    pub records: u64,
    /// Metric points among them.
    pub points: u64,
    /// Seconds from start until all were applied (or read, or produced).
    pub secs: f64,
    /// Median append-to-visible time in milliseconds, when sampled.
    pub p50_ms: Option<f64>,
    /// 99th percentile append-to-visible time in milliseconds, when sampled.
    pub p99_ms: Option<f64>,
    /// Visibility samples taken.
    pub samples: usize,
    /// Peak resident set during the phase, KiB.
    pub peak_rss_kib: Option<u64>,
    /// The embedded engine's memory during the phase, each part's largest sample (embedded
    /// phases on fjall).
    pub memory: Option<MemoryPeaks>,
    /// Seconds from start until the first record arrived (Kafka consumers: the group join), when
    /// measured.
    pub startup_secs: Option<f64>,
}

impl IngestRow {
    /// Points per second.
    pub fn points_per_sec(&self) -> f64 {
        self.points as f64 / self.secs
    }

    /// Records per second.
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.secs
    }

    /// Records per second after the first record arrived (the whole time when not measured).
    pub fn steady_records_per_sec(&self) -> f64 {
        self.records as f64 / (self.secs - self.startup_secs.unwrap_or(0.0)).max(f64::MIN_POSITIVE)
    }
}

/// The benchmark's figures, and what the store held afterwards.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// One row per phase, in the order run.
    pub rows: Vec<IngestRow>,
    /// Points read back from the embedded phase's store (must equal the records asked for).
    pub stored_points: u64,
    /// Points read back from the Kafka phase's store, when it ran.
    pub kafka_stored_points: Option<u64>,
    /// What the live phase's trimmer did (`None`: no trimmer).
    pub live_trim: Option<LiveTrim>,
    /// Bytes the live phase's store occupies on disk at the end of the phase (after the trimmer's
    /// last pass, when it ran), as the engine counts them (tables and journal).
    pub live_disk_bytes: u64,
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum IngestBenchError {
    /// Storage failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The embedded queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The Kafka source could not be created.
    #[error(transparent)]
    KafkaSource(#[from] KafkaSourceError),
    /// A Kafka client call failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A phase did not finish in time.
    #[error("{0} did not finish in time")]
    Timeout(String),
    /// The store does not hold what was ingested.
    #[error("stored {got} points, ingested {want}")]
    Mismatch { got: u64, want: u64 },
    /// Invalid parameters.
    #[error("{0}")]
    Invalid(String),
}

impl From<KvError> for IngestBenchError {
    fn from(e: KvError) -> Self {
        IngestBenchError::Layout(LayoutError::Kv(e))
    }
}

fn kafka_err(what: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> IngestBenchError + '_ {
    move |e| IngestBenchError::Kafka(format!("{what}: {e}"))
}

const TOPIC: &str = "data-ingestion";
const METRIC: &str = "loss";

/// One generated record: key, value, and (run index, step) for metric records.
struct Rec {
    key: Vec<u8>,
    value: Vec<u8>,
    point: Option<(usize, i64)>,
}

/// The hash of bench run `i`.
pub fn run_hash(i: usize) -> String {
    format!("{:032x}", 0xBE_4C00_0000_u64 + i as u64)
}

/// The generated input: `create_run` for each run, then `records` `log_metric` records of the
/// golden shape, the runs interleaved round-robin, each run's steps counting from 0. Records are
/// made on demand from their index, so the generator's memory does not grow with N and the
/// peak-RSS figures are the pipeline's own.
#[derive(Debug, Clone)]
struct Workload {
    hashes: Vec<String>,
    records: u64,
}

impl Workload {
    fn new(cfg: &IngestBenchConfig) -> Self {
        Self { hashes: (0..cfg.runs.max(1) as usize).map(run_hash).collect(), records: cfg.records }
    }

    /// Records in all: one `create_run` per run plus the metric records.
    fn len(&self) -> u64 {
        self.hashes.len() as u64 + self.records
    }

    /// Record `i` of the input (`i < len()`).
    fn record(&self, i: u64) -> Rec {
        let runs = self.hashes.len() as u64;
        if i < runs {
            let h = &self.hashes[i as usize];
            let v = json!({"type": "create_run", "run_id": h, "timestamp": "2026-11-21T20:50:04.172070Z",
                "payload": {"client_datetime": "2026-11-21T20:50:04.164174+00:00", "force_resume": false}});
            return Rec { key: h.as_bytes().to_vec(), value: v.to_string().into_bytes(), point: None };
        }
        let m = i - runs;
        let r = (m % runs) as usize;
        let step = i64::try_from(m / runs).unwrap_or(i64::MAX);
        Rec {
            key: self.hashes[r].as_bytes().to_vec(),
            value: metric_record(&self.hashes[r], step),
            point: Some((r, step)),
        }
    }

    /// Records `[from, from + n)`, clipped to the input.
    fn chunk(&self, from: u64, n: usize) -> Vec<Rec> {
        (from..(from + n as u64).min(self.len())).map(|i| self.record(i)).collect()
    }
}

/// A `log_metric` record of the golden shape (what the gateway produces for `run.track(loss,
/// step=…, epoch=0, context={"subset": "train"})`), as bytes: `METRIC` of run `hash` at `step`.
pub fn metric_record(hash: &str, step: i64) -> Vec<u8> {
    let v = json!({"type": "log_metric", "run_id": hash, "timestamp": "2026-11-21T20:50:04.177691Z",
        "payload": {"name": METRIC, "value": 2.01 / (1.0 + step as f64 * 1e-3), "step": step, "epoch": 0,
            "context": {"subset": "train"}, "dtype": "float",
            "client_datetime": "2026-11-21T20:50:04.164296+00:00"}});
    v.to_string().into_bytes()
}

/// Resets the kernel's peak-RSS mark of this process (best effort).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set of this process since the last reset, KiB.
pub fn peak_rss_kib() -> Option<u64> {
    super::memory::status_kib("VmHWM:")
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(idx.min(sorted.len() - 1)).copied()
}

/// The pipeline of `matyan serve` on the shipped `[ingest]` defaults, with run actors kept for
/// the whole benchmark.
fn pipeline_config() -> PipelineConfig {
    let shipped = match crate::config::Config::from_toml_str("defaults", "") {
        Ok(config) => PipelineConfig::from_config(&config),
        Err(_) => PipelineConfig::default(),
    };
    PipelineConfig { run_idle_timeout: Duration::from_secs(120), ..shipped }
}

async fn open_store(dir: &Path, cfg: &IngestBenchConfig) -> Result<(Database, Layout), IngestBenchError> {
    let db = Database::open_embedded_with(dir, EmbeddedEngine::Fjall, Limits::FDB, cfg.store)?;
    let layout = Layout::open_settled(&db, cfg.layout).await?;
    Ok((db, layout))
}

/// Waits until the pipeline applied `total` messages; returns when the first record was consumed.
async fn wait_applied(
    handle: &PipelineHandle,
    total: u64,
    timeout: Duration,
    what: &str,
) -> Result<Instant, IngestBenchError> {
    let deadline = Instant::now() + timeout;
    let mut first = None;
    loop {
        let c = handle.counters();
        if first.is_none() && c.consumed > 0 {
            first = Some(Instant::now());
        }
        if c.applied + c.replayed >= total {
            return Ok(first.unwrap_or_else(Instant::now));
        }
        if Instant::now() > deadline {
            return Err(IngestBenchError::Timeout(format!("{what} ({} of {total} applied)", c.applied)));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Counts the points stored for every bench run.
async fn stored_points(db: &Database, layout: &Layout, runs: usize) -> Result<u64, IngestBenchError> {
    let ctx_id = context_to_id(&json!({"subset": "train"}));
    let mut n = 0u64;
    for r in 0..runs {
        // One snapshot per run: all of them through one would outlive the 5 s read limit at 10M.
        let tx = db.create_trx()?;
        let hash = run_hash(r);
        let id = SeqId { run: &hash, ctx_id, name: METRIC };
        let cols = Columns { epoch: false, time: false };
        n += layout.seqs.read(&tx, id, None, None, cols, true).await.map_err(LayoutError::from)?.len() as u64;
    }
    Ok(n)
}

/// Is point `step` of run `run` visible in a fresh snapshot?
async fn visible(db: &Database, layout: &Layout, run: &str, step: i64) -> Result<bool, IngestBenchError> {
    let tx = db.create_trx()?;
    let id = SeqId { run, ctx_id: context_to_id(&json!({"subset": "train"})), name: METRIC };
    let cols = Columns { epoch: false, time: false };
    let got = layout.seqs.read(&tx, id, Some(step), Some(step), cols, true).await.map_err(LayoutError::from)?;
    Ok(!got.is_empty())
}

/// Runs every phase: embedded pipeline and queue read-back under `dir/embedded`; with
/// `cfg.kafka`, produce, bare consumer and Kafka pipeline under `dir/kafka`.
pub async fn run(dir: &Path, cfg: &IngestBenchConfig) -> Result<IngestReport, IngestBenchError> {
    if cfg.records == 0 || cfg.runs == 0 || cfg.partitions == 0 || cfg.append_batch == 0 {
        return Err(IngestBenchError::Invalid("records, runs, partitions and batch must be positive".into()));
    }
    let recs = Arc::new(Workload::new(cfg));
    let mut rows = Vec::new();
    let live = embedded(&dir.join("embedded"), cfg, &recs).await?;
    rows.extend(live.rows);
    rows.extend(embedded_backlog(&dir.join("embedded-backlog"), cfg, &recs).await?);
    let mut kafka_stored = None;
    if let Some(bootstrap) = &cfg.kafka {
        let (kafka_rows, stored) = kafka(&dir.join("kafka"), cfg, bootstrap, &recs).await?;
        rows.extend(kafka_rows);
        kafka_stored = Some(stored);
    }
    Ok(IngestReport {
        rows,
        stored_points: live.stored,
        kafka_stored_points: kafka_stored,
        live_trim: live.trim,
        live_disk_bytes: live.disk_bytes,
    })
}

/// What the live phase measured.
struct Live {
    rows: Vec<IngestRow>,
    stored: u64,
    trim: Option<LiveTrim>,
    disk_bytes: u64,
}

/// What the live phase's trimmer did.
#[derive(Debug, Clone, Copy)]
pub struct LiveTrim {
    /// Records trimmed by the end of the phase.
    pub during: u64,
    /// Records the pass after the phase trimmed.
    pub after: u64,
    /// Seconds that pass took.
    pub after_secs: f64,
}

async fn embedded(dir: &Path, cfg: &IngestBenchConfig, recs: &Arc<Workload>) -> Result<Live, IngestBenchError> {
    let total = recs.len();
    let (db, layout) = open_store(dir, cfg).await?;
    let queue = Queue::open(&db, &layout.dirs.ours, TOPIC, cfg.partitions).await?;
    let source =
        EmbeddedSource::new(queue.clone(), INGESTION_GROUP).await?.with_poll_interval(Duration::from_millis(10));
    let handle = IngestPipeline::start(db.clone(), layout.clone(), Arc::new(source), pipeline_config())?;

    // The poller: samples arrive as (run, step, append-committed instant).
    let (sample_tx, mut sample_rx) = mpsc::unbounded_channel::<(usize, i64, Instant)>();
    let (pdb, playout, timeout) = (db.clone(), layout.clone(), cfg.timeout);
    let poller = tokio::spawn(async move {
        let mut pending: VecDeque<(String, i64, Instant)> = VecDeque::new();
        let mut lat = Vec::new();
        let mut open = true;
        let deadline = Instant::now() + timeout;
        while open || !pending.is_empty() {
            loop {
                match sample_rx.try_recv() {
                    Ok((r, step, t)) => pending.push_back((run_hash(r), step, t)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let mut still = VecDeque::with_capacity(pending.len());
            for (run, step, t) in pending.drain(..) {
                if visible(&pdb, &playout, &run, step).await? {
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                } else {
                    still.push_back((run, step, t));
                }
            }
            pending = still;
            if Instant::now() > deadline {
                return Err(IngestBenchError::Timeout("visibility sampling".into()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok::<_, IngestBenchError>(lat)
    });

    // As `matyan serve` does, when asked: consumed records are trimmed while the pipeline runs.
    let trimmer = cfg
        .trim
        .map(|(interval, settings)| QueueTrimmer::spawn(db.clone(), layout.dirs.ours.clone(), interval, settings));
    reset_peak_rss();
    let sampler = MemorySampler::start(&db);
    let start = Instant::now();
    let (aq, arecs, batch) = (queue.clone(), Arc::clone(recs), cfg.append_batch);
    let producer = tokio::spawn(async move {
        let mut from = 0;
        while from < arecs.len() {
            let chunk = arecs.chunk(from, batch);
            from += chunk.len() as u64;
            let batch: Vec<AppendRecord<'_>> =
                chunk.iter().map(|r| (Some(r.key.as_slice()), r.value.as_slice(), 0)).collect();
            aq.append(&batch).await?;
            let now = Instant::now();
            if let Some((r, step)) = chunk.iter().rev().find_map(|r| r.point) {
                let _ = sample_tx.send((r, step, now));
            }
        }
        Ok::<_, IngestBenchError>(start.elapsed().as_secs_f64())
    });
    // Watched while the producer appends, so that the first record's consumption is seen when it
    // happens.
    let (appended, applied) = tokio::join!(producer, wait_applied(&handle, total, cfg.timeout, "embedded pipeline"));
    let append_secs = appended.map_err(|e| IngestBenchError::Invalid(format!("producer task: {e}")))??;
    let first = applied?;
    let secs = start.elapsed().as_secs_f64();
    let rss = peak_rss_kib();
    let memory = stop(sampler).await;
    let trim = match (trimmer, cfg.trim) {
        (Some(trimmer), Some((_, settings))) => {
            trimmer.stop();
            let during = trimmed(&queue).await?;
            let pass = Instant::now();
            crate::ingest::queue_trim::trim_once(&db, &layout.dirs.ours, settings).await?;
            let after_secs = pass.elapsed().as_secs_f64();
            Some(LiveTrim { during, after: trimmed(&queue).await? - during, after_secs })
        }
        _ => None,
    };
    let disk_bytes = db.disk_bytes();
    let mut lat = poller.await.map_err(|e| IngestBenchError::Invalid(format!("poller task: {e}")))??;
    handle.shutdown().await?;
    lat.sort_by(f64::total_cmp);
    let stored = stored_points(&db, &layout, cfg.runs as usize).await?;
    if stored != cfg.records {
        return Err(IngestBenchError::Mismatch { got: stored, want: cfg.records });
    }
    let points = cfg.records;
    let mut rows = vec![
        IngestRow {
            phase: "embedded append",
            records: total,
            points,
            secs: append_secs,
            p50_ms: None,
            p99_ms: None,
            samples: 0,
            peak_rss_kib: None,
            memory: None,
            startup_secs: None,
        },
        IngestRow {
            phase: "embedded pipeline",
            records: total,
            points,
            secs,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            samples: lat.len(),
            peak_rss_kib: rss,
            memory,
            startup_secs: Some(since(first, start)),
        },
    ];
    // Trimmed under the pipeline, the queue no longer holds every record: the backlog phase reads
    // the ceiling instead.
    if trim.is_none() {
        rows.push(read_back(&db, &queue, total, points).await?);
    }
    Ok(Live { rows, stored, trim, disk_bytes })
}

/// Records trimmed from `queue`: its partitions' start offsets together.
async fn trimmed(queue: &Queue) -> Result<u64, IngestBenchError> {
    let mut trimmed = 0u64;
    for p in queue.partition_ids() {
        trimmed += u64::try_from(queue.start_offset(p).await?).unwrap_or(0);
    }
    Ok(trimmed)
}

/// The ceiling: every record of `queue` read back page by page (500 records a read, as the source
/// reads), without applying.
async fn read_back(db: &Database, queue: &Queue, total: u64, points: u64) -> Result<IngestRow, IngestBenchError> {
    reset_peak_rss();
    let sampler = MemorySampler::start(db);
    let read_start = Instant::now();
    let mut read = 0u64;
    for p in queue.partition_ids() {
        let mut from = 0i64;
        loop {
            let page = queue.read(p, from, 500).await?;
            let Some(last) = page.last() else { break };
            from = last.offset + 1;
            read += page.len() as u64;
        }
    }
    let read_secs = read_start.elapsed().as_secs_f64();
    let read_rss = peak_rss_kib();
    let read_memory = stop(sampler).await;
    if read != total {
        return Err(IngestBenchError::Mismatch { got: read, want: total });
    }
    Ok(IngestRow {
        phase: "embedded queue read (ceiling)",
        records: total,
        points,
        secs: read_secs,
        p50_ms: None,
        p99_ms: None,
        samples: 0,
        peak_rss_kib: read_rss,
        memory: read_memory,
        startup_secs: None,
    })
}

/// What [`drain`] measured.
struct Drained {
    secs: f64,
    rss: Option<u64>,
    memory: Option<MemoryPeaks>,
    first: Instant,
    start: Instant,
    stored: u64,
}

/// Runs a pipeline on `source` until it applied `total` records, stops it and checks that every
/// point is stored; the clock and the peak-RSS mark start with the pipeline.
async fn drain<S: crate::ingest::Source + 'static>(
    db: &Database,
    layout: &Layout,
    source: S,
    total: u64,
    cfg: &IngestBenchConfig,
    what: &str,
) -> Result<Drained, IngestBenchError> {
    reset_peak_rss();
    let sampler = MemorySampler::start(db);
    let start = Instant::now();
    let handle = IngestPipeline::start(db.clone(), layout.clone(), Arc::new(source), pipeline_config())?;
    let first = wait_applied(&handle, total, cfg.timeout, what).await?;
    let secs = start.elapsed().as_secs_f64();
    let rss = peak_rss_kib();
    let memory = stop(sampler).await;
    handle.shutdown().await?;
    let stored = stored_points(db, layout, cfg.runs as usize).await?;
    if stored != cfg.records {
        return Err(IngestBenchError::Mismatch { got: stored, want: cfg.records });
    }
    Ok(Drained { secs, rss, memory, first, start, stored })
}

/// The pipeline alone: the queue is filled first, then a pipeline drains it (the live phase is
/// bounded by the appender's rate when the pipeline keeps up). With the live phase's trimmer on,
/// the queue's ceiling is read here first, once the queue is filled.
async fn embedded_backlog(
    dir: &Path,
    cfg: &IngestBenchConfig,
    recs: &Arc<Workload>,
) -> Result<Vec<IngestRow>, IngestBenchError> {
    let total = recs.len();
    let (db, layout) = open_store(dir, cfg).await?;
    let queue = Queue::open(&db, &layout.dirs.ours, TOPIC, cfg.partitions).await?;
    let mut from = 0;
    while from < total {
        let chunk = recs.chunk(from, cfg.append_batch.max(1000));
        from += chunk.len() as u64;
        let batch: Vec<AppendRecord<'_>> =
            chunk.iter().map(|r| (Some(r.key.as_slice()), r.value.as_slice(), 0)).collect();
        queue.append(&batch).await?;
    }
    let mut rows = Vec::new();
    if cfg.trim.is_some() {
        rows.push(read_back(&db, &queue, total, cfg.records).await?);
    }
    let source =
        EmbeddedSource::new(queue.clone(), INGESTION_GROUP).await?.with_poll_interval(Duration::from_millis(10));
    let drained = drain(&db, &layout, source, total, cfg, "embedded pipeline on a backlog").await?;
    let Drained { secs, rss, memory, first, start, .. } = drained;
    rows.push(IngestRow {
        phase: "embedded pipeline (backlog)",
        records: total,
        points: cfg.records,
        secs,
        p50_ms: None,
        p99_ms: None,
        samples: 0,
        peak_rss_kib: rss,
        memory,
        startup_secs: Some(since(first, start)),
    });
    Ok(rows)
}

fn since(later: Instant, earlier: Instant) -> f64 {
    later.saturating_duration_since(earlier).as_secs_f64()
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

fn consumer_config(bootstrap: &str) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("session.timeout.ms", "6000").set("heartbeat.interval.ms", "300");
    c
}

/// Produces every record, keyed (Kafka's murmur2 partitioner), and waits for all deliveries.
fn produce(bootstrap: &str, topic: &str, recs: &Workload) -> Result<(), IngestBenchError> {
    let producer: BaseProducer = base_config(bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .map_err(kafka_err("create producer"))?;
    for i in 0..recs.len() {
        let r = recs.record(i);
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(&r.value[..]).key(&r.key[..]);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, back))
                    if matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) =>
                {
                    rec = back;
                    producer.poll(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(IngestBenchError::Kafka(format!("produce: {e}"))),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).map_err(kafka_err("flush"))?;
    if producer.in_flight_count() != 0 {
        return Err(IngestBenchError::Kafka("records still in flight after flush".into()));
    }
    Ok(())
}

/// Reads `total` records of `topic` with a bare consumer in a fresh group; returns when the first
/// record arrived.
fn bare_consume(bootstrap: &str, topic: &str, total: u64, timeout: Duration) -> Result<Instant, IngestBenchError> {
    let consumer: BaseConsumer = consumer_config(bootstrap)
        .set("group.id", format!("matyan-bench-bare-{}", unique_suffix()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(kafka_err("create consumer"))?;
    consumer.subscribe(&[topic]).map_err(kafka_err("subscribe"))?;
    let deadline = Instant::now() + timeout;
    let mut n = 0u64;
    let mut first = None;
    while n < total {
        if Instant::now() > deadline {
            return Err(IngestBenchError::Timeout(format!("bare consumer ({n} of {total})")));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                std::hint::black_box(rdkafka::Message::payload(&m).map(<[u8]>::len));
                n += 1;
            }
            Some(Err(e)) => return Err(IngestBenchError::Kafka(format!("consume: {e}"))),
            None => {}
        }
    }
    Ok(first.unwrap_or_else(Instant::now))
}

async fn kafka(
    dir: &Path,
    cfg: &IngestBenchConfig,
    bootstrap: &str,
    recs: &Arc<Workload>,
) -> Result<(Vec<IngestRow>, u64), IngestBenchError> {
    let total = recs.len();
    let topic = format!("matyan-bench-{}", unique_suffix());
    let admin: AdminClient<DefaultClientContext> =
        base_config(bootstrap).create().map_err(kafka_err("create admin"))?;
    let partitions = i32::try_from(cfg.partitions).map_err(|_| IngestBenchError::Invalid("partitions".into()))?;
    let new = NewTopic::new(&topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&new], &opts).await.map_err(kafka_err("create topic"))? {
        r.map_err(|(t, e)| IngestBenchError::Kafka(format!("create topic {t}: {e}")))?;
    }

    reset_peak_rss();
    let start = Instant::now();
    let (b, t, r) = (bootstrap.to_owned(), topic.clone(), Arc::clone(recs));
    tokio::task::spawn_blocking(move || produce(&b, &t, &r))
        .await
        .map_err(|e| IngestBenchError::Invalid(format!("producer task: {e}")))??;
    let produce_secs = start.elapsed().as_secs_f64();
    let produce_rss = peak_rss_kib();

    reset_peak_rss();
    let start = Instant::now();
    let (b, t, timeout) = (bootstrap.to_owned(), topic.clone(), cfg.timeout);
    let bare_first = tokio::task::spawn_blocking(move || bare_consume(&b, &t, total, timeout))
        .await
        .map_err(|e| IngestBenchError::Invalid(format!("consumer task: {e}")))??;
    let bare_secs = start.elapsed().as_secs_f64();
    let bare_start = start;
    let bare_rss = peak_rss_kib();

    let (db, layout) = open_store(dir, cfg).await?;
    let source = KafkaSource::new(consumer_config(bootstrap), &format!("matyan-bench-{}", unique_suffix()), &topic)?;
    let Drained { secs, rss, memory, first, start, stored } =
        drain(&db, &layout, source, total, cfg, "kafka pipeline").await?;
    let row = |phase, secs, peak_rss_kib, memory, startup_secs| IngestRow {
        phase,
        records: total,
        points: cfg.records,
        secs,
        p50_ms: None,
        p99_ms: None,
        samples: 0,
        peak_rss_kib,
        memory,
        startup_secs,
    };
    Ok((
        vec![
            row("kafka produce", produce_secs, produce_rss, None, None),
            row("kafka bare consumer (ceiling)", bare_secs, bare_rss, None, Some(since(bare_first, bare_start))),
            row("kafka pipeline", secs, rss, memory, Some(since(first, start))),
        ],
        stored,
    ))
}
