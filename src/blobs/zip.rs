//! A ZIP archive written as a stream (`artifacts/download-all`, spec `api.md` §7.3): ZIP64,
//! stored (no compression), each member's CRC and sizes in a data descriptor after its bytes, so
//! nothing is held or read twice and no size is needed up front. Members have Unix mode 0600 and
//! UTF-8 names, as the reference's `stream_zip(NO_COMPRESSION_64)` writes them.
//!
//! [`ZipStream`] is pure: it returns the bytes to send around each member's data and counts what
//! passes through it; the caller moves the bytes.

use std::time::{SystemTime, UNIX_EPOCH};

/// Version needed to extract ZIP64 members (4.5).
const VERSION: u16 = 45;
/// Made by: Unix (3), so the external attributes carry a mode.
const MADE_BY: u16 = (3 << 8) | VERSION;
/// Bit 3: CRC and sizes follow the data; bit 11: the name is UTF-8.
const FLAGS: u16 = 0x0808;
/// A regular file with mode 0600, in the high half of the external attributes.
const EXTERNAL_ATTRS: u32 = 0o100_600 << 16;

/// One member already written, for the central directory.
#[derive(Debug)]
struct Written {
    name: Vec<u8>,
    crc: u32,
    size: u64,
    offset: u64,
}

/// The member being written.
#[derive(Debug)]
struct Open {
    name: Vec<u8>,
    crc: crc32fast::Hasher,
    size: u64,
    offset: u64,
}

/// The state of one archive: where each member starts and what it held.
#[derive(Debug)]
pub struct ZipStream {
    written: Vec<Written>,
    open: Option<Open>,
    offset: u64,
    time: u16,
    date: u16,
}

