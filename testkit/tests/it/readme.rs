//! The README's command blocks cannot rot: every line of every fenced block
//! is executed, or checked against what runs it, here. A line no rule
//! covers fails the test (add a rule when adding a block):
//!
//! - `bash scripts/demo.sh` runs (a small history), and must exit 0;
//!   `bash scripts/test.sh` is the suite running this very test.
//! - `syncdata …` / `syncdata-producer …` (and `mkdir -p ~/…`) lines of a
//!   `bash` block run in a shell with a temporary HOME and the built
//!   binaries first on PATH.
//! - `cargo build --release` / `cargo install --path P`: `cargo metadata`
//!   shows that `cargo build` builds both binaries and that P holds the
//!   binary the line's comment names (a release build is not repeated here).
//! - `$dc …` (the compose stack): `scripts/stack-test.sh`, which
//!   `scripts/test.sh` runs, runs the same command; a `syncdata` command
//!   in it also parses with the real binary.
//! - The command summary and the diagram: every command they name exists
//!   with the flags they show (`… --help` exits 0).

use syncdata_testkit::harness as support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Fenced blocks: (info string, logical lines: `\` continuations joined,
/// comments and blank lines dropped).
fn blocks(markdown: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    let mut pending = String::new();
    for line in markdown.lines() {
        if let Some(info) = line.strip_prefix("```") {
            match current.take() {
                Some(block) => out.push(block),
                None => current = Some((info.trim().to_owned(), Vec::new())),
            }
            continue;
        }
        let Some((_, lines)) = current.as_mut() else {
            continue;
        };
        let text = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        let text = text.trim_end();
        if let Some(head) = text.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(text.trim_start());
        let logical = std::mem::take(&mut pending);
        let logical = logical.split_whitespace().collect::<Vec<_>>().join(" ");
        if !logical.is_empty() {
            lines.push(logical);
        }
    }
    out
}

