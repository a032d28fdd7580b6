//! The P0 read routes of the REST API (spec `api.md` §4.1, §4.2, §4.5, §4.6, §6.6) against the
//! in-process router, with runs written through the storage layout; conformance cases of §12 are
//! named after their number.

mod common;

use axum::body::Body;
use axum::http::Request;
use matyan::app::AppState;
use matyan::http::stream::{Float64Array, Key, StreamValue, decode_objects, progress_of};
use matyan::storage::context_id::context_to_id;
use matyan::storage::kv::{Database, Limits, RetryOptions};
use matyan::storage::layout::{EntityKind, Layout, LayoutError, SeqId, SeqWrite, TraceInfo};
use matyan::storage::value::{self, Value};
use serde_json::{Value as J, json};
use std::time::Duration;
use tower::ServiceExt as _;

use common::{NOW, RUN};

const R: &str = "/api/v1/rest";

struct Fixture {
    db: Database,
    layout: Layout,
}

impl Fixture {
    /// A memory store holding the worked example's run.
    async fn new() -> Self {
        let db = Database::memory();
        let layout = common::write_worked_example(&db).await;
        Fixture { db, layout }
    }

    /// A memory store holding the worked example's run, whose snapshots die after `lifetime`
    /// (FoundationDB's is 5 s).
    async fn short_lived(lifetime: Duration) -> Self {
        let db = Database::memory_with_limits(Limits { txn_lifetime: lifetime, ..Limits::FDB });
        let layout = common::write_worked_example(&db).await;
        Fixture { db, layout }
    }

    fn state(&self) -> AppState {
        common::app_state(&self.db, &self.layout)
    }

    /// The state with `[query]` changed by `configure`.
    fn state_with(&self, configure: impl FnOnce(&mut matyan::config::QueryConfig)) -> AppState {
        common::app_state_with(&self.db, &self.layout, |c| configure(&mut c.query))
    }

    /// Creates a run named `name` at `created_at` with hparams `{"lr": lr}`.
    async fn run(&self, hash: &str, name: &str, created_at: f64, lr: J) {
        let layout = self.layout.clone();
        let (hash, name) = (hash.to_owned(), name.to_owned());
        self.db
            .run(&RetryOptions::default(), |tx| {
                let (layout, hash, name, lr) = (layout.clone(), hash.clone(), name.clone(), lr.clone());
                async move {
                    layout.runs.create_run(&tx, &hash, created_at, None).await?;
                    layout.runs.update_meta(&tx, &hash, created_at, &[("name", Value::from(name.as_str()))]).await?;
                    let hparams = Value::from(&json!({ "lr": lr }));
                    layout.runs.set_attrs(&tx, &hash, &["hparams".to_owned()], &hparams, created_at).await?;
                    Ok::<_, LayoutError>(())
                }
            })
            .await
            .unwrap();
    }

