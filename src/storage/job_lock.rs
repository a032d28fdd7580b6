//! The storage job lock: one key under ⟨ours⟩ that a maintenance job (and `migrate`) holds while it
//! rewrites the store, with a time to live so that a job that dies leaves a lock that expires.
//!
//! Unlike the reference's lock (`⟨system⟩("job_lock", job)` holding only an expiry, one per job
//! name, released by anyone), ours is one lock for every job, names its holder so a refused job
//! can say who runs, and carries a token: only the holder renews or releases it, and every batch
//! transaction of the job reads it ([`JobLock::fence`]), so a job whose lock was taken over after
//! expiring fails its next batch instead of writing beside the new holder.
//!
//! The jobs the reference also runs as CronJobs (`cleanup_orphan_blobs`, `cleanup_tombstones`,
//! `ingest-storage.md` §2.7) hold the reference's key too, so a Python CronJob on the same cluster
//! and ours exclude each other: taking the lock is refused while that key holds an unexpired
//! expiry, and otherwise writes it with our expiry in the same transaction; renewals move both
//! expiries together, release clears both, and the fence also checks that the reference's key
//! still holds our expiry (a Python job that took it over after it expired writes its own).

use std::sync::Arc;
use std::time::Duration;

use crate::storage::kv::{Database, KvError, RetryOptions, RetryableError, Transaction};
use crate::storage::layout::dirs::SYSTEM_PATH;
use crate::storage::layout::ours::Ours;
use crate::storage::layout::system::System;
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

/// The reference's name of a job it also runs under its own lock (§2.7), `None` for a job only we
/// run.
fn reference_job(job: &str) -> Option<&'static str> {
    match job {
        "cleanup-orphan-blobs" | "cleanup_orphan_blobs" => Some("cleanup_orphan_blobs"),
        "cleanup-tombstones" | "cleanup_tombstones" => Some("cleanup_tombstones"),
        _ => None,
    }
}

/// What a refusal or a loss names as the holder of the reference's lock: it records none.
fn reference_holder(job: &str) -> String {
    format!("a reference job ({job}, no holder recorded)")
}

/// The reference's lock of one job: `⟨system⟩("job_lock", job)` = mp(expiry float).
#[derive(Debug, Clone)]
struct ReferenceLock {
    job: &'static str,
    key: Vec<u8>,
}

impl ReferenceLock {
    /// The expiry stored, as the reference reads it: an int or a float; anything else (or
    /// nothing) counts as no lock.
    async fn expiry(&self, tx: &Transaction) -> Result<Option<f64>, KvError> {
        Ok(match tx.get(&self.key, false).await?.map(|b| value::decode(&b)) {
            Some(Ok(Value::Float(f))) => Some(f),
            Some(Ok(Value::Int(i))) => Some(i as f64),
            _ => None,
        })
    }

