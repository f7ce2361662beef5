//! `syncdata add-tables T…`: whitelist tables after checking each exists
//! locally with a primary key.

use crate::store;
use anyhow::{bail, Context};
use syncdata_core::config::Config;
use syncdata_core::table::TableName;
use syncdata_core::{errln, outln};

pub async fn run(config: &Config, tables: &[String]) -> anyhow::Result<()> {
    let pool = store::connect(config).await?;
    let creator = std::env::var("USER").ok();
    let mut failed = 0;
    for input in tables {
        let result = async {
            let name = TableName::parse(input)?;
            let added = store::add_table(&pool, &name, creator.as_deref())
                .await
                .with_context(|| format!("cannot add {name}"))?;
            anyhow::Ok((name, added))
        }
        .await;
        match result {
            Ok((name, true)) => outln!("added {name}")?,
            Ok((name, false)) => outln!("{name} is already listed")?,
            Err(e) => {
                errln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} tables could not be added", tables.len());
    }
    Ok(())
}
