//! The conformance cases of spec `api.md` §12 not covered elsewhere, one test per case, against the
//! in-process router.
//!
//! Where each of the 25 cases is covered:
//!
//! | §12 | case                          | test(s)                                                                   |
//! |-----|-------------------------------|---------------------------------------------------------------------------|
//! |  1  | codec primitives              | `src/http/stream.rs` `primitives_encode_as_the_conformance_suite_says`;    |
//! |     |                               | here `case_01_codec_markers_and_iterator_equals_list`                     |
//! |  2  | error envelope                | `api_runs.rs` `conformance_2_error_envelope_for_an_unknown_run`,          |
//! |     |                               | `api_entities.rs` `conformance_2_experiment_validation_and_duplicate_names` |
//! |  3  | trailing slash and probes     | `api_entities.rs` `conformance_3_version`, `serve.rs` (real listener);     |
//! |     |                               | here `case_03_health_live_without_slash_and_ready_degraded_on_failed_ping` |
//! |  4  | default archived filter       | `api_runs.rs` `conformance_4_default_archived_filter`                     |
//! |  5  | run search limit              | `api_runs.rs` `conformance_5_run_search_limit`                            |
//! |  6  | run search sorting            | `api_runs.rs` `conformance_6_run_search_sorting`                          |
//! |  7  | pending deletion              | `api_write.rs` `conformance_7_*` (3 tests), `api_runs.rs` `conformance_7_*` |
//! |  8  | run update                    | `api_write.rs` `conformance_8_*` (2 tests)                                |
//! |  9  | batch finish/archive          | `api_write.rs` `conformance_9_*` (2 tests)                                |
//! | 10  | run ↔ tag                     | `api_write.rs` `conformance_10_*` (2 tests)                               |
//! | 11  | run notes                     | `api_entities.rs` `conformance_11_run_notes`                              |
//! | 12  | terminal logs                 | `api_logs_objects.rs` `conformance_12_*`                                  |
//! | 13  | log records                   | `api_logs_objects.rs` `conformance_13_*`                                  |
//! | 14  | metric get-batch              | `api_runs.rs` `conformance_14_metric_get_batch`                           |
//! | 15  | metric search, indexed name   | `api_runs.rs` `conformance_15_metric_search_indexed_name`                 |
//! | 16  | metric search, in-memory      | `api_runs.rs` `conformance_16_metric_search_in_memory_predicates`         |
//! | 17  | metric search shape           | here `case_17_metric_search_shape`                                        |
//! | 18  | numpy payloads                | `api_runs.rs` `conformance_18_numpy_payloads`                             |
//! | 19  | active runs                   | `api_logs_objects.rs` `conformance_19_active_runs`                        |
//! | 20  | alignment                     | `api_logs_objects.rs` `conformance_20_*`                                  |
//! | 21  | custom objects                | `api_logs_objects.rs` `conformance_21_*` (4 tests); images get-batch with |
//! |     |                               | `index_range`: `image_get_batch_and_get_step_with_index_range_*`          |
//! | 22  | blob batch                    | here `case_22_blob_batch_skips_invalid_uris_and_sends_blob_bytes_by_uri`; |
//! |     |                               | URI round trip also in `src/blobs/uri.rs`                                 |
//! | 23  | experiments                   | `api_entities.rs` `conformance_23_experiments`                            |
//! | 24  | tags                          | `api_entities.rs` `conformance_24_tags`                                   |
//! | 25  | project and UI-state entities | `api_entities.rs` `conformance_25_project_and_ui_state_entities`,         |
//! |     |                               | `api_runs.rs` `conformance_25_projects_params_with_exclude_params`        |

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use matyan::app::AppState;
use matyan::blobs::BlobUri;
use matyan::http::stream::{Key, StreamValue, decode_objects, encode_object};
use matyan::storage::context_id::context_to_id;
use matyan::storage::kv::{Database, Limits, RetryOptions};
use matyan::storage::layout::{Layout, LayoutError, SeqId, SeqWrite, TraceInfo};
use matyan::storage::value::{self, Value};
use serde_json::{Value as J, json};
use tower::ServiceExt as _;

