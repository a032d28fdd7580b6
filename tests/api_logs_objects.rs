//! Logs, log records, active runs, metric alignment, custom objects and the blobs of images and
//! audios (spec `api.md` §4.3, §4.4, §4.7, §4.8, §7.2) against the in-process router, with data
//! written through the ingestion applier from decoded messages and blobs put in a temporary
//! local blob store; conformance cases 12, 13 and 19–21 of §12 are named after their number.

mod common;

use axum::body::Body;
use axum::http::Request;
use matyan::app::AppState;
use matyan::blobs::BlobUri;
use matyan::http::stream::{Float64Array, Key, StreamValue, decode_objects, progress_of};
use matyan::ingest::apply::{Applier, IdRequest, position_uuid};
use matyan::ingest::{Entry, decode};
use matyan::storage::kv::{Database, RetryOptions};
use matyan::storage::layout::Layout;
use serde_json::{Value as J, json};
use tower::ServiceExt as _;

const R: &str = "/api/v1/rest";
const NOW: f64 = 1_735_689_600.0;

struct Fixture {
    db: Database,
    applier: Applier,
    next_offset: i64,
    /// The local blob store's directory.
    blobs: tempfile::TempDir,
}

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> J {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Every top-level record of the stream, progress frames included.
    fn all(&self) -> Vec<(Key, StreamValue)> {
        decode_objects(&self.body).unwrap()
    }

    /// The results, progress frames left out.
    fn objects(&self) -> Vec<(Key, StreamValue)> {
        self.all().into_iter().filter(|(k, _)| !k.is_progress()).collect()
    }

    fn keys(&self) -> Vec<String> {
        self.objects().into_iter().map(|(k, _)| k.to_string()).collect()
    }

    fn progress(&self) -> Vec<(i64, i64)> {
        self.all().iter().filter_map(|(k, v)| progress_of(k, v)).collect()
    }
}

fn assert_envelope(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    assert_eq!(v["error"]["code"], code);
    assert_eq!(v["detail"], v["error"]["message"]);
}

fn msg(kind: &str, payload: J) -> J {
    json!({"type": kind, "payload": payload})
}

fn create() -> J {
    msg("create_run", json!({"force_resume": false}))
}

fn line(step: i64, text: &str) -> J {
    msg("log_terminal_line", json!({"line": text, "step": step}))
}

fn record(text: &str, level: i64) -> J {
    msg(
        "log_record",
        json!({"message": text, "level": level, "timestamp": 1.5, "logger_info": ["f.py", 1], "extra_args": {"seed": 0}}),
    )
}

fn metric(name: &str, step: i64, value: f64, ctx: J) -> J {
    msg("log_metric", json!({"name": name, "value": value, "step": step, "epoch": 0, "context": ctx, "dtype": "float"}))
}

fn object(name: &str, step: i64, dtype: &str, value: J) -> J {
    msg(
        "log_custom_object",
        json!({"name": name, "value": value, "step": step, "epoch": null, "context": null, "dtype": dtype}),
    )
}

fn text(data: &str) -> J {
    json!({"type": "text", "data": data})
}

impl Fixture {
    async fn new() -> Self {
        let db = Database::memory();
        let layout = Layout::open(&db).await.unwrap();
        Fixture { db, applier: Applier::new(layout), next_offset: 0, blobs: tempfile::tempdir().unwrap() }
    }

    fn state(&self) -> AppState {
        let dir = self.blobs.path().to_path_buf();
        common::app_state_with(&self.db, self.applier.layout(), |c| c.blobs.dir = dir)
    }

    /// Puts `bytes` in the blob store under `key`, as the client's presigned upload does.
    async fn put_blob(&self, key: &str, bytes: &[u8]) {
        self.state().blobs.store.put(key, bytes.to_vec(), None).await.unwrap();
    }

    /// The five fields of a blob URI minted by the app.
    fn decode_uri(&self, token: &StreamValue) -> BlobUri {
        let StreamValue::Str(token) = token else { panic!("blob_uri is not a string: {token:?}") };
        self.state().blobs.uris.decode(token).unwrap()
    }

