//! `system` (⟨system⟩): entities and their links to runs.
//!
//! | Key | Value |
//! |---|---|
//! | `(kind, uuid, field)` for kind ∈ experiments, tags, dashboards, dashboard_apps, reports, notes | mp(v) |
//! | `("experiments_by_name" / "tags_by_name", name)` | mp(uuid str) |
//! | `("experiment_runs", exp, R)` / `("run_experiment", R)` | mp(True) / mp(exp uuid) |
//! | `("run_tags", R, tag)` / `("tag_runs", tag, R)` | mp(True) |
//! | `("project", key, "__leaf__")` | mp(v) |
//! | `("pinned_sequences", "__leaf__")` | mp(list) |
//! | `("job_lock", job)` | mp(expiry float) |
//!
//! UUIDs are stored as strings; an entity exists iff it has at least one field key.

use crate::storage::kv::{RangeOption, Transaction};
use crate::storage::tree::LEAF;
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

use super::LayoutError;
use super::indexes::Indexes;

/// Entity kinds with one key per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    /// `experiments`.
    Experiment,
    /// `tags`.
    Tag,
    /// `dashboards`.
    Dashboard,
    /// `dashboard_apps`.
    DashboardApp,
    /// `reports`.
    Report,
    /// `notes`.
    Note,
}

impl EntityKind {
    /// The key's first element.
    pub fn key_name(self) -> &'static str {
        match self {
            EntityKind::Experiment => "experiments",
            EntityKind::Tag => "tags",
            EntityKind::Dashboard => "dashboards",
            EntityKind::DashboardApp => "dashboard_apps",
            EntityKind::Report => "reports",
            EntityKind::Note => "notes",
        }
    }

    fn by_name(self) -> Option<&'static str> {
        match self {
            EntityKind::Experiment => Some("experiments_by_name"),
            EntityKind::Tag => Some("tags_by_name"),
            _ => None,
        }
    }

    fn index_name(self) -> Option<&'static str> {
        match self {
            EntityKind::Experiment => Some("experiment"),
            EntityKind::Tag => Some("tag"),
            _ => None,
        }
    }
}

/// An entity's fields in key order.
pub type Fields = Vec<(String, Value)>;

fn dec(bytes: &[u8]) -> Result<Value, LayoutError> {
    value::decode(bytes).map_err(|e| LayoutError::Corrupt(e.to_string()))
}

fn enc(v: &Value) -> Result<Vec<u8>, LayoutError> {
    value::encode(v).map_err(|e| LayoutError::Encode(e.to_string()))
}

/// Access to ⟨system⟩.
#[derive(Debug, Clone)]
pub struct System {
    prefix: Vec<u8>,
}

impl System {
    /// ⟨system⟩ under `prefix`.
    pub fn new(prefix: &[u8]) -> Self {
        Self { prefix: prefix.to_vec() }
    }

    /// `⟨system⟩ + pack(elems)`.
    pub fn key(&self, elems: &[Elem]) -> Vec<u8> {
        tuple::pack_with_prefix(&self.prefix, elems)
    }

    async fn get_value(&self, tx: &Transaction, elems: &[Elem]) -> Result<Option<Value>, LayoutError> {
        tx.get(&self.key(elems), false).await?.map(|b| dec(&b)).transpose()
    }

    fn set_value(&self, tx: &Transaction, elems: &[Elem], v: &Value) -> Result<(), LayoutError> {
        tx.set(&self.key(elems), &enc(v)?);
        Ok(())
    }

    fn clear_under(&self, tx: &Transaction, elems: &[Elem]) {
        let (b, e) = tuple::range(&self.prefix, elems);
        tx.clear_range(&b, &e);
    }

    /// Writes the given fields of an entity.
    pub fn put_fields(
        &self,
        tx: &Transaction,
        kind: EntityKind,
        uuid: &str,
        fields: &[(&str, Value)],
    ) -> Result<(), LayoutError> {
        for (f, v) in fields {
            self.set_value(tx, &[Elem::from(kind.key_name()), Elem::from(uuid), Elem::from(*f)], v)?;
        }
        Ok(())
    }

    /// An entity's fields, `None` when it has none.
    pub async fn get(&self, tx: &Transaction, kind: EntityKind, uuid: &str) -> Result<Option<Fields>, LayoutError> {
        let scope = [Elem::from(kind.key_name()), Elem::from(uuid)];
        let (b, e) = tuple::range(&self.prefix, &scope);
        let base = self.key(&scope);
        let mut fields = Vec::new();
        for kv in tx.get_range(&RangeOption::new(b, e), false).await? {
            let rest = tuple::unpack(&kv.key[base.len()..]).map_err(|e| LayoutError::Corrupt(e.to_string()))?;
            if let [Elem::Str(f)] = rest.as_slice() {
                fields.push((f.clone(), dec(&kv.value)?));
            }
        }
        Ok((!fields.is_empty()).then_some(fields))
    }

