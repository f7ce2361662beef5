//! The SQLite target (docs/sqlite.md) with real processes and servers:
//! convergence of a shuffled, duplicated history applied by three
//! `syncdata start` processes sharing one file, every value kind of the
//! wal2json reference samples, SIGKILL mid-batch, and the commands.
//! Tables are compared value by value under the type mapping with the
//! in-order reference applied to PostgreSQL.

use syncdata_testkit::harness as support;

use std::path::{Path, PathBuf};
use std::time::Duration;

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
    let ddl = write_ddl(dir.path(), workload::DEMO_DDL);
    let mut args = vec!["add-tables", "--create-from", ddl.to_str().unwrap()];
    args.extend(workload::demo_tables());
    let out = run_ok(dir.path(), &config, &args).await;
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
    let ddl = write_ddl(dir.path(), workload::DEMO_DDL);
    let mut args = vec!["add-tables", "--create-from", ddl.to_str().unwrap()];
    args.extend(workload::demo_tables());
    run_ok(dir.path(), &config, &args).await;
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
/// clear; dlq says it is not available.
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
    let mut p = syncdata(dir.path(), &config, &["dlq", "list"]);
    let status = p.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(!status.success());
    assert!(
        p.log().contains("not available for a SQLite target"),
        "{}",
        p.log()
    );
}
