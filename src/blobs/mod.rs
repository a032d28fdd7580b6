//! Blobs: the bytes of images, audios and artifacts, kept outside the key-value store.
//!
//! - `uri.rs`: the opaque blob URIs of image and audio items (Fernet tokens, spec `api.md` §7.1);
//! - `store.rs`: the [`BlobStore`] interface and its local-directory implementation.
//!
//! [`Blobs`] bundles the configured store and URI codec for the HTTP handlers.

pub mod store;
pub mod uri;

use std::path::PathBuf;
use std::sync::Arc;

pub use store::{
    BlobError, BlobStore, Listing, LocalDirStore, MAX_DELETE_BATCH, MAX_LIST_PAGE, ObjectInfo, check_key, check_prefix,
};
pub use uri::{BlobUri, UriCodec, UriError};

use crate::config::Config;

/// The blob store and the URI codec of a process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Blobs {
    /// Where blob bytes are read from, by object key.
    pub store: Arc<dyn BlobStore>,
    /// Mints and decodes blob URIs.
    pub uris: Arc<UriCodec>,
}

impl Blobs {
    /// The blobs of `config`: a local store in `blobs.dir` (or `<storage.data_dir>/blobs`) and
    /// the URI key `blobs.uri_secret`. Does no IO.
    pub fn from_config(config: &Config) -> Result<Self, UriError> {
        Ok(Self {
            store: Arc::new(LocalDirStore::new(local_dir(config))),
            uris: Arc::new(UriCodec::new(&config.blobs.uri_secret)?),
        })
    }
}

/// The directory of the local blob store: `blobs.dir`, or `blobs` under the data directory when
/// that is empty.
pub fn local_dir(config: &Config) -> PathBuf {
    if config.blobs.dir.as_os_str().is_empty() {
        config.storage.data_dir.join("blobs")
    } else {
        config.blobs.dir.clone()
    }
}
