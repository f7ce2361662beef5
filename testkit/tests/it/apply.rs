//! The apply engine against a real PostgreSQL: every change kind of the
//! wal2json reference samples, in order, reversed and shuffled; the TRUNCATE
//! barrier; partial UPDATEs before their INSERTs; hostile names.

use syncdata_testkit::harness as support;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use syncdata_consumer::apply::{Applier, ApplyError, BatchReport, Disposition, Incoming};
use syncdata_consumer::store;
use syncdata_core::record::Record;
use syncdata_core::table::TableName;

const SAMPLE_DDL: &str = "
create table items (id int primary key, name text, qty int, big text);
create table items_full (id int primary key, name text, qty int, big text);
alter table items_full replica identity full;
create table nopk (a int, b text);
create table types_demo (id bigint primary key, j jsonb, ts timestamptz, n numeric(10,2),
    u uuid, arr text[], b bytea, flag boolean, f double precision);
create table nums (id int primary key, n numeric, f float8, r real);
";

fn fixture() -> Vec<Record> {
    include_str!("fixtures/wal2json-samples.jsonl")
        .lines()
        .map(|l| Record::parse(l.as_bytes()).expect("fixture parses"))
        .collect()
}

async fn setup(tag: &str, ddl: &str) -> (support::TestDb, Applier) {
    let db = support::fresh_database(tag).await;
    store::MIGRATOR.run(&db.pool).await.expect("migrations");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_owned()))
        .execute(&db.pool)
        .await
        .expect("ddl");
    let applier = Applier::new(db.pool.clone(), true);
    (db, applier)
}

fn table_of(r: &Record) -> TableName {
    TableName::new(r.schema.clone(), r.table.clone())
}

/// Applies records in the given order in batches of `size` per table run
/// (consecutive records of one table form a batch). Tables without a
/// primary key are expected to fail with a clear error.
async fn apply(applier: &Applier, records: &[Record], size: usize) -> Vec<Disposition> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < records.len() {
        let table = table_of(&records[i]);
        let mut j = i;
        while j < records.len() && j - i < size && table_of(&records[j]) == table {
            j += 1;
        }
        let batch: Vec<Incoming> = records[i..j]
            .iter()
            .map(|r| Incoming {
                record: r,
                fallback_seq: 0,
            })
            .collect();
        match applier.apply_batch(&table, &batch, "test").await {
            Ok(report) => out.extend(report.dispositions),
            Err(ApplyError::Shape(e)) if table.table == "nopk" => {
                assert!(e.to_string().contains("no primary key"), "{e}");
            }
            Err(e) => panic!("applying {table}: {e}"),
        }
        i = j;
    }
    out
}

async fn dump(db: &support::TestDb, table: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select t::text from {table} t order by 1"
    )))
    .fetch_all(&db.pool)
    .await
    .expect("dump")
}

/// "Consumer B" of the lock tests: a partial UPDATE of row 1 of `t` (column
/// `a` = 'new' at 0/20), applied by a task of its own.
fn spawn_partial_update_of_row_1(
    applier: Applier,
    table: &TableName,
) -> tokio::task::JoinHandle<Result<BatchReport, ApplyError>> {
    let table = table.clone();
    tokio::spawn(async move {
        let partial = rec(
            r#"{"table":"t","op":"UPDATE","data":{"id":1,"a":"new"},"old_keys":{"id":1},"lsn":"0/20","seq":0}"#,
        );
        applier.apply_batch(&table, &one(&partial), "").await
    })
}

/// Until a statement on the bookkeeping of `db` waits for a lock.
async fn wait_for_a_lock_wait(db: &support::TestDb, what: &str) {
    support::wait_until(what, std::time::Duration::from_secs(20), || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() \
             and wait_event_type = 'Lock' and query like '%row_state%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        waiting > 0
    })
    .await;
}

async fn dump_all(db: &support::TestDb) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for t in ["items", "items_full", "types_demo", "nums"] {
        all.push(dump(db, t).await);
    }
    all
}

type NullableText = Option<String>;