    /// Sets meta fields of a run.
    async fn meta(&self, hash: &str, fields: Vec<(&'static str, Value)>) {
        let layout = self.layout.clone();
        self.db
            .run(&RetryOptions::default(), |tx| {
                let (layout, fields) = (layout.clone(), fields.clone());
                async move { layout.runs.update_meta(&tx, hash, NOW, &fields).await }
            })
            .await
            .unwrap();
    }

    /// Links a run to a new experiment named `name`.
    async fn experiment(&self, hash: &str, name: &str) {
        let layout = self.layout.clone();
        let uuid = uuid::Uuid::new_v4().to_string();
        self.db
            .run(&RetryOptions::default(), |tx| {
                let (layout, uuid) = (layout.clone(), uuid.clone());
                async move {
                    let id = layout.system.get_or_create_named(&tx, EntityKind::Experiment, name, &uuid, NOW).await?;
                    layout.system.link_experiment(&tx, layout.indexes(), hash, Some(&id)).await?;
                    layout.runs.update_meta(&tx, hash, NOW, &[("experiment_id", Value::from(id.as_str()))]).await
                }
            })
            .await
            .unwrap();
    }

    /// Appends `values` at steps 0.. to metric `name` with `ctx`.
    async fn metric(&self, hash: &str, name: &str, ctx: J, values: &[f64]) {
        let layout = self.layout.clone();
        self.db
            .run(&RetryOptions::default(), |tx| {
                let (layout, ctx) = (layout.clone(), ctx.clone());
                async move {
                    let ctx_id = context_to_id(&ctx);
                    layout.runs.runs.set_context(&tx, hash, ctx_id, &Value::from(&ctx))?;
                    let id = SeqId { run: hash, ctx_id, name };
                    for (step, v) in values.iter().enumerate() {
                        let step = step as i64;
                        let val = value::encode(&Value::Float(*v)).unwrap();
                        layout
                            .seqs
                            .write(&tx, id, &[SeqWrite { step, val: &val, epoch: Some(0), time: NOW }])
                            .await
                            .unwrap();
                        let last = Value::Float(*v);
                        let trace = TraceInfo { ctx_id, name, dtype: "float", last: Some(&last), last_step: step };
                        layout.runs.record_trace(&tx, hash, &trace)?;
                    }
                    Ok::<_, LayoutError>(())
                }
            })
            .await
            .unwrap();
    }
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

    /// The stream's results (progress frames left out), as `(top-level key, tree)`.
    fn objects(&self) -> Vec<(String, StreamValue)> {
        decode_objects(&self.body)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.is_progress())
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn keys(&self) -> Vec<String> {
        self.objects().into_iter().map(|(k, _)| k).collect()
    }

    fn progress(&self) -> Vec<(i64, i64)> {
        decode_objects(&self.body).unwrap().iter().filter_map(|(k, v)| progress_of(k, v)).collect()
    }
}

async fn call(state: &AppState, method: &str, uri: &str, body: Option<J>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if method == "GET" {
        req = req.header("x-timezone-offset", "-180");
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let resp = matyan::http::service(state.clone()).oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec();
    Answer { status, content_type, body }
}

async fn get(state: &AppState, uri: &str) -> Answer {
    call(state, "GET", uri, None).await
}

fn search(q: &str, extra: &str) -> String {
    format!("{R}/runs/search/run?q={}{extra}", common::enc(q))
}

fn assert_envelope(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    assert_eq!(v["error"]["code"], code);
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    assert_eq!(v["detail"], v["error"]["message"]);
}

#[tokio::test]
async fn run_info_of_the_worked_example_matches_section_4_6() {
    let fx = Fixture::new().await;
    let a = get(&fx.state(), &format!("{R}/runs/{RUN}/info/")).await;
    assert_eq!(a.status, 200);
    assert!(a.content_type.starts_with("application/json"));
    let v = a.json();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["params", "traces", "props", "artifacts"]);
    assert_eq!(v["params"], json!({"hparams": {"layers": [64, 32], "lr": 0.001}}));
    let buckets: Vec<&String> = v["traces"].as_object().unwrap().keys().collect();
    assert_eq!(buckets, ["metric", "images", "texts", "distributions", "audios", "figures"]);
    assert_eq!(v["traces"]["metric"], json!([{"context": {"subset": "train"}, "name": "loss", "last_value": 0.5}]));
    assert_eq!(v["traces"]["images"], json!([]));
    assert_eq!(
        v["props"],
        json!({
            "name": format!("Run: {RUN}"),
            "description": "",
            "experiment": {"id": null, "name": null, "description": null},
            "tags": [],
            "creation_time": NOW,
            "end_time": null,
            "archived": false,
            "active": true
        })
    );
    let prop_keys: Vec<&String> = v["props"].as_object().unwrap().keys().collect();
    assert_eq!(
        prop_keys,
        ["name", "description", "experiment", "tags", "creation_time", "end_time", "archived", "active"]
    );
    assert_eq!(v["artifacts"], json!([]));
}

#[tokio::test]
async fn run_info_restricts_buckets_to_the_requested_sequences_and_shows_the_experiment() {
    let fx = Fixture::new().await;
    fx.experiment(RUN, "baseline").await;
    let v =
        get(&fx.state(), &format!("{R}/runs/{RUN}/info?sequence=images&sequence=nope&sequence=metric")).await.json();
    let buckets: Vec<&String> = v["traces"].as_object().unwrap().keys().collect();
    assert_eq!(buckets, ["images", "metric"]);
    assert_eq!(v["props"]["experiment"]["name"], "baseline");
    assert_eq!(v["props"]["experiment"]["description"], "");
}

#[tokio::test]
async fn conformance_2_error_envelope_for_an_unknown_run() {
    let fx = Fixture::new().await;
    let a = get(&fx.state(), &format!("{R}/runs/nonexistent-run-hash/info/")).await;
    assert_envelope(&a, 404, "not_found");
    assert_eq!(a.json()["detail"], "Not Found");
}

#[tokio::test]
async fn run_search_streams_the_worked_example_run() {
    let fx = Fixture::new().await;
    let a = get(&fx.state(), &search("", "")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type, "application/octet-stream");
    let objects = a.objects();
    assert_eq!(objects.len(), 1);
    let (key, run) = &objects[0];
    assert_eq!(key, RUN);
    let params = run.get("params").unwrap();
    assert_eq!(params.get("hparams").unwrap().get("lr"), Some(&StreamValue::Float(0.001)));
    let StreamValue::List(metrics) = run.get("traces").unwrap().get("metric").unwrap() else { panic!("metric list") };
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0].get("name"), Some(&StreamValue::from("loss")));
    assert_eq!(metrics[0].get("context").unwrap().get("subset"), Some(&StreamValue::from("train")));
    let values = metrics[0].get("values").unwrap();
    assert_eq!(values.get("last"), Some(&StreamValue::Float(0.5)));
    assert_eq!(values.get("last_step"), Some(&StreamValue::Int(2)));
    let props = run.get("props").unwrap();
    assert_eq!(props.get("creation_time"), Some(&StreamValue::Float(NOW)));
    assert_eq!(props.get("end_time"), Some(&StreamValue::None));
    assert_eq!(props.get("active"), Some(&StreamValue::Bool(true)));
    assert_eq!(a.progress(), vec![(0, 1), (1, 1), (0, 0)]);
}

