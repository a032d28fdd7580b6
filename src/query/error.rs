//! The typed errors of MatyanQL: [`SyntaxError`] for queries rejected before any evaluation
//! (HTTP 400), and [`EvalError`] for runtime failures, which only make a candidate not match.

/// A query rejected at parse time. Positions are byte offsets into the raw query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// The query is longer than the configured limit.
    #[error("query of {len} bytes exceeds the limit of {limit} bytes")]
    TooLong {
        /// Length of the query in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The query nests deeper than the configured limit.
    #[error("query nests deeper than {limit} levels at offset {pos}")]
    TooDeep {
        /// The configured limit.
        limit: usize,
        /// Where the limit was crossed.
        pos: usize,
    },
    /// A character that starts no Python token.
    #[error("invalid character {ch:?} at offset {pos}")]
    UnexpectedChar {
        /// The character.
        ch: char,
        /// Its offset.
        pos: usize,
    },
    /// A string literal without its closing quote.
    #[error("unterminated string literal at offset {pos}")]
    UnterminatedString {
        /// Where the literal starts.
        pos: usize,
    },
    /// A malformed `\x`, `\u`, `\U` or octal escape.
    #[error("invalid escape sequence at offset {pos}")]
    InvalidEscape {
        /// Where the escape starts.
        pos: usize,
    },
    /// A malformed number literal.
    #[error("invalid number literal at offset {pos}")]
    InvalidNumber {
        /// Where the literal starts.
        pos: usize,
    },
    /// An integer literal beyond the 128-bit range this implementation holds.
    #[error("integer literal too large at offset {pos}")]
    IntTooLarge {
        /// Where the literal starts.
        pos: usize,
    },
    /// A token where the grammar expects something else.
    #[error("invalid syntax at offset {pos}: expected {expected}, found {}", clip(.found))]
    Unexpected {
        /// What the parser expected.
        expected: &'static str,
        /// The token found, as text.
        found: String,
        /// Its offset.
        pos: usize,
    },
    /// Valid Python outside the MatyanQL subset (lambda, comprehension, f-string, walrus...).
    #[error("unsupported syntax at offset {pos}: {what}")]
    Unsupported {
        /// The construct.
        what: &'static str,
        /// Its offset.
        pos: usize,
    },
    /// A name or attribute starting with `_`, which the restricted compiler refuses.
    #[error("\"{}\" is an invalid name because it starts with \"_\" (offset {pos})", clip(.name))]
    Underscore {
        /// The name.
        name: String,
        /// Its offset.
        pos: usize,
    },
}

/// Longest token text an error message quotes: the message names the failure, it does not echo
/// the query (which may be 64 KiB) back.
const MAX_ECHO_CHARS: usize = 80;

/// Returns `s` cut to [`MAX_ECHO_CHARS`] characters, with `…` when cut.
fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]).into(),
        None => s.into(),
    }
}

impl SyntaxError {
    /// Returns the byte offset the error points at, when it has one.
    pub fn pos(&self) -> Option<usize> {
        match self {
            SyntaxError::TooLong { .. } => None,
            SyntaxError::TooDeep { pos, .. }
            | SyntaxError::UnexpectedChar { pos, .. }
            | SyntaxError::UnterminatedString { pos }
            | SyntaxError::InvalidEscape { pos }
            | SyntaxError::InvalidNumber { pos }
            | SyntaxError::IntTooLarge { pos }
            | SyntaxError::Unexpected { pos, .. }
            | SyntaxError::Unsupported { pos, .. }
            | SyntaxError::Underscore { pos, .. } => Some(*pos),
        }
    }

    /// Returns the error with its position mapped through `f` (used to translate offsets in
    /// the wrapped text back to the raw query).
    pub(crate) fn map_pos(mut self, f: impl Fn(usize) -> usize) -> Self {
        match &mut self {
            SyntaxError::TooLong { .. } => {}
            SyntaxError::TooDeep { pos, .. }
            | SyntaxError::UnexpectedChar { pos, .. }
            | SyntaxError::UnterminatedString { pos }
            | SyntaxError::InvalidEscape { pos }
            | SyntaxError::InvalidNumber { pos }
            | SyntaxError::IntTooLarge { pos }
            | SyntaxError::Unexpected { pos, .. }
            | SyntaxError::Unsupported { pos, .. }
            | SyntaxError::Underscore { pos, .. } => *pos = f(*pos),
        }
        self
    }

    /// Returns the message of the reference's HTTP 400 answer (`Invalid query syntax: ...`).
    pub fn http_message(&self) -> String {
        format!("Invalid query syntax: {self}")
    }
}

/// A runtime failure while evaluating the query for one candidate. Per spec §5.1 step 8 it is
/// never an HTTP error: the candidate simply does not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// Python's TypeError: an operation on values of the wrong types (`None < 1`).
    #[error("type error: {0}")]
    Type(String),
    /// Python's NameError: a name neither in the scope nor a builtin.
    #[error("name {0:?} is not defined")]
    Name(String),
    /// Python's AttributeError.
    #[error("{type_name} object has no attribute {attr:?}")]
    Attribute {
        /// The type of the receiver.
        type_name: String,
        /// The attribute.
        attr: String,
    },
    /// Python's KeyError.
    #[error("key error: {0}")]
    Key(String),
    /// Python's IndexError.
    #[error("index out of range")]
    Index,
    /// Python's ZeroDivisionError.
    #[error("division by zero")]
    ZeroDivision,
    /// Python's ValueError (`int("x")`, an invalid date).
    #[error("value error: {0}")]
    Value(String),
    /// An integer result beyond 128 bits (Python would grow the integer).
    #[error("integer overflow")]
    Overflow,
    /// A result larger than the evaluator allows (`"a" * 10**9`, `range(10**9)` materialised).
    #[error("result too large: {0}")]
    TooLarge(&'static str),
    /// A construct the evaluator does not implement (`timedelta`, `.format`).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A budget of the whole request ran out (values too large, or its time is up): unlike the
    /// other errors, the request fails rather than the candidate (HTTP 400).
    #[error("{0}")]
    OverBudget(EvalBudget),
}

/// The request budget an evaluation ran out of, named by its `[query]` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EvalBudget {
    /// The values the query builds would exceed `query.max_value_bytes`.
    #[error("the query's values exceed the memory budget of {limit_bytes} bytes (query.max_value_bytes)")]
    Memory {
        /// The configured budget.
        limit_bytes: u64,
    },
    /// The request's wall time ran out while evaluating.
    #[error("time limit of {limit_ms} ms reached (query.max_request_time_ms)")]
    Time {
        /// The configured limit.
        limit_ms: u64,
    },
}
