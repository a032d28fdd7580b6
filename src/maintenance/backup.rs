//! `backup` and `restore` of runs, through an archive of their keys (`docs/backup-format.md`):
//! JSON lines, a header naming the runs, one line per key (its directory, and its key and value
//! bytes in hex, the key without the directory's prefix so that it restores into any store), and
//! an end line that tells a complete archive from a cut one.
//!
//! Both stream: `backup` reads each run in pages and writes `<out>.partial` as it reads, renamed to
//! `<out>` at the end; it does not resume (it writes nothing to the store). `restore` reads the
//! archive twice, once to check it whole (an incomplete archive restores nothing) and once to
//! apply it. It writes the run data in batches within the byte budget, then, per run, one
//! transaction with the meta, the index entries, the experiment and tag links (recreating a
//! deleted experiment or tag) and the tombstone cleared: a run appears whole or not at all, and a
//! restore that stops resumes at the archive line after its last batch.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use crate::storage::kv::{RangeOption, Transaction};
use crate::storage::layout::EntityKind;
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

use super::progress::{Ctx, key_after};
use super::{MaintenanceError, Outcome};

/// The `format` of the archive's header line.
pub const ARCHIVE_FORMAT: &str = "matyan-run-backup";
/// The archive version this build writes and reads.
const ARCHIVE_VERSION: u64 = 1;
/// Keys read per transaction while backing up a run.
const READ_PAGE: usize = 10_000;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaintenanceError + '_ {
    move |source| MaintenanceError::Io { path: path.to_path_buf(), source }
}

fn key_line(run: &str, dir: &str, suffix: &[u8], val: &[u8]) -> String {
    json!({"run": run, "dir": dir, "key": hex::encode(suffix), "value": hex::encode(val)}).to_string()
}

pub async fn backup(ctx: &Ctx<'_>, runs: &[String], out: &Path) -> Result<Outcome, MaintenanceError> {
    if runs.is_empty() {
        return Err(MaintenanceError::Refused("name at least one run to back up (--run)".into()));
    }
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let file = std::fs::File::create(&partial).map_err(io(&partial))?;
    let mut w = BufWriter::new(file);
    let header = json!({
        "format": ARCHIVE_FORMAT,
        "version": ARCHIVE_VERSION,
        "created_at": crate::clock::now_secs(),
        "runs": runs,
    });
    writeln!(w, "{header}").map_err(io(&partial))?;
    ctx.start("backup", runs.len() as u64, 0);
    let mut keys = 0u64;
    for (i, run) in runs.iter().enumerate() {
        keys += write_run(ctx, run, &mut |line: String| writeln!(w, "{line}").map_err(io(&partial))).await?;
        ctx.advance(i as u64 + 1);
    }
    writeln!(w, "{}", json!({"end": true, "runs": runs.len(), "keys": keys})).map_err(io(&partial))?;
    w.into_inner().map_err(|e| io(&partial)(e.into_error()))?.sync_all().map_err(io(&partial))?;
    std::fs::rename(&partial, out).map_err(io(out))?;
    Ok(Outcome::Done(format!("backed up {} runs ({keys} keys) to {}", runs.len(), out.display())))
}

