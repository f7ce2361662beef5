//! Where the consumer applies changes: the local PostgreSQL database (the
//! default: `pg_*` keys) or a SQLite file (docs/sqlite.md), chosen by the
//! top-level `target` key, as a URL or a `[target]` section:
//!
//! ```toml
//! target = "sqlite:///home/me/app.db"
//! # or
//! [target]
//! url = "sqlite:///home/me/app.db"
//! synchronous = "normal"   # off | normal | full | extra
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TargetConfig {
    Url(String),
    Section(TargetSection),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// `postgres` (the `pg_*` keys) or `sqlite:///path/app.db`.
    pub url: String,
    /// SQLite's `synchronous` pragma: `normal` (default) or `full`.
    #[serde(default = "default_synchronous")]
    pub synchronous: String,
}

fn default_synchronous() -> String {
    "normal".to_owned()
}

/// A SQLite target's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteTarget {
    pub path: PathBuf,
    pub synchronous: String,
}

/// `sqlite:///abs/path`, `sqlite://rel/path` or `sqlite:path` → the path.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    (!rest.is_empty()).then(|| PathBuf::from(rest))
}

impl TargetConfig {
    fn url(&self) -> &str {
        match self {
            TargetConfig::Url(u) => u,
            TargetConfig::Section(s) => &s.url,
        }
    }

    /// The SQLite settings, None for PostgreSQL; an error for a URL that is
    /// neither.
    pub fn sqlite(&self) -> Result<Option<SqliteTarget>, String> {
        let url = self.url().trim();
        if matches!(url, "postgres" | "postgresql" | "") {
            return Ok(None);
        }
        let path = sqlite_path(url).ok_or_else(|| {
            format!("{url:?} is neither \"postgres\" nor a sqlite:///path/app.db URL")
        })?;
        let synchronous = match self {
            TargetConfig::Url(_) => default_synchronous(),
            TargetConfig::Section(s) => s.synchronous.to_ascii_lowercase(),
        };
        if !matches!(synchronous.as_str(), "off" | "normal" | "full" | "extra") {
            return Err(format!(
                "synchronous {synchronous:?}: must be off, normal, full or extra"
            ));
        }
        Ok(Some(SqliteTarget { path, synchronous }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_sections() {
        let t = TargetConfig::Url("sqlite:///tmp/app.db".into());
        assert_eq!(
            t.sqlite().unwrap().unwrap().path,
            PathBuf::from("/tmp/app.db")
        );
        assert!(TargetConfig::Url("postgres".into())
            .sqlite()
            .unwrap()
            .is_none());
        assert!(TargetConfig::Url("mysql://x".into()).sqlite().is_err());
        let s = TargetConfig::Section(TargetSection {
            url: "sqlite:app.db".into(),
            synchronous: "FULL".into(),
        });
        assert_eq!(s.sqlite().unwrap().unwrap().synchronous, "full");
    }
}
