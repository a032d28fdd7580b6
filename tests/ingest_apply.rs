//! The handlers of `ingest-storage.md` §1.7 applied through [`Applier::apply`] on the memory
//! backend: the worked example's bytes, the 10,003 golden records, exactly-once replay, tombstones,
//! the outbox, dead letters, the §8 handler cases and the deliberate fixes of §6.

mod common;

use std::collections::HashMap;

use common::{NOW, RUN, golden_rows};
use matyan::ingest::apply::{Applier, ApplyOutcome, IdRequest, position_uuid};
use matyan::ingest::message::{IngestMessage, LogMetric, LogRecord, Payload};
use matyan::ingest::{Entry, MessageType, decode};
use matyan::storage::context_id::context_to_id;
use matyan::storage::kv::{Database, RangeOption, RetryOptions, Transaction, strinc};
use matyan::storage::layout::{Columns, EntityKind, Layout, SeqId};
use matyan::storage::tuple::Elem;
use matyan::storage::value::{self, Value};
use serde_json::{Value as J, json};

// ---------------------------------------------------------------------------------------------
// Helpers

struct Fixture {
    db: Database,
    applier: Applier,
    next_offset: i64,
}

impl Fixture {
    async fn new() -> Self {
        let db = Database::memory();
        let layout = Layout::open(&db).await.unwrap();
        Fixture { db, applier: Applier::new(layout), next_offset: 0 }
    }

    fn layout(&self) -> &Layout {
        self.applier.layout()
    }

    /// Entries for `msgs` at the next offsets of partition 0.
    fn entries(&mut self, msgs: Vec<IngestMessage>) -> Vec<Entry> {
        msgs.into_iter()
            .map(|message| {
                let offset = self.next_offset;
                self.next_offset += 1;
                Entry { partition: 0, offset, message }
            })
            .collect()
    }

    /// Applies and commits in one retried transaction, with position-derived ids.
    async fn apply_entries(&self, run: &str, entries: &[Entry], now: f64) -> ApplyOutcome {
        let applier = &self.applier;
        self.db
            .run(&RetryOptions::default(), |tx| async move {
                applier.apply(&tx, run, entries, now, &mut |r: &IdRequest<'_>| position_uuid(r)).await
            })
            .await
            .unwrap()
    }

    /// Applies messages of `run` at the next offsets, in one transaction.
    async fn apply(&mut self, run: &str, msgs: Vec<J>, now: f64) -> ApplyOutcome {
        let msgs = msgs.into_iter().map(|m| msg(run, m)).collect();
        let entries = self.entries(msgs);
        self.apply_entries(run, &entries, now).await
    }

    fn tx(&self) -> Transaction {
        self.db.create_trx().unwrap()
    }

    async fn meta(&self, run: &str) -> Option<Value> {
        self.layout().runs.get_run(&self.tx(), run, false).await.unwrap()
    }

    async fn points(&self, run: &str, ctx_id: u32, name: &str) -> Vec<(i64, Value, Option<i64>)> {
        let id = SeqId { run, ctx_id, name };
        let cols = Columns { epoch: true, time: true };
        let points = self.layout().seqs.read(&self.tx(), id, None, None, cols, false).await.unwrap();
        points.into_iter().map(|p| (p.step, value::decode(&p.val).unwrap(), p.epoch)).collect()
    }

    async fn runs_key(&self, run: &str, rest: &[Elem]) -> Option<Value> {
        let key = self.layout().runs.runs.key(run, rest);
        self.tx().get(&key, false).await.unwrap().map(|b| value::decode(&b).unwrap())
    }

    async fn trace(&self, run: &str, ctx_id: u32, name: &str, field: &str) -> Option<Value> {
        self.runs_key(run, &[Elem::from("traces"), Elem::from(ctx_id), Elem::from(name), Elem::from(field)]).await
    }

    async fn context(&self, run: &str, ctx_id: u32) -> Option<Value> {
        self.runs_key(run, &[Elem::from("contexts"), Elem::from(ctx_id)]).await
    }

    async fn index_entries(&self, run: &str) -> Vec<Vec<Elem>> {
        self.layout().indexes().entries_of_run(&self.tx(), run, None).await.unwrap()
    }

    async fn attrs(&self, run: &str, path: &[&str]) -> Option<Value> {
        let mut full = vec![Elem::from("attrs")];
        full.extend(path.iter().map(|p| Elem::from(*p)));
        self.layout().runs.runs.tree_get(&self.tx(), run, &full, false).await.unwrap()
    }

    async fn entity(&self, kind: EntityKind, name: &str) -> Option<(String, Vec<(String, Value)>)> {
        let tx = self.tx();
        let uuid = self.layout().system.uuid_by_name(&tx, kind, name).await.unwrap()?;
        let fields = self.layout().system.get(&tx, kind, &uuid).await.unwrap()?;
        Some((uuid, fields))
    }

    /// Every key and value of the store, directory layer included.
    async fn full_dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let kvs = self.tx().get_range(&RangeOption::new(vec![], vec![0xff]), false).await.unwrap();
        kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
    }

    /// Rows of runs, indexes and system as `(directory, key suffix hex, value hex)`, sorted.
    async fn reference_rows(&self) -> Vec<(String, String, String)> {
        let tx = self.tx();
        let dirs = &self.layout().dirs;
        let mut rows = Vec::new();
        for (name, prefix) in [("data/runs", &dirs.runs), ("data/indexes", &dirs.indexes), ("system", &dirs.system)] {
            for kv in tx.get_range(&RangeOption::new(prefix.clone(), strinc(prefix)), false).await.unwrap() {
                rows.push((name.to_string(), hex::encode(&kv.key[prefix.len()..]), hex::encode(&kv.value)));
            }
        }
        rows.sort();
        rows
    }
}

/// Decodes a message built like the gateway's records.
fn msg(run: &str, m: J) -> IngestMessage {
    let mut record = json!({"run_id": run, "timestamp": "2025-01-01T00:00:00Z", "payload": {}});
    for (k, v) in m.as_object().unwrap() {
        record[k] = v.clone();
    }
    decode(&serde_json::to_vec(&record).unwrap()).unwrap()
}

