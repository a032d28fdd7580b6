//! `matyan bench query`: stores R runs × 3 metrics × S steps plus one run with a B-step metric in
//! a fresh fjall store, then times four reads through the in-process router (tower `oneshot`, the
//! whole response body consumed): run search without a query, run search on an indexed hparam,
//! metric search with `p=500`, the big run's whole series through metric get-batch, and the whole
//! of [`WIDE_SERIES`] series of one more run through one get-batch (reads of many series of one
//! run, which the API makes at once).
//!
//! A store that already holds the data set of the same size (named by the marker file
//! `bench-query.json` in its directory, written once populating has finished) is reused, so a
//! `--dir` kept between runs skips the setup.
//!
//! Each request runs once untimed (warm-up), then `reps` times; the report gives the median and
//! the 95th percentile (nearest rank) of the timed repetitions, and checks every answer's counts.
//! A request that fails (for example a search outliving the 5 s transaction lifetime) is reported
//! in its row rather than ending the benchmark.

use std::path::Path;
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use serde_json::json;
use tower::ServiceExt as _;

use crate::app::AppState;
use crate::config::Config;
use crate::http::stream::decode_objects;
use crate::storage::context_id::context_to_id;
use crate::storage::kv::{Database, EmbeddedEngine, EmbeddedOptions, KvError, Limits, RetryOptions, Transaction};
use crate::storage::layout::{Layout, LayoutError, SeqId, SeqWrite, SequenceLayoutKind, TraceInfo};
use crate::storage::value::{self, Value};

/// The benchmark's parameters.
#[derive(Debug, Clone)]
pub struct QueryBenchConfig {
    /// Runs with three metrics each.
    pub runs: u32,
    /// Steps of each of their metrics.
    pub steps: u32,
    /// Steps of the big run's metric.
    pub big_steps: u32,
    /// Timed repetitions of each request.
    pub reps: u32,
    /// The sequence layout of the store written.
    pub layout: SequenceLayoutKind,
    /// The store's engine memory (`[storage]` `cache_bytes`, `memtable_bytes`).
    pub store: EmbeddedOptions,
}

impl Default for QueryBenchConfig {
    fn default() -> Self {
        Self {
            runs: 1_000,
            steps: 10_000,
            big_steps: 1_000_000,
            reps: 5,
            layout: SequenceLayoutKind::Chunked,
            store: EmbeddedOptions::default(),
        }
    }
}

/// Figures of one request.
#[derive(Debug, Clone)]
pub struct QueryRow {
    /// Which request (a) to (d).
    pub name: &'static str,
    /// The request's path and query.
    pub uri: String,
    /// Objects in the answer: runs for searches, points for get-batch.
    pub count: u64,
    /// What `count` counts.
    pub unit: &'static str,
    /// Response body bytes.
    pub bytes: usize,
    /// Median seconds.
    pub median_secs: f64,
    /// 95th percentile seconds.
    pub p95_secs: f64,
    /// Why the request failed, when it did (the figures are then NaN).
    pub error: Option<String>,
}

