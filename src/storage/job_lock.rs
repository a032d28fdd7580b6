//! The storage job lock: one key under ⟨ours⟩ that a maintenance job (and `migrate`) holds while it
//! rewrites the store, with a time to live so that a job that dies leaves a lock that expires.
//!
//! Unlike the reference's lock (`⟨system⟩("job_lock", job)` holding only an expiry, one per job
//! name, released by anyone), ours is one lock for every job, names its holder so a refused job
//! can say who runs, and carries a token: only the holder renews or releases it, and every batch
//! transaction of the job reads it ([`JobLock::fence`]), so a job whose lock was taken over after
//! expiring fails its next batch instead of writing beside the new holder.

use std::sync::Arc;
use std::time::Duration;

use crate::storage::kv::{Database, KvError, RetryOptions, RetryableError, Transaction};
use crate::storage::layout::ours::Ours;
use crate::storage::value::{self, Value};

/// Why the lock could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum JobLockError {
    /// Another job holds an unexpired lock.
    #[error(
        "the storage job lock is held by {holder} (job {job}) for {expires_in:.0} s more: another maintenance job is running"
    )]
    Held { job: String, holder: String, expires_in: f64 },
    /// Our lock expired and was taken over, or was removed.
    #[error("the storage job lock was lost (now held by {holder}): this job stops")]
    Lost { holder: String },
    /// The store failed.
    #[error(transparent)]
    Kv(#[from] KvError),
}

impl RetryableError for JobLockError {
    fn kv_error(&self) -> Option<&KvError> {
        match self {
            JobLockError::Kv(e) => Some(e),
            _ => None,
        }
    }
}

/// What the lock key holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LockInfo {
    /// The job's name (`reindex`, `cleanup-tombstones`, ...).
    pub job: String,
    /// Who runs it: `pid N on HOST`.
    pub holder: String,
    /// Random, per acquisition: tells our lock from a later holder's.
    pub token: String,
    /// POSIX seconds after which anyone may take the lock.
    pub expires_at: f64,
}

impl LockInfo {
    fn encode(&self) -> Vec<u8> {
        let map = Value::Map(vec![
            (Value::from("job"), Value::from(self.job.as_str())),
            (Value::from("holder"), Value::from(self.holder.as_str())),
            (Value::from("token"), Value::from(self.token.as_str())),
            (Value::from("expires_at"), Value::Float(self.expires_at)),
        ]);
        // A map of strings and a float always encodes.
        value::encode(&map).unwrap_or_default()
    }

    /// The stored lock; `None` for a value we cannot read, which counts as expired (as the
    /// reference treats an undecodable expiry).
    fn decode(bytes: &[u8]) -> Option<Self> {
        let Ok(Value::Map(entries)) = value::decode(bytes) else { return None };
        let get = |k: &str| entries.iter().find(|(key, _)| key.as_str() == Some(k)).map(|(_, v)| v);
        let text = |k: &str| get(k).and_then(Value::as_str).map(str::to_owned);
        let expires_at = match get("expires_at")? {
            Value::Float(f) => *f,
            Value::Int(i) => *i as f64,
            _ => return None,
        };
        Some(Self { job: text("job")?, holder: text("holder")?, token: text("token")?, expires_at })
    }
}

/// `pid N on HOST`: enough for an operator to find the process.
pub fn this_process() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "an unknown host".to_owned());
    format!("pid {} on {host}", std::process::id())
}

/// A held lock. Release it with [`JobLock::release`]; a lock dropped without release expires.
pub struct JobLock {
    db: Database,
    key: Vec<u8>,
    info: std::sync::Mutex<LockInfo>,
    ttl: Duration,
    retry: RetryOptions,
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock").field("info", &self.info()).field("ttl", &self.ttl).finish()
    }
}

impl JobLock {
    /// Takes the lock for `job` unless another holder's lock is unexpired at `now`.
    pub async fn acquire(
        db: &Database,
        ours: &[u8],
        job: &str,
        holder: &str,
        ttl: Duration,
        now: f64,
        retry: &RetryOptions,
    ) -> Result<Self, JobLockError> {
        let key = Ours::new(ours).job_lock();
        let info = LockInfo {
            job: job.to_owned(),
            holder: holder.to_owned(),
            token: format!("{:032x}", rand::random::<u128>()),
            expires_at: now + ttl.as_secs_f64(),
        };
        db.run(retry, |tx| {
            let (key, info) = (&key, &info);
            async move {
                if let Some(current) = tx.get(key, false).await?.as_deref().and_then(LockInfo::decode)
                    && current.expires_at > now
                    && current.token != info.token
                {
                    return Err(JobLockError::Held {
                        job: current.job,
                        holder: current.holder,
                        expires_in: current.expires_at - now,
                    });
                }
                tx.set(key, &info.encode());
                Ok(())
            }
        })
        .await?;
        Ok(Self { db: db.clone(), key, info: std::sync::Mutex::new(info), ttl, retry: *retry })
    }

    fn token(&self) -> String {
        self.info.lock().map(|i| i.token.clone()).unwrap_or_default()
    }

    /// What the lock holds now, as we last wrote it.
    pub fn info(&self) -> Option<LockInfo> {
        self.info.lock().ok().map(|i| i.clone())
    }

