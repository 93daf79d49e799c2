//! The man page: valid roff with the man macros, and it documents every
//! option the command has. A formatter (groff, mandoc) checks it where one
//! is installed; the structural checks run everywhere.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nsproxyfs");
const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/nsproxyfs.8");

/// The man(7) macros the page may use.
const MACROS: [&str; 18] = [
    "TH", "SH", "SS", "PP", "TP", "IP", "RS", "RE", "B", "I", "BR", "BI", "IR", "RB", "RI", "br",
    "nf", "fi",
];

fn page() -> String {
    std::fs::read_to_string(PAGE).expect("docs/nsproxyfs.8")
}

#[test]
fn the_page_uses_only_man_macros_and_names_every_section() {
    let text = page();
    assert!(text.starts_with(".TH NSPROXYFS 8 "), "starts with .TH");
    for (n, line) in text.lines().enumerate() {
        if let Some(request) = line.strip_prefix('.') {
            let name = request.split_whitespace().next().unwrap_or("");
            assert!(
                MACROS.contains(&name),
                "line {}: unknown request .{name}",
                n + 1
            );
        }
        assert!(
            !line.starts_with('\''),
            "line {}: starts with a quote",
            n + 1
        );
        assert!(!line.ends_with(' '), "line {}: trailing space", n + 1);
        assert!(!line.is_empty(), "line {}: blank lines are not roff", n + 1);
    }
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "EXEC",
        "ADOPT",
        "THE TREE",
        "ERRORS",
        "MOUNT HELPER",
        "SYSTEMD",
        "EXIT STATUS",
        "FILES",
        "SEE ALSO",
    ] {
        let found = text
            .lines()
            .any(|l| l == format!(".SH {section}") || l == format!(".SH \"{section}\""));
        assert!(found, "section {section}");
    }
}

/// Long options (`--name`) in a help text.
fn long_options(help: &str) -> Vec<String> {
    let mut out: Vec<String> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_option_of_the_command_is_documented() {
    let text = page();
    for args in [&["--help"][..], &["exec", "--help"], &["adopt", "--help"]] {
        let out = Command::new(BIN).args(args).output().expect("run --help");
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        let options = long_options(&help);
        assert!(options.contains(&"help".to_owned()), "{options:?}");
        for option in options {
            let escaped = format!("\\-\\-{}", option.replace('-', "\\-"));
            assert!(
                text.contains(&escaped),
                "{args:?}: --{option} is not in the page"
            );
        }
    }
    for word in [
        "exec",
        "state_dir=",
        "KillMode=process",
        "Type=notify",
        "125",
        "127",
    ] {
        assert!(text.contains(word), "the page mentions {word}");
    }
}

fn installed(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
}

#[test]
fn a_formatter_reads_the_page_without_a_warning() {
    let (tool, args): (&str, &[&str]) = if installed("groff") {
        ("groff", &["-man", "-z", "-ww"])
    } else if installed("mandoc") {
        ("mandoc", &["-T", "lint", "-W", "warning"])
    } else {
        eprintln!("no groff or mandoc here: only the structural checks ran");
        return;
    };
    let out = Command::new(tool).args(args).arg(PAGE).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tool}: {err}{said}");
    assert!(err.trim().is_empty(), "{tool} warns: {err}");
    if tool == "mandoc" {
        assert!(said.trim().is_empty(), "mandoc lint: {said}");
    }
}
