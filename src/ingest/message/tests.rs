//! Unit tests of the record decoder: the recorded gateway samples, the golden run, malformed input.

use std::io::{BufRead, BufReader};

use base64::Engine;

use super::*;
use crate::storage::context_id::{context_to_id, context_to_id_from_json};

const EXAMPLES: &str = include_str!("../../../fixtures/kafka-samples/examples-by-type.json");
const GOLDEN_HEAD: &str = include_str!("../../../fixtures/kafka-samples/golden-10k.head.jsonl");
const GOLDEN_GZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kafka-samples/golden-10k.jsonl.gz");
const RUN: &str = "00000000000000000000000000a11a11";

/// The id of `{"subset":"train"}` given in spec §1.8.
const TRAIN_ID: u32 = 2_326_457_826;

fn example(kind: &str) -> IngestMessage {
    let all: serde_json::Value = serde_json::from_str(EXAMPLES).expect("examples parse");
    let text = all["examples"][kind]["value_utf8"].as_str().expect("value_utf8");
    decode(text.as_bytes()).expect("sample decodes")
}

fn envelope(kind: &str, payload: &str) -> Vec<u8> {
    format!(r#"{{"type":"{kind}","run_id":"{RUN}","timestamp":"2025-01-01T00:00:00Z","payload":{payload}}}"#)
        .into_bytes()
}

fn reason_of(bytes: &[u8]) -> &'static str {
    match decode(bytes) {
        Ok(msg) => panic!("expected an error, got {msg:?}"),
        Err(e) => e.reason(),
    }
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (Value::Str(k.into()), v)).collect())
}

// ---------------------------------------------------------------------------------------------
// The recorded samples

#[test]
fn every_example_decodes_to_its_type() {
    let all: serde_json::Value = serde_json::from_str(EXAMPLES).expect("examples parse");
    let examples = all["examples"].as_object().expect("object");
    assert_eq!(examples.len(), 11);
    for (kind, sample) in examples {
        let hex_value = hex::decode(sample["value_hex"].as_str().expect("hex")).expect("hex decodes");
        let msg = decode(&hex_value).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(msg.kind().as_str(), kind);
        assert_eq!(msg.run_id, sample["key_utf8"].as_str().expect("key"));
        assert!(msg.timestamp > 1.7e9, "{kind}: {}", msg.timestamp);
    }
}

#[test]
fn example_create_run_fields() {
    let msg = example("create_run");
    // 2026-11-21T20:50:10.641486+00:00
    let Payload::CreateRun(p) = &msg.payload else { panic!("{msg:?}") };
    assert_eq!(p.client_datetime, Some(1_795_294_210.641_486));
    assert!(!p.force_resume);
    assert_eq!(msg.timestamp, 1_795_294_210.644_992);
}

