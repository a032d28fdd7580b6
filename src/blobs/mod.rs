//! Blobs: the bytes of images, audios and artifacts, kept outside the key-value store.
//!
//! - `uri.rs`: the opaque blob URIs of image and audio items (Fernet tokens, spec `api.md` §7.1);
//! - `store.rs`: the [`BlobStore`] interface, its key checks and error type;
//! - `local.rs`: [`LocalDirStore`], a local directory (`blobs.backend = "local"`);
//! - `s3.rs`: [`S3Store`], any S3-compatible service (`blobs.backend = "s3"`);
//! - `zip.rs`: the streamed ZIP64 archive of a run's artifacts.
//!
//! [`Blobs`] bundles the configured store and URI codec for the HTTP handlers.

pub mod local;
pub mod s3;
pub mod store;
pub mod uri;
pub mod zip;

use std::path::PathBuf;
use std::sync::Arc;

pub use local::LocalDirStore;
pub use s3::{S3Settings, S3Store};
pub use store::{
    Blob, BlobError, BlobReader, BlobStore, DEFAULT_CONTENT_TYPE, Listing, MAX_DELETE_BATCH, MAX_LIST_PAGE, ObjectInfo,
    ObjectMeta, check_key, check_prefix,
};
pub use uri::{BlobUri, UriCodec, UriError};

use crate::config::{BlobBackend, Config};

/// The blob store and the URI codec of a process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Blobs {
    /// Where blob bytes are read from, by object key.
    pub store: Arc<dyn BlobStore>,
    /// Mints and decodes blob URIs.
    pub uris: Arc<UriCodec>,
}

impl Blobs {
    /// The blobs of `config`: the store of `blobs.backend` (a local directory in `blobs.dir`, or
    /// `<storage.data_dir>/blobs`; or the S3 bucket of the `blobs.s3_*` settings) and the URI key
    /// `blobs.uri_secret`. Does no IO.
    pub fn from_config(config: &Config) -> Result<Self, UriError> {
        let store: Arc<dyn BlobStore> = match config.blobs.backend {
            BlobBackend::Local => Arc::new(LocalDirStore::new(local_dir(config))),
            BlobBackend::S3 => Arc::new(S3Store::new(&S3Settings::from_config(&config.blobs))),
        };
        Ok(Self { store, uris: Arc::new(UriCodec::new(&config.blobs.uri_secret)?) })
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
