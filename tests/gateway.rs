//! The SDK gateway over a real socket: the WebSocket protocol of `matyan-client` 0.3.0 and the
//! presigned uploads, with hostile input. The gateway runs in process over the memory backend and
//! an embedded queue, so every test can check exactly what reached the queue and the blob store.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use matyan::config::Config;
use matyan::gateway::{Gateway, QueueSink, UploadSigner};
use matyan::ingest::{Queue, decode};
use matyan::storage::kv::Database;
use matyan::storage::layout::Layout;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const RUN: &str = "0123456789abcdef0123456789abcdef";

struct Harness {
    addr: SocketAddr,
    queue: Queue,
    blobs: tempfile::TempDir,
    secret: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(configure: impl FnOnce(&mut Config)) -> Harness {
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    let blobs = tempfile::tempdir().unwrap();
    let state = common::app_state_with(&db, &layout, |c| {
        c.blobs.dir = blobs.path().to_path_buf();
        configure(c);
    });
    let queue = Queue::open(&db, &layout.dirs.ours, "data-ingestion", 6).await.unwrap();
    let sink = QueueSink::start(queue.clone(), state.config.gateway.append_batch_bytes);
    let gateway = Gateway::new(&state.config, Arc::new(sink), Arc::clone(&state.blobs.store));
    let secret = state.config.blobs.uri_secret.clone();
    let state = state.with_gateway(gateway);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(matyan::http::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Harness { addr, queue, blobs, secret, _stop: stop }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, run: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws/runs/{run}")).await.unwrap();
    ws
}

/// Sends one text frame and returns the decoded reply.
async fn frame(ws: &mut Ws, text: &str) -> serde_json::Value {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a reply within 10 s") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text reply, got {other:?}"),
        }
    }
}

fn metric(step: u64) -> serde_json::Value {
    serde_json::json!({"type": "log_metric", "run_id": RUN, "name": "loss", "value": 1.0 / (step as f64 + 1.0),
        "step": step, "epoch": null, "context": {"subset": "train"}, "dtype": "float",
        "client_datetime": "2026-01-01T00:00:00+00:00"})
}

fn metrics(steps: std::ops::Range<u64>) -> String {
    serde_json::Value::Array(steps.map(metric).collect()).to_string()
}

async fn queued(queue: &Queue) -> Vec<matyan::ingest::Record> {
    let mut out = Vec::new();
    for p in queue.partition_ids() {
        out.extend(queue.read(p, 0, 100_000).await.unwrap());
    }
    out
}

