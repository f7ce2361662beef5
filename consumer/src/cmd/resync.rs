//! `syncdata resync T --yes`: empty the local table and its row versions,
//! and replay the table's whole history from the stream through a
//! recreated durable. Other tables keep syncing meanwhile.
//!
//! Crash safety: the table is marked `resync_pending` (committed) before
//! anything is emptied, and the mark is cleared only once the new durable
//! is checked to start at the stream's first message. `syncdata start`
//! finishes every resync still marked ([`resume_pending`]), so a crash at
//! any point ends in a complete replay, never in an empty table with
//! nothing to refill it. Without a running daemon nothing would replay the
//! table, so `resync` refuses unless `--offline` (replay on the next start).
//!
//! The table's `table_state` row is locked FOR UPDATE while the table is
//! emptied: in-flight batches of the table (KEY SHARE) finish first, new
//! ones wait. A batch fetched from the old durable and applied after the
//! reset is harmless: apply is order-free, and the replay holds it too.

use std::time::{Duration, Instant};
use syncdata_core::errln;

use crate::store;
use anyhow::{bail, Context};
use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::ConsumerErrorKind;
use syncdata_core::config::Config;
use syncdata_core::outln;
use syncdata_core::signature::SigningKey;
use syncdata_core::table::TableName;
use syncdata_core::{nats, subject};

use crate::backlog;
use crate::daemon::ensure_consumer;

pub async fn reset_table(pool: &sqlx::PgPool, table: &TableName) -> anyhow::Result<()> {
    reset(pool, table, None).await.map(|_| ())
}

/// Empties `table` and its row versions; with `rewind`, in the same
/// transaction, brings it back to the first definition of its history in
/// the stream, so the replay rebuilds it through every version
/// (crate::schema::rebuild). Returns the rewind's statements, if it ran.
async fn reset(
    pool: &sqlx::PgPool,
    table: &TableName,
    rewind: Option<(&Config, Option<&crate::schema::rebuild::History>)>,
) -> anyhow::Result<Option<Vec<String>>> {
    let replica = store::may_set_replica_role(pool).await?;
    let mut tx = pool.begin().await?;
    if replica {
        sqlx::query("set local session_replication_role = replica")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "insert into syncdata.table_state (table_name) values ($1) on conflict (table_name) do nothing",
    )
    .bind(table.to_string())
    .execute(&mut *tx)
    .await?;
    let id: i32 =
        sqlx::query_scalar("select id from syncdata.table_state where table_name = $1 for update")
            .bind(table.to_string())
            .fetch_one(&mut *tx)
            .await?;
    // DELETE rather than TRUNCATE: works when other tables reference this
    // one (with replica mode, their FK triggers do not fire).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "delete from {}",
        table.quoted()
    )))
    .execute(&mut *tx)
    .await
    .with_context(|| format!("emptying {table}"))?;
    sqlx::query("delete from syncdata.row_state where table_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("update syncdata.table_state set truncate_lsn = 0, truncate_seq = 0 where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let rewound = match rewind {
        Some((config, history)) => {
            crate::schema::rebuild::rewind(&mut tx, config, table, history).await?
        }
        None => None,
    };
    tx.commit().await?;
    Ok(rewound)
}

/// Marks (or unmarks) a resync of `table` as in progress.
async fn set_pending(pool: &sqlx::PgPool, table: &TableName, pending: bool) -> anyhow::Result<()> {
    sqlx::query(
        "insert into syncdata.table_state (table_name, resync_pending) values ($1, $2) \
         on conflict (table_name) do update set resync_pending = excluded.resync_pending",
    )
    .bind(table.to_string())
    .bind(pending)
    .execute(pool)
    .await?;
    Ok(())
}

/// Test hook: `SYNCDATA_FAILPOINT=<name>` ends the process abruptly (as a
/// crash would) when it reaches the named point.
fn failpoint(name: &str) {
    if std::env::var("SYNCDATA_FAILPOINT").is_ok_and(|v| v == name) {
        errln!("failpoint {name}: exiting abruptly");
        std::process::abort();
    }
}

