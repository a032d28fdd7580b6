//! Typed, versioned configuration: built-in defaults (`config/default.toml`, compiled in), an
//! optional file over them, environment overrides with the reference Matyan's names, and a pure
//! validation whose errors name the offending key.
//!
//! Precedence, lowest first: defaults, `--config` file, environment, command-line flags (applied
//! by the CLI). Call [`Config::validate`] after the last override.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::storage::kv::{EmbeddedEngine, EmbeddedOptions, Limits, MIN_JOURNAL_BYTES, RetryOptions};

/// The built-in defaults, which are also the documentation of every option.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The only format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub ingest: IngestConfig,
    pub kafka: KafkaConfig,
    pub metrics: MetricsConfig,
    pub blobs: BlobsConfig,
    pub query: QueryConfig,
    pub gateway: GatewayConfig,
    pub ui: UiConfig,
    pub queue: QueueConfig,
    pub maintenance: MaintenanceConfig,
    pub control: ControlConfig,
    /// `production` refuses the development defaults of secrets and credentials (env
    /// `MATYAN_ENVIRONMENT`, as the reference).
    pub environment: Environment,
}

/// What the deployment is: `production` refuses to start with development secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

/// The reference's development values that `environment = "production"` refuses.
pub mod dev_defaults {
    /// The development blob URI key (`BLOB_URI_SECRET`'s default in the reference).
    pub const BLOB_URI_SECRET: &str = "Juw5-cLlemQI2jAWvceOUB3_CrVfBmI99YIzkpGUXR4=";
    /// The development S3 access and secret key (the reference's RustFS defaults).
    pub const S3_CREDENTIAL: &str = "rustfsadmin";
    /// The development S3 endpoint.
    pub const S3_ENDPOINT: &str = "http://localhost:9000";
}

/// The HTTP API's listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    pub cors_origins: Vec<String>,
}

/// Where the data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A local store under the data directory.
    Embedded,
    /// In memory, lost at exit.
    Memory,
    /// FoundationDB (feature `fdb`).
    Fdb,
}

impl Backend {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Memory => "memory",
            Backend::Fdb => "fdb",
        }
    }
}

/// Storage backend and its retry loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub engine: EmbeddedEngine,
    /// Empty means the FoundationDB client's default cluster file.
    pub fdb_cluster_file: PathBuf,
    pub retry: RetryConfig,
    /// The sequence layout of a new store; a store keeps the layout it has (see
    /// `storage/layout/sequences/version.rs`).
    pub sequence_layout: crate::storage::layout::SequenceLayoutKind,
    /// The embedded engine's block (fjall) or page (redb) cache.
    pub cache_bytes: u64,
    /// fjall's memtable size, for a new store (fjall keeps a store's own).
    pub memtable_bytes: u64,
    /// fjall's background threads (memtable flushes and compaction).
    pub engine_threads: u32,
    /// How often freed memory goes back to the system (0: never).
    pub memory_trim_ms: u64,
    /// fjall's journals together at most: past it, the memtables holding the oldest journal back
    /// are flushed.
    pub journal_bytes: u64,
}

impl StorageConfig {
    /// The cluster file, `None` for the client's default.
    pub fn fdb_cluster_file(&self) -> Option<&Path> {
        if self.fdb_cluster_file.as_os_str().is_empty() { None } else { Some(&self.fdb_cluster_file) }
    }

    /// The embedded engine's cache.
    pub fn cache(&self) -> ByteSize {
        ByteSize(self.cache_bytes)
    }

    /// fjall's memtable size.
    pub fn memtable(&self) -> ByteSize {
        ByteSize(self.memtable_bytes)
    }

    /// The embedded engine's memory settings.
    pub fn embedded_options(&self) -> EmbeddedOptions {
        EmbeddedOptions {
            cache_bytes: self.cache().0,
            memtable_bytes: self.memtable().0,
            engine_threads: self.engine_threads,
            memory_trim_ms: self.memory_trim_ms,
            journal_bytes: self.journal_bytes,
        }
    }
}

/// Settings of the transaction retry loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts, the first included.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub timeout_ms: u64,
}

impl RetryConfig {
    /// The KV layer's retry options; `retry_limit` counts retries after the first attempt.
    pub fn options(&self) -> RetryOptions {
        RetryOptions {
            timeout: Duration::from_millis(self.timeout_ms),
            retry_limit: self.max_attempts.saturating_sub(1),
            initial_backoff: Duration::from_millis(self.initial_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
        }
    }
}

/// Flush budgets of ingest transactions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub max_txn_bytes: u64,
    pub max_messages_per_txn: u32,
    pub max_txn_age_ms: u64,
    /// Time without records after which a run actor stops (its batch is empty by then).
    pub run_idle_timeout_ms: u64,
    /// Enables `POST /admin/chaos/kill/` (also `matyan serve --chaos`).
    pub chaos: bool,
    /// What `matyan serve` consumes (also `matyan serve --source`).
    pub source: IngestSource,
    /// Live run actors per partition at most; a new run at a full partition evicts the least
    /// recently used ones (each flushes first).
    pub max_run_actors_per_partition: u32,
}

/// The source `matyan serve` ingests from, and where its gateway and REST deletions publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IngestSource {
    /// The embedded durable queue under the data directory.
    Embedded,
    /// `kafka.data_ingestion_topic` on `kafka.bootstrap_servers`.
    Kafka,
}

impl IngestConfig {
    /// The age budget as a duration.
    pub fn max_txn_age(&self) -> Duration {
        Duration::from_millis(self.max_txn_age_ms)
    }

    /// The run actors' idle timeout as a duration.
    pub fn run_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.run_idle_timeout_ms)
    }

    /// The byte budget of one ingest transaction.
    pub fn txn_bytes(&self) -> ByteSize {
        ByteSize(self.max_txn_bytes)
    }
}

/// Kafka brokers, topics, group and security, for the roles that use Kafka. `Debug` hides the
/// SASL password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub data_ingestion_topic: String,
    pub control_events_topic: String,
    /// Consumer group of the ingestion workers.
    pub consumer_group: String,
    /// Topic that receives records that cannot be decoded or applied.
    pub dead_letter_topic: String,
    /// librdkafka's `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: String,
    /// librdkafka's `sasl.mechanism` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`); empty: unset.
    pub sasl_mechanism: String,
    /// SASL user name; set together with `sasl_password` or not at all.
    pub sasl_username: String,
    /// SASL password; never logged.
    pub sasl_password: String,
    /// The ingest consumer's `session.timeout.ms`: how long the group waits for a silent member
    /// before moving its partitions.
    pub session_timeout_ms: u64,
    /// The ingest consumer's `heartbeat.interval.ms`, below the session timeout.
    pub heartbeat_interval_ms: u64,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("data_ingestion_topic", &self.data_ingestion_topic)
            .field("control_events_topic", &self.control_events_topic)
            .field("consumer_group", &self.consumer_group)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &if self.sasl_password.is_empty() { "" } else { "<redacted>" })
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .finish()
    }
}

/// The values `kafka.security_protocol` accepts (librdkafka's, case-insensitive).
pub const KAFKA_SECURITY_PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];

/// The values `kafka.sasl_mechanism` accepts when set.
pub const KAFKA_SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Listener of roles without an HTTP API; 0 disables it.
    pub port: u16,
}

/// Blob URIs and the blob store of images, audios and artifacts. `Debug` hides the URI secret
/// and the S3 secret key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobsConfig {
    /// Key of the blob URIs: URL-safe base64 of 32 bytes (a Fernet key).
    pub uri_secret: String,
    /// Directory of the local blob store; empty means `<storage.data_dir>/blobs`.
    pub dir: PathBuf,
    /// Where blobs live: a local directory or an S3 bucket.
    pub backend: BlobBackend,
    /// The S3 API endpoint (`http(s)://host:port`); empty means AWS's endpoint of `s3_region`.
    pub s3_endpoint: String,
    /// The endpoint clients reach S3 at, when it differs from `s3_endpoint` (presigned URLs).
    pub s3_public_endpoint: String,
    pub s3_bucket: String,
    pub s3_region: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    /// Path-style addressing (`endpoint/bucket/key`), as MinIO, RustFS and SeaweedFS need.
    pub s3_force_path_style: bool,
    /// Attempts of one S3 request, the first included, before its error is returned.
    pub s3_max_attempts: u32,
    pub s3_connect_timeout_ms: u64,
    /// Limit of one attempt of an S3 request until its answer starts (a streamed body is not
    /// bounded by it).
    pub s3_attempt_timeout_ms: u64,
}

impl std::fmt::Debug for BlobsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobsConfig")
            .field("uri_secret", &"<redacted>")
            .field("dir", &self.dir)
            .field("backend", &self.backend)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_public_endpoint", &self.s3_public_endpoint)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key", &self.s3_access_key)
            .field("s3_secret_key", &"<redacted>")
            .field("s3_force_path_style", &self.s3_force_path_style)
            .field("s3_max_attempts", &self.s3_max_attempts)
            .field("s3_connect_timeout_ms", &self.s3_connect_timeout_ms)
            .field("s3_attempt_timeout_ms", &self.s3_attempt_timeout_ms)
            .finish()
    }
}

/// The blob store of `blobs.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    /// A local directory (`blobs.dir`).
    Local,
    /// An S3-compatible bucket (`blobs.s3_*`).
    S3,
}

/// Read requests of the REST API: the work budget of one request and the age of its snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Keys one request may read; past them it is answered with a budget error.
    pub max_keys_per_request: u64,
    /// Wall time one request may spend reading; past it it is answered with a budget error.
    pub max_request_time_ms: u64,
    /// Age of a read snapshot after which a request that goes run by run takes a fresh one before
    /// its next run; below FoundationDB's 5 s read-version lifetime.
    pub snapshot_max_age_ms: u64,
    /// Bytes of values one query evaluation may build (nested elements and string bytes counted);
    /// past them the request is answered with a budget error.
    pub max_value_bytes: u64,
    /// Requests that evaluate queries or read run by run (searches, streams) running at once, each
    /// on a blocking thread; one more is answered 503 with `Retry-After`.
    pub max_concurrent_heavy_requests: u32,
    /// Bytes of run attributes and traces a run search keeps from evaluating its query, so the
    /// runs of its answer are not read twice; runs past it are read again when streamed.
    pub run_search_kept_bytes: u64,
    /// Series of one run a request reads at once (get-batch, metric search); results keep their
    /// order and are charged to the budget in it.
    pub max_concurrent_series_reads: u32,
    /// Encoded bytes past which a streamed answer sends what it holds as one chunk.
    pub stream_chunk_bytes: u64,
    /// Time after a streamed answer's last chunk past which it sends what it holds, however little.
    pub stream_chunk_max_age_ms: u64,
}

