//! The chunked layout: a series (run, context, name) as chunks of consecutive steps,
//! `⟨runs⟩(R, "chunks", ctx_id, name, first_step)` → a chunk (`codec.rs`), chunks never overlap.
//!
//! A chunk covers the steps from its key up to the next chunk's key. A write finds, for its lowest
//! pending step, the chunk that step falls in (the last chunk keyed at or below it) and the next
//! chunk's key; every pending step below that key merges into that chunk, which is rewritten (and
//! split when it outgrows [`ChunkLimits`]). An append therefore reads and rewrites only the tail
//! chunk. Under `⟨runs⟩(R,)`, so `delete_run`'s clear removes chunks with the rest of the run.

use super::codec::{self, ChunkView, Row};
use super::sampling::{sample_gapless, sample_indices};
use super::{Columns, KeyAllowance, SeqError, SeqId, SeqPoint, SeqWrite, StepPoint, merge_by_step};
use crate::storage::kv::{KeyValue, RangeOption, Transaction};
use crate::storage::tuple::{self, Elem};

/// How large a chunk grows before a new one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Points per chunk.
    pub max_points: usize,
    /// Bytes per chunk (by [`Row::encoded_bound`]); a single larger point has a chunk of its own.
    pub max_bytes: usize,
}

impl Default for ChunkLimits {
    /// 1,024 points or 16 KiB: float chunks of about 8 KiB, a sixth of FoundationDB's 100 kB value
    /// limit, so an append rewrites little (see `docs/adr/0007-chunked-sequences.md`).
    fn default() -> Self {
        Self { max_points: 1024, max_bytes: 16 * 1024 }
    }
}

/// The chunked layout.
#[derive(Debug, Clone)]
pub struct Chunked {
    runs: Vec<u8>,
    limits: ChunkLimits,
}

impl Chunked {
    /// The layout under the `data/runs` prefix with chunks of `limits`.
    pub fn new(runs_prefix: &[u8], limits: ChunkLimits) -> Self {
        Self { runs: runs_prefix.to_vec(), limits }
    }

    /// `⟨runs⟩ + pack((R, "chunks", ctx_id, name))`: the prefix of one series' chunks.
    pub fn series_prefix(&self, id: SeqId<'_>) -> Vec<u8> {
        tuple::pack_with_prefix(
            &self.runs,
            &[Elem::from(id.run), Elem::from("chunks"), Elem::from(id.ctx_id), Elem::from(id.name)],
        )
    }

    fn chunk_key(prefix: &[u8], first: i64) -> Vec<u8> {
        let mut k = Vec::with_capacity(prefix.len() + 10);
        k.extend_from_slice(prefix);
        tuple::pack_into(&[Elem::Int(i128::from(first))], &mut k);
        k
    }

    /// The range of the series' chunks whose first step is at most `step` (the whole series when
    /// `None`).
    fn up_to(prefix: &[u8], step: Option<i64>) -> (Vec<u8>, Vec<u8>) {
        let (b, e) = tuple::range(prefix, &[]);
        match step {
            Some(s) => {
                let mut end = Self::chunk_key(prefix, s);
                end.push(0);
                (b, end)
            }
            None => (b, e),
        }
    }

    /// The chunk `step` falls in: the last one keyed at or below it.
    async fn chunk_at(
        &self,
        tx: &Transaction,
        prefix: &[u8],
        step: i64,
        snapshot: bool,
    ) -> Result<Option<KeyValue>, SeqError> {
        let (b, e) = Self::up_to(prefix, Some(step));
        Ok(tx.get_range(&RangeOption::new(b, e).reverse(true).limit(1), snapshot).await?.into_iter().next())
    }

    /// The first step of the first chunk keyed above `step` (at or above it when `inclusive`).
    async fn next_key_after(
        &self,
        tx: &Transaction,
        prefix: &[u8],
        step: i64,
        inclusive: bool,
    ) -> Result<Option<i64>, SeqError> {
        let mut b = Self::chunk_key(prefix, step);
        if !inclusive {
            b.push(0);
        }
        let (_, e) = tuple::range(prefix, &[]);
        let next = tx.get_range(&RangeOption::new(b, e).limit(1), false).await?;
        next.first().map(|kv| first_step_of(prefix, kv)).transpose()
    }

