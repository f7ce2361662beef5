//! `syncdata-producer archive`: reads the wal2json slot and writes segment
//! files into the archive directory, which `syncdata-producer run` tails.
//!
//! Invariants:
//! - every record carries its transaction's commit LSN in `lsn` and its
//!   ordinal in the transaction in `seq`; versions only grow, in file order;
//! - a segment is written under a temporary name, fsynced, renamed, and the
//!   directory fsynced; only then may the slot move past the transactions it
//!   holds (`pg_replication_slot_advance` to the end of the last complete
//!   transaction on disk). The slot's confirmed position never passes what
//!   is on disk, so a crash loses nothing: the slot sends again what was not
//!   confirmed;
//! - what comes again and is already on disk (version <= the last record of
//!   the newest segment) is skipped, so a crash duplicates nothing either.
//!
//! Reading uses `pg_logical_slot_peek_changes(slot, NULL, n, …)` and streams
//! its rows: the client holds one row at a time whatever the size of a
//! transaction. The server returns whole transactions (it stops after the
//! first commit past `n` rows), spilling large ones to disk
//! (`logical_decoding_work_mem`, `work_mem`); a huge transaction is written
//! across several segments as it streams, and the slot moves past it once
//! its last segment is on disk.

pub mod decode;
pub mod segment;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use sqlx::postgres::PgConnection;
use syncdata_core::config::Config;
use syncdata_core::retry::{self, RetryPolicy};
use syncdata_core::table::TableName;
use syncdata_core::version::{Lsn, Version};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::source::{self, SourceSettings};
use decode::Event;
use segment::Segment;

/// What the archiver needs.
#[derive(Debug, Clone)]
pub struct ArchiverSettings {
    pub source: SourceSettings,
    /// Empty: every table of the database.
    pub tables: Vec<TableName>,
    pub archive_dir: PathBuf,
    pub poll: Duration,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    pub peek_max_changes: u32,
}

impl ArchiverSettings {
    /// `tables` (from `--tables`) wins over `source.tables`.
    pub fn from_config(
        config: &Config,
        source_url: Option<String>,
        tables: &[String],
    ) -> anyhow::Result<ArchiverSettings> {
        let tables = if tables.is_empty() {
            source::parse_tables(&config.source.tables)?
        } else {
            source::parse_tables(tables)?
        };
        Ok(ArchiverSettings {
            source: SourceSettings::from_config(config, source_url)?,
            tables,
            archive_dir: config.archive_dir()?.to_owned(),
            poll: Duration::from_millis(config.source.poll_ms),
            segment_max_bytes: config.source.segment_max_bytes,
            segment_max_age: Duration::from_millis(config.source.segment_max_age_ms),
            peek_max_changes: config.source.peek_max_changes,
        })
    }
}

/// The transaction being read.
struct Tx {
    commit: Lsn,
    ts: Option<String>,
    next_seq: u64,
}

struct Archiver {
    settings: ArchiverSettings,
    options: Vec<String>,
    segment: Option<Segment>,
    /// The newest version on disk or in the open segment.
    last: Option<Version>,
    /// The newest segment found at start.
    last_name: Option<String>,
    tx: Option<Tx>,
    /// End of the last complete transaction whose changes are all on disk.
    durable_end: Lsn,
    /// End of the last complete transaction seen (its changes may be in the
    /// open segment).
    seen_end: Lsn,
    /// Where the slot is confirmed.
    confirmed: Lsn,
    /// Tables whose changes were skipped for lack of a key (warned once).
    keyless: BTreeSet<String>,
    written: u64,
    segments: u64,
    /// Shutdown came in the middle of a read.
    interrupted: bool,
}

/// Runs until `token` is cancelled: then closes the open segment, moves
/// the slot past it and returns. After the first successful start, a lost
/// source connection is retried with capped backoff; the state on disk
/// makes the resumed read skip what is already written.
pub async fn run(settings: ArchiverSettings, token: CancellationToken) -> anyhow::Result<()> {
    let dir = &settings.archive_dir;
    syncdata_core::private_fs::create_dir_all(dir)
        .with_context(|| format!("cannot create archive directory {}", dir.display()))?;
    syncdata_core::private_fs::warn_if_exposed(dir, "archive");
    let _lock = segment::lock_archiver(dir)?;
    let stale = segment::remove_stale_segments(dir)?;
    if stale > 0 {
        tracing::info!(
            stale,
            "removed unfinished segments of a previous run; the slot sends their changes again"
        );
    }
    let last = segment::last_written(dir)?;
    let mut archiver = Archiver {
        options: source::plugin_options(&settings.tables),
        segment: None,
        last: last.as_ref().map(|(_, v)| *v),
        last_name: last.map(|(name, _)| name),
        tx: None,
        durable_end: Lsn(0),
        seen_end: Lsn(0),
        confirmed: Lsn(0),
        keyless: BTreeSet::new(),
        written: 0,
        segments: 0,
        interrupted: false,
        settings,
    };
    let mut started = false;
    let policy = RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut delays = policy.delays();
    let result = loop {
        let began = Instant::now();
        let err = match archiver.session(&token, &mut started).await {
            Ok(()) => break Ok(()),
            Err(err) => err,
        };
        if began.elapsed() > Duration::from_secs(60) {
            delays = policy.delays();
        }
        // What is written is complete: keep it.
        if let Err(e) = archiver.close_segment() {
            break Err(e.context(format!("{err:#}")));
        }
        if !started || !is_transient(&err) {
            break Err(err);
        }
        let delay = delays.next().unwrap_or(policy.cap);
        tracing::warn!(error = %format!("{err:#}"), retry_in_ms = delay.as_millis() as u64, "source connection lost; reconnecting");
        if !retry::sleep(delay, &token).await {
            break Ok(());
        }
    };
    if started {
        tracing::info!(
            records = archiver.written,
            segments = archiver.segments,
            confirmed = %archiver.confirmed,
            "archiver stopped"
        );
    }
    result
}

