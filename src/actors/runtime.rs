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

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Name of the thread that runs the ingest actors.
pub const THREAD_NAME: &str = "matyan-ingest";

/// An actix system running on a thread of its own, as the ingest pipeline and the control
/// workers each start one; their handles keep it to wait for its end.
pub struct SystemThread {
    /// Sent when the future the system ran has completed.
    done: Mutex<Option<oneshot::Receiver<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SystemThread {
    /// Starts an actix system on a new thread called `name` and runs the future `make` returns on
    /// it until it completes; the system (and every actor still alive) is dropped then.
    pub fn spawn<F, Fut>(name: &'static str, make: F) -> std::io::Result<Self>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                make().await;
                let _ = done_tx.send(());
            });
            tracing::debug!(thread = name, "actor system stopped");
        })?;
        Ok(Self { done: Mutex::new(Some(done_rx)), thread: Mutex::new(Some(thread)) })
    }

    /// Waits until the system's future has completed and its thread has ended; at once when an
    /// earlier call already waited.
    pub async fn join(&self) {
        let done = self.done.lock().take();
        if let Some(done) = done {
            let _ = done.await;
        }
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
