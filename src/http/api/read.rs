//! The read side of one REST request: a snapshot transaction, a work budget, and run data
//! (meta, attributes, traces, contexts, tags, experiment) loaded from the Matyan layout.
//!
//! A snapshot is a FoundationDB read version, which dies 5 s after its first read
//! (`transaction_too_old`). Routes that go run by run read each run inside [`per_run!`]:
//! before the run, a snapshot older than `query.snapshot_max_age_ms` is replaced by a fresh one,
//! and a run whose reads still outlive their snapshot (one huge run) is read again, whole, on a
//! fresh one, once. So a long stream never dies of age, and each run's object comes from one
//! snapshot; different runs of one answer may come from different ones.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::AppState;
use crate::config::QueryConfig;
use crate::query::ast::Expr;
use crate::query::plan::{IndexExpr, IndexPred, RangeOp};
use crate::query::views::{RunView, TraceSummary};
use crate::query::{EvalLimits, Scope, check_constant_parts, matches_within};
use crate::storage::kv::{Database, KvError, RetryableError, Transaction};
use crate::storage::layout::sequences::{KeyAllowance, SeqError};
use crate::storage::layout::{EntityKind, Layout, SeqId, StoredTrace};
use crate::storage::tuple::Elem;
use crate::storage::value::Value;

use super::ApiError;
use super::streaming::Chunking;

/// The work a request may still do: keys read and wall time (`[query]` `max_keys_per_request`
/// and `max_request_time_ms`).
#[derive(Debug, Clone)]
pub struct Budget {
    max_keys: u64,
    keys_left: u64,
    max_time: Duration,
    deadline: Instant,
}

impl Budget {
    /// A budget of `max_keys` keys and `max_time` from now.
    pub fn new(max_keys: u64, max_time: Duration) -> Self {
        Self { max_keys, keys_left: max_keys, max_time, deadline: Instant::now() + max_time }
    }

    /// The limits of one query evaluation within this budget: its deadline, and `max_value_bytes`.
    pub fn eval_limits(&self, max_value_bytes: u64) -> EvalLimits {
        EvalLimits {
            max_value_bytes,
            deadline: Some(self.deadline),
            time_limit_ms: u64::try_from(self.max_time.as_millis()).unwrap_or(u64::MAX),
            ..EvalLimits::default()
        }
    }

    /// Charges `keys` keys read; fails once the keys or the time are spent.
    pub fn charge(&mut self, keys: usize) -> Result<(), ApiError> {
        let keys = u64::try_from(keys).unwrap_or(u64::MAX);
        if keys > self.keys_left {
            let max = self.max_keys;
            return Err(ApiError::Budget(format!("more than {max} keys to read (query.max_keys_per_request)")));
        }
        self.keys_left -= keys;
        if Instant::now() > self.deadline {
            let ms = self.max_time.as_millis();
            return Err(ApiError::Budget(format!("time limit of {ms} ms reached (query.max_request_time_ms)")));
        }
        Ok(())
    }
}

/// A run's meta leaves, typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// `name`.
    pub name: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `created_at` (0 when missing).
    pub created_at: f64,
    /// `finalized_at`.
    pub finalized_at: Option<f64>,
    /// `duration` as the client reported it.
    pub duration: Option<f64>,
    /// `is_archived`.
    pub archived: bool,
    /// `active`.
    pub active: bool,
    /// `experiment_id`.
    pub experiment_id: Option<String>,
    /// `pending_deletion`.
    pub pending_deletion: bool,
}

impl Meta {
    fn from_value(v: &Value) -> Self {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let b = |k: &str| matches!(v.get(k), Some(Value::Bool(true)));
        Meta {
            name: s("name"),
            description: s("description"),
            created_at: f("created_at").unwrap_or(0.0),
            finalized_at: f("finalized_at"),
            duration: f("duration"),
            archived: b("is_archived"),
            active: b("active"),
            experiment_id: s("experiment_id"),
            pending_deletion: b("pending_deletion"),
        }
    }
}

/// An experiment or tag as props show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entity {
    /// The uuid.
    pub id: String,
    /// `name`.
    pub name: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `color` (tags only).
    pub color: Option<String>,
}

/// One trace of a run, in storage order (context id, then name).
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
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
    /// The context dict (`{}` when the context is not stored).
    pub context: Value,
}

