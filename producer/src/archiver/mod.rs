//! `syncdata-producer archive`: reads the wal2json slot and writes segment
//! files into the archive directory, which `syncdata-producer run` tails.
//!
//! Invariants:
//! - every record carries its transaction's commit LSN in `lsn` and its
//!   ordinal in the transaction in `seq`; versions only grow, in file order;
//! - a segment is written under a temporary name, fsynced, renamed, and the
//!   directory fsynced; only then may the slot move past the transactions it
//!   holds (a standby status update confirming the end of the last complete
//!   transaction on disk). The slot's confirmed position never passes what
//!   is on disk, so a crash loses nothing: the slot sends again what was not
//!   confirmed;
//! - what comes again and is already on disk (version <= the last record of
//!   the newest segment) is skipped, so a crash duplicates nothing either.
//!
//! Reading uses the streaming replication protocol (`replication.rs`): one
//! `START_REPLICATION SLOT … LOGICAL` session sends every change as it is
//! decoded, and the archiver answers with standby status updates whose
//! flush position is the end of the last complete transaction on disk, sent
//! only after the segment holding it was fsynced and renamed. The server
//! spills large transactions to disk (`logical_decoding_work_mem`); a huge
//! transaction is written across several segments as it streams, and the
//! slot moves past it once its last segment is on disk. Keepalives let the
//! slot move past WAL that holds no change for the archived tables.

pub mod decode;
pub mod pgoutput;
pub mod replication;
pub mod segment;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
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
    /// pgoutput: the relations described on this stream.
    relations: pgoutput::Relations,
    /// pgoutput: relations of the publication that are not archived.
    unwanted: std::collections::HashSet<u32>,
    written: u64,
    segments: u64,
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
        relations: pgoutput::Relations::default(),
        unwanted: std::collections::HashSet::new(),
        written: 0,
        segments: 0,
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
    let transient_code = |c: &str| {
        c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c == "55006"
    };
    err.chain().any(|cause| {
        if cause.downcast_ref::<replication::Lost>().is_some() {
            return true;
        }
        if let Some(e) = cause.downcast_ref::<replication::ServerError>() {
            return transient_code(&e.code);
        }
        match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut) => true,
            Some(sqlx::Error::Database(db)) => db.code().is_some_and(|c| transient_code(&c)),
            _ => false,
        }
    })
}

