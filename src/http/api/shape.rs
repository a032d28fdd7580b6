//! Response shapes shared by the routes: the props object (§1.8), attribute trees as params, and
//! conversions of stored values to stream trees and JSON.

use crate::http::stream::{Key, StreamValue};
use crate::storage::value::Value;

use super::read::{Entity, RunData};

/// Converts a stored value to a stream tree. Lenient where the reference would send a Python
/// `repr`: integers beyond int64 become floats, datetimes their epoch seconds, unknown ext values
/// and map keys of other types `None` / their text.
pub fn to_stream(v: &Value) -> StreamValue {
    match v {
        Value::Nil | Value::Ext(_, _) => StreamValue::None,
        Value::Bool(b) => StreamValue::Bool(*b),
        Value::Int(i) => i64::try_from(*i).map_or(StreamValue::Float(*i as f64), StreamValue::Int),
        Value::Float(f) | Value::DateTime(f) => StreamValue::Float(*f),
        Value::Str(s) => StreamValue::Str(s.clone()),
        Value::Bin(b) => StreamValue::Bytes(b.clone()),
        Value::Array(items) => StreamValue::List(items.iter().map(to_stream).collect()),
        Value::Map(entries) => StreamValue::Dict(entries.iter().map(|(k, v)| (map_key(k), to_stream(v))).collect()),
    }
}

fn map_key(k: &Value) -> Key {
    match k {
        Value::Str(s) => Key::Str(s.clone()),
        Value::Int(i) => i64::try_from(*i).map_or_else(|_| Key::Str(i.to_string()), Key::Int),
        other => Key::Str(key_text(other)),
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        Value::Nil => "None".to_owned(),
        other => other.type_name().to_owned(),
    }
}

/// Converts a stream tree to JSON. Non-finite floats and bytes, which JSON cannot hold, become
/// `null` (the reference answers 500 there, spec §10 item 19; a null keeps the page usable).
pub fn to_json(v: &StreamValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        StreamValue::None | StreamValue::Bytes(_) | StreamValue::Numpy(_) => J::Null,
        StreamValue::Bool(b) => J::Bool(*b),
        StreamValue::Int(i) => J::from(*i),
        StreamValue::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        StreamValue::Str(s) => J::String(s.clone()),
        StreamValue::List(items) => J::Array(items.iter().map(to_json).collect()),
        StreamValue::Dict(entries) => J::Object(entries.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect()),
    }
}

/// The run's attribute tree as sent under `params`: without `__blobs__`, and without
/// `__system_params` when `skip_system`.
pub fn params(attrs: &Value, skip_system: bool) -> StreamValue {
    let Value::Map(entries) = attrs else {
        return StreamValue::Dict(Vec::new());
    };
    StreamValue::Dict(
        entries
            .iter()
            .filter(|(k, _)| match k.as_str() {
                Some("__blobs__") => false,
                Some("__system_params") => !skip_system,
                _ => true,
            })
            .map(|(k, v)| (map_key(k), to_stream(v)))
            .collect(),
    )
}

fn opt(s: &Option<String>) -> StreamValue {
    s.as_deref().map_or(StreamValue::None, StreamValue::from)
}

fn experiment(e: Option<&Entity>) -> StreamValue {
    StreamValue::dict([
        ("id", e.map_or(StreamValue::None, |e| StreamValue::from(e.id.as_str()))),
        ("name", e.map_or(StreamValue::None, |e| opt(&e.name))),
        ("description", e.map_or(StreamValue::None, |e| opt(&e.description))),
    ])
}

fn tag(t: &Entity) -> StreamValue {
    StreamValue::dict([
        ("id", StreamValue::from(t.id.as_str())),
        ("name", opt(&t.name)),
        ("color", opt(&t.color)),
        ("description", opt(&t.description)),
    ])
}

/// The props object (§1.8) with the given `end_time`.
pub fn props(run: &RunData, end_time: Option<f64>) -> StreamValue {
    StreamValue::dict([
        ("name", opt(&run.meta.name)),
        ("description", opt(&run.meta.description)),
        ("experiment", experiment(run.experiment.as_ref())),
        ("tags", StreamValue::List(run.tags.iter().map(tag).collect())),
        ("creation_time", StreamValue::Float(run.meta.created_at)),
        ("end_time", end_time.map_or(StreamValue::None, StreamValue::Float)),
        ("archived", StreamValue::Bool(run.meta.archived)),
        ("active", StreamValue::Bool(run.meta.active)),
    ])
}

/// Props as the streaming routes send them: `end_time` is `finalized_at`.
pub fn stream_props(run: &RunData) -> StreamValue {
    props(run, run.meta.finalized_at)
}

/// Props as run info sends them: `created_at + duration` when the client reported a duration,
/// else `finalized_at`.
pub fn info_props(run: &RunData) -> StreamValue {
    let end = run.meta.duration.map(|d| run.meta.created_at + d).or(run.meta.finalized_at);
    props(run, end)
}

/// A stored number as a float (`None`, strings and the like read as NaN, as numpy would).
pub fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_conversion_nulls_what_json_cannot_hold() {
        let v = StreamValue::dict([
            ("nan", StreamValue::Float(f64::NAN)),
            ("x", StreamValue::Float(0.5)),
            ("b", StreamValue::Bytes(vec![1])),
        ]);
        assert_eq!(to_json(&v), serde_json::json!({"nan": null, "x": 0.5, "b": null}));
    }

    #[test]
    fn params_drop_blobs_and_optionally_system_params() {
        let attrs = Value::from(
            &serde_json::json!({"__blobs__": {"a": 1}, "__system_params": {"cpu": 2}, "hparams": {"lr": 0.1}}),
        );
        let all = to_json(&params(&attrs, false));
        assert_eq!(all, serde_json::json!({"__system_params": {"cpu": 2}, "hparams": {"lr": 0.1}}));
        assert_eq!(to_json(&params(&attrs, true)), serde_json::json!({"hparams": {"lr": 0.1}}));
    }

    #[test]
    fn big_ints_and_datetimes_still_stream() {
        assert_eq!(to_stream(&Value::Int(1 << 70)), StreamValue::Float((1u128 << 70) as f64));
        assert_eq!(to_stream(&Value::DateTime(5.0)), StreamValue::Float(5.0));
    }
}
