//! Storage behaviours of `ingest-storage.md` §8 (items 2, 13, 19–26, 28–30 at the storage level),
//! run against the layout on the memory backend. Item 27 (rebuild) belongs to the `reindex`
//! maintenance job; items about message handlers belong to the ingestion tests.

use matyan::storage::kv::{Database, RangeOption, Transaction};
use matyan::storage::layout::{
    Columns, EntityKind, Layout, SeqId, SeqWrite, SequenceLayoutKind, TraceInfo, sample_indices,
};
use matyan::storage::tuple::Elem;
use matyan::storage::value::{self, Value};
use serde_json::json;

async fn setup() -> (Database, Layout) {
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    (db, layout)
}

/// Runs `f` in a transaction and commits.
async fn tx<T, F, Fut>(db: &Database, f: F) -> T
where
    F: FnOnce(Transaction) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let t = db.create_trx().unwrap();
    let out = f(t.clone()).await;
    t.commit().await.unwrap();
    out
}

fn v(j: serde_json::Value) -> Value {
    Value::from(&j)
}

async fn rev_count(db: &Database, layout: &Layout, run: &str) -> usize {
    let t = db.create_trx().unwrap();
    layout.indexes().entries_of_run(&t, run, None).await.unwrap().len()
}

#[tokio::test]
async fn item_2_next_step_is_zero_then_follows_the_highest_step() {
    let (db, layout) = setup().await;
    let id = SeqId { run: "r1", ctx_id: 0, name: "loss" };
    let t = db.create_trx().unwrap();
    assert_eq!(layout.seqs.next_step(&t, id).await.unwrap(), 0);
    let val = value::encode(&Value::Float(0.5)).unwrap();
    layout.seqs.write(&t, id, &[SeqWrite { step: 0, val: &val, epoch: None, time: 1.0 }]).await.unwrap();
    layout.seqs.write(&t, id, &[SeqWrite { step: 1, val: &val, epoch: None, time: 1.0 }]).await.unwrap();
    assert_eq!(layout.seqs.next_step(&t, id).await.unwrap(), 2);
    layout.seqs.write(&t, id, &[SeqWrite { step: 5, val: &val, epoch: None, time: 1.0 }]).await.unwrap();
    assert_eq!(layout.seqs.next_step(&t, id).await.unwrap(), 6, "continues after explicit steps");
    let other = SeqId { run: "r1", ctx_id: 7, name: "loss" };
    assert_eq!(layout.seqs.next_step(&t, other).await.unwrap(), 0, "per context");
}

