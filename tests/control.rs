//! The control workers on real components: the embedded queue's control topic, the local blob
//! store (behind a flaky wrapper for faults), the supervised actors, and `matyan serve` end to end.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use matyan::blobs::{Blob, BlobError, BlobReader, BlobStore, Listing, LocalDirStore, ObjectMeta};
use matyan::control::{ControlDeadLetters, ControlHandle, ControlKill, ControlWorkers, JanitorConfig, WorkersConfig};
use matyan::ingest::apply::Applier;
use matyan::ingest::{EmbeddedSource, Queue};
use matyan::storage::kv::{Database, RetryOptions};
use matyan::storage::layout::Layout;
use matyan::storage::value::Value;

const TOPIC: &str = "control-events";

/// A blob store over a local directory that fails every call while `failing` is set, delays
/// deletes by `delay`, and records the largest delete batch it was given.
#[derive(Debug)]
struct FlakyStore {
    inner: LocalDirStore,
    failing: AtomicBool,
    delay: Duration,
    failures: AtomicUsize,
    largest_batch: AtomicUsize,
    deletes: AtomicUsize,
}

impl FlakyStore {
    fn new(root: &Path, delay: Duration) -> Self {
        Self {
            inner: LocalDirStore::new(root),
            failing: AtomicBool::new(false),
            delay,
            failures: AtomicUsize::new(0),
            largest_batch: AtomicUsize::new(0),
            deletes: AtomicUsize::new(0),
        }
    }

    fn check(&self, key: &str) -> Result<(), BlobError> {
        if self.failing.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            let source = std::io::Error::other("store unavailable");
            return Err(BlobError::Io { key: key.to_owned(), source });
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for FlakyStore {
    async fn get(&self, key: &str) -> Result<Blob, BlobError> {
        self.check(key)?;
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, BlobError> {
        self.check(key)?;
        self.inner.head(key).await
    }
    async fn open(&self, key: &str) -> Result<BlobReader, BlobError> {
        self.check(key)?;
        self.inner.open(key).await
    }
    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: Option<&str>) -> Result<(), BlobError> {
        self.inner.put(key, bytes, content_type).await
    }
    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.check(key)?;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>, max_keys: usize) -> Result<Listing, BlobError> {
        self.check(prefix)?;
        self.inner.list(prefix, start_after, max_keys).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), BlobError> {
        self.check(keys.first().map_or("", String::as_str))?;
        tokio::time::sleep(self.delay).await;
        self.largest_batch.fetch_max(keys.len(), Ordering::SeqCst);
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete_many(keys).await
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    blobs: std::path::PathBuf,
    db: Database,
    layout: Layout,
    queue: Queue,
    store: Arc<FlakyStore>,
}

async fn fixture(delay: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    let queue = Queue::open(&db, &layout.dirs.ours, TOPIC, 1).await.unwrap();
    let store = Arc::new(FlakyStore::new(&blobs, delay));
    Fixture { _dir: dir, blobs, db, layout, queue, store }
}

fn config() -> WorkersConfig {
    WorkersConfig {
        janitor: JanitorConfig {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        },
        restart_backoff_initial: Duration::from_millis(20),
        restart_backoff_max: Duration::from_millis(100),
        ..WorkersConfig::default()
    }
}

async fn start(f: &Fixture) -> ControlHandle {
    let source = EmbeddedSource::new(f.queue.clone(), "control-workers").await.unwrap();
    let letters = ControlDeadLetters::embedded(f.db.clone(), Applier::new(f.layout.clone()), RetryOptions::default());
    let store: Arc<dyn BlobStore> = f.store.clone();
    ControlWorkers::start(Arc::new(source.with_poll_interval(Duration::from_millis(10))), store, letters, config())
        .unwrap()
}

/// Writes `n` objects under `{run}/` straight into the directory.
fn put_objects(blobs: &Path, run: &str, n: usize) {
    let dir = blobs.join(run).join("seq").join("images");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("{i}.png")), b"png").unwrap();
    }
}

fn count_objects(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.map(|e| e.unwrap().path()).map(|p| if p.is_dir() { count_objects(&p) } else { 1 }).sum()
}

async fn append(queue: &Queue, values: &[Vec<u8>]) {
    let records: Vec<_> = values.iter().map(|v| (None, v.as_slice(), 0i64)).collect();
    queue.append(&records).await.unwrap();
}

