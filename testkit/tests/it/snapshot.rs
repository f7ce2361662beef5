//! The snapshot barrier (docs/design.md, "Snapshot barrier") against a real
//! PostgreSQL: a snapshot's rows arrive in chunks, in any order, redelivered,
//! mixed with changes older and newer than the snapshot; the result is the
//! in-order one, and rows loaded in bulk carry no bookkeeping. The snapshot
//! under pgbench with consumers applying is
//! `source::snapshot_of_a_large_table_under_pgbench_then_streaming_verifies_equal`.

use syncdata_testkit::harness as support;

use syncdata_consumer::apply::{Applier, BatchReport, Disposition, Incoming};
use syncdata_consumer::store;
use syncdata_core::record::Record;
use syncdata_core::table::TableName;

const ROWS: i32 = 1000;

fn rec(line: &str) -> Record {
    Record::parse(line.as_bytes()).unwrap()
}

/// The snapshot's row of `id` (the source at 0/100): v{id}, w{id}.
fn snap(id: i32) -> Record {
    rec(&format!(
        r#"{{"table":"t","op":"INSERT","data":{{"id":{id},"v":"v{id}","w":"w{id}"}},"lsn":"0/100","snapshot":true}}"#
    ))
}

async fn apply(applier: &Applier, records: &[Record]) -> BatchReport {
    let batch: Vec<Incoming> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Incoming {
            record: r,
            fallback_seq: i as u64,
        })
        .collect();
    applier
        .apply_batch(&TableName::new("public", "t"), &batch, "")
        .await
        .expect("batch applies")
}

