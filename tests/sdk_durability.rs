//! What the gateway acknowledges survives `kill -9` of `matyan serve` (issue 8): four clients
//! speaking the SDK's protocol (frames of 100 `log_metric` messages as a JSON array, stop-and-wait
//! on the `{"status":"ok"}` reply), one run each, so their frames share the embedded queue's group
//! commits, stream while the server is killed; after a restart on the same data directory every
//! acknowledged point is stored exactly once, in order.
//!
//! The points carry no step, so the store numbers them as they are applied: a lost point shows as a
//! gap in the values and a point applied twice as a repeated value, neither hidden by a step key.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::sdk;
use common::server::{self, Server};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const RUNS: [&str; 4] = [
    "d1e2a3b4c5d6e7f8a9b0c1d2e3f4a5b6",
    "d1e2a3b4c5d6e7f8a9b0c1d2e3f4a5b7",
    "d1e2a3b4c5d6e7f8a9b0c1d2e3f4a5b8",
    "d1e2a3b4c5d6e7f8a9b0c1d2e3f4a5b9",
];
const FRAME: u64 = 100;
/// Points each client would send if nothing stopped it (50,000 in all).
const POINTS: u64 = 12_500;
/// The server is killed once the clients together have this many points acknowledged.
const KILL_AFTER: u64 = 15_000;
/// The value of the points sent after the restart, which mark the end of the series.
const SENTINEL: f64 = -1.0;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn metric(run: &str, value: f64) -> Value {
    json!({
        "type": "log_metric", "run_id": run, "name": "loss", "value": value, "step": null, "epoch": null,
        "context": {}, "dtype": "float", "client_datetime": "2026-01-01T00:00:00.000001+00:00",
    })
}

async fn connect(addr: SocketAddr, run: &str) -> Socket {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws/runs/{run}")).await.unwrap();
    ws
}

/// Sends one frame and waits for its reply: `Some(true)` when acknowledged, `None` when the
/// connection broke first.
async fn exchange(ws: &mut Socket, frame: &Value) -> Option<bool> {
    ws.send(Message::Text(frame.to_string().into())).await.ok()?;
    loop {
        match ws.next().await? {
            Ok(Message::Text(reply)) => {
                let reply: Value = serde_json::from_str(&reply).unwrap();
                return Some(reply["status"] == "ok");
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(_) | Err(_) => return None,
        }
    }
}

/// Streams points `0..POINTS` (value = index) of `run` until the connection breaks; returns how
/// many were acknowledged, adding each acknowledged frame to `acked` (shared by the clients).
async fn stream(addr: SocketAddr, run: &'static str, acked: Arc<AtomicU64>) -> u64 {
    let mut ws = connect(addr, run).await;
    let create = json!({"type": "create_run", "run_id": run, "client_datetime": "2026-01-01T00:00:00+00:00",
                        "force_resume": false});
    assert_eq!(exchange(&mut ws, &create).await, Some(true), "create_run is acknowledged");
    let mut next = 0;
    while next < POINTS {
        let frame = Value::Array((next..next + FRAME).map(|i| metric(run, i as f64)).collect());
        match exchange(&mut ws, &frame).await {
            Some(true) => {
                next += FRAME;
                acked.fetch_add(FRAME, Ordering::SeqCst);
            }
            Some(false) => panic!("frame at {next} refused"),
            None => break,
        }
    }
    next
}

/// The whole `loss` series of the run through REST, or `None` while the run is unknown.
fn read_series(addr: SocketAddr, run: &str) -> Option<(Vec<i64>, Vec<f64>)> {
    let body = r#"[{"name": "loss", "context": {}}]"#;
    let path = format!("/api/v1/rest/runs/{run}/metric/get-batch/?record_density=0");
    let (status, text) = sdk::request(addr, "POST", &path, Some(body));
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "{text}");
    let traces: Value = serde_json::from_str(&text).unwrap();
    let trace = traces.as_array().unwrap().first()?;
    let iters = trace["iters"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let values = trace["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    Some((iters, values))
}

fn start(data: &Path) -> (Server, SocketAddr) {
    let mut serve = server::start(data, &[]);
    let addr = server::wait_for_addr(&mut serve, data);
    (serve, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_point_the_gateway_acknowledged_is_stored_exactly_once_after_a_kill_9_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut serve, addr) = start(&data);

    let total = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = RUNS.iter().map(|run| tokio::spawn(stream(addr, run, Arc::clone(&total)))).collect();
    common::wait::until_ok("enough points acknowledged", Duration::from_secs(120), || {
        let acked = total.load(Ordering::SeqCst);
        if acked >= KILL_AFTER || clients.iter().all(|c| c.is_finished()) { Ok(()) } else { Err(acked) }
    })
    .await;
    // SIGKILL: nothing of the server's shutdown path runs.
    serve.0.kill().unwrap();
    serve.0.wait().unwrap();
    let mut acked = Vec::new();
    for client in clients {
        acked.push(client.await.unwrap());
    }
    eprintln!("{acked:?} points acknowledged per run before the kill");
    assert!(acked.iter().sum::<u64>() >= KILL_AFTER);

    // Restart on the same data directory (the killed process left its address file behind).
    std::fs::remove_file(data.join("serve.addr")).unwrap();
    let (serve, addr) = start(&data);
    for (run, acked) in RUNS.iter().zip(acked) {
        // One more frame after the restart: once it is readable, everything before it was applied.
        let mut ws = connect(addr, run).await;
        let sentinel = Value::Array((0..FRAME).map(|_| metric(run, SENTINEL)).collect());
        assert_eq!(exchange(&mut ws, &sentinel).await, Some(true), "the restarted gateway acknowledges");
        ws.close(None).await.unwrap();

        let what = format!("{run}: the frame sent after the restart applied");
        let (iters, values) =
            common::wait::until_ok(&what, Duration::from_secs(120), || match read_series(addr, run) {
                Some((iters, values)) if values.last() == Some(&SENTINEL) => Ok((iters, values)),
                other => Err(other.map(|(_, values)| values.len())),
            })
            .await;

        let sentinels = values.iter().rev().take_while(|v| **v == SENTINEL).count();
        assert_eq!(sentinels as u64, FRAME, "{run}: the frame after the restart is stored once");
        let stored = &values[..values.len() - sentinels];
        // Every acknowledged point once, in order; the frame in flight at the kill wholly or not at all.
        let n = stored.len() as u64;
        assert!(n == acked || n == acked + FRAME, "{run}: {n} points stored, {acked} acknowledged");
        let first_bad = stored.iter().enumerate().position(|(i, v)| *v != i as f64);
        assert_eq!(first_bad, None, "{run}: values are 0..{n} once each, in order (first bad index)");
        assert_eq!(iters, (0..values.len() as i64).collect::<Vec<_>>(), "{run}: steps are 0.. in order");
    }

    assert!(server::terminate(serve).success());
}