/// The UI bucket of a trace dtype; `None` for the hidden `logs` and `log_records`.
pub fn bucket_of(dtype: &str) -> Option<&'static str> {
    Some(match dtype {
        "image" => "images",
        "text" => "texts",
        "distribution" => "distributions",
        "audio" => "audios",
        "figure" => "figures",
        "logs" | "log_records" => return None,
        _ => "metric",
    })
}

/// The six sequence buckets in the reference's order.
pub const BUCKETS: [&str; 6] = ["metric", "images", "texts", "distributions", "audios", "figures"];

/// Everything a route reads from storage, through a snapshot renewed between runs (see the
/// module), within one budget. Caches experiments and tags, which many runs share, per snapshot.
pub struct Reader {
    db: Database,
    tx: Transaction,
    /// When `tx` was created; its first read, where FoundationDB's clock starts, is later.
    opened: Instant,
    snapshot_max_age: Duration,
    /// Snapshots taken before the current one.
    renewals: u64,
    layout: Arc<Layout>,
    budget: Budget,
    /// `query.max_value_bytes`, the memory budget of each evaluation of the request's query.
    max_value_bytes: u64,
    /// `query.max_concurrent_series_reads`.
    series_reads_at_once: usize,
    /// `query.stream_chunk_*`, for the answer the reads go to.
    chunking: Chunking,
    experiments: HashMap<String, Option<Entity>>,
    tags: HashMap<String, Option<Entity>>,
    tag_links: TagLinks,
}

/// How a reader finds a run's tag uuids: run by run, or from every run's, read at once
/// ([`Reader::read_tag_links_at_once`]).
#[derive(Debug, Clone)]
enum TagLinks {
    /// One range read per run.
    PerRun,
    /// Every run's, from one read of at most this many links at the next run.
    Wanted(usize),
    /// Every run's, as read through the current snapshot, and the cap they were read with.
    Read(HashMap<String, Vec<String>>, usize),
}

/// The contexts of a run by id.
pub type Contexts = HashMap<i128, Value>;

/// Reads one run's data through one snapshot: `per_run!(reader, |r| read(r, ...))`, where
/// `reader: &mut Reader` and the expression is a future using `r` for every read of that run,
/// gives what it resolves to, a `Result<_, ApiError>`. First a run boundary
/// ([`Reader::run_boundary`]), so an old snapshot is replaced; then the read; when it fails with
/// `transaction_too_old`, the read again, from the start, on a fresh snapshot
/// ([`Reader::renew_after`]); a second failure of that kind is [`Reader::outlived`].
///
/// A macro rather than a method taking an async closure: the futures of such closures cannot yet
/// be shown `Send` for every borrow of the reader, and the streams run on spawned tasks.
macro_rules! per_run {
    ($reader:expr, |$r:ident| $read:expr) => {{
        let $r: &mut $crate::http::api::read::Reader = $reader;
        match $r.run_boundary() {
            Err(e) => Err(e),
            Ok(()) => match $read.await {
                Err(e) => match $r.renew_after(&e) {
                    Ok(true) => $read.await.map_err($crate::http::api::read::Reader::outlived),
                    Ok(false) => Err(e),
                    Err(renew) => Err(renew),
                },
                ok => ok,
            },
        }
    }};
}
pub(crate) use per_run;

/// Whether `e` is FoundationDB's `transaction_too_old`.
fn too_old(e: &ApiError) -> bool {
    matches!(e.kv_error(), Some(KvError::TransactionTooOld { .. }))
}

/// The number of leaves of a stored tree, what a tree read costs in keys.
fn leaves(v: &Value) -> usize {
    match v {
        Value::Map(entries) => entries.iter().map(|(_, v)| leaves(v)).sum::<usize>().max(1),
        _ => 1,
    }
}

impl Reader {
    /// Opens the request's first snapshot, with the limits of the `[query]` configuration.
    pub fn open(state: &AppState) -> Result<Self, ApiError> {
        Self::with_config(&state.db, state.layout.clone(), &state.config.query)
    }

