//! The pipeline against an in-memory sink that deduplicates by message id
//! like JetStream and injects failures on request.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::sync::{Arc, Mutex};

use super::*;
use crate::sink::Acked;

#[derive(Default)]
struct State {
    /// Stored messages in arrival order: (subject, id, payload).
    stored: Vec<(String, String, Vec<u8>)>,
    ids: HashSet<String>,
    /// Publish calls so far (the n-th call is numbered n).
    calls: u64,
    /// Calls that fail before anything is sent.
    fail_publish: HashSet<u64>,
    /// Calls whose message is stored but whose acknowledgement is lost.
    lose_ack: HashSet<u64>,
    /// Publishes fail as "stream missing" until `ensure_stream` is called.
    stream_missing: bool,
    ensured: u64,
    /// Acknowledgements never arrive.
    hold_acks: bool,
    max_payload: usize,
}

#[derive(Clone)]
struct MemorySink(Arc<Mutex<State>>);

impl MemorySink {
    fn new() -> Self {
        MemorySink(Arc::new(Mutex::new(State {
            max_payload: 1024 * 1024,
            ..State::default()
        })))
    }

    fn with(self, f: impl FnOnce(&mut State)) -> Self {
        f(&mut self.0.lock().unwrap());
        self
    }

    fn stored(&self) -> Vec<(String, String, Vec<u8>)> {
        self.0.lock().unwrap().stored.clone()
    }

    fn calls(&self) -> u64 {
        self.0.lock().unwrap().calls
    }
}

impl Sink for MemorySink {
    fn max_payload(&self) -> usize {
        self.0.lock().unwrap().max_payload
    }

    async fn ensure_stream(&self) -> Result<(), SinkError> {
        let mut s = self.0.lock().unwrap();
        s.stream_missing = false;
        s.ensured += 1;
        Ok(())
    }

    async fn publish(
        &self,
        subject: String,
        msg_id: String,
        payload: bytes::Bytes,
    ) -> Result<crate::sink::AckFuture, SinkError> {
        let mut s = self.0.lock().unwrap();
        s.calls += 1;
        let n = s.calls;
        if s.stream_missing {
            return Err(SinkError::StreamMissing("no responders".into()));
        }
        if s.fail_publish.contains(&n) {
            return Err(SinkError::Failed(format!("injected failure of call {n}")));
        }
        let duplicate = !s.ids.insert(msg_id.clone());
        if !duplicate {
            s.stored.push((subject, msg_id, payload.to_vec()));
        }
        if s.hold_acks {
            return Ok(future::pending().boxed());
        }
        if s.lose_ack.contains(&n) {
            return Ok(future::ready(Err(SinkError::Failed("ack timed out".into()))).boxed());
        }
        Ok(future::ready(Ok(Acked { duplicate })).boxed())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    archive: PathBuf,
    settings: Settings,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        fs::create_dir(&archive).unwrap();
        let settings = Settings {
            archive_dir: archive.clone(),
            state_dir: archive.join(".syncdata"),
            subject_prefix: "syncdata.changes".into(),
            max_in_flight: 4,
            max_record_bytes: 1024,
            rescan: Duration::from_millis(50),
            checkpoint_every: Duration::from_millis(20),
            drain_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_millis(20),
            chunk_records: 1,
            chunk_bytes: 1 << 20,
        };
        Fixture {
            _dir: dir,
            archive,
            settings,
        }
    }

    fn write(&self, name: &str, body: &str) {
        fs::write(self.archive.join(name), body).unwrap();
    }

    fn append(&self, name: &str, body: &str) {
        fs::OpenOptions::new()
            .append(true)
            .open(self.archive.join(name))
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        CheckpointStore::new(&self.settings.state_dir)
            .load()
            .unwrap()
    }

    fn quarantine(&self) -> quarantine::Summary {
        quarantine::summary(&self.settings.state_dir, 100).unwrap()
    }

