//! Which sequence layout a store gets: the schema-version key in ⟨system⟩, `storage.sequence_layout`
//! for a new store, key-per-step for a store with data and no key.

mod common;

use matyan::storage::kv::{Database, RangeOption};
use matyan::storage::layout::sequences::version;
use matyan::storage::layout::{Columns, Layout, LayoutError, SeqId, SeqWrite, SequenceLayoutKind};
use matyan::storage::tuple;

/// Every key under ⟨system⟩, raw.
async fn system_keys(db: &Database, layout: &Layout) -> Vec<Vec<u8>> {
    let tx = db.create_trx().unwrap();
    let (b, e) = tuple::range(&layout.dirs.system, &[]);
    tx.get_range(&RangeOption::new(b, e), true).await.unwrap().into_iter().map(|kv| kv.key).collect()
}

/// Every key and value of the store.
async fn every_pair(db: &Database) -> Vec<(Vec<u8>, Vec<u8>)> {
    let tx = db.create_trx().unwrap();
    let all = tx.get_range(&RangeOption::new(Vec::new(), vec![0xff]), true).await.unwrap();
    all.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

#[tokio::test]
async fn a_new_store_gets_the_chunked_layout_and_records_it() {
    let db = Database::memory();
    let layout = Layout::open_settled(&db, SequenceLayoutKind::Chunked).await.unwrap();
    assert_eq!(layout.seqs.kind(), SequenceLayoutKind::Chunked);
    assert_eq!(system_keys(&db, &layout).await, vec![version::key(&layout.dirs)]);
    // A plain open reads the record, so every process sees the same layout.
    assert_eq!(Layout::open(&db).await.unwrap().seqs.kind(), SequenceLayoutKind::Chunked);
    // A later configuration does not change a recorded store.
    let again = Layout::open_settled(&db, SequenceLayoutKind::KeyPerStep).await.unwrap();
    assert_eq!(again.seqs.kind(), SequenceLayoutKind::Chunked);

    let id = SeqId { run: common::RUN, ctx_id: 0, name: "loss" };
    let tx = db.create_trx().unwrap();
    let val = [0xcb, 0, 0, 0, 0, 0, 0, 0, 0];
    layout.seqs.write(&tx, id, &[SeqWrite { step: 0, val: &val, epoch: None, time: 1.0 }]).await.unwrap();
    tx.commit().await.unwrap();
    let tx = db.create_trx().unwrap();
    let (b, e) = tuple::range(&layout.dirs.runs, &[]);
    let keys = tx.get_range(&RangeOption::new(b, e), true).await.unwrap();
    assert_eq!(keys.len(), 1, "one chunk, no key per column");
    assert_eq!(layout.seqs.read(&tx, id, None, None, Columns::default(), true).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_store_with_data_and_no_version_key_stays_key_per_step_and_byte_compatible() {
    let db = Database::memory();
    common::write_worked_example(&db).await;
    let before = every_pair(&db).await;
    let layout = Layout::open_settled(&db, SequenceLayoutKind::Chunked).await.unwrap();
    assert_eq!(layout.seqs.kind(), SequenceLayoutKind::KeyPerStep);
    assert_eq!(every_pair(&db).await, before, "nothing written, no version key");
}

#[tokio::test]
async fn key_per_step_configured_makes_a_new_store_without_any_key_of_ours() {
    let db = Database::memory();
    let layout = Layout::open_settled(&db, SequenceLayoutKind::KeyPerStep).await.unwrap();
    assert_eq!(layout.seqs.kind(), SequenceLayoutKind::KeyPerStep);
    assert!(system_keys(&db, &layout).await.is_empty(), "the reference's store has no version key");
}

#[tokio::test]
async fn an_unknown_version_value_fails_the_open_instead_of_guessing() {
    let db = Database::memory();
    let layout = Layout::open_settled(&db, SequenceLayoutKind::Chunked).await.unwrap();
    let tx = db.create_trx().unwrap();
    tx.set(&version::key(&layout.dirs), &[0x81, 0xa6, b'l', b'a', b'y', b'o', b'u', b't', 0xa3, b'x', b'y', b'z']);
    tx.commit().await.unwrap();
    for err in [
        Layout::open(&db).await.unwrap_err(),
        Layout::open_settled(&db, SequenceLayoutKind::Chunked).await.unwrap_err(),
    ] {
        assert!(matches!(&err, LayoutError::Corrupt(m) if m.contains("sequence layout version key")), "{err:?}");
    }
}

#[tokio::test]
async fn the_app_settles_the_layout_of_storage_sequence_layout() {
    for (text, want) in [
        ("[storage]\nbackend = \"memory\"\n", SequenceLayoutKind::Chunked),
        ("[storage]\nbackend = \"memory\"\nsequence_layout = \"key_per_step\"\n", SequenceLayoutKind::KeyPerStep),
    ] {
        let config = matyan::config::Config::from_toml_str("test", text).unwrap();
        let state = matyan::app::AppState::open(config, None).await.unwrap();
        assert_eq!(state.layout.seqs.kind(), want, "{text}");
    }
    let bad = matyan::config::Config::from_toml_str("test", "[storage]\nsequence_layout = \"columnar\"\n");
    assert!(bad.is_err());
}
