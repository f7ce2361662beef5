//! The quarantine: archive lines that cannot be published, kept on the
//! production side in `<state_dir>/quarantine.jsonl` with where they were and
//! why. Invariant: each line is recorded (and logged, and counted) once, even
//! when a rewind or a restart reads it again; entries appear in archive order.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tail::RAW_PREFIX_MAX;

pub const FILE_NAME: &str = "quarantine.jsonl";

/// Longest reason kept; reasons come from parsers and are bounded here so a
/// hostile line cannot make the log or the quarantine line huge.
const REASON_MAX: usize = 512;

/// One quarantined line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub file: String,
    /// Byte offset of the line in `file`.
    pub offset: u64,
    /// 1-based line number in `file`.
    pub line: u64,
    pub reason: String,
    /// Length of the line in bytes (without its newline).
    pub bytes: u64,
    /// When it was quarantined (RFC 3339, UTC).
    pub at: String,
    /// The line itself, at most 64 KiB of it (invalid UTF-8 replaced). It may
    /// hold personal data: it stays here and is never logged.
    #[serde(default)]
    pub raw: String,
}

impl Entry {
    pub fn new(file: &str, offset: u64, line: u64, reason: &str, bytes: u64, raw: &[u8]) -> Entry {
        let reason = match reason.char_indices().nth(REASON_MAX) {
            Some((cut, _)) => format!("{}…", &reason[..cut]),
            None => reason.to_owned(),
        };
        let raw = &raw[..raw.len().min(RAW_PREFIX_MAX)];
        Entry {
            file: file.to_owned(),
            offset,
            line,
            reason,
            bytes,
            at: now_rfc3339(),
            raw: String::from_utf8_lossy(raw).into_owned(),
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("cannot read quarantine {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot append to quarantine {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What identifies an entry when the file is scanned.
#[derive(Deserialize)]
struct Key {
    file: String,
    line: u64,
}

/// The quarantine file, open for appending.
#[derive(Debug)]
pub struct Quarantine {
    path: PathBuf,
    /// The last (file, line) recorded. Lines are read in (file, line) order,
    /// so anything at or before it is already recorded.
    last: Option<(String, u64)>,
    count: u64,
    /// The file ends in a torn entry (a crash mid-append): start a new line.
    torn: bool,
    /// Rotation: past `max_bytes` the file becomes `quarantine.jsonl.1`
    /// (older ones shift up), keeping `keep` rotated files.
    max_bytes: u64,
    keep: u32,
}

/// The name of the `n`-th rotated quarantine file (1 is the newest).
pub fn rotated_name(n: u32) -> String {
    format!("{FILE_NAME}.{n}")
}

/// The quarantine files of `state_dir`, oldest first (rotated ones, then
/// the current one), that exist.
fn files(state_dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u32 = name.strip_prefix(&format!("{FILE_NAME}."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let current = state_dir.join(FILE_NAME);
    if current.exists() {
        out.push(current);
    }
    out
}

/// How many quarantine files `state_dir` holds and their total bytes.
pub fn disk_usage(state_dir: &Path) -> (usize, u64) {
    let files = files(state_dir);
    let bytes = files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    (files.len(), bytes)
}

impl Quarantine {
    /// Opens (without creating) the quarantine in `state_dir`, learning what
    /// it already holds.
    pub fn open(state_dir: &Path) -> Result<Quarantine, QuarantineError> {
        let path = state_dir.join(FILE_NAME);
        let mut q = Quarantine {
            path,
            last: None,
            count: 0,
            torn: false,
            max_bytes: u64::MAX,
            keep: 0,
        };
        // Rotated files too: what they hold is recorded (and counted).
        for file in files(state_dir) {
            let current = file == q.path;
            scan(&file, |key, complete| {
                if current {
                    q.torn = !complete;
                }
                if let Some(key) = key {
                    q.count += 1;
                    if q.last
                        .as_ref()
                        .is_none_or(|(f, l)| (f.as_str(), *l) < (key.file.as_str(), key.line))
                    {
                        q.last = Some((key.file, key.line));
                    }
                }
            })?;
        }
        Ok(q)
    }

    /// Rotates the file past `max_bytes`, keeping `keep` rotated files
    /// (the oldest beyond go): the quarantine's disk use stays under about
    /// `max_bytes × (keep + 1)`.
    pub fn set_limits(&mut self, max_bytes: u64, keep: u32) {
        self.max_bytes = max_bytes;
        self.keep = keep;
    }

    /// Rotates when appending `next` bytes would pass the size limit.
    fn rotate_if_full(&mut self, next: u64) -> Result<(), QuarantineError> {
        let size = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(_) => return Ok(()),
        };
        if size == 0 || size.saturating_add(next) <= self.max_bytes {
            return Ok(());
        }
        let err = |source| QuarantineError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_owned();
        // The oldest beyond `keep` go; the others shift up by one.
        for old in files(&dir) {
            let n = old
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&format!("{FILE_NAME}.")))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(n) = n {
                if n >= self.keep {
                    std::fs::remove_file(&old).map_err(err)?;
                    metrics::counter!("syncdata_producer_quarantine_dropped_files_total")
                        .increment(1);
                } else {
                    std::fs::rename(&old, dir.join(rotated_name(n + 1))).map_err(err)?;
                }
            }
        }
        if self.keep == 0 {
            std::fs::remove_file(&self.path).map_err(err)?;
        } else {
            std::fs::rename(&self.path, dir.join(rotated_name(1))).map_err(err)?;
        }
        self.torn = false;
        tracing::info!(path = %self.path.display(), bytes = size, keep = self.keep, "quarantine rotated");
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries in the file.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the line at (file, line) is already recorded.
    pub fn contains(&self, file: &str, line: u64) -> bool {
        self.last
            .as_ref()
            .is_some_and(|(f, l)| (file, line) <= (f.as_str(), *l))
    }

    /// Records `entry` durably unless it is already recorded; logs and counts
    /// it only then. Returns whether it was added.
    pub fn add(&mut self, entry: &Entry) -> Result<bool, QuarantineError> {
        if self.contains(&entry.file, entry.line) {
            return Ok(false);
        }
        let mut bytes = Vec::with_capacity(entry.raw.len() + 256);
        if self.torn {
            bytes.push(b'\n');
        }
        serde_json::to_writer(&mut bytes, entry).expect("an entry always serializes");
        bytes.push(b'\n');
        self.rotate_if_full(bytes.len() as u64)?;
        if !self.torn && bytes.first() == Some(&b'\n') {
            bytes.remove(0);
        }
        let written = syncdata_core::private_fs::open_options()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_data()
            });
        if let Err(source) = written {
            // Part of the entry may be on disk.
            self.torn = true;
            return Err(QuarantineError::Write {
                path: self.path.clone(),
                source,
            });
        }
        self.torn = false;
        self.count += 1;
        self.last = Some((entry.file.clone(), entry.line));
        tracing::warn!(
            file = %entry.file,
            line = entry.line,
            offset = entry.offset,
            bytes = entry.bytes,
            reason = %entry.reason,
            "quarantined an archive line that cannot be published"
        );
        metrics::counter!("syncdata_producer_quarantined_total").increment(1);
        Ok(true)
    }
}

/// What `status` shows: how many entries, and the last few.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub recent: Vec<Entry>,
}

/// Reads the quarantine in `state_dir` without changing it.
pub fn summary(state_dir: &Path, last: usize) -> Result<Summary, QuarantineError> {
    let mut count = 0;
    let mut recent = VecDeque::with_capacity(last + 1);
    for path in files(state_dir) {
        scan_entries(&path, |entry| {
            count += 1;
            recent.push_back(entry);
            if recent.len() > last {
                recent.pop_front();
            }
        })?;
    }
    Ok(Summary {
        count,
        recent: recent.into(),
    })
}

fn scan_entries(path: &Path, mut each: impl FnMut(Entry)) -> Result<(), QuarantineError> {
    read_lines(path, |line, _| {
        if let Ok(entry) = serde_json::from_slice::<Entry>(line) {
            each(entry);
        }
    })
}

/// Calls `each` with the key of every entry (None for an unreadable line)
/// and whether the line ended with its newline.
fn scan(path: &Path, mut each: impl FnMut(Option<Key>, bool)) -> Result<(), QuarantineError> {
    read_lines(path, |line, complete| {
        each(serde_json::from_slice::<Key>(line).ok(), complete)
    })
}

fn read_lines(path: &Path, mut each: impl FnMut(&[u8], bool)) -> Result<(), QuarantineError> {
    let err = |source| QuarantineError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(err)? == 0 {
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        let body = if complete {
            &line[..line.len() - 1]
        } else {
            &line[..]
        };
        each(body, complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &str, line: u64) -> Entry {
        Entry::new(file, line * 10, line, "not a JSON record", 3, b"bad")
    }

    #[test]
    fn re_reading_a_line_does_not_add_it_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Quarantine::open(dir.path()).unwrap();
        assert!(!q.path().exists(), "opening creates nothing");
        assert!(q.add(&entry("a", 3)).unwrap());
        assert!(q.add(&entry("a", 7)).unwrap());
        // A rewind reads them again.
        assert!(!q.add(&entry("a", 3)).unwrap());
        assert!(!q.add(&entry("a", 7)).unwrap());
        // So does a restart.
        let mut q = Quarantine::open(dir.path()).unwrap();
        assert_eq!(q.count(), 2);
        assert!(!q.add(&entry("a", 3)).unwrap());
        assert!(!q.add(&entry("a", 7)).unwrap());
        assert!(q.add(&entry("a", 8)).unwrap());
        assert!(q.add(&entry("b", 1)).unwrap());
        assert!(!q.add(&entry("a", 9)).unwrap(), "file a is behind b");
        let s = summary(dir.path(), 10).unwrap();
        assert_eq!(s.count, 4);
        let keys: Vec<_> = s.recent.iter().map(|e| (e.file.as_str(), e.line)).collect();
        assert_eq!(keys, [("a", 3), ("a", 7), ("a", 8), ("b", 1)]);
        assert_eq!(s.recent[0].raw, "bad");
    }

    #[test]
    fn a_torn_entry_is_ignored_and_the_next_starts_on_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Quarantine::open(dir.path()).unwrap();
        q.add(&entry("a", 1)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(q.path())
            .unwrap();
        f.write_all(br#"{"file":"a","off"#).unwrap();
        let mut q = Quarantine::open(dir.path()).unwrap();
        assert_eq!(q.count(), 1);
        assert!(q.add(&entry("a", 2)).unwrap());
        let s = summary(dir.path(), 10).unwrap();
        assert_eq!(s.count, 2);
        assert_eq!(s.recent[1].line, 2);
    }

    #[test]
    fn rotation_bounds_the_files_and_keeps_what_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Quarantine::open(dir.path()).unwrap();
        q.set_limits(1000, 2);
        for line in 1..=100 {
            assert!(q.add(&entry("f", line)).unwrap());
        }
        let (files, bytes) = disk_usage(dir.path());
        assert_eq!(files, 3, "current plus 2 rotated");
        assert!(bytes <= 3 * 1000, "{bytes}");
        // A restart still knows what was recorded (the current file may be
        // small or fresh).
        let mut q = Quarantine::open(dir.path()).unwrap();
        assert!(!q.add(&entry("f", 100)).unwrap());
        assert!(q.add(&entry("f", 101)).unwrap());
        let s = summary(dir.path(), 3).unwrap();
        assert_eq!(s.recent.last().unwrap().line, 101);
        assert!(s.count < 100, "old entries went: {}", s.count);
    }

    #[test]
    fn summary_keeps_the_last_entries_and_raw_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Quarantine::open(dir.path()).unwrap();
        for line in 1..=15 {
            q.add(&entry("f", line)).unwrap();
        }
        let huge = vec![b'q'; RAW_PREFIX_MAX * 2];
        let big = Entry::new("g", 0, 1, &"r".repeat(10_000), huge.len() as u64, &huge);
        assert_eq!(big.raw.len(), RAW_PREFIX_MAX);
        assert!(big.reason.chars().count() <= REASON_MAX + 1);
        q.add(&big).unwrap();
        let s = summary(dir.path(), 10).unwrap();
        assert_eq!(s.count, 16);
        assert_eq!(s.recent.len(), 10);
        assert_eq!(s.recent[0].line, 7);
        assert_eq!(s.recent[9].file, "g");
        assert_eq!(s.recent[9].bytes, (RAW_PREFIX_MAX * 2) as u64);
    }
}
