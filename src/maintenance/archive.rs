//! The run archive of `backup` and `restore` (`docs/backup-format.md`): JSON lines, a header
//! naming the runs, one line per key (its directory, and its key and value bytes in hex, the key
//! without the directory's prefix so that it restores into any store), and an end line that tells
//! a complete archive from a cut one. Written and read a line at a time.

use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Value as Json, json};

use crate::storage::tuple::{self, Elem};

use super::MaintenanceError;

/// The `format` of the archive's header line.
pub const ARCHIVE_FORMAT: &str = "matyan-run-backup";
/// The archive version this build writes and reads.
pub(super) const ARCHIVE_VERSION: u64 = 1;

/// Maps an IO error on `path` to the job's error.
pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaintenanceError + '_ {
    move |source| MaintenanceError::Io { path: path.to_path_buf(), source }
}

/// The archive line of one key.
pub(super) fn key_line(run: &str, dir: &str, suffix: &[u8], val: &[u8]) -> String {
    json!({"run": run, "dir": dir, "key": hex::encode(suffix), "value": hex::encode(val)}).to_string()
}

/// One key line of an archive.
#[derive(Debug, Clone)]
pub(super) struct KeyLine {
    /// The run the key belongs to.
    pub(super) run: String,
    /// `runs`, `indexes` or `system`.
    pub(super) dir: String,
    /// The packed key without the directory's prefix.
    pub(super) suffix: Vec<u8>,
    /// The value bytes.
    pub(super) value: Vec<u8>,
}

/// Reads key line `n` (0 is the header).
fn parse_key_line(n: usize, json: &Json) -> Result<KeyLine, MaintenanceError> {
    let bad = |what: &str| MaintenanceError::Archive(format!("archive line {}: {what}", n + 1));
    let text = |k: &str| json.get(k).and_then(Json::as_str).ok_or_else(|| bad(&format!("no {k:?}")));
    let bytes = |k: &str| hex::decode(text(k)?).map_err(|_| bad(&format!("{k:?} is not hex")));
    let dir = text("dir")?.to_owned();
    if !["runs", "indexes", "system"].contains(&dir.as_str()) {
        return Err(bad(&format!("unknown directory {dir:?}")));
    }
    Ok(KeyLine { run: text("run")?.to_owned(), dir, suffix: bytes("key")?, value: bytes("value")? })
}

/// What the first pass over an archive found: its runs in order, with the span of each run's key
/// lines (they are contiguous), and the number of key lines.
pub(super) struct Scan {
    /// Each run with the numbers of its first and last key line.
    pub(super) runs: Vec<(String, usize, usize)>,
    /// Key lines in all.
    pub(super) keys: usize,
}

/// The key lines of an archive, numbered from 0, read one at a time; the header and the end line
/// are checked as they pass.
pub(super) fn key_lines(
    path: &Path,
) -> Result<impl Iterator<Item = Result<(usize, KeyLine), MaintenanceError>>, MaintenanceError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let path = path.to_path_buf();
    let mut lines = BufReader::new(file).lines().enumerate();
    Ok(std::iter::from_fn(move || {
        let (n, line) = lines.next()?;
        let parsed = line.map_err(io(&path)).and_then(|line| {
            serde_json::from_str::<Json>(&line)
                .map_err(|e| MaintenanceError::Archive(format!("archive line {}: not JSON: {e}", n + 1)))
        });
        Some(parsed.map(|json| (n, json)))
    })
    .filter_map(|item| match item {
        // The header (line 0) and the end line are checked by `scan`.
        Ok((0, _)) => None,
        Ok((_, json)) if json.get("end").is_some() => None,
        Ok((n, json)) => Some(parse_key_line(n, &json).map(|kl| (n - 1, kl))),
        Err(e) => Some(Err(e)),
    }))
}

/// The first pass: checks the header, every key line, that each run's lines are contiguous and
/// named in the header, and the end line (an archive without it is incomplete).
pub(super) fn scan(path: &Path) -> Result<Scan, MaintenanceError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut header_runs: Vec<String> = Vec::new();
    let mut runs: Vec<(String, usize, usize)> = Vec::new();
    let mut keys = 0usize;
    let mut ended = false;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        let json: Json = serde_json::from_str(&line)
            .map_err(|e| MaintenanceError::Archive(format!("archive line {}: not JSON: {e}", n + 1)))?;
        if ended {
            return Err(MaintenanceError::Archive(format!("archive line {}: after the end line", n + 1)));
        }
        if n == 0 {
            if json.get("format").and_then(Json::as_str) != Some(ARCHIVE_FORMAT) {
                return Err(MaintenanceError::Archive(format!("{} is not a {ARCHIVE_FORMAT} archive", path.display())));
            }
            let version = json.get("version").and_then(Json::as_u64);
            if version != Some(ARCHIVE_VERSION) {
                return Err(MaintenanceError::Archive(format!(
                    "archive version {version:?} is not supported (this build reads {ARCHIVE_VERSION})"
                )));
            }
            header_runs = json
                .get("runs")
                .and_then(Json::as_array)
                .map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
        } else if json.get("end").is_some() {
            if json.get("keys").and_then(Json::as_u64) != Some(keys as u64) {
                return Err(MaintenanceError::Archive("the end line's key count does not match the archive".into()));
            }
            ended = true;
        } else {
            let kl = parse_key_line(n, &json)?;
            if !header_runs.contains(&kl.run) {
                return Err(MaintenanceError::Archive(format!(
                    "archive line {}: run {} is not in the header",
                    n + 1,
                    kl.run
                )));
            }
            let same = runs.last().is_some_and(|(run, _, _)| *run == kl.run);
            if same {
                if let Some((_, _, last)) = runs.last_mut() {
                    *last = keys;
                }
            } else if runs.iter().any(|(r, _, _)| *r == kl.run) {
                return Err(MaintenanceError::Archive(format!(
                    "archive line {}: the lines of run {} are not together",
                    n + 1,
                    kl.run
                )));
            } else {
                runs.push((kl.run, keys, keys));
            }
            keys += 1;
        }
    }
    if !ended {
        return Err(MaintenanceError::Archive(format!(
            "{} has no end line: the archive is incomplete",
            path.display()
        )));
    }
    Ok(Scan { runs, keys })
}

/// Whether a key line is written in the run's last transaction (meta, indexes, links) rather than
/// with its data.
pub(super) fn is_final(line: &KeyLine) -> bool {
    if line.dir != "runs" {
        return true;
    }
    matches!(tuple::unpack(&line.suffix).ok().as_deref(), Some([_, Elem::Str(part), ..]) if part == "meta")
}

/// A value's msgpack bytes, for the archive's lines and the records `restore` recreates.
pub(super) fn enc(v: &crate::storage::value::Value) -> Result<Vec<u8>, MaintenanceError> {
    crate::storage::value::encode(v).map_err(|e| MaintenanceError::Archive(format!("cannot encode {v:?}: {e}")))
}
