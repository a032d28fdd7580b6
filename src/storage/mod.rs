//! Storage: the transactional KV contract, its backends, and the Matyan key layout.
pub mod context_id;
pub mod kv;
pub mod tree;
pub mod tuple;
pub mod value;