#[tokio::test]
async fn item_13_delete_run_removes_data_and_writes_tombstone_even_for_unknown_runs() {
    let (db, layout) = setup().await;
    tx(&db, |t| {
        let l = layout.clone();
        async move {
            l.runs.create_run(&t, "r1", 10.0, None).await.unwrap();
            let val = value::encode(&Value::Float(1.0)).unwrap();
            l.seqs
                .write(
                    &t,
                    SeqId { run: "r1", ctx_id: 0, name: "m" },
                    &[SeqWrite { step: 0, val: &val, epoch: None, time: 1.0 }],
                )
                .await
                .unwrap();
        }
    })
    .await;
    tx(&db, |t| {
        let l = layout.clone();
        async move {
            l.delete_run(&t, "r1", 20.0).await.unwrap();
            l.delete_run(&t, "never-existed", 20.0).await.unwrap();
        }
    })
    .await;
    let t = db.create_trx().unwrap();
    assert!(!layout.runs.runs.exists(&t, "r1", false).await.unwrap());
    assert!(
        layout
            .seqs
            .read(&t, SeqId { run: "r1", ctx_id: 0, name: "m" }, None, None, Columns::default(), false)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(layout.indexes().is_deleted(&t, "r1").await.unwrap());
    assert!(layout.indexes().is_deleted(&t, "never-existed").await.unwrap());
    assert_eq!(layout.indexes().entries_of_run(&t, "r1", None).await.unwrap().len(), 0);
    assert!(layout.runs.runs.hashes(&t, false).await.unwrap().is_empty());
}

#[tokio::test]
async fn item_19_tree_round_trips_and_overwrites_replace_subtrees() {
    let (db, layout) = setup().await;
    let runs = &layout.runs.runs;
    let path = [Elem::from("attrs"), Elem::from("x")];
    for case in [
        json!(1.5),
        json!({"a": 1, "b": {"c": "d"}}),
        json!([1, 2, 3]),
        json!({}),
        json!([]),
        json!(null),
        json!([{"a": [1, {"b": []}]}, {}]),
    ] {
        let t = db.create_trx().unwrap();
        runs.tree_set(&t, "r", &path, &v(case.clone())).unwrap();
        assert_eq!(runs.tree_get(&t, "r", &path, false).await.unwrap(), Some(v(case.clone())), "{case}");
        t.commit().await.unwrap();
    }
    let t = db.create_trx().unwrap();
    runs.tree_set(&t, "r", &path, &v(json!({"a": 1, "b": 2}))).unwrap();
    runs.tree_set(&t, "r", &path, &v(json!({"c": 3}))).unwrap();
    assert_eq!(runs.tree_get(&t, "r", &path, false).await.unwrap(), Some(v(json!({"c": 3}))));
    let (b, e) = runs.range("r", &path);
    t.clear_range(&b, &e);
    assert_eq!(runs.tree_get(&t, "r", &path, false).await.unwrap(), None, "deleting a path clears it");
}

#[tokio::test]
async fn item_21_run_crud_default_name_update_delete_and_listing() {
    let (db, layout) = setup().await;
    tx(&db, |t| {
        let l = layout.clone();
        async move {
            l.runs.create_run(&t, "aaa", 1.0, None).await.unwrap();
            l.runs.create_run(&t, "bbb", 2.0, None).await.unwrap();
        }
    })
    .await;
    let t = db.create_trx().unwrap();
    let run = layout.runs.get_run(&t, "aaa", false).await.unwrap().unwrap();
    assert_eq!(run.get("hash"), Some(&Value::from("aaa")));
    assert_eq!(run.get("name"), Some(&Value::from("Run: aaa")));
    assert_eq!(layout.runs.runs.hashes(&t, false).await.unwrap(), vec!["aaa", "bbb"]);
    layout
        .runs
        .update_meta(&t, "aaa", 3.0, &[("name", Value::from("renamed")), ("is_archived", Value::Bool(true))])
        .await
        .unwrap();
    let run = layout.runs.get_run(&t, "aaa", false).await.unwrap().unwrap();
    assert_eq!(run.get("name"), Some(&Value::from("renamed")));
    assert_eq!(run.get("is_archived"), Some(&Value::Bool(true)));
    assert_eq!(run.get("updated_at"), Some(&Value::Float(3.0)));
    layout.delete_run(&t, "aaa", 4.0).await.unwrap();
    assert_eq!(layout.runs.get_run(&t, "aaa", false).await.unwrap(), None);
    assert_eq!(layout.runs.runs.hashes(&t, false).await.unwrap(), vec!["bbb"]);
}

#[tokio::test]
async fn item_22_pending_deletion_is_set_read_back_and_gone_after_delete() {
    let (db, layout) = setup().await;
    let t = db.create_trx().unwrap();
    layout.runs.create_run(&t, "r", 1.0, None).await.unwrap();
    assert!(!layout.runs.is_pending_deletion(&t, "r").await.unwrap());
    let rev_before = layout.indexes().entries_of_run(&t, "r", None).await.unwrap().len();
    layout.runs.mark_pending_deletion(&t, "r").unwrap();
    assert!(layout.runs.is_pending_deletion(&t, "r").await.unwrap());
    let run = layout.runs.get_run(&t, "r", false).await.unwrap().unwrap();
    assert_eq!(run.get("pending_deletion"), Some(&Value::Bool(true)));
    assert_eq!(run.get("updated_at"), Some(&Value::Float(1.0)), "no updated_at change");
    assert_eq!(layout.indexes().entries_of_run(&t, "r", None).await.unwrap().len(), rev_before, "no index change");
    layout.delete_run(&t, "r", 2.0).await.unwrap();
    assert!(!layout.runs.is_pending_deletion(&t, "r").await.unwrap());
}

#[tokio::test]
async fn item_23_tier_1_indexes_swap_on_update_and_created_at_ranges_are_half_open() {
    let (db, layout) = setup().await;
    let idx = layout.indexes().clone();
    let t = db.create_trx().unwrap();
    for (run, at) in [("r1", 10.0), ("r2", 20.0), ("r3", 30.0)] {
        layout.runs.create_run(&t, run, at, None).await.unwrap();
    }
    let archived = |b: bool| vec![Elem::from("archived"), Elem::Bool(b)];
    assert_eq!(idx.runs_under(&t, &archived(false), false).await.unwrap(), vec!["r1", "r2", "r3"]);
    assert_eq!(idx.runs_under(&t, &[Elem::from("active"), Elem::Bool(true)], false).await.unwrap().len(), 3);
    layout
        .runs
        .update_meta(&t, "r2", 40.0, &[("is_archived", Value::Bool(true)), ("active", Value::Bool(false))])
        .await
        .unwrap();
    assert_eq!(idx.runs_under(&t, &archived(false), false).await.unwrap(), vec!["r1", "r3"]);
    assert_eq!(idx.runs_under(&t, &archived(true), false).await.unwrap(), vec!["r2"]);
    assert_eq!(idx.runs_under(&t, &[Elem::from("active"), Elem::Bool(false)], false).await.unwrap(), vec!["r2"]);
    let created = [Elem::from("created_at")];
    let between =
        idx.runs_between(&t, &created, Some(&Elem::Float(10.0)), Some(&Elem::Float(30.0)), false).await.unwrap();
    assert_eq!(between, vec!["r1", "r2"], "[start, end)");
    let open_end = idx.runs_between(&t, &created, Some(&Elem::Float(20.0)), None, false).await.unwrap();
    assert_eq!(open_end, vec!["r2", "r3"]);
    layout.delete_run(&t, "r1", 50.0).await.unwrap();
    assert_eq!(idx.entries_of_run(&t, "r1", None).await.unwrap().len(), 0, "delete removes all entries");
    assert_eq!(idx.runs_under(&t, &archived(false), false).await.unwrap(), vec!["r3"]);
}

#[tokio::test]
async fn item_23_experiment_and_tag_lookups_rename_moves_entries_tag_delete_removes_them() {
    let (db, layout) = setup().await;
    let (sys, idx) = (layout.system.clone(), layout.indexes().clone());
    let t = db.create_trx().unwrap();
    layout.runs.create_run(&t, "r1", 1.0, None).await.unwrap();
    sys.create_named(&t, EntityKind::Experiment, "e-uuid", "exp-a", 1.0, &[]).await.unwrap();
    sys.create_named(&t, EntityKind::Tag, "t-uuid", "tag-a", 1.0, &[]).await.unwrap();
    sys.link_experiment(&t, &idx, "r1", Some("e-uuid")).await.unwrap();
    sys.link_tag(&t, &idx, "r1", "t-uuid").await.unwrap();
    assert_eq!(idx.runs_under(&t, &[Elem::from("experiment"), Elem::from("exp-a")], false).await.unwrap(), vec!["r1"]);
    assert_eq!(idx.runs_under(&t, &[Elem::from("tag"), Elem::from("tag-a")], false).await.unwrap(), vec!["r1"]);
    sys.rename(&t, &idx, EntityKind::Experiment, "e-uuid", "exp-b", 2.0).await.unwrap();
    assert!(idx.runs_under(&t, &[Elem::from("experiment"), Elem::from("exp-a")], false).await.unwrap().is_empty());
    assert_eq!(idx.runs_under(&t, &[Elem::from("experiment"), Elem::from("exp-b")], false).await.unwrap(), vec!["r1"]);
    assert_eq!(sys.uuid_by_name(&t, EntityKind::Experiment, "exp-b").await.unwrap().as_deref(), Some("e-uuid"));
    sys.delete(&t, &idx, EntityKind::Tag, "t-uuid").await.unwrap();
    assert!(idx.runs_under(&t, &[Elem::from("tag"), Elem::from("tag-a")], false).await.unwrap().is_empty());
    assert!(sys.tags_of_run(&t, "r1").await.unwrap().is_empty());
    assert_eq!(sys.get(&t, EntityKind::Tag, "t-uuid").await.unwrap(), None);
}

#[tokio::test]
async fn item_24_only_top_level_hparam_scalars_are_indexed_and_replaced_as_a_whole() {
    let (db, layout) = setup().await;
    let idx = layout.indexes().clone();
    let t = db.create_trx().unwrap();
    let hp = vec!["hparams".to_string()];
    let set = |value| {
        let (l, t, hp) = (layout.clone(), t.clone(), hp.clone());
        async move { l.runs.set_attrs(&t, "r", &hp, &v(value), 1.0).await.unwrap() }
    };
    set(json!({"lr": 0.001, "bs": 32, "opt": "adam", "on": true, "nested": {"a": 1}, "list": [1], "none": null})).await;
    let keys: Vec<_> =
        idx.entries_of_run(&t, "r", Some("hparam")).await.unwrap().into_iter().map(|e| e[1].clone()).collect();
    assert_eq!(keys, vec![Elem::from("bs"), Elem::from("lr"), Elem::from("on"), Elem::from("opt")]);
    set(json!({"lr": 0.01})).await;
    let lr = [Elem::from("hparam"), Elem::from("lr")];
    assert!(
        idx.runs_under(&t, &[lr[0].clone(), lr[1].clone(), Elem::Float(0.001)], false).await.unwrap().is_empty(),
        "0.001 replaced"
    );
    assert_eq!(idx.runs_under(&t, &[lr[0].clone(), lr[1].clone(), Elem::Float(0.01)], false).await.unwrap(), vec!["r"]);
    assert!(
        idx.runs_under(&t, &[Elem::from("hparam"), Elem::from("bs")], false).await.unwrap().is_empty(),
        "a whole-dict set replaces"
    );
    // A single-leaf update through hparams.x re-indexes from the stored tree.
    layout.runs.set_attrs(&t, "r", &["hparams".into(), "bs".into()], &Value::Int(64), 2.0).await.unwrap();
    assert_eq!(
        idx.runs_under(&t, &[Elem::from("hparam"), Elem::from("bs"), Elem::Int(64)], false).await.unwrap(),
        vec!["r"]
    );
    assert_eq!(idx.runs_under(&t, &[Elem::from("hparam"), Elem::from("lr")], false).await.unwrap(), vec!["r"]);
    // Non-hparams attrs are never indexed.
    layout.runs.set_attrs(&t, "r", &["other".into()], &v(json!({"k": 1})), 3.0).await.unwrap();
    assert_eq!(idx.entries_of_run(&t, "r", Some("hparam")).await.unwrap().len(), 2);
    // Range lookups: [lo, hi), open ends, in tuple type order (32 and 32.0 differ).
    let bs = [Elem::from("hparam"), Elem::from("bs")];
    assert_eq!(idx.runs_between(&t, &bs, Some(&Elem::Int(64)), Some(&Elem::Int(65)), false).await.unwrap(), vec!["r"]);
    assert!(idx.runs_between(&t, &bs, Some(&Elem::Int(0)), Some(&Elem::Int(64)), false).await.unwrap().is_empty());
    assert!(idx.runs_between(&t, &bs, Some(&Elem::Float(0.0)), None, false).await.unwrap().is_empty());
}

#[tokio::test]
async fn item_25_reverse_index_counts_and_isolation() {
    let (db, layout) = setup().await;
    let (sys, idx) = (layout.system.clone(), layout.indexes().clone());
    tx(&db, |t| {
        let (l, sys, idx) = (layout.clone(), sys.clone(), idx.clone());
        async move {
            for r in ["r1", "r2"] {
                l.runs.create_run(&t, r, 1.0, None).await.unwrap();
            }
            sys.create_named(&t, EntityKind::Experiment, "e", "exp", 1.0, &[]).await.unwrap();
            sys.create_named(&t, EntityKind::Tag, "t", "tag", 1.0, &[]).await.unwrap();
            sys.link_experiment(&t, &idx, "r1", Some("e")).await.unwrap();
            sys.link_tag(&t, &idx, "r1", "t").await.unwrap();
        }
    })
    .await;
    assert_eq!(rev_count(&db, &layout, "r1").await, 5, "archived, active, created_at, experiment, tag");
    tx(&db, |t| {
        let l = layout.clone();
        async move { l.runs.set_attrs(&t, "r2", &["hparams".into()], &v(json!({"a": 1, "b": "x"})), 1.0).await.unwrap() }
    })
    .await;
    assert_eq!(rev_count(&db, &layout, "r2").await, 5, "3 tier-1 + 2 hparams");
    tx(&db, |t| {
        let l = layout.clone();
        async move { l.runs.update_meta(&t, "r1", 2.0, &[("is_archived", Value::Bool(true))]).await.unwrap() }
    })
    .await;
    assert_eq!(rev_count(&db, &layout, "r1").await, 5, "a swap keeps the count");
    tx(&db, |t| {
        let idx = idx.clone();
        async move { idx.deindex_run(&t, "r1", None).await.unwrap() }
    })
    .await;
    assert_eq!(rev_count(&db, &layout, "r1").await, 0);
    assert_eq!(rev_count(&db, &layout, "r2").await, 5, "another run's entries untouched");
}

#[tokio::test]
async fn item_26_tombstones_mark_check_clear_and_list_with_corrupt_as_zero() {
    let (db, layout) = setup().await;
    let idx = layout.indexes().clone();
    let before = 1_700_000_000.0;
    let t = db.create_trx().unwrap();
    idx.mark_deleted(&t, "r1", before + 1.0);
    assert!(idx.is_deleted(&t, "r1").await.unwrap());
    idx.mark_deleted(&t, "r2", before + 2.0);
    // A corrupt tombstone value.
    let key =
        matyan::storage::tuple::pack_with_prefix(&layout.dirs.indexes, &[Elem::from("_deleted"), Elem::from("r3")]);
    t.set(&key, b"\xc1");
    let list = idx.tombstones(&t).await.unwrap();
    assert_eq!(list, vec![("r1".into(), before + 1.0), ("r2".into(), before + 2.0), ("r3".into(), 0.0)]);
    idx.clear_tombstone(&t, "r1");
    assert!(!idx.is_deleted(&t, "r1").await.unwrap());
}

#[tokio::test]
async fn item_28_entities_reject_duplicate_names_and_keep_run_counts_non_negative() {
    let (db, layout) = setup().await;
    let (sys, idx) = (layout.system.clone(), layout.indexes().clone());
    let t = db.create_trx().unwrap();
    sys.create_named(&t, EntityKind::Experiment, "e1", "exp1", 1.0, &[]).await.unwrap();
    sys.create_named(&t, EntityKind::Experiment, "e2", "exp2", 1.0, &[]).await.unwrap();
    let dup = sys.create_named(&t, EntityKind::Experiment, "e3", "exp1", 1.0, &[]).await;
    assert!(matches!(dup, Err(matyan::storage::layout::LayoutError::Conflict(_))));
    sys.create_named(&t, EntityKind::Tag, "t1", "tag1", 1.0, &[]).await.unwrap();
    assert!(sys.create_named(&t, EntityKind::Tag, "t2", "tag1", 1.0, &[]).await.is_err());
    let count = |kind, uuid: &'static str| {
        let (sys, t) = (sys.clone(), t.clone());
        async move {
            let fields = sys.get(&t, kind, uuid).await.unwrap().unwrap();
            fields.into_iter().find(|(f, _)| f == "run_count").map(|(_, v)| v).unwrap()
        }
    };
    let run_experiment = |run: &'static str| {
        let (sys, t) = (sys.clone(), t.clone());
        async move { t.get(&sys.key(&[Elem::from("run_experiment"), Elem::from(run)]), false).await.unwrap() }
    };
    sys.link_experiment(&t, &idx, "r", Some("e1")).await.unwrap();
    assert_eq!(count(EntityKind::Experiment, "e1").await, Value::Int(1));
    assert_eq!(run_experiment("r").await, Some(value::encode(&Value::from("e1")).unwrap()));
    sys.link_experiment(&t, &idx, "r", Some("e2")).await.unwrap();
    assert_eq!(
        (count(EntityKind::Experiment, "e1").await, count(EntityKind::Experiment, "e2").await),
        (Value::Int(0), Value::Int(1))
    );
    assert_eq!(run_experiment("r").await, Some(value::encode(&Value::from("e2")).unwrap()));
    // Tag links are idempotent (a fix over the reference, whose counts drift on redelivery).
    assert!(sys.link_tag(&t, &idx, "r", "t1").await.unwrap());
    assert!(!sys.link_tag(&t, &idx, "r", "t1").await.unwrap());
    assert_eq!(count(EntityKind::Tag, "t1").await, Value::Int(1));
    assert!(sys.unlink_tag(&t, &idx, "r", "t1").await.unwrap());
    assert!(!sys.unlink_tag(&t, &idx, "r", "t1").await.unwrap());
    assert_eq!(count(EntityKind::Tag, "t1").await, Value::Int(0), "never negative");
    sys.link_tag(&t, &idx, "r", "t1").await.unwrap();
    sys.remove_associations(&t, &idx, "r").await.unwrap();
    assert_eq!(count(EntityKind::Experiment, "e2").await, Value::Int(0));
    assert_eq!(count(EntityKind::Tag, "t1").await, Value::Int(0));
    assert_eq!(run_experiment("r").await, None);
}

