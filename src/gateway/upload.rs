//! Blob uploads of the SDK: `POST /api/v1/rest/artifacts/presign` hands out a signed, expiring
//! upload URL, and `PUT /api/v1/rest/artifacts/upload/?…` (this gateway's own presigned URL, for
//! the local blob store) checks it and writes the blob store.
//!
//! The SDK asks for `{run_id, artifact_path, content_type}`, receives `{upload_url, s3_key,
//! headers}`, `PUT`s the bytes with `Content-Type: content_type`, and then sends a `blob_ref`
//! message over its WebSocket (`clients.md` §1). The key is `{run_id}/{artifact_path}` as the
//! reference makes it, checked with [`crate::blobs::check_key`] before it is signed, so no `..` or
//! absolute path ever reaches a store.
//!
//! With the S3 store the URL is S3's own presigned `PutObject` URL, signed (SigV4, content type
//! included) against `blobs.s3_public_endpoint` when set, else `blobs.s3_endpoint`, as the
//! reference's frontier signs it; the bytes then go to S3 directly. With the local store, this
//! gateway's URL is signed like an S3 presigned PUT: HMAC-SHA256 over the key, the expiry and the
//! content type, keyed by a key derived from `blobs.uri_secret` (so every process sharing that
//! secret accepts the others' URLs). The `PUT` must carry the signed content type, arrive before the
//! expiry and stay under `gateway.max_upload_bytes`; otherwise it is refused and nothing is
//! written.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::blobs::{BlobError, check_key};
use crate::ingest::message::MAX_KEY_PART_BYTES;

use super::Gateway;

/// The path of the upload route (the presigned URLs point at it).
pub const UPLOAD_PATH: &str = "/api/v1/rest/artifacts/upload/";

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks upload URLs.
#[derive(Clone)]
pub struct UploadSigner {
    key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for UploadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadSigner(<redacted>)")
    }
}

impl UploadSigner {
    /// A signer keyed by a key derived from `secret` (domain-separated from its other uses).
    pub fn new(secret: &str) -> Self {
        let digest =
            Sha256::new().chain_update(b"matyan-rs upload url v1\0").chain_update(secret.as_bytes()).finalize();
        Self { key: Arc::new(digest.into()) }
    }

    fn mac(&self, key: &str, expires: u64, content_type: &str) -> HmacSha256 {
        // Infallible: HMAC takes keys of any length.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key[..]).expect("hmac accepts any key length");
        for part in [key.as_bytes(), b"\n", expires.to_string().as_bytes(), b"\n", content_type.as_bytes()] {
            mac.update(part);
        }
        mac
    }

    /// The hex signature of an upload of `key` with `content_type`, valid until `expires`.
    pub fn sign(&self, key: &str, expires: u64, content_type: &str) -> String {
        hex::encode(self.mac(key, expires, content_type).finalize().into_bytes())
    }

    /// Whether `signature` is this signer's for these fields (constant-time comparison).
    pub fn verify(&self, key: &str, expires: u64, content_type: &str, signature: &str) -> bool {
        let Ok(bytes) = hex::decode(signature) else { return false };
        self.mac(key, expires, content_type).verify_slice(&bytes).is_ok()
    }
}

/// A gateway error in FastAPI's shape (`{"detail": …}`), as the reference gateway answers.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    detail: String,
    reason: &'static str,
}

