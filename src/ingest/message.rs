//! Decoding of `data-ingestion` record values into typed [`IngestMessage`]s (spec §1.3, §1.4, §1.7).
//!
//! A record value is compact UTF-8 JSON `{"type","run_id","timestamp","payload"}` as the gateway's
//! pydantic `model_dump_json()` writes it. [`decode`] turns the bytes into one typed payload per
//! message type, or a [`DecodeError`] whose [`DecodeError::reason`] is a bounded label for
//! dead-lettering and metrics. It never panics.
//!
//! Strictness follows the reference: what the reference would fail on deterministically (bad JSON,
//! a missing envelope field, a missing `name`/`tag_name`, a value too large for FoundationDB, an
//! integer msgpack cannot hold) is an error here, so the record is dead-lettered instead of killing
//! a whole chunk; what the reference tolerates (unknown top-level fields, extra payload keys, a
//! missing optional key, an unparsable `client_datetime`, `NaN`/`Infinity` literals) is accepted.
//!
//! How the JSON is read:
//! - The envelope and the payload are split into their keys and raw JSON texts in one pass, without
//!   building a tree ([`scan`]; records outside its strict subset of JSON are split by serde_json's
//!   `raw_value` instead); a repeated key keeps its last value, as a Python dict does.
//! - Typed fields (strings, ints, bools) are read from their slices with serde_json.
//! - Free-form fields (metric values, contexts, hparams, custom objects, log record extras) are
//!   parsed with the Python-rules parser of [`crate::storage::context_id`] and converted to the
//!   msgpack [`Value`]: ints stay ints (exactly, up to msgpack's range), floats stay floats, object
//!   order is kept. Context ids are computed from the raw JSON text of `context` exactly as
//!   [`crate::storage::context_id::context_to_id_from_json`] does (its one parse also gives the
//!   stored value), and the text stays available in [`Context::raw`].
//! - serde_json rejects the non-standard literals `NaN`, `Infinity` and `-Infinity` that pydantic
//!   accepts. Such a record is re-read with the Python-rules parser and each non-finite number
//!   becomes `null`, which is exactly what the gateway forwards for them (§1.3). Deliberate: only
//!   direct producers can send those literals, and `null` keeps their meaning (no value) everywhere.
//!
//! Deliberate choices where the reference has no deterministic answer, each covered by a test:
//! - a naive `client_datetime` is read as UTC, not the worker's local zone (§1.7), so every worker
//!   stores the same `client_start_ts`;
//! - an integral float step or epoch (`3.0`) is read as the int `3`, as the gateway's pydantic model
//!   would coerce it; a fractional one is `wrong_type`;
//! - a run id must be a non-empty string; a `context` must be an object or null.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use crate::clock::{days_from_civil, days_in_month};
use crate::fast_hash::FastMap;
use crate::storage::context_id::{ContextIdError, PyJson, id_of, parse_python_json};
use crate::storage::value::{self as mp, Value};
use scan::Members;

/// Largest record value accepted, in bytes. It bounds the decoder's memory and sits well above
/// the gateway's 1 MiB producer request limit, so no genuine gateway record comes near it.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// Largest text accepted in a field that ends up inside a FoundationDB key (run id, sequence name,
/// tag name, artifact path, experiment name). FoundationDB rejects keys above 10,000 bytes; two such
/// parts plus the tuple overhead must stay under it.
pub const MAX_KEY_PART_BYTES: usize = 4_000;

/// Largest encoded size of a field stored as one FoundationDB value (FoundationDB's value limit).
pub const MAX_VALUE_BYTES: usize = crate::storage::kv::Limits::FDB.max_value_bytes;

/// Longest `type` string kept in an [`DecodeError::UnknownType`] (the rest is cut).
const MAX_TYPE_ECHO: usize = 64;

/// The message types of the `data-ingestion` topic: the eleven the gateway produces and the
/// backend's own `delete_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `create_run`.
    CreateRun,
    /// `log_metric`.
    LogMetric,
    /// `log_custom_object`.
    LogCustomObject,
    /// `log_hparams`.
    LogHparams,
    /// `finish_run`.
    FinishRun,
    /// `set_run_property`.
    SetRunProperty,
    /// `add_tag`.
    AddTag,
    /// `remove_tag`.
    RemoveTag,
    /// `log_terminal_line`.
    LogTerminalLine,
    /// `log_record`.
    LogRecord,
    /// `blob_ref`.
    BlobRef,
    /// `delete_run` (produced by the backend's REST API, never by the gateway).
    DeleteRun,
}

impl MessageType {
    /// Every message type, in the order of the spec's table.
    pub const ALL: [MessageType; 12] = [
        MessageType::CreateRun,
        MessageType::LogMetric,
        MessageType::LogCustomObject,
        MessageType::LogHparams,
        MessageType::FinishRun,
        MessageType::SetRunProperty,
        MessageType::AddTag,
        MessageType::RemoveTag,
        MessageType::LogTerminalLine,
        MessageType::LogRecord,
        MessageType::BlobRef,
        MessageType::DeleteRun,
    ];