#[tokio::test]
async fn item_29_job_lock_acquire_hold_expire_corrupt_release() {
    let (db, layout) = setup().await;
    let sys = layout.system.clone();
    let t = db.create_trx().unwrap();
    assert!(sys.try_acquire_job_lock(&t, "cleanup", 100.0, 60.0).await.unwrap());
    assert!(!sys.try_acquire_job_lock(&t, "cleanup", 120.0, 60.0).await.unwrap(), "held until 160");
    assert!(sys.try_acquire_job_lock(&t, "cleanup", 161.0, 60.0).await.unwrap(), "expired");
    t.set(&sys.key(&[Elem::from("job_lock"), Elem::from("cleanup")]), b"\xc1");
    assert!(sys.try_acquire_job_lock(&t, "cleanup", 162.0, 60.0).await.unwrap(), "corrupt counts as free");
    sys.release_job_lock(&t, "cleanup");
    assert!(sys.try_acquire_job_lock(&t, "cleanup", 163.0, 60.0).await.unwrap());
    sys.release_job_lock(&t, "missing");
}

#[tokio::test]
async fn item_30_sequence_ranges_are_inclusive_and_missing_epochs_read_null() {
    let (db, layout) = setup().await;
    let id = SeqId { run: "r", ctx_id: 0, name: "m" };
    let vals: Vec<Vec<u8>> = (0..10).map(|i| value::encode(&Value::Float(i as f64)).unwrap()).collect();
    tx(&db, |t| {
        let (l, vals) = (layout.clone(), vals.clone());
        async move {
            let points: Vec<SeqWrite<'_>> =
                (0..10).map(|i| SeqWrite { step: i * 2, val: &vals[i as usize], epoch: None, time: 5.0 }).collect();
            l.seqs.write(&t, id, &points).await.unwrap();
            let trace =
                TraceInfo { ctx_id: 0, name: "m", dtype: "float", last: Some(&Value::Float(9.0)), last_step: 18 };
            l.runs.record_trace(&t, "r", &trace).unwrap();
        }
    })
    .await;
    let t = db.create_trx().unwrap();
    let cols = Columns { epoch: true, time: true };
    let pts = layout.seqs.read(&t, id, Some(4), Some(10), cols, false).await.unwrap();
    assert_eq!(pts.iter().map(|p| p.step).collect::<Vec<_>>(), vec![4, 6, 8, 10], "inclusive end");
    assert!(pts.iter().all(|p| p.epoch.is_none() && p.time == Some(5.0)));
    assert_eq!(value::decode(&pts[0].val).unwrap(), Value::Float(2.0));
}

