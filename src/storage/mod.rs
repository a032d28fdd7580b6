//! Storage: the transactional KV contract and its backends (`kv`), the codecs of the reference's
//! bytes (`tuple`, `value`, `tree`, `context_id`), and the Matyan key layout on top (`layout`).
pub mod dump;
pub mod kv;
pub mod layout;
