//! The bytes of one chunk of the chunked sequence layout (`docs/adr/0007-chunked-sequences.md`).
//!
//! A chunk holds `n ≥ 1` points with ascending, distinct steps, as columns:
//!
//! ```text
//! u8      format (1)
//! varint  n
//! zigzag  first step            ┐ a header, so bounds and `next_step` need no column
//! zigzag  last step             ┘
//! varint  length, then steps:   (delta, repeat) varint pairs: the n − 1 gaps between steps, run-length
//! varint  length, then values:  u8 kind, then 0 = every value a msgpack float64: n × 8 bytes (the
//!                               float's big-endian bits); 1 = any msgpack: n × (varint length, bytes)
//! varint  length, then epochs:  (repeat, tag) pairs, tag 0 = no epoch, 1 = an epoch (zigzag) follows
//! times (the rest):             (repeat, 8-byte big-endian f64 bits) pairs
//! ```
//!
//! Steps of a metric are mostly gapless and epochs and times change rarely (one clock per flush),
//! so a float point costs about 8 bytes. Columns are length-prefixed so a reader decodes only the
//! ones it asks for, and a float value is found at `8 × index` without decoding its neighbours.

use super::SeqError;

/// The format byte of chunks this module writes.
const FORMAT: u8 = 1;
/// Value column kinds.
const VALUES_F64: u8 = 0;
const VALUES_MSGPACK: u8 = 1;
/// msgpack's float64 marker.
const MP_F64: u8 = 0xcb;

/// One stored point, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The step.
    pub step: i64,
    /// The msgpack-encoded value.
    pub val: Vec<u8>,
    /// The epoch, when one was written for the step.
    pub epoch: Option<i64>,
    /// The writer's clock.
    pub time: f64,
}

impl Row {
    /// A bound on what the row adds to an encoded chunk, for sizing chunks before encoding.
    pub fn encoded_bound(&self) -> usize {
        self.val.len() + 3 * 10 + 8
    }
}

fn corrupt(what: &str) -> SeqError {
    SeqError::Corrupt(format!("chunk: {what}"))
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A cursor over a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<u64, SeqError> {
        let mut v: u64 = 0;
        for (i, b) in self.bytes.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Ok(v);
            }
        }
        Err(corrupt("bad varint"))
    }

    fn zigzag(&mut self) -> Result<i64, SeqError> {
        self.varint().map(unzigzag)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SeqError> {
        if n > self.bytes.len() {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, SeqError> {
        Ok(self.take(1)?[0])
    }

    fn f64(&mut self) -> Result<f64, SeqError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_bits(u64::from_be_bytes(a)))
    }

    /// A length-prefixed section.
    fn section(&mut self) -> Result<&'a [u8], SeqError> {
        let len = usize::try_from(self.varint()?).map_err(|_| corrupt("section length"))?;
        self.take(len)
    }

    fn count(&mut self) -> Result<usize, SeqError> {
        usize::try_from(self.varint()?).map_err(|_| corrupt("count"))
    }
}

fn put_section(section: &[u8], out: &mut Vec<u8>) {
    put_varint(section.len() as u64, out);
    out.extend_from_slice(section);
}

