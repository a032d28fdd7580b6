//! `finish-stale`: finishes every active run created more than a number of hours ago
//! (`update_meta(active=False, finalized_at=now)`), as the reference does: by creation time, not
//! last activity, and runs pending deletion included. Batches of runs from the `("active", True)`
//! index, which each finished run leaves.

use crate::storage::kv::RangeOption;
use crate::storage::tuple::{self, Elem};
use crate::storage::value::Value;

use super::progress::{Ctx, resume_from};
use super::{MaintenanceError, Outcome};

const JOB: &str = "finish-stale";

pub async fn run(ctx: &Ctx<'_>, timeout_hours: f64, dry_run: bool) -> Result<Outcome, MaintenanceError> {
    let prefix = &ctx.layout.dirs.indexes;
    let scope = [Elem::from("active"), Elem::Bool(true)];
    let (begin, end) = tuple::range(prefix, &scope);
    let base_len = tuple::pack_with_prefix(prefix, &scope).len();
    let now = crate::clock::now_secs();
    let params = format!("timeout_hours={timeout_hours}");
    let mut p = ctx.resume(JOB, &params, now - timeout_hours * 3600.0, dry_run).await?;
    ctx.start(JOB, ctx.count(&begin, &end).await? + p.done, p.done);
    let ops = &ctx.layout.runs;
    let mut finished = 0u64;
    loop {
        let (next, more, batch) = ctx
            .txn(|tx| {
                let opt = RangeOption::new(resume_from(&p.cursor, &begin), end.clone()).limit(ctx.settings.batch_size);
                let mut next = p.clone();
                async move {
                    let kvs = tx.get_range(&opt, false).await?;
                    let mut batch = Vec::new();
                    let mut visited = 0;
                    for kv in &kvs {
                        next.cursor = kv.key.clone();
                        next.done += 1;
                        visited += 1;
                        let Ok(rest) = tuple::unpack(&kv.key[base_len..]) else { continue };
                        let Some(Elem::Str(run)) = rest.into_iter().last() else { continue };
                        let created = match ops.runs.meta_field(&tx, &run, "created_at").await? {
                            Some(Value::Float(f)) => f,
                            Some(Value::Int(i)) => i as f64,
                            _ => 0.0,
                        };
                        if created < next.cutoff {
                            if !dry_run {
                                let fields = [("active", Value::Bool(false)), ("finalized_at", Value::Float(now))];
                                ops.update_meta(&tx, &run, now, &fields).await?;
                            }
                            batch.push(run);
                            if !dry_run && ctx.full(&tx).await? {
                                break;
                            }
                        }
                    }
                    if !dry_run && visited > 0 {
                        ctx.save(&tx, JOB, &next)?;
                    }
                    Ok((next, visited == ctx.settings.batch_size || visited < kvs.len(), batch))
                }
            })
            .await?;
        p = next;
        finished += batch.len() as u64;
        if dry_run {
            for run in &batch {
                ctx.line(format!("[dry-run] Would finish stale run: {run}"));
            }
        }
        if !more {
            break;
        }
        if let Some(stop) = ctx.batch_done(JOB, p.done, dry_run) {
            return Ok(stop);
        }
    }
    if dry_run {
        return Ok(Outcome::Done(format!("[dry-run] would finish {finished} of {} active runs", p.done)));
    }
    ctx.finish(JOB).await?;
    ctx.advance(p.done);
    Ok(Outcome::Done(format!(
        "finished {finished} runs created over {timeout_hours} h ago ({} active visited)",
        p.done
    )))
}
