//! One table's worker: pulls a batch from the table's durable consumer,
//! applies it in one transaction, then acks each message explicitly.
//!
//! Invariant: a message is acked only after the transaction holding its
//! effect committed (or after it was dead-lettered). A crash anywhere before
//! that means redelivery, which the version guard makes harmless. A
//! permanent failure is isolated by splitting the batch, so one bad record
//! never takes good ones with it; a transient failure naks the batch with
//! backoff and never dead-letters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::apply::{ApplyError, BatchReport, Disposition, Engine, Incoming, Target};
use crate::failure::{self, Kind};
use crate::store::Counts;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Message;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt;
use syncdata_core::config::Config;
use syncdata_core::record::Record;
use syncdata_core::retry::{self, RetryPolicy};
use syncdata_core::table::TableName;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::budget::Budget;
use crate::dead_letter::DeadLetter;
use crate::trust::{self, Rejection, VersionMark};
use syncdata_core::signature::SigningKey;

/// What the workers of one process share. Generic over the target the
/// engine writes to (the seam, `crate::apply::target`); the local store
/// (dead letters, metrics, logs) is the consumer's own PostgreSQL database.
pub struct WorkerShared<T: Target> {
    pub config: Config,
    pub engine: Engine<T>,
    /// The local store (PostgreSQL, or the SQLite target's file).
    pub store: crate::local::LocalStore,
    pub js: jetstream::Context,
    /// Without replica mode, an FK violation means "parent not here yet".
    pub fk_transient: bool,
    /// Failed apply attempts (transient or permanent) since start.
    pub errors: AtomicU64,
    /// Verifies every message's signature when set (see trust.rs).
    pub signer: Option<SigningKey>,
    /// Rows added/updated/deleted per table since the last `take_counts`.
    counts: Mutex<HashMap<TableName, Counts>>,
    /// Records applied (changed local state) since the process started.
    applied: AtomicU64,
    /// Bytes of fetched messages all workers hold at most (budget.rs).
    budget: Budget,
}

impl<T: Target> WorkerShared<T> {
    pub fn new(
        config: Config,
        engine: Engine<T>,
        store: crate::local::LocalStore,
        js: jetstream::Context,
        fk_transient: bool,
        signer: Option<SigningKey>,
    ) -> WorkerShared<T> {
        WorkerShared {
            budget: Budget::new(
                config.consumer.memory_budget_bytes,
                config.consumer.pull_max_bytes,
                DEFAULT_MAX_PAYLOAD,
            ),
            config,
            engine,
            store,
            js,
            fk_transient,
            errors: AtomicU64::new(0),
            signer,
            counts: Mutex::new(HashMap::new()),
            applied: AtomicU64::new(0),
        }
    }

    /// Sizes the memory budget for the server's `max_payload` (any one
    /// message must fit a pull).
    pub fn with_max_payload(mut self, max_payload: usize) -> Self {
        self.budget = Budget::new(
            self.config.consumer.memory_budget_bytes,
            self.config.consumer.pull_max_bytes,
            max_payload,
        );
        self
    }

    /// The process's byte budget of fetched messages.
    pub fn budget_bytes(&self) -> usize {
        self.budget.total()
    }

    /// Takes the per-table counts gathered since the last call.
    pub fn take_counts(&self) -> HashMap<TableName, Counts> {
        std::mem::take(&mut *self.counts.lock().expect("counts lock"))
    }

