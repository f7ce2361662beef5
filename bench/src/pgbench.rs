//! Measurements 1 and 2: one pgbench tpcb-like run on the source, caught up
//! by PostgreSQL's native logical replication (the anchor) and by syncdata.
//!
//! Before pgbench: the source gets `pgbench -i`, a primary key on
//! `pgbench_history` (`hid bigserial`), a publication, and two slots of
//! `syncdata-producer setup-source --create-slot` (the plugin the project
//! picks for a new slot). The subscriber database gets the schema, a
//! subscription that copies the initial rows and is then disabled (its slot
//! keeps the changes), and each syncdata target database gets the same
//! initial rows (pg_dump -Fc | pg_restore). Then pgbench writes N
//! transactions (4 row changes each: 3 UPDATEs, 1 INSERT).
//!
//! 1. Native: from `ALTER SUBSCRIPTION … ENABLE` until the subscriber holds
//!    every history row (max(hid) reached, then count(*) equal; each source
//!    transaction applies atomically on the subscriber, so that is all of
//!    them). Then all four tables are compared with the source.
//! 2. syncdata, in stages, each timed alone, from the first slot: the
//!    archiver (slot → segment files), the producer (files → stream, until
//!    its counter of records published and acknowledged reaches every
//!    record: a message is a chunk of many; then once more with the
//!    sanitization rules of `bench/pgbench-rules.toml`, into a stream of
//!    its own), then `syncdata start` × K from
//!    launch until every durable has nothing pending or unacknowledged
//!    (acks follow commits); the tables are then compared with the source.
//!    The end is the commit of the last batch, read from a trigger in the
//!    target (see `env::install_batch_clock`: JetStream is not polled while
//!    consumers work, as that disturbs nats-server 2.9).
//!    The same stream is then applied into a SQLite file, and pulled and
//!    acked by the harness alone (the broker's share).
//! 3. syncdata end to end from the second slot, every stage at once: the
//!    archiver, the producer and one consumer launched together on the
//!    backlog, until the last batch committed.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sqlx::PgPool;
use syncdata_testkit::workload;

use crate::cpu;
use crate::env::{self, ConfigSpec, Env, PublishedRecords, Side, Streams};
use crate::producer;
use crate::report::{self, Report};
use syncdata_testkit::harness;

pub const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];
const SOURCE_DB: &str = "bench_src";
const NATIVE_DB: &str = "bench_native";
const PUBLICATION: &str = "bench_pub";
const SUBSCRIPTION: &str = "bench_sub";
const SLOT: &str = "bench_syncdata_slot";
/// The second slot, for the end-to-end run with every stage at once.
const SLOT_E2E: &str = "bench_syncdata_e2e";
const E2E_DB: &str = "bench_sd_e2e";
/// A pause between batch commits this long is a stall, not apply work.
pub const STALL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Options {
    pub scale: u32,
    pub transactions: u64,
    pub clients: u32,
    pub jobs: u32,
    pub consumers: Vec<usize>,
    /// `[consumer]` settings for the catch-up runs (TOML lines).
    pub consumer_toml: String,
}

