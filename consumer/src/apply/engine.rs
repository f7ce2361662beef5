//! The apply loop, written once above the target seam: prepare → lock →
//! probe → merge → plan → write, in one transaction per batch of one table.
//!
//! Invariants (docs/design.md, "Apply engine"): the version guard and the
//! data change commit together; a change is applied only where it is newer
//! (per column, see [`super::merge`]); deletes leave tombstones; a TRUNCATE
//! is a floor for the whole table. So apply is idempotent and order-free,
//! and any number of processes may apply batches of one table at once: the
//! rows a batch touches are locked through their bookkeeping rows, in key
//! order (see [`super::target`] for what each step locks).

use std::collections::HashMap;
use std::sync::Arc;

use syncdata_core::record::Op;
use syncdata_core::table::TableName;
use syncdata_core::version::Version;
use tokio::sync::RwLock;
use tracing::{debug, warn};

use super::merge::{self, Change, KeyId, KeyMap, Outcome, RowState, Versioned};
use super::plan::{self, BookRow, Merged, Stored};
use super::prepare::{self, key_parts, Prepared};
use super::shape::{ShapeError, TableShape};
use super::target::{BatchCounts, BatchLog, Target, TargetTx};
use super::{ApplyError, BatchReport, Disposition, Incoming};

/// Applies batches to one target. Cheap to share: one per process.
pub struct Engine<T: Target> {
    target: T,
    shapes: RwLock<HashMap<TableName, Arc<TableShape>>>,
}

impl<T: Target> Engine<T> {
    pub fn with_target(target: T) -> Engine<T> {
        Engine {
            target,
            shapes: RwLock::new(HashMap::new()),
        }
    }

    pub fn target(&self) -> &T {
        &self.target
    }

    /// The table's shape, read from the target once and cached.
    pub async fn shape(&self, table: &TableName) -> Result<Arc<TableShape>, ShapeError> {
        if let Some(s) = self.shapes.read().await.get(table) {
            return Ok(s.clone());
        }
        let shape = Arc::new(self.target.load_shape(table).await?);
        self.shapes
            .write()
            .await
            .insert(table.clone(), shape.clone());
        Ok(shape)
    }

    /// Forgets a cached shape (after a schema change or a failure that may
    /// come from one).
    pub async fn forget_shape(&self, table: &TableName) {
        self.shapes.write().await.remove(table);
    }

    /// Applies `batch` (records of `table` only) in one transaction.
    /// `archive_ref` goes into the batch's log entry (empty: the batch's
    /// LSN range).
    pub async fn apply_batch(
        &self,
        table: &TableName,
        batch: &[Incoming<'_>],
        archive_ref: &str,
    ) -> Result<BatchReport, ApplyError> {
        let mut shape = self.shape(table).await?;
        let db = |source| ApplyError::Db {
            table: table.clone(),
            source,
        };
        let mut prepared = prepare::prepare(&shape, batch);
        if prepared.unknown_column {
            // The local table may have gained the column since the shape
            // was cached (the fix for such dead letters): look again once.
            self.forget_shape(table).await;
            shape = self.shape(table).await?;
            prepared = prepare::prepare(&shape, batch);
        }
        let mut retries = 0;
        let mut races = 0;
        loop {
            let attempt = async {
                let mut tx = self.target.begin(shape.clone()).await?;
                let Some((report, mut log)) =
                    apply_in_tx(&mut tx, &shape, prepared, archive_ref).await?
                else {
                    // Dropped: rolled back.
                    return Ok(None);
                };
                log.source_commit_at = newest_commit_time(batch);
                tx.commit(log).await?;
                Ok::<_, sqlx::Error>(Some(report))
            };
            match attempt.await {
                Ok(Some(report)) => return Ok(report),
                Ok(None) if races < KEY_RACES => {
                    races += 1;
                    debug!(table = %table, race = races,
                           "another batch inserted the bookkeeping of a key of this batch first; applying it again");
                    prepared = prepare::prepare(&shape, batch);
                }
                Ok(None) => {
                    let lost = format!(
                        "the batch lost {KEY_RACES} races in a row for the bookkeeping of a new \
                         key; it is retried later"
                    );
                    return Err(db(sqlx::Error::Protocol(lost)));
                }
                Err(e) if retries < IMMEDIATE_RETRIES && conflict_lost(&e) => {
                    retries += 1;
                    warn!(table = %table, sqlstate = ?sqlstate(&e), retry = retries,
                          "the batch lost a lock conflict (deadlock or serialization failure); applying it again at once");
                    prepared = prepare::prepare(&shape, batch);
                }
                Err(e) => return Err(db(e)),
            }
        }
    }
}

/// How many times in a row a batch is applied again at once because
/// another batch inserted the bookkeeping of one of its new keys first.
/// Each such race ends with that key's row committed, so the next attempt
/// finds and locks it: more than a few in a row means something else is
/// wrong, and the batch's failure goes to the caller (a transient one).
const KEY_RACES: u32 = 100;

/// How many times a batch that lost a lock conflict (a deadlock, 40P01, or
/// a serialization failure, 40001) is applied again at once, in a new
/// transaction, before its failure goes to the caller (which retries it
/// later, as any transient failure). The other transaction of the conflict
/// went on, so the retry usually succeeds: this spares the batch's
/// messages the wait for a redelivery. A conflict between consumers is
/// ruled out by the lock order; one with the application's own writers of
/// the table is not.
const IMMEDIATE_RETRIES: u32 = 3;

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Lost a deadlock or a serialization conflict: the transaction was rolled
/// back by the server, and applying it again may succeed now.
fn conflict_lost(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("40P01" | "40001"))
}

