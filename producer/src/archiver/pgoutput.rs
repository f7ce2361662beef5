//! PostgreSQL's built-in `pgoutput` plugin (protocol version 1, text tuple
//! values) into the same events `decode.rs` makes of wal2json rows, so
//! both plugins give byte-identical records.
//!
//! Values arrive as PostgreSQL's text output; each becomes the JSON value
//! the snapshot writes for it (`snapshot::json_value`): numbers bare when
//! they are JSON numbers (digits exact), `NaN` and `±Infinity` as text
//! (wal2json 2.5 writes those as null), booleans as true/false, bytea as
//! hex without `\x`, everything else as a string. Unchanged TOASTed values
//! (`u`) are left out, as wal2json leaves them out.

use std::collections::HashMap;

use bytes::Buf;
use syncdata_core::record::{Columns, Op, Value};
use syncdata_core::version::Lsn;

use super::decode::{Change, Event};

#[derive(Debug, thiserror::Error)]
pub enum PgOutputError {
    #[error("pgoutput message is truncated")]
    Short,
    #[error("pgoutput message has unknown type {0:?}")]
    Kind(char),
    #[error("pgoutput tuple has unknown column kind {0:?}")]
    ColumnKind(char),
    #[error("pgoutput change for relation {0} came before its Relation message")]
    UnknownRelation(u32),
    #[error("pgoutput text is not UTF-8")]
    Utf8,
}

/// One column of a relation: name and how its text becomes JSON.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// `pg_type.typcategory` of the base type.
    pub category: char,
    pub is_bytea: bool,
}

#[derive(Debug, Clone)]
pub struct Relation {
    pub schema: String,
    pub table: String,
    /// In the order pgoutput sends tuple columns.
    pub columns: Vec<Column>,
    /// The table's primary key (not the replica identity: with FULL,
    /// pgoutput marks every column as identity).
    pub key: Vec<String>,
}

/// A column value in a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    /// Unchanged TOASTed value: not sent.
    Unchanged,
    Text(String),
}

/// The old row of an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq)]
pub struct Old {
    pub full: bool,
    pub tuple: Vec<Datum>,
}

/// What one pgoutput message says.
#[derive(Debug)]
pub enum Message {
    Begin {
        commit: Lsn,
        ts: String,
    },
    Commit {
        commit: Lsn,
        end: Lsn,
    },
    /// A relation's description: look its types and key up, then
    /// [`Relations::insert`].
    Relation {
        id: u32,
        schema: String,
        table: String,
        columns: Vec<String>,
    },
    Change {
        rel: u32,
        op: Op,
        /// The old row: the whole row (`O`, REPLICA IDENTITY FULL) or its
        /// key (`K`, other columns null).
        old: Option<Old>,
        new: Option<Vec<Datum>>,
    },
    Truncate {
        rels: Vec<u32>,
    },
    /// Type, Origin, logical decoding Message: not data.
    Other,
}

fn cstring(b: &mut &[u8]) -> Result<String, PgOutputError> {
    let end = b.iter().position(|&c| c == 0).ok_or(PgOutputError::Short)?;
    let s = std::str::from_utf8(&b[..end])
        .map_err(|_| PgOutputError::Utf8)?
        .to_owned();
    b.advance(end + 1);
    Ok(s)
}

fn need(b: &[u8], n: usize) -> Result<(), PgOutputError> {
    if b.len() < n {
        Err(PgOutputError::Short)
    } else {
        Ok(())
    }
}

fn tuple(b: &mut &[u8]) -> Result<Vec<Datum>, PgOutputError> {
    need(b, 2)?;
    let n = b.get_u16() as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        need(b, 1)?;
        match b.get_u8() {
            b'n' => out.push(Datum::Null),
            b'u' => out.push(Datum::Unchanged),
            b't' => {
                need(b, 4)?;
                let len = b.get_i32();
                let len = usize::try_from(len).map_err(|_| PgOutputError::Short)?;
                need(b, len)?;
                let s = std::str::from_utf8(&b[..len])
                    .map_err(|_| PgOutputError::Utf8)?
                    .to_owned();
                b.advance(len);
                out.push(Datum::Text(s));
            }
            other => return Err(PgOutputError::ColumnKind(other as char)),
        }
    }
    Ok(out)
}

