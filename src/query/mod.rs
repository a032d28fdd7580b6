//! MatyanQL, our implementation of the reference's AimQL (spec §5): pure functions from a raw
//! `q` parameter to a plan and a per-candidate verdict, with no IO and no storage access.
//!
//! Module map:
//! - [`lexer`]: Python tokens with byte positions;
//! - [`parser`]: the expression subset with Python precedence, depth and length limits, and the
//!   restricted compiler's ban on `_` names;
//! - [`ast`]: the syntax tree and its walkers;
//! - [`pipeline`]: §5.1 — `SELECT ... IF` strip, default predicate, `datetime(...)` folding,
//!   chained-comparison split, default archived filter; [`pipeline::compile`] runs them all;
//! - [`value`]: runtime values with Python's equality, ordering, membership and `repr`, and the
//!   [`value::HostObject`] trait for embedder-provided objects;
//! - [`eval`]: the evaluator over a [`eval::Scope`]; an error means "no match";
//! - [`views`]: the `run` and sequence objects of §5.2 built from stored meta and attributes;
//! - [`plan`]: §5.4 — the index-pushable predicates of a query and the residual filter;
//! - [`error`]: [`error::SyntaxError`] (HTTP 400) and [`error::EvalError`] (no match).
//!
//! A request compiles the query once (`compile`), plans it (`plan::plan`), then, for each
//! candidate the HTTP layer loads, builds a scope (`views::run_scope`) and calls
//! `eval::matches`.
pub mod ast;
pub mod error;
pub mod eval;
pub mod lexer;
pub mod parser;
pub mod pipeline;
pub mod plan;
pub mod value;
pub mod views;

pub use error::{EvalBudget, EvalError, SyntaxError};
pub use eval::{Bindings, Scope, check_constant_parts, evaluate, evaluate_within, matches, matches_within};
pub use pipeline::{CompileOptions, Query, compile};
pub use value::EvalLimits;

#[cfg(test)]
mod tests {
    //! End-to-end checks of every query the spec (api.md §5, §10, §12) quotes.
    use std::sync::Arc;

    use super::plan::{IndexExpr, IndexPred, MetricUsage, plan};
    use super::views::{RunView, TraceSummary, run_scope, sequence_scope};
    use super::*;
    use crate::storage::value::Value;

    fn s(v: &str) -> Value {
        Value::Str(v.to_string())
    }

    fn run(hash: &str, name: &str, archived: bool, lr: Value) -> Arc<RunView> {
        let mut view = RunView::new(hash);
        view.name = Some(name.to_string());
        view.archived = archived;
        view.experiment = Some("exp".into());
        view.tags = vec!["x".into()];
        view.attrs = Value::Map(vec![(
            s("hparams"),
            Value::Map(vec![(s("lr"), lr), (s("model"), Value::Map(vec![(s("depth"), Value::Int(3))]))]),
        )]);
        view.traces = vec![
            TraceSummary {
                name: "loss".into(),
                context: Value::Map(vec![(s("subset"), s("train"))]),
                last: Value::Float(0.5),
                last_step: Value::Int(2),
            },
            TraceSummary {
                name: "acc".into(),
                context: Value::Map(vec![]),
                last: Value::Float(0.1),
                last_step: Value::Int(2),
            },
        ];
        Arc::new(view)
    }

    fn compiled(q: &str) -> Query {
        compile(q, &CompileOptions::default()).unwrap_or_else(|e| panic!("{q:?}: {e}"))
    }

    fn run_hits(q: &str, runs: &[Arc<RunView>]) -> Vec<String> {
        let query = compiled(q);
        runs.iter().filter(|r| matches(&query.expr, &run_scope(r))).map(|r| r.hash.clone()).collect()
    }

    fn metric_hits(q: &str, runs: &[Arc<RunView>]) -> Vec<String> {
        let query = compiled(q);
        let mut out = Vec::new();
        for r in runs {
            for t in &r.traces {
                if matches(&query.expr, &sequence_scope(r, "metric", t)) {
                    out.push(format!("{}/{}", r.hash, t.name));
                }
            }
        }
        out
    }

    fn runs() -> Vec<Arc<RunView>> {
        vec![
            run("norm", "gamma", false, Value::Float(0.01)),
            run("hidden", "beta", true, Value::Int(1)),
            run("other", "delta", false, s("high")),
        ]
    }

    #[test]
    fn pipeline_examples_of_section_5_1() {
        let runs = runs();
        assert_eq!(run_hits("SELECT run IF run.name == \"beta\"", &runs), run_hits("run.name == \"beta\"", &runs));
        assert_eq!(run_hits("run.name == \"beta\"", &runs), Vec::<String>::new());
        assert_eq!(run_hits("run.name == \"gamma\"", &runs), vec!["norm"]);
        assert_eq!(run_hits("", &runs), vec!["norm", "other"]);
        assert_eq!(run_hits("1/0", &runs), Vec::<String>::new());
        assert_eq!(run_hits("metric.context.x == 1", &runs), Vec::<String>::new());
        let err = compile("import os", &CompileOptions::default()).unwrap_err();
        assert!(err.http_message().starts_with("Invalid query syntax: invalid syntax"));
        assert!(matches!(
            compile("__import__(\"os\")", &CompileOptions::default()),
            Err(SyntaxError::Underscore { .. })
        ));
    }

