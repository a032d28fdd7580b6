//! `restore`: reads an archive (`archive.rs`) twice, once to check it whole (an incomplete
//! archive restores nothing) and once to apply it. It writes each run's data in batches within the
//! byte budget, then one transaction with the meta, the index entries, the experiment and tag links
//! (recreating a deleted experiment or tag) and the tombstone cleared: a run appears whole or not
//! at all, and a restore that stops resumes at the archive line after its last batch.

use std::collections::BTreeMap;
use std::path::Path;

use crate::storage::kv::Transaction;
use crate::storage::layout::EntityKind;
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

use super::archive::{KeyLine, enc, io, is_final, key_lines, scan};
use super::progress::Ctx;
use super::{MaintenanceError, Outcome};

pub async fn run(ctx: &Ctx<'_>, path: &Path, replace: bool, dry_run: bool) -> Result<Outcome, MaintenanceError> {
    const JOB: &str = "restore";
    let scan = scan(path)?;
    let size = std::fs::metadata(path).map_err(io(path))?.len();
    let params = format!("archive={} size={size} replace={replace}", path.display());
    let mut p = ctx.resume(JOB, &params, 0.0, dry_run).await?;
    let total = scan.keys as u64;
    ctx.start(JOB, total, p.done);
    if dry_run {
        for (run, first, last) in &scan.runs {
            let exists = ctx.txn(|tx| async move { Ok(ctx.layout.runs.runs.exists(&tx, run, true).await?) }).await?;
            let note = match (exists, replace) {
                (false, _) => "",
                (true, true) => ", replacing the run in the store",
                (true, false) => ", but the run exists in the store: it would be refused without --replace",
            };
            ctx.line(format!("[dry-run] Would restore run {run} ({} keys){note}", last - first + 1));
        }
        return Ok(Outcome::Done(format!("[dry-run] would restore {} runs ({total} keys)", scan.runs.len())));
    }
    let cursor = |p: &super::progress::Progress| {
        <[u8; 8]>::try_from(p.cursor.as_slice()).map(u64::from_be_bytes).unwrap_or(0) as usize
    };
    let mut lines = key_lines(path)?;
    for (run, first, last) in &scan.runs {
        let from = cursor(&p);
        if *last < from {
            // Restored by an earlier start: skip its lines.
            for item in lines.by_ref().take(last - first + 1) {
                item?;
            }
            continue;
        }
        if *first >= from {
            let exists = ctx.txn(|tx| async move { Ok(ctx.layout.runs.runs.exists(&tx, run, false).await?) }).await?;
            if exists && !replace {
                return Err(MaintenanceError::Refused(format!(
                    "run {run} exists in the store: pass --replace to overwrite it with the archive's"
                )));
            }
            if exists {
                ctx.txn(|tx| async move {
                    let idx = ctx.layout.indexes();
                    idx.deindex_run(&tx, run, None).await?;
                    ctx.layout.system.remove_associations(&tx, idx, run).await?;
                    ctx.layout.runs.runs.clear_run(&tx, run);
                    Ok(())
                })
                .await?;
            }
        }
        let mut finals: Vec<KeyLine> = Vec::new();
        let mut pending: Vec<(usize, KeyLine)> = Vec::new();
        let mut pending_bytes = 0usize;
        for item in lines.by_ref().take(last - first + 1) {
            let (i, line) = item?;
            if is_final(&line) {
                // Needed for the run's last transaction even when its data was written before a stop.
                finals.push(line);
                continue;
            }
            if i < from {
                continue;
            }
            pending_bytes += line.suffix.len() + line.value.len() + ctx.layout.dirs.runs.len();
            pending.push((i, line));
            if pending_bytes >= ctx.settings.max_txn_bytes {
                if let Some(stop) = write_data(ctx, JOB, &mut p, &pending).await? {
                    return Ok(stop);
                }
                pending.clear();
                pending_bytes = 0;
            }
        }
        if !pending.is_empty()
            && let Some(stop) = write_data(ctx, JOB, &mut p, &pending).await?
        {
            return Ok(stop);
        }
        let mut next = p.clone();
        next.cursor = (*last as u64 + 1).to_be_bytes().to_vec();
        next.done = *last as u64 + 1;
        let warnings = ctx
            .txn(|tx| {
                let (finals, next) = (&finals, &next);
                async move {
                    let warnings = finish_run(ctx, &tx, run, finals).await?;
                    ctx.save(&tx, JOB, next)?;
                    Ok(warnings)
                }
            })
            .await?;
        for w in warnings {
            ctx.line(w);
        }
        p = next;
        ctx.line(format!("restored run {run}"));
        if let Some(stop) = ctx.batch_committed(JOB, p.done) {
            return Ok(stop);
        }
    }
    ctx.finish(JOB).await?;
    Ok(Outcome::Done(format!("restored {} runs ({total} keys) from {}", scan.runs.len(), path.display())))
}

/// Writes one batch of a run's data lines and the progress after them.
async fn write_data(
    ctx: &Ctx<'_>,
    job: &str,
    p: &mut super::progress::Progress,
    lines: &[(usize, KeyLine)],
) -> Result<Option<Outcome>, MaintenanceError> {
    let Some(&(last, _)) = lines.last() else { return Ok(None) };
    let mut next = p.clone();
    next.cursor = (last as u64 + 1).to_be_bytes().to_vec();
    next.done = last as u64 + 1;
    ctx.txn(|tx| {
        let next = &next;
        async move {
            for (_, line) in lines {
                let mut key = ctx.layout.dirs.runs.clone();
                key.extend_from_slice(&line.suffix);
                tx.set(&key, &line.value);
            }
            ctx.save(&tx, job, next)
        }
    })
    .await?;
    *p = next;
    Ok(ctx.batch_committed(job, p.done))
}