/// `2000-01-01` plus `micros`, as the archiver writes `ts`
/// (`2026-11-22T03:01:56.411546Z`, trailing zeros of the fraction dropped).
fn timestamp(micros: i64) -> String {
    let base = time::macros::datetime!(2000-01-01 0:00 UTC);
    let t = base + time::Duration::microseconds(micros);
    let frac = t.microsecond();
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses one pgoutput message (protocol version 1).
pub fn parse(data: &[u8]) -> Result<Message, PgOutputError> {
    let mut b = data;
    need(b, 1)?;
    let kind = b.get_u8();
    Ok(match kind {
        b'B' => {
            need(b, 20)?;
            let commit = Lsn(b.get_u64());
            let ts = timestamp(b.get_i64());
            Message::Begin { commit, ts }
        }
        b'C' => {
            need(b, 25)?;
            let _flags = b.get_u8();
            let commit = Lsn(b.get_u64());
            let end = Lsn(b.get_u64());
            Message::Commit { commit, end }
        }
        b'R' => {
            need(b, 4)?;
            let id = b.get_u32();
            let schema = cstring(&mut b)?;
            let table = cstring(&mut b)?;
            need(b, 3)?;
            let _identity = b.get_u8();
            let n = b.get_u16();
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                need(b, 1)?;
                let _flags = b.get_u8();
                let name = cstring(&mut b)?;
                need(b, 8)?;
                let _type_oid = b.get_u32();
                let _typmod = b.get_i32();
                columns.push(name);
            }
            Message::Relation {
                id,
                schema: if schema.is_empty() {
                    "pg_catalog".to_owned()
                } else {
                    schema
                },
                table,
                columns,
            }
        }
        b'I' => {
            need(b, 5)?;
            let rel = b.get_u32();
            let _n = b.get_u8();
            Message::Change {
                rel,
                op: Op::Insert,
                old: None,
                new: Some(tuple(&mut b)?),
            }
        }
        b'U' => {
            need(b, 5)?;
            let rel = b.get_u32();
            let mut old = None;
            let mut marker = b.get_u8();
            if marker == b'K' || marker == b'O' {
                old = Some(Old {
                    full: marker == b'O',
                    tuple: tuple(&mut b)?,
                });
                need(b, 1)?;
                marker = b.get_u8();
            }
            if marker != b'N' {
                return Err(PgOutputError::ColumnKind(marker as char));
            }
            Message::Change {
                rel,
                op: Op::Update,
                old,
                new: Some(tuple(&mut b)?),
            }
        }
        b'D' => {
            need(b, 5)?;
            let rel = b.get_u32();
            let marker = b.get_u8();
            Message::Change {
                rel,
                op: Op::Delete,
                old: Some(Old {
                    full: marker == b'O',
                    tuple: tuple(&mut b)?,
                }),
                new: None,
            }
        }
        b'T' => {
            need(b, 5)?;
            let n = b.get_u32() as usize;
            let _options = b.get_u8();
            need(b, n.saturating_mul(4))?;
            let rels = (0..n).map(|_| b.get_u32()).collect();
            Message::Truncate { rels }
        }
        b'Y' | b'O' | b'M' => Message::Other,
        other => return Err(PgOutputError::Kind(other as char)),
    })
}

/// The text value as JSON, as the snapshot writes it.
fn value(col: &Column, text: &str) -> Value {
    match col.category {
        'N' if crate::snapshot::is_json_number(text) => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::from_text(Some(text)))
        }
        'B' if text == "t" => serde_json::from_str("true").expect("JSON literal"),
        'B' if text == "f" => serde_json::from_str("false").expect("JSON literal"),
        _ if col.is_bytea => Value::from_text(Some(text.strip_prefix("\\x").unwrap_or(text))),
        _ => Value::from_text(Some(text)),
    }
}

fn columns(rel: &Relation, tuple: &[Datum]) -> Columns {
    rel.columns
        .iter()
        .zip(tuple)
        .filter_map(|(col, datum)| match datum {
            Datum::Unchanged => None,
            Datum::Null => Some((col.name.clone(), Value::from_text(None))),
            Datum::Text(t) => Some((col.name.clone(), value(col, t))),
        })
        .collect()
}

/// Relations seen on this stream.
#[derive(Debug, Default)]
pub struct Relations {
    map: HashMap<u32, Relation>,
}

impl Relations {
    pub fn insert(&mut self, id: u32, rel: Relation) {
        self.map.insert(id, rel);
    }

