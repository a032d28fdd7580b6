//! The syntax tree of MatyanQL, the Python expression subset the UI and the SDK send (spec §5).
//!
//! Every node carries the byte offset, in the raw query as the client sent it, of the token that
//! starts it, so that errors found after parsing can still point at the source.

/// A parsed expression node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What the node is.
    pub kind: ExprKind,
    /// Byte offset of the node's first token in the raw query.
    pub pos: usize,
}

/// A constant literal, as Python's `ast.Constant` holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Constant {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An integer literal (Python's are unbounded; ours stop at `i128`).
    Int(i128),
    /// A float literal, or the float a `datetime(...)` call was folded into.
    Float(f64),
    /// A string literal, escapes resolved and adjacent literals concatenated.
    Str(String),
    /// A bytes literal (`b"..."`).
    Bytes(Vec<u8>),
}

/// The kinds of expression nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A literal.
    Const(Constant),
    /// A bare name (`run`, `metric`, `len`).
    Name(String),
    /// Attribute access `value.attr`.
    Attr(Box<Expr>, String),
    /// Subscript `value[index]`; a slice index is an [`ExprKind::Slice`].
    Subscript(Box<Expr>, Box<Expr>),
    /// A slice `lower:upper:step`, only valid as a subscript index.
    Slice(Option<Box<Expr>>, Option<Box<Expr>>, Option<Box<Expr>>),
    /// A call with positional and keyword arguments.
    Call {
        /// The callee.
        func: Box<Expr>,
        /// Positional arguments.
        args: Vec<Expr>,
        /// Keyword arguments in source order.
        kwargs: Vec<(String, Expr)>,
    },
    /// A unary operation.
    Unary(UnaryOp, Box<Expr>),
    /// A binary arithmetic or bitwise operation.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `and` / `or` over two or more operands (Python's `BoolOp`, flattened per operator run).
    BoolOp(BoolOp, Vec<Expr>),
    /// A comparison, possibly chained: `left op0 c0 op1 c1 ...`.
    Compare {
        /// The leftmost operand.
        left: Box<Expr>,
        /// Each operator with its right operand, in order.
        ops: Vec<(CmpOp, Expr)>,
    },
    /// `body if test else orelse`.
    IfExp {
        /// The condition.
        test: Box<Expr>,
        /// The value when the condition is true.
        body: Box<Expr>,
        /// The value otherwise.
        orelse: Box<Expr>,
    },
    /// A list display `[a, b]`.
    List(Vec<Expr>),
    /// A tuple `(a, b)` or `a, b` inside brackets.
    Tuple(Vec<Expr>),
    /// A set display `{a, b}`.
    Set(Vec<Expr>),
    /// A dict display `{k: v}`.
    Dict(Vec<(Expr, Expr)>),
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// `not x`.
    Not,
    /// `-x`.
    Neg,
    /// `+x`.
    Pos,
    /// `~x`.
    Invert,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`.
    Add,
    /// `-`.
    Sub,
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `//`.
    FloorDiv,
    /// `%`.
    Mod,
    /// `**`.
    Pow,
    /// `|`.
    BitOr,
    /// `^`.
    BitXor,
    /// `&`.
    BitAnd,
    /// `<<`.
    LShift,
    /// `>>`.
    RShift,
}