/// Empties `table`, deletes its durable and creates it again at the start
/// of the stream, then clears the table's resync mark. Idempotent: run it
/// again after a crash at any point.
async fn perform(
    pool: &sqlx::PgPool,
    stream: &jetstream::stream::Stream,
    config: &Config,
    instance: &str,
    table: &TableName,
) -> anyhow::Result<Option<Vec<String>>> {
    let durable = subject::durable_name(&config.nats.stream, instance, &table.schema, &table.table);
    let old_created = match stream.consumer_info(&durable).await {
        Ok(info) => Some(info.created),
        Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => None,
        Err(e) => bail!("reading durable {durable} of {table}: {e}"),
    };
    // A table that changed shape mid-stream is rebuilt through every
    // version of its definition (docs/schema.md, "Resync").
    let signer = SigningKey::load(config.nats.signing_key_file.as_deref(), |k| {
        std::env::var(k).ok()
    })?;
    let history = crate::schema::rebuild::history(stream, config, signer.as_ref(), table).await?;
    let rewound = reset(pool, table, Some((config, history.as_ref()))).await?;
    if let Some(statements) = &rewound {
        tracing::info!(table = %table, statements = %statements.join("; "),
                       "rewound to the first definition in the stream; the replay takes every later one");
    }
    failpoint("resync-after-reset");
    // Delete and recreate back to back: a worker's pull that lands while the
    // durable is missing gets no answer and stalls the table until the
    // client-side fetch timeout (expires + 5 s), so the gap must not span
    // the reset (seconds on a large table).
    match stream.delete_consumer(&durable).await {
        Ok(status) if status.success => {}
        Ok(_) => bail!("NATS did not delete durable {durable} of {table}; nothing was replayed"),
        Err(e) if is_not_found(&e) => {}
        Err(e) => bail!("deleting durable {durable} of {table}: {e}; nothing was replayed"),
    }
    let mut consumer = ensure_consumer(stream, config, instance, table).await?;
    let info = consumer.info().await?;
    let fresh = old_created.is_none_or(|old| old != info.created);
    if !fresh || info.config.deliver_policy != DeliverPolicy::All {
        bail!(
            "durable {durable} of {table} was not recreated at the start of the stream \
             (deliver policy {:?}); run the resync again",
            info.config.deliver_policy
        );
    }
    set_pending(pool, table, false).await?;
    Ok(rewound)
}

fn is_not_found(e: &jetstream::stream::ConsumerError) -> bool {
    matches!(e.kind(), ConsumerErrorKind::JetStream(j)
        if j.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND)
}

/// Finishes every resync a crash left marked (called by `start` before its
/// workers pull anything).
pub async fn resume_pending(
    pool: &sqlx::PgPool,
    stream: &jetstream::stream::Stream,
    config: &Config,
    instance: &str,
) -> anyhow::Result<()> {
    let pending: Vec<String> = sqlx::query_scalar(
        "select table_name from syncdata.table_state where resync_pending order by id",
    )
    .fetch_all(pool)
    .await?;
    for name in pending {
        let table = TableName::parse(&name)?;
        tracing::warn!(table = %table, "a resync was interrupted; finishing it: emptying the table and replaying its history");
        perform(pool, stream, config, instance, &table).await?;
    }
    Ok(())
}

/// Daemons applying into this database now (heartbeat within
/// [`store::DAEMON_ALIVE_SECS`]).
async fn running_daemons(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select count(*) from syncdata.daemons where stopped_at is null \
         and last_seen > now() - interval '{} seconds'",
        store::DAEMON_ALIVE_SECS
    )))
    .fetch_one(pool)
    .await?)
}

pub async fn run(
    config: &Config,
    input: &str,
    wait: bool,
    yes: bool,
    offline: bool,
) -> anyhow::Result<()> {
    let table = TableName::parse(input)?;
    let pool = store::connect(config).await?;
    if !store::whitelist(&pool).await?.contains(&table) {
        bail!("{table} is not in the whitelist (syncdata add-tables {table})");
    }
    if !yes {
        bail!("resync empties {table} and replays its history: add --yes to confirm");
    }
    let daemons = running_daemons(&pool).await?;
    if daemons == 0 && !offline {
        bail!(
            "no syncdata daemon applies database {:?}: {table} would stay empty until one \
             starts. Run `syncdata start` first, or pass --offline to empty it now and replay \
             its history on the next start",
            config.pg_database.clone().unwrap_or_default()
        );
    }
    let instance = store::instance_id(&pool).await?;
    let client = nats::connect(&config.nats, "syncdata-resync").await?;
    let js = jetstream::new(client);
    let stream = nats::ensure_stream(&js, nats::change_stream_config(&config.nats)).await?;
    let dlq = nats::ensure_stream(&js, nats::dlq_stream_config(&config.nats)).await?;

    set_pending(&pool, &table, true).await?;
    let rewound = perform(&pool, &stream, config, &instance, &table).await?;
    outln!("{table}: emptied; replaying its history from the start of the stream")?;
    if let Some(statements) = rewound {
        outln!(
            "{table}: rewound to the first definition in the stream ({} statement(s)); \
             the replay takes every later one in order",
            statements.len()
        )?;
    }
    if !wait || daemons == 0 {
        if daemons == 0 {
            outln!("{table}: no daemon is running; `syncdata start` replays it")?;
        }
        return Ok(());
    }
    let started = Instant::now();
    let mut progress = None;
    loop {
        let p = backlog::table_backlog(&stream, &dlq, config, &instance, &table).await?;
        let left = p.pending + p.ack_pending;
        let bar = progress.get_or_insert_with(|| {
            syncdata_core::progress::Progress::new(
                format!("resync {table}"),
                "records",
                Some(left.max(1)),
            )
        });
        let total = bar.total().unwrap_or(1);
        let done = total.saturating_sub(left);
        bar.set(done);
        if left == 0 {
            errln!("{}", bar.finish());
            outln!(
                "{table}: resynced in {:.1}s",
                started.elapsed().as_secs_f64()
            )?;
            return Ok(());
        }
        if p.waiting_pulls == 0 && started.elapsed() > Duration::from_secs(10) && done == 0 {
            bar.finish();
            outln!("{table}: no daemon is applying; run `syncdata start` to replay")?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