impl ZipStream {
    /// An empty archive whose members are dated `now`.
    pub fn new(now: SystemTime) -> Self {
        let (time, date) = dos_datetime(now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        Self { written: Vec::new(), open: None, offset: 0, time, date }
    }

    /// The local header of a member named `name`, to send before its data; ends the member still
    /// open, whose data descriptor comes first in the returned bytes.
    pub fn start_member(&mut self, name: &str) -> Vec<u8> {
        // `end_member` counts the descriptor it returns, so the header starts at `self.offset`.
        let mut out = self.end_member();
        let name = name.as_bytes().to_vec();
        let offset = self.offset;
        let header_start = out.len();
        put32(&mut out, 0x0403_4b50);
        put16(&mut out, VERSION);
        put16(&mut out, FLAGS);
        put16(&mut out, 0); // stored
        put16(&mut out, self.time);
        put16(&mut out, self.date);
        put32(&mut out, 0); // CRC: in the data descriptor
        put32(&mut out, u32::MAX); // sizes: in the ZIP64 extra and the data descriptor
        put32(&mut out, u32::MAX);
        put16(&mut out, len16(name.len()));
        put16(&mut out, 20);
        out.extend_from_slice(&name);
        put16(&mut out, 0x0001); // ZIP64 extra: sizes unknown yet
        put16(&mut out, 16);
        put64(&mut out, 0);
        put64(&mut out, 0);
        self.offset += (out.len() - header_start) as u64;
        self.open = Some(Open { name, crc: crc32fast::Hasher::new(), size: 0, offset });
        out
    }

    /// Counts `chunk` of the open member's data (which the caller sends as it is).
    pub fn member_data(&mut self, chunk: &[u8]) {
        if let Some(open) = &mut self.open {
            open.crc.update(chunk);
            open.size += chunk.len() as u64;
            self.offset += chunk.len() as u64;
        }
    }

    /// The data descriptor of the open member (nothing when none is open).
    pub fn end_member(&mut self) -> Vec<u8> {
        let Some(open) = self.open.take() else { return Vec::new() };
        let crc = open.crc.finalize();
        let mut out = Vec::with_capacity(24);
        put32(&mut out, 0x0807_4b50);
        put32(&mut out, crc);
        put64(&mut out, open.size);
        put64(&mut out, open.size);
        self.offset += out.len() as u64;
        self.written.push(Written { name: open.name, crc, size: open.size, offset: open.offset });
        out
    }

    /// Ends the archive: the open member's descriptor, the central directory and the ZIP64 end
    /// records.
    pub fn finish(mut self) -> Vec<u8> {
        let mut out = self.end_member();
        let cd_start = self.offset;
        let cd_from = out.len();
        for w in &self.written {
            put32(&mut out, 0x0201_4b50);
            put16(&mut out, MADE_BY);
            put16(&mut out, VERSION);
            put16(&mut out, FLAGS);
            put16(&mut out, 0);
            put16(&mut out, self.time);
            put16(&mut out, self.date);
            put32(&mut out, w.crc);
            put32(&mut out, u32::MAX);
            put32(&mut out, u32::MAX);
            put16(&mut out, len16(w.name.len()));
            put16(&mut out, 28);
            put16(&mut out, 0); // comment
            put16(&mut out, 0); // disk
            put16(&mut out, 0); // internal attributes
            put32(&mut out, EXTERNAL_ATTRS);
            put32(&mut out, u32::MAX); // offset: in the ZIP64 extra
            out.extend_from_slice(&w.name);
            put16(&mut out, 0x0001);
            put16(&mut out, 24);
            put64(&mut out, w.size);
            put64(&mut out, w.size);
            put64(&mut out, w.offset);
        }
        let cd_size = (out.len() - cd_from) as u64;
        let eocd64 = cd_start + cd_size;
        let count = self.written.len() as u64;
        put32(&mut out, 0x0606_4b50);
        put64(&mut out, 44);
        put16(&mut out, MADE_BY);
        put16(&mut out, VERSION);
        put32(&mut out, 0);
        put32(&mut out, 0);
        put64(&mut out, count);
        put64(&mut out, count);
        put64(&mut out, cd_size);
        put64(&mut out, cd_start);
        put32(&mut out, 0x0706_4b50);
        put32(&mut out, 0);
        put64(&mut out, eocd64);
        put32(&mut out, 1);
        put32(&mut out, 0x0605_4b50);
        put16(&mut out, 0);
        put16(&mut out, 0);
        put16(&mut out, u16::MAX);
        put16(&mut out, u16::MAX);
        put32(&mut out, u32::MAX);
        put32(&mut out, u32::MAX);
        put16(&mut out, 0);
        out
    }
}

/// A name length as the header's u16; names come from artifact paths, bounded far below it by
/// the ingestion's key-part limit, and a longer one is cut rather than corrupting the archive.
fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// MS-DOS time and date of a Unix time (UTC), clamped to the format's 1980–2107.
fn dos_datetime(unix: u64) -> (u16, u16) {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year < 1980 {
        return (0, (1 << 5) | 1);
    }
    let year = year.min(2107);
    let time = ((secs / 3600) << 11) | (((secs % 3600) / 60) << 5) | ((secs % 60) / 2);
    let date = ((year - 1980) << 9) | (month << 5) | day;
    (u16::try_from(time).unwrap_or(0), u16::try_from(date).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_dates_follow_the_calendar() {
        // 2025-01-01 00:00:00 UTC.
        assert_eq!(dos_datetime(1_735_689_600), (0, (45 << 9) | (1 << 5) | 1));
        // 2024-02-29 13:14:16 UTC.
        assert_eq!(dos_datetime(1_709_212_456), ((13 << 11) | (14 << 5) | 8, (44 << 9) | (2 << 5) | 29));
        assert_eq!(dos_datetime(0), (0, (1 << 5) | 1), "before 1980 is 1980-01-01");
    }

    #[test]
    fn offsets_and_sizes_add_up_and_the_end_records_point_at_the_directory() {
        let mut zip = ZipStream::new(UNIX_EPOCH + std::time::Duration::from_secs(1_735_689_600));
        let mut archive = zip.start_member("a.txt");
        zip.member_data(b"hello");
        archive.extend_from_slice(b"hello");
        archive.extend(zip.start_member("dir/b.bin"));
        archive.extend(zip.finish());
        let at = |i: usize| u64::from_le_bytes(archive[i..i + 8].try_into().unwrap());
        let n = archive.len();
        // The EOCD's record is 56 bytes, then the 20-byte locator and the 22-byte EOCD.
        assert_eq!(at(n - 22 - 20 + 8) as usize, n - 22 - 20 - 56, "the locator points at the record");
        // EOCD (22) after the locator (20): the locator points at the ZIP64 EOCD record.
        let eocd64 = at(n - 22 - 20 + 8) as usize;
        assert_eq!(&archive[eocd64..eocd64 + 4], &0x0606_4b50u32.to_le_bytes());
        let (count, cd_size, cd_start) = (at(eocd64 + 24), at(eocd64 + 40), at(eocd64 + 48) as usize);
        assert_eq!(count, 2);
        assert_eq!(cd_start + cd_size as usize, eocd64);
        assert_eq!(&archive[cd_start..cd_start + 4], &0x0201_4b50u32.to_le_bytes());
        // The second member's local header is where the central directory says.
        let second = cd_start + 46 + 5 + 28;
        let offset = at(second + 46 + 9 + 4 + 16) as usize;
        assert_eq!(&archive[offset..offset + 4], &0x0403_4b50u32.to_le_bytes());
        assert_eq!(&archive[offset + 30..offset + 39], b"dir/b.bin");
        // The first member's descriptor carries hello's CRC and size.
        let dd = 30 + 5 + 20 + 5;
        assert_eq!(&archive[dd + 4..dd + 8], &crc32fast::hash(b"hello").to_le_bytes());
        assert_eq!(at(dd + 8), 5);
    }
}
