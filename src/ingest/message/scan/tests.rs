//! Tests of the one-pass splitter: it splits every recorded gateway record, and on any text it
//! either gives exactly what serde_json gives or leaves the text to serde_json.

use std::io::{BufRead, BufReader};

use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::ingest::message::tests::mutate;

const EXAMPLES: &str = include_str!("../../../../fixtures/kafka-samples/examples-by-type.json");
const GOLDEN_GZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kafka-samples/golden-10k.jsonl.gz");

/// What the fast path gives: the envelope's members and, when split, the payload's.
fn fast(text: &str) -> Option<(Members<'_>, Option<Members<'_>>)> {
    let (mut members, mut payload) = (Members::default(), Members::default());
    let split = envelope(text, &mut members, &mut payload)?;
    Some((members, split.then_some(payload)))
}

/// Checks the fast path against serde_json on `text`; returns whether the fast path took it.
fn agrees_with_serde(text: &str) -> bool {
    let Some((members, payload)) = fast(text) else { return false };
    let reference =
        object(text).unwrap_or_else(|e| panic!("fast path accepted what serde_json rejects ({e}): {text:?}"));
    assert_eq!(members, reference, "members of {text:?}");
    let last_payload = reference.get("payload");
    match (payload, last_payload) {
        (Some(split), Some(raw)) => {
            assert_eq!(split, object(raw).expect("payload is an object"), "payload of {text:?}")
        }
        (None, Some(raw)) => assert!(!raw.starts_with('{'), "payload object not split in {text:?}"),
        (Some(_), None) => panic!("a payload split without a payload key in {text:?}"),
        (None, None) => {}
    }
    true
}

fn golden_texts() -> Vec<String> {
    let file = std::fs::File::open(GOLDEN_GZ).expect("golden gz present");
    let lines = BufReader::new(flate2::read::GzDecoder::new(file)).lines();
    lines
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(&line.expect("gz line")).expect("golden line parses");
            let b64 = record["value_b64"].as_str().expect("value_b64");
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
            String::from_utf8(bytes).expect("utf-8")
        })
        .collect()
}

#[test]
fn every_recorded_gateway_record_is_split_in_one_pass_as_serde_json_splits_it() {
    let all: serde_json::Value = serde_json::from_str(EXAMPLES).expect("examples parse");
    let mut texts: Vec<String> = all["examples"]
        .as_object()
        .expect("examples by type")
        .values()
        .map(|e| e["value_utf8"].as_str().expect("value_utf8").to_owned())
        .collect();
    assert!(texts.len() >= 11, "one example per message type");
    texts.extend(golden_texts());
    assert!(texts.len() > 10_000);
    for text in &texts {
        assert!(agrees_with_serde(text), "a gateway record left the fast path: {text}");
        assert!(fast(text).is_some_and(|(_, payload)| payload.is_some()), "payload not split: {text}");
    }
}

