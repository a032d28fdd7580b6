//! The sequence-layout conformance suite: written once, run on both layouts (key-per-step, and
//! chunked with small chunks so every case crosses chunk boundaries) over every KV backend
//! (memory, fjall, redb). Each case checks a layout against a `BTreeMap` model of the reference's
//! semantics: points sort by step, the last write of a step wins, and a write without an epoch
//! leaves the stored epoch.

use std::collections::BTreeMap;

use matyan::storage::kv::{Database, KvError, Limits, RangeOption, Transaction};
use matyan::storage::layout::sequences::{ChunkLimits, Chunked, sample_indices};
use matyan::storage::layout::{Columns, KeyPerStep, Runs, SeqId, SeqPoint, SeqWrite, SequenceLayout};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RUN: &str = "00000000000000000000000000c0ffee";
const ALL: Columns = Columns { epoch: true, time: true };

/// A point to write: step, msgpack value, epoch, time.
type Point = (i64, Vec<u8>, Option<i64>, f64);

fn id(name: &str) -> SeqId<'_> {
    SeqId { run: RUN, ctx_id: 7, name }
}

fn float(f: f64) -> Vec<u8> {
    let mut v = vec![0xcb];
    v.extend_from_slice(&f.to_bits().to_be_bytes());
    v
}

fn pts(steps: impl IntoIterator<Item = i64>, time: f64) -> Vec<Point> {
    steps.into_iter().map(|s| (s, float(s as f64 / 2.0), (s % 3 != 0).then_some(s / 10), time)).collect()
}

/// The reference's semantics of the stored points.
#[derive(Debug, Default, Clone)]
struct Model(BTreeMap<i64, (Vec<u8>, Option<i64>, f64)>);

impl Model {
    fn apply(&mut self, points: &[Point]) {
        for (step, val, epoch, time) in points {
            let e = self.0.get(step).and_then(|p| p.1);
            self.0.insert(*step, (val.clone(), epoch.or(e), *time));
        }
    }

    fn read(&self, start: Option<i64>, end: Option<i64>, cols: Columns) -> Vec<SeqPoint> {
        if start.zip(end).is_some_and(|(a, b)| a > b) {
            return Vec::new();
        }
        self.0
            .range(start.unwrap_or(i64::MIN)..=end.unwrap_or(i64::MAX))
            .map(|(s, (v, e, t))| SeqPoint {
                step: *s,
                val: v.clone(),
                epoch: if cols.epoch { *e } else { None },
                time: cols.time.then_some(*t),
            })
            .collect()
    }
}

/// One layout on one store.
struct Store {
    db: Database,
    seqs: SequenceLayout,
    runs: Vec<u8>,
}

impl Store {
    async fn write(&self, name: &str, points: &[Point]) {
        let tx = self.db.create_trx().unwrap();
        self.write_in(&tx, name, points).await;
        tx.commit().await.unwrap();
    }

    async fn write_in(&self, tx: &Transaction, name: &str, points: &[Point]) {
        let writes: Vec<SeqWrite<'_>> = points
            .iter()
            .map(|(step, val, epoch, time)| SeqWrite { step: *step, val, epoch: *epoch, time: *time })
            .collect();
        self.seqs.write(tx, id(name), &writes).await.unwrap();
    }

    async fn read(&self, name: &str, start: Option<i64>, end: Option<i64>, cols: Columns) -> Vec<SeqPoint> {
        let tx = self.db.create_trx().unwrap();
        self.seqs.read(&tx, id(name), start, end, cols, true).await.unwrap()
    }

    /// Checks every reader against the model.
    async fn check(&self, name: &str, model: &Model) {
        let tx = self.db.create_trx().unwrap();
        for cols in [Columns::default(), Columns { epoch: true, time: false }, ALL] {
            assert_eq!(self.read(name, None, None, cols).await, model.read(None, None, cols), "{name} {cols:?}");
        }
        let bounds = model.0.keys().next().map(|f| (*f, *model.0.keys().next_back().unwrap()));
        assert_eq!(self.seqs.step_bounds(&tx, id(name), true).await.unwrap(), bounds, "{name} bounds");
        assert_eq!(self.seqs.last_step(&tx, id(name)).await.unwrap(), bounds.map(|b| b.1), "{name} last");
        assert_eq!(self.seqs.next_step(&tx, id(name)).await.unwrap(), bounds.map_or(0, |b| b.1 + 1));
    }
}

