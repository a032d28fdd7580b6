//! The KV conformance suite: written once, instantiated for every backend (memory, fjall, redb,
//! and FoundationDB when built with `--features fdb` and `FDB_CLUSTER_FILE` names a cluster).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use matyan::storage::kv::{Database, KeySelector, KvError, Limits, RangeOption, RetryOptions, Transaction, atomic_add};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every test works under its own key prefix so a shared FoundationDB cluster stays clean.
fn k(prefix: &[u8], suffix: &str) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(suffix.as_bytes());
    key
}

async fn commit_pairs(db: &Database, pairs: &[(Vec<u8>, &[u8])]) {
    let tx = db.create_trx().unwrap();
    for (key, v) in pairs {
        tx.set(key, v);
    }
    tx.commit().await.unwrap();
}

fn keys(kvs: &[matyan::storage::kv::KeyValue], prefix: &[u8]) -> Vec<String> {
    kvs.iter().map(|kv| String::from_utf8(kv.key[prefix.len()..].to_vec()).unwrap()).collect()
}

async fn clean(db: &Database, prefix: &[u8]) {
    let tx = db.create_trx().unwrap();
    tx.clear_range(prefix, &matyan::storage::kv::strinc(prefix));
    tx.commit().await.unwrap();
}

pub async fn read_your_writes(db: Database, p: Vec<u8>) {
    clean(&db, &p).await;
    commit_pairs(&db, &[(k(&p, "a"), b"1")]).await;
    let tx = db.create_trx().unwrap();
    assert_eq!(tx.get(&k(&p, "a"), false).await.unwrap(), Some(b"1".to_vec()));
    tx.set(&k(&p, "b"), b"2");
    assert_eq!(tx.get(&k(&p, "b"), false).await.unwrap(), Some(b"2".to_vec()));
    tx.clear(&k(&p, "a"));
    assert_eq!(tx.get(&k(&p, "a"), false).await.unwrap(), None);
    let all = tx.get_range(&RangeOption::prefix(&p), false).await.unwrap();
    assert_eq!(keys(&all, &p), vec!["b"]);
    // Another transaction does not see uncommitted writes.
    let other = db.create_trx().unwrap();
    assert_eq!(other.get(&k(&p, "b"), false).await.unwrap(), None);
    tx.commit().await.unwrap();
    let after = db.create_trx().unwrap();
    assert_eq!(after.get(&k(&p, "a"), false).await.unwrap(), None);
    assert_eq!(after.get(&k(&p, "b"), false).await.unwrap(), Some(b"2".to_vec()));
}

/// A transaction that only writes: repeated writes of one key resolve to the last one.
pub async fn write_only_last_write_wins(db: Database, p: Vec<u8>) {
    clean(&db, &p).await;
    commit_pairs(&db, &[(k(&p, "c"), b"old")]).await;
    let tx = db.create_trx().unwrap();
    tx.set(&k(&p, "a"), b"1");
    tx.set(&k(&p, "a"), b"2");
    tx.clear(&k(&p, "b"));
    tx.set(&k(&p, "b"), b"3");
    tx.set(&k(&p, "c"), b"4");
    tx.clear(&k(&p, "c"));
    tx.commit().await.unwrap();
    let tx = db.create_trx().unwrap();
    let r = tx.get_range(&RangeOption::prefix(&p), false).await.unwrap();
    let got: Vec<_> = r.iter().map(|kv| (kv.key[p.len()..].to_vec(), kv.value.clone())).collect();
    assert_eq!(got, vec![(b"a".to_vec(), b"2".to_vec()), (b"b".to_vec(), b"3".to_vec())]);
}

