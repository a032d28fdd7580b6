//! Hostile queries against the in-process router (issue 9 items 1 and 3): queries of a few dozen
//! bytes that would build values of gigabytes answer 400 naming the memory budget, and a long
//! evaluation runs off the async runtime, so health probes and metrics answer meanwhile and a
//! search beyond `query.max_concurrent_heavy_requests` is a 503 with `Retry-After`.
//!
//! The binary runs under a capped allocator: should the accounting regress, it aborts rather
//! than exhausting the test machine's memory.

#[path = "support/capped_alloc.rs"]
mod capped_alloc;
mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use matyan::app::AppState;
use matyan::config::Config;
use matyan::storage::kv::{Database, RetryOptions};
use matyan::storage::layout::LayoutError;
use serde_json::Value as J;
use tower::ServiceExt as _;

#[global_allocator]
static ALLOC: capped_alloc::Capped = capped_alloc::Capped;

const R: &str = "/api/v1/rest";

/// The queries of issue 9 item 1.
const HOSTILE: [&str; 5] = [
    "len([[0]*100000]*100000) > 0",
    "len(['a'*1000000]*100000) > 0",
    "len(((0,)*100000,)*100000) > 0",
    "len([[[[0]*100]*100]*100]*100) > 0",
    "len(','.join(['a'*100000]*100000)) > 0",
];

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> J {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn state_with(configure: impl FnOnce(&mut Config)) -> AppState {
    let db = Database::memory();
    let layout = common::write_worked_example(&db).await;
    let mut config = Config::from_toml_str("test", "").unwrap();
    configure(&mut config);
    config.validate().unwrap();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
    AppState::new(db, layout, config, Some(metrics)).unwrap()
}

/// One GET, body read whole; panics if it hangs (a hang guard, not a timing assertion).
async fn get(state: &AppState, uri: &str) -> Answer {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let svc = matyan::http::service(state.clone());
    let work = async move {
        let resp = svc.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec();
        Answer { status, headers, body }
    };
    let shown = uri[..uri.len().min(100)].to_owned();
    tokio::time::timeout(Duration::from_secs(120), work).await.unwrap_or_else(|_| panic!("GET {shown} hung"))
}

fn search(route: &str, q: &str) -> String {
    format!("{R}/runs/search/{route}/?q={}", common::enc(q))
}

async fn assert_budget_400(state: &AppState, route: &str, q: &str, limit: u64) {
    let a = get(state, &search(route, q)).await;
    assert_eq!(a.status, 400, "{route} {q}: {}", String::from_utf8_lossy(&a.body));
    let body = a.json();
    assert_eq!(body["error"]["code"], "bad_request", "{q}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("request exceeds its work budget: "), "{q}: {message}");
    assert!(message.contains(&format!("{limit} bytes (query.max_value_bytes)")), "{q}: {message}");
}

async fn assert_still_serving(state: &AppState) {
    assert_eq!(get(state, "/health/live/").await.status, 200);
    let a = get(state, &search("run", "run.name != 'nothing'")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(!a.body.is_empty());
}

#[tokio::test]
async fn a_query_that_repeats_values_beyond_the_memory_budget_is_a_400_naming_it_and_the_server_stays_up() {
    let limit = 1 << 20;
    let state = state_with(|c| c.query.max_value_bytes = limit).await;
    for q in HOSTILE {
        for route in ["run", "metric", "images"] {
            assert_budget_400(&state, route, q, limit).await;
        }
    }
    assert_still_serving(&state).await;
}

#[tokio::test]
async fn the_default_memory_budget_refuses_the_hostile_queries_too() {
    let state = state_with(|_| {}).await;
    let limit = state.config.query.max_value_bytes;
    for q in HOSTILE {
        assert_budget_400(&state, "run", q, limit).await;
    }
    // In each run's evaluation as well, where the values depend on the run and cannot be
    // checked up front.
    assert_budget_400(&state, "run", "len([[run.name]*100000]*100000) > 0", limit).await;
    assert_still_serving(&state).await;
}

/// A query that evaluates for a long time (each term builds a 1 MB string and scans it) within
/// the budgets of [`long_state`], and matches nothing.
fn long_query() -> String {
    let term = "('ab' * 500).replace('b', 'b' * 2000).count('ba')";
    format!("({}) and run.name == 'never'", vec![term; 500].join(" and "))
}

#[tokio::test]
async fn health_and_metrics_answer_while_a_long_query_evaluates_and_a_search_beyond_the_limit_is_a_503_with_retry_after()
 {
    let state = state_with(|c| {
        c.query.max_concurrent_heavy_requests = 1;
        // The long query builds (and drops) half a gigabyte in 1 MB strings.
        c.query.max_value_bytes = 1 << 30;
    })
    .await;
    // This runtime has one thread: were the evaluation on it, nothing else would answer.
    let long = tokio::spawn({
        let state = state.clone();
        async move { get(&state, &search("run", &long_query())).await }
    });
    common::wait::until("the long search takes the only place", Duration::from_secs(60), || {
        state.heavy.available_permits() == 0
    })
    .await;
    assert_eq!(get(&state, "/health/live/").await.status, 200);
    assert_eq!(get(&state, "/metrics/").await.status, 200);
    let busy = get(&state, &search("run", "run.name == 'x'")).await;
    assert_eq!(busy.status, 503, "{}", String::from_utf8_lossy(&busy.body));
    assert_eq!(busy.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert_eq!(busy.json()["error"]["code"], "service_unavailable");
    assert!(busy.json()["error"]["message"].as_str().unwrap().contains("query.max_concurrent_heavy_requests"));
    // Other heavy routes share the limit.
    assert_eq!(get(&state, &search("metric", "")).await.status, 503);
    assert_eq!(get(&state, &format!("{R}/runs/active/")).await.status, 503);
    assert!(!long.is_finished(), "the long search was still evaluating while the others answered");
    let started = std::time::Instant::now();
    let long = long.await.unwrap();
    assert_eq!(long.status, 200, "{}", String::from_utf8_lossy(&long.body));
    eprintln!("the long search finished {:?} after the others answered", started.elapsed());
    // Its place is free again.
    assert_still_serving(&state).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_a_search_frees_its_place_at_the_time_limit_and_gets_an_aborted_body() {
    let state = state_with(|c| {
        c.query.max_concurrent_heavy_requests = 1;
        c.query.max_request_time_ms = 300;
        c.query.stream_chunk_bytes = 1;
    })
    .await;
    // Twelve more runs: twelve chunks (one per run, as `stream_chunk_bytes = 1` sends them), more
    // than the body channel holds.
    state
        .db
        .run(&RetryOptions::default(), |tx| {
            let layout = state.layout.clone();
            async move {
                for i in 0..12 {
                    layout.runs.create_run(&tx, &format!("r{i:02}"), common::NOW, None).await?;
                }
                Ok::<_, LayoutError>(())
            }
        })
        .await
        .unwrap();
    let req = Request::builder().uri(search("run", "")).body(Body::empty()).unwrap();
    let resp = matyan::http::service(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The body is not read: the producer fills the channel and waits, holding the only place
    // until the request's time limit.
    common::wait::until("the stalled stream frees its place", Duration::from_secs(60), || {
        state.heavy.available_permits() > 0
    })
    .await;
    let read = axum::body::to_bytes(resp.into_body(), 64 << 20).await;
    assert!(read.is_err(), "a stream cut at its time limit must not end like a whole one");
    assert_still_serving(&state).await;
}
