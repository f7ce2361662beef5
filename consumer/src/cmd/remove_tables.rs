//! `syncdata remove-tables T…`: stop syncing tables (their local rows stay).
//!
//! Idempotent like `add-tables`: the result is the state asked for, so a
//! table that is not listed is reported ("X is not listed") and the command
//! still exits 0; only a name that cannot be a table fails. Running daemons
//! stop the removed tables' workers by themselves (see `daemon`).

use crate::store;
use syncdata_core::config::Config;
use syncdata_core::outln;
use syncdata_core::table::TableName;

pub async fn run(config: &Config, tables: &[String]) -> anyhow::Result<()> {
    let pool = store::connect(config).await?;
    let names = tables
        .iter()
        .map(|t| TableName::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    for name in names {
        if store::remove_table(&pool, &name).await? {
            outln!("removed {name}")?;
        } else {
            outln!("{name} is not listed")?;
        }
    }
    Ok(())
}