    /// Applies `msgs` of `run` through the ingestion applier, in one transaction.
    async fn apply(&mut self, run: &str, msgs: Vec<J>) {
        let entries: Vec<Entry> = msgs
            .into_iter()
            .map(|m| {
                let mut full = json!({"run_id": run, "timestamp": "2025-01-01T00:00:00Z"});
                full["type"] = m["type"].clone();
                full["payload"] = m["payload"].clone();
                let message = decode(&serde_json::to_vec(&full).unwrap()).unwrap();
                self.next_offset += 1;
                Entry { partition: 0, offset: self.next_offset, message }
            })
            .collect();
        let applier = &self.applier;
        let entries = &entries;
        let outcome = self
            .db
            .run(&RetryOptions::default(), |tx| async move {
                applier.apply(&tx, run, entries, NOW, &mut |r: &IdRequest<'_>| position_uuid(r)).await
            })
            .await
            .unwrap();
        assert_eq!(outcome.applied_total(), u64::try_from(entries.len()).unwrap(), "{outcome:?}");
    }

    async fn call(&self, method: &str, uri: &str, body: Option<&str>) -> Answer {
        let req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
        let resp = matyan::http::service(self.state()).oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec();
        Answer { status, content_type, body }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call("GET", uri, None).await
    }

    async fn post(&self, uri: &str, body: J) -> Answer {
        self.call("POST", uri, Some(&body.to_string())).await
    }
}

fn int_keys(a: &Answer) -> Vec<i64> {
    a.objects()
        .into_iter()
        .filter_map(|(k, _)| match k {
            Key::Int(i) => Some(i),
            Key::Str(_) => None,
        })
        .collect()
}

fn list(v: &StreamValue) -> &[StreamValue] {
    match v {
        StreamValue::List(items) => items,
        other => panic!("not a list: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Logs

#[tokio::test]
async fn conformance_12_terminal_logs_stream_one_record_per_line() {
    let mut fx = Fixture::new().await;
    let mut msgs = vec![create()];
    msgs.extend((0..10).map(|i| line(i, &format!("line {i}"))));
    fx.apply("run", msgs).await;
    fx.apply("quiet", vec![create()]).await;

    let a = fx.get(&format!("{R}/runs/run/logs")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type, "application/octet-stream");
    assert_eq!(int_keys(&a), (0..10).collect::<Vec<_>>());
    for (_, v) in a.objects() {
        let StreamValue::Str(s) = v else { panic!("{v:?}") };
        assert!(s.contains("line"));
    }
    let a = fx.get(&format!("{R}/runs/run/logs/?record_range=2:5")).await;
    assert_eq!(int_keys(&a), vec![2, 3, 4]);
    assert_eq!(int_keys(&fx.get(&format!("{R}/runs/run/logs/?record_range=7:")).await), vec![7, 8, 9]);
    assert_eq!(int_keys(&fx.get(&format!("{R}/runs/run/logs/?record_range=:2")).await), vec![0, 1]);
    // No colon: the whole range (quirk 20 replicated).
    assert_eq!(int_keys(&fx.get(&format!("{R}/runs/run/logs/?record_range=2,8")).await).len(), 10);

    for run in ["quiet", "unknown"] {
        let a = fx.get(&format!("{R}/runs/{run}/logs/")).await;
        assert_eq!(a.status, 200);
        assert!(a.body.is_empty(), "{run}");
    }
}

#[tokio::test]
async fn terminal_logs_default_to_the_last_200_lines() {
    let mut fx = Fixture::new().await;
    let mut msgs = vec![create()];
    msgs.extend((0..250).map(|i| line(i, "x")));
    fx.apply("run", msgs).await;
    let keys = int_keys(&fx.get(&format!("{R}/runs/run/logs/")).await);
    assert_eq!(keys.len(), 200);
    assert_eq!(keys.first(), Some(&50));
    assert_eq!(keys.last(), Some(&249));
}

#[tokio::test]
async fn conformance_13_log_records_count_first_then_one_tree_per_record() {
    let mut fx = Fixture::new().await;
    let mut msgs = vec![create()];
    msgs.extend((0..10).map(|i| record(&format!("message {i}"), if i == 0 { 40 } else { 20 })));
    fx.apply("run", msgs).await;
    fx.apply("quiet", vec![create()]).await;

    let a = fx.get(&format!("{R}/runs/run/log-records/")).await;
    assert_eq!(a.status, 200);
    let objects = a.objects();
    assert_eq!(objects[0], (Key::from("log_records_count"), StreamValue::Int(10)));
    assert_eq!(objects.len(), 11);
    let (key, first) = &objects[1];
    assert_eq!(*key, Key::Int(0));
    assert_eq!(first.get("message"), Some(&StreamValue::from("message 0")));
    assert_eq!(first.get("log_level"), Some(&StreamValue::from("ERROR")));
    assert_eq!(first.get("timestamp"), Some(&StreamValue::Float(1.5)));
    assert_eq!(first.get("is_notified"), Some(&StreamValue::Bool(true)));
    assert_eq!(first.get("args"), Some(&StreamValue::dict([("seed", StreamValue::Int(0))])));
    assert_eq!(objects[2].1.get("log_level"), Some(&StreamValue::from("INFO")));
    let messages = objects.iter().filter(|(_, v)| v.get("message").is_some()).count();
    assert_eq!(messages, 10);

    let short = fx.get(&format!("{R}/runs/run/log-records/?record_range=0:3")).await;
    assert!(short.body.len() < a.body.len());
    assert_eq!(short.objects()[0].1, StreamValue::Int(10), "the count ignores the range");
    assert_eq!(short.objects().len(), 4);

    for run in ["quiet", "unknown"] {
        let a = fx.get(&format!("{R}/runs/{run}/log-records/")).await;
        assert_eq!(a.objects(), vec![(Key::from("log_records_count"), StreamValue::Int(0))], "{run}");
    }
}

#[tokio::test]
async fn log_ranges_that_are_not_integers_are_a_422() {
    let mut fx = Fixture::new().await;
    fx.apply("run", vec![create(), line(0, "a")]).await;
    for route in ["logs", "log-records"] {
        for range in ["a:3", "1:b", "99999999999999999999:"] {
            let a = fx.get(&format!("{R}/runs/run/{route}/?record_range={range}")).await;
            assert_envelope(&a, 422, "validation_error");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Active runs, alignment

#[tokio::test]
async fn conformance_19_active_runs() {
    let mut fx = Fixture::new().await;
    fx.apply("done", vec![create(), metric("loss", 0, 0.5, json!({})), msg("finish_run", json!({}))]).await;
    let a = fx.get(&format!("{R}/runs/active")).await;
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty(), "only a finished run: empty body");

    fx.apply("live", vec![create(), metric("loss", 0, 0.9, json!({})), metric("loss", 1, 0.4, json!({}))]).await;
    fx.apply("live", vec![object("predictions", 0, "text", text("cat"))]).await;
    let a = fx.get(&format!("{R}/runs/active/")).await;
    assert_eq!(a.keys(), vec!["live"]);
    assert_eq!(a.progress(), vec![(1, 1)]);
    let (_, run) = &a.objects()[0];
    let traces = list(run.get("traces").unwrap().get("metric").unwrap());
    assert_eq!(traces.len(), 2, "every trace, custom objects included");
    let loss = traces.iter().find(|t| t.get("name") == Some(&StreamValue::from("loss"))).unwrap();
    let values = loss.get("values").unwrap();
    assert_eq!(values.get("last"), Some(&StreamValue::Float(0.4)));
    assert_eq!(values.get("last_step"), Some(&StreamValue::Int(1)));
    assert_eq!(run.get("props").unwrap().get("active"), Some(&StreamValue::Bool(true)));

    let quiet = fx.get(&format!("{R}/runs/active/?report_progress=False")).await;
    assert!(quiet.progress().is_empty());
    assert_envelope(&fx.get(&format!("{R}/runs/active/?report_progress=maybe")).await, 422, "validation_error");
}

#[tokio::test]
async fn conformance_20_alignment_returns_the_align_by_series() {
    let mut fx = Fixture::new().await;
    let ctx = json!({"subset": "train"});
    let mut msgs = vec![create()];
    for step in 0..5 {
        msgs.push(metric("loss", step, 1.0 / (step as f64 + 1.0), ctx.clone()));
        msgs.push(metric("acc", step, step as f64 * 10.0, ctx.clone()));
    }
    fx.apply("run", msgs).await;
    let body = json!({"align_by": "acc", "runs": [
        {"run_id": "run", "traces": [{"name": "loss", "context": ctx, "slice": [0, 3, 1]}]},
    ]});
    let a = fx.post(&format!("{R}/runs/search/metric/align"), body).await;
    assert_eq!(a.status, 200);
    assert!(a.progress().is_empty());
    let objects = a.objects();
    assert_eq!(objects.len(), 1);
    let entry = &list(&objects[0].1)[0];
    assert_eq!(entry.get("name"), Some(&StreamValue::from("loss")));
    let xs = Float64Array::from_decoded(entry.get("x_axis_values").unwrap()).unwrap();
    assert_eq!(xs.values(), vec![0.0, 10.0, 20.0, 30.0], "up to and including slice[1]");
    let iters = Float64Array::from_decoded(entry.get("x_axis_iters").unwrap()).unwrap();
    assert_eq!(iters.values(), vec![0.0, 1.0, 2.0, 3.0]);

    let body = json!({"align_by": "acc", "runs": [{"run_id": "nope", "traces": []}]});
    assert_eq!(fx.post(&format!("{R}/runs/search/metric/align/"), body).await.status, 200);
}

#[tokio::test]
async fn alignment_keeps_one_entry_per_requested_run_and_trace_fixing_quirk_8() {
    let mut fx = Fixture::new().await;
    fx.apply("run", vec![create(), metric("loss", 0, 0.5, json!({})), metric("acc", 0, 1.0, json!({}))]).await;
    let body = json!({"align_by": "acc", "runs": [
        {"run_id": "missing", "traces": [{"name": "loss", "context": {}, "slice": [0, 0, 1]}]},
        {"run_id": "run", "traces": [
            {"name": "nope", "context": {}, "slice": [0, 0, 1]},
            {"name": "loss", "context": {"other": 1}, "slice": [0, 0, 1]},
            {"name": "loss", "context": {}, "slice": [0, 0, 1]},
        ]},
    ]});
    let a = fx.post(&format!("{R}/runs/search/metric/align/"), body).await;
    let objects = a.objects();
    assert_eq!(objects.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>(), vec!["missing", "run"]);
    let lens = |v: &StreamValue| -> Vec<usize> {
        list(v)
            .iter()
            .map(|e| Float64Array::from_decoded(e.get("x_axis_values").unwrap()).unwrap().values().len())
            .collect()
    };
    assert_eq!(lens(&objects[0].1), vec![0]);
    assert_eq!(lens(&objects[1].1), vec![0, 0, 1], "entries stay in request order");
}

#[tokio::test]
async fn alignment_bodies_that_do_not_validate_are_a_422() {
    let fx = Fixture::new().await;
    let uri = format!("{R}/runs/search/metric/align/");
    for body in [
        "",
        "[]",
        r#"{"runs": []}"#,
        r#"{"align_by": "acc", "runs": [{"run_id": "r", "traces": [{"name": "a", "context": {}, "slice": [0, 1]}]}]}"#,
        r#"{"align_by": "acc", "runs": [{"run_id": "r", "traces": [{"name": "a", "context": {}, "slice": "0:1"}]}]}"#,
        r#"{"align_by": 3, "runs": []}"#,
    ] {
        assert_envelope(&fx.call("POST", &uri, Some(body)).await, 422, "validation_error");
    }
}

#[tokio::test]
async fn metric_search_x_axis_adds_the_aligned_series() {
    let mut fx = Fixture::new().await;
    fx.apply("run", vec![create(), metric("loss", 0, 0.5, json!({})), metric("acc", 0, 7.0, json!({}))]).await;
    let q = "metric.name%20%3D%3D%20%22loss%22";
    let a = fx.get(&format!("{R}/runs/search/metric?q={q}&x_axis=acc&report_progress=false")).await;
    let (_, run) = &a.objects()[0];
    let trace = &list(run.get("traces").unwrap())[0];
    let xs = Float64Array::from_decoded(trace.get("x_axis_values").unwrap()).unwrap();
    assert_eq!(xs.values(), vec![7.0]);
}

// ---------------------------------------------------------------------------------------------
// Custom objects

#[tokio::test]
async fn conformance_21_text_search_streams_every_run_with_texts() {
    let mut fx = Fixture::new().await;
    for run in ["a", "b"] {
        fx.apply(
            run,
            vec![
                create(),
                object("predictions", 0, "text", text("cat")),
                object("predictions", 1, "text", text("dog")),
            ],
        )
        .await;
    }
    fx.apply("c", vec![create(), metric("loss", 0, 0.5, json!({}))]).await;
    let a = fx.get(&format!("{R}/runs/search/texts/")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.keys(), vec!["a", "b"]);
    let progress = a.progress();
    assert_eq!(progress.last(), Some(&(0, 0)));
    assert_eq!(progress.len(), 2, "one frame between the runs, then the final one");
    let (_, run) = &a.objects()[0];
    let trace = &list(run.get("traces").unwrap())[0];
    assert_eq!(trace.get("name"), Some(&StreamValue::from("predictions")));
    assert_eq!(trace.get("iters"), Some(&StreamValue::list([StreamValue::Int(0), StreamValue::Int(1)])));
    let values = list(trace.get("values").unwrap());
    assert_eq!(
        values[1],
        StreamValue::list([StreamValue::dict([("data", StreamValue::from("dog")), ("index", StreamValue::Int(0))])])
    );
    assert_eq!(list(trace.get("timestamps").unwrap()).len(), 2);
    assert_eq!(list(trace.get("epochs").unwrap()), &[StreamValue::None, StreamValue::None]);
    let ranges = run.get("ranges").unwrap();
    let pair = |a, b| StreamValue::list([StreamValue::Int(a), StreamValue::Int(b)]);
    assert_eq!(ranges.get("record_range_total"), Some(&pair(0, 2)));
    assert_eq!(ranges.get("record_range_used"), Some(&pair(0, 2)));
    assert_eq!(ranges.get("index_range_total"), Some(&pair(0, 1)));
    assert!(run.get("props").is_some() && run.get("params").is_some());

    let quiet = fx.get(&format!("{R}/runs/search/texts/?report_progress=false&record_range=1:2")).await;
    assert!(quiet.progress().is_empty());
    let (_, run) = &quiet.objects()[0];
    let trace = &list(run.get("traces").unwrap())[0];
    assert_eq!(trace.get("iters"), Some(&StreamValue::list([StreamValue::Int(1)])));
}

#[tokio::test]
async fn custom_object_search_filters_by_the_sequence_namespace_and_run() {
    let mut fx = Fixture::new().await;
    fx.apply("a", vec![create(), object("predictions", 0, "text", text("cat")), object("notes", 0, "text", text("n"))])
        .await;
    fx.apply("b", vec![create(), object("other", 0, "text", text("x"))]).await;
    let q = |q: &str| {
        format!("{R}/runs/search/texts/?report_progress=false&q={}", q.replace(' ', "%20").replace('"', "%22"))
    };
    let a = fx.get(&q(r#"texts.name == "predictions""#)).await;
    assert_eq!(a.keys(), vec!["a"]);
    let traces = list(a.objects()[0].1.get("traces").unwrap()).len();
    assert_eq!(traces, 1, "only the matching trace");
    assert!(fx.get(&q(r#"texts.name == "none""#)).await.keys().is_empty());
    assert_eq!(fx.get(&q(r#"run.hash == "b""#)).await.keys(), vec!["b"]);
    assert_envelope(&fx.get(&q("texts.name ==")).await, 400, "bad_request");
    assert_envelope(&fx.get(&format!("{R}/runs/search/texts/?record_density=abc")).await, 422, "validation_error");
    assert_envelope(&fx.get(&format!("{R}/runs/search/texts/?index_range=x:1")).await, 422, "validation_error");
}

#[tokio::test]
async fn conformance_21_get_batch_and_get_step_of_an_unknown_run_are_404() {
    let fx = Fixture::new().await;
    for seq in ["images", "texts", "distributions", "audios", "figures"] {
        for route in ["get-batch", "get-step"] {
            let a = fx.post(&format!("{R}/runs/missing/{seq}/{route}/"), json!([{"name": "x", "context": {}}])).await;
            assert_envelope(&a, 404, "not_found");
        }
    }
}

#[tokio::test]
async fn conformance_21_get_step_of_a_missing_or_negative_step_answers_200_empty() {
    let mut fx = Fixture::new().await;
    fx.apply("run", vec![create(), object("fig", 0, "figure", json!({"type": "figure", "data": {"x": [1, 2]}}))]).await;
    let body = json!([{"name": "fig", "context": {}}]);
    for step in ["999", "-5"] {
        let a = fx.post(&format!("{R}/runs/run/figures/get-step/?record_step={step}"), body.clone()).await;
        assert_eq!(a.status, 200, "{step}");
        assert!(a.body.is_empty(), "{step}");
    }
    let a = fx.post(&format!("{R}/runs/run/figures/get-step/?record_density=1"), body).await;
    let objects = a.objects();
    let get = |k: &str| objects.iter().find(|(key, _)| key.to_string() == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("iters"), StreamValue::list([StreamValue::Int(0)]));
    assert_eq!(
        get("values"),
        StreamValue::list([StreamValue::dict([
            ("data", StreamValue::from(r#"{"x":[1,2]}"#)),
            ("index", StreamValue::Int(0))
        ])])
    );
    assert_eq!(get("record_range_used"), StreamValue::list([StreamValue::Int(0), StreamValue::Int(0)]));
    assert_eq!(get("index_range_total"), StreamValue::None);
}

#[tokio::test]
async fn conformance_21_distributions_get_batch_sends_numpy_data() {
    let mut fx = Fixture::new().await;
    let dist = json!({"type": "distribution", "data": [1.0, 2.0], "bin_count": 2, "range": [0, 4]});
    fx.apply("run", vec![create(), object("weights", 0, "distribution", dist)]).await;
    let a =
        fx.post(&format!("{R}/runs/run/distributions/get-batch/"), json!([{"name": "weights", "context": {}}])).await;
    assert_eq!(a.status, 200);
    let objects = a.objects();
    // The trace view sits at the root of the stream: its keys are the top-level keys.
    let keys: Vec<String> = objects.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(
        keys,
        [
            "name",
            "context",
            "values",
            "iters",
            "record_range_used",
            "record_range_total",
            "index_range_used",
            "index_range_total"
        ]
    );
    let values = &objects[2].1;
    let first = &list(values)[0];
    assert_eq!(Float64Array::from_decoded(first.get("data").unwrap()).unwrap().values(), vec![1.0, 2.0]);
    assert_eq!(first.get("bin_count"), Some(&StreamValue::Int(2)));
    assert_eq!(first.get("range"), Some(&StreamValue::list([StreamValue::Int(0), StreamValue::Int(4)])));
    assert_eq!(objects[4].1, StreamValue::list([StreamValue::Int(0), StreamValue::Int(1)]));
    assert_eq!(objects[6].1, StreamValue::None);
    // A missing trace sends nothing.
    let a = fx
        .post(&format!("{R}/runs/run/distributions/get-batch/"), json!([{"name": "weights", "context": {"x": 1}}]))
        .await;
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());
}

#[tokio::test]
async fn text_get_batch_index_ranges_keep_stored_indices_fixing_quirk_3() {
    let mut fx = Fixture::new().await;
    let step = |s: i64| object("texts", s, "text", json!([text("a"), text("b"), text("c")]));
    fx.apply("run", vec![create(), step(0), step(1)]).await;
    let a = fx
        .post(&format!("{R}/runs/run/texts/get-batch/?index_range=1:3"), json!([{"name": "texts", "context": {}}]))
        .await;
    assert_eq!(a.status, 200);
    let objects = a.objects();
    let get = |k: &str| objects.iter().find(|(key, _)| key.to_string() == k).map(|(_, v)| v.clone()).unwrap();
    let values = get("values");
    for step in list(&values) {
        let items = list(step);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], StreamValue::dict([("data", StreamValue::from("b")), ("index", StreamValue::Int(1))]));
        assert_eq!(items[1].get("index"), Some(&StreamValue::Int(2)));
    }
    let pair = |a, b| StreamValue::list([StreamValue::Int(a), StreamValue::Int(b)]);
    assert_eq!(get("index_range_used"), pair(1, 3));
    assert_eq!(get("index_range_total"), pair(0, 3));
    assert_eq!(get("record_range_used"), pair(0, 2));

    let a = fx
        .post(
            &format!("{R}/runs/run/texts/get-batch/?index_density=2&record_density=1"),
            json!([{"name": "texts", "context": {}}]),
        )
        .await;
    let objects = a.objects();
    let values = objects.iter().find(|(k, _)| k.to_string() == "values").map(|(_, v)| v.clone()).unwrap();
    assert_eq!(list(&values).len(), 1, "record_density=1");
    let indices: Vec<_> = list(&list(&values)[0]).iter().map(|i| i.get("index").cloned().unwrap()).collect();
    assert_eq!(indices, vec![StreamValue::Int(0), StreamValue::Int(2)], "first and last kept");
}

#[tokio::test]
async fn figure_search_and_get_batch_send_json_strings() {
    let mut fx = Fixture::new().await;
    fx.apply("run", vec![create(), object("fig", 3, "figure", json!({"type": "figure", "data": {"data": []}}))]).await;
    let a = fx.get(&format!("{R}/runs/search/figures/?report_progress=false")).await;
    assert_eq!(a.keys(), vec!["run"]);
    let objects = a.objects();
    let trace = &list(objects[0].1.get("traces").unwrap())[0];
    let first = &list(trace.get("values").unwrap())[0];
    assert_eq!(first.get("data"), Some(&StreamValue::from(r#"{"data":[]}"#)));
    assert!(a.objects()[0].1.get("ranges").unwrap().get("index_range_total").is_none());
    let a = fx.post(&format!("{R}/runs/run/figures/get-batch/"), json!([{"name": "fig", "context": {}}])).await;
    assert_eq!(a.status, 200);
    assert!(!a.body.is_empty());
}

#[tokio::test]
async fn custom_object_requests_that_do_not_validate_are_a_422_never_a_500() {
    let mut fx = Fixture::new().await;
    fx.apply("run", vec![create(), object("t", 0, "text", text("a"))]).await;
    for body in ["", "{}", r#"[{"name": 1, "context": {}}]"#, r#"[{"context": {}}]"#, "[", r#""x""#] {
        for route in ["get-batch", "get-step"] {
            let a = fx.call("POST", &format!("{R}/runs/run/texts/{route}/"), Some(body)).await;
            assert_envelope(&a, 422, "validation_error");
        }
    }
    let body = r#"[{"name": "t", "context": {}}]"#;
    for query in ["record_step=x", "index_density=1.5", "record_range=a:"] {
        let route = if query.starts_with("record_step") { "get-step" } else { "get-batch" };
        let a = fx.call("POST", &format!("{R}/runs/run/texts/{route}/?{query}"), Some(body)).await;
        assert_envelope(&a, 422, "validation_error");
    }
    // Huge values are accepted and clamp to what exists.
    for query in [
        "record_density=9223372036854775807",
        "index_density=9223372036854775807",
        "index_range=-9223372036854775808:9223372036854775807",
    ] {
        let a = fx.call("POST", &format!("{R}/runs/run/texts/get-batch/?{query}"), Some(body)).await;
        assert_eq!(a.status, 200, "{query}");
        assert!(!a.body.is_empty(), "{query}");
    }
    let a = fx.call("POST", &format!("{R}/runs/run/texts/get-step/?record_step=9223372036854775807"), Some(body)).await;
    assert_eq!(a.status, 200);
    let a = fx.get(&format!("{R}/runs/search/run/?limit=99999999999999999999999")).await;
    assert_envelope(&a, 422, "validation_error");
}

// ---------------------------------------------------------------------------------------------
// Images, audios and their blobs

fn image(run: &str, name: &str, step: i64, i: usize) -> J {
    json!({"type": "image", "s3_key": format!("{run}/seq/{name}/{step}_{i}.png"), "caption": format!("c{i}"),
           "width": 8, "height": 4, "format": "png"})
}

fn blob_of(step: i64, i: usize) -> Vec<u8> {
    // Not UTF-8 on purpose: blobs travel as bytes, never as text.
    [&b"\x89PNG"[..], format!(" step {step} item {i}").as_bytes()].concat()
}

/// Run "run" with three images per step at steps 0 and 1 (and their blobs), and one audio (not
/// a list) per step at steps 0 and 1.
async fn images_and_audios() -> Fixture {
    let mut fx = Fixture::new().await;
    let mut msgs = vec![create()];
    for step in 0..2 {
        let items: Vec<J> = (0..3).map(|i| image("run", "samples", step, i)).collect();
        msgs.push(object("samples", step, "image", J::Array(items)));
        for i in 0..3 {
            fx.put_blob(&format!("run/seq/samples/{step}_{i}.png"), &blob_of(step, i)).await;
        }
        let audio = json!({"type": "audio", "s3_key": format!("run/seq/speech/{step}.wav"), "caption": "hi"});
        msgs.push(object("speech", step, "audio", audio));
        fx.put_blob(&format!("run/seq/speech/{step}.wav"), format!("RIFF {step}").as_bytes()).await;
    }
    fx.apply("run", msgs).await;
    fx
}

/// The blob URI of an item.
fn token(item: &StreamValue) -> String {
    match item.get("blob_uri") {
        Some(StreamValue::Str(t)) => t.clone(),
        other => panic!("blob_uri: {other:?}"),
    }
}

/// The root-level view of a get-batch / get-step answer, by key.
fn view_of(a: &Answer) -> impl Fn(&str) -> StreamValue {
    let objects = a.objects();
    move |k: &str| objects.iter().find(|(key, _)| key.to_string() == k).map(|(_, v)| v.clone()).unwrap()
}

/// Checks that each step's image items carry their stored indices `expected` and URIs naming
/// them; returns the URIs in order.
fn check_images(fx: &Fixture, values: &StreamValue, iters: &[i64], expected: &[i64]) -> Vec<String> {
    let mut uris = Vec::new();
    assert_eq!(list(values).len(), iters.len());
    for (step_items, &step) in list(values).iter().zip(iters) {
        let items = list(step_items);
        assert_eq!(items.len(), expected.len(), "step {step}");
        for (item, &index) in items.iter().zip(expected) {
            assert_eq!(item.get("index"), Some(&StreamValue::Int(index)));
            assert_eq!(item.get("caption"), Some(&StreamValue::from(format!("c{index}").as_str())));
            assert_eq!(item.get("width"), Some(&StreamValue::Int(8)));
            assert_eq!(item.get("format"), Some(&StreamValue::from("png")));
            let uri = fx.decode_uri(item.get("blob_uri").unwrap());
            let want = BlobUri { run: "run".into(), ctx_id: 0, seq: "samples".into(), step, index };
            assert_eq!(uri, want);
            uris.push(token(item));
        }
    }
    uris
}

#[tokio::test]
async fn image_search_index_ranges_keep_stored_indices_in_items_and_blob_uris_fixing_quirk_3() {
    let fx = images_and_audios().await;
    let a = fx.get(&format!("{R}/runs/search/images/?report_progress=false&index_range=1:3")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.keys(), vec!["run"]);
    let run = &a.objects()[0].1;
    let traces = list(run.get("traces").unwrap());
    assert_eq!(traces.len(), 1, "audios are not images");
    let trace = &traces[0];
    assert_eq!(trace.get("name"), Some(&StreamValue::from("samples")));
    let uris = check_images(&fx, trace.get("values").unwrap(), &[0, 1], &[1, 2]);
    assert_eq!(uris.len(), 4);
    let ranges = run.get("ranges").unwrap();
    let pair = |a, b| StreamValue::list([StreamValue::Int(a), StreamValue::Int(b)]);
    assert_eq!(ranges.get("index_range_total"), Some(&pair(0, 3)));
    assert_eq!(ranges.get("index_range_used"), Some(&pair(1, 3)));

    // Density after slicing: first and last of what is left, still with their stored indices.
    let a = fx.get(&format!("{R}/runs/search/images/?report_progress=false&index_density=2")).await;
    let objects = a.objects();
    let trace = &list(objects[0].1.get("traces").unwrap())[0];
    check_images(&fx, trace.get("values").unwrap(), &[0, 1], &[0, 2]);

    // The URIs fetch the blobs of exactly those items.
    let a = fx.post(&format!("{R}/runs/images/get-batch/"), json!(uris)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type, "application/octet-stream");
    let got: Vec<(String, StreamValue)> = a.objects().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let want: Vec<(String, StreamValue)> = uris
        .iter()
        .zip([(0, 1), (0, 2), (1, 1), (1, 2)])
        .map(|(u, (step, i))| (u.clone(), StreamValue::Bytes(blob_of(step, i))))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn image_get_batch_and_get_step_with_index_range_point_at_the_right_blobs() {
    let fx = images_and_audios().await;
    let body = json!([{"name": "samples", "context": {}}]);
    let a = fx.post(&format!("{R}/runs/run/images/get-batch/?index_range=1:3"), body.clone()).await;
    assert_eq!(a.status, 200);
    let view = view_of(&a);
    let pair = |a, b| StreamValue::list([StreamValue::Int(a), StreamValue::Int(b)]);
    assert_eq!(view("index_range_used"), pair(1, 3));
    assert_eq!(view("index_range_total"), pair(0, 3));
    let uris = check_images(&fx, &view("values"), &[0, 1], &[1, 2]);

    let a = fx.post(&format!("{R}/runs/run/images/get-step/?record_step=1&index_range=2:"), body).await;
    assert_eq!(a.status, 200);
    let view = view_of(&a);
    assert_eq!(view("iters"), StreamValue::list([StreamValue::Int(1)]));
    let step_uris = check_images(&fx, &StreamValue::list([view("values")]), &[1], &[2]);

    // Blob batch in request order, a URI twice, garbage in the middle skipped.
    let request = json!([uris[3], "invalid-uri", step_uris[0], uris[0]]);
    let a = fx.post(&format!("{R}/runs/images/get-batch/"), request).await;
    assert_eq!(a.status, 200);
    let got: Vec<(String, StreamValue)> = a.objects().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(
        got,
        vec![
            (uris[3].clone(), StreamValue::Bytes(blob_of(1, 2))),
            (step_uris[0].clone(), StreamValue::Bytes(blob_of(1, 2))),
            (uris[0].clone(), StreamValue::Bytes(blob_of(0, 1))),
        ]
    );
}

#[tokio::test]
async fn audio_search_get_batch_and_blobs() {
    let fx = images_and_audios().await;
    let a = fx.get(&format!("{R}/runs/search/audios/?report_progress=false")).await;
    assert_eq!(a.keys(), vec!["run"]);
    let objects = a.objects();
    let trace = &list(objects[0].1.get("traces").unwrap())[0];
    assert_eq!(trace.get("name"), Some(&StreamValue::from("speech")));
    let values = list(trace.get("values").unwrap());
    assert_eq!(values.len(), 2);
    let mut uris = Vec::new();
    for (step, items) in values.iter().enumerate() {
        // A step holding one item (not a list) is sent as a list of that item at index 0.
        let items = list(items);
        assert_eq!(items.len(), 1);
        let item = &items[0];
        let keys: Vec<String> = match item {
            StreamValue::Dict(entries) => entries.iter().map(|(k, _)| k.to_string()).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(keys, ["caption", "format", "blob_uri", "index"]);
        assert_eq!(item.get("caption"), Some(&StreamValue::from("hi")));
        assert_eq!(item.get("format"), Some(&StreamValue::from("wav")), "the default format");
        let uri = fx.decode_uri(item.get("blob_uri").unwrap());
        let step = i64::try_from(step).unwrap();
        assert_eq!(uri, BlobUri { run: "run".into(), ctx_id: 0, seq: "speech".into(), step, index: 0 });
        uris.push(token(item));
    }
    let ranges = a.objects()[0].1.get("ranges").unwrap().clone();
    assert_eq!(ranges.get("index_range_total"), Some(&StreamValue::list([StreamValue::Int(0), StreamValue::Int(1)])));

    let a = fx.post(&format!("{R}/runs/run/audios/get-batch/"), json!([{"name": "speech", "context": {}}])).await;
    assert_eq!(a.status, 200);
    let view = view_of(&a);
    assert_eq!(list(&view("values")).len(), 2);
    assert_eq!(view("iters"), StreamValue::list([StreamValue::Int(0), StreamValue::Int(1)]));

    let a = fx.post(&format!("{R}/runs/audios/get-batch/"), json!(uris)).await;
    let got: Vec<StreamValue> = a.objects().into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, vec![StreamValue::Bytes(b"RIFF 0".to_vec()), StreamValue::Bytes(b"RIFF 1".to_vec())]);
}

#[tokio::test]
async fn blob_uris_that_point_to_nothing_get_empty_bytes() {
    let mut fx = images_and_audios().await;
    // An image whose upload never completed, and one without an s3_key.
    let items = json!([image("run", "late", 0, 0), {"type": "image", "caption": "no key"}]);
    fx.apply("run", vec![object("late", 0, "image", items)]).await;
    let codec = fx.state().blobs.uris.clone();
    let mint = |seq: &str, step: i64, index: i64| {
        codec.mint(&BlobUri { run: "run".into(), ctx_id: 0, seq: seq.into(), step, index })
    };
    let pointless = [
        mint("samples", 7, 0),  // no such step
        mint("samples", 0, 3),  // index out of range
        mint("samples", 0, -1), // negative index
        mint("late", 0, 0),     // the object is missing from the store
        mint("late", 0, 1),     // no s3_key
        codec.mint(&BlobUri { run: "other".into(), ctx_id: 0, seq: "samples".into(), step: 0, index: 0 }),
        codec.mint(&BlobUri { run: "run".into(), ctx_id: 9, seq: "samples".into(), step: 0, index: 0 }),
    ];
    let a = fx.post(&format!("{R}/runs/images/get-batch/"), json!(pointless)).await;
    assert_eq!(a.status, 200);
    let got: Vec<(String, StreamValue)> = a.objects().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let want: Vec<(String, StreamValue)> =
        pointless.iter().map(|u| (u.clone(), StreamValue::Bytes(Vec::new()))).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn blob_batch_bodies_that_are_not_lists_of_strings_are_a_422() {
    let fx = Fixture::new().await;
    for body in ["", "{}", "[1]", "[", r#""x""#, r#"[["a"]]"#] {
        for seq in ["images", "audios"] {
            let a = fx.call("POST", &format!("{R}/runs/{seq}/get-batch"), Some(body)).await;
            assert_envelope(&a, 422, "validation_error");
        }
    }
    let a = fx.post(&format!("{R}/runs/images/get-batch"), json!([])).await;
    assert_eq!((a.status, a.body.len()), (200, 0));
}

/// A blob store that always fails, as an unreachable S3 would.
#[derive(Debug)]
struct FailingStore;

#[async_trait::async_trait]
impl matyan::blobs::BlobStore for FailingStore {
    async fn get(&self, key: &str) -> Result<matyan::blobs::Blob, matyan::blobs::BlobError> {
        Err(matyan::blobs::BlobError::Io { key: key.to_owned(), source: std::io::Error::other("unreachable") })
    }
    async fn head(&self, key: &str) -> Result<matyan::blobs::ObjectMeta, matyan::blobs::BlobError> {
        self.get(key).await.map(|_| unreachable!("the store always fails"))
    }
    async fn open(&self, key: &str) -> Result<matyan::blobs::BlobReader, matyan::blobs::BlobError> {
        self.get(key).await.map(|_| unreachable!("the store always fails"))
    }
    async fn put(&self, key: &str, _: Vec<u8>, _: Option<&str>) -> Result<(), matyan::blobs::BlobError> {
        self.get(key).await.map(|_| ())
    }
    async fn delete(&self, key: &str) -> Result<(), matyan::blobs::BlobError> {
        self.get(key).await.map(|_| ())
    }
    async fn list(
        &self,
        prefix: &str,
        _: Option<&str>,
        _: usize,
    ) -> Result<matyan::blobs::Listing, matyan::blobs::BlobError> {
        self.get(prefix).await.map(|_| matyan::blobs::Listing::default())
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), matyan::blobs::BlobError> {
        self.get(keys.first().map_or("", String::as_str)).await.map(|_| ())
    }
}

#[tokio::test]
async fn a_failing_blob_store_aborts_the_stream() {
    let fx = images_and_audios().await;
    let a = fx.get(&format!("{R}/runs/search/audios/?report_progress=false")).await;
    let objects = a.objects();
    let trace = &list(objects[0].1.get("traces").unwrap())[0];
    let uri = token(&list(&list(trace.get("values").unwrap())[0])[0]);
    let mut state = fx.state();
    state.blobs.store = std::sync::Arc::new(FailingStore);
    let req = Request::builder()
        .method("POST")
        .uri(format!("{R}/runs/audios/get-batch/"))
        .header("content-type", "application/json")
        .body(Body::from(json!([uri]).to_string()))
        .unwrap();
    let resp = matyan::http::service(state).oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "the answer has started when the store fails");
    assert!(axum::body::to_bytes(resp.into_body(), 1 << 20).await.is_err(), "the body is aborted");
}
