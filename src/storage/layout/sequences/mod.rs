//! Sequences (metric series, custom objects, logs) behind their own interface: every reader and
//! writer of sequence keys goes through [`SequenceLayout`], which is one of two layouts, chosen per
//! store by [`version`]:
//!
//! - `key_per_step.rs`: [`KeyPerStep`], the reference's layout, byte compatible with a Matyan store;
//! - `chunked.rs`: [`Chunked`], each series as chunks of consecutive steps (`codec.rs` packs one);
//! - `sampling.rs`: the density rules of `api.md` §4.9 both layouts sample with;
//! - `version.rs`: the schema-version key in ⟨system⟩ that names a store's layout;
//! - `live.rs`: [`Sequences`], what the rest of the code uses: the layout the version key names in
//!   each transaction, or both merged while `matyan migrate sequences` runs.
//!
//! Both layouts keep the reference's semantics: points sort by step, the last write of a step
//! wins (an epoch absent from a later write leaves the stored one, as the reference's `epoch`
//! column does), and the trace info (`last`, `last_step`) and indexes are written elsewhere.

pub mod chunked;
pub mod codec;
pub mod key_per_step;
pub mod live;
pub mod sampling;
pub mod version;

pub use chunked::{ChunkLimits, Chunked};
pub use key_per_step::KeyPerStep;
pub use live::Sequences;
pub use sampling::{sample_gapless, sample_indices, sample_points};
pub use version::SequenceLayoutKind;

use crate::storage::kv::{KeyValue, KvError, RangeOption, Transaction};

/// One sequence: run, context id and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqId<'a> {
    /// Run hash.
    pub run: &'a str,
    /// `context_to_id` of the context.
    pub ctx_id: u32,
    /// Sequence name (metric name, `logs`, `__log_records`, ...).
    pub name: &'a str,
}

/// A point to write.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqWrite<'a> {
    /// The step (a tuple integer in the key).
    pub step: i64,
    /// The value, msgpack-encoded by the caller (a float, or a custom object's map).
    pub val: &'a [u8],
    /// The epoch; the `epoch` column is written only when present.
    pub epoch: Option<i64>,
    /// The writer's clock, stored in the `time` column.
    pub time: f64,
}

/// A stored point as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqPoint {
    /// The step.
    pub step: i64,
    /// The msgpack-encoded value.
    pub val: Vec<u8>,
    /// The epoch, when the `epoch` column was read and has a value for this step.
    pub epoch: Option<i64>,
    /// The time, when the `time` column was read.
    pub time: Option<f64>,
}

/// Errors of the sequence layer.
#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    /// The KV layer failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A stored key or value does not decode as the layout says.
    #[error("corrupt sequence data: {0}")]
    Corrupt(String),
    /// A read needs more keys than its [`KeyAllowance`] (it fetched at most one more).
    #[error("more than {max} keys to read")]
    KeyLimit { max: usize },
}

impl crate::storage::kv::RetryableError for SeqError {
    fn kv_error(&self) -> Option<&KvError> {
        match self {
            SeqError::Kv(e) => Some(e),
            SeqError::Corrupt(_) | SeqError::KeyLimit { .. } => None,
        }
    }
}

/// The keys a read may fetch, and those it fetched: the work a read does is the keys it fetches
/// and decodes (one per step and column on [`KeyPerStep`], one per chunk of up to
/// [`ChunkLimits::max_points`] points on [`Chunked`]). A range read asks for at most one key more
/// than are left, so a read past its allowance stops with [`SeqError::KeyLimit`] having fetched
/// that one key more and decoded nothing of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAllowance {
    max: usize,
    used: usize,
}

/// Above this many keys left, range reads are not limited (a limit is a 32-bit count in
/// FoundationDB's client).
const UNLIMITED_KEYS: usize = 1 << 30;

impl KeyAllowance {
    /// At most `max` keys.
    pub fn new(max: usize) -> Self {
        Self { max, used: 0 }
    }

