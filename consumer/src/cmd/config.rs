//! `syncdata config check`: load and validate the configuration (file plus
//! environment) without connecting anywhere; print it with secrets redacted.

use syncdata_core::config::Config;

pub fn check(config: &Config) -> anyhow::Result<()> {
    println!("configuration OK");
    println!("{}", syncdata_core::redact::redact(&format!("{config:#?}")));
    Ok(())
}