pub async fn range_semantics_and_limits(db: Database, p: Vec<u8>) {
    clean(&db, &p).await;
    let pairs: Vec<(Vec<u8>, &[u8])> = ["a", "b", "c", "d", "e"].iter().map(|s| (k(&p, s), &b"v"[..])).collect();
    commit_pairs(&db, &pairs).await;
    let tx = db.create_trx().unwrap();
    let r = tx.get_range(&RangeOption::new(k(&p, "b"), k(&p, "d")), false).await.unwrap();
    assert_eq!(keys(&r, &p), vec!["b", "c"], "end is exclusive");
    let r = tx.get_range(&RangeOption::prefix(&p).limit(2), false).await.unwrap();
    assert_eq!(keys(&r, &p), vec!["a", "b"]);
    let r = tx.get_range(&RangeOption::prefix(&p).reverse(true).limit(2), false).await.unwrap();
    assert_eq!(keys(&r, &p), vec!["e", "d"], "reverse limit takes from the end");
    let r = tx.get_range(&RangeOption::prefix(&p).reverse(true), false).await.unwrap();
    assert_eq!(keys(&r, &p), vec!["e", "d", "c", "b", "a"]);
    let sel = RangeOption {
        begin: KeySelector::first_greater_than(k(&p, "b")),
        end: KeySelector::first_greater_than(k(&p, "d")),
        limit: 0,
        reverse: false,
    };
    let r = tx.get_range(&sel, false).await.unwrap();
    assert_eq!(keys(&r, &p), vec!["c", "d"], "first_greater_than excludes begin, includes end key");
    let r = tx.get_range(&RangeOption::new(k(&p, "d"), k(&p, "b")), false).await.unwrap();
    assert!(r.is_empty(), "begin after end reads nothing");
    let r = tx.get_range(&RangeOption::new(k(&p, "c"), k(&p, "c")), false).await.unwrap();
    assert!(r.is_empty(), "empty range");
    // Pending writes merge in order, and limits apply to the merged view.
    tx.set(&k(&p, "bb"), b"new");
    tx.clear(&k(&p, "c"));
    let r = tx.get_range(&RangeOption::prefix(&p).limit(3), false).await.unwrap();
    assert_eq!(keys(&r, &p), vec!["a", "b", "bb"]);
    let r = tx.get_range(&RangeOption::prefix(&p).reverse(true).limit(3), false).await.unwrap();
    assert_eq!(keys(&r, &p), vec!["e", "d", "bb"]);
}

pub async fn clear_range_then_set(db: Database, p: Vec<u8>) {
    clean(&db, &p).await;
    let pairs: Vec<(Vec<u8>, &[u8])> = ["a", "b", "c", "d"].iter().map(|s| (k(&p, s), &b"v"[..])).collect();
    commit_pairs(&db, &pairs).await;
    let tx = db.create_trx().unwrap();
    tx.set(&k(&p, "bz"), b"pending");
    tx.clear_range(&k(&p, "b"), &k(&p, "d"));
    assert_eq!(tx.get(&k(&p, "bz"), false).await.unwrap(), None, "clear_range removes pending writes");
    tx.set(&k(&p, "c"), b"after");
    let r = tx.get_range(&RangeOption::prefix(&p), false).await.unwrap();
    assert_eq!(keys(&r, &p), vec!["a", "c", "d"]);
    assert_eq!(r[1].value, b"after".to_vec());
    tx.commit().await.unwrap();
    let tx = db.create_trx().unwrap();
    let r = tx.get_range(&RangeOption::prefix(&p), false).await.unwrap();
    assert_eq!(keys(&r, &p), vec!["a", "c", "d"]);
    assert_eq!(r[1].value, b"after".to_vec());
}

pub async fn atomic_add_counts(db: Database, p: Vec<u8>) {
    clean(&db, &p).await;
    let key = k(&p, "counter");
    for _ in 0..3 {
        let tx = db.create_trx().unwrap();
        tx.atomic_add(&key, &1i64.to_le_bytes());
        tx.commit().await.unwrap();
    }
    let tx = db.create_trx().unwrap();
    let v = tx.get(&key, false).await.unwrap().unwrap();
    assert_eq!(i64::from_le_bytes(v.try_into().unwrap()), 3);
    // Read-your-writes over a pending add, and add after set in the same transaction.
    tx.atomic_add(&key, &10i64.to_le_bytes());
    let v = tx.get(&key, false).await.unwrap().unwrap();
    assert_eq!(i64::from_le_bytes(v.try_into().unwrap()), 13);
    tx.set(&k(&p, "fresh"), &5i64.to_le_bytes());
    tx.atomic_add(&k(&p, "fresh"), &(-1i64).to_le_bytes());
    tx.commit().await.unwrap();
    let tx = db.create_trx().unwrap();
    let v = tx.get(&k(&p, "fresh"), false).await.unwrap().unwrap();
    assert_eq!(i64::from_le_bytes(v.try_into().unwrap()), 4);
    // Concurrent adds never conflict: both commit.
    let t1 = db.create_trx().unwrap();
    let t2 = db.create_trx().unwrap();
    t1.atomic_add(&key, &1i64.to_le_bytes());
    t2.atomic_add(&key, &1i64.to_le_bytes());
    t1.commit().await.unwrap();
    t2.commit().await.unwrap();
    let tx = db.create_trx().unwrap();
    let v = tx.get(&key, false).await.unwrap().unwrap();
    assert_eq!(i64::from_le_bytes(v.try_into().unwrap()), 15);
}

