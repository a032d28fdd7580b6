//! `migrate sequences --to <layout>`: moves every series (run, context, name) from the store's
//! sequence layout to the other one, online (`docs/adr/0009-sequence-migration.md`):
//!
//! 1. one transaction records `{"layout": "migrating", "from", "to"}` under the version key: from
//!    then on every process writes new points to `to` and reads both layouts merged;
//! 2. batches move series from their lowest steps up: each reads a head of the series from the
//!    source, the same steps from the target (a step a writer put there since wins), writes the
//!    merge to the target and clears those steps from the source, within `[maintenance]`'s budgets,
//!    so a long series takes several transactions and reads correctly while half moved;
//! 3. a sweep from the start finds nothing left (or moves what a process of an older build, which
//!    does not follow the key, wrote meanwhile, and sweeps again);
//! 4. one transaction records `to` (for key-per-step: removes the key, so the store is again the
//!    reference's, byte for byte) and clears the saved progress.
//!
//! The source is found by skipping from run to run and series to series (a few point-sized range
//! reads each); it only shrinks during the migration, since writers write to the target.

use crate::storage::kv::{RangeOption, Transaction, strinc};
use crate::storage::layout::ours::Ours;
use crate::storage::layout::sequences::codec::ChunkView;
use crate::storage::layout::sequences::live::merge_points;
use crate::storage::layout::sequences::version::{self, VersionState};
use crate::storage::layout::{Columns, LayoutError, SeqId, SeqPoint, SeqWrite, SequenceLayout, SequenceLayoutKind};
use crate::storage::tuple::{self, Elem};

use super::progress::{Ctx, Progress};
use super::{MaintenanceError, Outcome};

const JOB: &str = "migrate-sequences";

/// Before the version key says `migrating`.
const PHASE_START: u32 = 0;
/// Moving series.
const PHASE_MOVE: u32 = 1;
/// Every series moved; the version key is set next.
const PHASE_FINISH: u32 = 2;
/// A last pass over the store, which finds nothing unless a process that does not read the version
/// key (an older build) wrote to the source during the migration: the end waits for a clean pass.
const PHASE_SWEEP: u32 = 3;
/// The sweep found (and moved) such series: another pass follows.
const PHASE_SWEEP_FOUND: u32 = 4;

const ALL: Columns = Columns { epoch: true, time: true };

/// Points one transaction moves at most, whatever the byte budget allows: keeps a batch well
/// inside FoundationDB's 5 s.
const MAX_PORTION_POINTS: usize = 100_000;

/// Run and series lookups per counting transaction.
const COUNT_PAGE: usize = 1_000;

/// One series of the source layout.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Series {
    run: String,
    ctx_id: u32,
    name: String,
    /// The key prefix of the series in the source layout.
    prefix: Vec<u8>,
}

impl Series {
    fn id(&self) -> SeqId<'_> {
        SeqId { run: &self.run, ctx_id: self.ctx_id, name: &self.name }
    }
}

/// The tag under a run that holds a layout's sequence keys.
fn tag(kind: SequenceLayoutKind) -> &'static str {
    match kind {
        SequenceLayoutKind::KeyPerStep => "seqs",
        SequenceLayoutKind::Chunked => "chunks",
    }
}

