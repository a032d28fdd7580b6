//! The writing side of a streamed answer (spec `api.md` §3): the producer task behind the
//! response body, and [`Streamer`], which encodes top-level objects and progress frames and sends
//! them in chunks, noticing when the client has gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use crate::http::stream::{Key, StreamEncoder, StreamValue};

use super::ApiError;
use super::heavy::{HeavyPermit, spawn_producer};

/// Where a streaming route writes; `send` fails once the client is gone.
pub(super) type Out = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Sends what the encoder holds; `false` when the client is gone.
async fn flush(out: &Out, enc: &mut StreamEncoder) -> bool {
    if enc.is_empty() {
        return true;
    }
    out.send(Ok(Bytes::from(enc.take()))).await.is_ok()
}

/// Runs `produce` in its own task and answers with what it sends, as `application/octet-stream`.
/// An error after the headers aborts the body, as the reference's streams do.
pub(super) fn stream_response<F, Fut>(produce: F) -> Response
where
    F: FnOnce(Out) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), ApiError>> + Send + 'static,
{
    respond(None, produce)
}

/// [`stream_response`] for a heavy request: the producer runs on a blocking thread, holding the
/// request's place until it ends (see [`super::heavy`]); the body reaches the client through the
/// same bounded channel.
pub(super) fn heavy_stream_response<F, Fut>(permit: HeavyPermit, produce: F) -> Response
where
    F: FnOnce(Out) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), ApiError>> + Send + 'static,
{
    respond(Some(permit), produce)
}

fn respond<F, Fut>(permit: Option<HeavyPermit>, produce: F) -> Response
where
    F: FnOnce(Out) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), ApiError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    // Set once the producer has ended on its own; a channel closed before that (the producer
    // was cut at its time limit, or panicked) aborts the body instead of ending it cleanly,
    // so the client never takes a cut answer for a whole one.
    let ended = Arc::new(AtomicBool::new(false));
    let task = {
        let ended = ended.clone();
        async move {
            let errors = tx.clone();
            if let Err(e) = produce(tx).await {
                tracing::warn!(error = %e, "stream aborted");
                let _ = errors.send(Err(std::io::Error::other(e.message()))).await;
            }
            ended.store(true, Ordering::Release);
        }
    };
    match permit {
        Some(permit) => spawn_producer(permit, task),
        None => {
            tokio::spawn(task);
        }
    }
    let body = futures_util::stream::unfold(Some((rx, ended)), |state| async move {
        let (mut rx, ended) = state?;
        match rx.recv().await {
            Some(item) => Some((item, Some((rx, ended)))),
            None if ended.load(Ordering::Acquire) => None,
            None => Some((Err(std::io::Error::other("stream cut before its end")), None)),
        }
    });
    ([(header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(body)).into_response()
}

/// A count as the codec's int.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Encodes one answer's objects and progress frames and sends them when flushed.
pub(super) struct Streamer {
    out: Out,
    enc: StreamEncoder,
    report_progress: bool,
}

impl Streamer {
    /// A streamer writing to `out`; progress frames are dropped unless `report_progress`.
    pub(super) fn new(out: Out, report_progress: bool) -> Self {
        Self { out, enc: StreamEncoder::new(), report_progress }
    }

    /// Encodes one top-level object (sent at the next flush).
    pub(super) fn object(&mut self, key: impl Into<Key>, value: &StreamValue) -> Result<(), ApiError> {
        self.enc.object(key, value).map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    /// Encodes one value at the root path (the view streams of get-batch and get-step).
    pub(super) fn at_root(&mut self, value: &StreamValue) -> Result<(), ApiError> {
        self.enc.at(&[], value).map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    /// Encodes the progress frame `[checked, total]`, when progress is reported.
    pub(super) fn progress(&mut self, checked: usize, total: usize) {
        if self.report_progress {
            self.enc.progress(count(checked), count(total));
        }
    }

    /// Sends what is encoded as one chunk; `false` when the client is gone (stop producing).
    pub(super) async fn flush(&mut self) -> bool {
        flush(&self.out, &mut self.enc).await
    }

    /// Aborts the answer with `message` (the client sees a broken body, as with an error after
    /// the headers); nothing encoded since the last flush is sent.
    pub(super) async fn abort(self, message: &str) {
        let _ = self.out.send(Err(std::io::Error::other(message.to_owned()))).await;
    }

    /// Ends the answer: the final `[0, 0]` frame when `done_frame` and progress is reported, then
    /// a last flush.
    pub(super) async fn finish(mut self, done_frame: bool) {
        if done_frame && self.report_progress {
            self.enc.progress_done();
        }
        self.flush().await;
    }
}
