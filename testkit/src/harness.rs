//! The one harness of the integration tests, the demo and the benchmarks:
//! reaches the real PostgreSQL and nats-server that `scripts/test.sh` starts
//! (through the `SYNCDATA_TEST_*` variables), gives every test its own
//! database and stream names, writes configuration files, finds the
//! workspace binaries (debug or release) and runs them as child processes
//! with an environment that cannot redirect them, stops them, scrapes their
//! `/metrics`, and starts private servers for tests that must kill or restart
//! one.
//!
//! Invariant: a missing or unreachable server fails the test with a message
//! saying how to start the servers; nothing here ever skips a test. The
//! fallible forms (`anyhow::Result`: [`bin_in`], [`Proc::start`],
//! [`poll_until`], [`scrape`]) are for the demo and the benchmarks, which
//! report errors instead of panicking.
//!
//! Conventions: functions that wait for a server to answer are `async`
//! (tokio); functions that only signal or stop something are plain. Waiting
//! is always `wait_until`/`poll_until` with a timeout, never a bare sleep.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use syncdata_core::config::{CONFIG_ENV, CONFIG_ENV_VARS};

mod cluster;
mod config_file;
mod metrics;

pub use cluster::NatsCluster;
pub use config_file::{toml_str, ConfigFile};
pub use metrics::{exported, sample_sum, samples, scrape, scrape_until};

const HOW_TO_START: &str = "integration tests need the throwaway PostgreSQL and nats-server \
     that `scripts/test.sh` starts: run `bash scripts/test.sh` (optionally with \
     `-p syncdata-testkit --test it -- MODULE::`), or `bash scripts/servers.sh start DIR && source DIR/env` before \
     `cargo test`";

/// PostgreSQL 15's server and client tools (as `scripts/deps.sh` installs them).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Settings shared with `scripts/servers.sh`: logical decoding for wal2json,
/// room for many parallel tests, and no durability (the data is throwaway).
const PG_SETTINGS: &str = include_str!("../../scripts/postgresql-test.conf");

/// Records up to 8 MB must fit in one NATS message (server default: 1 MB).
const NATS_CONF: &str = "max_payload: 8388608\n";

const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set; {HOW_TO_START}"),
    }
}

// ---------------------------------------------------------------------------
// The shared servers started by scripts/test.sh
// ---------------------------------------------------------------------------

/// Where the shared PostgreSQL listens (`SYNCDATA_TEST_PG_*`).
#[derive(Debug, Clone)]
pub struct PgEnv {
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl PgEnv {
    /// Connection URL of database `db` on this server (trust auth, no password).
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, db
        )
    }
}

/// The shared PostgreSQL from `SYNCDATA_TEST_PG_HOST`, `_PORT` and `_USER`.
/// Panics, saying how to start it, when they are missing.
pub fn pg_env() -> PgEnv {
    let port = required_env("SYNCDATA_TEST_PG_PORT");
    PgEnv {
        host: required_env("SYNCDATA_TEST_PG_HOST"),
        port: port
            .parse()
            .unwrap_or_else(|_| panic!("SYNCDATA_TEST_PG_PORT={port:?} is not a port number")),
        user: required_env("SYNCDATA_TEST_PG_USER"),
    }
}

/// URL of the shared nats-server (`SYNCDATA_TEST_NATS_URL`).
pub fn nats_url() -> String {
    required_env("SYNCDATA_TEST_NATS_URL")
}

/// One of the NATS users `scripts/servers.sh` creates (see docs/trust.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsRole {
    /// May publish changes, nothing else of note.
    Producer,
    /// May pull and ack, dead-letter and stop; never publish a change.
    Consumer,
    /// May do anything: for tests that inspect or hand-craft streams.
    Admin,
}

impl NatsRole {
    fn env_name(self) -> &'static str {
        match self {
            NatsRole::Producer => "PRODUCER",
            NatsRole::Consumer => "CONSUMER",
            NatsRole::Admin => "ADMIN",
        }
    }

    /// `(user, password)` from `SYNCDATA_TEST_NATS_<ROLE>_USER` / `_PASSWORD`.
    pub fn credentials(self) -> (String, String) {
        let r = self.env_name();
        (
            required_env(&format!("SYNCDATA_TEST_NATS_{r}_USER")),
            required_env(&format!("SYNCDATA_TEST_NATS_{r}_PASSWORD")),
        )
    }
}

