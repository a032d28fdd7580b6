//! The REST routes that read sequences answer byte for byte the same on a chunked store as on a
//! key-per-step store holding the same points: metric search at every density path, get-batch with
//! densities and ranges, run info, terminal logs.

mod common;

use axum::body::Body;
use axum::http::Request;
use futures_util::StreamExt as _;
use matyan::storage::context_id::context_to_id;
use matyan::storage::kv::{Database, RetryOptions};
use matyan::storage::layout::{Layout, LayoutError, SeqId, SeqWrite, SequenceLayoutKind, TraceInfo};
use matyan::storage::value::{self, Value};
use serde_json::json;
use tower::ServiceExt as _;

const R: &str = "/api/v1/rest";
const RUN: &str = "00000000000000000000000000a1b2c3";

/// The series of the store: name, dtype, steps.
fn series() -> Vec<(&'static str, &'static str, Vec<i64>)> {
    vec![
        ("gapless", "float", (0..3_000).collect()),
        ("one_gap", "float", (0..3_000).filter(|s| *s != 1_234).collect()),
        ("sparse", "float", (0..3_000).map(|s| s * 7 + s % 3).collect()),
        ("short", "float", (5..40).collect()),
        ("logs", "logs", (0..500).collect()),
    ]
}

async fn store(kind: SequenceLayoutKind) -> (Database, Layout) {
    let db = Database::memory();
    let layout = Layout::open_settled(&db, kind).await.unwrap();
    assert_eq!(layout.seqs.kind(), kind);
    let l = layout.clone();
    db.run(&RetryOptions::default(), |tx| {
        let l = l.clone();
        async move { l.runs.create_run(&tx, RUN, common::NOW, Some(common::NOW)).await }
    })
    .await
    .unwrap();
    for (name, dtype, steps) in series() {
        let ctx = if dtype == "logs" { json!({}) } else { json!({"subset": "train"}) };
        let ctx_id = context_to_id(&ctx);
        for batch in steps.chunks(700) {
            let vals: Vec<Vec<u8>> = batch
                .iter()
                .map(|s| {
                    let v = if dtype == "logs" {
                        Value::from(format!("line {s}"))
                    } else {
                        Value::Float(1.0 / (*s as f64 + 2.0))
                    };
                    value::encode(&v).unwrap()
                })
                .collect();
            let l = layout.clone();
            db.run(&RetryOptions::default(), |tx| {
                let (l, ctx, vals) = (l.clone(), ctx.clone(), &vals);
                async move {
                    l.runs.runs.set_context(&tx, RUN, ctx_id, &Value::from(&ctx))?;
                    let points: Vec<SeqWrite<'_>> = batch
                        .iter()
                        .zip(vals)
                        .map(|(s, v)| SeqWrite { step: *s, val: v, epoch: (s % 4 != 0).then_some(s / 100), time: 7.0 })
                        .collect();
                    l.seqs.write(&tx, SeqId { run: RUN, ctx_id, name }, &points).await?;
                    let last = value::decode(&vals[vals.len() - 1]).unwrap();
                    let last_step = batch[batch.len() - 1];
                    let trace = TraceInfo { ctx_id, name, dtype, last: Some(&last), last_step };
                    l.runs.record_trace(&tx, RUN, &trace)?;
                    Ok::<_, LayoutError>(())
                }
            })
            .await
            .unwrap();
        }
    }
    (db, layout)
}

