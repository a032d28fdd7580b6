//! The reference's layout, byte compatible with a Matyan store: one key per step and column,
//! `⟨runs⟩(R, "seqs", ctx_id, name, col, step)` with `col` ∈ `val`, `step`, `epoch`, `time`.

use super::sampling::{sample_gapless, sample_indices, sample_points};
use super::{Columns, KeyAllowance, SeqError, SeqId, SeqPoint, SeqWrite};
use crate::storage::kv::{KeyValue, RangeOption, Transaction};
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

/// The reference's one-key-per-step layout.
#[derive(Debug, Clone)]
pub struct KeyPerStep {
    runs: Vec<u8>,
}

impl KeyPerStep {
    /// The layout under the `data/runs` prefix.
    pub fn new(runs_prefix: &[u8]) -> Self {
        Self { runs: runs_prefix.to_vec() }
    }

    /// `⟨runs⟩ + pack((R, "seqs", ctx_id, name, col))`: the prefix of one column.
    pub fn column_prefix(&self, id: SeqId<'_>, col: &str) -> Vec<u8> {
        tuple::pack_with_prefix(
            &self.runs,
            &[Elem::from(id.run), Elem::from("seqs"), Elem::from(id.ctx_id), Elem::from(id.name), Elem::from(col)],
        )
    }

    /// Removes every column of the sequence.
    pub fn clear(&self, tx: &Transaction, id: SeqId<'_>) {
        let (b, e) = tuple::range(
            &self.runs,
            &[Elem::from(id.run), Elem::from("seqs"), Elem::from(id.ctx_id), Elem::from(id.name)],
        );
        tx.clear_range(&b, &e);
    }

    fn step_key(prefix: &[u8], step: i64) -> Vec<u8> {
        let mut k = Vec::with_capacity(prefix.len() + 10);
        k.extend_from_slice(prefix);
        tuple::pack_into(&[Elem::Int(i128::from(step))], &mut k);
        k
    }

