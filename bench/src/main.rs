//! `syncdata-bench`: syncdata measured against PostgreSQL's own logical
//! replication, on the same machine, in one run. Prints a markdown table
//! (and writes it to `--results`).
//!
//! Needs two PostgreSQL clusters (a source with wal_level=logical, a
//! target), a JetStream nats-server, the project's release
//! binaries and PostgreSQL's client tools. `scripts/bench.sh` provides all
//! of it on throwaway servers.
//!
//! 1. native logical replication catch-up of a pgbench run (the anchor);
//! 2. syncdata catch-up of the same changes (archiver, producer, then 1 and
//!    2 consumers, each stage timed alone; into SQLite; the broker alone;
//!    end to end with every stage at once);
//! 3. producer records/s and MB/s, with and without sanitization;
//! 4. latency at a steady 5,000 changes/s;
//! 5. peak RSS of producer and consumer with an N-record backlog;
//! 6. snapshot of a table against `pg_dump -t T | psql`.
//!
//! A benchmark, not a test: nothing here fails on a slow number.

mod cpu;
mod delay;
mod env;
mod latency;
mod pgbench;
mod producer;
mod report;
mod snapshot;
mod sqlite;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use env::{Env, Side};
use report::Report;

#[derive(Debug, Parser)]
#[command(
    name = "syncdata-bench",
    about = "Benchmarks syncdata against PostgreSQL native logical replication on this machine"
)]
struct Args {
    /// Source PostgreSQL (wal_level=logical, wal2json, superuser).
    #[arg(long, value_name = "URL")]
    source_url: String,
    /// Target PostgreSQL (another cluster: the subscriber and syncdata's
    /// local databases).
    #[arg(long, value_name = "URL")]
    target_url: String,
    /// NATS server with JetStream.
    #[arg(long, value_name = "URL")]
    nats_url: String,
    /// Work directory: configs, archives, logs.
    #[arg(long, value_name = "DIR", default_value = "/tmp/syncdata-bench")]
    workdir: PathBuf,
    /// Directory holding `syncdata` and `syncdata-producer` (default: next
    /// to this executable).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// PostgreSQL client tools (pgbench, pg_dump, pg_restore, psql).
    #[arg(long, value_name = "DIR", default_value = syncdata_testkit::harness::PG_BIN)]
    pg_bin: PathBuf,
    /// Small sizes: the whole run takes a few minutes.
    #[arg(long)]
    quick: bool,
    /// Measurements to run: pgbench (1, 2), producer (3, 5), latency (4),
    /// snapshot (6). Default: all.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    only: Vec<String>,
    /// pgbench scale (default 10; quick 1).
    #[arg(long)]
    scale: Option<u32>,
    /// pgbench transactions in all (default 100,000; quick 10,000).
    #[arg(long)]
    transactions: Option<u64>,
    /// pgbench clients.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// pgbench threads.
    #[arg(long, default_value_t = 2)]
    jobs: u32,
    /// Consumer process counts for the catch-up.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    consumers: Vec<usize>,
    /// Records for the producer and memory runs (default 1,000,000; quick
    /// 200,000).
    #[arg(long)]
    records: Option<usize>,
    /// Skip the sanitized producer run.
    #[arg(long)]
    no_sanitize: bool,
    /// Changes per second of the latency run.
    #[arg(long, default_value_t = 5000)]
    latency_rate: u64,
    /// Seconds of steady load (default 30; quick 12).
    #[arg(long)]
    latency_secs: Option<u64>,
    /// Seconds at the start of the latency run left out (default 5; quick 3).
    #[arg(long)]
    latency_warmup_secs: Option<u64>,
    /// consumer.fetch_wait_ms values of the latency runs (one run each).
    #[arg(long, value_delimiter = ',', default_value = "200,50")]
    latency_fetch_wait_ms: Vec<u64>,
    /// Rows of the snapshot table (default 1,000,000; quick 200,000).
    #[arg(long)]
    snapshot_rows: Option<u64>,
    /// consumer.batch_size for every run (default: the project's default).
    #[arg(long)]
    batch_size: Option<usize>,
    /// consumer.fetch_wait_ms for the catch-up, memory and snapshot runs
    /// (default: the project's default).
    #[arg(long)]
    fetch_wait_ms: Option<u64>,
    /// More `[consumer]` settings for every run, as TOML lines (repeatable;
    /// e.g. `--consumer-setting pull_max_bytes=4194304`).
    #[arg(long, value_name = "KEY=VALUE")]
    consumer_setting: Vec<String>,
    /// RUST_LOG of the binaries under test.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Also write the table here (markdown), above the runs the file
    /// already holds.
    #[arg(long, value_name = "PATH")]
    results: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    // A helper of `scripts/bench.sh scaling`, not a measurement.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("delay-proxy") {
        return syncdata_testkit::harness::exit_code(
            "syncdata-bench delay-proxy",
            delay::run(&argv[2..]).await.map(|()| true),
            2,
        );
    }
    let args = Args::parse();
    syncdata_testkit::harness::exit_code("syncdata-bench", run(args).await, 2)
}

