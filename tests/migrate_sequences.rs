//! `matyan migrate sequences --to chunked|key_per_step` (`docs/adr/0009-sequence-migration.md`):
//! both directions on the memory and fjall backends, the store back to the reference's bytes at the
//! end, reads of a half-migrated store (dual read, also through the REST API), a migration stopped
//! and killed midway then resumed, ingestion through the apply path during a migration, the job
//! lock, and the dry run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use matyan::blobs::LocalDirStore;
use matyan::ingest::apply::{Applier, position_uuid};
use matyan::ingest::{Entry, decode};
use matyan::maintenance::{self, Event, Job, JobRequest, MaintenanceError, Outcome, Reporter, Settings};
use matyan::storage::context_id::context_to_id;
use matyan::storage::job_lock::JobLock;
use matyan::storage::kv::{Database, EmbeddedEngine, Limits, RangeOption, RetryOptions, strinc};
use matyan::storage::layout::sequences::version::{self, VersionState};
use matyan::storage::layout::{
    Columns, Layout, LayoutError, SeqId, SeqPoint, SeqWrite, SequenceLayout, SequenceLayoutKind, TraceInfo,
};
use matyan::storage::tuple::{self, Elem};
use matyan::storage::value::{self, Value};
use serde_json::{Value as Json, json};
use tower::ServiceExt as _;

use SequenceLayoutKind::{Chunked, KeyPerStep};

const RUN_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const RUN_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const RUN_C: &str = "cccccccccccccccccccccccccccccccc";
const ALL: Columns = Columns { epoch: true, time: true };

struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: Event) {}
}

/// A series of the fixture: run, context, name, and its points (step, value, epoch).
type Series = (&'static str, Json, &'static str, Vec<(i64, Value, Option<i64>)>);

/// Floats with gaps, special values and a 2^40 step, several contexts, custom objects and log
/// lines, epochs present and absent; `special` adds NaN and infinities (not for JSON dumps).
fn series(special: bool) -> Vec<Series> {
    let mut loss: Vec<(i64, Value, Option<i64>)> =
        (0..2_500).map(|s| (s, Value::Float(1.0 / (s as f64 + 1.0)), (s % 3 != 0).then_some(s / 100))).collect();
    loss.push((1 << 40, Value::Float(-2.5), Some(7)));
    let mut acc: Vec<(i64, Value, Option<i64>)> =
        (0..700).map(|s| (s * 7 + s % 3, Value::Float(s as f64), None)).collect();
    if special {
        acc[1].1 = Value::Float(f64::NAN);
        acc[2].1 = Value::Float(f64::INFINITY);
        acc[3].1 = Value::Float(f64::NEG_INFINITY);
    }
    let objects = (0..60)
        .map(|s| {
            let obj = Value::Map(vec![
                (Value::from("caption"), Value::from(format!("img {s}"))),
                (Value::from("w"), Value::Int(s.into())),
            ]);
            (s, obj, Some(0))
        })
        .collect();
    let logs = (0..300).map(|s| (s, Value::from(format!("line {s}")), None)).collect();
    vec![
        (RUN_A, json!({}), "loss", loss),
        (RUN_A, json!({"subset": "val"}), "acc", acc),
        (RUN_B, json!({"subset": "train"}), "images", objects),
        (RUN_B, json!({}), "logs", logs),
    ]
}

/// Writes the runs (RUN_C without any series) and their series, 500 points per transaction.
async fn write_fixture(db: &Database, layout: &Layout, special: bool) {
    for run in [RUN_A, RUN_B, RUN_C] {
        db.run(&RetryOptions::default(), |tx| async move { layout.runs.create_run(&tx, run, common::NOW, None).await })
            .await
            .unwrap();
    }
    for (run, ctx, name, points) in series(special) {
        let ctx_id = context_to_id(&ctx);
        for part in points.chunks(500) {
            let vals: Vec<Vec<u8>> = part.iter().map(|p| value::encode(&p.1).unwrap()).collect();
            let (ctx, vals) = (&ctx, &vals);
            db.run(&RetryOptions::default(), |tx| async move {
                layout.runs.runs.set_context(&tx, run, ctx_id, &Value::from(ctx))?;
                let writes: Vec<SeqWrite<'_>> = part
                    .iter()
                    .zip(vals)
                    .map(|(p, v)| SeqWrite { step: p.0, val: v, epoch: p.2, time: common::NOW + p.0 as f64 })
                    .collect();
                layout.seqs.write(&tx, SeqId { run, ctx_id, name }, &writes).await?;
                let last = part[part.len() - 1].1.clone();
                let trace =
                    TraceInfo { ctx_id, name, dtype: "float", last: Some(&last), last_step: part[part.len() - 1].0 };
                layout.runs.record_trace(&tx, run, &trace)?;
                Ok::<_, LayoutError>(())
            })
            .await
            .unwrap();
        }
    }
}

