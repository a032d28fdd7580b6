//! The tokenizer of MatyanQL: Python's expression tokens (names, keywords, numbers, strings,
//! operators), with positions as byte offsets into the text being parsed.

use super::error::SyntaxError;

/// A token kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// An identifier (keywords are separate variants).
    Name(String),
    /// An integer literal.
    Int(i128),
    /// A float literal.
    Float(f64),
    /// A string literal, escapes resolved.
    Str(String),
    /// A bytes literal.
    Bytes(Vec<u8>),
    /// A Python keyword.
    Keyword(&'static str),
    /// An operator or delimiter.
    Op(&'static str),
    /// The end of the input.
    Eof,
}

/// A token with its byte offset.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Byte offset of its first character.
    pub pos: usize,
}

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
    "not", "or", "pass", "raise", "return", "try", "while", "with", "yield",
];

/// Operators, longest first so that the first prefix match is the right one.
const OPS: &[&str] = &[
    "**=", "//=", ">>=", "<<=", "...", "!=", "%=", "&=", "**", "*=", "+=", "-=", "->", "//", "/=", ":=", "<<", "<=",
    "==", ">=", ">>", "@=", "^=", "|=", "!", "%", "&", "(", ")", "*", "+", ",", "-", ".", "/", ":", ";", "<", "=", ">",
    "@", "[", "]", "^", "{", "|", "}", "~",
];

/// Splits the text into tokens, ending with [`Tok::Eof`].
///
/// Newlines count as whitespace: the pipeline always parses the query wrapped in parentheses,
/// where Python ignores them too. A `#` comment runs to the end of its line.
pub fn tokenize(text: &str) -> Result<Vec<Token>, SyntaxError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b' ' || c == b'\t' || c == b'\n' || c == b'\r' || c == b'\x0c' {
            i += 1;
            continue;
        }
        if c == b'\\' && matches!(bytes.get(i + 1), Some(b'\n')) {
            i += 2;
            continue;
        }
        if c == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(|b| b.is_ascii_digit())) {
            let (tok, end) = number(text, i)?;
            out.push(Token { tok, pos: start });
            i = end;
            continue;
        }
        if is_ident_start(text, i) {
            let end = ident_end(text, i);
            let word = &text[i..end];
            // String prefixes: r, u, b, br, rb (any case); f-strings are not supported.
            if matches!(bytes.get(end), Some(b'\'' | b'"')) && word.len() <= 2 {
                let lower = word.to_ascii_lowercase();
                if matches!(lower.as_str(), "r" | "u" | "b" | "br" | "rb") {
                    let (tok, next) = string(text, end, lower.contains('r'), lower.contains('b'), start)?;
                    out.push(Token { tok, pos: start });
                    i = next;
                    continue;
                }
                if matches!(lower.as_str(), "f" | "fr" | "rf") {
                    return Err(SyntaxError::Unsupported { what: "f-string", pos: start });
                }
            }
            let tok = match KEYWORDS.iter().find(|k| **k == word) {
                Some(k) => Tok::Keyword(k),
                None => Tok::Name(word.to_string()),
            };
            out.push(Token { tok, pos: start });
            i = end;
            continue;
        }
        if c == b'\'' || c == b'"' {
            let (tok, next) = string(text, i, false, false, start)?;
            out.push(Token { tok, pos: start });
            i = next;
            continue;
        }
        if let Some(op) = OPS.iter().find(|op| text[i..].starts_with(**op)) {
            out.push(Token { tok: Tok::Op(op), pos: start });
            i += op.len();
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
        return Err(SyntaxError::UnexpectedChar { ch, pos: start });
    }
    out.push(Token { tok: Tok::Eof, pos: text.len() });
    Ok(out)
}

fn is_ident_start(text: &str, i: usize) -> bool {
    text[i..].chars().next().is_some_and(|c| c == '_' || c.is_alphabetic())
}

fn ident_end(text: &str, i: usize) -> usize {
    let mut end = i;
    for (off, c) in text[i..].char_indices() {
        if c == '_' || c.is_alphanumeric() {
            end = i + off + c.len_utf8();
        } else {
            break;
        }
    }
    end
}

