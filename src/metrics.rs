//! The metrics catalogue: every metric name, its labels and help text, declared once.

/// Counts a KV transaction retry by FoundationDB error name.
pub fn kv_retry(error: &'static str) {
    metrics::counter!("matyan_storage_txn_retries_total", "error" => error).increment(1);
}
