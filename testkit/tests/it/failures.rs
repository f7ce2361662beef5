//! Failure handling of the consumer (`syncdata start`) against real servers:
//! the target database going away, crashes, poison records, a corpus of bad
//! input, and the dead-letter queue commands (`syncdata dlq …`).
//!
//! Every test has its own databases and JetStream names, publishes straight
//! into JetStream (no producer) and runs the real `syncdata` binary.

use syncdata_testkit::harness as support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::StreamMessage};
use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Value as Json};
use support::{PgServer, Proc, TestDb, TestNames};
use syncdata_core::record::Record;
use syncdata_core::subject::table_subject;
use syncdata_testkit::workload::{self, WorkloadSpec};

const H_ERROR: &str = "Syncdata-Error";
const H_SQLSTATE: &str = "Syncdata-Sqlstate";
const H_ATTEMPTS: &str = "Syncdata-Attempts";
const H_SUBJECT: &str = "Syncdata-Original-Subject";
const H_SEQUENCE: &str = "Syncdata-Original-Sequence";

// ---------------------------------------------------------------------------
// Helpers

async fn ddl(db: &TestDb, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("ddl failed: {e}\n{sql}"));
}

async fn demo_db(db: TestDb) -> TestDb {
    ddl(&db, workload::DEMO_DDL).await;
    db
}

async fn fingerprints_of(db: &TestDb, tables: &[&str]) -> Result<Vec<(i64, String)>, sqlx::Error> {
    let mut out = Vec::new();
    for t in tables {
        out.push(workload::table_fingerprint(&db.pool, "public", t).await?);
    }
    Ok(out)
}

async fn demo_fingerprints(db: &TestDb) -> Result<Vec<(i64, String)>, sqlx::Error> {
    fingerprints_of(db, &workload::demo_tables()).await
}

fn start_consumer(dir: &Path, config: &Path) -> Proc {
    Proc::spawn("syncdata", &["start"], config, &[("RUST_LOG", "info")], dir)
}

