//! Entity routes (spec `api.md` §2.2, §6.3–§6.8): experiments, tags, dashboards, dashboard apps,
//! reports, experiment and run notes, and `version`.
//!
//! Writes go to the `system` directory in one retried transaction each, with the reference's
//! fields (`ingest-storage.md` §2.3, §2.4, §3.7). Deleting an experiment or a tag also records its
//! control event (`experiment_deleted` / `tag_deleted`, §1.5) in the outbox of our own directory in
//! the same transaction, so the event is never lost: it goes through the one outbox writer,
//! [`Ours::put_outbox`](crate::storage::layout::Ours::put_outbox), at
//! [`OutboxAt::Rest`] (partition
//! [`REST_PARTITION`](crate::storage::layout::ours::REST_PARTITION), no source record caused it; offset the
//! event's time in microseconds, bumped past any key already taken).
//!
//! Stale state the reference leaves and this module does not (each named in a test of
//! `tests/api_stale_state.rs`):
//! - deleting an experiment removes its runs' `run_experiment` links, `meta.experiment_id` and
//!   `("experiment", name, R)` index entries (§10 quirk 18); deleting a tag also removes its runs'
//!   `(R,"tags",tag)` keys;
//! - renaming a tag moves its runs' `("tag", name, R)` index entries to the new name (quirk 16);
//! - renaming onto a name another experiment or tag holds is a 400, as creating it is.
//!
//! Reference behaviours kept on purpose (§10): `POST experiments`/`POST tags` answer 200 and a
//! duplicate name 400; `PUT experiments/{id}` without `description` resets it to `""` (quirk 13);
//! dashboard deletion is soft (quirk 14); `DELETE tags/{id}` answers 200 `null` (quirk 15);
//! experiment-runs `offset` not found starts from the beginning (quirk 12).

use std::future::Future;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as J, json};

use crate::app::AppState;
use crate::clock::rfc3339_utc;
use crate::ingest::apply::control_event;
use crate::storage::kv::Transaction;
use crate::storage::layout::ours::OutboxAt;
use crate::storage::layout::system::Fields;
use crate::storage::layout::{EntityKind, LayoutError};
use crate::storage::value::{self, Value};

use super::params::{Params, parse_bool, tz_offset};
use super::read::{Meta, Reader};
use super::{ApiError, limits};

/// The current time in POSIX seconds.
pub use crate::clock::now_secs as now;

/// Runs `body` in one write transaction retried as `[storage.retry]` says.
pub async fn write<T, F, Fut>(state: &AppState, body: F) -> Result<T, ApiError>
where
    F: FnMut(Transaction) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    state.db.run(&state.config.storage.retry.options(), body).await
}

/// Records a control event `{"type": kind, "timestamp", "payload": {payload_key: id}}` in the
/// outbox, in the caller's transaction.
pub async fn record_event(
    state: &AppState,
    tx: &Transaction,
    kind: &str,
    payload_key: &str,
    id: &str,
    now: f64,
) -> Result<(), ApiError> {
    let event = control_event(kind, payload_key, id, now);
    let bytes = value::encode(&event).map_err(|e| ApiError::Storage(LayoutError::Encode(e.to_string())))?;
    #[allow(clippy::cast_possible_truncation)]
    let micros = (now * 1e6) as i64;
    state.layout.ours.put_outbox(tx, OutboxAt::Rest { micros }, &bytes).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Body and field helpers.

/// Parses a JSON object body; anything else is a 422.
pub fn body_object(body: &Bytes) -> Result<Map<String, J>, ApiError> {
    match serde_json::from_slice::<J>(body) {
        Ok(J::Object(map)) => Ok(map),
        Ok(_) => {
            Err(ApiError::Validation("Input should be a valid dictionary or object to extract fields from".into()))
        }
        Err(e) => Err(ApiError::Validation(format!("JSON decode error: {e}"))),
    }
}

/// A required string field.
fn req_str(obj: &Map<String, J>, key: &str) -> Result<String, ApiError> {
    opt_str(obj, key)?.ok_or_else(|| ApiError::Validation("Field required".into()))
}

/// An optional string field (`null` counts as absent).
fn opt_str(obj: &Map<String, J>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::Validation("Input should be a valid string".into())),
    }
}

/// The required, trimmed `name` of an experiment or tag: it keys the unique-name index, so it is
/// held to a key part's length.
fn unique_name(obj: &Map<String, J>) -> Result<String, ApiError> {
    let name = req_str(obj, "name")?.trim().to_owned();
    limits::key_part("name", &name)?;
    Ok(name)
}

/// The new `name` of an experiment or tag, if given and not blank (see [`unique_name`]).
fn new_unique_name(obj: &Map<String, J>) -> Result<Option<String>, ApiError> {
    let name = opt_str(obj, "name")?.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if let Some(n) = &name {
        limits::key_part("name", n)?;
    }
    Ok(name)
}