pub async fn conflicting_transactions(db: Database, p: Vec<u8>) {
    clean(&db, &p).await;
    let key = k(&p, "x");
    commit_pairs(&db, &[(key.clone(), b"0")]).await;
    let t1 = db.create_trx().unwrap();
    let t2 = db.create_trx().unwrap();
    t1.get(&key, false).await.unwrap();
    t2.get(&key, false).await.unwrap();
    t1.set(&key, b"1");
    t2.set(&key, b"2");
    t1.commit().await.unwrap();
    let err = t2.commit().await.unwrap_err();
    assert_eq!(err, KvError::NotCommitted);
    assert!(err.is_retryable());
    // A range read conflicts with an insert inside the range.
    let t3 = db.create_trx().unwrap();
    t3.get_range(&RangeOption::prefix(&p), false).await.unwrap();
    t3.set(&k(&p, "summary"), b"s");
    commit_pairs(&db, &[(k(&p, "y"), b"new")]).await;
    assert_eq!(t3.commit().await.unwrap_err(), KvError::NotCommitted);
    // Snapshot reads add no conflict.
    let t4 = db.create_trx().unwrap();
    t4.get(&key, true).await.unwrap();
    t4.set(&k(&p, "other"), b"o");
    commit_pairs(&db, &[(key.clone(), b"3")]).await;
    t4.commit().await.unwrap();
    // Blind writes never conflict.
    let t5 = db.create_trx().unwrap();
    t5.set(&key, b"5");
    commit_pairs(&db, &[(key.clone(), b"4")]).await;
    t5.commit().await.unwrap();
}

