//! The public face of the KV contract: [`Database`] and [`Transaction`], dispatching to the local
//! transaction layer (memory, embedded) or to FoundationDB, plus the retry loop.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{KvError, RetryableError};
use super::local::{LocalDb, LocalTxn};
use super::types::{KeyValue, Limits, RangeOption};

/// Which local engine backs the embedded store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddedEngine {
    /// fjall (LSM tree): chosen by the benchmark in docs/adr/0002.
    #[default]
    Fjall,
    /// redb (B-tree).
    Redb,
}

/// Memory and threads of an embedded engine (`[storage]` `cache_bytes`, `memtable_bytes`,
/// `engine_threads`): what it holds in memory grows up to these and no further, whatever the size
/// of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Block cache (fjall) or page cache (redb), filled as blocks are read, not up front.
    pub cache_bytes: u64,
    /// fjall: size at which the write memtable is sealed and flushed; up to four sealed ones wait
    /// for their flush beside the active one, so writes hold at most five of these. fjall records
    /// it when a store is created and keeps it for that store. redb has no memtable.
    pub memtable_bytes: u64,
    /// fjall: background threads flushing memtables and compacting tables. With more than one,
    /// fjall 3's first worker hands every compaction to the others and takes it back from the
    /// channel at once, spinning a core while they compact; one thread does both in turn, faster
    /// on two cores but holding more memory while flushes wait (`config/default.toml` has the
    /// figures). redb has none.
    pub engine_threads: u32,
    /// How often the process gives memory its allocator holds free back to the system, in
    /// milliseconds; 0: never (see [`super::trim`]). One trimmer serves the whole process.
    pub memory_trim_ms: u64,
    /// fjall: its journals together at most. Past it, fjall flushes the memtables that hold the
    /// oldest journal back, so the journal (the disk a running store holds beyond its tables, and
    /// what a crash replays at the next open) stays under it; lower, memtables are flushed before
    /// they are full (`config/default.toml` has the figures). redb has none.
    pub journal_bytes: u64,
}

/// fjall's smallest journal limit (its builder panics below it): the floor of
/// [`EmbeddedOptions::journal_bytes`] and of `storage.journal_bytes`.
pub const MIN_JOURNAL_BYTES: u64 = 64 << 20;

impl Default for EmbeddedOptions {
    /// Equal to the built-in `[storage]` of `config/default.toml` (a config test keeps them equal).
    fn default() -> Self {
        Self {
            cache_bytes: 64 << 20,
            memtable_bytes: 16 << 20,
            engine_threads: 2,
            memory_trim_ms: 1000,
            journal_bytes: 256 << 20,
        }
    }
}

/// Settings of the retry loop ([`Database::run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOptions {
    /// Total time for all attempts; past it the loop fails with `transaction_timed_out`.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retry_limit: u32,
    /// First backoff; doubles per retry with jitter.
    pub initial_backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
}

impl Default for RetryOptions {
    /// A test and tool convenience equal to the built-in `[storage.retry]` of
    /// `config/default.toml` (5 attempts, 50 ms to 2 s backoff, 30 s; a config test keeps them
    /// equal). The request and ingest paths use `RetryConfig::options` of the loaded config.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retry_limit: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

#[derive(Clone)]
enum DbInner {
    Local(Arc<LocalDb>),
    #[cfg(feature = "fdb")]
    Fdb(Arc<super::fdb::FdbDatabase>),
}

/// A transactional key-value database with FoundationDB's semantics and limits.
#[derive(Clone)]
pub struct Database {
    inner: DbInner,
    backend: &'static str,
}

impl Database {
    /// An in-memory database with FoundationDB's limits.
    pub fn memory() -> Self {
        Self::memory_with_limits(Limits::FDB)
    }

    /// An in-memory database with custom limits (tests shorten the lifetime).
    pub fn memory_with_limits(limits: Limits) -> Self {
        Self {
            inner: DbInner::Local(LocalDb::new(Box::<super::memory::MemoryEngine>::default(), limits)),
            backend: "memory",
        }
    }