/// The last transaction of a run: meta (without `pending_deletion`), index entries (experiment
/// and tag entries come from the links, under today's names), links (recreating an experiment or
/// tag deleted since the backup, unless its name was taken since), and the tombstone cleared.
async fn finish_run(
    ctx: &Ctx<'_>,
    tx: &Transaction,
    run: &str,
    finals: &[KeyLine],
) -> Result<Vec<String>, MaintenanceError> {
    let dirs = &ctx.layout.dirs;
    let (idx, sys) = (ctx.layout.indexes(), &ctx.layout.system);
    let mut entities: BTreeMap<(&'static str, String), Vec<(String, Value)>> = BTreeMap::new();
    let mut experiment = None;
    let mut tags = Vec::new();
    let corrupt = |what: &str| MaintenanceError::Archive(format!("run {run}: {what}"));
    for line in finals {
        let elems = tuple::unpack(&line.suffix).map_err(|e| corrupt(&format!("key does not unpack: {e}")))?;
        let name = |i: usize| match elems.get(i) {
            Some(Elem::Str(s)) => Some(s.as_str()),
            _ => None,
        };
        match line.dir.as_str() {
            "runs" => {
                if name(2) != Some("pending_deletion") {
                    tx.set(&[dirs.runs.as_slice(), &line.suffix].concat(), &line.value);
                }
            }
            "indexes" => {
                let kind = if name(0) == Some(crate::storage::layout::indexes::REV) { name(2) } else { name(0) };
                if !matches!(kind, Some("experiment" | "tag")) {
                    tx.set(&[dirs.indexes.as_slice(), &line.suffix].concat(), &line.value);
                }
            }
            _ => match (name(0), name(1), name(2)) {
                (Some(kind @ ("experiments" | "tags")), Some(uuid), Some(field)) => {
                    let v = value::decode(&line.value).map_err(|e| corrupt(&format!("{kind} value: {e}")))?;
                    let kind = if kind == "experiments" { "experiments" } else { "tags" };
                    entities.entry((kind, uuid.to_owned())).or_default().push((field.to_owned(), v));
                }
                (Some("run_experiment"), _, _) => {
                    if let Ok(Value::Str(u)) = value::decode(&line.value) {
                        experiment = Some(u);
                    }
                }
                (Some("run_tags"), _, Some(tag)) => tags.push(tag.to_owned()),
                _ => {}
            },
        }
    }
    let mut warnings = Vec::new();
    if let Some(uuid) = experiment {
        let fields = entities.get(&("experiments", uuid.clone())).cloned().unwrap_or_default();
        if ensure_entity(ctx, tx, EntityKind::Experiment, &uuid, &fields, &mut warnings).await? {
            sys.link_experiment(tx, idx, run, Some(&uuid)).await?;
        }
    }
    for tag in tags {
        let fields = entities.get(&("tags", tag.clone())).cloned().unwrap_or_default();
        if ensure_entity(ctx, tx, EntityKind::Tag, &tag, &fields, &mut warnings).await? {
            ctx.layout.link_tag(tx, run, &tag).await?;
        } else {
            // The archive's `(R,"tags",tag)`, written with the run's data, goes with the link.
            ctx.layout.runs.runs.clear_tag(tx, run, &tag);
        }
    }
    idx.clear_tombstone(tx, run);
    Ok(warnings)
}

/// Whether the experiment or tag `uuid` exists, recreating it from the archive's record (with a
/// zero `run_count`) when it was deleted and its name is free.
async fn ensure_entity(
    ctx: &Ctx<'_>,
    tx: &Transaction,
    kind: EntityKind,
    uuid: &str,
    fields: &[(String, Value)],
    warnings: &mut Vec<String>,
) -> Result<bool, MaintenanceError> {
    let sys = &ctx.layout.system;
    if sys.get(tx, kind, uuid).await?.is_some() {
        return Ok(true);
    }
    let Some((_, Value::Str(name))) = fields.iter().find(|(f, _)| f == "name") else {
        warnings.push(format!("{} {uuid} is gone and the archive has no record of it: not linked", kind.key_name()));
        return Ok(false);
    };
    if let Some(other) = sys.uuid_by_name(tx, kind, name).await? {
        warnings.push(format!(
            "{} {uuid} is gone and its name {name:?} now belongs to {other}: not linked",
            kind.key_name()
        ));
        return Ok(false);
    }
    let record: Vec<(&str, Value)> =
        fields.iter().map(|(f, v)| (f.as_str(), if f == "run_count" { Value::Int(0) } else { v.clone() })).collect();
    sys.put_fields(tx, kind, uuid, &record)?;
    let by_name = if kind == EntityKind::Experiment { "experiments_by_name" } else { "tags_by_name" };
    tx.set(&sys.key(&[Elem::from(by_name), Elem::from(name.as_str())]), &enc(&Value::from(uuid))?);
    warnings.push(format!("recreated {} {name:?} ({uuid}) from the archive", kind.key_name()));
    Ok(true)
}
