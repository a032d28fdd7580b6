//! The real Python clients for tests: `matyan-client==0.3.0` (the SDK) and `matyan-frontier==0.3.0`
//! (the reference gateway), from the venv whose python `MATYAN_SDK_PYTHON` names (`.ci/run`'s
//! `install_sdk_clients` makes it; by hand: a Python 3.11+ venv, then
//! `pip install --ignore-requires-python -c fixtures/python-constraints.txt matyan-client==0.3.0
//! matyan-frontier==0.3.0`). Without it [`python`] panics when `CI` is set and otherwise returns
//! `None` after printing why, so the test can return early. Every Python process runs from an empty
//! temporary directory (the clients read `./.env`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::server::{self, Server};

/// The SDK script the tests drive (see its docstring).
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/sdk_run.py");

/// The venv's python, or `None` (after printing why) when `MATYAN_SDK_PYTHON` is unset outside CI.
pub fn python() -> Option<PathBuf> {
    let found = std::env::var_os("MATYAN_SDK_PYTHON").filter(|p| !p.is_empty()).map(PathBuf::from);
    match found {
        Some(p) if p.is_file() => Some(p),
        Some(p) => panic!("MATYAN_SDK_PYTHON={} is not a file", p.display()),
        None if std::env::var_os("CI").is_some() => {
            panic!("MATYAN_SDK_PYTHON is not set: .ci/run's install_sdk_clients installs the real SDK")
        }
        None => {
            eprintln!(
                "skipping: MATYAN_SDK_PYTHON is not set (a venv's python with matyan-client==0.3.0 and \
                 matyan-frontier==0.3.0, see tests/common/sdk.rs)"
            );
            None
        }
    }
}

/// Runs `tests/sdk/sdk_run.py args` with `env` from an empty directory; panics with its stderr
/// unless it exits 0, else returns its stdout.
pub fn script(python: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(python)
        .arg(SCRIPT)
        .args(args)
        .envs(env.iter().copied())
        .env("LOGURU_LEVEL", "WARNING")
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .output()
        .expect("start the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sdk_run.py {args:?} failed ({}):\n{stderr}\nstdout: {stdout}", out.status);
    stdout
}

/// Runs the script's `check` mode and returns its JSON summary.
pub fn check(python: &Path, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let stdout = script(python, args, env);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no summary: {stdout}"));
    let summary: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    summary
}

/// A running `matyan-frontier` (stopped by pid on drop) and the directory it runs from.
pub struct Frontier {
    pub process: Server,
    pub addr: SocketAddr,
    _cwd: tempfile::TempDir,
}

/// Starts the reference gateway on a free port, producing to `topic` on `bootstrap`, and waits
/// until it listens.
pub fn start_frontier(python: &Path, bootstrap: &str, topic: &str) -> Frontier {
    let cwd = tempfile::tempdir().unwrap();
    let port = server::free_port();
    let child = Command::new(python)
        .args(["-m", "matyan_frontier.cli", "start", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_DATA_INGESTION_TOPIC", topic)
        .env("LOG_LEVEL", "WARNING")
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start matyan-frontier");
    let mut process = Server(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Importing the frontier (fastapi, aiokafka, boto) takes seconds on a busy machine.
    super::wait::blocking_until_ok(&format!("matyan-frontier listening on {addr}"), Duration::from_secs(120), || {
        if let Some(status) = process.0.try_wait().unwrap() {
            panic!("matyan-frontier exited before listening: {status}");
        }
        TcpStream::connect(addr).map(drop)
    });
    Frontier { process, addr, _cwd: cwd }
}

/// One HTTP/1.1 request with an optional JSON body; returns the status code and the body.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = &response[split + 4..];
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return (status, String::from_utf8_lossy(body).into_owned());
    }
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return (status, String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[eol + 4 + size..];
    }
}
