//! The `syncdata start` daemon: one worker per whitelisted table, each on
//! its table's durable pull consumer (one filter subject: nats-server 2.9
//! silently ignores multiple filters). Any number of daemons applying into
//! the same database share the durables; JetStream spreads the messages
//! among them. Around the workers: registration and heartbeat (for `status`),
//! a control subscription (for `stop` from any machine), the audit metrics in
//! `data_sync_metrics`, and Prometheus gauges.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::apply::Applier;
use crate::failure;
use crate::store::{self, uuid_like::Id};
use anyhow::bail;
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use futures::StreamExt;
use sqlx::PgPool;
use syncdata_core::config::Config;
use syncdata_core::retry::{self, RetryPolicy};
use syncdata_core::signature::{self, SigningKey};
use syncdata_core::table::TableName;
use syncdata_core::{nats, subject, telemetry};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backlog;
use crate::supervise::{self, Decision, FaultHook, Slot};
use crate::worker::{self, WorkerShared};

pub const NO_TABLES: &str =
    "No tables in whitelist: add tables to sync with `syncdata add-tables TABLE…`";

const HEARTBEAT: Duration = Duration::from_secs(5);

/// How often a running daemon reads the whitelist again: tables added with
/// `add-tables` start syncing, tables removed with `remove-tables` stop,
/// without a restart.
pub const WHITELIST_POLL: Duration = Duration::from_secs(3);

/// How often a daemon logs its one-line summary (records applied, rate,
/// backlog).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The subject on which `syncdata stop` reaches every daemon applying into
/// the database with this instance id. Outside the stream's subjects.
pub fn control_subject(instance: &str) -> String {
    format!("_SYNCDATA.control.{instance}.stop")
}

/// Connects to the local database, retrying while it is unreachable for
/// [`retry::STARTUP_WAIT`] (a database that is starting is not a reason to
/// give up), then exits with the last error: the same rule as for NATS.
pub async fn connect_db(config: &Config, token: &CancellationToken) -> anyhow::Result<PgPool> {
    let policy = RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(3));
    let wait = token.child_token();
    let timer = {
        let wait = wait.clone();
        tokio::spawn(async move {
            tokio::time::sleep(retry::STARTUP_WAIT).await;
            wait.cancel();
        })
    };
    let mut last: Option<String> = None;
    let result = retry::retry(
        policy,
        &wait,
        |e: &store::StoreError| {
            matches!(e, store::StoreError::Connect { source, .. }
                if failure::classify_sqlx(source, true) == failure::Kind::Transient)
        },
        |e, attempt, _| {
            warn!(error = %e, attempt, "database not reachable; retrying");
            last = Some(e.to_string());
        },
        || store::connect_and_migrate(config),
    )
    .await;
    timer.abort();
    match result {
        Ok(pool) => Ok(pool),
        Err(retry::RetryError::Permanent(e)) => Err(e.into()),
        Err(retry::RetryError::Cancelled) if token.is_cancelled() => {
            bail!("stopped while waiting for the database")
        }
        Err(retry::RetryError::Cancelled) => bail!(
            "{}: not reachable within {} s (is PostgreSQL running?)",
            last.unwrap_or_else(|| "cannot connect to PostgreSQL".to_owned()),
            retry::STARTUP_WAIT.as_secs()
        ),
    }
}

