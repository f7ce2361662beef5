//! `syncdata clear --yes`: empties every synced table and resets its
//! bookkeeping, as seed 004 warns. The durables keep their position: later
//! changes apply on top of the empty tables (use `resync` to replay history).

use crate::store;
use anyhow::bail;
use syncdata_core::config::Config;
use syncdata_core::outln;

/// With `json`, prints `{"cleared": [..]}`.
pub async fn run(config: &Config, yes: bool, json: bool) -> anyhow::Result<()> {
    if !yes {
        bail!("clear empties every synced table: add --yes to confirm");
    }
    let pool = store::connect(config).await?;
    let tables = store::whitelist(&pool).await?;
    if tables.is_empty() {
        bail!(crate::daemon::NO_TABLES);
    }
    for t in &tables {
        super::resync::reset_table(&pool, t).await?;
        if !json {
            outln!("cleared {t}")?;
        }
    }
    if json {
        let cleared: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"cleared": cleared}))?
        )?;
        return Ok(());
    }
    outln!(
        "the tables stay empty until their rows change again at the source; \
         `syncdata resync TABLE --yes` refills one from the stream's history"
    )?;
    Ok(())
}