/// `bin args… --help` exits 0: the command and its flags exist.
fn parses(bin: &str, args: &[String]) -> Result<(), String> {
    let out = support::command(&support::bin(bin))
        .args(args)
        .arg("--help")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{bin} {} --help` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The subcommand words and flags of one alternative of the summary:
/// `status [--json] [--check]` → `status --json --check`; placeholders
/// (`T…`, `ID`, `S`) and values are left out.
fn words(alt: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut positional = true;
    let raw: Vec<&str> = alt.split_whitespace().collect();
    let mut i = 0;
    while i < raw.len() {
        let w = raw[i].trim_matches(|c| c == '[' || c == ']');
        if w.starts_with("--") {
            positional = false;
            // `--json|--html`: each flag.
            out.extend(w.split('|').map(str::to_owned));
            // `[--since 24h]`: the flag's value, inside the same brackets.
            if let Some(next) = raw.get(i + 1) {
                if !raw[i].ends_with(']') && !next.starts_with('[') && !next.starts_with("--") {
                    out.push(next.trim_end_matches(']').to_owned());
                    i += 1;
                }
            }
        } else if positional
            && !w.is_empty()
            && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        {
            out.push(w.to_owned());
        } else {
            positional = false;
        }
        i += 1;
    }
    out
}

/// Every command of a summary line: `syncdata a X | b [--y]` and
/// `syncdata dlq list|show` expand to their alternatives.
fn summary_commands(line: &str) -> Vec<(String, Vec<String>)> {
    let (bin, rest) = line.split_once(' ').unwrap_or((line, ""));
    let mut out = Vec::new();
    for alt in rest.split(" | ") {
        let alt = alt.trim();
        // `dlq list|show|replay` → one command per word.
        let first = alt.split_whitespace().next().unwrap_or_default();
        let tail = alt.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
        if let Some(second) = tail.split_whitespace().next().filter(|w| w.contains('|')) {
            for sub in second.split('|') {
                out.push((bin.to_owned(), vec![first.to_owned(), sub.to_owned()]));
            }
            continue;
        }
        out.push((bin.to_owned(), words(alt)));
    }
    out
}

/// `cargo metadata --no-deps` of the workspace.
fn metadata() -> serde_json::Value {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The binaries of the package at `path` (relative to the root).
fn bins_at(meta: &serde_json::Value, path: &str) -> Vec<String> {
    let dir = root().join(path).canonicalize().unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            Path::new(p["manifest_path"].as_str().unwrap())
                .parent()
                .and_then(|d| d.canonicalize().ok())
                == Some(dir.clone())
        })
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The default members' binaries (`cargo build` at the root).
fn default_bins(meta: &serde_json::Value) -> Vec<String> {
    let members: Vec<&str> = meta["workspace_default_members"]
        .as_array()
        .expect("workspace_default_members")
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| members.contains(&p["id"].as_str().unwrap()))
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs a README shell line with the built binaries first on PATH and a
/// throwaway HOME.
fn run_shell(line: &str, home: &Path) -> Result<(), String> {
    let path = format!(
        "{}:{}",
        support::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", line])
        .env("HOME", home)
        .env("PATH", path)
        .env_remove("DATA_SYNC_CONFIG")
        .current_dir(root())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{line}` exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn every_readme_command_block_runs_or_is_checked() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let stack_test = std::fs::read_to_string(root().join("scripts/stack-test.sh")).unwrap();
    let test_sh = std::fs::read_to_string(root().join("scripts/test.sh")).unwrap();
    let meta = metadata();
    let home = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut fail = |what: String| failures.push(what);
    for (info, lines) in blocks(&readme) {
        for line in &lines {
            checked += 1;
            if line == "bash scripts/demo.sh" {
                // Run by `demo_runs_as_the_quickstart_says` below.
                continue;
            }
            if line == "bash scripts/test.sh" {
                if !test_sh.contains("cargo test --workspace") {
                    fail("scripts/test.sh no longer runs the test suite".into());
                }
                continue;
            }
            if line == "cargo build --release" {
                let bins = default_bins(&meta);
                for b in ["syncdata", "syncdata-producer"] {
                    if !bins.iter().any(|x| x == b) {
                        fail(format!("`cargo build` does not build {b}: {bins:?}"));
                    }
                }
                continue;
            }
            if let Some(path) = line.strip_prefix("cargo install --path ") {
                let bins = bins_at(&meta, path.trim());
                let want = if path.trim() == "consumer" {
                    "syncdata"
                } else {
                    "syncdata-producer"
                };
                if !bins.iter().any(|b| b == want) {
                    fail(format!("{line}: no binary {want} there ({bins:?})"));
                }
                continue;
            }
            if line.starts_with("dc=") {
                continue;
            }
            if let Some(cmd) = line.strip_prefix("$dc ") {
                if let Some(sc) = cmd.strip_prefix("exec consumer ") {
                    // `syncdata verify --source … --exclude-columns …`
                    let w: Vec<&str> = sc.split_whitespace().collect();
                    let head = w.iter().take(2).copied().collect::<Vec<_>>().join(" ");
                    if !stack_test.contains(&head) {
                        fail(format!(
                            "scripts/stack-test.sh does not run `{head}` ({line})"
                        ));
                    }
                    for flag in w.iter().filter(|x| x.starts_with("--")) {
                        if !stack_test.contains(&format!("{head} ")) || !stack_test.contains(*flag)
                        {
                            fail(format!(
                                "scripts/stack-test.sh does not use {flag} ({line})"
                            ));
                        }
                    }
                    let args: Vec<String> = w[1..].iter().map(|s| s.to_string()).collect();
                    if let Err(e) = parses(w[0], &args) {
                        fail(e);
                    }
                } else if !stack_test.contains(&format!("dc {cmd}")) {
                    fail(format!("scripts/stack-test.sh does not run `dc {cmd}`"));
                }
                continue;
            }
            let is_cli = line.starts_with("syncdata ")
                || line.starts_with("syncdata-producer ")
                || line.starts_with("mkdir -p ~/");
            if is_cli && (info == "bash" || info == "sh") {
                if let Err(e) = run_shell(line, home.path()) {
                    fail(e);
                }
                continue;
            }
            if is_cli && info.is_empty() {
                for (bin, args) in summary_commands(line) {
                    if let Err(e) = parses(&bin, &args) {
                        fail(format!("{e} (summary line `{line}`)"));
                    }
                }
                continue;
            }
            if info.is_empty() && line.contains('▶') {
                // The diagram: the commands it names exist.
                let w: Vec<&str> = line.split_whitespace().collect();
                for pair in w.windows(2) {
                    if pair[0] == "syncdata" || pair[0] == "syncdata-producer" {
                        let sub = pair[1].trim_end_matches(':');
                        if let Err(e) = parses(pair[0], &[sub.to_owned()]) {
                            fail(format!("{e} (diagram line `{line}`)"));
                        }
                    }
                }
                continue;
            }
            fail(format!(
                "README line in a ```{info} block that no rule runs or checks: `{line}`"
            ));
        }
    }
    assert!(
        checked > 20,
        "only {checked} lines found: is the parser broken?"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_install_lines_leave_completions_and_man_pages_in_home() {
    let home = tempfile::tempdir().unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let install: Vec<String> = blocks(&readme)
        .into_iter()
        .flat_map(|(_, l)| l)
        .filter(|l| {
            l.starts_with("mkdir -p ~/")
                || l.starts_with("syncdata completions")
                || l.starts_with("syncdata man")
        })
        .collect();
    assert_eq!(install.len(), 3, "{install:?}");
    for line in &install {
        run_shell(line, home.path()).unwrap();
    }
    let completions = home
        .path()
        .join(".local/share/bash-completion/completions/syncdata");
    assert!(std::fs::read_to_string(&completions)
        .unwrap()
        .contains("complete -F"));
    let man = home.path().join(".local/share/man/man1/syncdata-status.1");
    assert!(std::fs::read_to_string(&man).unwrap().contains(".TH"));
}

/// The quickstart's first command, on a small history: it builds, starts
/// its own servers and exits 0 only when every table matches.
#[test]
fn demo_runs_as_the_quickstart_says() {
    let out = Command::new("bash")
        .args(["scripts/demo.sh", "--changes", "2000", "--consumers", "1"])
        .current_dir(root())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "scripts/demo.sh failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_summary_parser_expands_alternatives() {
    assert_eq!(
        summary_commands("syncdata start | stop | status [--json] [--check]"),
        vec![
            ("syncdata".into(), vec!["start".into()]),
            ("syncdata".into(), vec!["stop".into()]),
            (
                "syncdata".into(),
                vec!["status".into(), "--json".into(), "--check".into()]
            ),
        ]
    );
    assert_eq!(
        summary_commands("syncdata dlq list|show")[1],
        ("syncdata".into(), vec!["dlq".into(), "show".into()])
    );
    assert_eq!(
        words("resync T --yes [--offline]"),
        ["resync", "--yes", "--offline"]
    );
    assert_eq!(
        words("report [--since 24h] [--json|--html]"),
        ["report", "--since", "24h", "--json", "--html"]
    );
}
