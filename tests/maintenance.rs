//! The maintenance commands as an operator (or a CronJob) runs them, on real embedded stores:
//! `reindex`, `finish-stale`, `cleanup-tombstones`, `cleanup-orphan-blobs`, `backup`, `restore`;
//! their dry runs, their resumption after a stop, the storage job lock, and a job run through a
//! live `matyan serve`.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::server::{start, terminate, wait_for_addr};
use matyan::blobs::{BlobStore, LocalDirStore};
use matyan::storage::job_lock::JobLock;
use matyan::storage::kv::{Database, EmbeddedEngine, KvError, Limits, RetryOptions};
use matyan::storage::layout::{EntityKind, Layout, LayoutError, SeqId, SeqWrite, TraceInfo};
use matyan::storage::tuple::Elem;
use matyan::storage::value::{self, Value};
use serde_json::{Value as Json, json};

const NOW: f64 = common::NOW;
const RUN_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const RUN_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const RUN_NEW: &str = "cccccccccccccccccccccccccccccccc";
const GHOST: &str = "dddddddddddddddddddddddddddddddd";
const DELETED_1: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeee1";
const DELETED_2: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeee2";
const EXPERIMENT: &str = "00000000-0000-4000-8000-000000000001";
const TAG: &str = "00000000-0000-4000-8000-000000000002";

fn open(dir: &Path) -> Database {
    Database::open_embedded(dir, EmbeddedEngine::Fjall, Limits::FDB).unwrap()
}

/// A run as ingestion writes it: meta and tier-1 entries, hparams, one metric with a trace, and
/// optionally the experiment and the tag.
async fn write_run(layout: &Layout, db: &Database, run: &str, created: f64, linked: bool) {
    db.run(&RetryOptions::default(), |tx| async move {
        layout.runs.create_run(&tx, run, created, None).await?;
        let hparams = Value::from(&json!({"lr": 0.1, "batch": 32, "layers": [1, 2]}));
        layout.runs.set_attrs(&tx, run, &["hparams".to_string()], &hparams, created).await?;
        let id = SeqId { run, ctx_id: 0, name: "loss" };
        layout.runs.runs.set_context(&tx, run, 0, &Value::Map(vec![]))?;
        let val = value::encode(&Value::Float(0.5)).unwrap();
        layout.seqs.write(&tx, id, &[SeqWrite { step: 0, val: &val, epoch: None, time: created }]).await?;
        let last = Value::Float(0.5);
        let trace = TraceInfo { ctx_id: 0, name: "loss", dtype: "float", last: Some(&last), last_step: 0 };
        layout.runs.record_trace(&tx, run, &trace)?;
        if linked {
            let sys = &layout.system;
            if sys.get(&tx, EntityKind::Experiment, EXPERIMENT).await?.is_none() {
                sys.create_named(&tx, EntityKind::Experiment, EXPERIMENT, "exp1", NOW, &[]).await?;
                sys.create_named(&tx, EntityKind::Tag, TAG, "tag1", NOW, &[]).await?;
            }
            layout.runs.runs.set_meta(&tx, run, "experiment_id", &Value::from(EXPERIMENT))?;
            sys.link_experiment(&tx, layout.indexes(), run, Some(EXPERIMENT)).await?;
            layout.runs.runs.set_tag(&tx, run, TAG)?;
            sys.link_tag(&tx, layout.indexes(), run, TAG).await?;
        }
        Ok::<_, LayoutError>(())
    })
    .await
    .unwrap();
}

/// The standard store: two old linked runs, one recent run, a ghost (pending deletion), and two
/// runs deleted by ingestion (tombstones at NOW).
async fn fixture(dir: &Path, recent: f64) {
    let db = open(dir);
    let layout = Layout::open(&db).await.unwrap();
    write_run(&layout, &db, RUN_A, NOW, true).await;
    write_run(&layout, &db, RUN_B, NOW + 1.0, true).await;
    write_run(&layout, &db, RUN_NEW, recent, false).await;
    write_run(&layout, &db, GHOST, NOW + 2.0, false).await;
    write_run(&layout, &db, DELETED_1, NOW, true).await;
    write_run(&layout, &db, DELETED_2, NOW, false).await;
    let layout = &layout;
    db.run(&RetryOptions::default(), |tx| async move {
        layout.runs.mark_pending_deletion(&tx, GHOST)?;
        layout.delete_run(&tx, DELETED_1, NOW).await?;
        layout.delete_run(&tx, DELETED_2, NOW).await?;
        Ok::<_, LayoutError>(())
    })
    .await
    .unwrap();
}

