//! The trust boundary's data-protection half (issue 13, "Must hold" 2-7):
//! dead letters per destination, fail-closed sanitization, owner-only files,
//! no credentials and no column values in output, logs, dead-letter headers
//! or `data_sync_logs`, and the whitelist deny-list. Real servers only.

use syncdata_testkit::harness as support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use serde_json::{json, Value as Json};
use support::{PgServer, Proc, TestNames};
use syncdata_core::record::Record;
use syncdata_core::subject::table_subject;
use syncdata_testkit::workload::{self, WorkloadSpec};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Runs `bin args` to completion with `DATA_SYNC_CONFIG=config`; returns
/// (success, stdout, stderr).
async fn run(
    bin: &str,
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::from(support::command(&support::bin(bin)));
    cmd.args(args)
        .env("DATA_SYNC_CONFIG", config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{bin} {args:?} did not finish within 90 s"))
        .unwrap_or_else(|e| panic!("cannot run {bin} {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn syncdata_ok(config: &Path, args: &[&str]) -> String {
    let (ok, out, err) = run("syncdata", config, args, &[]).await;
    assert!(ok, "syncdata {args:?} failed:\n{out}\n{err}");
    out
}

async fn dlq_list(config: &Path) -> Vec<Json> {
    let out = syncdata_ok(config, &["dlq", "list", "--json"]).await;
    match serde_json::from_str(&out) {
        Ok(Json::Array(v)) => v,
        other => panic!("dlq list --json printed no JSON array ({other:?}):\n{out}"),
    }
}

async fn js() -> jetstream::Context {
    jetstream::new(support::nats_connect(&support::nats_url()).await)
}

/// Records in a stream (a chunk counts its records); 0 while it does not
/// exist.
async fn stream_messages(name: &str) -> u64 {
    support::stream_record_count(&support::nats_url(), name).await
}

/// Every message of a stream, in order.
async fn all_messages(name: &str) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let js = js().await;
    let mut s = js.get_stream(name).await.expect("stream");
    let state = s.info().await.expect("stream info").state.clone();
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

/// Every file and directory under `root` (itself included) whose mode has a
/// group or other bit.
fn exposed(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bad.push(format!("{} {:o}", p.display(), mode));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    bad
}

fn count_files(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            n += 1;
        }
    }
    n
}

/// The shipped rules of the local stack and the demo.
fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/config/rules.toml")
}

/// Spawns `bin args` under `umask 022` (a normal umask: files would be
/// world-readable if syncdata relied on it).
fn spawn_umask_022(
    bin: &str,
    args: &[&str],
    config: &Path,
    env: &[(&str, &str)],
    logs: &Path,
) -> Proc {
    let program = support::bin(bin);
    let mut sh_args = vec![
        "-c",
        "umask 022 && exec \"$0\" \"$@\"",
        program.to_str().unwrap(),
    ];
    sh_args.extend(args);
    // Through sh, the harness cannot tell the producer: its NATS role here.
    let role = (bin == "syncdata-producer").then(|| support::NatsRole::Producer.credentials());
    let mut all: Vec<(&str, &str)> = Vec::new();
    if let Some((user, password)) = &role {
        all.push(("NATS_USER", user));
        all.push(("NATS_PASSWORD", password));
    }
    all.extend_from_slice(env);
    Proc::spawn_program(Path::new("/bin/sh"), &sh_args, config, &all, logs)
}

// ---------------------------------------------------------------------------
// 2 + 6: dead letters per destination; no values in logs, headers, tables
// ---------------------------------------------------------------------------

const ITEMS_DDL: &str = "create table items (id bigint primary key, qty integer, note text)";

