//! The version merge: given the stored state of the rows a batch touches and
//! the batch's changes, compute each row's final state. Pure logic, no I/O.
//!
//! Invariant: every column of a row holds the value of the newest change
//! that set it (per-column last-writer-wins), and nothing at or below the
//! row's floor (its newest delete, or the table's TRUNCATE) survives. Because
//! the result depends only on the set of changes and not on their order, a
//! batch may arrive in any order, be replayed, or be split across processes.
//!
//! Existence comes only from an image (DESIGN.md, apply invariant 3): a row
//! is *live* (visible in the target table) only after an INSERT, an UPDATE
//! carrying every column in one record, or the new key of a key-changing
//! UPDATE that carries or inherits a whole image, and only while no delete
//! newer than that image has reached it. A row with columns known but no
//! such image is *parked*: partial UPDATEs (unchanged TOAST columns left
//! out) whose image has not arrived yet, or never will. Partial UPDATEs only
//! ever add to an image: however many of them, and whatever columns they
//! name together, they never make a row visible, because applied in version
//! order each would find no row and be skipped (seed 004).

use std::collections::{HashMap, HashSet};

use syncdata_core::version::Version;

/// Index of a key in the batch's key table.
pub type KeyId = usize;

/// The hasher of the apply's per-record maps and sets: foldhash, as
/// hashbrown's own default (randomly seeded per process), several times
/// cheaper than std's SipHash on these small keys (dense indices, key
/// texts), which it hashed once or more for every record of a batch.
pub type FastState = foldhash::fast::RandomState;
/// A set of key ids.
pub type KeySet = HashSet<KeyId, FastState>;
/// A map by key id (or by a record's index in its batch).
pub type KeyMap<V> = HashMap<KeyId, V, FastState>;

/// Where a column's value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// In hand: PostgreSQL text form, None for NULL.
    Known(Option<String>),
    /// In the target table, in the row of this key as it was when the batch
    /// began (read only when needed).
    InDb(KeyId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub val: Val,
    pub version: Version,
}

/// The merge state of one row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowState {
    /// Changes at or below this version are dead (a delete or a truncate).
    pub floor: Option<Version>,
    /// One entry per column of the table shape; None = not known.
    pub cells: Vec<Option<Cell>>,
    /// The version of the newest image that made the row exist; always
    /// above `floor` (a newer delete clears it). None for a row loaded from
    /// the target table until first changed: it exists there, so it was
    /// made by an image no newer than its oldest column (see
    /// [`RowState::born`]).
    image: Option<Version>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one column (or the row's existence) changed.
    Applied,
    /// Older than what is already there: a duplicate or superseded change.
    Superseded,
}

impl RowState {
    /// A row as read back from bookkeeping or the target table: its image
    /// version is inferred from its columns (see [`RowState::born`]).
    pub fn loaded(floor: Option<Version>, cells: Vec<Option<Cell>>) -> RowState {
        RowState {
            floor,
            cells,
            image: None,
        }
    }

    pub fn empty(columns: usize) -> RowState {
        RowState {
            floor: None,
            cells: vec![None; columns],
            image: None,
        }
    }

    /// Visible in the target table: made by an image that no delete has
    /// overtaken (an image sets every column, so all are known).
    pub fn is_live(&self) -> bool {
        self.born().is_some() && self.cells.iter().all(Option::is_some)
    }

    /// Every column read from the target table (`Val::InDb`): the state of a
    /// row as loaded, never changed in this merge.
    fn loaded_from_target(&self) -> bool {
        !self.cells.is_empty()
            && self.cells.iter().all(|c| {
                matches!(
                    c,
                    Some(Cell {
                        val: Val::InDb(_),
                        ..
                    })
                )
            })
    }

    /// The version of the image the row exists by, if it exists. A row
    /// present in the target table exists by an image at or below its
    /// oldest column's version: that version is taken (an estimate from
    /// above: a delete older than every column leaves such a row live).
    fn born(&self) -> Option<Version> {
        let image = self.image.or_else(|| {
            self.loaded_from_target()
                .then(|| self.cells.iter().flatten().map(|c| c.version).min())
                .flatten()
        });
        image.filter(|&v| !self.dead(v))
    }

    /// Makes the existence of a row loaded from the target table explicit
    /// before a change alters its cells.
    fn settle(&mut self) {
        self.image = self.born();
    }

    pub fn is_parked(&self) -> bool {
        !self.is_live() && self.cells.iter().any(Option::is_some)
    }