fn matyan(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .env_remove("CLEANUP_JOB_LOCK_TTL_SECONDS")
        .env_remove("TOMBSTONE_CLEANUP_OLDER_THAN_HOURS")
        .output()
        .expect("run matyan")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn ok(out: &Output) -> String {
    assert_eq!(status(out), 0, "stdout: {}\nstderr: {}", stdout(out), String::from_utf8_lossy(&out.stderr));
    stdout(out)
}

/// `matyan kv dump --dir <dir>` as JSON lines.
fn dump(dir: &Path, which: &str) -> Vec<Json> {
    let out = matyan(dir, &["kv", "dump", "--dir", which]);
    ok(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The three reference directories.
fn dump_all(dir: &Path) -> Vec<Json> {
    ["runs", "indexes", "system"].iter().flat_map(|d| dump(dir, d)).collect()
}

fn tombstones(dir: &Path) -> Vec<String> {
    dump(dir, "indexes")
        .into_iter()
        .filter(|l| l["key"][0] == "_deleted")
        .map(|l| l["key"][1].as_str().unwrap().to_owned())
        .collect()
}

fn mentions(line: &Json, run: &str) -> bool {
    line["key"].as_array().unwrap().iter().any(|e| e == run)
}

/// A config file with small batches, so that a few runs take several batches.
fn small_batches(dir: &Path, batch_size: u32) -> std::path::PathBuf {
    let path = dir.join("small-batches.toml");
    std::fs::write(&path, format!("[maintenance]\nbatch_size = {batch_size}\n")).unwrap();
    path
}

#[tokio::test]
async fn reindex_rebuilds_lost_and_stale_index_entries_and_purges_ghost_runs_without_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), NOW).await;
    let original = dump(dir.path(), "indexes");
    let expected: Vec<Json> = original.iter().filter(|l| !mentions(l, GHOST)).cloned().collect();
    assert!(original.len() > expected.len(), "the ghost has index entries to lose");
    {
        let db = open(dir.path());
        let layout = Layout::open(&db).await.unwrap();
        let idx = layout.indexes();
        db.run(&RetryOptions::default(), |tx| async move {
            idx.remove(&tx, RUN_A, &[Elem::from("active"), Elem::Bool(true), Elem::from(RUN_A)]);
            idx.remove(&tx, RUN_B, &[Elem::from("experiment"), Elem::from("exp1"), Elem::from(RUN_B)]);
            idx.add(&tx, RUN_B, &[Elem::from("trace"), Elem::from("bogus"), Elem::from(RUN_B)]);
            Ok::<_, KvError>(())
        })
        .await
        .unwrap();
    }
    let damaged = dump(dir.path(), "indexes");

    let dry = ok(&matyan(dir.path(), &["reindex", "--dry-run"]));
    assert!(dry.contains(&format!("[dry-run] Would purge ghost run {GHOST} (pending deletion)")), "{dry}");
    assert_eq!(dump(dir.path(), "indexes"), damaged, "a dry run writes nothing");

    let out = ok(&matyan(dir.path(), &["reindex"]));
    assert!(out.contains("purged 1 ghosts"), "{out}");
    assert_eq!(dump(dir.path(), "indexes"), expected, "every entry rebuilt, the stale one gone");
    assert!(!dump(dir.path(), "runs").iter().any(|l| mentions(l, GHOST)), "the ghost's data is purged");
    assert!(!dump(dir.path(), "system").iter().any(|l| mentions(l, GHOST)), "and its associations");
    assert_eq!(tombstones(dir.path()), [DELETED_1, DELETED_2], "no tombstone for the ghost; the others kept");
    let count = dump(dir.path(), "system")
        .into_iter()
        .find(|l| l["key"] == json!(["experiments", EXPERIMENT, "run_count"]))
        .unwrap();
    assert_eq!(count["value"], 2, "run_count rewritten from the runs that link to it");
}