    fn set(&self, tx: &Transaction, expires_at: f64) {
        let mut buf = Vec::with_capacity(9);
        value::encode_f64(expires_at, &mut buf);
        tx.set(&self.key, &buf);
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
    /// The reference's key of the same job, held alongside ours (see the module docs).
    reference: Option<ReferenceLock>,
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
    /// Takes the lock for `job` unless another holder's lock is unexpired at `now`; for a job the
    /// reference also runs, unless the reference's lock of that job is unexpired too, and that one
    /// is then written with our expiry in the same transaction.
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
        let reference = match reference_job(job) {
            Some(name) => {
                let system = System::new(&db.open_directory(SYSTEM_PATH).await?);
                Some(ReferenceLock { job: name, key: system.job_lock_key(name) })
            }
            None => None,
        };
        let info = LockInfo {
            job: job.to_owned(),
            holder: holder.to_owned(),
            token: format!("{:032x}", rand::random::<u128>()),
            expires_at: now + ttl.as_secs_f64(),
        };
        db.run(retry, |tx| {
            let (key, info, reference) = (&key, &info, &reference);
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
                if let Some(reference) = reference {
                    // Our own expiry is ours: this body may run again after an unknown commit.
                    if let Some(expiry) = reference.expiry(&tx).await?
                        && expiry > now
                        && expiry != info.expires_at
                    {
                        return Err(JobLockError::Held {
                            job: reference.job.to_owned(),
                            holder: reference_holder(reference.job),
                            expires_in: expiry - now,
                        });
                    }
                    reference.set(&tx, info.expires_at);
                }
                tx.set(key, &info.encode());
                Ok(())
            }
        })
        .await?;
        Ok(Self { db: db.clone(), key, reference, info: std::sync::Mutex::new(info), ttl, retry: *retry })
    }

    fn token(&self) -> String {
        self.info.lock().map(|i| i.token.clone()).unwrap_or_default()
    }

    /// What the lock holds now, as we last wrote it.
    pub fn info(&self) -> Option<LockInfo> {
        self.info.lock().ok().map(|i| i.clone())
    }

    /// Checks in `tx` that the lock is still ours: every batch of a job calls it, so a batch
    /// commits only while its job holds the lock (a takeover conflicts with it). With the
    /// reference's key held too, that key must still hold the expiry our key holds: both are
    /// written in one transaction, so anything else means another process wrote or cleared it.
    pub async fn fence(&self, tx: &Transaction) -> Result<(), JobLockError> {
        let token = self.token();
        let ours = match tx.get(&self.key, false).await?.as_deref().map(LockInfo::decode) {
            Some(Some(current)) if current.token == token => current,
            Some(Some(current)) => return Err(JobLockError::Lost { holder: current.holder }),
            _ => return Err(JobLockError::Lost { holder: "nobody".to_owned() }),
        };
        if let Some(reference) = &self.reference {
            match reference.expiry(tx).await? {
                Some(expiry) if expiry == ours.expires_at => {}
                Some(_) => return Err(JobLockError::Lost { holder: reference_holder(reference.job) }),
                None => return Err(JobLockError::Lost { holder: "nobody".to_owned() }),
            }
        }
        Ok(())
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
                    if let Some(reference) = &self.reference {
                        reference.set(&tx, info.expires_at);
                    }
                    Ok::<_, JobLockError>(())
                }
            })
            .await?;
        if let Ok(mut slot) = self.info.lock() {
            *slot = info;
        }
        Ok(())
    }

    /// Removes the lock (and the reference's key it holds) if it is still ours (a lock taken over
    /// is left to its new holder).
    pub async fn release(&self) -> Result<(), JobLockError> {
        self.db
            .run(&self.retry, |tx| async move {
                match self.fence(&tx).await {
                    Ok(()) => {
                        tx.clear(&self.key);
                        if let Some(reference) = &self.reference {
                            tx.clear(&reference.key);
                        }
                    }
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
    use crate::storage::tuple::Elem;

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

    /// The reference's key of `job`, packed as its `jobs/lock.py` packs it under ⟨system⟩.
    async fn reference_key(db: &Database, job: &str) -> Vec<u8> {
        let system = db.open_directory(SYSTEM_PATH).await.unwrap();
        crate::storage::tuple::pack_with_prefix(&system, &[Elem::from("job_lock"), Elem::from(job)])
    }

    /// msgpack float64, as Python's msgpack packs `time.time() + ttl`.
    fn mp_float(f: f64) -> Vec<u8> {
        [&[0xcb][..], &f.to_be_bytes()].concat()
    }

    async fn write_raw(db: &Database, key: &[u8], value: &[u8]) {
        db.run(&RetryOptions::default(), |tx| async move {
            tx.set(key, value);
            Ok::<_, KvError>(())
        })
        .await
        .unwrap();
    }

    async fn read_raw(db: &Database, key: &[u8]) -> Option<Vec<u8>> {
        db.create_trx().unwrap().get(key, false).await.unwrap()
    }

    /// The reference's `try_acquire(job, ttl)`, one transaction.
    async fn python_try_acquire(db: &Database, job: &str, now: f64, ttl: f64) -> bool {
        let system = System::new(&db.open_directory(SYSTEM_PATH).await.unwrap());
        let system = &system;
        db.run(&RetryOptions::default(), |tx| async move { system.try_acquire_job_lock(&tx, job, now, ttl).await })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_reference_cronjobs_unexpired_lock_refuses_our_job_of_the_same_name_and_only_that_one() {
        let db = Database::memory();
        let key = reference_key(&db, "cleanup_tombstones").await;
        write_raw(&db, &key, &mp_float(1600.0)).await;
        let err = take(&db, "cleanup-tombstones", 1000.0).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cleanup_tombstones") && text.contains("reference"), "{text}");
        assert!(matches!(err, JobLockError::Held { expires_in, .. } if (expires_in - 600.0).abs() < 1e-6));
        let other = take(&db, "reindex", 1000.0).await.expect("a job the reference does not run ignores its lock");
        other.release().await.unwrap();
        assert_eq!(read_raw(&db, &key).await, Some(mp_float(1600.0)), "left as the reference wrote it");

        // An int expiry is a lock too; an expired one is taken over and holds our expiry.
        write_raw(&db, &key, &[0xcd, 0x07, 0xd0]).await; // mp(2000)
        assert!(matches!(take(&db, "cleanup-tombstones", 1500.0).await, Err(JobLockError::Held { .. })));
        let lock = take(&db, "cleanup-tombstones", 2001.0).await.expect("an expired reference lock is free");
        assert_eq!(read_raw(&db, &key).await, Some(mp_float(2061.0)));
        lock.release().await.unwrap();
        assert_eq!(read_raw(&db, &key).await, None);
    }

    #[tokio::test]
    async fn our_job_writes_the_reference_key_so_a_reference_cronjob_is_refused_until_we_release_it() {
        let db = Database::memory();
        let key = reference_key(&db, "cleanup_orphan_blobs").await;
        let lock = take(&db, "cleanup-orphan-blobs", 1000.0).await.unwrap();
        assert_eq!(read_raw(&db, &key).await, Some(mp_float(1060.0)), "mp(expiry float) at the reference's key");
        assert!(!python_try_acquire(&db, "cleanup_orphan_blobs", 1030.0, 600.0).await, "the CronJob sees our lock");
        lock.renew(1050.0).await.unwrap();
        assert_eq!(read_raw(&db, &key).await, Some(mp_float(1110.0)), "renewed with ours");
        assert!(!python_try_acquire(&db, "cleanup_orphan_blobs", 1100.0, 600.0).await);
        lock.fence(&db.create_trx().unwrap()).await.expect("still ours");
        lock.release().await.unwrap();
        assert_eq!(read_raw(&db, &key).await, None, "released with ours");
        assert!(python_try_acquire(&db, "cleanup_orphan_blobs", 1100.0, 600.0).await, "free for the CronJob");
    }

    #[tokio::test]
    async fn a_reference_cronjob_taking_over_our_expired_lock_fences_our_next_batch_out() {
        let db = Database::memory();
        let key = reference_key(&db, "cleanup_tombstones").await;
        let lock = take(&db, "cleanup-tombstones", 1000.0).await.unwrap();
        assert!(python_try_acquire(&db, "cleanup_tombstones", 1070.0, 600.0).await, "ours expired at 1060");
        let lost = lock.fence(&db.create_trx().unwrap()).await;
        assert!(
            matches!(&lost, Err(JobLockError::Lost { holder }) if holder.contains("cleanup_tombstones")),
            "{lost:?}"
        );
        assert!(matches!(lock.renew(1071.0).await, Err(JobLockError::Lost { .. })));
        lock.release().await.unwrap();
        assert_eq!(read_raw(&db, &key).await, Some(mp_float(1670.0)), "the CronJob's lock stays");
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