/// Concurrent read-modify-write increments through the retry loop: no update is lost.
pub async fn no_lost_update_under_contention(db: Database, p: Vec<u8>) {
    clean(&db, &p).await;
    let key = k(&p, "n");
    let opts = RetryOptions { retry_limit: 100, initial_backoff: Duration::from_millis(1), ..RetryOptions::default() };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let db = db.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                db.run(&opts, |tx: Transaction| {
                    let key = key.clone();
                    async move {
                        let cur = tx.get(&key, false).await?.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
                        tokio::task::yield_now().await;
                        tx.set(&key, &(cur + 1).to_le_bytes());
                        Ok::<_, KvError>(())
                    }
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let tx = db.create_trx().unwrap();
    let v = tx.get(&key, false).await.unwrap().unwrap();
    assert_eq!(u64::from_le_bytes(v.try_into().unwrap()), 80);
}

pub async fn limit_errors(db: Database, p: Vec<u8>) {
    let limits = Limits::FDB;
    // Keys exactly at the limit pass; one byte more fails with key_too_large at commit.
    let mut ok_key = p.clone();
    ok_key.resize(limits.max_key_bytes, b'k');
    let tx = db.create_trx().unwrap();
    tx.set(&ok_key, b"v");
    tx.commit().await.unwrap();
    let mut big_key = p.clone();
    big_key.resize(limits.max_key_bytes + 1, b'k');
    let tx = db.create_trx().unwrap();
    tx.set(&big_key, b"v");
    assert_eq!(tx.commit().await.unwrap_err().code(), 2102);
    let tx = db.create_trx().unwrap();
    tx.set(&k(&p, "v"), &vec![0u8; limits.max_value_bytes]);
    tx.commit().await.unwrap();
    let tx = db.create_trx().unwrap();
    tx.set(&k(&p, "v"), &vec![0u8; limits.max_value_bytes + 1]);
    assert_eq!(tx.commit().await.unwrap_err().code(), 2103);
    let tx = db.create_trx().unwrap();
    tx.set(b"\xffsystem", b"v");
    assert_eq!(tx.commit().await.unwrap_err().code(), 2004);
    // 120 values of 90,000 bytes: about 10.8 MB of mutations, over the 10,000,000-byte limit.
    let tx = db.create_trx().unwrap();
    for i in 0..120 {
        tx.set(&k(&p, &format!("big{i:03}")), &vec![1u8; 90_000]);
    }
    let err = tx.commit().await.unwrap_err();
    assert_eq!(err.code(), 2101, "{err}");
    assert!(!err.is_retryable());
    // 100 of them (about 9 MB) fit.
    let tx = db.create_trx().unwrap();
    for i in 0..100 {
        tx.set(&k(&p, &format!("big{i:03}")), &vec![1u8; 90_000]);
    }
    tx.commit().await.unwrap();
    clean(&db, &p).await;
}

/// Keys longer than the limit cannot be stored, so reads of them find nothing and ranges or clears
/// bounded by them act as the bounds cut to the limit (FoundationDB's answers); no engine panics,
/// whatever it can hold (fjall refuses keys past 65,535 bytes).
pub async fn keys_past_the_limit_are_absent_when_read_and_cut_in_ranges(db: Database, p: Vec<u8>) {
    clean(&db, &p).await;
    commit_pairs(&db, &[(k(&p, "a"), b"1"), (k(&p, "b"), b"2")]).await;
    let huge = |base: Vec<u8>| {
        let mut key = base;
        key.resize(70_000, b'z');
        key
    };
    let (after_a, after_b) = (huge(k(&p, "a")), huge(k(&p, "b")));
    let tx = db.create_trx().unwrap();
    assert_eq!(tx.get(&after_a, false).await.unwrap(), None);
    assert_eq!(tx.get(&after_a, true).await.unwrap(), None);
    let range = RangeOption::new(after_a.clone(), after_b.clone());
    assert_eq!(keys(&tx.get_range(&range, false).await.unwrap(), &p), vec!["b"]);
    let range = RangeOption::new(p.clone(), after_a.clone());
    assert_eq!(keys(&tx.get_range(&range, true).await.unwrap(), &p), vec!["a"]);
    tx.clear_range(&after_a, &after_b);
    tx.commit().await.unwrap();
    let tx = db.create_trx().unwrap();
    assert_eq!(keys(&tx.get_range(&RangeOption::prefix(&p), false).await.unwrap(), &p), vec!["a"]);
    clean(&db, &p).await;
}

pub async fn size_accounting(db: Database, p: Vec<u8>) {
    let tx = db.create_trx().unwrap();
    let before = tx.approximate_size().await.unwrap();
    tx.set(&k(&p, "key"), &[0u8; 1000]);
    let after_one = tx.approximate_size().await.unwrap();
    assert!(after_one - before >= 1000 + 2 * (p.len() + 3), "mutation and conflict range are counted");
    tx.set(&k(&p, "key"), &[0u8; 1000]);
    let after_two = tx.approximate_size().await.unwrap();
    assert!(after_two - after_one >= 1000, "an overwritten set still counts, as in FoundationDB");
    tx.cancel();
}

pub async fn retry_loop_behaviour(db: Database, p: Vec<u8>) {
    let calls = Arc::new(AtomicU32::new(0));
    let opts = RetryOptions { initial_backoff: Duration::from_millis(1), ..RetryOptions::default() };
    // Retryable errors are retried and the body's result returned.
    let c = calls.clone();
    let key = k(&p, "retry");
    let out = db
        .run(&opts, |tx: Transaction| {
            let c = c.clone();
            let key = key.clone();
            async move {
                tx.set(&key, b"x");
                if c.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(KvError::NotCommitted);
                }
                Ok(7)
            }
        })
        .await
        .unwrap();
    assert_eq!((out, calls.load(Ordering::SeqCst)), (7, 3));
    // Non-retryable errors return at once.
    calls.store(0, Ordering::SeqCst);
    let c = calls.clone();
    let err = db
        .run(&opts, |_tx: Transaction| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(KvError::TransactionTooLarge { size: 1, limit: 0 })
            }
        })
        .await
        .unwrap_err();
    assert_eq!((err.code(), calls.load(Ordering::SeqCst)), (2101, 1));
    // The retry limit bounds attempts: limit 2 means 3 attempts, then the last error.
    calls.store(0, Ordering::SeqCst);
    let c = calls.clone();
    let limited = RetryOptions { retry_limit: 2, ..opts };
    let err = db
        .run(&limited, |_tx: Transaction| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(KvError::NotCommitted)
            }
        })
        .await
        .unwrap_err();
    assert_eq!((err, calls.load(Ordering::SeqCst)), (KvError::NotCommitted, 3));
    // The timeout covers a slow attempt.
    let short = RetryOptions { timeout: Duration::from_millis(50), ..opts };
    let err = db
        .run(&short, |_tx: Transaction| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<(), KvError>(())
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), 1031);
}