pub async fn run(env: &Env, opts: &Options, report: &mut Report) -> Result<()> {
    let js = env.jetstream().await?;
    let per_client = opts.transactions.div_ceil(u64::from(opts.clients));
    println!(
        "== pgbench: scale {}, {} clients × {} transactions",
        opts.scale, opts.clients, per_client
    );

    // --- Source.
    for k in &opts.consumers {
        env.drop_db(Side::Target, &sd_db(*k, "")).await?;
    }
    env.drop_db(Side::Target, &sd_db(1, "baseline")).await?;
    env.drop_db(Side::Target, NATIVE_DB).await?;
    env.drop_db(Side::Target, E2E_DB).await?;
    env.recreate_db(Side::Source, SOURCE_DB).await?;
    let t = Instant::now();
    env.run_tool(
        "pgbench",
        Side::Source,
        &["-i", "-q", "-s", &opts.scale.to_string(), SOURCE_DB],
        "pgbench-init",
    )
    .await?;
    println!(
        "pgbench -i -s {} in {}",
        opts.scale,
        report::secs(t.elapsed())
    );
    let src = env.pool(Side::Source, SOURCE_DB, 2).await?;
    // One statement each: VACUUM refuses to run inside a (multi-statement)
    // transaction.
    for sql in [
        "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY",
        "VACUUM ANALYZE",
        "CHECKPOINT",
    ] {
        sqlx::raw_sql(sql).execute(&src).await?;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE PUBLICATION {PUBLICATION} FOR TABLE {}",
        TABLES.join(", ")
    )))
    .execute(&src)
    .await?;

    // --- Native subscriber: schema, initial copy, then disabled.
    env.recreate_db(Side::Target, NATIVE_DB).await?;
    let mut dump_args = vec!["--schema-only", "--no-publications", "--no-subscriptions"];
    for t in TABLES {
        dump_args.extend(["-t", t]);
    }
    dump_args.push(SOURCE_DB);
    env.dump_into(&dump_args, NATIVE_DB, "pgbench-native-schema")
        .await?;
    let native = env.pool(Side::Target, NATIVE_DB, 2).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SUBSCRIPTION {SUBSCRIPTION} CONNECTION '{}' PUBLICATION {PUBLICATION} \
         WITH (copy_data = true)",
        env.conninfo(Side::Source, SOURCE_DB)
    )))
    .execute(&native)
    .await
    .context("CREATE SUBSCRIPTION")?;
    let t = Instant::now();
    wait_for(
        "the subscription's initial copy",
        Duration::from_secs(900),
        || async {
            let not_ready: i64 = sqlx::query_scalar(
                "SELECT count(*) FILTER (WHERE srsubstate <> 'r') + 4 - count(*) \
                 FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid \
                 WHERE s.subname = $1",
            )
            .bind(SUBSCRIPTION)
            .fetch_one(&native)
            .await?;
            Ok(not_ready == 0)
        },
    )
    .await?;
    println!(
        "native subscription: initial copy in {}",
        report::secs(t.elapsed())
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER SUBSCRIPTION {SUBSCRIPTION} DISABLE"
    )))
    .execute(&native)
    .await?;
    let disabled_at = Instant::now();
    wait_for("the subscription to stop", Duration::from_secs(60), || async {
        let active: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(SUBSCRIPTION)
        .fetch_one(&src)
        .await?;
        Ok(!active)
    })
    .await?;

    // --- syncdata: slot (before pgbench), then the initial rows.
    let streams = Streams::new("pgbench");
    streams.reset(&js).await?;
    let archive = env.fresh_dir("pgbench/archive")?;
    let published = PublishedRecords::new();
    let source_toml = format!(
        "[producer]\nallow_unsanitized = true\nsource_url = {}\n{}\n[source]\nslot = {}\ntables = [{}]\n",
        harness::toml_str(&env.url(Side::Source, SOURCE_DB)),
        published.toml(),
        harness::toml_str(SLOT),
        TABLES.map(harness::toml_str).join(", ")
    );
    let producer_config = env.write_config(&ConfigSpec {
        name: "pgbench-producer",
        side: Side::Source,
        database: SOURCE_DB,
        archive_dir: &archive,
        streams: &streams,
        extra: source_toml,
    })?;
    env.run_bin(
        &env.producer_bin,
        &[
            "setup-source",
            "--create-slot",
            "--tables",
            &TABLES.join(","),
        ],
        &producer_config,
        "pgbench-setup-source",
        &[],
    )
    .await?;
    // The end-to-end run's own slot, stream, archive and producer metrics:
    // the same pgbench changes, decoded a second time.
    let e2e = E2e::setup(env, &js).await?;
    let dump = env.workdir.join("pgbench/base.dump");
    let mut args = vec!["-Fc", "--no-publications", "--no-subscriptions", "-f"];
    let dump_s = dump.to_string_lossy().into_owned();
    args.push(&dump_s);
    for t in TABLES {
        args.extend(["-t", t]);
    }
    args.push(SOURCE_DB);
    env.run_tool("pg_dump", Side::Source, &args, "pgbench-base-dump")
        .await?;
    // With SYNCDATA_BENCH_BASELINE_BIN (a directory holding another build
    // of `syncdata`), that build's one-consumer catch-up runs first, on a
    // line of its own: a before/after within one run.
    let baseline = std::env::var_os("SYNCDATA_BENCH_BASELINE_BIN").map(std::path::PathBuf::from);
    let mut runs: Vec<(usize, std::path::PathBuf, String)> = Vec::new();
    if let Some(dir) = &baseline {
        runs.push((1, dir.join("syncdata"), "baseline".to_owned()));
    }
    runs.extend(
        opts.consumers
            .iter()
            .map(|&k| (k, env.consumer_bin.clone(), String::new())),
    );
    let mut restore: Vec<String> = runs.iter().map(|(k, _, l)| sd_db(*k, l)).collect();
    restore.push(E2E_DB.to_owned());
    for db in &restore {
        env.recreate_db(Side::Target, db).await?;
        env.run_tool(
            "pg_restore",
            Side::Target,
            &["--no-owner", "-d", db, &dump_s],
            &format!("pgbench-restore-{db}"),
        )
        .await?;
    }
    src.close().await;

    // --- pgbench.
    let t = Instant::now();
    let out = env
        .run_tool(
            "pgbench",
            Side::Source,
            &[
                "-n",
                "-c",
                &opts.clients.to_string(),
                "-j",
                &opts.jobs.to_string(),
                "-t",
                &per_client.to_string(),
                SOURCE_DB,
            ],
            "pgbench-run",
        )
        .await?;
    let pgbench_time = t.elapsed();
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps ="))
        .unwrap_or("")
        .to_owned();
    let src = env.pool(Side::Source, SOURCE_DB, 2).await?;
    let (history, max_hid): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(max(hid), 0) FROM pgbench_history")
            .fetch_one(&src)
            .await?;
    let changes = 4 * history as u64;
    println!(
        "pgbench: {} transactions ({changes} row changes) in {}; {tps}",
        history,
        report::secs(pgbench_time)
    );
    report.setting(format!(
        "pgbench: tpcb-like, scale {}, {} clients, {} jobs, {} transactions = {} row changes \
         (3 UPDATEs + 1 INSERT each); pgbench_history given `hid bigserial PRIMARY KEY` on both sides",
        opts.scale,
        opts.clients,
        opts.jobs,
        report::thousands(history as u64),
        report::thousands(changes)
    ));

    // --- 1. Native catch-up.
    // The launcher starts a subscription's apply worker at most once per
    // wal_retrieve_retry_interval (5 s by default): let that pass, or the
    // catch-up would include up to 5 s of launcher throttling.
    let throttle = Duration::from_secs(6);
    if disabled_at.elapsed() < throttle {
        tokio::time::sleep(throttle - disabled_at.elapsed()).await;
    }
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM pgbench_history")
        .fetch_one(&native)
        .await?;
    if before != 0 {
        bail!("the disabled subscription applied {before} history rows before the timing");
    }
    let meter = cpu::Meter::start(env).await?;
    let t0 = Instant::now();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER SUBSCRIPTION {SUBSCRIPTION} ENABLE"
    )))
    .execute(&native)
    .await?;
    let native_done = wait_native(&native, history, max_hid).await?;
    let native_time = native_done - t0;
    cpu::record(report, "native catch-up", meter.stop()?);
    let native_rate = report::rate(changes, native_time);
    println!(
        "native logical replication: caught up in {} ({}/s)",
        report::secs(native_time),
        report::fmt_rate(native_rate)
    );
    compare_tables(&src, &native, "native subscriber").await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SUBSCRIPTION {SUBSCRIPTION}"
    )))
    .execute(&native)
    .await?;
    native.close().await;
    report.target(
        "1",
        "Native logical replication catch-up (publication → subscription, enabled after pgbench)",
        report::changes_line(native_rate, changes, native_time),
        "anchor (measured elsewhere: 45k–50k/s)",
        "",
    );

    // --- 2a. Archive: slot → files.
    let meter = cpu::Meter::start(env).await?;
    let t0 = Instant::now();
    let archiver = env.spawn(
        &env.producer_bin,
        &["archive"],
        &producer_config,
        "pgbench-archiver",
        &[],
    )?;
    let mut children = vec![archiver];
    let mut counter = LineCounter::default();
    let archived_at = harness::poll_until(
        "the archiver to write every change",
        Duration::from_millis(50),
        Duration::from_secs(1800),
        &mut children,
        || {
            let n = counter.count(&archive);
            async move { Ok(n? >= changes) }
        },
    )
    .await?;
    let archive_time = archived_at - t0;
    cpu::record(report, "pgbench-archiver", meter.stop()?);
    env::stop_all(children).await;
    let records = LineCounter::default().count(&archive)?;
    if records != changes {
        report.note(format!(
            "the archiver wrote {records} records for {changes} row changes"
        ));
    }
    let bytes = env::dir_bytes(&archive)?;
    println!(
        "archiver: {records} records ({}) in {}",
        report::mb(bytes),
        report::secs(archive_time)
    );

    // --- 2b. Publish: files → stream.
    let meter = cpu::Meter::start(env).await?;
    let t0 = Instant::now();
    let producer = env.spawn(
        &env.producer_bin,
        &["run"],
        &producer_config,
        "pgbench-producer",
        &[],
    )?;
    let mut children = vec![producer];
    let published_at = harness::poll_until(
        "the stream to hold every record",
        Duration::from_millis(20),
        Duration::from_secs(1800),
        &mut children,
        || async move { Ok(published.count().await.unwrap_or(0) >= records) },
    )
    .await?;
    let publish_time = published_at - t0;
    cpu::record(report, "pgbench-producer", meter.stop()?);
    env::stop_all(children).await;
    let messages = streams.messages(&js).await.unwrap_or(0);
    println!(
        "producer: {records} records published in {} ({messages} messages)",
        report::secs(publish_time)
    );

    // --- 2b'. Publish the same files again, sanitized, into a stream of
    // its own (its own state directory: it starts at the first file).
    let sanitized = publish_sanitized(env, &js, &archive, records, report).await;

    // --- 2c. Apply: stream → target, K consumers.
    let mut best: Option<(usize, Duration)> = None;
    let mut one_consumer: Option<Duration> = None;
    for (k, consumer_bin, label) in &runs {
        let k = *k;
        let db = sd_db(k, label);
        let config = env.write_config(&ConfigSpec {
            name: &format!("pgbench-consumer-{k}{label}"),
            side: Side::Target,
            database: &db,
            archive_dir: &archive,
            streams: &streams,
            extra: opts.consumer_toml.clone(),
        })?;
        let mut add = vec!["add-tables"];
        add.extend(TABLES);
        env.run_bin(
            consumer_bin,
            &add,
            &config,
            &format!("pgbench-add-tables-{k}{label}"),
            &[],
        )
        .await?;
        let target = env.pool(Side::Target, &db, 2).await?;
        let instance = syncdata_consumer::store::instance_id(&target)
            .await
            .context("the target's instance id (migrations not run?)")?;
        let durables = streams.durables(&instance, &TABLES);
        env::install_batch_clock(&target).await?;
        let meter = cpu::Meter::start(env).await?;
        let t0 = env::now_us();
        let mut children = Vec::new();
        for i in 1..=k {
            children.push(env.spawn(
                consumer_bin,
                &["start"],
                &config,
                &format!("pgbench-consumer-{k}{label}-{i}"),
                &[],
            )?);
        }
        let applied = env::wait_applied(
            &js,
            &streams,
            &durables,
            &target,
            t0,
            &mut children,
            Duration::from_secs(3600),
        )
        .await?;
        report
            .notes
            .extend(applied.note(&format!("catch-up with {k} consumer(s)")));
        cpu::record(
            report,
            &format!(
                "syncdata catch-up, {k} consumer(s){}",
                if label.is_empty() {
                    String::new()
                } else {
                    format!(" ({label} binaries)")
                }
            ),
            meter.stop()?,
        );
        let elapsed = applied.data;
        let rss: Vec<u64> = children.iter().filter_map(|c| c.peak_rss()).collect();
        env::stop_all(children).await;
        let (gap, batches) = env::longest_gap(&target).await?;
        if gap >= STALL {
            report.note(format!(
                "catch-up with {k} consumer(s): the consumers stalled: {:.1} s passed between two \
                 of the {batches} batch commits (see \"what limits it\")",
                gap.as_secs_f64()
            ));
        }
        compare_tables(&src, &target, &format!("syncdata target ({k} consumer(s))")).await?;
        let dead = streams.dead_letters(&js).await;
        if dead > 0 {
            bail!("{dead} records were dead-lettered during the catch-up");
        }
        target.close().await;
        let r = report::rate(changes, elapsed);
        let ratio = r / native_rate;
        println!(
            "syncdata{}, {k} consumer(s): applied in {} ({}/s, {:.2}× native)",
            if label.is_empty() {
                String::new()
            } else {
                format!(" ({label} binaries)")
            },
            report::secs(elapsed),
            report::fmt_rate(r),
            ratio
        );
        let peak_rss = rss
            .iter()
            .map(|b| report::mb(*b))
            .collect::<Vec<_>>()
            .join(", ");
        let result = |extra: &str| {
            format!(
                "{} row changes/s ({} in {}; {extra}peak RSS {peak_rss})",
                report::fmt_rate(r),
                report::thousands(changes),
                report::secs(elapsed),
            )
        };
        if !label.is_empty() {
            report.row(
                "2",
                format!(
                    "syncdata catch-up, 1 consumer, baseline binaries ({})",
                    baseline
                        .as_ref()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                ),
                result(&format!("{ratio:.2}× native; ")),
            );
            continue;
        }
        report.target(
            "2",
            format!(
                "syncdata catch-up, {k} consumer{} (`syncdata start` launch → last batch committed)",
                if k == 1 { "" } else { "s" }
            ),
            result(""),
            "≥ 2.0× native",
            report::verdict_ratio(ratio, 2.0),
        );
        if best.is_none_or(|(_, b)| elapsed < b) {
            best = Some((k, elapsed));
        }
        if k == 1 {
            one_consumer = Some(elapsed);
        }
    }
    // --- 2c'. The same catch-up into a SQLite file, one consumer, as a
    // ratio to the PostgreSQL target's one-consumer catch-up above.
    let sqlite = crate::sqlite::catch_up(env, &js, &streams, &archive, &opts.consumer_toml).await?;
    report.notes.extend(sqlite.note("catch-up into SQLite"));
    let sqlite_time = sqlite.data;
    let sqlite_rate = report::rate(changes, sqlite_time);
    let pg_one = one_consumer.or(best.map(|(_, b)| b));
    let vs_pg = pg_one.map(|pg| pg.as_secs_f64() / sqlite_time.as_secs_f64().max(1e-9));
    println!(
        "syncdata into SQLite, 1 consumer: applied in {} ({}/s, {})",
        report::secs(sqlite_time),
        report::fmt_rate(sqlite_rate),
        vs_pg
            .map(|r| format!("{r:.2}× the PostgreSQL target"))
            .unwrap_or_default()
    );
    report.target(
        "2",
        "syncdata catch-up into SQLite, 1 consumer (docs/sqlite.md; the file starts empty)",
        format!(
            "{}{}",
            report::changes_line(sqlite_rate, changes, sqlite_time),
            vs_pg
                .map(|r| format!(
                    ", {r:.2}× the PostgreSQL target's 1-consumer catch-up in this run"
                ))
                .unwrap_or_default()
        ),
        "measured (no goal)",
        "—",
    );
    // --- 2d. The broker path alone: what delivering and acking the
    // published chunks costs, with nothing applied.
    let broker = broker_only(&js, &streams, records).await?;
    let broker_rate = report::rate(broker.records, broker.elapsed);
    println!(
        "broker alone: {} messages ({} records) pulled and acked in {} ({}/s, {:.2}× native)",
        broker.messages,
        broker.records,
        report::secs(broker.elapsed),
        report::fmt_rate(broker_rate),
        broker_rate / native_rate
    );
    report.row(
        "2",
        "JetStream alone: the same stream pulled (up to 1,000 messages / 16 MiB per pull, a durable per table as `syncdata start` uses) and each message acked; chunks split into records (core's parser), nothing decoded or applied (the harness's own client)",
        format!(
            "{} records/s ({} records in {} messages, {}; {:.2}× native)",
            report::fmt_rate(broker_rate),
            report::thousands(broker.records),
            report::thousands(broker.messages),
            report::secs(broker.elapsed),
            broker_rate / native_rate
        ),
    );
    report.row(
        "2",
        "syncdata archiver: pgoutput slot → segment files, streaming replication (`syncdata-producer archive`)",
        format!(
            "{} changes/s ({} records, {}, in {})",
            report::fmt_rate(report::rate(records, archive_time)),
            report::thousands(records),
            report::mb(bytes),
            report::secs(archive_time)
        ),
    );
    // The producer's lines, each against its records/s target.
    let producer_row = |report: &mut Report, what: &str, t: Duration, target: u64| {
        let r = report::rate(records, t);
        report.target(
            "2",
            what,
            format!(
                "{} records/s, {:.1} MB/s",
                report::fmt_rate(r),
                bytes as f64 / 1e6 / t.as_secs_f64()
            ),
            format!("≥ {} records/s", report::thousands(target)),
            report::verdict_ratio(r / target as f64, 1.0),
        );
    };
    producer_row(
        report,
        "syncdata producer on the pgbench files → stream (PubAck), no sanitization",
        publish_time,
        300_000,
    );
    match sanitized {
        Ok(t) => producer_row(
            report,
            "syncdata producer on the pgbench files, sanitized (bench/pgbench-rules.toml: hmac account ids, masked fillers, shifted dates)",
            t,
            200_000,
        ),
        Err(e) => report.note(format!(
            "the sanitized producer run on the pgbench files could not be measured: {e:#}"
        )),
    }
    if let Some((k, apply)) = best {
        let total = archive_time + publish_time + apply;
        let r = report::rate(changes, total);
        report.row(
            "2",
            format!(
                "syncdata end to end, stages one after another (archive + publish + apply with {k})"
            ),
            format!(
                "{} row changes/s ({}; {:.2}× native)",
                report::fmt_rate(r),
                report::secs(total),
                r / native_rate
            ),
        );
    }
    env.drop_source_slot(SLOT).await?;

    // --- 2e. End to end with every stage at once: archiver, producer and
    // one consumer launched together on the backlog in the second slot.
    let e2e_time = e2e
        .run(env, &js, records, &opts.consumer_toml, report)
        .await
        .context("end to end, stages at once")?;
    let e2e_target = e2e.target(env).await?;
    compare_tables(&src, &e2e_target, "syncdata end to end").await?;
    e2e_target.close().await;
    src.close().await;
    env.drop_source_slot(SLOT_E2E).await?;
    let r = report::rate(changes, e2e_time);
    println!(
        "syncdata end to end, stages at once: {} ({}/s, {:.2}× native)",
        report::secs(e2e_time),
        report::fmt_rate(r),
        r / native_rate
    );
    report.target(
        "2",
        "syncdata end to end from the slot, stages at once (`archive`, `run` and 1 × `syncdata start` launched together on the pgbench backlog → last batch committed)",
        report::changes_line(r, changes, e2e_time),
        "≥ 1.0× native",
        report::verdict_ratio(r / native_rate, 1.0),
    );
    Ok(())
}

