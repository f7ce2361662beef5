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
    let tables: Vec<String> = tables.into_iter().collect();
    let settings = ArchiverSettings::from_config(config, source_url, &tables)?;
    archiver::run(settings, token).await
}
