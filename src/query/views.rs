//! The `run` and sequence (`metric`, `images`, ...) objects of spec §5.2, as plain structs the
//! HTTP layer fills from stored run meta, attributes and trace metadata, exposed to the
//! evaluator through [`HostObject`].

use std::sync::Arc;

use super::error::EvalError;
use super::eval::Bindings;
use super::value::{HostObject, QValue, py_eq};
use crate::storage::value::Value;

/// What the query sees of one trace of a run (for `run.metrics[...]` and sequence objects).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSummary {
    /// The trace (sequence) name.
    pub name: String,
    /// The trace's context dict (`Value::Map`, empty for `{}`).
    pub context: Value,
    /// The last recorded value, `Value::Nil` when unknown.
    pub last: Value,
    /// The step of the last value, `Value::Nil` when unknown.
    pub last_step: Value,
}

/// What the query sees of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    /// The run hash.
    pub hash: String,
    /// The run name, if set.
    pub name: Option<String>,
    /// The run description, if set.
    pub description: Option<String>,
    /// The experiment's name, if the run has one.
    pub experiment: Option<String>,
    /// The names of the run's tags.
    pub tags: Vec<String>,
    /// Creation time in epoch seconds.
    pub created_at: f64,
    /// `finalized_at` in epoch seconds, while set.
    pub finalized_at: Option<f64>,
    /// Whether the run is active.
    pub active: bool,
    /// Whether the run is archived.
    pub archived: bool,
    /// The run's attribute tree (a `Value::Map`; `hparams` lives under it).
    pub attrs: Value,
    /// The run's traces, in storage order (`run.metrics[name]` takes the first match).
    pub traces: Vec<TraceSummary>,
}

impl RunView {
    /// Creates a view with the given hash and every other field empty.
    pub fn new(hash: &str) -> Self {
        RunView {
            hash: hash.to_string(),
            name: None,
            description: None,
            experiment: None,
            tags: Vec::new(),
            created_at: 0.0,
            finalized_at: None,
            active: false,
            archived: false,
            attrs: Value::Map(Vec::new()),
            traces: Vec::new(),
        }
    }

    fn attr(&self, key: &str) -> QValue {
        self.attrs.get(key).map_or(QValue::None, QValue::from)
    }
}

/// The `run` object: a shared [`RunView`].
#[derive(Debug, Clone)]
pub struct RunObject(pub Arc<RunView>);

impl HostObject for RunObject {
    fn type_name(&self) -> &'static str {
        "Run"
    }

    fn get_attr(&self, name: &str) -> Result<QValue, EvalError> {
        let run = &self.0;
        Ok(match name {
            "hash" => QValue::Str(run.hash.clone()),
            "name" => QValue::Str(run.name.clone().unwrap_or_default()),
            "description" => QValue::Str(run.description.clone().unwrap_or_default()),
            "experiment" => run.experiment.clone().map_or(QValue::None, QValue::Str),
            "tags" => QValue::List(run.tags.iter().map(|t| QValue::Str(t.clone())).collect()),
            "created_at" | "creation_time" => QValue::Float(run.created_at),
            "end_time" => run.finalized_at.map_or(QValue::None, QValue::Float),
            "duration" => QValue::Float(run.finalized_at.map_or(0.0, |end| end - run.created_at)),
            "active" => QValue::Bool(run.active),
            "archived" | "is_archived" => QValue::Bool(run.archived),
            "metrics" => QValue::Object(Arc::new(MetricsObject(self.0.clone()))),
            other => run.attr(other),
        })
    }

    /// Answers `run["key"]` from the attribute tree; a missing key is `None` (spec §5.2).
    fn get_item(&self, key: &QValue) -> Result<QValue, EvalError> {
        Ok(match key {
            QValue::Str(k) => self.0.attr(k),
            _ => QValue::None,
        })
    }
}

/// `run.metrics`: `run.metrics["loss"]` and `run.metrics["loss", {"subset": "train"}]` give a
/// dict-like object with `.last` and `.last_step` (`None`s when no trace matches).
#[derive(Debug, Clone)]
pub struct MetricsObject(pub Arc<RunView>);

