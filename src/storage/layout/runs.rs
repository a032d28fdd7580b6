//! `data/runs` (⟨runs⟩) and the run operations that keep ⟨indexes⟩ in step with it.
//!
//! | Key | Value |
//! |---|---|
//! | `(R,"meta",field,"__leaf__")` | mp(v): name, description, created_at, updated_at, finalized_at, is_archived, active, experiment_id, client_start_ts, duration, pending_deletion |
//! | `(R,"attrs",*path,…sentinel)` | tree (see `tree.rs`): `hparams`, `__system_params`, `__blobs__` |
//! | `(R,"traces",ctx_id,name,"dtype"/"last"/"last_step")` | mp(str) / mp(number) / mp(int) |
//! | `(R,"contexts",ctx_id)` | mp(context dict) |
//! | `(R,"tags",tag_uuid)` | mp(True) |
//! | `(R,"seqs",ctx_id,name,col,step)` | see `sequences.rs` |
//!
//! Times are passed in by the caller (never read from the clock here), so a replayed batch writes
//! the same values.

use crate::storage::kv::{RangeOption, Transaction};
use crate::storage::tree;
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

use super::LayoutError;
use super::indexes::Indexes;

/// The ten meta leaves a new run gets, in the reference's order.
pub const META_FIELDS: [&str; 10] = [
    "name",
    "description",
    "created_at",
    "updated_at",
    "finalized_at",
    "is_archived",
    "active",
    "experiment_id",
    "client_start_ts",
    "duration",
];

/// What a trace records about its sequence.
#[derive(Debug, Clone, Copy)]
pub struct TraceInfo<'a> {
    /// Context id.
    pub ctx_id: u32,
    /// Sequence name.
    pub name: &'a str,
    /// `float`, `int`, `image`, `text`, `logs`, ...
    pub dtype: &'a str,
    /// The most recently written value; `None` leaves the stored `last` unchanged.
    pub last: Option<&'a Value>,
    /// The most recently written step.
    pub last_step: i64,
}

/// One trace of a run as stored under `(R,"traces",ctx_id,name,…)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTrace {
    /// Context id.
    pub ctx_id: u32,
    /// Sequence name.
    pub name: String,
    /// `dtype` (`float`, `image`, `logs`...), `""` when missing.
    pub dtype: String,
    /// The last value, `Nil` when unknown.
    pub last: Value,
    /// The last step, `Nil` when unknown.
    pub last_step: Value,
}

/// A run's meta and contexts, read together by [`Runs::read_head`].
#[derive(Debug, Clone, Default)]
pub struct RunHead {
    /// The meta tree, `None` when the run has no meta.
    pub meta: Option<Value>,
    /// The contexts by id.
    pub contexts: std::collections::HashMap<i128, Value>,
    /// The keys read.
    pub keys: usize,
}

/// Key-level access to ⟨runs⟩.
#[derive(Debug, Clone)]
pub struct Runs {
    prefix: Vec<u8>,
}

fn run_path(run: &str, rest: &[Elem]) -> Vec<Elem> {
    let mut elems = Vec::with_capacity(rest.len() + 1);
    elems.push(Elem::from(run));
    elems.extend_from_slice(rest);
    elems
}

fn corrupt(e: impl std::fmt::Display) -> LayoutError {
    LayoutError::Corrupt(e.to_string())
}

fn enc(v: &Value) -> Result<Vec<u8>, LayoutError> {
    value::encode(v).map_err(|e| LayoutError::Encode(e.to_string()))
}

impl Runs {
    /// ⟨runs⟩ under `prefix`.
    pub fn new(prefix: &[u8]) -> Self {
        Self { prefix: prefix.to_vec() }
    }

    /// The key `⟨runs⟩ + pack((R, *rest))`.
    pub fn key(&self, run: &str, rest: &[Elem]) -> Vec<u8> {
        tuple::pack_with_prefix(&self.prefix, &run_path(run, rest))
    }

    /// `[begin, end)` of every key strictly under `(R, *rest)`.
    pub fn range(&self, run: &str, rest: &[Elem]) -> (Vec<u8>, Vec<u8>) {
        tuple::range(&self.prefix, &run_path(run, rest))
    }

    /// `(R,"meta",field,"__leaf__")`.
    pub fn meta_key(&self, run: &str, field: &str) -> Vec<u8> {
        self.key(run, &[Elem::from("meta"), Elem::from(field), Elem::from(tree::LEAF)])
    }

