//! Fuzz target: the ingestion decoder must never panic, and every error has a listed reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use matyan::ingest::message::{DecodeError, decode};

fuzz_target!(|data: &[u8]| {
    if let Err(err) = decode(data) {
        assert!(DecodeError::REASONS.contains(&err.reason()));
        assert!(err.to_string().len() <= 1024);
    }
});