    #[test]
    fn names_of_section_5_2() {
        let runs = runs();
        for q in [
            "\"x\" in run.tags",
            "run.tags.contains(\"x\")",
            "run.experiment == \"exp\"",
            "run.hparams.model.depth == 3",
            "run[\"hparams\"][\"model\"][\"depth\"] == 3",
            "run[\"missing\"] == None",
            "run.metrics[\"loss\"].last == 0.5",
            "run.metrics[\"loss\", {\"subset\": \"train\"}].last_step == 2",
            "run.duration == 0.0",
        ] {
            assert_eq!(run_hits(q, &runs), vec!["norm", "other"], "{q}");
        }
        assert_eq!(metric_hits("metric.context.subset == \"train\"", &runs), vec!["norm/loss", "other/loss"]);
        assert_eq!(metric_hits("metric.context.subset == \"val\"", &runs), Vec::<String>::new());
        assert_eq!(metric_hits("metric.last > 0.3", &runs), vec!["norm/loss", "other/loss"]);
        assert_eq!(metric_hits("metric.name == \"nonexistent_metric\"", &runs), Vec::<String>::new());
        assert_eq!(metric_hits("run.name == \"gamma\"", &runs), vec!["norm/loss", "norm/acc"]);
        assert_eq!(
            metric_hits("(run.description != \"nonexistent\") and (metric.name == \"loss\")", &runs),
            vec!["norm/loss", "other/loss"]
        );
    }

    #[test]
    fn matching_semantics_of_section_5_3() {
        let runs = runs();
        assert_eq!(run_hits("run.nonexistent == None", &runs), vec!["norm", "other"]);
        // In memory `run.hparams.missing == None` is true; the planner answers it from the index
        // (nothing), which the HTTP layer reproduces by trusting the exact plan.
        assert_eq!(run_hits("run.hparams.missing == None", &runs), vec!["norm", "other"]);
        let p = plan(&compiled("run.hparams.missing == None").expr);
        assert!(p.exact);
        assert_eq!(run_hits("run.is_archived == True", &runs), vec!["hidden"]);
        assert_eq!(run_hits("run.archived == True", &runs), vec!["hidden"]);
        assert_eq!(run_hits("run.archived in [True, False]", &runs), vec!["norm", "hidden", "other"]);
        assert_eq!(run_hits("not run.archived", &runs), vec!["norm", "other"]);
        // Mixed-type ordering raises TypeError: the str-valued run does not match.
        assert_eq!(run_hits("run.hparams.lr < 0.5", &runs), vec!["norm"]);
        assert_eq!(run_hits("run.hparams.lr == 1.0", &runs), Vec::<String>::new());
        assert_eq!(run_hits("run.hparams.lr == 1.0 and run.archived == True", &runs), vec!["hidden"]);
    }

    #[test]
    fn planner_examples_of_section_5_4() {
        for q in [
            "\"x\" in run.tags",
            "run.hash == \"abc\"",
            "run.experiment == \"exp\"",
            "run.active == True",
            "run.hparams.lr == 1.0",
            "run.hparams.flag == 1",
            "run.hparams.lr >= 5",
            "run.hparams.lr < 0.5",
            "run.hparams.lr > 0",
            "run.hparams.x == None",
            "run.hparams.lr > 0.01",
            "metric.name == \"loss\"",
        ] {
            let p = plan(&compiled(q).expr);
            assert!(p.exact, "{q}");
            assert!(
                matches!(p.index, Some(IndexExpr::And(ref parts)) if parts[0] == IndexExpr::Pred(IndexPred::Archived(false))),
                "{q}"
            );
        }
        for q in ["run.hparams.nested.depth == 3", "run.hparams.lr != 0.1", "run.name == \"gamma\""] {
            assert!(!plan(&compiled(q).expr).exact, "{q}");
        }
        assert_eq!(plan(&compiled("metric.context.subset == \"train\"").expr).metric_usage, MetricUsage::Other);
        let p = plan(&compiled("run.is_archived == True").expr);
        assert_eq!(p.index, Some(IndexExpr::Pred(IndexPred::Archived(true))));
    }

    #[test]
    fn deepest_accepted_query_evaluates_within_the_stack() {
        let limits = parser::ParseLimits::default();
        let mut depth = limits.max_depth;
        loop {
            let q = format!("{}run.name == 'gamma'{}", "(".repeat(depth), ")".repeat(depth));
            match compile(&q, &CompileOptions::default()) {
                Ok(query) => {
                    let runs = runs();
                    assert!(matches(&query.expr, &run_scope(&runs[0])));
                    break;
                }
                Err(SyntaxError::TooDeep { .. }) => depth -= 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(depth > 50);
        // Trees as tall as the limit allows evaluate (and drop) without exhausting the stack.
        let runs = runs();
        let nots = format!("{}run.active", "not ".repeat(limits.max_depth - 3));
        let query = compile(&nots, &CompileOptions::default()).unwrap();
        // An odd number of `not`s over an inactive run.
        assert_eq!(matches(&query.expr, &run_scope(&runs[0])), (limits.max_depth - 3) % 2 == 1);
        let lists = format!("{}1{} != 0", "[".repeat(limits.max_depth - 3), "]".repeat(limits.max_depth - 3));
        assert!(matches(&compile(&lists, &CompileOptions::default()).unwrap().expr, &run_scope(&runs[0])));
        let sums = format!("{} == {}", vec!["1"; limits.max_depth - 3].join(" + "), limits.max_depth - 3);
        assert!(matches(&compile(&sums, &CompileOptions::default()).unwrap().expr, &run_scope(&runs[0])));
        let huge = format!("run.name == '{}'", "a".repeat(1 << 20));
        assert!(matches!(compile(&huge, &CompileOptions::default()), Err(SyntaxError::TooLong { .. })));
    }
}
