//! `matyan bench decode`: decodes N `log_metric` records of the golden shape with the decoder's
//! one-pass path and with its serde_json path (the path every record took before, still the
//! fallback for records outside the scanner's subset), rounds alternated, on one thread.
//!
//! Both paths must give the same message for every record of the input before anything is timed.

use std::hint::black_box;
use std::time::Instant;

use crate::ingest::message::{DecodeError, IngestMessage, decode, decode_with_serde};

use super::ingest::{metric_record, run_hash};

/// The benchmark's parameters.
#[derive(Debug, Clone)]
pub struct DecodeBenchConfig {
    /// Records decoded per path and round.
    pub records: u64,
    /// Timed rounds per path, alternated (after one warm-up round each).
    pub rounds: u32,
}

/// A path of the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePath {
    /// `decode`: the one-pass scanner.
    OnePass,
    /// `decode_with_serde`: serde_json's raw values, the envelope then the payload.
    Serde,
}

impl DecodePath {
    /// The name printed.
    pub fn name(self) -> &'static str {
        match self {
            DecodePath::OnePass => "one pass",
            DecodePath::Serde => "serde_json raw values",
        }
    }

    fn decode(self, bytes: &[u8]) -> Result<IngestMessage, DecodeError> {
        match self {
            DecodePath::OnePass => decode(bytes),
            DecodePath::Serde => decode_with_serde(bytes),
        }
    }
}

/// One timed round of one path.
#[derive(Debug, Clone)]
pub struct DecodeRound {
    /// The path.
    pub path: DecodePath,
    /// Records decoded.
    pub records: u64,
    /// Seconds it took.
    pub secs: f64,
}

impl DecodeRound {
    /// Nanoseconds per record.
    pub fn ns_per_record(&self) -> f64 {
        self.secs * 1e9 / self.records.max(1) as f64
    }
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum DecodeBenchError {
    /// A record of the input does not decode, or the two paths disagree on it.
    #[error("record {index}: {detail}")]
    Disagree {
        /// Index in the input.
        index: usize,
        /// What went wrong.
        detail: String,
    },
}

/// Distinct records cycled through: enough that the decoder's context cache and the branch
/// predictor see a realistic mix of run ids, steps and values.
const DISTINCT: usize = 1_000;

/// Runs the benchmark: checks both paths agree on the input, then times `rounds` rounds of each,
/// alternated.
pub fn run(cfg: &DecodeBenchConfig) -> Result<Vec<DecodeRound>, DecodeBenchError> {
    let hashes: Vec<String> = (0..8).map(run_hash).collect();
    let input: Vec<Vec<u8>> =
        (0..DISTINCT).map(|i| metric_record(&hashes[i % hashes.len()], (i / hashes.len()) as i64)).collect();
    for (index, record) in input.iter().enumerate() {
        let one_pass = decode(record).map_err(|e| DecodeBenchError::Disagree { index, detail: e.to_string() })?;
        if decode_with_serde(record).as_ref() != Ok(&one_pass) {
            return Err(DecodeBenchError::Disagree { index, detail: "the two paths decode it differently".into() });
        }
    }
    let paths = [DecodePath::Serde, DecodePath::OnePass];
    for path in paths {
        time(path, &input, cfg.records.min(10_000));
    }
    let mut rounds = Vec::new();
    for _ in 0..cfg.rounds {
        for path in paths {
            rounds.push(DecodeRound { path, records: cfg.records, secs: time(path, &input, cfg.records) });
        }
    }
    Ok(rounds)
}

fn time(path: DecodePath, input: &[Vec<u8>], records: u64) -> f64 {
    let start = Instant::now();
    for i in 0..records {
        let _ = black_box(path.decode(black_box(&input[i as usize % input.len()])));
    }
    start.elapsed().as_secs_f64()
}
