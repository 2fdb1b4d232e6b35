//! The code map in docs/architecture.md names every source file of the workspace, so that a new
//! module cannot land without a line saying what it is (and a reader of the map is never missing
//! a file). Each crate's `src` is walked recursively; every `*.rs` file must appear, in
//! backticks, as its path relative to that `src` (`log_reader.rs`, `bin/deal-worker.rs`,
//! `scenarios/append.rs`) in that crate's section of the map (the `### \`crate\`` heading up to
//! the next heading), so that `error.rs` of one crate does not vouch for another's. SQL is
//! mapped by directory: any `.sql` file under a crate's `src/sql` requires the map to name that
//! directory (`es-postgres/src/sql/`).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// The crates whose sources the map covers (directory names under the workspace root).
const CRATES: &[&str] = &[
    "es-core",
    "es-postgres",
    "es-projections",
    "examples",
    "examples/first-hour",
    "bench",
    "bench-cqrs-es",
];

/// Directories of `.sql` files the map names as a group.
const SQL_DIRS: &[&str] = &["es-postgres/src/sql/", "es-projections/src/sql/"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Files under `dir` (recursively) whose name ends with `.{ext}`.
fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// The crate's section of the map: from its `### \`crate\`` heading to the next heading.
fn section<'a>(map: &'a str, krate: &str) -> Option<&'a str> {
    let heading = format!("### `{krate}`");
    let start = map
        .lines()
        .scan(0, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| line.trim_end() == heading)
        .map(|(at, _)| at)?;
    let body = &map[start + heading.len()..];
    let end = body
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| body[i..].starts_with("## ") || body[i..].starts_with("### "))
        .unwrap_or(body.len());
    Some(&body[..end])
}

#[test]
fn every_source_file_is_in_the_code_map() {
    let root = root();
    let map = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let mut missing = Vec::new();
    let mut checked = 0;
    for krate in CRATES {
        let src = root.join(krate).join("src");
        let mut sources = Vec::new();
        files(&src, "rs", &mut sources);
        sources.sort();
        let Some(text) = section(&map, krate) else {
            missing.push(format!("{krate}/ (no \"### `{krate}`\" section)"));
            continue;
        };
        for file in sources {
            let relative = file.strip_prefix(&src).unwrap();
            let name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            checked += 1;
            if !text.contains(&format!("`{name}`")) {
                missing.push(format!("{krate}/src/{name}"));
            }
        }
    }
    for dir in SQL_DIRS {
        let mut sql = Vec::new();
        files(&root.join(dir), "sql", &mut sql);
        assert!(!sql.is_empty(), "{dir} holds no .sql file: update SQL_DIRS");
        if !map.contains(dir) {
            sql.sort();
            for file in sql {
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                missing.push(format!("{dir}{name} (the map does not name {dir})"));
            }
        }
    }
    assert!(
        checked > 0,
        "no source files found under {}",
        root.display()
    );
    assert!(
        missing.is_empty(),
        "docs/architecture.md's code map does not name these files; add a line for each:\n  {}",
        missing.join("\n  ")
    );
}
