//! The publishing pipeline: archive lines in, one JetStream message per
//! record out, and the checkpoint. Invariant: the checkpoint only ever names
//! a position every earlier line of which is acknowledged by the server or
//! quarantined; after any failure publishing rewinds to the last such
//! position, so no record is ever skipped (re-sent ones are deduplicated by
//! the server through their `Nats-Msg-Id`).
//!
//! With sanitization rules, a record is published only sanitized. A table
//! whose record cannot be (a column without a rule, …) halts: its halt
//! position goes into the checkpoint with the main position (one atomic
//! write), its later records are skipped, and under newer rules it is
//! re-read from there up to the main cursor before the main cursor carries
//! it again. Other tables never wait for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, BoxFuture};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use syncdata_core::config::{Config, ConfigError};
use syncdata_core::record::{Op, Record};
use syncdata_core::retry::{self, RetryPolicy};
use syncdata_core::subject::{message_id, table_subject};
use syncdata_core::table::TableName;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{
    Checkpoint, CheckpointError, CheckpointState, CheckpointStore, HaltedTable,
};
use crate::quarantine::{self, Quarantine, QuarantineError};
use crate::sanitize::{Sanitizer, Verdict};
use crate::sink::{Sink, SinkError};
use crate::tail::{self, ArchiveError, Line, LineKind, Next, Tail};

/// What the publisher needs from the configuration, plus the timings the
/// configuration does not expose.
#[derive(Debug, Clone)]
pub struct Settings {
    pub archive_dir: PathBuf,
    /// Holds the checkpoint and the quarantine.
    pub state_dir: PathBuf,
    pub subject_prefix: String,
    /// Publishes awaiting their acknowledgement at once.
    pub max_in_flight: usize,
    /// Longer lines are quarantined (and never held in memory whole).
    pub max_record_bytes: usize,
    /// Directory rescan, the backstop for missed file events.
    pub rescan: Duration,
    /// The checkpoint is written at most this often while busy (and at once
    /// when caught up, and at shutdown).
    pub checkpoint_every: Duration,
    /// How long shutdown waits for outstanding acknowledgements.
    pub drain_timeout: Duration,
    /// Cap of the backoff between attempts after a failure.
    pub max_backoff: Duration,
    /// Records of one table per message at most (1: one message per
    /// record, no chunks); see `chunks`.
    pub chunk_records: usize,
    /// Bytes of one chunk at most (also capped by the server's max_payload).
    pub chunk_bytes: usize,
}

impl Settings {
    pub fn from_config(config: &Config) -> Result<Settings, ConfigError> {
        Ok(Settings {
            archive_dir: config.archive_dir()?.to_owned(),
            state_dir: config.producer_state_dir()?,
            subject_prefix: config.nats.subject_prefix.clone(),
            max_in_flight: config.producer.max_in_flight,
            max_record_bytes: config.producer.max_record_bytes,
            rescan: Duration::from_millis(config.producer.rescan_ms),
            checkpoint_every: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
            chunk_records: config.producer.chunk_records,
            chunk_bytes: config.producer.chunk_bytes,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl PublisherError {
    /// The one place that decides: retry after a backoff, or stop. Only a
    /// broken archive or checkpoint needs a person; a server or disk that is
    /// down is waited out.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            PublisherError::StateDir { .. }
                | PublisherError::Archive(ArchiveError::Truncated { .. })
                | PublisherError::Checkpoint(CheckpointError::Corrupt { .. })
        )
    }
}

/// A position with a shared file name (one per line in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    file: Arc<str>,
    offset: u64,
    line: u64,
}

impl Position {
    /// Archive order: files by name, then offset.
    fn before(&self, other: &Position) -> bool {
        (&*self.file, self.offset) < (&*other.file, other.offset)
    }

    fn start_of(file: Arc<str>) -> Self {
        Position {
            file,
            offset: 0,
            line: 0,
        }
    }

    fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            file: self.file.to_string(),
            offset: self.offset,
            line: self.line,
        }
    }
}

impl From<Checkpoint> for Position {
    fn from(c: Checkpoint) -> Self {
        Position {
            file: c.file.into(),
            offset: c.offset,
            line: c.line,
        }
    }
}

/// What settling a window entry means.
#[derive(Debug, Clone)]
enum Mark {
    /// The main cursor: everything before this position is settled.
    Main(Position),
    /// A halted table's replay: every record of `table` before `pos` is
    /// settled.
    Replay { table: TableName, pos: Position },
    /// Replay `id` of `table` read everything up to `until` and all of it
    /// settled: the halt can go (unless the table halted again meanwhile).
    ReplayDone {
        table: TableName,
        id: u64,
        until: Position,
    },
}

/// Lines taken from the archive and not yet settled, in archive order: each
/// resolves to its mark once the server acknowledged it (or at once, for a
/// line that needs no publish). FuturesOrdered yields them in order, so the
/// latest settled position is always contiguous.
type Window = FuturesOrdered<BoxFuture<'static, (Mark, Result<Option<Settled>, SinkError>)>>;

