//! Records to changes: maps a batch's records onto the table's shape — key
//! ids in the batch's key table, column positions — and rejects what cannot
//! apply to it. Pure, no I/O.
//!
//! Invariant: every record of the batch ends with exactly one disposition
//! or one change (TRUNCATEs are applied here: they only raise the batch's
//! truncate version); a record that names a column the shape lacks is
//! flagged, so the engine can read the shape afresh once before rejecting it.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use syncdata_core::record::{Columns, Op, Record};
use syncdata_core::version::Version;

use super::merge::{Change, FastState, KeyId, Val, Versioned};
use super::shape::TableShape;
use super::{Disposition, Incoming};

/// The text a row's key is stored under in the bookkeeping: the key value's
/// text for a one-column key, a JSON array of texts for a composite key.
pub fn key_text(parts: &[String]) -> String {
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        serde_json::to_string(parts).expect("strings serialize")
    }
}

/// The key values of a stored key text (the inverse of [`key_text`]) for a
/// key of `width` columns.
pub fn key_parts(text: String, width: usize) -> Vec<String> {
    if width == 1 {
        vec![text]
    } else {
        serde_json::from_str(&text).unwrap_or_default()
    }
}

/// The keys a batch touches, each once: a [`KeyId`] is an index here.
///
/// Each key's text is held once: the index finds an id by hashing the text
/// it points at, and a one-column key's values are that same text (only a
/// composite key keeps its values apart). A batch interns every record's
/// key, so this spares two copies of each key and SipHash per record.
#[derive(Debug, Default, Clone)]
pub struct Keys {
    /// [`key_text`] of each key.
    texts: Vec<String>,
    /// The values of each composite key (one per key column); None for a
    /// one-column key, whose value is its text.
    composite: Vec<Option<Vec<String>>>,
    /// Ids, found by the hash of their text.
    index: HashTable<KeyId>,
    hasher: FastState,
}

impl Keys {
    /// The id of `key` (its values, text form, one per key column), added
    /// when new.
    pub fn intern(&mut self, key: Vec<String>) -> KeyId {
        let (text, composite) = if key.len() == 1 {
            (key.into_iter().next().expect("one value"), None)
        } else {
            (key_text(&key), Some(key))
        };
        let hash = self.hasher.hash_one(text.as_str());
        let texts = &self.texts;
        if let Some(&id) = self.index.find(hash, |&id| texts[id] == text) {
            return id;
        }
        let id = self.texts.len();
        self.texts.push(text);
        self.composite.push(composite);
        let (texts, hasher) = (&self.texts, &self.hasher);
        self.index
            .insert_unique(hash, id, |&id| hasher.hash_one(texts[id].as_str()));
        id
    }

    /// The id of the key stored under `text` ([`key_text`]), if interned.
    pub fn id_of(&self, text: &str) -> Option<KeyId> {
        let hash = self.hasher.hash_one(text);
        self.index.find(hash, |&id| self.texts[id] == text).copied()
    }

    /// The [`key_text`] of `id`.
    pub fn text(&self, id: KeyId) -> &str {
        &self.texts[id]
    }