/// The newest valid commit timestamp (`ts`) of the batch's records, in UTC
/// RFC 3339. A `ts` that does not parse is ignored: it only feeds `status`.
/// The records of one transaction share their `ts`, and a snapshot's rows
/// all have one: a text equal to the one before it is not parsed again.
pub fn newest_commit_time(batch: &[Incoming<'_>]) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let mut previous: Option<&str> = None;
    batch
        .iter()
        .filter_map(|i| i.record.ts.as_deref())
        .filter(|&ts| previous.replace(ts) != Some(ts))
        .filter_map(|ts| time::OffsetDateTime::parse(ts, &Rfc3339).ok())
        .max()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).ok())
}

/// Everything between lock and commit. None: a key the batch saw without
/// bookkeeping got its bookkeeping row from another transaction meanwhile;
/// this transaction must be given up and the batch applied again.
async fn apply_in_tx<X: TargetTx>(
    tx: &mut X,
    shape: &TableShape,
    mut p: Prepared,
    archive_ref: &str,
) -> Result<Option<(BatchReport, BatchLog)>, sqlx::Error> {
    let mut floor = tx.lock_table(p.truncate.is_some()).await?;
    if let Some(vt) = p.truncate.filter(|&vt| vt > floor) {
        for text in tx.truncate(vt).await? {
            let id = p.keys.intern(key_parts(text, shape.key.len()));
            p.truncate_rows.push(id);
        }
        floor = vt;
    }

    // Changes at or below the table's floor are dead.
    let mut live_changes = Vec::with_capacity(p.changes.len());
    for c in p.changes.drain(..) {
        if c.version <= floor {
            p.dispositions[c.index] = Some(Disposition::Superseded);
        } else {
            live_changes.push(c);
        }
    }

    // Snapshot rows with nothing to merge: written in bulk, no bookkeeping.
    let loaded = super::bulk::load_snapshot_rows(tx, &mut p, &mut live_changes).await?;

    let key_count = p.keys.len();
    // The bookkeeping row of each key as found under lock (None: no row).
    let mut stored: Vec<Option<Stored>> = (0..key_count).map(|_| None).collect();
    let mut exists = vec![false; key_count];
    let pending: Vec<usize> = (0..key_count).filter(|id| !loaded.contains(id)).collect();
    let probes = Probes::of(&p, &live_changes);
    if !pending.is_empty() {
        for (id, s) in tx.lock_rows(&p.keys, &pending).await? {
            stored[id] = Some(s);
        }
        let (probe, skip): (Vec<usize>, Vec<usize>) = pending.iter().partition(|&&id| {
            let known = stored[id].as_ref().map(|s| s.version);
            probes.must_probe[id] || probes.whole_image[id].is_none_or(|v| Some(v) <= known)
        });
        if !probe.is_empty() {
            let present = tx.present(&p.keys, &probe).await?;
            for id in probe {
                exists[id] = present.contains(&id);
            }
        }
        for id in skip {
            // Not looked up: assumed present when synced before (the
            // whole image overrides it either way).
            exists[id] = stored[id].is_some();
        }
    }
    let initial: Vec<RowState> = (0..key_count)
        .map(|id| plan::initial_state(shape, id, stored[id].as_ref(), exists[id]))
        .collect();
    let mut states = initial.clone();
    for &k in &p.truncate_rows {
        states[k].apply_delete(floor);
    }
    // What the tally needs of each change; the changes themselves (and
    // their values) move into the merge, uncopied.
    let kinds: Vec<ChangeKind> = live_changes.iter().map(ChangeKind::of).collect();
    let outcomes = merge::merge(&mut states, live_changes);
    let need = plan::values_needed(&states, &initial);
    let fetched = if need.is_empty() {
        KeyMap::default()
    } else {
        tx.read_rows(&p.keys, &need).await?
    };
    // Keys without a bookkeeping row get theirs inserted with its final
    // state (no placeholder written and rewritten). When another batch
    // inserted one of them meanwhile, this transaction is given up and the
    // batch applied again from the start (rare: two processes, one new
    // key): its row locks are released with it, and the next attempt locks
    // and reads every key again, the new one with them. Locking only the
    // new key while holding the others would take a lock out of key order:
    // a batch holding it may wait for one of ours (a deadlock, 40P01).
    let mut inserted: Vec<Option<BookRow>> = vec![None; key_count];
    let mut new_rows = Vec::new();
    for id in 0..key_count {
        if stored[id].is_none() && states[id] != initial[id] {
            if let Some(row) =
                BookRow::of(shape, &states[id], &|c, v| plan::resolve(&fetched, c, v))
            {
                new_rows.push((id, row));
            }
        }
    }
    if !new_rows.is_empty() {
        let done = tx.insert_bookkeeping(&p.keys, &new_rows).await?;
        if new_rows.iter().any(|(id, _)| !done.contains(id)) {
            return Ok(None);
        }
        for (id, row) in new_rows {
            inserted[id] = Some(row);
        }
    }

    let mut report = tally(&mut p, &kinds, &outcomes, &exists, &initial);
    report.inserted += loaded.len() as u64;
    let had_book: Vec<bool> = stored.iter().map(Option::is_some).collect();
    let write = plan::plan(
        shape,
        &Merged {
            initial: &initial,
            states: &states,
            exists: &exists,
            had_book: &had_book,
            inserted: &inserted,
            by_update: &probes.by_update,
            fetched: &fetched,
        },
    );
    report.parked = write.parked;
    tx.write(&p.keys, write).await?;

    report.max_version = p.versions.iter().copied().max();
    let first = p.versions.iter().copied().min();
    let archive_ref = match (first, report.max_version) {
        (Some(a), Some(b)) if archive_ref.is_empty() => format!("{}..{}", a.lsn, b.lsn),
        _ => archive_ref.to_owned(),
    };
    report.dispositions = p
        .dispositions
        .drain(..)
        .map(|d| d.expect("every record has a disposition"))
        .collect();
    report.applied = report
        .dispositions
        .iter()
        .filter(|d| **d == Disposition::Applied)
        .count() as u64;
    let counts = BatchCounts {
        inserted: report.inserted,
        updated: report.updated,
        deleted: report.deleted,
        superseded: report
            .dispositions
            .iter()
            .filter(|d| **d == Disposition::Superseded)
            .count() as u64,
        parked: report.parked,
        deletes_of_missing: report.deletes_of_missing,
    };
    let log = BatchLog {
        rows_synced: report.applied,
        archive_ref,
        source_commit_at: None,
        counts,
    };
    Ok(Some((report, log)))
}