/// A key-per-step store with the fixture, as the reference writes it.
async fn reference_store(db: &Database, special: bool) -> Layout {
    let layout = Layout::open_settled(db, KeyPerStep).await.unwrap();
    write_fixture(db, &layout, special).await;
    layout
}

/// Every point of every fixture series, every column, as `layout` reads them.
async fn all_points(db: &Database, layout: &Layout) -> BTreeMap<String, Vec<SeqPoint>> {
    let tx = db.create_trx().unwrap();
    let mut out = BTreeMap::new();
    for (run, ctx, name, _) in series(false) {
        let id = SeqId { run, ctx_id: context_to_id(&ctx), name };
        out.insert(format!("{run}/{name}"), layout.seqs.read(&tx, id, None, None, ALL, true).await.unwrap());
    }
    out
}

/// Every key and value of the reference's three directories, raw.
async fn reference_pairs(db: &Database, layout: &Layout) -> Vec<(Vec<u8>, Vec<u8>)> {
    let tx = db.create_trx().unwrap();
    let mut out = Vec::new();
    for prefix in [&layout.dirs.runs, &layout.dirs.indexes, &layout.dirs.system] {
        let kvs = tx.get_range(&RangeOption::new(prefix.clone(), strinc(prefix)), true).await.unwrap();
        out.extend(kvs.into_iter().map(|kv| (kv.key, kv.value)));
    }
    out
}

/// How many ⟨runs⟩ keys are sequence keys of the key-per-step layout and of the chunked one.
async fn layout_keys(db: &Database, layout: &Layout) -> (usize, usize) {
    let tx = db.create_trx().unwrap();
    let prefix = &layout.dirs.runs;
    let kvs = tx.get_range(&RangeOption::new(prefix.clone(), strinc(prefix)), true).await.unwrap();
    let tag = |key: &[u8]| match tuple::unpack(&key[prefix.len()..]).unwrap().get(1) {
        Some(Elem::Str(t)) => t.clone(),
        _ => String::new(),
    };
    (kvs.iter().filter(|kv| tag(&kv.key) == "seqs").count(), kvs.iter().filter(|kv| tag(&kv.key) == "chunks").count())
}

async fn state(db: &Database, layout: &Layout) -> VersionState {
    version::recorded(&db.create_trx().unwrap(), &layout.dirs).await.unwrap()
}

fn settings(batch_size: usize, max_txn_bytes: usize) -> Settings {
    Settings { batch_size, max_txn_bytes, lock_ttl: Duration::from_secs(60), retry: RetryOptions::default() }
}

/// Runs the migration in this process.
async fn migrate(
    db: &Database,
    layout: &Layout,
    to: SequenceLayoutKind,
    max_batches: Option<u64>,
    settings: &Settings,
) -> Result<Outcome, MaintenanceError> {
    let blobs_dir = tempfile::tempdir().unwrap();
    let blobs = LocalDirStore::new(blobs_dir.path());
    let request = JobRequest { job: Job::MigrateSequences { to, dry_run: false }, max_batches, lock_ttl_seconds: None };
    maintenance::run(db, layout, &blobs, settings, &request, &Quiet, &AtomicBool::new(false)).await
}

fn fjall(dir: &Path) -> Database {
    Database::open_embedded(dir, EmbeddedEngine::Fjall, Limits::FDB).unwrap()
}