/// The message signing key of this test run (`SYNCDATA_TEST_SIGNING_KEY`).
pub fn signing_key() -> syncdata_core::signature::SigningKey {
    syncdata_core::signature::SigningKey::new(
        required_env("SYNCDATA_TEST_SIGNING_KEY").as_bytes(),
        "SYNCDATA_TEST_SIGNING_KEY",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Headers signing a hand-made change message as the producer would (no
/// message id): tests that publish records themselves use these.
pub fn signed_headers(subject: &str, payload: &[u8]) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        syncdata_core::signature::HEADER,
        signing_key().sign(subject, "", payload).as_str(),
    );
    h
}

/// The account, users and permissions block of the shared server
/// (`SYNCDATA_TEST_NATS_AUTH_CONF`), reused by private servers.
fn nats_auth_conf() -> String {
    let path = required_env("SYNCDATA_TEST_NATS_AUTH_CONF");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}; {HOW_TO_START}"))
}

/// Monitoring URL of the shared nats-server (`SYNCDATA_TEST_NATS_MONITOR`).
pub fn nats_monitor_url() -> String {
    required_env("SYNCDATA_TEST_NATS_MONITOR")
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// `tag` lowercased with everything outside `[a-z0-9_]` turned into `_`,
/// cut to 24 characters: safe in database, stream and subject names.
fn safe_tag(tag: &str) -> String {
    let mut out: String = tag
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    if out.is_empty() {
        out.push('x');
    }
    out
}

/// `<tag>_<8 random hex digits>`: unique per call, usable in database names,
/// stream names and subject tokens.
pub fn unique(tag: &str) -> String {
    // The counter makes two calls in one process differ even if the random
    // numbers collide; the random part separates processes and runs.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand::random::<u32>().wrapping_add((n as u32).wrapping_mul(0x9E37_79B9));
    format!("{}_{r:08x}", safe_tag(tag))
}

/// JetStream names for one test, so tests never share a stream.
#[derive(Debug, Clone)]
pub struct TestNames {
    /// `T_<tag>_<rand>`
    pub stream: String,
    /// `t_<tag>_<rand>.changes`
    pub subject_prefix: String,
    /// `T_<tag>_<rand>_DLQ`
    pub dlq_stream: String,
    /// `t_<tag>_<rand>.dlq`
    pub dlq_subject_prefix: String,
}

impl TestNames {
    /// `T_<tag>_<rand>` and `t_<tag>_<rand>` (see [`TestNames::named`]).
    pub fn new(tag: &str) -> TestNames {
        let u = unique(tag);
        TestNames::named(&format!("T_{u}"), &format!("t_{u}"))
    }

    /// Stream `stream` with subjects `<subject_root>.changes`, DLQ stream
    /// `<stream>_DLQ` with subjects `<subject_root>.dlq`.
    pub fn named(stream: &str, subject_root: &str) -> TestNames {
        TestNames {
            stream: stream.to_owned(),
            subject_prefix: format!("{subject_root}.changes"),
            dlq_stream: format!("{stream}_DLQ"),
            dlq_subject_prefix: format!("{subject_root}.dlq"),
        }
    }
}

// ---------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------

/// A database created for one test. It is left behind after the test (the
/// whole server is throwaway), which helps when inspecting a failure.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// A few connections; enough for a test's own queries.
    pub pool: PgPool,
}

/// Creates `sd_<tag>_<rand>` on the shared PostgreSQL and connects a pool.
/// Panics, saying how to start the servers, when it cannot.
pub async fn fresh_database(tag: &str) -> TestDb {
    create_database(&pg_env(), tag).await
}

async fn create_database(server: &PgEnv, tag: &str) -> TestDb {
    let name = format!("sd_{}", unique(tag));
    let admin_url = server.url_for("postgres");
    let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!("cannot connect to PostgreSQL at {admin_url}: {e}; {HOW_TO_START}")
    });
    // `name` is built from [a-z0-9_] only, and quoted anyway.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
    let _ = admin.close().await;

    let url = server.url_for(&name);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to new database {url}: {e}"));
    TestDb {
        name,
        url,
        host: server.host.clone(),
        port: server.port,
        user: server.user.clone(),
        pool,
    }
}

// ---------------------------------------------------------------------------
// Configuration files
// ---------------------------------------------------------------------------