/// Encodes `rows` (ascending, distinct steps, at least one) as a chunk.
pub fn encode(rows: &[Row]) -> Vec<u8> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else { return Vec::new() };
    let mut out = Vec::with_capacity(16 + rows.iter().map(|r| r.val.len()).sum::<usize>() + rows.len() / 4);
    out.push(FORMAT);
    put_varint(rows.len() as u64, &mut out);
    put_varint(zigzag(first.step), &mut out);
    put_varint(zigzag(last.step), &mut out);

    let mut col = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for w in rows.windows(2) {
        let delta = w[1].step.wrapping_sub(w[0].step) as u64;
        run = match run {
            Some((d, n)) if d == delta => Some((d, n + 1)),
            Some((d, n)) => {
                put_varint(d, &mut col);
                put_varint(n, &mut col);
                Some((delta, 1))
            }
            None => Some((delta, 1)),
        };
    }
    if let Some((d, n)) = run {
        put_varint(d, &mut col);
        put_varint(n, &mut col);
    }
    put_section(&col, &mut out);

    col.clear();
    if rows.iter().all(|r| r.val.len() == 9 && r.val[0] == MP_F64) {
        col.push(VALUES_F64);
        for r in rows {
            col.extend_from_slice(&r.val[1..]);
        }
    } else {
        col.push(VALUES_MSGPACK);
        for r in rows {
            put_section(&r.val, &mut col);
        }
    }
    put_section(&col, &mut out);

    col.clear();
    let mut i = 0;
    while i < rows.len() {
        let e = rows[i].epoch;
        let n = rows[i..].iter().take_while(|r| r.epoch == e).count();
        put_varint(n as u64, &mut col);
        match e {
            None => col.push(0),
            Some(e) => {
                col.push(1);
                put_varint(zigzag(e), &mut col);
            }
        }
        i += n;
    }
    put_section(&col, &mut out);

    let mut i = 0;
    while i < rows.len() {
        let t = rows[i].time.to_bits();
        let n = rows[i..].iter().take_while(|r| r.time.to_bits() == t).count();
        put_varint(n as u64, &mut out);
        out.extend_from_slice(&t.to_be_bytes());
        i += n;
    }
    out
}

/// A parsed chunk whose columns are decoded on demand.
#[derive(Debug, Clone, Copy)]
pub struct ChunkView<'a> {
    /// Points in the chunk.
    pub len: usize,
    /// Its first step.
    pub first: i64,
    /// Its last step.
    pub last: i64,
    steps: &'a [u8],
    values: &'a [u8],
    epochs: &'a [u8],
    times: &'a [u8],
}