#[tokio::test]
async fn run_search_honours_q_with_typed_index_semantics_of_section_10_item_11() {
    let fx = Fixture::new().await;
    let state = fx.state();
    for (q, hit) in [
        ("run.hparams.lr == 0.001", true),
        ("run.hparams.lr > 1.0", false),
        // The typed hparam index of §5.4 (kept, §10 item 11): an int bound ranges over every float.
        ("run.hparams.lr > 1", true),
        ("run.hparams.lr < 1.0", true),
        ("run.hparams.layers == [64, 32]", true),
        ("SELECT run IF run.name.startswith('Run')", true),
        ("run.metrics['loss'].last < 0.6", true),
        ("metric.name == 'loss'", true),
        ("run.experiment == 'nope'", false),
        ("1/0", false),
    ] {
        let keys = get(&state, &search(q, "")).await.keys();
        assert_eq!(keys == [RUN], hit, "{q}: {keys:?}");
    }
}

#[tokio::test]
async fn run_search_syntax_error_is_a_400_envelope_before_the_stream() {
    let fx = Fixture::new().await;
    for q in ["run.hparams.lr ==", "import os", "__import__('os')", "run._secret == 1"] {
        let a = get(&fx.state(), &search(q, "")).await;
        assert_envelope(&a, 400, "bad_request");
        assert!(a.json()["detail"].as_str().unwrap().starts_with("Invalid query syntax: "), "{q}");
    }
}

