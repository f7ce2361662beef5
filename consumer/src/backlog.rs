//! How far each table's durable is behind the stream: pending messages, the
//! age of the oldest unapplied one (lag), dead letters. Used by `status` and
//! by the daemon's gauges.

use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use syncdata_core::config::Config;
use syncdata_core::subject::{durable_name, table_subject};
use syncdata_core::table::TableName;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TableBacklog {
    /// Messages not yet delivered to any consumer.
    pub pending: u64,
    /// Delivered, not yet acked (being applied or awaiting redelivery).
    pub ack_pending: u64,
    /// Age in seconds of the oldest message not yet applied; 0 when caught up.
    pub lag_seconds: f64,
    /// Pull requests waiting on the durable (connected, idle workers).
    pub waiting_pulls: u64,
    /// Dead letters of this table.
    pub dlq: u64,
    /// False when the durable does not exist yet (no daemon started it).
    pub durable_exists: bool,
}

pub async fn table_backlog(
    changes: &Stream,
    dlq: &Stream,
    config: &Config,
    instance: &str,
    table: &TableName,
) -> anyhow::Result<TableBacklog> {
    let mut p = TableBacklog::default();
    let name = durable_name(&config.nats.stream, instance, &table.schema, &table.table);
    if let Ok(mut consumer) = changes
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
        .await
    {
        let info = consumer.info().await?;
        p.durable_exists = true;
        p.pending = info.num_pending;
        p.ack_pending = info.num_ack_pending as u64;
        p.waiting_pulls = info.num_waiting as u64;
        if p.pending + p.ack_pending > 0 {
            let filter = table_subject(&config.nats.subject_prefix, &table.schema, &table.table);
            if let Ok(m) = changes
                .get_first_raw_message_by_subject(&filter, info.ack_floor.stream_sequence + 1)
                .await
            {
                let age = time::OffsetDateTime::now_utc() - m.time;
                p.lag_seconds = age.as_seconds_f64().max(0.0);
            }
        }
    } else {
        // Nothing consumed yet: everything for the table is pending.
        let filter = table_subject(&config.nats.subject_prefix, &table.schema, &table.table);
        p.pending = subject_count(changes, &filter).await?;
    }
    p.dlq = dlq_count(dlq, config, instance, table).await?;
    Ok(p)
}

/// This database's dead letters of one table.
pub async fn dlq_count(
    dlq: &Stream,
    config: &Config,
    instance: &str,
    table: &TableName,
) -> anyhow::Result<u64> {
    let filter = syncdata_core::subject::dlq_subject(
        &config.nats.dlq_subject_prefix,
        instance,
        &table.schema,
        &table.table,
    );
    subject_count(dlq, &filter).await
}

async fn subject_count(stream: &Stream, filter: &str) -> anyhow::Result<u64> {
    let mut subjects = stream.info_with_subjects(filter).await?;
    let mut total = 0u64;
    while let Some(entry) = subjects.next().await {
        let (_, count) = entry?;
        total += count as u64;
    }
    Ok(total)
}
