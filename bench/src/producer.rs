//! Measurements 3 and 5: the producer's throughput from archive files to
//! PubAck, with and without sanitization, and the peak RSS of the producer
//! and of a consumer with an N-record backlog.
//!
//! The records are the demo schema's synthetic history (`workload::generate`:
//! inserts, full, partial and key-changing UPDATEs, deletes, one TRUNCATE,
//! large TOAST-able texts, jsonb, arrays, 30-digit numerics), written as
//! files of 100,000 records before anything is timed.
//!
//! - Producer: from launching `syncdata-producer run` until its counter of
//!   records published and acknowledged (`syncdata_producer_records_total`,
//!   scraped every 20 ms) reaches N: a message is a chunk of many records,
//!   so the stream's message count does not tell. records/s = N / t,
//!   MB/s = file bytes / t.
//!   The sanitized run reads the same files (its own checkpoint directory)
//!   with a rules file covering every column of the three tables.
//! - Memory: VmHWM of the producer when it has published all N, and of one
//!   `syncdata start` that applied the N-record backlog of the unsanitized
//!   stream into an empty demo database (launch → last batch committed, with
//!   every durable drained).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use syncdata_testkit::workload::{self, WorkloadSpec};

use crate::env::{self, ConfigSpec, Env, PublishedRecords, Side, Streams};
use crate::report::{self, Report};
use syncdata_testkit::harness;

/// "≤ 64 MB RSS per process", read as 64,000,000 bytes (the stricter reading).
const MEMORY_TARGET: u64 = 64_000_000;
const TARGET_DB: &str = "bench_demo";

/// A realistic rule set for the demo schema: keyed pseudonyms that still
/// join, fake names and e-mails, a dropped free text, shifted dates, a
/// masked note, a hashed field inside jsonb.
const RULES: &str = include_str!("../../producer/benches/demo-rules.toml");

/// 40 bytes; a throwaway key for a throwaway stream.
pub(crate) const KEY: &str = "syncdata-bench-throwaway-sanitize-key-40";

#[derive(Debug, Clone)]
pub struct Options {
    pub records: usize,
    pub sanitize: bool,
    pub memory: bool,
    pub consumer_toml: String,
}

