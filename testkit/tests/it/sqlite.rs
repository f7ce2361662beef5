//! The SQLite target (docs/sqlite.md) with real processes and servers:
//! convergence of a shuffled, duplicated history applied by three
//! `syncdata start` processes sharing one file, every value kind of the
//! wal2json reference samples, SIGKILL mid-batch, and the commands.
//! Tables are compared value by value under the type mapping with the
//! in-order reference applied to PostgreSQL.

use syncdata_testkit::harness as support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::FutureExt;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sqlx::SqlitePool;
use support::{Proc, TestDb, TestNames};
use syncdata_consumer::apply::sqlite::{self as target, SqliteTarget};
use syncdata_consumer::apply::{Engine, Incoming};
use syncdata_consumer::sqlite_cmd::{self, diff_table};
use syncdata_core::record::Record;
use syncdata_core::table::TableName;
use syncdata_testkit::workload::{self, WorkloadSpec};

use crate::pipeline::{demo_db, publish_raw, stream_drained, syncdata};

/// A config applying into `file` (the TestDb only fills the unused pg_* keys).
fn sqlite_config(dir: &Path, db: &TestDb, names: &TestNames, file: &Path, extra: &str) -> PathBuf {
    support::write_config(
        dir,
        db,
        names,
        &support::nats_url(),
        dir,
        &format!("[target]\nurl = \"sqlite://{}\"\n\n{extra}", file.display()),
    )
}

fn write_ddl(dir: &Path, ddl: &str) -> PathBuf {
    let path = dir.join("schema.sql");
    std::fs::write(&path, ddl).unwrap();
    path
}

/// `add-tables --create-from` the demo schema, for every demo table.
async fn add_demo_tables(dir: &Path, config: &Path) -> String {
    let ddl = write_ddl(dir, workload::DEMO_DDL);
    let mut args = vec!["add-tables", "--create-from", ddl.to_str().unwrap()];
    args.extend(workload::demo_tables());
    run_ok(dir, config, &args).await
}

async fn run_ok(dir: &Path, config: &Path, args: &[&str]) -> String {
    let mut p = syncdata(dir, config, args);
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("syncdata {args:?} did not finish:\n{}", p.log()));
    assert!(status.success(), "syncdata {args:?} failed:\n{}", p.log());
    p.log()
}

async fn open(file: &Path) -> SqlitePool {
    target::connect(file, "normal")
        .await
        .expect("open sqlite file")
}

