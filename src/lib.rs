//! matyan-rs: a Rust backend for the Matyan experiment tracker.
//!
//! Module map:
//! - [`storage`]: the transactional KV contract, its backends (memory, embedded, FoundationDB),
//!   the reference's byte codecs and the Matyan key layout on top;
//! - [`metrics`]: the metrics catalogue;
//! - [`bench`]: benchmarks that print figures.
pub mod bench;
pub mod metrics;
pub mod storage;
