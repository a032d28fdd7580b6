//! `GET runs/{id}/artifacts/download/?path=` and `GET runs/{id}/artifacts/download-all/` (spec
//! `api.md` §7.3): the files a run recorded under its `__blobs__` attribute (minus the `seq/`
//! blobs of images and audios), one by one or as a ZIP.
//!
//! Both stream: a download sends the object's chunks as the store yields them, and the archive
//! is written member by member while the objects are read ([`crate::blobs::zip`]), so neither
//! holds an artifact whole. Deliberate deviations from the reference, which answers a missing
//! object with a 500 (an unhandled `NoSuchKey`) and breaks the archive mid-stream: a download of
//! an artifact whose object is missing is a 404 naming the object, and the archive leaves such a
//! member out (logged) and stays a valid ZIP; only a failing store aborts it.

use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::blobs::zip::ZipStream;
use crate::blobs::{BlobError, BlobStore, DEFAULT_CONTENT_TYPE};
use crate::storage::value::Value;

use super::ApiError;
use super::params::Params;
use super::read::{Reader, per_run};

/// Chunks of the archive in flight between its writer and the connection.
const ZIP_CHANNEL_CHUNKS: usize = 8;

/// One file artifact of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The artifact path (the member name in the archive).
    pub path: String,
    /// The object key, `None` when the entry has no non-empty `s3_key`.
    pub key: Option<String>,
    /// The recorded content type.
    pub content_type: String,
}

/// The file artifacts of a run's attributes: the `__blobs__` entries whose path does not start
/// with `seq/`, in stored order.
pub fn artifacts(attrs: &Value) -> Vec<Artifact> {
    let Some(Value::Map(blobs)) = attrs.get("__blobs__") else { return Vec::new() };
    blobs
        .iter()
        .filter_map(|(path, meta)| {
            let path = path.as_str()?;
            if path.starts_with("seq/") || !matches!(meta, Value::Map(_)) {
                return None;
            }
            let key = meta.get("s3_key").and_then(Value::as_str).filter(|k| !k.is_empty()).map(str::to_owned);
            let content_type = meta
                .get("content_type")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .unwrap_or(DEFAULT_CONTENT_TYPE)
                .to_owned();
            Some(Artifact { path: path.to_owned(), key, content_type })
        })
        .collect()
}

/// The artifacts of `run_id`, 404 when the run has no meta.
async fn run_artifacts(state: &AppState, run_id: &str) -> Result<Vec<Artifact>, ApiError> {
    let mut reader = Reader::open(state)?;
    let attrs = per_run!(&mut reader, |r| async {
        match r.meta(run_id).await? {
            None => Ok(None),
            Some(_) => r.attrs(run_id).await.map(Some),
        }
    })?
    .ok_or(ApiError::NotFound)?;
    Ok(artifacts(&attrs))
}

/// `Content-Disposition: attachment; filename="<name>"`, with the characters that would end or
/// break the quoted string replaced.
fn attachment(name: &str) -> HeaderValue {
    let safe: String =
        name.chars().map(|c| if c == '"' || c == '\\' || c.is_control() || !c.is_ascii() { '_' } else { c }).collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// `GET runs/{run_id}/artifacts/download/?path=`: the artifact's bytes with its content type.
pub async fn download(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref());
    let Some(path) = params.str("path") else {
        return Err(ApiError::Validation("query parameter `path` is required".to_owned()));
    };
    let artifact =
        run_artifacts(&state, &run_id).await?.into_iter().find(|a| a.path == path).ok_or(ApiError::NotFound)?;
    let Some(key) = artifact.key else {
        return Err(ApiError::Blob(BlobError::NotFound { key: format!("(none recorded for {path:?})") }));
    };
    let reader = state.blobs.store.open(&key).await?;
    let name = artifact.path.rsplit('/').next().unwrap_or(&artifact.path);
    let mut response = Body::from_stream(reader.body).into_response();
    let headers = response.headers_mut();
    let content_type = HeaderValue::from_str(&artifact.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_DISPOSITION, attachment(name));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(reader.meta.size));
    Ok(response)
}

