//! The process's shared state: the opened database, the raw prefixes of its directories, the blob
//! store and URI codec, the metrics handle and the UI build, built once at start and shared by the
//! HTTP handlers.

use std::path::PathBuf;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use thiserror::Error;

use crate::actors::PipelineHandle;
use crate::blobs::{Blobs, UriError};
use crate::config::{Backend, Config, StorageConfig};
use crate::control::ControlHandle;
use crate::gateway::{Gateway, RecordSink};
use crate::http::ui::UiBuild;
use crate::storage::kv::{Database, KvError, Limits};
use crate::storage::layout::Layout;
use crate::storage::layout::ours::SchemaError;

/// Why the application could not start.
#[derive(Debug, Error)]
pub enum AppError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    /// The storage backend failed to open or to open a directory.
    #[error("storage: {0}")]
    Storage(#[from] KvError),
    /// The configuration names a backend this build does not have.
    #[error("storage.backend: {0:?} is not available in this build")]
    BackendUnavailable(&'static str),
    /// The store's sequence layout cannot be settled (an unknown version key).
    #[error("storage: {0}")]
    Layout(#[from] crate::storage::layout::LayoutError),
    /// The blob settings cannot be used (validation catches this first).
    #[error("blobs.uri_secret: {0}")]
    Blobs(#[from] UriError),
    /// Our directory holds a layout version this build does not read, or one that does not decode.
    #[error("storage: {0}")]
    Schema(#[from] SchemaError),
}

/// Opens the configured backend, creating the embedded store's data directory if needed.
pub fn open_database(storage: &StorageConfig) -> Result<Database, AppError> {
    match storage.backend {
        Backend::Memory => Ok(Database::memory()),
        Backend::Embedded => {
            let dir = &storage.data_dir;
            std::fs::create_dir_all(dir).map_err(|source| AppError::DataDir { path: dir.clone(), source })?;
            Ok(Database::open_embedded_with(dir, storage.engine, Limits::FDB, storage.embedded_options())?)
        }
        #[cfg(feature = "fdb")]
        Backend::Fdb => Ok(Database::open_fdb(storage.fdb_cluster_file())?),
        #[cfg(not(feature = "fdb"))]
        Backend::Fdb => Err(AppError::BackendUnavailable("fdb")),
    }
}

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    /// The Matyan layout on the opened directories (`layout.dirs` holds their prefixes).
    pub layout: Arc<Layout>,
    pub config: Arc<Config>,
    /// `None` when metrics are disabled.
    pub metrics: Option<PrometheusHandle>,
    /// The blob store and the blob URI codec of `config.blobs`.
    pub blobs: Blobs,
    /// The SDK gateway, in the processes that serve it (`matyan serve`).
    pub gateway: Option<Gateway>,
    /// The ingest pipeline of this process (`matyan serve`, `matyan ingest`), for readiness and the
    /// chaos route.
    pub pipeline: Option<PipelineHandle>,
    /// Where this process publishes ingestion records (the gateway's frames, the REST API's
    /// `delete_run`): `None` means the embedded queue of this store, opened per call.
    pub records: Option<Arc<dyn RecordSink>>,
    /// The web UI build served on the paths no route answers; `None`: no UI.
    pub ui: Option<Arc<UiBuild>>,
    /// Places for heavy requests (`query.max_concurrent_heavy_requests`), see `http::api::heavy`.
    pub heavy: Arc<tokio::sync::Semaphore>,
    /// The control workers of this process (`matyan serve`, `matyan control`), for the chaos route.
    pub control: Option<ControlHandle>,
}

impl AppState {
    /// Opens the storage of `config` and its directories.
    pub async fn open(config: Config, metrics: Option<PrometheusHandle>) -> Result<Self, AppError> {
        let db = open_database(&config.storage)?;
        let layout = Layout::open_settled(&db, config.storage.sequence_layout).await?;
        // A store written by another layout version of our directory is refused before anything
        // reads it. Read only: a store without the version key is of this layout and stays as is.
        db.run(&config.storage.retry.options(), |tx| {
            let ours = &layout.ours;
            async move { ours.check_schema_version(&tx).await }
        })
        .await?;
        Self::new(db, layout, config, metrics)
    }

    /// The state over an opened database and layout; builds the rest from `config`, without IO.
    /// The one place an `AppState` is put together.
    pub fn new(
        db: Database,
        layout: Layout,
        config: Config,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, AppError> {
        let blobs = Blobs::from_config(&config)?;
        let heavy = crate::http::api::heavy::limiter(config.query.max_concurrent_heavy_requests);
        Ok(Self {
            db,
            layout: Arc::new(layout),
            config: Arc::new(config),
            metrics,
            blobs,
            heavy,
            gateway: None,
            records: None,
            pipeline: None,
            ui: None,
            control: None,
        })
    }

    /// This state with the gateway `gateway` served beside the REST API; the REST API publishes
    /// through the gateway's sink too.
    pub fn with_gateway(mut self, gateway: Gateway) -> Self {
        self.records = Some(Arc::clone(gateway.sink()));
        self.gateway = Some(gateway);
        self
    }

    /// This state with the process's ingest pipeline `pipeline`.
    pub fn with_pipeline(mut self, pipeline: PipelineHandle) -> Self {
        self.pipeline = Some(pipeline);
        self
    }

    /// This state with the process's control workers `control`.
    pub fn with_control(mut self, control: ControlHandle) -> Self {
        self.control = Some(control);
        self
    }

    /// This state publishing ingestion records through `sink` (a `matyan api` in front of Kafka).
    pub fn with_record_sink(mut self, sink: Arc<dyn RecordSink>) -> Self {
        self.records = Some(sink);
        self
    }

    /// The state serving `ui` (loaded by [`UiBuild::load`] before the storage opens, so a bad
    /// directory stops the start before anything is created).
    pub fn with_ui(mut self, ui: Option<UiBuild>) -> Self {
        self.ui = ui.map(Arc::new);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::layout::ours::SCHEMA_VERSION;

    #[tokio::test]
    async fn a_store_of_another_layout_version_of_our_directory_is_refused_at_open_naming_it() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut config = Config::from_toml_str("test", "").expect("the defaults parse");
        config.storage.backend = Backend::Embedded;
        config.storage.data_dir = dir.path().to_path_buf();

        let state = AppState::open(config.clone(), None).await.expect("a new store opens");
        let tx = state.db.create_trx().expect("tx");
        let stored = state.layout.ours.read_schema_version(&tx).await.expect("the version reads");
        assert_eq!(stored, None, "opening a store writes nothing");
        tx.set(&state.layout.ours.schema_version(), &(SCHEMA_VERSION + 1).to_le_bytes());
        tx.commit().await.expect("committed");
        drop(tx);
        drop(state);

        let refused = AppState::open(config, None).await.err().expect("another version is refused");
        assert!(refused.to_string().contains(&format!("layout version {}", SCHEMA_VERSION + 1)), "{refused}");
    }
}
