//! `/metrics/`: the Prometheus text exposition of the metrics catalogue.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

/// The exposition, text format 0.0.4. Only routed when metrics are enabled.
pub async fn render(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
