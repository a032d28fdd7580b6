//! `POST runs/search/metric/align/` (spec `api.md` §4.3): the values of an `align_by` metric as a
//! custom x-axis for the requested traces.
//!
//! Deliberate deviation (§10 item 8): the UI matches the answer by position (n-th run, m-th
//! trace), so instead of omitting a missing run or trace, which shifts every later entry onto the
//! wrong series, the answer keeps one entry per requested run and trace, in request order, with
//! empty x-axis arrays where there is nothing to align by.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;

use crate::app::AppState;
use crate::http::stream::{Float64Array, StreamValue};
use crate::storage::context_id::context_to_id;
use crate::storage::layout::{Columns, SeqId};

use super::heavy::admit;
use super::read::{Reader, Trace, per_run};
use super::runs::{point_value, read_series};
use super::shape::number;
use super::streaming::{Out, Streamer, heavy_stream_response};
use super::{ApiError, body};

/// The request body.
#[derive(Debug, serde::Deserialize)]
struct AlignRequest {
    align_by: String,
    runs: Vec<AlignRun>,
}

/// One requested run.
#[derive(Debug, serde::Deserialize)]
struct AlignRun {
    run_id: String,
    traces: Vec<AlignTrace>,
}

/// One requested trace; `slice` is `[start, stop, step]`.
#[derive(Debug, serde::Deserialize)]
struct AlignTrace {
    name: String,
    context: serde_json::Value,
    slice: [i64; 3],
}

/// `POST runs/search/metric/align/` with `{align_by, runs: [{run_id, traces: [{name, context,
/// slice}]}]}`: per run, `<run_id>: [{name, context, x_axis_values, x_axis_iters}, ...]`. The
/// align-by series is read whole from the first step up to and including `slice[1]` when
/// `slice[1] > 0` (no sampling). No progress frames.
pub async fn align(State(state): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let request: AlignRequest = body::object(&bytes)?;
    // Reads whole series of many runs: a heavy request (see `heavy.rs`).
    let permit = admit(&state)?;
    let reader = Reader::open(&state)?;
    Ok(heavy_stream_response(permit, move |out| stream_align(reader, request, out)))
}

async fn stream_align(mut reader: Reader, request: AlignRequest, out: Out) -> Result<(), ApiError> {
    let mut s = Streamer::new(out, false, reader.chunking());
    for run in &request.runs {
        let entries = per_run!(&mut reader, |r| align_run(r, run, &request.align_by))?;
        s.object(run.run_id.as_str(), &StreamValue::List(entries))?;
        if !s.flush().await {
            return Ok(());
        }
    }
    s.finish(false).await;
    Ok(())
}

/// The entries of one requested run, read from one snapshot.
async fn align_run(reader: &mut Reader, run: &AlignRun, align_by: &str) -> Result<Vec<StreamValue>, ApiError> {
    let meta = reader.meta(&run.run_id).await?;
    let traces: Vec<Trace> = match meta {
        Some(m) if !m.pending_deletion => reader.traces(&run.run_id).await?,
        _ => Vec::new(),
    };
    let mut entries = Vec::with_capacity(run.traces.len());
    for requested in &run.traces {
        let ctx_id = context_to_id(&requested.context);
        let has = |name: &str| traces.iter().any(|t| t.ctx_id == ctx_id && t.name == name);
        let (values, iters) = if has(&requested.name) && has(align_by) {
            let id = SeqId { run: &run.run_id, ctx_id, name: align_by };
            let stop = requested.slice[1];
            let range = (None, (stop > 0).then(|| stop.saturating_add(1)));
            let points = read_series(reader, id, range, 0, Columns::default()).await?;
            let values: Float64Array = points.iter().map(|p| number(&point_value(&p.val))).collect();
            let iters: Float64Array = points.iter().map(|p| p.step as f64).collect();
            (values, iters)
        } else {
            (Float64Array::new(), Float64Array::new())
        };
        entries.push(StreamValue::dict([
            ("name", StreamValue::from(requested.name.as_str())),
            ("context", StreamValue::from(&requested.context)),
            ("x_axis_values", StreamValue::from(values)),
            ("x_axis_iters", StreamValue::from(iters)),
        ]));
    }
    Ok(entries)
}
