//! Storage: the transactional KV contract and its backends (`kv`), the codecs of the reference's
//! bytes (`tuple`, `value`, `tree`, `context_id`), the Matyan key layout on top (`layout`), and the
//! operator's dump (`dump`) and the maintenance jobs' lock (`job_lock`).
pub mod context_id;
pub mod dump;
pub mod job_lock;
pub mod kv;
pub mod layout;
pub mod tree;
pub mod tuple;
pub mod value;
