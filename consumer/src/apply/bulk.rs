//! Snapshot rows loaded set-wise (docs/design.md, "Snapshot barrier").
//!
//! A snapshot row is an INSERT at `(S-1, 1)` that also brings its
//! snapshot's barrier, a TRUNCATE at `(S-1, 0)` (see
//! [`syncdata_core::record::Record::snapshot_barrier`]): the engine runs the
//! barrier like any TRUNCATE (exclusive lock on the table's state, rows and
//! bookkeeping wholly at or below it removed, the floor raised). After it,
//! a snapshot row whose key has no bookkeeping row and no other change in
//! the batch has nothing to merge with: it is written as it is, in bulk
//! ([`TargetTx::load_rows`]), and gets no bookkeeping row of its own — a
//! target row without one counts at the table's floor. The other snapshot
//! rows (keys changed after the barrier, or touched again in the batch) go
//! through the merge like any image, at their version.
//!
//! Why this is safe: the barrier's lock is exclusive, so no other batch of
//! the table runs meanwhile and no bookkeeping row appears between the read
//! and the write; a key with no bookkeeping row after the barrier has no
//! change newer than it applied; a target row already there without
//! bookkeeping came from this snapshot (an earlier delivery of the same
//! row: the same values) and is kept.

use super::merge::{Change, KeyId, KeySet, Val, Versioned};
use super::prepare::Prepared;
use super::target::TargetTx;
use super::Disposition;

/// Loads the snapshot rows of `live` that need no merge; removes them from
/// `live` and marks them applied. Returns the keys loaded.
pub(super) async fn load_snapshot_rows<X: TargetTx>(
    tx: &mut X,
    p: &mut Prepared,
    live: &mut Vec<Versioned>,
) -> Result<KeySet, sqlx::Error> {
    if !live.iter().any(|c| p.snapshot[c.index]) {
        return Ok(KeySet::default());
    }
    // Changes per key: a key touched more than once goes through the merge.
    let mut touches = vec![0u32; p.keys.len()];
    for c in live.iter() {
        match &c.change {
            Change::Image { key, from, .. } => {
                touches[*key] += 1;
                if let Some(old) = from {
                    touches[*old] += 1;
                }
            }
            Change::Delete { key } => touches[*key] += 1,
        }
    }
    for &k in &p.truncate_rows {
        touches[k] += 1;
    }
    let candidates: Vec<KeyId> = live
        .iter()
        .filter(|c| p.snapshot[c.index])
        .filter_map(|c| match &c.change {
            Change::Image {
                key,
                values,
                from: None,
            } if touches[*key] == 1 && values.iter().all(Option::is_some) => Some(*key),
            _ => None,
        })
        .collect();
    if candidates.is_empty() {
        return Ok(KeySet::default());
    }
    let booked: KeySet = tx
        .lock_rows(&p.keys, &candidates)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let load: KeySet = candidates
        .into_iter()
        .filter(|id| !booked.contains(id))
        .collect();
    if load.is_empty() {
        return Ok(load);
    }
    let mut rows = Vec::with_capacity(load.len());
    let mut kept = Vec::with_capacity(live.len() - load.len());
    for c in live.drain(..) {
        match c.change {
            Change::Image { key, values, .. } if p.snapshot[c.index] && load.contains(&key) => {
                p.dispositions[c.index] = Some(Disposition::Applied);
                let row: Vec<Option<String>> = values
                    .into_iter()
                    .map(|v| match v {
                        Some(Val::Known(text)) => text,
                        // prepare only makes known values; a candidate has
                        // every column.
                        _ => None,
                    })
                    .collect();
                rows.push((key, row));
            }
            _ => kept.push(c),
        }
    }
    *live = kept;
    rows.sort_unstable_by_key(|(id, _)| *id);
    tx.load_rows(&p.keys, rows).await?;
    Ok(load)
}