/// Runs a `syncdata` command to completion and returns its output (stdout
/// and stderr kept apart, so `--json` output can be parsed).
async fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    support::run_cli("syncdata", config, args, &[]).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn cli_ok(config: &Path, args: &[&str]) -> String {
    let out = cli(config, args).await;
    assert!(
        out.status.success(),
        "syncdata {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

async fn add_tables(config: &Path, tables: &[&str]) {
    let mut args = vec!["add-tables"];
    args.extend(tables);
    cli_ok(config, &args).await;
}

/// `syncdata dlq list --json`, parsed.
/// This test's own stream names, directory and configuration for `local`,
/// with `tables` whitelisted (the directory lives as long as the guard).
async fn whitelisted(
    local: &TestDb,
    tag: &str,
    extra_toml: &str,
    tables: &[&str],
) -> (TestNames, tempfile::TempDir, std::path::PathBuf) {
    let names = TestNames::new(tag);
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        local,
        &names,
        &support::nats_url(),
        dir.path(),
        extra_toml,
    );
    add_tables(&config, tables).await;
    (names, dir, config)
}

async fn dlq_list(config: &Path) -> Vec<Json> {
    let out = cli_ok(config, &["dlq", "list", "--json"]).await;
    match serde_json::from_str(&out) {
        Ok(Json::Array(v)) => v,
        other => panic!("dlq list --json printed no JSON array ({other:?}):\n{out}"),
    }
}

async fn js() -> jetstream::Context {
    jetstream::new(support::nats_connect(&support::nats_url()).await)
}

fn subject_of(names: &TestNames, table: &str) -> String {
    table_subject(&names.subject_prefix, "public", table)
}

/// Publishes raw payloads (no message id, so duplicates stay duplicates)
/// on their subjects; returns each one's stream sequence.
async fn publish_payloads(names: &TestNames, msgs: &[(String, Vec<u8>)]) -> Vec<u64> {
    let js = js().await;
    support::ensure_change_stream(&js, names).await;
    let mut seqs = Vec::with_capacity(msgs.len());
    let mut acks = Vec::new();
    for (subject, payload) in msgs {
        acks.push(
            support::publish_signed(&js, subject.clone(), payload.clone())
                .await
                .expect("publish"),
        );
        if acks.len() >= 1000 {
            for a in acks.drain(..) {
                seqs.push(a.await.expect("puback").sequence);
            }
        }
    }
    for a in acks {
        seqs.push(a.await.expect("puback").sequence);
    }
    seqs
}

async fn publish_records(names: &TestNames, records: &[Record]) -> Vec<u64> {
    let msgs: Vec<(String, Vec<u8>)> = records
        .iter()
        .map(|r| {
            (
                table_subject(&names.subject_prefix, &r.schema, &r.table),
                r.to_json(),
            )
        })
        .collect();
    publish_payloads(names, &msgs).await
}

/// `0/<hex>`.
fn lsn(n: u64) -> String {
    format!("0/{n:X}")
}

/// A change record as JSON bytes (public schema, seq 0).
fn rec(table: &str, op: &str, data: Option<Json>, old_keys: Option<Json>, version: u64) -> Vec<u8> {
    let mut r =
        json!({"schema": "public", "table": table, "op": op, "lsn": lsn(version), "seq": 0});
    if let Some(d) = data {
        r["data"] = d;
    }
    if let Some(k) = old_keys {
        r["old_keys"] = k;
    }
    serde_json::to_vec(&r).unwrap()
}

fn parse(bytes: &[u8]) -> Record {
    Record::parse(bytes).unwrap_or_else(|e| panic!("test record does not parse: {e}"))
}

#[derive(Debug, Default, Clone, Copy)]
struct DurableState {
    pending: u64,
    ack_pending: usize,
    ack_floor: u64,
}

/// The state of each durable of the change stream, by filter subject (one
/// durable per table).
async fn durables(names: &TestNames) -> BTreeMap<String, DurableState> {
    let js = js().await;
    let mut out = BTreeMap::new();
    let Ok(stream) = js.get_stream(&names.stream).await else {
        return out;
    };
    let mut consumers = stream.consumers();
    while let Some(c) = consumers.next().await {
        let Ok(c) = c else { return BTreeMap::new() };
        out.insert(
            c.config.filter_subject.clone(),
            DurableState {
                pending: c.num_pending,
                ack_pending: c.num_ack_pending,
                ack_floor: c.ack_floor.stream_sequence,
            },
        );
    }
    out
}

async fn durable(names: &TestNames, table: &str) -> DurableState {
    durables(names)
        .await
        .get(&subject_of(names, table))
        .copied()
        .unwrap_or_default()
}

/// Every table's durable exists and has nothing left to deliver or ack.
async fn drained(names: &TestNames, tables: &[&str]) -> bool {
    let all = durables(names).await;
    tables.iter().all(|t| {
        all.get(&subject_of(names, t))
            .is_some_and(|d| d.pending == 0 && d.ack_pending == 0)
    })
}

/// Messages still to deliver or to ack over all durables.
async fn outstanding(names: &TestNames) -> u64 {
    durables(names)
        .await
        .values()
        .map(|d| d.pending + d.ack_pending as u64)
        .sum()
}

/// The table's durable has delivered and acked everything up to `seq`.
async fn settled_through(names: &TestNames, table: &str, seq: u64) -> bool {
    let d = durable(names, table).await;
    d.ack_floor >= seq && d.pending == 0 && d.ack_pending == 0
}

async fn dlq_count(names: &TestNames) -> u64 {
    let js = js().await;
    let Ok(mut s) = js.get_stream(&names.dlq_stream).await else {
        return 0;
    };
    s.info().await.map(|i| i.state.messages).unwrap_or(0)
}

/// Every message in the DLQ stream, in order.
async fn dlq_messages(names: &TestNames) -> Vec<StreamMessage> {
    let js = js().await;
    let mut s = js.get_stream(&names.dlq_stream).await.expect("dlq stream");
    let state = s.info().await.expect("dlq stream info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

fn header(m: &StreamMessage, name: &str) -> Option<String> {
    m.headers.get(name).map(|v| v.as_str().to_owned())
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// (table_name, archive_ref, error_detail) of every FAILED log row.
async fn failed_logs(db: &TestDb) -> Vec<(String, Option<String>, Option<String>)> {
    sqlx::query_as(
        "select table_name, archive_ref, error_detail from data_sync_logs where status = 'FAILED' order by sync_time",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read data_sync_logs")
}

/// Panics with the consumers' logs if one of them has exited.
fn assert_running(procs: &mut [&mut Proc]) {
    for p in procs.iter_mut() {
        if !p.is_running() {
            panic!("a consumer exited unexpectedly:\n{}", p.log_tail(40));
        }
    }
}

/// Waits until each `(table, seq)` durable has delivered and acked
/// everything up to `seq` and nothing is pending (a dead letter is published
/// before its original is acked, so after this the DLQ is final); panics
/// with the consumer's log if it exits or `timeout` passes.
async fn wait_settled(names: &TestNames, through: &[(&str, u64)], c: &mut Proc, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        assert_running(&mut [&mut *c]);
        let mut all = true;
        for &(table, seq) in through {
            all &= settled_through(names, table, seq).await;
        }
        if all {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "not settled through {through:?} after {timeout:?}: durables {:?}, {} dead letters\n{}",
                durables(names).await,
                dlq_count(names).await,
                c.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The reference: the history applied in order into a database of its own.
struct Expected {
    db: TestDb,
    fingerprints: Vec<(i64, String)>,
    history: Vec<Record>,
}

fn demo_key(table: &str) -> &'static [&'static str] {
    match table {
        "order_lines" => &["order_id", "line"],
        _ => &["id"],
    }
}

/// Every row of a demo table as text, by its key text.
async fn rows_by_key(db: &TestDb, table: &str) -> BTreeMap<String, String> {
    let key = demo_key(table)
        .iter()
        .map(|c| format!("t.{c}::text"))
        .collect::<Vec<_>>()
        .join(" || ',' || ");
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {key}, t::text from public.{table} t"
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap_or_default();
    rows.into_iter().collect()
}

/// What differs between the local tables and the reference, with the
/// history of each differing row: a failure report that says why.
async fn explain_difference(local: &TestDb, expected: &Expected) -> String {
    let mut out = String::new();
    for table in workload::demo_tables() {
        let want = rows_by_key(&expected.db, table).await;
        let got = rows_by_key(local, table).await;
        let keys: std::collections::BTreeSet<&String> = want.keys().chain(got.keys()).collect();
        let mut shown = 0;
        for k in keys {
            if want.get(k) == got.get(k) {
                continue;
            }
            shown += 1;
            if shown > 5 {
                out.push_str("  …\n");
                break;
            }
            out.push_str(&format!(
                "{table} key {k}:\n  expected {:?}\n  got      {:?}\n  history:\n",
                want.get(k),
                got.get(k)
            ));
            let parts: Vec<&str> = k.split(',').collect();
            for r in &expected.history {
                let in_cols = |cols: &Option<syncdata_core::record::Columns>| {
                    cols.as_ref().is_some_and(|c| {
                        demo_key(table).iter().zip(&parts).all(|(col, part)| {
                            c.get(*col).and_then(|v| v.to_pg_text()).as_deref() == Some(*part)
                        })
                    })
                };
                if r.table == table && (in_cols(&r.data) || in_cols(&r.old_keys)) {
                    out.push_str(&format!("    {}\n", String::from_utf8_lossy(&r.to_json())));
                }
            }
        }
    }
    out
}

/// Waits until the demo tables of `local` equal the reference and every
/// durable is drained; panics with the difference and the consumers' logs
/// after `timeout`, or once the durables have been drained for 10 s with the
/// tables still different (nothing is left that could fix them).
async fn wait_demo_converged(
    names: &TestNames,
    local: &TestDb,
    expected: &Expected,
    procs: &mut [&mut Proc],
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut drained_since: Option<Instant> = None;
    loop {
        assert_running(procs);
        let got = demo_fingerprints(local).await;
        let is_drained = drained(names, &workload::demo_tables()).await;
        if is_drained && got.as_ref().ok() == Some(&expected.fingerprints) {
            return;
        }
        drained_since = if is_drained {
            drained_since.or(Some(Instant::now()))
        } else {
            None
        };
        let stuck = drained_since.is_some_and(|t| t.elapsed() > Duration::from_secs(10));
        if stuck || Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log_tail(40)).collect();
            // The apply engine's own warnings, from anywhere in the logs.
            let engine: Vec<String> = procs
                .iter()
                .flat_map(|p| {
                    p.log()
                        .lines()
                        .filter(|l| l.contains("syncdata_consumer::apply"))
                        .take(10)
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            panic!(
                "no convergence ({}): expected {:?}\n got {got:?}\ndurables: {:?}\ndifference:\n{}\napply engine warnings:\n{}\nlogs:\n{}",
                if stuck { "durables drained, tables differ" } else { "timed out" },
                expected.fingerprints,
                durables(names).await,
                explain_difference(local, expected).await,
                engine.join("\n"),
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn history(seed: u64, changes: usize) -> Vec<Record> {
    workload::generate(&WorkloadSpec {
        seed,
        changes,
        truncate: false,
        partial_updates: true,
        key_changes: true,
    })
}

async fn expected_demo_state(tag: &str, history: &[Record]) -> Expected {
    let db = demo_db(support::fresh_database(tag).await).await;
    workload::apply_in_order(&db.pool, history)
        .await
        .expect("reference apply");
    let fingerprints = demo_fingerprints(&db).await.unwrap();
    assert!(
        fingerprints.iter().all(|(n, _)| *n > 0),
        "non-trivial end state: {fingerprints:?}"
    );
    Expected {
        db,
        fingerprints,
        history: history.to_vec(),
    }
}

// ---------------------------------------------------------------------------
// 1. The target database goes away for 15 s

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_database_down_15s_mid_stream() {
    let started = Instant::now();
    let history = history(21, 20_000);
    let expected = expected_demo_state("pgdown_expected", &history).await;

    let dir = tempfile::tempdir().unwrap();
    let mut pg = PgServer::start(&dir.path().join("target-pg")).await;
    let local = demo_db(pg.fresh_database("pgdown_local").await).await;
    let names = TestNames::new("pgdown");
    let config = support::write_config(
        dir.path(),
        &local,
        &names,
        &support::nats_url(),
        dir.path(),
        "[consumer]\nbatch_size = 100\nmax_attempts = 2\nmax_backoff_ms = 1000\nack_wait_secs = 10\n",
    );
    add_tables(&config, &workload::demo_tables()).await;
    // Most of the history up front; the rest arrives while the database is
    // down, so there is certainly work the outage holds up.
    let split = history.len() * 3 / 4;
    publish_records(&names, &history[..split]).await;

    let mut a = start_consumer(dir.path(), &config);
    let mut b = start_consumer(dir.path(), &config);
    support::wait_until("some batches applied", Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, i64>("select count(*) from data_sync_logs where status = 'SUCCESS'")
            .fetch_one(&local.pool)
            .await
            .unwrap_or(0)
            >= 3
    })
    .await;

    pg.stop();
    let down_at = Instant::now();
    publish_records(&names, &history[split..]).await;
    let waiting = outstanding(&names).await;
    assert!(waiting > 0, "the outage must hold up work");
    // The outage itself: PostgreSQL stays down for 15 s.
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(down_at.elapsed())).await;
    assert_running(&mut [&mut a, &mut b]);
    assert!(
        outstanding(&names).await > 0,
        "nothing can be applied while the database is down"
    );
    pg.start_again().await;

    wait_demo_converged(
        &names,
        &local,
        &expected,
        &mut [&mut a, &mut b],
        Duration::from_secs(120),
    )
    .await;

    let logs = format!("{}\n{}", a.log(), b.log());
    assert!(
        logs.contains("transient failure; will retry"),
        "the consumers saw the outage as transient:\n{}",
        a.log_tail(40)
    );
    assert_eq!(
        dlq_count(&names).await,
        0,
        "a database that is down is not a poison record"
    );
    let failed = failed_logs(&local).await;
    assert!(failed.is_empty(), "no FAILED rows: {failed:?}");
    // No duplicates or losses: row counts and contents equal the reference
    // (checked by convergence) and a fresh look agrees.
    assert_eq!(
        demo_fingerprints(&local).await.unwrap(),
        expected.fingerprints
    );
    for p in [&a, &b] {
        p.sigterm();
    }
    for p in [&mut a, &mut b] {
        let status = p.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "graceful stop after the outage:\n{}",
            p.log_tail(40)
        );
    }
    eprintln!(
        "target_database_down_15s_mid_stream took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 2. SIGKILL, five times

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_sigkilled_five_times() {
    let started = Instant::now();
    let history = history(33, 20_000);
    let expected = expected_demo_state("kill5_expected", &history).await;

    let local = demo_db(support::fresh_database("kill5_local").await).await;
    let (names, dir, config) = whitelisted(
        &local,
        "kill5",
        "[consumer]\nbatch_size = 50\nack_wait_secs = 2\nmax_attempts = 2\nmax_backoff_ms = 500\n",
        &workload::demo_tables(),
    )
    .await;
    publish_records(&names, &history).await;

    let batches = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from data_sync_logs where status = 'SUCCESS'")
            .fetch_one(&local.pool)
            .await
            .unwrap()
    };
    let mut rng = rand::rng();
    for kill in 1..=5 {
        let before = batches().await;
        let mut c = start_consumer(dir.path(), &config);
        let deadline = Instant::now() + Duration::from_secs(60);
        while batches().await < before + 3 {
            assert_running(&mut [&mut c]);
            assert!(
                Instant::now() < deadline,
                "no progress after restart {kill}:\n{}",
                c.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A random point inside the stream of batches.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        c.sigkill();
        assert!(
            outstanding(&names).await > 0,
            "kill {kill} must land mid-stream (the test needs a longer history)"
        );
    }
    let mut last = start_consumer(dir.path(), &config);
    wait_demo_converged(
        &names,
        &local,
        &expected,
        &mut [&mut last],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(dlq_count(&names).await, 0);
    assert!(failed_logs(&local).await.is_empty());
    eprintln!("consumer_sigkilled_five_times took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// 3. One poison record among 500 good ones

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_record_in_a_batch_of_500_dead_letters_only_itself() {
    let started = Instant::now();
    let local = support::fresh_database("poison_local").await;
    ddl(
        &local,
        "create table items (id bigint primary key, qty integer not null, name text)",
    )
    .await;
    let (names, dir, config) = whitelisted(&local, "poison", "[consumer]\nbatch_size = 1000\nfetch_wait_ms = 500\nmax_attempts = 2\nmax_backoff_ms = 500\n", &["items"]).await;

    let subject = subject_of(&names, "items");
    let mut msgs = Vec::new();
    for i in 1..=500u64 {
        if i == 251 {
            msgs.push((
                subject.clone(),
                rec(
                    "items",
                    "INSERT",
                    Some(json!({"id": 100_000, "qty": "not a number", "name": "bad"})),
                    None,
                    10_000,
                ),
            ));
        }
        msgs.push((
            subject.clone(),
            rec(
                "items",
                "INSERT",
                Some(json!({"id": i, "qty": i, "name": format!("n{i}")})),
                None,
                10 + i,
            ),
        ));
    }
    let seqs = publish_payloads(&names, &msgs).await;
    let bad_seq = seqs[250];
    let last_seq = *seqs.last().unwrap();

    let mut c = start_consumer(dir.path(), &config);
    wait_settled(
        &names,
        &[("items", last_seq)],
        &mut c,
        Duration::from_secs(60),
    )
    .await;

    // The 500 good rows, exactly as sent; the bad one absent.
    assert_eq!(count(&local, "select count(*) from items").await, 500);
    assert_eq!(
        count(&local, "select count(*) from items where qty = id and name = 'n' || id and id between 1 and 500").await,
        500
    );
    // Each good record applied once, in a few large batches (the split),
    // not one by one.
    let (batches, synced): (i64, i64) = sqlx::query_as(
        "select count(*), coalesce(sum(rows_synced), 0)::int8 from data_sync_logs where status = 'SUCCESS'",
    )
    .fetch_one(&local.pool)
    .await
    .unwrap();
    assert_eq!(synced, 500, "every good record applied exactly once");
    assert!(
        batches <= 40,
        "good records were applied in {batches} transactions: no batch split?"
    );

    // Exactly one dead letter: the bad record, with why and where from.
    let dlq = dlq_messages(&names).await;
    assert_eq!(dlq.len(), 1, "exactly one dead letter");
    let m = &dlq[0];
    let instance = syncdata_consumer::store::instance_id(&local.pool)
        .await
        .unwrap();
    assert_eq!(
        m.subject.as_str(),
        syncdata_core::subject::dlq_subject(
            &names.dlq_subject_prefix,
            &instance,
            "public",
            "items"
        )
    );
    assert_eq!(&m.payload[..], &msgs[250].1[..], "the original record");
    let error = header(m, H_ERROR).expect("error header");
    // SQLSTATE and table only: PostgreSQL's text quotes the value.
    assert!(
        error.contains("SQLSTATE 22P02 (invalid_text_representation)")
            && !error.contains("not a number"),
        "{error}"
    );
    assert_eq!(header(m, H_SQLSTATE).as_deref(), Some("22P02"));
    assert_eq!(header(m, H_ATTEMPTS).as_deref(), Some("2"));
    assert_eq!(header(m, H_SUBJECT).as_deref(), Some(subject.as_str()));
    assert_eq!(header(m, H_SEQUENCE), Some(bad_seq.to_string()));

    let failed = failed_logs(&local).await;
    assert_eq!(failed.len(), 1, "one FAILED row: {failed:?}");
    let (table, archive_ref, detail) = &failed[0];
    assert_eq!(table, "items");
    assert_eq!(
        archive_ref.as_deref(),
        Some(format!("seq {bad_seq}").as_str())
    );
    let detail = detail.as_deref().unwrap_or("");
    assert!(!detail.contains("not a number"), "{detail}");
    for part in [
        "SQLSTATE 22P02 (invalid_text_representation)",
        &format!("stream sequence {bad_seq}"),
        "after 2 attempts",
    ] {
        assert!(
            detail.contains(part),
            "error_detail lacks {part:?}: {detail}"
        );
    }

    // The original was acked: nothing pending, nothing awaiting an ack.
    let d = durable(&names, "items").await;
    assert_eq!((d.pending, d.ack_pending, d.ack_floor), (0, 0, last_seq));
    eprintln!("one_poison_record… took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// 4. A corpus of bad input among good records

const CORPUS_DDL: &str = "
create table corpus (
    id bigint primary key,
    qty integer,
    code varchar(5),
    label text not null,
    note text
);
create table other (id bigint primary key, v text);
";

/// One bad record of the corpus and what must become of it.
struct Bad {
    what: &'static str,
    payload: Vec<u8>,
    /// Some((error text, sqlstate)): dead-lettered; None: not.
    dead: Option<(&'static str, Option<&'static str>)>,
}

fn corpus_row(id: u64, version: u64) -> Vec<u8> {
    rec(
        "corpus",
        "INSERT",
        Some(
            json!({"id": id, "qty": id * 2, "code": format!("c{}", id % 1000), "label": format!("L{id}"), "note": format!("note {id}")}),
        ),
        None,
        version,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_corpus_consumer_side() {
    let started = Instant::now();
    let local = support::fresh_database("corpus_local").await;
    ddl(&local, CORPUS_DDL).await;
    let expected_db = support::fresh_database("corpus_expected").await;
    ddl(&expected_db, CORPUS_DDL).await;
    let (names, dir, config) = whitelisted(
        &local,
        "corpus",
        "[consumer]\nbatch_size = 64\nmax_attempts = 2\nmax_backoff_ms = 500\n",
        &["corpus", "other"],
    )
    .await;

    // Good records have versions 1000 + 10*i (+1, +2), the bad ones 40_00x;
    // the DELETE of a missing row sits at a known version so that an older
    // INSERT can come later.
    const TOMBSTONE_VERSION: u64 = 50_000;
    let bad = vec![
        Bad {
            what: "not JSON",
            payload: b"{this is not JSON".to_vec(),
            dead: Some(("not a JSON record", None)),
        },
        Bad {
            what: "unknown column",
            payload: rec(
                "corpus",
                "INSERT",
                Some(json!({"id": 1001, "qty": 1, "label": "u", "nope": 7})),
                None,
                40_001,
            ),
            dead: Some((
                "names column \"nope\", which table corpus does not have",
                None,
            )),
        },
        Bad {
            what: "type mismatch",
            payload: rec(
                "corpus",
                "INSERT",
                Some(json!({"id": 1002, "qty": "abc", "label": "t"})),
                None,
                40_002,
            ),
            dead: Some((
                "SQLSTATE 22P02 (invalid_text_representation)",
                Some("22P02"),
            )),
        },
        Bad {
            what: "NOT NULL",
            payload: rec(
                "corpus",
                "INSERT",
                Some(json!({"id": 1003, "qty": 3, "label": null})),
                None,
                40_003,
            ),
            dead: Some((
                "SQLSTATE 23502 (not_null_violation), table corpus, column label",
                Some("23502"),
            )),
        },
        Bad {
            what: "value too long",
            payload: rec(
                "corpus",
                "INSERT",
                Some(json!({"id": 1004, "code": "toolong", "label": "v"})),
                None,
                40_004,
            ),
            dead: Some((
                "SQLSTATE 22001 (string_data_right_truncation)",
                Some("22001"),
            )),
        },
        Bad {
            what: "NUL byte",
            payload: rec(
                "corpus",
                "INSERT",
                Some(json!({"id": 1005, "label": "n", "note": "a\u{0}b"})),
                None,
                40_005,
            ),
            dead: Some((
                "SQLSTATE 22021 (character_not_in_repertoire)",
                Some("22021"),
            )),
        },
        Bad {
            what: "old_keys without the key column",
            payload: rec(
                "corpus",
                "UPDATE",
                Some(json!({"id": 5, "qty": 999, "code": "x", "label": "x", "note": "x"})),
                Some(json!({"qty": 10})),
                40_006,
            ),
            dead: Some(("old_keys lacks key column \"id\"", None)),
        },
        Bad {
            what: "partial UPDATE of a missing row",
            payload: rec(
                "corpus",
                "UPDATE",
                Some(json!({"id": 1007, "qty": 7})),
                None,
                40_007,
            ),
            dead: None,
        },
        Bad {
            what: "DELETE of a missing row",
            payload: rec(
                "corpus",
                "DELETE",
                None,
                Some(json!({"id": 1008})),
                TOMBSTONE_VERSION,
            ),
            dead: None,
        },
        Bad {
            what: "payload names another table",
            payload: rec(
                "other",
                "INSERT",
                Some(json!({"id": 9999, "v": "wrong subject"})),
                None,
                40_009,
            ),
            dead: Some((
                "record names table public.other, but arrived on the subject of corpus",
                None,
            )),
        },
    ];

    // Good records: 200 corpus rows and 100 `other` rows, updates, a
    // duplicate; the bad ones spread among them.
    let corpus_subject = subject_of(&names, "corpus");
    let other_subject = subject_of(&names, "other");
    let mut good: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 1..=200u64 {
        good.push((corpus_subject.clone(), corpus_row(i, 1000 + 10 * i)));
        if i <= 100 {
            good.push((
                other_subject.clone(),
                rec(
                    "other",
                    "INSERT",
                    Some(json!({"id": i, "v": format!("v{i}")})),
                    None,
                    1000 + 10 * i + 1,
                ),
            ));
        }
        if i % 7 == 0 {
            good.push((
                corpus_subject.clone(),
                rec(
                    "corpus",
                    "UPDATE",
                    Some(json!({"id": i - 3, "qty": i, "note": null})),
                    None,
                    1000 + 10 * i + 2,
                ),
            ));
        }
        if i == 60 {
            // The duplicate: the INSERT of row 50 once more, later.
            good.push((corpus_subject.clone(), corpus_row(50, 1000 + 10 * 50)));
        }
    }
    let mut msgs = Vec::new();
    let mut bad_at = Vec::new();
    let stride = good.len() / (bad.len() + 1);
    for (i, g) in good.iter().enumerate() {
        if i > 0 && i % stride == 0 && i / stride <= bad.len() {
            bad_at.push(msgs.len());
            msgs.push((corpus_subject.clone(), bad[i / stride - 1].payload.clone()));
        }
        msgs.push(g.clone());
    }
    assert_eq!(bad_at.len(), bad.len());
    // The duplicate right away too: INSERT of row 1, twice in a row.
    msgs.insert(1, msgs[0].clone());
    let bad_at: Vec<usize> = bad_at.into_iter().map(|i| i + 1).collect();

    // Expected: the good records (and the two harmless oddities) in order.
    let mut reference = Vec::new();
    for (n, (_, payload)) in msgs.iter().enumerate() {
        if let Some(k) = bad_at.iter().position(|&b| b == n) {
            if bad[k].dead.is_some() {
                continue;
            }
        }
        reference.push(parse(payload));
    }
    workload::apply_in_order(&expected_db.pool, &reference)
        .await
        .unwrap();
    let expected = fingerprints_of(&expected_db, &["corpus", "other"])
        .await
        .unwrap();
    assert_eq!(expected[1].0, 100);
    assert_eq!(expected[0].0, 200, "rows 1007 and 1008 stay absent");

    let seqs = publish_payloads(&names, &msgs).await;
    let bad_seq: Vec<u64> = bad_at.iter().map(|&i| seqs[i]).collect();
    let last_seq = *seqs.last().unwrap();
    let n_dead = bad.iter().filter(|b| b.dead.is_some()).count();

    let mut c = start_consumer(dir.path(), &config);
    let other_last = *msgs
        .iter()
        .zip(&seqs)
        .rfind(|((s, _), _)| *s == other_subject)
        .map(|(_, q)| q)
        .unwrap();
    wait_settled(
        &names,
        &[("corpus", last_seq), ("other", other_last)],
        &mut c,
        Duration::from_secs(60),
    )
    .await;

    // Nothing of a bad record reached the table (row 5 is checked by the
    // fingerprint: the bad UPDATE must not have touched it).
    let leaked: Vec<(i64, Option<String>)> =
        sqlx::query_as("select id, code from corpus where id > 1000 order by id")
            .fetch_all(&local.pool)
            .await
            .unwrap();
    assert!(
        leaked.is_empty(),
        "rows from bad records were applied: {leaked:?}"
    );
    // The good records around the bad ones are all there, exactly.
    assert_eq!(
        fingerprints_of(&local, &["corpus", "other"]).await.unwrap(),
        expected
    );

    // `dlq list --json` names each dead letter: table, cause, sqlstate and
    // the original stream sequence.
    let listed = dlq_list(&config).await;
    assert_eq!(listed.len(), n_dead, "dead letters: {listed:#?}");
    let by_seq: BTreeMap<u64, &Json> = listed
        .iter()
        .map(|e| {
            (
                e["original_sequence"].as_u64().expect("original_sequence"),
                e,
            )
        })
        .collect();
    let failed = failed_logs(&local).await;
    assert_eq!(failed.len(), n_dead, "FAILED rows: {failed:#?}");
    for (b, &seq) in bad.iter().zip(&bad_seq) {
        let entry = by_seq.get(&seq);
        let logged = failed
            .iter()
            .find(|(_, r, _)| r.as_deref() == Some(format!("seq {seq}").as_str()));
        match b.dead {
            None => {
                assert!(
                    entry.is_none(),
                    "{} must not be dead-lettered: {entry:?}",
                    b.what
                );
                assert!(
                    logged.is_none(),
                    "{} must not be logged FAILED: {logged:?}",
                    b.what
                );
            }
            Some((error, sqlstate)) => {
                let e = entry.unwrap_or_else(|| {
                    panic!("{} (seq {seq}) not in the DLQ: {listed:#?}", b.what)
                });
                assert_eq!(e["table"], "corpus", "{}", b.what);
                assert_eq!(e["original_subject"], corpus_subject.as_str(), "{}", b.what);
                assert_eq!(e["attempts"], 2, "{}", b.what);
                let got = e["error"].as_str().unwrap_or("");
                assert!(
                    got.contains(error),
                    "{}: error {got:?} lacks {error:?}",
                    b.what
                );
                assert_eq!(e["sqlstate"].as_str(), sqlstate, "{}: {e}", b.what);
                let (table, _, detail) =
                    logged.unwrap_or_else(|| panic!("{} has no FAILED row: {failed:#?}", b.what));
                assert_eq!(table, "corpus");
                let detail = detail.as_deref().unwrap_or("");
                assert!(
                    detail.contains(error) && detail.contains(&format!("stream sequence {seq}")),
                    "{}: {detail}",
                    b.what
                );
            }
        }
    }

    // The partial UPDATE is parked (a warning, no row); the DELETE left a
    // tombstone.
    let state = |id: i64| {
        let pool = local.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "select s.state::text from syncdata.row_state s join syncdata.table_state t on t.id = s.table_id \
                 where t.table_name = 'corpus' and s.key = $1",
            )
            .bind(id.to_string())
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        state(1007).await.as_deref(),
        Some("P"),
        "partial UPDATE parked"
    );
    assert_eq!(
        state(1008).await.as_deref(),
        Some("D"),
        "DELETE of a missing row leaves a tombstone"
    );
    assert_eq!(
        count(
            &local,
            "select count(*) from corpus where id in (1007, 1008)"
        )
        .await,
        0
    );
    let log = c.log();
    assert!(
        log.contains("WARN") && log.contains("partial UPDATEs wait (parked)"),
        "parking and deletes of missing rows are logged as warnings:\n{}",
        c.log_tail(40)
    );
    // The duplicates were applied once: every Applied record is counted in
    // rows_synced, so good corpus records + the parked UPDATE + the DELETE.
    let good_corpus = msgs
        .iter()
        .enumerate()
        .filter(|(n, (s, _))| s == &corpus_subject && !bad_at.contains(n))
        .count() as i64;
    let duplicates = 2;
    let synced = count(&local, "select coalesce(sum(rows_synced), 0)::int8 from data_sync_logs where status = 'SUCCESS' and table_name = 'corpus'").await;
    assert_eq!(
        synced,
        good_corpus - duplicates + 2,
        "each record applied once"
    );

    // An INSERT of the deleted key, older than the DELETE, arriving later:
    // the tombstone keeps it out.
    let late = publish_payloads(
        &names,
        &[(
            corpus_subject.clone(),
            rec(
                "corpus",
                "INSERT",
                Some(json!({"id": 1008, "label": "ghost"})),
                None,
                TOMBSTONE_VERSION - 1,
            ),
        )],
    )
    .await[0];
    support::wait_until(
        "the late INSERT is settled",
        Duration::from_secs(30),
        || settled_through(&names, "corpus", late),
    )
    .await;
    assert_eq!(
        count(&local, "select count(*) from corpus where id = 1008").await,
        0,
        "no resurrection"
    );
    assert_eq!(dlq_count(&names).await, n_dead as u64);

    // Fix the cause of the unknown-column dead letter and replay it by ID.
    let unknown_seq = bad_seq[1];
    let id = by_seq[&unknown_seq]["id"].as_u64().unwrap();
    ddl(&local, "alter table corpus add column nope integer").await;
    let out = cli_ok(&config, &["dlq", "replay", &id.to_string()]).await;
    assert!(out.contains("replayed 1 dead letters"), "{out}");
    support::wait_until(
        "the replayed record is applied",
        Duration::from_secs(30),
        || async {
            count(
                &local,
                "select count(*) from corpus where id = 1001 and nope = 7 and label = 'u'",
            )
            .await
                == 1
        },
    )
    .await;
    let listed = dlq_list(&config).await;
    assert_eq!(listed.len(), n_dead - 1);
    assert!(
        listed.iter().all(|e| e["original_sequence"] != unknown_seq),
        "replayed dead letter removed"
    );
    support::wait_until("drained after the replay", Duration::from_secs(30), || {
        drained(&names, &["corpus", "other"])
    })
    .await;
    assert_eq!(
        dlq_count(&names).await,
        (n_dead - 1) as u64,
        "the replay did not fail again"
    );

    // purge needs --yes.
    let out = cli(&config, &["dlq", "purge"]).await;
    assert!(!out.status.success(), "dlq purge without --yes must fail");
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    assert_eq!(
        dlq_count(&names).await,
        (n_dead - 1) as u64,
        "nothing purged without --yes"
    );
    let out = cli_ok(&config, &["dlq", "purge", "--yes"]).await;
    assert!(
        out.contains(&format!("purged {} dead letters", n_dead - 1)),
        "{out}"
    );
    assert!(dlq_list(&config).await.is_empty());
    assert_eq!(dlq_count(&names).await, 0);
    eprintln!(
        "bad_input_corpus_consumer_side took {:?}",
        started.elapsed()
    );
}

/// The corpus cases about the table itself: a whitelisted table that is
/// absent locally, and one whose primary key was dropped, both after
/// add-tables and before start. Their records are dead-lettered; the other
/// tables keep syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_corpus_absent_and_keyless_tables() {
    let started = Instant::now();
    let local = support::fresh_database("tables_local").await;
    ddl(
        &local,
        "create table keep (id bigint primary key, v text);
         create table ghost (id bigint primary key, v text);
         create table nokey (id bigint primary key, v text);",
    )
    .await;
    let (names, dir, config) = whitelisted(
        &local,
        "tables",
        "[consumer]\nbatch_size = 50\nmax_attempts = 2\nmax_backoff_ms = 500\n",
        &["keep", "ghost", "nokey"],
    )
    .await;
    ddl(
        &local,
        "drop table ghost; alter table nokey drop constraint nokey_pkey;",
    )
    .await;

    let mut msgs = Vec::new();
    for i in 1..=100u64 {
        msgs.push((
            subject_of(&names, "keep"),
            rec(
                "keep",
                "INSERT",
                Some(json!({"id": i, "v": format!("k{i}")})),
                None,
                100 + 3 * i,
            ),
        ));
        if i % 20 == 0 {
            msgs.push((
                subject_of(&names, "ghost"),
                rec(
                    "ghost",
                    "INSERT",
                    Some(json!({"id": i, "v": "g"})),
                    None,
                    101 + 3 * i,
                ),
            ));
            msgs.push((
                subject_of(&names, "nokey"),
                rec(
                    "nokey",
                    "INSERT",
                    Some(json!({"id": i, "v": "n"})),
                    None,
                    102 + 3 * i,
                ),
            ));
        }
    }
    let seqs = publish_payloads(&names, &msgs).await;
    let seq_of = |table: &str| -> Vec<u64> {
        let subject = subject_of(&names, table);
        msgs.iter()
            .zip(&seqs)
            .filter(|((s, _), _)| *s == subject)
            .map(|(_, &q)| q)
            .collect()
    };

    let mut c = start_consumer(dir.path(), &config);
    let through: Vec<(&str, u64)> = ["keep", "ghost", "nokey"]
        .into_iter()
        .map(|t| (t, *seq_of(t).last().unwrap()))
        .collect();
    wait_settled(&names, &through, &mut c, Duration::from_secs(60)).await;
    assert_eq!(
        count(&local, "select count(*) from keep where v = 'k' || id").await,
        100,
        "keep syncs on"
    );
    assert_eq!(count(&local, "select count(*) from nokey").await, 0);

    let listed = dlq_list(&config).await;
    assert_eq!(listed.len(), 10, "{listed:#?}");
    for (table, error) in [
        ("ghost", "table ghost not found locally"),
        ("nokey", "table nokey has no primary key"),
    ] {
        let mut got: Vec<u64> = listed
            .iter()
            .filter(|e| e["table"] == table)
            .map(|e| {
                let msg = e["error"].as_str().unwrap_or("");
                assert!(msg.contains(error), "{table}: {msg:?} lacks {error:?}");
                e["original_sequence"].as_u64().unwrap()
            })
            .collect();
        got.sort();
        assert_eq!(got, seq_of(table), "every record of {table} dead-lettered");
    }
    assert_eq!(failed_logs(&local).await.len(), 10);
    eprintln!(
        "bad_input_corpus_absent_and_keyless_tables took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 5. Replaying an old dead letter never overwrites newer data

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_of_an_old_record_never_overwrites_newer_data() {
    let started = Instant::now();
    let local = support::fresh_database("replay_local").await;
    ddl(
        &local,
        "create table docs (id bigint primary key, title text, body text)",
    )
    .await;
    let (names, dir, config) = whitelisted(
        &local,
        "replay",
        "[consumer]\nbatch_size = 100\nmax_attempts = 2\nmax_backoff_ms = 500\n",
        &["docs"],
    )
    .await;
    let subject = subject_of(&names, "docs");

    // Version 10: rows 1 and 2 with a column the local table lacks.
    let old = vec![
        (
            subject.clone(),
            rec(
                "docs",
                "INSERT",
                Some(json!({"id": 1, "title": "old", "body": "old", "extra": "x1"})),
                None,
                10,
            ),
        ),
        (
            subject.clone(),
            rec(
                "docs",
                "INSERT",
                Some(json!({"id": 2, "title": "old", "body": "old", "extra": "x2"})),
                None,
                11,
            ),
        ),
        (
            subject.clone(),
            rec(
                "docs",
                "INSERT",
                Some(json!({"id": 3, "title": "fine", "body": "fine"})),
                None,
                12,
            ),
        ),
    ];
    let seqs = publish_payloads(&names, &old).await;
    let mut c = start_consumer(dir.path(), &config);
    wait_settled(
        &names,
        &[("docs", seqs[2])],
        &mut c,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(dlq_count(&names).await, 2, "rows 1 and 2 dead-lettered");
    assert_eq!(count(&local, "select count(*) from docs").await, 1);

    // The column is added; newer versions arrive: row 1 rewritten, row 2
    // deleted.
    ddl(&local, "alter table docs add column extra text").await;
    let newer = vec![
        (
            subject.clone(),
            rec(
                "docs",
                "UPDATE",
                Some(json!({"id": 1, "title": "new", "body": "new", "extra": "y1"})),
                None,
                20,
            ),
        ),
        (
            subject.clone(),
            rec("docs", "DELETE", None, Some(json!({"id": 2})), 21),
        ),
    ];
    let seqs = publish_payloads(&names, &newer).await;
    wait_settled(
        &names,
        &[("docs", seqs[1])],
        &mut c,
        Duration::from_secs(60),
    )
    .await;
    let rows = || async {
        sqlx::query_as::<_, (i64, String, String, Option<String>)>(
            "select id, title, body, extra from docs order by id",
        )
        .fetch_all(&local.pool)
        .await
        .unwrap()
    };
    let want = vec![
        (1, "new".to_owned(), "new".to_owned(), Some("y1".to_owned())),
        (3, "fine".to_owned(), "fine".to_owned(), None),
    ];
    assert_eq!(
        rows().await,
        want,
        "the newer versions applied (DLQ: {:?})",
        dlq_list(&config).await
    );
    assert_eq!(
        dlq_count(&names).await,
        2,
        "the newer records were not dead-lettered"
    );

    // Replay both old dead letters: applied here, through the version
    // guard; nothing goes back into the shared stream.
    let before = support::js_stream_message_count(&support::nats_url(), &names.stream).await;
    let out = cli_ok(&config, &["dlq", "replay", "--table", "docs"]).await;
    assert!(out.contains("replayed 2 dead letters"), "{out}");
    let after = support::js_stream_message_count(&support::nats_url(), &names.stream).await;
    assert_eq!(after, before, "the replay republished nothing");
    assert_eq!(
        rows().await,
        want,
        "an old replayed record never overwrites newer data or resurrects a row"
    );
    assert_eq!(
        dlq_count(&names).await,
        0,
        "the replayed records were accepted (superseded), not dead-lettered again"
    );
    assert_eq!(
        failed_logs(&local).await.len(),
        2,
        "only the two original failures"
    );
    eprintln!("dlq_replay_of_an_old_record… took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// Hostile input (issue 21): records that once panicked a worker, and the
// supervision that restarts a worker that ends anyway.

/// An INSERT of `items` whose `name` is a lone UTF-16 surrogate escape: JSON
/// that serde_json's raw values accept, but no Unicode text.
fn lone_surrogate_record(id: u64, version: u64) -> Vec<u8> {
    format!(
        r#"{{"schema":"public","table":"items","op":"INSERT","lsn":"{}","seq":0,"data":{{"id":{id},"qty":1,"name":"\ud800"}}}}"#,
        lsn(version)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_surrogate_record_is_dead_lettered_and_its_table_keeps_flowing() {
    let local = support::fresh_database("surrogate_local").await;
    ddl(
        &local,
        "create table items (id bigint primary key, qty integer not null, name text)",
    )
    .await;
    let (names, dir, config) = whitelisted(
        &local,
        "surrogate",
        "[consumer]\nbatch_size = 50\nfetch_wait_ms = 100\nmax_attempts = 2\nmax_backoff_ms = 500\n",
        &["items"],
    )
    .await;
    let subject = subject_of(&names, "items");
    let mut msgs = Vec::new();
    for i in 1..=200u64 {
        if i == 101 {
            msgs.push((subject.clone(), lone_surrogate_record(100_000, 5)));
        }
        msgs.push((
            subject.clone(),
            rec(
                "items",
                "INSERT",
                Some(json!({"id": i, "qty": i, "name": format!("n{i}")})),
                None,
                10 + i,
            ),
        ));
    }
    let seqs = publish_payloads(&names, &msgs[..150]).await;
    let bad_seq = seqs[100];
    let mut c = start_consumer(dir.path(), &config);
    wait_settled(
        &names,
        &[("items", *seqs.last().unwrap())],
        &mut c,
        Duration::from_secs(60),
    )
    .await;
    // More records of the same table after it: they flow too.
    let later = publish_payloads(&names, &msgs[150..]).await;
    wait_settled(
        &names,
        &[("items", *later.last().unwrap())],
        &mut c,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(count(&local, "select count(*) from items").await, 200);
    assert_eq!(
        count(&local, "select count(*) from items where id = 100000").await,
        0
    );
    let dlq = dlq_messages(&names).await;
    assert_eq!(dlq.len(), 1, "exactly one dead letter");
    assert_eq!(&dlq[0].payload[..], &msgs[100].1[..], "the original record");
    let error = header(&dlq[0], H_ERROR).expect("error header");
    assert!(
        error.contains(r#"value of column "name" holds a lone UTF-16 surrogate escape \ud800"#),
        "{error}"
    );
    assert_eq!(header(&dlq[0], H_SEQUENCE), Some(bad_seq.to_string()));
    assert!(c.is_running(), "the consumer stopped:\n{}", c.log_tail(40));
    let log = c.log();
    assert!(!log.contains("panicked"), "a task panicked:\n{log}");
    assert!(!log.contains("restarting it"), "a worker ended:\n{log}");
}

/// Issue 21: a worker that ends (here: panics at its first two starts, by
/// the debug-only fault hook) is restarted, its table syncs, and `status`
/// shows the restarts; a worker that keeps failing stops the daemon with
/// an error (exit status not 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_is_restarted_and_shown_in_status() {
    let local = support::fresh_database("restart_local").await;
    ddl(
        &local,
        "create table items (id bigint primary key, qty integer not null, name text);
         create table other (id bigint primary key, v text);",
    )
    .await;
    let (names, dir, config) = whitelisted(
        &local,
        "restart",
        "[consumer]\nbatch_size = 50\nfetch_wait_ms = 100\nmax_backoff_ms = 2000\n",
        &["items", "other"],
    )
    .await;
    let items = subject_of(&names, "items");
    let other = subject_of(&names, "other");
    let mut msgs = Vec::new();
    for i in 1..=100u64 {
        msgs.push((
            items.clone(),
            rec(
                "items",
                "INSERT",
                Some(json!({"id": i, "qty": i, "name": "n"})),
                None,
                10 + i,
            ),
        ));
        msgs.push((
            other.clone(),
            rec(
                "other",
                "INSERT",
                Some(json!({"id": i, "v": "v"})),
                None,
                10 + i,
            ),
        ));
    }
    let seqs = publish_payloads(&names, &msgs).await;
    let mut c = Proc::spawn(
        "syncdata",
        &["start"],
        &config,
        &[
            ("RUST_LOG", "info"),
            ("RUST_BACKTRACE", "0"),
            ("SYNCDATA_FAULT_WORKER_PANICS", "public.items=2"),
        ],
        dir.path(),
    );
    wait_settled(
        &names,
        &[("items", seqs[198]), ("other", seqs[199])],
        &mut c,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(count(&local, "select count(*) from items").await, 100);
    assert_eq!(count(&local, "select count(*) from other").await, 100);
    let out = cli_ok(&config, &["status", "--json"]).await;
    let s: Json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let table = |name: &str| {
        s["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == name)
            .unwrap_or_else(|| panic!("no {name} in {s:#}"))
            .clone()
    };
    assert_eq!(table("items")["worker_restarts"], 2, "{s:#}");
    let why = table("items")["worker_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("panicked: injected worker failure"), "{why}");
    assert_eq!(table("other")["worker_restarts"], 0, "{s:#}");
    assert!(table("other")["worker_error"].is_null(), "{s:#}");
    let text_status = cli_ok(&config, &["status"]).await;
    assert!(
        text_status.contains("worker of items restarted 2 time(s)"),
        "{text_status}"
    );
    assert!(c.is_running(), "{}", c.log_tail(40));
    c.sigterm();
    let status = c.wait_exit(Duration::from_secs(30)).await.expect("stops");
    assert!(status.success(), "{status}\n{}", c.log_tail(40));

    // A worker that fails at every start: the daemon gives up, exit 1.
    let mut c = Proc::spawn(
        "syncdata",
        &["start"],
        &config,
        &[
            ("RUST_LOG", "info"),
            ("RUST_BACKTRACE", "0"),
            ("SYNCDATA_FAULT_WORKER_PANICS", "public.items=1000"),
        ],
        dir.path(),
    );
    // Nine quick failures, each restart after a backoff below 2 s.
    let status = c
        .wait_exit(Duration::from_secs(180))
        .await
        .unwrap_or_else(|| panic!("the daemon did not give up:\n{}", c.log_tail(40)));
    assert_eq!(status.code(), Some(1), "{}", c.log_tail(40));
    assert!(
        c.log()
            .contains("the worker of table items failed 9 times in a row"),
        "{}",
        c.log_tail(40)
    );
}

// ---------------------------------------------------------------------------
// A poison record in the middle of a chunk of 1,000 (docs/design.md
// "Delivery")

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_in_the_middle_of_a_1000_record_chunk_dead_letters_only_itself() {
    let local = support::fresh_database("chunkpoison_local").await;
    ddl(
        &local,
        "create table items (id bigint primary key, qty integer not null, name text)",
    )
    .await;
    let (names, dir, config) = whitelisted(&local, "chunkpoison", "[consumer]\nbatch_size = 1000\nfetch_wait_ms = 500\nmax_attempts = 2\nmax_backoff_ms = 500\n", &["items"]).await;

    // One signed message holding 1,000 records, the 501st of them poison.
    let subject = subject_of(&names, "items");
    let mut chunk = syncdata_core::chunk::ChunkBuilder::new();
    let mut records = Vec::new();
    for i in 1..=1000u64 {
        let r = if i == 501 {
            rec(
                "items",
                "INSERT",
                Some(json!({"id": 100_000, "qty": "not a number", "name": "bad"})),
                None,
                10 + i,
            )
        } else {
            rec(
                "items",
                "INSERT",
                Some(json!({"id": i, "qty": i, "name": format!("n{i}")})),
                None,
                10 + i,
            )
        };
        chunk.push(&r, i * 100..i * 100 + 99);
        records.push(r);
    }
    let payload = chunk.finish();
    let seqs = publish_payloads(&names, &[(subject.clone(), payload)]).await;
    let seq = seqs[0];

    let mut c = start_consumer(dir.path(), &config);
    wait_settled(&names, &[("items", seq)], &mut c, Duration::from_secs(90)).await;

    // The 999 good rows, exactly as sent; the bad one absent.
    assert_eq!(count(&local, "select count(*) from items").await, 999);
    assert_eq!(
        count(&local, "select count(*) from items where qty = id and name = 'n' || id and id between 1 and 1000 and id <> 501").await,
        999
    );

    // Exactly one dead letter: the bad record alone, with its place.
    let dlq = dlq_messages(&names).await;
    assert_eq!(dlq.len(), 1, "exactly one dead letter");
    let m = &dlq[0];
    assert_eq!(&m.payload[..], &records[500][..], "the poison record alone");
    assert_eq!(
        header(m, "Syncdata-Original-Chunk-Index").as_deref(),
        Some("500")
    );
    assert_eq!(header(m, H_SQLSTATE).as_deref(), Some("22P02"));
    assert_eq!(header(m, H_ATTEMPTS).as_deref(), Some("2"));
    assert_eq!(header(m, H_SUBJECT).as_deref(), Some(subject.as_str()));
    assert_eq!(header(m, H_SEQUENCE), Some(seq.to_string()));
    let failed = failed_logs(&local).await;
    assert_eq!(failed.len(), 1, "one FAILED row: {failed:?}");
    assert_eq!(
        failed[0].1.as_deref(),
        Some(format!("seq {seq} record 500").as_str())
    );

    // `dlq list` shows it like any dead letter; `dlq replay` checks it
    // against the signed chunk (still in the stream) and, the record being
    // bad, keeps it.
    let listed = dlq_list(&config).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["chunk_index"], json!(500), "{listed:?}");
    let out = cli(&config, &["dlq", "replay", "--table", "items"]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a still-bad record is kept");
    assert!(
        err.contains("kept") && !err.contains("signature") && !err.contains("signed chunk"),
        "kept for its own fault, not its signature: {err}"
    );
    // Fixed locally, the replay applies it.
    ddl(&local, "alter table items alter column qty type text").await;
    let out = cli(&config, &["dlq", "replay", "--table", "items"]).await;
    assert!(
        out.status.success(),
        "replayed after the fix: {}",
        text(&out.stderr)
    );
    assert_eq!(count(&local, "select count(*) from items").await, 1000);
    assert_eq!(dlq_count(&names).await, 0);

    // The chunk was acked: nothing pending, nothing awaiting an ack.
    let d = durable(&names, "items").await;
    assert_eq!((d.pending, d.ack_pending, d.ack_floor), (0, 0, seq));
}

// Consumers on one table's durable lock its bookkeeping rows in one order
// (docs/design.md "Apply invariants"; consumer/src/apply/target.rs)

/// A pgbench-like history on one table: a few hot keys updated over and
/// over, and new keys inserted, updated a few times and sometimes deleted,
/// their changes spread over the history. Whole rows, versions 1.., in
/// order.
fn hot_key_history(seed: u64, changes: u64) -> Vec<Vec<u8>> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let row = |aid: u64, v: u64| json!({"aid": aid, "bid": aid % 7, "abalance": v as i64 - 5000, "filler": format!("f{v}")});
    let mut out = Vec::new();
    let mut live: Vec<u64> = Vec::new();
    let mut next_new = 1000;
    let mut v = 0;
    while v < changes {
        v += 1;
        let r = match rng.random_range(0..10) {
            // Hot keys: 10 of them.
            0..=4 => {
                let aid = rng.random_range(1..=10);
                rec(
                    "accounts",
                    "UPDATE",
                    Some(row(aid, v)),
                    Some(json!({"aid": aid})),
                    v,
                )
            }
            5..=6 => {
                next_new += 1;
                live.push(next_new);
                rec("accounts", "INSERT", Some(row(next_new, v)), None, v)
            }
            7..=8 if !live.is_empty() => {
                // A recent new key: its bookkeeping is often still being
                // inserted by another consumer's batch.
                let from = live.len().saturating_sub(8);
                let aid = live[rng.random_range(from..live.len())];
                rec(
                    "accounts",
                    "UPDATE",
                    Some(row(aid, v)),
                    Some(json!({"aid": aid})),
                    v,
                )
            }
            _ if !live.is_empty() => {
                let from = live.len().saturating_sub(8);
                let aid = live.remove(rng.random_range(from..live.len()));
                rec("accounts", "DELETE", None, Some(json!({"aid": aid})), v)
            }
            _ => {
                let aid = rng.random_range(1..=10);
                rec("accounts", "INSERT", Some(row(aid, v)), None, v)
            }
        };
        out.push(r);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_on_hot_keys_never_deadlock_and_converge() {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    const DDL: &str = "create table accounts (aid bigint primary key, bid integer not null, abalance bigint not null, filler text)";
    let history = hot_key_history(16, 40_000);

    let expected_db = support::fresh_database("hotkeys_expected").await;
    ddl(&expected_db, DDL).await;
    let records: Vec<Record> = history.iter().map(|b| parse(b)).collect();
    workload::apply_in_order(&expected_db.pool, &records)
        .await
        .expect("reference apply");
    let expected = fingerprints_of(&expected_db, &["accounts"]).await.unwrap();
    assert!(expected[0].0 > 500, "non-trivial end state: {expected:?}");

    let local = support::fresh_database("hotkeys_local").await;
    ddl(&local, DDL).await;
    let (names, dir, config) = whitelisted(
        &local,
        "hotkeys",
        "[consumer]\nbatch_size = 8\nfetch_wait_ms = 50\n",
        &["accounts"],
    )
    .await;

    // Chunks of 40 records, in shuffled order (apply is order-free), some
    // twice: every consumer's batches touch the hot keys and each other's
    // new keys.
    let subject = subject_of(&names, "accounts");
    let mut chunks: Vec<(String, Vec<u8>)> = history
        .chunks(40)
        .enumerate()
        .map(|(n, part)| {
            let mut chunk = syncdata_core::chunk::ChunkBuilder::new();
            for (i, r) in part.iter().enumerate() {
                let at = (n * 40 + i) as u64 * 1000;
                chunk.push(r, at..at + 999);
            }
            (subject.clone(), chunk.finish())
        })
        .collect();
    let again: Vec<_> = chunks.iter().step_by(9).cloned().collect();
    chunks.extend(again);
    chunks.shuffle(&mut rand::rngs::StdRng::seed_from_u64(17));
    let mut consumers: Vec<Proc> = (0..3)
        .map(|_| start_consumer(dir.path(), &config))
        .collect();
    publish_payloads(&names, &chunks).await;

    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert_running(&mut consumers.iter_mut().collect::<Vec<_>>());
        let got = fingerprints_of(&local, &["accounts"]).await.unwrap();
        if got == expected && drained(&names, &["accounts"]).await {
            break;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = consumers.iter().map(|c| c.log_tail(30)).collect();
            panic!(
                "no convergence: expected {expected:?}, got {got:?}, durables {:?}\n{}",
                durables(&names).await,
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing dead-lettered or failed, and no batch ever lost a deadlock.
    assert_eq!(dlq_count(&names).await, 0);
    assert_eq!(failed_logs(&local).await, vec![]);
    for c in &consumers {
        let log = c.log();
        assert!(
            !log.contains("40P01") && !log.contains("deadlock"),
            "a consumer lost a deadlock:\n{}",
            c.log_tail(40)
        );
    }
    // Applied in many batches, side by side.
    let batches = count(
        &local,
        "select count(*) from data_sync_logs where status = 'SUCCESS'",
    )
    .await;
    assert!(batches >= 20, "only {batches} batches");
    let warnings = support::stop_all(&mut consumers, Duration::from_secs(30)).await;
    assert!(warnings.is_empty(), "graceful stop exits 0: {warnings:?}");
}
