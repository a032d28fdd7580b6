//! Runs the real `matyan serve` binary for integration tests: start on a free port, wait for
//! `serve.addr`, plain HTTP/1.1 requests, stop by SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Kills the server if a test fails before stopping it.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
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
pub fn wait_for_addr(server: &mut Server, data_dir: &Path) -> SocketAddr {
    let path = data_dir.join("serve.addr");
    super::wait::blocking_until_ok(&format!("{} written", path.display()), Duration::from_secs(30), || {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Ok(text.trim().parse().expect("serve.addr holds an address"));
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("server exited before listening: {status}");
        }
        Err("no file yet")
    })
}

/// One HTTP/1.1 GET; returns the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

pub fn terminate(mut server: Server) -> ExitStatus {
    let pid = server.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    super::wait::blocking_until_ok("the server stops after sigterm", Duration::from_secs(30), || {
        server.0.try_wait().unwrap().ok_or("still running")
    })
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sums the series of `name` whose label set contains `label` (empty: every series) in a
/// Prometheus text exposition.
pub fn metric_sum(exposition: &str, name: &str, label: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until something listens on `addr`; fails if `process` exits first.
pub fn wait_listening(process: &mut Server, addr: SocketAddr) {
    super::wait::blocking_until_ok(&format!("something listening on {addr}"), Duration::from_secs(30), || {
        if let Some(status) = process.0.try_wait().unwrap() {
            panic!("process exited before listening: {status}");
        }
        TcpStream::connect(addr).map(drop)
    });
}

/// Starts `matyan ingest` on the store under `data_dir` with its probes on `127.0.0.1:port`,
/// the given environment and extra arguments, and waits until the probes listen.
pub fn start_ingest(data_dir: &Path, port: u16, env: &[(&str, &str)], extra: &[&str]) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["ingest", "--data-dir", data_dir.to_str().unwrap(), "--metrics-host", "127.0.0.1"])
        .args(["--metrics-port", &port.to_string()])
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start matyan ingest");
    let mut server = Server(child);
    wait_listening(&mut server, SocketAddr::from(([127, 0, 0, 1], port)));
    server
}