#[tokio::test]
async fn migrating_to_chunked_and_back_keeps_every_point_and_ends_byte_identical_to_the_reference_store() {
    for backend in ["memory", "fjall"] {
        let dir = tempfile::tempdir().unwrap();
        let db = if backend == "memory" { Database::memory() } else { fjall(dir.path()) };
        let layout = reference_store(&db, true).await;
        let reference = reference_pairs(&db, &layout).await;
        let before = all_points(&db, &layout).await;
        // Small transactions: long series move over several, in both directions.
        let small = settings(2, 20_000);

        let out = migrate(&db, &layout, Chunked, None, &small).await.unwrap();
        assert!(matches!(&out, Outcome::Done(s) if s.contains("4 series")), "{backend}: {out:?}");
        assert_eq!(state(&db, &layout).await, VersionState::Settled(Chunked), "{backend}");
        let (kps, chunks) = layout_keys(&db, &layout).await;
        assert_eq!(kps, 0, "{backend}: no key-per-step key is left");
        assert!(chunks > 4, "{backend}: {chunks} chunks");
        assert_eq!(all_points(&db, &layout).await, before, "{backend}: the same points in the chunked layout");
        assert_eq!(Layout::open(&db).await.unwrap().seqs.kind(), Chunked);

        let out = migrate(&db, &layout, KeyPerStep, None, &small).await.unwrap();
        assert!(matches!(&out, Outcome::Done(s) if s.contains("4 series")), "{backend}: {out:?}");
        assert_eq!(state(&db, &layout).await, VersionState::Settled(KeyPerStep));
        assert!(
            reference_pairs(&db, &layout).await == reference,
            "{backend}: back in key_per_step, the store is the reference's byte for byte (no version key)"
        );
        let again = migrate(&db, &layout, KeyPerStep, None, &small).await.unwrap();
        assert!(matches!(&again, Outcome::Done(s) if s.contains("already key_per_step")), "{again:?}");
    }
}

/// The REST answers that read the fixture's series.
async fn api_answers(db: &Database, layout: &Layout) -> Vec<(u16, Vec<u8>)> {
    let r = "/api/v1/rest";
    let q = common::enc("metric.name != \"\"");
    let batch = json!([{"name": "loss", "context": {}}, {"name": "acc", "context": {"subset": "val"}}]);
    let mut requests = vec![
        ("POST", format!("{r}/runs/{RUN_A}/metric/get-batch/"), Some(batch.clone())),
        ("POST", format!("{r}/runs/{RUN_A}/metric/get-batch/?record_density=50"), Some(batch)),
        ("GET", format!("{r}/runs/{RUN_B}/logs/?record_range=10:250"), None),
        ("GET", format!("{r}/runs/{RUN_A}/info/"), None),
    ];
    for p in [3, 500] {
        requests.push(("GET", format!("{r}/runs/search/metric?q={q}&p={p}&report_progress=false"), None));
    }
    let mut out = Vec::new();
    for (method, uri, body) in requests {
        let req = Request::builder().method(method).uri(&uri).header("content-type", "application/json");
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let resp = matyan::http::service(common::app_state(db, layout)).oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec();
        assert_eq!(status, 200, "{uri}: {}", String::from_utf8_lossy(&bytes));
        out.push((status, bytes));
    }
    out
}

#[tokio::test]
async fn a_half_migrated_store_reads_the_same_points_and_api_answers_and_the_migration_resumes_to_the_end() {
    let db = Database::memory();
    let layout = reference_store(&db, true).await;
    let before = all_points(&db, &layout).await;
    let answers = api_answers(&db, &layout).await;
    let tiny = settings(1, 3_000);

    let out = migrate(&db, &layout, Chunked, Some(4), &tiny).await.unwrap();
    assert!(matches!(out, Outcome::Stopped(_)), "{out:?}");
    assert_eq!(state(&db, &layout).await, VersionState::Migrating { from: KeyPerStep, to: Chunked });
    let (kps, chunks) = layout_keys(&db, &layout).await;
    assert!(kps > 0 && chunks > 0, "half moved: {kps} key-per-step keys, {chunks} chunks");
    // `layout` was opened before the migration started: it follows the version key.
    assert_eq!(all_points(&db, &layout).await, before, "dual read: both layouts merged");
    assert!(api_answers(&db, &layout).await == answers, "the REST answers are the same bytes mid-migration");
    let reverse = migrate(&db, &layout, KeyPerStep, None, &tiny).await.unwrap_err();
    assert!(reverse.to_string().contains("in progress"), "{reverse}");

    // A process of an older build, which read the layout once at its start, writes key-per-step
    // keys to a run the migration has passed: the final sweep moves them.
    let stale = SequenceLayout::new(KeyPerStep, &layout.dirs.runs);
    let stray = SeqId { run: "00000000000000000000000000000000", ctx_id: 0, name: "stray" };
    let val = value::encode(&Value::Float(0.5)).unwrap();
    let points: Vec<SeqWrite<'_>> = (0..10).map(|s| SeqWrite { step: s, val: &val, epoch: None, time: 1.0 }).collect();
    let tx = db.create_trx().unwrap();
    stale.write(&tx, stray, &points).await.unwrap();
    tx.commit().await.unwrap();

    let out = migrate(&db, &layout, Chunked, None, &tiny).await.unwrap();
    assert!(matches!(&out, Outcome::Done(s) if s.contains("5 series")), "{out:?}");
    assert_eq!(layout_keys(&db, &layout).await.0, 0, "no key-per-step key is left, the stray series' included");
    assert_eq!(all_points(&db, &layout).await, before);
    let tx = db.create_trx().unwrap();
    assert_eq!(layout.seqs.read(&tx, stray, None, None, ALL, true).await.unwrap().len(), 10);
    assert!(api_answers(&db, &layout).await == answers);
}