    /// Returns the wire name, also used as a bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::CreateRun => "create_run",
            MessageType::LogMetric => "log_metric",
            MessageType::LogCustomObject => "log_custom_object",
            MessageType::LogHparams => "log_hparams",
            MessageType::FinishRun => "finish_run",
            MessageType::SetRunProperty => "set_run_property",
            MessageType::AddTag => "add_tag",
            MessageType::RemoveTag => "remove_tag",
            MessageType::LogTerminalLine => "log_terminal_line",
            MessageType::LogRecord => "log_record",
            MessageType::BlobRef => "blob_ref",
            MessageType::DeleteRun => "delete_run",
        }
    }

    /// Finds the type of a wire name (exact, case-sensitive, as the reference's dispatch).
    pub fn from_wire(name: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a record value could not be decoded. [`DecodeError::reason`] gives the bounded label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The value is empty (or the record had no value).
    #[error("empty record value")]
    Empty,
    /// The value is not UTF-8.
    #[error("record value is not utf-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    /// The value is not JSON (truncated, trailing data, bad syntax).
    #[error("invalid json: {detail}")]
    InvalidJson { detail: String },
    /// The JSON nests deeper than the decoder allows.
    #[error("json nests too deep in {field}")]
    TooDeep { field: &'static str },
    /// The record, or a field of it, is larger than can be stored.
    #[error("{field} is too large: {len} bytes, limit {limit}")]
    TooLarge { field: &'static str, len: usize, limit: usize },
    /// The envelope has no `run_id`, or it is null or empty.
    #[error("missing run_id")]
    MissingRunId,
    /// A required field is absent.
    #[error("missing field {field}")]
    MissingField { field: &'static str },
    /// A field has the wrong JSON type.
    #[error("field {field} must be {expected}")]
    WrongType { field: &'static str, expected: &'static str },
    /// An integer does not fit where it goes (an i64 step, msgpack's 64-bit range).
    #[error("integer in {field} is out of range")]
    OutOfRange { field: &'static str },
    /// A string holds an unpaired surrogate escape, which cannot be stored as UTF-8.
    #[error("string in {field} holds an unpaired surrogate")]
    InvalidString { field: &'static str },
    /// The envelope `timestamp` is a string that is not a date-time.
    #[error("invalid envelope timestamp")]
    InvalidTimestamp,
    /// The `type` is none of the known message types.
    #[error("unknown message type {type_name:?}")]
    UnknownType { type_name: String },
}

impl DecodeError {
    /// Every label [`DecodeError::reason`] can return.
    pub const REASONS: [&'static str; 12] = [
        "empty",
        "invalid_utf8",
        "invalid_json",
        "too_deep",
        "too_large",
        "missing_run_id",
        "missing_field",
        "wrong_type",
        "out_of_range",
        "invalid_string",
        "invalid_timestamp",
        "unknown_type",
    ];

    /// Returns the bounded label of the failure, for dead-letter headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
            DecodeError::InvalidJson { .. } => "invalid_json",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::MissingRunId => "missing_run_id",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::OutOfRange { .. } => "out_of_range",
            DecodeError::InvalidString { .. } => "invalid_string",
            DecodeError::InvalidTimestamp => "invalid_timestamp",
            DecodeError::UnknownType { .. } => "unknown_type",
        }
    }
}

/// One decoded record of `data-ingestion`.
///
/// The message type is not stored separately: [`IngestMessage::kind`] derives it from the payload,
/// so the two can never disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestMessage {
    /// The run id (the hash R of every key), as sent.
    pub run_id: String,
    /// The envelope timestamp in POSIX seconds. The handlers never use it (§1.3); it is kept for
    /// logs and lag metrics. A naive string is read as UTC.
    pub timestamp: f64,
    /// The typed payload.
    pub payload: Payload,
}

impl IngestMessage {
    /// Builds a message (tests and producers of our own, such as the REST API's `delete_run`).
    pub fn new(run_id: impl Into<String>, timestamp: f64, payload: Payload) -> Self {
        IngestMessage { run_id: run_id.into(), timestamp, payload }
    }

    /// Returns the message type.
    pub fn kind(&self) -> MessageType {
        self.payload.kind()
    }
}

/// The typed payload of each message type.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// `create_run`.
    CreateRun(CreateRun),
    /// `log_metric`.
    LogMetric(LogMetric),
    /// `log_custom_object`.
    LogCustomObject(LogCustomObject),
    /// `log_hparams`.
    LogHparams(LogHparams),
    /// `finish_run`.
    FinishRun(FinishRun),
    /// `set_run_property`.
    SetRunProperty(SetRunProperty),
    /// `add_tag`.
    AddTag(TagChange),
    /// `remove_tag`.
    RemoveTag(TagChange),
    /// `log_terminal_line`.
    LogTerminalLine(LogTerminalLine),
    /// `log_record`.
    LogRecord(LogRecord),
    /// `blob_ref`.
    BlobRef(BlobRef),
    /// `delete_run`: the payload is ignored.
    DeleteRun,
}

impl Payload {
    /// Returns the message type of the payload.
    pub fn kind(&self) -> MessageType {
        match self {
            Payload::CreateRun(_) => MessageType::CreateRun,
            Payload::LogMetric(_) => MessageType::LogMetric,
            Payload::LogCustomObject(_) => MessageType::LogCustomObject,
            Payload::LogHparams(_) => MessageType::LogHparams,
            Payload::FinishRun(_) => MessageType::FinishRun,
            Payload::SetRunProperty(_) => MessageType::SetRunProperty,
            Payload::AddTag(_) => MessageType::AddTag,
            Payload::RemoveTag(_) => MessageType::RemoveTag,
            Payload::LogTerminalLine(_) => MessageType::LogTerminalLine,
            Payload::LogRecord(_) => MessageType::LogRecord,
            Payload::BlobRef(_) => MessageType::BlobRef,
            Payload::DeleteRun => MessageType::DeleteRun,
        }
    }
}

/// `create_run`: `force_resume` defaults to false; `client_datetime` is optional.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRun {
    /// `client_datetime` in POSIX seconds; `None` when absent, empty or unparsable (§8 item 1).
    pub client_datetime: Option<f64>,
    /// Python truthiness of `force_resume` (absent or null is false).
    pub force_resume: bool,
}