    /// Checks in `tx` that the lock is still ours: every batch of a job calls it, so a batch
    /// commits only while its job holds the lock (a takeover conflicts with it).
    pub async fn fence(&self, tx: &Transaction) -> Result<(), JobLockError> {
        let token = self.token();
        match tx.get(&self.key, false).await?.as_deref().map(LockInfo::decode) {
            Some(Some(current)) if current.token == token => Ok(()),
            Some(Some(current)) => Err(JobLockError::Lost { holder: current.holder }),
            _ => Err(JobLockError::Lost { holder: "nobody".to_owned() }),
        }
    }

    /// Pushes the expiry to `now + ttl`; fails with [`JobLockError::Lost`] if the lock is no
    /// longer ours.
    pub async fn renew(&self, now: f64) -> Result<(), JobLockError> {
        let mut info = self.info.lock().map(|i| i.clone()).map_err(|_| JobLockError::Lost { holder: "?".into() })?;
        info.expires_at = now + self.ttl.as_secs_f64();
        self.db
            .run(&self.retry, |tx| {
                let info = &info;
                async move {
                    self.fence(&tx).await?;
                    tx.set(&self.key, &info.encode());
                    Ok::<_, JobLockError>(())
                }
            })
            .await?;
        if let Ok(mut slot) = self.info.lock() {
            *slot = info;
        }
        Ok(())
    }

    /// Removes the lock if it is still ours (a lock taken over is left to its new holder).
    pub async fn release(&self) -> Result<(), JobLockError> {
        self.db
            .run(&self.retry, |tx| async move {
                match self.fence(&tx).await {
                    Ok(()) => tx.clear(&self.key),
                    Err(JobLockError::Lost { .. }) => {}
                    Err(e) => return Err(e),
                }
                Ok(())
            })
            .await
    }

    /// Renews the lock every third of its TTL until the returned guard is dropped. A renewal that
    /// fails is logged; the job's next batch then fails its fence if the lock was taken over.
    pub fn keep_alive(self: &Arc<Self>) -> KeepAlive {
        let lock = Arc::clone(self);
        let period = (self.ttl / 3).max(Duration::from_millis(100));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = lock.renew(crate::clock::now_secs()).await {
                    tracing::warn!(error = %e, "cannot renew the storage job lock");
                }
            }
        });
        KeepAlive(task)
    }
}

/// Stops the renewals of [`JobLock::keep_alive`] when dropped.
#[derive(Debug)]
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    async fn take(db: &Database, job: &str, now: f64) -> Result<JobLock, JobLockError> {
        JobLock::acquire(db, b"\x15\x09", job, &format!("{job}-holder"), TTL, now, &RetryOptions::default()).await
    }

    #[tokio::test]
    async fn a_second_job_is_refused_with_the_holder_named_until_the_lock_expires() {
        let db = Database::memory();
        let first = take(&db, "reindex", 1000.0).await.unwrap();
        let err = take(&db, "cleanup-tombstones", 1030.0).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("reindex-holder") && text.contains("job reindex"), "{text}");
        assert!(matches!(err, JobLockError::Held { expires_in, .. } if (expires_in - 30.0).abs() < 1e-6));
        let second = take(&db, "cleanup-tombstones", 1061.0).await.expect("an expired lock can be taken");
        let tx = db.create_trx().unwrap();
        assert!(
            matches!(first.fence(&tx).await, Err(JobLockError::Lost { holder }) if holder == "cleanup-tombstones-holder")
        );
        assert!(matches!(first.renew(1062.0).await, Err(JobLockError::Lost { .. })));
        first.release().await.unwrap();
        second.fence(&db.create_trx().unwrap()).await.expect("a stale holder's release leaves the new lock");
    }

    #[tokio::test]
    async fn renewing_pushes_the_expiry_and_release_frees_the_lock() {
        let db = Database::memory();
        let lock = take(&db, "reindex", 1000.0).await.unwrap();
        lock.renew(1050.0).await.unwrap();
        assert!(matches!(take(&db, "other", 1070.0).await, Err(JobLockError::Held { .. })), "renewed to 1110");
        lock.release().await.unwrap();
        take(&db, "other", 1070.0).await.expect("a released lock is free");
    }

    #[tokio::test]
    async fn an_unreadable_lock_value_counts_as_expired() {
        let db = Database::memory();
        let key = Ours::new(b"\x15\x09").job_lock();
        db.run(&RetryOptions::default(), |tx| {
            let key = key.clone();
            async move {
                tx.set(&key, b"\xc1garbage");
                Ok::<_, KvError>(())
            }
        })
        .await
        .unwrap();
        take(&db, "reindex", 1000.0).await.expect("garbage is no lock");
    }

    #[tokio::test]
    async fn a_held_lock_is_renewed_while_its_job_runs() {
        let db = Database::memory();
        // Renewed every second; a renewal leaves two seconds of margin for the check below.
        let ttl = Duration::from_secs(3);
        let retry = RetryOptions::default();
        // Taken long ago: without renewals it would have expired decades ago.
        let lock = Arc::new(JobLock::acquire(&db, b"\x15\x09", "reindex", "h", ttl, 1000.0, &retry).await.unwrap());
        let _renewals = lock.keep_alive();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while lock.info().unwrap().expires_at < 2000.0 {
            assert!(std::time::Instant::now() < deadline, "the lock was never renewed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let other = take(&db, "other", crate::clock::now_secs()).await;
        assert!(matches!(other, Err(JobLockError::Held { .. })), "{other:?}");
    }
}
