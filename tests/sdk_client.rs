//! The real `matyan-client==0.3.0` SDK against the real binary (issue 8): a run logged through the
//! gateway of `matyan serve` reads back exactly through the SDK's read API, resumed runs append;
//! the reference gateway `matyan-frontier==0.3.0` → Kafka (tansu) → `matyan serve --source kafka`
//! answers as the all-in-one path does and a REST delete travels through Kafka; and our
//! `matyan gateway` writes records of the same shape as the reference's, for the SDK's messages
//! and for the edge cases of `tests/sdk/edge_messages.jsonl`.
//!
//! Needs `MATYAN_SDK_PYTHON` (see `tests/common/sdk.rs`) and, for the Kafka tests, the tansu
//! binary (see `tests/common/broker.rs`); without them the tests print a message and pass, unless
//! `CI` is set. The SDK side is `tests/sdk/sdk_run.py`, which compares every value it reads back
//! with what it logged and exits non-zero naming the first difference.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::broker::Broker;
use common::sdk;
use common::server::{self, Server};
use rdkafka::message::{Message, OwnedMessage};
use serde_json::Value;

const RUN: &str = "5d0c1e2f3a4b5c6d7e8f90a1b2c3d4e5";
const TOPIC: &str = "data-ingestion";
const CONTROL: &str = "control-events";

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn start_serve(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Server, SocketAddr) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_matyan"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start matyan serve");
    let mut serve = Server(child);
    let addr = server::wait_for_addr(&mut serve, data_dir);
    (serve, addr)
}

#[test]
fn the_real_sdk_reads_back_exactly_what_it_logged_through_matyan_serve_and_a_resumed_run_appends() {
    let Some(py) = sdk::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (serve, addr) = start_serve(&data, &[], &[]);
    let u = url(addr);
    let env = [("MATYAN_FRONTIER_URL", u.as_str()), ("MATYAN_BACKEND_URL", u.as_str())];
    let data_arg = data.to_str().unwrap();

    // Phase 1: hparams, 20,000 points over 3 metrics x 2 contexts, tags, texts, log records,
    // terminal lines and an image; the script compares every value of every series, the records,
    // the lines, the text, and the image bytes (read back and under <data-dir>/blobs).
    sdk::script(&py, &["log", "--run", RUN, "--phase", "1"], &env);
    let one = sdk::check(&py, &["check", "--run", RUN, "--phases", "1", "--data-dir", data_arg], &env);
    assert_eq!(one["points"], 20_000, "{one}");
    let a = &one["answers"];
    assert_eq!(a["tags"], serde_json::json!(["baseline", "sdk"]));
    assert_eq!(a["active"], false, "finish_run was ingested");
    assert_eq!(a["terminal"], serde_json::json!(["terminal line one", "terminal line two: ünïcode"]));
    assert_eq!(a["log_records"].as_array().unwrap().len(), 4);
    assert_eq!(a["image"], serde_json::json!({"caption": "tiny", "format": "PNG"}));
    assert_eq!(a["many_texts"], 300, "frames over 64 KB (encoded on the blocking pool) are stored whole");
    let blob = std::fs::read(data.join("blobs").join(RUN).join("seq/img/0.png")).unwrap();
    assert!(blob.starts_with(b"\x89PNG\r\n\x1a\n"), "the stored blob is the uploaded PNG");

    // Phase 2: `Run(run_hash=H, force_resume=True)` appends 3,000 points and a tag.
    sdk::script(&py, &["log", "--run", RUN, "--phase", "2"], &env);
    let two = sdk::check(&py, &["check", "--run", RUN, "--phases", "2", "--data-dir", data_arg], &env);
    assert_eq!(two["points"], 23_000, "{two}");
    assert_eq!(two["answers"]["tags"], serde_json::json!(["baseline", "resumed", "sdk"]));
    assert_eq!(two["answers"]["params"], one["answers"]["params"], "resuming keeps the params");

    let status = server::terminate(serve);
    assert!(status.success(), "matyan serve exited with {status}");
}

