//! A recursive-descent parser for MatyanQL with Python's operator precedence, a bounded nesting
//! depth and the restricted compiler's ban on names starting with `_`.
//!
//! Precedence, loosest first, as in Python's grammar: `x if c else y`, `or`, `and`, `not`,
//! comparisons (`< <= > >= == != in not in is is not`, chainable), `|`, `^`, `&`, `<< >>`,
//! `+ -`, `* / // % @`, unary `+ - ~`, `**` (right-associative, binding tighter than a unary
//! operator on its left), then primaries with their `.attr`, `[index]` and `(args)` trailers.

use super::ast::{BinOp, BoolOp, CmpOp, Constant, Expr, ExprKind, UnaryOp};
use super::error::SyntaxError;
use super::lexer::{Tok, Token, tokenize};

/// Bounds on what the parser accepts, so that a hostile query fails fast instead of exhausting
/// memory or the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Maximum query length in bytes.
    pub max_len: usize,
    /// Maximum nesting of the syntax tree (parentheses, operator chains, attribute chains).
    pub max_depth: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        // 64 KiB fits a `run.hash in [...]` list of a thousand hashes; 64 levels is far beyond
        // what the UI builds and keeps the recursive evaluator well inside a 2 MiB thread stack.
        ParseLimits { max_len: 64 * 1024, max_depth: 64 }
    }
}

/// Parses one Python expression. Positions in the tree and in errors are byte offsets into
/// `text`.
pub fn parse_expression(text: &str, limits: ParseLimits) -> Result<Expr, SyntaxError> {
    parse_mapped(text, limits, &|p| p)
}