    /// Every entity of a kind as `(uuid, fields)`, in uuid order.
    pub async fn list(&self, tx: &Transaction, kind: EntityKind) -> Result<Vec<(String, Fields)>, LayoutError> {
        let scope = [Elem::from(kind.key_name())];
        let (b, e) = tuple::range(&self.prefix, &scope);
        let base = self.key(&scope);
        let mut out: Vec<(String, Fields)> = Vec::new();
        for kv in tx.get_range(&RangeOption::new(b, e), false).await? {
            let rest = tuple::unpack(&kv.key[base.len()..]).map_err(|e| LayoutError::Corrupt(e.to_string()))?;
            let [Elem::Str(uuid), Elem::Str(field)] = rest.as_slice() else {
                continue;
            };
            let v = dec(&kv.value)?;
            match out.last_mut() {
                Some((u, fields)) if u == uuid => fields.push((field.clone(), v)),
                _ => out.push((uuid.clone(), vec![(field.clone(), v)])),
            }
        }
        Ok(out)
    }

    /// The uuid registered for `name` (experiments and tags).
    pub async fn uuid_by_name(
        &self,
        tx: &Transaction,
        kind: EntityKind,
        name: &str,
    ) -> Result<Option<String>, LayoutError> {
        let Some(by_name) = kind.by_name() else {
            return Ok(None);
        };
        Ok(match self.get_value(tx, &[Elem::from(by_name), Elem::from(name)]).await? {
            Some(Value::Str(u)) => Some(u),
            _ => None,
        })
    }

    /// Creates an experiment or tag named `name` with uuid `uuid` (made by the caller, before any
    /// retry loop). Fails with [`LayoutError::Conflict`] when the name is taken.
    pub async fn create_named(
        &self,
        tx: &Transaction,
        kind: EntityKind,
        uuid: &str,
        name: &str,
        now: f64,
        extra: &[(&str, Value)],
    ) -> Result<(), LayoutError> {
        let by_name =
            kind.by_name().ok_or_else(|| LayoutError::Invalid(format!("{} have no names", kind.key_name())))?;
        if self.uuid_by_name(tx, kind, name).await?.is_some() {
            return Err(LayoutError::Conflict(format!("{} named {name:?} already exists", kind.key_name())));
        }
        let mut fields: Vec<(&str, Value)> = vec![("name", Value::from(name))];
        if kind == EntityKind::Tag {
            fields.push(("color", Value::from("")));
        }
        fields.push(("description", Value::from("")));
        fields.push(("is_archived", Value::Bool(false)));
        fields.push(("run_count", Value::Int(0)));
        fields.push(("created_at", Value::Float(now)));
        fields.push(("updated_at", Value::Float(now)));
        for (k, v) in extra {
            match fields.iter_mut().find(|(f, _)| f == k) {
                Some(slot) => slot.1 = v.clone(),
                None => fields.push((k, v.clone())),
            }
        }
        self.put_fields(tx, kind, uuid, &fields)?;
        self.set_value(tx, &[Elem::from(by_name), Elem::from(name)], &Value::from(uuid))
    }

    /// Finds `name` or creates it with `new_uuid`; returns the uuid.
    pub async fn get_or_create_named(
        &self,
        tx: &Transaction,
        kind: EntityKind,
        name: &str,
        new_uuid: &str,
        now: f64,
    ) -> Result<String, LayoutError> {
        if let Some(u) = self.uuid_by_name(tx, kind, name).await? {
            return Ok(u);
        }
        self.create_named(tx, kind, new_uuid, name, now, &[]).await?;
        Ok(new_uuid.to_string())
    }

