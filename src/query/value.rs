//! Runtime values of the MatyanQL evaluator with Python's equality, ordering, truthiness,
//! membership and `str()`/`repr()` rules, and the [`HostObject`] trait through which the HTTP
//! layer exposes `run`, `metric`, `images`... without the evaluator knowing about storage.

use std::cell::Cell;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use super::error::{EvalBudget, EvalError};
use crate::storage::value::Value;

/// Largest number of elements an evaluation may materialise in one collection.
pub const MAX_ITEMS: usize = 100_000;
/// Largest string or bytes result an evaluation may build, in bytes.
pub const MAX_BYTES: usize = 1 << 20;
/// Largest set or dict an evaluation may build (their construction is quadratic here).
pub const MAX_HASHED: usize = 4_096;
/// Default work budget of one evaluation, in units of roughly one node or one element visited.
pub const DEFAULT_BUDGET: u64 = 10_000_000;
/// Default memory budget of one evaluation, in bytes (`query.max_value_bytes` in the defaults).
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 64 << 20;
/// Work units between two looks at the clock: reading it costs tens of nanoseconds, a unit a few.
const UNITS_PER_CLOCK_CHECK: u64 = 4_096;

/// What one evaluation may spend: work units, bytes of values built, and wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalLimits {
    /// Work units (about one node or element visited); past them the candidate does not match.
    pub work_units: u64,
    /// Bytes of values the evaluation may build, counted recursively (elements of nested
    /// containers, string bytes) before they are allocated and never given back, so the live
    /// values of an evaluation never exceed it. Past it the evaluation fails with
    /// [`EvalError::OverBudget`].
    pub max_value_bytes: u64,
    /// When the request's time is up; past it the evaluation fails with
    /// [`EvalError::OverBudget`].
    pub deadline: Option<Instant>,
    /// The request's time limit, for the error message.
    pub time_limit_ms: u64,
}

impl Default for EvalLimits {
    fn default() -> Self {
        Self { work_units: DEFAULT_BUDGET, max_value_bytes: DEFAULT_MAX_VALUE_BYTES, deadline: None, time_limit_ms: 0 }
    }
}

/// What the evaluation running on a thread has left.
#[derive(Debug, Clone, Copy)]
struct Meter {
    fuel: u64,
    bytes_left: u64,
    limits: EvalLimits,
    /// Units charged since the clock was last read.
    since_clock: u64,
    /// The request budget that ran out, kept so that an error swallowed on the way (inside `==`)
    /// still ends the evaluation with it.
    tripped: Option<EvalBudget>,
}

impl Meter {
    const fn new(limits: EvalLimits) -> Self {
        Self { fuel: limits.work_units, bytes_left: limits.max_value_bytes, limits, since_clock: 0, tripped: None }
    }
}

thread_local! {
    /// The budgets left to the evaluation running on this thread. Evaluation is synchronous and
    /// never nests, so a thread-local meter is exact and keeps the value helpers' signatures.
    static METER: Cell<Meter> = const {
        Cell::new(Meter::new(EvalLimits {
            work_units: DEFAULT_BUDGET,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            deadline: None,
            time_limit_ms: 0,
        }))
    };
}

/// Sets the budgets of the evaluation about to run on this thread.
pub(crate) fn start_evaluation(limits: EvalLimits) {
    METER.with(|m| m.set(Meter::new(limits)));
}

/// The request budget the evaluation on this thread ran out of, if any.
pub(crate) fn tripped() -> Option<EvalBudget> {
    METER.with(|m| m.get().tripped)
}

fn trip(m: &mut Meter, budget: EvalBudget) -> EvalError {
    m.tripped = Some(budget);
    m.fuel = 0;
    EvalError::OverBudget(budget)
}

/// Spends `units` of the work budget; once it is exhausted every later charge fails too, so work
/// done where an error cannot propagate (inside `==`) is stopped at the next node. Past the
/// request's deadline it fails with [`EvalError::OverBudget`].
pub(crate) fn charge(units: usize) -> Result<(), EvalError> {
    METER.with(|cell| {
        let mut m = cell.get();
        let result = charge_meter(&mut m, units as u64);
        cell.set(m);
        result
    })
}

fn charge_meter(m: &mut Meter, units: u64) -> Result<(), EvalError> {
    if let Some(budget) = m.tripped {
        return Err(EvalError::OverBudget(budget));
    }
    m.since_clock = m.since_clock.saturating_add(units);
    if m.since_clock >= UNITS_PER_CLOCK_CHECK {
        m.since_clock = 0;
        if m.limits.deadline.is_some_and(|d| Instant::now() >= d) {
            let limit_ms = m.limits.time_limit_ms;
            return Err(trip(m, EvalBudget::Time { limit_ms }));
        }
    }
    if m.fuel < units {
        m.fuel = 0;
        return Err(EvalError::TooLarge("work budget"));
    }
    m.fuel -= units;
    Ok(())
}

