//! Run routes: `runs/{id}/info` (§4.6), `runs/search/run` (§4.1), `runs/{id}/metric/get-batch`
//! (§4.5) and `runs/search/metric` (§4.2).
//!
//! Searches compile and plan the query, then collect and sort the matches before answering, so a
//! bad query, a bad sort or an exhausted budget is a JSON error; the response then streams one
//! object per run, each encoded and flushed as soon as it is loaded.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::http::stream::{Float64Array, StreamValue};
use crate::query::plan::{MetricUsage, Plan, plan};
use crate::query::views::{run_scope, sequence_scope};
use crate::query::{CompileOptions, Query, compile};
use crate::storage::context_id::context_to_id;
use crate::storage::layout::{Columns, SeqId, SeqPoint, sample_points};
use crate::storage::value::{self, Value};

use super::ApiError;
use super::heavy::{HeavyPermit, admit, offload};
use super::kept::{Keeper, Match};
use super::params::{Params, tz_offset};
use super::read::{BUCKETS, Reader, RunData, Trace, bucket_of, per_run};
use super::series::{SeriesRead, SeriesRef, read_many};
use super::shape::{info_props, number, params as params_tree, stream_props, to_json, to_stream};
use super::streaming::{Out, Streamer, heavy_stream_response};

/// `GET runs/{run_id}/info/?skip_system=false&sequence=...`: params, traces by bucket, props and
/// artifacts of one run; 404 when the run has no meta (pending deletion still answers).
pub async fn run_info(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let skip_system = params.bool("skip_system", false)?;
    let requested = params.all("sequence");
    let mut buckets: Vec<&str> = Vec::new();
    if requested.is_empty() {
        buckets.extend(BUCKETS);
    } else {
        for name in requested {
            if let Some(b) = BUCKETS.iter().find(|b| **b == name)
                && !buckets.contains(b)
            {
                buckets.push(b);
            }
        }
    }
    let mut reader = Reader::open(&state)?;
    let run = per_run!(&mut reader, |r| RunData::load(r, &run_id, true, true))?.ok_or(ApiError::NotFound)?;
    let mut traces: Vec<(&str, Vec<StreamValue>)> = buckets.iter().map(|b| (*b, Vec::new())).collect();
    for t in &run.traces {
        let Some(bucket) = bucket_of(&t.dtype) else { continue };
        let Some((_, list)) = traces.iter_mut().find(|(b, _)| *b == bucket) else { continue };
        // Non-metric traces carry the reference's constant 0.1 (§10 item 7): their stored `last` is
        // an object, not a number, so there is nothing better to show.
        let last = if bucket == "metric" { to_stream(&t.last) } else { StreamValue::Float(0.1) };
        list.push(StreamValue::dict([
            ("context", to_stream(&t.context)),
            ("name", StreamValue::from(t.name.as_str())),
            ("last_value", last),
        ]));
    }
    let body = StreamValue::dict([
        ("params", params_tree(&run.attrs, skip_system)),
        ("traces", StreamValue::dict(traces.into_iter().map(|(b, l)| (b, StreamValue::List(l))))),
        ("props", info_props(&run)),
        ("artifacts", StreamValue::List(artifacts(&run.attrs, &state.config.blobs.s3_bucket))),
    ]);
    Ok(axum::Json(to_json(&body)).into_response())
}

/// The artifacts under `__blobs__`, minus sequence blobs (`seq/...`), with `s3://<bucket>/<key>`
/// URIs of `blobs.s3_bucket` (env `S3_BUCKET`).
fn artifacts(attrs: &Value, bucket: &str) -> Vec<StreamValue> {
    let Some(Value::Map(blobs)) = attrs.get("__blobs__") else {
        return Vec::new();
    };
    blobs
        .iter()
        .filter_map(|(path, blob)| {
            let path = path.as_str()?;
            if path.starts_with("seq/") {
                return None;
            }
            let key = blob.get("s3_key").and_then(Value::as_str).unwrap_or(path);
            let name = path.rsplit('/').next().unwrap_or(path);
            Some(StreamValue::dict([
                ("name", StreamValue::from(name)),
                ("path", StreamValue::from(path)),
                ("uri", StreamValue::from(format!("s3://{bucket}/{key}"))),
            ]))
        })
        .collect()
}

