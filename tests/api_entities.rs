//! Entity routes of the REST API (spec `api.md` §2.2, §6.3–§6.8) and CORS (§1.3) against the
//! in-process router: CRUD round trips, duplicate names, 404s, run counts, the outbox events of
//! deletions. Conformance cases of §12 are named after their number.

mod common;

use axum::body::Body;
use axum::http::Request;
use matyan::app::AppState;
use matyan::storage::kv::{Database, RangeOption, RetryOptions};
use matyan::storage::layout::{EntityKind, Layout};
use matyan::storage::tuple::{self, Elem};
use matyan::storage::value::{self, Value};
use serde_json::{Value as J, json};
use tower::ServiceExt as _;

const R: &str = "/api/v1/rest";

struct Fixture {
    db: Database,
    layout: Layout,
    cors: Vec<String>,
}

struct Answer {
    status: u16,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> J {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Fixture {
    async fn new() -> Self {
        let db = Database::memory();
        let layout = Layout::open(&db).await.unwrap();
        Fixture { db, layout, cors: vec!["http://127.0.0.1:8000".into(), "http://localhost:8000".into()] }
    }

    fn state(&self) -> AppState {
        common::app_state_with(&self.db, &self.layout, |c| c.server.cors_origins = self.cors.clone())
    }

    async fn send(&self, req: Request<Body>) -> Answer {
        let resp = matyan::http::service(self.state()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap().to_vec();
        Answer { status, headers, body }
    }

    async fn call(&self, method: &str, path: &str, body: Option<J>) -> Answer {
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let req = Request::builder()
            .method(method)
            .uri(format!("{R}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        self.send(req).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    /// Creates a run named `name` created at `created_at`.
    async fn run(&self, hash: &str, name: &str, created_at: f64) {
        let layout = self.layout.clone();
        self.db
            .run(&RetryOptions::default(), |tx| {
                let layout = layout.clone();
                async move {
                    layout.runs.create_run(&tx, hash, created_at, None).await?;
                    layout.runs.update_meta(&tx, hash, created_at, &[("name", Value::from(name))]).await
                }
            })
            .await
            .unwrap();
    }

    /// Links a run to experiment `exp` as ingestion does.
    async fn link_experiment(&self, hash: &str, exp: &str) {
        let layout = self.layout.clone();
        self.db
            .run(&RetryOptions::default(), |tx| {
                let layout = layout.clone();
                async move {
                    layout.system.link_experiment(&tx, layout.indexes(), hash, Some(exp)).await?;
                    layout.runs.update_meta(&tx, hash, common::NOW, &[("experiment_id", Value::from(exp))]).await
                }
            })
            .await
            .unwrap();
    }

    async fn link_tag(&self, hash: &str, tag: &str) {
        let layout = self.layout.clone();
        self.db
            .run(&RetryOptions::default(), |tx| {
                let layout = layout.clone();
                async move { layout.system.link_tag(&tx, layout.indexes(), hash, tag).await.map(|_| ()) }
            })
            .await
            .unwrap();
    }

    async fn meta(&self, hash: &str, fields: Vec<(&'static str, Value)>) {
        let layout = self.layout.clone();
        self.db
            .run(&RetryOptions::default(), |tx| {
                let (layout, fields) = (layout.clone(), fields.clone());
                async move { layout.runs.update_meta(&tx, hash, common::NOW, &fields).await }
            })
            .await
            .unwrap();
    }

    /// The control events in the outbox, as JSON.
    async fn outbox(&self) -> Vec<J> {
        let tx = self.db.create_trx().unwrap();
        let (b, e) = tuple::range(&self.layout.dirs.ours, &[Elem::from("outbox")]);
        let rows = tx.get_range(&RangeOption::new(b, e), false).await.unwrap();
        rows.iter().map(|kv| value::decode(&kv.value).unwrap().to_json().unwrap()).collect()
    }

    async fn entity_fields(&self, kind: EntityKind, id: &str) -> Option<Vec<(String, Value)>> {
        let tx = self.db.create_trx().unwrap();
        self.layout.system.get(&tx, kind, id).await.unwrap()
    }

    async fn create(&self, path: &str, body: J) -> String {
        let a = self.call("POST", path, Some(body)).await;
        assert!(a.status == 200 || a.status == 201, "{path}: {} {}", a.status, String::from_utf8_lossy(&a.body));
        a.json()["id"].as_str().unwrap().to_owned()
    }
}

fn assert_envelope(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    assert_eq!(v["error"]["code"], code);
    assert_eq!(v["detail"], v["error"]["message"]);
    assert!(!v["detail"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn conformance_2_experiment_validation_and_duplicate_names() {
    let f = Fixture::new().await;
    assert_envelope(&f.call("POST", "/experiments/", Some(json!({"wrong_key": "x"}))).await, 422, "validation_error");
    assert_envelope(&f.call("POST", "/experiments/", Some(json!({"name": 3}))).await, 422, "validation_error");
    assert_envelope(&f.call("POST", "/experiments/", Some(json!([1]))).await, 422, "validation_error");
    let first = f.call("POST", "/experiments/", Some(json!({"name": "dup"}))).await;
    assert_eq!(first.status, 200, "POST experiments answers 200, not 201 (quirk 15)");
    assert_eq!(first.json()["status"], "OK");
    let again = f.call("POST", "/experiments/", Some(json!({"name": " dup "}))).await;
    assert_envelope(&again, 400, "bad_request");
    assert_eq!(again.json()["detail"], "Experiment with name 'dup' already exists");
}

#[tokio::test]
async fn conformance_3_version() {
    let f = Fixture::new().await;
    let v = f.get("/version").await.json();
    assert_eq!(v["component"], "backend");
    assert_eq!(v["fdb_api_version"], 730);
    assert!(v["version"].is_string());
}

#[tokio::test]
async fn conformance_23_experiments() {
    let f = Fixture::new().await;
    assert_eq!(f.get("/experiments").await.json(), json!([]));
    let target = f.create("/experiments", json!({"name": "search-target"})).await;
    f.create("/experiments", json!({"name": "other"})).await;
    let found = f.get("/experiments/search?q=TARGET").await.json();
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["id"], target.as_str());
    assert_envelope(&f.get("/experiments/00000000-0000-0000-0000-000000000000").await, 404, "not_found");

    let got = f.get(&format!("/experiments/{target}")).await.json();
    assert_eq!(got["name"], "search-target");
    assert_eq!(got["archived"], false);
    assert_eq!(got["run_count"], 0);
    assert!(got["creation_time"].is_f64());
    let keys: Vec<&str> = got.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["id", "name", "description", "run_count", "archived", "creation_time"]);

    let put = f.call("PUT", &format!("/experiments/{target}"), Some(json!({"name": "renamed"}))).await;
    assert_eq!(put.json(), json!({"id": target, "status": "OK"}));
    assert_eq!(f.get(&format!("/experiments/{target}")).await.json()["name"], "renamed");
    f.call("PUT", &format!("/experiments/{target}"), Some(json!({"archived": true}))).await;
    assert_eq!(f.get(&format!("/experiments/{target}")).await.json()["archived"], true);
    assert_eq!(f.call("PUT", "/experiments/nope", Some(json!({"name": "x"}))).await.status, 404);

    // Runs, limit and offset, activity.
    for (i, h) in ["aaa1", "aaa2", "aaa3"].iter().enumerate() {
        f.run(h, &format!("r{i}"), common::NOW + i as f64).await;
        f.link_experiment(h, &target).await;
    }
    let runs = f.get(&format!("/experiments/{target}/runs")).await.json();
    let ids: Vec<&str> = runs["runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["aaa1", "aaa2", "aaa3"]);
    assert_eq!(runs["runs"][0]["name"], "r0");
    assert_eq!(f.get(&format!("/experiments/{target}")).await.json()["run_count"], 3);
    assert_eq!(f.get(&format!("/experiments/{target}/runs?limit=2")).await.json()["runs"].as_array().unwrap().len(), 2);
    let after = f.get(&format!("/experiments/{target}/runs?offset=aaa1")).await.json();
    assert_eq!(after["runs"][0]["run_id"], "aaa2");
    // Quirk 12: an unknown offset starts from the beginning.
    let unknown = f.get(&format!("/experiments/{target}/runs?offset=zzz")).await.json();
    assert_eq!(unknown["runs"].as_array().unwrap().len(), 3);

    let activity = f.get(&format!("/experiments/{target}/activity")).await.json();
    assert_eq!((activity["num_runs"].as_u64(), activity["num_active_runs"].as_u64()), (Some(3), Some(3)));
    assert_eq!(activity["num_archived_runs"], 0);
    assert_eq!(activity["activity_map"]["2025-01-01T00:00:00"], 3);
    f.meta("aaa1", vec![("is_archived", Value::Bool(true))]).await;
    assert_eq!(f.get(&format!("/experiments/{target}/activity")).await.json()["num_archived_runs"], 1);

    // Notes on an unknown experiment.
    assert_eq!(f.get("/experiments/nope/note").await.status, 404);
    assert_eq!(f.call("POST", "/experiments/nope/note", Some(json!({"content": "x"}))).await.status, 404);

    // Delete, then 404.
    assert_eq!(f.call("DELETE", &format!("/experiments/{target}"), None).await.json(), json!({"status": "OK"}));
    assert_envelope(&f.get(&format!("/experiments/{target}")).await, 404, "not_found");
    assert_eq!(f.call("DELETE", &format!("/experiments/{target}"), None).await.status, 404);
}

#[tokio::test]
async fn experiment_update_without_description_resets_it_quirk_13() {
    let f = Fixture::new().await;
    let id = f.create("/experiments", json!({"name": "e"})).await;
    f.call("PUT", &format!("/experiments/{id}"), Some(json!({"description": "kept?"}))).await;
    assert_eq!(f.get(&format!("/experiments/{id}")).await.json()["description"], "kept?");
    f.call("PUT", &format!("/experiments/{id}"), Some(json!({"archived": false}))).await;
    assert_eq!(f.get(&format!("/experiments/{id}")).await.json()["description"], "");
}

#[tokio::test]
async fn experiment_deletion_records_experiment_deleted_in_the_outbox() {
    let f = Fixture::new().await;
    let id = f.create("/experiments", json!({"name": "gone"})).await;
    assert!(f.outbox().await.is_empty());
    f.call("DELETE", &format!("/experiments/{id}"), None).await;
    let events = f.outbox().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "experiment_deleted");
    assert_eq!(events[0]["payload"], json!({"experiment_id": id}));
    assert!(events[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    // The name is free again.
    f.create("/experiments", json!({"name": "gone"})).await;
}

#[tokio::test]
async fn conformance_24_tags() {
    let f = Fixture::new().await;
    assert_eq!(f.get("/tags").await.json(), json!([]));
    let a = f.create("/tags", json!({"name": "a-release", "color": " #ff0000 ", "description": "desc"})).await;
    f.create("/tags", json!({"name": "b-release"})).await;
    f.create("/tags", json!({"name": "other"})).await;
    assert_eq!(f.get("/tags/search?q=release").await.json().as_array().unwrap().len(), 2);
    let got = f.get(&format!("/tags/{a}")).await.json();
    assert_eq!(
        got,
        json!({"id": a, "name": "a-release", "color": "#ff0000", "description": "desc", "run_count": 0, "archived": false})
    );
    let dup = f.call("POST", "/tags", Some(json!({"name": "a-release"}))).await;
    assert_envelope(&dup, 400, "bad_request");
    assert_eq!(dup.json()["detail"], "Tag with name 'a-release' already exists");
    assert_eq!(f.call("PUT", "/tags/nope", Some(json!({"name": "x"}))).await.status, 404);

    let put =
        f.call("PUT", &format!("/tags/{a}"), Some(json!({"name": "renamed", "archived": true, "color": ""}))).await;
    assert_eq!(put.json(), json!({"id": a, "status": "OK"}));
    let got = f.get(&format!("/tags/{a}")).await.json();
    assert_eq!(
        (got["name"].as_str(), got["archived"].as_bool(), got["color"].as_str()),
        (Some("renamed"), Some(true), Some(""))
    );
    assert_eq!(got["description"], "desc", "a PUT without description keeps it");

    // Runs of a tag, with experiment names; run_count.
    let exp = f.create("/experiments", json!({"name": "exp"})).await;
    f.run("r1", "one", common::NOW).await;
    f.run("r2", "two", common::NOW).await;
    f.link_experiment("r1", &exp).await;
    f.link_tag("r1", &a).await;
    f.link_tag("r2", &a).await;
    let runs = f.get(&format!("/tags/{a}/runs")).await.json();
    assert_eq!(runs["id"], a.as_str());
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    assert_eq!(runs["runs"][0]["experiment"], "exp");
    assert_eq!(runs["runs"][1]["experiment"], J::Null);
    assert_eq!(f.get(&format!("/tags/{a}")).await.json()["run_count"], 2);
    // Pending-deletion runs are skipped.
    f.meta("r2", vec![("pending_deletion", Value::Bool(true))]).await;
    assert_eq!(f.get(&format!("/tags/{a}/runs")).await.json()["runs"].as_array().unwrap().len(), 1);

    // DELETE answers 200 null (quirk 15), then 404; tag_deleted is in the outbox.
    let del = f.call("DELETE", &format!("/tags/{a}"), None).await;
    assert_eq!((del.status, del.json()), (200, J::Null));
    assert_envelope(&f.get(&format!("/tags/{a}")).await, 404, "not_found");
    assert_eq!(f.get(&format!("/tags/{a}/runs")).await.status, 404);
    let events = f.outbox().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "tag_deleted");
    assert_eq!(events[0]["payload"], json!({"tag_id": a}));
}

#[tokio::test]
async fn conformance_11_run_notes() {
    let f = Fixture::new().await;
    assert_eq!(f.get("/runs/A/note").await.json(), json!([]));
    let created = f.call("POST", "/runs/A/note", Some(json!({"content": " hello "}))).await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert!(created.json()["created_at"].is_f64());
    let got = f.get(&format!("/runs/A/note/{id}")).await.json();
    assert_eq!((got["id"].as_str(), got["content"].as_str()), (Some(id.as_str()), Some("hello")));
    let put = f.call("PUT", &format!("/runs/A/note/{id}"), Some(json!({"content": "changed"}))).await;
    assert_eq!(put.json()["content"], "changed");
    assert_eq!(f.get(&format!("/runs/A/note/{id}")).await.json()["content"], "changed");
    // Another run's URL does not reach it.
    assert_eq!(f.get(&format!("/runs/B/note/{id}")).await.status, 404);
    assert_eq!(f.call("DELETE", &format!("/runs/B/note/{id}"), None).await.status, 404);
    // Two creates, list of two; listed notes carry id then the stored fields alphabetically.
    f.call("POST", "/runs/A/note", Some(json!({"content": "second"}))).await;
    let list = f.get("/runs/A/note").await.json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let keys: Vec<&str> = list[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["id", "content", "created_at", "run_hash", "updated_at"]);
    let del = f.call("DELETE", &format!("/runs/A/note/{id}"), None).await;
    assert_eq!((del.status, del.json()), (200, json!({"status": "OK"})));
    assert_eq!(f.get(&format!("/runs/A/note/{id}")).await.status, 404);
    assert_eq!(f.call("POST", "/runs/A/note", Some(json!({}))).await.status, 422);
}

#[tokio::test]
async fn experiment_notes_crud_without_ownership_checks() {
    let f = Fixture::new().await;
    let exp = f.create("/experiments", json!({"name": "e"})).await;
    let created = f.call("POST", &format!("/experiments/{exp}/note"), Some(json!({"content": "n"}))).await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let list = f.get(&format!("/experiments/{exp}/note")).await.json();
    assert_eq!(list[0]["experiment_id"], exp.as_str());
    // Any experiment id reaches the note, as in the reference.
    assert_eq!(f.get(&format!("/experiments/other/note/{id}")).await.json()["content"], "n");
    f.call("PUT", &format!("/experiments/{exp}/note/{id}"), Some(json!({"content": "m"}))).await;
    assert_eq!(f.get(&format!("/experiments/{exp}/note/{id}")).await.json()["content"], "m");
    assert_eq!(f.call("DELETE", &format!("/experiments/{exp}/note/{id}"), None).await.status, 200);
    assert_eq!(f.get(&format!("/experiments/{exp}/note/{id}")).await.status, 404);
}

#[tokio::test]
async fn conformance_25_project_and_ui_state_entities() {
    let f = Fixture::new().await;
    let project = f.get("/projects").await.json();
    assert_eq!(project["name"], "My project");
    assert_eq!(project["telemetry_enabled"], 0);
    assert_eq!(f.get("/projects/status").await.json(), json!("up-to-date"));

    // Activity: two runs, both active; then one deleted and purged.
    f.run("p1", "one", common::NOW).await;
    f.run("p2", "two", common::NOW + 86_400.0).await;
    f.create("/experiments", json!({"name": "e"})).await;
    let activity = f.get("/projects/activity").await.json();
    assert_eq!((activity["num_runs"].as_u64(), activity["num_active_runs"].as_u64()), (Some(2), Some(2)));
    assert_eq!(activity["num_experiments"], 1);
    assert_eq!(activity["activity_map"], json!({"2025-01-01T00:00:00": 1, "2025-01-02T00:00:00": 1}));
    let keys: Vec<&str> = activity.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["num_experiments", "num_runs", "num_archived_runs", "num_active_runs", "activity_map"]);
    let layout = f.layout.clone();
    f.db.run(&RetryOptions::default(), |tx| {
        let layout = layout.clone();
        async move { layout.delete_run(&tx, "p2", common::NOW).await }
    })
    .await
    .unwrap();
    assert_eq!(f.get("/projects/activity").await.json()["num_runs"], 1);
    // Local days: from UTC-5 (offset 300) the first run was created on Dec 31st.
    let req = Request::builder()
        .uri(format!("{R}/projects/activity"))
        .header("x-timezone-offset", "300")
        .body(Body::empty())
        .unwrap();
    assert_eq!(f.send(req).await.json()["activity_map"], json!({"2024-12-31T00:00:00": 1}));
    let bad = Request::builder()
        .uri(format!("{R}/projects/activity"))
        .header("x-timezone-offset", "x")
        .body(Body::empty())
        .unwrap();
    assert_eq!(f.send(bad).await.status, 422);

    // Pinned sequences round trip.
    assert_eq!(f.get("/projects/pinned-sequences").await.json(), json!({"sequences": []}));
    let pinned = json!({"sequences": [{"name": "loss", "context": {"subset": "train"}}]});
    assert_eq!(f.call("POST", "/projects/pinned-sequences", Some(pinned.clone())).await.json(), pinned);
    assert_eq!(f.get("/projects/pinned-sequences").await.json(), pinned);
    assert_eq!(f.call("POST", "/projects/pinned-sequences", Some(json!({"sequences": 1}))).await.status, 422);

    // Apps.
    let app = f.call("POST", "/apps", Some(json!({"type": "metrics", "state": {"select": {"query": "q"}}}))).await;
    assert_eq!(app.status, 201);
    let app_id = app.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.json()["state"], json!({"select": {"query": "q"}}));
    assert_eq!(f.call("POST", "/apps", Some(json!({"type": "metrics"}))).await.status, 422);
    let updated = f.call("PUT", &format!("/apps/{app_id}"), Some(json!({"state": {"other": 1}}))).await;
    assert_eq!(updated.json()["state"], json!({"other": 1}), "the state is replaced whole");
    assert_eq!(f.get("/apps").await.json().as_array().unwrap().len(), 1);

    // Dashboards: 201 with created_at and app_type; rename; soft delete (quirk 14).
    let dash = f.call("POST", "/dashboards", Some(json!({"name": "d", "app_id": app_id}))).await;
    assert_eq!(dash.status, 201);
    let dash = dash.json();
    assert!(dash["created_at"].is_f64());
    assert_eq!((dash["app_type"].as_str(), dash["description"].as_str()), (Some("metrics"), Some("")));
    let dash_id = dash["id"].as_str().unwrap().to_owned();
    assert_eq!(f.get("/dashboards").await.json().as_array().unwrap().len(), 1);
    let renamed = f.call("PUT", &format!("/dashboards/{dash_id}"), Some(json!({"name": "d2"}))).await;
    assert_eq!(renamed.json()["name"], "d2");
    let del = f.call("DELETE", &format!("/dashboards/{dash_id}"), None).await;
    assert_eq!((del.status, del.body.len()), (204, 0));
    assert_eq!(f.get("/dashboards").await.json(), json!([]));
    assert_eq!(f.get(&format!("/dashboards/{dash_id}")).await.status, 200, "dashboard deletion is soft");

    // Apps delete is hard.
    assert_eq!(f.call("DELETE", &format!("/apps/{app_id}"), None).await.status, 204);
    assert_eq!(f.get(&format!("/apps/{app_id}")).await.status, 404);
    assert!(f.entity_fields(EntityKind::DashboardApp, &app_id).await.is_none());

    // Reports.
    let rep = f.call("POST", "/reports", Some(json!({"name": "r", "code": "print(1)", "description": "d"}))).await;
    assert_eq!(rep.status, 201);
    let rep = rep.json();
    assert_eq!((rep["code"].as_str(), rep["description"].as_str()), (Some("print(1)"), Some("d")));
    let rep_id = rep["id"].as_str().unwrap().to_owned();
    let upd = f.call("PUT", &format!("/reports/{rep_id}"), Some(json!({"code": "print(2)"}))).await.json();
    assert_eq!((upd["code"].as_str(), upd["name"].as_str()), (Some("print(2)"), Some("r")));
    assert_eq!(f.call("DELETE", &format!("/reports/{rep_id}"), None).await.status, 204);
    assert_eq!(f.get(&format!("/reports/{rep_id}")).await.status, 404);
    assert_eq!(f.call("DELETE", &format!("/reports/{rep_id}"), None).await.status, 404);
}

#[tokio::test]
async fn entity_routes_answer_without_a_trailing_slash_and_with_one() {
    let f = Fixture::new().await;
    let id = f.create("/experiments/", json!({"name": "slash"})).await;
    assert_eq!(f.get(&format!("/experiments/{id}/")).await.status, 200);
    assert_eq!(f.get(&format!("/experiments/{id}")).await.status, 200);
}

#[tokio::test]
async fn run_counts_follow_links_and_experiment_writes_keep_layout_keys() {
    let f = Fixture::new().await;
    let exp = f.create("/experiments", json!({"name": "counted"})).await;
    f.run("c1", "one", common::NOW).await;
    f.link_experiment("c1", &exp).await;
    assert_eq!(f.get("/experiments").await.json()[0]["run_count"], 1);
    let fields = f.entity_fields(EntityKind::Experiment, &exp).await.unwrap();
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    for field in ["name", "description", "is_archived", "run_count", "created_at", "updated_at"] {
        assert!(names.contains(&field), "{field} missing from {names:?}");
    }
    let tx = f.db.create_trx().unwrap();
    let by_name = f.layout.system.uuid_by_name(&tx, EntityKind::Experiment, "counted").await.unwrap();
    assert_eq!(by_name.as_deref(), Some(exp.as_str()));
}

// ---------------------------------------------------------------------------------------------
// CORS (§1.3).

fn preflight(origin: &str) -> Request<Body> {
    Request::builder()
        .method("OPTIONS")
        .uri(format!("{R}/projects"))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "content-type,x-timezone-offset")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn cors_preflight_from_an_allowed_origin_is_answered() {
    let f = Fixture::new().await;
    let a = f.send(preflight("http://127.0.0.1:8000")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), Some("http://127.0.0.1:8000"));
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.header("access-control-allow-headers"), Some("content-type,x-timezone-offset"));
    let methods = a.header("access-control-allow-methods").unwrap();
    for m in ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"] {
        assert!(methods.contains(m), "{m} not in {methods}");
    }
    assert_eq!(a.header("access-control-max-age"), Some("600"));
    assert!(a.headers.get_all("vary").iter().any(|v| v.to_str().unwrap_or("").to_lowercase().contains("origin")));
    // Also for a path without its route's method (a preflight before PUT on a GET path).
    let a = f.send(preflight("http://localhost:8000")).await;
    assert_eq!(a.header("access-control-allow-origin"), Some("http://localhost:8000"));
}

#[tokio::test]
async fn cors_preflight_from_a_refused_origin_gets_no_allow_origin() {
    let f = Fixture::new().await;
    let a = f.send(preflight("http://evil.example")).await;
    assert_eq!(a.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn cors_simple_requests_echo_allowed_origins_only() {
    let f = Fixture::new().await;
    let req = |origin: &str| {
        Request::builder().uri(format!("{R}/experiments")).header("origin", origin).body(Body::empty()).unwrap()
    };
    let ok = f.send(req("http://127.0.0.1:8000")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("access-control-allow-origin"), Some("http://127.0.0.1:8000"));
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    let refused = f.send(req("http://evil.example")).await;
    assert_eq!(refused.status, 200, "the server answers; the browser refuses it");
    assert_eq!(refused.header("access-control-allow-origin"), None);
    // Error answers carry CORS headers too, so the UI can read their detail.
    let missing = Request::builder()
        .uri(format!("{R}/experiments/nope"))
        .header("origin", "http://127.0.0.1:8000")
        .body(Body::empty())
        .unwrap();
    let a = f.send(missing).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.header("access-control-allow-origin"), Some("http://127.0.0.1:8000"));
}

#[tokio::test]
async fn cors_wildcard_origin_echoes_any_origin() {
    let mut f = Fixture::new().await;
    f.cors = vec!["*".into()];
    let a = f.send(preflight("http://anything:1")).await;
    assert_eq!(a.header("access-control-allow-origin"), Some("http://anything:1"));
}