pub async fn run(env: &Env, opts: &Options, report: &mut Report) -> Result<()> {
    let js = env.jetstream().await?;
    let n = opts.records as u64;
    println!("== producer: {} demo records", report::thousands(n));
    let archive = env.fresh_dir("demo/archive")?;
    let t = Instant::now();
    let records = workload::generate(&WorkloadSpec::full(42, opts.records));
    workload::write_archive(&archive, &records, 100_000)?;
    drop(records);
    let bytes = env::dir_bytes(&archive)?;
    println!(
        "generated and wrote {} records ({}) in {}",
        report::thousands(n),
        report::mb(bytes),
        report::secs(t.elapsed())
    );

    // --- Without sanitization.
    let plain = Streams::new("demo");
    plain.reset(&js).await?;
    let state = env.fresh_dir("demo/state-plain")?;
    let published = PublishedRecords::new();
    let config = env.write_config(&ConfigSpec {
        name: "demo-producer",
        side: Side::Source,
        database: "postgres",
        archive_dir: &archive,
        streams: &plain,
        extra: format!(
            "[producer]\nallow_unsanitized = true\nstate_dir = {}\n{}",
            harness::toml_str(&state.to_string_lossy()),
            published.toml()
        ),
    })?;
    let (t_plain, rss_plain) = publish(
        env,
        published,
        &config,
        n,
        "demo-producer",
        &[],
        PUBLISH_TIMEOUT,
        report,
    )
    .await?;
    let r_plain = report::rate(n, t_plain);
    println!(
        "producer: {}/s, {:.1} MB/s, peak RSS {}",
        report::fmt_rate(r_plain),
        bytes as f64 / 1e6 / t_plain.as_secs_f64(),
        report::mb(rss_plain)
    );
    report.target(
        "3",
        "Producer, archive files → PubAck, no sanitization",
        format!(
            "{} records/s, {:.1} MB/s ({} records, {}, in {})",
            report::fmt_rate(r_plain),
            bytes as f64 / 1e6 / t_plain.as_secs_f64(),
            report::thousands(n),
            report::mb(bytes),
            report::secs(t_plain)
        ),
        "≥ 300,000 records/s",
        report::verdict_ratio(r_plain / 300_000.0, 1.0),
    );

    // --- With sanitization.
    let mut rss_sanitized = None;
    if opts.sanitize {
        let sanitized = Streams::new("demosan");
        sanitized.reset(&js).await?;
        let published = PublishedRecords::new();
        let config = sanitized_config(
            env,
            &SanitizedRun {
                name: "demo-producer-sanitized",
                database: "postgres",
                state: "demo/state-sanitized",
                rules_file: "demo-rules.toml",
                rules: RULES,
            },
            &archive,
            &sanitized,
            published,
        )?;
        let (t_san, rss) = publish(
            env,
            published,
            &config,
            n,
            "demo-producer-sanitized",
            &[("SYNCDATA_SANITIZE_KEY", KEY)],
            PUBLISH_TIMEOUT,
            report,
        )
        .await?;
        rss_sanitized = Some(rss);
        let r_san = report::rate(n, t_san);
        println!(
            "producer with sanitization: {}/s, peak RSS {}",
            report::fmt_rate(r_san),
            report::mb(rss)
        );
        report.target(
            "3",
            "Producer, archive files → PubAck, with sanitization (hmac keys, fake names/e-mails, date shift, mask, jsonb path)",
            format!(
                "{} records/s, {:.1} MB/s (in {})",
                report::fmt_rate(r_san),
                bytes as f64 / 1e6 / t_san.as_secs_f64(),
                report::secs(t_san)
            ),
            "≥ 200,000 records/s",
            report::verdict_ratio(r_san / 200_000.0, 1.0),
        );
        js.delete_stream(&sanitized.stream).await.ok();
    }

    // --- Memory.
    let what = format!("{}-record backlog", report::thousands(n));
    report.target(
        "5",
        format!("Peak RSS (VmHWM), producer publishing {what} from files"),
        match rss_sanitized {
            Some(s) => format!(
                "{} (with sanitization: {})",
                report::mb(rss_plain),
                report::mb(s)
            ),
            None => report::mb(rss_plain),
        },
        "≤ 64 MB",
        report::verdict(rss_plain.max(rss_sanitized.unwrap_or(0)) <= MEMORY_TARGET),
    );
    if opts.memory {
        env.recreate_db(Side::Target, TARGET_DB).await?;
        let target = env.pool(Side::Target, TARGET_DB, 2).await?;
        sqlx::raw_sql(workload::DEMO_DDL).execute(&target).await?;
        let config = env.write_config(&ConfigSpec {
            name: "demo-consumer",
            side: Side::Target,
            database: TARGET_DB,
            archive_dir: &archive,
            streams: &plain,
            extra: opts.consumer_toml.clone(),
        })?;
        let mut add = vec!["add-tables"];
        add.extend(workload::demo_tables());
        env.run_bin(&env.consumer_bin, &add, &config, "demo-add-tables", &[])
            .await?;
        let instance = syncdata_consumer::store::instance_id(&target).await?;
        let durables = plain.durables(&instance, &workload::demo_tables());
        env::install_batch_clock(&target).await?;
        let t0 = env::now_us();
        let mut children =
            vec![env.spawn(&env.consumer_bin, &["start"], &config, "demo-consumer", &[])?];
        let applied = env::wait_applied(
            &js,
            &plain,
            &durables,
            &target,
            t0,
            &mut children,
            Duration::from_secs(7200),
        )
        .await?;
        report.notes.extend(applied.note("demo backlog apply"));
        let elapsed = applied.data;
        let rss = children[0].peak_rss().unwrap_or(0);
        env::stop_all(children).await;
        let (gap, batches) = env::longest_gap(&target).await?;
        if gap >= crate::pgbench::STALL {
            report.note(format!(
                "demo backlog apply: the consumer stalled: {:.1} s passed between two of the \
                 {batches} batch commits",
                gap.as_secs_f64()
            ));
        }
        let dead = plain.dead_letters(&js).await;
        if dead > 0 {
            bail!("{dead} demo records were dead-lettered");
        }
        target.close().await;
        println!(
            "consumer: {what} applied in {} ({}/s), peak RSS {}",
            report::secs(elapsed),
            report::fmt_rate(report::rate(n, elapsed)),
            report::mb(rss)
        );
        report.target(
            "5",
            format!("Peak RSS (VmHWM), one consumer applying a {what}"),
            report::mb(rss),
            "≤ 64 MB",
            report::verdict(rss <= MEMORY_TARGET),
        );
        report.row(
            "5",
            "(same run) consumer apply rate on the demo history, 1 consumer",
            format!(
                "{} records/s ({} in {})",
                report::fmt_rate(report::rate(n, elapsed)),
                report::thousands(n),
                report::secs(elapsed)
            ),
        );
    }
    js.delete_stream(&plain.stream).await.ok();
    js.delete_stream(&plain.dlq_stream).await.ok();
    Ok(())
}