/// `extra_toml` with `producer.allow_unsanitized = true` unless it sets a
/// rules file or the flag itself: the producer fails closed without rules,
/// and most tests publish synthetic rows unsanitized on purpose.
pub fn allow_unsanitized_unless_set(extra_toml: &str) -> String {
    if extra_toml.contains("rules_file") || extra_toml.contains("allow_unsanitized") {
        return extra_toml.to_owned();
    }
    match extra_toml.find("[producer]\n") {
        Some(at) => {
            let end = at + "[producer]\n".len();
            format!(
                "{}allow_unsanitized = true\n{}",
                &extra_toml[..end],
                &extra_toml[end..]
            )
        }
        None => format!("{extra_toml}\n[producer]\nallow_unsanitized = true\n"),
    }
}

/// Writes a secret into `dir/name`, readable by its owner only.
fn write_secret(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, secret).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
    path
}

/// Writes `dir/config.toml` in the project's configuration format, pointing
/// at `db`, the stream `names` on `nats_url` and `archive_dir` (not created
/// here). `extra_toml` is appended after the `[nats]` table, so it may add
/// `[consumer]` and `[producer]` tables but no top-level keys.
///
/// The `[nats]` table carries the consumer's credentials and the signing
/// key (files next to the config); [`Proc::spawn`] gives `syncdata-producer`
/// the producer's credentials through `NATS_USER` / `NATS_PASSWORD`.
pub fn write_config(
    dir: &Path,
    db: &TestDb,
    names: &TestNames,
    nats_url: &str,
    archive_dir: &Path,
    extra_toml: &str,
) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let (consumer_user, consumer_password) = NatsRole::Consumer.credentials();
    let password_file = write_secret(dir, "nats-consumer.password", &consumer_password);
    let key_file = write_secret(
        dir,
        "signing.key",
        &required_env("SYNCDATA_TEST_SIGNING_KEY"),
    );
    // The consumer's credentials and the signing key go into [nats], which
    // ConfigFile writes just before `extra`.
    let extra = format!(
        "user = {}\npassword_file = {}\nsigning_key_file = {}\n\n{}",
        toml_str(&consumer_user),
        toml_str(&password_file.to_string_lossy()),
        toml_str(&key_file.to_string_lossy()),
        allow_unsanitized_unless_set(extra_toml)
    );
    let path = dir.join("config.toml");
    ConfigFile {
        written_by: None,
        pg_host: &db.host,
        pg_port: db.port,
        pg_user: &db.user,
        pg_password: None,
        pg_database: &db.name,
        archive_dir,
        nats_url,
        names,
        extra: &extra,
    }
    .write(&path)
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

// ---------------------------------------------------------------------------
// Binaries and child processes
// ---------------------------------------------------------------------------

/// The exit code of a dev tool (the demo, the benchmarks) whose `run`
/// gave `outcome`: 0 for `Ok(true)`, 1 for `Ok(false)` (it ran, the result
/// is a failure), `on_error` for an error, which is printed with its causes
/// as `<program>: error: …`.
pub fn exit_code(
    program: &str,
    outcome: anyhow::Result<bool>,
    on_error: u8,
) -> std::process::ExitCode {
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("{program}: error: {e:#}");
            std::process::ExitCode::from(on_error)
        }
    }
}

/// The directory of the running executable, the target profile directory
/// (`target/<profile>`) for a test binary in `deps/`: where cargo puts the
/// workspace binaries built with it.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the running executable");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>
    exe.parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .unwrap_or_else(|| panic!("unexpected executable path {}", exe.display()))
        .to_owned()
}

/// Path of workspace binary `name` in `dir`; an error saying how to build
/// it when it is missing.
pub fn bin_in(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        let release = if dir.ends_with("release") {
            " --release"
        } else {
            ""
        };
        anyhow::bail!(
            "binary {} not found: run `cargo build{release} --workspace --bins` first \
             (scripts/test.sh, demo.sh and bench.sh do)",
            path.display()
        );
    }
    Ok(path)
}

