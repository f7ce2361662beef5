//! Schema changes through the stream (docs/schema.md), against a real
//! source with a wal2json slot: additive DDL under a running writer follows
//! by itself; destructive DDL halts the table with the migration SQL in
//! `status` and the log, and resumes once that SQL ran; `schema diff`,
//! `schema migrate --dry-run` and `add-tables --create` on a fixture.

use syncdata_testkit::harness as support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use support::{Proc, TestDb, TestNames};

use crate::source::{self, Source};

fn config(dir: &Path, local: &TestDb, names: &TestNames, src: &Source, tables: &[&str]) -> PathBuf {
    config_with(dir, local, names, src, tables, "wal2json")
}

fn config_with(
    dir: &Path,
    local: &TestDb,
    names: &TestNames,
    src: &Source,
    tables: &[&str],
    plugin: &str,
) -> PathBuf {
    let archive = dir.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let list = tables
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    support::write_config(
        dir,
        local,
        names,
        &support::nats_url(),
        &archive,
        &format!(
            "[producer]\nsource_url = \"{}\"\nrescan_ms = 200\n\n\
             [consumer]\nbatch_size = 500\nmax_backoff_ms = 500\n\n\
             [source]\nplugin = \"{plugin}\"\ntables = [{list}]\n",
            src.url
        ),
    )
}

async fn local_exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("local SQL failed: {e}\n{sql}"));
}

async fn status(d: &Path, cfg: &Path) -> String {
    let (_, log) = source::finish(
        source::syncdata(d, cfg, &["status"]),
        Duration::from_secs(60),
    )
    .await;
    log
}

