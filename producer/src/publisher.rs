//! The publishing pipeline: archive lines in, one JetStream message per
//! record out, and the checkpoint. Invariant: the checkpoint only ever names
//! a position every earlier line of which is acknowledged by the server or
//! quarantined; after any failure publishing rewinds to the last such
//! position, so no record is ever skipped (re-sent ones are deduplicated by
//! the server through their `Nats-Msg-Id`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::{self, BoxFuture};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use syncdata_core::config::{Config, ConfigError};
use syncdata_core::record::Record;
use syncdata_core::subject::{message_id, table_subject};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::archive::{self, ArchiveError, Line, LineKind, Next, Tail};
use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::quarantine::{self, Quarantine, QuarantineError};
use crate::sink::{Acked, Sink, SinkError};

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

/// Lines taken from the archive and not yet settled, in archive order: each
/// resolves to the position just after its line once the server acknowledged
/// it (or at once, for a line that needs no publish). FuturesOrdered yields
/// them in order, so the latest settled position is always contiguous.
type Window = FuturesOrdered<BoxFuture<'static, (Position, Result<Option<Acked>, SinkError>)>>;

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
}

impl<S: Sink> Publisher<S> {
    /// Creates the state directory if needed and loads the checkpoint and
    /// the quarantine.
    pub fn new(sink: S, settings: Settings) -> Result<Self, PublisherError> {
        std::fs::create_dir_all(&settings.state_dir).map_err(|source| {
            PublisherError::StateDir {
                path: settings.state_dir.clone(),
                source,
            }
        })?;
        let checkpoints = CheckpointStore::new(&settings.state_dir);
        let acked = checkpoints.load()?.map(Position::from);
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
        })
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
            "producer starting"
        );
        // Holding a sender keeps `recv` pending (not closed) without a watcher.
        let (wake_tx, mut wake_rx) = mpsc::channel(1);
        let _watcher = watch(&self.settings.archive_dir, wake_tx.clone());
        let mut rescan = tokio::time::interval(self.settings.rescan);
        rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut backoff = self.backoff();
        loop {
            let err = match self.session(&token, &mut wake_rx, &mut rescan).await {
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
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.save()?;
        tracing::info!(checkpoint = ?self.position(), "producer stopped");
        Ok(())
    }

    /// Capped exponential backoff with jitter, never running out.
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        let max = self.settings.max_backoff;
        ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100).min(max))
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build()
            .map(move |d| d.min(max))
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
            let dirty = self.acked != self.saved;
            if dirty && (self.last_save.elapsed() >= every || (idle && window.is_empty())) {
                self.save()?;
            }
            if !idle && window.len() < self.settings.max_in_flight {
                idle = !self
                    .step(&mut cursor, &mut window, max_payload, token)
                    .await?;
                continue;
            }
            let dirty = self.acked != self.saved;
            let save_at = self.last_save + every;
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                Some(done) = window.next(), if !window.is_empty() => self.settle(done)?,
                Some(()) = wake.recv() => idle = false,
                _ = rescan.tick() => idle = false,
                _ = tokio::time::sleep_until(save_at), if dirty => {}
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
                let names = archive::list(&self.settings.archive_dir)?;
                if archive::next_after(&names, Some(&cur.name)).is_some() {
                    cur.tail.finish();
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            Next::End => {
                let names = archive::list(&self.settings.archive_dir)?;
                let Some(next) = archive::next_after(&names, Some(&cur.name)) else {
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
        let names = archive::list(&self.settings.archive_dir)?;
        let mut after = self.acked.as_ref().map(|p| &*p.file);
        while let Some(name) = archive::next_after(&names, after) {
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
            LineKind::Text(bytes) => match Record::parse(bytes) {
                Err(err) => {
                    self.quarantine.add(&reject(&err.to_string(), bytes))?;
                }
                Ok(mut record) => {
                    // A file without ordinals: the line stands in, and the
                    // file name keeps the message id unique.
                    let origin = record
                        .seq
                        .is_none()
                        .then(|| format!("{file}:{}", line.number));
                    record.seq.get_or_insert(line.number);
                    let id = message_id(
                        &record.schema,
                        &record.table,
                        record.version(line.number),
                        origin.as_deref(),
                    );
                    let subject =
                        table_subject(&self.settings.subject_prefix, &record.schema, &record.table);
                    let payload = record.to_json();
                    let size = payload.len();
                    let sent = if size > max_payload {
                        Err(SinkError::TooLarge {
                            size,
                            max: max_payload,
                        })
                    } else {
                        tokio::select! {
                            // Not sent: the position is not advanced, so the
                            // line is read again on the next start.
                            _ = token.cancelled() => return Ok(()),
                            sent = self.sink.publish(subject, id, payload.into()) => sent,
                        }
                    };
                    match sent {
                        Ok(ack) => {
                            window.push_back(async move { (pos, ack.await.map(Some)) }.boxed());
                            return Ok(());
                        }
                        Err(SinkError::TooLarge { size, max }) => {
                            let reason = format!(
                                "record of {size} bytes is larger than the server's max_payload ({max})"
                            );
                            self.quarantine.add(&reject(&reason, bytes))?;
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
            },
        }
        self.complete(pos, window);
        Ok(())
    }

    /// A position reached without a publish: settled once all before it are.
    fn complete(&mut self, pos: Position, window: &mut Window) {
        if window.is_empty() {
            self.acked = Some(pos);
        } else {
            window.push_back(future::ready((pos, Ok(None))).boxed());
        }
    }

    fn settle(
        &mut self,
        (pos, result): (Position, Result<Option<Acked>, SinkError>),
    ) -> Result<(), PublisherError> {
        if let Some(ack) = result? {
            metrics::counter!("syncdata_producer_published_total").increment(1);
            if ack.duplicate {
                metrics::counter!("syncdata_producer_duplicates_total").increment(1);
            }
            self.progressed = true;
        }
        self.acked = Some(pos);
        Ok(())
    }

    /// Writes the settled position when it moved.
    fn save(&mut self) -> Result<(), PublisherError> {
        let Some(at) = &self.acked else {
            return Ok(());
        };
        if self.saved.as_ref() == Some(at) {
            return Ok(());
        }
        self.checkpoints.save(&at.to_checkpoint())?;
        metrics::gauge!("syncdata_producer_checkpoint_offset").set(at.offset as f64);
        self.saved = Some(at.clone());
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
                .is_none_or(|n| !archive::is_ignored_name(n))
        })
}

#[cfg(test)]
mod tests;