    /// Renames an experiment or tag: moves the by-name key and the index entries of its runs to
    /// the new name. The reference leaves a tag's entries under the old name (§10 quirk 16), so
    /// `"new" in run.tags` misses the runs tagged before through the index. The entries move run
    /// by run from the links (`experiment_runs`, `tag_runs`), not from the index under the old
    /// name, so a stale entry another entity of that name left behind is not carried along.
    pub async fn rename(
        &self,
        tx: &Transaction,
        indexes: &Indexes,
        kind: EntityKind,
        uuid: &str,
        new_name: &str,
        now: f64,
    ) -> Result<(), LayoutError> {
        let by_name =
            kind.by_name().ok_or_else(|| LayoutError::Invalid(format!("{} have no names", kind.key_name())))?;
        let old = self.entity_name(tx, kind, uuid).await?;
        if let Some(old) = &old {
            tx.clear(&self.key(&[Elem::from(by_name), Elem::from(old.as_str())]));
            let runs = if old == new_name { Vec::new() } else { self.runs_of(tx, kind, uuid).await? };
            if let Some(index) = kind.index_name() {
                for run in runs {
                    indexes.remove(tx, &run, &[Elem::from(index), Elem::from(old.as_str()), Elem::from(run.as_str())]);
                    indexes.add(tx, &run, &[Elem::from(index), Elem::from(new_name), Elem::from(run.as_str())]);
                }
            }
        }
        self.set_value(tx, &[Elem::from(by_name), Elem::from(new_name)], &Value::from(uuid))?;
        self.put_fields(tx, kind, uuid, &[("name", Value::from(new_name)), ("updated_at", Value::Float(now))])
    }

    async fn entity_name(&self, tx: &Transaction, kind: EntityKind, uuid: &str) -> Result<Option<String>, LayoutError> {
        Ok(match self.get_value(tx, &[Elem::from(kind.key_name()), Elem::from(uuid), Elem::from("name")]).await? {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        })
    }

    /// Read-modify-write of `run_count`, clamped at 0; returns the entity's name if it has one.
    async fn adjust_run_count(
        &self,
        tx: &Transaction,
        kind: EntityKind,
        uuid: &str,
        delta: i64,
    ) -> Result<Option<String>, LayoutError> {
        let key = [Elem::from(kind.key_name()), Elem::from(uuid), Elem::from("run_count")];
        let cur = match self.get_value(tx, &key).await? {
            Some(Value::Int(i)) => i,
            _ => 0,
        };
        self.set_value(tx, &key, &Value::Int((cur + delta as i128).max(0)))?;
        self.entity_name(tx, kind, uuid).await
    }

    /// Entity-link of a run to experiment `new` (or unlink with `None`), with `run_count` and the
    /// `("experiment", name, R)` index moved.
    pub async fn link_experiment(
        &self,
        tx: &Transaction,
        indexes: &Indexes,
        run: &str,
        new: Option<&str>,
    ) -> Result<(), LayoutError> {
        let mut old_name = None;
        if let Some(Value::Str(old)) = self.get_value(tx, &[Elem::from("run_experiment"), Elem::from(run)]).await? {
            old_name = self.adjust_run_count(tx, EntityKind::Experiment, &old, -1).await?;
            tx.clear(&self.key(&[Elem::from("experiment_runs"), Elem::from(old.as_str()), Elem::from(run)]));
            tx.clear(&self.key(&[Elem::from("run_experiment"), Elem::from(run)]));
        }
        let mut new_name = None;
        if let Some(new) = new {
            self.set_value(tx, &[Elem::from("experiment_runs"), Elem::from(new), Elem::from(run)], &Value::Bool(true))?;
            self.set_value(tx, &[Elem::from("run_experiment"), Elem::from(run)], &Value::from(new))?;
            new_name = self.adjust_run_count(tx, EntityKind::Experiment, new, 1).await?;
        }
        if old_name != new_name {
            if let Some(old) = old_name {
                indexes.remove(tx, run, &[Elem::from("experiment"), Elem::from(old), Elem::from(run)]);
            }
            if let Some(new) = new_name {
                indexes.add(tx, run, &[Elem::from("experiment"), Elem::from(new), Elem::from(run)]);
            }
        }
        Ok(())
    }

    /// Whether the run is linked to the tag.
    pub async fn run_has_tag(&self, tx: &Transaction, run: &str, tag: &str) -> Result<bool, LayoutError> {
        Ok(tx.get(&self.key(&[Elem::from("run_tags"), Elem::from(run), Elem::from(tag)]), false).await?.is_some())
    }

    /// Links a run to a tag (system side and index). Idempotent: an existing link changes nothing,
    /// so `run_count` never drifts (unlike the reference, quirk 8 of §6).
    pub async fn link_tag(
        &self,
        tx: &Transaction,
        indexes: &Indexes,
        run: &str,
        tag: &str,
    ) -> Result<bool, LayoutError> {
        if self.run_has_tag(tx, run, tag).await? {
            return Ok(false);
        }
        self.set_value(tx, &[Elem::from("run_tags"), Elem::from(run), Elem::from(tag)], &Value::Bool(true))?;
        self.set_value(tx, &[Elem::from("tag_runs"), Elem::from(tag), Elem::from(run)], &Value::Bool(true))?;
        if let Some(name) = self.adjust_run_count(tx, EntityKind::Tag, tag, 1).await? {
            indexes.add(tx, run, &[Elem::from("tag"), Elem::from(name), Elem::from(run)]);
        }
        Ok(true)
    }

