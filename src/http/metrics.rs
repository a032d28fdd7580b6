//! `/metrics/`: the Prometheus text exposition of the metrics catalogue.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

/// The exposition, text format 0.0.4. Only routed when metrics are enabled. The embedded engine's
/// gauges are read from it first.
pub async fn render(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            if let Some(memory) = state.db.engine_memory() {
                crate::metrics::storage_engine_memory(&memory);
            }
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