/// Boolean operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolOp {
    /// `and`.
    And,
    /// `or`.
    Or,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`.
    Eq,
    /// `!=`.
    NotEq,
    /// `<`.
    Lt,
    /// `<=`.
    LtE,
    /// `>`.
    Gt,
    /// `>=`.
    GtE,
    /// `in`.
    In,
    /// `not in`.
    NotIn,
    /// `is`.
    Is,
    /// `is not`.
    IsNot,
}

impl CmpOp {
    /// Returns the operator as Python spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::NotEq => "!=",
            CmpOp::Lt => "<",
            CmpOp::LtE => "<=",
            CmpOp::Gt => ">",
            CmpOp::GtE => ">=",
            CmpOp::In => "in",
            CmpOp::NotIn => "not in",
            CmpOp::Is => "is",
            CmpOp::IsNot => "is not",
        }
    }
}

impl Expr {
    /// Builds a node at a position.
    pub fn new(kind: ExprKind, pos: usize) -> Self {
        Expr { kind, pos }
    }

    /// Returns the constant when the node is a literal.
    pub fn as_const(&self) -> Option<&Constant> {
        match &self.kind {
            ExprKind::Const(c) => Some(c),
            _ => None,
        }
    }

    /// Returns the dotted path of a `name.attr.attr` chain (`["run", "hparams", "lr"]`), if the
    /// node is one.
    pub fn attr_path(&self) -> Option<Vec<&str>> {
        match &self.kind {
            ExprKind::Name(n) => Some(vec![n.as_str()]),
            ExprKind::Attr(base, attr) => {
                let mut path = base.attr_path()?;
                path.push(attr.as_str());
                Some(path)
            }
            _ => None,
        }
    }

    /// Tells whether the node is `<namespace>.<attr>` exactly (e.g. `run.archived`).
    pub fn is_attr_of(&self, namespace: &str, attr: &str) -> bool {
        matches!(&self.kind, ExprKind::Attr(base, a) if a == attr
            && matches!(&base.kind, ExprKind::Name(n) if n == namespace))
    }

    /// Calls `f` on this node and every node below it, parents first.
    pub fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a Expr)) {
        f(self);
        match &self.kind {
            ExprKind::Const(_) | ExprKind::Name(_) => {}
            ExprKind::Attr(base, _) => base.walk(f),
            ExprKind::Subscript(base, index) => {
                base.walk(f);
                index.walk(f);
            }
            ExprKind::Slice(a, b, c) => {
                for part in [a, b, c].into_iter().flatten() {
                    part.walk(f);
                }
            }
            ExprKind::Call { func, args, kwargs } => {
                func.walk(f);
                args.iter().for_each(|a| a.walk(f));
                kwargs.iter().for_each(|(_, a)| a.walk(f));
            }
            ExprKind::Unary(_, operand) => operand.walk(f),
            ExprKind::Binary(_, l, r) => {
                l.walk(f);
                r.walk(f);
            }
            ExprKind::BoolOp(_, values) | ExprKind::List(values) | ExprKind::Tuple(values) | ExprKind::Set(values) => {
                values.iter().for_each(|v| v.walk(f))
            }
            ExprKind::Compare { left, ops } => {
                left.walk(f);
                ops.iter().for_each(|(_, r)| r.walk(f));
            }
            ExprKind::IfExp { test, body, orelse } => {
                test.walk(f);
                body.walk(f);
                orelse.walk(f);
            }
            ExprKind::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
                k.walk(f);
                v.walk(f);
            }),
        }
    }

    /// Returns the direct children of the node, in evaluation order.
    pub fn children(&self) -> Vec<&Expr> {
        match &self.kind {
            ExprKind::Const(_) | ExprKind::Name(_) => Vec::new(),
            ExprKind::Attr(base, _) | ExprKind::Unary(_, base) => vec![base],
            ExprKind::Subscript(a, b) | ExprKind::Binary(_, a, b) => vec![a, b],
            ExprKind::Slice(a, b, c) => [a, b, c].into_iter().flatten().map(|e| &**e).collect(),
            ExprKind::Call { func, args, kwargs } => {
                std::iter::once(&**func).chain(args).chain(kwargs.iter().map(|(_, v)| v)).collect()
            }
            ExprKind::BoolOp(_, values) | ExprKind::List(values) | ExprKind::Tuple(values) | ExprKind::Set(values) => {
                values.iter().collect()
            }
            ExprKind::Compare { left, ops } => std::iter::once(&**left).chain(ops.iter().map(|(_, r)| r)).collect(),
            ExprKind::IfExp { test, body, orelse } => vec![test, body, orelse],
            ExprKind::Dict(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        }
    }

    /// Rebuilds the node with `f` applied to each direct child (used by bottom-up rewrites).
    pub fn map_children(self, f: &mut dyn FnMut(Expr) -> Expr) -> Expr {
        let boxed = |b: Box<Expr>, f: &mut dyn FnMut(Expr) -> Expr| Box::new(f(*b));
        let kind = match self.kind {
            k @ (ExprKind::Const(_) | ExprKind::Name(_)) => k,
            ExprKind::Attr(base, a) => ExprKind::Attr(boxed(base, f), a),
            ExprKind::Subscript(base, index) => {
                let base = boxed(base, f);
                ExprKind::Subscript(base, boxed(index, f))
            }
            ExprKind::Slice(a, b, c) => {
                let a = a.map(|x| boxed(x, f));
                let b = b.map(|x| boxed(x, f));
                ExprKind::Slice(a, b, c.map(|x| boxed(x, f)))
            }
            ExprKind::Call { func, args, kwargs } => {
                let func = boxed(func, f);
                let args = args.into_iter().map(&mut *f).collect();
                ExprKind::Call { func, args, kwargs: kwargs.into_iter().map(|(k, v)| (k, f(v))).collect() }
            }
            ExprKind::Unary(op, x) => ExprKind::Unary(op, boxed(x, f)),
            ExprKind::Binary(op, l, r) => {
                let l = boxed(l, f);
                ExprKind::Binary(op, l, boxed(r, f))
            }
            ExprKind::BoolOp(op, v) => ExprKind::BoolOp(op, v.into_iter().map(&mut *f).collect()),
            ExprKind::List(v) => ExprKind::List(v.into_iter().map(&mut *f).collect()),
            ExprKind::Tuple(v) => ExprKind::Tuple(v.into_iter().map(&mut *f).collect()),
            ExprKind::Set(v) => ExprKind::Set(v.into_iter().map(&mut *f).collect()),
            ExprKind::Compare { left, ops } => {
                let left = boxed(left, f);
                ExprKind::Compare { left, ops: ops.into_iter().map(|(op, r)| (op, f(r))).collect() }
            }
            ExprKind::IfExp { test, body, orelse } => {
                let test = boxed(test, f);
                let body = boxed(body, f);
                ExprKind::IfExp { test, body, orelse: boxed(orelse, f) }
            }
            ExprKind::Dict(pairs) => ExprKind::Dict(pairs.into_iter().map(|(k, v)| (f(k), f(v))).collect()),
        };
        Expr { kind, pos: self.pos }
    }

    /// Tells whether the name appears anywhere in the expression (`uses_name("metric")`).
    pub fn uses_name(&self, name: &str) -> bool {
        let mut found = false;
        self.walk(&mut |e| {
            if matches!(&e.kind, ExprKind::Name(n) if n == name) {
                found = true;
            }
        });
        found
    }
}