/// j, ts, n, u as text; arr, b, flag, f as themselves.
type TypesRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<String>>,
    Option<Vec<u8>>,
    Option<bool>,
    Option<f64>,
);

fn row(id: i32, name: &str, qty: i32, big: &str) -> String {
    format!("({id},{name},{qty},{big})")
}

#[tokio::test]
async fn every_wal2json_change_kind_applies_in_order() {
    let records = fixture();
    let (db, applier) = setup("samples", SAMPLE_DDL).await;
    let x = "9dd4e461268c8034f5c8564e155c67a6".repeat(256);
    let y = "415290769594460e2e485922904f345d".repeat(256);

    // Through T3: a partial UPDATE (TOAST column left out) and key changes.
    apply(&applier, &records[..8], 1).await;
    assert_eq!(
        dump(&db, "items").await,
        [row(1, "alpha", 6, &x), row(20, "beta2", 7, "small")]
    );
    assert_eq!(
        dump(&db, "items_full").await,
        [row(1, "alpha", 6, &y), row(20, "beta2", 7, "small")]
    );

    // Deletes, TRUNCATE, types, re-insert, TOAST change, COPY rows.
    apply(&applier, &records[8..19], 1).await;
    assert_eq!(
        dump(&db, "items").await,
        [
            row(1, "alpha", 0, "now-small"),
            row(301, "c1", 1, "x"),
            row(302, "c2", 2, "y"),
            row(303, "c3", 3, "z")
        ]
    );
    assert_eq!(
        dump(&db, "items_full").await,
        [row(20, "beta2", 7, "small")]
    );
    let types: Vec<TypesRow> = sqlx::query_as(
        "select j::text, ts::text, n::text, u::text, arr, b, flag, f from types_demo order by id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(types[0].0.as_deref(), Some(r#"{"k": [1, 2, {"x": null}]}"#));
    assert_eq!(types[0].1.as_deref(), Some("2024-01-02 03:04:05.678+00"));
    assert_eq!(types[0].2.as_deref(), Some("12.50"));
    assert_eq!(
        types[0].3.as_deref(),
        Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    );
    assert_eq!(types[0].4, Some(vec!["a".to_owned(), "b\"q".to_owned()]));
    assert_eq!(types[0].5, Some(vec![0xde, 0xad, 0xbe, 0xef]));
    assert_eq!(types[0].6, Some(true));
    assert_eq!(types[0].7, Some(1.5e300));
    assert_eq!(types[1], (None, None, None, None, None, None, None, None));

    // Final TRUNCATE of both tables, the keyless table, numeric edge cases.
    apply(&applier, &records[19..], 1).await;
    assert!(dump(&db, "items").await.is_empty());
    assert!(dump(&db, "items_full").await.is_empty());
    let nums: Vec<(i32, NullableText, NullableText, NullableText)> =
        sqlx::query_as("select id, n::text, f::text, r::text from nums order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(nums[0], (1, None, None, None));
    assert_eq!(
        nums[1],
        (
            2,
            Some("123456789012345678901234567890.123456789".to_owned()),
            Some("0.1".to_owned()),
            Some("0".to_owned())
        )
    );
    // One SUCCESS log row per applied batch.
    let logs: i64 =
        sqlx::query_scalar("select count(*) from data_sync_logs where status = 'SUCCESS'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(logs, 22, "26 records, 4 of them on the keyless table");
}

#[tokio::test]
async fn any_order_and_batching_gives_the_in_order_state() {
    let records = fixture();
    for (n, prefix) in [8usize, 19, records.len()].into_iter().enumerate() {
        let part = &records[..prefix];
        let (expected_db, applier) = setup(&format!("ord{n}"), SAMPLE_DDL).await;
        apply(&applier, part, 1).await;
        let expected = dump_all(&expected_db).await;

        let mut reversed = part.to_vec();
        reversed.reverse();
        let (db, applier) = setup(&format!("rev{n}"), SAMPLE_DDL).await;
        apply(&applier, &reversed, 100).await;
        assert_eq!(dump_all(&db).await, expected, "reversed, prefix {prefix}");

        for seed in 0..3u64 {
            let mut shuffled = part.to_vec();
            // Duplicates too: replays and redeliveries.
            shuffled.extend(part.iter().step_by(3).cloned());
            shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            let (db, applier) = setup(&format!("shuf{n}_{seed}"), SAMPLE_DDL).await;
            apply(&applier, &shuffled, 1 + seed as usize * 2).await;
            assert_eq!(
                dump_all(&db).await,
                expected,
                "shuffled (seed {seed}), prefix {prefix}"
            );
        }
    }
}

/// The records as one batch (no fallback sequence numbers).
fn batch_of<'a>(records: &[&'a Record]) -> Vec<Incoming<'a>> {
    records
        .iter()
        .map(|&record| Incoming {
            record,
            fallback_seq: 0,
        })
        .collect()
}

