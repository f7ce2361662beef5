//! `syncdata list-tables [--json]`.

use crate::store;
use syncdata_core::config::Config;
use syncdata_core::outln;

pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let pool = store::connect(config).await?;
    let rows = store::list_tables(&pool).await?;
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(t, c, at)| serde_json::json!({"table": t, "creator": c, "created_at": at}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?)?;
    } else if rows.is_empty() {
        outln!("{}", crate::daemon::NO_TABLES)?;
    } else {
        outln!("synced tables ({}):", rows.len())?;
        for (t, _, _) in rows {
            outln!("  - {t}")?;
        }
    }
    Ok(())
}
