//! Records larger than a NATS message, on a nats-server with its default
//! `max_payload` (1 MB): the producer puts them into the deployment's
//! object store bucket and publishes a signed pointer; the consumer fetches,
//! checks and applies them whole (syncdata_core::large). Dead letters always
//! fit, and a consumer's memory stays bounded with 8 MB records.

use syncdata_testkit::harness as support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use serde_json::{json, Value as Json};
use support::{NatsServer, Proc, TestDb, TestNames};
use syncdata_core::subject::table_subject;

/// A private nats-server at the default max_payload, a fresh database with
/// `ddl`, a configuration (`extra` appended) and the archive directory.
struct Setup {
    nats: NatsServer,
    db: TestDb,
    names: TestNames,
    dir: tempfile::TempDir,
    archive: PathBuf,
    config: PathBuf,
}

async fn setup(tag: &str, ddl: &str, tables: &[&str], extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_with(&dir.path().join("nats"), "").await;
    let db = support::fresh_database(tag).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_owned()))
        .execute(&db.pool)
        .await
        .unwrap();
    let names = TestNames::new(tag);
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let config = support::write_config(dir.path(), &db, &names, &nats.url(), &archive, extra);
    let mut args = vec!["add-tables"];
    args.extend(tables);
    let out = support::run_cli("syncdata", &config, &args, &[]).await;
    assert!(out.status.success(), "add-tables: {out:?}");
    Setup {
        nats,
        db,
        names,
        dir,
        archive,
        config,
    }
}

fn insert(table: &str, id: i64, body: &str, lsn: u64) -> String {
    json!({"table": table, "op": "INSERT", "data": {"id": id, "body": body},
           "lsn": format!("0/{lsn:X}"), "seq": 0})
    .to_string()
}

fn write_archive(archive: &Path, lines: &[String]) {
    let tmp = archive.join(".changes-000001.jsonl.tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n").unwrap();
    std::fs::rename(tmp, archive.join("changes-000001.jsonl")).unwrap();
}

fn spawn(s: &Setup, name: &str, args: &[&str]) -> Proc {
    Proc::spawn(name, args, &s.config, &[("RUST_LOG", "info")], s.dir.path())
}

