//! Custom objects (spec `api.md` §4.8) for images, texts, distributions, audios and figures:
//! `runs/search/{seq}`, `runs/{id}/{seq}/get-batch` and `runs/{id}/{seq}/get-step`.
//!
//! Image and audio items carry a blob URI (§7.1, `crate::blobs::uri`) that the client hands to
//! `runs/{images,audios}/get-batch` (`blobs.rs`) for the bytes. Deliberate deviations from the
//! reference:
//! - An item's `index` is its position in the stored list, kept through index slicing and density
//!   sampling (§10 item 3), so it names the item it shows; blob URIs are minted with that same
//!   index, so they point at the blob of the item they come with.
//! - `get-step`'s `index_range_total` counts the step's items before slicing (the reference counts
//!   what is left after slicing).
//! - Figures' `data` is compact JSON (the reference's `json.dumps` puts spaces after separators);
//!   the UI parses it either way.
//! - Custom-object search emits a progress frame after each run but the last, without the
//!   reference's 0.5 s throttle, then `[0, 0]`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use std::sync::Arc;

use crate::app::AppState;
use crate::blobs::{BlobUri, UriCodec};
use crate::http::stream::{Float64Array, StreamValue};
use crate::query::Query;
use crate::query::plan::plan;
use crate::query::views::sequence_scope;
use crate::storage::context_id::context_to_id;
use crate::storage::layout::{Columns, SeqId, SeqPoint};
use crate::storage::value::Value;

use super::heavy::{HeavyPermit, admit, offload};
use super::params::Params;
use super::read::per_run;
use super::read::{Reader, RunData, Trace, bucket_of};
use super::runs::{TraceRef, candidates, compile_query, parse_range, point_value, preflight, read_series};
use super::shape::{number, params as params_tree, stream_props, to_json, to_stream};
use super::streaming::{Chunking, Out, Streamer, heavy_stream_response, stream_response};
use super::{ApiError, body};

/// A custom-object sequence type served here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `images` (dtype `image`), list-valued, items with blob URIs.
    Images,
    /// `audios` (dtype `audio`), list-valued, items with blob URIs.
    Audios,
    /// `texts` (dtype `text`), list-valued.
    Texts,
    /// `distributions` (dtype `distribution`).
    Distributions,
    /// `figures` (dtype `figure`).
    Figures,
}

impl Kind {
    /// The URL segment, query namespace and trace bucket.
    pub fn seq(self) -> &'static str {
        match self {
            Kind::Images => "images",
            Kind::Audios => "audios",
            Kind::Texts => "texts",
            Kind::Distributions => "distributions",
            Kind::Figures => "figures",
        }
    }

    /// Whether a step holds a list of items (index ranges and density apply).
    pub fn is_list(self) -> bool {
        matches!(self, Kind::Images | Kind::Audios | Kind::Texts)
    }

    /// The item at `index` of a step of `site`, as sent (§4.8 table; the reference's defaults for
    /// missing fields and for items that are not maps).
    pub fn dump(self, v: &Value, index: i64, site: &Site<'_>) -> StreamValue {
        let field = |key: &str, default: StreamValue| v.get(key).map_or(default, to_stream);
        match self {
            Kind::Images => StreamValue::dict([
                ("caption", field("caption", StreamValue::from(""))),
                ("width", field("width", StreamValue::Int(0))),
                ("height", field("height", StreamValue::Int(0))),
                ("format", field("format", StreamValue::from("png"))),
                ("blob_uri", site.blob_uri(index)),
                ("index", StreamValue::Int(index)),
            ]),
            Kind::Audios => StreamValue::dict([
                ("caption", field("caption", StreamValue::from(""))),
                ("format", field("format", StreamValue::from("wav"))),
                ("blob_uri", site.blob_uri(index)),
                ("index", StreamValue::Int(index)),
            ]),
            Kind::Texts => {
                let data = match v {
                    Value::Map(_) => v.get("data").map_or(StreamValue::from(""), to_stream),
                    other => StreamValue::Str(python_str(other)),
                };
                StreamValue::dict([("data", data), ("index", StreamValue::Int(index))])
            }
            Kind::Distributions => {
                let (blob, bin_count, range) = match v {
                    Value::Map(_) => (
                        match v.get("data") {
                            Some(Value::Bin(b)) => b.clone(),
                            Some(Value::Array(items)) => items.iter().flat_map(|x| number(x).to_le_bytes()).collect(),
                            _ => Vec::new(),
                        },
                        v.get("bin_count").map_or(StreamValue::Int(0), to_stream),
                        v.get("range").map_or_else(zero_range, to_stream),
                    ),
                    _ => (Vec::new(), StreamValue::Int(0), zero_range()),
                };
                let shape = match &bin_count {
                    StreamValue::Int(n) => *n,
                    _ => 0,
                };
                StreamValue::dict([
                    ("data", StreamValue::from(Float64Array::from_raw_parts(shape, blob))),
                    ("bin_count", bin_count),
                    ("range", range),
                ])
            }
            Kind::Figures => {
                let data = match v {
                    Value::Map(_) => match v.get("data") {
                        None => StreamValue::from("{}"),
                        Some(d @ (Value::Map(_) | Value::Array(_))) => {
                            StreamValue::Str(serde_json::to_string(&to_json(&to_stream(d))).unwrap_or_default())
                        }
                        Some(other) => to_stream(other),
                    },
                    _ => StreamValue::from("{}"),
                };
                StreamValue::dict([("data", data), ("index", StreamValue::Int(index))])
            }
        }
    }
}

