//! The embedded durable queue on the memory and fjall backends: offsets, partitioning as Kafka
//! does it, chunked large records, consumer offsets across reopen, concurrent appenders, trim,
//! the `EmbeddedSource`, its backlog and the consumer-lag gauge a pipeline over it reports, and
//! `matyan queue import` through the real binary.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use matyan::actors::{IngestPipeline, PipelineConfig};
use matyan::ingest::partitioner::partition_for_key;
use matyan::ingest::queue::{AppendRecord, EmbeddedSource, INGESTION_GROUP, MAX_RECORD_BYTES, Queue, QueueError};
use matyan::ingest::source::{Backlog, Record, Source, SourceError};
use matyan::storage::kv::{Database, EmbeddedEngine, EmbeddedOptions, KvError, Limits, RetryOptions};
use matyan::storage::layout::{Dirs, Layout, Ours};
use tempfile::TempDir;

const GOLDEN: &str = common::GOLDEN_10K;
const GOLDEN_RUN: &[u8] = b"00000000000000000000000000010000";
const TOPIC: &str = "data-ingestion";

/// A database of one backend, with the temporary directory that must outlive it.
struct Store {
    name: &'static str,
    db: Database,
    _dir: Option<TempDir>,
}

/// Memory, fjall, and fjall as stores created between ADR 0012 and ADR 0013 are: the queue's
/// records kept apart whole, so that no partition gets a keyspace of its own and trims clear their
/// records in their transaction.
async fn stores() -> Vec<Store> {
    stores_with(EmbeddedOptions::default()).await
}

async fn stores_with(options: EmbeddedOptions) -> Vec<Store> {
    let open = || {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_embedded_with(dir.path(), EmbeddedEngine::Fjall, Limits::FDB, options).unwrap();
        (db, dir)
    };
    let (fjall, dir) = open();
    let (whole, whole_dir) = open();
    let ours = Dirs::open(&whole).await.unwrap().ours;
    assert!(whole.keep_apart(&Ours::new(&ours).queue_records()).unwrap());
    vec![
        Store { name: "memory", db: Database::memory(), _dir: None },
        Store { name: "fjall", db: fjall, _dir: Some(dir) },
        Store { name: "fjall-0012", db: whole, _dir: Some(whole_dir) },
    ]
}

async fn queue(db: &Database, partitions: u32) -> Queue {
    let dirs = Dirs::open(db).await.unwrap();
    Queue::open(db, &dirs.ours, TOPIC, partitions).await.unwrap()
}

async fn read_all(q: &Queue, partition: i32) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    loop {
        let from = out.last().map_or(0, |r| r.offset + 1);
        let page = q.read(partition, from, 500).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// One golden record: (key, value, timestamp_ms, partition in the file).
type GoldenRecord = (Option<Vec<u8>>, Vec<u8>, i64, i64);

/// The golden file's records.
fn golden_records() -> Vec<GoldenRecord> {
    common::golden_records().into_iter().map(|r| (r.key, r.value, r.timestamp_ms, r.partition)).collect()
}

#[tokio::test]
async fn offsets_are_contiguous_per_partition_and_records_read_back_in_order() {
    for store in stores().await {
        let q = queue(&store.db, 4).await;
        type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;
        let mut expected: BTreeMap<i32, KeyValues> = BTreeMap::new();
        for batch in 0..10 {
            let owned: Vec<(Vec<u8>, Vec<u8>)> = (0..10)
                .map(|i| (format!("run-{}", (batch * 10 + i) % 7).into_bytes(), format!("v{batch}-{i}").into_bytes()))
                .collect();
            let records: Vec<AppendRecord<'_>> =
                owned.iter().map(|(k, v)| (Some(k.as_slice()), v.as_slice(), 1_000 + batch)).collect();
            let placed = q.append(&records).await.unwrap();
            for ((k, v), (p, offset)) in owned.into_iter().zip(placed) {
                assert_eq!(p, q.partition_for_key(&k), "{}", store.name);
                let list = expected.entry(p).or_default();
                assert_eq!(offset, list.len() as i64, "{}: offsets of partition {p} must be contiguous", store.name);
                list.push((k, v));
            }
        }
        for p in q.partition_ids() {
            let want = expected.remove(&p).unwrap_or_default();
            assert_eq!(q.end_offset(p).await.unwrap(), want.len() as i64, "{}", store.name);
            let got = read_all(&q, p).await;
            let got: Vec<(i64, Vec<u8>, Vec<u8>)> =
                got.into_iter().map(|r| (r.offset, r.key.unwrap(), r.value)).collect();
            let want: Vec<(i64, Vec<u8>, Vec<u8>)> =
                want.into_iter().enumerate().map(|(i, (k, v))| (i as i64, k, v)).collect();
            assert_eq!(got, want, "{}: partition {p}", store.name);
        }
        // A bounded read returns exactly `max` records from `from`.
        let busiest = q.partition_for_key(b"run-0");
        let page = q.read(busiest, 2, 3).await.unwrap();
        assert_eq!(page.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2, 3, 4], "{}", store.name);
    }
}

