//! The FoundationDB backend: [`FdbDatabase`] and [`FdbTransaction`] over the `foundationdb` crate
//! (API version 730), with FoundationDB's own directory layer and errors mapped to [`KvError`].
//!
//! FoundationDB enforces the limits, conflicts and read-your-writes itself; this module only adapts
//! the crate's API to the contract in `database.rs`. The network thread is started once per process
//! and stopped (then joined) by an `atexit` handler, as the Python and Ruby bindings do.
//!
//! How to run the KV conformance suite against a cluster is described at the end of this file.

use std::borrow::Cow;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::directory::{Directory, DirectoryError, DirectoryLayer};
use foundationdb::options::{MutationType, StreamingMode, TransactionOption};
use foundationdb::tuple::hca::HcaError;
use foundationdb::{FdbError, KeySelector as FdbKeySelector, RangeOption as FdbRangeOption};
use parking_lot::Mutex;

use super::error::KvError;
use super::types::{KeySelector, KeyValue, Limits, RangeOption};

/// The API version this backend is written against (FoundationDB 7.3).
const API_VERSION: i32 = 730;

/// Total time and retries for one `open_directory` call, as [`super::RetryOptions`]'s defaults.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(30);
const DIRECTORY_RETRY_LIMIT: i32 = 5;

/// The network thread's stop guard, created by the first [`FdbDatabase::open`]. Selecting the API
/// version and starting the network can each happen only once per process, so a failure is kept
/// and returned to every later caller rather than retried.
static NETWORK: OnceLock<Result<Mutex<Option<NetworkAutoStop>>, KvError>> = OnceLock::new();