    /// Opens a first snapshot of `db` with the limits of `config`.
    pub fn with_config(db: &Database, layout: Arc<Layout>, config: &QueryConfig) -> Result<Self, ApiError> {
        Ok(Self {
            db: db.clone(),
            tx: db.create_trx()?,
            opened: Instant::now(),
            snapshot_max_age: config.snapshot_max_age(),
            renewals: 0,
            layout,
            budget: Budget::new(config.max_keys_per_request, config.max_request_time()),
            max_value_bytes: config.max_value_bytes,
            series_reads_at_once: usize::try_from(config.max_concurrent_series_reads).unwrap_or(1).max(1),
            chunking: Chunking::of(config),
            experiments: HashMap::new(),
            tags: HashMap::new(),
            tag_links: TagLinks::PerRun,
        })
    }

    /// How many times the snapshot was replaced: reads done under different values come from
    /// different snapshots.
    pub fn snapshot_generation(&self) -> u64 {
        self.renewals
    }

    /// Replaces the snapshot with a fresh one (and forgets the entities read through the old one).
    pub fn renew_snapshot(&mut self) -> Result<(), ApiError> {
        let tx = self.db.create_trx()?;
        std::mem::replace(&mut self.tx, tx).cancel();
        self.opened = Instant::now();
        self.renewals += 1;
        self.experiments.clear();
        self.tags.clear();
        if let TagLinks::Read(_, cap) = self.tag_links {
            self.tag_links = TagLinks::Wanted(cap);
        }
        Ok(())
    }

    /// Marks a run boundary: replaces the snapshot when it is `query.snapshot_max_age_ms` old.
    pub fn run_boundary(&mut self) -> Result<(), ApiError> {
        if self.opened.elapsed() >= self.snapshot_max_age { self.renew_snapshot() } else { Ok(()) }
    }

    /// After a run's read failed with `e`: whether to read the run again, from the start, on the
    /// fresh snapshot this takes (when `e` is `transaction_too_old`). See [`per_run!`].
    pub fn renew_after(&mut self, e: &ApiError) -> Result<bool, ApiError> {
        if !too_old(e) {
            return Ok(false);
        }
        tracing::debug!("a run outlived its snapshot, reading it again on a fresh one");
        self.renew_snapshot()?;
        Ok(true)
    }

    /// The error of a run's second read: outliving a fresh snapshot too is a budget error, since
    /// nothing better can be done with that run.
    pub fn outlived(e: ApiError) -> ApiError {
        if too_old(&e) {
            ApiError::Budget("reading one run takes longer than a read snapshot lives (5 s)".into())
        } else {
            e
        }
    }

    /// Tells whether the candidate `scope` matches the query `expr`, evaluated within the request's
    /// budget: values beyond `query.max_value_bytes`, or the request's time running out during
    /// the evaluation, fail the request.
    pub fn matches(&self, expr: &Expr, scope: &dyn Scope) -> Result<bool, ApiError> {
        matches_within(expr, scope, &self.budget.eval_limits(self.max_value_bytes))
            .map_err(|budget| ApiError::Budget(budget.to_string()))
    }

    /// Evaluates the constant parts of the query `expr` within the request's budget (see
    /// [`check_constant_parts`]); one exceeding it fails the request.
    pub fn check_constant_parts(&self, expr: &Expr) -> Result<(), ApiError> {
        check_constant_parts(expr, &self.budget.eval_limits(self.max_value_bytes))
            .map_err(|budget| ApiError::Budget(budget.to_string()))
    }

    /// Charges keys read to the request's budget.
    pub fn charge(&mut self, keys: usize) -> Result<(), ApiError> {
        self.budget.charge(keys)
    }

    /// The keys a sequence read may still fetch: what is left of the budget, so a read that
    /// would exceed it stops as soon as it has fetched one key more, not after reading it all.
    pub fn key_allowance(&self) -> KeyAllowance {
        KeyAllowance::new(usize::try_from(self.budget.keys_left).unwrap_or(usize::MAX))
    }

    /// Charges the keys a sequence read within [`Self::key_allowance`] fetched, and answers a
    /// read stopped at the allowance with the budget error. A read given the allowance of before
    /// other reads were charged (`series.rs`) may have fetched more keys than are left now: its
    /// charge fails with the same budget error.
    pub fn charge_read<T>(&mut self, keys: KeyAllowance, read: Result<T, SeqError>) -> Result<T, ApiError> {
        match read {
            Err(SeqError::KeyLimit { .. }) => {
                self.budget.charge(usize::MAX)?;
                Err(ApiError::Budget("the keys to read exceed query.max_keys_per_request".into()))
            }
            other => {
                self.budget.charge(keys.used())?;
                Ok(other?)
            }
        }
    }

