//! Sanitization with real servers: `syncdata-producer` with a rules file
//! and a key, `syncdata start` into a local PostgreSQL, and the JetStream
//! stream in between.
//!
//! - canaries (emails, names, phones, a card number, an SSN inside jsonb,
//!   an API secret) never reach the stream or the target, in `data` or in
//!   `old_keys`; the excluded table never reaches the stream;
//! - orders still join their users after both ids are hashed, across a
//!   producer restart and across a second, independent run with the key;
//! - a column without a rule halts only its table (across a restart), and
//!   adding the rule resumes it with nothing lost or duplicated;
//! - `check-rules` reports every error class on a fixture schema;
//! - keyed rules without a key stop the producer at startup.

use syncdata_testkit::harness as support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::json;
use support::{Proc, TestDb, TestNames};

const KEY: &str = "sanitize-test-key-0123456789abcdef0123456789abcdef";

const TARGET_DDL: &str = r#"
CREATE TABLE users (
    id           bigint PRIMARY KEY,
    email        text NOT NULL UNIQUE,
    full_name    text,
    phone        text,
    card_number  text,
    address      text,
    profile      jsonb,
    plan         text,
    created_at   timestamptz
);
CREATE TABLE orders (
    id               bigint PRIMARY KEY,
    user_id          bigint,
    amount           numeric(12,2),
    shipping_address text,
    created_at       timestamptz
);
"#;

const RULES: &str = r#"
[tables.users]
key = ["id"]
[tables.users.columns]
id = { transform = "hmac", output = "integer", min = 1, max = 9007199254740991 }
email = { transform = "fake", kind = "email", unique = true }
full_name = { transform = "fake", kind = "name" }
phone = { transform = "mask", keep_last = 2 }
card_number = { transform = "mask", keep_last = 4 }
address = { transform = "fake", kind = "address" }
profile = { transform = "json", paths = [
    { path = "$.ssn", transform = "drop" },
    { path = "$.home.street", transform = "fake", kind = "address" },
] }
plan = "keep"
created_at = { transform = "date_shift", max_days = 30 }

[tables.orders]
key = ["id"]
[tables.orders.columns]
id = "keep"
user_id = { transform = "same_as", column = "public.users.id" }
amount = "keep"
shipping_address = { transform = "fake", kind = "address" }
created_at = { transform = "date_shift", max_days = 30, key = ["user_id"], domain = "public.users" }

[tables.api_keys]
mode = "exclude"
"#;

// ---------------------------------------------------------------------------
// A history with canaries

const FIRST: &[&str] = &["Zebulon", "Philomena", "Barnabus", "Octavia", "Thaddeus"];
const LAST: &[&str] = &["Quasimodo", "Fitzgibbon", "Wolfenstein", "Underhill"];

fn email(i: u64) -> String {
    format!(
        "{}.{}{i}@canarymail.test",
        FIRST[i as usize % FIRST.len()].to_lowercase(),
        LAST[i as usize % LAST.len()].to_lowercase()
    )
}

fn full_name(i: u64) -> String {
    format!(
        "{} {}",
        FIRST[i as usize % FIRST.len()],
        LAST[i as usize % LAST.len()]
    )
}

fn phone(i: u64) -> String {
    format!("+1-202-867-{:04}", 5000 + i)
}

fn card(i: u64) -> String {
    // 4111 1111 1111 1111 for the first user, distinct test-like numbers after.
    format!("411111111111{:04}", 1111 + i)
}

const SSN: &str = "078-05-1120";
const STREET: &str = "742 Evergreen Terrace";
const SHIP: &str = "1313 Mockingbird Lane";
const API_SECRET: &str = "sk_live_canary_4eC39HqLyjWDarjtT1zdp7dc";

fn canaries(users: u64) -> Vec<String> {
    let mut c: Vec<String> = vec![
        SSN.into(),
        "078051120".into(),
        STREET.into(),
        "Evergreen".into(),
        SHIP.into(),
        "Mockingbird".into(),
        API_SECRET.into(),
        "canarymail".into(),
        "4111111111111111".into(),
    ];
    c.extend(FIRST.iter().map(|s| s.to_string()));
    c.extend(LAST.iter().map(|s| s.to_string()));
    for i in 1..=users {
        c.push(email(i));
        c.push(phone(i));
        c.push(phone(i).replace('-', ""));
        c.push(card(i));
    }
    c
}

