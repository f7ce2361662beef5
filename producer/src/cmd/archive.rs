//! `syncdata-producer archive`: read the replication slot and write change
//! segments until the token is cancelled (see [`crate::archiver`]).

use syncdata_core::config::Config;
use tokio_util::sync::CancellationToken;

use crate::archiver::{self, ArchiverSettings};

pub async fn run(
    config: &Config,
    source_url: Option<String>,
    tables: Option<String>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = config.source.metrics_addr {
        syncdata_core::telemetry::init_metrics(addr).map_err(anyhow::Error::msg)?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    archiver::describe_metrics();
    let tables: Vec<String> = tables.into_iter().collect();
    let settings = ArchiverSettings::from_config(config, source_url, &tables)?;
    archiver::run(settings, token).await
}
