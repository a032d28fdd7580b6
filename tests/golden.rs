//! Golden vectors from the Python reference (`fixtures/golden-vectors.json`, spec §7) and the
//! codec conformance cases of spec §8 items 19 and 20.
//!
//! Every case of the `tuple_pack`, `msgpack`, `context_id` and `subspace` sections is checked;
//! `worked_example` is reproduced elsewhere, through the storage layer.

use std::collections::BTreeMap;

use matyan::storage::context_id::{self, PyJson};
use matyan::storage::tree;
use matyan::storage::tuple::{self, Elem};
use matyan::storage::value::{self, Value, ValueError};
use serde_json::{Value as J, json};
use sha2::{Digest, Sha256};

fn golden() -> J {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden-vectors.json");
    let text = std::fs::read_to_string(path).expect("golden file readable");
    serde_json::from_str(&text).expect("golden file is json")
}

fn section<'a>(g: &'a J, name: &str) -> &'a Vec<J> {
    g[name].as_array().expect("section is an array")
}

fn s<'a>(j: &'a J, field: &str) -> &'a str {
    j[field].as_str().unwrap_or_else(|| panic!("{field} missing in {j}"))
}

fn float_from(input: &J) -> f64 {
    let bits = u64::from_str_radix(s(input, "bits"), 16).expect("bits are hex");
    f64::from_bits(bits)
}

/// Builds a tuple element from the golden file's typed notation.
fn elem(input: &J) -> Elem {
    match s(input, "t") {
        "str" => Elem::Str(s(input, "v").to_owned()),
        "int" => Elem::Int(s(input, "v").parse().expect("int fits i128")),
        "float" => Elem::Float(float_from(input)),
        "bool" => Elem::Bool(input["v"].as_bool().expect("bool")),
        "null" => Elem::Null,
        "bytes" => Elem::Bytes(hex::decode(s(input, "hex")).expect("hex")),
        "uuid" => Elem::Uuid(s(input, "v").parse().expect("uuid")),
        "tuple" | "list" => Elem::Tuple(items(input)),
        other => panic!("unknown tuple type {other}"),
    }
}

fn items(input: &J) -> Vec<Elem> {
    input["items"].as_array().expect("items").iter().map(elem).collect()
}

/// Builds a msgpack value from the golden file's typed notation.
fn value(input: &J) -> Value {
    match s(input, "t") {
        "null" => Value::Nil,
        "bool" => Value::Bool(input["v"].as_bool().expect("bool")),
        "int" => Value::Int(s(input, "v").parse().expect("int")),
        "float" => Value::Float(float_from(input)),
        "str" => Value::Str(s(input, "v").to_owned()),
        "bytes" => Value::Bin(hex::decode(s(input, "hex")).expect("hex")),
        "list" => Value::Array(input["items"].as_array().expect("items").iter().map(value).collect()),
        "map" => Value::Map(
            input["entries"].as_array().expect("entries").iter().map(|e| (value(&e[0]), value(&e[1]))).collect(),
        ),
        "datetime" => Value::DateTime(s(input, "epoch").parse().expect("epoch")),
        other => panic!("unknown msgpack type {other}"),
    }
}