/// The benchmark's figures.
#[derive(Debug, Clone)]
pub struct QueryReport {
    /// Points written in setup (or found in a reused store).
    pub points_written: u64,
    /// Whether the store was reused rather than populated.
    pub reused: bool,
    /// Seconds the setup took.
    pub setup_secs: f64,
    /// Bytes on disk after setup.
    pub disk_bytes: u64,
    /// One row per request.
    pub rows: Vec<QueryRow>,
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum QueryBenchError {
    /// Storage failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A request failed or answered something unexpected.
    #[error("{0}")]
    Request(String),
    /// Invalid parameters.
    #[error("{0}")]
    Invalid(String),
}

impl From<KvError> for QueryBenchError {
    fn from(e: KvError) -> Self {
        QueryBenchError::Layout(LayoutError::Kv(e))
    }
}

const T0: f64 = 1_735_689_600.0;
/// The big run's hash.
pub const BIG_RUN: &str = "b16b16b16b16b16b";
/// The big run's metric.
pub const BIG_METRIC: &str = "throughput";
/// The wide run's hash: [`WIDE_SERIES`] metrics of the runs' steps each.
pub const WIDE_RUN: &str = "w1de00000000w1de";
/// Metrics of the wide run.
pub const WIDE_SERIES: u32 = 16;
/// Points per transaction when writing a series (about 650 bytes each in FoundationDB's accounting
/// with the epoch and time columns, so about 3.3 MB per transaction).
const CHUNK: u32 = 5_000;

/// The marker file of a populated store: the data set's size as JSON.
const MARKER: &str = "bench-query.json";

/// The hash of bench run `i`.
pub fn run_hash(i: u32) -> String {
    format!("be4c{i:012x}")
}

/// The `lr` hparam of run `i`: 0.001 to 0.020, so runs with `i % 20 >= 10` (half) are above 0.01.
pub fn lr(i: u32) -> f64 {
    0.001 * f64::from(i % 20 + 1)
}

/// How many of `runs` runs have `lr > 0.01`.
pub fn lr_matches(runs: u32) -> u64 {
    (0..runs).filter(|&i| lr(i) > 0.01).count() as u64
}

fn encode(v: f64) -> Result<Vec<u8>, LayoutError> {
    value::encode(&Value::Float(v)).map_err(|e| LayoutError::Encode(e.to_string()))
}

async fn create_run(layout: &Layout, tx: &Transaction, hash: &str, created: f64, lr: f64) -> Result<(), LayoutError> {
    let runs = &layout.runs;
    runs.create_run(tx, hash, created, None).await?;
    runs.update_meta(tx, hash, created, &[("name", Value::Str(format!("bench-{hash}")))]).await?;
    let hparams = Value::from(&json!({"lr": lr, "batch_size": 32, "optimizer": "adam"}));
    runs.set_attrs(tx, hash, &["hparams".to_owned()], &hparams, created).await?;
    Ok(())
}

/// Writes steps `from..to` of one metric trace and records the trace.
#[allow(clippy::too_many_arguments)]
async fn write_series(
    layout: &Layout,
    tx: &Transaction,
    hash: &str,
    name: &str,
    ctx: &serde_json::Value,
    (from, to): (u32, u32),
    created: f64,
    f: fn(f64) -> f64,
) -> Result<(), LayoutError> {
    let ctx_id = context_to_id(ctx);
    layout.runs.runs.set_context(tx, hash, ctx_id, &Value::from(ctx))?;
    let id = SeqId { run: hash, ctx_id, name };
    let vals: Vec<Vec<u8>> = (from..to).map(|s| encode(f(f64::from(s)))).collect::<Result<_, _>>()?;
    let points: Vec<SeqWrite<'_>> = (from..to)
        .zip(&vals)
        .map(|(s, v)| SeqWrite { step: i64::from(s), val: v, epoch: Some(0), time: created + f64::from(s) })
        .collect();
    layout.seqs.write(tx, id, &points).await?;
    if to > from {
        let last = Value::Float(f(f64::from(to - 1)));
        let info = TraceInfo { ctx_id, name, dtype: "float", last: Some(&last), last_step: i64::from(to) - 1 };
        layout.runs.record_trace(tx, hash, &info)?;
    }
    Ok(())
}

type Trace = (&'static str, fn() -> serde_json::Value, fn(f64) -> f64);

const TRACES: [Trace; 3] = [
    ("loss", || json!({"subset": "train"}), |x| 2.0 / (1.0 + x * 1e-3)),
    ("loss", || json!({"subset": "val"}), |x| 2.1 / (1.0 + x * 1e-3)),
    ("acc", || json!({"subset": "train"}), |x| 1.0 - 1.0 / (1.0 + x * 1e-3)),
];

/// Writes the data set: each run's meta in one transaction, its series (and the big run's) in
/// transactions of [`CHUNK`] points. Returns the points written.
pub async fn populate(db: &Database, layout: &Layout, cfg: &QueryBenchConfig) -> Result<u64, QueryBenchError> {
    let retry = RetryOptions::default();
    for i in 0..cfg.runs {
        let hash = run_hash(i);
        let created = T0 + f64::from(i) * 60.0;
        db.run(&retry, |tx| {
            let (layout, hash) = (layout.clone(), hash.clone());
            async move { create_run(&layout, &tx, &hash, created, lr(i)).await }
        })
        .await?;
        for (name, ctx, f) in TRACES {
            write_chunked(db, layout, &hash, name, &ctx(), cfg.steps, created, f).await?;
        }
        db.run(&retry, |tx| {
            let (layout, hash) = (layout.clone(), hash.clone());
            async move {
                let end = created + f64::from(cfg.steps);
                let fields = [("active", Value::Bool(false)), ("finalized_at", Value::Float(end))];
                layout.runs.update_meta(&tx, &hash, end, &fields).await
            }
        })
        .await?;
    }
    db.run(&retry, |tx| {
        let layout = layout.clone();
        async move { create_run(&layout, &tx, BIG_RUN, T0 - 3600.0, 0.0005).await }
    })
    .await?;
    let ctx = json!({"subset": "train"});
    write_chunked(db, layout, BIG_RUN, BIG_METRIC, &ctx, cfg.big_steps, T0 - 3600.0, |x| x.sin()).await?;
    db.run(&retry, |tx| {
        let layout = layout.clone();
        async move { create_run(&layout, &tx, WIDE_RUN, T0 - 7200.0, 0.0005).await }
    })
    .await?;
    for m in 0..WIDE_SERIES {
        write_chunked(db, layout, WIDE_RUN, &wide_metric(m), &ctx, cfg.steps, T0 - 7200.0, |x| x.cos()).await?;
    }
    Ok(points(cfg))
}

/// The points of the data set.
fn points(cfg: &QueryBenchConfig) -> u64 {
    (u64::from(cfg.runs) * 3 + u64::from(WIDE_SERIES)) * u64::from(cfg.steps) + u64::from(cfg.big_steps)
}

/// The name of the wide run's metric `m`.
fn wide_metric(m: u32) -> String {
    format!("m{m:02}")
}

/// Writes steps `0..steps` of one trace in transactions of [`CHUNK`] points.
#[allow(clippy::too_many_arguments)]
async fn write_chunked(
    db: &Database,
    layout: &Layout,
    hash: &str,
    name: &str,
    ctx: &serde_json::Value,
    steps: u32,
    created: f64,
    f: fn(f64) -> f64,
) -> Result<(), QueryBenchError> {
    let mut from = 0;
    while from < steps {
        let to = from.saturating_add(CHUNK).min(steps);
        db.run(&RetryOptions::default(), |tx| {
            let layout = layout.clone();
            async move { write_series(&layout, &tx, hash, name, ctx, (from, to), created, f).await }
        })
        .await?;
        from = to;
    }
    Ok(())
}

fn enc(q: &str) -> String {
    let mut out = String::new();
    for b in q.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One request through the router; returns the status and the whole body.
async fn call(state: &AppState, method: &str, uri: &str, body: Option<&str>) -> Result<Vec<u8>, QueryBenchError> {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .map_err(|e| QueryBenchError::Request(format!("{uri}: {e}")))?;
    let resp = crate::http::service(state.clone())
        .oneshot(req)
        .await
        .map_err(|e| QueryBenchError::Request(format!("{uri}: {e}")))?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| QueryBenchError::Request(format!("{uri}: body: {e}")))?;
    if !status.is_success() {
        return Err(QueryBenchError::Request(format!("{uri}: {status}: {}", String::from_utf8_lossy(&bytes))));
    }
    Ok(bytes.to_vec())
}

/// Counts the result objects of a streamed answer (progress frames left out).
fn stream_count(uri: &str, body: &[u8]) -> Result<u64, QueryBenchError> {
    let objects = decode_objects(body).map_err(|e| QueryBenchError::Request(format!("{uri}: decode: {e}")))?;
    Ok(objects.iter().filter(|(k, _)| !k.is_progress()).count() as u64)
}

/// Counts the points of a get-batch answer, over all its traces.
fn batch_count(uri: &str, body: &[u8]) -> Result<u64, QueryBenchError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| QueryBenchError::Request(format!("{uri}: json: {e}")))?;
    let traces = v.as_array().map_or(&[][..], Vec::as_slice);
    let n: usize = traces.iter().map(|t| t.get("iters").and_then(|i| i.as_array()).map_or(0, Vec::len)).sum();
    Ok(n as u64)
}

fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Case {
    name: &'static str,
    method: &'static str,
    uri: String,
    body: Option<String>,
    unit: &'static str,
    want: u64,
    streamed: bool,
}

/// Runs the benchmark on a fresh fjall store in `dir`.
pub async fn run(dir: &Path, cfg: &QueryBenchConfig) -> Result<QueryReport, QueryBenchError> {
    if cfg.runs == 0 || cfg.steps == 0 || cfg.big_steps == 0 || cfg.reps == 0 {
        return Err(QueryBenchError::Invalid("runs, steps, big steps and reps must be positive".into()));
    }
    let marker = dir.join(MARKER);
    let shape =
        json!({"runs": cfg.runs, "steps": cfg.steps, "big_steps": cfg.big_steps, "wide_series": WIDE_SERIES, "layout": cfg.layout.as_str()})
            .to_string();
    let reused = std::fs::read_to_string(&marker).is_ok_and(|m| m == shape);
    if !reused && marker.exists() {
        return Err(QueryBenchError::Invalid(format!("{} holds a data set of another size", dir.display())));
    }
    let db = Database::open_embedded_with(dir, EmbeddedEngine::Fjall, Limits::FDB, cfg.store)?;
    let layout = Layout::open_settled(&db, cfg.layout).await?;
    let start = Instant::now();
    let points_written = if reused {
        points(cfg)
    } else {
        let points = populate(&db, &layout, cfg).await?;
        std::fs::write(&marker, &shape).map_err(|e| QueryBenchError::Invalid(format!("{}: {e}", marker.display())))?;
        points
    };
    let setup_secs = start.elapsed().as_secs_f64();
    let config = Config::from_toml_str("bench", "").map_err(|e| QueryBenchError::Invalid(e.to_string()))?;
    let state = AppState::new(db.clone(), layout, config, None).map_err(|e| QueryBenchError::Invalid(e.to_string()))?;

    const R: &str = "/api/v1/rest";
    let cases = [
        Case {
            name: "(a) run search, no query",
            method: "GET",
            uri: format!("{R}/runs/search/run/"),
            body: None,
            unit: "runs",
            // The runs, the big run and the wide run.
            want: u64::from(cfg.runs) + 2,
            streamed: true,
        },
        Case {
            name: "(b) run search lr > 0.01",
            method: "GET",
            uri: format!("{R}/runs/search/run/?q={}", enc("run.hparams.lr > 0.01")),
            body: None,
            unit: "runs",
            want: lr_matches(cfg.runs),
            streamed: true,
        },
        Case {
            name: "(c) metric search loss p=500",
            method: "GET",
            uri: format!("{R}/runs/search/metric/?q={}&p=500", enc("metric.name == \"loss\"")),
            body: None,
            unit: "runs",
            want: u64::from(cfg.runs),
            streamed: true,
        },
        Case {
            name: "(d) get-batch whole big series",
            method: "POST",
            uri: format!("{R}/runs/{BIG_RUN}/metric/get-batch/?record_density={}", cfg.big_steps),
            body: Some(json!([{"name": BIG_METRIC, "context": {"subset": "train"}}]).to_string()),
            unit: "points",
            want: u64::from(cfg.big_steps),
            streamed: false,
        },
        Case {
            name: "(e) get-batch 16 series of a run",
            method: "POST",
            uri: format!("{R}/runs/{WIDE_RUN}/metric/get-batch/?record_density={}", cfg.steps),
            body: Some(
                serde_json::Value::Array(
                    (0..WIDE_SERIES).map(|m| json!({"name": wide_metric(m), "context": {"subset": "train"}})).collect(),
                )
                .to_string(),
            ),
            unit: "points",
            want: u64::from(WIDE_SERIES) * u64::from(cfg.steps),
            streamed: false,
        },
    ];
    let mut rows = Vec::new();
    for case in cases {
        let mut times = Vec::new();
        let mut count = 0;
        let mut bytes = 0;
        let mut error = None;
        for rep in 0..=cfg.reps {
            let t = Instant::now();
            let body = match call(&state, case.method, &case.uri, case.body.as_deref()).await {
                Ok(b) => b,
                Err(e) => {
                    error = Some(format!("{e} (after {:.1} s)", t.elapsed().as_secs_f64()));
                    times.clear();
                    break;
                }
            };
            let secs = t.elapsed().as_secs_f64();
            count = if case.streamed { stream_count(&case.uri, &body)? } else { batch_count(&case.uri, &body)? };
            bytes = body.len();
            if count != case.want {
                return Err(QueryBenchError::Request(format!(
                    "{}: {count} {} answered, {} expected",
                    case.name, case.unit, case.want
                )));
            }
            if rep > 0 {
                times.push(secs);
            }
        }
        times.sort_by(f64::total_cmp);
        rows.push(QueryRow {
            name: case.name,
            uri: case.uri,
            count,
            unit: case.unit,
            bytes,
            median_secs: nearest_rank(&times, 0.5),
            p95_secs: nearest_rank(&times, 0.95),
            error,
        });
    }
    Ok(QueryReport { points_written, reused, setup_secs, disk_bytes: db.disk_bytes(), rows })
}
