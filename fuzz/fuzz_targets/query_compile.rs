//! Fuzz target: the MatyanQL compiler (default options) must never panic, and its errors stay short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use matyan::query::{CompileOptions, compile};

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    if let Err(err) = compile(&query, &CompileOptions::default()) {
        assert!(err.http_message().len() <= 1024);
    }
});
