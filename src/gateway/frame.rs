//! One WebSocket frame of the SDK into ingestion records, exactly as the reference gateway
//! (`matyan-frontier` 0.3.0) writes them (`clients.md` §2, `ingest-storage.md` §1.3–§1.4). Pure: no
//! IO, no clock (the receive time is an argument).
//!
//! A frame is one JSON object or a JSON array of them. Each message is validated as the
//! frontier's pydantic models read it (lax mode: an int where a float goes, an integral float or a
//! numeric string where an int goes, ISO strings or epoch numbers for date-times; extra keys are
//! ignored; `run_id` is always the path's), and becomes the record value
//! `{"type","run_id","timestamp","payload"}` in compact JSON, key order fixed, with the payload keys
//! the frontier writes for that type, `NaN`/`±Infinity` as `null`, raw UTF-8, and the gateway's
//! receive time as `timestamp`.
//!
//! Deliberate differences from the reference, each in a test name:
//! - a frame is all or nothing: the first invalid message rejects the whole frame with an error
//!   naming its index and why, and nothing of it is published (the reference publishes the
//!   messages before the bad one and drops the rest);
//! - a message our ingestion would dead-letter (a name too long for a key, a value too large for
//!   the store) is refused here, so the client hears about it (every record is checked with
//!   [`crate::ingest::message::decode`], the decoder the ingest pipeline runs);
//! - a frame that is JSON but neither an object nor an array is an error reply (the reference's
//!   handler raises and closes the socket);
//! - floats are written as Rust's shortest round-trip form (`1e20`, where pydantic writes `1e+20`):
//!   the same number for every JSON reader.

use thiserror::Error;

use crate::ingest::message;
use crate::storage::context_id::{PyJson, parse_python_json};

use super::datetime;

/// Bounds of one frame, from `[gateway]`.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Messages one frame may hold.
    pub max_messages: usize,
    /// Bytes of one encoded record value.
    pub max_record_bytes: usize,
}

/// Why a frame was refused; the text is the `error` of the reply.
#[derive(Debug, Error, PartialEq)]
pub enum FrameError {
    /// The frame is not JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The frame is JSON but neither an object nor an array of objects.
    #[error("a frame must be a JSON object or an array of objects")]
    Shape,
    /// The frame holds more messages than allowed.
    #[error("frame holds {count} messages, the limit is {limit}")]
    TooManyMessages { count: usize, limit: usize },
    /// One message is invalid; nothing of the frame is published.
    #[error("message {index}{}: {reason}; nothing of this frame was published", type_suffix(.type_name))]
    Message { index: usize, type_name: Option<String>, reason: String },
}

impl FrameError {
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Json(_) => "invalid_json",
            FrameError::Shape => "not_an_object",
            FrameError::TooManyMessages { .. } => "too_many_messages",
            FrameError::Message { .. } => "invalid_message",
        }
    }
}

fn type_suffix(type_name: &Option<String>) -> String {
    type_name.as_ref().map(|t| format!(" ({t})")).unwrap_or_default()
}

/// Encodes every message of `frame` as a record value for run `run_id`, received at `received`
/// (an RFC 3339 string, [`datetime::receive_timestamp`]); all or nothing.
pub fn encode(run_id: &str, frame: &str, received: &str, limits: FrameLimits) -> Result<Vec<Vec<u8>>, FrameError> {
    let parsed = parse_python_json(frame).map_err(|e| FrameError::Json(json_error(&e)))?;
    let items = match parsed {
        PyJson::Array(items) => items,
        obj @ PyJson::Object(_) => vec![obj],
        _ => return Err(FrameError::Shape),
    };
    if items.len() > limits.max_messages {
        return Err(FrameError::TooManyMessages { count: items.len(), limit: limits.max_messages });
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            encode_message(run_id, item, received, limits).map_err(|(type_name, reason)| FrameError::Message {
                index,
                type_name,
                reason,
            })
        })
        .collect()
}

