//! The trust boundary (docs/trust.md): only the producer can change a local
//! table. Against the real nats-server with the users and permissions of
//! `scripts/servers.sh`, and the real `syncdata` daemon:
//! - anonymous connections are refused, and the consumer's credentials may
//!   not publish a change: a poison TRUNCATE at the highest version never
//!   reaches the stream;
//! - with the producer's credentials, an unsigned or wrongly signed message
//!   is stored but never applied: it lands in the dead letters with its
//!   reason and is counted; so is a correctly signed TRUNCATE far beyond
//!   anything the table has seen; good changes after them still apply;
//! - a consumer whose credentials may publish changes refuses to start
//!   unless `nats.allow_open = true`.

use syncdata_testkit::harness as support;

use std::time::Duration;

use async_nats::jetstream;
use serde_json::{json, Value};
use support::{NatsRole, Proc, TestDb, TestNames};
use syncdata_core::signature::{SigningKey, HEADER};
use syncdata_core::subject::table_subject;

const POISON_LSN: &str = "7FFFFFFF/FFFFFFFF";

struct World {
    db: TestDb,
    names: TestNames,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl World {
    async fn new(tag: &str, extra_toml: &str) -> World {
        let db = support::fresh_database(tag).await;
        sqlx::raw_sql("create table users (id int primary key, name text not null)")
            .execute(&db.pool)
            .await
            .expect("ddl");
        let names = TestNames::new(tag);
        // The change stream, as the producer would create it.
        let cfg = syncdata_core::config::NatsConfig {
            stream: names.stream.clone(),
            subject_prefix: names.subject_prefix.clone(),
            ..Default::default()
        };
        let js = jetstream::new(support::nats_connect(&support::nats_url()).await);
        syncdata_core::nats::ensure_stream(&js, syncdata_core::nats::change_stream_config(&cfg))
            .await
            .expect("change stream");
        let dir = tempfile::tempdir().unwrap();
        let config = support::write_config(
            dir.path(),
            &db,
            &names,
            &support::nats_url(),
            dir.path(),
            extra_toml,
        );
        World {
            db,
            names,
            dir,
            config,
        }
    }

    fn subject(&self) -> String {
        table_subject(&self.names.subject_prefix, "public", "users")
    }

    async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let mut p = Proc::spawn("syncdata", args, &self.config, env, self.dir.path());
        let status = p
            .wait_exit(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("syncdata {args:?} did not finish:\n{}", p.log()));
        (status.success(), p.log())
    }

    fn start(&self, env: &[(&str, &str)]) -> Proc {
        let mut all = vec![("RUST_LOG", "info")];
        all.extend_from_slice(env);
        Proc::spawn("syncdata", &["start"], &self.config, &all, self.dir.path())
    }

    async fn rows(&self) -> Vec<(i32, String)> {
        sqlx::query_as("select id, name from users order by id")
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }

    /// Records in the stream (a chunk counts its records).
    async fn stream_messages(&self, stream: &str) -> u64 {
        support::stream_record_count(&support::nats_url(), stream).await
    }
}

fn record(op: &str, data: Option<Value>, lsn: &str) -> Vec<u8> {
    let mut r = json!({"schema": "public", "table": "users", "op": op, "lsn": lsn, "seq": 0});
    if let Some(d) = data {
        r["data"] = d;
    }
    serde_json::to_vec(&r).unwrap()
}

fn insert(id: i32, name: &str, lsn: &str) -> Vec<u8> {
    record("INSERT", Some(json!({"id": id, "name": name})), lsn)
}

/// Publishes through JetStream as `role` with these headers; Ok once the
/// stream acknowledged it.
async fn publish_as(
    role: NatsRole,
    subject: &str,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
) -> Result<(), String> {
    let client = support::nats_connect_as(&support::nats_url(), Some(role)).await;
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(3));
    let ack = js
        .publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map(drop).map_err(|e| e.to_string())
}

