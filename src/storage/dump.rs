//! `matyan kv dump`: every key of the chosen directories as one JSON line, like an operator's
//! `getrange`: `{"dir":"runs","key":[...],"value":...}` (plus `key_hex`/`value_hex` with `raw`).
//!
//! Keys decode as tuples and values as msgpack; what does not decode (index entries' empty values,
//! foreign bytes) is shown as `{"bytes":"<hex>"}`. The scan reads in chunks, each in a fresh
//! transaction, so it never exceeds the 5 s transaction lifetime: the output is consistent per chunk,
//! not across the whole store.

use std::io::Write;

use serde_json::{Value as Json, json};

use crate::storage::kv::{Database, KvError, RangeOption, strinc};
use crate::storage::layout::Dirs;
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

/// One dump line for a stored pair.
pub fn line(dir: &str, dir_prefix: &[u8], key: &[u8], val: &[u8], raw: bool) -> Json {
    let rel = &key[dir_prefix.len().min(key.len())..];
    let key_json = match tuple::unpack(rel) {
        Ok(elems) => tuple::to_json(&elems),
        Err(_) => bytes_json(rel),
    };
    let value_json = if val.is_empty() {
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

/// Writes the dump to `out`; returns the number of lines.
pub async fn dump(db: &Database, dirs: &Dirs, req: &DumpRequest, out: &mut impl Write) -> Result<u64, DumpError> {
    let names: Vec<&str> = match &req.dir {
        Some(d) => vec![DIR_NAMES.iter().copied().find(|n| n == d).ok_or_else(|| DumpError::UnknownDir(d.clone()))?],
        None => DIR_NAMES.to_vec(),
    };
    let mut lines = 0u64;
    for name in names {
        let prefix = dirs.by_name(name).ok_or_else(|| DumpError::UnknownDir(name.into()))?;
        let (mut begin, end) = match &req.prefix {
            Some(elems) => {
                // Keys equal to the prefix tuple and keys under it.
                let exact = tuple::pack_with_prefix(prefix, elems);
                let end = strinc(&exact);
                (exact, end)
            }
            None => (prefix.to_vec(), strinc(prefix)),
        };
        loop {
            let tx = db.create_trx()?;
            let kvs = tx.get_range(&RangeOption::new(begin.clone(), end.clone()).limit(CHUNK), true).await?;
            for kv in &kvs {
                serde_json::to_writer(&mut *out, &line(name, prefix, &kv.key, &kv.value, req.raw))
                    .map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
                lines += 1;
            }
            match kvs.last() {
                Some(last) if kvs.len() == CHUNK => {
                    begin = last.key.clone();
                    begin.push(0);
                }
                _ => break,
            }
        }
    }
    out.flush()?;
    Ok(lines)
}
