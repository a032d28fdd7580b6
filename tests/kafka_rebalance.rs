//! Two ingest pipelines in one consumer group against a real broker (tansu): a worker joins
//! mid-stream, later the first one leaves, and partitions move twice; the shared store ends with
//! every point exactly once, each run's steps in source order (the conservation oracle across
//! rebalances).
//!
//! The two workers are two [`IngestPipeline`]s over [`KafkaSource`]s in one process, sharing one
//! store, as two `matyan ingest` processes share FoundationDB. The points carry no step (the
//! consumer assigns steps, as for the SDK's `log_record`), so a record applied twice, lost or
//! applied out of order shows in the stored steps and values.
//!
//! A second test does the same with two real `matyan ingest` processes, each on its own store (so
//! it checks that nothing is lost, not that nothing is applied twice). A third drives the same
//! reactions deterministically through a scripted source with Kafka's fence: a commit held in
//! flight across a revocation is refused and ignored, and the new group replays without a
//! duplicate.
//!
//! The broker tests need the tansu binary (see `tests/common/broker.rs`); without it they print a
//! message and pass, unless `CI` is set.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::broker::Broker;
use matyan::actors::{IngestPipeline, PipelineCounters, PipelineHandle};
use matyan::ingest::kafka::{KafkaSource, KafkaSourceError};
use matyan::ingest::partitioner::partition_for_key;
use matyan::ingest::source::{AssignmentEvent, Lease, Record, Source, SourceError};
use matyan::storage::kv::Database;
use matyan::storage::layout::Layout;
use serde_json::{Value, json};

const TOPIC: &str = "data-ingestion";
const GROUP: &str = "ingestion-workers";
const PARTITIONS: i32 = 6;
const RUNS: usize = 30;
/// Longest wait for any one condition.
const PATIENCE: Duration = Duration::from_secs(180);

/// The golden gateway records of one type, as templates (`create_run`, `log_hparams`, `log_metric`).
fn golden_templates() -> (Value, Value, Value) {
    let mut found: BTreeMap<String, Value> = BTreeMap::new();
    for r in common::golden_records() {
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        let kind = v["type"].as_str().unwrap().to_owned();
        found.entry(kind).or_insert(v);
        if found.len() >= 3 && ["create_run", "log_hparams", "log_metric"].iter().all(|k| found.contains_key(*k)) {
            break;
        }
    }
    let mut take = |k: &str| found.remove(k).unwrap_or_else(|| panic!("no golden {k}"));
    (take("create_run"), take("log_hparams"), take("log_metric"))
}

fn run_id(i: usize) -> String {
    format!("{:032x}", 0x5eba_1a00_0000_u64 + i as u64)
}

/// The workload, in the golden records' shape: each run's `create_run` and `log_hparams` (when
/// `create`), then `points` `loss` points spread over the runs, each run's values counting 0, 1, 2,
/// ... from `counts`, with `step: null`.
fn workload(points: usize, counts: &mut BTreeMap<String, i64>, create: bool) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    workload_with(points, counts, create, false)
}

/// [`workload`], with `step` equal to the value when `explicit_steps`.
fn workload_with(
    points: usize,
    counts: &mut BTreeMap<String, i64>,
    create: bool,
    explicit_steps: bool,
) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let (create_run, hparams, metric) = golden_templates();
    let mut out = Vec::with_capacity(points + 2 * RUNS);
    let mut push = |run: &str, mut v: Value| {
        v["run_id"] = json!(run);
        out.push((Some(run.as_bytes().to_vec()), serde_json::to_vec(&v).unwrap()));
    };
    for r in (0..RUNS).filter(|_| create) {
        push(&run_id(r), create_run.clone());
        push(&run_id(r), hparams.clone());
    }
    for i in 0..points {
        let run = run_id((i * 7 + i / 11) % RUNS);
        let n = counts.entry(run.clone()).or_insert(0);
        let mut v = metric.clone();
        v["payload"]["step"] = if explicit_steps { json!(*n) } else { Value::Null };
        v["payload"]["value"] = json!(*n as f64);
        *n += 1;
        push(&run, v);
    }
    out
}

/// One `matyan ingest` worker in miniature: a consumer of the group and its pipeline.
struct Worker {
    name: &'static str,
    source: Arc<KafkaSource>,
    handle: PipelineHandle,
}