fn json_error(e: &crate::storage::context_id::ContextIdError) -> String {
    use crate::storage::context_id::ContextIdError as E;
    match e {
        E::Syntax { offset, reason } => format!("{reason} at byte {offset}"),
        E::LoneSurrogate(offset) => format!("unpaired surrogate escape at byte {offset}"),
        E::TooDeep(depth) => format!("nests deeper than {depth} levels"),
    }
}

type MessageError = (Option<String>, String);

/// The fields of one message object.
struct Fields<'a>(&'a [(String, PyJson)]);

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a PyJson> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn required(&self, key: &str) -> Result<&'a PyJson, String> {
        self.get(key).ok_or_else(|| format!("field `{key}`: Field required"))
    }

    fn string(&self, key: &str) -> Result<PyJson, String> {
        let v = self.required(key)?;
        string(v).map_err(|e| format!("field `{key}`: {e}"))
    }

    /// `str | None` with no default: the key must be present, null allowed.
    fn opt_string_required(&self, key: &str) -> Result<PyJson, String> {
        match self.required(key)? {
            PyJson::Null => Ok(PyJson::Null),
            v => string(v).map_err(|e| format!("field `{key}`: {e}")),
        }
    }

    /// The field `key` checked by `f`: `default` when absent (`None`: required), null kept when
    /// `nullable`.
    fn with(
        &self,
        key: &str,
        default: Option<PyJson>,
        nullable: bool,
        f: fn(&PyJson) -> Result<PyJson, &'static str>,
    ) -> Result<PyJson, String> {
        match (self.get(key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("field `{key}`: Field required")),
            (Some(PyJson::Null), _) if nullable => Ok(PyJson::Null),
            (Some(v), _) => f(v).map_err(|e| format!("field `{key}`: {e}")),
        }
    }
}

fn string(v: &PyJson) -> Result<PyJson, &'static str> {
    match v {
        PyJson::Str(s) => Ok(PyJson::Str(s.clone())),
        _ => Err("Input should be a valid string"),
    }
}

fn float(v: &PyJson) -> Result<PyJson, &'static str> {
    const NOT: &str = "Input should be a valid number";
    let f = match v {
        PyJson::Float(f) => *f,
        PyJson::Int(text) => text.parse::<f64>().map_err(|_| NOT)?,
        PyJson::Bool(b) => f64::from(u8::from(*b)),
        PyJson::Str(s) => {
            parse_float_text(s.trim()).ok_or("Input should be a valid number, unable to parse string as a number")?
        }
        _ => return Err(NOT),
    };
    if f.is_infinite() && matches!(v, PyJson::Int(_)) {
        return Err("Input should be a finite number");
    }
    Ok(PyJson::Float(f))
}

fn parse_float_text(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "nan" | "+nan" | "-nan" => Some(f64::NAN),
        "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok().filter(|f| f.is_finite()),
    }
}

fn int(v: &PyJson) -> Result<PyJson, &'static str> {
    const NOT: &str = "Input should be a valid integer";
    match v {
        PyJson::Int(_) => Ok(v.clone()),
        PyJson::Bool(b) => Ok(PyJson::Int(u8::from(*b).to_string())),
        PyJson::Float(f) if !f.is_finite() => Err("Input should be a finite number"),
        PyJson::Float(f) if f.fract() != 0.0 => {
            Err("Input should be a valid integer, got a number with a fractional part")
        }
        #[allow(clippy::cast_possible_truncation)]
        PyJson::Float(f) if f.abs() < 1e38 => Ok(PyJson::Int(format!("{}", *f as i128))),
        PyJson::Float(_) => Err(NOT),
        PyJson::Str(s) => canonical_int(s.trim())
            .map(PyJson::Int)
            .ok_or("Input should be a valid integer, unable to parse string as an integer"),
        _ => Err(NOT),
    }
}

