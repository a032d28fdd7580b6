//! Probes: `/health/live/` (the process answers) and `/health/ready/` (storage answers one cheap read,
//! and the ingestion pipeline's supervisor runs when this process has one).

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
/// succeeds (the reference's check, under its key name `fdb` whatever the backend) and, in a process
/// running the ingestion pipeline, `checks.ingest` is `ok` (its supervisor runs); 503 with
/// `"status":"degraded"` and the failing check's text otherwise.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let storage = match tokio::time::timeout(READY_TIMEOUT, ping(&state)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("storage read timed out after {} ms", READY_TIMEOUT.as_millis())),
    };
    let ingest = state.pipeline.as_ref().map(crate::actors::PipelineHandle::is_running);
    let ok = storage.is_ok() && ingest != Some(false);
    crate::metrics::health_ready(ok);
    let backend = state.db.backend();
    let mut checks = serde_json::Map::new();
    checks.insert("fdb".into(), Value::from(storage.as_ref().err().map_or("ok", String::as_str)));
    if let Some(running) = ingest {
        checks.insert("ingest".into(), Value::from(if running { "ok" } else { "supervisor stopped" }));
    }
    if ok {
        return (StatusCode::OK, Json(json!({"status": "ok", "backend": backend, "checks": checks})));
    }
    tracing::warn!(?checks, backend, "readiness check failed");
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "degraded", "backend": backend, "checks": checks})))
}

/// Reads the never-written key `⟨system⟩("__ping__",)`.
async fn ping(state: &AppState) -> Result<(), KvError> {
    let key = state.layout.system.key(&[Elem::from("__ping__")]);
    let tx = state.db.create_trx()?;
    let result = tx.get(&key, true).await;
    tx.cancel();
    result.map(|_| ())
}
