//! Operations: every `syncdata` command end to end with its error paths,
//! `status` (plain and the documented `--json` schema), `stop`, `resync`,
//! `clear`, `config check` with environment overrides, the Prometheus
//! endpoint and `data_sync_metrics`. Each test runs the real binary against
//! the real PostgreSQL and nats-server, with its own database and streams.

use syncdata_testkit::harness as support;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{json, Value};
use support::{free_port, sample_sum, scrape, scrape_until, Proc, TestDb, TestNames};
use syncdata_core::config::NatsConfig;
use syncdata_core::nats;
use syncdata_core::record::Record;
use syncdata_core::subject::{durable_name, table_subject};
use syncdata_testkit::workload::{self, WorkloadSpec};

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

/// One test's world: its database, its streams, a config file pointing at
/// both, and a directory for logs.
struct World {
    db: TestDb,
    names: TestNames,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl World {
    /// A fresh database with `ddl` applied, fresh stream names (the streams
    /// do not exist until a daemon or a publish creates them), and a config
    /// file with `extra_toml` appended (it may add `[consumer]`).
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

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn cli(&self, args: &[&str]) -> Out {
        cli(&self.config, args, &[]).await
    }

    /// Runs a command that must succeed; returns its stdout.
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
            self.dir(),
        )
    }

    async fn instance(&self) -> String {
        sqlx::query_scalar("select id from syncdata.instance")
            .fetch_one(&self.db.pool)
            .await
            .expect("instance id (migrations ran?)")
    }

    /// (num_pending, num_ack_pending) of `table`'s durable.
    async fn durable(&self, table: &str) -> (u64, u64) {
        let name = durable_name(&self.names.stream, &self.instance().await, "public", table);
        let stream = js().await.get_stream(&self.names.stream).await.unwrap();
        let mut c = stream
            .get_consumer::<jetstream::consumer::pull::Config>(&name)
            .await
            .unwrap_or_else(|e| panic!("durable {name}: {e}"));
        let info = c.info().await.unwrap();
        (info.num_pending, info.num_ack_pending as u64)
    }

    /// Publishes JSON records (one payload each) for `table`, waiting for
    /// every PubAck.
    async fn publish(&self, table: &str, payloads: Vec<Vec<u8>>) {
        self.ensure_stream().await;
        let subject = table_subject(&self.names.subject_prefix, "public", table);
        publish_to(&subject, payloads).await;
    }

    async fn publish_records(&self, records: &[Record]) {
        self.ensure_stream().await;
        let js = js().await;
        let mut acks = Vec::new();
        for r in records {
            let subject = table_subject(&self.names.subject_prefix, &r.schema, &r.table);
            acks.push(
                support::publish_signed(&js, subject, r.to_json())
                    .await
                    .unwrap(),
            );
            if acks.len() >= 1000 {
                for a in acks.drain(..) {
                    a.await.expect("puback");
                }
            }
        }
        for a in acks {
            a.await.expect("puback");
        }
    }

    /// Creates the change stream as the daemon and the producer do.
    async fn ensure_stream(&self) {
        nats::ensure_stream(
            &js().await,
            nats::change_stream_config(&nats_config(&self.names)),
        )
        .await
        .expect("change stream");
    }

    /// Records applied so far (sum of `rows_synced` of SUCCESS rows).
    async fn applied(&self) -> i64 {
        sqlx::query_scalar(
            "select coalesce(sum(rows_synced), 0)::int8 from data_sync_logs where status = 'SUCCESS'",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }

    async fn wait_applied(&self, n: i64, daemon: &Proc) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let got = self.applied().await;
            if got >= n {
                assert_eq!(got, n, "more records applied than published");
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "only {got} of {n} records applied; daemon log:\n{}",
                    daemon.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
}

fn nats_config(names: &TestNames) -> NatsConfig {
    NatsConfig {
        url: support::nats_url(),
        stream: names.stream.clone(),
        subject_prefix: names.subject_prefix.clone(),
        dlq_stream: names.dlq_stream.clone(),
        dlq_subject_prefix: names.dlq_subject_prefix.clone(),
        ..Default::default()
    }
}

async fn js() -> jetstream::Context {
    jetstream::new(support::nats_connect(&support::nats_url()).await)
}

async fn publish_to(subject: &str, payloads: Vec<Vec<u8>>) {
    let js = js().await;
    let mut acks = Vec::new();
    for p in payloads {
        acks.push(
            support::publish_signed(&js, subject.to_owned(), p)
                .await
                .unwrap(),
        );
        if acks.len() >= 1000 {
            for a in acks.drain(..) {
                a.await.expect("puback");
            }
        }
    }
    for a in acks {
        a.await.expect("puback");
    }
}

fn lsn(n: u64) -> String {
    format!("{:X}/{:X}", n >> 32, n & 0xffff_ffff)
}

fn record(table: &str, op: &str, data: Option<Value>, old_keys: Option<Value>, v: u64) -> Vec<u8> {
    let mut r = json!({"schema": "public", "table": table, "op": op, "lsn": lsn(v), "seq": 0});
    if let Some(d) = data {
        r["data"] = d;
    }
    if let Some(k) = old_keys {
        r["old_keys"] = k;
    }
    serde_json::to_vec(&r).unwrap()
}

/// Stops a daemon with SIGTERM and asserts a clean exit.
async fn sigterm_ok(mut daemon: Proc) {
    daemon.sigterm();
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("daemon exits on SIGTERM");
    assert!(status.success(), "graceful stop exits 0:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------
// One-shot commands
// ---------------------------------------------------------------------------

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

/// Runs `syncdata args…` to completion (at most 60 s) with
/// `DATA_SYNC_CONFIG=config` and `env`, stdout and stderr apart.
async fn cli(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = support::run_cli("syncdata", config, args, env).await;
    Out {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_fails_with(out: &Out, what: &str, needle: &str) {
    assert!(!out.status.success(), "{what} must fail: {out}");
    assert_eq!(out.status.code(), Some(1), "{what}: exit code: {out}");
    assert!(
        out.stderr.contains(needle),
        "{what}: stderr should say {needle:?}: {out}"
    );
}

// ---------------------------------------------------------------------------
// 1. Every command, with its error paths
// ---------------------------------------------------------------------------

const GOOD_DDL: &str = r#"
CREATE TABLE good (id bigint PRIMARY KEY, v text);
CREATE TABLE nopk (a int, b text);
CREATE TABLE bystander (id int PRIMARY KEY, v text);
INSERT INTO bystander VALUES (1, 'untouched'), (2, 'untouched');
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_end_to_end_with_error_paths() {
    let w = World::new("ops_cmds", GOOD_DDL, "[consumer]\nfetch_wait_ms = 100\n").await;

    // --help of the binary and of every command exits 0 without touching
    // any server.
    for args in [
        vec!["--help"],
        vec!["add-tables", "--help"],
        vec!["list-tables", "--help"],
        vec!["remove-tables", "--help"],
        vec!["start", "--help"],
        vec!["stop", "--help"],
        vec!["status", "--help"],
        vec!["resync", "--help"],
        vec!["clear", "--help"],
        vec!["config", "--help"],
        vec!["config", "check", "--help"],
        vec!["dlq", "--help"],
        vec!["dlq", "list", "--help"],
        vec!["dlq", "show", "--help"],
        vec!["dlq", "replay", "--help"],
        vec!["dlq", "purge", "--help"],
        vec!["dlq", "migrate", "--help"],
    ] {
        let out = w.cli(&args).await;
        assert!(out.status.success(), "syncdata {args:?}: {out}");
        assert!(out.stdout.contains("Usage:"), "syncdata {args:?}: {out}");
    }

    // Not set up yet: a read-only command says so (and creates nothing);
    // `migrate` sets syncdata up.
    let out = w.cli(&["list-tables"]).await;
    assert_fails_with(&out, "list-tables before setup", "syncdata is not set up");
    w.ok(&["migrate"]).await;

    // An empty whitelist: list-tables says so, start refuses.
    let out = w.ok(&["list-tables"]).await;
    assert!(out.contains("No tables in whitelist"), "{out}");
    let out = w.cli(&["start"]).await;
    assert_fails_with(
        &out,
        "start with an empty whitelist",
        "No tables in whitelist",
    );
    assert_eq!(w.ok(&["list-tables", "--json"]).await.trim(), "[]");

    // add-tables: unknown table, table without primary key, both named.
    let out = w.cli(&["add-tables", "no_such_table"]).await;
    assert_fails_with(&out, "add-tables of an unknown table", "not found locally");
    assert!(out.stderr.contains("no_such_table"), "{out}");
    let out = w.cli(&["add-tables", "nopk"]).await;
    assert_fails_with(&out, "add-tables of a table without key", "no primary key");
    assert!(out.stderr.contains("nopk"), "{out}");
    // A mix: the good one is added, the bad one reported, exit non-zero.
    let out = w.cli(&["add-tables", "good", "nopk"]).await;
    assert_fails_with(
        &out,
        "add-tables good nopk",
        "1 of 2 tables could not be added",
    );
    assert!(out.stdout.contains("added good"), "{out}");
    let out = w.ok(&["add-tables", "good"]).await;
    assert!(out.contains("good is already listed"), "{out}");

    // list-tables, plain and JSON.
    let out = w.ok(&["list-tables"]).await;
    assert!(out.contains("synced tables (1):"), "{out}");
    assert!(out.contains("  - good"), "{out}");
    let list: Value = serde_json::from_str(&w.ok(&["list-tables", "--json"]).await).unwrap();
    let list = list.as_array().expect("a JSON array");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["table"], "good");
    assert!(list[0]["created_at"].is_string(), "{list:?}");

    // status before any daemon ran and before the stream exists: inactive,
    // the table with nothing pending and no durable, no NATS warning.
    let out = w.cli(&["status", "--json"]).await;
    assert!(out.status.success(), "status --json: {out}");
    assert!(!out.stderr.contains("warning"), "{out}");
    let s: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(s["status"], "inactive");
    assert_eq!(
        s["tables"][0]["stream"],
        json!({"pending": 0, "ack_pending": 0, "lag_seconds": 0.0, "waiting_pulls": 0,
               "dlq": 0, "durable_exists": false}),
        "{out}"
    );

    // remove-tables of a listed and of an unlisted table.
    w.ok(&["add-tables", "bystander"]).await;
    let out = w.ok(&["remove-tables", "bystander"]).await;
    assert!(out.contains("removed bystander"), "{out}");
    // Idempotent, like add-tables of a listed table (operator.rs).
    let out = w.ok(&["remove-tables", "bystander"]).await;
    assert!(out.contains("bystander is not listed"), "{out}");
    let out = w.ok(&["list-tables"]).await;
    assert!(
        out.contains("synced tables (1):") && !out.contains("bystander"),
        "{out}"
    );

    // resync of an unlisted table is refused.
    let out = w.cli(&["resync", "bystander"]).await;
    assert_fails_with(&out, "resync of an unlisted table", "not in the whitelist");

    // config check: a valid file passes and never prints the password.
    let secret = "file-secret-7f3a";
    let text = std::fs::read_to_string(&w.config).unwrap();
    let with_pw = w.dir().join("with_password.toml");
    std::fs::write(&with_pw, format!("pg_password = \"{secret}\"\n{text}")).unwrap();
    let out = cli(&with_pw, &["config", "check"], &[]).await;
    assert!(out.status.success(), "config check: {out}");
    assert!(out.stdout.contains("configuration OK"), "{out}");
    assert!(out.stdout.contains("<redacted>"), "{out}");
    assert!(
        !out.stdout.contains(secret) && !out.stderr.contains(secret),
        "password printed: {out}"
    );
    // ... and an invalid one fails naming the field.
    let bad = w.dir().join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("[consumer]\n", "[consumer]\nbatch_size = 0\n"),
    )
    .unwrap();
    let out = cli(&bad, &["config", "check"], &[]).await;
    assert_fails_with(
        &out,
        "config check of batch_size = 0",
        "consumer.batch_size",
    );
    std::fs::write(
        &bad,
        text.replace("data_sync_freq = 60", "data_sync_freq = 59"),
    )
    .unwrap();
    let out = cli(&bad, &["config", "check"], &[]).await;
    assert_fails_with(
        &out,
        "config check of data_sync_freq = 59",
        "data_sync_freq",
    );
    std::fs::write(&bad, format!("pg_databse = \"x\"\n{text}")).unwrap();
    let out = cli(&bad, &["config", "check"], &[]).await;
    assert_fails_with(&out, "config check with an unknown key", "pg_databse");
    // The same through --config.
    let out = cli(
        &w.config,
        &["--config", bad.to_str().unwrap(), "config", "check"],
        &[],
    )
    .await;
    assert_fails_with(&out, "config check --config", "pg_databse");

    // Fill `good` through the daemon, so it has bookkeeping to clear.
    let payloads = (1..=20)
        .map(|i| {
            record(
                "good",
                "INSERT",
                Some(json!({"id": i, "v": format!("v{i}")})),
                None,
                i,
            )
        })
        .collect();
    w.publish("good", payloads).await;
    let daemon = w.start();
    w.wait_applied(20, &daemon).await;
    sigterm_ok(daemon).await;
    assert_eq!(w.count("good").await, 20);
    let row_states = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from syncdata.row_state r join syncdata.table_state t on t.id = r.table_id \
             where t.table_name = 'good'",
        )
        .fetch_one(&w.db.pool)
        .await
        .unwrap()
    };
    assert_eq!(row_states().await, 20);

    // clear without --yes refuses and changes nothing.
    let out = w.cli(&["clear"]).await;
    assert_fails_with(&out, "clear without --yes", "--yes");
    assert_eq!(w.count("good").await, 20);
    // clear --yes empties the synced table and its bookkeeping, nothing else.
    let out = w.ok(&["clear", "--yes"]).await;
    assert!(out.contains("cleared good"), "{out}");
    assert_eq!(w.count("good").await, 0);
    assert_eq!(row_states().await, 0);
    let floor: (i64, i64) = sqlx::query_as(
        "select truncate_lsn, truncate_seq from syncdata.table_state where table_name = 'good'",
    )
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(floor, (0, 0));
    assert_eq!(
        w.count("bystander").await,
        2,
        "a table not synced is left alone"
    );
    assert_eq!(w.count("nopk").await, 0);

    // dlq on an empty dead-letter stream, and its argument errors.
    let out = w.ok(&["dlq", "list"]).await;
    assert!(out.contains("no dead letters"), "{out}");
    assert_eq!(w.ok(&["dlq", "list", "--json"]).await.trim(), "[]");
    let out = w.cli(&["dlq", "show", "42"]).await;
    assert_fails_with(
        &out,
        "dlq show of a missing id",
        "no dead letter with id 42",
    );
    let out = w.cli(&["dlq", "replay", "--table", "good", "3"]).await;
    assert_fails_with(&out, "dlq replay with --table and an id", "not both");
    let out = w.cli(&["dlq", "purge"]).await;
    assert_fails_with(&out, "dlq purge without --yes", "--yes");
    let out = w.ok(&["dlq", "replay"]).await;
    assert!(out.contains("replayed 0 dead letters"), "{out}");

    // stop with no daemon running is not an error.
    let out = w.ok(&["stop"]).await;
    assert!(out.contains("no running daemons"), "{out}");
}

// ---------------------------------------------------------------------------
// 2. status, plain and --json (schema documented in docs/operations.md, "status --json")
// ---------------------------------------------------------------------------

fn is_utc_timestamp(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        let b = s.as_bytes();
        s.len() == 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'Z'
    })
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    k
}