/// A sort key of run search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortField {
    Run,
    Experiment,
    Hash,
    Date,
    Duration,
    Description,
    Creator,
}

/// Parses `sort` (§4.1 step 2): a JSON array of `{field, order}`; empty or not a non-empty array
/// gives newest first.
fn parse_sort(raw: &str) -> Result<Vec<(SortField, bool)>, ApiError> {
    let default = vec![(SortField::Date, true)];
    if raw.is_empty() {
        return Ok(default);
    }
    let parsed: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| ApiError::BadRequest(format!("Invalid sort JSON: {e}")))?;
    let Some(items) = parsed.as_array().filter(|a| !a.is_empty()) else {
        return Ok(default);
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let field = item.get("field").and_then(|f| f.as_str()).unwrap_or_default();
        let field = match field {
            "run" => SortField::Run,
            "experiment" => SortField::Experiment,
            "hash" => SortField::Hash,
            "date" => SortField::Date,
            "duration" => SortField::Duration,
            "description" => SortField::Description,
            "creator" => SortField::Creator,
            other => return Err(ApiError::BadRequest(format!("Unknown sort field: '{other}'"))),
        };
        let desc = match item.get("order").and_then(|o| o.as_str()).unwrap_or("asc") {
            "asc" => false,
            "desc" => true,
            other => return Err(ApiError::BadRequest(format!("Invalid sort order: '{other}'"))),
        };
        out.push((field, desc));
    }
    Ok(out)
}

pub(super) use crate::clock::now_secs as now;

fn compare(a: &RunData, b: &RunData, field: SortField, now: f64) -> Ordering {
    let name = |r: &RunData| r.meta.name.clone().unwrap_or_default();
    let exp = |r: &RunData| r.experiment.as_ref().and_then(|e| e.name.clone()).unwrap_or_default();
    let dur = |r: &RunData| r.meta.finalized_at.unwrap_or(now) - r.meta.created_at;
    match field {
        SortField::Run => name(a).cmp(&name(b)),
        SortField::Experiment => exp(a).cmp(&exp(b)),
        SortField::Hash => a.hash.cmp(&b.hash),
        SortField::Date => a.meta.created_at.total_cmp(&b.meta.created_at),
        SortField::Duration => dur(a).total_cmp(&dur(b)),
        SortField::Description => a.meta.description.cmp(&b.meta.description),
        SortField::Creator => Ordering::Equal,
    }
}

/// Compiles `q` with the request's timezone offset; a bad query is a 400.
pub(super) fn compile_query(params: &Params, headers: &HeaderMap) -> Result<Query, ApiError> {
    let options = CompileOptions { tz_offset_minutes: tz_offset(headers)?, ..CompileOptions::default() };
    Ok(compile(params.str("q").unwrap_or(""), &options)?)
}

/// The candidate runs of a plan (all runs when nothing is indexed) and whether they are exact;
/// the reader will read their tag links at once.
pub(super) async fn candidates(reader: &mut Reader, plan: &Plan) -> Result<(Vec<String>, bool), ApiError> {
    let (hashes, exact) = match &plan.index {
        Some(index) => (reader.candidates(index).await?, plan.exact),
        None => (reader.all_runs().await?, false),
    };
    reader.read_tag_links_at_once(hashes.len());
    Ok((hashes, exact))
}

/// Evaluates the query's constant parts once, before any candidate, so that one exceeding a
/// budget (`len([[0]*100000]*100000) > 0`) is a 400 here rather than a stream cut off later.
pub(super) fn preflight(reader: &Reader, query: &Query) -> Result<(), ApiError> {
    reader.check_constant_parts(&query.expr)
}

/// `GET runs/search/run/`: the matching runs, sorted, after `offset`, at most `limit`, each as
/// `{params, traces: {metric: [...]}, props}` in the stream codec. A heavy request (see
/// [`super::heavy`]).
pub async fn search_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let permit = admit(&state)?;
    offload(permit, move |permit| search_run_offloaded(state, headers, raw, permit)).await
}