/// Reserves `bytes` of the memory budget for a value about to be built; fails (and keeps failing)
/// once the evaluation's values would exceed `max_value_bytes`.
pub(crate) fn alloc(bytes: u64) -> Result<(), EvalError> {
    METER.with(|cell| {
        let mut m = cell.get();
        let result = if let Some(budget) = m.tripped {
            Err(EvalError::OverBudget(budget))
        } else if bytes > m.bytes_left {
            let limit_bytes = m.limits.max_value_bytes;
            Err(trip(&mut m, EvalBudget::Memory { limit_bytes }))
        } else {
            m.bytes_left -= bytes;
            Ok(())
        };
        cell.set(m);
        result
    })
}

/// The bytes one value slot takes (an element of a list, a dict key...).
pub(crate) const SLOT: u64 = std::mem::size_of::<QValue>() as u64;

/// Returns the bytes `v` takes, counted recursively (a slot, plus its string bytes or its
/// elements), charging one work unit per container visited; an object of the embedding code is
/// shared, so it counts as a slot.
pub(crate) fn deep_size(v: &QValue) -> Result<u64, EvalError> {
    Ok(match v {
        QValue::Str(s) => SLOT + s.len() as u64,
        QValue::Bytes(b) => SLOT + b.len() as u64,
        QValue::List(items) | QValue::Tuple(items) | QValue::Set(items) => {
            charge(items.len())?;
            items_size(items)?.saturating_add(SLOT)
        }
        QValue::Dict(pairs) => {
            charge(pairs.len())?;
            let mut total = SLOT;
            for (k, v) in pairs {
                total = total.saturating_add(deep_size(k)?).saturating_add(deep_size(v)?);
            }
            total
        }
        _ => SLOT,
    })
}

/// Returns the bytes of `items` counted as [`deep_size`] does, without the container's slot.
pub(crate) fn items_size(items: &[QValue]) -> Result<u64, EvalError> {
    let mut total = 0u64;
    for item in items {
        total = total.saturating_add(deep_size(item)?);
    }
    Ok(total)
}

/// Reserves the memory of a copy of `v` (a deep clone) and returns the copy.
pub(crate) fn copy(v: &QValue) -> Result<QValue, EvalError> {
    alloc(deep_size(v)?)?;
    Ok(v.clone())
}

/// Returns an upper bound of the length of `py_repr(v)`, in bytes, charging like [`deep_size`].
pub(crate) fn repr_bound(v: &QValue) -> Result<u64, EvalError> {
    Ok(match v {
        // `\xNN` is the longest escape of a byte or character.
        QValue::Str(s) => 4 * s.len() as u64 + 2,
        QValue::Bytes(b) => 4 * b.len() as u64 + 3,
        QValue::List(items) | QValue::Tuple(items) | QValue::Set(items) => {
            charge(items.len())?;
            let mut total = 8u64;
            for item in items {
                total = total.saturating_add(repr_bound(item)?).saturating_add(2);
            }
            total
        }
        QValue::Dict(pairs) => {
            charge(pairs.len())?;
            let mut total = 2u64;
            for (k, v) in pairs {
                total = total.saturating_add(repr_bound(k)?).saturating_add(repr_bound(v)?).saturating_add(4);
            }
            total
        }
        QValue::Range(..) => 128,
        QValue::Object(o) => match o.as_plain() {
            Some(p) => repr_bound(&p)?,
            None => 64,
        },
        // Ints, floats, datetimes and builtins print in a few dozen characters.
        _ => 64,
    })
}

/// An object the embedding code provides (a run, a sequence, a metrics accessor).
///
/// Only [`HostObject::get_attr`] is required; the other operations default to Python's errors
/// for an object that does not support them.
pub trait HostObject: fmt::Debug + Send + Sync {
    /// Returns the Python type name, for error messages.
    fn type_name(&self) -> &'static str;

    /// Resolves `obj.name`.
    fn get_attr(&self, name: &str) -> Result<QValue, EvalError>;

    /// Resolves `obj[key]`.
    fn get_item(&self, key: &QValue) -> Result<QValue, EvalError> {
        let _ = key;
        Err(EvalError::Type(format!("'{}' object is not subscriptable", self.type_name())))
    }

    /// Calls the method `obj.name(*args)`.
    fn call_method(&self, name: &str, args: &[QValue]) -> Result<QValue, EvalError> {
        let _ = args;
        Err(EvalError::Attribute { type_name: self.type_name().to_string(), attr: name.to_string() })
    }

    /// Returns a plain value standing for the object in `==`, ordering, `len`, `in` and
    /// iteration (an attribute-tree proxy returns its dict), or `None` when it has none.
    fn as_plain(&self) -> Option<QValue> {
        None
    }

