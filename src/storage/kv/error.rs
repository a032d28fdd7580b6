//! Typed errors of the KV layer, numbered as FoundationDB numbers them.

use thiserror::Error;

/// An error from a KV transaction or database, with FoundationDB's error codes so every backend fails
/// the same way for the same cause.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum KvError {
    /// 1007: the transaction's read version is older than the transaction lifetime (5 s).
    #[error("transaction too old (1007): read version older than {lifetime_ms} ms")]
    TransactionTooOld { lifetime_ms: u64 },
    /// 1020: a concurrent transaction wrote a key this transaction read; retry.
    #[error("transaction not committed due to conflict with another transaction (1020)")]
    NotCommitted,
    /// 1021: the commit may or may not have been applied.
    #[error("commit result unknown (1021)")]
    CommitUnknownResult,
    /// 1031: the retry loop's timeout elapsed.
    #[error("operation aborted because the transaction timed out (1031)")]
    TransactionTimedOut,
    /// 1025: the transaction was cancelled or used after commit.
    #[error("operation aborted because the transaction was cancelled (1025)")]
    TransactionCancelled,
    /// 2004: a key at or above `\xff` was written.
    #[error("key outside legal range (2004)")]
    KeyOutsideLegalRange,
    /// 2101: the transaction's affected data exceeds the size limit.
    #[error("transaction exceeds byte limit (2101): {size} bytes > {limit}")]
    TransactionTooLarge { size: usize, limit: usize },
    /// 2102: a key exceeds 10,000 bytes.
    #[error("key length exceeds limit (2102): {size} bytes > {limit}")]
    KeyTooLarge { size: usize, limit: usize },
    /// 2103: a value exceeds 100,000 bytes.
    #[error("value length exceeds limit (2103): {size} bytes > {limit}")]
    ValueTooLarge { size: usize, limit: usize },
    /// 2210: an invalid range (begin after end) was given.
    #[error("inverted range (2005)")]
    InvertedRange,
    /// The storage engine failed (I/O, corruption): not retryable.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// The store is opened by another process.
    #[error("store is locked by another process: {0}")]
    Locked(String),
    /// Any other FoundationDB error, by code.
    #[error("foundationdb error {code}: {message}")]
    Fdb { code: i32, message: String },
}

impl KvError {
    /// FoundationDB's numeric code for this error (4000 `unknown_error` for engine failures).
    pub fn code(&self) -> i32 {
        match self {
            KvError::TransactionTooOld { .. } => 1007,
            KvError::NotCommitted => 1020,
            KvError::CommitUnknownResult => 1021,
            KvError::TransactionCancelled => 1025,
            KvError::TransactionTimedOut => 1031,
            KvError::KeyOutsideLegalRange => 2004,
            KvError::InvertedRange => 2005,
            KvError::TransactionTooLarge { .. } => 2101,
            KvError::KeyTooLarge { .. } => 2102,
            KvError::ValueTooLarge { .. } => 2103,
            KvError::Engine(_) | KvError::Locked(_) => 4000,
            KvError::Fdb { code, .. } => *code,
        }
    }

    /// Whether the retry loop should run the transaction again, as FoundationDB's `on_error` decides
    /// (plus the reference's list of retryable codes: 1004, 1037, 1051, 1213).
    pub fn is_retryable(&self) -> bool {
        matches!(self.code(), 1004 | 1007 | 1020 | 1021 | 1037 | 1051 | 1213)
    }

    /// Whether the commit may have been applied although it reported failure.
    pub fn maybe_committed(&self) -> bool {
        self.code() == 1021
    }

    /// FoundationDB's snake_case name for the error, used as a bounded metric label.
    pub fn name(&self) -> &'static str {
        match self.code() {
            1007 => "transaction_too_old",
            1020 => "not_committed",
            1021 => "commit_unknown_result",
            1025 => "transaction_cancelled",
            1031 => "transaction_timed_out",
            2004 => "key_outside_legal_range",
            2005 => "inverted_range",
            2101 => "transaction_too_large",
            2102 => "key_too_large",
            2103 => "value_too_large",
            _ => "other",
        }
    }
}

/// Errors that a retry loop body may return: the loop must be able to see the KV error inside to
/// decide whether to retry.
pub trait RetryableError: From<KvError> {
    /// The KV error this error wraps, if any.
    fn kv_error(&self) -> Option<&KvError>;
}

impl RetryableError for KvError {
    fn kv_error(&self) -> Option<&KvError> {
        Some(self)
    }
}
