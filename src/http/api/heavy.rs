//! Heavy request work (query evaluation, run-by-run reads) kept off the async runtime: at most
//! `query.max_concurrent_heavy_requests` requests at once, each on a blocking thread, so health
//! probes, metrics and light routes always find a free runtime thread; one more is a 503.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::app::AppState;

use super::ApiError;

/// Seconds a client is told to wait before retrying a request refused for lack of room.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The limiter of heavy requests, one per process (in [`AppState`]).
pub fn limiter(max_concurrent: u32) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(usize::try_from(max_concurrent).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS)))
}

/// A heavy request's place; the request holds it until its last byte is produced (clones share
/// it), and at most until the request's time limit: a client that stops reading a stream must not
/// keep a place for ever.
#[derive(Clone)]
pub(super) struct HeavyPermit {
    _place: Arc<OwnedSemaphorePermit>,
    deadline: Instant,
    time_limit: Duration,
}

/// Takes a place for a heavy request, or refuses it with [`ApiError::Busy`] (503 with
/// `Retry-After`) when every place is taken: queueing would only make every answer late.
pub(super) fn admit(state: &AppState) -> Result<HeavyPermit, ApiError> {
    match state.heavy.clone().try_acquire_owned() {
        Ok(permit) => {
            let time_limit = state.config.query.max_request_time();
            Ok(HeavyPermit { _place: Arc::new(permit), deadline: Instant::now() + time_limit, time_limit })
        }
        Err(_) => {
            tracing::debug!("heavy request refused, every place is taken");
            Err(ApiError::Busy)
        }
    }
}

/// Runs `work` (given the permit, to hand to a stream it starts) to completion on a blocking
/// thread and returns its result. The future runs there whole, its storage reads included, so a
/// long evaluation never holds a runtime thread.
pub(super) async fn offload<F, Fut, T>(permit: HeavyPermit, work: F) -> Result<T, ApiError>
where
    F: FnOnce(HeavyPermit) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, ApiError>>,
    T: Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || runtime.block_on(work(permit))).await {
        Ok(result) => result,
        // A panic stays a panic of the request, as it was on the runtime thread.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels a blocking task.
        Err(_) => Err(ApiError::Busy),
    }
}

/// Runs a stream's producer on a blocking thread, holding `permit` until it ends or the request's
/// time limit (`query.max_request_time_ms`) is reached, where it is dropped: its body then ends
/// without its last frames, which the body turns into an abort (see `streaming.rs`).
pub(super) fn spawn_producer<Fut>(permit: HeavyPermit, produce: Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let deadline = tokio::time::Instant::from_std(permit.deadline);
        let limit_ms = permit.time_limit.as_millis();
        let _permit = permit;
        runtime.block_on(async move {
            if tokio::time::timeout_at(deadline, produce).await.is_err() {
                tracing::warn!(limit_ms, "stream cut at the request's time limit (query.max_request_time_ms)");
            }
        })
    });
}
