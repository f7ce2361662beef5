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

/// Messages in the stream (a chunk counts once).
async fn messages(names: &TestNames) -> u64 {
    let client = support::nats_connect(&support::nats_url()).await;
    let js = jetstream::new(client);
    match js.get_stream(&names.stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Records in the stream (a chunk counts its records).
async fn count(names: &TestNames) -> u64 {
    support::stream_record_count(&support::nats_url(), &names.stream).await
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
        // Chunks of up to 1,000 records: a few thousand records.
        || async { messages(&names).await >= 4 },
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
        let last = support::payload_records(&m.payload).pop().unwrap();
        let r = syncdata_core::record::Record::parse(&last).unwrap();
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

/// `syncdata-producer status --json`, parsed.
async fn producer_status(dir: &Path, config: &Path) -> serde_json::Value {
    let mut status = Proc::spawn("syncdata-producer", &["status", "--json"], config, &[], dir);
    status
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("status ends");
    let out = status.log();
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("status prints no JSON: {out}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn quarantine_reasons(v: &serde_json::Value) -> Vec<String> {
    v["recent_quarantine"]
        .as_array()
        .unwrap_or_else(|| panic!("no recent_quarantine in {v}"))
        .iter()
        .map(|e| e.to_string())
        .collect()
}

/// Issue 21: records that once crashed a process (a lone surrogate escape,
/// which panicked the first decode of the value) or stalled it (160,000
/// columns) are quarantined with a clear reason; the records around them
/// are published and the producer keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_quarantined_and_the_producer_never_panics() {
    let db = support::fresh_database("prodhostile").await;
    let names = TestNames::new("prodhostile");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let good = |i: u32| {
        format!(
            r#"{{"table":"t","op":"INSERT","data":{{"id":{i}}},"lsn":"0/{:X}","seq":0}}"#,
            100 + i
        )
    };
    let wide = format!(
        r#"{{"table":"t","op":"INSERT","lsn":"0/7","data":{{{}}}}}"#,
        (0..160_000)
            .map(|i| format!(r#""c{i}":1"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let bad: Vec<(String, &str)> = vec![
        (
            r#"{"table":"t","op":"INSERT","lsn":"0/1","data":{"id":"\ud800"}}"#.to_owned(),
            r#"value of column \"id\" holds a lone UTF-16 surrogate escape \\ud800"#,
        ),
        (
            r#"{"table":"t","op":"DELETE","lsn":"0/2","old_keys":{"id":"x\udc00"}}"#.to_owned(),
            "lone UTF-16 surrogate escape \\\\udc00",
        ),
        (
            wide,
            "an image of more than 1600 columns, more than a PostgreSQL table can have",
        ),
    ];
    let mut content = String::new();
    for (i, (line, _)) in bad.iter().enumerate() {
        content.push_str(&good(i as u32 * 2));
        content.push('\n');
        content.push_str(line);
        content.push('\n');
        content.push_str(&good(i as u32 * 2 + 1));
        content.push('\n');
    }
    let expected_good = 2 * bad.len() as u64;
    std::fs::write(archive.join("changes-000001.jsonl"), content).unwrap();
    let config = config_for(dir.path(), &db, &names, &archive);
    let mut p = producer(dir.path(), &config);
    support::wait_until(
        "good records published",
        Duration::from_secs(60),
        || async { count(&names).await >= expected_good },
    )
    .await;
    let v = producer_status(dir.path(), &config).await;
    assert_eq!(v["quarantined"].as_u64(), Some(bad.len() as u64), "{v}");
    let reasons = quarantine_reasons(&v);
    for (_, why) in &bad {
        assert!(
            reasons.iter().any(|r| r.contains(why)),
            "no quarantine reason mentions {why:?}: {reasons:#?}"
        );
    }
    assert_eq!(count(&names).await, expected_good);
    assert!(p.is_running(), "{}", p.log());
    assert!(!p.log().contains("panicked"), "{}", p.log());
}

/// Issue 21: after an over-long line was skipped, the rest of the read
/// chunk was returned without a length check: a 50,000-byte line after a
/// 2,000-byte one passed a 1,024-byte limit. Both are quarantined, in one
/// run, and when the producer resumes from its checkpoint between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_over_long_line_is_quarantined_whatever_the_read_alignment() {
    let db = support::fresh_database("prodlong").await;
    let names = TestNames::new("prodlong");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let good = |i: u32| {
        format!(
            r#"{{"table":"t","op":"INSERT","data":{{"id":{i}}},"lsn":"0/{:X}","seq":0}}"#,
            100 + i
        )
    };
    let config = support::write_config(
        dir.path(),
        &db,
        &names,
        &support::nats_url(),
        &archive,
        "[producer]\nmax_in_flight = 256\nrescan_ms = 200\nmax_record_bytes = 1024\n",
    );
    let x = "x".repeat(2000);
    let y = "y".repeat(50_000);
    // Resume twin: the producer stops after the first long line and finds
    // the second one on its next start.
    let first = archive.join("changes-000001.jsonl");
    std::fs::write(&first, format!("{}\n{x}\n", good(1))).unwrap();
    let mut p = producer(dir.path(), &config);
    support::wait_until("first record", Duration::from_secs(60), || async {
        count(&names).await >= 1
    })
    .await;
    support::wait_until(
        "the first long line quarantined",
        Duration::from_secs(30),
        || async { producer_status(dir.path(), &config).await["quarantined"].as_u64() == Some(1) },
    )
    .await;
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(30)).await.expect("stops");
    assert!(status.success(), "{}", p.log());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&first)
        .unwrap();
    f.write_all(format!("{y}\n{}\n", good(2)).as_bytes())
        .unwrap();
    drop(f);
    // One run: both long lines in one go, in a later file.
    std::fs::write(
        archive.join("changes-000002.jsonl"),
        format!("{x}\n{y}\n{}\n", good(3)),
    )
    .unwrap();
    let p = producer(dir.path(), &config);
    support::wait_until("every good record", Duration::from_secs(60), || async {
        count(&names).await >= 3
    })
    .await;
    support::wait_until(
        "every long line quarantined",
        Duration::from_secs(30),
        || async { producer_status(dir.path(), &config).await["quarantined"].as_u64() == Some(4) },
    )
    .await;
    let reasons = quarantine_reasons(&producer_status(dir.path(), &config).await);
    for (file, len) in [
        ("changes-000001.jsonl", 2000),
        ("changes-000001.jsonl", 50_000),
        ("changes-000002.jsonl", 2000),
        ("changes-000002.jsonl", 50_000),
    ] {
        let why = format!("line of {len} bytes is longer than producer.max_record_bytes (1024)");
        assert!(
            reasons.iter().any(|r| r.contains(file) && r.contains(&why)),
            "no quarantine entry for {file}: {why}: {reasons:#?}"
        );
    }
    assert_eq!(
        count(&names).await,
        3,
        "nothing over the limit was published"
    );
    drop(p);
}
