//! What every measurement needs: the two PostgreSQL clusters, NATS, the
//! project's binaries and PostgreSQL's client tools, configuration files,
//! child processes (with their peak RSS), and JetStream progress.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use futures::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use syncdata_core::subject;
use syncdata_testkit::harness::{self, tail, ConfigFile, Proc, TestNames};

/// The NATS user of each role and the signing key, from the variables
/// `scripts/servers.sh` writes (`SYNCDATA_TEST_NATS_<ROLE>_USER` /
/// `_PASSWORD`, `SYNCDATA_TEST_SIGNING_KEY`); unset ones are left out.
fn role_env(binary: &str) -> Vec<(String, String)> {
    let role = match binary {
        "syncdata-producer" => "PRODUCER",
        "syncdata" => "CONSUMER",
        _ => return Vec::new(),
    };
    let var = |n: String| std::env::var(n).ok();
    let mut out = Vec::new();
    if let (Some(u), Some(p)) = (
        var(format!("SYNCDATA_TEST_NATS_{role}_USER")),
        var(format!("SYNCDATA_TEST_NATS_{role}_PASSWORD")),
    ) {
        out.push(("NATS_USER".to_owned(), u));
        out.push(("NATS_PASSWORD".to_owned(), p));
    }
    if let Some(k) = var("SYNCDATA_TEST_SIGNING_KEY".to_owned()) {
        out.push(("SYNCDATA_SIGNING_KEY".to_owned(), k));
    }
    out
}

/// Which PostgreSQL cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Production stand-in: wal_level=logical, pgoutput and wal2json, publications.
    Source,
    /// The local copy: native subscriber and syncdata consumers.
    Target,
}

pub struct Env {
    source: PgConnectOptions,
    target: PgConnectOptions,
    pub nats_url: String,
    pub workdir: PathBuf,
    pub producer_bin: PathBuf,
    pub consumer_bin: PathBuf,
    pub pg_bin: PathBuf,
    pub log_level: String,
}

impl Env {
    pub fn new(
        source_url: &str,
        target_url: &str,
        nats_url: &str,
        workdir: &Path,
        bin_dir: &Path,
        pg_bin: &Path,
        log_level: &str,
    ) -> Result<Env> {
        let source =
            PgConnectOptions::from_str(source_url).context("--source-url is not a valid URL")?;
        let target =
            PgConnectOptions::from_str(target_url).context("--target-url is not a valid URL")?;
        std::fs::create_dir_all(workdir)
            .with_context(|| format!("cannot create {}", workdir.display()))?;
        for tool in ["pgbench", "pg_dump", "pg_restore", "psql"] {
            if !pg_bin.join(tool).is_file() {
                bail!("{} not found (--pg-bin)", pg_bin.join(tool).display());
            }
        }
        Ok(Env {
            source,
            target,
            nats_url: nats_url.to_owned(),
            workdir: workdir.canonicalize()?,
            producer_bin: harness::bin_in(bin_dir, "syncdata-producer")?,
            consumer_bin: harness::bin_in(bin_dir, "syncdata")?,
            pg_bin: pg_bin.to_owned(),
            log_level: log_level.to_owned(),
        })
    }

