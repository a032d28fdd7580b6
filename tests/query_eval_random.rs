//! Seeded random MatyanQL programs, evaluated under small budgets: the CI stand-in for the
//! `query_eval` fuzz target (cargo-fuzz needs nightly). Programs come from a grammar of literals,
//! operators, builtins and methods, with large repeat counts mixed in; each must evaluate
//! without panicking to a value or a typed error, and the heap an evaluation holds at its peak
//! must stay within a small multiple of `max_value_bytes`.

#[path = "support/capped_alloc.rs"]
mod capped_alloc;

use std::sync::Arc;

use matyan::query::value::py_repr;
use matyan::query::views::{RunView, TraceSummary, sequence_scope};
use matyan::query::{CompileOptions, EvalBudget, EvalError, EvalLimits, compile, evaluate_within};
use matyan::storage::value::Value;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[global_allocator]
static ALLOC: capped_alloc::Capped = capped_alloc::Capped;

const PROGRAMS: usize = 20_000;
const MAX_VALUE_BYTES: u64 = 1 << 20;

/// Heap an evaluation may hold beyond its accounted values: the accounting counts slots and
/// payloads, the allocator also sees vector growth and small transient buffers.
const SLACK_FACTOR: usize = 4;
const SLACK_BYTES: usize = 1 << 20;

struct Gen {
    rng: StdRng,
}

impl Gen {
    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.rng.random_range(0..options.len())]
    }

    fn count(&mut self) -> String {
        // Small counts mostly, and the hostile sizes of issue 9 now and then.
        self.pick(&["0", "1", "2", "3", "10", "100", "1000", "100000", "10 ** 6", "-1", "10 ** 30"]).to_owned()
    }

    fn leaf(&mut self) -> String {
        match self.rng.random_range(0..14) {
            0 => self.count(),
            1 => format!("{}.5", self.rng.random_range(-3..4)),
            2 => self.pick(&["''", "'a'", "'ab,c'", "' x '", "'É'", "'\\x00'"]).to_owned(),
            3 => self.pick(&["True", "False", "None"]).to_owned(),
            4 => self.pick(&["run.name", "run.tags", "run.hparams", "run.hparams.lr", "run.hash"]).to_owned(),
            5 => self.pick(&["metric.name", "metric.last", "metric.context", "run.metrics['loss'].last"]).to_owned(),
            6 => "[]".to_owned(),
            7 => "{}".to_owned(),
            8 => "()".to_owned(),
            9 => format!("range({})", self.count()),
            10 => self.pick(&["b'xy'", "1e308", "float('nan')", "-0.0"]).to_owned(),
            _ => self.rng.random_range(-5..50).to_string(),
        }
    }

    fn expr(&mut self, depth: u32) -> String {
        if depth == 0 || self.rng.random_range(0..10) < 2 {
            return self.leaf();
        }
        let d = depth - 1;
        match self.rng.random_range(0..14) {
            0 => {
                let op = self.pick(&["+", "-", "*", "/", "//", "%", "**", "<<", ">>", "&", "|", "^"]);
                format!("({} {op} {})", self.expr(d), self.expr(d))
            }
            1 => format!("({} * {})", self.expr(d), self.count()),
            11 => format!("[[{}] * {}] * {}", self.expr(d), self.count(), self.count()),
            2 => {
                let op = self.pick(&["==", "!=", "<", "<=", ">", ">=", "in", "not in", "is", "is not"]);
                format!("({} {op} {})", self.expr(d), self.expr(d))
            }
            3 => {
                let op = self.pick(&["and", "or"]);
                format!("({} {op} {})", self.expr(d), self.expr(d))
            }
            4 => format!("({}{})", self.pick(&["-", "not ", "~", "+"]), self.expr(d)),
            5 => format!("({} if {} else {})", self.expr(d), self.expr(d), self.expr(d)),
            6 => {
                let n = self.rng.random_range(0..4);
                let items: Vec<String> = (0..n).map(|_| self.expr(d)).collect();
                match self.rng.random_range(0..4) {
                    0 => format!("[{}]", items.join(", ")),
                    1 => format!("({},)", items.join(", ")),
                    2 if n > 0 => format!("{{{}}}", items.join(", ")),
                    _ => {
                        let pairs: Vec<String> = items.iter().map(|i| format!("{i}: {}", self.leaf())).collect();
                        format!("{{{}}}", pairs.join(", "))
                    }
                }
            }
            7 => format!("{}[{}]", self.expr(d), self.expr(d)),
            8 => format!("{}[{}:{}:{}]", self.expr(d), self.leaf(), self.leaf(), self.pick(&["", "1", "-1", "2"])),
            9 | 10 => {
                let f = self.pick(&[
                    "len",
                    "str",
                    "repr",
                    "int",
                    "float",
                    "bool",
                    "abs",
                    "round",
                    "min",
                    "max",
                    "sum",
                    "any",
                    "all",
                    "sorted",
                    "list",
                    "tuple",
                    "set",
                    "dict",
                    "range",
                    "zip",
                    "enumerate",
                    "reversed",
                ]);
                let n = self.rng.random_range(1..3);
                let args: Vec<String> = (0..n).map(|_| self.expr(d)).collect();
                format!("{f}({})", args.join(", "))
            }
            _ => {
                let (m, arity) = match self.rng.random_range(0..16) {
                    0 => ("upper", 0),
                    1 => ("lower", 0),
                    2 => ("strip", 0),
                    3 => ("split", 1),
                    4 => ("replace", 2),
                    5 => ("join", 1),
                    6 => ("count", 1),
                    7 => ("find", 1),
                    8 => ("startswith", 1),
                    9 => ("get", 1),
                    10 => ("keys", 0),
                    11 => ("items", 0),
                    12 => ("values", 0),
                    13 => ("index", 1),
                    14 => ("capitalize", 0),
                    _ => ("split", 0),
                };
                let args: Vec<String> = (0..arity).map(|_| self.expr(d)).collect();
                format!("{}.{m}({})", self.expr(d), args.join(", "))
            }
        }
    }
}