/// Writes every archive line of `run` through `emit` as it reads them (a run of any size takes no
/// more memory than a page): its ⟨runs⟩ keys, its index entries (forward and `_rev`), and its
/// ⟨system⟩ links with the experiment's and tags' records. Returns how many.
async fn write_run(
    ctx: &Ctx<'_>,
    run: &str,
    emit: &mut impl FnMut(String) -> Result<(), MaintenanceError>,
) -> Result<u64, MaintenanceError> {
    let dirs = &ctx.layout.dirs;
    let runs = &ctx.layout.runs.runs;
    let exists = ctx.txn(|tx| async move { Ok(runs.exists(&tx, run, true).await?) }).await?;
    if !exists {
        return Err(MaintenanceError::Refused(format!("run {run} has no meta: there is nothing to back up")));
    }
    let mut n = 0u64;
    let (begin, end) = runs.range(run, &[]);
    let mut from = begin;
    loop {
        let kvs = ctx
            .txn(|tx| {
                let opt = RangeOption::new(from.clone(), end.clone()).limit(READ_PAGE);
                async move { Ok(tx.get_range(&opt, true).await?) }
            })
            .await?;
        for kv in &kvs {
            emit(key_line(run, "runs", &kv.key[dirs.runs.len()..], &kv.value))?;
            n += 1;
        }
        match kvs.last() {
            Some(last) if kvs.len() == READ_PAGE => from = key_after(&last.key),
            _ => break,
        }
    }
    let rest = ctx
        .txn(|tx| async move {
            let mut rest = Vec::new();
            let idx = ctx.layout.indexes();
            for entry in idx.entries_of_run(&tx, run, None).await? {
                let mut rev = vec![Elem::from(crate::storage::layout::indexes::REV), Elem::from(run)];
                rev.extend(entry.iter().cloned());
                rest.push(key_line(run, "indexes", &tuple::pack(&entry), b""));
                rest.push(key_line(run, "indexes", &tuple::pack(&rev), b""));
            }
            let sys = &ctx.layout.system;
            let mut system =
                |elems: Vec<Elem>, val: Vec<u8>| rest.push(key_line(run, "system", &tuple::pack(&elems), &val));
            let link = [Elem::from("run_experiment"), Elem::from(run)];
            if let Some(val) = tx.get(&sys.key(&link), false).await? {
                if let Ok(Value::Str(uuid)) = value::decode(&val) {
                    for (field, v) in sys.get(&tx, EntityKind::Experiment, &uuid).await?.unwrap_or_default() {
                        system(entity_key("experiments", &uuid, &field), enc(&v)?);
                    }
                    system(
                        vec![Elem::from("experiment_runs"), Elem::from(uuid.as_str()), Elem::from(run)],
                        enc(&Value::Bool(true))?,
                    );
                }
                system(link.to_vec(), val);
            }
            for tag in sys.tags_of_run(&tx, run).await? {
                for (field, v) in sys.get(&tx, EntityKind::Tag, &tag).await?.unwrap_or_default() {
                    system(entity_key("tags", &tag, &field), enc(&v)?);
                }
                system(
                    vec![Elem::from("tag_runs"), Elem::from(tag.as_str()), Elem::from(run)],
                    enc(&Value::Bool(true))?,
                );
                system(
                    vec![Elem::from("run_tags"), Elem::from(run), Elem::from(tag.as_str())],
                    enc(&Value::Bool(true))?,
                );
            }
            Ok(rest)
        })
        .await?;
    for line in rest {
        emit(line)?;
        n += 1;
    }
    Ok(n)
}

fn entity_key(kind: &str, uuid: &str, field: &str) -> Vec<Elem> {
    vec![Elem::from(kind), Elem::from(uuid), Elem::from(field)]
}

fn enc(v: &Value) -> Result<Vec<u8>, MaintenanceError> {
    value::encode(v).map_err(|e| MaintenanceError::Archive(format!("cannot encode {v:?}: {e}")))
}

/// One key line of an archive.
#[derive(Debug, Clone)]
struct KeyLine {
    run: String,
    dir: String,
    suffix: Vec<u8>,
    value: Vec<u8>,
}

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
struct Scan {
    runs: Vec<(String, usize, usize)>,
    keys: usize,
}