    /// The event `decode::decode` makes of the wal2json row for the same
    /// change.
    pub fn change(
        &self,
        rel: u32,
        op: Op,
        old: Option<Old>,
        new: Option<Vec<Datum>>,
    ) -> Result<Event, PgOutputError> {
        let r = self
            .map
            .get(&rel)
            .ok_or(PgOutputError::UnknownRelation(rel))?;
        let (schema, table) = (r.schema.clone(), r.table.clone());
        if r.key.is_empty() {
            return Ok(Event::NoKey {
                schema,
                table,
                op,
                has_pk: false,
            });
        }
        let key_of = |cols: &Columns| -> Columns {
            cols.iter()
                .filter(|(n, _)| r.key.contains(n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        };
        let mut data = new.as_deref().map(|t| columns(r, t));
        // wal2json's identity: the old row when sent (REPLICA IDENTITY
        // FULL: all of it; a key change: its key columns, the others come
        // as null), else the new row's key columns.
        let identity = old.map(|o| {
            let cols = columns(r, &o.tuple);
            if o.full {
                cols
            } else {
                key_of(&cols)
            }
        });
        if let (Op::Update, Some(data), Some(identity)) = (op, data.as_mut(), identity.as_ref()) {
            for (name, value) in identity {
                data.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
        let old_keys = identity
            .as_ref()
            .map(key_of)
            .or_else(|| data.as_ref().map(key_of))
            .filter(|k| !k.is_empty());
        Ok(match op {
            Op::Insert => Event::Change(Change {
                schema,
                table,
                op,
                data,
                old_keys: None,
            }),
            Op::Update => Event::Change(Change {
                schema,
                table,
                op,
                data,
                old_keys,
            }),
            Op::Delete => match old_keys.filter(|k| k.len() == r.key.len()) {
                Some(keys) => Event::Change(Change {
                    schema,
                    table,
                    op,
                    data: None,
                    old_keys: Some(keys),
                }),
                None => Event::NoKey {
                    schema,
                    table,
                    op,
                    has_pk: true,
                },
            },
            Op::Truncate | Op::Schema => Event::Change(Change {
                schema,
                table,
                op,
                data: None,
                old_keys: None,
            }),
        })
    }

    /// One TRUNCATE change per relation, in the order sent.
    pub fn truncate(&self, rels: &[u32]) -> Result<Vec<Event>, PgOutputError> {
        rels.iter()
            .map(|&rel| {
                let r = self
                    .map
                    .get(&rel)
                    .ok_or(PgOutputError::UnknownRelation(rel))?;
                Ok(Event::Change(Change {
                    schema: r.schema.clone(),
                    table: r.table.clone(),
                    op: Op::Truncate,
                    data: None,
                    old_keys: None,
                }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel() -> Relation {
        let col = |name: &str, category: char, is_bytea: bool| Column {
            name: name.to_owned(),
            category,
            is_bytea,
        };
        Relation {
            schema: "public".into(),
            table: "nums".into(),
            columns: vec![
                col("id", 'N', false),
                col("n", 'N', false),
                col("flag", 'B', false),
                col("b", 'U', true),
                col("big", 'S', false),
            ],
            key: vec!["id".into()],
        }
    }

    fn t(s: &str) -> Datum {
        Datum::Text(s.to_owned())
    }

    #[test]
    fn values_as_the_snapshot_writes_them_and_toast_left_out() {
        let mut rels = Relations::default();
        rels.insert(7, rel());
        let ev = rels
            .change(
                7,
                Op::Update,
                None,
                Some(vec![
                    t("1"),
                    t("NaN"),
                    t("t"),
                    t("\\xdeadbeef"),
                    Datum::Unchanged,
                ]),
            )
            .unwrap();
        let Event::Change(c) = ev else { panic!() };
        let data = c.data.unwrap();
        let raw = |k: &str| data[k].raw().to_owned();
        assert_eq!(raw("id"), "1");
        assert_eq!(raw("n"), r#""NaN""#);
        assert_eq!(raw("flag"), "true");
        assert_eq!(raw("b"), r#""deadbeef""#);
        assert!(!data.contains_key("big"));
        assert_eq!(c.old_keys.unwrap()["id"].raw(), "1");
        let ev = rels
            .change(
                7,
                Op::Insert,
                None,
                Some(vec![
                    t("2"),
                    t("123456789012345678901234567890.123456789"),
                    Datum::Null,
                    Datum::Null,
                    t("x"),
                ]),
            )
            .unwrap();
        let Event::Change(c) = ev else { panic!() };
        let data = c.data.unwrap();
        assert_eq!(data["n"].raw(), "123456789012345678901234567890.123456789");
        assert_eq!(data["flag"].raw(), "null");
        assert!(rels.change(8, Op::Insert, None, None).is_err());
    }

    #[test]
    fn timestamps_like_wal2json_rows_become() {
        assert_eq!(timestamp(0), "2000-01-01T00:00:00Z");
        assert_eq!(timestamp(1_500_000), "2000-01-01T00:00:01.5Z");
        assert_eq!(timestamp(123), "2000-01-01T00:00:00.000123Z");
    }

    #[test]
    fn messages_parse_and_short_ones_fail() {
        let mut m = vec![b'I'];
        m.extend_from_slice(&7u32.to_be_bytes());
        m.push(b'N');
        m.extend_from_slice(&2u16.to_be_bytes());
        m.push(b'n');
        m.push(b't');
        m.extend_from_slice(&2i32.to_be_bytes());
        m.extend_from_slice(b"42");
        match parse(&m).unwrap() {
            Message::Change { rel, op, new, .. } => {
                assert_eq!((rel, op), (7, Op::Insert));
                assert_eq!(new.unwrap(), vec![Datum::Null, t("42")]);
            }
            m => panic!("{m:?}"),
        }
        assert!(parse(&m[..m.len() - 1]).is_err());
        assert!(parse(b"Z").is_err());
    }
}