/// Asserts exactly the documented keys and their types.
fn assert_status_schema(s: &Value) {
    let mut top = vec![
        "status",
        "sync_frequency_seconds",
        "start_time",
        "last_sync",
        "records_synced",
        "errors",
        "errors_logged",
        "daemons",
        "applied_per_second",
        "attention",
        "tables",
        "retention",
    ];
    top.sort();
    assert_eq!(keys(s), top, "top-level keys of {s:#}");
    assert!(s["status"].is_string());
    assert!(s["sync_frequency_seconds"].is_u64());
    for f in ["start_time", "last_sync"] {
        assert!(s[f].is_null() || is_utc_timestamp(&s[f]), "{f}: {s:#}");
    }
    for f in ["records_synced", "errors", "errors_logged", "daemons"] {
        assert!(s[f].is_i64() && s[f].as_i64().unwrap() >= 0, "{f}: {s:#}");
    }
    assert!(s["applied_per_second"].as_f64().is_some_and(|r| r >= 0.0));
    assert!(s["attention"]
        .as_array()
        .expect("attention is an array")
        .iter()
        .all(Value::is_string));
    let mut per_table = vec![
        "table",
        "last_applied_lsn",
        "last_applied_at",
        "stream",
        "worker_restarts",
        "worker_error",
        "state",
        "backlog",
        "applied_per_second",
        "eta_seconds",
        "source_commit_at",
        "freshness_seconds",
        "producer_halt",
    ];
    per_table.sort();
    let mut stream = vec![
        "pending",
        "ack_pending",
        "lag_seconds",
        "waiting_pulls",
        "dlq",
        "durable_exists",
    ];
    stream.sort();
    for t in s["tables"].as_array().expect("tables is an array") {
        assert_eq!(keys(t), per_table, "table keys of {t:#}");
        assert!(t["table"].is_string());
        assert!(t["last_applied_lsn"].is_null() || t["last_applied_lsn"].is_string());
        assert!(t["last_applied_at"].is_null() || is_utc_timestamp(&t["last_applied_at"]));
        assert!(t["worker_restarts"].is_i64() && t["worker_restarts"].as_i64().unwrap() >= 0);
        assert!(t["worker_error"].is_null() || t["worker_error"].is_string());
        assert!(t["producer_halt"].is_null() || t["producer_halt"].is_string());
        let states = [
            "halted_at_producer",
            "dead_letters",
            "stopped",
            "unknown",
            "waiting_for_data",
            "syncing",
            "caught_up",
        ];
        assert!(
            states.contains(&t["state"].as_str().unwrap_or_default()),
            "state: {t:#}"
        );
        assert!(t["backlog"].is_u64(), "NATS is up: {t:#}");
        assert!(t["applied_per_second"].as_f64().is_some_and(|r| r >= 0.0));
        for f in ["eta_seconds", "freshness_seconds"] {
            assert!(
                t[f].is_null() || t[f].as_f64().is_some_and(|x| x >= 0.0),
                "{f}: {t:#}"
            );
        }
        assert!(t["source_commit_at"].is_null() || is_utc_timestamp(&t["source_commit_at"]));
        let st = &t["stream"];
        assert!(st.is_object(), "NATS is up, so stream is an object: {t:#}");
        assert_eq!(keys(st), stream, "stream keys of {t:#}");
        for f in ["pending", "ack_pending", "waiting_pulls", "dlq"] {
            assert!(st[f].is_u64(), "{f}: {t:#}");
        }
        assert!(st["lag_seconds"].is_number() && st["lag_seconds"].as_f64().unwrap() >= 0.0);
        assert!(st["durable_exists"].is_boolean());
    }
}

