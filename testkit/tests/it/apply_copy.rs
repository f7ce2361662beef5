//! The two ways the PostgreSQL target writes a set of rows — arrays bound
//! for `unnest`, or a binary `COPY` into a staging table merged from there
//! (large writes) — give the same tables, the same bookkeeping and the same
//! errors. Each test applies one workload twice, once with every write
//! staged (`with_copy_from(1)`) and once with none (`usize::MAX`).

use syncdata_testkit::harness as support;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use syncdata_consumer::apply::{Applier, ApplyError, Engine, Incoming, PgTarget};
use syncdata_consumer::store;
use syncdata_core::record::Record;
use syncdata_core::table::TableName;

const SAMPLE_DDL: &str = "
create table items (id int primary key, name text, qty int, big text);
create table items_full (id int primary key, name text, qty int, big text);
alter table items_full replica identity full;
create table types_demo (id bigint primary key, j jsonb, ts timestamptz, n numeric(10,2),
    u uuid, arr text[], b bytea, flag boolean, f double precision);
create table nums (id int primary key, n numeric, f float8, r real);
";

const GEN_DDL: &str = "create table g (id int primary key, a text, b int, c bytea, d varchar(8));";

async fn setup(tag: &str, ddl: &str, copy_from: usize) -> (support::TestDb, Applier) {
    let db = support::fresh_database(tag).await;
    store::MIGRATOR.run(&db.pool).await.expect("migrations");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_owned()))
        .execute(&db.pool)
        .await
        .expect("ddl");
    let target = PgTarget::new(db.pool.clone(), true).with_copy_from(copy_from);
    (db, Engine::with_target(target))
}

fn table_of(r: &Record) -> TableName {
    TableName::new(r.schema.clone(), r.table.clone())
}

/// Applies `records` in batches of up to `size` consecutive records of one
/// table; every batch must apply (the keyless table is left out).
async fn apply(applier: &Applier, records: &[Record], size: usize) {
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
        applier
            .apply_batch(&table, &batch, "test")
            .await
            .unwrap_or_else(|e| panic!("applying {table}: {e}"));
        i = j;
    }
}

/// Every row of `tables` and every bookkeeping row, as text.
async fn state(db: &support::TestDb, tables: &[&str]) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for t in tables {
        all.push(
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "select t::text from {t} t order by 1"
            )))
            .fetch_all(&db.pool)
            .await
            .expect("dump"),
        );
    }
    all.push(
        sqlx::query_scalar(
            "select concat_ws(' ', ts.table_name, s.key, s.state, s.lsn, s.seq, s.floor_lsn, \
                    s.floor_seq, s.col_versions::text, s.parked::text) \
             from syncdata.row_state s join syncdata.table_state ts on ts.id = s.table_id order by 1",
        )
        .fetch_all(&db.pool)
        .await
        .expect("bookkeeping"),
    );
    all
}

/// The state after `records` in batches of `size`: staged, and through
/// `unnest`.
async fn both_ways(
    tag: &str,
    ddl: &str,
    tables: &[&str],
    records: &[Record],
    size: usize,
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let (db, applier) = setup(&format!("{tag}_copy"), ddl, 1).await;
    apply(&applier, records, size).await;
    let staged = state(&db, tables).await;
    let (db, applier) = setup(&format!("{tag}_unnest"), ddl, usize::MAX).await;
    apply(&applier, records, size).await;
    (staged, state(&db, tables).await)
}