impl QueryConfig {
    /// The largest `run_search_kept_bytes`: one request's share of memory, well above what a
    /// page of runs holds, so that a stray digit fails rather than lets searches hold gigabytes.
    pub const MAX_RUN_SEARCH_KEPT_BYTES: u64 = 1 << 30;

    /// The largest `stream_chunk_bytes`: what one answer may hold unsent.
    pub const MAX_STREAM_CHUNK_BYTES: u64 = 16 << 20;

    /// The largest `stream_chunk_max_age_ms`: how long a client may see nothing of a live answer.
    pub const MAX_STREAM_CHUNK_MAX_AGE_MS: u64 = 10_000;

    /// The time budget as a duration.
    pub fn max_request_time(&self) -> Duration {
        Duration::from_millis(self.max_request_time_ms)
    }

    /// The snapshot age limit as a duration.
    pub fn snapshot_max_age(&self) -> Duration {
        Duration::from_millis(self.snapshot_max_age_ms)
    }
}

/// The SDK gateway (`WS /api/v1/ws/runs/{run_id}`, artifact uploads): its bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Bytes of one WebSocket frame.
    pub max_frame_bytes: usize,
    /// Messages of one frame.
    pub max_messages_per_frame: usize,
    /// Bytes of one encoded record.
    pub max_record_bytes: usize,
    /// Open WebSocket connections; further upgrades are answered 503.
    pub max_connections: usize,
    /// A connection that sends nothing (not even a ping) for this long is closed.
    pub idle_timeout_ms: u64,
    /// A reply the client does not read within this long closes the connection.
    pub send_timeout_ms: u64,
    /// Bytes of frames one embedded-queue transaction takes together (group commit).
    pub append_batch_bytes: usize,
    /// How long Kafka may take to acknowledge a record before its frame fails.
    pub kafka_delivery_timeout_ms: u64,
    /// How long the Kafka producer waits to fill a batch.
    pub kafka_linger_ms: u64,
    /// Bytes of one uploaded blob.
    pub max_upload_bytes: usize,
    /// Uploads received at once; further ones are answered 503.
    pub max_concurrent_uploads: usize,
    /// Lifetime of a presigned upload URL, in seconds.
    pub upload_expiry_secs: u64,
    /// Base of presigned upload URLs (scheme, host, port); empty means the presign request's Host.
    pub public_url: String,
}

impl GatewayConfig {
    /// The largest frame this build accepts: with its encoding overhead, one frame must fit one
    /// embedded-queue transaction.
    pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The send timeout as a duration.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }

    /// How long Kafka may take to acknowledge a record, as a duration.
    pub fn kafka_delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_delivery_timeout_ms)
    }

    /// The Kafka producer's linger as a duration.
    pub fn kafka_linger(&self) -> Duration {
        Duration::from_millis(self.kafka_linger_ms)
    }

    /// The lifetime of a presigned upload URL as a duration.
    pub fn upload_expiry(&self) -> Duration {
        Duration::from_secs(self.upload_expiry_secs)
    }

    fn validate(&self, errors: &mut Vec<ValidationError>) {
        let fdb_bytes = Limits::FDB.max_txn_bytes as u64;
        for (key, value, max) in [
            ("gateway.max_frame_bytes", self.max_frame_bytes, Self::MAX_FRAME_BYTES),
            ("gateway.max_messages_per_frame", self.max_messages_per_frame, 10_000),
            // Our ingestion decodes records up to this size.
            ("gateway.max_record_bytes", self.max_record_bytes, crate::ingest::message::MAX_RECORD_BYTES),
            ("gateway.max_connections", self.max_connections, 1_000_000),
            ("gateway.append_batch_bytes", self.append_batch_bytes, (fdb_bytes / 2) as usize),
            ("gateway.max_upload_bytes", self.max_upload_bytes, 1 << 30),
            ("gateway.max_concurrent_uploads", self.max_concurrent_uploads, 1024),
        ] {
            if value == 0 {
                errors.push(ValidationError::Zero { key });
            } else if value > max {
                errors.push(ValidationError::AboveMax { key, value: value as u64, max: max as u64 });
            }
        }
        for (key, value) in [
            ("gateway.idle_timeout_ms", self.idle_timeout_ms),
            ("gateway.send_timeout_ms", self.send_timeout_ms),
            ("gateway.kafka_delivery_timeout_ms", self.kafka_delivery_timeout_ms),
            ("gateway.upload_expiry_secs", self.upload_expiry_secs),
        ] {
            if value == 0 {
                errors.push(ValidationError::Zero { key });
            }
        }
        let url = self.public_url.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(ValidationError::NotAUrl { key: "gateway.public_url" });
        }
    }
}

/// Upkeep of the embedded queue (`matyan serve`): records every consumer group has committed are
/// trimmed, so the queue holds the live data only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Milliseconds between trim passes; 0 never trims.
    pub trim_interval_ms: u64,
    /// Consumed records kept per partition below the slowest group's committed offset.
    pub retain_consumed_records: u64,
    /// Records one trim transaction removes at most where it clears them itself (a pass runs as
    /// many as it needs); a partition whose records the store keeps apart is trimmed in one
    /// transaction that writes only its start offset.
    pub trim_batch_records: u64,
}

impl QueueConfig {
    /// The shortest interval between trim passes: each pass reads every group's offsets.
    pub const MIN_TRIM_INTERVAL_MS: u64 = 100;

    /// The most records one trim transaction may remove where it clears them: an embedded store
    /// removes them key by key while every other commit waits.
    pub const MAX_TRIM_BATCH_RECORDS: u64 = 1_000_000;

    /// The interval between trim passes, `None` when trimming is off.
    pub fn trim_interval(&self) -> Option<Duration> {
        (self.trim_interval_ms > 0).then(|| Duration::from_millis(self.trim_interval_ms))
    }

    fn validate(&self, errors: &mut Vec<ValidationError>) {
        if self.trim_interval_ms != 0 && self.trim_interval_ms < Self::MIN_TRIM_INTERVAL_MS {
            errors.push(ValidationError::Malformed {
                key: "queue.trim_interval_ms",
                value: self.trim_interval_ms.to_string(),
                expected: "0 (never trim) or at least 100",
            });
        }
        check_between("queue.trim_batch_records", self.trim_batch_records, 1, Self::MAX_TRIM_BATCH_RECORDS, errors);
    }
}

/// The web UI served on the API's origin (`matyan serve --ui-dir`), rendered the way `matyan-ui`
/// renders its page. `Debug` hides the auth token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// A `matyan-ui` build (the directory holding `index-template.html`) or the installed package
    /// holding it under `static/`; empty: no UI.
    pub dir: PathBuf,
    /// Origin the page's API calls go to; empty: the origin the page was requested from.
    pub api_host_base: String,
    /// Path of the API under the host base; the UI appends `/rest`.
    pub api_base_path: String,
    /// Path prefix the UI is served under; empty: the root.
    pub base_path: String,
    /// Bearer token the UI sends with its API calls; empty: none.
    pub api_auth_token: String,
}

impl std::fmt::Debug for UiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiConfig")
            .field("dir", &self.dir)
            .field("api_host_base", &self.api_host_base)
            .field("api_base_path", &self.api_base_path)
            .field("base_path", &self.base_path)
            .field("api_auth_token", &if self.api_auth_token.is_empty() { "" } else { "<redacted>" })
            .finish()
    }
}

/// The maintenance commands (`reindex`, `finish-stale`, `cleanup-*`, `backup`, `restore`): the
/// budget of each of their transactions, the job lock's time to live, and the reference's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Runs, tombstones, entities or series one batch transaction handles at most.
    pub batch_size: u32,
    /// Bytes one batch transaction writes at most (a batch ends early past them).
    pub max_txn_bytes: u64,
    /// Time to live of the storage job lock; renewed every third of it while a job runs.
    pub lock_ttl_seconds: u64,
    /// `cleanup-tombstones --older-than-hours` default.
    pub tombstone_older_than_hours: u64,
    /// `finish-stale --timeout-hours` default.
    pub stale_timeout_hours: u64,
}

impl MaintenanceConfig {
    /// The most keys a batch may name: FoundationDB's own budgets bound a transaction anyway.
    pub const MAX_BATCH_SIZE: u32 = 10_000;
    /// A week: a lock that outlives its job longer than this only blocks the next one.
    pub const MAX_LOCK_TTL_SECONDS: u64 = 7 * 24 * 3600;

    /// The byte budget of one batch transaction.
    pub fn txn_bytes(&self) -> ByteSize {
        ByteSize(self.max_txn_bytes)
    }

    /// The storage job lock's time to live as a duration.
    pub fn lock_ttl(&self) -> Duration {
        Duration::from_secs(self.lock_ttl_seconds)
    }