    /// Returns the object's truth value; by default its plain value's, or true.
    fn truthy(&self) -> bool {
        self.as_plain().is_none_or(|v| v.truthy())
    }
}

/// The builtins the evaluator implements; the type-like ones double as `isinstance` targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `len`.
    Len,
    /// `str`.
    Str,
    /// `int`.
    Int,
    /// `float`.
    Float,
    /// `bool`.
    Bool,
    /// `abs`.
    Abs,
    /// `round`.
    Round,
    /// `min`.
    Min,
    /// `max`.
    Max,
    /// `sum`.
    Sum,
    /// `any`.
    Any,
    /// `all`.
    All,
    /// `sorted`.
    Sorted,
    /// `list`.
    List,
    /// `tuple`.
    Tuple,
    /// `set`.
    Set,
    /// `dict`.
    Dict,
    /// `range`.
    Range,
    /// `isinstance`.
    IsInstance,
    /// `datetime` (the call is usually folded into a float before evaluation).
    DateTime,
    /// `timedelta` (not implemented: calling it fails, so the candidate does not match).
    TimeDelta,
    /// `zip`.
    Zip,
    /// `enumerate`.
    Enumerate,
    /// `reversed`.
    Reversed,
    /// `repr`.
    Repr,
}

impl Builtin {
    /// Looks a builtin up by its Python name.
    pub fn from_name(name: &str) -> Option<Builtin> {
        Some(match name {
            "len" => Builtin::Len,
            "str" => Builtin::Str,
            "int" => Builtin::Int,
            "float" => Builtin::Float,
            "bool" => Builtin::Bool,
            "abs" => Builtin::Abs,
            "round" => Builtin::Round,
            "min" => Builtin::Min,
            "max" => Builtin::Max,
            "sum" => Builtin::Sum,
            "any" => Builtin::Any,
            "all" => Builtin::All,
            "sorted" => Builtin::Sorted,
            "list" => Builtin::List,
            "tuple" => Builtin::Tuple,
            "set" => Builtin::Set,
            "dict" => Builtin::Dict,
            "range" => Builtin::Range,
            "isinstance" => Builtin::IsInstance,
            "datetime" => Builtin::DateTime,
            "timedelta" => Builtin::TimeDelta,
            "zip" => Builtin::Zip,
            "enumerate" => Builtin::Enumerate,
            "reversed" => Builtin::Reversed,
            "repr" => Builtin::Repr,
            _ => return None,
        })
    }

    /// Returns the Python name.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Len => "len",
            Builtin::Str => "str",
            Builtin::Int => "int",
            Builtin::Float => "float",
            Builtin::Bool => "bool",
            Builtin::Abs => "abs",
            Builtin::Round => "round",
            Builtin::Min => "min",
            Builtin::Max => "max",
            Builtin::Sum => "sum",
            Builtin::Any => "any",
            Builtin::All => "all",
            Builtin::Sorted => "sorted",
            Builtin::List => "list",
            Builtin::Tuple => "tuple",
            Builtin::Set => "set",
            Builtin::Dict => "dict",
            Builtin::Range => "range",
            Builtin::IsInstance => "isinstance",
            Builtin::DateTime => "datetime",
            Builtin::TimeDelta => "timedelta",
            Builtin::Zip => "zip",
            Builtin::Enumerate => "enumerate",
            Builtin::Reversed => "reversed",
            Builtin::Repr => "repr",
        }
    }
}

/// A runtime value.
#[derive(Debug, Clone)]
pub enum QValue {
    /// `None`.
    None,
    /// `True` / `False` (an int in arithmetic and comparisons, as in Python).
    Bool(bool),
    /// An int (128-bit; Python's are unbounded, overflow is an error here).
    Int(i128),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// A bytes value.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<QValue>),
    /// A tuple.
    Tuple(Vec<QValue>),
    /// A set (elements distinct under Python equality, insertion order kept).
    Set(Vec<QValue>),
    /// A dict in insertion order. Dicts from run attributes also answer attribute access
    /// (`run.hparams.lr`), as the reference's proxies do.
    Dict(Vec<(QValue, QValue)>),
    /// A datetime, as POSIX seconds.
    DateTime(f64),
    /// `range(start, stop, step)`, kept lazy.
    Range(i128, i128, i128),
    /// A builtin function or type.
    Builtin(Builtin),
    /// An object of the embedding code.
    Object(Arc<dyn HostObject>),
}

