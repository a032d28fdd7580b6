//! The split roles through the real binary: `queue import --kafka` then `matyan ingest` against a real broker (tansu), and `matyan api` alone.
//!
//! The Kafka test needs the tansu binary (see `tests/common/broker.rs`); without it the test prints
//! a message and passes, unless `CI` is set.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::broker::Broker;
use common::server::{self, Server};
use serde_json::Value;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kafka-samples/golden-10k.jsonl.gz");
const GOLDEN_RUN: &str = "00000000000000000000000000010000";
const GOLDEN_RECORDS: u64 = 10_003;

fn matyan(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run matyan")
}

/// Starts `matyan api` on a free loopback port over the store in `data_dir`, with `extra` flags and
/// `env`; returns it with its address.
fn start_api(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Server, SocketAddr) {
    let child = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["api", "--data-dir", data_dir.to_str().unwrap(), "--host", "127.0.0.1", "--port", "0"])
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start matyan api");
    let mut api = Server(child);
    let addr = server::wait_for_addr(&mut api, data_dir);
    (api, addr)
}

/// One HTTP/1.1 GET whose body may be binary (the streaming codec); returns the status and the raw
/// body (chunk framing included).
fn get_bytes(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, response[split + 4..].to_vec())
}

/// Counts the `val` keys of the golden run's sequences in `kv dump`.
fn golden_val_keys(data_dir: &Path) -> usize {
    let out = matyan(&["kv", "dump", "--dir", "runs", "--data-dir", data_dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "kv dump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|row| {
            let key = &row["key"];
            key[0] == GOLDEN_RUN && key[1] == "seqs" && key[4] == "val"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_import_kafka_then_ingest_stores_the_golden_run() {
    let Some(broker) = Broker::start() else { return };
    let topic = "roles-ingestion";
    broker.create_topic(topic, 3).await;
    broker.create_topic("control-events", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap.as_str()),
        ("KAFKA_DATA_INGESTION_TOPIC", topic),
        ("CORS_ORIGINS", "http://localhost:3000"),
    ];

    let out = matyan(&["queue", "import", GOLDEN, "--kafka", "--progress-every", "5000"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "queue import --kafka failed: {stderr}");
    assert!(stdout.contains(&format!("appended {GOLDEN_RECORDS} records")), "summary: {stdout}");
    assert!(stdout.contains(&format!("to topic {topic} (3 partitions)")), "summary: {stdout}");
    assert!(stderr.contains("queue import: 5000 records"), "progress lines: {stderr}");
    // The golden records share one key, so one partition holds them all, in order.
    assert!(stdout.contains(&format!("{GOLDEN_RECORDS} records at offsets 0..=10002")), "summary: {stdout}");
    // The embedded store was not touched.
    assert!(!data_dir.exists());

    let port = server::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Key-per-step, pinned: the count below reads the reference's `seqs` keys.
    let config = dir.path().join("key-per-step.toml");
    std::fs::write(&config, "[storage]\nsequence_layout = \"key_per_step\"\n").unwrap();
    let mut ingest = server::start_ingest(Path::new(data), port, &env, &["--config", config.to_str().unwrap()]);
    assert_eq!(server::get(addr, "/health/live/").0, 200);

    let processed = common::wait::blocking_until_ok("every golden record processed", Duration::from_secs(180), || {
        let (status, body) = server::get(addr, "/metrics/");
        assert_eq!(status, 200, "{body}");
        let processed = server::metric_sum(&body, "matyan_ingestion_messages_processed_total", "");
        if processed >= GOLDEN_RECORDS as f64 {
            return Ok(processed);
        }
        if let Some(status) = ingest.0.try_wait().unwrap() {
            panic!("matyan ingest exited early: {status}");
        }
        Err(processed)
    });
    assert_eq!(processed, GOLDEN_RECORDS as f64);
    let (status, body) = server::get(addr, "/health/ready/");
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["checks"]["ingest"], "ok", "{body}");
    // The probes listener serves no REST API.
    assert_eq!(server::get(addr, "/api/v1/rest/runs/search/run/").0, 404);

    let status = server::terminate(ingest);
    assert!(status.success(), "matyan ingest exited with {status}");
    assert_eq!(golden_val_keys(&data_dir), 10_000);
}

#[test]
fn api_serves_the_rest_api_alone_on_a_seeded_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = matyan(&["dev", "seed", "--data-dir", data], &[]);
    assert!(out.status.success(), "dev seed failed: {}", String::from_utf8_lossy(&out.stderr));

    let (api, addr) = start_api(dir.path(), &[], &[]);

    let (status, body) = server::get(addr, "/health/ready/");
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "ok");
    // No ingestion pipeline runs in this role.
    assert!(ready["checks"].get("ingest").is_none(), "{body}");
    let (status, body) = get_bytes(addr, "/api/v1/rest/runs/search/run/");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        body.windows(10).any(|w| w == b"seed-run-0"),
        "the seeded runs are found: {}",
        String::from_utf8_lossy(&body)
    );
    let (status, body) = server::get(addr, "/metrics/");
    assert_eq!(status, 200);
    assert!(body.contains("matyan_build_info"), "{body}");

    let status = server::terminate(api);
    assert!(status.success(), "matyan api exited with {status}");
    assert!(!dir.path().join("serve.addr").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_with_source_kafka_publishes_a_rest_deletion_as_delete_run_on_the_ingestion_topic() {
    // Issue 11: `matyan api` queued delete_run into its own embedded queue, so a deployment on Kafka
    // never purged the run. With `--source kafka` it produces it where the ingestion workers read.
    let Some(broker) = Broker::start() else { return };
    let topic = "data-ingestion";
    broker.create_topic(topic, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = matyan(&["dev", "seed", "--data-dir", data, "--runs", "1"], &[]);
    assert!(out.status.success(), "dev seed failed: {}", String::from_utf8_lossy(&out.stderr));
    let (api, addr) = start_api(dir.path(), &["--source", "kafka"], &[("KAFKA_BOOTSTRAP_SERVERS", &broker.bootstrap)]);

    let run = "5eed000000000000";
    let status = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(stream, "DELETE /api/v1/rest/runs/{run}/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.split(' ').nth(1).unwrap().to_owned()
    };
    assert_eq!(status, "200");
    let records = broker.read_topic_until(topic, "roles-check", Duration::from_secs(30), |got| !got.is_empty()).await;
    use rdkafka::Message as _;
    assert_eq!(records[0].key(), Some(run.as_bytes()));
    let value: Value = serde_json::from_slice(records[0].payload().unwrap()).unwrap();
    assert_eq!((value["type"].as_str(), value["run_id"].as_str()), (Some("delete_run"), Some(run)));
    // Nothing went to the embedded queue of the api's own store.
    let dump = matyan(&["kv", "dump", "--dir", "ours", "--data-dir", data], &[]);
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(!text.contains("\"queue\""), "no embedded queue record: {text}");

    let status = server::terminate(api);
    assert!(status.success(), "matyan api exited with {status}");
}

#[test]
fn dev_seed_writes_a_new_store_in_the_configured_sequence_layout() {
    use matyan::storage::kv::{Database, EmbeddedEngine, Limits};
    use matyan::storage::layout::{Layout, SequenceLayoutKind};
    let layout_of = |dir: &Path| {
        let db = Database::open_embedded(dir, EmbeddedEngine::Fjall, Limits::FDB).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { Layout::open(&db).await.unwrap().seqs.kind() })
    };
    let chunked = tempfile::tempdir().unwrap();
    let out = matyan(&["dev", "seed", "--data-dir", chunked.path().to_str().unwrap(), "--runs", "1"], &[]);
    assert!(out.status.success(), "dev seed failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(layout_of(chunked.path()), SequenceLayoutKind::Chunked, "the default of a new store");

    let kps = tempfile::tempdir().unwrap();
    let config = kps.path().join("matyan.toml");
    std::fs::write(&config, "[storage]\nsequence_layout = \"key_per_step\"\n").unwrap();
    let data = kps.path().join("data");
    let args =
        ["dev", "seed", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--runs", "1"];
    let out = matyan(&args, &[]);
    assert!(out.status.success(), "dev seed failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(layout_of(&data), SequenceLayoutKind::KeyPerStep);
}
