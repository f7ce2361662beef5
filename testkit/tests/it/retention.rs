//! Retention and resilience over time, against real servers: a week of
//! retention simulated with small limits (stream, tombstones, logs, dead
//! letters, quarantine stay bounded; nothing the stream can still deliver
//! is lost; a replay after tombstone collection converges), a halted table
//! whose archive file was deleted, a child row whose parent never arrives
//! (no replica mode), and one producer per state directory.

use syncdata_testkit::harness as support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{json, Value};
use support::{Proc, TestDb, TestNames};

const KEY: &str = "retention-test-key-0123456789abcdef0123456789abcdef";

async fn ddl(db: &TestDb, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("ddl failed: {e}\n{sql}"));
}

/// JSON lines with increasing commit LSNs.
struct History {
    lsn: u64,
    lines: Vec<String>,
}

impl History {
    fn new(start: u64) -> Self {
        History {
            lsn: start,
            lines: Vec::new(),
        }
    }

    fn push(&mut self, table: &str, op: &str, data: Value) {
        self.lsn += 16;
        let mut r = json!({"schema": "public", "table": table, "op": op,
                           "lsn": format!("0/{:X}", self.lsn), "seq": 0,
                           "ts": "2026-02-05T10:31:00Z"});
        match op {
            "DELETE" => r["old_keys"] = data,
            _ => r["data"] = data,
        }
        self.lines.push(r.to_string());
    }

    fn raw(&mut self, line: String) {
        self.lines.push(line);
    }

    fn write(&mut self, archive: &Path, name: &str) {
        let tmp = archive.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, self.lines.join("\n") + "\n").unwrap();
        std::fs::rename(tmp, archive.join(name)).unwrap();
        self.lines.clear();
    }
}

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    names: TestNames,
    archive: PathBuf,
}

fn setup(tmp: &Path, db: &TestDb, tag: &str, extra: &str) -> Setup {
    let dir = tmp.join("run");
    let archive = tmp.join("archive");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    let names = TestNames::new(tag);
    let config = support::write_config(&dir, db, &names, &support::nats_url(), &archive, extra);
    Setup {
        dir,
        config,
        names,
        archive,
    }
}

fn producer(s: &Setup) -> Proc {
    Proc::spawn(
        "syncdata-producer",
        &["run"],
        &s.config,
        &[("RUST_LOG", "info"), ("SYNCDATA_SANITIZE_KEY", KEY)],
        &s.dir,
    )
}

fn syncdata(s: &Setup, args: &[&str]) -> Proc {
    Proc::spawn("syncdata", args, &s.config, &[("RUST_LOG", "info")], &s.dir)
}

