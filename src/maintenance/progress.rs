//! A job's saved progress (⟨ours⟩ `("job_progress", job)`) and [`Ctx`], the batch context every
//! job runs in: each batch is one fenced transaction that also saves the progress it reached.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::blobs::BlobStore;
use crate::storage::job_lock::JobLock;
use crate::storage::kv::{Database, RangeOption, Transaction};
use crate::storage::layout::ours::Ours;
use crate::storage::layout::{Layout, LayoutError};
use crate::storage::value::{self, Value};

use super::{Event, MaintenanceError, Outcome, Reporter, Settings};

/// How far a job got. Saved in the transaction of each batch, cleared when the job ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The flags the job was started with: progress saved under other flags is not resumed.
    pub params: String,
    /// The job's phase (reindex has several).
    pub phase: u32,
    /// The last key (or archive line, or run) done; empty before the first batch.
    pub cursor: Vec<u8>,
    /// Items visited so far.
    pub done: u64,
    /// The time bound the job decided at its start (tombstone age, stale age), kept on resume so
    /// that a resumed job applies the same one.
    pub cutoff: f64,
    /// When the job started first.
    pub started_at: f64,
}

impl Progress {
    fn encode(&self) -> Result<Vec<u8>, LayoutError> {
        let map = Value::Map(vec![
            (Value::from("params"), Value::from(self.params.as_str())),
            (Value::from("phase"), Value::Int(i128::from(self.phase))),
            (Value::from("cursor"), Value::Bin(self.cursor.clone())),
            (Value::from("done"), Value::Int(i128::from(self.done))),
            (Value::from("cutoff"), Value::Float(self.cutoff)),
            (Value::from("started_at"), Value::Float(self.started_at)),
        ]);
        value::encode(&map).map_err(|e| LayoutError::Encode(e.to_string()))
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let Ok(Value::Map(entries)) = value::decode(bytes) else { return None };
        let get = |k: &str| entries.iter().find(|(key, _)| key.as_str() == Some(k)).map(|(_, v)| v);
        let int = |k: &str| match get(k) {
            Some(Value::Int(i)) => u64::try_from(*i).ok(),
            _ => None,
        };
        let float = |k: &str| match get(k) {
            Some(Value::Float(f)) => Some(*f),
            Some(Value::Int(i)) => Some(*i as f64),
            _ => None,
        };
        Some(Self {
            params: get("params")?.as_str()?.to_owned(),
            phase: u32::try_from(int("phase")?).ok()?,
            cursor: match get("cursor")? {
                Value::Bin(b) => b.clone(),
                _ => return None,
            },
            done: int("done")?,
            cutoff: float("cutoff")?,
            started_at: float("started_at")?,
        })
    }
}

/// What a job runs with: the store, the blobs, its budgets, its lock and its reporter.
pub struct Ctx<'a> {
    pub db: &'a Database,
    pub layout: &'a Layout,
    pub blobs: &'a dyn BlobStore,
    pub settings: &'a Settings,
    pub(super) lock: &'a JobLock,
    pub(super) reporter: &'a dyn Reporter,
    /// Stop after this many committed batches.
    pub(super) max_batches: Option<u64>,
    /// Set by a stop request: the job ends after its current batch.
    pub(super) stop: &'a AtomicBool,
    /// Batches committed so far.
    pub(super) batches: AtomicU64,
}

impl<'a> Ctx<'a> {
    /// Runs `body` in a transaction that commits only while this job holds the lock (retrying
    /// conflicts). `body` may run more than once: it must compute everything from its reads.
    pub async fn txn<T, F, Fut>(&self, mut body: F) -> Result<T, MaintenanceError>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T, MaintenanceError>>,
    {
        self.db
            .run(&self.settings.retry, |tx| {
                let fut = body(tx.clone());
                async move {
                    self.lock.fence(&tx).await?;
                    fut.await
                }
            })
            .await
    }

    /// Whether the writes of `tx` reached the batch's byte budget.
    pub async fn full(&self, tx: &Transaction) -> Result<bool, MaintenanceError> {
        Ok(tx.approximate_size().await? >= self.settings.max_txn_bytes)
    }