/// The end-to-end run: its own slot (made before pgbench, next to the
/// staged run's), archive directory, stream and target database.
struct E2e {
    streams: Streams,
    archive: std::path::PathBuf,
    config: std::path::PathBuf,
    published: PublishedRecords,
}

impl E2e {
    async fn setup(env: &Env, js: &async_nats::jetstream::Context) -> Result<E2e> {
        let streams = Streams::new("pgbenche2e");
        streams.reset(js).await?;
        let archive = env.fresh_dir("pgbench/archive-e2e")?;
        let published = PublishedRecords::new();
        let config = env.write_config(&ConfigSpec {
            name: "pgbench-e2e-producer",
            side: Side::Source,
            database: SOURCE_DB,
            archive_dir: &archive,
            streams: &streams,
            extra: format!(
                "[producer]\nallow_unsanitized = true\nsource_url = {}\n{}\n[source]\nslot = {}\ntables = [{}]\n",
                harness::toml_str(&env.url(Side::Source, SOURCE_DB)),
                published.toml(),
                harness::toml_str(SLOT_E2E),
                TABLES.map(harness::toml_str).join(", ")
            ),
        })?;
        env.run_bin(
            &env.producer_bin,
            &[
                "setup-source",
                "--create-slot",
                "--tables",
                &TABLES.join(","),
            ],
            &config,
            "pgbench-e2e-setup-source",
            &[],
        )
        .await?;
        Ok(E2e {
            streams,
            archive,
            config,
            published,
        })
    }

