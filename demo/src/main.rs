//! `syncdata-demo`: the whole pipeline on one machine, checked end to end.
//!
//! By default from a real source database (module `real`). With
//! `--synthetic`:
//!
//! 1. Creates two databases, `syncdata_demo_expected` (stands in for
//!    production) and `syncdata_demo_local` (the synced copy), with the demo
//!    schema.
//! 2. Generates a synthetic history (inserts, full/partial/key-changing
//!    updates, deletes, one TRUNCATE) and applies it in order to the expected
//!    database with the reference applier: that is the truth.
//! 3. Writes a real config file, resets the demo's JetStream streams and
//!    archive directory, registers the tables with `syncdata add-tables`, and
//!    starts `syncdata-producer run` and N × `syncdata start`, each serving
//!    Prometheus metrics on a free loopback port.
//! 4. Writes the history as change files, the tail of it appended to a file
//!    that is still being written.
//! 5. Waits until every local table's fingerprint equals the expected one,
//!    prints a comparison table and the throughput, scrapes every process's
//!    `/metrics` and prints a summary line, and stops the processes.
//!
//! Exit status 0 only when every table matches.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use syncdata_core::config::Config;
use syncdata_core::record::Record;
use syncdata_testkit::harness::{self, ConfigFile, Proc, TestNames};
use syncdata_testkit::workload::{self, WorkloadSpec, DEMO_DDL};

mod real;

const EXPECTED_DB: &str = "syncdata_demo_expected";
const LOCAL_DB: &str = "syncdata_demo_local";
const SCHEMA: &str = "public";
/// The sanitization rules the demo's producer runs with: the local stack's.
const RULES: &str = include_str!("../../compose/config/rules.toml");

/// The demo's JetStream names: `SYNCDATA_DEMO` with subjects
/// `syncdata_demo.changes.…`, and its DLQ.
fn stream_names() -> TestNames {
    TestNames::named("SYNCDATA_DEMO", "syncdata_demo")
}

#[derive(Debug, Parser)]
#[command(
    name = "syncdata-demo",
    about = "Runs a source database, the archiver, the producer, NATS and consumers end to end \
             and checks the local copy against the source"
)]
struct Args {
    /// PostgreSQL server (any database on it; the demo creates its own two).
    #[arg(long, value_name = "URL")]
    pg_url: String,
    /// NATS server with JetStream.
    #[arg(long, value_name = "URL")]
    nats_url: String,
    /// Working directory: config, archive and logs (created if missing).
    #[arg(long, value_name = "DIR")]
    workdir: PathBuf,
    /// Number of changes: of the source's SQL workload (about), or of the
    /// synthetic history.
    #[arg(long, default_value_t = 20_000)]
    changes: usize,
    /// Number of `syncdata start` processes.
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Instead of a real source: a synthetic history written as change
    /// files (no archiver), checked against an in-order replay.
    #[arg(long)]
    synthetic: bool,
    /// Seed of the synthetic history.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Seconds to wait for the local copy to match.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Where the consumers apply: the local PostgreSQL database, or a
    /// SQLite file in the work directory (docs/sqlite.md).
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "sqlite"])]
    target: String,
    /// NATS users (scripts/servers.sh makes them; see docs/trust.md). The
    /// passwords come from the environment only. Without them the demo runs
    /// against an open server (`nats.allow_open`).
    #[arg(long, env = "SYNCDATA_TEST_NATS_PRODUCER_USER")]
    nats_producer_user: Option<String>,
    #[arg(long, env = "SYNCDATA_TEST_NATS_CONSUMER_USER")]
    nats_consumer_user: Option<String>,
    /// Deletes the demo's streams before the run.
    #[arg(long, env = "SYNCDATA_TEST_NATS_ADMIN_USER")]
    nats_admin_user: Option<String>,
    #[arg(skip = std::env::var("SYNCDATA_TEST_NATS_PRODUCER_PASSWORD").ok())]
    nats_producer_password: Option<String>,
    #[arg(skip = std::env::var("SYNCDATA_TEST_NATS_CONSUMER_PASSWORD").ok())]
    nats_consumer_password: Option<String>,
    #[arg(skip = std::env::var("SYNCDATA_TEST_NATS_ADMIN_PASSWORD").ok())]
    nats_admin_password: Option<String>,
    /// The message signing key (environment only: SYNCDATA_TEST_SIGNING_KEY,
    /// else SYNCDATA_SIGNING_KEY); the producer signs, the consumers verify.
    #[arg(skip = std::env::var("SYNCDATA_TEST_SIGNING_KEY")
        .or_else(|_| std::env::var("SYNCDATA_SIGNING_KEY")).ok())]
    signing_key: Option<String>,
}

