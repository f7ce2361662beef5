//! Measurement 6: seeding one table of R rows, syncdata's snapshot against
//! `pg_dump -t T src | psql dst`.
//!
//! The source table `snap` (bigint key, two short texts, a numeric, a
//! timestamptz, a 100-byte text) is filled with R rows beforehand.
//!
//! - pg_dump | psql: from launching both until both exit, into an empty
//!   database (the dump creates the table, loads it with COPY, then builds
//!   the primary key).
//! - syncdata: `syncdata-producer run` and one `syncdata start` are already
//!   running (idle) on an empty `snap` table with its primary key; timed
//!   from launching `syncdata-producer snapshot snap` until the commit of
//!   the batch that completed the table (batch clock of
//!   `env::install_batch_clock`; the durable is then checked drained). Also reported: when the snapshot
//!   command exited (rows in files) and when the stream held every row.
//!
//! Both copies are compared with the source afterwards.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use syncdata_testkit::workload;

use crate::env::{self, ConfigSpec, Env, PublishedRecords, Side, Streams};
use crate::report::{self, Report};
use syncdata_testkit::harness;

const SOURCE_DB: &str = "bench_snapsrc";
const DUMP_DB: &str = "bench_snap_pgdump";
const SD_DB: &str = "bench_snap_sd";
const SLOT: &str = "bench_snap_slot";

const DDL: &str = "CREATE TABLE snap (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    email text,
    amount numeric(14,2),
    created_at timestamptz,
    note text
)";

#[derive(Debug, Clone)]
pub struct Options {
    pub rows: u64,
    pub consumer_toml: String,
}