    /// Sets one meta leaf.
    pub fn set_meta(&self, tx: &Transaction, run: &str, field: &str, v: &Value) -> Result<(), LayoutError> {
        tx.set(&self.meta_key(run, field), &enc(v)?);
        Ok(())
    }

    /// Reads one meta leaf (`None` when absent).
    pub async fn meta_field(&self, tx: &Transaction, run: &str, field: &str) -> Result<Option<Value>, LayoutError> {
        match tx.get(&self.meta_key(run, field), false).await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(value::decode(&bytes).map_err(|e| LayoutError::Corrupt(e.to_string()))?)),
        }
    }

    /// A run exists iff any key lies under `(R,"meta")`.
    pub async fn exists(&self, tx: &Transaction, run: &str, snapshot: bool) -> Result<bool, LayoutError> {
        let (b, e) = self.range(run, &[Elem::from("meta")]);
        Ok(!tx.get_range(&RangeOption::new(b, e).limit(1), snapshot).await?.is_empty())
    }

    /// Tree-set: clears everything under `(R, *path)` and writes the flattened value.
    pub fn tree_set(&self, tx: &Transaction, run: &str, path: &[Elem], v: &Value) -> Result<(), LayoutError> {
        let base = run_path(run, path);
        let (b, e) = tuple::range(&self.prefix, &base);
        tx.clear_range(&b, &e);
        for (key, bytes) in tree::flatten(&base, v).map_err(|e| LayoutError::Encode(e.to_string()))? {
            tx.set(&tuple::pack_with_prefix(&self.prefix, &key), &bytes);
        }
        Ok(())
    }

    /// Tree-get: the value stored under `(R, *path)`, `None` when nothing is.
    pub async fn tree_get(
        &self,
        tx: &Transaction,
        run: &str,
        path: &[Elem],
        snapshot: bool,
    ) -> Result<Option<Value>, LayoutError> {
        let base = run_path(run, path);
        let (b, e) = tuple::range(&self.prefix, &base);
        let base_key = tuple::pack_with_prefix(&self.prefix, &base);
        let kvs = tx.get_range(&RangeOption::new(b, e), snapshot).await?;
        let mut rows = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let rel = tuple::unpack(&kv.key[base_key.len()..]).map_err(|e| LayoutError::Corrupt(e.to_string()))?;
            let v = value::decode(&kv.value).map_err(|e| LayoutError::Corrupt(e.to_string()))?;
            rows.push((rel, v));
        }
        tree::unflatten(rows).map_err(|e| LayoutError::Corrupt(e.to_string()))
    }

    /// Reads the run's meta tree and its contexts with one range read (`snapshot`: without read
    /// conflicts): `(R,"contexts",…)` and `(R,"meta",…)` are neighbours in every store, since no
    /// run-level name sorts between them in either sequence layout (`chunks` and `seqs` sort outside
    /// them), so a run's reads cost one seek less. Keys of another shape within the range are
    /// skipped, as [`Runs::read_contexts`] skips them.
    pub async fn read_head(&self, tx: &Transaction, run: &str, snapshot: bool) -> Result<RunHead, LayoutError> {
        let (begin, _) = self.range(run, &[Elem::from("contexts")]);
        let (_, end) = self.range(run, &[Elem::from("meta")]);
        let base = self.key(run, &[]);
        let kvs = tx.get_range(&RangeOption::new(begin, end), snapshot).await?;
        let mut contexts = std::collections::HashMap::new();
        let mut meta_rows = Vec::new();
        for kv in &kvs {
            let mut rel = tuple::unpack(&kv.key[base.len()..]).map_err(corrupt)?;
            match rel.first() {
                Some(Elem::Str(scope)) if scope == "contexts" => {
                    if let [_, Elem::Int(id)] = rel.as_slice() {
                        contexts.insert(*id, value::decode(&kv.value).map_err(corrupt)?);
                    }
                }
                Some(Elem::Str(scope)) if scope == "meta" => {
                    rel.remove(0);
                    meta_rows.push((rel, value::decode(&kv.value).map_err(corrupt)?));
                }
                _ => {}
            }
        }
        Ok(RunHead { meta: tree::unflatten(meta_rows).map_err(corrupt)?, contexts, keys: kvs.len() })
    }

    /// `(R,"contexts",ctx_id) = mp(ctx)`.
    pub fn set_context(&self, tx: &Transaction, run: &str, ctx_id: u32, ctx: &Value) -> Result<(), LayoutError> {
        tx.set(&self.key(run, &[Elem::from("contexts"), Elem::from(ctx_id)]), &enc(ctx)?);
        Ok(())
    }

    /// Reads the run's contexts `(R,"contexts",ctx_id)` by id (`snapshot`: without read
    /// conflicts); keys whose rest is not one integer are skipped. Returns them and the keys read.
    pub async fn read_contexts(
        &self,
        tx: &Transaction,
        run: &str,
        snapshot: bool,
    ) -> Result<(std::collections::HashMap<i128, Value>, usize), LayoutError> {
        let scope = [Elem::from("contexts")];
        let (b, e) = self.range(run, &scope);
        let base = self.key(run, &scope);
        let kvs = tx.get_range(&RangeOption::new(b, e), snapshot).await?;
        let mut contexts = std::collections::HashMap::new();
        for kv in &kvs {
            if let [Elem::Int(id)] = tuple::unpack(&kv.key[base.len()..]).map_err(corrupt)?.as_slice() {
                contexts.insert(*id, value::decode(&kv.value).map_err(corrupt)?);
            }
        }
        Ok((contexts, kvs.len()))
    }

    /// Reads the run's traces `(R,"traces",ctx_id,name,field)` in storage order (context id, then
    /// name), one per `(ctx_id, name)` (`snapshot`: without read conflicts); keys of another shape
    /// are skipped. Returns them and the keys read.
    pub async fn read_traces(
        &self,
        tx: &Transaction,
        run: &str,
        snapshot: bool,
    ) -> Result<(Vec<StoredTrace>, usize), LayoutError> {
        let scope = [Elem::from("traces")];
        let (b, e) = self.range(run, &scope);
        let base = self.key(run, &scope);
        let kvs = tx.get_range(&RangeOption::new(b, e), snapshot).await?;
        let mut out: Vec<StoredTrace> = Vec::new();
        for kv in &kvs {
            let rest = tuple::unpack(&kv.key[base.len()..]).map_err(corrupt)?;
            let [Elem::Int(ctx), Elem::Str(name), Elem::Str(field)] = rest.as_slice() else {
                continue;
            };
            let ctx_id = u32::try_from(*ctx).map_err(|_| LayoutError::Corrupt(format!("context id {ctx}")))?;
            let v = value::decode(&kv.value).map_err(corrupt)?;
            let trace = match out.last_mut() {
                Some(t) if t.ctx_id == ctx_id && &t.name == name => t,
                _ => {
                    out.push(StoredTrace {
                        ctx_id,
                        name: name.clone(),
                        dtype: String::new(),
                        last: Value::Nil,
                        last_step: Value::Nil,
                    });
                    let Some(t) = out.last_mut() else { continue };
                    t
                }
            };
            match field.as_str() {
                "dtype" => trace.dtype = v.as_str().unwrap_or_default().to_owned(),
                "last" => trace.last = v,
                "last_step" => trace.last_step = v,
                _ => {}
            }
        }
        Ok((out, kvs.len()))
    }

    /// Trace info of a sequence: `dtype`, `last` (only when given) and `last_step`.
    pub fn set_trace_info(&self, tx: &Transaction, run: &str, t: &TraceInfo<'_>) -> Result<(), LayoutError> {
        let field =
            |f: &str| self.key(run, &[Elem::from("traces"), Elem::from(t.ctx_id), Elem::from(t.name), Elem::from(f)]);
        tx.set(&field("dtype"), &enc(&Value::from(t.dtype))?);
        if let Some(last) = t.last {
            tx.set(&field("last"), &enc(last)?);
        }
        tx.set(&field("last_step"), &enc(&Value::from(t.last_step))?);
        Ok(())
    }

    /// `(R,"tags",tag_uuid) = mp(True)`.
    pub fn set_tag(&self, tx: &Transaction, run: &str, tag_uuid: &str) -> Result<(), LayoutError> {
        tx.set(&self.key(run, &[Elem::from("tags"), Elem::from(tag_uuid)]), &enc(&Value::Bool(true))?);
        Ok(())
    }

    /// Removes `(R,"tags",tag_uuid)`.
    pub fn clear_tag(&self, tx: &Transaction, run: &str, tag_uuid: &str) {
        tx.clear(&self.key(run, &[Elem::from("tags"), Elem::from(tag_uuid)]));
    }

    /// Every run hash with data under ⟨runs⟩, found by skipping from one run's subtree to the next
    /// (one short read per run, whatever the run's size).
    pub async fn hashes(&self, tx: &Transaction, snapshot: bool) -> Result<Vec<String>, LayoutError> {
        let mut out = Vec::new();
        let mut begin = self.prefix.clone();
        let end = crate::storage::kv::strinc(&self.prefix);
        loop {
            let kvs = tx.get_range(&RangeOption::new(begin.clone(), end.clone()).limit(1), snapshot).await?;
            let Some(kv) = kvs.first() else { return Ok(out) };
            let rest = tuple::unpack(&kv.key[self.prefix.len()..]).map_err(|e| LayoutError::Corrupt(e.to_string()))?;
            let Some(Elem::Str(run)) = rest.first() else {
                return Err(LayoutError::Corrupt("a ⟨runs⟩ key does not start with a run hash".into()));
            };
            begin = crate::storage::kv::strinc(&self.key(run, &[]));
            out.push(run.clone());
        }
    }

    /// Clears everything of the run: meta, attrs, traces, contexts, tags, seqs.
    pub fn clear_run(&self, tx: &Transaction, run: &str) {
        let (b, e) = self.range(run, &[]);
        tx.clear_range(&b, &e);
    }
}

