//! Measurement 4: latency at a steady rate, from the moment a record is
//! appended to an archive file to the moment its row is written in the
//! target.
//!
//! The target table `lat(id bigint primary key, sent_at_us bigint,
//! applied_at timestamptz)` has a BEFORE INSERT OR UPDATE trigger setting
//! `applied_at = clock_timestamp()`, enabled ALWAYS (the consumer applies
//! with `session_replication_role = replica`, where ordinary triggers do not
//! fire). `syncdata-producer run` and one `syncdata start` run; the harness
//! appends INSERTs to a file of the archive at the given rate, in chunks
//! every 10 ms, each carrying `sent_at_us` = wall clock at append. At the
//! end, p50/p99/max of `applied_at - sent_at` are taken over the records
//! sent after the warm-up. Both clocks are this machine's.
//!
//! `clock_timestamp()` is read while the batch's upsert runs, a few ms
//! before its transaction commits and the row becomes visible: the figures
//! are low by that much.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use syncdata_core::version::Lsn;

use crate::env::{self, ConfigSpec, Env, Side, Streams};
use crate::report::{self, Report};
use syncdata_testkit::harness;

const TARGET_DB: &str = "bench_lat";

const DDL: &str = r#"
CREATE TABLE lat (id bigint PRIMARY KEY, sent_at_us bigint NOT NULL, applied_at timestamptz);
CREATE FUNCTION lat_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.applied_at := clock_timestamp();
    RETURN NEW;
END $$;
CREATE TRIGGER lat_trg BEFORE INSERT OR UPDATE ON lat FOR EACH ROW EXECUTE FUNCTION lat_stamp();
ALTER TABLE lat ENABLE ALWAYS TRIGGER lat_trg;
"#;

#[derive(Debug, Clone)]
pub struct Options {
    pub rate: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub fetch_wait_ms: Vec<u64>,
    pub consumer_toml: String,
}

pub async fn run(env: &Env, opts: &Options, report: &mut Report) -> Result<()> {
    for &wait in &opts.fetch_wait_ms {
        one(env, opts, wait, report).await?;
    }
    Ok(())
}

async fn one(env: &Env, opts: &Options, fetch_wait_ms: u64, report: &mut Report) -> Result<()> {
    let js = env.jetstream().await?;
    println!(
        "== latency: {} changes/s for {} s, consumer.fetch_wait_ms = {fetch_wait_ms}",
        opts.rate,
        opts.duration.as_secs()
    );
    env.recreate_db(Side::Target, TARGET_DB).await?;
    let target = env.pool(Side::Target, TARGET_DB, 2).await?;
    sqlx::raw_sql(DDL).execute(&target).await?;
    let streams = Streams::new("lat");
    streams.reset(&js).await?;
    let archive = env.fresh_dir("latency/archive")?;
    let extra = format!(
        "{}\nfetch_wait_ms = {fetch_wait_ms}\n\n[producer]\nallow_unsanitized = true\n",
        consumer_table(&opts.consumer_toml)
    );
    let config = env.write_config(&ConfigSpec {
        name: &format!("latency-{fetch_wait_ms}"),
        side: Side::Target,
        database: TARGET_DB,
        archive_dir: &archive,
        streams: &streams,
        extra,
    })?;
    env.run_bin(
        &env.consumer_bin,
        &["add-tables", "lat"],
        &config,
        "latency-add-tables",
        &[],
    )
    .await?;
    let instance = syncdata_consumer::store::instance_id(&target).await?;
    let durables = streams.durables(&instance, &["lat"]);
    let mut children = vec![
        env.spawn(
            &env.producer_bin,
            &["run"],
            &config,
            "latency-producer",
            &[],
        )?,
        env.spawn(
            &env.consumer_bin,
            &["start"],
            &config,
            "latency-consumer",
            &[],
        )?,
    ];
    streams
        .wait_for_durables(&js, &durables, &mut children)
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Steady appends.
    let path = archive.join("lat-00000001.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let start_us = now_us();
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut checked = Instant::now();
    while started.elapsed() < opts.duration {
        tick.tick().await;
        let due = (opts.rate as f64 * started.elapsed().as_secs_f64()) as u64;
        if due <= sent {
            continue;
        }
        buf.clear();
        let at = now_us();
        for id in sent + 1..=due {
            // One transaction per change: commit LSNs grow, seq 0.
            let lsn = Lsn(0x1_0000_0000 + id * 0x100);
            writeln!(
                buf,
                "{{\"schema\":\"public\",\"table\":\"lat\",\"op\":\"INSERT\",\
                 \"data\":{{\"id\":{id},\"sent_at_us\":{at}}},\"lsn\":\"{lsn}\",\"seq\":0}}"
            )?;
        }
        file.write_all(&buf)?;
        sent = due;
        if checked.elapsed() > Duration::from_secs(1) {
            checked = Instant::now();
            for c in children.iter_mut() {
                c.check_running()?;
            }
        }
    }
    let sent_for = started.elapsed();
    drop(file);
    harness::poll_until(
        "every latency record to be applied",
        Duration::from_millis(50),
        Duration::from_secs(300),
        &mut children,
        || {
            let js = js.clone();
            let streams = streams.clone();
            let durables = durables.clone();
            let target = target.clone();
            async move {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM lat")
                    .fetch_one(&target)
                    .await?;
                Ok(n as u64 >= sent && streams.drained(&js, &durables).await)
            }
        },
    )
    .await?;
    let rss: Vec<u64> = children.iter().filter_map(|c| c.peak_rss()).collect();
    env::stop_all(children).await;

    let from_us = start_us + opts.warmup.as_micros() as i64;
    let (count, p50, p99, max): (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "WITH d AS (SELECT (extract(epoch FROM applied_at) * 1e6 - sent_at_us) / 1000.0 AS ms \
                    FROM lat WHERE sent_at_us >= $1) \
         SELECT count(*), \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::float8, \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::float8, \
                max(ms)::float8 FROM d",
    )
    .bind(from_us)
    .fetch_one(&target)
    .await?;
    target.close().await;
    js.delete_stream(&streams.stream).await.ok();
    let (Some(p50), Some(p99), Some(max)) = (p50, p99, max) else {
        bail!("no latency samples after the warm-up");
    };
    let achieved = report::rate(sent, sent_for);
    println!(
        "latency: {count} samples, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms \
         (sent {sent} at {achieved:.0}/s); peak RSS producer {}, consumer {}",
        rss.first().map(|b| report::mb(*b)).unwrap_or_default(),
        rss.get(1).map(|b| report::mb(*b)).unwrap_or_default()
    );
    report.target(
        "4",
        format!(
            "Latency file append → row written in target, {} changes/s, `consumer.fetch_wait_ms = {fetch_wait_ms}`",
            report::thousands(opts.rate)
        ),
        format!(
            "p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms ({} samples after {} s warm-up; achieved {}/s)",
            report::thousands(count as u64),
            opts.warmup.as_secs(),
            report::fmt_rate(achieved)
        ),
        "p99 ≤ 250 ms",
        report::verdict(p99 <= 250.0),
    );
    Ok(())
}

/// The `[consumer]` table of the given TOML lines, starting one when absent,
/// so `fetch_wait_ms` can follow it.
fn consumer_table(toml: &str) -> String {
    if toml.contains("[consumer]") {
        toml.trim_end().to_owned()
    } else {
        format!("{}\n[consumer]", toml.trim_end())
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}