fn report(section: &str, checked: usize, failures: Vec<String>) {
    assert!(failures.is_empty(), "{} of {checked} {section} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn golden_tuple_pack() {
    let g = golden();
    let cases = section(&g, "tuple_pack");
    assert_eq!(cases.len(), 66);
    let mut failures = Vec::new();
    for case in cases {
        let name = s(case, "name");
        let want = s(case, "hex");
        let elems = items(&case["input"]);
        let got = hex::encode(tuple::pack(&elems));
        if got != want {
            failures.push(format!("{name}: pack {got} != {want}"));
            continue;
        }
        if case["roundtrip_ok"].as_bool() == Some(true) {
            let bytes = hex::decode(want).expect("hex");
            match tuple::unpack(&bytes) {
                Ok(back) if back == elems && tuple::pack(&back) == bytes => {}
                Ok(back) => failures.push(format!("{name}: unpack gave {back:?}")),
                Err(e) => failures.push(format!("{name}: unpack failed: {e}")),
            }
        }
    }
    report("tuple_pack", cases.len(), failures);
}

#[test]
fn golden_msgpack() {
    let g = golden();
    let cases = section(&g, "msgpack");
    assert_eq!(cases.len(), 45);
    let mut failures = Vec::new();
    for case in cases {
        let name = s(case, "name");
        let want = s(case, "hex");
        let v = value(&case["input"]);
        match value::encode(&v) {
            Ok(bytes) if hex::encode(&bytes) == want => match value::decode(&bytes) {
                Ok(back) if back == v => {}
                Ok(back) => failures.push(format!("{name}: decode gave {back:?}")),
                Err(e) => failures.push(format!("{name}: decode failed: {e}")),
            },
            Ok(bytes) => failures.push(format!("{name}: encode {} != {want}", hex::encode(bytes))),
            Err(e) => failures.push(format!("{name}: encode failed: {e}")),
        }
    }
    report("msgpack", cases.len(), failures);
}

#[test]
fn golden_context_id() {
    let g = golden();
    let cases = section(&g, "context_id");
    assert_eq!(cases.len(), 27);
    let mut failures = Vec::new();
    for case in cases {
        let name = s(case, "name");
        let text = s(case, "context_json");
        let want_id = case["id"].as_u64().expect("id") as u32;
        let parsed = match context_id::parse_python_json(text) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{name}: parse failed: {e}"));
                continue;
            }
        };
        let canonical = context_id::canonical_json(&parsed);
        if canonical.as_deref() != case["canonical_json"].as_str() {
            failures.push(format!("{name}: canonical {canonical:?}"));
        }
        if let Some(c) = &canonical {
            let sha = hex::encode(Sha256::digest(c.as_bytes()));
            if Some(sha.as_str()) != case["sha256_hex"].as_str() {
                failures.push(format!("{name}: sha256 {sha}"));
            }
        }
        let id = context_id::id_of(&parsed);
        if id != want_id {
            failures.push(format!("{name}: id {id} != {want_id}"));
        }
        if context_id::context_to_id_from_json(text) != Ok(want_id) {
            failures.push(format!("{name}: context_to_id_from_json differs"));
        }
        let tuple_hex = hex::encode(tuple::pack(&[Elem::from(id)]));
        if tuple_hex != s(case, "id_tuple_hex") {
            failures.push(format!("{name}: id tuple {tuple_hex}"));
        }
        // The serde_json path agrees wherever serde_json can represent the input exactly: it
        // rejects NaN, and turns integers beyond u64 into floats (the "big int" case).
        if let Ok(j) = serde_json::from_str::<J>(text)
            && !name.starts_with("big int")
        {
            let via_serde = context_id::context_to_id(&j);
            if via_serde != want_id {
                failures.push(format!("{name}: serde path id {via_serde}"));
            }
            if PyJson::from(&j) != parsed && !name.starts_with("NaN") {
                failures.push(format!("{name}: serde path parses differently"));
            }
        }
    }
    report("context_id", cases.len(), failures);
}

#[test]
fn golden_subspace() {
    let g = golden();
    let cases = section(&g, "subspace");
    assert_eq!(cases.len(), 5);
    let mut failures = Vec::new();
    for case in cases {
        let name = s(case, "name");
        let prefix = hex::decode(s(case, "prefix_hex")).expect("hex");
        let elems = items(&case["tuple"]);
        let key = hex::encode(tuple::pack_with_prefix(&prefix, &elems));
        let (begin, end) = tuple::range(&prefix, &elems);
        let got = (key, hex::encode(begin), hex::encode(end));
        let want =
            (s(case, "key_hex").to_owned(), s(case, "range_begin_hex").to_owned(), s(case, "range_end_hex").to_owned());
        if got != want {
            failures.push(format!("{name}: got {got:?}"));
        }
    }
    report("subspace", cases.len(), failures);
}

// ---------------------------------------------------------------------------------------------
// Spec §8 item 19: tree round-trips through an ordered KV map.

const PREFIX: &[u8] = &[0x15, 0x3d];

#[derive(Default)]
struct TreeStore {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl TreeStore {
    fn delete(&mut self, path: &[Elem]) {
        let (begin, end) = tuple::range(PREFIX, path);
        let doomed: Vec<Vec<u8>> = self.kv.range(begin..end).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.kv.remove(&k);
        }
    }

    fn set(&mut self, path: &[Elem], v: &Value) {
        self.delete(path);
        for (key, bytes) in tree::flatten(path, v).expect("flatten") {
            self.kv.insert(tuple::pack_with_prefix(PREFIX, &key), bytes);
        }
    }

    fn under(&self, path: &[Elem]) -> Vec<(Vec<Elem>, Value)> {
        let (begin, end) = tuple::range(PREFIX, path);
        let base = tuple::pack_with_prefix(PREFIX, path).len();
        self.kv
            .range(begin..end)
            .map(|(k, v)| (tuple::unpack(&k[base..]).expect("key"), value::decode(v).expect("value")))
            .collect()
    }