async fn search_run_offloaded(
    state: AppState,
    headers: HeaderMap,
    raw: Option<String>,
    permit: HeavyPermit,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let query = compile_query(&params, &headers)?;
    let limit = params.int("limit", 0)?;
    let offset = params.str("offset").filter(|o| !o.is_empty()).map(str::to_owned);
    let sort = parse_sort(params.str("sort").unwrap_or(""))?;
    let opts = RunSearch {
        skip_system: params.bool("skip_system", true)?,
        report_progress: params.bool("report_progress", true)?,
        exclude_params: params.bool("exclude_params", false)?,
        exclude_traces: params.bool("exclude_traces", false)?,
    };
    let plan = plan(&query.expr);
    let mut reader = Reader::open(&state)?;
    preflight(&reader, &query)?;
    let (hashes, exact) = candidates(&mut reader, &plan).await?;
    // Evaluation needs attributes, and traces only when the query reaches them; exact candidates
    // only need what sorting reads. What it read is kept for the answer, within a budget.
    let (attrs, traces) = (!exact, !exact && plan.reads_run_traces);
    let mut keeper = Keeper::new(state.config.query.run_search_kept_bytes);
    let mut matched: Vec<Match> = Vec::new();
    for hash in hashes {
        let loaded = per_run!(&mut reader, |r| RunData::load(r, &hash, attrs, traces))?;
        let Some(run) = loaded else { continue };
        if run.meta.pending_deletion {
            continue;
        }
        if !exact && !reader.matches(&query.expr, &run_scope(&Arc::new(run.view())))? {
            continue;
        }
        matched.push(keeper.keep(run, reader.snapshot_generation(), attrs, traces));
    }
    let now = now();
    matched.sort_by(|Match { run: a, .. }, Match { run: b, .. }| {
        sort.iter()
            .map(|(field, desc)| {
                let o = compare(a, b, *field, now);
                if *desc { o.reverse() } else { o }
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    });
    let total = matched.len();
    let start = match &offset {
        None => 0,
        Some(o) => matched.iter().position(|m| m.run.hash == *o).map_or(total, |i| i + 1),
    };
    let end =
        if limit > 0 { start.saturating_add(usize::try_from(limit).unwrap_or(usize::MAX)).min(total) } else { total };
    let page: Vec<(usize, Match)> = matched.into_iter().enumerate().take(end).skip(start).collect();
    Ok(heavy_stream_response(permit, move |out| async move { stream_runs(reader, page, total, opts, out).await }))
}

/// The flags of run search that shape each object.
#[derive(Debug, Clone, Copy)]
struct RunSearch {
    skip_system: bool,
    report_progress: bool,
    exclude_params: bool,
    exclude_traces: bool,
}

/// The rest of a sorted run (attributes and traces, as `opts` asks): what evaluation kept of it
/// (taken out of `sorted`) while the snapshot its meta came from (`generation`) is still the
/// reader's, the rest read from that snapshot; or the whole run read again from the current one
/// when that has changed. `None` when the run is gone or pending deletion by then.
///
/// Taking is safe under [`per_run!`]: a read repeated after `transaction_too_old` runs on a fresh
/// snapshot, whose generation differs, so it never looks at what the first attempt took.
async fn complete_run(reader: &mut Reader, sorted: &mut Match, opts: RunSearch) -> Result<Option<RunData>, ApiError> {
    let same = reader.snapshot_generation() == sorted.generation;
    let kept = &mut sorted.run;
    let mut run = if same {
        RunData {
            hash: kept.hash.clone(),
            meta: kept.meta.clone(),
            experiment: kept.experiment.clone(),
            tags: kept.tags.clone(),
            attrs: std::mem::replace(&mut kept.attrs, Value::Nil),
            traces: std::mem::take(&mut kept.traces),
            contexts: std::mem::take(&mut kept.contexts),
        }
    } else {
        match RunData::load(reader, &kept.hash, false, false).await? {
            Some(fresh) if !fresh.meta.pending_deletion => fresh,
            _ => return Ok(None),
        }
    };
    run.attrs = if opts.exclude_params {
        Value::Map(Vec::new())
    } else if same && sorted.attrs {
        run.attrs
    } else {
        reader.attrs(&run.hash).await?
    };
    run.traces = if opts.exclude_traces {
        Vec::new()
    } else if same && sorted.traces {
        run.traces
    } else {
        match &run.contexts {
            Some(contexts) => reader.traces_with(&run.hash, contexts).await?,
            None => reader.traces(&run.hash).await?,
        }
    };
    Ok(Some(run))
}

async fn stream_runs(
    mut reader: Reader,
    page: Vec<(usize, Match)>,
    total: usize,
    opts: RunSearch,
    out: Out,
) -> Result<(), ApiError> {
    let mut s = Streamer::new(out, opts.report_progress, reader.chunking());
    if total > 0 {
        s.progress(0, total);
    }
    for (position, mut sorted) in page {
        if let Some(run) = per_run!(&mut reader, |r| complete_run(r, &mut sorted, opts))? {
            s.object(run.hash.as_str(), &run_search_object(&run, opts))?;
        }
        s.progress(position + 1, total);
        if !s.flush().await {
            return Ok(());
        }
    }
    s.finish(true).await;
    Ok(())
}

/// The object of one run in run search.
fn run_search_object(run: &RunData, opts: RunSearch) -> StreamValue {
    let metrics: Vec<StreamValue> = run
        .traces
        .iter()
        .filter(|t| bucket_of(&t.dtype) == Some("metric"))
        .map(|t| {
            let last = to_stream(&t.last);
            StreamValue::dict([
                ("name", StreamValue::from(t.name.as_str())),
                ("context", to_stream(&t.context)),
                (
                    "values",
                    StreamValue::dict([
                        ("last", last.clone()),
                        ("last_step", to_stream(&t.last_step)),
                        ("first", last.clone()),
                        ("min", last.clone()),
                        ("max", last),
                    ]),
                ),
            ])
        })
        .collect();
    let params =
        if opts.exclude_params { StreamValue::Dict(Vec::new()) } else { params_tree(&run.attrs, opts.skip_system) };
    StreamValue::dict([
        ("params", params),
        ("traces", StreamValue::dict([("metric", StreamValue::List(metrics))])),
        ("props", stream_props(run)),
    ])
}

/// One requested trace of metric get-batch.
#[derive(Debug, serde::Deserialize)]
pub(super) struct TraceRef {
    /// The trace name.
    pub name: String,
    /// The trace context.
    pub context: serde_json::Value,
}

/// Parses `start:stop` (half-open, either side empty); no `:` means the whole range (§10 item 20);
/// a side that is not an integer is a 422.
pub(super) fn parse_range(raw: Option<&str>) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let Some((a, b)) = raw.and_then(|r| r.split_once(':')) else {
        return Ok((None, None));
    };
    let side = |s: &str| -> Result<Option<i64>, ApiError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        super::params::parse_int(s).map(Some).ok_or_else(|| ApiError::Validation(format!("Invalid range bound: '{s}'")))
    };
    Ok((side(a)?, side(b)?))
}