/// `[nats]` lines authenticating as one user with its password in a file
/// (0600) in `dir`, plus the signing key file; or `allow_open` without a user.
fn nats_auth_lines(
    dir: &Path,
    role: &str,
    user: Option<&str>,
    password: Option<&str>,
    key_file: Option<&Path>,
) -> Result<String> {
    let mut s = String::new();
    match (user, password) {
        (Some(user), Some(password)) => {
            let file = write_secret(dir, &format!("nats-{role}.password"), password)?;
            s += &format!("user = {}\n", harness::toml_str(user));
            s += &format!("password_file = {}\n", harness::toml_str(path_str(&file)?));
        }
        _ => s += "allow_open = true\n",
    }
    if let Some(key) = key_file {
        s += &format!("signing_key_file = {}\n", harness::toml_str(path_str(key)?));
    }
    Ok(s)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("the work directory path is not UTF-8")
}

/// Writes a secret readable by its owner only.
fn write_secret(dir: &Path, name: &str, secret: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    Ok(path)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = if args.synthetic {
        run(args).await
    } else {
        real::run(args).await
    };
    harness::exit_code("syncdata-demo", outcome, 1)
}

async fn run(args: Args) -> Result<bool> {
    if args.consumers == 0 {
        bail!("--consumers must be at least 1");
    }
    std::fs::create_dir_all(&args.workdir)
        .with_context(|| format!("cannot create {}", args.workdir.display()))?;
    let workdir = args.workdir.canonicalize()?;
    let archive = workdir.join("archive");
    // `syncdata` and `syncdata-producer` next to this executable.
    let bin_dir = harness::bin_dir();
    let producer_bin = harness::bin_in(&bin_dir, "syncdata-producer")?;
    let consumer_bin = harness::bin_in(&bin_dir, "syncdata")?;

    // 1. Databases.
    let base = PgConnectOptions::from_str(&args.pg_url).context("--pg-url is not a valid URL")?;
    let admin = pool(base.clone(), 2)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(&args.pg_url)))?;
    for db in [EXPECTED_DB, LOCAL_DB] {
        recreate_database(&admin, db).await?;
    }
    admin.close().await;
    let expected = pool(base.clone().database(EXPECTED_DB), 4).await?;
    let local = pool(base.clone().database(LOCAL_DB), 4).await?;
    for (db, p) in [(EXPECTED_DB, &expected), (LOCAL_DB, &local)] {
        sqlx::raw_sql(DEMO_DDL)
            .execute(p)
            .await
            .with_context(|| format!("cannot create the demo tables in {db}"))?;
    }
    println!("databases {EXPECTED_DB} and {LOCAL_DB} created with the demo schema");

    // 2. History and truth.
    let spec = WorkloadSpec::full(args.seed, args.changes);
    let t = Instant::now();
    let records = workload::generate(&spec);
    let generated_in = t.elapsed();
    let mix = workload::describe(&records)
        .into_iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "generated {} changes (seed {}) in {:.0} ms: {mix}",
        records.len(),
        args.seed,
        ms(generated_in)
    );
    // The producer publishes what the shipped rules leave of each record:
    // the expected copy gets the same.
    let rules_path = workdir.join("rules.toml");
    std::fs::write(&rules_path, RULES)
        .with_context(|| format!("cannot write {}", rules_path.display()))?;
    let sanitizer = syncdata_producer::sanitize::Sanitizer::load(
        &rules_path,
        None,
        std::time::Duration::from_secs(3600),
    )
    .context("the shipped rules file does not load")?;
    let mut sanitized = Vec::with_capacity(records.len());
    for mut r in records.iter().cloned() {
        match sanitizer.apply(&mut r) {
            Ok(syncdata_producer::sanitize::Verdict::Publish) => sanitized.push(r),
            Ok(_) => {}
            Err(halt) => bail!("the shipped rules halt {}: {halt:?}", r.qualified_name()),
        }
    }
    let t = Instant::now();
    workload::apply_in_order(&expected, &sanitized)
        .await
        .context("in-order apply to the expected database failed")?;
    println!(
        "applied them in order to {EXPECTED_DB} in {:.0} ms",
        ms(t.elapsed())
    );
    let tables = workload::demo_tables();
    let mut truth = Vec::new();
    for table in &tables {
        truth.push(workload::table_fingerprint(&expected, SCHEMA, table).await?);
    }

    // 3. Config, clean streams and archive.
    let config_path = workdir.join("config.toml");
    let key_file = match &args.signing_key {
        Some(key) => Some(write_secret(&workdir, "signing.key", key)?),
        None => {
            println!("no signing key in the environment: messages go unsigned and unverified");
            None
        }
    };
    let consumer_auth = nats_auth_lines(
        &workdir,
        "consumer",
        args.nats_consumer_user.as_deref(),
        args.nats_consumer_password.as_deref(),
        key_file.as_deref(),
    )?;
    let producer_auth = nats_auth_lines(
        &workdir,
        "producer",
        args.nats_producer_user.as_deref(),
        args.nats_producer_password.as_deref(),
        key_file.as_deref(),
    )?;
    if consumer_auth.contains("allow_open") {
        println!("no NATS credentials in the environment: running against an open server (nats.allow_open)");
    }
    let config_text = config_toml(
        &base,
        &args.pg_url,
        &args.nats_url,
        &consumer_auth,
        &archive,
        &rules_path,
    )?;
    // A SQLite target: the consumers apply into <workdir>/local.db.
    let sqlite_file = (args.target == "sqlite").then(|| workdir.join("local.db"));
    let config_text = match &sqlite_file {
        Some(file) => {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            let url = harness::toml_str(&format!("sqlite://{}", path_str(file)?));
            config_text.replacen(
                "\n[producer]\n",
                &format!("\n[target]\nurl = {url}\n\n[producer]\n"),
                1,
            )
        }
        None => config_text,
    };
    std::fs::write(&config_path, config_text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = Config::load_from(&config_path, |_| None)
        .context("the demo wrote a config file the project does not accept")?;
    println!("config written to {}", config_path.display());
    let mut admin_config = config.clone();
    if let (Some(user), Some(password)) = (&args.nats_admin_user, &args.nats_admin_password) {
        admin_config.nats.user = Some(user.clone());
        admin_config.nats.password_file = None;
        admin_config.nats.password = Some(syncdata_core::config::Secret(password.clone()));
    }
    reset_streams(&admin_config).await?;
    if archive.exists() {
        std::fs::remove_dir_all(&archive)
            .with_context(|| format!("cannot clear {}", archive.display()))?;
    }
    std::fs::create_dir_all(&archive)?;

    // 4. Processes.
    let ddl_path = workdir.join("schema.sql");
    std::fs::write(&ddl_path, DEMO_DDL)?;
    let ddl_arg = path_str(&ddl_path)?.to_owned();
    let mut add_args = vec!["add-tables"];
    if sqlite_file.is_some() {
        // The tables are created from production's DDL.
        add_args.extend(["--create-from", ddl_arg.as_str()]);
    }
    add_args.extend(["customers", "orders", "order_lines"]);
    let mut add = start(
        &workdir,
        &consumer_bin,
        &add_args,
        "add-tables",
        &config_path,
    )?;
    let status = add.finish(Duration::from_secs(60)).await?;
    if !status.success() {
        print_log_tail(add.log_path());
        bail!("`syncdata add-tables customers orders order_lines` failed: {status}");
    }
    println!("tables registered with `syncdata add-tables`");
    // Each process gets its own config file: the shared one plus the
    // address its Prometheus endpoint listens on.
    let mut procs = Vec::new();
    let endpoints = start_publish_and_apply(
        &mut procs,
        &workdir,
        &config_path,
        (&producer_bin, &consumer_bin),
        (&consumer_auth, &producer_auth),
        args.consumers,
    )?;
    println!(
        "started syncdata-producer and {} syncdata consumer(s); logs in {}; metrics on {}",
        args.consumers,
        workdir.display(),
        endpoints
            .iter()
            .map(|(name, port)| format!("{name} 127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // 5. Archive, then 6. wait for convergence.
    let started = Instant::now();
    let mut all_written = None;
    let outcome = async {
        write_history(&archive, &records).await?;
        all_written = Some(Instant::now());
        match &sqlite_file {
            Some(_) => {
                let source = database_url(&args.pg_url, EXPECTED_DB);
                wait_for_verify(
                    &workdir,
                    &consumer_bin,
                    &config_path,
                    &source,
                    &truth,
                    &mut procs,
                    args.timeout_secs,
                )
                .await
            }
            None => wait_for_match(&local, &tables, &truth, &mut procs, args.timeout_secs).await,
        }
    }
    .await;
    let elapsed = started.elapsed();
    let lag = all_written.map(|t| t.elapsed());
    // While the processes still run: their endpoints are part of what the
    // demo shows working (the local stack's Prometheus scrapes the same).
    let metrics = metrics_summary(&endpoints).await;
    let stop_warnings = harness::stop_all(&mut procs, Duration::from_secs(20)).await;
    let print_log_tails = || {
        for p in std::iter::once(&add).chain(&procs) {
            print_log_tail(p.log_path());
        }
    };
    let warn = || {
        for w in &stop_warnings {
            println!("warning: {w}");
        }
    };

    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            warn();
            print_log_tails();
            return Err(e);
        }
    };
    let local_prints = match &outcome {
        Wait::Matched(prints) | Wait::Gave(_, prints) => prints.clone(),
    };
    println!();
    print_table(&tables, &truth, &local_prints);
    println!();
    match &metrics {
        Ok(line) => println!("{line}"),
        Err(e) => println!("warning: {e}"),
    }
    warn();
    match outcome {
        Wait::Matched(_) => {
            println!(
                "{} changes synced in {:.2} s ({:.0} changes/s) by 1 producer and {} consumer(s)",
                records.len(),
                elapsed.as_secs_f64(),
                records.len() as f64 / elapsed.as_secs_f64().max(1e-9),
                args.consumers
            );
            if let Some(lag) = lag {
                println!(
                    "(the last changes were appended {:.2} s after the first; the local copy \
                     matched {:.2} s after the last append)",
                    (elapsed - lag).as_secs_f64(),
                    lag.as_secs_f64()
                );
            }
            println!("OK: every table matches");
            if let Some(file) = &sqlite_file {
                show_sqlite_query(
                    file,
                    "select id, amount, tags, json_extract(meta, '$.source') as source, \
                     created_at from orders order by id limit 5",
                );
            }
            Ok(true)
        }
        Wait::Gave(reason, _) => {
            println!("FAILED: {reason}");
            print_log_tails();
            Ok(false)
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn pool(options: PgConnectOptions, max: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.application_name("syncdata-demo"))
        .await?)
}

async fn recreate_database(admin: &PgPool, name: &str) -> Result<()> {
    // `name` is one of this file's constants; quoted anyway.
    let ident = format!("\"{}\"", name.replace('"', "\"\""));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {ident} WITH (FORCE)"
    )))
    .execute(admin)
    .await
    .with_context(|| format!("cannot drop database {name}"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {ident}")))
        .execute(admin)
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    Ok(())
}

/// The URL with any password replaced, for messages.
fn redact(url: &str) -> String {
    match url_password(url) {
        Some(_) => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let at = rest.rfind('@').unwrap_or(0);
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// The percent-decoded password of a `postgres://user:password@host/db` URL.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    let bytes = password.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn config_toml(
    base: &PgConnectOptions,
    pg_url: &str,
    nats_url: &str,
    nats_auth: &str,
    archive: &Path,
    rules: &Path,
) -> Result<String> {
    if archive.to_str().is_none() {
        bail!("the work directory path is not UTF-8");
    }
    let rules = rules
        .to_str()
        .context("the work directory path is not UTF-8")?;
    let extra = format!(
        "{nats_auth}\n[producer]\nrules_file = {}\n",
        harness::toml_str(rules)
    );
    let password = url_password(pg_url);
    Ok(ConfigFile {
        written_by: Some("syncdata-demo"),
        pg_host: base.get_host(),
        pg_port: base.get_port(),
        pg_user: base.get_username(),
        pg_password: password.as_deref(),
        pg_database: LOCAL_DB,
        archive_dir: archive,
        nats_url,
        names: &stream_names(),
        extra: &extra,
    }
    .text())
}

/// `<workdir>/<name>.toml`: the shared config plus `[<section>]
/// metrics_addr` on `port`, checked like the shared one; `auth` replaces the
/// shared config's NATS credential lines with another role's.
fn process_config(
    shared: &Path,
    name: &str,
    section: &str,
    port: u16,
    auth: Option<(&str, &str)>,
) -> Result<PathBuf> {
    let mut text = std::fs::read_to_string(shared)
        .with_context(|| format!("cannot read {}", shared.display()))?;
    if let Some((from, to)) = auth {
        text = text.replace(from, to);
    }
    let header = format!("\n[{section}]\n");
    let setting = format!("metrics_addr = \"127.0.0.1:{port}\"\n");
    match text.find(&header) {
        Some(at) => text.insert_str(at + header.len(), &setting),
        None => text += &format!("{header}{setting}"),
    }
    let path = shared.with_file_name(format!("{name}.toml"));
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Config::load_from(&path, |_| None).with_context(|| {
        format!(
            "the demo wrote a config file ({}) the project does not accept",
            path.display()
        )
    })?;
    Ok(path)
}

/// The sum of `metric`'s samples (every label set) in an exposition.
fn sum(body: &str, metric: &str) -> f64 {
    harness::sample_sum(body, metric, &[]).unwrap_or(0.0)
}

/// One line of what the processes' Prometheus endpoints say: records
/// published, rows written per consumer, worst lag, dead letters.
async fn metrics_summary(endpoints: &[(String, u16)]) -> Result<String> {
    let mut published = 0.0;
    let mut quarantined = 0.0;
    let mut written = Vec::new();
    let mut lag: f64 = 0.0;
    let mut dead: f64 = 0.0;
    for (name, port) in endpoints {
        let body = harness::scrape(*port)
            .await
            .with_context(|| format!("metrics: cannot scrape {name} on 127.0.0.1:{port}"))?;
        if name == "producer" {
            published += sum(&body, "syncdata_producer_records_total");
            quarantined += sum(&body, "syncdata_producer_quarantined_total");
        } else {
            let rows = sum(&body, "syncdata_records_applied_total");
            written.push(format!("{name} {rows}"));
            lag = harness::samples(&body, "syncdata_lag_seconds")
                .map(|(_, v)| v)
                .fold(lag, f64::max);
            // Every consumer reports the DLQ of the same durables.
            dead = sum(&body, "syncdata_dlq_messages").max(dead);
        }
    }
    Ok(format!(
        "metrics (GET /metrics of each process): producer published {published} records \
         ({quarantined} lines quarantined); rows written: {}; lag (last sampled) {lag:.1} s; dead letters {dead}",
        written.join(", ")
    ))
}

/// Deletes the demo's streams (and with them every durable consumer) so a
/// rerun starts from nothing.
async fn reset_streams(config: &Config) -> Result<()> {
    use async_nats::jetstream::context::DeleteStreamErrorKind;
    use async_nats::jetstream::ErrorCode;

    let client = syncdata_core::nats::connect(&config.nats, "syncdata-demo").await?;
    let js = async_nats::jetstream::new(client.clone());
    for name in [&config.nats.stream, &config.nats.dlq_stream] {
        match js.delete_stream(name).await {
            Ok(_) => println!("deleted the old JetStream stream {name}"),
            Err(e) => match e.kind() {
                DeleteStreamErrorKind::JetStream(je)
                    if je.error_code() == ErrorCode::STREAM_NOT_FOUND => {}
                _ => return Err(e).with_context(|| format!("cannot delete stream {name}")),
            },
        }
    }
    client.drain().await.ok();
    Ok(())
}

/// Starts `bin` with `config`, its output in `<workdir>/<name>.log`
/// (`RUST_LOG=info` unless the caller set it).
/// Starts `syncdata-producer run` (with the producer's NATS login in place
/// of the consumer's) and `consumers` × `syncdata start`, each serving
/// metrics on a port of its own; returns (name, port) of every endpoint.
fn start_publish_and_apply(
    procs: &mut Vec<Proc>,
    workdir: &Path,
    config_path: &Path,
    (producer_bin, consumer_bin): (&Path, &Path),
    (consumer_auth, producer_auth): (&str, &str),
    consumers: usize,
) -> Result<Vec<(String, u16)>> {
    let mut endpoints = Vec::new();
    let producer_port = harness::free_port();
    let producer_config = process_config(
        config_path,
        "producer",
        "producer",
        producer_port,
        Some((consumer_auth, producer_auth)),
    )?;
    procs.push(start(
        workdir,
        producer_bin,
        &["run"],
        "producer",
        &producer_config,
    )?);
    endpoints.push(("producer".to_owned(), producer_port));
    for i in 1..=consumers {
        let name = format!("consumer-{i}");
        let port = harness::free_port();
        let config = process_config(config_path, &name, "consumer", port, None)?;
        procs.push(start(workdir, consumer_bin, &["start"], &name, &config)?);
        endpoints.push((name, port));
    }
    Ok(endpoints)
}

fn start(workdir: &Path, bin: &Path, args: &[&str], name: &str, config: &Path) -> Result<Proc> {
    let env: &[(&str, &str)] = if std::env::var_os("RUST_LOG").is_none() {
        &[("RUST_LOG", "info")]
    } else {
        &[]
    };
    Proc::start(
        bin,
        name,
        args,
        config,
        env,
        &workdir.join(format!("{name}.log")),
    )
}

fn print_log_tail(log: &Path) {
    const LINES: usize = 25;
    println!("\n--- last {LINES} lines of {} ---", log.display());
    match std::fs::read(log) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                println!("(empty)");
            }
            for line in &lines[lines.len().saturating_sub(LINES)..] {
                // Keep huge log lines (a logged record) readable.
                if line.len() > 400 {
                    let mut end = 400;
                    while !line.is_char_boundary(end) {
                        end -= 1;
                    }
                    println!("{}…", &line[..end]);
                } else {
                    println!("{line}");
                }
            }
        }
        Err(e) => println!("(cannot read: {e})"),
    }
}

