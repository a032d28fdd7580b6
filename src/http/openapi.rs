//! The OpenAPI 3 document of the routes this server answers, served at
//! `GET /api/v1/rest/openapi.json` so external tools (fuzzers, clients) can find them.
//!
//! Built by hand from [`ROUTES`], one row per method and path; a route added to the router gets
//! a row here too (a test sends a request to every row and checks that the router knows it, and
//! that the P0/P1 routes of `api.md` §11 are documented). Paths are written with their trailing
//! slash, as they are declared; the server answers them without it too.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as J, json};

/// What a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `application/json`.
    Json,
    /// `application/octet-stream` in the streaming codec (`api.md` §3).
    Stream,
    /// `text/plain` (Prometheus exposition).
    Text,
    /// No body (204).
    Empty,
}

/// A query parameter: name, schema type (`string`, `integer`, `boolean`), repeatable.
pub type Query = (&'static str, &'static str, bool);

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Lower-case HTTP method.
    pub method: &'static str,
    /// The path with `{name}` placeholders.
    pub path: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// Query parameters.
    pub query: &'static [Query],
    /// Whether it takes a JSON body.
    pub json_body: bool,
    /// The success status.
    pub status: u16,
    /// The success body.
    pub body: Body,
}

const fn r(method: &'static str, path: &'static str, summary: &'static str) -> Route {
    Route { method, path, summary, query: &[], json_body: false, status: 200, body: Body::Json }
}

const fn q(mut route: Route, query: &'static [Query]) -> Route {
    route.query = query;
    route
}

const fn with_body(mut route: Route) -> Route {
    route.json_body = true;
    route
}

const fn status(mut route: Route, status: u16, body: Body) -> Route {
    route.status = status;
    route.body = body;
    route
}

const SEARCH: &[Query] = &[
    ("q", "string", false),
    ("limit", "integer", false),
    ("offset", "string", false),
    ("sort", "string", false),
    ("exclude_params", "boolean", false),
    ("exclude_traces", "boolean", false),
    ("report_progress", "boolean", false),
];
const METRIC_SEARCH: &[Query] = &[
    ("q", "string", false),
    ("p", "integer", false),
    ("x_axis", "string", false),
    ("report_progress", "boolean", false),
];

const OBJECT_SEARCH: &[Query] = &[
    ("q", "string", false),
    ("record_range", "string", false),
    ("record_density", "integer", false),
    ("index_range", "string", false),
    ("index_density", "integer", false),
    ("report_progress", "boolean", false),
];

const OBJECT_BATCH: &[Query] = &[
    ("record_range", "string", false),
    ("record_density", "integer", false),
    ("index_range", "string", false),
    ("index_density", "integer", false),
];

const OBJECT_STEP: &[Query] =
    &[("record_step", "integer", false), ("index_range", "string", false), ("index_density", "integer", false)];

