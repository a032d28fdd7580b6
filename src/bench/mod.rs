//! Benchmarks that print figures (`matyan bench ...`): measured against a baseline in the same run,
//! never asserted by timed tests.
pub mod control;
pub mod decode;
pub mod disk;
pub mod gateway;
pub mod ingest;
pub mod memory;
pub mod query;
pub mod storage;