async fn run_ok(s: &Setup, program: &str, args: &[&str]) -> String {
    let out = support::run_cli(program, &s.config, args, &[("SYNCDATA_SANITIZE_KEY", KEY)]).await;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

async fn json_of(s: &Setup, program: &str, args: &[&str]) -> Value {
    let out = run_ok(s, program, args).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

async fn stop(p: &mut Proc) {
    p.sigterm();
    assert!(
        p.wait_exit(Duration::from_secs(30)).await.is_some(),
        "{} did not stop:\n{}",
        p.name(),
        p.log_tail(40)
    );
}

async fn js() -> jetstream::Context {
    jetstream::new(support::nats_connect(&support::nats_url()).await)
}

async fn stream_info(name: &str) -> Option<jetstream::stream::Info> {
    let mut s = js().await.get_stream(name).await.ok()?;
    s.info().await.ok().cloned()
}

/// Messages per table in the change stream.
async fn per_table(names: &TestNames) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (_, payload) in support::stream_messages(&support::nats_url(), &names.stream).await {
        if let Ok(r) = syncdata_core::record::Record::parse(&payload) {
            *out.entry(r.table).or_insert(0) += 1;
        }
    }
    out
}

async fn ids(db: &TestDb, table: &str) -> BTreeSet<i64> {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("select id from {table}")))
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Quarantine files (current and rotated) in `state` and their bytes.
fn quarantine_usage(state: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(state).into_iter().flatten().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("quarantine.jsonl")
        {
            files += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (files, bytes)
}

// ---------------------------------------------------------------------------

/// A week of traffic with small limits: each "day" a file of inserts,
/// deletes, bad lines and poison records goes through the producer and the
/// consumer, then a day passes for the logs and the daemon registry. The
/// stream (discard New, so the producer is pushed back, never dropping),
/// the tombstones, the logs, the dead letters, the daemon registry and the
/// quarantine stay within their bounds; every record reaches the table; a
/// replay of what the stream still holds after tombstones were collected
/// changes nothing. One message per record (`chunk_records = 1`): the
/// stream's byte bound must push the producer back, which a day's few
/// chunks would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_of_retention_stays_bounded_and_loses_nothing() {
    const MAX_BYTES: u64 = 40_000;
    const DLQ_MAX: u64 = 5;
    const Q_MAX: u64 = 4096;
    let tmp = tempfile::tempdir().unwrap();
    let db = support::fresh_database("ret_week").await;
    ddl(
        &db,
        "create table items (id bigint primary key, v text not null)",
    )
    .await;
    let extra = format!(
        "max_age_secs = 4\nduplicate_window_secs = 1\nmax_bytes = {MAX_BYTES}\ndlq_max_msgs = {DLQ_MAX}\n\
         [producer]\nrescan_ms = 200\nallow_unsanitized = true\nquarantine_max_bytes = {Q_MAX}\nquarantine_keep_files = 2\n\
         chunk_records = 1\n\
         [consumer]\nbatch_size = 50\nfetch_wait_ms = 100\nmax_attempts = 1\nmax_backoff_ms = 500\n\
         gc_interval_secs = 1\ntombstone_grace_secs = 1\nlog_retention_days = 1\ndaemon_retention_days = 1\n"
    );
    let s = setup(tmp.path(), &db, "retweek", &extra);
    run_ok(&s, "syncdata", &["add-tables", "items"]).await;
    let mut p = producer(&s);
    let mut c = syncdata(&s, &["start"]);

    let mut h = History::new(0x1000);
    let mut live: BTreeSet<i64> = BTreeSet::new();
    let mut deleted_total = 0u64;
    let mut max_tombstones = 0i64;
    let mut replayed = false;
    let mut poison_replayed = 0i64;
    for day in 0..7i64 {
        let first = day * 30 + 1;
        for id in first..first + 30 {
            h.push(
                "items",
                "INSERT",
                json!({"id": id, "v": format!("day {day} item {id}")}),
            );
            live.insert(id);
        }
        if day > 0 {
            for id in (first - 30)..(first - 20) {
                h.push("items", "DELETE", json!({"id": id}));
                live.remove(&id);
                deleted_total += 1;
            }
        }
        for i in 0..20 {
            h.raw(format!(
                "not a record: day {day} line {i} {}",
                "x".repeat(150)
            ));
        }
        // Poison: NOT NULL violated; dead-lettered on its first failure.
        for i in 0..2 {
            h.push(
                "items",
                "INSERT",
                json!({"id": 100_000 + day * 10 + i, "v": null}),
            );
        }
        h.write(&s.archive, &format!("changes-{day:06}.jsonl"));
        let want = live.clone();
        support::poll_until(
            &format!("day {day} applied"),
            Duration::from_millis(200),
            Duration::from_secs(120),
            &mut [],
            || {
                let want = want.clone();
                let db = &db;
                async move { Ok(ids(db, "items").await == want) }
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\nproducer:\n{}\nconsumer:\n{}",
                p.log_tail(30),
                c.log_tail(30)
            )
        });
        let info = stream_info(&s.names.stream).await.expect("change stream");
        assert!(
            info.state.bytes <= MAX_BYTES,
            "stream over max_bytes: {:?}",
            info.state
        );
        assert_eq!(
            info.config.discard,
            jetstream::stream::DiscardPolicy::New,
            "a full stream pushes back"
        );
        let dlq = stream_info(&s.names.dlq_stream).await.expect("dlq stream");
        assert!(dlq.state.messages <= DLQ_MAX, "{:?}", dlq.state);
        let tombstones = scalar(
            &db,
            "select count(*) from syncdata.row_state where state = 'D'",
        )
        .await;
        max_tombstones = max_tombstones.max(tombstones);
        let (files, bytes) = quarantine_usage(&s.archive.join(".syncdata"));
        assert!(
            files <= 3 && bytes <= 3 * Q_MAX,
            "quarantine: {files} files, {bytes} bytes"
        );

        if day == 3 {
            // Once earlier tombstones are collected, replay what the stream
            // still holds (re-published, no message id): nothing changes.
            support::wait_until("tombstones collected", Duration::from_secs(60), || async {
                scalar(&db, "select coalesce(sum(tombstones_collected), 0)::bigint from syncdata.gc_horizon").await > 0
            })
            .await;
            let held = support::stream_messages(&support::nats_url(), &s.names.stream).await;
            poison_replayed = held
                .iter()
                .filter(|(_, p)| String::from_utf8_lossy(p).contains("\"v\":null"))
                .count() as i64;
            let js = js().await;
            let mut acks = Vec::new();
            for (subject, payload) in &held {
                acks.push(
                    support::publish_signed(&js, subject.clone(), payload.clone())
                        .await
                        .unwrap(),
                );
            }
            for a in acks {
                a.await.expect("republished");
            }
            let seq_after = stream_info(&s.names.stream)
                .await
                .unwrap()
                .state
                .last_sequence;
            support::wait_until("the replay applied", Duration::from_secs(60), || async {
                let st = json_of(&s, "syncdata", &["status", "--json"]).await;
                st["tables"][0]["stream"]["pending"] == 0
                    && st["tables"][0]["stream"]["ack_pending"] == 0
            })
            .await;
            assert!(seq_after > 0);
            assert_eq!(
                ids(&db, "items").await,
                live,
                "a replay after tombstone collection converges"
            );
            replayed = !held.is_empty();
        }

        // A day passes for the logs and the daemon registry.
        ddl(
            &db,
            "update data_sync_logs set sync_time = sync_time - interval '1 day'; \
             insert into syncdata.daemons (id, host, pid, started_at, last_seen, stopped_at) \
             values (gen_random_uuid(), 'gone', 1, now() - interval '3 days', now() - interval '3 days', now() - interval '3 days')",
        )
        .await;
    }
    assert!(replayed, "the replay had messages to replay");

    // Everything ages out of the stream; the housekeeping catches up.
    support::wait_until("bounded", Duration::from_secs(90), || async {
        let stream_empty = stream_info(&s.names.stream).await.is_some_and(|i| i.state.messages == 0);
        let tombstones = scalar(&db, "select count(*) from syncdata.row_state where state = 'D'").await;
        let old_logs = scalar(
            &db,
            "select count(*) from data_sync_logs l where sync_time < now() - interval '1 day' \
             and (status <> 'SUCCESS' or exists (select 1 from data_sync_logs n where n.table_name = l.table_name \
                  and n.status = 'SUCCESS' and n.sync_time > l.sync_time))",
        )
        .await;
        let gone_daemons = scalar(&db, "select count(*) from syncdata.daemons where host = 'gone'").await;
        stream_empty && tombstones == 0 && old_logs == 0 && gone_daemons == 0
    })
    .await;
    assert_eq!(ids(&db, "items").await, live, "nothing lost");
    assert!(max_tombstones > 0 && (max_tombstones as u64) < deleted_total + 1);

    let st = json_of(&s, "syncdata", &["status", "--json"]).await;
    let r = &st["retention"];
    assert!(
        r["tombstones_collected"].as_i64().unwrap() as u64 >= deleted_total,
        "{st:#}"
    );
    assert!(r["log_rows_pruned"].as_i64().unwrap() > 0, "{st:#}");
    assert_eq!(r["stream"]["discard"], "new", "{st:#}");
    assert_eq!(r["stream"]["max_bytes"], MAX_BYTES, "{st:#}");
    assert_eq!(r["dlq"]["max_msgs"], DLQ_MAX, "{st:#}");
    // All-time totals survive the pruning of the logs: every good record
    // was applied at least once, every poison one dead-lettered.
    let applied = 7 * 30 + deleted_total;
    assert!(
        st["records_synced"].as_i64().unwrap() as u64 >= applied,
        "{st:#}"
    );
    // Poison records are dead-lettered again when replayed: every failure
    // stays in the all-time count; `errors` (the dead letters waiting) is
    // bounded by the DLQ's limit.
    assert_eq!(
        st["errors_logged"].as_i64().unwrap(),
        14 + poison_replayed,
        "{st:#}"
    );
    let waiting = st["errors"].as_i64().unwrap();
    assert!(waiting > 0 && waiting <= DLQ_MAX as i64, "{st:#}");
    let rows_left = scalar(&db, "select count(*) from data_sync_logs").await;
    assert!(rows_left < 100, "logs bounded: {rows_left}");

    let ps = json_of(&s, "syncdata-producer", &["status", "--json"]).await;
    assert!(ps["quarantine_files"].as_u64().unwrap() <= 3, "{ps:#}");
    assert!(
        ps["quarantine_bytes"].as_u64().unwrap() <= 3 * Q_MAX,
        "{ps:#}"
    );
    assert!(
        ps["quarantined"].as_u64().unwrap() < 7 * 20,
        "old entries rotated away: {ps:#}"
    );
    assert_eq!(
        ps["safe_to_delete_before"], "changes-000006.jsonl",
        "{ps:#}"
    );
    let plog = p.log();
    assert!(
        plog.contains("the stream is full"),
        "the producer was pushed back:\n{}",
        p.log_tail(40)
    );
    stop(&mut c).await;
    stop(&mut p).await;
}