pub async fn run(env: &Env, opts: &Options, report: &mut Report) -> Result<()> {
    let js = env.jetstream().await?;
    let rows = opts.rows;
    println!("== snapshot: {} rows", report::thousands(rows));
    env.drop_db(Side::Target, DUMP_DB).await?;
    env.drop_db(Side::Target, SD_DB).await?;
    env.recreate_db(Side::Source, SOURCE_DB).await?;
    let src = env.pool(Side::Source, SOURCE_DB, 2).await?;
    sqlx::raw_sql(DDL).execute(&src).await?;
    sqlx::query(
        "INSERT INTO snap SELECT g, 'name ' || g, 'user' || g || '@example.com', \
         (g % 100000) / 7.0, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', \
         repeat(md5(g::text), 3) FROM generate_series(1, $1) g",
    )
    .bind(rows as i64)
    .execute(&src)
    .await?;
    for sql in ["VACUUM ANALYZE snap", "CHECKPOINT"] {
        sqlx::raw_sql(sql).execute(&src).await?;
    }
    let truth = workload::table_fingerprint(&src, "public", "snap").await?;

    // --- pg_dump | psql.
    env.recreate_db(Side::Target, DUMP_DB).await?;
    let meter = crate::cpu::Meter::start(env).await?;
    let t0 = Instant::now();
    env.dump_into(&["-t", "snap", SOURCE_DB], DUMP_DB, "snapshot-pg_dump")
        .await?;
    let dump_time = t0.elapsed();
    crate::cpu::record(report, "pg_dump | psql", meter.stop()?);
    let dst = env.pool(Side::Target, DUMP_DB, 1).await?;
    let got = workload::table_fingerprint(&dst, "public", "snap").await?;
    dst.close().await;
    env.drop_db(Side::Target, DUMP_DB).await?;
    if got != truth {
        bail!("pg_dump | psql copy differs from the source: {got:?} vs {truth:?}");
    }
    let dump_rate = report::rate(rows, dump_time);
    println!(
        "pg_dump | psql: {} ({}/s)",
        report::secs(dump_time),
        report::fmt_rate(dump_rate)
    );

    // --- syncdata: with SYNCDATA_BENCH_BASELINE_BIN (a directory holding
    // other builds of syncdata-producer and syncdata), those first, on a
    // line of their own: a before/after within one run.
    let mut passes: Vec<(String, std::path::PathBuf, std::path::PathBuf)> = Vec::new();
    if let Some(dir) = std::env::var_os("SYNCDATA_BENCH_BASELINE_BIN") {
        let dir = std::path::PathBuf::from(dir);
        passes.push((
            format!("baseline binaries ({})", dir.display()),
            dir.join("syncdata-producer"),
            dir.join("syncdata"),
        ));
    }
    passes.push((
        String::new(),
        env.producer_bin.clone(),
        env.consumer_bin.clone(),
    ));
    for (label, producer_bin, consumer_bin) in passes {
        env.recreate_db(Side::Target, SD_DB).await?;
        let dst = env.pool(Side::Target, SD_DB, 2).await?;
        sqlx::raw_sql(DDL).execute(&dst).await?;
        let streams = Streams::new("snap");
        streams.reset(&js).await?;
        let archive = env.fresh_dir("snapshot/archive")?;
        let published = PublishedRecords::new();
        let producer_config = env.write_config(&ConfigSpec {
        name: "snapshot-producer",
        side: Side::Source,
        database: SOURCE_DB,
        archive_dir: &archive,
        streams: &streams,
        extra: format!(
            "[producer]\nallow_unsanitized = true\nsource_url = {}\n{}\n[source]\nslot = {}\ntables = [\"snap\"]\n",
            harness::toml_str(&env.url(Side::Source, SOURCE_DB)),
            published.toml(),
            harness::toml_str(SLOT)
        ),
    })?;
        env.run_bin(
            &producer_bin,
            &["setup-source", "--create-slot", "--tables", "snap"],
            &producer_config,
            "snapshot-setup-source",
            &[],
        )
        .await?;
        let consumer_config = env.write_config(&ConfigSpec {
            name: "snapshot-consumer",
            side: Side::Target,
            database: SD_DB,
            archive_dir: &archive,
            streams: &streams,
            extra: opts.consumer_toml.clone(),
        })?;
        env.run_bin(
            &consumer_bin,
            &["add-tables", "snap"],
            &consumer_config,
            "snapshot-add-tables",
            &[],
        )
        .await?;
        let instance = syncdata_consumer::store::instance_id(&dst).await?;
        let durables = streams.durables(&instance, &["snap"]);
        let mut children = vec![
            env.spawn(
                &producer_bin,
                &["run"],
                &producer_config,
                "snapshot-producer",
                &[],
            )?,
            env.spawn(
                &consumer_bin,
                &["start"],
                &consumer_config,
                "snapshot-consumer",
                &[],
            )?,
        ];
        streams
            .wait_for_durables(&js, &durables, &mut children)
            .await?;

        env::install_batch_clock(&dst).await?;
        let meter = crate::cpu::Meter::start(env).await?;
        let t0 = Instant::now();
        let t0_us = env::now_us();
        let mut snapshot = env.spawn(
            &producer_bin,
            &["snapshot", "snap"],
            &producer_config,
            "snapshot-command",
            &[],
        )?;
        let mut files_at = None;
        let mut published_at = None;
        let mut asked = Instant::now();
        let deadline = t0 + Duration::from_secs(7200);
        // The producer's counter of records published is read every 100 ms;
        // JetStream (the durable) only once the target holds every row (see
        // env::install_batch_clock).
        let applied = loop {
            if files_at.is_none() {
                if let Some(status) = snapshot.exit_status() {
                    if !status.success() {
                        bail!(
                            "syncdata-producer snapshot failed ({status}):\n{}",
                            snapshot.log_tail(20)
                        );
                    }
                    files_at = Some(t0.elapsed());
                }
            }
            if published_at.is_none() && asked.elapsed() >= Duration::from_millis(100) {
                asked = Instant::now();
                if published.count().await.unwrap_or(0) >= rows {
                    published_at = Some(t0.elapsed());
                }
            }
            let (applied, last_us): (i64, Option<i64>) = sqlx::query_as(
                "SELECT coalesce(sum(rows), 0)::bigint, \
             (extract(epoch FROM max(at) FILTER (WHERE rows > 0)) * 1e6)::bigint \
             FROM bench_batch_end",
            )
            .fetch_one(&dst)
            .await?;
            if applied as u64 >= rows && streams.drained(&js, &durables).await {
                let last_us = last_us.unwrap_or(t0_us);
                break Duration::from_micros((last_us - t0_us).max(0) as u64);
            }
            for c in children.iter_mut() {
                c.check_running()?;
            }
            if Instant::now() > deadline {
                bail!("the snapshot was not applied within 2 hours ({applied} rows applied)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        crate::cpu::record(
            report,
            &format!(
                "syncdata snapshot{}",
                if label.is_empty() {
                    String::new()
                } else {
                    format!(", {label}")
                }
            ),
            meter.stop()?,
        );
        let rss: Vec<u64> = children.iter().filter_map(|c| c.peak_rss()).collect();
        env::stop_all(children).await;
        env::stop_all(vec![snapshot]).await;
        let (gap, batches) = env::longest_gap(&dst).await?;
        if gap >= crate::pgbench::STALL {
            report.note(format!(
                "snapshot apply: {:.1} s passed between two of the {batches} batch commits \
             (a stall, or the consumer waiting for the snapshot's files)",
                gap.as_secs_f64()
            ));
        }
        let got = workload::table_fingerprint(&dst, "public", "snap").await?;
        if got != truth {
            bail!("syncdata's copy differs from the source: {got:?} vs {truth:?}");
        }
        dst.close().await;
        let files = files_at.unwrap_or(applied);
        let published = published_at.unwrap_or(applied);
        let sd_rate = report::rate(rows, applied);
        if !label.is_empty() {
            println!(
            "syncdata snapshot, {label}: files {}, stream {}, applied {} ({}/s, {:.2}x pg_dump | psql)",
            report::secs(files),
            report::secs(published),
            report::secs(applied),
            report::fmt_rate(sd_rate),
            sd_rate / dump_rate
        );
            report.row(
            "6",
            format!("syncdata snapshot, {label}"),
            format!(
                "{} rows/s ({}; files written after {}, all in the stream after {}; {:.2}× pg_dump | psql)",
                report::fmt_rate(sd_rate),
                report::secs(applied),
                report::secs(files),
                report::secs(published),
                sd_rate / dump_rate
            ),
        );
            js.delete_stream(&streams.stream).await.ok();
            js.delete_stream(&streams.dlq_stream).await.ok();
            env.drop_source_slot(SLOT).await?;
            continue;
        }
        println!(
        "syncdata snapshot: files {}, stream {}, applied {} ({}/s); peak RSS producer {}, consumer {}",
        report::secs(files),
        report::secs(published),
        report::secs(applied),
        report::fmt_rate(sd_rate),
        rss.first().map(|b| report::mb(*b)).unwrap_or_default(),
        rss.get(1).map(|b| report::mb(*b)).unwrap_or_default()
    );
        report.row(
            "6",
            format!(
                "`pg_dump -t snap | psql` of a {}-row table",
                report::thousands(rows)
            ),
            format!(
                "{} rows/s ({})",
                report::fmt_rate(dump_rate),
                report::secs(dump_time)
            ),
        );
        report.target(
        "6",
        "syncdata snapshot, `syncdata-producer snapshot snap` launch → table fully applied on the target (1 producer, 1 consumer)",
        format!(
            "{} rows/s ({}; files written after {}, all in the stream after {})",
            report::fmt_rate(sd_rate),
            report::secs(applied),
            report::secs(files),
            report::secs(published)
        ),
        "≥ 1.0× `pg_dump | psql`",
        report::verdict_ratio(sd_rate / dump_rate, 1.0),
    );
        js.delete_stream(&streams.stream).await.ok();
        js.delete_stream(&streams.dlq_stream).await.ok();
        env.drop_source_slot(SLOT).await?;
    }
    src.close().await;
    Ok(())
}