/// The index name of an indexed meta field.
fn indexed_meta(field: &str) -> Option<&'static str> {
    match field {
        "is_archived" => Some("archived"),
        "active" => Some("active"),
        _ => None,
    }
}

/// A tuple element for an index entry: only scalars are indexable.
pub fn index_elem(v: &Value) -> Option<Elem> {
    match v {
        Value::Bool(b) => Some(Elem::Bool(*b)),
        Value::Int(i) => Some(Elem::Int(*i)),
        Value::Float(f) => Some(Elem::Float(*f)),
        Value::Str(s) => Some(Elem::Str(s.clone())),
        _ => None,
    }
}

/// Run operations spanning ⟨runs⟩ and ⟨indexes⟩, as the reference's storage functions do them.
#[derive(Debug, Clone)]
pub struct RunOps {
    /// ⟨runs⟩.
    pub runs: Runs,
    /// ⟨indexes⟩.
    pub indexes: Indexes,
}

impl RunOps {
    /// `update_meta(fields)`: swaps the `archived`/`active` index entries when those fields change,
    /// then writes `updated_at = now` and each field.
    pub async fn update_meta(
        &self,
        tx: &Transaction,
        run: &str,
        now: f64,
        fields: &[(&str, Value)],
    ) -> Result<(), LayoutError> {
        for (field, new) in fields {
            let Some(index) = indexed_meta(field) else {
                continue;
            };
            let old = self.runs.meta_field(tx, run, field).await?.unwrap_or(Value::Nil);
            if &old == new {
                continue;
            }
            if let Some(old) = index_elem(&old) {
                self.indexes.remove(tx, run, &[Elem::from(index), old, Elem::from(run)]);
            }
            if let Some(new) = index_elem(new) {
                self.indexes.add(tx, run, &[Elem::from(index), new, Elem::from(run)]);
            }
        }
        self.runs.set_meta(tx, run, "updated_at", &Value::Float(now))?;
        for (field, v) in fields {
            self.runs.set_meta(tx, run, field, v)?;
        }
        Ok(())
    }

