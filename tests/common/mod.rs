//! Shared by the integration tests: the worked example of `ingest-storage.md` §3.8 and its golden
//! rows.
#![allow(dead_code)]

pub mod broker;
pub mod sdk;
pub mod seaweed;
pub mod server;
pub mod wait;

use matyan::storage::context_id::context_to_id;
use matyan::storage::kv::{Database, RetryOptions, Transaction};
use matyan::storage::layout::{Layout, LayoutError, SeqId, SeqWrite, SequenceLayoutKind, TraceInfo};
use matyan::storage::value::{self, Value};
use serde_json::json;

pub const RUN: &str = "3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b";
pub const NOW: f64 = 1_735_689_600.0;

pub fn golden_rows() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden-vectors.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut rows: Vec<_> = golden["worked_example"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["directory"].as_str().unwrap().to_string(),
                r["key_suffix_hex"].as_str().unwrap().to_string(),
                r["value_hex"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// What the reference's handlers do for the example's five messages, in one transaction.
pub async fn apply_example(layout: &Layout, tx: &Transaction) -> Result<(), LayoutError> {
    // create_run with client_datetime "2025-01-01T00:00:00+00:00".
    layout.runs.create_run(tx, RUN, NOW, Some(1_735_689_600.0)).await?;
    // log_hparams {"hparams": {"lr": 0.001, "layers": [64, 32]}}: a two-key dict at path ("hparams",).
    let hparams = Value::from(&json!({"lr": 0.001, "layers": [64, 32]}));
    layout.runs.set_attrs(tx, RUN, &["hparams".to_string()], &hparams, NOW).await?;
    // Three log_metric "loss" with context {"subset": "train"} and no step.
    let ctx = json!({"subset": "train"});
    let ctx_id = context_to_id(&ctx);
    assert_eq!(ctx_id, 2_326_457_826);
    let id = SeqId { run: RUN, ctx_id, name: "loss" };
    for v in [0.9, 0.7, 0.5] {
        let step = layout.seqs.next_step(tx, id).await?;
        layout.runs.runs.set_context(tx, RUN, ctx_id, &Value::from(&ctx))?;
        let val = value::encode(&Value::Float(v)).unwrap();
        layout.seqs.write(tx, id, &[SeqWrite { step, val: &val, epoch: None, time: NOW }]).await?;
        let last = Value::Float(v);
        let trace = TraceInfo { ctx_id, name: "loss", dtype: "float", last: Some(&last), last_step: step };
        layout.runs.record_trace(tx, RUN, &trace)?;
    }
    Ok(())
}

/// The state of the in-process app over `db` and `layout`, with the built-in default configuration
/// (changed by `configure` first, e.g. for CORS origins).
pub fn app_state_with(
    db: &Database,
    layout: &Layout,
    configure: impl FnOnce(&mut matyan::config::Config),
) -> matyan::app::AppState {
    let mut config = matyan::config::Config::from_toml_str("test", "").unwrap();
    configure(&mut config);
    matyan::app::AppState::new(db.clone(), layout.clone(), config, None).unwrap()
}

/// The state of the in-process app over `db` and `layout`, with the default configuration.
pub fn app_state(db: &Database, layout: &Layout) -> matyan::app::AppState {
    app_state_with(db, layout, |_| {})
}

/// The golden topic dump of the real gateway (`fixtures/kafka-samples/golden-10k.jsonl.gz`).
pub const GOLDEN_10K: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kafka-samples/golden-10k.jsonl.gz");

/// One record of the golden topic dump.
#[derive(Debug, Clone)]
pub struct GoldenRecord {
    /// The record key (the run id), when the record has one.
    pub key: Option<Vec<u8>>,
    /// The record value (the gateway's JSON).
    pub value: Vec<u8>,
    /// The record timestamp.
    pub timestamp_ms: i64,
    /// The partition in the dump.
    pub partition: i64,
    /// The offset in the dump.
    pub offset: i64,
}

/// Every record of the golden topic dump, in file order.
pub fn golden_records() -> Vec<GoldenRecord> {
    use base64::Engine as _;
    use std::io::BufRead as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let file = std::fs::File::open(GOLDEN_10K).unwrap();
    std::io::BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            GoldenRecord {
                key: v["key_b64"].as_str().map(|k| b64.decode(k).unwrap()),
                value: b64.decode(v["value_b64"].as_str().unwrap()).unwrap(),
                timestamp_ms: v["timestamp_ms"].as_i64().unwrap(),
                partition: v["partition"].as_i64().unwrap(),
                offset: v["offset"].as_i64().unwrap(),
            }
        })
        .collect()
}

/// Writes the worked example in one retried transaction, on the reference's key-per-step layout
/// (pinned: the example is the reference's bytes).
pub async fn write_worked_example(db: &Database) -> Layout {
    let layout = Layout::open_settled(db, SequenceLayoutKind::KeyPerStep).await.unwrap();
    db.run(&RetryOptions::default(), |tx| {
        let layout = layout.clone();
        async move { apply_example(&layout, &tx).await }
    })
    .await
    .unwrap();
    layout
}

/// Pipeline settings for tests: small batches flushed every 20 ms, run actors idle after 500 ms,
/// commits every 20 ms and quick restarts, so chaos and rebalances show within seconds.
pub fn small_pipeline_config() -> matyan::actors::PipelineConfig {
    use std::time::Duration;
    matyan::actors::PipelineConfig {
        budget: matyan::ingest::BatchBudget {
            max_bytes: 200_000,
            max_messages: 200,
            max_age: Duration::from_millis(20),
        },
        retry: RetryOptions { timeout: Duration::from_secs(20), retry_limit: 50, ..RetryOptions::default() },
        run_idle_timeout: Duration::from_millis(500),
        commit_interval: Duration::from_millis(20),
        restart_backoff_initial: Duration::from_millis(10),
        restart_backoff_max: Duration::from_millis(200),
        ..matyan::actors::PipelineConfig::default()
    }
}

/// Percent-encodes `q` for a query string (unreserved characters kept).
pub fn enc(q: &str) -> String {
    let mut out = String::new();
    for b in q.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Checks that series `(run, ctx, name)` holds exactly the points `(i, i)` for `i` in
/// `0..expected`, in step order (nothing lost, nothing duplicated, source order kept); returns
/// how many points it holds.
pub async fn check_series(
    db: &Database,
    layout: &Layout,
    run: &str,
    ctx: &serde_json::Value,
    name: &str,
    expected: i64,
) -> usize {
    let tx = db.create_trx().unwrap();
    let id = SeqId { run, ctx_id: context_to_id(ctx), name };
    let cols = matyan::storage::layout::Columns { epoch: false, time: false };
    let points = layout.seqs.read(&tx, id, None, None, cols, true).await.unwrap();
    let got: Vec<(i64, i64)> =
        points.iter().map(|p| (p.step, value::decode(&p.val).unwrap().as_f64().unwrap() as i64)).collect();
    let want: Vec<(i64, i64)> = (0..expected).map(|i| (i, i)).collect();
    if got != want {
        let first_bad = got.iter().zip(&want).position(|(g, w)| g != w);
        panic!("run {run}: {} points, expected {expected}; first difference at {first_bad:?}", got.len());
    }
    points.len()
}
