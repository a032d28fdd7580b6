//! The query pipeline of spec §5.1 up to planning: `SELECT ... IF` strip, default predicate for
//! empty queries, parse, `datetime(...)` folding, chained-comparison split and the default
//! archived filter.

use super::ast::{BoolOp, CmpOp, Constant, Expr, ExprKind};
use super::error::SyntaxError;
use super::parser::{ParseLimits, parse_mapped};

/// Options of [`compile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompileOptions {
    /// The request's `X-Timezone-Offset` header in minutes (the browser's
    /// `Date.getTimezoneOffset()`, so −180 for UTC+3); 0 when absent.
    pub tz_offset_minutes: i64,
    /// Bounds on the query's size and nesting.
    pub limits: ParseLimits,
}

/// A query ready for planning and evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The rewritten expression, default filter included.
    pub expr: Expr,
    /// Tells whether the default `run.is_archived == False` filter was added.
    pub default_filter: bool,
}

/// Applies step 1 of §5.1: when the raw query starts with `select` (any case, no leading
/// space), drops everything up to and including the first `if` (any case, anywhere, even inside
/// a word); then trims. Returns the byte offset of the result in `raw` and the result.
pub fn strip_select(raw: &str) -> (usize, &str) {
    let bytes = raw.as_bytes();
    let mut start = 0;
    let mut end = raw.len();
    if bytes.len() >= 6 && bytes[..6].eq_ignore_ascii_case(b"select") {
        match bytes.windows(2).position(|w| w.eq_ignore_ascii_case(b"if")) {
            Some(at) => start = at + 2,
            None => end = 0,
        }
    }
    if start >= end {
        return (end, "");
    }
    let rest = &raw[start..end];
    let trimmed_start = rest.len() - rest.trim_start().len();
    let body = rest.trim();
    (start + trimmed_start, body)
}

/// Returns the default predicate `run.is_archived == False` positioned at `pos`.
pub fn default_predicate(pos: usize) -> Expr {
    let run = Expr::new(ExprKind::Name("run".to_string()), pos);
    let attr = Expr::new(ExprKind::Attr(Box::new(run), "is_archived".to_string()), pos);
    let ops = vec![(CmpOp::Eq, Expr::new(ExprKind::Const(Constant::Bool(false)), pos))];
    Expr::new(ExprKind::Compare { left: Box::new(attr), ops }, pos)
}

/// Tells whether some comparison has `run.archived` or `run.is_archived` as a direct operand,
/// which suppresses the default filter (§5.3); other mentions (`not run.archived`) do not.
pub fn mentions_archived(expr: &Expr) -> bool {
    let mut found = false;
    expr.walk(&mut |e| {
        if let ExprKind::Compare { left, ops } = &e.kind {
            let is_flag = |x: &Expr| x.is_attr_of("run", "archived") || x.is_attr_of("run", "is_archived");
            if is_flag(left) || ops.iter().any(|(_, r)| is_flag(r)) {
                found = true;
            }
        }
    });
    found
}

/// Applies step 6 of §5.1: `(run.is_archived == False) and (<expr>)` unless the expression
/// compares the archived flag itself. Returns the expression and whether the filter was added.
pub fn apply_default_filter(expr: Expr) -> (Expr, bool) {
    if mentions_archived(&expr) {
        return (expr, false);
    }
    let pos = expr.pos;
    (Expr::new(ExprKind::BoolOp(BoolOp::And, vec![default_predicate(pos), expr]), pos), true)
}

/// Applies step 5 of §5.1: `a < b <= c` becomes `(a < b) and (b <= c)`, as the reference's
/// AST transformer does (the middle operand is then evaluated twice, which is harmless for
/// side-effect-free expressions).
pub fn split_chained(expr: Expr) -> Expr {
    let expr = expr.map_children(&mut split_chained);
    match expr.kind {
        ExprKind::Compare { left, ops } if ops.len() > 1 => {
            let pos = expr.pos;
            let mut parts = Vec::with_capacity(ops.len());
            let mut current = *left;
            for (op, right) in ops {
                let next = right.clone();
                let part_pos = current.pos;
                parts.push(Expr::new(ExprKind::Compare { left: Box::new(current), ops: vec![(op, right)] }, part_pos));
                current = next;
            }
            Expr::new(ExprKind::BoolOp(BoolOp::And, parts), pos)
        }
        kind => Expr { kind, pos: expr.pos },
    }
}

/// Applies step 4 of §5.1: a call `datetime(<int constants>...)` without keywords becomes the
/// float `naive_datetime_as_if_utc − tz_offset_minutes × 60`.
///
/// This reproduces the reference's sign: the UI sends `getTimezoneOffset()` (−180 for UTC+3),
/// so dates are read in the mirrored zone (spec §10 item 10, kept for bit compatibility).
/// Invalid dates stay calls, evaluated at run time.
pub fn fold_datetimes(expr: Expr, tz_offset_minutes: i64) -> Expr {
    let expr = expr.map_children(&mut |e| fold_datetimes(e, tz_offset_minutes));
    if let ExprKind::Call { func, args, kwargs } = &expr.kind
        && matches!(&func.kind, ExprKind::Name(n) if n == "datetime")
        && kwargs.is_empty()
    {
        let ints: Option<Vec<i128>> =
            args.iter().map(|a| if let Some(Constant::Int(i)) = a.as_const() { Some(*i) } else { None }).collect();
        if let Some(ts) = ints.and_then(|v| utc_timestamp(&v)) {
            let value = ts - (tz_offset_minutes as f64) * 60.0;
            return Expr::new(ExprKind::Const(Constant::Float(value)), expr.pos);
        }
    }
    expr
}