#[test]
fn item_30_sampling_keeps_first_and_last_and_handles_small_inputs() {
    let steps: Vec<i64> = (0..1000).collect();
    for p in [2, 10, 127, 128, 500] {
        let idx = sample_indices(&steps, p);
        assert!(idx.len() <= p && idx.len() >= p.min(2), "p={p}: {}", idx.len());
        assert_eq!((idx[0], *idx.last().unwrap()), (0, 999), "p={p}");
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "ascending, no duplicates");
    }
    assert_eq!(sample_indices(&[1, 2, 3], 10), vec![0, 1, 2], "fewer points than p: all");
    assert_eq!(sample_indices(&[7], 10), vec![0], "a single step");
    assert_eq!(sample_indices(&steps, 1), vec![0], "one point: the first");
    // Gaps: targets 0, 500, 1000 resolve to steps 0, 1000, 1000; the duplicate leaves fewer than p,
    // so evenly spaced positions are used instead.
    let gappy = [0, 1, 2, 100, 101, 102, 1000];
    assert_eq!(sample_indices(&gappy, 3), vec![0, 3, 6]);
    // Targets that resolve to distinct steps are kept as resolved.
    let tens: Vec<i64> = (0..=10).map(|i| i * 10).collect();
    assert_eq!(sample_indices(&tens, 3), vec![0, 5, 10]);
}