#[tokio::test]
async fn staged_and_unnest_writes_agree_on_every_wal2json_change_kind() {
    let records: Vec<Record> = include_str!("fixtures/wal2json-samples.jsonl")
        .lines()
        .map(|l| Record::parse(l.as_bytes()).expect("fixture parses"))
        .filter(|r| r.table != "nopk")
        .collect();
    let tables = ["items", "items_full", "types_demo", "nums"];
    let (staged, unnest) = both_ways("cp_order", SAMPLE_DDL, &tables, &records, 1).await;
    assert_eq!(staged, unnest, "in order");
    assert!(
        staged[..4].iter().any(|t| !t.is_empty()),
        "the workload leaves rows"
    );
    for seed in 0..2u64 {
        let mut shuffled = records.clone();
        shuffled.extend(records.iter().step_by(3).cloned());
        shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let (staged, unnest) = both_ways(
            &format!("cp_shuf{seed}"),
            SAMPLE_DDL,
            &tables,
            &shuffled,
            3 + seed as usize * 50,
        )
        .await;
        assert_eq!(staged, unnest, "shuffled, seed {seed}");
    }
}

/// A value of column `a` that COPY's text format would have to escape, or
/// worse.
fn awkward(rng: &mut impl Rng) -> String {
    let parts = [
        "plain",
        "tab\there",
        "new\nline",
        "back\\slash",
        "\\N",
        "",
        "crlf\r\n",
        "ünïcødé ✓",
        "'quote\"",
        ",comma",
    ];
    (0..rng.random_range(1..3))
        .map(|_| parts[rng.random_range(0..parts.len())])
        .collect()
}

/// A random history of table `g`: INSERTs, whole and partial UPDATEs,
/// key changes, DELETEs, NULLs and awkward text, with versions in order.
fn generated(seed: u64, count: usize) -> Vec<Record> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for n in 0..count {
        let id = rng.random_range(1..60);
        let lsn = format!("0/{:X}", 0x1000 + n * 16);
        let a = serde_json::to_string(&awkward(&mut rng)).unwrap();
        let b = if rng.random_bool(0.2) {
            "null".to_owned()
        } else {
            rng.random_range(-5..1000).to_string()
        };
        let c = format!("\"{:02x}{:02x}\"", rng.random::<u8>(), rng.random::<u8>());
        let d = format!("\"d{}\"", rng.random_range(0..1000));
        let line = match rng.random_range(0..10) {
            0..=2 => format!(
                r#"{{"table":"g","op":"INSERT","data":{{"id":{id},"a":{a},"b":{b},"c":{c},"d":{d}}},"lsn":"{lsn}","seq":0}}"#
            ),
            3..=4 => format!(
                r#"{{"table":"g","op":"UPDATE","data":{{"id":{id},"a":{a},"b":{b},"c":{c},"d":{d}}},"old_keys":{{"id":{id}}},"lsn":"{lsn}","seq":0}}"#
            ),
            5..=6 => format!(
                r#"{{"table":"g","op":"UPDATE","data":{{"id":{id},"b":{b}}},"old_keys":{{"id":{id}}},"lsn":"{lsn}","seq":0}}"#
            ),
            7 => {
                let new = rng.random_range(1..60);
                format!(
                    r#"{{"table":"g","op":"UPDATE","data":{{"id":{new},"a":{a},"b":{b},"c":{c},"d":{d}}},"old_keys":{{"id":{id}}},"lsn":"{lsn}","seq":0}}"#
                )
            }
            _ => format!(
                r#"{{"table":"g","op":"DELETE","old_keys":{{"id":{id}}},"lsn":"{lsn}","seq":0}}"#
            ),
        };
        out.push(Record::parse(line.as_bytes()).expect("generated record parses"));
    }
    out
}

#[tokio::test]
async fn staged_and_unnest_writes_agree_on_a_random_history_in_any_order() {
    let records = generated(7, 1500);
    let (reference_db, reference) = setup("cp_gen_ref", GEN_DDL, usize::MAX).await;
    apply(&reference, &records, 1).await;
    let expected = state(&reference_db, &["g"]).await;
    assert!(!expected[0].is_empty(), "the history leaves rows");
    for seed in 0..2u64 {
        let mut shuffled = records.clone();
        shuffled.extend(records.iter().step_by(4).cloned());
        shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let (staged, unnest) = both_ways(
            &format!("cp_gen{seed}"),
            GEN_DDL,
            &["g"],
            &shuffled,
            [400, 2000][seed as usize],
        )
        .await;
        assert_eq!(staged, unnest, "seed {seed}");
        // Data equals the in-order result (bookkeeping may differ: which
        // superseded versions it remembers depends on the batching).
        assert_eq!(staged[0], expected[0], "seed {seed}");
    }
}

