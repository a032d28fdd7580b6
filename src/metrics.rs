//! The metrics catalogue: every metric name, its labels and help text, declared once.
//!
//! Names follow `matyan_<subsystem>_<name>_<unit>[_total]`; labels take bounded values only (never a
//! run id or a user string). Where the reference Matyan has a metric for the same thing, its name is
//! kept so its dashboards keep working.

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// `matyan_build_info{version}`: always 1; tells which build is running.
pub const BUILD_INFO: &str = "matyan_build_info";
/// `matyan_http_requests_total{method,path_template,status_class}` (the reference's name).
pub const HTTP_REQUESTS_TOTAL: &str = "matyan_http_requests_total";
/// `matyan_http_request_duration_seconds{method,path_template,status_class}` (the reference's name).
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "matyan_http_request_duration_seconds";
/// `matyan_health_ready_checks_total{result}`: readiness probes by outcome (`ok`, `failed`).
pub const HEALTH_READY_CHECKS_TOTAL: &str = "matyan_health_ready_checks_total";
/// `matyan_storage_txn_retries_total{error}`: KV transaction retries by FoundationDB error name.
pub const STORAGE_TXN_RETRIES_TOTAL: &str = "matyan_storage_txn_retries_total";

/// `matyan_ingestion_messages_consumed_total`: records returned by the source (the reference's name).
pub const INGESTION_MESSAGES_CONSUMED_TOTAL: &str = "matyan_ingestion_messages_consumed_total";
/// `matyan_ingestion_messages_processed_total{message_type}`: messages applied or skipped for a
/// tombstone in a committed transaction (the reference's name; replays are not counted).
pub const INGESTION_MESSAGES_PROCESSED_TOTAL: &str = "matyan_ingestion_messages_processed_total";
/// `matyan_ingestion_processing_errors_total{error_type}`: failed flushes or records by
/// `fdb`, `validation`, `unknown`, `txn_too_large_split` (the reference's name).
pub const INGESTION_PROCESSING_ERRORS_TOTAL: &str = "matyan_ingestion_processing_errors_total";
/// `matyan_ingestion_batch_size`: records per non-empty poll (the reference's name).
pub const INGESTION_BATCH_SIZE: &str = "matyan_ingestion_batch_size";
/// `matyan_ingestion_batch_processing_seconds`: time to decode and route one poll's records (the
/// reference's name).
pub const INGESTION_BATCH_PROCESSING_SECONDS: &str = "matyan_ingestion_batch_processing_seconds";
/// `matyan_ingestion_txn_estimated_bytes`: §1.10 estimate of each committed batch (the reference's name).
pub const INGESTION_TXN_ESTIMATED_BYTES: &str = "matyan_ingestion_txn_estimated_bytes";
/// `matyan_ingestion_fdb_retries_total`: retries of ingest transactions (the reference's name).
pub const INGESTION_FDB_RETRIES_TOTAL: &str = "matyan_ingestion_fdb_retries_total";
/// `matyan_ingest_flushes_total{reason}`: run batches flushed, by [`FlushReason`](crate::ingest::FlushReason).
pub const INGEST_FLUSHES_TOTAL: &str = "matyan_ingest_flushes_total";
/// `matyan_ingest_txn_bytes`: approximate size of each committed ingest transaction.
pub const INGEST_TXN_BYTES: &str = "matyan_ingest_txn_bytes";
/// `matyan_ingest_txn_seconds`: duration of each ingest flush transaction, retries included.
pub const INGEST_TXN_SECONDS: &str = "matyan_ingest_txn_seconds";
/// `matyan_ingest_dead_letters_total{reason}`: records dead-lettered, by bounded reason.
pub const INGEST_DEAD_LETTERS_TOTAL: &str = "matyan_ingest_dead_letters_total";
/// `matyan_ingest_consumer_lag{partition}`: the backlog, records not yet applied per assigned
/// partition (end offset − the group's committed offset, unread records included: the embedded
/// queue's end, Kafka's high watermark), read from the source every second.
pub const INGEST_CONSUMER_LAG: &str = "matyan_ingest_consumer_lag";
/// `matyan_ingest_commit_age_seconds{partition}`: how long records have waited while the
/// partition's committed offset did not move (0 when nothing waits).
pub const INGEST_COMMIT_AGE_SECONDS: &str = "matyan_ingest_commit_age_seconds";
/// `matyan_ingest_unflushed_records{partition}`: the partition's mailbox depth, counted in records:
/// those delivered to its partition actor and not yet flushed (waiting in its run actors' mailboxes
/// and open batches). actix does not expose a mailbox's length; this is what the mailboxes hold.
pub const INGEST_UNFLUSHED_RECORDS: &str = "matyan_ingest_unflushed_records";
/// `matyan_ingest_active_run_actors`: live run actors.
pub const INGEST_ACTIVE_RUN_ACTORS: &str = "matyan_ingest_active_run_actors";
/// `matyan_ingest_actor_restarts_total{actor,cause}`: supervisor restarts by actor kind and cause.
pub const INGEST_ACTOR_RESTARTS_TOTAL: &str = "matyan_ingest_actor_restarts_total";
/// `matyan_ingest_backpressure_seconds_total`: time the source loop waited on full mailboxes
/// (not polling the source meanwhile).
pub const INGEST_BACKPRESSURE_SECONDS_TOTAL: &str = "matyan_ingest_backpressure_seconds_total";