/// The first ~80% as complete files at once, the rest appended in whole
/// lines to one more file over about 1.5 s.
async fn write_history(archive: &Path, records: &[Record]) -> Result<()> {
    let split = records.len() * 8 / 10;
    let per_file = split.div_ceil(4).max(1);
    let written = workload::write_archive(archive, &records[..split], per_file)
        .with_context(|| format!("cannot write change files to {}", archive.display()))?;
    let last = archive.join(workload::archive_file_name(written.len() + 1));
    println!(
        "wrote {split} changes as {} file(s); appending {} more to {} while it is read",
        written.len(),
        records.len() - split,
        last.file_name().unwrap_or_default().to_string_lossy()
    );
    let rest = &records[split..];
    const CHUNKS: usize = 6;
    let per_chunk = rest.len().div_ceil(CHUNKS).max(1);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&last)
        .with_context(|| format!("cannot create {}", last.display()))?;
    for (i, chunk) in rest.chunks(per_chunk).enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut buf = Vec::new();
        for r in chunk {
            buf.extend_from_slice(&r.to_json());
            buf.push(b'\n');
        }
        file.write_all(&buf)?;
        file.sync_data()?;
    }
    Ok(())
}

enum Wait {
    Matched(Vec<(i64, String)>),
    /// Gave up: why, and the last local fingerprints.
    Gave(String, Vec<(i64, String)>),
}