impl HostObject for MetricsObject {
    fn type_name(&self) -> &'static str {
        "RunMetrics"
    }

    fn get_attr(&self, name: &str) -> Result<QValue, EvalError> {
        Err(EvalError::Attribute { type_name: self.type_name().to_string(), attr: name.to_string() })
    }

    /// Looks the trace up by name, and by context too when a non-empty one is given. The
    /// reference never matches a non-empty context (spec §10 item 4); this compares it, the
    /// wire-compatible fix.
    fn get_item(&self, key: &QValue) -> Result<QValue, EvalError> {
        let (name, context) = match key {
            QValue::Str(name) => (name.as_str(), None),
            QValue::Tuple(parts) => match parts.as_slice() {
                [QValue::Str(name)] => (name.as_str(), None),
                [QValue::Str(name), ctx] => (name.as_str(), Some(ctx.plain().into_owned())),
                _ => return Err(EvalError::Key("metric key must be (name, context)".into())),
            },
            _ => return Err(EvalError::Key("metric key must be a name".into())),
        };
        let context = context.filter(|c| c.truthy() || !matches!(c, QValue::Dict(_)));
        let trace = self
            .0
            .traces
            .iter()
            .find(|t| t.name == name && context.as_ref().is_none_or(|c| py_eq(&QValue::from(&t.context), c)));
        let (last, last_step) =
            trace.map_or((QValue::None, QValue::None), |t| (QValue::from(&t.last), QValue::from(&t.last_step)));
        Ok(QValue::Dict(vec![(QValue::from("last"), last), (QValue::from("last_step"), last_step)]))
    }
}

/// A sequence object (`metric`, `images`, `texts`...): `.name`, `.context` (missing keys are
/// `None`), `.last`, `.last_step` and `.run`.
#[derive(Debug, Clone)]
pub struct SequenceObject {
    /// The trace.
    pub trace: TraceSummary,
    /// The run it belongs to.
    pub run: Arc<RunView>,
}

impl HostObject for SequenceObject {
    fn type_name(&self) -> &'static str {
        "Sequence"
    }

    fn get_attr(&self, name: &str) -> Result<QValue, EvalError> {
        Ok(match name {
            "name" => QValue::Str(self.trace.name.clone()),
            "context" => match QValue::from(&self.trace.context) {
                ctx @ QValue::Dict(_) => ctx,
                _ => QValue::Dict(Vec::new()),
            },
            "last" => QValue::from(&self.trace.last),
            "last_step" => QValue::from(&self.trace.last_step),
            "run" => QValue::Object(Arc::new(RunObject(self.run.clone()))),
            other => {
                return Err(EvalError::Attribute { type_name: self.type_name().to_string(), attr: other.to_string() });
            }
        })
    }
}

/// Returns the scope of a run search: `run`.
pub fn run_scope(run: &Arc<RunView>) -> Bindings {
    Bindings::new().with("run", QValue::Object(Arc::new(RunObject(run.clone()))))
}

