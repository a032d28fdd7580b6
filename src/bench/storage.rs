//! `matyan bench storage`: writes N metric points of one run through the Matyan layout in
//! transactions held under a byte budget, then reads the series back, per backend.
//!
//! The memory backend runs in the same invocation as the no-I/O baseline of our transaction layer.

use std::path::Path;
use std::time::Instant;

use crate::storage::kv::{Database, EmbeddedEngine, KvError, Limits};
use crate::storage::layout::{Columns, Layout, LayoutError, SeqId, SeqWrite, SequenceLayoutKind, TraceInfo};
use crate::storage::value::{self, Value};

/// The benchmark's parameters.
#[derive(Debug, Clone)]
pub struct StorageBenchConfig {
    /// Points to write.
    pub points: u64,
    /// Byte budget per transaction (FoundationDB's size accounting).
    pub txn_budget_bytes: usize,
    /// Points written between budget checks.
    pub slice: usize,
    /// The sequence layout of the stores written.
    pub layout: SequenceLayoutKind,
}

impl Default for StorageBenchConfig {
    fn default() -> Self {
        Self { points: 1_000_000, txn_budget_bytes: 5_000_000, slice: 500, layout: SequenceLayoutKind::Chunked }
    }
}

/// Figures of one backend.
#[derive(Debug, Clone)]
pub struct StorageBenchReport {
    /// Backend name.
    pub backend: &'static str,
    /// Points written.
    pub points: u64,
    /// Transactions committed.
    pub txns: u64,
    /// Seconds to write all points.
    pub write_secs: f64,
    /// Seconds to read the whole series back (values decoded).
    pub read_secs: f64,
    /// Bytes on disk after writing (0 for memory), as the engine reports them.
    pub disk_bytes: u64,
    /// Bytes the store's files occupy (allocated blocks, 0 for memory): fjall preallocates its
    /// journal, 64 MiB of apparent size that `disk_bytes` counts in full.
    pub allocated_bytes: u64,
}

impl StorageBenchReport {
    /// Points written per second.
    pub fn write_rate(&self) -> f64 {
        self.points as f64 / self.write_secs
    }

    /// Bytes on disk per point.
    pub fn bytes_per_point(&self) -> f64 {
        self.disk_bytes as f64 / self.points as f64
    }

    /// Allocated bytes per point.
    pub fn allocated_per_point(&self) -> f64 {
        self.allocated_bytes as f64 / self.points as f64
    }
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Storage failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The read-back did not return what was written.
    #[error("read back {got} points, wrote {want}")]
    Mismatch { got: u64, want: u64 },
}

impl From<KvError> for BenchError {
    fn from(e: KvError) -> Self {
        BenchError::Layout(LayoutError::Kv(e))
    }
}

const RUN: &str = "00000000000000000000000000b3c4f1";

/// Runs the benchmark on `db`.
pub async fn run(db: &Database, cfg: &StorageBenchConfig) -> Result<StorageBenchReport, BenchError> {
    let layout = Layout::open_settled(db, cfg.layout).await?;
    let ctx = Value::Map(vec![(Value::from("subset"), Value::from("train"))]);
    let ctx_id = crate::storage::context_id::context_to_id(&serde_json::json!({"subset": "train"}));
    let id = SeqId { run: RUN, ctx_id, name: "loss" };
    let vals: Vec<Vec<u8>> = (0..cfg.slice)
        .map(|i| {
            let mut b = Vec::with_capacity(9);
            value::encode_f64(1.0 / (i as f64 + 1.0), &mut b);
            b
        })
        .collect();
    let start = Instant::now();
    let mut step: i64 = 0;
    let mut txns = 0u64;
    let total = cfg.points as i64;
    while step < total {
        let tx = db.create_trx()?;
        let now = 1_735_689_600.0 + txns as f64;
        layout.runs.runs.set_context(&tx, RUN, ctx_id, &ctx)?;
        while step < total && tx.approximate_size().await? < cfg.txn_budget_bytes {
            let n = (cfg.slice as i64).min(total - step) as usize;
            let points: Vec<SeqWrite<'_>> =
                (0..n).map(|i| SeqWrite { step: step + i as i64, val: &vals[i], epoch: None, time: now }).collect();
            layout.seqs.write(&tx, id, &points).await.map_err(LayoutError::from)?;
            step += n as i64;
        }
        let last =
            value::decode(&vals[((step - 1) as usize) % cfg.slice]).map_err(|e| LayoutError::Corrupt(e.to_string()))?;
        let trace = TraceInfo { ctx_id, name: "loss", dtype: "float", last: Some(&last), last_step: step - 1 };
        layout.runs.record_trace(&tx, RUN, &trace)?;
        tx.commit().await?;
        txns += 1;
    }
    let write_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let tx = db.create_trx()?;
    let points = layout.seqs.read(&tx, id, None, None, Columns::default(), true).await.map_err(LayoutError::from)?;
    let mut sum = 0.0;
    for p in &points {
        if let Ok(Value::Float(f)) = value::decode(&p.val) {
            sum += f;
        }
    }
    let read_secs = start.elapsed().as_secs_f64();
    if points.len() as u64 != cfg.points || sum <= 0.0 {
        return Err(BenchError::Mismatch { got: points.len() as u64, want: cfg.points });
    }
    Ok(StorageBenchReport {
        backend: db.backend(),
        points: cfg.points,
        txns,
        write_secs,
        read_secs,
        disk_bytes: db.disk_bytes(),
        allocated_bytes: 0,
    })
}

/// Runs the benchmark on the memory backend and on each embedded engine in fresh directories
/// under `dir`.
pub async fn run_all(dir: &Path, cfg: &StorageBenchConfig) -> Result<Vec<StorageBenchReport>, BenchError> {
    let mut reports = vec![run(&Database::memory(), cfg).await?];
    for engine in [EmbeddedEngine::Fjall, EmbeddedEngine::Redb] {
        let sub = dir.join(format!("{engine:?}").to_lowercase());
        let db = Database::open_embedded(&sub, engine, Limits::FDB)?;
        let mut report = run(&db, cfg).await?;
        report.allocated_bytes = super::disk::bytes_under(&sub, super::disk::allocated);
        reports.push(report);
    }
    Ok(reports)
}