/// Lexes a number literal starting at `start`: decimal, hex/octal/binary integers, floats with
/// fraction and exponent, underscores between digits; a trailing `j` (complex) is unsupported.
fn number(text: &str, start: usize) -> Result<(Tok, usize), SyntaxError> {
    let bytes = text.as_bytes();
    let bad = SyntaxError::InvalidNumber { pos: start };
    let mut i = start;
    if bytes[i] == b'0' && matches!(bytes.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        let radix = match bytes[i + 1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            _ => 2,
        };
        i += 2;
        let digits_start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let digits = clean_digits(&text[digits_start..i]).ok_or(bad.clone())?;
        let value = i128::from_str_radix(&digits, radix).map_err(|_| bad)?;
        return Ok((Tok::Int(value), i));
    }
    let mut is_float = false;
    let scan_digits = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i].is_ascii_digit() || bytes[*i] == b'_') {
            *i += 1;
        }
    };
    scan_digits(&mut i);
    if i < bytes.len() && bytes[i] == b'.' {
        is_float = true;
        i += 1;
        scan_digits(&mut i);
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        if i < bytes.len() && bytes[i].is_ascii_digit() {
            is_float = true;
            scan_digits(&mut i);
        } else {
            return Err(bad);
        }
    }
    if i < bytes.len() && (bytes[i] == b'j' || bytes[i] == b'J') {
        return Err(SyntaxError::Unsupported { what: "complex literal", pos: start });
    }
    // `1abc` or `1_` is invalid, as in Python.
    if i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') || text[start..i].ends_with('_') {
        return Err(bad);
    }
    let digits = clean_digits(&text[start..i]).ok_or(bad.clone())?;
    if is_float {
        let f: f64 = digits.parse().map_err(|_| bad)?;
        Ok((Tok::Float(f), i))
    } else {
        if digits.len() > 1 && digits.starts_with('0') && digits.bytes().any(|b| b != b'0') {
            // Python 3 rejects leading zeros in decimal integers (`0123`).
            return Err(bad);
        }
        let value: i128 = digits.parse().map_err(|_| SyntaxError::IntTooLarge { pos: start })?;
        Ok((Tok::Int(value), i))
    }
}

/// Removes digit-separating underscores, rejecting doubled, leading or trailing ones.
fn clean_digits(s: &str) -> Option<String> {
    if s.is_empty()
        || s.starts_with('_')
        || s.ends_with('_')
        || s.contains("__")
        || s.contains("_.")
        || s.contains("._")
    {
        return None;
    }
    Some(s.replace('_', ""))
}