/// Every documented operation.
pub const ROUTES: &[Route] = &[
    r("get", "/health/live/", "Liveness probe"),
    r("get", "/health/ready/", "Readiness probe (503 when storage fails)"),
    status(r("get", "/metrics/", "Prometheus metrics (when enabled)"), 200, Body::Text),
    r("get", "/api/v1/rest/openapi.json", "This document"),
    r("get", "/api/v1/rest/version/", "Server version"),
    status(q(r("get", "/api/v1/rest/runs/search/run/", "Run search (MatyanQL)"), SEARCH), 200, Body::Stream),
    status(q(r("get", "/api/v1/rest/runs/search/metric/", "Metric search"), METRIC_SEARCH), 200, Body::Stream),
    r("get", "/api/v1/rest/runs/{run_id}/info/", "Run info"),
    with_body(q(
        r("post", "/api/v1/rest/runs/{run_id}/metric/get-batch/", "Metric series of one run"),
        &[("record_density", "integer", false)],
    )),
    with_body(r(
        "put",
        "/api/v1/rest/runs/{run_id}/",
        "Update a run (name, description, archived, active, experiment)",
    )),
    r("delete", "/api/v1/rest/runs/{run_id}/", "Delete a run (pending deletion, then delete_run)"),
    with_body(r("post", "/api/v1/rest/runs/delete-batch/", "Delete runs")),
    with_body(q(
        r("post", "/api/v1/rest/runs/archive-batch/", "Archive or unarchive runs"),
        &[("archive", "boolean", false)],
    )),
    with_body(r("post", "/api/v1/rest/runs/finish-batch/", "Finish runs")),
    status(r("post", "/api/v1/rest/runs/{run_id}/clear-tombstone/", "Clear a run's tombstone"), 204, Body::Empty),
    with_body(r("post", "/api/v1/rest/runs/{run_id}/tags/new/", "Tag a run (creating the tag)")),
    r("delete", "/api/v1/rest/runs/{run_id}/tags/{tag_id}/", "Untag a run"),
    q(r("get", "/api/v1/rest/runs/{run_id}/logs/", "Terminal logs of a run"), &[("record_range", "string", false)]),
    q(
        r("get", "/api/v1/rest/runs/{run_id}/log-records/", "Log records of a run"),
        &[("record_range", "string", false)],
    ),
    status(
        with_body(r("post", "/api/v1/rest/runs/search/metric/align/", "Align metrics on a custom x-axis")),
        200,
        Body::Stream,
    ),
    status(
        q(r("get", "/api/v1/rest/runs/active/", "Active runs"), &[("report_progress", "boolean", false)]),
        200,
        Body::Stream,
    ),
    status(q(r("get", "/api/v1/rest/runs/search/images/", "Image search"), OBJECT_SEARCH), 200, Body::Stream),
    status(q(r("get", "/api/v1/rest/runs/search/audios/", "Audio search"), OBJECT_SEARCH), 200, Body::Stream),
    status(q(r("get", "/api/v1/rest/runs/search/texts/", "Text search"), OBJECT_SEARCH), 200, Body::Stream),
    status(
        q(r("get", "/api/v1/rest/runs/search/distributions/", "Distribution search"), OBJECT_SEARCH),
        200,
        Body::Stream,
    ),
    status(q(r("get", "/api/v1/rest/runs/search/figures/", "Figure search"), OBJECT_SEARCH), 200, Body::Stream),
    status(
        with_body(q(r("post", "/api/v1/rest/runs/{run_id}/images/get-batch/", "Images of one run"), OBJECT_BATCH)),
        200,
        Body::Stream,
    ),
    status(
        with_body(q(r("post", "/api/v1/rest/runs/{run_id}/audios/get-batch/", "Audios of one run"), OBJECT_BATCH)),
        200,
        Body::Stream,
    ),
    status(
        with_body(q(
            r("post", "/api/v1/rest/runs/{run_id}/images/get-step/", "Images of one run at one step"),
            OBJECT_STEP,
        )),
        200,
        Body::Stream,
    ),
    status(
        with_body(q(
            r("post", "/api/v1/rest/runs/{run_id}/audios/get-step/", "Audios of one run at one step"),
            OBJECT_STEP,
        )),
        200,
        Body::Stream,
    ),
    status(
        with_body(r("post", "/api/v1/rest/runs/images/get-batch/", "Bytes of image blobs by blob URI")),
        200,
        Body::Stream,
    ),
    status(
        with_body(r("post", "/api/v1/rest/runs/audios/get-batch/", "Bytes of audio blobs by blob URI")),
        200,
        Body::Stream,
    ),
    status(with_body(r("post", "/api/v1/rest/runs/{run_id}/texts/get-batch/", "Texts of one run")), 200, Body::Stream),
    status(
        with_body(r("post", "/api/v1/rest/runs/{run_id}/distributions/get-batch/", "Distributions of one run")),
        200,
        Body::Stream,
    ),
    status(
        with_body(r("post", "/api/v1/rest/runs/{run_id}/figures/get-batch/", "Figures of one run")),
        200,
        Body::Stream,
    ),
    status(
        with_body(r("post", "/api/v1/rest/runs/{run_id}/texts/get-step/", "Texts of one run at one step")),
        200,
        Body::Stream,
    ),
    status(
        with_body(r("post", "/api/v1/rest/runs/{run_id}/distributions/get-step/", "Distributions at one step")),
        200,
        Body::Stream,
    ),
    status(
        with_body(r("post", "/api/v1/rest/runs/{run_id}/figures/get-step/", "Figures of one run at one step")),
        200,
        Body::Stream,
    ),
    r("get", "/api/v1/rest/runs/{run_id}/note/", "Notes of a run"),
    status(with_body(r("post", "/api/v1/rest/runs/{run_id}/note/", "Create a run note")), 201, Body::Json),
    r("get", "/api/v1/rest/runs/{run_id}/note/{note_id}/", "A run note"),
    with_body(r("put", "/api/v1/rest/runs/{run_id}/note/{note_id}/", "Update a run note")),
    r("delete", "/api/v1/rest/runs/{run_id}/note/{note_id}/", "Delete a run note"),
    r("get", "/api/v1/rest/projects/", "Project info"),
    r("get", "/api/v1/rest/projects/activity/", "Project activity (daily, client's local time)"),
    q(
        r("get", "/api/v1/rest/projects/params/", "Merged params and sequence names"),
        &[("sequence", "string", true), ("exclude_params", "boolean", false)],
    ),
    r("get", "/api/v1/rest/projects/pinned-sequences/", "Pinned sequences"),
    with_body(r("post", "/api/v1/rest/projects/pinned-sequences/", "Replace the pinned sequences")),
    r("get", "/api/v1/rest/projects/status/", "Project status"),
    r("get", "/api/v1/rest/experiments/", "List experiments"),
    with_body(r("post", "/api/v1/rest/experiments/", "Create an experiment")),
    q(r("get", "/api/v1/rest/experiments/search/", "Search experiments by name"), &[("q", "string", false)]),
    r("get", "/api/v1/rest/experiments/{id}/", "An experiment"),
    with_body(r("put", "/api/v1/rest/experiments/{id}/", "Update an experiment")),
    r("delete", "/api/v1/rest/experiments/{id}/", "Delete an experiment"),
    q(
        r("get", "/api/v1/rest/experiments/{id}/runs/", "Runs of an experiment"),
        &[("limit", "integer", false), ("offset", "string", false)],
    ),
    r("get", "/api/v1/rest/experiments/{id}/activity/", "Experiment activity (hourly)"),
    r("get", "/api/v1/rest/experiments/{id}/note/", "Notes of an experiment"),
    status(with_body(r("post", "/api/v1/rest/experiments/{id}/note/", "Create an experiment note")), 201, Body::Json),
    r("get", "/api/v1/rest/experiments/{id}/note/{note_id}/", "An experiment note"),
    with_body(r("put", "/api/v1/rest/experiments/{id}/note/{note_id}/", "Update an experiment note")),
    r("delete", "/api/v1/rest/experiments/{id}/note/{note_id}/", "Delete an experiment note"),
    r("get", "/api/v1/rest/tags/", "List tags"),
    with_body(r("post", "/api/v1/rest/tags/", "Create a tag")),
    q(r("get", "/api/v1/rest/tags/search/", "Search tags by name"), &[("q", "string", false)]),
    r("get", "/api/v1/rest/tags/{id}/", "A tag"),
    with_body(r("put", "/api/v1/rest/tags/{id}/", "Update a tag")),
    r("delete", "/api/v1/rest/tags/{id}/", "Delete a tag (answers null)"),
    r("get", "/api/v1/rest/tags/{id}/runs/", "Runs of a tag"),
    r("get", "/api/v1/rest/dashboards/", "List dashboards"),
    status(with_body(r("post", "/api/v1/rest/dashboards/", "Create a dashboard")), 201, Body::Json),
    r("get", "/api/v1/rest/dashboards/{id}/", "A dashboard"),
    with_body(r("put", "/api/v1/rest/dashboards/{id}/", "Update a dashboard")),
    status(r("delete", "/api/v1/rest/dashboards/{id}/", "Delete a dashboard (soft)"), 204, Body::Empty),
    r("get", "/api/v1/rest/apps/", "List apps (explorer states)"),
    status(with_body(r("post", "/api/v1/rest/apps/", "Create an app")), 201, Body::Json),
    r("get", "/api/v1/rest/apps/{id}/", "An app"),
    with_body(r("put", "/api/v1/rest/apps/{id}/", "Update an app")),
    status(r("delete", "/api/v1/rest/apps/{id}/", "Delete an app"), 204, Body::Empty),
    r("get", "/api/v1/rest/reports/", "List reports"),
    status(with_body(r("post", "/api/v1/rest/reports/", "Create a report")), 201, Body::Json),
    r("get", "/api/v1/rest/reports/{id}/", "A report"),
    with_body(r("put", "/api/v1/rest/reports/{id}/", "Update a report")),
    status(r("delete", "/api/v1/rest/reports/{id}/", "Delete a report"), 204, Body::Empty),
];

