//! The house's rule, checked: every module of the crate uses only modules
//! listed above it in the README's Layout (from the kernel up), so
//! dependencies point one way and no two modules depend on each other.
//! Code under `#[cfg(test)]` and comments are not counted.

use std::collections::HashMap;
use std::path::Path;

/// The modules in the README's Layout block, in order, by the name their
/// `src/` entry gives (`src/fs/` is `fs`, `src/errno.rs` is `errno`).
fn layout_order() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let block = readme
        .split("## Layout")
        .nth(1)
        .and_then(|rest| rest.split("```").nth(1))
        .expect("a Layout section with a code block");
    block
        .lines()
        .filter_map(|l| l.strip_prefix("src/"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|name| {
            name.trim_end_matches('/')
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect()
}

/// The source of `file` without its test module and comment lines.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("source file");
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate modules `code` names as `crate::NAME`.
fn used(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_modules_below_it() {
    let order = layout_order();
    let mut names = order.clone();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), order.len(), "a module listed twice: {order:?}");
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward = Vec::new();
    let mut unlisted = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("below src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a name")
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(&mine) = rank.get(top.as_str()) else {
            unlisted.push(top);
            continue;
        };
        for dep in used(&code_of(file)) {
            if dep == top {
                continue;
            }
            match rank.get(dep.as_str()) {
                Some(&theirs) if theirs < mine => {}
                Some(_) => upward.push(format!("{} uses {dep}", rel.display())),
                None => unlisted.push(dep),
            }
        }
    }
    unlisted.sort();
    unlisted.dedup();
    assert!(
        unlisted.is_empty(),
        "modules missing from README's Layout: {unlisted:?}"
    );
    assert!(
        upward.is_empty(),
        "uses of a module listed later in README's Layout:\n{}",
        upward.join("\n")
    );
    // The check sees the whole crate: the layers it is about are there.
    for m in ["sys", "procfs", "ns", "transfer", "mover", "service", "fs"] {
        assert!(rank.contains_key(m), "{m} missing from the Layout");
    }
    assert!(files.len() > 50, "only {} source files found", files.len());
}

#[test]
fn the_check_sees_a_use_written_inside_code() {
    assert_eq!(
        used("use crate::ns::Kind;\nlet x = crate::sys::pidfd::open(1, 0);"),
        ["ns", "sys"]
    );
    assert!(used("no uses here").is_empty());
}