/// The inclusive steps `start..=end` of the half-open `start..stop`, `None` when it is empty.
fn step_range((start, stop): (Option<i64>, Option<i64>)) -> Option<(Option<i64>, Option<i64>)> {
    let end = match stop {
        Some(s) if s <= i64::MIN + 1 => return None,
        Some(s) => Some(s - 1),
        None => None,
    };
    match (start, end) {
        (Some(a), Some(b)) if a > b => None,
        _ => Some((start, end)),
    }
}

/// Reads one series with `start <= step < stop`, sampled to at most `density` points (≤ 0: all).
pub(super) async fn read_series(
    reader: &mut Reader,
    id: SeqId<'_>,
    (start, stop): (Option<i64>, Option<i64>),
    density: i64,
    cols: Columns,
) -> Result<Vec<crate::storage::layout::SeqPoint>, ApiError> {
    let Some((start, end)) = step_range((start, stop)) else { return Ok(Vec::new()) };
    let layout = reader.layout().clone();
    let mut keys = reader.key_allowance();
    let read = layout.seqs.read_within(reader.tx(), id, start, end, cols, true, &mut keys).await;
    let points = reader.charge_read(keys, read)?;
    let density = usize::try_from(density).unwrap_or(0);
    if density == 0 || points.len() <= density {
        return Ok(points);
    }
    Ok(sample_points(points, density))
}