/// The error envelope of `api.md` §1.7.
fn error_schema() -> J {
    json!({
        "type": "object",
        "properties": {
            "error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
            "detail": {"type": "string"},
        },
    })
}

fn operation(route: &Route) -> J {
    let mut parameters: Vec<J> = Vec::new();
    let mut rest = route.path;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else { break };
        let name = &rest[start + 1..start + len];
        parameters.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
        rest = &rest[start + len..];
    }
    for (name, ty, repeated) in route.query {
        let schema = if *repeated { json!({"type": "array", "items": {"type": ty}}) } else { json!({"type": ty}) };
        parameters.push(json!({"name": name, "in": "query", "required": false, "schema": schema}));
    }
    parameters.push(json!({
        "name": "X-Timezone-Offset", "in": "header", "required": false,
        "description": "JavaScript getTimezoneOffset(): minutes west of UTC", "schema": {"type": "integer"},
    }));
    let success = match route.body {
        Body::Json => json!({"description": "OK", "content": {"application/json": {"schema": {}}}}),
        Body::Stream => json!({
            "description": "A stream in Matyan's binary codec",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }),
        Body::Text => json!({"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}),
        Body::Empty => json!({"description": "No content"}),
    };
    let error = json!({"description": "Error envelope", "content": {"application/json": {"schema": error_schema()}}});
    let mut responses = Map::new();
    responses.insert(route.status.to_string(), success);
    for code in ["400", "404", "422", "500"] {
        responses.insert(code.to_owned(), error.clone());
    }
    let mut op = Map::new();
    op.insert("summary".into(), J::from(route.summary));
    op.insert("parameters".into(), J::Array(parameters));
    if route.json_body {
        op.insert("requestBody".into(), json!({"required": true, "content": {"application/json": {"schema": {}}}}));
        // A body sent as anything but JSON (src/http/api/body.rs).
        responses.insert("415".to_owned(), error.clone());
    }
    op.insert("responses".into(), J::Object(responses));
    J::Object(op)
}

/// The whole document.
pub fn build() -> J {
    let mut paths: Map<String, J> = Map::new();
    for route in ROUTES {
        let entry = paths.entry(route.path.to_owned()).or_insert_with(|| J::Object(Map::new()));
        if let J::Object(ops) = entry {
            ops.insert(route.method.to_owned(), operation(route));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Matyan REST API (matyan-rs)",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Wire-compatible with the Matyan backend; paths answer with and without a trailing slash.",
        },
        "paths": paths,
    })
}

