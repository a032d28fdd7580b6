//! The ingest pipeline end to end on real components (fjall in a temporary directory, the embedded
//! queue, the actors): the golden records, shutdown and restart mid-stream, the conservation oracle
//! under random chaos kills, dead letters among good records, flush reasons in metrics, and a
//! `kill -9` of a real `matyan serve` mid-stream.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use matyan::actors::{IngestPipeline, KillTarget, PipelineConfig, PipelineHandle};
use matyan::ingest::apply::{Applier, position_uuid};
use matyan::ingest::queue::{EmbeddedSource, INGESTION_GROUP, Queue};
use matyan::ingest::{BatchBudget, Entry, decode};
use matyan::storage::context_id::context_to_id;
use matyan::storage::kv::{Database, EmbeddedEngine, Limits, RangeOption, RetryOptions, strinc};
use matyan::storage::layout::{Columns, Layout, SeqId, SequenceLayoutKind};
use matyan::storage::tuple::Elem;
use matyan::storage::value::{self, Value};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

const TOPIC: &str = "data-ingestion";

/// The process's Prometheus recorder (one per test binary).
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| matyan::metrics::install_prometheus().unwrap())
}

struct Store {
    db: Database,
    layout: Layout,
    queue: Queue,
}

/// Opens the store under `dir`: a new one is chunked, as `matyan serve` makes it by default, so the
/// conservation oracles run on the chunked layout (the golden key comparison pins key-per-step).
async fn open_store(dir: &Path) -> Store {
    open_store_with(dir, SequenceLayoutKind::Chunked).await
}

async fn open_store_with(dir: &Path, sequences: SequenceLayoutKind) -> Store {
    let db = Database::open_embedded(dir, EmbeddedEngine::Fjall, Limits::FDB).unwrap();
    let layout = Layout::open_settled(&db, sequences).await.unwrap();
    let queue = Queue::open(&db, &layout.dirs.ours, TOPIC, 6).await.unwrap();
    Store { db, layout, queue }
}

type Rec = (Option<Vec<u8>>, Vec<u8>, i64);

async fn append(queue: &Queue, records: &[Rec]) {
    for chunk in records.chunks(1_000) {
        let batch: Vec<matyan::ingest::queue::AppendRecord<'_>> =
            chunk.iter().map(|(k, v, t)| (k.as_deref(), v.as_slice(), *t)).collect();
        queue.append(&batch).await.unwrap();
    }
}

fn golden_records() -> Vec<Rec> {
    common::golden_records().into_iter().map(|r| (r.key, r.value, r.timestamp_ms)).collect()
}

fn run_id(i: usize) -> String {
    format!("{:032x}", 0x00C0_FFEE_0000_u64 + i as u64)
}

fn record(run: &str, body: serde_json::Value) -> Rec {
    let mut m = json!({"run_id": run, "timestamp": "2026-01-01T00:00:00Z"});
    for (k, v) in body.as_object().unwrap() {
        m[k] = v.clone();
    }
    (Some(run.as_bytes().to_vec()), serde_json::to_vec(&m).unwrap(), 0)
}

/// `points` metric records over `runs` runs, interleaved, each run's values counting 0, 1, 2, ...
/// with no step (the consumer assigns steps, so order and duplicates are visible); a create_run
/// first for each run.
fn workload(runs: usize, points: usize) -> (Vec<Rec>, BTreeMap<String, i64>) {
    let mut per_run = BTreeMap::new();
    let out = more_points(runs, points, &mut per_run, true);
    (out, per_run)
}

/// Like [`workload`], continuing the values counted in `per_run`.
fn more_points(runs: usize, points: usize, per_run: &mut BTreeMap<String, i64>, create: bool) -> Vec<Rec> {
    let mut out = Vec::with_capacity(points + runs);
    for r in (0..runs).filter(|_| create) {
        out.push(record(&run_id(r), json!({"type": "create_run", "payload": {"force_resume": false}})));
    }
    for i in 0..points {
        let r = (i * 7 + i / 13) % runs;
        let run = run_id(r);
        let n = per_run.entry(run.clone()).or_insert(0i64);
        out.push(record(
            &run,
            json!({"type": "log_metric", "payload": {"name": "m", "value": *n, "context": {}, "dtype": "int"}}),
        ));
        *n += 1;
    }
    out
}

async fn start(store: &Store, config: PipelineConfig) -> PipelineHandle {
    let source = EmbeddedSource::new(store.queue.clone(), INGESTION_GROUP)
        .await
        .unwrap()
        .with_poll_interval(Duration::from_millis(10));
    IngestPipeline::start(store.db.clone(), store.layout.clone(), Arc::new(source), config).unwrap()
}

async fn end_offsets(queue: &Queue) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    for p in queue.partition_ids() {
        out.insert(p, queue.end_offset(p).await.unwrap());
    }
    out
}

/// Waits until every partition's committed offset reached its end.
async fn wait_committed(store: &Store, handle: &PipelineHandle, timeout: Duration) {
    let ends = end_offsets(&store.queue).await;
    common::wait::until_ok_async("every partition committed to its end", timeout, || async {
        for (p, end) in &ends {
            let committed = store.queue.committed(INGESTION_GROUP, *p).await.unwrap().unwrap_or(0);
            if committed < *end {
                return Err(Box::new(handle.counters()));
            }
        }
        Ok(())
    })
    .await;
}

