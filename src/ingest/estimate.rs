//! The reference's per-message transaction-size estimate and its chunking rule (spec §1.10).
//!
//! The estimate only decides where batches split and feeds the estimated-bytes histogram; the data
//! written is the same wherever the split falls. Python `str()`/`repr()` lengths are approximated
//! (the spec allows it): strings count their characters plus quotes and the common escapes.

use std::ops::Range;

use crate::storage::context_id::python_float_repr;
use crate::storage::value::Value;

use super::message::{IngestMessage, Payload};

/// Estimate of the messages that write a handful of keys (`create_run`, `finish_run`, ...).
pub const BASE_BYTES: usize = 500;

/// Base estimate of a `log_metric`.
pub const METRIC_BASE_BYTES: usize = 300;

/// Returns the estimated transaction bytes of one message, as the reference computes them.
pub fn estimated_bytes(msg: &IngestMessage) -> usize {
    payload_bytes(&msg.payload)
}

/// Returns the estimated transaction bytes of one payload.
pub fn payload_bytes(payload: &Payload) -> usize {
    match payload {
        Payload::CreateRun(_)
        | Payload::FinishRun(_)
        | Payload::BlobRef(_)
        | Payload::AddTag(_)
        | Payload::RemoveTag(_)
        | Payload::DeleteRun => BASE_BYTES,
        Payload::LogTerminalLine(t) => BASE_BYTES + t.line.chars().count(),
        Payload::LogRecord(r) => BASE_BYTES + r.message.chars().count(),
        Payload::LogMetric(m) => {
            METRIC_BASE_BYTES
                + match &m.value {
                    Value::Array(items) => 8 * items.len(),
                    Value::Bin(bytes) => bytes.len(),
                    _ => 16,
                }
        }
        // `len(data)` for str/bytes, else `len(str(data or ""))`.
        Payload::LogCustomObject(c) => {
            BASE_BYTES
                + match &c.data {
                    Some(Value::Str(s)) => s.chars().count(),
                    Some(Value::Bin(b)) => b.len(),
                    Some(v) if v.is_truthy() => py_repr_len(v),
                    _ => 0,
                }
        }
        Payload::LogHparams(h) => BASE_BYTES + py_repr_len(&h.value),
        // `str(payload.get("value", {}))`: the payload never has `value`, so `"{}"`.
        Payload::SetRunProperty(_) => BASE_BYTES + 2,
    }
}

/// Approximates the length of Python's `repr()` of a value (`{'lr': 0.01, 'layers': [64, 32]}`).
pub fn py_repr_len(v: &Value) -> usize {
    match v {
        Value::Nil => 4,
        Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Int(i) => i.to_string().len(),
        Value::Float(f) if f.is_nan() => 3,
        Value::Float(f) if f.is_infinite() => {
            if *f > 0.0 {
                3
            } else {
                4
            }
        }
        Value::Float(f) => python_float_repr(*f).len(),
        Value::Str(s) => {
            2 + s.chars().map(|c| if matches!(c, '\\' | '\n' | '\r' | '\t') { 2 } else { 1 }).sum::<usize>()
        }
        // `b'...'`: printable bytes once, others as `\xNN`.
        Value::Bin(b) => 3 + b.iter().map(|c| if (0x20..0x7f).contains(c) { 1 } else { 4 }).sum::<usize>(),
        Value::Array(items) => 2 + separated(items.iter().map(py_repr_len)),
        Value::Map(entries) => 2 + separated(entries.iter().map(|(k, v)| py_repr_len(k) + 2 + py_repr_len(v))),
        // `datetime.datetime(...)` and ext values have long reprs; a fixed guess is enough here.
        Value::DateTime(_) | Value::Ext(..) => 32,
    }
}

/// Sums the items' lengths plus a `", "` between each pair.
fn separated(lens: impl Iterator<Item = usize>) -> usize {
    let mut total = 0;
    let mut count = 0usize;
    for len in lens {
        total += len;
        count += 1;
    }
    total + 2 * count.saturating_sub(1)
}

