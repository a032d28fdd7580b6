//! The planner of spec §5.4: finds the predicates of a compiled query that secondary indexes can
//! answer, as a pure function from the syntax tree to a [`Plan`] (no storage access).
//!
//! The storage layer executes [`IndexExpr`] trees; when the plan is exact the candidates are the
//! answer, otherwise each candidate is filtered with [`Plan::residual`].

use std::collections::BTreeSet;

use super::ast::{BoolOp, CmpOp, Constant, Expr, ExprKind};
use crate::storage::tuple::Elem;

/// A range operator on an index (`!=` is never indexed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// `==`.
    Eq,
    /// `<`: from the start of the key range up to the literal, exclusive.
    Lt,
    /// `<=`: from the start of the key range up to the literal, inclusive.
    LtE,
    /// `>`: from the literal, exclusive, to the end of the key range.
    Gt,
    /// `>=`: from the literal, inclusive, to the end of the key range.
    GtE,
}

/// One index lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexPred {
    /// `"<tag>" in run.tags`: runs carrying the tag name.
    Tag(String),
    /// `run.hash == "<hash>"`: that hash, without an existence check.
    Hash(String),
    /// `run.experiment == "<name>"`: runs of the experiment with that name.
    Experiment(String),
    /// `run.active == True/False`.
    Active(bool),
    /// `run.archived == ...` or `run.is_archived == ...` (only `==`).
    Archived(bool),
    /// `run.hparams.<name> OP <constant>` or `run["hparams"]["<name>"] OP <constant>`, over the
    /// hparam value index whose keys sort in FoundationDB tuple order (strings < ints < floats <
    /// bools, differently typed values never equal). The literal keeps its own type: `1` is
    /// `Elem::Int`, `1.0` `Elem::Float`, `True` `Elem::Bool`, `None` `Elem::Null` (which no
    /// entry holds, so `== None` finds nothing, as in the reference).
    Hparam {
        /// The top-level hparam key.
        name: String,
        /// The operator.
        op: RangeOp,
        /// The literal as a tuple element.
        value: Elem,
    },
    /// `metric.name == "<name>"`: runs having a trace with that name.
    TraceName(String),
    /// `run.created_at OP <number>` (also `run.creation_time`, and `datetime(...)` literals
    /// after folding). Not in the reference's planner; creation time is always a float, so a
    /// numeric range gives exactly what evaluation would.
    CreatedAt {
        /// The operator.
        op: RangeOp,
        /// The bound in epoch seconds.
        value: f64,
    },
}

/// A tree of index lookups.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexExpr {
    /// One lookup.
    Pred(IndexPred),
    /// Intersection of the children.
    And(Vec<IndexExpr>),
    /// Union of the children.
    Or(Vec<IndexExpr>),
}

/// How a query uses the `metric` namespace, which decides the metric-search strategy (§5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricUsage {
    /// `metric` does not appear.
    None,
    /// Only in `metric.name == "<literal>"` comparisons.
    NameOnly,
    /// Anywhere else too (`metric.context.subset`, `metric.last`...): metric search then
    /// discards the candidates and scans every (run, trace) pair.
    Other,
}

/// The outcome of planning a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The lookups producing candidates; `None` means a full scan in creation-time order.
    pub index: Option<IndexExpr>,
    /// Tells whether the candidates are exactly the matches (no evaluation needed).
    pub exact: bool,
    /// The trace names metric search streams (`None`: all metric traces).
    pub trace_names: Option<BTreeSet<String>>,
    /// How the query uses `metric`.
    pub metric_usage: MetricUsage,
    /// The filter each candidate must pass when the plan is not exact: the whole query, as the
    /// reference evaluates it. Dropping the indexed conjuncts would be faster but would change
    /// results where the typed hparam index and Python disagree (`lr >= 5` matching 0.01).
    pub residual: Option<Expr>,
    /// Tells whether evaluating the query may read a run's traces: only `run.metrics` reaches
    /// them (an attribute named `metrics` on any object counts), so without it a run search
    /// need not load them to evaluate.
    pub reads_run_traces: bool,
}

