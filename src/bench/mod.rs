//! Benchmarks that print figures (`matyan bench ...`): measured against a baseline in the same run,
//! never asserted by timed tests.
pub mod storage;