pub async fn directories_are_stable(db: Database, _p: Vec<u8>) {
    let runs = db.open_directory(&["data", "runs"]).await.unwrap();
    let indexes = db.open_directory(&["data", "indexes"]).await.unwrap();
    let system = db.open_directory(&["system"]).await.unwrap();
    assert_eq!(db.open_directory(&["data", "runs"]).await.unwrap(), runs);
    assert!(runs != indexes && indexes != system && runs != system);
    for (a, b) in [(&runs, &indexes), (&runs, &system), (&indexes, &system)] {
        assert!(!a.starts_with(b) && !b.starts_with(a), "directory prefixes must not nest");
    }
}

/// Random operations inside one transaction checked against a `BTreeMap` model, before and after
/// commit: exercises the merge of pending writes, clears and adds over committed data.
pub async fn random_ops_match_model(db: Database, p: Vec<u8>) {
    clean(&db, &p).await;
    let mut rng = StdRng::seed_from_u64(7);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let key_of = |i: u8| k(&p, &format!("{i:02}"));
    // Committed base data.
    let tx = db.create_trx().unwrap();
    for i in (0..40).step_by(3) {
        tx.set(&key_of(i), &[i]);
        model.insert(key_of(i), vec![i]);
    }
    tx.commit().await.unwrap();
    for round in 0..6 {
        let tx = db.create_trx().unwrap();
        for _ in 0..60 {
            match rng.random_range(0..7) {
                0 | 1 => {
                    let i = rng.random_range(0..40);
                    let v = vec![rng.random()];
                    tx.set(&key_of(i), &v);
                    model.insert(key_of(i), v);
                }
                2 => {
                    let i = rng.random_range(0..40);
                    tx.clear(&key_of(i));
                    model.remove(&key_of(i));
                }
                3 => {
                    let a = rng.random_range(0..40);
                    let b = rng.random_range(a..=40);
                    tx.clear_range(&key_of(a), &key_of(b));
                    let doomed: Vec<_> = model.range(key_of(a)..key_of(b)).map(|(k, _)| k.clone()).collect();
                    for d in doomed {
                        model.remove(&d);
                    }
                }
                4 => {
                    let i = rng.random_range(0..40);
                    let param = [rng.random_range(0..5u8)];
                    tx.atomic_add(&key_of(i), &param);
                    let v = atomic_add(model.get(&key_of(i)).map(Vec::as_slice), &param);
                    model.insert(key_of(i), v);
                }
                5 => {
                    let i = rng.random_range(0..40);
                    assert_eq!(tx.get(&key_of(i), rng.random()).await.unwrap(), model.get(&key_of(i)).cloned());
                }
                _ => {
                    let a = rng.random_range(0..40);
                    let b = rng.random_range(a..=40);
                    let limit = rng.random_range(0..6);
                    let reverse = rng.random();
                    let opt = RangeOption::new(key_of(a), key_of(b)).limit(limit).reverse(reverse);
                    let got = tx.get_range(&opt, rng.random()).await.unwrap();
                    let mut want: Vec<_> =
                        model.range(key_of(a)..key_of(b)).map(|(k, v)| (k.clone(), v.clone())).collect();
                    if reverse {
                        want.reverse();
                    }
                    if limit > 0 {
                        want.truncate(limit);
                    }
                    let got: Vec<_> = got.into_iter().map(|kv| (kv.key, kv.value)).collect();
                    assert_eq!(got, want, "round {round}: range {a}..{b} limit {limit} reverse {reverse}");
                }
            }
        }
        tx.commit().await.unwrap();
        let check = db.create_trx().unwrap();
        let all = check.get_range(&RangeOption::prefix(&p), false).await.unwrap();
        let all: Vec<_> = all.into_iter().map(|kv| (kv.key, kv.value)).collect();
        let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(all, want, "after commit of round {round}");
    }
}

