//! `cleanup-tombstones`: clears the tombstones older than a number of hours, in batches of
//! tombstones (the reference clears each in its own transaction). Blobs are not touched.

use crate::storage::kv::RangeOption;
use crate::storage::layout::indexes::DELETED;
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

use super::progress::{Ctx, resume_from};
use super::{MaintenanceError, Outcome};

const JOB: &str = "cleanup-tombstones";

/// A tombstone's run and deletion time (a value that is no number counts as 0.0, as in the reference).
pub fn decode(base_len: usize, key: &[u8], val: &[u8]) -> Option<(String, f64)> {
    let rest = tuple::unpack(&key[base_len..]).ok()?;
    let Some(Elem::Str(run)) = rest.into_iter().next() else { return None };
    let ts = match value::decode(val) {
        Ok(Value::Float(f)) => f,
        Ok(Value::Int(i)) => i as f64,
        _ => 0.0,
    };
    Some((run, ts))
}

pub async fn run(ctx: &Ctx<'_>, older_than_hours: f64, dry_run: bool) -> Result<Outcome, MaintenanceError> {
    let prefix = &ctx.layout.dirs.indexes;
    let scope = [Elem::from(DELETED)];
    let (begin, end) = tuple::range(prefix, &scope);
    let base_len = tuple::pack_with_prefix(prefix, &scope).len();
    let params = format!("older_than_hours={older_than_hours}");
    let cutoff = crate::clock::now_secs() - older_than_hours * 3600.0;
    let mut p = ctx.resume(JOB, &params, cutoff, dry_run).await?;
    ctx.start(JOB, ctx.count(&begin, &end).await? + p.done, p.done);
    let mut cleared = 0u64;
    loop {
        let (next, page, batch_cleared) = ctx
            .txn(|tx| {
                let opt = RangeOption::new(resume_from(&p.cursor, &begin), end.clone()).limit(ctx.settings.batch_size);
                let mut next = p.clone();
                async move {
                    let kvs = tx.get_range(&opt, false).await?;
                    let mut batch_cleared = Vec::new();
                    for kv in &kvs {
                        next.cursor = kv.key.clone();
                        next.done += 1;
                        let Some((run, ts)) = decode(base_len, &kv.key, &kv.value) else { continue };
                        if ts < next.cutoff {
                            if !dry_run {
                                tx.clear(&kv.key);
                            }
                            batch_cleared.push((run, ts));
                        }
                    }
                    if !dry_run && !kvs.is_empty() {
                        ctx.save(&tx, JOB, &next)?;
                    }
                    Ok((next, kvs.len(), batch_cleared))
                }
            })
            .await?;
        p = next;
        cleared += batch_cleared.len() as u64;
        for (run, ts) in batch_cleared {
            if dry_run {
                ctx.line(format!("[dry-run] Would clear tombstone: {run} (deleted at {ts:.0})"));
            }
        }
        if page < ctx.settings.batch_size {
            break;
        }
        if let Some(stop) = ctx.batch_done(JOB, p.done, dry_run) {
            return Ok(stop);
        }
    }
    if dry_run {
        return Ok(Outcome::Done(format!("[dry-run] would clear {cleared} of {} tombstones", p.done)));
    }
    ctx.finish(JOB).await?;
    ctx.advance(p.done);
    Ok(Outcome::Done(format!("cleared {cleared} tombstones older than {older_than_hours} h ({} visited)", p.done)))
}
