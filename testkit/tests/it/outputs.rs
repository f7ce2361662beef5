//! What the commands print for scripts and shells: `--json` on every
//! command that prints data or results (and the list of those that do not,
//! each with its reason), shell completions and man pages generated from the
//! command-line definition (no configuration needed). Real binaries against
//! the real PostgreSQL and nats-server.

use syncdata_testkit::harness as support;

use std::process::Stdio;

use serde_json::Value;
use support::TestNames;

/// Runs `bin args…` with no configuration at all: (exit code, stdout, stderr).
async fn bare(bin: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::from(support::command(&support::bin(bin)));
    cmd.args(args)
        .env_remove("DATA_SYNC_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("finishes within 60 s")
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The subcommands of `bin` (nested ones as `dlq list`), from its `--help`.
async fn subcommands(bin: &str, prefix: &[&str]) -> Vec<String> {
    let mut args: Vec<&str> = prefix.to_vec();
    args.push("--help");
    let (code, help, err) = bare(bin, &args).await;
    assert_eq!(code, Some(0), "{bin} {args:?}: {err}");
    let mut out = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            let Some(name) = line
                .strip_prefix("  ")
                .and_then(|l| l.split_whitespace().next())
            else {
                break;
            };
            if name != "help" && !line.starts_with("   ") {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// Commands without `--json`, and why: daemons, generated text, progress
/// and actions whose result is their exit status.
const NO_JSON: &[(&str, &str)] = &[
    ("syncdata start", "a daemon: logs (--log-format json)"),
    (
        "syncdata migrate",
        "an action: its result is the exit status",
    ),
    (
        "syncdata resync",
        "an action with progress: the result is the exit status; `status --json` shows the table",
    ),
    (
        "syncdata config check",
        "prints the configuration as read, for a person",
    ),
    ("syncdata dlq show", "prints JSON already"),
    ("syncdata dlq migrate", "a one-off migration"),
    ("syncdata completions", "prints a shell script"),
    ("syncdata man", "prints a man page"),
    (
        "syncdata-producer run",
        "a daemon: logs (--log-format json)",
    ),
    (
        "syncdata-producer archive",
        "a daemon: logs (--log-format json)",
    ),
    (
        "syncdata-producer snapshot",
        "an action with progress: its summary is logged",
    ),
    (
        "syncdata-producer setup-source",
        "an action: what it did, for a person",
    ),
    (
        "syncdata-producer config check",
        "prints the configuration as read, for a person",
    ),
    ("syncdata-producer completions", "prints a shell script"),
    ("syncdata-producer man", "prints a man page"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_printing_results_takes_json() {
    let mut missing = Vec::new();
    for bin in ["syncdata", "syncdata-producer"] {
        for sub in subcommands(bin, &[]).await {
            let nested = subcommands(bin, &[&sub]).await;
            let leaves: Vec<Vec<String>> = if nested.is_empty() {
                vec![vec![sub.clone()]]
            } else {
                nested
                    .iter()
                    .map(|n| vec![sub.clone(), n.clone()])
                    .collect()
            };
            for leaf in leaves {
                let name = format!("{bin} {}", leaf.join(" "));
                let mut args: Vec<&str> = leaf.iter().map(String::as_str).collect();
                args.push("--help");
                let (code, help, err) = bare(bin, &args).await;
                assert_eq!(code, Some(0), "{name} --help: {err}");
                let has_json = help.contains("--json");
                let exempt = NO_JSON.iter().any(|(n, _)| *n == name);
                if has_json == exempt {
                    missing.push(format!(
                        "{name}: --json {}, exempt {exempt}",
                        if has_json { "present" } else { "absent" }
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "every command that prints data or results takes --json; the others are listed \
         in NO_JSON with a reason:\n{}",
        missing.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_results_of_the_table_dlq_stop_and_clear_commands() {
    let db = support::fresh_database("out_json").await;
    sqlx::raw_sql("create table t (id bigint primary key, v int); insert into t values (1, 1)")
        .execute(&db.pool)
        .await
        .unwrap();
    let names = TestNames::new("outjson");
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &db,
        &names,
        &support::nats_url(),
        dir.path(),
        "",
    );
    let json = |args: &'static [&'static str], code: i32| {
        let config = config.clone();
        async move {
            let out = support::run_cli("syncdata", &config, args, &[]).await;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                out.status.code(),
                Some(code),
                "{args:?}: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_str::<Value>(&stdout)
                .unwrap_or_else(|e| panic!("{args:?} --json is not JSON ({e}): {stdout}"))
        }
    };

    let v = json(&["add-tables", "t", "--json"], 0).await;
    assert_eq!(v["added"], serde_json::json!(["t"]), "{v}");
    assert_eq!(v["already_listed"], serde_json::json!([]), "{v}");
    let v = json(&["add-tables", "t", "--json"], 0).await;
    assert_eq!(v["already_listed"], serde_json::json!(["t"]), "{v}");
    let v = json(&["add-tables", "nosuch", "--json"], 1).await;
    assert_eq!(v["failed"][0]["table"], "nosuch", "{v}");
    assert!(
        v["failed"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("nosuch")),
        "{v}"
    );
    let v = json(&["list-tables", "--json"], 0).await;
    assert!(v.to_string().contains("\"t\""), "{v}");

    let v = json(&["stop", "--json"], 0).await;
    assert_eq!(v, serde_json::json!({"daemons_asked": 0, "stopped": true}));

    let v = json(&["dlq", "purge", "--yes", "--json"], 0).await;
    assert_eq!(v, serde_json::json!({"purged": 0}));
    let v = json(&["dlq", "replay", "--json"], 0).await;
    assert_eq!(v, serde_json::json!({"replayed": 0, "kept": []}));

    let v = json(&["clear", "--yes", "--json"], 0).await;
    assert_eq!(v, serde_json::json!({"cleared": ["t"]}));
    let rows: i64 = sqlx::query_scalar("select count(*) from t")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "clear emptied the table");

    let v = json(&["remove-tables", "t", "--json"], 0).await;
    assert_eq!(v, serde_json::json!({"removed": ["t"], "not_listed": []}));
    let v = json(&["remove-tables", "t", "--json"], 0).await;
    assert_eq!(v, serde_json::json!({"removed": [], "not_listed": ["t"]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_man_pages_need_no_configuration() {
    for bin in ["syncdata", "syncdata-producer"] {
        let (code, bash, err) = bare(bin, &["completions", "bash"]).await;
        assert_eq!(code, Some(0), "{err}");
        assert!(bash.contains("complete -F"), "{bash}");
        assert!(bash.contains("status"), "subcommands completed: {bash}");
        let (code, zsh, _) = bare(bin, &["completions", "zsh"]).await;
        assert_eq!(code, Some(0));
        assert!(zsh.starts_with(&format!("#compdef {bin}")), "{zsh}");
        let (code, fish, _) = bare(bin, &["completions", "fish"]).await;
        assert_eq!(code, Some(0));
        assert!(fish.contains(&format!("complete -c {bin}")), "{fish}");
        let (code, _, err) = bare(bin, &["completions", "tcsh"]).await;
        assert_eq!(code, Some(2), "an unknown shell is a usage error");
        assert!(err.contains("invalid value 'tcsh'"), "{err}");

        let (code, man, err) = bare(bin, &["man"]).await;
        assert_eq!(code, Some(0), "{err}");
        assert!(man.contains(&format!(".TH {bin} 1")), "{man}");
        assert!(man.contains("status"), "{man}");

        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("man1");
        let (code, listed, err) = bare(bin, &["man", "--dir", target.to_str().unwrap()]).await;
        assert_eq!(code, Some(0), "{err}");
        for page in [format!("{bin}.1"), format!("{bin}-status.1")] {
            let path = target.join(&page);
            assert!(path.is_file(), "{page} written: {listed}");
            assert!(listed.contains(path.to_str().unwrap()), "{listed}");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(".TH"), "{page} is a man page");
        }
    }
    let (code, _, err) = bare("syncdata", &["status"]).await;
    assert_eq!(code, Some(1), "other commands still need a configuration");
    assert!(err.contains("--config"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_config_check_fails_where_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("", "no producer.rules_file"),
        (
            "[producer]\nrules_file = \"/nonexistent/rules.toml\"\n",
            "/nonexistent/rules.toml",
        ),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("p{i}.toml"));
        std::fs::write(
            &path,
            format!("archive_dir = \"/var/lib/syncdata/archive\"\n{extra}"),
        )
        .unwrap();
        let (code, out, err) = bare(
            "syncdata-producer",
            &["--config", path.to_str().unwrap(), "config", "check"],
        )
        .await;
        assert_eq!(code, Some(1), "{out}{err}");
        assert!(!out.contains("configuration OK"), "{out}");
        assert!(err.starts_with("error: ") && err.contains(want), "{err}");
        assert_eq!(err.lines().count(), 1, "one error line, no hint: {err}");
    }
}
