//! Chunked publishing (`syncdata_core::chunk`): the main cursor gathers the
//! records it reads into per-table chunks and publishes them as a *run*.
//!
//! A run is what was read since the last flush; it is flushed (every chunk
//! published) when reading would wait (the archive has nothing more now),
//! at the end of a file, before a halted table's replay, and when it holds
//! [`RUN_CHUNKS`] chunks' worth of records; a chunk that fills is published
//! at once. Latency therefore never waits for a chunk to fill.
//!
//! Settling: a flushed run is one window entry, resolving once every
//! message of the run is acknowledged, with the main position after the
//! run's last line; lines that need no publish (quarantined, excluded,
//! held) inside a run settle with it. The checkpoint invariant is the one
//! of the publisher: every line before the checkpoint is acknowledged or
//! quarantined. A record too large for a chunk goes alone, as before (its
//! table's chunk is published first, so a table's messages stay in archive
//! order).

use std::hash::Hash;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use syncdata_core::chunk::{chunk_id, ChunkBuilder, HEADER_MAX};
use syncdata_core::record::Record;
use syncdata_core::subject::table_subject;
use syncdata_core::table::TableName;
use tokio_util::sync::CancellationToken;

use super::{Mark, Position, Publisher, PublisherError, Settled, Window};
use crate::sink::{AckFuture, Sink};
use crate::tail::Line;

/// A run is flushed once it holds this many chunks' worth of records.
const RUN_CHUNKS: usize = 8;

/// The records read since the last flush.
#[derive(Default)]
pub(super) struct Run {
    /// Per table: its open chunk and the archive file it was read from.
    /// Looked up by a record's names without building a `TableName`
    /// ([`TableRef`]); hashed with foldhash, not SipHash (the keys are
    /// the archive's own table names, and this runs once per record).
    open: hashbrown::HashMap<TableName, (ChunkBuilder, Arc<str>), foldhash::fast::RandomState>,
    /// Messages of this run already handed to the server.
    acks: Vec<AckFuture>,
    /// Records in the run (chunked or sent alone).
    records: usize,
    /// The main position after the run's last line.
    last: Option<Position>,
}

impl Run {
    /// Whether the run holds anything not yet settled.
    pub(super) fn is_open(&self) -> bool {
        self.last.is_some()
    }

    /// The line ending at `pos` settles with the run.
    pub(super) fn until(&mut self, pos: Position) {
        self.last = Some(pos);
    }

    /// A message sent alone (a record too large for a chunk).
    pub(super) fn sent(&mut self, ack: AckFuture, pos: Position) {
        self.acks.push(ack);
        self.records += 1;
        self.last = Some(pos);
    }
}

/// A table's names, borrowed: hashes as [`TableName`] does (the same
/// fields in the same order, `&str` hashing as `String`), so it finds a
/// `TableName` key without one being built.
#[derive(Hash)]
struct TableRef<'a> {
    schema: &'a str,
    table: &'a str,
}

impl hashbrown::Equivalent<TableName> for TableRef<'_> {
    fn equivalent(&self, key: &TableName) -> bool {
        self.schema == key.schema && self.table == key.table
    }
}

/// The key a table's first chunk of a run is filed under.
impl From<&TableRef<'_>> for TableName {
    fn from(t: &TableRef<'_>) -> TableName {
        TableName::new(t.schema, t.table)
    }
}

/// What became of a record offered to a chunk.
pub(super) enum Added {
    Chunked,
    /// Shutdown came first.
    Cancelled,
    /// Too large for a chunk: to be sent alone (its JSON given back).
    Alone(Vec<u8>),
}

impl<S: Sink> Publisher<S> {
    /// Whether records are published in chunks.
    pub(super) fn chunking(&self) -> bool {
        self.settings.chunk_records > 1
    }

    /// Bytes one chunk holds at most on a server with `max_payload`.
    fn chunk_limit(&self, max_payload: usize) -> usize {
        self.settings
            .chunk_bytes
            .min(syncdata_core::large::inline_limit(max_payload))
    }

    /// Adds a (sanitized) record's JSON to its table's chunk, publishing the
    /// chunk first when the record does not fit it.
    pub(super) async fn add_to_chunk(
        &mut self,
        record: &Record,
        json: std::borrow::Cow<'_, [u8]>,
        file: &Arc<str>,
        line: &Line,
        max_payload: usize,
        token: &CancellationToken,
    ) -> Result<Added, PublisherError> {
        let limit = self.chunk_limit(max_payload);
        let max_records = self.settings.chunk_records;
        let table = TableRef {
            schema: &record.schema,
            table: &record.table,
        };
        // A SCHEMA record goes alone, after its table's open chunk: its
        // look-up copy (`<subject>.schema`) is published with it.
        let alone =
            record.op == syncdata_core::record::Op::Schema || HEADER_MAX + json.len() >= limit;
        let full = self.run.open.get(&table).is_some_and(|(c, f)| {
            !c.is_empty() && (alone || f != file || !c.fits(json.len(), max_records, limit))
        });
        if full && !self.publish_chunk(&TableName::from(&table), token).await? {
            return Ok(Added::Cancelled);
        }
        if alone {
            return Ok(Added::Alone(json.into_owned()));
        }
        // A `TableName` is built only for a table new to the run.
        let (chunk, at) = self
            .run
            .open
            .entry_ref(&table)
            .or_insert_with(|| (ChunkBuilder::new(), file.clone()));
        if chunk.is_empty() {
            *at = file.clone();
        }
        chunk.push(&json, line.start..line.end);
        self.run.records += 1;
        Ok(Added::Chunked)
    }