/// A `log_metric` record of `run` as the gateway produces it.
fn record(run: &str, m: Json) -> matyan::ingest::message::IngestMessage {
    let mut r = json!({"run_id": run, "timestamp": "2025-01-01T00:00:00Z", "payload": {}});
    for (k, v) in m.as_object().unwrap() {
        r[k] = v.clone();
    }
    decode(&serde_json::to_vec(&r).unwrap()).unwrap()
}

fn metric(step: i64, value: f64) -> Json {
    json!({"type": "log_metric", "payload": {"name": "loss", "value": value, "step": step, "epoch": null,
        "context": {}, "dtype": "float", "client_datetime": "2025-01-01T00:00:00+00:00"}})
}

/// Applies `msgs` of `run` in one transaction through the ingestion's applier, at the next offsets.
async fn apply(db: &Database, applier: &Applier, offset: &mut i64, run: &str, msgs: Vec<Json>) {
    let entries: Vec<Entry> = msgs
        .into_iter()
        .map(|m| {
            *offset += 1;
            Entry { partition: 0, offset: *offset, message: record(run, m) }
        })
        .collect();
    let entries = &entries;
    db.run(&RetryOptions::default(), |tx| async move {
        applier.apply(&tx, run, entries, common::NOW, &mut |r| position_uuid(r)).await
    })
    .await
    .unwrap();
}

/// The `loss` series of `run` as (step, value).
async fn loss(db: &Database, layout: &Layout, run: &str) -> Vec<(i64, f64)> {
    let id = SeqId { run, ctx_id: context_to_id(&json!({})), name: "loss" };
    let points = layout.seqs.read(&db.create_trx().unwrap(), id, None, None, ALL, true).await.unwrap();
    points.iter().map(|p| (p.step, value::decode(&p.val).unwrap().as_f64().unwrap())).collect()
}