/// A sequence context: the object as received, its id, and its raw JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// `context_to_id` of the received JSON (0 for null or `{}`).
    pub id: u32,
    /// The context as stored under `(R,"contexts",id)`: the object in received order, `{}` for null.
    pub value: Value,
    /// The raw JSON text of `context` as received (`null` when it was null or absent).
    pub raw: Box<str>,
}

impl Context {
    /// Returns context 0 (`{}`), used when `context` is null or absent and by terminal lines and log
    /// records.
    pub fn empty() -> Self {
        Context { id: 0, value: Value::Map(Vec::new()), raw: "null".into() }
    }

    /// Builds a context from raw JSON text: an object or null.
    pub fn from_json(raw: &str) -> Result<Self, DecodeError> {
        context_from_raw(raw).map(Arc::unwrap_or_clone)
    }
}

/// `log_metric`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMetric {
    /// Sequence name.
    pub name: String,
    /// The value as received: a float from the gateway, `Nil` for NaN/±Inf (sent as null).
    pub value: Value,
    /// Explicit step, or `None` for the automatic step (§1.9).
    pub step: Option<i64>,
    /// Epoch; the column is written only when present.
    pub epoch: Option<i64>,
    /// The context (`{}` when null or absent), shared with every record of the same raw context
    /// a decoding thread saw lately.
    pub context: Arc<Context>,
    /// `dtype`, `"float"` when null, absent or empty.
    pub dtype: String,
}

/// `log_custom_object`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogCustomObject {
    /// Sequence name.
    pub name: String,
    /// The object, stored whole as one msgpack value (images and audio carry an `s3_key`).
    pub value: Value,
    /// Explicit step, or `None` for the automatic step.
    pub step: Option<i64>,
    /// Epoch; the column is written only when present.
    pub epoch: Option<i64>,
    /// The context (`{}` when null or absent), shared with every record of the same raw context
    /// a decoding thread saw lately.
    pub context: Arc<Context>,
    /// `dtype`, `"custom"` when null, absent or empty.
    pub dtype: String,
    /// A top-level `payload.data`, which only the §1.10 size estimate reads. Clients never send it.
    pub data: Option<Value>,
}

/// `log_hparams`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogHparams {
    /// `payload.value` as received (`{}` when absent); the handler does nothing unless it is a
    /// non-empty map.
    pub value: Value,
}

/// `finish_run`.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishRun {
    /// `client_datetime` in POSIX seconds (only direct producers send it).
    pub client_datetime: Option<f64>,
}

/// `set_run_property`: each present key is acted on. A null key counts as absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SetRunProperty {
    /// New run name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New archived flag (stored as `is_archived`).
    pub archived: Option<bool>,
    /// Experiment name to link (created when missing).
    pub experiment: Option<String>,
}

/// `add_tag` and `remove_tag`.
#[derive(Debug, Clone, PartialEq)]
pub struct TagChange {
    /// The tag name.
    pub tag_name: String,
}

/// `log_terminal_line`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogTerminalLine {
    /// The line.
    pub line: String,
    /// The client's step.
    pub step: i64,
}

/// `log_record`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// The message.
    pub message: String,
    /// The logging level (stored as `log_level`).
    pub level: i64,
    /// The client's time, a number (stored as received).
    pub timestamp: Value,
    /// `logger_info`, when present and not null.
    pub logger_info: Option<Value>,
    /// `extra_args`, when present and not null (stored as `args`).
    pub extra_args: Option<Value>,
}

/// `blob_ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobRef {
    /// Object key in the blob store (default `""`).
    pub s3_key: String,
    /// The artifact's path, one tuple element even with `/` (default `"unknown"`).
    pub artifact_path: String,
    /// MIME type (default `application/octet-stream`).
    pub content_type: String,
}

/// Decodes one record value.
pub fn decode(bytes: &[u8]) -> Result<IngestMessage, DecodeError> {
    let text = record_text(bytes)?;
    let (mut envelope, mut payload) = (Members::default(), Members::default());
    if let Some(split) = scan::envelope(text, &mut envelope, &mut payload) {
        return decode_envelope(&envelope, split.then_some(&payload));
    }
    decode_text_with_serde(text)
}

/// Decodes one record value as [`decode`] does, but splits it with serde_json, the envelope first
/// and the payload after: the path [`decode`] takes for a record outside the one-pass scanner's
/// subset, alone. For `matyan bench decode` (its baseline) and the tests that hold both paths equal.
pub fn decode_with_serde(bytes: &[u8]) -> Result<IngestMessage, DecodeError> {
    decode_text_with_serde(record_text(bytes)?)
}

