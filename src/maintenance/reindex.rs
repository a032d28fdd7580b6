//! `reindex`: rebuilds ⟨indexes⟩ from run data, as the reference's does (§2.7):
//! 1. clear the index prefixes (`_deleted` is kept), in one transaction;
//! 2. run by run: purge ghosts (no meta, no or zero `created_at`, or `pending_deletion`: data and
//!    associations go, no tombstone is written), rewrite the others' tier 1/2/3 entries with their
//!    twins and their experiment link;
//! 3. rewrite `run_count` of every experiment and tag from the runs with data that link to them.
//!
//! Counting (the progress total, the links) goes a page per transaction, so no transaction outlives
//! FoundationDB's 5 s whatever the store's size.
//!
//! Phases 2 and 3 go in batches whose progress is saved with their writes. Between phase 1 and the
//! end, searches of a live server see the indexes partly rebuilt, as with the reference's.

use std::collections::BTreeSet;

use crate::storage::kv::{RangeOption, Transaction, strinc};
use crate::storage::layout::indexes::REV;
use crate::storage::layout::runs::index_elem;
use crate::storage::layout::{EntityKind, Layout, LayoutError};
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

use super::progress::{Ctx, Progress};
use super::{MaintenanceError, Outcome};

const JOB: &str = "reindex";

/// Index prefixes the reindex clears; `_deleted` (tombstones) is not one of them.
const CLEARED: [&str; 8] = ["archived", "active", "experiment", "created_at", "tag", "hparam", "trace", REV];

const PHASE_CLEAR: u32 = 0;
const PHASE_RUNS: u32 = 1;
const PHASE_EXPERIMENTS: u32 = 2;
const PHASE_TAGS: u32 = 3;

pub async fn run(ctx: &Ctx<'_>, dry_run: bool) -> Result<Outcome, MaintenanceError> {
    let mut p = ctx.resume(JOB, "", 0.0, dry_run).await?;
    if dry_run {
        // Nothing is cleared: the dry run only walks the runs.
        p.phase = PHASE_RUNS;
    }
    let runs_prefix = ctx.layout.dirs.runs.clone();
    ctx.start(JOB, count_runs(ctx).await?, p.done);
    if p.phase == PHASE_CLEAR {
        let next = Progress { phase: PHASE_RUNS, ..p.clone() };
        ctx.txn(|tx| {
            let next = &next;
            async move {
                for name in CLEARED {
                    let (b, e) = tuple::range(&ctx.layout.dirs.indexes, &[Elem::from(name)]);
                    tx.clear_range(&b, &e);
                }
                ctx.save(&tx, JOB, next)
            }
        })
        .await?;
        ctx.line("cleared the index prefixes (tombstones kept)".to_owned());
        p = next;
    }
    let mut ghosts = 0u64;
    while p.phase == PHASE_RUNS {
        let (next, batch_ghosts) = ctx
            .txn(|tx| {
                let mut next = p.clone();
                let runs_prefix = &runs_prefix;
                async move {
                    let end = strinc(runs_prefix);
                    let mut begin = if next.cursor.is_empty() { runs_prefix.clone() } else { next.cursor.clone() };
                    let mut batch_ghosts = Vec::new();
                    let mut visited = 0;
                    loop {
                        if visited == ctx.settings.batch_size || (!dry_run && ctx.full(&tx).await?) {
                            break;
                        }
                        let kvs = tx.get_range(&RangeOption::new(begin.clone(), end.clone()).limit(1), false).await?;
                        let Some(kv) = kvs.first() else {
                            next.phase = PHASE_EXPERIMENTS;
                            next.cursor.clear();
                            break;
                        };
                        let rest = tuple::unpack(&kv.key[runs_prefix.len()..])
                            .map_err(|e| LayoutError::Corrupt(format!("⟨runs⟩ key: {e}")))?;
                        let Some(Elem::Str(run)) = rest.into_iter().next() else {
                            return Err(
                                LayoutError::Corrupt("a ⟨runs⟩ key does not start with a run hash".into()).into()
                            );
                        };
                        begin = strinc(&ctx.layout.runs.runs.key(&run, &[]));
                        if let Some(reason) = reindex_run(ctx.layout, &tx, &run, dry_run).await? {
                            batch_ghosts.push((run, reason));
                        }
                        visited += 1;
                        next.done += 1;
                        next.cursor = begin.clone();
                    }
                    if !dry_run {
                        ctx.save(&tx, JOB, &next)?;
                    }
                    Ok((next, batch_ghosts))
                }
            })
            .await?;
        p = next;
        ghosts += batch_ghosts.len() as u64;
        for (run, reason) in batch_ghosts {
            let verb = if dry_run { "[dry-run] Would purge" } else { "purged" };
            ctx.line(format!("{verb} ghost run {run} ({reason})"));
        }
        if dry_run {
            ctx.advance(p.done);
            if p.phase != PHASE_RUNS {
                return Ok(Outcome::Done(format!("[dry-run] {} runs, {ghosts} ghosts would be purged", p.done)));
            }
        } else if let Some(stop) = ctx.batch_committed(JOB, p.done) {
            return Ok(stop);
        }
    }
    let mut counted = 0u64;
    while p.phase == PHASE_EXPERIMENTS || p.phase == PHASE_TAGS {
        let kind = if p.phase == PHASE_EXPERIMENTS { EntityKind::Experiment } else { EntityKind::Tag };
        let (uuids, last) = next_entities(ctx, kind, &p.cursor).await?;
        let mut counts = Vec::with_capacity(uuids.len());
        for uuid in &uuids {
            counts.push((uuid.clone(), count_linked_runs(ctx, kind, uuid).await?));
        }
        let mut next = p.clone();
        match last {
            Some(key) => next.cursor = key,
            None => {
                next.phase += 1;
                next.cursor.clear();
            }
        }
        ctx.txn(|tx| {
            let (counts, next) = (&counts, &next);
            async move {
                for (uuid, count) in counts {
                    let count = Value::Int(i128::from(*count));
                    ctx.layout.system.put_fields(&tx, kind, uuid, &[("run_count", count)])?;
                }
                ctx.save(&tx, JOB, next)
            }
        })
        .await?;
        p = next;
        counted += counts.len() as u64;
        if let Some(stop) = ctx.batch_committed(JOB, p.done) {
            return Ok(stop);
        }
    }
    ctx.finish(JOB).await?;
    Ok(Outcome::Done(format!(
        "reindexed {} runs, purged {ghosts} ghosts, recounted {counted} experiments and tags",
        p.done
    )))
}

