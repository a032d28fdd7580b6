//! `matyan kv dump`: every key of the chosen directories as one JSON line, like an operator's
//! `getrange`: `{"dir":"runs","key":[...],"value":...}` (plus `key_hex`/`value_hex` with `raw`).
//!
//! Keys decode as tuples and values as msgpack; what does not decode (index entries' empty values,
//! foreign bytes) is shown as `{"bytes":"<hex>"}`; a chunk of the chunked sequence layout as its points,
//! `{"chunk":[{"step","val","epoch","time"}, ...]}`. The scan reads in chunks, each in a fresh
//! transaction, so it never exceeds the 5 s transaction lifetime: the output is consistent per chunk,
//! not across the whole store.

use std::io::Write;

use serde_json::{Value as Json, json};

use crate::storage::kv::{Database, KvError, RangeOption, strinc};
use crate::storage::layout::Dirs;
use crate::storage::layout::sequences::codec::ChunkView;
use crate::storage::tuple::{self, Elem};
use crate::storage::value;

/// Directory names in dump order.
pub const DIR_NAMES: [&str; 4] = ["runs", "indexes", "system", "ours"];

/// Keys read per transaction.
const CHUNK: usize = 10_000;

/// What to dump.
#[derive(Debug, Clone, Default)]
pub struct DumpRequest {
    /// One directory (`runs`, `indexes`, `system`, `ours`); all of them when `None`.
    pub dir: Option<String>,
    /// Only keys under this tuple prefix.
    pub prefix: Option<Vec<Elem>>,
    /// Add the key and value hex.
    pub raw: bool,
}

/// Errors of the dump.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The KV layer failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// Writing the output failed.
    #[error("writing the dump: {0}")]
    Io(#[from] std::io::Error),
    /// The directory name is not one of [`DIR_NAMES`].
    #[error("unknown directory {0:?}: expected one of runs, indexes, system, ours")]
    UnknownDir(String),
}

fn bytes_json(b: &[u8]) -> Json {
    json!({ "bytes": hex::encode(b) })
}

/// A chunk of the chunked sequence layout as `{"chunk": [{"step","val","epoch","time"}, ...]}`;
/// `None` when it does not decode (it is then shown as bytes).
fn chunk_json(val: &[u8]) -> Option<Json> {
    let rows = ChunkView::parse(val).and_then(|v| v.rows()).ok()?;
    let points: Vec<Json> = rows
        .into_iter()
        .map(|r| {
            let v = value::decode(&r.val).map_or_else(|_| bytes_json(&r.val), |v| v.to_dump_json());
            json!({ "step": r.step, "val": v, "epoch": r.epoch, "time": r.time })
        })
        .collect();
    Some(json!({ "chunk": points }))
}

/// One dump line for a stored pair.
pub fn line(dir: &str, dir_prefix: &[u8], key: &[u8], val: &[u8], raw: bool) -> Json {
    let rel = &key[dir_prefix.len().min(key.len())..];
    let elems = tuple::unpack(rel).ok();
    let key_json = match &elems {
        Some(elems) => tuple::to_json(elems),
        None => bytes_json(rel),
    };
    let chunk = match (dir, elems.as_deref()) {
        ("runs", Some([Elem::Str(_), Elem::Str(tag), Elem::Int(_), Elem::Str(_), Elem::Int(_)])) if tag == "chunks" => {
            chunk_json(val)
        }
        _ => None,
    };
    let value_json = if let Some(chunk) = chunk {
        chunk
    } else if val.is_empty() {
        bytes_json(val)
    } else {
        match value::decode(val) {
            Ok(v) => v.to_dump_json(),
            Err(_) => bytes_json(val),
        }
    };
    let mut obj = serde_json::Map::new();
    obj.insert("dir".into(), Json::from(dir));
    obj.insert("key".into(), key_json);
    obj.insert("value".into(), value_json);
    if raw {
        obj.insert("key_hex".into(), Json::from(hex::encode(key)));
        obj.insert("value_hex".into(), Json::from(hex::encode(val)));
    }
    Json::Object(obj)
}

/// One directory's remaining key range.
#[derive(Debug)]
struct Scan {
    name: &'static str,
    prefix: Vec<u8>,
    begin: Vec<u8>,
    end: Vec<u8>,
}

/// A resumable scan over the requested directories, yielding the dump a chunk at a time.
#[derive(Debug)]
pub struct DumpCursor {
    /// Scans still to do, the next one last.
    todo: Vec<Scan>,
    raw: bool,
}

impl DumpCursor {
    /// A cursor over `req` in the store's directories.
    pub fn new(dirs: &Dirs, req: &DumpRequest) -> Result<Self, DumpError> {
        let names: Vec<&'static str> = match &req.dir {
            Some(d) => {
                vec![DIR_NAMES.iter().copied().find(|n| n == d).ok_or_else(|| DumpError::UnknownDir(d.clone()))?]
            }
            None => DIR_NAMES.to_vec(),
        };
        let mut todo = Vec::with_capacity(names.len());
        for name in names.into_iter().rev() {
            let prefix = dirs.by_name(name).ok_or_else(|| DumpError::UnknownDir(name.into()))?.to_vec();
            // With a tuple prefix: the key equal to it and every key under it.
            let begin = match &req.prefix {
                Some(elems) => tuple::pack_with_prefix(&prefix, elems),
                None => prefix.clone(),
            };
            let end = strinc(&begin);
            todo.push(Scan { name, prefix, begin, end });
        }
        Ok(Self { todo, raw: req.raw })
    }

    /// The next chunk of JSON lines (each ending in a newline), or `None` when done. Each chunk is
    /// read in its own snapshot transaction.
    pub async fn next_chunk(&mut self, db: &Database) -> Result<Option<Vec<u8>>, DumpError> {
        loop {
            let Some(scan) = self.todo.last_mut() else { return Ok(None) };
            let tx = db.create_trx()?;
            let kvs = tx.get_range(&RangeOption::new(scan.begin.clone(), scan.end.clone()).limit(CHUNK), true).await?;
            let (name, prefix) = (scan.name, scan.prefix.clone());
            match kvs.last() {
                Some(last) if kvs.len() == CHUNK => {
                    scan.begin = last.key.clone();
                    scan.begin.push(0);
                }
                _ => {
                    self.todo.pop();
                }
            }
            if kvs.is_empty() {
                continue;
            }
            let mut out = Vec::with_capacity(kvs.len() * 96);
            for kv in &kvs {
                serde_json::to_writer(&mut out, &line(name, &prefix, &kv.key, &kv.value, self.raw))
                    .map_err(std::io::Error::from)?;
                out.push(b'\n');
            }
            return Ok(Some(out));
        }
    }
}

/// Writes the whole dump to `out`; returns the number of lines.
pub async fn dump(db: &Database, dirs: &Dirs, req: &DumpRequest, out: &mut impl Write) -> Result<u64, DumpError> {
    let mut cursor = DumpCursor::new(dirs, req)?;
    let mut lines = 0u64;
    while let Some(chunk) = cursor.next_chunk(db).await? {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(lines)
}