/// What a window entry that published something delivered, once every
/// message of it is acknowledged: counted into the producer's metrics when
/// it settles (`syncdata_producer_published_total` counts messages,
/// `syncdata_producer_records_total` records, in every mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settled {
    /// Messages acknowledged (a chunk or a record sent alone is one).
    messages: u64,
    /// Records they carry.
    records: u64,
    /// Messages the server already held (re-read after a restart).
    duplicates: u64,
}

impl Settled {
    /// One message holding one record.
    fn one(ack: crate::sink::Acked) -> Settled {
        Settled {
            messages: 1,
            records: 1,
            duplicates: u64::from(ack.duplicate),
        }
    }
}

/// Where a halted table stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Its records at or after `at` are held back (skipped by the main
    /// cursor, to be replayed).
    Halted,
    /// Being re-read from `at` (the main cursor waits meanwhile).
    Replaying { id: u64 },
    /// Re-read up to where the main cursor was; the main cursor publishes
    /// its records again; the halt goes once the replay's last record settles.
    Draining { id: u64 },
}

#[derive(Debug, Clone)]
struct TableHalt {
    /// Every record of the table before this is acknowledged (or lies after
    /// the settled main position, where the main cursor reads it again).
    at: Position,
    reason: String,
    /// The rules generation it halted under; retried under a newer one.
    generation: u64,
    phase: Phase,
}

/// A halted table being re-read from its halt position.
struct Replay {
    id: u64,
    table: TableName,
    cursor: Cursor,
    /// Where the main cursor stood when the replay began.
    until: Position,
}

/// How one record went.
enum Dispatch {
    /// Handed to the sink; the future resolves with its acknowledgement.
    Sent(crate::sink::AckFuture),
    /// Needs no publish (excluded, quarantined).
    Done,
    /// Added to its table's chunk of the current run (`chunks`): settled
    /// with the run.
    Chunked,
    /// Shutdown came first: not sent, not settled.
    Cancelled,
    /// The record's table halted on it (why).
    Halted(TableName, String),
}

/// The file being read.
struct Cursor {
    name: Arc<str>,
    tail: Tail,
}

/// Tails the archive and publishes every record to a [`Sink`].
pub struct Publisher<S> {
    sink: S,
    settings: Settings,
    checkpoints: CheckpointStore,
    quarantine: Quarantine,
    /// Every line before this is acknowledged or quarantined. None: nothing
    /// yet, start from the first file. Reading resumes here after a failure.
    acked: Option<Position>,
    /// What the checkpoint file holds.
    saved: Option<Position>,
    last_save: Instant,
    /// A failure said the stream is missing: create it before publishing.
    need_stream: bool,
    /// An acknowledgement arrived since the last failure (resets the backoff).
    progressed: bool,
    /// Sanitization rules; None publishes records as they are.
    sanitizer: Option<Sanitizer>,
    /// Tables halted by sanitization (persisted with the checkpoint).
    halts: BTreeMap<TableName, TableHalt>,
    /// The halts changed since the checkpoint was written.
    halts_dirty: bool,
    replay: Option<Replay>,
    next_replay_id: u64,
    /// The records read since the last flush, in chunks (`chunks`).
    run: chunks::Run,
}