    /// The newest version the row has seen (cells and floor).
    pub fn version(&self) -> Option<Version> {
        self.cells
            .iter()
            .flatten()
            .map(|c| c.version)
            .chain(self.floor)
            .max()
    }

    fn dead(&self, version: Version) -> bool {
        self.floor.is_some_and(|f| version <= f)
    }

    /// An INSERT or UPDATE: `values[c]` is Some for each column it carries.
    /// It is an image (it makes the row exist) when it carries every column.
    pub fn apply_image(&mut self, version: Version, values: Vec<Option<Val>>) -> Outcome {
        let whole = values.iter().all(Option::is_some);
        self.apply_change(version, values, whole)
    }

    /// An INSERT or UPDATE; `image`: it makes the row exist (it carries, or
    /// with a key change inherits, every column). Otherwise it only adds
    /// columns: to the row if it exists, or to what is parked for it.
    pub fn apply_change(
        &mut self,
        version: Version,
        values: Vec<Option<Val>>,
        image: bool,
    ) -> Outcome {
        debug_assert_eq!(values.len(), self.cells.len());
        debug_assert!(!image || values.iter().all(Option::is_some));
        if self.dead(version) {
            return Outcome::Superseded;
        }
        self.settle();
        let mut outcome = Outcome::Superseded;
        if image && self.image.is_none_or(|v| v < version) {
            if self.image.is_none() {
                // The row comes into existence.
                outcome = Outcome::Applied;
            }
            self.image = Some(version);
        }
        for (cell, value) in self.cells.iter_mut().zip(values) {
            let Some(val) = value else { continue };
            if cell.as_ref().is_none_or(|c| c.version < version) {
                *cell = Some(Cell { val, version });
                outcome = Outcome::Applied;
            }
        }
        outcome
    }

    /// A DELETE: every column older than it dies; columns set by newer
    /// changes (a re-insert whose image is still on its way) stay parked.
    pub fn apply_delete(&mut self, version: Version) -> Outcome {
        if self.dead(version) {
            return Outcome::Superseded;
        }
        self.settle();
        for cell in &mut self.cells {
            if cell.as_ref().is_some_and(|c| c.version <= version) {
                *cell = None;
            }
        }
        self.floor = Some(version);
        // The row no longer exists unless a newer image made it again.
        self.image = self.image.filter(|&v| v > version);
        Outcome::Applied
    }

    /// The values this row would carry over into a new key (key-changing
    /// UPDATE): what is known of each column, None where unknown.
    pub fn carry(&self) -> Vec<Option<Val>> {
        self.cells
            .iter()
            .map(|c| c.as_ref().map(|c| c.val.clone()))
            .collect()
    }
}

/// One change of the batch, already mapped to key ids and column positions.
#[derive(Debug, Clone)]
pub enum Change {
    /// INSERT or UPDATE of `key`; `values[c]` is Some for each carried column.
    /// With `from` set, the change moves the row from that old key: the old
    /// key is deleted at the same version and columns the change does not
    /// carry are taken over from it.
    Image {
        key: KeyId,
        values: Vec<Option<Val>>,
        from: Option<KeyId>,
    },
    Delete {
        key: KeyId,
    },
}

/// A change with its version and its index in the batch (to report
/// per-message outcomes).
#[derive(Debug, Clone)]
pub struct Versioned {
    pub version: Version,
    pub index: usize,
    pub change: Change,
}

