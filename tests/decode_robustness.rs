//! A stable stand-in for the cargo-fuzz targets of `fuzz/`: a few thousand seeded random and
//! mutated inputs fed to the ingestion decoder (`ingest::message::decode`) and the MatyanQL
//! compiler (`query::pipeline::compile`), asserting that neither panics and that every error is
//! bounded (a known reason label, a short message).

use std::panic::{AssertUnwindSafe, catch_unwind};

use matyan::ingest::message::{DecodeError, decode};
use matyan::query::{CompileOptions, compile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Longest error text accepted: an error names what failed, it never echoes the input.
const MAX_MESSAGE: usize = 1024;

/// The `value_utf8` of every sample in `fixtures/kafka-samples/examples-by-type.json`.
fn samples() -> Vec<Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kafka-samples/examples-by-type.json");
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let examples = doc["examples"].as_object().unwrap();
    let out: Vec<Vec<u8>> =
        examples.values().filter_map(|e| e["value_utf8"].as_str()).map(|s| s.as_bytes().to_vec()).collect();
    assert!(out.len() >= 10, "expected the samples of every message type, found {}", out.len());
    out
}

/// Pieces that make mutations land on interesting JSON (and Python-literal) syntax.
const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u",
    "\\ud800",
    "\\udc00",
    "null",
    "true",
    "false",
    "NaN",
    "Infinity",
    "-Infinity",
    "None",
    "True",
    "False",
    "0",
    "-1",
    "1e308",
    "1e999",
    "-0.0",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775807",
    "\"type\"",
    "\"run_id\"",
    "\"payload\"",
    "\"step\"",
    "\"value\"",
    "\"context\"",
    "\"timestamp\"",
    "\"\"",
    "\u{0}",
    "\u{ffff}",
    "é",
    "\u{1F600}",
];

/// Applies one random mutation to `input`.
fn mutate(rng: &mut StdRng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    let pos = |rng: &mut StdRng, v: &Vec<u8>| if v.is_empty() { 0 } else { rng.random_range(0..=v.len()) };
    match rng.random_range(0..10) {
        // Truncate.
        0 => {
            let at = pos(rng, &v);
            v.truncate(at);
        }
        // Flip a few bytes.
        1 => {
            for _ in 0..rng.random_range(1..4) {
                if !v.is_empty() {
                    let i = rng.random_range(0..v.len());
                    v[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        // Insert a JSON token.
        2 => {
            let tok = JSON_TOKENS[rng.random_range(0..JSON_TOKENS.len())];
            let at = pos(rng, &v);
            v.splice(at..at, tok.bytes());
        }
        // Delete a range.
        3 => {
            let a = pos(rng, &v);
            let b = (a + rng.random_range(0..16)).min(v.len());
            v.drain(a..b);
        }
        // Splice with another sample.
        4 => {
            let other = &others[rng.random_range(0..others.len())];
            let a = pos(rng, &v);
            let b = if other.is_empty() { 0 } else { rng.random_range(0..other.len()) };
            v.truncate(a);
            v.extend_from_slice(&other[b..]);
        }
        // Invalid UTF-8.
        5 => {
            let at = pos(rng, &v);
            let bad: &[u8] =
                [&[0xff][..], &[0xc3], &[0xed, 0xa0, 0x80], &[0xf4, 0x90, 0x80, 0x80]][rng.random_range(0..4)];
            v.splice(at..at, bad.iter().copied());
        }
        // Deep nesting at a random point.
        6 => {
            let depth = rng.random_range(100..3000);
            let at = pos(rng, &v);
            let nest: Vec<u8> = std::iter::repeat_n(b'[', depth).chain(std::iter::repeat_n(b']', depth)).collect();
            v.splice(at..at, nest);
        }
        // A long string.
        7 => {
            let at = pos(rng, &v);
            let len = rng.random_range(1000..150_000);
            let long: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'x', len)).chain([b'"']).collect();
            v.splice(at..at, long);
        }
        // Replace a quoted value with another JSON token.
        8 => {
            let quotes: Vec<usize> = v.iter().enumerate().filter(|(_, b)| **b == b'"').map(|(i, _)| i).collect();
            if quotes.len() >= 2 {
                let i = rng.random_range(0..quotes.len() - 1);
                let tok = JSON_TOKENS[rng.random_range(0..JSON_TOKENS.len())];
                v.splice(quotes[i]..=quotes[i + 1], tok.bytes());
            }
        }
        // Duplicate a slice.
        _ => {
            let a = pos(rng, &v);
            let b = (a + rng.random_range(0..64)).min(v.len());
            let dup = v[a..b].to_vec();
            v.splice(a..a, dup);
        }
    }
    v
}

fn check_decode(input: &[u8]) {
    let result = catch_unwind(AssertUnwindSafe(|| decode(input)));
    let Ok(result) = result else {
        panic!("decode panicked on {:?}", String::from_utf8_lossy(&input[..input.len().min(2000)]));
    };
    if let Err(err) = result {
        assert!(DecodeError::REASONS.contains(&err.reason()), "unlisted reason {}", err.reason());
        let msg = err.to_string();
        assert!(
            msg.len() <= MAX_MESSAGE,
            "unbounded decode error ({} bytes): {}",
            msg.len(),
            msg.chars().take(200).collect::<String>()
        );
    }
}

fn check_compile(query: &str) {
    let options = CompileOptions::default();
    let result = catch_unwind(AssertUnwindSafe(|| compile(query, &options)));
    let Ok(result) = result else {
        panic!("compile panicked on {:?}", &query[..query.len().min(2000)]);
    };
    if let Err(err) = result {
        let msg = err.http_message();
        assert!(
            msg.len() <= MAX_MESSAGE,
            "unbounded query error ({} bytes): {}",
            msg.len(),
            msg.chars().take(200).collect::<String>()
        );
    }
}

#[test]
fn the_samples_decode() {
    for sample in samples() {
        decode(&sample).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&sample)));
    }
}

