//! `syncdata stop`: asks every daemon applying into this database, on this
//! machine or another, to stop gracefully (through a NATS control subject),
//! then waits until they have: in-flight batches finish, nothing is
//! half-applied, unapplied messages stay in the stream.

use std::time::Duration;

use crate::store;
use anyhow::bail;
use syncdata_core::config::Config;
use syncdata_core::nats;
use syncdata_core::outln;

use crate::daemon::control_subject;

/// With `json`, prints `{"daemons_asked": N, "stopped": true}` once they
/// have stopped.
pub async fn run(config: &Config, timeout: Duration, json: bool) -> anyhow::Result<()> {
    let pool = store::connect(config).await?;
    let instance = store::instance_id(&pool).await?;
    let running = || async {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "select count(*) from syncdata.daemons where stopped_at is null \
             and last_seen > now() - interval '{} seconds'",
            store::DAEMON_ALIVE_SECS
        )))
        .fetch_one(&pool)
        .await
    };
    let before = running().await?;
    let result = |asked: i64| {
        serde_json::to_string_pretty(&serde_json::json!({"daemons_asked": asked, "stopped": true}))
    };
    if before == 0 {
        match json {
            true => outln!("{}", result(0)?)?,
            false => outln!("no running daemons")?,
        }
        return Ok(());
    }
    let client = nats::connect(&config.nats, "syncdata-stop").await?;
    client
        .publish(control_subject(&instance), "stop".into())
        .await?;
    client.flush().await?;
    if !json {
        outln!("asked {before} daemons to stop; waiting for in-flight batches")?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = running().await?;
        if left == 0 {
            match json {
                true => outln!("{}", result(before)?)?,
                false => outln!("stopped")?,
            }
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{left} daemons still running after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