/// Reads `topic` from its start until a record of `run` satisfies `last`; returns the run's
/// records in order (all of a run's records share one partition).
async fn run_records(broker: &Broker, topic: &str, group: &str, run: &str, last: fn(&Value) -> bool) -> Vec<Value> {
    let of_run = |m: &OwnedMessage| m.key() == Some(run.as_bytes());
    let decode = |m: &OwnedMessage| -> Value { serde_json::from_slice(m.payload().unwrap_or_default()).unwrap() };
    let got = broker
        // Called after each record: looking at the newest alone keeps the read linear.
        .read_topic_until(topic, group, Duration::from_secs(60), |msgs| {
            msgs.last().is_some_and(|m| of_run(m) && last(&decode(m)))
        })
        .await;
    got.iter().filter(|m| of_run(m)).map(decode).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_gateway_through_kafka_answers_as_the_all_in_one_path_and_a_rest_delete_travels_through_kafka() {
    let Some(py) = sdk::python() else { return };
    let Some(broker) = Broker::start() else { return };
    broker.create_topic(TOPIC, 6).await;
    broker.create_topic(CONTROL, 1).await;
    let dir = tempfile::tempdir().unwrap();
    // The reference gateway has no blob store here (it presigns S3 URLs), so neither path logs the image.
    let log = ["log", "--run", RUN, "--phase", "1", "--no-image"];
    let check = ["check", "--run", RUN, "--phases", "1", "--no-image"];

    // The all-in-one path: the SDK straight into `matyan serve`.
    let (serve, addr) = start_serve(&dir.path().join("all-in-one"), &[], &[]);
    let u = url(addr);
    let env = [("MATYAN_FRONTIER_URL", u.as_str()), ("MATYAN_BACKEND_URL", u.as_str())];
    sdk::script(&py, &log, &env);
    let direct = sdk::check(&py, &check, &env);
    assert!(server::terminate(serve).success());

    // The reference path: SDK → matyan-frontier → tansu → `matyan serve --source kafka`.
    let kafka_env = [("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap.as_str())];
    let (serve, addr) = start_serve(&dir.path().join("kafka"), &["--source", "kafka"], &kafka_env);
    let frontier = sdk::start_frontier(&py, &broker.bootstrap, TOPIC);
    let (fu, bu) = (url(frontier.addr), url(addr));
    let env = [("MATYAN_FRONTIER_URL", fu.as_str()), ("MATYAN_BACKEND_URL", bu.as_str())];
    sdk::script(&py, &log, &env);
    let reference = sdk::check(&py, &check, &env);
    assert_eq!(reference["points"], 20_000);
    assert_eq!(reference["answers"], direct["answers"], "the two paths answer alike");

    // A REST delete is produced to data-ingestion as delete_run, consumed, and the run is purged.
    let (status, body) = sdk::request(addr, "DELETE", &format!("/api/v1/rest/runs/{RUN}/"), None);
    assert_eq!(status, 200, "{body}");
    let records = run_records(&broker, TOPIC, "sdk-test-reader", RUN, |v| v["type"] == "delete_run").await;
    let delete = records.last().unwrap();
    assert_eq!(delete["run_id"], RUN);
    assert_eq!(delete["payload"], serde_json::json!({}));
    assert!(records.iter().any(|v| v["type"] == "finish_run"), "the frontier's records precede it");
    common::wait::until_ok("the deleted run is no longer served", Duration::from_secs(60), || {
        match server::get(addr, &format!("/api/v1/rest/runs/{RUN}/info/")).0 {
            404 => Ok(()),
            status => Err(status),
        }
    })
    .await;
    let (status, body) = sdk::request(addr, "GET", "/api/v1/rest/runs/search/run/?q=", None);
    assert_eq!(status, 200);
    assert!(!body.contains(RUN), "the deleted run is absent from search");

    // And the ingestion announces it on control-events.
    let events = run_records(&broker, CONTROL, "sdk-test-control", RUN, |v| v["type"] == "run_deleted").await;
    assert_eq!(events.last().unwrap()["payload"], serde_json::json!({"run_id": RUN}));

    drop(frontier);
    assert!(server::terminate(serve).success());
}

/// `client_datetime` as the SDK writes it: `YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`.
fn is_client_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r.clone()).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let Some(body) = s.strip_suffix("+00:00") else { return false };
    let (secs, frac) = body.split_once('.').unwrap_or((body, "0"));
    secs.len() == 19
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && !frac.is_empty()
        && frac.bytes().all(|d| d.is_ascii_digit())
}

/// A record with its times blanked: no `timestamp`, `client_datetime` checked then blanked, and a
/// log record's client-side `timestamp` blanked. Serialized in its key order (compared as text).
fn blank_times(mut v: Value) -> String {
    let obj = v.as_object_mut().unwrap();
    assert!(obj.shift_remove("timestamp").is_some_and(|t| t.as_str().is_some_and(|t| t.ends_with('Z'))));
    let kind = obj["type"].as_str().unwrap().to_owned();
    if let Some(payload) = obj.get_mut("payload").and_then(Value::as_object_mut) {
        if let Some(dt) = payload.get_mut("client_datetime") {
            assert!(dt.as_str().is_some_and(is_client_datetime), "{kind}: client_datetime {dt}");
            *dt = Value::String(String::new());
        }
        if kind == "log_record"
            && let Some(t) = payload.get_mut("timestamp")
        {
            assert!(t.is_f64(), "log_record timestamp {t}");
            *t = Value::Null;
        }
    }
    serde_json::to_string(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_gateway_and_the_reference_gateway_write_records_of_the_same_shape_and_answer_edge_cases_alike() {
    let Some(py) = sdk::python() else { return };
    let Some(broker) = Broker::start() else { return };
    let (ours, theirs) = ("shape-ours", "shape-reference");
    broker.create_topic(ours, 6).await;
    broker.create_topic(theirs, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let shape = ["shape", "--run", RUN];

    // Ours: `matyan gateway` alone, producing to Kafka.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["gateway", "--host", "127.0.0.1", "--port", "0", "--data-dir", dir.path().to_str().unwrap()])
        .env("KAFKA_BOOTSTRAP_SERVERS", &broker.bootstrap)
        .env("KAFKA_DATA_INGESTION_TOPIC", ours)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start matyan gateway");
    let mut gateway = Server(child);
    let addr_file = dir.path().join("gateway.addr");
    let addr: SocketAddr = common::wait::blocking_until_ok("gateway.addr written", Duration::from_secs(30), || {
        assert!(gateway.0.try_wait().unwrap().is_none(), "matyan gateway exited before listening");
        std::fs::read_to_string(&addr_file).map(|text| text.trim().parse().unwrap())
    });
    let u = url(addr);
    sdk::script(&py, &shape, &[("MATYAN_FRONTIER_URL", u.as_str()), ("MATYAN_BACKEND_URL", u.as_str())]);

    // The reference: matyan-frontier.
    let frontier = sdk::start_frontier(&py, &broker.bootstrap, theirs);
    let fu = url(frontier.addr);
    sdk::script(&py, &shape, &[("MATYAN_FRONTIER_URL", fu.as_str()), ("MATYAN_BACKEND_URL", fu.as_str())]);

    let finished = |v: &Value| v["type"] == "finish_run";
    let ours = run_records(&broker, ours, "shape-ours-reader", RUN, finished).await;
    let theirs = run_records(&broker, theirs, "shape-reference-reader", RUN, finished).await;
    // create_run, hparams, name, description, 3 tag messages, 150 points, 2 odd points, a text, 2
    // records, finish_run.
    assert_eq!(theirs.len(), 163, "the reference wrote every message once");
    let ours: Vec<String> = ours.into_iter().map(blank_times).collect();
    let theirs: Vec<String> = theirs.into_iter().map(blank_times).collect();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "record {i} differs (ours, then the reference's)");
    }
    assert_eq!(ours.len(), theirs.len());

    // Edge cases the SDK does not send but a client may (lax types, odd date-times, invalid
    // messages), one frame each: the same replies and, for those accepted, the same records.
    let mut replies = Vec::new();
    for gw in [addr, frontier.addr] {
        replies.push(send_edge_messages(gw).await);
    }
    let lines: Vec<&str> = EDGE_MESSAGES.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(replies[0][i], replies[1][i], "reply to {line} (ours, then the reference's)");
    }
    let accepted = replies[0].iter().filter(|ok| **ok).count();
    assert!(accepted > 20 && accepted < lines.len(), "both valid and invalid messages: {accepted}");
    let ours = run_records(&broker, "shape-ours", "edge-ours-reader", EDGE_RUN, finished).await;
    let theirs = run_records(&broker, "shape-reference", "edge-reference-reader", EDGE_RUN, finished).await;
    assert_eq!(theirs.len(), accepted);
    let drop_timestamp = |mut v: Value| {
        v.as_object_mut().unwrap().shift_remove("timestamp");
        serde_json::to_string(&v).unwrap()
    };
    let ours: Vec<String> = ours.into_iter().map(drop_timestamp).collect();
    let theirs: Vec<String> = theirs.into_iter().map(drop_timestamp).collect();
    assert_eq!(ours, theirs, "records of the edge cases (ours, then the reference's)");

    drop(frontier);
    assert!(server::terminate(gateway).success());
}

/// One message per line, sent as a frame of its own (`run_id` omitted: the path's is used).
const EDGE_MESSAGES: &str = include_str!("sdk/edge_messages.jsonl");
const EDGE_RUN: &str = "0e0d0c0b0a09080706050403020100ff";

/// Sends every line of [`EDGE_MESSAGES`] to the gateway at `addr` as a frame of its own; returns
/// which were acknowledged.
async fn send_edge_messages(addr: SocketAddr) -> Vec<bool> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let url = format!("ws://{addr}/api/v1/ws/runs/{EDGE_RUN}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut acked = Vec::new();
    for line in EDGE_MESSAGES.lines() {
        ws.send(Ws::Text(line.into())).await.unwrap();
        let reply = loop {
            match ws.next().await.expect("a reply").unwrap() {
                Ws::Text(t) => break serde_json::from_str::<Value>(&t).unwrap(),
                Ws::Ping(_) | Ws::Pong(_) => continue,
                other => panic!("{other:?} in reply to {line}"),
            }
        };
        acked.push(reply["status"] == "ok");
    }
    ws.close(None).await.unwrap();
    acked
}
