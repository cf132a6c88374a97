//! Files generated from the code are current: `make generate` rewrites
//! them (it runs this test with `UPDATE_GENERATED=1`), and CI fails when
//! one is stale.

// Test code: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GENERATED").is_some()
}

/// The whole file is generated.
fn check_file(relative: &str, expected: &str) {
    let file = path(relative);
    if updating() {
        std::fs::write(&file, expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        actual == expected,
        "{relative} is stale: run `make generate` and commit the result"
    );
}

/// The part of a hand-written file between `<!-- NAME:begin ... -->` and
/// `<!-- NAME:end -->` is generated.
fn check_section(relative: &str, name: &str, expected: &str) {
    let file = path(relative);
    let text = std::fs::read_to_string(&file).unwrap();
    let begin = format!("<!-- {name}:begin");
    let end = format!("<!-- {name}:end -->");
    let start = text.find(&begin).expect("begin marker");
    let body_start = start + text[start..].find("-->").expect("end of begin marker") + 4;
    let stop = text.find(&end).expect("end marker");
    let current = &text[body_start..stop];
    if updating() {
        let updated = format!("{}{expected}{}", &text[..body_start], &text[stop..]);
        std::fs::write(&file, updated).unwrap();
        return;
    }
    assert!(
        current == expected,
        "the {name} section of {relative} is stale: run `make generate` and commit the result"
    );
}

#[test]
fn configuration_reference_is_current() {
    check_file(
        "docs/configuration.md",
        &bedrock_broker::config::reference::markdown(),
    );
}

#[test]
fn error_code_table_is_current() {
    check_section(
        "docs/proxy.md",
        "error-codes",
        &bedrock_broker::proxy::error_reference_table(),
    );
}

/// The `src/` and `tests/` tree with each file's first doc line.
fn layout() -> String {
    fn first_doc_line(file: &Path) -> String {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("//!").or_else(|| l.strip_prefix("\"\"\"")))
            .unwrap_or("")
            .trim();
        line.trim_end_matches("\"\"\"").to_owned()
    }
    fn walk(dir: &Path, depth: usize, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                !name.starts_with('.')
                    && name != "__pycache__"
                    && name != "node_modules"
                    && name != "fixtures"
                    && (p.is_dir() || name.ends_with(".rs") || name.ends_with(".py"))
            })
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let indent = "  ".repeat(depth);
            if p.is_dir() {
                out.push(format!("{indent}{name}/"));
                walk(&p, depth + 1, out);
            } else {
                let doc = first_doc_line(&p);
                let entry = format!("{indent}{name}");
                out.push(if doc.is_empty() {
                    entry
                } else {
                    format!("{entry:<36} {doc}")
                });
            }
        }
    }
    let mut out = vec!["```".to_owned()];
    for top in ["src", "tests"] {
        out.push(format!("{top}/"));
        walk(&path(top), 1, &mut out);
    }
    out.push("```".to_owned());
    format!("\n{}\n", out.join("\n"))
}

#[test]
fn layout_in_the_development_guide_is_current() {
    check_section("docs/development.md", "layout", &layout());
}

#[test]
fn every_flag_is_in_the_configuration_reference() {
    use clap::CommandFactory;
    let reference = bedrock_broker::config::reference::markdown();
    let cli = bedrock_broker::cli::Cli::command();
    let mut missing = Vec::new();
    for command in cli.get_subcommands() {
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if !reference.contains(&format!("| `--{long}` |")) {
                missing.push(format!("{} --{long}", command.get_name()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags the configuration reference leaves out: {missing:?}"
    );
}