#[tokio::test]
async fn finish_stale_finishes_only_runs_created_before_the_timeout_and_its_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), matyan::clock::now_secs()).await;
    let before = dump_all(dir.path());

    let dry = ok(&matyan(dir.path(), &["finish-stale", "--timeout-hours", "24", "--dry-run"]));
    for run in [RUN_A, RUN_B, GHOST] {
        assert!(dry.contains(&format!("[dry-run] Would finish stale run: {run}")), "{dry}");
    }
    assert!(!dry.contains(RUN_NEW), "{dry}");
    assert_eq!(dump_all(dir.path()), before, "a dry run writes nothing");

    let out = ok(&matyan(dir.path(), &["finish-stale", "--timeout-hours", "24"]));
    assert!(out.contains("finished 3 runs"), "{out}");
    let indexes = dump(dir.path(), "indexes");
    let active: Vec<&Json> = indexes.iter().filter(|l| l["key"][0] == "active").collect();
    assert_eq!(active.len(), 4, "{active:?}");
    for run in [RUN_A, RUN_B, GHOST] {
        assert!(active.iter().any(|l| l["key"] == json!(["active", false, run])), "{run} finished");
    }
    assert!(active.iter().any(|l| l["key"] == json!(["active", true, RUN_NEW])), "the recent run stays active");
    let runs = dump(dir.path(), "runs");
    let finalized = runs.iter().find(|l| l["key"] == json!([RUN_A, "meta", "finalized_at", "__leaf__"])).unwrap();
    assert!(finalized["value"].as_f64().unwrap() > NOW, "finalized_at is the job's now");
}

#[test]
fn cleanup_tombstones_older_than_zero_hours_clears_every_tombstone_and_its_dry_run_clears_none() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(fixture(dir.path(), NOW));

    let dry = ok(&matyan(dir.path(), &["cleanup-tombstones", "--older-than-hours", "0", "--dry-run"]));
    assert!(dry.contains(&format!("[dry-run] Would clear tombstone: {DELETED_1} (deleted at 1735689600)")), "{dry}");
    assert_eq!(tombstones(dir.path()), [DELETED_1, DELETED_2]);

    let kept_by_age = ok(&matyan(dir.path(), &["cleanup-tombstones", "--older-than-hours", "1000000"]));
    assert!(kept_by_age.contains("cleared 0 tombstones"), "{kept_by_age}");
    assert_eq!(tombstones(dir.path()), [DELETED_1, DELETED_2]);

    let out = ok(&matyan(dir.path(), &["cleanup-tombstones", "--older-than-hours", "0"]));
    assert!(out.contains("cleared 2 tombstones"), "{out}");
    assert!(tombstones(dir.path()).is_empty());
}

#[tokio::test]
async fn cleanup_orphan_blobs_removes_the_blobs_of_tombstoned_runs_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), NOW).await;
    let store = LocalDirStore::new(dir.path().join("blobs"));
    let deleted: Vec<String> = (0..1_205).map(|i| format!("{DELETED_1}/seq/images/{i}.png")).collect();
    for key in &deleted {
        store.put(key, b"png".to_vec(), None).await.unwrap();
    }
    store.put(&format!("{DELETED_2}/model.bin"), b"m".to_vec(), None).await.unwrap();
    let kept = [format!("{RUN_A}/model.bin"), format!("{RUN_A}/seq/images/0.png"), "unknownrun/file.txt".to_owned()];
    for key in &kept {
        store.put(key, b"keep".to_vec(), None).await.unwrap();
    }

    let dry = ok(&matyan(dir.path(), &["cleanup-orphan-blobs", "--dry-run"]));
    assert!(
        dry.contains(&format!("[dry-run] Would delete blob prefix: {DELETED_1}/ (deleted at 1735689600)")),
        "{dry}"
    );
    assert!(store.get(&deleted[0]).await.is_ok(), "a dry run deletes nothing");

    let limited = ok(&matyan(dir.path(), &["cleanup-orphan-blobs", "--limit", "1"]));
    assert!(limited.contains("deleted 1205 objects of 1 tombstoned runs"), "{limited}");
    assert!(store.get(&format!("{DELETED_2}/model.bin")).await.is_ok(), "--limit 1 handles the first tombstone only");

    let out = ok(&matyan(dir.path(), &["cleanup-orphan-blobs"]));
    assert!(out.contains("of 2 tombstoned runs"), "{out}");
    for key in deleted.iter().take(3).chain([&format!("{DELETED_2}/model.bin")]) {
        assert!(store.get(key).await.is_err(), "{key} is deleted");
    }
    assert!(store.list(&format!("{DELETED_1}/"), None, 1000).await.unwrap().objects.is_empty());
    for key in &kept {
        assert!(store.get(key).await.is_ok(), "{key} is kept");
    }
    assert_eq!(tombstones(dir.path()), [DELETED_1, DELETED_2], "tombstones are never removed by this job");
}

