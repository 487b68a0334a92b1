//! The driver's shape, checked: every module belongs to one layer and uses only the layers
//! beneath it, no two files depend on each other, and no file or function outgrows what a reader
//! can hold. docs/architecture.md draws the same table.
//!
//! The check reads `crate::` and `super::` paths from the source (outside `#[cfg(test)] mod
//! tests`), so a dependency hidden behind a glob import or a macro escapes it; the crate uses
//! neither for its own modules. Allow-lists name today's known exceptions: an entry that no longer
//! applies fails the test, so they can only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Units from the bottom up; a unit may use units listed before it, never after. A module
/// belongs to the longest unit that prefixes its path.
const LAYERS: &[(&str, &str)] = &[
    ("base", "pure: clock, crash points, fair permits"),
    (
        "obs::metrics",
        "pure: the metric families, a handle recorded into",
    ),
    ("trust", "the trust module's re-exports"),
    ("trust::source", "pure: where a trust bundle comes from"),
    ("trust::bundle", "pure: assembling a bundle"),
    ("trust::rotation", "pure: CA rotation overlap"),
    ("spec", "pure: the typed request and the attribute parser"),
    ("x509", "pure: keys, CSRs, certificate checks"),
    ("files", "I/O: layout, writer, mounts, store, budget"),
    ("kube", "I/O: API client, events, discovery, pods"),
    ("issuer", "I/O: the issuer trait and its backends"),
    ("trust::watch", "I/O: the watch-driven trust cache"),
    ("runtime", "orchestration: scheduler and refresher loops"),
    (
        "volume",
        "orchestration: publish, renew, unpublish, recovery",
    ),
    ("csi", "edge: gRPC services and the error map"),
    ("obs", "edge: ops server and inspect"),
    ("node", "edge: the server"),
    ("demo", "edge: a kubelet-shaped client and the demo"),
    (
        "main",
        "edge: the binary (its own crate: it names the library by public paths only)",
    ),
];

/// Known upward edges `(from unit, to unit)` still to remove.
const ALLOWED_UPWARD: &[(&str, &str)] = &[];

/// Known cycles still to break, each as its members in order.
const ALLOWED_CYCLES: &[&[&str]] = &[];

/// Files over [`MAX_FILE_LINES`] still to split (paths from the workspace root, e.g.
/// `driver/src/volume/mod.rs` or `e2e/src/signer/mod.rs`).
const ALLOWED_LONG_FILES: &[&str] = &[];

/// Functions over the limits still to split: `path::fn_name`.
const ALLOWED_LONG_FNS: &[&str] = &[];

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 80;
const MAX_FN_PARAMS: usize = 5;