impl Worker {
    fn start(name: &'static str, broker: &Broker, db: &Database, layout: &Layout) -> Worker {
        let source = Arc::new(KafkaSource::new(broker.consumer_config(), GROUP, TOPIC).unwrap());
        let handle =
            IngestPipeline::start(db.clone(), layout.clone(), Arc::clone(&source), common::small_pipeline_config())
                .unwrap();
        Worker { name, source, handle }
    }

    fn counters(&self) -> PipelineCounters {
        self.handle.counters()
    }

    /// Stops as `matyan ingest` does on SIGTERM: flush and commit, then leave the group.
    async fn stop(self) -> PipelineCounters {
        tokio::time::timeout(Duration::from_secs(60), self.handle.shutdown())
            .await
            .unwrap_or_else(|_| panic!("worker {} did not shut down in time", self.name))
            .unwrap();
        let counters = self.handle.counters();
        self.source.unsubscribe();
        // Closing the consumer leaves the group at once (it blocks until done).
        let source = self.source;
        tokio::task::spawn_blocking(move || drop(source)).await.unwrap();
        counters
    }
}

/// Waits until `cond` holds, failing with `what` and `state()` after
/// [`PATIENCE`].
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool, state: impl Fn() -> String) {
    common::wait::until_ok(what, PATIENCE, || if cond() { Ok(()) } else { Err(state()) }).await;
}

fn all_partitions() -> Vec<i32> {
    (0..PARTITIONS).collect()
}