#[tokio::test]
async fn a_reindex_stopped_after_one_batch_resumes_and_ends_in_the_state_of_an_uninterrupted_one() {
    let stopped = tempfile::tempdir().unwrap();
    let whole = tempfile::tempdir().unwrap();
    fixture(stopped.path(), NOW).await;
    fixture(whole.path(), NOW).await;
    let config = small_batches(stopped.path(), 1);
    let config = config.to_str().unwrap();

    let first = matyan(stopped.path(), &["reindex", "--config", config, "--max-batches", "2"]);
    assert_eq!(status(&first), 4, "stopped before the end: {}", String::from_utf8_lossy(&first.stderr));
    assert!(stdout(&first).contains("run it again to resume"), "{}", stdout(&first));
    let ours = dump(stopped.path(), "ours");
    assert!(ours.iter().any(|l| l["key"] == json!(["job_progress", "reindex"])), "progress is saved");
    assert!(!ours.iter().any(|l| l["key"] == json!(["job_lock"])), "a stopped job releases its lock");

    let second = ok(&matyan(stopped.path(), &["reindex", "--config", config]));
    assert!(second.contains("purged 1 ghosts"), "{second}");
    ok(&matyan(whole.path(), &["reindex"]));
    assert_eq!(dump_all(stopped.path()), dump_all(whole.path()));
    assert!(!dump(stopped.path(), "ours").iter().any(|l| l["key"][0] == "job_progress"), "progress cleared");
}

#[test]
fn a_cleanup_stopped_after_one_batch_keeps_its_progress_and_the_next_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(fixture(dir.path(), NOW));
    let config = small_batches(dir.path(), 1);
    let config = config.to_str().unwrap();

    let first = matyan(
        dir.path(),
        &["cleanup-tombstones", "--older-than-hours", "0", "--config", config, "--max-batches", "1"],
    );
    assert_eq!(status(&first), 4, "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(tombstones(dir.path()), [DELETED_2], "the first batch is committed");

    let second = ok(&matyan(dir.path(), &["cleanup-tombstones", "--older-than-hours", "0", "--config", config]));
    assert!(second.contains("cleared 1 tombstones"), "{second}");
    assert!(tombstones(dir.path()).is_empty());
}

