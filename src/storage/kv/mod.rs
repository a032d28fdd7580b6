//! The transactional KV contract, modelled on FoundationDB, and its backends.
//!
//! - `database.rs`: [`Database`] / [`Transaction`], the API the rest of the crate uses, and the retry loop;
//! - `local.rs`: FoundationDB semantics (read-your-writes, conflicts, limits) over a local engine;
//! - `engine.rs`: the engine interface; `memory.rs`, `fjall_engine.rs`, `redb_engine.rs` implement it;
//!   `prefix_routes.rs`: which of fjall's keyspaces holds a key (prefixes kept apart);
//! - `directory.rs`: the FoundationDB directory layer's format for local backends;
//! - `fdb.rs` (feature `fdb`): FoundationDB itself;
//! - `faults.rs` (tests only): seeded fault injection into local commits, for the ingest simulation;
//! - `types.rs`, `error.rs`: value types, limits and typed errors (FoundationDB's codes).

mod database;
pub mod directory;
pub mod engine;
mod error;
#[cfg(test)]
pub mod faults;
#[cfg(feature = "fdb")]
mod fdb;
mod fjall_engine;
mod local;
mod memory;
mod prefix_routes;
mod redb_engine;
pub mod trim;
mod types;

pub use database::{Database, EmbeddedEngine, EmbeddedOptions, MIN_JOURNAL_BYTES, RetryOptions, Transaction};
pub use error::{KvError, RetryableError};
pub use types::{KeySelector, KeyValue, Limits, RangeOption, atomic_add, strinc};