fn rec(id: u64, data: Json, version: u64) -> Vec<u8> {
    let mut d = data;
    d["id"] = json!(id);
    serde_json::to_vec(&json!({
        "schema": "public", "table": "items", "op": "INSERT",
        "lsn": format!("0/{version:X}"), "seq": 0, "data": d
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_has_its_own_dead_letters_and_none_holds_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let names = TestNames::new("dlqdest");
    let a = support::fresh_database("dlq_a").await;
    let b = support::fresh_database("dlq_b").await;
    let extra = "[consumer]\nmax_attempts = 1\nmax_backoff_ms = 300\nfetch_wait_ms = 100\n";
    let mut configs = Vec::new();
    for (tag, db) in [("a", &a), ("b", &b)] {
        sqlx::raw_sql(ITEMS_DDL).execute(&db.pool).await.unwrap();
        let cfg = support::write_config(
            &dir.path().join(tag),
            db,
            &names,
            &support::nats_url(),
            &dir.path().join("archive"),
            extra,
        );
        syncdata_ok(&cfg, &["add-tables", "items"]).await;
        configs.push(cfg);
    }
    let (cfg_a, cfg_b) = (&configs[0], &configs[1]);

    // Good rows, and three bad records whose values must never leave the
    // local database: a type mismatch, a NUL byte, and a string imitating
    // the end of serde's quoting in a record that does not parse.
    let subject = table_subject(&names.subject_prefix, "public", "items");
    let mut payloads = Vec::new();
    for i in 1..=20u64 {
        payloads.push(rec(i, json!({"qty": i, "note": "ok"}), 100 + i));
    }
    payloads.push(rec(
        1001,
        json!({"qty": "CANARY-TYPE-7f3a", "note": "x"}),
        500,
    ));
    payloads.push(rec(
        1002,
        json!({"qty": 1, "note": "CANARY-NUL\u{0}-9b2c"}),
        501,
    ));
    payloads.push(
        br#"{"schema":"public","table":"items","op":"INSERT","lsn":"0/600","seq":"CANARY-ESC\", expected u64 CANARY-ESC-4d1e","data":{"id":1003}}"#
            .to_vec(),
    );
    let js = js().await;
    js.get_or_create_stream(jetstream::stream::Config {
        name: names.stream.clone(),
        subjects: vec![format!("{}.>", names.subject_prefix)],
        ..Default::default()
    })
    .await
    .unwrap();
    for p in &payloads {
        support::publish_signed(&js, subject.clone(), p.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let changes_before = stream_messages(&names.stream).await;
    assert_eq!(changes_before, payloads.len() as u64);

    let logs = dir.path().join("logs");
    let consumers: Vec<Proc> = configs
        .iter()
        .map(|c| Proc::spawn("syncdata", &["start"], c, &[("RUST_LOG", "info")], &logs))
        .collect();
    for (cfg, db) in [(cfg_a, &a), (cfg_b, &b)] {
        support::wait_until(
            "three dead letters and twenty rows in each database",
            Duration::from_secs(60),
            || async {
                let rows: i64 = sqlx::query_scalar("select count(*) from items")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
                rows == 20 && dlq_list(cfg).await.len() == 3
            },
        )
        .await;
    }
    drop(consumers);

    // Each sees exactly its own three, filed under its own instance.
    let list_a = dlq_list(cfg_a).await;
    let list_b = dlq_list(cfg_b).await;
    let inst = |l: &[Json]| -> Vec<String> {
        l.iter()
            .map(|e| e["instance"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let (ia, ib) = (inst(&list_a), inst(&list_b));
    assert!(
        ia.iter().all(|i| !i.is_empty() && *i == ia[0]),
        "{list_a:?}"
    );
    assert!(ib.iter().all(|i| *i == ib[0]), "{list_b:?}");
    assert_ne!(ia[0], ib[0], "two databases, two instances");
    let ids = |l: &[Json]| -> Vec<u64> { l.iter().map(|e| e["id"].as_u64().unwrap()).collect() };
    let (ids_a, ids_b) = (ids(&list_a), ids(&list_b));
    assert!(ids_a.iter().all(|i| !ids_b.contains(i)));
    assert_eq!(stream_messages(&names.dlq_stream).await, 6);

    // 6: no value in the DLQ headers, data_sync_logs or the daemons' logs.
    for m in all_messages(&names.dlq_stream).await {
        for (name, values) in m.headers.iter() {
            for v in values {
                assert!(
                    !v.as_str().contains("CANARY"),
                    "DLQ header {name} holds a value: {}",
                    v.as_str()
                );
            }
        }
    }
    for db in [&a, &b] {
        let details: Vec<Option<String>> =
            sqlx::query_scalar("select error_detail from data_sync_logs")
                .fetch_all(&db.pool)
                .await
                .unwrap();
        assert_eq!(details.iter().flatten().count(), 3, "{details:?}");
        for d in details.iter().flatten() {
            assert!(!d.contains("CANARY"), "data_sync_logs holds a value: {d}");
        }
        assert!(
            details
                .iter()
                .flatten()
                .any(|d| d.contains("SQLSTATE 22P02")),
            "{details:?}"
        );
    }
    for entry in std::fs::read_dir(&logs).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(text.contains("record failed permanently"), "{text}");
        assert!(!text.contains("CANARY"), "a log holds a value:\n{text}");
    }

    // Purge in B (one entry) leaves A's untouched; A's id is not B's.
    let (ok, _, err) = run(
        "syncdata",
        cfg_b,
        &["dlq", "show", &ids_a[0].to_string()],
        &[],
    )
    .await;
    assert!(!ok && err.contains("no dead letter with id"), "{err}");
    syncdata_ok(cfg_b, &["dlq", "purge", "--yes", &ids_b[0].to_string()]).await;
    assert_eq!(dlq_list(cfg_b).await.len(), 2);
    assert_eq!(dlq_list(cfg_a).await, list_a, "A's untouched by B's purge");

    // Replay in A, once its column takes the value: applied locally, removed
    // from A's dead letters; B's untouched; nothing published to the stream.
    let type_mismatch = list_a
        .iter()
        .find(|e| e["sqlstate"] == "22P02")
        .expect("the type mismatch dead letter");
    sqlx::raw_sql("alter table items alter column qty type text")
        .execute(&a.pool)
        .await
        .unwrap();
    let out = syncdata_ok(cfg_a, &["dlq", "replay", &type_mismatch["id"].to_string()]).await;
    assert!(out.contains("replayed 1 dead letters"), "{out}");
    let qty: String = sqlx::query_scalar("select qty from items where id = 1001")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(qty, "CANARY-TYPE-7f3a");
    assert_eq!(dlq_list(cfg_a).await.len(), 2);
    assert_eq!(
        dlq_list(cfg_b).await.len(),
        2,
        "B's untouched by A's replay"
    );
    assert_eq!(
        stream_messages(&names.stream).await,
        changes_before,
        "replay published nothing to the change stream"
    );
    let b_rows: i64 = sqlx::query_scalar("select count(*) from items where id = 1001")
        .fetch_one(&b.pool)
        .await
        .unwrap();
    assert_eq!(b_rows, 0, "A's replay did not reach B");

    // A replay that still fails keeps the dead letter and says why.
    let nul = dlq_list(cfg_a)
        .await
        .into_iter()
        .find(|e| e["sqlstate"] == "22021")
        .expect("the NUL dead letter");
    let (ok, _, err) = run(
        "syncdata",
        cfg_a,
        &["dlq", "replay", &nul["id"].to_string()],
        &[],
    )
    .await;
    assert!(
        !ok && err.contains("kept") && !err.contains("CANARY"),
        "{err}"
    );
    assert_eq!(dlq_list(cfg_a).await.len(), 2);

    // Purge all in A: B keeps its two.
    syncdata_ok(cfg_a, &["dlq", "purge", "--yes"]).await;
    assert!(dlq_list(cfg_a).await.is_empty());
    assert_eq!(dlq_list(cfg_b).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_shared_dead_letters_are_migrated_per_database() {
    let dir = tempfile::tempdir().unwrap();
    let names = TestNames::new("dlqmig");
    let db = support::fresh_database("dlq_mig").await;
    sqlx::raw_sql(ITEMS_DDL).execute(&db.pool).await.unwrap();
    let cfg = support::write_config(
        dir.path(),
        &db,
        &names,
        &support::nats_url(),
        &dir.path().join("archive"),
        "",
    );
    syncdata_ok(&cfg, &["add-tables", "items"]).await;
    // A dead letter in the old layout: <dlq_prefix>.<schema>.<table>.
    let js = js().await;
    js.get_or_create_stream(jetstream::stream::Config {
        name: names.dlq_stream.clone(),
        subjects: vec![format!("{}.>", names.dlq_subject_prefix)],
        ..Default::default()
    })
    .await
    .unwrap();
    // A dead letter keeps its original's signature: replay checks it again.
    let original = rec(5, json!({"qty": 5}), 0x700);
    let signature = support::signing_key().sign("x.changes.public.items", "", &original);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Syncdata-Original-Subject", "x.changes.public.items");
    headers.insert("Syncdata-Original-Sequence", "7");
    headers.insert("Syncdata-Original-Signature", signature.as_str());
    headers.insert("Syncdata-Table", "items");
    js.publish_with_headers(
        format!("{}.public.items", names.dlq_subject_prefix),
        headers,
        original.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let (ok, out, err) = run("syncdata", &cfg, &["dlq", "list", "--json"], &[]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]", "old dead letters are not this database's");
    assert!(
        err.contains("dlq migrate"),
        "a hint names the migration: {err}"
    );
    let out = syncdata_ok(&cfg, &["dlq", "migrate"]).await;
    assert!(out.contains("copied 1 dead letters"), "{out}");
    let out = syncdata_ok(&cfg, &["dlq", "migrate", "--remove-old"]).await;
    assert!(
        out.contains("copied 0") && out.contains("1 copied before"),
        "{out}"
    );
    let list = dlq_list(&cfg).await;
    assert_eq!(list.len(), 1);
    syncdata_ok(&cfg, &["dlq", "replay"]).await;
    let qty: i32 = sqlx::query_scalar("select qty from items where id = 5")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(qty, 5);
    assert_eq!(stream_messages(&names.dlq_stream).await, 0);
}

// ---------------------------------------------------------------------------
// 3: fail-closed sanitization; canaries never reach the stream
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_refuses_to_publish_unsanitized_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_database("nosan").await;
    let names = TestNames::new("nosan");
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    // The flag explicitly off (the harness would otherwise allow it).
    let cfg = support::write_config(
        dir.path(),
        &db,
        &names,
        &support::nats_url(),
        &archive,
        "[producer]\nallow_unsanitized = false\n",
    );
    let (ok, out, err) = run("syncdata-producer", &cfg, &["run"], &[]).await;
    assert!(!ok, "started without rules:\n{out}\n{err}");
    assert!(
        err.contains("producer.rules_file") && err.contains("producer.allow_unsanitized = true"),
        "the message names the settings: {err}"
    );
    assert_eq!(stream_messages(&names.stream).await, 0);
    let (ok, out, _) = run("syncdata-producer", &cfg, &["status"], &[]).await;
    assert!(ok && out.contains("sanitization:  not configured"), "{out}");
    let (ok, out, _) = run("syncdata-producer", &cfg, &["status", "--json"], &[]).await;
    assert!(ok && out.contains("\"sanitization\": \"refused\""), "{out}");

    let allowed = support::write_config(
        &dir.path().join("allowed"),
        &db,
        &names,
        &support::nats_url(),
        &archive,
        "[producer]\nallow_unsanitized = true\n",
    );
    let (ok, out, _) = run("syncdata-producer", &allowed, &["status"], &[]).await;
    assert!(ok && out.contains("sanitization:  OFF"), "{out}");
}

/// The demo workload through the shipped rules (compose and demo): no
/// e-mail, name or free text of it reaches the stream. Also "Must hold" 4:
/// quarantined lines and a halted table, and every file and directory the
/// producer wrote is owner-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_rules_keep_canaries_off_the_stream_and_state_is_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_database("canary").await;
    let names = TestNames::new("canary");
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let state = dir.path().join("state");
    let records = workload::generate(&WorkloadSpec::full(11, 3_000));
    workload::write_archive(&archive, &records, 1_000).unwrap();
    // A line that is not a record (quarantined) and a table the rules do
    // not list (halted: unlisted_tables = "halt").
    std::fs::write(
        archive.join("zzzz-extra.jsonl"),
        "this line is not a change record\n\
         {\"schema\":\"public\",\"table\":\"secrets\",\"op\":\"INSERT\",\"lsn\":\"FF/1\",\"data\":{\"id\":1,\"v\":\"CANARY-UNLISTED\"}}\n",
    )
    .unwrap();
    let cfg = support::write_config(
        dir.path(),
        &db,
        &names,
        &support::nats_url(),
        &archive,
        &format!(
            "[producer]\nrules_file = {:?}\nstate_dir = {:?}\nrescan_ms = 200\n",
            shipped_rules().display().to_string(),
            state.display().to_string()
        ),
    );
    let mut producer = spawn_umask_022("syncdata-producer", &["run"], &cfg, &[], dir.path());
    let expected = records.len() as u64;
    support::wait_until(
        "every demo record published and the extra file handled",
        Duration::from_secs(90),
        || async {
            let (_, out, _) = run("syncdata-producer", &cfg, &["status", "--json"], &[]).await;
            let s: Json = serde_json::from_str(&out).unwrap_or(Json::Null);
            stream_messages(&names.stream).await >= expected
                && s["quarantined"].as_u64() == Some(1)
                && s["halted_tables"].as_array().is_some_and(|h| h.len() == 1)
        },
    )
    .await;
    assert!(producer.is_running(), "{}", producer.log());
    producer.sigterm();
    assert!(producer.wait_exit(Duration::from_secs(30)).await.is_some());

    // Canaries: every e-mail, name and free text of the workload.
    let mut emails = std::collections::HashSet::new();
    for r in &records {
        if let Some(d) = &r.data {
            if let Some(e) = d.get("email").and_then(|v| v.to_pg_text()) {
                emails.insert(e);
            }
        }
    }
    assert!(emails.len() > 100, "the workload has e-mails");
    let mut published = 0;
    // Record by record (a chunk holds many).
    for (_, payload) in support::stream_messages(&support::nats_url(), &names.stream).await {
        let text = String::from_utf8_lossy(&payload);
        assert!(!text.contains("CANARY"), "an unlisted table was published");
        let r = Record::parse(&payload).expect("published records parse");
        published += 1;
        let Some(d) = &r.data else { continue };
        for col in ["name", "bio", "note"] {
            if let Some(v) = d.get(col) {
                assert_eq!(v.to_pg_text(), None, "{col} published: {text}");
            }
        }
        if let Some(e) = d.get("email").and_then(|v| v.to_pg_text()) {
            assert!(!emails.contains(&e), "an e-mail reached the stream: {e}");
            let local = e.split('@').next().unwrap();
            assert!(local.chars().all(|c| c == '*'), "{e}");
        }
    }
    assert_eq!(published, expected);

    // 4: the state the producer wrote (checkpoint, quarantine with its raw
    // line, halts) is owner-only though it ran under umask 022.
    assert!(
        count_files(&state) >= 2,
        "checkpoint and quarantine written"
    );
    let bad = exposed(&state);
    assert!(bad.is_empty(), "group/other bits: {bad:?}");
}

/// "Must hold" 4 for the archiver and snapshot: segments, snapshot files,
/// locks and the archive directory itself are owner-only under umask 022.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_and_snapshot_files_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let src = support::fresh_database("modes_src").await;
    let local = support::fresh_database("modes_local").await;
    sqlx::raw_sql("create table t (id bigint primary key, v text); insert into t select g, 'v' || g from generate_series(1, 50) g")
        .execute(&src.pool)
        .await
        .unwrap();
    let names = TestNames::new("modes");
    let archive = dir.path().join("new-archive");
    let slot = support::unique("modes_slot");
    let cfg = support::write_config(
        dir.path(),
        &local,
        &names,
        &support::nats_url(),
        &archive,
        &format!(
            "[producer]\nsource_url = {:?}\n\n[source]\nslot = {:?}\ntables = [\"t\"]\nsegment_max_age_ms = 100\n",
            src.url, slot
        ),
    );
    let (ok, out, err) = run(
        "syncdata-producer",
        &cfg,
        &["setup-source", "--create-slot"],
        &[],
    )
    .await;
    assert!(ok, "{out}\n{err}");
    let mut archiver = spawn_umask_022("syncdata-producer", &["archive"], &cfg, &[], dir.path());
    sqlx::query("insert into t select g, 'w' from generate_series(51, 60) g")
        .execute(&src.pool)
        .await
        .unwrap();
    let seg_dir = archive.clone();
    support::wait_until("a segment written", Duration::from_secs(60), || {
        let seg_dir = seg_dir.clone();
        async move {
            std::fs::read_dir(&seg_dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .any(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
                })
                .unwrap_or(false)
        }
    })
    .await;
    archiver.sigterm();
    let stopped = archiver.wait_exit(Duration::from_secs(30)).await;
    let mut snap = spawn_umask_022(
        "syncdata-producer",
        &["snapshot", "t"],
        &cfg,
        &[],
        dir.path(),
    );
    let snapped = snap.wait_exit(Duration::from_secs(60)).await;
    let modes = exposed(&archive);
    let files = count_files(&archive);

    // An archive directory someone made world-readable is reported at start.
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut again = spawn_umask_022("syncdata-producer", &["archive"], &cfg, &[], dir.path());
    let warned = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if again.log().contains("accessible to group or others") {
                break true;
            }
            if std::time::Instant::now() > deadline || !again.is_running() {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    again.sigterm();
    let _ = again.wait_exit(Duration::from_secs(30)).await;
    let _ = sqlx::query("select pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&src.pool)
        .await;

    assert!(stopped.is_some(), "{}", archiver.log());
    assert!(snapped.is_some_and(|s| s.success()), "{}", snap.log());
    assert!(files >= 2, "segment and snapshot files");
    assert!(modes.is_empty(), "group/other bits: {modes:?}");
    assert!(
        warned,
        "no warning about the exposed archive:\n{}",
        again.log()
    );
}

// ---------------------------------------------------------------------------
// 5: no credentials in output or logs; SCRAM verifier only
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_output_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_database("secrets").await;
    let names = TestNames::new("secrets");
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cases = [
        // user:password in the NATS URL, a token URL, the local password.
        (
            format!("nats://alice:CANARYPW1@127.0.0.1:{dead_port}"),
            "pg_password = \"CANARYPW2\"\n",
        ),
        (format!("nats://CANARYTOK3@127.0.0.1:{dead_port}"), ""),
    ];
    for (i, (nats_url, top)) in cases.iter().enumerate() {
        let d = dir.path().join(format!("c{i}"));
        let cfg = support::write_config(&d, &db, &names, nats_url, &archive, "");
        // Top-level keys go before the first table.
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("{top}{text}")).unwrap();
        for bin in ["syncdata", "syncdata-producer"] {
            let (ok, out, err) = run(bin, &cfg, &["config", "check"], &[]).await;
            assert!(
                ok && out.contains("configuration OK"),
                "{bin}: {out}\n{err}"
            );
            assert!(out.contains("<redacted>"), "{bin}: {out}");
            assert!(
                !format!("{out}{err}").contains("CANARY"),
                "{bin}: {out}\n{err}"
            );
        }
        // An error path with the URL: the producer cannot reach NATS.
        let (ok, out, err) = run("syncdata-producer", &cfg, &["run"], &[]).await;
        assert!(!ok, "{out}\n{err}");
        assert!(err.contains("cannot connect to NATS"), "{err}");
        assert!(!format!("{out}{err}").contains("CANARY"), "{out}\n{err}");
    }

    // password= in the source URL: refused, and not printed.
    let cfg = support::write_config(
        &dir.path().join("q"),
        &db,
        &names,
        &support::nats_url(),
        &archive,
        "[producer]\nsource_url = \"postgres://u@127.0.0.1/x?sslmode=disable&password=CANARYPW4\"\n",
    );
    for bin in ["syncdata", "syncdata-producer"] {
        let (ok, out, err) = run(bin, &cfg, &["config", "check"], &[]).await;
        assert!(
            !ok && err.contains("producer.source_url"),
            "{bin}: {out}\n{err}"
        );
        assert!(
            !format!("{out}{err}").contains("CANARY"),
            "{bin}: {out}\n{err}"
        );
    }
    // --source URLs on error paths.
    let cfg = support::write_config(
        &dir.path().join("s"),
        &db,
        &names,
        &support::nats_url(),
        &archive,
        "",
    );
    let url = format!("postgres://u:CANARYPW5@127.0.0.1:{dead_port}/x?password=CANARYPW6");
    let (ok, out, err) = run(
        "syncdata-producer",
        &cfg,
        &["setup-source", "--source", &url],
        &[],
    )
    .await;
    assert!(!ok, "{out}\n{err}");
    assert!(!format!("{out}{err}").contains("CANARY"), "{out}\n{err}");
    let (ok, out, err) = run("syncdata", &cfg, &["verify", "--source", &url], &[]).await;
    assert!(!ok, "{out}\n{err}");
    assert!(!format!("{out}{err}").contains("CANARY"), "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_user_sends_a_scram_verifier_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let server = PgServer::start(&dir.path().join("pg")).await;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&server.url_for("postgres"))
        .await
        .unwrap();
    for sql in [
        "create database src",
        "alter database src set log_statement = 'all'",
    ] {
        sqlx::raw_sql(sql).execute(&admin).await.unwrap();
    }
    let local = support::fresh_database("scram_local").await;
    let names = TestNames::new("scram");
    let user = support::unique("sd_role");
    let password = "Canary-Pw-5e7c1d";
    let cfg = support::write_config(
        dir.path(),
        &local,
        &names,
        &support::nats_url(),
        &dir.path().join("archive"),
        &format!(
            "[producer]\nsource_url = {:?}\n\n[source]\nuser = {user:?}\n",
            server.url_for("src")
        ),
    );
    let (ok, out, err) = run(
        "syncdata-producer",
        &cfg,
        &["setup-source", "--create-user"],
        &[("SYNCDATA_USER_PASSWORD", password)],
    )
    .await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("password set"), "{out}");
    let stored: String = sqlx::query_scalar("select rolpassword from pg_authid where rolname = $1")
        .bind(&user)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
    let log = server.log();
    assert!(
        log.contains("ALTER ROLE") && log.contains("SCRAM-SHA-256$"),
        "log_statement = all was in force:\n{log}"
    );
    assert!(!log.contains(password), "the password is in the server log");
    assert!(!format!("{out}{err}").contains(password));
}

// ---------------------------------------------------------------------------
// 7: the whitelist deny-list
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncdata_and_system_tables_cannot_be_whitelisted() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_database("deny").await;
    let names = TestNames::new("deny");
    let cfg = support::write_config(
        dir.path(),
        &db,
        &names,
        &support::nats_url(),
        &dir.path().join("archive"),
        "",
    );
    for t in [
        "syncdata.row_state",
        "syncdata.table_state",
        "syncdata.instance",
        "pg_catalog.pg_authid",
        "information_schema.tables",
        "pg_toast.pg_toast_1260",
        "data_sync_logs",
        "data_sync_metrics",
        "tables_to_sync",
        "_sqlx_migrations",
    ] {
        let (ok, out, err) = run("syncdata", &cfg, &["add-tables", t], &[]).await;
        assert!(!ok, "add-tables {t} succeeded:\n{out}");
        assert!(
            err.contains("refused")
                && (err.contains("never writes there") || err.contains("own tables")),
            "{t}: {err}"
        );
    }
    let listed: i64 = sqlx::query_scalar("select count(*) from tables_to_sync")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(listed, 0);
    // Put there by hand: the daemon refuses it too.
    sqlx::query("insert into tables_to_sync (table_name) values ('syncdata.row_state')")
        .execute(&db.pool)
        .await
        .unwrap();
    let (ok, out, err) = run("syncdata", &cfg, &["start"], &[]).await;
    assert!(!ok, "{out}\n{err}");
    assert!(err.contains("whitelisted table refused"), "{err}");
}

/// The consumer without superuser: PostgreSQL 15's
/// `GRANT SET ON PARAMETER session_replication_role` is enough to apply in
/// replica mode (docs/data-protection.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_granted_set_on_session_replication_role_applies_in_replica_mode() {
    let db = support::fresh_database("replica_role").await;
    let role = support::unique("sd_consumer");
    for sql in [
        format!("create role {role} login"),
        format!("grant set on parameter session_replication_role to {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let as_role = |granted: bool| {
        let role = role.clone();
        let db = db.clone();
        async move {
            let url = format!("postgres://{role}@{}:{}/{}", db.host, db.port, db.name);
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap();
            let may = syncdata_consumer::store::may_set_replica_role(&pool)
                .await
                .unwrap();
            assert_eq!(may, granted);
            if granted {
                sqlx::raw_sql("begin; set local session_replication_role = replica; commit")
                    .execute(&pool)
                    .await
                    .expect("the granted role sets it");
            }
        }
    };
    as_role(true).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "revoke set on parameter session_replication_role from {role}"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    as_role(false).await;
}