/// A table halted by sanitization whose archive file was deleted: the
/// producer says so loudly and keeps the halt (never skips to the next
/// file); the other table flows; `status` names the safe deletion point
/// and the missing file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_table_whose_file_was_deleted_stays_halted_and_the_rest_flows() {
    let tmp = tempfile::tempdir().unwrap();
    let db = support::fresh_database("ret_halt").await;
    let rules = tmp.path().join("rules.toml");
    let rules_text = "[tables.a]\nkey = [\"id\"]\n[tables.a.columns]\nid = \"keep\"\nv = \"keep\"\n\
                      [tables.b]\nkey = [\"id\"]\n[tables.b.columns]\nid = \"keep\"\nv = \"keep\"\n";
    std::fs::write(&rules, rules_text).unwrap();
    let extra = format!(
        "[producer]\nrescan_ms = 200\nrules_file = {:?}\nrules_reload_ms = 200\n",
        rules.display().to_string()
    );
    let s = setup(tmp.path(), &db, "rethalt", &extra);
    let mut h = History::new(0x1000);
    for id in 1..=5 {
        h.push("a", "INSERT", json!({"id": id, "v": "x"}));
        h.push("b", "INSERT", json!({"id": id, "v": "x"}));
    }
    // A column without a rule: `a` halts here.
    h.push("a", "INSERT", json!({"id": 6, "v": "x", "secret": "s"}));
    for id in 6..=10 {
        h.push("b", "INSERT", json!({"id": id, "v": "x"}));
    }
    h.write(&s.archive, "changes-000001.jsonl");
    let mut p = producer(&s);
    support::wait_until(
        "b published past the halt",
        Duration::from_secs(60),
        || async { per_table(&s.names).await.get("b") == Some(&10) },
    )
    .await;
    for id in 11..=15 {
        h.push("b", "INSERT", json!({"id": id, "v": "x"}));
    }
    h.write(&s.archive, "changes-000002.jsonl");
    support::wait_until("second file published", Duration::from_secs(60), || async {
        per_table(&s.names).await.get("b") == Some(&15)
    })
    .await;
    stop(&mut p).await;
    let st = json_of(&s, "syncdata-producer", &["status", "--json"]).await;
    assert_eq!(st["checkpoint"]["file"], "changes-000002.jsonl", "{st:#}");
    assert_eq!(
        st["safe_to_delete_before"], "changes-000001.jsonl",
        "the halt still needs the first file: {st:#}"
    );
    assert_eq!(st["halted_tables"].as_array().unwrap().len(), 1, "{st:#}");

    // Deleted anyway (the old advice: "older than the checkpoint").
    std::fs::remove_file(s.archive.join("changes-000001.jsonl")).unwrap();
    let st = json_of(&s, "syncdata-producer", &["status", "--json"]).await;
    assert_eq!(st["halts_missing_file"][0]["table"], "public.a", "{st:#}");
    let text = run_ok(&s, "syncdata-producer", &["status"]).await;
    assert!(text.contains("which is missing"), "{text}");

    // The rule arrives: the halt cannot replay, and says so; it stays.
    std::fs::write(
        &rules,
        rules_text.replace("[tables.b]", "secret = \"drop\"\n[tables.b]"),
    )
    .unwrap();
    let mut p = producer(&s);
    support::wait_until(
        "the missing file is reported",
        Duration::from_secs(60),
        || async {
            p.log()
                .contains("archive file holding the halted table's held records is missing")
        },
    )
    .await;
    assert!(p.log().contains("ERROR"), "{}", p.log_tail(20));
    for id in 16..=20 {
        h.push("b", "INSERT", json!({"id": id, "v": "x"}));
    }
    h.write(&s.archive, "changes-000003.jsonl");
    support::wait_until("b flows", Duration::from_secs(60), || async {
        per_table(&s.names).await.get("b") == Some(&20)
    })
    .await;
    assert_eq!(
        per_table(&s.names).await.get("a"),
        Some(&5),
        "nothing of a skipped ahead"
    );
    assert!(
        !p.log().contains("halted table resumed"),
        "{}",
        p.log_tail(30)
    );
    stop(&mut p).await;
    let st = json_of(&s, "syncdata-producer", &["status", "--json"]).await;
    assert_eq!(
        st["halted_tables"].as_array().unwrap().len(),
        1,
        "halt kept: {st:#}"
    );
    assert_eq!(st["halted_tables"][0]["table"], "a", "{st:#}");
}