pub async fn run(ctx: &Ctx<'_>, to: SequenceLayoutKind, dry_run: bool) -> Result<Outcome, MaintenanceError> {
    let seqs = &ctx.layout.seqs;
    let state = ctx.txn(|tx| async move { Ok(version::read_state(&tx, seqs.version_key(), false).await?) }).await?;
    let from = match state {
        VersionState::Settled(kind) if kind == to => {
            return Ok(Outcome::Done(format!("the store's sequences are already {}: nothing to migrate", to.as_str())));
        }
        VersionState::Settled(kind) => kind,
        VersionState::Migrating { from, to: going } if going == to => from,
        VersionState::Migrating { to: going, .. } => {
            let going = going.as_str();
            return Err(MaintenanceError::Refused(format!(
                "a migration of the sequences to {going} is in progress: finish it first with \
                 `matyan migrate sequences --to {going}`"
            )));
        }
    };
    let params = format!("to={}", to.as_str());
    let mut p = ctx.resume(JOB, &params, 0.0, dry_run).await?;
    if dry_run {
        let (series, points) = count(ctx, from, true).await?;
        return Ok(Outcome::Done(format!(
            "[dry-run] would move {series} series ({points} points) from {} to {}",
            from.as_str(),
            to.as_str()
        )));
    }
    let (remaining, _) = count(ctx, from, false).await?;
    ctx.start(JOB, remaining + p.done, p.done);
    if p.phase == PHASE_START {
        let next = Progress { phase: PHASE_MOVE, ..p.clone() };
        ctx.txn(|tx| {
            let next = &next;
            async move {
                tx.set(seqs.version_key(), &version::migrating_value(from, to)?);
                ctx.save(&tx, JOB, next)
            }
        })
        .await?;
        ctx.line(format!(
            "migrating the sequences from {} to {}: new points go to {}",
            from.as_str(),
            to.as_str(),
            to.as_str()
        ));
        p = next;
    }
    let mut points = 0u64;
    while matches!(p.phase, PHASE_MOVE | PHASE_SWEEP | PHASE_SWEEP_FOUND) {
        let before = p.phase;
        let (next, moved) = ctx
            .txn(|tx| {
                let p = p.clone();
                async move { move_batch(ctx, &tx, from, to, p).await }
            })
            .await?;
        p = next;
        points += moved;
        if before != PHASE_SWEEP_FOUND && p.phase == PHASE_SWEEP_FOUND {
            ctx.line(format!(
                "series were written in {} during the migration: a process of an older build that does not \
                 follow the version key is writing; moving them, then sweeping again",
                from.as_str()
            ));
        }
        if p.phase == PHASE_FINISH {
            break;
        }
        if let Some(stop) = ctx.batch_committed(JOB, p.done) {
            return Ok(stop);
        }
    }
    let progress_key = Ours::new(&ctx.layout.dirs.ours).job_progress(JOB);
    ctx.txn(|tx| {
        let progress_key = &progress_key;
        async move {
            match to {
                SequenceLayoutKind::KeyPerStep => tx.clear(seqs.version_key()),
                SequenceLayoutKind::Chunked => tx.set(seqs.version_key(), &version::chunked_value()?),
            }
            tx.clear(progress_key);
            Ok(())
        }
    })
    .await?;
    ctx.advance(p.done);
    Ok(Outcome::Done(format!(
        "migrated the sequences from {} to {}: {} series, {points} points moved by this run",
        from.as_str(),
        to.as_str(),
        p.done
    )))
}

/// One batch: series after `p.cursor` moved (the last one perhaps in part) until the batch's
/// series or bytes run out; the progress reached is saved in the same transaction.
async fn move_batch(
    ctx: &Ctx<'_>,
    tx: &Transaction,
    from: SequenceLayoutKind,
    to: SequenceLayoutKind,
    p: Progress,
) -> Result<(Progress, u64), MaintenanceError> {
    let mut next = p;
    let (mut series_done, mut moved, mut worked) = (0usize, 0u64, false);
    loop {
        if worked && (series_done >= ctx.settings.batch_size || ctx.full(tx).await?) {
            break;
        }
        let begin = if next.cursor.is_empty() { ctx.layout.dirs.runs.clone() } else { next.cursor.clone() };
        let Some(series) = next_series(ctx, tx, from, &begin).await? else {
            next.phase = match next.phase {
                PHASE_MOVE | PHASE_SWEEP_FOUND => PHASE_SWEEP,
                _ => PHASE_FINISH,
            };
            next.cursor.clear();
            break;
        };
        if next.phase == PHASE_SWEEP {
            next.phase = PHASE_SWEEP_FOUND;
        }
        let used = tx.approximate_size().await?;
        let budget = ctx.settings.max_txn_bytes.saturating_sub(used);
        let max_points = (budget / point_bytes(ctx, to, &series)).clamp(1, MAX_PORTION_POINTS);
        let (n, exhausted) = move_head(ctx, tx, &series, from, to, max_points).await?;
        worked = true;
        moved += n;
        if exhausted {
            next.cursor = strinc(&series.prefix);
            next.done += 1;
            series_done += 1;
        } else {
            // The rest of the series is the next batch's: it starts again at the series.
            next.cursor = series.prefix.clone();
            break;
        }
    }
    ctx.save(tx, JOB, &next)?;
    Ok((next, moved))
}

/// What one point costs the target's transaction, roughly (FoundationDB's accounting: keys and
/// values of the sets), so a portion fits the byte budget.
fn point_bytes(ctx: &Ctx<'_>, to: SequenceLayoutKind, series: &Series) -> usize {
    match to {
        // Four column keys (the series prefix, the column and the step) and their small values.
        SequenceLayoutKind::KeyPerStep => {
            let prefix = ctx.layout.dirs.runs.len() + series.run.len() + series.name.len() + 16;
            4 * (prefix + 16) + 32
        }
        // A float point is about 8 bytes in a chunk; room for larger values and the chunk keys.
        SequenceLayoutKind::Chunked => 32,
    }
}

