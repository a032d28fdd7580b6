//! The transactional KV contract.