/// One ingestion batch during the migration: rewrites 25 stored steps and appends 25 new ones.
fn ingest_batch(i: i64, bump: f64) -> Vec<Json> {
    let rewrite = (i * 25..(i + 1) * 25).map(|s| metric(s, s as f64 + bump));
    let append = (600 + i * 25..600 + (i + 1) * 25).map(|s| metric(s, s as f64 + bump));
    rewrite.chain(append).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_during_a_migration_loses_and_duplicates_nothing_and_its_rewrites_win() {
    let db = Database::memory();
    let layout = Layout::open_settled(&db, KeyPerStep).await.unwrap();
    let applier = Applier::new(layout.clone());
    let mut offset = 0;
    for run in [RUN_A, RUN_B] {
        apply(&db, &applier, &mut offset, run, vec![json!({"type": "create_run", "payload": {"force_resume": false}})])
            .await;
        for part in 0..6 {
            let msgs = (part * 100..(part + 1) * 100).map(|s| metric(s, s as f64)).collect();
            apply(&db, &applier, &mut offset, run, msgs).await;
        }
    }
    let tiny = settings(1, 2_000);

    // Interleaved: one migration batch, then one ingestion batch per run, until the end.
    let mut i = 0;
    loop {
        let out = migrate(&db, &layout, Chunked, Some(1), &tiny).await.unwrap();
        if i < 24 {
            for run in [RUN_A, RUN_B] {
                apply(&db, &applier, &mut offset, run, ingest_batch(i, 0.5)).await;
            }
            i += 1;
        }
        if matches!(out, Outcome::Done(_)) && i == 24 {
            break;
        }
    }
    assert_eq!(state(&db, &layout).await, VersionState::Settled(Chunked));
    let want: Vec<(i64, f64)> = (0..1_200).map(|s| (s, s as f64 + 0.5)).collect();
    for run in [RUN_A, RUN_B] {
        assert_eq!(loss(&db, &layout, run).await, want, "{run}");
    }

    // Concurrent: the migration back and the ingestion run at the same time.
    let migration = {
        let (db, layout) = (db.clone(), layout.clone());
        tokio::spawn(async move { migrate(&db, &layout, KeyPerStep, None, &settings(1, 2_000)).await })
    };
    for i in 0..24 {
        for run in [RUN_A, RUN_B] {
            apply(&db, &applier, &mut offset, run, ingest_batch(i, 0.25)).await;
        }
        tokio::task::yield_now().await;
    }
    assert!(matches!(migration.await.unwrap().unwrap(), Outcome::Done(_)));
    assert_eq!(state(&db, &layout).await, VersionState::Settled(KeyPerStep));
    assert_eq!(layout_keys(&db, &layout).await.1, 0, "no chunk left");
    let want: Vec<(i64, f64)> = (0..1_200).map(|s| (s, s as f64 + 0.25)).collect();
    for run in [RUN_A, RUN_B] {
        assert_eq!(loss(&db, &layout, run).await, want, "{run}");
    }
}

// ---------------------------------------------------------------------------------------------
// The command line, on an embedded store.

fn matyan(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .env_remove("CLEANUP_JOB_LOCK_TTL_SECONDS")
        .output()
        .expect("run matyan")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn dump(dir: &Path, which: &str) -> Vec<Json> {
    ok(&matyan(dir, &["kv", "dump", "--dir", which])).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every series of `matyan kv dump` as step → {val, epoch, time}, from key-per-step columns and
/// chunks alike (a half-migrated store has both).
fn dumped_series(dir: &Path) -> BTreeMap<String, BTreeMap<i64, Json>> {
    let mut out: BTreeMap<String, BTreeMap<i64, Json>> = BTreeMap::new();
    for line in dump(dir, "runs") {
        let key = line["key"].as_array().unwrap();
        let series = || format!("{}/{}/{}", key[0], key[2], key[3]);
        match key[1].as_str() {
            Some("seqs") => {
                let col = key[4].as_str().unwrap();
                if col == "step" {
                    continue;
                }
                let point = out
                    .entry(series())
                    .or_default()
                    .entry(key[5].as_i64().unwrap())
                    .or_insert_with(|| json!({"val": null, "epoch": null, "time": null}));
                point[col] = line["value"].clone();
            }
            Some("chunks") => {
                for p in line["value"]["chunk"].as_array().unwrap() {
                    let point = json!({"val": p["val"], "epoch": p["epoch"], "time": p["time"]});
                    let prev = out.entry(series()).or_default().insert(p["step"].as_i64().unwrap(), point);
                    assert!(prev.is_none(), "a step in both layouts");
                }
            }
            _ => {}
        }
    }
    out
}

fn tiny_config(dir: &Path) -> String {
    let path = dir.join("tiny-batches.toml");
    std::fs::write(&path, "[maintenance]\nbatch_size = 1\nmax_txn_bytes = 4000\n").unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_migration_stopped_and_killed_midway_resumes_and_kv_dump_reads_back_every_series_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = fjall(dir.path());
        reference_store(&db, false).await;
    }
    let reference: Vec<Json> = ["runs", "indexes", "system"].iter().flat_map(|d| dump(dir.path(), d)).collect();
    let before = dumped_series(dir.path());
    assert_eq!(before.len(), 4);
    let config = tiny_config(dir.path());
    let migrate = ["migrate", "sequences", "--to", "chunked", "--config", &config];

    let stopped = matyan(dir.path(), &[&migrate[..], &["--max-batches", "3"]].concat());
    assert_eq!(stopped.status.code(), Some(4), "{}", String::from_utf8_lossy(&stopped.stderr));
    let system = dump(dir.path(), "system");
    assert!(system.iter().any(|l| l["key"] == json!(["matyan_rs_sequences"]) && l["value"]["layout"] == "migrating"));
    assert_eq!(dumped_series(dir.path()), before, "half moved, every series reads the same");

    // A kill -9 mid-batch; its lock expires after a second.
    let mut killed = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(migrate)
        .args(["--lock-ttl-seconds", "1", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wherever the kill lands, what was committed reads the same; it need not land midway.
    std::thread::sleep(Duration::from_millis(400));
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_eq!(dumped_series(dir.path()), before, "after the kill");

    // Refused (status 3) until the killed job's lock expires, then it resumes to the end.
    let resumed = common::wait::blocking_until_ok("the killed job's lock expires", Duration::from_secs(30), || {
        let out = matyan(dir.path(), &migrate);
        if out.status.code() == Some(3) { Err("still locked") } else { Ok(out) }
    });
    ok(&resumed);
    assert_eq!(dumped_series(dir.path()), before, "after the resumed migration");
    assert!(!dump(dir.path(), "runs").iter().any(|l| l["key"][1] == "seqs"), "every series is chunked");
    assert!(!dump(dir.path(), "ours").iter().any(|l| l["key"][0] == "job_progress"), "progress cleared");

    ok(&matyan(dir.path(), &["migrate", "sequences", "--to", "key_per_step"]));
    let back: Vec<Json> = ["runs", "indexes", "system"].iter().flat_map(|d| dump(dir.path(), d)).collect();
    assert!(back == reference, "back to the reference's keys and values");
}

#[tokio::test]
async fn a_dry_run_counts_series_and_points_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = fjall(dir.path());
        reference_store(&db, false).await;
    }
    let before: Vec<Json> = ["runs", "indexes", "system", "ours"].iter().flat_map(|d| dump(dir.path(), d)).collect();
    let out = ok(&matyan(dir.path(), &["migrate", "sequences", "--to", "chunked", "--dry-run"]));
    let points: usize = series(false).iter().map(|s| s.3.len()).sum();
    assert!(
        out.contains(&format!("[dry-run] would move 4 series ({points} points) from key_per_step to chunked")),
        "{out}"
    );
    let after: Vec<Json> = ["runs", "indexes", "system", "ours"].iter().flat_map(|d| dump(dir.path(), d)).collect();
    assert!(after == before, "a dry run writes nothing");
}

#[tokio::test]
async fn a_migration_is_refused_with_exit_status_3_while_another_job_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = fjall(dir.path());
        let layout = reference_store(&db, false).await;
        let (ttl, retry, now) = (Duration::from_secs(600), RetryOptions::default(), matyan::clock::now_secs());
        JobLock::acquire(&db, &layout.dirs.ours, "reindex", "pid 42 on db-host", ttl, now, &retry).await.unwrap();
    }
    let before = dump(dir.path(), "runs");
    let refused = matyan(dir.path(), &["migrate", "sequences", "--to", "chunked"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("held by pid 42 on db-host (job reindex)"), "{stderr}");
    assert!(dump(dir.path(), "runs") == before, "nothing moved");
    assert!(!dump(dir.path(), "system").iter().any(|l| l["key"] == json!(["matyan_rs_sequences"])));
}

#[test]
fn migrate_sequences_help_names_both_layouts_and_the_exit_statuses() {
    let out = Command::new(env!("CARGO_BIN_EXE_matyan")).args(["migrate", "sequences", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--to <LAYOUT>", "chunked", "key_per_step", "--dry-run", "3 another maintenance job holds"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_matyan")).args(["migrate", "sequences", "--to", "columnar"]).output();
    assert_eq!(bad.unwrap().status.code(), Some(2));
}

#[tokio::test]
async fn a_migration_runs_inside_the_live_serve_that_holds_the_store_and_its_api_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = fjall(dir.path());
        reference_store(&db, false).await;
    }
    let before = dumped_series(dir.path());
    let mut server = common::server::start(dir.path(), &[]);
    let addr = common::server::wait_for_addr(&mut server, dir.path());
    let logs = format!("/api/v1/rest/runs/{RUN_B}/logs/");
    let body = get_bytes(addr, &logs);
    assert!(contains(&body, b"200 OK") && contains(&body, b"line 299"), "{}", String::from_utf8_lossy(&body));

    let out = matyan(dir.path(), &["migrate", "sequences", "--to", "chunked"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("the job runs there"), "{stderr}");
    assert!(ok(&out).contains("migrated the sequences from key_per_step to chunked: 4 series"));
    let after = get_bytes(addr, &logs);
    assert!(contains(&after, b"200 OK") && contains(&after, b"line 299"), "the server reads the chunked layout");
    assert!(common::server::terminate(server).success());
    assert_eq!(dumped_series(dir.path()), before);
    assert!(!dump(dir.path(), "runs").iter().any(|l| l["key"][1] == "seqs"));
}

/// One HTTP/1.1 GET, the whole response as bytes (the log stream is not text).
fn get_bytes(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    response
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
