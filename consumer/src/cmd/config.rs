//! `syncdata config check`: load and validate the configuration (file plus
//! environment) without connecting anywhere; print it with secrets redacted.

use syncdata_core::config::Config;
use syncdata_core::outln;

pub fn check(config: &Config) -> anyhow::Result<()> {
    outln!("configuration OK")?;
    outln!("{}", syncdata_core::redact::redact(&format!("{config:#?}")))?;
    Ok(())
}