/// One integer the query `sql` reads from the SQLite file.
async fn count(pool: &SqlitePool, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Keys that differ between the reference and the file, per demo table.
async fn differences(reference: &TestDb, file: &SqlitePool) -> Vec<(String, usize, usize, usize)> {
    let mut conn = reference.pool.acquire().await.unwrap();
    let mut out = Vec::new();
    for t in workload::demo_tables() {
        let d = diff_table(&mut conn, file, &TableName::new("public", t), &[], 5)
            .await
            .expect("compare");
        out.push((d.table, d.differing_count, d.source_rows, d.local_rows));
    }
    out
}

async fn wait_equal(names: &TestNames, reference: &TestDb, file: &SqlitePool, procs: &[&Proc]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let diffs = differences(reference, file).await;
        if diffs.iter().all(|d| d.1 == 0) && stream_drained(names).await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| support::tail(&p.log(), 20)).collect();
            panic!("no convergence: {diffs:?}\nlogs:\n{}", logs.join("\n---\n"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn integrity(file: &SqlitePool) -> String {
    sqlx::query_scalar("pragma integrity_check")
        .fetch_one(file)
        .await
        .unwrap()
}

async fn failed_logs(file: &SqlitePool) -> i64 {
    sqlx::query_scalar("select count(*) from data_sync_logs where status <> 'SUCCESS'")
        .fetch_one(file)
        .await
        .unwrap()
}

/// Must hold 1: a shuffled history with every tenth record twice (partial
/// UPDATEs, key changes, a TRUNCATE), applied by three `syncdata start`
/// processes sharing one file, ends equal to the in-order reference, value
/// by value under the mapping; `verify` agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_duplicated_history_by_three_processes_equals_the_in_order_reference() {
    let history = workload::generate(&WorkloadSpec {
        seed: 17,
        changes: 12_000,
        truncate: true,
        partial_updates: true,
        key_changes: true,
    });
    let reference = demo_db("sqlite_conv_ref").await;
    workload::apply_in_order(&reference.pool, &history)
        .await
        .expect("reference apply");
    let names = TestNames::new("sqconv");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data/app.db");
    let config = sqlite_config(
        dir.path(),
        &reference,
        &names,
        &file,
        "[consumer]\nbatch_size = 300\n",
    );
    let out = add_demo_tables(dir.path(), &config).await;
    assert!(out.contains("added customers"), "{out}");

    let mut published = history.clone();
    published.extend(history.iter().step_by(10).cloned());
    published.shuffle(&mut rand::rngs::StdRng::seed_from_u64(5));
    publish_raw(&names, &published).await;

    let procs: Vec<Proc> = (0..3)
        .map(|_| syncdata(dir.path(), &config, &["start"]))
        .collect();
    let pool = open(&file).await;
    let refs: Vec<&Proc> = procs.iter().collect();
    wait_equal(&names, &reference, &pool, &refs).await;
    let diffs = differences(&reference, &pool).await;
    assert!(
        diffs.iter().all(|d| d.2 > 0 && d.2 == d.3),
        "non-trivial end state: {diffs:?}"
    );
    assert_eq!(failed_logs(&pool).await, 0);
    let journal: String = sqlx::query_scalar("pragma journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    // Every process applied batches: the file was shared, not held by one.
    let per_daemon: Vec<i64> =
        sqlx::query_scalar("select records_applied from syncdata_daemons where stopped_at is null")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(per_daemon.len(), 3, "three daemons registered");

    let status = run_ok(dir.path(), &config, &["status", "--json"]).await;
    assert!(status.contains("\"daemons_running\": 3"), "{status}");
    let verify = run_ok(dir.path(), &config, &["verify", "--source", &reference.url]).await;
    assert!(verify.contains("customers: equal"), "{verify}");
    let stop = run_ok(dir.path(), &config, &["stop", "--timeout", "60"]).await;
    assert!(stop.contains("stopped"), "{stop}");
    for mut p in procs {
        let status = p
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("daemon exits on stop");
        assert!(status.success(), "graceful stop exits 0:\n{}", p.log());
    }
    assert_eq!(integrity(&pool).await, "ok");
}

const SAMPLE_DDL: &str = "
create table items (id int primary key, name text, qty int, big text);
create table items_full (id int primary key, name text, qty int, big text);
create table types_demo (id bigint primary key, j jsonb, ts timestamptz, n numeric(10,2),
    u uuid, arr text[], b bytea, flag boolean, f double precision);
create table nums (id int primary key, n numeric, f float8, r real);
";

fn samples() -> Vec<Record> {
    let mut records: Vec<Record> = include_str!("fixtures/wal2json-samples.jsonl")
        .lines()
        .map(|l| Record::parse(l.as_bytes()).expect("fixture parses"))
        .filter(|r| r.table != "nopk")
        .collect();
    // Unicode and emoji, quotes and NULL inside an array, 30 digits.
    for line in [
        r#"{"schema":"public","table":"types_demo","op":"INSERT","data":{"id":3,"j":"{\"emoji\": \"😀\", \"n\": 1.50}","ts":"1999-12-31 23:59:59.999999-08","n":-12345678.90,"u":"00000000-0000-0000-0000-000000000000","arr":"{\"x, y\",NULL,\"q\\\"\",\"NULL\",ünï}","b":"00ff10","flag":false,"f":-0.5},"lsn":"0/16000000","seq":0}"#,
        r#"{"schema":"public","table":"items","op":"INSERT","data":{"id":400,"name":"Zoë 😀 — 日本語","qty":1,"big":"tab\tnewline\nquote'\""},"lsn":"0/16000010","seq":0}"#,
        r#"{"schema":"public","table":"nums","op":"INSERT","data":{"id":3,"n":-999999999999999999999999999999.000000000001,"f":1.7976931348623157e308,"r":-1.5},"lsn":"0/16000020","seq":0}"#,
    ] {
        records.push(Record::parse(line.as_bytes()).unwrap());
    }
    records
}

/// Applies records batch by batch (consecutive records of one table).
async fn apply_sqlite(engine: &Engine<SqliteTarget>, records: &[Record], size: usize) {
    let mut i = 0;
    while i < records.len() {
        let table = TableName::new(records[i].schema.clone(), records[i].table.clone());
        let mut j = i;
        while j < records.len() && j - i < size && records[j].table == records[i].table {
            j += 1;
        }
        let batch: Vec<Incoming> = records[i..j]
            .iter()
            .map(|r| Incoming {
                record: r,
                fallback_seq: 0,
            })
            .collect();
        engine
            .apply_batch(&table, &batch, "test")
            .await
            .expect("apply");
        i = j;
    }
}

/// Must hold 2: every value kind of the wal2json samples (and 30-digit
/// numerics, emoji, arrays with quotes and NULL) round-trips: in order and
/// shuffled, the file equals the engine's result on PostgreSQL value by
/// value, and the stored forms are those docs/sqlite.md lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_kind_of_the_wal2json_samples_round_trips() {
    let records = samples();
    // PostgreSQL through the same engine, in order: the reference.
    let pg = support::fresh_database("sqlite_values").await;
    syncdata_consumer::store::MIGRATOR
        .run(&pg.pool)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(SAMPLE_DDL.to_owned()))
        .execute(&pg.pool)
        .await
        .unwrap();
    let applier = syncdata_consumer::apply::Applier::new(pg.pool.clone(), true);
    for r in &records {
        let table = TableName::new(r.schema.clone(), r.table.clone());
        applier
            .apply_batch(
                &table,
                &[Incoming {
                    record: r,
                    fallback_seq: 0,
                }],
                "",
            )
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let ddl = write_ddl(dir.path(), SAMPLE_DDL);
    let tables: Vec<TableName> = ["items", "items_full", "types_demo", "nums"]
        .iter()
        .map(|t| TableName::new("public", *t))
        .collect();
    let mut conn = pg.pool.acquire().await.unwrap();
    sqlx::raw_sql("set extra_float_digits = 3")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (n, order) in ["in order", "shuffled", "reversed"].iter().enumerate() {
        let file = dir.path().join(format!("v{n}.db"));
        let pool = open(&file).await;
        sqlite_cmd::create_from(&pool, &ddl, &tables).await.unwrap();
        let engine = Engine::with_target(SqliteTarget::new(pool.clone()));
        let mut rs = records.clone();
        match *order {
            "shuffled" => rs.shuffle(&mut rand::rngs::StdRng::seed_from_u64(3)),
            "reversed" => rs.reverse(),
            _ => {}
        }
        apply_sqlite(&engine, &rs, if n == 0 { 100 } else { 3 }).await;
        for t in &tables {
            let d = diff_table(&mut conn, &pool, t, &[], 10).await.unwrap();
            assert_eq!(d.differing_count, 0, "{order}: {d:?}");
            assert_eq!(d.source_rows, d.local_rows);
        }
        let n30: String = sqlx::query_scalar("select n from nums where id = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n30, "123456789012345678901234567890.123456789");
        let n31: String = sqlx::query_scalar("select n from nums where id = 3")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n31, "-999999999999999999999999999999.000000000001");
        let row: (String, String, String, String, Vec<u8>, i64, f64, String) = sqlx::query_as(
            "select j, ts, n, arr, b, flag, f, typeof(n) from types_demo where id = 1",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(row.0, r#"{"k": [1, 2, {"x": null}]}"#);
        assert_eq!(row.1, "2024-01-02T03:04:05.678+00:00");
        assert_eq!(row.2, "12.50");
        assert_eq!(row.3, r#"["a","b\"q"]"#);
        assert_eq!(row.4, vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(row.5, 1);
        assert_eq!(row.6, 1.5e300);
        assert_eq!(row.7, "text");
        let arr: String = sqlx::query_scalar("select arr from types_demo where id = 3")
            .fetch_one(&pool)
            .await
            .unwrap();
        let arr: serde_json::Value = serde_json::from_str(&arr).unwrap();
        assert_eq!(arr, serde_json::json!(["x, y", null, "q\"", "NULL", "ünï"]));
        let ts: String = sqlx::query_scalar("select ts from types_demo where id = 3")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(ts, "1999-12-31T23:59:59.999999-08:00");
        let name: String = sqlx::query_scalar("select name from items where id = 400")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(name, "Zoë 😀 — 日本語");
        let nulls: (Option<String>, Option<Vec<u8>>, Option<i64>) =
            sqlx::query_as("select j, b, flag from types_demo where id = 2")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(nulls, (None, None, None));
    }
}

/// Must hold 3: SIGKILL mid-batch never corrupts the file
/// (`PRAGMA integrity_check`), and after a restart the sync converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_leaves_an_intact_file_and_converges_after_restart() {
    let history = workload::generate(&WorkloadSpec {
        seed: 23,
        changes: 10_000,
        truncate: false,
        partial_updates: true,
        key_changes: true,
    });
    let reference = demo_db("sqlite_kill_ref").await;
    workload::apply_in_order(&reference.pool, &history)
        .await
        .unwrap();
    let names = TestNames::new("sqkill");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let config = sqlite_config(
        dir.path(),
        &reference,
        &names,
        &file,
        "[consumer]\nbatch_size = 200\nack_wait_secs = 2\n",
    );
    add_demo_tables(dir.path(), &config).await;
    publish_raw(&names, &history).await;
    let pool = open(&file).await;
    for round in 0..3 {
        let mut p = syncdata(dir.path(), &config, &["start"]);
        let before: i64 = sqlx::query_scalar("select count(*) from data_sync_logs")
            .fetch_one(&pool)
            .await
            .unwrap();
        support::wait_until("more batches applied", Duration::from_secs(60), || async {
            let n: i64 = sqlx::query_scalar("select count(*) from data_sync_logs")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            n >= before + 4
        })
        .await;
        p.sigkill();
        let _ = p.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(integrity(&pool).await, "ok", "after kill {round}");
    }
    let diffs = differences(&reference, &pool).await;
    assert!(
        diffs.iter().any(|d| d.1 > 0),
        "the kills must land mid-stream: {diffs:?}"
    );
    let restarted = syncdata(dir.path(), &config, &["start"]);
    wait_equal(&names, &reference, &pool, &[&restarted]).await;
    assert_eq!(integrity(&pool).await, "ok");
    assert_eq!(failed_logs(&pool).await, 0);
}

/// The table commands against the file: add-tables (refusing a table the
/// DDL lacks), list-tables, status, stop without daemons, remove-tables,
/// clear, and their --json forms with PostgreSQL's shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_commands_work_against_the_file() {
    let reference = demo_db("sqlite_cmds").await;
    let names = TestNames::new("sqcmds");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let config = sqlite_config(dir.path(), &reference, &names, &file, "");
    let ddl = write_ddl(dir.path(), workload::DEMO_DDL);
    let ddl = ddl.to_str().unwrap();
    let mut p = syncdata(
        dir.path(),
        &config,
        &["add-tables", "--create-from", ddl, "nosuch"],
    );
    let status = p.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(!status.success());
    assert!(p.log().contains("defines no table nosuch"), "{}", p.log());
    run_ok(
        dir.path(),
        &config,
        &["add-tables", "--create-from", ddl, "customers", "orders"],
    )
    .await;
    let again = run_ok(dir.path(), &config, &["add-tables", "orders"]).await;
    assert!(again.contains("orders is already listed"), "{again}");
    let list = run_ok(dir.path(), &config, &["list-tables"]).await;
    assert!(
        list.contains("- customers") && list.contains("- orders"),
        "{list}"
    );
    let stop = run_ok(dir.path(), &config, &["stop"]).await;
    assert!(stop.contains("no running daemons"), "{stop}");
    let pool = open(&file).await;
    sqlx::query("insert into customers (id, email) values (1, 'a@b')")
        .execute(&pool)
        .await
        .unwrap();
    let status = run_ok(dir.path(), &config, &["status"]).await;
    assert!(status.contains("customers: 1 rows"), "{status}");
    let mut p = syncdata(dir.path(), &config, &["status", "--check"]);
    assert_eq!(
        p.wait_exit(Duration::from_secs(60)).await.unwrap().code(),
        Some(2),
        "no daemon: attention"
    );
    run_ok(dir.path(), &config, &["clear", "--yes"]).await;
    let rows: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    let removed = run_ok(dir.path(), &config, &["remove-tables", "orders"]).await;
    assert!(removed.contains("removed orders"), "{removed}");
    let list = run_ok(dir.path(), &config, &["list-tables", "--json"]).await;
    assert!(!list.contains("orders"), "{list}");
    // --json: the shapes of PostgreSQL's commands.
    let added = json_ok(
        &config,
        &["add-tables", "--json", "orders", "customers", "nosuch"],
    )
    .await;
    assert_eq!(added.0, Some(1), "one table failed");
    assert_eq!(added.1["added"], serde_json::json!(["orders"]));
    assert_eq!(added.1["already_listed"], serde_json::json!(["customers"]));
    assert_eq!(added.1["failed"][0]["table"], "nosuch");
    let removed = json_ok(&config, &["remove-tables", "--json", "orders", "nosuch"]).await;
    assert_eq!(
        removed.1,
        serde_json::json!({"removed": ["orders"], "not_listed": ["nosuch"]})
    );
    let cleared = json_ok(&config, &["clear", "--yes", "--json"]).await;
    assert_eq!(cleared.1, serde_json::json!({"cleared": ["customers"]}));
    let stop = json_ok(&config, &["stop", "--json"]).await;
    assert_eq!(
        stop.1,
        serde_json::json!({"daemons_asked": 0, "stopped": true})
    );
}

/// Runs a command and reads its stdout as JSON: (exit code, document).
async fn json_ok(config: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = support::run_cli("syncdata", config, args, &[]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "syncdata {args:?}: not JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), doc)
}

/// A record of `table` as published by the producer.
fn record(table: &str, op: &str, data: serde_json::Value, lsn: u64) -> Record {
    let line = serde_json::json!({
        "schema": "public", "table": table, "op": op, "data": data,
        "lsn": format!("0/{lsn:X}"), "seq": 0,
    });
    Record::parse(line.to_string().as_bytes()).expect("record parses")
}

/// `dlq` on the file: a record that cannot apply (a column the file lacks)
/// is dead-lettered by the SQLite daemon; `dlq list --json` and `dlq show`
/// show it, `dlq replay` applies it through the version guard once the
/// column exists (an older replay changes nothing), `dlq purge` removes
/// another; `report --json` counts what the daemon did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_report_work_on_the_file() {
    let reference = demo_db("sqlite_dlq").await;
    let names = TestNames::new("sqdlq");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let config = sqlite_config(
        dir.path(),
        &reference,
        &names,
        &file,
        "[consumer]\nmax_attempts = 1\n",
    );
    add_demo_tables(dir.path(), &config).await;
    publish_raw(
        &names,
        &[
            record(
                "customers",
                "INSERT",
                serde_json::json!({"id": 1, "email": "a@x"}),
                0x100,
            ),
            record(
                "customers",
                "INSERT",
                serde_json::json!({"id": 2, "email": "b@x", "extra": "e2"}),
                0x200,
            ),
            record(
                "customers",
                "UPDATE",
                serde_json::json!({"id": 1, "email": "a2@x"}),
                0x300,
            ),
            record(
                "orders",
                "INSERT",
                serde_json::json!({"id": 9, "vip": true}),
                0x400,
            ),
        ],
    )
    .await;
    let daemon = syncdata(dir.path(), &config, &["start"]);
    let pool = open(&file).await;
    support::wait_until(
        "two dead letters filed",
        Duration::from_secs(60),
        || async { failed_logs(&pool).await == 2 },
    )
    .await;
    support::wait_until(
        "the good records applied",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, String>("select email from customers where id = 1")
                .fetch_optional(&pool)
                .await
                .unwrap()
                .as_deref()
                == Some("a2@x")
        },
    )
    .await;
    let (code, list) = json_ok(&config, &["dlq", "list", "--json"]).await;
    assert_eq!(code, Some(0), "{list}");
    let letters = list.as_array().unwrap();
    assert_eq!(letters.len(), 2, "{list}");
    let customers_id = letters.iter().find(|l| l["table"] == "customers").unwrap()["id"]
        .as_u64()
        .unwrap();
    let orders_id = letters.iter().find(|l| l["table"] == "orders").unwrap()["id"]
        .as_u64()
        .unwrap();
    let show = run_ok(
        dir.path(),
        &config,
        &["dlq", "show", &customers_id.to_string()],
    )
    .await;
    assert!(show.contains("\"extra\""), "{show}");
    // Not applicable yet: kept.
    let (code, kept) = json_ok(
        &config,
        &["dlq", "replay", "--json", "--table", "customers"],
    )
    .await;
    assert_eq!(code, Some(1), "{kept}");
    assert_eq!(kept["replayed"], 0);
    sqlx::query("alter table customers add column extra text")
        .execute(&pool)
        .await
        .unwrap();
    let (code, replayed) = json_ok(
        &config,
        &["dlq", "replay", "--json", &customers_id.to_string()],
    )
    .await;
    assert_eq!(code, Some(0), "{replayed}");
    assert_eq!(replayed["replayed"], 1);
    let row: (String, Option<String>) =
        sqlx::query_as("select email, extra from customers where id = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row, ("b@x".to_owned(), Some("e2".to_owned())));
    let (_, status) = json_ok(&config, &["status", "--json"]).await;
    let orders = &status["tables"].as_array().unwrap()[1];
    assert_eq!(orders["table"], "orders", "{status}");
    assert_eq!(orders["errors"], 1, "a dead letter waits: {status}");
    assert_eq!(status["tables"][0]["errors"], 0, "replayed: {status}");
    assert_eq!(status["tables"][0]["errors_logged"], 1, "{status}");
    assert_eq!(status["tables"][0]["backlog"], 0, "{status}");
    let (code, purged) = json_ok(&config, &["dlq", "purge", "--yes", "--json"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(purged, serde_json::json!({"purged": 1}));
    let (_, left) = json_ok(&config, &["dlq", "list", "--json"]).await;
    assert_eq!(left, serde_json::json!([]), "order {orders_id} purged");
    let mut p = syncdata(dir.path(), &config, &["status", "--check"]);
    assert_eq!(
        p.wait_exit(Duration::from_secs(60)).await.unwrap().code(),
        Some(0),
        "a daemon runs and no dead letter waits: {}",
        p.log()
    );

    let (code, report) = json_ok(
        &config,
        &[
            "report",
            "--json",
            "--since",
            "1h",
            "--source",
            &reference.url,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{report}");
    let customers = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "customers")
        .unwrap();
    // Daemon: insert 1, update 1; replay: insert 2.
    assert_eq!(customers["applied"], 3, "{customers}");
    assert_eq!(customers["inserted"], 2, "{customers}");
    assert_eq!(customers["updated"], 1, "{customers}");
    assert_eq!(customers["failed"], 1, "{customers}");
    assert_eq!(customers["dead_letters_waiting"], 0, "{customers}");
    // The reference database is empty: two rows here.
    assert_eq!(customers["row_drift"], -2, "{customers}");
    let html = run_ok(dir.path(), &config, &["report", "--html"]).await;
    assert!(html.contains("<svg"), "{html}");
    drop(daemon);
}

/// `check` on the file: production's constraints (foreign key, unique, NOT
/// NULL, CHECK), read from the source, evaluated on the file's rows, which
/// carry no constraints of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_what_breaks_productions_constraints_in_the_file() {
    const DDL: &str = "
        create table parents (id bigint primary key, code text not null unique);
        create table kids (id bigint primary key, parent_id bigint references parents (id),
            qty integer check (qty >= 0), note text);
    ";
    let source = support::fresh_database("sqlite_check").await;
    sqlx::raw_sql(DDL).execute(&source.pool).await.unwrap();
    let names = TestNames::new("sqcheck");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let config = sqlite_config(dir.path(), &source, &names, &file, "");
    let ddl = write_ddl(dir.path(), DDL);
    run_ok(
        dir.path(),
        &config,
        &[
            "add-tables",
            "--create-from",
            ddl.to_str().unwrap(),
            "parents",
            "kids",
        ],
    )
    .await;
    let pool = open(&file).await;
    sqlx::raw_sql(
        "insert into parents values (1, 'a'), (2, 'a'), (3, null);
         insert into kids values (10, 1, 5, null), (11, 7, 1, null), (12, null, -3, null);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (code, doc) = json_ok(&config, &["check", "--json", "--source", &source.url]).await;
    assert_eq!(code, Some(1), "findings: {doc}");
    assert_eq!(doc["source_checked"], true);
    let findings = |table: &str| -> Vec<serde_json::Value> {
        doc["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap()["findings"]
            .as_array()
            .unwrap()
            .clone()
    };
    let kinds = |table: &str| -> Vec<(String, i64, Vec<String>)> {
        let mut v: Vec<_> = findings(table)
            .iter()
            .map(|f| {
                (
                    f["kind"].as_str().unwrap().to_owned(),
                    f["rows"].as_i64().unwrap(),
                    f["sample_keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|k| k.as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        kinds("parents"),
        vec![
            (
                "duplicate".to_owned(),
                2,
                vec!["id=1".to_owned(), "id=2".to_owned()]
            ),
            ("not_null".to_owned(), 1, vec!["id=3".to_owned()]),
        ],
        "{doc}"
    );
    assert_eq!(
        kinds("kids"),
        vec![
            ("check".to_owned(), 1, vec!["id=12".to_owned()]),
            ("orphan".to_owned(), 1, vec!["id=11".to_owned()]),
        ],
        "{doc}"
    );
    // Clean once fixed.
    sqlx::raw_sql(
        "update parents set code = 'b' where id = 2; update parents set code = 'c' where id = 3;
         delete from kids where id in (11, 12);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (code, doc) = json_ok(&config, &["check", "--json", "--source", &source.url]).await;
    assert_eq!(code, Some(0), "clean: {doc}");
}

/// Publishes production's definition of `table` as schema capture does.
async fn publish_definition(names: &TestNames, def: serde_json::Value, lsn: u64) {
    let def: syncdata_core::tabledef::TableDef = serde_json::from_value(def).unwrap();
    let record = def.to_record(syncdata_core::version::Lsn(lsn), Some(0), None);
    let client = support::nats_connect(&support::nats_url()).await;
    let js = async_nats::jetstream::new(client);
    support::ensure_change_stream(&js, names).await;
    let subject = format!(
        "{}.{}",
        syncdata_core::subject::table_subject(&names.subject_prefix, &def.schema, &def.table),
        syncdata_core::tabledef::SCHEMA_SUBJECT_SUFFIX
    );
    support::publish_signed(&js, subject, record.to_json())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn gadgets(extra: bool) -> serde_json::Value {
    let mut columns = vec![
        serde_json::json!({"name": "id", "type": "bigint", "not_null": true}),
        serde_json::json!({"name": "price", "type": "numeric(30,9)", "not_null": false}),
        serde_json::json!({"name": "tags", "type": "text[]", "not_null": false}),
        serde_json::json!({"name": "seen_at", "type": "timestamp with time zone", "not_null": false}),
        serde_json::json!({"name": "blob", "type": "bytea", "not_null": false}),
        serde_json::json!({"name": "ok", "type": "boolean", "not_null": false}),
    ];
    if extra {
        columns.push(serde_json::json!({"name": "meta", "type": "jsonb", "not_null": false}));
    }
    serde_json::json!({
        "schema": "public", "table": "gadgets", "columns": columns, "primary_key": ["id"],
    })
}

/// `add-tables --create` makes the table from the definition the stream
/// carries, under the type mapping; `schema diff` shows the mapping and,
/// after production adds a column, the difference; `schema migrate` adds
/// it; the table then takes rows of the new shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_created_from_the_streams_definitions_and_the_mapping_is_shown() {
    let reference = demo_db("sqlite_schema").await;
    let names = TestNames::new("sqschema");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let config = sqlite_config(dir.path(), &reference, &names, &file, "");
    publish_definition(&names, gadgets(false), 0x100).await;
    let mut p = syncdata(
        dir.path(),
        &config,
        &["add-tables", "--create", "gadgets", "nodef"],
    );
    let status = p.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(!status.success(), "nodef has no definition");
    assert!(p.log().contains("created gadgets"), "{}", p.log());
    assert!(p.log().contains("added gadgets"), "{}", p.log());
    assert!(
        p.log().contains("stream holds no definition"),
        "{}",
        p.log()
    );
    let pool = open(&file).await;
    let declared: Vec<(String, String)> =
        sqlx::query_as("select name, type from pragma_table_info('gadgets') order by cid")
            .fetch_all(&pool)
            .await
            .unwrap();
    let declared: Vec<(&str, &str)> = declared
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        declared,
        vec![
            ("id", "INTEGER"),
            ("price", "TEXT"),
            ("tags", "TEXT"),
            ("seen_at", "TEXT"),
            ("blob", "BLOB"),
            ("ok", "INTEGER")
        ]
    );
    let diff = run_ok(dir.path(), &config, &["schema", "diff"]).await;
    assert!(
        diff.contains("gadgets: matches the stream's definition"),
        "{diff}"
    );
    assert!(
        diff.contains("numeric(30,9)") && diff.contains("TEXT, the exact decimal"),
        "{diff}"
    );
    assert!(diff.contains("TEXT, ISO-8601 with offset"), "{diff}");

    publish_definition(&names, gadgets(true), 0x200).await;
    let (code, doc) = json_ok(&config, &["schema", "diff", "--json"]).await;
    assert_eq!(code, Some(1), "{doc}");
    let d = &doc[0]["differences"][0];
    assert_eq!(d["kind"], "add_column", "{doc}");
    assert_eq!(doc[0]["mapping"][6]["pg_type"], "jsonb", "{doc}");
    assert_eq!(
        doc[0]["mapping"][6]["stored_as"], "TEXT, the JSON document",
        "{doc}"
    );
    run_ok(dir.path(), &config, &["schema", "migrate"]).await;
    let (code, doc) = json_ok(&config, &["schema", "diff", "--json"]).await;
    assert_eq!(code, Some(0), "{doc}");
    let engine = Engine::with_target(SqliteTarget::new(pool.clone()));
    let r = record(
        "gadgets",
        "INSERT",
        serde_json::json!({"id": 1, "price": "123456789012345678901.123456789",
            "tags": "{a,\"b c\"}", "seen_at": "2026-01-02 03:04:05+01", "blob": "\\x00ff",
            "ok": true, "meta": "{\"k\": 1}"}),
        0x300,
    );
    apply_sqlite(&engine, &[r], 1).await;
    let row: (String, String, String, Vec<u8>, i64, String) =
        sqlx::query_as("select price, tags, seen_at, blob, ok, meta from gadgets")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row.0, "123456789012345678901.123456789");
    assert_eq!(row.1, r#"["a","b c"]"#);
    assert_eq!(row.2, "2026-01-02T03:04:05+01:00");
    assert_eq!(row.3, vec![0, 255]);
    assert_eq!(row.4, 1);
    assert_eq!(row.5, r#"{"k": 1}"#);
}

/// The SQLite daemon's housekeeping and supervision: tombstones below the
/// replay horizon are collected (once the stream no longer holds the
/// table's older messages), and a worker that panics at start is restarted
/// rather than stopping the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_collects_tombstones_and_restarts_failed_workers() {
    let reference = demo_db("sqlite_gc").await;
    let names = TestNames::new("sqgc");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let config = sqlite_config(
        dir.path(),
        &reference,
        &names,
        &file,
        "[consumer]\ngc_interval_secs = 1\ntombstone_grace_secs = 1\nmax_backoff_ms = 500\n",
    );
    add_demo_tables(dir.path(), &config).await;
    let mut records = Vec::new();
    for id in 0..50u64 {
        records.push(record(
            "customers",
            "INSERT",
            serde_json::json!({"id": id, "email": "x"}),
            0x1000 + id * 16,
        ));
    }
    for id in 0..40u64 {
        records.push(record(
            "customers",
            "DELETE",
            serde_json::json!({"id": id}),
            0x2000 + id * 16,
        ));
    }
    publish_raw(&names, &records).await;
    // Log rows older than log_retention_days (30 by default).
    {
        let pool = open(&file).await;
        sqlx::raw_sql(
            "insert into data_sync_logs (table_name, status, rows_synced, sync_time) values \
               ('customers', 'SUCCESS', 5, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-40 days')), \
               ('customers', 'FAILED', 0, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-40 days'))",
        )
        .execute(&pool)
        .await
        .unwrap();
    }
    let daemon = Proc::spawn(
        "syncdata",
        &["start"],
        &config,
        &[
            ("RUST_LOG", "info"),
            ("SYNCDATA_FAULT_WORKER_PANICS", "public.customers=2"),
        ],
        dir.path(),
    );
    let pool = open(&file).await;
    let tombstones = || {
        count(
            &pool,
            "select count(*) from syncdata_row_state where state = 'D'",
        )
    };
    support::wait_until(
        "the deletes applied after two restarts",
        Duration::from_secs(60),
        || async { tombstones().await == 40 },
    )
    .await;
    let log = daemon.log();
    assert_eq!(
        log.matches("table worker ended unexpectedly; restarting it")
            .count(),
        2,
        "{log}"
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 10);
    // While the stream holds the table's messages, its tombstones stay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tombstones().await, 40, "horizon below the tombstones");
    // The stream lets the messages go (retention): the horizon passes them.
    let client = support::nats_connect(&support::nats_url()).await;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&names.stream).await.unwrap();
    stream
        .purge()
        .filter(syncdata_core::subject::table_subject(
            &names.subject_prefix,
            "public",
            "customers",
        ))
        .await
        .unwrap();
    let counted = || {
        count(
            &pool,
            "select coalesce(max(tombstones_collected), 0) from syncdata_gc_horizon \
             where table_name = 'customers'",
        )
    };
    // The housekeeping deletes the tombstones, then adds what it deleted to
    // the horizon's count in a statement of its own: wait for both.
    support::wait_until(
        "tombstones collected and counted",
        Duration::from_secs(30),
        || async { tombstones().await == 0 && counted().await > 0 },
    )
    .await;
    assert_eq!(counted().await, 40);
    // The old log rows went, their totals kept for status.
    let old_logs: i64 = sqlx::query_scalar(
        "select count(*) from data_sync_logs where sync_time < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(old_logs, 0);
    let totals: (i64, i64, i64) = sqlx::query_as(
        "select records_synced, errors, rows_pruned from syncdata_log_totals where table_name = 'customers'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(totals, (5, 1, 2));
    let (_, status) = json_ok(&config, &["status", "--json"]).await;
    let customers = status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "customers")
        .unwrap();
    assert_eq!(customers["records_synced"], 90 + 5, "{customers}");
    assert_eq!(customers["errors_logged"], 1, "{customers}");
    assert_eq!(customers["errors"], 0, "no dead letter waits: {customers}");
    assert_eq!(integrity(&pool).await, "ok");
    drop(daemon);
}

/// `verify` on the file compares values under the type mapping (an exact
/// numeric with other trailing zeros, an instant at another offset, JSON
/// spaced otherwise are equal) and reports as on PostgreSQL: exit 1, and
/// per table the rows missing, extra or different by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_compares_under_the_mapping_and_reports_as_on_postgresql() {
    const DDL: &str = "create table prices (id bigint primary key, amount numeric(12,2), \
        at timestamptz, doc jsonb, ok boolean, raw bytea);";
    let source = support::fresh_database("sqlite_verify").await;
    sqlx::raw_sql(DDL).execute(&source.pool).await.unwrap();
    sqlx::raw_sql(
        "insert into prices values \
           (1, 12.50, '2024-01-02 03:04:05+00', '{\"a\": 2, \"b\": [1, 2]}', true, '\\x00ff'), \
           (2, 1.00, null, null, false, null);",
    )
    .execute(&source.pool)
    .await
    .unwrap();
    let names = TestNames::new("sqverify");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let config = sqlite_config(dir.path(), &source, &names, &file, "");
    let ddl = write_ddl(dir.path(), DDL);
    run_ok(
        dir.path(),
        &config,
        &[
            "add-tables",
            "--create-from",
            ddl.to_str().unwrap(),
            "prices",
        ],
    )
    .await;
    let pool = open(&file).await;
    sqlx::query(
        "insert into prices values (1, '12.5', '2024-01-02T04:04:05+01:00', '{\"a\":2,\"b\":[1,2]}', 1, x'00ff'), \
                                   (2, '1', null, null, 0, null)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (code, doc) = json_ok(&config, &["verify", "--json", "--source", &source.url]).await;
    assert_eq!(code, Some(0), "equal under the mapping: {doc}");
    assert_eq!(doc[0]["equal"], true, "{doc}");
    assert_eq!(doc[0]["source_rows"], 2, "{doc}");
    sqlx::raw_sql(
        "update prices set ok = 0 where id = 1; delete from prices where id = 2; \
         insert into prices (id) values (3);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (code, doc) = json_ok(&config, &["verify", "--json", "--source", &source.url]).await;
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc[0]["equal"], false, "{doc}");
    assert_eq!(doc[0]["differing_rows"], 3, "{doc}");
    assert_eq!(
        doc[0]["rows"],
        serde_json::json!([
            {"kind": "different", "key": [["id", "1"]]},
            {"kind": "missing_locally", "key": [["id", "2"]]},
            {"kind": "extra_locally", "key": [["id", "3"]]},
        ]),
        "{doc}"
    );
    let text = run_ok_code(dir.path(), &config, &["verify", "--source", &source.url], 1).await;
    assert!(text.contains("prices: NOT EQUAL"), "{text}");
    assert!(text.contains("columns that differ: ok"), "{text}");
}

async fn run_ok_code(dir: &Path, config: &Path, args: &[&str], code: i32) -> String {
    let mut p = syncdata(dir, config, args);
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("syncdata {args:?} did not finish:\n{}", p.log()));
    assert_eq!(status.code(), Some(code), "syncdata {args:?}:\n{}", p.log());
    p.log()
}

/// The SQLite daemon picks up `add-tables` and `remove-tables` while it
/// runs, as the PostgreSQL one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_picks_up_whitelist_changes_while_running() {
    let reference = demo_db("sqlite_wl").await;
    let names = TestNames::new("sqwl");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let config = sqlite_config(dir.path(), &reference, &names, &file, "");
    let ddl = write_ddl(dir.path(), workload::DEMO_DDL);
    let ddl = ddl.to_str().unwrap();
    run_ok(
        dir.path(),
        &config,
        &["add-tables", "--create-from", ddl, "customers", "orders"],
    )
    .await;
    run_ok(dir.path(), &config, &["remove-tables", "orders"]).await;
    publish_raw(
        &names,
        &[
            record(
                "customers",
                "INSERT",
                serde_json::json!({"id": 1, "email": "a"}),
                0x100,
            ),
            record(
                "orders",
                "INSERT",
                serde_json::json!({"id": 7, "status": "new"}),
                0x200,
            ),
        ],
    )
    .await;
    let daemon = syncdata(dir.path(), &config, &["start"]);
    let pool = open(&file).await;
    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "select count(*) from {table}"
            )))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    support::wait_until("customers applied", Duration::from_secs(60), || {
        count("customers").map(|n| n == 1)
    })
    .await;
    assert_eq!(count("orders").await, 0, "orders is not whitelisted yet");
    run_ok(dir.path(), &config, &["add-tables", "orders"]).await;
    support::wait_until(
        "orders picked up while running",
        Duration::from_secs(60),
        || count("orders").map(|n| n == 1),
    )
    .await;
    run_ok(dir.path(), &config, &["remove-tables", "customers"]).await;
    support::wait_until("customers' worker stopped", Duration::from_secs(30), || {
        let log = daemon.log();
        async move { log.contains("worker of the removed table stopped") }
    })
    .await;
    publish_raw(
        &names,
        &[record(
            "customers",
            "INSERT",
            serde_json::json!({"id": 2, "email": "b"}),
            0x300,
        )],
    )
    .await;
    publish_raw(
        &names,
        &[record(
            "orders",
            "INSERT",
            serde_json::json!({"id": 8, "status": "new"}),
            0x400,
        )],
    )
    .await;
    support::wait_until("orders still synced", Duration::from_secs(60), || {
        count("orders").map(|n| n == 2)
    })
    .await;
    assert_eq!(count("customers").await, 1, "customers no longer synced");
    drop(daemon);
}

/// The SQLite daemon takes a SCHEMA record in stream order: a column
/// production added (schema_policy = "auto") is added to the file before
/// the rows that carry it apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_adds_the_columns_production_added() {
    let reference = demo_db("sqlite_schema_auto").await;
    let names = TestNames::new("sqschauto");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let config = sqlite_config(dir.path(), &reference, &names, &file, "");
    publish_definition(&names, gadgets(false), 0x100).await;
    run_ok(dir.path(), &config, &["add-tables", "--create", "gadgets"]).await;
    let before = record(
        "gadgets",
        "INSERT",
        serde_json::json!({"id": 1, "price": "1.50"}),
        0x150,
    );
    publish_raw(&names, &[before]).await;
    // As the producer does: the look-up copy, then the record in the
    // table's subject, in stream order with the rows.
    publish_definition(&names, gadgets(true), 0x200).await;
    let def: syncdata_core::tabledef::TableDef = serde_json::from_value(gadgets(true)).unwrap();
    publish_raw(
        &names,
        &[def.to_record(syncdata_core::version::Lsn(0x200), Some(0), None)],
    )
    .await;
    let after = record(
        "gadgets",
        "INSERT",
        serde_json::json!({"id": 2, "price": "2.50", "meta": "{\"k\": [1]}"}),
        0x300,
    );
    publish_raw(&names, &[after]).await;
    let daemon = syncdata(dir.path(), &config, &["start"]);
    let pool = open(&file).await;
    support::wait_until("both rows applied", Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, i64>("select count(*) from gadgets")
            .fetch_one(&pool)
            .await
            .unwrap()
            == 2
    })
    .await;
    let meta: Option<String> = sqlx::query_scalar("select meta from gadgets where id = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(meta.as_deref(), Some(r#"{"k": [1]}"#));
    assert_eq!(failed_logs(&pool).await, 0, "{}", daemon.log());
    let pg_type: String = sqlx::query_scalar(
        "select pg_type from syncdata_columns where table_name = 'gadgets' and column_name = 'meta'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pg_type, "jsonb");
    let (code, doc) = json_ok(&config, &["schema", "diff", "--json"]).await;
    assert_eq!(code, Some(0), "{doc}");
    drop(daemon);
}