/// The record's text, when it is not empty, within [`MAX_RECORD_BYTES`] and UTF-8.
fn record_text(bytes: &[u8]) -> Result<&str, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(DecodeError::TooLarge { field: "record", len: bytes.len(), limit: MAX_RECORD_BYTES });
    }
    std::str::from_utf8(bytes).map_err(|e| DecodeError::InvalidUtf8 { valid_up_to: e.valid_up_to() })
}

fn decode_text_with_serde(text: &str) -> Result<IngestMessage, DecodeError> {
    match scan::object(text) {
        Ok(members) => decode_envelope(&members, None),
        Err(err) => {
            // The strict parser failed: maybe Python-only literals, else a real syntax error.
            let normalized = normalize_python_json(text, &err)?;
            let members = scan::object(&normalized).map_err(|e| json_error(&e))?;
            decode_envelope(&members, None)
        }
    }
}

/// Re-reads a text that serde_json rejected with Python's `json.loads` rules; when that succeeds,
/// writes it back as standard JSON with every non-finite float as `null` (what the gateway sends).
fn normalize_python_json(text: &str, original: &serde_json::Error) -> Result<String, DecodeError> {
    let first = text.trim_start_matches([' ', '\t', '\n', '\r']).as_bytes().first().copied();
    if original.is_data() && first != Some(b'{') {
        return Err(DecodeError::WrongType { field: "record", expected: "an object" });
    }
    match parse_python_json(text) {
        Ok(PyJson::Object(entries)) => {
            let mut out = String::with_capacity(text.len());
            write_standard_json(&PyJson::Object(entries), &mut out);
            Ok(out)
        }
        Ok(_) => Err(DecodeError::WrongType { field: "record", expected: "an object" }),
        Err(ContextIdError::TooDeep(_)) => Err(DecodeError::TooDeep { field: "record" }),
        Err(ContextIdError::LoneSurrogate(_)) => Err(DecodeError::InvalidString { field: "record" }),
        Err(ContextIdError::Syntax { .. }) => Err(json_error(original)),
    }
}

fn write_standard_json(v: &PyJson, out: &mut String) {
    match v {
        PyJson::Null => out.push_str("null"),
        PyJson::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        PyJson::Int(digits) => out.push_str(digits),
        PyJson::Float(f) if f.is_finite() => {
            out.push_str(&crate::storage::context_id::python_float_repr(*f));
        }
        PyJson::Float(_) => out.push_str("null"),
        PyJson::Str(s) => write_json_string(s, out),
        PyJson::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_standard_json(item, out);
            }
            out.push(']');
        }
        PyJson::Object(entries) => {
            out.push('{');
            for (i, (k, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(k, out);
                out.push(':');
                write_standard_json(item, out);
            }
            out.push('}');
        }
    }
}

fn write_json_string(s: &str, out: &mut String) {
    // serde_json never fails to serialize a str.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

fn json_error(err: &serde_json::Error) -> DecodeError {
    if err.to_string().contains("recursion limit") {
        return DecodeError::TooDeep { field: "record" };
    }
    if err.is_data() {
        return DecodeError::WrongType { field: "record", expected: "an object" };
    }
    DecodeError::InvalidJson { detail: err.to_string() }
}

/// Decodes a split envelope; `split_payload` is its payload's members when the fast path already
/// split them.
fn decode_envelope<'a>(
    envelope: &Members<'a>,
    split_payload: Option<&Members<'a>>,
) -> Result<IngestMessage, DecodeError> {
    let type_raw = envelope.get("type").ok_or(DecodeError::MissingField { field: "type" })?;
    let type_name = read_str(type_raw, "type")?;
    let run_id = match envelope.get("run_id") {
        None => return Err(DecodeError::MissingRunId),
        Some("null") => return Err(DecodeError::MissingRunId),
        Some(raw) => read_string(raw, "run_id")?,
    };
    if run_id.is_empty() {
        return Err(DecodeError::MissingRunId);
    }
    check_key_part(&run_id, "run_id")?;
    let timestamp = read_envelope_timestamp(envelope.get("timestamp"))?;
    let payload_raw = envelope.get("payload").ok_or(DecodeError::MissingField { field: "payload" })?;
    let read;
    let payload = match split_payload {
        Some(members) => members,
        None => {
            read = read_object(payload_raw, "payload")?;
            &read
        }
    };
    let Some(kind) = MessageType::from_wire(&type_name) else {
        let mut echo: String = type_name.chars().take(MAX_TYPE_ECHO).collect();
        if echo.len() < type_name.len() {
            echo.push('…');
        }
        return Err(DecodeError::UnknownType { type_name: echo });
    };
    let payload = decode_payload(kind, payload)?;
    Ok(IngestMessage { run_id, timestamp, payload })
}