    /// No bound (reads of our own, tests).
    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    /// The keys fetched so far.
    pub fn used(&self) -> usize {
        self.used
    }

    fn left(&self) -> usize {
        self.max - self.used
    }

    /// Counts `n` keys fetched (or about to be, by point reads).
    pub(crate) fn take(&mut self, n: usize) -> Result<(), SeqError> {
        if n > self.left() {
            return Err(SeqError::KeyLimit { max: self.max });
        }
        self.used += n;
        Ok(())
    }

    /// Reads `range` (its own limit kept) fetching at most one key more than are left.
    pub(crate) async fn get_range(
        &mut self,
        tx: &Transaction,
        range: RangeOption,
        snapshot: bool,
    ) -> Result<Vec<KeyValue>, SeqError> {
        let cap = self.left().saturating_add(1);
        let range =
            if cap < UNLIMITED_KEYS && (range.limit == 0 || range.limit > cap) { range.limit(cap) } else { range };
        let kvs = tx.get_range(&range, snapshot).await?;
        self.take(kvs.len())?;
        Ok(kvs)
    }
}

/// Which columns a read returns besides `val`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Columns {
    /// Read the `epoch` column.
    pub epoch: bool,
    /// Read the `time` column.
    pub time: bool,
}

/// The layout of a store's sequences: the same operations over either key shape.
#[derive(Debug, Clone)]
pub enum SequenceLayout {
    /// One key per step and column (the reference's).
    KeyPerStep(KeyPerStep),
    /// Chunks of consecutive steps, columns packed.
    Chunked(Chunked),
}

impl SequenceLayout {
    /// The layout `kind` under the `data/runs` prefix, chunks of the default size.
    pub fn new(kind: SequenceLayoutKind, runs_prefix: &[u8]) -> Self {
        match kind {
            SequenceLayoutKind::KeyPerStep => Self::KeyPerStep(KeyPerStep::new(runs_prefix)),
            SequenceLayoutKind::Chunked => Self::Chunked(Chunked::new(runs_prefix, ChunkLimits::default())),
        }
    }

    /// Which layout this is.
    pub fn kind(&self) -> SequenceLayoutKind {
        match self {
            Self::KeyPerStep(_) => SequenceLayoutKind::KeyPerStep,
            Self::Chunked(_) => SequenceLayoutKind::Chunked,
        }
    }

