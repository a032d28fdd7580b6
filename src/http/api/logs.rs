//! Run logs (spec `api.md` §4.7): `runs/{id}/logs` (terminal lines, sequence `logs`) and
//! `runs/{id}/log-records` (structured records, sequence `__log_records`), both in context 0.
//!
//! Both read their range before answering, so a bad `record_range` is a JSON 422, then stream one
//! record per step under its integer key. An unknown run or a run without logs is an empty answer,
//! never a 404. The record count of `log-records` is `last - first + 1`: record steps are always
//! automatic (`next_step`), hence contiguous, and counting keys would read the whole sequence.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use crate::app::AppState;
use crate::http::stream::{Key, StreamValue};
use crate::storage::layout::{Columns, SeqId, SeqPoint};
use crate::storage::value::Value;

use super::ApiError;
use super::params::Params;
use super::read::{Reader, per_run};
use super::runs::{parse_range, point_value, read_series};
use super::shape::to_stream;
use super::streaming::{Chunking, Out, Streamer, stream_response};

/// Lines sent when no range is given: the last 200.
const DEFAULT_TAIL: i64 = 200;
/// Records encoded per flushed chunk.
const FLUSH_EVERY: usize = 512;

/// The sequence name of terminal lines.
const LOGS: &str = "logs";
/// The sequence name of structured log records.
const LOG_RECORDS: &str = "__log_records";

/// The selected points of a context-0 sequence and its `(first, last)` steps. No range: the
/// last 200 steps; a missing side of `start:stop` extends to the sequence's bounds.
async fn select(
    reader: &mut Reader,
    run: &str,
    name: &str,
    (start, stop): (Option<i64>, Option<i64>),
) -> Result<(Vec<SeqPoint>, Option<(i64, i64)>), ApiError> {
    let id = SeqId { run, ctx_id: 0, name };
    let Some((first, last)) = reader.step_bounds(id).await? else {
        return Ok((Vec::new(), None));
    };
    let (start, stop) = match (start, stop) {
        (None, None) => (last.saturating_sub(DEFAULT_TAIL - 1).max(first), last.saturating_add(1)),
        (start, stop) => (start.unwrap_or(first), stop.unwrap_or(last.saturating_add(1))),
    };
    let points = read_series(reader, id, (Some(start), Some(stop)), 0, Columns::default()).await?;
    Ok((points, Some((first, last))))
}

/// Streams `(step, value)` records built by `render`, flushing every [`FLUSH_EVERY`] records.
async fn stream_points(
    points: Vec<SeqPoint>,
    head: Option<(&'static str, StreamValue)>,
    render: fn(Value) -> StreamValue,
    chunking: Chunking,
    out: Out,
) -> Result<(), ApiError> {
    let mut s = Streamer::new(out, false, chunking);
    if let Some((key, value)) = head {
        s.object(key, &value)?;
    }
    for (i, p) in points.into_iter().enumerate() {
        s.object(Key::Int(p.step), &render(point_value(&p.val)))?;
        if (i + 1) % FLUSH_EVERY == 0 && !s.flush().await {
            return Ok(());
        }
    }
    s.finish(false).await;
    Ok(())
}

/// `GET runs/{run_id}/logs/?record_range=`: one record per terminal line, key = step, value =
/// the line.
pub async fn logs(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let range = parse_range(Params::parse(raw.as_deref()).str("record_range"))?;
    let mut reader = Reader::open(&state)?;
    let (points, _) = per_run!(&mut reader, |r| select(r, &run_id, LOGS, range))?;
    let chunking = reader.chunking();
    Ok(stream_response(move |out| stream_points(points, None, |v| to_stream(&v), chunking, out)))
}

/// The level names of Python's `logging`.
fn level_name(level: i128) -> &'static str {
    match level {
        10 => "DEBUG",
        30 => "WARNING",
        40 => "ERROR",
        50 => "CRITICAL",
        _ => "INFO",
    }
}

/// Sets `key` in a map's entries, in place when present, else at the end.
fn set(entries: &mut Vec<(Value, Value)>, key: &str, v: Value) {
    match entries.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
        Some(slot) => slot.1 = v,
        None => entries.push((Value::from(key), v)),
    }
}

/// A stored log record as sent: its fields with `log_level` named, `timestamp` (0) and `args`
/// (null) defaulted and `is_notified = true`; a value that is not a map becomes `{message}`.
pub fn render_record(v: Value) -> StreamValue {
    let mut entries = match v {
        Value::Map(entries) => entries,
        Value::Str(s) => vec![(Value::from("message"), Value::Str(s))],
        other => {
            let text = serde_json::to_string(&super::shape::to_json(&to_stream(&other))).unwrap_or_default();
            vec![(Value::from("message"), Value::Str(text))]
        }
    };
    let level = entries.iter().find(|(k, _)| k.as_str() == Some("log_level")).map(|(_, v)| v.clone());
    match level {
        None => set(&mut entries, "log_level", Value::from("INFO")),
        Some(Value::Int(i)) => set(&mut entries, "log_level", Value::from(level_name(i))),
        Some(_) => {}
    }
    if !entries.iter().any(|(k, _)| k.as_str() == Some("timestamp")) {
        entries.push((Value::from("timestamp"), Value::Int(0)));
    }
    if !entries.iter().any(|(k, _)| k.as_str() == Some("args")) {
        entries.push((Value::from("args"), Value::Nil));
    }
    set(&mut entries, "is_notified", Value::Bool(true));
    to_stream(&Value::Map(entries))
}

/// `GET runs/{run_id}/log-records/?record_range=`: `log_records_count` first (the total, whatever
/// the range), then one tree per record under its step.
pub async fn log_records(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let range = parse_range(Params::parse(raw.as_deref()).str("record_range"))?;
    let mut reader = Reader::open(&state)?;
    let (points, bounds) = per_run!(&mut reader, |r| select(r, &run_id, LOG_RECORDS, range))?;
    let total = bounds.map_or(0, |(first, last)| last.saturating_sub(first).saturating_add(1));
    let head = Some(("log_records_count", StreamValue::Int(total)));
    let chunking = reader.chunking();
    Ok(stream_response(move |out| stream_points(points, head, render_record, chunking, out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::stream::StreamValue as S;

    #[test]
    fn records_get_level_names_defaults_and_the_notified_flag() {
        let stored = Value::Map(vec![
            (Value::from("message"), Value::from("hi")),
            (Value::from("log_level"), Value::Int(30)),
            (Value::from("timestamp"), Value::Float(5.0)),
            (Value::from("args"), Value::Nil),
            (Value::from("logger_info"), Value::Nil),
        ]);
        let r = render_record(stored);
        assert_eq!(r.get("log_level"), Some(&S::from("WARNING")));
        assert_eq!(r.get("is_notified"), Some(&S::Bool(true)));
        let r = render_record(Value::Map(vec![(Value::from("log_level"), Value::Int(7))]));
        assert_eq!(r.get("log_level"), Some(&S::from("INFO")));
        assert_eq!(r.get("timestamp"), Some(&S::Int(0)));
        assert_eq!(r.get("args"), Some(&S::None));
        let r = render_record(Value::from("plain"));
        assert_eq!(r.get("message"), Some(&S::from("plain")));
        let r = render_record(Value::Map(vec![(Value::from("log_level"), Value::from("custom"))]));
        assert_eq!(r.get("log_level"), Some(&S::from("custom")));
    }
}
