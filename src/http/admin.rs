//! Operator routes under `/admin/`, answered only for clients on this machine (loopback): they
//! expose the whole store.
//!
//! - `GET /admin/kv/dump/?dir=&prefix=&raw=`: the `matyan kv dump` lines, streamed; this is how
//!   the command reads a store that a running `matyan serve` holds open.
//! - `POST /admin/chaos/kill/?target=partition|run|source|random&partition=&run=`: kills an ingest
//!   actor without flushing (chaos drills), when `[ingest] chaos` or `matyan serve --chaos` enabled
//!   it; answers what was killed and the pipeline's counters. `target=control` (the control
//!   consumers, mid-batch) and `target=janitor` (the blob janitors, mid-clean) kill the control
//!   workers instead; they replay from their committed offsets.
//! - `POST /admin/maintenance/` (body: a `maintenance::JobRequest`): runs a maintenance job in
//!   this process, on the store it holds, streaming the job's events as JSON lines (the last one
//!   is `finish`, with the exit status); this is how `matyan reindex` and the other maintenance
//!   commands run against a store that a running `matyan serve` holds open.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::actors::KillTarget;
use crate::app::AppState;
use crate::control::{ControlError, ControlKill};
use crate::storage::dump::{DumpCursor, DumpRequest};
use crate::storage::tuple;

/// Query of the dump route.
#[derive(Debug, Deserialize)]
pub struct DumpQuery {
    dir: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    raw: bool,
}

fn error(status: StatusCode, detail: String) -> Response {
    (status, Json(json!({ "detail": detail }))).into_response()
}

/// Streams the dump.
pub async fn kv_dump(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<DumpQuery>,
) -> Response {
    if !peer.ip().is_loopback() {
        return error(StatusCode::FORBIDDEN, "admin routes answer loopback clients only".into());
    }
    let prefix = match q.prefix.as_deref().map(tuple::parse_json_tuple).transpose() {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("prefix: {e}")),
    };
    let req = DumpRequest { dir: q.dir, prefix, raw: q.raw };
    let cursor = match DumpCursor::new(&state.layout.dirs, &req) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let db = state.db.clone();
    let stream = futures_util::stream::try_unfold(cursor, move |mut cursor| {
        let db = db.clone();
        async move { Ok::<_, crate::storage::dump::DumpError>(cursor.next_chunk(&db).await?.map(|chunk| (chunk, cursor))) }
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
}

/// Query of the chaos route.
#[derive(Debug, Deserialize)]
pub struct ChaosQuery {
    target: String,
    partition: Option<i32>,
    run: Option<String>,
}

/// Kills the chosen ingest or control actor; 404 unless chaos is enabled, 503 without a running pipeline.
pub async fn chaos_kill(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<ChaosQuery>,
) -> Response {
    if !peer.ip().is_loopback() {
        return error(StatusCode::FORBIDDEN, "admin routes answer loopback clients only".into());
    }
    if !state.config.ingest.chaos {
        return error(StatusCode::NOT_FOUND, "chaos is disabled: set [ingest] chaos = true or pass --chaos".into());
    }
    if let Ok(target) = ControlKill::parse(&q.target) {
        let Some(control) = state.control.clone() else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "no control workers run in this process".into());
        };
        return match control.kill(target).await {
            Ok(killed) => {
                tracing::warn!(killed = %killed, "chaos kill");
                Json(json!({ "killed": killed, "counters": control.counters() })).into_response()
            }
            Err(e @ ControlError::NoSuchTarget(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
    }
    let target = match KillTarget::parse(&q.target, q.partition, q.run.as_deref()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(pipeline) = state.pipeline.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no ingest pipeline runs in this process".into());
    };
    match pipeline.kill(target).await {
        Ok(killed) => {
            tracing::warn!(killed = %killed, "chaos kill");
            Json(json!({ "killed": killed, "counters": pipeline.counters() })).into_response()
        }
        Err(e @ crate::actors::PipelineError::NoSuchTarget(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Sends a job's events into the response stream.
struct StreamReporter(tokio::sync::mpsc::UnboundedSender<crate::maintenance::Event>);

impl crate::maintenance::Reporter for StreamReporter {
    fn event(&self, event: crate::maintenance::Event) {
        // A client that went away stops reading; the job still runs to its end under its lock.
        let _ = self.0.send(event);
    }
}

/// Runs a maintenance job here and streams its events.
pub async fn maintenance(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(request): Json<crate::maintenance::JobRequest>,
) -> Response {
    if !peer.ip().is_loopback() {
        return error(StatusCode::FORBIDDEN, "admin routes answer loopback clients only".into());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let settings =
            crate::maintenance::Settings::new(&state.config.maintenance, state.config.storage.retry.options());
        let reporter = StreamReporter(tx);
        let store = state.blobs.store.clone();
        // The job runs to its end even if the client goes away: it holds the lock meanwhile.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let result =
            crate::maintenance::run(&state.db, &state.layout, store.as_ref(), &settings, &request, &reporter, &stop)
                .await;
        if let Err(e) = result {
            tracing::warn!(job = request.job.name(), error = %e, "maintenance job failed");
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
}