/// Plans a compiled query (after [`super::pipeline::compile`]; chained comparisons are also
/// handled when the tree was not split).
pub fn plan(expr: &Expr) -> Plan {
    let planned = node(expr);
    let exact = planned.as_ref().is_some_and(|(_, exact)| *exact);
    Plan {
        index: planned.map(|(index, _)| index),
        exact,
        trace_names: trace_names(expr),
        metric_usage: metric_usage(expr),
        residual: if exact { None } else { Some(expr.clone()) },
        reads_run_traces: reads_run_traces(expr),
    }
}

/// Returns the index tree of a node and whether it is exact, or `None` when not indexed.
fn node(expr: &Expr) -> Option<(IndexExpr, bool)> {
    match &expr.kind {
        ExprKind::BoolOp(BoolOp::And, values) => and(values.iter().map(node).collect()),
        ExprKind::BoolOp(BoolOp::Or, values) => {
            let children: Option<Vec<IndexExpr>> =
                values.iter().map(|v| node(v).and_then(|(i, exact)| exact.then_some(i))).collect();
            children.map(|c| (flatten(c, IndexExpr::Or), true))
        }
        ExprKind::Compare { left, ops } if ops.len() == 1 => {
            compare(left, ops[0].0, &ops[0].1).map(|p| (IndexExpr::Pred(p), true))
        }
        ExprKind::Compare { left, ops } => {
            // An unsplit chain: `a < b < c` is `(a < b) and (b < c)`.
            let mut lefts = std::iter::once(left.as_ref()).chain(ops.iter().map(|(_, r)| r));
            let parts = ops
                .iter()
                .map(|(op, right)| {
                    let l = lefts.next()?;
                    compare(l, *op, right).map(|p| (IndexExpr::Pred(p), true))
                })
                .collect();
            and(parts)
        }
        _ => None,
    }
}

fn and(children: Vec<Option<(IndexExpr, bool)>>) -> Option<(IndexExpr, bool)> {
    let all = children.len();
    let indexed: Vec<(IndexExpr, bool)> = children.into_iter().flatten().collect();
    if indexed.is_empty() {
        return None;
    }
    let exact = indexed.len() == all && indexed.iter().all(|(_, e)| *e);
    Some((flatten(indexed.into_iter().map(|(i, _)| i).collect(), IndexExpr::And), exact))
}

fn flatten(mut children: Vec<IndexExpr>, wrap: fn(Vec<IndexExpr>) -> IndexExpr) -> IndexExpr {
    if children.len() == 1
        && let Some(only) = children.pop()
    {
        return only;
    }
    wrap(children)
}

fn const_str(e: &Expr) -> Option<&str> {
    match e.as_const() {
        Some(Constant::Str(s)) => Some(s),
        _ => None,
    }
}

