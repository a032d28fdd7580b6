//! The Matyan REST API under `/api/v1/rest` (spec `api.md` §1–§4): the sub-router, the error
//! envelope of §1.7 and the per-request read context shared by every route.
//!
//! - `params.rs`: FastAPI-style query-string parsing (§1.5);
//! - `read.rs`: one snapshot per request, a work budget, and run data loaded from storage;
//! - `shape.rs`: props, params trees and value conversions shared by the routes;
//! - `runs.rs`: run info, run search, metric get-batch and metric search (§4.1, §4.2, §4.5, §4.6);
//! - `projects.rs`: project params (§6.6);
//! - `body.rs`: JSON request bodies (a 422 for anything malformed);
//! - `run_write.rs`: run mutations and run ↔ tag links (§6.1, §6.2);
//! - `control.rs`: where run mutations publish their events (the embedded ingestion queue);
//! - `logs.rs`: terminal logs and structured log records (§4.7);
//! - `align.rs`: metric alignment on a custom x-axis (§4.3);
//! - `active.rs`: active runs (§4.4);
//! - `objects.rs`: custom-object searches, get-batch and get-step (§4.8).

mod active;
mod align;
mod body;
mod control;
mod logs;
mod objects;
mod params;
mod projects;
mod read;
mod run_write;
mod runs;
mod shape;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde_json::json;

use crate::app::AppState;
use crate::ingest::queue::QueueError;
use crate::query::SyntaxError;
use crate::storage::kv::KvError;
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
        .route("/projects/params/", get(projects::params));
    Router::new().nest(PREFIX, rest)
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
}

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        ApiError::Storage(LayoutError::Kv(e))
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
            ApiError::BadRequest(_) | ApiError::Budget(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Storage(_) | ApiError::Publish(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
            ApiError::Storage(_) | ApiError::Publish(_) => "Internal server error".to_owned(),
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
        _ => "error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "rest request failed");
        }
        let message = self.message();
        let body = json!({"error": {"code": error_code(status), "message": message}, "detail": message});
        (status, Json(body)).into_response()
    }
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
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status);
            assert_eq!(error_code(err.status()), code);
        }
        let big = ApiError::Storage(LayoutError::Kv(KvError::KeyTooLarge { size: 20_000, limit: 10_000 }));
        assert_eq!(big.status().as_u16(), 400);
        assert!(big.message().starts_with("Request too large: "), "{}", big.message());
        assert_eq!(ApiError::NotFound.message(), "Not Found");
        assert_eq!(ApiError::Storage(LayoutError::Corrupt("c".into())).message(), "Internal server error");
    }
}