/// Applies `changes` in version order to `states` (indexed by key id) and
/// returns each change's outcome, by batch index.
pub fn merge(states: &mut [RowState], mut changes: Vec<Versioned>) -> KeyMap<Outcome> {
    changes.sort_by_key(|c| (c.version, c.index));
    let mut outcomes = KeyMap::with_capacity_and_hasher(changes.len(), FastState::default());
    for Versioned {
        version,
        index,
        change,
    } in changes
    {
        let outcome = match change {
            Change::Delete { key } => states[key].apply_delete(version),
            Change::Image { key, values, from } => match from {
                Some(old) if old != key => {
                    // The new key exists by this change if it carries the
                    // whole row, or inherits it from an old row that exists.
                    let whole = values.iter().all(Option::is_some)
                        || (states[old].is_live() && !states[old].dead(version));
                    let carried = states[old].carry();
                    let values: Vec<Option<Val>> = values
                        .into_iter()
                        .zip(carried)
                        .map(|(given, carried)| given.or(carried))
                        .collect();
                    let whole = whole && values.iter().all(Option::is_some);
                    let a = states[old].apply_delete(version);
                    let b = states[key].apply_change(version, values, whole);
                    if a == Outcome::Applied || b == Outcome::Applied {
                        Outcome::Applied
                    } else {
                        Outcome::Superseded
                    }
                }
                _ => states[key].apply_image(version, values),
            },
        };
        outcomes.insert(index, outcome);
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use syncdata_core::version::Lsn;

    fn v(n: u64) -> Version {
        Version::new(Lsn(n), 0)
    }
    fn k(s: &str) -> Option<Val> {
        Some(Val::Known(Some(s.to_owned())))
    }
    fn shown(state: &RowState) -> Option<Vec<String>> {
        state.is_live().then(|| {
            state
                .cells
                .iter()
                .map(|c| match &c.as_ref().unwrap().val {
                    Val::Known(Some(s)) => s.clone(),
                    Val::Known(None) => "NULL".into(),
                    Val::InDb(k) => format!("db{k}"),
                })
                .collect()
        })
    }

    #[test]
    fn partial_update_before_its_image_waits_then_merges() {
        // INSERT v1 {id, a=1, big=X}; UPDATE v2 {a=2, big=Y}; partial v3 {a=3}
        let mut s = vec![RowState::empty(3)];
        let ch = |ver, vals: Vec<Option<Val>>, i| Versioned {
            version: v(ver),
            index: i,
            change: Change::Image {
                key: 0,
                values: vals,
                from: None,
            },
        };
        merge(&mut s, vec![ch(3, vec![k("1"), k("3"), None], 0)]);
        assert!(s[0].is_parked());
        merge(&mut s, vec![ch(1, vec![k("1"), k("1"), k("X")], 1)]);
        assert_eq!(shown(&s[0]).unwrap(), ["1", "3", "X"]);
        merge(&mut s, vec![ch(2, vec![k("1"), k("2"), k("Y")], 2)]);
        assert_eq!(shown(&s[0]).unwrap(), ["1", "3", "Y"], "big comes from v2");
    }

    #[test]
    fn delete_leaves_a_tombstone_that_stops_a_late_insert() {
        let mut s = RowState::empty(2);
        assert_eq!(s.apply_delete(v(5)), Outcome::Applied);
        assert_eq!(
            s.apply_image(v(3), vec![k("1"), k("a")]),
            Outcome::Superseded
        );
        assert!(!s.is_live());
        assert_eq!(s.apply_image(v(7), vec![k("1"), k("b")]), Outcome::Applied);
        assert_eq!(shown(&s).unwrap(), ["1", "b"]);
    }

    #[test]
    fn delete_between_image_and_newer_partial_parks_the_newer_columns() {
        let mut s = RowState::empty(3);
        s.apply_image(v(1), vec![k("1"), k("a"), k("X")]);
        s.apply_image(v(9), vec![None, k("z"), None]); // after a re-insert at v7
        s.apply_delete(v(5));
        assert!(s.is_parked());
        s.apply_image(v(7), vec![k("1"), k("r"), k("R")]);
        assert_eq!(shown(&s).unwrap(), ["1", "z", "R"]);
    }

    #[test]
    fn key_change_carries_unchanged_columns() {
        let mut s = vec![RowState::empty(3), RowState::empty(3)];
        let changes = vec![
            Versioned {
                version: v(1),
                index: 0,
                change: Change::Image {
                    key: 0,
                    values: vec![k("2"), k("beta"), k("BIG")],
                    from: None,
                },
            },
            Versioned {
                version: v(2),
                index: 1,
                change: Change::Image {
                    key: 1,
                    values: vec![k("20"), k("beta2"), None],
                    from: Some(0),
                },
            },
        ];
        let out = merge(&mut s, changes);
        assert_eq!(out[&1], Outcome::Applied);
        assert!(!s[0].is_live() && s[0].floor == Some(v(2)));
        assert_eq!(shown(&s[1]).unwrap(), ["20", "beta2", "BIG"]);
    }

    /// The one known order dependence (docs/hostile-input.md): a key
    /// change that leaves out an unchanged TOAST column, delivered before
    /// the old row's image, stays parked; in order, the row is complete.
    /// Pinned so that a fix updates the documentation with this test.
    #[test]
    fn a_key_change_without_its_toast_column_before_the_old_image_stays_parked() {
        let insert = Versioned {
            version: v(1),
            index: 0,
            change: Change::Image {
                key: 0,
                values: vec![k("1"), k("a"), k("BIG")],
                from: None,
            },
        };
        let moved = Versioned {
            version: v(2),
            index: 1,
            change: Change::Image {
                key: 1,
                values: vec![k("2"), k("b"), None],
                from: Some(0),
            },
        };
        let mut in_order = vec![RowState::empty(3), RowState::empty(3)];
        merge(&mut in_order, vec![insert.clone()]);
        merge(&mut in_order, vec![moved.clone()]);
        assert_eq!(shown(&in_order[1]).unwrap(), ["2", "b", "BIG"]);
        let mut reversed = vec![RowState::empty(3), RowState::empty(3)];
        merge(&mut reversed, vec![moved]);
        let late = merge(&mut reversed, vec![insert]);
        assert_eq!(late[&0], Outcome::Superseded, "below the old key's floor");
        assert!(reversed[1].is_parked(), "waits for good");
    }

    #[test]
    fn duplicates_are_superseded() {
        let mut s = RowState::empty(2);
        assert_eq!(s.apply_image(v(4), vec![k("1"), k("a")]), Outcome::Applied);
        assert_eq!(
            s.apply_image(v(4), vec![k("1"), k("a")]),
            Outcome::Superseded
        );
        assert_eq!(s.apply_delete(v(6)), Outcome::Applied);
        assert_eq!(s.apply_delete(v(6)), Outcome::Superseded);
    }

    #[test]
    fn partial_updates_covering_every_column_never_make_a_row() {
        // No image ever arrives: {id, a} at v1, {id, big} at v2, {id, a} at
        // v3. Together they name every column; in version order each finds
        // no row and is skipped, so no order may make the row visible.
        let partials = [
            (1, vec![k("1"), k("a1"), None]),
            (2, vec![k("1"), None, k("B2")]),
            (3, vec![k("1"), k("a3"), None]),
        ];
        let orders: [&[usize]; 4] = [&[0, 1, 2], &[2, 1, 0], &[1, 2, 0], &[0, 2, 1, 0]];
        for order in orders {
            // One change per batch, and all in one batch.
            let mut one_by_one = RowState::empty(3);
            let mut batch = Vec::new();
            for (i, &p) in order.iter().enumerate() {
                let (ver, vals) = partials[p].clone();
                one_by_one.apply_image(v(ver), vals.clone());
                assert!(!one_by_one.is_live(), "order {order:?}");
                batch.push(Versioned {
                    version: v(ver),
                    index: i,
                    change: Change::Image {
                        key: 0,
                        values: vals,
                        from: None,
                    },
                });
            }
            assert!(one_by_one.is_parked() && one_by_one.cells.iter().all(Option::is_some));
            let mut s = vec![RowState::empty(3)];
            merge(&mut s, batch);
            assert!(!s[0].is_live() && s[0].is_parked(), "order {order:?}");
            // A late image below them makes the row, the partials on top.
            assert_eq!(
                s[0].apply_image(v(0), vec![k("1"), k("a0"), k("B0")]),
                Outcome::Applied
            );
            assert_eq!(shown(&s[0]).unwrap(), ["1", "a3", "B2"]);
        }
    }

    #[test]
    fn a_delete_newer_than_the_image_unmakes_the_row_for_good() {
        // INSERT v1, DELETE v2, then partials v3 and v4 naming every column:
        // in order the row is gone at v2 and both partials are skipped.
        let mut s = RowState::empty(3);
        s.apply_image(v(4), vec![k("1"), None, k("B4")]);
        s.apply_image(v(3), vec![k("1"), k("a3"), None]);
        s.apply_image(v(1), vec![k("1"), k("a1"), k("B1")]);
        assert!(s.is_live(), "the image at v1 makes it");
        s.apply_delete(v(2));
        assert!(!s.is_live() && s.is_parked());
        assert_eq!(
            s.apply_image(v(1), vec![k("1"), k("x"), k("y")]),
            Outcome::Superseded
        );
        assert!(!s.is_live());
    }

    #[test]
    fn a_row_loaded_from_the_target_exists_and_partials_keep_it() {
        let mut s = RowState::empty(3);
        for cell in &mut s.cells {
            *cell = Some(Cell {
                val: Val::InDb(0),
                version: v(5),
            });
        }
        assert!(s.is_live());
        s.apply_image(v(6), vec![k("1"), k("a6"), None]);
        assert!(s.is_live());
        assert_eq!(shown(&s).unwrap(), ["1", "a6", "db0"]);
        s.apply_delete(v(7));
        assert!(!s.is_live());
    }

    #[test]
    fn key_change_makes_the_new_key_only_from_an_image() {
        let change = |ver, key, vals: Vec<Option<Val>>, from, i| Versioned {
            version: v(ver),
            index: i,
            change: Change::Image {
                key,
                values: vals,
                from,
            },
        };
        // Old key 0 never had an image, only a partial naming `big`; a
        // partial key change 0 -> 1 carries the rest: no row anywhere.
        let mut s = vec![RowState::empty(3), RowState::empty(3)];
        merge(
            &mut s,
            vec![
                change(1, 0, vec![k("1"), None, k("B1")], None, 0),
                change(2, 1, vec![k("2"), k("a2"), None], Some(0), 1),
            ],
        );
        assert!(!s[0].is_live() && !s[1].is_live());
        // With the old row's image it inherits a whole row.
        let mut s = vec![RowState::empty(3), RowState::empty(3)];
        merge(
            &mut s,
            vec![
                change(1, 0, vec![k("1"), k("a1"), k("B1")], None, 0),
                change(2, 1, vec![k("2"), k("a2"), None], Some(0), 1),
            ],
        );
        assert!(!s[0].is_live());
        assert_eq!(shown(&s[1]).unwrap(), ["2", "a2", "B1"]);
        // Carrying every column itself, it needs no old row.
        let mut s = vec![RowState::empty(3), RowState::empty(3)];
        merge(
            &mut s,
            vec![change(2, 1, vec![k("2"), k("a2"), k("B2")], Some(0), 0)],
        );
        assert_eq!(shown(&s[1]).unwrap(), ["2", "a2", "B2"]);
    }

    /// A history of one row: (op, value) with op 0 = full image, 1 = partial
    /// leaving out column 2, 2 = delete, 3 = partial leaving out column 1.
    /// Any op may come at any point: partials and deletes of a row that does
    /// not exist are part of what the merge must get right.
    fn history() -> impl Strategy<Value = Vec<(u8, u8)>> {
        prop::collection::vec((0u8..4, 0u8..10), 1..14)
    }

    fn changes_of(ops: &[(u8, u8)]) -> Vec<Versioned> {
        let mut out = Vec::new();
        for (i, (op, val)) in ops.iter().enumerate() {
            let val = format!("{val}");
            let change = match op {
                2 => Change::Delete { key: 0 },
                1 => Change::Image {
                    key: 0,
                    values: vec![k("1"), k(&val), None],
                    from: None,
                },
                3 => Change::Image {
                    key: 0,
                    values: vec![k("1"), None, k(&format!("big{val}"))],
                    from: None,
                },
                _ => Change::Image {
                    key: 0,
                    values: vec![k("1"), k(&val), k(&format!("big{val}"))],
                    from: None,
                },
            };
            out.push(Versioned {
                version: v(i as u64 + 1),
                index: i,
                change,
            });
        }
        out
    }

    /// The source applied in order, per seed 004, with no merge at all: an
    /// image upserts; a partial UPDATE of a missing row is skipped; a
    /// DELETE removes the row (or finds none).
    fn in_order(changes: &[Versioned]) -> Option<Vec<String>> {
        let mut row: Option<Vec<String>> = None;
        for c in changes {
            match &c.change {
                Change::Delete { .. } => row = None,
                Change::Image { values, .. } => {
                    let text = |v: &Val| match v {
                        Val::Known(Some(s)) => s.clone(),
                        other => panic!("unexpected {other:?}"),
                    };
                    if values.iter().all(Option::is_some) {
                        row = Some(values.iter().flatten().map(text).collect());
                    } else if let Some(row) = &mut row {
                        for (cell, v) in row.iter_mut().zip(values) {
                            if let Some(v) = v {
                                *cell = text(v);
                            }
                        }
                    }
                }
            }
        }
        row
    }

    proptest! {
        /// Any order, any batching, with duplicates, gives the result of
        /// applying the source's changes in order (seed 004 rules).
        #[test]
        fn order_and_batching_do_not_matter(ops in history(), seed in any::<u64>(), cuts in prop::collection::vec(0usize..20, 0..4)) {
            let changes = changes_of(&ops);
            let expected = in_order(&changes);
            let mut shuffled = changes.clone();
            shuffled.extend(changes.iter().take(seed as usize % (changes.len() + 1)).cloned());
            let mut rng = seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let mut got = vec![RowState::empty(3)];
            let mut start = 0;
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (shuffled.len() + 1)).collect();
            bounds.push(shuffled.len());
            bounds.sort();
            for end in bounds {
                if end > start {
                    merge(&mut got, shuffled[start..end].to_vec());
                    start = end;
                }
            }
            prop_assert_eq!(shown(&got[0]), expected);
        }
    }
}