    /// Unlinks a run from a tag. Idempotent: only an existing link decrements `run_count`.
    pub async fn unlink_tag(
        &self,
        tx: &Transaction,
        indexes: &Indexes,
        run: &str,
        tag: &str,
    ) -> Result<bool, LayoutError> {
        if !self.run_has_tag(tx, run, tag).await? {
            return Ok(false);
        }
        tx.clear(&self.key(&[Elem::from("run_tags"), Elem::from(run), Elem::from(tag)]));
        tx.clear(&self.key(&[Elem::from("tag_runs"), Elem::from(tag), Elem::from(run)]));
        if let Some(name) = self.adjust_run_count(tx, EntityKind::Tag, tag, -1).await? {
            indexes.remove(tx, run, &[Elem::from("tag"), Elem::from(name), Elem::from(run)]);
        }
        Ok(true)
    }

    /// Tag uuids of a run.
    pub async fn tags_of_run(&self, tx: &Transaction, run: &str) -> Result<Vec<String>, LayoutError> {
        self.third_elems(tx, &[Elem::from("run_tags"), Elem::from(run)]).await
    }

    /// Every run's tag uuids, from one range read over `("run_tags",…)` of at most `max_links`
    /// keys (`snapshot`: without read conflicts): `None` when there are more, so that a caller
    /// reading a few runs of a store with many tag links reads them run by run instead. Runs
    /// without tags are absent; keys of another shape are skipped, as [`System::tags_of_run`]
    /// skips them.
    pub async fn all_run_tags(
        &self,
        tx: &Transaction,
        max_links: usize,
        snapshot: bool,
    ) -> Result<Option<(std::collections::HashMap<String, Vec<String>>, usize)>, LayoutError> {
        let scope = [Elem::from("run_tags")];
        let (b, e) = tuple::range(&self.prefix, &scope);
        let base = self.key(&scope);
        let kvs = tx.get_range(&RangeOption::new(b, e).limit(max_links.saturating_add(1)), snapshot).await?;
        if kvs.len() > max_links {
            return Ok(None);
        }
        let mut out: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
        for kv in &kvs {
            if let [Elem::Str(run), Elem::Str(tag)] =
                tuple::unpack(&kv.key[base.len()..]).map_err(|e| LayoutError::Corrupt(e.to_string()))?.as_slice()
            {
                out.entry(run.clone()).or_default().push(tag.clone());
            }
        }
        Ok(Some((out, kvs.len())))
    }

    /// Runs of a tag or experiment (`tag_runs` / `experiment_runs`).
    pub async fn runs_of(&self, tx: &Transaction, kind: EntityKind, uuid: &str) -> Result<Vec<String>, LayoutError> {
        let link = match kind {
            EntityKind::Tag => "tag_runs",
            EntityKind::Experiment => "experiment_runs",
            _ => return Ok(Vec::new()),
        };
        self.third_elems(tx, &[Elem::from(link), Elem::from(uuid)]).await
    }

    async fn third_elems(&self, tx: &Transaction, scope: &[Elem]) -> Result<Vec<String>, LayoutError> {
        let (b, e) = tuple::range(&self.prefix, scope);
        let base = self.key(scope);
        let mut out = Vec::new();
        for kv in tx.get_range(&RangeOption::new(b, e), false).await? {
            if let [Elem::Str(s)] =
                tuple::unpack(&kv.key[base.len()..]).map_err(|e| LayoutError::Corrupt(e.to_string()))?.as_slice()
            {
                out.push(s.clone());
            }
        }
        Ok(out)
    }

    /// Removes a run's experiment and tag associations (the system side of `delete_run`).
    pub async fn remove_associations(&self, tx: &Transaction, indexes: &Indexes, run: &str) -> Result<(), LayoutError> {
        self.link_experiment(tx, indexes, run, None).await?;
        for tag in self.tags_of_run(tx, run).await? {
            tx.clear(&self.key(&[Elem::from("tag_runs"), Elem::from(tag.as_str()), Elem::from(run)]));
            self.adjust_run_count(tx, EntityKind::Tag, &tag, -1).await?;
        }
        self.clear_under(tx, &[Elem::from("run_tags"), Elem::from(run)]);
        Ok(())
    }