/// Path of a workspace binary (`syncdata`, `syncdata-producer`,
/// `syncdata-demo`) built into the same target directory as this test.
/// `cargo test` does not build other packages' binaries, so this panics when
/// the binary is missing.
pub fn bin(name: &str) -> PathBuf {
    bin_in(&bin_dir(), name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A command for `program` that cannot be redirected by the caller's
/// environment: every variable the binaries take configuration from
/// ([`CONFIG_ENV_VARS`]) is removed, and `NO_COLOR=1` keeps the output
/// greppable. Callers add `DATA_SYNC_CONFIG` (or `--config`) themselves.
pub fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in CONFIG_ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    // `syncdata-producer` publishes as the producer's NATS user when the
    // servers of `scripts/servers.sh` are in use (the config files the
    // harness writes carry the consumer's credentials).
    if program.file_name() == Some(std::ffi::OsStr::new("syncdata-producer")) {
        let var = |r: &str| std::env::var(format!("SYNCDATA_TEST_NATS_PRODUCER_{r}")).ok();
        if let (Some(user), Some(password)) = (var("USER"), var("PASSWORD")) {
            cmd.env("NATS_USER", user).env("NATS_PASSWORD", password);
        }
    }
    cmd
}

/// Runs workspace binary `name` with `args` to the end (at most 60 s),
/// stdout and stderr kept apart, with `DATA_SYNC_CONFIG=config`,
/// `RUST_LOG=warn` and then `env`. Panics when it cannot run or does not
/// finish; the exit status is the caller's to check.
pub async fn run_cli(
    name: &str,
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = tokio::process::Command::from(command(&bin(name)));
    cmd.args(args)
        .env(CONFIG_ENV, config)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("cannot run {name} {args:?}: {e}"))
}

/// A child process (a workspace binary or any program), its stdout and
/// stderr in a log file. Killed with SIGKILL when dropped; if the thread is
/// panicking, the end of its log is printed first.
pub struct Proc {
    name: String,
    child: Child,
    log_path: PathBuf,
}

/// How [`Proc::stop`] ended a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It had exited before it was asked to.
    Before(ExitStatus),
    /// It exited after SIGTERM.
    Exited(ExitStatus),
    /// It ignored SIGTERM for the whole grace period and was killed.
    Killed,
}

