//! Correct values, always (real servers): existence only from an image,
//! values that survive any output settings of the local database, NaN and
//! ±Infinity equal by snapshot and by stream, replica identities that would
//! lose changes refused, a resync that survives crashes, and syncdata's
//! migration history kept out of the application's `public` schema.

use syncdata_testkit::harness as support;

use std::path::Path;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use sqlx::Connection;
use support::{Proc, TestDb, TestNames};
use syncdata_core::record::Record;
use syncdata_testkit::workload;

use crate::pipeline::{add_tables, demo_db, fingerprints, publish_raw, syncdata, wait_converged};
use crate::source;

fn rec(v: serde_json::Value) -> Record {
    Record::parse(v.to_string().as_bytes()).expect("valid record")
}

fn lsn(n: u64) -> String {
    format!("0/{:X}", 0x1000 + n * 16)
}

/// Runs `syncdata args` to its end: (succeeded, its output).
async fn run(dir: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut p = Proc::spawn("syncdata", args, config, env, dir);
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("syncdata {args:?} did not finish:\n{}", p.log()));
    (status.success(), p.log())
}

// ---------------------------------------------------------------------------
// 1. Existence comes only from an image
// ---------------------------------------------------------------------------

/// Every `customers` and `order_lines` key receives only partial UPDATEs
/// that together name every column (its image never arrives); `orders`
/// keys get partial UPDATEs before and after their INSERT. Shuffled,
/// every tenth record twice, applied by three consumers: the tables end as
/// the in-order application leaves them (no customers, no order lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_updates_without_an_image_never_make_rows_with_three_consumers() {
    let mut history = Vec::new();
    let mut v = 0u64;
    let mut next = |history: &mut Vec<Record>, r: serde_json::Value| {
        v += 1;
        let mut r = r;
        r["lsn"] = json!(lsn(v));
        r["seq"] = json!(0);
        history.push(rec(r));
    };
    for id in 1..=300i64 {
        let old = json!({"id": id});
        next(
            &mut history,
            json!({"table": "customers", "op": "UPDATE", "old_keys": old,
            "data": {"id": id, "email": format!("c{id}@x"), "name": "first"}}),
        );
        next(
            &mut history,
            json!({"table": "customers", "op": "UPDATE", "old_keys": old,
            "data": {"id": id, "bio": "bio", "balance": 1.5, "updated_at": "2026-01-01 00:00:00+00"}}),
        );
        next(
            &mut history,
            json!({"table": "customers", "op": "UPDATE", "old_keys": old,
            "data": {"id": id, "name": format!("second {id}")}}),
        );
        let line = json!({"order_id": id, "line": 1});
        next(
            &mut history,
            json!({"table": "order_lines", "op": "UPDATE", "old_keys": line,
            "data": {"order_id": id, "line": 1, "sku": "s", "qty": 1}}),
        );
        next(
            &mut history,
            json!({"table": "order_lines", "op": "UPDATE", "old_keys": line,
            "data": {"order_id": id, "line": 1, "price": 2.25}}),
        );
        // orders: partial, INSERT, partial (only the last partial counts).
        let o = json!({"id": id});
        next(
            &mut history,
            json!({"table": "orders", "op": "UPDATE", "old_keys": o,
            "data": {"id": id, "status": "before", "note": "before"}}),
        );
        next(
            &mut history,
            json!({"table": "orders", "op": "INSERT",
            "data": {"id": id, "customer_id": id, "amount": 10, "status": "new", "note": "n",
                     "tags": "{a}", "meta": "{}", "created_at": "2026-01-01 00:00:00+00"}}),
        );
        next(
            &mut history,
            json!({"table": "orders", "op": "UPDATE", "old_keys": o,
            "data": {"id": id, "status": format!("after {id}")}}),
        );
    }
    let expected_db = demo_db("exist_expected").await;
    workload::apply_in_order(&expected_db.pool, &history)
        .await
        .expect("reference apply");
    let expected = fingerprints(&expected_db).await;
    assert_eq!(
        expected[0].0, 0,
        "in order, no customer exists: {expected:?}"
    );
    assert_eq!(expected[1].0, 300, "every order exists: {expected:?}");
    assert_eq!(
        expected[2].0, 0,
        "in order, no order line exists: {expected:?}"
    );

    let local = demo_db("exist_local").await;
    let names = TestNames::new("exist");
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &local,
        &names,
        &support::nats_url(),
        dir.path(),
        "[consumer]\nbatch_size = 40\n",
    );
    add_tables(dir.path(), &config);
    let mut published = history.clone();
    published.extend(history.iter().step_by(10).cloned());
    published.shuffle(&mut rand::rngs::StdRng::seed_from_u64(5));
    publish_raw(&names, &published).await;
    let consumers: Vec<Proc> = (0..3)
        .map(|_| syncdata(dir.path(), &config, &["start"]))
        .collect();
    let refs: Vec<&Proc> = consumers.iter().collect();
    wait_converged(&names, &local, &expected, &refs).await;
    // The partial rows are parked, not lost: 300 customers and 300 lines.
    let parked: i64 =
        sqlx::query_scalar("select count(*) from syncdata.row_state where state = 'P'")
            .fetch_one(&local.pool)
            .await
            .unwrap();
    assert_eq!(parked, 600);
    for c in &consumers {
        c.sigterm();
    }
    for mut c in consumers {
        c.wait_exit(Duration::from_secs(30)).await.expect("stops");
    }
}

