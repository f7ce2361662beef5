//! Chunks: many records of one table in one message. The producer reads the
//! archive in runs (as far as it can without waiting) and publishes each
//! table's records of a run in chunks of at most `producer.chunk_records`
//! records and `producer.chunk_bytes` bytes; a chunk never waits to fill.
//!
//! Wire format (a chunk is told from a record or a large-record pointer by
//! its first bytes, without parsing the rest):
//!
//! ```text
//! {"syncdata_chunk":{"records":3}}\n
//! <record JSON>\n
//! <record JSON>\n
//! <record JSON>
//! ```
//!
//! A record's JSON never holds a raw newline (serde_json escapes it), so the
//! lines are the records. A chunk is signed as a whole, like any message
//! (`crate::signature`), and never exceeds the server's `max_payload`: a
//! record too large for a chunk is published alone, as before (and through
//! the object store when too large for a message, `crate::large`).
//!
//! Identity: a chunk's `Nats-Msg-Id` is [`chunk_id`], its table and the
//! archive file with the byte offsets of its first record's start and its
//! last record's end. An identical re-read (after a restart) cuts identical
//! chunks, which the server deduplicates; a re-read cut differently (another
//! chunk size, another run boundary) publishes different chunks, which is
//! only redundant: the version guard makes a record applied twice harmless.
//! The stream thus carries every record at least once and identical chunks
//! once.

use std::ops::Range;

/// How a chunk's payload begins.
pub const CHUNK_PREFIX: &[u8] = b"{\"syncdata_chunk\":";

/// Bytes a chunk's first line takes at most (the header and its newline).
pub const HEADER_MAX: usize = 64;

/// Whether `payload` is a chunk (not a record, not a pointer).
pub fn is_chunk(payload: &[u8]) -> bool {
    payload.starts_with(CHUNK_PREFIX)
}

/// The `Nats-Msg-Id` of a chunk of `schema.table` holding the records read
/// from `file` between byte `first` (its first record's start) and byte
/// `last` (its last record's end).
pub fn chunk_id(schema: &str, table: &str, file: &str, first: u64, last: u64) -> String {
    let table_hash = crate::subject::short_hash(&[schema, table]);
    let file_hash = crate::subject::short_hash(&[file]);
    format!("c:{file_hash}:{first}-{last}:{table_hash}")
}

/// Builds one chunk: records are appended until it is full.
#[derive(Debug, Default)]
pub struct ChunkBuilder {
    body: Vec<u8>,
    records: usize,
    /// Byte offsets in the archive file: first record's start, last's end.
    first: u64,
    last: u64,
}