impl Proc {
    /// Starts binary `name` (see [`bin`]) with `args`, `DATA_SYNC_CONFIG=config`
    /// and `env` (which may override anything, e.g. `RUST_LOG`). `NO_COLOR=1`
    /// keeps the log greppable. The log is `log_dir/<name>-<n>.log`.
    pub fn spawn(
        name: &str,
        args: &[&str],
        config: &Path,
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> Proc {
        // The producer's NATS role comes with `command`; `env` may still
        // override it.
        Proc::spawn_program(&bin(name), args, config, env, log_dir)
    }

    /// [`Proc::spawn`] for any program, e.g. a system tool.
    pub fn spawn_program(
        program: &Path,
        args: &[&str],
        config: &Path,
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> Proc {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".to_owned());
        let log_path = log_dir.join(format!(
            "{name}-{}.log",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        Proc::start(program, &name, args, config, env, &log_path)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `program` with `args`, `DATA_SYNC_CONFIG=config` and `env` (see
    /// [`command`]; `env` may override anything, e.g. `RUST_LOG`), its
    /// output in `log_path` (its directory is created). `name` names it in
    /// messages. The fallible form of [`Proc::spawn_program`].
    pub fn start(
        program: &Path,
        name: &str,
        args: &[&str],
        config: &Path,
        env: &[(&str, &str)],
        log_path: &Path,
    ) -> anyhow::Result<Proc> {
        use anyhow::Context as _;
        if let Some(dir) = log_path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let log = File::create(log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let log_err = log.try_clone().context("cannot clone log file handle")?;

        let mut cmd = command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .env(CONFIG_ENV, config)
            .envs(env.iter().copied());
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log_path: log_path.to_owned(),
        })
    }

    /// The name it was started under (in messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills with SIGKILL (a crash: no cleanup runs) and reaps the process.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (graceful shutdown); use [`Proc::wait_timeout`] or
    /// [`Proc::wait_exit`] to see it exit.
    pub fn sigterm(&self) {
        send_signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn sigint(&self) {
        send_signal(self.child.id(), nix::sys::signal::Signal::SIGINT);
    }

    /// Waits up to `timeout` for the process to exit, blocking the thread.
    /// `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Proc::wait_timeout`] without blocking the async runtime.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("cannot query process {}: {e}", self.name))
    }

    /// Everything the process wrote so far (stdout and stderr).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status once the process has ended; None while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.try_status()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Peak resident set size so far (VmHWM), in bytes; None once it has
    /// been reaped.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    }

    /// Fails, with the end of its log, when the process has exited (it
    /// should still be running).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_status() {
            anyhow::bail!(
                "{} exited early ({status}); log {}:\n{}",
                self.name,
                self.log_path.display(),
                self.log_tail(25)
            );
        }
        Ok(())
    }

    /// Waits up to `timeout` for a process that should end by itself (a
    /// one-shot command); kills it and fails, with the end of its log, when
    /// it does not.
    pub async fn finish(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match self.wait_exit(timeout).await {
            Some(status) => Ok(status),
            None => {
                self.sigkill();
                anyhow::bail!(
                    "{} did not finish within {} s; log {}:\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.log_path.display(),
                    self.log_tail(20)
                )
            }
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL when it still runs after
    /// `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Stopped {
        if let Some(status) = self.try_status() {
            return Stopped::Before(status);
        }
        self.sigterm();
        match self.wait_exit(grace).await {
            Some(status) => Stopped::Exited(status),
            None => {
                self.sigkill();
                Stopped::Killed
            }
        }
    }
}

/// Stops every process in `procs` at once (SIGTERM to all, then each gets
/// `grace` to exit before SIGKILL). Returns a warning for each one that
/// did not stop cleanly: killed, or a failing exit status after SIGTERM.
pub async fn stop_all(procs: &mut [Proc], grace: Duration) -> Vec<String> {
    // One SIGTERM each: a second one tells the binaries to exit at once
    // (status 130) instead of finishing their work.
    let running: Vec<bool> = procs.iter_mut().map(|p| p.is_running()).collect();
    for (p, &run) in procs.iter_mut().zip(&running) {
        if run {
            p.sigterm();
        }
    }
    let mut warnings = Vec::new();
    for (p, &run) in procs.iter_mut().zip(&running) {
        if !run {
            continue;
        }
        match p.wait_exit(grace).await {
            Some(status) if status.success() => {}
            Some(status) => warnings.push(format!(
                "{} exited with {status} after SIGTERM (see {})",
                p.name,
                p.log_path.display()
            )),
            None => {
                p.sigkill();
                warnings.push(format!(
                    "{} did not stop within {} s of SIGTERM and was killed",
                    p.name,
                    grace.as_secs()
                ));
            }
        }
    }
    warnings
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log_tail(&self.name, &self.log_path);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_signal(pid: u32, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
    // ESRCH (already exited, not yet reaped) is not an error for a test.
    let _ = nix::sys::signal::kill(pid, signal);
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn print_log_tail(what: &str, path: &Path) {
    let text = read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(80);
    eprintln!(
        "----- last {} lines of {what} ({}) -----",
        lines.len() - from,
        path.display()
    );
    for line in &lines[from..] {
        eprintln!("{line}");
    }
    eprintln!("----- end of {what} -----");
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Polls `f` every 100 ms until it returns true; panics naming `what` when
/// `timeout` passes first.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_until(what, Duration::from_millis(100), timeout, &mut [], || {
        let check = f();
        async move { Ok(check.await) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Polls `check` every `every` until it is true and returns the moment it
/// first held; fails after `timeout`, on an error from `check`, or as soon
/// as one of `procs` has exited (they should all be running), with the end
/// of their logs.
pub async fn poll_until<F, Fut>(
    what: &str,
    every: Duration,
    timeout: Duration,
    procs: &mut [Proc],
    mut check: F,
) -> anyhow::Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(Instant::now());
        }
        for p in procs.iter_mut() {
            p.check_running()?;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("\n--- {} ---\n{}", p.name, p.log_tail(15)))
                .collect();
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                logs.concat()
            );
        }
        tokio::time::sleep(every).await;
    }
}

// ---------------------------------------------------------------------------
// NATS helpers
// ---------------------------------------------------------------------------

/// Connects to NATS as the admin user (see [`NatsRole`]), panicking (with
/// how to start the servers) on failure.
pub async fn nats_connect(url: &str) -> async_nats::Client {
    nats_connect_as(url, Some(NatsRole::Admin)).await
}

/// Connects to NATS as `role`, or anonymously with None.
pub async fn nats_connect_as(url: &str, role: Option<NatsRole>) -> async_nats::Client {
    let mut opts = async_nats::ConnectOptions::new();
    if let Some(role) = role {
        let (user, password) = role.credentials();
        opts = opts.user_and_password(user, password);
    }
    opts.connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to NATS at {url}: {e}; {HOW_TO_START}"))
}

/// Number of messages currently stored in JetStream stream `stream`.
pub async fn js_stream_message_count(nats_url: &str, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(nats_connect(nats_url).await);
    let mut s = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("cannot get JetStream stream {stream}: {e}"));
    let info = s
        .info()
        .await
        .unwrap_or_else(|e| panic!("cannot read info of JetStream stream {stream}: {e}"));
    info.state.messages
}

/// Creates the change stream of `names` (subjects `<subject_prefix>.>`)
/// unless it exists, as the producer would.
pub async fn ensure_change_stream(js: &async_nats::jetstream::Context, names: &TestNames) {
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: names.stream.clone(),
        subjects: vec![format!("{}.>", names.subject_prefix)],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "cannot create or read JetStream stream {}: {e}",
            names.stream
        )
    });
}