/// The key lines of an archive, numbered from 0, read one at a time; the header and the end line
/// are checked as they pass.
fn key_lines(
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
fn scan(path: &Path) -> Result<Scan, MaintenanceError> {
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
fn is_final(line: &KeyLine) -> bool {
    if line.dir != "runs" {
        return true;
    }
    matches!(tuple::unpack(&line.suffix).ok().as_deref(), Some([_, Elem::Str(part), ..]) if part == "meta")
}

pub async fn restore(ctx: &Ctx<'_>, path: &Path, replace: bool, dry_run: bool) -> Result<Outcome, MaintenanceError> {
    const JOB: &str = "restore";
    let scan = scan(path)?;
    let size = std::fs::metadata(path).map_err(io(path))?.len();
    let params = format!("archive={} size={size} replace={replace}", path.display());
    let mut p = ctx.resume(JOB, &params, 0.0).await?;
    let total = scan.keys as u64;
    ctx.start(JOB, total, p.done);
    if dry_run {
        for (run, first, last) in &scan.runs {
            let exists = ctx.txn(|tx| async move { Ok(ctx.layout.runs.runs.exists(&tx, run, true).await?) }).await?;
            let note = match (exists, replace) {
                (false, _) => "",
                (true, true) => ", replacing the run in the store",
                (true, false) => ", but the run exists in the store: it would be refused without --replace",
            };
            ctx.line(format!("[dry-run] Would restore run {run} ({} keys){note}", last - first + 1));
        }
        return Ok(Outcome::Done(format!("[dry-run] would restore {} runs ({total} keys)", scan.runs.len())));
    }
    let cursor = |p: &super::progress::Progress| {
        <[u8; 8]>::try_from(p.cursor.as_slice()).map(u64::from_be_bytes).unwrap_or(0) as usize
    };
    let mut lines = key_lines(path)?;
    for (run, first, last) in &scan.runs {
        let from = cursor(&p);
        if *last < from {
            // Restored by an earlier start: skip its lines.
            for item in lines.by_ref().take(last - first + 1) {
                item?;
            }
            continue;
        }
        if *first >= from {
            let exists = ctx.txn(|tx| async move { Ok(ctx.layout.runs.runs.exists(&tx, run, false).await?) }).await?;
            if exists && !replace {
                return Err(MaintenanceError::Refused(format!(
                    "run {run} exists in the store: pass --replace to overwrite it with the archive's"
                )));
            }
            if exists {
                ctx.txn(|tx| async move {
                    let idx = ctx.layout.indexes();
                    idx.deindex_run(&tx, run, None).await?;
                    ctx.layout.system.remove_associations(&tx, idx, run).await?;
                    ctx.layout.runs.runs.clear_run(&tx, run);
                    Ok(())
                })
                .await?;
            }
        }
        let mut finals: Vec<KeyLine> = Vec::new();
        let mut pending: Vec<(usize, KeyLine)> = Vec::new();
        let mut pending_bytes = 0usize;
        for item in lines.by_ref().take(last - first + 1) {
            let (i, line) = item?;
            if is_final(&line) {
                // Needed for the run's last transaction even when its data was written before a stop.
                finals.push(line);
                continue;
            }
            if i < from {
                continue;
            }
            pending_bytes += line.suffix.len() + line.value.len() + ctx.layout.dirs.runs.len();
            pending.push((i, line));
            if pending_bytes >= ctx.settings.max_txn_bytes {
                if let Some(stop) = write_data(ctx, JOB, &mut p, &pending).await? {
                    return Ok(stop);
                }
                pending.clear();
                pending_bytes = 0;
            }
        }
        if !pending.is_empty()
            && let Some(stop) = write_data(ctx, JOB, &mut p, &pending).await?
        {
            return Ok(stop);
        }
        let mut next = p.clone();
        next.cursor = (*last as u64 + 1).to_be_bytes().to_vec();
        next.done = *last as u64 + 1;
        let warnings = ctx
            .txn(|tx| {
                let (finals, next) = (&finals, &next);
                async move {
                    let warnings = finish_run(ctx, &tx, run, finals).await?;
                    ctx.save(&tx, JOB, next)?;
                    Ok(warnings)
                }
            })
            .await?;
        for w in warnings {
            ctx.line(w);
        }
        p = next;
        ctx.line(format!("restored run {run}"));
        if let Some(stop) = ctx.batch_committed(JOB, p.done) {
            return Ok(stop);
        }
    }
    ctx.finish(JOB).await?;
    Ok(Outcome::Done(format!("restored {} runs ({total} keys) from {}", scan.runs.len(), path.display())))
}

/// Writes one batch of a run's data lines and the progress after them.
async fn write_data(
    ctx: &Ctx<'_>,
    job: &str,
    p: &mut super::progress::Progress,
    lines: &[(usize, KeyLine)],
) -> Result<Option<Outcome>, MaintenanceError> {
    let Some(&(last, _)) = lines.last() else { return Ok(None) };
    let mut next = p.clone();
    next.cursor = (last as u64 + 1).to_be_bytes().to_vec();
    next.done = last as u64 + 1;
    ctx.txn(|tx| {
        let next = &next;
        async move {
            for (_, line) in lines {
                let mut key = ctx.layout.dirs.runs.clone();
                key.extend_from_slice(&line.suffix);
                tx.set(&key, &line.value);
            }
            ctx.save(&tx, job, next)
        }
    })
    .await?;
    *p = next;
    Ok(ctx.batch_committed(job, p.done))
}

/// The last transaction of a run: meta (without `pending_deletion`), index entries (experiment
/// and tag entries come from the links, under today's names), links (recreating an experiment or
/// tag deleted since the backup, unless its name was taken since), and the tombstone cleared.
async fn finish_run(
    ctx: &Ctx<'_>,
    tx: &Transaction,
    run: &str,
    finals: &[KeyLine],
) -> Result<Vec<String>, MaintenanceError> {
    let dirs = &ctx.layout.dirs;
    let (idx, sys) = (ctx.layout.indexes(), &ctx.layout.system);
    let mut entities: BTreeMap<(&'static str, String), Vec<(String, Value)>> = BTreeMap::new();
    let mut experiment = None;
    let mut tags = Vec::new();
    let corrupt = |what: &str| MaintenanceError::Archive(format!("run {run}: {what}"));
    for line in finals {
        let elems = tuple::unpack(&line.suffix).map_err(|e| corrupt(&format!("key does not unpack: {e}")))?;
        let name = |i: usize| match elems.get(i) {
            Some(Elem::Str(s)) => Some(s.as_str()),
            _ => None,
        };
        match line.dir.as_str() {
            "runs" => {
                if name(2) != Some("pending_deletion") {
                    tx.set(&[dirs.runs.as_slice(), &line.suffix].concat(), &line.value);
                }
            }
            "indexes" => {
                let kind = if name(0) == Some(crate::storage::layout::indexes::REV) { name(2) } else { name(0) };
                if !matches!(kind, Some("experiment" | "tag")) {
                    tx.set(&[dirs.indexes.as_slice(), &line.suffix].concat(), &line.value);
                }
            }
            _ => match (name(0), name(1), name(2)) {
                (Some(kind @ ("experiments" | "tags")), Some(uuid), Some(field)) => {
                    let v = value::decode(&line.value).map_err(|e| corrupt(&format!("{kind} value: {e}")))?;
                    let kind = if kind == "experiments" { "experiments" } else { "tags" };
                    entities.entry((kind, uuid.to_owned())).or_default().push((field.to_owned(), v));
                }
                (Some("run_experiment"), _, _) => {
                    if let Ok(Value::Str(u)) = value::decode(&line.value) {
                        experiment = Some(u);
                    }
                }
                (Some("run_tags"), _, Some(tag)) => tags.push(tag.to_owned()),
                _ => {}
            },
        }
    }
    let mut warnings = Vec::new();
    if let Some(uuid) = experiment {
        let fields = entities.get(&("experiments", uuid.clone())).cloned().unwrap_or_default();
        if ensure_entity(ctx, tx, EntityKind::Experiment, &uuid, &fields, &mut warnings).await? {
            sys.link_experiment(tx, idx, run, Some(&uuid)).await?;
        }
    }
    for tag in tags {
        let fields = entities.get(&("tags", tag.clone())).cloned().unwrap_or_default();
        if ensure_entity(ctx, tx, EntityKind::Tag, &tag, &fields, &mut warnings).await? {
            sys.link_tag(tx, idx, run, &tag).await?;
        }
    }
    idx.clear_tombstone(tx, run);
    Ok(warnings)
}

/// Whether the experiment or tag `uuid` exists, recreating it from the archive's record (with a
/// zero `run_count`) when it was deleted and its name is free.
async fn ensure_entity(
    ctx: &Ctx<'_>,
    tx: &Transaction,
    kind: EntityKind,
    uuid: &str,
    fields: &[(String, Value)],
    warnings: &mut Vec<String>,
) -> Result<bool, MaintenanceError> {
    let sys = &ctx.layout.system;
    if sys.get(tx, kind, uuid).await?.is_some() {
        return Ok(true);
    }
    let Some((_, Value::Str(name))) = fields.iter().find(|(f, _)| f == "name") else {
        warnings.push(format!("{} {uuid} is gone and the archive has no record of it: not linked", kind.key_name()));
        return Ok(false);
    };
    if let Some(other) = sys.uuid_by_name(tx, kind, name).await? {
        warnings.push(format!(
            "{} {uuid} is gone and its name {name:?} now belongs to {other}: not linked",
            kind.key_name()
        ));
        return Ok(false);
    }
    let record: Vec<(&str, Value)> =
        fields.iter().map(|(f, v)| (f.as_str(), if f == "run_count" { Value::Int(0) } else { v.clone() })).collect();
    sys.put_fields(tx, kind, uuid, &record)?;
    let by_name = if kind == EntityKind::Experiment { "experiments_by_name" } else { "tags_by_name" };
    tx.set(&sys.key(&[Elem::from(by_name), Elem::from(name.as_str())]), &enc(&Value::from(uuid))?);
    warnings.push(format!("recreated {} {name:?} ({uuid}) from the archive", kind.key_name()));
    Ok(true)
}
