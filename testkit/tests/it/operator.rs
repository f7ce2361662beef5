//! What an operator relies on: `status` per table (state, backlog, rate,
//! ETA, end-to-end freshness) with `--check` exit codes, `errors` that drop
//! once dead letters are gone, the consistency of the commands' edges
//! (idempotent add/remove, a `dlq` typo, `clear`'s way back, a snapshot of a
//! table the archiver does not capture, PostgreSQL and NATS down at `start`
//! treated alike), a running daemon picking whitelist changes up by itself,
//! and `verify`'s exit codes and key order. Real binaries, real servers.

use syncdata_testkit::harness as support;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{json, Value};
use support::{Proc, TestDb, TestNames};
use syncdata_core::nats;
use syncdata_core::subject::table_subject;

struct World {
    db: TestDb,
    names: TestNames,
    dir: tempfile::TempDir,
    config: PathBuf,
}

struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Out {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl World {
    async fn new(tag: &str, ddl: &str, extra_toml: &str) -> World {
        let db = support::fresh_database(tag).await;
        if !ddl.is_empty() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_owned()))
                .execute(&db.pool)
                .await
                .expect("ddl");
        }
        let names = TestNames::new(tag);
        let dir = tempfile::tempdir().unwrap();
        let config = support::write_config(
            dir.path(),
            &db,
            &names,
            &support::nats_url(),
            dir.path(),
            extra_toml,
        );
        World {
            db,
            names,
            dir,
            config,
        }
    }

    async fn run(&self, bin: &str, args: &[&str], env: &[(&str, &str)]) -> Out {
        let out = support::run_cli(bin, &self.config, args, env).await;
        Out {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn cli(&self, args: &[&str]) -> Out {
        self.run("syncdata", args, &[]).await
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        assert!(out.status.success(), "syncdata {args:?} failed: {out}");
        out.stdout
    }

    fn start(&self) -> Proc {
        Proc::spawn(
            "syncdata",
            &["start"],
            &self.config,
            &[("RUST_LOG", "info")],
            self.dir.path(),
        )
    }

    async fn js(&self) -> jetstream::Context {
        let js = jetstream::new(support::nats_connect(&support::nats_url()).await);
        let cfg = syncdata_core::config::NatsConfig {
            url: support::nats_url(),
            stream: self.names.stream.clone(),
            subject_prefix: self.names.subject_prefix.clone(),
            dlq_stream: self.names.dlq_stream.clone(),
            dlq_subject_prefix: self.names.dlq_subject_prefix.clone(),
            ..Default::default()
        };
        nats::ensure_stream(&js, nats::change_stream_config(&cfg))
            .await
            .expect("change stream");
        js
    }

    /// Publishes signed records of `table` (or unsigned ones, which every
    /// daemon dead-letters at once).
    async fn publish(&self, table: &str, payloads: Vec<Vec<u8>>, signed: bool) {
        let js = self.js().await;
        let subject = table_subject(&self.names.subject_prefix, "public", table);
        let mut acks = Vec::new();
        for p in payloads {
            acks.push(if signed {
                support::publish_signed(&js, subject.clone(), p)
                    .await
                    .unwrap()
            } else {
                js.publish(subject.clone(), p.into()).await.unwrap()
            });
        }
        for a in acks {
            a.await.expect("puback");
        }
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select count(*) from \"{table}\""
        )))
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }

    async fn wait_count(&self, table: &str, n: i64, daemon: &Proc) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let got = self.count(table).await;
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{table}: {got} rows, expected {n}; daemon log:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn status(&self, check: bool) -> (Option<i32>, Value) {
        let args: &[&str] = if check {
            &["status", "--json", "--check"]
        } else {
            &["status", "--json"]
        };
        let out = self.cli(args).await;
        let v = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"));
        (out.code(), v)
    }
}

fn lsn(n: u64) -> String {
    format!("{:X}/{:X}", n >> 32, n & 0xffff_ffff)
}

fn insert(table: &str, id: u64, v: u64, ts: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schema": "public", "table": table, "op": "INSERT", "lsn": lsn(v), "seq": 0,
        "ts": ts, "data": {"id": id, "v": format!("v{id}")}
    }))
    .unwrap()
}