/// Returns the scope of a sequence search: `run` and the sequence under `namespace` (`metric`,
/// `images`, `audios`, `texts`, `distributions` or `figures`).
pub fn sequence_scope(run: &Arc<RunView>, namespace: &str, trace: &TraceSummary) -> Bindings {
    let sequence = SequenceObject { trace: trace.clone(), run: run.clone() };
    run_scope(run).with(namespace, QValue::Object(Arc::new(sequence)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::eval::matches;
    use crate::query::pipeline::{CompileOptions, compile};

    fn s(v: &str) -> Value {
        Value::Str(v.to_string())
    }

    fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    fn sample_run() -> Arc<RunView> {
        let mut run = RunView::new("abc123");
        run.name = Some("gamma".into());
        run.experiment = Some("baseline".into());
        run.tags = vec!["important".into(), "v2".into()];
        run.created_at = 1_700_000_000.0;
        run.active = true;
        run.attrs = map(vec![
            (
                "hparams",
                map(vec![
                    ("lr", Value::Float(0.01)),
                    ("batch_size", Value::Int(32)),
                    ("model", map(vec![("depth", Value::Int(3))])),
                ]),
            ),
            ("dataset", map(vec![("name", s("mnist"))])),
            ("empty", map(vec![])),
        ]);
        run.traces = vec![
            TraceSummary {
                name: "loss".into(),
                context: map(vec![("subset", s("train"))]),
                last: Value::Float(0.5),
                last_step: Value::Int(99),
            },
            TraceSummary {
                name: "loss".into(),
                context: map(vec![("subset", s("val"))]),
                last: Value::Float(0.7),
                last_step: Value::Int(9),
            },
            TraceSummary {
                name: "acc".into(),
                context: map(vec![]),
                last: Value::Float(0.9),
                last_step: Value::Int(99),
            },
        ];
        Arc::new(run)
    }

    fn run_matches(q: &str, run: &Arc<RunView>) -> bool {
        let query = compile(q, &CompileOptions::default()).unwrap_or_else(|e| panic!("{q:?}: {e}"));
        matches(&query.expr, &run_scope(run))
    }

    fn metric_matches(q: &str, run: &Arc<RunView>, trace: usize) -> bool {
        let query = compile(q, &CompileOptions::default()).unwrap_or_else(|e| panic!("{q:?}: {e}"));
        matches(&query.expr, &sequence_scope(run, "metric", &run.traces[trace]))
    }

    #[test]
    fn run_properties() {
        let run = sample_run();
        for q in [
            "run.hash == 'abc123'",
            "run.name == 'gamma'",
            "run.description == ''",
            "run.experiment == 'baseline'",
            "'important' in run.tags",
            "run.tags.contains('v2')",
            "'nope' not in run.tags",
            "run.created_at == 1700000000",
            "run.creation_time > 1600000000.5",
            "run.end_time == None",
            "run.end_time is None",
            "run.duration == 0.0",
            "run.active == True",
            "run.active",
            "run.is_archived == False",
            "run.archived == False",
            "run.hparams.lr == 0.01",
            "run.hparams.batch_size >= 32",
            "run.hparams.model.depth == 3",
            "run['hparams']['lr'] == 0.01",
            "run['hparams'].lr < 0.1",
            "run['missing'] == None",
            "run.nonexistent == None",
            "run.hparams.missing == None",
            "run.dataset.name.startswith('mn')",
            "run.hparams == {'lr': 0.01, 'batch_size': 32, 'model': {'depth': 3}}",
            "not run.empty",
            "run.metrics['loss'].last == 0.5",
            "run.metrics['loss'].last_step == 99",
            "run.metrics['loss', {}].last == 0.5",
            "run.metrics['loss', {'subset': 'val'}].last == 0.7",
            "run.metrics['nope'].last == None",
            "run.metrics['acc'].last > 0.8",
        ] {
            assert!(run_matches(q, &run), "{q}");
        }
        for q in [
            "run.hparams['missing'] == None",
            "run.experiment == 'other'",
            "run.hparams.lr > 'a'",
            "run.end_time > 0",
            "run.metrics['loss', {'subset': 'test'}].last > 0",
            "metric.context.x == 1",
            "run.missing.deeper == None",
            "run.archived == True",
        ] {
            assert!(!run_matches(q, &run), "{q}");
        }
    }

    #[test]
    fn finalized_runs_have_end_time_and_duration() {
        let mut run = (*sample_run()).clone();
        run.finalized_at = Some(1_700_000_100.0);
        run.active = false;
        let run = Arc::new(run);
        assert!(run_matches("run.end_time == 1700000100.0", &run));
        assert!(run_matches("run.duration == 100", &run));
        assert!(run_matches("run.active == False", &run));
    }

    #[test]
    fn default_archived_filter_hides_archived_runs() {
        let mut archived = (*sample_run()).clone();
        archived.archived = true;
        let archived = Arc::new(archived);
        let visible = sample_run();
        assert!(run_matches("", &visible));
        assert!(!run_matches("", &archived));
        assert!(!run_matches("run.name == 'gamma'", &archived));
        assert!(run_matches("run.is_archived == True", &archived));
        assert!(!run_matches("run.is_archived == True", &visible));
        assert!(run_matches("run.archived in [True, False]", &archived));
        assert!(run_matches("run.archived in [True, False]", &visible));
        // `not run.archived` is no comparison operand: the default filter stays.
        assert!(!run_matches("not run.archived", &archived));
    }

    #[test]
    fn metric_objects() {
        let run = sample_run();
        assert!(metric_matches("metric.name == 'loss'", &run, 0));
        assert!(!metric_matches("metric.name == 'loss'", &run, 2));
        assert!(metric_matches("metric.context.subset == 'train'", &run, 0));
        assert!(!metric_matches("metric.context.subset == 'val'", &run, 0));
        assert!(metric_matches("metric.context.missing == None", &run, 0));
        assert!(metric_matches("metric.context == {'subset': 'train'}", &run, 0));
        assert!(metric_matches("metric.context == {}", &run, 2));
        assert!(metric_matches("not metric.context", &run, 2));
        assert!(metric_matches("metric.last > 0.3", &run, 0));
        assert!(metric_matches("metric.last_step == 99", &run, 0));
        assert!(metric_matches("metric.run.hash == 'abc123'", &run, 0));
        assert!(metric_matches("metric.run.hparams.lr == 0.01", &run, 0));
        assert!(metric_matches("(run.description != 'nonexistent') and (metric.name == 'loss')", &run, 1));
        assert!(!metric_matches("metric.nonexistent == None", &run, 0));
        assert!(!metric_matches("images.name == 'loss'", &run, 0));
    }
}
