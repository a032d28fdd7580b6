//! Where the actix system runs relative to the tokio runtime: on a dedicated OS thread.
//!
//! Decision: each pipeline starts one `actix_rt::System` on its own thread (`matyan-ingest`),
//! next to, never inside, the multi-threaded tokio runtime that serves HTTP. Reasons:
//! - actix actors are `!Send` and need a `LocalSet` with a current `System`; the axum runtime is
//!   multi-threaded and has neither, and `System::with_tokio_rt` inside it would nest runtimes;
//! - ingestion gets its own scheduler, so a burst of API requests cannot starve flush timers, and
//!   the HTTP runtime never runs actor code;
//! - everything the two sides exchange is `Send`: the [`PipelineHandle`](super::PipelineHandle)
//!   talks to the supervisor through tokio channels, which work across runtimes, and counters are
//!   atomics read without a message.
//!
//! Blocking storage work (commits) goes to tokio's blocking pool from inside the system's
//! current-thread runtime, so one actor thread keeps all cores of a small machine busy enough; more
//! arbiters can be added behind the same handle if profiling asks for it.

use std::future::Future;
use std::thread::JoinHandle;

/// Name of the thread that runs the ingest actors.
pub const THREAD_NAME: &str = "matyan-ingest";

/// Starts an actix system on a new thread and runs the future `make` returns on it until it
/// completes; the system (and every actor still alive) is dropped then.
pub fn spawn_system<F, Fut>(make: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    std::thread::Builder::new().name(THREAD_NAME.to_owned()).spawn(move || {
        let system = actix_rt::System::new();
        system.block_on(make());
        tracing::debug!("ingest actor system stopped");
    })
}
