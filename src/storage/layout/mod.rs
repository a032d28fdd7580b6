//! The Matyan key layout over the KV contract, byte compatible with the reference
//! (`ingest-storage.md` §3): tuple keys, msgpack values, trees, indexes with `_rev` twins.
//!
//! - `dirs.rs`: the four directories (three of the reference, one of ours);
//! - `runs.rs`: ⟨runs⟩ keys and the run operations that keep indexes in step;
//! - `indexes.rs`: ⟨indexes⟩ entries, twins and tombstones;
//! - `system.rs`: ⟨system⟩ entities, names, run links, settings, job locks;
//! - `sequences/`: the sequence interface and its two layouts, one chosen per store.
//! - `ours.rs`: every tag and key shape of our own directory (`matyan_rs`) and its schema version
//!   (checkpoints, outbox, dead letters, queue, consumers, the job lock and jobs' progress).

pub mod dirs;
pub mod indexes;
pub mod ours;
pub mod runs;
pub mod sequences;
pub mod system;

use crate::storage::kv::{Database, KvError, RetryableError, Transaction};

pub use dirs::Dirs;
pub use indexes::Indexes;
pub use ours::Ours;
pub use runs::{RunOps, Runs, TraceInfo};
pub use sequences::{
    Columns, KeyPerStep, SeqId, SeqPoint, SeqWrite, SequenceLayout, SequenceLayoutKind, sample_indices,
};
pub use system::{EntityKind, System};

/// Errors of the layout layer.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The KV layer failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A stored key or value does not decode as the layout says.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A value cannot be encoded.
    #[error("cannot encode value: {0}")]
    Encode(String),
    /// A unique name is taken.
    #[error("{0}")]
    Conflict(String),
    /// The request makes no sense for this entity.
    #[error("{0}")]
    Invalid(String),
}

impl RetryableError for LayoutError {
    fn kv_error(&self) -> Option<&KvError> {
        match self {
            LayoutError::Kv(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sequences::SeqError> for LayoutError {
    fn from(e: sequences::SeqError) -> Self {
        match e {
            sequences::SeqError::Kv(k) => LayoutError::Kv(k),
            sequences::SeqError::Corrupt(c) => LayoutError::Corrupt(c),
            e @ sequences::SeqError::KeyLimit { .. } => LayoutError::Invalid(e.to_string()),
        }
    }
}

/// Everything needed to read and write the Matyan layout of one store.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The directory prefixes.
    pub dirs: Dirs,
    /// Run data and run-level operations.
    pub runs: RunOps,
    /// ⟨system⟩.
    pub system: System,
    /// Sequences, in the store's layout.
    pub seqs: SequenceLayout,
    /// The keys of our own directory.
    pub ours: Ours,
}

impl Layout {
    /// Opens the directories of `db` and builds the layout on them, with the sequence layout the
    /// store records (key-per-step when it records none). Writes nothing.
    pub async fn open(db: &Database) -> Result<Self, LayoutError> {
        let dirs = Dirs::open(db).await?;
        let kind = sequences::version::recorded(&db.create_trx()?, &dirs).await?;
        Ok(Self::with_sequences(dirs, kind))
    }

    /// Opens the layout of `db`, settling its sequence layout: the recorded one, key-per-step for
    /// a store with data and no record, else `wanted` (`storage.sequence_layout`), recorded.
    pub async fn open_settled(db: &Database, wanted: SequenceLayoutKind) -> Result<Self, LayoutError> {
        let dirs = Dirs::open(db).await?;
        let kind = sequences::version::settle(db, &dirs, wanted).await?;
        if kind != wanted {
            tracing::info!(store = kind.as_str(), configured = wanted.as_str(), "the store keeps its sequence layout");
        }
        Ok(Self::with_sequences(dirs, kind))
    }

    /// The layout on known directory prefixes, key-per-step (the reference's).
    pub fn new(dirs: Dirs) -> Self {
        Self::with_sequences(dirs, SequenceLayoutKind::KeyPerStep)
    }

    /// The layout on known directory prefixes with sequences in `kind`.
    pub fn with_sequences(dirs: Dirs, kind: SequenceLayoutKind) -> Self {
        Self {
            runs: RunOps { runs: Runs::new(&dirs.runs), indexes: Indexes::new(&dirs.indexes) },
            system: System::new(&dirs.system),
            seqs: SequenceLayout::new(kind, &dirs.runs),
            ours: Ours::new(&dirs.ours),
            dirs,
        }
    }

    /// ⟨indexes⟩.
    pub fn indexes(&self) -> &Indexes {
        &self.runs.indexes
    }

    /// `delete_run` in one transaction: de-index, remove associations, clear `(R,)`, tombstone.
    /// Huge runs need the resumable form the ingestion layer builds on these steps.
    pub async fn delete_run(&self, tx: &Transaction, run: &str, now: f64) -> Result<(), LayoutError> {
        self.indexes().deindex_run(tx, run, None).await?;
        self.system.remove_associations(tx, self.indexes(), run).await?;
        self.runs.runs.clear_run(tx, run);
        self.indexes().mark_deleted(tx, run, now);
        Ok(())
    }
}