    async fn target(&self, env: &Env) -> Result<PgPool> {
        env.pool(Side::Target, E2E_DB, 2).await
    }

    /// Launches the archiver, the producer and one consumer together and
    /// returns the time from launch to the last batch committed, once the
    /// producer has published all `records` and every durable is drained.
    async fn run(
        &self,
        env: &Env,
        js: &async_nats::jetstream::Context,
        records: u64,
        consumer_toml: &str,
        report: &mut Report,
    ) -> Result<Duration> {
        let config = env.write_config(&ConfigSpec {
            name: "pgbench-e2e-consumer",
            side: Side::Target,
            database: E2E_DB,
            archive_dir: &self.archive,
            streams: &self.streams,
            extra: consumer_toml.to_owned(),
        })?;
        let mut add = vec!["add-tables"];
        add.extend(TABLES);
        env.run_bin(
            &env.consumer_bin,
            &add,
            &config,
            "pgbench-e2e-add-tables",
            &[],
        )
        .await?;
        let target = self.target(env).await?;
        let instance = syncdata_consumer::store::instance_id(&target).await?;
        let durables = self.streams.durables(&instance, &TABLES);
        env::install_batch_clock(&target).await?;
        let meter = cpu::Meter::start(env).await?;
        let t0 = env::now_us();
        let mut children = vec![
            env.spawn(
                &env.producer_bin,
                &["archive"],
                &self.config,
                "pgbench-e2e-archiver",
                &[],
            )?,
            env.spawn(
                &env.producer_bin,
                &["run"],
                &self.config,
                "pgbench-e2e-producer",
                &[],
            )?,
            env.spawn(
                &env.consumer_bin,
                &["start"],
                &config,
                "pgbench-e2e-consumer",
                &[],
            )?,
        ];
        // The producer's counter, not JetStream, is polled while the
        // consumer works (see env::install_batch_clock).
        let published = self.published;
        harness::poll_until(
            "the end-to-end producer to publish every record",
            Duration::from_millis(100),
            Duration::from_secs(1800),
            &mut children,
            || async move { Ok(published.count().await.unwrap_or(0) >= records) },
        )
        .await?;
        let applied = env::wait_applied(
            js,
            &self.streams,
            &durables,
            &target,
            t0,
            &mut children,
            Duration::from_secs(3600),
        )
        .await?;
        report
            .notes
            .extend(applied.note("end to end, stages at once"));
        cpu::record(report, "end to end, stages at once", meter.stop()?);
        let elapsed = applied.data;
        env::stop_all(children).await;
        let (gap, batches) = env::longest_gap(&target).await?;
        if gap >= STALL {
            report.note(format!(
                "end to end, stages at once: {:.1} s passed between two of the {batches} batch \
                 commits (a stall, or the consumer waiting for the archiver and the producer)",
                gap.as_secs_f64()
            ));
        }
        let dead = self.streams.dead_letters(js).await;
        if dead > 0 {
            bail!("{dead} records were dead-lettered end to end");
        }
        target.close().await;
        js.delete_stream(&self.streams.stream).await.ok();
        js.delete_stream(&self.streams.dlq_stream).await.ok();
        Ok(elapsed)
    }
}