    /// The values of `id`'s key, one per key column.
    pub fn parts(&self, id: KeyId) -> &[String] {
        match &self.composite[id] {
            Some(parts) => parts,
            None => std::slice::from_ref(&self.texts[id]),
        }
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// A batch mapped onto a table shape.
#[derive(Debug)]
pub struct Prepared {
    pub keys: Keys,
    pub changes: Vec<Versioned>,
    /// The newest TRUNCATE of the batch.
    pub truncate: Option<Version>,
    /// Rows with columns on both sides of a TRUNCATE: they get a delete at
    /// the truncate's version before the batch's changes.
    pub truncate_rows: Vec<KeyId>,
    /// Per record; None until the engine decides.
    pub dispositions: Vec<Option<Disposition>>,
    pub versions: Vec<Version>,
    pub ops: Vec<Op>,
    /// A record named a column the shape does not have.
    pub unknown_column: bool,
    /// Per record: a snapshot row (its barrier is in `truncate`).
    pub snapshot: Vec<bool>,
}

/// Maps records to changes on key ids and column positions; rejects what
/// cannot apply to this shape.
pub fn prepare(shape: &TableShape, batch: &[Incoming<'_>]) -> Prepared {
    let mut p = Prepared {
        keys: Keys::default(),
        changes: Vec::new(),
        truncate: None,
        truncate_rows: Vec::new(),
        dispositions: vec![None; batch.len()],
        versions: Vec::with_capacity(batch.len()),
        ops: Vec::with_capacity(batch.len()),
        unknown_column: false,
        snapshot: Vec::with_capacity(batch.len()),
    };
    for (index, inc) in batch.iter().enumerate() {
        let r = inc.record;
        let version = r.version(inc.fallback_seq);
        p.versions.push(version);
        p.ops.push(r.op);
        p.snapshot.push(r.snapshot);
        match to_change(shape, r, &mut p.keys) {
            Ok(Some(change)) => {
                // A snapshot row is also its snapshot's barrier: a TRUNCATE
                // just below it.
                p.truncate = p.truncate.max(r.snapshot_barrier());
                p.changes.push(Versioned {
                    version,
                    index,
                    change,
                })
            }
            Ok(None) => {
                // TRUNCATE
                p.truncate = p.truncate.max(Some(version));
                p.dispositions[index] = Some(Disposition::Applied);
            }
            Err(Rejection {
                unknown_column,
                reason,
            }) => {
                p.unknown_column |= unknown_column;
                p.dispositions[index] = Some(Disposition::Rejected(reason));
            }
        }
    }
    p
}

struct Rejection {
    /// The record names a column the shape lacks.
    unknown_column: bool,
    reason: String,
}

fn reject(unknown_column: bool, reason: String) -> Rejection {
    Rejection {
        unknown_column,
        reason,
    }
}

fn to_change(shape: &TableShape, r: &Record, keys: &mut Keys) -> Result<Option<Change>, Rejection> {
    let n = shape.columns.len();
    let values_of = |cols: &Columns, field: &str| -> Result<Vec<Option<Val>>, Rejection> {
        let mut values = vec![None; n];
        for (name, value) in cols {
            // Record::validate rejects these; a record that skipped it is
            // rejected here rather than decoded lossily.
            if let Some(code) = value.lone_surrogate() {
                return Err(reject(
                    false,
                    format!(
                        "{field}: value of column {name:?} holds a lone UTF-16 surrogate \
                         escape \\u{code:04x}"
                    ),
                ));
            }
            match shape.by_name.get(name) {
                Some(&c) => values[c] = Some(Val::Known(value.to_pg_text())),
                None if shape.generated.contains(name) => {}
                None => {
                    return Err(reject(
                        true,
                        format!(
                            "{field} names column {name:?}, which table {} does not have",
                            shape.name
                        ),
                    ))
                }
            }
        }
        Ok(values)
    };
    let key_of = |values: &[Option<Val>], field: &str| -> Result<Vec<String>, Rejection> {
        shape
            .key
            .iter()
            .map(|&c| match &values[c] {
                Some(Val::Known(Some(t))) => Ok(t.clone()),
                Some(_) => Err(reject(
                    false,
                    format!("{field}: key column {:?} is null", shape.columns[c].name),
                )),
                None => Err(reject(
                    false,
                    format!("{field} lacks key column {:?}", shape.columns[c].name),
                )),
            })
            .collect()
    };
    // Record::validate guarantees `data` for INSERT and UPDATE; a record that
    // skipped it is rejected, not a panic.
    let data = || {
        r.data
            .as_ref()
            .ok_or_else(|| reject(false, format!("{} without data", r.op)))
    };
    match r.op {
        Op::Truncate | Op::Schema => Ok(None),
        Op::Insert => {
            let mut values = values_of(data()?, "data")?;
            let key = key_of(&values, "data")?;
            // An INSERT is a whole row: columns it leaves out are NULL.
            for v in &mut values {
                v.get_or_insert(Val::Known(None));
            }
            Ok(Some(Change::Image {
                key: keys.intern(key),
                values,
                from: None,
            }))
        }
        Op::Update => {
            let mut values = values_of(data()?, "data")?;
            let old = match &r.old_keys {
                Some(old) if !old.is_empty() => {
                    Some(key_of(&values_of(old, "old_keys")?, "old_keys")?)
                }
                _ => None,
            };
            // Key columns absent from data keep their old values.
            if let Some(old) = &old {
                for (i, &c) in shape.key.iter().enumerate() {
                    values[c].get_or_insert_with(|| Val::Known(Some(old[i].clone())));
                }
            }
            let key = key_of(&values, "data")?;
            let from = match old {
                Some(old) if old != key => Some(keys.intern(old)),
                _ => None,
            };
            Ok(Some(Change::Image {
                key: keys.intern(key),
                values,
                from,
            }))
        }
        Op::Delete => {
            let (cols, field) = match &r.old_keys {
                Some(old) if !old.is_empty() => (old, "old_keys"),
                _ => (data()?, "data"),
            };
            let key = key_of(&values_of(cols, field)?, field)?;
            Ok(Some(Change::Delete {
                key: keys.intern(key),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::shape::Column;
    use syncdata_core::table::TableName;

    /// `t (id, k, a)` keyed by (id, k), with generated column `g`.
    fn shape() -> TableShape {
        let columns: Vec<Column> = ["id", "k", "a"]
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
            generated: ["g".to_owned()].into(),
            key: vec![0, 1],
        }
    }

    fn records(lines: &[&str]) -> Vec<Record> {
        lines
            .iter()
            .map(|l| Record::parse(l.as_bytes()).expect("record parses"))
            .collect()
    }

    fn prepared(records: &[Record]) -> Prepared {
        prepare(&shape(), &crate::apply::incoming(records))
    }

    fn known(s: &str) -> Option<Val> {
        Some(Val::Known(Some(s.to_owned())))
    }

    #[test]
    fn an_insert_is_a_whole_row_and_generated_columns_are_ignored() {
        let rs = records(&[
            r#"{"table":"t","op":"INSERT","data":{"id":1,"k":"x","g":5},"lsn":"0/10","seq":0}"#,
        ]);
        let p = prepared(&rs);
        assert_eq!(p.keys.len(), 1);
        assert_eq!(p.keys.parts(0), ["1".to_owned(), "x".to_owned()]);
        assert_eq!(p.keys.text(0), r#"["1","x"]"#);
        assert_eq!(p.keys.id_of(r#"["1","x"]"#), Some(0));
        match &p.changes[0].change {
            Change::Image { key, values, from } => {
                assert_eq!((*key, from), (0, &None));
                assert_eq!(
                    values,
                    &vec![known("1"), known("x"), Some(Val::Known(None))]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.dispositions, vec![None]);
    }

    #[test]
    fn a_key_change_moves_from_the_old_key_and_keeps_absent_key_columns() {
        let rs = records(&[
            r#"{"table":"t","op":"UPDATE","data":{"id":2,"a":"v"},"old_keys":{"id":1,"k":"x"},"lsn":"0/10","seq":0}"#,
        ]);
        let p = prepared(&rs);
        match &p.changes[0].change {
            Change::Image { key, values, from } => {
                assert_eq!(p.keys.parts(*key), ["2".to_owned(), "x".to_owned()]);
                assert_eq!(
                    p.keys.parts(from.expect("moves")),
                    ["1".to_owned(), "x".to_owned()]
                );
                // Column a carried, k from the old key, nothing else known.
                assert_eq!(values, &vec![known("2"), known("x"), known("v")]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejections_name_the_field_and_flag_unknown_columns() {
        let rs = records(&[
            r#"{"table":"t","op":"INSERT","data":{"id":1,"k":"x","zz":1},"lsn":"0/10","seq":0}"#,
            r#"{"table":"t","op":"DELETE","old_keys":{"id":1},"lsn":"0/11","seq":0}"#,
            r#"{"table":"t","op":"TRUNCATE","lsn":"0/12","seq":0}"#,
        ]);
        let p = prepared(&rs);
        assert!(p.unknown_column);
        assert!(p.changes.is_empty());
        match &p.dispositions[..] {
            [Some(Disposition::Rejected(a)), Some(Disposition::Rejected(b)), Some(Disposition::Applied)] =>
            {
                assert!(a.contains("data names column \"zz\""), "{a}");
                assert!(b.contains("old_keys lacks key column \"k\""), "{b}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.truncate, Some(p.versions[2]));
    }

    #[test]
    fn key_texts_round_trip() {
        for parts in [
            vec!["1".to_owned()],
            vec!["a\"b".to_owned(), "[".to_owned()],
        ] {
            let width = parts.len();
            assert_eq!(key_parts(key_text(&parts), width), parts);
        }
    }

    #[test]
    fn keys_are_interned_once_and_found_by_their_text() {
        let owned = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let mut keys = Keys::default();
        let a = keys.intern(owned(&["7"]));
        let b = keys.intern(owned(&["8"]));
        assert_eq!(keys.intern(owned(&["7"])), a);
        assert_ne!(a, b);
        assert_eq!((keys.parts(a), keys.text(a)), (&owned(&["7"])[..], "7"));
        assert_eq!((keys.id_of("8"), keys.id_of("9")), (Some(b), None));

        let mut keys = Keys::default();
        let many: Vec<KeyId> = (0..1000)
            .map(|i| keys.intern(owned(&[&i.to_string(), "x\"y"])))
            .collect();
        assert_eq!(keys.len(), 1000);
        for (i, &id) in many.iter().enumerate() {
            assert_eq!(keys.intern(owned(&[&i.to_string(), "x\"y"])), id);
            assert_eq!(keys.parts(id), owned(&[&i.to_string(), "x\"y"]));
            assert_eq!(keys.id_of(keys.text(id)), Some(id));
        }
    }
}