fn ok() -> serde_json::Value {
    serde_json::json!({"status": "ok", "error": null})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_frames_are_answered_once_queued_and_land_in_order_on_the_runs_partition() {
    let h = start(|_| {}).await;
    let mut ws = connect(h.addr, RUN).await;
    assert_eq!(frame(&mut ws, r#"{"type":"create_run","client_datetime":"2026-01-01T00:00:00+00:00"}"#).await, ok());
    for chunk in 0..3 {
        assert_eq!(frame(&mut ws, &metrics(chunk * 100..(chunk + 1) * 100)).await, ok());
    }
    let records = queued(&h.queue).await;
    assert_eq!(records.len(), 301);
    let partition = h.queue.partition_for_key(RUN.as_bytes());
    assert!(records.iter().all(|r| r.partition == partition && r.key.as_deref() == Some(RUN.as_bytes())));
    let steps: Vec<i64> = records[1..]
        .iter()
        .map(|r| match decode(&r.value).unwrap().payload {
            matyan::ingest::message::Payload::LogMetric(m) => m.step.unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(steps, (0..300).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_reply_write_nothing_and_leave_the_connection_usable() {
    let h = start(|_| {}).await;
    let mut ws = connect(h.addr, RUN).await;
    let cases = [
        ("not json", "invalid JSON"),
        ("[1, 2", "invalid JSON"),
        ("42", "a frame must be a JSON object"),
        (r#"{"type":"launch_rockets"}"#, "message 0 (launch_rockets): Input tag 'launch_rockets'"),
        (r#"{"run_id":"x"}"#, "discriminator 'type'"),
        (
            r#"{"type":"log_metric","name":7,"value":1,"step":1,"epoch":null,"context":null,"dtype":null,"client_datetime":"2026-01-01T00:00:00Z"}"#,
            "field `name`: Input should be a valid string",
        ),
        (
            r#"{"type":"log_metric","name":"n","value":"high","step":1,"epoch":null,"context":null,"dtype":null,"client_datetime":"2026-01-01T00:00:00Z"}"#,
            "field `value`",
        ),
        (
            r#"{"type":"log_metric","name":"n","value":1,"step":1,"epoch":null,"context":[1],"dtype":null,"client_datetime":"2026-01-01T00:00:00Z"}"#,
            "field `context`: Input should be a valid dictionary",
        ),
        (
            r#"{"type":"create_run","client_datetime":"soon"}"#,
            "field `client_datetime`: Input should be a valid datetime",
        ),
        (r#"{"type":"log_hparams","value":[1]}"#, "field `value`: Input should be a valid dictionary"),
    ];
    for (bad, want) in cases {
        let reply = frame(&mut ws, bad).await;
        assert_eq!(reply["status"], "error", "{bad}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(want), "{bad}: {error}");
    }
    assert!(queued(&h.queue).await.is_empty(), "nothing of a refused frame is written");
    assert_eq!(frame(&mut ws, &metrics(0..2)).await, ok());
    assert_eq!(queued(&h.queue).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_with_one_invalid_message_publishes_nothing_deliberate_fix_of_the_references_prefix_publish() {
    let h = start(|_| {}).await;
    let mut ws = connect(h.addr, RUN).await;
    let mut items: Vec<serde_json::Value> = (0..50).map(metric).collect();
    items.insert(37, serde_json::json!({"type": "add_tag"}));
    let reply = frame(&mut ws, &serde_json::Value::Array(items).to_string()).await;
    assert_eq!(reply["status"], "error");
    let error = reply["error"].as_str().unwrap();
    assert!(error.starts_with("message 37 (add_tag): field `tag_name`: Field required"), "{error}");
    assert!(queued(&h.queue).await.is_empty(), "the reference would have published the 37 messages before it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_closes_the_connection_with_1009_and_writes_nothing() {
    let h = start(|c| c.gateway.max_frame_bytes = 16 * 1024).await;
    let mut ws = connect(h.addr, RUN).await;
    let big = metrics(0..200);
    assert!(big.len() > 16 * 1024);
    ws.send(Message::text(big)).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("the server ends the connection");
    match end {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(close.code, CloseCode::Size),
        other => panic!("expected a close frame with code 1009, got {other:?}"),
    }
    assert!(queued(&h.queue).await.is_empty());
    // The next connection is served as usual.
    let mut ws = connect(h.addr, RUN).await;
    assert_eq!(frame(&mut ws, &metrics(0..10)).await, ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_with_503_and_the_rest_keep_working() {
    let h = start(|c| c.gateway.max_connections = 50).await;
    let mut open = Vec::new();
    for i in 0..50 {
        open.push(connect(h.addr, &format!("{i:032x}")).await);
    }
    for _ in 0..20 {
        let refused = tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ws/runs/{RUN}", h.addr)).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 503);
                assert!(resp.headers().contains_key("retry-after"));
            }
            other => panic!("expected a 503, got {other:?}"),
        }
    }
    for ws in &mut open {
        assert_eq!(frame(ws, r#"{"type":"finish_run"}"#).await, ok());
    }
    drop(open.pop());
    // A closed connection frees its place (the server notices the close asynchronously).
    let url = format!("ws://{}/api/v1/ws/runs/{RUN}", h.addr);
    let mut again = common::wait::until_ok_async("a freed place", Duration::from_secs(10), || async {
        tokio_tungstenite::connect_async(url.as_str()).await.map(|(ws, _)| ws)
    })
    .await;
    assert_eq!(frame(&mut again, r#"{"type":"finish_run"}"#).await, ok());
    assert_eq!(queued(&h.queue).await.len(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_runs_opened_at_once_are_each_served_and_probes_still_answer() {
    // 2,000 in CI (a debug build); `MATYAN_GATEWAY_RUNS=10000` runs the issue's 10,000.
    let runs: u32 = std::env::var("MATYAN_GATEWAY_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let h = start(|c| c.gateway.max_connections = runs as usize).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..runs {
        let addr = h.addr;
        tasks.spawn(async move {
            match tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws/runs/{i:032x}")).await {
                Ok((mut ws, _)) => {
                    let reply =
                        frame(&mut ws, r#"{"type":"create_run","client_datetime":"2026-01-01T00:00:00Z"}"#).await;
                    assert_eq!(reply, ok());
                    Some(ws)
                }
                Err(e) => panic!("connection {i}: {e}"),
            }
        });
        // Keep the loopback accept backlog from overflowing.
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut held = Vec::new();
    while let Some(r) = tasks.join_next().await {
        held.push(r.unwrap());
    }
    assert_eq!(queued(&h.queue).await.len(), runs as usize);
    // The health probe still answers with every connection open.
    let (status, _) = http(h.addr, "GET /health/live/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_replies_stops_being_read_and_is_closed() {
    let h = start(|c| c.gateway.send_timeout_ms = 300).await;
    // A raw socket with a tiny receive buffer that never reads: the replies fill it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let stream = socket.connect(h.addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/api/v1/ws/runs/{RUN}", h.addr), stream).await.unwrap();
    let frame_text = r#"{"type":"log_terminal_line","line":"x","step":0}"#;
    let mut sent = 0u64;
    let mut closed = false;
    for _ in 0..2_000_000u32 {
        match tokio::time::timeout(Duration::from_secs(5), ws.send(Message::text(frame_text))).await {
            Ok(Ok(())) => sent += 1,
            // Writes block (the server stopped reading) or fail (it closed the connection).
            _ => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the server kept reading a client that never reads its replies");
    let stored = queued(&h.queue).await.len() as u64;
    assert!(stored < sent, "the server stopped reading: {stored} stored of {sent} sent");
    // It closes the connection after the send timeout, and keeps serving others.
    let mut ws2 = connect(h.addr, RUN).await;
    assert_eq!(frame(&mut ws2, r#"{"type":"finish_run"}"#).await, ok());
}

/// One raw HTTP/1.1 request; returns the status and the body.
async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before the whole body is sent and close.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

async fn presign(h: &Harness, body: &str) -> (u16, serde_json::Value) {
    let head = format!(
        "POST /api/v1/rest/artifacts/presign HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        h.addr,
        body.len()
    );
    let (status, body) = http(h.addr, &head, body.as_bytes()).await;
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

async fn put(h: &Harness, url: &str, content_type: &str, bytes: &[u8]) -> (u16, String) {
    let path = url.split_once(&h.addr.to_string()).map_or(url, |(_, p)| p);
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        h.addr,
        bytes.len()
    );
    http(h.addr, &head, bytes).await
}

fn blob_files(h: &Harness) -> usize {
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map_or(0, |rd| rd.map(|e| e.unwrap().path()).map(|p| if p.is_dir() { count(&p) } else { 1 }).sum())
    }
    count(h.blobs.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presigned_upload_stores_the_bytes_and_the_content_type_under_the_runs_key() {
    let h = start(|_| {}).await;
    let (status, v) =
        presign(&h, &format!(r#"{{"run_id":"{RUN}","artifact_path":"seq/images/3.png","content_type":"image/png"}}"#))
            .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["s3_key"], format!("{RUN}/seq/images/3.png"));
    assert!(v["headers"].is_null());
    let url = v["upload_url"].as_str().unwrap();
    assert!(url.starts_with(&format!("http://{}/api/v1/rest/artifacts/upload/?", h.addr)), "{url}");
    assert_eq!(put(&h, url, "image/png", b"\x89PNG bytes").await.0, 200);
    let stored = std::fs::read(h.blobs.path().join(RUN).join("seq/images/3.png")).unwrap();
    assert_eq!(stored, b"\x89PNG bytes");
    let key = format!("{RUN}/seq/images/3.png");
    let blob = matyan::blobs::BlobStore::get(&matyan::blobs::LocalDirStore::new(h.blobs.path()), &key).await.unwrap();
    assert_eq!(blob.content_type, "image/png", "the signed content type is kept with the object");
    // The same URL with another content type is refused, as S3 refuses it.
    assert_eq!(put(&h, url, "text/plain", b"other").await.0, 403);
    assert_eq!(std::fs::read(h.blobs.path().join(RUN).join("seq/images/3.png")).unwrap(), b"\x89PNG bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigning_a_path_that_leaves_the_run_is_refused() {
    let h = start(|_| {}).await;
    for path in ["../other/x.png", "a/../../x", "/etc/passwd", "", "a//b", "."] {
        let (status, v) = presign(&h, &format!(r#"{{"run_id":"{RUN}","artifact_path":"{path}"}}"#)).await;
        assert_eq!(status, 400, "{path:?}: {v}");
        assert!(v["detail"].as_str().unwrap().contains("invalid"), "{v}");
    }
    for run in ["..", "a/b", ""] {
        let (status, _) = presign(&h, &format!(r#"{{"run_id":"{run}","artifact_path":"x.png"}}"#)).await;
        assert!(status == 400 || status == 422, "{run:?}: {status}");
    }
    assert_eq!(presign(&h, "not json").await.0, 422);
    assert_eq!(blob_files(&h), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_cap_expired_or_with_a_forged_signature_write_nothing() {
    let h = start(|c| c.gateway.max_upload_bytes = 1000).await;
    let (_, v) = presign(&h, &format!(r#"{{"run_id":"{RUN}","artifact_path":"a.bin"}}"#)).await;
    let url = v["upload_url"].as_str().unwrap().to_owned();
    let octet = "application/octet-stream";
    assert_eq!(put(&h, &url, octet, &[7u8; 1001]).await.0, 413);

    let forged = url.replace("a.bin", "b.bin");
    assert_eq!(put(&h, &forged, octet, b"x").await.0, 403);
    let sig_at = url.find("signature=").unwrap() + "signature=".len();
    let mut tampered = url.clone();
    let flipped = if &url[sig_at..=sig_at] == "0" { "1" } else { "0" };
    tampered.replace_range(sig_at..=sig_at, flipped);
    assert_eq!(put(&h, &tampered, octet, b"x").await.0, 403);

    // A genuine signature whose expiry has passed.
    let key = format!("{RUN}/a.bin");
    let past = 1_000_000_000;
    let signature = UploadSigner::new(&h.secret).sign(&key, past, octet);
    let expired = format!(
        "/api/v1/rest/artifacts/upload/?key={RUN}%2Fa.bin&expires={past}&content_type=application%2Foctet-stream&signature={signature}"
    );
    let (status, body) = put(&h, &expired, octet, b"x").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("expired"), "{body}");
    assert_eq!(blob_files(&h), 0, "nothing was written");
    assert_eq!(put(&h, &url, octet, &[7u8; 1000]).await.0, 200);
    assert_eq!(blob_files(&h), 1);
}
