//! The Matyan REST API under `/api/v1/rest` (spec `api.md` §1–§4): the sub-router, the error
//! envelope of §1.7 and the per-request read context shared by every route.
//!
//! - `params.rs`: FastAPI-style query-string parsing (§1.5);
//! - `read.rs`: one snapshot per request, a work budget, and run data loaded from storage;
//! - `shape.rs`: props, params trees and value conversions shared by the routes;
//! - `runs.rs`: run info, run search, metric get-batch and metric search (§4.1, §4.2, §4.5, §4.6);
//! - `series.rs`: many series of one run read at once, answered and charged in order;
//! - `projects.rs`: project info, activity, params, pinned sequences and status (§6.6);
//! - `entities.rs`: experiments, tags, dashboards, apps, reports, notes and `version` (§6.3–§6.8);
//! - `body.rs`: JSON request bodies (a 415 unless sent as JSON, a 422 for anything malformed);
//! - `limits.rs`: the length of every id and name bound for a storage key (a 400 past the limit);
//! - `run_write.rs`: run mutations and run ↔ tag links (§6.1, §6.2);
//! - `control.rs`: where run mutations publish their events (the embedded ingestion queue);
//! - `logs.rs`: terminal logs and structured log records (§4.7);
//! - `align.rs`: metric alignment on a custom x-axis (§4.3);
//! - `active.rs`: active runs (§4.4);
//! - `objects.rs`: custom-object searches, get-batch and get-step (§4.8);
//! - `blobs.rs`: the bytes behind image and audio blob URIs (§7.2);
//! - `artifacts.rs`: artifact downloads, one file or a streamed ZIP of all (§7.3);
//! - `heavy.rs`: searches and run-by-run streams on blocking threads, a bounded number at once.

mod active;
mod align;
mod artifacts;
mod blobs;
mod body;
mod control;
mod entities;
pub mod heavy;
mod kept;
mod limits;
mod logs;
mod objects;
mod params;
mod projects;
mod read;
mod run_write;
mod runs;
mod series;
mod shape;
mod streaming;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use serde_json::json;

use crate::app::AppState;
use crate::blobs::BlobError;
use crate::ingest::queue::QueueError;
use crate::query::SyntaxError;
use crate::storage::kv::{KvError, RetryableError};
use crate::storage::layout::LayoutError;
use crate::storage::layout::sequences::SeqError;

/// The mount point of the REST API.
pub const PREFIX: &str = "/api/v1/rest";

/// The REST routes, declared with trailing slashes (paths are normalised before routing). Literal
/// search paths are registered beside the `{run_id}` patterns; axum prefers static segments.
pub fn routes() -> Router<AppState> {
    let rest = Router::new()
        .route("/runs/search/run/", get(runs::search_run))
        .route("/runs/search/metric/", get(runs::search_metric))
        .route("/runs/{run_id}/info/", get(runs::run_info))
        .route("/runs/{run_id}/metric/get-batch/", post(runs::metric_get_batch))
        .route("/runs/{run_id}/", put(run_write::update_run).delete(run_write::delete_run))
        .route("/runs/delete-batch/", post(run_write::delete_batch))
        .route("/runs/archive-batch/", post(run_write::archive_batch))
        .route("/runs/finish-batch/", post(run_write::finish_batch))
        .route("/runs/{run_id}/clear-tombstone/", post(run_write::clear_tombstone))
        .route("/runs/{run_id}/tags/new/", post(run_write::add_tag))
        .route("/runs/{run_id}/tags/{tag_id}/", delete(run_write::remove_tag))
        .route("/runs/{run_id}/logs/", get(logs::logs))
        .route("/runs/{run_id}/log-records/", get(logs::log_records))
        .route("/runs/search/metric/align/", post(align::align))
        .route("/runs/active/", get(active::active_runs))
        .merge(objects::routes())
        .route("/runs/images/get-batch/", post(blobs::blob_batch))
        .route("/runs/audios/get-batch/", post(blobs::blob_batch))
        .route("/runs/{run_id}/artifacts/download/", get(artifacts::download))
        .route("/runs/{run_id}/artifacts/download-all/", get(artifacts::download_all))
        .route("/projects/params/", get(projects::params))
        .merge(entity_routes())
        // Checked once for every route, before any handler reads a body or builds a key.
        .route_layer(middleware::from_fn(limits::path_params))
        .route_layer(middleware::from_fn(body::require_json));
    Router::new().nest(PREFIX, rest)
}