pub(super) fn point_value(bytes: &[u8]) -> Value {
    value::decode(bytes).unwrap_or(Value::Nil)
}

/// `POST runs/{run_id}/metric/get-batch/?record_range=&record_density=50` with body
/// `[{name, context}]`: `[{name, context, iters, values}]` for each trace that exists.
pub async fn metric_get_batch(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let range = parse_range(params.str("record_range"))?;
    let density = params.int("record_density", 50)?;
    let requested: Vec<TraceRef> =
        serde_json::from_slice(&body).map_err(|e| ApiError::Validation(format!("Invalid request body: {e}")))?;
    let mut reader = Reader::open(&state)?;
    let out = per_run!(&mut reader, |r| get_batch(r, &run_id, &requested, range, density))?;
    Ok(axum::Json(out).into_response())
}

/// One trace of a metric get-batch answer, serialized to JSON as it is written out: a series of a
/// million points does not become a million JSON values first.
#[derive(serde::Serialize)]
struct BatchTrace {
    name: String,
    context: serde_json::Value,
    iters: Vec<i64>,
    values: Vec<JsonPoint>,
}

/// A point value as [`to_json`] renders it (a non-finite float is `null`).
struct JsonPoint(Value);

impl serde::Serialize for JsonPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Int(i) => match i64::try_from(*i) {
                Ok(i) => s.serialize_i64(i),
                Err(_) => to_json(&to_stream(&self.0)).serialize(s),
            },
            other => to_json(&to_stream(other)).serialize(s),
        }
    }
}