/// The reference's `batch_size` buckets.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0];
/// The reference's `txn_estimated_bytes` buckets (also used for `matyan_ingest_txn_bytes`).
const TXN_BYTES_BUCKETS: &[f64] = &[1e5, 5e5, 1e6, 2e6, 4e6, 8e6, 1e7];

/// The reference's HTTP duration buckets: 5 ms to 10 s.
const HTTP_DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the Prometheus recorder as the process's global recorder (once per process) and
/// registers the catalogue's help texts. The handle renders the exposition text.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.to_owned()), HTTP_DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(INGESTION_BATCH_SIZE.to_owned()), BATCH_SIZE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(INGESTION_BATCH_PROCESSING_SECONDS.to_owned()), HTTP_DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(INGESTION_TXN_ESTIMATED_BYTES.to_owned()), TXN_BYTES_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(GATEWAY_FRAME_SECONDS.to_owned()), HTTP_DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(INGEST_TXN_BYTES.to_owned()), TXN_BYTES_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(INGEST_TXN_SECONDS.to_owned()), HTTP_DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(CONTROL_PROCESSING_DURATION_SECONDS.to_owned()), HTTP_DURATION_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Registers help text and units of every metric in the catalogue.
pub fn describe() {
    describe_gauge!(BUILD_INFO, "build of the running process; always 1");
    describe_counter!(HTTP_REQUESTS_TOTAL, "http requests by method, route template and status class");
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "http request duration by method, route template and status class"
    );
    describe_counter!(HEALTH_READY_CHECKS_TOTAL, "readiness probes by result");
    describe_counter!(STORAGE_TXN_RETRIES_TOTAL, "kv transaction retries by foundationdb error name");
    describe_counter!(INGESTION_MESSAGES_CONSUMED_TOTAL, "records returned by the ingest source");
    describe_counter!(INGESTION_MESSAGES_PROCESSED_TOTAL, "messages applied in committed ingest transactions by type");
    describe_counter!(INGESTION_PROCESSING_ERRORS_TOTAL, "ingest failures by error type");
    describe_histogram!(INGESTION_BATCH_SIZE, Unit::Count, "records per non-empty poll");
    describe_histogram!(INGESTION_BATCH_PROCESSING_SECONDS, Unit::Seconds, "time to decode and route one poll");
    describe_histogram!(INGESTION_TXN_ESTIMATED_BYTES, Unit::Bytes, "estimated bytes of each committed ingest batch");
    describe_counter!(INGESTION_FDB_RETRIES_TOTAL, "retries of ingest transactions");
    describe_counter!(INGEST_FLUSHES_TOTAL, "run batches flushed by reason");
    describe_histogram!(INGEST_TXN_BYTES, Unit::Bytes, "approximate size of each committed ingest transaction");
    describe_histogram!(INGEST_TXN_SECONDS, Unit::Seconds, "duration of each ingest flush transaction");
    describe_counter!(INGEST_DEAD_LETTERS_TOTAL, "records dead-lettered by reason");
    describe_gauge!(
        INGEST_CONSUMER_LAG,
        "records not yet applied (end offset minus committed offset, unread included), by partition"
    );
    describe_gauge!(
        INGEST_COMMIT_AGE_SECONDS,
        Unit::Seconds,
        "seconds records have waited while the partition's committed offset did not move, by partition"
    );
    describe_gauge!(
        INGEST_UNFLUSHED_RECORDS,
        "records delivered to the partition's actors and not yet flushed (mailbox depth), by partition"
    );
    describe_gauge!(INGEST_ACTIVE_RUN_ACTORS, "live run actors");
    describe_counter!(INGEST_ACTOR_RESTARTS_TOTAL, "ingest actor restarts by actor kind and cause");
    describe_gauge!(INGEST_BACKPRESSURE_SECONDS_TOTAL, Unit::Seconds, "time the source loop waited on full mailboxes");
    describe_kafka();
    describe_gateway();
    describe_run_actors();
    describe_queue();
    describe_storage_engine();
    describe_control();
    describe_counter!(HTTP_PANICS_TOTAL, "request handlers that panicked, answered 500, by method and route template");
}