/// What the broker-only pass moved.
struct BrokerPass {
    elapsed: Duration,
    messages: u64,
    records: u64,
}

/// Pulls every message of the pgbench tables from `streams` through one
/// fresh durable per table, 1,000 at a time, acking each: the broker's share
/// of a catch-up, without applying anything. A message's records are
/// counted by splitting it with core's chunk parser (`syncdata_core::chunk`;
/// anything else is one record); nothing is decoded. Times the first pull
/// until the last message was acked.
async fn broker_only(
    js: &async_nats::jetstream::Context,
    streams: &Streams,
    records: u64,
) -> Result<BrokerPass> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures::StreamExt;

    let stream = js.get_stream(&streams.stream).await?;
    let mut consumers = Vec::new();
    for t in TABLES {
        let name = format!("bench_broker_only_{t}");
        let _ = stream.delete_consumer(&name).await;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: syncdata_core::subject::table_subject(
                    &streams.subject_prefix,
                    "public",
                    t,
                ),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .with_context(|| format!("durable {name}"))?;
        consumers.push((name, consumer));
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = consumers
        .iter()
        .map(|(_, consumer)| {
            let mut consumer = consumer.clone();
            tokio::spawn(async move {
                let (mut messages, mut records) = (0u64, 0u64);
                let mut last = Instant::now();
                loop {
                    let batch: Vec<_> = consumer
                        .batch()
                        .max_messages(1000)
                        .max_bytes(16 * 1024 * 1024)
                        .expires(Duration::from_millis(1000))
                        .messages()
                        .await?
                        .collect()
                        .await;
                    // An empty pull ends it only when nothing is left, not
                    // even delivered and unacknowledged: a message that
                    // arrives after its pull ended comes again after
                    // ack_wait (seen with pulls of 1,000 chunks and 200 ms).
                    if batch.is_empty() {
                        let info = consumer.info().await?;
                        if info.num_pending == 0 && info.num_ack_pending == 0 {
                            return anyhow::Ok((messages, records, last));
                        }
                    }
                    for m in batch {
                        // A status ends the pull (e.g. 409 "Message Size
                        // Exceeds MaxBytes" once the next chunk would not
                        // fit), as in `syncdata start`'s worker.
                        let Ok(m) = m else { continue };
                        records += records_in(&m.payload)?;
                        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                        messages += 1;
                    }
                    last = Instant::now();
                }
            })
        })
        .collect();
    // Until the last ack, as the catch-up is timed until the last commit
    // (the pulls that then wait out their expiry count in neither).
    let (mut messages, mut acked) = (0, 0);
    let mut end = t0;
    for task in tasks {
        let (m, n, last) = task.await??;
        messages += m;
        acked += n;
        end = end.max(last);
    }
    let elapsed = end - t0;
    for (name, _) in &consumers {
        let _ = stream.delete_consumer(name).await;
    }
    if acked != records {
        bail!(
            "the broker-only pass acked {messages} messages holding {acked} records; \
             {records} were published"
        );
    }
    Ok(BrokerPass {
        elapsed,
        messages,
        records: acked,
    })
}

