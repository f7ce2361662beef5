//! The whole pipeline with real processes: `syncdata-producer` and several
//! `syncdata start` daemons on a real nats-server and PostgreSQL.

use syncdata_testkit::harness as support;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use support::{Proc, TestDb, TestNames};
use syncdata_core::record::Record;
use syncdata_core::subject::table_subject;
use syncdata_testkit::workload::{self, WorkloadSpec};

pub(crate) async fn demo_db(tag: &str) -> TestDb {
    let db = support::fresh_database(tag).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(workload::DEMO_DDL.to_owned()))
        .execute(&db.pool)
        .await
        .expect("demo ddl");
    db
}

pub(crate) async fn fingerprints(db: &TestDb) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for t in workload::demo_tables() {
        out.push(
            workload::table_fingerprint(&db.pool, "public", t)
                .await
                .expect("fingerprint"),
        );
    }
    out
}

pub(crate) fn syncdata(dir: &Path, config: &Path, args: &[&str]) -> Proc {
    Proc::spawn("syncdata", args, config, &[("RUST_LOG", "info")], dir)
}

pub(crate) fn add_tables(dir: &Path, config: &Path) {
    let mut args = vec!["add-tables"];
    args.extend(workload::demo_tables());
    let mut p = syncdata(dir, config, &args);
    let status = p
        .wait_timeout(Duration::from_secs(60))
        .expect("add-tables finishes");
    assert!(status.success(), "add-tables failed:\n{}", p.log());
}

