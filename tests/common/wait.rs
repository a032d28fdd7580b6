//! Waits on a condition instead of a fixed sleep: each helper checks its probe, then again after a
//! pause that doubles from 1 ms to 20 ms, and fails naming what it waited for (and the probe's last
//! answer) once its patience is spent. Patience is a guard against a hang, never an assertion on
//! how fast something is.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LONGEST_PAUSE: Duration = Duration::from_millis(20);

fn next(pause: Duration) -> Duration {
    (pause * 2).min(LONGEST_PAUSE)
}

/// Waits until `condition` holds.
pub async fn until(what: &str, patience: Duration, mut condition: impl FnMut() -> bool) {
    until_ok(what, patience, || if condition() { Ok(()) } else { Err("not yet") }).await;
}

/// Waits until `probe` answers `Ok`; returns its value. `Err` carries the state shown on failure.
pub async fn until_ok<T, E: Debug>(what: &str, patience: Duration, mut probe: impl FnMut() -> Result<T, E>) -> T {
    until_ok_async(what, patience, || std::future::ready(probe())).await
}

/// Like [`until_ok`], with a probe that awaits (a storage read, a connection).
pub async fn until_ok_async<T, E: Debug, F: Future<Output = Result<T, E>>>(
    what: &str,
    patience: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + patience;
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(state) => state,
        };
        assert!(Instant::now() < deadline, "{what}: not reached in {patience:?}; last seen: {last:?}");
        tokio::time::sleep(pause).await;
        pause = next(pause);
    }
}

/// Like [`until_ok`], blocking the calling thread (tests that drive a child process).
pub fn blocking_until_ok<T, E: Debug>(what: &str, patience: Duration, mut probe: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + patience;
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match probe() {
            Ok(value) => return value,
            Err(state) => state,
        };
        assert!(Instant::now() < deadline, "{what}: not reached in {patience:?}; last seen: {last:?}");
        std::thread::sleep(pause);
        pause = next(pause);
    }
}
