//! The streaming archiver (`START_REPLICATION … LOGICAL` instead of
//! repeated `pg_logical_slot_peek_changes`) against a real source:
//! `/metrics` with every gauge from start, slot lag and WAL retained that
//! follow the source; restarts (SIGTERM and SIGKILL, mid-workload, right
//! after a large transaction) that lose nothing and write nothing twice,
//! with the slot confirmed only up to what is on disk.

use syncdata_testkit::harness as support;

use std::time::Duration;

use support::TestNames;
use syncdata_core::version::Version;

use crate::source::{self, Change};

/// Gauges the archiver serves from its first scrape, with HELP text.
const GAUGES: [&str; 4] = [
    "syncdata_archiver_slot_lag_bytes",
    "syncdata_archiver_wal_retained_bytes",
    "syncdata_archiver_records_per_second",
    "syncdata_archiver_confirmed_lsn",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_metrics_exist_from_start_and_follow_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source::source(d).await;
    src.exec("CREATE TABLE m (id int PRIMARY KEY, v text)")
        .await;
    let local = support::fresh_database("smetrics_local").await;
    let names = TestNames::new("smetrics");
    let archive = d.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let port = support::free_port();
    let cfg = source::config(
        d,
        &local,
        &names,
        &archive,
        &src.url,
        &format!("tables = [\"m\"]\nmetrics_addr = \"127.0.0.1:{port}\"\n"),
    );
    let (ok, log) = source::finish(
        source::producer(d, &cfg, &["setup-source", "--create-slot"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{log}");
    // WAL behind the slot before the archiver ever ran: lag from start.
    src.exec("INSERT INTO m SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        .await;
    let archiver = source::producer(d, &cfg, &["archive"]);
    let first = support::scrape_until(
        port,
        "the archiver's metrics",
        Duration::from_secs(30),
        |b| {
            GAUGES
                .iter()
                .all(|g| support::sample_sum(b, g, &[]).is_some())
        },
    )
    .await;
    for g in GAUGES {
        assert!(
            first.contains(&format!("# HELP {g} ")),
            "{g} has HELP text:\n{first}"
        );
    }
    for c in [
        "syncdata_archiver_records_total",
        "syncdata_archiver_segments_total",
    ] {
        assert!(first.contains(&format!("# HELP {c} ")), "{c}:\n{first}");
    }
    // The rows arrive; records/s shows it; then the slot catches up.
    let body = support::scrape_until(port, "records/s above zero", Duration::from_secs(60), |b| {
        support::sample_sum(b, "syncdata_archiver_records_per_second", &[]).unwrap_or(0.0) > 0.0
    })
    .await;
    assert!(support::sample_sum(&body, "syncdata_archiver_records_total", &[]).is_some());
    support::scrape_until(
        port,
        "all 20000 records on disk",
        Duration::from_secs(60),
        |b| support::sample_sum(b, "syncdata_archiver_records_total", &[]) == Some(20000.0),
    )
    .await;
    // Caught up: lag is what the server wrote since the last confirmation
    // (a few WAL records at most); WAL retained is reported.
    let body = support::scrape_until(port, "slot lag near zero", Duration::from_secs(30), |b| {
        support::sample_sum(b, "syncdata_archiver_slot_lag_bytes", &[])
            .is_some_and(|lag| lag < 64.0 * 1024.0)
    })
    .await;
    let retained = support::sample_sum(&body, "syncdata_archiver_wal_retained_bytes", &[]).unwrap();
    assert!(retained >= 0.0);
    // The gauge matches the server's own view of the slot.
    let server_lag: i64 = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 \
           FROM pg_replication_slots WHERE slot_name = 'syncdata_slot'",
    )
    .fetch_one(&src.pool)
    .await
    .unwrap();
    assert!(server_lag < 64 * 1024, "server-side lag {server_lag}");
    archiver.sigterm();
}

/// Large and small transactions, a TRUNCATE, changes to a table that is
/// not archived; the archiver is stopped (SIGTERM) and killed (SIGKILL)
/// while they run, and once right after a 30,000-row transaction commits.
/// The archive ends holding exactly what an independent slot decodes, each
/// change once, in version order; after a clean stop the slot is confirmed
/// up to the end of what is on disk, never past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_kills_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source::source(d).await;
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE TABLE other (id int PRIMARY KEY);",
    )
    .await;
    let local = support::fresh_database("srestart_local").await;
    let names = TestNames::new("srestart");
    let archive = d.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let cfg = source::config(
        d,
        &local,
        &names,
        &archive,
        &src.url,
        "tables = [\"t\"]\nsegment_max_bytes = 262144\nsegment_max_age_ms = 200\n",
    );
    let (ok, log) = source::finish(
        source::producer(d, &cfg, &["setup-source", "--create-slot"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{log}");
    src.exec("SELECT pg_create_logical_replication_slot('reference', 'wal2json')")
        .await;
    let start = || source::producer(d, &cfg, &["archive"]);
    let mut archiver = start();
    for round in 0..6i64 {
        for i in 0..20i64 {
            let b = round * 100_000 + i * 100;
            let sql = format!(
                "BEGIN;
                 INSERT INTO t SELECT g, 'v' || g FROM generate_series({b} + 1, {b} + 50) g;
                 UPDATE t SET v = v || 'x' WHERE id = {b} + 3;
                 UPDATE t SET id = -id WHERE id = {b} + 4;
                 DELETE FROM t WHERE id = {b} + 5;
                 INSERT INTO other VALUES ({b});
                 COMMIT"
            );
            src.exec(&sql).await;
        }
        if round == 3 {
            src.exec("TRUNCATE t").await;
        }
        match round % 3 {
            0 => {
                // Caught up (the round's last row on disk), then stopped: a
                // clean stop confirms every complete transaction on disk.
                src.exec(&format!("INSERT INTO t VALUES ({}, 'stop')", -round - 1))
                    .await;
                let key = (-round - 1).to_string();
                support::wait_until("the round on disk", Duration::from_secs(60), || {
                    let archive = archive.clone();
                    let key = key.clone();
                    async move {
                        source::archived(&archive)
                            .into_iter()
                            .flat_map(|(_, c)| c)
                            .last()
                            .is_some_and(|c| c.3 == key)
                    }
                })
                .await;
                archiver.sigterm();
                let status = archiver
                    .wait_exit(Duration::from_secs(30))
                    .await
                    .expect("archiver stops on SIGTERM");
                assert!(status.success(), "{}", archiver.log());
                let confirmed = src.confirmed("syncdata_slot").await;
                let newest = newest(&archive);
                if let Some(v) = newest {
                    assert!(
                        confirmed > v.lsn,
                        "after a clean stop the slot ({confirmed}) covers the disk ({v})"
                    );
                }
            }
            1 => archiver.sigkill(),
            _ => {
                // Killed right after a large transaction commits.
                let b = round * 100_000 + 50_000;
                src.exec(&format!(
                    "INSERT INTO t SELECT g, md5(g::text) FROM generate_series({b}, {b} + 29999) g"
                ))
                .await;
                archiver.sigkill();
            }
        }
        archiver = start();
    }
    src.exec(
        "BEGIN; SET LOCAL synchronous_commit = on; INSERT INTO t VALUES (-999999999, 'marker'); COMMIT",
    )
    .await;
    let expected: Vec<Change> = source::reference(&src.pool, "reference", "public.t").await;
    let marker = expected.last().expect("changes").0;
    support::wait_until("the marker on disk", Duration::from_secs(120), || async {
        newest(&archive).is_some_and(|v| v >= marker)
    })
    .await;
    archiver.sigterm();
    let status = archiver
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("archiver stops");
    assert!(status.success(), "{}", archiver.log());
    let all: Vec<Change> = source::archived(&archive)
        .into_iter()
        .flat_map(|(_, c)| c)
        .collect();
    for w in all.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "out of order or twice: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    assert_eq!(
        all.len(),
        expected.len(),
        "archived vs decoded change count"
    );
    assert_eq!(
        all, expected,
        "the archive holds exactly the decoded changes"
    );
    assert!(all.iter().any(|c| c.2 == "TRUNCATE"));
    let confirmed = src.confirmed("syncdata_slot").await;
    assert!(
        confirmed > marker.lsn,
        "slot {confirmed} confirmed past the marker {marker}"
    );
}

/// The version of the last record on disk.
fn newest(dir: &std::path::Path) -> Option<Version> {
    source::archived(dir)
        .into_iter()
        .filter_map(|(_, c)| c.last().map(|c| c.0))
        .max()
}

/// Every record line in the archive, in file order.
fn lines(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".jsonl") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            std::fs::read_to_string(dir.join(n))
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The same workload archived through wal2json and through pgoutput gives
/// byte-identical record lines: values of many types, unchanged TOASTed
/// columns left out (DEFAULT identity) or taken from the old row (FULL),
/// key changes, deletes, a TRUNCATE of two tables, multi-statement
/// transactions with changes to a table that is not archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgoutput_and_wal2json_archive_identical_records() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source::source(d).await;
    src.exec(
        "CREATE TABLE a (id int PRIMARY KEY, n numeric, f float8, r real, flag bool, b bytea, \
           j jsonb, arr text[], ia int[], ts timestamptz, d date, big text, i8 bigint, m money);
         CREATE TABLE full_t (id int PRIMARY KEY, v text, big text);
         ALTER TABLE full_t REPLICA IDENTITY FULL;
         CREATE TABLE other (id int PRIMARY KEY);",
    )
    .await;
    let local = support::fresh_database("sdiff_local").await;
    let names = TestNames::new("sdiff");
    let (wd, pd) = (d.join("w"), d.join("p"));
    let (wa, pa) = (wd.join("archive"), pd.join("archive"));
    std::fs::create_dir_all(&wa).unwrap();
    std::fs::create_dir_all(&pa).unwrap();
    let tables = "tables = [\"a\", \"full_t\"]\nsegment_max_age_ms = 200\n";
    let wcfg = source::config(&wd, &local, &names, &wa, &src.url, tables);
    let pcfg = source::config(
        &pd,
        &local,
        &names,
        &pa,
        &src.url,
        &format!("{tables}plugin = \"pgoutput\"\nslot = \"pg_slot\"\n"),
    );
    for (dir, cfg) in [(&wd, &wcfg), (&pd, &pcfg)] {
        let (ok, log) = source::finish(
            source::producer(
                dir,
                cfg,
                &["setup-source", "--create-slot", "--tables", "a,full_t"],
            ),
            Duration::from_secs(60),
        )
        .await;
        assert!(ok, "{log}");
    }
    let w = source::producer(&wd, &wcfg, &["archive"]);
    let p = source::producer(&pd, &pcfg, &["archive"]);
    let big = "(SELECT string_agg(md5(g::text || x::text), '') FROM generate_series(1, 300) g)";
    for sql in [
        format!(
            "INSERT INTO a SELECT x, x * 1.25, x / 3.0, x / 7.0, x % 2 = 0, \
               decode(md5(x::text), 'hex'), jsonb_build_object('k', x, 'l', ARRAY[1, 2]), \
               ARRAY['a b', 'c\"d', NULL], ARRAY[x, -x], '2024-01-02 03:04:05.678+00'::timestamptz + x * interval '1 hour', \
               '2024-02-29'::date + x, {big}, x * 10000000000, x * 1.5 \
             FROM generate_series(1, 50) x"
        ),
        format!("INSERT INTO full_t SELECT x, 'v' || x, {big} FROM generate_series(1, 10) x"),
        "INSERT INTO a (id, n, f) VALUES (60, 123456789012345678901234567890.123456789, 1.5e300), (61, NULL, -0.1)".to_owned(),
        "UPDATE a SET n = n + 1, flag = NOT flag WHERE id <= 10".to_owned(),
        "UPDATE a SET id = id + 1000 WHERE id BETWEEN 11 AND 15".to_owned(),
        "UPDATE full_t SET v = 'x' WHERE id <= 5".to_owned(),
        "UPDATE full_t SET id = id + 100 WHERE id = 6".to_owned(),
        "DELETE FROM a WHERE id BETWEEN 20 AND 25".to_owned(),
        "DELETE FROM full_t WHERE id = 7".to_owned(),
        "BEGIN; INSERT INTO other VALUES (1); UPDATE a SET j = '{\"z\": null}' WHERE id = 30; \
         INSERT INTO other VALUES (2); DELETE FROM a WHERE id = 31; COMMIT"
            .to_owned(),
        "TRUNCATE a, full_t".to_owned(),
        format!("INSERT INTO a (id, big) SELECT x, {big} FROM generate_series(1, 3) x"),
        "INSERT INTO full_t VALUES (-1, 'marker', NULL)".to_owned(),
    ] {
        src.exec(&sql).await;
    }
    let done = |dir: std::path::PathBuf| async move {
        lines(&dir).last().is_some_and(|l| l.contains("\"marker\""))
    };
    support::wait_until("wal2json archive complete", Duration::from_secs(90), || {
        done(wa.clone())
    })
    .await;
    support::wait_until("pgoutput archive complete", Duration::from_secs(90), || {
        done(pa.clone())
    })
    .await;
    w.sigterm();
    p.sigterm();
    let (wl, pl) = (lines(&wa), lines(&pa));
    assert!(wl.len() > 90, "{} records", wl.len());
    assert!(wl.iter().any(|l| l.contains("\"op\":\"TRUNCATE\"")));
    assert!(
        wl.iter().all(|l| !l.contains("\"table\":\"other\"")),
        "not archived: other"
    );
    for (i, (a, b)) in wl.iter().zip(&pl).enumerate() {
        assert_eq!(a, b, "record {i} differs (wal2json, then pgoutput)");
    }
    assert_eq!(wl.len(), pl.len(), "record counts");
}
