//! The tree convention of run meta, attrs and project settings (spec §3.4), as pure functions.
//!
//! A value stored at path `p` becomes one key per leaf: dict entries recurse into `p + (key,)`,
//! list items into `p + (index,)`, an empty dict is `p + ("__empty_dict__",) = mp(True)`, an
//! empty list `p + ("__empty_list__",) = mp(True)`, and any other value `p + ("__leaf__",) =
//! mp(value)`. Reading groups the keys found under `p` back into a value. The caller does the IO:
//! a tree-set clears `tuple::range(p)` and writes [`flatten`]'s pairs; a tree-get range-reads under
//! `p`, strips the prefix, decodes the values and calls [`unflatten`].

use crate::storage::tuple::Elem;
use crate::storage::value::{self, Value, ValueError};

/// Sentinel element under which a scalar is stored.
pub const LEAF: &str = "__leaf__";
/// Sentinel element that marks an empty dict.
pub const EMPTY_DICT: &str = "__empty_dict__";
/// Sentinel element that marks an empty list.
pub const EMPTY_LIST: &str = "__empty_list__";

/// Largest list the reader rebuilds from integer group heads (guards against absurd indexes).
const MAX_LIST_LEN: usize = 1 << 24;

/// Errors of flattening and unflattening trees.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TreeError {
    /// A dict key has a type that cannot be a tuple element (list, dict, datetime, ext).
    #[error("dict key of type {0} cannot be a tuple element")]
    InvalidKey(&'static str),
    /// A leaf value could not be msgpack-encoded.
    #[error("leaf value: {0}")]
    Value(#[from] ValueError),
    /// Integer group heads include a negative index.
    #[error("negative list index {0} in tree")]
    NegativeIndex(i128),
    /// Integer group heads ask for an unreasonably long list.
    #[error("list index {0} in tree is too large")]
    IndexTooLarge(i128),
}

/// One flattened leaf: the full key tuple and the msgpack bytes stored under it.
pub type FlatEntry = (Vec<Elem>, Vec<u8>);

/// Keys of one group during unflattening: the group head and its members' remaining keys.
type Group<'a> = (&'a Elem, Vec<(&'a [Elem], Value)>);

/// Flattens `value` at path `prefix` into `(key tuple, msgpack bytes)` pairs, in the order the
/// reference writes them (dict insertion order, list index order).
///
/// Each returned key is the full tuple, `prefix` included, relative to the directory subspace.
pub fn flatten(prefix: &[Elem], value: &Value) -> Result<Vec<FlatEntry>, TreeError> {
    let mut out = Vec::new();
    let mut path = prefix.to_vec();
    flatten_into(&mut path, value, &mut out)?;
    Ok(out)
}

fn flatten_into(path: &mut Vec<Elem>, value: &Value, out: &mut Vec<FlatEntry>) -> Result<(), TreeError> {
    match value {
        Value::Map(entries) if entries.is_empty() => {
            out.push((with(path, Elem::from(EMPTY_DICT)), encode_true()?));
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                path.push(key_elem(k)?);
                let r = flatten_into(path, v, out);
                path.pop();
                r?;
            }
        }
        Value::Array(items) if items.is_empty() => {
            out.push((with(path, Elem::from(EMPTY_LIST)), encode_true()?));
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Elem::Int(i as i128));
                let r = flatten_into(path, v, out);
                path.pop();
                r?;
            }
        }
        leaf => out.push((with(path, Elem::from(LEAF)), value::encode(leaf)?)),
    }
    Ok(())
}

fn with(path: &[Elem], last: Elem) -> Vec<Elem> {
    let mut key = Vec::with_capacity(path.len() + 1);
    key.extend_from_slice(path);
    key.push(last);
    key
}

fn encode_true() -> Result<Vec<u8>, TreeError> {
    Ok(value::encode(&Value::Bool(true))?)
}

/// Converts a dict key to the tuple element Python's `fdb.tuple.pack` would make of it.
fn key_elem(key: &Value) -> Result<Elem, TreeError> {
    Ok(match key {
        Value::Str(s) => Elem::Str(s.clone()),
        Value::Bin(b) => Elem::Bytes(b.clone()),
        Value::Int(i) => Elem::Int(*i),
        Value::Float(f) => Elem::Float(*f),
        Value::Bool(b) => Elem::Bool(*b),
        Value::Nil => Elem::Null,
        other => return Err(TreeError::InvalidKey(other.type_name())),
    })
}