    /// Writes a batch: sorted by step, repeated steps merged (last wins), then merged chunk by
    /// chunk into what is stored (see the module).
    pub async fn write(&self, tx: &Transaction, id: SeqId<'_>, points: &[SeqWrite<'_>]) -> Result<(), SeqError> {
        let mut batch: Vec<Row> = Vec::with_capacity(points.len());
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| points[i].step);
        for i in order {
            let p = &points[i];
            let row = Row { step: p.step, val: p.val.to_vec(), epoch: p.epoch, time: p.time };
            match batch.last_mut() {
                Some(last) if last.step == row.step => last.overwrite(row),
                _ => batch.push(row),
            }
        }
        let prefix = self.series_prefix(id);
        let mut batch = batch.into_iter().peekable();
        while let Some(head) = batch.peek() {
            let step = head.step;
            let (old_key, stored, upper) = match self.chunk_at(tx, &prefix, step, false).await? {
                Some(kv) => {
                    let rows = ChunkView::parse(&kv.value)?.rows()?;
                    let first = first_step_of(&prefix, &kv)?;
                    (Some(kv.key), rows, self.next_key_after(tx, &prefix, first, false).await?)
                }
                None => (None, Vec::new(), self.next_key_after(tx, &prefix, step, true).await?),
            };
            let mut incoming = Vec::new();
            while let Some(row) = batch.next_if(|r| upper.is_none_or(|u| r.step < u)) {
                incoming.push(row);
            }
            let merged = merge_by_step(stored, incoming);
            if let Some(key) = old_key {
                tx.clear(&key);
            }
            for piece in split(&merged, self.limits) {
                tx.set(&Self::chunk_key(&prefix, piece[0].step), &codec::encode(piece));
            }
        }
        Ok(())
    }

    /// The highest step, seeing this transaction's writes (the tail chunk's header).
    pub async fn last_step(&self, tx: &Transaction, id: SeqId<'_>) -> Result<Option<i64>, SeqError> {
        let prefix = self.series_prefix(id);
        let (b, e) = tuple::range(&prefix, &[]);
        let last = tx.get_range(&RangeOption::new(b, e).reverse(true).limit(1), false).await?;
        last.first().map(|kv| ChunkView::parse(&kv.value).map(|v| v.last)).transpose()
    }

    /// The first and last step (two one-chunk reads, headers only).
    pub async fn step_bounds(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        snapshot: bool,
    ) -> Result<Option<(i64, i64)>, SeqError> {
        let prefix = self.series_prefix(id);
        let (b, e) = tuple::range(&prefix, &[]);
        let first = tx.get_range(&RangeOption::new(b.clone(), e.clone()).limit(1), snapshot).await?;
        let Some(first) = first.first() else { return Ok(None) };
        let last = tx.get_range(&RangeOption::new(b, e).reverse(true).limit(1), snapshot).await?;
        let Some(last) = last.first() else { return Ok(None) };
        Ok(Some((ChunkView::parse(&first.value)?.first, ChunkView::parse(&last.value)?.last)))
    }

    /// Reads the points with `start <= step <= end` within `keys`: each chunk fetched is one key,
    /// the one found for `start` included.
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
        let prefix = self.series_prefix(id);
        let (mut b, e) = Self::up_to(&prefix, end);
        if let Some(s) = start
            && let Some(kv) = self.chunk_at(tx, &prefix, s, snapshot).await?
        {
            keys.take(1)?;
            b = kv.key;
        } else if let Some(s) = start {
            b = Self::chunk_key(&prefix, s);
        }
        if b >= e {
            return Ok(Vec::new());
        }
        let chunks = keys.get_range(tx, RangeOption::new(b, e), snapshot).await?;
        let (lo, hi) = (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX));
        let mut out = Vec::new();
        for kv in &chunks {
            let view = ChunkView::parse(&kv.value)?;
            if view.last < lo || view.first > hi {
                continue;
            }
            let steps = view.steps()?;
            let at: Vec<usize> = (0..steps.len()).filter(|&i| (lo..=hi).contains(&steps[i])).collect();
            push_points(&view, &steps, &at, cols, &mut out)?;
        }
        Ok(out)
    }

    /// The points [`sample_indices`] keeps for `p`, and the chunks read. One range read of the
    /// series; when every chunk is gapless and they follow each other, the kept steps come from
    /// the headers ([`sample_gapless`]) and no step column is decoded; values (and the asked
    /// columns) are decoded only in the chunks that hold kept points.
    pub async fn read_sampled(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        p: usize,
        cols: Columns,
        snapshot: bool,
    ) -> Result<(Vec<SeqPoint>, usize), SeqError> {
        let mut keys = KeyAllowance::unlimited();
        let points = self.read_sampled_within(tx, id, p, cols, snapshot, &mut keys).await?;
        Ok((points, keys.used().max(1)))
    }

    /// [`Self::read_sampled`] within `keys` (each chunk fetched is one key).
    pub async fn read_sampled_within(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        p: usize,
        cols: Columns,
        snapshot: bool,
        keys: &mut KeyAllowance,
    ) -> Result<Vec<SeqPoint>, SeqError> {
        let prefix = self.series_prefix(id);
        let (b, e) = tuple::range(&prefix, &[]);
        let chunks = keys.get_range(tx, RangeOption::new(b, e), snapshot).await?;
        let views = chunks.iter().map(|kv| ChunkView::parse(&kv.value)).collect::<Result<Vec<_>, _>>()?;
        let (Some(head), Some(tail)) = (views.first(), views.last()) else { return Ok(Vec::new()) };
        let contiguous = views.iter().all(ChunkView::gapless)
            && views.windows(2).all(|w| i128::from(w[1].first) == i128::from(w[0].last) + 1);
        // The kept points as (chunk, index in chunk), ascending.
        let mut kept: Vec<(usize, usize)> = Vec::new();
        let mut steps_of: Vec<Option<Vec<i64>>> = vec![None; views.len()];
        if contiguous {
            let mut c = 0;
            for step in sample_gapless(head.first, tail.last, p) {
                while views[c].last < step {
                    c += 1;
                }
                kept.push((c, usize::try_from(step - views[c].first).unwrap_or(0)));
            }
        } else {
            let mut all = Vec::with_capacity(views.iter().map(|v| v.len).sum());
            let mut starts = Vec::with_capacity(views.len());
            for (c, v) in views.iter().enumerate() {
                starts.push(all.len());
                let steps = v.steps()?;
                all.extend_from_slice(&steps);
                steps_of[c] = Some(steps);
            }
            let mut c = 0;
            for i in sample_indices(&all, p) {
                while c + 1 < starts.len() && starts[c + 1] <= i {
                    c += 1;
                }
                kept.push((c, i - starts[c]));
            }
        }
        let mut out = Vec::with_capacity(kept.len());
        let mut i = 0;
        while i < kept.len() {
            let c = kept[i].0;
            let n = kept[i..].iter().take_while(|k| k.0 == c).count();
            let at: Vec<usize> = kept[i..i + n].iter().map(|k| k.1).collect();
            let view = &views[c];
            let steps = match steps_of[c].take() {
                Some(s) => s,
                None => view.steps()?,
            };
            push_points(view, &steps, &at, cols, &mut out)?;
            i += n;
        }
        Ok(out)
    }

    /// Removes every chunk of the series.
    pub fn clear(&self, tx: &Transaction, id: SeqId<'_>) {
        let (b, e) = tuple::range(&self.series_prefix(id), &[]);
        tx.clear_range(&b, &e);
    }
}