/// `GET /api/v1/rest/openapi.json`.
pub async fn document() -> Response {
    Json(build()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::AppState;
    use axum::body::Body as AxBody;
    use axum::extract::Request;
    use tower::ServiceExt as _;

    async fn state() -> AppState {
        let mut config = crate::config::Config::from_toml_str("test", "").unwrap();
        config.storage.backend = crate::config::Backend::Memory;
        AppState::open(config, None).await.unwrap()
    }

    #[tokio::test]
    async fn every_documented_operation_is_routed() {
        let state = state().await;
        for route in ROUTES {
            // Installing a metrics recorder is process-global; `/metrics/` has its own tests.
            if route.path == "/metrics/" {
                continue;
            }
            let path = route.path.replace("{run_id}", "nohash").replace("{id}", "noid").replace("{note_id}", "nonote");
            let body = if route.json_body { AxBody::from("{}") } else { AxBody::empty() };
            let req = Request::builder()
                .method(route.method.to_uppercase().as_str())
                .uri(&path)
                .header("content-type", "application/json")
                .body(body)
                .unwrap();
            let resp = crate::http::service(state.clone()).oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            assert_ne!(status, 405, "{} {path}: method not routed", route.method);
            // A handler's 404 carries the envelope; the router's own 404 does not.
            if status == 404 {
                let v: J = serde_json::from_slice(&bytes).unwrap_or(J::Null);
                assert_eq!(v["error"]["code"], "not_found", "{} {path}: path not routed", route.method);
            }
        }
    }

    #[test]
    fn the_p0_and_entity_routes_are_documented() {
        let doc = build();
        let must = [
            ("get", "/api/v1/rest/runs/search/run/"),
            ("get", "/api/v1/rest/runs/search/metric/"),
            ("get", "/api/v1/rest/runs/{run_id}/info/"),
            ("post", "/api/v1/rest/runs/{run_id}/metric/get-batch/"),
            ("get", "/api/v1/rest/projects/params/"),
            ("get", "/api/v1/rest/projects/"),
            ("get", "/api/v1/rest/projects/activity/"),
            ("post", "/api/v1/rest/projects/pinned-sequences/"),
            ("get", "/api/v1/rest/experiments/{id}/runs/"),
            ("delete", "/api/v1/rest/tags/{id}/"),
            ("get", "/api/v1/rest/version/"),
        ];
        for (method, path) in must {
            assert!(doc["paths"][path][method].is_object(), "{method} {path} missing");
        }
        assert_eq!(doc["openapi"], "3.0.3");
        let params = &doc["paths"]["/api/v1/rest/experiments/{id}/runs/"]["get"]["parameters"];
        assert_eq!(params[0]["name"], "id");
        assert_eq!(params[0]["in"], "path");
        let stream = &doc["paths"]["/api/v1/rest/runs/search/run/"]["get"]["responses"]["200"]["content"];
        assert!(stream["application/octet-stream"].is_object());
        let delete_batch = &doc["paths"]["/api/v1/rest/runs/delete-batch/"]["post"];
        assert!(delete_batch["requestBody"]["content"]["application/json"].is_object());
        assert_eq!(delete_batch["responses"]["415"]["content"]["application/json"]["schema"], error_schema());
    }
}