/// Parses `text` with every token position (and so every node and error position) mapped
/// through `map`; the pipeline uses it to parse the parenthesised query while reporting
/// offsets into the raw one.
pub(crate) fn parse_mapped(text: &str, limits: ParseLimits, map: &dyn Fn(usize) -> usize) -> Result<Expr, SyntaxError> {
    if text.len() > limits.max_len {
        return Err(SyntaxError::TooLong { len: text.len(), limit: limits.max_len });
    }
    let mut tokens = tokenize(text).map_err(|e| e.map_pos(map))?;
    for token in &mut tokens {
        token.pos = map(token.pos);
    }
    let mut parser = Parser { tokens, at: 0, depth: 0, max_depth: limits.max_depth };
    let expr = parser.expr()?;
    match parser.peek() {
        Tok::Eof => Ok(expr),
        _ => Err(parser.unexpected("end of expression")),
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
    max_depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        self.tokens.get(self.at).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        self.tokens.get(self.at + ahead).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn pos(&self) -> usize {
        self.tokens.get(self.at).or(self.tokens.last()).map_or(0, |t| t.pos)
    }

    fn bump(&mut self) -> Token {
        let t = self.tokens.get(self.at).cloned().unwrap_or(Token { tok: Tok::Eof, pos: self.pos() });
        if self.at < self.tokens.len() {
            self.at += 1;
        }
        t
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Keyword(k) if *k == kw)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        let hit = self.is_op(op);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let hit = self.is_kw(kw);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn expect_op(&mut self, op: &'static str) -> Result<(), SyntaxError> {
        if self.eat_op(op) { Ok(()) } else { Err(self.unexpected(op)) }
    }

    fn unexpected(&self, expected: &'static str) -> SyntaxError {
        let found = match self.peek() {
            Tok::Name(n) => format!("name {n:?}"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Str(_) | Tok::Bytes(_) => "string literal".to_string(),
            Tok::Keyword(k) => format!("keyword {k:?}"),
            Tok::Op(o) => format!("{o:?}"),
            Tok::Eof => "end of input".to_string(),
        };
        SyntaxError::Unexpected { expected, found, pos: self.pos() }
    }

    /// Counts one level of nesting, failing past the limit.
    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(SyntaxError::TooDeep { limit: self.max_depth, pos: self.pos() });
        }
        Ok(())
    }

    fn leave(&mut self, levels: usize) {
        self.depth = self.depth.saturating_sub(levels);
    }

    /// `expr := or_test ['if' or_test 'else' expr]`, refusing lambdas and walrus assignments.
    fn expr(&mut self) -> Result<Expr, SyntaxError> {
        self.enter()?;
        let result = self.expr_inner();
        self.leave(1);
        result
    }

    fn expr_inner(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.pos();
        for kw in ["lambda", "yield", "await"] {
            if self.is_kw(kw) {
                return Err(SyntaxError::Unsupported { what: kw, pos });
            }
        }
        let body = self.or_test()?;
        if self.is_op(":=") {
            return Err(SyntaxError::Unsupported { what: "assignment expression", pos: self.pos() });
        }
        if !self.eat_kw("if") {
            return Ok(body);
        }
        let test = self.or_test()?;
        if !self.eat_kw("else") {
            return Err(self.unexpected("'else'"));
        }
        let orelse = self.expr()?;
        Ok(Expr::new(ExprKind::IfExp { test: Box::new(test), body: Box::new(body), orelse: Box::new(orelse) }, pos))
    }

    fn bool_chain(
        &mut self,
        kw: &'static str,
        op: BoolOp,
        next: fn(&mut Self) -> Result<Expr, SyntaxError>,
    ) -> Result<Expr, SyntaxError> {
        let first = next(self)?;
        if !self.is_kw(kw) {
            return Ok(first);
        }
        let pos = first.pos;
        let mut values = vec![first];
        while self.eat_kw(kw) {
            values.push(next(self)?);
        }
        Ok(Expr::new(ExprKind::BoolOp(op, values), pos))
    }

    fn or_test(&mut self) -> Result<Expr, SyntaxError> {
        self.bool_chain("or", BoolOp::Or, Self::and_test)
    }

    fn and_test(&mut self) -> Result<Expr, SyntaxError> {
        self.bool_chain("and", BoolOp::And, Self::not_test)
    }

    fn not_test(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.pos();
        if self.eat_kw("not") {
            self.enter()?;
            let operand = self.not_test();
            self.leave(1);
            return Ok(Expr::new(ExprKind::Unary(UnaryOp::Not, Box::new(operand?)), pos));
        }
        self.comparison()
    }

    fn comp_op(&mut self) -> Option<CmpOp> {
        let op = match self.peek() {
            Tok::Op("==") => CmpOp::Eq,
            Tok::Op("!=") => CmpOp::NotEq,
            Tok::Op("<") => CmpOp::Lt,
            Tok::Op("<=") => CmpOp::LtE,
            Tok::Op(">") => CmpOp::Gt,
            Tok::Op(">=") => CmpOp::GtE,
            Tok::Keyword("in") => CmpOp::In,
            Tok::Keyword("not") if matches!(self.peek_at(1), Tok::Keyword("in")) => {
                self.at += 2;
                return Some(CmpOp::NotIn);
            }
            Tok::Keyword("is") => {
                if matches!(self.peek_at(1), Tok::Keyword("not")) {
                    self.at += 2;
                    return Some(CmpOp::IsNot);
                }
                CmpOp::Is
            }
            _ => return None,
        };
        self.at += 1;
        Some(op)
    }

    fn comparison(&mut self) -> Result<Expr, SyntaxError> {
        let left = self.bitor()?;
        let pos = left.pos;
        let mut ops = Vec::new();
        while let Some(op) = self.comp_op() {
            ops.push((op, self.bitor()?));
        }
        if ops.is_empty() {
            return Ok(left);
        }
        Ok(Expr::new(ExprKind::Compare { left: Box::new(left), ops }, pos))
    }

    /// Parses a left-associative chain of binary operators; each link nests the tree one level
    /// deeper, so each counts against the depth limit.
    fn binary_chain(
        &mut self,
        table: &[(&str, BinOp)],
        next: fn(&mut Self) -> Result<Expr, SyntaxError>,
    ) -> Result<Expr, SyntaxError> {
        let mut left = next(self)?;
        let mut links = 0;
        let result = loop {
            let Some(op) = table.iter().find(|(text, _)| self.is_op(text)).map(|(_, op)| *op) else {
                break Ok(left);
            };
            self.at += 1;
            links += 1;
            if let Err(e) = self.enter() {
                break Err(e);
            }
            let right = match next(self) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let pos = left.pos;
            left = Expr::new(ExprKind::Binary(op, Box::new(left), Box::new(right)), pos);
        };
        self.leave(links);
        result
    }

    fn bitor(&mut self) -> Result<Expr, SyntaxError> {
        self.binary_chain(&[("|", BinOp::BitOr)], Self::bitxor)
    }

    fn bitxor(&mut self) -> Result<Expr, SyntaxError> {
        self.binary_chain(&[("^", BinOp::BitXor)], Self::bitand)
    }

    fn bitand(&mut self) -> Result<Expr, SyntaxError> {
        self.binary_chain(&[("&", BinOp::BitAnd)], Self::shift)
    }

    fn shift(&mut self) -> Result<Expr, SyntaxError> {
        self.binary_chain(&[("<<", BinOp::LShift), (">>", BinOp::RShift)], Self::arith)
    }

    fn arith(&mut self) -> Result<Expr, SyntaxError> {
        self.binary_chain(&[("+", BinOp::Add), ("-", BinOp::Sub)], Self::term)
    }

    fn term(&mut self) -> Result<Expr, SyntaxError> {
        if self.is_op("@") {
            return Err(SyntaxError::Unsupported { what: "matrix multiplication", pos: self.pos() });
        }
        self.binary_chain(
            &[("*", BinOp::Mul), ("//", BinOp::FloorDiv), ("/", BinOp::Div), ("%", BinOp::Mod)],
            Self::factor,
        )
    }

    fn factor(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.pos();
        let op = match self.peek() {
            Tok::Op("-") => UnaryOp::Neg,
            Tok::Op("+") => UnaryOp::Pos,
            Tok::Op("~") => UnaryOp::Invert,
            _ => return self.power(),
        };
        self.at += 1;
        self.enter()?;
        let operand = self.factor();
        self.leave(1);
        Ok(Expr::new(ExprKind::Unary(op, Box::new(operand?)), pos))
    }

    fn power(&mut self) -> Result<Expr, SyntaxError> {
        let base = self.primary()?;
        if !self.eat_op("**") {
            return Ok(base);
        }
        self.enter()?;
        let exponent = self.factor();
        self.leave(1);
        let pos = base.pos;
        Ok(Expr::new(ExprKind::Binary(BinOp::Pow, Box::new(base), Box::new(exponent?)), pos))
    }

    fn primary(&mut self) -> Result<Expr, SyntaxError> {
        let mut expr = self.atom()?;
        let mut links = 0;
        let result = loop {
            if !(self.is_op(".") || self.is_op("[") || self.is_op("(")) {
                break Ok(expr);
            }
            links += 1;
            if let Err(e) = self.enter() {
                break Err(e);
            }
            match self.trailer(expr) {
                Ok(e) => expr = e,
                Err(e) => break Err(e),
            }
        };
        self.leave(links);
        result
    }

    fn trailer(&mut self, base: Expr) -> Result<Expr, SyntaxError> {
        let pos = base.pos;
        if self.eat_op(".") {
            let name_pos = self.pos();
            let Tok::Name(name) = self.peek().clone() else {
                return Err(self.unexpected("attribute name"));
            };
            self.at += 1;
            check_name(&name, name_pos)?;
            return Ok(Expr::new(ExprKind::Attr(Box::new(base), name), pos));
        }
        if self.eat_op("[") {
            let index = self.subscript_list()?;
            self.expect_op("]")?;
            return Ok(Expr::new(ExprKind::Subscript(Box::new(base), Box::new(index)), pos));
        }
        self.expect_op("(")?;
        let mut args = Vec::new();
        let mut kwargs: Vec<(String, Expr)> = Vec::new();
        while !self.is_op(")") {
            if self.is_op("*") || self.is_op("**") {
                return Err(SyntaxError::Unsupported { what: "argument unpacking", pos: self.pos() });
            }
            if let (Tok::Name(name), Tok::Op("=")) = (self.peek().clone(), self.peek_at(1)) {
                check_name(&name, self.pos())?;
                self.at += 2;
                kwargs.push((name, self.expr()?));
            } else {
                if !kwargs.is_empty() {
                    return Err(SyntaxError::Unexpected {
                        expected: "keyword argument",
                        found: "positional argument".to_string(),
                        pos: self.pos(),
                    });
                }
                args.push(self.expr()?);
                self.no_comprehension()?;
            }
            if !self.eat_op(",") {
                break;
            }
        }
        self.expect_op(")")?;
        Ok(Expr::new(ExprKind::Call { func: Box::new(base), args, kwargs }, pos))
    }

    /// Parses the inside of `[...]` after a primary: one index, a slice, or a tuple of them.
    fn subscript_list(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.pos();
        let first = self.subscript()?;
        if !self.is_op(",") {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat_op(",") {
            if self.is_op("]") {
                break;
            }
            items.push(self.subscript()?);
        }
        Ok(Expr::new(ExprKind::Tuple(items), pos))
    }

    fn subscript(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.pos();
        let lower = if self.is_op(":") { None } else { Some(Box::new(self.expr()?)) };
        if !self.eat_op(":") {
            return lower.map(|b| *b).ok_or_else(|| self.unexpected("index"));
        }
        let ends = |p: &Self| p.is_op(":") || p.is_op("]") || p.is_op(",");
        let upper = if ends(self) { None } else { Some(Box::new(self.expr()?)) };
        let step = if self.eat_op(":") && !ends(self) { Some(Box::new(self.expr()?)) } else { None };
        Ok(Expr::new(ExprKind::Slice(lower, upper, step), pos))
    }

    fn no_comprehension(&self) -> Result<(), SyntaxError> {
        if self.is_kw("for") || self.is_kw("async") {
            return Err(SyntaxError::Unsupported { what: "comprehension", pos: self.pos() });
        }
        Ok(())
    }

    fn atom(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.pos();
        let token = self.peek().clone();
        let kind = match token {
            Tok::Int(i) => {
                self.at += 1;
                ExprKind::Const(Constant::Int(i))
            }
            Tok::Float(f) => {
                self.at += 1;
                ExprKind::Const(Constant::Float(f))
            }
            Tok::Str(_) | Tok::Bytes(_) => return self.strings(),
            Tok::Keyword("True") => {
                self.at += 1;
                ExprKind::Const(Constant::Bool(true))
            }
            Tok::Keyword("False") => {
                self.at += 1;
                ExprKind::Const(Constant::Bool(false))
            }
            Tok::Keyword("None") => {
                self.at += 1;
                ExprKind::Const(Constant::None)
            }
            Tok::Name(name) => {
                check_name(&name, pos)?;
                self.at += 1;
                ExprKind::Name(name)
            }
            Tok::Op("(") => {
                self.at += 1;
                if self.eat_op(")") {
                    return Ok(Expr::new(ExprKind::Tuple(Vec::new()), pos));
                }
                let (mut items, trailing_comma) = self.expr_list(")")?;
                self.expect_op(")")?;
                if items.len() == 1 && !trailing_comma {
                    // Parentheses only group; the node keeps the inner position.
                    return items.pop().ok_or_else(|| self.unexpected("expression"));
                }
                ExprKind::Tuple(items)
            }
            Tok::Op("[") => {
                self.at += 1;
                let (items, _) = self.expr_list("]")?;
                self.expect_op("]")?;
                ExprKind::List(items)
            }
            Tok::Op("{") => {
                self.at += 1;
                return self.brace(pos);
            }
            Tok::Op("...") => return Err(SyntaxError::Unsupported { what: "Ellipsis", pos }),
            _ => return Err(self.unexpected("expression")),
        };
        Ok(Expr::new(kind, pos))
    }

    /// Parses comma-separated expressions up to (not including) `close`; tells whether a
    /// trailing comma was present.
    fn expr_list(&mut self, close: &str) -> Result<(Vec<Expr>, bool), SyntaxError> {
        let mut items = Vec::new();
        let mut trailing = false;
        while !self.is_op(close) {
            if self.is_op("*") {
                return Err(SyntaxError::Unsupported { what: "starred expression", pos: self.pos() });
            }
            items.push(self.expr()?);
            self.no_comprehension()?;
            trailing = self.eat_op(",");
            if !trailing {
                break;
            }
        }
        Ok((items, trailing))
    }

    fn brace(&mut self, pos: usize) -> Result<Expr, SyntaxError> {
        if self.eat_op("}") {
            return Ok(Expr::new(ExprKind::Dict(Vec::new()), pos));
        }
        if self.is_op("**") {
            return Err(SyntaxError::Unsupported { what: "dict unpacking", pos: self.pos() });
        }
        let first = self.expr()?;
        if self.eat_op(":") {
            let mut pairs = vec![(first, self.expr()?)];
            self.no_comprehension()?;
            while self.eat_op(",") {
                if self.is_op("}") {
                    break;
                }
                let key = self.expr()?;
                self.expect_op(":")?;
                pairs.push((key, self.expr()?));
            }
            self.expect_op("}")?;
            return Ok(Expr::new(ExprKind::Dict(pairs), pos));
        }
        self.no_comprehension()?;
        let mut items = vec![first];
        while self.eat_op(",") {
            if self.is_op("}") {
                break;
            }
            items.push(self.expr()?);
        }
        self.expect_op("}")?;
        Ok(Expr::new(ExprKind::Set(items), pos))
    }

    /// Concatenates adjacent string literals (`"a" "b"`), refusing to mix str and bytes.
    fn strings(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.pos();
        let mut text: Option<String> = None;
        let mut data: Option<Vec<u8>> = None;
        loop {
            match self.peek().clone() {
                Tok::Str(s) if data.is_none() => text.get_or_insert_with(String::new).push_str(&s),
                Tok::Bytes(b) if text.is_none() => data.get_or_insert_with(Vec::new).extend_from_slice(&b),
                Tok::Str(_) | Tok::Bytes(_) => {
                    return Err(SyntaxError::Unexpected {
                        expected: "literals of one kind",
                        found: "bytes and str literals mixed".to_string(),
                        pos: self.pos(),
                    });
                }
                _ => break,
            }
            self.bump();
        }
        let constant = match (text, data) {
            (Some(s), _) => Constant::Str(s),
            (None, Some(b)) => Constant::Bytes(b),
            (None, None) => return Err(self.unexpected("string literal")),
        };
        Ok(Expr::new(ExprKind::Const(constant), pos))
    }
}

/// Applies the restricted compiler's rule: no name or attribute may start with `_`.
fn check_name(name: &str, pos: usize) -> Result<(), SyntaxError> {
    if name.starts_with('_') {
        return Err(SyntaxError::Underscore { name: name.to_string(), pos });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Expr {
        parse_expression(s, ParseLimits::default()).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> SyntaxError {
        parse_expression(s, ParseLimits::default()).expect_err(s)
    }

    /// Renders the tree as an S-expression to keep the structural assertions short.
    fn sexp(e: &Expr) -> String {
        let list = |items: &[Expr]| items.iter().map(sexp).collect::<Vec<_>>().join(" ");
        match &e.kind {
            ExprKind::Const(Constant::None) => "None".into(),
            ExprKind::Const(Constant::Bool(b)) => format!("{b}"),
            ExprKind::Const(Constant::Int(i)) => format!("{i}"),
            ExprKind::Const(Constant::Float(f)) => format!("{f:?}"),
            ExprKind::Const(Constant::Str(s)) => format!("{s:?}"),
            ExprKind::Const(Constant::Bytes(b)) => format!("b{b:?}"),
            ExprKind::Name(n) => n.clone(),
            ExprKind::Attr(b, a) => format!("(. {} {a})", sexp(b)),
            ExprKind::Subscript(b, i) => format!("([] {} {})", sexp(b), sexp(i)),
            ExprKind::Slice(a, b, c) => {
                let part = |p: &Option<Box<Expr>>| p.as_ref().map_or("_".to_string(), |x| sexp(x));
                format!("(: {} {} {})", part(a), part(b), part(c))
            }
            ExprKind::Call { func, args, kwargs } => {
                let kw: String = kwargs.iter().map(|(k, v)| format!(" {k}={}", sexp(v))).collect();
                format!("(call {} {}{kw})", sexp(func), list(args))
            }
            ExprKind::Unary(op, x) => format!("({op:?} {})", sexp(x)),
            ExprKind::Binary(op, l, r) => format!("({op:?} {} {})", sexp(l), sexp(r)),
            ExprKind::BoolOp(op, v) => format!("({op:?} {})", list(v)),
            ExprKind::Compare { left, ops } => {
                let rest: String = ops.iter().map(|(op, r)| format!(" {} {}", op.as_str(), sexp(r))).collect();
                format!("(cmp {}{rest})", sexp(left))
            }
            ExprKind::IfExp { test, body, orelse } => format!("(if {} {} {})", sexp(test), sexp(body), sexp(orelse)),
            ExprKind::List(v) => format!("[{}]", list(v)),
            ExprKind::Tuple(v) => format!("(tuple {})", list(v)),
            ExprKind::Set(v) => format!("{{{}}}", list(v)),
            ExprKind::Dict(p) => {
                format!(
                    "{{{}}}",
                    p.iter().map(|(k, v)| format!("{}: {}", sexp(k), sexp(v))).collect::<Vec<_>>().join(", ")
                )
            }
        }
    }

    fn s(q: &str) -> String {
        sexp(&parse(q))
    }

    #[test]
    fn literals() {
        assert_eq!(s("1"), "1");
        assert_eq!(s("1.5e-3"), "0.0015");
        assert_eq!(s("'a' \"b\""), "\"ab\"");
        assert_eq!(s("b'x'"), "b[120]");
        assert_eq!(s("True"), "true");
        assert_eq!(s("None"), "None");
        assert_eq!(s("[1, 'a', None]"), "[1 \"a\" None]");
        assert_eq!(s("[]"), "[]");
        assert_eq!(s("()"), "(tuple )");
        assert_eq!(s("(1,)"), "(tuple 1)");
        assert_eq!(s("(1, 2,)"), "(tuple 1 2)");
        assert_eq!(s("(1)"), "1");
        assert_eq!(s("{}"), "{}");
        assert_eq!(s("{'a': 1, 'b': [2]}"), "{\"a\": 1, \"b\": [2]}");
        assert_eq!(s("{1, 2}"), "{1 2}");
    }

    #[test]
    fn attributes_subscripts_calls() {
        assert_eq!(s("run.hparams.lr"), "(. (. run hparams) lr)");
        assert_eq!(s("run['hparams']['lr']"), "([] ([] run \"hparams\") \"lr\")");
        assert_eq!(
            s("run.metrics['loss', {'subset': 'train'}].last"),
            "(. ([] (. run metrics) (tuple \"loss\" {\"subset\": \"train\"})) last)"
        );
        assert_eq!(s("run.name.startswith('a')"), "(call (. (. run name) startswith) \"a\")");
        assert_eq!(s("len(run.tags)"), "(call len (. run tags))");
        assert_eq!(s("round(x, ndigits=2)"), "(call round x ndigits=2)");
        assert_eq!(s("f()"), "(call f )");
        assert_eq!(s("x[1:2]"), "([] x (: 1 2 _))");
        assert_eq!(s("x[::-1]"), "([] x (: _ _ (Neg 1)))");
        assert_eq!(s("x[:2]"), "([] x (: _ 2 _))");
        assert_eq!(s("x[1:]"), "([] x (: 1 _ _))");
        assert_eq!(s("datetime(2024, 1, 2)"), "(call datetime 2024 1 2)");
    }

    #[test]
    fn python_precedence() {
        assert_eq!(s("a or b and c"), "(Or a (And b c))");
        assert_eq!(s("a and b or c and d"), "(Or (And a b) (And c d))");
        assert_eq!(s("a and b and c"), "(And a b c)");
        assert_eq!(s("not a == b"), "(Not (cmp a == b))");
        assert_eq!(s("not a and b"), "(And (Not a) b)");
        assert_eq!(s("a + b * c"), "(Add a (Mul b c))");
        assert_eq!(s("a - b - c"), "(Sub (Sub a b) c)");
        assert_eq!(s("-2 ** 2"), "(Neg (Pow 2 2))");
        assert_eq!(s("2 ** -1"), "(Pow 2 (Neg 1))");
        assert_eq!(s("2 ** 3 ** 2"), "(Pow 2 (Pow 3 2))");
        assert_eq!(s("a | b ^ c & d << 1"), "(BitOr a (BitXor b (BitAnd c (LShift d 1))))");
        assert_eq!(s("a // b % c / d"), "(Div (Mod (FloorDiv a b) c) d)");
        assert_eq!(s("x if c else y"), "(if c x y)");
        assert_eq!(s("a + 1 < b"), "(cmp (Add a 1) < b)");
        assert_eq!(s("-x.y"), "(Neg (. x y))");
        assert_eq!(s("~1"), "(Invert 1)");
    }

    #[test]
    fn comparisons_and_chains() {
        assert_eq!(s("0 < x < 1"), "(cmp 0 < x < 1)");
        assert_eq!(s("a in b"), "(cmp a in b)");
        assert_eq!(s("a not in b"), "(cmp a not in b)");
        assert_eq!(s("a is None"), "(cmp a is None)");
        assert_eq!(s("a is not None"), "(cmp a is not None)");
        assert_eq!(s("a == b != c <= d >= e > f"), "(cmp a == b != c <= d >= e > f)");
    }

    #[test]
    fn positions_point_at_tokens() {
        let e = parse("  run.name == 'x'");
        assert_eq!(e.pos, 2);
        let ExprKind::Compare { ops, .. } = &e.kind else { panic!() };
        assert_eq!(ops[0].1.pos, 14);
        assert_eq!(
            err("run.name == "),
            SyntaxError::Unexpected { expected: "expression", found: "end of input".into(), pos: 12 }
        );
        assert_eq!(err("run.name = 'x'").pos(), Some(9));
        assert_eq!(err("(a").pos(), Some(2));
        assert_eq!(err("a b").pos(), Some(2));
    }

    #[test]
    fn underscore_names_are_rejected() {
        assert_eq!(err("__import__('os')"), SyntaxError::Underscore { name: "__import__".into(), pos: 0 });
        assert_eq!(err("run.__class__"), SyntaxError::Underscore { name: "__class__".into(), pos: 4 });
        assert_eq!(err("run._x == 1"), SyntaxError::Underscore { name: "_x".into(), pos: 4 });
        assert_eq!(err("f(_a=1)"), SyntaxError::Underscore { name: "_a".into(), pos: 2 });
        // Strings may contain underscores freely.
        parse("run['_private'] == '__x__'");
        parse("run.a_b == 1");
    }

    #[test]
    fn outside_the_subset_is_rejected() {
        assert!(matches!(err("import os"), SyntaxError::Unexpected { pos: 0, .. }));
        assert_eq!(err("lambda x: x"), SyntaxError::Unsupported { what: "lambda", pos: 0 });
        assert_eq!(err("[x for x in y]"), SyntaxError::Unsupported { what: "comprehension", pos: 3 });
        assert_eq!(err("any(x for x in y)"), SyntaxError::Unsupported { what: "comprehension", pos: 6 });
        assert_eq!(err("(x := 1)"), SyntaxError::Unsupported { what: "assignment expression", pos: 3 });
        assert_eq!(err("f(*a)"), SyntaxError::Unsupported { what: "argument unpacking", pos: 2 });
        assert!(matches!(err("f(a=1, 2)"), SyntaxError::Unexpected { .. }));
        assert!(matches!(err("x if y"), SyntaxError::Unexpected { .. }));
        assert!(matches!(err("a; b"), SyntaxError::Unexpected { .. }));
        assert!(matches!(err("'a' b'b'"), SyntaxError::Unexpected { .. }));
        assert!(matches!(err(""), SyntaxError::Unexpected { .. }));
        assert!(matches!(err("x[]"), SyntaxError::Unexpected { .. }));
    }

    #[test]
    fn nesting_is_bounded() {
        let limits = ParseLimits::default();
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(matches!(parse_expression(&deep, limits), Err(SyntaxError::TooDeep { limit: 64, .. })));
        let nots = format!("{}x", "not ".repeat(10_000));
        assert!(matches!(parse_expression(&nots, limits), Err(SyntaxError::TooDeep { .. })));
        let negs = format!("{}x", "-".repeat(10_000));
        assert!(matches!(parse_expression(&negs, limits), Err(SyntaxError::TooDeep { .. })));
        let sum = vec!["1"; 10_000].join("+");
        assert!(matches!(parse_expression(&sum, limits), Err(SyntaxError::TooDeep { .. })));
        let attrs = format!("x{}", ".a".repeat(10_000));
        assert!(matches!(parse_expression(&attrs, limits), Err(SyntaxError::TooDeep { .. })));
        let lists = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(parse_expression(&lists, limits), Err(SyntaxError::TooDeep { .. })));
        let pows = vec!["2"; 10_000].join("**");
        assert!(matches!(parse_expression(&pows, limits), Err(SyntaxError::TooDeep { .. })));
        // Flat chains do not nest: a long `or` of equalities is fine when under the length limit.
        let ors = vec!["run.hash == 'abc'"; 1000].join(" or ");
        parse(&ors);
        let list = format!("[{}]", vec!["1"; 10_000].join(", "));
        parse(&list);
        // Moderate nesting stays accepted.
        parse(&format!("{}1{}", "(".repeat(30), ")".repeat(30)));
    }

    #[test]
    fn length_is_bounded() {
        let huge = format!("run.name == '{}'", "a".repeat(1 << 20));
        assert!(matches!(parse_expression(&huge, ParseLimits::default()), Err(SyntaxError::TooLong { .. })));
    }
}
