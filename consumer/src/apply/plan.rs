//! From bookkeeping to merge states and from merged states to a write plan:
//! which target rows to delete, write whole, or update in some columns, and
//! which bookkeeping rows to write. Pure, no I/O; the target runs the plan.
//!
//! Invariants: a row the merge left unchanged is not written at all; a
//! live row is written whole unless it is present and keeps some of its own
//! columns (then only the changed columns are written, so values the batch
//! does not carry are never read just to be written back); a row that is
//! not live (deleted, or parked waiting for its image) is absent from the
//! target table; the bookkeeping row of every changed key holds its newest
//! version, the versions of columns that differ from it, its floor, and a
//! parked row's known values — exactly what [`initial_state`] reads back.

use std::collections::BTreeMap;

use syncdata_core::version::Version;

use super::merge::{Cell, KeyId, KeyMap, KeySet, RowState, Val};
use super::shape::TableShape;

/// A row's bookkeeping as read under lock.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// `L` live, `P` parked, `D` deleted (`N`: a placeholder older versions
    /// wrote and never committed).
    pub state: String,
    pub version: Version,
    pub floor: Option<Version>,
    /// Column name -> `[lsn, seq]`, for columns whose version differs from
    /// `version`.
    pub col_versions: Option<serde_json::Value>,
    /// Column name -> text (or null), the known values of a parked row.
    pub parked: Option<serde_json::Value>,
}

/// A row's bookkeeping as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookRow {
    pub state: &'static str,
    pub lsn: i64,
    pub seq: i64,
    pub floor: Option<(i64, i64)>,
    /// JSON text, as [`Stored::col_versions`].
    pub col_versions: Option<String>,
    /// JSON text, as [`Stored::parked`].
    pub parked: Option<String>,
}

impl BookRow {
    /// The bookkeeping of a merged row; None when nothing is known of it.
    pub fn of(
        shape: &TableShape,
        st: &RowState,
        resolve: &dyn Fn(usize, &Val) -> Option<String>,
    ) -> Option<BookRow> {
        let version = st.version()?;
        let state = if st.is_live() {
            "L"
        } else if st.is_parked() {
            "P"
        } else {
            "D"
        };
        let mut cv = BTreeMap::new();
        let mut parked = BTreeMap::new();
        for (c, cell) in st.cells.iter().enumerate() {
            if let Some(cell) = cell {
                if cell.version != version {
                    let (l, s) = cell.version.to_db();
                    cv.insert(shape.columns[c].name.clone(), serde_json::json!([l, s]));
                }
                if state == "P" {
                    parked.insert(
                        shape.columns[c].name.clone(),
                        serde_json::json!(resolve(c, &cell.val)),
                    );
                }
            }
        }
        let (lsn, seq) = version.to_db();
        Some(BookRow {
            state,
            lsn,
            seq,
            floor: st.floor.map(Version::to_db),
            col_versions: (!cv.is_empty())
                .then(|| serde_json::Value::Object(cv.into_iter().collect()).to_string()),
            parked: (state == "P")
                .then(|| serde_json::Value::Object(parked.into_iter().collect()).to_string()),
        })
    }
}

fn version_of_json(v: &serde_json::Value) -> Option<Version> {
    let a = v.as_array()?;
    Some(Version::from_db(a.first()?.as_i64()?, a.get(1)?.as_i64()?))
}