    fn validate(&self, errors: &mut Vec<ValidationError>) {
        if self.batch_size == 0 {
            errors.push(ValidationError::Zero { key: "maintenance.batch_size" });
        } else if self.batch_size > Self::MAX_BATCH_SIZE {
            errors.push(ValidationError::AboveMax {
                key: "maintenance.batch_size",
                value: u64::from(self.batch_size),
                max: u64::from(Self::MAX_BATCH_SIZE),
            });
        }
        check_txn_bytes("maintenance.max_txn_bytes", self.max_txn_bytes, errors);
        if self.lock_ttl_seconds == 0 {
            errors.push(ValidationError::Zero { key: "maintenance.lock_ttl_seconds" });
        } else if self.lock_ttl_seconds > Self::MAX_LOCK_TTL_SECONDS {
            errors.push(ValidationError::AboveMax {
                key: "maintenance.lock_ttl_seconds",
                value: self.lock_ttl_seconds,
                max: Self::MAX_LOCK_TTL_SECONDS,
            });
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML.
    #[error("{origin}: invalid toml: {message}")]
    Syntax { origin: String, message: String },
    /// A key that no option has.
    #[error("{origin}: {key}: unknown key")]
    UnknownKey { origin: String, key: String },
    /// A value of the wrong type or out of its type's range; the message names the key.
    #[error("{origin}: {message}")]
    Type { origin: String, message: String },
    /// An environment variable whose value cannot be used.
    #[error("{var}: invalid value {value:?}: expected {expected}")]
    Env { var: &'static str, value: String, expected: &'static str },
    /// Values that parse but are impossible.
    #[error("invalid configuration: {}", join_errors(.0))]
    Invalid(Vec<ValidationError>),
}

fn join_errors(errors: &[ValidationError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// One impossible value, by key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("{key}: {value} is not supported (this build reads version {supported})")]
    UnsupportedVersion { key: &'static str, value: u32, supported: u32 },
    #[error("{key}: must be at least 1")]
    Zero { key: &'static str },
    #[error("{key}: must not be empty")]
    Empty { key: &'static str },
    #[error("{key}: {value} exceeds FoundationDB's {limit}-{unit} transaction limit")]
    AboveFdbLimit { key: &'static str, value: u64, limit: u64, unit: &'static str },
    #[error("{key}: {value} is greater than {other} ({other_value})")]
    Greater { key: &'static str, value: u64, other: &'static str, other_value: u64 },
    #[error("{key}: \"fdb\" needs a build with `--features fdb`")]
    FdbNotBuilt { key: &'static str },
    #[error("{key}: {value:?} is not one of {allowed:?}")]
    NotOneOf { key: &'static str, value: String, allowed: &'static [&'static str] },
    #[error("{key} and {other} must be set together")]
    Unpaired { key: &'static str, other: &'static str },
    #[error("{key}: must be url-safe base64 of 32 bytes (a fernet key)")]
    NotAKey { key: &'static str },
    #[error("{key}: {value} is above the largest supported value {max}")]
    AboveMax { key: &'static str, value: u64, max: u64 },
    #[error("{key}: must be an http:// or https:// url")]
    NotAUrl { key: &'static str },
    #[error("{key}: {value:?} is not {expected}")]
    Malformed { key: &'static str, value: String, expected: &'static str },
    #[error("{key}: the development default is refused when environment is production (MATYAN_ENVIRONMENT); set {var}")]
    DevelopmentDefaultInProduction { key: &'static str, var: &'static str },
    #[error("{key}: {value} is below the smallest supported value {min}")]
    BelowMin { key: &'static str, value: u64, min: u64 },
}

impl ValidationError {
    /// The dotted key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            ValidationError::UnsupportedVersion { key, .. }
            | ValidationError::Zero { key }
            | ValidationError::Empty { key }
            | ValidationError::AboveFdbLimit { key, .. }
            | ValidationError::Greater { key, .. }
            | ValidationError::FdbNotBuilt { key }
            | ValidationError::NotOneOf { key, .. }
            | ValidationError::Unpaired { key, .. }
            | ValidationError::NotAKey { key }
            | ValidationError::AboveMax { key, .. }
            | ValidationError::NotAUrl { key }
            | ValidationError::Malformed { key, .. }
            | ValidationError::DevelopmentDefaultInProduction { key, .. }
            | ValidationError::BelowMin { key, .. } => key,
        }
    }
}

/// The control workers (`matyan control`, and in process in `matyan serve`): their consumer
/// group, the janitor's retries and backlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Consumer group on `kafka.control_events_topic` (the reference's `control-workers`).
    pub consumer_group: String,
    /// Run deletions waiting for the blob janitor at most; the topic is not read meanwhile.
    pub max_backlog: u64,
    /// Attempts of one blob store call before the event is given back for a later replay.
    pub janitor_max_attempts: u32,
    /// Delay before the first retry of a blob store call.
    pub janitor_initial_backoff_ms: u64,
    /// Cap of the delay between retries of a blob store call.
    pub janitor_max_backoff_ms: u64,
    /// Cap of the delay before a failed control group restarts and replays.
    pub restart_backoff_max_ms: u64,
}

impl ControlConfig {
    fn validate(&self, errors: &mut Vec<ValidationError>) {
        if self.consumer_group.trim().is_empty() {
            errors.push(ValidationError::Empty { key: "control.consumer_group" });
        }
        for (key, value) in [
            ("control.max_backlog", self.max_backlog),
            ("control.janitor_max_attempts", u64::from(self.janitor_max_attempts)),
            ("control.janitor_max_backoff_ms", self.janitor_max_backoff_ms),
            ("control.restart_backoff_max_ms", self.restart_backoff_max_ms),
        ] {
            if value == 0 {
                errors.push(ValidationError::Zero { key });
            }
        }
        if self.janitor_initial_backoff_ms > self.janitor_max_backoff_ms {
            errors.push(ValidationError::Greater {
                key: "control.janitor_initial_backoff_ms",
                value: self.janitor_initial_backoff_ms,
                other: "control.janitor_max_backoff_ms",
                other_value: self.janitor_max_backoff_ms,
            });
        }
    }
}

impl Config {
    /// Loads the defaults, then `file` over them, then the environment as read by `env`. Does not
    /// validate: apply command-line flags, then call [`Config::validate`].
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                Self::from_toml_str(&path.display().to_string(), &text)?
            }
            None => Self::from_toml_str("config/default.toml", "")?,
        };
        config.apply_env(env)?;
        Ok(config)
    }

    /// Parses `text` (named `origin` in errors) over the built-in defaults: it only needs the keys it
    /// changes, and any key the defaults do not have is rejected by name.
    pub fn from_toml_str(origin: &str, text: &str) -> Result<Self, ConfigError> {
        let mut base: toml::Table = toml::from_str(DEFAULT_TOML).map_err(|e| ConfigError::Syntax {
            origin: "config/default.toml".to_owned(),
            message: one_line(&e.to_string()),
        })?;
        let over: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax { origin: origin.to_owned(), message: one_line(&e.to_string()) })?;
        merge(&mut base, over, "", origin)?;
        toml::Value::Table(base).try_into().map_err(|e: toml::de::Error| {
            let message = one_line(&e.to_string());
            // deny_unknown_fields is a second guard: `merge` already rejects unknown keys.
            ConfigError::Type { origin: origin.to_owned(), message }
        })
    }

    /// Applies the environment variables that the reference Matyan reads. Empty values count as unset.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |var: &str| env(var).filter(|v| !v.is_empty());
        if let Some(v) = get("FDB_CLUSTER_FILE") {
            self.storage.fdb_cluster_file = PathBuf::from(v);
        }
        if let Some(v) = get("INGEST_MAX_TXN_BYTES") {
            self.ingest.max_txn_bytes = parse_env("INGEST_MAX_TXN_BYTES", v, "a non-negative integer")?;
        }
        if let Some(v) = get("INGEST_MAX_MESSAGES_PER_TXN") {
            self.ingest.max_messages_per_txn = parse_env("INGEST_MAX_MESSAGES_PER_TXN", v, "a non-negative integer")?;
        }
        if let Some(v) = get("FDB_RETRY_MAX_ATTEMPTS") {
            self.storage.retry.max_attempts = parse_env("FDB_RETRY_MAX_ATTEMPTS", v, "a non-negative integer")?;
        }
        if let Some(v) = get("FDB_RETRY_INITIAL_DELAY_SEC") {
            self.storage.retry.initial_backoff_ms = parse_seconds_as_ms("FDB_RETRY_INITIAL_DELAY_SEC", v)?;
        }
        if let Some(v) = get("FDB_RETRY_MAX_DELAY_SEC") {
            self.storage.retry.max_backoff_ms = parse_seconds_as_ms("FDB_RETRY_MAX_DELAY_SEC", v)?;
        }
        if let Some(v) = get("METRICS_PORT") {
            self.metrics.port = parse_env("METRICS_PORT", v, "a port number 0-65535")?;
        }
        if let Some(v) = get("METRICS_ENABLED") {
            self.metrics.enabled = parse_bool("METRICS_ENABLED", v)?;
        }
        if let Some(v) = get("KAFKA_BOOTSTRAP_SERVERS") {
            self.kafka.bootstrap_servers = v;
        }
        if let Some(v) = get("KAFKA_DATA_INGESTION_TOPIC") {
            self.kafka.data_ingestion_topic = v;
        }
        if let Some(v) = get("KAFKA_CONTROL_EVENTS_TOPIC") {
            self.kafka.control_events_topic = v;
        }
        if let Some(v) = get("KAFKA_SECURITY_PROTOCOL") {
            self.kafka.security_protocol = v;
        }
        if let Some(v) = get("KAFKA_SASL_MECHANISM") {
            self.kafka.sasl_mechanism = v;
        }
        if let Some(v) = get("KAFKA_SASL_USERNAME") {
            self.kafka.sasl_username = v;
        }
        if let Some(v) = get("KAFKA_SASL_PASSWORD") {
            self.kafka.sasl_password = v;
        }
        if let Some(v) = get("CORS_ORIGINS") {
            self.server.cors_origins = parse_list("CORS_ORIGINS", v)?;
        }
        if let Some(v) = get("BLOB_URI_SECRET") {
            self.blobs.uri_secret = v;
        }
        if let Some(v) = get("S3_PRESIGN_EXPIRY") {
            self.gateway.upload_expiry_secs = parse_env("S3_PRESIGN_EXPIRY", v, "a non-negative integer")?;
        }
        if let Some(v) = get("MATYAN_UI_API_HOST_BASE") {
            self.ui.api_host_base = v;
        }
        if let Some(v) = get("MATYAN_UI_API_BASE_PATH") {
            self.ui.api_base_path = v;
        }
        if let Some(v) = get("MATYAN_UI_BASE_PATH") {
            self.ui.base_path = v;
        }
        if let Some(v) = get("MATYAN_UI_API_AUTH_TOKEN") {
            self.ui.api_auth_token = v;
        }
        if let Some(v) = get("BLOB_BACKEND_TYPE") {
            self.blobs.backend = match v.trim().to_ascii_lowercase().as_str() {
                "local" => BlobBackend::Local,
                "s3" => BlobBackend::S3,
                _ => return Err(ConfigError::Env { var: "BLOB_BACKEND_TYPE", value: v, expected: "local or s3" }),
            };
        }
        if let Some(v) = get("S3_ENDPOINT") {
            self.blobs.s3_endpoint = v;
        }
        if let Some(v) = get("S3_PUBLIC_ENDPOINT") {
            self.blobs.s3_public_endpoint = v;
        }
        if let Some(v) = get("S3_BUCKET") {
            self.blobs.s3_bucket = v;
        }
        if let Some(v) = get("S3_REGION") {
            self.blobs.s3_region = v;
        }
        if let Some(v) = get("S3_ACCESS_KEY") {
            self.blobs.s3_access_key = v;
        }
        if let Some(v) = get("S3_SECRET_KEY") {
            self.blobs.s3_secret_key = v;
        }
        if let Some(v) = get("MATYAN_ENVIRONMENT") {
            self.environment = match v.trim().to_ascii_lowercase().as_str() {
                "development" => Environment::Development,
                "production" => Environment::Production,
                _ => {
                    return Err(ConfigError::Env {
                        var: "MATYAN_ENVIRONMENT",
                        value: v,
                        expected: "development or production",
                    });
                }
            };
        }
        if let Some(v) = get("TOMBSTONE_CLEANUP_OLDER_THAN_HOURS") {
            self.maintenance.tombstone_older_than_hours =
                parse_env("TOMBSTONE_CLEANUP_OLDER_THAN_HOURS", v, "a non-negative integer")?;
        }
        Ok(())
    }

    /// Checks every value against what the rest of the program and FoundationDB can do, returning
    /// every problem found. Pure: no IO, no environment. Each section checks its own keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.version != CONFIG_VERSION {
            errors.push(ValidationError::UnsupportedVersion {
                key: "version",
                value: self.version,
                supported: CONFIG_VERSION,
            });
        }
        self.server.validate(&mut errors);
        self.storage.validate(&mut errors);
        self.ingest.validate(&mut errors);
        self.kafka.validate(&mut errors);
        self.query.validate(&mut errors);
        self.gateway.validate(&mut errors);
        self.queue.validate(&mut errors);
        self.ui.validate(&mut errors);
        self.blobs.validate(self.environment, &mut errors);
        self.maintenance.validate(&mut errors);
        self.control.validate(&mut errors);
        if errors.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(errors)) }
    }
}

/// Pushes `Zero` for 0 and `AboveFdbLimit` for an age FoundationDB's transaction would not outlive.
fn check_age_ms(key: &'static str, ms: u64, errors: &mut Vec<ValidationError>) {
    if ms == 0 {
        errors.push(ValidationError::Zero { key });
    } else if !Limits::FDB.within_lifetime(Duration::from_millis(ms)) {
        let limit = Limits::FDB.txn_lifetime.as_millis() as u64;
        errors.push(ValidationError::AboveFdbLimit { key, value: ms, limit, unit: "ms" });
    }
}

/// Pushes `BelowMin` for a value under `min` and `AboveMax` for one over `max`.
fn check_between(key: &'static str, value: u64, min: u64, max: u64, errors: &mut Vec<ValidationError>) {
    if value < min {
        errors.push(ValidationError::BelowMin { key, value, min });
    } else if value > max {
        errors.push(ValidationError::AboveMax { key, value, max });
    }
}

/// Pushes `Zero` for 0 and `AboveFdbLimit` for more bytes than one FoundationDB transaction takes.
fn check_txn_bytes(key: &'static str, bytes: u64, errors: &mut Vec<ValidationError>) {
    let limit = Limits::FDB.max_txn_bytes as u64;
    if bytes == 0 {
        errors.push(ValidationError::Zero { key });
    } else if bytes > limit {
        errors.push(ValidationError::AboveFdbLimit { key, value: bytes, limit, unit: "byte" });
    }
}

/// A byte count of the configuration, read as the `usize` the code budgets in. Validation keeps
/// every one of them under FoundationDB's 10,000,000 bytes, so on 64-bit targets nothing is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The count as bytes in memory, saturating on a target whose `usize` is narrower.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl BlobsConfig {
    /// The S3 connect timeout as a duration.
    pub fn s3_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.s3_connect_timeout_ms)
    }

    /// The limit of one S3 request attempt as a duration.
    pub fn s3_attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.s3_attempt_timeout_ms)
    }
}

