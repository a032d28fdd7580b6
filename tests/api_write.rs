//! Run mutations of the REST API (spec `api.md` §6.1, §6.2; `ingest-storage.md` §2.1) against the
//! in-process router, with runs written through the storage layout: conformance cases 7–10 of §12
//! are named after their number, deliberate fixes after the §10 quirk they fix.

mod common;

use axum::body::Body;
use axum::http::Request;
use matyan::app::AppState;
use matyan::http::stream::decode_objects;
use matyan::ingest::message::MessageType;
use matyan::ingest::{Queue, Record, decode};
use matyan::storage::kv::{Database, RetryOptions};
use matyan::storage::layout::{EntityKind, Layout, LayoutError};
use matyan::storage::tuple::Elem;
use matyan::storage::value::Value;
use serde_json::{Value as J, json};
use tower::ServiceExt as _;

use common::{NOW, RUN};

const R: &str = "/api/v1/rest";

struct Fixture {
    db: Database,
    layout: Layout,
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> J {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn keys(&self) -> Vec<String> {
        decode_objects(&self.body)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.is_progress())
            .map(|(k, _)| k.to_string())
            .collect()
    }
}

impl Fixture {
    /// A memory store holding the worked example's run (active, not archived).
    async fn new() -> Self {
        let db = Database::memory();
        let layout = common::write_worked_example(&db).await;
        Fixture { db, layout }
    }

    fn state(&self) -> AppState {
        common::app_state(&self.db, &self.layout)
    }

    /// Creates a run named `name`.
    async fn run(&self, hash: &str, name: &str) {
        let layout = &self.layout;
        self.db
            .run(&RetryOptions::default(), |tx| async move {
                layout.runs.create_run(&tx, hash, NOW, None).await?;
                layout.runs.update_meta(&tx, hash, NOW, &[("name", Value::from(name))]).await
            })
            .await
            .unwrap();
    }