fn create() -> J {
    json!({"type": "create_run", "payload": {"force_resume": false}})
}

fn metric(name: &str, value: J, step: J, ctx: J) -> J {
    json!({"type": "log_metric", "payload": {"name": name, "value": value, "step": step, "epoch": null,
        "context": ctx, "dtype": "float", "client_datetime": "2025-01-01T00:00:00+00:00"}})
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn meta_field<'a>(meta: &'a Value, field: &str) -> &'a Value {
    meta.get(field).unwrap_or_else(|| panic!("meta has no {field}: {meta:?}"))
}

// ---------------------------------------------------------------------------------------------
// Golden data

#[tokio::test]
async fn worked_example_messages_through_apply_reproduce_the_36_golden_rows() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden-vectors.json")).unwrap();
    let golden: J = serde_json::from_str(&text).unwrap();
    let messages: Vec<IngestMessage> = golden["worked_example"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| decode(&serde_json::to_vec(m).unwrap()).unwrap())
        .collect();
    assert_eq!(messages.len(), 5);
    let mut fx = Fixture::new().await;
    let entries = fx.entries(messages);
    let outcome = fx.apply_entries(RUN, &entries, NOW).await;
    assert_eq!(outcome.applied_total(), 5);
    assert_eq!(outcome.applied_of(MessageType::LogMetric), 3);
    assert_eq!(outcome.checkpoints, vec![(0, 4)]);
    let got = fx.reference_rows().await;
    let want = golden_rows();
    assert_eq!(want.len(), 36);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "first differing row");
    }
    assert_eq!(got.len(), want.len());
    // Our checkpoint lives in our own directory only.
    assert_eq!(fx.applier.checkpoint(&fx.tx(), RUN, 0).await.unwrap(), Some(4));
}

fn golden_10k() -> Vec<Entry> {
    common::golden_records()
        .into_iter()
        .map(|r| Entry {
            partition: i32::try_from(r.partition).unwrap(),
            offset: r.offset,
            message: decode(&r.value).unwrap(),
        })
        .collect()
}

async fn apply_golden(fx: &Fixture, entries: &[Entry], run: &str) -> ApplyOutcome {
    let mut total = ApplyOutcome::default();
    for (i, chunk) in entries.chunks(100).enumerate() {
        let outcome = fx.apply_entries(run, chunk, NOW + i as f64).await;
        for (k, n) in outcome.applied {
            *total.applied.entry(k).or_insert(0) += n;
        }
        total.replayed += outcome.replayed;
        total.tombstoned += outcome.tombstoned;
        total.dead_letters.extend(outcome.dead_letters);
    }
    total
}