/// Whether `secret` is a blob URI key: URL-safe base64 of 32 bytes (a Fernet key), surrounding
/// blanks ignored. The format belongs to the configuration; `blobs::uri` uses keys that pass it.
pub fn is_uri_secret(secret: &str) -> bool {
    fernet::Fernet::new(secret.trim()).is_some()
}

impl ServerConfig {
    fn validate(&self, errors: &mut Vec<ValidationError>) {
        if self.host.trim().is_empty() {
            errors.push(ValidationError::Empty { key: "server.host" });
        }
    }
}

impl StorageConfig {
    fn validate(&self, errors: &mut Vec<ValidationError>) {
        if self.data_dir.as_os_str().is_empty() {
            errors.push(ValidationError::Empty { key: "storage.data_dir" });
        }
        if self.backend == Backend::Fdb && !cfg!(feature = "fdb") {
            errors.push(ValidationError::FdbNotBuilt { key: "storage.backend" });
        }
        self.retry.validate(errors);
        if self.cache_bytes < MIN_CACHE_BYTES {
            errors.push(ValidationError::BelowMin {
                key: "storage.cache_bytes",
                value: self.cache_bytes,
                min: MIN_CACHE_BYTES,
            });
        }
        check_between("storage.memtable_bytes", self.memtable_bytes, MIN_MEMTABLE_BYTES, MAX_MEMTABLE_BYTES, errors);
        if self.engine_threads == 0 {
            errors.push(ValidationError::Zero { key: "storage.engine_threads" });
        } else if u64::from(self.engine_threads) > MAX_ENGINE_THREADS {
            errors.push(ValidationError::AboveMax {
                key: "storage.engine_threads",
                value: u64::from(self.engine_threads),
                max: MAX_ENGINE_THREADS,
            });
        }
        check_between("storage.journal_bytes", self.journal_bytes, MIN_JOURNAL_BYTES, MAX_JOURNAL_BYTES, errors);
        // 0 turns the trim off.
        if self.memory_trim_ms != 0 {
            check_between(
                "storage.memory_trim_ms",
                self.memory_trim_ms,
                MIN_MEMORY_TRIM_MS,
                MAX_MEMORY_TRIM_MS,
                errors,
            );
        }
    }
}

/// Smallest `storage.cache_bytes`: below it not even the index blocks of a small store stay cached.
const MIN_CACHE_BYTES: u64 = 1 << 20;
/// Smallest `storage.memtable_bytes`: a smaller memtable flushes a table file for every few
/// transactions.
const MIN_MEMTABLE_BYTES: u64 = 1 << 20;
/// Largest `storage.memtable_bytes`: writes hold up to five memtables (fjall stalls writes at four
/// sealed ones waiting for their flush), so this caps them at 1.25 GiB.
const MAX_MEMTABLE_BYTES: u64 = 256 << 20;
/// Largest `storage.journal_bytes`: a crash replays up to this much at the next open (an 85 MB
/// journal took 4–8 s).
const MAX_JOURNAL_BYTES: u64 = 4 << 30;
/// Most `storage.engine_threads`: fjall's own default is one per core up to four.
const MAX_ENGINE_THREADS: u64 = 64;
/// Shortest nonzero `storage.memory_trim_ms`: a trim locks each of the allocator's arenas in
/// turn and takes milliseconds on a large heap.
const MIN_MEMORY_TRIM_MS: u64 = 100;
/// Longest `storage.memory_trim_ms` (an hour).
const MAX_MEMORY_TRIM_MS: u64 = 3_600_000;

impl RetryConfig {
    fn validate(&self, errors: &mut Vec<ValidationError>) {
        if self.max_attempts == 0 {
            errors.push(ValidationError::Zero { key: "storage.retry.max_attempts" });
        }
        if self.timeout_ms == 0 {
            errors.push(ValidationError::Zero { key: "storage.retry.timeout_ms" });
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            errors.push(ValidationError::Greater {
                key: "storage.retry.initial_backoff_ms",
                value: self.initial_backoff_ms,
                other: "storage.retry.max_backoff_ms",
                other_value: self.max_backoff_ms,
            });
        }
    }
}

impl IngestConfig {
    fn validate(&self, errors: &mut Vec<ValidationError>) {
        check_txn_bytes("ingest.max_txn_bytes", self.max_txn_bytes, errors);
        if self.max_messages_per_txn == 0 {
            errors.push(ValidationError::Zero { key: "ingest.max_messages_per_txn" });
        }
        if self.run_idle_timeout_ms == 0 {
            errors.push(ValidationError::Zero { key: "ingest.run_idle_timeout_ms" });
        }
        if self.max_run_actors_per_partition == 0 {
            errors.push(ValidationError::Zero { key: "ingest.max_run_actors_per_partition" });
        }
        check_age_ms("ingest.max_txn_age_ms", self.max_txn_age_ms, errors);
    }
}

impl KafkaConfig {
    fn validate(&self, errors: &mut Vec<ValidationError>) {
        for (key, value) in [
            ("kafka.bootstrap_servers", &self.bootstrap_servers),
            ("kafka.data_ingestion_topic", &self.data_ingestion_topic),
            ("kafka.control_events_topic", &self.control_events_topic),
            ("kafka.consumer_group", &self.consumer_group),
            ("kafka.dead_letter_topic", &self.dead_letter_topic),
        ] {
            if value.trim().is_empty() {
                errors.push(ValidationError::Empty { key });
            }
        }
        if !KAFKA_SECURITY_PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(self.security_protocol.trim())) {
            errors.push(ValidationError::NotOneOf {
                key: "kafka.security_protocol",
                value: self.security_protocol.clone(),
                allowed: &KAFKA_SECURITY_PROTOCOLS,
            });
        }
        let mechanism = self.sasl_mechanism.trim();
        if !mechanism.is_empty() && !KAFKA_SASL_MECHANISMS.iter().any(|m| m.eq_ignore_ascii_case(mechanism)) {
            errors.push(ValidationError::NotOneOf {
                key: "kafka.sasl_mechanism",
                value: self.sasl_mechanism.clone(),
                allowed: &KAFKA_SASL_MECHANISMS,
            });
        }
        if self.sasl_username.is_empty() != self.sasl_password.is_empty() {
            errors.push(ValidationError::Unpaired { key: "kafka.sasl_username", other: "kafka.sasl_password" });
        }
        if self.session_timeout_ms == 0 {
            errors.push(ValidationError::Zero { key: "kafka.session_timeout_ms" });
        }
        if self.heartbeat_interval_ms == 0 {
            errors.push(ValidationError::Zero { key: "kafka.heartbeat_interval_ms" });
        } else if self.heartbeat_interval_ms >= self.session_timeout_ms && self.session_timeout_ms > 0 {
            errors.push(ValidationError::Greater {
                key: "kafka.heartbeat_interval_ms",
                value: self.heartbeat_interval_ms,
                other: "kafka.session_timeout_ms",
                other_value: self.session_timeout_ms,
            });
        }
    }
}