impl<'a> ChunkView<'a> {
    /// Parses the header and finds the columns; decodes none of them.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, SeqError> {
        let mut c = Cursor { bytes };
        if c.byte()? != FORMAT {
            return Err(corrupt("unknown format"));
        }
        let len = c.count()?;
        let first = c.zigzag()?;
        let last = c.zigzag()?;
        if len == 0 || last < first {
            return Err(corrupt("bad header"));
        }
        let steps = c.section()?;
        let values = c.section()?;
        let epochs = c.section()?;
        Ok(Self { len, first, last, steps, values, epochs, times: c.bytes })
    }

    /// Whether the steps are `first..=last` without a gap (the header tells, no column decoded).
    pub fn gapless(&self) -> bool {
        u64::try_from(i128::from(self.last) - i128::from(self.first) + 1).is_ok_and(|w| w == self.len as u64)
    }

    /// The steps, ascending.
    pub fn steps(&self) -> Result<Vec<i64>, SeqError> {
        if self.gapless() {
            return Ok((self.first..=self.last).collect());
        }
        let mut out = Vec::with_capacity(self.len);
        out.push(self.first);
        let mut c = Cursor { bytes: self.steps };
        let mut step = self.first;
        while !c.bytes.is_empty() {
            let delta = c.varint()? as i64;
            let n = c.count()?;
            if out.len() + n > self.len {
                return Err(corrupt("too many steps"));
            }
            for _ in 0..n {
                step = step.wrapping_add(delta);
                out.push(step);
            }
        }
        if out.len() != self.len || out.last() != Some(&self.last) {
            return Err(corrupt("steps disagree with the header"));
        }
        Ok(out)
    }

    /// The values at the ascending indexes `at` (msgpack bytes).
    pub fn values_at(&self, at: &[usize]) -> Result<Vec<Vec<u8>>, SeqError> {
        let mut c = Cursor { bytes: self.values };
        let mut out = Vec::with_capacity(at.len());
        match c.byte()? {
            VALUES_F64 => {
                if c.bytes.len() != 8 * self.len {
                    return Err(corrupt("float column length"));
                }
                for &i in at {
                    let bits = c.bytes.get(8 * i..8 * i + 8).ok_or_else(|| corrupt("value index"))?;
                    let mut v = Vec::with_capacity(9);
                    v.push(MP_F64);
                    v.extend_from_slice(bits);
                    out.push(v);
                }
            }
            VALUES_MSGPACK => {
                let mut next = 0;
                for &i in at {
                    while next < i {
                        c.section()?;
                        next += 1;
                    }
                    out.push(c.section()?.to_vec());
                    next += 1;
                }
            }
            _ => return Err(corrupt("unknown value kind")),
        }
        Ok(out)
    }

    /// Every value.
    pub fn values(&self) -> Result<Vec<Vec<u8>>, SeqError> {
        self.values_at(&(0..self.len).collect::<Vec<_>>())
    }

    /// The epochs, one per point.
    pub fn epochs(&self) -> Result<Vec<Option<i64>>, SeqError> {
        let mut c = Cursor { bytes: self.epochs };
        let mut out = Vec::with_capacity(self.len);
        while !c.bytes.is_empty() {
            let n = c.count()?;
            let e = match c.byte()? {
                0 => None,
                1 => Some(c.zigzag()?),
                _ => return Err(corrupt("epoch tag")),
            };
            if out.len() + n > self.len {
                return Err(corrupt("too many epochs"));
            }
            out.extend(std::iter::repeat_n(e, n));
        }
        if out.len() != self.len {
            return Err(corrupt("epochs disagree with the header"));
        }
        Ok(out)
    }

    /// The times, one per point.
    pub fn times(&self) -> Result<Vec<f64>, SeqError> {
        let mut c = Cursor { bytes: self.times };
        let mut out = Vec::with_capacity(self.len);
        while !c.bytes.is_empty() {
            let n = c.count()?;
            let t = c.f64()?;
            if out.len() + n > self.len {
                return Err(corrupt("too many times"));
            }
            out.extend(std::iter::repeat_n(t, n));
        }
        if out.len() != self.len {
            return Err(corrupt("times disagree with the header"));
        }
        Ok(out)
    }

    /// Every point, every column.
    pub fn rows(&self) -> Result<Vec<Row>, SeqError> {
        let steps = self.steps()?;
        let vals = self.values()?;
        let epochs = self.epochs()?;
        let times = self.times()?;
        Ok(steps
            .into_iter()
            .zip(vals)
            .zip(epochs.into_iter().zip(times))
            .map(|((step, val), (epoch, time))| Row { step, val, epoch, time })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(f: f64) -> Vec<u8> {
        let mut v = vec![MP_F64];
        v.extend_from_slice(&f.to_bits().to_be_bytes());
        v
    }

    #[test]
    fn a_chunk_decodes_to_the_rows_it_was_encoded_from() {
        let mut rows: Vec<Row> = (0..300)
            .map(|i| Row {
                step: 10 + i,
                val: float(i as f64 / 3.0),
                epoch: Some(i / 100),
                time: 5.0 + (i / 50) as f64,
            })
            .collect();
        let bytes = encode(&rows);
        assert!(bytes.len() < 300 * 9, "{} bytes", bytes.len());
        let view = ChunkView::parse(&bytes).unwrap();
        assert!(view.gapless());
        assert_eq!(view.rows().unwrap(), rows);
        // Gaps, negative and huge steps, nil and map values, epochs absent.
        rows[3].step = 14;
        rows.truncate(5);
        rows.push(Row { step: 1 << 40, val: vec![0xc0], epoch: None, time: f64::NAN });
        rows.insert(0, Row { step: -7, val: vec![0x81, 0xa1, b'a', 0x01], epoch: None, time: -1.5 });
        let bytes = encode(&rows);
        let view = ChunkView::parse(&bytes).unwrap();
        assert!(!view.gapless());
        let back = view.rows().unwrap();
        assert_eq!(back.len(), rows.len());
        for (a, b) in back.iter().zip(&rows) {
            assert_eq!((a.step, &a.val, a.epoch, a.time.to_bits()), (b.step, &b.val, b.epoch, b.time.to_bits()));
        }
        assert_eq!(view.values_at(&[1, 6]).unwrap(), vec![rows[1].val.clone(), rows[6].val.clone()]);
    }

    #[test]
    fn a_truncated_or_foreign_chunk_is_corrupt_not_a_panic() {
        let rows: Vec<Row> = (0..20).map(|i| Row { step: i * 3, val: float(1.0), epoch: None, time: 1.0 }).collect();
        let bytes = encode(&rows);
        for cut in 0..bytes.len() {
            if let Ok(view) = ChunkView::parse(&bytes[..cut]) {
                assert!(view.rows().is_err(), "cut at {cut}");
            }
        }
        assert!(ChunkView::parse(&[9, 1, 0, 0, 0, 0, 0]).is_err());
    }
}