/// Which keys' target rows must be looked up (probed).
struct Probes {
    /// The version of the batch's newest whole image of each key. A key's
    /// target row need not be looked up when the batch brings a whole image
    /// newer than all that is known of it (the upsert writes it either way).
    whole_image: Vec<Option<Version>>,
    /// Always probed: deletes, old keys of key changes, rows a TRUNCATE
    /// reaches into.
    must_probe: Vec<bool>,
    /// That newest whole image is an UPDATE (so the row is most likely
    /// there: written by UPDATE first, not by an upsert).
    by_update: Vec<bool>,
}

impl Probes {
    fn of(p: &Prepared, live_changes: &[Versioned]) -> Probes {
        let key_count = p.keys.len();
        let mut probes = Probes {
            whole_image: vec![None; key_count],
            must_probe: vec![false; key_count],
            by_update: vec![false; key_count],
        };
        for &k in &p.truncate_rows {
            probes.must_probe[k] = true;
        }
        for c in live_changes {
            match &c.change {
                Change::Image { key, values, from } => {
                    if values.iter().all(Option::is_some)
                        && probes.whole_image[*key] < Some(c.version)
                    {
                        probes.whole_image[*key] = Some(c.version);
                        probes.by_update[*key] = p.ops[c.index] == Op::Update;
                    }
                    if let Some(old) = from {
                        probes.must_probe[*old] = true;
                    }
                }
                Change::Delete { key } => probes.must_probe[*key] = true,
            }
        }
        probes
    }
}