    /// The create path of `create_run`: resets meta to the ten defaults and writes the tier-1
    /// indexes, then applies `client_start_ts` through `update_meta` when given.
    ///
    /// Unlike the reference (quirk 4 of `ingest-storage.md` §6), tier-1 entries of an existing meta
    /// are removed first, so a second create never leaves stale `created_at`/`archived` entries.
    pub async fn create_run(
        &self,
        tx: &Transaction,
        run: &str,
        now: f64,
        client_start_ts: Option<f64>,
    ) -> Result<(), LayoutError> {
        for (field, index) in [("is_archived", "archived"), ("active", "active"), ("created_at", "created_at")] {
            if let Some(old) = self.runs.meta_field(tx, run, field).await?.as_ref().and_then(index_elem) {
                self.indexes.remove(tx, run, &[Elem::from(index), old, Elem::from(run)]);
            }
        }
        let (b, e) = self.runs.range(run, &[Elem::from("meta")]);
        tx.clear_range(&b, &e);
        let defaults: [(&str, Value); 10] = [
            ("name", Value::Str(format!("Run: {run}"))),
            ("description", Value::from("")),
            ("created_at", Value::Float(now)),
            ("updated_at", Value::Float(now)),
            ("finalized_at", Value::Nil),
            ("is_archived", Value::Bool(false)),
            ("active", Value::Bool(true)),
            ("experiment_id", Value::Nil),
            ("client_start_ts", Value::Nil),
            ("duration", Value::Nil),
        ];
        for (field, v) in &defaults {
            self.runs.set_meta(tx, run, field, v)?;
        }
        self.indexes.add(tx, run, &[Elem::from("archived"), Elem::Bool(false), Elem::from(run)]);
        self.indexes.add(tx, run, &[Elem::from("active"), Elem::Bool(true), Elem::from(run)]);
        self.indexes.add(tx, run, &[Elem::from("created_at"), Elem::Float(now), Elem::from(run)]);
        if let Some(ts) = client_start_ts {
            self.update_meta(tx, run, now, &[("client_start_ts", Value::Float(ts))]).await?;
        }
        Ok(())
    }