    fn start(&self, sink: &MemorySink) -> Running {
        let token = CancellationToken::new();
        let publisher = Publisher::new(sink.clone(), self.settings.clone()).unwrap();
        let handle = tokio::spawn(publisher.run(token.clone()));
        Running { token, handle }
    }
}

struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), PublisherError>>,
}

impl Running {
    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("stops in time")
            .unwrap()
            .unwrap();
    }
}

/// Waits for a condition, failing the test after a few seconds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn rec(table: &str, id: u32, seq: Option<u32>) -> String {
    let seq = seq.map(|s| format!(r#","seq":{s}"#)).unwrap_or_default();
    format!(r#"{{"table":"{table}","op":"INSERT","data":{{"id":{id}}},"lsn":"0/{id:X}"{seq}}}"#)
        + "\n"
}

fn ids_of(stored: &[(String, String, Vec<u8>)]) -> Vec<u64> {
    stored
        .iter()
        .map(|(_, _, p)| {
            let r = Record::parse(p).unwrap();
            r.data.unwrap()["id"].raw().parse().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn publishes_every_record_quarantines_bad_lines_and_checkpoints() {
    let f = Fixture::new();
    let a = [
        rec("users", 1, Some(1)),
        "   \n".into(),
        "{not json\n".into(),
        rec("users", 2, Some(2)),
        rec("orders", 3, Some(1)),
    ]
    .concat();
    f.write("a.jsonl", &a);
    f.write("a.jsonl.tmp", &rec("users", 99, Some(1)));
    f.write(".hidden", &rec("users", 98, Some(1)));
    let b = [rec("users", 4, None), rec("users", 5, None)].concat();
    f.write("b.jsonl", &b);
    let sink = MemorySink::new();
    let run = f.start(&sink);
    until("5 records", || sink.stored().len() == 5).await;
    until("the checkpoint", || {
        f.checkpoint()
            .is_some_and(|c| c.file == "b.jsonl" && c.line == 2)
    })
    .await;
    run.stop().await;

    let stored = sink.stored();
    assert_eq!(ids_of(&stored), [1, 2, 3, 4, 5]);
    assert_eq!(stored[0].0, "syncdata.changes.public.users");
    assert_eq!(stored[2].0, "syncdata.changes.public.orders");
    assert!(stored[0].1.starts_with("0/1:1:"), "{}", stored[0].1);
    // Records without seq get their line number, and an id naming the file.
    let four = Record::parse(&stored[3].2).unwrap();
    assert_eq!(four.seq, Some(1));
    let expected = message_id("public", "users", four.version(1), Some("b.jsonl:1"));
    assert_eq!(stored[3].1, expected);
    assert_eq!(Record::parse(&stored[4].2).unwrap().seq, Some(2));

    assert_eq!(
        f.checkpoint(),
        Some(Checkpoint {
            file: "b.jsonl".into(),
            offset: b.len() as u64,
            line: 2
        })
    );
    let q = f.quarantine();
    assert_eq!(q.count, 1);
    let e = &q.recent[0];
    assert_eq!((e.file.as_str(), e.line), ("a.jsonl", 3));
    assert_eq!(e.offset, (rec("users", 1, Some(1)).len() + 4) as u64);
    assert_eq!(e.raw, "{not json");
    assert!(e.reason.contains("not a JSON record"), "{}", e.reason);
}

#[tokio::test]
async fn failures_never_skip_a_record() {
    let f = Fixture::new();
    let body: String = (1..=30).map(|i| rec("t", i, Some(i))).collect();
    f.write("a.jsonl", &body);
    let sink = MemorySink::new().with(|s| {
        s.stream_missing = true;
        s.fail_publish = [3, 9, 10, 20].into();
        s.lose_ack = [5, 14, 33].into();
    });
    let run = f.start(&sink);
    until("all records", || sink.stored().len() == 30).await;
    until("the checkpoint", || {
        f.checkpoint().is_some_and(|c| c.line == 30)
    })
    .await;
    run.stop().await;
    // Each record exactly once (the sink deduplicates like the server), in
    // order, and resent records were recognized as duplicates.
    assert_eq!(ids_of(&sink.stored()), (1..=30).collect::<Vec<_>>());
    assert!(sink.calls() > 30);
    assert_eq!(sink.0.lock().unwrap().ensured, 1);
    assert_eq!(
        f.checkpoint(),
        Some(Checkpoint {
            file: "a.jsonl".into(),
            offset: body.len() as u64,
            line: 30
        })
    );
}

#[tokio::test]
async fn the_checkpoint_waits_for_acknowledgements() {
    let f = Fixture::new();
    f.write(
        "a.jsonl",
        &[rec("t", 1, Some(1)), rec("t", 2, Some(2))].concat(),
    );
    let mut settings_short = f.settings.clone();
    settings_short.drain_timeout = Duration::from_millis(100);
    let sink = MemorySink::new().with(|s| s.hold_acks = true);
    let token = CancellationToken::new();
    let publisher = Publisher::new(sink.clone(), settings_short).unwrap();
    let handle = tokio::spawn(publisher.run(token.clone()));
    until("both sent", || sink.stored().len() == 2).await;
    token.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(f.checkpoint(), None, "nothing was acknowledged");

    // The next run sends them again and completes.
    let sink = MemorySink::new();
    let run = f.start(&sink);
    until("both records", || sink.stored().len() == 2).await;
    until("the checkpoint", || {
        f.checkpoint().is_some_and(|c| c.line == 2)
    })
    .await;
    run.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_at_the_checkpoint_and_quarantines_once() {
    let f = Fixture::new();
    f.write("a.jsonl", &[rec("t", 1, Some(1)), "bad\n".into()].concat());
    let sink = MemorySink::new();
    let run = f.start(&sink);
    until("the checkpoint", || {
        f.checkpoint().is_some_and(|c| c.line == 2)
    })
    .await;
    run.stop().await;
    assert_eq!(sink.calls(), 1);

    f.append("a.jsonl", &rec("t", 2, Some(2)));
    let sink = MemorySink::new();
    let run = f.start(&sink);
    until("the checkpoint", || {
        f.checkpoint().is_some_and(|c| c.line == 3)
    })
    .await;
    run.stop().await;
    assert_eq!(
        ids_of(&sink.stored()),
        [2],
        "only what follows the checkpoint"
    );

    // Reading everything again (a lost checkpoint) must not quarantine twice.
    CheckpointStore::new(&f.settings.state_dir)
        .save(&Checkpoint::start_of("a.jsonl"))
        .unwrap();
    let sink = MemorySink::new();
    let run = f.start(&sink);
    until("the checkpoint", || {
        f.checkpoint().is_some_and(|c| c.line == 3)
    })
    .await;
    run.stop().await;
    assert_eq!(ids_of(&sink.stored()), [1, 2]);
    assert_eq!(f.quarantine().count, 1);
}

#[tokio::test]
async fn tails_a_growing_file_and_takes_its_fragment_once_a_later_file_exists() {
    let f = Fixture::new();
    let first = rec("t", 1, Some(1));
    let second = rec("t", 2, Some(2));
    f.write("a.jsonl", &format!("{first}{}", second.trim_end()));
    let sink = MemorySink::new();
    let run = f.start(&sink);
    until("the first record", || sink.stored().len() == 1).await;
    until("the checkpoint", || {
        f.checkpoint().is_some_and(|c| c.line == 1)
    })
    .await;
    // The fragment is held back while the file may still grow.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(sink.stored().len(), 1);
    // The writer appends more to a.
    f.append("a.jsonl", "\n");
    until("the completed line", || sink.stored().len() == 2).await;
    f.append("a.jsonl", rec("t", 3, Some(3)).trim_end());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(sink.stored().len(), 2);
    // A later file: a is finished, its fragment is its last line.
    f.write("b.jsonl", "");
    until("the fragment", || sink.stored().len() == 3).await;
    until("the move to b", || {
        f.checkpoint()
            .is_some_and(|c| c == Checkpoint::start_of("b.jsonl"))
    })
    .await;
    f.append("b.jsonl", &rec("t", 4, Some(1)));
    until("b's record", || sink.stored().len() == 4).await;
    run.stop().await;
    assert_eq!(ids_of(&sink.stored()), [1, 2, 3, 4]);
    assert_eq!(f.checkpoint().unwrap().line, 1);
}

#[tokio::test]
async fn over_long_lines_and_oversized_payloads_are_quarantined() {
    let f = Fixture::new();
    let long = format!(
        r#"{{"table":"t","op":"INSERT","data":{{"id":2,"pad":"{}"}},"lsn":"0/2","seq":2}}"#,
        "x".repeat(5000)
    );
    let big = format!(
        r#"{{"table":"t","op":"INSERT","data":{{"id":3,"pad":"{}"}},"lsn":"0/3","seq":3}}"#,
        "y".repeat(600)
    );
    f.write(
        "a.jsonl",
        &[
            rec("t", 1, Some(1)),
            long + "\n",
            big + "\n",
            rec("t", 4, Some(4)),
        ]
        .concat(),
    );
    let sink = MemorySink::new().with(|s| s.max_payload = 500);
    let run = f.start(&sink);
    until("the checkpoint", || {
        f.checkpoint().is_some_and(|c| c.line == 4)
    })
    .await;
    run.stop().await;
    assert_eq!(ids_of(&sink.stored()), [1, 4]);
    let q = f.quarantine();
    let reasons: HashMap<u64, &str> = q
        .recent
        .iter()
        .map(|e| (e.line, e.reason.as_str()))
        .collect();
    assert!(reasons[&2].contains("max_record_bytes"), "{}", reasons[&2]);
    assert!(reasons[&3].contains("max_payload"), "{}", reasons[&3]);
    assert!(q.recent[0].raw.len() <= crate::tail::RAW_PREFIX_MAX);
}

#[tokio::test]
async fn a_truncated_file_stops_the_producer() {
    let f = Fixture::new();
    f.write("a.jsonl", &rec("t", 1, Some(1)));
    fs::create_dir_all(&f.settings.state_dir).unwrap();
    CheckpointStore::new(&f.settings.state_dir)
        .save(&Checkpoint {
            file: "a.jsonl".into(),
            offset: 10_000,
            line: 50,
        })
        .unwrap();
    let publisher = Publisher::new(MemorySink::new(), f.settings.clone()).unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        publisher.run(CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn own_reads_do_not_wake_the_producer() {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
    let ev = |kind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
    assert!(!wakes(&ev(
        EventKind::Access(AccessKind::Open(AccessMode::Read)),
        "/a/x.jsonl"
    )));
    assert!(wakes(&ev(
        EventKind::Access(AccessKind::Close(AccessMode::Write)),
        "/a/x.jsonl"
    )));
    assert!(wakes(&ev(EventKind::Modify(ModifyKind::Any), "/a/x.jsonl")));
    assert!(wakes(&ev(
        EventKind::Create(CreateKind::File),
        "/a/y.jsonl"
    )));
    assert!(!wakes(&ev(
        EventKind::Create(CreateKind::File),
        "/a/y.jsonl.tmp"
    )));
    assert!(!wakes(&ev(
        EventKind::Modify(ModifyKind::Any),
        "/a/.syncdata"
    )));
}

/// The records a chunk payload holds, decoded as a consumer decodes them.
fn chunk_records(payload: &[u8]) -> Vec<Record> {
    syncdata_core::chunk::split(payload)
        .unwrap()
        .into_iter()
        .map(|r| Record::parse(&payload[r]).unwrap())
        .collect()
}

#[tokio::test]
async fn forwarded_lines_decode_to_the_records_the_serializing_path_publishes() {
    use syncdata_testkit::workload::{self, WorkloadSpec};
    // The demo workload (inserts, full, partial and key-changing UPDATEs,
    // deletes, a TRUNCATE, large texts, jsonb, arrays, 30-digit numerics)
    // as the archive holds it, plus odd lines: escapes, huge numbers, no
    // `seq`, no `schema`, spaces, an unknown field, an escaped field name.
    let mut lines: Vec<String> = workload::generate(&WorkloadSpec::full(7, 3000))
        .iter()
        .map(|r| String::from_utf8(r.to_json()).unwrap())
        .collect();
    let odd = [
        r#"{"schema":"public","table":"odd","op":"INSERT","data":{"id":1,"name":"J\u00f6rg \ud83d\ude00 \"q\" \\ \/","n":123456789012345678901234567890.123456789,"f":-1.5E+300},"lsn":"0/10","seq":0}"#,
        r#"{"table":"odd","op":"UPDATE","data":{"id":2,"name":"x"},"old_keys":{"id":1},"lsn":"0/11","seq":0,"ts":"2026-02-05T10:31:00Z"}"#,
        r#" { "table" : "odd" , "op" : "DELETE" , "old_keys" : { "id" : 2 } , "lsn" : "0/12" , "seq" : 1 } "#,
        r#"{"table":"odd","op":"TRUNCATE","lsn":"0/13","seq":0}"#,
        r#"{"table":"odd","op":"INSERT","data":{"id":3,"n\u0061me":"y"},"lsn":"0/14","seq":0}"#,
        r#"{"table":"odd","op":"INSERT","data":{"id":4},"lsn":"0/15"}"#,
        r#"{"table":"odd","op":"INSERT","data":{"id":5},"lsn":"0/16","seq":null}"#,
        r#"{"table":"odd","op":"INSERT","data":{"id":6},"lsn":"0/17","seq":0,"xid":7}"#,
        r#"{"t\u0061ble":"odd","op":"INSERT","data":{"id":7},"lsn":"0/18","seq":0}"#,
        r#"{"table":"odd","op":"INSERT","data":{"id":8,"a":{"table":"{}"}},"lsn":"0/19","seq":0,"snapshot":false}"#,
    ];
    let forwardable = [
        true, true, true, true, true, false, false, false, false, true,
    ];
    for (line, expected) in odd.iter().zip(forwardable) {
        let (_, forward) = Record::parse_forwardable(line.as_bytes()).unwrap();
        assert_eq!(forward, expected, "{line}");
    }
    lines.extend(odd.iter().map(|l| l.to_string()));
    // What the serializing path publishes for each line: the record with
    // its line number as `seq` when it has none, serialized again.
    let expected: Vec<Record> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut r = crate::schema::parse_line(l.as_bytes()).unwrap().unwrap();
            r.seq.get_or_insert(i as u64 + 1);
            Record::parse(&r.to_json()).unwrap()
        })
        .collect();
    assert!(lines
        .iter()
        .take(3000)
        .all(|l| Record::parse_forwardable(l.as_bytes()).unwrap().1));

    let mut f = Fixture::new();
    f.settings.max_record_bytes = 1 << 20;
    f.settings.chunk_records = 100;
    f.settings.max_in_flight = 64;
    f.write("0001.jsonl", &(lines.join("\n") + "\n"));
    let sink = MemorySink::new();
    let running = f.start(&sink);
    let total = lines.len();
    until("every record", || {
        sink.stored()
            .iter()
            .map(|(_, _, p)| chunk_records(p).len())
            .sum::<usize>()
            >= total
    })
    .await;
    running.stop().await;
    // Chunks are per table: compare each table's records in archive order.
    let mut published: HashMap<(String, String), Vec<Record>> = HashMap::new();
    for (_, _, payload) in sink.stored() {
        for r in chunk_records(&payload) {
            published
                .entry((r.schema.clone(), r.table.clone()))
                .or_default()
                .push(r);
        }
    }
    let mut want: HashMap<(String, String), Vec<Record>> = HashMap::new();
    for r in expected {
        want.entry((r.schema.clone(), r.table.clone()))
            .or_default()
            .push(r);
    }
    assert_eq!(published.len(), want.len());
    for (table, records) in &want {
        assert_eq!(published[table].len(), records.len(), "{table:?}");
        assert!(published[table] == *records, "{table:?} differs");
    }
}
