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

pub use error::{EvalError, SyntaxError};
pub use eval::{Bindings, Scope, evaluate, matches};
pub use pipeline::{CompileOptions, Query, compile};
