//! The SDK gateway, wire-compatible with the reference's `matyan-frontier` 0.3.0 so the unchanged
//! `matyan-client` logs runs into us (`clients.md` §1–§2):
//!
//! - `ws.rs`: `WS /api/v1/ws/runs/{run_id}`, one reply per frame, sent once the frame is durable;
//! - `frame.rs`: a frame's messages validated and encoded as the reference's records (pure);
//! - `sink.rs`: where records go: the embedded queue (one appender committing concurrent frames
//!   together) or Kafka (idempotent, `acks=all`);
//! - `upload.rs`: `POST /api/v1/rest/artifacts/presign` and the signed `PUT` it hands out;
//! - `datetime.rs`: `client_datetime` and the receive `timestamp` as the reference writes them.
//!
//! `matyan serve` merges [`Gateway::routes`] into its one listener (the SDK's
//! `MATYAN_FRONTIER_URL` and `MATYAN_BACKEND_URL` can then be the same URL); `matyan gateway` serves
//! them alone with [`Gateway::standalone_routes`].

pub mod datetime;
pub mod frame;
pub mod sink;
pub mod upload;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use thiserror::Error;
use tokio::sync::{Semaphore, watch};

use crate::blobs::BlobStore;
use crate::config::{Config, GatewayConfig};

pub use frame::{FrameError, FrameLimits};
pub use sink::{KafkaSink, OutRecord, QueueSink, RecordSink, SinkError};
pub use upload::UploadSigner;

/// Frames larger than this are encoded on the blocking pool, so a few large frames never hold the
/// async workers that answer probes and light routes.
const INLINE_FRAME_BYTES: usize = 64 * 1024;

/// Why a frame was not acknowledged.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The frame is invalid; nothing of it was published.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The records could not be made durable.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// The gateway of a process: its sink, bounds, upload signer and blob store. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    config: GatewayConfig,
    sink: Arc<dyn RecordSink>,
    blobs: Arc<dyn BlobStore>,
    signer: UploadSigner,
    connections: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("sink", &self.inner.sink).finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway publishing to `sink` and storing uploads in `blobs`, with the bounds of
    /// `config.gateway` and upload URLs signed with a key derived from `config.blobs.uri_secret`.
    pub fn new(config: &Config, sink: Arc<dyn RecordSink>, blobs: Arc<dyn BlobStore>) -> Self {
        let g = &config.gateway;
        let (stop, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                config: g.clone(),
                sink,
                blobs,
                signer: UploadSigner::new(&config.blobs.uri_secret),
                connections: Arc::new(Semaphore::new(g.max_connections)),
                uploads: Arc::new(Semaphore::new(g.max_concurrent_uploads)),
                stop,
            }),
        }
    }

    /// The gateway's bounds.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// Where records go.
    pub fn sink(&self) -> &Arc<dyn RecordSink> {
        &self.inner.sink
    }

    fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.inner.blobs
    }

    fn signer(&self) -> &UploadSigner {
        &self.inner.signer
    }

    fn connections(&self) -> Arc<Semaphore> {
        Arc::clone(&self.inner.connections)
    }

    fn uploads(&self) -> Arc<Semaphore> {
        Arc::clone(&self.inner.uploads)
    }

    fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// Closes every open connection after the frame it is handling (code 1001, going away); the
    /// SDK reconnects, to another replica or to this process once restarted.
    pub fn close_connections(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Encodes `frame` for `run_id` and publishes its records; returns how many were made durable.
    /// All or nothing: an invalid message publishes none.
    pub async fn publish_frame(&self, run_id: &str, frame: &str) -> Result<usize, PublishError> {
        let received = crate::clock::now_micros();
        let limits = FrameLimits {
            max_messages: self.inner.config.max_messages_per_frame,
            max_record_bytes: self.inner.config.max_record_bytes,
        };
        let stamp = datetime::receive_timestamp(received);
        let values = if frame.len() <= INLINE_FRAME_BYTES {
            frame::encode(run_id, frame, &stamp, limits)?
        } else {
            let (run, text) = (run_id.to_owned(), frame.to_owned());
            tokio::task::spawn_blocking(move || frame::encode(&run, &text, &stamp, limits))
                .await
                .map_err(|_| SinkError::Closed)??
        };
        let n = values.len();
        let timestamp_ms = received / 1000;
        let records =
            values.into_iter().map(|value| OutRecord { key: run_id.to_owned(), value, timestamp_ms }).collect();
        self.inner.sink.publish(records).await?;
        Ok(n)
    }

    /// The SDK routes: the run WebSocket, presign and the signed upload.
    pub fn routes<S>(&self) -> Router<S> {
        Router::new()
            .route("/api/v1/ws/runs/{run_id}/", get(ws::upgrade))
            .route("/api/v1/rest/artifacts/presign/", post(upload::presign))
            .route(upload::UPLOAD_PATH, put(upload::upload))
            .with_state(self.clone())
    }

    /// What `matyan gateway` serves: [`Gateway::routes`], `version`, the probes and, when
    /// `metrics` is given, `/metrics/`.
    pub fn standalone_routes(&self, metrics: Option<PrometheusHandle>) -> Router {
        let mut router = self
            .routes()
            .route("/api/v1/rest/version/", get(version))
            .route("/health/live/", get(|| async { axum::Json(json!({"status": "ok"})) }))
            .route("/health/ready/", get(ready).with_state(self.clone()));
        if let Some(handle) = metrics {
            router = router.route("/metrics/", get(move || std::future::ready(handle.render())));
        }
        router
    }
}

/// `GET /api/v1/rest/version/` of the gateway role (the frontier's answer, our version).
async fn version() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION"), "component": "frontier"}))
}

/// `GET /health/ready/` of the gateway role: ready while the sink takes records.
async fn ready(State(gw): State<Gateway>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let sink = gw.sink().name();
    (StatusCode::OK, axum::Json(json!({"status": "ok", "checks": {"sink": sink}})))
}
