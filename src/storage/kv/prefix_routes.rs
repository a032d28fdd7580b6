//! Which of an engine's trees holds a key: the key prefixes kept apart from the main tree (each in
//! a tree of its own) and the pieces a key range falls into. Pure: the fjall engine
//! (`fjall_engine.rs`) keeps the embedded queue's records in a keyspace of their own with it, so
//! that they are flushed, compacted, cached and trimmed apart from the store's data.
//!
//! A key belongs to the first route whose prefix starts it, else to the main tree (`None`). Prefixes
//! never overlap, so the trees hold disjoint key sets and a range read is the concatenation of
//! its pieces in key order.

/// One prefix kept apart, and whatever the engine holds for it (its tree).
#[derive(Clone)]
pub struct Route<T> {
    prefix: Vec<u8>,
    /// The first key after every key starting with `prefix`.
    end: Vec<u8>,
    tree: T,
}

impl<T> Route<T> {
    /// The route of the keys starting with `prefix`; `None` when no key follows them all (an empty
    /// prefix or one of `0xff` bytes only: it would take the rest of the key space).
    pub fn new(prefix: &[u8], tree: T) -> Option<Self> {
        let end = prefix_end(prefix)?;
        Some(Self { prefix: prefix.to_vec(), end, tree })
    }

    /// The prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The first key after the prefix's keys.
    pub fn end(&self) -> &[u8] {
        &self.end
    }

    /// The tree.
    pub fn tree(&self) -> &T {
        &self.tree
    }

    /// The same prefix with another tree.
    pub fn with_tree<U>(self, tree: U) -> Route<U> {
        Route { prefix: self.prefix, end: self.end, tree }
    }
}

/// The first key greater than every key starting with `prefix` (FoundationDB's `strinc`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|b| *b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// The prefixes kept apart, in key order.
#[derive(Clone)]
pub struct Routes<T> {
    routes: Vec<Route<T>>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

/// One piece of a range: `[begin, end)` in the main tree (`None`) or in a route's tree.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece<'a, T> {
    /// The route's tree, `None` for the main tree.
    pub tree: Option<&'a T>,
    /// First key of the piece.
    pub begin: &'a [u8],
    /// First key after the piece.
    pub end: &'a [u8],
}

impl<T> Routes<T> {
    /// The routes, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Route<T>> {
        self.routes.iter()
    }

    /// Whether `route`'s keys overlap those of a route already here.
    pub fn overlaps<U>(&self, route: &Route<U>) -> bool {
        let at = self.routes.partition_point(|r| r.prefix < route.prefix);
        let overlaps_before = at > 0 && self.routes[at - 1].end > route.prefix;
        overlaps_before || self.routes.get(at).is_some_and(|r| r.prefix < route.end)
    }

    /// Adds `route`; refused (given back) when its keys overlap another route's.
    pub fn add(&mut self, route: Route<T>) -> Result<(), Route<T>> {
        if self.overlaps(&route) {
            return Err(route);
        }
        let at = self.routes.partition_point(|r| r.prefix < route.prefix);
        self.routes.insert(at, route);
        Ok(())
    }

    /// The route holding `key`, `None` for the main tree.
    pub fn tree_of(&self, key: &[u8]) -> Option<&T> {
        // The last route whose prefix is at or before the key is the only one that can start it.
        let at = self.routes.partition_point(|r| r.prefix.as_slice() <= key);
        at.checked_sub(1).map(|i| &self.routes[i]).filter(|r| key.starts_with(&r.prefix)).map(|r| &r.tree)
    }

    /// The non-empty pieces of `[begin, end)`, in key order.
    pub fn pieces<'a>(&'a self, begin: &'a [u8], end: &'a [u8]) -> Vec<Piece<'a, T>> {
        let mut pieces = Vec::new();
        let mut cursor = begin;
        for r in &self.routes {
            if cursor >= end {
                break;
            }
            if r.end.as_slice() <= cursor || r.prefix.as_slice() >= end {
                continue;
            }
            if cursor < r.prefix.as_slice() {
                pieces.push(Piece { tree: None, begin: cursor, end: r.prefix.as_slice() });
                cursor = r.prefix.as_slice();
            }
            let piece_end = r.end.as_slice().min(end);
            pieces.push(Piece { tree: Some(&r.tree), begin: cursor, end: piece_end });
            cursor = piece_end;
        }
        if cursor < end {
            pieces.push(Piece { tree: None, begin: cursor, end });
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(prefixes: &[&[u8]]) -> Routes<usize> {
        let mut routes = Routes::default();
        for (i, p) in prefixes.iter().enumerate() {
            assert!(routes.add(Route::new(p, i).unwrap()).is_ok());
        }
        routes
    }

    #[test]
    fn a_prefix_ends_at_its_increment_past_trailing_ff_bytes() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn a_key_belongs_to_the_route_whose_prefix_starts_it() {
        let r = routes(&[b"q", b"b\x01"]);
        assert_eq!(r.tree_of(b"q"), Some(&0));
        assert_eq!(r.tree_of(b"q\x00\xff"), Some(&0));
        assert_eq!(r.tree_of(b"b\x01z"), Some(&1));
        assert_eq!(r.tree_of(b"b\x02"), None);
        assert_eq!(r.tree_of(b"b"), None);
        assert_eq!(r.tree_of(b"r"), None);
        assert_eq!(r.tree_of(b""), None);
    }

    #[test]
    fn overlapping_prefixes_are_refused() {
        let mut r = routes(&[b"q"]);
        assert!(r.add(Route::new(b"q\x01", 9).unwrap()).is_err());
        assert!(r.add(Route::new(b"q", 9).unwrap()).is_err());
        assert!(r.add(Route::new(b"p", 9).unwrap()).is_ok());
        assert!(r.add(Route::new(b"r", 9).unwrap()).is_ok());
        assert_eq!(
            r.iter().map(|r| r.prefix().to_vec()).collect::<Vec<_>>(),
            vec![b"p".to_vec(), b"q".to_vec(), b"r".to_vec()]
        );
    }

    #[test]
    fn a_range_is_cut_at_every_route_it_crosses() {
        let r = routes(&[b"c", b"f"]);
        let cut = |b: &'static [u8], e: &'static [u8]| {
            r.pieces(b, e).into_iter().map(|p| (p.tree.copied(), p.begin.to_vec(), p.end.to_vec())).collect::<Vec<_>>()
        };
        let v = |s: &[u8]| s.to_vec();
        assert_eq!(
            cut(b"a", b"z"),
            vec![
                (None, v(b"a"), v(b"c")),
                (Some(0), v(b"c"), v(b"d")),
                (None, v(b"d"), v(b"f")),
                (Some(1), v(b"f"), v(b"g")),
                (None, v(b"g"), v(b"z")),
            ]
        );
        assert_eq!(cut(b"c\x05", b"c\x09"), vec![(Some(0), v(b"c\x05"), v(b"c\x09"))]);
        assert_eq!(cut(b"c\x05", b"e"), vec![(Some(0), v(b"c\x05"), v(b"d")), (None, v(b"d"), v(b"e"))]);
        assert_eq!(cut(b"a", b"c"), vec![(None, v(b"a"), v(b"c"))]);
        assert_eq!(cut(b"d", b"f"), vec![(None, v(b"d"), v(b"f"))]);
        assert_eq!(cut(b"x", b"a"), vec![]);
        assert_eq!(cut(b"c", b"c"), vec![]);
    }
}
