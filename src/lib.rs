//! matyan-rs: a Rust backend for the Matyan experiment tracker.
pub mod storage;
