//! `syncdata resync T`: empty the local table and its row versions, and
//! replay the table's whole history from the stream through a recreated
//! durable. Other tables keep syncing meanwhile.
//!
//! The table's `table_state` row is locked FOR UPDATE while the table is
//! emptied: in-flight batches of the table (KEY SHARE) finish first, new
//! ones wait. A batch fetched from the old durable and applied after the
//! reset is harmless: apply is order-free, and the replay holds it too.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::apply::Applier;
use crate::store;
use anyhow::{bail, Context};
use async_nats::jetstream;
use syncdata_core::config::Config;
use syncdata_core::table::TableName;
use syncdata_core::{nats, subject};
use syncdata_core::{out, outln};

use crate::backlog;
use crate::daemon::ensure_consumer;

pub async fn reset_table(pool: &sqlx::PgPool, table: &TableName) -> anyhow::Result<()> {
    let replica = Applier::detect_replica_role(pool).await?;
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
    tx.commit().await?;
    Ok(())
}

pub async fn run(config: &Config, input: &str, wait: bool) -> anyhow::Result<()> {
    let table = TableName::parse(input)?;
    let pool = store::connect(config).await?;
    if !store::whitelist(&pool).await?.contains(&table) {
        bail!("{table} is not in the whitelist (syncdata add-tables {table})");
    }
    let instance = store::instance_id(&pool).await?;
    let client = nats::connect(&config.nats, "syncdata-resync").await?;
    let js = jetstream::new(client);
    let stream = nats::ensure_stream(&js, nats::change_stream_config(&config.nats)).await?;
    let dlq = nats::ensure_stream(&js, nats::dlq_stream_config(&config.nats)).await?;
    let durable =
        subject::durable_name(&config.nats.stream, &instance, &table.schema, &table.table);

    reset_table(&pool, &table).await?;
    // Delete and recreate back to back: a worker's pull that lands while the
    // durable is missing gets no answer and stalls the table until the
    // client-side fetch timeout (expires + 5 s), so the gap must not span
    // the reset (seconds on a large table).
    let _ = stream.delete_consumer(&durable).await;
    ensure_consumer(&stream, config, &instance, &table).await?;
    outln!("{table}: emptied; replaying its history from the start of the stream")?;
    if !wait {
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut total = None;
    let mut last_line = Instant::now() - Duration::from_secs(10);
    loop {
        let p = backlog::table_backlog(&stream, &dlq, config, &instance, &table).await?;
        let left = p.pending + p.ack_pending;
        let total = *total.get_or_insert(left.max(1));
        let done = total.saturating_sub(left);
        if tty {
            let width = 30;
            let filled = (done as usize * width) / total as usize;
            out!(
                "\r{table}: [{}{}] {done}/{total} ",
                "#".repeat(filled),
                " ".repeat(width - filled)
            )?;
        } else if last_line.elapsed() >= Duration::from_secs(2) || left == 0 {
            outln!("{table}: {done}/{total} replayed")?;
            last_line = Instant::now();
        }
        if left == 0 {
            if tty {
                outln!()?;
            }
            outln!(
                "{table}: resynced in {:.1}s",
                started.elapsed().as_secs_f64()
            )?;
            return Ok(());
        }
        if p.waiting_pulls == 0 && started.elapsed() > Duration::from_secs(10) && done == 0 {
            outln!("{table}: no daemon is applying; run `syncdata start` to replay")?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