/// Converts a group head back to a dict key (UUIDs become their hyphenated string, nested
/// tuples arrays).
fn elem_key(elem: &Elem) -> Value {
    match elem {
        Elem::Null => Value::Nil,
        Elem::Bytes(b) => Value::Bin(b.clone()),
        Elem::Str(s) => Value::Str(s.clone()),
        Elem::Tuple(items) => Value::Array(items.iter().map(elem_key).collect()),
        Elem::Int(i) => Value::Int(*i),
        Elem::Float(f) => Value::Float(*f),
        Elem::Bool(b) => Value::Bool(*b),
        Elem::Uuid(u) => Value::Str(u.hyphenated().to_string()),
    }
}

/// Rebuilds a value from the keys found under a path, each with the path prefix stripped and its
/// value decoded, in key order as a range read returns them.
///
/// No keys give `None` (absent). A single sentinel key gives the scalar, `{}` or `[]`. Otherwise
/// the keys are grouped by their first element: if every group head is an integer the result is
/// a list of length max+1 with `Nil` holes, else a dict keyed by the heads, which then holds a
/// literal `"__leaf__"` entry in the mixed scalar-and-children case. A key that ends exactly at a
/// group head (possible only in such a mixed case) contributes its value directly.
pub fn unflatten(entries: Vec<(Vec<Elem>, Value)>) -> Result<Option<Value>, TreeError> {
    let (keys, values): (Vec<Vec<Elem>>, Vec<Value>) = entries.into_iter().unzip();
    let items: Vec<(&[Elem], Value)> = keys.iter().map(Vec::as_slice).zip(values).collect();
    build(items)
}

fn build(items: Vec<(&[Elem], Value)>) -> Result<Option<Value>, TreeError> {
    if items.len() == 1 {
        let (key, _) = &items[0];
        match key {
            [] => return Ok(items.into_iter().next().map(|(_, v)| v)),
            [Elem::Str(s)] if s == LEAF => return Ok(items.into_iter().next().map(|(_, v)| v)),
            [Elem::Str(s)] if s == EMPTY_DICT => return Ok(Some(Value::Map(Vec::new()))),
            [Elem::Str(s)] if s == EMPTY_LIST => return Ok(Some(Value::Array(Vec::new()))),
            _ => {}
        }
    }
    // Group by head, keeping first-seen order (key order from the range read). In key order the
    // keys of one head are adjacent, so the last group is checked first: linear time for a
    // range read, whatever the number of children; other orders fall back to a search.
    let mut groups: Vec<Group<'_>> = Vec::new();
    for (key, v) in items {
        let Some((head, rest)) = key.split_first() else {
            // A key equal to the path itself next to deeper keys: nothing to place it under.
            continue;
        };
        let slot = match groups.last_mut() {
            Some(last) if last.0 == head => Some(last),
            _ => groups.iter_mut().rev().skip(1).find(|(h, _)| *h == head),
        };
        match slot {
            Some((_, members)) => members.push((rest, v)),
            None => groups.push((head, vec![(rest, v)])),
        }
    }
    if groups.is_empty() {
        return Ok(None);
    }
    if groups.iter().all(|(h, _)| matches!(h, Elem::Int(_))) {
        let mut max = 0usize;
        for (h, _) in &groups {
            if let Elem::Int(i) = h {
                if *i < 0 {
                    return Err(TreeError::NegativeIndex(*i));
                }
                let idx =
                    usize::try_from(*i).ok().filter(|idx| *idx < MAX_LIST_LEN).ok_or(TreeError::IndexTooLarge(*i))?;
                max = max.max(idx);
            }
        }
        let mut list = vec![Value::Nil; max + 1];
        for (h, members) in groups {
            if let Elem::Int(i) = h {
                // Bounds were checked above.
                let idx = *i as usize;
                list[idx] = build(members)?.unwrap_or(Value::Nil);
            }
        }
        return Ok(Some(Value::Array(list)));
    }
    let mut map = Vec::with_capacity(groups.len());
    for (h, members) in groups {
        map.push((elem_key(h), build(members)?.unwrap_or(Value::Nil)));
    }
    Ok(Some(Value::Map(map)))
}