    async fn set_meta(&self, hash: &str, fields: Vec<(&'static str, Value)>) {
        let layout = &self.layout;
        let fields = &fields;
        self.db
            .run(&RetryOptions::default(), |tx| async move { layout.runs.update_meta(&tx, hash, NOW, fields).await })
            .await
            .unwrap();
    }

    async fn create_experiment(&self, name: &str) -> String {
        let layout = &self.layout;
        let uuid = uuid::Uuid::new_v4().to_string();
        let id = uuid.as_str();
        self.db
            .run(&RetryOptions::default(), |tx| async move {
                layout.system.get_or_create_named(&tx, EntityKind::Experiment, name, id, NOW).await
            })
            .await
            .unwrap()
    }

    async fn call(&self, method: &str, uri: &str, body: Option<&str>) -> Answer {
        let req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
        let resp = matyan::http::service(self.state()).oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec();
        Answer { status, body }
    }

    async fn info(&self, hash: &str) -> J {
        let a = self.call("GET", &format!("{R}/runs/{hash}/info/"), None).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        a.json()
    }

    /// Every record of the ingestion topic, all partitions.
    async fn queued(&self) -> Vec<Record> {
        let Some(queue) = Queue::open_existing(&self.db, &self.layout.dirs.ours, "data-ingestion").await.unwrap()
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in queue.partition_ids() {
            out.extend(queue.read(p, 0, 10_000).await.unwrap());
        }
        out
    }

    async fn meta_field(&self, hash: &str, field: &str) -> Option<Value> {
        let tx = self.db.create_trx().unwrap();
        self.layout.runs.runs.meta_field(&tx, hash, field).await.unwrap()
    }

    async fn indexed(&self, scope: &[Elem]) -> Vec<String> {
        let tx = self.db.create_trx().unwrap();
        self.layout.indexes().runs_under(&tx, scope, false).await.unwrap()
    }

    async fn run_count(&self, kind: EntityKind, uuid: &str) -> Value {
        let tx = self.db.create_trx().unwrap();
        let fields = self.layout.system.get(&tx, kind, uuid).await.unwrap().unwrap();
        fields.into_iter().find(|(k, _)| k == "run_count").map(|(_, v)| v).unwrap()
    }
}

fn assert_envelope(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    assert_eq!(v["error"]["code"], code);
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    assert_eq!(v["detail"], v["error"]["message"]);
}

fn search_uri(q: &str) -> String {
    let q: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{R}/runs/search/run?q={q}&report_progress=false")
}

// ---------------------------------------------------------------------------------------------
// DELETE runs/{id}, delete-batch, clear-tombstone

#[tokio::test]
async fn conformance_7_delete_marks_pending_deletion_and_queues_exactly_one_delete_run() {
    let fx = Fixture::new().await;
    let a = fx.call("DELETE", &format!("{R}/runs/{RUN}/"), None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!({"id": RUN, "status": "OK"}));
    assert_eq!(fx.meta_field(RUN, "pending_deletion").await, Some(Value::Bool(true)));

    let records = fx.queued().await;
    assert_eq!(records.len(), 1, "one delete_run record");
    let record = &records[0];
    assert_eq!(record.key.as_deref(), Some(RUN.as_bytes()));
    let queue = Queue::open_existing(&fx.db, &fx.layout.dirs.ours, "data-ingestion").await.unwrap().unwrap();
    assert_eq!(queue.partitions(), 6);
    assert_eq!(record.partition, queue.partition_for_key(RUN.as_bytes()), "keyed by the run id");
    let msg = decode(&record.value).unwrap();
    assert_eq!(msg.kind(), MessageType::DeleteRun);
    assert_eq!(msg.run_id, RUN);

    // Hidden from search at once; run info still answers until the worker purges it.
    let search = fx.call("GET", &search_uri(""), None).await;
    assert!(!search.keys().contains(&RUN.to_owned()));
    fx.info(RUN).await;
}

#[tokio::test]
async fn conformance_7_deleting_an_unknown_run_is_a_404_and_queues_nothing() {
    let fx = Fixture::new().await;
    let a = fx.call("DELETE", &format!("{R}/runs/nope/"), None).await;
    assert_envelope(&a, 404, "not_found");
    assert!(fx.queued().await.is_empty());
}

#[tokio::test]
async fn conformance_7_delete_batch_flags_both_runs_and_queues_one_record_each() {
    let fx = Fixture::new().await;
    fx.run("r2", "two").await;
    let a = fx.call("POST", &format!("{R}/runs/delete-batch/"), Some(&json!([RUN, "r2", RUN]).to_string())).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!({"status": "OK"}));
    for run in [RUN, "r2"] {
        assert_eq!(fx.meta_field(run, "pending_deletion").await, Some(Value::Bool(true)), "{run}");
    }
    let mut keys: Vec<Vec<u8>> = fx.queued().await.into_iter().filter_map(|r| r.key).collect();
    keys.sort();
    assert_eq!(keys, vec![RUN.as_bytes().to_vec(), b"r2".to_vec()]);
    let search = fx.call("GET", &search_uri(""), None).await;
    assert!(search.keys().is_empty());
}