struct Module {
    /// `files::mount`; the crate root is "".
    path: String,
    file: PathBuf,
    /// The source outside its `#[cfg(test)] mod tests` block.
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn modules() -> Vec<Module> {
    modules_in(&src_dir())
}

/// Every `.rs` file below `root` as a module of the crate rooted there.
fn modules_in(root: &Path) -> Vec<Module> {
    let root = root.to_path_buf();
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            if parts == ["lib"] {
                parts.clear();
            }
            if parts.last().is_some_and(|l| l == "tests") {
                continue; // a test-only file
            }
            let text = std::fs::read_to_string(&p).unwrap();
            out.push(Module {
                path: parts.join("::"),
                file: p,
                code: strip_tests(&text),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The source without its `#[cfg(test)]` items; the test module, which every file keeps last,
/// ends it.
fn strip_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if lines.peek().is_some_and(|n| n.contains("mod tests")) {
            break;
        }
        // Any other test-only item (an impl, a helper): skip it to its closing brace.
        let mut depth = 0i32;
        for item in lines.by_ref() {
            depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
            if depth <= 0 && (item.trim_end().ends_with('}') || item.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    out
}

/// Drops line comments (doc links name modules without depending on them) and string literals.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' && prev != '\'' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        }
        out.push('\n');
    }
    out
}

/// Module paths a module names: `crate::a::b::Item` and `super::x` resolved against its own path.
fn references(m: &Module, known: &BTreeSet<String>) -> BTreeSet<String> {
    let code = code_only(&m.code);
    let mut out = BTreeSet::new();
    let own: Vec<&str> = if m.path.is_empty() {
        vec![]
    } else {
        m.path.split("::").collect()
    };
    let bytes = code.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let boundary = i == 0 || !is_ident(bytes[i - 1]);
        let start: Option<(Vec<&str>, usize)> = if boundary && rest.starts_with("crate::") {
            Some((vec![], "crate::".len()))
        } else if boundary && rest.starts_with("super::") {
            let mut base = own.clone();
            let mut n = 0;
            while code[i + n..].starts_with("super::") {
                base.pop();
                n += "super::".len();
            }
            Some((base, n))
        } else {
            None
        };
        let Some((mut path, skip)) = start else {
            i += 1;
            continue;
        };
        let tail: String = code[i + skip..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut best = path.join("::");
        for seg in tail.split("::").filter(|s| !s.is_empty()) {
            path.push(seg);
            let candidate = path.join("::");
            if known.contains(&candidate) {
                best = candidate;
            } else {
                break;
            }
        }
        if best != m.path && !best.is_empty() {
            out.insert(best);
        }
        i += skip + tail.len().max(1);
    }
    out
}

fn unit_of(path: &str) -> Option<&'static str> {
    LAYERS
        .iter()
        .map(|(u, _)| *u)
        .filter(|u| path == *u || path.starts_with(&format!("{u}::")))
        .max_by_key(|u| u.len())
}

fn rank(unit: &str) -> usize {
    LAYERS.iter().position(|(u, _)| *u == unit).unwrap()
}

fn graph() -> (Vec<Module>, BTreeMap<String, BTreeSet<String>>) {
    let mods = modules();
    let known: BTreeSet<String> = mods.iter().map(|m| m.path.clone()).collect();
    let mut edges = BTreeMap::new();
    for m in &mods {
        let refs = references(m, &known)
            .into_iter()
            // A parent's namespace holds its children: `mod` and `pub use` are not dependencies.
            .filter(|r| !(m.path.is_empty() || r.starts_with(&format!("{}::", m.path))))
            .collect();
        edges.insert(m.path.clone(), refs);
    }
    (mods, edges)
}

#[test]
fn every_module_belongs_to_a_layer() {
    let (mods, _) = graph();
    let orphans: Vec<&str> = mods
        .iter()
        .map(|m| m.path.as_str())
        .filter(|p| !p.is_empty() && unit_of(p).is_none())
        .collect();
    assert!(
        orphans.is_empty(),
        "modules in no layer of LAYERS: {orphans:?}"
    );
}

#[test]
fn dependencies_point_down() {
    let (_, edges) = graph();
    let mut upward = BTreeSet::new();
    for (from, tos) in &edges {
        let Some(fu) = unit_of(from) else { continue };
        for to in tos {
            let Some(tu) = unit_of(to) else { continue };
            if fu != tu && rank(tu) > rank(fu) {
                upward.insert((fu, tu, format!("{from} -> {to}")));
            }
        }
    }
    let found: BTreeSet<(&str, &str)> = upward.iter().map(|(f, t, _)| (*f, *t)).collect();
    let allowed: BTreeSet<(&str, &str)> = ALLOWED_UPWARD.iter().copied().collect();
    let new: Vec<&String> = upward
        .iter()
        .filter(|(f, t, _)| !allowed.contains(&(*f, *t)))
        .map(|(_, _, e)| e)
        .collect();
    assert!(
        new.is_empty(),
        "dependencies pointing up the layer table:\n{new:#?}"
    );
    let stale: Vec<_> = allowed.difference(&found).collect();
    assert!(
        stale.is_empty(),
        "ALLOWED_UPWARD entries no longer needed, remove them: {stale:?}"
    );
}

#[test]
fn no_import_cycles_between_files() {
    let (_, edges) = graph();
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(n) = todo.pop() {
            for m in edges.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|n| (n, reach(n))).collect();
    // Modules that reach each other form one cycle group; list each group once.
    let mut groups = BTreeSet::new();
    for (n, r) in &reaches {
        if r.contains(*n) {
            let group: BTreeSet<&String> = r
                .iter()
                .filter(|m| reaches.get(m).is_some_and(|back| back.contains(*n)))
                .collect();
            groups.insert(group);
        }
    }
    let found: BTreeSet<Vec<&str>> = groups
        .iter()
        .map(|g| g.iter().map(|m| m.as_str()).collect())
        .collect();
    let allowed: BTreeSet<Vec<&str>> = ALLOWED_CYCLES.iter().map(|c| c.to_vec()).collect();
    let new: Vec<_> = found.difference(&allowed).collect();
    assert!(
        new.is_empty(),
        "modules that import each other (directly or around a cycle): {new:#?}"
    );
    let stale: Vec<_> = allowed.difference(&found).collect();
    assert!(
        stale.is_empty(),
        "ALLOWED_CYCLES entries no longer cycles, remove them: {stale:?}"
    );
}

fn rel(file: &Path) -> String {
    file.strip_prefix(src_dir())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn files_stay_small() {
    // The driver and the e2e harness both: one rule, one way of counting.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    let roots = [src_dir(), workspace.join("e2e/src")];
    let long: BTreeMap<String, usize> = roots
        .iter()
        .flat_map(|root| modules_in(root))
        .map(|m| {
            let file = m.file.strip_prefix(workspace).unwrap_or(&m.file);
            (file.to_string_lossy().into_owned(), m.code.lines().count())
        })
        .filter(|(_, n)| *n > MAX_FILE_LINES)
        .collect();
    let new: Vec<_> = long
        .iter()
        .filter(|(f, _)| !ALLOWED_LONG_FILES.contains(&f.as_str()))
        .collect();
    assert!(
        new.is_empty(),
        "files over {MAX_FILE_LINES} lines outside their tests: {new:?}"
    );
    let stale: Vec<_> = ALLOWED_LONG_FILES
        .iter()
        .filter(|f| !long.contains_key(**f))
        .collect();
    assert!(
        stale.is_empty(),
        "ALLOWED_LONG_FILES entries now short enough, remove them: {stale:?}"
    );
    assert!(
        roots.iter().all(|r| modules_in(r).len() > 30),
        "the size check reads both trees"
    );
}

/// `(name, lines, parameters)` of every function with a body, found by its `fn` line and brace
/// depth; good enough for rustfmt-formatted code.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let code = code_only(code);
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(at) = t.find("fn ") else { continue };
        let head = &t[..at];
        let is_fn = head.split_whitespace().all(|w| {
            matches!(w, "pub" | "async" | "const" | "unsafe" | "extern") || w.starts_with("pub(")
        });
        if !is_fn {
            continue;
        }
        let name: String = t[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The signature runs to the body's `{` (or a `;` for a trait method without one).
        let mut sig = String::new();
        let mut j = i;
        let mut has_body = false;
        while j < lines.len() {
            sig.push_str(lines[j]);
            sig.push('\n');
            let s = lines[j].trim_end();
            if s.ends_with('{') || (s.ends_with('}') && sig.contains('{')) {
                has_body = true;
                break;
            }
            if s.ends_with(';') {
                break;
            }
            j += 1;
        }
        if !has_body {
            continue;
        }
        let mut depth = 0i32;
        let mut end = j;
        for (k, l) in lines.iter().enumerate().skip(j) {
            depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
            if depth <= 0 {
                end = k;
                break;
            }
        }
        out.push((name, end - i + 1, params(&sig)));
    }
    out
}

fn params(sig: &str) -> usize {
    let Some(name) = sig.find("fn ") else {
        return 0;
    };
    let Some(open) = sig[name..].find('(').map(|o| o + name) else {
        return 0;
    };
    let mut depth = 0;
    let mut count = 0;
    let mut current = String::new();
    for c in sig[open..].chars() {
        match c {
            '(' | '<' | '[' | '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            ')' | '>' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        if depth == 1 && c == ',' {
            if counts(&current) {
                count += 1;
            }
            current.clear();
        } else {
            current.push(c);
        }
    }
    if counts(&current) {
        count += 1;
    }
    count
}

fn counts(param: &str) -> bool {
    let p = param.trim();
    let is_self =
        matches!(p, "self" | "&self" | "&mut self" | "mut self") || p.starts_with("self:");
    !(p.is_empty() || is_self)
}

#[test]
fn functions_stay_small() {
    let (mods, _) = graph();
    let mut long = BTreeMap::new();
    for m in &mods {
        for (name, lines, params) in functions(&m.code) {
            if lines > MAX_FN_LINES || params > MAX_FN_PARAMS {
                let key = format!("{}::{name}", rel(&m.file));
                long.insert(key, (lines, params));
            }
        }
    }
    let new: Vec<_> = long
        .iter()
        .filter(|(k, _)| !ALLOWED_LONG_FNS.contains(&k.as_str()))
        .collect();
    assert!(
        new.is_empty(),
        "functions over {MAX_FN_LINES} lines or {MAX_FN_PARAMS} parameters (lines, params): {new:#?}"
    );
    let stale: Vec<_> = ALLOWED_LONG_FNS
        .iter()
        .filter(|f| !long.contains_key(**f))
        .collect();
    assert!(
        stale.is_empty(),
        "ALLOWED_LONG_FNS entries now small enough, remove them: {stale:?}"
    );
}

#[test]
fn the_checker_sees_what_it_checks() {
    // A checker that finds nothing passes everything: prove it parses what it claims to.
    let sig =
        "pub(crate) async fn f(&self, a: u8, b: HashMap<K, V>, c: impl Fn(u8, u8) -> u8) -> u8 {";
    assert_eq!(params(sig), 3);
    let fns = functions("fn a(x: u8) {\n    if x > 0 {\n        g();\n    }\n}\nfn b() {}\n");
    assert_eq!(fns, vec![("a".into(), 5, 1), ("b".into(), 1, 0)]);
    let known: BTreeSet<String> = ["files", "files::mount", "spec", "spec::attrs"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let m = Module {
        path: "files::mount".into(),
        file: PathBuf::new(),
        code: "use super::fsutil;\nuse crate::spec::attrs::X; // crate::volume\nlet s = \"crate::obs\";\n"
            .into(),
    };
    assert_eq!(
        references(&m, &known),
        ["files", "spec::attrs"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let (mods, edges) = graph();
    assert!(mods.len() > 30, "found {} modules", mods.len());
    assert!(
        edges["volume::issue"].contains("files::writer"),
        "volume::issue's edges: {:?}",
        edges["volume::issue"]
    );
}

#[test]
fn the_error_map_is_exhaustive() {
    // A wildcard arm would let a new error variant reach kubelet as a code nobody chose.
    let (mods, _) = graph();
    let status = mods
        .iter()
        .find(|m| m.path == "csi::status")
        .expect("csi/status.rs");
    let code = code_only(&status.code);
    assert!(
        !code.contains("_ =>"),
        "csi/status.rs has a wildcard match arm"
    );
    assert!(
        code.matches("impl GrpcCode for").count() >= 6,
        "one impl per error type"
    );
}

#[test]
fn docs_architecture_lists_every_module() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md"),
    )
    .expect("docs/architecture.md");
    let listed: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let (mods, _) = graph();
    let missing: Vec<&str> = mods
        .iter()
        .map(|m| m.path.as_str())
        .filter(|p| !p.is_empty() && *p != "main" && !listed.contains(p))
        .collect();
    assert!(
        missing.is_empty(),
        "modules docs/architecture.md does not list: {missing:?}"
    );
    let known: BTreeSet<&str> = mods.iter().map(|m| m.path.as_str()).collect();
    // A listed module that no longer exists is as wrong as a missing one.
    let stale: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("  ") || l.split_whitespace().count() > 1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| {
            w.contains("::")
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')
        })
        .filter(|w| !known.contains(w))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/architecture.md lists modules that do not exist: {stale:?}"
    );
}