/// Ok(false) when a measurement could not be taken (its row says why).
async fn run(args: Args) -> Result<bool> {
    let phases = ["pgbench", "producer", "latency", "snapshot"];
    for p in &args.only {
        if !phases.contains(&p.as_str()) {
            bail!(
                "--only: unknown measurement {p:?} (one of {})",
                phases.join(", ")
            );
        }
    }
    let wanted = |p: &str| args.only.is_empty() || args.only.iter().any(|o| o == p);
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => syncdata_testkit::harness::bin_dir(),
    };
    let env = Env::new(
        &args.source_url,
        &args.target_url,
        &args.nats_url,
        &args.workdir,
        &bin_dir,
        &args.pg_bin,
        &args.log_level,
    )?;
    let q = args.quick;
    let mut report = Report::default();
    let latency_consumer_toml = consumer_toml(args.batch_size, None, &args.consumer_setting);
    let consumer_toml = consumer_toml(args.batch_size, args.fetch_wait_ms, &args.consumer_setting);
    report.setting(format!("mode: {}", if q { "--quick" } else { "full" }));
    report.setting(format!(
        "consumer settings: batch_size = {}, fetch_wait_ms = {} (catch-up, memory, snapshot); \
         {}; RUST_LOG={}",
        args.batch_size
            .map_or("1000 (default)".to_owned(), |b| b.to_string()),
        args.fetch_wait_ms
            .map_or("200 (default)".to_owned(), |b| b.to_string()),
        if args.consumer_setting.is_empty() {
            "the others: project defaults".to_owned()
        } else {
            format!(
                "also {}; the others: project defaults",
                args.consumer_setting.join(", ")
            )
        },
        args.log_level
    ));
    report.setting("producer settings: project defaults (chunks of at most 1,000 records / 512 KiB, max_in_flight 1024); archiver: project defaults (streaming replication, segment_max_age_ms 500)");
    let machine_at_start = machine(&env).await;
    let started = Instant::now();
    let mut failed = Vec::new();

    if wanted("pgbench") {
        let opts = pgbench::Options {
            scale: args.scale.unwrap_or(if q { 1 } else { 10 }),
            transactions: args
                .transactions
                .unwrap_or(if q { 10_000 } else { 100_000 }),
            clients: args.clients,
            jobs: args.jobs,
            consumers: args.consumers.clone(),
            consumer_toml: consumer_toml.clone(),
        };
        let r = pgbench::run(&env, &opts, &mut report).await;
        failure(&mut report, &mut failed, "1, 2", r);
    }
    if wanted("producer") {
        let opts = producer::Options {
            records: args.records.unwrap_or(if q { 200_000 } else { 1_000_000 }),
            sanitize: !args.no_sanitize,
            memory: true,
            consumer_toml: consumer_toml.clone(),
        };
        let r = producer::run(&env, &opts, &mut report).await;
        failure(&mut report, &mut failed, "3, 5", r);
    }
    if wanted("latency") {
        let opts = latency::Options {
            rate: args.latency_rate,
            duration: Duration::from_secs(args.latency_secs.unwrap_or(if q { 12 } else { 30 })),
            warmup: Duration::from_secs(args.latency_warmup_secs.unwrap_or(if q { 3 } else { 5 })),
            fetch_wait_ms: args.latency_fetch_wait_ms.clone(),
            consumer_toml: latency_consumer_toml.clone(),
        };
        let r = latency::run(&env, &opts, &mut report).await;
        failure(&mut report, &mut failed, "4", r);
    }
    if wanted("snapshot") {
        let opts = snapshot::Options {
            rows: args
                .snapshot_rows
                .unwrap_or(if q { 200_000 } else { 1_000_000 }),
            consumer_toml: consumer_toml.clone(),
        };
        let r = snapshot::run(&env, &opts, &mut report).await;
        failure(&mut report, &mut failed, "6", r);
    }

    let mut machine = machine_at_start;
    machine.push((
        "load average at the end (1, 5, 15 min)".to_owned(),
        loadavg(),
    ));
    machine.push((
        "harness wall time".to_owned(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    let title = format!(
        "syncdata-bench results ({}, {})",
        if q { "--quick" } else { "full" },
        now_utc()
    );
    let text = report.markdown(&machine, &title);
    println!("\n{text}");
    if let Some(path) = &args.results {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        // Earlier runs stay below this one: the file is the history of
        // the figures the docs cite.
        let earlier = match std::fs::read_to_string(path) {
            Ok(earlier) => earlier,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let all = if earlier.is_empty() {
            text.clone()
        } else {
            format!("{text}\n{earlier}")
        };
        std::fs::write(path, all).with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "results written to {} (above its earlier runs)",
            path.display()
        );
    }
    if !failed.is_empty() {
        eprintln!(
            "syncdata-bench: measurement(s) {} failed; logs in {}",
            failed.join("; "),
            env.workdir.join("logs").display()
        );
    }
    Ok(failed.is_empty())
}

/// A failed measurement gets a row saying so; the others still run.
fn failure(report: &mut Report, failed: &mut Vec<String>, id: &str, result: Result<()>) {
    if let Err(e) = result {
        let msg = format!("{e:#}");
        eprintln!("measurement {id} failed: {msg}");
        let first = msg
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>();
        report.row(id, "measurement failed", format!("not measured: {first}"));
        failed.push(id.to_owned());
    }
}

/// What the table is worth knowing about the machine.
async fn machine(env: &Env) -> Vec<(String, String)> {
    let mut m = Vec::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    m.push((
        "CPU".to_owned(),
        format!("{model}, {cores} cores available"),
    ));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(kb) = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        m.push((
            "memory".to_owned(),
            format!("{:.1} GiB", kb as f64 / 1048576.0),
        ));
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    m.push(("kernel".to_owned(), format!("Linux {}", kernel.trim())));
    for (side, label) in [(Side::Source, "source"), (Side::Target, "target")] {
        let v = async {
            let pool = env.pool(side, "postgres", 1).await?;
            let row: (String, String, String, String, String) = sqlx::query_as(
                "SELECT current_setting('server_version'), current_setting('fsync'), \
                 current_setting('synchronous_commit'), current_setting('shared_buffers'), \
                 current_setting('wal_level')",
            )
            .fetch_one(&pool)
            .await?;
            pool.close().await;
            anyhow::Ok(format!(
                "PostgreSQL {} (fsync={}, synchronous_commit={}, shared_buffers={}, wal_level={})",
                row.0, row.1, row.2, row.3, row.4
            ))
        }
        .await
        .unwrap_or_else(|e| format!("unknown ({e})"));
        m.push((format!("{label} cluster"), v));
    }
    let nats = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    m.push((
        "NATS".to_owned(),
        format!("{nats} (JetStream file store, one server)"),
    ));
    m.push((
        "load average at the start (1, 5, 15 min)".to_owned(),
        loadavg(),
    ));
    m
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn consumer_toml(batch: Option<usize>, wait: Option<u64>, more: &[String]) -> String {
    let mut s = String::new();
    if batch.is_some() || wait.is_some() || !more.is_empty() {
        s.push_str("[consumer]\n");
    }
    if let Some(b) = batch {
        s.push_str(&format!("batch_size = {b}\n"));
    }
    if let Some(w) = wait {
        s.push_str(&format!("fetch_wait_ms = {w}\n"));
    }
    for line in more {
        s.push_str(&format!("{line}\n"));
    }
    s
}
