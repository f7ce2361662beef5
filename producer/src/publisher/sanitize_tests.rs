//! Halting and resuming tables under sanitization rules, against an
//! in-memory sink that deduplicates by message id like JetStream.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::sync::{Arc, Mutex};

use super::*;
use crate::sanitize::SecretKey;
use crate::sink::Acked;

#[derive(Default)]
struct Stored {
    /// (subject, payload) in arrival order, duplicates dropped.
    messages: Vec<(String, Vec<u8>)>,
    ids: HashSet<String>,
    publishes: u64,
}

#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Stored>>);

impl Sink for Memory {
    fn max_payload(&self) -> usize {
        1024 * 1024
    }

    async fn ensure_stream(&self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn publish(
        &self,
        subject: String,
        msg_id: String,
        payload: bytes::Bytes,
    ) -> Result<crate::sink::AckFuture, SinkError> {
        let mut s = self.0.lock().unwrap();
        s.publishes += 1;
        let duplicate = !s.ids.insert(msg_id);
        if !duplicate {
            s.messages.push((subject, payload.to_vec()));
        }
        Ok(future::ready(Ok(Acked { duplicate })).boxed())
    }
}

impl Memory {
    /// The `id` column of every stored record of `table`, in order.
    fn ids(&self, table: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .messages
            .iter()
            .map(|(_, p)| Record::parse(p).unwrap())
            .filter(|r| r.table == table)
            .map(|r| r.data.unwrap()["id"].raw().to_owned())
            .collect()
    }

    fn payloads(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .messages
            .iter()
            .map(|(_, p)| String::from_utf8(p.clone()).unwrap())
            .collect()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    archive: PathBuf,
    rules: PathBuf,
    settings: Settings,
}

impl Fixture {
    fn new(rules: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        fs::create_dir(&archive).unwrap();
        let rules_path = dir.path().join("rules.toml");
        fs::write(&rules_path, rules).unwrap();
        let settings = Settings {
            archive_dir: archive.clone(),
            state_dir: archive.join(".syncdata"),
            subject_prefix: "syncdata.changes".into(),
            max_in_flight: 4,
            max_record_bytes: 4096,
            rescan: Duration::from_millis(30),
            checkpoint_every: Duration::from_millis(20),
            drain_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_millis(20),
            chunk_records: 1,
            chunk_bytes: 1 << 20,
        };
        Fixture {
            _dir: dir,
            archive,
            rules: rules_path,
            settings,
        }
    }

    fn append(&self, name: &str, lines: &[String]) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.archive.join(name))
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    fn set_rules(&self, rules: &str) {
        fs::write(&self.rules, rules).unwrap();
    }

    fn state(&self) -> CheckpointState {
        CheckpointStore::new(&self.settings.state_dir)
            .load_state()
            .unwrap()
            .expect("a checkpoint")
    }

    fn start(
        &self,
        sink: &Memory,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), PublisherError>>,
    ) {
        let key = SecretKey::new(&[b'k'; 32], "test").unwrap();
        let sanitizer = Sanitizer::load(&self.rules, Some(key), Duration::from_millis(20)).unwrap();
        let publisher = Publisher::new(sink.clone(), self.settings.clone())
            .unwrap()
            .with_sanitizer(sanitizer);
        let token = CancellationToken::new();
        let handle = tokio::spawn(publisher.run(token.clone()));
        (token, handle)
    }
}