/// An optional boolean field, with Pydantic's lax parsing of strings and 0/1.
fn opt_bool(obj: &Map<String, J>, key: &str) -> Result<Option<bool>, ApiError> {
    let invalid = || ApiError::Validation("Input should be a valid boolean".into());
    match obj.get(key) {
        None | Some(J::Null) => Ok(None),
        Some(J::Bool(b)) => Ok(Some(*b)),
        Some(J::Number(n)) => match n.as_i64() {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(invalid()),
        },
        Some(J::String(s)) => parse_bool(s).map(Some).ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

/// An optional object field.
fn opt_object(obj: &Map<String, J>, key: &str) -> Result<Option<J>, ApiError> {
    match obj.get(key) {
        None | Some(J::Null) => Ok(None),
        Some(v @ J::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(ApiError::Validation("Input should be a valid dictionary".into())),
    }
}

fn field<'a>(fields: &'a Fields, key: &str) -> Option<&'a Value> {
    fields.iter().find(|(f, _)| f == key).map(|(_, v)| v)
}

/// A field as JSON (`null` when absent or not representable).
fn fj(fields: &Fields, key: &str) -> J {
    field(fields, key).and_then(|v| v.to_json().ok()).unwrap_or(J::Null)
}

fn fbool(fields: &Fields, key: &str) -> bool {
    matches!(field(fields, key), Some(Value::Bool(true)))
}

fn fstr(fields: &Fields, key: &str) -> Option<String> {
    field(fields, key).and_then(Value::as_str).map(str::to_owned)
}

fn experiment_json(id: &str, f: &Fields) -> J {
    json!({
        "id": id,
        "name": fj(f, "name"),
        "description": fj(f, "description"),
        "run_count": field(f, "run_count").and_then(Value::as_f64).map_or(0, |n| n as i64),
        "archived": fbool(f, "is_archived"),
        "creation_time": fj(f, "created_at"),
    })
}

fn tag_json(id: &str, f: &Fields) -> J {
    json!({
        "id": id,
        "name": fj(f, "name"),
        "color": fj(f, "color"),
        "description": fj(f, "description"),
        "run_count": field(f, "run_count").and_then(Value::as_f64).map_or(0, |n| n as i64),
        "archived": fbool(f, "is_archived"),
    })
}

fn ok_id(id: &str) -> Response {
    Json(json!({"id": id, "status": "OK"})).into_response()
}

fn created(body: J) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn get_entity(state: &AppState, kind: EntityKind, id: &str) -> Result<Fields, ApiError> {
    let tx = state.db.create_trx()?;
    state.layout.system.get(&tx, kind, id).await?.ok_or(ApiError::NotFound)
}

async fn list_entities(state: &AppState, kind: EntityKind) -> Result<Vec<(String, Fields)>, ApiError> {
    let tx = state.db.create_trx()?;
    Ok(state.layout.system.list(&tx, kind).await?)
}

/// Case-insensitive substring filter on `name` (empty `q`: everything).
fn name_matches(fields: &Fields, q: &str) -> bool {
    q.is_empty() || fstr(fields, "name").is_some_and(|n| n.to_lowercase().contains(&q.to_lowercase()))
}

/// The activity bucket of a creation time: the client's local hour (`hourly`) or day, as
/// `YYYY-MM-DDTHH:00:00`; `offset` is JavaScript's `getTimezoneOffset()` (minutes west of UTC).
pub fn activity_bucket(created_at: f64, offset_minutes: i64, hourly: bool) -> String {
    let local = created_at - (offset_minutes as f64) * 60.0;
    let t = rfc3339_utc(local.floor());
    if hourly { format!("{}:00:00", &t[..13]) } else { format!("{}T00:00:00", &t[..10]) }
}

// ---------------------------------------------------------------------------------------------
// Experiments.

/// `GET experiments/`.
pub async fn experiments_list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = list_entities(&state, EntityKind::Experiment).await?;
    Ok(Json(J::Array(list.iter().map(|(id, f)| experiment_json(id, f)).collect())).into_response())
}

/// `GET experiments/search/?q=`: case-insensitive substring on the name.
pub async fn experiments_search(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let q = params.str("q").unwrap_or_default().to_owned();
    let list = list_entities(&state, EntityKind::Experiment).await?;
    let out = list.iter().filter(|(_, f)| name_matches(f, &q)).map(|(id, f)| experiment_json(id, f)).collect();
    Ok(Json(J::Array(out)).into_response())
}

