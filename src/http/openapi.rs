//! The OpenAPI 3 document of the routes this server answers, served at
//! `GET /api/v1/rest/openapi.json` so external tools (contract testers, clients) can check
//! requests and answers against it (`tests/contract/schemathesis.sh` does, in CI).
//!
//! Built from [`ROUTES`], one row per method and path, with the schema of every request body, the
//! query parameters and headers each route reads, and the media type and schema of every answer.
//! A route added to the router gets a row here too: a test sends a request to every row and
//! checks that the router knows it, and that it refuses the methods no row names. Paths are
//! written with their trailing slash, as they are declared; the server answers them without it too.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as J, json};

use crate::ingest::message::MAX_KEY_PART_BYTES;

/// What a route answers on success.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// `application/json` with this schema.
    Json(fn() -> J),
    /// `application/octet-stream` in the streaming codec (`api.md` §3).
    Stream,
    /// `text/plain` (Prometheus exposition).
    Text,
    /// No body (204).
    Empty,
    /// A file of this media type (`*/*`: the type it was stored with), from the blob store.
    File(&'static str),
}

/// A query parameter: name, schema type (`string`, `integer` (an i64), `boolean`, or `range`:
/// `start:stop`, either side optional), repeatable.
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
    /// The schema of the JSON body it requires, if it takes one.
    pub request: Option<fn() -> J>,
    /// The success status.
    pub status: u16,
    /// The success body.
    pub body: Body,
    /// Whether it reads `X-Timezone-Offset` (dates in queries, activity buckets).
    pub timezone: bool,
    /// Whether it runs as a heavy request, answered 503 when every place is taken (`heavy.rs`).
    pub heavy: bool,
    /// The query parameters it requires (422 without them).
    pub required: &'static [&'static str],
}

const fn r(method: &'static str, path: &'static str, summary: &'static str, body: fn() -> J) -> Route {
    Route {
        method,
        path,
        summary,
        query: &[],
        request: None,
        status: 200,
        body: Body::Json(body),
        timezone: false,
        heavy: false,
        required: &[],
    }
}

/// A route answering in the streaming codec.
const fn stream(method: &'static str, path: &'static str, summary: &'static str) -> Route {
    let mut route = r(method, path, summary, any);
    route.body = Body::Stream;
    route
}

const fn q(mut route: Route, query: &'static [Query]) -> Route {
    route.query = query;
    route
}

const fn with_body(mut route: Route, schema: fn() -> J) -> Route {
    route.request = Some(schema);
    route
}

const fn status(mut route: Route, status: u16) -> Route {
    route.status = status;
    route
}

const fn empty(mut route: Route) -> Route {
    route.status = 204;
    route.body = Body::Empty;
    route
}

const fn tz(mut route: Route) -> Route {
    route.timezone = true;
    route
}

const fn heavy(mut route: Route) -> Route {
    route.heavy = true;
    route
}

/// A route answering a file from the blob store, of `media` type.
const fn file(path: &'static str, summary: &'static str, media: &'static str) -> Route {
    let mut route = r("get", path, summary, any);
    route.body = Body::File(media);
    route
}

const fn required(mut route: Route, names: &'static [&'static str]) -> Route {
    route.required = names;
    route
}

const SEARCH: &[Query] = &[
    ("q", "string", false),
    ("limit", "integer", false),
    ("offset", "string", false),
    ("sort", "string", false),
    ("skip_system", "boolean", false),
    ("exclude_params", "boolean", false),
    ("exclude_traces", "boolean", false),
    ("report_progress", "boolean", false),
];
const METRIC_SEARCH: &[Query] = &[
    ("q", "string", false),
    ("p", "integer", false),
    ("x_axis", "string", false),
    ("skip_system", "boolean", false),
    ("report_progress", "boolean", false),
];

const OBJECT_SEARCH: &[Query] = &[
    ("q", "string", false),
    ("skip_system", "boolean", false),
    ("record_range", "range", false),
    ("record_density", "integer", false),
    ("index_range", "range", false),
    ("index_density", "integer", false),
    ("report_progress", "boolean", false),
];

const OBJECT_BATCH: &[Query] = &[
    ("record_range", "range", false),
    ("record_density", "integer", false),
    ("index_range", "range", false),
    ("index_density", "integer", false),
];

const OBJECT_STEP: &[Query] =
    &[("record_step", "integer", false), ("index_range", "range", false), ("index_density", "integer", false)];