fn view() -> Arc<RunView> {
    let s = |v: &str| Value::Str(v.to_owned());
    let mut run = RunView::new("abc");
    run.name = Some("alpha".into());
    run.tags = vec!["x".into(), "y".into()];
    run.attrs =
        Value::Map(vec![(s("hparams"), Value::Map(vec![(s("lr"), Value::Float(0.1)), (s("n"), Value::Int(3))]))]);
    run.traces = vec![TraceSummary {
        name: "loss".into(),
        context: Value::Map(vec![(s("subset"), s("train"))]),
        last: Value::Float(0.5),
        last_step: Value::Int(9),
    }];
    Arc::new(run)
}

#[test]
fn random_programs_evaluate_to_a_value_or_a_typed_error_within_the_memory_budget() {
    let mut programs = Gen { rng: StdRng::seed_from_u64(0x9_2026) };
    let run = view();
    let scope = sequence_scope(&run, "metric", &run.traces[0]);
    let limits = EvalLimits { work_units: 200_000, max_value_bytes: MAX_VALUE_BYTES, ..EvalLimits::default() };
    let (mut values, mut over_budget, mut errors) = (0, 0, 0);
    for i in 0..PROGRAMS {
        let q = programs.expr(5);
        let Ok(query) = compile(&q, &CompileOptions::default()) else { continue };
        let before = capped_alloc::live();
        capped_alloc::take_peak();
        let result = evaluate_within(&query.expr, &scope, &limits);
        let held = capped_alloc::take_peak().saturating_sub(before);
        assert!(
            held <= SLACK_FACTOR * MAX_VALUE_BYTES as usize + SLACK_BYTES,
            "program {i} held {held} bytes at its peak: {q}"
        );
        match result {
            Ok(v) => {
                values += 1;
                let _ = py_repr(&v);
            }
            Err(EvalError::OverBudget(budget)) => {
                assert_eq!(budget, EvalBudget::Memory { limit_bytes: MAX_VALUE_BYTES }, "{q}");
                over_budget += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                errors += 1;
            }
        }
    }
    eprintln!("{values} values, {over_budget} over the memory budget, {errors} other errors");
    // The grammar reaches every outcome.
    assert!(values > 0 && over_budget > 0 && errors > 0);
}
