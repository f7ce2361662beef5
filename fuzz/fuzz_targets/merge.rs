//! The merge kernel against a simulated source: a random history of one
//! table (inserts, full and partial updates, deletes, key changes) is
//! applied by the merge in a random order, in random batches, with
//! duplicates; every row must end as the source has it.
//!
//! Left out: a key-changing UPDATE that omits an unchanged TOAST column (the
//! one known order dependence, see docs/hostile-input.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncdata_consumer::apply::merge::{merge, Change, RowState, Val, Versioned};
use syncdata_core::version::{Lsn, Version};

const KEYS: usize = 4;
const COLUMNS: usize = 3; // id, a, big (big is the TOAST column)

fn known(s: String) -> Option<Val> {
    Some(Val::Known(Some(s)))
}

fn shown(state: &RowState) -> Option<Vec<String>> {
    if !state.is_live() {
        return None;
    }
    Some(
        state
            .cells
            .iter()
            .map(|c| match c.as_ref().map(|c| &c.val) {
                Some(Val::Known(Some(s))) => s.clone(),
                Some(Val::Known(None)) => "NULL".to_owned(),
                Some(Val::InDb(k)) => format!("db{k}"),
                None => unreachable!("live"),
            })
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    let (history, order) = data.split_at(data.len() / 2);
    // The source table and the change stream it produces.
    let mut source: Vec<Option<[String; COLUMNS]>> = vec![None; KEYS];
    let mut changes = Vec::new();
    for (i, b) in history.iter().enumerate() {
        let key = usize::from(b % KEYS as u8);
        let op = b / KEYS as u8 % 5;
        let val = format!("v{i}");
        let version = Version::new(Lsn(i as u64 + 1), 0);
        let change = match (op, source[key].is_some()) {
            (0, false) | (1, true) => {
                let row = [format!("k{key}"), val.clone(), format!("big{i}")];
                let values = row.iter().cloned().map(known).collect();
                source[key] = Some(row);
                Change::Image {
                    key,
                    values,
                    from: None,
                }
            }
            (2, true) => {
                let row = source[key].as_mut().expect("exists");
                row[1] = val.clone();
                Change::Image {
                    key,
                    values: vec![known(row[0].clone()), known(val), None],
                    from: None,
                }
            }
            (3, true) => {
                source[key] = None;
                Change::Delete { key }
            }
            (4, true) => {
                let Some(to) = (1..KEYS)
                    .map(|d| (key + d) % KEYS)
                    .find(|&k| source[k].is_none())
                else {
                    continue;
                };
                let old = source[key].take().expect("exists");
                let row = [format!("k{to}"), val, old[2].clone()];
                let values = row.iter().cloned().map(known).collect();
                source[to] = Some(row);
                Change::Image {
                    key: to,
                    values,
                    from: Some(key),
                }
            }
            _ => continue,
        };
        let index = changes.len();
        changes.push(Versioned {
            version,
            index,
            change,
        });
    }
    if changes.is_empty() {
        return;
    }
    // Delivery: a permutation with duplicates, cut into batches.
    let mut delivered = changes.clone();
    let mut cuts = Vec::new();
    for (i, b) in order.iter().enumerate() {
        match b % 4 {
            0 => delivered.push(changes[usize::from(*b) % changes.len()].clone()),
            1 => cuts.push(usize::from(*b)),
            _ => {
                let n = delivered.len();
                delivered.swap(i % n, usize::from(*b) % n);
            }
        }
    }
    let mut states = vec![RowState::empty(COLUMNS); KEYS];
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (delivered.len() + 1)).collect();
    bounds.push(delivered.len());
    bounds.sort_unstable();
    let mut start = 0;
    for end in bounds {
        if end > start {
            merge(&mut states, delivered[start..end].to_vec());
            start = end;
        }
    }
    for key in 0..KEYS {
        assert_eq!(
            shown(&states[key]),
            source[key].as_ref().map(|r| r.to_vec()),
            "key {key} differs from the source; {} changes",
            changes.len()
        );
    }
});