/// `[+-]digits` as canonical decimal text (no leading zeros, no `-0`).
fn canonical_int(s: &str) -> Option<String> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) || digits.len() > 4300 {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    Some(match (trimmed.is_empty(), neg) {
        (true, _) => "0".to_owned(),
        (false, true) => format!("-{trimmed}"),
        (false, false) => trimmed.to_owned(),
    })
}

fn boolean(v: &PyJson) -> Result<PyJson, &'static str> {
    const NOT: &str = "Input should be a valid boolean";
    let b = match v {
        PyJson::Bool(b) => *b,
        PyJson::Int(t) if t == "0" || t == "1" => t == "1",
        PyJson::Float(f) if *f == 0.0 || *f == 1.0 => *f == 1.0,
        PyJson::Str(s) => match s.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => false,
            "1" | "on" | "t" | "true" | "y" | "yes" => true,
            _ => return Err("Input should be a valid boolean, unable to interpret input"),
        },
        _ => return Err(NOT),
    };
    Ok(PyJson::Bool(b))
}

fn dict(v: &PyJson) -> Result<PyJson, &'static str> {
    match v {
        PyJson::Object(_) => Ok(v.clone()),
        _ => Err("Input should be a valid dictionary"),
    }
}

fn list(v: &PyJson) -> Result<PyJson, &'static str> {
    match v {
        PyJson::Array(_) => Ok(v.clone()),
        _ => Err("Input should be a valid list"),
    }
}

fn date_time(v: &PyJson) -> Result<PyJson, &'static str> {
    datetime::isoformat(v).map(PyJson::Str)
}

fn encode_message(run_id: &str, item: &PyJson, received: &str, limits: FrameLimits) -> Result<Vec<u8>, MessageError> {
    let PyJson::Object(obj) = item else {
        return Err((None, "Input should be a valid dictionary".into()));
    };
    let f = Fields(obj);
    let type_name = match f.get("type") {
        Some(PyJson::Str(t)) => t.clone(),
        _ => return Err((None, "Unable to extract tag using discriminator 'type'".into())),
    };
    let fail = |reason: String| (Some(truncate(&type_name)), reason);
    let payload = payload(&type_name, &f).map_err(fail)?;
    let mut value = Vec::with_capacity(128);
    value.extend_from_slice(b"{\"type\":");
    write_json(&PyJson::Str(type_name.clone()), &mut value);
    value.extend_from_slice(b",\"run_id\":");
    write_json(&PyJson::Str(run_id.to_owned()), &mut value);
    value.extend_from_slice(b",\"timestamp\":");
    write_json(&PyJson::Str(received.to_owned()), &mut value);
    value.extend_from_slice(b",\"payload\":");
    write_json(&PyJson::Object(payload), &mut value);
    value.push(b'}');
    if value.len() > limits.max_record_bytes {
        return Err(fail(format!(
            "the message is {} bytes as a record, the limit is {} (gateway.max_record_bytes)",
            value.len(),
            limits.max_record_bytes
        )));
    }
    // What the ingest pipeline would dead-letter is refused here, where the client hears of it.
    message::decode(&value).map_err(|e| fail(format!("ingestion would refuse it: {e}")))?;
    Ok(value)
}

fn truncate(type_name: &str) -> String {
    type_name.chars().take(64).collect()
}