/// Appends the points of `view` at the ascending indexes `at`, decoding the value column at those
/// indexes only and the epoch and time columns when `cols` asks.
fn push_points(
    view: &ChunkView<'_>,
    steps: &[i64],
    at: &[usize],
    cols: Columns,
    out: &mut Vec<SeqPoint>,
) -> Result<(), SeqError> {
    if at.is_empty() {
        return Ok(());
    }
    let vals = view.values_at(at)?;
    let epochs = if cols.epoch { Some(view.epochs()?) } else { None };
    let times = if cols.time { Some(view.times()?) } else { None };
    for (&i, val) in at.iter().zip(vals) {
        let step = *steps.get(i).ok_or_else(|| SeqError::Corrupt("chunk: step index".into()))?;
        let epoch = epochs.as_ref().and_then(|e| e.get(i).copied().flatten());
        let time = times.as_ref().and_then(|t| t.get(i).copied());
        out.push(SeqPoint { step, val, epoch, time });
    }
    Ok(())
}

/// A later write of the same step: value and time replace the stored ones, and the epoch too when
/// the write has one (the reference writes the `epoch` column only when given).
impl StepPoint for Row {
    fn step(&self) -> i64 {
        self.step
    }

    fn overwrite(&mut self, row: Row) {
        self.val = row.val;
        self.time = row.time;
        if row.epoch.is_some() {
            self.epoch = row.epoch;
        }
    }
}

/// Cuts sorted rows into chunks of at most `limits` (each at least one row).
fn split(rows: &[Row], limits: ChunkLimits) -> Vec<&[Row]> {
    let mut out = Vec::with_capacity(rows.len() / limits.max_points.max(1) + 1);
    let mut start = 0;
    let mut bytes = 0;
    for (i, r) in rows.iter().enumerate() {
        let b = r.encoded_bound();
        if i > start && (i - start >= limits.max_points || bytes + b > limits.max_bytes) {
            out.push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += b;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

fn first_step_of(prefix: &[u8], kv: &KeyValue) -> Result<i64, SeqError> {
    let suffix = kv.key.strip_prefix(prefix).ok_or_else(|| SeqError::Corrupt("chunk key outside its series".into()))?;
    match tuple::unpack_one(suffix).map_err(|e| SeqError::Corrupt(format!("chunk key: {e}")))? {
        Elem::Int(step) => i64::try_from(step).map_err(|_| SeqError::Corrupt("chunk key out of range".into())),
        other => Err(SeqError::Corrupt(format!("chunk key is not an integer: {other:?}"))),
    }
}