/// Sets `matyan_build_info{version}` to 1.
pub fn build_info(version: &'static str) {
    gauge!(BUILD_INFO, "version" => version).set(1.0);
}

/// Counts one HTTP request and observes its duration. `method` and `path_template` must be bounded:
/// a route template, never the raw path.
pub fn http_request(method: &'static str, path_template: String, status: u16, seconds: f64) {
    let status_class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let labels =
        [("method", method.to_owned()), ("path_template", path_template), ("status_class", status_class.to_owned())];
    counter!(HTTP_REQUESTS_TOTAL, &labels).increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, &labels).record(seconds);
}

/// Counts one readiness probe.
pub fn health_ready(ok: bool) {
    counter!(HEALTH_READY_CHECKS_TOTAL, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

/// Counts a KV transaction retry by FoundationDB error name.
pub fn kv_retry(error: &'static str) {
    counter!(STORAGE_TXN_RETRIES_TOTAL, "error" => error).increment(1);
}

/// Counts records returned by one non-empty poll and observes the poll's size.
pub fn ingest_polled(records: usize) {
    counter!(INGESTION_MESSAGES_CONSUMED_TOTAL).increment(records as u64);
    histogram!(INGESTION_BATCH_SIZE).record(records as f64);
}

/// Observes the time taken to decode and route one poll's records.
pub fn ingest_batch_processed(seconds: f64) {
    histogram!(INGESTION_BATCH_PROCESSING_SECONDS).record(seconds);
}

/// Counts messages of one type processed in a committed transaction. `message_type` is one of the
/// bounded wire names.
pub fn ingest_processed(message_type: &'static str, count: u64) {
    counter!(INGESTION_MESSAGES_PROCESSED_TOTAL, "message_type" => message_type).increment(count);
}

/// Counts one ingest failure; `error_type` is `fdb`, `validation`, `unknown` or `txn_too_large_split`.
pub fn ingest_error(error_type: &'static str) {
    counter!(INGESTION_PROCESSING_ERRORS_TOTAL, "error_type" => error_type).increment(1);
}

/// Records one committed flush: its reason, estimated and approximate bytes, and duration.
pub fn ingest_flush(reason: &'static str, estimated_bytes: usize, txn_bytes: usize, seconds: f64) {
    counter!(INGEST_FLUSHES_TOTAL, "reason" => reason).increment(1);
    histogram!(INGESTION_TXN_ESTIMATED_BYTES).record(estimated_bytes as f64);
    histogram!(INGEST_TXN_BYTES).record(txn_bytes as f64);
    histogram!(INGEST_TXN_SECONDS).record(seconds);
}

/// Counts retries of ingest transactions.
pub fn ingest_retries(count: u64) {
    counter!(INGESTION_FDB_RETRIES_TOTAL).increment(count);
}

/// Counts one dead-lettered record by bounded reason.
pub fn ingest_dead_letter(reason: &'static str) {
    counter!(INGEST_DEAD_LETTERS_TOTAL, "reason" => reason).increment(1);
}

/// Sets the lag of one partition (the partition count is bounded by the topic).
pub fn ingest_consumer_lag(partition: i32, lag: i64) {
    gauge!(INGEST_CONSUMER_LAG, "partition" => partition.to_string()).set(lag as f64);
}

/// Sets the commit age of one assigned partition (bounded by the topic's partition count).
pub fn ingest_commit_age(partition: i32, seconds: f64) {
    gauge!(INGEST_COMMIT_AGE_SECONDS, "partition" => partition.to_string()).set(seconds);
}

/// Sets the mailbox depth of one partition in records (bounded by the topic's partition count).
pub fn ingest_unflushed_records(partition: i32, records: usize) {
    gauge!(INGEST_UNFLUSHED_RECORDS, "partition" => partition.to_string()).set(records as f64);
}

/// Sets the number of live run actors.
pub fn ingest_active_run_actors(count: usize) {
    gauge!(INGEST_ACTIVE_RUN_ACTORS).set(count as f64);
}

/// Counts one supervisor restart; `actor` is `source`, `partition` or `run`, `cause` a bounded word.
pub fn ingest_actor_restart(actor: &'static str, cause: &'static str) {
    counter!(INGEST_ACTOR_RESTARTS_TOTAL, "actor" => actor, "cause" => cause).increment(1);
}

/// Adds time the source loop waited on full mailboxes.
pub fn ingest_backpressure(seconds: f64) {
    // A gauge only increased: the `metrics` crate's counters are integers, and whole seconds would
    // hide short waits.
    gauge!(INGEST_BACKPRESSURE_SECONDS_TOTAL).increment(seconds);
}

// ---------------------------------------------------------------------------------------------
// Kafka source, dead letters and the outbox publisher (src/ingest/{kafka,dlq,outbox}.rs).

/// `matyan_ingest_kafka_rebalance_partitions_total{kind}`: partitions assigned to or revoked from
/// this consumer (`assigned`, `revoked`).
pub const INGEST_KAFKA_REBALANCE_PARTITIONS_TOTAL: &str = "matyan_ingest_kafka_rebalance_partitions_total";
/// `matyan_ingest_kafka_commits_total{result}`: offset commits by outcome (`ok`, `stale_epoch`, `error`).
pub const INGEST_KAFKA_COMMITS_TOTAL: &str = "matyan_ingest_kafka_commits_total";
/// `matyan_ingest_kafka_commit_duration_seconds`: time of one synchronous offset commit.
pub const INGEST_KAFKA_COMMIT_DURATION_SECONDS: &str = "matyan_ingest_kafka_commit_duration_seconds";
/// `matyan_ingest_dead_letters_published_total{sink,reason}`: records sent to a dead-letter sink
/// (`kafka`, `embedded`) by bounded reason.
pub const INGEST_DEAD_LETTERS_PUBLISHED_TOTAL: &str = "matyan_ingest_dead_letters_published_total";
/// `matyan_ingest_rebalance_partitions_total{kind}`: partitions the pipeline started (`assigned`)
/// or stopped (`revoked`) actors for on a rebalance.
pub const INGEST_REBALANCE_PARTITIONS_TOTAL: &str = "matyan_ingest_rebalance_partitions_total";
/// `matyan_ingest_revoked_uncommitted_records_total`: records of revoked partitions received and
/// not committed when they were revoked (dropped here; the new owner reads them again).
pub const INGEST_REVOKED_UNCOMMITTED_RECORDS_TOTAL: &str = "matyan_ingest_revoked_uncommitted_records_total";
/// `matyan_ingest_outbox_events_total{result}`: outbox events handled by the publisher
/// (`published`, `failed`).
pub const INGEST_OUTBOX_EVENTS_TOTAL: &str = "matyan_ingest_outbox_events_total";
/// `matyan_ingest_outbox_pending_events`: control events recorded and not yet published (counted up
/// to 10,000).
pub const INGEST_OUTBOX_PENDING_EVENTS: &str = "matyan_ingest_outbox_pending_events";

/// Registers the help texts of the Kafka, dead-letter, outbox and rebalance metrics (called by
/// [`describe`]).
pub fn describe_kafka() {
    describe_counter!(INGEST_KAFKA_REBALANCE_PARTITIONS_TOTAL, "partitions assigned or revoked by kind");
    describe_counter!(INGEST_KAFKA_COMMITS_TOTAL, "kafka offset commits by result");
    describe_histogram!(INGEST_KAFKA_COMMIT_DURATION_SECONDS, Unit::Seconds, "duration of one kafka offset commit");
    describe_counter!(INGEST_DEAD_LETTERS_PUBLISHED_TOTAL, "records sent to a dead-letter sink by sink and reason");
    describe_counter!(INGEST_OUTBOX_EVENTS_TOTAL, "outbox control events handled by result");
    describe_gauge!(INGEST_OUTBOX_PENDING_EVENTS, "control events recorded and not yet published, counted up to 10000");
    describe_counter!(INGEST_REBALANCE_PARTITIONS_TOTAL, "partitions the pipeline started or stopped on a rebalance");
    describe_counter!(
        INGEST_REVOKED_UNCOMMITTED_RECORDS_TOTAL,
        "records of revoked partitions dropped before their commit, read again by the new owner"
    );
}

/// Counts `partitions` partitions assigned or revoked (`kind`: `assigned`, `revoked`).
pub fn kafka_rebalance(kind: &'static str, partitions: usize) {
    counter!(INGEST_KAFKA_REBALANCE_PARTITIONS_TOTAL, "kind" => kind).increment(partitions as u64);
}

/// Counts one offset commit by result (`ok`, `stale_epoch`, `error`) and observes its duration.
pub fn kafka_commit(result: &'static str, seconds: f64) {
    counter!(INGEST_KAFKA_COMMITS_TOTAL, "result" => result).increment(1);
    histogram!(INGEST_KAFKA_COMMIT_DURATION_SECONDS).record(seconds);
}

/// Counts one dead letter sent to `sink` (`kafka`, `embedded`); `reason` must be a bounded label.
pub fn dead_letter_published(sink: &'static str, reason: &'static str) {
    counter!(INGEST_DEAD_LETTERS_PUBLISHED_TOTAL, "sink" => sink, "reason" => reason).increment(1);
}

/// Counts `partitions` partitions whose actors the pipeline started (`assigned`) or stopped
/// (`revoked`) on a rebalance.
pub fn ingest_rebalance(kind: &'static str, partitions: usize) {
    counter!(INGEST_REBALANCE_PARTITIONS_TOTAL, "kind" => kind).increment(partitions as u64);
}

/// Counts records of a revoked partition dropped before their commit.
pub fn ingest_revoked_uncommitted(records: u64) {
    counter!(INGEST_REVOKED_UNCOMMITTED_RECORDS_TOTAL).increment(records);
}

/// Sets the outbox events waiting to be published (counted up to a cap).
pub fn outbox_pending(events: usize) {
    gauge!(INGEST_OUTBOX_PENDING_EVENTS).set(events as f64);
}

/// Counts one outbox event by result (`published`, `failed`).
pub fn outbox_event(result: &'static str) {
    counter!(INGEST_OUTBOX_EVENTS_TOTAL, "result" => result).increment(1);
}

// ---------------------------------------------------------------------------------------------
// The SDK gateway

/// `matyan_gateway_connections`: open WebSocket connections of the SDK gateway.
pub const GATEWAY_CONNECTIONS: &str = "matyan_gateway_connections";
/// `matyan_gateway_frames_total{result}`: frames answered, by result (`ok`, `rejected`, `failed`).
pub const GATEWAY_FRAMES_TOTAL: &str = "matyan_gateway_frames_total";
/// `matyan_gateway_rejected_total{reason}`: frames, connections and uploads refused, by bounded
/// reason (`invalid_json`, `invalid_message`, `too_large`, `too_many_connections`, `bad_signature`,
/// …).
pub const GATEWAY_REJECTED_TOTAL: &str = "matyan_gateway_rejected_total";
/// `matyan_gateway_records_total`: records made durable by the gateway.
pub const GATEWAY_RECORDS_TOTAL: &str = "matyan_gateway_records_total";
/// `matyan_gateway_bytes_total{kind}`: bytes received, by kind (`frames`, `uploads`).
pub const GATEWAY_BYTES_TOTAL: &str = "matyan_gateway_bytes_total";
/// `matyan_gateway_frame_seconds`: time from a frame's arrival to its reply (durable publish
/// included).
pub const GATEWAY_FRAME_SECONDS: &str = "matyan_gateway_frame_seconds";

/// Registers the help texts of the gateway metrics (called by [`describe`]).
pub fn describe_gateway() {
    describe_gauge!(GATEWAY_CONNECTIONS, "open websocket connections of the sdk gateway");
    describe_counter!(GATEWAY_FRAMES_TOTAL, "gateway frames answered by result");
    describe_counter!(GATEWAY_REJECTED_TOTAL, "gateway frames, connections and uploads refused by reason");
    describe_counter!(GATEWAY_RECORDS_TOTAL, "records the gateway made durable");
    describe_counter!(GATEWAY_BYTES_TOTAL, Unit::Bytes, "bytes the gateway received by kind");
    describe_histogram!(GATEWAY_FRAME_SECONDS, Unit::Seconds, "time from a gateway frame's arrival to its reply");
}

/// Counts one answered frame: its result (`ok`, `rejected`, `failed`), its records made durable,
/// its bytes, and the time to its reply.
pub fn gateway_frame(result: &'static str, records: usize, bytes: usize, seconds: f64) {
    counter!(GATEWAY_FRAMES_TOTAL, "result" => result).increment(1);
    counter!(GATEWAY_RECORDS_TOTAL).increment(records as u64);
    counter!(GATEWAY_BYTES_TOTAL, "kind" => "frames").increment(bytes as u64);
    histogram!(GATEWAY_FRAME_SECONDS).record(seconds);
}

/// Counts one refusal of the gateway; `reason` must be a bounded label.
pub fn gateway_rejected(reason: &'static str) {
    counter!(GATEWAY_REJECTED_TOTAL, "reason" => reason).increment(1);
}

/// Counts the bytes of one stored upload.
pub fn gateway_upload(bytes: usize) {
    counter!(GATEWAY_BYTES_TOTAL, "kind" => "uploads").increment(bytes as u64);
}

/// Moves the open-connections gauge by `delta` (+1 on open, −1 on close).
pub fn gateway_connections(delta: f64) {
    gauge!(GATEWAY_CONNECTIONS).increment(delta);
}

// ---------------------------------------------------------------------------------------------
// HTTP handler panics (src/http/panic.rs).

/// `matyan_http_panics_total{method,path_template}`: request handlers that panicked and were
/// answered with the 500 envelope.
pub const HTTP_PANICS_TOTAL: &str = "matyan_http_panics_total";

/// Counts one panicking request handler. `path_template` must be a route template, never the raw path.
pub fn http_panic(method: &'static str, path_template: String) {
    counter!(HTTP_PANICS_TOTAL, "method" => method, "path_template" => path_template).increment(1);
}

// ---------------------------------------------------------------------------------------------
// Run actors at scale (src/actors/partition_actor.rs).

/// `matyan_ingest_run_actor_evictions_total`: run actors stopped (after flushing) to make room for
/// another run in a partition at `ingest.max_run_actors_per_partition`.
pub const INGEST_RUN_ACTOR_EVICTIONS_TOTAL: &str = "matyan_ingest_run_actor_evictions_total";

/// Registers the help texts of the run-actor metrics (called by [`describe`]).
pub fn describe_run_actors() {
    describe_counter!(INGEST_RUN_ACTOR_EVICTIONS_TOTAL, "run actors evicted from a full partition after flushing");
}

/// Counts run actors evicted from a full partition.
pub fn ingest_run_actor_evictions(count: usize) {
    counter!(INGEST_RUN_ACTOR_EVICTIONS_TOTAL).increment(count as u64);
}

/// Records removed from the embedded queue once every consumer group had committed them, by topic.
pub const QUEUE_TRIMMED_RECORDS_TOTAL: &str = "matyan_queue_trimmed_records_total";
/// Records the embedded queue holds (end offset minus start offset, summed over partitions), by topic.
pub const QUEUE_RECORDS: &str = "matyan_queue_records";

/// `matyan_storage_engine_memory_bytes{part}`: what the embedded engine holds in memory, by part
/// (`memtables`, `block_cache`, `pinned_filters`, `pinned_indexes`), read at each scrape.
pub const STORAGE_ENGINE_MEMORY_BYTES: &str = "matyan_storage_engine_memory_bytes";
/// `matyan_storage_engine_tables{level}`: the embedded engine's table files (`level` is `0` or
/// `all`), read at each scrape: level 0 piling up means compaction is behind.
pub const STORAGE_ENGINE_TABLES: &str = "matyan_storage_engine_tables";

/// Registers the embedded engine's metrics.
pub fn describe_storage_engine() {
    describe_gauge!(
        STORAGE_ENGINE_MEMORY_BYTES,
        Unit::Bytes,
        "memory the embedded engine holds, by part (memtables, block_cache, pinned_filters, pinned_indexes)"
    );
    describe_gauge!(STORAGE_ENGINE_TABLES, "table files of the embedded engine, level 0 and all levels");
}

/// Sets the embedded engine's gauges from its own account.
pub fn storage_engine_memory(m: &crate::storage::kv::engine::EngineMemory) {
    for (part, bytes) in [
        ("memtables", m.write_buffer_bytes),
        ("block_cache", m.cache_bytes),
        ("pinned_filters", m.pinned_filter_bytes),
        ("pinned_indexes", m.pinned_index_bytes),
    ] {
        gauge!(STORAGE_ENGINE_MEMORY_BYTES, "part" => part).set(bytes as f64);
    }
    gauge!(STORAGE_ENGINE_TABLES, "level" => "0").set(m.l0_tables as f64);
    gauge!(STORAGE_ENGINE_TABLES, "level" => "all").set(m.tables as f64);
}

/// Registers the embedded queue's metrics.
pub fn describe_queue() {
    describe_counter!(
        QUEUE_TRIMMED_RECORDS_TOTAL,
        "records trimmed from the embedded queue after every group committed them, by topic"
    );
    describe_gauge!(
        QUEUE_RECORDS,
        "records held by the embedded queue (end minus start offset over partitions), by topic"
    );
}

/// Counts `records` trimmed from `topic` and sets what it still holds. `topic` is a configured topic
/// name (bounded).
pub fn queue_trimmed(topic: &str, records: u64, held: u64) {
    counter!(QUEUE_TRIMMED_RECORDS_TOTAL, "topic" => topic.to_owned()).increment(records);
    gauge!(QUEUE_RECORDS, "topic" => topic.to_owned()).set(held as f64);
}

// ---------------------------------------------------------------------------------------------
// Control workers (src/control/): the reference's four control metrics, plus the janitor's.

/// `matyan_control_events_consumed_total`: records read from `control-events` (replays included).
pub const CONTROL_EVENTS_CONSUMED_TOTAL: &str = "matyan_control_events_consumed_total";
/// `matyan_control_events_processed_total{event_type}`: events handled, by type.
pub const CONTROL_EVENTS_PROCESSED_TOTAL: &str = "matyan_control_events_processed_total";
/// `matyan_control_processing_errors_total{error_type}`: failures that restart a control worker
/// (`blob_storage`, `dead_letter`, `commit`, `mailbox`).
pub const CONTROL_PROCESSING_ERRORS_TOTAL: &str = "matyan_control_processing_errors_total";
/// `matyan_control_processing_duration_seconds`: time to remove one deleted run's objects.
pub const CONTROL_PROCESSING_DURATION_SECONDS: &str = "matyan_control_processing_duration_seconds";
/// `matyan_control_janitor_backlog`: run deletions waiting for the blob janitor or in its hands.
pub const CONTROL_JANITOR_BACKLOG: &str = "matyan_control_janitor_backlog";
/// `matyan_control_janitor_objects_removed_total`: objects the janitor removed.
pub const CONTROL_JANITOR_OBJECTS_REMOVED_TOTAL: &str = "matyan_control_janitor_objects_removed_total";
/// `matyan_control_janitor_retries_total`: blob store calls the janitor retried.
pub const CONTROL_JANITOR_RETRIES_TOTAL: &str = "matyan_control_janitor_retries_total";
/// `matyan_control_dead_letters_total{reason}`: control records dead-lettered.
pub const CONTROL_DEAD_LETTERS_TOTAL: &str = "matyan_control_dead_letters_total";
/// `matyan_control_actor_restarts_total{actor,cause}`: control worker restarts.
pub const CONTROL_ACTOR_RESTARTS_TOTAL: &str = "matyan_control_actor_restarts_total";

/// Registers the help texts of the control metrics (called by [`describe`]).
pub fn describe_control() {
    describe_counter!(CONTROL_EVENTS_CONSUMED_TOTAL, "records read from the control-events topic");
    describe_counter!(CONTROL_EVENTS_PROCESSED_TOTAL, "control events handled by event type");
    describe_counter!(CONTROL_PROCESSING_ERRORS_TOTAL, "control failures that restart a worker by error type");
    describe_histogram!(CONTROL_PROCESSING_DURATION_SECONDS, Unit::Seconds, "time to remove one deleted run's blobs");
    describe_gauge!(CONTROL_JANITOR_BACKLOG, "run deletions waiting for the blob janitor or in its hands");
    describe_counter!(CONTROL_JANITOR_OBJECTS_REMOVED_TOTAL, "blob objects the janitor removed");
    describe_counter!(CONTROL_JANITOR_RETRIES_TOTAL, "blob store calls the janitor retried");
    describe_counter!(CONTROL_DEAD_LETTERS_TOTAL, "control records dead-lettered by reason");
    describe_counter!(CONTROL_ACTOR_RESTARTS_TOTAL, "control worker restarts by actor kind and cause");
}

/// Counts records read from the control topic.
pub fn control_consumed(records: usize) {
    counter!(CONTROL_EVENTS_CONSUMED_TOTAL).increment(records as u64);
}

/// Counts one handled control event; `event_type` is a bounded label.
pub fn control_processed(event_type: &'static str) {
    counter!(CONTROL_EVENTS_PROCESSED_TOTAL, "event_type" => event_type).increment(1);
}

/// Counts one control failure; `error_type` is a bounded label.
pub fn control_error(error_type: &'static str) {
    counter!(CONTROL_PROCESSING_ERRORS_TOTAL, "error_type" => error_type).increment(1);
}

/// Records the time one run's objects took to remove.
pub fn control_processing_seconds(seconds: f64) {
    histogram!(CONTROL_PROCESSING_DURATION_SECONDS).record(seconds);
}

/// Sets the janitor's backlog.
pub fn control_janitor_backlog(runs: u64) {
    gauge!(CONTROL_JANITOR_BACKLOG).set(runs as f64);
}

/// Counts objects the janitor removed.
pub fn control_objects_removed(objects: usize) {
    counter!(CONTROL_JANITOR_OBJECTS_REMOVED_TOTAL).increment(objects as u64);
}

/// Counts one retried blob store call.
pub fn control_janitor_retry() {
    counter!(CONTROL_JANITOR_RETRIES_TOTAL).increment(1);
}

/// Counts one control dead letter; `reason` is a bounded label.
pub fn control_dead_letter(reason: &'static str) {
    counter!(CONTROL_DEAD_LETTERS_TOTAL, "reason" => reason).increment(1);
}

/// Counts one control worker restart.
pub fn control_actor_restart(actor: &'static str, cause: &'static str) {
    counter!(CONTROL_ACTOR_RESTARTS_TOTAL, "actor" => actor, "cause" => cause).increment(1);
}