pub async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
    config: &Config,
    instance: &str,
    table: &TableName,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let name = subject::durable_name(&config.nats.stream, instance, &table.schema, &table.table);
    let filter = subject::table_subject(&config.nats.subject_prefix, &table.schema, &table.table);
    let cfg = pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: filter.clone(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: Duration::from_secs(config.consumer.ack_wait_secs),
        max_ack_pending: config.consumer.max_ack_pending,
        max_deliver: -1,
        ..Default::default()
    };
    let mut consumer = match stream.get_or_create_consumer(&name, cfg.clone()).await {
        Ok(c) => c,
        // Created by another process meanwhile: compared below.
        Err(_) => stream
            .get_consumer(&name)
            .await
            .map_err(|e| anyhow::anyhow!("durable consumer {name} for table {table}: {e}"))?,
    };
    let info = consumer.info().await?;
    let live = &info.config;
    if live.filter_subject != filter {
        bail!(
            "durable consumer {name} filters {:?}, expected {filter:?}: delete it or use another stream",
            live.filter_subject
        );
    }
    // What cannot change in place: refuse, naming the setting.
    if live.ack_policy != AckPolicy::Explicit {
        bail!(
            "durable consumer {name} of table {table} has ack_policy {:?}; syncdata needs Explicit \
             (acks one by one after commit): delete the durable (`syncdata resync {table} --yes` recreates it)",
            live.ack_policy
        );
    }
    if live.deliver_policy != DeliverPolicy::All {
        bail!(
            "durable consumer {name} of table {table} has deliver_policy {:?}; syncdata needs All: \
             delete the durable (`syncdata resync {table} --yes` recreates it)",
            live.deliver_policy
        );
    }
    // What can: repair.
    let mut repaired = Vec::new();
    if live.ack_wait != cfg.ack_wait {
        repaired.push(format!(
            "ack_wait {}s -> {}s",
            live.ack_wait.as_secs(),
            cfg.ack_wait.as_secs()
        ));
    }
    if live.max_ack_pending != cfg.max_ack_pending {
        repaired.push(format!(
            "max_ack_pending {} -> {}",
            live.max_ack_pending, cfg.max_ack_pending
        ));
    }
    if live.max_deliver != cfg.max_deliver {
        repaired.push(format!(
            "max_deliver {} -> unlimited (dead-lettering is syncdata's)",
            live.max_deliver
        ));
    }
    if !repaired.is_empty() {
        let mut fixed = <pull::Config as async_nats::jetstream::consumer::FromConsumer>::try_from_consumer_config(live.clone())
            .map_err(|e| anyhow::anyhow!("durable consumer {name} of table {table}: {e}"))?;
        fixed.ack_wait = cfg.ack_wait;
        fixed.max_ack_pending = cfg.max_ack_pending;
        fixed.max_deliver = cfg.max_deliver;
        consumer = stream.update_consumer(fixed).await.map_err(|e| {
            anyhow::anyhow!(
                "durable consumer {name} of table {table}: updating {} failed: {e}",
                repaired.join(", ")
            )
        })?;
        for r in &repaired {
            warn!(table = %table, durable = %name, "durable setting repaired: {r}");
        }
    }
    Ok(consumer)
}