/// The most series of one run a request may read at once: each holds its points in memory until
/// its turn to be answered.
const MAX_CONCURRENT_SERIES_READS: u32 = 256;

impl QueryConfig {
    fn validate(&self, errors: &mut Vec<ValidationError>) {
        if self.max_keys_per_request == 0 {
            errors.push(ValidationError::Zero { key: "query.max_keys_per_request" });
        }
        if self.max_request_time_ms == 0 {
            errors.push(ValidationError::Zero { key: "query.max_request_time_ms" });
        }
        if self.max_value_bytes == 0 {
            errors.push(ValidationError::Zero { key: "query.max_value_bytes" });
        }
        if self.max_concurrent_heavy_requests == 0 {
            errors.push(ValidationError::Zero { key: "query.max_concurrent_heavy_requests" });
        }
        if self.max_concurrent_series_reads == 0 {
            errors.push(ValidationError::Zero { key: "query.max_concurrent_series_reads" });
        } else if self.max_concurrent_series_reads > MAX_CONCURRENT_SERIES_READS {
            errors.push(ValidationError::AboveMax {
                key: "query.max_concurrent_series_reads",
                value: u64::from(self.max_concurrent_series_reads),
                max: u64::from(MAX_CONCURRENT_SERIES_READS),
            });
        }
        check_age_ms("query.snapshot_max_age_ms", self.snapshot_max_age_ms, errors);
        check_between("query.stream_chunk_bytes", self.stream_chunk_bytes, 1, Self::MAX_STREAM_CHUNK_BYTES, errors);
        check_between(
            "query.stream_chunk_max_age_ms",
            self.stream_chunk_max_age_ms,
            1,
            Self::MAX_STREAM_CHUNK_MAX_AGE_MS,
            errors,
        );
        if self.run_search_kept_bytes > Self::MAX_RUN_SEARCH_KEPT_BYTES {
            errors.push(ValidationError::AboveMax {
                key: "query.run_search_kept_bytes",
                value: self.run_search_kept_bytes,
                max: Self::MAX_RUN_SEARCH_KEPT_BYTES,
            });
        }
    }
}

impl UiConfig {
    fn validate(&self, errors: &mut Vec<ValidationError>) {
        if !self.api_host_base.is_empty() && !is_host_base(&self.api_host_base) {
            errors.push(ValidationError::Malformed {
                key: "ui.api_host_base",
                value: self.api_host_base.clone(),
                expected: "empty or an http:// or https:// url without a trailing /",
            });
        }
        if self.api_base_path.is_empty() || !is_url_path(&self.api_base_path) {
            errors.push(ValidationError::Malformed {
                key: "ui.api_base_path",
                value: self.api_base_path.clone(),
                expected: "a path starting with / without a trailing /",
            });
        }
        if !self.base_path.is_empty() && !is_url_path(&self.base_path) {
            errors.push(ValidationError::Malformed {
                key: "ui.base_path",
                value: self.base_path.clone(),
                expected: "empty or a path starting with / without a trailing /",
            });
        }
    }
}

impl BlobsConfig {
    /// The URI key, the S3 settings when `blobs.backend = "s3"`, and the development values
    /// refused in production (the reference's `validate_production_settings`).
    fn validate(&self, environment: Environment, errors: &mut Vec<ValidationError>) {
        if !is_uri_secret(&self.uri_secret) {
            errors.push(ValidationError::NotAKey { key: "blobs.uri_secret" });
        }
        let production = environment == Environment::Production;
        if production && self.uri_secret.trim() == dev_defaults::BLOB_URI_SECRET {
            errors.push(ValidationError::DevelopmentDefaultInProduction {
                key: "blobs.uri_secret",
                var: "BLOB_URI_SECRET",
            });
        }
        if self.backend != BlobBackend::S3 {
            return;
        }
        for (key, value) in [
            ("blobs.s3_bucket", &self.s3_bucket),
            ("blobs.s3_region", &self.s3_region),
            ("blobs.s3_access_key", &self.s3_access_key),
            ("blobs.s3_secret_key", &self.s3_secret_key),
        ] {
            if value.trim().is_empty() {
                errors.push(ValidationError::Empty { key });
            }
        }
        for (key, value) in
            [("blobs.s3_endpoint", &self.s3_endpoint), ("blobs.s3_public_endpoint", &self.s3_public_endpoint)]
        {
            if !value.is_empty() && !is_host_base(value) {
                errors.push(ValidationError::NotAUrl { key });
            }
        }
        for (key, value) in [
            ("blobs.s3_max_attempts", u64::from(self.s3_max_attempts)),
            ("blobs.s3_connect_timeout_ms", self.s3_connect_timeout_ms),
            ("blobs.s3_attempt_timeout_ms", self.s3_attempt_timeout_ms),
        ] {
            if value == 0 {
                errors.push(ValidationError::Zero { key });
            }
        }
        if production {
            for (key, var, value, dev) in [
                ("blobs.s3_access_key", "S3_ACCESS_KEY", &self.s3_access_key, dev_defaults::S3_CREDENTIAL),
                ("blobs.s3_secret_key", "S3_SECRET_KEY", &self.s3_secret_key, dev_defaults::S3_CREDENTIAL),
                ("blobs.s3_endpoint", "S3_ENDPOINT", &self.s3_endpoint, dev_defaults::S3_ENDPOINT),
            ] {
                if value.trim() == dev {
                    errors.push(ValidationError::DevelopmentDefaultInProduction { key, var });
                }
            }
        }
    }
}

/// A URL path the UI can prefix to its own: `/a/b`, no trailing `/`, no empty or dot segments,
/// nothing that would end the path (`?`, `#`) or need quoting in the page.
fn is_url_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    rest.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$()*+,;=:@%".contains(&b))
    })
}

/// An origin (with an optional path) the UI can prefix to the API path: `http(s)://authority[/path]`.
fn is_host_base(base: &str) -> bool {
    let Some(rest) = base.strip_prefix("http://").or_else(|| base.strip_prefix("https://")) else {
        return false;
    };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    !authority.is_empty()
        && authority.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b))
        && path.is_none_or(|p| is_url_path(&format!("/{p}")))
}

/// Overlays `over` on `base` table by table; a key `base` lacks is unknown.
fn merge(base: &mut toml::Table, over: toml::Table, prefix: &str, origin: &str) -> Result<(), ConfigError> {
    for (name, value) in over {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        match base.get_mut(&name) {
            None => return Err(ConfigError::UnknownKey { origin: origin.to_owned(), key }),
            Some(toml::Value::Table(sub)) => match value {
                toml::Value::Table(over_sub) => merge(sub, over_sub, &key, origin)?,
                other => {
                    return Err(ConfigError::Type {
                        origin: origin.to_owned(),
                        message: format!("{key}: expected a table, found {}", other.type_str()),
                    });
                }
            },
            Some(slot) => *slot = value,
        }
    }
    Ok(())
}

/// TOML errors span several lines (a source excerpt); logs want one.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "|").collect::<Vec<_>>().join(" ")
}

fn parse_env<T: std::str::FromStr>(var: &'static str, value: String, expected: &'static str) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::Env { var, value, expected })
}

fn parse_seconds_as_ms(var: &'static str, value: String) -> Result<u64, ConfigError> {
    let expected = "a non-negative number of seconds";
    match value.trim().parse::<f64>() {
        Ok(secs) if (0.0..1e9).contains(&secs) => Ok((secs * 1000.0).round() as u64),
        _ => Err(ConfigError::Env { var, value, expected }),
    }
}

fn parse_bool(var: &'static str, value: String) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Env { var, value, expected: "a boolean (true/false/1/0)" }),
    }
}

