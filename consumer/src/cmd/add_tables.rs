//! `syncdata add-tables T…`: whitelist tables after checking each exists
//! locally with a primary key and, when `producer.source_url` is set, that
//! the source's replica identity of it carries the primary key.

use crate::store;
use anyhow::{bail, Context};
use syncdata_core::config::Config;
use syncdata_core::table::TableName;
use syncdata_core::{errln, outln};

/// With `json`, prints `{"added": [..], "already_listed": [..], "failed":
/// [{"table", "error"}]}` instead of lines.
pub async fn run(config: &Config, tables: &[String], json: bool) -> anyhow::Result<()> {
    let pool = store::connect_and_migrate(config).await?;
    let creator = std::env::var("USER").ok();
    let mut source = match &config.producer.source_url {
        Some(url) => match connect_source(url).await {
            Ok(conn) => Some(conn),
            Err(e) => {
                errln!("warning: cannot check the tables' replica identity on the source: {e:#}");
                None
            }
        },
        None => None,
    };
    let mut failed = 0;
    let (mut added, mut listed, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for input in tables {
        let result = async {
            let name = TableName::parse(input)?;
            if let Some(conn) = source.as_mut() {
                check_source_identity(conn, &name).await?;
            }
            let added = store::add_table(&pool, &name, creator.as_deref())
                .await
                .with_context(|| format!("cannot add {name}"))?;
            anyhow::Ok((name, added))
        }
        .await;
        match result {
            Ok((name, true)) if json => added.push(name.to_string()),
            Ok((name, false)) if json => listed.push(name.to_string()),
            Ok((name, true)) => outln!("added {name}")?,
            Ok((name, false)) => outln!("{name} is already listed")?,
            Err(e) => {
                if json {
                    failures.push(serde_json::json!({"table": input, "error": format!("{e:#}")}));
                } else {
                    errln!("error: {e:#}");
                }
                failed += 1;
            }
        }
    }
    if json {
        let out = serde_json::json!({"added": added, "already_listed": listed, "failed": failures});
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    }
    if failed > 0 {
        bail!("{failed} of {} tables could not be added", tables.len());
    }
    Ok(())
}

async fn connect_source(url: &str) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::ConnectOptions;
    let options: sqlx::postgres::PgConnectOptions = url.parse().context("invalid source_url")?;
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        options.application_name("syncdata-add-tables").connect(),
    )
    .await
    .context("connecting to the source timed out")?
    .context("cannot connect to the source")
}

/// Refuses a table whose replica identity on the source would lose its
/// DELETEs (NOTHING, or an index other than the primary key).
async fn check_source_identity(
    conn: &mut sqlx::PgConnection,
    name: &TableName,
) -> anyhow::Result<()> {
    let row: Option<(String, Option<bool>)> =
        sqlx::query_as(syncdata_core::table::REPLICA_IDENTITY_SQL)
            .bind(&name.schema)
            .bind(&name.table)
            .fetch_optional(&mut *conn)
            .await
            .context("reading the table's replica identity on the source")?;
    if let Some((ident, identity_is_pk)) = row {
        if let Some(problem) =
            syncdata_core::table::replica_identity_problem(name, &ident, identity_is_pk)
        {
            bail!("{problem}");
        }
    }
    Ok(())
}
