//! `syncdata-producer config check`: the configuration as the producer reads
//! it, validated (including `archive_dir`), secrets redacted.

use syncdata_core::config::Config;
use syncdata_core::outln;

pub fn check(config: &Config) -> anyhow::Result<()> {
    config.archive_dir()?;
    outln!(
        "{}",
        syncdata_core::redact::redact(&format!("configuration OK\n{config:#?}"))
    )?;
    Ok(())
}
