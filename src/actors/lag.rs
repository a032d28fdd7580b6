//! The consumer-lag reporter: sets `matyan_ingest_consumer_lag` to each assigned partition's
//! backlog (records not yet applied: end offset − committed offset, read or not) as the source
//! reports it, every interval and once more after the shutdown's last commit.
//!
//! The gauge is read from the source, not from what the pipeline received: a stalled or paused
//! partition, or records appended while the pipeline is busy elsewhere, show as lag, so "wait
//! for lag 0" means every record is applied.

use std::future::Future;
use std::time::Duration;

use crate::ingest::Source;
use crate::ingest::source::Backlog;

/// Sets the gauge of each backlog; returns the total.
pub fn publish(backlogs: &[Backlog]) -> i64 {
    backlogs
        .iter()
        .map(|b| {
            crate::metrics::ingest_consumer_lag(b.partition, b.records());
            b.records()
        })
        .sum()
}

/// Reads the source's backlog and publishes it; a failed reading keeps the previous values and
/// is logged (the next pass tries again).
pub async fn report_once<S: Source>(source: &S) {
    match source.backlog().await {
        Ok(backlogs) => {
            publish(&backlogs);
        }
        Err(e) => tracing::debug!(error = %e, "consumer lag not read; keeping the previous values"),
    }
}

/// Reports the backlog every `interval` until `shutdown` completes.
pub async fn run_reporter<S: Source>(source: &S, interval: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        report_once(source).await;
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_end_minus_the_committed_offset_never_negative() {
        let b = |partition, end, committed| Backlog { partition, end, committed };
        assert_eq!(b(0, 10, 4).records(), 6);
        assert_eq!(b(1, 10, 10).records(), 0);
        assert_eq!(b(2, 3, 5).records(), 0, "a committed offset past a stale end reads as no lag");
        assert_eq!(publish(&[b(0, 10, 4), b(1, 7, 0)]), 13);
    }
}