async fn wait_for_match(
    local: &PgPool,
    tables: &[&str],
    truth: &[(i64, String)],
    procs: &mut [Proc],
    timeout_secs: u64,
) -> Result<Wait> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut last_progress = Instant::now();
    let mut prints: Vec<(i64, String)> = vec![(0, String::new()); tables.len()];
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let mut all = true;
        let mut last_error = None;
        for (i, table) in tables.iter().enumerate() {
            match workload::table_fingerprint(local, SCHEMA, table).await {
                Ok(p) => prints[i] = p,
                Err(e) => last_error = Some(e),
            }
            all &= prints[i] == truth[i];
        }
        if all && last_error.is_none() {
            return Ok(Wait::Matched(prints));
        }
        if let Some((name, status)) = procs
            .iter_mut()
            .find_map(|p| Some((p.name().to_owned(), p.exit_status()?)))
        {
            return Ok(Wait::Gave(
                format!("{name} exited early ({status}) before the local copy matched"),
                prints,
            ));
        }
        if Instant::now() >= deadline {
            let reason = match last_error {
                Some(e) => format!("no match within {timeout_secs} s (last error: {e})"),
                None => format!("no match within {timeout_secs} s"),
            };
            return Ok(Wait::Gave(reason, prints));
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let rows = tables
                .iter()
                .zip(prints.iter().zip(truth))
                .map(|(t, (l, e))| format!("{t} {}/{}", l.0, e.0))
                .collect::<Vec<_>>()
                .join(", ");
            println!("waiting… local/expected rows: {rows}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = &mut interrupt => {
                return Ok(Wait::Gave("interrupted".to_owned(), prints));
            }
        }
    }
}

