//! The process's shared state: the opened database, the raw prefixes of its directories, and the
//! metrics handle, built once at start and shared by the HTTP handlers.

use std::path::PathBuf;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use thiserror::Error;

use crate::config::{Backend, Config, StorageConfig};
use crate::storage::kv::{Database, KvError, Limits};

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
}

/// Raw key prefixes of the directories, opened (created if needed) through the directory layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// `("data", "runs")`: the reference's run data.
    pub runs: Vec<u8>,
    /// `("data", "indexes")`: the reference's indexes.
    pub indexes: Vec<u8>,
    /// `("system",)`: the reference's system entities.
    pub system: Vec<u8>,
    /// `("matyan_rs",)`: our own bookkeeping, apart from the reference's keys.
    pub ours: Vec<u8>,
}

impl Dirs {
    /// Opens the four directories, creating them in a new store.
    pub async fn open(db: &Database) -> Result<Self, KvError> {
        Ok(Self {
            runs: db.open_directory(&["data", "runs"]).await?,
            indexes: db.open_directory(&["data", "indexes"]).await?,
            system: db.open_directory(&["system"]).await?,
            ours: db.open_directory(&["matyan_rs"]).await?,
        })
    }
}

/// Opens the configured backend, creating the embedded store's data directory if needed.
pub fn open_database(storage: &StorageConfig) -> Result<Database, AppError> {
    match storage.backend {
        Backend::Memory => Ok(Database::memory()),
        Backend::Embedded => {
            let dir = &storage.data_dir;
            std::fs::create_dir_all(dir).map_err(|source| AppError::DataDir { path: dir.clone(), source })?;
            Ok(Database::open_embedded(dir, storage.engine, Limits::FDB)?)
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
    pub dirs: Arc<Dirs>,
    pub config: Arc<Config>,
    /// `None` when metrics are disabled.
    pub metrics: Option<PrometheusHandle>,
}

impl AppState {
    /// Opens the storage of `config` and its directories.
    pub async fn open(config: Config, metrics: Option<PrometheusHandle>) -> Result<Self, AppError> {
        let db = open_database(&config.storage)?;
        let dirs = Dirs::open(&db).await?;
        Ok(Self { db, dirs: Arc::new(dirs), config: Arc::new(config), metrics })
    }
}