/// Waits until `status` shows the table halted with `sql` in its message.
async fn wait_halted(d: &Path, cfg: &Path, sql: &str, logs: &[&Proc]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let out = status(d, cfg).await;
        if out.contains("halted on a schema change") && out.contains(sql) {
            return out;
        }
        if std::time::Instant::now() > deadline {
            let tails: Vec<String> = logs.iter().map(|p| support::tail(&p.log(), 30)).collect();
            panic!(
                "no halt with {sql:?} in status:\n{out}\nlogs:\n{}",
                tails.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `setup-source --create-slot --schema-capture` (must succeed), then the
/// archiver and the producer: the setup's log, for the test's own checks.
async fn capture_and_publish(d: &Path, cfg: &Path) -> (String, Proc, Proc) {
    let (ok, log) = source::finish(
        source::producer(
            d,
            cfg,
            &["setup-source", "--create-slot", "--schema-capture"],
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{log}");
    let archiver = source::producer(d, cfg, &["archive"]);
    let publisher = source::producer(d, cfg, &["run"]);
    (log, archiver, publisher)
}

async fn failed_rows(local: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM data_sync_logs WHERE status <> 'SUCCESS'")
        .fetch_one(&local.pool)
        .await
        .unwrap()
}

/// Must hold 1 and 2: additive DDL while a writer runs follows without a
/// dead letter; DROP COLUMN, a rename and a narrowing halt with their SQL
/// in `status` and the log, and after it ran the table converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn additive_ddl_follows_and_destructive_ddl_halts_until_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source::source(d).await;
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, name varchar(20) NOT NULL, n int)";
    src.exec(ddl).await;
    let local = support::fresh_database("schema_flow_local").await;
    local_exec(&local.pool, ddl).await;
    let names = TestNames::new("schemaflow");
    let cfg = config(d, &local, &names, &src, &["t"]);
    let (log, archiver, publisher) = capture_and_publish(d, &cfg).await;
    assert!(log.contains("ok: schema capture"), "{log}");
    source::add_tables(d, &cfg, &["t"]).await;
    let consumer = source::syncdata(d, &cfg, &["start"]);

    // A writer: inserts and updates all along.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicI64::new(1));
    let writer = {
        let (pool, stop, next) = (src.pool.clone(), stop.clone(), next.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed);
                sqlx::query("INSERT INTO t (id, name, n) VALUES ($1, 'row ' || $1, $1)")
                    .bind(id as i32)
                    .execute(&pool)
                    .await
                    .expect("insert");
                if id % 3 == 0 {
                    sqlx::query("UPDATE t SET n = n + 1 WHERE id = $1")
                        .bind((id / 2) as i32)
                        .execute(&pool)
                        .await
                        .expect("update");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let logs = [&archiver, &publisher, &consumer];
    tokio::time::sleep(Duration::from_millis(500)).await;
    for alter in [
        "ALTER TABLE t ADD COLUMN a text",
        "ALTER TABLE t ADD COLUMN b int NOT NULL DEFAULT 7",
        "ALTER TABLE t ALTER COLUMN name TYPE varchar(50)",
        "ALTER TABLE t ALTER COLUMN n TYPE bigint",
        "ALTER TABLE t ALTER COLUMN name DROP NOT NULL",
    ] {
        src.exec(alter).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    src.exec("UPDATE t SET a = 'set ' || id WHERE id % 5 = 0")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    source::verify_until_equal(d, &cfg, &src.url, &["t"], Duration::from_secs(120), &logs).await;
    assert_eq!(
        failed_rows(&local).await,
        0,
        "a record failed or was dead-lettered"
    );
    let (dlq_ok, dlq) = source::finish(
        source::syncdata(d, &cfg, &["dlq", "list"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        dlq_ok && !dlq.contains("public.t"),
        "no dead letter:\n{dlq}"
    );
    let local_cols: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
         WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .fetch_all(&local.pool)
    .await
    .unwrap();
    assert_eq!(
        local_cols,
        vec![
            ("id".into(), "integer".into(), true),
            ("name".into(), "character varying(50)".into(), false),
            ("n".into(), "bigint".into(), false),
            ("a".into(), "text".into(), false),
            ("b".into(), "integer".into(), true),
        ]
    );

    // Destructive: each halts with its SQL, data keeps flowing in the
    // source meanwhile, and after the SQL ran locally the table converges.
    for (alter, sql, after) in [
        (
            "ALTER TABLE t DROP COLUMN a",
            r#"ALTER TABLE "public"."t" DROP COLUMN "a";"#,
            "INSERT INTO t (id, name, n) SELECT g, 'late ' || g, g FROM generate_series(100001, 100050) g",
        ),
        (
            "ALTER TABLE t RENAME COLUMN b TO b2",
            r#"ALTER TABLE "public"."t" RENAME COLUMN "b" TO "b2";"#,
            "UPDATE t SET b2 = 9 WHERE id % 7 = 0",
        ),
        (
            "ALTER TABLE t ALTER COLUMN n TYPE int",
            r#"ALTER TABLE "public"."t" ALTER COLUMN "n" TYPE integer USING "n"::integer;"#,
            "UPDATE t SET n = n + 100 WHERE id % 4 = 0",
        ),
    ] {
        src.exec(alter).await;
        src.exec(after).await;
        let out = wait_halted(d, &cfg, sql, &logs).await;
        assert!(out.contains("t: halted on a schema change"), "{out}");
        support::wait_until("the halt in the consumer's log", Duration::from_secs(30), || {
            let log = consumer.log();
            async move { log.contains("schema change at") && log.contains("not applied by itself") }
        })
        .await;
        local_exec(&local.pool, sql).await;
        source::verify_until_equal(d, &cfg, &src.url, &["t"], Duration::from_secs(120), &logs).await;
        let out = status(d, &cfg).await;
        assert!(!out.contains("halted on a schema change"), "resumed:\n{out}");
    }
    assert_eq!(
        failed_rows(&local).await,
        0,
        "no record lost or dead-lettered"
    );
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM syncdata.schema_changes WHERE table_name = 't' AND outcome IN ('halted', 'resumed') ORDER BY id",
    )
    .fetch_all(&local.pool)
    .await
    .unwrap();
    assert_eq!(
        outcomes,
        ["halted", "resumed", "halted", "resumed", "halted", "resumed"]
    );
    drop((archiver, publisher, consumer));
}

/// Must hold 4: a fixture with every kind of difference; `schema diff
/// --json` lists each exactly, `migrate --dry-run` prints the safe SQL and
/// changes nothing; `add-tables --create` makes a table equal to
/// production's definition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_and_migrate_list_every_difference_and_create_matches_production() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source::source(d).await;
    src.exec(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE fx (id int, k int NOT NULL, a text, w varchar(50), nw int, dn text,
                          sn text NOT NULL, sd int DEFAULT 5, dd int, u1 int UNIQUE,
                          p int REFERENCES parent (id), PRIMARY KEY (id));
         CREATE TABLE rn (id int PRIMARY KEY, new_name text);
         CREATE TABLE newt (id bigint PRIMARY KEY, label varchar(30) NOT NULL DEFAULT 'x',
                            amount numeric(12,2), at timestamptz, UNIQUE (label));",
    )
    .await;
    let local = support::fresh_database("schema_diff_local").await;
    local_exec(
        &local.pool,
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE fx (id int NOT NULL, k int NOT NULL, z bigint, w varchar(10), nw bigint,
                          dn text NOT NULL, sn text, sd int, dd int DEFAULT 3, u1 int, p int,
                          q int REFERENCES parent (id), PRIMARY KEY (id, k), UNIQUE (k));
         CREATE TABLE rn (id int PRIMARY KEY, old_name text);",
    )
    .await;
    let names = TestNames::new("schemadiff");
    let tables = ["parent", "fx", "rn", "newt"];
    let cfg = config(d, &local, &names, &src, &tables);
    let (log, archiver, publisher) = capture_and_publish(d, &cfg).await;
    assert!(log.contains("definitions of 4 table(s) recorded"), "{log}");

    // Before the first row: the definitions are in the stream.
    let mut json = String::new();
    support::wait_until(
        "the definitions in the stream",
        Duration::from_secs(60),
        || {
            let p = source::syncdata(d, &cfg, &["schema", "diff", "fx", "rn", "newt", "--json"]);
            async move {
                let (_, out) = source::finish(p, Duration::from_secs(60)).await;
                out.matches("\"version\": \"").count() == 3
            }
        },
    )
    .await;
    let mut p = source::syncdata(d, &cfg, &["schema", "diff", "fx", "rn", "newt", "--json"]);
    let status = p.wait_exit(Duration::from_secs(60)).await.unwrap();
    json.push_str(&std::fs::read_to_string(p.log_path()).unwrap());
    assert_eq!(status.code(), Some(1), "differences exit 1:\n{json}");
    let start = json.find('[').expect("JSON output");
    let end = json.rfind(']').unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&json[start..=end]).unwrap();
    let kinds = |table: &str| -> Vec<String> {
        let mut k: Vec<String> = parsed
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap()["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| match d["column"].as_str() {
                Some(c) => format!("{} {c}", d["kind"].as_str().unwrap()),
                None => d["kind"].as_str().unwrap().to_owned(),
            })
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        kinds("fx"),
        [
            "add_column a",
            "add_foreign_key",
            "add_unique",
            "drop_column q",
            "drop_column z",
            "drop_default dd",
            "drop_foreign_key",
            "drop_not_null dn",
            "drop_unique",
            "narrow_type nw",
            "primary_key",
            "set_default sd",
            "set_not_null sn",
            "widen_type w",
        ]
    );
    assert_eq!(kinds("rn"), ["rename_column new_name"]);
    assert_eq!(kinds("newt"), ["missing_table"]);

    // migrate --dry-run: the safe SQL, the rest commented out; nothing run.
    let (ok, out) = source::finish(
        source::syncdata(d, &cfg, &["schema", "migrate", "fx", "--dry-run"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{out}");
    for safe in [
        r#"ALTER TABLE "public"."fx" ADD COLUMN "a" text;"#,
        r#"ALTER TABLE "public"."fx" ALTER COLUMN "w" TYPE character varying(50);"#,
        r#"ALTER TABLE "public"."fx" ALTER COLUMN "dn" DROP NOT NULL;"#,
        r#"ALTER TABLE "public"."fx" ALTER COLUMN "sd" SET DEFAULT 5;"#,
        r#"ALTER TABLE "public"."fx" ALTER COLUMN "dd" DROP DEFAULT;"#,
    ] {
        assert!(out.lines().any(|l| l == safe), "{safe} is run:\n{out}");
    }
    for held in [
        r#"DROP COLUMN "z""#,
        r#"ALTER COLUMN "nw" TYPE integer USING "nw"::integer"#,
        r#"ALTER COLUMN "sn" SET NOT NULL"#,
        r#"DROP CONSTRAINT "fx_pkey", ADD PRIMARY KEY ("id")"#,
        r#"ADD UNIQUE ("u1")"#,
        r#"ADD FOREIGN KEY ("p") REFERENCES "public"."parent" ("id")"#,
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("-- not run") && l.contains(held)),
            "{held} is not run without --allow-destructive:\n{out}"
        );
    }
    assert!(out.contains("-- dry run: nothing was changed"), "{out}");
    let w: String = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'fx'::regclass AND attname = 'w'",
    )
    .fetch_one(&local.pool)
    .await
    .unwrap();
    assert_eq!(w, "character varying(10)", "dry run changed nothing");

    // With --allow-destructive everything goes; then fx matches.
    let (ok, out) = source::finish(
        source::syncdata(
            d,
            &cfg,
            &["schema", "migrate", "fx", "rn", "--allow-destructive"],
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = source::finish(
        source::syncdata(d, &cfg, &["schema", "diff", "fx", "rn"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "no differences left:\n{out}");
    assert!(out.contains("fx: matches"), "{out}");

    // add-tables --create: newt as production defines it.
    let (ok, out) = source::finish(
        source::syncdata(d, &cfg, &["add-tables", "--create", "newt"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("created newt"), "{out}");
    let def_sql = syncdata_core::tabledef::local_definition_sql();
    let definition = |pool: PgPool| {
        let sql = def_sql.clone();
        async move {
            let mut v: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind("public.newt")
                .fetch_one(&pool)
                .await
                .unwrap();
            v.as_object_mut().unwrap().remove("primary_key_name");
            v
        }
    };
    let production = definition(src.pool.clone()).await;
    let created = definition(local.pool.clone()).await;
    assert_eq!(created, production);
    assert_eq!(production["columns"].as_array().unwrap().len(), 4);
    drop((archiver, publisher));
}

async fn local_definition(pool: &PgPool, table: &str) -> serde_json::Value {
    sqlx::query_scalar(sqlx::AssertSqlSafe(
        syncdata_core::tabledef::local_definition_sql(),
    ))
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Must hold 3: a table that changed shape mid-stream (columns added, with
/// and without a default, types widened, a column dropped and one renamed
/// after their halts were migrated) is rebuilt by `resync` through every
/// version of its definition: equal to the source, with the definition it
/// had before (a local index on a column added mid-stream included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_rebuilds_a_table_through_every_version_of_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source::source(d).await;
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, name varchar(20) NOT NULL, n int, gone text)";
    src.exec(ddl).await;
    let local = support::fresh_database("schema_resync_local").await;
    local_exec(&local.pool, ddl).await;
    let names = TestNames::new("schemaresync");
    let cfg = config(d, &local, &names, &src, &["t"]);
    let (_log, archiver, publisher) = capture_and_publish(d, &cfg).await;
    source::add_tables(d, &cfg, &["t"]).await;
    let consumer = source::syncdata(d, &cfg, &["start"]);
    let logs = [&archiver, &publisher, &consumer];

    // Version 1: rows with `gone`; version 2 and 3: `a`, then `b` with a
    // default (rows before it hold 7 in production without a change of
    // theirs in the stream); 4 and 5: wider types, values only they take.
    src.exec(
        "INSERT INTO t (id, name, n, gone) SELECT g, 'r' || g, g, 'g' || g FROM generate_series(1, 40) g",
    )
    .await;
    src.exec("ALTER TABLE t ADD COLUMN a text").await;
    src.exec("INSERT INTO t (id, name, n, gone, a) SELECT g, 'r' || g, g, 'g' || g, 'a' || g FROM generate_series(41, 80) g;
              UPDATE t SET a = 'late ' || id WHERE id % 4 = 0")
        .await;
    src.exec("ALTER TABLE t ADD COLUMN b int NOT NULL DEFAULT 7")
        .await;
    src.exec("UPDATE t SET b = id WHERE id % 5 = 0").await;
    src.exec("ALTER TABLE t ALTER COLUMN name TYPE varchar(60)")
        .await;
    src.exec("ALTER TABLE t ALTER COLUMN n TYPE bigint").await;
    src.exec(
        "INSERT INTO t (id, name, n, gone, a, b) SELECT g, 'a name longer than twenty characters ' || g, \
         5000000000 + g, 'g' || g, 'a' || g, g FROM generate_series(81, 120) g;
         UPDATE t SET n = n + 3000000000 WHERE id % 6 = 0",
    )
    .await;
    source::verify_until_equal(d, &cfg, &src.url, &["t"], Duration::from_secs(120), &logs).await;
    // Version 6 and 7 halt (auto policy); the operator runs the SQL.
    for (alter, sql, after) in [
        (
            "ALTER TABLE t DROP COLUMN gone",
            r#"ALTER TABLE "public"."t" DROP COLUMN "gone";"#,
            "INSERT INTO t (id, name, n, a) SELECT g, 'r' || g, g, 'a' || g FROM generate_series(121, 140) g",
        ),
        (
            "ALTER TABLE t RENAME COLUMN a TO a2",
            r#"ALTER TABLE "public"."t" RENAME COLUMN "a" TO "a2";"#,
            "UPDATE t SET a2 = 'renamed ' || id WHERE id % 3 = 0; DELETE FROM t WHERE id % 10 = 1",
        ),
    ] {
        src.exec(alter).await;
        src.exec(after).await;
        wait_halted(d, &cfg, sql, &logs).await;
        local_exec(&local.pool, sql).await;
        source::verify_until_equal(d, &cfg, &src.url, &["t"], Duration::from_secs(120), &logs)
            .await;
    }
    // A local index on a column that did not exist at first.
    local_exec(&local.pool, "CREATE INDEX t_b_local ON t (b)").await;
    let before = local_definition(&local.pool, "public.t").await;
    assert_eq!(failed_rows(&local).await, 0);

    // A resync that crashes right after the rewind, then one that
    // finishes: the second keeps what the first saved (the definition,
    // the index the rewind dropped with `b`).
    let (ok, out) = source::finish(
        Proc::spawn(
            "syncdata",
            &["resync", "t", "--yes", "--no-wait"],
            &cfg,
            &[("SYNCDATA_FAILPOINT", "resync-after-reset")],
            d,
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(!ok && out.contains("failpoint resync-after-reset"), "{out}");
    let gone: Option<String> = sqlx::query_scalar("SELECT to_regclass('t_b_local')::text")
        .fetch_one(&local.pool)
        .await
        .unwrap();
    assert_eq!(gone, None, "rewound: `b` and its index are gone");
    let (ok, out) = source::finish(
        source::syncdata(d, &cfg, &["resync", "t", "--yes"]),
        Duration::from_secs(180),
    )
    .await;
    assert!(ok, "resync:\n{out}");
    assert!(out.contains("t: rewound to the first definition"), "{out}");
    source::verify_until_equal(d, &cfg, &src.url, &["t"], Duration::from_secs(120), &logs).await;
    assert_eq!(
        failed_rows(&local).await,
        0,
        "no record of an older shape failed or was dead-lettered:\n{}",
        support::tail(&consumer.log(), 40)
    );
    assert_eq!(
        local_definition(&local.pool, "public.t").await,
        before,
        "the local definition of the final version"
    );
    let index: Option<String> = sqlx::query_scalar("SELECT to_regclass('t_b_local')::text")
        .fetch_one(&local.pool)
        .await
        .unwrap();
    assert_eq!(
        index.as_deref(),
        Some("t_b_local"),
        "the local index is back"
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM t WHERE b = 7 AND id <= 40 AND id % 5 <> 0")
            .fetch_one(&local.pool)
            .await
            .unwrap();
    assert_eq!(
        rows, 28,
        "rows from before `ADD COLUMN b … DEFAULT 7` hold 7"
    );
    // Through every version: the rebuild took each definition again, in
    // order, and applied each change (destructive ones included: they had
    // been accepted before).
    let rebuilt: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT outcome, statements FROM syncdata.schema_changes WHERE table_name = 't' \
         AND id > (SELECT max(id) FROM syncdata.schema_changes WHERE outcome = 'rewound') ORDER BY id",
    )
    .fetch_all(&local.pool)
    .await
    .unwrap();
    let replayed: Vec<&(String, Option<String>)> =
        rebuilt.iter().filter(|(o, _)| o == "replayed").collect();
    assert_eq!(
        replayed.len(),
        7,
        "the first definition and six changes: {rebuilt:?}"
    );
    let statements: Vec<&String> = replayed.iter().filter_map(|(_, s)| s.as_ref()).collect();
    let expect = [
        r#"ADD COLUMN "a" text"#,
        r#"ADD COLUMN "b" integer DEFAULT 7 NOT NULL"#,
        r#"ALTER COLUMN "name" TYPE character varying(60)"#,
        r#"ALTER COLUMN "n" TYPE bigint"#,
        r#"DROP COLUMN "gone""#,
        r#"RENAME COLUMN "a" TO "a2""#,
    ];
    assert_eq!(statements.len(), expect.len(), "{rebuilt:?}");
    for (s, e) in statements.iter().zip(expect) {
        assert!(s.contains(e), "{e} in {s} ({rebuilt:?})");
    }
    // Then the table's own parts come back, and the rebuild is over.
    let last = rebuilt.last().unwrap();
    assert_eq!(last.0, "restored", "{rebuilt:?}");
    assert!(
        last.1.as_deref().unwrap_or_default().contains("t_b_local"),
        "{rebuilt:?}"
    );
    assert_eq!(rebuilt.len(), 8, "{rebuilt:?}");
    let rewound: Option<String> = sqlx::query_scalar(
        "SELECT statements FROM syncdata.schema_changes WHERE outcome = 'rewound' ORDER BY id LIMIT 1",
    )
    .fetch_one(&local.pool)
    .await
    .unwrap();
    let rewound = rewound.unwrap_or_default();
    for undo in [
        r#"ADD COLUMN "gone" text"#,
        r#"DROP COLUMN "b""#,
        r#"DROP COLUMN "a2""#,
        r#"ALTER COLUMN "name" TYPE character varying(20)"#,
        r#"ALTER COLUMN "n" TYPE integer"#,
    ] {
        assert!(rewound.contains(undo), "{undo} in the rewind:\n{rewound}");
    }
    let (ok, out) = source::finish(
        source::syncdata(d, &cfg, &["schema", "diff", "t"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok && out.contains("t: matches"), "{out}");

    // A resync while the table is halted on a change not yet migrated: the
    // rebuild ends at the last accepted definition, and the change newer
    // than it halts again, with the same SQL; once it ran, the table
    // converges.
    let sql = r#"ALTER TABLE "public"."t" ALTER COLUMN "n" TYPE integer USING "n"::integer;"#;
    src.exec("UPDATE t SET n = id; ALTER TABLE t ALTER COLUMN n TYPE int")
        .await;
    src.exec("UPDATE t SET n = n + 1 WHERE id % 2 = 0").await;
    wait_halted(d, &cfg, sql, &logs).await;
    let (ok, out) = source::finish(
        source::syncdata(d, &cfg, &["resync", "t", "--yes", "--no-wait"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "resync:\n{out}");
    support::wait_until(
        "the rebuild over, halted again",
        Duration::from_secs(90),
        || {
            let pool = local.pool.clone();
            async move {
                let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
                    "SELECT rebuild_lsn, halted_lsn FROM syncdata.schema_state WHERE table_name = 't'",
                )
                .fetch_optional(&pool)
                .await
                .unwrap();
                matches!(row, Some((None, Some(_))))
            }
        },
    )
    .await;
    wait_halted(d, &cfg, sql, &logs).await;
    assert_eq!(
        local_definition(&local.pool, "public.t").await,
        before,
        "rebuilt up to the accepted definition"
    );
    // The records before the halted change (`SET n = id`) apply; then its
    // SQL can run.
    support::wait_until(
        "the records before the halt applied",
        Duration::from_secs(90),
        || {
            let pool = local.pool.clone();
            async move {
                let (rows, big): (i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE n > 2147483647) FROM t",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                rows == 126 && big == 0
            }
        },
    )
    .await;
    local_exec(&local.pool, sql).await;
    source::verify_until_equal(d, &cfg, &src.url, &["t"], Duration::from_secs(120), &logs).await;
    assert_eq!(failed_rows(&local).await, 0);
    drop((archiver, publisher, consumer));
}

/// `report` lists the schema changes of the period: in `--json`, exactly
/// the table's rows of `syncdata.schema_changes` in the window (a row
/// moved before it is left out); in the text and the HTML forms, each with
/// its statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_lists_the_schema_changes_of_the_period() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source::source(d).await;
    let ddl = "CREATE TABLE r (id int PRIMARY KEY, v text)";
    src.exec(ddl).await;
    let local = support::fresh_database("schema_report_local").await;
    local_exec(&local.pool, ddl).await;
    let names = TestNames::new("schemareport");
    let cfg = config(d, &local, &names, &src, &["r"]);
    let (_log, archiver, publisher) = capture_and_publish(d, &cfg).await;
    source::add_tables(d, &cfg, &["r"]).await;
    let consumer = source::syncdata(d, &cfg, &["start"]);
    let logs = [&archiver, &publisher, &consumer];
    src.exec("INSERT INTO r SELECT g, 'v' || g FROM generate_series(1, 20) g")
        .await;
    src.exec("ALTER TABLE r ADD COLUMN w int DEFAULT 1").await;
    src.exec("INSERT INTO r SELECT g, 'v' || g, g FROM generate_series(21, 30) g")
        .await;
    src.exec("ALTER TABLE r DROP COLUMN v").await;
    // A row after the halt: verify waits for the resume.
    src.exec("INSERT INTO r (id, w) VALUES (31, 31)").await;
    let sql = r#"ALTER TABLE "public"."r" DROP COLUMN "v";"#;
    wait_halted(d, &cfg, sql, &logs).await;
    local_exec(&local.pool, sql).await;
    source::verify_until_equal(d, &cfg, &src.url, &["r"], Duration::from_secs(120), &logs).await;
    // The first change taken (the capture's baseline) is moved out of the
    // window.
    local_exec(
        &local.pool,
        "UPDATE syncdata.schema_changes SET at = now() - interval '3 hours' \
         WHERE id = (SELECT min(id) FROM syncdata.schema_changes WHERE table_name = 'r')",
    )
    .await;
    type Row = (String, i64, i64, String, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), lsn, seq, outcome, statements \
         FROM syncdata.schema_changes WHERE table_name = 'r' AND at > now() - interval '1 hour' ORDER BY id",
    )
    .fetch_all(&local.pool)
    .await
    .unwrap();
    let all: i64 =
        sqlx::query_scalar("SELECT count(*) FROM syncdata.schema_changes WHERE table_name = 'r'")
            .fetch_one(&local.pool)
            .await
            .unwrap();
    assert_eq!(all, rows.len() as i64 + 1, "one row is out of the window");
    let outcomes: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    assert_eq!(outcomes, ["applied", "halted", "resumed"], "{rows:?}");
    let expected: Vec<serde_json::Value> = rows
        .iter()
        .map(|(at, lsn, seq, outcome, statements)| {
            serde_json::json!({
                "at": at,
                "version": syncdata_core::version::Version::new(
                    syncdata_core::version::Lsn(*lsn as u64), *seq as u64).to_string(),
                "outcome": outcome,
                "statements": statements,
            })
        })
        .collect();

    let (ok, out) = source::finish(
        source::syncdata(d, &cfg, &["report", "r", "--since", "1h", "--json"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&out[out.find('{').unwrap()..=out.rfind('}').unwrap()]).unwrap();
    assert_eq!(
        json["tables"][0]["schema_changes"],
        serde_json::Value::Array(expected),
        "{out}"
    );

    let (ok, text) = source::finish(
        source::syncdata(d, &cfg, &["report", "r", "--since", "1h"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{text}");
    assert!(
        text.contains("  schema        1 applied, 1 halted, 1 resumed"),
        "{text}"
    );
    let (ok, html) = source::finish(
        source::syncdata(d, &cfg, &["report", "r", "--since", "1h", "--html"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{html}");
    let page = &html[html.find("<!DOCTYPE").unwrap()..=html.rfind('>').unwrap()];
    crate::report::well_formed(page).unwrap();
    for (_, _, _, outcome, statements) in &rows {
        for line in statements.iter().flat_map(|s| s.lines()) {
            assert!(
                text.contains(&format!("      {line}")),
                "{line} in:\n{text}"
            );
            let escaped = line.replace('&', "&amp;").replace('"', "&quot;");
            assert!(page.contains(&escaped), "{escaped} in:\n{page}");
        }
        assert!(page.contains(&format!("<td>{outcome}</td>")), "{page}");
    }
    drop((archiver, publisher, consumer));
}

/// Schema capture through a pgoutput slot (what `source.plugin = "auto"`
/// picks for a new slot with a table list): the capture table is in the
/// publication, its rows become SCHEMA records; additive DDL under way
/// follows without a dead letter, a DROP COLUMN halts with its SQL, and a
/// resync rebuilds the table through those versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_flow_through_a_pgoutput_slot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source::source(d).await;
    let ddl = "CREATE TABLE p (id int PRIMARY KEY, name varchar(20) NOT NULL, n int)";
    src.exec(ddl).await;
    let local = support::fresh_database("schema_pgoutput_local").await;
    local_exec(&local.pool, ddl).await;
    let names = TestNames::new("schemapgo");
    let cfg = config_with(d, &local, &names, &src, &["p"], "auto");
    let (log, archiver, publisher) = capture_and_publish(d, &cfg).await;
    assert!(log.contains("(pgoutput) at"), "auto picks pgoutput: {log}");
    assert!(log.contains("ok: schema capture"), "{log}");
    source::add_tables(d, &cfg, &["p"]).await;
    let consumer = source::syncdata(d, &cfg, &["start"]);
    let logs = [&archiver, &publisher, &consumer];
    src.exec("INSERT INTO p SELECT g, 'r' || g, g FROM generate_series(1, 30) g")
        .await;
    for alter in [
        "ALTER TABLE p ADD COLUMN b int NOT NULL DEFAULT 7",
        "ALTER TABLE p ALTER COLUMN name TYPE varchar(60)",
        "ALTER TABLE p ALTER COLUMN n TYPE bigint",
    ] {
        src.exec(alter).await;
    }
    src.exec(
        "INSERT INTO p SELECT g, 'a name longer than twenty characters ' || g, 5000000000 + g, g \
         FROM generate_series(31, 60) g; UPDATE p SET b = 8 WHERE id % 4 = 0",
    )
    .await;
    source::verify_until_equal(d, &cfg, &src.url, &["p"], Duration::from_secs(120), &logs).await;
    assert_eq!(failed_rows(&local).await, 0, "no record failed");
    let local_cols: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
         WHERE attrelid = 'p'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .fetch_all(&local.pool)
    .await
    .unwrap();
    assert_eq!(
        local_cols,
        vec![
            ("id".into(), "integer".into(), true),
            ("name".into(), "character varying(60)".into(), true),
            ("n".into(), "bigint".into(), false),
            ("b".into(), "integer".into(), true),
        ]
    );
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM syncdata.schema_changes WHERE table_name = 'p' AND outcome = 'applied'",
    )
    .fetch_one(&local.pool)
    .await
    .unwrap();
    assert_eq!(applied, 3, "each change taken from the pgoutput stream");
    src.exec("ALTER TABLE p DROP COLUMN n").await;
    src.exec("INSERT INTO p (id, name) VALUES (61, 'after')")
        .await;
    let sql = r#"ALTER TABLE "public"."p" DROP COLUMN "n";"#;
    wait_halted(d, &cfg, sql, &logs).await;
    local_exec(&local.pool, sql).await;
    source::verify_until_equal(d, &cfg, &src.url, &["p"], Duration::from_secs(120), &logs).await;
    // And a resync rebuilds it through those versions.
    let before = local_definition(&local.pool, "public.p").await;
    let (ok, out) = source::finish(
        source::syncdata(d, &cfg, &["resync", "p", "--yes"]),
        Duration::from_secs(180),
    )
    .await;
    assert!(
        ok && out.contains("p: rewound to the first definition"),
        "{out}"
    );
    source::verify_until_equal(d, &cfg, &src.url, &["p"], Duration::from_secs(120), &logs).await;
    assert_eq!(local_definition(&local.pool, "public.p").await, before);
    assert_eq!(failed_rows(&local).await, 0, "no record failed");
    drop((archiver, publisher, consumer));
}
