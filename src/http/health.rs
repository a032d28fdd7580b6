//! Probes: `/health/live/` (the process answers) and `/health/ready/` (storage answers one cheap read).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::storage::kv::KvError;
use crate::storage::tuple::Elem;

/// How long the readiness read may take before the probe reports failure.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// 200 `{"status":"ok"}` whenever the process serves requests.
pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 `{"status":"ok","checks":{"fdb":"ok"}}` when a snapshot read of `⟨system⟩("__ping__",)`
/// succeeds (the reference's check, under its key name `fdb` whatever the backend); 503 with
/// `"status":"degraded"` and the error text under `checks.fdb` otherwise.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let result = match tokio::time::timeout(READY_TIMEOUT, ping(&state)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("storage read timed out after {} ms", READY_TIMEOUT.as_millis())),
    };
    crate::metrics::health_ready(result.is_ok());
    let backend = state.db.backend();
    match result {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ok", "backend": backend, "checks": {"fdb": "ok"}}))),
        Err(error) => {
            tracing::warn!(%error, backend, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "degraded", "backend": backend, "checks": {"fdb": error}})),
            )
        }
    }
}

/// Reads the never-written key `⟨system⟩("__ping__",)`.
async fn ping(state: &AppState) -> Result<(), KvError> {
    let key = state.layout.system.key(&[Elem::from("__ping__")]);
    let tx = state.db.create_trx()?;
    let result = tx.get(&key, true).await;
    tx.cancel();
    result.map(|_| ())
}
