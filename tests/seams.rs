//! The seams of the actor core and of ingestion stay one-way: no two files of `src/actors/` or of
//! `src/ingest/` import each other, directly or in a circle (issue 10, "Done when").
//!
//! The check reads the sources: a file imports a sibling when its code (its `mod tests` left out:
//! there `super` is the file itself, and tests may lean on test support) names `super::sibling`,
//! `crate::<dir>::sibling`, or an item the directory's `mod.rs` re-exports from that sibling.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The files of `dir` (without `mod.rs`) and the siblings each one imports.
fn imports(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&root).expect("the directory reads") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let stem = path.file_stem().and_then(|s| s.to_str()).expect("a utf-8 name").to_owned();
            files.insert(stem, code_of(&std::fs::read_to_string(&path).expect("the file reads")));
        }
    }
    let reexports = files.get("mod").map(|m| reexported(m, &files)).unwrap_or_default();
    let resolve = |name: &str| -> Option<String> {
        if files.contains_key(name) && name != "mod" { Some(name.to_owned()) } else { reexports.get(name).cloned() }
    };
    let mut graph = BTreeMap::new();
    for (stem, code) in files.iter().filter(|(stem, _)| *stem != "mod") {
        let mut targets = BTreeSet::new();
        for prefix in ["super::".to_owned(), format!("crate::{dir}::")] {
            for first in referenced(code, &prefix) {
                if let Some(target) = resolve(&first).filter(|t| t != stem) {
                    targets.insert(target);
                }
            }
        }
        graph.insert(stem.clone(), targets);
    }
    graph
}

/// The code of a file: without its `#[cfg(test)] mod tests` and without comments.
fn code_of(text: &str) -> String {
    let mut end = text.len();
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        if text[at + "#[cfg(test)]".len()..].trim_start().starts_with("mod tests") {
            end = at;
            break;
        }
        from = at + 1;
    }
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment of every path that follows `prefix` in `code` (each entry of a
/// `prefix{a, b::C}` group).
fn referenced(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(prefix) {
        let at = from + i;
        from = at + prefix.len();
        // `super::super::` leaves the directory.
        if prefix == "super::" && code[..at].ends_with("super::") {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(top_level_entries(group).into_iter().filter_map(|e| first_segment(&e)));
        } else if let Some(first) = first_segment(rest) {
            out.push(first);
        }
    }
    out
}

/// The comma-separated entries of a `{…}` group whose opening brace was just consumed.
fn top_level_entries(group: &str) -> Vec<String> {
    let mut depth = 0;
    let mut entries = vec![String::new()];
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                entries.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = entries.last_mut() {
            last.push(c);
        }
    }
    entries
}

fn first_segment(path: &str) -> Option<String> {
    let ident: String = path.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!ident.is_empty()).then_some(ident)
}

/// Names `mod.rs` re-exports (`pub use sibling::{A, B as C}`), each mapped to its sibling.
fn reexported(module: &str, files: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for statement in module.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else { continue };
        let path = path.trim().trim_start_matches("self::");
        let Some((sibling, items)) = path.split_once("::") else { continue };
        if !files.contains_key(sibling) {
            continue;
        }
        let items = items.trim();
        let names: Vec<String> = match items.strip_prefix('{') {
            Some(group) => top_level_entries(group),
            None => vec![items.to_owned()],
        };
        for name in names {
            let name = name.trim();
            let exported = name.rsplit(" as ").next().unwrap_or(name);
            let exported = exported.rsplit("::").next().unwrap_or(exported).trim();
            if !exported.is_empty() {
                out.insert(exported.to_owned(), sibling.to_owned());
            }
        }
    }
    out
}

/// Every circle of `graph` (each once, starting at its smallest file), as `a → b → a`.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        found: &mut BTreeSet<String>,
    ) {
        let Some(last) = path.last().cloned() else { return };
        for next in graph.get(&last).into_iter().flatten() {
            if next == start {
                found.insert(format!("{} → {start}", path.join(" → ")));
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                walk(graph, start, path, found);
                path.pop();
            }
        }
    }
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        walk(graph, start, &mut vec![start.clone()], &mut found);
    }
    found.into_iter().collect()
}

#[test]
fn no_two_files_of_the_actors_or_of_ingest_import_each_other_directly_or_in_a_circle() {
    for dir in ["actors", "ingest"] {
        let graph = imports(dir);
        assert!(graph.len() > 3, "src/{dir} was read: {graph:?}");
        let found = circles(&graph);
        assert!(found.is_empty(), "import circles in src/{dir}:\n{}\n(imports: {graph:#?})", found.join("\n"));
    }
}

#[test]
fn the_circle_check_finds_a_direct_pair_and_a_longer_circle() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["a", "c"]), ("c", vec!["d"]), ("d", vec!["b"])]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
            .collect();
    assert_eq!(circles(&graph), ["a → b → a", "b → c → d → b"]);
    let code = "use super::{flush::Flusher, models::{A, B}};\nuse crate::ingest::{Batch, dlq::X};\n// super::lag\n";
    assert_eq!(referenced(&code_of(code), "super::"), ["flush", "models"]);
    assert_eq!(referenced(code, "crate::ingest::"), ["Batch", "dlq"]);
}