/// Where the items of one step live: what an item's blob URI encodes besides its index.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// The codec that mints the URIs.
    pub uris: &'a UriCodec,
    /// Run hash.
    pub run: &'a str,
    /// Context id of the sequence.
    pub ctx_id: u32,
    /// Sequence name.
    pub name: &'a str,
    /// Step.
    pub step: i64,
}

impl Site<'_> {
    /// A fresh blob URI for the item at `index` of this step.
    fn blob_uri(&self, index: i64) -> StreamValue {
        let uri = BlobUri {
            run: self.run.to_owned(),
            ctx_id: self.ctx_id,
            seq: self.name.to_owned(),
            step: self.step,
            index,
        };
        StreamValue::Str(self.uris.mint(&uri))
    }
}

fn zero_range() -> StreamValue {
    StreamValue::list([StreamValue::Int(0), StreamValue::Int(0)])
}

/// Python's `str(v) if v else ""` for a non-map text item.
fn python_str(v: &Value) -> String {
    match v {
        Value::Nil | Value::Bool(false) => String::new(),
        Value::Str(s) => s.clone(),
        Value::Int(0) => String::new(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if *f == 0.0 => String::new(),
        other => match to_json(&to_stream(other)) {
            serde_json::Value::String(s) => s,
            j => j.to_string(),
        },
    }
}

/// The routes of the five types.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for kind in [Kind::Images, Kind::Texts, Kind::Distributions, Kind::Audios, Kind::Figures] {
        let seq = kind.seq();
        router = router
            .route(
                &format!("/runs/search/{seq}/"),
                get(move |state: State<AppState>, headers: HeaderMap, raw: RawQuery| search(kind, state, headers, raw)),
            )
            .route(
                &format!("/runs/{{run_id}}/{seq}/get-batch/"),
                post(move |state: State<AppState>, run: Path<String>, raw: RawQuery, bytes: Bytes| {
                    get_batch(kind, state, run, raw, bytes)
                }),
            )
            .route(
                &format!("/runs/{{run_id}}/{seq}/get-step/"),
                post(move |state: State<AppState>, run: Path<String>, raw: RawQuery, bytes: Bytes| {
                    get_step(kind, state, run, raw, bytes)
                }),
            );
    }
    router
}

/// Ranges and densities of a request.
#[derive(Debug, Clone, Copy)]
struct Window {
    record: (Option<i64>, Option<i64>),
    record_density: i64,
    index: (Option<i64>, Option<i64>),
    index_density: i64,
}

