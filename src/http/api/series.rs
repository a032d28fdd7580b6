//! Many series of one run read at once (`query.max_concurrent_series_reads`), answered in order
//! and charged to the request's budget as if they had been read one after the other.
//!
//! Each read may fetch what was left of the budget when the reads started; the results are then
//! charged in order, and one that the keys left after those before it do not cover fails the
//! request exactly as it would have failed read alone (its read needed more keys than were left).
//! So answers, errors and the keys charged are those of sequential reads; what a failing request
//! may have fetched beyond them is bounded by the reads in flight.

use std::sync::Arc;

use futures_util::StreamExt as _;

use crate::storage::kv::Transaction;
use crate::storage::layout::sequences::{KeyAllowance, SeqError};
use crate::storage::layout::{Columns, Layout, SeqId, SeqPoint};

use super::ApiError;
use super::read::Reader;

/// How one series is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesRead {
    /// The points with `start <= step <= end` (both inclusive), with `cols`.
    Range { start: Option<i64>, end: Option<i64>, cols: Columns },
    /// The whole series sampled to at most `p` points (at least one), with `cols`.
    Sampled { p: usize, cols: Columns },
}

/// One series of the run to read: its context id, name and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRef {
    /// `context_to_id` of the trace's context.
    pub ctx_id: u32,
    /// The sequence name.
    pub name: String,
    /// What to read of it.
    pub read: SeriesRead,
}

/// Reads `series` of run `run` through `reader`'s snapshot, up to
/// `query.max_concurrent_series_reads` at once, and gives their points in the order of `series`.
pub async fn read_many(reader: &mut Reader, run: &str, series: Vec<SeriesRef>) -> Result<Vec<Vec<SeqPoint>>, ApiError> {
    let allowance = reader.key_allowance();
    let (layout, tx) = (reader.shared_layout(), reader.tx().clone());
    let run: Arc<str> = Arc::from(run);
    // On FoundationDB the reads in flight are served in parallel. The embedded engines read
    // synchronously, so these run in turn on the request's thread: spawning each read on the
    // runtime's threads did not pay on 2 cores (get-batch of 16 series of a run: 24.9 ms in turn,
    // 29.8 ms spawned), and the reads are kept on the request's thread.
    let reads = series.into_iter().map(|s| read_one(layout.clone(), tx.clone(), run.clone(), s, allowance));
    let mut results = futures_util::stream::iter(reads).buffered(reader.series_reads_at_once());
    let mut out = Vec::new();
    while let Some((keys, read)) = results.next().await {
        out.push(reader.charge_read(keys, read)?);
    }
    Ok(out)
}

/// One read, owning what it reads through so that it could run on any thread.
async fn read_one(
    layout: Arc<Layout>,
    tx: Transaction,
    run: Arc<str>,
    series: SeriesRef,
    mut keys: KeyAllowance,
) -> (KeyAllowance, Result<Vec<SeqPoint>, SeqError>) {
    let id = SeqId { run: &run, ctx_id: series.ctx_id, name: &series.name };
    let read = match series.read {
        SeriesRead::Range { start, end, cols } => {
            layout.seqs.read_within(&tx, id, start, end, cols, true, &mut keys).await
        }
        SeriesRead::Sampled { p, cols } => layout.seqs.read_sampled_within(&tx, id, p, cols, true, &mut keys).await,
    };
    (keys, read)
}
