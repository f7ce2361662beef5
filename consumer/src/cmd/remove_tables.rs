//! `syncdata remove-tables T…`: stop syncing tables (their local rows stay).

use crate::store;
use anyhow::bail;
use syncdata_core::config::Config;
use syncdata_core::table::TableName;
use syncdata_core::{errln, outln};

pub async fn run(config: &Config, tables: &[String]) -> anyhow::Result<()> {
    let pool = store::connect(config).await?;
    let mut missing = 0;
    for input in tables {
        let name = TableName::parse(input)?;
        if store::remove_table(&pool, &name).await? {
            outln!("removed {name}")?;
        } else {
            errln!("error: {name} is not in the whitelist");
            missing += 1;
        }
    }
    if missing > 0 {
        bail!("{missing} of {} tables were not listed", tables.len());
    }
    Ok(())
}
