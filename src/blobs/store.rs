//! The blob store: where the bytes of images, audios and artifacts live, by object key
//! (`{run}/seq/{name}/{step}.{format}`, `{run}/{artifact path}`; `ingest-storage.md` §4).
//!
//! [`BlobStore`] is the interface, async and object-safe so that an S3 implementation fits beside
//! [`LocalDirStore`], the local directory used by `matyan serve`. Keys are S3-style: `/`-separated
//! and opaque to the store, except that the local store refuses keys that would leave its
//! directory.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use thiserror::Error;

/// Why a blob operation failed.
#[derive(Debug, Error)]
pub enum BlobError {
    /// No object has this key.
    #[error("blob {key:?} not found")]
    NotFound { key: String },
    /// The key cannot name an object of this store (empty, absolute, `.` or `..` components).
    #[error("blob key {key:?} is invalid: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A listing page or delete batch outside the sizes every store accepts.
    #[error("{n} {what} is outside 1..={max}")]
    Count { what: &'static str, n: usize, max: usize },
    /// The store failed.
    #[error("blob {key:?}: {source}")]
    Io { key: String, source: std::io::Error },
}

impl BlobError {
    /// Whether trying again may succeed (a failing store, not a missing object or a bad key).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BlobError::Io { .. })
    }
}

/// An object store keyed by strings. Implementations are shared between requests.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// The bytes of the object `key`.
    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError>;

    /// Stores `bytes` as the object `key`, replacing any previous object; readers see the old
    /// or the new bytes, never a part.
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError>;

    /// Removes the object `key`; removing a missing object succeeds (as S3's `DeleteObject`).
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// One page of the objects whose keys start with `prefix`, in key order, beginning after
    /// `start_after` (exclusive) and holding at most `max_keys` (1 to [`MAX_LIST_PAGE`]) objects.
    /// `prefix` is empty or ends with `/` and is checked with [`check_prefix`]. A page's `next`
    /// is where the following page starts (`None` on the last), as S3's `ListObjectsV2`.
    async fn list(&self, prefix: &str, start_after: Option<&str>, max_keys: usize) -> Result<Listing, BlobError>;

    /// Removes up to [`MAX_DELETE_BATCH`] objects; missing objects count as removed (as S3's
    /// `DeleteObjects`). A failure may leave any subset removed: callers retry the whole batch,
    /// which is idempotent.
    async fn delete_many(&self, keys: &[String]) -> Result<(), BlobError>;
}

/// The most objects one [`BlobStore::list`] page holds (S3's `ListObjectsV2` limit).
pub const MAX_LIST_PAGE: usize = 1000;

/// The most keys one [`BlobStore::delete_many`] call takes (S3's `DeleteObjects` limit).
pub const MAX_DELETE_BATCH: usize = 1000;

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key.
    pub key: String,
    /// The object's size in bytes.
    pub size: u64,
}

/// One page of a [`BlobStore::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The objects of the page, in key order.
    pub objects: Vec<ObjectInfo>,
    /// The `start_after` of the next page, or `None` when this page is the last.
    pub next: Option<String>,
}

/// Refuses a listing prefix that is not empty or a valid key prefix ending with `/` (so a prefix
/// names a whole "directory", as the janitor's `{run_id}/` does). Checked before any IO.
pub fn check_prefix(prefix: &str) -> Result<(), BlobError> {
    if prefix.is_empty() {
        return Ok(());
    }
    match prefix.strip_suffix('/') {
        Some(dir) => check_key(dir),
        None => Err(BlobError::InvalidKey { key: prefix.to_owned(), reason: "a prefix must end with `/`" }),
    }
}

/// Refuses a count outside `min..=max`: a page size outside 1..=[`MAX_LIST_PAGE`], a batch over
/// [`MAX_DELETE_BATCH`] keys.
fn check_count(what: &'static str, n: usize, max: usize, min: usize) -> Result<(), BlobError> {
    if n < min || n > max {
        return Err(BlobError::Count { what, n, max });
    }
    Ok(())
}

/// A blob store over a local directory: the object `a/b/c.png` is the file `<root>/a/b/c.png`.
/// The directory is created on the first `put`, so reading an empty store needs no directory.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// A store rooted at `root`; does no IO.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory of the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key`, refusing keys that could name anything outside the root ([`check_key`]).
    pub fn path_of(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        let mut path = self.root.clone();
        path.extend(key.split('/'));
        Ok(path)
    }
}