/// Every record in JetStream stream `stream` (none when it does not exist),
/// in order: (subject, payload); a chunk (`syncdata_core::chunk`) counts as
/// its records, each with its subject. Panics when a message does not
/// arrive within 10 s or a chunk is malformed.
pub async fn stream_messages(nats_url: &str, stream: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (subject, payload) in stream_raw_messages(nats_url, stream).await {
        if syncdata_core::chunk::is_chunk(&payload) {
            let ranges = syncdata_core::chunk::split(&payload)
                .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
            for r in ranges {
                out.push((subject.clone(), payload[r].to_vec()));
            }
        } else {
            out.push((subject, payload));
        }
    }
    out
}

/// The records one message carries: a chunk's (`syncdata_core::chunk`),
/// else the payload itself. Panics on a malformed chunk.
pub fn payload_records(payload: &[u8]) -> Vec<Vec<u8>> {
    if !syncdata_core::chunk::is_chunk(payload) {
        return vec![payload.to_vec()];
    }
    syncdata_core::chunk::split(payload)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|r| payload[r].to_vec())
        .collect()
}

/// Records in JetStream stream `stream` (a chunk counts its records); 0
/// when the stream does not exist.
pub async fn stream_record_count(nats_url: &str, stream: &str) -> u64 {
    stream_messages(nats_url, stream).await.len() as u64
}

/// Every message in JetStream stream `stream` (none when it does not
/// exist), in order: (subject, payload), chunks as they are. Panics when
/// one does not arrive within 10 s.
pub async fn stream_raw_messages(nats_url: &str, stream: &str) -> Vec<(String, Vec<u8>)> {
    use async_nats::jetstream;
    use futures::StreamExt;
    let js = jetstream::new(nats_connect(nats_url).await);
    let Ok(mut s) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let total = s
        .info()
        .await
        .unwrap_or_else(|e| panic!("cannot read info of JetStream stream {stream}: {e}"))
        .state
        .messages;
    if total == 0 {
        return Vec::new();
    }
    let consumer = s
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("cannot read JetStream stream {stream}: {e}"));
    let mut msgs = consumer
        .messages()
        .await
        .unwrap_or_else(|e| panic!("cannot read JetStream stream {stream}: {e}"));
    let mut out = Vec::new();
    while (out.len() as u64) < total {
        let next = tokio::time::timeout(Duration::from_secs(10), msgs.next()).await;
        let Ok(Some(Ok(m))) = next else {
            panic!(
                "stream {stream} ended after {} of {total} messages",
                out.len()
            );
        };
        out.push((m.subject.to_string(), m.payload.to_vec()));
    }
    out
}

/// A free TCP port on 127.0.0.1 right now (another process may still take it
/// before it is bound: the server starters here retry; a child that cannot
/// bind fails to start, which its supervisor reports).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
}