impl Window {
    fn parse(params: &Params, record: bool) -> Result<Self, ApiError> {
        Ok(Window {
            record: if record { parse_range(params.str("record_range"))? } else { (None, None) },
            record_density: if record { params.int("record_density", 50)? } else { 0 },
            index: parse_range(params.str("index_range"))?,
            index_density: params.int("index_density", 5)?,
        })
    }
}

/// Python's `items[lo:hi]` bounds for a list of `len` items.
fn py_slice(len: usize, lo: Option<i64>, hi: Option<i64>) -> std::ops::Range<usize> {
    let n = i64::try_from(len).unwrap_or(i64::MAX);
    let clamp = |i: i64| -> usize {
        let i = if i < 0 { (n + i).max(0) } else { i.min(n) };
        usize::try_from(i).unwrap_or(0)
    };
    let (a, b) = (clamp(lo.unwrap_or(0)), clamp(hi.unwrap_or(n)));
    a..b.max(a)
}

/// Up to `density` evenly spaced positions of `0..n` (first and last kept); all when
/// `density <= 0` or `n <= density`.
fn spread(n: usize, density: i64) -> Vec<usize> {
    let d = usize::try_from(density).unwrap_or(0);
    if d == 0 || n <= d {
        return (0..n).collect();
    }
    if d == 1 {
        return vec![0];
    }
    let step = (n - 1) as f64 / (d - 1) as f64;
    let mut out: Vec<usize> = (0..d).map(|i| (i as f64 * step).round() as usize).collect();
    out.dedup();
    out
}

/// The items of one step after index slicing and density, each dumped with its stored index;
/// also the step's item count before slicing.
fn step_items(kind: Kind, v: &Value, window: &Window, site: &Site<'_>) -> (Vec<StreamValue>, usize) {
    let items: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let range = py_slice(items.len(), window.index.0, window.index.1);
    let start = range.start;
    let sliced = &items[range];
    let dumped = spread(sliced.len(), window.index_density)
        .into_iter()
        .map(|i| kind.dump(sliced[i], i64::try_from(start + i).unwrap_or(i64::MAX), site))
        .collect();
    (dumped, items.len())
}

/// The trace of a run named `name` in exactly `context`.
fn find_trace<'a>(traces: &'a [Trace], r: &TraceRef) -> Option<&'a Trace> {
    let ctx_id = context_to_id(&r.context);
    traces.iter().find(|t| t.ctx_id == ctx_id && t.name == r.name)
}

fn int_pair(a: i64, b: i64) -> StreamValue {
    StreamValue::list([StreamValue::Int(a), StreamValue::Int(b)])
}

/// `[first, last + 1]` of a sequence, `[0, 0]` when empty.
fn total_range(bounds: Option<(i64, i64)>) -> (i64, i64) {
    bounds.map_or((0, 0), |(first, last)| (first, last.saturating_add(1)))
}

/// `GET runs/search/{seq}/?q=&skip_system=true&report_progress=true&record_range=&record_density=50
/// &index_range=&index_density=5`: one object per run with at least one matching trace of the
/// type, `{params, traces: [{name, context, values, iters, epochs, timestamps}], props, ranges}`.
async fn search(
    kind: Kind,
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let permit = admit(&state)?;
    offload(permit, move |permit| search_offloaded(kind, state, headers, raw, permit)).await
}

/// [`search`] on its blocking thread (see [`super::heavy`]).
async fn search_offloaded(
    kind: Kind,
    state: AppState,
    headers: HeaderMap,
    raw: Option<String>,
    permit: HeavyPermit,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let query = compile_query(&params, &headers)?;
    let skip_system = params.bool("skip_system", true)?;
    let report_progress = params.bool("report_progress", true)?;
    let window = Window::parse(&params, true)?;
    let plan = plan(&query.expr);
    let mut reader = Reader::open(&state)?;
    preflight(&reader, &query)?;
    // Index candidates are a superset of the matches; every trace is evaluated below.
    let (hashes, _) = candidates(&mut reader, &plan).await?;
    let opts = SearchOpts { kind, skip_system, report_progress, window, uris: state.blobs.uris.clone() };
    Ok(heavy_stream_response(permit, move |out| stream_search(reader, hashes, query, opts, out)))
}