#[test]
fn example_log_metric_fields() {
    let msg = example("log_metric");
    let Payload::LogMetric(p) = &msg.payload else { panic!("{msg:?}") };
    assert_eq!(p.name, "loss");
    assert_eq!(p.value, Value::Float(2.542_221_092_576_252_5));
    assert_eq!((p.step, p.epoch), (Some(0), Some(0)));
    assert_eq!(p.context.id, TRAIN_ID);
    assert_eq!(&*p.context.raw, r#"{"subset":"train"}"#);
    assert_eq!(p.context.value, map(vec![("subset", Value::Str("train".into()))]));
    assert_eq!(p.dtype, "float");
}

#[test]
fn example_log_custom_object_fields() {
    let msg = example("log_custom_object");
    let Payload::LogCustomObject(p) = &msg.payload else { panic!("{msg:?}") };
    assert_eq!(p.name, "predictions");
    assert_eq!(
        p.value,
        map(vec![("type", Value::Str("text".into())), ("data", Value::Str("epoch 0: sample prediction = cat".into()))])
    );
    assert_eq!((p.step, p.epoch), (Some(0), None));
    assert_eq!(*p.context, Context::empty());
    assert_eq!(p.dtype, "text");
    assert_eq!(p.data, None);
}

#[test]
fn example_log_hparams_keeps_order_and_int_float_distinction() {
    let msg = example("log_hparams");
    let Payload::LogHparams(p) = &msg.payload else { panic!("{msg:?}") };
    let Value::Map(top) = &p.value else { panic!("{p:?}") };
    assert_eq!(top[0].0, Value::Str("hparams".into()));
    let hp = &top[0].1;
    let keys: Vec<&str> = match hp {
        Value::Map(entries) => entries.iter().filter_map(|(k, _)| k.as_str()).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(keys, ["lr", "batch_size", "optimizer", "betas", "warmup", "dropout", "model"]);
    assert_eq!(hp.get("lr"), Some(&Value::Float(0.0003)));
    assert_eq!(hp.get("batch_size"), Some(&Value::Int(64)));
    assert_eq!(hp.get("dropout"), Some(&Value::Nil));
    assert_eq!(hp.get("betas"), Some(&Value::Array(vec![Value::Float(0.9), Value::Float(0.999)])));
}

#[test]
fn example_finish_run_fields() {
    let msg = example("finish_run");
    assert_eq!(msg.payload, Payload::FinishRun(FinishRun { client_datetime: None }));
}

#[test]
fn example_set_run_property_fields() {
    let msg = example("set_run_property");
    assert_eq!(
        msg.payload,
        Payload::SetRunProperty(SetRunProperty { experiment: Some("e2e-baseline".into()), ..Default::default() })
    );
}

#[test]
fn example_tag_fields() {
    assert_eq!(example("add_tag").payload, Payload::AddTag(TagChange { tag_name: "e2e".into() }));
    assert_eq!(example("remove_tag").payload, Payload::RemoveTag(TagChange { tag_name: "synthetic".into() }));
}

#[test]
fn example_log_terminal_line_fields() {
    let msg = example("log_terminal_line");
    assert_eq!(
        msg.payload,
        Payload::LogTerminalLine(LogTerminalLine { line: format!("[run_client] run {RUN} started"), step: 0 })
    );
}

#[test]
fn example_log_record_fields() {
    let msg = example("log_record");
    let Payload::LogRecord(p) = &msg.payload else { panic!("{msg:?}") };
    assert_eq!(p.message, "training started");
    assert_eq!(p.level, 20);
    assert_eq!(p.timestamp, Value::Float(1_795_294_210.642_203));
    assert_eq!(
        p.logger_info,
        Some(Value::Array(vec![Value::Str("research/e2e/run_client.py".into()), Value::Int(89)]))
    );
    assert_eq!(p.extra_args, Some(map(vec![("seed", Value::Int(0))])));
}

#[test]
fn example_blob_ref_fields() {
    let msg = example("blob_ref");
    assert_eq!(
        msg.payload,
        Payload::BlobRef(BlobRef {
            s3_key: format!("{RUN}/seq/samples/0.png"),
            artifact_path: "seq/samples/0.png".into(),
            content_type: "image/png".into(),
        })
    );
}

fn golden_value(line: &str) -> Vec<u8> {
    let record: serde_json::Value = serde_json::from_str(line).expect("golden line parses");
    let b64 = record["value_b64"].as_str().expect("value_b64");
    base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")
}

#[test]
fn golden_head_decodes() {
    let kinds: Vec<MessageType> =
        GOLDEN_HEAD.lines().map(|l| decode(&golden_value(l)).expect("decodes").kind()).collect();
    assert_eq!(kinds.len(), 15);
    assert_eq!(kinds[0], MessageType::CreateRun);
    assert_eq!(kinds[1], MessageType::LogHparams);
    assert_eq!(kinds[14], MessageType::FinishRun);
    assert!(kinds[2..14].iter().all(|k| *k == MessageType::LogMetric));
}

#[test]
fn golden_10k_decodes_with_expected_context_ids() {
    let file = std::fs::File::open(GOLDEN_GZ).expect("golden gz present");
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let val_id = context_to_id(&serde_json::json!({"subset": "val"}));
    let (mut train, mut val, mut total) = (0usize, 0usize, 0usize);
    let mut seen = vec![[false; 2]; 5_000];
    for line in reader.lines() {
        let line = line.expect("gz line");
        let msg = decode(&golden_value(&line)).unwrap_or_else(|e| panic!("record {total}: {e}"));
        total += 1;
        assert_eq!(msg.run_id, "00000000000000000000000000010000");
        let Payload::LogMetric(m) = &msg.payload else { continue };
        let step = usize::try_from(m.step.expect("explicit step")).expect("non-negative");
        assert_eq!(m.epoch, Some(i64::try_from(step / 1000).expect("small")));
        assert_eq!(m.name, "loss");
        assert!(matches!(m.value, Value::Float(_)));
        let slot = if m.context.id == TRAIN_ID {
            train += 1;
            assert_eq!(&*m.context.raw, r#"{"subset":"train"}"#);
            0
        } else {
            assert_eq!(m.context.id, val_id, "{}", m.context.raw);
            val += 1;
            1
        };
        assert!(!seen[step][slot], "duplicate step {step}");
        seen[step][slot] = true;
    }
    assert_eq!((total, train, val), (10_003, 5_000, 5_000));
    assert!(seen.iter().all(|s| s[0] && s[1]));
}

// ---------------------------------------------------------------------------------------------
// Tolerance where the reference tolerates

#[test]
fn nan_metric_value_arrives_as_null() {
    let msg = decode(&envelope(
        "log_metric",
        r#"{"name":"loss","value":null,"step":3,"epoch":null,"context":null,"dtype":null,"client_datetime":"x"}"#,
    ))
    .expect("decodes");
    let Payload::LogMetric(m) = msg.payload else { panic!() };
    assert_eq!(m.value, Value::Nil);
    assert_eq!(m.dtype, "float");
    assert_eq!(*m.context, Context::empty());
}

#[test]
fn python_nan_literals_are_read_as_the_gateway_forwards_them_deliberate_fix() {
    let msg = decode(&envelope("log_metric", r#"{"name":"loss","value":NaN,"step":1,"context":{"x":-Infinity}}"#))
        .expect("decodes");
    let Payload::LogMetric(m) = msg.payload else { panic!() };
    assert_eq!(m.value, Value::Nil);
    assert_eq!(m.context.value, map(vec![("x", Value::Nil)]));
}

#[test]
fn optional_metric_fields_default() {
    let msg = decode(&envelope("log_metric", r#"{"name":"acc","value":1}"#)).expect("decodes");
    let Payload::LogMetric(m) = msg.payload else { panic!() };
    assert_eq!((m.value, m.step, m.epoch, m.dtype.as_str()), (Value::Int(1), None, None, "float"));
    let msg =
        decode(&envelope("log_custom_object", r#"{"name":"img","value":{"s3_key":"k"},"dtype":""}"#)).expect("decodes");
    let Payload::LogCustomObject(c) = msg.payload else { panic!() };
    assert_eq!(c.dtype, "custom");
}

#[test]
fn context_id_is_computed_from_the_raw_json_text() {
    for (ctx, id) in [
        (r#"{"subset":"train"}"#, TRAIN_ID),
        (r#"{"a":1,"b":2}"#, 1_126_534_399),
        (r#"{"b":2,"a":1}"#, 1_126_534_399),
        (r#"{"x":1}"#, 1_346_486_047),
        (r#"{"x":1.0}"#, 3_207_787_874),
        ("{}", 0),
        ("null", 0),
    ] {
        let msg = decode(&envelope("log_metric", &format!(r#"{{"name":"m","value":0.5,"context":{ctx}}}"#)))
            .expect("decodes");
        let Payload::LogMetric(m) = msg.payload else { panic!() };
        assert_eq!(m.context.id, id, "{ctx}");
        assert_eq!(Ok(m.context.id), context_to_id_from_json(&m.context.raw), "{ctx}");
    }
}

#[test]
fn big_integers_keep_their_exact_value_within_msgpack_range() {
    let msg = decode(&envelope("log_hparams", r#"{"value":{"seed":18446744073709551615}}"#)).expect("decodes");
    let Payload::LogHparams(h) = msg.payload else { panic!() };
    assert_eq!(h.value.get("seed"), Some(&Value::Int(i128::from(u64::MAX))));
    let err = decode(&envelope("log_hparams", r#"{"value":{"seed":18446744073709551616}}"#)).expect_err("too big");
    assert_eq!(err.reason(), "out_of_range");
}

#[test]
fn unknown_fields_are_ignored_and_repeated_keys_keep_the_last_value() {
    let text = format!(
        r#"{{"type":"add_tag","extra":[1,{{"deep":true}}],"run_id":"{RUN}","timestamp":1700000000,"payload":{{"tag_name":"a","tag_name":"b","x":1}}}}"#
    );
    let msg = decode(text.as_bytes()).expect("decodes");
    assert_eq!(msg.payload, Payload::AddTag(TagChange { tag_name: "b".into() }));
    assert_eq!(msg.timestamp, 1.7e9);
}

#[test]
fn integral_float_steps_are_read_as_ints() {
    let msg = decode(&envelope("log_terminal_line", r#"{"line":"l","step":3.0}"#)).expect("decodes");
    assert_eq!(msg.payload, Payload::LogTerminalLine(LogTerminalLine { line: "l".into(), step: 3 }));
    assert_eq!(reason_of(&envelope("log_terminal_line", r#"{"line":"l","step":3.5}"#)), "wrong_type");
    assert_eq!(reason_of(&envelope("log_terminal_line", r#"{"line":"l","step":1e300}"#)), "out_of_range");
    assert_eq!(reason_of(&envelope("log_terminal_line", r#"{"line":"l","step":9223372036854775808}"#)), "out_of_range");
}

#[test]
fn create_run_defaults_and_unparsable_datetime_is_absent() {
    for payload in
        [r#"{}"#, r#"{"client_datetime":""}"#, r#"{"client_datetime":"not-a-date"}"#, r#"{"client_datetime":5}"#]
    {
        let msg = decode(&envelope("create_run", payload)).expect("decodes");
        assert_eq!(
            msg.payload,
            Payload::CreateRun(CreateRun { client_datetime: None, force_resume: false }),
            "{payload}"
        );
    }
    let msg = decode(&envelope("create_run", r#"{"force_resume":true,"client_datetime":"2025-01-01T00:00:00Z"}"#))
        .expect("decodes");
    assert_eq!(
        msg.payload,
        Payload::CreateRun(CreateRun { client_datetime: Some(1_735_689_600.0), force_resume: true })
    );
}

#[test]
fn blob_ref_and_hparams_defaults() {
    let msg = decode(&envelope("blob_ref", "{}")).expect("decodes");
    assert_eq!(
        msg.payload,
        Payload::BlobRef(BlobRef {
            s3_key: String::new(),
            artifact_path: "unknown".into(),
            content_type: "application/octet-stream".into()
        })
    );
    let msg = decode(&envelope("log_hparams", "{}")).expect("decodes");
    assert_eq!(msg.payload, Payload::LogHparams(LogHparams { value: Value::Map(Vec::new()) }));
}

#[test]
fn delete_run_ignores_its_payload() {
    let msg = decode(&envelope("delete_run", r#"{"anything":1}"#)).expect("decodes");
    assert_eq!(msg.payload, Payload::DeleteRun);
    assert_eq!(msg.kind(), MessageType::DeleteRun);
}

#[test]
fn escaped_and_non_ascii_text_decodes() {
    let msg = decode(&envelope("log_terminal_line", r#"{"line":"caf\u00e9 ✓ \"q\"","step":0}"#)).expect("decodes");
    assert_eq!(msg.payload, Payload::LogTerminalLine(LogTerminalLine { line: "café ✓ \"q\"".into(), step: 0 }));
}

// ---------------------------------------------------------------------------------------------
// Malformed input: each gives its reason, none panics

#[test]
fn malformed_truncated_json_is_invalid_json() {
    let full = envelope("log_metric", r#"{"name":"loss","value":0.5,"step":0}"#);
    for cut in [1, 10, full.len() / 2, full.len() - 1] {
        assert_eq!(reason_of(&full[..cut]), "invalid_json", "cut at {cut}");
    }
    assert_eq!(reason_of(b"{} trailing"), "invalid_json");
}

#[test]
fn malformed_invalid_utf8() {
    let mut bytes = envelope("log_terminal_line", r#"{"line":"ab","step":0}"#);
    let at = bytes.iter().position(|b| *b == b'a').expect("a");
    bytes[at] = 0xff;
    assert_eq!(decode(&bytes), Err(DecodeError::InvalidUtf8 { valid_up_to: at }));
    assert_eq!(reason_of(b""), "empty");
}

#[test]
fn malformed_unknown_type() {
    let err = decode(&envelope("log_everything", "{}")).expect_err("unknown");
    assert_eq!(err, DecodeError::UnknownType { type_name: "log_everything".into() });
    let long = "x".repeat(1000);
    let DecodeError::UnknownType { type_name } = decode(&envelope(&long, "{}")).expect_err("unknown") else { panic!() };
    assert!(type_name.chars().count() <= MAX_TYPE_ECHO + 1);
}

#[test]
fn malformed_missing_run_id() {
    for text in [
        r#"{"type":"finish_run","timestamp":"2025-01-01T00:00:00Z","payload":{}}"#,
        r#"{"type":"finish_run","run_id":null,"timestamp":"2025-01-01T00:00:00Z","payload":{}}"#,
        r#"{"type":"finish_run","run_id":"","timestamp":"2025-01-01T00:00:00Z","payload":{}}"#,
    ] {
        assert_eq!(reason_of(text.as_bytes()), "missing_run_id", "{text}");
    }
    assert_eq!(reason_of(br#"{"type":"finish_run","run_id":5,"timestamp":1,"payload":{}}"#), "wrong_type");
}

#[test]
fn malformed_missing_fields() {
    assert_eq!(reason_of(format!(r#"{{"run_id":"{RUN}","timestamp":1,"payload":{{}}}}"#).as_bytes()), "missing_field");
    assert_eq!(
        reason_of(format!(r#"{{"type":"finish_run","run_id":"{RUN}","payload":{{}}}}"#).as_bytes()),
        "missing_field"
    );
    assert_eq!(
        reason_of(format!(r#"{{"type":"finish_run","run_id":"{RUN}","timestamp":1}}"#).as_bytes()),
        "missing_field"
    );
    for (kind, payload) in [
        ("log_metric", r#"{"value":0.5}"#),
        ("log_metric", r#"{"name":"loss"}"#),
        ("log_custom_object", r#"{"name":"x"}"#),
        ("add_tag", "{}"),
        ("remove_tag", "{}"),
        ("log_terminal_line", r#"{"line":"x"}"#),
        ("log_terminal_line", r#"{"step":1}"#),
        ("log_record", r#"{"message":"m","level":20}"#),
        ("log_record", r#"{"level":20,"timestamp":1.0}"#),
    ] {
        assert_eq!(reason_of(&envelope(kind, payload)), "missing_field", "{kind} {payload}");
    }
}

#[test]
fn malformed_wrong_types() {
    for (kind, payload) in [
        ("log_metric", r#"{"name":5,"value":0.5}"#),
        ("log_metric", r#"{"name":null,"value":0.5}"#),
        ("log_metric", r#"{"name":"m","value":0.5,"step":"1"}"#),
        ("log_metric", r#"{"name":"m","value":0.5,"epoch":true}"#),
        ("log_metric", r#"{"name":"m","value":0.5,"context":[1]}"#),
        ("log_metric", r#"{"name":"m","value":0.5,"context":"train"}"#),
        ("log_metric", r#"{"name":"m","value":0.5,"dtype":1}"#),
        ("add_tag", r#"{"tag_name":["a"]}"#),
        ("set_run_property", r#"{"archived":"yes"}"#),
        ("set_run_property", r#"{"name":1}"#),
        ("log_terminal_line", r#"{"line":1,"step":0}"#),
        ("log_record", r#"{"message":"m","level":"INFO","timestamp":1.0}"#),
        ("log_record", r#"{"message":"m","level":20,"timestamp":"now"}"#),
        ("blob_ref", r#"{"s3_key":1}"#),
    ] {
        assert_eq!(reason_of(&envelope(kind, payload)), "wrong_type", "{kind} {payload}");
    }
    // Payload and record that are not objects.
    assert_eq!(reason_of(&envelope("finish_run", "[]")), "wrong_type");
    assert_eq!(reason_of(&envelope("finish_run", "null")), "wrong_type");
    assert_eq!(reason_of(b"[1,2]"), "wrong_type");
    assert_eq!(reason_of(b"\"text\""), "wrong_type");
    assert_eq!(
        reason_of(format!(r#"{{"type":1,"run_id":"{RUN}","timestamp":1,"payload":{{}}}}"#).as_bytes()),
        "wrong_type"
    );
    assert_eq!(
        reason_of(format!(r#"{{"type":"finish_run","run_id":"{RUN}","timestamp":true,"payload":{{}}}}"#).as_bytes()),
        "wrong_type"
    );
}

#[test]
fn malformed_envelope_timestamp() {
    let text = format!(r#"{{"type":"finish_run","run_id":"{RUN}","timestamp":"yesterday","payload":{{}}}}"#);
    assert_eq!(reason_of(text.as_bytes()), "invalid_timestamp");
}

#[test]
fn malformed_field_of_100_kb_is_too_large() {
    let big = "x".repeat(100_001);
    for (kind, payload) in [
        ("log_terminal_line", format!(r#"{{"line":"{big}","step":0}}"#)),
        ("log_record", format!(r#"{{"message":"{big}","level":20,"timestamp":1.0}}"#)),
        ("log_custom_object", format!(r#"{{"name":"img","value":{{"data":"{big}"}}}}"#)),
        ("log_hparams", format!(r#"{{"value":{{"hparams":{{"notes":"{big}"}}}}}}"#)),
        ("log_metric", format!(r#"{{"name":"{big}","value":1.0}}"#)),
        ("add_tag", format!(r#"{{"tag_name":"{big}"}}"#)),
        ("blob_ref", format!(r#"{{"artifact_path":"{big}"}}"#)),
        ("set_run_property", format!(r#"{{"description":"{big}"}}"#)),
    ] {
        assert_eq!(reason_of(&envelope(kind, &payload)), "too_large", "{kind}");
    }
    // Hparams are a tree: a long list of small items is fine, a huge key or a huge item is not.
    let many = vec!["\"abcdefghij\""; 20_000].join(",");
    assert!(decode(&envelope("log_hparams", &format!(r#"{{"value":{{"hparams":{{"vocab":[{many}]}}}}}}"#))).is_ok());
    let key = "k".repeat(5_000);
    assert_eq!(reason_of(&envelope("log_hparams", &format!(r#"{{"value":{{"{key}":1}}}}"#))), "too_large");
    assert_eq!(
        reason_of(&envelope("log_hparams", &format!(r#"{{"value":{{"hparams":{{"list":[1,"{big}"]}}}}}}"#))),
        "too_large"
    );
    let long_run = format!(r#"{{"type":"finish_run","run_id":"{big}","timestamp":1,"payload":{{}}}}"#);
    assert_eq!(reason_of(long_run.as_bytes()), "too_large");
    assert_eq!(reason_of(&vec![b' '; MAX_RECORD_BYTES + 1]), "too_large");
    // Just under the value limit is fine.
    let ok = "y".repeat(99_000);
    assert!(decode(&envelope("log_terminal_line", &format!(r#"{{"line":"{ok}","step":0}}"#))).is_ok());
}

#[test]
fn malformed_deep_nesting_is_too_deep() {
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(reason_of(&envelope("log_hparams", &format!(r#"{{"value":{{"a":{deep}}}}}"#))), "too_deep");
    assert_eq!(reason_of(&envelope("log_metric", &format!(r#"{{"name":"m","value":{deep}}}"#))), "too_deep");
    let ctx = format!("{}{}", r#"{"a":"#.repeat(200), "}".repeat(200));
    let ctx = ctx.replacen("{\"a\":}", "{\"a\":1}", 1);
    assert_eq!(reason_of(&envelope("log_metric", &format!(r#"{{"name":"m","value":1,"context":{ctx}}}"#))), "too_deep");
    // Deep and truncated at once stays an error, without panicking.
    let truncated = envelope("log_hparams", &format!(r#"{{"value":{}"#, "[".repeat(100_000)));
    assert!(decode(&truncated).is_err());
}

#[test]
fn malformed_lone_surrogate_is_invalid_string() {
    assert_eq!(reason_of(&envelope("add_tag", r#"{"tag_name":"\ud800"}"#)), "invalid_string");
    assert_eq!(reason_of(&envelope("log_hparams", r#"{"value":{"a":"\udc00x"}}"#)), "invalid_string");
}

#[test]
fn every_reason_is_listed_and_lowercase() {
    let samples: Vec<DecodeError> = vec![
        DecodeError::Empty,
        DecodeError::InvalidUtf8 { valid_up_to: 0 },
        DecodeError::InvalidJson { detail: String::new() },
        DecodeError::TooDeep { field: "x" },
        DecodeError::TooLarge { field: "x", len: 0, limit: 0 },
        DecodeError::MissingRunId,
        DecodeError::MissingField { field: "x" },
        DecodeError::WrongType { field: "x", expected: "y" },
        DecodeError::OutOfRange { field: "x" },
        DecodeError::InvalidString { field: "x" },
        DecodeError::InvalidTimestamp,
        DecodeError::UnknownType { type_name: String::new() },
    ];
    let reasons: Vec<&str> = samples.iter().map(DecodeError::reason).collect();
    assert_eq!(reasons, DecodeError::REASONS);
    assert!(reasons.iter().all(|r| r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')));
}

/// Garbage of many shapes: the decoder answers, never panics.
#[test]
fn arbitrary_bytes_never_panic() {
    let base = envelope(
        "log_metric",
        r#"{"name":"loss","value":0.5,"step":0,"epoch":null,"context":{"subset":"train"},"dtype":"float"}"#,
    );
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5_000 {
        let mut bytes = base.clone();
        for _ in 0..(next() % 4 + 1) {
            let at = usize::try_from(next() % bytes.len() as u64).expect("index");
            match next() % 3 {
                0 => bytes[at] = u8::try_from(next() % 256).expect("byte"),
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, b"{}[]\",:0-eN\\"[usize::try_from(next() % 12).expect("small")]),
            }
        }
        let _ = decode(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// client_datetime: Python's fromisoformat

#[test]
fn client_datetime_parses_like_python_fromisoformat() {
    let cases: [(&str, Option<f64>); 17] = [
        ("2025-01-01T00:00:00+00:00", Some(1_735_689_600.0)),
        ("2025-01-01T00:00:00Z", Some(1_735_689_600.0)),
        ("2025-01-01T00:00:00.5+00:00", Some(1_735_689_600.5)),
        ("2025-01-01T00:00:00.500000+00:00", Some(1_735_689_600.5)),
        ("2025-01-01T00:00:00.1234567+00:00", Some(1_735_689_600.123_456)),
        ("2025-01-01T02:00:00+02:00", Some(1_735_689_600.0)),
        ("2024-12-31T19:00:00-05:00", Some(1_735_689_600.0)),
        ("2025-01-01 00:00:00+0000", Some(1_735_689_600.0)),
        ("20250101T000000Z", Some(1_735_689_600.0)),
        ("2025-01-01", Some(1_735_689_600.0)),
        ("2025-01-01T01", Some(1_735_693_200.0)),
        ("2024-02-29T00:00:00Z", Some(1_709_164_800.0)),
        ("1970-01-01T00:00:00Z", Some(0.0)),
        ("2025-02-29T00:00:00Z", None),
        ("2025-01-01T24:00:00Z", None),
        ("2025-01-01T00:00:00.+00:00", Some(1_735_689_600.0)),
        ("not-a-date", None),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_client_datetime(text), expected, "{text}");
    }
    for bad in ["", "2025", "2025-1-1", "2025-01-01T1", "2025-01-01T00:00:00+25:00", "2025-01-01T00:00:00 UTC"] {
        assert_eq!(parse_client_datetime(bad), None, "{bad}");
    }
}

/// The corners of CPython's C parser (3.11/3.12), each checked against `datetime.fromisoformat`.
#[test]
fn client_datetime_follows_the_c_parser_corners() {
    let cases: [(&str, Option<f64>); 18] = [
        ("2025-01-01T12:30.5", Some(1_735_734_600.5)),
        ("2025-01-01T12.5", Some(1_735_732_800.5)),
        ("2025-01-01T12:30:00.", None),
        ("2025-01-01T12:30:00.1234567890Z", Some(1_735_734_600.123_456)),
        ("2025-01-01T12:30:00.12x", None),
        ("2025-01-01T123000.5", Some(1_735_734_600.5)),
        ("2025-01-01T12:3000", None),
        ("2025-01-01T1230:00", None),
        ("2025-01-01T12:30:00+05:30:15.5", Some(1_735_714_784.5)),
        ("2025-01-01T12:30:00+0530", Some(1_735_714_800.0)),
        ("2025-01-01T12:30:00+05", Some(1_735_716_600.0)),
        ("2025-01-01T12:30:00+5", None),
        ("2025-01-01T12:30:00-00:00", Some(1_735_734_600.0)),
        ("2025-01-01T12:30:00Z+01:00", None),
        ("2025-01-01T12:30:00+01:00Z", None),
        ("2025-01-01T", None),
        ("2025-01-01é12:30", Some(1_735_734_600.0)),
        ("2025-01-01T12:30:60", None),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_client_datetime(text), expected, "{text}");
    }
    assert_eq!(parse_client_datetime("2025-01-01T12:30:00z"), None);
    assert_eq!(parse_client_datetime("2025-01-01T12:30:00.5+"), None);
    assert_eq!(parse_client_datetime("2025-01-01T12:30:00+05:"), None);
}

#[test]
fn client_datetime_keeps_microsecond_precision_as_python_timestamp() {
    // datetime.fromisoformat("2026-11-21T20:50:10.641486+00:00").timestamp() == 1795294210.641486
    assert_eq!(parse_client_datetime("2026-11-21T20:50:10.641486+00:00"), Some(1_795_294_210.641_486));
    assert_eq!(parse_client_datetime("0001-01-01T00:00:00+00:00"), Some(-62_135_596_800.0));
}

#[test]
fn naive_client_datetime_is_read_as_utc_deliberate_fix_of_local_time() {
    // The reference reads a naive value in the worker's local zone, so two workers in different
    // zones would store different client_start_ts. We read it as UTC.
    assert_eq!(parse_client_datetime("2025-01-01T00:00:00"), Some(1_735_689_600.0));
    assert_eq!(parse_client_datetime("2025-01-01T00:00:00"), parse_client_datetime("2025-01-01T00:00:00+00:00"));
}

#[test]
fn a_context_decoded_again_from_the_thread_cache_equals_a_fresh_parse_and_the_cache_stays_bounded() {
    let raw = r#"{"subset": "train", "fold": 3}"#;
    let fresh = parse_context(raw).expect("parses");
    let first = context_from_raw(raw).expect("parses");
    let cached = context_from_raw(raw).expect("parses");
    assert_eq!((&*first, &*cached), (&fresh, &fresh));
    assert!(Arc::ptr_eq(&first, &cached), "a hit shares the cached context");
    // Another spelling of the same object is its own entry with the same id, as the reference's
    // id is of the object, not of the text.
    let spaced = context_from_raw(r#"{"subset":"train","fold":3}"#).expect("parses");
    assert_eq!(spaced.id, fresh.id);
    assert_ne!(spaced.raw, fresh.raw);
    // An error is not kept: the same bad text fails again.
    assert!(context_from_raw("[1]").is_err());
    assert!(context_from_raw("[1]").is_err());
    for i in 0..(3 * CONTEXT_CACHE_ENTRIES) {
        let raw = format!(r#"{{"i": {i}}}"#);
        assert_eq!(*context_from_raw(&raw).expect("parses"), parse_context(&raw).expect("parses"));
    }
    assert!(CONTEXTS.with_borrow(|c| c.len()) <= CONTEXT_CACHE_ENTRIES);
}

#[test]
fn string_fields_with_escapes_decode_like_the_same_text_without_them() {
    let payload = r#"{"name":"loss","value":1.5,"step":3,"context":{"subset":"train"}}"#;
    let plain = decode(&envelope("log_metric", payload)).expect("plain decodes");
    let escaped = format!(
        r#"{{"type":"log\u005fmetric","run_id":"{RUN}","timestamp":"2025-01-01T00:00:00\u005a","payload":{payload}}}"#
    );
    assert_eq!(decode(escaped.as_bytes()).expect("escaped decodes"), plain);
    let run = r#"{"type":"finish_run","run_id":"a\u0062c","timestamp":"2025-01-01T00:00:00Z","payload":{}}"#;
    assert_eq!(decode(run.as_bytes()).expect("decodes").run_id, "abc");
    let bad = r#"{"type":"log_metric\ud800","run_id":"r","timestamp":"2025-01-01T00:00:00Z","payload":{}}"#;
    assert_eq!(reason_of(bad.as_bytes()), DecodeError::InvalidString { field: "type" }.reason());
}

/// Every golden record and example, and many random mutations of them: the one-pass path and the
/// serde_json path give the same message or the same error (including the error's detail).
#[test]
fn the_one_pass_path_decodes_every_record_as_the_serde_json_path_does() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let all: serde_json::Value = serde_json::from_str(EXAMPLES).expect("examples parse");
    let mut records: Vec<Vec<u8>> = all["examples"]
        .as_object()
        .expect("examples by type")
        .values()
        .map(|e| e["value_utf8"].as_str().expect("value_utf8").as_bytes().to_vec())
        .collect();
    let file = std::fs::File::open(GOLDEN_GZ).expect("golden gz present");
    records
        .extend(BufReader::new(flate2::read::GzDecoder::new(file)).lines().map(|l| golden_value(&l.expect("gz line"))));
    for record in &records {
        let message = decode(record).expect("recorded records decode");
        assert_eq!(Ok(message), decode_with_serde(record));
    }
    let mut rng = StdRng::seed_from_u64(0xDEC0);
    let (mut same_ok, mut same_err) = (0, 0);
    for _ in 0..20_000 {
        let mut bytes = records[rng.random_range(0..records.len())].clone();
        mutate(&mut rng, &mut bytes);
        let one_pass = decode(&bytes);
        assert_eq!(one_pass, decode_with_serde(&bytes), "{}", String::from_utf8_lossy(&bytes));
        if one_pass.is_ok() { same_ok += 1 } else { same_err += 1 }
    }
    assert!(same_ok > 1_000 && same_err > 1_000, "mutations made both outcomes ({same_ok} ok, {same_err} errors)");
}

/// Changes, inserts or removes one to three bytes of a record, drawn mostly from JSON's
/// punctuation, digits and literal letters, so most mutations stay near valid JSON.
pub(super) fn mutate(rng: &mut rand::rngs::StdRng, bytes: &mut Vec<u8>) {
    use rand::Rng;
    const ALPHABET: &[u8] = b"{}[]\",:\\ u0123456789.eE+-tfnalrsNI\x01\t";
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..3) {
            0 => bytes[at] = ALPHABET[rng.random_range(0..ALPHABET.len())],
            1 => bytes.insert(at, ALPHABET[rng.random_range(0..ALPHABET.len())]),
            _ => {
                bytes.remove(at);
            }
        }
    }
}
