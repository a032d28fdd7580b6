//! The FoundationDB directory layer's format, for local backends, so a store written here has the
//! same directory metadata an FDB client expects (see `ingest-storage.md` §3.1):
//!
//! - node subspace `\xfe`; the node of content prefix `P` is `\xfe + pack((P,))`, the root node is
//!   `\xfe + pack((b"\xfe",))` = `fe 01 fe 00`;
//! - `root + pack((b"version",))` holds three little-endian u32 `(1, 0, 0)`;
//! - a child entry is `node(parent) + pack((0, name))` = the child's raw content prefix;
//! - `node(P) + pack((b"layer",))` = `b""`.
//!
//! Content prefixes are `pack((n,))` for the smallest free `n ≥ 1`; each allocation is also marked
//! in the high-contention allocator's "recent" subspace so an FDB client never hands it out again.

use crate::storage::tuple::{Elem, pack};

use super::database::Transaction;
use super::error::KvError;
use super::types::{RangeOption, strinc};

const NODE_PREFIX: u8 = 0xfe;
const SUBDIRS: i128 = 0;
/// Upper bound of the prefix search: far more directories than this layout will ever create.
const MAX_CANDIDATES: i128 = 1 << 20;

fn node_key(prefix: &[u8]) -> Vec<u8> {
    let mut k = vec![NODE_PREFIX];
    k.extend(pack(&[Elem::Bytes(prefix.to_vec())]));
    k
}

fn root_node() -> Vec<u8> {
    node_key(&[NODE_PREFIX])
}

fn with_suffix(mut base: Vec<u8>, suffix: Vec<u8>) -> Vec<u8> {
    base.extend(suffix);
    base
}

/// Opens the directory at `path`, creating it and its parents if missing, inside `tx`, and returns
/// its raw content prefix.
pub async fn create_or_open(tx: &Transaction, path: &[&str]) -> Result<Vec<u8>, KvError> {
    let root = root_node();
    let version_key = with_suffix(root.clone(), pack(&[Elem::Bytes(b"version".to_vec())]));
    if tx.get(&version_key, false).await?.is_none() {
        let mut v = Vec::with_capacity(12);
        for part in [1u32, 0, 0] {
            v.extend(part.to_le_bytes());
        }
        tx.set(&version_key, &v);
    }
    let mut parent_node = root.clone();
    let mut prefix = Vec::new();
    for name in path {
        let entry = with_suffix(parent_node.clone(), pack(&[Elem::Int(SUBDIRS), Elem::from(*name)]));
        prefix = match tx.get(&entry, false).await? {
            Some(p) => p,
            None => {
                let p = allocate(tx, &root).await?;
                tx.set(&entry, &p);
                tx.set(&with_suffix(node_key(&p), pack(&[Elem::Bytes(b"layer".to_vec())])), b"");
                p
            }
        };
        parent_node = node_key(&prefix);
    }
    Ok(prefix)
}

async fn allocate(tx: &Transaction, root: &[u8]) -> Result<Vec<u8>, KvError> {
    let hca = with_suffix(root.to_vec(), pack(&[Elem::Bytes(b"hca".to_vec())]));
    for n in 1..MAX_CANDIDATES {
        let candidate = pack(&[Elem::Int(n)]);
        let recent = with_suffix(hca.clone(), pack(&[Elem::Int(1), Elem::Int(n)]));
        if tx.get(&recent, false).await?.is_some() {
            continue;
        }
        let content = RangeOption::new(candidate.clone(), strinc(&candidate)).limit(1);
        if !tx.get_range(&content, false).await?.is_empty() {
            continue;
        }
        if !tx.get_range(&RangeOption::prefix(&node_key(&candidate)).limit(1), false).await?.is_empty() {
            continue;
        }
        tx.set(&recent, b"");
        return Ok(candidate);
    }
    Err(KvError::Engine("directory layer: no free prefix".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_node_matches_the_reference_bytes() {
        assert_eq!(root_node(), vec![0xfe, 0x01, 0xfe, 0x00]);
        // `fe01fe00 14 02 "data" 00` is the root's entry for child `data`.
        let entry = with_suffix(root_node(), pack(&[Elem::Int(SUBDIRS), Elem::from("data")]));
        assert_eq!(hex::encode(entry), "fe01fe00140264617461".to_string() + "00");
    }
}
