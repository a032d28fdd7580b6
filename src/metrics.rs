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

/// The reference's HTTP duration buckets: 5 ms to 10 s.
const HTTP_DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the Prometheus recorder as the process's global recorder (once per process) and
/// registers the catalogue's help texts. The handle renders the exposition text.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.to_owned()), HTTP_DURATION_BUCKETS)?
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
/// `matyan_ingest_outbox_events_total{result}`: outbox events handled by the publisher
/// (`published`, `failed`).
pub const INGEST_OUTBOX_EVENTS_TOTAL: &str = "matyan_ingest_outbox_events_total";

/// Registers the help texts of the Kafka, dead-letter and outbox metrics. Kept out of
/// [`describe`] so this section merges on its own; `describe` should call it once merged.
pub fn describe_kafka() {
    describe_counter!(INGEST_KAFKA_REBALANCE_PARTITIONS_TOTAL, "partitions assigned or revoked by kind");
    describe_counter!(INGEST_KAFKA_COMMITS_TOTAL, "kafka offset commits by result");
    describe_histogram!(INGEST_KAFKA_COMMIT_DURATION_SECONDS, Unit::Seconds, "duration of one kafka offset commit");
    describe_counter!(INGEST_DEAD_LETTERS_PUBLISHED_TOTAL, "records sent to a dead-letter sink by sink and reason");
    describe_counter!(INGEST_OUTBOX_EVENTS_TOTAL, "outbox control events handled by result");
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

/// Counts one outbox event by result (`published`, `failed`).
pub fn outbox_event(result: &'static str) {
    counter!(INGEST_OUTBOX_EVENTS_TOTAL, "result" => result).increment(1);
}