/// The merge state of key `id` before the batch, from its bookkeeping (None:
/// no row) and whether the target table has a row for it. Existence comes
/// from the target table: a live row's values stay there ([`Val::InDb`])
/// and are read only when needed.
pub fn initial_state(
    shape: &TableShape,
    id: KeyId,
    stored: Option<&Stored>,
    target_exists: bool,
) -> RowState {
    let n = shape.columns.len();
    let mut st = RowState::empty(n);
    let Some(s) = stored else {
        // No bookkeeping: a row present locally was loaded before syncing
        // began (known, at the lowest version); otherwise nothing is known.
        if target_exists {
            for cell in &mut st.cells {
                *cell = Some(Cell {
                    val: Val::InDb(id),
                    version: Version::ZERO,
                });
            }
        }
        return st;
    };
    let col_version = |c: usize| {
        s.col_versions
            .as_ref()
            .and_then(|m| m.get(&shape.columns[c].name))
            .and_then(version_of_json)
            .unwrap_or(s.version)
    };
    match s.state.as_str() {
        // A placeholder (written by earlier versions inside a transaction,
        // never committed): as if there were no bookkeeping.
        "N" if target_exists => {
            for cell in &mut st.cells {
                *cell = Some(Cell {
                    val: Val::InDb(id),
                    version: Version::ZERO,
                });
            }
        }
        "L" if target_exists => {
            for (c, cell) in st.cells.iter_mut().enumerate() {
                *cell = Some(Cell {
                    val: Val::InDb(id),
                    version: col_version(c),
                });
            }
            st.floor = s.floor;
        }
        "L" => {
            tracing::warn!(table = %shape.name, "a synced row was removed from the target by hand; it returns with its next full image (or run resync)");
            st.floor = s.floor;
        }
        "P" => {
            if let Some(serde_json::Value::Object(values)) = &s.parked {
                for (name, v) in values {
                    if let Some(&c) = shape.by_name.get(name) {
                        st.cells[c] = Some(Cell {
                            val: Val::Known(v.as_str().map(str::to_owned)),
                            version: col_version(c),
                        });
                    }
                }
            }
            st.floor = s.floor;
        }
        "D" => st.floor = Some(s.floor.unwrap_or(s.version)),
        _ => {}
    }
    st
}

/// Which rows need values from the target table that are not in hand.
pub fn values_needed(states: &[RowState], initial: &[RowState]) -> KeySet {
    let mut need = KeySet::default();
    for (id, st) in states.iter().enumerate() {
        if st == &initial[id] {
            continue;
        }
        let full_write = st.is_parked()
            || (st.is_live() && !st.cells.iter().flatten().any(|c| c.val == Val::InDb(id)));
        for cell in st.cells.iter().flatten() {
            if let Val::InDb(k) = cell.val {
                if k != id || full_write {
                    need.insert(k);
                }
            }
        }
    }
    need
}

/// The text of column `c` of a cell value, from the batch or from the
/// target rows read.
pub fn resolve(fetched: &KeyMap<Vec<Option<String>>>, c: usize, val: &Val) -> Option<String> {
    match val {
        Val::Known(v) => v.clone(),
        Val::InDb(k) => fetched.get(k).and_then(|row| row[c].clone()),
    }
}

/// What the engine knows of each key (indexed by [`KeyId`]) once the merge
/// is final.
pub struct Merged<'a> {
    pub initial: &'a [RowState],
    pub states: &'a [RowState],
    /// The target table has a row for the key.
    pub exists: &'a [bool],
    /// The key had a bookkeeping row when locked.
    pub had_book: &'a [bool],
    /// The bookkeeping row this batch inserted for a key that had none.
    pub inserted: &'a [Option<BookRow>],
    /// The key's newest whole image is an UPDATE (so its row is most likely
    /// present even when not probed).
    pub by_update: &'a [bool],
    /// Target rows read for values not in hand (see [`values_needed`]).
    pub fetched: &'a KeyMap<Vec<Option<String>>>,
}

/// The writes that bring the target and its bookkeeping to the merged
/// states. Each list is in key-id order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// Target rows to delete.
    pub deletes: Vec<KeyId>,
    /// Whole rows most likely present: updated by key (cheaper than an
    /// upsert, as native replication does); those found absent are upserted.
    pub updates: Vec<(KeyId, Vec<Option<String>>)>,
    /// Whole rows to insert, or to overwrite when present.
    pub upserts: Vec<(KeyId, Vec<Option<String>>)>,
    /// Present rows of which some columns change: per column, `Some(text)`
    /// to write, None to keep.
    pub partial: Vec<(KeyId, Vec<Option<Option<String>>>)>,
    /// Bookkeeping rows to update (keys that had one, or whose row this
    /// batch inserted and a later round of the merge changed).
    pub book: Vec<(KeyId, BookRow)>,
    /// Bookkeeping rows to remove (nothing is known of the key any more).
    pub book_removals: Vec<KeyId>,
    /// Rows left parked.
    pub parked: u64,
}