/// The flags of a custom-object search.
#[derive(Debug, Clone)]
struct SearchOpts {
    kind: Kind,
    skip_system: bool,
    report_progress: bool,
    window: Window,
    uris: Arc<UriCodec>,
}

async fn stream_search(
    mut reader: Reader,
    hashes: Vec<String>,
    query: Query,
    opts: SearchOpts,
    out: Out,
) -> Result<(), ApiError> {
    let mut s = Streamer::new(out, opts.report_progress, reader.chunking());
    let total = hashes.len();
    let mut seen = std::collections::HashSet::new();
    let mut emitted = false;
    for (i, hash) in hashes.iter().enumerate() {
        if !seen.insert(hash) {
            continue;
        }
        let Some(object) = per_run!(&mut reader, |r| search_object(r, hash, &query, &opts))? else { continue };
        if emitted {
            s.progress(i, total);
        }
        s.object(hash.as_str(), &object)?;
        emitted = true;
        if !s.flush().await {
            return Ok(());
        }
    }
    s.finish(true).await;
    Ok(())
}

/// The object of one run in a custom-object search, `None` when no trace of it matches.
async fn search_object(
    reader: &mut Reader,
    hash: &str,
    query: &Query,
    opts: &SearchOpts,
) -> Result<Option<StreamValue>, ApiError> {
    let kind = opts.kind;
    let Some(run) = RunData::load(reader, hash, true, true).await? else { return Ok(None) };
    if run.meta.pending_deletion {
        return Ok(None);
    }
    let view = Arc::new(run.view());
    let mut selected: Vec<&Trace> = Vec::new();
    for t in run.traces.iter().filter(|t| bucket_of(&t.dtype) == Some(kind.seq())) {
        if reader.matches(&query.expr, &sequence_scope(&view, kind.seq(), &t.summary()))? {
            selected.push(t);
        }
    }
    if selected.is_empty() {
        return Ok(None);
    }
    let window = opts.window;
    let cols = Columns { epoch: true, time: true };
    let mut rec_total: Option<(i64, i64)> = None;
    let mut max_items = 0usize;
    let mut traces = Vec::with_capacity(selected.len());
    for t in selected {
        let id = SeqId { run: hash, ctx_id: t.ctx_id, name: &t.name };
        if let Some((first, last)) = reader.step_bounds(id).await? {
            rec_total = Some(rec_total.map_or((first, last), |(a, b)| (a.min(first), b.max(last))));
        }
        let points = read_series(reader, id, window.record, window.record_density, cols).await?;
        let mut values = Vec::with_capacity(points.len());
        for p in &points {
            let v = point_value(&p.val);
            let site = Site { uris: &opts.uris, run: hash, ctx_id: t.ctx_id, name: &t.name, step: p.step };
            if kind.is_list() {
                let (items, n) = step_items(kind, &v, &window, &site);
                max_items = max_items.max(n);
                values.push(StreamValue::List(items));
            } else {
                values.push(kind.dump(&v, 0, &site));
            }
        }
        traces.push(StreamValue::dict([
            ("name", StreamValue::from(t.name.as_str())),
            ("context", to_stream(&t.context)),
            ("values", StreamValue::List(values)),
            ("iters", StreamValue::List(points.iter().map(|p| StreamValue::Int(p.step)).collect())),
            (
                "epochs",
                StreamValue::List(points.iter().map(|p| p.epoch.map_or(StreamValue::None, StreamValue::Int)).collect()),
            ),
            (
                "timestamps",
                StreamValue::List(
                    points.iter().map(|p| p.time.map_or(StreamValue::None, StreamValue::Float)).collect(),
                ),
            ),
        ]));
    }
    let (t0, t1) = total_range(rec_total);
    let mut ranges = vec![
        ("record_range_total", int_pair(t0, t1)),
        ("record_range_used", int_pair(window.record.0.unwrap_or(t0), window.record.1.unwrap_or(t1))),
    ];
    if kind.is_list() {
        let n = i64::try_from(max_items.max(1)).unwrap_or(i64::MAX);
        ranges.push(("index_range_total", int_pair(0, n)));
        ranges.push(("index_range_used", int_pair(window.index.0.unwrap_or(0), window.index.1.unwrap_or(n))));
    }
    Ok(Some(StreamValue::dict([
        ("params", params_tree(&run.attrs, opts.skip_system)),
        ("traces", StreamValue::List(traces)),
        ("props", stream_props(&run)),
        ("ranges", StreamValue::dict(ranges)),
    ])))
}