fn one(r: &Record) -> Vec<Incoming<'_>> {
    batch_of(&[r])
}

fn rec(line: &str) -> Record {
    Record::parse(line.as_bytes()).unwrap()
}

#[tokio::test]
async fn truncate_is_a_barrier_at_its_version() {
    let (db, applier) = setup("trunc", "create table t (id int primary key, v text);").await;
    let table = TableName::new("public", "t");
    let newer =
        rec(r#"{"table":"t","op":"INSERT","data":{"id":1,"v":"new"},"lsn":"0/A0","seq":0}"#);
    let older =
        rec(r#"{"table":"t","op":"INSERT","data":{"id":2,"v":"old"},"lsn":"0/30","seq":0}"#);
    let truncate = rec(r#"{"table":"t","op":"TRUNCATE","lsn":"0/50","seq":0}"#);
    let after =
        rec(r#"{"table":"t","op":"INSERT","data":{"id":3,"v":"after"},"lsn":"0/70","seq":0}"#);
    applier.apply_batch(&table, &one(&older), "").await.unwrap();
    applier.apply_batch(&table, &one(&newer), "").await.unwrap();
    applier
        .apply_batch(&table, &one(&truncate), "")
        .await
        .unwrap();
    assert_eq!(
        dump(&db, "t").await,
        ["(1,new)"],
        "newer row stays, older goes"
    );
    let late =
        rec(r#"{"table":"t","op":"INSERT","data":{"id":4,"v":"late"},"lsn":"0/40","seq":0}"#);
    let report = applier.apply_batch(&table, &one(&late), "").await.unwrap();
    assert_eq!(report.dispositions, [Disposition::Superseded]);
    applier.apply_batch(&table, &one(&after), "").await.unwrap();
    assert_eq!(dump(&db, "t").await, ["(1,new)", "(3,after)"]);
}

#[tokio::test]
async fn partial_update_of_a_missing_row_waits_for_its_image() {
    let (db, applier) = setup(
        "park",
        "create table t (id int primary key, a text not null, big text not null);",
    )
    .await;
    let table = TableName::new("public", "t");
    let partial = rec(
        r#"{"table":"t","op":"UPDATE","data":{"id":1,"a":"v3"},"old_keys":{"id":1},"lsn":"0/30","seq":0}"#,
    );
    let insert = rec(
        r#"{"table":"t","op":"INSERT","data":{"id":1,"a":"v1","big":"X"},"lsn":"0/10","seq":0}"#,
    );
    let full = rec(
        r#"{"table":"t","op":"UPDATE","data":{"id":1,"a":"v2","big":"Y"},"old_keys":{"id":1},"lsn":"0/20","seq":0}"#,
    );
    let report = applier
        .apply_batch(&table, &one(&partial), "")
        .await
        .unwrap();
    assert_eq!(report.parked, 1);
    assert!(
        dump(&db, "t").await.is_empty(),
        "nothing visible while parked"
    );
    applier
        .apply_batch(&table, &one(&insert), "")
        .await
        .unwrap();
    assert_eq!(dump(&db, "t").await, ["(1,v3,X)"]);
    applier.apply_batch(&table, &one(&full), "").await.unwrap();
    assert_eq!(dump(&db, "t").await, ["(1,v3,Y)"], "big from v2, a from v3");
}

#[tokio::test]
async fn hostile_names_are_quoted_or_rejected() {
    let (db, applier) = setup(
        "hostile",
        r#"create table x (id int primary key);
           create table "users""; drop table x; --" ("id" int primary key, "we""ird. col" text, "sp ace" text);"#,
    )
    .await;
    let table = TableName::new("public", "users\"; drop table x; --");
    let good = rec(
        r#"{"table":"users\"; drop table x; --","op":"INSERT","data":{"id":1,"we\"ird. col":"a","sp ace":"b"},"lsn":"0/1","seq":0}"#,
    );
    let bad_col = rec(
        r#"{"table":"users\"; drop table x; --","op":"INSERT","data":{"id":2,"a\"); drop table x; --":"z"},"lsn":"0/2","seq":0}"#,
    );
    let batch = batch_of(&[&good, &bad_col]);
    let report = applier.apply_batch(&table, &batch, "").await.unwrap();
    assert_eq!(report.dispositions[0], Disposition::Applied);
    match &report.dispositions[1] {
        Disposition::Rejected(reason) => assert!(reason.contains("does not have"), "{reason}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let rows: Vec<String> =
        sqlx::query_scalar(r#"select t::text from "users""; drop table x; --" t"#)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, ["(1,a,b)"]);
    let x_exists: bool = sqlx::query_scalar("select to_regclass('public.x') is not null")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(x_exists, "table x must survive");
    // A table name that is not a table here is a clear error, not SQL.
    let ghost = TableName::new("public", "x\"; drop table x; --");
    let err = applier.apply_batch(&ghost, &[], "").await.unwrap_err();
    assert!(err.to_string().contains("not found locally"), "{err}");
}

#[tokio::test]
async fn a_column_added_locally_is_seen_without_a_restart() {
    let (db, applier) = setup("newcol", "create table t (id int primary key, a text);").await;
    let table = TableName::new("public", "t");
    let r =
        rec(r#"{"table":"t","op":"INSERT","data":{"id":1,"a":"x","b":"y"},"lsn":"0/1","seq":0}"#);
    let report = applier.apply_batch(&table, &one(&r), "").await.unwrap();
    assert!(matches!(report.dispositions[0], Disposition::Rejected(_)));
    sqlx::query("alter table t add column b text")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = applier.apply_batch(&table, &one(&r), "").await.unwrap();
    assert_eq!(report.dispositions, [Disposition::Applied]);
    assert_eq!(dump(&db, "t").await, ["(1,x,y)"]);
}

/// In replica mode (a superuser, or the parameter granted) the target's own
/// triggers do not fire for replicated rows; without it they do. The mode
/// is set by the batch's BEGIN itself, so this checks that it holds for
/// every statement of the batch.
#[tokio::test]
async fn replica_mode_keeps_the_targets_triggers_from_firing() {
    let ddl = "create table t (id int primary key, a text);
        create table audit (id int);
        create function audit_fn() returns trigger language plpgsql as
            $$ begin insert into audit values (new.id); return new; end $$;
        create trigger audit_trg after insert or update on t
            for each row execute function audit_fn();";
    let (db, replica) = setup("replica_mode", ddl).await;
    let origin = Applier::new(db.pool.clone(), false);
    let table = TableName::new("public", "t");
    for (applier, id, lsn) in [
        (&replica, 1, "0/1"),
        (&origin, 2, "0/2"),
        (&replica, 3, "0/3"),
    ] {
        let r = rec(&format!(
            r#"{{"table":"t","op":"INSERT","data":{{"id":{id},"a":"x"}},"lsn":"{lsn}","seq":0}}"#
        ));
        let report = applier.apply_batch(&table, &one(&r), "").await.unwrap();
        assert_eq!(report.dispositions, [Disposition::Applied]);
    }
    assert_eq!(dump(&db, "t").await, ["(1,x)", "(2,x)", "(3,x)"]);
    assert_eq!(dump(&db, "audit").await, ["(2)"]);
}

/// Two consumers on one row: the one that waits for the other's row lock
/// must see everything the other committed, target row included (under READ
/// COMMITTED a statement that waits for a lock re-reads only the locked
/// row, not rows joined to it).
#[tokio::test]
async fn a_batch_waiting_for_a_row_lock_sees_what_the_holder_committed() {
    let (db, applier) = setup(
        "lockwait",
        "create table t (id int primary key, a text, big text);",
    )
    .await;
    let table = TableName::new("public", "t");
    // The row starts deleted: a committed tombstone to lock.
    let delete = rec(r#"{"table":"t","op":"DELETE","old_keys":{"id":1},"lsn":"0/5","seq":0}"#);
    applier
        .apply_batch(&table, &one(&delete), "")
        .await
        .unwrap();

    // "Consumer A": locks the row's bookkeeping, as a batch does.
    let mut a = db.pool.begin().await.unwrap();
    sqlx::query("select 1 from syncdata.row_state where key = '1' for update")
        .execute(&mut *a)
        .await
        .unwrap();

    // "Consumer B": a partial UPDATE of the same row; it must wait for A.
    let b = spawn_partial_update_of_row_1(applier, &table);
    wait_for_a_lock_wait(&db, "B waits for A's row lock").await;

    // A makes the row live (an INSERT at 0/10) and commits.
    sqlx::query("update syncdata.row_state set state = 'L', lsn = 16, seq = 0, floor_lsn = 5, floor_seq = 0 where key = '1'")
        .execute(&mut *a)
        .await
        .unwrap();
    sqlx::query("insert into t values (1, 'old', 'BIG')")
        .execute(&mut *a)
        .await
        .unwrap();
    a.commit().await.unwrap();

    let report = b.await.unwrap().unwrap();
    assert_eq!(report.dispositions, [Disposition::Applied]);
    assert_eq!(report.parked, 0, "B saw the row A committed");
    assert_eq!(dump(&db, "t").await, ["(1,new,BIG)"]);
}

#[tokio::test]
async fn a_new_key_another_batch_inserts_meanwhile_is_merged_with_what_it_committed() {
    let (db, applier) = setup(
        "newkeyrace",
        "create table t (id int primary key, a text, big text);",
    )
    .await;
    let table = TableName::new("public", "t");
    // Make the table known to the bookkeeping (its table_state row).
    let other =
        rec(r#"{"table":"t","op":"INSERT","data":{"id":2,"a":"x","big":"y"},"lsn":"0/1","seq":0}"#);
    applier.apply_batch(&table, &one(&other), "").await.unwrap();
    let table_id: i32 = sqlx::query_scalar("select id from syncdata.table_state")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // "Consumer A": brings row 1 (an INSERT at 0/10), not yet committed.
    let mut a = db.pool.begin().await.unwrap();
    sqlx::query(
        "insert into syncdata.row_state (table_id, key, state, lsn, seq) values ($1, '1', 'L', 16, 0)",
    )
    .bind(table_id)
    .execute(&mut *a)
    .await
    .unwrap();
    sqlx::query("insert into t values (1, 'old', 'BIG')")
        .execute(&mut *a)
        .await
        .unwrap();

    // "Consumer B": a partial UPDATE of row 1. It finds no bookkeeping for
    // the key, so it inserts one, and that insert waits for A's.
    let b = spawn_partial_update_of_row_1(applier, &table);
    wait_for_a_lock_wait(&db, "B waits for A's insert of the same key").await;
    a.commit().await.unwrap();

    let report = b.await.unwrap().unwrap();
    assert_eq!(report.dispositions, [Disposition::Applied]);
    assert_eq!(report.parked, 0, "B merged with the row A committed");
    assert_eq!(dump(&db, "t").await, ["(1,new,BIG)", "(2,x,y)"]);
    let (state, lsn): (String, i64) = sqlx::query_as(
        "select state::text, lsn from syncdata.row_state where table_id = $1 and key = '1'",
    )
    .bind(table_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), lsn), ("L", 32), "B's version is recorded");
}

/// INSERT images are written by a plain INSERT first; rows already there
/// without bookkeeping (restored from a dump before the stream) make it
/// fail, and the batch upserts them instead. A violation of another unique
/// constraint still fails the batch, naming the constraint.
#[tokio::test]
async fn inserts_of_rows_already_there_overwrite_them_and_other_unique_violations_fail() {
    let (db, applier) = setup(
        "insthere",
        "create table t (id int primary key, v text, u text unique);
         insert into t values (1, 'restored', 'a'), (3, 'keep', 'dup');",
    )
    .await;
    let table = TableName::new("public", "t");
    let over = rec(
        r#"{"table":"t","op":"INSERT","data":{"id":1,"v":"new","u":"a"},"lsn":"0/10","seq":0}"#,
    );
    let fresh = rec(
        r#"{"table":"t","op":"INSERT","data":{"id":2,"v":"fresh","u":"b"},"lsn":"0/10","seq":1}"#,
    );
    let batch = batch_of(&[&over, &fresh]);
    let report = applier.apply_batch(&table, &batch, "").await.unwrap();
    assert_eq!(
        report.dispositions,
        [Disposition::Applied, Disposition::Applied]
    );
    assert_eq!(
        dump(&db, "t").await,
        ["(1,new,a)", "(2,fresh,b)", "(3,keep,dup)"]
    );
    let books: i64 = sqlx::query_scalar("select count(*) from syncdata.row_state")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(books, 2, "both written keys have their bookkeeping");

    let clash = rec(
        r#"{"table":"t","op":"INSERT","data":{"id":4,"v":"x","u":"dup"},"lsn":"0/20","seq":0}"#,
    );
    let err = applier
        .apply_batch(&table, &one(&clash), "")
        .await
        .expect_err("a duplicate on t_u_key is an error");
    assert!(err.to_string().contains("t_u_key"), "{err}");
    assert_eq!(
        dump(&db, "t").await,
        ["(1,new,a)", "(2,fresh,b)", "(3,keep,dup)"],
        "the failed batch wrote nothing"
    );
}

#[tokio::test]
async fn values_too_long_for_their_column_are_errors_not_truncated() {
    let (_db, applier) = setup(
        "toolong",
        "create table t (id int primary key, v varchar(5), c char(3));",
    )
    .await;
    let table = TableName::new("public", "t");
    let r = rec(
        r#"{"table":"t","op":"INSERT","data":{"id":1,"v":"toolong","c":"ab"},"lsn":"0/1","seq":0}"#,
    );
    let err = applier.apply_batch(&table, &one(&r), "").await.unwrap_err();
    assert_eq!(err.sqlstate().as_deref(), Some("22001"), "{err}");
}

/// Issue 21: records that skipped `Record::validate` (a lone surrogate
/// escape, an INSERT without data) are rejected one by one, never a panic;
/// the rest of the batch applies.
#[tokio::test]
async fn unvalidated_hostile_records_are_rejected_not_a_panic() {
    let (db, applier) = setup(
        "hostile_apply",
        "create table t (id int primary key, v text);",
    )
    .await;
    let table = TableName::new("public", "t");
    // Deserialized without validation, as a library user might.
    let unchecked = |line: &str| -> Record { serde_json::from_str(line).unwrap() };
    let surrogate = unchecked(
        r#"{"table":"t","op":"INSERT","data":{"id":1,"v":"\ud800"},"lsn":"0/10","seq":0}"#,
    );
    let no_data = unchecked(r#"{"table":"t","op":"INSERT","lsn":"0/11","seq":0}"#);
    let good = rec(r#"{"table":"t","op":"INSERT","data":{"id":2,"v":"ok"},"lsn":"0/12","seq":0}"#);
    let batch = batch_of(&[&surrogate, &no_data, &good]);
    let report = applier.apply_batch(&table, &batch, "").await.unwrap();
    match &report.dispositions[..] {
        [Disposition::Rejected(a), Disposition::Rejected(b), Disposition::Applied] => {
            assert!(
                a.contains(r#"value of column "v" holds a lone UTF-16 surrogate escape \ud800"#),
                "{a}"
            );
            assert!(b.contains("INSERT without data"), "{b}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dump(&db, "t").await, ["(2,ok)"]);
}