/// Of a change, what [`tally`] needs after the merge took the change.
struct ChangeKind {
    index: usize,
    version: Version,
    /// The key it is an image of, or deletes.
    key: KeyId,
    delete: bool,
}

impl ChangeKind {
    fn of(c: &Versioned) -> ChangeKind {
        let (key, delete) = match c.change {
            Change::Image { key, .. } => (key, false),
            Change::Delete { key } => (key, true),
        };
        ChangeKind {
            index: c.index,
            version: c.version,
            key,
            delete,
        }
    }
}

/// Sets the disposition of each live change from its merge outcome and
/// counts what was applied, by op.
fn tally(
    p: &mut Prepared,
    kinds: &[ChangeKind],
    outcomes: &KeyMap<Outcome>,
    exists: &[bool],
    initial: &[RowState],
) -> BatchReport {
    let mut report = BatchReport::default();
    // The oldest image of each key in the batch: a DELETE after it deletes
    // a row the batch itself brought, not a missing one.
    let mut first_image: KeyMap<Version> = KeyMap::default();
    for c in kinds {
        if !c.delete {
            let v = first_image.entry(c.key).or_insert(c.version);
            *v = (*v).min(c.version);
        }
    }
    for c in kinds {
        let outcome = outcomes[&c.index];
        p.dispositions[c.index] = Some(match outcome {
            Outcome::Applied => Disposition::Applied,
            Outcome::Superseded => Disposition::Superseded,
        });
        if outcome == Outcome::Applied {
            match p.ops[c.index] {
                Op::Insert => report.inserted += 1,
                Op::Update => report.updated += 1,
                Op::Delete => report.deleted += 1,
                Op::Truncate | Op::Schema => {}
            }
            if c.delete {
                let key = c.key;
                let brought_here = first_image.get(&key).is_some_and(|&v| v < c.version);
                if !exists[key] && !brought_here && initial[key].cells.iter().all(Option::is_none) {
                    report.deletes_of_missing += 1;
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncdata_core::record::Record;

    #[test]
    fn the_newest_commit_time_compares_instants_and_skips_what_does_not_parse() {
        let ts = [
            Some("2026-12-04T10:00:00+00:00"),
            Some("2026-12-04T10:00:00+00:00"),
            // The newest instant, written in another offset.
            Some("2026-12-04T11:30:00+01:00"),
            Some("2026-12-04T11:30:00+01:00"),
            Some("2026-12-04T10:20:00Z"),
            Some("not a time"),
            None,
            Some("2026-12-04T10:00:00+00:00"),
        ];
        let records: Vec<Record> = ts
            .iter()
            .enumerate()
            .map(|(i, ts)| {
                let ts = ts.map(|t| format!(r#","ts":"{t}""#)).unwrap_or_default();
                Record::parse(
                    format!(r#"{{"table":"t","op":"INSERT","data":{{"id":{i}}},"lsn":"0/1"{ts}}}"#)
                        .as_bytes(),
                )
                .expect("record parses")
            })
            .collect();
        let batch = crate::apply::incoming(&records);
        assert_eq!(
            newest_commit_time(&batch).as_deref(),
            Some("2026-12-04T10:30:00Z")
        );
        assert_eq!(newest_commit_time(&batch[5..7]), None);
    }
}