/// The archiver's gauges and counters, described (HELP text) and present
/// from start.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        "syncdata_archiver_slot_lag_bytes",
        Unit::Bytes,
        "WAL between the source's current position and the slot's confirmed_flush_lsn: what is not yet archived"
    );
    describe_gauge!(
        "syncdata_archiver_wal_retained_bytes",
        Unit::Bytes,
        "WAL the source keeps for the slot (current position minus the slot's restart_lsn)"
    );
    describe_gauge!(
        "syncdata_archiver_records_per_second",
        "Change records written to segments per second, over the last second"
    );
    describe_gauge!(
        "syncdata_archiver_confirmed_lsn",
        "The slot's confirmed position as sent by the archiver (LSN as a number)"
    );
    describe_counter!(
        "syncdata_archiver_records_total",
        "Change records written to segments that are on disk"
    );
    describe_counter!(
        "syncdata_archiver_segments_total",
        "Segment files written (fsynced and renamed)"
    );
    describe_counter!(
        "syncdata_archiver_keyless_changes_total",
        "Changes not archived because they do not say which row they are (no primary key or replica identity NOTHING)"
    );
    for gauge in [
        "syncdata_archiver_slot_lag_bytes",
        "syncdata_archiver_wal_retained_bytes",
        "syncdata_archiver_records_per_second",
        "syncdata_archiver_confirmed_lsn",
    ] {
        metrics::gauge!(gauge).set(0.0);
    }
    for counter in [
        "syncdata_archiver_records_total",
        "syncdata_archiver_segments_total",
        "syncdata_archiver_keyless_changes_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
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
        let mut info =
            source::require_slot(&mut conn, &settings.source.slot, &settings.source.plugin).await?;
        // `auto`: read the slot with the plugin it was created with.
        if settings.source.plugin == source::AUTO {
            tracing::info!(
                slot = %settings.source.slot,
                plugin = %info.plugin,
                "source.plugin = auto: using the slot's plugin"
            );
            self.settings.source.plugin = info.plugin.clone();
        }
        let settings = &self.settings;
        let slot = &settings.source.slot;
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
        if self.pgoutput() {
            let publication = &settings.source.publication;
            source::require_publication(&mut conn, publication, &settings.tables).await?;
            self.options = vec![
                "proto_version".to_owned(),
                "1".to_owned(),
                "publication_names".to_owned(),
                publication.clone(),
            ];
        } else {
            let (options, warning) =
                source::accepted_plugin_options(&mut conn, slot, &settings.tables).await?;
            if let Some(warning) = warning {
                tracing::warn!("{warning}");
            }
            self.options = options;
            source::probe_slot(&mut conn, slot, &settings.source.plugin, &self.options).await?;
        }
        // Relation ids are per stream: the new one describes them again.
        self.relations = pgoutput::Relations::default();
        self.unwanted.clear();
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
        // Each session re-reads from the slot's confirmed position; an
        // unfinished transaction of a lost session comes again whole.
        self.tx = None;
        let mut stream = replication::start(
            &settings.source.url,
            "syncdata-archiver",
            slot,
            Lsn(0),
            &self.options,
        )
        .await?;
        self.stream_loop(&mut stream, &mut conn, token).await?;
        // Cancelled: what is open goes to disk, the slot is confirmed up to
        // it, and the stream ends cleanly so the server has processed that
        // confirmation before the session goes.
        self.close_segment()?;
        self.confirm(&mut stream, false).await?;
        stream.finish().await?;
        self.refresh_slot_metrics(&mut conn).await;
        let _ = sqlx::Connection::close(conn).await;
        Ok(())
    }

    /// Reads the stream until cancelled or until something fails.
    async fn stream_loop(
        &mut self,
        stream: &mut replication::Stream,
        conn: &mut PgConnection,
        token: &CancellationToken,
    ) -> anyhow::Result<()> {
        // A status update at least this often, so wal_sender_timeout never
        // ends a quiet session.
        let status_every = Duration::from_secs(10);
        let metrics_every = Duration::from_secs(1);
        let mut next_status = Instant::now() + status_every;
        let mut next_metrics = Instant::now();
        let mut rate_at = Instant::now();
        let mut rate_written = self.written;
        loop {
            let now = Instant::now();
            if now >= next_metrics {
                self.refresh_slot_metrics(conn).await;
                let secs = rate_at.elapsed().as_secs_f64();
                if secs > 0.0 {
                    metrics::gauge!("syncdata_archiver_records_per_second")
                        .set((self.written - rate_written) as f64 / secs);
                }
                rate_at = Instant::now();
                rate_written = self.written;
                next_metrics = Instant::now() + metrics_every;
            }
            if self
                .segment
                .as_ref()
                .is_some_and(|s| s.opened().elapsed() >= self.settings.segment_max_age)
            {
                self.close_segment()?;
            }
            if self.durable_end > self.confirmed || Instant::now() >= next_status {
                self.confirm(stream, false).await?;
                next_status = Instant::now() + status_every;
            }
            let mut wake = next_status.min(next_metrics);
            if let Some(s) = &self.segment {
                wake = wake.min(Instant::from_std(
                    s.opened() + self.settings.segment_max_age,
                ));
            }
            let message = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(wake) => continue,
                m = stream.next() => m.context("reading the replication slot")?,
            };
            match message {
                replication::Message::Data { data, .. } if self.pgoutput() => {
                    self.handle_pgoutput(&data, conn).await?;
                }
                replication::Message::Data { data, .. } => {
                    let row = std::str::from_utf8(&data)
                        .context("the output plugin sent a row that is not UTF-8")?;
                    self.handle(row)?;
                }
                replication::Message::Keepalive { wal_end, reply } => {
                    // Everything sent before the keepalive was handled: with
                    // no transaction open, no change ends before `wal_end`
                    // that is not on disk or in the open segment.
                    if self.tx.is_none() {
                        self.seen_end = self.seen_end.max(wal_end);
                        if self.segment.is_none() {
                            self.durable_end = self.seen_end;
                        }
                    }
                    if reply {
                        self.confirm(stream, true).await?;
                        next_status = Instant::now() + status_every;
                    }
                }
            }
        }
    }

    /// Standby status update: the slot may move to the end of the last
    /// transaction on disk (never further).
    async fn confirm(
        &mut self,
        stream: &mut replication::Stream,
        reply: bool,
    ) -> anyhow::Result<()> {
        let flushed = self.durable_end.max(self.confirmed);
        stream.confirm(flushed, reply).await?;
        if flushed > self.confirmed {
            self.confirmed = flushed;
            metrics::gauge!("syncdata_archiver_confirmed_lsn").set(self.confirmed.0 as f64);
        }
        Ok(())
    }

    /// Slot lag and WAL retained, from the source's own view of the slot.
    async fn refresh_slot_metrics(&mut self, conn: &mut PgConnection) {
        let row: Result<(Option<i64>, Option<i64>), sqlx::Error> = sqlx::query_as(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 \
               FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&self.settings.source.slot)
        .fetch_one(&mut *conn)
        .await;
        match row {
            Ok((lag, retained)) => {
                metrics::gauge!("syncdata_archiver_slot_lag_bytes")
                    .set(lag.unwrap_or(0).max(0) as f64);
                metrics::gauge!("syncdata_archiver_wal_retained_bytes")
                    .set(retained.unwrap_or(0).max(0) as f64);
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the slot's position for metrics"),
        }
    }

    fn pgoutput(&self) -> bool {
        self.settings.source.plugin == source::PGOUTPUT
    }

    /// One pgoutput message: relations are described from the catalog
    /// (column types, primary key); changes become the events wal2json's
    /// rows would.
    async fn handle_pgoutput(
        &mut self,
        data: &[u8],
        conn: &mut PgConnection,
    ) -> anyhow::Result<()> {
        match pgoutput::parse(data)? {
            pgoutput::Message::Begin { commit, ts } => self.handle_event(Event::Begin {
                commit,
                end: Lsn(0),
                ts: Some(ts),
            }),
            pgoutput::Message::Commit { commit, end } => {
                self.handle_event(Event::Commit { commit, end })
            }
            pgoutput::Message::Relation {
                id,
                schema,
                table,
                columns,
            } => {
                let name = TableName::new(schema.clone(), table.clone());
                if !self.settings.tables.is_empty() && !self.settings.tables.contains(&name) {
                    self.unwanted.insert(id);
                    return Ok(());
                }
                self.unwanted.remove(&id);
                let def = syncdata_core::catalog::table(&mut *conn, &name)
                    .await
                    .with_context(|| format!("describing {name} for pgoutput"))?;
                let def = def.with_context(|| format!("table {name} is gone from the source"))?;
                let columns = columns
                    .into_iter()
                    .map(|c| {
                        let known = def.column(&c);
                        pgoutput::Column {
                            category: known.map_or('X', |k| k.category),
                            is_bytea: known.is_some_and(|k| k.is_bytea),
                            name: c,
                        }
                    })
                    .collect();
                self.relations.insert(
                    id,
                    pgoutput::Relation {
                        schema,
                        table,
                        columns,
                        key: def.primary_key,
                    },
                );
                Ok(())
            }
            pgoutput::Message::Change { rel, .. } if self.unwanted.contains(&rel) => Ok(()),
            pgoutput::Message::Change { rel, op, old, new } => {
                let event = self.relations.change(rel, op, old, new)?;
                self.handle_event(event)
            }
            pgoutput::Message::Truncate { rels } => {
                let wanted: Vec<u32> = rels
                    .into_iter()
                    .filter(|r| !self.unwanted.contains(r))
                    .collect();
                for event in self.relations.truncate(&wanted)? {
                    self.handle_event(event)?;
                }
                Ok(())
            }
            pgoutput::Message::Other => Ok(()),
        }
    }

    fn handle(&mut self, row: &str) -> anyhow::Result<()> {
        self.handle_event(decode::decode(row)?)
    }

    fn handle_event(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
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
}
