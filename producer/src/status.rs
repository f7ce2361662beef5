//! `syncdata-producer status`: where the producer stands, read from the
//! archive directory and the state directory alone. Invariant: read-only,
//! and needs no NATS server.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use syncdata_core::config::{Config, ConfigError};

use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::quarantine::{self, QuarantineError};
use crate::tail::{self, ArchiveError};

/// Quarantine entries shown.
const RECENT: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub archive_dir: PathBuf,
    pub state_dir: PathBuf,
    /// "rules" (with `rules_file`), "off" (`allow_unsanitized = true`, no
    /// rules) or "refused" (neither: `run` will not start).
    pub sanitization: &'static str,
    pub rules_file: Option<PathBuf>,
    /// None: nothing published yet; the producer starts with the first file.
    pub checkpoint: Option<Checkpoint>,
    pub files: usize,
    /// Files named after the checkpoint's file: not started yet.
    pub files_after_checkpoint: usize,
    /// What is left to publish past the checkpoint, across every file.
    pub backlog: crate::backlog::Backlog,
    pub quarantined: u64,
    /// The last quarantine entries, oldest first (without the raw lines).
    pub recent_quarantine: Vec<QuarantinedLine>,
    /// Archive files whose names sort before this one are no longer needed
    /// (the older of the checkpoint's file and every halted table's file);
    /// None: keep every file (nothing published yet).
    pub safe_to_delete_before: Option<String>,
    /// Halted tables (`halted_tables`) whose held records start in an
    /// archive file that is gone: they cannot resume until it is restored.
    pub halts_missing_file: Vec<HaltStatus>,
    /// Quarantine files (current plus rotated) and their bytes.
    pub quarantine_files: usize,
    pub quarantine_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HaltStatus {
    pub table: String,
    pub file: String,
    pub line: u64,
    pub reason: String,
    #[serde(skip)]
    pub file_missing: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantinedLine {
    pub file: String,
    pub line: u64,
    pub offset: u64,
    pub reason: String,
    pub at: String,
}

pub fn status(config: &Config) -> Result<Status, StatusError> {
    let archive_dir = config.archive_dir()?.to_owned();
    let state_dir = config.producer_state_dir()?;
    let state = CheckpointStore::new(&state_dir).load_state()?;
    let checkpoint = state.as_ref().map(|s| s.position.clone());
    let halted: Vec<HaltStatus> = state
        .as_ref()
        .map(|s| {
            s.halted
                .iter()
                .map(|h| HaltStatus {
                    table: format!("{}.{}", h.schema, h.table),
                    file: h.file.clone(),
                    line: h.line,
                    reason: h.reason.clone(),
                    file_missing: !archive_dir.join(&h.file).exists(),
                })
                .collect()
        })
        .unwrap_or_default();
    let safe_to_delete_before = checkpoint.as_ref().map(|c| {
        halted
            .iter()
            .map(|h| h.file.clone())
            .chain(std::iter::once(c.file.clone()))
            .min()
            .expect("at least the checkpoint's file")
    });
    let (quarantine_files, quarantine_bytes) = quarantine::disk_usage(&state_dir);
    let names = tail::list(&archive_dir)?;
    let files_after_checkpoint = match &checkpoint {
        Some(c) => names.iter().filter(|n| **n > c.file).count(),
        None => names.len(),
    };
    let summary = quarantine::summary(&state_dir, RECENT)?;
    let backlog = crate::backlog::measure(&archive_dir, checkpoint.as_ref()).map_err(|source| {
        StatusError::Archive(ArchiveError::List {
            path: archive_dir.clone(),
            source,
        })
    })?;
    Ok(Status {
        archive_dir,
        state_dir,
        sanitization: sanitization_mode(config),
        rules_file: config.producer.rules_file.clone(),
        checkpoint,
        safe_to_delete_before,
        halts_missing_file: halted.into_iter().filter(|h| h.file_missing).collect(),
        quarantine_files,
        quarantine_bytes,
        files: names.len(),
        files_after_checkpoint,
        backlog,
        quarantined: summary.count,
        recent_quarantine: summary
            .recent
            .into_iter()
            .map(|e| QuarantinedLine {
                file: e.file,
                line: e.line,
                offset: e.offset,
                reason: e.reason,
                at: e.at,
            })
            .collect(),
    })
}

/// The sanitization mode the configuration gives `run`.
pub fn sanitization_mode(config: &Config) -> &'static str {
    match (
        &config.producer.rules_file,
        config.producer.allow_unsanitized,
    ) {
        (Some(_), _) => "rules",
        (None, true) => "off",
        (None, false) => "refused",
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "archive dir:   {}", self.archive_dir.display())?;
        writeln!(f, "state dir:     {}", self.state_dir.display())?;
        match (self.sanitization, &self.rules_file) {
            ("rules", Some(r)) => writeln!(f, "sanitization:  on (rules {})", r.display())?,
            ("off", _) => writeln!(
                f,
                "sanitization:  OFF (producer.allow_unsanitized = true): records are published unsanitized"
            )?,
            _ => writeln!(
                f,
                "sanitization:  not configured: `run` refuses to start (set producer.rules_file)"
            )?,
        }
        match &self.checkpoint {
            Some(c) => writeln!(
                f,
                "checkpoint:    {} offset {} line {}",
                c.file, c.offset, c.line
            )?,
            None => writeln!(f, "checkpoint:    none (starts with the first file)")?,
        }
        writeln!(
            f,
            "files:         {} ({} after the checkpoint)",
            self.files, self.files_after_checkpoint
        )?;
        writeln!(
            f,
            "backlog:       {} records, {} bytes in {} file(s)",
            self.backlog.records, self.backlog.bytes, self.backlog.files
        )?;
        match &self.safe_to_delete_before {
            Some(file) => writeln!(
                f,
                "safe to delete: archive files named before {file} (older than the checkpoint and every halt)"
            )?,
            None => writeln!(f, "safe to delete: nothing yet")?,
        }
        for h in &self.halts_missing_file {
            writeln!(
                f,
                "ERROR:         halted table {} needs archive file {} (from line {}), which is missing: restore it",
                h.table,
                h.file,
                h.line + 1
            )?;
        }
        writeln!(
            f,
            "quarantined:   {} ({} file(s), {} bytes)",
            self.quarantined, self.quarantine_files, self.quarantine_bytes
        )?;
        for q in &self.recent_quarantine {
            writeln!(f, "  {}:{} {} ({})", q.file, q.line, q.reason, q.at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::{Entry, Quarantine};

    #[test]
    fn reports_checkpoint_files_and_quarantine_without_nats() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path();
        for name in ["a", "b", "c", "d.tmp"] {
            std::fs::write(archive.join(name), b"").unwrap();
        }
        let config = Config::from_toml(&format!(
            "pg_database = \"x\"\narchive_dir = {:?}\n",
            archive.display().to_string()
        ))
        .unwrap();
        let s = status(&config).unwrap();
        assert_eq!(
            (s.files, s.files_after_checkpoint, s.quarantined),
            (3, 3, 0)
        );
        assert!(s.checkpoint.is_none());

        let state = archive.join(".syncdata");
        std::fs::create_dir(&state).unwrap();
        CheckpointStore::new(&state)
            .save(&Checkpoint {
                file: "a".into(),
                offset: 5,
                line: 1,
            })
            .unwrap();
        let mut q = Quarantine::open(&state).unwrap();
        q.add(&Entry::new("a", 0, 1, "not a JSON record", 3, b"bad"))
            .unwrap();
        let s = status(&config).unwrap();
        assert_eq!(
            (s.files, s.files_after_checkpoint, s.quarantined),
            (3, 2, 1)
        );
        let text = s.to_string();
        assert!(text.contains("checkpoint:    a offset 5 line 1"), "{text}");
        assert!(text.contains("a:1 not a JSON record"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["checkpoint"]["offset"], 5);
        assert!(!json.to_string().contains("bad\""), "raw lines stay out");
    }
}
