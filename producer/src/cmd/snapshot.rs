//! `syncdata-producer snapshot TABLE`: a consistent copy of one table into
//! the archive (see [`crate::snapshot`]); prints a summary on stdout.

use syncdata_core::config::Config;
use syncdata_core::outln;
use tokio_util::sync::CancellationToken;

use crate::snapshot::{self, SnapshotSettings};

pub async fn run(
    config: &Config,
    source_url: Option<String>,
    table: &str,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let settings = SnapshotSettings::from_config(config, source_url, table)?;
    let summary = snapshot::run(settings, token).await?;
    outln!(
        "snapshot of {}: {} rows at version {} in {} file(s), {:.1} s",
        summary.table,
        summary.rows,
        summary.lsn,
        summary.files.len(),
        summary.elapsed.as_secs_f64()
    )?;
    Ok(())
}