/// Returns the POSIX timestamp of `datetime(year, month, day[, hour[, minute[, second[,
/// microsecond]]]])` read as UTC, or `None` when Python's constructor would raise.
pub fn utc_timestamp(parts: &[i128]) -> Option<f64> {
    if !(3..=7).contains(&parts.len()) {
        return None;
    }
    let get = |i: usize| parts.get(i).copied().unwrap_or(0);
    let (year, month, day) = (parts[0], parts[1], parts[2]);
    let (hour, minute, second, micro) = (get(3), get(4), get(5), get(6));
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_len = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    let valid = (1..=9999).contains(&year)
        && (1..=month_len).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..60).contains(&second)
        && (0..1_000_000).contains(&micro);
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    // Python computes (seconds * 10**6 + microseconds) / 10**6, a correctly rounded division.
    Some((seconds * 1_000_000 + micro) as f64 / 1e6)
}

/// Returns days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i128, month: i128, day: i128) -> i128 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Runs §5.1 steps 1–7 on a raw `q` parameter: strip, default predicate when empty, parse (as
/// the reference does, inside parentheses), fold datetimes, split chains, add the default
/// filter. Errors carry offsets into `raw` and map to HTTP 400.
pub fn compile(raw: &str, options: &CompileOptions) -> Result<Query, SyntaxError> {
    if raw.len() > options.limits.max_len {
        return Err(SyntaxError::TooLong { len: raw.len(), limit: options.limits.max_len });
    }
    let (offset, body) = strip_select(raw);
    if body.is_empty() {
        return Ok(Query { expr: default_predicate(offset), default_filter: true });
    }
    // The reference parses `(<body>)`: newlines become insignificant, `a, b` is a tuple, and a
    // trailing `# comment` swallows the closing parenthesis (a syntax error, as there).
    let wrapped = format!("({body})");
    let len = body.len();
    let map = move |p: usize| offset + p.saturating_sub(1).min(len);
    let expr = parse_mapped(&wrapped, options.limits, &map)?;
    let expr = fold_datetimes(expr, options.tz_offset_minutes);
    let expr = split_chained(expr);
    let (expr, default_filter) = apply_default_filter(expr);
    Ok(Query { expr, default_filter })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parser::parse_expression;

    fn parse(s: &str) -> Expr {
        parse_expression(s, ParseLimits::default()).unwrap()
    }

    fn compiled(q: &str) -> Query {
        compile(q, &CompileOptions::default()).unwrap_or_else(|e| panic!("{q:?}: {e}"))
    }

    #[test]
    fn select_strip_follows_the_reference() {
        assert_eq!(strip_select("SELECT run IF run.name == \"beta\""), (14, "run.name == \"beta\""));
        assert_eq!(strip_select("select metric if metric.name == 'loss'"), (17, "metric.name == 'loss'"));
        assert_eq!(strip_select("Select run"), (0, ""));
        // `if` inside a word counts.
        assert_eq!(strip_select("select modified run.x == 1").1, "ied run.x == 1");
        // Leading spaces defeat the rule.
        assert_eq!(strip_select("  select run if x").1, "select run if x");
        assert_eq!(strip_select("  run.name == 'a'  "), (2, "run.name == 'a'"));
        assert_eq!(strip_select(""), (0, ""));
        assert_eq!(strip_select("selectif"), (8, ""));
        assert_eq!(strip_select("sélect"), (0, "sélect"));
    }

    #[test]
    fn select_if_is_the_plain_query() {
        assert_eq!(compiled("SELECT run IF run.name == \"beta\"").expr, {
            let mut q = compiled("run.name == \"beta\"").expr;
            shift(&mut q, 14);
            q
        });
    }

    fn shift(e: &mut Expr, by: usize) {
        let taken = std::mem::replace(e, Expr::new(ExprKind::Name(String::new()), 0));
        fn go(e: Expr, by: usize) -> Expr {
            let pos = e.pos + by;
            let mut e = e.map_children(&mut |c| go(c, by));
            e.pos = pos;
            e
        }
        *e = go(taken, by);
    }

    #[test]
    fn empty_queries_get_the_default_predicate() {
        for q in ["", "   ", "select run", "SELECT run IF  "] {
            let query = compiled(q);
            assert!(query.default_filter);
            assert!(mentions_archived(&query.expr));
            assert!(matches!(query.expr.kind, ExprKind::Compare { .. }));
        }
    }

    #[test]
    fn default_filter_unless_archived_is_a_comparison_operand() {
        assert!(compiled("run.name == 'x'").default_filter);
        assert!(!compiled("run.archived == True").default_filter);
        assert!(!compiled("run.is_archived == True").default_filter);
        assert!(!compiled("run.archived in [True, False]").default_filter);
        assert!(!compiled("True == run.archived").default_filter);
        assert!(!compiled("run.archived != False and run.name == 'x'").default_filter);
        assert!(compiled("not run.archived").default_filter);
        assert!(compiled("run.archived").default_filter);
        assert!(compiled("run.hparams.archived == True").default_filter);
        let q = compiled("run.name == 'x'");
        let ExprKind::BoolOp(BoolOp::And, parts) = &q.expr.kind else { panic!() };
        assert_eq!(parts[0], default_predicate(0));
    }

    #[test]
    fn syntax_errors_point_into_the_raw_query() {
        let err = |q: &str| compile(q, &CompileOptions::default()).unwrap_err();
        assert_eq!(err("run.name == ").pos(), Some(11));
        assert_eq!(err("  run.name = 'x'").pos(), Some(11));
        assert_eq!(err("SELECT run IF run.name ==").pos(), Some(25));
        assert_eq!(
            err("select run if __import__('os')"),
            SyntaxError::Underscore { name: "__import__".into(), pos: 14 }
        );
        assert!(matches!(err("import os"), SyntaxError::Unexpected { pos: 0, .. }));
        assert_eq!(err("(x").pos(), Some(2));
        assert_eq!(err("x)").pos(), Some(2));
        // A trailing comment hides the closing parenthesis, as in the reference.
        assert!(err("run.name == 'x' # why").pos().is_some());
        assert!(err("1e").http_message().starts_with("Invalid query syntax: "));
        let long = "x".repeat(70_000);
        assert!(matches!(err(&long), SyntaxError::TooLong { .. }));
    }

    #[test]
    fn wrapping_accepts_newlines_and_bare_tuples() {
        compiled("run.name == 'a'\n and run.active == True");
        compiled("a, b");
        compiled("run.name == 'x' # note\n and run.active == True");
        // The body is trimmed before wrapping, so a final comment still hides the parenthesis.
        assert!(compile("run.name == 'x' # note\n", &CompileOptions::default()).is_err());
    }

    #[test]
    fn chained_comparisons_are_split() {
        let e = split_chained(parse("0 < x <= 1 < y"));
        let ExprKind::BoolOp(BoolOp::And, parts) = &e.kind else { panic!("{e:?}") };
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1], parse("x <= 1").clone_at(4));
        // Nested chains inside calls are split too; single comparisons are untouched.
        assert!(
            matches!(split_chained(parse("f(0 < x < 1)")).kind, ExprKind::Call { ref args, .. } if matches!(args[0].kind, ExprKind::BoolOp(..)))
        );
        assert_eq!(split_chained(parse("a < b")), parse("a < b"));
    }

    trait CloneAt {
        fn clone_at(self, by: usize) -> Expr;
    }

    impl CloneAt for Expr {
        fn clone_at(mut self, by: usize) -> Expr {
            shift(&mut self, by);
            self
        }
    }

    #[test]
    fn datetimes_fold_to_utc_floats_with_the_reference_sign() {
        assert_eq!(utc_timestamp(&[1970, 1, 1]), Some(0.0));
        assert_eq!(utc_timestamp(&[2024, 1, 2, 3, 4, 5]), Some(1_704_164_645.0));
        assert_eq!(utc_timestamp(&[2000, 2, 29, 0, 0, 0, 500_000]), Some(951_782_400.5));
        assert_eq!(utc_timestamp(&[1969, 12, 31, 23, 59, 59]), Some(-1.0));
        assert_eq!(utc_timestamp(&[2023, 2, 29]), None);
        assert_eq!(utc_timestamp(&[2023, 13, 1]), None);
        assert_eq!(utc_timestamp(&[2023, 1]), None);
        assert_eq!(utc_timestamp(&[0, 1, 1]), None);
        assert_eq!(utc_timestamp(&[2023, 1, 1, 24]), None);
        let options = CompileOptions { tz_offset_minutes: -180, ..Default::default() };
        let q = compile("run.created_at > datetime(2024, 1, 2)", &options).unwrap();
        let ExprKind::BoolOp(_, parts) = &q.expr.kind else { panic!() };
        let ExprKind::Compare { ops, .. } = &parts[1].kind else { panic!() };
        // A UTC+3 browser sends -180 and gets the date read as UTC-3 (observed reference sign).
        assert_eq!(ops[0].1.as_const(), Some(&Constant::Float(1_704_153_600.0 + 10_800.0)));
        // Keywords, non-constant arguments and invalid dates stay calls.
        for q in [
            "datetime(2024, 1, 2, tzinfo=None)",
            "datetime(2024, 1, x)",
            "datetime(2023, 2, 30)",
            "datetime(2024.0, 1, 1)",
        ] {
            assert!(matches!(fold_datetimes(parse(q), 0).kind, ExprKind::Call { .. }), "{q}");
        }
        assert!(
            matches!(fold_datetimes(parse("[datetime(2024, 1, 1)]"), 0).kind, ExprKind::List(ref v) if v[0].as_const().is_some())
        );
    }
}