async fn call(
    db: &Database,
    layout: &Layout,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
) -> (u16, Vec<u8>) {
    let state = common::app_state(db, layout);
    let req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let resp = matyan::http::service(state).oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    (status, axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_routes_answer_the_same_bytes_on_both_layouts() {
    let (kps_db, kps) = store(SequenceLayoutKind::KeyPerStep).await;
    let (chunked_db, chunked) = store(SequenceLayoutKind::Chunked).await;
    let q = common::enc("metric.name != \"\"");
    let names = ["gapless", "one_gap", "sparse", "short"];
    let batch = json!(names.iter().map(|n| json!({"name": n, "context": {"subset": "train"}})).collect::<Vec<_>>());
    let mut requests: Vec<(&str, String, Option<serde_json::Value>)> = Vec::new();
    for p in [1, 3, 50, 127, 128, 300, 500, 5_000] {
        requests.push(("GET", format!("{R}/runs/search/metric?q={q}&p={p}&report_progress=false"), None));
    }
    for extra in ["", "?record_density=500", "?record_density=50", "?record_range=100:2000&record_density=100"] {
        requests.push(("POST", format!("{R}/runs/{RUN}/metric/get-batch/{extra}"), Some(batch.clone())));
    }
    requests.push(("GET", format!("{R}/runs/{RUN}/info/"), None));
    for range in ["", "?record_range=10:20", "?record_range=450:"] {
        requests.push(("GET", format!("{R}/runs/{RUN}/logs/{range}"), None));
    }
    for (method, uri, body) in requests {
        let a = call(&kps_db, &kps, method, &uri, body.clone()).await;
        let b = call(&chunked_db, &chunked, method, &uri, body).await;
        assert_eq!(a.0, 200, "{uri}: {}", String::from_utf8_lossy(&a.1));
        assert!(a.1.len() > 2, "{uri}: an empty answer proves nothing");
        assert!(
            a == b,
            "{uri}: the layouts differ\n{}\n{}",
            String::from_utf8_lossy(&a.1),
            String::from_utf8_lossy(&b.1)
        );
    }
}

/// A get-batch of one train series of the store, with a key budget of `max_keys`: the status.
async fn get_batch_within(db: &Database, layout: &Layout, name: &str, max_keys: u64) -> u16 {
    let state = common::app_state_with(db, layout, |c| c.query.max_keys_per_request = max_keys);
    let body = json!([{"name": name, "context": {"subset": "train"}}]);
    let req = Request::builder()
        .method("POST")
        .uri(format!("{R}/runs/{RUN}/metric/get-batch/"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    matyan::http::service(state).oneshot(req).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_budget_counts_the_chunks_a_read_fetches_and_on_key_per_step_each_key() {
    let (kps_db, kps) = store(SequenceLayoutKind::KeyPerStep).await;
    let (chunked_db, chunked) = store(SequenceLayoutKind::Chunked).await;
    // 3,000 points: a few chunks of up to 1,024 points, or 3,000 keys of the `val` column.
    assert_eq!(get_batch_within(&chunked_db, &chunked, "gapless", 200).await, 200, "the chunks fit 200 keys");
    assert_eq!(get_batch_within(&kps_db, &kps, "gapless", 200).await, 400, "3,000 keys do not");
    assert_eq!(get_batch_within(&kps_db, &kps, "gapless", 4_000).await, 200);

    // The smallest budget for the run's meta, its traces and the one chunk of `short` (35
    // points): the 3 chunks of `gapless` exceed it, and the read stops there.
    let mut fits_one_chunk = None;
    for max_keys in 1..200 {
        if get_batch_within(&chunked_db, &chunked, "short", max_keys).await == 200 {
            fits_one_chunk = Some(max_keys);
            break;
        }
    }
    let max_keys = fits_one_chunk.expect("a budget of under 200 keys reads one chunk");
    assert_eq!(get_batch_within(&chunked_db, &chunked, "gapless", max_keys).await, 400);
    assert_eq!(get_batch_within(&chunked_db, &chunked, "gapless", max_keys + 10).await, 200, "a few chunks more");
}

/// One request with `query.max_concurrent_series_reads = at_once` and a key budget of `max_keys`:
/// the status and the body (for a stream cut off by the budget, what was sent and the error).
async fn call_at_once(
    db: &Database,
    layout: &Layout,
    (at_once, max_keys): (u32, u64),
    (method, uri, body): (&str, &str, Option<&serde_json::Value>),
) -> (u16, Vec<u8>) {
    let state = common::app_state_with(db, layout, |c| {
        c.query.max_concurrent_series_reads = at_once;
        c.query.max_keys_per_request = max_keys;
    });
    let req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let resp = matyan::http::service(state).oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let mut stream = resp.into_body().into_data_stream();
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(e) => {
                body.extend_from_slice(format!("<cut off: {e}>").as_bytes());
                break;
            }
        }
    }
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_read_at_once_answer_the_same_bytes_and_need_the_same_key_budget_as_read_one_by_one() {
    let names = ["gapless", "one_gap", "sparse", "short", "gapless"];
    let batch = json!(names.iter().map(|n| json!({"name": n, "context": {"subset": "train"}})).collect::<Vec<_>>());
    let q = common::enc("metric.name != \"\"");
    let requests = [
        ("POST", format!("{R}/runs/{RUN}/metric/get-batch/"), Some(&batch)),
        ("POST", format!("{R}/runs/{RUN}/metric/get-batch/?record_range=100:2000&record_density=100"), Some(&batch)),
        ("GET", format!("{R}/runs/search/metric?q={q}&p=50&report_progress=false"), None),
        ("GET", format!("{R}/runs/search/metric?q={q}&p=500&x_axis=short&report_progress=false"), None),
    ];
    for kind in [SequenceLayoutKind::KeyPerStep, SequenceLayoutKind::Chunked] {
        let (db, layout) = store(kind).await;
        for (method, uri, body) in &requests {
            let request = (*method, uri.as_str(), *body);
            let one_by_one = call_at_once(&db, &layout, (1, 50_000_000), request).await;
            assert_eq!(one_by_one.0, 200, "{kind:?} {uri}: {}", String::from_utf8_lossy(&one_by_one.1));
            for at_once in [2, 8] {
                let answer = call_at_once(&db, &layout, (at_once, 50_000_000), request).await;
                assert!(answer == one_by_one, "{kind:?} {uri}: {at_once} at once answers otherwise");
            }
            // The smallest key budget the request fits read one by one (the budget is charged
            // for each series in turn), and the answers just below and at it read at once.
            let (mut lo, mut hi) = (1, 1 << 20);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if call_at_once(&db, &layout, (1, mid), request).await.0 == 200 { hi = mid } else { lo = mid + 1 }
            }
            for max_keys in [lo - 1, lo] {
                let one = call_at_once(&db, &layout, (1, max_keys), request).await;
                let many = call_at_once(&db, &layout, (8, max_keys), request).await;
                assert!(
                    one == many,
                    "{kind:?} {uri} within {max_keys} keys: {} {} read one by one, {} {} at once",
                    one.0,
                    String::from_utf8_lossy(&one.1),
                    many.0,
                    String::from_utf8_lossy(&many.1)
                );
            }
        }
    }
}