/// Moves the lowest steps of `series` (at most about `max_points`, whole chunks) from `from` to
/// `to`; returns the points moved and whether the series has left the source.
async fn move_head(
    ctx: &Ctx<'_>,
    tx: &Transaction,
    series: &Series,
    from: SequenceLayoutKind,
    to: SequenceLayoutKind,
    max_points: usize,
) -> Result<(u64, bool), MaintenanceError> {
    let seqs = &ctx.layout.seqs;
    let id = series.id();
    let (b, e) = tuple::range(&series.prefix, &[]);
    let (older, exhausted, clear_to) = match seqs.layout(from) {
        SequenceLayout::KeyPerStep(kps) => {
            let val = kps.column_prefix(id, "val");
            let (vb, ve) = tuple::range(&val, &[]);
            // One more than moved: whether the series ends here.
            let mut head = tx.get_range(&RangeOption::new(vb, ve).limit(max_points + 1), false).await?;
            let exhausted = head.len() <= max_points;
            head.truncate(max_points);
            let (Some(first), Some(last)) = (head.first(), head.last()) else {
                // No point left, perhaps columns without a value: the series is gone.
                tx.clear_range(&b, &e);
                return Ok((0, true));
            };
            let (lo, hi) = (step_of(&val, &first.key)?, step_of(&val, &last.key)?);
            let older = kps.read(tx, id, Some(lo), Some(hi), ALL, false).await?;
            (older, exhausted, Some(hi))
        }
        SequenceLayout::Chunked(_) => {
            let limit = (max_points / 1024).max(1);
            let mut chunks = tx.get_range(&RangeOption::new(b.clone(), e.clone()).limit(limit + 1), false).await?;
            let exhausted = chunks.len() <= limit;
            chunks.truncate(limit);
            let mut older = Vec::new();
            for kv in &chunks {
                for row in ChunkView::parse(&kv.value)?.rows()? {
                    older.push(SeqPoint { step: row.step, val: row.val, epoch: row.epoch, time: Some(row.time) });
                }
            }
            if older.is_empty() {
                tx.clear_range(&b, &e);
                return Ok((0, true));
            }
            // The chunks read are cleared from their first key to just past the last.
            if !exhausted && let Some(last) = chunks.last() {
                tx.clear_range(&b, &super::progress::key_after(&last.key));
            }
            (older, exhausted, None)
        }
    };
    let (lo, hi) = match (older.first(), older.last()) {
        (Some(f), Some(l)) => (f.step, l.step),
        _ => return Ok((0, exhausted)),
    };
    let newer = seqs.layout(to).read(tx, id, Some(lo), Some(hi), ALL, false).await?;
    let merged = merge_points(older, newer);
    let writes = merged
        .iter()
        .map(|p| {
            let time = p.time.ok_or_else(|| {
                LayoutError::Corrupt(format!(
                    "series {}/{}/{} has no time at step {}: it cannot be moved",
                    series.run, series.ctx_id, series.name, p.step
                ))
            })?;
            Ok(SeqWrite { step: p.step, val: &p.val, epoch: p.epoch, time })
        })
        .collect::<Result<Vec<_>, LayoutError>>()?;
    if exhausted {
        tx.clear_range(&b, &e);
    } else if let (SequenceLayout::KeyPerStep(kps), Some(hi)) = (seqs.layout(from), clear_to) {
        for col in ["val", "step", "epoch", "time"] {
            let prefix = kps.column_prefix(id, col);
            let mut end = prefix.clone();
            tuple::pack_into(&[Elem::Int(i128::from(hi) + 1)], &mut end);
            tx.clear_range(&tuple::range(&prefix, &[]).0, &end);
        }
    }
    seqs.layout(to).write(tx, id, &writes).await?;
    Ok((writes.len() as u64, exhausted))
}

