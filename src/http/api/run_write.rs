//! Run mutations (spec `api.md` §6.1, §6.2; `ingest-storage.md` §2.1): `PUT`/`DELETE runs/{id}`,
//! the delete, archive and finish batches, `clear-tombstone`, and run ↔ tag links.
//!
//! Every write is one transaction committed before the answer. Deliberate departures from the
//! reference, each named in a test of `tests/api_write.rs`:
//! - Batch endpoints skip hashes that have no meta instead of writing meta leaves for them, so no
//!   "ghost" runs appear (§10 item 17); they still answer `{"status":"OK"}`.
//! - `PUT` with an unknown (or empty) experiment name clears the run's experiment as the reference
//!   does, but also removes the old association, run count and index entry, which the reference
//!   leaves behind; the visible result is the same.
//! - Adding a tag twice links once and removing a tag that is not linked changes nothing, so
//!   `run_count` stays exact (§10 item 16).
//! - Tag links go through [`Layout::link_tag`] / [`Layout::unlink_tag`], as ingestion's do, so
//!   they also write and remove the run directory's `(R,"tags",tag)`, which the reference's REST
//!   leaves alone (quirk 9 of `ingest-storage.md` §6).
//! - An empty `tag_name` (after trimming) is a 422 rather than a tag named `""`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::storage::layout::{EntityKind, Layout, LayoutError};
use crate::storage::value::Value;

use super::params::Params;
use super::runs::now;
use super::{ApiError, body, control, limits};

/// Runs written per transaction by the batch endpoints.
const BATCH_CHUNK: usize = 500;

/// The body of `PUT runs/{id}`: every field optional, `null` meaning "not given".
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct RunUpdate {
    name: Option<String>,
    description: Option<String>,
    archived: Option<bool>,
    active: Option<bool>,
    experiment: Option<String>,
}

/// The body of `POST runs/{id}/tags/new`.
#[derive(Debug, serde::Deserialize)]
struct AddTag {
    tag_name: String,
}

/// Whether a stored `finalized_at` counts as set (the reference tests its truthiness).
fn is_set(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Nil) => false,
        Some(Value::Float(f)) => *f != 0.0,
        Some(Value::Int(i)) => *i != 0,
        Some(_) => true,
    }
}

/// The meta fields of finishing a run: `active=false`, and `finalized_at=now` when unset.
async fn finish_fields(
    layout: &Layout,
    tx: &crate::storage::kv::Transaction,
    run: &str,
    now: f64,
) -> Result<Vec<(&'static str, Value)>, LayoutError> {
    let mut fields = vec![("active", Value::Bool(false))];
    if !is_set(&layout.runs.runs.meta_field(tx, run, "finalized_at").await?) {
        fields.push(("finalized_at", Value::Float(now)));
    }
    Ok(fields)
}

/// `PUT runs/{run_id}/` with `{name?, description?, archived?, active?, experiment?}`:
/// `{"id","status":"OK"}`, 404 when the run has no meta.
pub async fn update_run(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let update: RunUpdate = body::object(&bytes)?;
    if let Some(experiment) = &update.experiment {
        limits::key_part("experiment", experiment)?;
    }
    let now = now();
    let layout: &Layout = &state.layout;
    let (run, update_ref) = (run_id.as_str(), &update);
    let found = state
        .db
        .run(&state.config.storage.retry.options(), |tx| async move {
            if !layout.runs.runs.exists(&tx, run, false).await? {
                return Ok::<_, LayoutError>(false);
            }
            let mut fields: Vec<(&str, Value)> = Vec::new();
            if let Some(name) = &update_ref.name {
                fields.push(("name", Value::from(name.as_str())));
            }
            if let Some(description) = &update_ref.description {
                fields.push(("description", Value::from(description.as_str())));
            }
            if let Some(archived) = update_ref.archived {
                fields.push(("is_archived", Value::Bool(archived)));
            }
            match update_ref.active {
                Some(false) => fields.extend(finish_fields(layout, &tx, run, now).await?),
                Some(true) => {
                    fields.push(("active", Value::Bool(true)));
                    fields.push(("finalized_at", Value::Nil));
                }
                None => {}
            }
            if let Some(name) = &update_ref.experiment {
                let uuid = if name.is_empty() {
                    None
                } else {
                    layout.system.uuid_by_name(&tx, EntityKind::Experiment, name).await?
                };
                layout.system.link_experiment(&tx, layout.indexes(), run, uuid.as_deref()).await?;
                fields.push(("experiment_id", uuid.map_or(Value::Nil, Value::Str)));
            }
            if !fields.is_empty() {
                layout.runs.update_meta(&tx, run, now, &fields).await?;
            }
            Ok(true)
        })
        .await?;
    if !found {
        return Err(ApiError::NotFound);
    }
    if let Some(archived) = update.archived {
        control::sink(&state).runs_archived(std::slice::from_ref(&run_id), archived).await?;
    }
    Ok(Json(json!({"id": run_id, "status": "OK"})).into_response())
}

