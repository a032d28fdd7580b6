//! `cleanup-orphan-blobs`: deletes the blobs (prefix `{run}/`) of every tombstoned run, in key
//! order of the tombstones, the first `limit` when it is above 0. Tombstones are kept. Works on any
//! [`BlobStore`]: paginated listing, batched deletes, retried with backoff.
//!
//! Only tombstoned runs count as orphans, as in the reference: blobs of a run the store does not
//! know are kept, since an upload may precede its run's first record. A tombstoned run that has
//! meta again (ingested after `clear-tombstone`) keeps its blobs.

use std::time::Duration;

use crate::blobs::{BlobError, BlobStore, MAX_LIST_PAGE, check_prefix};
use crate::storage::kv::RangeOption;
use crate::storage::layout::indexes::DELETED;
use crate::storage::tuple::{self, Elem};

use super::progress::{Ctx, resume_from};
use super::{MaintenanceError, Outcome, tombstones};

const JOB: &str = "cleanup-orphan-blobs";

/// Attempts of one blob request before the job fails (and resumes at its next run).
const BLOB_ATTEMPTS: u32 = 5;

/// Reports a milestone every this many runs, as the reference prints its progress.
const REPORT_EVERY: u64 = 50;

pub async fn run(ctx: &Ctx<'_>, limit: u64, dry_run: bool) -> Result<Outcome, MaintenanceError> {
    let prefix = &ctx.layout.dirs.indexes;
    let scope = [Elem::from(DELETED)];
    let (begin, end) = tuple::range(prefix, &scope);
    let base_len = tuple::pack_with_prefix(prefix, &scope).len();
    let mut p = ctx.resume(JOB, &format!("limit={limit}"), 0.0, dry_run).await?;
    let mut total = ctx.count(&begin, &end).await?;
    if limit > 0 {
        total = total.min(limit);
    }
    ctx.start(JOB, total, p.done);
    let (mut runs, mut objects) = (0u64, 0u64);
    loop {
        let room = if limit > 0 { limit.saturating_sub(p.done) } else { u64::MAX };
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(ctx.settings.batch_size);
        if take == 0 {
            break;
        }
        let page = ctx
            .txn(|tx| {
                let opt = RangeOption::new(resume_from(&p.cursor, &begin), end.clone()).limit(take);
                async move {
                    let mut page = Vec::new();
                    for kv in tx.get_range(&opt, false).await? {
                        let tomb = tombstones::decode(base_len, &kv.key, &kv.value);
                        let alive = match &tomb {
                            Some((run, _)) => ctx.layout.runs.runs.exists(&tx, run, false).await?,
                            None => false,
                        };
                        page.push((kv.key, tomb, alive));
                    }
                    Ok(page)
                }
            })
            .await?;
        let Some((last, _, _)) = page.last() else { break };
        let (last, size) = (last.clone(), page.len());
        for (_, tomb, alive) in page {
            let Some((run, ts)) = tomb else { continue };
            let blob_prefix = format!("{run}/");
            if alive {
                ctx.line(format!("run {run} has a tombstone and data again: its blobs are kept"));
            } else if check_prefix(&blob_prefix).is_err() {
                ctx.line(format!("run id {run:?} cannot name a blob prefix: skipped"));
            } else if dry_run {
                ctx.line(format!("[dry-run] Would delete blob prefix: {blob_prefix} (deleted at {ts:.0})"));
            } else {
                objects += delete_prefix(ctx.blobs, &blob_prefix).await?;
            }
            runs += 1;
            if !dry_run && runs % REPORT_EVERY == 0 {
                ctx.line(format!("deleted the blobs of {runs} runs ({objects} objects)"));
            }
        }
        p.cursor = last;
        p.done += size as u64;
        if dry_run {
            ctx.advance(p.done);
        } else {
            ctx.txn(|tx| {
                let p = &p;
                async move { ctx.save(&tx, JOB, p) }
            })
            .await?;
            if size == take && p.done < total {
                if let Some(stop) = ctx.batch_committed(JOB, p.done) {
                    return Ok(stop);
                }
            } else {
                ctx.advance(p.done);
            }
        }
        if size < take {
            break;
        }
    }
    if dry_run {
        return Ok(Outcome::Done(format!("[dry-run] would delete the blobs of {runs} tombstoned runs")));
    }
    ctx.finish(JOB).await?;
    Ok(Outcome::Done(format!("deleted {objects} objects of {runs} tombstoned runs")))
}

/// Deletes every object under `prefix` page by page; returns how many were listed. Each request
/// is retried with backoff when the store fails; deleting what is gone is harmless.
pub async fn delete_prefix(store: &dyn BlobStore, prefix: &str) -> Result<u64, MaintenanceError> {
    let mut removed = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = retry(|| store.list(prefix, after.as_deref(), MAX_LIST_PAGE)).await?;
        if !page.objects.is_empty() {
            let keys: Vec<String> = page.objects.iter().map(|o| o.key.clone()).collect();
            retry(|| store.delete_many(&keys)).await?;
            removed += keys.len() as u64;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(removed),
        }
    }
}

async fn retry<T, F, Fut>(mut op: F) -> Result<T, BlobError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BlobError>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && attempt < BLOB_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "blob request failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            other => return other,
        }
    }
}
