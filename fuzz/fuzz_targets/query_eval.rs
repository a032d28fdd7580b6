//! Fuzz target: MatyanQL evaluation (not only compilation) against a small run, under small work
//! and memory budgets, must never panic; run it with `-malloc_limit_mb` so that an allocation the
//! memory budget failed to account is a crash. Its stable stand-in is `tests/query_eval_random.rs`.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use matyan::query::views::{RunView, TraceSummary, sequence_scope};
use matyan::query::{CompileOptions, EvalLimits, compile, evaluate_within};
use matyan::storage::value::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(query) = compile(&text, &CompileOptions::default()) else { return };
    let s = |v: &str| Value::Str(v.to_owned());
    let mut run = RunView::new("abc");
    run.name = Some("alpha".into());
    run.tags = vec!["x".into(), "y".into()];
    run.attrs =
        Value::Map(vec![(s("hparams"), Value::Map(vec![(s("lr"), Value::Float(0.1)), (s("n"), Value::Int(3))]))]);
    let trace = TraceSummary {
        name: "loss".into(),
        context: Value::Map(vec![(s("subset"), s("train"))]),
        last: Value::Float(0.5),
        last_step: Value::Int(9),
    };
    let run = Arc::new(run);
    let scope = sequence_scope(&run, "metric", &trace);
    // 1 MiB of values: with `-malloc_limit_mb=16`, a malloc libFuzzer refuses means the
    // accounting missed one.
    let limits = EvalLimits { work_units: 200_000, max_value_bytes: 1 << 20, ..EvalLimits::default() };
    if let Err(err) = evaluate_within(&query.expr, &scope, &limits) {
        assert!(!err.to_string().is_empty());
    }
});