/// Without replica mode, a child row whose parent never arrives fails on
/// its foreign key: it is isolated from its batch (the neighbours apply at
/// once), retried alone for `consumer.fk_retry_secs`, then dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_without_its_parent_is_dead_lettered_after_the_bound_alone() {
    const BOUND: u64 = 4;
    let tmp = tempfile::tempdir().unwrap();
    let db = support::fresh_database("ret_fk").await;
    // A role that is not a superuser (and not granted
    // session_replication_role): foreign keys are enforced.
    let role = support::unique("sd_fk");
    ddl(
        &db,
        &format!(
            "create role {role} login; alter database {} owner to {role}; alter schema public owner to {role}; \
             set role {role}; \
             create table parent (id bigint primary key); \
             create table child (id bigint primary key, parent_id bigint not null references parent (id)); \
             insert into parent select generate_series(1, 5); reset role",
            db.name
        ),
    )
    .await;
    let extra = format!(
        "[consumer]\nbatch_size = 100\nfetch_wait_ms = 300\nmax_backoff_ms = 500\nfk_retry_secs = {BOUND}\n"
    );
    let s = setup(tmp.path(), &db, "retfk", &extra);
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let cfg = cfg
        .lines()
        .map(|l| {
            if l.starts_with("pg_user") {
                format!("pg_user = {role:?}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&s.config, cfg + "\n").unwrap();
    run_ok(&s, "syncdata", &["add-tables", "child"]).await;

    // One batch: ten children, the seventh's parent never arrives.
    let js = js().await;
    support::ensure_change_stream(&js, &s.names).await;
    let subject = syncdata_core::subject::table_subject(&s.names.subject_prefix, "public", "child");
    let mut h = History::new(0x1000);
    for id in 1..=10 {
        let parent = if id == 7 { 99 } else { (id % 5) + 1 };
        h.push("child", "INSERT", json!({"id": id, "parent_id": parent}));
    }
    let mut acks = Vec::new();
    for line in &h.lines {
        acks.push(
            support::publish_signed(&js, subject.clone(), line.clone().into_bytes())
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
    let published = Instant::now();
    let mut c = syncdata(&s, &["start"]);
    let neighbours: BTreeSet<i64> = (1..=10).filter(|i| *i != 7).collect();
    support::wait_until(
        "the neighbours applied",
        Duration::from_secs(30),
        || async { ids(&db, "child").await == neighbours },
    )
    .await;
    assert!(
        published.elapsed() < Duration::from_secs(BOUND),
        "the neighbours did not wait for the bound"
    );
    assert!(
        c.log().contains("parent row is missing"),
        "{}",
        c.log_tail(20)
    );
    support::wait_until(
        "the orphan dead-lettered",
        Duration::from_secs(60),
        || async {
            stream_info(&s.names.dlq_stream)
                .await
                .is_some_and(|i| i.state.messages == 1)
        },
    )
    .await;
    assert!(
        published.elapsed() >= Duration::from_secs(BOUND),
        "dead-lettered before the bound"
    );
    let list = json_of(&s, "syncdata", &["dlq", "list", "--json"]).await;
    let entries = list.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list:#}");
    let text = entries[0].to_string();
    assert!(text.contains("23503"), "{text}");
    assert_eq!(
        ids(&db, "child").await,
        neighbours,
        "only the orphan is missing"
    );
    // Its failures are forgotten once it is settled.
    support::wait_until(
        "failure counts cleared",
        Duration::from_secs(10),
        || async { scalar(&db, "select count(*) from syncdata.failed_attempts").await == 0 },
    )
    .await;
    stop(&mut c).await;
}

/// Two `syncdata-producer run` on one state directory: the second is
/// refused at once with a message naming the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_producer_on_one_state_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let db = support::fresh_database("ret_lock").await;
    let s = setup(tmp.path(), &db, "retlock", "[producer]\nrescan_ms = 200\n");
    let mut first = producer(&s);
    support::wait_until(
        "the first producer runs",
        Duration::from_secs(30),
        || async { first.log().contains("producer starting") },
    )
    .await;
    let mut second = producer(&s);
    let status = second
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the second producer exits");
    assert!(!status.success(), "{}", second.log());
    assert!(
        second
            .log()
            .contains("another syncdata-producer run is using state directory"),
        "{}",
        second.log()
    );
    assert!(first.is_running(), "the first one goes on");
    stop(&mut first).await;
    // Once the first is gone, a producer starts again.
    let mut third = producer(&s);
    support::wait_until("a producer runs again", Duration::from_secs(30), || async {
        third.log().contains("producer starting")
    })
    .await;
    stop(&mut third).await;
}
