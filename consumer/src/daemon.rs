//! The `syncdata start` daemon: one worker per whitelisted table, each on
//! its table's durable pull consumer (one filter subject: nats-server 2.9
//! silently ignores multiple filters). Any number of daemons may share the
//! durables; JetStream spreads the messages among them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use sqlx::PgPool;
use syncdata_core::apply::Applier;
use syncdata_core::config::Config;
use syncdata_core::table::TableName;
use syncdata_core::{failure, nats, store, subject};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::worker::{self, Ctx};

pub const NO_TABLES: &str =
    "No tables in whitelist: add tables to sync with `syncdata add-tables TABLE…`";

/// Connects to the local database, retrying while it is unreachable (a
/// database that is starting is not a reason to give up).
pub async fn connect_db(config: &Config, token: &CancellationToken) -> anyhow::Result<PgPool> {
    let mut attempt = 0;
    loop {
        match store::connect(config).await {
            Ok(pool) => return Ok(pool),
            Err(store::StoreError::Connect { source, .. })
                if failure::classify_sqlx(&source, true) == failure::Kind::Transient =>
            {
                attempt += 1;
                warn!(error = %source, attempt, "database not reachable; retrying");
                let d = failure::backoff_random(
                    attempt,
                    Duration::from_millis(500),
                    Duration::from_secs(10),
                );
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = token.cancelled() => bail!("stopped while waiting for the database"),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
    config: &Config,
    table: &TableName,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let name = subject::durable_name(&config.nats.stream, &table.schema, &table.table);
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
    let mut consumer = match stream.get_or_create_consumer(&name, cfg).await {
        Ok(c) => c,
        // Created by another process with other limits: share it as it is.
        Err(_) => stream
            .get_consumer(&name)
            .await
            .map_err(|e| anyhow::anyhow!("durable consumer {name} for table {table}: {e}"))?,
    };
    let info = consumer.info().await?;
    if info.config.filter_subject != filter {
        bail!(
            "durable consumer {name} filters {:?}, expected {filter:?}: delete it or use another stream",
            info.config.filter_subject
        );
    }
    Ok(consumer)
}

pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    let pool = connect_db(&config, &token).await?;
    let tables = store::whitelist(&pool).await?;
    if tables.is_empty() {
        bail!(NO_TABLES);
    }
    let replica = Applier::detect_replica_role(&pool).await?;
    if !replica {
        warn!("not a superuser: applying without session_replication_role = replica, so triggers fire and FK violations are retried");
    }
    let applier = Applier::new(pool.clone(), replica);
    for t in &tables {
        applier
            .shape(t)
            .await
            .with_context(|| format!("checking whitelisted table {t}"))?;
    }
    let client = nats::connect(&config.nats, "syncdata").await?;
    let js = jetstream::new(client);
    let stream = nats::ensure_stream(&js, nats::change_stream_config(&config.nats)).await?;
    nats::ensure_stream(&js, nats::dlq_stream_config(&config.nats)).await?;

    let ctx = Arc::new(Ctx {
        config: config.clone(),
        applier,
        js,
        fk_transient: !replica,
    });
    let mut workers = Vec::new();
    for table in tables {
        let consumer = ensure_consumer(&stream, &config, &table).await?;
        workers.push(tokio::spawn(worker::run_table(
            ctx.clone(),
            table,
            consumer,
            token.child_token(),
        )));
    }
    info!(tables = workers.len(), "syncdata started");
    for w in workers {
        w.await.context("worker panicked")?;
    }
    info!("syncdata stopped");
    Ok(())
}
