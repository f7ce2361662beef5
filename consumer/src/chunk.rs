//! The consumer's side of chunks (`syncdata_core::chunk`): a message holding
//! many records of its table is expanded into its records after its
//! signature was checked (a chunk is signed as a whole) and before anything
//! is parsed. Each record is then an item of its own: applied with the
//! table's batch (batches span chunks), isolated alone when it fails, and
//! dead-lettered alone (with its place in the chunk). The chunk is acked
//! only once every one of its records is committed or dead-lettered; when
//! any of them is to be retried the whole chunk is nakked, and the records
//! already applied come back superseded (the version guard).
//!
//! Messages of older producers (one record each) are items as before.

use bytes::Bytes;
use syncdata_core::chunk;

/// The records a chunk's payload holds (shared slices of it); None when the
/// payload is not a chunk.
pub fn expand(payload: &Bytes) -> Option<Result<Vec<Bytes>, String>> {
    if !chunk::is_chunk(payload) {
        return None;
    }
    Some(chunk::split(payload).map(|ranges| ranges.into_iter().map(|r| payload.slice(r)).collect()))
}

/// How many records a message carries: a chunk's header count, else one.
/// Read from the header line only (nothing is parsed or checked here).
pub fn record_count(payload: &[u8]) -> usize {
    if !chunk::is_chunk(payload) {
        return 1;
    }
    let head = &payload[chunk::CHUNK_PREFIX.len()..payload.len().min(chunk::HEADER_MAX)];
    let digits = head
        .iter()
        .skip_while(|b| !b.is_ascii_digit())
        .take_while(|b| b.is_ascii_digit());
    digits
        .fold(0usize, |n, &d| {
            n.saturating_mul(10).saturating_add((d - b'0') as usize)
        })
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_expand_and_records_do_not() {
        let mut b = chunk::ChunkBuilder::new();
        b.push(br#"{"a":1}"#, 0..8);
        b.push(br#"{"b":2}"#, 8..16);
        let payload = Bytes::from(b.finish());
        let recs = expand(&payload).unwrap().unwrap();
        assert_eq!(recs, vec![&br#"{"a":1}"#[..], &br#"{"b":2}"#[..]]);
        assert!(expand(&Bytes::from_static(br#"{"schema":"s"}"#)).is_none());
        let bad = Bytes::from_static(b"{\"syncdata_chunk\":{\"records\":3}}\n{}");
        assert!(expand(&bad).unwrap().is_err());
        assert_eq!(record_count(&payload), 2);
        assert_eq!(record_count(br#"{"schema":"s"}"#), 1);
        assert_eq!(
            record_count(b"{\"syncdata_chunk\":{\"records\":1000}}\n"),
            1000
        );
    }
}