async fn stop(
    (token, handle): (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), PublisherError>>,
    ),
) {
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("stops in time")
        .unwrap()
        .unwrap();
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A record of `table` with key `id` and extra columns.
fn rec(table: &str, id: u32, extra: &str) -> String {
    format!(
        r#"{{"table":"{table}","op":"INSERT","data":{{"id":{id}{extra}}},"lsn":"0/{:X}","seq":0}}"#,
        0x100 + id
    )
}

const TWO_TABLES: &str = "[tables.a.columns]\nid = \"keep\"\n[tables.b.columns]\nid = \"keep\"\n";

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_new_column_halts_only_its_table_across_a_restart_until_its_rule_arrives() {
    let f = Fixture::new(TWO_TABLES);
    f.append(
        "0001.jsonl",
        &[
            rec("a", 1, ""),
            rec("b", 1, ""),
            rec("a", 2, r#","ssn":"078-05-1120""#),
            rec("b", 2, ""),
            rec("a", 3, ""),
            rec("b", 3, ""),
        ],
    );
    let sink = Memory::default();
    let running = f.start(&sink);
    until("b published past the halt", || sink.ids("b").len() == 3).await;
    assert_eq!(sink.ids("a"), strs(&["1"]));
    until("the halt is in the checkpoint", || {
        !f.state().halted.is_empty()
    })
    .await;
    let state = f.state();
    assert_eq!(state.halted.len(), 1);
    let h = &state.halted[0];
    assert_eq!(
        (h.table.as_str(), h.file.as_str(), h.line),
        ("a", "0001.jsonl", 2)
    );
    assert!(
        h.reason.contains(r#"column "ssn" has no rule"#),
        "{}",
        h.reason
    );
    assert!(!h.reason.contains("078-05"), "{}", h.reason);
    stop(running).await;

    // Restarted: still halted; new records of b flow, a's wait.
    let running = f.start(&sink);
    f.append("0002.jsonl", &[rec("a", 4, ""), rec("b", 4, "")]);
    until("b of the second file", || sink.ids("b").len() == 4).await;
    assert_eq!(sink.ids("a"), strs(&["1"]));
    assert_eq!(f.state().halted.len(), 1);

    // The rule arrives: a resumes from its first held record.
    f.set_rules(&TWO_TABLES.replace("[tables.b", "ssn = \"drop\"\n[tables.b"));
    until("every record of a", || sink.ids("a").len() == 4).await;
    assert_eq!(sink.ids("a"), strs(&["1", "2", "3", "4"]));
    until("the halt is cleared", || f.state().halted.is_empty()).await;
    f.append("0002.jsonl", &[rec("a", 5, ""), rec("b", 5, "")]);
    until("the main cursor carries a again", || {
        sink.ids("a").len() == 5
    })
    .await;
    assert_eq!(sink.ids("b"), strs(&["1", "2", "3", "4", "5"]));
    assert!(sink.payloads().iter().all(|p| !p.contains("078-05")));
    stop(running).await;
}

#[tokio::test]
async fn a_table_halted_again_during_its_replay_waits_at_the_new_record() {
    let f = Fixture::new(TWO_TABLES);
    f.append(
        "0001.jsonl",
        &[
            rec("a", 1, ""),
            rec("a", 2, r#","x":1"#),
            rec("b", 1, ""),
            rec("a", 3, r#","y":1"#),
            rec("a", 4, ""),
            rec("b", 2, ""),
        ],
    );
    let sink = Memory::default();
    let running = f.start(&sink);
    until("b published", || sink.ids("b").len() == 2).await;
    f.set_rules(&TWO_TABLES.replace("[tables.b", "x = \"keep\"\n[tables.b"));
    until("a replayed up to the next unknown column", || {
        sink.ids("a").len() == 2
    })
    .await;
    until("halted at the new record", || {
        f.state()
            .halted
            .first()
            .is_some_and(|h| h.reason.contains("\"y\""))
    })
    .await;
    let h = &f.state().halted[0];
    assert_eq!(h.line, 3, "held from the record with y: {h:?}");
    f.set_rules(&TWO_TABLES.replace("[tables.b", "x = \"keep\"\ny = \"null\"\n[tables.b"));
    until("all of a", || sink.ids("a").len() == 4).await;
    assert_eq!(sink.ids("a"), strs(&["1", "2", "3", "4"]));
    until("cleared", || f.state().halted.is_empty()).await;
    stop(running).await;
}

#[tokio::test]
async fn excluded_tables_never_leave_and_unlisted_tables_halt_until_decided() {
    let f = Fixture::new("[tables.a.columns]\nid = \"keep\"\n[tables.vault]\nmode = \"exclude\"\n");
    f.append(
        "0001.jsonl",
        &[
            rec("vault", 1, r#","secret":"sk_live_x""#),
            rec("new_table", 1, ""),
            rec("a", 1, ""),
            rec("vault", 2, ""),
            rec("new_table", 2, ""),
            rec("a", 2, ""),
        ],
    );
    let sink = Memory::default();
    let running = f.start(&sink);
    until("a published", || sink.ids("a").len() == 2).await;
    until("the unlisted table halted", || f.state().halted.len() == 1).await;
    assert!(f.state().halted[0]
        .reason
        .contains("public.new_table has no entry"));
    assert!(sink.ids("vault").is_empty() && sink.ids("new_table").is_empty());
    // Deciding to exclude it clears the halt without publishing anything.
    f.set_rules("[tables.a.columns]\nid = \"keep\"\n[tables.vault]\nmode = \"exclude\"\n[tables.new_table]\nmode = \"exclude\"\n");
    until("cleared", || f.state().halted.is_empty()).await;
    assert!(sink.ids("vault").is_empty() && sink.ids("new_table").is_empty());
    assert!(sink.payloads().iter().all(|p| !p.contains("sk_live")));
    stop(running).await;
}