#[tokio::test]
async fn a_second_job_is_refused_with_exit_status_3_naming_the_holder_and_an_expired_lock_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), NOW).await;
    {
        let db = open(dir.path());
        let layout = Layout::open(&db).await.unwrap();
        let (ttl, retry, now) = (Duration::from_secs(600), RetryOptions::default(), matyan::clock::now_secs());
        JobLock::acquire(&db, &layout.dirs.ours, "migrate", "pid 42 on db-host", ttl, now, &retry).await.unwrap();
    }
    let refused = matyan(dir.path(), &["cleanup-tombstones", "--older-than-hours", "0"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(status(&refused), 3, "{stderr}");
    assert!(stderr.contains("held by pid 42 on db-host (job migrate)"), "{stderr}");
    assert_eq!(tombstones(dir.path()), [DELETED_1, DELETED_2], "nothing done");

    // A job that crashed an hour ago left its lock behind, expired since.
    let db = open(dir.path());
    let key = matyan::storage::layout::ours::Ours::new(&Layout::open(&db).await.unwrap().dirs.ours).job_lock();
    let stale = Value::Map(vec![
        (Value::from("job"), Value::from("reindex")),
        (Value::from("holder"), Value::from("pid 7 on gone-host")),
        (Value::from("token"), Value::from("0123")),
        (Value::from("expires_at"), Value::Float(matyan::clock::now_secs() - 3000.0)),
    ]);
    let stale = value::encode(&stale).unwrap();
    db.run(&RetryOptions::default(), |tx| {
        tx.set(&key, &stale);
        async { Ok::<_, KvError>(()) }
    })
    .await
    .unwrap();
    drop(db);
    ok(&matyan(dir.path(), &["cleanup-tombstones", "--older-than-hours", "0"]));
    assert!(tombstones(dir.path()).is_empty(), "a lock that expired is taken over");
}

/// Writes `⟨system⟩("job_lock", job) = mp(expiry float)` as the reference's `jobs/lock.py` does.
async fn write_reference_lock(dir: &Path, job: &str, expiry: f64) {
    let db = open(dir);
    let system = Layout::open(&db).await.unwrap().dirs.system;
    let key = matyan::storage::tuple::pack_with_prefix(&system, &[Elem::from("job_lock"), Elem::from(job)]);
    let expiry = [&[0xcb][..], &expiry.to_be_bytes()].concat();
    db.run(&RetryOptions::default(), |tx| {
        tx.set(&key, &expiry);
        async { Ok::<_, KvError>(()) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_reference_cronjob_holding_its_lock_refuses_our_job_of_that_name_with_exit_status_3() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), NOW).await;
    write_reference_lock(dir.path(), "cleanup_tombstones", matyan::clock::now_secs() + 600.0).await;
    let refused = matyan(dir.path(), &["cleanup-tombstones", "--older-than-hours", "0"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(status(&refused), 3, "{stderr}");
    assert!(stderr.contains("reference job (cleanup_tombstones"), "{stderr}");
    assert_eq!(tombstones(dir.path()), [DELETED_1, DELETED_2], "nothing done");
    // Another job is not the reference's to lock; and once the CronJob's lock expired, ours runs.
    ok(&matyan(dir.path(), &["cleanup-orphan-blobs", "--dry-run"]));
    write_reference_lock(dir.path(), "cleanup_tombstones", matyan::clock::now_secs() - 1.0).await;
    ok(&matyan(dir.path(), &["cleanup-tombstones", "--older-than-hours", "0"]));
    assert!(tombstones(dir.path()).is_empty());
}

#[tokio::test]
async fn backup_delete_restore_gives_back_the_same_keys_and_clears_the_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), NOW).await;
    let before = dump_all(dir.path());
    let archive = dir.path().join("a.backup");
    let archive_arg = archive.to_str().unwrap();

    let out = ok(&matyan(dir.path(), &["backup", "--run", RUN_A, "--out", archive_arg]));
    assert!(out.contains("backed up 1 runs"), "{out}");
    let text = std::fs::read_to_string(&archive).unwrap();
    let header: Json = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["format"], "matyan-run-backup");
    assert_eq!(header["runs"], json!([RUN_A]));

    {
        let db = open(dir.path());
        let layout = Layout::open(&db).await.unwrap();
        let layout = &layout;
        db.run(&RetryOptions::default(), |tx| async move { layout.delete_run(&tx, RUN_A, NOW + 5.0).await })
            .await
            .unwrap();
    }
    assert_ne!(dump_all(dir.path()), before);
    assert!(tombstones(dir.path()).contains(&RUN_A.to_owned()));

    let deleted = dump_all(dir.path());
    let dry = ok(&matyan(dir.path(), &["restore", archive_arg, "--dry-run"]));
    assert!(dry.contains(&format!("[dry-run] Would restore run {RUN_A}")), "{dry}");
    assert_eq!(dump_all(dir.path()), deleted, "a dry run writes nothing");

    let out = ok(&matyan(dir.path(), &["restore", archive_arg]));
    assert!(out.contains("restored 1 runs"), "{out}");
    assert_eq!(dump_all(dir.path()), before, "the run's keys, indexes, links and counts are back");

    let again = matyan(dir.path(), &["restore", archive_arg]);
    assert_eq!(status(&again), 1);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("pass --replace"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    ok(&matyan(dir.path(), &["restore", archive_arg, "--replace"]));
    assert_eq!(dump_all(dir.path()), before, "a replace gives the same keys");

    std::fs::write(&archive, text.lines().take(5).collect::<Vec<_>>().join("\n")).unwrap();
    let cut = matyan(dir.path(), &["restore", archive_arg, "--replace"]);
    assert_eq!(status(&cut), 1);
    assert!(String::from_utf8_lossy(&cut.stderr).contains("incomplete"), "{}", String::from_utf8_lossy(&cut.stderr));
}

#[tokio::test]
async fn maintenance_commands_run_through_a_live_serve_that_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), NOW).await;
    let mut server = start(dir.path(), &[]);
    wait_for_addr(&mut server, dir.path());

    let dry = ok(&matyan(dir.path(), &["cleanup-tombstones", "--older-than-hours", "0", "--dry-run"]));
    assert!(dry.contains(&format!("[dry-run] Would clear tombstone: {DELETED_2}")), "{dry}");
    let out = matyan(dir.path(), &["cleanup-tombstones", "--older-than-hours", "0"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the job runs there"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ok(&out).contains("cleared 2 tombstones"));
    assert!(tombstones(dir.path()).is_empty(), "seen through the same server");

    let archive = dir.path().join("via-server.backup");
    ok(&matyan(dir.path(), &["backup", "--run", RUN_B, "--out", archive.to_str().unwrap()]));
    assert!(std::fs::read_to_string(&archive).unwrap().contains(RUN_B));
    assert!(terminate(server).success());
}

#[test]
fn every_maintenance_command_documents_its_exit_statuses_in_help() {
    for command in ["reindex", "finish-stale", "cleanup-tombstones", "cleanup-orphan-blobs", "backup", "restore"] {
        let out = Command::new(env!("CARGO_BIN_EXE_matyan")).args([command, "--help"]).output().unwrap();
        let help = stdout(&out);
        assert!(help.contains("3 another maintenance job holds the storage job lock"), "{command}: {help}");
        assert!(help.contains("4 stopped before the end"), "{command}: {help}");
    }
}

#[tokio::test]
async fn a_restore_stopped_midway_leaves_the_run_absent_and_the_next_run_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), NOW).await;
    let before = dump_all(dir.path());
    let archive = dir.path().join("b.backup");
    let archive_arg = archive.to_str().unwrap();
    ok(&matyan(dir.path(), &["backup", "--run", RUN_B, "--out", archive_arg]));
    {
        let db = open(dir.path());
        let layout = Layout::open(&db).await.unwrap();
        let layout = &layout;
        db.run(&RetryOptions::default(), |tx| async move { layout.delete_run(&tx, RUN_B, NOW + 5.0).await })
            .await
            .unwrap();
    }
    // Batches of about one key, so the run's data takes several transactions.
    let config = dir.path().join("tiny-txns.toml");
    std::fs::write(&config, "[maintenance]\nmax_txn_bytes = 1\n").unwrap();
    let config = config.to_str().unwrap();

    let first = matyan(dir.path(), &["restore", archive_arg, "--config", config, "--max-batches", "2"]);
    assert_eq!(status(&first), 4, "{}", String::from_utf8_lossy(&first.stderr));
    let runs = dump(dir.path(), "runs");
    assert!(runs.iter().any(|l| l["key"][0] == RUN_B), "some data is written");
    assert!(!runs.iter().any(|l| l["key"][0] == RUN_B && l["key"][1] == "meta"), "but no meta: the run is absent");
    assert!(tombstones(dir.path()).contains(&RUN_B.to_owned()), "and its tombstone stays");

    let second = ok(&matyan(dir.path(), &["restore", archive_arg, "--config", config]));
    assert!(second.contains("resuming restore"), "{second}");
    assert_eq!(dump_all(dir.path()), before);
}
