//! The writing side of a streamed answer (spec `api.md` §3): the producer task behind the
//! response body, and [`Streamer`], which encodes top-level objects and progress frames and sends
//! them in chunks, noticing when the client has gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use crate::config::QueryConfig;
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

/// When [`Streamer::flush`] sends what it holds: `query.stream_chunk_bytes` and
/// `query.stream_chunk_max_age_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Chunking {
    /// The encoded bytes past which a flush sends them.
    pub bytes: usize,
    /// The time after the last chunk past which a flush sends what it holds, however little.
    pub max_age: Duration,
}

impl Chunking {
    /// The chunking of the `[query]` configuration.
    pub fn of(config: &QueryConfig) -> Self {
        Self {
            bytes: usize::try_from(config.stream_chunk_bytes).unwrap_or(usize::MAX),
            max_age: Duration::from_millis(config.stream_chunk_max_age_ms),
        }
    }
}

/// Encodes one answer's objects and progress frames and sends them, in chunks (see
/// [`Chunking`]), when flushed. A whole answer ends with [`Streamer::finish`]: a flush may hold
/// what it was given, which is lost if the streamer is dropped instead.
pub(super) struct Streamer {
    out: Out,
    enc: StreamEncoder,
    report_progress: bool,
    chunking: Chunking,
    /// When the last chunk was sent (or the streamer made).
    sent_at: Instant,
}

impl Streamer {
    /// A streamer writing to `out` in chunks of `chunking`; progress frames are dropped unless
    /// `report_progress`.
    pub(super) fn new(out: Out, report_progress: bool, chunking: Chunking) -> Self {
        Self { out, enc: StreamEncoder::new(), report_progress, chunking, sent_at: Instant::now() }
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

    /// Sends what is encoded as one chunk once it is [`Chunking::bytes`] long or
    /// [`Chunking::max_age`] has passed since the last one (a chunk per run of a run search would
    /// cost a wake-up of the writer per run, a quarter of a fast search's time); `false` when the
    /// client is gone (stop producing), noticed at once either way.
    pub(super) async fn flush(&mut self) -> bool {
        if self.enc.len() < self.chunking.bytes && self.sent_at.elapsed() < self.chunking.max_age {
            return !self.out.is_closed();
        }
        self.sent_at = Instant::now();
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
        flush(&self.out, &mut self.enc).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNKING: Chunking = Chunking { bytes: 64 * 1024, max_age: Duration::from_millis(20) };

    fn chunks(rx: &mut mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Vec<Bytes> {
        std::iter::from_fn(|| rx.try_recv().ok()).map(Result::unwrap).collect()
    }

    #[tokio::test]
    async fn small_objects_flushed_one_by_one_leave_in_one_chunk_with_the_same_bytes() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut s = Streamer::new(tx, true, CHUNKING);
        let mut alone = StreamEncoder::new();
        for i in 0..100 {
            let value = StreamValue::Int(i);
            s.object(format!("run-{i}"), &value).unwrap();
            s.progress(i as usize + 1, 100);
            alone.object(format!("run-{i}"), &value).unwrap();
            alone.progress(i + 1, 100);
            assert!(s.flush().await);
        }
        alone.progress_done();
        s.finish(true).await;
        let got = chunks(&mut rx);
        assert!(got.len() < 4, "{} chunks for 100 objects flushed within {:?}", got.len(), CHUNKING.max_age);
        assert_eq!(got.concat(), alone.take());
    }

    #[tokio::test]
    async fn a_flush_sends_what_it_holds_once_the_last_chunk_is_old_or_it_is_big() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut s = Streamer::new(tx, false, CHUNKING);
        s.object("a", &StreamValue::Int(1)).unwrap();
        assert!(s.flush().await);
        assert!(chunks(&mut rx).is_empty(), "young and small: held");
        tokio::time::sleep(CHUNKING.max_age).await;
        assert!(s.flush().await);
        assert_eq!(chunks(&mut rx).len(), 1, "old: sent");
        s.object("b", &StreamValue::from("x".repeat(CHUNKING.bytes))).unwrap();
        assert!(s.flush().await);
        assert_eq!(chunks(&mut rx).len(), 1, "big: sent");
    }

    #[tokio::test]
    async fn a_flush_tells_the_client_is_gone_even_when_it_sends_nothing() {
        let (tx, rx) = mpsc::channel(4);
        let mut s = Streamer::new(tx, false, CHUNKING);
        s.object("a", &StreamValue::Int(1)).unwrap();
        assert!(s.flush().await);
        drop(rx);
        s.object("b", &StreamValue::Int(2)).unwrap();
        assert!(!s.flush().await);
    }
}
