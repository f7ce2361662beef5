//! The pgbench catch-up into a SQLite file (docs/sqlite.md): the same
//! stream the PostgreSQL target caught up on, applied by one
//! `syncdata start` with `target = "sqlite://…"`, timed from launch to the
//! last batch committed. The file starts empty: the pgbench UPDATEs carry
//! whole rows (no TOAST), so each creates its row on first sight.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;

use crate::env::{self, ConfigSpec, Env, Side, Streams};
use crate::pgbench::TABLES;

/// pgbench's tables as the bench source has them (`hid` added).
const PGBENCH_DDL: &str = "
CREATE TABLE pgbench_accounts (aid integer PRIMARY KEY, bid integer, abalance integer, filler character(84));
CREATE TABLE pgbench_branches (bid integer PRIMARY KEY, bbalance integer, filler character(88));
CREATE TABLE pgbench_tellers (tid integer PRIMARY KEY, bid integer, tbalance integer, filler character(84));
CREATE TABLE pgbench_history (tid integer, bid integer, aid integer, delta integer,
    mtime timestamp without time zone, filler character(22), hid bigserial PRIMARY KEY);
";

/// Catches the SQLite file up on the stream; returns the times from launch
/// to the last batch that applied anything and to the last batch of all.
pub async fn catch_up(
    env: &Env,
    js: &jetstream::Context,
    streams: &Streams,
    archive: &Path,
    consumer_toml: &str,
) -> Result<env::Applied> {
    let file = env.workdir.join("pgbench-sqlite.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    let ddl = env.workdir.join("pgbench-sqlite.sql");
    std::fs::write(&ddl, PGBENCH_DDL)?;
    let config = env.write_config(&ConfigSpec {
        name: "pgbench-consumer-sqlite",
        side: Side::Target,
        database: "unused",
        archive_dir: archive,
        streams,
        extra: format!(
            "[target]\nurl = \"sqlite://{}\"\n\n{consumer_toml}",
            file.display()
        ),
    })?;
    let ddl_arg = ddl.display().to_string();
    let mut add = vec!["add-tables", "--create-from", ddl_arg.as_str()];
    add.extend(TABLES);
    env.run_bin(
        &env.consumer_bin,
        &add,
        &config,
        "pgbench-add-tables-sqlite",
        &[],
    )
    .await?;
    let pool = syncdata_consumer::apply::sqlite::connect(&file, "normal").await?;
    let instance = syncdata_consumer::local::sqlite_instance_id(&pool)
        .await
        .context("the SQLite file's instance id")?;
    let durables = streams.durables(&instance, &TABLES);
    let dead_before = streams.dead_letters(js).await;
    let t0 = env::now_us();
    let mut children = vec![env.spawn(
        &env.consumer_bin,
        &["start"],
        &config,
        "pgbench-consumer-sqlite",
        &[],
    )?];
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut last_count = -1i64;
    let mut changed = Instant::now();
    let elapsed = loop {
        let (count, last_us, data_us): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "select count(*), cast((julianday(max(sync_time)) - 2440587.5) * 86400000000.0 as integer), \
             cast((julianday(max(sync_time) filter (where rows_synced > 0)) - 2440587.5) * 86400000000.0 \
             as integer) from data_sync_logs",
        )
        .fetch_one(&pool)
        .await?;
        if count != last_count {
            last_count = count;
            changed = Instant::now();
        }
        if count > 0
            && changed.elapsed() >= Duration::from_secs(1)
            && streams.drained(js, &durables).await
        {
            let since =
                |us: Option<i64>| Duration::from_micros((us.unwrap_or(t0) - t0).max(0) as u64);
            break env::Applied {
                data: since(data_us),
                drained: since(last_us),
            };
        }
        for c in children.iter_mut() {
            c.check_running()?;
        }
        if Instant::now() > deadline {
            bail!("the SQLite catch-up did not finish within an hour");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    env::stop_all(std::mem::take(&mut children)).await;
    let dead = streams.dead_letters(js).await - dead_before;
    if dead > 0 {
        bail!("{dead} records were dead-lettered during the SQLite catch-up");
    }
    let failed: i64 =
        sqlx::query_scalar("select count(*) from data_sync_logs where status <> 'SUCCESS'")
            .fetch_one(&pool)
            .await?;
    if failed > 0 {
        bail!("{failed} failed batches in the SQLite catch-up");
    }
    pool.close().await;
    Ok(elapsed)
}
