//! `backup`: writes runs to an archive (`archive.rs`) as it reads them, a page of keys per
//! transaction, so a run of any size takes a page of memory. It writes `<out>.partial` and renames
//! it to `<out>` at the end; it does not resume (it writes nothing to the store).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::storage::kv::RangeOption;
use crate::storage::layout::EntityKind;
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

use super::archive::{ARCHIVE_FORMAT, ARCHIVE_VERSION, enc, io, key_line};
use super::progress::{Ctx, key_after};
use super::{MaintenanceError, Outcome};

/// Keys read per transaction while backing up a run.
const READ_PAGE: usize = 10_000;

pub async fn backup(ctx: &Ctx<'_>, runs: &[String], out: &Path) -> Result<Outcome, MaintenanceError> {
    if runs.is_empty() {
        return Err(MaintenanceError::Refused("name at least one run to back up (--run)".into()));
    }
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let file = std::fs::File::create(&partial).map_err(io(&partial))?;
    let mut w = BufWriter::new(file);
    let header = json!({
        "format": ARCHIVE_FORMAT,
        "version": ARCHIVE_VERSION,
        "created_at": crate::clock::now_secs(),
        "runs": runs,
    });
    writeln!(w, "{header}").map_err(io(&partial))?;
    ctx.start("backup", runs.len() as u64, 0);
    let mut keys = 0u64;
    for (i, run) in runs.iter().enumerate() {
        keys += write_run(ctx, run, &mut |line: String| writeln!(w, "{line}").map_err(io(&partial))).await?;
        ctx.advance(i as u64 + 1);
    }
    writeln!(w, "{}", json!({"end": true, "runs": runs.len(), "keys": keys})).map_err(io(&partial))?;
    w.into_inner().map_err(|e| io(&partial)(e.into_error()))?.sync_all().map_err(io(&partial))?;
    std::fs::rename(&partial, out).map_err(io(out))?;
    Ok(Outcome::Done(format!("backed up {} runs ({keys} keys) to {}", runs.len(), out.display())))
}

/// Writes every archive line of `run` through `emit` as it reads them (a run of any size takes no
/// more memory than a page): its ⟨runs⟩ keys, its index entries (forward and `_rev`), and its
/// ⟨system⟩ links with the experiment's and tags' records. Returns how many.
async fn write_run(
    ctx: &Ctx<'_>,
    run: &str,
    emit: &mut impl FnMut(String) -> Result<(), MaintenanceError>,
) -> Result<u64, MaintenanceError> {
    let dirs = &ctx.layout.dirs;
    let runs = &ctx.layout.runs.runs;
    let exists = ctx.txn(|tx| async move { Ok(runs.exists(&tx, run, true).await?) }).await?;
    if !exists {
        return Err(MaintenanceError::Refused(format!("run {run} has no meta: there is nothing to back up")));
    }
    let mut n = 0u64;
    let (begin, end) = runs.range(run, &[]);
    let mut from = begin;
    loop {
        let kvs = ctx
            .txn(|tx| {
                let opt = RangeOption::new(from.clone(), end.clone()).limit(READ_PAGE);
                async move { Ok(tx.get_range(&opt, true).await?) }
            })
            .await?;
        for kv in &kvs {
            emit(key_line(run, "runs", &kv.key[dirs.runs.len()..], &kv.value))?;
            n += 1;
        }
        match kvs.last() {
            Some(last) if kvs.len() == READ_PAGE => from = key_after(&last.key),
            _ => break,
        }
    }
    let rest = ctx
        .txn(|tx| async move {
            let mut rest = Vec::new();
            let idx = ctx.layout.indexes();
            for entry in idx.entries_of_run(&tx, run, None).await? {
                let mut rev = vec![Elem::from(crate::storage::layout::indexes::REV), Elem::from(run)];
                rev.extend(entry.iter().cloned());
                rest.push(key_line(run, "indexes", &tuple::pack(&entry), b""));
                rest.push(key_line(run, "indexes", &tuple::pack(&rev), b""));
            }
            let sys = &ctx.layout.system;
            let mut system =
                |elems: Vec<Elem>, val: Vec<u8>| rest.push(key_line(run, "system", &tuple::pack(&elems), &val));
            let link = [Elem::from("run_experiment"), Elem::from(run)];
            if let Some(val) = tx.get(&sys.key(&link), false).await? {
                if let Ok(Value::Str(uuid)) = value::decode(&val) {
                    for (field, v) in sys.get(&tx, EntityKind::Experiment, &uuid).await?.unwrap_or_default() {
                        system(entity_key("experiments", &uuid, &field), enc(&v)?);
                    }
                    system(
                        vec![Elem::from("experiment_runs"), Elem::from(uuid.as_str()), Elem::from(run)],
                        enc(&Value::Bool(true))?,
                    );
                }
                system(link.to_vec(), val);
            }
            for tag in sys.tags_of_run(&tx, run).await? {
                for (field, v) in sys.get(&tx, EntityKind::Tag, &tag).await?.unwrap_or_default() {
                    system(entity_key("tags", &tag, &field), enc(&v)?);
                }
                system(
                    vec![Elem::from("tag_runs"), Elem::from(tag.as_str()), Elem::from(run)],
                    enc(&Value::Bool(true))?,
                );
                system(
                    vec![Elem::from("run_tags"), Elem::from(run), Elem::from(tag.as_str())],
                    enc(&Value::Bool(true))?,
                );
            }
            Ok(rest)
        })
        .await?;
    for line in rest {
        emit(line)?;
        n += 1;
    }
    Ok(n)
}

fn entity_key(kind: &str, uuid: &str, field: &str) -> Vec<Elem> {
    vec![Elem::from(kind), Elem::from(uuid), Elem::from(field)]
}