/// Two reads of one transaction at once (on two tasks, so on two threads where the runtime has
/// them): both read the transaction's one snapshot, and each records its read conflict, so a later
/// commit inside either range fails the transaction's commit.
pub async fn concurrent_reads_share_one_snapshot_and_both_conflict(db: Database, p: Vec<u8>) {
    for changed in ["a/2", "b"] {
        clean(&db, &p).await;
        commit_pairs(&db, &[(k(&p, "a/1"), b"0"), (k(&p, "b"), b"0")]).await;
        let tx = db.create_trx().unwrap();
        let range = RangeOption::prefix(&k(&p, "a/"));
        let point = k(&p, "b");
        let both = |tx: Transaction| {
            let (range, point, p) = (range.clone(), point.clone(), p.clone());
            async move {
                let t = tx.clone();
                let r = tokio::spawn(async move { t.get_range(&range, false).await.unwrap() });
                let g = tokio::spawn(async move { tx.get(&point, false).await.unwrap() });
                (keys(&r.await.unwrap(), &p), g.await.unwrap())
            }
        };
        let first = both(tx.clone()).await;
        assert_eq!(first, (vec!["a/1".to_owned()], Some(b"0".to_vec())));
        commit_pairs(&db, &[(k(&p, changed), b"1")]).await;
        assert_eq!(both(tx.clone()).await, first, "a later commit is not seen: one snapshot");
        tx.set(&k(&p, "w"), b"w");
        assert_eq!(tx.commit().await.unwrap_err(), KvError::NotCommitted, "a write to {changed} conflicts");
    }
}

/// Forgetting a range touches no key outside it and loses no commit made meanwhile; afterwards a
/// read of the range sees, for each of its keys, the value it had or nothing (an engine frees a
/// forgotten range its own way: at once, in part or later). An empty or inverted range is a no-op.
pub async fn forget_range_touches_nothing_outside_it_and_loses_no_concurrent_commit(db: Database, p: Vec<u8>) {
    clean(&db, &p).await;
    let inside = ["c", "d", "d/1", "e"];
    let pairs: Vec<(Vec<u8>, &[u8])> =
        ["a", "b", "c", "d", "d/1", "e", "f", "g"].iter().map(|s| (k(&p, s), &b"v"[..])).collect();
    commit_pairs(&db, &pairs).await;
    let writer = {
        let (db, p) = (db.clone(), p.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                commit_pairs(&db, &[(k(&p, &format!("x{i:02}")), b"w"), (k(&p, "a"), format!("{i}").as_bytes())]).await;
            }
        })
    };
    db.forget_range(&k(&p, "c"), &k(&p, "f")).await.unwrap();
    db.forget_range(&k(&p, "f"), &k(&p, "c")).await.unwrap();
    db.forget_range(&k(&p, "c"), &k(&p, "c")).await.unwrap();
    writer.await.unwrap();
    let tx = db.create_trx().unwrap();
    let all = tx.get_range(&RangeOption::prefix(&p), false).await.unwrap();
    let got: BTreeMap<String, Vec<u8>> =
        all.into_iter().map(|kv| (String::from_utf8(kv.key[p.len()..].to_vec()).unwrap(), kv.value)).collect();
    let mut want: BTreeMap<String, Vec<u8>> =
        ["b", "f", "g"].iter().map(|s| ((*s).to_owned(), b"v".to_vec())).collect();
    want.insert("a".to_owned(), b"39".to_vec());
    want.extend((0..40).map(|i| (format!("x{i:02}"), b"w".to_vec())));
    for key in inside {
        if let Some(v) = got.get(key) {
            assert_eq!(v, b"v", "a forgotten key shows only a value it had");
            want.insert(key.to_owned(), v.clone());
        }
    }
    assert_eq!(got, want, "keys outside the forgotten range are exactly as committed");
}