/// Refuses to run with credentials that may publish changes (or with none,
/// on a server that lets anyone publish): whoever holds them could rewrite
/// every local database. Asked for a subject under the prefix that no table
/// uses and for every whitelisted table's subject (nothing is stored; see
/// `nats::probe_publish`). `nats.allow_open = true` runs anyway, with a
/// warning.
pub async fn refuse_open_server(
    client: &async_nats::Client,
    errors: &mut nats::ServerErrors,
    config: &Config,
    tables: &[TableName],
) -> anyhow::Result<()> {
    let prefix = &config.nats.subject_prefix;
    let mut subjects = vec![nats::probe_subject(client, prefix)];
    subjects.extend(
        tables
            .iter()
            .map(|t| subject::table_subject(prefix, &t.schema, &t.table)),
    );
    let mut open = false;
    for s in &subjects {
        open = nats::probe_publish(client, errors, s, Duration::from_secs(10))
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot tell whether this NATS connection may publish changes: {e}")
            })?;
        if open {
            break;
        }
    }
    if !open {
        return Ok(());
    }
    if config.nats.allow_open {
        warn!(
            "this NATS connection may publish on {}.>: anyone with the same access can change \
             every local table (running anyway: nats.allow_open = true)",
            config.nats.subject_prefix
        );
        return Ok(());
    }
    bail!(
        "refusing to start: the NATS server lets this connection publish on {prefix}.>, so \
         anyone with the same access could change every local table. Give the consumer \
         credentials that may not publish there (see docs/trust.md), or set \
         nats.allow_open = true for a throwaway setup",
        prefix = config.nats.subject_prefix
    )
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    if let Some(addr) = config.consumer.metrics_addr {
        telemetry::init_metrics(addr).map_err(anyhow::Error::msg)?;
        info!(%addr, "serving Prometheus metrics at /metrics");
        crate::freshness::describe_metrics();
    }
    let pool = connect_db(&config, &token).await?;
    let mut tables = accepted_whitelist(&pool).await?;
    if tables.is_empty() {
        bail!(NO_TABLES);
    }
    let instance = store::instance_id(&pool).await?;
    let replica = store::may_set_replica_role(&pool).await?;
    if !replica {
        warn!("neither a superuser nor granted SET ON PARAMETER session_replication_role: applying without session_replication_role = replica, so triggers fire and FK violations are retried");
    }
    let applier = Applier::new(pool.clone(), replica);
    for t in &tables {
        // A table missing locally or without a primary key must not stop the
        // others: its worker dead-letters its records with this error.
        if let Err(e) = applier.shape(t).await {
            warn!(table = %t, error = %e, "whitelisted table cannot be applied to; its records will be dead-lettered");
        }
    }
    let signer = SigningKey::load(config.nats.signing_key_file.as_deref(), |k| {
        std::env::var(k).ok()
    })?;
    match &signer {
        Some(key) => info!(fingerprint = %key.fingerprint(), "verifying every message's signature"),
        None => warn!(
            "no signing key (nats.signing_key_file or {}): messages are applied without checking \
             that the producer sent them",
            signature::KEY_ENV
        ),
    }
    let (client, mut server_errors) = nats::connect_with_errors(&config.nats, "syncdata").await?;
    refuse_open_server(&client, &mut server_errors, &config, &tables).await?;
    let js = jetstream::new(client.clone());
    let stream =
        nats::reconcile_stream(&js, nats::change_stream_config(&config.nats), false).await?;
    let dlq = nats::reconcile_stream(&js, nats::dlq_stream_config(&config.nats), false).await?;

    let id_of_daemon = Id::random();
    store::register_daemon(&pool, &id_of_daemon, &hostname()).await?;
    let mut stop_requests = client.subscribe(control_subject(&instance)).await?;

    let ctx = Arc::new(
        WorkerShared::new(
            config.clone(),
            applier,
            pool.clone().into(),
            js,
            !replica,
            signer,
        )
        .with_max_payload(client.server_info().max_payload),
    );
    info!(
        bytes = ctx.budget_bytes(),
        "memory budget of fetched messages (consumer.memory_budget_bytes)"
    );
    let workers_token = token.child_token();
    // A resync a crash interrupted: finish it before anything is pulled.
    crate::cmd::resync::resume_pending(&pool, &stream, &config, &instance).await?;
    let mut consumers = Vec::new();
    for table in &tables {
        consumers.push(ensure_consumer(&stream, &config, &instance, table).await?);
    }
    // Once, before any pull is in flight (see update_dlq_gauges).
    update_gauges(&stream, &dlq, &config, &instance, &tables).await;
    let launch = Arc::new(Launch {
        ctx: ctx.clone(),
        stream: stream.clone(),
        config: config.clone(),
        instance: instance.clone(),
        fault: FaultHook::from_env(),
    });
    let restart_policy =
        supervise::restart_policy(Duration::from_millis(config.consumer.max_backoff_ms));
    let mut workers = JoinSet::new();
    let mut slots: HashMap<tokio::task::Id, Slot> = HashMap::new();
    // Each table's own stop, for when it leaves the whitelist.
    let mut table_tokens: HashMap<TableName, CancellationToken> = HashMap::new();
    for (table, consumer) in tables.iter().zip(consumers) {
        let t = workers_token.child_token();
        table_tokens.insert(table.clone(), t.clone());
        let id = launch.spawn(
            &mut workers,
            table.clone(),
            Some(consumer),
            Duration::ZERO,
            t,
        );
        slots.insert(id, Slot::new(table.clone()));
    }
    // Retention of the local bookkeeping (tombstones, logs, daemons).
    tokio::spawn(crate::gc::run(
        pool.clone(),
        stream.clone(),
        config.clone(),
        tables.clone(),
        workers_token.clone(),
    ));
    info!(tables = workers.len(), instance = %instance, "syncdata started");
    let mut gave_up = None;

    let period = config.data_sync_freq as i64;
    let mut metrics_tick = tokio::time::interval_at(
        next_boundary(period),
        Duration::from_secs(config.data_sync_freq),
    );
    let mut rollup_tick = tokio::time::interval(Duration::from_secs(config.metric_freq * 3600));
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut whitelist_tick = tokio::time::interval(WHITELIST_POLL);
    whitelist_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summary_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + SUMMARY_EVERY, SUMMARY_EVERY);
    let mut summary = Summary::new(ctx.applied_total());
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            Some(_) = stop_requests.next() => {
                info!("stop requested through NATS");
                break;
            }
            _ = metrics_tick.tick() => {
                // The period that just ended.
                flush_metrics(&ctx, period, now_secs() - period).await;
            }
            _ = rollup_tick.tick() => {
                if let Err(e) = store::roll_up_metrics(&pool).await {
                    warn!(error = %e, "metrics roll-up failed; will retry next period");
                }
            }
            Some(joined) = workers.join_next_with_id() => {
                // Workers only return once told to stop: any end now is a
                // failure, whatever its kind.
                let (id, why) = match joined {
                    Ok((id, Ok(()))) => (id, "the worker returned while the daemon runs".to_owned()),
                    Ok((id, Err(e))) => (id, format!("{e:#}")),
                    Err(e) => {
                        let id = e.id();
                        let why = if e.is_panic() {
                            format!("panicked: {}", supervise::panic_message(&*e.into_panic()))
                        } else {
                            format!("{e}")
                        };
                        (id, why)
                    }
                };
                if workers_token.is_cancelled() {
                    // Stopping (the workers' token is a child of ours):
                    // not a failure.
                    break;
                }
                let Some(mut slot) = slots.remove(&id) else { continue };
                if !table_tokens.contains_key(&slot.table) {
                    // Removed from the whitelist: its worker was told to stop.
                    info!(table = %slot.table, "worker of the removed table stopped");
                    continue;
                }
                let name = slot.table.to_string();
                match slot.failed(&restart_policy) {
                    Decision::GiveUp => {
                        error!(table = %name, error = %why, failures = slot.failures, "table worker keeps failing; stopping the daemon");
                        gave_up = Some(anyhow::anyhow!(
                            "the worker of table {name} failed {} times in a row (last: {why}); the daemon stops rather than leave the table unsynced",
                            slot.failures
                        ));
                        break;
                    }
                    Decision::Restart(delay) => {
                        error!(table = %name, error = %why, restarts = slot.restarts, ?delay, "table worker ended unexpectedly; restarting it");
                        metrics::counter!("syncdata_worker_restarts_total", "table" => name.clone()).increment(1);
                        if let Err(e) = store::worker_restarted(&pool, &id_of_daemon, &name, &why).await {
                            warn!(table = %name, error = %e, "recording the worker restart failed");
                        }
                        let table = slot.table.clone();
                        slot.started();
                        let t = table_tokens
                            .entry(table.clone())
                            .or_insert_with(|| workers_token.child_token())
                            .clone();
                        let id = launch.spawn(&mut workers, table, None, delay, t);
                        slots.insert(id, slot);
                    }
                }
            }
            _ = heartbeat.tick() => {
                let errors = ctx.errors.load(std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = store::heartbeat(&pool, &id_of_daemon, ctx.applied_total(), errors).await {
                    warn!(error = %e, "heartbeat failed");
                }
                update_dlq_gauges(&dlq, &config, &instance, &tables).await;
            }
            _ = whitelist_tick.tick() => {
                let now = match accepted_whitelist(&pool).await {
                    Ok(now) => now,
                    Err(e) => {
                        warn!(error = %e, "reading the whitelist failed; will retry");
                        continue;
                    }
                };
                for gone in tables.iter().filter(|t| !now.contains(t)) {
                    if let Some(t) = table_tokens.remove(gone) {
                        info!(table = %gone, "table removed from the whitelist: stopping its worker");
                        t.cancel();
                    }
                }
                for added in now.iter().filter(|t| !tables.contains(t)) {
                    if let Err(e) = ctx.engine.shape(added).await {
                        warn!(table = %added, error = %e, "whitelisted table cannot be applied to; its records will be dead-lettered");
                    }
                    let consumer = match refuse_open_server(&client, &mut server_errors, &config, std::slice::from_ref(added)).await {
                        Ok(()) => ensure_consumer(&stream, &config, &instance, added).await,
                        Err(e) => Err(e),
                    };
                    match consumer {
                        Ok(consumer) => {
                            info!(table = %added, "table added to the whitelist: syncing it");
                            let t = workers_token.child_token();
                            table_tokens.insert(added.clone(), t.clone());
                            let id = launch.spawn(&mut workers, added.clone(), Some(consumer), Duration::ZERO, t);
                            slots.insert(id, Slot::new(added.clone()));
                        }
                        Err(e) => {
                            // Not taken into `tables`: tried again next poll.
                            error!(table = %added, error = %format!("{e:#}"), "cannot start syncing the added table");
                        }
                    }
                }
                tables = now
                    .into_iter()
                    .filter(|t| table_tokens.contains_key(t))
                    .collect();
            }
            _ = summary_tick.tick() => {
                summary.log(ctx.applied_total(), &tables).await;
            }
        }
    }
    info!("stopping: finishing in-flight batches");
    workers_token.cancel();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %format!("{e:#}"), "worker failed while stopping"),
            Err(e) if e.is_panic() => error!(
                error = %supervise::panic_message(&*e.into_panic()),
                "worker panicked while stopping"
            ),
            Err(e) => warn!(error = %e, "worker cancelled while stopping"),
        }
    }
    // Acks are only queued on the connection; push them out before the
    // process exits, or the last batch's messages come back after ack_wait.
    match tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "flushing acks failed; they will be redelivered"),
        Err(_) => warn!("flushing acks timed out; they will be redelivered"),
    }
    flush_metrics(&ctx, period, now_secs()).await;
    if let Err(e) = store::roll_up_metrics(&pool).await {
        warn!(error = %e, "metrics roll-up failed");
    }
    store::daemon_stopped(&pool, &id_of_daemon).await?;
    if let Some(e) = gave_up {
        return Err(e);
    }
    info!("syncdata stopped");
    Ok(())
}