fn layouts(runs: &[u8]) -> [(&'static str, SequenceLayout); 2] {
    [
        ("key_per_step", SequenceLayout::KeyPerStep(KeyPerStep::new(runs))),
        ("chunked", SequenceLayout::Chunked(Chunked::new(runs, ChunkLimits { max_points: 8, max_bytes: 512 }))),
    ]
}

async fn appends_across_chunk_boundaries_read_back_in_order(s: Store) {
    let mut model = Model::default();
    // Many small appends in separate transactions, then several appends in one transaction.
    for batch in (0..60).collect::<Vec<i64>>().chunks(7) {
        let p = pts(batch.iter().copied(), 1.0);
        s.write("m", &p).await;
        model.apply(&p);
    }
    let tx = s.db.create_trx().unwrap();
    for batch in (60..100).collect::<Vec<i64>>().chunks(5) {
        let p = pts(batch.iter().copied(), 2.0);
        s.write_in(&tx, "m", &p).await;
        model.apply(&p);
        assert_eq!(s.seqs.next_step(&tx, id("m")).await.unwrap(), batch[batch.len() - 1] + 1, "sees its own writes");
    }
    tx.commit().await.unwrap();
    s.check("m", &model).await;
    for (a, b) in [(13, 57), (0, 0), (8, 15), (99, 99), (-5, 3), (95, 1_000), (40, 39)] {
        assert_eq!(s.read("m", Some(a), Some(b), ALL).await, model.read(Some(a), Some(b), ALL), "{a}..={b}");
    }
}

async fn out_of_order_and_repeated_steps_keep_the_last_write_of_each_step(s: Store) {
    let mut model = Model::default();
    let batches: Vec<Vec<Point>> = vec![
        pts([50, 10, 30, 10, 70, 20], 1.0),
        pts(40..60, 2.0),
        pts([5, 6, 7, 100, 0], 3.0),
        // A repeat without an epoch keeps the stored epoch; with one, replaces it.
        vec![(41, float(-1.0), None, 4.0), (42, float(-2.0), Some(99), 4.0), (41, float(-3.0), None, 4.5)],
        pts((0..120).rev().step_by(3), 5.0),
    ];
    for b in &batches {
        s.write("m", b).await;
        model.apply(b);
        s.check("m", &model).await;
    }
}

async fn nan_infinities_nil_and_objects_read_back_byte_for_byte(s: Store) {
    let vals: Vec<Vec<u8>> = vec![
        float(f64::NAN),
        float(f64::INFINITY),
        float(f64::NEG_INFINITY),
        float(-0.0),
        vec![0xc0],                                                 // None
        vec![0x2a],                                                 // an int
        vec![0x81, 0xa4, b't', b'e', b'x', b't', 0xa2, b'h', b'i'], // a custom object's map
        vec![0xa0],                                                 // ""
    ];
    let mut model = Model::default();
    let p: Vec<Point> = vals.iter().enumerate().map(|(i, v)| (i as i64, v.clone(), None, 1.0)).collect();
    s.write("m", &p).await;
    model.apply(&p);
    // Floats after non-floats in the same series.
    let more = pts(8..30, 2.0);
    s.write("m", &more).await;
    model.apply(&more);
    s.check("m", &model).await;
}

async fn steps_up_to_2_pow_40_and_negative_steps_are_kept(s: Store) {
    let big = 1_i64 << 40;
    let mut model = Model::default();
    let p = pts([-5, 0, 1, big - 1, big, big + 1, -(big), 12], 1.0);
    s.write("m", &p).await;
    model.apply(&p);
    s.check("m", &model).await;
    for (a, b) in [(big, big), (0, big), (-big, -5), (2, big - 2)] {
        assert_eq!(s.read("m", Some(a), Some(b), ALL).await, model.read(Some(a), Some(b), ALL), "{a}..={b}");
    }
    let tx = s.db.create_trx().unwrap();
    assert_eq!(s.seqs.next_step(&tx, id("m")).await.unwrap(), big + 2);
}

async fn epochs_and_times_present_and_absent(s: Store) {
    let mut model = Model::default();
    let p: Vec<Point> =
        (0..30).map(|i| (i, float(1.0), (10..20).contains(&i).then_some(i / 5), 100.0 + (i / 4) as f64)).collect();
    s.write("m", &p).await;
    model.apply(&p);
    s.check("m", &model).await;
    let none: Vec<Point> = (30..40).map(|i| (i, float(2.0), None, 7.0)).collect();
    s.write("other", &none).await;
    let got = s.read("other", None, None, ALL).await;
    assert!(got.iter().all(|p| p.epoch.is_none() && p.time == Some(7.0)), "{got:?}");
}

async fn sampling_at_every_density_path_gives_the_points_of_reading_all_and_sampling(s: Store) {
    let series: Vec<(&str, Vec<i64>)> = vec![
        ("gapless", (0..3_000).collect()),
        ("one gap", (0..3_000).filter(|s| *s != 1_234).collect()),
        ("sparse", (0..3_000).map(|s| s * 7 + s % 3).collect()),
        ("short", (5..40).collect()),
        ("single", vec![9]),
        ("huge span", vec![0, 1, 2, 1 << 40]),
    ];
    let tx = s.db.create_trx().unwrap();
    for (name, steps) in &series {
        for batch in steps.chunks(1_000) {
            s.write(name, &pts(batch.iter().copied(), 3.0)).await;
        }
    }
    for (name, _) in &series {
        for cols in [Columns::default(), ALL] {
            let all = s.read(name, None, None, cols).await;
            let steps: Vec<i64> = all.iter().map(|p| p.step).collect();
            for p in [1, 2, 3, 50, 127, 128, 129, 300, 500, 5_000] {
                let want: Vec<SeqPoint> = sample_indices(&steps, p).into_iter().map(|i| all[i].clone()).collect();
                let (got, keys) = s.seqs.read_sampled(&tx, id(name), p, cols, true).await.unwrap();
                assert_eq!(got, want, "{name} p = {p}");
                assert!(keys >= 1, "{name} p = {p}");
            }
        }
    }
    assert_eq!(s.seqs.read_sampled(&tx, id("none"), 10, ALL, true).await.unwrap().0, Vec::new());
}

async fn deleting_a_sequence_or_its_run_removes_only_its_points(s: Store) {
    let p = pts(0..50, 1.0);
    s.write("a", &p).await;
    s.write("b", &p).await;
    let tx = s.db.create_trx().unwrap();
    s.seqs.clear(&tx, id("a"));
    assert!(s.seqs.read(&tx, id("a"), None, None, ALL, false).await.unwrap().is_empty(), "read your clear");
    tx.commit().await.unwrap();
    s.check("a", &Model::default()).await;
    let mut model = Model::default();
    model.apply(&p);
    s.check("b", &model).await;
    // Writing again after a clear starts a fresh sequence.
    let again = pts(10..12, 2.0);
    s.write("a", &again).await;
    let mut fresh = Model::default();
    fresh.apply(&again);
    s.check("a", &fresh).await;
    // delete_run's clear of (R,) takes every sequence of the run.
    let tx = s.db.create_trx().unwrap();
    Runs::new(&s.runs).clear_run(&tx, RUN);
    tx.commit().await.unwrap();
    s.check("a", &Model::default()).await;
    s.check("b", &Model::default()).await;
}

async fn a_batch_over_the_transaction_budget_fails_and_its_halves_store_the_same_points(s: Store) {
    // 200 points of 60 kB: 12 MB, over FoundationDB's 10 MB per transaction; every stored value
    // stays under the 100 kB value limit.
    let big: Vec<Point> = (0..200)
        .map(|i| {
            (
                i,
                {
                    let mut v = vec![0xc6, 0, 0, 0xea, 0x60];
                    v.resize(5 + 60_000, i as u8);
                    v
                },
                None,
                1.0,
            )
        })
        .collect();
    let tx = s.db.create_trx().unwrap();
    s.write_in(&tx, "m", &big).await;
    let err = tx.commit().await.unwrap_err();
    assert!(matches!(err, KvError::TransactionTooLarge { .. }), "{err:?}");
    let (a, b) = big.split_at(big.len() / 2);
    s.write("m", a).await;
    s.write("m", b).await;
    let mut model = Model::default();
    model.apply(&big);
    s.check("m", &model).await;
    let tx = s.db.create_trx().unwrap();
    let stored = tx.get_range(&RangeOption::prefix(&s.runs), true).await.unwrap();
    assert!(stored.iter().all(|kv| kv.value.len() < 100_000), "a value over FoundationDB's limit");
}

async fn random_writes_reads_and_clears_match_a_btreemap(s: Store) {
    let mut rng = StdRng::seed_from_u64(12);
    let mut model = Model::default();
    for round in 0..60 {
        match rng.random_range(0..10) {
            0 => {
                let tx = s.db.create_trx().unwrap();
                s.seqs.clear(&tx, id("m"));
                tx.commit().await.unwrap();
                model = Model::default();
            }
            1..=6 => {
                let n = rng.random_range(1..40);
                let base = rng.random_range(-20..200);
                let batch: Vec<Point> = (0..n)
                    .map(|_| {
                        let step = base + rng.random_range(0..30);
                        let val = if rng.random_bool(0.1) { vec![0xc0] } else { float(rng.random_range(-1.0..1.0)) };
                        (step, val, rng.random_bool(0.5).then(|| rng.random_range(0..5)), f64::from(round))
                    })
                    .collect();
                s.write("m", &batch).await;
                model.apply(&batch);
            }
            _ => {
                let a = rng.random_range(-30..240);
                let b = a + rng.random_range(-5..80);
                assert_eq!(s.read("m", Some(a), Some(b), ALL).await, model.read(Some(a), Some(b), ALL), "{a}..={b}");
                let p = rng.random_range(1..200);
                let all = model.read(None, None, ALL);
                let steps: Vec<i64> = all.iter().map(|p| p.step).collect();
                let want: Vec<SeqPoint> = sample_indices(&steps, p).into_iter().map(|i| all[i].clone()).collect();
                let tx = s.db.create_trx().unwrap();
                assert_eq!(s.seqs.read_sampled(&tx, id("m"), p, ALL, true).await.unwrap().0, want, "p = {p}");
            }
        }
        s.check("m", &model).await;
    }
}

macro_rules! sequence_conformance_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        for layout in 0..2 {
                            // A fresh store per layout; the directory lives until the case ends.
                            let make: fn() -> (Database, Option<tempfile::TempDir>) = $make;
                            let (db, _dir) = make();
                            let runs = db.open_directory(&["data", "runs"]).await.unwrap();
                            let [kps, chunked] = layouts(&runs);
                            let (_, seqs) = if layout == 0 { kps } else { chunked };
                            super::$name(Store { db, seqs, runs }).await;
                        }
                    }
                };
            }

            case!(appends_across_chunk_boundaries_read_back_in_order);
            case!(out_of_order_and_repeated_steps_keep_the_last_write_of_each_step);
            case!(nan_infinities_nil_and_objects_read_back_byte_for_byte);
            case!(steps_up_to_2_pow_40_and_negative_steps_are_kept);
            case!(epochs_and_times_present_and_absent);
            case!(sampling_at_every_density_path_gives_the_points_of_reading_all_and_sampling);
            case!(deleting_a_sequence_or_its_run_removes_only_its_points);
            case!(a_batch_over_the_transaction_budget_fails_and_its_halves_store_the_same_points);
            case!(random_writes_reads_and_clears_match_a_btreemap);
        }
    };
}

fn embedded(engine: matyan::storage::kv::EmbeddedEngine) -> (Database, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    (Database::open_embedded(dir.path(), engine, Limits::FDB).unwrap(), Some(dir))
}

sequence_conformance_suite!(memory, || (Database::memory(), None));
sequence_conformance_suite!(fjall, || embedded(matyan::storage::kv::EmbeddedEngine::Fjall));
sequence_conformance_suite!(redb, || embedded(matyan::storage::kv::EmbeddedEngine::Redb));