/// Lexes a quoted string whose opening quote is at `q`; `pos` is the token start (prefix).
fn string(text: &str, q: usize, raw: bool, bytes_lit: bool, pos: usize) -> Result<(Tok, usize), SyntaxError> {
    let b = text.as_bytes();
    let quote = b[q];
    let triple = b.get(q + 1) == Some(&quote) && b.get(q + 2) == Some(&quote);
    let mut i = if triple { q + 3 } else { q + 1 };
    let mut out = String::new();
    loop {
        let Some(c) = text[i..].chars().next() else {
            return Err(SyntaxError::UnterminatedString { pos });
        };
        if c as u32 == quote as u32 {
            if !triple {
                i += 1;
                break;
            }
            if b.get(i + 1) == Some(&quote) && b.get(i + 2) == Some(&quote) {
                i += 3;
                break;
            }
        }
        if c == '\n' && !triple {
            return Err(SyntaxError::UnterminatedString { pos });
        }
        if c == '\\' {
            let Some(next) = text[i + 1..].chars().next() else {
                return Err(SyntaxError::UnterminatedString { pos });
            };
            if raw {
                out.push('\\');
                out.push(next);
                i += 1 + next.len_utf8();
                continue;
            }
            i += 1 + next.len_utf8();
            match next {
                '\n' => {}
                '\\' => out.push('\\'),
                '\'' => out.push('\''),
                '"' => out.push('"'),
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\x0b'),
                '0'..='7' => {
                    let mut value = next as u32 - '0' as u32;
                    for _ in 0..2 {
                        match b.get(i) {
                            Some(d @ b'0'..=b'7') => {
                                value = value * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(char::from_u32(value).ok_or(SyntaxError::InvalidEscape { pos: i })?);
                }
                'x' | 'u' | 'U' if !(bytes_lit && next != 'x') => {
                    let n = match next {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex = text.get(i..i + n).ok_or(SyntaxError::InvalidEscape { pos: i - 2 })?;
                    let value = u32::from_str_radix(hex, 16).map_err(|_| SyntaxError::InvalidEscape { pos: i - 2 })?;
                    out.push(char::from_u32(value).ok_or(SyntaxError::InvalidEscape { pos: i - 2 })?);
                    i += n;
                }
                'N' if !bytes_lit => return Err(SyntaxError::Unsupported { what: "\\N{...} escape", pos: i - 2 }),
                other => {
                    // Python keeps unknown escapes verbatim (with a warning).
                    out.push('\\');
                    out.push(other);
                }
            }
            continue;
        }
        if bytes_lit && !c.is_ascii() {
            return Err(SyntaxError::InvalidEscape { pos: i });
        }
        out.push(c);
        i += c.len_utf8();
    }
    if bytes_lit {
        // Every char is below 256 here: ASCII source or \x / octal escapes below 0o400.
        let data =
            out.chars().map(|c| c as u32).map(|c| u8::try_from(c).map_err(|_| SyntaxError::InvalidEscape { pos }));
        return Ok((Tok::Bytes(data.collect::<Result<Vec<u8>, _>>()?), i));
    }
    Ok((Tok::Str(out), i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn numbers_cover_python_forms() {
        assert_eq!(
            toks("1 1.5 .5 1. 1e3 1E-3 2.5e+2 1_000 0x1f 0o17 0b101 0"),
            vec![
                Tok::Int(1),
                Tok::Float(1.5),
                Tok::Float(0.5),
                Tok::Float(1.0),
                Tok::Float(1000.0),
                Tok::Float(0.001),
                Tok::Float(250.0),
                Tok::Int(1000),
                Tok::Int(31),
                Tok::Int(15),
                Tok::Int(5),
                Tok::Int(0),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn bad_numbers_are_errors_with_positions() {
        assert_eq!(tokenize("x == 012"), Err(SyntaxError::InvalidNumber { pos: 5 }));
        assert_eq!(tokenize("1e"), Err(SyntaxError::InvalidNumber { pos: 0 }));
        assert_eq!(tokenize("1__0"), Err(SyntaxError::InvalidNumber { pos: 0 }));
        assert_eq!(tokenize("12abc"), Err(SyntaxError::InvalidNumber { pos: 0 }));
        assert_eq!(tokenize("1j"), Err(SyntaxError::Unsupported { what: "complex literal", pos: 0 }));
        assert!(matches!(tokenize("999999999999999999999999999999999999999999"), Err(SyntaxError::IntTooLarge { .. })));
    }

    #[test]
    fn strings_resolve_escapes() {
        assert_eq!(
            toks(r#"'a\'b' "c\"d" '\n\t\\' '\x41\u00e9\101' r'\n' b'\x00a' '\q'"#),
            vec![
                Tok::Str("a'b".into()),
                Tok::Str("c\"d".into()),
                Tok::Str("\n\t\\".into()),
                Tok::Str("AéA".into()),
                Tok::Str("\\n".into()),
                Tok::Bytes(vec![0, b'a']),
                Tok::Str("\\q".into()),
                Tok::Eof
            ]
        );
        assert_eq!(toks("'''a'b'''"), vec![Tok::Str("a'b".into()), Tok::Eof]);
        assert_eq!(toks("'héllo'"), vec![Tok::Str("héllo".into()), Tok::Eof]);
    }

    #[test]
    fn unterminated_strings_point_at_their_start() {
        assert_eq!(tokenize("x == 'abc"), Err(SyntaxError::UnterminatedString { pos: 5 }));
        assert_eq!(tokenize("x == 'a\nb'"), Err(SyntaxError::UnterminatedString { pos: 5 }));
        assert_eq!(tokenize("'\\x4'"), Err(SyntaxError::InvalidEscape { pos: 1 }));
        assert_eq!(tokenize("f'x'"), Err(SyntaxError::Unsupported { what: "f-string", pos: 0 }));
    }

    #[test]
    fn operators_keywords_and_comments() {
        assert_eq!(
            toks("a.b <= 1 and not c # trailing\n!= d"),
            vec![
                Tok::Name("a".into()),
                Tok::Op("."),
                Tok::Name("b".into()),
                Tok::Op("<="),
                Tok::Int(1),
                Tok::Keyword("and"),
                Tok::Keyword("not"),
                Tok::Name("c".into()),
                Tok::Op("!="),
                Tok::Name("d".into()),
                Tok::Eof
            ]
        );
        assert_eq!(tokenize("a $ b"), Err(SyntaxError::UnexpectedChar { ch: '$', pos: 2 }));
        assert_eq!(toks("x.y1"), vec![Tok::Name("x".into()), Tok::Op("."), Tok::Name("y1".into()), Tok::Eof]);
    }
}