/// Refuses a key that is not a relative, `/`-separated path of plain names: empty, absolute, with a
/// NUL byte, an empty, `.` or `..` component, or a component a platform reads as more than a name
/// (a drive prefix). Every store checks keys with it before any IO, and so do the routes that
/// accept keys from clients.
pub fn check_key(key: &str) -> Result<(), BlobError> {
    let invalid = |reason| BlobError::InvalidKey { key: key.to_owned(), reason };
    if key.is_empty() {
        return Err(invalid("empty"));
    }
    if key.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    if key.starts_with('/') || Path::new(key).is_absolute() {
        return Err(invalid("absolute"));
    }
    for part in key.split('/') {
        match part {
            "" => return Err(invalid("empty path component")),
            "." | ".." => return Err(invalid("`.` or `..` component")),
            _ => {}
        }
        if !matches!(Path::new(part).components().next(), Some(Component::Normal(_))) {
            return Err(invalid("not a plain name"));
        }
    }
    Ok(())
}

/// Maps an IO error on `key`: a missing file (or a directory in its place) is a missing object.
fn io_error(key: &str, e: std::io::Error) -> BlobError {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::IsADirectory | ErrorKind::NotADirectory => {
            BlobError::NotFound { key: key.to_owned() }
        }
        _ => BlobError::Io { key: key.to_owned(), source: e },
    }
}

/// Runs blocking file IO off the async workers.
async fn blocking<T: Send + 'static>(
    key: &str,
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Io { key: key.to_owned(), source: std::io::Error::other(e) })?
}

#[async_trait]
impl BlobStore for LocalDirStore {
    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path_of(key)?;
        let owned = key.to_owned();
        blocking(key, move || std::fs::read(&path).map_err(|e| io_error(&owned, e))).await
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let path = self.path_of(key)?;
        let owned = key.to_owned();
        blocking(key, move || {
            let io = |e| BlobError::Io { key: owned.clone(), source: e };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            // Write beside the target and rename over it, so a reader never sees half an object.
            let mut tmp = path.clone().into_os_string();
            tmp.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
            let tmp = PathBuf::from(tmp);
            let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(e));
            }
            Ok(())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path_of(key)?;
        let owned = key.to_owned();
        blocking(key, move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&owned, e)),
        })
        .await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, max_keys: usize) -> Result<Listing, BlobError> {
        check_prefix(prefix)?;
        check_count("keys per page", max_keys, MAX_LIST_PAGE, 1)?;
        let root = self.root.clone();
        let (prefix, after) = (prefix.to_owned(), start_after.map(str::to_owned));
        blocking(&prefix.clone(), move || {
            let mut dir = root.clone();
            dir.extend(prefix.split('/').filter(|p| !p.is_empty()));
            let mut objects = Vec::new();
            walk(&dir, &prefix, &mut objects).map_err(|e| BlobError::Io { key: prefix.clone(), source: e })?;
            objects.sort_by(|a: &ObjectInfo, b| a.key.cmp(&b.key));
            let start = after.map_or(0, |after| objects.partition_point(|o| o.key.as_str() <= after.as_str()));
            let mut page: Vec<ObjectInfo> = objects.drain(start..).take(max_keys + 1).collect();
            let next = (page.len() > max_keys).then(|| {
                page.truncate(max_keys);
                page[max_keys - 1].key.clone()
            });
            Ok(Listing { objects: page, next })
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), BlobError> {
        check_count("keys per delete", keys.len(), MAX_DELETE_BATCH, 0)?;
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }
}

/// Collects the objects under `dir` (whose key prefix is `prefix`), skipping the temporary files
/// of writes in flight. A missing directory holds no objects.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), &format!("{prefix}{name}/"), out)?;
        } else if kind.is_file() && !is_temporary(&name) {
            out.push(ObjectInfo { key: format!("{prefix}{name}"), size: entry.metadata()?.len() });
        }
    }
    Ok(())
}

