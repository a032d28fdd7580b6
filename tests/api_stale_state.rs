//! The stale state the reference's REST mutations leave behind (spec `api.md` §10 quirks 9, 16,
//! 17, 18; `ingest-storage.md` §2.1–§2.4 and §6 quirk 9), each fixed and named here: batch and run
//! routes create no ghost runs, deleting an experiment and renaming a tag leave no stale link or
//! index entry, and a tag linked through REST leaves the keys an ingestion `add_tag` leaves, and
//! goes the same way. Runs through the in-process router and the real applier on one memory store.

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use matyan::http::stream::decode_objects;
use matyan::ingest::apply::{Applier, IdRequest, position_uuid};
use matyan::ingest::{Entry, decode};
use matyan::storage::kv::{Database, RangeOption, RetryOptions, Transaction, strinc};
use matyan::storage::layout::{EntityKind, Layout};
use matyan::storage::tuple::{self, Elem};
use matyan::storage::value::{self, Value};
use serde_json::{Value as J, json};
use tower::ServiceExt as _;

use common::{NOW, RUN};

const R: &str = "/api/v1/rest";
/// A second run, created like the first.
const OTHER: &str = "0b0e0b0e0b0e0b0e0b0e0b0e0b0e0b0e";
/// Hashes no run has.
const GHOSTS: [&str; 2] = ["9405709405709405709405709405abcd", "ghost"];