    /// Records applied (changed local state) since the process started.
    pub fn applied_total(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Counts a committed batch: the process totals, the per-table counts
    /// for `data_sync_metrics`, and the Prometheus counters.
    fn count(&self, table: &TableName, report: &BatchReport) {
        self.applied.fetch_add(report.applied, Ordering::Relaxed);
        let mut counts = self.counts.lock().expect("counts lock");
        let c = counts.entry(table.clone()).or_default();
        c.added += report.inserted;
        c.updated += report.updated;
        c.deleted += report.deleted;
        drop(counts);
        let t = table.to_string();
        metrics::counter!("syncdata_records_applied_total", "table" => t.clone(), "op" => "insert")
            .increment(report.inserted);
        metrics::counter!("syncdata_records_applied_total", "table" => t.clone(), "op" => "update")
            .increment(report.updated);
        metrics::counter!("syncdata_records_applied_total", "table" => t, "op" => "delete")
            .increment(report.deleted);
    }
}

const BASE_BACKOFF: Duration = Duration::from_millis(200);

/// nats-server's default `max_payload`, until the server says otherwise.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

pub(crate) enum Fate {
    Ack,
    Retry,
    Poison {
        error: String,
        sqlstate: Option<String>,
    },
    /// A foreign-key violation without replica mode: retried alone until
    /// `consumer.fk_retry_secs` after its first failure, then dead-lettered.
    Dependent {
        error: String,
        sqlstate: Option<String>,
    },
    /// Refused before the apply engine (forged, unsigned, version far
    /// ahead): dead-lettered at once, never retried.
    Reject(Rejection),
}

/// One record of a fetched message (a message of one record, or one of a
/// chunk's, `crate::chunk`).
struct Item {
    /// Its message, in the part's messages.
    msg: usize,
    /// Its place in its chunk (None: a message of one record).
    index: Option<u32>,
    /// What a dead letter of it carries: the message's payload, or the
    /// record's bytes in its chunk.
    payload: Bytes,
    record: Result<Record, String>,
    stream_seq: u64,
    delivered: i64,
}

pub async fn run_table<T: Target>(
    ctx: Arc<WorkerShared<T>>,
    table: TableName,
    mut consumer: PullConsumer,
    token: CancellationToken,
) {
    let batch_size = ctx.config.consumer.batch_size;
    let wait = Duration::from_millis(ctx.config.consumer.fetch_wait_ms);
    let policy = retry_policy(&ctx.config);
    let mut failures: u32 = 0;
    if let Some(reason) = table.denied() {
        tracing::error!(table = %table, "refusing to apply: {reason}");
        return;
    }
    let mut mark = VersionMark::new();
    info!(table = %table, "worker started");
    // Checked once per batch: a batch that was fetched is always applied
    // and acked (or nakked) before the worker stops.
    // A table that just brought messages pulls a full budget share; an idle
    // one only room for one message, so idle tables hold little.
    let mut busy = false;
    // Pulls given up on before they ended, read for what still comes.
    let mut late: Option<Pull> = None;
    while !token.is_cancelled() {
        let mut reserved = tokio::select! {
            r = ctx.budget.reserve(busy) => r,
            _ = token.cancelled() => break,
        };
        // A busy table asks for what is there now (a pull that the server
        // answers at once, full or not): a batch never waits for more
        // messages to come, so at a steady rate a change waits for at most
        // one apply, not for a pull to fill or expire. An idle table waits
        // up to `fetch_wait_ms` for one message, and is busy from then on.
        let pull = if busy {
            consumer
                .fetch()
                .max_messages(batch_size)
                .max_bytes(reserved.bytes())
                .messages()
                .await
        } else {
            consumer
                .batch()
                .max_messages(1)
                .max_bytes(reserved.bytes())
                .expires(wait)
                .messages()
                .await
        };
        let messages = match pull {
            Ok(stream) => stream,
            Err(err) => {
                failures += 1;
                warn!(table = %table, error = %err, "fetch failed; retrying");
                retry::sleep(policy.delay_for(failures), &token).await;
                continue;
            }
        };
        // What still comes for pulls given up on joins this one's batch.
        let got = collect_until(Box::pin(messages) as Pull, late.take(), wait + PULL_GRACE).await;
        let fetched = got.items;
        late = match (got.unfinished, got.late) {
            (None, rest) => rest,
            (Some(given_up), rest) => {
                let given_up: Pull = Box::pin(given_up.take_until(tokio::time::sleep(LATE_WINDOW)));
                Some(match rest {
                    Some(rest) => Box::pin(futures::stream::select(given_up, rest)),
                    None => given_up,
                })
            }
        };
        let mut msgs = Vec::with_capacity(fetched.len());
        let mut ended_with_error = false;
        for m in fetched {
            match m {
                Ok(m) => msgs.push(own_payload(m)),
                Err(err) => {
                    debug!(table = %table, error = %err, "fetch ended");
                    ended_with_error = true;
                }
            }
        }
        if ended_with_error {
            // E.g. 409 "Consumer Deleted" while `syncdata resync` recreates
            // the durable: a pull sent before it exists again gets no answer
            // and stalls this table for the client-side fetch timeout
            // (expires + 5 s). Pull again once the durable answers.
            wait_for_durable(&mut consumer, &table, &token).await;
        }
        busy = !msgs.is_empty();
        // Held until the batch is settled.
        reserved.keep(&msgs);
        if msgs.is_empty() {
            // Caught up (for this process's view of the durable).
            set_progress_gauges(&table, 0, 0.0);
            continue;
        }
        // Pending and lag come from the delivery metadata, not from asking
        // the server for the consumer's state: on nats-server 2.9 such a
        // request while a pull is served can leave the pull unanswered until
        // the client's timeout.
        let progress = msgs.last().and_then(|m| m.info().ok()).map(|i| {
            let age = time::OffsetDateTime::now_utc() - i.published;
            (i.pending, age.as_seconds_f64().max(0.0))
        });
        // Applied in parts bounded by resolved bytes (large records) and by
        // records (`consumer.batch_max_records`: what is decoded at once).
        let mut retry = false;
        let max_records = ctx.config.consumer.batch_max_records;
        let max_bytes = ctx.config.consumer.batch_max_bytes;
        for part in crate::large::parts(msgs, max_bytes, max_records) {
            retry |= process(&ctx, &table, &mut mark, part).await;
        }
        drop(reserved);
        if retry {
            failures += 1;
            retry::sleep(policy.delay_for(failures), &token).await;
        } else {
            failures = 0;
        }
        if let Some((pending, age)) = progress {
            set_progress_gauges(&table, pending, if pending == 0 { 0.0 } else { age });
        }
    }
    // What still comes for a pull given up on is handed back before the
    // worker ends (read for at most LATE_WINDOW).
    if let Some(rest) = late {
        hand_back_late(rest, &table).await;
    }
    info!(table = %table, "worker stopped");
}

/// How long after its expiry (and after its last message) a pull is given
/// up on. nats-server 2.9 does not always answer a pull that expires
/// partly filled, and async-nats then waits for its own timer, expiry + 5 s:
/// the table stalls (measured: p99 latency 5 s at `fetch_wait_ms` 50). By
/// this time the server has expired the pull and sends nothing more for it;
/// what it sent before and still arrives is read for [`LATE_WINDOW`] more.
const PULL_GRACE: Duration = Duration::from_millis(100);

/// One pull's messages (or, merged, a pull's and what still comes for
/// pulls given up on before it).
type Pull =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Message, async_nats::Error>> + Send>>;

/// How long a pull given up on (`collect_until`) is still read. A message
/// the server sent for it before the pull expired on the server, but that
/// arrives after the worker stopped waiting (a loaded machine, a slow link
/// to NATS), would otherwise come again only after `ack_wait` (60 s: seen
/// as minute-long stalls at the end of a catch-up, and on a link whose
/// round trip is longer than the fetch wait nothing would arrive in time
/// at all). The next pull's batch takes such messages as they come; the
/// server sends nothing for a pull after its expiry, so a short window
/// catches what is in flight.
const LATE_WINDOW: Duration = Duration::from_secs(2);

/// At a stop: reads what still comes for a pull given up on (at most
/// [`LATE_WINDOW`]) and hands it back to the server at once (a nak without
/// delay), so no message waits for `ack_wait`.
async fn hand_back_late(mut rest: Pull, table: &TableName) {
    let mut handed_back = 0usize;
    while let Some(item) = rest.next().await {
        if let Ok(m) = item {
            nak(&m, Duration::ZERO).await;
            handed_back += 1;
        }
    }
    if handed_back > 0 {
        debug!(table = %table, handed_back, "messages that came for a pull given up on, handed back at the stop");
    }
}

/// What one pull brought.
struct Collected<S: futures::Stream> {
    items: Vec<S::Item>,
    /// The pull, when it had not ended by the deadline (more may come).
    unfinished: Option<S>,
    /// The earlier pulls given up on, when they have not ended yet.
    late: Option<S>,
}

/// The messages of one pull, until it ends or `limit` has passed, together
/// with what comes meanwhile for earlier pulls given up on (`late`).
async fn collect_until<S>(mut messages: S, mut late: Option<S>, limit: Duration) -> Collected<S>
where
    S: futures::Stream + Unpin,
{
    let started = tokio::time::Instant::now();
    let mut deadline = started + limit;
    let mut items = Vec::new();
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            m = async { late.as_mut().expect("guarded").next().await }, if late.is_some() => {
                match m {
                    Some(m) => Some(m),
                    None => {
                        late = None;
                        continue;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                debug!(
                    received = items.len(),
                    last_ms = ?started.elapsed().as_millis(),
                    "pull unanswered after its expiry; pulling again"
                );
                return Collected { items, unfinished: Some(messages), late };
            }
        };
        match next {
            Some(m) => {
                items.push(m);
                // Messages still coming (a slow link, large records): wait on.
                deadline = deadline.max(tokio::time::Instant::now() + PULL_GRACE);
            }
            None => {
                return Collected {
                    items,
                    unfinished: None,
                    late,
                }
            }
        }
    }
}

/// The message with a payload of its own. async-nats hands out payloads
/// as slices of its connection's read buffer, so one message held until its
/// batch is settled keeps the whole buffer allocation it was read into
/// alive, with every other message read into it (measured with heaptrack:
/// read buffers held 26 MB at the peak of a catch-up whose budget allowed
/// 16 MiB of messages). A copy (one memcpy of bytes the worker is about to
/// parse anyway) lets those buffers go at once, so what a worker holds is
/// what the budget counts.
fn own_payload(mut m: Message) -> Message {
    m.message.payload = Bytes::copy_from_slice(&m.message.payload);
    m
}

fn set_progress_gauges(table: &TableName, pending: u64, lag_seconds: f64) {
    let name = table.to_string();
    metrics::gauge!("syncdata_pending_messages", "table" => name.clone()).set(pending as f64);
    metrics::gauge!("syncdata_lag_seconds", "table" => name).set(lag_seconds);
}

fn retry_policy(config: &Config) -> RetryPolicy {
    RetryPolicy::new(
        BASE_BACKOFF,
        Duration::from_millis(config.consumer.max_backoff_ms),
    )
}

/// Waits (at most 30 s) until the table's durable answers again.
async fn wait_for_durable(
    consumer: &mut PullConsumer,
    table: &TableName,
    token: &CancellationToken,
) {
    let started = Instant::now();
    while !token.is_cancelled() {
        match consumer.info().await {
            Ok(_) => return,
            Err(err) if started.elapsed() > Duration::from_secs(30) => {
                warn!(table = %table, error = %err, "durable consumer still missing; pulling anyway");
                return;
            }
            Err(_) => {
                retry::sleep(Duration::from_millis(50), token).await;
            }
        }
    }
}

/// Applies and settles one fetched batch. Returns true when a transient
/// failure left messages to retry.
async fn process<T: Target>(
    ctx: &WorkerShared<T>,
    table: &TableName,
    mark: &mut VersionMark,
    msgs: Vec<Message>,
) -> bool {
    if let Err(e) = crate::local::ensure_mark(&ctx.store, mark, table).await {
        // Without the mark no change can be checked: retry the batch.
        warn!(table = %table, error = %e, "cannot read the table's applied versions; will retry");
        for m in &msgs {
            let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
            nak(
                m,
                retry_policy(&ctx.config).delay_for(delivered.max(1) as u32),
            )
            .await;
        }
        return true;
    }
    let max_jump = ctx.config.consumer.max_version_jump;
    let mut rejected: Vec<Option<Rejection>> = Vec::with_capacity(msgs.len());
    // Authenticity first: only a signed pointer is followed.
    let refusals: Vec<Option<Rejection>> = msgs
        .iter()
        .map(|msg| {
            ctx.signer
                .as_ref()
                .and_then(|key| trust::check_signature(key, msg).err())
        })
        .collect();
    // Pointers become the large records they name (crate::large).
    let follow: Vec<bool> = refusals.iter().map(Option::is_none).collect();
    let mut resolved = crate::large::resolve_all(&ctx.js, &ctx.config.nats, &msgs, &follow)
        .await
        .into_iter();
    let mut refusals = refusals.into_iter();
    let mut unresolved: Vec<Option<String>> = Vec::with_capacity(msgs.len());
    let mut items: Vec<Item> = Vec::with_capacity(msgs.len());
    for (m, msg) in msgs.iter().enumerate() {
        let refused = refusals.next().expect("one per message");
        let (stream_seq, delivered) = msg
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 1));
        let payload = resolved.next().expect("one per message");
        let transient = match &payload {
            Err(crate::large::ResolveError::Transient(e)) => Some(e.clone()),
            _ => None,
        };
        // A chunk (only an authentic one) becomes its records, each an
        // item of its own (crate::chunk); any other message is one item.
        let records: Vec<(Option<u32>, Bytes, Result<Bytes, String>)> = match &payload {
            Ok(p) if refused.is_none() => match crate::chunk::expand(p) {
                Some(Ok(recs)) => recs
                    .into_iter()
                    .enumerate()
                    .map(|(k, r)| (Some(k as u32), r.clone(), Ok(r)))
                    .collect(),
                Some(Err(e)) => vec![(None, msg.payload.clone(), Err(e))],
                None => vec![(None, msg.payload.clone(), Ok(p.clone()))],
            },
            _ => vec![(
                None,
                msg.payload.clone(),
                payload.map_err(|e| e.to_string()),
            )],
        };
        for (index, original, bytes) in records {
            let record = bytes
                .and_then(|p| Record::parse(&p).map_err(|e| e.to_string()))
                .and_then(|r| {
                    if r.schema == table.schema && r.table == table.table {
                        Ok(r)
                    } else {
                        Err(format!(
                            "record names table {}, but arrived on the subject of {table}",
                            r.qualified_name()
                        ))
                    }
                });
            // Authenticity first; the version only of an authentic record.
            let refused = refused.clone().or_else(|| {
                record
                    .as_ref()
                    .ok()
                    .and_then(|r| mark.check(table, r.lsn, max_jump).err())
            });
            rejected.push(refused);
            unresolved.push(transient.clone());
            items.push(Item {
                msg: m,
                index,
                payload: original,
                record,
                stream_seq,
                delivered,
            });
        }
    }

    let mut fates: Vec<Option<Fate>> = items.iter().map(|_| None).collect();
    let mut good = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(r) = rejected[i].take() {
            warn!(table = %table, stream_seq = item.stream_seq, reason = r.reason, error = %r.error,
                  "message refused before applying");
            fates[i] = Some(Fate::Reject(r));
            continue;
        }
        if let Some(e) = unresolved[i].take() {
            warn!(table = %table, stream_seq = item.stream_seq, error = %e, "large record not fetched; will retry");
            fates[i] = Some(Fate::Retry);
            continue;
        }
        match &item.record {
            Ok(_) => good.push(i),
            Err(e) => {
                fates[i] = Some(Fate::Poison {
                    error: format!("malformed record: {e}"),
                    sqlstate: None,
                })
            }
        }
    }

    let started = Instant::now();
    // SCHEMA records cut the batch: what precedes one applies under the old
    // shape, then it is taken, then the rest (crate::schema).
    let halted = match ctx.store.pg() {
        Some(pool) => crate::schema::halted_at(pool, table).await.unwrap_or_else(|e| {
            warn!(table = %table, error = %e, "cannot read the table's schema halt; holding its schema changes");
            None
        }),
        None => None,
    };
    let versioned: Vec<_> = good
        .iter()
        .map(|&i| {
            let r = items[i].record.as_ref().expect("good records only");
            (
                i,
                r.version(items[i].stream_seq),
                r.op == syncdata_core::record::Op::Schema,
            )
        })
        .collect();
    let steps = crate::schema::steps(&versioned, halted);
    let mut stack = Vec::new();
    let apply = async {
        let mut held = false;
        for step in steps {
            match step {
                crate::schema::Step::Data(group) if !held => stack.push(group),
                crate::schema::Step::Data(group) => {
                    group.iter().for_each(|&i| fates[i] = Some(Fate::Retry));
                    continue;
                }
                crate::schema::Step::Hold(i) => {
                    fates[i] = Some(Fate::Retry);
                    continue;
                }
                crate::schema::Step::Schema(i) => {
                    let fate = if held {
                        Fate::Retry
                    } else {
                        crate::schema::worker_take(
                            ctx,
                            table,
                            &items[i].record,
                            items[i].stream_seq,
                        )
                        .await
                    };
                    held = matches!(fate, Fate::Retry);
                    fates[i] = Some(fate);
                    continue;
                }
            }
            while let Some(group) = stack.pop() {
                if group.is_empty() {
                    continue;
                }
                let incoming: Vec<Incoming> = group
                    .iter()
                    .map(|&i| Incoming {
                        record: items[i].record.as_ref().expect("good records only"),
                        fallback_seq: items[i].stream_seq,
                    })
                    .collect();
                match ctx.engine.apply_batch(table, &incoming, "").await {
                    Ok(report) => {
                        ctx.count(table, &report);
                        for (&i, d) in group.iter().zip(report.dispositions) {
                            fates[i] = Some(match d {
                                Disposition::Applied | Disposition::Superseded => Fate::Ack,
                                Disposition::Rejected(reason) => Fate::Poison {
                                    error: reason,
                                    sqlstate: None,
                                },
                            });
                        }
                        if report.parked > 0 || report.deletes_of_missing > 0 {
                            warn!(table = %table, parked = report.parked, deletes_of_missing = report.deletes_of_missing,
                          "changes for rows not present locally: partial UPDATEs wait (parked) for their row's image; DELETEs left tombstones");
                        }
                    }
                    Err(err) => match failure::classify_apply(&err, ctx.fk_transient) {
                        Kind::Transient => {
                            ctx.errors.fetch_add(1, Ordering::Relaxed);
                            warn!(table = %table, records = group.len(), error = %failure::describe(&err), "transient failure; will retry");
                            metrics::counter!("syncdata_errors_total", "stage" => "apply", "kind" => "transient").increment(1);
                            for &i in &group {
                                fates[i] = Some(Fate::Retry);
                            }
                        }
                        kind @ (Kind::Permanent | Kind::Dependent) => {
                            ctx.errors.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("syncdata_errors_total", "stage" => "apply", "kind" => "permanent").increment(1);
                            if matches!(err, ApplyError::Db { .. }) && kind == Kind::Permanent {
                                // A schema change may be the cause; read it afresh.
                                ctx.engine.forget_shape(table).await;
                            }
                            let whole_table = matches!(err, ApplyError::Shape(_));
                            if group.len() > 1 && !whole_table {
                                let (a, b) = group.split_at(group.len() / 2);
                                stack.push(b.to_vec());
                                stack.push(a.to_vec());
                            } else {
                                let sqlstate = err.sqlstate();
                                let error = failure::describe(&err);
                                for &i in &group {
                                    fates[i] = Some(if kind == Kind::Dependent {
                                        Fate::Dependent {
                                            error: error.clone(),
                                            sqlstate: sqlstate.clone(),
                                        }
                                    } else {
                                        Fate::Poison {
                                            error: error.clone(),
                                            sqlstate: sqlstate.clone(),
                                        }
                                    });
                                }
                            }
                        }
                    },
                }
            }
        }
    };
    in_progress(&msgs, ctx.config.consumer.ack_wait_secs, apply).await;
    metrics::histogram!("syncdata_batch_apply_seconds", "table" => table.to_string())
        .record(started.elapsed().as_secs_f64());
    let mut newest_ts: Option<&str> = None;
    for (item, fate) in items.iter().zip(&fates) {
        if let (Some(Fate::Ack), Ok(r)) = (fate, &item.record) {
            mark.observe(r.lsn);
            newest_ts = newest_ts.max(r.ts.as_deref());
        }
    }
    crate::freshness::observe(table, newest_ts);

    settle(ctx, table, msgs, items, fates).await
}