    /// Publishes `table`'s open chunk; false when shutdown came first.
    async fn publish_chunk(
        &mut self,
        table: &TableName,
        token: &CancellationToken,
    ) -> Result<bool, PublisherError> {
        let Some((chunk, file)) = self.run.open.get_mut(table) else {
            return Ok(true);
        };
        if chunk.is_empty() {
            return Ok(true);
        }
        let (first, last) = chunk.span();
        let id = chunk_id(&table.schema, &table.table, file, first, last);
        let records = chunk.records();
        let payload = Bytes::from(chunk.finish());
        let subject = table_subject(&self.settings.subject_prefix, &table.schema, &table.table);
        let sent = tokio::select! {
            _ = token.cancelled() => return Ok(false),
            sent = self.sink.publish(subject, id, payload) => sent?,
        };
        metrics::counter!("syncdata_producer_chunks_total").increment(1);
        metrics::histogram!("syncdata_producer_chunk_records").record(records as f64);
        self.run.acks.push(sent);
        Ok(true)
    }

    /// Publishes a full run (see the module doc) and keeps reading.
    pub(super) async fn flush_if_full(
        &mut self,
        window: &mut Window,
        token: &CancellationToken,
    ) -> Result<(), PublisherError> {
        if self.run.records >= RUN_CHUNKS * self.settings.chunk_records {
            self.flush_run(window, token).await?;
        }
        Ok(())
    }

    /// Publishes every open chunk of the run and puts the run into the
    /// window as one entry. Nothing happens on shutdown (the run is read
    /// again on the next start).
    pub(super) async fn flush_run(
        &mut self,
        window: &mut Window,
        token: &CancellationToken,
    ) -> Result<(), PublisherError> {
        if !self.run.is_open() {
            return Ok(());
        }
        let mut tables: Vec<TableName> = self
            .run
            .open
            .iter()
            .filter(|(_, (c, _))| !c.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        tables.sort();
        for table in &tables {
            if !self.publish_chunk(table, token).await? {
                return Ok(());
            }
        }
        let run = std::mem::take(&mut self.run);
        let pos = run.last.expect("an open run has a position");
        let acks = run.acks;
        let records = run.records as u64;
        if acks.is_empty() {
            self.mark(Mark::Main(pos), window);
            return Ok(());
        }
        // The chunk builders are kept for the next run (their buffers).
        self.run.open = run.open;
        let entry = async move {
            let mut done = Settled {
                messages: 0,
                records,
                duplicates: 0,
            };
            for ack in acks {
                match ack.await {
                    Ok(a) => {
                        done.messages += 1;
                        done.duplicates += u64::from(a.duplicate);
                    }
                    Err(e) => return (Mark::Main(pos), Err(e)),
                }
            }
            (Mark::Main(pos), Ok(Some(done)))
        };
        window.push_back(entry.boxed());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Run, TableRef};
    use syncdata_core::chunk::ChunkBuilder;
    use syncdata_core::table::TableName;

    /// A borrowed name finds the key it names, and only that one: were
    /// its hash not `TableName`'s, a record would miss its table's open
    /// chunk and put a new one in its place.
    #[test]
    fn borrowed_names_find_their_table() {
        let mut run = Run::default();
        let names = [
            ("public", "t"),
            ("public", "pgbench_accounts"),
            ("sales", "t"),
            ("s", "alest"),
            ("", ""),
        ];
        for (i, (schema, table)) in names.iter().enumerate() {
            let mut chunk = ChunkBuilder::new();
            let at = i as u64;
            chunk.push(b"{}", at..at + 1);
            run.open
                .insert(TableName::new(*schema, *table), (chunk, "f".into()));
        }
        for (i, (schema, table)) in names.iter().enumerate() {
            let (chunk, _) = run
                .open
                .get(&TableRef { schema, table })
                .expect("found by its borrowed names");
            assert_eq!(chunk.span(), (i as u64, i as u64 + 1));
        }
        assert!(run
            .open
            .get(&TableRef {
                schema: "public",
                table: "missing"
            })
            .is_none());
    }
}
