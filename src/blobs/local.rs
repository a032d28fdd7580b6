//! The local-directory blob store of `matyan serve`: the object `a/b/c.png` is the file
//! `<root>/a/b/c.png`, holding exactly the object's bytes.
//!
//! Content types live in a sidecar tree, `<root>/.matyan-content-types/<key>` (a small text file,
//! written only for a type other than [`DEFAULT_CONTENT_TYPE`]). Why a separate tree rather than a
//! header in the object file or a sidecar beside it: the object file stays the raw bytes (sizes
//! come from file metadata without reading, and existing stores and operators' tools keep
//! working); a listing skips the whole tree with one name comparison at the root instead of
//! filtering every file; and no extended attributes are needed from the filesystem. The price is
//! one reserved first key component, refused by this store, and a short window during a `put`
//! that replaces an object where a reader may see the new bytes with the old type.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};

use super::store::{
    Blob, BlobError, BlobReader, BlobStore, DEFAULT_CONTENT_TYPE, Listing, MAX_DELETE_BATCH, MAX_LIST_PAGE, ObjectInfo,
    ObjectMeta, check_count, check_key, check_prefix,
};

/// The first key component reserved for the content-type sidecars.
const TYPES_DIR: &str = ".matyan-content-types";

/// Chunk size of streamed reads.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// A blob store over a local directory. The directory is created on the first `put`, so reading
/// an empty store needs no directory.
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

    /// The file of `key`, refusing keys that could name anything outside the root ([`check_key`])
    /// and keys in the sidecar tree.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        if key.split('/').next() == Some(TYPES_DIR) {
            return Err(BlobError::InvalidKey { key: key.to_owned(), reason: "reserved by the local blob store" });
        }
        let mut path = self.root.clone();
        path.extend(key.split('/'));
        Ok(path)
    }

    /// The content-type sidecar of a valid `key`.
    fn type_path(&self, key: &str) -> PathBuf {
        let mut path = self.root.join(TYPES_DIR);
        path.extend(key.split('/'));
        path
    }

    /// The object file and content-type sidecar of `key`.
    fn paths(&self, key: &str) -> Result<(PathBuf, PathBuf), BlobError> {
        Ok((self.path_of(key)?, self.type_path(key)))
    }
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

/// The content type recorded for an object (its sidecar), the default when there is none.
fn read_type(key: &str, path: &Path) -> Result<String, BlobError> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.is_empty() => Ok(t),
        Ok(_) => Ok(DEFAULT_CONTENT_TYPE.to_owned()),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            Ok(DEFAULT_CONTENT_TYPE.to_owned())
        }
        Err(e) => Err(BlobError::Io { key: key.to_owned(), source: e }),
    }
}

