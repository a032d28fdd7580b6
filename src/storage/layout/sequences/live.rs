//! The store's sequences as its version key says, read in each operation's own transaction: one
//! layout, or both while `matyan migrate sequences` moves the series (`docs/adr/0009-sequence-migration.md`).
//!
//! Reading the key in the transaction (one point read) is what lets a process see a migration that
//! another process started or finished, and, read without snapshot by a write, what orders that
//! write against the migration step that changes the key: one of the two transactions conflicts
//! and retries with the new state. During a migration a series' points are the union of both
//! layouts, merged as a later write over an earlier one (a step in the target wins, an epoch absent
//! from it keeps the source's); writes go to the target.

use super::version::{self, VersionState};
use super::{
    Columns, KeyAllowance, SeqError, SeqId, SeqPoint, SeqWrite, SequenceLayout, SequenceLayoutKind, StepPoint,
    merge_by_step, sample_points,
};
use crate::storage::kv::Transaction;
use crate::storage::layout::LayoutError;

/// A store's sequences: both layouts, resolved per transaction by the version key.
#[derive(Debug, Clone)]
pub struct Sequences {
    version_key: Vec<u8>,
    opened: VersionState,
    key_per_step: SequenceLayout,
    chunked: SequenceLayout,
}

impl From<LayoutError> for SeqError {
    fn from(e: LayoutError) -> Self {
        match e {
            LayoutError::Kv(k) => SeqError::Kv(k),
            LayoutError::Corrupt(c) => SeqError::Corrupt(c),
            other => SeqError::Corrupt(other.to_string()),
        }
    }
}

impl Sequences {
    /// The sequences under the `data/runs` prefix, resolved by the version key `version_key`;
    /// `opened` is the state read when the store was opened ([`Sequences::kind`]).
    pub fn new(runs_prefix: &[u8], version_key: Vec<u8>, opened: VersionState) -> Self {
        Self {
            version_key,
            opened,
            key_per_step: SequenceLayout::new(SequenceLayoutKind::KeyPerStep, runs_prefix),
            chunked: SequenceLayout::new(SequenceLayoutKind::Chunked, runs_prefix),
        }
    }

    /// The layout new points went to when the store was opened (the target during a migration).
    pub fn kind(&self) -> SequenceLayoutKind {
        self.opened.write_kind()
    }

    /// The state read when the store was opened.
    pub fn opened(&self) -> VersionState {
        self.opened
    }

    /// One of the two layouts, whatever the store records (for the migration itself).
    pub fn layout(&self, kind: SequenceLayoutKind) -> &SequenceLayout {
        match kind {
            SequenceLayoutKind::KeyPerStep => &self.key_per_step,
            SequenceLayoutKind::Chunked => &self.chunked,
        }
    }

    /// The version key.
    pub fn version_key(&self) -> &[u8] {
        &self.version_key
    }

    /// The state the version key records now, read in `tx`.
    pub async fn state(&self, tx: &Transaction, snapshot: bool) -> Result<VersionState, SeqError> {
        Ok(version::read_state(tx, &self.version_key, snapshot).await?)
    }

