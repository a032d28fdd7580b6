//! Malformed requests against the in-process router (issue 4, "Malformed requests"): bad JSON
//! bodies, wrong JSON types, unknown routes, wrong methods, out-of-range and non-numeric numbers,
//! deeply nested and 1 MB queries, invalid UTF-8, overly long run ids and names (issue 9 item 4),
//! and bodies not sent as JSON (issue 9 item 5). Each gets a 4xx (with the error envelope of spec
//! `api.md` §1.7 when a handler answers), never a 500 and never a hang; the server still answers
//! afterwards.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use matyan::app::AppState;
use matyan::storage::kv::{Database, EmbeddedEngine, Limits, RangeOption};
use serde_json::{Value as J, json};
use tower::ServiceExt as _;

use common::RUN;

const R: &str = "/api/v1/rest";

/// Every request (and reading its whole body) must finish within this.
const DEADLINE: Duration = Duration::from_secs(10);

async fn state() -> AppState {
    let db = Database::memory();
    let layout = common::write_worked_example(&db).await;
    common::app_state(&db, &layout)
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(500)]).into_owned()
    }
}

/// Sends one request with a raw body; panics past [`DEADLINE`].
async fn send(state: &AppState, method: &str, uri: &str, body: &[u8]) -> Answer {
    send_tz(state, method, uri, body, None).await
}

/// Sends one request with a raw body and the given `Content-Type` (none when `None`).
async fn send_as(state: &AppState, method: &str, uri: &str, content_type: Option<&str>, body: &[u8]) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = matyan::http::service(state.clone()).oneshot(req.body(Body::from(body.to_vec())).unwrap());
    let resp = tokio::time::timeout(DEADLINE, resp).await.expect("request hung").unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec();
    Answer { status, body }
}

/// Every key and value in the store, to show a refused request wrote nothing.
async fn dump(db: &Database) -> Vec<(Vec<u8>, Vec<u8>)> {
    let tx = db.create_trx().unwrap();
    let all = tx.get_range(&RangeOption::new(Vec::new(), vec![0xff]), true).await.unwrap();
    all.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

/// [`send`] with an `X-Timezone-Offset` header.
async fn send_tz(state: &AppState, method: &str, uri: &str, body: &[u8], tz: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(tz) = tz {
        req = req.header("x-timezone-offset", tz);
    }
    let req = req.body(Body::from(body.to_vec())).unwrap();
    let svc = matyan::http::service(state.clone());
    let work = async move {
        let resp = svc.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 256 << 20).await.unwrap().to_vec();
        Answer { status, body }
    };
    let shown = &uri[..uri.len().min(120)];
    tokio::time::timeout(DEADLINE, work).await.unwrap_or_else(|_| panic!("{method} {shown} hung"))
}

/// The code §1.7 maps `status` to.
fn code_of(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        422 => "validation_error",
        500 => "internal_error",
        _ => "error",
    }
}

/// A handler-level error: exactly `status`, with the envelope.
fn assert_envelope(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.text());
    let v: J = serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("{what}: {e}: {}", a.text()));
    assert_eq!(v["error"]["code"], code_of(status), "{what}: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: {v}"));
    assert!(!message.is_empty() && message.len() <= 2048, "{what}: message of {} bytes", message.len());
    assert_eq!(v["detail"], v["error"]["message"], "{what}");
}

/// A router-level error (§1.7 accepts `{"detail": ...}` or the envelope): exactly `status`.
fn assert_router_error(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.text());
    if !a.body.is_empty() {
        let v: J = serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("{what}: {e}: {}", a.text()));
        assert!(v["detail"].is_string(), "{what}: {v}");
    }
}

/// Where the spec leaves the answer open (e.g. a limit beyond every run): anything but a 5xx.
fn assert_no_server_error(a: &Answer, what: &str) {
    assert!(a.status < 500, "{what}: {} {}", a.status, a.text());
    if a.status >= 400 {
        assert_envelope(a, a.status, what);
    }
}