/// Writes a run with something under every run-level name: attributes, meta, two contexts, a
/// sequence (the layout's own keys, `chunks` or `seqs`), its trace and a tag.
async fn full_run(layout: &Layout, t: &Transaction, run: &str, tag: &str) {
    layout.runs.create_run(t, run, 1.0, None).await.unwrap();
    layout.runs.runs.tree_set(t, run, &[Elem::from("attrs")], &v(json!({"hparams": {"lr": 0.1}}))).unwrap();
    layout.runs.runs.set_context(t, run, 0, &v(json!({}))).unwrap();
    layout.runs.runs.set_context(t, run, 7, &v(json!({"subset": "train"}))).unwrap();
    let val = value::encode(&Value::Float(0.5)).unwrap();
    let points: Vec<SeqWrite<'_>> = (0..50).map(|step| SeqWrite { step, val: &val, epoch: None, time: 1.0 }).collect();
    layout.seqs.write(t, SeqId { run, ctx_id: 7, name: "loss" }, &points).await.unwrap();
    let info = TraceInfo { ctx_id: 7, name: "loss", dtype: "float", last: Some(&Value::Float(0.5)), last_step: 49 };
    layout.runs.runs.set_trace_info(t, run, &info).unwrap();
    layout.link_tag(t, run, tag).await.unwrap();
}

