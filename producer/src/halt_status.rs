//! Tells the consumers which tables this producer holds back: every couple
//! of seconds it reads the halted tables from the checkpoint (where the
//! publisher keeps them) and, when they changed, writes them to the
//! `<stream>_STATUS` key-value bucket ([`syncdata_core::halts`]). Reading
//! the checkpoint keeps the publisher free of it; a halt is on disk before
//! it is published here.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use syncdata_core::config::NatsConfig;
use syncdata_core::halts::{self, Halts, ProducerHalt};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointStore;

/// How often the checkpoint is looked at.
const EVERY: Duration = Duration::from_secs(2);

/// The halted tables of the checkpoint in `state_dir` (none without one).
pub fn current(state_dir: &std::path::Path) -> anyhow::Result<Halts> {
    let state = CheckpointStore::new(state_dir).load_state()?;
    let mut tables: Vec<ProducerHalt> = state
        .map(|s| s.halted)
        .unwrap_or_default()
        .into_iter()
        .map(|h| ProducerHalt {
            schema: h.schema,
            table: h.table,
            reason: h.reason,
        })
        .collect();
    tables.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
    Ok(Halts { tables })
}

/// Publishes the halted tables on start and whenever they change, until
/// `token` is cancelled. Failures are logged once each and retried.
pub async fn run(
    js: jetstream::Context,
    cfg: NatsConfig,
    state_dir: PathBuf,
    token: CancellationToken,
) {
    let mut store = None;
    let mut published: Option<Halts> = None;
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let dir = state_dir.clone();
        let now = match tokio::task::spawn_blocking(move || current(&dir)).await {
            Ok(Ok(h)) => h,
            _ => continue,
        };
        if published.as_ref() == Some(&now) {
            continue;
        }
        let result = async {
            if store.is_none() {
                store = Some(halts::open_for_writing(&js, &cfg).await?);
            }
            halts::publish(store.as_ref().expect("opened"), &now).await
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(
                    halted_tables = now.tables.len(),
                    bucket = %halts::bucket_name(&cfg),
                    "halted tables published for the consumers"
                );
                published = Some(now);
                last_error = None;
            }
            Err(e) => {
                let e = format!("{e:#}");
                if last_error.as_deref() != Some(&e) {
                    tracing::warn!(
                        error = %e,
                        "cannot tell the consumers which tables are halted (retrying)"
                    );
                }
                last_error = Some(e);
                store = None;
            }
        }
    }
}