    /// Writes points: `val`, `step` and `time` for each, `epoch` when given. Column by column, so
    /// the keys arrive as a few ascending runs (cheap to sort at commit).
    pub fn write(&self, tx: &Transaction, id: SeqId<'_>, points: &[SeqWrite<'_>]) {
        let mut buf = Vec::with_capacity(16);
        let val = self.column_prefix(id, "val");
        for p in points {
            tx.set(&Self::step_key(&val, p.step), p.val);
        }
        let step = self.column_prefix(id, "step");
        for p in points {
            buf.clear();
            value::encode_i64(p.step, &mut buf);
            tx.set(&Self::step_key(&step, p.step), &buf);
        }
        if points.iter().any(|p| p.epoch.is_some()) {
            let epoch = self.column_prefix(id, "epoch");
            for p in points {
                if let Some(e) = p.epoch {
                    buf.clear();
                    value::encode_i64(e, &mut buf);
                    tx.set(&Self::step_key(&epoch, p.step), &buf);
                }
            }
        }
        let time = self.column_prefix(id, "time");
        for p in points {
            buf.clear();
            value::encode_f64(p.time, &mut buf);
            tx.set(&Self::step_key(&time, p.step), &buf);
        }
    }

    /// The highest step of the `val` column, seeing this transaction's writes.
    pub async fn last_step(&self, tx: &Transaction, id: SeqId<'_>) -> Result<Option<i64>, SeqError> {
        let prefix = self.column_prefix(id, "val");
        let (b, e) = tuple::range(&prefix, &[]);
        let last = tx.get_range(&RangeOption::new(b, e).reverse(true).limit(1), false).await?;
        last.first().map(|kv| step_of(&prefix, kv)).transpose()
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

    /// [`Self::read`] within `keys`: one key per step and column read.
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
        // One pass from the read keys to the points: a series may hold millions.
        let (prefix, range) = self.column_range(id, "val", start, end);
        let kvs = keys.get_range(tx, range, snapshot).await?;
        let mut points = Vec::with_capacity(kvs.len());
        for kv in kvs {
            points.push(SeqPoint { step: step_of(&prefix, &kv)?, val: kv.value, epoch: None, time: None });
        }
        if cols.epoch {
            let epochs = self.read_column(tx, id, "epoch", (start, end), snapshot, keys).await?;
            merge_column(&mut points, epochs, |p, v| {
                p.epoch = decode_int(&v)?;
                Ok(())
            })?;
        }
        if cols.time {
            let times = self.read_column(tx, id, "time", (start, end), snapshot, keys).await?;
            merge_column(&mut points, times, |p, v| {
                p.time = decode_time(&v)?;
                Ok(())
            })?;
        }
        Ok(points)
    }

    /// The first and last step of the `val` column, `None` when the sequence has no points (two
    /// one-key range reads).
    pub async fn step_bounds(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        snapshot: bool,
    ) -> Result<Option<(i64, i64)>, SeqError> {
        let prefix = self.column_prefix(id, "val");
        let (b, e) = tuple::range(&prefix, &[]);
        let first = tx.get_range(&RangeOption::new(b.clone(), e.clone()).limit(1), snapshot).await?;
        let Some(first) = first.first() else { return Ok(None) };
        let last = tx.get_range(&RangeOption::new(b, e).reverse(true).limit(1), snapshot).await?;
        let Some(last) = last.first() else { return Ok(None) };
        Ok(Some((step_of(&prefix, first)?, step_of(&prefix, last)?)))
    }

    /// Reads the `val` of each of the ascending `steps` by point reads; `None` as soon as one of
    /// them has no point (the rest are not read).
    pub async fn values_at(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        steps: &[i64],
        snapshot: bool,
    ) -> Result<Option<Vec<Vec<u8>>>, SeqError> {
        let prefix = self.column_prefix(id, "val");
        let mut key = prefix.clone();
        let mut out = Vec::with_capacity(steps.len());
        for &step in steps {
            key.truncate(prefix.len());
            tuple::pack_into(&[Elem::Int(i128::from(step))], &mut key);
            match tx.get(&key, snapshot).await? {
                Some(v) => out.push(v),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// Fills the `epoch` and `time` of `points` (as `cols` asks) by point reads at their steps;
    /// returns the keys read.
    pub async fn columns_at(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        points: &mut [SeqPoint],
        cols: Columns,
        snapshot: bool,
    ) -> Result<usize, SeqError> {
        let mut keys = 0;
        for (col, wanted) in [("epoch", cols.epoch), ("time", cols.time)] {
            if !wanted {
                continue;
            }
            let prefix = self.column_prefix(id, col);
            let mut key = prefix.clone();
            for p in points.iter_mut() {
                key.truncate(prefix.len());
                tuple::pack_into(&[Elem::Int(i128::from(p.step))], &mut key);
                keys += 1;
                let Some(v) = tx.get(&key, snapshot).await? else { continue };
                if col == "epoch" {
                    p.epoch = decode_int(&v)?;
                } else {
                    p.time = decode_time(&v)?;
                }
            }
        }
        Ok(keys)
    }

    /// Reads the points [`sample_indices`] keeps of the whole sequence for `p`, with `cols`, and
    /// returns them with the number of keys read.
    ///
    /// The same points as reading everything and sampling, for less: when the steps between the
    /// first and the last are many more than `p`, the steps a gapless sequence would keep are read
    /// by point reads (columns included), which only fails over to reading the `val` column whole
    /// when one of them is missing; the other columns are then still read at the kept steps only.
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
        Ok((points, keys.used()))
    }

    /// [`Self::read_sampled`] within `keys`: the two bounds, then one key per step and column
    /// read, point reads counted before they are made.
    pub async fn read_sampled_within(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        p: usize,
        cols: Columns,
        snapshot: bool,
        keys: &mut KeyAllowance,
    ) -> Result<Vec<SeqPoint>, SeqError> {
        let bounds = self.step_bounds(tx, id, snapshot).await?;
        let Some((first, last)) = bounds else {
            keys.take(1)?;
            return Ok(Vec::new());
        };
        keys.take(2)?;
        let width = u64::try_from(i128::from(last) - i128::from(first) + 1).unwrap_or(u64::MAX);
        let few = u64::try_from(p).unwrap_or(u64::MAX).saturating_mul(POINT_READ_RATIO);
        if width <= few || width > MAX_GAPLESS_WIDTH {
            let points = self.read_within(tx, id, None, None, cols, snapshot, keys).await?;
            return Ok(sample_points(points, p));
        }
        let steps = sample_gapless(first, last, p);
        keys.take(steps.len())?;
        let mut points: Vec<SeqPoint> = match self.values_at(tx, id, &steps, snapshot).await? {
            Some(vals) => {
                steps.into_iter().zip(vals).map(|(step, val)| SeqPoint { step, val, epoch: None, time: None }).collect()
            }
            None => {
                let all = self.read_column(tx, id, "val", (None, None), snapshot, keys).await?;
                let all_steps: Vec<i64> = all.iter().map(|(s, _)| *s).collect();
                let mut all: Vec<Option<(i64, Vec<u8>)>> = all.into_iter().map(Some).collect();
                sample_indices(&all_steps, p)
                    .into_iter()
                    .filter_map(|i| all.get_mut(i).and_then(Option::take))
                    .map(|(step, val)| SeqPoint { step, val, epoch: None, time: None })
                    .collect()
            }
        };
        keys.take(points.len() * (usize::from(cols.epoch) + usize::from(cols.time)))?;
        self.columns_at(tx, id, &mut points, cols, snapshot).await?;
        Ok(points)
    }

    async fn read_column(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        col: &str,
        (start, end): (Option<i64>, Option<i64>),
        snapshot: bool,
        keys: &mut KeyAllowance,
    ) -> Result<Vec<(i64, Vec<u8>)>, SeqError> {
        let (prefix, range) = self.column_range(id, col, start, end);
        let kvs = keys.get_range(tx, range, snapshot).await?;
        kvs.into_iter().map(|kv| Ok((step_of(&prefix, &kv)?, kv.value))).collect()
    }

    /// The prefix of a column and the range of its steps `start..=end`.
    fn column_range(&self, id: SeqId<'_>, col: &str, start: Option<i64>, end: Option<i64>) -> (Vec<u8>, RangeOption) {
        let prefix = self.column_prefix(id, col);
        let (mut b, mut e) = tuple::range(&prefix, &[]);
        if let Some(s) = start {
            b = Self::step_key(&prefix, s);
        }
        if let Some(s) = end.filter(|s| *s < i64::MAX) {
            e = Self::step_key(&prefix, s + 1);
        }
        (prefix, RangeOption::new(b, e))
    }
}

/// [`KeyPerStep::read_sampled`] reads the kept steps one by one only when the sequence spans more
/// than this many steps per point kept: a point read costs about as much as this many keys of a
/// range read (fjall, measured with `matyan bench query`).
const POINT_READ_RATIO: u64 = 8;

/// Above this many steps between the first and the last, [`KeyPerStep::read_sampled`] does not
/// assume a sequence without gaps: it would be sparse (or its kept steps costly to compute).
const MAX_GAPLESS_WIDTH: u64 = 1 << 32;

fn step_of(prefix: &[u8], kv: &KeyValue) -> Result<i64, SeqError> {
    let suffix = kv.key.strip_prefix(prefix).ok_or_else(|| SeqError::Corrupt("key outside its column".into()))?;
    match tuple::unpack_one(suffix).map_err(|e| SeqError::Corrupt(format!("step: {e}")))? {
        Elem::Int(step) => i64::try_from(step).map_err(|_| SeqError::Corrupt("step out of range".into())),
        other => Err(SeqError::Corrupt(format!("step is not an integer: {other:?}"))),
    }
}

fn decode_int(v: &[u8]) -> Result<Option<i64>, SeqError> {
    match value::decode(v).map_err(|e| SeqError::Corrupt(e.to_string()))? {
        Value::Int(i) => Ok(i64::try_from(i).ok()),
        Value::Nil => Ok(None),
        other => Err(SeqError::Corrupt(format!("expected an int, found {}", other.type_name()))),
    }
}

fn decode_time(v: &[u8]) -> Result<Option<f64>, SeqError> {
    Ok(match value::decode(v).map_err(|e| SeqError::Corrupt(e.to_string()))? {
        Value::Float(f) => Some(f),
        Value::Int(i) => Some(i as f64),
        _ => None,
    })
}

/// Joins a column's `(step, value)` pairs onto points sorted by step.
fn merge_column(
    points: &mut [SeqPoint],
    column: Vec<(i64, Vec<u8>)>,
    mut apply: impl FnMut(&mut SeqPoint, Vec<u8>) -> Result<(), SeqError>,
) -> Result<(), SeqError> {
    let mut i = 0;
    for (step, v) in column {
        while i < points.len() && points[i].step < step {
            i += 1;
        }
        if i < points.len() && points[i].step == step {
            apply(&mut points[i], v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::kv::{Database, RetryOptions};

    /// Steps of a test sequence: gapless, with gaps, or sparse.
    fn layouts() -> Vec<(&'static str, Vec<i64>)> {
        vec![
            ("gapless", (0..3_000).collect()),
            ("one gap", (0..3_000).filter(|s| *s != 1_234).collect()),
            ("sparse", (0..3_000).map(|s| s * 7 + s % 3).collect()),
            ("short", (5..40).collect()),
            ("single", vec![9]),
        ]
    }

    #[tokio::test]
    async fn sampled_reads_give_the_points_of_reading_everything_and_sampling() {
        let db = Database::memory();
        let seqs = KeyPerStep::new(b"\x15\x01");
        let mut ids = Vec::new();
        for (name, steps) in layouts() {
            let id = SeqId { run: "r", ctx_id: 0, name };
            let vals: Vec<Vec<u8>> = steps.iter().map(|s| value::encode(&Value::Float(*s as f64)).unwrap()).collect();
            for chunk in steps.chunks(1_000).zip(vals.chunks(1_000)) {
                db.run(&RetryOptions::default(), |tx| {
                    let (seqs, chunk) = (seqs.clone(), chunk);
                    async move {
                        let points: Vec<SeqWrite<'_>> = chunk
                            .0
                            .iter()
                            .zip(chunk.1)
                            .map(|(s, v)| SeqWrite {
                                step: *s,
                                val: v,
                                // Every third point without an epoch.
                                epoch: (s % 3 != 0).then_some(s / 10),
                                time: 1000.0 + *s as f64,
                            })
                            .collect();
                        seqs.write(&tx, id, &points);
                        Ok::<_, SeqError>(())
                    }
                })
                .await
                .unwrap();
            }
            ids.push((id, steps.len()));
        }
        let tx = db.create_trx().unwrap();
        let cols = Columns { epoch: true, time: true };
        for (id, n) in ids {
            let all = seqs.read(&tx, id, None, None, cols, true).await.unwrap();
            assert_eq!(all.len(), n);
            let steps: Vec<i64> = all.iter().map(|p| p.step).collect();
            for p in [1, 3, 50, 128, 300, 500, 5_000] {
                let want: Vec<SeqPoint> = sample_indices(&steps, p).into_iter().map(|i| all[i].clone()).collect();
                let (got, keys) = seqs.read_sampled(&tx, id, p, cols, true).await.unwrap();
                assert_eq!(got, want, "{} p = {p}", id.name);
                assert!(keys >= got.len(), "{} p = {p}: {keys} keys", id.name);
            }
        }
        let empty = SeqId { run: "r", ctx_id: 0, name: "none" };
        assert_eq!(seqs.read_sampled(&tx, empty, 10, cols, true).await.unwrap().0, Vec::new());
    }
}