fn decode_payload(kind: MessageType, p: &Members<'_>) -> Result<Payload, DecodeError> {
    Ok(match kind {
        MessageType::CreateRun => Payload::CreateRun(CreateRun {
            client_datetime: read_client_datetime(p.get("client_datetime")),
            force_resume: match p.get("force_resume") {
                None => false,
                Some(raw) => read_value(raw, "force_resume")?.is_truthy(),
            },
        }),
        MessageType::LogMetric => {
            let name = required_string(p, "name")?;
            check_key_part(&name, "name")?;
            let value = read_value(p.get("value").ok_or(DecodeError::MissingField { field: "value" })?, "value")?;
            check_value_size(&value, "value")?;
            Payload::LogMetric(LogMetric {
                name,
                value,
                step: optional_int(p.get("step"), "step")?,
                epoch: optional_int(p.get("epoch"), "epoch")?,
                context: read_context(p.get("context"))?,
                dtype: optional_string(p.get("dtype"), "dtype")?
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "float".into()),
            })
        }
        MessageType::LogCustomObject => {
            let name = required_string(p, "name")?;
            check_key_part(&name, "name")?;
            let value = read_value(p.get("value").ok_or(DecodeError::MissingField { field: "value" })?, "value")?;
            check_value_size(&value, "value")?;
            Payload::LogCustomObject(LogCustomObject {
                name,
                value,
                step: optional_int(p.get("step"), "step")?,
                epoch: optional_int(p.get("epoch"), "epoch")?,
                context: read_context(p.get("context"))?,
                dtype: optional_string(p.get("dtype"), "dtype")?
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "custom".into()),
                data: p.get("data").map(|raw| read_value(raw, "data")).transpose()?,
            })
        }
        MessageType::LogHparams => {
            let value = match p.get("value") {
                None => Value::Map(Vec::new()),
                Some(raw) => read_value(raw, "value")?,
            };
            check_leaf_sizes(&value, "value")?;
            Payload::LogHparams(LogHparams { value })
        }
        MessageType::FinishRun => {
            Payload::FinishRun(FinishRun { client_datetime: read_client_datetime(p.get("client_datetime")) })
        }
        MessageType::SetRunProperty => {
            let experiment = optional_string(p.get("experiment"), "experiment")?;
            if let Some(e) = &experiment {
                check_key_part(e, "experiment")?;
            }
            let name = optional_string(p.get("name"), "name")?;
            let description = optional_string(p.get("description"), "description")?;
            for (field, text) in [("name", &name), ("description", &description)] {
                if let Some(t) = text {
                    check_text_value(t, field)?;
                }
            }
            Payload::SetRunProperty(SetRunProperty {
                name,
                description,
                archived: optional_bool(p.get("archived"), "archived")?,
                experiment,
            })
        }
        MessageType::AddTag | MessageType::RemoveTag => {
            let tag_name = required_string(p, "tag_name")?;
            check_key_part(&tag_name, "tag_name")?;
            let change = TagChange { tag_name };
            if kind == MessageType::AddTag { Payload::AddTag(change) } else { Payload::RemoveTag(change) }
        }
        MessageType::LogTerminalLine => {
            let line = required_string(p, "line")?;
            check_text_value(&line, "line")?;
            let step = optional_int(Some(p.get("step").ok_or(DecodeError::MissingField { field: "step" })?), "step")?
                .ok_or(DecodeError::WrongType { field: "step", expected: "an integer" })?;
            Payload::LogTerminalLine(LogTerminalLine { line, step })
        }
        MessageType::LogRecord => {
            let message = required_string(p, "message")?;
            check_text_value(&message, "message")?;
            let level =
                optional_int(Some(p.get("level").ok_or(DecodeError::MissingField { field: "level" })?), "level")?
                    .ok_or(DecodeError::WrongType { field: "level", expected: "an integer" })?;
            let ts_raw = p.get("timestamp").ok_or(DecodeError::MissingField { field: "timestamp" })?;
            let timestamp = read_value(ts_raw, "timestamp")?;
            if !matches!(timestamp, Value::Int(_) | Value::Float(_)) {
                return Err(DecodeError::WrongType { field: "timestamp", expected: "a number" });
            }
            let logger_info = optional_value(p.get("logger_info"), "logger_info")?;
            let extra_args = optional_value(p.get("extra_args"), "extra_args")?;
            for (field, v) in [("logger_info", &logger_info), ("extra_args", &extra_args)] {
                if let Some(v) = v {
                    check_value_size(v, field)?;
                }
            }
            Payload::LogRecord(LogRecord { message, level, timestamp, logger_info, extra_args })
        }
        MessageType::BlobRef => {
            let s3_key = optional_string(p.get("s3_key"), "s3_key")?.unwrap_or_default();
            let artifact_path =
                optional_string(p.get("artifact_path"), "artifact_path")?.unwrap_or_else(|| "unknown".into());
            let content_type = optional_string(p.get("content_type"), "content_type")?
                .unwrap_or_else(|| "application/octet-stream".into());
            check_key_part(&artifact_path, "artifact_path")?;
            check_text_value(&s3_key, "s3_key")?;
            check_text_value(&content_type, "content_type")?;
            Payload::BlobRef(BlobRef { s3_key, artifact_path, content_type })
        }
        MessageType::DeleteRun => Payload::DeleteRun,
    })
}

// ---------------------------------------------------------------------------------------------
// Raw objects and typed field readers

fn first_byte(raw: &str) -> u8 {
    raw.as_bytes().first().copied().unwrap_or(b' ')
}

