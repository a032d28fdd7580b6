//! Project routes: `projects/params` (§6.6), what every explorer's select form is built from.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::http::stream::StreamValue;
use crate::storage::value::Value;

use super::ApiError;
use super::params::Params;
use super::read::{BUCKETS, Reader, RunData, bucket_of};
use super::shape::{params as params_tree, to_json, to_stream};

/// Sequence names of one bucket, each with its distinct contexts, in first-seen order.
type Names = Vec<(String, Vec<Value>)>;

/// The order of the buckets in the answer.
const ORDER: [&str; 6] = ["metric", "images", "texts", "figures", "distributions", "audios"];

/// `GET projects/params/?sequence=...&exclude_params=false`: the deep merge of every run's
/// attributes (last writer wins, without `__system_params` and `__blobs__`) and, per sequence
/// bucket, each name with its distinct contexts. Buckets not requested stay `{}`; pending-deletion
/// runs are skipped.
pub async fn params(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let exclude_params = params.bool("exclude_params", false)?;
    let requested = params.all("sequence");
    let wanted: Vec<&str> = BUCKETS.iter().copied().filter(|b| requested.is_empty() || requested.contains(b)).collect();
    let mut reader = Reader::open(&state)?;
    let mut merged = Value::Map(Vec::new());
    let mut buckets: Vec<(&str, Names)> = ORDER.iter().map(|b| (*b, Vec::new())).collect();
    for hash in reader.all_runs().await? {
        let Some(run) = RunData::load(&mut reader, &hash, !exclude_params, !wanted.is_empty()).await? else {
            continue;
        };
        if run.meta.pending_deletion {
            continue;
        }
        if !exclude_params {
            deep_merge(&mut merged, &run.attrs);
        }
        for t in &run.traces {
            let Some(bucket) = bucket_of(&t.dtype).filter(|b| wanted.contains(b)) else { continue };
            let Some((_, names)) = buckets.iter_mut().find(|(b, _)| *b == bucket) else { continue };
            match names.iter_mut().find(|(n, _)| *n == t.name) {
                Some((_, contexts)) => {
                    if !contexts.contains(&t.context) {
                        contexts.push(t.context.clone());
                    }
                }
                None => names.push((t.name.clone(), vec![t.context.clone()])),
            }
        }
    }
    let mut body: Vec<(&str, StreamValue)> = Vec::with_capacity(7);
    if !exclude_params {
        body.push(("params", params_tree(&merged, true)));
    }
    for (bucket, names) in buckets {
        let entries = names.into_iter().map(|(n, ctxs)| (n, StreamValue::List(ctxs.iter().map(to_stream).collect())));
        body.push((bucket, StreamValue::dict(entries)));
    }
    Ok(axum::Json(to_json(&StreamValue::dict(body))).into_response())
}

/// Merges `src` into `dst`: maps merge key by key, anything else replaces.
fn deep_merge(dst: &mut Value, src: &Value) {
    let (Value::Map(d), Value::Map(s)) = (&mut *dst, src) else {
        *dst = src.clone();
        return;
    };
    for (k, v) in s {
        match d.iter_mut().find(|(dk, _)| dk == k) {
            Some((_, dv)) if matches!((&*dv, v), (Value::Map(_), Value::Map(_))) => deep_merge(dv, v),
            Some((_, dv)) => *dv = v.clone(),
            None => d.push((k.clone(), v.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deep_merge_keeps_both_shapes_and_the_last_scalar() {
        let mut dst = Value::from(&json!({"hparams": {"lr": 0.1, "a": 1}, "x": 1}));
        deep_merge(&mut dst, &Value::from(&json!({"hparams": {"lr": 0.2, "b": {"c": 2}}, "x": {"y": 1}})));
        assert_eq!(dst, Value::from(&json!({"hparams": {"lr": 0.2, "a": 1, "b": {"c": 2}}, "x": {"y": 1}})));
    }
}