    /// [`SequenceLayout::write`] in the layout the store writes to now (the target during a
    /// migration).
    pub async fn write(&self, tx: &Transaction, id: SeqId<'_>, points: &[SeqWrite<'_>]) -> Result<(), SeqError> {
        let kind = self.state(tx, false).await?.write_kind();
        self.layout(kind).write(tx, id, points).await
    }

    /// The highest step, seeing this transaction's writes (of both layouts during a migration).
    pub async fn last_step(&self, tx: &Transaction, id: SeqId<'_>) -> Result<Option<i64>, SeqError> {
        match self.state(tx, false).await? {
            VersionState::Settled(kind) => self.layout(kind).last_step(tx, id).await,
            VersionState::Migrating { from, to } => {
                let a = self.layout(from).last_step(tx, id).await?;
                let b = self.layout(to).last_step(tx, id).await?;
                Ok(a.max(b))
            }
        }
    }

    /// `next_step` of the reference: the highest step plus one, or 0 for an empty sequence.
    pub async fn next_step(&self, tx: &Transaction, id: SeqId<'_>) -> Result<i64, SeqError> {
        Ok(self.last_step(tx, id).await?.map_or(0, |s| s + 1))
    }

    /// [`SequenceLayout::read`]; during a migration, both layouts merged.
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

    /// [`SequenceLayout::read_within`]; during a migration, both layouts merged, each read charged
    /// to the same `keys`.
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
        match self.state(tx, snapshot).await? {
            VersionState::Settled(kind) => {
                self.layout(kind).read_within(tx, id, start, end, cols, snapshot, keys).await
            }
            VersionState::Migrating { from, to } => {
                let older = self.layout(from).read_within(tx, id, start, end, cols, snapshot, keys).await?;
                let newer = self.layout(to).read_within(tx, id, start, end, cols, snapshot, keys).await?;
                Ok(merge_points(older, newer))
            }
        }
    }

    /// [`SequenceLayout::read_sampled_within`]; during a migration the whole series is read from
    /// both layouts (charged to `keys`), merged and sampled.
    pub async fn read_sampled_within(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        p: usize,
        cols: Columns,
        snapshot: bool,
        keys: &mut KeyAllowance,
    ) -> Result<Vec<SeqPoint>, SeqError> {
        match self.state(tx, snapshot).await? {
            VersionState::Settled(kind) => self.layout(kind).read_sampled_within(tx, id, p, cols, snapshot, keys).await,
            VersionState::Migrating { from, to } => {
                let older = self.layout(from).read_within(tx, id, None, None, cols, snapshot, keys).await?;
                let newer = self.layout(to).read_within(tx, id, None, None, cols, snapshot, keys).await?;
                Ok(sample_points(merge_points(older, newer), p))
            }
        }
    }

    /// [`SequenceLayout::step_bounds`]; during a migration, the bounds of both layouts together.
    pub async fn step_bounds(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        snapshot: bool,
    ) -> Result<Option<(i64, i64)>, SeqError> {
        match self.state(tx, snapshot).await? {
            VersionState::Settled(kind) => self.layout(kind).step_bounds(tx, id, snapshot).await,
            VersionState::Migrating { from, to } => {
                let a = self.layout(from).step_bounds(tx, id, snapshot).await?;
                let b = self.layout(to).step_bounds(tx, id, snapshot).await?;
                Ok(match (a, b) {
                    (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
                    (a, b) => a.or(b),
                })
            }
        }
    }

    /// [`SequenceLayout::read_sampled`]; during a migration the whole series is read from both
    /// layouts, merged and sampled (the same points, for more reads, while the migration lasts).
    pub async fn read_sampled(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        p: usize,
        cols: Columns,
        snapshot: bool,
    ) -> Result<(Vec<SeqPoint>, usize), SeqError> {
        match self.state(tx, snapshot).await? {
            VersionState::Settled(kind) => self.layout(kind).read_sampled(tx, id, p, cols, snapshot).await,
            VersionState::Migrating { from, to } => {
                let older = self.layout(from).read(tx, id, None, None, cols, snapshot).await?;
                let newer = self.layout(to).read(tx, id, None, None, cols, snapshot).await?;
                let points = merge_points(older, newer);
                let keys = 2 + points.len() * (1 + usize::from(cols.epoch) + usize::from(cols.time));
                Ok((sample_points(points, p), keys))
            }
        }
    }

    /// Removes every point of the sequence, from both layouts: a clear reads nothing, so it cannot
    /// know whether a migration runs, and clearing an empty range writes no key.
    pub fn clear(&self, tx: &Transaction, id: SeqId<'_>) {
        self.key_per_step.clear(tx, id);
        self.chunked.clear(tx, id);
    }
}

/// A later write of the same step over an earlier one: value and time replace the earlier ones, the
/// epoch too when the later one has it (the layouts' own rule).
impl StepPoint for SeqPoint {
    fn step(&self) -> i64 {
        self.step
    }

    fn overwrite(&mut self, later: SeqPoint) {
        self.val = later.val;
        if later.time.is_some() {
            self.time = later.time;
        }
        if later.epoch.is_some() {
            self.epoch = later.epoch;
        }
    }
}

/// Merges two step-sorted point lists; on a step in both, `newer`'s point is written over
/// `older`'s.
pub fn merge_points(older: Vec<SeqPoint>, newer: Vec<SeqPoint>) -> Vec<SeqPoint> {
    merge_by_step(older, newer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(step: i64, val: u8, epoch: Option<i64>) -> SeqPoint {
        SeqPoint { step, val: vec![val], epoch, time: Some(f64::from(val)) }
    }

    #[test]
    fn a_step_in_both_layouts_reads_as_the_newer_write_over_the_older() {
        let older = vec![pt(0, 1, Some(9)), pt(2, 1, Some(9)), pt(4, 1, None)];
        let newer = vec![pt(1, 2, None), pt(2, 2, None), pt(4, 2, Some(3)), pt(5, 2, None)];
        let merged = merge_points(older, newer);
        let got: Vec<(i64, u8, Option<i64>)> = merged.iter().map(|p| (p.step, p.val[0], p.epoch)).collect();
        assert_eq!(got, [(0, 1, Some(9)), (1, 2, None), (2, 2, Some(9)), (4, 2, Some(3)), (5, 2, None)]);
        assert_eq!(merged[2].time, Some(2.0));
    }
}