async fn sigterm_ok(mut daemon: Proc) {
    daemon.sigterm();
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("daemon exits on SIGTERM");
    assert!(status.success(), "graceful stop exits 0:\n{}", daemon.log());
}

const DDL: &str = r#"
CREATE TABLE a (id bigint PRIMARY KEY, v text);
CREATE TABLE b (id bigint PRIMARY KEY, v text);
CREATE TABLE quiet (id bigint PRIMARY KEY, v text);
"#;

// ---------------------------------------------------------------------------
// status: states, rate, backlog, ETA, freshness, errors, --check
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_state_freshness_and_check_exit_codes() {
    let w = World::new("op_status", DDL, "[consumer]\nfetch_wait_ms = 100\n").await;
    w.ok(&["add-tables", "a", "b", "quiet"]).await;
    let ts = ["2026-11-22T03:01:56.411546Z", "2026-11-22T03:05:00.5Z"];
    w.publish(
        "a",
        (1..=20)
            .map(|i| insert("a", i, 100 + i, ts[(i % 2) as usize]))
            .collect(),
        true,
    )
    .await;

    // No daemon: changes are waiting, nobody applies them.
    let (code, s) = w.status(true).await;
    assert_eq!(code, Some(2), "--check without a daemon: {s:#}");
    assert_eq!(s["tables"][0]["state"], "stopped", "{s:#}");
    assert_eq!(s["tables"][0]["backlog"], 20, "{s:#}");
    assert!(s["tables"][0]["eta_seconds"].is_null(), "{s:#}");
    assert!(
        s["attention"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("no daemon")),
        "{s:#}"
    );
    let (code, _) = w.status(false).await;
    assert_eq!(code, Some(0), "without --check status exits 0");

    let daemon = w.start();
    w.wait_count("a", 20, &daemon).await;
    let (_, s) = w.status(false).await;
    let a = &s["tables"][0];
    assert_eq!(a["table"], "a");
    assert_eq!(a["state"], "caught_up", "{s:#}");
    assert_eq!(a["backlog"], 0);
    assert_eq!(a["eta_seconds"], 0.0);
    assert_eq!(
        a["source_commit_at"], "2026-11-22T03:05:00Z",
        "the newest source commit time applied: {s:#}"
    );
    assert!(a["freshness_seconds"].as_f64().unwrap() > 0.0, "{s:#}");
    assert!(
        a["applied_per_second"].as_f64().unwrap() > 0.0,
        "20 records in the last minute: {s:#}"
    );
    assert!(s["applied_per_second"].as_f64().unwrap() > 0.0);
    // b and quiet: nothing ever arrived.
    assert_eq!(s["tables"][1]["state"], "waiting_for_data", "{s:#}");
    assert!(s["tables"][1]["source_commit_at"].is_null());
    assert_eq!(s["daemons"], 1);
    assert_eq!(s["errors"], 0);
    let (code, s) = w.status(true).await;
    assert_eq!(
        code,
        Some(2),
        "tables waiting for data need attention: {s:#}"
    );
    assert!(
        s["attention"]
            .as_array()
            .unwrap()
            .contains(&json!("quiet: waiting for data")),
        "{s:#}"
    );

    // Data for b and quiet: all caught up, --check exits 0.
    w.publish("b", vec![insert("b", 1, 500, ts[0])], true).await;
    w.publish("quiet", vec![insert("quiet", 1, 501, ts[0])], true)
        .await;
    w.wait_count("b", 1, &daemon).await;
    w.wait_count("quiet", 1, &daemon).await;
    let (code, s) = w.status(true).await;
    assert_eq!(code, Some(0), "all caught up: {s:#}");
    assert_eq!(s["attention"], json!([]));

    // Dead letters: state, errors, --check; gone after a purge.
    w.publish("b", vec![insert("b", 2, 600, ts[0])], false)
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let (code, s) = w.status(true).await;
        // The dead letter is filed, then its FAILED row written.
        if s["errors"] == 1 && s["errors_logged"].as_i64() >= Some(1) {
            assert_eq!(code, Some(2), "{s:#}");
            break s;
        }
        assert!(Instant::now() < deadline, "no dead letter: {s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s["tables"][1]["state"], "dead_letters", "{s:#}");
    let plain = w.ok(&["status"]).await;
    assert!(plain.contains("needs attention:"), "{plain}");
    assert!(plain.contains("b: dead letters"), "{plain}");
    assert_eq!(
        plain.matches("  - a ").count(),
        1,
        "each table listed once:\n{plain}"
    );
    w.ok(&["dlq", "purge", "--table", "b", "--yes"]).await;
    let (code, s) = w.status(true).await;
    assert_eq!(
        s["errors"], 0,
        "errors drop once the dead letters are gone: {s:#}"
    );
    assert!(
        s["errors_logged"].as_i64().unwrap() >= 1,
        "the log keeps them"
    );
    assert_eq!(code, Some(0), "{s:#}");
    sigterm_ok(daemon).await;
}

// ---------------------------------------------------------------------------
// Consistency of the edges
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_edges_are_consistent() {
    let w = World::new("op_edges", DDL, "[source]\ntables = [\"a\"]\n").await;

    // add-tables of a listed table and remove-tables of an unlisted one:
    // both reach the state asked for and exit 0, saying so.
    w.ok(&["add-tables", "a"]).await;
    let out = w.cli(&["add-tables", "a"]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("a is already listed"), "{out}");
    let out = w.cli(&["remove-tables", "b"]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("b is not listed"), "{out}");
    w.ok(&["add-tables", "b"]).await;
    let out = w.cli(&["remove-tables", "b"]).await;
    assert!(out.stdout.contains("removed b"), "{out}");
    // A name that cannot be a table still fails.
    let out = w.cli(&["remove-tables", "a.b.c"]).await;
    assert_eq!(out.code(), Some(1), "{out}");

    // dlq with a table that is neither listed nor has dead letters: an error.
    for args in [
        &["dlq", "purge", "--table", "nosuch", "--yes"][..],
        &["dlq", "list", "--table", "nosuch"][..],
        &["dlq", "replay", "--table", "nosuch"][..],
    ] {
        let out = w.cli(args).await;
        assert_eq!(out.code(), Some(1), "{args:?}: {out}");
        assert!(
            out.stderr
                .contains("nosuch is not in the whitelist and has no dead letters"),
            "{args:?}: {out}"
        );
    }
    // A listed table without dead letters is fine.
    let out = w.cli(&["dlq", "purge", "--table", "a", "--yes"]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("purged 0 dead letters"), "{out}");

    // clear --yes says how to get the rows back.
    let out = w.cli(&["clear", "--yes"]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("cleared a"), "{out}");
    assert!(out.stdout.contains("syncdata resync"), "{out}");

    // The producer refuses to snapshot a table the archiver does not capture.
    let out = w.run("syncdata-producer", &["snapshot", "b"], &[]).await;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains("b is not captured by the archiver")
            && out.stderr.contains("source.tables"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_gives_up_alike_when_postgresql_or_nats_is_down() {
    let w = World::new("op_down", DDL, "").await;
    w.ok(&["add-tables", "a"]).await;
    let dead_pg = support::free_port().to_string();
    let dead_nats = format!("nats://127.0.0.1:{}", support::free_port());
    let pg_env = [("PG_PORT", dead_pg.as_str())];
    let nats_env = [("NATS_URL", dead_nats.as_str())];
    let started = Instant::now();
    let (pg, nats) = tokio::join!(
        w.run("syncdata", &["start"], &pg_env),
        w.run("syncdata", &["start"], &nats_env),
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(14) && took < Duration::from_secs(45),
        "both retry for 15 s, then exit: {took:?}"
    );
    for (what, out) in [("PostgreSQL", &pg), ("NATS", &nats)] {
        assert_eq!(out.code(), Some(1), "{what} down: {out}");
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains("not reachable within 15 s"),
            "{what} down: one clear last line: {out}"
        );
    }
    assert!(pg.stderr.contains("is PostgreSQL running?"), "{pg}");
    assert!(
        pg.stderr.contains("Connection refused") || pg.stderr.contains("connection refused"),
        "{pg}"
    );
    assert!(nats.stderr.contains("is nats-server running?"), "{nats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_daemon_picks_whitelist_changes_up() {
    let w = World::new("op_pickup", DDL, "[consumer]\nfetch_wait_ms = 100\n").await;
    w.ok(&["add-tables", "a"]).await;
    let ts = "2026-11-22T03:01:56Z";
    let daemon = w.start();
    w.publish("a", vec![insert("a", 1, 100, ts)], true).await;
    w.wait_count("a", 1, &daemon).await;

    // Added while running: synced without a restart.
    w.publish(
        "b",
        (1..=5).map(|i| insert("b", i, 200 + i, ts)).collect(),
        true,
    )
    .await;
    let out = w.ok(&["add-tables", "b"]).await;
    assert!(out.contains("added b"), "{out}");
    w.wait_count("b", 5, &daemon).await;
    assert!(
        daemon
            .log()
            .contains("table added to the whitelist: syncing it"),
        "{}",
        daemon.log()
    );

    // Removed while running: its worker stops, its changes wait.
    w.ok(&["remove-tables", "a"]).await;
    support::wait_until(
        "the removal is picked up",
        Duration::from_secs(20),
        || async { daemon.log().contains("worker of the removed table stopped") },
    )
    .await;
    w.publish("a", vec![insert("a", 2, 300, ts)], true).await;
    w.publish("b", vec![insert("b", 6, 301, ts)], true).await;
    w.wait_count("b", 6, &daemon).await;
    assert_eq!(w.count("a").await, 1, "a is no longer synced");
    sigterm_ok(daemon).await;
}

// ---------------------------------------------------------------------------
// verify: exit codes, key order, no primary key, hints
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_exit_codes_key_order_and_hints() {
    let ddl = "CREATE TABLE t (id bigint PRIMARY KEY, v text); \
               CREATE TABLE nopk (a int, b text);";
    let w = World::new("op_verify", ddl, "").await;
    let source = support::fresh_database("op_verify_src").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_owned()))
        .execute(&source.pool)
        .await
        .unwrap();
    let rows = "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 120) g";
    for pool in [&w.db.pool, &source.pool] {
        sqlx::raw_sql(rows).execute(pool).await.unwrap();
    }
    let src = support::pg_env().url_for(&source.name);
    w.ok(&["add-tables", "t"]).await;

    let out = w.cli(&["verify", "--source", &src]).await;
    assert_eq!(out.code(), Some(0), "equal: {out}");
    assert!(out.stdout.contains("t: equal"), "{out}");

    sqlx::raw_sql("UPDATE t SET v = 'changed' WHERE id IN (2, 10, 100)")
        .execute(&w.db.pool)
        .await
        .unwrap();
    let out = w.cli(&["verify", "--source", &src]).await;
    assert_eq!(out.code(), Some(1), "differs: {out}");
    let keys: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("different:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        keys,
        ["id=2", "id=10", "id=100"],
        "natural key order: {out}"
    );
    assert!(
        out.stdout.contains("--exclude-columns t.COLUMN"),
        "hint: {out}"
    );
    assert!(out.stderr.contains("1 of 1 table(s) differ"), "{out}");
    let out = w
        .cli(&["verify", "--source", &src, "--exclude-columns", "t.v"])
        .await;
    assert_eq!(out.code(), Some(0), "sanitized column left out: {out}");

    let out = w.cli(&["verify", "--source", &src, "nopk"]).await;
    assert_eq!(out.code(), Some(2), "no primary key: {out}");
    assert!(out.stdout.contains("nopk: CANNOT COMPARE"), "{out}");
    assert!(out.stderr.contains("no primary key at the source"), "{out}");

    let dead = format!("postgres://postgres@127.0.0.1:{}/x", support::free_port());
    let out = w.cli(&["verify", "--source", &dead]).await;
    assert_eq!(out.code(), Some(2), "cannot connect: {out}");
    assert!(out.stderr.contains("cannot connect to the source"), "{out}");

    let out = w.cli(&["verify", "--source", &src, "--json"]).await;
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[0]["comparable"], true);
    assert_eq!(v[0]["rows"][0]["key"], json!([["id", "2"]]), "{v:#}");
}