/// The plan for the merged states `m` of a table of shape `shape`.
pub fn plan(shape: &TableShape, m: &Merged<'_>) -> WritePlan {
    let mut plan = WritePlan::default();
    let resolve_cell = |c: usize, val: &Val| resolve(m.fetched, c, val);
    let has_non_key = (0..shape.columns.len()).any(|c| !shape.is_key(c));
    for (id, st) in m.states.iter().enumerate() {
        if st == &m.initial[id] {
            continue;
        }
        if st.is_live() {
            let own = st.cells.iter().flatten().any(|c| c.val == Val::InDb(id));
            if own && m.exists[id] {
                let cells = st
                    .cells
                    .iter()
                    .enumerate()
                    .map(|(c, cell)| {
                        let cell = cell.as_ref().expect("live");
                        (cell.val != Val::InDb(id)).then(|| resolve_cell(c, &cell.val))
                    })
                    .collect();
                plan.partial.push((id, cells));
            } else {
                let row = st
                    .cells
                    .iter()
                    .enumerate()
                    .map(|(c, cell)| resolve_cell(c, &cell.as_ref().expect("live").val))
                    .collect();
                let likely_there = m.exists[id] || m.by_update[id];
                if likely_there && has_non_key {
                    plan.updates.push((id, row));
                } else {
                    plan.upserts.push((id, row));
                }
            }
        } else if m.exists[id] {
            plan.deletes.push(id);
        }
        if st.is_parked() {
            plan.parked += 1;
        }
        let row = BookRow::of(shape, st, &resolve_cell);
        if m.had_book[id] {
            match row {
                Some(row) => plan.book.push((id, row)),
                None => plan.book_removals.push(id),
            }
        } else if let Some(ins) = &m.inserted[id] {
            // Inserted from an earlier round of the merge: bring it up to
            // date if a later round changed it.
            match row {
                Some(row) if row == *ins => {}
                Some(row) => plan.book.push((id, row)),
                None => plan.book_removals.push(id),
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::merge::Outcome;
    use crate::apply::shape::Column;
    use proptest::prelude::*;
    use syncdata_core::table::TableName;
    use syncdata_core::version::Lsn;

    /// `t (id key, a, b)`.
    fn shape() -> TableShape {
        let columns: Vec<Column> = ["id", "a", "b"]
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                sql_type: "text".into(),
                is_bytea: false,
            })
            .collect();
        TableShape {
            name: TableName::new("public", "t"),
            by_name: columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect(),
            columns,
            generated: Default::default(),
            key: vec![0],
        }
    }

    fn v(n: u64) -> Version {
        Version::new(Lsn(n), 0)
    }

    fn known(id: &str, a: &str, b: &str) -> Vec<Option<Val>> {
        [id, a, b]
            .iter()
            .map(|s| Some(Val::Known(Some(s.to_string()))))
            .collect()
    }

    fn live_in_db(id: KeyId, version: Version) -> RowState {
        RowState::loaded(
            None,
            vec![
                Some(Cell {
                    val: Val::InDb(id),
                    version,
                });
                3
            ],
        )
    }

    /// Plans one key: `(initial, state, exists, had_book, by_update)`.
    fn plan_one(initial: RowState, state: RowState, exists: bool, had_book: bool) -> WritePlan {
        let fetched = KeyMap::default();
        plan(
            &shape(),
            &Merged {
                initial: &[initial],
                states: &[state],
                exists: &[exists],
                had_book: &[had_book],
                inserted: &[None],
                by_update: &[false],
                fetched: &fetched,
            },
        )
    }

    fn texts(values: &[&str]) -> Vec<Option<String>> {
        values.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn unchanged_rows_are_not_written() {
        let st = live_in_db(0, v(5));
        assert_eq!(plan_one(st.clone(), st, true, true), WritePlan::default());
    }

    #[test]
    fn a_whole_image_of_an_absent_row_is_upserted_with_its_bookkeeping() {
        let mut st = RowState::empty(3);
        assert_eq!(st.apply_image(v(7), known("1", "x", "y")), Outcome::Applied);
        let p = plan_one(RowState::empty(3), st, false, false);
        assert_eq!(p.upserts, vec![(0, texts(&["1", "x", "y"]))]);
        assert!(p.updates.is_empty() && p.partial.is_empty() && p.deletes.is_empty());
        // No bookkeeping row: it is inserted by the engine, not updated.
        assert!(p.book.is_empty());
    }

    #[test]
    fn a_whole_image_of_a_present_row_is_an_update() {
        let initial = live_in_db(0, v(5));
        let mut st = initial.clone();
        st.apply_image(v(7), known("1", "x", "y"));
        let p = plan_one(initial, st, true, true);
        assert_eq!(p.updates, vec![(0, texts(&["1", "x", "y"]))]);
        assert_eq!(p.book.len(), 1);
        assert_eq!(p.book[0].1.state, "L");
        assert_eq!(p.book[0].1.col_versions, None);
    }

    #[test]
    fn a_partial_update_of_a_present_row_writes_only_its_columns() {
        let initial = live_in_db(0, v(5));
        let mut st = initial.clone();
        st.apply_image(
            v(7),
            vec![
                Some(Val::Known(Some("1".into()))),
                Some(Val::Known(Some("x".into()))),
                None,
            ],
        );
        let p = plan_one(initial, st, true, true);
        // The key column is rewritten with its own value; b is kept.
        assert_eq!(
            p.partial,
            vec![(
                0,
                vec![Some(Some("1".into())), Some(Some("x".into())), None]
            )]
        );
        let book = &p.book[0].1;
        assert_eq!((book.lsn, book.state), (7, "L"));
        assert_eq!(book.col_versions.as_deref(), Some(r#"{"b":[5,0]}"#));
    }

    #[test]
    fn a_delete_of_a_present_row_deletes_and_leaves_a_tombstone() {
        let initial = live_in_db(0, v(5));
        let mut st = initial.clone();
        st.apply_delete(v(9));
        let p = plan_one(initial, st, true, true);
        assert_eq!(p.deletes, vec![0]);
        let book = &p.book[0].1;
        assert_eq!((book.state, book.lsn, book.floor), ("D", 9, Some((9, 0))));
    }

    #[test]
    fn a_partial_update_of_an_absent_row_parks_it() {
        let mut st = RowState::empty(3);
        st.apply_image(
            v(7),
            vec![
                Some(Val::Known(Some("1".into()))),
                Some(Val::Known(Some("x".into()))),
                None,
            ],
        );
        let p = plan_one(RowState::empty(3), st, false, true);
        assert_eq!(p.parked, 1);
        assert!(p.upserts.is_empty() && p.partial.is_empty() && p.deletes.is_empty());
        let book = &p.book[0].1;
        assert_eq!(book.state, "P");
        assert_eq!(book.parked.as_deref(), Some(r#"{"a":"x","id":"1"}"#));
    }

    fn arb_state() -> impl Strategy<Value = RowState> {
        let cell = prop::option::of(
            (0u64..6, prop::option::of("[a-c]")).prop_map(|(n, t)| Cell {
                val: Val::Known(t),
                version: v(n + 1),
            }),
        );
        (prop::option::of(0u64..6), prop::collection::vec(cell, 3)).prop_map(|(floor, cells)| {
            let floor = floor.map(|n| v(n + 1));
            // The merge never keeps a cell at or below the floor.
            let cells = cells
                .into_iter()
                .map(|c| c.filter(|c| floor.is_none_or(|f| c.version > f)))
                .collect();
            RowState::loaded(floor, cells)
        })
    }

    proptest! {
        /// What the plan writes as bookkeeping reads back as the same
        /// merge state (for rows whose values are in the bookkeeping or,
        /// when live, in the target table).
        #[test]
        fn bookkeeping_round_trips(st in arb_state()) {
            let shape = shape();
            let fetched = KeyMap::default();
            let Some(row) = BookRow::of(&shape, &st, &|c, val| resolve(&fetched, c, val)) else {
                prop_assert!(st.cells.iter().all(Option::is_none) && st.floor.is_none());
                return Ok(());
            };
            let stored = Stored {
                state: row.state.to_owned(),
                version: Version::from_db(row.lsn, row.seq),
                floor: row.floor.map(|(l, s)| Version::from_db(l, s)),
                col_versions: row.col_versions.as_deref().map(|t| serde_json::from_str(t).unwrap()),
                parked: row.parked.as_deref().map(|t| serde_json::from_str(t).unwrap()),
            };
            let back = initial_state(&shape, 0, Some(&stored), st.is_live());
            let mut expected = st.clone();
            if st.is_live() {
                // Live values stay in the target table.
                for cell in expected.cells.iter_mut().flatten() {
                    cell.val = Val::InDb(0);
                }
            }
            if !st.is_live() && !st.is_parked() {
                // A tombstone keeps only its floor (its version if none).
                expected.floor = Some(st.floor.unwrap_or(stored.version));
            }
            prop_assert_eq!(back, expected);
        }

        /// Every changed key is written exactly once, the way its state
        /// says; unchanged keys not at all.
        #[test]
        fn each_changed_key_gets_one_write(
            rows in prop::collection::vec((arb_state(), arb_state(), any::<bool>(), any::<bool>()), 1..8)
        ) {
            let shape = shape();
            let initial: Vec<RowState> = rows.iter().map(|r| r.0.clone()).collect();
            let states: Vec<RowState> = rows.iter().map(|r| r.1.clone()).collect();
            let exists: Vec<bool> = rows.iter().map(|r| r.2).collect();
            let by_update: Vec<bool> = rows.iter().map(|r| r.3).collect();
            let had_book = vec![true; rows.len()];
            let inserted = vec![None; rows.len()];
            let fetched = KeyMap::default();
            let p = plan(&shape, &Merged {
                initial: &initial, states: &states, exists: &exists, had_book: &had_book,
                inserted: &inserted, by_update: &by_update, fetched: &fetched,
            });
            for id in 0..rows.len() {
                let writes = p.deletes.iter().filter(|&&k| k == id).count()
                    + p.updates.iter().filter(|w| w.0 == id).count()
                    + p.upserts.iter().filter(|w| w.0 == id).count()
                    + p.partial.iter().filter(|w| w.0 == id).count();
                let book = p.book.iter().filter(|w| w.0 == id).count()
                    + p.book_removals.iter().filter(|&&k| k == id).count();
                let st = &states[id];
                if st == &initial[id] {
                    prop_assert_eq!((writes, book), (0, 0));
                    continue;
                }
                prop_assert_eq!(book, 1);
                let expected = if st.is_live() { 1 } else { usize::from(exists[id]) };
                prop_assert_eq!(writes, expected);
                if st.is_live() && (exists[id] || by_update[id]) {
                    // Values in hand (no InDb cells): a whole row by UPDATE.
                    prop_assert!(p.updates.iter().any(|w| w.0 == id));
                }
                if !st.is_live() && exists[id] {
                    prop_assert!(p.deletes.contains(&id));
                }
            }
            let parked = states.iter().zip(&initial).filter(|(s, i)| s != i && s.is_parked()).count();
            prop_assert_eq!(p.parked as usize, parked);
        }
    }
}