/// The server still serves a normal request.
async fn still_answers(state: &AppState) {
    let a = send(state, "GET", &format!("{R}/runs/{RUN}/info/"), b"").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = send(state, "GET", &format!("{R}/runs/search/run/?q=&report_progress=false"), b"").await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn bad_json_bodies_are_422_with_the_envelope() {
    let st = state().await;
    let bad: [&[u8]; 8] =
        [b"", b"   ", b"{", b"not json", b"[1, 2", b"\xff\xfe\x00", b"{\"a\": 1} trailing", b"{\"a\": NaN}"];
    let routes = [
        ("POST", format!("{R}/runs/{RUN}/metric/get-batch/")),
        ("PUT", format!("{R}/runs/{RUN}/")),
        ("POST", format!("{R}/experiments/")),
        ("POST", format!("{R}/tags/")),
        ("POST", format!("{R}/runs/search/metric/align/")),
        ("POST", format!("{R}/runs/{RUN}/texts/get-batch/")),
        ("POST", format!("{R}/runs/{RUN}/tags/new/")),
        ("POST", format!("{R}/runs/delete-batch/")),
    ];
    for (method, uri) in &routes {
        for body in bad {
            let what = format!("{method} {uri} {:?}", String::from_utf8_lossy(body));
            let a = send(&st, method, uri, body).await;
            if *method == "POST" && uri.ends_with("texts/get-batch/") && a.status == 200 {
                // The reference's texts get-batch takes an optional body; only a 5xx would be wrong.
                continue;
            }
            assert_envelope(&a, 422, &what);
        }
    }
    still_answers(&st).await;
}

#[tokio::test]
async fn wrong_json_types_are_422_with_the_envelope() {
    let st = state().await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("POST", format!("{R}/runs/{RUN}/metric/get-batch/"), r#"{"name":"loss","context":{}}"#),
        ("POST", format!("{R}/runs/{RUN}/metric/get-batch/"), r#"[{"name":5,"context":{}}]"#),
        ("POST", format!("{R}/runs/{RUN}/metric/get-batch/"), r#"[1, 2, 3]"#),
        ("POST", format!("{R}/runs/{RUN}/metric/get-batch/"), r#""loss""#),
        ("PUT", format!("{R}/runs/{RUN}/"), r#"{"name":5}"#),
        ("PUT", format!("{R}/runs/{RUN}/"), r#"{"archived":"maybe"}"#),
        ("PUT", format!("{R}/runs/{RUN}/"), r#"[]"#),
        ("PUT", format!("{R}/runs/{RUN}/"), r#"null"#),
        ("POST", format!("{R}/experiments/"), r#"{"name":5}"#),
        ("POST", format!("{R}/experiments/"), r#"{"name":["x"]}"#),
        ("POST", format!("{R}/experiments/"), r#""x""#),
        ("POST", format!("{R}/tags/"), r#"{"name":null}"#),
        ("POST", format!("{R}/tags/"), r#"{"name":"t","color":5}"#),
        ("POST", format!("{R}/tags/"), r#"[{"name":"t"}]"#),
        ("POST", format!("{R}/runs/search/metric/align/"), r#"{"align_by":5,"runs":[]}"#),
        ("POST", format!("{R}/runs/search/metric/align/"), r#"{"align_by":"acc","runs":"x"}"#),
        ("POST", format!("{R}/runs/search/metric/align/"), r#"[]"#),
        (
            "POST",
            format!("{R}/runs/search/metric/align/"),
            r#"{"align_by":"acc","runs":[{"run_id":"x","traces":[{"name":"loss","context":{},"slice":[0,1]}]}]}"#,
        ),
        (
            "POST",
            format!("{R}/runs/search/metric/align/"),
            r#"{"align_by":"acc","runs":[{"run_id":"x","traces":[{"name":"loss","context":{},"slice":[0,1e999,1]}]}]}"#,
        ),
        ("POST", format!("{R}/runs/{RUN}/tags/new/"), r#"{"tag_name":7}"#),
        ("POST", format!("{R}/runs/delete-batch/"), r#"{"runs":["a"]}"#),
        ("POST", format!("{R}/runs/delete-batch/"), r#"[1, 2]"#),
        ("POST", format!("{R}/runs/finish-batch/"), r#"[null]"#),
    ];
    for (method, uri, body) in &cases {
        let a = send(&st, method, uri, body.as_bytes()).await;
        assert_envelope(&a, 422, &format!("{method} {uri} {body}"));
    }
    still_answers(&st).await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let st = state().await;
    for uri in
        ["/nope", "/api/v1/rest/nope/", "/api/v1/rest/runs/a/b/c/d/e/", "/api/v2/rest/runs/search/run/", "/%FF%FE"]
    {
        let a = send(&st, "GET", uri, b"").await;
        assert_router_error(&a, 404, uri);
    }
    let wrong = [
        ("POST", format!("{R}/runs/search/run/")),
        ("DELETE", format!("{R}/runs/search/metric/")),
        ("GET", format!("{R}/runs/{RUN}/metric/get-batch/")),
        ("PATCH", format!("{R}/runs/{RUN}/")),
        ("DELETE", format!("{R}/experiments/")),
        ("PUT", format!("{R}/tags/")),
        ("GET", format!("{R}/runs/search/metric/align/")),
        ("GET", format!("{R}/runs/{RUN}/texts/get-batch/")),
    ];
    for (method, uri) in &wrong {
        let a = send(&st, method, uri, b"{}").await;
        assert_router_error(&a, 405, &format!("{method} {uri}"));
    }
    still_answers(&st).await;
}

#[tokio::test]
async fn non_numeric_numbers_and_bad_booleans_are_422() {
    let st = state().await;
    let uris = [
        format!("{R}/runs/search/run/?limit=abc"),
        format!("{R}/runs/search/run/?limit=1.5"),
        format!("{R}/runs/search/run/?limit="),
        format!("{R}/runs/search/run/?limit=0x10"),
        format!("{R}/runs/search/run/?limit=99999999999999999999999999"),
        format!("{R}/runs/search/run/?report_progress=maybe"),
        format!("{R}/runs/search/metric/?q=&p=ten"),
        format!("{R}/runs/search/metric/?q=&report_progress=2"),
        format!("{R}/runs/search/texts/?q=&report_progress=%FF"),
    ];
    for uri in &uris {
        let a = send(&st, "GET", uri, b"").await;
        assert_envelope(&a, 422, uri);
    }
    let a = send(&st, "POST", &format!("{R}/runs/{RUN}/metric/get-batch/?record_density=x"), b"[]").await;
    assert_envelope(&a, 422, "record_density=x");
    let a = send(&st, "POST", &format!("{R}/runs/archive-batch/?archive=perhaps"), br#"["a"]"#).await;
    assert_envelope(&a, 422, "archive=perhaps");
    still_answers(&st).await;
}

#[tokio::test]
async fn huge_and_negative_numbers_never_give_a_5xx_or_a_hang() {
    let st = state().await;
    let numbers = ["1000000000000000000", "9223372036854775807", "-9223372036854775808", "-1", "0"];
    for n in numbers {
        for uri in [
            format!("{R}/runs/search/run/?q=&limit={n}&report_progress=false"),
            format!("{R}/runs/search/run/?q=&offset={RUN}&limit={n}"),
            format!("{R}/runs/search/metric/?q=&p={n}"),
            format!("{R}/runs/search/metric/?q=&p=5&trace_chunk_size={n}"),
            format!("{R}/runs/search/texts/?q=&limit={n}"),
            format!("{R}/runs/active/?report_progress={n}"),
            format!("{R}/runs/{RUN}/logs/?record_range=0:{n}"),
            format!("{R}/runs/{RUN}/log-records/?record_range={n}:"),
            format!("{R}/experiments/?limit={n}"),
        ] {
            let a = send(&st, "GET", &uri, b"").await;
            assert_no_server_error(&a, &uri);
        }
        let posts = [
            (
                format!("{R}/runs/{RUN}/metric/get-batch/?record_density={n}"),
                r#"[{"name":"loss","context":{"subset":"train"}}]"#.to_owned(),
            ),
            (format!("{R}/runs/{RUN}/texts/get-batch/?record_range={n}:&index_range=0:{n}"), "[]".to_owned()),
            (
                format!("{R}/runs/search/metric/align/"),
                format!(
                    r#"{{"align_by":"loss","runs":[{{"run_id":"{RUN}","traces":[{{"name":"loss","context":{{"subset":"train"}},"slice":[{n},{n},{n}]}}]}}]}}"#
                ),
            ),
            (
                format!("{R}/runs/search/metric/align/"),
                format!(
                    r#"{{"align_by":"loss","runs":[{{"run_id":"{RUN}","traces":[{{"name":"loss","context":{{"subset":"train"}},"slice":[0,{n},0]}}]}}]}}"#
                ),
            ),
        ];
        for (uri, body) in &posts {
            let a = send(&st, "POST", uri, body.as_bytes()).await;
            assert_no_server_error(&a, &format!("{uri} {body}"));
        }
    }
    for range in ["::", "5:2", "a:b", ":-3", "1:2:3", "-5:-1", "99999999999999999999:"] {
        for uri in [
            format!("{R}/runs/{RUN}/logs/?record_range={range}"),
            format!("{R}/runs/{RUN}/log-records/?record_range={range}"),
            format!("{R}/runs/search/texts/?q=&record_range={range}&index_range={range}"),
        ] {
            let a = send(&st, "GET", &uri, b"").await;
            assert_no_server_error(&a, &uri);
        }
    }
    still_answers(&st).await;
}

/// Percent-encodes `q` for a query string, spaces as `+` (form encoding) to keep URIs short.
fn enc_form(q: &str) -> String {
    common::enc(q).replace("%20", "+")
}

#[tokio::test]
async fn deeply_nested_queries_are_400_before_the_stream_with_a_clipped_message() {
    let st = state().await;
    let n = 10_000;
    // Each fits the 64 KiB a URI may hold; a query past the parser's length limit cannot reach a
    // handler as a URI (see `a_1_mb_query_string_is_refused_by_the_listener`).
    let nested = [
        format!("{}run.active{}", "(".repeat(n), ")".repeat(n)),
        format!("{}run.active", "not ".repeat(n)),
        format!("run{}", ".a".repeat(n)),
        format!("run.hparams{} == 1", "[0]".repeat(8_000)),
        format!("{}1{}", "[".repeat(n), "]".repeat(n)),
        format!("{}run.active", "-".repeat(n)),
        // Syntax errors on 60 KB tokens: the message quotes a clipped token (fix: it echoed it whole).
        format!("_{}", "x".repeat(60_000)),
        format!("run.active {}", "x".repeat(60_000)),
    ];
    // Large but flat: valid queries that must simply be answered.
    let flat = [format!("run.name == '{}'", "x".repeat(60_000)), "run.active or ".repeat(4_000) + "run.active"];
    for route in ["runs/search/run/", "runs/search/metric/", "runs/search/texts/", "runs/active/"] {
        for q in nested.iter().chain(&flat) {
            let uri = format!("{R}/{route}?q={}&report_progress=false", enc_form(q));
            assert!(uri.len() < 65_000, "{} bytes", uri.len());
            let what = format!("{route} {}...", &q[..40.min(q.len())]);
            let a = send(&st, "GET", &uri, b"").await;
            if route == "runs/active/" || flat.contains(q) {
                // Active runs take no query; flat queries are valid.
                assert_no_server_error(&a, &what);
            } else {
                assert_envelope(&a, 400, &what);
            }
        }
    }
    still_answers(&st).await;
}

/// Sends raw bytes to `addr` and returns the response's status line ("" if the connection closed
/// without one).
async fn raw_request(addr: std::net::SocketAddr, request: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // The server may answer and close before the whole request is written: write concurrently.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr
    });
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => head.extend_from_slice(&buf[..k]),
        }
        if head.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    drop(writer.await);
    let text = String::from_utf8_lossy(&head).into_owned();
    text.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn a_1_mb_query_string_is_refused_by_the_listener() {
    let st = state().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(matyan::http::serve(listener, st, async move {
        let _ = stopped.await;
    }));
    let work = async {
        let q = format!("run.name == '{}'", "x".repeat(1 << 20));
        let request = format!("GET {R}/runs/search/run/?q={} HTTP/1.1\r\nHost: x\r\n\r\n", enc_form(&q));
        let status = raw_request(addr, request.into_bytes()).await;
        assert!(status.is_empty() || status.starts_with("HTTP/1.1 4"), "{status}");
        // The same through a long header value instead of the URI.
        let request = format!("GET {R}/version/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "y".repeat(1 << 20));
        let status = raw_request(addr, request.into_bytes()).await;
        assert!(status.is_empty() || status.starts_with("HTTP/1.1 4"), "{status}");
        // The server still answers.
        let ok = format!("GET {R}/runs/{RUN}/info/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_request(addr, ok.into_bytes()).await, "HTTP/1.1 200 OK");
    };
    tokio::time::timeout(DEADLINE, work).await.unwrap();
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn invalid_utf8_in_queries_and_paths_is_a_4xx() {
    let st = state().await;
    for uri in [
        format!("{R}/runs/search/run/?q=%FF%FE"),
        format!("{R}/runs/search/run/?q=run.name%20%3D%3D%20%27%C3%28%27"),
        format!("{R}/runs/search/metric/?q=%ED%A0%80"),
        format!("{R}/runs/search/run/?q=&sort=%FF"),
        format!("{R}/runs/search/run/?q=&offset=%FF%FE"),
        format!("{R}/experiments/search/?q=%FF"),
    ] {
        let a = send(&st, "GET", &uri, b"").await;
        assert_no_server_error(&a, &uri);
    }
    for (method, uri, body) in [
        ("GET", format!("{R}/runs/%FF%FE/info/"), ""),
        ("POST", format!("{R}/runs/%FF/metric/get-batch/"), "[]"),
        ("PUT", format!("{R}/runs/%C3%28/"), r#"{"name":"x"}"#),
        ("GET", format!("{R}/experiments/%FF/"), ""),
        ("POST", format!("{R}/runs/%ED%A0%80/texts/get-batch/"), "[]"),
        ("GET", format!("{R}/runs/%00/info/"), ""),
    ] {
        let a = send(&st, method, &uri, body.as_bytes()).await;
        assert!((400..500).contains(&a.status), "{method} {uri}: {} {}", a.status, a.text());
    }
    still_answers(&st).await;
}

#[tokio::test]
async fn overly_long_run_ids_are_404_or_400_never_500() {
    let st = state().await;
    for len in [300, 5_000, 20_000, 60_000] {
        let id = "a".repeat(len);
        let cases = [
            ("GET", format!("{R}/runs/{id}/info/"), ""),
            ("POST", format!("{R}/runs/{id}/metric/get-batch/"), r#"[{"name":"loss","context":{}}]"#),
            ("PUT", format!("{R}/runs/{id}/"), r#"{"name":"x"}"#),
            ("DELETE", format!("{R}/runs/{id}/"), ""),
            ("POST", format!("{R}/runs/{id}/tags/new/"), r#"{"tag_name":"t"}"#),
            ("POST", format!("{R}/runs/{id}/texts/get-batch/"), "[]"),
        ];
        for (method, uri, body) in &cases {
            let a = send(&st, method, uri, body.as_bytes()).await;
            // Not found, or refused for its size past the longest run id a key holds (4,000 bytes).
            let what = format!("{method} run id of {len} bytes");
            assert!(a.status == 404 || (len > 4_000 && a.status == 400), "{what}: {} {}", a.status, a.text());
            assert_envelope(&a, a.status, &what);
        }
        // Routes that answer an unknown run with an empty result.
        for (method, uri, body) in [
            ("GET", format!("{R}/runs/{id}/logs/"), ""),
            ("GET", format!("{R}/runs/{id}/log-records/"), ""),
            ("GET", format!("{R}/runs/{id}/note/"), ""),
            ("POST", format!("{R}/runs/{id}/note/"), r#"{"content":"x"}"#),
            ("GET", format!("{R}/runs/search/run/?q=&offset={id}"), ""),
        ] {
            let a = send(&st, method, &uri, body.as_bytes()).await;
            assert_no_server_error(&a, &format!("{method} {} with a run id of {len} bytes", &uri[..40]));
        }
        let a = send(&st, "POST", &format!("{R}/runs/delete-batch/"), format!(r#"["{id}"]"#).as_bytes()).await;
        assert_no_server_error(&a, "delete-batch");
        let a = send(&st, "GET", &format!("{R}/experiments/{id}/"), b"").await;
        assert!(matches!(a.status, 400 | 404), "experiment id: {}", a.status);
        assert_envelope(&a, a.status, "experiment id");
    }
    still_answers(&st).await;
}

#[tokio::test]
async fn long_entity_names_are_refused_or_stored_never_500() {
    let st = state().await;
    for len in [5_000, 200_000] {
        let name = "n".repeat(len);
        for uri in [format!("{R}/experiments/"), format!("{R}/tags/")] {
            let a = send(&st, "POST", &uri, format!(r#"{{"name":"{name}"}}"#).as_bytes()).await;
            assert_no_server_error(&a, &format!("{uri} name of {len} bytes"));
        }
        let a = send(&st, "PUT", &format!("{R}/runs/{RUN}/"), format!(r#"{{"name":"{name}"}}"#).as_bytes()).await;
        assert_no_server_error(&a, &format!("run name of {len} bytes"));
        let a =
            send(&st, "POST", &format!("{R}/runs/{RUN}/tags/new/"), format!(r#"{{"tag_name":"{name}"}}"#).as_bytes())
                .await;
        assert_no_server_error(&a, &format!("tag name of {len} bytes"));
    }
    still_answers(&st).await;
}

#[tokio::test]
async fn timezone_offsets_out_of_range_or_garbage_never_give_a_5xx() {
    let st = state().await;
    let created = send(&st, "POST", &format!("{R}/experiments/"), br#"{"name":"tz"}"#).await;
    assert_eq!(created.status, 200, "{}", created.text());
    let id = serde_json::from_slice::<J>(&created.body).unwrap()["id"].as_str().unwrap().to_owned();
    let q = enc_form("run.created_at > datetime(2024, 1, 1) and run.created_at < datetime(9999, 12, 31)");
    let uris = [
        format!("{R}/projects/activity/"),
        format!("{R}/experiments/{id}/activity/"),
        format!("{R}/runs/search/run/?q={q}&report_progress=false"),
        format!("{R}/runs/search/metric/?q={q}&report_progress=false"),
    ];
    for tz in ["9223372036854775807", "-9223372036854775808", "1000000000000", "-0", "abc", "1.5", ""] {
        for uri in &uris {
            let a = send_tz(&st, "GET", uri, b"", Some(tz)).await;
            assert_no_server_error(&a, &format!("{uri} tz {tz:?}"));
            if tz == "abc" || tz == "1.5" {
                assert_envelope(&a, 422, uri);
            }
        }
    }
    still_answers(&st).await;
}

#[tokio::test]
async fn deeply_nested_or_malformed_sort_json_is_400() {
    let st = state().await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for sort in [deep.as_str(), "[{\"field\":\"run\",\"order\":\"up\"}]", "[{\"field\":\"zzz\"}]", "["] {
        let uri = format!("{R}/runs/search/run/?q=&sort={}", enc_form(sort));
        let a = send(&st, "GET", &uri, b"").await;
        assert_envelope(&a, 400, &format!("sort {}", &sort[..sort.len().min(40)]));
    }
    // Other shapes: whatever the answer, not a 5xx.
    for sort in ["{\"field\":1}", "[1]", "null", "[{}]", "[{\"field\":[\"run\"]}]", "\"run\""] {
        let uri = format!("{R}/runs/search/run/?q=&sort={}", enc_form(sort));
        assert_no_server_error(&send(&st, "GET", &uri, b"").await, sort);
    }
    still_answers(&st).await;
}

#[tokio::test]
async fn oversized_bodies_are_a_4xx() {
    let st = state().await;
    let big = format!(r#"{{"name":"{}"}}"#, "b".repeat(8 << 20));
    let list = format!("[{}1]", "1,".repeat(3 << 20));
    for (method, uri, body) in [
        ("POST", format!("{R}/experiments/"), &big),
        ("PUT", format!("{R}/runs/{RUN}/"), &big),
        ("POST", format!("{R}/runs/delete-batch/"), &list),
        ("POST", format!("{R}/runs/{RUN}/metric/get-batch/"), &list),
    ] {
        let a = send(&st, method, &uri, body.as_bytes()).await;
        assert!((400..500).contains(&a.status), "{method} {uri}: {} {}", a.status, a.text());
    }
    still_answers(&st).await;
}

/// The app over the embedded fjall engine the release binary uses (it panicked on keys past
/// 65,535 bytes where the memory engine does not), with the worked example, an experiment and a
/// tag.
async fn fjall_state(dir: &std::path::Path) -> (AppState, String, String) {
    let db = Database::open_embedded(dir, EmbeddedEngine::Fjall, Limits::FDB).unwrap();
    let layout = common::write_worked_example(&db).await;
    let st = common::app_state(&db, &layout);
    let mut ids = Vec::new();
    for uri in [format!("{R}/experiments/"), format!("{R}/tags/")] {
        let a = send(&st, "POST", &uri, br#"{"name":"kept"}"#).await;
        assert_eq!(a.status, 200, "{}", a.text());
        ids.push(serde_json::from_slice::<J>(&a.body).unwrap()["id"].as_str().unwrap().to_owned());
    }
    let tag = ids.pop().unwrap();
    (st, ids.pop().unwrap(), tag)
}

#[tokio::test]
async fn every_write_route_answers_a_70000_byte_name_or_id_with_a_400_naming_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (st, experiment, tag) = fjall_state(dir.path()).await;
    let long = "a".repeat(70_000);
    let before = dump(&st.db).await;
    let in_body: Vec<(&str, String, String, &str)> = vec![
        ("POST", format!("{R}/runs/finish-batch/"), json!([RUN, long]).to_string(), "run hash"),
        ("POST", format!("{R}/runs/delete-batch/"), json!([RUN, long]).to_string(), "run hash"),
        ("POST", format!("{R}/runs/archive-batch/?archive=true"), json!([long, RUN]).to_string(), "run hash"),
        ("POST", format!("{R}/tags/"), json!({"name": long}).to_string(), "name"),
        ("POST", format!("{R}/experiments/"), json!({"name": long}).to_string(), "name"),
        ("PUT", format!("{R}/tags/{tag}/"), json!({"name": long}).to_string(), "name"),
        ("PUT", format!("{R}/experiments/{experiment}/"), json!({"name": long}).to_string(), "name"),
        ("PUT", format!("{R}/runs/{RUN}/"), json!({"archived": true, "experiment": long}).to_string(), "experiment"),
        ("POST", format!("{R}/runs/{RUN}/tags/new/"), json!({"tag_name": long}).to_string(), "tag_name"),
    ];
    for (method, uri, body, field) in &in_body {
        let a = send(&st, method, uri, body.as_bytes()).await;
        let what = format!("{method} {uri} with a {field} of 70,000 bytes");
        assert_envelope(&a, 400, &what);
        let message = serde_json::from_slice::<J>(&a.body).unwrap()["detail"].as_str().unwrap().to_owned();
        assert_eq!(message, format!("{field} is too long: 70000 bytes, the limit is 4000"), "{what}");
    }
    // A URI holds at most 65,534 bytes, so ids in paths are 60,000 bytes long.
    let id = "a".repeat(60_000);
    let in_path: Vec<(&str, String, &str)> = vec![
        ("PUT", format!("{R}/runs/{id}/"), r#"{"name":"x"}"#),
        ("DELETE", format!("{R}/runs/{id}/"), ""),
        ("POST", format!("{R}/runs/{id}/clear-tombstone/"), ""),
        ("POST", format!("{R}/runs/{id}/tags/new/"), r#"{"tag_name":"t"}"#),
        ("DELETE", format!("{R}/runs/{RUN}/tags/{id}/"), ""),
        ("POST", format!("{R}/runs/{id}/note/"), r#"{"content":"x"}"#),
        ("PUT", format!("{R}/runs/{RUN}/note/{id}/"), r#"{"content":"x"}"#),
        ("DELETE", format!("{R}/runs/{RUN}/note/{id}/"), ""),
        ("POST", format!("{R}/experiments/{id}/note/"), r#"{"content":"x"}"#),
        ("PUT", format!("{R}/experiments/{id}/"), r#"{"name":"x"}"#),
        ("DELETE", format!("{R}/experiments/{id}/"), ""),
        ("PUT", format!("{R}/tags/{id}/"), r#"{"name":"x"}"#),
        ("DELETE", format!("{R}/tags/{id}/"), ""),
        ("PUT", format!("{R}/dashboards/{id}/"), r#"{"name":"x"}"#),
        ("DELETE", format!("{R}/dashboards/{id}/"), ""),
        ("PUT", format!("{R}/apps/{id}/"), r#"{"type":"x"}"#),
        ("DELETE", format!("{R}/apps/{id}/"), ""),
        ("PUT", format!("{R}/reports/{id}/"), r#"{"name":"x"}"#),
        ("DELETE", format!("{R}/reports/{id}/"), ""),
    ];
    for (method, uri, body) in &in_path {
        let what = format!("{method} {} with an id of 60,000 bytes", uri.replace(&id, "<id>"));
        let a = send(&st, method, uri, body.as_bytes()).await;
        assert_envelope(&a, 400, &what);
        let message = serde_json::from_slice::<J>(&a.body).unwrap()["detail"].as_str().unwrap().to_owned();
        assert!(message.ends_with("is too long: 60000 bytes, the limit is 4000"), "{what}: {message}");
    }
    assert!(dump(&st.db).await == before, "a refused request wrote to the store");
    still_answers(&st).await;
}

#[tokio::test]
async fn a_text_plain_post_that_would_delete_or_archive_runs_is_a_415_and_changes_nothing() {
    let st = state().await;
    let before = dump(&st.db).await;
    let runs = json!([RUN]).to_string();
    // What a page on another origin can send without a CORS preflight: a text, form or typeless body.
    let cross_site: [(&str, String, Option<&str>, String); 6] = [
        ("POST", format!("{R}/runs/delete-batch/"), Some("text/plain"), runs.clone()),
        ("POST", format!("{R}/runs/archive-batch/?archive=true"), Some("text/plain;charset=UTF-8"), runs.clone()),
        ("POST", format!("{R}/runs/finish-batch/"), Some("application/x-www-form-urlencoded"), runs.clone()),
        ("POST", format!("{R}/runs/delete-batch/"), Some("multipart/form-data; boundary=x"), runs.clone()),
        ("POST", format!("{R}/runs/delete-batch/"), None, runs.clone()),
        ("POST", format!("{R}/tags/"), Some("text/plain"), r#"{"name":"csrf"}"#.to_owned()),
    ];
    for (method, uri, content_type, body) in &cross_site {
        let what = format!("{method} {uri} as {content_type:?}");
        let a = send_as(&st, method, uri, *content_type, body.as_bytes()).await;
        assert_envelope(&a, 415, &what);
        let message = serde_json::from_slice::<J>(&a.body).unwrap()["detail"].as_str().unwrap().to_owned();
        assert!(message.contains("application/json"), "{what}: {message}");
    }
    assert!(dump(&st.db).await == before, "a refused request wrote to the store");
    let info = send(&st, "GET", &format!("{R}/runs/{RUN}/info/"), b"").await;
    let props = &serde_json::from_slice::<J>(&info.body).unwrap()["props"];
    assert_eq!(props["archived"], false, "{props}");

    // JSON in any of its spellings is read as before; a GET's header is never checked.
    let a = send_as(&st, "GET", &format!("{R}/runs/{RUN}/info/"), Some("text/plain"), b"").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let uri = format!("{R}/runs/archive-batch/?archive=true");
    let a = send_as(&st, "POST", &uri, Some("Application/JSON; charset=utf-8"), runs.as_bytes()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let info = send(&st, "GET", &format!("{R}/runs/{RUN}/info/"), b"").await;
    assert_eq!(serde_json::from_slice::<J>(&info.body).unwrap()["props"]["archived"], true);
    let a = send_as(&st, "POST", &format!("{R}/tags/"), Some("application/vnd.matyan+json"), br#"{"name":"ok"}"#).await;
    assert_eq!(a.status, 200, "{}", a.text());
}