use common::NOW;

const R: &str = "/api/v1/rest";

fn state_of(db: &Database, layout: &Layout) -> AppState {
    common::app_state(db, layout)
}

async fn get(state: &AppState, uri: &str) -> (u16, Vec<u8>) {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let work = async {
        let resp = matyan::http::service(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec())
    };
    tokio::time::timeout(Duration::from_secs(10), work).await.unwrap()
}

/// The `(key, value)` byte records of a stream body (§3.1: LE u32 length, key, LE u32 length, value).
fn raw_records(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = body;
    let take = |rest: &mut &[u8]| {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let (part, tail) = tail.split_at(len);
        *rest = tail;
        part.to_vec()
    };
    while !rest.is_empty() {
        let key = take(&mut rest);
        let value = take(&mut rest);
        out.push((key, value));
    }
    out
}

#[test]
#[allow(clippy::approx_constant)] // The spec's example is 3.14.
fn case_01_codec_markers_and_iterator_equals_list() {
    // An empty dict is one object-marker record at its own path.
    let empty = raw_records(&encode_object("k", &StreamValue::Dict(vec![])).unwrap());
    assert_eq!(empty, vec![(b"k\xfe".to_vec(), vec![7])]);
    // A two-element list: an array marker, then records at indices 0 and 1.
    let list = raw_records(&encode_object("k", &StreamValue::list([1i64, 2])).unwrap());
    assert_eq!(list.len(), 3);
    assert_eq!(list[0], (b"k\xfe".to_vec(), vec![6]));
    let index = |i: i64| [&b"k\xfe\xfe"[..], &i.to_be_bytes(), b"\xfe"].concat();
    assert_eq!(list[1].0, index(0));
    assert_eq!(list[2].0, index(1));
    assert_eq!(list[1].1, [&[2u8][..], &1i64.to_le_bytes()].concat());
    // A lazily produced sequence and the equivalent list give byte-identical streams.
    let lazy = StreamValue::list((0..5i64).map(|i| i * i));
    let eager = StreamValue::list(vec![0i64, 1, 4, 9, 16]);
    assert_eq!(encode_object("k", &lazy).unwrap(), encode_object("k", &eager).unwrap());
    // Scalars: null, booleans, int, float, string, bytes.
    let value_of = |v: StreamValue| raw_records(&encode_object("k", &v).unwrap())[0].1.clone();
    assert_eq!(value_of(StreamValue::None), [0]);
    assert_eq!(value_of(true.into()), [1, 1]);
    assert_eq!(value_of(false.into()), [1, 0]);
    assert_eq!(value_of(42i64.into()), [&[2u8][..], &42i64.to_le_bytes()].concat());
    assert_eq!(value_of(3.14.into()), [&[3u8][..], &3.14f64.to_le_bytes()].concat());
    assert_eq!(value_of("hello".into()), b"\x04hello");
    assert_eq!(value_of(StreamValue::Bytes(b"ab".to_vec())), b"\x05ab");
}

#[tokio::test]
async fn case_03_health_live_without_slash_and_ready_degraded_on_failed_ping() {
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    let ok = state_of(&db, &layout);
    let (status, body) = get(&ok, "/health/live").await;
    assert_eq!((status, serde_json::from_slice::<J>(&body).unwrap()), (200, json!({"status": "ok"})));
    let (status, body) = get(&ok, "/health/ready").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, body) = get(&ok, &format!("{R}/version")).await;
    let v: J = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["component"], "backend");
    assert!(v["fdb_api_version"].is_i64());

    // A store whose every read is already too old: the ping fails.
    let failing = Database::memory_with_limits(Limits { txn_lifetime: Duration::ZERO, ..Limits::FDB });
    let broken = state_of(&failing, &layout);
    let (status, body) = get(&broken, "/health/ready").await;
    let v: J = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["status"], "degraded");
    let text = v["checks"]["fdb"].as_str().unwrap();
    assert!(!text.is_empty() && text != "ok", "{v}");
    // Liveness does not depend on storage.
    assert_eq!(get(&broken, "/health/live/").await.0, 200);
}