#[tokio::test]
async fn a_runs_head_is_its_meta_and_contexts_alone_from_one_read_in_both_sequence_layouts() {
    for kind in [SequenceLayoutKind::KeyPerStep, SequenceLayoutKind::Chunked] {
        let db = Database::memory();
        let layout = Layout::open_settled(&db, kind).await.unwrap();
        tx(&db, |t| {
            let l = layout.clone();
            async move {
                for run in ["r0", "r1", "r2"] {
                    full_run(&l, &t, run, "t-uuid").await;
                }
            }
        })
        .await;
        let t = db.create_trx().unwrap();
        let runs = &layout.runs.runs;
        let head = runs.read_head(&t, "r1", true).await.unwrap();
        let meta = runs.tree_get(&t, "r1", &[Elem::from("meta")], true).await.unwrap();
        let (contexts, context_keys) = runs.read_contexts(&t, "r1", true).await.unwrap();
        let (b, e) = runs.range("r1", &[Elem::from("meta")]);
        let meta_keys = t.get_range(&RangeOption::new(b, e), true).await.unwrap().len();
        assert!(meta.is_some() && contexts.len() == 2, "{kind:?}");
        assert_eq!((head.meta, head.contexts), (meta, contexts), "{kind:?}");
        assert_eq!(head.keys, context_keys + meta_keys, "{kind:?}: nothing else is read");
        let none = runs.read_head(&t, "r9", true).await.unwrap();
        assert_eq!((none.meta, none.contexts.len(), none.keys), (None, 0, 0), "{kind:?}");
    }
}

#[tokio::test]
async fn every_runs_tags_read_at_once_are_each_runs_own_and_none_past_the_cap() {
    let (db, layout) = setup().await;
    tx(&db, |t| {
        let l = layout.clone();
        async move {
            for (run, tag) in [("r0", "a"), ("r1", "b"), ("r2", "a")] {
                full_run(&l, &t, run, tag).await;
            }
            l.link_tag(&t, "r1", "a").await.unwrap();
            l.runs.create_run(&t, "r3", 1.0, None).await.unwrap();
        }
    })
    .await;
    let t = db.create_trx().unwrap();
    let (links, keys) = layout.system.all_run_tags(&t, 4, true).await.unwrap().unwrap();
    assert_eq!(keys, 4);
    for run in ["r0", "r1", "r2", "r3"] {
        let one = layout.system.tags_of_run(&t, run).await.unwrap();
        assert_eq!(links.get(run).cloned().unwrap_or_default(), one, "{run}");
    }
    assert_eq!(links.get("r1").map(Vec::len), Some(2));
    assert!(layout.system.all_run_tags(&t, 3, true).await.unwrap().is_none(), "four links, three allowed");
}