/// `POST experiments/` `{"name"}`: 200 `{"id","status":"OK"}`, 400 on a taken name.
pub async fn experiments_create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let name = unique_name(&obj)?;
    let id = uuid::Uuid::new_v4().to_string();
    let ts = now();
    write(&state, |tx| {
        let (state, name, id) = (state.clone(), name.clone(), id.clone());
        async move {
            let system = &state.layout.system;
            if system.uuid_by_name(&tx, EntityKind::Experiment, &name).await?.is_some() {
                return Err(ApiError::BadRequest(format!("Experiment with name '{name}' already exists")));
            }
            system.create_named(&tx, EntityKind::Experiment, &id, &name, ts, &[]).await?;
            Ok(())
        }
    })
    .await?;
    Ok(ok_id(&id))
}

/// `GET experiments/{id}/`.
pub async fn experiments_get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let f = get_entity(&state, EntityKind::Experiment, &id).await?;
    Ok(Json(experiment_json(&id, &f)).into_response())
}

/// `PUT experiments/{id}/` `{name?, description?, archived?}`; a missing `description` resets it
/// to `""` as the reference does.
pub async fn experiments_update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let name = new_unique_name(&obj)?;
    let description = opt_str(&obj, "description")?.unwrap_or_default();
    let archived = opt_bool(&obj, "archived")?;
    let ts = now();
    write(&state, |tx| {
        let (state, id, name, description) = (state.clone(), id.clone(), name.clone(), description.clone());
        async move {
            let system = &state.layout.system;
            let current = system.get(&tx, EntityKind::Experiment, &id).await?.ok_or(ApiError::NotFound)?;
            if let Some(name) = &name
                && fstr(&current, "name").as_deref() != Some(name.as_str())
            {
                refuse_taken(&state, &tx, EntityKind::Experiment, name, &id).await?;
                system.rename(&tx, state.layout.indexes(), EntityKind::Experiment, &id, name, ts).await?;
            }
            let mut fields: Vec<(&str, Value)> =
                vec![("description", Value::Str(description)), ("updated_at", Value::Float(ts))];
            if let Some(a) = archived {
                fields.push(("is_archived", Value::Bool(a)));
            }
            system.put_fields(&tx, EntityKind::Experiment, &id, &fields)?;
            Ok(())
        }
    })
    .await?;
    Ok(ok_id(&id))
}

/// A rename of `id` to `name` held by another experiment or tag is a 400, with the message of a
/// create: the reference renames anyway, and the other entity's by-name key then points at the
/// renamed one while both names' index entries merge.
async fn refuse_taken(
    state: &AppState,
    tx: &Transaction,
    kind: EntityKind,
    name: &str,
    id: &str,
) -> Result<(), ApiError> {
    match state.layout.system.uuid_by_name(tx, kind, name).await? {
        Some(other) if other != id => {
            let what = if kind == EntityKind::Tag { "Tag" } else { "Experiment" };
            Err(ApiError::BadRequest(format!("{what} with name '{name}' already exists")))
        }
        _ => Ok(()),
    }
}

/// `DELETE experiments/{id}/`: deletes the entity and records `experiment_deleted`.
pub async fn experiments_delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    delete_named(&state, EntityKind::Experiment, &id).await?;
    Ok(Json(json!({"status": "OK"})).into_response())
}

/// Deletes an experiment or tag and records its control event, in one transaction.
async fn delete_named(state: &AppState, kind: EntityKind, id: &str) -> Result<(), ApiError> {
    let (event, payload_key) = match kind {
        EntityKind::Tag => ("tag_deleted", "tag_id"),
        _ => ("experiment_deleted", "experiment_id"),
    };
    let ts = now();
    write(state, |tx| {
        let (state, id) = (state.clone(), id.to_owned());
        async move {
            let system = &state.layout.system;
            if system.get(&tx, kind, &id).await?.is_none() {
                return Err(ApiError::NotFound);
            }
            state.layout.delete_entity(&tx, kind, &id).await?;
            record_event(&state, &tx, event, payload_key, &id, ts).await
        }
    })
    .await
}

/// The runs of an experiment or tag with their meta, pending-deletion runs skipped.
async fn linked_runs(reader: &mut Reader, kind: EntityKind, id: &str) -> Result<Vec<(String, Meta)>, ApiError> {
    let hashes = reader.layout().system.runs_of(reader.tx(), kind, id).await?;
    reader.charge(hashes.len())?;
    let mut out = Vec::with_capacity(hashes.len());
    for h in hashes {
        if let Some(meta) = reader.meta(&h).await?
            && !meta.pending_deletion
        {
            out.push((h, meta));
        }
    }
    Ok(out)
}

