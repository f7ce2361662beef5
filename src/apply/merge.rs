//! The version merge: given the stored state of the rows a batch touches and
//! the batch's changes, compute each row's final state. Pure logic, no I/O.
//!
//! Invariant: every column of a row holds the value of the newest change
//! that set it (per-column last-writer-wins), and nothing at or below the
//! row's floor (its newest delete, or the table's TRUNCATE) survives. Because
//! the result depends only on the set of changes and not on their order, a
//! batch may arrive in any order, be replayed, or be split across processes.
//!
//! A row is *live* (visible in the target table) when every column is known;
//! a row with only some columns known is *parked*: a partial UPDATE (unchanged
//! TOAST columns left out) whose earlier image has not arrived yet. It waits,
//! invisible, until an image completes it.

use std::collections::HashMap;

use crate::version::Version;

/// Index of a key in the batch's key table.
pub type KeyId = usize;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one column (or the row's existence) changed.
    Applied,
    /// Older than what is already there: a duplicate or superseded change.
    Superseded,
}

impl RowState {
    pub fn empty(columns: usize) -> RowState {
        RowState {
            floor: None,
            cells: vec![None; columns],
        }
    }

    pub fn is_live(&self) -> bool {
        self.cells.iter().all(Option::is_some)
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
    pub fn apply_image(&mut self, version: Version, values: Vec<Option<Val>>) -> Outcome {
        debug_assert_eq!(values.len(), self.cells.len());
        if self.dead(version) {
            return Outcome::Superseded;
        }
        let mut outcome = Outcome::Superseded;
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
        for cell in &mut self.cells {
            if cell.as_ref().is_some_and(|c| c.version <= version) {
                *cell = None;
            }
        }
        self.floor = Some(version);
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
pub fn merge(states: &mut [RowState], mut changes: Vec<Versioned>) -> HashMap<usize, Outcome> {
    changes.sort_by_key(|c| (c.version, c.index));
    let mut outcomes = HashMap::with_capacity(changes.len());
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
                    let carried = states[old].carry();
                    let values = values
                        .into_iter()
                        .zip(carried)
                        .map(|(given, carried)| given.or(carried))
                        .collect();
                    let a = states[old].apply_delete(version);
                    let b = states[key].apply_image(version, values);
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
    use crate::version::Lsn;
    use proptest::prelude::*;

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

    /// A history of one row: (version, op) with op 0 = full image,
    /// 1 = partial image (column 2 left out), 2 = delete.
    fn history() -> impl Strategy<Value = Vec<(u8, u8)>> {
        prop::collection::vec((0u8..3, 0u8..10), 1..12)
    }

    fn changes_of(ops: &[(u8, u8)]) -> Vec<Versioned> {
        // Make the history realistic: partials only while the row exists.
        let mut exists = false;
        let mut out = Vec::new();
        for (i, (op, val)) in ops.iter().enumerate() {
            let version = v(i as u64 + 1);
            let val = format!("{val}");
            let change = match (op, exists) {
                (2, true) => {
                    exists = false;
                    Change::Delete { key: 0 }
                }
                (1, true) => Change::Image {
                    key: 0,
                    values: vec![k("1"), k(&val), None],
                    from: None,
                },
                _ => {
                    exists = true;
                    Change::Image {
                        key: 0,
                        values: vec![k("1"), k(&val), k(&format!("big{val}"))],
                        from: None,
                    }
                }
            };
            out.push(Versioned {
                version,
                index: i,
                change,
            });
        }
        out
    }

    proptest! {
        /// Any order, any batching, with duplicates, gives the in-order result.
        #[test]
        fn order_and_batching_do_not_matter(ops in history(), seed in any::<u64>(), cuts in prop::collection::vec(0usize..20, 0..4)) {
            let changes = changes_of(&ops);
            let mut expected = vec![RowState::empty(3)];
            for c in changes.clone() {
                merge(&mut expected, vec![c]);
            }
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
            prop_assert_eq!(shown(&got[0]), shown(&expected[0]));
        }
    }
}