fn read_object<'a>(raw: &'a str, field: &'static str) -> Result<Members<'a>, DecodeError> {
    if first_byte(raw) != b'{' {
        return Err(DecodeError::WrongType { field, expected: "an object" });
    }
    scan::object(raw).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            DecodeError::TooDeep { field }
        } else {
            DecodeError::InvalidJson { detail: e.to_string() }
        }
    })
}

fn read_string(raw: &str, field: &'static str) -> Result<String, DecodeError> {
    read_str(raw, field).map(Cow::into_owned)
}

/// A JSON string's text, borrowed from the record when it has no escape (the common case: field
/// names, types and timestamps), decoded otherwise.
fn read_str<'a>(raw: &'a str, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    if first_byte(raw) != b'"' {
        return Err(DecodeError::WrongType { field, expected: "a string" });
    }
    let text = raw;
    // A raw value is valid JSON: a string without a backslash is its text between the quotes.
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
        && !inner.contains('\\')
    {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).map(Cow::Owned).map_err(|_| DecodeError::InvalidString { field })
}

fn required_string(p: &Members<'_>, field: &'static str) -> Result<String, DecodeError> {
    match p.get(field) {
        None => Err(DecodeError::MissingField { field }),
        Some("null") => Err(DecodeError::WrongType { field, expected: "a string" }),
        Some(raw) => read_string(raw, field),
    }
}

fn optional_string(raw: Option<&str>, field: &'static str) -> Result<Option<String>, DecodeError> {
    match raw {
        None => Ok(None),
        Some("null") => Ok(None),
        Some(r) => read_string(r, field).map(Some),
    }
}

fn optional_bool(raw: Option<&str>, field: &'static str) -> Result<Option<bool>, DecodeError> {
    match raw {
        None | Some("null") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(DecodeError::WrongType { field, expected: "a boolean" }),
    }
}

/// Reads an int or null; an integral float is read as its int, as pydantic's lax mode would.
fn optional_int(raw: Option<&str>, field: &'static str) -> Result<Option<i64>, DecodeError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw;
    if text == "null" {
        return Ok(None);
    }
    // The text is a valid JSON value, so when it parses as an i64 it is that integer (JSON has no
    // `+` and no leading zeros for `str::parse` to read differently).
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Some(i));
    }
    match read_value(raw, field)? {
        Value::Int(_) => Err(DecodeError::OutOfRange { field }),
        // 2^63 is exactly representable, so the bounds below are exact.
        Value::Float(f) if f.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) =>
        {
            #[allow(clippy::cast_possible_truncation)]
            Ok(Some(f as i64))
        }
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 => Err(DecodeError::OutOfRange { field }),
        _ => Err(DecodeError::WrongType { field, expected: "an integer" }),
    }
}

fn optional_value(raw: Option<&str>, field: &'static str) -> Result<Option<Value>, DecodeError> {
    match raw {
        None => Ok(None),
        Some("null") => Ok(None),
        Some(r) => read_value(r, field).map(Some),
    }
}

/// Reads a free-form JSON value with Python's rules into the msgpack model.
fn read_value(raw: &str, field: &'static str) -> Result<Value, DecodeError> {
    let py = parse_python_json(raw).map_err(|e| py_error(e, field))?;
    py_to_value(py, field)
}

fn py_error(err: ContextIdError, field: &'static str) -> DecodeError {
    match err {
        ContextIdError::TooDeep(_) => DecodeError::TooDeep { field },
        ContextIdError::LoneSurrogate(_) => DecodeError::InvalidString { field },
        ContextIdError::Syntax { reason, .. } => DecodeError::InvalidJson { detail: format!("{field}: {reason}") },
    }
}

/// Converts a Python-model JSON value into the msgpack model; ints outside msgpack's range
/// (-2^63 ..= 2^64-1, where Python's packer raises) are `out_of_range`.
fn py_to_value(py: PyJson, field: &'static str) -> Result<Value, DecodeError> {
    Ok(match py {
        PyJson::Null => Value::Nil,
        PyJson::Bool(b) => Value::Bool(b),
        PyJson::Int(digits) => {
            let i: i128 = digits.parse().map_err(|_| DecodeError::OutOfRange { field })?;
            if i < i128::from(i64::MIN) || i > i128::from(u64::MAX) {
                return Err(DecodeError::OutOfRange { field });
            }
            Value::Int(i)
        }
        PyJson::Float(f) => Value::Float(f),
        PyJson::Str(s) => Value::Str(s),
        PyJson::Array(items) => {
            Value::Array(items.into_iter().map(|v| py_to_value(v, field)).collect::<Result<_, _>>()?)
        }
        PyJson::Object(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| Ok((Value::Str(k), py_to_value(v, field)?)))
                .collect::<Result<_, DecodeError>>()?,
        ),
    })
}

/// Contexts a thread keeps decoded, by raw text: a run logs its few contexts with every point,
/// so most records find theirs here and skip the parse and the hash (about a third of decoding a
/// metric in a profile of a backlog, issue 12). Cleared when full, so its memory stays bounded.
const CONTEXT_CACHE_ENTRIES: usize = 256;
/// Longer raw contexts are not kept (they are rare and would make the cache's bound large).
const CONTEXT_CACHE_MAX_RAW_BYTES: usize = 512;

thread_local! {
    static CONTEXTS: RefCell<FastMap<Box<str>, Arc<Context>>> = RefCell::new(FastMap::default());
}