/// What it takes to (re)start a table's worker.
struct Launch {
    ctx: Arc<WorkerShared<crate::apply::postgres::PgTarget>>,
    stream: jetstream::stream::Stream,
    config: Config,
    instance: String,
    fault: FaultHook,
}

impl Launch {
    /// Starts the worker of `table` after `delay`, on `consumer` or on its
    /// durable fetched anew. An error getting the durable ends the task
    /// (and counts as a failure of the worker).
    fn spawn(
        self: &Arc<Self>,
        set: &mut JoinSet<anyhow::Result<()>>,
        table: TableName,
        consumer: Option<jetstream::consumer::PullConsumer>,
        delay: Duration,
        token: CancellationToken,
    ) -> tokio::task::Id {
        let launch = self.clone();
        set.spawn(async move {
            if !delay.is_zero() && !retry::sleep(delay, &token).await {
                return Ok(());
            }
            let consumer = match consumer {
                Some(c) => c,
                None => {
                    ensure_consumer(&launch.stream, &launch.config, &launch.instance, &table)
                        .await?
                }
            };
            launch.fault.check(&table);
            worker::run_table(launch.ctx.clone(), table, consumer, token).await;
            Ok(())
        })
        .id()
    }
}

/// The whitelist less the entries put into tables_to_sync by hand that
/// add-tables would refuse (logged).
async fn accepted_whitelist(pool: &PgPool) -> anyhow::Result<Vec<TableName>> {
    let mut tables = store::whitelist(pool).await?;
    tables.retain(|t| match t.denied() {
        Some(reason) => {
            tracing::error!(table = %t, "whitelisted table refused: {reason}");
            false
        }
        None => true,
    });
    Ok(tables)
}