// ---------------------------------------------------------------------------
// 2. Values survive the local database's output settings
// ---------------------------------------------------------------------------

const CARRY_DDL: &str = "create table carry (id int primary key, name text, b bytea, \
    iv interval, ts timestamptz, t timestamp)";

/// The rows of `carry` with every value in a fixed text form.
async fn carry_rows(db: &TestDb) -> Vec<String> {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "set bytea_output = 'hex'; set IntervalStyle = 'postgres'; set TimeZone = 'UTC'; \
         set DateStyle = 'ISO, MDY'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query_scalar("select c::text from carry c order by id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// A local database set to `bytea_output = 'escape'`, `IntervalStyle =
/// 'sql_standard'` and an odd time zone: key changes that carry bytea,
/// intervals and timestamps over from the stored row leave it equal to the
/// in-order application on a database with default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_carry_values_over_exactly_under_odd_output_settings() {
    let local = support::fresh_database("carry_local").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{CARRY_DDL}; alter database \"{0}\" set bytea_output = 'escape'; \
         alter database \"{0}\" set IntervalStyle = 'sql_standard'; \
         alter database \"{0}\" set TimeZone = 'Asia/Kathmandu'; \
         alter database \"{0}\" set DateStyle = 'SQL, DMY'",
        local.name
    )))
    .execute(&local.pool)
    .await
    .unwrap();
    let names = TestNames::new("carry");
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &local,
        &names,
        &support::nats_url(),
        dir.path(),
        "",
    );
    let (ok, log) = run(dir.path(), &config, &["add-tables", "carry"], &[]).await;
    assert!(ok, "{log}");

    // bytea: ASCII hex digits, bytes that are not text, a backslash.
    let values = [
        (
            "\\x6465616462656566",
            "1 year 2 mons 3 days 04:05:06.789",
            "2024-02-29 07:04:56.789+00",
            "1999-12-31 23:59:59.999999",
        ),
        (
            "\\x00ff5c0a",
            "-1 days +02:00:00",
            "1970-01-01 00:00:00+00",
            "2000-02-29 12:00:00",
        ),
        (
            "\\x5c783431",
            "-3 mons -00:00:00.000001",
            "2038-01-19 03:14:08.5+00",
            "0001-01-01 00:00:00",
        ),
    ];
    let inserts: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, (b, iv, ts, t))| {
            rec(
                json!({"table": "carry", "op": "INSERT", "lsn": lsn(i as u64 + 1), "seq": 0,
                "data": {"id": i + 1, "name": "n", "b": b, "iv": iv, "ts": ts, "t": t}}),
            )
        })
        .collect();
    // Key changes that carry everything but the name.
    let moves: Vec<Record> = (1..=values.len())
        .map(|id| {
            rec(
                json!({"table": "carry", "op": "UPDATE", "lsn": lsn(10 + id as u64), "seq": 0,
                "old_keys": {"id": id}, "data": {"id": id + 100, "name": "moved"}}),
            )
        })
        .collect();

    let expected_db = support::fresh_database("carry_expected").await;
    sqlx::raw_sql(CARRY_DDL)
        .execute(&expected_db.pool)
        .await
        .unwrap();
    let all: Vec<Record> = inserts.iter().chain(&moves).cloned().collect();
    workload::apply_in_order(&expected_db.pool, &all)
        .await
        .unwrap();
    let expected = carry_rows(&expected_db).await;
    assert_eq!(expected.len(), 3);
    assert!(expected.iter().all(|r| r.contains("moved")), "{expected:?}");

    // The INSERTs are applied first, so the key changes read the stored rows.
    publish_raw(&names, &inserts).await;
    let daemon = syncdata(dir.path(), &config, &["start"]);
    support::wait_until("inserts applied", Duration::from_secs(60), || async {
        carry_rows(&local).await.len() == 3
    })
    .await;
    publish_raw(&names, &moves).await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        got = carry_rows(&local).await;
        if got == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(got, expected, "daemon log:\n{}", daemon.log());
    let failed: i64 =
        sqlx::query_scalar("select count(*) from data_sync_logs where status <> 'SUCCESS'")
            .fetch_one(&local.pool)
            .await
            .unwrap();
    assert_eq!(failed, 0, "nothing dead-lettered:\n{}", daemon.log());
    daemon.sigterm();
}

