//! The directories of a Matyan store: the reference's three, and our own bookkeeping directory.

use crate::storage::kv::{Database, KvError};

/// Path of the run data directory.
pub const RUNS_PATH: &[&str] = &["data", "runs"];
/// Path of the index directory.
pub const INDEXES_PATH: &[&str] = &["data", "indexes"];
/// Path of the system directory.
pub const SYSTEM_PATH: &[&str] = &["system"];
/// Path of our own directory (ingest checkpoints, dead letters, embedded queue, locks): it never
/// collides with the reference's keys.
pub const OURS_PATH: &[&str] = &["matyan_rs"];

/// Raw key prefixes of the four directories, resolved through the directory layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// `data/runs`: ⟨runs⟩.
    pub runs: Vec<u8>,
    /// `data/indexes`: ⟨indexes⟩.
    pub indexes: Vec<u8>,
    /// `system`: ⟨system⟩.
    pub system: Vec<u8>,
    /// `matyan_rs`: ours.
    pub ours: Vec<u8>,
}

impl Dirs {
    /// Opens (creating if missing) the four directories.
    pub async fn open(db: &Database) -> Result<Self, KvError> {
        Ok(Self {
            runs: db.open_directory(RUNS_PATH).await?,
            indexes: db.open_directory(INDEXES_PATH).await?,
            system: db.open_directory(SYSTEM_PATH).await?,
            ours: db.open_directory(OURS_PATH).await?,
        })
    }

    /// The prefix of a directory by its short name (`runs`, `indexes`, `system`, `ours`).
    pub fn by_name(&self, name: &str) -> Option<&[u8]> {
        match name {
            "runs" => Some(&self.runs),
            "indexes" => Some(&self.indexes),
            "system" => Some(&self.system),
            "ours" => Some(&self.ours),
            _ => None,
        }
    }
}