impl ChunkBuilder {
    pub fn new() -> ChunkBuilder {
        ChunkBuilder::default()
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn records(&self) -> usize {
        self.records
    }

    /// The payload size if it were finished now.
    pub fn len(&self) -> usize {
        HEADER_MAX + self.body.len()
    }

    /// Whether a record of `size` bytes still fits under `max_records` and
    /// `max_bytes` (an empty chunk takes any record that fits `max_bytes`).
    pub fn fits(&self, size: usize, max_records: usize, max_bytes: usize) -> bool {
        self.records < max_records && self.len() + size < max_bytes
    }

    /// Appends a record (its JSON, without newlines) read from archive bytes
    /// `span`.
    pub fn push(&mut self, json: &[u8], span: Range<u64>) {
        debug_assert!(!json.contains(&b'\n'));
        if self.records == 0 {
            self.first = span.start;
        } else {
            self.body.push(b'\n');
        }
        self.body.extend_from_slice(json);
        self.last = span.end;
        self.records += 1;
    }

    /// The archive span (first record's start, last record's end).
    pub fn span(&self) -> (u64, u64) {
        (self.first, self.last)
    }

    /// The finished payload; the builder is empty again.
    pub fn finish(&mut self) -> Vec<u8> {
        let header = format!("{{\"syncdata_chunk\":{{\"records\":{}}}}}\n", self.records);
        debug_assert!(header.len() <= HEADER_MAX);
        let mut out = Vec::with_capacity(header.len() + self.body.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.body);
        self.body.clear();
        self.records = 0;
        out
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    syncdata_chunk: HeaderBody,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderBody {
    records: usize,
}

/// The byte ranges of a chunk's records in `payload` (in order), or why the
/// chunk is malformed.
pub fn split(payload: &[u8]) -> Result<Vec<Range<usize>>, String> {
    let nl = memchr::memchr(b'\n', payload).ok_or("malformed chunk: no header line")?;
    let header: Header = serde_json::from_slice(&payload[..nl])
        .map_err(|e| format!("malformed chunk header: {e}"))?;
    let expected = header.syncdata_chunk.records;
    let mut out = Vec::with_capacity(expected.min(1 << 16));
    let mut start = nl + 1;
    if expected > 0 {
        for at in memchr::memchr_iter(b'\n', &payload[nl + 1..]) {
            out.push(start..nl + 1 + at);
            start = nl + 1 + at + 1;
        }
        out.push(start..payload.len());
    } else if start < payload.len() {
        return Err("malformed chunk: records after an empty header".to_owned());
    }
    if out.len() != expected {
        return Err(format!(
            "malformed chunk: header says {expected} records, it holds {}",
            out.len()
        ));
    }
    Ok(out)
}

/// The record at `index` of a chunk (for a dead letter filed by reference).
pub fn record_at(payload: &[u8], index: usize) -> Result<&[u8], String> {
    let ranges = split(payload)?;
    let r = ranges
        .get(index)
        .ok_or_else(|| format!("chunk holds no record {index}"))?;
    Ok(&payload[r.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips() {
        let mut b = ChunkBuilder::new();
        assert!(b.is_empty());
        b.push(br#"{"a":1}"#, 10..20);
        b.push(br#"{"b":"x\ny"}"#, 30..45);
        b.push(br#"{"c":3}"#, 50..60);
        assert_eq!(b.span(), (10, 60));
        assert_eq!(b.records(), 3);
        let payload = b.finish();
        assert!(b.is_empty());
        assert!(is_chunk(&payload));
        let parts: Vec<&[u8]> = split(&payload)
            .unwrap()
            .into_iter()
            .map(|r| &payload[r])
            .collect();
        assert_eq!(
            parts,
            vec![&br#"{"a":1}"#[..], br#"{"b":"x\ny"}"#, br#"{"c":3}"#]
        );
        assert_eq!(record_at(&payload, 1).unwrap(), br#"{"b":"x\ny"}"#);
        assert!(record_at(&payload, 3).is_err());
        assert!(payload.len() <= b.len() + 100);
    }

    #[test]
    fn limits_are_held() {
        let mut b = ChunkBuilder::new();
        assert!(b.fits(100, 2, HEADER_MAX + 101));
        assert!(!b.fits(100, 2, HEADER_MAX + 100));
        b.push(&[b'x'; 100], 0..100);
        assert!(!b.fits(1, 1, 1 << 20));
        assert!(b.fits(1, 2, 1 << 20));
        assert!(b.finish().len() <= HEADER_MAX + 100);
    }

    #[test]
    fn malformed_chunks_are_refused_and_records_are_not_chunks() {
        assert!(!is_chunk(br#"{"schema":"public"}"#));
        assert!(!is_chunk(br#"{"syncdata_object":{}}"#));
        for bad in [
            &b"{\"syncdata_chunk\":{\"records\":2}}\n{}"[..],
            b"{\"syncdata_chunk\":{\"records\":1}}\n{}\n{}",
            b"{\"syncdata_chunk\":{\"records\":1}}",
            b"{\"syncdata_chunk\":{\"records\":\"x\"}}\n{}",
            b"{\"syncdata_chunk\":{\"records\":0}}\n{}",
        ] {
            assert!(split(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(split(b"{\"syncdata_chunk\":{\"records\":0}}\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn ids_differ_by_table_file_and_span() {
        let a = chunk_id("public", "t", "f1", 0, 100);
        assert_eq!(a, chunk_id("public", "t", "f1", 0, 100));
        for b in [
            chunk_id("public", "u", "f1", 0, 100),
            chunk_id("public", "t", "f2", 0, 100),
            chunk_id("public", "t", "f1", 0, 101),
            chunk_id("public", "t", "f1", 1, 100),
        ] {
            assert_ne!(a, b);
        }
    }
}