/// The project, entity and version routes (§2.2), with their methods.
pub fn entity_routes() -> Router<AppState> {
    use entities as e;
    let routes: [(&str, MethodRouter<AppState>); 24] = [
        ("/projects/", get(projects::info)),
        ("/projects/activity/", get(projects::activity_route)),
        ("/projects/pinned-sequences/", get(projects::pinned_get).post(projects::pinned_set)),
        ("/projects/status/", get(projects::status)),
        ("/version/", get(e::version)),
        ("/experiments/", get(e::experiments_list).post(e::experiments_create)),
        ("/experiments/search/", get(e::experiments_search)),
        ("/experiments/{id}/", get(e::experiments_get).put(e::experiments_update).delete(e::experiments_delete)),
        ("/experiments/{id}/runs/", get(e::experiments_runs)),
        ("/experiments/{id}/activity/", get(e::experiments_activity)),
        ("/experiments/{id}/note/", get(e::experiment_notes).post(e::experiment_note_create)),
        (
            "/experiments/{id}/note/{note_id}/",
            get(e::experiment_note_get).put(e::experiment_note_update).delete(e::experiment_note_delete),
        ),
        ("/runs/{run_id}/note/", get(e::run_notes).post(e::run_note_create)),
        ("/runs/{run_id}/note/{note_id}/", get(e::run_note_get).put(e::run_note_update).delete(e::run_note_delete)),
        ("/tags/", get(e::tags_list).post(e::tags_create)),
        ("/tags/search/", get(e::tags_search)),
        ("/tags/{id}/", get(e::tags_get).put(e::tags_update).delete(e::tags_delete)),
        ("/tags/{id}/runs/", get(e::tags_runs)),
        ("/dashboards/", get(e::dashboards_list).post(e::dashboards_create)),
        ("/dashboards/{id}/", get(e::dashboards_get).put(e::dashboards_update).delete(e::dashboards_delete)),
        ("/apps/", get(e::apps_list).post(e::apps_create)),
        ("/apps/{id}/", get(e::apps_get).put(e::apps_update).delete(e::apps_delete)),
        ("/reports/", get(e::reports_list).post(e::reports_create)),
        ("/reports/{id}/", get(e::reports_get).put(e::reports_update).delete(e::reports_delete)),
    ];
    routes.into_iter().fold(Router::new(), |r, (path, m)| r.route(path, m))
}

