//! The harness library's shape, checked: no source file under e2e/src outgrows what a reader can
//! hold. A file's size is its lines before its `#[cfg(test)] mod tests` block (which every file
//! keeps last), so tests living next to their code do not count against it; a `tests.rs` file
//! holds tests only and is not counted at all.
//!
//! [`ALLOWED_LONG_FILES`] names the known exceptions: an entry that no longer applies fails the
//! test, so the list can only shrink.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Most lines a file may have outside its tests.
const MAX_FILE_LINES: usize = 600;

/// Files over [`MAX_FILE_LINES`] still to split (paths under e2e/src, `/`-separated).
const ALLOWED_LONG_FILES: &[&str] = &[];

#[test]
fn no_source_file_is_over_the_line_limit() {
    let long = long_files();
    let new: Vec<_> = long
        .iter()
        .filter(|(f, _)| !ALLOWED_LONG_FILES.contains(&f.as_str()))
        .collect();
    assert!(
        new.is_empty(),
        "files under e2e/src over {MAX_FILE_LINES} lines outside their tests (split them by concern): {new:?}"
    );
    let stale: Vec<_> = ALLOWED_LONG_FILES
        .iter()
        .filter(|f| !long.contains_key(**f))
        .collect();
    assert!(
        stale.is_empty(),
        "ALLOWED_LONG_FILES entries now short enough (or gone), remove them: {stale:?}"
    );
}

#[test]
fn the_count_stops_at_the_test_module() {
    let text = "fn a() {}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\n";
    assert_eq!(code_lines(text), 2);
    // A `#[cfg(test)]` item that is not the test module counts as code.
    let text = "#[cfg(test)]\nfn helper() {}\nfn b() {}\n";
    assert_eq!(code_lines(text), 3);
}

/// `(path under e2e/src, lines outside tests)` of every file over the limit.
fn long_files() -> BTreeMap<String, usize> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    rust_files(&root)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (relative(&root, &p), code_lines(&text))
        })
        .filter(|(_, n)| *n > MAX_FILE_LINES)
        .collect()
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn relative(root: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(root).unwrap_or(p);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Lines before the `#[cfg(test)]` that opens the file's test module.
fn code_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .enumerate()
        .position(|(i, line)| {
            line.trim() == "#[cfg(test)]"
                && lines.get(i + 1).is_some_and(|n| n.contains("mod tests"))
        })
        .unwrap_or(lines.len())
}
