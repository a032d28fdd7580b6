//! Our keys of the maintenance jobs, under ⟨ours⟩ (`matyan_rs`): the storage job lock and each
//! job's saved progress. The reference has none of them (its lock is per job name in ⟨system⟩ and
//! holds only an expiry; its jobs do not resume), so they live in our directory.
//!
//! | Key | Value |
//! |---|---|
//! | `("job_lock",)` | mp({job, holder, token, expires_at}) |
//! | `("job_progress", job)` | mp({params, phase, cursor, done, cutoff, started_at}) |

use crate::storage::tuple::{self, Elem};

/// The one storage job lock: every maintenance job (and `migrate`) takes the same key, so two
/// jobs never rewrite the store at once.
pub fn lock_key(ours: &[u8]) -> Vec<u8> {
    tuple::pack_with_prefix(ours, &[Elem::from("job_lock")])
}

/// Where the job named `job` saves how far it got.
pub fn progress_key(ours: &[u8], job: &str) -> Vec<u8> {
    tuple::pack_with_prefix(ours, &[Elem::from("job_progress"), Elem::from(job)])
}