/// The traces of metric get-batch, read from one snapshot.
async fn get_batch(
    reader: &mut Reader,
    run_id: &str,
    requested: &[TraceRef],
    range: (Option<i64>, Option<i64>),
    density: i64,
) -> Result<Vec<BatchTrace>, ApiError> {
    if reader.meta(run_id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let traces = reader.traces(run_id).await?;
    let found: Vec<&Trace> = requested
        .iter()
        .filter_map(|r| {
            let ctx_id = context_to_id(&r.context);
            traces.iter().find(|t| t.ctx_id == ctx_id && t.name == r.name)
        })
        .collect();
    // The series are read at once (see `series.rs`); an empty range reads nothing.
    let read: Vec<Vec<SeqPoint>> = match step_range(range) {
        None => found.iter().map(|_| Vec::new()).collect(),
        Some((start, end)) => {
            let how = SeriesRead::Range { start, end, cols: Columns::default() };
            let series = found.iter().map(|t| SeriesRef { ctx_id: t.ctx_id, name: t.name.clone(), read: how });
            read_many(reader, run_id, series.collect()).await?
        }
    };
    let density = usize::try_from(density).unwrap_or(0);
    let mut out = Vec::with_capacity(found.len());
    for (trace, points) in found.into_iter().zip(read) {
        let points = if density == 0 || points.len() <= density { points } else { sample_points(points, density) };
        out.push(BatchTrace {
            name: trace.name.clone(),
            context: to_json(&to_stream(&trace.context)),
            iters: points.iter().map(|p| p.step).collect(),
            values: points.iter().map(|p| JsonPoint(point_value(&p.val))).collect(),
        });
    }
    Ok(out)
}

/// The flags of metric search.
#[derive(Debug, Clone)]
struct MetricSearch {
    p: i64,
    x_axis: Option<String>,
    skip_system: bool,
    report_progress: bool,
}

/// `GET runs/search/metric/?q=&p=50&x_axis=`: one object per run with matching metric traces,
/// each trace with its sampled `values`, `iters`, `epochs`, `timestamps` (and x-axis) series. A
/// heavy request (see [`super::heavy`]).
pub async fn search_metric(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let permit = admit(&state)?;
    offload(permit, move |permit| search_metric_offloaded(state, headers, raw, permit)).await
}

async fn search_metric_offloaded(
    state: AppState,
    headers: HeaderMap,
    raw: Option<String>,
    permit: HeavyPermit,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let query = compile_query(&params, &headers)?;
    let opts = MetricSearch {
        p: params.int("p", 50)?,
        x_axis: params.str("x_axis").filter(|x| !x.is_empty()).map(str::to_owned),
        skip_system: params.bool("skip_system", true)?,
        report_progress: params.bool("report_progress", true)?,
    };
    params.int("trace_chunk_size", 10)?;
    let plan = plan(&query.expr);
    let mut reader = Reader::open(&state)?;
    preflight(&reader, &query)?;
    let (hashes, exact) = if plan.metric_usage == MetricUsage::Other {
        let hashes = reader.all_runs().await?;
        reader.read_tag_links_at_once(hashes.len());
        (hashes, false)
    } else {
        candidates(&mut reader, &plan).await?
    };
    Ok(heavy_stream_response(permit, move |out| async move {
        stream_metrics(reader, hashes, exact, query, plan, opts, out).await
    }))
}

async fn stream_metrics(
    mut reader: Reader,
    hashes: Vec<String>,
    exact: bool,
    query: Query,
    plan: Plan,
    opts: MetricSearch,
    out: Out,
) -> Result<(), ApiError> {
    let mut s = Streamer::new(out, opts.report_progress, reader.chunking());
    let total = hashes.len();
    s.progress(0, total);
    let mut seen = HashSet::new();
    for (i, hash) in hashes.iter().enumerate() {
        if !seen.insert(hash) {
            continue;
        }
        let object = per_run!(&mut reader, |r| metric_object(r, hash, exact, &query, &plan, &opts))?;
        // The frame goes before the run's object here (§4.2).
        s.progress(i + 1, total);
        if let Some(object) = object {
            s.object(hash.as_str(), &object)?;
        }
        if !s.flush().await {
            return Ok(());
        }
    }
    s.finish(true).await;
    Ok(())
}

/// The object of one run in metric search, `None` when no trace of it matches.
async fn metric_object(
    reader: &mut Reader,
    hash: &str,
    exact: bool,
    query: &Query,
    plan: &Plan,
    opts: &MetricSearch,
) -> Result<Option<StreamValue>, ApiError> {
    let Some(run) = RunData::load(reader, hash, true, true).await? else { return Ok(None) };
    if run.meta.pending_deletion {
        return Ok(None);
    }
    let candidates: Vec<&Trace> = run
        .traces
        .iter()
        .filter(|t| bucket_of(&t.dtype) == Some("metric"))
        .filter(|t| plan.trace_names.as_ref().is_none_or(|names| names.contains(&t.name)))
        .collect();
    let selected: Vec<&Trace> = if exact {
        candidates
    } else {
        let view = Arc::new(run.view());
        if plan.metric_usage == MetricUsage::None {
            if reader.matches(&query.expr, &run_scope(&view))? { candidates } else { Vec::new() }
        } else {
            let mut selected = Vec::with_capacity(candidates.len());
            for t in candidates {
                if reader.matches(&query.expr, &sequence_scope(&view, "metric", &t.summary()))? {
                    selected.push(t);
                }
            }
            selected
        }
    };
    if selected.is_empty() {
        return Ok(None);
    }
    // Each selected trace's series, then its x-axis series when the run has one in its context,
    // read at once (see `series.rs`).
    let p = usize::try_from(opts.p.max(1)).unwrap_or(usize::MAX);
    let with_x_axis =
        |t: &Trace| opts.x_axis.as_ref().filter(|x| run.traces.iter().any(|o| o.ctx_id == t.ctx_id && &o.name == *x));
    let mut series = Vec::with_capacity(selected.len());
    for t in &selected {
        let cols = Columns { epoch: true, time: true };
        series.push(SeriesRef { ctx_id: t.ctx_id, name: t.name.clone(), read: SeriesRead::Sampled { p, cols } });
        if let Some(x) = with_x_axis(t) {
            let cols = Columns::default();
            series.push(SeriesRef { ctx_id: t.ctx_id, name: x.clone(), read: SeriesRead::Sampled { p, cols } });
        }
    }
    let mut read = read_many(reader, hash, series).await?.into_iter();
    let mut traces = Vec::with_capacity(selected.len());
    for t in selected {
        let points = read.next().unwrap_or_default();
        let values: Float64Array = points.iter().map(|p| number(&point_value(&p.val))).collect();
        let iters: Float64Array = points.iter().map(|p| p.step as f64).collect();
        // Epochs are sent only when every sampled point has one; timestamps always (§10 item 1).
        let epochs: Float64Array = if points.iter().all(|p| p.epoch.is_some()) {
            points.iter().filter_map(|p| p.epoch).map(|e| e as f64).collect()
        } else {
            Float64Array::new()
        };
        let timestamps: Float64Array = points.iter().map(|p| p.time.unwrap_or(f64::NAN)).collect();
        let last_step = points.last().map_or(0, |p| p.step);
        let mut entry = vec![
            ("name", StreamValue::from(t.name.as_str())),
            ("context", to_stream(&t.context)),
            ("slice", StreamValue::list([StreamValue::Int(0), StreamValue::Int(last_step), StreamValue::Int(1)])),
            ("values", StreamValue::from(values)),
            ("iters", StreamValue::from(iters)),
            ("epochs", StreamValue::from(epochs)),
            ("timestamps", StreamValue::from(timestamps)),
        ];
        if opts.x_axis.is_some() {
            let (xv, xi) = if with_x_axis(t).is_some() {
                let xs = read.next().unwrap_or_default();
                (xs.iter().map(|p| number(&point_value(&p.val))).collect(), xs.iter().map(|p| p.step as f64).collect())
            } else {
                (Float64Array::new(), Float64Array::new())
            };
            entry.push(("x_axis_values", StreamValue::from(xv)));
            entry.push(("x_axis_iters", StreamValue::from(xi)));
        }
        traces.push(StreamValue::dict(entry));
    }
    Ok(Some(StreamValue::dict([
        ("params", params_tree(&run.attrs, opts.skip_system)),
        ("traces", StreamValue::List(traces)),
        ("props", stream_props(&run)),
    ])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_defaults_to_newest_first_and_rejects_unknown_fields() {
        assert_eq!(parse_sort("").ok(), Some(vec![(SortField::Date, true)]));
        assert_eq!(parse_sort("[]").ok(), Some(vec![(SortField::Date, true)]));
        assert_eq!(parse_sort("{}").ok(), Some(vec![(SortField::Date, true)]));
        assert_eq!(
            parse_sort(r#"[{"field":"experiment"},{"field":"run","order":"desc"}]"#).ok(),
            Some(vec![(SortField::Experiment, false), (SortField::Run, true)])
        );
        assert_eq!(parse_sort(r#"[{"field":"zzz"}]"#).unwrap_err().message(), "Unknown sort field: 'zzz'");
        assert_eq!(parse_sort(r#"[{"field":"run","order":"up"}]"#).unwrap_err().message(), "Invalid sort order: 'up'");
        assert!(parse_sort("not json").unwrap_err().message().starts_with("Invalid sort JSON: "));
    }

    #[test]
    fn get_batch_points_serialize_as_the_generic_json_conversion_does() {
        for v in [
            Value::Float(0.1),
            Value::Float(-1e300),
            Value::Float(f64::NAN),
            Value::Float(f64::NEG_INFINITY),
            Value::Int(3),
            Value::Int(1 << 70),
            Value::Str("x".into()),
            Value::Nil,
            Value::Bool(true),
        ] {
            let generic = serde_json::to_string(&to_json(&to_stream(&v))).unwrap();
            assert_eq!(serde_json::to_string(&JsonPoint(v.clone())).unwrap(), generic, "{v:?}");
        }
    }

    #[test]
    fn ranges_are_half_open_and_need_a_colon() {
        assert_eq!(parse_range(Some("1:3")).ok(), Some((Some(1), Some(3))));
        assert_eq!(parse_range(Some(":3")).ok(), Some((None, Some(3))));
        assert_eq!(parse_range(Some("2,8")).ok(), Some((None, None)));
        assert_eq!(parse_range(None).ok(), Some((None, None)));
        assert_eq!(parse_range(Some("a:3")).unwrap_err().status().as_u16(), 422);
    }
}