/// Loads the requested traces of a run for get-batch / get-step; 404 when the run has no meta.
async fn requested_traces(
    state: &AppState,
    run_id: &str,
    bytes: &[u8],
) -> Result<(Reader, Vec<(TraceRef, Trace)>), ApiError> {
    let requested: Vec<TraceRef> = body::list(bytes)?;
    let mut reader = Reader::open(state)?;
    if reader.meta(run_id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let traces = reader.traces(run_id).await?;
    let found = requested
        .into_iter()
        .filter_map(|r| {
            let t = find_trace(&traces, &r)?.clone();
            Some((r, t))
        })
        .collect();
    Ok((reader, found))
}

/// The index ranges of a list type's trace view; both `null` for the other types.
fn index_ranges(kind: Kind, window: &Window, items: usize) -> (StreamValue, StreamValue) {
    if !kind.is_list() {
        return (StreamValue::None, StreamValue::None);
    }
    let n = i64::try_from(items).unwrap_or(i64::MAX);
    (int_pair(window.index.0.unwrap_or(0), window.index.1.unwrap_or(n)), int_pair(0, n))
}

/// Encodes each trace view at the root of the stream (no wrapping key).
async fn stream_views(views: Vec<StreamValue>, chunking: Chunking, out: Out) -> Result<(), ApiError> {
    let mut s = Streamer::new(out, false, chunking);
    for view in &views {
        s.at_root(view)?;
        if !s.flush().await {
            return Ok(());
        }
    }
    s.finish(false).await;
    Ok(())
}

/// `POST runs/{run_id}/{seq}/get-batch/?record_range=&record_density=50&index_range=
/// &index_density=5` with `[{name, context}]`: per existing trace, the view `{name, context,
/// values, iters, record_range_used, record_range_total, index_range_used, index_range_total}`.
async fn get_batch(
    kind: Kind,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let window = Window::parse(&Params::parse(raw.as_deref()), true)?;
    let (mut reader, found) = requested_traces(&state, &run_id, &bytes).await?;
    let mut views = Vec::with_capacity(found.len());
    for (r, t) in found {
        let id = SeqId { run: &run_id, ctx_id: t.ctx_id, name: &t.name };
        let bounds = reader.step_bounds(id).await?;
        let points = read_series(&mut reader, id, window.record, window.record_density, Columns::default()).await?;
        let mut max_items = 0usize;
        let values: Vec<StreamValue> = points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let v = point_value(&p.val);
                let site =
                    Site { uris: &state.blobs.uris, run: &run_id, ctx_id: t.ctx_id, name: &t.name, step: p.step };
                if kind.is_list() {
                    let (items, n) = step_items(kind, &v, &window, &site);
                    max_items = max_items.max(n);
                    StreamValue::List(items)
                } else {
                    kind.dump(&v, i64::try_from(i).unwrap_or(i64::MAX), &site)
                }
            })
            .collect();
        views.push(view(kind, &r, values, &points, bounds, &window, max_items.max(1), None));
    }
    let chunking = Chunking::of(&state.config.query);
    Ok(stream_response(move |out| stream_views(views, chunking, out)))
}

