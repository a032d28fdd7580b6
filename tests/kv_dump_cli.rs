//! `matyan kv dump` as an operator runs it: on a store a test wrote the worked example into, both
//! when the command opens the store itself and while `matyan serve` holds it open.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::server::{get, start, terminate, wait_for_addr};
use matyan::storage::kv::{Database, EmbeddedEngine, Limits};
use serde_json::{Value, json};

fn kv_dump(data_dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["kv", "dump", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run matyan kv dump")
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "kv dump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn store_with_worked_example(dir: &Path) {
    let db = Database::open_embedded(dir, EmbeddedEngine::Fjall, Limits::FDB).unwrap();
    common::write_worked_example(&db).await;
}

#[tokio::test]
async fn kv_dump_prints_the_worked_example_keys_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    store_with_worked_example(dir.path()).await;

    let all = lines(&kv_dump(dir.path(), &[]));
    assert_eq!(all.len(), 36);
    assert_eq!(
        all[0],
        json!({"dir": "runs", "key": [common::RUN, "attrs", "hparams", "layers", 0, "__leaf__"], "value": 64})
    );
    assert_eq!(all.iter().filter(|l| l["dir"] == "runs").count(), 26);

    let indexes = lines(&kv_dump(dir.path(), &["--dir", "indexes"]));
    assert_eq!(indexes.len(), 10);
    assert!(indexes.iter().all(|l| l["dir"] == "indexes" && l["value"] == json!({"bytes": ""})));

    let meta = lines(&kv_dump(dir.path(), &["--dir", "runs", "--prefix", &format!(r#"["{}", "meta"]"#, common::RUN)]));
    assert_eq!(meta.len(), 10, "the ten meta leaves");
    assert!(meta.iter().any(|l| l["key"][2] == "created_at" && l["value"] == json!(1_735_689_600.0)));

    let raw = lines(&kv_dump(dir.path(), &["--dir", "runs", "--raw"]));
    let loss2 =
        raw.iter().find(|l| l["key"] == json!([common::RUN, "seqs", 2_326_457_826u32, "loss", "val", 2])).unwrap();
    assert!(loss2["key_hex"].as_str().unwrap().ends_with(
        "0233663261396331653562376434653666386130623163326433653466356136620002736571730018\
         8aaaede2026c6f7373000276616c001502"
    ));
    assert_eq!(loss2["value_hex"], "cb3fe0000000000000");
}

#[test]
fn kv_dump_rejects_bad_input_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let out = kv_dump(&missing, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no store at"), "{}", String::from_utf8_lossy(&out.stderr));

    tokio::runtime::Runtime::new().unwrap().block_on(store_with_worked_example(dir.path()));
    let out = kv_dump(dir.path(), &["--dir", "bogus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown directory"));
    let out = kv_dump(dir.path(), &["--prefix", "[not json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prefix"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_dump_reads_through_a_running_server_that_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    store_with_worked_example(dir.path()).await;
    let mut server = start(dir.path(), &[]);
    let addr = wait_for_addr(&mut server, dir.path());

    let all = lines(&kv_dump(dir.path(), &[]));
    // `matyan serve` also keeps its ingestion queue's metadata in our own directory.
    let reference: Vec<_> = all.iter().filter(|l| l["dir"] != "ours").collect();
    assert_eq!(reference.len(), 36, "the dump goes through the server while it holds the lock");
    assert!(all.iter().filter(|l| l["dir"] == "ours").all(|l| l["key"][0] == "queue_meta"));
    let meta = lines(&kv_dump(dir.path(), &["--dir", "runs", "--prefix", &format!(r#"["{}", "meta"]"#, common::RUN)]));
    assert_eq!(meta.len(), 10);
    let out = kv_dump(dir.path(), &["--dir", "bogus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown directory"));
    // The store could not be opened twice: the lines came through the server's admin route.
    let (status, metrics) = get(addr, "/metrics/");
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|l| l.contains("/admin/kv/dump/") && l.contains("2xx")),
        "no admin dump request recorded:\n{metrics}"
    );

    assert!(terminate(server).success());
}

#[tokio::test]
async fn kv_dump_shows_a_chunk_of_the_chunked_layout_as_its_points() {
    use matyan::storage::layout::{Layout, SeqId, SeqWrite, SequenceLayoutKind};
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::open_embedded(dir.path(), EmbeddedEngine::Fjall, Limits::FDB).unwrap();
        let layout = Layout::open_settled(&db, SequenceLayoutKind::Chunked).await.unwrap();
        let (half, nil) = ([0xcb, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0], [0xc0]);
        let points = [
            SeqWrite { step: 3, val: &half, epoch: Some(1), time: 10.0 },
            SeqWrite { step: 5, val: &nil, epoch: None, time: 10.0 },
        ];
        let tx = db.create_trx().unwrap();
        layout.seqs.write(&tx, SeqId { run: common::RUN, ctx_id: 0, name: "loss" }, &points).await.unwrap();
        tx.commit().await.unwrap();
    }
    let runs = lines(&kv_dump(dir.path(), &["--dir", "runs"]));
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["key"], json!([common::RUN, "chunks", 0, "loss", 3]));
    assert_eq!(
        runs[0]["value"],
        json!({"chunk": [
            {"step": 3, "val": 0.5, "epoch": 1, "time": 10.0},
            {"step": 5, "val": null, "epoch": null, "time": 10.0},
        ]})
    );
}