    /// Opens (creating if needed) the embedded store in `dir`, with the built-in memory settings.
    pub fn open_embedded(dir: &Path, engine: EmbeddedEngine, limits: Limits) -> Result<Self, KvError> {
        Self::open_embedded_with(dir, engine, limits, EmbeddedOptions::default())
    }

    /// Opens (creating if needed) the embedded store in `dir` with the engine's memory set by
    /// `options`.
    pub fn open_embedded_with(
        dir: &Path,
        engine: EmbeddedEngine,
        limits: Limits,
        options: EmbeddedOptions,
    ) -> Result<Self, KvError> {
        super::trim::trim_every(std::time::Duration::from_millis(options.memory_trim_ms));
        let (engine, backend): (Box<dyn super::engine::Engine>, _) = match engine {
            EmbeddedEngine::Fjall => (Box::new(super::fjall_engine::FjallEngine::open(dir, options)?), "fjall"),
            EmbeddedEngine::Redb => (Box::new(super::redb_engine::RedbEngine::open(dir, options)?), "redb"),
        };
        Ok(Self { inner: DbInner::Local(LocalDb::new(engine, limits)), backend })
    }

    /// Opens FoundationDB through `cluster_file` (the default cluster file when `None`).
    #[cfg(feature = "fdb")]
    pub fn open_fdb(cluster_file: Option<&Path>) -> Result<Self, KvError> {
        Ok(Self { inner: DbInner::Fdb(Arc::new(super::fdb::FdbDatabase::open(cluster_file)?)), backend: "fdb" })
    }

    /// The backend's name: `memory`, `fjall`, `redb` or `fdb`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The limits every transaction is held to.
    pub fn limits(&self) -> Limits {
        match &self.inner {
            DbInner::Local(db) => db.limits(),
            #[cfg(feature = "fdb")]
            DbInner::Fdb(_) => Limits::FDB,
        }
    }

    /// Bytes on disk (0 for memory and FoundationDB).
    pub fn disk_bytes(&self) -> u64 {
        match &self.inner {
            DbInner::Local(db) => db.disk_bytes(),
            #[cfg(feature = "fdb")]
            DbInner::Fdb(_) => 0,
        }
    }

    /// What the embedded engine holds in memory, by part (`None` for memory, redb and
    /// FoundationDB, whose memory is not this process's or is not reported).
    pub fn engine_memory(&self) -> Option<super::engine::EngineMemory> {
        match &self.inner {
            DbInner::Local(db) => db.engine_memory(),
            #[cfg(feature = "fdb")]
            DbInner::Fdb(_) => None,
        }
    }

    /// Asks the engine to keep the keys starting with `prefix` apart from the others (a tree of
    /// their own in fjall): for data written once, read once and trimmed, such as the embedded
    /// queue's records, which would otherwise be compacted and cached with the store's data.
    /// Returns whether they are kept apart; `false` where the engine has no such thing (memory,
    /// redb, FoundationDB) or keys under the prefix are already stored with the others.
    pub fn keep_apart(&self, prefix: &[u8]) -> Result<bool, KvError> {
        match &self.inner {
            DbInner::Local(db) => db.keep_apart(prefix),
            #[cfg(feature = "fdb")]
            DbInner::Fdb(_) => Ok(false),
        }
    }

    /// Forgets the keys in `[begin, end)`, which the caller reads and writes no more: the store
    /// frees their space its cheapest way, outside the order of commits, now or at a later call
    /// over them; reads of the range may see any value its keys held, or none
    /// ([`Engine::forget_range`]). fjall drops the tables lying wholly inside the range, which
    /// frees space where the keys are kept apart ([`Database::keep_apart`]) and written in key
    /// order; memory and redb clear the range, FoundationDB clears it in a transaction of its own.
    ///
    /// [`Engine::forget_range`]: super::engine::Engine::forget_range
    pub async fn forget_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        if begin >= end {
            return Ok(());
        }
        match &self.inner {
            DbInner::Local(db) => {
                let (db, begin, end) = (Arc::clone(db), begin.to_vec(), end.to_vec());
                // A drop writes a version file and may wait for the tree's running compaction.
                tokio::task::spawn_blocking(move || db.forget_range(&begin, &end))
                    .await
                    .map_err(|e| KvError::Engine(format!("forget task failed: {e}")))?
            }
            #[cfg(feature = "fdb")]
            DbInner::Fdb(_) => {
                self.run(&RetryOptions::default(), |tx| async move {
                    tx.clear_range(begin, end);
                    Ok::<_, KvError>(())
                })
                .await
            }
        }
    }