    /// The transaction, for sequence reads.
    pub fn tx(&self) -> &Transaction {
        &self.tx
    }

    /// The layout, shared, for reads that own what they read through.
    pub fn shared_layout(&self) -> Arc<Layout> {
        self.layout.clone()
    }

    /// How many series of one run a read may have in flight (`query.max_concurrent_series_reads`).
    pub fn series_reads_at_once(&self) -> usize {
        self.series_reads_at_once
    }

    /// How the answer these reads go to is sent in chunks.
    pub fn chunking(&self) -> Chunking {
        self.chunking
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The run's meta, `None` when it has none.
    pub async fn meta(&mut self, run: &str) -> Result<Option<Meta>, ApiError> {
        let v = self.layout.runs.runs.tree_get(&self.tx, run, &[Elem::from("meta")], true).await?;
        self.charge(v.as_ref().map_or(1, leaves))?;
        Ok(v.as_ref().map(Meta::from_value))
    }

    /// The run's attribute tree (`{}` when it has none).
    pub async fn attrs(&mut self, run: &str) -> Result<Value, ApiError> {
        let v = self.layout.runs.runs.tree_get(&self.tx, run, &[Elem::from("attrs")], true).await?;
        self.charge(v.as_ref().map_or(1, leaves))?;
        Ok(match v {
            Some(m @ Value::Map(_)) => m,
            _ => Value::Map(Vec::new()),
        })
    }

    /// The run's meta (`None` when it has none) and its contexts, from one range read
    /// ([`Runs::read_head`](crate::storage::layout::Runs::read_head)).
    pub async fn head(&mut self, run: &str) -> Result<(Option<Meta>, Contexts), ApiError> {
        let head = self.layout.runs.runs.read_head(&self.tx, run, true).await?;
        self.charge(head.keys.max(1))?;
        Ok((head.meta.as_ref().map(Meta::from_value), head.contexts))
    }

    /// The run's traces, each with its context from `contexts` (as [`Reader::head`] read them),
    /// in storage order.
    pub async fn traces_with(&mut self, run: &str, contexts: &Contexts) -> Result<Vec<Trace>, ApiError> {
        let (stored, keys) = self.layout.runs.runs.read_traces(&self.tx, run, true).await?;
        self.charge(keys)?;
        Ok(with_contexts(stored, contexts))
    }

    /// The run's traces with their contexts, in storage order (read by
    /// [`Runs::read_contexts`](crate::storage::layout::Runs::read_contexts) and
    /// [`Runs::read_traces`](crate::storage::layout::Runs::read_traces)).
    pub async fn traces(&mut self, run: &str) -> Result<Vec<Trace>, ApiError> {
        let layout = self.layout.clone();
        let runs = &layout.runs.runs;
        // Both reads at once (FoundationDB serves them in parallel), charged in order.
        let (contexts, stored) =
            futures_util::future::join(runs.read_contexts(&self.tx, run, true), runs.read_traces(&self.tx, run, true))
                .await;
        let (contexts, keys) = contexts?;
        self.charge(keys)?;
        let (stored, keys) = stored?;
        self.charge(keys)?;
        Ok(with_contexts(stored, &contexts))
    }

    /// From the next run on, reads every run's tag links at once, with one range read per
    /// snapshot, instead of one read per run: for routes about to read `runs` runs. Capped at
    /// four links a run (and at least 1,024), beyond which it goes on run by run, so a request
    /// for a few runs of a store with many tagged runs does not read every link.
    pub fn read_tag_links_at_once(&mut self, runs: usize) {
        self.tag_links = TagLinks::Wanted(runs.saturating_mul(4).max(1024));
    }

    /// The run's tag uuids (uuid order), from the links read at once when they were.
    async fn tag_uuids(&mut self, run: &str) -> Result<Vec<String>, ApiError> {
        if let TagLinks::Wanted(cap) = self.tag_links {
            self.tag_links = match self.layout.system.all_run_tags(&self.tx, cap, true).await? {
                Some((links, keys)) => {
                    self.charge(keys)?;
                    TagLinks::Read(links, cap)
                }
                None => TagLinks::PerRun,
            };
        }
        if let TagLinks::Read(links, _) = &self.tag_links {
            return Ok(links.get(run).cloned().unwrap_or_default());
        }
        let uuids = self.layout.system.tags_of_run(&self.tx, run).await?;
        self.charge(uuids.len())?;
        Ok(uuids)
    }

    /// The run's tags (uuid order), each as the tag entity (name etc. `None` for a vanished tag).
    pub async fn tags(&mut self, run: &str) -> Result<Vec<Entity>, ApiError> {
        let uuids = self.tag_uuids(run).await?;
        let mut out = Vec::with_capacity(uuids.len());
        for uuid in uuids {
            if let Some(tag) = self.entity(EntityKind::Tag, &uuid).await? {
                out.push(tag);
            }
        }
        Ok(out)
    }

    /// The experiment `uuid`, `None` when it does not exist.
    pub async fn experiment(&mut self, uuid: Option<&str>) -> Result<Option<Entity>, ApiError> {
        match uuid {
            None => Ok(None),
            Some(uuid) => self.entity(EntityKind::Experiment, uuid).await,
        }
    }

    async fn entity(&mut self, kind: EntityKind, uuid: &str) -> Result<Option<Entity>, ApiError> {
        let cache = if kind == EntityKind::Tag { &self.tags } else { &self.experiments };
        if let Some(hit) = cache.get(uuid) {
            return Ok(hit.clone());
        }
        let fields = self.layout.system.get(&self.tx, kind, uuid).await?;
        self.charge(fields.as_ref().map_or(1, Vec::len))?;
        let entity = fields.map(|fields| {
            let s = |k: &str| fields.iter().find(|(f, _)| f == k).and_then(|(_, v)| v.as_str()).map(str::to_owned);
            Entity { id: uuid.to_owned(), name: s("name"), description: s("description"), color: s("color") }
        });
        let cache = if kind == EntityKind::Tag { &mut self.tags } else { &mut self.experiments };
        cache.insert(uuid.to_owned(), entity.clone());
        Ok(entity)
    }

    /// The first and last step of a sequence, `None` when it has no points (two one-key reads).
    pub async fn step_bounds(&mut self, id: SeqId<'_>) -> Result<Option<(i64, i64)>, ApiError> {
        let bounds = self.layout.seqs.step_bounds(&self.tx, id, true).await?;
        self.charge(2)?;
        Ok(bounds)
    }

    /// Every run hash with data (storage order).
    pub async fn all_runs(&mut self) -> Result<Vec<String>, ApiError> {
        let hashes = self.layout.runs.runs.hashes(&self.tx, true).await?;
        self.charge(hashes.len())?;
        Ok(hashes)
    }

    /// The candidates of an index tree: runs in first-seen order, without duplicates.
    pub async fn candidates(&mut self, index: &IndexExpr) -> Result<Vec<String>, ApiError> {
        match index {
            IndexExpr::Pred(p) => self.pred(p).await,
            IndexExpr::And(children) => {
                let mut acc: Option<Vec<String>> = None;
                for child in children {
                    let runs = Box::pin(self.candidates(child)).await?;
                    acc = Some(match acc {
                        None => runs,
                        Some(prev) => {
                            let keep: HashSet<&String> = runs.iter().collect();
                            prev.into_iter().filter(|r| keep.contains(r)).collect()
                        }
                    });
                    if acc.as_ref().is_some_and(Vec::is_empty) {
                        break;
                    }
                }
                Ok(acc.unwrap_or_default())
            }
            IndexExpr::Or(children) => {
                let mut out = Vec::new();
                let mut seen = HashSet::new();
                for child in children {
                    for run in Box::pin(self.candidates(child)).await? {
                        if seen.insert(run.clone()) {
                            out.push(run);
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    async fn pred(&mut self, p: &IndexPred) -> Result<Vec<String>, ApiError> {
        let runs = match p {
            IndexPred::Hash(h) => vec![h.clone()],
            IndexPred::Tag(name) => self.under(&[Elem::from("tag"), Elem::from(name.as_str())]).await?,
            IndexPred::Experiment(name) => self.under(&[Elem::from("experiment"), Elem::from(name.as_str())]).await?,
            IndexPred::Active(b) => self.under(&[Elem::from("active"), Elem::Bool(*b)]).await?,
            IndexPred::Archived(b) => self.under(&[Elem::from("archived"), Elem::Bool(*b)]).await?,
            IndexPred::TraceName(name) => self.under(&[Elem::from("trace"), Elem::from(name.as_str())]).await?,
            IndexPred::Hparam { name, op, value } => {
                self.range(&[Elem::from("hparam"), Elem::from(name.as_str())], *op, value).await?
            }
            IndexPred::CreatedAt { op, value } => {
                self.range(&[Elem::from("created_at")], *op, &Elem::Float(*value)).await?
            }
        };
        let mut seen = HashSet::new();
        Ok(runs.into_iter().filter(|r| seen.insert(r.clone())).collect())
    }

    async fn under(&mut self, scope: &[Elem]) -> Result<Vec<String>, ApiError> {
        let runs = self.layout.indexes().runs_under(&self.tx, scope, true).await?;
        self.charge(runs.len().max(1))?;
        Ok(runs)
    }

    /// A range over a typed index (§5.4): `<`/`<=` from the start of the scope up to the literal,
    /// `>`/`>=` from the literal to the end; `>` drops the equal entries and `<=` adds them.
    async fn range(&mut self, scope: &[Elem], op: RangeOp, v: &Elem) -> Result<Vec<String>, ApiError> {
        let mut eq_scope = scope.to_vec();
        eq_scope.push(v.clone());
        let indexes = self.layout.runs.indexes.clone();
        let runs = match op {
            RangeOp::Eq => self.under(&eq_scope).await?,
            RangeOp::Lt => indexes.runs_between(&self.tx, scope, None, Some(v), true).await?,
            RangeOp::LtE => {
                let mut runs = indexes.runs_between(&self.tx, scope, None, Some(v), true).await?;
                runs.extend(self.under(&eq_scope).await?);
                runs
            }
            RangeOp::GtE => indexes.runs_between(&self.tx, scope, Some(v), None, true).await?,
            RangeOp::Gt => {
                let all = indexes.runs_between(&self.tx, scope, Some(v), None, true).await?;
                let equal: HashSet<String> = self.under(&eq_scope).await?.into_iter().collect();
                all.into_iter().filter(|r| !equal.contains(r)).collect()
            }
        };
        self.charge(runs.len())?;
        Ok(runs)
    }
}

/// The stored traces of a run, each with its context from `contexts` (`{}` when not stored).
fn with_contexts(stored: Vec<StoredTrace>, contexts: &Contexts) -> Vec<Trace> {
    stored
        .into_iter()
        .map(|t| Trace {
            context: contexts.get(&i128::from(t.ctx_id)).cloned().unwrap_or(Value::Map(Vec::new())),
            ctx_id: t.ctx_id,
            name: t.name,
            dtype: t.dtype,
            last: t.last,
            last_step: t.last_step,
        })
        .collect()
}

/// A run as the routes show it: meta plus what the request needed of the rest.
#[derive(Debug, Clone)]
pub struct RunData {
    /// The hash.
    pub hash: String,
    /// Meta.
    pub meta: Meta,
    /// The experiment, when the run has an existing one.
    pub experiment: Option<Entity>,
    /// Tags.
    pub tags: Vec<Entity>,
    /// The attribute tree (`{}` when not loaded).
    pub attrs: Value,
    /// Traces (empty when not loaded).
    pub traces: Vec<Trace>,
    /// The contexts, read with meta so that traces read later need not read them again; `None`
    /// when not kept (see [`super::kept`]).
    pub contexts: Option<Contexts>,
}

impl RunData {
    /// Loads meta, experiment and tags, and attributes and traces when asked; `None` when the
    /// run has no meta.
    pub async fn load(reader: &mut Reader, hash: &str, attrs: bool, traces: bool) -> Result<Option<Self>, ApiError> {
        let (Some(meta), contexts) = reader.head(hash).await? else {
            return Ok(None);
        };
        let experiment = reader.experiment(meta.experiment_id.as_deref()).await?;
        let tags = reader.tags(hash).await?;
        let attrs = if attrs { reader.attrs(hash).await? } else { Value::Map(Vec::new()) };
        let traces = if traces { reader.traces_with(hash, &contexts).await? } else { Vec::new() };
        Ok(Some(RunData { hash: hash.to_owned(), meta, experiment, tags, attrs, traces, contexts: Some(contexts) }))
    }

    /// The view the query evaluator sees.
    pub fn view(&self) -> RunView {
        let mut view = RunView::new(&self.hash);
        view.name = self.meta.name.clone();
        view.description = self.meta.description.clone();
        view.experiment = self.experiment.as_ref().and_then(|e| e.name.clone());
        view.tags = self.tags.iter().filter_map(|t| t.name.clone()).collect();
        view.created_at = self.meta.created_at;
        view.finalized_at = self.meta.finalized_at;
        view.active = self.meta.active;
        view.archived = self.meta.archived;
        view.attrs = self.attrs.clone();
        view.traces = self.traces.iter().map(Trace::summary).collect();
        view
    }
}

impl Trace {
    /// What the query sees of the trace.
    pub fn summary(&self) -> TraceSummary {
        TraceSummary {
            name: self.name.clone(),
            context: self.context.clone(),
            last: self.last.clone(),
            last_step: self.last_step.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_keys_and_its_time() {
        let mut budget = Budget::new(10, Duration::from_secs(60));
        assert!(budget.charge(10).is_ok());
        assert_eq!(budget.charge(1).unwrap_err().status().as_u16(), 400);
        let mut late = Budget::new(10, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert!(late.charge(1).unwrap_err().message().contains("time limit"));
    }

    use crate::config::Config;
    use crate::storage::kv::{Limits, RetryOptions};

    /// A memory store whose snapshots live 300 ms, holding run `r` named `name`.
    async fn short_lived_store(name: &str) -> (Database, Arc<Layout>) {
        let db = Database::memory_with_limits(Limits { txn_lifetime: Duration::from_millis(300), ..Limits::FDB });
        let layout = Arc::new(Layout::open(&db).await.unwrap());
        db.run(&RetryOptions::default(), |tx| {
            let layout = layout.clone();
            async move { layout.runs.create_run(&tx, "r", 1.0, None).await }
        })
        .await
        .unwrap();
        rename(&db, &layout, name).await;
        (db, layout)
    }

    async fn rename(db: &Database, layout: &Layout, name: &str) {
        db.run(&RetryOptions::default(), |tx| async move {
            layout.runs.update_meta(&tx, "r", 2.0, &[("name", Value::from(name))]).await
        })
        .await
        .unwrap();
    }

    fn reader(db: &Database, layout: &Arc<Layout>, snapshot_max_age_ms: u64) -> Reader {
        let mut config = Config::from_toml_str("test", "").unwrap().query;
        config.snapshot_max_age_ms = snapshot_max_age_ms;
        Reader::with_config(db, layout.clone(), &config).unwrap()
    }

    /// Reads the run's name twice; the first `slow` calls wait past the snapshot's lifetime
    /// between the two reads, while the run is renamed `renamed`.
    async fn read_name_twice(
        r: &mut Reader,
        db: &Database,
        slow: &mut u32,
        renamed: &str,
    ) -> Result<(Option<String>, Option<String>), ApiError> {
        let first = r.meta("r").await?.and_then(|m| m.name);
        if *slow > 0 {
            *slow -= 1;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let layout = r.layout.clone();
            rename(db, &layout, renamed).await;
        }
        let second = r.meta("r").await?.and_then(|m| m.name);
        Ok((first, second))
    }

    #[tokio::test]
    async fn a_run_that_outlives_its_snapshot_is_read_again_whole_on_a_fresh_one() {
        let (db, layout) = short_lived_store("old").await;
        let mut reader = reader(&db, &layout, 3_000);
        let mut slow = 1;
        let names = per_run!(&mut reader, |r| read_name_twice(r, &db, &mut slow, "new")).unwrap();
        // The first attempt saw "old" then died of age; the answer is the second, from one snapshot.
        assert_eq!(names, (Some("new".to_owned()), Some("new".to_owned())));
        assert_eq!(reader.snapshot_generation(), 1);
    }

    #[tokio::test]
    async fn a_run_that_outlives_a_fresh_snapshot_too_is_a_budget_error() {
        let (db, layout) = short_lived_store("old").await;
        let mut reader = reader(&db, &layout, 3_000);
        let mut slow = 2;
        let err = per_run!(&mut reader, |r| read_name_twice(r, &db, &mut slow, "new")).unwrap_err();
        assert_eq!(err.status().as_u16(), 400);
        assert!(err.message().contains("longer than a read snapshot lives"), "{}", err.message());
    }

    #[tokio::test]
    async fn a_run_boundary_renews_only_an_old_snapshot() {
        let (db, layout) = short_lived_store("old").await;
        let mut young = reader(&db, &layout, 4_999);
        young.meta("r").await.unwrap();
        young.run_boundary().unwrap();
        assert_eq!(young.snapshot_generation(), 0);
        // An age limit of zero makes every snapshot old: each boundary takes a fresh one, which
        // sees writes committed since.
        let mut old = reader(&db, &layout, 0);
        assert_eq!(old.meta("r").await.unwrap().unwrap().name.as_deref(), Some("old"));
        rename(&db, &layout, "new").await;
        assert_eq!(old.meta("r").await.unwrap().unwrap().name.as_deref(), Some("old"));
        old.run_boundary().unwrap();
        assert_eq!(old.snapshot_generation(), 1);
        assert_eq!(old.meta("r").await.unwrap().unwrap().name.as_deref(), Some("new"));
    }

    async fn tag(db: &Database, layout: &Layout, run: &str, uuid: &str) {
        db.run(&RetryOptions::default(), |tx| async move {
            if layout.system.get(&tx, EntityKind::Tag, uuid).await?.is_none() {
                layout.system.create_named(&tx, EntityKind::Tag, uuid, &format!("name-{uuid}"), 1.0, &[]).await?;
            }
            layout.runs.create_run(&tx, run, 1.0, None).await?;
            layout.link_tag(&tx, run, uuid).await
        })
        .await
        .unwrap();
    }

    fn names(tags: Vec<Entity>) -> Vec<String> {
        tags.into_iter().filter_map(|t| t.name).collect()
    }

    #[tokio::test]
    async fn tag_links_read_at_once_are_read_again_through_each_new_snapshot() {
        let (db, layout) = short_lived_store("old").await;
        tag(&db, &layout, "other", "a").await;
        let mut r = reader(&db, &layout, 0);
        r.read_tag_links_at_once(2);
        assert!(r.tags("r").await.unwrap().is_empty());
        assert_eq!(names(r.tags("other").await.unwrap()), ["name-a"]);
        tag(&db, &layout, "r", "b").await;
        assert!(r.tags("r").await.unwrap().is_empty(), "the same snapshot");
        r.run_boundary().unwrap();
        assert_eq!(names(r.tags("r").await.unwrap()), ["name-b"], "read again through the fresh one");
    }

    #[tokio::test]
    async fn past_the_cap_tag_links_are_read_run_by_run() {
        let (db, layout) = short_lived_store("old").await;
        db.run(&RetryOptions::default(), |tx| {
            let layout = layout.clone();
            async move {
                layout.system.create_named(&tx, EntityKind::Tag, "a", "name-a", 1.0, &[]).await?;
                for i in 0..1025 {
                    layout.system.link_tag(&tx, layout.indexes(), &format!("run-{i:04}"), "a").await?;
                }
                layout.link_tag(&tx, "r", "a").await
            }
        })
        .await
        .unwrap();
        let mut r = reader(&db, &layout, 3_000);
        r.read_tag_links_at_once(1);
        assert_eq!(names(r.tags("r").await.unwrap()), ["name-a"]);
        assert!(matches!(r.tag_links, TagLinks::PerRun), "1,026 links, 1,024 allowed: {:?}", r.tag_links);
    }

    #[test]
    fn dtypes_map_to_buckets_and_logs_are_hidden() {
        assert_eq!(bucket_of("float"), Some("metric"));
        assert_eq!(bucket_of("int"), Some("metric"));
        assert_eq!(bucket_of("image"), Some("images"));
        assert_eq!(bucket_of("figure"), Some("figures"));
        assert_eq!(bucket_of("logs"), None);
        assert_eq!(bucket_of("log_records"), None);
    }
}