    /// Deletes an entity (the system side) and returns the runs it was linked to. Experiments and
    /// tags lose their by-name key, their links on both sides (`experiment_runs` and each run's
    /// `run_experiment`; `tag_runs` and `run_tags`) and every index entry under their name. The
    /// reference leaves an experiment's `run_experiment` keys and `("experiment", name, R)` entries
    /// behind (§10 quirk 18), so a later experiment of the same name finds the old runs; the run
    /// directory's side is [`Layout::delete_entity`](super::Layout::delete_entity)'s.
    pub async fn delete(
        &self,
        tx: &Transaction,
        indexes: &Indexes,
        kind: EntityKind,
        uuid: &str,
    ) -> Result<Vec<String>, LayoutError> {
        let name = self.entity_name(tx, kind, uuid).await?;
        if let (Some(by_name), Some(name)) = (kind.by_name(), &name) {
            tx.clear(&self.key(&[Elem::from(by_name), Elem::from(name.as_str())]));
        }
        let runs = self.runs_of(tx, kind, uuid).await?;
        match kind {
            EntityKind::Experiment => {
                for run in &runs {
                    let link = [Elem::from("run_experiment"), Elem::from(run.as_str())];
                    // A run relinked elsewhere keeps its link; only ours goes.
                    if matches!(self.get_value(tx, &link).await?, Some(Value::Str(u)) if u == uuid) {
                        tx.clear(&self.key(&link));
                    }
                }
                self.clear_under(tx, &[Elem::from("experiment_runs"), Elem::from(uuid)]);
            }
            EntityKind::Tag => {
                for run in &runs {
                    tx.clear(&self.key(&[Elem::from("run_tags"), Elem::from(run.as_str()), Elem::from(uuid)]));
                }
                self.clear_under(tx, &[Elem::from("tag_runs"), Elem::from(uuid)]);
            }
            _ => {}
        }
        if let (Some(index), Some(name)) = (kind.index_name(), &name) {
            for run in indexes.runs_under(tx, &[Elem::from(index), Elem::from(name.as_str())], false).await? {
                indexes.remove(tx, &run, &[Elem::from(index), Elem::from(name.as_str()), Elem::from(run.as_str())]);
            }
        }
        self.clear_under(tx, &[Elem::from(kind.key_name()), Elem::from(uuid)]);
        Ok(runs)
    }

    /// `("project", key, "__leaf__")`.
    pub async fn project_setting(&self, tx: &Transaction, key: &str) -> Result<Option<Value>, LayoutError> {
        self.get_value(tx, &[Elem::from("project"), Elem::from(key), Elem::from(LEAF)]).await
    }

    /// Sets `("project", key, "__leaf__")`.
    pub fn set_project_setting(&self, tx: &Transaction, key: &str, v: &Value) -> Result<(), LayoutError> {
        self.set_value(tx, &[Elem::from("project"), Elem::from(key), Elem::from(LEAF)], v)
    }

    /// `("pinned_sequences", "__leaf__")`, an empty list when unset.
    pub async fn pinned_sequences(&self, tx: &Transaction) -> Result<Value, LayoutError> {
        Ok(self
            .get_value(tx, &[Elem::from("pinned_sequences"), Elem::from(LEAF)])
            .await?
            .unwrap_or(Value::Array(Vec::new())))
    }

    /// Replaces the pinned sequences.
    pub fn set_pinned_sequences(&self, tx: &Transaction, list: &Value) -> Result<(), LayoutError> {
        self.set_value(tx, &[Elem::from("pinned_sequences"), Elem::from(LEAF)], list)
    }

    /// `("job_lock", job)`: the reference's lock of one job, holding mp(expiry float).
    pub fn job_lock_key(&self, job: &str) -> Vec<u8> {
        self.key(&[Elem::from("job_lock"), Elem::from(job)])
    }

    /// Takes the job lock unless an unexpired one is held (an undecodable value counts as expired).
    pub async fn try_acquire_job_lock(
        &self,
        tx: &Transaction,
        job: &str,
        now: f64,
        ttl: f64,
    ) -> Result<bool, LayoutError> {
        let key = self.job_lock_key(job);
        if let Some(bytes) = tx.get(&key, false).await? {
            let expiry = match value::decode(&bytes) {
                Ok(Value::Float(f)) => Some(f),
                Ok(Value::Int(i)) => Some(i as f64),
                _ => None,
            };
            if expiry.is_some_and(|e| e > now) {
                return Ok(false);
            }
        }
        tx.set(&key, &enc(&Value::Float(now + ttl))?);
        Ok(true)
    }

    /// Releases the job lock (idempotent).
    pub fn release_job_lock(&self, tx: &Transaction, job: &str) {
        tx.clear(&self.job_lock_key(job));
    }
}