unsafe extern "C" {
    /// The C library's `atexit`: std links it on every platform FoundationDB supports.
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

/// Stops the network and joins its thread at process exit. libfdb_c requires this before exit
/// (apple/foundationdb#3015): its global destructors must not run under a live network thread.
extern "C" fn stop_network_at_exit() {
    let Some(Ok(guard)) = NETWORK.get() else {
        return;
    };
    // Nothing else ever locks the guard; `try_lock` only keeps a pathological exit from hanging.
    let Some(network) = guard.try_lock().and_then(|mut g| g.take()) else {
        return;
    };
    // Unwinding out of an `extern "C"` function aborts; a failed join at exit is not worth that.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(network)));
}

fn boot_network() -> Result<(), KvError> {
    let network = NETWORK.get_or_init(|| {
        let builder = FdbApiBuilder::default().set_runtime_version(API_VERSION).build().map_err(map_err)?;
        // SAFETY: `boot` requires the returned guard to be dropped before the process exits. It is
        // kept in `NETWORK` and dropped by `stop_network_at_exit`, registered right below; an
        // aborting process needs no stop.
        let guard = unsafe { builder.boot() }.map_err(map_err)?;
        // SAFETY: registering a plain `extern "C" fn()` with the C library has no preconditions.
        if unsafe { atexit(stop_network_at_exit) } != 0 {
            // Without the handler the network thread would outlive `main`: stop it now and fail.
            drop(guard);
            return Err(KvError::Engine("fdb: cannot register the network's exit handler".into()));
        }
        Ok(Mutex::new(Some(guard)))
    });
    network.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Maps a FoundationDB error to the typed [`KvError`] of the same code. FoundationDB does not
/// report the sizes behind 2101-2103, so those carry `size: 0` and FoundationDB's limit.
fn map_err(err: FdbError) -> KvError {
    let limits = Limits::FDB;
    match err.code() {
        1007 => KvError::TransactionTooOld { lifetime_ms: limits.txn_lifetime.as_millis() as u64 },
        1020 => KvError::NotCommitted,
        1021 => KvError::CommitUnknownResult,
        1025 => KvError::TransactionCancelled,
        1031 => KvError::TransactionTimedOut,
        2004 => KvError::KeyOutsideLegalRange,
        2005 => KvError::InvertedRange,
        2101 => KvError::TransactionTooLarge { size: 0, limit: limits.max_txn_bytes },
        2102 => KvError::KeyTooLarge { size: 0, limit: limits.max_key_bytes },
        2103 => KvError::ValueTooLarge { size: 0, limit: limits.max_value_bytes },
        code => KvError::Fdb { code, message: err.message().to_string() },
    }
}

/// Maps a directory-layer error: FoundationDB errors by code, the layer's own as engine errors.
fn map_dir_err(err: DirectoryError) -> KvError {
    match err {
        DirectoryError::FdbError(e) | DirectoryError::HcaError(HcaError::FdbError(e)) => map_err(e),
        other => KvError::Engine(format!("fdb directory layer: {other:?}")),
    }
}

fn selector(sel: &KeySelector) -> FdbKeySelector<'static> {
    // Both selectors of the contract have offset 1: `first_greater_or_equal(k)` is `(k, false, 1)`
    // and `first_greater_than(k)` is `(k, true, 1)`, exactly FoundationDB's encoding.
    FdbKeySelector::new(Cow::Owned(sel.key().to_vec()), sel.or_equal(), 1)
}

/// A FoundationDB database handle.
pub struct FdbDatabase {
    db: foundationdb::Database,
}

impl FdbDatabase {
    /// Starts the client network (once per process) and opens the cluster named by `cluster_file`,
    /// or the default cluster file when `None`.
    pub fn open(cluster_file: Option<&Path>) -> Result<Self, KvError> {
        let path = match cluster_file {
            None => None,
            Some(p) => match p.to_str() {
                // The crate panics on an interior NUL; refuse it here instead.
                Some(s) if !s.contains('\0') => Some(s),
                _ => {
                    return Err(KvError::Engine(format!(
                        "fdb: cluster file path is not valid utf-8 without nul bytes: {}",
                        p.display()
                    )));
                }
            },
        };
        boot_network()?;
        let db = foundationdb::Database::new(path).map_err(map_err)?;
        Ok(Self { db })
    }

    /// A new transaction.
    pub fn create_trx(&self) -> Result<FdbTransaction, KvError> {
        let trx = self.db.create_trx().map_err(map_err)?;
        Ok(FdbTransaction { trx: Mutex::new(Some(trx)) })
    }

    /// Opens (creating if needed) the directory at `path` with the crate's directory layer (node
    /// subspace `\xfe`, no layer) and returns its raw content prefix. Runs in its own transaction,
    /// retried through FoundationDB's `on_error` within a timeout and a retry limit.
    pub async fn open_directory(&self, path: &[&str]) -> Result<Vec<u8>, KvError> {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        let layer = DirectoryLayer::default();
        let mut trx = self.db.create_trx().map_err(map_err)?;
        // Both options survive the resets done by `on_error` (API version 610 and later).
        trx.set_option(TransactionOption::Timeout(DIRECTORY_TIMEOUT.as_millis() as i32)).map_err(map_err)?;
        trx.set_option(TransactionOption::RetryLimit(DIRECTORY_RETRY_LIMIT)).map_err(map_err)?;
        loop {
            // `on_error` backs off and resets for retryable errors and returns the error otherwise.
            trx = match layer.create_or_open(&trx, &path, None, None).await {
                Ok(dir) => {
                    let prefix = dir.bytes().map_err(map_dir_err)?.to_vec();
                    match trx.commit().await {
                        Ok(_) => return Ok(prefix),
                        Err(e) => e.on_error().await.map_err(map_err)?,
                    }
                }
                Err(DirectoryError::FdbError(e) | DirectoryError::HcaError(HcaError::FdbError(e))) => {
                    trx.on_error(e).await.map_err(map_err)?
                }
                Err(other) => return Err(map_dir_err(other)),
            };
        }
    }
}

/// A FoundationDB transaction shared by the clones of a [`super::Transaction`]. The crate's
/// `commit` and `cancel` consume the transaction, so it is kept in an `Option`: once taken, every
/// later use fails with `transaction_cancelled` (1025), as FoundationDB does after commit.
///
/// The lock is held only to start an operation: the crate's read futures own their FDB future and
/// do not borrow the transaction, so they are awaited without the lock.
pub struct FdbTransaction {
    trx: Mutex<Option<foundationdb::Transaction>>,
}

impl FdbTransaction {
    /// Runs `f` on the live transaction, or fails with `transaction_cancelled` after commit/cancel.
    fn with<T>(&self, f: impl FnOnce(&foundationdb::Transaction) -> T) -> Result<T, KvError> {
        let guard = self.trx.lock();
        guard.as_ref().map(f).ok_or(KvError::TransactionCancelled)
    }

    /// Reads `key`; a `snapshot` read adds no read conflict.
    pub async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>, KvError> {
        let fut = self.with(|t| t.get(key, snapshot))?;
        Ok(fut.await.map_err(map_err)?.map(|v| v.to_vec()))
    }

    /// Reads a range to the end (or to `opt.limit` pairs), fetching batch after batch.
    pub async fn get_range(&self, opt: &RangeOption, snapshot: bool) -> Result<Vec<KeyValue>, KvError> {
        // Offset-1 selectors select exactly the keys in `[begin.resolve(), end.resolve())`, so an
        // empty or inverted range reads nothing, as on the local backends (and adds no conflict).
        let (begin, end) = opt.bounds();
        if begin >= end {
            self.with(|_| ())?;
            return Ok(Vec::new());
        }
        let mut next = Some(FdbRangeOption {
            begin: selector(&opt.begin),
            end: selector(&opt.end),
            limit: (opt.limit > 0).then_some(opt.limit),
            reverse: opt.reverse,
            // The caller wants every selected pair now: let the client fetch large batches.
            mode: StreamingMode::WantAll,
            ..FdbRangeOption::default()
        });
        let mut out = Vec::new();
        let mut iteration = 1;
        while let Some(range) = next {
            let fut = self.with(|t| t.get_range(&range, iteration, snapshot))?;
            let values = fut.await.map_err(map_err)?;
            out.extend(values.iter().map(|kv| KeyValue { key: kv.key().to_vec(), value: kv.value().to_vec() }));
            // Moves `begin` (or `end` when reversed) past the last pair and lowers the limit; `None`
            // once the range or the limit is exhausted.
            next = range.next_range(&values);
            iteration += 1;
        }
        Ok(out)
    }

    /// Sets `key` to `value`. Limit violations surface at commit, as FoundationDB reports them.
    pub fn set(&self, key: &[u8], value: &[u8]) {
        let _ = self.with(|t| t.set(key, value));
    }

    /// Removes `key`.
    pub fn clear(&self, key: &[u8]) {
        let _ = self.with(|t| t.clear(key));
    }

    /// Removes every key in `[begin, end)`.
    pub fn clear_range(&self, begin: &[u8], end: &[u8]) {
        let _ = self.with(|t| t.clear_range(begin, end));
    }

    /// Adds the little-endian integer `param` to the value of `key` (`ADD` mutation).
    pub fn atomic_add(&self, key: &[u8], param: &[u8]) {
        let _ = self.with(|t| t.atomic_op(key, param, MutationType::Add));
    }

    /// FoundationDB's estimate of the transaction's size (mutations plus conflict ranges).
    pub async fn approximate_size(&self) -> Result<usize, KvError> {
        let fut = self.with(|t| t.get_approximate_size())?;
        let size = fut.await.map_err(map_err)?;
        Ok(usize::try_from(size).unwrap_or(0))
    }

    /// Commits. The transaction is consumed whatever the outcome: a retry needs a new one.
    pub async fn commit(&self) -> Result<(), KvError> {
        let trx = self.trx.lock().take().ok_or(KvError::TransactionCancelled)?;
        trx.commit().await.map(drop).map_err(|e| map_err(*e))
    }

    /// Cancels the transaction: pending reads fail with `transaction_cancelled`; later calls too.
    pub fn cancel(&self) {
        let taken = self.trx.lock().take();
        if let Some(trx) = taken {
            drop(trx.cancel());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_keep_foundationdb_encoding() {
        let ge = selector(&KeySelector::first_greater_or_equal(b"k".to_vec()));
        assert_eq!((ge.key(), ge.or_equal(), ge.offset()), (&b"k"[..], false, 1));
        let gt = selector(&KeySelector::first_greater_than(b"k".to_vec()));
        assert_eq!((gt.key(), gt.or_equal(), gt.offset()), (&b"k"[..], true, 1));
    }

    #[test]
    fn known_codes_map_to_typed_errors() {
        for code in [1007, 1020, 1021, 1025, 1031, 2004, 2005, 2101, 2102, 2103] {
            let err = map_err(FdbError::from_code(code));
            assert_eq!(err.code(), code);
            assert!(!matches!(err, KvError::Fdb { .. }), "{code} is typed");
        }
        assert!(map_err(FdbError::from_code(1020)).is_retryable());
        assert!(map_err(FdbError::from_code(1021)).maybe_committed());
    }
}

// Running the conformance suite against a real cluster
// ------------------------------------------------------
//
// `tests/kv_conformance.rs` instantiates the backend-independent suite for FoundationDB (module
// `fdb`) when built with `--features fdb`; each case skips itself unless `FDB_CLUSTER_FILE` names a
// cluster file. Type-checking needs only libclang (bindgen in foundationdb-sys); building and running
// any test binary with `--features fdb` also needs libfdb_c 7.3 to link and load, cluster or not:
//
// ```sh
// apt-get install -y libclang-dev
// # libfdb_c: the foundationdb-clients 7.3.x package from https://github.com/apple/foundationdb/releases
// # (installs /usr/lib/libfdb_c.so); elsewhere, set FDB_CLIENT_LIB_PATH at build time and
// # LD_LIBRARY_PATH at run time. A throwaway local cluster: foundationdb-server 7.3.x, then
// # `fdbcli --exec "configure new single memory"` if the database is not configured yet.
// FDB_CLUSTER_FILE=/etc/foundationdb/fdb.cluster cargo test --features fdb --test kv_conformance fdb::
// ```
//
// The suite writes under the directory `("matyan_rs_tests", "fdb")` and also opens `("data", "runs")`,
// `("data", "indexes")` and `("system",)`: do not point it at a production cluster.