/// Lists the distinct immediate children (first elements) of keys found under a path, in key
/// order, as the reference's child-key listing does.
pub fn child_keys(relative_keys: &[Vec<Elem>]) -> Vec<Elem> {
    let mut out: Vec<Elem> = Vec::new();
    for key in relative_keys {
        if let Some(head) = key.first()
            && !out.contains(head)
        {
            out.push(head.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::storage::tuple;

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    /// A toy ordered KV store with the reference's tree-set, tree-get and delete semantics.
    #[derive(Default)]
    struct Store {
        kv: BTreeMap<Vec<u8>, Vec<u8>>,
    }

    const PREFIX: &[u8] = &[0x15, 0x3d];

    impl Store {
        fn clear_range(&mut self, path: &[Elem]) {
            let (begin, end) = tuple::range(PREFIX, path);
            let doomed: Vec<Vec<u8>> = self.kv.range(begin..end).map(|(k, _)| k.clone()).collect();
            for k in doomed {
                self.kv.remove(&k);
            }
        }

        fn set(&mut self, path: &[Elem], v: &Value) {
            self.clear_range(path);
            for (key, bytes) in flatten(path, v).unwrap() {
                self.kv.insert(tuple::pack_with_prefix(PREFIX, &key), bytes);
            }
        }

        fn under(&self, path: &[Elem]) -> Vec<(Vec<Elem>, Value)> {
            let (begin, end) = tuple::range(PREFIX, path);
            let base = tuple::pack_with_prefix(PREFIX, path);
            self.kv
                .range(begin..end)
                .map(|(k, v)| {
                    let rel = tuple::unpack(&k[base.len()..]).unwrap();
                    (rel, value::decode(v).unwrap())
                })
                .collect()
        }

        fn get(&self, path: &[Elem]) -> Option<Value> {
            unflatten(self.under(path)).unwrap()
        }
    }

    fn run_path(field: &str) -> Vec<Elem> {
        vec![Elem::from("3f2a"), Elem::from(field)]
    }

    #[test]
    fn flatten_writes_sentinels_and_indexes() {
        let v = map(vec![
            ("lr", Value::Float(0.01)),
            ("layers", Value::Array(vec![Value::Int(64), Value::Int(32)])),
            ("e", map(vec![])),
            ("l", Value::Array(vec![])),
            ("n", Value::Nil),
        ]);
        let prefix = run_path("attrs");
        let got: Vec<(String, String)> = flatten(&prefix, &v)
            .unwrap()
            .into_iter()
            .map(|(k, b)| {
                let rel = k[prefix.len()..].to_vec();
                (serde_json::to_string(&tuple::to_json(&rel)).unwrap(), hex::encode(b))
            })
            .collect();
        let want = [
            (r#"["lr","__leaf__"]"#, "cb3f847ae147ae147b"),
            (r#"["layers",0,"__leaf__"]"#, "40"),
            (r#"["layers",1,"__leaf__"]"#, "20"),
            (r#"["e","__empty_dict__"]"#, "c3"),
            (r#"["l","__empty_list__"]"#, "c3"),
            (r#"["n","__leaf__"]"#, "c0"),
        ];
        let want: Vec<(String, String)> = want.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn tree_roundtrips() {
        let cases = vec![
            s("scalar"),
            Value::Int(5),
            Value::Float(0.5),
            Value::Bool(false),
            Value::Nil,
            map(vec![("a", Value::Int(1)), ("b", s("x"))]),
            map(vec![("outer", map(vec![("inner", map(vec![("deep", Value::Int(3))]))]))]),
            Value::Array(vec![Value::Int(1), s("two"), Value::Float(3.0)]),
            map(vec![]),
            Value::Array(vec![]),
            map(vec![("none", Value::Nil), ("empty", map(vec![])), ("el", Value::Array(vec![]))]),
            Value::Array(vec![
                map(vec![("name", s("a")), ("vals", Value::Array(vec![Value::Int(1), Value::Int(2)]))]),
                map(vec![("name", s("b")), ("vals", Value::Array(vec![map(vec![("x", Value::Nil)])]))]),
                Value::Array(vec![Value::Array(vec![]), map(vec![])]),
            ]),
        ];
        for v in cases {
            let mut store = Store::default();
            store.set(&run_path("attrs"), &v);
            // Keys come back in byte order, so compare with sorted maps where order differs.
            let got = store.get(&run_path("attrs")).unwrap();
            assert_eq!(sorted(&got), sorted(&v), "{v:?}");
        }
    }

    /// Orders dict entries by packed key, as a range read returns them.
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Map(entries) => {
                let mut e: Vec<(Value, Value)> = entries.iter().map(|(k, v)| (k.clone(), sorted(v))).collect();
                e.sort_by_key(|(k, _)| tuple::pack(&[key_elem(k).unwrap()]));
                Value::Map(e)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn overwriting_a_path_replaces_its_subtree() {
        let mut store = Store::default();
        let p = run_path("attrs");
        store.set(&p, &map(vec![("a", Value::Int(1)), ("b", Value::Int(2))]));
        store.set(&p, &map(vec![("c", Value::Int(3))]));
        assert_eq!(store.get(&p), Some(map(vec![("c", Value::Int(3))])));

        // A write through a deeper path clears only that subtree.
        let mut deeper = p.clone();
        deeper.push(Elem::from("d"));
        store.set(&deeper, &map(vec![("x", Value::Int(9))]));
        assert_eq!(store.get(&p), Some(map(vec![("c", Value::Int(3)), ("d", map(vec![("x", Value::Int(9))]))])));
        store.set(&deeper, &Value::Int(1));
        assert_eq!(store.get(&p), Some(map(vec![("c", Value::Int(3)), ("d", Value::Int(1))])));
    }

    #[test]
    fn deleting_a_path_clears_it() {
        let mut store = Store::default();
        let p = run_path("attrs");
        store.set(&p, &map(vec![("a", Value::Int(1)), ("b", map(vec![("c", Value::Int(2))]))]));
        let mut b = p.clone();
        b.push(Elem::from("b"));
        store.clear_range(&b);
        assert_eq!(store.get(&b), None);
        assert_eq!(store.get(&p), Some(map(vec![("a", Value::Int(1))])));
        store.clear_range(&p);
        assert_eq!(store.get(&p), None);
        assert!(store.kv.is_empty());
    }

    #[test]
    fn immediate_child_keys_are_listed() {
        let mut store = Store::default();
        let p = run_path("meta");
        store.set(
            &p,
            &map(vec![
                ("name", s("run")),
                ("tags", Value::Array(vec![s("a"), s("b")])),
                ("cfg", map(vec![("x", Value::Int(1)), ("y", Value::Int(2))])),
            ]),
        );
        let keys: Vec<Vec<Elem>> = store.under(&p).into_iter().map(|(k, _)| k).collect();
        assert_eq!(child_keys(&keys), vec![Elem::from("cfg"), Elem::from("name"), Elem::from("tags")]);
        assert!(child_keys(&[]).is_empty());
    }

    #[test]
    fn list_with_holes_and_absent() {
        assert_eq!(unflatten(vec![]).unwrap(), None);
        let entries =
            vec![(vec![Elem::Int(0), Elem::from(LEAF)], s("a")), (vec![Elem::Int(3), Elem::from(LEAF)], s("d"))];
        assert_eq!(unflatten(entries).unwrap(), Some(Value::Array(vec![s("a"), Value::Nil, Value::Nil, s("d")])));
    }

    #[test]
    fn mixed_scalar_and_children_gives_literal_leaf_key() {
        // A leaf written at p, then a child written at p + ("a",) without clearing p.
        let entries =
            vec![(vec![Elem::from(LEAF)], Value::Int(1)), (vec![Elem::from("a"), Elem::from(LEAF)], Value::Int(2))];
        assert_eq!(unflatten(entries).unwrap(), Some(map(vec![(LEAF, Value::Int(1)), ("a", Value::Int(2))])));
        // Integer and string heads mixed make a dict with int keys.
        let entries = vec![
            (vec![Elem::Int(0), Elem::from(LEAF)], Value::Int(1)),
            (vec![Elem::from("k"), Elem::from(LEAF)], Value::Int(2)),
        ];
        assert_eq!(
            unflatten(entries).unwrap(),
            Some(Value::Map(vec![(Value::Int(0), Value::Int(1)), (s("k"), Value::Int(2))]))
        );
    }

    #[test]
    fn unflatten_errors_and_key_types() {
        assert_eq!(
            unflatten(vec![(vec![Elem::Int(-1), Elem::from(LEAF)], Value::Nil)]),
            Err(TreeError::NegativeIndex(-1))
        );
        assert!(matches!(
            unflatten(vec![(vec![Elem::Int(1 << 40), Elem::from(LEAF)], Value::Nil)]),
            Err(TreeError::IndexTooLarge(_))
        ));
        assert_eq!(
            flatten(&[], &Value::Map(vec![(Value::Array(vec![]), Value::Nil)])),
            Err(TreeError::InvalidKey("list"))
        );
        assert!(matches!(
            flatten(&[], &Value::Int(u64::MAX as i128 + 1)),
            Err(TreeError::Value(ValueError::IntOutOfRange(_)))
        ));
        // Non-str keys flatten to their tuple element and come back.
        let v = Value::Map(vec![(Value::Int(7), s("x")), (Value::Bool(true), s("y"))]);
        let mut store = Store::default();
        store.set(&[Elem::from("k")], &v);
        assert_eq!(store.get(&[Elem::from("k")]), Some(v));
    }
}
