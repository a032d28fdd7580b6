//! Sequences (metric series, custom objects, logs) behind their own interface.
//!
//! [`KeyPerStep`] is the reference's layout, byte compatible with a Matyan store: one key per step
//! and column, `⟨runs⟩(R, "seqs", ctx_id, name, col, step)` with `col` ∈ `val`, `step`, `epoch`,
//! `time`. A chunked column layout can implement the same operations later, chosen per store.

use crate::storage::kv::{KeyValue, KvError, RangeOption, Transaction};
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

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
}

impl crate::storage::kv::RetryableError for SeqError {
    fn kv_error(&self) -> Option<&KvError> {
        match self {
            SeqError::Kv(e) => Some(e),
            SeqError::Corrupt(_) => None,
        }
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
        let vals = self.read_column(tx, id, "val", start, end, snapshot).await?;
        let mut points: Vec<SeqPoint> =
            vals.into_iter().map(|(step, val)| SeqPoint { step, val, epoch: None, time: None }).collect();
        if cols.epoch {
            let epochs = self.read_column(tx, id, "epoch", start, end, snapshot).await?;
            merge_column(&mut points, epochs, |p, v| {
                p.epoch = decode_int(&v)?;
                Ok(())
            })?;
        }
        if cols.time {
            let times = self.read_column(tx, id, "time", start, end, snapshot).await?;
            merge_column(&mut points, times, |p, v| {
                p.time = match value::decode(&v).map_err(|e| SeqError::Corrupt(e.to_string()))? {
                    Value::Float(f) => Some(f),
                    Value::Int(i) => Some(i as f64),
                    _ => None,
                };
                Ok(())
            })?;
        }
        Ok(points)
    }

    async fn read_column(
        &self,
        tx: &Transaction,
        id: SeqId<'_>,
        col: &str,
        start: Option<i64>,
        end: Option<i64>,
        snapshot: bool,
    ) -> Result<Vec<(i64, Vec<u8>)>, SeqError> {
        let prefix = self.column_prefix(id, col);
        let (mut b, mut e) = tuple::range(&prefix, &[]);
        if let Some(s) = start {
            b = Self::step_key(&prefix, s);
        }
        if let Some(s) = end.filter(|s| *s < i64::MAX) {
            e = Self::step_key(&prefix, s + 1);
        }
        let kvs = tx.get_range(&RangeOption::new(b, e), snapshot).await?;
        kvs.into_iter().map(|kv| Ok((step_of(&prefix, &kv)?, kv.value))).collect()
    }
}

/// Indices of the points kept when sampling ascending `steps` down to at most `p` points, by the
/// reference's rules (`api.md` §4.9): everything when there are at most `p`; one point when `p ≤ 1`
/// or all steps are equal; for `p ≥ 128` the first and last step plus the first step in each of
/// `p − 2` equal-width step buckets between them; below 128, `p` evenly spaced target steps each
/// resolved to the nearest existing step at or after it, falling back to `p` evenly spaced positions
/// when duplicates leave fewer than `p`.
pub fn sample_indices(steps: &[i64], p: usize) -> Vec<usize> {
    let n = steps.len();
    if n <= p {
        return (0..n).collect();
    }
    let (first, last) = (steps[0], steps[n - 1]);
    if p <= 1 || first == last {
        return vec![0];
    }
    let span = (last - first) as f64;
    if p >= 128 {
        let buckets = p - 2;
        let mut out = vec![0];
        let mut seen = vec![false; buckets];
        for (j, s) in steps.iter().enumerate().take(n - 1).skip(1) {
            let b = ((((s - first) as f64) * buckets as f64 / span) as usize).min(buckets - 1);
            if !seen[b] {
                seen[b] = true;
                out.push(j);
            }
        }
        out.push(n - 1);
        return out;
    }
    let mut out: Vec<usize> = Vec::with_capacity(p);
    for i in 0..p {
        let target = first as f64 + span * i as f64 / (p - 1) as f64;
        let j = steps.partition_point(|s| (*s as f64) < target).min(n - 1);
        if out.last() != Some(&j) {
            out.push(j);
        }
    }
    if out.len() < p {
        out = (0..p).map(|i| ((i * (n - 1)) as f64 / (p - 1) as f64).round_ties_even() as usize).collect();
    }
    out
}

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