impl From<&Value> for QValue {
    fn from(value: &Value) -> Self {
        match value {
            Value::Nil => QValue::None,
            Value::Bool(b) => QValue::Bool(*b),
            Value::Int(i) => QValue::Int(*i),
            Value::Float(f) => QValue::Float(*f),
            Value::Str(s) => QValue::Str(s.clone()),
            Value::Bin(b) => QValue::Bytes(b.clone()),
            Value::Array(items) => QValue::List(items.iter().map(QValue::from).collect()),
            Value::Map(pairs) => QValue::Dict(pairs.iter().map(|(k, v)| (QValue::from(k), QValue::from(v))).collect()),
            Value::DateTime(t) => QValue::DateTime(*t),
            // msgpack-python yields an opaque ExtType, equal only to itself.
            Value::Ext(code, data) => QValue::Tuple(vec![QValue::Int(i128::from(*code)), QValue::Bytes(data.clone())]),
        }
    }
}

impl From<&str> for QValue {
    fn from(s: &str) -> Self {
        QValue::Str(s.to_string())
    }
}

/// A numeric view of bool, int and float for mixed arithmetic and comparisons.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Num {
    Int(i128),
    Float(f64),
}

impl QValue {
    /// Returns the Python type name.
    pub fn type_name(&self) -> &str {
        match self {
            QValue::None => "NoneType",
            QValue::Bool(_) => "bool",
            QValue::Int(_) => "int",
            QValue::Float(_) => "float",
            QValue::Str(_) => "str",
            QValue::Bytes(_) => "bytes",
            QValue::List(_) => "list",
            QValue::Tuple(_) => "tuple",
            QValue::Set(_) => "set",
            QValue::Dict(_) => "dict",
            QValue::DateTime(_) => "datetime",
            QValue::Range(..) => "range",
            QValue::Builtin(_) => "builtin_function_or_method",
            QValue::Object(o) => o.type_name(),
        }
    }

    pub(crate) fn num(&self) -> Option<Num> {
        match self {
            QValue::Bool(b) => Some(Num::Int(i128::from(*b))),
            QValue::Int(i) => Some(Num::Int(*i)),
            QValue::Float(f) => Some(Num::Float(*f)),
            _ => None,
        }
    }

    /// Returns the plain value of an object (itself otherwise).
    pub fn plain(&self) -> std::borrow::Cow<'_, QValue> {
        match self {
            QValue::Object(o) => o.as_plain().map_or(std::borrow::Cow::Borrowed(self), std::borrow::Cow::Owned),
            _ => std::borrow::Cow::Borrowed(self),
        }
    }

    /// Returns Python's truth value.
    pub fn truthy(&self) -> bool {
        match self {
            QValue::None => false,
            QValue::Bool(b) => *b,
            QValue::Int(i) => *i != 0,
            QValue::Float(f) => *f != 0.0,
            QValue::Str(s) => !s.is_empty(),
            QValue::Bytes(b) => !b.is_empty(),
            QValue::List(v) | QValue::Tuple(v) | QValue::Set(v) => !v.is_empty(),
            QValue::Dict(p) => !p.is_empty(),
            QValue::Range(..) => range_len(self).is_some_and(|n| n > 0),
            QValue::DateTime(_) | QValue::Builtin(_) => true,
            QValue::Object(o) => o.truthy(),
        }
    }

    /// Tells whether Python could hash the value (a dict key or set element).
    pub fn hashable(&self) -> bool {
        match self {
            QValue::List(_) | QValue::Set(_) | QValue::Dict(_) => false,
            QValue::Tuple(items) => items.iter().all(QValue::hashable),
            QValue::Object(o) => o.as_plain().is_none_or(|p| p.hashable()),
            _ => true,
        }
    }
}

/// Returns the length of a `range` value (`None` for other values).
pub(crate) fn range_len(v: &QValue) -> Option<i128> {
    let QValue::Range(start, stop, step) = *v else { return None };
    // Saturating: a range spanning most of i128 only needs a length that is "too large".
    let len = if step > 0 && start < stop {
        stop.saturating_sub(start).saturating_sub(1) / step + 1
    } else if step < 0 && start > stop {
        start.saturating_sub(stop).saturating_sub(1) / step.saturating_neg() + 1
    } else {
        0
    };
    Some(len)
}

/// Compares an int with a float exactly, as CPython does (no rounding of the int).
fn cmp_int_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    if f >= 1.7e38 {
        return Some(Ordering::Less);
    }
    if f <= -1.7e38 {
        return Some(Ordering::Greater);
    }
    let whole = f.trunc();
    let ord = i.cmp(&(whole as i128));
    if ord != Ordering::Equal {
        return Some(ord);
    }
    let frac = f - whole;
    Some(if frac > 0.0 {
        Ordering::Less
    } else if frac < 0.0 {
        Ordering::Greater
    } else {
        Ordering::Equal
    })
}

pub(crate) fn cmp_num(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).map(Ordering::reverse),
    }
}