/// `DELETE runs/{run_id}/`: marks the run `pending_deletion` and queues its `delete_run`;
/// `{"id","status":"OK"}`, 404 when the run has no meta.
pub async fn delete_run(State(state): State<AppState>, Path(run_id): Path<String>) -> Result<Response, ApiError> {
    let layout: &Layout = &state.layout;
    let run = run_id.as_str();
    let found = state
        .db
        .run(&state.config.storage.retry.options(), |tx| async move {
            if !layout.runs.runs.exists(&tx, run, false).await? {
                return Ok::<_, LayoutError>(false);
            }
            layout.runs.mark_pending_deletion(&tx, run)?;
            Ok(true)
        })
        .await?;
    if !found {
        return Err(ApiError::NotFound);
    }
    control::sink(&state).delete_runs(std::slice::from_ref(&run_id), now()).await?;
    Ok(Json(json!({"id": run_id, "status": "OK"})).into_response())
}

/// The distinct hashes of a batch body, in order; one too long to be a run's is a 400 and nothing
/// of the batch is written.
fn batch_hashes(bytes: &[u8]) -> Result<Vec<String>, ApiError> {
    let hashes = body::list::<String>(bytes)?;
    for hash in &hashes {
        limits::key_part("run hash", hash)?;
    }
    let mut seen = std::collections::HashSet::new();
    Ok(hashes.into_iter().filter(|h| seen.insert(h.clone())).collect())
}

/// What a batch endpoint does to one existing run.
#[derive(Debug, Clone, Copy)]
enum BatchOp {
    Delete,
    Archive(bool),
    Finish,
}

/// Applies `op` to every existing run of `hashes`, `BATCH_CHUNK` runs per transaction; returns
/// the runs that existed.
async fn apply_batch(state: &AppState, hashes: &[String], op: BatchOp) -> Result<Vec<String>, ApiError> {
    let layout: &Layout = &state.layout;
    let now = now();
    let mut done = Vec::with_capacity(hashes.len());
    for chunk in hashes.chunks(BATCH_CHUNK) {
        let existing = state
            .db
            .run(&state.config.storage.retry.options(), |tx| async move {
                let mut existing = Vec::new();
                for run in chunk {
                    if !layout.runs.runs.exists(&tx, run, false).await? {
                        continue;
                    }
                    match op {
                        BatchOp::Delete => layout.runs.mark_pending_deletion(&tx, run)?,
                        BatchOp::Archive(archived) => {
                            layout.runs.update_meta(&tx, run, now, &[("is_archived", Value::Bool(archived))]).await?;
                        }
                        BatchOp::Finish => {
                            let fields = finish_fields(layout, &tx, run, now).await?;
                            layout.runs.update_meta(&tx, run, now, &fields).await?;
                        }
                    }
                    existing.push(run.clone());
                }
                Ok::<_, LayoutError>(existing)
            })
            .await?;
        done.extend(existing);
    }
    Ok(done)
}

fn ok() -> Response {
    Json(json!({"status": "OK"})).into_response()
}

/// `POST runs/delete-batch/` with `["hash", ...]`: marks each existing run and queues one
/// `delete_run` per run; `{"status":"OK"}`.
pub async fn delete_batch(State(state): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let hashes = batch_hashes(&bytes)?;
    let deleted = apply_batch(&state, &hashes, BatchOp::Delete).await?;
    control::sink(&state).delete_runs(&deleted, now()).await?;
    Ok(ok())
}