    fn get(&self, path: &[Elem]) -> Option<Value> {
        tree::unflatten(self.under(path)).expect("unflatten")
    }
}

fn attrs() -> Vec<Elem> {
    vec![Elem::from("3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b"), Elem::from("attrs")]
}

fn jv(j: J) -> Value {
    Value::from(&j)
}

#[test]
fn spec_item_19_tree_roundtrips() {
    // Keys already in byte order, so a read gives back the same insertion order.
    for v in [
        json!("scalar"),
        json!({"a": 1, "b": "x"}),
        json!({"a": {"b": {"c": 1.5}}}),
        json!([1, "two", 3.0]),
        json!({}),
        json!([]),
        json!(null),
        json!({"k": null}),
        json!([{"a": [1, {"b": []}]}, {"c": {}}, [[], [null]]]),
    ] {
        let mut store = TreeStore::default();
        store.set(&attrs(), &jv(v.clone()));
        assert_eq!(store.get(&attrs()), Some(jv(v.clone())), "{v}");
    }
}

#[test]
fn spec_item_19_overwrite_replaces_subtree_and_delete_clears() {
    let mut store = TreeStore::default();
    store.set(&attrs(), &jv(json!({"a": 1, "b": 2})));
    store.set(&attrs(), &jv(json!({"c": 3})));
    assert_eq!(store.get(&attrs()), Some(jv(json!({"c": 3}))));
    store.delete(&attrs());
    assert_eq!(store.get(&attrs()), None);
}

#[test]
fn spec_item_19_immediate_child_keys() {
    let mut store = TreeStore::default();
    store.set(&attrs(), &jv(json!({"hparams": {"lr": 0.1}, "b": [1, 2], "a": 1})));
    let keys: Vec<Vec<Elem>> = store.under(&attrs()).into_iter().map(|(k, _)| k).collect();
    assert_eq!(tree::child_keys(&keys), vec![Elem::from("a"), Elem::from("b"), Elem::from("hparams")]);
}

// ---------------------------------------------------------------------------------------------
// Spec §8 item 20: msgpack and context ids.

fn roundtrip(v: &Value) -> Value {
    value::decode(&value::encode(v).expect("encode")).expect("decode")
}

#[test]
fn spec_item_20_datetimes_roundtrip_also_nested() {
    let dt = Value::DateTime(1735689600.5);
    assert_eq!(roundtrip(&dt), dt);
    let nested = Value::Map(vec![
        (Value::from("ts"), Value::DateTime(1704067200.0)),
        (Value::from("l"), Value::Array(vec![Value::DateTime(0.25)])),
    ]);
    assert_eq!(roundtrip(&nested), nested);
}

#[test]
fn spec_item_20_unknown_ext_is_opaque() {
    let bytes = [0xc7, 0x03, 0x11, 0xaa, 0xbb, 0xcc];
    let v = value::decode(&bytes).expect("decode");
    assert_eq!(v, Value::Ext(0x11, vec![0xaa, 0xbb, 0xcc]));
    assert_eq!(value::encode(&v).expect("encode"), bytes);
}

#[test]
fn spec_item_20_basic_types_roundtrip() {
    for v in [
        Value::Int(42),
        Value::Int(-7),
        Value::Float(3.25),
        Value::from("s"),
        Value::Nil,
        Value::Bool(true),
        Value::Array(vec![Value::Int(1), Value::from("x")]),
        jv(json!({"a": {"b": [1, 2.5]}})),
        Value::Bin(vec![0, 1, 2]),
    ] {
        assert_eq!(roundtrip(&v), v);
    }
}

#[test]
fn spec_item_20_unsupported_values_fail_to_encode() {
    // Rust's type system rules out arbitrary objects; what remains unsupported is what Python
    // also refuses: integers beyond msgpack's 64-bit range.
    assert_eq!(value::encode(&Value::Int(1 << 70)), Err(ValueError::IntOutOfRange(1 << 70)));
}

#[test]
fn spec_item_20_context_to_id() {
    assert_eq!(context_id::context_to_id(&J::Null), 0);
    assert_eq!(context_id::context_to_id(&json!({})), 0);
    let a = json!({"subset": "train", "augmented": true});
    let b = json!({"augmented": true, "subset": "train"});
    assert_eq!(context_id::context_to_id(&a), context_id::context_to_id(&a));
    assert_eq!(context_id::context_to_id(&a), context_id::context_to_id(&b));
    assert_ne!(
        context_id::context_to_id(&json!({"subset": "train"})),
        context_id::context_to_id(&json!({"subset": "val"}))
    );
    assert!(context_id::context_to_id(&a) > 0);
}
