//! The layer rules of ARCHITECTURE.md ("Layers"), checked on the sources:
//! a forbidden import anywhere fails this test, naming the file and line.
//!
//! - `dftpd-core` does no IO: its Cargo.toml names none of tokio, rustls,
//!   tokio-rustls, redb, ring, nix, rand or async-trait, and inside it
//!   `proto` imports nothing else of the crate, `link` and `config` only
//!   `proto`, `master` only `proto`, `link` and `config`.
//! - In `dftpd`: `env` imports nothing of the crate; `tls` only `env` and
//!   `link`; the link framing only `link`/`proto`; `slave` never `master`
//!   or `ops` (nor the core's `master`); `master` never `slave`; `ops`
//!   never `master`'s drivers; `cluster.rs` and `main.rs` compose anything.
//! - Nothing in `dftpd` or `dftpd-core` imports the simulator.

use std::path::{Path, PathBuf};

/// Modules a file may name with `crate::X`, by the directory it is in.
struct Rule {
    dir: &'static str,
    may: &'static [&'static str],
    /// Other paths it must not mention at all (`dftpd_core::master`).
    never: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        dir: "core/src/proto",
        may: &["proto"],
        never: &[],
    },
    Rule {
        dir: "core/src/link",
        may: &["link", "proto"],
        never: &[],
    },
    Rule {
        dir: "core/src/config",
        may: &["config", "proto"],
        never: &[],
    },
    Rule {
        dir: "core/src/master",
        may: &["master", "proto", "link", "config"],
        never: &[],
    },
    Rule {
        dir: "src/env",
        may: &[],
        never: &[],
    },
    Rule {
        dir: "src/tls",
        may: &["tls", "env", "link"],
        never: &[],
    },
    Rule {
        dir: "src/link",
        may: &["link", "proto"],
        never: &[],
    },
    Rule {
        dir: "src/slave",
        may: &["slave", "env", "link", "proto", "config", "tls"],
        never: &["dftpd_core::master"],
    },
    Rule {
        dir: "src/master",
        may: &["master", "env", "link", "proto", "config", "tls", "ops"],
        never: &[],
    },
    Rule {
        dir: "src/ops",
        may: &["ops", "env", "link", "proto", "config", "slave"],
        never: &[],
    },
];

/// Crates `dftpd-core` must not depend on.
const IO_CRATES: &[&str] = &[
    "tokio",
    "rustls",
    "tokio-rustls",
    "redb",
    "ring",
    "nix",
    "rand",
    "async-trait",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_file() {
        if p.extension().is_some_and(|e| e == "rs") {
            out.push(p.to_path_buf());
        }
        return;
    }
    let mut entries: Vec<_> = std::fs::read_dir(p).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        rust_files(&e.path(), out);
    }
}

/// The code of a line without its comment (a `//` outside a string).
fn code(line: &str) -> &str {
    let mut in_str = false;
    let b = line.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'"' if i == 0 || b[i - 1] != b'\\' => in_str = !in_str,
            b'/' if !in_str && b.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The forbidden imports in `text` under `rule`: (line number, what).
fn violations(text: &str, rule: &Rule) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = code(line);
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let module: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `dftpd_core::` and `dftpd_sim::` end in "crate::"? No: only
            // a bare `crate::` path counts.
            let bare = at == 0
                || !rest.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && rest.as_bytes()[at - 1] != b'_';
            if bare && !module.is_empty() && !rule.may.contains(&module.as_str()) {
                out.push((n + 1, format!("crate::{module}")));
            }
            rest = after;
        }
        for never in rule.never.iter().chain(&["dftpd_sim"]) {
            if line.contains(never) {
                out.push((n + 1, never.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_checker_catches_a_forbidden_import() {
    let slave = RULES.iter().find(|r| r.dir == "src/slave").unwrap();
    assert!(violations("use crate::link::FileOp;", slave).is_empty());
    assert_eq!(
        violations("use crate::master::hub::Hub;", slave),
        vec![(1, "crate::master".to_string())]
    );
    assert_eq!(
        violations(
            "let x = 1; // crate::master in a comment\nuse dftpd_core::master::db;",
            slave
        ),
        vec![(2, "dftpd_core::master".to_string())]
    );
}

#[test]
fn no_forbidden_import_anywhere() {
    let root = root();
    let mut found = Vec::new();
    for rule in RULES {
        let mut files = Vec::new();
        rust_files(&root.join(rule.dir), &mut files);
        assert!(!files.is_empty(), "no sources under {}", rule.dir);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (line, what) in violations(&text, rule) {
                found.push(format!(
                    "{}:{line}: {what} is not allowed in {}",
                    f.strip_prefix(&root).unwrap().display(),
                    rule.dir
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "layer rules broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_core_crate_depends_on_no_io_crate() {
    let manifest = std::fs::read_to_string(root().join("core/Cargo.toml")).unwrap();
    let value: toml::Value = toml::from_str(&manifest).unwrap();
    let deps = value
        .get("dependencies")
        .and_then(|d| d.as_table())
        .unwrap();
    for name in deps.keys() {
        assert!(
            !IO_CRATES.contains(&name.as_str()),
            "core/Cargo.toml depends on {name}, which does IO"
        );
    }
}
