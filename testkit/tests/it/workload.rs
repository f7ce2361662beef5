//! The synthetic workload and the in-order reference applier against a real
//! PostgreSQL: the demo schema accepts every generated record, the final
//! state is reproducible (same history, same fingerprints), values survive
//! byte-exact, and the applier follows the seed's conflict rules.

use syncdata_testkit::harness as support;

use std::time::Instant;

use syncdata_core::record::Record;
use syncdata_testkit::workload::{
    apply_in_order, demo_tables, generate, table_fingerprint, WorkloadSpec, DEMO_DDL,
};

const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

async fn demo_db(tag: &str) -> support::TestDb {
    let db = support::fresh_database(tag).await;
    sqlx::raw_sql(DEMO_DDL)
        .execute(&db.pool)
        .await
        .expect("DEMO_DDL runs");
    db
}

async fn fingerprints(pool: &sqlx::PgPool) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for t in demo_tables() {
        out.push(table_fingerprint(pool, "public", t).await.unwrap());
    }
    out
}

fn parse_all(lines: &[&str]) -> Vec<Record> {
    lines
        .iter()
        .map(|l| Record::parse(l.as_bytes()).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test]
async fn generated_history_applies_and_gives_stable_fingerprints() {
    let a = demo_db("workload_a").await;
    let b = demo_db("workload_b").await;
    assert_eq!(
        fingerprints(&a.pool).await,
        vec![(0, EMPTY_MD5.to_owned()); 3],
        "empty tables fingerprint as md5('')"
    );

    let spec = WorkloadSpec::full(2024, 5_000);
    let records = generate(&spec);
    assert_eq!(records.len(), 5_000);

    let t = Instant::now();
    apply_in_order(&a.pool, &records).await.unwrap();
    eprintln!("apply_in_order: 5,000 changes in {:?}", t.elapsed());
    let first = fingerprints(&a.pool).await;
    assert_eq!(
        first,
        fingerprints(&a.pool).await,
        "fingerprints are stable"
    );
    let rows: i64 = first.iter().map(|(n, _)| n).sum();
    assert!(rows > 500, "history leaves rows behind: {first:?}");
    for (n, md5) in &first {
        assert_eq!(md5.len(), 32);
        if *n > 0 {
            assert_ne!(md5, EMPTY_MD5);
        }
    }

    // The same history from scratch elsewhere: the same state.
    apply_in_order(&b.pool, &generate(&spec)).await.unwrap();
    assert_eq!(fingerprints(&b.pool).await, first);

    // Partial updates kept their large column: no big column was nulled by
    // an UPDATE that left it out, so some large values are still there.
    let (large,): (i64,) =
        sqlx::query_as("select count(*) from customers where length(bio) > 3000")
            .fetch_one(&a.pool)
            .await
            .unwrap();
    assert!(large > 0);

    // A different history gives a different state.
    let c = demo_db("workload_c").await;
    apply_in_order(&c.pool, &generate(&WorkloadSpec::full(2025, 5_000)))
        .await
        .unwrap();
    assert_ne!(fingerprints(&c.pool).await, first);
}

#[tokio::test]
async fn values_survive_exactly() {
    let db = support::fresh_database("workload_values").await;
    sqlx::raw_sql(
        "create table nums (id bigint primary key, n numeric, a text[], j jsonb, \
         t timestamptz, b bytea, f boolean, big numeric(30,9))",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let records = parse_all(&[
        r#"{"table":"nums","op":"INSERT","data":{"id":1,"n":123456789012345678901234567890.123456789,"a":"{a,\"b c\",NULL,\"q\\\"\"}","j":"{\"k\": [1, 2, {\"x\": null}]}","t":"2024-01-02 03:04:05.678+00","b":"\\xdeadbeef","f":true,"big":123456789012.123456789},"lsn":"0/10","seq":0}"#,
        r#"{"table":"nums","op":"INSERT","data":{"id":2,"n":-0.000000000000000000000000000001,"a":null,"j":null,"t":null,"b":null,"f":null,"big":null},"lsn":"0/10","seq":1}"#,
    ]);
    apply_in_order(&db.pool, &records).await.unwrap();
    type Row = (
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<bool>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "select id, n::text, a::text, j::text, (t at time zone 'UTC')::text, \
         b::text, f, big::text from nums order by id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows[0].1, "123456789012345678901234567890.123456789");
    assert_eq!(rows[0].2.as_deref(), Some(r#"{a,"b c",NULL,"q\""}"#));
    assert_eq!(rows[0].3.as_deref(), Some(r#"{"k": [1, 2, {"x": null}]}"#));
    assert_eq!(rows[0].4.as_deref(), Some("2024-01-02 03:04:05.678"));
    assert_eq!(rows[0].5.as_deref(), Some(r"\xdeadbeef"));
    assert_eq!(rows[0].6, Some(true));
    assert_eq!(rows[0].7.as_deref(), Some("123456789012.123456789"));
    assert_eq!(rows[1].1, "-0.000000000000000000000000000001");
    assert_eq!(
        (&rows[1].2, &rows[1].3, &rows[1].4, &rows[1].5, rows[1].6, &rows[1].7),
        (&None, &None, &None, &None, None, &None)
    );

    // The generated numerics too: every amount in the history that is still
    // live reads back with its digits.
    let demo = demo_db("workload_numeric").await;
    let history = generate(&WorkloadSpec {
        seed: 5,
        changes: 400,
        truncate: false,
        partial_updates: false,
        key_changes: false,
    });
    apply_in_order(&demo.pool, &history).await.unwrap();
    let mut last_amount = std::collections::BTreeMap::new();
    for r in &history {
        if r.table != "orders" {
            continue;
        }
        match (&r.data, &r.old_keys) {
            (Some(d), _) => {
                last_amount.insert(d["id"].raw().to_owned(), d["amount"].to_pg_text());
            }
            (None, Some(k)) => {
                last_amount.remove(k["id"].raw());
            }
            _ => {}
        }
    }
    let stored: Vec<(i64, Option<String>)> =
        sqlx::query_as("select id, amount::text from orders order by id")
            .fetch_all(&demo.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), last_amount.len());
    for (id, amount) in stored {
        assert_eq!(&amount, &last_amount[&id.to_string()], "order {id}");
    }
}

#[tokio::test]
async fn reference_applier_follows_the_seed_rules() {
    let db = support::fresh_database("workload_rules").await;
    // Hostile identifiers: quotes, spaces, capitals.
    sqlx::raw_sql(
        r#"create table "We""ird" ("I d" bigint, "k2" int, "v" text, "big" text, primary key ("I d", "k2"))"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let records = parse_all(&[
        // Inserts; a second INSERT of the same key is an upsert.
        r#"{"table":"We\"ird","op":"INSERT","data":{"I d":1,"k2":1,"v":"one","big":"B1"},"lsn":"0/1","seq":0}"#,
        r#"{"table":"We\"ird","op":"INSERT","data":{"I d":2,"k2":1,"v":"two","big":"B2"},"lsn":"0/1","seq":1}"#,
        r#"{"table":"We\"ird","op":"INSERT","data":{"I d":2,"k2":1,"v":"two again","big":"B2b"},"lsn":"0/2","seq":0}"#,
        // Partial UPDATE: "big" missing means unchanged.
        r#"{"table":"We\"ird","op":"UPDATE","data":{"I d":1,"k2":1,"v":"uno"},"old_keys":{"I d":1,"k2":1},"lsn":"0/3","seq":0}"#,
        // Key change: old key gone, new key holds the full new row.
        r#"{"table":"We\"ird","op":"UPDATE","data":{"I d":20,"k2":1,"v":"twenty","big":"B20"},"old_keys":{"I d":2,"k2":1},"lsn":"0/4","seq":0}"#,
        // UPDATE of a missing row: partial is skipped, full is inserted.
        r#"{"table":"We\"ird","op":"UPDATE","data":{"I d":7,"k2":1,"v":"ghost"},"old_keys":{"I d":7,"k2":1},"lsn":"0/5","seq":0}"#,
        r#"{"table":"We\"ird","op":"UPDATE","data":{"I d":8,"k2":1,"v":"eight","big":null},"old_keys":{"I d":8,"k2":1},"lsn":"0/5","seq":1}"#,
        // UPDATE without old_keys uses data's key.
        r#"{"table":"We\"ird","op":"UPDATE","data":{"I d":8,"k2":1,"v":"EIGHT"},"lsn":"0/6","seq":0}"#,
        // DELETE of a missing row does nothing; DELETE by data works too.
        r#"{"table":"We\"ird","op":"DELETE","old_keys":{"I d":99,"k2":1},"lsn":"0/7","seq":0}"#,
        r#"{"table":"We\"ird","op":"INSERT","data":{"I d":30,"k2":3,"v":"thirty","big":null},"lsn":"0/8","seq":0}"#,
        r#"{"table":"We\"ird","op":"DELETE","data":{"I d":30,"k2":3,"v":"thirty"},"lsn":"0/9","seq":0}"#,
    ]);
    apply_in_order(&db.pool, &records).await.unwrap();
    let rows: Vec<(i64, i32, Option<String>, Option<String>)> =
        sqlx::query_as(r#"select "I d", k2, v, big from "We""ird" order by 1, 2"#)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let expect =
        |id: i64, v: &str, big: Option<&str>| (id, 1, Some(v.to_owned()), big.map(str::to_owned));
    assert_eq!(
        rows,
        vec![
            expect(1, "uno", Some("B1")),
            expect(8, "EIGHT", None),
            expect(20, "twenty", Some("B20")),
        ]
    );
    let (n, md5) = table_fingerprint(&db.pool, "public", "We\"ird")
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_ne!(md5, EMPTY_MD5);

    // TRUNCATE empties the table; later changes apply after it.
    let more = parse_all(&[
        r#"{"table":"We\"ird","op":"TRUNCATE","lsn":"0/A","seq":0}"#,
        r#"{"table":"We\"ird","op":"INSERT","data":{"I d":5,"k2":5,"v":"after","big":null},"lsn":"0/B","seq":0}"#,
    ]);
    apply_in_order(&db.pool, &more).await.unwrap();
    let (n, _) = table_fingerprint(&db.pool, "public", "We\"ird")
        .await
        .unwrap();
    assert_eq!(n, 1);

    // A bad record fails the whole call and changes nothing.
    let bad = parse_all(&[
        r#"{"table":"We\"ird","op":"INSERT","data":{"I d":6,"k2":6,"v":"x","big":null},"lsn":"0/C","seq":0}"#,
        r#"{"table":"We\"ird","op":"INSERT","data":{"I d":"not a number","k2":6},"lsn":"0/C","seq":1}"#,
    ]);
    assert!(apply_in_order(&db.pool, &bad).await.is_err());
    let missing = parse_all(&[r#"{"table":"nope","op":"INSERT","data":{"a":1},"lsn":"0/D"}"#]);
    let err = apply_in_order(&db.pool, &missing).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let (n, _) = table_fingerprint(&db.pool, "public", "We\"ird")
        .await
        .unwrap();
    assert_eq!(n, 1);
}
