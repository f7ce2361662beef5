//! Sanitization before publish: a rules file says, per table, whether it is
//! replicated or excluded and, per column, how its values are transformed.
//!
//! Invariants (fail closed):
//! - a record is published only after every column it carries, in `data`
//!   and `old_keys` alike, went through its column's rule;
//! - a column without a rule, a table without an entry (by default) or a
//!   value its transform cannot handle halts that table: its records wait
//!   (see the publisher), nothing is published half-sanitized;
//! - excluded tables are never published;
//! - keyed transforms (hmac, fake, date_shift) need the secret key, which
//!   never comes from the rules file; without it the producer does not start.
//!
//! The rules file is re-read when it changes; each successful load is a new
//! *generation*, which is when halted tables are tried again.

pub mod check;
pub mod dates;
pub mod fake;
pub mod json_path;
pub mod key;
pub mod rules;
pub mod transform;

use std::path::{Path, PathBuf};
use std::time::Duration;

use syncdata_core::record::Record;
use tokio::time::Instant;

pub use key::{KeyError, SecretKey, KEY_ENV};
pub use rules::{Problem, Rules, Severity};
pub use transform::{CompiledRules, HaltReason, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum SanitizeError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rules file {path} is invalid:\n{}", list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and parses a rules file; errors unless it is free of errors.
/// Warnings are returned with the rules.
pub fn load_rules(path: &Path) -> Result<(Rules, Vec<Problem>), SanitizeError> {
    let text = std::fs::read_to_string(path).map_err(|source| SanitizeError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_rules(path, &text)
}

fn parse_rules(path: &Path, text: &str) -> Result<(Rules, Vec<Problem>), SanitizeError> {
    match rules::parse(text) {
        (Some(r), problems) => Ok((r, problems)),
        (None, problems) => Err(SanitizeError::Invalid {
            path: path.to_owned(),
            problems,
        }),
    }
}

/// The rules in force, reloaded when the file changes.
pub struct Sanitizer {
    path: PathBuf,
    key: Option<SecretKey>,
    compiled: CompiledRules,
    generation: u64,
    /// The bytes last read (whether they loaded or not).
    seen: Vec<u8>,
    reload_every: Duration,
    next_check: Instant,
}

impl std::fmt::Debug for Sanitizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sanitizer")
            .field("path", &self.path)
            .field("generation", &self.generation)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Sanitizer {
    /// Loads the rules at startup: an unreadable or invalid file, or keyed
    /// transforms without a key, are errors (the producer does not start).
    pub fn load(
        path: &Path,
        key: Option<SecretKey>,
        reload_every: Duration,
    ) -> Result<Sanitizer, SanitizeError> {
        let seen = std::fs::read(path).map_err(|source| SanitizeError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (rules, warnings) = parse_rules(path, &String::from_utf8_lossy(&seen))?;
        for w in &warnings {
            tracing::warn!(rules = %path.display(), "{w}");
        }
        let compiled = CompiledRules::new(&rules, key.as_ref())?;
        tracing::info!(
            rules = %path.display(),
            tables = rules.tables.len(),
            key = key.as_ref().map(SecretKey::fingerprint).as_deref().unwrap_or("none"),
            "sanitization rules loaded"
        );
        Ok(Sanitizer {
            path: path.to_owned(),
            key,
            compiled,
            generation: 1,
            seen,
            reload_every,
            next_check: Instant::now() + reload_every,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bumped by every successful reload.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn apply(&self, record: &mut Record) -> Result<Verdict, HaltReason> {
        self.compiled.apply(record)
    }

    /// See [`CompiledRules::keeps_every_column`].
    pub fn keeps_every_column(&self, schema: &str, table: &str) -> bool {
        self.compiled.keeps_every_column(schema, table)
    }

    /// When the file is due to be checked again.
    pub fn next_check(&self) -> Instant {
        self.next_check
    }

    /// Re-reads the rules file when due. Returns true when new rules took
    /// effect. A file that is missing, invalid or needs a key we lack is
    /// reported once and the rules in force stay.
    pub fn poll(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next_check {
            return false;
        }
        self.next_check = now + self.reload_every;
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(err) => {
                if !self.seen.is_empty() {
                    tracing::error!(rules = %self.path.display(), error = %err, "cannot read the rules file; the rules in force stay");
                    self.seen.clear();
                }
                return false;
            }
        };
        if bytes == self.seen {
            return false;
        }
        self.seen = bytes;
        let text = String::from_utf8_lossy(&self.seen).into_owned();
        let loaded = parse_rules(&self.path, &text).and_then(|(rules, warnings)| {
            let compiled = CompiledRules::new(&rules, self.key.as_ref())?;
            Ok((compiled, warnings))
        });
        match loaded {
            Ok((compiled, warnings)) => {
                for w in &warnings {
                    tracing::warn!(rules = %self.path.display(), "{w}");
                }
                self.compiled = compiled;
                self.generation += 1;
                tracing::info!(rules = %self.path.display(), generation = self.generation, "sanitization rules reloaded");
                true
            }
            Err(err) => {
                tracing::error!(rules = %self.path.display(), error = %err, "the changed rules file is not usable; the rules in force stay");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reloads_on_change_and_keeps_rules_when_the_new_file_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "[tables.t.columns]\nid = \"keep\"\n").unwrap();
        let mut s = Sanitizer::load(&path, None, Duration::from_millis(1)).unwrap();
        let mut rec =
            Record::parse(br#"{"table":"t","op":"INSERT","lsn":"0/1","data":{"id":1,"new":2}}"#)
                .unwrap();
        assert!(s.apply(&mut rec.clone()).is_err());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!s.poll(), "unchanged");
        std::fs::write(
            &path,
            "[tables.t.columns]\nid = \"keep\"\nnew = \"scramble\"\n",
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!s.poll(), "invalid: the old rules stay");
        assert_eq!(s.generation(), 1);
        std::fs::write(
            &path,
            "[tables.t.columns]\nid = \"keep\"\nnew = { transform = \"hmac\" }\n",
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!s.poll(), "keyed transforms without a key are refused");
        std::fs::write(&path, "[tables.t.columns]\nid = \"keep\"\nnew = \"null\"\n").unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(s.poll());
        assert_eq!(s.generation(), 2);
        assert_eq!(s.apply(&mut rec), Ok(Verdict::Publish));
        assert_eq!(rec.data.unwrap()["new"].raw(), "null");
    }

    #[test]
    fn startup_refuses_bad_rules_and_missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        let err = Sanitizer::load(&path, None, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("cannot read rules file"), "{err}");
        std::fs::write(&path, "[tables.t.columns]\nid = \"scramble\"\nx = 1\n").unwrap();
        let err = Sanitizer::load(&path, None, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("public.t.id: unknown transform") && err.contains("public.t.x"),
            "{err}"
        );
        std::fs::write(
            &path,
            "[tables.t.columns]\nid = { transform = \"fake\", kind = \"name\" }\n",
        )
        .unwrap();
        let err = Sanitizer::load(&path, None, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains(KEY_ENV), "{err}");
    }
}