/// What settling decided for one record.
enum Verdict<'a> {
    Ack,
    /// Its message is nakked (with this delay), whole.
    Nak(Duration),
    DeadLetter(DeadLetter<'a>, Option<&'static str>),
}

/// Settles a part: a message is acked once each of its records is applied
/// or dead-lettered, and nakked whole when any of them is to be retried
/// (a chunk's applied records then come back superseded).
async fn settle<'a, T: Target>(
    ctx: &WorkerShared<T>,
    table: &'a TableName,
    msgs: Vec<Message>,
    items: Vec<Item>,
    fates: Vec<Option<Fate>>,
) -> bool {
    let policy = retry_policy(&ctx.config);
    let max_attempts = i64::from(ctx.config.consumer.max_attempts);
    let mut transient = false;
    let mut verdicts: Vec<(usize, Verdict<'a>)> = Vec::with_capacity(items.len());
    for (item, fate) in items.into_iter().zip(fates) {
        let delay = policy.delay_for(item.delivered.max(1) as u32);
        let msg = &msgs[item.msg];
        let verdict = match fate.expect("every message has a fate") {
            Fate::Ack => Verdict::Ack,
            Fate::Retry => {
                transient = true;
                Verdict::Nak(delay)
            }
            fate @ (Fate::Poison { .. } | Fate::Dependent { .. } | Fate::Reject(_)) => {
                let (error, sqlstate, rejection, dependent) = match fate {
                    Fate::Poison { error, sqlstate } => (error, sqlstate, None, false),
                    Fate::Dependent { error, sqlstate } => (error, sqlstate, None, true),
                    Fate::Reject(r) => (r.error.clone(), None, Some(r.reason), false),
                    _ => unreachable!("matched above"),
                };
                let mut attempts = item.delivered;
                let mut retry_in = None;
                if rejection.is_none() {
                    // The record's own failures, not its deliveries.
                    match crate::local::record_attempt(
                        &ctx.store,
                        table,
                        item.stream_seq,
                        item.index,
                    )
                    .await
                    {
                        Ok(failures) => {
                            attempts = failures.attempts;
                            let retry = if dependent {
                                failures.since_first_secs < ctx.config.consumer.fk_retry_secs as f64
                            } else {
                                failures.attempts < max_attempts
                            };
                            if dependent {
                                warn!(table = %table, stream_seq = item.stream_seq, chunk_index = item.index,
                                      attempt = failures.attempts, waited_secs = failures.since_first_secs as u64,
                                      error = %error,
                                      "record's parent row is missing (foreign key); retrying it alone until consumer.fk_retry_secs");
                            } else {
                                warn!(table = %table, stream_seq = item.stream_seq, chunk_index = item.index,
                                      attempt = failures.attempts, error = %error, "record failed permanently");
                            }
                            if retry {
                                retry_in = Some(policy.delay_for(failures.attempts.max(1) as u32));
                            }
                        }
                        Err(err) => {
                            warn!(table = %table, stream_seq = item.stream_seq, error = %failure::describe_sqlx(&err),
                                  "cannot count the record's failure; will retry");
                            transient = true;
                            retry_in = Some(delay);
                        }
                    }
                }
                match retry_in {
                    Some(d) => Verdict::Nak(d),
                    None => {
                        let header = |name: &str| {
                            msg.headers
                                .as_ref()
                                .and_then(|h| h.get(name))
                                .map(|v| v.as_str().to_owned())
                        };
                        let dl = DeadLetter {
                            signature: header(syncdata_core::signature::HEADER),
                            msg_id: header("Nats-Msg-Id"),
                            table,
                            payload: item.payload,
                            error,
                            sqlstate,
                            attempts: attempts.max(1) as u64,
                            subject: msg.subject.to_string(),
                            sequence: item.stream_seq,
                            chunk_index: item.index,
                        };
                        Verdict::DeadLetter(dl, rejection)
                    }
                }
            }
        };
        verdicts.push((item.msg, verdict));
    }
    // Per message: nakked whole when any record waits for a retry; else its
    // dead letters are filed, then it is acked.
    let mut naks: Vec<Option<Duration>> = vec![None; msgs.len()];
    for (m, v) in &verdicts {
        if let Verdict::Nak(d) = v {
            naks[*m].get_or_insert(*d);
        }
    }
    for (m, v) in verdicts {
        let Verdict::DeadLetter(dl, rejection) = v else {
            continue;
        };
        if naks[m].is_some() {
            continue;
        }
        let sequence = dl.sequence;
        match crate::local::dead_letter(
            &ctx.js,
            &ctx.store,
            &ctx.config.nats.dlq_subject_prefix,
            &ctx.config.nats.stream,
            dl,
        )
        .await
        {
            Ok(()) => {
                if let Some(reason) = rejection {
                    metrics::counter!("syncdata_messages_rejected_total", "reason" => reason)
                        .increment(1);
                }
            }
            Err(err) => {
                warn!(table = %table, stream_seq = sequence, error = %err, "dead-lettering failed; will retry");
                transient = true;
                let delivered = msgs[m].info().map(|i| i.delivered).unwrap_or(1);
                naks[m] = Some(policy.delay_for(delivered.max(1) as u32));
            }
        }
    }
    let mut acks = Vec::with_capacity(msgs.len());
    for (msg, nakked) in msgs.into_iter().zip(naks) {
        match nakked {
            Some(delay) => nak(&msg, delay).await,
            None => acks.push(msg),
        }
    }
    // Settled messages that were delivered before may have failures counted.
    let settled: Vec<i64> = acks
        .iter()
        .filter_map(|m| m.info().ok())
        .filter(|i| i.delivered > 1)
        .map(|i| i.stream_sequence as i64)
        .collect();
    if let Err(err) = crate::local::clear_attempts(&ctx.store, &settled).await {
        debug!(table = %table, error = %err, "clearing failure counts failed; the housekeeping removes them");
    }
    // One after another: an ack only queues a publish on the connection.
    for m in &acks {
        if let Err(err) = m.ack().await {
            // The effect is committed; a lost ack only means a harmless
            // redelivery.
            debug!(table = %table, error = %err, "ack failed");
        }
    }
    transient
}

/// Runs `apply` while telling the server, every third of `ack_wait`, that
/// the batch's messages are still being worked on (`+WPI`): a batch
/// waiting on a lock held elsewhere is not redelivered to another process
/// meanwhile, so redeliveries do not pile up behind it.
async fn in_progress(
    items: &[Message],
    ack_wait_secs: u64,
    apply: impl std::future::Future<Output = ()>,
) {
    let every = Duration::from_millis((ack_wait_secs * 1000 / 3).max(500));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(apply);
    loop {
        tokio::select! {
            _ = &mut apply => return,
            _ = tick.tick() => {
                for item in items {
                    if let Err(err) = item.ack_with(AckKind::Progress).await {
                        debug!(error = %err, "in-progress ack failed");
                    }
                }
                metrics::counter!("syncdata_in_progress_acks_total").increment(items.len() as u64);
            }
        }
    }
}

async fn nak(msg: &Message, delay: Duration) {
    if let Err(err) = msg.ack_with(AckKind::Nak(Some(delay))).await {
        debug!(error = %err, "nak failed; the message returns after ack_wait");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    /// Items at the given offsets (ms from the start), then a stream that
    /// never ends: a pull the server leaves unanswered.
    fn pull(offsets: &'static [u64]) -> impl futures::Stream<Item = u64> + Unpin {
        let start = tokio::time::Instant::now();
        Box::pin(
            stream::iter(offsets.iter().copied())
                .then(move |ms| async move {
                    tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                    ms
                })
                .chain(stream::pending()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_pull_ends_after_its_expiry_and_grace() {
        let start = tokio::time::Instant::now();
        let got = collect_until(pull(&[5, 20]), None, Duration::from_millis(50) + PULL_GRACE).await;
        assert_eq!(got.items, [5, 20]);
        assert!(
            got.unfinished.is_some(),
            "a pull given up on is handed on to be read"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(50) + PULL_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_still_arriving_after_the_expiry_are_all_taken() {
        let start = tokio::time::Instant::now();
        // A slow link: the pull's messages keep coming after its expiry.
        let got = collect_until(pull(&[40, 120, 200, 290]), None, Duration::from_millis(150)).await;
        assert_eq!(got.items, [40, 120, 200, 290]);
        assert_eq!(start.elapsed(), Duration::from_millis(290) + PULL_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_late_for_a_pull_given_up_on_join_the_next_batch() {
        // The earlier pull's messages arrive after it was given up on,
        // while the next pull is read: they are taken into its batch.
        let late = pull(&[30, 60]);
        let got = collect_until(pull(&[5]), Some(late), Duration::from_millis(20)).await;
        assert_eq!(got.items, [5, 30, 60]);
        assert!(
            got.late.is_some(),
            "the earlier pull has not ended: read on"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pull_that_ends_returns_at_once() {
        let start = tokio::time::Instant::now();
        let s = stream::iter([1u64, 2, 3]);
        let got = collect_until(s, None, Duration::from_secs(5)).await;
        assert_eq!(got.items, [1, 2, 3]);
        assert!(
            got.unfinished.is_none(),
            "a pull that ended needs no more reading"
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