fn run_deleted(run: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "run_deleted", "timestamp": "2026-01-01T00:00:00.000000Z", "payload": {"run_id": run}
    }))
    .unwrap()
}

async fn committed(queue: &Queue) -> i64 {
    queue.committed("control-workers", 0).await.unwrap().unwrap_or(0)
}

/// Waits until the group committed `offset` on the queue (what a restart would read from).
async fn wait_committed(queue: &Queue, offset: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(queue).await < offset {
        assert!(Instant::now() < deadline, "offset {offset} not committed (at {})", committed(queue).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_deleted_removes_all_2500_objects_of_the_run_in_batches_of_at_most_1000_then_commits() {
    let f = fixture(Duration::ZERO).await;
    put_objects(&f.blobs, "run-a", 2_500);
    put_objects(&f.blobs, "run-b", 3);
    let control = start(&f).await;
    append(&f.queue, &[run_deleted("run-a")]).await;
    wait_committed(&f.queue, 1).await;

    assert_eq!(count_objects(&f.blobs.join("run-a")), 0, "every object of the deleted run is gone");
    assert_eq!(count_objects(&f.blobs.join("run-b")), 3, "another run's objects stay");
    assert!(f.store.largest_batch.load(Ordering::SeqCst) <= 1_000);
    assert!(f.store.deletes.load(Ordering::SeqCst) >= 3, "2,500 objects need three batches");
    let counters = control.counters();
    assert_eq!((counters.objects_removed, counters.processed, counters.janitor_backlog), (2_500, 1, 0));

    // A duplicate event (the outbox is at least once) is harmless: nothing left to remove.
    append(&f.queue, &[run_deleted("run-a")]).await;
    wait_committed(&f.queue, 2).await;
    assert_eq!(control.counters().objects_removed, 2_500);
    control.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_blob_store_is_retried_and_the_offset_is_committed_only_after_it_recovers() {
    let f = fixture(Duration::ZERO).await;
    put_objects(&f.blobs, "run-a", 1_200);
    f.store.failing.store(true, Ordering::SeqCst);
    let control = start(&f).await;
    append(&f.queue, &[run_deleted("run-a")]).await;

    // Several rounds of retries and at least one restart of the group while the store is down.
    let deadline = Instant::now() + Duration::from_secs(60);
    while control.counters().restarts < 2 {
        assert!(Instant::now() < deadline, "no restart while the store fails: {:?}", control.counters());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(control.counters().janitor_retries >= 2);
    assert_eq!(committed(&f.queue).await, 0, "nothing is acknowledged while the store fails");
    assert_eq!(count_objects(&f.blobs.join("run-a")), 1_200);

    f.store.failing.store(false, Ordering::SeqCst);
    wait_committed(&f.queue, 1).await;
    assert_eq!(count_objects(&f.blobs.join("run-a")), 0, "the replay after recovery removed everything");
    control.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_consumer_killed_mid_batch_replays_from_its_committed_offset_and_removes_everything() {
    // Slow deletes, so the kill lands while runs are still being cleaned.
    let f = fixture(Duration::from_millis(30)).await;
    let runs: Vec<String> = (0..6).map(|i| format!("run-{i}")).collect();
    for run in &runs {
        put_objects(&f.blobs, run, 1_500);
    }
    let control = start(&f).await;
    append(&f.queue, &runs.iter().map(|r| run_deleted(r)).collect::<Vec<_>>()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.store.deletes.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the janitor never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = committed(&f.queue).await;
    assert!(before < 6, "the kill lands mid-batch (committed {before})");
    let killed = control.kill(ControlKill::Consumer).await.unwrap();
    assert_eq!(killed, "control consumer");
    wait_committed(&f.queue, 6).await;

    for run in &runs {
        assert_eq!(count_objects(&f.blobs.join(run)), 0, "{run} has objects left");
    }
    let counters = control.counters();
    assert!(counters.restarts >= 1, "{counters:?}");
    assert!(counters.consumed > 6, "records after the committed offset were read again: {counters:?}");
    control.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_control_event_is_dead_lettered_with_its_reason_and_the_events_after_it_still_run() {
    let f = fixture(Duration::ZERO).await;
    put_objects(&f.blobs, "run-a", 10);
    put_objects(&f.blobs, "run-b", 10);
    let control = start(&f).await;
    let escaping =
        serde_json::to_vec(&serde_json::json!({"type": "run_deleted", "payload": {"run_id": ".."}})).unwrap();
    let others = ["experiment_deleted", "tag_deleted"].map(|kind| {
        let field = if kind == "tag_deleted" { "tag_id" } else { "experiment_id" };
        serde_json::to_vec(&serde_json::json!({"type": kind, "timestamp": "t", "payload": {field: "u"}})).unwrap()
    });
    append(&f.queue, &[b"{not json".to_vec(), escaping, others[0].clone(), others[1].clone(), run_deleted("run-b")])
        .await;
    wait_committed(&f.queue, 5).await;

    assert_eq!(count_objects(&f.blobs.join("run-b")), 0);
    assert_eq!(count_objects(&f.blobs.join("run-a")), 10, "`..` reached nothing");
    let applier = Applier::new(f.layout.clone());
    let tx = f.db.create_trx().unwrap();
    let letters = applier.control_dead_letters(&tx, 0).await.unwrap();
    let reasons: Vec<(i64, String)> = letters
        .iter()
        .map(|l| {
            let Value::Map(fields) = &l.record else { panic!("a map") };
            let reason = fields.iter().find(|(k, _)| *k == Value::from("reason")).map(|(_, v)| v.clone());
            (l.offset, format!("{reason:?}"))
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].1.contains("control_envelope") && reasons[0].0 == 0, "{reasons:?}");
    assert!(reasons[1].1.contains("control_key") && reasons[1].0 == 1, "{reasons:?}");
    let counters = control.counters();
    assert_eq!((counters.dead_lettered, counters.processed), (2, 3));
    control.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// End to end through `matyan serve`: REST deletion → ingestion (tombstone, purge) → outbox →
// control-events → janitor, on the embedded queue and on Kafka.

use common::broker::Broker;
use common::sdk::request;
use common::server;

const SEEDED_RUN: &str = "5eed000000000000";
const R: &str = "/api/v1/rest";

fn matyan(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_matyan")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

/// Seeds one run with 2,500 objects, starts `matyan serve` with `extra` flags and `env`.
fn seeded_server(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (server::Server, std::net::SocketAddr) {
    let data = dir.to_str().unwrap();
    let out = matyan(&["dev", "seed", "--data-dir", data, "--runs", "1"]);
    assert!(out.status.success(), "dev seed failed: {}", String::from_utf8_lossy(&out.stderr));
    put_objects(&dir.join("blobs"), SEEDED_RUN, 2_500);
    start_serve(dir, extra, env)
}

/// Starts `matyan serve` on the store under `dir`.
fn start_serve(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (server::Server, std::net::SocketAddr) {
    let data = dir.to_str().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["serve", "--data-dir", data, "--host", "127.0.0.1", "--port", "0"])
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut serve = server::Server(child);
    let addr = server::wait_for_addr(&mut serve, dir);
    (serve, addr)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deletes an experiment and a tag, then the seeded run, and follows the run's deletion until its
/// 2,500 objects are gone and its tombstone is written.
fn delete_entities_then_the_run(dir: &Path, addr: std::net::SocketAddr) {
    // Entity deletions first: their events go out before the run's (issue 11: they once wedged the
    // outbox, so no run_deleted was published again).
    let (status, body) = request(addr, "POST", &format!("{R}/experiments/"), Some(r#"{"name":"gone-exp"}"#));
    assert_eq!(status, 200, "{body}");
    let exp: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, _) = request(addr, "DELETE", &format!("{R}/experiments/{}/", exp["id"].as_str().unwrap()), None);
    assert_eq!(status, 200);
    let (status, body) = request(addr, "POST", &format!("{R}/tags/"), Some(r#"{"name":"gone-tag"}"#));
    assert_eq!(status, 200, "{body}");
    let tag: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, _) = request(addr, "DELETE", &format!("{R}/tags/{}/", tag["id"].as_str().unwrap()), None);
    assert_eq!(status, 200);

    let search = format!("{R}/runs/search/run/?q=&report_progress=false");
    let (_, before) = request(addr, "GET", &search, None);
    assert!(before.contains(SEEDED_RUN), "the seeded run is searchable before its deletion");
    let (status, body) = request(addr, "DELETE", &format!("{R}/runs/{SEEDED_RUN}/"), None);
    assert_eq!(status, 200, "{body}");
    let (_, after) = request(addr, "GET", &search, None);
    assert!(!after.contains(SEEDED_RUN), "hidden at once (pending_deletion)");

    let blobs = dir.join("blobs").join(SEEDED_RUN);
    wait_until("the janitor removed every object", || count_objects(&blobs) == 0);
    let data = dir.to_str().unwrap();
    let dump = matyan(&["kv", "dump", "--dir", "indexes", "--data-dir", data]);
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(text.contains("_deleted") && text.contains(SEEDED_RUN), "the tombstone is written: {text}");
    let (status, _) = request(addr, "GET", &format!("{R}/runs/{SEEDED_RUN}/info/"), None);
    assert_eq!(status, 404, "the run is purged");
}

/// A `create_run` record of the seeded run named `name`, as the gateway writes it.
fn create_run(name: &str) -> Vec<u8> {
    let value = serde_json::json!({"type": "create_run", "run_id": SEEDED_RUN,
        "timestamp": "2026-01-01T00:00:00Z", "payload": {"force_resume": false, "name": name}});
    serde_json::to_vec(&value).unwrap()
}

/// Appends `value` keyed by the seeded run to the embedded ingestion queue of a stopped server.
fn import(dir: &Path, value: &[u8]) {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let line = serde_json::json!({"key_b64": b64(SEEDED_RUN.as_bytes()), "value_b64": b64(value), "timestamp_ms": 0});
    let file = dir.join("late.jsonl");
    std::fs::write(&file, format!("{line}\n")).unwrap();
    let out = matyan(&["queue", "import", file.to_str().unwrap(), "--data-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "queue import failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Waits until ingestion applied everything queued (the lag gauge is read every second).
fn wait_caught_up(addr: std::net::SocketAddr) {
    std::thread::sleep(Duration::from_millis(1_500));
    wait_until("ingestion caught up", || {
        let (_, metrics) = server::get(addr, "/metrics/");
        server::metric_sum(&metrics, "matyan_ingest_consumer_lag", "") == 0.0
    });
}

#[test]
fn serve_deletes_a_run_through_rest_removes_its_2500_objects_and_ignores_late_records_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, addr) = seeded_server(dir.path(), &[], &[]);
    delete_entities_then_the_run(dir.path(), addr);
    assert!(server::terminate(serve).success());

    // A late record of the deleted run is dropped while the tombstone stands.
    import(dir.path(), &create_run("late"));
    let (serve, addr) = start_serve(dir.path(), &[], &[]);
    wait_caught_up(addr);
    let (status, _) = request(addr, "GET", &format!("{R}/runs/{SEEDED_RUN}/info/"), None);
    assert_eq!(status, 404, "a late record did not bring the run back");
    let (status, _) = request(addr, "POST", &format!("{R}/runs/{SEEDED_RUN}/clear-tombstone/"), None);
    assert_eq!(status, 204);
    assert!(server::terminate(serve).success());

    import(dir.path(), &create_run("back"));
    let (serve, addr) = start_serve(dir.path(), &[], &[]);
    wait_until("the run is ingested again", || {
        request(addr, "GET", &format!("{R}/runs/{SEEDED_RUN}/info/"), None).0 == 200
    });
    let status = server::terminate(serve);
    assert!(status.success(), "matyan serve exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_kafka_deletes_a_run_through_rest_removes_its_objects_ignores_late_records_until_cleared() {
    let Some(broker) = Broker::start() else { return };
    broker.create_topic("data-ingestion", 6).await;
    broker.create_topic(TOPIC, 1).await;
    broker.create_topic("data-ingestion-dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = broker.bootstrap.clone();
    let env = [("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str())];
    let (serve, addr) = seeded_server(dir.path(), &["--source", "kafka"], &env);
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || delete_entities_then_the_run(&path, addr)).await.unwrap();

    // Late records of the deleted run are dropped while its tombstone stands.
    let record = |name: &str| (Some(SEEDED_RUN.as_bytes().to_vec()), create_run(name));
    broker.produce("data-ingestion", &[record("late")]);
    tokio::task::spawn_blocking(move || {
        wait_caught_up(addr);
        let (status, _) = request(addr, "GET", &format!("{R}/runs/{SEEDED_RUN}/info/"), None);
        assert_eq!(status, 404, "a late record did not bring the run back");
        let (status, _) = request(addr, "POST", &format!("{R}/runs/{SEEDED_RUN}/clear-tombstone/"), None);
        assert_eq!(status, 204);
    })
    .await
    .unwrap();
    broker.produce("data-ingestion", &[record("back")]);
    tokio::task::spawn_blocking(move || {
        wait_until("the run is ingested again", || {
            request(addr, "GET", &format!("{R}/runs/{SEEDED_RUN}/info/"), None).0 == 200
        });
    })
    .await
    .unwrap();
    let status = server::terminate(serve);
    assert!(status.success(), "matyan serve exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matyan_control_alone_cleans_a_deleted_run_from_kafka_and_dead_letters_a_malformed_event_with_its_reason() {
    let Some(broker) = Broker::start() else { return };
    broker.create_topic(TOPIC, 1).await;
    broker.create_topic("data-ingestion-dlq", 1).await;
    let dir = tempfile::tempdir().unwrap();
    put_objects(&dir.path().join("blobs"), "run-x", 1_500);
    let port = server::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["control", "--data-dir", dir.path().to_str().unwrap(), "--metrics-host", "127.0.0.1"])
        .args(["--metrics-port", &port.to_string()])
        .env("KAFKA_BOOTSTRAP_SERVERS", &broker.bootstrap)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut control = server::Server(child);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    server::wait_listening(&mut control, addr);

    broker.produce(TOPIC, &[(None, b"{not json".to_vec()), (Some(b"run-x".to_vec()), run_deleted("run-x"))]);
    let blobs = dir.path().join("blobs").join("run-x");
    tokio::task::spawn_blocking(move || wait_until("the run's objects are gone", || count_objects(&blobs) == 0))
        .await
        .unwrap();
    let letters = broker
        .read_topic_until("data-ingestion-dlq", "control-check", Duration::from_secs(30), |got| !got.is_empty())
        .await;
    use rdkafka::message::{Headers as _, Message as _};
    let headers = letters[0].headers().expect("dead-letter headers");
    let header = |name: &str| {
        headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("reason").as_deref(), Some("control_envelope"));
    assert_eq!(header("origin_topic").as_deref(), Some(TOPIC));
    assert_eq!(letters[0].payload(), Some(&b"{not json"[..]));
    let (status, metrics) = server::get(addr, "/metrics/");
    assert_eq!(status, 200);
    assert_eq!(server::metric_sum(&metrics, "matyan_control_events_processed_total", "run_deleted"), 1.0);
    assert_eq!(server::metric_sum(&metrics, "matyan_control_janitor_objects_removed_total", ""), 1_500.0);

    let status = server::terminate(control);
    assert!(status.success(), "matyan control exited with {status}");
    // Both events are acknowledged: a restarted worker would not read them again.
    assert_eq!(broker.committed_offsets("control-workers", TOPIC, &[0]), vec![2]);
}

#[test]
fn the_chaos_route_kills_the_control_consumer_mid_batch_and_every_deleted_runs_objects_are_still_removed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = matyan(&["dev", "seed", "--data-dir", data, "--runs", "20"]);
    assert!(out.status.success(), "dev seed failed: {}", String::from_utf8_lossy(&out.stderr));
    let runs: Vec<String> = (0..20).map(|i| format!("5eed{i:012x}")).collect();
    for run in &runs {
        put_objects(&dir.path().join("blobs"), run, 500);
    }
    let (serve, addr) = start_serve(dir.path(), &["--chaos"], &[]);
    let body = serde_json::to_string(&runs).unwrap();
    let (status, text) = request(addr, "POST", &format!("{R}/runs/delete-batch/"), Some(&body));
    assert_eq!(status, 200, "{text}");

    let blobs = dir.path().join("blobs");
    let total = 20 * 500;
    wait_until("the janitor started", || count_objects(&blobs) < total);
    let left = count_objects(&blobs);
    let (status, text) = request(addr, "POST", "/admin/chaos/kill/?target=control", None);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("control consumer"), "{text}");
    assert!(left > 0, "the kill landed while objects were left");

    wait_until("every deleted run's objects are gone", || count_objects(&blobs) == 0);
    let (_, metrics) = server::get(addr, "/metrics/");
    assert!(server::metric_sum(&metrics, "matyan_control_actor_restarts_total", "chaos") >= 1.0);
    assert_eq!(server::metric_sum(&metrics, "matyan_control_janitor_backlog", ""), 0.0);
    let status = server::terminate(serve);
    assert!(status.success(), "matyan serve exited with {status}");
}
