//! The shell both binaries share: shutdown never depends on stderr or
//! stdout being open (`… 2>&1 | tee log`, then Ctrl-C ends `tee` first),
//! output into a closed pipe ends a command cleanly, and the error line, its
//! hint and the configuration warnings say what they should. Real binaries
//! against the real PostgreSQL and nats-server.

use syncdata_testkit::harness as support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{TestDb, TestNames};
use syncdata_testkit::workload::{self, WorkloadSpec};

/// A binary whose stdout and stderr are pipes nobody reads any more: both
/// read ends are closed right after the start, so every write the process
/// makes to either fails with EPIPE. Killed when dropped.
struct Deaf {
    child: Child,
    what: String,
}

impl Deaf {
    fn spawn(bin: &str, args: &[&str], config: &Path, env: &[(&str, &str)]) -> Deaf {
        let mut cmd = command(bin, args, config, env);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        drop(child.stdout.take());
        drop(child.stderr.take());
        Deaf {
            child,
            what: format!("{bin} {}", args.join(" ")),
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)
            .expect("kill(2)");
    }

    /// Waits (60 s at most) until `ready` holds; fails at once if the
    /// process dies first (a write to the closed pipes must not kill it).
    async fn wait_ready<F, Fut>(&mut self, what: &str, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready().await {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("{} died ({status}) before {what}", self.what);
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn exit_within(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running {timeout:?} after the signal, its stdout and stderr closed",
                self.what
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Deaf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bin args…` with `DATA_SYNC_CONFIG=config`, no inherited overrides and
/// `env` on top.
fn command(bin: &str, args: &[&str], config: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = support::command(&support::bin(bin));
    cmd.args(args).stdin(Stdio::null());
    cmd.env_remove("RUST_LOG").env("DATA_SYNC_CONFIG", config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a one-shot command to its end: (status, stdout, stderr).
async fn run(bin: &str, args: &[&str], config: &Path) -> (ExitStatus, String, String) {
    let mut cmd = tokio::process::Command::from(command(bin, args, config, &[]));
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{bin} {args:?} did not finish within 60 s"))
        .expect("run");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first signal stops a daemon gracefully (status 0) although its
/// stdout and stderr are closed and it logs at debug (every line fails).
async fn stops_deaf(mut daemon: Deaf, signal: Signal) {
    assert!(daemon.running(), "{} exited before the signal", daemon.what);
    daemon.signal(signal);
    let status = daemon.exit_within(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{} after {signal}: {status}",
        daemon.what
    );
}

/// Records in `stream` (a chunk counts its records); 0 while it does not
/// exist.
async fn stream_messages(stream: &str) -> u64 {
    support::stream_record_count(&support::nats_url(), stream).await
}

const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "debug")];

struct World {
    db: TestDb,
    names: TestNames,
    dir: tempfile::TempDir,
    archive: PathBuf,
    config: PathBuf,
}

async fn world(tag: &str, extra_toml: &str) -> World {
    let db = support::fresh_database(tag).await;
    let names = TestNames::new(tag);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let config = support::write_config(
        dir.path(),
        &db,
        &names,
        &support::nats_url(),
        &archive,
        extra_toml,
    );
    World {
        db,
        names,
        dir,
        archive,
        config,
    }
}

// ---------------------------------------------------------------------------
// Daemons stop with stdout and stderr closed
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_run_stops_on_sigint_and_sigterm_with_stdout_and_stderr_closed() {
    let w = world("clirun", "[producer]\nrescan_ms = 100\n").await;
    let records = workload::generate(&WorkloadSpec::full(7, 400));
    workload::write_archive(&w.archive, &records[..200], 100).unwrap();
    for (round, signal) in [Signal::SIGINT, Signal::SIGTERM].into_iter().enumerate() {
        let mut daemon = Deaf::spawn("syncdata-producer", &["run"], &w.config, DEBUG);
        if round == 1 {
            // A file that appears while it runs: more work, more log lines.
            let more =
                workload::write_archive(&w.dir.path().join("more"), &records[200..], 200).unwrap();
            std::fs::rename(&more[0], w.archive.join(workload::archive_file_name(3))).unwrap();
        }
        let want = 200 * (round as u64 + 1);
        daemon
            .wait_ready("the producer publishes the archive", || async {
                stream_messages(&w.names.stream).await >= want
            })
            .await;
        stops_deaf(daemon, signal).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_start_stops_on_sigint_and_sigterm_with_stdout_and_stderr_closed() {
    let w = world("clistart", "").await;
    sqlx::raw_sql("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
        .execute(&w.db.pool)
        .await
        .unwrap();
    let (status, _, stderr) = run("syncdata", &["add-tables", "t"], &w.config).await;
    assert!(status.success(), "add-tables: {stderr}");
    const RUNNING: &str = "SELECT count(*) FROM syncdata.daemons WHERE stopped_at IS NULL";
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let mut daemon = Deaf::spawn("syncdata", &["start"], &w.config, DEBUG);
        daemon
            .wait_ready("the daemon registers", || async {
                sqlx::query_scalar::<_, i64>(RUNNING)
                    .fetch_one(&w.db.pool)
                    .await
                    .is_ok_and(|n| n > 0)
            })
            .await;
        stops_deaf(daemon, signal).await;
        let left: i64 = sqlx::query_scalar(RUNNING)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
        assert_eq!(left, 0, "a graceful stop records the daemon as stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_stops_on_sigint_and_sigterm_with_stdout_and_stderr_closed() {
    let slot = support::unique("cliarch");
    let w = world(
        "cliarch",
        &format!(
            "[source]\nslot = \"{slot}\"\ntables = [\"t\"]\npoll_ms = 50\n\
             segment_max_age_ms = 100\n"
        ),
    )
    .await;
    let source = support::pg_env().url_for(&w.db.name);
    sqlx::raw_sql("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
        .execute(&w.db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'wal2json')")
        .bind(&slot)
        .execute(&w.db.pool)
        .await
        .expect("create the slot");
    let segments = |archive: &Path| {
        std::fs::read_dir(archive)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    };
    for (round, signal) in [Signal::SIGINT, Signal::SIGTERM].into_iter().enumerate() {
        let mut daemon = Deaf::spawn(
            "syncdata-producer",
            &["archive", "--source", &source],
            &w.config,
            DEBUG,
        );
        sqlx::query(
            "INSERT INTO t SELECT g, 'x' FROM generate_series($1::bigint, $1::bigint + 99) g",
        )
        .bind(round as i64 * 100)
        .execute(&w.db.pool)
        .await
        .unwrap();
        daemon
            .wait_ready("the archiver writes a segment", || async {
                segments(&w.archive) > round
            })
            .await;
        stops_deaf(daemon, signal).await;
        // The slot is released: nobody holds it after the stop.
        support::wait_until(
            "the archiver releases the slot",
            Duration::from_secs(30),
            || async {
                !sqlx::query_scalar::<_, bool>(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                )
                .bind(&slot)
                .fetch_one(&w.db.pool)
                .await
                .unwrap()
            },
        )
        .await;
    }
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&w.db.pool)
        .await
        .expect("drop the slot");
}

// ---------------------------------------------------------------------------
// One-shot commands into a closed stdout
// ---------------------------------------------------------------------------

/// `cmd | head -0`: the reader is gone before the first line; the command
/// ends with status 0 and says nothing (no panic).
async fn into_closed_stdout(bin: &str, args: &[&str], config: &Path) {
    let mut cmd = command(bin, args, config, &[]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    drop(child.stdout.take());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{bin} {args:?} into a closed stdout: {}\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error:"),
        "{bin} {args:?}: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_into_a_closed_pipe_ends_commands_cleanly() {
    let w = world("clipipe", "").await;
    sqlx::raw_sql("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
        .execute(&w.db.pool)
        .await
        .unwrap();
    let (status, _, stderr) = run("syncdata", &["add-tables", "t"], &w.config).await;
    assert!(status.success(), "add-tables: {stderr}");
    for args in [
        &["list-tables"][..],
        &["list-tables", "--json"],
        &["status"],
        &["config", "check"],
    ] {
        into_closed_stdout("syncdata", args, &w.config).await;
    }
    for args in [&["status"][..], &["status", "--json"], &["config", "check"]] {
        into_closed_stdout("syncdata-producer", args, &w.config).await;
    }
}

// ---------------------------------------------------------------------------
// Errors, hints and warnings
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_error_line_and_the_config_hint_only_without_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    for bin in ["syncdata", "syncdata-producer"] {
        // Neither --config nor DATA_SYNC_CONFIG: the hint says how.
        let mut cmd = command(bin, &["status"], &missing, &[]);
        cmd.env_remove("DATA_SYNC_CONFIG");
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bin}: {stderr}");
        assert!(
            stderr.starts_with("error: DATA_SYNC_CONFIG is not set")
                && stderr.contains("hint: pass --config PATH or set DATA_SYNC_CONFIG"),
            "{bin}: {stderr}"
        );

        // A file that does not exist: its error once, and no hint.
        let (status, stdout, stderr) = run(
            bin,
            &["--config", missing.to_str().unwrap(), "status"],
            &missing,
        )
        .await;
        assert_eq!(status.code(), Some(1), "{bin}: {stderr}");
        assert!(stdout.is_empty(), "{bin}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{bin}: one line: {stderr}");
        assert!(
            stderr.starts_with("error: cannot read configuration file")
                && stderr.matches("No such file").count() == 1
                && !stderr.contains("hint"),
            "{bin}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_binary_validates_its_part_and_warns_about_dead_keys() {
    let dir = tempfile::tempdir().unwrap();
    // A producer's file: no local database, an old archive_host.
    let path = dir.path().join("producer.toml");
    std::fs::write(
        &path,
        "archive_dir = \"/var/lib/syncdata/archive\"\narchive_host = \"backup\"\n\
         [producer]\nallow_unsanitized = true\n",
    )
    .unwrap();
    let (status, stdout, stderr) = run("syncdata-producer", &["config", "check"], &path).await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    assert!(
        stderr.contains("archive_host no longer used") && stderr.contains("remove it"),
        "{stderr}"
    );
    // The consumer needs its database.
    let (status, _, stderr) = run("syncdata", &["config", "check"], &path).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pg_database"), "{stderr}");

    // A consumer's file with a bad [producer] part: not the consumer's
    // business, the producer's.
    let path = dir.path().join("consumer.toml");
    std::fs::write(
        &path,
        "pg_database = \"app\"\n[producer]\nmax_in_flight = 0\n",
    )
    .unwrap();
    let (status, stdout, stderr) = run("syncdata", &["config", "check"], &path).await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.is_empty(), "quiet by default: {stderr}");
    // It shows its own keys as TOML, not the producer's section.
    assert!(
        stdout.contains("pg_database = \"app\"") && stdout.contains("[consumer]"),
        "{stdout}"
    );
    assert!(!stdout.contains("[producer]"), "{stdout}");
    let (status, _, stderr) = run("syncdata-producer", &["config", "check"], &path).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("producer.max_in_flight"), "{stderr}");
}