/// Builds JSON-lines records with increasing commit LSNs.
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

    fn push(
        &mut self,
        table: &str,
        op: &str,
        data: Option<serde_json::Value>,
        old: Option<serde_json::Value>,
    ) {
        self.lsn += 16;
        let mut r = json!({"schema": "public", "table": table, "op": op,
                           "lsn": format!("0/{:X}", self.lsn), "seq": 0,
                           "ts": "2026-02-05T10:31:00Z"});
        if let Some(d) = data {
            r["data"] = d;
        }
        if let Some(o) = old {
            r["old_keys"] = o;
        }
        self.lines.push(r.to_string());
    }

    fn user(&mut self, i: u64) {
        let profile = json!({"ssn": SSN, "home": {"street": STREET, "city": "Springfield"}, "vip": i.is_multiple_of(2)});
        self.push(
            "users",
            "INSERT",
            Some(json!({
                "id": i, "email": email(i), "full_name": full_name(i), "phone": phone(i),
                "card_number": card(i), "address": format!("{STREET}, apt {i}"),
                "profile": profile.to_string(), "plan": if i.is_multiple_of(3) { "pro" } else { "free" },
                "created_at": format!("2024-0{}-1{} 10:00:00+00", 1 + i % 9, i % 10),
            })),
            None,
        );
    }

    fn order(&mut self, id: u64, user: u64) {
        self.push(
            "orders",
            "INSERT",
            Some(json!({
                "id": id, "user_id": user, "amount": format!("{}.{:02}", id * 3, id % 100).parse::<serde_json::Number>().unwrap(),
                "shipping_address": format!("{SHIP}, {id}"), "created_at": "2025-06-01 12:30:00.5+02",
            })),
            None,
        );
    }

    fn api_key(&mut self, id: u64) {
        self.push(
            "api_keys",
            "INSERT",
            Some(json!({"id": id, "secret": API_SECRET, "owner": email(id)})),
            None,
        );
    }

    fn write(&self, archive: &Path, name: &str) {
        let tmp = archive.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, self.lines.join("\n") + "\n").unwrap();
        std::fs::rename(tmp, archive.join(name)).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Helpers

async fn target_db(tag: &str) -> TestDb {
    let db = support::fresh_database(tag).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(TARGET_DDL.to_owned()))
        .execute(&db.pool)
        .await
        .expect("target ddl");
    db
}

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    rules: PathBuf,
    names: TestNames,
}