async fn stop(handle: PipelineHandle) {
    tokio::time::timeout(Duration::from_secs(30), handle.shutdown()).await.expect("shutdown in time").unwrap();
}

/// Reads run `run`'s metric `m` (empty context) and checks steps 0..n hold values 0..n: nothing
/// lost, nothing duplicated, source order kept.
async fn check_run(store: &Store, run: &str, expected: i64) -> usize {
    common::check_series(&store.db, &store.layout, run, &json!({}), "m", expected).await
}

async fn check_all(store: &Store, per_run: &BTreeMap<String, i64>) -> usize {
    let mut total = 0;
    for (run, n) in per_run {
        total += check_run(store, run, *n).await;
    }
    total
}

fn points_from_env(default: usize) -> usize {
    std::env::var("MATYAN_CONSERVATION_POINTS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Keys (relative to their directory) of the reference's directories, unpacked, with the worker
/// clock's `created_at` times masked (the two stores were written at different times).
async fn reference_keys(db: &Database, layout: &Layout) -> BTreeSet<(String, String)> {
    let tx = db.create_trx().unwrap();
    let dirs = &layout.dirs;
    let mut keys = BTreeSet::new();
    for (name, prefix) in [("runs", &dirs.runs), ("indexes", &dirs.indexes), ("system", &dirs.system)] {
        for kv in tx.get_range(&RangeOption::new(prefix.clone(), strinc(prefix)), true).await.unwrap() {
            let mut elems = matyan::storage::tuple::unpack(&kv.key[prefix.len()..]).unwrap();
            if elems.contains(&Elem::from("created_at")) {
                for e in &mut elems {
                    if matches!(e, Elem::Float(_)) {
                        *e = Elem::from("<time>");
                    }
                }
            }
            keys.insert((name.to_owned(), format!("{elems:?}")));
        }
    }
    keys
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_10k_through_the_pipeline_give_the_keys_of_a_direct_apply() {
    let metrics = recorder();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store_with(dir.path(), SequenceLayoutKind::KeyPerStep).await;
    let golden = golden_records();
    assert_eq!(golden.len(), 10_003);
    append(&store.queue, &golden).await;

    // `[ingest]` defaults: 1 MB, 5,000 messages, 100 ms.
    let config = PipelineConfig::from_config(&matyan::config::Config::from_toml_str("test", "").unwrap());
    assert_eq!(config.budget, matyan::ingest::BatchBudget::default());
    // 100 messages per transaction (the reference's default) so that count is the flush reason.
    let budget = BatchBudget { max_messages: 100, ..config.budget };
    let handle = start(&store, PipelineConfig { commit_interval: Duration::from_millis(20), budget, ..config }).await;
    wait_committed(&store, &handle, Duration::from_secs(60)).await;
    let counters = handle.counters();
    stop(handle).await;
    assert_eq!(counters.applied, 10_003, "{counters:#?}");
    assert_eq!(counters.dead_letters, 0);

    // 10,000 points, traces and a finalized run.
    let run = String::from_utf8(golden[0].0.clone().unwrap()).unwrap();
    let tx = store.db.create_trx().unwrap();
    let mut total = 0;
    for subset in ["train", "val"] {
        let ctx_id = context_to_id(&json!({"subset": subset}));
        let id = SeqId { run: &run, ctx_id, name: "loss" };
        let points =
            store.layout.seqs.read(&tx, id, None, None, Columns { epoch: false, time: false }, true).await.unwrap();
        assert_eq!(points.len(), 5_000);
        total += points.len();
        let trace = |field: &str| {
            store
                .layout
                .runs
                .runs
                .key(&run, &[Elem::from("traces"), Elem::from(ctx_id), Elem::from("loss"), Elem::from(field)])
        };
        let last_step = tx.get(&trace("last_step"), true).await.unwrap().map(|b| value::decode(&b).unwrap());
        assert_eq!(last_step, Some(Value::Int(4_999)));
        let last = tx.get(&trace("last"), true).await.unwrap().map(|b| value::decode(&b).unwrap());
        assert_eq!(last, Some(value::decode(&points[4_999].val).unwrap()));
    }
    assert_eq!(total, 10_000);
    let meta = store.layout.runs.get_run(&tx, &run, true).await.unwrap().unwrap();
    assert_eq!(meta.get("active"), Some(&Value::Bool(false)));
    assert!(meta.get("finalized_at").and_then(Value::as_f64).is_some());

    // The same keys as applying the records directly through the applier.
    let direct = Database::memory();
    let direct_layout = Layout::open(&direct).await.unwrap();
    let applier = Applier::new(direct_layout.clone());
    let entries: Vec<Entry> = golden
        .iter()
        .enumerate()
        .map(|(i, (_, v, _))| Entry { partition: 3, offset: i as i64, message: decode(v).unwrap() })
        .collect();
    for chunk in entries.chunks(100) {
        direct
            .run(&RetryOptions::default(), |tx| {
                let applier = &applier;
                let run = &run;
                async move { applier.apply(&tx, run, chunk, 1_800_000_000.0, &mut |r| position_uuid(r)).await }
            })
            .await
            .unwrap();
    }
    let (ours, theirs) =
        (reference_keys(&store.db, &store.layout).await, reference_keys(&direct, &direct_layout).await);
    assert_eq!(ours.len(), theirs.len());
    let only_ours: Vec<_> = ours.difference(&theirs).collect();
    let only_theirs: Vec<_> = theirs.difference(&ours).collect();
    assert!(only_ours.is_empty() && only_theirs.is_empty(), "ours only: {only_ours:?}\ndirect only: {only_theirs:?}");

    // Flush reasons are metric labels.
    let text = metrics.render();
    assert!(text.contains("matyan_ingest_flushes_total{reason=\"count\"}"), "{text}");
    assert!(counters.flushes["count"] >= 100, "{counters:#?}");
    assert!(text.contains("matyan_ingestion_messages_processed_total{message_type=\"log_metric\"}"), "{text}");
    assert!(text.contains("matyan_ingestion_messages_consumed_total"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_restart_mid_stream_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let (records, per_run) = workload(10, 20_000);
    let (first, second) = records.split_at(records.len() / 2);
    append(&store.queue, first).await;
    let handle = start(&store, common::small_pipeline_config()).await;
    // Stop while the first half is still being consumed, and append the rest meanwhile.
    wait_for(&handle, "2,000 records consumed", |c| c.consumed >= 2_000).await;
    append(&store.queue, second).await;
    stop(handle).await;
    let handle = start(&store, common::small_pipeline_config()).await;
    wait_committed(&store, &handle, Duration::from_secs(120)).await;
    let counters = handle.counters();
    stop(handle).await;
    assert!(counters.flushes["shutdown"] <= counters.flushes.values().sum::<u64>());
    assert_eq!(check_all(&store, &per_run).await, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conservation_under_random_chaos_kills() {
    let n = points_from_env(20_000);
    conservation_under_chaos(n, common::small_pipeline_config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conservation_under_random_chaos_kills_while_run_actors_are_evicted_and_share_transactions() {
    let n = points_from_env(20_000) / 2;
    // 50 runs over 6 partitions, 3 actors each: nearly every delivery evicts.
    let config = PipelineConfig { max_run_actors_per_partition: 3, ..common::small_pipeline_config() };
    let counters = conservation_under_chaos(n, config).await;
    assert!(counters.evicted_run_actors > 0 && counters.flushes["evict"] > 0, "{counters:#?}");
}

/// Ingests `n` points over 50 runs under random chaos kills every 50 ms and checks every point is
/// stored once, in order; returns the counters.
async fn conservation_under_chaos(n: usize, config: PipelineConfig) -> matyan::actors::PipelineCounters {
    println!("conservation oracle: {n} points over 50 runs");
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let (records, per_run) = workload(50, n);
    append(&store.queue, &records).await;
    let handle = start(&store, config).await;

    let chaos = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut kills = 0u32;
            let mut targets = BTreeMap::<String, u32>::new();
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match handle.kill(KillTarget::Random).await {
                    Ok(what) => {
                        kills += 1;
                        *targets.entry(what.split(' ').next().unwrap_or("").to_owned()).or_default() += 1;
                    }
                    Err(matyan::actors::PipelineError::NoSuchTarget(_)) => {}
                    Err(_) => return (kills, targets),
                }
            }
        })
    };
    wait_committed(&store, &handle, Duration::from_secs(600)).await;
    chaos.abort();
    let counters = handle.counters();
    stop(handle).await;
    println!("restarts: {:?}; replayed entries skipped: {}", counters.restarts, counters.replayed);
    assert!(counters.restarts_total() > 0, "no chaos kill happened: {counters:#?}");
    assert_eq!(check_all(&store, &per_run).await, n);
    counters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_record_does_not_stop_its_neighbours() {
    recorder();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let run = run_id(1);
    let mut records = vec![record(&run, json!({"type": "create_run", "payload": {"force_resume": false}}))];
    let metric = |n: i64| {
        record(&run, json!({"type": "log_metric", "payload": {"name": "m", "value": n, "context": {}, "dtype": "int"}}))
    };
    records.push(metric(0));
    records.push((Some(run.as_bytes().to_vec()), b"{\"type\":\"log_metric\",\"run_id\":".to_vec(), 0)); // truncated
    records.push(metric(1));
    records.push((Some(run.as_bytes().to_vec()), vec![0xff, 0xfe, 0x00], 0)); // not UTF-8
    records.push(metric(2));
    append(&store.queue, &records).await;
    let handle = start(&store, common::small_pipeline_config()).await;
    wait_committed(&store, &handle, Duration::from_secs(30)).await;
    let counters = handle.counters();
    stop(handle).await;
    assert_eq!(counters.dead_letters, 2, "{counters:#?}");
    assert_eq!(check_run(&store, &run, 3).await, 3);
    let tx = store.db.create_trx().unwrap();
    let letters = Applier::new(store.layout.clone()).dead_letters(&tx, 0).await.unwrap();
    assert_eq!(letters.len(), 2);
    let text = recorder().render();
    assert!(text.contains("matyan_ingest_dead_letters_total"), "{text}");
}

/// Appends, in one partition (one run's key): a create_run, then each of `junk` (undecodable
/// values) between metric points 0, 1, 2, …; returns the run.
async fn junk_between_points(store: &Store, junk: &[Vec<u8>]) -> String {
    let run = run_id(2);
    let metric = |n: usize| {
        record(&run, json!({"type": "log_metric", "payload": {"name": "m", "value": n, "context": {}, "dtype": "int"}}))
    };
    append(&store.queue, &[record(&run, json!({"type": "create_run", "payload": {"force_resume": false}}))]).await;
    for (i, value) in junk.iter().enumerate() {
        append(&store.queue, &[metric(i)]).await;
        // One record per append: an 8 MiB record fills a transaction alone.
        append(&store.queue, &[(Some(run.as_bytes().to_vec()), value.clone(), 0)]).await;
    }
    append(&store.queue, &[metric(junk.len())]).await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_of_300_kb_and_8_mib_are_dead_lettered_once_and_their_partition_moves_on() {
    use matyan::ingest::dlq::MAX_STORED_VALUE_BYTES;
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    // Over the store's 100,000-byte value limit, so the whole record cannot be a dead letter's
    // value; the second is the largest record the queue takes.
    let mut big = b"{\"type\":\"log_metric\",\"run_id\":\"".to_vec();
    big.resize(300_000, b'x');
    let huge = vec![b'\xfe'; matyan::ingest::queue::MAX_RECORD_BYTES - 64];
    let run = junk_between_points(&store, &[big.clone(), huge.clone()]).await;

    let handle = start(&store, common::small_pipeline_config()).await;
    wait_committed(&store, &handle, Duration::from_secs(120)).await;
    let counters = handle.counters();
    stop(handle).await;

    assert_eq!(counters.dead_letters, 2, "{counters:#?}");
    assert_eq!(counters.restarts_total(), 0, "no partition restarted: {counters:#?}");
    assert_eq!(check_run(&store, &run, 3).await, 3, "the points after the big records are stored");
    let tx = store.db.create_trx().unwrap();
    let letters = Applier::new(store.layout.clone()).dead_letters(&tx, 0).await.unwrap();
    assert_eq!(letters.len(), 2);
    for (letter, original) in letters.iter().zip([&big, &huge]) {
        let field = |name: &str| letter.record.get(name).cloned();
        assert_eq!(field("truncated"), Some(Value::Bool(true)));
        assert_eq!(field("value_len"), Some(Value::Int(original.len() as i128)));
        let digest = hex::encode(Sha256::digest(original));
        assert_eq!(field("value_sha256"), Some(Value::Str(digest)));
        assert_eq!(field("value"), Some(Value::Bin(original[..MAX_STORED_VALUE_BYTES].to_vec())));
        assert_eq!(field("key"), Some(Value::from(run.as_str())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_hparams_of_100k_keys_is_dead_lettered_as_too_large_and_neither_stalls_its_partition_nor_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let run = run_id(3);
    let metric = |n: i64| {
        record(&run, json!({"type": "log_metric", "payload": {"name": "m", "value": n, "context": {}, "dtype": "int"}}))
    };
    let params: serde_json::Map<String, serde_json::Value> =
        (0..100_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let mut records = vec![record(&run, json!({"type": "create_run", "payload": {"force_resume": false}})), metric(0)];
    records.push(record(&run, json!({"type": "log_hparams", "payload": {"value": {"hparams": params}}})));
    records.push(metric(1));
    append(&store.queue, &records).await;

    let handle = start(&store, common::small_pipeline_config()).await;
    wait_committed(&store, &handle, Duration::from_secs(60)).await;
    let counters = handle.counters();
    // `stop` gives shutdown 30 s: a partition busy with the record would hold it longer.
    stop(handle).await;

    assert_eq!(counters.restarts_total(), 0, "{counters:#?}");
    assert_eq!(check_run(&store, &run, 2).await, 2, "the point after the record is stored");
    let tx = store.db.create_trx().unwrap();
    let letters = Applier::new(store.layout.clone()).dead_letters(&tx, 0).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let field = |name: &str| letters[0].record.get(name).cloned();
    assert_eq!(field("reason"), Some(Value::from("transaction_too_large")));
    assert_eq!(field("type"), Some(Value::from("log_hparams")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_run_actors_stop_and_come_back_on_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let (records, mut per_run) = workload(5, 100);
    append(&store.queue, &records).await;
    let config = PipelineConfig { run_idle_timeout: Duration::from_millis(100), ..common::small_pipeline_config() };
    let handle = start(&store, config).await;
    wait_committed(&store, &handle, Duration::from_secs(30)).await;
    wait_for(&handle, "idle run actors stopped", |c| c.active_run_actors == 0).await;
    let more = more_points(5, 100, &mut per_run, false);
    append(&store.queue, &more).await;
    wait_committed(&store, &handle, Duration::from_secs(30)).await;
    assert!(handle.counters().active_run_actors > 0 || handle.counters().applied >= 205);
    stop(handle).await;
    assert_eq!(check_all(&store, &per_run).await, 200);
}

/// Waits until `done` holds for the pipeline's counters.
async fn wait_for(handle: &PipelineHandle, what: &str, done: impl Fn(&matyan::actors::PipelineCounters) -> bool) {
    common::wait::until_ok(what, Duration::from_secs(60), || {
        let counters = handle.counters();
        if done(&counters) { Ok(()) } else { Err(Box::new(counters)) }
    })
    .await;
}

fn point(run: &str, value: i64) -> Rec {
    record(run, json!({"type": "log_metric", "payload": {"name": "m", "value": value, "context": {}, "dtype": "int"}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_partition_evicts_its_least_recently_used_run_after_flushing_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_embedded(dir.path(), EmbeddedEngine::Fjall, Limits::FDB).unwrap();
    let layout = Layout::open(&db).await.unwrap();
    // One partition, so every run shares it and the order of deliveries is the order appended.
    let queue = Queue::open(&db, &layout.dirs.ours, TOPIC, 1).await.unwrap();
    let store = Store { db, layout, queue };
    let (a, b, c) = (run_id(1), run_id(2), run_id(3));
    // Batches wait for the longest age allowed, so what is stored early was flushed by the eviction.
    let small = common::small_pipeline_config();
    let budget = BatchBudget { max_age: Duration::from_millis(4_900), ..small.budget };
    let config =
        PipelineConfig { budget, run_idle_timeout: Duration::from_secs(600), max_run_actors_per_partition: 2, ..small };
    let handle = start(&store, config).await;
    append(&store.queue, &[point(&a, 0), point(&b, 0)]).await;
    wait_for(&handle, "a and b consumed", |c| c.consumed >= 2).await;
    // a is used again: b is now the least recently used.
    append(&store.queue, &[point(&a, 1)]).await;
    wait_for(&handle, "a again consumed", |c| c.consumed >= 3).await;
    assert_eq!(handle.counters().evicted_run_actors, 0, "two runs fit the cap of two");
    append(&store.queue, &[point(&c, 0)]).await;
    wait_for(&handle, "an eviction", |c| c.evicted_run_actors >= 1).await;

    let counters = handle.counters();
    assert_eq!((counters.evicted_run_actors, counters.active_run_actors, counters.peak_run_actors), (1, 2, 2));
    assert_eq!(check_run(&store, &b, 1).await, 1, "the evicted run's record was flushed before its actor went");
    let b_actor = handle.kill(KillTarget::Run(b.clone())).await;
    assert!(matches!(b_actor, Err(matyan::actors::PipelineError::NoSuchTarget(_))), "b was evicted: {b_actor:?}");
    // a is live (this kills its group, which replays from the committed offset: nothing doubles).
    assert!(handle.kill(KillTarget::Run(a.clone())).await.is_ok(), "a, used more recently, stayed");
    wait_committed(&store, &handle, Duration::from_secs(60)).await;
    stop(handle).await;
    let per_run = BTreeMap::from([(a, 2), (b, 1), (c, 1)]);
    assert_eq!(check_all(&store, &per_run).await, 4);
}

/// One point per run over `runs` runs, and a second point for every tenth run `gap` records
/// later (its first actor is long evicted by then, so the run comes back to a fresh one).
fn many_runs(runs: usize, gap: usize) -> (Vec<Rec>, BTreeMap<String, i64>) {
    let mut out = Vec::with_capacity(runs + runs / 10);
    let mut per_run = BTreeMap::new();
    for i in 0..runs + gap {
        if i < runs {
            out.push(point(&run_id(i), 0));
            per_run.insert(run_id(i), 1);
        }
        if i >= gap && (i - gap).is_multiple_of(10) {
            out.push(point(&run_id(i - gap), 1));
            per_run.insert(run_id(i - gap), 2);
        }
    }
    (out, per_run)
}

/// Samples the live run actor count every 2 ms until `stop` is set; returns the highest seen.
fn sample_live_run_actors(handle: PipelineHandle, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut most = 0;
        while !stop.load(Ordering::Relaxed) {
            most = most.max(handle.counters().active_run_actors);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        most
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_runs_stay_under_the_run_actor_cap_and_survive_a_shutdown_midway() {
    const RUNS: usize = 100_000;
    const CAP: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let limit = store.queue.partition_ids().len() * CAP;
    let (records, per_run) = many_runs(RUNS, 5_000);
    append(&store.queue, &records).await;
    let config = PipelineConfig { max_run_actors_per_partition: CAP, ..common::small_pipeline_config() };

    let handle = start(&store, config.clone()).await;
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_live_run_actors(handle.clone(), Arc::clone(&sampling));
    wait_for(&handle, "a third consumed", |c| c.consumed >= records.len() as u64 / 3).await;
    // A clean shutdown at scale: every live run flushes, none fails (stop unwraps the result).
    stop(handle.clone()).await;
    let first = handle.counters();
    sampling.store(true, Ordering::Relaxed);
    let sampled_first = sampler.await.unwrap();

    let handle = start(&store, config).await;
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_live_run_actors(handle.clone(), Arc::clone(&sampling));
    wait_committed(&store, &handle, Duration::from_secs(300)).await;
    stop(handle.clone()).await;
    let second = handle.counters();
    sampling.store(true, Ordering::Relaxed);
    let sampled = sampler.await.unwrap().max(sampled_first);

    println!(
        "live run actors: sampled at most {sampled}, peaks {} and {}; evicted {} and {}; flushes {:?} and {:?}",
        first.peak_run_actors,
        second.peak_run_actors,
        first.evicted_run_actors,
        second.evicted_run_actors,
        first.flushes,
        second.flushes
    );
    assert!(sampled <= limit, "sampled {sampled} live run actors, over {limit}");
    assert!(first.peak_run_actors <= limit && second.peak_run_actors <= limit, "{first:#?}\n{second:#?}");
    assert!(second.evicted_run_actors > 0, "runs beyond the cap were evicted: {second:#?}");
    assert_eq!(check_all(&store, &per_run).await, records.len());
}

// ---------------------------------------------------------------------------------------------
// kill -9 of a real `matyan serve`

/// Reads the group's committed offsets through the admin dump route of a running server.
fn committed_via_admin(addr: std::net::SocketAddr) -> BTreeMap<i64, i64> {
    let (status, body) = common::server::get(addr, "/admin/kv/dump/?dir=ours&prefix=%5B%22consumer%22%5D&raw=true");
    assert_eq!(status, 200, "{body}");
    let mut out = BTreeMap::new();
    // The body is chunked; chunk-size lines are not JSON objects.
    for line in body.lines().map(str::trim).filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = v["key"].as_array().unwrap();
        let partition = key[3].as_i64().unwrap();
        let bytes: [u8; 8] = hex::decode(v["value_hex"].as_str().unwrap()).unwrap().try_into().unwrap();
        out.insert(partition, i64::from_le_bytes(bytes));
    }
    out
}

/// Posts `/admin/chaos/kill/?target=random` every ~50 ms to whichever server `addr` holds, until
/// `stop` is set; returns the number of kills the servers acknowledged.
fn chaos_loop(addr: Arc<Mutex<Option<std::net::SocketAddr>>>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut kills = 0;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            let Some(target) = *addr.lock().unwrap() else { continue };
            // The server may be mid-SIGKILL: a refused connection is expected then.
            if let Some((200, _)) = try_post(target, "/admin/chaos/kill/?target=random") {
                kills += 1;
            }
        }
        kills
    })
}

/// The conservation oracle of the issue: random actor kills every ~50 ms through both lives of a
/// real `matyan serve --chaos`, one SIGKILL of the process mid-stream, and a restart; exactly the
/// points sent are stored, each run in source order.
///
/// A kill drops its partition's unflushed records for replay, so batches must be able to flush
/// between kills: the servers run with a 20 ms batch age (with a 1 s age, kills every ~50 ms
/// starved the tail of the stream, where no batch fills up by count, and the test never ended).
#[test]
fn conservation_under_chaos_kills_and_kill_9_of_matyan_serve_loses_and_duplicates_nothing() {
    let n = points_from_env(20_000);
    println!("kill -9 + chaos oracle: {n} points over 50 runs");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (records, per_run) = workload(50, n);
    let ends = rt.block_on(async {
        std::fs::create_dir_all(&data_dir).unwrap();
        let store = open_store(&data_dir).await;
        append(&store.queue, &records).await;
        end_offsets(&store.queue).await
    });
    let total: i64 = ends.values().sum();
    let live = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = chaos_loop(live.clone(), stop.clone());
    let config = dir.path().join("chaos.toml");
    std::fs::write(&config, "[ingest]\nmax_txn_age_ms = 20\n").unwrap();
    let args = ["--chaos", "--config", config.to_str().unwrap()];

    // First life: killed with SIGKILL once some offsets are committed but not all.
    let mut server = common::server::start(&data_dir, &args);
    let addr = common::server::wait_for_addr(&mut server, &data_dir);
    *live.lock().unwrap() = Some(addr);
    let committed = common::wait::blocking_until_ok("a tenth committed", Duration::from_secs(120), || {
        let committed = committed_via_admin(addr).values().sum::<i64>();
        if committed >= total / 10 { Ok(committed) } else { Err(committed) }
    });
    println!("kill -9 with {committed} of {total} records committed");
    assert!(committed < total, "the stream ended before the kill");
    *live.lock().unwrap() = None;
    server.0.kill().unwrap(); // SIGKILL
    server.0.wait().unwrap();
    let _ = std::fs::remove_file(data_dir.join("serve.addr"));

    // Second life: chaos goes on until everything is committed, then the server stops cleanly.
    let mut server = common::server::start(&data_dir, &args);
    let addr = common::server::wait_for_addr(&mut server, &data_dir);
    *live.lock().unwrap() = Some(addr);
    common::wait::blocking_until_ok(
        &format!("every partition committed to {ends:?}"),
        Duration::from_secs(900),
        || {
            let committed = committed_via_admin(addr);
            let done = ends.iter().all(|(p, end)| committed.get(&i64::from(*p)).copied().unwrap_or(0) >= *end);
            if done { Ok(()) } else { Err(committed) }
        },
    );
    stop.store(true, Ordering::Relaxed);
    let kills = chaos.join().unwrap();
    let (_, metrics) = common::server::get(addr, "/metrics/");
    let status = common::server::terminate(server);
    assert_eq!(status.code(), Some(0));
    println!("chaos kills acknowledged across both lives: {kills}");
    assert!(kills > 0, "no chaos kill happened");
    assert!(metrics.contains("cause=\"chaos\""), "second life saw no chaos restart: {metrics}");

    rt.block_on(async {
        let store = open_store(&data_dir).await;
        assert_eq!(check_all(&store, &per_run).await, n);
    });
}

/// One HTTP/1.1 POST without a body; `None` when the server cannot be reached.
fn try_post(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_owned()))
}

/// One HTTP/1.1 POST without a body; returns the status code and the body.
fn post(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    try_post(addr, path).expect("the server answers")
}

#[test]
fn the_chaos_route_kills_actors_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = common::server::start(&data_dir, &[]);
    let addr = common::server::wait_for_addr(&mut server, &data_dir);
    let (status, body) = post(addr, "/admin/chaos/kill/?target=source");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("chaos is disabled"), "{body}");
    assert_eq!(common::server::terminate(server).code(), Some(0));

    let mut server = common::server::start(&data_dir, &["--chaos"]);
    let addr = common::server::wait_for_addr(&mut server, &data_dir);
    let (status, body) = post(addr, "/admin/chaos/kill/?target=source");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""killed":"source""#), "{body}");
    let (status, body) = post(addr, "/admin/chaos/kill/?target=partition&partition=2");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""killed":"partition 2""#), "{body}");
    assert_eq!(post(addr, "/admin/chaos/kill/?target=run&run=nope").0, 404);
    assert_eq!(post(addr, "/admin/chaos/kill/?target=everything").0, 400);
    // The source loop restarts at the end of its current step.
    common::wait::blocking_until_ok("a source restart for chaos", Duration::from_secs(10), || {
        let (_, metrics) = common::server::get(addr, "/metrics/");
        let restarted = metrics.contains("matyan_ingest_actor_restarts_total{actor=\"source\",cause=\"chaos\"}");
        if restarted { Ok(()) } else { Err(metrics) }
    });
    assert_eq!(common::server::terminate(server).code(), Some(0));
}

/// A maintenance reporter that keeps nothing.
struct Quiet;

impl matyan::maintenance::Reporter for Quiet {
    fn event(&self, _: matyan::maintenance::Event) {}
}

/// Runs a maintenance job in process on the pipeline's store, as `POST /admin/maintenance/` does in
/// `matyan serve`: another writer the pipeline is not told about.
async fn maintenance(store: &Store, job: matyan::maintenance::Job) {
    let blobs = tempfile::tempdir().unwrap();
    let settings = matyan::maintenance::Settings {
        batch_size: 100,
        max_txn_bytes: 1_000_000,
        lock_ttl: Duration::from_secs(60),
        retry: RetryOptions::default(),
    };
    let request = matyan::maintenance::JobRequest { job, max_batches: None, lock_ttl_seconds: None };
    let stop = AtomicBool::new(false);
    let store_blobs = matyan::blobs::LocalDirStore::new(blobs.path());
    matyan::maintenance::run(&store.db, &store.layout, &store_blobs, &settings, &request, &Quiet, &stop).await.unwrap();
}

async fn tombstoned(store: &Store, run: &str) -> bool {
    store.layout.indexes().is_deleted(&store.db.create_trx().unwrap(), run).await.unwrap()
}

async fn has_meta(store: &Store, run: &str) -> bool {
    store.layout.runs.runs.exists(&store.db.create_trx().unwrap(), run, false).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_restored_or_cleared_while_the_pipeline_runs_is_ingested_again_without_a_restart_unlike_the_reference() {
    // The reference's ingestion caches deleted runs and keeps dropping a restored run's records
    // until the worker restarts (ingest-storage §2.2 step 5, §6 quirk 13). Ours reads the tombstone
    // in each flush transaction, so a restore or a clear-tombstone by anyone counts at once.
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let handle = start(&store, common::small_pipeline_config()).await;
    let (restored, cleared) = ("7e5705ed000000000000000000000001", "c1ea7ed0000000000000000000000002");
    let mut records = Vec::new();
    for run in [restored, cleared] {
        records.push(record(run, json!({"type": "create_run", "payload": {"force_resume": false}})));
        records.extend((0..3).map(|v| point(run, v)));
    }
    append(&store.queue, &records).await;
    wait_committed(&store, &handle, Duration::from_secs(60)).await;
    assert_eq!(check_run(&store, restored, 3).await, 3);
    let archive = dir.path().join("backup.jsonl");
    maintenance(&store, matyan::maintenance::Job::Backup { runs: vec![restored.to_owned()], out: archive.clone() })
        .await;

    // Deleted; a late record of each run is dropped while the tombstone stands.
    let deletes: Vec<Rec> =
        [restored, cleared].iter().map(|r| record(r, json!({"type": "delete_run", "payload": {}}))).collect();
    append(&store.queue, &deletes).await;
    append(&store.queue, &[point(restored, 100), point(cleared, 100)]).await;
    wait_committed(&store, &handle, Duration::from_secs(60)).await;
    for run in [restored, cleared] {
        assert!(tombstoned(&store, run).await, "{run} deleted: {:?}", handle.counters());
        assert!(!has_meta(&store, run).await);
        assert_eq!(check_run(&store, run, 0).await, 0, "{run}'s late point dropped");
    }

    // One run restored from its backup, the other's tombstone cleared through REST; neither
    // process restarts, and the next records of both are ingested.
    maintenance(&store, matyan::maintenance::Job::Restore { archive, replace: false, dry_run: false }).await;
    let state = common::app_state(&store.db, &store.layout);
    let clear = axum::http::Request::builder()
        .method("POST")
        .uri(format!("/api/v1/rest/runs/{cleared}/clear-tombstone/"))
        .body(axum::body::Body::empty())
        .unwrap();
    let answer = tower::ServiceExt::oneshot(matyan::http::service(state), clear).await.unwrap();
    assert_eq!(answer.status().as_u16(), 204);
    assert!(!tombstoned(&store, restored).await && !tombstoned(&store, cleared).await);
    append(&store.queue, &[point(restored, 3), point(restored, 4)]).await;
    append(&store.queue, &[record(cleared, json!({"type": "create_run", "payload": {"force_resume": false}}))]).await;
    append(&store.queue, &[point(cleared, 0), point(cleared, 1)]).await;
    wait_committed(&store, &handle, Duration::from_secs(60)).await;
    assert_eq!(check_run(&store, restored, 5).await, 5, "the restored run's points, then the new ones");
    assert_eq!(check_run(&store, cleared, 2).await, 2, "the cleared run starts again");
    assert_eq!(handle.counters().dead_letters, 0);
    stop(handle).await;
}

/// Run `run`'s records, each received at its own time (its envelope `timestamp`, as the gateway
/// stamps it): create_run at 2026-01-01T00:00:00Z, three points 0.25 s apart, finish_run at 1 s.
fn records_received_apart(run: &str) -> Vec<Rec> {
    let at = |quarter: u32, body: serde_json::Value| {
        let (_, value, _) = record(run, body);
        let mut m: serde_json::Value = serde_json::from_slice(&value).unwrap();
        m["timestamp"] = json!(format!("2026-01-01T00:00:0{}.{:06}Z", quarter / 4, (quarter % 4) * 250_000));
        (Some(run.as_bytes().to_vec()), serde_json::to_vec(&m).unwrap(), 0)
    };
    let metric =
        |v: i64| json!({"type": "log_metric", "payload": {"name": "m", "value": v, "context": {}, "dtype": "int"}});
    vec![
        at(0, json!({"type": "create_run", "payload": {"force_resume": false}})),
        at(1, metric(0)),
        at(2, metric(1)),
        at(3, metric(2)),
        at(4, json!({"type": "finish_run", "payload": {}})),
    ]
}

/// Ingests `records` into a fresh store under `dir` through the pipeline; returns the store and
/// the transactions the pipeline flushed.
async fn ingest_all(dir: &Path, records: &[Rec]) -> (Store, u64) {
    let store = open_store(dir).await;
    append(&store.queue, records).await;
    let config = PipelineConfig::from_config(&matyan::config::Config::from_toml_str("test", "").unwrap());
    let handle = start(&store, config).await;
    wait_committed(&store, &handle, Duration::from_secs(30)).await;
    let flushes = handle.counters().flushes.values().sum();
    stop(handle).await;
    (store, flushes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_created_and_finished_in_one_transaction_is_written_at_each_records_receive_time() {
    const T0: f64 = 1_767_225_600.0; // 2026-01-01T00:00:00Z
    let dir = tempfile::tempdir().unwrap();
    let run = run_id(0);
    let (store, flushes) = ingest_all(dir.path(), &records_received_apart(&run)).await;
    assert_eq!(flushes, 1, "create_run, the points and finish_run in one transaction");

    let tx = store.db.create_trx().unwrap();
    let meta = store.layout.runs.get_run(&tx, &run, true).await.unwrap().unwrap();
    let time = |field: &str| meta.get(field).and_then(Value::as_f64).unwrap_or_else(|| panic!("{field}: {meta:?}"));
    assert_eq!(time("created_at"), T0);
    assert_eq!(time("finalized_at"), T0 + 1.0);
    assert!(time("finalized_at") > time("created_at"));
    assert_eq!(time("updated_at"), T0 + 1.0, "the finish_run's update");
    let id = SeqId { run: &run, ctx_id: context_to_id(&json!({})), name: "m" };
    let points = store.layout.seqs.read(&tx, id, None, None, Columns { epoch: false, time: true }, true).await.unwrap();
    let times: Vec<Option<f64>> = points.iter().map(|p| p.time).collect();
    assert_eq!(times, vec![Some(T0 + 0.25), Some(T0 + 0.5), Some(T0 + 0.75)], "each point at its record's time");
}

/// Every key and value of the reference's directories, relative to their prefix.
async fn reference_bytes(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let tx = store.db.create_trx().unwrap();
    let dirs = &store.layout.dirs;
    let mut out = Vec::new();
    for prefix in [&dirs.runs, &dirs.indexes, &dirs.system] {
        for kv in tx.get_range(&RangeOption::new(prefix.clone(), strinc(prefix)), true).await.unwrap() {
            out.push((kv.key[prefix.len()..].to_vec(), kv.value.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_records_ingested_again_later_write_the_same_bytes() {
    let records: Vec<Rec> = (0..3).flat_map(|r| records_received_apart(&run_id(r))).collect();
    let first = tempfile::tempdir().unwrap();
    let (a, _) = ingest_all(first.path(), &records).await;
    // A later replay of the same records (the worker clock has moved on).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = tempfile::tempdir().unwrap();
    let (b, _) = ingest_all(second.path(), &records).await;
    let (a, b) = (reference_bytes(&a).await, reference_bytes(&b).await);
    assert!(a.len() > 30, "{} keys", a.len());
    assert!(a == b, "the two stores differ");
}