    /// Writes a batch of points of one sequence, in any step order; of repeated steps the last in
    /// `points` wins. The chunked layout reads the stored tail (or the chunks the steps fall in)
    /// through `tx`, so the batch should be whole: one call per sequence and transaction.
    pub async fn write(&self, tx: &Transaction, id: SeqId<'_>, points: &[SeqWrite<'_>]) -> Result<(), SeqError> {
        match self {
            Self::KeyPerStep(l) => {
                l.write(tx, id, points);
                Ok(())
            }
            Self::Chunked(l) => l.write(tx, id, points).await,
        }
    }

    /// The highest step, seeing this transaction's writes.
    pub async fn last_step(&self, tx: &Transaction, id: SeqId<'_>) -> Result<Option<i64>, SeqError> {
        match self {
            Self::KeyPerStep(l) => l.last_step(tx, id).await,
            Self::Chunked(l) => l.last_step(tx, id).await,
        }
    }

    /// `next_step` of the reference: the highest step plus one, or 0 for an empty sequence.
    pub async fn next_step(&self, tx: &Transaction, id: SeqId<'_>) -> Result<i64, SeqError> {
        Ok(self.last_step(tx, id).await?.map_or(0, |s| s + 1))
    }

    /// Reads the points with `start <= step <= end` (inclusive end, as the reference's readers).
    pub async fn read(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        start: Option<i64>,
        end: Option<i64>,
        cols: Columns,
        snapshot: bool,
    ) -> Result<Vec<SeqPoint>, SeqError> {
        self.read_within(tx, id, start, end, cols, snapshot, &mut KeyAllowance::unlimited()).await
    }

    /// [`Self::read`] fetching no more keys than `keys` allows ([`SeqError::KeyLimit`] past it);
    /// `keys` counts what was fetched.
    #[allow(clippy::too_many_arguments)]
    pub async fn read_within(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        start: Option<i64>,
        end: Option<i64>,
        cols: Columns,
        snapshot: bool,
        keys: &mut KeyAllowance,
    ) -> Result<Vec<SeqPoint>, SeqError> {
        match self {
            Self::KeyPerStep(l) => l.read_within(tx, id, start, end, cols, snapshot, keys).await,
            Self::Chunked(l) => l.read_within(tx, id, start, end, cols, snapshot, keys).await,
        }
    }

    /// The first and last step, `None` when the sequence has no points.
    pub async fn step_bounds(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        snapshot: bool,
    ) -> Result<Option<(i64, i64)>, SeqError> {
        match self {
            Self::KeyPerStep(l) => l.step_bounds(tx, id, snapshot).await,
            Self::Chunked(l) => l.step_bounds(tx, id, snapshot).await,
        }
    }

    /// The points [`sample_indices`] keeps of the whole sequence for `p`, with `cols`, and the
    /// number of keys read: exactly what reading everything and sampling gives, for less.
    pub async fn read_sampled(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        p: usize,
        cols: Columns,
        snapshot: bool,
    ) -> Result<(Vec<SeqPoint>, usize), SeqError> {
        match self {
            Self::KeyPerStep(l) => l.read_sampled(tx, id, p, cols, snapshot).await,
            Self::Chunked(l) => l.read_sampled(tx, id, p, cols, snapshot).await,
        }
    }

    /// [`Self::read_sampled`] fetching no more keys than `keys` allows ([`SeqError::KeyLimit`]
    /// past it); `keys` counts what was fetched.
    pub async fn read_sampled_within(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        p: usize,
        cols: Columns,
        snapshot: bool,
        keys: &mut KeyAllowance,
    ) -> Result<Vec<SeqPoint>, SeqError> {
        match self {
            Self::KeyPerStep(l) => l.read_sampled_within(tx, id, p, cols, snapshot, keys).await,
            Self::Chunked(l) => l.read_sampled_within(tx, id, p, cols, snapshot, keys).await,
        }
    }

    /// Removes every point of the sequence.
    pub fn clear(&self, tx: &Transaction, id: SeqId<'_>) {
        match self {
            Self::KeyPerStep(l) => l.clear(tx, id),
            Self::Chunked(l) => l.clear(tx, id),
        }
    }
}

/// A point of one step, which a later write of the same step overwrites (the layouts' "last write
/// of a step wins").
pub(crate) trait StepPoint {
    /// The point's step.
    fn step(&self) -> i64;
    /// Writes `later`, a later write of the same step, over this one.
    fn overwrite(&mut self, later: Self);
}

/// Merges two step-sorted lists of distinct steps; on a step in both, `newer`'s point is written
/// over `older`'s. Appending past the end (the usual case of a run logging on) only extends.
pub(crate) fn merge_by_step<P: StepPoint>(older: Vec<P>, newer: Vec<P>) -> Vec<P> {
    if older.last().is_none_or(|l| newer.first().is_none_or(|f| l.step() < f.step())) {
        let mut out = older;
        out.extend(newer);
        return out;
    }
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let mut a = older.into_iter().peekable();
    let mut b = newer.into_iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.step() < y.step() => out.extend(a.next()),
            (Some(x), Some(y)) if x.step() > y.step() => out.extend(b.next()),
            (Some(_), Some(_)) => {
                if let (Some(mut x), Some(y)) = (a.next(), b.next()) {
                    x.overwrite(y);
                    out.push(x);
                }
            }
            (Some(_), None) => out.extend(a.next()),
            (None, Some(_)) => out.extend(b.next()),
            (None, None) => return out,
        }
    }
}
