//! `syncdata-producer config check`: the configuration as the producer reads
//! it, validated (including `archive_dir`, and the sanitization rules and
//! key as `run` loads them: a missing rules file or key is an error here
//! too), secrets redacted.

use syncdata_core::config::{Config, Role};
use syncdata_core::outln;

pub fn check(config: &Config) -> anyhow::Result<()> {
    config.archive_dir()?;
    // Fails as `run` would: no rules without the opt-out, a rules file that
    // is missing or invalid, a key its keyed transforms need.
    super::run::load_sanitizer(config)?;
    outln!("configuration OK (the keys syncdata-producer reads, with their effective values)")?;
    outln!("{}", config.effective_toml(Role::Producer).trim_end())?;
    Ok(())
}
