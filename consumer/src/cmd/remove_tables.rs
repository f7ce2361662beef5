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

/// With `json`, prints `{"removed": [..], "not_listed": [..]}`.
pub async fn run(config: &Config, tables: &[String], json: bool) -> anyhow::Result<()> {
    let pool = store::connect(config).await?;
    let names = tables
        .iter()
        .map(|t| TableName::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut removed, mut not_listed) = (Vec::new(), Vec::new());
    for name in names {
        let was = store::remove_table(&pool, &name).await?;
        match (json, was) {
            (true, true) => removed.push(name.to_string()),
            (true, false) => not_listed.push(name.to_string()),
            (false, true) => outln!("removed {name}")?,
            (false, false) => outln!("{name} is not listed")?,
        }
    }
    if json {
        let out = serde_json::json!({"removed": removed, "not_listed": not_listed});
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