/// Why a REST request failed; [`ApiError::status`] is the one mapping to HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request the handler rejects with its own message (bad query, bad sort).
    #[error("{0}")]
    BadRequest(String),
    /// The entity does not exist (Starlette's reason phrase, as the reference answers).
    #[error("Not Found")]
    NotFound,
    /// A parameter or body that does not validate (FastAPI's 422).
    #[error("{0}")]
    Validation(String),
    /// The request needs more work than its budget allows.
    #[error("request exceeds its work budget: {0}")]
    Budget(String),
    /// Storage failed or holds data that does not decode.
    #[error("storage: {0}")]
    Storage(#[from] LayoutError),
    /// An event the request must publish (a run's `delete_run`) could not be queued.
    #[error("publish: {0}")]
    Publish(#[from] QueueError),
    /// An event the request must publish could not be made durable by the gateway's sink.
    #[error("publish: {0}")]
    Sink(#[from] crate::gateway::SinkError),
    /// An id or name longer than a storage key can hold, refused before any key is built.
    #[error("{field} is too long: {len} bytes, the limit is {limit}")]
    TooLong { field: String, len: usize, limit: usize },
    /// A body sent with a media type other than JSON (FastAPI does not parse those either).
    #[error("Unsupported media type {0:?}: the body must be sent as application/json")]
    UnsupportedMediaType(String),
    /// Every place for heavy requests is taken (`query.max_concurrent_heavy_requests`): 503 with
    /// `Retry-After`.
    #[error("too many searches are running (query.max_concurrent_heavy_requests), retry later")]
    Busy,
    /// The blob store: a missing object behind a recorded artifact (404 naming it), or a failing
    /// store (503 when retrying may help, else 500).
    #[error("{0}")]
    Blob(#[from] crate::blobs::BlobError),
}

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        ApiError::Storage(LayoutError::Kv(e))
    }
}

/// Lets handlers run their writes in [`crate::storage::kv::Database::run`]: conflicts retry,
/// every other error ends the loop and is answered.
impl RetryableError for ApiError {
    fn kv_error(&self) -> Option<&KvError> {
        match self {
            ApiError::Storage(e) => e.kv_error(),
            _ => None,
        }
    }
}

impl From<SeqError> for ApiError {
    fn from(e: SeqError) -> Self {
        ApiError::Storage(LayoutError::from(e))
    }
}

impl From<SyntaxError> for ApiError {
    fn from(e: SyntaxError) -> Self {
        ApiError::BadRequest(e.http_message())
    }
}

impl ApiError {
    /// Whether storage refused a key or value for its size: the request carried an oversized id
    /// or text, a client error rather than a server one.
    fn too_large(&self) -> bool {
        let kv = |e: &KvError| matches!(e, KvError::KeyTooLarge { .. } | KvError::ValueTooLarge { .. });
        match self {
            ApiError::Storage(LayoutError::Kv(e)) | ApiError::Publish(QueueError::Kv(e)) => kv(e),
            ApiError::Publish(QueueError::RecordTooLarge { .. }) => true,
            _ => false,
        }
    }

    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        if self.too_large() {
            return StatusCode::BAD_REQUEST;
        }
        match self {
            ApiError::BadRequest(_) | ApiError::Budget(_) | ApiError::TooLong { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            // A taken unique name or a request the layout refuses is the client's mistake (the
            // reference answers 400 for duplicate names).
            ApiError::Storage(LayoutError::Conflict(_) | LayoutError::Invalid(_)) => StatusCode::BAD_REQUEST,
            ApiError::Storage(_) | ApiError::Publish(_) | ApiError::Sink(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Blob(BlobError::NotFound { .. } | BlobError::InvalidKey { .. }) => StatusCode::NOT_FOUND,
            ApiError::Blob(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Blob(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message sent to the client; storage details stay in the log.
    pub fn message(&self) -> String {
        if self.too_large() {
            let detail = match self {
                ApiError::Storage(LayoutError::Kv(e)) | ApiError::Publish(QueueError::Kv(e)) => e.to_string(),
                other => other.to_string(),
            };
            return format!("Request too large: {detail}");
        }
        match self {
            ApiError::Storage(LayoutError::Conflict(m) | LayoutError::Invalid(m)) => m.clone(),
            ApiError::Storage(_) | ApiError::Publish(_) | ApiError::Sink(_) => "Internal server error".to_owned(),
            ApiError::Blob(BlobError::NotFound { key } | BlobError::InvalidKey { key, .. }) => {
                format!("the artifact is recorded but its object {key} is missing from the blob store")
            }
            ApiError::Blob(e) if e.is_retryable() => "The blob store is unavailable, retry later".to_owned(),
            ApiError::Blob(_) => "Internal server error".to_owned(),
            other => other.to_string(),
        }
    }
}

/// The envelope code of a status (§1.7).
fn error_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        422 => "validation_error",
        500 => "internal_error",
        503 => "service_unavailable",
        _ => "error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "rest request failed");
        }
        let mut response = envelope(status, &self.message());
        if matches!(self, ApiError::Busy) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, heavy::RETRY_AFTER_SECS.into());
        }
        response
    }
}

/// The error envelope of §1.7 with `status` and `message`.
pub fn envelope(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"code": error_code(status), "message": message}, "detail": message});
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status_and_code() {
        let cases = [
            (ApiError::BadRequest("x".into()), 400, "bad_request"),
            (ApiError::NotFound, 404, "not_found"),
            (ApiError::Validation("Field required".into()), 422, "validation_error"),
            (ApiError::Budget("keys".into()), 400, "bad_request"),
            (ApiError::Storage(LayoutError::Corrupt("c".into())), 500, "internal_error"),
            (ApiError::Publish(QueueError::InvalidOffset { offset: -1 }), 500, "internal_error"),
            (ApiError::TooLong { field: "name".into(), len: 5, limit: 4 }, 400, "bad_request"),
            (ApiError::UnsupportedMediaType("text/plain".into()), 415, "error"),
            (ApiError::Busy, 503, "service_unavailable"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status);
            assert_eq!(error_code(err.status()), code);
        }
        let big = ApiError::Storage(LayoutError::Kv(KvError::KeyTooLarge { size: 20_000, limit: 10_000 }));
        assert_eq!(big.status().as_u16(), 400);
        assert!(big.message().starts_with("Request too large: "), "{}", big.message());
        assert_eq!(ApiError::NotFound.message(), "Not Found");
        let taken = ApiError::Storage(LayoutError::Conflict("taken".into()));
        assert_eq!((taken.status().as_u16(), taken.message().as_str()), (400, "taken"));
        assert_eq!(ApiError::Storage(LayoutError::Corrupt("c".into())).message(), "Internal server error");
    }
}
