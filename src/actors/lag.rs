//! The consumer-lag reporter: sets `matyan_ingest_consumer_lag` to each assigned partition's
//! backlog (records not yet applied: end offset − committed offset, read or not) as the source
//! reports it, every interval and once more after the shutdown's last commit.
//!
//! The gauge is read from the source, not from what the pipeline received: a stalled or paused
//! partition, or records appended while the pipeline is busy elsewhere, show as lag, so "wait
//! for lag 0" means every record is applied.
//!
//! From the same readings it sets `matyan_ingest_commit_age_seconds`: per partition, how long
//! records have waited while its committed offset did not move (0 when nothing waits). A lag that
//! is large but moving is load; an age that grows is a partition that is stuck.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

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

/// When each partition's committed offset last moved, or last had nothing waiting behind it.
#[derive(Debug, Default)]
pub struct CommitAges {
    seen: BTreeMap<i32, (i64, Instant)>,
}

impl CommitAges {
    /// Notes `backlogs` read at `now` and returns each partition's commit age: zero when nothing
    /// waits or the committed offset moved since the last reading, else the time since it last
    /// moved (or since nothing waited).
    pub fn observe(&mut self, backlogs: &[Backlog], now: Instant) -> Vec<(i32, Duration)> {
        backlogs
            .iter()
            .map(|b| {
                let entry = self.seen.entry(b.partition).or_insert((b.committed, now));
                if b.records() == 0 || entry.0 != b.committed {
                    *entry = (b.committed, now);
                }
                (b.partition, now.saturating_duration_since(entry.1))
            })
            .collect()
    }

    /// Notes `backlogs` and sets the commit-age gauges.
    fn publish(&mut self, backlogs: &[Backlog]) {
        for (partition, age) in self.observe(backlogs, Instant::now()) {
            crate::metrics::ingest_commit_age(partition, age.as_secs_f64());
        }
    }
}

/// Reads the source's backlog and publishes it; a failed reading keeps the previous values and
/// is logged (the next pass tries again).
pub async fn report_once<S: Source>(source: &S) {
    report_with(source, &mut CommitAges::default()).await;
}

async fn report_with<S: Source>(source: &S, ages: &mut CommitAges) {
    match source.backlog().await {
        Ok(backlogs) => {
            publish(&backlogs);
            ages.publish(&backlogs);
        }
        Err(e) => tracing::debug!(error = %e, "consumer lag not read; keeping the previous values"),
    }
}

/// Reports the backlog every `interval` until `shutdown` completes.
pub async fn run_reporter<S: Source>(source: &S, interval: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ages = CommitAges::default();
    loop {
        report_with(source, &mut ages).await;
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

    #[test]
    fn the_commit_age_grows_only_while_records_wait_behind_a_committed_offset_that_does_not_move() {
        let b = |partition, end, committed| Backlog { partition, end, committed };
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut ages = CommitAges::default();
        let age = |v: Vec<(i32, Duration)>| v.into_iter().map(|(p, d)| (p, d.as_secs())).collect::<Vec<_>>();
        assert_eq!(age(ages.observe(&[b(0, 10, 4), b(1, 5, 5)], at(0))), vec![(0, 0), (1, 0)]);
        // Partition 0 waits with its offset stuck; partition 1 has nothing waiting.
        assert_eq!(age(ages.observe(&[b(0, 12, 4), b(1, 5, 5)], at(30))), vec![(0, 30), (1, 0)]);
        // A commit that moves resets the age even though records still wait; partition 1's records
        // count from the last reading with nothing waiting.
        assert_eq!(age(ages.observe(&[b(0, 12, 8), b(1, 9, 5)], at(45))), vec![(0, 0), (1, 15)]);
        assert_eq!(age(ages.observe(&[b(0, 12, 8), b(1, 9, 5)], at(50))), vec![(0, 5), (1, 20)]);
        // Caught up: no age, and a later backlog counts from then.
        assert_eq!(age(ages.observe(&[b(0, 12, 12), b(1, 9, 5)], at(60))), vec![(0, 0), (1, 30)]);
        assert_eq!(age(ages.observe(&[b(0, 14, 12), b(1, 9, 9)], at(70))), vec![(0, 10), (1, 0)]);
    }
}
