//! Hash maps on the ingest path, keyed by what clients send (run ids, sequence names, contexts):
//! foldhash's hasher, seeded per process, instead of the standard library's SipHash, which took
//! about 3 % of a backlog drain's samples (issue 12) for keys of a few bytes.

use std::collections::HashMap;

/// The hasher of [`FastMap`]: fast, and seeded at random so that keys chosen to collide do not
/// carry over from one process to another.
pub type FastState = foldhash::fast::RandomState;

/// A `HashMap` with [`FastState`].
pub type FastMap<K, V> = HashMap<K, V, FastState>;