/// One trace view; `step` set for get-step (`iters = [step]`, used range `[step, step]`).
#[allow(clippy::too_many_arguments)]
fn view(
    kind: Kind,
    r: &TraceRef,
    values: Vec<StreamValue>,
    points: &[SeqPoint],
    bounds: Option<(i64, i64)>,
    window: &Window,
    items: usize,
    step: Option<i64>,
) -> StreamValue {
    let (t0, t1) = total_range(bounds);
    let (iters, used) = match step {
        Some(s) => (vec![StreamValue::Int(s)], int_pair(s, s)),
        None => (
            points.iter().map(|p| StreamValue::Int(p.step)).collect(),
            match (points.first(), points.last()) {
                (Some(a), Some(b)) => int_pair(a.step, b.step.saturating_add(1)),
                _ => int_pair(0, 0),
            },
        ),
    };
    let (index_used, index_total) = index_ranges(kind, window, items);
    StreamValue::dict([
        ("name", StreamValue::from(r.name.as_str())),
        ("context", StreamValue::from(&r.context)),
        ("values", StreamValue::List(values)),
        ("iters", StreamValue::List(iters)),
        ("record_range_used", used),
        ("record_range_total", int_pair(t0, t1)),
        ("index_range_used", index_used),
        ("index_range_total", index_total),
    ])
}