macro_rules! kv_conformance_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            async fn db() -> Option<(Database, Vec<u8>)> {
                let make: fn() -> Option<Database> = $make;
                let db = make()?;
                let prefix = db.open_directory(&["matyan_rs_tests", stringify!($backend)]).await.unwrap();
                Some((db, prefix))
            }

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some((db, prefix)) = db().await else {
                            eprintln!("skipped: backend not configured");
                            return;
                        };
                        let mut p = prefix;
                        p.extend_from_slice(concat!(stringify!($name), "/").as_bytes());
                        super::$name(db, p).await;
                    }
                };
            }

            case!(read_your_writes);
            case!(range_semantics_and_limits);
            case!(write_only_last_write_wins);
            case!(clear_range_then_set);
            case!(atomic_add_counts);
            case!(conflicting_transactions);
            case!(no_lost_update_under_contention);
            case!(limit_errors);
            case!(size_accounting);
            case!(retry_loop_behaviour);
            case!(directories_are_stable);
            case!(random_ops_match_model);
            case!(keys_past_the_limit_are_absent_when_read_and_cut_in_ranges);
            case!(concurrent_reads_share_one_snapshot_and_both_conflict);
            case!(forget_range_touches_nothing_outside_it_and_loses_no_concurrent_commit);
        }
    };
}

/// Temporary directories live as long as the test process: leaked on purpose, cleaned by the OS.
fn temp_dir() -> std::path::PathBuf {
    tempfile::tempdir().unwrap().keep()
}

kv_conformance_suite!(memory, || Some(Database::memory()));
kv_conformance_suite!(fjall, || Some(
    Database::open_embedded(&temp_dir(), matyan::storage::kv::EmbeddedEngine::Fjall, Limits::FDB).unwrap()
));
kv_conformance_suite!(redb, || Some(
    Database::open_embedded(&temp_dir(), matyan::storage::kv::EmbeddedEngine::Redb, Limits::FDB).unwrap()
));
#[cfg(feature = "fdb")]
kv_conformance_suite!(fdb, || {
    let cluster = std::env::var_os("FDB_CLUSTER_FILE")?;
    Some(Database::open_fdb(Some(std::path::Path::new(&cluster))).unwrap())
});

/// Local backends only: FoundationDB's 5 s lifetime is not configurable there.
#[tokio::test]
async fn transaction_too_old_after_lifetime() {
    let limits = Limits { txn_lifetime: Duration::from_millis(50), ..Limits::FDB };
    let db = Database::memory_with_limits(limits);
    let tx = db.create_trx().unwrap();
    tx.get(b"a", false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let err = tx.get(b"a", false).await.unwrap_err();
    assert_eq!(err.code(), 1007);
    assert!(err.is_retryable());
    // A write-only transaction takes its version at commit, so it never gets too old.
    let tx = db.create_trx().unwrap();
    tx.set(b"a", b"1");
    tokio::time::sleep(Duration::from_millis(80)).await;
    tx.commit().await.unwrap();
}

/// Embedded backends: what a transaction committed is there after the store is closed and reopened.
#[tokio::test]
async fn durability_across_reopen() {
    for engine in [matyan::storage::kv::EmbeddedEngine::Fjall, matyan::storage::kv::EmbeddedEngine::Redb] {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::open_embedded(dir.path(), engine, Limits::FDB).unwrap();
            let tx = db.create_trx().unwrap();
            tx.set(b"k1", b"v1");
            tx.set(b"k2", b"v2");
            tx.commit().await.unwrap();
            let tx = db.create_trx().unwrap();
            tx.clear(b"k2");
            tx.atomic_add(b"n", &3u32.to_le_bytes());
            tx.commit().await.unwrap();
        }
        let db = Database::open_embedded(dir.path(), engine, Limits::FDB).unwrap();
        let tx = db.create_trx().unwrap();
        let all = tx.get_range(&RangeOption::new(b"".to_vec(), b"\xff".to_vec()), false).await.unwrap();
        let got: Vec<_> = all.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert_eq!(
            got,
            vec![(b"k1".to_vec(), b"v1".to_vec()), (b"n".to_vec(), 3u32.to_le_bytes().to_vec())],
            "{engine:?}"
        );
        // The same directory prefixes come back after reopening.
        let first = db.open_directory(&["data", "runs"]).await.unwrap();
        drop(tx);
        drop(db);
        let db = Database::open_embedded(dir.path(), engine, Limits::FDB).unwrap();
        assert_eq!(db.open_directory(&["data", "runs"]).await.unwrap(), first);
    }
}
