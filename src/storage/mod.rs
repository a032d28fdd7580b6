//! Storage: the transactional KV contract, its backends, and the Matyan key layout.
pub mod kv;
