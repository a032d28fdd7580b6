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
//! Needs the tansu binary (see `tests/common/broker.rs`); without it the test prints a message and
//! passes, unless `CI` is set.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::Broker;
use matyan::actors::{IngestPipeline, PipelineConfig, PipelineCounters, PipelineHandle};
use matyan::ingest::BatchBudget;
use matyan::ingest::kafka::KafkaSource;
use matyan::ingest::partitioner::partition_for_key;
use matyan::ingest::source::Source;
use matyan::storage::context_id::context_to_id;
use matyan::storage::kv::{Database, RetryOptions};
use matyan::storage::layout::{Columns, Layout, SeqId};
use matyan::storage::value;
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
        v["payload"]["step"] = Value::Null;
        v["payload"]["value"] = json!(*n as f64);
        *n += 1;
        push(&run, v);
    }
    out
}

fn pipeline_config() -> PipelineConfig {
    PipelineConfig {
        budget: BatchBudget { max_bytes: 200_000, max_messages: 200, max_age: Duration::from_millis(20) },
        retry: RetryOptions { timeout: Duration::from_secs(20), retry_limit: 50, ..RetryOptions::default() },
        run_idle_timeout: Duration::from_millis(500),
        commit_interval: Duration::from_millis(20),
        restart_backoff_initial: Duration::from_millis(10),
        restart_backoff_max: Duration::from_millis(200),
        ..PipelineConfig::default()
    }
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
        let handle = IngestPipeline::start(db.clone(), layout.clone(), Arc::clone(&source), pipeline_config()).unwrap();
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

/// Waits until `cond` holds, checking every 50 ms, failing with `what` and `state()` after
/// [`PATIENCE`].
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool, state: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_partitions() -> Vec<i32> {
    (0..PARTITIONS).collect()
}

/// Reads run `run`'s `loss` points (context `{"subset": "train"}`) and checks that steps 0..n hold
/// values 0..n: nothing lost, nothing twice, source order kept. Returns n.
async fn check_run(db: &Database, layout: &Layout, run: &str, expected: i64) -> usize {
    let tx = db.create_trx().unwrap();
    let id = SeqId { run, ctx_id: context_to_id(&json!({"subset": "train"})), name: "loss" };
    let points = layout.seqs.read(&tx, id, None, None, Columns { epoch: false, time: false }, false).await.unwrap();
    let got: Vec<(i64, i64)> =
        points.iter().map(|p| (p.step, value::decode(&p.val).unwrap().as_f64().unwrap() as i64)).collect();
    let want: Vec<(i64, i64)> = (0..expected).map(|i| (i, i)).collect();
    if got != want {
        let first_bad = got.iter().zip(&want).position(|(g, w)| g != w);
        panic!("run {run}: {} points, expected {expected}; first difference at {first_bad:?}", got.len());
    }
    points.len()
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
