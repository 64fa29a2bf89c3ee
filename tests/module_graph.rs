//! The dependency rule, checked: no cycle between the top-level modules of `src/`.
//!
//! Reads every `src/**/*.rs`, maps each file to its top-level module (`src/<m>.rs` or
//! `src/<m>/…`; `main.rs` and `lib.rs` are crate roots), and collects the modules it names
//! through `crate::<m>` (in `use` lines and in code, each item of `use crate::{a, b::…}`
//! too), comments left out. Test code counts: a cycle through tests still tangles the
//! modules. A failure names each cycle with the file:line of every edge in it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeMap<String, String>>;

#[test]
fn top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(
        graph.len() > 5,
        "found only {} modules under {}",
        graph.len(),
        src.display()
    );
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "module cycles in src/ (the dependency rule is in ARCHITECTURE.md / DESIGN.md §2):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_check_sees_a_cycle() {
    // The parser and the cycle search, on a graph made by hand: a -> b -> c -> a, d -> a.
    let mut g = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), format!("src/{a}.rs:1"));
        g.entry(b.into()).or_default();
    }
    let found = cycles(&g);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("a -> b -> c -> a"), "{}", found[0]);
    let code =
        "use crate::{api, body::{self, Body}};\n// crate::cache\nlet x = crate::oci::Digest;";
    let names: Vec<_> = references(&strip_comments(code))
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(names, ["api", "body", "oci"]);
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to; `None` for the crate roots and `src/bin/`.
fn module_of(rel: &Path) -> Option<String> {
    let parts: Vec<_> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [file] => {
            let stem = file.trim_end_matches(".rs");
            (stem != "main" && stem != "lib").then(|| stem.to_string())
        }
        [dir, ..] if dir != "bin" => Some(dir.clone()),
        _ => None,
    }
}

/// Module -> module it names -> where (the first `file:line` seen).
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(f.strip_prefix(src).expect("under src")))
        .collect();
    let mut g: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for f in &files {
        let rel = f.strip_prefix(src).expect("under src");
        let Some(from) = module_of(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (line, to) in references(&strip_comments(&text)) {
            if to != from && modules.contains(&to) {
                g.get_mut(&from)
                    .expect("every module is a node")
                    .entry(to)
                    .or_insert_with(|| format!("src/{}:{line}", rel.display()));
            }
        }
    }
    g
}

/// Blanks `//` and `/* */` comments (doc comments included), keeping line numbers.
fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut depth) = (0, 0usize);
    while i < b.len() {
        if depth == 0 && b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if depth > 0 && b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
        } else {
            let ch = text[i..].chars().next().expect("a char at a char boundary");
            if depth == 0 || ch == '\n' {
                out.push(ch);
            }
            i += ch.len_utf8();
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// `(line, module)` for every `crate::m` and every item of `crate::{a, b::…}`.
fn references(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `$crate::`, `mycrate::`
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            for item in top_level_items(group) {
                let name = ident_at(item.trim_start());
                if !name.is_empty() {
                    out.push((line, name.to_string()));
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                out.push((line, name.to_string()));
            }
        }
    }
    out
}

/// The comma-separated items of a brace group up to its closing brace (nested groups stay
/// inside their item).
fn top_level_items(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0usize, 0, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// The shortest cycle through each module that is on one, each once, shortest first,
/// written as `a -> b -> a` with the place of every edge.
fn cycles(g: &Graph) -> Vec<String> {
    let mut rings: BTreeSet<(usize, Vec<&String>)> = BTreeSet::new();
    for start in g.keys() {
        // The shortest way back to `start`, if there is one (breadth first).
        let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut back = None;
        'search: while let Some(n) = queue.pop_front() {
            for next in g[n].keys() {
                if next == start {
                    back = Some(n);
                    break 'search;
                }
                if !prev.contains_key(next) {
                    prev.insert(next, n);
                    queue.push_back(next);
                }
            }
        }
        let Some(mut n) = back else {
            continue;
        };
        let mut ring = vec![start];
        while n != start {
            ring.push(n);
            n = prev[n];
        }
        ring[1..].reverse();
        // The same cycle found from another of its modules: start it at its smallest.
        let first = (0..ring.len()).min_by_key(|&i| ring[i]).expect("not empty");
        ring.rotate_left(first);
        rings.insert((ring.len(), ring));
    }
    rings
        .into_iter()
        .map(|(_, mut ring)| {
            ring.push(ring[0]);
            let names: Vec<_> = ring.iter().map(|m| m.as_str()).collect();
            let places: Vec<_> = ring
                .windows(2)
                .map(|w| format!("{}->{} {}", w[0], w[1], g[w[0]][w[1]]))
                .collect();
            format!("{}   ({})", names.join(" -> "), places.join("; "))
        })
        .collect()
}