/// How long the demo records' publish may take at most.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3600);

/// A sanitized producer run: its configuration's name, the database named
/// in it, its state directory (under the work directory) and its rules.
pub(crate) struct SanitizedRun<'a> {
    pub name: &'a str,
    pub database: &'a str,
    pub state: &'a str,
    /// File name under the work directory's `config/`.
    pub rules_file: &'a str,
    pub rules: &'a str,
}

/// Writes the rules and the configuration of a sanitized producer run
/// that reads `archive` into `streams` from its first file (a fresh state
/// directory); returns the configuration's path.
pub(crate) fn sanitized_config(
    env: &Env,
    run: &SanitizedRun<'_>,
    archive: &std::path::Path,
    streams: &Streams,
    published: PublishedRecords,
) -> Result<std::path::PathBuf> {
    let state = env.fresh_dir(run.state)?;
    let rules = env.workdir.join("config").join(run.rules_file);
    std::fs::create_dir_all(rules.parent().expect("has a parent"))?;
    std::fs::write(&rules, run.rules)?;
    env.write_config(&ConfigSpec {
        name: run.name,
        side: Side::Source,
        database: run.database,
        archive_dir: archive,
        streams,
        extra: format!(
            "[producer]\nstate_dir = {}\nrules_file = {}\n{}",
            harness::toml_str(&state.to_string_lossy()),
            harness::toml_str(&rules.to_string_lossy()),
            published.toml()
        ),
    })
}

/// Launches the producer and waits (at most `timeout`) until it has
/// published `n` records (each acknowledged by JetStream). Returns the
/// time from launch and the producer's peak RSS then; where the CPU went
/// is noted in `report`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn publish(
    env: &Env,
    published: PublishedRecords,
    config: &std::path::Path,
    n: u64,
    name: &str,
    extra_env: &[(&str, &str)],
    timeout: Duration,
    report: &mut Report,
) -> Result<(Duration, u64)> {
    let meter = crate::cpu::Meter::start(env).await?;
    let t0 = Instant::now();
    let mut children = vec![env.spawn(&env.producer_bin, &["run"], config, name, extra_env)?];
    let done = harness::poll_until(
        "the stream to hold every record",
        Duration::from_millis(20),
        timeout,
        &mut children,
        || async move { Ok(published.count().await.unwrap_or(0) >= n) },
    )
    .await?;
    crate::cpu::record(report, name, meter.stop()?);
    let rss = children[0].peak_rss().unwrap_or(0);
    env::stop_all(children).await;
    Ok((done - t0, rss))
}