#[tokio::test]
async fn trailing_slash_and_no_trailing_slash_both_work() {
    let fx = Fixture::new().await;
    let state = fx.state();
    for path in [
        format!("{R}/runs/search/run"),
        format!("{R}/runs/search/run/"),
        format!("{R}/runs/search/run?q="),
        format!("{R}/runs/search/run/?q="),
        format!("{R}/runs/{RUN}/info"),
        format!("{R}/runs/{RUN}/info/"),
        format!("{R}/projects/params"),
        format!("{R}/projects/params/"),
    ] {
        assert_eq!(get(&state, &path).await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn run_search_parses_booleans_like_fastapi() {
    let fx = Fixture::new().await;
    let state = fx.state();
    let a = get(&state, &search("", "&report_progress=False")).await;
    assert_eq!(a.progress(), vec![]);
    assert_eq!(a.keys(), [RUN]);
    let a = get(&state, &search("", "&exclude_params=TRUE&exclude_traces=yes")).await;
    let run = &a.objects()[0].1;
    assert_eq!(run.get("params"), Some(&StreamValue::Dict(vec![])));
    assert_eq!(run.get("traces").unwrap().get("metric"), Some(&StreamValue::List(vec![])));
    assert_envelope(&get(&state, &search("", "&report_progress=maybe")).await, 422, "validation_error");
    assert_envelope(&get(&state, &search("", "&limit=ten")).await, 422, "validation_error");
}

#[tokio::test]
async fn run_search_without_matches_sends_one_progress_frame() {
    let fx = Fixture::new().await;
    let a = get(&fx.state(), &search("run.name == 'nobody'", "")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.progress(), vec![(0, 0)]);
    assert_eq!(decode_objects(&a.body).unwrap()[0].0, Key::from("progress_0"));
}

#[tokio::test]
async fn conformance_4_default_archived_filter() {
    let fx = Fixture::new().await;
    fx.run("visible", "norm", NOW + 1.0, json!(0.1)).await;
    fx.run("hidden", "hidden", NOW + 2.0, json!(0.1)).await;
    fx.meta("hidden", vec![("is_archived", Value::Bool(true))]).await;
    let state = fx.state();
    let a = get(&state, &search("", "")).await;
    assert!(!a.keys().contains(&"hidden".to_owned()));
    assert!(!a.body.windows(6).any(|w| w == b"hidden"));
    let a = get(&state, &search("run.is_archived == True", "")).await;
    assert_eq!(a.keys(), ["hidden"]);
    assert!(!a.body.windows(4).any(|w| w == b"norm"));
    let both = get(&state, &search("run.archived in [True, False]", "")).await.keys();
    assert_eq!(both.len(), 3);
}

#[tokio::test]
async fn conformance_5_run_search_limit() {
    let fx = Fixture::new().await;
    for i in 0..4 {
        fx.run(&format!("run{i}"), &format!("r{i}"), NOW + f64::from(i), json!(i)).await;
    }
    let a = get(&fx.state(), &search("", "&limit=2&report_progress=false")).await;
    assert_eq!(a.keys().len(), 2);
    let all = get(&fx.state(), &search("", "&limit=0")).await;
    assert_eq!(all.keys().len(), 5);
}

#[tokio::test]
async fn conformance_6_run_search_sorting() {
    let fx = Fixture::new().await;
    for (i, name) in ["charlie", "alpha", "bravo", "delta"].iter().enumerate() {
        fx.run(name, name, NOW + 10.0 + i as f64, json!(0.1)).await;
    }
    fx.experiment("alpha", "e2").await;
    fx.experiment("bravo", "e1").await;
    fx.experiment("charlie", "e1").await;
    let state = fx.state();
    let sorted = |sort: &str, extra: &str| {
        let state = state.clone();
        let uri = format!(
            "{}&sort={}{extra}",
            search("run.hash != '{RUN}'".replace("{RUN}", RUN).as_str(), ""),
            common::enc(sort)
        );
        async move { get(&state, &uri).await.keys() }
    };
    assert_eq!(sorted(r#"[{"field":"run","order":"asc"}]"#, "").await, ["alpha", "bravo", "charlie", "delta"]);
    assert_eq!(sorted(r#"[{"field":"run","order":"desc"}]"#, "").await, ["delta", "charlie", "bravo", "alpha"]);
    assert_eq!(sorted("", "").await, ["delta", "bravo", "alpha", "charlie"]);
    assert_eq!(
        sorted(r#"[{"field":"experiment","order":"asc"},{"field":"run","order":"desc"}]"#, "").await,
        ["delta", "charlie", "bravo", "alpha"]
    );
    assert_eq!(sorted(r#"[{"field":"run"}]"#, "&offset=bravo&limit=2").await, ["charlie", "delta"]);
    assert_eq!(sorted(r#"[{"field":"run"}]"#, "&offset=unknown").await, Vec::<String>::new());
    for bad in [r#"[{"field":"zzz"}]"#, "not json", r#"[{"field":"run","order":"up"}]"#] {
        let uri = format!("{R}/runs/search/run?sort={}", common::enc(bad));
        assert_envelope(&get(&state, &uri).await, 400, "bad_request");
    }
}

#[tokio::test]
async fn run_search_progress_counts_positions_including_the_offset() {
    let fx = Fixture::new().await;
    fx.run("b", "b", NOW + 1.0, json!(1)).await;
    fx.run("c", "c", NOW + 2.0, json!(2)).await;
    let a =
        get(&fx.state(), &format!("{}&sort={}&offset=b", search("", ""), common::enc(r#"[{"field":"hash"}]"#))).await;
    // Sorted by hash: RUN ("3f2a…"), b, c; after b comes only c, third of three.
    assert_eq!(a.keys(), ["c"]);
    assert_eq!(a.progress(), vec![(0, 3), (3, 3), (0, 0)]);
}

#[tokio::test]
async fn conformance_7_pending_deletion_runs_are_hidden_from_search_but_not_info() {
    let fx = Fixture::new().await;
    fx.run("doomed", "doomed", NOW + 1.0, json!(0.5)).await;
    fx.db
        .run(&RetryOptions::default(), |tx| {
            let layout = fx.layout.clone();
            async move { layout.runs.mark_pending_deletion(&tx, "doomed") }
        })
        .await
        .unwrap();
    let state = fx.state();
    assert_eq!(get(&state, &search("", "")).await.keys(), [RUN]);
    assert_eq!(get(&state, &search("run.hash == 'doomed'", "")).await.keys(), Vec::<String>::new());
    assert_eq!(get(&state, &format!("{R}/runs/doomed/info")).await.status, 200);
}

#[tokio::test]
async fn run_search_index_shapes_match_evaluation() {
    let fx = Fixture::new().await;
    fx.run("int1", "int1", NOW + 1.0, json!(1)).await;
    fx.run("str", "str", NOW + 2.0, json!("high")).await;
    fx.run("float1", "float1", NOW + 3.0, json!(1.0)).await;
    let state = fx.state();
    let mut hits = get(&state, &search("run.hparams.lr == 1.0", "")).await.keys();
    hits.sort();
    assert_eq!(hits, ["float1"]);
    let mut hits = get(&state, &search("run.hparams.lr >= 5", "")).await.keys();
    hits.sort();
    // The typed index of §5.4: every float is above every int.
    assert_eq!(hits, [RUN, "float1"]);
    let hits = get(&state, &search("run.hash == 'str' or run.hash == 'nope'", "")).await.keys();
    assert_eq!(hits, ["str"]);
}

#[tokio::test]
async fn projects_params_lists_hparams_and_metric_contexts() {
    let fx = Fixture::new().await;
    let state = fx.state();
    let v = get(&state, &format!("{R}/projects/params?sequence=metric")).await.json();
    assert_eq!(v["params"]["hparams"]["lr"], 0.001);
    assert_eq!(v["metric"], json!({"loss": [{"subset": "train"}]}));
    assert_eq!(v["images"], json!({}));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["params", "metric", "images", "texts", "figures", "distributions", "audios"]);
}

#[tokio::test]
async fn conformance_25_projects_params_with_exclude_params() {
    let fx = Fixture::new().await;
    let uri = format!(
        "{R}/projects/params?sequence=metric&sequence=images&sequence=figures&sequence=texts&sequence=audios&sequence=distributions&exclude_params=true"
    );
    let v = get(&fx.state(), &uri).await.json();
    assert!(v.get("params").is_none());
    assert!(v["metric"].get("loss").is_some());
}

#[tokio::test]
async fn conformance_14_metric_get_batch() {
    let fx = Fixture::new().await;
    fx.run("m", "m", NOW + 1.0, json!(0.1)).await;
    fx.metric("m", "acc", json!({}), &[0.7, 0.9]).await;
    let state = fx.state();
    let uri = format!("{R}/runs/m/metric/get-batch");
    let a = call(&state, "POST", &uri, Some(json!([{"name": "acc", "context": {}}]))).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!([{"name": "acc", "context": {}, "iters": [0, 1], "values": [0.7, 0.9]}]));
    let a = call(&state, "POST", &uri, Some(json!([{"name": "missing", "context": {}}]))).await;
    assert_eq!(a.json(), json!([]));
    let a = call(&state, "POST", &format!("{R}/runs/ghost/metric/get-batch/"), Some(json!([]))).await;
    assert_envelope(&a, 404, "not_found");
    fx.metric("m", "long", json!({}), &[1.0; 10]).await;
    let a =
        call(&state, "POST", &format!("{uri}?record_density=3"), Some(json!([{"name": "long", "context": {}}]))).await;
    assert!(a.json()[0]["iters"].as_array().unwrap().len() <= 3);
    let a = call(
        &state,
        "POST",
        &format!("{uri}?record_range=1:3&record_density=10"),
        Some(json!([{"name": "long", "context": {}}])),
    )
    .await;
    assert_eq!(a.json()[0]["iters"], json!([1, 2]));
    let a = call(&state, "POST", &uri, Some(json!({"wrong": 1}))).await;
    assert_envelope(&a, 422, "validation_error");
}

fn trace_names(run: &StreamValue) -> Vec<String> {
    let StreamValue::List(traces) = run.get("traces").unwrap() else { panic!("trace list") };
    traces
        .iter()
        .map(|t| match t.get("name") {
            Some(StreamValue::Str(s)) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn conformance_15_metric_search_indexed_name() {
    let fx = Fixture::new().await;
    fx.metric(RUN, "acc", json!({}), &[0.1, 0.2]).await;
    let state = fx.state();
    let metric = |q: &str| format!("{R}/runs/search/metric?q={}", common::enc(q));
    let objects = get(&state, &metric("metric.name == \"loss\"")).await.objects();
    assert_eq!(objects.len(), 1);
    assert_eq!(trace_names(&objects[0].1), ["loss"]);
    assert!(get(&state, &metric("metric.name == \"nonexistent_metric\"")).await.objects().is_empty());
    let all = get(&state, &metric("")).await.objects();
    assert_eq!(trace_names(&all[0].1), ["acc", "loss"]);
}

#[tokio::test]
async fn conformance_16_metric_search_in_memory_predicates() {
    let fx = Fixture::new().await;
    fx.run("gamma", "gamma", NOW + 1.0, json!(0.1)).await;
    fx.metric("gamma", "loss", json!({"subset": "val"}), &[0.3, 0.1]).await;
    let state = fx.state();
    let hits = |q: &str| {
        let state = state.clone();
        let uri = format!("{R}/runs/search/metric?q={}", common::enc(q));
        async move { get(&state, &uri).await.keys() }
    };
    assert_eq!(hits("metric.context.subset == \"train\"").await, [RUN]);
    assert_eq!(hits("metric.context.subset == \"val\"").await, ["gamma"]);
    assert_eq!(hits("metric.last > 0.3").await, [RUN]);
    assert_eq!(hits("run.name == \"gamma\"").await, ["gamma"]);
    let mut both = hits("(run.description != \"nonexistent\") and (metric.name == \"loss\")").await;
    both.sort();
    assert_eq!(both, [RUN, "gamma"]);
}

#[tokio::test]
async fn conformance_18_numpy_payloads() {
    let fx = Fixture::new().await;
    fx.run("np", "np", NOW + 1.0, json!(0.1)).await;
    fx.metric("np", "curve", json!({}), &[1.0, 0.75, 0.5]).await;
    let a = get(&fx.state(), &format!("{R}/runs/search/metric?q={}&p=3", common::enc("run.hash == 'np'"))).await;
    let objects = a.objects();
    assert_eq!(objects.len(), 1);
    let StreamValue::List(traces) = objects[0].1.get("traces").unwrap() else { panic!("traces") };
    let t = &traces[0];
    let values = Float64Array::from_decoded(t.get("values").unwrap()).unwrap();
    assert_eq!(values.blob(), Float64Array::from_values(&[1.0, 0.75, 0.5]).blob());
    assert_eq!(values.shape(), 3);
    assert_eq!(t.get("values").unwrap().get("dtype"), Some(&StreamValue::from("float64")));
    let iters = Float64Array::from_decoded(t.get("iters").unwrap()).unwrap();
    assert_eq!(iters.values(), [0.0, 1.0, 2.0]);
    assert_eq!(
        t.get("slice"),
        Some(&StreamValue::list([StreamValue::Int(0), StreamValue::Int(2), StreamValue::Int(1)]))
    );
    let epochs = Float64Array::from_decoded(t.get("epochs").unwrap()).unwrap();
    assert_eq!(epochs.values(), [0.0, 0.0, 0.0]);
    let timestamps = Float64Array::from_decoded(t.get("timestamps").unwrap()).unwrap();
    assert_eq!(timestamps.values(), [NOW, NOW, NOW]);
    assert_eq!(a.progress().last(), Some(&(0, 0)));
}

#[tokio::test]
async fn metric_search_samples_to_p_points_and_adds_the_x_axis() {
    let fx = Fixture::new().await;
    fx.run("big", "big", NOW + 1.0, json!(0.1)).await;
    let values: Vec<f64> = (0..200).map(f64::from).collect();
    fx.metric("big", "loss", json!({}), &values).await;
    fx.metric("big", "acc", json!({}), &values).await;
    let uri = format!(
        "{R}/runs/search/metric?q={}&p=10&x_axis=acc",
        common::enc("run.hash == 'big' and metric.name == 'loss'")
    );
    let objects = get(&fx.state(), &uri).await.objects();
    let StreamValue::List(traces) = objects[0].1.get("traces").unwrap() else { panic!("traces") };
    assert_eq!(traces.len(), 1);
    let iters = Float64Array::from_decoded(traces[0].get("iters").unwrap()).unwrap().values();
    assert_eq!(iters.len(), 10);
    assert_eq!((iters[0], iters[9]), (0.0, 199.0));
    let x = Float64Array::from_decoded(traces[0].get("x_axis_values").unwrap()).unwrap();
    assert_eq!(x.shape(), 10);
}

#[tokio::test]
async fn metric_search_bad_query_is_a_400() {
    let fx = Fixture::new().await;
    let a = get(&fx.state(), &format!("{R}/runs/search/metric?q={}", common::enc("metric.name ==="))).await;
    assert_envelope(&a, 400, "bad_request");
}

#[tokio::test]
async fn run_search_sends_runs_in_chunks_of_stream_chunk_bytes() {
    use futures_util::StreamExt as _;
    let fx = Fixture::new().await;
    fx.run("b", "b", NOW + 1.0, json!(1)).await;
    fx.run("c", "c", NOW + 2.0, json!(2)).await;
    // One byte: each run its own chunk; the default: three small runs leave together.
    for (chunk_bytes, objects_per_chunk) in [(1, vec![1, 1, 1]), (65_536, vec![3])] {
        let state = fx.state_with(|q| q.stream_chunk_bytes = chunk_bytes);
        let req = Request::builder().uri(search("", "&report_progress=false")).body(Body::empty()).unwrap();
        let resp = matyan::http::service(state).oneshot(req).await.unwrap();
        assert!(resp.headers().get("content-length").is_none());
        let mut chunks = Vec::new();
        let mut body = resp.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            chunks.push(chunk.unwrap());
        }
        let got: Vec<usize> = chunks.iter().map(|c| decode_objects(c).unwrap().len()).collect();
        assert_eq!(got, objects_per_chunk, "stream_chunk_bytes = {chunk_bytes}");
    }
}

/// Sends a GET and returns the body as it streams.
async fn open_stream(state: &AppState, uri: &str) -> axum::body::BodyDataStream {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let resp = matyan::http::service(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().into_data_stream()
}

/// The first chunk, then, after `pause` spent in `meanwhile` and sleeping (the server stops
/// reading while its channel is full), the rest; a stream that aborts fails the test.
async fn read_with_pause(
    mut body: axum::body::BodyDataStream,
    pause: Duration,
    meanwhile: impl Future<Output = ()>,
) -> Answer {
    use futures_util::StreamExt as _;
    let mut bytes = body.next().await.unwrap().unwrap().to_vec();
    meanwhile.await;
    tokio::time::sleep(pause).await;
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk.expect("the stream completes"));
    }
    Answer { status: 200, content_type: String::new(), body: bytes }
}

/// Twelve runs `r00`..`r11` (created in that order after the worked example's) with a `loss`
/// series of three points each.
async fn twelve_runs(fx: &Fixture) -> Vec<String> {
    let mut hashes = Vec::new();
    for i in 0..12 {
        let hash = format!("r{i:02}");
        fx.run(&hash, &hash, NOW + 1.0 + f64::from(i), json!(0.1)).await;
        fx.metric(&hash, "loss", json!({}), &[1.0, 2.0, 3.0]).await;
        hashes.push(hash);
    }
    hashes
}

#[tokio::test]
async fn a_metric_search_outliving_a_snapshot_renews_it_between_runs_and_answers_every_run() {
    // Snapshots die after 1 s; the request renews its own after 200 ms. The reader pauses 1.2 s
    // after the first chunk, with most runs still unread: read through the first snapshot,
    // they would fail with transaction_too_old.
    let fx = Fixture::short_lived(Duration::from_secs(1)).await;
    let hashes = twelve_runs(&fx).await;
    // One chunk per run, so that the first leaves with most runs unread.
    let state = fx.state_with(|q| {
        q.snapshot_max_age_ms = 200;
        q.stream_chunk_bytes = 1;
    });
    let uri = format!("{R}/runs/search/metric?q={}&report_progress=false", common::enc("metric.name == \"loss\""));
    let body = open_stream(&state, &uri).await;
    // Meanwhile the last run in the answer (hash order) grows a point and is renamed, in one
    // transaction: its object shows both, from one snapshot.
    let last = hashes.last().unwrap().clone();
    let grow = async {
        let layout = fx.layout.clone();
        fx.db
            .run(&RetryOptions::default(), |tx| {
                let (layout, last) = (layout.clone(), last.clone());
                async move {
                    let id = SeqId { run: &last, ctx_id: context_to_id(&json!({})), name: "loss" };
                    let val = value::encode(&Value::Float(4.0)).unwrap();
                    layout
                        .seqs
                        .write(&tx, id, &[SeqWrite { step: 3, val: &val, epoch: Some(0), time: NOW }])
                        .await
                        .unwrap();
                    let four = Value::Float(4.0);
                    let trace =
                        TraceInfo { ctx_id: id.ctx_id, name: "loss", dtype: "float", last: Some(&four), last_step: 3 };
                    layout.runs.record_trace(&tx, &last, &trace)?;
                    layout.runs.update_meta(&tx, &last, NOW, &[("name", Value::from("grown"))]).await
                }
            })
            .await
            .unwrap();
    };
    let a = read_with_pause(body, Duration::from_millis(1_200), grow).await;
    let objects = a.objects();
    let mut want = vec![RUN.to_owned()];
    want.extend(hashes);
    assert_eq!(objects.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), want);
    let (_, run) = objects.last().unwrap();
    assert_eq!(run.get("props").and_then(|p| p.get("name")), Some(&StreamValue::from("grown")));
    let StreamValue::List(traces) = run.get("traces").unwrap() else { panic!("traces") };
    let trace = &traces[0];
    assert_eq!(Float64Array::from_decoded(trace.get("iters").unwrap()).unwrap().values(), [0.0, 1.0, 2.0, 3.0]);
    assert_eq!(
        trace.get("slice"),
        Some(&StreamValue::list([StreamValue::Int(0), StreamValue::Int(3), StreamValue::Int(1)]))
    );
}

#[tokio::test]
async fn a_run_search_outliving_a_snapshot_reads_each_later_run_whole_from_the_fresh_one() {
    // Run search sorts on meta read through the first snapshot, then streams; once the snapshot
    // is renewed, a run's whole object (props included) is read again from the fresh one, and a
    // run deleted meanwhile is left out.
    let fx = Fixture::short_lived(Duration::from_secs(1)).await;
    let hashes = twelve_runs(&fx).await;
    // One chunk per run, so that the first leaves with most runs unread.
    let state = fx.state_with(|q| {
        q.snapshot_max_age_ms = 200;
        q.stream_chunk_bytes = 1;
    });
    let body = open_stream(&state, &search("", "&report_progress=false")).await;
    // Newest first: r11 .. r00, then the worked example's run.
    let change = async {
        fx.meta("r01", vec![("name", Value::from("renamed"))]).await;
        fx.meta("r00", vec![("pending_deletion", Value::Bool(true))]).await;
    };
    let a = read_with_pause(body, Duration::from_millis(1_200), change).await;
    let mut want: Vec<String> = hashes.iter().rev().filter(|h| *h != "r00").cloned().collect();
    want.push(RUN.to_owned());
    assert_eq!(a.keys(), want);
    let objects = a.objects();
    let (_, r01) = objects.iter().find(|(k, _)| k == "r01").unwrap();
    assert_eq!(r01.get("props").and_then(|p| p.get("name")), Some(&StreamValue::from("renamed")));
}

#[tokio::test]
async fn a_request_past_its_key_budget_is_a_400_budget_error_not_a_500() {
    let fx = Fixture::new().await;
    let state = fx.state_with(|q| q.max_keys_per_request = 3);
    let a = get(&state, &search("", "")).await;
    assert_envelope(&a, 400, "bad_request");
    assert_eq!(
        a.json()["detail"],
        "request exceeds its work budget: more than 3 keys to read (query.max_keys_per_request)"
    );
    let body = json!([{"name": "loss", "context": {"subset": "train"}}]);
    let a = call(&state, "POST", &format!("{R}/runs/{RUN}/metric/get-batch"), Some(body)).await;
    assert_envelope(&a, 400, "bad_request");
    assert!(a.json()["detail"].as_str().unwrap().contains("query.max_keys_per_request"));
    // The same requests within the default budget.
    assert_eq!(get(&fx.state(), &search("", "")).await.status, 200);
}

/// The least `query.max_keys_per_request` within which `uri` answers `want` (under `[query]`
/// changed by `configure` otherwise), by bisection: fewer keys cut the answer short.
async fn least_key_budget(
    fx: &Fixture,
    uri: &str,
    want: &[u8],
    configure: impl Fn(&mut matyan::config::QueryConfig),
) -> u64 {
    let (mut low, mut high) = (0u64, 1_000_000u64);
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        let state = fx.state_with(|q| {
            configure(q);
            q.max_keys_per_request = mid;
        });
        let req = Request::builder().uri(uri).header("x-timezone-offset", "-180").body(Body::empty()).unwrap();
        let resp = matyan::http::service(state).oneshot(req).await.unwrap();
        // A stream cut off by the budget ends in a body error.
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await;
        if body.is_ok_and(|b| b == want) { high = mid } else { low = mid }
    }
    high
}

#[tokio::test]
async fn a_run_search_reads_what_it_evaluated_once_and_answers_the_same_past_its_kept_bytes() {
    let fx = Fixture::new().await;
    twelve_runs(&fx).await;
    // Neither query is answered by an index alone; only the second reads traces.
    for q in ["run.hparams.lr != 0.5", "run.metrics['loss'].last > 2"] {
        let uri = search(q, "");
        let kept = get(&fx.state(), &uri).await;
        assert_eq!(kept.status, 200);
        assert!(kept.keys().len() >= 12, "{q}: {:?}", kept.keys());
        // Keeping nothing, or less than one run holds, reads every run again: the same bytes.
        for bytes in [0, 100] {
            let again = get(&fx.state_with(|c| c.run_search_kept_bytes = bytes), &uri).await;
            assert_eq!(again.body, kept.body, "{q} with {bytes} kept bytes");
        }
        // What was kept is not read twice: the keys that suffice then do not when nothing is.
        let least = least_key_budget(&fx, &uri, &kept.body, |_| {}).await;
        let unkept = least_key_budget(&fx, &uri, &kept.body, |c| c.run_search_kept_bytes = 0).await;
        assert!(least < unkept, "{q}: {least} keys when kept, {unkept} when not");
    }
}