/// `GET experiments/{id}/runs/?limit=&offset=`: runs in hash order after `offset` (from the start
/// when unknown), at most `limit` (0 or absent: all), pending-deletion runs dropped after slicing.
pub async fn experiments_runs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let limit = params.int("limit", 0)?;
    let offset = params.str("offset").filter(|o| !o.is_empty()).map(str::to_owned);
    let mut reader = Reader::open(&state)?;
    if reader.layout().system.get(reader.tx(), EntityKind::Experiment, &id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let mut hashes = reader.layout().system.runs_of(reader.tx(), EntityKind::Experiment, &id).await?;
    reader.charge(hashes.len())?;
    if let Some(pos) = offset.and_then(|o| hashes.iter().position(|h| *h == o)) {
        hashes.drain(..=pos);
    }
    if let Ok(limit) = usize::try_from(limit)
        && limit > 0
    {
        hashes.truncate(limit);
    }
    let mut runs = Vec::with_capacity(hashes.len());
    for h in hashes {
        let Some(meta) = reader.meta(&h).await? else { continue };
        if meta.pending_deletion {
            continue;
        }
        runs.push(json!({
            "run_id": h,
            "name": meta.name,
            "creation_time": meta.created_at,
            "end_time": meta.finalized_at,
            "archived": meta.archived,
        }));
    }
    Ok(Json(json!({"id": id, "runs": runs})).into_response())
}

/// `GET experiments/{id}/activity/`: run counts and hourly creation buckets in local time.
pub async fn experiments_activity(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let offset = tz_offset(&headers)?;
    let mut reader = Reader::open(&state)?;
    if reader.layout().system.get(reader.tx(), EntityKind::Experiment, &id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let runs = linked_runs(&mut reader, EntityKind::Experiment, &id).await?;
    let metas: Vec<&Meta> = runs.iter().map(|(_, m)| m).collect();
    Ok(Json(activity(&metas, offset, true, None)).into_response())
}

/// The activity object of a set of runs (`num_experiments` first when given).
pub fn activity(metas: &[&Meta], offset: i64, hourly: bool, num_experiments: Option<usize>) -> J {
    let mut map: Map<String, J> = Map::new();
    for m in metas {
        let bucket = activity_bucket(m.created_at, offset, hourly);
        let n = map.get(&bucket).and_then(J::as_u64).unwrap_or(0);
        map.insert(bucket, J::from(n + 1));
    }
    let mut out = Map::new();
    if let Some(n) = num_experiments {
        out.insert("num_experiments".into(), J::from(n));
    }
    out.insert("num_runs".into(), J::from(metas.len()));
    out.insert("num_archived_runs".into(), J::from(metas.iter().filter(|m| m.archived).count()));
    out.insert("num_active_runs".into(), J::from(metas.iter().filter(|m| m.active).count()));
    out.insert("activity_map".into(), J::Object(map));
    J::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Notes (experiment and run).

/// Who a note belongs to.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Experiment(&'a str),
    Run(&'a str),
}

impl Owner<'_> {
    fn field(self) -> (&'static str, String) {
        match self {
            Owner::Experiment(id) => ("experiment_id", id.to_owned()),
            Owner::Run(h) => ("run_hash", h.to_owned()),
        }
    }
}

/// A note as listed: `id` first, then the stored fields in alphabetical order.
fn note_listed(id: &str, f: &Fields) -> J {
    let mut sorted: Vec<&(String, Value)> = f.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Map::new();
    out.insert("id".into(), J::from(id));
    for (k, v) in sorted {
        out.insert(k.clone(), v.to_json().unwrap_or(J::Null));
    }
    J::Object(out)
}

async fn notes_list(state: &AppState, owner: Owner<'_>) -> Result<Response, ApiError> {
    let (key, want) = owner.field();
    let list = list_entities(state, EntityKind::Note).await?;
    let out = list
        .iter()
        .filter(|(_, f)| fstr(f, key).as_deref() == Some(want.as_str()))
        .map(|(id, f)| note_listed(id, f))
        .collect();
    Ok(Json(J::Array(out)).into_response())
}

async fn notes_create(state: &AppState, owner: Owner<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let obj = body_object(body)?;
    let content = req_str(&obj, "content")?.trim().to_owned();
    let (key, owner_id) = owner.field();
    let id = uuid::Uuid::new_v4().to_string();
    let ts = now();
    write(state, |tx| {
        let (state, id, content, owner_id) = (state.clone(), id.clone(), content.clone(), owner_id.clone());
        async move {
            let fields = [
                ("content", Value::Str(content)),
                ("created_at", Value::Float(ts)),
                ("updated_at", Value::Float(ts)),
                (key, Value::Str(owner_id)),
            ];
            state.layout.system.put_fields(&tx, EntityKind::Note, &id, &fields)?;
            Ok(())
        }
    })
    .await?;
    Ok(created(json!({"id": id, "created_at": ts})))
}

/// The note, 404 unless it exists and (for run notes) belongs to the run.
async fn note_of(state: &AppState, owner: Owner<'_>, note_id: &str) -> Result<Fields, ApiError> {
    let f = get_entity(state, EntityKind::Note, note_id).await?;
    if let Owner::Run(h) = owner
        && fstr(&f, "run_hash").as_deref() != Some(h)
    {
        return Err(ApiError::NotFound);
    }
    Ok(f)
}

fn note_short(id: &str, f: &Fields) -> J {
    json!({"id": id, "content": fj(f, "content"), "updated_at": fj(f, "updated_at")})
}

async fn note_get(state: &AppState, owner: Owner<'_>, note_id: &str) -> Result<Response, ApiError> {
    let f = note_of(state, owner, note_id).await?;
    Ok(Json(note_short(note_id, &f)).into_response())
}

async fn note_update(state: &AppState, owner: Owner<'_>, note_id: &str, body: &Bytes) -> Result<Response, ApiError> {
    let obj = body_object(body)?;
    let content = req_str(&obj, "content")?.trim().to_owned();
    note_of(state, owner, note_id).await?;
    let ts = now();
    write(state, |tx| {
        let (state, content) = (state.clone(), content.clone());
        async move {
            let fields = [("content", Value::Str(content)), ("updated_at", Value::Float(ts))];
            state.layout.system.put_fields(&tx, EntityKind::Note, note_id, &fields)?;
            Ok(())
        }
    })
    .await?;
    Ok(Json(json!({"id": note_id, "content": content, "updated_at": ts})).into_response())
}

async fn note_delete(state: &AppState, owner: Owner<'_>, note_id: &str) -> Result<Response, ApiError> {
    note_of(state, owner, note_id).await?;
    write(state, |tx| {
        let state = state.clone();
        async move {
            state.layout.system.delete(&tx, state.layout.indexes(), EntityKind::Note, note_id).await?;
            Ok(())
        }
    })
    .await?;
    Ok(Json(json!({"status": "OK"})).into_response())
}

async fn require_experiment(state: &AppState, id: &str) -> Result<(), ApiError> {
    get_entity(state, EntityKind::Experiment, id).await.map(|_| ())
}

/// `GET experiments/{id}/note/` (404 for an unknown experiment).
pub async fn experiment_notes(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    require_experiment(&state, &id).await?;
    notes_list(&state, Owner::Experiment(&id)).await
}

/// `POST experiments/{id}/note/` `{"content"}`: 201 `{"id","created_at"}`.
pub async fn experiment_note_create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_experiment(&state, &id).await?;
    notes_create(&state, Owner::Experiment(&id), &body).await
}

