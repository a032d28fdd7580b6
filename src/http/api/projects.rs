//! Project routes (§6.6): `projects` (info), `projects/activity`, `projects/params` (what every
//! explorer's select form is built from), `projects/pinned-sequences` and `projects/status`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value as J, json};

use crate::app::AppState;
use crate::http::stream::StreamValue;
use crate::storage::value::Value;

use super::ApiError;
use super::entities::{activity, body_object, write};
use super::params::{Params, tz_offset};
use super::read::{BUCKETS, Meta, Reader, RunData, bucket_of};
use super::shape::{params as params_tree, to_json, to_stream};
use crate::storage::layout::EntityKind;

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

/// `GET projects/`: the project's name (stored, or `My project`) and description, and the fixed
/// fields the UI expects.
pub async fn info(State(state): State<AppState>) -> Result<Response, ApiError> {
    let tx = state.db.create_trx()?;
    let system = &state.layout.system;
    let text = |v: Option<Value>, default: &str| match v {
        Some(Value::Str(s)) => s,
        _ => default.to_owned(),
    };
    let name = text(system.project_setting(&tx, "name").await?, "My project");
    let description = text(system.project_setting(&tx, "description").await?, "");
    Ok(Json(json!({
        "name": name,
        "path": "",
        "description": description,
        "telemetry_enabled": 0,
        "warn_index": false,
        "warn_runs": false,
    }))
    .into_response())
}

/// `GET projects/activity/`: experiment and run counts and daily creation buckets in the client's
/// local time (`X-Timezone-Offset`). Runs with meta count, pending-deletion ones included until
/// purged, as the reference's index-based counts.
pub async fn activity_route(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let offset = tz_offset(&headers)?;
    let mut reader = Reader::open(&state)?;
    let experiments = state.layout.system.list(reader.tx(), EntityKind::Experiment).await?.len();
    let mut metas: Vec<Meta> = Vec::new();
    for hash in reader.all_runs().await? {
        if let Some(meta) = reader.meta(&hash).await? {
            metas.push(meta);
        }
    }
    let refs: Vec<&Meta> = metas.iter().collect();
    Ok(Json(activity(&refs, offset, false, Some(experiments))).into_response())
}

/// `GET projects/pinned-sequences/`: `{"sequences": [{name, context}]}`.
pub async fn pinned_get(State(state): State<AppState>) -> Result<Response, ApiError> {
    let tx = state.db.create_trx()?;
    let list = state.layout.system.pinned_sequences(&tx).await?;
    Ok(Json(json!({"sequences": list.to_json().unwrap_or_else(|_| json!([]))})).into_response())
}

/// `POST projects/pinned-sequences/` `{"sequences": [{name, context}]}`: replaces the list and
/// echoes it; anything else is a 422.
pub async fn pinned_set(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let Some(J::Array(items)) = obj.get("sequences") else {
        return Err(ApiError::Validation(match obj.get("sequences") {
            None => "Field required".into(),
            Some(_) => "Input should be a valid list".into(),
        }));
    };
    let mut list = Vec::with_capacity(items.len());
    for item in items {
        let (Some(J::String(name)), context) = (item.get("name"), item.get("context")) else {
            return Err(ApiError::Validation("Field required".into()));
        };
        let context = match context {
            Some(c @ J::Object(_)) => c.clone(),
            None | Some(J::Null) => json!({}),
            Some(_) => return Err(ApiError::Validation("Input should be a valid dictionary".into())),
        };
        list.push(json!({"name": name, "context": context}));
    }
    let list = J::Array(list);
    let stored = Value::from(&list);
    write(&state, |tx| {
        let (state, stored) = (state.clone(), stored.clone());
        async move { Ok(state.layout.system.set_pinned_sequences(&tx, &stored)?) }
    })
    .await?;
    Ok(Json(json!({"sequences": list})).into_response())
}

/// `GET projects/status/`: the JSON string `"up-to-date"`.
pub async fn status() -> Response {
    Json(J::from("up-to-date")).into_response()
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