/// [`parse_context`], through the thread's cache of recent contexts. Decoding is a pure function
/// of the raw text, so a cached answer is the answer; errors are not kept. A hit shares the cached
/// context instead of copying its object (four allocations per metric of the golden shape).
fn context_from_raw(raw: &str) -> Result<Arc<Context>, DecodeError> {
    if raw.len() > CONTEXT_CACHE_MAX_RAW_BYTES {
        return parse_context(raw).map(Arc::new);
    }
    if let Some(hit) = CONTEXTS.with_borrow(|cache| cache.get(raw).cloned()) {
        return Ok(hit);
    }
    let context = Arc::new(parse_context(raw)?);
    CONTEXTS.with_borrow_mut(|cache| {
        if cache.len() >= CONTEXT_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(raw.into(), Arc::clone(&context));
    });
    Ok(context)
}

fn parse_context(raw: &str) -> Result<Context, DecodeError> {
    let field = "context";
    match raw.as_bytes().first() {
        Some(b'{') => {}
        _ if raw == "null" => return Ok(Context::empty()),
        _ => return Err(DecodeError::WrongType { field, expected: "an object or null" }),
    }
    // One parse serves both: `context_to_id_from_json(raw)` is `id_of(&parse_python_json(raw)?)`.
    let py = parse_python_json(raw).map_err(|e| py_error(e, field))?;
    let id = id_of(&py);
    let value = py_to_value(py, field)?;
    check_value_size(&value, field)?;
    Ok(Context { id, value, raw: raw.into() })
}

fn read_context(raw: Option<&str>) -> Result<Arc<Context>, DecodeError> {
    match raw {
        None => Ok(Arc::new(Context::empty())),
        Some(r) => context_from_raw(r),
    }
}

fn read_client_datetime(raw: Option<&str>) -> Option<f64> {
    // Only a string can parse; anything else is "absent", as an unparsable string is (§8 item 1).
    let text = serde_json::from_str::<String>(raw?).ok()?;
    parse_client_datetime(&text)
}

fn read_envelope_timestamp(raw: Option<&str>) -> Result<f64, DecodeError> {
    let raw = raw.ok_or(DecodeError::MissingField { field: "timestamp" })?;
    match first_byte(raw) {
        b'"' => {
            let text = read_str(raw, "timestamp")?;
            parse_client_datetime(&text).ok_or(DecodeError::InvalidTimestamp)
        }
        b'-' | b'0'..=b'9' => match read_value(raw, "timestamp")? {
            Value::Int(i) => Ok(i as f64),
            Value::Float(f) => Ok(f),
            _ => Err(DecodeError::WrongType { field: "timestamp", expected: "a date-time string or a number" }),
        },
        _ => Err(DecodeError::WrongType { field: "timestamp", expected: "a date-time string or a number" }),
    }
}

// ---------------------------------------------------------------------------------------------
// Size checks

/// The size of a key part once tuple-encoded: NUL bytes are escaped to two bytes.
fn check_key_part(text: &str, field: &'static str) -> Result<(), DecodeError> {
    let len = text.len() + text.bytes().filter(|b| *b == 0).count();
    if len > MAX_KEY_PART_BYTES {
        return Err(DecodeError::TooLarge { field, len, limit: MAX_KEY_PART_BYTES });
    }
    Ok(())
}

fn check_text_value(text: &str, field: &'static str) -> Result<(), DecodeError> {
    if text.len() > MAX_VALUE_BYTES {
        return Err(DecodeError::TooLarge { field, len: text.len(), limit: MAX_VALUE_BYTES });
    }
    Ok(())
}

/// Checks that a value stored whole (one FoundationDB value) stays within the value limit.
fn check_value_size(v: &Value, field: &'static str) -> Result<(), DecodeError> {
    // Cheap common case: scalars are small unless they are long strings.
    match v {
        Value::Nil | Value::Bool(_) | Value::Int(_) | Value::Float(_) => return Ok(()),
        Value::Str(s) => return check_text_value(s, field),
        _ => {}
    }
    match mp::encode(v) {
        Ok(bytes) if bytes.len() > MAX_VALUE_BYTES => {
            Err(DecodeError::TooLarge { field, len: bytes.len(), limit: MAX_VALUE_BYTES })
        }
        Ok(_) => Ok(()),
        Err(_) => Err(DecodeError::OutOfRange { field }),
    }
}

/// Checks a value that is stored as a tree (hparams, spec §3.4): each scalar leaf is one
/// FoundationDB value, and the dict keys and list indexes on the way down form its key, whose
/// tuple-encoded path must stay within [`MAX_KEY_PART_BYTES`].
fn check_leaf_sizes(v: &Value, field: &'static str) -> Result<(), DecodeError> {
    fn walk(v: &Value, path_bytes: usize, field: &'static str) -> Result<(), DecodeError> {
        if path_bytes > MAX_KEY_PART_BYTES {
            return Err(DecodeError::TooLarge { field, len: path_bytes, limit: MAX_KEY_PART_BYTES });
        }
        match v {
            // A key element costs its bytes, its escaped NULs, a type code and a terminator.
            Value::Map(entries) => entries.iter().try_for_each(|(k, child)| {
                let key_bytes = match k {
                    Value::Str(s) => s.len() + s.bytes().filter(|b| *b == 0).count() + 2,
                    _ => 10,
                };
                walk(child, path_bytes + key_bytes, field)
            }),
            // An index is an integer element of at most nine bytes.
            Value::Array(items) => items.iter().try_for_each(|child| walk(child, path_bytes + 9, field)),
            other => check_value_size(other, field),
        }
    }
    walk(v, 0, field)
}