/// NaN and ±Infinity in numeric, float8 and real columns arrive equal to
/// the source by snapshot and by stream, on the default configuration
/// (`source.plugin = auto` gives a new slot pgoutput); a table with replica
/// identity NOTHING is refused, naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_and_infinity_equal_by_snapshot_and_by_stream_and_identity_nothing_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source::source(d).await;
    let ddl =
        "CREATE TABLE nums (id int PRIMARY KEY, n numeric, f float8, r real, n2 numeric(12,3))";
    src.exec(ddl).await;
    src.exec(
        "INSERT INTO nums VALUES (1, 'NaN', 'Infinity', '-Infinity', 1.5), \
         (2, 'Infinity', 'NaN', 'NaN', -2), (3, '-Infinity', '-Infinity', 'Infinity', 0), \
         (4, 123456789012345678901234567890.123456789, 1.5e300, 3.25, 7.125)",
    )
    .await;
    src.exec("CREATE TABLE ri_nothing (id int PRIMARY KEY, v text); ALTER TABLE ri_nothing REPLICA IDENTITY NOTHING")
        .await;
    let local = support::fresh_database("nan_local").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_owned()))
        .execute(&local.pool)
        .await
        .unwrap();
    let names = TestNames::new("nan");
    let archive = d.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let cfg = source::config(d, &local, &names, &archive, &src.url, "");

    // Replica identity NOTHING: refused with the fix.
    let (ok, log) = source::finish(
        source::producer(
            d,
            &cfg,
            &[
                "setup-source",
                "--create-slot",
                "--tables",
                "nums,ri_nothing",
            ],
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(!ok, "setup-source must refuse ri_nothing:\n{log}");
    assert!(
        log.contains("replica identity NOTHING")
            && log.contains("ALTER TABLE \"public\".\"ri_nothing\" REPLICA IDENTITY DEFAULT"),
        "{log}"
    );
    let (ok, log) = source::finish(
        source::producer(
            d,
            &cfg,
            &["setup-source", "--create-slot", "--tables", "nums"],
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{log}");
    assert!(
        log.contains("(pgoutput) at") && log.contains("created: publication"),
        "a new slot with known tables is pgoutput by default:\n{log}"
    );

    // add-tables checks the source named by producer.source_url.
    sqlx::raw_sql("CREATE TABLE ri_nothing (id int PRIMARY KEY, v text)")
        .execute(&local.pool)
        .await
        .unwrap();
    let (ok, log) = source::finish(
        source::syncdata(d, &cfg, &["add-tables", "ri_nothing"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(!ok, "add-tables must refuse ri_nothing:\n{log}");
    assert!(
        log.contains("replica identity NOTHING")
            && log.contains("ALTER TABLE \"public\".\"ri_nothing\" REPLICA IDENTITY DEFAULT"),
        "{log}"
    );

    // Rows 1-4 by snapshot; rows 5-8 and a change of row 4 by stream.
    let (ok, log) = source::finish(
        source::producer(d, &cfg, &["snapshot", "nums"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "snapshot:\n{log}");
    let archiver = source::producer(d, &cfg, &["archive", "--tables", "nums"]);
    let publisher = source::producer(d, &cfg, &["run"]);
    source::add_tables(d, &cfg, &["nums"]).await;
    let consumer = source::syncdata(d, &cfg, &["start"]);
    src.exec(
        "INSERT INTO nums SELECT id + 4, n, f, r, n2 FROM nums WHERE id <= 4; \
         UPDATE nums SET n2 = n2 + 1 WHERE id = 4",
    )
    .await;
    let dump = "select t::text from nums t order by id";
    let expected: Vec<String> = sqlx::query_scalar(dump).fetch_all(&src.pool).await.unwrap();
    assert_eq!(expected.len(), 8);
    assert!(
        expected[0].contains("NaN") && expected[1].contains("Infinity"),
        "{expected:?}"
    );
    // The archiver reads the slot through pgoutput, which keeps NaN and
    // ±Infinity as text (wal2json 2.5, Debian's, writes them as null): by
    // stream as by snapshot, every value equals the source's.
    let wanted = expected.clone();
    let mut got: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        got = sqlx::query_scalar(dump)
            .fetch_all(&local.pool)
            .await
            .unwrap();
        if got == wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        got,
        wanted,
        "archiver:\n{}\nconsumer:\n{}",
        archiver.log(),
        consumer.log()
    );
    let logs = [&archiver, &publisher, &consumer];
    let out =
        source::verify_until_equal(d, &cfg, &src.url, &[], Duration::from_secs(30), &logs).await;
    assert!(out.contains("nums: equal"), "{out}");
    drop((archiver, publisher, consumer));
}

// ---------------------------------------------------------------------------
// 3. resync
// ---------------------------------------------------------------------------

struct ResyncWorld {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    local: TestDb,
    names: TestNames,
}

async fn resync_world(tag: &str) -> ResyncWorld {
    let local = demo_db(tag).await;
    let names = TestNames::new(tag);
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &local,
        &names,
        &support::nats_url(),
        dir.path(),
        "[consumer]\nbatch_size = 50\nfetch_wait_ms = 100\n",
    );
    add_tables(dir.path(), &config);
    ResyncWorld {
        dir,
        config,
        local,
        names,
    }
}

/// With no daemon running, `resync` refuses (non-zero, saying why and how)
/// and leaves the table as it was; without `--yes` it refuses too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_without_a_daemon_refuses_and_leaves_the_table() {
    let history = workload::generate(&workload::WorkloadSpec::full(23, 3_000));
    let w = resync_world("resync_nodaemon").await;
    publish_raw(&w.names, &history).await;
    let expected_db = demo_db("resync_nodaemon_exp").await;
    workload::apply_in_order(&expected_db.pool, &history)
        .await
        .unwrap();
    let expected = fingerprints(&expected_db).await;
    let mut daemon = syncdata(w.dir.path(), &w.config, &["start"]);
    wait_converged(&w.names, &w.local, &expected, &[&daemon]).await;
    daemon.sigterm();
    daemon
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("stops");

    let (ok, out) = run(w.dir.path(), &w.config, &["resync", "customers"], &[]).await;
    assert!(!ok && out.contains("add --yes to confirm"), "{out}");
    let (ok, out) = run(
        w.dir.path(),
        &w.config,
        &["resync", "customers", "--yes"],
        &[],
    )
    .await;
    assert!(!ok, "resync with no daemon must fail:\n{out}");
    assert!(
        out.contains("no syncdata daemon applies") && out.contains("--offline"),
        "{out}"
    );
    assert_eq!(
        fingerprints(&w.local).await,
        expected,
        "the table is untouched"
    );
    let pending: i64 =
        sqlx::query_scalar("select count(*) from syncdata.table_state where resync_pending")
            .fetch_one(&w.local.pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);
}

/// A resync that dies between emptying the table and recreating its
/// durable (a crash point), with the daemon SIGKILLed as well: the next
/// `start` finishes the resync and the table ends equal to the in-order
/// reference. Then a resync with the daemon running, the daemon SIGKILLed
/// mid-replay and restarted: equal again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_interrupted_by_crashes_ends_in_a_complete_replay() {
    let history = workload::generate(&workload::WorkloadSpec::full(29, 6_000));
    let w = resync_world("resync_crash").await;
    publish_raw(&w.names, &history).await;
    let expected_db = demo_db("resync_crash_exp").await;
    workload::apply_in_order(&expected_db.pool, &history)
        .await
        .unwrap();
    let expected = fingerprints(&expected_db).await;
    let mut daemon = syncdata(w.dir.path(), &w.config, &["start"]);
    wait_converged(&w.names, &w.local, &expected, &[&daemon]).await;
    // Damage, so only a real replay restores it.
    sqlx::raw_sql("delete from customers where id % 2 = 0; update customers set name = 'damaged'")
        .execute(&w.local.pool)
        .await
        .unwrap();
    assert_ne!(fingerprints(&w.local).await[0], expected[0]);

    // The resync command crashes right after emptying the table.
    let (ok, out) = run(
        w.dir.path(),
        &w.config,
        &["resync", "customers", "--yes", "--no-wait"],
        &[("SYNCDATA_FAILPOINT", "resync-after-reset")],
    )
    .await;
    assert!(!ok && out.contains("failpoint resync-after-reset"), "{out}");
    let customers: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&w.local.pool)
        .await
        .unwrap();
    assert_eq!(customers, 0, "emptied before the crash");
    daemon.sigkill();
    let daemon = syncdata(w.dir.path(), &w.config, &["start"]);
    wait_converged(&w.names, &w.local, &expected, &[&daemon]).await;
    assert!(
        daemon.log().contains("a resync was interrupted"),
        "{}",
        daemon.log()
    );
    let pending: i64 =
        sqlx::query_scalar("select count(*) from syncdata.table_state where resync_pending")
            .fetch_one(&w.local.pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);

    // A resync with the daemon running; the daemon SIGKILLed mid-replay.
    sqlx::raw_sql("update customers set name = 'damaged again'")
        .execute(&w.local.pool)
        .await
        .unwrap();
    let (ok, out) = run(
        w.dir.path(),
        &w.config,
        &["resync", "customers", "--yes", "--no-wait"],
        &[],
    )
    .await;
    assert!(ok, "{out}");
    let mut daemon = daemon;
    support::wait_until("replay under way", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("select count(*) from customers")
            .fetch_one(&w.local.pool)
            .await
            .unwrap();
        n > 0
    })
    .await;
    daemon.sigkill();
    let daemon = syncdata(w.dir.path(), &w.config, &["start"]);
    wait_converged(&w.names, &w.local, &expected, &[&daemon]).await;
    daemon.sigterm();
}

// ---------------------------------------------------------------------------
// 4. syncdata's migration history in its own schema
// ---------------------------------------------------------------------------

/// The application's own sqlx migration, in a temporary directory.
fn app_migrations(dir: &Path, with_second: bool) -> std::path::PathBuf {
    let m = dir.join("app-migrations");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("20240101000000_app_users.sql"),
        "create table app_users (id int primary key, name text);",
    )
    .unwrap();
    if with_second {
        std::fs::write(
            m.join("20240201000000_app_orders.sql"),
            "create table app_orders (id int primary key);",
        )
        .unwrap();
    }
    m
}

/// A local database whose application keeps its own sqlx history in
/// `public._sqlx_migrations`: `add-tables`, `start` and the application's
/// next migration all work and leave each other's history alone. An
/// earlier syncdata's rows there are moved to `syncdata._sqlx_migrations`.
/// `status` and `list-tables` against an empty database create nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_history_stays_out_of_the_applications_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // status against an empty database: a clear error, nothing created.
    let empty = support::fresh_database("mig_empty").await;
    let names = TestNames::new("mig_empty");
    let cfg_empty = support::write_config(
        &d.join("empty"),
        &empty,
        &names,
        &support::nats_url(),
        d,
        "",
    );
    for args in [
        &["status"][..],
        &["list-tables"][..],
        &["status", "--json"][..],
    ] {
        let (ok, out) = run(d, &cfg_empty, args, &[]).await;
        assert!(
            !ok && out.contains("syncdata is not set up"),
            "{args:?}:\n{out}"
        );
    }
    let objects: i64 = sqlx::query_scalar(
        "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
         where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')",
    )
    .fetch_one(&empty.pool)
    .await
    .unwrap();
    let schemas: i64 =
        sqlx::query_scalar("select count(*) from pg_namespace where nspname = 'syncdata'")
            .fetch_one(&empty.pool)
            .await
            .unwrap();
    assert_eq!((objects, schemas), (0, 0), "status created something");

    // The application migrates first (its own history in public).
    let local = support::fresh_database("mig_app").await;
    let app = sqlx::migrate::Migrator::new(app_migrations(d, false))
        .await
        .unwrap();
    app.run(&local.pool).await.unwrap();
    sqlx::raw_sql("create table synced (id int primary key, v text)")
        .execute(&local.pool)
        .await
        .unwrap();
    let names = TestNames::new("mig_app");
    let cfg = support::write_config(&d.join("app"), &local, &names, &support::nats_url(), d, "");
    let (ok, out) = run(d, &cfg, &["add-tables", "synced"], &[]).await;
    assert!(
        ok,
        "add-tables with the application's history present:\n{out}"
    );
    let publics: Vec<i64> =
        sqlx::query_scalar("select version from public._sqlx_migrations order by 1")
            .fetch_all(&local.pool)
            .await
            .unwrap();
    assert_eq!(
        publics,
        [20240101000000],
        "only the application's row in public"
    );
    let ours: i64 = sqlx::query_scalar("select count(*) from syncdata._sqlx_migrations")
        .fetch_one(&local.pool)
        .await
        .unwrap();
    assert_eq!(
        ours as usize,
        syncdata_consumer::store::MIGRATOR.iter().count()
    );

    // start works (and applies).
    publish_raw(
        &names,
        &[rec(json!({"table": "synced", "op": "INSERT", "lsn": lsn(1), "seq": 0, "data": {"id": 1, "v": "x"}}))],
    )
    .await;
    let daemon = syncdata(d, &cfg, &["start"]);
    support::wait_until("start applies", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("select count(*) from synced")
            .fetch_one(&local.pool)
            .await
            .unwrap();
        n == 1
    })
    .await;
    daemon.sigterm();

    // The application's next migration still works.
    let app = sqlx::migrate::Migrator::new(app_migrations(d, true))
        .await
        .unwrap();
    app.run(&local.pool)
        .await
        .expect("the application's migrations keep working");
    let publics: i64 = sqlx::query_scalar("select count(*) from public._sqlx_migrations")
        .fetch_one(&local.pool)
        .await
        .unwrap();
    assert_eq!(publics, 2);

    // An installation of an earlier syncdata: its rows sit in public next
    // to the application's. add-tables moves them, leaving the others.
    sqlx::raw_sql(
        "insert into public._sqlx_migrations \
         select * from syncdata._sqlx_migrations; \
         drop table syncdata._sqlx_migrations",
    )
    .execute(&local.pool)
    .await
    .unwrap();
    let (ok, out) = run(d, &cfg, &["list-tables"], &[]).await;
    assert!(
        ok && out.contains("synced"),
        "read-only commands work before the move:\n{out}"
    );
    let (ok, out) = run(d, &cfg, &["add-tables", "synced"], &[]).await;
    assert!(ok, "upgrade in place:\n{out}");
    let publics: Vec<i64> =
        sqlx::query_scalar("select version from public._sqlx_migrations order by 1")
            .fetch_all(&local.pool)
            .await
            .unwrap();
    assert_eq!(publics, [20240101000000, 20240201000000]);
    let ours: i64 = sqlx::query_scalar("select count(*) from syncdata._sqlx_migrations")
        .fetch_one(&local.pool)
        .await
        .unwrap();
    assert_eq!(
        ours as usize,
        syncdata_consumer::store::MIGRATOR.iter().count()
    );
}
