//! Every Rust snippet in docs/getting-started.md is a copy of code that compiles: each snippet
//! (split at `// ...` gap lines) must appear, line for line (indentation aside), in a source file
//! of the workspace. A snippet that drifts from the code fails here.
//!
//! The guide's first part is stricter: every file of the crate in `examples/first-hour/` (the
//! project a new user builds from an empty folder, compiled and tested as a workspace member)
//! must appear whole, byte for byte, as a fenced block of the guide, named by its path. A change
//! to either side alone fails here.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("target") {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Trimmed, non-empty lines, with trailing `// remarks` cut (the docs annotate lines).
fn normalised(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let l = l.trim();
            match l.find(" // ") {
                Some(i) if !l.starts_with("//") => l[..i].trim_end().to_string(),
                _ => l.to_string(),
            }
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// A snippet's parts: runs of lines between `// ...` gap lines.
fn chunks(body: &str) -> Vec<Vec<String>> {
    let mut parts = vec![Vec::new()];
    for line in normalised(body) {
        if line.starts_with("// ...") {
            parts.push(Vec::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(line);
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

#[test]
fn getting_started_snippets_match_the_code() {
    check("docs/getting-started.md");
}

#[test]
fn first_hour_files_are_in_the_guide_whole() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let project = root.join("examples/first-hour");
    let doc = std::fs::read_to_string(root.join("docs/getting-started.md")).unwrap();
    let mut files = Vec::new();
    project_files(&project, &mut files);
    files.sort();
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let fence = match file.extension().and_then(|e| e.to_str()) {
            Some("rs") => "rust",
            Some("toml") => "toml",
            other => panic!(
                "{}: a {other:?} file, which the guide cannot show",
                file.display()
            ),
        };
        let relative = file.strip_prefix(&project).unwrap().to_string_lossy();
        // Whole: the fence opens on the file's first line and closes right after its last.
        let block = format!("```{fence}\n{text}```\n");
        if !doc.contains(&block) {
            missing.push(format!(
                "{relative} (not shown whole as a ```{fence} block)"
            ));
        } else if !doc.contains(&format!("`{relative}`")) {
            missing.push(format!("{relative} (shown, but never named)"));
        }
    }
    assert!(
        files.len() >= 7,
        "only {} files in {}",
        files.len(),
        project.display()
    );
    assert!(
        missing.is_empty(),
        "docs/getting-started.md is out of step with examples/first-hour:\n  {}",
        missing.join("\n  ")
    );
}

/// Every file of the first-hour project but the build's own (`target/`, `Cargo.lock`).
fn project_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("target") {
                project_files(&path, out);
            }
        } else if !path.ends_with("Cargo.lock") {
            out.push(path);
        }
    }
}

#[test]
fn schema_evolution_snippets_match_the_code() {
    check("docs/schema-evolution.md");
}

fn check(guide: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let doc = std::fs::read_to_string(root.join(guide)).unwrap();
    let mut files = Vec::new();
    for dir in ["examples", "es-core", "es-postgres", "es-projections"] {
        sources(&root.join(dir), &mut files);
    }
    let code: Vec<(PathBuf, Vec<String>)> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, normalised(&text))
        })
        .collect();
    let mut snippets = 0;
    let mut missing = Vec::new();
    let mut blocks = doc.split("```rust\n").skip(1);
    for block in blocks.by_ref() {
        let body = block.split("\n```").next().unwrap();
        for lines in chunks(body) {
            snippets += 1;
            let found = code.iter().any(|(_, file)| {
                file.windows(lines.len())
                    .any(|window| window == lines.as_slice())
            });
            if !found {
                missing.push(lines.join("\n"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "these snippets of {guide} are not in the code:\n\n{}",
        missing.join("\n\n----\n\n")
    );
    assert!(snippets >= 5, "only {snippets} snippets found in {guide}");
}
