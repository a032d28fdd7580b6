//! What a directory's files take on disk: the storage benchmark's figure, and what the tests that
//! check a store frees its files count.

use std::fs::Metadata;
use std::path::Path;

/// The sum of `size` over the files under `dir`, recursively (0 when it does not exist); a file
/// removed while they are counted (by a flush or a compaction meanwhile) counts 0.
pub fn bytes_under(dir: &Path, size: fn(&Metadata) -> u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => bytes_under(&e.path(), size),
            Ok(m) => size(&m),
            Err(_) => 0,
        })
        .sum()
}

/// A file's length.
pub fn apparent(m: &Metadata) -> u64 {
    m.len()
}

/// The blocks a file occupies (its length where the platform does not say).
pub fn allocated(m: &Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    }
    #[cfg(not(unix))]
    {
        m.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_counted_through_every_level_and_a_missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("x"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("a/b/y"), [0u8; 5000]).unwrap();
        assert_eq!(bytes_under(dir.path(), apparent), 5100);
        assert!(bytes_under(dir.path(), allocated) >= 5100);
        assert_eq!(bytes_under(&dir.path().join("none"), apparent), 0);
    }
}