/// `POST runs/{run_id}/{seq}/get-step/?record_step=-1&index_range=&index_density=5` with
/// `[{name, context}]`: per existing trace having that step (−1: the last), the view of that one
/// step; a missing step or another negative value skips the trace.
async fn get_step(
    kind: Kind,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let record_step = params.int("record_step", -1)?;
    let window = Window::parse(&params, false)?;
    let (mut reader, found) = requested_traces(&state, &run_id, &bytes).await?;
    let mut views = Vec::with_capacity(found.len());
    for (r, t) in found {
        let id = SeqId { run: &run_id, ctx_id: t.ctx_id, name: &t.name };
        let bounds = reader.step_bounds(id).await?;
        let step = match (record_step, bounds) {
            (-1, Some((_, last))) => last,
            (s, _) if s >= 0 => s,
            _ => continue,
        };
        let points =
            read_series(&mut reader, id, (Some(step), Some(step.saturating_add(1))), 0, Columns::default()).await?;
        let Some(point) = points.first() else { continue };
        let v = point_value(&point.val);
        let site = Site { uris: &state.blobs.uris, run: &run_id, ctx_id: t.ctx_id, name: &t.name, step };
        // As the reference does, only a stored list is sliced; a single item is sent as is.
        let (values, n) = match &v {
            Value::Array(_) if kind.is_list() => step_items(kind, &v, &window, &site),
            _ => (vec![kind.dump(&v, 0, &site)], 1),
        };
        views.push(view(kind, &r, values, &points, bounds, &window, n, Some(step)));
    }
    let chunking = Chunking::of(&state.config.query);
    Ok(stream_response(move |out| stream_views(views, chunking, out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_slices_clamp_and_count_from_the_end() {
        assert_eq!(py_slice(3, Some(1), Some(3)), 1..3);
        assert_eq!(py_slice(3, Some(-1), None), 2..3);
        assert_eq!(py_slice(3, Some(5), None), 3..3);
        assert_eq!(py_slice(3, Some(2), Some(1)), 2..2);
        assert_eq!(py_slice(3, None, Some(-10)), 0..0);
    }

    #[test]
    fn spread_keeps_first_and_last() {
        assert_eq!(spread(10, 3), vec![0, 5, 9]);
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
        assert_eq!(spread(4, 0), vec![0, 1, 2, 3]);
        assert_eq!(spread(4, 1), vec![0]);
    }

    const DEV_KEY: &str = "Juw5-cLlemQI2jAWvceOUB3_CrVfBmI99YIzkpGUXR4=";

    fn site(uris: &UriCodec) -> Site<'_> {
        Site { uris, run: "run", ctx_id: 7, name: "samples", step: 4 }
    }

    #[test]
    fn items_keep_their_stored_index_after_slicing() {
        let uris = UriCodec::new(DEV_KEY).unwrap();
        let v = Value::Array((0..5).map(|i| Value::Map(vec![(Value::from("data"), Value::Int(i))])).collect());
        let w = Window { record: (None, None), record_density: 0, index: (Some(1), Some(5)), index_density: 2 };
        let (items, n) = step_items(Kind::Texts, &v, &w, &site(&uris));
        assert_eq!(n, 5);
        let idx: Vec<_> = items.iter().map(|i| i.get("index").cloned()).collect();
        assert_eq!(idx, vec![Some(StreamValue::Int(1)), Some(StreamValue::Int(4))]);
    }

    #[test]
    fn image_and_audio_uris_carry_the_stored_index_after_slicing_fixing_quirk_3() {
        let uris = UriCodec::new(DEV_KEY).unwrap();
        let v = Value::Array((0..5).map(|i| Value::Map(vec![(Value::from("caption"), Value::Int(i))])).collect());
        let w = Window { record: (None, None), record_density: 0, index: (Some(1), Some(5)), index_density: 2 };
        for kind in [Kind::Images, Kind::Audios] {
            let (items, _) = step_items(kind, &v, &w, &site(&uris));
            for (item, stored) in items.iter().zip([1, 4]) {
                assert_eq!(item.get("index"), Some(&StreamValue::Int(stored)));
                assert_eq!(item.get("caption"), Some(&StreamValue::Int(stored)));
                let Some(StreamValue::Str(token)) = item.get("blob_uri") else { panic!("{item:?}") };
                let uri = uris.decode(token).unwrap();
                let expected = BlobUri { run: "run".into(), ctx_id: 7, seq: "samples".into(), step: 4, index: stored };
                assert_eq!(uri, expected);
            }
        }
    }

    #[test]
    fn image_and_audio_dumps_use_the_references_defaults() {
        let uris = UriCodec::new(DEV_KEY).unwrap();
        let keys = |v: &StreamValue| match v {
            StreamValue::Dict(entries) => entries.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let image = Kind::Images.dump(&Value::Nil, 0, &site(&uris));
        assert_eq!(keys(&image), ["caption", "width", "height", "format", "blob_uri", "index"]);
        assert_eq!(image.get("format"), Some(&StreamValue::from("png")));
        assert_eq!(image.get("width"), Some(&StreamValue::Int(0)));
        let audio = Kind::Audios.dump(&Value::Map(vec![]), 2, &site(&uris));
        assert_eq!(keys(&audio), ["caption", "format", "blob_uri", "index"]);
        assert_eq!(audio.get("format"), Some(&StreamValue::from("wav")));
        assert_eq!(audio.get("caption"), Some(&StreamValue::from("")));
        let stored = Value::Map(vec![
            (Value::from("s3_key"), Value::from("run/seq/samples/4.jpeg")),
            (Value::from("caption"), Value::from("a cat")),
            (Value::from("width"), Value::Int(32)),
            (Value::from("height"), Value::Int(16)),
            (Value::from("format"), Value::from("jpeg")),
        ]);
        let image = Kind::Images.dump(&stored, 0, &site(&uris));
        assert_eq!(image.get("caption"), Some(&StreamValue::from("a cat")));
        assert_eq!(image.get("height"), Some(&StreamValue::Int(16)));
        assert_eq!(image.get("format"), Some(&StreamValue::from("jpeg")));
        assert!(image.get("s3_key").is_none(), "the store's key stays on the server");
    }

    #[test]
    fn dumps_follow_the_table_of_section_4_8() {
        let uris = UriCodec::new(DEV_KEY).unwrap();
        let site = site(&uris);
        let d = Value::Map(vec![
            (Value::from("data"), Value::Array(vec![Value::Float(1.0), Value::Float(2.0)])),
            (Value::from("bin_count"), Value::Int(2)),
            (Value::from("range"), Value::Array(vec![Value::Int(0), Value::Int(4)])),
        ]);
        let dumped = Kind::Distributions.dump(&d, 0, &site);
        assert_eq!(dumped.get("data"), Some(&StreamValue::from(Float64Array::from_values(&[1.0, 2.0]))));
        assert_eq!(dumped.get("bin_count"), Some(&StreamValue::Int(2)));
        let f = Value::Map(vec![(Value::from("data"), Value::Map(vec![(Value::from("a"), Value::Int(1))]))]);
        assert_eq!(Kind::Figures.dump(&f, 0, &site).get("data"), Some(&StreamValue::from(r#"{"a":1}"#)));
        assert_eq!(Kind::Texts.dump(&Value::from("x"), 3, &site).get("data"), Some(&StreamValue::from("x")));
        assert_eq!(Kind::Texts.dump(&Value::Nil, 0, &site).get("data"), Some(&StreamValue::from("")));
    }
}
