//! `syncdata migrate`: creates or upgrades syncdata's tables in the local
//! database (its history in `syncdata._sqlx_migrations`), moving an earlier
//! version's history out of `public._sqlx_migrations`. `start` and
//! `add-tables` do the same; no other command changes the schema.

use crate::store;
use syncdata_core::config::Config;
use syncdata_core::outln;

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let pool = store::connect_and_migrate(config).await?;
    let applied = store::applied_migrations(&pool).await?.unwrap_or(0);
    outln!(
        "syncdata is set up in database {:?}: {applied} migration(s) applied, history in {}",
        config.pg_database.clone().unwrap_or_default(),
        store::MIGRATIONS_TABLE
    )?;
    Ok(())
}