#[tokio::test]
async fn golden_10k_records_give_10000_points_traces_contexts_and_a_finalized_run() {
    let entries = golden_10k();
    assert_eq!(entries.len(), 10_003);
    let run = entries[0].message.run_id.clone();
    let fx = Fixture::new().await;
    let outcome = apply_golden(&fx, &entries, &run).await;
    assert_eq!(outcome.applied_total(), 10_003);
    assert_eq!(outcome.applied_of(MessageType::LogMetric), 10_000);
    assert!(outcome.dead_letters.is_empty());
    let mut total = 0;
    for subset in ["train", "val"] {
        let ctx = json!({"subset": subset});
        let ctx_id = context_to_id(&ctx);
        let points = fx.points(&run, ctx_id, "loss").await;
        assert_eq!(points.len(), 5_000, "{subset}");
        assert_eq!(points.first().unwrap().0, 0);
        assert_eq!(points.last().unwrap().0, 4_999);
        assert_eq!(points.last().unwrap().2, Some(4));
        total += points.len();
        assert_eq!(fx.context(&run, ctx_id).await, Some(Value::from(&ctx)));
        assert_eq!(fx.trace(&run, ctx_id, "loss", "last_step").await, Some(Value::Int(4_999)));
        assert_eq!(fx.trace(&run, ctx_id, "loss", "dtype").await, Some(Value::from("float")));
        // The last record of each context gives `last`.
        let last_value = entries
            .iter()
            .rev()
            .find_map(|e| match &e.message.payload {
                Payload::LogMetric(m) if m.context.id == ctx_id => Some(m.value.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(fx.trace(&run, ctx_id, "loss", "last").await, Some(last_value.clone()));
        assert_eq!(points.last().unwrap().1, last_value);
    }
    assert_eq!(total, 10_000);
    let meta = fx.meta(&run).await.unwrap();
    assert_eq!(meta_field(&meta, "active"), &Value::Bool(false));
    assert!(f(meta_field(&meta, "finalized_at")) >= NOW);
    assert_eq!(meta_field(&meta, "duration"), &Value::Nil);
    assert!(meta_field(&meta, "client_start_ts").as_f64().is_some());
    assert_eq!(fx.attrs(&run, &["hparams", "batch_size"]).await, Some(Value::Int(32)));
    assert_eq!(fx.applier.checkpoint(&fx.tx(), &run, 3).await.unwrap(), Some(10_002));
}

#[tokio::test]
async fn replayed_records_are_skipped_fixing_reference_duplicates() {
    let entries = golden_10k();
    let run = entries[0].message.run_id.clone();
    let fx = Fixture::new().await;
    apply_golden(&fx, &entries, &run).await;
    let before = fx.full_dump().await;
    // Redelivery of everything, at a later clock and in other batch boundaries.
    let mut replay = ApplyOutcome::default();
    for chunk in entries.chunks(333) {
        let outcome = fx.apply_entries(&run, chunk, NOW + 1_000_000.0).await;
        replay.replayed += outcome.replayed;
        assert_eq!(outcome.applied_total(), 0);
        assert!(outcome.checkpoints.is_empty());
    }
    assert_eq!(replay.replayed, 10_003);
    let after = fx.full_dump().await;
    assert_eq!(before.len(), after.len());
    assert!(before == after, "a replay changed the store");
}

// ---------------------------------------------------------------------------------------------
// Exactly once, tombstones, outbox

#[tokio::test]
async fn a_batch_replayed_after_an_unknown_commit_result_changes_nothing() {
    let mut fx = Fixture::new().await;
    let msgs = vec![msg(RUN, create()), msg(RUN, metric("loss", json!(0.5), J::Null, J::Null))];
    let entries = fx.entries(msgs);
    fx.apply_entries(RUN, &entries, NOW).await;
    let before = fx.full_dump().await;
    // The same transaction body again (as after commit_unknown_result): all replayed.
    let outcome = fx.apply_entries(RUN, &entries, NOW + 5.0).await;
    assert_eq!(outcome.replayed, 2);
    assert_eq!(outcome.applied_total(), 0);
    assert!(fx.full_dump().await == before);
    // Entries past the checkpoint in a mixed batch are applied, the older ones skipped.
    let more = fx.entries(vec![msg(RUN, metric("loss", json!(0.25), J::Null, J::Null))]);
    let mixed: Vec<Entry> = entries.iter().chain(&more).cloned().collect();
    let outcome = fx.apply_entries(RUN, &mixed, NOW + 6.0).await;
    assert_eq!((outcome.replayed, outcome.applied_total()), (2, 1));
    let steps: Vec<i64> = fx.points(RUN, 0, "loss").await.iter().map(|p| p.0).collect();
    assert_eq!(steps, vec![0, 1]);
    assert_eq!(fx.applier.checkpoint(&fx.tx(), RUN, 0).await.unwrap(), Some(2));
    assert_eq!(fx.applier.checkpoint(&fx.tx(), RUN, 1).await.unwrap(), None);
}

#[tokio::test]
async fn checkpoints_are_per_run_and_partition() {
    let fx = Fixture::new().await;
    let e = |partition, offset, run: &str| Entry { partition, offset, message: msg(run, create()) };
    let outcome = fx.apply_entries("a", &[e(1, 10, "a"), e(2, 5, "a")], NOW).await;
    assert_eq!(outcome.checkpoints, vec![(1, 10), (2, 5)]);
    let outcome = fx.apply_entries("b", &[e(1, 3, "b")], NOW).await;
    assert_eq!(outcome.replayed, 0, "run b has its own checkpoint");
    let tx = fx.tx();
    assert_eq!(fx.applier.checkpoint(&tx, "a", 1).await.unwrap(), Some(10));
    assert_eq!(fx.applier.checkpoint(&tx, "a", 2).await.unwrap(), Some(5));
    assert_eq!(fx.applier.checkpoint(&tx, "b", 1).await.unwrap(), Some(3));
    // Duplicates inside one batch are replays too.
    let outcome = fx.apply_entries("c", &[e(0, 1, "c"), e(0, 1, "c"), e(0, 0, "c")], NOW).await;
    assert_eq!((outcome.applied_total(), outcome.replayed), (1, 2));
}

#[tokio::test]
async fn tombstone_wins_create_log_delete_late_log_leaves_no_run_data_and_one_outbox_event() {
    let mut fx = Fixture::new().await;
    fx.apply(RUN, vec![create(), metric("loss", json!(0.5), json!(0), J::Null)], NOW).await;
    assert!(fx.meta(RUN).await.is_some());
    let outcome = fx.apply(RUN, vec![json!({"type": "delete_run"})], NOW + 1.0).await;
    assert!(outcome.deleted);
    let late = fx
        .apply(
            RUN,
            vec![
                metric("loss", json!(0.4), json!(1), J::Null),
                create(),
                json!({"type": "add_tag", "payload": {"tag_name": "t"}}),
            ],
            NOW + 2.0,
        )
        .await;
    assert_eq!((late.tombstoned, late.applied_total()), (3, 0));
    assert_eq!(late.checkpoints, vec![(0, 5)], "the checkpoint still advances");
    assert!(fx.meta(RUN).await.is_none());
    assert!(fx.points(RUN, 0, "loss").await.is_empty());
    let tx = fx.tx();
    let (b, e) = fx.layout().runs.runs.range(RUN, &[]);
    assert!(tx.get_range(&RangeOption::new(b, e), false).await.unwrap().is_empty(), "no run data");
    assert!(fx.index_entries(RUN).await.is_empty());
    assert!(fx.entity(EntityKind::Tag, "t").await.is_none());
    assert!(fx.layout().indexes().is_deleted(&tx, RUN).await.unwrap());
    let outbox = fx.applier.outbox(&tx, 0).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!((outbox[0].partition, outbox[0].offset), (0, 2));
    let event = outbox[0].event.to_json().unwrap();
    assert_eq!(event["type"], "run_deleted");
    assert_eq!(event["payload"], json!({"run_id": RUN}));
    assert_eq!(event["timestamp"], "2025-01-01T00:00:01.000000Z");
    // Removing a published event empties the outbox.
    let tx = fx.tx();
    fx.applier.remove_outbox(&tx, 0, 2);
    tx.commit().await.unwrap();
    assert!(fx.applier.outbox(&fx.tx(), 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn messages_after_a_delete_in_the_same_batch_are_tombstoned() {
    let mut fx = Fixture::new().await;
    let outcome = fx
        .apply(RUN, vec![create(), json!({"type": "delete_run"}), metric("loss", json!(1.0), json!(0), J::Null)], NOW)
        .await;
    assert_eq!(outcome.applied_of(MessageType::CreateRun), 1);
    assert_eq!(outcome.applied_of(MessageType::DeleteRun), 1);
    assert_eq!(outcome.tombstoned, 1);
    assert!(fx.meta(RUN).await.is_none());
    assert!(fx.points(RUN, 0, "loss").await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Dead letters

#[tokio::test]
async fn malformed_at_apply_message_is_dead_lettered_with_neighbours_applied() {
    let mut fx = Fixture::new().await;
    // An integer beyond msgpack's range decodes nowhere, so the message is built by hand.
    let bad = IngestMessage::new(
        RUN,
        0.0,
        Payload::LogMetric(LogMetric {
            name: "loss".into(),
            value: Value::Int(i128::MAX),
            step: Some(7),
            epoch: None,
            context: matyan::ingest::message::Context::empty().into(),
            dtype: "int".into(),
        }),
    );
    let msgs = vec![msg(RUN, create()), bad, msg(RUN, metric("loss", json!(0.5), json!(8), J::Null))];
    let entries = fx.entries(msgs);
    let outcome = fx.apply_entries(RUN, &entries, NOW).await;
    assert_eq!(outcome.dead_letters, vec![(1, "encode_error")]);
    assert_eq!(outcome.applied_total(), 2);
    assert_eq!(outcome.checkpoints, vec![(0, 2)]);
    assert!(fx.meta(RUN).await.is_some());
    let points = fx.points(RUN, 0, "loss").await;
    assert_eq!(points.iter().map(|p| p.0).collect::<Vec<_>>(), vec![8], "nothing of the bad point at step 7");
    assert_eq!(fx.trace(RUN, 0, "loss", "last_step").await, Some(Value::Int(8)));
    let letters = fx.applier.dead_letters(&fx.tx(), 0).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].partition, letters[0].offset), (0, 1));
    let rec = &letters[0].record;
    assert_eq!(rec.get("reason"), Some(&Value::from("encode_error")));
    assert_eq!(rec.get("key"), Some(&Value::from(RUN)));
    assert_eq!(rec.get("type"), Some(&Value::from("log_metric")));
    assert_eq!(rec.get("value"), Some(&Value::Nil));
    assert_eq!(rec.get("timestamp"), Some(&Value::Float(NOW)));
    // A replay does not dead-letter it twice.
    let outcome = fx.apply_entries(RUN, &entries, NOW + 1.0).await;
    assert!(outcome.dead_letters.is_empty());
    assert_eq!(outcome.replayed, 3);
}

#[tokio::test]
async fn hparams_that_cannot_be_stored_are_dead_lettered_without_clearing_existing_attrs() {
    let mut fx = Fixture::new().await;
    fx.apply(
        RUN,
        vec![create(), json!({"type": "log_hparams", "payload": {"value": {"hparams": {"lr": 0.1, "bs": 2}}}})],
        NOW,
    )
    .await;
    let bad = IngestMessage::new(
        RUN,
        0.0,
        Payload::LogHparams(matyan::ingest::message::LogHparams {
            value: Value::Map(vec![(
                Value::from("hparams"),
                Value::Map(vec![(Value::from("lr"), Value::Int(-i128::MAX)), (Value::from("x"), Value::Int(1))]),
            )]),
        }),
    );
    let entries = fx.entries(vec![bad]);
    let outcome = fx.apply_entries(RUN, &entries, NOW).await;
    assert_eq!(outcome.dead_letters, vec![(0, "encode_error")]);
    assert_eq!(
        fx.attrs(RUN, &["hparams"]).await,
        Some(Value::from(&json!({"bs": 2, "lr": 0.1}))),
        "read back in key order"
    );
}

#[tokio::test]
async fn an_entry_of_another_run_is_dead_lettered() {
    let mut fx = Fixture::new().await;
    let entries = fx.entries(vec![msg("other", create()), msg(RUN, create())]);
    let outcome = fx.apply_entries(RUN, &entries, NOW).await;
    assert_eq!(outcome.dead_letters, vec![(0, "wrong_run")]);
    assert!(fx.meta("other").await.is_none());
    assert!(fx.meta(RUN).await.is_some());
}

// ---------------------------------------------------------------------------------------------
// Deliberate fixes of §6

#[tokio::test]
async fn redelivered_create_run_keeps_metadata_and_indexes_fixing_reference_quirk_4() {
    let mut fx = Fixture::new().await;
    fx.apply(
        RUN,
        vec![
            create(),
            json!({"type": "set_run_property", "payload": {"name": "mine", "archived": true, "experiment": "exp"}}),
            json!({"type": "finish_run"}),
        ],
        NOW,
    )
    .await;
    let indexes_before = fx.index_entries(RUN).await;
    // A second create_run record (a client re-sending it, not a replay: a new offset).
    fx.apply(
        RUN,
        vec![json!({"type": "create_run", "payload": {"client_datetime": "2025-01-02T00:00:00Z"}})],
        NOW + 10.0,
    )
    .await;
    let meta = fx.meta(RUN).await.unwrap();
    assert_eq!(meta_field(&meta, "name"), &Value::from("mine"));
    assert_eq!(meta_field(&meta, "is_archived"), &Value::Bool(true));
    assert_eq!(f(meta_field(&meta, "created_at")), NOW);
    assert!(meta_field(&meta, "experiment_id").as_str().is_some());
    assert_eq!(meta_field(&meta, "active"), &Value::Bool(true), "refreshed as a resume");
    assert_eq!(meta_field(&meta, "finalized_at"), &Value::Nil);
    assert_eq!(f(meta_field(&meta, "client_start_ts")), 1_735_776_000.0);
    let indexes_after = fx.index_entries(RUN).await;
    let created: Vec<_> = indexes_after.iter().filter(|e| e[0] == Elem::from("created_at")).collect();
    assert_eq!(created.len(), 1, "{indexes_after:?}");
    let archived: Vec<_> = indexes_after.iter().filter(|e| e[0] == Elem::from("archived")).collect();
    assert_eq!(archived, vec![&vec![Elem::from("archived"), Elem::Bool(true), Elem::from(RUN)]]);
    assert_eq!(indexes_before.len(), indexes_after.len());
    assert!(indexes_after.contains(&vec![Elem::from("active"), Elem::Bool(true), Elem::from(RUN)]));
    assert!(!indexes_after.contains(&vec![Elem::from("active"), Elem::Bool(false), Elem::from(RUN)]));
}

#[tokio::test]
async fn create_run_on_a_partial_meta_creates_the_run_in_full() {
    let mut fx = Fixture::new().await;
    // finish_run before any create_run leaves a partial meta (quirk 5).
    fx.apply(RUN, vec![json!({"type": "finish_run"})], NOW).await;
    fx.apply(RUN, vec![create()], NOW + 1.0).await;
    let meta = fx.meta(RUN).await.unwrap();
    assert_eq!(f(meta_field(&meta, "created_at")), NOW + 1.0);
    assert_eq!(meta_field(&meta, "active"), &Value::Bool(true));
    let entries = fx.index_entries(RUN).await;
    assert!(!entries.contains(&vec![Elem::from("active"), Elem::Bool(false), Elem::from(RUN)]), "{entries:?}");
    assert_eq!(entries.len(), 3);
}

#[tokio::test]
async fn context_key_is_written_with_its_points_in_every_transaction_fixing_reference_quirk_7() {
    let mut fx = Fixture::new().await;
    let ctx = json!({"subset": "val"});
    let ctx_id = context_to_id(&ctx);
    let entries = fx.entries(vec![msg(RUN, metric("acc", json!(0.5), json!(0), ctx.clone()))]);
    // A first attempt is abandoned (a conflict, a crash): nothing may be remembered from it.
    let tx = fx.tx();
    fx.applier.apply(&tx, RUN, &entries, NOW, &mut |r: &IdRequest<'_>| position_uuid(r)).await.unwrap();
    tx.cancel();
    assert_eq!(fx.context(RUN, ctx_id).await, None);
    fx.apply_entries(RUN, &entries, NOW).await;
    assert_eq!(fx.context(RUN, ctx_id).await, Some(Value::from(&ctx)));
    assert_eq!(fx.points(RUN, ctx_id, "acc").await.len(), 1);
}

#[tokio::test]
async fn repeated_add_tag_and_remove_tag_keep_run_count_fixing_reference_quirk_8() {
    let mut fx = Fixture::new().await;
    let add = json!({"type": "add_tag", "payload": {"tag_name": "best"}});
    let remove = json!({"type": "remove_tag", "payload": {"tag_name": "best"}});
    fx.apply(RUN, vec![create(), add.clone(), add.clone()], NOW).await;
    fx.apply(RUN, vec![add.clone()], NOW).await;
    let (uuid, fields) = fx.entity(EntityKind::Tag, "best").await.unwrap();
    let count = |fields: &[(String, Value)]| fields.iter().find(|(k, _)| k == "run_count").unwrap().1.clone();
    assert_eq!(count(&fields), Value::Int(1));
    assert_eq!(fx.runs_key(RUN, &[Elem::from("tags"), Elem::from(uuid.as_str())]).await, Some(Value::Bool(true)));
    fx.apply(RUN, vec![remove.clone(), remove.clone()], NOW).await;
    let (_, fields) = fx.entity(EntityKind::Tag, "best").await.unwrap();
    assert_eq!(count(&fields), Value::Int(0));
    // Another run tagged, then a redundant remove on the first: the other run's link stays counted.
    fx.apply("r2", vec![create(), add.clone()], NOW).await;
    fx.apply(RUN, vec![remove], NOW).await;
    let (_, fields) = fx.entity(EntityKind::Tag, "best").await.unwrap();
    assert_eq!(count(&fields), Value::Int(1));
    assert!(fx.runs_key(RUN, &[Elem::from("tags"), Elem::from(uuid.as_str())]).await.is_none());
}

#[tokio::test]
async fn nan_metric_stores_nil_and_keeps_trace_last() {
    let mut fx = Fixture::new().await;
    let raw = format!(
        r#"{{"type":"log_metric","run_id":"{RUN}","timestamp":"2025-01-01T00:00:00Z","payload":{{"name":"loss","value":NaN,"step":1,"epoch":null,"context":null,"dtype":"float"}}}}"#
    );
    let nan = decode(raw.as_bytes()).unwrap();
    let mut msgs = vec![msg(RUN, metric("loss", json!(0.3), json!(0), J::Null))];
    msgs.push(nan);
    msgs.push(msg(RUN, metric("loss", J::Null, json!(2), J::Null)));
    let entries = fx.entries(msgs);
    fx.apply_entries(RUN, &entries, NOW).await;
    let points = fx.points(RUN, 0, "loss").await;
    assert_eq!(points.iter().map(|p| p.1.clone()).collect::<Vec<_>>(), vec![Value::Float(0.3), Value::Nil, Value::Nil]);
    assert_eq!(fx.trace(RUN, 0, "loss", "last").await, Some(Value::Float(0.3)));
    assert_eq!(fx.trace(RUN, 0, "loss", "last_step").await, Some(Value::Int(2)));
}

#[tokio::test]
async fn auto_created_entities_take_ids_from_the_injected_source() {
    let mut fx = Fixture::new().await;
    let entries = fx.entries(vec![
        msg(RUN, json!({"type": "set_run_property", "payload": {"experiment": "e1"}})),
        msg(RUN, json!({"type": "add_tag", "payload": {"tag_name": "t1"}})),
        msg(RUN, json!({"type": "add_tag", "payload": {"tag_name": "t1"}})),
    ]);
    let mut asked: Vec<(EntityKind, String, i64)> = Vec::new();
    let tx = fx.tx();
    let mut n = 0;
    fx.applier
        .apply(&tx, RUN, &entries, NOW, &mut |r: &IdRequest<'_>| {
            asked.push((r.kind, r.name.to_string(), r.offset));
            n += 1;
            format!("00000000-0000-4000-8000-00000000000{n}")
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        asked,
        vec![(EntityKind::Experiment, "e1".to_string(), 0), (EntityKind::Tag, "t1".to_string(), 1)],
        "asked once per unknown name"
    );
    assert_eq!(fx.entity(EntityKind::Experiment, "e1").await.unwrap().0, "00000000-0000-4000-8000-000000000001");
    assert_eq!(fx.entity(EntityKind::Tag, "t1").await.unwrap().0, "00000000-0000-4000-8000-000000000002");
    let meta = fx.meta(RUN).await.unwrap();
    assert_eq!(meta_field(&meta, "experiment_id"), &Value::from("00000000-0000-4000-8000-000000000001"));
}

#[tokio::test]
async fn position_ids_are_the_same_when_a_transaction_runs_twice() {
    let mut fx = Fixture::new().await;
    let entries = fx.entries(vec![msg(RUN, json!({"type": "add_tag", "payload": {"tag_name": "t"}}))]);
    let mut made = Vec::new();
    for _ in 0..2 {
        let tx = fx.tx();
        fx.applier
            .apply(&tx, RUN, &entries, NOW, &mut |r: &IdRequest<'_>| {
                let id = position_uuid(r);
                made.push(id.clone());
                id
            })
            .await
            .unwrap();
        tx.cancel();
    }
    assert_eq!(made.len(), 2);
    assert_eq!(made[0], made[1]);
}

// ---------------------------------------------------------------------------------------------
// §8 items 3–14 at the handler level

#[tokio::test]
async fn spec_item_3_create_run_resume_and_client_datetime() {
    let mut fx = Fixture::new().await;
    fx.apply("r", vec![create()], NOW).await;
    let meta = fx.meta("r").await.unwrap();
    assert_eq!(meta_field(&meta, "active"), &Value::Bool(true));
    assert_eq!(meta_field(&meta, "name"), &Value::from("Run: r"));
    fx.apply("r", vec![json!({"type": "finish_run"})], NOW + 1.0).await;
    let resume = json!({"type": "create_run", "payload": {"force_resume": true, "client_datetime": "2025-01-01T00:00:10+00:00"}});
    fx.apply("r", vec![resume.clone()], NOW + 2.0).await;
    let meta = fx.meta("r").await.unwrap();
    assert_eq!(meta_field(&meta, "active"), &Value::Bool(true));
    assert_eq!(f(meta_field(&meta, "created_at")), NOW, "not a new run");
    assert_eq!(f(meta_field(&meta, "client_start_ts")), NOW + 10.0, "also on the resume path");
    assert_eq!(meta_field(&meta, "finalized_at"), &Value::Nil);
    // force_resume on an unknown run creates it.
    fx.apply("new", vec![resume], NOW).await;
    let meta = fx.meta("new").await.unwrap();
    assert_eq!(f(meta_field(&meta, "created_at")), NOW);
    assert_eq!(f(meta_field(&meta, "client_start_ts")), NOW + 10.0);
}

#[tokio::test]
async fn spec_item_4_log_metric_steps_and_contexts() {
    let mut fx = Fixture::new().await;
    fx.apply("r", vec![metric("loss", json!(0.5), json!(0), json!({}))], NOW).await;
    assert_eq!(fx.points("r", 0, "loss").await, vec![(0, Value::Float(0.5), None)]);
    assert_eq!(fx.context("r", 0).await, Some(Value::Map(vec![])));
    // Two messages with no step in one transaction get [0, 1]: next_step sees its own writes.
    fx.apply("s", vec![metric("m", json!(1.0), J::Null, J::Null), metric("m", json!(2.0), J::Null, J::Null)], NOW)
        .await;
    let steps: Vec<i64> = fx.points("s", 0, "m").await.iter().map(|p| p.0).collect();
    assert_eq!(steps, vec![0, 1]);
    // An automatic step continues after explicit ones, across transactions.
    fx.apply("s", vec![metric("m", json!(3.0), json!(5), J::Null)], NOW).await;
    fx.apply("s", vec![metric("m", json!(4.0), J::Null, J::Null)], NOW).await;
    let steps: Vec<i64> = fx.points("s", 0, "m").await.iter().map(|p| p.0).collect();
    assert_eq!(steps, vec![0, 1, 5, 6]);
    let ctx = json!({"subset": "val"});
    fx.apply("r", vec![metric("loss", json!(0.7), json!(0), ctx.clone())], NOW).await;
    let id = context_to_id(&ctx);
    assert_eq!(fx.points("r", id, "loss").await.len(), 1);
    assert_eq!(fx.context("r", id).await, Some(Value::from(&ctx)));
}

#[tokio::test]
async fn spec_item_5_one_trace_per_metric_and_trace_index_entries() {
    let mut fx = Fixture::new().await;
    fx.apply(
        "r",
        vec![
            metric("loss", json!(0.2), json!(4), J::Null),
            metric("loss", json!(0.1), json!(5), J::Null),
            metric("acc", json!(0.9), json!(5), J::Null),
        ],
        NOW,
    )
    .await;
    assert_eq!(fx.trace("r", 0, "loss", "last").await, Some(Value::Float(0.1)));
    assert_eq!(fx.trace("r", 0, "loss", "last_step").await, Some(Value::Int(5)));
    assert_eq!(fx.trace("r", 0, "loss", "dtype").await, Some(Value::from("float")));
    let tx = fx.tx();
    for name in ["loss", "acc"] {
        let runs =
            fx.layout().indexes().runs_under(&tx, &[Elem::from("trace"), Elem::from(name)], false).await.unwrap();
        assert_eq!(runs, vec!["r".to_string()], "{name}");
    }
}

#[tokio::test]
async fn spec_item_6_log_hparams_unwrapping_and_empty_value() {
    let mut fx = Fixture::new().await;
    fx.apply("r", vec![json!({"type": "log_hparams", "payload": {"value": {"hparams": {"lr": 0.01, "bs": 32}}}})], NOW)
        .await;
    assert_eq!(
        fx.attrs("r", &["hparams"]).await,
        Some(Value::from(&json!({"bs": 32, "lr": 0.01}))),
        "read back in key order"
    );
    fx.apply(
        "r",
        vec![json!({"type": "log_hparams", "payload": {"value": {"hparams": {"model": {"type": "cnn"}}}}})],
        NOW,
    )
    .await;
    assert_eq!(fx.attrs("r", &["hparams", "model", "type"]).await, Some(Value::from("cnn")));
    assert_eq!(fx.attrs("r", &["hparams", "lr"]).await, Some(Value::Float(0.01)), "a single-key message patches");
    let hparam_index: Vec<_> =
        fx.index_entries("r").await.into_iter().filter(|e| e[0] == Elem::from("hparam")).collect();
    assert_eq!(hparam_index.len(), 2, "lr and bs; the dict under model is not indexed: {hparam_index:?}");
    fx.apply("e", vec![json!({"type": "log_hparams", "payload": {"value": {}}})], NOW).await;
    fx.apply("e", vec![json!({"type": "log_hparams", "payload": {}})], NOW).await;
    assert_eq!(fx.attrs("e", &[]).await, None);
    assert!(fx.meta("e").await.is_none());
}

#[tokio::test]
async fn spec_item_7_finish_run_sets_inactive_and_duration() {
    let mut fx = Fixture::new().await;
    fx.apply("r", vec![create(), json!({"type": "finish_run"})], NOW).await;
    let meta = fx.meta("r").await.unwrap();
    assert_eq!(meta_field(&meta, "active"), &Value::Bool(false));
    assert_eq!(f(meta_field(&meta, "finalized_at")), NOW);
    assert!(fx.index_entries("r").await.contains(&vec![Elem::from("active"), Elem::Bool(false), Elem::from("r")]));
    // With a stored client_start_ts and a client_datetime (direct producers only).
    let tx = fx.tx();
    fx.layout().runs.runs.set_meta(&tx, "r", "client_start_ts", &Value::Float(1000.0)).unwrap();
    tx.commit().await.unwrap();
    fx.apply(
        "r",
        vec![json!({"type": "finish_run", "payload": {"client_datetime": "1970-01-01T00:20:00Z"}})],
        NOW + 5.0,
    )
    .await;
    let meta = fx.meta("r").await.unwrap();
    assert_eq!(f(meta_field(&meta, "duration")), 200.0);
    assert_eq!(f(meta_field(&meta, "finalized_at")), NOW + 200.0, "created_at + duration, as the reference");
}

#[tokio::test]
async fn spec_item_8_custom_objects_store_the_map_and_auto_step() {
    let mut fx = Fixture::new().await;
    let obj = |w: i64| {
        json!({"type": "log_custom_object", "payload": {"name": "img", "value": {"s3_key": "k", "width": w},
            "step": null, "epoch": null, "context": null, "dtype": "image"}})
    };
    fx.apply("r", vec![obj(100), obj(200)], NOW).await;
    let points = fx.points("r", 0, "img").await;
    assert_eq!(points.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(points[0].1.get("width"), Some(&Value::Int(100)));
    assert_eq!(fx.trace("r", 0, "img", "last").await, Some(Value::Float(0.0)));
    assert_eq!(fx.trace("r", 0, "img", "dtype").await, Some(Value::from("image")));
}

#[tokio::test]
async fn spec_item_9_blob_ref_sets_blobs_attr() {
    let mut fx = Fixture::new().await;
    fx.apply(
        "r",
        vec![json!({"type": "blob_ref", "payload": {"s3_key": "r/models/weights.pt", "artifact_path": "models/weights.pt", "content_type": "application/x"}})],
        NOW,
    )
    .await;
    let blob = fx.attrs("r", &["__blobs__", "models/weights.pt"]).await.unwrap();
    assert_eq!(blob.get("s3_key"), Some(&Value::from("r/models/weights.pt")));
    assert_eq!(blob.get("content_type"), Some(&Value::from("application/x")));
    assert!(fx.index_entries("r").await.is_empty());
}

#[tokio::test]
async fn spec_item_10_set_run_property_updates_meta_and_auto_creates() {
    let mut fx = Fixture::new().await;
    fx.apply(
        "r",
        vec![json!({"type": "set_run_property", "payload": {"name": "n", "description": "d", "archived": true, "experiment": "exp"}})],
        NOW,
    )
    .await;
    let meta = fx.meta("r").await.unwrap();
    assert_eq!(f(meta_field(&meta, "created_at")), NOW, "the unknown run was created");
    assert_eq!(meta_field(&meta, "name"), &Value::from("n"));
    assert_eq!(meta_field(&meta, "description"), &Value::from("d"));
    assert_eq!(meta_field(&meta, "is_archived"), &Value::Bool(true));
    let (uuid, fields) = fx.entity(EntityKind::Experiment, "exp").await.unwrap();
    assert_eq!(meta_field(&meta, "experiment_id"), &Value::from(uuid.as_str()));
    assert!(fields.contains(&("run_count".to_string(), Value::Int(1))));
    let entries = fx.index_entries("r").await;
    assert!(entries.contains(&vec![Elem::from("experiment"), Elem::from("exp"), Elem::from("r")]));
    assert!(entries.contains(&vec![Elem::from("archived"), Elem::Bool(true), Elem::from("r")]));
    assert!(!entries.contains(&vec![Elem::from("archived"), Elem::Bool(false), Elem::from("r")]));
    // Moving to another experiment moves the count and the index.
    fx.apply("r", vec![json!({"type": "set_run_property", "payload": {"experiment": "exp2"}})], NOW).await;
    let (_, fields) = fx.entity(EntityKind::Experiment, "exp").await.unwrap();
    assert!(fields.contains(&("run_count".to_string(), Value::Int(0))));
    let entries = fx.index_entries("r").await;
    assert!(entries.contains(&vec![Elem::from("experiment"), Elem::from("exp2"), Elem::from("r")]));
    assert!(!entries.contains(&vec![Elem::from("experiment"), Elem::from("exp"), Elem::from("r")]));
}

#[tokio::test]
async fn spec_item_11_tags_link_unlink_and_unknown_names() {
    let mut fx = Fixture::new().await;
    fx.apply("r", vec![json!({"type": "add_tag", "payload": {"tag_name": "t"}})], NOW).await;
    assert!(fx.meta("r").await.is_some(), "add_tag on an unknown run creates it");
    let (uuid, _) = fx.entity(EntityKind::Tag, "t").await.unwrap();
    assert_eq!(fx.layout().system.tags_of_run(&fx.tx(), "r").await.unwrap(), vec![uuid.clone()]);
    assert!(fx.index_entries("r").await.contains(&vec![Elem::from("tag"), Elem::from("t"), Elem::from("r")]));
    let outcome = fx
        .apply(
            "r",
            vec![
                json!({"type": "remove_tag", "payload": {"tag_name": "t"}}),
                json!({"type": "remove_tag", "payload": {"tag_name": "nope"}}),
            ],
            NOW,
        )
        .await;
    assert_eq!(outcome.applied_of(MessageType::RemoveTag), 2);
    assert!(outcome.dead_letters.is_empty());
    assert!(fx.layout().system.tags_of_run(&fx.tx(), "r").await.unwrap().is_empty());
    assert!(!fx.index_entries("r").await.iter().any(|e| e[0] == Elem::from("tag")));
    assert!(fx.entity(EntityKind::Tag, "nope").await.is_none());
}

#[tokio::test]
async fn spec_item_12_terminal_lines_and_log_records() {
    let mut fx = Fixture::new().await;
    let record = |m: &str| json!({"type": "log_record", "payload": {"message": m, "level": 20, "timestamp": 1.5}});
    fx.apply(
        "r",
        vec![json!({"type": "log_terminal_line", "payload": {"line": "hello", "step": 3}}), record("a"), record("b")],
        NOW,
    )
    .await;
    assert_eq!(fx.points("r", 0, "logs").await, vec![(3, Value::from("hello"), None)]);
    assert_eq!(fx.trace("r", 0, "logs", "dtype").await, Some(Value::from("logs")));
    assert_eq!(fx.trace("r", 0, "logs", "last").await, Some(Value::Float(0.0)));
    assert_eq!(fx.context("r", 0).await, Some(Value::Map(vec![])));
    let records = fx.points("r", 0, "__log_records").await;
    assert_eq!(records.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1]);
    let want = Value::Map(vec![
        (Value::from("message"), Value::from("a")),
        (Value::from("log_level"), Value::Int(20)),
        (Value::from("timestamp"), Value::Float(1.5)),
        (Value::from("args"), Value::Nil),
        (Value::from("logger_info"), Value::Nil),
    ]);
    assert_eq!(records[0].1, want);
    assert_eq!(fx.trace("r", 0, "__log_records", "dtype").await, Some(Value::from("log_records")));
    let tx = fx.tx();
    let runs = fx.layout().indexes().runs_under(&tx, &[Elem::from("trace"), Elem::from("__log_records")], false).await;
    assert_eq!(runs.unwrap(), vec!["r".to_string()]);
}

#[tokio::test]
async fn log_record_always_auto_steps_under_log_records() {
    let mut fx = Fixture::new().await;
    let m = IngestMessage::new(
        "r",
        0.0,
        Payload::LogRecord(LogRecord {
            message: "x".into(),
            level: 10,
            timestamp: Value::Float(2.0),
            logger_info: Some(Value::Array(vec![Value::from("f.py"), Value::Int(3)])),
            extra_args: Some(Value::from(&json!({"k": 1}))),
        }),
    );
    let entries = fx.entries(vec![m.clone(), m]);
    fx.apply_entries("r", &entries, NOW).await;
    fx.apply("r", vec![json!({"type": "log_record", "payload": {"message": "y", "level": 30, "timestamp": 3.0}})], NOW)
        .await;
    let records = fx.points("r", 0, "__log_records").await;
    assert_eq!(records.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(records[0].1.get("args"), Some(&Value::from(&json!({"k": 1}))));
    assert_eq!(fx.trace("r", 0, "__log_records", "last_step").await, Some(Value::Int(2)));
}

#[tokio::test]
async fn spec_item_13_delete_run_removes_everything_and_tombstones_unknown_runs() {
    let mut fx = Fixture::new().await;
    fx.apply(
        "r",
        vec![
            create(),
            metric("loss", json!(1.0), json!(0), J::Null),
            json!({"type": "add_tag", "payload": {"tag_name": "t"}}),
        ],
        NOW,
    )
    .await;
    fx.apply("r", vec![json!({"type": "delete_run"})], NOW + 1.0).await;
    assert!(fx.meta("r").await.is_none());
    assert!(fx.points("r", 0, "loss").await.is_empty());
    let (_, fields) = fx.entity(EntityKind::Tag, "t").await.unwrap();
    assert!(fields.contains(&("run_count".to_string(), Value::Int(0))));
    let outcome = fx.apply("ghost", vec![json!({"type": "delete_run"})], NOW + 2.0).await;
    assert!(outcome.deleted);
    let tombstones: HashMap<String, f64> =
        fx.layout().indexes().tombstones(&fx.tx()).await.unwrap().into_iter().collect();
    assert_eq!(tombstones.get("r"), Some(&(NOW + 1.0)));
    assert_eq!(tombstones.get("ghost"), Some(&(NOW + 2.0)));
    // Deleting again refreshes the tombstone and records another event.
    fx.apply("ghost", vec![json!({"type": "delete_run"})], NOW + 3.0).await;
    let tombstones: HashMap<String, f64> =
        fx.layout().indexes().tombstones(&fx.tx()).await.unwrap().into_iter().collect();
    assert_eq!(tombstones.get("ghost"), Some(&(NOW + 3.0)));
    assert_eq!(fx.applier.outbox(&fx.tx(), 0).await.unwrap().len(), 3);
}

#[tokio::test]
async fn spec_item_14_a_tombstoned_run_gets_no_write_at_all() {
    let mut fx = Fixture::new().await;
    fx.apply("r", vec![json!({"type": "delete_run"})], NOW).await;
    let before = fx.full_dump().await;
    let outcome = fx.apply("r", vec![create(), metric("loss", json!(1.0), json!(0), J::Null)], NOW + 1.0).await;
    assert_eq!(outcome.tombstoned, 2);
    let after = fx.full_dump().await;
    let dirs = &fx.layout().dirs;
    let changed: Vec<_> = after.iter().filter(|kv| !before.contains(kv)).collect();
    assert_eq!(changed.len(), 1, "only the checkpoint moves");
    assert!(changed[0].0.starts_with(&dirs.ours));
    assert_eq!(before.len(), after.len());
}