/// A JSON list of strings (the reference's format) or a comma-separated list.
fn parse_list(var: &'static str, value: String) -> Result<Vec<String>, ConfigError> {
    if value.trim_start().starts_with('[') {
        serde_json::from_str(&value).map_err(|_| ConfigError::Env {
            var,
            value,
            expected: "a JSON list of strings or a comma-separated list",
        })
    } else {
        Ok(value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn invalid_keys(config: &Config) -> Vec<&'static str> {
        match config.validate() {
            Err(ConfigError::Invalid(errors)) => errors.iter().map(ValidationError::key).collect(),
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn the_code_defaults_are_the_built_in_configuration() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.storage.retry.options(), RetryOptions::default(), "[storage.retry]");
        let budget = crate::ingest::BatchBudget::from_config(&c.ingest);
        assert_eq!(budget, crate::ingest::BatchBudget::default(), "[ingest]");
        let pipeline = crate::actors::PipelineConfig::from_config(&c);
        let code = crate::actors::PipelineConfig::default();
        assert_eq!(pipeline.retry, code.retry);
        assert_eq!(pipeline.run_idle_timeout, code.run_idle_timeout);
        assert_eq!(pipeline.topic, code.topic);
        assert_eq!(pipeline.max_run_actors_per_partition, code.max_run_actors_per_partition);
        assert_eq!(c.storage.embedded_options(), EmbeddedOptions::default(), "[storage] caches");
    }

    #[test]
    fn the_engine_memory_settings_are_read_and_refused_out_of_their_bounds_by_name() {
        let c =
            Config::from_toml_str("f.toml", "[storage]\ncache_bytes = 8388608\nmemtable_bytes = 4194304\n").unwrap();
        c.validate().unwrap();
        assert_eq!((c.storage.cache(), c.storage.memtable()), (ByteSize(8 << 20), ByteSize(4 << 20)));
        assert_eq!(
            c.storage.embedded_options(),
            EmbeddedOptions {
                cache_bytes: 8 << 20,
                memtable_bytes: 4 << 20,
                engine_threads: 2,
                memory_trim_ms: 1000,
                journal_bytes: 256 << 20
            }
        );
        let c = Config::from_toml_str("f.toml", "[storage]\ncache_bytes = 1000\nmemtable_bytes = 1000\n").unwrap();
        assert_eq!(invalid_keys(&c), vec!["storage.cache_bytes", "storage.memtable_bytes"]);
        let c = Config::from_toml_str("f.toml", "[storage]\nmemtable_bytes = 1073741824\n").unwrap();
        assert_eq!(invalid_keys(&c), vec!["storage.memtable_bytes"]);
        // fjall panics below 64 MiB of journal; past 4 GiB a crash replays too much.
        for journal in [(64 << 20) - 1, (4u64 << 30) + 1] {
            let c = Config::from_toml_str("f.toml", &format!("[storage]\njournal_bytes = {journal}\n")).unwrap();
            assert_eq!(invalid_keys(&c), vec!["storage.journal_bytes"], "{journal}");
        }
        for threads in [0, 65] {
            let c = Config::from_toml_str("f.toml", &format!("[storage]\nengine_threads = {threads}\n")).unwrap();
            assert_eq!(invalid_keys(&c), vec!["storage.engine_threads"], "{threads} threads");
        }
        let c = Config::from_toml_str("f.toml", "[storage]\nengine_threads = 4\n").unwrap();
        assert_eq!(c.storage.embedded_options().engine_threads, 4);
        for trim in [1, 99, 3_600_001] {
            let c = Config::from_toml_str("f.toml", &format!("[storage]\nmemory_trim_ms = {trim}\n")).unwrap();
            assert_eq!(invalid_keys(&c), vec!["storage.memory_trim_ms"], "{trim} ms");
        }
        for trim in [0, 100, 3_600_000] {
            let c = Config::from_toml_str("f.toml", &format!("[storage]\nmemory_trim_ms = {trim}\n")).unwrap();
            c.validate().unwrap();
            assert_eq!(c.storage.embedded_options().memory_trim_ms, trim);
        }
    }

    #[test]
    fn typed_budgets_read_the_configured_values() {
        let c = Config::from_toml_str(
            "f.toml",
            "[ingest]\nmax_txn_bytes = 2000000\n[maintenance]\nmax_txn_bytes = 300\nlock_ttl_seconds = 60\n\
             [gateway]\nkafka_delivery_timeout_ms = 1500\nkafka_linger_ms = 7\nupload_expiry_secs = 90\n\
             [blobs]\ns3_connect_timeout_ms = 250\ns3_attempt_timeout_ms = 4000\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!((c.ingest.txn_bytes().as_usize(), c.maintenance.txn_bytes()), (2_000_000, ByteSize(300)));
        assert_eq!(c.maintenance.lock_ttl(), Duration::from_secs(60));
        let g = &c.gateway;
        assert_eq!(
            (g.kafka_delivery_timeout(), g.kafka_linger(), g.upload_expiry()),
            (Duration::from_millis(1500), Duration::from_millis(7), Duration::from_secs(90))
        );
        assert_eq!(
            (c.blobs.s3_connect_timeout(), c.blobs.s3_attempt_timeout()),
            (Duration::from_millis(250), Duration::from_secs(4))
        );
    }

    #[test]
    fn the_uri_secret_format_is_the_one_the_blob_uris_accept() {
        for secret in [dev_defaults::BLOB_URI_SECRET, "short", "", "Juw5-cLlemQI2jAWvceOUB3_CrVfBmI99YIzkpGUXR4"] {
            assert_eq!(is_uri_secret(secret), crate::blobs::uri::check_secret(secret).is_ok(), "{secret:?}");
        }
    }

    #[test]
    fn defaults_parse_and_validate_with_documented_values() {
        let c = Config::load(None, no_env).unwrap();
        c.validate().unwrap();
        assert_eq!(c, Config::from_toml_str("none", "").unwrap());
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.server.port, 53800);
        assert_eq!(c.storage.backend, Backend::Embedded);
        assert_eq!(c.storage.engine, EmbeddedEngine::Fjall);
        assert_eq!(c.storage.data_dir, PathBuf::from("./matyan-data"));
        assert_eq!(c.storage.fdb_cluster_file(), None);
        assert_eq!(c.ingest.max_txn_bytes, 1_000_000);
        assert_eq!(c.ingest.max_messages_per_txn, 5_000);
        assert_eq!(c.ingest.max_txn_age(), Duration::from_millis(100));
        assert_eq!(c.ingest.run_idle_timeout(), Duration::from_secs(30));
        assert!(!c.ingest.chaos, "chaos is off unless asked for");
        assert_eq!(c.storage.retry.max_attempts, 5);
        assert_eq!(c.storage.retry.options().retry_limit, 4);
        assert_eq!(c.kafka.data_ingestion_topic, "data-ingestion");
        assert_eq!(c.kafka.control_events_topic, "control-events");
        assert!(c.metrics.enabled);
        assert_eq!(c.server.cors_origins.len(), 6);
        assert_eq!(c.blobs.uri_secret, "Juw5-cLlemQI2jAWvceOUB3_CrVfBmI99YIzkpGUXR4=", "the reference's dev key");
        assert_eq!(crate::blobs::local_dir(&c), PathBuf::from("./matyan-data/blobs"));
        assert!(!format!("{c:?}").contains("Juw5"), "debug output hides the uri secret");
    }

    #[test]
    fn blob_settings_come_from_file_and_environment_and_a_bad_secret_fails() {
        let c = Config::from_toml_str("f.toml", "[blobs]\ndir = \"/srv/blobs\"\n").unwrap();
        assert_eq!(crate::blobs::local_dir(&c), PathBuf::from("/srv/blobs"));
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let c = Config::load(None, env_of(&[("BLOB_URI_SECRET", key)])).unwrap();
        c.validate().unwrap();
        assert_eq!(c.blobs.uri_secret, key);
        // 16 bytes, not base64, empty: each names the key.
        for bad in ["AAECAwQFBgcICQoLDA0ODw==", "not a key", ""] {
            let c = Config::from_toml_str("f.toml", &format!("[blobs]\nuri_secret = \"{bad}\"\n")).unwrap();
            assert_eq!(invalid_keys(&c), vec!["blobs.uri_secret"], "{bad:?}");
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("blobs.uri_secret: must be url-safe base64 of 32 bytes"), "{err}");
        }
    }

    #[test]
    fn ingest_chaos_and_idle_timeout_are_configurable_and_a_zero_timeout_is_rejected() {
        let c = Config::from_toml_str("f.toml", "[ingest]\nchaos = true\nrun_idle_timeout_ms = 0\n").unwrap();
        assert!(c.ingest.chaos);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("ingest.run_idle_timeout_ms: must be at least 1"), "{err}");
    }

    #[test]
    fn every_default_option_is_documented_by_a_comment() {
        // Each `key = value` line of default.toml follows a comment line (or a continued list).
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if t.contains(" = ") && !t.starts_with('#') && !t.starts_with('"') {
                assert!(i > 0 && lines[i - 1].trim().starts_with('#'), "undocumented option: {t}");
            }
        }
    }

    #[test]
    fn a_partial_file_overrides_only_its_keys() {
        let c = Config::from_toml_str("f.toml", "[ingest]\nmax_txn_bytes = 500000\n[storage]\nengine = \"redb\"\n")
            .unwrap();
        assert_eq!(c.ingest.max_txn_bytes, 500_000);
        assert_eq!(c.ingest.max_messages_per_txn, 5_000);
        assert_eq!(c.storage.engine, EmbeddedEngine::Redb);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_key_fails_naming_the_key() {
        let err = Config::from_toml_str("f.toml", "[storage]\nretry_max = 3\n").unwrap_err();
        assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "storage.retry_max"), "{err}");
        assert!(err.to_string().contains("storage.retry_max"), "{err}");

        let err = Config::from_toml_str("f.toml", "[storage.retry]\nmax_attempt = 3\n").unwrap_err();
        assert!(err.to_string().contains("storage.retry.max_attempt: unknown key"), "{err}");

        let err = Config::from_toml_str("f.toml", "colour = \"red\"\n").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn wrong_type_and_bad_port_fail_naming_the_key() {
        let err = Config::from_toml_str("f.toml", "[server]\nport = 70000\n").unwrap_err();
        assert!(matches!(err, ConfigError::Type { .. }));
        assert!(err.to_string().contains("server.port"), "{err}");

        let err = Config::from_toml_str("f.toml", "[server]\nport = \"http\"\n").unwrap_err();
        assert!(err.to_string().contains("server.port"), "{err}");

        let err = Config::from_toml_str("f.toml", "[storage]\nbackend = \"postgres\"\n").unwrap_err();
        assert!(err.to_string().contains("storage.backend"), "{err}");

        let err = Config::from_toml_str("f.toml", "server = 3\n").unwrap_err();
        assert!(err.to_string().contains("server: expected a table"), "{err}");
    }

    #[test]
    fn invalid_toml_fails_with_the_file_name() {
        let err = Config::from_toml_str("f.toml", "[server\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }));
        assert!(err.to_string().starts_with("f.toml: invalid toml"), "{err}");
    }

    #[test]
    fn zero_budgets_fail_naming_each_key() {
        let c = Config::from_toml_str(
            "f.toml",
            "[ingest]\nmax_txn_bytes = 0\nmax_messages_per_txn = 0\nmax_txn_age_ms = 0\n[storage.retry]\nmax_attempts = 0\n",
        )
        .unwrap();
        assert_eq!(
            invalid_keys(&c),
            vec![
                "storage.retry.max_attempts",
                "ingest.max_txn_bytes",
                "ingest.max_messages_per_txn",
                "ingest.max_txn_age_ms"
            ]
        );
    }

    #[test]
    fn budgets_above_foundationdb_limits_fail() {
        let c = Config::from_toml_str("f.toml", "[ingest]\nmax_txn_bytes = 20000000\nmax_txn_age_ms = 5000\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("ingest.max_txn_bytes: 20000000 exceeds FoundationDB's 10000000-byte transaction limit"),
            "{err}"
        );
        assert!(err.contains("ingest.max_txn_age_ms: 5000 exceeds FoundationDB's 5000-ms transaction limit"), "{err}");

        // Exactly at the byte limit is allowed (the reference's 8 MiB default carries over).
        let c = Config::from_toml_str("f.toml", "[ingest]\nmax_txn_bytes = 10000000\n").unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn query_budgets_and_snapshot_age_must_be_positive_and_the_age_below_the_read_version_lifetime() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.query.max_keys_per_request, 50_000_000);
        assert_eq!(c.query.max_request_time(), Duration::from_secs(120));
        assert_eq!(c.query.snapshot_max_age(), Duration::from_secs(3));
        let c = Config::from_toml_str(
            "f.toml",
            "[query]\nmax_keys_per_request = 0\nmax_request_time_ms = 0\nsnapshot_max_age_ms = 0\n",
        )
        .unwrap();
        assert_eq!(
            invalid_keys(&c),
            vec!["query.max_keys_per_request", "query.max_request_time_ms", "query.snapshot_max_age_ms"]
        );
        for (fixture, message) in [
            ("[query]\nsnapshot_max_age_ms = 0\n", "query.snapshot_max_age_ms: must be at least 1"),
            (
                "[query]\nsnapshot_max_age_ms = 5000\n",
                "query.snapshot_max_age_ms: 5000 exceeds FoundationDB's 5000-ms transaction limit",
            ),
        ] {
            let c = Config::from_toml_str("f.toml", fixture).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(message), "{fixture}: {err}");
        }
        Config::from_toml_str("f.toml", "[query]\nsnapshot_max_age_ms = 4999\n").unwrap().validate().unwrap();
    }

    #[test]
    fn trim_batches_default_to_10000_records_and_are_held_to_their_bounds() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.queue.trim_batch_records, 10_000);
        for bad in ["0", "1000001"] {
            let text = format!("[queue]\ntrim_batch_records = {bad}\n");
            assert_eq!(
                invalid_keys(&Config::from_toml_str("f.toml", &text).unwrap()),
                vec!["queue.trim_batch_records"]
            );
        }
        for edge in ["1", "1000000"] {
            let text = format!("[queue]\ntrim_batch_records = {edge}\n");
            Config::from_toml_str("f.toml", &text).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn stream_chunks_default_to_64_kib_or_20_ms_and_are_held_to_their_bounds() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!((c.query.stream_chunk_bytes, c.query.stream_chunk_max_age_ms), (65_536, 20));
        let low = Config::from_toml_str("f.toml", "[query]\nstream_chunk_bytes = 0\nstream_chunk_max_age_ms = 0\n");
        assert_eq!(invalid_keys(&low.unwrap()), vec!["query.stream_chunk_bytes", "query.stream_chunk_max_age_ms"]);
        let high = "[query]\nstream_chunk_bytes = 16777217\nstream_chunk_max_age_ms = 10001\n";
        assert_eq!(
            invalid_keys(&Config::from_toml_str("f.toml", high).unwrap()),
            vec!["query.stream_chunk_bytes", "query.stream_chunk_max_age_ms"]
        );
        let edges = "[query]\nstream_chunk_bytes = 1\nstream_chunk_max_age_ms = 10000\n";
        Config::from_toml_str("f.toml", edges).unwrap().validate().unwrap();
    }

    #[test]
    fn query_memory_budget_and_heavy_request_limit_default_sanely_and_must_be_positive() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.query.max_value_bytes, 64 << 20);
        assert_eq!(c.query.max_concurrent_heavy_requests, 8);
        let c = Config::from_toml_str("f.toml", "[query]\nmax_value_bytes = 0\nmax_concurrent_heavy_requests = 0\n")
            .unwrap();
        assert_eq!(invalid_keys(&c), vec!["query.max_value_bytes", "query.max_concurrent_heavy_requests"]);
    }

    #[test]
    fn run_search_kept_bytes_defaults_to_16_mib_and_may_be_zero_but_not_above_1_gib() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.query.run_search_kept_bytes, 16 << 20);
        Config::from_toml_str("f.toml", "[query]\nrun_search_kept_bytes = 0\n").unwrap().validate().unwrap();
        let c = Config::from_toml_str("f.toml", "[query]\nrun_search_kept_bytes = 1073741825\n").unwrap();
        assert_eq!(invalid_keys(&c), vec!["query.run_search_kept_bytes"]);
    }

    #[test]
    fn concurrent_series_reads_default_to_eight_and_must_be_between_one_and_256() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.query.max_concurrent_series_reads, 8);
        for bad in [0, 257] {
            let c =
                Config::from_toml_str("f.toml", &format!("[query]\nmax_concurrent_series_reads = {bad}\n")).unwrap();
            assert_eq!(invalid_keys(&c), vec!["query.max_concurrent_series_reads"], "{bad}");
        }
        Config::from_toml_str("f.toml", "[query]\nmax_concurrent_series_reads = 256\n").unwrap().validate().unwrap();
    }

    #[test]
    fn other_impossible_values_fail() {
        let c = Config::from_toml_str(
            "f.toml",
            "version = 2\n[server]\nhost = \"\"\n[storage.retry]\ninitial_backoff_ms = 5000\n[kafka]\ndata_ingestion_topic = \" \"\n",
        )
        .unwrap();
        assert_eq!(
            invalid_keys(&c),
            vec!["version", "server.host", "storage.retry.initial_backoff_ms", "kafka.data_ingestion_topic"]
        );
    }

    #[test]
    fn kafka_session_timeout_and_heartbeat_must_be_positive_and_ordered() {
        let c =
            Config::from_toml_str("f.toml", "[kafka]\nsession_timeout_ms = 0\nheartbeat_interval_ms = 0\n").unwrap();
        assert_eq!(invalid_keys(&c), vec!["kafka.session_timeout_ms", "kafka.heartbeat_interval_ms"]);
        let c = Config::from_toml_str("f.toml", "[kafka]\nsession_timeout_ms = 3000\nheartbeat_interval_ms = 3000\n")
            .unwrap();
        assert_eq!(invalid_keys(&c), vec!["kafka.heartbeat_interval_ms"]);
        let c = Config::from_toml_str("f.toml", "[kafka]\nsession_timeout_ms = 6000\nheartbeat_interval_ms = 300\n")
            .unwrap();
        c.validate().unwrap();
        assert_eq!(Config::load(None, no_env).unwrap().kafka.session_timeout_ms, 45_000);
    }

    #[test]
    fn kafka_security_settings_come_from_the_environment_and_are_checked() {
        let env = |var: &str| {
            match var {
                "KAFKA_SECURITY_PROTOCOL" => Some("SASL_SSL"),
                "KAFKA_SASL_MECHANISM" => Some("SCRAM-SHA-512"),
                "KAFKA_SASL_USERNAME" => Some("matyan"),
                "KAFKA_SASL_PASSWORD" => Some("s3cret"),
                _ => None,
            }
            .map(str::to_owned)
        };
        let c = Config::load(None, env).unwrap();
        c.validate().unwrap();
        assert_eq!(c.kafka.consumer_group, "ingestion-workers");
        assert_eq!(c.kafka.dead_letter_topic, "data-ingestion-dlq");
        assert_eq!(
            (c.kafka.security_protocol.as_str(), c.kafka.sasl_mechanism.as_str(), c.kafka.sasl_username.as_str()),
            ("SASL_SSL", "SCRAM-SHA-512", "matyan")
        );
        assert_eq!(c.kafka.sasl_password, "s3cret");
        assert!(!format!("{:?}", c.kafka).contains("s3cret"), "debug output hides the password");

        let c = Config::from_toml_str(
            "f.toml",
            "[kafka]\nsecurity_protocol = \"tls\"\nsasl_mechanism = \"GSSAPI\"\nsasl_username = \"u\"\n",
        )
        .unwrap();
        assert_eq!(invalid_keys(&c), vec!["kafka.security_protocol", "kafka.sasl_mechanism", "kafka.sasl_username"]);
    }

    #[cfg(not(feature = "fdb"))]
    #[test]
    fn fdb_backend_needs_the_feature() {
        let c = Config::from_toml_str("f.toml", "[storage]\nbackend = \"fdb\"\n").unwrap();
        assert_eq!(invalid_keys(&c), vec!["storage.backend"]);
    }

    #[test]
    fn environment_overrides_with_reference_names() {
        let env = env_of(&[
            ("FDB_CLUSTER_FILE", "/etc/foundationdb/fdb.cluster"),
            ("INGEST_MAX_TXN_BYTES", "8388608"),
            ("INGEST_MAX_MESSAGES_PER_TXN", "50"),
            ("FDB_RETRY_MAX_ATTEMPTS", "3"),
            ("FDB_RETRY_INITIAL_DELAY_SEC", "0.05"),
            ("FDB_RETRY_MAX_DELAY_SEC", "2.0"),
            ("METRICS_PORT", "0"),
            ("METRICS_ENABLED", "false"),
            ("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092"),
            ("KAFKA_DATA_INGESTION_TOPIC", "ingest"),
            ("KAFKA_CONTROL_EVENTS_TOPIC", "control"),
            ("CORS_ORIGINS", "[\"http://a:1\", \"http://b:2\"]"),
        ]);
        let c = Config::load(None, env).unwrap();
        c.validate().unwrap();
        assert_eq!(c.storage.fdb_cluster_file(), Some(Path::new("/etc/foundationdb/fdb.cluster")));
        assert_eq!(c.ingest.max_txn_bytes, 8_388_608);
        assert_eq!(c.ingest.max_messages_per_txn, 50);
        assert_eq!(c.storage.retry.max_attempts, 3);
        assert_eq!(c.storage.retry.initial_backoff_ms, 50);
        assert_eq!(c.storage.retry.max_backoff_ms, 2000);
        assert_eq!(c.metrics.port, 0);
        assert!(!c.metrics.enabled);
        assert_eq!(c.kafka.bootstrap_servers, "kafka:9092");
        assert_eq!(c.kafka.data_ingestion_topic, "ingest");
        assert_eq!(c.kafka.control_events_topic, "control");
        assert_eq!(c.server.cors_origins, vec!["http://a:1", "http://b:2"]);

        let c = Config::load(None, env_of(&[("CORS_ORIGINS", "http://a:1, http://b:2")])).unwrap();
        assert_eq!(c.server.cors_origins, vec!["http://a:1", "http://b:2"]);
    }

    #[test]
    fn bad_environment_values_fail_naming_the_variable() {
        for (var, value) in [
            ("INGEST_MAX_TXN_BYTES", "lots"),
            ("INGEST_MAX_MESSAGES_PER_TXN", "-1"),
            ("FDB_RETRY_MAX_ATTEMPTS", "3.5"),
            ("FDB_RETRY_INITIAL_DELAY_SEC", "-1"),
            ("METRICS_PORT", "70000"),
            ("METRICS_ENABLED", "maybe"),
            ("CORS_ORIGINS", "[1, 2"),
        ] {
            let err = Config::load(None, env_of(&[(var, value)])).unwrap_err();
            assert!(matches!(&err, ConfigError::Env { var: v, .. } if *v == var), "{var}: {err}");
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn environment_budget_above_the_limit_fails_validation() {
        let c = Config::load(None, env_of(&[("INGEST_MAX_TXN_BYTES", "20000000")])).unwrap();
        assert_eq!(invalid_keys(&c), vec!["ingest.max_txn_bytes"]);
    }

    #[test]
    fn empty_environment_values_count_as_unset() {
        let c = Config::load(None, env_of(&[("INGEST_MAX_TXN_BYTES", ""), ("FDB_CLUSTER_FILE", "")])).unwrap();
        assert_eq!(c, Config::from_toml_str("none", "").unwrap());
    }

    #[test]
    fn a_config_file_is_read_and_a_missing_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "[server]\nport = 8080\n").unwrap();
        let c = Config::load(Some(&path), no_env).unwrap();
        assert_eq!(c.server.port, 8080);

        let missing = dir.path().join("missing.toml");
        let err = Config::load(Some(&missing), no_env).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn ui_settings_come_from_the_reference_environment_and_malformed_paths_fail_naming_the_key() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.ui.dir, PathBuf::new(), "no ui unless asked for");
        assert_eq!((c.ui.api_host_base.as_str(), c.ui.api_base_path.as_str()), ("", "/api/v1"));
        let env = env_of(&[
            ("MATYAN_UI_API_HOST_BASE", "https://matyan.example.com"),
            ("MATYAN_UI_API_BASE_PATH", "/tracker/api/v1"),
            ("MATYAN_UI_BASE_PATH", "/ui"),
            ("MATYAN_UI_API_AUTH_TOKEN", "t0ken"),
        ]);
        let c = Config::load(None, env).unwrap();
        c.validate().unwrap();
        assert_eq!(c.ui.api_host_base, "https://matyan.example.com");
        assert_eq!(c.ui.api_base_path, "/tracker/api/v1");
        assert_eq!(c.ui.base_path, "/ui");
        assert_eq!(c.ui.api_auth_token, "t0ken");
        assert!(!format!("{c:?}").contains("t0ken"), "debug output hides the token");

        let c = Config::from_toml_str(
            "f.toml",
            "[ui]\napi_host_base = \"localhost:53800\"\napi_base_path = \"api/v1\"\nbase_path = \"/ui/\"\n",
        )
        .unwrap();
        assert_eq!(invalid_keys(&c), vec!["ui.api_host_base", "ui.api_base_path", "ui.base_path"]);
        for bad in ["http://h/", "https://", "http://h\"x", "ftp://h"] {
            let c = Config::from_toml_str("f.toml", &format!("[ui]\napi_host_base = {bad:?}\n")).unwrap();
            assert_eq!(invalid_keys(&c), vec!["ui.api_host_base"], "{bad:?}");
        }
        for bad in ["", "/", "/a//b", "/a/../b", "/a b", "/a?b"] {
            let c = Config::from_toml_str("f.toml", &format!("[ui]\napi_base_path = {bad:?}\n")).unwrap();
            assert_eq!(invalid_keys(&c), vec!["ui.api_base_path"], "{bad:?}");
        }
        let c = Config::from_toml_str("f.toml", "[ui]\napi_host_base = \"http://[::1]:8080/x\"\n").unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn a_zero_cap_of_run_actors_per_partition_is_rejected_naming_the_key() {
        assert_eq!(Config::from_toml_str("f.toml", "").unwrap().ingest.max_run_actors_per_partition, 1000);
        let c = Config::from_toml_str("f.toml", "[ingest]\nmax_run_actors_per_partition = 0\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("ingest.max_run_actors_per_partition: must be at least 1"), "{err}");
    }

    #[test]
    fn s3_settings_come_from_the_references_environment_and_are_checked_when_s3_is_the_backend() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!((c.blobs.backend, c.blobs.s3_bucket.as_str()), (BlobBackend::Local, "matyan-artifacts"));
        c.validate().unwrap();
        let env = env_of(&[
            ("BLOB_BACKEND_TYPE", "s3"),
            ("S3_ENDPOINT", "http://seaweed:8333"),
            ("S3_PUBLIC_ENDPOINT", "https://s3.example.com"),
            ("S3_BUCKET", "runs"),
            ("S3_REGION", "eu-west-1"),
            ("S3_ACCESS_KEY", "ak"),
            ("S3_SECRET_KEY", "sk-secret"),
        ]);
        let c = Config::load(None, env).unwrap();
        let b = &c.blobs;
        assert_eq!(b.backend, BlobBackend::S3);
        assert_eq!(
            [&b.s3_endpoint, &b.s3_public_endpoint, &b.s3_bucket, &b.s3_region, &b.s3_access_key, &b.s3_secret_key],
            ["http://seaweed:8333", "https://s3.example.com", "runs", "eu-west-1", "ak", "sk-secret"]
        );
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("sk-secret"), "debug output hides the secret key");
        let err = Config::load(None, env_of(&[("BLOB_BACKEND_TYPE", "gcs")])).unwrap_err().to_string();
        assert!(err.contains("BLOB_BACKEND_TYPE") && err.contains("local or s3"), "{err}");
        let c = Config::from_toml_str(
            "f.toml",
            "[blobs]\nbackend = \"s3\"\ns3_bucket = \"\"\ns3_endpoint = \"seaweed:8333\"\ns3_max_attempts = 0\n",
        )
        .unwrap();
        assert_eq!(invalid_keys(&c), vec!["blobs.s3_bucket", "blobs.s3_endpoint", "blobs.s3_max_attempts"]);
    }

    #[test]
    fn production_refuses_the_development_blob_uri_key_and_s3_credentials_naming_each_setting() {
        let c = Config::load(None, env_of(&[("MATYAN_ENVIRONMENT", "production")])).unwrap();
        assert_eq!(c.environment, Environment::Production);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("blobs.uri_secret: the development default is refused"), "{err}");
        assert!(err.contains("set BLOB_URI_SECRET"), "{err}");
        assert_eq!(invalid_keys(&c), vec!["blobs.uri_secret"], "the local store has no credentials to refuse");
        let key = "x9v2dZ0ZAgd1Qm4Kx0yH1UJqYfVZb3VmA9mQm0vWl7k=";
        let c = Config::load(
            None,
            env_of(&[("MATYAN_ENVIRONMENT", "production"), ("BLOB_URI_SECRET", key), ("BLOB_BACKEND_TYPE", "s3")]),
        )
        .unwrap();
        assert_eq!(invalid_keys(&c), vec!["blobs.s3_access_key", "blobs.s3_secret_key", "blobs.s3_endpoint"]);
        let c = Config::load(
            None,
            env_of(&[
                ("MATYAN_ENVIRONMENT", "production"),
                ("BLOB_URI_SECRET", key),
                ("BLOB_BACKEND_TYPE", "s3"),
                ("S3_ENDPOINT", "https://s3.eu-west-1.amazonaws.com"),
                ("S3_ACCESS_KEY", "AKIA0"),
                ("S3_SECRET_KEY", "real"),
            ]),
        )
        .unwrap();
        c.validate().unwrap();
        // Development accepts the development values; an unknown environment is refused by name.
        Config::load(None, env_of(&[("BLOB_BACKEND_TYPE", "s3")])).unwrap().validate().unwrap();
        let err = Config::load(None, env_of(&[("MATYAN_ENVIRONMENT", "prod")])).unwrap_err().to_string();
        assert!(err.contains("MATYAN_ENVIRONMENT"), "{err}");
    }

    #[test]
    fn maintenance_budgets_outside_their_bounds_are_rejected_naming_the_key() {
        let c = Config::load(None, env_of(&[("TOMBSTONE_CLEANUP_OLDER_THAN_HOURS", "72")])).unwrap();
        c.validate().unwrap();
        assert_eq!(c.maintenance.tombstone_older_than_hours, 72);
        assert_eq!((c.maintenance.batch_size, c.maintenance.lock_ttl_seconds), (100, 600));
        for (toml, key) in [
            ("batch_size = 0", "maintenance.batch_size"),
            ("batch_size = 10001", "maintenance.batch_size"),
            ("max_txn_bytes = 0", "maintenance.max_txn_bytes"),
            ("max_txn_bytes = 10000001", "maintenance.max_txn_bytes"),
            ("lock_ttl_seconds = 0", "maintenance.lock_ttl_seconds"),
            ("lock_ttl_seconds = 604801", "maintenance.lock_ttl_seconds"),
        ] {
            let c = Config::from_toml_str("f.toml", &format!("[maintenance]\n{toml}\n")).unwrap();
            assert_eq!(invalid_keys(&c), vec![key], "{toml}");
        }
    }

    #[test]
    fn control_budgets_default_to_the_documented_values_and_zero_or_inverted_ones_are_rejected() {
        let c = Config::from_toml_str("f.toml", "").unwrap();
        assert_eq!(c.control.consumer_group, "control-workers");
        assert_eq!((c.control.max_backlog, c.control.janitor_max_attempts), (1000, 5));
        let bad = "[control]\nconsumer_group = \" \"\nmax_backlog = 0\njanitor_max_attempts = 0\n\
                   janitor_initial_backoff_ms = 9000\nrestart_backoff_max_ms = 0\n";
        let c = Config::from_toml_str("f.toml", bad).unwrap();
        assert_eq!(
            invalid_keys(&c),
            vec![
                "control.consumer_group",
                "control.max_backlog",
                "control.janitor_max_attempts",
                "control.restart_backoff_max_ms",
                "control.janitor_initial_backoff_ms",
            ]
        );
    }
}
