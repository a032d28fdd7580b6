//! matyan-rs: a Rust backend for the Matyan experiment tracker.
//!
//! Module map:
//! - [`clock`]: every "now" of the process (the wall clock, the actors' injectable `Clock`) and
//!   calendar conversions;
//! - [`config`]: the typed, versioned configuration, its defaults, environment overrides and validation;
//! - [`app`]: the process's shared state: opened storage, the Matyan layout, blobs, metrics handle, UI build,
//!   gateway, record sink and pipeline handle;
//! - [`blobs`]: blob URIs (Fernet tokens) and the blob store of images, audios and artifacts;
//! - [`http`]: the axum router: health probes, metrics, loopback admin routes, the REST API under
//!   `/api/v1/rest` (`http::api`, one file per area), its binary streaming codec (`http::stream`)
//!   and the web UI build on the same origin (`http::ui`);
//! - [`storage`]: the transactional KV contract, its backends (memory, embedded, FoundationDB),
//!   the reference's byte codecs and the Matyan key layout on top;
//! - [`ingest`]: ingestion below the actors: the `Source` interface and its two sources (the
//!   embedded durable queue, Kafka), message decoding, size estimates, Kafka's partitioner, the
//!   `RunBatch` flush policy, the handlers that apply a batch (`ingest::apply`), dead letters and
//!   the outbox publisher;
//! - [`actors`]: the supervised ingest pipeline (partition and run actors) behind `PipelineHandle`;
//! - [`control`]: the supervised control actors (consumer of `control-events`, blob janitor) behind
//!   `ControlHandle`;
//! - [`gateway`]: the SDK gateway (`WS /api/v1/ws/runs/{run_id}`, artifact presign and upload),
//!   publishing durably to the embedded queue or Kafka;
//! - [`query`]: MatyanQL: parser, pipeline, evaluator with Python semantics, index planner;
//! - [`maintenance`]: the maintenance jobs (reindex, finish-stale, cleanups, backup and restore,
//!   sequence migration), resumable batches under the storage job lock;
//! - [`metrics`]: the metrics catalogue;
//! - [`fast_hash`]: the hash maps of the ingest path (a faster seeded hasher);
//! - [`alloc`]: the process's allocator (jemalloc by default), its account and giving free pages back;
//! - [`bench`]: benchmarks that print figures.
//!
//! The binary's command-line glue lives in `src/main.rs` and `src/cli/`.
pub mod actors;
pub mod alloc;
pub mod app;
pub mod bench;
pub mod blobs;
pub mod clock;
pub mod config;
pub mod control;
pub mod fast_hash;
pub mod gateway;
pub mod http;
pub mod ingest;
pub mod maintenance;
pub mod metrics;
pub mod query;
pub mod storage;