    /// Opens (creating if needed) the directory at `path` through the directory layer and returns
    /// its raw key prefix.
    pub async fn open_directory(&self, path: &[&str]) -> Result<Vec<u8>, KvError> {
        match &self.inner {
            DbInner::Local(_) => {
                let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
                self.run(&RetryOptions::default(), |tx| {
                    let path = path.clone();
                    async move {
                        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                        super::directory::create_or_open(&tx, &refs).await
                    }
                })
                .await
            }
            #[cfg(feature = "fdb")]
            DbInner::Fdb(db) => db.open_directory(path).await,
        }
    }

    /// Installs (or with `None` removes) seeded fault injection on a local database's commits;
    /// a FoundationDB database ignores it.
    #[cfg(test)]
    pub fn set_faults(&self, faults: Option<Arc<super::faults::Faults>>) {
        match &self.inner {
            DbInner::Local(db) => db.set_faults(faults),
            #[cfg(feature = "fdb")]
            DbInner::Fdb(_) => {}
        }
    }

    /// The installed fault handle, if any.
    #[cfg(test)]
    fn faults(&self) -> Option<Arc<super::faults::Faults>> {
        match &self.inner {
            DbInner::Local(db) => db.faults(),
            #[cfg(feature = "fdb")]
            DbInner::Fdb(_) => None,
        }
    }

    /// A new transaction. Prefer [`Database::run`], which retries.
    pub fn create_trx(&self) -> Result<Transaction, KvError> {
        Ok(Transaction {
            inner: match &self.inner {
                DbInner::Local(db) => TxnInner::Local(Arc::new(db.create_trx())),
                #[cfg(feature = "fdb")]
                DbInner::Fdb(db) => TxnInner::Fdb(Arc::new(db.create_trx()?)),
            },
        })
    }