/// `POST runs/archive-batch/?archive=true` with `["hash", ...]`: sets `is_archived` (and swaps
/// the index) for each existing run; `{"status":"OK"}`.
pub async fn archive_batch(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let archive = Params::parse(raw.as_deref()).bool("archive", true)?;
    let hashes = batch_hashes(&bytes)?;
    let archived = apply_batch(&state, &hashes, BatchOp::Archive(archive)).await?;
    control::sink(&state).runs_archived(&archived, archive).await?;
    Ok(ok())
}

/// `POST runs/finish-batch/` with `["hash", ...]`: `active=false` and `finalized_at=now` unless
/// already set, for each existing run; `{"status":"OK"}`.
pub async fn finish_batch(State(state): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let hashes = batch_hashes(&bytes)?;
    apply_batch(&state, &hashes, BatchOp::Finish).await?;
    Ok(ok())
}

/// `POST runs/{run_id}/clear-tombstone/`: removes the run's deletion tombstone (idempotent, no
/// existence check); 204.
pub async fn clear_tombstone(State(state): State<AppState>, Path(run_id): Path<String>) -> Result<Response, ApiError> {
    let layout: &Layout = &state.layout;
    let run = run_id.as_str();
    state
        .db
        .run(&state.config.storage.retry.options(), |tx| async move {
            layout.indexes().clear_tombstone(&tx, run);
            Ok::<_, LayoutError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST runs/{run_id}/tags/new/` with `{"tag_name": str}`: finds or creates the tag and links
/// it; `{"id","tag_id","status":"OK"}`, 404 when the run has no meta.
pub async fn add_tag(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: AddTag = body::object(&bytes)?;
    let name = req.tag_name.trim();
    if name.is_empty() {
        return Err(ApiError::Validation("tag_name must not be empty".into()));
    }
    limits::key_part("tag_name", name)?;
    let now = now();
    let new_uuid = uuid::Uuid::new_v4().to_string();
    let layout: &Layout = &state.layout;
    let (run, new_uuid) = (run_id.as_str(), new_uuid.as_str());
    let tag_id = state
        .db
        .run(&state.config.storage.retry.options(), |tx| async move {
            if !layout.runs.runs.exists(&tx, run, false).await? {
                return Ok::<_, LayoutError>(None);
            }
            let tag = layout.system.get_or_create_named(&tx, EntityKind::Tag, name, new_uuid, now).await?;
            layout.link_tag(&tx, run, &tag).await?;
            Ok(Some(tag))
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(json!({"id": run_id, "tag_id": tag_id, "status": "OK"})).into_response())
}

/// `DELETE runs/{run_id}/tags/{tag_id}/`: unlinks the tag if linked;
/// `{"id","removed":true,"status":"OK"}`, 404 when the run has no meta.
pub async fn remove_tag(
    State(state): State<AppState>,
    Path((run_id, tag_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let layout: &Layout = &state.layout;
    let (run, tag) = (run_id.as_str(), tag_id.as_str());
    let found = state
        .db
        .run(&state.config.storage.retry.options(), |tx| async move {
            if !layout.runs.runs.exists(&tx, run, false).await? {
                return Ok::<_, LayoutError>(false);
            }
            layout.unlink_tag(&tx, run, tag).await?;
            Ok(true)
        })
        .await?;
    if !found {
        return Err(ApiError::NotFound);
    }
    Ok(Json(json!({"id": run_id, "removed": true, "status": "OK"})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalized_at_counts_as_set_only_when_truthy() {
        assert!(!is_set(&None));
        assert!(!is_set(&Some(Value::Nil)));
        assert!(!is_set(&Some(Value::Float(0.0))));
        assert!(is_set(&Some(Value::Float(1000.0))));
    }

    #[test]
    fn batch_hashes_are_distinct_and_in_order() {
        assert_eq!(batch_hashes(br#"["b","a","b"]"#).ok(), Some(vec!["b".to_owned(), "a".to_owned()]));
        assert_eq!(batch_hashes(br#"{"a":1}"#).unwrap_err().status().as_u16(), 422);
    }
}