const RANGE: &[Query] = &[("record_range", "range", false)];

// ---------------------------------------------------------------------------------------------
// Schemas. Optional fields accept `null` (it counts as not given); unknown fields are ignored.

/// Any JSON value.
fn any() -> J {
    json!({})
}

/// An integer as the handlers parse it (an i64; a larger one is a 422).
fn int64() -> J {
    json!({"type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX})
}

/// A `start:stop` step range (`runs.rs` `parse_range`): either side may be left out; a value
/// without `:` is ignored, as the reference does. Bounds of up to 18 digits always fit an i64.
fn range() -> J {
    json!({"type": "string", "pattern": "^(?:[^:]*|( *[+-]?[0-9]{1,18} *)?:( *[+-]?[0-9]{1,18} *)?)$"})
}

/// A boolean as Pydantic reads it in a body: `true`/`false`, `0`/`1`, or one of its strings in any
/// case (`entities.rs` `opt_bool`); `null` means not given.
fn lax_bool() -> J {
    json!({
        "nullable": true,
        "anyOf": [
            {"type": "boolean"},
            {"type": "integer", "enum": [0, 1]},
            {"type": "string", "pattern": "^(?i:1|0|true|false|t|f|yes|no|y|n|on|off)$"},
        ],
    })
}

fn string() -> J {
    json!({"type": "string"})
}

fn nullable(ty: &str) -> J {
    json!({"type": ty, "nullable": true})
}

/// A name or id that becomes part of a storage key (`limits.rs`): at most
/// [`MAX_KEY_PART_BYTES`] bytes of UTF-8, a 400 past that.
fn key_part() -> J {
    json!({
        "type": "string",
        "maxLength": MAX_KEY_PART_BYTES,
        "description": format!("at most {MAX_KEY_PART_BYTES} bytes of UTF-8 (400 past that)"),
    })
}

fn object(required: &[&str], properties: J) -> J {
    json!({"type": "object", "required": required, "properties": properties})
}

fn array(items: J) -> J {
    json!({"type": "array", "items": items})
}

/// A trace's context: any JSON value is taken, and a trace matches only the context it was
/// logged with (an object), so anything else finds nothing.
fn context() -> J {
    json!({"description": "the context the trace was logged with (an object)"})
}

/// A sequence named with its context: `{name, context}`.
fn trace_ref() -> J {
    object(&["name", "context"], json!({"name": string(), "context": context()}))
}

fn trace_refs() -> J {
    array(trace_ref())
}

fn run_hashes() -> J {
    array(key_part())
}

/// Blob URIs as the search answers mint them (`blobs.rs`).
fn blob_uris() -> J {
    array(string())
}

fn run_update() -> J {
    let mut experiment = key_part();
    experiment["nullable"] = J::Bool(true);
    object(
        &[],
        json!({
            "name": nullable("string"), "description": nullable("string"), "archived": nullable("boolean"),
            "active": nullable("boolean"), "experiment": experiment,
        }),
    )
}

fn add_tag() -> J {
    let mut name = key_part();
    name["pattern"] = J::from(r"\S");
    object(&["tag_name"], json!({"tag_name": name}))
}

fn align() -> J {
    let trace = object(
        &["name", "context", "slice"],
        json!({
            "name": string(), "context": context(),
            "slice": {"type": "array", "items": int64(), "minItems": 3, "maxItems": 3},
        }),
    );
    let run = object(&["run_id", "traces"], json!({"run_id": string(), "traces": array(trace)}));
    object(&["align_by", "runs"], json!({"align_by": string(), "runs": array(run)}))
}

fn pinned() -> J {
    let item = json!({
        "type": "object", "required": ["name"],
        "properties": {"name": string(), "context": nullable("object")},
    });
    object(&["sequences"], json!({"sequences": array(item)}))
}

fn content() -> J {
    object(&["content"], json!({"content": string()}))
}

fn named_create() -> J {
    object(&["name"], json!({"name": key_part()}))
}

fn experiment_update() -> J {
    let mut name = key_part();
    name["nullable"] = J::Bool(true);
    object(&[], json!({"name": name, "description": nullable("string"), "archived": lax_bool()}))
}

fn tag_create() -> J {
    object(&["name"], json!({"name": key_part(), "color": nullable("string"), "description": nullable("string")}))
}

fn tag_update() -> J {
    let mut name = key_part();
    name["nullable"] = J::Bool(true);
    object(
        &[],
        json!({
            "name": name, "color": nullable("string"), "description": nullable("string"),
            "archived": lax_bool(),
        }),
    )
}

fn dashboard_create() -> J {
    object(&["name"], json!({"name": string(), "description": nullable("string"), "app_id": nullable("string")}))
}

fn dashboard_update() -> J {
    object(&[], json!({"name": nullable("string"), "description": nullable("string")}))
}

fn app_create() -> J {
    object(&["type", "state"], json!({"type": string(), "state": {"type": "object"}}))
}

fn app_update() -> J {
    object(&[], json!({"type": nullable("string"), "state": nullable("object")}))
}

fn report_create() -> J {
    object(&["name"], json!({"name": string(), "code": nullable("string"), "description": nullable("string")}))
}

fn report_update() -> J {
    object(&[], json!({"name": nullable("string"), "code": nullable("string"), "description": nullable("string")}))
}

// Answers.

fn status_ok() -> J {
    object(&["status"], json!({"status": string()}))
}

fn id_status() -> J {
    object(&["id", "status"], json!({"id": string(), "status": string()}))
}

fn plain_text() -> J {
    string()
}

fn any_object() -> J {
    json!({"type": "object"})
}

fn version() -> J {
    object(&["version", "component"], json!({"version": string(), "component": string()}))
}

fn run_info() -> J {
    object(
        &["params", "traces", "props"],
        json!({"params": {"type": "object"}, "traces": {"type": "object"}, "props": {"type": "object"}}),
    )
}

fn metric_batch() -> J {
    array(object(
        &["name", "context", "iters", "values"],
        json!({
            "name": string(), "context": {}, "iters": array(json!({"type": "integer"})),
            "values": array(json!({"type": "number", "nullable": true})),
        }),
    ))
}

fn tag_added() -> J {
    object(&["id", "tag_id", "status"], json!({"id": string(), "tag_id": string(), "status": string()}))
}

fn tag_removed() -> J {
    object(&["id", "removed", "status"], json!({"id": string(), "removed": {"type": "boolean"}, "status": string()}))
}

fn note() -> J {
    object(&["id", "content"], json!({"id": {}, "content": nullable("string"), "updated_at": {}}))
}

fn notes() -> J {
    array(note())
}

fn note_created() -> J {
    object(&["id", "created_at"], json!({"id": {}, "created_at": {}}))
}

fn project() -> J {
    object(&["name", "description"], json!({"name": string(), "description": string()}))
}

fn activity() -> J {
    object(&["num_runs"], json!({"num_runs": {"type": "integer"}, "activity_map": {"type": "object"}}))
}

fn project_params() -> J {
    json!({"type": "object"})
}

fn pinned_answer() -> J {
    object(&["sequences"], json!({"sequences": array(trace_ref())}))
}

fn experiment() -> J {
    object(
        &["id", "name", "run_count", "archived"],
        json!({
            "id": string(), "name": nullable("string"), "description": nullable("string"),
            "run_count": {"type": "integer"}, "archived": {"type": "boolean"},
        }),
    )
}

fn experiments() -> J {
    array(experiment())
}

fn entity_runs() -> J {
    let run = object(&["run_id"], json!({"run_id": string()}));
    object(&["id", "runs"], json!({"id": string(), "runs": array(run)}))
}

fn tag() -> J {
    object(
        &["id", "name", "run_count", "archived"],
        json!({
            "id": string(), "name": nullable("string"), "color": nullable("string"),
            "description": nullable("string"), "run_count": {"type": "integer"}, "archived": {"type": "boolean"},
        }),
    )
}

fn tags() -> J {
    array(tag())
}

fn null() -> J {
    json!({"nullable": true, "not": {}})
}

fn dashboard() -> J {
    object(&["id", "name"], json!({"id": string(), "name": nullable("string"), "app_id": nullable("string")}))
}

fn dashboards() -> J {
    array(dashboard())
}

fn app() -> J {
    object(&["id", "type", "state"], json!({"id": string(), "type": nullable("string"), "state": {"type": "object"}}))
}

fn apps() -> J {
    array(app())
}

fn report() -> J {
    object(&["id", "name"], json!({"id": string(), "name": nullable("string"), "code": nullable("string")}))
}

fn reports() -> J {
    array(report())
}

/// Every documented operation.
pub const ROUTES: &[Route] = &[
    r("get", "/health/live/", "Liveness probe", any_object),
    r("get", "/health/ready/", "Readiness probe (503 when storage fails)", any_object),
    Route { body: Body::Text, ..r("get", "/metrics/", "Prometheus metrics (when enabled)", plain_text) },
    r("get", "/api/v1/rest/openapi.json", "This document", any_object),
    r("get", "/api/v1/rest/version/", "Server version", version),
    tz(heavy(q(stream("get", "/api/v1/rest/runs/search/run/", "Run search (MatyanQL)"), SEARCH))),
    tz(heavy(q(stream("get", "/api/v1/rest/runs/search/metric/", "Metric search"), METRIC_SEARCH))),
    q(
        r("get", "/api/v1/rest/runs/{run_id}/info/", "Run info", run_info),
        &[("skip_system", "boolean", false), ("sequence", "string", true)],
    ),
    with_body(
        q(
            r("post", "/api/v1/rest/runs/{run_id}/metric/get-batch/", "Metric series of one run", metric_batch),
            &[("record_range", "range", false), ("record_density", "integer", false)],
        ),
        trace_refs,
    ),
    with_body(
        r(
            "put",
            "/api/v1/rest/runs/{run_id}/",
            "Update a run (name, description, archived, active, experiment)",
            id_status,
        ),
        run_update,
    ),
    r("delete", "/api/v1/rest/runs/{run_id}/", "Delete a run (pending deletion, then delete_run)", id_status),
    with_body(r("post", "/api/v1/rest/runs/delete-batch/", "Delete runs", status_ok), run_hashes),
    with_body(
        q(
            r("post", "/api/v1/rest/runs/archive-batch/", "Archive or unarchive runs", status_ok),
            &[("archive", "boolean", false)],
        ),
        run_hashes,
    ),
    with_body(r("post", "/api/v1/rest/runs/finish-batch/", "Finish runs", status_ok), run_hashes),
    empty(r("post", "/api/v1/rest/runs/{run_id}/clear-tombstone/", "Clear a run's tombstone", any)),
    with_body(r("post", "/api/v1/rest/runs/{run_id}/tags/new/", "Tag a run (creating the tag)", tag_added), add_tag),
    r("delete", "/api/v1/rest/runs/{run_id}/tags/{tag_id}/", "Untag a run", tag_removed),
    q(stream("get", "/api/v1/rest/runs/{run_id}/logs/", "Terminal logs of a run"), RANGE),
    q(stream("get", "/api/v1/rest/runs/{run_id}/log-records/", "Log records of a run"), RANGE),
    required(
        q(
            file(
                "/api/v1/rest/runs/{run_id}/artifacts/download/",
                "One artifact of a run, with its content type",
                "*/*",
            ),
            &[("path", "string", false)],
        ),
        &["path"],
    ),
    file(
        "/api/v1/rest/runs/{run_id}/artifacts/download-all/",
        "Every artifact of a run in one streamed ZIP64 archive (stored, mode 0600)",
        "application/zip",
    ),
    heavy(with_body(
        stream("post", "/api/v1/rest/runs/search/metric/align/", "Align metrics on a custom x-axis"),
        align,
    )),
    heavy(q(stream("get", "/api/v1/rest/runs/active/", "Active runs"), &[("report_progress", "boolean", false)])),
    tz(heavy(q(stream("get", "/api/v1/rest/runs/search/images/", "Image search"), OBJECT_SEARCH))),
    tz(heavy(q(stream("get", "/api/v1/rest/runs/search/audios/", "Audio search"), OBJECT_SEARCH))),
    tz(heavy(q(stream("get", "/api/v1/rest/runs/search/texts/", "Text search"), OBJECT_SEARCH))),
    tz(heavy(q(stream("get", "/api/v1/rest/runs/search/distributions/", "Distribution search"), OBJECT_SEARCH))),
    tz(heavy(q(stream("get", "/api/v1/rest/runs/search/figures/", "Figure search"), OBJECT_SEARCH))),
    with_body(
        q(stream("post", "/api/v1/rest/runs/{run_id}/images/get-batch/", "Images of one run"), OBJECT_BATCH),
        trace_refs,
    ),
    with_body(
        q(stream("post", "/api/v1/rest/runs/{run_id}/audios/get-batch/", "Audios of one run"), OBJECT_BATCH),
        trace_refs,
    ),
    with_body(
        q(stream("post", "/api/v1/rest/runs/{run_id}/images/get-step/", "Images of one run at one step"), OBJECT_STEP),
        trace_refs,
    ),
    with_body(
        q(stream("post", "/api/v1/rest/runs/{run_id}/audios/get-step/", "Audios of one run at one step"), OBJECT_STEP),
        trace_refs,
    ),
    with_body(stream("post", "/api/v1/rest/runs/images/get-batch/", "Bytes of image blobs by blob URI"), blob_uris),
    with_body(stream("post", "/api/v1/rest/runs/audios/get-batch/", "Bytes of audio blobs by blob URI"), blob_uris),
    with_body(
        q(stream("post", "/api/v1/rest/runs/{run_id}/texts/get-batch/", "Texts of one run"), OBJECT_BATCH),
        trace_refs,
    ),
    with_body(
        q(
            stream("post", "/api/v1/rest/runs/{run_id}/distributions/get-batch/", "Distributions of one run"),
            OBJECT_BATCH,
        ),
        trace_refs,
    ),
    with_body(
        q(stream("post", "/api/v1/rest/runs/{run_id}/figures/get-batch/", "Figures of one run"), OBJECT_BATCH),
        trace_refs,
    ),
    with_body(
        q(stream("post", "/api/v1/rest/runs/{run_id}/texts/get-step/", "Texts of one run at one step"), OBJECT_STEP),
        trace_refs,
    ),
    with_body(
        q(
            stream("post", "/api/v1/rest/runs/{run_id}/distributions/get-step/", "Distributions at one step"),
            OBJECT_STEP,
        ),
        trace_refs,
    ),
    with_body(
        q(
            stream("post", "/api/v1/rest/runs/{run_id}/figures/get-step/", "Figures of one run at one step"),
            OBJECT_STEP,
        ),
        trace_refs,
    ),
    r("get", "/api/v1/rest/runs/{run_id}/note/", "Notes of a run", notes),
    status(with_body(r("post", "/api/v1/rest/runs/{run_id}/note/", "Create a run note", note_created), content), 201),
    r("get", "/api/v1/rest/runs/{run_id}/note/{note_id}/", "A run note", note),
    with_body(r("put", "/api/v1/rest/runs/{run_id}/note/{note_id}/", "Update a run note", note), content),
    r("delete", "/api/v1/rest/runs/{run_id}/note/{note_id}/", "Delete a run note", status_ok),
    r("get", "/api/v1/rest/projects/", "Project info", project),
    tz(r("get", "/api/v1/rest/projects/activity/", "Project activity (daily, client's local time)", activity)),
    q(
        r("get", "/api/v1/rest/projects/params/", "Merged params and sequence names", project_params),
        &[("sequence", "string", true), ("exclude_params", "boolean", false)],
    ),
    r("get", "/api/v1/rest/projects/pinned-sequences/", "Pinned sequences", pinned_answer),
    with_body(
        r("post", "/api/v1/rest/projects/pinned-sequences/", "Replace the pinned sequences", pinned_answer),
        pinned,
    ),
    r("get", "/api/v1/rest/projects/status/", "Project status", plain_text),
    r("get", "/api/v1/rest/experiments/", "List experiments", experiments),
    with_body(r("post", "/api/v1/rest/experiments/", "Create an experiment", id_status), named_create),
    q(
        r("get", "/api/v1/rest/experiments/search/", "Search experiments by name", experiments),
        &[("q", "string", false)],
    ),
    r("get", "/api/v1/rest/experiments/{id}/", "An experiment", experiment),
    with_body(r("put", "/api/v1/rest/experiments/{id}/", "Update an experiment", id_status), experiment_update),
    r("delete", "/api/v1/rest/experiments/{id}/", "Delete an experiment", status_ok),
    q(
        r("get", "/api/v1/rest/experiments/{id}/runs/", "Runs of an experiment", entity_runs),
        &[("limit", "integer", false), ("offset", "string", false)],
    ),
    tz(r("get", "/api/v1/rest/experiments/{id}/activity/", "Experiment activity (hourly)", activity)),
    r("get", "/api/v1/rest/experiments/{id}/note/", "Notes of an experiment", notes),
    status(
        with_body(r("post", "/api/v1/rest/experiments/{id}/note/", "Create an experiment note", note_created), content),
        201,
    ),
    r("get", "/api/v1/rest/experiments/{id}/note/{note_id}/", "An experiment note", note),
    with_body(r("put", "/api/v1/rest/experiments/{id}/note/{note_id}/", "Update an experiment note", note), content),
    r("delete", "/api/v1/rest/experiments/{id}/note/{note_id}/", "Delete an experiment note", status_ok),
    r("get", "/api/v1/rest/tags/", "List tags", tags),
    with_body(r("post", "/api/v1/rest/tags/", "Create a tag", id_status), tag_create),
    q(r("get", "/api/v1/rest/tags/search/", "Search tags by name", tags), &[("q", "string", false)]),
    r("get", "/api/v1/rest/tags/{id}/", "A tag", tag),
    with_body(r("put", "/api/v1/rest/tags/{id}/", "Update a tag", id_status), tag_update),
    r("delete", "/api/v1/rest/tags/{id}/", "Delete a tag (answers null)", null),
    r("get", "/api/v1/rest/tags/{id}/runs/", "Runs of a tag", entity_runs),
    r("get", "/api/v1/rest/dashboards/", "List dashboards", dashboards),
    status(with_body(r("post", "/api/v1/rest/dashboards/", "Create a dashboard", dashboard), dashboard_create), 201),
    r("get", "/api/v1/rest/dashboards/{id}/", "A dashboard", dashboard),
    with_body(r("put", "/api/v1/rest/dashboards/{id}/", "Update a dashboard", dashboard), dashboard_update),
    empty(r("delete", "/api/v1/rest/dashboards/{id}/", "Delete a dashboard (soft)", any)),
    r("get", "/api/v1/rest/apps/", "List apps (explorer states)", apps),
    status(with_body(r("post", "/api/v1/rest/apps/", "Create an app", app), app_create), 201),
    r("get", "/api/v1/rest/apps/{id}/", "An app", app),
    with_body(r("put", "/api/v1/rest/apps/{id}/", "Update an app", app), app_update),
    empty(r("delete", "/api/v1/rest/apps/{id}/", "Delete an app", any)),
    r("get", "/api/v1/rest/reports/", "List reports", reports),
    status(with_body(r("post", "/api/v1/rest/reports/", "Create a report", report), report_create), 201),
    r("get", "/api/v1/rest/reports/{id}/", "A report", report),
    with_body(r("put", "/api/v1/rest/reports/{id}/", "Update a report", report), report_update),
    empty(r("delete", "/api/v1/rest/reports/{id}/", "Delete a report", any)),
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
        let mut schema = key_part();
        schema["minLength"] = J::from(1);
        parameters.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
        rest = &rest[start + len..];
    }
    for (name, ty, repeated) in route.query {
        let item = match *ty {
            "integer" => int64(),
            "range" => range(),
            ty => json!({"type": ty}),
        };
        let schema = if *repeated { json!({"type": "array", "items": item}) } else { item };
        let required = route.required.contains(name);
        parameters.push(json!({"name": name, "in": "query", "required": required, "schema": schema}));
    }
    if route.timezone {
        parameters.push(json!({
            "name": "X-Timezone-Offset", "in": "header", "required": false,
            "description": "JavaScript getTimezoneOffset(): minutes west of UTC", "schema": int64(),
        }));
    }
    let success = match route.body {
        Body::Json(schema) => json!({"description": "OK", "content": {"application/json": {"schema": schema()}}}),
        Body::Stream => json!({
            "description": "A stream in Matyan's binary codec (api.md §3)",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }),
        Body::Text => json!({"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}),
        Body::Empty => json!({"description": "No content"}),
        Body::File(media) => json!({
            "description": "The file, streamed",
            "content": {media: {"schema": {"type": "string", "format": "binary"}}},
        }),
    };
    let error = |why: &str| json!({"description": why, "content": {"application/json": {"schema": error_schema()}}});
    let mut responses = Map::new();
    responses.insert(route.status.to_string(), success);
    responses.insert("400".to_owned(), error("A bad query, or an id or name past its length limit"));
    if route.path.contains('{') {
        responses.insert("404".to_owned(), error("No such entity"));
        // hyper's own limit on the request line, reached before any handler by several ids near
        // their length limit once percent-encoded.
        responses.insert("414".to_owned(), json!({"description": "The URI is longer than 64 KiB"}));
    }
    responses.insert("422".to_owned(), error("A parameter or body that does not validate"));
    if route.path == "/health/ready/" {
        responses.insert("503".to_owned(), json!({"description": "Storage does not answer"}));
    }
    if route.heavy {
        responses.insert("503".to_owned(), error("Every place for heavy requests is taken (Retry-After)"));
    }
    if matches!(route.body, Body::File(_)) {
        responses.insert("503".to_owned(), error("The blob store is unavailable"));
    }
    let mut op = Map::new();
    op.insert("summary".into(), J::from(route.summary));
    op.insert("parameters".into(), J::Array(parameters));
    if let Some(schema) = route.request {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": schema()}}}),
        );
        // A body sent as anything but JSON (src/http/api/body.rs).
        responses.insert("415".to_owned(), error("The body was not sent as application/json"));
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
            "description": "Wire-compatible with the Matyan backend; paths answer with and without a trailing slash. \
                JSON bodies must be sent as application/json (415 otherwise). The SDK gateway's routes \
                (WS /api/v1/ws/runs/{run_id}, POST /api/v1/rest/artifacts/presign, the signed PUT \
                /api/v1/rest/artifacts/upload/) are for matyan-client and not part of this document.",
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
            let body = if route.request.is_some() { AxBody::from("{}") } else { AxBody::empty() };
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

    #[tokio::test]
    async fn methods_no_row_documents_are_refused_on_every_documented_path() {
        let state = state().await;
        let mut paths: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
        paths.dedup();
        for path in paths {
            if path == "/metrics/" {
                continue;
            }
            let documented: Vec<&str> = ROUTES.iter().filter(|r| r.path == path).map(|r| r.method).collect();
            let uri = path.replace("{run_id}", "nohash").replace("{id}", "noid").replace("{note_id}", "nonote");
            let uri = uri.replace("{tag_id}", "notag");
            for method in ["get", "post", "put", "delete"] {
                if documented.contains(&method) {
                    continue;
                }
                let req = Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&uri)
                    .header("content-type", "application/json")
                    .body(AxBody::from("{}"))
                    .unwrap();
                let resp = crate::http::service(state.clone()).oneshot(req).await.unwrap();
                assert_eq!(resp.status().as_u16(), 405, "{method} {path} is answered but not documented");
            }
        }
    }

    #[test]
    fn every_json_body_has_a_schema_and_streams_are_octet_streams() {
        let doc = build();
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method];
            if route.request.is_some() {
                let body = &op["requestBody"]["content"];
                assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{} {}", route.method, route.path);
                let schema = &body["application/json"]["schema"];
                assert!(schema["type"] == "object" || schema["type"] == "array", "{} {}", route.method, route.path);
            } else {
                assert!(op.get("requestBody").is_none(), "{} {}", route.method, route.path);
            }
        }
        for path in ["/api/v1/rest/runs/{run_id}/logs/", "/api/v1/rest/runs/{run_id}/log-records/"] {
            let content = &doc["paths"][path]["get"]["responses"]["200"]["content"];
            assert!(content["application/octet-stream"].is_object(), "{path}");
            assert!(content.get("application/json").is_none(), "{path}");
        }
        let tags_new = &doc["paths"]["/api/v1/rest/runs/{run_id}/tags/new/"]["post"];
        let tag_name = &tags_new["requestBody"]["content"]["application/json"]["schema"]["properties"]["tag_name"];
        assert_eq!(tag_name["maxLength"], MAX_KEY_PART_BYTES);
        assert_eq!(tags_new["parameters"][0]["schema"]["maxLength"], MAX_KEY_PART_BYTES);
        let delete_batch = &doc["paths"]["/api/v1/rest/runs/delete-batch/"]["post"]["requestBody"];
        assert_eq!(delete_batch["content"]["application/json"]["schema"]["items"]["maxLength"], MAX_KEY_PART_BYTES);
    }

    #[test]
    fn the_timezone_header_is_documented_only_where_it_is_read() {
        let doc = build();
        let with_header: Vec<String> = ROUTES
            .iter()
            .filter(|r| {
                let params = doc["paths"][r.path][r.method]["parameters"].as_array().cloned().unwrap_or_default();
                params.iter().any(|p| p["name"] == "X-Timezone-Offset")
            })
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert!(with_header.contains(&"get /api/v1/rest/projects/activity/".to_owned()));
        assert!(with_header.contains(&"get /api/v1/rest/runs/search/run/".to_owned()));
        assert!(!with_header.iter().any(|r| r.contains("/note/") || r.contains("/tags/") || r.ends_with("/info/")));
        assert!(with_header.len() < ROUTES.len() / 4, "{with_header:?}");
    }
}