/// `GET runs/{run_id}/artifacts/download-all/`: every artifact in one streamed ZIP64 archive;
/// 404 when the run does not exist or has no artifacts.
pub async fn download_all(State(state): State<AppState>, Path(run_id): Path<String>) -> Result<Response, ApiError> {
    let artifacts = run_artifacts(&state, &run_id).await?;
    if artifacts.is_empty() {
        return Err(ApiError::NotFound);
    }
    let (tx, rx) = mpsc::channel(ZIP_CHANNEL_CHUNKS);
    tokio::spawn(write_zip(state.blobs.store.clone(), artifacts, tx));
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    headers.insert(header::CONTENT_DISPOSITION, attachment(&format!("{run_id}-artifacts.zip")));
    Ok(response)
}

type Chunk = Result<Bytes, std::io::Error>;

/// Writes the archive of `artifacts` into `tx`, stopping when the client goes away; a failing
/// store sends an error, which aborts the response.
async fn write_zip(store: std::sync::Arc<dyn BlobStore>, artifacts: Vec<Artifact>, tx: mpsc::Sender<Chunk>) {
    let send = |bytes: Vec<u8>| tx.send(Ok(Bytes::from(bytes)));
    let mut zip = ZipStream::new(SystemTime::now());
    for artifact in artifacts {
        let opened = match &artifact.key {
            Some(key) => store.open(key).await,
            None => Err(BlobError::NotFound { key: String::new() }),
        };
        let mut reader = match opened {
            Ok(reader) => reader,
            Err(e @ (BlobError::NotFound { .. } | BlobError::InvalidKey { .. })) => {
                tracing::warn!(error = %e, path = %artifact.path, "artifact left out of the archive: no object");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "blob store failed, archive aborted");
                let _ = tx.send(Err(std::io::Error::other(e))).await;
                return;
            }
        };
        if send(zip.start_member(&artifact.path)).await.is_err() {
            return;
        }
        while let Some(chunk) = reader.body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::error!(error = %e, "blob store failed mid-object, archive aborted");
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            };
            zip.member_data(&chunk);
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    }
    let _ = send(zip.finish()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_the_blobs_outside_seq_with_their_keys_and_types() {
        let entry = |key: Option<&str>, ty: Option<&str>| {
            let mut e = Vec::new();
            if let Some(k) = key {
                e.push((Value::from("s3_key"), Value::from(k)));
            }
            if let Some(t) = ty {
                e.push((Value::from("content_type"), Value::from(t)));
            }
            Value::Map(e)
        };
        let attrs = Value::Map(vec![(
            Value::from("__blobs__"),
            Value::Map(vec![
                (Value::from("ckpt/model.pt"), entry(Some("r/ckpt/model.pt"), Some("application/x-torch"))),
                (Value::from("seq/images/0.png"), entry(Some("r/seq/images/0.png"), Some("image/png"))),
                (Value::from("notes.txt"), entry(Some(""), None)),
                (Value::from("odd"), Value::from("not a map")),
            ]),
        )]);
        assert_eq!(
            artifacts(&attrs),
            vec![
                Artifact {
                    path: "ckpt/model.pt".into(),
                    key: Some("r/ckpt/model.pt".into()),
                    content_type: "application/x-torch".into()
                },
                Artifact { path: "notes.txt".into(), key: None, content_type: DEFAULT_CONTENT_TYPE.into() },
            ]
        );
        assert!(artifacts(&Value::Map(Vec::new())).is_empty());
    }

    #[test]
    fn attachment_names_cannot_break_the_header() {
        assert_eq!(attachment("model.pt"), "attachment; filename=\"model.pt\"");
        assert_eq!(attachment("a\"b\\c\r\nd"), "attachment; filename=\"a_b_c__d\"");
        assert_eq!(attachment("é.txt"), "attachment; filename=\"_.txt\"");
    }
}