/// `url` with its database replaced by `database`.
fn database_url(url: &str, database: &str) -> String {
    let start = url.find("://").map(|i| i + 3).unwrap_or(0);
    let query = url[start..]
        .find('?')
        .map(|i| &url[start + i..])
        .unwrap_or("");
    let host_end = url[start..]
        .find(['/', '?'])
        .map(|i| start + i)
        .unwrap_or(url.len());
    format!("{}/{database}{query}", &url[..host_end])
}

/// SQLite target: until `syncdata verify` (the file against the in-order
/// replay, value by value under the type mapping) says every table is equal.
async fn wait_for_verify(
    workdir: &Path,
    bin: &Path,
    config: &Path,
    source: &str,
    truth: &[(i64, String)],
    procs: &mut [Proc],
    timeout_secs: u64,
) -> Result<Wait> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let none = vec![(0, String::new()); truth.len()];
    let mut round = 0;
    loop {
        round += 1;
        let mut v = start(
            workdir,
            bin,
            &["verify", "--source", source],
            &format!("verify-{round}"),
            config,
        )?;
        if v.finish(Duration::from_secs(120)).await?.success() {
            return Ok(Wait::Matched(truth.to_vec()));
        }
        if let Some((name, status)) = procs
            .iter_mut()
            .find_map(|p| Some((p.name().to_owned(), p.exit_status()?)))
        {
            return Ok(Wait::Gave(
                format!("{name} exited early ({status}) before the local copy matched"),
                none,
            ));
        }
        if Instant::now() >= deadline {
            return Ok(Wait::Gave(
                format!("no match within {timeout_secs} s"),
                none,
            ));
        }
        println!("waiting… `syncdata verify` still finds differences");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The demo's last word on a SQLite target: a query on the file.
fn show_sqlite_query(file: &Path, sql: &str) {
    println!();
    println!("$ sqlite3 -header -column {} \"{sql}\"", file.display());
    match std::process::Command::new("sqlite3")
        .args(["-header", "-column"])
        .arg(file)
        .arg(sql)
        .output()
    {
        Ok(out) if out.status.success() => print!("{}", String::from_utf8_lossy(&out.stdout)),
        _ => println!("(sqlite3 is not installed: run the query above with any SQLite client)"),
    }
}

fn print_table(tables: &[&str], truth: &[(i64, String)], local: &[(i64, String)]) {
    let width = tables.iter().map(|t| t.len()).max().unwrap_or(5).max(5);
    println!(
        "{:<width$} | {:>13} | {:>10} | {:<32} | {:<32} | match",
        "table", "expected rows", "local rows", "expected checksum", "local checksum"
    );
    println!(
        "{}-+-{}-+-{}-+-{}-+-{}-+------",
        "-".repeat(width),
        "-".repeat(13),
        "-".repeat(10),
        "-".repeat(32),
        "-".repeat(32)
    );
    for (i, t) in tables.iter().enumerate() {
        let (er, ec) = &truth[i];
        let (lr, lc) = &local[i];
        let ok = er == lr && ec == lc;
        println!(
            "{t:<width$} | {er:>13} | {lr:>10} | {ec:<32} | {lc:<32} | {}",
            if ok { "yes" } else { "NO" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_decoded_and_redacted() {
        let url = "postgres://me:p%40ss%3Aw@127.0.0.1:5432/postgres";
        assert_eq!(url_password(url).as_deref(), Some("p@ss:w"));
        assert_eq!(redact(url), "postgres://me:***@127.0.0.1:5432/postgres");
        assert_eq!(
            url_password("postgres://postgres@127.0.0.1:1/postgres"),
            None
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:1/x"),
            "postgres://postgres@127.0.0.1:1/x"
        );
    }

    #[test]
    fn config_is_accepted_by_the_project() {
        let url = "postgres://demo:se\"cret@127.0.0.1:6543/postgres";
        let base = PgConnectOptions::from_str(url).unwrap();
        let text = config_toml(
            &base,
            url,
            "nats://127.0.0.1:4333",
            "user = \"consumer\"\npassword_file = \"/tmp/nats-consumer.password\"\n",
            Path::new("/tmp/a \"dir\"/archive"),
            Path::new("/tmp/rules.toml"),
        )
        .unwrap();
        let c = Config::from_toml(&text).unwrap();
        c.validate().unwrap();
        // What the demo takes from its arguments (the file format itself is
        // the harness's, tested there).
        assert_eq!((c.pg_user.as_str(), c.pg_port), ("demo", 6543));
        assert_eq!(c.pg_password.as_deref(), Some("se\"cret"));
        assert_eq!(c.pg_database.as_deref(), Some(LOCAL_DB));
        assert_eq!(c.nats.stream, "SYNCDATA_DEMO");
        assert_eq!(c.nats.dlq_subject_prefix, "syncdata_demo.dlq");
        assert_eq!(
            c.producer.rules_file.as_deref(),
            Some(Path::new("/tmp/rules.toml"))
        );
    }
}