/// `GET experiments/{id}/note/{note_id}/` (no ownership check, as the reference).
pub async fn experiment_note_get(
    State(state): State<AppState>,
    Path((id, note_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    note_get(&state, Owner::Experiment(&id), &note_id).await
}

/// `PUT experiments/{id}/note/{note_id}/` `{"content"}`.
pub async fn experiment_note_update(
    State(state): State<AppState>,
    Path((id, note_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    note_update(&state, Owner::Experiment(&id), &note_id, &body).await
}

/// `DELETE experiments/{id}/note/{note_id}/`.
pub async fn experiment_note_delete(
    State(state): State<AppState>,
    Path((id, note_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    note_delete(&state, Owner::Experiment(&id), &note_id).await
}

/// `GET runs/{run_id}/note/`: the run's notes (`[]` for an unknown run).
pub async fn run_notes(State(state): State<AppState>, Path(run): Path<String>) -> Result<Response, ApiError> {
    notes_list(&state, Owner::Run(&run)).await
}

/// `POST runs/{run_id}/note/` `{"content"}`: 201, no run existence check (as the reference).
pub async fn run_note_create(
    State(state): State<AppState>,
    Path(run): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    notes_create(&state, Owner::Run(&run), &body).await
}

/// `GET runs/{run_id}/note/{note_id}/`: 404 unless the note belongs to the run.
pub async fn run_note_get(
    State(state): State<AppState>,
    Path((run, note_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    note_get(&state, Owner::Run(&run), &note_id).await
}

/// `PUT runs/{run_id}/note/{note_id}/` `{"content"}`.
pub async fn run_note_update(
    State(state): State<AppState>,
    Path((run, note_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    note_update(&state, Owner::Run(&run), &note_id, &body).await
}

/// `DELETE runs/{run_id}/note/{note_id}/`.
pub async fn run_note_delete(
    State(state): State<AppState>,
    Path((run, note_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    note_delete(&state, Owner::Run(&run), &note_id).await
}

// ---------------------------------------------------------------------------------------------
// Tags.

/// `GET tags/`.
pub async fn tags_list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = list_entities(&state, EntityKind::Tag).await?;
    Ok(Json(J::Array(list.iter().map(|(id, f)| tag_json(id, f)).collect())).into_response())
}

/// `GET tags/search/?q=`.
pub async fn tags_search(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let q = params.str("q").unwrap_or_default().to_owned();
    let list = list_entities(&state, EntityKind::Tag).await?;
    let out = list.iter().filter(|(_, f)| name_matches(f, &q)).map(|(id, f)| tag_json(id, f)).collect();
    Ok(Json(J::Array(out)).into_response())
}

/// `POST tags/` `{"name", color?, description?}`: 200 `{"id","status":"OK"}`, 400 on a taken name.
pub async fn tags_create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let name = unique_name(&obj)?;
    let color = opt_str(&obj, "color")?.map(|s| s.trim().to_owned()).unwrap_or_default();
    let description = opt_str(&obj, "description")?.map(|s| s.trim().to_owned()).unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    let ts = now();
    write(&state, |tx| {
        let (state, name, id) = (state.clone(), name.clone(), id.clone());
        let extra = [("color", Value::from(color.as_str())), ("description", Value::from(description.as_str()))];
        async move {
            let system = &state.layout.system;
            if system.uuid_by_name(&tx, EntityKind::Tag, &name).await?.is_some() {
                return Err(ApiError::BadRequest(format!("Tag with name '{name}' already exists")));
            }
            system.create_named(&tx, EntityKind::Tag, &id, &name, ts, &extra).await?;
            Ok(())
        }
    })
    .await?;
    Ok(ok_id(&id))
}

/// `GET tags/{id}/`.
pub async fn tags_get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let f = get_entity(&state, EntityKind::Tag, &id).await?;
    Ok(Json(tag_json(&id, &f)).into_response())
}

/// `PUT tags/{id}/` `{name?, color?, description?, archived?}`.
pub async fn tags_update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let name = new_unique_name(&obj)?;
    let color = opt_str(&obj, "color")?.map(|s| s.trim().to_owned());
    let description = opt_str(&obj, "description")?.map(|s| s.trim().to_owned());
    let archived = opt_bool(&obj, "archived")?;
    let ts = now();
    write(&state, |tx| {
        let (state, id, name, color, description) =
            (state.clone(), id.clone(), name.clone(), color.clone(), description.clone());
        async move {
            let system = &state.layout.system;
            let current = system.get(&tx, EntityKind::Tag, &id).await?.ok_or(ApiError::NotFound)?;
            if let Some(name) = &name
                && fstr(&current, "name").as_deref() != Some(name.as_str())
            {
                refuse_taken(&state, &tx, EntityKind::Tag, name, &id).await?;
                system.rename(&tx, state.layout.indexes(), EntityKind::Tag, &id, name, ts).await?;
            }
            let mut fields: Vec<(&str, Value)> = vec![("updated_at", Value::Float(ts))];
            if let Some(c) = color {
                fields.push(("color", Value::Str(c)));
            }
            if let Some(d) = description {
                fields.push(("description", Value::Str(d)));
            }
            if let Some(a) = archived {
                fields.push(("is_archived", Value::Bool(a)));
            }
            system.put_fields(&tx, EntityKind::Tag, &id, &fields)?;
            Ok(())
        }
    })
    .await?;
    Ok(ok_id(&id))
}

/// `DELETE tags/{id}/`: 200 with body `null`; records `tag_deleted`.
pub async fn tags_delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    delete_named(&state, EntityKind::Tag, &id).await?;
    Ok(Json(J::Null).into_response())
}

/// `GET tags/{id}/runs/`: the tagged runs with their experiment names.
pub async fn tags_runs(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let mut reader = Reader::open(&state)?;
    if reader.layout().system.get(reader.tx(), EntityKind::Tag, &id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let mut runs = Vec::new();
    for (h, meta) in linked_runs(&mut reader, EntityKind::Tag, &id).await? {
        let experiment = reader.experiment(meta.experiment_id.as_deref()).await?.and_then(|e| e.name);
        runs.push(json!({
            "run_id": h,
            "name": meta.name,
            "experiment": experiment,
            "creation_time": meta.created_at,
            "end_time": meta.finalized_at,
        }));
    }
    Ok(Json(json!({"id": id, "runs": runs})).into_response())
}

// ---------------------------------------------------------------------------------------------
// Dashboards, apps, reports.

async fn dashboard_json(state: &AppState, id: &str, f: &Fields) -> Result<J, ApiError> {
    let app_type = match fstr(f, "app_id") {
        Some(app) => get_entity(state, EntityKind::DashboardApp, &app).await.ok().map(|a| fj(&a, "type")),
        None => None,
    };
    Ok(json!({
        "id": id,
        "name": fj(f, "name"),
        "description": fj(f, "description"),
        "app_id": fj(f, "app_id"),
        "app_type": app_type.unwrap_or(J::Null),
        "updated_at": fj(f, "updated_at"),
        "created_at": fj(f, "created_at"),
    }))
}

/// `GET dashboards/`: the dashboards not deleted.
pub async fn dashboards_list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut out = Vec::new();
    for (id, f) in list_entities(&state, EntityKind::Dashboard).await? {
        if !fbool(&f, "is_archived") {
            out.push(dashboard_json(&state, &id, &f).await?);
        }
    }
    Ok(Json(J::Array(out)).into_response())
}

/// `POST dashboards/` `{"name", description?, app_id?}`: 201 Dashboard.
pub async fn dashboards_create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let name = req_str(&obj, "name")?;
    let description = opt_str(&obj, "description")?.unwrap_or_default();
    let app_id = opt_str(&obj, "app_id")?;
    let id = uuid::Uuid::new_v4().to_string();
    let ts = now();
    let mut fields = vec![
        ("name", Value::Str(name)),
        ("description", Value::Str(description)),
        ("is_archived", Value::Bool(false)),
        ("created_at", Value::Float(ts)),
        ("updated_at", Value::Float(ts)),
    ];
    if let Some(app) = app_id {
        fields.push(("app_id", Value::Str(app)));
    }
    put(&state, EntityKind::Dashboard, &id, &fields).await?;
    let f = get_entity(&state, EntityKind::Dashboard, &id).await?;
    Ok(created(dashboard_json(&state, &id, &f).await?))
}

/// `GET dashboards/{id}/` (also a deleted one, as the reference).
pub async fn dashboards_get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let f = get_entity(&state, EntityKind::Dashboard, &id).await?;
    Ok(Json(dashboard_json(&state, &id, &f).await?).into_response())
}

/// `PUT dashboards/{id}/` `{name?, description?}`.
pub async fn dashboards_update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let mut fields = vec![("updated_at", Value::Float(now()))];
    if let Some(n) = opt_str(&obj, "name")? {
        fields.push(("name", Value::Str(n)));
    }
    if let Some(d) = opt_str(&obj, "description")? {
        fields.push(("description", Value::Str(d)));
    }
    get_entity(&state, EntityKind::Dashboard, &id).await?;
    put(&state, EntityKind::Dashboard, &id, &fields).await?;
    let f = get_entity(&state, EntityKind::Dashboard, &id).await?;
    Ok(Json(dashboard_json(&state, &id, &f).await?).into_response())
}

/// `DELETE dashboards/{id}/`: 204, soft (marks `is_archived`).
pub async fn dashboards_delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    get_entity(&state, EntityKind::Dashboard, &id).await?;
    put(&state, EntityKind::Dashboard, &id, &[("is_archived", Value::Bool(true)), ("updated_at", Value::Float(now()))])
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn put(state: &AppState, kind: EntityKind, id: &str, fields: &[(&str, Value)]) -> Result<(), ApiError> {
    write(state, |tx| {
        let state = state.clone();
        async move { Ok(state.layout.system.put_fields(&tx, kind, id, fields)?) }
    })
    .await
}

async fn hard_delete(state: &AppState, kind: EntityKind, id: &str) -> Result<Response, ApiError> {
    write(state, |tx| {
        let state = state.clone();
        async move {
            if state.layout.system.get(&tx, kind, id).await?.is_none() {
                return Err(ApiError::NotFound);
            }
            state.layout.system.delete(&tx, state.layout.indexes(), kind, id).await?;
            Ok(())
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn app_json(id: &str, f: &Fields) -> J {
    json!({
        "id": id,
        "type": fj(f, "type"),
        "updated_at": fj(f, "updated_at"),
        "created_at": fj(f, "created_at"),
        "state": field(f, "state").and_then(|v| v.to_json().ok()).unwrap_or_else(|| json!({})),
    })
}

/// `GET apps/`.
pub async fn apps_list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = list_entities(&state, EntityKind::DashboardApp).await?;
    Ok(Json(J::Array(list.iter().map(|(id, f)| app_json(id, f)).collect())).into_response())
}

/// `POST apps/` `{"type", "state": object}`: 201 App.
pub async fn apps_create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let kind = req_str(&obj, "type")?;
    let app_state = opt_object(&obj, "state")?.ok_or_else(|| ApiError::Validation("Field required".into()))?;
    let id = uuid::Uuid::new_v4().to_string();
    let ts = now();
    let fields = [
        ("type", Value::Str(kind)),
        ("state", Value::from(&app_state)),
        ("created_at", Value::Float(ts)),
        ("updated_at", Value::Float(ts)),
    ];
    put(&state, EntityKind::DashboardApp, &id, &fields).await?;
    let f = get_entity(&state, EntityKind::DashboardApp, &id).await?;
    Ok(created(app_json(&id, &f)))
}

/// `GET apps/{id}/`.
pub async fn apps_get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let f = get_entity(&state, EntityKind::DashboardApp, &id).await?;
    Ok(Json(app_json(&id, &f)).into_response())
}

/// `PUT apps/{id}/` `{type?, state?}`: the state is replaced whole.
pub async fn apps_update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let mut fields = vec![("updated_at", Value::Float(now()))];
    if let Some(t) = opt_str(&obj, "type")? {
        fields.push(("type", Value::Str(t)));
    }
    let new_state = opt_object(&obj, "state")?;
    get_entity(&state, EntityKind::DashboardApp, &id).await?;
    write(&state, |tx| {
        let (state, id, fields, new_state) = (state.clone(), id.clone(), fields.clone(), new_state.clone());
        async move {
            let system = &state.layout.system;
            if let Some(s) = &new_state {
                // Replace wholesale: a stored map is one key, so setting it replaces it.
                system.put_fields(&tx, EntityKind::DashboardApp, &id, &[("state", Value::from(s))])?;
            }
            system.put_fields(&tx, EntityKind::DashboardApp, &id, &fields)?;
            Ok(())
        }
    })
    .await?;
    let f = get_entity(&state, EntityKind::DashboardApp, &id).await?;
    Ok(Json(app_json(&id, &f)).into_response())
}

/// `DELETE apps/{id}/`: 204, hard.
pub async fn apps_delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    hard_delete(&state, EntityKind::DashboardApp, &id).await
}

fn report_json(id: &str, f: &Fields) -> J {
    json!({
        "id": id,
        "name": fj(f, "name"),
        "code": fj(f, "code"),
        "description": fj(f, "description"),
        "updated_at": fj(f, "updated_at"),
        "created_at": fj(f, "created_at"),
    })
}

/// `GET reports/`.
pub async fn reports_list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = list_entities(&state, EntityKind::Report).await?;
    Ok(Json(J::Array(list.iter().map(|(id, f)| report_json(id, f)).collect())).into_response())
}

/// `POST reports/` `{"name", code?, description?}`: 201 Report.
pub async fn reports_create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let name = req_str(&obj, "name")?;
    let code = opt_str(&obj, "code")?.unwrap_or_default();
    let description = opt_str(&obj, "description")?.unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    let ts = now();
    let fields = [
        ("name", Value::Str(name)),
        ("code", Value::Str(code)),
        ("description", Value::Str(description)),
        ("created_at", Value::Float(ts)),
        ("updated_at", Value::Float(ts)),
    ];
    put(&state, EntityKind::Report, &id, &fields).await?;
    let f = get_entity(&state, EntityKind::Report, &id).await?;
    Ok(created(report_json(&id, &f)))
}

/// `GET reports/{id}/`.
pub async fn reports_get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let f = get_entity(&state, EntityKind::Report, &id).await?;
    Ok(Json(report_json(&id, &f)).into_response())
}