/// Whether `name` is the temporary file of a `put` in flight (`<name>.<32 hex>.tmp`).
fn is_temporary(name: &str) -> bool {
    name.strip_suffix(".tmp")
        .and_then(|rest| rest.rsplit_once('.'))
        .is_some_and(|(_, id)| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_replace_and_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path().join("blobs"));
        let key = "3f2a/seq/images/0.png";
        assert!(matches!(store.get(key).await, Err(BlobError::NotFound { .. })), "an empty store needs no directory");
        store.put(key, b"\x89PNG one".to_vec()).await.unwrap();
        assert_eq!(store.get(key).await.unwrap(), b"\x89PNG one");
        assert_eq!(std::fs::read(dir.path().join("blobs/3f2a/seq/images/0.png")).unwrap(), b"\x89PNG one");
        store.put(key, Vec::new()).await.unwrap();
        assert_eq!(store.get(key).await.unwrap(), b"");
        store.delete(key).await.unwrap();
        assert!(matches!(store.get(key).await, Err(BlobError::NotFound { .. })));
        store.delete(key).await.unwrap();
        // A "directory" is not an object.
        store.put("a/b", b"x".to_vec()).await.unwrap();
        assert!(matches!(store.get("a").await, Err(BlobError::NotFound { .. })));
        assert!(matches!(store.get("a/b/c").await, Err(BlobError::NotFound { .. })));
        // No temporary files are left behind.
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("blobs/a")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b")]);
    }

    #[tokio::test]
    async fn keys_that_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path().join("blobs"));
        for key in ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", ".", "..", "a/..", "a\0b"] {
            let err = store.get(key).await.unwrap_err();
            assert!(matches!(err, BlobError::InvalidKey { .. }), "{key:?}: {err}");
            assert!(!err.is_retryable());
            assert!(matches!(store.put(key, b"x".to_vec()).await, Err(BlobError::InvalidKey { .. })), "{key:?}");
            assert!(matches!(store.delete(key).await, Err(BlobError::InvalidKey { .. })), "{key:?}");
        }
        assert!(!dir.path().join("x").exists());
        // Dots inside a name are just characters.
        store.put("run/..hidden/a..b", b"ok".to_vec()).await.unwrap();
        assert_eq!(store.get("run/..hidden/a..b").await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn listing_pages_through_a_prefix_in_key_order_and_delete_many_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path().join("blobs"));
        assert_eq!(store.list("run/", None, 10).await.unwrap(), Listing::default(), "no directory yet");
        for i in 0..5 {
            store.put(&format!("run/seq/images/{i}.png"), vec![0; i]).await.unwrap();
        }
        store.put("run/a.txt", b"a".to_vec()).await.unwrap();
        store.put("runner/x", b"x".to_vec()).await.unwrap();
        std::fs::write(dir.path().join("blobs/run/b.txt.0123456789abcdef0123456789abcdef.tmp"), b"").unwrap();
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let page = store.list("run/", after.as_deref(), 2).await.unwrap();
            assert!(page.objects.len() <= 2);
            keys.extend(page.objects.iter().map(|o| o.key.clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let want: Vec<String> =
            std::iter::once("run/a.txt".to_owned()).chain((0..5).map(|i| format!("run/seq/images/{i}.png"))).collect();
        assert_eq!(keys, want, "runner/ is not under run/ and temporary files are not objects");
        let page = store.list("run/seq/", None, 1000).await.unwrap();
        assert_eq!(page.objects[3], ObjectInfo { key: "run/seq/images/3.png".into(), size: 3 });
        assert!(matches!(store.list("run", None, 10).await, Err(BlobError::InvalidKey { .. })));
        assert!(matches!(store.list("../", None, 10).await, Err(BlobError::InvalidKey { .. })));
        assert!(matches!(store.list("run/", None, 0).await, Err(BlobError::Count { .. })));
        store.delete_many(&keys).await.unwrap();
        store.delete_many(&keys).await.unwrap();
        assert!(store.list("run/", None, 10).await.unwrap().objects.is_empty());
        assert_eq!(store.get("runner/x").await.unwrap(), b"x");
        let too_many: Vec<String> = (0..=MAX_DELETE_BATCH).map(|i| format!("k{i}")).collect();
        assert!(matches!(store.delete_many(&too_many).await, Err(BlobError::Count { .. })));
    }
}