#[tokio::test]
async fn delete_batch_skips_unknown_hashes_instead_of_creating_ghosts_fixing_quirk_17() {
    let fx = Fixture::new().await;
    let a = fx.call("POST", &format!("{R}/runs/delete-batch/"), Some(r#"["ghost"]"#)).await;
    assert_eq!(a.status, 200);
    assert_eq!(fx.meta_field("ghost", "pending_deletion").await, None);
    assert!(fx.queued().await.is_empty());
    assert_envelope(&fx.call("GET", &format!("{R}/runs/ghost/info/"), None).await, 404, "not_found");
}

#[tokio::test]
async fn batch_bodies_that_are_not_lists_of_strings_are_422() {
    let fx = Fixture::new().await;
    for path in ["delete-batch", "archive-batch", "finish-batch"] {
        for body in [r#"{"a":1}"#, "[1, 2]", "not json", "", r#""abc""#] {
            let a = fx.call("POST", &format!("{R}/runs/{path}/"), Some(body)).await;
            assert_envelope(&a, 422, "validation_error");
        }
    }
    assert!(fx.queued().await.is_empty());
}

#[tokio::test]
async fn clear_tombstone_answers_204_and_removes_the_tombstone_idempotently() {
    let fx = Fixture::new().await;
    let layout = &fx.layout;
    fx.db
        .run(&RetryOptions::default(), |tx| async move {
            layout.indexes().mark_deleted(&tx, "gone", NOW);
            Ok::<_, LayoutError>(())
        })
        .await
        .unwrap();
    for _ in 0..2 {
        let a = fx.call("POST", &format!("{R}/runs/gone/clear-tombstone/"), None).await;
        assert_eq!(a.status, 204);
        assert!(a.body.is_empty());
    }
    let tx = fx.db.create_trx().unwrap();
    assert!(!fx.layout.indexes().is_deleted(&tx, "gone").await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// PUT runs/{id}

#[tokio::test]
async fn conformance_8_run_update_renames_archives_and_toggles_active() {
    let fx = Fixture::new().await;
    let put = |body: J| {
        let fx = &fx;
        async move { fx.call("PUT", &format!("{R}/runs/{RUN}"), Some(&body.to_string())).await }
    };
    let a = put(json!({"name": "Renamed"})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!({"id": RUN, "status": "OK"}));
    assert_eq!(fx.info(RUN).await["props"]["name"], "Renamed");

    assert_eq!(put(json!({"description": ""})).await.status, 200);
    assert_eq!(fx.info(RUN).await["props"]["description"], "");

    assert_eq!(put(json!({"archived": true})).await.status, 200);
    assert_eq!(fx.info(RUN).await["props"]["archived"], true);

    assert_eq!(put(json!({"active": false})).await.status, 200);
    let props = fx.info(RUN).await["props"].clone();
    assert_eq!(props["active"], false);
    assert!(props["end_time"].is_f64());

    assert_eq!(put(json!({"active": true})).await.status, 200);
    let props = fx.info(RUN).await["props"].clone();
    assert_eq!(props["active"], true);
    assert!(props["end_time"].is_null());

    fx.set_meta(RUN, vec![("active", Value::Bool(true)), ("finalized_at", Value::Float(1000.0))]).await;
    assert_eq!(put(json!({"active": false})).await.status, 200);
    assert_eq!(fx.info(RUN).await["props"]["end_time"], 1000.0);

    let a = fx.call("PUT", &format!("{R}/runs/unknown/"), Some(r#"{"name":"x"}"#)).await;
    assert_envelope(&a, 404, "not_found");
}

#[tokio::test]
async fn conformance_8_archiving_swaps_the_archived_index_and_the_default_filter_follows() {
    let fx = Fixture::new().await;
    assert_eq!(fx.indexed(&[Elem::from("archived"), Elem::Bool(false)]).await, vec![RUN.to_owned()]);
    let a = fx.call("PUT", &format!("{R}/runs/{RUN}/"), Some(r#"{"archived": true}"#)).await;
    assert_eq!(a.status, 200);
    assert!(fx.indexed(&[Elem::from("archived"), Elem::Bool(false)]).await.is_empty());
    assert_eq!(fx.indexed(&[Elem::from("archived"), Elem::Bool(true)]).await, vec![RUN.to_owned()]);
    assert!(fx.call("GET", &search_uri(""), None).await.keys().is_empty());
    assert_eq!(fx.call("GET", &search_uri("run.archived == True"), None).await.keys(), vec![RUN.to_owned()]);
}

#[tokio::test]
async fn put_experiment_links_by_name_and_an_unknown_name_clears_the_association_too() {
    let fx = Fixture::new().await;
    let exp = fx.create_experiment("exp").await;
    let a = fx.call("PUT", &format!("{R}/runs/{RUN}/"), Some(r#"{"experiment": "exp"}"#)).await;
    assert_eq!(a.status, 200);
    let props = fx.info(RUN).await["props"].clone();
    assert_eq!(props["experiment"]["name"], "exp");
    assert_eq!(props["experiment"]["id"], exp.as_str());
    assert_eq!(fx.run_count(EntityKind::Experiment, &exp).await, Value::Int(1));
    assert_eq!(fx.indexed(&[Elem::from("experiment"), Elem::from("exp")]).await, vec![RUN.to_owned()]);

    // Setting the same experiment again changes nothing.
    fx.call("PUT", &format!("{R}/runs/{RUN}/"), Some(r#"{"experiment": "exp"}"#)).await;
    assert_eq!(fx.run_count(EntityKind::Experiment, &exp).await, Value::Int(1));

    // Quirk 13 replicated (the experiment is cleared, not a 4xx), without its stale leftovers.
    let a = fx.call("PUT", &format!("{R}/runs/{RUN}/"), Some(r#"{"experiment": "missing"}"#)).await;
    assert_eq!(a.status, 200);
    assert_eq!(fx.info(RUN).await["props"]["experiment"], json!({"id": null, "name": null, "description": null}));
    assert_eq!(fx.run_count(EntityKind::Experiment, &exp).await, Value::Int(0));
    assert!(fx.indexed(&[Elem::from("experiment"), Elem::from("exp")]).await.is_empty());
    assert_eq!(fx.meta_field(RUN, "experiment_id").await, Some(Value::Nil));
}

#[tokio::test]
async fn put_with_malformed_bodies_is_a_422_and_unknown_keys_are_ignored() {
    let fx = Fixture::new().await;
    let uri = format!("{R}/runs/{RUN}/");
    for body in ["", "not json", "[]", r#"{"archived": "maybe"}"#, r#"{"name": 5}"#, r#"{"active": [true]}"#, "{"] {
        assert_envelope(&fx.call("PUT", &uri, Some(body)).await, 422, "validation_error");
    }
    let a = fx.call("PUT", &uri, Some(r#"{"unknown": 1, "name": null}"#)).await;
    assert_eq!(a.status, 200);
    assert_eq!(fx.info(RUN).await["props"]["name"], format!("Run: {RUN}"));
}

// ---------------------------------------------------------------------------------------------
// finish-batch, archive-batch

#[tokio::test]
async fn conformance_9_finish_batch_ends_runs_and_keeps_existing_end_times() {
    let fx = Fixture::new().await;
    fx.run("r2", "two").await;
    fx.set_meta("r2", vec![("finalized_at", Value::Float(1000.0))]).await;
    let a = fx.call("POST", &format!("{R}/runs/finish-batch/"), Some(&json!([RUN, "r2"]).to_string())).await;
    assert_eq!(a.json(), json!({"status": "OK"}));
    let one = fx.info(RUN).await["props"].clone();
    assert_eq!(one["active"], false);
    assert!(one["end_time"].is_f64());
    let two = fx.info("r2").await["props"].clone();
    assert_eq!(two["active"], false);
    assert_eq!(two["end_time"], 1000.0);
    assert_eq!(fx.indexed(&[Elem::from("active"), Elem::Bool(false)]).await.len(), 2);
    assert_eq!(fx.call("POST", &format!("{R}/runs/finish-batch/"), Some("[]")).await.status, 200);
}

#[tokio::test]
async fn conformance_9_archive_batch_archives_and_unarchives() {
    let fx = Fixture::new().await;
    fx.run("r2", "two").await;
    let body = json!([RUN, "r2"]).to_string();
    let a = fx.call("POST", &format!("{R}/runs/archive-batch/?archive=true"), Some(&body)).await;
    assert_eq!(a.json(), json!({"status": "OK"}));
    assert_eq!(fx.info(RUN).await["props"]["archived"], true);
    assert_eq!(fx.info("r2").await["props"]["archived"], true);
    assert_eq!(fx.indexed(&[Elem::from("archived"), Elem::Bool(true)]).await.len(), 2);
    // `archive` defaults to true; FastAPI booleans are tolerant.
    fx.call("POST", &format!("{R}/runs/archive-batch/?archive=False"), Some(&body)).await;
    assert_eq!(fx.info(RUN).await["props"]["archived"], false);
    assert!(fx.indexed(&[Elem::from("archived"), Elem::Bool(true)]).await.is_empty());
    fx.call("POST", &format!("{R}/runs/archive-batch/"), Some(&body)).await;
    assert_eq!(fx.info("r2").await["props"]["archived"], true);
    let a = fx.call("POST", &format!("{R}/runs/archive-batch/?archive=maybe"), Some(&body)).await;
    assert_envelope(&a, 422, "validation_error");
}

#[tokio::test]
async fn archive_and_finish_batches_skip_unknown_hashes_instead_of_creating_ghosts_fixing_quirk_17() {
    let fx = Fixture::new().await;
    for path in ["archive-batch/?archive=true", "finish-batch/"] {
        let a = fx.call("POST", &format!("{R}/runs/{path}"), Some(r#"["ghost"]"#)).await;
        assert_eq!(a.status, 200);
    }
    assert_envelope(&fx.call("GET", &format!("{R}/runs/ghost/info/"), None).await, 404, "not_found");
    assert!(fx.indexed(&[Elem::from("archived"), Elem::Bool(true)]).await.is_empty());
    let archived = fx.call("GET", &search_uri("run.archived == True"), None).await;
    assert!(archived.keys().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Run ↔ tag

#[tokio::test]
async fn conformance_10_run_tag_add_lists_the_tag_and_remove_unlinks_it() {
    let fx = Fixture::new().await;
    let a = fx.call("POST", &format!("{R}/runs/{RUN}/tags/new/"), Some(r#"{"tag_name": " important "}"#)).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["id"], RUN);
    assert_eq!(v["status"], "OK");
    let tag_id = v["tag_id"].as_str().unwrap().to_owned();
    let tags = fx.info(RUN).await["props"]["tags"].clone();
    assert_eq!(tags, json!([{"id": tag_id, "name": "important", "color": "", "description": ""}]));
    assert_eq!(fx.run_count(EntityKind::Tag, &tag_id).await, Value::Int(1));
    assert_eq!(fx.call("GET", &search_uri(r#""important" in run.tags"#), None).await.keys(), vec![RUN.to_owned()]);

    let a = fx.call("DELETE", &format!("{R}/runs/{RUN}/tags/{tag_id}/"), None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!({"id": RUN, "removed": true, "status": "OK"}));
    assert_eq!(fx.info(RUN).await["props"]["tags"], json!([]));
    assert_eq!(fx.run_count(EntityKind::Tag, &tag_id).await, Value::Int(0));
    assert!(fx.indexed(&[Elem::from("tag"), Elem::from("important")]).await.is_empty());
    assert!(fx.call("GET", &search_uri(r#""important" in run.tags"#), None).await.keys().is_empty());
}

#[tokio::test]
async fn conformance_10_tag_routes_on_an_unknown_run_are_404() {
    let fx = Fixture::new().await;
    let a = fx.call("POST", &format!("{R}/runs/unknown/tags/new/"), Some(r#"{"tag_name": "x"}"#)).await;
    assert_envelope(&a, 404, "not_found");
    let a = fx.call("DELETE", &format!("{R}/runs/unknown/tags/some-tag/"), None).await;
    assert_envelope(&a, 404, "not_found");
}

#[tokio::test]
async fn adding_a_tag_twice_counts_once_and_removing_an_unlinked_tag_changes_nothing_fixing_quirk_16() {
    let fx = Fixture::new().await;
    fx.run("r2", "two").await;
    let mut tag_id = String::new();
    for run in [RUN, RUN, "r2"] {
        let a = fx.call("POST", &format!("{R}/runs/{run}/tags/new/"), Some(r#"{"tag_name": "shared"}"#)).await;
        let id = a.json()["tag_id"].as_str().unwrap().to_owned();
        assert!(tag_id.is_empty() || tag_id == id, "one tag for one name");
        tag_id = id;
    }
    assert_eq!(fx.run_count(EntityKind::Tag, &tag_id).await, Value::Int(2));
    for _ in 0..2 {
        let a = fx.call("DELETE", &format!("{R}/runs/{RUN}/tags/{tag_id}/"), None).await;
        assert_eq!(a.json()["removed"], true);
    }
    assert_eq!(fx.run_count(EntityKind::Tag, &tag_id).await, Value::Int(1));
    assert_eq!(fx.indexed(&[Elem::from("tag"), Elem::from("shared")]).await, vec!["r2".to_owned()]);
}

#[tokio::test]
async fn tags_new_with_malformed_bodies_is_a_422() {
    let fx = Fixture::new().await;
    let uri = format!("{R}/runs/{RUN}/tags/new/");
    for body in ["", "{}", r#"{"tag_name": 5}"#, r#"{"tag_name": "   "}"#, r#"["x"]"#, "{bad"] {
        assert_envelope(&fx.call("POST", &uri, Some(body)).await, 422, "validation_error");
    }
}

#[tokio::test]
async fn write_routes_answer_without_a_trailing_slash_and_wrong_methods_are_405() {
    let fx = Fixture::new().await;
    assert_eq!(fx.call("PUT", &format!("{R}/runs/{RUN}"), Some("{}")).await.status, 200);
    assert_eq!(fx.call("GET", &format!("{R}/runs/delete-batch"), None).await.status, 405);
    assert_eq!(fx.call("POST", &format!("{R}/runs/{RUN}/tags/new"), Some(r#"{"tag_name":"a"}"#)).await.status, 200);
}

#[tokio::test]
async fn oversized_ids_names_and_tags_are_a_4xx_never_a_500() {
    let fx = Fixture::new().await;
    let long_id = "r".repeat(20_000);
    let huge = "x".repeat(200_000);
    let cases: Vec<(&str, String, Option<String>)> = vec![
        ("GET", format!("{R}/runs/{long_id}/info/"), None),
        ("DELETE", format!("{R}/runs/{long_id}/"), None),
        ("PUT", format!("{R}/runs/{long_id}/"), Some(r#"{"name":"a"}"#.to_owned())),
        ("POST", format!("{R}/runs/{long_id}/clear-tombstone/"), None),
        ("POST", format!("{R}/runs/delete-batch/"), Some(json!([long_id]).to_string())),
        ("POST", format!("{R}/runs/{long_id}/tags/new/"), Some(r#"{"tag_name":"a"}"#.to_owned())),
        ("PUT", format!("{R}/runs/{RUN}/"), Some(json!({"name": huge}).to_string())),
        ("PUT", format!("{R}/runs/{RUN}/"), Some(json!({"experiment": huge}).to_string())),
        ("POST", format!("{R}/runs/{RUN}/tags/new/"), Some(json!({"tag_name": huge}).to_string())),
        ("DELETE", format!("{R}/runs/{RUN}/tags/{long_id}/"), None),
        ("GET", format!("{R}/runs/{long_id}/logs/"), None),
        ("GET", format!("{R}/runs/{long_id}/log-records/"), None),
        ("POST", format!("{R}/runs/{long_id}/texts/get-batch/"), Some(r#"[{"name":"a","context":{}}]"#.to_owned())),
    ];
    for (method, uri, body) in cases {
        let a = fx.call(method, &uri, body.as_deref()).await;
        assert!(
            a.status < 500,
            "{method} {} -> {}: {}",
            &uri[..80.min(uri.len())],
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
}
