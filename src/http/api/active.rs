//! `GET runs/active/` (spec `api.md` §4.4): every run the `active` index lists, with the last value
//! of each of its traces and its props, for the home dashboard.

use axum::extract::{RawQuery, State};
use axum::response::Response;

use crate::app::AppState;
use crate::http::stream::StreamValue;
use crate::query::plan::{IndexExpr, IndexPred};

use super::ApiError;
use super::heavy::admit;
use super::params::Params;
use super::read::{Reader, RunData, per_run};
use super::shape::{stream_props, to_stream};
use super::streaming::{Out, Streamer, heavy_stream_response};

/// `GET runs/active/?report_progress=true`: `<hash>: {traces: {metric: [{name, context, values:
/// {last, last_step}}]}, props}` per active run (every trace, custom objects and logs included, as
/// the reference lists them), in storage order, with `progress_k = [i, total]` after each run and
/// no initial or final frame. Runs pending deletion, and runs whose meta no longer says active
/// (a stale index entry), are skipped.
pub async fn active_runs(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let report_progress = Params::parse(raw.as_deref()).bool("report_progress", true)?;
    // Reads every active run, run by run: a heavy request (see `heavy.rs`).
    let permit = admit(&state)?;
    let mut reader = Reader::open(&state)?;
    let hashes = reader.candidates(&IndexExpr::Pred(IndexPred::Active(true))).await?;
    Ok(heavy_stream_response(permit, move |out| stream_active(reader, hashes, report_progress, out)))
}

async fn stream_active(
    mut reader: Reader,
    hashes: Vec<String>,
    report_progress: bool,
    out: Out,
) -> Result<(), ApiError> {
    let mut s = Streamer::new(out, report_progress, reader.chunking());
    let total = hashes.len();
    for (i, hash) in hashes.iter().enumerate() {
        let run = per_run!(&mut reader, |r| RunData::load(r, hash, false, true))?;
        if let Some(run) = run.filter(|r| r.meta.active && !r.meta.pending_deletion) {
            s.object(hash.as_str(), &active_object(&run))?;
        }
        s.progress(i + 1, total);
        if !s.flush().await {
            return Ok(());
        }
    }
    // No final frame here (§4.4).
    s.finish(false).await;
    Ok(())
}

/// The object of one active run: every trace's last value, and the props.
fn active_object(run: &RunData) -> StreamValue {
    let traces: Vec<StreamValue> = run
        .traces
        .iter()
        .map(|t| {
            StreamValue::dict([
                ("name", StreamValue::from(t.name.as_str())),
                ("context", to_stream(&t.context)),
                ("values", StreamValue::dict([("last", to_stream(&t.last)), ("last_step", to_stream(&t.last_step))])),
            ])
        })
        .collect();
    StreamValue::dict([
        ("traces", StreamValue::dict([("metric", StreamValue::List(traces))])),
        ("props", stream_props(run)),
    ])
}