async fn error_of(copy_from: usize, tag: &str, line: &str) -> ApplyError {
    let (_db, applier) = setup(tag, GEN_DDL, copy_from).await;
    let r = Record::parse(line.as_bytes()).expect("record parses");
    let batch = [Incoming {
        record: &r,
        fallback_seq: 0,
    }];
    applier
        .apply_batch(&TableName::new("public", "g"), &batch, "")
        .await
        .expect_err("the batch fails")
}

#[tokio::test]
async fn staged_writes_fail_with_the_sqlstate_unnest_writes_fail_with() {
    for (what, line) in [
        (
            "too long",
            r#"{"table":"g","op":"INSERT","data":{"id":1,"d":"much too long"},"lsn":"0/1","seq":0}"#,
        ),
        (
            "not an int",
            r#"{"table":"g","op":"INSERT","data":{"id":1,"b":"x"},"lsn":"0/1","seq":0}"#,
        ),
        (
            "NUL byte",
            r#"{"table":"g","op":"INSERT","data":{"id":1,"a":"a\u0000b"},"lsn":"0/1","seq":0}"#,
        ),
        (
            "bad hex",
            r#"{"table":"g","op":"INSERT","data":{"id":1,"c":"zz"},"lsn":"0/1","seq":0}"#,
        ),
    ] {
        let tag = what.replace(' ', "_");
        let staged = error_of(1, &format!("cp_err_{tag}_c"), line).await;
        let unnest = error_of(usize::MAX, &format!("cp_err_{tag}_u"), line).await;
        assert!(staged.sqlstate().is_some(), "{what}: {staged}");
        assert_eq!(
            staged.sqlstate(),
            unnest.sqlstate(),
            "{what}: {staged} / {unnest}"
        );
    }
}

/// Batches of 1,000 keys or more apply with hash and merge joins off; the
/// result is the one small batches give.
#[tokio::test]
async fn batches_of_thousands_of_keys_give_what_small_batches_give() {
    let mut records = Vec::new();
    for (n, op) in ["INSERT", "UPDATE", "DELETE"].into_iter().enumerate() {
        for id in 1..=1500 {
            // DELETE every third key only: the others stay.
            if op == "DELETE" && id % 3 != 0 {
                continue;
            }
            let lsn = format!("0/{:X}", 0x10000 * (n + 1) + id);
            let line = if op == "DELETE" {
                format!(
                    r#"{{"table":"g","op":"DELETE","old_keys":{{"id":{id}}},"lsn":"{lsn}","seq":0}}"#
                )
            } else {
                format!(
                    r#"{{"table":"g","op":"{op}","data":{{"id":{id},"a":"{op} {id}","b":{n},"c":"00","d":"x"}},"lsn":"{lsn}","seq":0}}"#
                )
            };
            records.push(Record::parse(line.as_bytes()).expect("record parses"));
        }
    }
    let (small_db, small) = setup("cp_big_small", GEN_DDL, usize::MAX).await;
    apply(&small, &records, 100).await;
    let expected = state(&small_db, &["g"]).await;
    assert_eq!(expected[0].len(), 1000);
    let target_db = support::fresh_database("cp_big").await;
    store::MIGRATOR
        .run(&target_db.pool)
        .await
        .expect("migrations");
    sqlx::raw_sql(GEN_DDL)
        .execute(&target_db.pool)
        .await
        .expect("ddl");
    // The default target: index joins from 1,000 keys on.
    let big = Applier::new(target_db.pool.clone(), true);
    apply(&big, &records, 1500).await;
    assert_eq!(state(&target_db, &["g"]).await, expected);
}