// ---------------------------------------------------------------------------------------------
// client_datetime: Python's datetime.fromisoformat

/// Parses a date-time as Python 3.11+ `datetime.fromisoformat` does and returns POSIX seconds as
/// `datetime.timestamp()` would, or `None` when Python would raise.
///
/// Accepted: `YYYY-MM-DD` or `YYYYMMDD`, optionally followed by any single separator character and
/// a time `HH`, `HH:MM`, `HH:MM:SS` or their basic forms, a fraction after `.` or `,` (digits beyond
/// the sixth are ignored), and a zone `Z` or `±HH[:MM[:SS[.ffffff]]]`. ISO week dates are not
/// accepted (an unparsable `client_datetime` is simply absent). A naive value is read as **UTC**, not
/// as the worker's local zone as the reference does: deliberate, so every worker and every replay
/// stores the same `client_start_ts`.
pub fn parse_client_datetime(text: &str) -> Option<f64> {
    let s = text.as_bytes();
    let (date_len, (y, mo, d)) = if s.get(4) == Some(&b'-') {
        if s.len() < 10 || s[7] != b'-' {
            return None;
        }
        (10, (num(&s[0..4])?, num(&s[5..7])?, num(&s[8..10])?))
    } else {
        if s.len() < 8 {
            return None;
        }
        (8, (num(&s[0..4])?, num(&s[4..6])?, num(&s[6..8])?))
    };
    if !(1..=9999).contains(&y) || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let mut micros = days_from_civil(y, mo, d) * 86_400 * 1_000_000;
    if s.len() > date_len {
        // Any single character separates date and time (it may be multi-byte).
        let sep_len = text[date_len..].chars().next()?.len_utf8();
        let rest = text.get(date_len + sep_len..)?;
        micros += parse_time(rest.as_bytes())?;
    }
    #[allow(clippy::cast_precision_loss)]
    Some(micros as f64 / 1e6)
}

/// Parses `time[fraction][zone]` as CPython's `parse_isoformat_time` and returns microseconds
/// since midnight UTC.
fn parse_time(s: &[u8]) -> Option<i64> {
    let end = s.len();
    let tz = s.iter().position(|c| matches!(c, b'Z' | b'+' | b'-')).unwrap_or(end);
    let (clock, us, trailing) = parse_hh_mm_ss_ff(s, 0, tz)?;
    let [h, m, sec] = clock;
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let local = ((h * 60 + m) * 60 + sec) * 1_000_000 + us;
    if tz == end {
        // No zone: anything left after the time is an error.
        return (!trailing).then_some(local);
    }
    if s[tz] == b'Z' {
        return (tz + 1 == end).then_some(local);
    }
    let (off, off_us, off_trailing) = parse_hh_mm_ss_ff(s, tz + 1, end)?;
    if off_trailing {
        return None;
    }
    let offset = ((off[0] * 60 + off[1]) * 60 + off[2]) * 1_000_000 + off_us;
    if offset >= 86_400 * 1_000_000 {
        return None;
    }
    Some(if s[tz] == b'-' { local + offset } else { local - offset })
}

/// CPython's `parse_hh_mm_ss_ff` over `s[start..end]`: `HH[:MM[:SS]]` or the basic form, then a
/// fraction after `.` or `,` (six digits kept, further digits skipped). Like the C code it accepts
/// a fraction after the hours or minutes and reads a NUL at the very end of the string. Returns the
/// three fields, the microseconds, and whether something other than the end follows.
fn parse_hh_mm_ss_ff(s: &[u8], start: usize, end: usize) -> Option<([i64; 3], i64, bool)> {
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let digits = |p: usize, n: usize| -> Option<i64> {
        (0..n).try_fold(0i64, |acc, k| {
            let c = at(p + k);
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let mut vals = [0i64; 3];
    let mut p = start;
    let mut has_separator = true;
    let mut i = 0;
    while i < 3 {
        vals[i] = digits(p, 2)?;
        p += 2;
        let c = at(p);
        p += 1;
        if i == 0 {
            has_separator = c == b':';
        }
        if p >= end {
            return Some((vals, 0, c != 0));
        } else if has_separator && c == b':' {
            i += 1;
            continue;
        } else if c == b'.' || c == b',' {
            break;
        } else if !has_separator {
            p -= 1;
        } else {
            return None;
        }
        i += 1;
    }
    let to_parse = end.saturating_sub(p).min(6);
    let mut us = digits(p, to_parse)?;
    if to_parse > 0 {
        us *= 10i64.pow(u32::try_from(6 - to_parse).ok()?);
    }
    p += to_parse;
    while at(p).is_ascii_digit() {
        p += 1;
    }
    Some((vals, us, at(p) != 0))
}

fn num(digits: &[u8]) -> Option<i64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0i64, |acc, d| acc.checked_mul(10)?.checked_add(i64::from(d - b'0')))
}

mod scan;

#[cfg(test)]
mod tests;