#[tokio::test]
async fn the_golden_run_lands_on_kafkas_partition_and_stays_there() {
    // The file was dumped from a 6-partition topic: Kafka put the run on partition 3.
    assert_eq!(partition_for_key(GOLDEN_RUN, 6), Some(3));
    let records = golden_records();
    assert_eq!(records.len(), 10_003);
    assert!(records.iter().all(|r| r.3 == 3 && r.0.as_deref() == Some(GOLDEN_RUN)));
    for store in stores().await {
        let q = queue(&store.db, 6).await;
        assert_eq!(q.partition_for_key(GOLDEN_RUN), 3);
        let mut placed = Vec::new();
        for chunk in records.chunks(1000) {
            let batch: Vec<AppendRecord<'_>> =
                chunk.iter().map(|(k, v, ts, _)| (k.as_deref(), v.as_slice(), *ts)).collect();
            placed.extend(q.append(&batch).await.unwrap());
        }
        let want: Vec<(i32, i64)> = (0..10_003).map(|o| (3, o)).collect();
        assert_eq!(placed, want, "{}", store.name);
        for p in q.partition_ids() {
            assert_eq!(q.end_offset(p).await.unwrap(), if p == 3 { 10_003 } else { 0 }, "{}", store.name);
        }
        let back = read_all(&q, 3).await;
        assert_eq!(back.len(), 10_003);
        for (r, (k, v, ts, _)) in back.iter().zip(&records) {
            assert_eq!((&r.key, &r.value, r.timestamp_ms), (k, v, *ts), "{}: offset {}", store.name, r.offset);
        }
    }
}

#[tokio::test]
async fn records_above_the_value_limit_are_chunked_under_one_offset() {
    for store in stores().await {
        let q = queue(&store.db, 2).await;
        let one_mb: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let four_mib: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 239) as u8).collect();
        let exact: Vec<u8> = vec![7; 100_000];
        let key = b"big-run".as_slice();
        let placed = q
            .append(&[(Some(key), b"small".as_slice(), 1), (Some(key), &one_mb, 2), (Some(key), &exact, 3)])
            .await
            .unwrap();
        let placed4 = q.append(&[(Some(key), &four_mib, 4)]).await.unwrap();
        let p = q.partition_for_key(key);
        assert_eq!(placed, vec![(p, 0), (p, 1), (p, 2)]);
        assert_eq!(placed4, vec![(p, 3)]);
        let back = read_all(&q, p).await;
        let values: Vec<&[u8]> = back.iter().map(|r| r.value.as_slice()).collect();
        assert_eq!(values, vec![b"small".as_slice(), &one_mb, &exact, &four_mib], "{}", store.name);
        assert_eq!(back.iter().map(|r| r.timestamp_ms).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        // Reading from the middle starts at a record boundary.
        let from2 = q.read(p, 2, 10).await.unwrap();
        assert_eq!(from2.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2, 3]);

        let too_big = vec![0u8; MAX_RECORD_BYTES + 1];
        let err = q.append(&[(Some(key), &too_big, 5)]).await.unwrap_err();
        assert!(matches!(err, QueueError::RecordTooLarge { .. }), "{err}");
        let err = q.append(&[(Some(key), &four_mib, 5), (Some(key), &four_mib, 6), (None, &four_mib, 7)]).await;
        assert!(matches!(err, Err(QueueError::BatchTooLarge { .. })), "{err:?}");
        assert_eq!(q.end_offset(p).await.unwrap(), 4, "failed appends write nothing");
    }
}