    /// `set_attrs(path, node)`: tree-sets the attrs path, writes `updated_at`, and re-indexes the
    /// run's hparams when the path is under `hparams`.
    pub async fn set_attrs(
        &self,
        tx: &Transaction,
        run: &str,
        path: &[String],
        node: &Value,
        now: f64,
    ) -> Result<(), LayoutError> {
        let mut full = vec![Elem::from("attrs")];
        full.extend(path.iter().map(Elem::from));
        self.runs.tree_set(tx, run, &full, node)?;
        self.runs.set_meta(tx, run, "updated_at", &Value::Float(now))?;
        let hparams = match path {
            [only] if only == "hparams" => Some(node.clone()),
            [first, ..] if first == "hparams" => {
                self.runs.tree_get(tx, run, &[Elem::from("attrs"), Elem::from("hparams")], false).await?
            }
            _ => None,
        };
        if let Some(Value::Map(entries)) = hparams {
            self.reindex_hparams(tx, run, &entries).await?;
        }
        Ok(())
    }

    /// Replaces the run's hparam index entries with one per top-level scalar.
    pub async fn reindex_hparams(
        &self,
        tx: &Transaction,
        run: &str,
        entries: &[(Value, Value)],
    ) -> Result<(), LayoutError> {
        self.indexes.deindex_run(tx, run, Some("hparam")).await?;
        for (k, v) in entries {
            let (Value::Str(k), Some(v)) = (k, index_elem(v)) else {
                continue;
            };
            self.indexes.add(tx, run, &[Elem::from("hparam"), Elem::from(k.as_str()), v, Elem::from(run)]);
        }
        Ok(())
    }

    /// Trace info plus the tier-3 index entry `("trace", name, R)`.
    pub fn record_trace(&self, tx: &Transaction, run: &str, t: &TraceInfo<'_>) -> Result<(), LayoutError> {
        self.runs.set_trace_info(tx, run, t)?;
        self.indexes.add(tx, run, &[Elem::from("trace"), Elem::from(t.name), Elem::from(run)]);
        Ok(())
    }

    /// Marks the run as pending deletion: only the `pending_deletion` leaf, no `updated_at` and no
    /// index change (the REST delete path of the reference).
    pub fn mark_pending_deletion(&self, tx: &Transaction, run: &str) -> Result<(), LayoutError> {
        self.runs.set_meta(tx, run, "pending_deletion", &Value::Bool(true))
    }

    /// Whether the run's meta says `pending_deletion`.
    pub async fn is_pending_deletion(&self, tx: &Transaction, run: &str) -> Result<bool, LayoutError> {
        Ok(matches!(self.runs.meta_field(tx, run, "pending_deletion").await?, Some(Value::Bool(true))))
    }

    /// The run's meta as a map with `hash` first, or `None` when the run has no meta.
    pub async fn get_run(&self, tx: &Transaction, run: &str, snapshot: bool) -> Result<Option<Value>, LayoutError> {
        let meta = self.runs.tree_get(tx, run, &[Elem::from("meta")], snapshot).await?;
        Ok(match meta {
            Some(Value::Map(fields)) => {
                let mut out = vec![(Value::from("hash"), Value::from(run))];
                out.extend(fields);
                Some(Value::Map(out))
            }
            Some(_) | None => None,
        })
    }
}
