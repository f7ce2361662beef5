//! `syncdata-producer setup-source`: check the source for logical decoding
//! and create what is missing (see [`crate::source::setup`]); prints what it
//! found and did.

use syncdata_core::config::Config;
use syncdata_core::outln;

use crate::source::{parse_tables, setup, SetupOptions, SourceSettings};

/// `setup-source`'s command line.
#[derive(Debug, Clone, Default)]
pub struct SetupArgs {
    pub create_slot: bool,
    pub create_user: bool,
    pub user: Option<String>,
    pub tables: Option<String>,
    pub source: Option<String>,
    pub schema_capture: bool,
}

pub async fn run(config: &Config, args: SetupArgs) -> anyhow::Result<()> {
    let settings = SourceSettings::from_config(config, args.source)?;
    let tables = match &args.tables {
        Some(list) => parse_tables(std::slice::from_ref(list))?,
        None => parse_tables(&config.source.tables)?,
    };
    let opts = SetupOptions {
        create_slot: args.create_slot,
        create_user: args.create_user,
        user: args.user.unwrap_or_else(|| config.source.user.clone()),
        password: std::env::var("SYNCDATA_USER_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
        tables,
        schema_capture: args.schema_capture,
    };
    for line in setup(&settings, &opts).await? {
        outln!("{line}")?;
    }
    Ok(())
}
