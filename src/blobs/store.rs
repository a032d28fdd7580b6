//! The blob store interface: where the bytes of images, audios and artifacts live, by object key
//! (`{run}/seq/{name}/{step}.{format}`, `{run}/{artifact path}`; `ingest-storage.md` §4).
//!
//! [`BlobStore`] is async and object-safe; `local.rs` (a directory, for `matyan serve`) and
//! `s3.rs` (any S3-compatible service) implement it, and `tests/blob_conformance.rs` holds both to
//! the same behaviour. Keys are S3-style, `/`-separated and opaque to the store, and are checked
//! with [`check_key`] before any store sees them.

use std::path::{Component, Path};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use thiserror::Error;

/// The content type of an object stored without one (S3's default too).
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Why a blob operation failed.
#[derive(Debug, Error)]
pub enum BlobError {
    /// No object has this key.
    #[error("blob {key:?} not found")]
    NotFound { key: String },
    /// The key cannot name an object of this store (empty, absolute, `.` or `..` components).
    #[error("blob key {key:?} is invalid: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A listing page or delete batch outside the sizes every store accepts.
    #[error("{n} {what} is outside 1..={max}")]
    Count { what: &'static str, n: usize, max: usize },
    /// The store failed.
    #[error("blob {key:?}: {source}")]
    Io { key: String, source: std::io::Error },
    /// A remote store answered with an error or could not be reached; `retryable` when trying
    /// again may succeed (a 5xx, throttling, a timeout, a refused connection), not when the
    /// request itself is wrong (refused credentials, a missing bucket).
    #[error("blob {key:?}: {operation} failed: {message}")]
    Remote { key: String, operation: &'static str, message: String, retryable: bool },
}

impl BlobError {
    /// Whether trying again may succeed (a failing store, not a missing object or a bad key).
    pub fn is_retryable(&self) -> bool {
        match self {
            BlobError::Io { .. } => true,
            BlobError::Remote { retryable, .. } => *retryable,
            BlobError::NotFound { .. } | BlobError::InvalidKey { .. } | BlobError::Count { .. } => false,
        }
    }
}

/// An object's bytes and content type, as [`BlobStore::get`] returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The object's bytes.
    pub bytes: Vec<u8>,
    /// The content type it was stored with ([`DEFAULT_CONTENT_TYPE`] when none was given).
    pub content_type: String,
}

/// What [`BlobStore::head`] tells of an object without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's size in bytes.
    pub size: u64,
    /// The content type it was stored with ([`DEFAULT_CONTENT_TYPE`] when none was given).
    pub content_type: String,
}

/// An object opened for streaming: its size and content type, and its bytes in chunks, so a
/// large artifact is sent without being held whole.
pub struct BlobReader {
    /// What the object is.
    pub meta: ObjectMeta,
    /// The bytes, in order; an error ends the stream.
    pub body: BoxStream<'static, Result<Bytes, BlobError>>,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader").field("meta", &self.meta).finish_non_exhaustive()
    }
}

/// An object store keyed by strings. Implementations are shared between requests.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// The bytes and content type of the object `key`.
    async fn get(&self, key: &str) -> Result<Blob, BlobError>;

    /// The size and content type of the object `key`, without its bytes.
    async fn head(&self, key: &str) -> Result<ObjectMeta, BlobError>;

    /// The object `key` as a stream of chunks (artifact downloads).
    async fn open(&self, key: &str) -> Result<BlobReader, BlobError>;

    /// Stores `bytes` as the object `key` with `content_type` ([`DEFAULT_CONTENT_TYPE`] when
    /// `None`; an S3 service may detect a type from the bytes instead, as SeaweedFS does),
    /// replacing any previous object and its content type; readers see the old or the new bytes,
    /// never a part.
    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: Option<&str>) -> Result<(), BlobError>;

    /// Removes the object `key`; removing a missing object succeeds (as S3's `DeleteObject`).
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// One page of the objects whose keys start with `prefix`, in key order, beginning after
    /// `start_after` (exclusive) and holding at most `max_keys` (1 to [`MAX_LIST_PAGE`]) objects.
    /// `prefix` is empty or ends with `/` and is checked with [`check_prefix`]. A page's `next`
    /// is where the following page starts (`None` on the last), as S3's `ListObjectsV2`.
    async fn list(&self, prefix: &str, start_after: Option<&str>, max_keys: usize) -> Result<Listing, BlobError>;

    /// Removes up to [`MAX_DELETE_BATCH`] objects; missing objects count as removed (as S3's
    /// `DeleteObjects`). A failure may leave any subset removed: callers retry the whole batch,
    /// which is idempotent.
    async fn delete_many(&self, keys: &[String]) -> Result<(), BlobError>;

    /// A URL a client can `PUT` the object `key` to directly, sending `Content-Type:
    /// content_type`, for `expires`; `None` when the store hands out no such URLs (the local one:
    /// the gateway then signs its own upload route). Checks the key, does no IO.
    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        expires: std::time::Duration,
    ) -> Result<Option<String>, BlobError> {
        let _ = (content_type, expires);
        check_key(key)?;
        Ok(None)
    }
}

/// The most objects one [`BlobStore::list`] page holds (S3's `ListObjectsV2` limit).
pub const MAX_LIST_PAGE: usize = 1000;

/// The most keys one [`BlobStore::delete_many`] call takes (S3's `DeleteObjects` limit).
pub const MAX_DELETE_BATCH: usize = 1000;

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key.
    pub key: String,
    /// The object's size in bytes.
    pub size: u64,
}

/// One page of a [`BlobStore::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The objects of the page, in key order.
    pub objects: Vec<ObjectInfo>,
    /// The `start_after` of the next page, or `None` when this page is the last.
    pub next: Option<String>,
}

/// Refuses a listing prefix that is not empty or a valid key prefix ending with `/` (so a prefix
/// names a whole "directory", as the janitor's `{run_id}/` does). Checked before any IO.
pub fn check_prefix(prefix: &str) -> Result<(), BlobError> {
    if prefix.is_empty() {
        return Ok(());
    }
    match prefix.strip_suffix('/') {
        Some(dir) => check_key(dir),
        None => Err(BlobError::InvalidKey { key: prefix.to_owned(), reason: "a prefix must end with `/`" }),
    }
}

/// Refuses a count outside `min..=max`: a page size outside 1..=[`MAX_LIST_PAGE`], a batch over
/// [`MAX_DELETE_BATCH`] keys.
pub(crate) fn check_count(what: &'static str, n: usize, max: usize, min: usize) -> Result<(), BlobError> {
    if n < min || n > max {
        return Err(BlobError::Count { what, n, max });
    }
    Ok(())
}

/// Refuses a key that is not a relative, `/`-separated path of plain names: empty, absolute, with a
/// NUL byte, an empty, `.` or `..` component, or a component a platform reads as more than a name
/// (a drive prefix). Every store checks keys with it before any IO, and so do the routes that
/// accept keys from clients.
pub fn check_key(key: &str) -> Result<(), BlobError> {
    let invalid = |reason| BlobError::InvalidKey { key: key.to_owned(), reason };
    if key.is_empty() {
        return Err(invalid("empty"));
    }
    if key.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    if key.starts_with('/') || Path::new(key).is_absolute() {
        return Err(invalid("absolute"));
    }
    for part in key.split('/') {
        match part {
            "" => return Err(invalid("empty path component")),
            "." | ".." => return Err(invalid("`.` or `..` component")),
            _ => {}
        }
        if !matches!(Path::new(part).components().next(), Some(Component::Normal(_))) {
            return Err(invalid("not a plain name"));
        }
    }
    Ok(())
}