/// Python's `a == b` for the supported types (never raises).
pub fn py_eq(a: &QValue, b: &QValue) -> bool {
    if let (QValue::Object(x), QValue::Object(y)) = (a, b)
        && Arc::ptr_eq(x, y)
    {
        return true;
    }
    let (a, b) = (a.plain(), b.plain());
    if let (Some(x), Some(y)) = (a.num(), b.num()) {
        return cmp_num(x, y) == Some(Ordering::Equal);
    }
    let cost = match (a.as_ref(), b.as_ref()) {
        (QValue::List(x), _) | (QValue::Tuple(x), _) => x.len(),
        (QValue::Set(x), QValue::Set(y)) => x.len().saturating_mul(y.len()),
        (QValue::Dict(x), QValue::Dict(y)) => x.len().saturating_mul(y.len()),
        _ => 0,
    };
    // An exhausted budget makes the next node fail; equality itself cannot raise.
    if charge(cost).is_err() {
        return false;
    }
    match (a.as_ref(), b.as_ref()) {
        (QValue::None, QValue::None) => true,
        (QValue::Str(x), QValue::Str(y)) => x == y,
        (QValue::Bytes(x), QValue::Bytes(y)) => x == y,
        (QValue::List(x), QValue::List(y)) | (QValue::Tuple(x), QValue::Tuple(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (QValue::Set(x), QValue::Set(y)) => x.len() == y.len() && x.iter().all(|p| y.iter().any(|q| py_eq(p, q))),
        (QValue::Dict(x), QValue::Dict(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.iter().any(|(k2, v2)| py_eq(k, k2) && py_eq(v, v2)))
        }
        (QValue::DateTime(x), QValue::DateTime(y)) => x == y,
        (r1 @ QValue::Range(..), r2 @ QValue::Range(..)) => {
            let (QValue::Range(s1, _, st1), QValue::Range(s2, _, st2)) = (r1, r2) else { return false };
            let (n1, n2) = (range_len(r1), range_len(r2));
            n1 == n2 && (n1 == Some(0) || (s1 == s2 && (n1 == Some(1) || st1 == st2)))
        }
        (QValue::Builtin(x), QValue::Builtin(y)) => x == y,
        _ => false,
    }
}

fn unorderable(op: &str, a: &QValue, b: &QValue) -> EvalError {
    EvalError::Type(format!("'{op}' not supported between instances of '{}' and '{}'", a.type_name(), b.type_name()))
}

/// Python's ordering for `<`, `<=`, `>`, `>=`: `Ok(None)` when the values are unordered (NaN),
/// a TypeError for types Python does not order (`None < 1`, `"a" < 1`).
pub fn py_cmp(a: &QValue, b: &QValue, op: &str) -> Result<Option<Ordering>, EvalError> {
    let (a, b) = (a.plain(), b.plain());
    if let (Some(x), Some(y)) = (a.num(), b.num()) {
        return Ok(cmp_num(x, y));
    }
    match (a.as_ref(), b.as_ref()) {
        (QValue::Str(x), QValue::Str(y)) => Ok(Some(x.cmp(y))),
        (QValue::Bytes(x), QValue::Bytes(y)) => Ok(Some(x.cmp(y))),
        (QValue::DateTime(x), QValue::DateTime(y)) => Ok(x.partial_cmp(y)),
        (QValue::List(x), QValue::List(y)) | (QValue::Tuple(x), QValue::Tuple(y)) => {
            // Python finds the first pair that differs under `==` and orders by it.
            match x.iter().zip(y.iter()).find(|(p, q)| !py_eq(p, q)) {
                Some((p, q)) => py_cmp(p, q, op),
                None => Ok(Some(x.len().cmp(&y.len()))),
            }
        }
        (x, y) => Err(unorderable(op, x, y)),
    }
}

/// Python's `item in container`.
pub fn py_contains(container: &QValue, item: &QValue) -> Result<bool, EvalError> {
    let container = container.plain();
    if let QValue::List(v) | QValue::Tuple(v) | QValue::Set(v) = container.as_ref() {
        charge(v.len())?;
    }
    match container.as_ref() {
        QValue::Str(s) => match item.plain().as_ref() {
            QValue::Str(needle) => Ok(s.contains(needle.as_str())),
            other => Err(EvalError::Type(format!(
                "'in <string>' requires string as left operand, not {}",
                other.type_name()
            ))),
        },
        QValue::Bytes(s) => match item.plain().as_ref() {
            QValue::Bytes(needle) => Ok(needle.is_empty() || s.windows(needle.len()).any(|w| w == needle.as_slice())),
            QValue::Int(b) => Ok(u8::try_from(*b).is_ok_and(|b| s.contains(&b))),
            other => Err(EvalError::Type(format!("a bytes-like object is required, not '{}'", other.type_name()))),
        },
        QValue::List(v) | QValue::Tuple(v) => Ok(v.iter().any(|x| py_eq(x, item))),
        QValue::Set(v) => {
            if !item.hashable() {
                return Err(EvalError::Type(format!("unhashable type: '{}'", item.type_name())));
            }
            Ok(v.iter().any(|x| py_eq(x, item)))
        }
        QValue::Dict(p) => {
            if !item.hashable() {
                return Err(EvalError::Type(format!("unhashable type: '{}'", item.type_name())));
            }
            Ok(p.iter().any(|(k, _)| py_eq(k, item)))
        }
        r @ QValue::Range(start, _, step) => {
            let Some(Num::Int(i)) = item.num() else {
                // A float equal to an element also counts, as Python falls back to iteration.
                return match item.num() {
                    Some(Num::Float(f)) if f.fract() == 0.0 && f.abs() < 1.7e38 => {
                        py_contains(r, &QValue::Int(f as i128))
                    }
                    _ => Ok(false),
                };
            };
            let n = range_len(r).unwrap_or(0);
            if n == 0 {
                return Ok(false);
            }
            let last = start.saturating_add((n - 1).saturating_mul(*step));
            let in_bounds = if *step > 0 { i >= *start && i <= last } else { i <= *start && i >= last };
            Ok(in_bounds && i.checked_sub(*start).is_some_and(|offset| offset % step == 0))
        }
        other => Err(EvalError::Type(format!("argument of type '{}' is not iterable", other.type_name()))),
    }
}

/// Python's `a is b`, approximated for values: `None`, `True`, `False` and builtins are
/// singletons; objects compare by identity; equal ints and strs count as identical (CPython
/// interns the small and literal ones); containers are never identical to one another.
pub fn py_is(a: &QValue, b: &QValue) -> bool {
    match (a, b) {
        (QValue::None, QValue::None) => true,
        (QValue::Bool(x), QValue::Bool(y)) => x == y,
        (QValue::Int(x), QValue::Int(y)) => x == y,
        (QValue::Str(x), QValue::Str(y)) => x == y,
        (QValue::Builtin(x), QValue::Builtin(y)) => x == y,
        (QValue::Object(x), QValue::Object(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

/// Returns the elements of an iterable (str characters, list items, dict keys, range members).
pub fn py_iter(v: &QValue) -> Result<Vec<QValue>, EvalError> {
    let v = v.plain();
    alloc(iter_size(v.as_ref())?)?;
    let items = py_iter_plain(v.as_ref())?;
    charge(items.len())?;
    Ok(items)
}

/// The bytes [`py_iter_plain`] allocates for `v`'s elements (0 when it refuses `v`).
fn iter_size(v: &QValue) -> Result<u64, EvalError> {
    // A one-character string still takes a small heap block.
    const CHAR: u64 = SLOT + 8;
    Ok(match v {
        QValue::Str(s) => (s.len() as u64).saturating_mul(CHAR),
        QValue::Bytes(b) => (b.len() as u64).saturating_mul(SLOT),
        QValue::List(items) | QValue::Tuple(items) | QValue::Set(items) => items_size(items)?,
        QValue::Dict(pairs) => {
            let mut total = 0u64;
            for (k, _) in pairs {
                total = total.saturating_add(deep_size(k)?);
            }
            total
        }
        r @ QValue::Range(..) => match range_len(r) {
            Some(n) if n <= MAX_ITEMS as i128 => (n as u64).saturating_mul(SLOT),
            _ => 0,
        },
        _ => 0,
    })
}

fn py_iter_plain(v: &QValue) -> Result<Vec<QValue>, EvalError> {
    Ok(match v {
        QValue::Str(s) => s.chars().map(|c| QValue::Str(c.to_string())).collect(),
        QValue::Bytes(b) => b.iter().map(|x| QValue::Int(i128::from(*x))).collect(),
        QValue::List(items) | QValue::Tuple(items) | QValue::Set(items) => items.clone(),
        QValue::Dict(pairs) => pairs.iter().map(|(k, _)| k.clone()).collect(),
        r @ QValue::Range(start, _, step) => {
            let n = range_len(r).unwrap_or(0);
            if n > MAX_ITEMS as i128 {
                return Err(EvalError::TooLarge("range"));
            }
            (0..n).map(|k| QValue::Int(start + k * step)).collect()
        }
        other => return Err(EvalError::Type(format!("'{}' object is not iterable", other.type_name()))),
    })
}

/// Returns `len(v)`.
pub fn py_len(v: &QValue) -> Result<i128, EvalError> {
    let v = v.plain();
    let n = match v.as_ref() {
        QValue::Str(s) => s.chars().count(),
        QValue::Bytes(b) => b.len(),
        QValue::List(items) | QValue::Tuple(items) | QValue::Set(items) => items.len(),
        QValue::Dict(pairs) => pairs.len(),
        r @ QValue::Range(..) => return Ok(range_len(r).unwrap_or(0)),
        other => return Err(EvalError::Type(format!("object of type '{}' has no len()", other.type_name()))),
    };
    Ok(n as i128)
}

/// Formats a float as Python's `repr` does: shortest round-trip digits, positional between
/// 1e-4 and 1e16, otherwise scientific with a signed two-digit exponent; `inf`, `nan`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // `{:e}` gives the shortest round-trip digits as `d.ddddde<exp>`.
    let sci = format!("{:e}", f);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int_part, frac) = digits.split_at((exp + 1) as usize);
            format!("{int_part}.{frac}")
        };
        return format!("{sign}{body}");
    }
    let (first, rest) = digits.split_at(1);
    let mant = if rest.is_empty() { first.to_string() } else { format!("{first}.{rest}") };
    let esign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{mant}e{esign}{:02}", exp.abs())
}

fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Returns Python's `repr(v)`.
pub fn py_repr(v: &QValue) -> String {
    let join = |items: &[QValue]| items.iter().map(py_repr).collect::<Vec<_>>().join(", ");
    match v {
        QValue::None => "None".into(),
        QValue::Bool(true) => "True".into(),
        QValue::Bool(false) => "False".into(),
        QValue::Int(i) => i.to_string(),
        QValue::Float(f) => float_repr(*f),
        QValue::Str(s) => str_repr(s),
        QValue::Bytes(b) => {
            let mut out = String::from("b'");
            for &x in b {
                match x {
                    b'\\' => out.push_str("\\\\"),
                    b'\'' => out.push_str("\\'"),
                    b'\n' => out.push_str("\\n"),
                    b'\r' => out.push_str("\\r"),
                    b'\t' => out.push_str("\\t"),
                    0x20..=0x7e => out.push(char::from(x)),
                    _ => out.push_str(&format!("\\x{x:02x}")),
                }
            }
            out.push('\'');
            out
        }
        QValue::List(items) => format!("[{}]", join(items)),
        QValue::Tuple(items) if items.len() == 1 => format!("({},)", py_repr(&items[0])),
        QValue::Tuple(items) => format!("({})", join(items)),
        QValue::Set(items) if items.is_empty() => "set()".into(),
        QValue::Set(items) => format!("{{{}}}", join(items)),
        QValue::Dict(pairs) => {
            let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{}: {}", py_repr(k), py_repr(v))).collect();
            format!("{{{}}}", body.join(", "))
        }
        QValue::DateTime(t) => format!("datetime.fromtimestamp({})", float_repr(*t)),
        QValue::Range(a, b, 1) => format!("range({a}, {b})"),
        QValue::Range(a, b, c) => format!("range({a}, {b}, {c})"),
        QValue::Builtin(b) => format!("<built-in function {}>", b.name()),
        QValue::Object(o) => match o.as_plain() {
            Some(p) => py_repr(&p),
            None => format!("<{} object>", o.type_name()),
        },
    }
}

/// Returns Python's `str(v)`.
pub fn py_str(v: &QValue) -> String {
    match v {
        QValue::Str(s) => s.clone(),
        other => py_repr(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_equality_mixes_bool_int_float() {
        assert!(py_eq(&QValue::Int(1), &QValue::Float(1.0)));
        assert!(py_eq(&QValue::Bool(true), &QValue::Int(1)));
        assert!(py_eq(&QValue::Bool(false), &QValue::Float(0.0)));
        assert!(!py_eq(&QValue::Int(1), &QValue::Float(1.5)));
        assert!(!py_eq(&QValue::Float(f64::NAN), &QValue::Float(f64::NAN)));
        // Exact int/float comparison: 2^53 + 1 is not equal to the float 2^53.
        assert!(!py_eq(&QValue::Int((1 << 53) + 1), &QValue::Float(9007199254740992.0)));
        assert_eq!(cmp_int_float((1 << 53) + 1, 9007199254740992.0), Some(Ordering::Greater));
        assert_eq!(cmp_int_float(-1, -0.5), Some(Ordering::Less));
        assert_eq!(cmp_int_float(0, -0.5), Some(Ordering::Greater));
        assert_eq!(cmp_int_float(i128::MAX, f64::INFINITY), Some(Ordering::Less));
    }

    #[test]
    fn equality_across_types_is_false_not_an_error() {
        assert!(!py_eq(&QValue::None, &QValue::Int(0)));
        assert!(py_eq(&QValue::None, &QValue::None));
        assert!(!py_eq(&"1".into(), &QValue::Int(1)));
        assert!(!py_eq(&QValue::List(vec![]), &QValue::Tuple(vec![])));
        assert!(py_eq(&QValue::List(vec![QValue::Int(1)]), &QValue::List(vec![QValue::Float(1.0)])));
        let d1 = QValue::Dict(vec![("a".into(), QValue::Int(1)), ("b".into(), QValue::Int(2))]);
        let d2 = QValue::Dict(vec![("b".into(), QValue::Int(2)), ("a".into(), QValue::Float(1.0))]);
        assert!(py_eq(&d1, &d2));
        assert!(!py_eq(&QValue::Range(0, 3, 1), &QValue::Range(0, 4, 3)));
        assert!(py_eq(&QValue::Range(0, 0, 1), &QValue::Range(5, 1, 2)));
    }

    #[test]
    fn ordering_follows_python() {
        assert_eq!(py_cmp(&"a".into(), &"b".into(), "<"), Ok(Some(Ordering::Less)));
        assert_eq!(py_cmp(&"B".into(), &"a".into(), "<"), Ok(Some(Ordering::Less)));
        assert!(py_cmp(&QValue::None, &QValue::Int(1), "<").is_err());
        assert!(py_cmp(&"a".into(), &QValue::Int(1), "<").is_err());
        assert_eq!(py_cmp(&QValue::Float(f64::NAN), &QValue::Int(1), "<"), Ok(None));
        let l = |v: Vec<i128>| QValue::List(v.into_iter().map(QValue::Int).collect());
        assert_eq!(py_cmp(&l(vec![1, 2]), &l(vec![1, 3]), "<"), Ok(Some(Ordering::Less)));
        assert_eq!(py_cmp(&l(vec![1, 2]), &l(vec![1]), "<"), Ok(Some(Ordering::Greater)));
        assert!(py_cmp(&l(vec![1]), &QValue::Tuple(vec![QValue::Int(1)]), "<").is_err());
        assert!(py_cmp(&QValue::List(vec![QValue::None]), &l(vec![1]), "<").is_err());
    }

    #[test]
    fn membership() {
        assert_eq!(py_contains(&"hello".into(), &"ell".into()), Ok(true));
        assert!(py_contains(&"hello".into(), &QValue::Int(1)).is_err());
        assert_eq!(py_contains(&QValue::List(vec![QValue::Int(1)]), &QValue::Bool(true)), Ok(true));
        let d = QValue::Dict(vec![("a".into(), QValue::Int(1))]);
        assert_eq!(py_contains(&d, &"a".into()), Ok(true));
        assert_eq!(py_contains(&d, &QValue::Int(1)), Ok(false));
        assert!(py_contains(&d, &QValue::List(vec![])).is_err());
        assert!(py_contains(&QValue::None, &QValue::Int(1)).is_err());
        assert_eq!(py_contains(&QValue::Range(0, 10, 3), &QValue::Int(9)), Ok(true));
        assert_eq!(py_contains(&QValue::Range(0, 10, 3), &QValue::Int(8)), Ok(false));
        assert_eq!(py_contains(&QValue::Range(10, 0, -2), &QValue::Int(2)), Ok(true));
        assert_eq!(py_contains(&QValue::Range(10, 0, -2), &QValue::Int(0)), Ok(false));
        assert_eq!(py_contains(&QValue::Range(0, 10, 1), &QValue::Float(3.0)), Ok(true));
    }

    #[test]
    fn repr_matches_python() {
        assert_eq!(float_repr(1.0), "1.0");
        assert_eq!(float_repr(0.1), "0.1");
        assert_eq!(float_repr(-2.5), "-2.5");
        assert_eq!(float_repr(1e16), "1e+16");
        assert_eq!(float_repr(1.5e16), "1.5e+16");
        assert_eq!(float_repr(1e15), "1000000000000000.0");
        assert_eq!(float_repr(0.0001), "0.0001");
        assert_eq!(float_repr(0.00001), "1e-05");
        assert_eq!(float_repr(123.456), "123.456");
        assert_eq!(float_repr(f64::INFINITY), "inf");
        assert_eq!(py_repr(&QValue::Str("it's".into())), "\"it's\"");
        assert_eq!(py_repr(&QValue::Str("a\n".into())), "'a\\n'");
        assert_eq!(py_repr(&QValue::Tuple(vec![QValue::Int(1)])), "(1,)");
        assert_eq!(py_repr(&QValue::Dict(vec![("a".into(), QValue::None)])), "{'a': None}");
        assert_eq!(py_str(&QValue::Bool(true)), "True");
        assert_eq!(py_repr(&QValue::Bytes(b"a\x00".to_vec())), "b'a\\x00'");
    }

    #[test]
    fn conversion_from_stored_values() {
        let v = Value::Map(vec![
            (Value::Str("lr".into()), Value::Float(0.1)),
            (Value::Str("n".into()), Value::Array(vec![Value::Nil])),
        ]);
        let q = QValue::from(&v);
        assert!(py_eq(
            &q,
            &QValue::Dict(vec![("lr".into(), QValue::Float(0.1)), ("n".into(), QValue::List(vec![QValue::None]))])
        ));
        assert!(!QValue::from(&Value::Map(vec![])).truthy());
        assert!(matches!(QValue::from(&Value::DateTime(5.0)), QValue::DateTime(t) if t == 5.0));
    }
}