async fn status_json(w: &World) -> Value {
    let out = w.cli(&["status", "--json"]).await;
    assert!(out.status.success(), "status --json: {out}");
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
}

const STATUS_DDL: &str = r#"
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, balance numeric);
CREATE TABLE events (id bigint PRIMARY KEY, kind text);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_schema_with_daemon_running_and_after_stop() {
    let w = World::new(
        "ops_status",
        STATUS_DDL,
        "[consumer]\nfetch_wait_ms = 100\n",
    )
    .await;
    w.ok(&["add-tables", "accounts", "events"]).await;
    let payloads = (1..=50)
        .map(|i| {
            record(
                "accounts",
                "INSERT",
                Some(json!({"id": i, "owner": format!("o{i}"), "balance": "10.5"})),
                None,
                100 + i,
            )
        })
        .collect();
    w.publish("accounts", payloads).await;

    // Before any daemon ran: inactive, nothing synced, no durable yet, the
    // published messages all pending.
    let s = status_json(&w).await;
    assert_status_schema(&s);
    assert_eq!(s["status"], "inactive");
    assert_eq!(s["sync_frequency_seconds"], 60);
    assert_eq!(s["daemons"], 0);
    assert_eq!(s["records_synced"], 0);
    assert!(
        s["start_time"].is_null() && s["last_sync"].is_null(),
        "{s:#}"
    );
    assert_eq!(s["tables"].as_array().unwrap().len(), 2);
    assert_eq!(s["tables"][0]["table"], "accounts");
    assert_eq!(s["tables"][0]["stream"]["pending"], 50);
    assert_eq!(s["tables"][0]["stream"]["durable_exists"], false);
    assert_eq!(s["tables"][1]["table"], "events");

    let mut daemon = w.start();
    w.wait_applied(50, &daemon).await;
    let s = status_json(&w).await;
    assert_status_schema(&s);
    assert_eq!(s["status"], "active", "{s:#}");
    assert!(s["daemons"].as_i64().unwrap() >= 1, "{s:#}");
    assert_eq!(s["records_synced"], 50);
    assert_eq!(s["errors"], 0);
    assert!(
        is_utc_timestamp(&s["start_time"]) && is_utc_timestamp(&s["last_sync"]),
        "{s:#}"
    );
    let acc = &s["tables"][0];
    assert_eq!(acc["last_applied_lsn"], lsn(150), "{s:#}");
    assert!(is_utc_timestamp(&acc["last_applied_at"]));
    assert_eq!(acc["stream"]["durable_exists"], true);
    assert_eq!(acc["stream"]["pending"], 0);
    assert_eq!(acc["stream"]["dlq"], 0);
    let ev = &s["tables"][1];
    assert!(
        ev["last_applied_lsn"].is_null() && ev["last_applied_at"].is_null(),
        "{s:#}"
    );

    // The plain form carries the seed's lines.
    let plain = w.ok(&["status"]).await;
    let lines: Vec<&str> = plain.lines().collect();
    for prefix in [
        "status: active",
        "sync frequency: 60 seconds",
        "start time: ",
        "last sync: ",
        "records synced: 50",
        "errors: 0",
        "synced tables (2):",
        "  - accounts",
        "  - events",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "no line {prefix:?} in:\n{plain}"
        );
    }
    assert!(!plain.contains("start time: never"), "{plain}");

    // stop: the daemon exits 0 and status turns inactive.
    let out = w.ok(&["stop"]).await;
    assert!(out.contains("stopped"), "{out}");
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("daemon exits after stop");
    assert!(status.success(), "{}", daemon.log());
    let s = status_json(&w).await;
    assert_status_schema(&s);
    assert_eq!(s["status"], "inactive", "{s:#}");
    assert_eq!(s["daemons"], 0);
    assert_eq!(s["records_synced"], 50);
    assert!(
        is_utc_timestamp(&s["start_time"]),
        "last start is still shown: {s:#}"
    );
    let plain = w.ok(&["status"]).await;
    assert!(plain.lines().any(|l| l == "status: inactive"), "{plain}");
}