/// Splits messages of the given estimated sizes into chunks with the reference's rule: a new chunk
/// starts when the current one is non-empty and either holds `max_messages` messages or would
/// exceed `max_bytes` with the next message; a single oversize message forms a chunk of its own.
///
/// [`super::run_batch::RunBatch`] applies the same rule incrementally.
pub fn chunk_ranges(sizes: &[usize], max_messages: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, size) in sizes.iter().enumerate() {
        let len = i - start;
        if len > 0 && (len >= max_messages || bytes.saturating_add(*size) > max_bytes) {
            chunks.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(*size);
    }
    if start < sizes.len() {
        chunks.push(start..sizes.len());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::message::{
        BlobRef, Context, CreateRun, FinishRun, LogCustomObject, LogHparams, LogMetric, LogRecord, LogTerminalLine,
        SetRunProperty, TagChange, decode,
    };

    fn metric(value: Value) -> Payload {
        Payload::LogMetric(LogMetric {
            name: "loss".into(),
            value,
            step: Some(0),
            epoch: None,
            context: Context::empty().into(),
            dtype: "float".into(),
        })
    }

    fn custom(data: Option<Value>) -> Payload {
        Payload::LogCustomObject(LogCustomObject {
            name: "img".into(),
            value: Value::Map(Vec::new()),
            step: None,
            epoch: None,
            context: Context::empty().into(),
            dtype: "image".into(),
            data,
        })
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (Value::Str(k.into()), v)).collect())
    }

    #[test]
    fn estimate_table_of_section_1_10() {
        let blob = BlobRef { s3_key: "k".into(), artifact_path: "p".into(), content_type: "c".into() };
        let tag = TagChange { tag_name: "t".into() };
        let cases: Vec<(Payload, usize)> = vec![
            (Payload::CreateRun(CreateRun { client_datetime: None, force_resume: false }), 500),
            (Payload::FinishRun(FinishRun { client_datetime: Some(1.0) }), 500),
            (Payload::BlobRef(blob), 500),
            (Payload::AddTag(tag.clone()), 500),
            (Payload::RemoveTag(tag), 500),
            (Payload::DeleteRun, 500),
            (Payload::LogTerminalLine(LogTerminalLine { line: "héllo".into(), step: 0 }), 505),
            (
                Payload::LogRecord(LogRecord {
                    message: "training started".into(),
                    level: 20,
                    timestamp: Value::Float(1.0),
                    logger_info: None,
                    extra_args: None,
                }),
                516,
            ),
            (metric(Value::Float(0.5)), 316),
            (metric(Value::Nil), 316),
            (metric(Value::Array(vec![Value::Int(1); 10])), 380),
            (metric(Value::Bin(vec![0; 7])), 307),
            (custom(None), 500),
            (custom(Some(Value::Str("abcd".into()))), 504),
            (custom(Some(Value::Int(0))), 500),
            (custom(Some(Value::Array(vec![Value::Int(1), Value::Int(2)]))), 506),
            (Payload::LogHparams(LogHparams { value: Value::Map(Vec::new()) }), 502),
            // str({'hparams': {'lr': 0.01, 'layers': [64, 32]}}) has 45 characters.
            (
                Payload::LogHparams(LogHparams {
                    value: map(vec![(
                        "hparams",
                        map(vec![
                            ("lr", Value::Float(0.01)),
                            ("layers", Value::Array(vec![Value::Int(64), Value::Int(32)])),
                        ]),
                    )]),
                }),
                545,
            ),
            (Payload::SetRunProperty(SetRunProperty { name: Some("x".repeat(50)), ..Default::default() }), 502),
        ];
        for (payload, expected) in cases {
            assert_eq!(payload_bytes(&payload), expected, "{payload:?}");
        }
    }

    #[test]
    fn py_repr_len_matches_python_for_scalars_and_containers() {
        assert_eq!(py_repr_len(&Value::Nil), "None".len());
        assert_eq!(py_repr_len(&Value::Bool(false)), "False".len());
        assert_eq!(py_repr_len(&Value::Float(1e-5)), "1e-05".len());
        assert_eq!(py_repr_len(&Value::Float(f64::NEG_INFINITY)), "-inf".len());
        assert_eq!(py_repr_len(&Value::Int(-123)), 4);
        assert_eq!(py_repr_len(&Value::Str("a\nb".into())), "'a\\nb'".len());
        assert_eq!(py_repr_len(&Value::Array(Vec::new())), 2);
        assert_eq!(
            py_repr_len(&map(vec![("a", Value::Int(1)), ("b", Value::Bool(true))])),
            "{'a': 1, 'b': True}".len()
        );
    }

    #[test]
    fn estimates_grow_with_list_length_line_length_and_hparams_repr() {
        let short = payload_bytes(&metric(Value::Array(vec![Value::Float(1.0); 2])));
        let long = payload_bytes(&metric(Value::Array(vec![Value::Float(1.0); 20])));
        assert!(long > short);
        let line =
            |n: usize| payload_bytes(&Payload::LogTerminalLine(LogTerminalLine { line: "x".repeat(n), step: 0 }));
        assert!(line(100) > line(10));
        let hp = |n: usize| {
            payload_bytes(&Payload::LogHparams(LogHparams {
                value: map(vec![("hparams", map(vec![("name", Value::Str("y".repeat(n)))]))]),
            }))
        };
        assert!(hp(100) > hp(10));
    }

    #[test]
    fn estimate_of_decoded_gateway_metric_is_316() {
        let value = br#"{"type":"log_metric","run_id":"r","timestamp":"2025-01-01T00:00:00Z","payload":{"name":"loss","value":0.9,"step":0,"epoch":null,"context":{"subset":"train"},"dtype":"float","client_datetime":"2025-01-01T00:00:00+00:00"}}"#;
        let msg = decode(value).expect("decodes");
        assert_eq!(estimated_bytes(&msg), 316);
    }

    #[test]
    fn chunking_five_small_messages_make_one_chunk() {
        assert_eq!(chunk_ranges(&[316; 5], 100, 8_388_608), vec![0..5]);
    }

    #[test]
    fn chunking_ten_messages_with_max_count_three_make_3_3_3_1() {
        assert_eq!(chunk_ranges(&[316; 10], 3, 8_388_608), vec![0..3, 3..6, 6..9, 9..10]);
    }

    #[test]
    fn chunking_splits_at_the_byte_estimate() {
        // 500 + 500 = 1000 fits a 1000-byte budget; the third would exceed it.
        assert_eq!(chunk_ranges(&[500, 500, 500, 500, 500], 100, 1000), vec![0..2, 2..4, 4..5]);
        assert_eq!(chunk_ranges(&[500, 501], 100, 1000), vec![0..1, 1..2]);
    }

    #[test]
    fn chunking_puts_one_oversize_message_in_its_own_chunk() {
        assert_eq!(chunk_ranges(&[100, 5000, 100], 100, 1000), vec![0..1, 1..2, 2..3]);
        assert_eq!(chunk_ranges(&[5000], 100, 1000), vec![0..1]);
    }

    #[test]
    fn chunking_an_empty_input_gives_no_chunks() {
        assert!(chunk_ranges(&[], 100, 1000).is_empty());
    }
}