async fn tcp_accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// True if `GET path` on 127.0.0.1:`port` answers 200.
async fn http_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(buf)) => {
            let head = String::from_utf8_lossy(&buf[..buf.len().min(32)]).into_owned();
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// A private nats-server
// ---------------------------------------------------------------------------

/// A nats-server with JetStream owned by one test, for tests that kill and
/// restart it. Same port and store directory across restarts, so streams and
/// their messages survive (as they would in production). Killed on drop.
pub struct NatsServer {
    port: u16,
    monitor_port: u16,
    store_dir: PathBuf,
    conf_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on free ports with its store in `dir/nats-store`,
    /// logging to `dir/nats-server.log`, and waits until JetStream is ready.
    pub async fn start(dir: &Path) -> NatsServer {
        NatsServer::start_with(dir, NATS_CONF).await
    }

    /// [`NatsServer::start`] with `settings` (nats-server configuration
    /// lines) in place of the shared server's 8 MB `max_payload`: e.g. ""
    /// for the server's defaults (1 MB).
    pub async fn start_with(dir: &Path, settings: &str) -> NatsServer {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let conf_path = dir.join("nats-server.conf");
        // The same users and permissions as the shared server.
        fs::write(&conf_path, format!("{settings}{}", nats_auth_conf()))
            .expect("cannot write nats-server.conf");
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut monitor_port = free_port();
            while monitor_port == port {
                monitor_port = free_port();
            }
            let mut server = NatsServer {
                port,
                monitor_port,
                store_dir: dir.join("nats-store"),
                conf_path: conf_path.clone(),
                log_path: dir.join("nats-server.log"),
                child: None,
            };
            if server.launch_and_wait().await {
                return server;
            }
            // Most likely a port taken between picking and binding: retry.
            last_log = read_lossy(&server.log_path);
        }
        panic!("nats-server did not start after 5 attempts; its log:\n{last_log}");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// Kills the server with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store directory
    /// (killing it first if it still runs) and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill9();
        if !self.launch_and_wait().await {
            panic!(
                "nats-server did not restart on port {}; its log:\n{}",
                self.port,
                read_lossy(&self.log_path)
            );
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Spawns the server and waits for `/healthz`, which on a restart also
    /// waits for the stored streams to be recovered. False if it exits.
    async fn launch_and_wait(&mut self) -> bool {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path.display()));
        let log_err = log.try_clone().expect("cannot clone log file handle");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.conf_path)
            .args(["-js", "-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(&self.store_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nats-server ({e}); run scripts/deps.sh"));
        self.child = Some(child);

        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.kill9();
                return false;
            }
            if http_ok(self.monitor_port, "/healthz").await && tcp_accepts(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill9();
        panic!(
            "nats-server on port {} not ready after {SERVER_START_TIMEOUT:?}; its log:\n{}",
            self.port,
            read_lossy(&self.log_path)
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log_tail("nats-server", &self.log_path);
        }
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// A private PostgreSQL
// ---------------------------------------------------------------------------

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command for a PostgreSQL tool; as `runuser -u postgres --` when root,
/// since PostgreSQL refuses to run as root.
fn pg_tool(tool: &str) -> Command {
    let path = Path::new(PG_BIN).join(tool);
    if !path.is_file() {
        panic!("{} not found; run scripts/deps.sh", path.display());
    }
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

/// Runs a PostgreSQL tool to completion with its output in `log`; panics
/// with that output on failure.
fn run_pg_tool(mut cmd: Command, log: &Path, what: &str) {
    let out = File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    let err = out.try_clone().expect("cannot clone log file handle");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !status.success() {
        panic!("{what} failed ({status}):\n{}", read_lossy(log));
    }
}

/// As root, lets the postgres user into `dir`: adds o+x to `dir` and to its
/// ancestors inside the system temp directory (tempfile makes them 0700).
fn open_for_postgres(dir: &Path) {
    if !running_as_root() {
        return;
    }
    let tmp = std::env::temp_dir();
    for a in dir.ancestors() {
        if a != dir && (!a.starts_with(&tmp) || a == tmp) {
            break;
        }
        let mut perm = fs::metadata(a)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", a.display()))
            .permissions();
        perm.set_mode(perm.mode() | 0o001);
        fs::set_permissions(a, perm)
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", a.display()));
    }
}

fn chown_to_postgres(path: &Path) {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("user postgres does not exist; run scripts/deps.sh"));
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .unwrap_or_else(|e| panic!("cannot chown {} to postgres: {e}", path.display()));
}

/// A PostgreSQL 15 owned by one test, for tests that stop and start it.
/// Same settings as `scripts/servers.sh`, trust auth, user `postgres`,
/// listening on 127.0.0.1 only. Stopped (immediately) on drop.
pub struct PgServer {
    data_dir: PathBuf,
    sock_dir: PathBuf,
    log_path: PathBuf,
    ctl_log_path: PathBuf,
    port: u16,
    running: bool,
}

impl PgServer {
    /// Runs initdb into `dir/pg` (a few seconds), starts the server on a free
    /// port and waits until it accepts connections.
    pub async fn start(dir: &Path) -> PgServer {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let dir = dir
            .canonicalize()
            .unwrap_or_else(|e| panic!("cannot resolve {}: {e}", dir.display()));
        let mut server = PgServer {
            data_dir: dir.join("pg"),
            sock_dir: dir.join("pgsock"),
            log_path: dir.join("postgres.log"),
            ctl_log_path: dir.join("pg_ctl.log"),
            port: 0,
            running: false,
        };
        for p in [&server.data_dir, &server.sock_dir] {
            fs::create_dir_all(p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        }
        fs::set_permissions(&server.data_dir, fs::Permissions::from_mode(0o700))
            .expect("cannot chmod the data directory");
        File::create(&server.log_path).expect("cannot create postgres.log");
        if running_as_root() {
            open_for_postgres(&dir);
            chown_to_postgres(&server.data_dir);
            chown_to_postgres(&server.sock_dir);
            chown_to_postgres(&server.log_path);
        }

        let mut initdb = pg_tool("initdb");
        initdb.arg("-D").arg(&server.data_dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run_pg_tool(initdb, &dir.join("initdb.log"), "initdb");

        // initdb --auth=trust already trusts local sockets and 127.0.0.1.
        let mut conf = OpenOptions::new()
            .append(true)
            .open(server.data_dir.join("postgresql.conf"))
            .expect("cannot open postgresql.conf");
        writeln!(conf, "include 'syncdata.conf'").expect("cannot write postgresql.conf");

        for _ in 0..5 {
            server.port = free_port();
            let settings = format!(
                "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n{PG_SETTINGS}",
                server.port,
                server.sock_dir.display()
            );
            fs::write(server.data_dir.join("syncdata.conf"), settings)
                .expect("cannot write syncdata.conf");
            if server.try_start().await {
                return server;
            }
            // Most likely a port taken between picking and binding: retry.
        }
        panic!(
            "PostgreSQL did not start after 5 attempts; its log:\n{}",
            read_lossy(&server.log_path)
        );
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        "postgres"
    }

    /// Connection URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        self.env().url_for(db)
    }

    /// This server as a [`PgEnv`].
    pub fn env(&self) -> PgEnv {
        PgEnv {
            host: self.host().to_owned(),
            port: self.port,
            user: self.user().to_owned(),
        }
    }

    /// Like [`fresh_database`], on this server.
    pub async fn fresh_database(&self, tag: &str) -> TestDb {
        create_database(&self.env(), tag).await
    }

    /// Stops the server (`pg_ctl stop -m fast`: clients are disconnected,
    /// data is kept). Does nothing if it is stopped.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Starts the stopped server again on the same port and waits until it
    /// accepts connections.
    pub async fn start_again(&mut self) {
        if self.running {
            return;
        }
        if !self.try_start().await {
            panic!(
                "PostgreSQL did not start again on port {}; its log:\n{}",
                self.port,
                read_lossy(&self.log_path)
            );
        }
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let mut cmd = pg_tool("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "60", "stop"]);
        run_pg_tool(cmd, &self.ctl_log_path, "pg_ctl stop");
        self.running = false;
    }

    async fn try_start(&mut self) -> bool {
        // `-l` sends the server's output to its log, so the daemon does not
        // hold pg_ctl's stdout open.
        let mut cmd = pg_tool("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args(["-w", "-t", "60", "start"]);
        let out = File::create(&self.ctl_log_path).expect("cannot create pg_ctl.log");
        let err = out.try_clone().expect("cannot clone log file handle");
        let status = tokio::process::Command::from(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .status()
            .await
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        if !status.success() {
            return false;
        }
        self.running = true;
        let url = self.url_for("postgres");
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if let Ok(conn) = PgConnection::connect(&url).await {
                let _ = conn.close().await;
                return true;
            }
            if Instant::now() >= deadline {
                panic!(
                    "PostgreSQL on port {} started but refuses connections; its log:\n{}",
                    self.port,
                    read_lossy(&self.log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log_tail("postgres", &self.log_path);
        }
        if self.running {
            let mut cmd = pg_tool("pg_ctl");
            cmd.arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
            self.running = false;
        }
    }
}

/// Publishes a hand-made change record signed as the producer would sign it
/// (see [`signed_headers`]); returns the PubAck future.
pub async fn publish_signed(
    js: &async_nats::jetstream::Context,
    subject: String,
    payload: Vec<u8>,
) -> Result<
    async_nats::jetstream::context::PublishAckFuture,
    async_nats::jetstream::context::PublishError,
> {
    let headers = signed_headers(&subject, &payload);
    js.publish_with_headers(subject, headers, payload.into())
        .await
}