// ---------------------------------------------------------------------------
// 3. resync restores a damaged table while another keeps syncing
// ---------------------------------------------------------------------------

async fn demo_fingerprints(db: &TestDb) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for t in workload::demo_tables() {
        out.push(
            workload::table_fingerprint(&db.pool, "public", t)
                .await
                .unwrap(),
        );
    }
    out
}

async fn expected_state(tag: &str, records: &[Record]) -> Vec<(i64, String)> {
    let db = support::fresh_database(tag).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(workload::DEMO_DDL.to_owned()))
        .execute(&db.pool)
        .await
        .unwrap();
    workload::apply_in_order(&db.pool, records).await.unwrap();
    demo_fingerprints(&db).await
}

async fn wait_state(w: &World, expected: &[(i64, String)], what: &str, logs: &[&Proc]) {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let got = demo_fingerprints(&w.db).await;
        if got == expected {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
            panic!(
                "{what}: expected {expected:?}\n got {got:?}\nlogs:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_restores_a_damaged_table_while_others_keep_syncing() {
    let history = workload::generate(&WorkloadSpec::full(41, 20_000));
    // The last tenth of the `orders` changes is published during the resync.
    let orders: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].table == "orders")
        .collect();
    let cut = orders[orders.len() * 9 / 10];
    let first: Vec<Record> = history
        .iter()
        .enumerate()
        .filter(|(i, r)| !(r.table == "orders" && *i >= cut))
        .map(|(_, r)| r.clone())
        .collect();
    let later: Vec<Record> = history
        .iter()
        .enumerate()
        .filter(|(i, r)| r.table == "orders" && *i >= cut)
        .map(|(_, r)| r.clone())
        .collect();
    assert!(later.len() > 200, "{}", later.len());
    let expected_first = expected_state("ops_resync_exp1", &first).await;
    let expected_all = expected_state("ops_resync_exp2", &history).await;
    assert_ne!(
        expected_first[1], expected_all[1],
        "the later orders changes matter"
    );

    // Small batches for a resync that takes a while.
    let w = World::new(
        "ops_resync",
        workload::DEMO_DDL,
        "[consumer]\nbatch_size = 50\nfetch_wait_ms = 100\n",
    )
    .await;
    let mut args = vec!["add-tables"];
    args.extend(workload::demo_tables());
    w.ok(&args).await;
    w.publish_records(&first).await;
    let daemon = w.start();
    wait_state(&w, &expected_first, "initial sync", &[&daemon]).await;

    // Damage `customers` by hand.
    let damage = "DELETE FROM customers WHERE id % 3 = 0; \
                  UPDATE customers SET name = 'damaged', balance = -1 WHERE id % 3 = 1";
    sqlx::raw_sql(damage).execute(&w.db.pool).await.unwrap();
    let damaged = demo_fingerprints(&w.db).await;
    assert_ne!(damaged[0], expected_first[0], "the damage shows");

    let mut resync = Proc::spawn(
        "syncdata",
        &["resync", "customers", "--yes"],
        &w.config,
        &[("RUST_LOG", "warn")],
        w.dir(),
    );
    // Wait for the reset, then publish more `orders` changes while the
    // customers history replays.
    support::wait_until(
        "customers emptied by resync",
        Duration::from_secs(20),
        || async { resync.log().contains("emptied") },
    )
    .await;
    w.publish_records(&later).await;
    let orders_done = async {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let o = workload::table_fingerprint(&w.db.pool, "public", "orders")
                .await
                .unwrap();
            if o == expected_all[1] {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "orders did not converge during resync:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    // The other table's changes applied while the customers replay was
    // still going on.
    assert!(
        resync.is_running(),
        "orders converged only after the resync ended; make the replay longer"
    );
    let status = resync
        .wait_exit(Duration::from_secs(45))
        .await
        .expect("resync finishes");
    let resync_done = Instant::now();
    assert!(status.success(), "resync: {}", resync.log());
    assert!(
        resync.log().contains("customers: resynced in"),
        "{}",
        resync.log()
    );
    println!(
        "orders converged {:?} before resync ended",
        resync_done.saturating_duration_since(orders_done)
    );
    // When resync says done, the table is restored (acks follow commits).
    assert_eq!(
        workload::table_fingerprint(&w.db.pool, "public", "customers")
            .await
            .unwrap(),
        expected_all[0],
        "customers right after the resync"
    );

    // Everything equals the in-order reference: customers restored,
    // orders with the later changes, order_lines untouched.
    wait_state(&w, &expected_all, "after resync", &[&daemon]).await;
    let (pending, ack_pending) = w.durable("customers").await;
    assert_eq!((pending, ack_pending), (0, 0));
    sigterm_ok(daemon).await;
}

// ---------------------------------------------------------------------------
// 4. stop during a large batch leaves the table consistent
// ---------------------------------------------------------------------------

const WIDE_DDL: &str = r#"
CREATE TABLE wide (
    id bigint PRIMARY KEY, ver int NOT NULL,
    c1 text, c2 text, c3 text, c4 text, c5 text, c6 text
);
"#;

const WIDE_ROWS: u64 = 12_000;

/// id, ver, the text columns joined by '|', and the row's bookkeeping
/// version and state.
type WideRow = (i64, i32, String, Option<i64>, Option<String>);

fn wide_value(id: u64, ver: u64, col: usize) -> String {
    let unit = format!("{id}:{ver}:{col};");
    unit.repeat(160 / unit.len() + 1)
}

fn wide_data(id: u64, ver: u64) -> Value {
    let mut d = json!({"id": id, "ver": ver});
    for c in 1..=6 {
        d[format!("c{c}")] = json!(wide_value(id, ver, c));
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_a_large_batch_leaves_tables_consistent() {
    let w = World::new(
        "ops_stop",
        WIDE_DDL,
        "[consumer]\nbatch_size = 5000\nmax_ack_pending = 20000\n",
    )
    .await;
    w.ok(&["add-tables", "wide"]).await;
    // Inserts at versions 1..=N, then a full UPDATE of every row at N+id.
    let n = WIDE_ROWS;
    let mut payloads: Vec<Vec<u8>> = (1..=n)
        .map(|id| record("wide", "INSERT", Some(wide_data(id, 0)), None, id))
        .collect();
    payloads.extend((1..=n).map(|id| {
        record(
            "wide",
            "UPDATE",
            Some(wide_data(id, 1)),
            Some(json!({"id": id})),
            n + id,
        )
    }));
    let t0 = Instant::now();
    w.publish("wide", payloads).await;
    println!("published {} wide records in {:?}", 2 * n, t0.elapsed());

    let mut daemon = w.start();
    support::wait_until(
        "first large batch applied",
        Duration::from_secs(40),
        || async { w.applied().await > 0 },
    )
    .await;
    let t1 = Instant::now();
    let out = w.ok(&["stop"]).await;
    assert!(out.contains("stopped"), "{out}");
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("daemon exits after stop");
    println!("stop took {:?}", t1.elapsed());
    assert!(status.success(), "daemon exit: {}", daemon.log());
    let stopped: (i64, i64) =
        sqlx::query_as("select count(*), count(stopped_at) from syncdata.daemons")
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(stopped, (1, 1), "the daemon marked itself stopped");

    // The stop landed mid-stream: messages remain for the next start, and
    // none is left delivered-but-unacked by a graceful stop.
    // (The server handles acks asynchronously: allow it a moment, far less
    // than ack_wait, so a lost ack would still fail here.)
    support::wait_until(
        "no delivered-but-unacked message after a graceful stop",
        Duration::from_secs(5),
        || async { w.durable("wide").await.1 == 0 },
    )
    .await;
    let (pending, _) = w.durable("wide").await;
    assert!(
        pending > 0,
        "stop must land before the end (pending {pending})"
    );

    // Consistent: every applied batch is whole. With one daemon, batches
    // apply in stream order, so the applied set is a prefix 1..=k of the
    // versions; each local row equals the record at the version its
    // bookkeeping holds, and that version is the newest <= k for its key.
    let k = w.applied().await as u64;
    println!("stopped after {k} of {} records, {pending} pending", 2 * n);
    assert!(k > 0 && k < 2 * n, "applied {k}");
    assert_eq!(k + pending, 2 * n, "applied + pending = published");
    let rows: Vec<WideRow> = sqlx::query_as(
        "select w.id, w.ver, concat_ws('|', w.c1, w.c2, w.c3, w.c4, w.c5, w.c6), r.lsn, r.state::text \
         from wide w left join syncdata.row_state r on r.key = w.id::text \
           and r.table_id = (select id from syncdata.table_state where table_name = 'wide') \
         order by w.id",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows.len() as u64,
        k.min(n),
        "rows present = inserts applied"
    );
    let content = |id: u64, ver: u64| -> String {
        let cols: Vec<String> = (1..=6).map(|c| wide_value(id, ver, c)).collect();
        cols.join("|")
    };
    for (i, (id, ver, text, row_lsn, state)) in rows.iter().enumerate() {
        let id = *id as u64;
        assert_eq!(id, i as u64 + 1, "rows 1..=min(k, n) present");
        let want_lsn = if n + id <= k { n + id } else { id };
        assert_eq!(
            (*row_lsn, state.as_deref()),
            (Some(want_lsn as i64), Some("L")),
            "row {id}: bookkeeping"
        );
        let want_ver = u64::from(want_lsn > n);
        assert_eq!(*ver as u64, want_ver, "row {id}");
        assert!(*text == content(id, want_ver), "row {id}: content");
    }
    let book: i64 = sqlx::query_scalar("select count(*) from syncdata.row_state")
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(book as u64, k.min(n), "no bookkeeping without its row");

    // Start again: the rest applies, the table ends fully updated.
    let daemon = w.start();
    w.wait_applied(2 * n as i64, &daemon).await;
    let done: (i64, i64) =
        sqlx::query_as("select count(*), count(*) filter (where ver = 1) from wide")
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(done, (n as i64, n as i64));
    support::wait_until("durable drained", Duration::from_secs(20), || async {
        w.durable("wide").await == (0, 0)
    })
    .await;
    sigterm_ok(daemon).await;
}

/// NATS a long round trip away (300 ms, longer than the fetch wait plus its
/// grace): every message the server sends for a pull arrives after the
/// worker stopped waiting for that pull. They are taken with the next pull
/// (worker.rs, `LATE_WINDOW`), so the backlog drains long before `ack_wait`
/// (60 s), after which alone it would otherwise come again — and arrive
/// late again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_over_a_link_slower_than_the_fetch_wait() {
    let w = World::new(
        "ops_slow_link",
        WIDE_DDL,
        "[consumer]\nbatch_size = 1000\nfetch_wait_ms = 50\nack_wait_secs = 60\n",
    )
    .await;
    w.ok(&["add-tables", "wide"]).await;
    let n = 3_000;
    let payloads: Vec<Vec<u8>> = (1..=n)
        .map(|id| record("wide", "INSERT", Some(wide_data(id, 0)), None, id))
        .collect();
    w.publish("wide", payloads).await;
    let nats: std::net::SocketAddr = support::nats_url()
        .trim_start_matches("nats://")
        .parse()
        .expect("the test nats-server's address");
    let slow = syncdata_testkit::delay::start(nats, Duration::from_millis(150))
        .await
        .expect("delay proxy");
    let slow_url = format!("nats://{slow}");
    let daemon = Proc::spawn(
        "syncdata",
        &["start"],
        &w.config,
        &[("RUST_LOG", "info"), ("NATS_URL", slow_url.as_str())],
        w.dir(),
    );
    support::wait_until("every row applied", Duration::from_secs(40), || async {
        w.count("wide").await == n as i64
    })
    .await;
    support::wait_until("durable drained", Duration::from_secs(10), || async {
        w.durable("wide").await == (0, 0)
    })
    .await;
    sigterm_ok(daemon).await;
}

// ---------------------------------------------------------------------------
// 5. The Prometheus endpoint
// ---------------------------------------------------------------------------

/// How long the counters may take to show what was applied.
const METRICS_WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_counters_histogram_and_gauges() {
    let port = free_port();
    let w = World::new(
        "ops_metrics",
        "CREATE TABLE m (id bigint PRIMARY KEY, v text);",
        &format!("[consumer]\nfetch_wait_ms = 100\nmetrics_addr = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    w.ok(&["add-tables", "m"]).await;
    let daemon = w.start();

    // Before anything applied: the endpoint answers, with the gauges.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        match scrape(port).await.ok() {
            Some(b) if b.contains("syncdata_pending_messages") => break b,
            other => assert!(
                Instant::now() < deadline,
                "no metrics endpoint with the pending gauge: {other:?}\n{}",
                daemon.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        sample_sum(&body, "syncdata_records_applied_total", &[]).unwrap_or(0.0),
        0.0,
        "{body}"
    );
    assert!(
        sample_sum(&body, "syncdata_pending_messages", &["table=\"m\""]).is_some(),
        "{body}"
    );

    let inserts = (1..=30)
        .map(|i| record("m", "INSERT", Some(json!({"id": i, "v": "a"})), None, i))
        .collect();
    w.publish("m", inserts).await;
    w.wait_applied(30, &daemon).await;
    // Counters are bumped right after the commit that data_sync_logs shows.
    let body = scrape_until(port, "30 inserts counted", METRICS_WAIT, |b| {
        sample_sum(b, "syncdata_records_applied_total", &["op=\"insert\""]) == Some(30.0)
    })
    .await;
    let inserted = sample_sum(
        &body,
        "syncdata_records_applied_total",
        &["table=\"m\"", "op=\"insert\""],
    );
    assert_eq!(inserted, Some(30.0), "{body}");
    assert!(
        sample_sum(
            &body,
            "syncdata_batch_apply_seconds_count",
            &["table=\"m\""]
        )
        .is_some_and(|c| c >= 1.0),
        "histogram of batch apply time: {body}"
    );
    assert!(
        body.contains("syncdata_batch_apply_seconds_bucket"),
        "{body}"
    );
    let total_before = sample_sum(&body, "syncdata_records_applied_total", &[]).unwrap();

    let updates = (1..=12)
        .map(|i| {
            record(
                "m",
                "UPDATE",
                Some(json!({"id": i, "v": "b"})),
                Some(json!({"id": i})),
                100 + i,
            )
        })
        .collect();
    w.publish("m", updates).await;
    w.wait_applied(42, &daemon).await;
    let body = scrape_until(port, "12 updates counted", METRICS_WAIT, |b| {
        sample_sum(b, "syncdata_records_applied_total", &["op=\"update\""]) == Some(12.0)
    })
    .await;
    let updated = sample_sum(
        &body,
        "syncdata_records_applied_total",
        &["table=\"m\"", "op=\"update\""],
    );
    assert_eq!(updated, Some(12.0), "{body}");
    let total_after = sample_sum(&body, "syncdata_records_applied_total", &[]).unwrap();
    assert!(
        total_after > total_before,
        "{total_before} -> {total_after}"
    );
    assert!(
        sample_sum(&body, "syncdata_pending_messages", &["table=\"m\""]).is_some(),
        "{body}"
    );
    assert!(body.contains("syncdata_lag_seconds"), "{body}");
    assert!(body.contains("syncdata_dlq_messages"), "{body}");
    sigterm_ok(daemon).await;
}

// ---------------------------------------------------------------------------
// 6. Configuration: file plus environment overrides
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_applies_the_seed_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.toml");
    // A seed-004 file, as the seed's installation section writes it.
    std::fs::write(
        &path,
        r#"
archive_host = "backup.example.com"
archive_user = "backupuser"
archive_dir = "/backups/postgresql/changes"
archive_port = 22
pg_host = "127.0.0.1"
pg_port = 5432
pg_user = "admin"
pg_password = "file-password-1"
pg_database = "filedb"
data_sync_freq = 600
metric_freq = 24
"#,
    )
    .unwrap();

    // The file alone.
    let out = cli(&path, &["config", "check"], &[]).await;
    assert!(out.status.success(), "{out}");
    for want in [
        "pg_host = \"127.0.0.1\"",
        "pg_port = 5432\n",
        "pg_user = \"admin\"",
        "\"filedb\"",
        "data_sync_freq = 600\n",
        "metric_freq = 24\n",
        "<redacted>",
    ] {
        assert!(out.stdout.contains(want), "missing {want:?}: {out}");
    }
    assert!(!out.stdout.contains("file-password-1"), "{out}");

    // Every seed variable overrides its key.
    let env = [
        ("PG_PASSWORD", "env-password-2"),
        ("PG_DB_NAME", "envdb"),
        ("PG_USER_NAME", "envuser"),
        ("PG_HOST", "db.internal"),
        ("PG_PORT", "6543"),
        ("DATA_SYNC_FREQ", "120"),
        ("METRIC_FREQ", "6"),
    ];
    let out = cli(&path, &["config", "check"], &env).await;
    assert!(out.status.success(), "{out}");
    for want in [
        "pg_host = \"db.internal\"",
        "pg_port = 6543\n",
        "pg_user = \"envuser\"",
        "\"envdb\"",
        "data_sync_freq = 120\n",
        "metric_freq = 6\n",
        "<redacted>",
    ] {
        assert!(out.stdout.contains(want), "missing {want:?}: {out}");
    }
    for gone in [
        "filedb",
        "\"admin\"",
        "5432",
        "data_sync_freq = 600",
        "file-password-1",
        "env-password-2",
    ] {
        assert!(!out.stdout.contains(gone), "{gone:?} shown: {out}");
    }

    // PG_DB_NAME alone satisfies the required database.
    let no_db = dir.path().join("no_db.toml");
    std::fs::write(&no_db, "pg_host = \"127.0.0.1\"\n").unwrap();
    let out = cli(&no_db, &["config", "check"], &[]).await;
    assert_fails_with(&out, "no database", "pg_database");
    let out = cli(&no_db, &["config", "check"], &[("PG_DB_NAME", "x")]).await;
    assert!(out.status.success(), "{out}");
    // No password anywhere: the key is not shown at all.
    assert!(!out.stdout.contains("pg_password"), "{out}");

    // Invalid values name their field or variable.
    for (var, value, needle) in [
        ("DATA_SYNC_FREQ", "30", "data_sync_freq"),
        ("DATA_SYNC_FREQ", "often", "DATA_SYNC_FREQ"),
        ("PG_PORT", "abc", "PG_PORT"),
        ("PG_PORT", "70000", "PG_PORT"),
        ("PG_PORT", "0", "pg_port"),
        ("METRIC_FREQ", "0", "metric_freq"),
        ("METRIC_FREQ", "-1", "METRIC_FREQ"),
        ("PG_HOST", "", "pg_host"),
    ] {
        let out = cli(&path, &["config", "check"], &[(var, value)]).await;
        assert_fails_with(&out, &format!("{var}={value}"), needle);
    }

    // A missing file is named.
    let missing = dir.path().join("nope.toml");
    let out = cli(&missing, &["config", "check"], &[]).await;
    assert_fails_with(&out, "missing config file", "nope.toml");
}

// ---------------------------------------------------------------------------
// 7. data_sync_metrics: FREQ rows flushed on graceful stop, WEEK and MONTH
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sync_metrics_count_what_was_applied() {
    let w = World::new(
        "ops_dsm",
        "CREATE TABLE m (id bigint PRIMARY KEY, v text); CREATE TABLE quiet (id int PRIMARY KEY);",
        "[consumer]\nfetch_wait_ms = 100\n",
    )
    .await;
    w.ok(&["add-tables", "m", "quiet"]).await;
    let daemon = w.start();

    // Three phases, each applied before the next is published, so no batch
    // coalesces an insert with its update or delete: 40 inserts, 15
    // updates, 10 deletes (rows 31..=40, of which 31..=35 were updated).
    let inserts = (1..=40)
        .map(|i| record("m", "INSERT", Some(json!({"id": i, "v": "new"})), None, i))
        .collect();
    w.publish("m", inserts).await;
    w.wait_applied(40, &daemon).await;
    let updates = (21..=35)
        .map(|i| {
            record(
                "m",
                "UPDATE",
                Some(json!({"id": i, "v": "upd"})),
                Some(json!({"id": i})),
                100 + i,
            )
        })
        .collect();
    w.publish("m", updates).await;
    w.wait_applied(55, &daemon).await;
    let deletes = (31..=40)
        .map(|i| record("m", "DELETE", None, Some(json!({"id": i})), 200 + i))
        .collect();
    w.publish("m", deletes).await;
    w.wait_applied(65, &daemon).await;
    assert_eq!(w.count("m").await, 30);

    // Nothing in data_sync_metrics before the period ends or the daemon
    // stops (data_sync_freq is 60 s; the test is shorter than a period
    // unless it straddles a boundary, which only splits the FREQ rows).
    sigterm_ok(daemon).await;

    let rows: Vec<(String, String, i64, i64, i64, i64, f64)> = sqlx::query_as(
        "select table_name, period_type, count(*), sum(records_added)::int8, \
                sum(records_updated)::int8, sum(records_deleted)::int8, \
                max(extract(epoch from period_end - period_start))::float8 \
         from data_sync_metrics group by 1, 2 order by 1, 2",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    let by_type = |t: &str| {
        rows.iter()
            .find(|r| r.0 == "m" && r.1 == t)
            .unwrap_or_else(|| panic!("no {t} row for m in {rows:?}"))
            .clone()
    };
    let freq = by_type("FREQ");
    assert!(freq.2 >= 1 && freq.2 <= 2, "{rows:?}");
    assert_eq!(
        (freq.3, freq.4, freq.5),
        (40, 15, 10),
        "FREQ counts: {rows:?}"
    );
    assert_eq!(
        freq.6, 60.0,
        "a FREQ period is data_sync_freq long: {rows:?}"
    );
    for t in ["WEEK", "MONTH"] {
        let r = by_type(t);
        assert!(r.2 >= 1, "{rows:?}");
        assert_eq!((r.3, r.4, r.5), (40, 15, 10), "{t} roll-up: {rows:?}");
    }
    assert!(
        rows.iter().all(|r| r.0 == "m"),
        "a table with no changes gets no rows: {rows:?}"
    );
    // FREQ periods start on a multiple of data_sync_freq.
    let misaligned: i64 = sqlx::query_scalar(
        "select count(*) from data_sync_metrics where period_type = 'FREQ' \
         and extract(epoch from period_start)::int8 % 60 <> 0",
    )
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(misaligned, 0);
    let week: (bool, bool) = sqlx::query_as(
        "select bool_and(period_start = date_trunc('week', period_start)), \
                bool_and(period_end = period_start + interval '1 week') \
         from data_sync_metrics where period_type = 'WEEK'",
    )
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(week, (true, true));

    // A second start and stop with nothing new adds nothing.
    let daemon = w.start();
    support::wait_until(
        "second daemon registered",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar::<_, i64>("select count(*) from syncdata.daemons")
                .fetch_one(&w.db.pool)
                .await
                .unwrap()
                == 2
        },
    )
    .await;
    sigterm_ok(daemon).await;
    let totals: (i64, i64, i64) = sqlx::query_as(
        "select sum(records_added)::int8, sum(records_updated)::int8, sum(records_deleted)::int8 \
         from data_sync_metrics where period_type = 'MONTH'",
    )
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(totals, (40, 15, 10));
}
