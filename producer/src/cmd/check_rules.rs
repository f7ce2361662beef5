//! `syncdata-producer check-rules`: the sanitization rules against the
//! source schema (see [`crate::sanitize::check`]). Exits non-zero on any
//! error.

use std::path::PathBuf;

use anyhow::Context;
use syncdata_core::config::Config;
use syncdata_core::out;

use crate::sanitize::check;

/// Runs the check; `config` is needed only for what `rules` and `source`
/// leave out (so `--rules R --source S` works without a configuration).
pub async fn run(
    config: impl FnOnce() -> anyhow::Result<Config>,
    rules: Option<PathBuf>,
    source: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (rules, source) = match (rules, source) {
        (Some(r), Some(s)) => (r, s),
        (rules, source) => {
            let config = config()?;
            let rules = rules
                .or(config.producer.rules_file.clone())
                .context("no rules file: pass --rules or set producer.rules_file")?;
            let source = source
                .or(config.producer.source_url.clone())
                .context("no source database: pass --source or set producer.source_url")?;
            (rules, source)
        }
    };
    let report = check::check_rules(&rules, &source).await?;
    out!("{}", check::render(&report, json))?;
    anyhow::ensure!(
        report.errors() == 0,
        "{} has {} error(s)",
        rules.display(),
        report.errors()
    );
    Ok(())
}