impl<S: Sink> Publisher<S> {
    /// Creates the state directory if needed and loads the checkpoint and
    /// the quarantine.
    pub fn new(sink: S, settings: Settings) -> Result<Self, PublisherError> {
        syncdata_core::private_fs::create_dir_all(&settings.state_dir).map_err(|source| {
            PublisherError::StateDir {
                path: settings.state_dir.clone(),
                source,
            }
        })?;
        syncdata_core::private_fs::warn_if_exposed(&settings.state_dir, "state");
        // Files an older version left to the umask (the checkpoint, the
        // quarantine and its raw lines) become owner-only too.
        if let Ok(entries) = std::fs::read_dir(&settings.state_dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = syncdata_core::private_fs::restrict_file(&e.path());
                }
            }
        }
        let checkpoints = CheckpointStore::new(&settings.state_dir);
        let state = checkpoints.load_state()?;
        let halts = state
            .as_ref()
            .map(|s| {
                s.halted
                    .iter()
                    .map(|h| {
                        let halt = TableHalt {
                            at: Position {
                                file: h.file.as_str().into(),
                                offset: h.offset,
                                line: h.line,
                            },
                            reason: h.reason.clone(),
                            // Tried again under the rules loaded now.
                            generation: 0,
                            phase: Phase::Halted,
                        };
                        (TableName::new(h.schema.clone(), h.table.clone()), halt)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let acked = state.map(|s| Position::from(s.position));
        let quarantine = Quarantine::open(&settings.state_dir)?;
        Ok(Publisher {
            sink,
            settings,
            checkpoints,
            quarantine,
            saved: acked.clone(),
            acked,
            last_save: Instant::now(),
            need_stream: false,
            progressed: false,
            sanitizer: None,
            halts,
            halts_dirty: false,
            replay: None,
            next_replay_id: 1,
            run: chunks::Run::default(),
        })
    }

    /// Sanitizes every record with these rules before publishing it.
    pub fn with_sanitizer(mut self, sanitizer: Sanitizer) -> Self {
        self.sanitizer = Some(sanitizer);
        self
    }

    /// Rotation and cap of the quarantine file (see `Quarantine::set_limits`).
    pub fn with_quarantine_limits(mut self, max_bytes: u64, keep: u32) -> Self {
        self.quarantine.set_limits(max_bytes, keep);
        self
    }

    /// Creates the destination stream when it is missing.
    pub async fn ensure_stream(&self) -> Result<(), PublisherError> {
        Ok(self.sink.ensure_stream().await?)
    }

    /// The position everything before which is settled.
    pub fn position(&self) -> Option<Checkpoint> {
        self.acked.as_ref().map(Position::to_checkpoint)
    }

    /// Runs until `token` is cancelled, then waits (bounded) for outstanding
    /// acknowledgements and writes the checkpoint. Transient failures are
    /// retried for as long as it takes; only a broken archive or checkpoint
    /// ends it with an error.
    pub async fn run(mut self, token: CancellationToken) -> Result<(), PublisherError> {
        tracing::info!(
            archive = %self.settings.archive_dir.display(),
            state = %self.settings.state_dir.display(),
            checkpoint = ?self.position(),
            quarantined = self.quarantine.count(),
            rules = self.sanitizer.as_ref().map(|s| s.path().display().to_string()),
            halted_tables = self.halts.len(),
            "producer starting"
        );
        for (table, halt) in &self.halts {
            tracing::error!(
                table = %format!("{}.{}", table.schema, table.table),
                reason = %halt.reason,
                "table halted by sanitization; its records are held until its rules are complete"
            );
        }
        // Holding a sender keeps `recv` pending (not closed) without a watcher.
        let (wake_tx, mut wake_rx) = mpsc::channel(1);
        let _watcher = watch(&self.settings.archive_dir, wake_tx.clone());
        let mut rescan = tokio::time::interval(self.settings.rescan);
        rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut backoff = self.backoff();
        loop {
            let result = self.session(&token, &mut wake_rx, &mut rescan).await;
            // The window is gone: replays start over from their settled
            // progress in the next session.
            self.abandon_replays();
            let err = match result {
                Ok(()) => break,
                Err(err) => err,
            };
            if !err.is_transient() {
                if let Err(save) = self.save() {
                    tracing::warn!(error = %save, "cannot write the checkpoint");
                }
                return Err(err);
            }
            metrics::counter!("syncdata_producer_failures_total").increment(1);
            if matches!(err, PublisherError::Sink(SinkError::StreamMissing(_))) {
                self.need_stream = true;
            }
            if std::mem::take(&mut self.progressed) {
                backoff = self.backoff();
            }
            let delay = backoff.next().unwrap_or(self.settings.max_backoff);
            let at = self.position();
            tracing::warn!(
                error = %err,
                retry_in_ms = delay.as_millis() as u64,
                resume_file = at.as_ref().map(|c| c.file.as_str()),
                resume_line = at.as_ref().map(|c| c.line),
                "publishing interrupted; resuming from the last acknowledged line"
            );
            if let Err(save) = self.save() {
                tracing::warn!(error = %save, "cannot write the checkpoint");
            }
            if !retry::sleep(delay, &token).await {
                break;
            }
        }
        self.save()?;
        tracing::info!(checkpoint = ?self.position(), "producer stopped");
        Ok(())
    }

    /// Capped exponential backoff with jitter, never running out.
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        let max = self.settings.max_backoff;
        RetryPolicy::new(Duration::from_millis(100).min(max), max).delays()
    }

    /// Publishes from the last settled position until cancelled (Ok, after
    /// draining) or until something fails (Err; the window is dropped and
    /// the next session starts over from `acked`).
    async fn session(
        &mut self,
        token: &CancellationToken,
        wake: &mut mpsc::Receiver<()>,
        rescan: &mut Interval,
    ) -> Result<(), PublisherError> {
        if self.need_stream {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                ensured = self.sink.ensure_stream() => ensured?,
            }
            self.need_stream = false;
            tracing::info!("change stream ensured");
        }
        let max_payload = self.sink.max_payload();
        let every = self.settings.checkpoint_every;
        let mut window = Window::new();
        let mut cursor = None;
        let mut idle = false;
        loop {
            while let Some(Some(done)) = window.next().now_or_never() {
                self.settle(done)?;
            }
            if token.is_cancelled() {
                break;
            }
            if let Some(s) = &mut self.sanitizer {
                s.poll();
            }
            if self.replay.is_none() && self.start_replay(&cursor)? {
                idle = false;
            }
            let dirty = self.acked != self.saved || self.halts_dirty;
            if dirty && (self.last_save.elapsed() >= every || (idle && window.is_empty())) {
                self.save()?;
            }
            if !idle && window.len() < self.settings.max_in_flight {
                idle = !self
                    .step(&mut cursor, &mut window, max_payload, token)
                    .await?;
                continue;
            }
            let dirty = self.acked != self.saved || self.halts_dirty;
            let save_at = self.last_save + every;
            // Halted tables wait for a change of the rules file.
            let reload_at = self
                .sanitizer
                .as_ref()
                .filter(|_| !self.halts.is_empty())
                .map(Sanitizer::next_check);
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                Some(done) = window.next(), if !window.is_empty() => self.settle(done)?,
                Some(()) = wake.recv() => idle = false,
                _ = rescan.tick() => idle = false,
                _ = tokio::time::sleep_until(save_at), if dirty => {}
                _ = tokio::time::sleep_until(reload_at.unwrap_or(save_at)), if reload_at.is_some() => {}
            }
        }
        self.drain(&mut window).await;
        Ok(())
    }

    /// Shutdown: waits a bounded time for what is in flight, so the
    /// checkpoint covers it; what does not settle is simply sent again on the
    /// next start.
    async fn drain(&mut self, window: &mut Window) {
        if window.is_empty() {
            return;
        }
        tracing::info!(
            in_flight = window.len(),
            "waiting for outstanding acknowledgements"
        );
        let drained = tokio::time::timeout(self.settings.drain_timeout, async {
            while let Some(done) = window.next().await {
                self.settle(done)?;
            }
            Ok::<_, PublisherError>(())
        })
        .await;
        match drained {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "stopped waiting for acknowledgements"),
            Err(_) => tracing::warn!(
                unsettled = window.len(),
                "gave up waiting for acknowledgements; they will be re-sent on restart"
            ),
        }
    }

    /// Takes one line (or one step between files). Returns false when there
    /// is nothing to do until the archive changes.
    async fn step(
        &mut self,
        cursor: &mut Option<Cursor>,
        window: &mut Window,
        max_payload: usize,
        token: &CancellationToken,
    ) -> Result<bool, PublisherError> {
        // Reading is synchronous and may never wait: let other tasks run.
        tokio::task::consume_budget().await;
        if self.replay.is_some() {
            // The main cursor's run goes first.
            self.flush_run(window, token).await?;
            self.replay_step(window, max_payload, token).await?;
            return Ok(true);
        }
        let cur = match cursor {
            Some(cur) => cur,
            None => match self.open_at_acked()? {
                Some(cur) => cursor.insert(cur),
                None => return Ok(false),
            },
        };
        match cur.tail.next_line()? {
            Next::Line(line) => {
                let file = cur.name.clone();
                self.handle_line(&file, line, window, max_payload, token)
                    .await?;
                Ok(true)
            }
            Next::Pending => {
                // The file is finished once a later one exists; it is then
                // read to its end again, so nothing appended before the later
                // file appeared is missed.
                let names = tail::list(&self.settings.archive_dir)?;
                if tail::next_after(&names, Some(&cur.name)).is_some() {
                    cur.tail.finish();
                    Ok(true)
                } else {
                    // A read boundary: what was read goes out now.
                    self.flush_run(window, token).await?;
                    Ok(false)
                }
            }
            Next::End => {
                // A file's chunks end with it.
                self.flush_run(window, token).await?;
                if self.run.is_open() {
                    // Shutdown came first.
                    return Ok(false);
                }
                let names = tail::list(&self.settings.archive_dir)?;
                let Some(next) = tail::next_after(&names, Some(&cur.name)) else {
                    // The later file vanished again; wait for the next one.
                    return Ok(false);
                };
                // None: deleted since the listing; the next step lists again.
                if let Some(tail) = self.open(next, 0, 0)? {
                    let name: Arc<str> = next.into();
                    // Marks the previous file done once all of it settles.
                    self.complete(Position::start_of(name.clone()), window);
                    *cursor = Some(Cursor { name, tail });
                }
                Ok(true)
            }
        }
    }

    /// Opens `name` at a position; None when it does not exist.
    fn open(&self, name: &str, offset: u64, line: u64) -> Result<Option<Tail>, PublisherError> {
        let path = self.settings.archive_dir.join(name);
        match Tail::open(&path, offset, line, self.settings.max_record_bytes) {
            Ok(tail) => Ok(Some(tail)),
            Err(ArchiveError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Where reading (re)starts: the settled position, or the first file
    /// after it when its file is gone, or the first file of all.
    fn open_at_acked(&self) -> Result<Option<Cursor>, PublisherError> {
        if let Some(at) = &self.acked {
            if let Some(tail) = self.open(&at.file, at.offset, at.line)? {
                return Ok(Some(Cursor {
                    name: at.file.clone(),
                    tail,
                }));
            }
        }
        let names = tail::list(&self.settings.archive_dir)?;
        let mut after = self.acked.as_ref().map(|p| &*p.file);
        while let Some(name) = tail::next_after(&names, after) {
            if let Some(tail) = self.open(name, 0, 0)? {
                return Ok(Some(Cursor {
                    name: name.into(),
                    tail,
                }));
            }
            after = Some(name);
        }
        Ok(None)
    }

    /// Quarantines, skips or publishes one line.
    async fn handle_line(
        &mut self,
        file: &Arc<str>,
        line: Line,
        window: &mut Window,
        max_payload: usize,
        token: &CancellationToken,
    ) -> Result<(), PublisherError> {
        let pos = Position {
            file: file.clone(),
            offset: line.end,
            line: line.number,
        };
        let reject = |reason: &str, raw: &[u8]| {
            quarantine::Entry::new(file, line.start, line.number, reason, line.len(), raw)
        };
        match &line.kind {
            LineKind::TooLong { len, prefix } => {
                let reason = format!(
                    "line of {len} bytes is longer than producer.max_record_bytes ({})",
                    self.settings.max_record_bytes
                );
                self.quarantine.add(&reject(&reason, prefix))?;
            }
            LineKind::Text(_) if line.is_blank() => {}
            // Only sanitization reads a record's columns.
            LineKind::Text(bytes) => {
                match crate::schema::parse_line_forwardable(bytes, self.sanitizer.is_some()) {
                    Err(err) => {
                        self.quarantine.add(&reject(&err, bytes))?;
                    }
                    Ok(None) => {}
                    Ok(Some((record, forward))) => {
                        let start = Position {
                            file: file.clone(),
                            offset: line.start,
                            line: line.number - 1,
                        };
                        if self.is_held(&record, &start) {
                            metrics::counter!("syncdata_producer_held_total").increment(1);
                        } else {
                            match self
                                .send(
                                    record,
                                    forward,
                                    file,
                                    &line,
                                    bytes,
                                    max_payload,
                                    token,
                                    false,
                                )
                                .await?
                            {
                                Dispatch::Sent(ack) if self.chunking() => {
                                    // In archive order with the run's chunks.
                                    self.run.sent(ack, pos);
                                    return self.flush_if_full(window, token).await;
                                }
                                Dispatch::Chunked => {
                                    self.run.until(pos);
                                    return self.flush_if_full(window, token).await;
                                }
                                Dispatch::Sent(ack) => {
                                    let mark = Mark::Main(pos);
                                    window.push_back(
                                    async move { (mark, ack.await.map(|a| Some(Settled::one(a)))) }
                                        .boxed(),
                                );
                                    return Ok(());
                                }
                                // Not sent: the position is not advanced, so the
                                // line is read again on the next start.
                                Dispatch::Cancelled => return Ok(()),
                                Dispatch::Done => {}
                                Dispatch::Halted(table, reason) => self.halt(table, start, reason),
                            }
                        }
                    }
                }
            }
        }
        self.complete(pos, window);
        Ok(())
    }

    /// Sanitizes and publishes one record read at `line` of `file`.
    /// `forward`: the line `raw` may stand for the record
    /// (`Record::parse_forwardable`); it is then published as it is when
    /// sanitization leaves the record unchanged (no rules, or `keep` for
    /// every column of its table), instead of being serialized again.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        mut record: Record,
        forward: bool,
        file: &Arc<str>,
        line: &Line,
        raw: &[u8],
        max_payload: usize,
        token: &CancellationToken,
        replaying: bool,
    ) -> Result<Dispatch, PublisherError> {
        // A file without ordinals: the line stands in, and the file name
        // keeps the message id unique.
        let origin = record
            .seq
            .is_none()
            .then(|| format!("{file}:{}", line.number));
        record.seq.get_or_insert(line.number);
        if let Some(sanitizer) = &self.sanitizer {
            let verdict = if record.op == Op::Schema {
                crate::schema::sanitize(&mut record, sanitizer)
            } else {
                sanitizer.apply(&mut record)
            };
            match verdict {
                Ok(Verdict::Publish) => {}
                Ok(Verdict::Exclude) => {
                    metrics::counter!("syncdata_producer_excluded_total").increment(1);
                    return Ok(Dispatch::Done);
                }
                Err(halt) if halt.quarantine => {
                    // The record itself cannot pass: quarantined, the
                    // table goes on.
                    let entry = quarantine::Entry::new(
                        file,
                        line.start,
                        line.number,
                        &halt.reason,
                        line.len(),
                        raw,
                    );
                    if !self.quarantine.add(&entry)? && replaying {
                        tracing::error!(
                            file = %file,
                            line = line.number,
                            reason = %halt.reason,
                            "a held record cannot be published and lies before the quarantine's end; it is skipped"
                        );
                    }
                    return Ok(Dispatch::Done);
                }
                Err(halt) => {
                    let table = TableName::new(record.schema, record.table);
                    return Ok(Dispatch::Halted(table, halt.reason));
                }
            }
        }
        let unchanged = self
            .sanitizer
            .as_ref()
            .is_none_or(|s| s.keeps_every_column(&record.schema, &record.table));
        // The line itself is only copied into its chunk (or, alone, into
        // a message of its own).
        let json: std::borrow::Cow<'_, [u8]> = if forward && unchanged && record.op != Op::Schema {
            std::borrow::Cow::Borrowed(raw)
        } else {
            std::borrow::Cow::Owned(record.to_json())
        };
        let mut payload = if !replaying && self.chunking() {
            match self
                .add_to_chunk(&record, json, file, line, max_payload, token)
                .await?
            {
                chunks::Added::Chunked => return Ok(Dispatch::Chunked),
                chunks::Added::Cancelled => return Ok(Dispatch::Cancelled),
                chunks::Added::Alone(p) => p,
            }
        } else {
            json.into_owned()
        };
        // Only a record sent alone needs its own id (a chunk has the
        // chunk's); sanitization changes neither its table nor its version.
        let id = message_id(
            &record.schema,
            &record.table,
            record.version(line.number),
            origin.as_deref(),
        );
        let subject = table_subject(&self.settings.subject_prefix, &record.schema, &record.table);
        if payload.len() > syncdata_core::large::inline_limit(max_payload) {
            // Too large for a message: into the object store, a pointer in
            // its place (syncdata_core::large).
            let put = tokio::select! {
                _ = token.cancelled() => return Ok(Dispatch::Cancelled),
                put = self.sink.put_large(&payload) => put?,
            };
            if let Some(pointer) = put {
                payload = pointer.to_payload(
                    &record.schema,
                    &record.table,
                    &record.lsn.to_string(),
                    record.seq,
                );
            }
        }
        let size = payload.len();
        if record.op == Op::Schema && size <= max_payload {
            // The look-up copy (`<subject>.schema`) first: acknowledged
            // before the record itself, so whoever sees the record in the
            // table's subject can also look its definition up.
            let copy = tokio::select! {
                _ = token.cancelled() => return Ok(Dispatch::Cancelled),
                sent = self.sink.publish(
                    format!("{subject}.{}", syncdata_core::tabledef::SCHEMA_SUBJECT_SUFFIX),
                    format!("{id}:schema"),
                    payload.clone().into(),
                ) => sent?,
            };
            tokio::select! {
                _ = token.cancelled() => return Ok(Dispatch::Cancelled),
                acked = copy => { acked?; }
            }
        }
        let sent = if size > max_payload {
            Err(SinkError::TooLarge {
                size,
                max: max_payload,
            })
        } else {
            tokio::select! {
                _ = token.cancelled() => return Ok(Dispatch::Cancelled),
                sent = self.sink.publish(subject, id, payload.into()) => sent,
            }
        };
        match sent {
            Ok(ack) => Ok(Dispatch::Sent(ack)),
            Err(SinkError::TooLarge { size, max }) => {
                let reason = format!(
                    "record of {size} bytes is larger than the server's max_payload ({max})"
                );
                let entry =
                    quarantine::Entry::new(file, line.start, line.number, &reason, line.len(), raw);
                if !self.quarantine.add(&entry)? && replaying {
                    // The quarantine only appends in archive order.
                    tracing::error!(
                        file = %file,
                        line = line.number,
                        reason = %reason,
                        "a held record cannot be published and lies before the quarantine's end; it is skipped"
                    );
                }
                Ok(Dispatch::Done)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// The rules generation in force (1 without rules).
    fn generation(&self) -> u64 {
        self.sanitizer.as_ref().map_or(1, Sanitizer::generation)
    }

    /// Whether the record belongs to a halted table at or after its halt
    /// position: it waits for the table's replay.
    fn is_held(&self, record: &Record, start: &Position) -> bool {
        if self.halts.is_empty() {
            return false;
        }
        let table = TableName::new(record.schema.clone(), record.table.clone());
        self.halts
            .get(&table)
            .is_some_and(|h| h.phase == Phase::Halted && !start.before(&h.at))
    }

    /// Halts `table` at the record starting at `start` (or keeps it halted).
    fn halt(&mut self, table: TableName, start: Position, reason: String) {
        let generation = self.generation();
        let name = format!("{}.{}", table.schema, table.table);
        let log = |at: &Position, reason: &str| {
            tracing::error!(
                table = %name,
                file = %at.file,
                line = at.line + 1,
                reason = %reason,
                "table halted by sanitization: its records are held (not published, not dropped) until its rules are complete; other tables go on"
            );
        };
        match self.halts.get_mut(&table) {
            None => {
                log(&start, &reason);
                self.halts.insert(
                    table,
                    TableHalt {
                        at: start,
                        reason,
                        generation,
                        phase: Phase::Halted,
                    },
                );
            }
            Some(h) => {
                // A record before the halt position failed (the rules
                // changed): hold from there. Otherwise `at` is the settled
                // progress of a replay and stays.
                let moved = h.phase == Phase::Halted && start.before(&h.at);
                if moved {
                    h.at = start;
                }
                if moved || h.phase != Phase::Halted || h.reason != reason {
                    log(&h.at, &reason);
                }
                h.phase = Phase::Halted;
                h.generation = generation;
                h.reason = reason;
            }
        }
        self.halts_dirty = true;
        metrics::gauge!("syncdata_producer_halted_tables").set(self.halts.len() as f64);
    }

    /// Under newer rules, re-reads a halted table's held records, from its
    /// halt position to where the main cursor stands (the main cursor waits
    /// meanwhile). Returns whether anything changed.
    fn start_replay(&mut self, cursor: &Option<Cursor>) -> Result<bool, PublisherError> {
        let generation = self.generation();
        let Some(table) = self
            .halts
            .iter()
            .find(|(_, h)| h.phase == Phase::Halted && h.generation < generation)
            .map(|(t, _)| t.clone())
        else {
            return Ok(false);
        };
        let name = format!("{}.{}", table.schema, table.table);
        let at = self.halts[&table].at.clone();
        let until = match cursor {
            Some(c) => Some(Position {
                file: c.name.clone(),
                offset: c.tail.offset(),
                line: c.tail.lines(),
            }),
            None => self.acked.clone(),
        };
        let needed = until.as_ref().is_some_and(|u| at.before(u));
        if needed && !self.settings.archive_dir.join(&*at.file).exists() {
            // Never a skip: the held records were in that file.
            tracing::error!(
                table = %name,
                file = %at.file,
                line = at.line + 1,
                "archive file holding the halted table's held records is missing: \
                 the table stays halted (nothing of it is published past this point); \
                 restore the file into the archive directory and restart the producer. \
                 Delete archive files only before `syncdata-producer status`'s safe_to_delete_before"
            );
            metrics::counter!("syncdata_producer_halt_file_missing_total").increment(1);
            if let Some(h) = self.halts.get_mut(&table) {
                h.generation = generation;
            }
            return Ok(false);
        }
        let opened = match until.filter(|u| at.before(u)) {
            Some(until) => self.open_from(&at)?.map(|c| (c, until)),
            None => None,
        };
        let Some((replay_cursor, until)) = opened else {
            // The main cursor has not passed the halt position (or nothing
            // is left there): it reads those records itself.
            self.halts.remove(&table);
            self.halts_dirty = true;
            metrics::gauge!("syncdata_producer_halted_tables").set(self.halts.len() as f64);
            tracing::info!(table = %name, "halted table resumed");
            return Ok(true);
        };
        let id = self.next_replay_id;
        self.next_replay_id += 1;
        if let Some(h) = self.halts.get_mut(&table) {
            h.phase = Phase::Replaying { id };
        }
        tracing::info!(
            table = %name,
            from_file = %at.file,
            from_line = at.line + 1,
            until_file = %until.file,
            until_line = until.line,
            "rules changed: re-reading the halted table's held records"
        );
        self.replay = Some(Replay {
            id,
            table,
            cursor: replay_cursor,
            until,
        });
        Ok(true)
    }

    /// Opens the archive at `at`, or at the first file after it when its
    /// file is gone.
    fn open_from(&self, at: &Position) -> Result<Option<Cursor>, PublisherError> {
        if let Some(tail) = self.open(&at.file, at.offset, at.line)? {
            return Ok(Some(Cursor {
                name: at.file.clone(),
                tail,
            }));
        }
        let names = tail::list(&self.settings.archive_dir)?;
        let mut after = Some(&*at.file);
        while let Some(name) = tail::next_after(&names, after) {
            if let Some(tail) = self.open(name, 0, 0)? {
                return Ok(Some(Cursor {
                    name: name.into(),
                    tail,
                }));
            }
            after = Some(name);
        }
        Ok(None)
    }

    /// One line of the replay: only the replayed table's records are
    /// published; every line advances the table's settled progress.
    async fn replay_step(
        &mut self,
        window: &mut Window,
        max_payload: usize,
        token: &CancellationToken,
    ) -> Result<(), PublisherError> {
        let r = self.replay.as_mut().expect("called during a replay");
        let here = Position {
            file: r.cursor.name.clone(),
            offset: r.cursor.tail.offset(),
            line: r.cursor.tail.lines(),
        };
        if !here.before(&r.until) {
            self.finish_replay(window);
            return Ok(());
        }
        let line = match r.cursor.tail.next_line()? {
            Next::Line(line) => line,
            Next::Pending => {
                // Files before the main cursor's are finished.
                r.cursor.tail.finish();
                return Ok(());
            }
            Next::End => {
                let names = tail::list(&self.settings.archive_dir)?;
                let mut after = Some(r.cursor.name.clone());
                loop {
                    let next = tail::next_after(&names, after.as_deref())
                        .filter(|n| *n <= &*r.until.file)
                        .map(Arc::<str>::from);
                    let Some(next) = next else {
                        // Nothing left before the main cursor.
                        self.finish_replay(window);
                        return Ok(());
                    };
                    let path = self.settings.archive_dir.join(&*next);
                    match Tail::open(&path, 0, 0, self.settings.max_record_bytes) {
                        Ok(tail) => {
                            let r = self.replay.as_mut().expect("called during a replay");
                            r.cursor = Cursor { name: next, tail };
                            return Ok(());
                        }
                        Err(ArchiveError::Read { source, .. })
                            if source.kind() == std::io::ErrorKind::NotFound =>
                        {
                            after = Some(next);
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
            }
        };
        let file = r.cursor.name.clone();
        let table = r.table.clone();
        let pos = Position {
            file: file.clone(),
            offset: line.end,
            line: line.number,
        };
        let start = Position {
            file: file.clone(),
            offset: line.start,
            line: line.number - 1,
        };
        let mut ack = None;
        if let LineKind::Text(bytes) = &line.kind {
            let record = crate::schema::parse_line(bytes)
                .ok()
                .flatten()
                .filter(|rec| rec.schema == table.schema && rec.table == table.table);
            if let Some(record) = record {
                match self
                    .send(record, false, &file, &line, bytes, max_payload, token, true)
                    .await?
                {
                    Dispatch::Sent(a) => ack = Some(a),
                    Dispatch::Done | Dispatch::Chunked => {}
                    Dispatch::Cancelled => return Ok(()),
                    Dispatch::Halted(_, reason) => {
                        self.replay = None;
                        self.halt(table, start, reason);
                        return Ok(());
                    }
                }
            }
        }
        let mark = Mark::Replay { table, pos };
        match ack {
            Some(a) => window
                .push_back(async move { (mark, a.await.map(|a| Some(Settled::one(a)))) }.boxed()),
            None => self.mark(mark, window),
        }
        Ok(())
    }

    /// The replay reached the main cursor: the main cursor takes the table
    /// over; the halt goes once everything replayed has settled.
    fn finish_replay(&mut self, window: &mut Window) {
        let Some(r) = self.replay.take() else { return };
        if let Some(h) = self.halts.get_mut(&r.table) {
            if h.phase == (Phase::Replaying { id: r.id }) {
                h.phase = Phase::Draining { id: r.id };
            }
        }
        tracing::info!(
            table = %format!("{}.{}", r.table.schema, r.table.table),
            "held records re-read; the table is published again"
        );
        self.mark(
            Mark::ReplayDone {
                table: r.table,
                id: r.id,
                until: r.until,
            },
            window,
        );
    }

    /// After a failure the window is gone: halted tables go back to waiting
    /// at their settled progress and are replayed again in the next session.
    fn abandon_replays(&mut self) {
        self.replay = None;
        self.run = chunks::Run::default();
        for h in self.halts.values_mut() {
            h.phase = Phase::Halted;
        }
    }

    /// A position reached without a publish: settled once all before it are.
    fn complete(&mut self, pos: Position, window: &mut Window) {
        if self.run.is_open() {
            // Settled with the run's records before it.
            self.run.until(pos);
            return;
        }
        self.mark(Mark::Main(pos), window);
    }

    fn mark(&mut self, mark: Mark, window: &mut Window) {
        if window.is_empty() {
            self.apply_mark(mark);
        } else {
            window.push_back(future::ready((mark, Ok(None))).boxed());
        }
    }

    fn settle(
        &mut self,
        (mark, result): (Mark, Result<Option<Settled>, SinkError>),
    ) -> Result<(), PublisherError> {
        if let Some(done) = result? {
            metrics::counter!("syncdata_producer_published_total").increment(done.messages);
            metrics::counter!("syncdata_producer_records_total").increment(done.records);
            if done.duplicates > 0 {
                metrics::counter!("syncdata_producer_duplicates_total").increment(done.duplicates);
            }
            self.progressed = true;
        }
        self.apply_mark(mark);
        Ok(())
    }

    fn apply_mark(&mut self, mark: Mark) {
        match mark {
            Mark::Main(pos) => self.acked = Some(pos),
            Mark::Replay { table, pos } => {
                if let Some(h) = self.halts.get_mut(&table) {
                    if h.at.before(&pos) {
                        h.at = pos;
                        self.halts_dirty = true;
                    }
                }
            }
            Mark::ReplayDone { table, id, until } => {
                let Some(h) = self.halts.get_mut(&table) else {
                    return;
                };
                if h.phase == (Phase::Draining { id }) {
                    self.halts.remove(&table);
                    metrics::gauge!("syncdata_producer_halted_tables").set(self.halts.len() as f64);
                    tracing::info!(
                        table = %format!("{}.{}", table.schema, table.table),
                        "halted table resumed: every held record is published"
                    );
                } else if h.at.before(&until) {
                    h.at = until;
                }
                self.halts_dirty = true;
            }
        }
    }

    /// Writes the settled position (and the halted tables) when they moved.
    fn save(&mut self) -> Result<(), PublisherError> {
        let Some(at) = &self.acked else {
            return Ok(());
        };
        if self.saved.as_ref() == Some(at) && !self.halts_dirty {
            return Ok(());
        }
        let state = CheckpointState {
            position: at.to_checkpoint(),
            halted: self
                .halts
                .iter()
                .map(|(t, h)| HaltedTable {
                    schema: t.schema.clone(),
                    table: t.table.clone(),
                    file: h.at.file.to_string(),
                    offset: h.at.offset,
                    line: h.at.line,
                    reason: h.reason.clone(),
                })
                .collect(),
        };
        self.checkpoints.save_state(&state)?;
        metrics::gauge!("syncdata_producer_checkpoint_offset").set(at.offset as f64);
        self.saved = Some(at.clone());
        self.halts_dirty = false;
        self.last_save = Instant::now();
        Ok(())
    }
}

/// Watches the archive directory, turning relevant events into wake-ups.
/// Without a watcher (inotify limits, odd file systems) the rescan alone
/// keeps the producer going, only slower to react.
fn watch(dir: &Path, wake: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if event.as_ref().map_or(true, wakes) {
            // Full means a wake-up is already pending.
            let _ = wake.try_send(());
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch the archive directory; relying on the periodic rescan");
            None
        }
    }
}

/// Whether an event may mean new data: not our own reads (opening a file is
/// an event too) and not the state directory or temporary files.
fn wakes(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    if let EventKind::Access(kind) = event.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return false;
        }
    }
    event.paths.is_empty()
        || event.paths.iter().any(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| !tail::is_ignored_name(n))
        })
}

mod chunks;

#[cfg(test)]
mod sanitize_tests;
#[cfg(test)]
mod tests;
