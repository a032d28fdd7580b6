//! The control events of `control-events` (spec `ingest-storage.md` §1.5), decoded and checked
//! before any handler sees them.
//!
//! Envelope `{"type": str, "timestamp": str, "payload": object}`. A record that is not such an
//! envelope, or a `run_deleted` whose run id or listed keys could name objects outside the run's
//! prefix, is malformed: the consumer dead-letters it with the [`EventError::reason`] label.
//! Departure from the reference (§2.6): a `run_deleted` without a run id is logged and dropped
//! there; here it is dead-lettered like any malformed record, so nothing vanishes silently.
//! An unknown `type` is not malformed: the reference logs it and counts it as processed, and so
//! do we (a newer producer may add types).

use serde_json::Value;
use thiserror::Error;

use crate::blobs::{check_key, check_prefix};

/// A decoded control event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// A run was purged by ingestion: remove its objects.
    RunDeleted {
        /// The run id; its objects live under `{run_id}/`.
        run_id: String,
        /// Exact object keys to remove as well (the reference accepts them; no producer sends them).
        blob_keys: Vec<String>,
    },
    /// `run_archived` or `run_unarchived`: nothing to do, the REST write completed it (§2.5).
    RunArchived { run_id: String, archived: bool },
    /// An experiment was deleted: nothing to do (§2.3).
    ExperimentDeleted { experiment_id: String },
    /// A tag was deleted: nothing to do (§2.4).
    TagDeleted { tag_id: String },
    /// A type this build does not know: logged and counted.
    Unknown { kind: String },
}

impl ControlEvent {
    /// The bounded `event_type` label of the event (`unknown` for unknown types).
    pub fn label(&self) -> &'static str {
        match self {
            ControlEvent::RunDeleted { .. } => "run_deleted",
            ControlEvent::RunArchived { archived: true, .. } => "run_archived",
            ControlEvent::RunArchived { archived: false, .. } => "run_unarchived",
            ControlEvent::ExperimentDeleted { .. } => "experiment_deleted",
            ControlEvent::TagDeleted { .. } => "tag_deleted",
            ControlEvent::Unknown { .. } => "unknown",
        }
    }
}

/// Why a record is not a control event this worker can act on.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EventError {
    /// Not JSON, or not an object with `type` and an object `payload`.
    #[error("not a control event: {0}")]
    Envelope(String),
    /// A known type whose payload lacks a field or has the wrong type.
    #[error("{kind}: {detail}")]
    Payload { kind: &'static str, detail: String },
    /// A run id or blob key that could name objects outside the run's prefix.
    #[error("run_deleted: {0}")]
    Key(String),
}

impl EventError {
    /// The bounded dead-letter reason.
    pub fn reason(&self) -> &'static str {
        match self {
            EventError::Envelope(_) => "control_envelope",
            EventError::Payload { .. } => "control_payload",
            EventError::Key(_) => "control_key",
        }
    }
}

