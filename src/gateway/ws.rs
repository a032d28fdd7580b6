//! `WS /api/v1/ws/runs/{run_id}`: the SDK's write path (`clients.md` §1–§2).
//!
//! One connection per run. Each text frame (one JSON message or an array) is encoded
//! ([`super::frame`]), published durably ([`super::sink`]) and answered with one text frame,
//! `{"status":"ok","error":null}` or `{"status":"error","error":"…"}`; the next frame is read only
//! after the reply is written, so a client that never reads replies stops being read once its
//! socket buffers fill (bounded memory), and is closed after `gateway.send_timeout_ms`. Pings are
//! answered by the WebSocket layer while the handler reads; a connection silent for
//! `gateway.idle_timeout_ms` (the SDK pings every 10 s) is closed. Upgrades past
//! `gateway.max_connections` are answered 503, and a frame over `gateway.max_frame_bytes` closes
//! the connection with code 1009 (message too big).

use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ingest::message::MAX_KEY_PART_BYTES;

use super::Gateway;
use super::upload::Refusal;

/// Bytes of each connection's read and write buffers.
const CONNECTION_BUFFER_BYTES: usize = 8 * 1024;

/// Upgrades to the run's connection, or refuses it (bad run id, too many connections).
pub async fn upgrade(State(gw): State<Gateway>, Path(run_id): Path<String>, ws: WebSocketUpgrade) -> Response {
    if run_id.is_empty() || run_id.len() > MAX_KEY_PART_BYTES || run_id.chars().any(char::is_control) {
        return Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_run_id",
            format!("a run id is 1 to {MAX_KEY_PART_BYTES} bytes without control characters"),
        )
        .into_response();
    }
    let Ok(permit) = gw.connections().try_acquire_owned() else {
        return Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_connections", "too many open connections")
            .into_response();
    };
    let max = gw.config().max_frame_bytes;
    // Small per-connection buffers (tungstenite's defaults are 128 KiB each): ten thousand idle runs
    // must not hold gigabytes; a large frame still grows the read buffer as it arrives.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(CONNECTION_BUFFER_BYTES)
        .write_buffer_size(CONNECTION_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            crate::metrics::gateway_connections(1.0);
            serve(socket, &run_id, &gw).await;
            crate::metrics::gateway_connections(-1.0);
        })
}

/// The reply to a frame.
fn reply(error: Option<&str>) -> Utf8Bytes {
    let v = match error {
        None => json!({"status": "ok", "error": null}),
        Some(e) => json!({"status": "error", "error": e}),
    };
    Utf8Bytes::from(v.to_string())
}

async fn serve(mut socket: WebSocket, run_id: &str, gw: &Gateway) {
    let idle = gw.config().idle_timeout();
    let send_timeout = gw.config().send_timeout();
    let mut stopping = gw.stopping();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle, socket.recv()) => next,
            _ = stopping.changed() => {
                close(&mut socket, close_code::AWAY, "server shutting down").await;
                return;
            }
        };
        let message = match next {
            Err(_) => {
                close(&mut socket, close_code::NORMAL, "idle timeout").await;
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                // A frame over the size limit ends up here too (tungstenite's capacity error).
                tracing::debug!(error = %e, "gateway connection failed");
                crate::metrics::gateway_rejected("connection_error");
                close(&mut socket, close_code::SIZE, "frame too large or malformed").await;
                return;
            }
            Ok(Some(Ok(m))) => m,
        };
        let answer = match &message {
            Message::Text(text) => handle(gw, run_id, text.as_str()).await,
            // The reference reads text only; UTF-8 JSON in a binary frame is taken as well.
            Message::Binary(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => handle(gw, run_id, text).await,
                Err(_) => {
                    crate::metrics::gateway_rejected("binary_frame");
                    reply(Some("binary frames must hold UTF-8 JSON"))
                }
            },
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return,
        };
        match tokio::time::timeout(send_timeout, socket.send(Message::Text(answer))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                crate::metrics::gateway_rejected("reply_not_read");
                return;
            }
        }
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), socket.send(Message::Close(Some(frame)))).await;
}

/// Publishes one frame and returns its reply.
async fn handle(gw: &Gateway, run_id: &str, text: &str) -> Utf8Bytes {
    let start = Instant::now();
    match gw.publish_frame(run_id, text).await {
        Ok(records) => {
            crate::metrics::gateway_frame("ok", records, text.len(), start.elapsed().as_secs_f64());
            reply(None)
        }
        Err(super::PublishError::Frame(e)) => {
            crate::metrics::gateway_rejected(e.reason());
            crate::metrics::gateway_frame("rejected", 0, text.len(), start.elapsed().as_secs_f64());
            reply(Some(&e.to_string()))
        }
        Err(super::PublishError::Sink(e)) => {
            tracing::warn!(error = %e, "gateway frame not published");
            crate::metrics::gateway_frame("failed", 0, text.len(), start.elapsed().as_secs_f64());
            reply(Some(&format!("internal publish error: {e}")))
        }
    }
}