/// Records one message carries: a chunk's count (core's own parsing of
/// the format), else one.
fn records_in(payload: &[u8]) -> Result<u64> {
    if !syncdata_core::chunk::is_chunk(payload) {
        return Ok(1);
    }
    let ranges = syncdata_core::chunk::split(payload).map_err(anyhow::Error::msg)?;
    Ok(ranges.len() as u64)
}

fn sd_db(k: usize, label: &str) -> String {
    format!("bench_sd_{k}{label}")
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    while !check().await? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Until the subscriber holds every history row. `max(hid)` is an index
/// probe, cheap enough to poll every 10 ms; the exact count is taken only
/// once the newest row is there.
async fn wait_native(native: &PgPool, history: i64, max_hid: i64) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let max: i64 = sqlx::query_scalar("SELECT coalesce(max(hid), 0) FROM pgbench_history")
            .fetch_one(native)
            .await?;
        if max >= max_hid {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM pgbench_history")
                .fetch_one(native)
                .await?;
            if count >= history {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("native replication did not catch up within an hour");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Row count and checksum of every pgbench table, source against target.
pub async fn compare_tables(src: &PgPool, dst: &PgPool, what: &str) -> Result<()> {
    for t in TABLES {
        let a = workload::table_fingerprint(src, "public", t).await?;
        let b = workload::table_fingerprint(dst, "public", t).await?;
        if a != b {
            bail!("{what}: {t} differs from the source: {a:?} vs {b:?}");
        }
    }
    println!("{what}: all {} tables equal the source", TABLES.len());
    Ok(())
}

/// Counts the lines of the complete segment files of a directory, reading
/// each file once (a segment's name appears only when it is complete).
#[derive(Default)]
struct LineCounter {
    seen: HashSet<String>,
    lines: u64,
}

impl LineCounter {
    fn count(&mut self, dir: &Path) -> Result<u64> {
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".jsonl") || self.seen.contains(&name) {
                continue;
            }
            let bytes = std::fs::read(dir.join(&name))?;
            self.lines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            self.seen.insert(name);
        }
        Ok(self.lines)
    }
}

/// The pgbench rules of the sanitized producer run.
const RULES: &str = include_str!("../pgbench-rules.toml");

/// Publishes the pgbench files again with sanitization rules, into a
/// stream of its own, and returns the time from launching the producer
/// until it has published every record. A rule that refused records would
/// keep the count short: bounded by a timeout (300 s), not waited for
/// forever.
async fn publish_sanitized(
    env: &Env,
    js: &async_nats::jetstream::Context,
    archive: &Path,
    records: u64,
    report: &mut Report,
) -> Result<Duration> {
    let streams = Streams::new("pgbenchsan");
    streams.reset(js).await?;
    let published = PublishedRecords::new();
    let config = producer::sanitized_config(
        env,
        &producer::SanitizedRun {
            name: "pgbench-producer-sanitized",
            database: SOURCE_DB,
            state: "pgbench/state-sanitized",
            rules_file: "pgbench-rules.toml",
            rules: RULES,
        },
        archive,
        &streams,
        published,
    )?;
    let done = producer::publish(
        env,
        published,
        &config,
        records,
        "pgbench-producer-sanitized",
        &[("SYNCDATA_SANITIZE_KEY", producer::KEY)],
        Duration::from_secs(300),
        report,
    )
    .await;
    js.delete_stream(&streams.stream).await.ok();
    js.delete_stream(&streams.dlq_stream).await.ok();
    Ok(done?.0)
}