#[test]
fn texts_outside_the_strict_subset_are_left_to_serde_json() {
    let cases = [
        // Python's literals, which serde_json rejects and the decoder's fallback rewrites.
        r#"{"payload":{"value":NaN}}"#,
        r#"{"payload":{"value":-Infinity}}"#,
        // Numbers outside the JSON grammar.
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":-}"#,
        r#"{"a":1e}"#,
        r#"{"a":.5}"#,
        r#"{"a":+1}"#,
        // Strings: a raw control character, an unknown escape, a short \u escape.
        "{\"a\":\"x\u{1}y\"}",
        r#"{"a":"\x"}"#,
        r#"{"a":"\u12"}"#,
        // A key whose \u escape is a lone surrogate (serde_json refuses it in a key).
        r#"{"\ud800":1}"#,
        // Structure: trailing commas, a missing colon, garbage after the object, not an object.
        r#"{"a":1,}"#,
        r#"{"a":[1,]}"#,
        r#"{"a" 1}"#,
        r#"{"a":1} x"#,
        r#"[1]"#,
        r#"{"a":tru}"#,
        r#"{"a":1"#,
        "",
    ];
    for text in cases {
        assert!(fast(text).is_none(), "fast path took {text:?}");
    }
    // Too deep for the fast path but valid: serde_json reads it.
    let deep = format!(r#"{{"payload":{{"context":{}1{}}}}}"#, "[".repeat(70), "]".repeat(70));
    assert!(fast(&deep).is_none());
    assert!(object(&deep).is_ok());
    let shallow = format!(r#"{{"payload":{{"context":{}1{}}}}}"#, "[".repeat(40), "]".repeat(40));
    assert!(agrees_with_serde(&shallow));
}

#[test]
fn escapes_whitespace_repeated_keys_and_surrogates_in_values_split_as_serde_json_does() {
    let cases = [
        "{ \"type\" : \"log_metric\" ,\n\t\"payload\" :\r{ \"name\" : \"lo\\\"ss\" , \"v\" : [ 1 , { } , [ ] ] } }",
        r#"{"pay\u006coad":{"a":1}}"#,
        r#"{"payload":{"a":1},"payload":{"b":2}}"#,
        r#"{"payload":{"a":1},"payload":null}"#,
        r#"{"payload":"{}"}"#,
        r#"{"a":"\ud800","b":"\u00e9\n\/","\u0041":"é€😀"}"#,
        r#"{}"#,
        r#"{"payload":{}}"#,
        r#"{"a":-0,"b":0.5e-7,"c":1E+300,"d":123456789012345678901234567890,"e":true,"f":false,"g":null}"#,
    ];
    for text in cases {
        assert!(agrees_with_serde(text), "fast path left {text:?}");
    }
    let (members, payload) = fast(r#"{"payload":{"a":1},"payload":null}"#).expect("split");
    assert_eq!(members.get("payload"), Some("null"));
    assert!(payload.is_none(), "the last payload is not an object");
    let (_, payload) = fast(r#"{"pay\u006coad":{"a":1}}"#).expect("split");
    assert_eq!(payload.expect("escaped key still names the payload").get("a"), Some("1"));
}

/// A random JSON value as text, with random whitespace, escapes and number forms.
fn random_value(rng: &mut StdRng, depth: u32, out: &mut String) {
    const STRINGS: [&str; 8] = ["", "a", "loss", "é€😀", "\\\"", "\\u00e9\\n", "\\ud83d\\ude00", "x\\/y\\b\\f\\r\\t"];
    const NUMBERS: [&str; 9] = ["0", "-0", "7", "-12", "3.25", "1e9", "-2.5E-3", "1e+2", "18446744073709551616"];
    let ws = |rng: &mut StdRng, out: &mut String| {
        if rng.random_bool(0.2) {
            out.push_str([" ", "\n", "\t", "\r", "  "][rng.random_range(0..5)]);
        }
    };
    ws(rng, out);
    let kind = if depth >= 6 { rng.random_range(0..4) } else { rng.random_range(0..6) };
    match kind {
        0 => {
            out.push('"');
            out.push_str(STRINGS[rng.random_range(0..STRINGS.len())]);
            out.push('"');
        }
        1 => out.push_str(NUMBERS[rng.random_range(0..NUMBERS.len())]),
        2 => out.push_str(["true", "false", "null"][rng.random_range(0..3)]),
        3 => out.push_str(["[]", "{}", "[ ]", "{ }"][rng.random_range(0..4)]),
        4 => {
            out.push('[');
            for i in 0..rng.random_range(1..4) {
                if i > 0 {
                    out.push(',');
                }
                random_value(rng, depth + 1, out);
            }
            out.push(']');
        }
        _ => {
            out.push('{');
            for i in 0..rng.random_range(1..5) {
                if i > 0 {
                    out.push(',');
                }
                ws(rng, out);
                out.push('"');
                out.push_str(
                    ["payload", "type", "a", STRINGS[rng.random_range(0..STRINGS.len())]][rng.random_range(0..4)],
                );
                out.push('"');
                ws(rng, out);
                out.push(':');
                random_value(rng, depth + 1, out);
            }
            out.push('}');
        }
    }
    ws(rng, out);
}

#[test]
fn random_valid_objects_are_split_in_one_pass_as_serde_json_splits_them() {
    let mut rng = StdRng::seed_from_u64(0x5CA7);
    let mut taken = 0;
    for _ in 0..20_000 {
        let mut text = String::from("{\"payload\":");
        random_value(&mut rng, 1, &mut text);
        text.push_str(",\"type\":");
        random_value(&mut rng, 1, &mut text);
        text.push('}');
        if serde_json::from_str::<serde_json::Value>(&text).is_err() {
            continue; // a lone surrogate in a generated key: serde_json rejects it, so must we
        }
        assert!(agrees_with_serde(&text), "a valid object left the fast path: {text:?}");
        taken += 1;
    }
    assert!(taken > 15_000, "the generator made mostly valid objects ({taken})");
}

#[test]
fn random_mutations_of_records_are_split_as_serde_json_splits_them_or_left_to_it() {
    let mut rng = StdRng::seed_from_u64(0xB17E);
    let texts = golden_texts();
    let (mut taken, mut left) = (0, 0);
    for _ in 0..30_000 {
        let mut bytes = texts[rng.random_range(0..texts.len())].clone().into_bytes();
        mutate(&mut rng, &mut bytes);
        let Ok(text) = String::from_utf8(bytes) else { continue };
        if agrees_with_serde(&text) {
            taken += 1;
        } else {
            left += 1;
        }
    }
    assert!(taken > 1_000 && left > 1_000, "mutations exercised both paths ({taken} taken, {left} left)");
}

#[test]
fn plain_runs_stop_at_the_first_byte_that_needs_care_wherever_it_sits() {
    for len in 0..40 {
        for at in 0..=len {
            for special in [b'"', b'\\', 0x00, 0x1f] {
                let mut bytes = vec![b'a'; len];
                bytes.extend_from_slice("é€ ~".as_bytes());
                if at < len {
                    bytes[at] = special;
                    assert_eq!(plain_run(&bytes), at, "len {len}, {special:#x} at {at}");
                } else {
                    assert_eq!(plain_run(&bytes), bytes.len(), "len {len}, no special byte");
                }
            }
        }
    }
}
