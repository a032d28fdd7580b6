//! The worked example of `ingest-storage.md` §3.8 reproduced byte for byte through the layout:
//! `create_run` + `log_hparams` + three `log_metric` in one transaction, clock pinned, gives exactly
//! the reference's 36 keys and values (golden file `worked_example.rows`), and `kv dump` prints them.

mod common;

use common::{RUN, golden_rows};
use matyan::storage::dump::{DumpRequest, dump};
use matyan::storage::kv::{Database, EmbeddedEngine, Limits, RangeOption, strinc};
use matyan::storage::layout::Layout;
use serde_json::json;

async fn stored_rows(db: &Database, layout: &Layout) -> Vec<(String, String, String)> {
    let tx = db.create_trx().unwrap();
    let mut rows = Vec::new();
    for (name, prefix) in
        [("data/runs", &layout.dirs.runs), ("data/indexes", &layout.dirs.indexes), ("system", &layout.dirs.system)]
    {
        for kv in tx.get_range(&RangeOption::new(prefix.clone(), strinc(prefix)), false).await.unwrap() {
            rows.push((name.to_string(), hex::encode(&kv.key[prefix.len()..]), hex::encode(&kv.value)));
        }
    }
    rows.sort();
    rows
}

async fn check_backend(db: Database) -> Layout {
    let layout = common::write_worked_example(&db).await;
    let got = stored_rows(&db, &layout).await;
    let want = golden_rows();
    assert_eq!(want.len(), 36);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "first differing row");
    }
    assert_eq!(got.len(), want.len(), "same rows, same count");
    layout
}

#[tokio::test]
async fn worked_example_matches_reference_bytes_in_memory() {
    check_backend(Database::memory()).await;
}

#[tokio::test]
async fn worked_example_matches_reference_bytes_embedded_and_dumps_36_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_embedded(dir.path(), EmbeddedEngine::Fjall, Limits::FDB).unwrap();
    let layout = check_backend(db.clone()).await;
    let mut out = Vec::new();
    let lines = dump(&db, &layout.dirs, &DumpRequest::default(), &mut out).await.unwrap();
    assert_eq!(lines, 36);
    let text = String::from_utf8(out).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first, json!({"dir": "runs", "key": [RUN, "attrs", "hparams", "layers", 0, "__leaf__"], "value": 64}));
    assert!(text.contains(
        r#"{"dir":"indexes","key":["hparam","lr",0.001,"3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b"],"value":{"bytes":""}}"#
    ));
    assert!(
        text.contains(r#""key":["3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b","contexts",2326457826],"value":{"subset":"train"}"#)
    );
}

/// Reference quirk 4 fixed deliberately: a second `create_run` leaves no stale tier-1 entries.
#[tokio::test]
async fn second_create_run_leaves_no_stale_index_entries_fixing_reference_quirk_4() {
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    for now in [100.0, 200.0] {
        let tx = db.create_trx().unwrap();
        layout.runs.create_run(&tx, RUN, now, None).await.unwrap();
        tx.commit().await.unwrap();
    }
    let tx = db.create_trx().unwrap();
    let entries = layout.indexes().entries_of_run(&tx, RUN, None).await.unwrap();
    assert_eq!(entries.len(), 3, "archived, active, created_at once each: {entries:?}");
}
