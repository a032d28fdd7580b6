//! matyan-rs: a Rust backend for the Matyan experiment tracker.
//!
//! Module map:
//! - [`storage`]: the transactional KV contract, its backends (memory, embedded, FoundationDB)
//!   and the Matyan key layout on top;
//! - [`metrics`]: the metrics catalogue.
pub mod metrics;
pub mod storage;