/// `PUT reports/{id}/` `{name?, code?, description?}` (partial).
pub async fn reports_update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    let mut fields = vec![("updated_at", Value::Float(now()))];
    for key in ["name", "code", "description"] {
        if let Some(v) = opt_str(&obj, key)? {
            fields.push((key, Value::Str(v)));
        }
    }
    get_entity(&state, EntityKind::Report, &id).await?;
    put(&state, EntityKind::Report, &id, &fields).await?;
    let f = get_entity(&state, EntityKind::Report, &id).await?;
    Ok(Json(report_json(&id, &f)).into_response())
}

/// `DELETE reports/{id}/`: 204, hard.
pub async fn reports_delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    hard_delete(&state, EntityKind::Report, &id).await
}

// ---------------------------------------------------------------------------------------------
// Version.

/// `GET version/`: `{"version","component":"backend","fdb_api_version":730}`.
pub async fn version() -> Response {
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "component": "backend", "fdb_api_version": 730})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_buckets_use_the_clients_local_time() {
        // 2025-01-01T00:30:00Z seen from UTC+3 (JS offset -180) is 03:30 local.
        let t = 1_735_691_400.0;
        assert_eq!(activity_bucket(t, -180, true), "2025-01-01T03:00:00");
        assert_eq!(activity_bucket(t, 0, true), "2025-01-01T00:00:00");
        // From UTC-5 (offset 300) it is still the previous day.
        assert_eq!(activity_bucket(t, 300, false), "2024-12-31T00:00:00");
    }

    #[test]
    fn bodies_must_be_objects_with_typed_fields() {
        assert_eq!(body_object(&Bytes::from_static(b"[1]")).unwrap_err().status().as_u16(), 422);
        assert_eq!(body_object(&Bytes::from_static(b"{")).unwrap_err().status().as_u16(), 422);
        let obj = body_object(&Bytes::from_static(br#"{"name": 1, "archived": "yes"}"#)).unwrap();
        assert_eq!(req_str(&obj, "name").unwrap_err().message(), "Input should be a valid string");
        assert_eq!(req_str(&obj, "missing").unwrap_err().message(), "Field required");
        assert_eq!(opt_bool(&obj, "archived").unwrap(), Some(true));
    }
}