/// Decodes one record value.
pub fn decode(value: &[u8]) -> Result<ControlEvent, EventError> {
    let json: Value = serde_json::from_slice(value).map_err(|e| EventError::Envelope(e.to_string()))?;
    let kind = json.get("type").and_then(Value::as_str).ok_or_else(|| EventError::Envelope("no type".into()))?;
    let payload = json
        .get("payload")
        .and_then(Value::as_object)
        .ok_or_else(|| EventError::Envelope("no payload object".into()))?;
    let text = |kind: &'static str, field: &str| -> Result<String, EventError> {
        match payload.get(field).and_then(Value::as_str) {
            Some(s) if !s.is_empty() => Ok(s.to_owned()),
            _ => Err(EventError::Payload { kind, detail: format!("payload.{field} must be a non-empty string") }),
        }
    };
    Ok(match kind {
        "run_deleted" => {
            let run_id = text("run_deleted", "run_id")?;
            // The prefix `{run_id}/` must be one directory: a run id with `/` or `..` could
            // reach another run's objects.
            if run_id.contains('/') {
                return Err(EventError::Key(format!("run id {run_id:?} contains `/`")));
            }
            check_prefix(&format!("{run_id}/")).map_err(|e| EventError::Key(e.to_string()))?;
            let blob_keys = match payload.get("blob_keys") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(keys)) => keys
                    .iter()
                    .map(|k| {
                        let key = k.as_str().ok_or_else(|| EventError::Payload {
                            kind: "run_deleted",
                            detail: "payload.blob_keys must hold strings".into(),
                        })?;
                        check_key(key).map_err(|e| EventError::Key(e.to_string()))?;
                        // Listed keys stay inside the run's prefix: an event names one run.
                        if !key.starts_with(&format!("{run_id}/")) {
                            return Err(EventError::Key(format!("key {key:?} is not under {run_id}/")));
                        }
                        Ok(key.to_owned())
                    })
                    .collect::<Result<_, EventError>>()?,
                Some(_) => {
                    return Err(EventError::Payload {
                        kind: "run_deleted",
                        detail: "payload.blob_keys must be a list".into(),
                    });
                }
            };
            ControlEvent::RunDeleted { run_id, blob_keys }
        }
        "run_archived" | "run_unarchived" => {
            let label = if kind == "run_archived" { "run_archived" } else { "run_unarchived" };
            let run_id = text(label, "run_id")?;
            let archived = payload.get("archived").and_then(Value::as_bool).unwrap_or(kind == "run_archived");
            ControlEvent::RunArchived { run_id, archived }
        }
        "experiment_deleted" => {
            ControlEvent::ExperimentDeleted { experiment_id: text("experiment_deleted", "experiment_id")? }
        }
        "tag_deleted" => ControlEvent::TagDeleted { tag_id: text("tag_deleted", "tag_id")? },
        other => ControlEvent::Unknown { kind: other.to_owned() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_shapes_decode_to_their_events() {
        let run = br#"{"type":"run_deleted","timestamp":"2025-01-01T00:00:00Z","payload":{"run_id":"abc"}}"#;
        assert_eq!(decode(run), Ok(ControlEvent::RunDeleted { run_id: "abc".into(), blob_keys: vec![] }));
        let keys = br#"{"type":"run_deleted","timestamp":"t","payload":{"run_id":"abc","blob_keys":["abc/x.png"]}}"#;
        assert_eq!(
            decode(keys),
            Ok(ControlEvent::RunDeleted { run_id: "abc".into(), blob_keys: vec!["abc/x.png".into()] })
        );
        let arch = br#"{"type":"run_unarchived","timestamp":"t","payload":{"run_id":"r","archived":false}}"#;
        assert_eq!(decode(arch).unwrap().label(), "run_unarchived");
        let exp = br#"{"type":"experiment_deleted","timestamp":"t","payload":{"experiment_id":"u"}}"#;
        assert_eq!(decode(exp), Ok(ControlEvent::ExperimentDeleted { experiment_id: "u".into() }));
        let tag = br#"{"type":"tag_deleted","timestamp":"t","payload":{"tag_id":"u"}}"#;
        assert_eq!(decode(tag), Ok(ControlEvent::TagDeleted { tag_id: "u".into() }));
        let new = br#"{"type":"run_renamed","timestamp":"t","payload":{}}"#;
        assert_eq!(decode(new), Ok(ControlEvent::Unknown { kind: "run_renamed".into() }));
    }

    #[test]
    fn malformed_records_and_keys_escaping_the_run_are_refused_with_a_reason() {
        let reason = |v: &[u8]| decode(v).unwrap_err().reason();
        assert_eq!(reason(b"not json"), "control_envelope");
        assert_eq!(reason(br#"{"type":"run_deleted"}"#), "control_envelope");
        assert_eq!(reason(br#"{"type":"run_deleted","payload":{}}"#), "control_payload");
        assert_eq!(reason(br#"{"type":"run_deleted","payload":{"run_id":""}}"#), "control_payload");
        assert_eq!(reason(br#"{"type":"run_deleted","payload":{"run_id":".."}}"#), "control_key");
        assert_eq!(reason(br#"{"type":"run_deleted","payload":{"run_id":"a/b"}}"#), "control_key");
        assert_eq!(reason(br#"{"type":"run_deleted","payload":{"run_id":"a","blob_keys":["../x"]}}"#), "control_key");
        assert_eq!(reason(br#"{"type":"run_deleted","payload":{"run_id":"a","blob_keys":"a/x"}}"#), "control_payload");
        assert_eq!(reason(br#"{"type":"run_deleted","payload":{"run_id":"a","blob_keys":["b/x"]}}"#), "control_key");
        assert_eq!(reason(br#"{"type":"tag_deleted","payload":{"tag_id":7}}"#), "control_payload");
    }
}