struct Fixture {
    db: Database,
    layout: Layout,
    applier: Applier,
    next_offset: std::sync::atomic::AtomicI64,
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> J {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Fixture {
    /// The worked example's run and [`OTHER`], both created as ingestion creates runs.
    async fn new() -> Self {
        let db = Database::memory();
        let layout = common::write_worked_example(&db).await;
        let applier = Applier::new(layout.clone());
        let fx = Fixture { db, layout, applier, next_offset: 0.into() };
        fx.ingest(OTHER, json!({"type": "create_run", "payload": {"force_resume": false}})).await;
        fx
    }

    async fn call(&self, method: &str, uri: &str, body: Option<&str>) -> Answer {
        let req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
        let state = common::app_state(&self.db, &self.layout);
        let resp = matyan::http::service(state).oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap().to_vec();
        Answer { status, body }
    }

    async fn ok(&self, method: &str, uri: &str, body: Option<&str>) -> J {
        let a = self.call(method, uri, body).await;
        assert!((200..300).contains(&a.status), "{method} {uri}: {} {}", a.status, String::from_utf8_lossy(&a.body));
        if a.body.is_empty() { J::Null } else { a.json() }
    }

    /// The runs a run search for `q` streams.
    async fn search(&self, q: &str) -> Vec<String> {
        let a =
            self.call("GET", &format!("{R}/runs/search/run?q={}&report_progress=false", common::enc(q)), None).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        decode_objects(&a.body)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.is_progress())
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// Applies one ingestion message of `run` (`{"type", "payload"}`) through the real applier, at
    /// the next offset of partition 0.
    async fn ingest(&self, run: &str, m: J) {
        let mut record = json!({"run_id": run, "timestamp": "2025-01-01T00:00:00Z", "payload": {}});
        for (k, v) in m.as_object().unwrap() {
            record[k] = v.clone();
        }
        let message = decode(&serde_json::to_vec(&record).unwrap()).unwrap();
        let offset = self.next_offset.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entries = [Entry { partition: 0, offset, message }];
        let (applier, entries) = (&self.applier, &entries);
        let outcome = self
            .db
            .run(&RetryOptions::default(), |tx| async move {
                applier.apply(&tx, run, entries, NOW, &mut |r: &IdRequest<'_>| position_uuid(r)).await
            })
            .await
            .unwrap();
        assert!(outcome.dead_letters.is_empty(), "{outcome:?}");
    }

    fn tx(&self) -> Transaction {
        self.db.create_trx().unwrap()
    }

    /// Every key and value of the store.
    async fn everything(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let kvs = self.tx().get_range(&RangeOption::new(vec![], vec![0xff]), false).await.unwrap();
        kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
    }

    /// Every key of the reference's three directories, as `dir (elements…)`.
    async fn reference_keys(&self) -> BTreeSet<String> {
        let dirs = &self.layout.dirs;
        let mut out = BTreeSet::new();
        for (name, prefix) in [("runs", &dirs.runs), ("indexes", &dirs.indexes), ("system", &dirs.system)] {
            let kvs = self.tx().get_range(&RangeOption::new(prefix.clone(), strinc(prefix)), false).await.unwrap();
            for kv in kvs {
                let elems = tuple::unpack(&kv.key[prefix.len()..]).unwrap();
                out.insert(format!("{name} {}", render(&elems)));
            }
        }
        out
    }

    /// The reference keys that mention `run`, with the run written `R`.
    async fn keys_of(&self, run: &str) -> BTreeSet<String> {
        self.reference_keys().await.into_iter().filter(|k| k.contains(run)).map(|k| k.replace(run, "R")).collect()
    }

    async fn indexed(&self, scope: &[Elem]) -> Vec<String> {
        self.layout.indexes().runs_under(&self.tx(), scope, false).await.unwrap()
    }

    async fn system_value(&self, elems: &[Elem]) -> Option<Value> {
        let key = self.layout.system.key(elems);
        self.tx().get(&key, false).await.unwrap().map(|b| value::decode(&b).unwrap())
    }

    async fn meta_field(&self, run: &str, field: &str) -> Option<Value> {
        self.layout.runs.runs.meta_field(&self.tx(), run, field).await.unwrap()
    }

    async fn run_count(&self, kind: EntityKind, uuid: &str) -> Option<Value> {
        let fields = self.layout.system.get(&self.tx(), kind, uuid).await.unwrap()?;
        fields.into_iter().find(|(k, _)| k == "run_count").map(|(_, v)| v)
    }

    async fn uuid_of(&self, kind: EntityKind, name: &str) -> Option<String> {
        self.layout.system.uuid_by_name(&self.tx(), kind, name).await.unwrap()
    }
}

/// `("a", 1, …)`-like text of a key's elements, strings unquoted so run hashes can be replaced.
fn render(elems: &[Elem]) -> String {
    let parts: Vec<String> = elems
        .iter()
        .map(|e| match e {
            Elem::Str(s) => s.clone(),
            Elem::Tuple(t) => format!("({})", render(t)),
            other => format!("{other:?}"),
        })
        .collect();
    parts.join(" ")
}

fn added(before: &BTreeSet<String>, after: &BTreeSet<String>) -> BTreeSet<String> {
    after.difference(before).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Ghost runs (§10 quirk 17)

#[tokio::test]
async fn no_run_route_writes_a_key_for_an_unknown_hash_so_no_ghost_run_appears_fixing_quirk_17() {
    let fx = Fixture::new().await;
    let before = fx.everything().await;
    let batch = serde_json::to_string(&GHOSTS).unwrap();
    for path in ["delete-batch/", "archive-batch/?archive=true", "archive-batch/?archive=false", "finish-batch/"] {
        let a = fx.call("POST", &format!("{R}/runs/{path}"), Some(&batch)).await;
        assert_eq!((a.status, a.json()), (200, json!({"status": "OK"})), "{path}");
    }
    for ghost in GHOSTS {
        let routes = [
            ("PUT", format!("{R}/runs/{ghost}/"), Some(r#"{"name": "n", "archived": true, "experiment": "e"}"#)),
            ("DELETE", format!("{R}/runs/{ghost}/"), None),
            ("POST", format!("{R}/runs/{ghost}/tags/new/"), Some(r#"{"tag_name": "t"}"#)),
            ("DELETE", format!("{R}/runs/{ghost}/tags/some-tag/"), None),
        ];
        for (method, uri, body) in routes {
            assert_eq!(fx.call(method, &uri, body).await.status, 404, "{method} {uri}");
        }
        assert_eq!(fx.call("GET", &format!("{R}/runs/{ghost}/info/"), None).await.status, 404);
    }
    assert!(fx.everything().await == before, "a route wrote for a hash no run has");
    for q in ["run.archived == True", "run.archived == False", "run.active == False", ""] {
        assert!(fx.search(q).await.iter().all(|r| !GHOSTS.contains(&r.as_str())), "{q:?}");
    }

    // A batch mixing known and unknown hashes does its work on the known runs only.
    let mixed = serde_json::to_string(&[GHOSTS[0], RUN, GHOSTS[1], OTHER]).unwrap();
    fx.ok("POST", &format!("{R}/runs/archive-batch/?archive=true"), Some(&mixed)).await;
    fx.ok("POST", &format!("{R}/runs/finish-batch/"), Some(&mixed)).await;
    fx.ok("POST", &format!("{R}/runs/delete-batch/"), Some(&mixed)).await;
    assert_eq!(fx.indexed(&[Elem::from("archived"), Elem::Bool(true)]).await, sorted([RUN, OTHER]));
    assert_eq!(fx.indexed(&[Elem::from("active"), Elem::Bool(false)]).await, sorted([RUN, OTHER]));
    assert_eq!(fx.meta_field(RUN, "pending_deletion").await, Some(Value::Bool(true)));
    for ghost in GHOSTS {
        assert!(fx.keys_of(ghost).await.is_empty(), "keys of {ghost}: {:?}", fx.keys_of(ghost).await);
        assert_eq!(fx.call("GET", &format!("{R}/runs/{ghost}/info/"), None).await.status, 404);
    }
}

fn sorted<const N: usize>(runs: [&str; N]) -> Vec<String> {
    let mut v: Vec<String> = runs.iter().map(|r| (*r).to_owned()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Experiment deletion (§10 quirk 18, ingest-storage §2.3)

#[tokio::test]
async fn deleting_an_experiment_leaves_no_link_or_index_entry_so_its_name_reused_finds_no_runs_fixing_quirk_18() {
    let fx = Fixture::new().await;
    let old = fx.ok("POST", &format!("{R}/experiments/"), Some(r#"{"name": "exp"}"#)).await["id"].clone();
    let old = old.as_str().unwrap().to_owned();
    fx.ok("PUT", &format!("{R}/runs/{RUN}/"), Some(r#"{"experiment": "exp"}"#)).await;
    fx.ingest(OTHER, json!({"type": "set_run_property", "payload": {"experiment": "exp"}})).await;
    assert_eq!(fx.indexed(&[Elem::from("experiment"), Elem::from("exp")]).await, sorted([RUN, OTHER]));

    fx.ok("DELETE", &format!("{R}/experiments/{old}/"), None).await;
    let stale = |k: &String| {
        k.contains(&old)
            || k.starts_with("indexes experiment ")
            || k.contains(" experiment exp ")
            || k.starts_with("system run_experiment ")
    };
    let left: Vec<String> = fx.reference_keys().await.into_iter().filter(stale).collect();
    assert!(left.is_empty(), "keys of the deleted experiment: {left:?}");
    for run in [RUN, OTHER] {
        assert_eq!(fx.system_value(&[Elem::from("run_experiment"), Elem::from(run)]).await, None, "{run}");
        assert_eq!(fx.meta_field(run, "experiment_id").await, Some(Value::Nil), "{run}");
        let entries = fx.layout.indexes().entries_of_run(&fx.tx(), run, Some("experiment")).await.unwrap();
        assert!(entries.is_empty(), "{run}: {entries:?}");
        assert_eq!(fx.ok("GET", &format!("{R}/runs/{run}/info/"), None).await["props"]["experiment"]["name"], J::Null);
    }

    // A new experiment of the same name starts empty, in the index as in its run list.
    let new = fx.ok("POST", &format!("{R}/experiments/"), Some(r#"{"name": "exp"}"#)).await["id"].clone();
    assert!(fx.search(r#"run.experiment == "exp""#).await.is_empty());
    assert!(fx.indexed(&[Elem::from("experiment"), Elem::from("exp")]).await.is_empty());
    let runs = fx.ok("GET", &format!("{R}/experiments/{}/runs/", new.as_str().unwrap()), None).await;
    assert_eq!(runs["runs"], json!([]));
    assert_eq!(fx.run_count(EntityKind::Experiment, new.as_str().unwrap()).await, Some(Value::Int(0)));
}

// ---------------------------------------------------------------------------------------------
// Tag rename (§10 quirk 16, ingest-storage §2.1)

#[tokio::test]
async fn renaming_a_tag_moves_its_runs_index_entries_so_the_new_name_finds_them_fixing_quirk_16() {
    let fx = Fixture::new().await;
    let tag =
        fx.ok("POST", &format!("{R}/runs/{RUN}/tags/new/"), Some(r#"{"tag_name": "old"}"#)).await["tag_id"].clone();
    let tag = tag.as_str().unwrap().to_owned();
    fx.ingest(OTHER, json!({"type": "add_tag", "payload": {"tag_name": "old"}})).await;
    let other = fx.ok("POST", &format!("{R}/tags/"), Some(r#"{"name": "taken"}"#)).await["id"].clone();

    fx.ok("PUT", &format!("{R}/tags/{tag}/"), Some(r#"{"name": "new"}"#)).await;
    assert_eq!(fx.indexed(&[Elem::from("tag"), Elem::from("new")]).await, sorted([RUN, OTHER]));
    assert!(fx.indexed(&[Elem::from("tag"), Elem::from("old")]).await.is_empty());
    for run in [RUN, OTHER] {
        let entries = fx.layout.indexes().entries_of_run(&fx.tx(), run, Some("tag")).await.unwrap();
        assert_eq!(entries, vec![vec![Elem::from("tag"), Elem::from("new"), Elem::from(run)]], "{run}: its _rev twin");
    }
    let mut found = fx.search(r#""new" in run.tags"#).await;
    found.sort();
    assert_eq!(found, sorted([RUN, OTHER]));
    assert!(fx.search(r#""old" in run.tags"#).await.is_empty());

    // A name another tag holds is refused, as creating it is, and nothing moves.
    let keys = fx.reference_keys().await;
    let a = fx.call("PUT", &format!("{R}/tags/{tag}/"), Some(r#"{"name": "taken"}"#)).await;
    assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["detail"], "Tag with name 'taken' already exists");
    assert_eq!(fx.reference_keys().await, keys);
    assert_eq!(fx.uuid_of(EntityKind::Tag, "taken").await.as_deref(), other.as_str());
    // Renaming to its own name changes nothing either.
    fx.ok("PUT", &format!("{R}/tags/{tag}/"), Some(r#"{"name": "new"}"#)).await;
    assert_eq!(fx.indexed(&[Elem::from("tag"), Elem::from("new")]).await, sorted([RUN, OTHER]));
}

#[tokio::test]
async fn renaming_an_experiment_onto_a_taken_name_is_a_400_and_leaves_both_experiments_as_they_were() {
    let fx = Fixture::new().await;
    let a = fx.ok("POST", &format!("{R}/experiments/"), Some(r#"{"name": "a"}"#)).await["id"].clone();
    fx.ok("POST", &format!("{R}/experiments/"), Some(r#"{"name": "b"}"#)).await;
    fx.ok("PUT", &format!("{R}/runs/{RUN}/"), Some(r#"{"experiment": "a"}"#)).await;
    let keys = fx.reference_keys().await;
    let answer = fx.call("PUT", &format!("{R}/experiments/{}/", a.as_str().unwrap()), Some(r#"{"name": "b"}"#)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["detail"], "Experiment with name 'b' already exists");
    assert_eq!(fx.reference_keys().await, keys);
}

// ---------------------------------------------------------------------------------------------
// REST and ingestion tag links (ingest-storage §2.1, §2.4, §6 quirk 9)

#[tokio::test]
async fn a_tag_linked_through_rest_leaves_the_keys_of_an_ingested_add_tag_and_both_go_alike_fixing_quirk_9() {
    let fx = Fixture::new().await;
    // Linked through REST on one run, through an ingested add_tag on the other.
    let k0 = fx.reference_keys().await;
    let tag =
        fx.ok("POST", &format!("{R}/runs/{RUN}/tags/new/"), Some(r#"{"tag_name": "shared"}"#)).await["tag_id"].clone();
    let tag = tag.as_str().unwrap().to_owned();
    let k1 = fx.reference_keys().await;
    fx.ingest(OTHER, json!({"type": "add_tag", "payload": {"tag_name": "shared"}})).await;
    let k2 = fx.reference_keys().await;
    let of = |keys: BTreeSet<String>, run: &str| -> BTreeSet<String> {
        keys.into_iter().filter(|k| k.contains(run)).map(|k| k.replace(run, "R")).collect()
    };
    let by_rest = of(added(&k0, &k1), RUN);
    let by_ingest = of(added(&k1, &k2), OTHER);
    let runs_dir_key = format!("runs R tags {tag}");
    assert!(by_rest.contains(&runs_dir_key), "REST writes the run directory's side too: {by_rest:?}");
    assert_eq!(by_rest, by_ingest, "the same keys, whichever path linked the tag");
    assert_eq!(fx.run_count(EntityKind::Tag, &tag).await, Some(Value::Int(2)));

    // Unlinked through REST on one, through an ingested remove_tag on the other: the same keys go.
    fx.ok("DELETE", &format!("{R}/runs/{RUN}/tags/{tag}/"), None).await;
    let k3 = fx.reference_keys().await;
    fx.ingest(OTHER, json!({"type": "remove_tag", "payload": {"tag_name": "shared"}})).await;
    let k4 = fx.reference_keys().await;
    assert_eq!(of(added(&k3, &k2), RUN), by_rest, "REST removed what it wrote");
    assert_eq!(of(added(&k4, &k3), OTHER), by_ingest, "ingestion removed what it wrote");
    assert_eq!((of(k4.clone(), RUN), of(k4, OTHER)), (of(k0.clone(), RUN), of(k0, OTHER)), "as before the links");
    assert!(fx.keys_of(RUN).await.iter().chain(fx.keys_of(OTHER).await.iter()).all(|k| !k.contains(&tag)));
    assert_eq!(fx.run_count(EntityKind::Tag, &tag).await, Some(Value::Int(0)));

    // Linked again both ways, then the tag deleted through REST: no key names it any more.
    fx.ok("POST", &format!("{R}/runs/{RUN}/tags/new/"), Some(r#"{"tag_name": "shared"}"#)).await;
    fx.ingest(OTHER, json!({"type": "add_tag", "payload": {"tag_name": "shared"}})).await;
    fx.ok("DELETE", &format!("{R}/tags/{tag}/"), None).await;
    let left: Vec<String> =
        fx.reference_keys().await.into_iter().filter(|k| k.contains(&tag) || k.contains("shared")).collect();
    assert!(left.is_empty(), "keys of the deleted tag: {left:?}");
    for run in [RUN, OTHER] {
        assert_eq!(fx.ok("GET", &format!("{R}/runs/{run}/info/"), None).await["props"]["tags"], json!([]));
    }
}