/// Keys read per transaction while counting (runs, links).
const COUNT_PAGE: usize = 1_000;

/// The runs of ⟨runs⟩, counted by skipping from run to run, a page per transaction.
async fn count_runs(ctx: &Ctx<'_>) -> Result<u64, MaintenanceError> {
    let prefix = &ctx.layout.dirs.runs;
    let end = strinc(prefix);
    let (mut n, mut begin) = (0u64, prefix.clone());
    loop {
        let (page, next) = ctx
            .txn(|tx| {
                let (mut begin, end) = (begin.clone(), end.clone());
                async move {
                    let mut page = 0;
                    while page < COUNT_PAGE {
                        let kvs = tx.get_range(&RangeOption::new(begin.clone(), end.clone()).limit(1), true).await?;
                        let Some(kv) = kvs.first() else { return Ok((page, None)) };
                        let run = match tuple::unpack(&kv.key[prefix.len()..]).ok().and_then(|r| r.into_iter().next()) {
                            Some(Elem::Str(run)) => run,
                            _ => {
                                return Err(
                                    LayoutError::Corrupt("a ⟨runs⟩ key does not start with a run hash".into()).into()
                                );
                            }
                        };
                        begin = strinc(&ctx.layout.runs.runs.key(&run, &[]));
                        page += 1;
                    }
                    Ok((page, Some(begin)))
                }
            })
            .await?;
        n += page as u64;
        match next {
            Some(b) => begin = b,
            None => return Ok(n),
        }
    }
}

/// The next batch of experiment or tag uuids after `cursor` (the last one's key prefix), and the
/// new cursor, `None` when the kind has no more.
async fn next_entities(
    ctx: &Ctx<'_>,
    kind: EntityKind,
    cursor: &[u8],
) -> Result<(Vec<String>, Option<Vec<u8>>), MaintenanceError> {
    let sys = &ctx.layout.system;
    let scope = [Elem::from(kind.key_name())];
    let base_len = sys.key(&scope).len();
    let (first, end) = tuple::range(&ctx.layout.dirs.system, &scope);
    ctx.txn(|tx| {
        let (mut begin, end) = (if cursor.is_empty() { first.clone() } else { cursor.to_vec() }, end.clone());
        async move {
            let mut uuids = Vec::new();
            while uuids.len() < ctx.settings.batch_size {
                let kvs = tx.get_range(&RangeOption::new(begin.clone(), end.clone()).limit(1), true).await?;
                let Some(kv) = kvs.first() else { return Ok((uuids, None)) };
                let Some(Elem::Str(uuid)) = tuple::unpack(&kv.key[base_len..]).ok().and_then(|r| r.into_iter().next())
                else {
                    return Err(LayoutError::Corrupt(format!("a {} key without a uuid", kind.key_name())).into());
                };
                begin = strinc(&sys.key(&[Elem::from(kind.key_name()), Elem::from(uuid.as_str())]));
                uuids.push(uuid);
            }
            Ok((uuids, Some(begin)))
        }
    })
    .await
}