#[tokio::test]
async fn a_snapshot_is_a_barrier_and_its_rows_carry_no_bookkeeping() {
    let db = support::fresh_database("snapbar").await;
    store::MIGRATOR.run(&db.pool).await.expect("migrations");
    sqlx::raw_sql("create table t (id int primary key, v text, w text)")
        .execute(&db.pool)
        .await
        .unwrap();
    let applier = Applier::new(db.pool.clone(), true);

    // Before the snapshot's version: a row deleted at the source before it
    // (9000), a row loaded locally without syncing (5000), an old image of
    // 1, and a row (7) whose w changes after the snapshot.
    sqlx::query("insert into t values (5000, 'local', 'local')")
        .execute(&db.pool)
        .await
        .unwrap();
    apply(
        &applier,
        &[
            rec(r#"{"table":"t","op":"INSERT","data":{"id":9000,"v":"gone","w":"gone"},"lsn":"0/40","seq":0}"#),
            rec(r#"{"table":"t","op":"INSERT","data":{"id":1,"v":"old","w":"old"},"lsn":"0/30","seq":0}"#),
            rec(r#"{"table":"t","op":"INSERT","data":{"id":7,"v":"v7old","w":"w7old"},"lsn":"0/60","seq":0}"#),
            rec(r#"{"table":"t","op":"UPDATE","data":{"id":7,"w":"w7new"},"lsn":"0/230","seq":0}"#),
        ],
    )
    .await;

    let first: Vec<Record> = (1..=ROWS / 2).rev().map(snap).collect();
    let second: Vec<Record> = (ROWS / 2 + 1..=ROWS).map(snap).collect();

    // The second chunk first: the barrier runs with it.
    let r = apply(&applier, &second).await;
    assert!(r.dispositions.iter().all(|d| *d == Disposition::Applied));
    assert_eq!(r.inserted, second.len() as u64);

    // Changes newer than the snapshot, applied before its first chunk
    // arrives: a whole UPDATE, a partial UPDATE of a row not there yet, a
    // DELETE.
    apply(
        &applier,
        &[
            rec(r#"{"table":"t","op":"UPDATE","data":{"id":2,"v":"new2","w":"new2"},"lsn":"0/200","seq":0}"#),
            rec(r#"{"table":"t","op":"UPDATE","data":{"id":3,"w":"w3new"},"lsn":"0/210","seq":0}"#),
            rec(r#"{"table":"t","op":"DELETE","old_keys":{"id":4},"lsn":"0/220","seq":0}"#),
        ],
    )
    .await;

    let r = apply(&applier, &first).await;
    let superseded = r
        .dispositions
        .iter()
        .filter(|d| **d == Disposition::Superseded)
        .count();
    assert_eq!(superseded, 2, "rows 2 and 4 changed after the snapshot");

    // Redelivered, then a newer change, an older one arriving late, and the
    // first chunk redelivered after the newer change.
    apply(&applier, &second).await;
    apply(
        &applier,
        &[rec(
            r#"{"table":"t","op":"UPDATE","data":{"id":6,"v":"new6","w":"new6"},"lsn":"0/300","seq":0}"#,
        )],
    )
    .await;
    let late = apply(
        &applier,
        &[rec(
            r#"{"table":"t","op":"UPDATE","data":{"id":5,"v":"late","w":"late"},"lsn":"0/50","seq":0}"#,
        )],
    )
    .await;
    assert_eq!(late.dispositions, vec![Disposition::Superseded]);
    apply(&applier, &first).await;

    let mut expected: Vec<(i32, String, String)> = (1..=ROWS)
        .filter(|&id| id != 4)
        .map(|id| (id, format!("v{id}"), format!("w{id}")))
        .collect();
    expected[1] = (2, "new2".into(), "new2".into());
    expected[2] = (3, "v3".into(), "w3new".into());
    expected[4] = (6, "new6".into(), "new6".into());
    expected[5] = (7, "v7".into(), "w7new".into());
    let got: Vec<(i32, String, String)> = sqlx::query_as("select id, v, w from t order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);

    // Bookkeeping only for keys changed after the snapshot; the snapshot's
    // own rows have none.
    let booked: Vec<String> =
        sqlx::query_scalar("select key from syncdata.row_state order by key::int")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(booked, ["2", "3", "4", "6", "7"]);
    let floor: (i64, i64) =
        sqlx::query_as("select truncate_lsn, truncate_seq from syncdata.table_state")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        floor,
        (0x100, 0),
        "the barrier is at the snapshot's version, seq 0"
    );
}

/// Snapshot rows are COPY-loaded straight into the table; bytea arrives in
/// wal2json's form (bare hex) or PostgreSQL's (`\x…`), text with the
/// characters COPY escapes. A redelivery of the same rows (the COPY then
/// meets rows already there) takes the staging table's way and changes
/// nothing; neither way writes bookkeeping.
#[tokio::test]
async fn snapshot_rows_load_straight_and_again_with_bytea_and_escapes() {
    let db = support::fresh_database("snapcopy").await;
    store::MIGRATOR.run(&db.pool).await.expect("migrations");
    sqlx::raw_sql("create table t (id int primary key, b bytea, s text)")
        .execute(&db.pool)
        .await
        .unwrap();
    let applier = Applier::new(db.pool.clone(), true);
    let rows: Vec<Record> = (1..=50)
        .map(|id| {
            let b = if id % 2 == 0 { format!("\\\\x{id:04x}") } else { format!("ff{id:04x}") };
            rec(&format!(
                r#"{{"table":"t","op":"INSERT","data":{{"id":{id},"b":"{b}","s":"a\tb\\c\nd\re \\N {id}"}},"lsn":"0/100","snapshot":true}}"#
            ))
        })
        .collect();
    let expected: Vec<(i32, Vec<u8>, String)> = (1..=50)
        .map(|id: i32| {
            let mut b = if id % 2 == 0 { vec![] } else { vec![0xff] };
            b.extend_from_slice(&(id as u16).to_be_bytes());
            (id, b, format!("a\tb\\c\nd\re \\N {id}"))
        })
        .collect();
    for round in 0..2 {
        let r = apply(&applier, &rows).await;
        assert!(
            r.dispositions.iter().all(|d| *d == Disposition::Applied),
            "round {round}: {:?}",
            r.dispositions
        );
        let got: Vec<(i32, Vec<u8>, String)> = sqlx::query_as("select id, b, s from t order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
        assert_eq!(got, expected, "round {round}");
        let booked: i64 = sqlx::query_scalar("select count(*) from syncdata.row_state")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(booked, 0, "round {round}");
    }
}
