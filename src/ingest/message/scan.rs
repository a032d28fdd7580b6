//! Splitting a record's JSON into its members: the envelope's keys and raw value texts, and the
//! payload's, in one pass over the bytes.
//!
//! [`envelope`] is the fast path: a scanner for the subset of JSON every gateway record is in
//! (strict RFC 8259, nesting at most [`MAX_DEPTH`] deep). It walks the record once and splits the
//! payload object on the way, where reading the envelope with serde_json and then the payload
//! again walked the payload's bytes twice (a third of decoding a metric record, issue 12). It
//! never accepts what serde_json rejects: whatever it does not recognise (a syntax error, Python's
//! `NaN`, deep nesting, a key with an invalid escape) gives `None`, and the caller reads the record
//! with [`object`] (serde_json) instead, which produces the errors and messages it always did.
//! Both paths give the same members for the same text; a differential test checks it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

/// Deepest nesting the fast path follows (the envelope is depth 1); deeper records take the
/// serde_json path, whose own limits then apply.
pub(super) const MAX_DEPTH: u32 = 64;

/// Members a [`Members`] holds without allocating (a `log_metric` payload has seven).
const INLINE: usize = 8;

/// A JSON object's members in order: each key (decoded when it has escapes) and its value's raw
/// JSON text, without surrounding whitespace.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Members<'a>(SmallVec<[(Cow<'a, str>, &'a str); INLINE]>);

impl<'a> Members<'a> {
    /// Returns the raw value of a key; a repeated key gives its last value, as in a Python dict.
    pub(super) fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// Splits a record in one pass into `envelope`, and into `payload` when the last `payload` key
/// holds an object; says whether it did. `None` when the text is outside the fast path's subset
/// (the caller then reads it with [`object`]); the buffers then hold no meaning. The members are
/// written into the caller's buffers: they are a few hundred bytes each, and moving them out of
/// the scanner was a fifth of a metric record's decoding.
pub(super) fn envelope<'a>(text: &'a str, envelope: &mut Members<'a>, payload: &mut Members<'a>) -> Option<bool> {
    let mut s = Scanner { text, bytes: text.as_bytes(), pos: 0 };
    s.whitespace();
    let split = s.object(1, envelope, Some(("payload", payload)))?;
    s.whitespace();
    (s.pos == s.bytes.len()).then_some(split)
}

/// Splits a JSON object with serde_json: the slow path, and the reference the fast path is
/// checked against.
pub(super) fn object(text: &str) -> Result<Members<'_>, serde_json::Error> {
    serde_json::from_str::<SerdeObject<'_>>(text).map(|o| o.0)
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// The members of an object at `pos`, nested `depth` deep, into `out`; when `nested` names a key, the
    /// members of its last value that is an object go into its buffer, and the answer says whether
    /// there was one.
    fn object(
        &mut self,
        depth: u32,
        out: &mut Members<'a>,
        mut nested: Option<(&str, &mut Members<'a>)>,
    ) -> Option<bool> {
        self.eat(b'{')?;
        let mut split = false;
        self.whitespace();
        if self.eat(b'}').is_some() {
            return Some(split);
        }
        loop {
            self.whitespace();
            let key = self.key()?;
            self.whitespace();
            self.eat(b':')?;
            self.whitespace();
            let start = self.pos;
            match &mut nested {
                Some((name, inner)) if key == *name => {
                    split = self.peek()? == b'{';
                    if split {
                        inner.0.clear();
                        self.object(depth + 1, inner, None)?;
                    } else {
                        self.value(depth + 1)?;
                    }
                }
                _ => self.value(depth + 1)?,
            }
            out.0.push((key, &self.text[start..self.pos]));
            self.whitespace();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(split);
                }
                _ => return None,
            }
        }
    }

    /// Skips an object at `pos`, nested `depth` deep.
    fn skip_object(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        self.whitespace();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.whitespace();
            self.string()?;
            self.whitespace();
            self.eat(b':')?;
            self.whitespace();
            self.value(depth + 1)?;
            self.whitespace();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A key: borrowed when it has no escape, decoded by serde_json otherwise (which also checks
    /// its `\u` surrogates, as serde_json's own reading of a key does).
    fn key(&mut self) -> Option<Cow<'a, str>> {
        let start = self.pos;
        let escaped = self.string()?;
        if escaped {
            return serde_json::from_str::<String>(&self.text[start..self.pos]).ok().map(Cow::Owned);
        }
        Some(Cow::Borrowed(&self.text[start + 1..self.pos - 1]))
    }

    /// Skips a string at `pos` and says whether it had an escape. Escapes are checked as serde_json
    /// checks them when it skips a string: one of `"\/bfnrt`, or `u` and four hex digits.
    fn string(&mut self) -> Option<bool> {
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            self.pos += plain_run(&self.bytes[self.pos..]);
            match *self.bytes.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    match *self.bytes.get(self.pos)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            let hex = self.bytes.get(self.pos + 1..self.pos + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.pos += 5;
                        }
                        _ => return None,
                    }
                }
                0x00..=0x1f => return None,
                _ => self.pos += 1,
            }
        }
    }

    /// Skips any value at `pos`.
    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.skip_object(depth),
            b'[' => self.array(depth),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => None,
        }
    }

    fn array(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        self.whitespace();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.whitespace();
            self.value(depth + 1)?;
            self.whitespace();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A number of the JSON grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.bytes[self.pos..].starts_with(word.as_bytes()).then(|| self.pos += word.len())
    }
}

/// The length of the run of bytes at the start of `bytes` that a string holds as they are: neither
/// `"`, `\\` nor a control character. Eight bytes at a time: the strings of a record (run ids, times,
/// names) are mostly longer than eight bytes.
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The lowest flagged byte of each mask is exact (a borrow only flags bytes above a true one),
    // so the lowest flag of their union is the first byte that needs care.
    let zero_byte = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let special = zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + bytes[i..].iter().take_while(|&&b| b != b'"' && b != b'\\' && b >= 0x20).count()
}

/// A JSON object read by serde_json into [`Members`].
struct SerdeObject<'a>(Members<'a>);

/// A map key that borrows from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for SerdeObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = SerdeObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Members::default();
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    members.0.push((k, v.get()));
                }
                Ok(SerdeObject(members))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests;