fn const_bool(e: &Expr) -> Option<bool> {
    match e.as_const() {
        Some(Constant::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// Returns the hparam name of `run.hparams.<name>` or `run["hparams"]["<name>"]`.
fn hparam_name(e: &Expr) -> Option<&str> {
    match &e.kind {
        ExprKind::Attr(base, name) if base.is_attr_of("run", "hparams") => Some(name),
        ExprKind::Subscript(base, key) => match &base.kind {
            ExprKind::Subscript(run, hp)
                if matches!(&run.kind, ExprKind::Name(n) if n == "run") && const_str(hp) == Some("hparams") =>
            {
                const_str(key)
            }
            _ => None,
        },
        _ => None,
    }
}

fn range_op(op: CmpOp) -> Option<RangeOp> {
    Some(match op {
        CmpOp::Eq => RangeOp::Eq,
        CmpOp::Lt => RangeOp::Lt,
        CmpOp::LtE => RangeOp::LtE,
        CmpOp::Gt => RangeOp::Gt,
        CmpOp::GtE => RangeOp::GtE,
        _ => return None,
    })
}

/// Recognises one comparison shape of the §5.4 table (operand order matters).
fn compare(left: &Expr, op: CmpOp, right: &Expr) -> Option<IndexPred> {
    if op == CmpOp::In {
        return (right.is_attr_of("run", "tags"))
            .then(|| const_str(left).map(|t| IndexPred::Tag(t.to_string())))
            .flatten();
    }
    if let Some(name) = hparam_name(left) {
        let value = match right.as_const()? {
            Constant::Int(i) => Elem::Int(*i),
            Constant::Float(f) => Elem::Float(*f),
            Constant::Str(s) => Elem::Str(s.clone()),
            Constant::Bool(b) => Elem::Bool(*b),
            Constant::None => Elem::Null,
            Constant::Bytes(_) => return None,
        };
        return Some(IndexPred::Hparam { name: name.to_string(), op: range_op(op)?, value });
    }
    if left.is_attr_of("run", "created_at") || left.is_attr_of("run", "creation_time") {
        let value = match right.as_const()? {
            Constant::Int(i) => *i as f64,
            Constant::Float(f) if !f.is_nan() => *f,
            _ => return None,
        };
        return Some(IndexPred::CreatedAt { op: range_op(op)?, value });
    }
    if op != CmpOp::Eq {
        return None;
    }
    if left.is_attr_of("run", "hash") {
        return const_str(right).map(|s| IndexPred::Hash(s.to_string()));
    }
    if left.is_attr_of("run", "experiment") {
        return const_str(right).map(|s| IndexPred::Experiment(s.to_string()));
    }
    if left.is_attr_of("run", "active") {
        return const_bool(right).map(IndexPred::Active);
    }
    if left.is_attr_of("run", "archived") || left.is_attr_of("run", "is_archived") {
        return const_bool(right).map(IndexPred::Archived);
    }
    if left.is_attr_of("metric", "name") {
        return const_str(right).map(|s| IndexPred::TraceName(s.to_string()));
    }
    None
}

fn is_metric_name_eq(e: &Expr) -> Option<&str> {
    match &e.kind {
        ExprKind::Compare { left, ops }
            if ops.len() == 1 && ops[0].0 == CmpOp::Eq && left.is_attr_of("metric", "name") =>
        {
            const_str(&ops[0].1)
        }
        _ => None,
    }
}

/// Returns the trace names the query restricts metric search to: AND intersects, OR unites,
/// anything else means all traces.
fn trace_names(expr: &Expr) -> Option<BTreeSet<String>> {
    if let Some(name) = is_metric_name_eq(expr) {
        return Some(BTreeSet::from([name.to_string()]));
    }
    match &expr.kind {
        ExprKind::BoolOp(BoolOp::And, values) => {
            values.iter().filter_map(trace_names).reduce(|a, b| a.intersection(&b).cloned().collect())
        }
        ExprKind::BoolOp(BoolOp::Or, values) => {
            let sets: Option<Vec<BTreeSet<String>>> = values.iter().map(trace_names).collect();
            sets.map(|s| s.into_iter().flatten().collect())
        }
        _ => None,
    }
}

fn metric_usage(expr: &Expr) -> MetricUsage {
    let (mut all, mut name_only) = (0usize, 0usize);
    expr.walk(&mut |e| {
        if matches!(&e.kind, ExprKind::Name(n) if n == "metric") {
            all += 1;
        }
        if is_metric_name_eq(e).is_some() {
            name_only += 1;
        }
    });
    match all {
        0 => MetricUsage::None,
        n if n == name_only => MetricUsage::NameOnly,
        _ => MetricUsage::Other,
    }
}

fn reads_run_traces(expr: &Expr) -> bool {
    let mut reads = false;
    expr.walk(&mut |e| reads |= matches!(&e.kind, ExprKind::Attr(_, name) if name == "metrics"));
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::pipeline::{CompileOptions, compile};

    fn planned(q: &str) -> Plan {
        plan(&compile(q, &CompileOptions::default()).unwrap_or_else(|e| panic!("{q:?}: {e}")).expr)
    }

    fn p(pred: IndexPred) -> IndexExpr {
        IndexExpr::Pred(pred)
    }

    fn not_archived() -> IndexExpr {
        p(IndexPred::Archived(false))
    }

    fn hp(name: &str, op: RangeOp, value: Elem) -> IndexExpr {
        p(IndexPred::Hparam { name: name.into(), op, value })
    }

    #[test]
    fn empty_query_uses_the_archived_index_exactly() {
        let plan = planned("");
        assert_eq!(plan.index, Some(not_archived()));
        assert!(plan.exact);
        assert_eq!(plan.residual, None);
        assert_eq!(plan.metric_usage, MetricUsage::None);
        assert_eq!(plan.trace_names, None);
    }

    #[test]
    fn table_shapes_are_indexed_exactly() {
        let cases: Vec<(&str, IndexExpr)> = vec![
            ("'important' in run.tags", p(IndexPred::Tag("important".into()))),
            ("run.hash == 'abc'", p(IndexPred::Hash("abc".into()))),
            ("run.experiment == 'baseline'", p(IndexPred::Experiment("baseline".into()))),
            ("run.active == True", p(IndexPred::Active(true))),
            ("run.hparams.lr == 0.01", hp("lr", RangeOp::Eq, Elem::Float(0.01))),
            ("run.hparams.lr > 0", hp("lr", RangeOp::Gt, Elem::Int(0))),
            ("run.hparams.lr >= 5", hp("lr", RangeOp::GtE, Elem::Int(5))),
            ("run.hparams.lr < 0.5", hp("lr", RangeOp::Lt, Elem::Float(0.5))),
            ("run.hparams.lr <= 'x'", hp("lr", RangeOp::LtE, Elem::Str("x".into()))),
            ("run.hparams.flag == 1", hp("flag", RangeOp::Eq, Elem::Int(1))),
            ("run.hparams.flag == True", hp("flag", RangeOp::Eq, Elem::Bool(true))),
            ("run.hparams.x == None", hp("x", RangeOp::Eq, Elem::Null)),
            ("run['hparams']['lr'] == 1.0", hp("lr", RangeOp::Eq, Elem::Float(1.0))),
            ("metric.name == 'loss'", p(IndexPred::TraceName("loss".into()))),
            ("run.created_at > 1700000000", p(IndexPred::CreatedAt { op: RangeOp::Gt, value: 1.7e9 })),
            (
                "run.created_at >= datetime(2024, 1, 2)",
                p(IndexPred::CreatedAt { op: RangeOp::GtE, value: 1_704_153_600.0 }),
            ),
        ];
        for (q, index) in cases {
            let plan = planned(q);
            assert_eq!(plan.index, Some(IndexExpr::And(vec![not_archived(), index])), "{q}");
            assert!(plan.exact, "{q}");
            assert_eq!(plan.residual, None, "{q}");
        }
    }

    #[test]
    fn archived_comparisons_replace_the_default_filter() {
        assert_eq!(planned("run.is_archived == True").index, Some(p(IndexPred::Archived(true))));
        assert_eq!(planned("run.archived == False").index, Some(p(IndexPred::Archived(false))));
        // `in` and `!=` on archived suppress the default filter but are not indexed.
        let plan = planned("run.archived in [True, False]");
        assert_eq!(plan.index, None);
        assert!(!plan.exact);
        assert!(plan.residual.is_some());
        assert_eq!(planned("run.archived != True").index, None);
    }

    #[test]
    fn unindexed_shapes_give_supersets_through_the_archived_index() {
        for q in [
            "run.hparams.lr != 0.1",
            "run.hparams.nested.depth == 3",
            "0.1 == run.hparams.lr",
            "'x' == run.hash",
            "run.name == 'gamma'",
            "not run.active == True",
            "len(run.tags) > 1",
            "run.hash in ['a', 'b']",
            "run.hparams.lr > -1",
            "run.hparams.lr == 1 + 1",
            "run.hparams.lr == b'x'",
            "run.experiment == None",
            "run.active == 1",
            "run.tags == ['a']",
            "metric.name != 'loss'",
            "run.hparams.lr == 0.1 or run.name == 'x'",
        ] {
            let plan = planned(q);
            assert_eq!(plan.index, Some(not_archived()), "{q}");
            assert!(!plan.exact, "{q}");
            assert!(plan.residual.is_some(), "{q}");
        }
    }

    #[test]
    fn combinators() {
        let plan = planned("run.experiment == 'a' and run.hparams.lr > 0.1");
        assert_eq!(
            plan.index,
            Some(IndexExpr::And(vec![
                not_archived(),
                IndexExpr::And(vec![p(IndexPred::Experiment("a".into())), hp("lr", RangeOp::Gt, Elem::Float(0.1))])
            ]))
        );
        assert!(plan.exact);
        let plan = planned("run.experiment == 'a' or 'x' in run.tags");
        assert_eq!(
            plan.index,
            Some(IndexExpr::And(vec![
                not_archived(),
                IndexExpr::Or(vec![p(IndexPred::Experiment("a".into())), p(IndexPred::Tag("x".into()))])
            ]))
        );
        assert!(plan.exact);
        // A superset branch makes the OR unindexed.
        let plan = planned("(run.experiment == 'a' and run.name == 'n') or run.active == True");
        assert_eq!(plan.index, Some(not_archived()));
        assert!(!plan.exact);
        // Nothing indexed at all: a full scan.
        let plan = super::plan(&crate::query::parser::parse_expression("run.name == 'x'", Default::default()).unwrap());
        assert_eq!(plan.index, None);
        assert!(!plan.exact);
        // Chained comparisons are split first: the constant-left half is not indexed.
        let plan = planned("0 < run.hparams.lr < 1");
        assert_eq!(plan.index, Some(IndexExpr::And(vec![not_archived(), hp("lr", RangeOp::Lt, Elem::Int(1))])));
        assert!(!plan.exact);
        let raw =
            crate::query::parser::parse_expression("run.hparams.lr < run.hparams.lr < 1", Default::default()).unwrap();
        assert_eq!(super::plan(&raw).index, Some(hp("lr", RangeOp::Lt, Elem::Int(1))));
    }

    #[test]
    fn trace_names_and_metric_usage() {
        let plan = planned("metric.name == 'loss'");
        assert_eq!(plan.trace_names, Some(BTreeSet::from(["loss".to_string()])));
        assert_eq!(plan.metric_usage, MetricUsage::NameOnly);
        assert!(plan.exact);
        let plan = planned("metric.name == 'loss' or metric.name == 'acc'");
        assert_eq!(plan.trace_names, Some(BTreeSet::from(["acc".to_string(), "loss".to_string()])));
        let plan = planned("metric.name == 'loss' and metric.name == 'acc'");
        assert_eq!(plan.trace_names, Some(BTreeSet::new()));
        let plan = planned("metric.name == 'loss' or run.name == 'x'");
        assert_eq!(plan.trace_names, None);
        let plan = planned("metric.name == 'loss' and metric.context.subset == 'train'");
        assert_eq!(plan.trace_names, Some(BTreeSet::from(["loss".to_string()])));
        assert_eq!(plan.metric_usage, MetricUsage::Other);
        assert!(!plan.exact);
        assert_eq!(planned("metric.last > 0.3").metric_usage, MetricUsage::Other);
        assert_eq!(planned("run.name == 'gamma'").metric_usage, MetricUsage::None);
        let plan = planned("(run.description != 'nonexistent') and (metric.name == 'loss')");
        assert_eq!(plan.metric_usage, MetricUsage::NameOnly);
        assert_eq!(plan.trace_names, Some(BTreeSet::from(["loss".to_string()])));
        assert!(!plan.exact);
        assert_eq!(plan.index, Some(IndexExpr::And(vec![not_archived(), p(IndexPred::TraceName("loss".into()))])));
    }

    #[test]
    fn only_queries_naming_metrics_read_run_traces() {
        for q in
            ["run.metrics['loss'].last < 1", "metric.run.metrics['x'].last_step > 0", "(run if True else 1).metrics"]
        {
            assert!(planned(q).reads_run_traces, "{q}");
        }
        for q in ["", "run.hparams.lr > 0.01", "run.name == 'metrics'", "run['metrics'] == 1", "metric.name == 'loss'"]
        {
            assert!(!planned(q).reads_run_traces, "{q}");
        }
    }
}