#[tokio::test]
async fn committed_offsets_and_records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::open_embedded(dir.path(), EmbeddedEngine::Fjall, Limits::FDB).unwrap();
        let q = queue(&db, 3).await;
        let recs: Vec<AppendRecord<'_>> = (0..5).map(|_| (Some(b"r".as_slice()), b"x".as_slice(), 0)).collect();
        q.append(&recs).await.unwrap();
        let p = q.partition_for_key(b"r");
        assert_eq!(q.committed("g", p).await.unwrap(), None);
        q.commit("g", p, 4).await.unwrap();
        q.commit("other", p, 1).await.unwrap();
        let err = q.commit("g", p, 6).await.unwrap_err();
        assert!(matches!(err, QueueError::OffsetPastEnd { offset: 6, end: 5, .. }), "{err}");
    }
    let db = Database::open_embedded(dir.path(), EmbeddedEngine::Fjall, Limits::FDB).unwrap();
    let dirs = Dirs::open(&db).await.unwrap();
    let err = Queue::open(&db, &dirs.ours, TOPIC, 6).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains('3') && text.contains('6') && text.contains(TOPIC), "{text}");
    let q = Queue::open_existing(&db, &dirs.ours, TOPIC).await.unwrap().unwrap();
    assert_eq!(q.partitions(), 3);
    assert!(Queue::open_existing(&db, &dirs.ours, "other-topic").await.unwrap().is_none());
    let zero = Queue::open(&db, &dirs.ours, "other-topic", 0).await.unwrap_err();
    assert!(matches!(zero, QueueError::InvalidPartitionCount { requested: 0, .. }), "{zero}");
    let p = q.partition_for_key(b"r");
    assert_eq!(q.committed("g", p).await.unwrap(), Some(4));
    assert_eq!(q.committed("other", p).await.unwrap(), Some(1));
    assert_eq!(q.end_offset(p).await.unwrap(), 5);
    // A source of the group resumes at its committed offset.
    let source = EmbeddedSource::new(q.clone(), "g").await.unwrap();
    let got = source.poll(100, Duration::from_millis(10)).await.unwrap();
    assert_eq!(got.iter().map(|r| (r.partition, r.offset)).collect::<Vec<_>>(), vec![(p, 4)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_neither_lose_nor_duplicate_offsets() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    for store in stores().await {
        let q = queue(&store.db, 3).await;
        let started = Instant::now();
        let mut handles = Vec::new();
        for task in 0..TASKS {
            let q = q.clone();
            handles.push(tokio::spawn(async move {
                // Three keys for eight tasks: several tasks always share a partition and conflict.
                let key = format!("run-{}", task % 3).into_bytes();
                let mut placed = Vec::new();
                for i in 0..PER_TASK {
                    let value = format!("{task}:{i}").into_bytes();
                    placed.extend(q.append(&[(Some(key.as_slice()), value.as_slice(), i as i64)]).await.unwrap());
                }
                placed
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        let distinct: BTreeSet<(i32, i64)> = all.iter().copied().collect();
        assert_eq!(all.len(), TASKS * PER_TASK, "{}", store.name);
        assert_eq!(distinct.len(), TASKS * PER_TASK, "{}: duplicate offsets", store.name);
        let mut total = 0;
        for p in q.partition_ids() {
            let end = q.end_offset(p).await.unwrap();
            let offsets: Vec<i64> = distinct.iter().filter(|(dp, _)| *dp == p).map(|(_, o)| *o).collect();
            assert_eq!(offsets, (0..end).collect::<Vec<_>>(), "{}: partition {p} has holes", store.name);
            // Each task's records appear in its own order.
            let mut last: BTreeMap<String, i64> = BTreeMap::new();
            for r in read_all(&q, p).await {
                let text = String::from_utf8(r.value).unwrap();
                let (task, i) = text.split_once(':').unwrap();
                let i: i64 = i.parse().unwrap();
                if let Some(prev) = last.insert(task.to_owned(), i) {
                    assert_eq!(i, prev + 1, "{}: task {task} out of order", store.name);
                }
                total += 1;
            }
        }
        assert_eq!(total, TASKS * PER_TASK, "{}", store.name);
        eprintln!("{}: {} concurrent appends in {:?}", store.name, TASKS * PER_TASK, started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_retries_concurrent_appenders_conflict_and_the_losers_write_nothing() {
    let db = Database::memory();
    let no_retry = RetryOptions { retry_limit: 0, ..RetryOptions::default() };
    let q = queue(&db, 1).await.with_retry(no_retry);
    let mut handles = Vec::new();
    for task in 0..8 {
        let q = q.clone();
        handles.push(tokio::spawn(async move {
            let (mut ok, mut conflicts) = (Vec::new(), 0);
            for i in 0..200 {
                let value = format!("{task}:{i}").into_bytes();
                match q.append(&[(Some(b"same".as_slice()), value.as_slice(), 0)]).await {
                    Ok(placed) => ok.extend(placed),
                    Err(QueueError::Kv(KvError::NotCommitted)) => conflicts += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (ok, conflicts)
        }));
    }
    let (mut ok, mut conflicts) = (Vec::new(), 0);
    for h in handles {
        let (o, c) = h.await.unwrap();
        ok.extend(o);
        conflicts += c;
    }
    assert!(conflicts > 0, "eight appenders on one partition never conflicted");
    let offsets: BTreeSet<i64> = ok.iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets.len(), ok.len());
    assert_eq!(offsets.into_iter().collect::<Vec<_>>(), (0..ok.len() as i64).collect::<Vec<_>>());
    assert_eq!(q.end_offset(0).await.unwrap(), ok.len() as i64);
    assert_eq!(read_all(&q, 0).await.len(), ok.len());
    eprintln!("{} appends committed, {conflicts} conflicted", ok.len());
}

#[tokio::test]
async fn trim_removes_only_records_below_the_offset() {
    for store in stores().await {
        let q = queue(&store.db, 2).await;
        let key = b"trim-me".as_slice();
        let other = (0..100u32)
            .map(|i| format!("o{i}").into_bytes())
            .find(|k| q.partition_for_key(k) != q.partition_for_key(key))
            .unwrap();
        let big = vec![1u8; 250_000];
        let mut recs: Vec<AppendRecord<'_>> = (0..10).map(|i| (Some(key), b"v".as_slice(), i)).collect();
        recs[3].1 = &big;
        recs[4].1 = &big;
        recs.push((Some(&other), b"w".as_slice(), 0));
        q.append(&recs).await.unwrap();
        let p = q.partition_for_key(key);
        let op = q.partition_for_key(&other);

        assert_eq!(q.trim(p, 4).await.unwrap(), 4);
        assert_eq!(q.start_offset(p).await.unwrap(), 4);
        let left = read_all(&q, p).await;
        assert_eq!(left.iter().map(|r| r.offset).collect::<Vec<_>>(), (4..10).collect::<Vec<_>>(), "{}", store.name);
        assert_eq!(left[0].value, big, "the first kept record keeps all its chunks");
        assert_eq!(q.end_offset(p).await.unwrap(), 10);
        assert_eq!(read_all(&q, op).await.len(), 1, "other partitions untouched");
        // Lower trims do nothing; trims past the end stop at the end; offsets are never reused.
        assert_eq!(q.trim(p, 2).await.unwrap(), 4);
        assert_eq!(q.trim(p, 1_000).await.unwrap(), 10);
        assert!(read_all(&q, p).await.is_empty());
        assert_eq!(q.append(&[(Some(key), b"after", 0)]).await.unwrap(), vec![(p, 10)]);
        assert_eq!(read_all(&q, p).await.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![10]);
        // A new consumer starts at the start offset.
        let source = EmbeddedSource::new(q.clone(), "fresh").await.unwrap();
        assert_eq!(source.position(p), Some(10));
    }
}

#[tokio::test]
async fn trim_consumed_removes_only_what_every_group_of_the_topic_has_committed() {
    for store in stores().await {
        let q = queue(&store.db, 1).await;
        let dirs = Dirs::open(&store.db).await.unwrap();
        let other = Queue::open(&store.db, &dirs.ours, "control-events", 1).await.unwrap();
        let recs: Vec<AppendRecord<'_>> = (0..20).map(|i| (Some(b"k".as_slice()), b"v".as_slice(), i)).collect();
        q.append(&recs).await.unwrap();
        other.append(&recs[..5]).await.unwrap();
        assert_eq!(
            q.trim_consumed(0, 0, 1000).await.unwrap().start,
            None,
            "no group has committed: nothing is known consumed"
        );
        assert_eq!(q.start_offset(0).await.unwrap(), 0);

        q.commit("fast", 0, 15).await.unwrap();
        q.commit("slow", 0, 8).await.unwrap();
        // A group of another topic, further behind, does not hold this topic back.
        other.commit("control-workers", 0, 1).await.unwrap();
        assert_eq!(q.trim_consumed(0, 0, 1000).await.unwrap().start, Some(8), "{}", store.name);
        assert_eq!(read_all(&q, 0).await.first().map(|r| r.offset), Some(8));
        assert_eq!(read_all(&q, 0).await.len(), 12);

        q.commit("slow", 0, 14).await.unwrap();
        assert_eq!(q.trim_consumed(0, 3, 1000).await.unwrap().start, Some(11), "three consumed records are kept");
        assert_eq!(
            q.trim_consumed(0, 100, 1000).await.unwrap().start,
            Some(11),
            "a larger retain never brings records back"
        );
        // The slow group rewinds (a replay) to where records are kept: it reads them all again.
        q.commit("slow", 0, 11).await.unwrap();
        let source = EmbeddedSource::new(q.clone(), "slow").await.unwrap();
        assert_eq!(source.position(0), Some(11));
        assert_eq!(q.trim_consumed(0, 0, 1000).await.unwrap().start, Some(11));

        let settings = matyan::ingest::queue_trim::TrimSettings { retain: 0, batch: 1000 };
        let report = matyan::ingest::queue_trim::trim_once(&store.db, &dirs.ours, settings).await.unwrap();
        let by_topic: BTreeMap<_, _> = report.iter().map(|t| (t.topic.as_str(), (t.trimmed, t.held))).collect();
        assert_eq!(by_topic.get("control-events"), Some(&(1, 4)), "{}: {report:?}", store.name);
        assert_eq!(by_topic.get(TOPIC), Some(&(0, 9)));
        assert_eq!(other.start_offset(0).await.unwrap(), 1);
    }
}

#[tokio::test]
async fn a_trim_clearing_records_removes_at_most_its_record_budget_and_a_pass_runs_as_many_as_it_needs() {
    for store in stores().await {
        let q = queue(&store.db, 1).await;
        let dirs = Dirs::open(&store.db).await.unwrap();
        let recs: Vec<AppendRecord<'_>> = (0..25).map(|i| (Some(b"k".as_slice()), b"v".as_slice(), i)).collect();
        q.append(&recs).await.unwrap();
        q.commit("only", 0, 23).await.unwrap();
        if store.name == "fjall" {
            // Its partitions are kept apart: a trim writes the start offset only and forgets the
            // records after its transaction, so it goes all the way at once.
            let trim = q.trim_consumed(0, 0, 10).await.unwrap();
            assert_eq!((trim.before, trim.start, trim.complete, trim.held()), (0, Some(23), true, 2));
        } else {
            let trim = q.trim_consumed(0, 0, 10).await.unwrap();
            assert_eq!((trim.before, trim.start, trim.complete), (0, Some(10), false), "{}", store.name);
            assert_eq!(read_all(&q, 0).await.first().map(|r| r.offset), Some(10));
            let trim = q.trim_consumed(0, 0, 10).await.unwrap();
            assert_eq!((trim.start, trim.complete), (Some(20), false));
            let trim = q.trim_consumed(0, 0, 10).await.unwrap();
            assert_eq!(
                (trim.start, trim.complete, trim.held()),
                (Some(23), true, 2),
                "the last step stops at the commit"
            );
        }
        assert_eq!(read_all(&q, 0).await.first().map(|r| r.offset), Some(23), "{}", store.name);

        // A pass with a budget of 4 takes the next records to the commit in steps, all counted.
        q.append(&recs[..10]).await.unwrap();
        q.commit("only", 0, 33).await.unwrap();
        let settings = matyan::ingest::queue_trim::TrimSettings { retain: 0, batch: 4 };
        let report = matyan::ingest::queue_trim::trim_once(&store.db, &dirs.ours, settings).await.unwrap();
        let by_topic: BTreeMap<_, _> = report.iter().map(|t| (t.topic.as_str(), (t.trimmed, t.held))).collect();
        assert_eq!(by_topic.get(TOPIC), Some(&(10, 2)), "{}: {report:?}", store.name);
        assert_eq!(q.start_offset(0).await.unwrap(), 33);
    }
}

/// fjall stores whose memtables are small (1 MiB), so that a few MB of records are flushed into
/// several tables while a test runs.
fn small_memtables() -> EmbeddedOptions {
    EmbeddedOptions { memtable_bytes: 1 << 20, ..EmbeddedOptions::default() }
}

/// Bytes of the fjall store's tables (its journal aside) under `dir`.
fn table_bytes(dir: &Path) -> u64 {
    matyan::bench::disk::bytes_under(&dir.join("fjall/keyspaces"), matyan::bench::disk::apparent)
}

/// A value of about 1 KB that names record `i` and does not compress.
fn numbered_value(i: usize) -> Vec<u8> {
    let mut v = format!("{i:08}:").into_bytes();
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

fn number_of(value: &[u8]) -> usize {
    std::str::from_utf8(&value[..8]).unwrap().parse().unwrap()
}

/// Waits until the engine has flushed every sealed memtable.
async fn wait_flushed(db: &Database) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.engine_memory().is_some_and(|m| m.sealed_memtables > 0) {
        assert!(Instant::now() < deadline, "memtables were not flushed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trim_concurrent_with_appends_and_reads_loses_and_duplicates_nothing() {
    const RECORDS: usize = 12_000;
    for store in stores_with(small_memtables()).await {
        let q = queue(&store.db, 3).await;
        let ours = Dirs::open(&store.db).await.unwrap().ours;
        let done = Arc::new(AtomicBool::new(false));
        let appender = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut placed = BTreeMap::new();
                for batch in 0..RECORDS / 100 {
                    let owned: Vec<(Vec<u8>, Vec<u8>)> = (batch * 100..(batch + 1) * 100)
                        .map(|i| (format!("run-{}", i % 5).into_bytes(), numbered_value(i)))
                        .collect();
                    let records: Vec<AppendRecord<'_>> =
                        owned.iter().map(|(k, v)| (Some(k.as_slice()), v.as_slice(), 0)).collect();
                    for ((_, v), at) in owned.iter().zip(q.append(&records).await.unwrap()) {
                        placed.insert(at, number_of(v));
                    }
                }
                placed
            })
        };
        // Trims as often as it can, as far as the group has committed, a few records at a time where
        // the trim clears them itself.
        let trimmer = {
            let (db, ours, done) = (store.db.clone(), ours.clone(), Arc::clone(&done));
            let settings = matyan::ingest::queue_trim::TrimSettings { retain: 0, batch: 50 };
            tokio::spawn(async move {
                let mut trimmed = 0;
                while !done.load(Ordering::SeqCst) {
                    let report = matyan::ingest::queue_trim::trim_once(&db, &ours, settings).await.unwrap();
                    trimmed += report.iter().map(|t| t.trimmed).sum::<u64>();
                    tokio::task::yield_now().await;
                }
                trimmed
            })
        };
        // A reader outside the group reads each partition from offset 0 again and again: whatever a
        // trim has removed or not yet freed, it gets consecutive records from the start offset on.
        let reader = {
            let (q, done) = (q.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    for p in q.partition_ids() {
                        let page = q.read(p, 0, 300).await.unwrap();
                        assert!(page.windows(2).all(|w| w[1].offset == w[0].offset + 1), "a gap in {p}");
                        seen.extend(page.into_iter().map(|r| ((p, r.offset), number_of(&r.value))));
                    }
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        let source =
            EmbeddedSource::new(q.clone(), "group").await.unwrap().with_poll_interval(Duration::from_millis(5));
        let mut got: Vec<Record> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while got.len() < RECORDS {
            assert!(Instant::now() < deadline, "{}: {} of {RECORDS} records read", store.name, got.len());
            let batch = source.poll(500, Duration::from_millis(50)).await.unwrap();
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            for r in &batch {
                next.insert(r.partition, r.offset + 1);
            }
            for (p, offset) in next {
                source.commit(p, offset).await.unwrap();
            }
            got.extend(batch);
        }
        let placed = appender.await.unwrap();
        done.store(true, Ordering::SeqCst);
        let trimmed = trimmer.await.unwrap();
        let seen = reader.await.unwrap();

        let mut numbers: Vec<usize> = got.iter().map(|r| number_of(&r.value)).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (0..RECORDS).collect::<Vec<_>>(), "{}: every record read once", store.name);
        for r in &got {
            assert_eq!(placed.get(&(r.partition, r.offset)), Some(&number_of(&r.value)), "{}", store.name);
        }
        for (at, number) in seen {
            assert_eq!(placed.get(&at), Some(&number), "{}: a read outside the group at {at:?}", store.name);
        }
        assert!(trimmed > 0, "{}: the trims ran while records were read", store.name);
    }
}

/// Polls `future` `polls` times, letting the runtime run in between, then drops it.
async fn poll_then_drop<F: std::future::Future>(future: F, polls: usize) {
    let mut future = std::pin::pin!(future);
    for _ in 0..polls {
        let ready = std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx).is_ready())).await;
        if ready {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Checks that partition 0 of `q` holds exactly the records from its start offset to `end`,
/// numbered by offset, read from offset 0 in one snapshot, and that the group drains it from its
/// committed offset. A trim dropped while its commit was in flight may still move the start
/// meanwhile: each read sees one start.
async fn assert_drains_exactly(q: &Queue, name: &str, end: i64) {
    let committed = q.committed("group", 0).await.unwrap().unwrap();
    let all = q.read(0, 0, 100_000).await.unwrap();
    let start = all.first().map_or(end, |r| r.offset);
    let offsets: Vec<i64> = all.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (start..end).collect::<Vec<_>>(), "{name}: read from 0");
    assert!(all.iter().all(|r| number_of(&r.value) as i64 == r.offset), "{name}");
    assert!(start <= committed, "{name}: nothing the group has not committed is trimmed");
    let source = EmbeddedSource::new(q.clone(), "group").await.unwrap();
    let mut got = Vec::new();
    while got.len() < (end - committed) as usize {
        let batch = source.poll(1000, Duration::from_millis(100)).await.unwrap();
        assert!(!batch.is_empty(), "{name}: {} of {} records left", got.len(), end - committed);
        got.extend(batch.into_iter().map(|r| r.offset));
    }
    assert_eq!(got, (committed..end).collect::<Vec<_>>(), "{name}: the group drains from its offset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_stopped_midway_or_by_a_reopen_leaves_a_queue_that_drains_exactly() {
    const RECORDS: usize = 4_000;
    let values: Vec<Vec<u8>> = (0..RECORDS).map(numbered_value).collect();
    let records: Vec<AppendRecord<'_>> = values.iter().map(|v| (Some(b"k".as_slice()), v.as_slice(), 0)).collect();
    for store in stores_with(small_memtables()).await {
        let Store { name, db, _dir: dir } = store;
        let q = queue(&db, 1).await;
        for chunk in records.chunks(200) {
            q.append(chunk).await.unwrap();
        }
        q.commit("group", 0, 3_000).await.unwrap();
        // Stopped at every point its first few polls reach: before its transaction, with its
        // transaction committing (the commit runs on, the forget that follows it does not).
        for polls in 0..4 {
            poll_then_drop(q.trim_consumed(0, 0, 700), polls).await;
            assert_drains_exactly(&q, name, RECORDS as i64).await;
        }
        q.commit("group", 0, 3_500).await.unwrap();
        poll_then_drop(q.trim_consumed(0, 0, 10_000), 1).await;
        assert_drains_exactly(&q, name, RECORDS as i64).await;
        let Some(dir) = dir else { continue };
        // The store closed and opened again (once a commit still in flight lets go of it), the
        // queue still drains exactly, and trims go on from where the stopped ones left.
        drop(q);
        drop(db);
        let deadline = Instant::now() + Duration::from_secs(30);
        let db = loop {
            match Database::open_embedded_with(dir.path(), EmbeddedEngine::Fjall, Limits::FDB, small_memtables()) {
                Err(KvError::Locked(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                opened => break opened.unwrap(),
            }
        };
        let q = queue(&db, 1).await;
        assert_drains_exactly(&q, name, RECORDS as i64).await;
        q.commit("group", 0, 3_900).await.unwrap();
        assert_eq!(q.trim_consumed(0, 0, 10_000).await.unwrap().start, Some(3_900), "{name}");
        assert_eq!(q.start_offset(0).await.unwrap(), 3_900);
        assert_drains_exactly(&q, name, RECORDS as i64).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_frees_the_disk_the_trimmed_records_took_on_fjall() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_embedded_with(dir.path(), EmbeddedEngine::Fjall, Limits::FDB, small_memtables()).unwrap();
    let q = queue(&db, 1).await;
    let values: Vec<Vec<u8>> = (0..8_000).map(numbered_value).collect();
    for chunk in values.chunks(200) {
        let records: Vec<AppendRecord<'_>> = chunk.iter().map(|v| (Some(b"k".as_slice()), v.as_slice(), 0)).collect();
        q.append(&records).await.unwrap();
    }
    // Flushed, and a compaction that merges the flushed tables meanwhile settled: counted while
    // one replaces its inputs, the files add up to less (how many tables hold the records depends
    // on whether it ran).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (tables, bytes) = loop {
        wait_flushed(&db).await;
        let (tables, bytes) = (db.engine_memory().unwrap().tables, table_bytes(dir.path()));
        if tables >= 1 && bytes > 6_000_000 {
            break (tables, bytes);
        }
        assert!(Instant::now() < deadline, "8 MB of records were flushed into tables: {tables}, {bytes} B");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    q.commit("group", 0, 8_000).await.unwrap();
    let ours = Dirs::open(&db).await.unwrap().ours;
    let settings = matyan::ingest::queue_trim::TrimSettings { retain: 0, batch: 10_000 };
    let report = matyan::ingest::queue_trim::trim_once(&db, &ours, settings).await.unwrap();
    assert_eq!(report.iter().map(|t| t.trimmed).sum::<u64>(), 8_000);
    let (tables_after, bytes_after) = (db.engine_memory().unwrap().tables, table_bytes(dir.path()));
    assert!(tables_after < tables, "tables {tables} -> {tables_after}");
    assert!(bytes_after < bytes / 4, "table bytes {bytes} -> {bytes_after}");
    assert!(read_all(&q, 0).await.is_empty());
    q.append(&[(Some(b"k".as_slice()), b"later".as_slice(), 0)]).await.unwrap();
    assert_eq!(read_all(&q, 0).await.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![8_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_source_polls_in_offset_order_and_wakes_on_append() {
    for store in stores().await {
        let q = queue(&store.db, 3).await;
        // A long fallback interval: only the append notification can wake the poll quickly.
        let source = EmbeddedSource::new(q.clone(), "ingestion-workers")
            .await
            .unwrap()
            .with_poll_interval(Duration::from_secs(60));
        assert_eq!(source.assignment(), vec![0, 1, 2]);

        let keys: Vec<Vec<u8>> = (0..6).map(|i| format!("run-{i}").into_bytes()).collect();
        let recs: Vec<AppendRecord<'_>> =
            (0..60).map(|i| (Some(keys[i % 6].as_slice()), keys[i % 6].as_slice(), i as i64)).collect();
        q.append(&recs).await.unwrap();
        let mut got: Vec<Record> = Vec::new();
        while got.len() < 60 {
            let batch = source.poll(7, Duration::from_millis(200)).await.unwrap();
            assert!(!batch.is_empty() && batch.len() <= 7, "{}", store.name);
            got.extend(batch);
        }
        let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for r in &got {
            per_partition.entry(r.partition).or_default().push(r.offset);
        }
        for (p, offsets) in &per_partition {
            assert_eq!(offsets, &(0..offsets.len() as i64).collect::<Vec<_>>(), "{}: partition {p}", store.name);
        }

        // Nothing new: the poll waits for the timeout.
        let t = Instant::now();
        assert!(source.poll(10, Duration::from_millis(150)).await.unwrap().is_empty());
        assert!(t.elapsed() >= Duration::from_millis(140));

        // An append from another task wakes a waiting poll long before its timeout.
        let appender = q.clone();
        let wake = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            appender.append(&[(Some(b"late".as_slice()), b"late".as_slice(), 0)]).await.unwrap()
        });
        let t = Instant::now();
        let late = source.poll(10, Duration::from_secs(20)).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "{}: poll did not wake on append", store.name);
        let placed = wake.await.unwrap();
        assert_eq!(late.iter().map(|r| (r.partition, r.offset)).collect::<Vec<_>>(), placed, "{}", store.name);

        // Pause holds a partition back, resume releases it from where it stopped.
        let lp = q.partition_for_key(b"late");
        source.pause(lp).unwrap();
        q.append(&[(Some(b"late".as_slice()), b"second".as_slice(), 0)]).await.unwrap();
        assert!(source.poll(10, Duration::from_millis(50)).await.unwrap().is_empty(), "{}", store.name);
        source.resume(lp).unwrap();
        let resumed = source.poll(10, Duration::from_millis(500)).await.unwrap();
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].value, b"second");

        // Commits are per partition and persist; seek replays.
        source.commit(lp, resumed[0].offset + 1).await.unwrap();
        assert_eq!(q.committed("ingestion-workers", lp).await.unwrap(), Some(resumed[0].offset + 1));
        source.seek(lp, 0).unwrap();
        let replay = source.poll(1_000, Duration::from_millis(500)).await.unwrap();
        assert_eq!(replay.first().map(|r| (r.partition, r.offset)), Some((lp, 0)));
        assert!(source.pause(99).is_err());
        assert!(source.commit(0, -1).await.is_err());
    }
}

/// Two keys of `q` that land on different partitions.
fn keys_on_two_partitions(q: &Queue) -> (Vec<u8>, Vec<u8>) {
    let keys: Vec<Vec<u8>> = (0..100).map(|i| format!("run-{i}").into_bytes()).collect();
    let first = keys[0].clone();
    let second = keys.iter().find(|k| q.partition_for_key(k) != q.partition_for_key(&first)).unwrap().clone();
    (first, second)
}

#[tokio::test]
async fn the_backlog_is_the_end_minus_the_committed_offset_unread_records_included() {
    for store in stores().await {
        let q = queue(&store.db, 3).await;
        let (a, b) = keys_on_two_partitions(&q);
        let (pa, pb) = (q.partition_for_key(&a), q.partition_for_key(&b));
        let recs: Vec<AppendRecord<'_>> = (0..10).map(|_| (Some(a.as_slice()), b"v".as_slice(), 0)).collect();
        q.append(&recs).await.unwrap();
        q.append(&[(Some(b.as_slice()), b"v".as_slice(), 0); 4]).await.unwrap();
        // Nothing read, nothing committed: every record is backlog.
        let source = EmbeddedSource::new(q.clone(), "ingestion-workers").await.unwrap();
        let expect = |a_lag: i64, b_lag: i64| {
            let mut out = BTreeMap::from([(0, 0), (1, 0), (2, 0)]);
            out.insert(pa, a_lag);
            out.insert(pb, b_lag);
            out
        };
        let lags = |backlogs: Vec<Backlog>| -> BTreeMap<i32, i64> {
            backlogs.iter().map(|b| (b.partition, b.records())).collect()
        };
        assert_eq!(lags(source.backlog().await.unwrap()), expect(10, 4), "{}", store.name);
        // Read but not committed is still backlog; a commit shrinks it; trimmed records are gone.
        assert_eq!(source.poll(100, Duration::from_millis(200)).await.unwrap().len(), 14);
        assert_eq!(lags(source.backlog().await.unwrap()), expect(10, 4), "{}", store.name);
        source.commit(pa, 3).await.unwrap();
        q.trim(pb, 1).await.unwrap();
        assert_eq!(lags(source.backlog().await.unwrap()), expect(7, 3), "{}", store.name);
        assert_eq!(lags(q.backlog("another-group").await.unwrap()), expect(10, 3), "{}", store.name);
    }
}

/// The embedded source, held: polls return nothing until `open` is set (a pipeline that is
/// stopped or slow, deterministically).
struct Held {
    inner: EmbeddedSource,
    open: AtomicBool,
}

impl Source for Held {
    async fn poll(&self, max_records: usize, timeout: Duration) -> Result<Vec<Record>, SourceError> {
        if !self.open.load(Ordering::SeqCst) {
            tokio::time::sleep(timeout).await;
            return Ok(Vec::new());
        }
        self.inner.poll(max_records, timeout).await
    }

    async fn commit(&self, partition: i32, next_offset: i64) -> Result<(), SourceError> {
        self.inner.commit(partition, next_offset).await
    }

    fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError> {
        self.inner.seek(partition, offset)
    }

    fn assignment(&self) -> Vec<i32> {
        self.inner.assignment()
    }

    fn pause(&self, partition: i32) -> Result<(), SourceError> {
        self.inner.pause(partition)
    }

    fn resume(&self, partition: i32) -> Result<(), SourceError> {
        self.inner.resume(partition)
    }

    async fn backlog(&self) -> Result<Vec<Backlog>, SourceError> {
        self.inner.backlog().await
    }
}

/// Reads `matyan_ingest_consumer_lag` per partition from the rendered metrics.
fn lag_gauges(text: &str) -> BTreeMap<i32, i64> {
    text.lines()
        .filter_map(|line| line.strip_prefix("matyan_ingest_consumer_lag{partition=\""))
        .filter_map(|rest| {
            let (partition, value) = rest.split_once("\"} ")?;
            Some((partition.parse().ok()?, value.trim().parse::<f64>().ok()? as i64))
        })
        .collect()
}

/// Waits until the lag gauges read `expected`.
async fn wait_lag(metrics: &metrics_exporter_prometheus::PrometheusHandle, expected: &BTreeMap<i32, i64>) {
    common::wait::until_ok(&format!("lag gauges {expected:?}"), Duration::from_secs(30), || {
        let seen = lag_gauges(&metrics.render());
        if &seen == expected { Ok(()) } else { Err(seen) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauge_is_the_unread_backlog_while_the_pipeline_is_held_and_0_once_everything_is_applied() {
    // The only test of this binary that runs a pipeline, so nothing else sets these gauges.
    let metrics = matyan::metrics::install_prometheus().unwrap();
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    let q = Queue::open(&db, &layout.dirs.ours, TOPIC, 3).await.unwrap();
    let (a, b) = keys_on_two_partitions(&q);
    let mut records = Vec::new();
    for key in [&a, &b] {
        let run = String::from_utf8(key.clone()).unwrap();
        let create = serde_json::json!({"run_id": run, "type": "create_run", "payload": {"force_resume": false}});
        records.push((key.clone(), serde_json::to_vec(&create).unwrap()));
        for n in 0..(if key == &a { 20 } else { 7 }) {
            let payload = serde_json::json!({"name": "m", "value": n, "context": {}, "dtype": "int"});
            let point = serde_json::json!({"run_id": run, "type": "log_metric", "payload": payload});
            records.push((key.clone(), serde_json::to_vec(&point).unwrap()));
        }
    }
    let appended: Vec<AppendRecord<'_>> = records.iter().map(|(k, v)| (Some(k.as_slice()), v.as_slice(), 0)).collect();
    q.append(&appended).await.unwrap();
    let mut backlog = BTreeMap::from([(0, 0), (1, 0), (2, 0)]);
    backlog.insert(q.partition_for_key(&a), 21);
    backlog.insert(q.partition_for_key(&b), 8);

    let inner =
        EmbeddedSource::new(q.clone(), INGESTION_GROUP).await.unwrap().with_poll_interval(Duration::from_millis(10));
    let source = Arc::new(Held { inner, open: AtomicBool::new(false) });
    let config = PipelineConfig { lag_interval: Duration::from_millis(20), ..common::small_pipeline_config() };
    let handle = IngestPipeline::start(db.clone(), layout.clone(), Arc::clone(&source), config).unwrap();

    // Held: nothing is read, yet every appended record is lag.
    wait_lag(&metrics, &backlog).await;
    assert_eq!(handle.counters().consumed, 0);

    source.open.store(true, Ordering::SeqCst);
    let zero = BTreeMap::from([(0, 0), (1, 0), (2, 0)]);
    wait_lag(&metrics, &zero).await;
    for p in q.partition_ids() {
        assert_eq!(q.committed(INGESTION_GROUP, p).await.unwrap().unwrap_or(0), q.end_offset(p).await.unwrap());
    }
    tokio::time::timeout(Duration::from_secs(30), handle.shutdown()).await.unwrap().unwrap();
    assert_eq!(lag_gauges(&metrics.render()), zero);
}

fn import(data_dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["queue", "import", GOLDEN, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn queue_import_appends_the_golden_file_and_appends_again_on_a_second_run() {
    let dir = tempfile::tempdir().unwrap();
    let first = import(dir.path(), &["--progress-every", "4000"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("appended 10003 records"), "{stdout}");
    assert!(stdout.contains("partition 3: 10003 records at offsets 0..=10002"), "{stdout}");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("queue import: 4000 records"), "{stderr}");

    let second = import(dir.path(), &["--batch", "333"]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(String::from_utf8_lossy(&second.stdout).contains("offsets 10003..=20005"));

    // `--kafka` produces to a topic (tests/roles.rs); the embedded queue's options do not apply there.
    let kafka = import(dir.path(), &["--kafka", "--partitions", "6"]);
    assert!(!kafka.status.success());
    assert!(String::from_utf8_lossy(&kafka.stderr).contains("--partitions does not apply with --kafka"));
    let mismatch = import(dir.path(), &["--partitions", "4"]);
    assert!(!mismatch.status.success());
    assert!(String::from_utf8_lossy(&mismatch.stderr).contains("has 6 partitions, not 4"));

    let db = Database::open_embedded(dir.path(), EmbeddedEngine::Fjall, Limits::FDB).unwrap();
    let dirs = Dirs::open(&db).await.unwrap();
    let q = Queue::open_existing(&db, &dirs.ours, TOPIC).await.unwrap().unwrap();
    assert_eq!(q.partitions(), 6);
    for p in q.partition_ids() {
        assert_eq!(q.end_offset(p).await.unwrap(), if p == 3 { 20_006 } else { 0 });
    }
    let golden = golden_records();
    let back = read_all(&q, 3).await;
    assert_eq!(back.len(), 20_006);
    for (i, r) in back.iter().enumerate() {
        let (k, v, ts, _) = &golden[i % 10_003];
        assert_eq!((&r.key, &r.value, r.timestamp_ms), (k, v, *ts), "offset {i}");
    }
}