/// (row count, md5 of every body in key order).
async fn digest(db: &TestDb, table: &str) -> (i64, Option<String>) {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select count(*), md5(string_agg(md5(body), ',' order by id)) from {table}"
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn admin_js(url: &str) -> jetstream::Context {
    jetstream::new(support::nats_connect(url).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5mb_row_at_the_default_max_payload_arrives_whole() {
    let s = setup(
        "large5",
        "create table big (id int primary key, body text)",
        &["big"],
        "",
    )
    .await;
    // Deterministic but not repetitive, so a wrong chunk order shows.
    let big: String = (0..5 * 1024 * 1024 / 8)
        .map(|i: u32| format!("{:08x}", i.wrapping_mul(2_654_435_761)))
        .collect();
    assert!(big.len() >= 5 * 1024 * 1024);
    let mut lines: Vec<String> = (0..20)
        .map(|i| insert("big", i, &format!("row {i}"), 0x100 + i as u64))
        .collect();
    lines.push(insert("big", 1000, &big, 0x1000));
    lines.push(insert("big", 1001, "after", 0x1001));
    write_archive(&s.archive, &lines);

    // The reference: the same rows written directly.
    let reference = support::fresh_database("large5_ref").await;
    sqlx::raw_sql("create table big (id int primary key, body text)")
        .execute(&reference.pool)
        .await
        .unwrap();
    for i in 0..20 {
        sqlx::query("insert into big values ($1, $2)")
            .bind(i)
            .bind(format!("row {i}"))
            .execute(&reference.pool)
            .await
            .unwrap();
    }
    sqlx::query("insert into big values (1000, $1), (1001, 'after')")
        .bind(&big)
        .execute(&reference.pool)
        .await
        .unwrap();
    let expected = digest(&reference, "big").await;

    let producer = spawn(&s, "syncdata-producer", &["run"]);
    let consumer = spawn(&s, "syncdata", &["start"]);
    let db = s.db.clone();
    support::wait_until("the 5 MB row applied", Duration::from_secs(120), || {
        let db = db.clone();
        let expected = expected.clone();
        async move { digest(&db, "big").await == expected }
    })
    .await;

    // It went through the object store: the stream holds only small
    // messages, the bucket the record.
    let messages = support::stream_messages(&s.nats.url(), &s.names.stream).await;
    assert_eq!(messages.len(), 22);
    assert!(messages.iter().all(|(_, p)| p.len() < 4096));
    let pointer: Json = messages
        .iter()
        .find_map(|(_, p)| {
            serde_json::from_slice::<Json>(p)
                .ok()
                .filter(|j| j.get("syncdata_object").is_some())
        })
        .expect("a pointer in the stream");
    let js = admin_js(&s.nats.url()).await;
    let bucket = pointer["syncdata_object"]["bucket"].as_str().unwrap();
    assert_eq!(bucket, format!("{}_LARGE", s.names.stream));
    let info = js
        .get_object_store(bucket)
        .await
        .unwrap()
        .info(pointer["syncdata_object"]["name"].as_str().unwrap())
        .await
        .unwrap();
    assert!(info.size > 5 * 1024 * 1024);
    assert!(
        producer
            .log()
            .contains("go through the object store bucket"),
        "the producer says so at start:\n{}",
        producer.log_tail(20)
    );
    drop(consumer);
    drop(producer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_near_and_over_max_payload_land_and_replay() {
    let s = setup(
        "largedl",
        "create table narrow (id int primary key, body varchar(10))",
        &["narrow"],
        "[consumer]\nmax_attempts = 1\nmax_backoff_ms = 500\n",
    )
    .await;
    let max_payload = 1024 * 1024;
    // 1: just under what goes as a message; 2: through the object store.
    let near = "n".repeat(max_payload - 20 * 1024);
    let over = "o".repeat(2 * max_payload);
    write_archive(
        &s.archive,
        &[
            insert("narrow", 1, &near, 0x10),
            insert("narrow", 2, &over, 0x11),
        ],
    );
    // 3: a message (signed, as the producer's) that fills max_payload: its
    // dead letter cannot carry it and files it by reference.
    let js = admin_js(&s.nats.url()).await;
    support::ensure_change_stream(&js, &s.names).await;
    let subject = table_subject(&s.names.subject_prefix, "public", "narrow");
    let mut filler = insert("narrow", 3, "", 0x12);
    let pad = max_payload - 300 - filler.len();
    filler = insert("narrow", 3, &"f".repeat(pad), 0x12);
    support::publish_signed(&js, subject, filler.into_bytes())
        .await
        .expect("publish near max_payload")
        .await
        .expect("stored");

    let producer = spawn(&s, "syncdata-producer", &["run"]);
    let consumer = spawn(&s, "syncdata", &["start"]);
    let config = s.config.clone();
    let list = || {
        let config = config.clone();
        async move {
            let out = support::run_cli("syncdata", &config, &["dlq", "list", "--json"], &[]).await;
            serde_json::from_slice::<Vec<Json>>(&out.stdout).unwrap_or_default()
        }
    };
    support::wait_until("three dead letters", Duration::from_secs(120), || async {
        list().await.len() == 3
    })
    .await;
    let letters = list().await;
    assert!(
        letters
            .iter()
            .all(|l| l["sqlstate"].as_str() == Some("22001")),
        "value too long, each: {letters:#?}"
    );
    let by_reference: Vec<&Json> = letters
        .iter()
        .filter(|l| !l["payload_in_stream"].is_null())
        .collect();
    assert_eq!(
        by_reference.len(),
        1,
        "only the one filling max_payload is filed by reference: {letters:#?}"
    );

    // Fix the cause, replay: all three apply whole.
    sqlx::raw_sql("alter table narrow alter column body type text")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let out = support::run_cli("syncdata", &s.config, &["dlq", "replay"], &[]).await;
    assert!(
        out.status.success(),
        "replay: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lengths: Vec<(i32, i32)> =
        sqlx::query_as("select id, length(body) from narrow order by id")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(
        lengths,
        [
            (1, near.len() as i32),
            (2, over.len() as i32),
            (3, pad as i32)
        ]
    );
    assert!(list().await.is_empty(), "replayed dead letters are removed");
    drop(consumer);
    drop(producer);
}

/// Documented in docs/production.md "Large records".
const RSS_BOUND: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_consumer_stays_under_its_memory_bound_with_8mb_records() {
    let s = setup(
        "large8",
        "create table big (id int primary key, body text)",
        &["big"],
        "",
    )
    .await;
    let n = 12;
    // Just under producer.max_record_bytes (8 MiB) per line.
    let body_len = 8 * 1024 * 1024 - 200;
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let c = (b'a' + i as u8) as char;
            insert("big", i, &c.to_string().repeat(body_len), 0x100 + i as u64)
        })
        .collect();
    write_archive(&s.archive, &lines);
    drop(lines);

    let producer = spawn(&s, "syncdata-producer", &["run"]);
    let consumer = spawn(&s, "syncdata", &["start"]);
    let db = s.db.clone();
    support::wait_until(
        "every 8 MB record applied",
        Duration::from_secs(300),
        || {
            let db = db.clone();
            async move {
                let (count, total): (i64, Option<i64>) =
                    sqlx::query_as("select count(*), sum(length(body))::bigint from big")
                        .fetch_one(&db.pool)
                        .await
                        .unwrap();
                count == n && total == Some(n * body_len as i64)
            }
        },
    )
    .await;
    let peak = consumer.peak_rss().expect("VmHWM of the consumer");
    eprintln!(
        "consumer peak RSS with {n} records of 8 MB: {} MB",
        peak / (1024 * 1024)
    );
    assert!(
        peak < RSS_BOUND,
        "peak RSS {} MB over the documented bound of {} MB",
        peak / (1024 * 1024),
        RSS_BOUND / (1024 * 1024)
    );
    drop(consumer);
    drop(producer);
}