/// Reads run `run`'s `loss` points (context `{"subset": "train"}`) and checks that steps 0..n hold
/// values 0..n: nothing lost, nothing twice, source order kept. Returns n.
async fn check_run(db: &Database, layout: &Layout, run: &str, expected: i64) -> usize {
    common::check_series(db, layout, run, &json!({"subset": "train"}), "loss", expected).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_one_group_a_rebalance_mid_stream_moves_partitions_with_no_loss_or_duplicate() {
    let Some(broker) = Broker::start() else { return };
    broker.create_topic(TOPIC, PARTITIONS).await;
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    let mut counts = BTreeMap::new();
    let mut total = 0usize;
    let mut produce = |points: usize, create: bool| {
        let records = workload(points, &mut counts, create);
        broker.produce(TOPIC, &records);
        total += records.len();
    };

    // Part 1: worker a alone.
    produce(4_000, true);
    let a = Worker::start("a", &broker, &db, &layout);
    wait_for("a to apply part of the stream", || a.counters().applied >= 1_000, || format!("{:?}", a.counters())).await;

    // Part 2 goes in while b joins, so batches are buffered and in flight across the rebalance.
    let b = Worker::start("b", &broker, &db, &layout);
    produce(4_000, false);
    let split = || {
        let (pa, pb) = (a.source.assignment(), b.source.assignment());
        !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == PARTITIONS as usize
    };
    wait_for("the group to split the partitions between a and b", split, || {
        format!("a {:?} b {:?}", a.source.assignment(), b.source.assignment())
    })
    .await;
    let (pa, pb) = (a.source.assignment(), b.source.assignment());
    assert!(pa.iter().all(|p| !pb.contains(p)), "disjoint assignments: {pa:?} {pb:?}");
    wait_for(
        "a to stop the actors of its revoked partitions",
        || a.counters().revoked_partitions > 0,
        || format!("{:?}", a.counters()),
    )
    .await;

    // Part 3 while both consume; then a leaves and b takes every partition.
    produce(4_000, false);
    wait_for("b to apply records of its partitions", || b.counters().applied > 0, || format!("{:?}", b.counters()))
        .await;
    let a_counters = a.stop().await;
    produce(2_000, false);
    wait_for(
        "b to own every partition",
        || b.source.assignment() == all_partitions(),
        || format!("b {:?}", b.source.assignment()),
    )
    .await;

    // Everything committed by the group: every record is in the store.
    // The ends of the partitions, from the keys (the topic started empty; tansu's watermarks lag).
    let mut ends = vec![0i64; PARTITIONS as usize];
    for run in counts.keys() {
        let p = partition_for_key(run.as_bytes(), PARTITIONS as u32).unwrap();
        ends[p as usize] += counts[run] + 2;
    }
    assert_eq!(ends.iter().sum::<i64>(), total as i64);
    wait_for(
        "the group's commits to reach the end of every partition",
        || broker.committed_offsets(GROUP, TOPIC, &all_partitions()) == ends,
        || {
            format!(
                "committed {:?}, ends {ends:?}, b {:?}",
                broker.committed_offsets(GROUP, TOPIC, &all_partitions()),
                b.counters()
            )
        },
    )
    .await;
    let b_counters = b.stop().await;
    eprintln!("a: {a_counters:?}\nb: {b_counters:?}");

    let mut points = 0;
    for (run, n) in &counts {
        points += check_run(&db, &layout, run, *n).await;
    }
    assert_eq!(points, counts.values().sum::<i64>() as usize);
    assert_eq!(points, 14_000);
    // Each record was applied once, by one of the two (replays were skipped by the checkpoints).
    assert_eq!(a_counters.applied + b_counters.applied, total as u64, "applied once across both workers");
    assert!(a_counters.applied > 0 && b_counters.applied > 0, "both workers applied records");
    assert!(a_counters.revoked_partitions > 0, "a lost partitions to b: {a_counters:?}");
    assert_eq!(b_counters.assigned_partitions as i32 - b_counters.revoked_partitions as i32, PARTITIONS);
    assert_eq!(a_counters.restarts_total() + b_counters.restarts_total(), 0, "a rebalance is not a failure");
}

// ---------------------------------------------------------------------------------------------
// The same reactions, deterministic, without a broker: a scripted source with Kafka's fence.

/// A source over fixed per-partition logs whose assignment the test changes, with Kafka's
/// semantics: a revocation followed by an assignment gives a new epoch and resets the position to
/// the committed offset; a commit under a stale lease is refused; and commits wait at a gate the
/// test opens, so one can be held in flight across a revocation.
struct ScriptedSource {
    logs: BTreeMap<i32, Vec<Record>>,
    state: parking_lot::Mutex<Script>,
    gate: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct Script {
    /// Assigned partitions: (epoch, position, paused).
    slots: BTreeMap<i32, (u64, i64, bool)>,
    committed: BTreeMap<i32, i64>,
    events: Vec<AssignmentEvent>,
    last_epoch: u64,
    /// Commits waiting at the gate.
    waiting: usize,
}

impl ScriptedSource {
    fn new(logs: BTreeMap<i32, Vec<Record>>) -> Self {
        let mut script = Script::default();
        for p in logs.keys() {
            script.last_epoch += 1;
            script.slots.insert(*p, (script.last_epoch, 0, false));
        }
        Self { logs, state: parking_lot::Mutex::new(script), gate: tokio::sync::watch::channel(false).0 }
    }

    /// Revokes `partition` and assigns it again under a new epoch, as an eager rebalance does.
    fn rebalance(&self, partition: i32) {
        let mut s = self.state.lock();
        s.slots.remove(&partition);
        s.events.push(AssignmentEvent::Revoked(vec![partition]));
        s.last_epoch += 1;
        let (epoch, from) = (s.last_epoch, s.committed.get(&partition).copied().unwrap_or(0));
        s.slots.insert(partition, (epoch, from, false));
        s.events.push(AssignmentEvent::Assigned(vec![Lease { partition, epoch }]));
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    fn waiting(&self) -> usize {
        self.state.lock().waiting
    }

    fn committed(&self, partition: i32) -> Option<i64> {
        self.state.lock().committed.get(&partition).copied()
    }
}

impl Source for ScriptedSource {
    async fn poll(&self, max_records: usize, timeout: Duration) -> Result<Vec<Record>, SourceError> {
        let out = {
            // One lock for the whole read: a rebalance falls before or after it, never inside.
            let mut s = self.state.lock();
            let mut out = Vec::new();
            for (p, (_, position, paused)) in s.slots.iter_mut() {
                let log = &self.logs[p];
                while !*paused && out.len() < max_records && (*position as usize) < log.len() {
                    out.push(log[*position as usize].clone());
                    *position += 1;
                }
            }
            out
        };
        if out.is_empty() {
            tokio::time::sleep(timeout).await;
        }
        Ok(out)
    }

    async fn commit(&self, partition: i32, next_offset: i64) -> Result<(), SourceError> {
        let lease = self.lease(partition).ok_or(SourceError::NotAssigned { partition })?;
        self.commit_leased(lease, next_offset).await
    }

    fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError> {
        let mut s = self.state.lock();
        let slot = s.slots.get_mut(&partition).ok_or(SourceError::NotAssigned { partition })?;
        slot.1 = offset;
        Ok(())
    }

    fn assignment(&self) -> Vec<i32> {
        self.state.lock().slots.keys().copied().collect()
    }

    fn pause(&self, partition: i32) -> Result<(), SourceError> {
        let mut s = self.state.lock();
        s.slots.get_mut(&partition).ok_or(SourceError::NotAssigned { partition })?.2 = true;
        Ok(())
    }

    fn resume(&self, partition: i32) -> Result<(), SourceError> {
        let mut s = self.state.lock();
        s.slots.get_mut(&partition).ok_or(SourceError::NotAssigned { partition })?.2 = false;
        Ok(())
    }

    fn take_assignment_events(&self) -> Vec<AssignmentEvent> {
        std::mem::take(&mut self.state.lock().events)
    }

    fn lease(&self, partition: i32) -> Option<Lease> {
        self.state.lock().slots.get(&partition).map(|(epoch, _, _)| Lease { partition, epoch: *epoch })
    }

    async fn commit_leased(&self, lease: Lease, next_offset: i64) -> Result<(), SourceError> {
        self.state.lock().waiting += 1;
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        let mut s = self.state.lock();
        s.waiting -= 1;
        let current = s.slots.get(&lease.partition).map(|(epoch, _, _)| *epoch);
        if current != Some(lease.epoch) {
            let (partition, epoch) = (lease.partition, lease.epoch);
            return Err(KafkaSourceError::StaleEpoch { partition, epoch, current }.into());
        }
        let c = s.committed.entry(lease.partition).or_insert(next_offset);
        *c = (*c).max(next_offset);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partition_stops_its_actors_and_their_commit_in_flight_is_refused_and_ignored() {
    let mut counts = BTreeMap::new();
    let mut logs: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    for (key, value) in workload(300, &mut counts, true) {
        let p = partition_for_key(key.as_deref().unwrap(), 2).unwrap() as i32;
        let log = logs.entry(p).or_default();
        log.push(Record { partition: p, offset: log.len() as i64, key, value, timestamp_ms: 0 });
    }
    assert_eq!(logs.len(), 2, "both partitions hold runs");
    let ends: BTreeMap<i32, i64> = logs.iter().map(|(p, l)| (*p, l.len() as i64)).collect();
    let source = Arc::new(ScriptedSource::new(logs));
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    let handle =
        IngestPipeline::start(db.clone(), layout.clone(), Arc::clone(&source), common::small_pipeline_config())
            .unwrap();
    let state = || format!("{:?}", handle.counters());

    // Everything is applied, but no commit gets through the gate: partition 0's is in flight.
    wait_for("every record applied", || handle.counters().applied == ends.values().sum::<i64>() as u64, state).await;
    wait_for("a commit in flight", || source.waiting() >= 2, state).await;
    source.rebalance(0);
    wait_for("the revocation handled", || handle.counters().revoked_partitions == 1, state).await;
    source.open_gate();
    wait_for("the new owner's commits", || (0..2).all(|p| source.committed(p) == Some(ends[&p])), state).await;
    let counters = handle.counters();
    tokio::time::timeout(Duration::from_secs(30), handle.shutdown()).await.unwrap().unwrap();

    assert!(counters.stale_commits >= 1, "the old group's commit was refused: {counters:?}");
    assert_eq!(counters.restarts_total(), 0, "a stale commit is not a failure: {counters:?}");
    assert_eq!((counters.assigned_partitions, counters.revoked_partitions), (3, 1), "{counters:?}");
    assert_eq!(counters.replayed, ends[&0] as u64, "the new group replayed partition 0, all skipped: {counters:?}");
    let mut points = 0;
    for (run, n) in &counts {
        points += check_run(&db, &layout, run, *n).await;
    }
    assert_eq!(points, 300);
}

// ---------------------------------------------------------------------------------------------
// Two real `matyan ingest` processes. Each needs a store of its own (the embedded store is one
// process's), so the check is the union: every point is in one of the stores, and the group's
// offsets reach the end. (Exactly once across workers needs a shared store: the in-process test.)
// The processes run with a 6 s session timeout (`KAFKA_*` settings through a config file): tansu
// completes each group join after about half the session timeout, and librdkafka's default of
// 45 s made this test take about 80 s.

/// Writes a config file with a short consumer session next to `data_dir`; returns its path. The
/// store is pinned to key-per-step: [`stored_points`] reads the reference's `seqs` keys.
fn short_session_config(data_dir: &std::path::Path) -> std::path::PathBuf {
    let path = data_dir.with_extension("toml");
    let text = "[kafka]\nsession_timeout_ms = 6000\nheartbeat_interval_ms = 300\n\n\
                [storage]\nsequence_layout = \"key_per_step\"\n";
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `matyan ingest` on its own store with its probes on `port`, and waits for them.
fn start_ingest(data_dir: &std::path::Path, port: u16, bootstrap: &str) -> common::server::Server {
    let config = short_session_config(data_dir);
    let env = [("KAFKA_BOOTSTRAP_SERVERS", bootstrap), ("KAFKA_DATA_INGESTION_TOPIC", TOPIC)];
    common::server::start_ingest(data_dir, port, &env, &["--config", config.to_str().unwrap()])
}

/// Sums the series of `name` whose labels contain `label` (empty: all) in a process's `/metrics/`.
fn metric(port: u16, name: &str, label: &str) -> f64 {
    let (status, body) = common::server::get(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "/metrics/");
    assert_eq!(status, 200, "{body}");
    common::server::metric_sum(&body, name, label)
}

/// The `(run, step, value)` of every stored `loss` point of a stopped process's store.
fn stored_points(data_dir: &std::path::Path) -> Vec<(String, i64, f64)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["kv", "dump", "--dir", "runs", "--data-dir", data_dir.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "kv dump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|row| row["key"][1] == "seqs" && row["key"][3] == "loss" && row["key"][4] == "val")
        .map(|row| {
            let key = &row["key"];
            (key[0].as_str().unwrap().to_owned(), key[5].as_i64().unwrap(), row["value"].as_f64().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_matyan_ingest_processes_hand_partitions_over_and_lose_nothing() {
    let Some(broker) = Broker::start() else { return };
    broker.create_topic(TOPIC, PARTITIONS).await;
    broker.create_topic("control-events", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let (port_a, port_b) = (common::server::free_port(), common::server::free_port());
    let mut counts = BTreeMap::new();
    let mut total = 0usize;
    let mut produce = |points: usize, create: bool| {
        let records = workload_with(points, &mut counts, create, true);
        broker.produce(TOPIC, &records);
        total += records.len();
    };

    produce(3_000, true);
    let a = start_ingest(&dir_a, port_a, &broker.bootstrap);
    wait_for(
        "a to process part of the stream",
        || metric(port_a, "matyan_ingestion_messages_processed_total", "") >= 500.0,
        String::new,
    )
    .await;
    let b = start_ingest(&dir_b, port_b, &broker.bootstrap);
    produce(3_000, false);
    let rebalanced = || {
        metric(port_a, "matyan_ingest_rebalance_partitions_total", "kind=\"revoked\"") > 0.0
            && metric(port_b, "matyan_ingest_rebalance_partitions_total", "kind=\"assigned\"") > 0.0
    };
    wait_for("the group to hand partitions from a to b", rebalanced, String::new).await;
    produce(3_000, false);
    let status = common::server::terminate(a);
    assert!(status.success(), "matyan ingest a exited with {status}");
    produce(1_000, false);

    let mut ends = vec![0i64; PARTITIONS as usize];
    for (run, n) in &counts {
        ends[partition_for_key(run.as_bytes(), PARTITIONS as u32).unwrap() as usize] += n + 2;
    }
    assert_eq!(ends.iter().sum::<i64>(), total as i64);
    wait_for(
        "the group's commits to reach the end of every partition",
        || broker.committed_offsets(GROUP, TOPIC, &all_partitions()) == ends,
        || format!("committed {:?}, ends {ends:?}", broker.committed_offsets(GROUP, TOPIC, &all_partitions())),
    )
    .await;
    let status = common::server::terminate(b);
    assert!(status.success(), "matyan ingest b exited with {status}");

    let (in_a, in_b) = (stored_points(&dir_a), stored_points(&dir_b));
    assert!(!in_a.is_empty() && !in_b.is_empty(), "both processes stored points");
    let mut union = std::collections::BTreeSet::new();
    for (run, step, value) in in_a.into_iter().chain(in_b) {
        assert_eq!(value, step as f64, "run {run} step {step}");
        union.insert((run, step));
    }
    let want: std::collections::BTreeSet<(String, i64)> =
        counts.iter().flat_map(|(run, n)| (0..*n).map(move |s| (run.clone(), s))).collect();
    assert_eq!(union.len(), want.len(), "every point is stored by one of the processes");
    assert!(union == want);
}