/// Publishes records straight into the change stream (no producer), with no
/// message id, so duplicates stay duplicates.
pub(crate) async fn publish_raw(names: &TestNames, records: &[Record]) {
    let client = support::nats_connect(&support::nats_url()).await;
    let js = jetstream::new(client);
    support::ensure_change_stream(&js, names).await;
    let mut acks = Vec::new();
    for r in records {
        let subject = table_subject(&names.subject_prefix, &r.schema, &r.table);
        acks.push(
            support::publish_signed(&js, subject, r.to_json())
                .await
                .expect("publish"),
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

/// Waits until the local tables equal the expected ones and every durable
/// has nothing left to deliver or ack.
pub(crate) async fn wait_converged(
    names: &TestNames,
    local: &TestDb,
    expected: &[(i64, String)],
    logs: &[&Proc],
) {
    let what = || {
        logs.iter()
            .map(|p| {
                let log = p.log();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let mut last = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let got = fingerprints(local).await;
        if got == expected && stream_drained(names).await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no convergence: expected {expected:?}\n got {got:?} (was {last:?})\nlogs:\n{}",
                what()
            );
        }
        last = got;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub(crate) async fn stream_drained(names: &TestNames) -> bool {
    let client = support::nats_connect(&support::nats_url()).await;
    let js = jetstream::new(client);
    let Ok(mut stream) = js.get_stream(&names.stream).await else {
        return false;
    };
    let Ok(info) = stream.info().await else {
        return false;
    };
    let stored = info.state.messages;
    let expected = workload::demo_tables().len();
    let mut consumers = stream.consumers();
    let mut seen = 0;
    use futures::StreamExt;
    while let Some(c) = consumers.next().await {
        let Ok(c) = c else { return false };
        if c.num_pending > 0 || c.num_ack_pending > 0 {
            return false;
        }
        seen += 1;
    }
    seen == expected && stored > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_duplicated_history_converges_with_three_consumers() {
    let history = workload::generate(&WorkloadSpec {
        seed: 7,
        changes: 20_000,
        truncate: true,
        partial_updates: true,
        key_changes: true,
    });
    let tables: std::collections::BTreeSet<_> = history.iter().map(|r| r.table.clone()).collect();
    assert!(history.len() >= 20_000 && tables.len() >= 3);
    let expected_db = demo_db("conv_expected").await;
    workload::apply_in_order(&expected_db.pool, &history)
        .await
        .expect("reference apply");
    let expected = fingerprints(&expected_db).await;
    assert!(
        expected.iter().all(|(n, _)| *n > 0),
        "non-trivial end state: {expected:?}"
    );

    let local = demo_db("conv_local").await;
    let names = TestNames::new("conv");
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &local,
        &names,
        &support::nats_url(),
        dir.path(),
        "[consumer]\nbatch_size = 500\n",
    );
    add_tables(dir.path(), &config);

    let mut published = history.clone();
    published.extend(history.iter().step_by(10).cloned());
    published.shuffle(&mut rand::rngs::StdRng::seed_from_u64(11));
    publish_raw(&names, &published).await;

    let mut consumers: Vec<Proc> = (0..3)
        .map(|_| syncdata(dir.path(), &config, &["start"]))
        .collect();
    let refs: Vec<&Proc> = consumers.iter().collect();
    wait_converged(&names, &local, &expected, &refs).await;

    // No record was dead-lettered or failed.
    let failed: i64 =
        sqlx::query_scalar("select count(*) from data_sync_logs where status <> 'SUCCESS'")
            .fetch_one(&local.pool)
            .await
            .unwrap();
    assert_eq!(failed, 0);
    let warnings = support::stop_all(&mut consumers, Duration::from_secs(30)).await;
    assert!(warnings.is_empty(), "graceful stop exits 0: {warnings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_batch_and_restarted_applies_everything_once() {
    let history = workload::generate(&WorkloadSpec {
        seed: 3,
        changes: 12_000,
        truncate: false,
        partial_updates: true,
        key_changes: true,
    });
    let expected_db = demo_db("kill_expected").await;
    workload::apply_in_order(&expected_db.pool, &history)
        .await
        .unwrap();
    let expected = fingerprints(&expected_db).await;

    let local = demo_db("kill_local").await;
    let names = TestNames::new("ckill");
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &local,
        &names,
        &support::nats_url(),
        dir.path(),
        "[consumer]\nbatch_size = 200\nack_wait_secs = 2\n",
    );
    add_tables(dir.path(), &config);
    publish_raw(&names, &history).await;

    let mut consumer = syncdata(dir.path(), &config, &["start"]);
    support::wait_until("some batches applied", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("select count(*) from data_sync_logs")
            .fetch_one(&local.pool)
            .await
            .unwrap_or(0);
        n >= 5
    })
    .await;
    consumer.sigkill();
    let applied_before: i64 = sqlx::query_scalar("select count(*) from data_sync_logs")
        .fetch_one(&local.pool)
        .await
        .unwrap();
    assert!(
        fingerprints(&local).await != expected,
        "the kill must land mid-stream (applied {applied_before} batches)"
    );
    let restarted = syncdata(dir.path(), &config, &["start"]);
    wait_converged(&names, &local, &expected, &[&restarted]).await;
}

/// Records in the stream (a chunk counts its records).
async fn stream_count(nats_url: &str, stream: &str) -> u64 {
    support::stream_record_count(nats_url, stream).await
}

/// Messages in the stream (a chunk counts once).
async fn stream_raw_count(nats_url: &str, stream: &str) -> u64 {
    let client = support::nats_connect(nats_url).await;
    let js = jetstream::new(client);
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_mid_stream_loses_and_duplicates_nothing() {
    let history = workload::generate(&WorkloadSpec {
        seed: 21,
        changes: 20_000,
        truncate: true,
        partial_updates: true,
        key_changes: true,
    });
    let expected_db = demo_db("natskill_expected").await;
    workload::apply_in_order(&expected_db.pool, &history)
        .await
        .unwrap();
    let expected = fingerprints(&expected_db).await;

    let dir = tempfile::tempdir().unwrap();
    let mut nats = support::NatsServer::start(&dir.path().join("nats")).await;
    let local = demo_db("natskill_local").await;
    let names = TestNames::new("natskill");
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let config = support::write_config(
        dir.path(),
        &local,
        &names,
        &nats.url(),
        &archive,
        "[consumer]\nbatch_size = 200\nack_wait_secs = 5\nmax_backoff_ms = 1000\n[producer]\nmax_in_flight = 256\n",
    );
    add_tables(dir.path(), &config);
    workload::write_archive(&archive, &history, 2_000).unwrap();
    let producer = Proc::spawn("syncdata-producer", &["run"], &config, &[], dir.path());
    let consumers: Vec<Proc> = (0..2)
        .map(|_| syncdata(dir.path(), &config, &["start"]))
        .collect();

    let url = nats.url();
    support::wait_until("the stream is mid-way", Duration::from_secs(60), || async {
        // Chunks of up to 1,000 records: a few thousand records.
        stream_raw_count(&url, &names.stream).await >= 5
    })
    .await;
    let total = history.len() as u64;
    let before_kill = stream_count(&url, &names.stream).await;
    nats.kill9();
    assert!(
        before_kill < total,
        "the kill lands mid-stream ({before_kill} of {total})"
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage itself
    nats.restart().await;

    support::wait_until(
        "every record in the stream",
        Duration::from_secs(120),
        || async { stream_count(&url, &names.stream).await >= total },
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if fingerprints(&local).await == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence after the NATS restart\nproducer:\n{}\nconsumer:\n{}",
            producer.log(),
            consumers[0].log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        stream_count(&url, &names.stream).await,
        total,
        "nothing duplicated in the stream"
    );
    let failed: i64 =
        sqlx::query_scalar("select count(*) from data_sync_logs where status <> 'SUCCESS'")
            .fetch_one(&local.pool)
            .await
            .unwrap();
    assert_eq!(failed, 0, "no dead letters from a NATS outage");
    for mut p in consumers.into_iter().chain([producer]) {
        assert!(
            p.is_running(),
            "every process rode out the outage:\n{}",
            p.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_tables_outside_the_whitelist_wait_in_the_stream_and_a_5mb_row_applies() {
    let local = support::fresh_database("wl_local").await;
    sqlx::raw_sql(
        "create table kept (id int primary key, body text);
         create table later (id int primary key, v text);",
    )
    .execute(&local.pool)
    .await
    .unwrap();
    let names = TestNames::new("wl");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let config = support::write_config(
        dir.path(),
        &local,
        &names,
        &support::nats_url(),
        &archive,
        "",
    );
    let mut add = syncdata(dir.path(), &config, &["add-tables", "kept"]);
    assert!(
        add.wait_timeout(Duration::from_secs(60)).unwrap().success(),
        "{}",
        add.log()
    );

    let big = "b".repeat(5 * 1024 * 1024);
    let mut lines = Vec::new();
    for i in 0..50 {
        lines.push(serde_json::json!({"table": "kept", "op": "INSERT", "data": {"id": i, "body": format!("row {i}")}, "lsn": format!("0/{:X}", 0x100 + i), "seq": 0}).to_string());
        lines.push(serde_json::json!({"table": "later", "op": "INSERT", "data": {"id": i, "v": format!("v{i}")}, "lsn": format!("0/{:X}", 0x100 + i), "seq": 1}).to_string());
    }
    lines.push(serde_json::json!({"table": "kept", "op": "INSERT", "data": {"id": 1000, "body": big}, "lsn": "0/1000", "seq": 0}).to_string());
    std::fs::write(
        archive.join("changes-000001.jsonl"),
        lines.join("\n") + "\n",
    )
    .unwrap();

    let producer = Proc::spawn("syncdata-producer", &["run"], &config, &[], dir.path());
    let consumer = syncdata(dir.path(), &config, &["start"]);
    support::wait_until(
        "kept applied, 5 MB row included",
        Duration::from_secs(90),
        || async {
            let (n, len): (i64, Option<i64>) =
                sqlx::query_as("select count(*), max(length(body))::bigint from kept")
                    .fetch_one(&local.pool)
                    .await
                    .unwrap();
            n == 51 && len == Some(5 * 1024 * 1024)
        },
    )
    .await;
    let later: i64 = sqlx::query_scalar("select count(*) from later")
        .fetch_one(&local.pool)
        .await
        .unwrap();
    assert_eq!(later, 0, "not whitelisted: nothing applied");
    let stored = stream_count(&support::nats_url(), &names.stream).await;
    assert_eq!(stored, 101, "the other table's records wait in the stream");
    drop(consumer);

    // Whitelisting the table later applies its whole history from the stream.
    let mut add = syncdata(dir.path(), &config, &["add-tables", "later"]);
    assert!(
        add.wait_timeout(Duration::from_secs(60)).unwrap().success(),
        "{}",
        add.log()
    );
    let _consumer = syncdata(dir.path(), &config, &["start"]);
    support::wait_until(
        "later applied from the stream",
        Duration::from_secs(60),
        || async {
            let n: i64 = sqlx::query_scalar("select count(*) from later")
                .fetch_one(&local.pool)
                .await
                .unwrap();
            n == 50
        },
    )
    .await;
    drop(producer);
}