/// Signed as the producer signs (no message id).
async fn publish_good(w: &World, payload: Vec<u8>) {
    let headers = support::signed_headers(&w.subject(), &payload);
    publish_as(NatsRole::Producer, &w.subject(), headers, payload)
        .await
        .expect("the producer's signed publish is acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_producers_signed_messages_change_a_local_table() {
    let port = support::free_port();
    let w = World::new(
        "trust",
        &format!("[consumer]\nmax_attempts = 5\nmetrics_addr = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let (ok, log) = w.run(&["add-tables", "users"], &[]).await;
    assert!(ok, "add-tables:\n{log}");
    for (id, lsn) in [(1, "0/10"), (2, "0/20"), (3, "0/30")] {
        publish_good(&w, insert(id, &format!("user{id}"), lsn)).await;
    }
    let daemon = w.start(&[]);
    support::wait_until(
        "the three users applied",
        Duration::from_secs(60),
        || async { w.rows().await.len() == 3 },
    )
    .await;
    let before = w.rows().await;
    let stored = w.stream_messages(&w.names.stream).await;
    assert_eq!(stored, 3);

    // 1. Anonymous: the server refuses the connection itself.
    let anon = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(support::nats_url())
        .await;
    assert!(
        anon.is_err(),
        "an anonymous connection must be refused by the server"
    );

    // 2. The consumer's credentials (and even the real key: every consumer
    // holds it): the server drops the publish, nothing is stored.
    let poison = record("TRUNCATE", None, POISON_LSN);
    let signed = support::signed_headers(&w.subject(), &poison);
    let refused = publish_as(NatsRole::Consumer, &w.subject(), signed, poison.clone()).await;
    assert!(
        refused.is_err(),
        "the consumer's credentials must not publish a change"
    );
    assert_eq!(
        w.stream_messages(&w.names.stream).await,
        stored,
        "the refused TRUNCATE reached the stream"
    );

    // 3. The producer's credentials without the key: stored, never applied.
    publish_as(
        NatsRole::Producer,
        &w.subject(),
        async_nats::HeaderMap::new(),
        poison.clone(),
    )
    .await
    .expect("stored");
    let forged = record("DELETE", Some(json!({"id": 2, "name": "user2"})), "0/40");
    let wrong_key = SigningKey::new(&[b'x'; 32], "test").unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER, wrong_key.sign(&w.subject(), "", &forged).as_str());
    publish_as(NatsRole::Producer, &w.subject(), headers, forged)
        .await
        .expect("stored");
    // 4. Signed with the real key (a leaked key and producer credentials):
    // the version sanity rule holds it.
    publish_good(&w, poison.clone()).await;
    // 5. Good changes after all of them still apply.
    publish_good(&w, insert(4, "user4", "0/50")).await;
    publish_good(
        &w,
        record("UPDATE", Some(json!({"id": 1, "name": "renamed"})), "0/60"),
    )
    .await;

    support::wait_until(
        "the later good changes applied",
        Duration::from_secs(60),
        || async {
            w.rows().await.len() == 4
                && w.rows().await.first().map(|r| r.1.as_str()) == Some("renamed")
        },
    )
    .await;
    support::wait_until("three dead letters", Duration::from_secs(60), || async {
        w.stream_messages(&w.names.dlq_stream).await >= 3
    })
    .await;
    let mut expected = before.clone();
    expected[0].1 = "renamed".to_owned();
    expected.push((4, "user4".to_owned()));
    assert_eq!(
        w.rows().await,
        expected,
        "no forged change reached the table"
    );

    // The dead letters, as this database's `dlq list` shows them.
    let (ok, out) = w.run(&["dlq", "list", "--json"], &[]).await;
    assert!(ok, "dlq list:\n{out}");
    let start = out.find('[').expect("JSON array");
    let end = out.rfind(']').expect("JSON array");
    let list: Vec<Value> = serde_json::from_str(&out[start..=end]).expect("dlq list JSON");
    let errors: Vec<String> = list
        .iter()
        .map(|d| d["error"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("unsigned message")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("forged or altered")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("held, not applied") && e.contains(POISON_LSN)),
        "{errors:?}"
    );
    // Dead-lettered at once: a forgery is never retried.
    assert!(list.iter().all(|d| d["attempts"] == json!(1)), "{list:?}");

    support::scrape_until(
        port,
        "the rejection metrics",
        Duration::from_secs(20),
        |metrics| {
            ["unsigned", "bad_signature", "version_jump"]
                .iter()
                .all(|r| {
                    metrics.lines().any(|l| {
                        l.starts_with("syncdata_messages_rejected_total")
                            && l.contains(&format!("reason=\"{r}\""))
                            && l.ends_with(" 1")
                    })
                })
        },
    )
    .await;

    daemon.sigterm();
    let mut daemon = daemon;
    assert!(daemon
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_may_publish_changes_refuses_to_start_unless_allowed() {
    let w = World::new("trust_open", "").await;
    let (ok, log) = w.run(&["add-tables", "users"], &[]).await;
    assert!(ok, "add-tables:\n{log}");
    let (user, password) = NatsRole::Admin.credentials();
    let admin = [
        ("NATS_USER", user.as_str()),
        ("NATS_PASSWORD", password.as_str()),
    ];

    let mut refused = w.start(&admin);
    let status = refused
        .wait_exit(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("the daemon should refuse to start:\n{}", refused.log()));
    assert!(!status.success());
    let log = refused.log();
    assert!(
        log.contains("refusing to start") && log.contains("nats.allow_open"),
        "{log}"
    );

    // Told it is a throwaway setup, it runs (and applies).
    let open = World {
        config: support::write_config(
            &w.dir.path().join("open"),
            &w.db,
            &w.names,
            &support::nats_url(),
            w.dir.path(),
            "allow_open = true\n",
        ),
        db: w.db.clone(),
        names: w.names.clone(),
        dir: tempfile::tempdir().unwrap(),
    };
    let mut daemon = open.start(&admin);
    publish_good(&open, insert(1, "one", "0/10")).await;
    support::wait_until(
        "applied with allow_open",
        Duration::from_secs(60),
        || async { open.rows().await.len() == 1 },
    )
    .await;
    assert!(daemon.is_running());
    assert!(daemon.log().contains("nats.allow_open = true"));
    daemon.sigterm();
    assert!(daemon
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));
}
