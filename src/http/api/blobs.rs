//! `POST runs/images/get-batch/` and `POST runs/audios/get-batch/` (spec `api.md` §7.2): the bytes
//! behind the blob URIs of image and audio items.
//!
//! The body is a JSON array of URIs. For each, in request order, the stream carries one record
//! keyed by the URI with the blob's bytes as a bytes value. A URI that does not decrypt or parse is
//! skipped; one that decodes but points to nothing (no such step, index out of range, an item
//! without `s3_key`) gets empty bytes. Both routes serve any URI, as the reference's do.
//!
//! The object keys are resolved first, in the request's snapshot and before the answer starts (a
//! storage error is an ordinary error answer, and a slow blob store cannot age the transaction);
//! the blobs are then fetched and streamed one by one. Deliberate deviation from the reference: an
//! object missing from the store (an upload that never completed) or a key the store refuses gets
//! empty bytes, like a URI that points to nothing, instead of aborting the whole batch; only a
//! failing store aborts the stream.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;

use crate::app::AppState;
use crate::blobs::{BlobError, BlobUri, Blobs};
use crate::http::stream::StreamValue;
use crate::storage::layout::{Columns, SeqId};
use crate::storage::value::Value;

use super::read::Reader;
use super::runs::{point_value, read_series};
use super::streaming::{Chunking, Out, Streamer, stream_response};
use super::{ApiError, body};

/// One requested URI and the object key it resolved to (`None`: it points to nothing).
type Resolved = (String, Option<String>);

/// `POST runs/{images,audios}/get-batch/` with `["<blob_uri>", ...]`.
pub async fn blob_batch(State(state): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let tokens: Vec<String> = body::list(&bytes)?;
    let mut reader = Reader::open(&state)?;
    let mut steps: HashMap<(String, u32, String, i64), Option<Value>> = HashMap::new();
    let mut resolved: Vec<Resolved> = Vec::with_capacity(tokens.len());
    for token in tokens {
        let uri = match state.blobs.uris.decode(&token) {
            Ok(uri) => uri,
            Err(e) => {
                tracing::debug!(error = %e, "blob uri skipped");
                continue;
            }
        };
        let at = (uri.run.clone(), uri.ctx_id, uri.seq.clone(), uri.step);
        let value = match steps.get(&at) {
            Some(v) => v.clone(),
            None => {
                let v = step_value(&mut reader, &uri).await?;
                steps.insert(at, v.clone());
                v
            }
        };
        let key = value.as_ref().and_then(|v| object_key(v, uri.index));
        resolved.push((token, key));
    }
    let blobs = state.blobs.clone();
    let chunking = Chunking::of(&state.config.query);
    Ok(stream_response(move |out| stream_blobs(blobs, resolved, chunking, out)))
}

/// The stored value of the URI's step, `None` when the step does not exist.
async fn step_value(reader: &mut Reader, uri: &BlobUri) -> Result<Option<Value>, ApiError> {
    let id = SeqId { run: &uri.run, ctx_id: uri.ctx_id, name: &uri.seq };
    let points =
        read_series(reader, id, (Some(uri.step), Some(uri.step.saturating_add(1))), 0, Columns::default()).await?;
    Ok(points.first().map(|p| point_value(&p.val)))
}

/// The `s3_key` of the item at `index` of a stored step: of the list's item when the step holds a
/// list, of the value itself otherwise (whatever the index, as the reference reads it). `None`
/// when the index is out of range or the item has no non-empty string `s3_key`.
fn object_key(value: &Value, index: i64) -> Option<String> {
    let item = match value {
        Value::Array(items) => items.get(usize::try_from(index).ok()?)?,
        other => other,
    };
    match item.get("s3_key") {
        Some(Value::Str(key)) if !key.is_empty() => Some(key.clone()),
        _ => None,
    }
}

/// Fetches and sends each blob in order; a failing store aborts the stream.
async fn stream_blobs(blobs: Blobs, resolved: Vec<Resolved>, chunking: Chunking, out: Out) -> Result<(), ApiError> {
    let mut s = Streamer::new(out, false, chunking);
    for (token, key) in resolved {
        let bytes = match key {
            None => Vec::new(),
            Some(key) => match blobs.store.get(&key).await {
                Ok(blob) => blob.bytes,
                Err(e @ (BlobError::NotFound { .. } | BlobError::InvalidKey { .. })) => {
                    tracing::warn!(error = %e, "blob uri points to no object");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!(error = %e, "blob store failed, stream aborted");
                    s.abort("blob store failed").await;
                    return Ok(());
                }
            },
        };
        s.object(token.as_str(), &StreamValue::Bytes(bytes))?;
        if !s.flush().await {
            return Ok(());
        }
    }
    s.finish(false).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: Option<Value>) -> Value {
        let mut entries = vec![(Value::from("caption"), Value::from("c"))];
        if let Some(k) = key {
            entries.push((Value::from("s3_key"), k));
        }
        Value::Map(entries)
    }

    #[test]
    fn object_keys_come_from_the_indexed_item_or_nothing() {
        let list = Value::Array(vec![item(Some("r/0.png".into())), item(Some("r/1.png".into())), item(None)]);
        assert_eq!(object_key(&list, 0).as_deref(), Some("r/0.png"));
        assert_eq!(object_key(&list, 1).as_deref(), Some("r/1.png"));
        assert_eq!(object_key(&list, 2), None, "no s3_key");
        assert_eq!(object_key(&list, 3), None, "out of range");
        assert_eq!(object_key(&list, -1), None, "negative");
        let single = item(Some("r/seq/a/0.wav".into()));
        assert_eq!(object_key(&single, 0).as_deref(), Some("r/seq/a/0.wav"));
        assert_eq!(object_key(&single, 5).as_deref(), Some("r/seq/a/0.wav"), "a single item ignores the index");
        assert_eq!(object_key(&item(Some("".into())), 0), None, "empty key");
        assert_eq!(object_key(&item(Some(Value::Int(3))), 0), None, "not a string");
        assert_eq!(object_key(&Value::from("text"), 0), None);
    }
}
