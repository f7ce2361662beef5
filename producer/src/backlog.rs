//! The producer's backlog: what the archive holds past the checkpoint, in
//! files, bytes and records (complete lines), across every file. For
//! `syncdata-producer status` and the `syncdata_producer_backlog_*` gauges.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::tail;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// Files with anything left to publish (the checkpoint's included).
    pub files: u64,
    pub bytes: u64,
    /// Complete lines left (records, blank lines and bad lines alike).
    pub records: u64,
}

/// Measures the backlog of `dir` after `checkpoint` (None: everything).
/// A file that vanishes meanwhile (cleaned up) counts as empty.
pub fn measure(dir: &Path, checkpoint: Option<&Checkpoint>) -> io::Result<Backlog> {
    let names = tail::list(dir).map_err(|e| io::Error::other(e.to_string()))?;
    let mut b = Backlog::default();
    for name in names {
        let from = match checkpoint {
            Some(c) if name < c.file => continue,
            Some(c) if name == c.file => c.offset,
            _ => 0,
        };
        let (bytes, lines) = match count_from(&dir.join(&name), from) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if bytes > 0 {
            b.files += 1;
            b.bytes += bytes;
            b.records += lines;
        }
    }
    Ok(b)
}

/// Bytes from `offset` to the end, and the newlines among them.
fn count_from(path: &Path, offset: u64) -> io::Result<(u64, u64)> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut bytes, mut lines) = (0u64, 0u64);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((bytes, lines));
        }
        bytes += n as u64;
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
    }
}

/// Describes the producer's metrics (HELP text) and sets the gauges that
/// have no label to their start value, so each exists from the start.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, gauge};
    describe_gauge!(
        "syncdata_producer_backlog_bytes",
        "Bytes in the archive past the checkpoint, across every file"
    );
    describe_gauge!(
        "syncdata_producer_backlog_records",
        "Lines (records) in the archive past the checkpoint, across every file"
    );
    describe_gauge!(
        "syncdata_producer_backlog_files",
        "Archive files with anything left to publish"
    );
    describe_gauge!(
        "syncdata_producer_halted_tables",
        "Tables the producer holds back (sanitization halted them; see `syncdata-producer status`)"
    );
    describe_gauge!(
        "syncdata_producer_checkpoint_offset",
        "Byte offset of the checkpoint inside its file"
    );
    describe_gauge!(
        "syncdata_producer_sanitization_enabled",
        "1 when records are sanitized before publishing, 0 when sanitization is off"
    );
    describe_counter!(
        "syncdata_producer_published_total",
        "Messages published and acknowledged by JetStream (a chunk of many records, or one record sent alone, is one message)"
    );
    describe_counter!(
        "syncdata_producer_records_total",
        "Records published and acknowledged by JetStream (every record of an acknowledged chunk, in every mode)"
    );
    describe_counter!(
        "syncdata_producer_chunks_total",
        "Chunks handed to JetStream (counted when sent, before their acknowledgement)"
    );
    describe_counter!(
        "syncdata_producer_duplicates_total",
        "Messages JetStream recognised as duplicates (re-read after a restart)"
    );
    describe_counter!(
        "syncdata_producer_failures_total",
        "Failed publish attempts (retried)"
    );
    describe_counter!(
        "syncdata_producer_quarantined_total",
        "Archive lines quarantined (not a record)"
    );
    describe_counter!(
        "syncdata_producer_held_total",
        "Records held back behind a halted table"
    );
    describe_counter!(
        "syncdata_producer_excluded_total",
        "Records of excluded tables, never published"
    );
    for g in [
        "syncdata_producer_backlog_bytes",
        "syncdata_producer_backlog_records",
        "syncdata_producer_backlog_files",
        "syncdata_producer_halted_tables",
        "syncdata_producer_checkpoint_offset",
    ] {
        gauge!(g).set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_past_the_checkpoint_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let names = tail_names();
        std::fs::write(dir.path().join(&names[0]), "a\nbb\n").unwrap();
        std::fs::write(dir.path().join(&names[1]), "ccc\ndd\ne").unwrap();
        let all = measure(dir.path(), None).unwrap();
        assert_eq!(
            all,
            Backlog {
                files: 2,
                bytes: 5 + 8,
                records: 4
            }
        );
        let cp = Checkpoint {
            file: names[0].clone(),
            offset: 2,
            line: 1,
        };
        let rest = measure(dir.path(), Some(&cp)).unwrap();
        assert_eq!(
            rest,
            Backlog {
                files: 2,
                bytes: 3 + 8,
                records: 3
            }
        );
        let cp = Checkpoint {
            file: names[1].clone(),
            offset: 8,
            line: 2,
        };
        assert_eq!(measure(dir.path(), Some(&cp)).unwrap(), Backlog::default());
    }

    /// Two names `tail::list` accepts, in order.
    fn tail_names() -> Vec<String> {
        vec![
            "0000000000000001-0000000000000002.jsonl".to_owned(),
            "0000000000000003-0000000000000004.jsonl".to_owned(),
        ]
    }
}