/// Creates run `hash` (created at `NOW + at`) with metrics `names`, each with values 0.5 and 0.25.
async fn seed_run(db: &Database, layout: &Layout, hash: &str, at: f64, names: &[String]) {
    db.run(&RetryOptions::default(), |tx| {
        let layout = layout.clone();
        async move {
            layout.runs.create_run(&tx, hash, NOW + at, None).await?;
            let ctx = json!({});
            let ctx_id = context_to_id(&ctx);
            layout.runs.runs.set_context(&tx, hash, ctx_id, &Value::from(&ctx))?;
            for name in names {
                let id = SeqId { run: hash, ctx_id, name };
                for (step, v) in [0.5, 0.25].into_iter().enumerate() {
                    let step = step as i64;
                    let val = value::encode(&Value::Float(v)).unwrap();
                    layout
                        .seqs
                        .write(&tx, id, &[SeqWrite { step, val: &val, epoch: Some(0), time: NOW }])
                        .await
                        .unwrap();
                    let last = Value::Float(v);
                    let trace = TraceInfo { ctx_id, name, dtype: "float", last: Some(&last), last_step: step };
                    layout.runs.record_trace(&tx, hash, &trace)?;
                }
            }
            Ok::<_, LayoutError>(())
        }
    })
    .await
    .unwrap();
}

