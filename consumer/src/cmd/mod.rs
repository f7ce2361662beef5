//! The `syncdata` commands, one file each.

pub mod add_tables;
pub mod check;
pub mod clear;
pub mod config;
pub mod dlq;
pub mod list_tables;
pub mod migrate;
pub mod remove_tables;
pub mod report;
pub mod resync;
pub mod status;
pub mod stop;
pub mod verify;

/// The tables a command names, else every whitelisted table; an error when
/// that is none (`verb` says what the command would do with them).
pub(crate) async fn named_or_whitelisted(
    pool: &sqlx::PgPool,
    named: &[String],
    verb: &str,
) -> anyhow::Result<Vec<syncdata_core::table::TableName>> {
    let tables = if named.is_empty() {
        crate::store::whitelist(pool).await?
    } else {
        named
            .iter()
            .map(|t| syncdata_core::table::TableName::parse(t))
            .collect::<Result<_, _>>()?
    };
    if tables.is_empty() {
        anyhow::bail!("no tables to {verb}: name them, or whitelist them with add-tables");
    }
    Ok(tables)
}