    /// The saved progress of `job` when it was saved under the same `params`, else a fresh one
    /// with `cutoff`. Progress saved under other flags is dropped with a log line. A dry run
    /// always starts fresh: it shows everything the job would do from the beginning.
    pub async fn resume(
        &self,
        job: &str,
        params: &str,
        cutoff: f64,
        dry_run: bool,
    ) -> Result<Progress, MaintenanceError> {
        let fresh = Progress {
            params: params.to_owned(),
            phase: 0,
            cursor: Vec::new(),
            done: 0,
            cutoff,
            started_at: crate::clock::now_secs(),
        };
        if dry_run {
            return Ok(fresh);
        }
        let key = Ours::new(&self.layout.dirs.ours).job_progress(job);
        let saved = self.txn(|tx| {
            let key = key.clone();
            async move { Ok(tx.get(&key, false).await?) }
        });
        Ok(match saved.await?.as_deref().map(Progress::decode) {
            Some(Some(p)) if p.params == params => {
                self.line(format!("resuming {job} after {} items (saved progress)", p.done));
                p
            }
            Some(_) => {
                self.line(format!("dropping the saved progress of {job}: it was started with other flags"));
                fresh
            }
            None => fresh,
        })
    }

    /// Writes `p` in `tx` (the batch's own transaction).
    pub fn save(&self, tx: &Transaction, job: &str, p: &Progress) -> Result<(), MaintenanceError> {
        tx.set(&Ours::new(&self.layout.dirs.ours).job_progress(job), &p.encode()?);
        Ok(())
    }

    /// Removes the saved progress of `job`: it finished.
    pub async fn finish(&self, job: &str) -> Result<(), MaintenanceError> {
        let key = Ours::new(&self.layout.dirs.ours).job_progress(job);
        self.txn(|tx| {
            tx.clear(&key);
            async { Ok(()) }
        })
        .await
    }

    /// Counts the keys of `[begin, end)` in pages, one transaction each (for the progress total).
    pub async fn count(&self, begin: &[u8], end: &[u8]) -> Result<u64, MaintenanceError> {
        const PAGE: usize = 10_000;
        let mut n = 0u64;
        let mut from = begin.to_vec();
        loop {
            let kvs = self
                .txn(|tx| {
                    let opt = RangeOption::new(from.clone(), end.to_vec()).limit(PAGE);
                    async move { Ok(tx.get_range(&opt, true).await?) }
                })
                .await?;
            n += kvs.len() as u64;
            match kvs.last() {
                Some(last) if kvs.len() == PAGE => from = key_after(&last.key),
                _ => return Ok(n),
            }
        }
    }

    /// Counts one committed batch; `Some(outcome)` when the batch limit or a stop request says to
    /// stop here.
    pub fn batch_committed(&self, job: &str, done: u64) -> Option<Outcome> {
        let n = self.batches.fetch_add(1, Ordering::Relaxed) + 1;
        self.reporter.event(Event::Progress { done });
        if self.stop.load(Ordering::Relaxed) {
            return Some(Outcome::Stopped(format!(
                "{job} stopped on request after {n} batches ({done} items); run it again to resume"
            )));
        }
        match self.max_batches {
            Some(max) if n >= max => Some(Outcome::Stopped(format!(
                "{job} stopped after {n} batches ({done} items); run it again to resume"
            ))),
            _ => None,
        }
    }

    /// Ends one batch: a dry run (which commits nothing) only reports its progress; a real batch
    /// is counted by [`Ctx::batch_committed`], whose `Some(outcome)` says to stop here.
    pub fn batch_done(&self, job: &str, done: u64, dry_run: bool) -> Option<Outcome> {
        if dry_run {
            self.advance(done);
            None
        } else {
            self.batch_committed(job, done)
        }
    }

    /// Announces the job's start.
    pub fn start(&self, job: &str, total: u64, resumed_at: u64) {
        self.reporter.event(Event::Start { job: job.to_owned(), total, resumed_at });
    }

    /// Progress without a batch (dry runs).
    pub fn advance(&self, done: u64) {
        self.reporter.event(Event::Progress { done });
    }

    /// A line for the operator.
    pub fn line(&self, text: String) {
        self.reporter.event(Event::Line { text });
    }
}

/// The first key after `key`.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// Where a range scan resumes: `begin` before the first batch, else just after `cursor`.
pub fn resume_from(cursor: &[u8], begin: &[u8]) -> Vec<u8> {
    if cursor.is_empty() { begin.to_vec() } else { key_after(cursor) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_garbage_is_no_progress() {
        let p = Progress {
            params: "older_than_hours=0".into(),
            phase: 2,
            cursor: vec![0, 1, 255],
            done: 12,
            cutoff: 1.5,
            started_at: 1000.0,
        };
        assert_eq!(Progress::decode(&p.encode().unwrap()), Some(p));
        assert_eq!(Progress::decode(b"\xc1"), None);
    }
}