#[test]
fn decode_survives_mutated_samples() {
    let samples = samples();
    let mut rng = StdRng::seed_from_u64(0x6d61_7479_616e);
    for i in 0..3000 {
        let base = &samples[i % samples.len()];
        let mut input = mutate(&mut rng, base, &samples);
        // Stack a few mutations on some inputs.
        for _ in 0..rng.random_range(0..3) {
            input = mutate(&mut rng, &input, &samples);
        }
        check_decode(&input);
    }
}

#[test]
fn decode_survives_random_bytes_and_token_soup() {
    let mut rng = StdRng::seed_from_u64(42);
    for _ in 0..1500 {
        let len = rng.random_range(0..256);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        check_decode(&bytes);
        let soup: String =
            (0..rng.random_range(1..40)).map(|_| JSON_TOKENS[rng.random_range(0..JSON_TOKENS.len())]).collect();
        check_decode(soup.as_bytes());
        check_decode(format!("{{{soup}}}").as_bytes());
    }
}

#[test]
fn decode_bounds_hostile_records() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let cases: Vec<String> = vec![
        format!(r#"{{"type":"log_metric","run_id":"r","payload":{{"name":"m","value":{}}}}}"#, deep(100_000)),
        format!(r#"{{"type":"{}","run_id":"r","payload":{{}}}}"#, "t".repeat(200_000)),
        format!(r#"{{"type":"create_run","run_id":"{}","payload":{{}}}}"#, "r".repeat(200_000)),
        format!(r#"{{"type":"log_metric","run_id":"r","payload":{{"name":"{}","value":1}}}}"#, "n".repeat(200_000)),
        r#"{"type":"log_metric","run_id":"r","payload":{"name":"m","value":1,"step":1e400}}"#.to_owned(),
        r#"{"type":"log_metric","run_id":"r","payload":{"name":"m","value":1,"step":-99999999999999999999}}"#
            .to_owned(),
        r#"{"type":"log_hparams","run_id":"r","payload":{"hparams":{"\ud800":1}}}"#.to_owned(),
        r#"{"type":"create_run","run_id":null}"#.to_owned(),
        "{".repeat(1_000_000),
    ];
    for case in cases {
        check_decode(case.as_bytes());
        assert!(decode(case.as_bytes()).is_err(), "{}", &case[..case.len().min(200)]);
    }
}

/// Well-formed MatyanQL queries, mutated below.
const QUERIES: &[&str] = &[
    "",
    "run.hparams.lr > 0.01",
    "metric.name == \"loss\"",
    "run.name in [\"a\", \"b\"] and not run.archived",
    "(run.description != \"x\") and (metric.name == \"loss\")",
    "metric.context.subset == \"train\" or metric.last < 0.3",
    "run.created_at > datetime(2024, 1, 1)",
    "SELECT run.hash IF run.experiment == 'baseline'",
    "1 < run.hparams.lr <= 3",
    "run.tags[0].startswith('rel') and len(run.tags) > 1",
    "{'a': 1}['a'] == 1 and (1, 2) != [1, 2]",
    "run.hparams['batch size'] == 32",
];

const QUERY_TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ".",
    ",",
    ":",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "and",
    "or",
    "not",
    "in",
    "is",
    "None",
    "True",
    "False",
    "run",
    "metric",
    "hparams",
    "name",
    "_x",
    "__class__",
    "'",
    "\"",
    "\"\"\"",
    "\\",
    "\\x",
    "\\N{",
    "0x",
    "1e",
    "1_000",
    "99999999999999999999999999999999999999999",
    "lambda",
    "if",
    "else",
    "for",
    "#",
    "\n",
    "\t",
    " ",
    "datetime(",
    "len(",
    "f'",
    "b'",
    ":=",
    "*",
    "**",
    "é",
    "\u{0}",
    "SELECT",
    "IF",
];

#[test]
fn compile_survives_mutated_and_random_queries() {
    let mut rng = StdRng::seed_from_u64(7);
    let bases: Vec<Vec<u8>> = QUERIES.iter().map(|q| q.as_bytes().to_vec()).collect();
    for i in 0..2500 {
        let mut bytes = mutate(&mut rng, &bases[i % bases.len()], &bases);
        if rng.random_bool(0.3) {
            bytes = mutate(&mut rng, &bytes, &bases);
        }
        check_compile(&String::from_utf8_lossy(&bytes));
        let soup: String =
            (0..rng.random_range(1..30)).map(|_| QUERY_TOKENS[rng.random_range(0..QUERY_TOKENS.len())]).collect();
        check_compile(&soup);
    }
}

#[test]
fn compile_bounds_hostile_queries_and_clips_echoed_tokens() {
    let n = 10_000;
    let cases = [
        format!("{}1{}", "(".repeat(n), ")".repeat(n)),
        format!("{}run.active", "not ".repeat(n)),
        format!("{}1", "-".repeat(n)),
        format!("run{}", ".a".repeat(n)),
        format!("run{}", "[0]".repeat(n)),
        vec!["1"; n].join(" < "),
        vec!["run.active"; n].join(" and "),
        format!("'{}'", "x".repeat(60_000)),
        format!("_{}", "x".repeat(60_000)),
        format!("run.{} == 1", "a".repeat(60_000)),
        format!("1 {}", "x".repeat(60_000)),
        "x".repeat(1 << 20),
    ];
    for case in &cases {
        check_compile(case);
    }
}
