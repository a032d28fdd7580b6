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
use crate::storage::value::Value;

pub use dirs::Dirs;
pub use indexes::Indexes;
pub use ours::Ours;
pub use runs::{RunHead, RunOps, Runs, StoredTrace, TraceInfo};
use sequences::version::{self, VersionState};
pub use sequences::{
    Columns, KeyPerStep, SeqId, SeqPoint, SeqWrite, SequenceLayout, SequenceLayoutKind, Sequences, sample_indices,
    sample_points,
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
    /// Sequences, in the layout the store's version key names at each transaction.
    pub seqs: Sequences,
    /// The keys of our own directory.
    pub ours: Ours,
}

impl Layout {
    /// Opens the directories of `db` and builds the layout on them, with the sequence layout the
    /// store records (key-per-step when it records none). Writes nothing.
    pub async fn open(db: &Database) -> Result<Self, LayoutError> {
        let dirs = Dirs::open(db).await?;
        let state = version::recorded(&db.create_trx()?, &dirs).await?;
        Ok(Self::with_state(dirs, state))
    }

    /// Opens the layout of `db`, settling its sequence layout: the recorded one, key-per-step for
    /// a store with data and no record, else `wanted` (`storage.sequence_layout`), recorded.
    pub async fn open_settled(db: &Database, wanted: SequenceLayoutKind) -> Result<Self, LayoutError> {
        let dirs = Dirs::open(db).await?;
        let state = version::settle(db, &dirs, wanted).await?;
        match state {
            VersionState::Settled(kind) if kind != wanted => {
                tracing::info!(
                    store = kind.as_str(),
                    configured = wanted.as_str(),
                    "the store keeps its sequence layout"
                );
            }
            VersionState::Migrating { from, to } => {
                tracing::info!(from = from.as_str(), to = to.as_str(), "the store's sequences are being migrated");
            }
            VersionState::Settled(_) => {}
        }
        Ok(Self::with_state(dirs, state))
    }

    /// The layout on known directory prefixes, opened as key-per-step (the reference's); its
    /// sequence operations follow the store's version key.
    pub fn new(dirs: Dirs) -> Self {
        Self::with_sequences(dirs, SequenceLayoutKind::KeyPerStep)
    }

    /// The layout on known directory prefixes with sequences in `kind` when opened. Sequence
    /// operations follow the store's version key, whatever `kind` says.
    pub fn with_sequences(dirs: Dirs, kind: SequenceLayoutKind) -> Self {
        Self::with_state(dirs, VersionState::Settled(kind))
    }

    fn with_state(dirs: Dirs, state: VersionState) -> Self {
        Self {
            runs: RunOps { runs: Runs::new(&dirs.runs), indexes: Indexes::new(&dirs.indexes) },
            system: System::new(&dirs.system),
            seqs: Sequences::new(&dirs.runs, version::key(&dirs), state),
            ours: Ours::new(&dirs.ours),
            dirs,
        }
    }

    /// ⟨indexes⟩.
    pub fn indexes(&self) -> &Indexes {
        &self.runs.indexes
    }

    /// Links a run to a tag on every side: `run_tags`, `tag_runs`, `run_count` and the
    /// `("tag", name, R)` index entry ([`System::link_tag`]), and the run directory's
    /// `(R,"tags",tag)`. REST and ingestion both link through here, so a tag attached either way
    /// leaves the same keys; the reference's REST writes only the system side (quirk 9 of §6).
    /// Returns whether the link is new.
    pub async fn link_tag(&self, tx: &Transaction, run: &str, tag: &str) -> Result<bool, LayoutError> {
        let linked = self.system.link_tag(tx, self.indexes(), run, tag).await?;
        self.runs.runs.set_tag(tx, run, tag)?;
        Ok(linked)
    }

    /// Unlinks a run from a tag on every side [`Layout::link_tag`] writes; returns whether it was
    /// linked.
    pub async fn unlink_tag(&self, tx: &Transaction, run: &str, tag: &str) -> Result<bool, LayoutError> {
        let unlinked = self.system.unlink_tag(tx, self.indexes(), run, tag).await?;
        self.runs.runs.clear_tag(tx, run, tag);
        Ok(unlinked)
    }

    /// Deletes an entity with its links and index entries ([`System::delete`]) and, for the runs
    /// it was linked to, the run directory's side: a tag's `(R,"tags",tag)` keys, and
    /// `meta.experiment_id` of an experiment's runs (cleared, so nothing names the deleted
    /// experiment; a run shows no experiment either way). The reference leaves both behind.
    pub async fn delete_entity(&self, tx: &Transaction, kind: EntityKind, uuid: &str) -> Result<(), LayoutError> {
        let runs = self.system.delete(tx, self.indexes(), kind, uuid).await?;
        for run in &runs {
            match kind {
                EntityKind::Tag => self.runs.runs.clear_tag(tx, run, uuid),
                EntityKind::Experiment => {
                    // Only a meta that names this experiment: a run without meta gets none.
                    let field = self.runs.runs.meta_field(tx, run, "experiment_id").await?;
                    if matches!(&field, Some(Value::Str(u)) if u == uuid) {
                        self.runs.runs.set_meta(tx, run, "experiment_id", &Value::Nil)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
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