fn step_of(prefix: &[u8], key: &[u8]) -> Result<i64, LayoutError> {
    let bad = || LayoutError::Corrupt("a sequence key without an integer step".into());
    match key.strip_prefix(prefix).map(tuple::unpack) {
        Some(Ok(rest)) => match rest.first() {
            Some(Elem::Int(s)) => i64::try_from(*s).map_err(|_| bad()),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// The first series of layout `kind` at or after the key `begin`, skipping from run to run (reads
/// are snapshot: the source only shrinks while the job holds the lock).
async fn next_series(
    ctx: &Ctx<'_>,
    tx: &Transaction,
    kind: SequenceLayoutKind,
    begin: &[u8],
) -> Result<Option<Series>, MaintenanceError> {
    let runs_prefix = &ctx.layout.dirs.runs;
    let end = strinc(runs_prefix);
    let corrupt = |why: &str| MaintenanceError::Layout(LayoutError::Corrupt(format!("⟨runs⟩ key: {why}")));
    let mut begin = begin.to_vec();
    loop {
        let kvs = tx.get_range(&RangeOption::new(begin.clone(), end.clone()).limit(1), true).await?;
        let Some(kv) = kvs.into_iter().next() else { return Ok(None) };
        let elems = tuple::unpack(&kv.key[runs_prefix.len()..]).map_err(|e| corrupt(&e.to_string()))?;
        let Some(Elem::Str(run)) = elems.first() else { return Err(corrupt("no run hash")) };
        let scope = tuple::pack_with_prefix(runs_prefix, &[Elem::from(run.as_str()), Elem::from(tag(kind))]);
        if kv.key.starts_with(&scope) {
            let (Some(Elem::Int(ctx_id)), Some(Elem::Str(name))) = (elems.get(2), elems.get(3)) else {
                return Err(corrupt("a sequence key without a context id and a name"));
            };
            let ctx_id = u32::try_from(*ctx_id).map_err(|_| corrupt("context id out of range"))?;
            let prefix = tuple::pack_with_prefix(
                runs_prefix,
                &[Elem::from(run.as_str()), Elem::from(tag(kind)), Elem::from(ctx_id), Elem::from(name.as_str())],
            );
            return Ok(Some(Series { run: run.clone(), ctx_id, name: name.clone(), prefix }));
        }
        begin = if kv.key < scope { scope } else { strinc(&ctx.layout.runs.runs.key(run, &[])) };
    }
}

/// The series of layout `kind` in the store, and (with `points`) their points, counted a page per
/// transaction.
async fn count(ctx: &Ctx<'_>, kind: SequenceLayoutKind, points: bool) -> Result<(u64, u64), MaintenanceError> {
    let (mut series, mut total) = (0u64, 0u64);
    let mut begin = ctx.layout.dirs.runs.clone();
    loop {
        let (page, next) = ctx
            .txn(|tx| {
                let mut begin = begin.clone();
                async move {
                    let mut page = Vec::new();
                    while page.len() < COUNT_PAGE {
                        let Some(s) = next_series(ctx, &tx, kind, &begin).await? else { return Ok((page, None)) };
                        begin = strinc(&s.prefix);
                        page.push(s);
                    }
                    Ok((page, Some(begin)))
                }
            })
            .await?;
        series += page.len() as u64;
        if points {
            for s in &page {
                total += count_points(ctx, kind, s).await?;
            }
        }
        match next {
            Some(b) => begin = b,
            None => return Ok((series, total)),
        }
    }
}

/// The points of one series: its `val` keys, or the sizes in its chunks' headers.
async fn count_points(ctx: &Ctx<'_>, kind: SequenceLayoutKind, s: &Series) -> Result<u64, MaintenanceError> {
    match ctx.layout.seqs.layout(kind) {
        SequenceLayout::KeyPerStep(kps) => {
            let (b, e) = tuple::range(&kps.column_prefix(s.id(), "val"), &[]);
            ctx.count(&b, &e).await
        }
        SequenceLayout::Chunked(_) => {
            const PAGE: usize = 1_000;
            let (mut b, e) = tuple::range(&s.prefix, &[]);
            let mut n = 0u64;
            loop {
                let (page, last) = ctx
                    .txn(|tx| {
                        let opt = RangeOption::new(b.clone(), e.clone()).limit(PAGE);
                        async move {
                            let kvs = tx.get_range(&opt, true).await?;
                            let mut n = 0u64;
                            for kv in &kvs {
                                n += ChunkView::parse(&kv.value).map_err(LayoutError::from)?.len as u64;
                            }
                            Ok((n, (kvs.len() == PAGE).then(|| kvs.last().map(|kv| kv.key.clone())).flatten()))
                        }
                    })
                    .await?;
                n += page;
                match last {
                    Some(key) => b = super::progress::key_after(&key),
                    None => return Ok(n),
                }
            }
        }
    }
}
