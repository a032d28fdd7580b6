//! `matyan serve` as a user runs it: the real binary on a free port and a temporary data directory,
//! probed over HTTP, then stopped by SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Kills the server if a test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data_dir: &Path, extra: &[&str]) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start matyan serve");
    Server(child)
}

/// Waits for `serve.addr` to appear and returns the address it holds.
fn wait_for_addr(server: &mut Server, data_dir: &Path) -> SocketAddr {
    let path = data_dir.join("serve.addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text.trim().parse().expect("serve.addr holds an address");
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("server exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "server did not write {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 GET; returns the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

fn terminate(mut server: Server) -> ExitStatus {
    let pid = server.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not stop after sigterm");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_answers_probes_and_metrics_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = start(&data_dir, &[]);
    let addr = wait_for_addr(&mut server, &data_dir);

    for path in ["/health/live/", "/health/live"] {
        assert_eq!(get(addr, path), (200, r#"{"status":"ok"}"#.to_owned()), "{path}");
    }
    for path in ["/health/ready/", "/health/ready"] {
        let (status, body) = get(addr, path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains(r#""status":"ok""#), "{path}: {body}");
    }
    assert_eq!(get(addr, "/no/such/route/").0, 404);
    for path in ["/metrics/", "/metrics"] {
        let (status, body) = get(addr, path);
        assert_eq!(status, 200, "{path}");
        assert!(body.contains("matyan_build_info"), "{path}: {body}");
        assert!(body.contains("matyan_http_requests_total"), "{path}: {body}");
        assert!(body.contains("matyan_health_ready_checks_total"), "{path}: {body}");
    }
    // The embedded store was created under the data directory.
    assert!(data_dir.join("fjall").is_dir());

    let status = terminate(server);
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(!data_dir.join("serve.addr").exists(), "serve.addr left behind");
}

#[test]
fn serve_reopens_its_store_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for _ in 0..2 {
        let mut server = start(&data_dir, &[]);
        let addr = wait_for_addr(&mut server, &data_dir);
        assert_eq!(get(addr, "/health/ready/").0, 200);
        assert_eq!(terminate(server).code(), Some(0));
    }
}

#[test]
fn serve_refuses_a_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[ingest]\nmax_txn_bytes = 20000000\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ingest.max_txn_bytes: 20000000 exceeds"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing is created before the config is accepted");

    let out = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["serve", "--port", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("INGEST_MAX_MESSAGES_PER_TXN", "many")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INGEST_MAX_MESSAGES_PER_TXN"), "{stderr}");
}