    fn options(&self, side: Side) -> &PgConnectOptions {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    pub fn host(&self, side: Side) -> String {
        self.options(side).get_host().to_owned()
    }

    pub fn port(&self, side: Side) -> u16 {
        self.options(side).get_port()
    }

    pub fn user(&self, side: Side) -> String {
        self.options(side).get_username().to_owned()
    }

    /// A libpq URL (no password: the harness expects trust auth or
    /// ~/.pgpass, as the throwaway servers of scripts/servers.sh give).
    pub fn url(&self, side: Side, db: &str) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.user(side),
            self.host(side),
            self.port(side),
            db
        )
    }

    /// A libpq key/value connection string (for CREATE SUBSCRIPTION).
    pub fn conninfo(&self, side: Side, db: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host(side),
            self.port(side),
            self.user(side),
            db
        )
    }

    pub async fn pool(&self, side: Side, db: &str, max: u32) -> Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(
                self.options(side)
                    .clone()
                    .database(db)
                    .application_name("syncdata-bench"),
            )
            .await
            .with_context(|| format!("cannot connect to {}", self.url(side, db)))
    }

    /// Drops the source's replication slot `slot` unless a process uses it:
    /// a slot left behind holds WAL for the rest of the run.
    pub async fn drop_source_slot(&self, slot: &str) -> Result<()> {
        let admin = self.pool(Side::Source, "postgres", 1).await?;
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
        )
        .bind(slot)
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok(())
    }

    /// Drops (with FORCE) and creates a database. Replication slots and
    /// subscriptions bound to it are removed first.
    pub async fn recreate_db(&self, side: Side, name: &str) -> Result<()> {
        self.drop_db(side, name).await?;
        let admin = self.pool(side, "postgres", 1).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            ident(name)
        )))
        .execute(&admin)
        .await
        .with_context(|| format!("cannot create database {name}"))?;
        admin.close().await;
        Ok(())
    }

    pub async fn drop_db(&self, side: Side, name: &str) -> Result<()> {
        let admin = self.pool(side, "postgres", 1).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&admin)
                .await?;
        if exists {
            // Subscriptions live in a database but are dropped from inside it.
            let subs: Vec<String> = sqlx::query_scalar(
                "SELECT s.subname::text FROM pg_subscription s JOIN pg_database d \
                 ON d.oid = s.subdbid WHERE d.datname = $1",
            )
            .bind(name)
            .fetch_all(&admin)
            .await?;
            if !subs.is_empty() {
                let db = self.pool(side, name, 1).await?;
                for sub in subs {
                    let s = ident(&sub);
                    for sql in [
                        format!("ALTER SUBSCRIPTION {s} DISABLE"),
                        format!("ALTER SUBSCRIPTION {s} SET (slot_name = NONE)"),
                        format!("DROP SUBSCRIPTION {s}"),
                    ] {
                        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&db).await?;
                    }
                }
                db.close().await;
            }
            // A walsender that just lost its subscriber lets go of its slot
            // within a moment.
            for _ in 0..100 {
                let active: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_replication_slots WHERE database = $1 AND active",
                )
                .bind(name)
                .fetch_one(&admin)
                .await?;
                if active == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sqlx::query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = $1 AND NOT active",
            )
            .bind(name)
            .execute(&admin)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(name)
            )))
            .execute(&admin)
            .await
            .with_context(|| format!("cannot drop database {name}"))?;
        }
        admin.close().await;
        Ok(())
    }

    /// A PostgreSQL client tool with host, port and user of `side`.
    pub fn pg_tool(&self, tool: &str, side: Side) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.pg_bin.join(tool));
        cmd.arg("-h")
            .arg(self.host(side))
            .arg("-p")
            .arg(self.port(side).to_string())
            .arg("-U")
            .arg(self.user(side))
            .kill_on_drop(true);
        cmd
    }

    /// Runs a client tool to the end; its output goes to `log`. Fails with
    /// the log's tail when it fails.
    pub async fn run_tool(
        &self,
        tool: &str,
        side: Side,
        args: &[&str],
        log: &str,
    ) -> Result<String> {
        let path = self.log_path(log);
        let mut cmd = self.pg_tool(tool, side);
        cmd.args(args);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {tool}"))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        std::fs::write(&path, &text)?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed ({}):\n{}",
                args.join(" "),
                out.status,
                tail(&text, 20)
            );
        }
        Ok(text)
    }

    /// `pg_dump ARGS | psql -d DB` (source to target), to the end.
    pub async fn dump_into(&self, dump_args: &[&str], target_db: &str, log: &str) -> Result<()> {
        let log_path = self.log_path(log);
        let err = std::fs::File::create(&log_path)?;
        let mut dump = self.pg_tool("pg_dump", Side::Source);
        dump.args(dump_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err.try_clone()?);
        let mut dump = dump.spawn().context("cannot run pg_dump")?;
        let pipe: Stdio = dump
            .stdout
            .take()
            .context("pg_dump stdout")?
            .try_into()
            .context("pg_dump stdout as stdin")?;
        let mut psql = self.pg_tool("psql", Side::Target);
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target_db])
            .stdin(pipe)
            .stdout(err.try_clone()?)
            .stderr(err);
        let mut psql = psql.spawn().context("cannot run psql")?;
        let (d, p) = tokio::join!(dump.wait(), psql.wait());
        let (d, p) = (d?, p?);
        if !d.success() || !p.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("pg_dump ({d}) | psql ({p}) failed:\n{}", tail(&text, 20));
        }
        Ok(())
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        let dir = self.workdir.join("logs");
        let _ = std::fs::create_dir_all(&dir);
        dir.join(format!("{name}.log"))
    }

    /// A fresh directory under the work directory.
    pub fn fresh_dir(&self, rel: &str) -> Result<PathBuf> {
        let dir = self.workdir.join(rel);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// A connection to NATS with JetStream.
    pub async fn jetstream(&self) -> Result<jetstream::Context> {
        let mut opts = async_nats::ConnectOptions::new().name("syncdata-bench");
        if let (Ok(u), Ok(p)) = (
            std::env::var("SYNCDATA_TEST_NATS_ADMIN_USER"),
            std::env::var("SYNCDATA_TEST_NATS_ADMIN_PASSWORD"),
        ) {
            opts = opts.user_and_password(u, p);
        }
        let client = opts
            .connect(self.nats_url.as_str())
            .await
            .with_context(|| format!("cannot connect to NATS at {}", self.nats_url))?;
        Ok(jetstream::new(client))
    }

    /// Starts one of the project's binaries with `config` and
    /// `RUST_LOG=<log level>` (then `extra_env`), logging to
    /// `logs/<name>.log`.
    pub fn spawn(
        &self,
        bin: &Path,
        args: &[&str],
        config: &Path,
        name: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<Proc> {
        // This binary's NATS role and the signing key (see docs/trust.md).
        let binary = bin.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let role = role_env(binary);
        let mut env = vec![("RUST_LOG", self.log_level.as_str())];
        env.extend(role.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        env.extend_from_slice(extra_env);
        Proc::start(bin, name, args, config, &env, &self.log_path(name))
    }

    /// Runs one of the project's binaries to the end (600 s at most).
    pub async fn run_bin(
        &self,
        bin: &Path,
        args: &[&str],
        config: &Path,
        name: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<()> {
        let mut c = self.spawn(bin, args, config, name, extra_env)?;
        let status = c.finish(Duration::from_secs(600)).await?;
        if !status.success() {
            bail!(
                "{} {} failed ({status}):\n{}",
                bin.display(),
                args.join(" "),
                c.log_tail(20)
            );
        }
        Ok(())
    }
}

/// Stops the processes (SIGTERM, SIGKILL after 20 s), warning about any
/// that did not stop cleanly.
pub async fn stop_all(mut children: Vec<Proc>) {
    for warning in harness::stop_all(&mut children, Duration::from_secs(20)).await {
        eprintln!("warning: {warning}");
    }
}

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One measurement's JetStream names: its own change and DLQ streams, so
/// measurements never see each other's messages or durables.
#[derive(Debug, Clone)]
pub struct Streams {
    /// `BENCH_<TAG>` with subjects `bench_<tag>.changes.…`, and its DLQ.
    pub names: TestNames,
}

impl std::ops::Deref for Streams {
    type Target = TestNames;

    fn deref(&self) -> &TestNames {
        &self.names
    }
}

impl Streams {
    pub fn new(tag: &str) -> Streams {
        Streams {
            names: TestNames::named(
                &format!("BENCH_{}", tag.to_uppercase()),
                &format!("bench_{tag}"),
            ),
        }
    }

    /// Deletes both streams (and their durables) if they exist.
    pub async fn reset(&self, js: &jetstream::Context) -> Result<()> {
        for name in [&self.stream, &self.dlq_stream] {
            if js.get_stream(name).await.is_ok() {
                js.delete_stream(name)
                    .await
                    .with_context(|| format!("cannot delete stream {name}"))?;
            }
        }
        Ok(())
    }

    /// Messages in the change stream (None while it does not exist). A
    /// message is a chunk of up to `producer.chunk_records` records: count
    /// records with [`PublishedRecords`], never with this.
    pub async fn messages(&self, js: &jetstream::Context) -> Option<u64> {
        let mut s = js.get_stream(&self.stream).await.ok()?;
        Some(s.info().await.ok()?.state.messages)
    }

    /// Messages in the DLQ stream (0 when it does not exist).
    pub async fn dead_letters(&self, js: &jetstream::Context) -> u64 {
        match js.get_stream(&self.dlq_stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Durable names of `tables` (in `public`) for the destination database
    /// with this instance id.
    pub fn durables(&self, instance: &str, tables: &[&str]) -> Vec<String> {
        tables
            .iter()
            .map(|t| subject::durable_name(&self.stream, instance, "public", t))
            .collect()
    }

    /// True when every durable exists and has nothing left to deliver or to
    /// be acknowledged: every message was applied and acked after commit.
    pub async fn drained(&self, js: &jetstream::Context, durables: &[String]) -> bool {
        let Ok(stream) = js.get_stream(&self.stream).await else {
            return false;
        };
        for d in durables {
            let Ok(mut c) = stream
                .get_consumer::<jetstream::consumer::pull::Config>(d)
                .await
            else {
                return false;
            };
            let Ok(info) = c.info().await else {
                return false;
            };
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return false;
            }
        }
        true
    }

    /// Waits until every durable exists (the consumers in `children` made
    /// them), failing if one of those processes dies or after 60 s.
    pub async fn wait_for_durables(
        &self,
        js: &jetstream::Context,
        durables: &[String],
        children: &mut [Proc],
    ) -> Result<()> {
        harness::poll_until(
            "the consumer's durable",
            Duration::from_millis(50),
            Duration::from_secs(60),
            children,
            || async move { Ok(self.durables_exist(js, durables).await) },
        )
        .await?;
        Ok(())
    }

    /// True when every durable exists.
    pub async fn durables_exist(&self, js: &jetstream::Context, durables: &[String]) -> bool {
        let Ok(stream) = js.get_stream(&self.stream).await else {
            return false;
        };
        let mut names = stream.consumer_names();
        let mut found = Vec::new();
        while let Some(Ok(n)) = names.next().await {
            found.push(n);
        }
        durables.iter().all(|d| found.contains(d))
    }
}

/// How many records a `syncdata-producer run` has published: its
/// Prometheus counter `syncdata_producer_records_total`, read from the
/// `producer.metrics_addr` the harness gives it ([`PublishedRecords::toml`]).
/// The counter grows once every message of a run of chunks is acknowledged
/// by JetStream, so a count of N means N records are in the stream. The
/// stream's message count does not tell: one message is a chunk of up to
/// `producer.chunk_records` records (`syncdata_core::chunk`).
#[derive(Debug, Clone, Copy)]
pub struct PublishedRecords {
    port: u16,
}

impl Default for PublishedRecords {
    fn default() -> PublishedRecords {
        PublishedRecords::new()
    }
}

impl PublishedRecords {
    /// A free loopback port for one producer process.
    pub fn new() -> PublishedRecords {
        PublishedRecords {
            port: harness::free_port(),
        }
    }

    /// The line of the `[producer]` table that serves the metrics.
    pub fn toml(&self) -> String {
        format!("metrics_addr = \"127.0.0.1:{}\"\n", self.port)
    }

    /// Records published and acknowledged so far; None while the producer
    /// does not answer (not started yet).
    pub async fn count(&self) -> Option<u64> {
        let body = harness::scrape(self.port).await.ok()?;
        let n = harness::sample_sum(&body, "syncdata_producer_records_total", &[]).unwrap_or(0.0);
        Some(n as u64)
    }
}

/// Installs, in a syncdata target database, a clock of committed batches:
/// an ALWAYS trigger (the consumer applies as `session_replication_role =
/// replica`) after each insert into `data_sync_logs`, which is the last
/// statement of every batch's transaction, records `clock_timestamp()` in
/// `bench_batch_end`. The last batch's time is when everything was applied
/// (its commit follows within a fraction of a millisecond: fsync is off).
///
/// Why not poll JetStream for the durables' pending counts instead: with
/// nats-server 2.9.10, `CONSUMER.INFO` requests while a pull consumer is
/// being served can leave a pull request partly filled and never answered
/// with its 408; async-nats then waits `expires + 5 s` for it. Polling
/// even once a second stalled consumers for tens of seconds in 1 of 2
/// trials (none without polling). So JetStream is asked only once the
/// consumers have gone quiet, to confirm that nothing is left.
pub async fn install_batch_clock(target: &PgPool) -> Result<()> {
    for sql in [
        "CREATE TABLE IF NOT EXISTS bench_batch_end (at timestamptz NOT NULL, rows int)",
        "CREATE OR REPLACE FUNCTION bench_batch_end_fn() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO bench_batch_end VALUES (clock_timestamp(), NEW.rows_synced); \
         RETURN NULL; END $$",
        "DROP TRIGGER IF EXISTS bench_batch_end_trg ON data_sync_logs",
        "CREATE TRIGGER bench_batch_end_trg AFTER INSERT ON data_sync_logs \
         FOR EACH ROW EXECUTE FUNCTION bench_batch_end_fn()",
        "ALTER TABLE data_sync_logs ENABLE ALWAYS TRIGGER bench_batch_end_trg",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(target)
            .await
            .context("installing the batch clock in the target")?;
    }
    Ok(())
}

/// The longest pause between two consecutive batch commits, and the
/// number of batches (from the batch clock).
pub async fn longest_gap(target: &PgPool) -> Result<(Duration, i64)> {
    let (gap_us, batches): (Option<i64>, i64) = sqlx::query_as(
        "SELECT (extract(epoch FROM max(gap)) * 1e6)::bigint, count(*) FROM \
         (SELECT at - lag(at) OVER (ORDER BY at) AS gap FROM bench_batch_end) g",
    )
    .fetch_one(target)
    .await?;
    Ok((
        Duration::from_micros(gap_us.unwrap_or(0).max(0) as u64),
        batches,
    ))
}

/// Microseconds since the Unix epoch, this machine's wall clock (the same
/// clock PostgreSQL's `clock_timestamp()` reads here).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

/// When a catch-up ended, counted from the consumers' launch.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// The commit of the last batch that applied anything: from then on
    /// the target holds its final state (later batches changed nothing).
    pub data: Duration,
    /// The commit of the last batch of all, after which every durable was
    /// drained. Later than `data` when messages already applied came back
    /// (a redelivery after `consumer.ack_wait_secs`) and applied nothing.
    pub drained: Duration,
}

impl Applied {
    /// A note for the report when the durables drained well after the data
    /// was complete.
    pub fn note(&self, what: &str) -> Option<String> {
        (self.drained >= self.data + Duration::from_secs(2)).then(|| {
            format!(
                "{what}: the target held every change after {:.2} s, but the durables were \
                 drained only after {:.2} s: batches that applied nothing came later (messages \
                 already applied, delivered again after `consumer.ack_wait_secs`); the figure \
                 counts until the data was complete",
                self.data.as_secs_f64(),
                self.drained.as_secs_f64()
            )
        })
    }
}

/// Waits until the consumers applied everything; returns when (after
/// `started_us`, wall clock, µs) the last batch that applied anything and
/// the last batch of all committed.
///
/// Polls only the target database (every 100 ms) until no batch has
/// committed for `quiet`; then asks JetStream whether every durable has
/// nothing pending or unacknowledged (acks follow commits). If not, it
/// waits for the next quiet period.
pub async fn wait_applied(
    js: &jetstream::Context,
    streams: &Streams,
    durables: &[String],
    target: &PgPool,
    started_us: i64,
    children: &mut [Proc],
    timeout: Duration,
) -> Result<Applied> {
    let quiet = Duration::from_millis(1000);
    let deadline = Instant::now() + timeout;
    let mut last_count = -1i64;
    let mut changed = Instant::now();
    let mut checked_at_count = -1i64;
    loop {
        let (count, last_us, data_us): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT count(*), (extract(epoch FROM max(at)) * 1e6)::bigint, \
             (extract(epoch FROM max(at) FILTER (WHERE rows > 0)) * 1e6)::bigint \
             FROM bench_batch_end",
        )
        .fetch_one(target)
        .await?;
        if count != last_count {
            last_count = count;
            changed = Instant::now();
        }
        if count > 0 && changed.elapsed() >= quiet && checked_at_count != count {
            checked_at_count = count;
            if streams.drained(js, durables).await {
                let since = |us: Option<i64>| {
                    Duration::from_micros((us.unwrap_or(started_us) - started_us).max(0) as u64)
                };
                return Ok(Applied {
                    data: since(data_us),
                    drained: since(last_us),
                });
            }
        }
        for c in children.iter_mut() {
            c.check_running()?;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = children
                .iter()
                .map(|c| format!("--- {} ---\n{}", c.name(), c.log_tail(15)))
                .collect();
            bail!(
                "timed out after {} s waiting for the consumers ({count} batches committed)\n{}",
                timeout.as_secs(),
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A configuration file for the project's binaries.
pub struct ConfigSpec<'a> {
    pub name: &'a str,
    pub side: Side,
    pub database: &'a str,
    pub archive_dir: &'a Path,
    pub streams: &'a Streams,
    /// TOML appended after `[nats]`: `[producer]`, `[consumer]`, `[source]`.
    pub extra: String,
}

impl Env {
    pub fn write_config(&self, spec: &ConfigSpec<'_>) -> Result<PathBuf> {
        let path = self
            .workdir
            .join("config")
            .join(format!("{}.toml", spec.name));
        ConfigFile {
            written_by: Some("syncdata-bench"),
            pg_host: &self.host(spec.side),
            pg_port: self.port(spec.side),
            pg_user: &self.user(spec.side),
            pg_password: None,
            pg_database: spec.database,
            archive_dir: spec.archive_dir,
            nats_url: &self.nats_url,
            names: spec.streams,
            extra: &spec.extra,
        }
        .write(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

/// Total size of the regular, non-hidden files of a directory.
pub fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}