impl Refusal {
    pub(super) fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Self { status, detail: detail.into(), reason }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        crate::metrics::gateway_rejected(self.reason);
        let mut response = (self.status, axum::Json(json!({"detail": self.detail}))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// The body of a presign request.
#[derive(Debug, Deserialize)]
struct PresignRequest {
    run_id: String,
    artifact_path: String,
    #[serde(default = "octet_stream")]
    content_type: String,
}

fn octet_stream() -> String {
    "application/octet-stream".to_owned()
}

/// `POST /api/v1/rest/artifacts/presign/`: `{"upload_url","s3_key","headers":null}`.
pub async fn presign(State(gw): State<Gateway>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    match presign_answer(&gw, &headers, &body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn presign_answer(gw: &Gateway, headers: &HeaderMap, body: &[u8]) -> Result<serde_json::Value, Refusal> {
    let unprocessable = |detail: String| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_presign", detail);
    let req: PresignRequest =
        serde_json::from_slice(body).map_err(|e| unprocessable(format!("invalid request body: {e}")))?;
    if req.run_id.is_empty() || req.run_id.contains('/') || req.run_id.len() > MAX_KEY_PART_BYTES {
        return Err(unprocessable(format!(
            "run_id must be 1 to {MAX_KEY_PART_BYTES} bytes without `/`, got {} bytes",
            req.run_id.len()
        )));
    }
    if req.artifact_path.len() > MAX_KEY_PART_BYTES {
        return Err(unprocessable(format!("artifact_path is longer than {MAX_KEY_PART_BYTES} bytes")));
    }
    if req.content_type.len() > 255 || req.content_type.chars().any(char::is_control) {
        return Err(unprocessable("content_type must be at most 255 bytes without control characters".to_owned()));
    }
    let key = format!("{}/{}", req.run_id, req.artifact_path);
    check_key(&key).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "invalid_key", e.to_string()))?;
    // A store with its own presigned URLs (S3, on blobs.s3_public_endpoint) takes the upload
    // directly, as the reference's frontier hands out; the local store gets this gateway's route.
    let expiry = gw.config().upload_expiry();
    match gw.blobs().presign_put(&key, &req.content_type, expiry).await {
        Ok(Some(upload_url)) => return Ok(json!({"upload_url": upload_url, "s3_key": key, "headers": null})),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "upload url could not be presigned");
            return Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "presign_failed",
                "the upload URL could not be made",
            ));
        }
    }
    let base = match gw.config().public_url.trim() {
        "" => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty() && h.bytes().all(|c| c.is_ascii_graphic()))
                .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "no_host", "the request has no Host header"))?;
            format!("http://{host}")
        }
        url => url.trim_end_matches('/').to_owned(),
    };
    let expires = unix_now() + gw.config().upload_expiry_secs;
    let signature = gw.signer().sign(&key, expires, &req.content_type);
    let upload_url = format!(
        "{base}{UPLOAD_PATH}?key={}&expires={expires}&content_type={}&signature={signature}",
        percent_encode(&key),
        percent_encode(&req.content_type)
    );
    Ok(json!({"upload_url": upload_url, "s3_key": key, "headers": null}))
}

/// The query of an upload URL.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    key: String,
    expires: u64,
    content_type: String,
    signature: String,
}

/// `PUT /api/v1/rest/artifacts/upload/?key&expires&content_type&signature`: stores the body as the
/// blob `key`; 200 with an empty body, as S3 answers.
pub async fn upload(
    State(gw): State<Gateway>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Refusal> {
    if !gw.signer().verify(&q.key, q.expires, &q.content_type, &q.signature) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, "bad_signature", "the upload URL's signature does not match"));
    }
    if unix_now() > q.expires {
        return Err(Refusal::new(StatusCode::FORBIDDEN, "expired", "the upload URL has expired"));
    }
    let sent_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if sent_type != q.content_type {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "content_type_mismatch",
            format!("Content-Type {sent_type:?} is not the presigned {:?}", q.content_type),
        ));
    }
    let cap = gw.config().max_upload_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || {
        Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "upload_too_large", format!("uploads are limited to {cap} bytes"))
    };
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let Ok(_permit) = gw.uploads().try_acquire_owned() else {
        return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_uploads", "too many uploads at once"));
    };
    let bytes = axum::body::to_bytes(body, cap).await.map_err(|_| too_large())?;
    let size = bytes.len();
    // The signed content type is kept with the object, for the artifact downloads.
    gw.blobs().put(&q.key, bytes.to_vec(), Some(&q.content_type)).await.map_err(|e| match e {
        BlobError::InvalidKey { .. } => Refusal::new(StatusCode::BAD_REQUEST, "invalid_key", e.to_string()),
        e => {
            tracing::warn!(error = %e, "blob upload could not be stored");
            Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "store_failed", "the blob could not be stored")
        }
    })?;
    crate::metrics::gateway_upload(size);
    Ok(StatusCode::OK)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_the_key_the_expiry_and_the_content_type() {
        let signer = UploadSigner::new("secret");
        let sig = signer.sign("run/a.png", 100, "image/png");
        assert!(signer.verify("run/a.png", 100, "image/png", &sig));
        assert!(!signer.verify("run/b.png", 100, "image/png", &sig));
        assert!(!signer.verify("run/a.png", 101, "image/png", &sig));
        assert!(!signer.verify("run/a.png", 100, "text/plain", &sig));
        assert!(!signer.verify("run/a.png", 100, "image/png", "zz"));
        assert!(!UploadSigner::new("other").verify("run/a.png", 100, "image/png", &sig));
    }

    #[test]
    fn keys_and_content_types_are_percent_encoded() {
        assert_eq!(percent_encode("r/seq/my img/0.png"), "r%2Fseq%2Fmy%20img%2F0.png");
        assert_eq!(percent_encode("image/png; q=1"), "image%2Fpng%3B%20q%3D1");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
