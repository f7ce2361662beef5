//! `syncdata-producer` against a real nats-server: exactly-once into the
//! stream across a SIGKILL, files still being written, hostile table names,
//! and quarantine of lines that are not records.

use syncdata_testkit::harness as support;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use support::{Proc, TestNames};
use syncdata_core::subject::table_subject;
use syncdata_testkit::workload::{self, WorkloadSpec};

fn producer(dir: &Path, config: &Path) -> Proc {
    Proc::spawn(
        "syncdata-producer",
        &["run"],
        config,
        &[("RUST_LOG", "info")],
        dir,
    )
}

async fn count(names: &TestNames) -> u64 {
    let client = support::nats_connect(&support::nats_url()).await;
    let js = jetstream::new(client);
    match js.get_stream(&names.stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

fn config_for(
    dir: &Path,
    db: &support::TestDb,
    names: &TestNames,
    archive: &Path,
) -> std::path::PathBuf {
    support::write_config(
        dir,
        db,
        names,
        &support::nats_url(),
        archive,
        "[producer]\nmax_in_flight = 256\nrescan_ms = 200\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_sigkilled_mid_file_publishes_every_record_exactly_once() {
    let records = workload::generate(&WorkloadSpec {
        seed: 5,
        changes: 30_000,
        truncate: false,
        partial_updates: true,
        key_changes: true,
    });
    let db = support::fresh_database("prodkill").await;
    let names = TestNames::new("prodkill");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    // Most of the history in files of 5,000 lines; the rest appended to a
    // last file while the producer runs.
    let (early, late) = records.split_at(24_000);
    workload::write_archive(&archive, early, 5_000).unwrap();
    let config = config_for(dir.path(), &db, &names, &archive);

    let mut p = producer(dir.path(), &config);
    support::wait_until(
        "the producer is mid-stream",
        Duration::from_secs(60),
        || async { count(&names).await >= 6_000 },
    )
    .await;
    p.sigkill();
    let at_kill = count(&names).await;
    assert!(
        at_kill < early.len() as u64,
        "killed mid-stream ({at_kill})"
    );

    let p2 = producer(dir.path(), &config);
    let tail = archive.join(workload::archive_file_name(99));
    let mut f = std::fs::File::create(&tail).unwrap();
    for chunk in late.chunks(1_500) {
        for r in chunk {
            f.write_all(&r.to_json()).unwrap();
            f.write_all(b"\n").unwrap();
        }
        f.flush().unwrap();
    }
    let total = records.len() as u64;
    support::wait_until(
        "all records in the stream",
        Duration::from_secs(120),
        || async { count(&names).await >= total },
    )
    .await;
    // Give a duplicate every chance to show up before checking the count.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&names).await,
        total,
        "every record exactly once:\n{}",
        p2.log()
    );

    // The stream holds each record once: no (lsn, seq, table) twice.
    let messages = support::stream_messages(&support::nats_url(), &names.stream).await;
    let mut seen = std::collections::HashSet::new();
    for (_, payload) in &messages {
        let r = syncdata_core::record::Record::parse(payload).unwrap();
        assert!(
            seen.insert((r.table.clone(), r.lsn, r.seq)),
            "duplicate {:?}",
            (r.table, r.lsn, r.seq)
        );
    }
    assert_eq!(messages.len() as u64, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_table_names_stay_inside_their_own_subject() {
    let db = support::fresh_database("prodhostile").await;
    let names = TestNames::new("prodhostile");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let hostile = [
        "users\"; drop table x; --",
        "a.b",
        "has space",
        "*",
        ">",
        "x".repeat(63).as_str(),
    ]
    .map(str::to_owned);
    let mut lines = String::new();
    for (i, t) in hostile.iter().enumerate() {
        let rec = serde_json::json!({"table": t, "op": "INSERT", "data": {"id": i}, "lsn": "0/10", "seq": i});
        lines.push_str(&rec.to_string());
        lines.push('\n');
    }
    // Over PostgreSQL's 63-byte limit: quarantined, not published.
    let long = "y".repeat(200);
    lines.push_str(&format!(
        "{{\"table\":\"{long}\",\"op\":\"INSERT\",\"data\":{{\"id\":1}},\"lsn\":\"0/11\"}}\n"
    ));
    std::fs::write(archive.join("changes-000001.jsonl"), lines).unwrap();
    let config = config_for(dir.path(), &db, &names, &archive);
    let p = producer(dir.path(), &config);
    support::wait_until(
        "hostile records published",
        Duration::from_secs(30),
        || async { count(&names).await >= hostile.len() as u64 },
    )
    .await;

    let client = support::nats_connect(&support::nats_url()).await;
    let js = jetstream::new(client);
    let stream = js.get_stream(&names.stream).await.unwrap();
    for t in &hostile {
        let subject = table_subject(&names.subject_prefix, "public", t);
        // Exactly one token after the prefix's schema token: no dots, no wildcards.
        let table_token = subject.rsplit('.').next().unwrap();
        assert!(!table_token.contains(['*', '>', ' ', '"']), "{subject}");
        let m = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap_or_else(|e| panic!("no message on {subject}: {e}"));
        let r = syncdata_core::record::Record::parse(&m.payload).unwrap();
        assert_eq!(&r.table, t);
    }
    support::wait_until(
        "the long name is quarantined",
        Duration::from_secs(30),
        || async {
            let status = Proc::spawn(
                "syncdata-producer",
                &["status", "--json"],
                &config,
                &[],
                dir.path(),
            );
            let mut status = status;
            status.wait_exit(Duration::from_secs(20)).await;
            status.log().contains("63-byte limit")
        },
    )
    .await;
    assert_eq!(count(&names).await, hostile.len() as u64);
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_quarantined_and_good_ones_around_them_published() {
    let db = support::fresh_database("prodquar").await;
    let names = TestNames::new("prodquar");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let good = |i: u32| {
        format!(
            r#"{{"table":"t","op":"INSERT","data":{{"id":{i}}},"lsn":"0/{:X}","seq":0}}"#,
            100 + i
        )
    };
    let nested = format!(
        r#"{{"table":"t","op":"INSERT","data":{{"j":{}{}}},"lsn":"0/5"}}"#,
        "[".repeat(500),
        "]".repeat(500)
    );
    let big = format!(
        r#"{{"table":"t","op":"INSERT","data":{{"id":1,"b":"{}"}},"lsn":"0/6"}}"#,
        "z".repeat(9 * 1024 * 1024)
    );
    let bad: Vec<(String, &str)> = vec![
        (
            r#"{"table":"t","op":"INSERT","data":{"id":1}"#.to_owned(),
            "EOF",
        ),
        ("not json at all".to_owned(), "expected"),
        (
            r#"{"table":"t","op":"UPSERT","data":{"id":1},"lsn":"0/1"}"#.to_owned(),
            "unknown variant",
        ),
        (
            r#"{"table":"t","op":"INSERT","data":{"id":1}}"#.to_owned(),
            "missing field `lsn`",
        ),
        (
            r#"{"table":"t","op":"INSERT","data":{"id":1},"lsn":"16/B/3"}"#.to_owned(),
            "malformed lsn",
        ),
        (
            r#"{"op":"INSERT","data":{"id":1},"lsn":"0/1"}"#.to_owned(),
            "missing field `table`",
        ),
        (nested, "nested deeper"),
        (big, "longer than"),
    ];
    let mut content = String::new();
    let mut expected_good = 0;
    for (i, (line, _)) in bad.iter().enumerate() {
        content.push_str(&good(i as u32 * 2));
        content.push('\n');
        content.push_str(line);
        content.push('\n');
        content.push_str(&good(i as u32 * 2 + 1));
        content.push('\n');
        expected_good += 2;
    }
    std::fs::write(archive.join("changes-000001.jsonl"), content).unwrap();
    let config = config_for(dir.path(), &db, &names, &archive);
    let p = producer(dir.path(), &config);
    support::wait_until(
        "good records published",
        Duration::from_secs(60),
        || async { count(&names).await >= expected_good },
    )
    .await;
    let mut status = Proc::spawn(
        "syncdata-producer",
        &["status", "--json"],
        &config,
        &[],
        dir.path(),
    );
    status.wait_exit(Duration::from_secs(20)).await;
    let out = status.log();
    let json_start = out.find('{').expect("status prints JSON");
    let v: serde_json::Value =
        serde_json::from_str(&out[json_start..]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["quarantined"].as_u64(), Some(bad.len() as u64), "{v}");
    let reasons: Vec<String> = v["recent_quarantine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.to_string())
        .collect();
    for (_, why) in &bad {
        assert!(
            reasons.iter().any(|r| r.contains(why)),
            "no quarantine reason mentions {why:?}: {reasons:#?}"
        );
    }
    // Quarantine entries name the file and line of each bad record.
    assert!(
        reasons.iter().all(|r| r.contains("changes-000001.jsonl")),
        "{reasons:#?}"
    );
    assert_eq!(count(&names).await, expected_good);
    drop(p);
}