fn setup(dir: &Path, db: &TestDb, archive: &Path, tag: &str, state: &str) -> Setup {
    std::fs::create_dir_all(dir).unwrap();
    let names = TestNames::new(tag);
    let rules = dir.join("rules.toml");
    if !rules.exists() {
        std::fs::write(&rules, RULES).unwrap();
    }
    let extra = format!(
        "[producer]\nmax_in_flight = 256\nrescan_ms = 200\nrules_file = {:?}\nrules_reload_ms = 200\nstate_dir = {:?}\n\
         [consumer]\nbatch_size = 200\nfetch_wait_ms = 100\n",
        rules.display().to_string(),
        dir.join(state).display().to_string()
    );
    let config = support::write_config(dir, db, &names, &support::nats_url(), archive, &extra);
    Setup {
        dir: dir.to_owned(),
        config,
        rules,
        names,
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

fn add_tables(s: &Setup) {
    let mut p = syncdata(s, &["add-tables", "users", "orders"]);
    let status = p
        .wait_timeout(Duration::from_secs(60))
        .expect("add-tables ends");
    assert!(status.success(), "add-tables failed:\n{}", p.log());
}

async fn stop(p: &mut Proc) {
    p.sigterm();
    let status = p
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("stops on SIGTERM");
    assert!(status.success(), "graceful stop exits 0:\n{}", p.log());
}

/// Every message in the stream: (subject, payload).
async fn stream_messages(names: &TestNames) -> Vec<(String, Vec<u8>)> {
    support::stream_messages(&support::nats_url(), &names.stream).await
}

/// Records in the stream (a chunk counts its records).
async fn stream_count(names: &TestNames) -> u64 {
    support::stream_record_count(&support::nats_url(), &names.stream).await
}

/// Records per table in the stream.
async fn per_table(names: &TestNames) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for (_, payload) in stream_messages(names).await {
        let r = syncdata_core::record::Record::parse(&payload).unwrap();
        *m.entry(r.table).or_default() += 1;
    }
    m
}

async fn count(db: &TestDb, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
        .fetch_one(&db.pool)
        .await
        .unwrap_or(-1)
}

/// Every row of `table` as JSON text, ordered by its key.
async fn rows(db: &TestDb, table: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select row_to_json(t)::text from {table} t order by id"
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

fn assert_no_canary(what: &str, text: &str, canaries: &[String]) {
    let lower = text.to_lowercase();
    for c in canaries {
        assert!(
            !lower.contains(&c.to_lowercase()),
            "canary {c:?} found in {what}: {text}"
        );
    }
}

async fn producer_status(s: &Setup) -> serde_json::Value {
    let mut p = Proc::spawn(
        "syncdata-producer",
        &["status", "--json"],
        &s.config,
        &[],
        &s.dir,
    );
    p.wait_exit(Duration::from_secs(20))
        .await
        .expect("status ends");
    let out = p.log();
    let start = out.find('{').unwrap_or_else(|| panic!("no JSON in {out}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The consumer's `status --json --check`: (exit code, JSON).
async fn consumer_status(s: &Setup) -> (Option<i32>, serde_json::Value) {
    let out = support::run_cli("syncdata", &s.config, &["status", "--json", "--check"], &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// The state of `table` in the consumer's status.
fn table_state(status: &serde_json::Value, table: &str) -> serde_json::Value {
    status["tables"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["table"] == table))
        .unwrap_or_else(|| panic!("{table} not in {status:#}"))
        .clone()
}

// ---------------------------------------------------------------------------
// Tests

const USERS: u64 = 40;
const ORDERS: u64 = 120;

/// Part one: all users, half of the orders, a protected table. Part two:
/// the other orders, an email change, a key-changing UPDATE with a full old
/// image, a DELETE.
fn canary_history() -> (History, History) {
    let mut a = History::new(0x1000);
    for i in 1..=USERS {
        a.user(i);
        a.api_key(i);
    }
    for o in 1..=ORDERS / 2 {
        a.order(o, 1 + o % (USERS - 2));
    }
    let mut b = History::new(0x100000);
    for o in ORDERS / 2 + 1..=ORDERS {
        b.order(o, 1 + o % (USERS - 2));
    }
    // Users USERS-1 and USERS have no orders: one changes its key (the old
    // image is complete, as with REPLICA IDENTITY FULL), one is deleted.
    b.push(
        "users",
        "UPDATE",
        Some(json!({"id": 1, "email": "zebulon.new@canarymail.test", "full_name": full_name(1), "phone": phone(1),
                    "card_number": card(1), "address": STREET, "profile": null, "plan": "pro",
                    "created_at": "2024-01-11 10:00:00+00"})),
        Some(json!({"id": 1})),
    );
    let u = USERS - 1;
    b.push(
        "users",
        "UPDATE",
        Some(
            json!({"id": 1000 + u, "email": email(u), "full_name": full_name(u), "phone": phone(u),
                    "card_number": card(u), "address": STREET, "profile": null, "plan": "free",
                    "created_at": "2024-02-12 10:00:00+00"}),
        ),
        Some(
            json!({"id": u, "email": email(u), "full_name": full_name(u), "phone": phone(u),
                    "card_number": card(u), "address": STREET, "profile": null, "plan": "free",
                    "created_at": "2024-02-12 10:00:00+00"}),
        ),
    );
    b.push("users", "DELETE", None, Some(json!({"id": USERS})));
    b.api_key(USERS + 1);
    (a, b)
}

async fn wait_applied(s: &Setup, db: &TestDb, users: i64, orders: i64, logs: &[&Proc]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (u, o) = (count(db, "users").await, count(db, "orders").await);
        let pending = {
            let js = jetstream::new(support::nats_connect(&support::nats_url()).await);
            let mut pending = 0;
            if let Ok(stream) = js.get_stream(&s.names.stream).await {
                let mut consumers = stream.consumers();
                while let Some(Ok(c)) = consumers.next().await {
                    pending += c.num_pending + c.num_ack_pending as u64;
                }
            }
            pending
        };
        if u == users && o == orders && pending == 0 {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let tails: Vec<String> = logs.iter().map(|p| p.log()).collect();
            panic!(
                "target not complete: users {u}/{users}, orders {o}/{orders}, pending {pending}\n{}",
                tails.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_never_leave_and_joins_hold_across_restarts_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let (part1, part2) = canary_history();
    part1.write(&archive, "changes-000001.jsonl");
    let canaries = canaries(USERS);
    // Publishable records: everything but api_keys.
    let part1_published = USERS + ORDERS / 2;
    let total_published = part1_published + ORDERS / 2 + 3;
    let (users_left, orders_left) = (USERS as i64 - 1, ORDERS as i64);

    // Run 1: the producer is stopped after part one and restarted for part two.
    let db1 = target_db("san_run1").await;
    let s1 = setup(&tmp.path().join("run1"), &db1, &archive, "san1", "state1");
    add_tables(&s1);
    let mut p = producer(&s1);
    support::wait_until("part one published", Duration::from_secs(60), || async {
        stream_count(&s1.names).await >= part1_published
    })
    .await;
    stop(&mut p).await;
    assert!(p.log().contains("sanitization rules loaded"), "{}", p.log());
    part2.write(&archive, "changes-000002.jsonl");
    let p2 = producer(&s1);
    let consumer = syncdata(&s1, &["start"]);
    wait_applied(&s1, &db1, users_left, orders_left, &[&p2, &consumer]).await;
    assert_eq!(
        stream_count(&s1.names).await,
        total_published,
        "each record once"
    );

    // Nothing personal in any message, and the protected table never left.
    let messages = stream_messages(&s1.names).await;
    assert_eq!(messages.len() as u64, total_published);
    for (subject, payload) in &messages {
        assert!(!subject.contains("api_keys"), "{subject}");
        let text = String::from_utf8_lossy(payload);
        assert_no_canary(&format!("message on {subject}"), &text, &canaries);
        let r = syncdata_core::record::Record::parse(payload).unwrap();
        assert_ne!(r.table, "api_keys");
        if let Some(old) = &r.old_keys {
            assert_no_canary("old_keys", &format!("{old:?}"), &canaries);
        }
    }
    let js = jetstream::new(support::nats_connect(&support::nats_url()).await);
    let stream = js.get_stream(&s1.names.stream).await.unwrap();
    let api_subject =
        syncdata_core::subject::table_subject(&s1.names.subject_prefix, "public", "api_keys");
    assert!(
        stream
            .get_last_raw_message_by_subject(&api_subject)
            .await
            .is_err(),
        "the excluded table has no message"
    );

    // Nothing personal in the target either; keys are pseudonyms that join.
    let users1 = rows(&db1, "users").await;
    let orders1 = rows(&db1, "orders").await;
    for r in users1.iter().chain(&orders1) {
        assert_no_canary("a target row", r, &canaries);
    }
    let raw_ids: i64 = sqlx::query_scalar("select count(*) from users where id <= 2000")
        .fetch_one(&db1.pool)
        .await
        .unwrap();
    assert_eq!(raw_ids, 0, "no user keeps its real id");
    let orphans: i64 = sqlx::query_scalar(
        "select count(*) from orders o left join users u on u.id = o.user_id where u.id is null",
    )
    .fetch_one(&db1.pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "every order joins its user");
    let profiles: Vec<String> =
        sqlx::query_scalar("select profile::text from users where profile is not null")
            .fetch_all(&db1.pool)
            .await
            .unwrap();
    assert!(!profiles.is_empty());
    assert!(
        profiles
            .iter()
            .all(|p| p.contains("Springfield") && !p.contains("ssn")),
        "{profiles:?}"
    );
    let cards: Vec<String> = sqlx::query_scalar("select card_number from users")
        .fetch_all(&db1.pool)
        .await
        .unwrap();
    assert!(
        cards.iter().all(|c| c.starts_with("************")),
        "{cards:?}"
    );
    drop(consumer);
    drop(p2);

    // Run 2: another stream, another state, another target, the same key:
    // the same values, row for row.
    let db2 = target_db("san_run2").await;
    let s2 = setup(&tmp.path().join("run2"), &db2, &archive, "san2", "state2");
    add_tables(&s2);
    let p3 = producer(&s2);
    let consumer2 = syncdata(&s2, &["start"]);
    wait_applied(&s2, &db2, users_left, orders_left, &[&p3, &consumer2]).await;
    assert_eq!(rows(&db2, "users").await, users1, "same key, same users");
    assert_eq!(rows(&db2, "orders").await, orders1, "same key, same orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_without_a_rule_halts_only_its_table_until_a_rule_is_added() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let db = target_db("san_halt").await;
    let s = setup(&tmp.path().join("run"), &db, &archive, "sanhalt", "state");

    let mut a = History::new(0x1000);
    for i in 1..=20 {
        a.user(i);
        a.order(i, i);
    }
    a.write(&archive, "changes-000001.jsonl");
    // An ALTER TABLE added `ssn`; the rules do not know it yet. After it:
    // more users (held) and orders (published), and a table with no entry.
    let mut b = History::new(0x20000);
    b.push(
        "users",
        "INSERT",
        Some(json!({"id": 21, "email": email(21), "full_name": full_name(21), "ssn": SSN, "plan": "free"})),
        None,
    );
    b.order(21, 21);
    for i in 22..=30 {
        b.user(i);
        b.order(i, i);
        b.push(
            "audit_log",
            "INSERT",
            Some(json!({"id": i, "who": email(i)})),
            None,
        );
    }
    b.write(&archive, "changes-000002.jsonl");

    let mut p = producer(&s);
    support::wait_until(
        "orders published past the halt",
        Duration::from_secs(60),
        || async { per_table(&s.names).await.get("orders") == Some(&30) },
    )
    .await;
    let counts = per_table(&s.names).await;
    assert_eq!(
        counts.get("users"),
        Some(&20),
        "users stop at the new column: {counts:?}"
    );
    assert_eq!(counts.get("audit_log"), None, "{counts:?}");
    let log = p.log();
    assert!(
        log.contains(r#"table public.users: column \"ssn\" has no rule"#)
            || log.contains(r#"table public.users: column "ssn" has no rule"#),
        "{log}"
    );
    assert!(
        log.contains("public.audit_log has no entry in the rules file"),
        "{log}"
    );
    assert!(!log.contains(SSN), "values never reach the log");

    // The halt survives a restart (it is in the checkpoint).
    stop(&mut p).await;
    let status = producer_status(&s).await;
    let halted: Vec<String> = status["halted_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{}.{}",
                h["schema"].as_str().unwrap(),
                h["table"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(halted, ["public.audit_log", "public.users"], "{status}");
    let mut c = History::new(0x30000);
    for i in 31..=35 {
        c.user(i);
        c.order(i, i);
    }
    c.write(&archive, "changes-000003.jsonl");
    let p = producer(&s);
    support::wait_until(
        "orders of the third file",
        Duration::from_secs(60),
        || async { per_table(&s.names).await.get("orders") == Some(&35) },
    )
    .await;
    assert_eq!(per_table(&s.names).await.get("users"), Some(&20));

    // The consumer's side learns of the halt: `users` is "halted at the
    // producer" with the reason, and `status --check` asks for attention.
    add_tables(&s);
    support::wait_until(
        "the consumer sees users halted at the producer",
        Duration::from_secs(30),
        || async {
            table_state(&consumer_status(&s).await.1, "users")["state"] == "halted_at_producer"
        },
    )
    .await;
    let (code, status) = consumer_status(&s).await;
    assert_eq!(code, Some(2), "--check: attention: {status:#}");
    let users = table_state(&status, "users");
    assert!(
        users["producer_halt"]
            .as_str()
            .is_some_and(|r| r.contains("ssn") && r.contains("has no rule")),
        "{users:#}"
    );
    assert_ne!(
        table_state(&status, "orders")["state"],
        "halted_at_producer"
    );
    assert!(
        status["attention"].as_array().unwrap().iter().any(|a| a
            .as_str()
            .unwrap()
            .starts_with("users: halted at the producer")),
        "{status:#}"
    );
    let text = support::run_cli("syncdata", &s.config, &["status"], &[]).await;
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("halted at the producer"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // The rule arrives (and a decision for audit_log): users resume from
    // their first held record; audit_log stays out.
    let rules = std::fs::read_to_string(&s.rules)
        .unwrap()
        .replace("plan = \"keep\"\n", "plan = \"keep\"\nssn = \"drop\"\n")
        + "\n[tables.audit_log]\nmode = \"exclude\"\n";
    std::fs::write(&s.rules, rules).unwrap();
    support::wait_until("every user published", Duration::from_secs(60), || async {
        per_table(&s.names).await.get("users") == Some(&35)
    })
    .await;
    support::wait_until("no table halted", Duration::from_secs(30), || async {
        producer_status(&s).await["halted_tables"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    })
    .await;
    support::wait_until(
        "the consumer sees the halt gone",
        Duration::from_secs(30),
        || async { table_state(&consumer_status(&s).await.1, "users")["producer_halt"].is_null() },
    )
    .await;

    // Every record once, none lost; the new column is dropped.
    let messages = stream_messages(&s.names).await;
    let mut seen = std::collections::HashSet::new();
    let mut ids = std::collections::BTreeSet::new();
    for (_, payload) in &messages {
        let r = syncdata_core::record::Record::parse(payload).unwrap();
        assert!(
            seen.insert((r.table.clone(), r.lsn, r.seq)),
            "duplicate {r:?}"
        );
        assert_ne!(r.table, "audit_log");
        assert_no_canary(
            "a message",
            &String::from_utf8_lossy(payload),
            &canaries(35),
        );
        if r.table == "users" {
            let d = r.data.as_ref().unwrap();
            ids.insert(d["id"].raw().to_owned());
            assert!(!d.contains_key("ssn"), "the new column is dropped");
        }
    }
    assert_eq!(ids.len(), 35, "35 distinct pseudonymous users");
    assert_eq!(messages.len(), 35 + 35);
    assert!(p.log().contains("halted table resumed"), "{}", p.log());

    // And they apply: the consumer gets everything.
    let consumer = syncdata(&s, &["start"]);
    wait_applied(&s, &db, 35, 35, &[&p, &consumer]).await;
}

const FIXTURE_DDL: &str = r#"
CREATE TABLE users (
    id         bigint PRIMARY KEY,
    ext_id     uuid NOT NULL UNIQUE,
    email      text NOT NULL UNIQUE,
    nickname   varchar(8),
    phone      text NOT NULL,
    age        integer,
    score      integer,
    rating     integer,
    born       date,
    prefs      jsonb,
    country    char(2),
    secret     text NOT NULL,
    created_at timestamptz
);
CREATE TABLE orders (
    id        bigint PRIMARY KEY,
    user_id   bigint REFERENCES users(id),
    buyer_ext uuid REFERENCES users(ext_id),
    total     numeric(10,2) NOT NULL,
    code      int4 UNIQUE,
    note      text
);
CREATE TABLE audit (id bigint PRIMARY KEY, what text);
CREATE TABLE tags (name text PRIMARY KEY);
"#;

async fn check_rules(dir: &Path, db: &TestDb, rules: &str, extra: &[&str]) -> (bool, String) {
    let path = dir.join(format!("rules-{}.toml", support::unique("r")));
    std::fs::write(&path, rules).unwrap();
    let path_s = path.display().to_string();
    let mut args = vec!["check-rules", "--rules", &path_s, "--source", &db.url];
    args.extend(extra);
    // No configuration needed when both are given on the command line.
    let mut p = Proc::spawn(
        "syncdata-producer",
        &args,
        Path::new("/nonexistent/config.toml"),
        &[],
        dir,
    );
    let status = p
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("check-rules ends");
    (status.success(), p.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rules_reports_every_error_class() {
    let db = support::fresh_database("san_check").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(FIXTURE_DDL.to_owned()))
        .execute(&db.pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let good = r#"
[tables.users]
key = ["id"]
[tables.users.columns]
id = { transform = "hmac", output = "integer" }
ext_id = { transform = "hmac", output = "uuid" }
email = { transform = "fake", kind = "email", unique = true }
nickname = { transform = "fake", kind = "first_name", max_length = 8 }
phone = { transform = "mask", keep_last = 2 }
age = "null"
score = { transform = "hmac", output = "integer", min = 0, max = 100 }
born = { transform = "date_shift", max_days = 30 }
prefs = { transform = "json", paths = [{ path = "$.email", transform = "drop" }] }
country = { transform = "const", value = "XX" }
rating = { transform = "const", value = 3 }
secret = { transform = "const", value = "redacted" }
created_at = "keep"
[tables.orders.columns]
id = "keep"
user_id = { transform = "same_as", column = "public.users.id" }
buyer_ext = { transform = "hmac", output = "uuid", domain = "public.users.ext_id" }
total = "keep"
code = "keep"
note = "drop"
[tables.tags.columns]
name = "keep"
[tables.audit]
mode = "exclude"
"#;
    let (ok, out) = check_rules(dir.path(), &db, good, &[]).await;
    assert!(ok, "a correct rules file passes:\n{out}");
    assert!(out.contains("rules OK"), "{out}");

    let bad = r#"
[tables.users]
key = ["id"]
[tables.users.columns]
id = { transform = "hmac", output = "integer" }
ext_id = { transform = "hmac", output = "integer" }
email = { transform = "fake", kind = "email" }
nickname = { transform = "fake", kind = "name" }
phone = "null"
age = { transform = "scramble" }
score = { transform = "hmac", output = "integer", bits = 12 }
born = { transform = "date_shift", max_days = 30 }
prefs = { transform = "json", paths = [{ path = "$.email", transform = "drop" }] }
country = { transform = "const", value = "FRA" }
rating = { transform = "const", value = "high" }
created_at = { transform = "mask" }
shoe_size = "keep"
[tables.orders.columns]
id = "keep"
user_id = { transform = "hmac", output = "integer" }
buyer_ext = { transform = "hmac", output = "uuid" }
total = "null"
code = { transform = "hmac", output = "integer", min = 1, max = 1000 }
[tables.tags.columns]
name = { transform = "mask", keep_first = 1 }
[tables.ghosts.columns]
id = "keep"
"#;
    let (ok, out) = check_rules(dir.path(), &db, bad, &[]).await;
    assert!(!ok, "errors exit non-zero:\n{out}");
    let expected = [
        // a column without a rule
        "error: public.users.secret: column (text) has no rule",
        "error: public.orders.note: column (text) has no rule",
        // unknown transform / parameter
        "error: public.users.age: unknown transform \"scramble\"",
        "error: public.users.score: unknown parameter \"bits\" for transform hmac",
        // null on NOT NULL
        "error: public.users.phone: null rule on a NOT NULL column",
        "error: public.orders.total: null rule on a NOT NULL column",
        // non-injective on primary key / unique
        "error: public.tags.name: non-injective transform mask on a primary-key column (tags_pkey)",
        "error: public.users.email: non-injective transform fake on a unique column (users_email_key)",
        "error: public.orders.code: non-injective transform hmac (only 10 bits of output) on a unique column (orders_code_key)",
        // type mismatches
        "error: public.users.ext_id: type mismatch: hmac integer output cannot go into a uuid column",
        "error: public.users.nickname: type mismatch: fake Name values reach",
        "error: public.users.created_at: type mismatch: mask works on text; a timestamp with time zone column cannot hold its output",
        "error: public.users.country: type mismatch: const value has 3 characters; character(2) holds 2",
        "error: public.users.rating: type mismatch: const value is not a valid integer: invalid input syntax for type integer",
        // foreign keys that would no longer join
        "error: public.orders.user_id: foreign key orders_user_id_fkey to public.users.id would no longer join: it hashes in domain \"public.orders.user_id\", the referenced column in \"public.users.id\": add domain = \"public.users.id\"",
        "error: public.orders.buyer_ext: foreign key orders_buyer_ext_fkey to public.users.ext_id would no longer join: it uses hmac uuid",
        // a replicated table the source does not have
        "error: public.ghosts: replicated table does not exist in the source",
        // warnings
        "warning: public.users.shoe_size: rule for a column the source does not have",
        "warning: public.audit: no entry in the rules file",
    ];
    for e in expected {
        assert!(out.contains(e), "missing {e:?} in:\n{out}");
    }

    // JSON output for scripts.
    let (ok, out) = check_rules(dir.path(), &db, bad, &["--json"]).await;
    assert!(!ok);
    let start = out.find('{').unwrap();
    let end = out.rfind('}').unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&out[start..=end]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["errors"].as_u64(), Some(17), "{v}");
    assert!(v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["at"] == "public.users.phone" && p["severity"] == "error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_rules_without_a_key_or_bad_rules_stop_the_producer() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let db = support::fresh_database("san_nokey").await;
    let s = setup(tmp.path(), &db, &archive, "sannokey", "state");
    let mut p = Proc::spawn("syncdata-producer", &["run"], &s.config, &[], tmp.path());
    let status = p.wait_exit(Duration::from_secs(30)).await.expect("exits");
    assert!(!status.success());
    assert!(p.log().contains("SYNCDATA_SANITIZE_KEY"), "{}", p.log());

    let mut p = Proc::spawn(
        "syncdata-producer",
        &["run"],
        &s.config,
        &[("SYNCDATA_SANITIZE_KEY", "too-short")],
        tmp.path(),
    );
    let status = p.wait_exit(Duration::from_secs(30)).await.expect("exits");
    assert!(!status.success());
    assert!(p.log().contains("at least 32 are required"), "{}", p.log());

    std::fs::write(&s.rules, "[tables.users.columns]\nid = \"scramble\"\n").unwrap();
    let mut p = producer(&s);
    let status = p.wait_exit(Duration::from_secs(30)).await.expect("exits");
    assert!(!status.success());
    assert!(
        p.log().contains("public.users.id: unknown transform"),
        "{}",
        p.log()
    );
    assert_eq!(stream_count(&s.names).await, 0);
}

/// Issue 21: with a rules file, a lone surrogate escape panicked the
/// producer's main task (a crash loop: the checkpoint never passed the
/// line), directly or inside a jsonb string under the `json` transform.
/// Both records are quarantined with a clear reason, the table is not
/// halted, and the records around them are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_surrogates_are_quarantined_with_rules_and_the_table_goes_on() {
    let db = support::fresh_database("san_surrogate").await;
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::write(
        tmp.path().join("rules.toml"),
        r#"
[tables.t.columns]
id = "keep"
name = { transform = "mask", keep_first = 1 }
j = { transform = "json", paths = [{ path = "$.a", transform = "mask" }] }
"#,
    )
    .unwrap();
    let s = setup(tmp.path(), &db, &archive, "san_surrogate", "state");
    let good = |i: u32| {
        format!(
            r#"{{"table":"t","op":"INSERT","lsn":"0/{:X}","seq":0,"data":{{"id":{i},"name":"n{i}","j":"{{\"a\": \"secret\"}}"}}}}"#,
            100 + i
        )
    };
    let bad = [
        (
            r#"{"table":"t","op":"INSERT","lsn":"0/1","seq":0,"data":{"id":50,"name":"\ud800","j":null}}"#,
            r#"value of column \"name\" holds a lone UTF-16 surrogate escape \\ud800"#,
        ),
        (
            r#"{"table":"t","op":"INSERT","lsn":"0/2","seq":0,"data":{"id":51,"name":"x","j":"{\"a\": \"\\udc00\"}"}}"#,
            r#"json value of column \"j\" holds a lone UTF-16 surrogate escape \\udc00"#,
        ),
    ];
    let mut lines = Vec::new();
    for (i, (line, _)) in bad.iter().enumerate() {
        lines.push(good(2 * i as u32));
        lines.push((*line).to_owned());
        lines.push(good(2 * i as u32 + 1));
    }
    std::fs::write(
        archive.join("changes-000001.jsonl"),
        lines.join("\n") + "\n",
    )
    .unwrap();
    let mut p = producer(&s);
    support::wait_until(
        "good records published",
        Duration::from_secs(60),
        || async { stream_count(&s.names).await >= 4 },
    )
    .await;
    let v = producer_status(&s).await;
    assert_eq!(v["quarantined"].as_u64(), Some(2), "{v}");
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
    // Published sanitized, and nothing else.
    let msgs = stream_messages(&s.names).await;
    assert_eq!(msgs.len(), 4);
    for (_, payload) in &msgs {
        let text = String::from_utf8_lossy(payload);
        assert!(!text.contains("secret"), "{text}");
    }
    stop(&mut p).await;
    let log = p.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("table halted"), "{log}");
}