fn trace_names(run: &StreamValue) -> Vec<String> {
    let Some(StreamValue::List(traces)) = run.get("traces") else { panic!("traces: {run:?}") };
    traces
        .iter()
        .map(|t| {
            assert!(t.get("values").is_some() && t.get("iters").is_some(), "values and iters leaves: {t:?}");
            match t.get("name") {
                Some(StreamValue::Str(s)) => s.clone(),
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

#[tokio::test]
async fn case_17_metric_search_shape() {
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    for i in 0..15 {
        seed_run(&db, &layout, &format!("run{i:02}"), f64::from(i), &["loss".to_owned()]).await;
    }
    let twelve: Vec<String> = (0..12).map(|i| format!("metric_{i}")).collect();
    seed_run(&db, &layout, "wide", 100.0, &twelve).await;
    let state = state_of(&db, &layout);

    // Fifteen runs (more than one internal batch) all appear, with progress frames when asked.
    let (status, body) = get(&state, &format!("{R}/runs/search/metric/?q=&report_progress=true")).await;
    assert_eq!(status, 200);
    let objects = decode_objects(&body).unwrap();
    assert!(objects.iter().any(|(k, _)| k.is_progress()), "no progress_* keys");
    let runs: Vec<&(Key, StreamValue)> = objects.iter().filter(|(k, _)| !k.is_progress()).collect();
    let mut hashes: Vec<String> = runs.iter().map(|(k, _)| k.to_string()).collect();
    hashes.sort();
    let mut expected: Vec<String> = (0..15).map(|i| format!("run{i:02}")).collect();
    expected.push("wide".to_owned());
    assert_eq!(hashes, expected);
    for (_, run) in &runs {
        assert!(!trace_names(run).is_empty());
    }

    // Twelve metrics come in storage (lexicographic) order.
    let wide = runs.iter().find(|(k, _)| k.as_str() == Some("wide")).unwrap();
    let mut lexicographic = twelve.clone();
    lexicographic.sort();
    assert_eq!(trace_names(&wide.1), lexicographic);
    assert_eq!(trace_names(&wide.1)[..4], ["metric_0", "metric_1", "metric_10", "metric_11"]);

    // `trace_chunk_size=0` is accepted (clamped).
    let (status, body) =
        get(&state, &format!("{R}/runs/search/metric/?q=&trace_chunk_size=0&report_progress=false")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let objects = decode_objects(&body).unwrap();
    assert_eq!(objects.iter().filter(|(k, _)| !k.is_progress()).count(), 16);
}

#[tokio::test]
async fn case_22_blob_batch_skips_invalid_uris_and_sends_blob_bytes_by_uri() {
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    let blob_dir = tempfile::tempdir().unwrap();
    let dir = blob_dir.path().to_path_buf();
    let state = common::app_state_with(&db, &layout, |c| c.blobs.dir = dir);
    // Run "abc": four images at step 10 of "images" in context {}, stored with their s3_key.
    let ctx = json!({});
    let ctx_id = context_to_id(&ctx);
    db.run(&RetryOptions::default(), |tx| {
        let layout = layout.clone();
        let ctx = ctx.clone();
        async move {
            layout.runs.create_run(&tx, "abc", NOW, None).await?;
            layout.runs.runs.set_context(&tx, "abc", ctx_id, &Value::from(&ctx))?;
            let items: Vec<J> = (0..4).map(|i| json!({"s3_key": format!("abc/seq/images/10_{i}.png")})).collect();
            let val = value::encode(&Value::from(&J::Array(items))).unwrap();
            let id = SeqId { run: "abc", ctx_id, name: "images" };
            layout.seqs.write(&tx, id, &[SeqWrite { step: 10, val: &val, epoch: None, time: NOW }]).await.unwrap();
            let last = Value::Float(0.0);
            let trace = TraceInfo { ctx_id, name: "images", dtype: "image", last: Some(&last), last_step: 10 };
            layout.runs.record_trace(&tx, "abc", &trace)?;
            Ok::<_, LayoutError>(())
        }
    })
    .await
    .unwrap();
    let bytes = b"\x89PNG\r\n\x1a\n the fourth image".to_vec();
    state.blobs.store.put("abc/seq/images/10_3.png", bytes.clone(), Some("image/png")).await.unwrap();

    // An invalid URI: 200, skipped.
    let (status, body) = post(&state, &format!("{R}/runs/images/get-batch/"), json!(["invalid-uri"])).await;
    assert_eq!((status, body.len()), (200, 0));

    // A valid URI: one record whose key is the URI and whose value is the blob's bytes.
    let uri = state.blobs.uris.mint(&BlobUri { run: "abc".into(), ctx_id, seq: "images".into(), step: 10, index: 3 });
    let (status, body) = post(&state, &format!("{R}/runs/images/get-batch/"), json!(["invalid-uri", uri])).await;
    assert_eq!(status, 200);
    let key = [uri.as_bytes(), &[0xFE]].concat();
    assert_eq!(raw_records(&body), vec![(key, [&[5u8][..], &bytes].concat())]);

    // Round trip: (run "abc", ctx 42, "audios", step 10, index 3) decodes back to exactly those
    // five fields; different runs give different URIs.
    let fields = BlobUri { run: "abc".into(), ctx_id: 42, seq: "audios".into(), step: 10, index: 3 };
    let minted = state.blobs.uris.mint(&fields);
    assert_eq!(state.blobs.uris.decode(&minted).unwrap(), fields);
    let other = state.blobs.uris.mint(&BlobUri { run: "abd".into(), ..fields.clone() });
    assert_ne!(minted, other);
    assert_eq!(state.blobs.uris.decode(&other).unwrap().run, "abd");
}

async fn post(state: &AppState, uri: &str, body: J) -> (u16, Vec<u8>) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let work = async {
        let resp = matyan::http::service(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec())
    };
    tokio::time::timeout(Duration::from_secs(10), work).await.unwrap()
}