/// The payload the frontier builds for `type_name` (its `_build_ingestion_message`).
fn payload(type_name: &str, f: &Fields<'_>) -> Result<Vec<(String, PyJson)>, String> {
    let kv = |k: &str, v: PyJson| (k.to_owned(), v);
    Ok(match type_name {
        "create_run" => vec![
            kv("client_datetime", f.with("client_datetime", None, false, date_time)?),
            kv("force_resume", f.with("force_resume", Some(PyJson::Bool(false)), false, boolean)?),
        ],
        "log_metric" => vec![
            kv("name", f.string("name")?),
            kv("value", f.with("value", None, false, float)?),
            kv("step", f.with("step", None, true, int)?),
            kv("epoch", f.with("epoch", None, true, int)?),
            kv("context", f.with("context", None, true, dict)?),
            kv("dtype", f.opt_string_required("dtype")?),
            kv("client_datetime", f.with("client_datetime", None, false, date_time)?),
        ],
        "log_hparams" => vec![kv("value", f.with("value", None, false, dict)?)],
        "finish_run" => vec![],
        "set_run_property" => {
            let mut out = Vec::new();
            for (key, check) in [
                ("name", string as fn(&PyJson) -> Result<PyJson, &'static str>),
                ("description", string),
                ("archived", boolean),
                ("experiment", string),
            ] {
                let v = f.with(key, Some(PyJson::Null), true, check)?;
                if v != PyJson::Null {
                    out.push(kv(key, v));
                }
            }
            out
        }
        "add_tag" | "remove_tag" => vec![kv("tag_name", f.string("tag_name")?)],
        "log_custom_object" => {
            // client_datetime is validated, then dropped, as the frontier does.
            f.with("client_datetime", Some(PyJson::Null), true, date_time)?;
            vec![
                kv("name", f.string("name")?),
                kv("value", f.with("value", None, false, dict)?),
                kv("step", f.with("step", Some(PyJson::Null), true, int)?),
                kv("epoch", f.with("epoch", Some(PyJson::Null), true, int)?),
                kv("context", f.with("context", Some(PyJson::Null), true, dict)?),
                kv("dtype", f.with("dtype", Some(PyJson::Str("custom".into())), false, string)?),
            ]
        }
        "log_terminal_line" => vec![kv("line", f.string("line")?), kv("step", f.with("step", None, false, int)?)],
        "log_record" => {
            let mut out = vec![
                kv("message", f.string("message")?),
                kv("level", f.with("level", None, false, int)?),
                kv("timestamp", f.with("timestamp", None, false, float)?),
            ];
            for (key, check) in
                [("logger_info", list as fn(&PyJson) -> Result<PyJson, &'static str>), ("extra_args", dict)]
            {
                let v = f.with(key, Some(PyJson::Null), true, check)?;
                if v != PyJson::Null {
                    out.push(kv(key, v));
                }
            }
            out
        }
        "blob_ref" => vec![
            kv("s3_key", f.string("s3_key")?),
            kv("artifact_path", f.string("artifact_path")?),
            kv(
                "content_type",
                f.with("content_type", Some(PyJson::Str("application/octet-stream".into())), false, string)?,
            ),
        ],
        other => {
            return Err(format!(
                "Input tag '{}' found using 'type' does not match any of the expected tags: 'create_run', \
                 'log_metric', 'log_hparams', 'finish_run', 'set_run_property', 'add_tag', 'remove_tag', \
                 'log_custom_object', 'log_terminal_line', 'log_record', 'blob_ref'",
                truncate(other)
            ));
        }
    })
}

/// Writes `v` as compact JSON the way pydantic's `model_dump_json` does: raw UTF-8, serde_json's
/// string escapes (the same set), non-finite floats as `null`, integers exactly.
pub fn write_json(v: &PyJson, out: &mut Vec<u8>) {
    match v {
        PyJson::Null => out.extend_from_slice(b"null"),
        PyJson::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        PyJson::Int(text) => out.extend_from_slice(text.as_bytes()),
        PyJson::Float(f) if !f.is_finite() => out.extend_from_slice(b"null"),
        PyJson::Float(f) => {
            // Writing to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, f);
        }
        PyJson::Str(s) => {
            let _ = serde_json::to_writer(&mut *out, s);
        }
        PyJson::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(item, out);
            }
            out.push(b']');
        }
        PyJson::Object(fields) => {
            out.push(b'{');
            for (i, (k, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write_json(item, out);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b";
    const AT: &str = "2025-01-01T00:00:00Z";
    const LIMITS: FrameLimits = FrameLimits { max_messages: 1000, max_record_bytes: 1 << 20 };

    fn one(frame: &str) -> String {
        let out = encode(RUN, frame, AT, LIMITS).unwrap();
        assert_eq!(out.len(), 1);
        String::from_utf8(out.into_iter().next().unwrap()).unwrap()
    }

    fn err(frame: &str) -> String {
        encode(RUN, frame, AT, LIMITS).unwrap_err().to_string()
    }

    #[test]
    fn a_metric_is_written_as_the_reference_gateway_writes_it() {
        // The example of ingest-storage.md §1.3, sent as the SDK sends it (run_id overwritten).
        let got = one(r#"{"type":"log_metric","run_id":"other","name":"loss","value":0.9,"step":0,"epoch":null,
               "context":{"subset":"train"},"dtype":"float","client_datetime":"2025-01-01T00:00:00+00:00"}"#);
        assert_eq!(
            got,
            r#"{"type":"log_metric","run_id":"3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b","timestamp":"2025-01-01T00:00:00Z","payload":{"name":"loss","value":0.9,"step":0,"epoch":null,"context":{"subset":"train"},"dtype":"float","client_datetime":"2025-01-01T00:00:00+00:00"}}"#
        );
    }

    #[test]
    fn ints_become_floats_nan_becomes_null_and_numeric_strings_are_coerced() {
        let base = r#""type":"log_metric","name":"n","epoch":null,"context":null,"dtype":"int","client_datetime":"2025-01-01T00:00:00Z""#;
        assert!(one(&format!("{{{base},\"value\":64,\"step\":\"3\"}}")).contains(r#""value":64.0,"step":3,"#));
        assert!(one(&format!("{{{base},\"value\":NaN,\"step\":2.0}}")).contains(r#""value":null,"step":2,"#));
        assert!(one(&format!("{{{base},\"value\":true,\"step\":null}}")).contains(r#""value":1.0,"step":null,"#));
        assert!(
            one(&format!("{{{base},\"value\":\"1.5\",\"step\":4294967296}}"))
                .contains(r#""value":1.5,"step":4294967296,"#)
        );
        assert!(err(&format!("{{{base},\"value\":1,\"step\":1.5}}")).contains("fractional part"));
        assert!(err(&format!("{{{base},\"value\":null,\"step\":1}}")).contains("field `value`"));
        assert!(err(&format!("{{{base},\"value\":1}}")).contains("field `step`: Field required"));
    }

    #[test]
    fn every_type_carries_exactly_the_frontier_payload_keys() {
        let cases = [
            (
                r#"{"type":"create_run","client_datetime":"2025-01-01T00:00:00.5Z"}"#,
                r#"{"client_datetime":"2025-01-01T00:00:00.500000+00:00","force_resume":false}"#,
            ),
            (
                r#"{"type":"log_hparams","value":{"lr":0.01,"nested":{"a":1}}}"#,
                r#"{"value":{"lr":0.01,"nested":{"a":1}}}"#,
            ),
            (r#"{"type":"finish_run","client_datetime":"2025-01-01T00:00:00Z"}"#, "{}"),
            (
                r#"{"type":"set_run_property","name":"x","description":null,"archived":true}"#,
                r#"{"name":"x","archived":true}"#,
            ),
            (r#"{"type":"add_tag","tag_name":"best"}"#, r#"{"tag_name":"best"}"#),
            (r#"{"type":"remove_tag","tag_name":"best","extra":1}"#, r#"{"tag_name":"best"}"#),
            (
                r#"{"type":"log_custom_object","name":"t","value":{"data":"hi"},"client_datetime":"2025-01-01T00:00:00Z"}"#,
                r#"{"name":"t","value":{"data":"hi"},"step":null,"epoch":null,"context":null,"dtype":"custom"}"#,
            ),
            (r#"{"type":"log_terminal_line","line":"héllo","step":2}"#, r#"{"line":"héllo","step":2}"#),
            (
                r#"{"type":"log_record","message":"m","level":20,"timestamp":1700000000,"logger_info":null}"#,
                r#"{"message":"m","level":20,"timestamp":1700000000.0}"#,
            ),
            (
                r#"{"type":"log_record","message":"m","level":20,"timestamp":1.5,"logger_info":["f.py",3],"extra_args":{"k":"v"}}"#,
                r#"{"message":"m","level":20,"timestamp":1.5,"logger_info":["f.py",3],"extra_args":{"k":"v"}}"#,
            ),
            (
                r#"{"type":"blob_ref","s3_key":"r/a.png","artifact_path":"a.png"}"#,
                r#"{"s3_key":"r/a.png","artifact_path":"a.png","content_type":"application/octet-stream"}"#,
            ),
        ];
        for (frame, payload) in cases {
            let got = one(frame);
            let want_tail = format!(r#","payload":{payload}}}"#);
            assert!(got.ends_with(&want_tail), "{frame}\n got {got}\nwant …{want_tail}");
        }
    }

    #[test]
    fn a_frame_with_one_invalid_message_is_refused_whole_naming_its_index() {
        let frame = r#"[{"type":"add_tag","tag_name":"a"},{"type":"add_tag","tag_name":"b"},{"type":"add_tag"}]"#;
        let e = encode(RUN, frame, AT, LIMITS).unwrap_err();
        assert_eq!(
            e,
            FrameError::Message {
                index: 2,
                type_name: Some("add_tag".into()),
                reason: "field `tag_name`: Field required".into()
            }
        );
        assert!(e.to_string().starts_with("message 2 (add_tag): field `tag_name`: Field required"));
    }

    #[test]
    fn malformed_frames_are_named_errors() {
        assert!(err("{").starts_with("invalid JSON"));
        assert!(err("").starts_with("invalid JSON"));
        assert_eq!(err("3"), "a frame must be a JSON object or an array of objects");
        assert!(err("[3]").starts_with("message 0: Input should be a valid dictionary"));
        assert!(err(r#"{"type":"bogus"}"#).contains("Input tag 'bogus'"));
        assert!(err(r#"{"name":"x"}"#).contains("discriminator 'type'"));
        assert!(err(r#"{"type":"add_tag","tag_name":5}"#).contains("valid string"));
        assert!(err(&"[".repeat(200)).contains("nests deeper"));
        assert_eq!(encode(RUN, "[]", AT, LIMITS).unwrap(), Vec::<Vec<u8>>::new());
        let many = format!("[{}]", vec![r#"{"type":"finish_run"}"#; 1001].join(","));
        assert_eq!(
            encode(RUN, &many, AT, LIMITS).unwrap_err(),
            FrameError::TooManyMessages { count: 1001, limit: 1000 }
        );
    }

    #[test]
    fn what_ingestion_would_dead_letter_is_refused_at_the_gateway() {
        let long = "n".repeat(5000);
        let e = err(&format!(r#"{{"type":"add_tag","tag_name":"{long}"}}"#));
        assert!(e.contains("ingestion would refuse it"), "{e}");
        let limits = FrameLimits { max_messages: 10, max_record_bytes: 200 };
        let e = encode(
            RUN,
            &format!(r#"{{"type":"log_terminal_line","line":"{}","step":1}}"#, "x".repeat(300)),
            AT,
            limits,
        )
        .unwrap_err();
        assert!(e.to_string().contains("gateway.max_record_bytes"), "{e}");
    }

    #[test]
    fn every_accepted_record_decodes_in_our_ingestion() {
        let frame = r#"[{"type":"create_run","client_datetime":"2025-01-01T00:00:00Z","force_resume":"yes"},
            {"type":"log_metric","name":"loss","value":Infinity,"step":7,"epoch":1,"context":{"s":[1,2]},"dtype":null,"client_datetime":1.5e9}]"#;
        for value in encode(RUN, frame, AT, LIMITS).unwrap() {
            let msg = crate::ingest::message::decode(&value).unwrap();
            assert_eq!(msg.run_id, RUN);
        }
    }
}