    /// Runs `body` in a transaction and commits it, retrying retryable errors with exponential
    /// backoff up to `opts.retry_limit` times and within `opts.timeout`. The body may run more than
    /// once, so it must be idempotent: make ids and timestamps before calling.
    pub async fn run<T, E, F, Fut>(&self, opts: &RetryOptions, mut body: F) -> Result<T, E>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: RetryableError,
    {
        let deadline = Instant::now() + opts.timeout;
        let mut attempt: u32 = 0;
        loop {
            let tx = self.create_trx()?;
            let attempt_fut = async {
                let value = body(tx.clone()).await?;
                tx.commit().await?;
                Ok::<T, E>(value)
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = match tokio::time::timeout(remaining, attempt_fut).await {
                Ok(r) => r,
                Err(_) => {
                    tx.cancel();
                    return Err(KvError::TransactionTimedOut.into());
                }
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retryable = err.kv_error().is_some_and(KvError::is_retryable);
            if !retryable || attempt >= opts.retry_limit {
                return Err(err);
            }
            crate::metrics::kv_retry(err.kv_error().map_or("other", KvError::name));
            #[cfg(not(test))]
            let backoff = backoff(opts, attempt, None::<fn(u64) -> u64>);
            // Under fault injection the jitter comes from the seeded handle, so a simulated run
            // retries at the same virtual instants every time.
            #[cfg(test)]
            let backoff = backoff(opts, attempt, self.faults().map(|f| move |max| f.jitter_micros(max)));
            if Instant::now() + backoff >= deadline {
                return Err(KvError::TransactionTimedOut.into());
            }
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }
}

/// `min(initial * 2^attempt + U(0, initial / 4), max)`, the reference's backoff.
/// `jitter` draws a number in `0..=max` instead of the process's generator.
fn backoff(opts: &RetryOptions, attempt: u32, jitter: Option<impl FnOnce(u64) -> u64>) -> Duration {
    let base = opts.initial_backoff.saturating_mul(1u32 << attempt.min(20));
    let jitter_max = opts.initial_backoff.as_micros() as u64 / 4;
    let jitter = Duration::from_micros(match jitter {
        _ if jitter_max == 0 => 0,
        Some(draw) => draw(jitter_max),
        None => rand::random_range(0..=jitter_max),
    });
    (base + jitter).min(opts.max_backoff)
}

#[derive(Clone)]
enum TxnInner {
    Local(Arc<LocalTxn>),
    #[cfg(feature = "fdb")]
    Fdb(Arc<super::fdb::FdbTransaction>),
}

/// A read-your-writes transaction. Cheap to clone: clones share the transaction.
#[derive(Clone)]
pub struct Transaction {
    inner: TxnInner,
}

impl Transaction {
    /// Reads `key`; a `snapshot` read adds no read conflict.
    pub async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>, KvError> {
        match &self.inner {
            TxnInner::Local(t) => t.get(key, snapshot),
            #[cfg(feature = "fdb")]
            TxnInner::Fdb(t) => t.get(key, snapshot).await,
        }
    }

    /// Reads the pairs of a range (all of them up to `opt.limit`, 0 meaning no limit).
    pub async fn get_range(&self, opt: &RangeOption, snapshot: bool) -> Result<Vec<KeyValue>, KvError> {
        match &self.inner {
            TxnInner::Local(t) => t.get_range(opt, snapshot),
            #[cfg(feature = "fdb")]
            TxnInner::Fdb(t) => t.get_range(opt, snapshot).await,
        }
    }

    /// Sets `key` to `value`. Limit violations surface at commit.
    pub fn set(&self, key: &[u8], value: &[u8]) {
        match &self.inner {
            TxnInner::Local(t) => t.set(key, value),
            #[cfg(feature = "fdb")]
            TxnInner::Fdb(t) => t.set(key, value),
        }
    }

    /// Removes `key`.
    pub fn clear(&self, key: &[u8]) {
        match &self.inner {
            TxnInner::Local(t) => t.clear(key),
            #[cfg(feature = "fdb")]
            TxnInner::Fdb(t) => t.clear(key),
        }
    }

    /// Removes every key in `[begin, end)`.
    pub fn clear_range(&self, begin: &[u8], end: &[u8]) {
        match &self.inner {
            TxnInner::Local(t) => t.clear_range(begin, end),
            #[cfg(feature = "fdb")]
            TxnInner::Fdb(t) => t.clear_range(begin, end),
        }
    }

    /// Adds the little-endian integer `param` to the value of `key`, without a read conflict.
    pub fn atomic_add(&self, key: &[u8], param: &[u8]) {
        match &self.inner {
            TxnInner::Local(t) => t.atomic_add(key, param),
            #[cfg(feature = "fdb")]
            TxnInner::Fdb(t) => t.atomic_add(key, param),
        }
    }

    /// The transaction's size so far, as counted against the 10 MB limit.
    pub async fn approximate_size(&self) -> Result<usize, KvError> {
        match &self.inner {
            TxnInner::Local(t) => Ok(t.approximate_size()),
            #[cfg(feature = "fdb")]
            TxnInner::Fdb(t) => t.approximate_size().await,
        }
    }

    /// Commits the transaction.
    pub async fn commit(&self) -> Result<(), KvError> {
        match &self.inner {
            TxnInner::Local(t) => {
                // Under fault injection: a slow commit waits in (paused) tokio time, and the commit
                // runs inline so no thread scheduling can reorder two commits.
                #[cfg(test)]
                if let Some(faults) = t.faults() {
                    if let Some(delay) = faults.commit_delay() {
                        tokio::time::sleep(delay).await;
                    }
                    return t.commit();
                }
                let t = Arc::clone(t);
                // Engines fsync on commit: keep that off the async worker threads.
                tokio::task::spawn_blocking(move || t.commit())
                    .await
                    .map_err(|e| KvError::Engine(format!("commit task failed: {e}")))?
            }
            #[cfg(feature = "fdb")]
            TxnInner::Fdb(t) => t.commit().await,
        }
    }

    /// Abandons the transaction.
    pub fn cancel(&self) {
        match &self.inner {
            TxnInner::Local(t) => t.cancel(),
            #[cfg(feature = "fdb")]
            TxnInner::Fdb(t) => t.cancel(),
        }
    }
}