/// The periodic one-line summary: records applied since the last line,
/// their rate, and the backlog the workers last saw (the
/// `syncdata_pending_messages` gauges' source).
struct Summary {
    applied: u64,
    at: std::time::Instant,
}

impl Summary {
    fn new(applied: u64) -> Summary {
        Summary {
            applied,
            at: std::time::Instant::now(),
        }
    }

    async fn log(&mut self, applied: u64, tables: &[TableName]) {
        let secs = self.at.elapsed().as_secs_f64().max(0.001);
        let delta = applied.saturating_sub(self.applied);
        info!(
            "applied {delta} records in the last {:.0} s ({:.0}/s), {applied} since start, {} table(s) synced",
            secs,
            delta as f64 / secs,
            tables.len()
        );
        self.applied = applied;
        self.at = std::time::Instant::now();
    }
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The next multiple of `period` seconds since the epoch, as an Instant.
pub(crate) fn next_boundary(period: i64) -> tokio::time::Instant {
    let now = now_secs();
    let next = (now / period + 1) * period;
    tokio::time::Instant::now() + Duration::from_secs((next - now).max(1) as u64)
}

/// Adds the counts gathered since the last flush to the FREQ row of the
/// period containing `at` (unix seconds).
pub(crate) async fn flush_metrics<T: crate::apply::Target>(
    ctx: &WorkerShared<T>,
    period: i64,
    at: i64,
) {
    let start = at.div_euclid(period) * period;
    for (table, counts) in ctx.take_counts() {
        if counts.is_zero() {
            continue;
        }
        if let Err(e) =
            crate::local::add_freq_metrics(&ctx.store, &table.to_string(), start, period, counts)
                .await
        {
            warn!(table = %table, error = %e, "writing data_sync_metrics failed");
        }
    }
}

async fn update_gauges(
    stream: &jetstream::stream::Stream,
    dlq: &jetstream::stream::Stream,
    config: &Config,
    instance: &str,
    tables: &[TableName],
) {
    for t in tables {
        match backlog::table_backlog(stream, dlq, config, instance, t).await {
            Ok(p) => {
                let name = t.to_string();
                metrics::gauge!("syncdata_pending_messages", "table" => name.clone())
                    .set((p.pending + p.ack_pending) as f64);
                metrics::gauge!("syncdata_lag_seconds", "table" => name.clone()).set(p.lag_seconds);
                metrics::gauge!("syncdata_dlq_messages", "table" => name).set(p.dlq as f64);
            }
            Err(e) => warn!(table = %t, error = %e, "reading table progress failed"),
        }
    }
}

/// The periodic gauge: dead letters per table, from the DLQ stream's
/// subject counts. Pending and lag are set by the workers from delivery
/// metadata; asking for a consumer's state while its pulls are served can
/// stall them on nats-server 2.9.
async fn update_dlq_gauges(
    dlq: &jetstream::stream::Stream,
    config: &Config,
    instance: &str,
    tables: &[TableName],
) {
    for t in tables {
        match backlog::dlq_count(dlq, config, instance, t).await {
            Ok(n) => {
                metrics::gauge!("syncdata_dlq_messages", "table" => t.to_string()).set(n as f64)
            }
            Err(e) => warn!(table = %t, error = %e, "reading dead-letter count failed"),
        }
    }
}