/// The runs with data that link to the experiment or tag (`experiment_runs` / `tag_runs`), a page
/// of links per transaction.
async fn count_linked_runs(ctx: &Ctx<'_>, kind: EntityKind, uuid: &str) -> Result<u64, MaintenanceError> {
    let link = if kind == EntityKind::Experiment { "experiment_runs" } else { "tag_runs" };
    let sys = &ctx.layout.system;
    let scope = [Elem::from(link), Elem::from(uuid)];
    let base_len = sys.key(&scope).len();
    let (mut begin, end) = tuple::range(&ctx.layout.dirs.system, &scope);
    let mut n = 0u64;
    loop {
        let (alive, last, full) = ctx
            .txn(|tx| {
                let opt = RangeOption::new(begin.clone(), end.clone()).limit(COUNT_PAGE);
                async move {
                    let kvs = tx.get_range(&opt, true).await?;
                    let mut alive = 0u64;
                    for kv in &kvs {
                        if let Some(Elem::Str(run)) =
                            tuple::unpack(&kv.key[base_len..]).ok().and_then(|r| r.into_iter().next())
                            && ctx.layout.runs.runs.exists(&tx, &run, true).await?
                        {
                            alive += 1;
                        }
                    }
                    Ok((alive, kvs.last().map(|kv| kv.key.clone()), kvs.len() == COUNT_PAGE))
                }
            })
            .await?;
        n += alive;
        match last {
            Some(key) if full => begin = super::progress::key_after(&key),
            _ => return Ok(n),
        }
    }
}

/// Rewrites one run's index entries and experiment link; a ghost is purged instead and its reason
/// returned. A dry run only decides.
async fn reindex_run(
    layout: &Layout,
    tx: &Transaction,
    run: &str,
    dry_run: bool,
) -> Result<Option<&'static str>, MaintenanceError> {
    let (runs, idx, sys) = (&layout.runs.runs, layout.indexes(), &layout.system);
    let meta = match layout.runs.get_run(tx, run, false).await? {
        Some(Value::Map(fields)) => fields,
        _ => Vec::new(),
    };
    let field = |name: &str| meta.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v);
    let ghost = if meta.is_empty() {
        Some("no meta")
    } else if !matches!(field("created_at"), Some(Value::Float(f)) if *f != 0.0)
        && !matches!(field("created_at"), Some(Value::Int(i)) if *i != 0)
    {
        Some("no created_at")
    } else if matches!(field("pending_deletion"), Some(Value::Bool(true))) {
        Some("pending deletion")
    } else {
        None
    };
    if dry_run {
        return Ok(ghost);
    }
    if ghost.is_some() {
        idx.deindex_run(tx, run, None).await?;
        sys.remove_associations(tx, idx, run).await?;
        runs.clear_run(tx, run);
        return Ok(ghost);
    }
    for (name, index) in [("is_archived", "archived"), ("active", "active"), ("created_at", "created_at")] {
        if let Some(e) = field(name).and_then(index_elem) {
            idx.add(tx, run, &[Elem::from(index), e, Elem::from(run)]);
        }
    }
    let link_key = sys.key(&[Elem::from("run_experiment"), Elem::from(run)]);
    let linked = tx.get(&link_key, false).await?.and_then(|b| value::decode(&b).ok());
    let wanted = match field("experiment_id") {
        Some(Value::Str(u)) => Some(u.clone()),
        _ => None,
    };
    if let Some(Value::Str(old)) = &linked
        && wanted.as_ref() != Some(old)
    {
        tx.clear(&sys.key(&[Elem::from("experiment_runs"), Elem::from(old.as_str()), Elem::from(run)]));
        tx.clear(&link_key);
    }
    if let Some(uuid) = wanted
        && let Some(fields) = sys.get(tx, EntityKind::Experiment, &uuid).await?
    {
        tx.set(&link_key, &enc(&Value::from(uuid.as_str()))?);
        tx.set(
            &sys.key(&[Elem::from("experiment_runs"), Elem::from(uuid.as_str()), Elem::from(run)]),
            &enc(&Value::Bool(true))?,
        );
        if let Some((_, Value::Str(name))) = fields.iter().find(|(f, _)| f == "name") {
            idx.add(tx, run, &[Elem::from("experiment"), Elem::from(name.as_str()), Elem::from(run)]);
        }
    }
    for tag in sys.tags_of_run(tx, run).await? {
        let Some(fields) = sys.get(tx, EntityKind::Tag, &tag).await? else { continue };
        if let Some((_, Value::Str(name))) = fields.iter().find(|(f, _)| f == "name") {
            idx.add(tx, run, &[Elem::from("tag"), Elem::from(name.as_str()), Elem::from(run)]);
        }
    }
    if let Some(Value::Map(hparams)) =
        runs.tree_get(tx, run, &[Elem::from("attrs"), Elem::from("hparams")], false).await?
    {
        layout.runs.reindex_hparams(tx, run, &hparams).await?;
    }
    let traces = [Elem::from("traces")];
    let (b, e) = runs.range(run, &traces);
    let base_len = runs.key(run, &traces).len();
    let mut names = BTreeSet::new();
    for kv in tx.get_range(&RangeOption::new(b, e), false).await? {
        if let Ok(rest) = tuple::unpack(&kv.key[base_len..])
            && let Some(Elem::Str(name)) = rest.get(1)
        {
            names.insert(name.clone());
        }
    }
    for name in names {
        idx.add(tx, run, &[Elem::from("trace"), Elem::from(name.as_str()), Elem::from(run)]);
    }
    Ok(None)
}

fn enc(v: &Value) -> Result<Vec<u8>, LayoutError> {
    value::encode(v).map_err(|e| LayoutError::Encode(e.to_string()))
}