/// Writes `bytes` to `path` through a temporary file renamed over it, so a reader never sees a
/// part; creates the parent directories.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Removes a file; a missing one is already removed.
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[async_trait]
impl BlobStore for LocalDirStore {
    async fn get(&self, key: &str) -> Result<Blob, BlobError> {
        let (path, type_path) = self.paths(key)?;
        let owned = key.to_owned();
        blocking(key, move || {
            let bytes = std::fs::read(&path).map_err(|e| io_error(&owned, e))?;
            Ok(Blob { bytes, content_type: read_type(&owned, &type_path)? })
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, BlobError> {
        let (path, type_path) = self.paths(key)?;
        let owned = key.to_owned();
        blocking(key, move || {
            let meta = std::fs::metadata(&path).map_err(|e| io_error(&owned, e))?;
            if !meta.is_file() {
                return Err(BlobError::NotFound { key: owned });
            }
            Ok(ObjectMeta { size: meta.len(), content_type: read_type(&owned, &type_path)? })
        })
        .await
    }

    async fn open(&self, key: &str) -> Result<BlobReader, BlobError> {
        let (path, type_path) = self.paths(key)?;
        let owned = key.to_owned();
        let (file, meta) = blocking(key, move || {
            let file = std::fs::File::open(&path).map_err(|e| io_error(&owned, e))?;
            let size = file.metadata().map_err(|e| io_error(&owned, e))?;
            if !size.is_file() {
                return Err(BlobError::NotFound { key: owned });
            }
            Ok((file, ObjectMeta { size: size.len(), content_type: read_type(&owned, &type_path)? }))
        })
        .await?;
        let owned = key.to_owned();
        let body = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), READ_CHUNK_BYTES)
            .map_err(move |e| BlobError::Io { key: owned.clone(), source: e })
            .boxed();
        Ok(BlobReader { meta, body })
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: Option<&str>) -> Result<(), BlobError> {
        let (path, type_path) = self.paths(key)?;
        let owned = key.to_owned();
        let content_type = content_type.filter(|t| *t != DEFAULT_CONTENT_TYPE).map(str::to_owned);
        blocking(key, move || {
            let io = |e| BlobError::Io { key: owned.clone(), source: e };
            write_atomically(&path, &bytes).map_err(io)?;
            match content_type {
                Some(t) => write_atomically(&type_path, t.as_bytes()).map_err(io),
                None => remove_if_present(&type_path).map_err(io),
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let (path, type_path) = self.paths(key)?;
        let owned = key.to_owned();
        blocking(key, move || {
            // The object first: a failure between the two leaves an orphan sidecar, which a later
            // put of the key replaces, rather than an object that lost its type.
            remove_if_present(&path).map_err(|e| io_error(&owned, e))?;
            remove_if_present(&type_path).map_err(|e| io_error(&owned, e))
        })
        .await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, max_keys: usize) -> Result<Listing, BlobError> {
        check_prefix(prefix)?;
        check_count("keys per page", max_keys, MAX_LIST_PAGE, 1)?;
        if prefix.split('/').next() == Some(TYPES_DIR) {
            return Err(BlobError::InvalidKey { key: prefix.to_owned(), reason: "reserved by the local blob store" });
        }
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
/// of writes in flight and, at the root, the content-type sidecars. A missing directory holds no
/// objects.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if prefix.is_empty() && name == TYPES_DIR {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), &format!("{prefix}{name}/"), out)?;
        } else if kind.is_file() && !is_temporary(&name) {
            match entry.metadata() {
                Ok(meta) => out.push(ObjectInfo { key: format!("{prefix}{name}"), size: meta.len() }),
                // Deleted between the directory read and the stat (a janitor at work): not an object.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
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
    async fn objects_are_plain_files_and_content_types_live_in_a_sidecar_tree_listings_skip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path().join("blobs"));
        let key = "3f2a/seq/images/0.png";
        assert!(matches!(store.get(key).await, Err(BlobError::NotFound { .. })), "an empty store needs no directory");
        store.put(key, b"\x89PNG one".to_vec(), Some("image/png")).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("blobs/3f2a/seq/images/0.png")).unwrap(), b"\x89PNG one");
        let sidecar = dir.path().join("blobs/.matyan-content-types/3f2a/seq/images/0.png");
        assert_eq!(std::fs::read_to_string(&sidecar).unwrap(), "image/png");
        let all = store.list("", None, 10).await.unwrap();
        assert_eq!(all.objects, vec![ObjectInfo { key: key.to_owned(), size: 8 }], "the sidecar is not an object");
        // Replacing without a type drops the sidecar; deleting removes both.
        store.put(key, b"x".to_vec(), None).await.unwrap();
        assert!(!sidecar.exists());
        store.put(key, b"x".to_vec(), Some("image/gif")).await.unwrap();
        store.delete(key).await.unwrap();
        assert!(!sidecar.exists());
        // A "directory" is not an object, and no temporary files are left behind.
        store.put("a/b", b"x".to_vec(), None).await.unwrap();
        assert!(matches!(store.head("a").await, Err(BlobError::NotFound { .. })));
        assert!(matches!(store.open("a").await, Err(BlobError::NotFound { .. })));
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("blobs/a")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b")]);
    }

    #[tokio::test]
    async fn the_sidecar_tree_is_reserved_and_temporary_files_are_not_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path().join("blobs"));
        for key in [".matyan-content-types/x", ".matyan-content-types"] {
            assert!(matches!(store.put(key, b"x".to_vec(), None).await, Err(BlobError::InvalidKey { .. })), "{key}");
        }
        assert!(matches!(store.list(".matyan-content-types/", None, 10).await, Err(BlobError::InvalidKey { .. })));
        store.put("run/a.txt", b"a".to_vec(), None).await.unwrap();
        std::fs::write(dir.path().join("blobs/run/b.txt.0123456789abcdef0123456789abcdef.tmp"), b"").unwrap();
        let keys: Vec<_> = store.list("run/", None, 10).await.unwrap().objects.into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["run/a.txt"]);
    }
}
