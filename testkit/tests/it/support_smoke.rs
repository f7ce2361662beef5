//! Checks the test support module against real servers: the shared ones from
//! `scripts/test.sh`, and private ones that are killed and restarted.

use syncdata_testkit::harness as support;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use support::{
    fresh_database, js_stream_message_count, nats_connect, nats_url, unique, wait_until,
    NatsServer, PgServer, TestNames,
};

async fn select_one(url: &str) -> i32 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let (one,): (i32,) = sqlx::query_as("select 1")
        .fetch_one(&mut conn)
        .await
        .expect("select 1");
    let _ = conn.close().await;
    one
}

/// Creates a stream, publishes `n` messages with PubAcks, returns its name.
async fn stream_with_messages(url: &str, tag: &str, n: usize) -> String {
    let names = TestNames::new(tag);
    let js = jetstream::new(nats_connect(url).await);
    js.create_stream(stream::Config {
        name: names.stream.clone(),
        subjects: vec![format!("{}.>", names.subject_prefix)],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create stream");
    for i in 0..n {
        js.publish(format!("{}.t{i}", names.subject_prefix), "x".into())
            .await
            .expect("publish")
            .await
            .expect("puback");
    }
    names.stream
}

#[tokio::test]
async fn shared_servers_answer() {
    let db = fresh_database("smoke").await;
    assert!(db.name.starts_with("sd_smoke_"), "{}", db.name);
    let (one,): (i32,) = sqlx::query_as("select 1")
        .fetch_one(&db.pool)
        .await
        .expect("select 1");
    assert_eq!(one, 1);
    let (current,): (String,) = sqlx::query_as("select current_database()::text")
        .fetch_one(&db.pool)
        .await
        .expect("current_database");
    assert_eq!(current, db.name);

    let url = nats_url();
    let name = stream_with_messages(&url, "smoke", 3).await;
    assert_eq!(js_stream_message_count(&url, &name).await, 3);
    let js = jetstream::new(nats_connect(&url).await);
    js.delete_stream(&name).await.expect("delete stream");
    assert!(js.get_stream(&name).await.is_err(), "stream still exists");
}

#[test]
fn names_are_unique_and_safe() {
    let a = unique("Some Tag!");
    let b = unique("Some Tag!");
    assert_ne!(a, b);
    assert!(
        a.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "{a}"
    );
    let n = TestNames::new("x");
    assert!(n.stream.starts_with("T_x_"), "{}", n.stream);
    assert!(n.subject_prefix.ends_with(".changes"));
    assert!(n.dlq_subject_prefix.ends_with(".dlq"));
    assert_ne!(n.stream, n.dlq_stream);
}

#[tokio::test]
async fn write_config_parses() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("config").await;
    let names = TestNames::new("config");
    let path = support::write_config(
        dir.path(),
        &db,
        &names,
        &nats_url(),
        &dir.path().join("archive"),
        "[consumer]\nbatch_size = 7\n",
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let v: toml::Table = toml::from_str(&text).expect("valid TOML");
    assert_eq!(v["pg_database"].as_str(), Some(db.name.as_str()));
    assert_eq!(v["pg_port"].as_integer(), Some(i64::from(db.port)));
    assert_eq!(v["nats"]["stream"].as_str(), Some(names.stream.as_str()));
    assert_eq!(v["consumer"]["batch_size"].as_integer(), Some(7));
}

#[tokio::test]
async fn private_servers_survive_kill_and_stop() {
    let dir = tempfile::tempdir().unwrap();

    let mut nats = NatsServer::start(&dir.path().join("nats")).await;
    let name = stream_with_messages(&nats.url(), "restart", 2).await;
    nats.kill9();
    assert!(!nats.is_running());
    nats.restart().await;
    // Same port, same store: the stream and its messages are back.
    assert_eq!(js_stream_message_count(&nats.url(), &name).await, 2);

    let mut pg = PgServer::start(&dir.path().join("pg")).await;
    let db = pg.fresh_database("restart").await;
    sqlx::query("create table t (id int primary key)")
        .execute(&db.pool)
        .await
        .expect("create table");
    sqlx::query("insert into t values (1)")
        .execute(&db.pool)
        .await
        .expect("insert");
    assert_eq!(select_one(&pg.url_for("postgres")).await, 1);

    pg.stop();
    let url = pg.url_for(&db.name);
    {
        use sqlx::Connection;
        assert!(
            sqlx::PgConnection::connect(&url).await.is_err(),
            "PostgreSQL still answers after stop"
        );
    }
    pg.start_again().await;
    assert_eq!(select_one(&url).await, 1);
    // The pool reconnects by itself once the server is back.
    wait_until("the pool to reconnect", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i64>("select count(*) from t")
            .fetch_one(&db.pool)
            .await
            .is_ok_and(|n| n == 1)
    })
    .await;
}

#[tokio::test]
async fn proc_logs_signals_and_waits() {
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;
    use support::Proc;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let sh = Path::new("/bin/sh");

    // Output and environment reach the log; a normal exit is reported.
    let mut p = Proc::spawn_program(
        sh,
        &["-c", "echo \"out $DATA_SYNC_CONFIG $EXTRA\"; echo err >&2"],
        &config,
        &[("EXTRA", "yes")],
        dir.path(),
    );
    let status = p.wait_exit(Duration::from_secs(30)).await.expect("exits");
    assert!(status.success());
    let log = p.log();
    assert!(
        log.contains(&format!("out {} yes", config.display())),
        "{log}"
    );
    assert!(log.contains("err"), "{log}");

    // SIGTERM reaches the process; trap it to prove it ran a handler.
    let mut p = Proc::spawn_program(
        sh,
        &[
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
        ],
        &config,
        &[],
        dir.path(),
    );
    wait_until(
        "the shell to install its trap",
        Duration::from_secs(30),
        || {
            let ready = p.log().contains("ready");
            async move { ready }
        },
    )
    .await;
    assert!(p.is_running());
    p.sigterm();
    let status = p
        .wait_timeout(Duration::from_secs(30))
        .expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(3));
    assert!(p.log().contains("got-term"));

    // SIGKILL cannot be trapped.
    let mut p = Proc::spawn_program(
        sh,
        &["-c", "trap '' TERM; sleep 60"],
        &config,
        &[],
        dir.path(),
    );
    assert!(p.is_running());
    p.sigkill();
    assert!(!p.is_running());
    assert_eq!(
        p.wait_timeout(Duration::ZERO).and_then(|s| s.signal()),
        Some(9)
    );
}
