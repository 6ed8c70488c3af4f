//! The library's layering. Its files import each other without cycles: every `crate::…` and `super::…` path
//! in a file's non-test code (doc links included) is resolved to the file that defines the
//! module, and the graph of those edges must be acyclic (a cycle names its files). A file's uses
//! of its own ancestors (`super::` in a child of a `mod.rs`) are how Rust modules nest and are not
//! counted. Its top-level modules (the subsystems) import each other without cycles too; only
//! the tools (`main`, `replay`, `audit`) import `config`; telemetry imports only leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/a/b.rs` and `src/a/b/mod.rs` are `["a", "b"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut m: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

/// The longest prefix of `path` that is a module with a file of its own.
fn resolve(path: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| modules.get(&path[..n]).cloned())
}

/// Each file's non-test code (everything before its first `#[cfg(test)]`).
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    text.split("#[cfg(test)]").next().unwrap_or_default().to_owned()
}

fn paths_in(text: &str, root: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices(root) {
        let rest = &text[at + root.len()..];
        let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        out.push(path.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect());
    }
    out
}

/// Every library file (not `main.rs`), its module path, and the module paths its non-test code
/// names (through `crate::` and `super::`).
fn imports() -> Vec<(PathBuf, Vec<String>, Vec<Vec<String>>)> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    all.retain(|f| !f.ends_with("main.rs"));
    all.into_iter()
        .map(|f| {
            let text = code(&f);
            let here = module_of(&f);
            // `super` is the parent module (for `a/mod.rs` too: its module is `a`).
            let parent = here[..here.len().saturating_sub(1)].to_vec();
            let mut targets: Vec<Vec<String>> = paths_in(&text, "crate::");
            targets.extend(paths_in(&text, "super::").into_iter().map(|p| [parent.clone(), p].concat()));
            (f, here, targets)
        })
        .collect()
}

/// The first cycle in a directed graph, found by depth-first search for a back edge.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        f: &String,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(f) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| s == f).unwrap_or(0);
                return Some(stack[start..].to_vec());
            }
            _ => {}
        }
        state.insert(f.clone(), 1);
        stack.push(f.clone());
        for to in edges.get(f).into_iter().flatten() {
            if let Some(cycle) = visit(to, edges, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(f.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    edges.keys().find_map(|f| visit(f, edges, &mut state, &mut Vec::new()))
}

#[test]
fn the_library_files_import_each_other_without_cycles() {
    let all = imports();
    let modules: BTreeMap<Vec<String>, PathBuf> = all.iter().map(|(f, m, _)| (m.clone(), f.clone())).collect();
    let name = |p: &Path| p.strip_prefix(src()).unwrap().display().to_string();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (f, here, targets) in &all {
        for t in targets {
            if let Some(to) = resolve(t, &modules).filter(|to| to != f && !here.starts_with(&module_of(to))) {
                edges.entry(name(f)).or_default().insert(name(&to));
            }
        }
    }
    assert!(edges.len() > 20, "the scan found the imports: {}", edges.len());
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle between files: {}", cycle.join(" -> "));
    }
}

/// The crate's top-level modules (subsystems) and the ones each imports.
fn module_edges() -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, here, targets) in imports() {
        let Some(from) = here.first() else { continue }; // lib.rs
        for t in targets {
            if let Some(to) = t.first().filter(|to| *to != from) {
                edges.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    edges
}

#[test]
fn the_subsystems_are_layered_without_cycles() {
    let edges = module_edges();
    assert!(edges.len() > 15, "the scan found the modules: {edges:?}");
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle between modules: {}", cycle.join(" -> "));
    }
}

#[test]
fn only_the_tools_import_the_config_and_telemetry_imports_nothing_above_it() {
    let edges = module_edges();
    let importers: Vec<&String> = edges.iter().filter(|(_, to)| to.contains("config")).map(|(m, _)| m).collect();
    // `main.rs` (not scanned) and the two offline tools read the config; every subsystem is
    // given the parts it needs.
    assert_eq!(importers, ["audit", "replay"], "modules importing config");
    // The leaves telemetry may name: what it counts (rejects, risk flags, INT8 saturation) and
    // the thread and readiness types it runs with.
    let leaves = ["clock", "control_thread", "files", "int8", "readiness", "risk_flags", "tick", "proto"];
    let above: Vec<&String> = edges["telemetry"].iter().filter(|m| !leaves.contains(&m.as_str())).collect();
    assert!(above.is_empty(), "telemetry imports {above:?}");
}