/// Failures worth a reconnect: the connection, the server shutting down or
/// overloaded, the slot briefly held by another session.
fn is_transient(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut) => true,
            Some(sqlx::Error::Database(db)) => db.code().is_some_and(|c| {
                c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c == "55006"
            }),
            _ => false,
        })
}

impl Archiver {
    /// Connects, checks the source, then reads until cancelled (Ok, after
    /// closing the open segment and moving the slot past it) or until
    /// something fails.
    async fn session(
        &mut self,
        token: &CancellationToken,
        started: &mut bool,
    ) -> anyhow::Result<()> {
        let settings = &self.settings;
        let mut conn = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            conn = source::connect(&settings.source.url, "syncdata-archiver") => conn?,
        };
        source::check_wal_level(&mut conn).await?;
        source::check_replication_privilege(&mut conn).await?;
        for table in &settings.tables {
            source::source_table(&mut conn, table).await?;
        }
        let slot = &settings.source.slot;
        let mut info = source::require_slot(&mut conn, slot, &settings.source.plugin).await?;
        // The backend of an archiver killed a moment ago may still hold it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(pid) = info.active_pid {
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "replication slot {slot} is in use by process {pid}: is another archiver running?"
                );
            }
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            info = source::require_slot(&mut conn, slot, &settings.source.plugin).await?;
        }
        let (options, warning) =
            source::accepted_plugin_options(&mut conn, slot, &settings.tables).await?;
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        self.options = options;
        source::probe_slot(&mut conn, slot, &settings.source.plugin, &self.options).await?;
        let confirmed: Lsn = info
            .confirmed_flush
            .as_deref()
            .unwrap_or("0/0")
            .parse()
            .context("slot's confirmed_flush_lsn")?;
        let current: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut conn)
            .await?;
        let current: Lsn = current.parse()?;
        if let (Some(name), Some(last)) = (&self.last_name, self.last) {
            if last.lsn > current {
                anyhow::bail!(
                    "the newest segment {name} holds changes at {} but the source's WAL is only \
                     at {current}: the archive directory belongs to another database",
                    last.lsn
                );
            }
        }
        self.confirmed = confirmed;
        self.durable_end = self.durable_end.max(confirmed);
        self.seen_end = self.seen_end.max(confirmed);
        if !*started {
            tracing::info!(
                slot = %slot,
                confirmed = %confirmed,
                tables = settings.tables.len(),
                last_on_disk = ?self.last.map(|v| v.to_string()),
                "archiver started"
            );
        }
        *started = true;
        self.read_loop(&mut conn, token).await?;
        self.close_segment()?;
        if self.interrupted {
            // Stopped inside a read: the connection still holds the rest
            // of its result, and the server may still hold the slot. The
            // slot stays where it is; the next start skips what is on disk.
            return Ok(());
        }
        self.advance(&mut conn).await?;
        let _ = sqlx::Connection::close(conn).await;
        Ok(())
    }

    async fn read_loop(
        &mut self,
        conn: &mut PgConnection,
        token: &CancellationToken,
    ) -> anyhow::Result<()> {
        while !token.is_cancelled() {
            let full = self.read_once(conn, token).await?;
            if token.is_cancelled() {
                break;
            }
            let age_due = self
                .segment
                .as_ref()
                .is_some_and(|s| s.opened().elapsed() >= self.settings.segment_max_age);
            // A full read means more is waiting: close now so the slot can
            // move and the next read starts after what is written.
            if age_due || (full && self.segment.is_some()) {
                self.close_segment()?;
            }
            self.advance(conn).await?;
            if full {
                continue;
            }
            let mut wake = Instant::now() + self.settings.poll;
            if let Some(s) = &self.segment {
                wake = wake.min(Instant::from_std(
                    s.opened() + self.settings.segment_max_age,
                ));
            }
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        Ok(())
    }

    /// One `peek_changes` call, streamed. True when it returned as many
    /// rows as asked (more may be waiting).
    async fn read_once(
        &mut self,
        conn: &mut PgConnection,
        token: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let slot = self.settings.source.slot.clone();
        let options = self.options.clone();
        let mut rows = sqlx::query_as::<_, (String,)>(
            "SELECT data FROM pg_logical_slot_peek_changes($1, NULL, $2, VARIADIC $3::text[])",
        )
        .bind(slot)
        .bind(self.settings.peek_max_changes as i32)
        .bind(options)
        .fetch(&mut *conn);
        let mut n: u64 = 0;
        // A transaction is re-read from its start on each call.
        self.tx = None;
        loop {
            let row = tokio::select! {
                _ = token.cancelled() => {
                    self.interrupted = true;
                    return Ok(false);
                }
                row = rows.try_next() => row.context("reading the replication slot")?,
            };
            let Some((data,)) = row else { break };
            n += 1;
            self.handle(&data)?;
        }
        Ok(n >= u64::from(self.settings.peek_max_changes))
    }

    fn handle(&mut self, row: &str) -> anyhow::Result<()> {
        match decode::decode(row)? {
            Event::Begin { commit, ts, .. } => {
                self.tx = Some(Tx {
                    commit,
                    ts,
                    next_seq: 0,
                });
            }
            Event::Change(change) => {
                let tx = self
                    .tx
                    .as_mut()
                    .context("wal2json change outside a transaction")?;
                let version = Version::new(tx.commit, tx.next_seq);
                tx.next_seq += 1;
                if self.last.is_some_and(|last| version <= last) {
                    return Ok(()); // already on disk
                }
                let record = change.into_record(version, tx.ts.clone());
                let line = record.to_json();
                if self.segment.is_none() {
                    self.segment = Some(Segment::create(&self.settings.archive_dir, version)?);
                }
                let seg = self.segment.as_mut().expect("just created");
                seg.file().write_line(&line)?;
                self.last = Some(version);
                self.written += 1;
                if seg.bytes() >= self.settings.segment_max_bytes
                    || seg.opened().elapsed() >= self.settings.segment_max_age
                {
                    self.close_segment()?;
                }
            }
            Event::NoKey {
                schema,
                table,
                op,
                has_pk,
            } => {
                let tx = self
                    .tx
                    .as_mut()
                    .context("wal2json change outside a transaction")?;
                tx.next_seq += 1;
                let name = TableName::new(schema, table).to_string();
                metrics::counter!("syncdata_archiver_keyless_changes_total").increment(1);
                if self.keyless.insert(name.clone()) {
                    if has_pk {
                        tracing::error!(
                            table = %name,
                            op = %op,
                            "a change reached wal2json without the row's old primary key: the \
                             table's replica identity is NOTHING or an index other than its \
                             primary key, so its DELETEs cannot be synced and are not archived. \
                             Fix: ALTER TABLE {name} REPLICA IDENTITY DEFAULT"
                        );
                    } else {
                        tracing::error!(
                            table = %name,
                            op = %op,
                            "table has no primary key: its changes cannot be synced and are not \
                             archived. Add a primary key, or leave it out of --tables"
                        );
                    }
                }
            }
            Event::Commit { end, .. } => {
                self.tx = None;
                self.seen_end = self.seen_end.max(end);
                if self.segment.is_none() {
                    // Everything of this transaction (if anything) is on disk.
                    self.durable_end = self.seen_end;
                }
            }
            Event::Message => {}
        }
        Ok(())
    }

    /// Puts the open segment on disk (fsync + rename); its complete
    /// transactions become durable.
    fn close_segment(&mut self) -> anyhow::Result<()> {
        let Some(seg) = self.segment.take() else {
            return Ok(());
        };
        let records = seg.records();
        let path = seg.publish().context("cannot write a segment")?;
        self.segments += 1;
        metrics::counter!("syncdata_archiver_segments_total").increment(1);
        metrics::counter!("syncdata_archiver_records_total").increment(records);
        tracing::debug!(file = %path.display(), records, "segment written");
        // A transaction still open is not complete: it stays behind.
        self.durable_end = self.seen_end;
        Ok(())
    }

    /// Moves the slot to the end of the last transaction on disk.
    async fn advance(&mut self, conn: &mut PgConnection) -> anyhow::Result<()> {
        if self.durable_end <= self.confirmed {
            return Ok(());
        }
        sqlx::query("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)")
            .bind(&self.settings.source.slot)
            .bind(self.durable_end.to_string())
            .execute(&mut *conn)
            .await
            .context("cannot advance the replication slot")?;
        self.confirmed = self.durable_end;
        metrics::gauge!("syncdata_archiver_confirmed_lsn").set(self.confirmed.0 as f64);
        Ok(())
    }
}
