//! `syncdata config check`: load and validate the configuration (file plus
//! environment) without connecting anywhere; print the keys `syncdata`
//! reads, with their effective values, as TOML, secrets redacted (the
//! producer's sections are `syncdata-producer config check`'s business).

use syncdata_core::config::{Config, Role};
use syncdata_core::outln;

pub fn check(config: &Config) -> anyhow::Result<()> {
    outln!("configuration OK (the keys syncdata reads, with their effective values)")?;
    outln!("{}", config.effective_toml(Role::Consumer).trim_end())?;
    Ok(())
}
