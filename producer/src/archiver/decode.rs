//! wal2json format-version 2 (with include-lsn, include-pk, include-xids,
//! include-timestamp) into change records.
//!
//! One wal2json row is one object: `B` (begin; with include-lsn it already
//! carries the transaction's commit LSN in `lsn` and the end of the commit
//! record in `nextlsn`), `I`/`U`/`D`/`T` (changes), `M` (logical messages,
//! ignored) and `C` (commit). Column values are kept as the raw JSON text
//! wal2json wrote, so numerics stay bare JSON numbers, byte-exact.

use serde::Deserialize;
use syncdata_core::record::{Columns, Op, Record, Value};
use syncdata_core::version::{Lsn, Version};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("wal2json row is not JSON of the expected shape: {0}")]
    Json(String),
    #[error("wal2json row lacks {0} (is the slot read with format-version 2 and include-lsn?)")]
    Missing(&'static str),
    #[error("wal2json row has unknown action {0:?}")]
    Action(String),
    #[error("bad lsn in wal2json row: {0}")]
    Lsn(String),
}

#[derive(Deserialize)]
struct RawRow {
    action: String,
    #[serde(default)]
    lsn: Option<String>,
    #[serde(default)]
    nextlsn: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    columns: Option<Vec<RawColumn>>,
    #[serde(default)]
    identity: Option<Vec<RawColumn>>,
    #[serde(default)]
    pk: Option<Vec<RawPk>>,
}

#[derive(Deserialize)]
struct RawColumn {
    name: String,
    /// The column's type (include-types), e.g. `numeric(10,2)`.
    #[serde(default, rename = "type")]
    type_name: Option<String>,
    value: Value,
}

/// The types wal2json writes as JSON strings with
/// `numeric-data-types-as-string` (without it, NaN and ±Infinity, which
/// JSON numbers cannot hold, arrive as null).
const NUMERIC_TYPES: [&str; 7] = [
    "smallint",
    "integer",
    "bigint",
    "oid",
    "real",
    "double precision",
    "numeric",
];

impl RawColumn {
    /// The value as the snapshot writes it (see `snapshot::json_value`):
    /// numbers bare when they are JSON numbers, NaN and ±Infinity as text,
    /// so a source value lands the same way by either path.
    fn into_value(self) -> Value {
        let numeric = self.type_name.as_deref().is_some_and(|t| {
            let base = t.split('(').next().unwrap_or(t).trim();
            NUMERIC_TYPES.contains(&base)
        });
        if numeric {
            if let Some(text) = self.value.to_pg_text() {
                if crate::snapshot::is_json_number(&text) {
                    if let Ok(v) = serde_json::from_str(&text) {
                        return v;
                    }
                }
            }
        }
        self.value
    }
}

#[derive(Deserialize)]
struct RawPk {
    name: String,
}

/// A change before it gets its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub schema: String,
    pub table: String,
    pub op: Op,
    pub data: Option<Columns>,
    pub old_keys: Option<Columns>,
}

impl Change {
    /// The record at `version`, stamped with the commit time.
    pub fn into_record(self, version: Version, ts: Option<String>) -> Record {
        Record {
            schema: self.schema,
            table: self.table,
            op: self.op,
            data: self.data,
            old_keys: self.old_keys,
            lsn: version.lsn,
            seq: Some(version.seq),
            ts,
            snapshot: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `commit` is the transaction's commit LSN (the version of its
    /// changes), `end` the end of its commit record (where the slot may move
    /// once the transaction is on disk).
    Begin {
        commit: Lsn,
        end: Lsn,
        ts: Option<String>,
    },
    Change(Change),
    /// A change that does not say which row it is: of a table wal2json
    /// knows no primary key for (`has_pk` false), or a DELETE whose old key
    /// is missing because the table's replica identity is NOTHING or an
    /// index other than the primary key (`has_pk` true). It cannot be
    /// applied by key, so it is not archived.
    NoKey {
        schema: String,
        table: String,
        op: Op,
        has_pk: bool,
    },
    Commit {
        commit: Lsn,
        end: Lsn,
    },
    /// Logical decoding messages (`pg_logical_emit_message`): not data.
    Message,
}

fn lsn(field: &'static str, value: Option<String>) -> Result<Lsn, DecodeError> {
    let text = value.ok_or(DecodeError::Missing(field))?;
    text.parse().map_err(|_| DecodeError::Lsn(text))
}

/// `2026-11-22 03:01:56.411546+00` (wal2json, TimeZone UTC) becomes
/// `2026-11-22T03:01:56.411546Z`; other offsets keep their form.
pub fn iso_timestamp(ts: &str) -> String {
    let t = ts.replacen(' ', "T", 1);
    match t.strip_suffix("+00") {
        Some(base) => format!("{base}Z"),
        None => t,
    }
}

fn columns(cols: Vec<RawColumn>) -> Columns {
    cols.into_iter()
        .map(|c| (c.name.clone(), c.into_value()))
        .collect()
}

/// Parses one wal2json row.
pub fn decode(row: &str) -> Result<Event, DecodeError> {
    let raw: RawRow = serde_json::from_str(row).map_err(|e| DecodeError::Json(e.to_string()))?;
    let op = match raw.action.as_str() {
        "B" => {
            return Ok(Event::Begin {
                commit: lsn("lsn", raw.lsn)?,
                end: lsn("nextlsn", raw.nextlsn)?,
                ts: raw.timestamp.as_deref().map(iso_timestamp),
            })
        }
        "C" => {
            return Ok(Event::Commit {
                commit: lsn("lsn", raw.lsn)?,
                end: lsn("nextlsn", raw.nextlsn)?,
            })
        }
        "M" => return Ok(Event::Message),
        "I" => Op::Insert,
        "U" => Op::Update,
        "D" => Op::Delete,
        "T" => Op::Truncate,
        other => return Err(DecodeError::Action(other.to_owned())),
    };
    let schema = raw.schema.ok_or(DecodeError::Missing("schema"))?;
    let table = raw.table.ok_or(DecodeError::Missing("table"))?;
    if op == Op::Truncate {
        return Ok(Event::Change(Change {
            schema,
            table,
            op,
            data: None,
            old_keys: None,
        }));
    }
    let pk: Vec<String> = raw
        .pk
        .ok_or(DecodeError::Missing("pk (include-pk)"))?
        .into_iter()
        .map(|p| p.name)
        .collect();
    if pk.is_empty() {
        return Ok(Event::NoKey {
            schema,
            table,
            op,
            has_pk: false,
        });
    }
    let identity = raw.identity.map(columns);
    // The key before the change: the primary key columns of `identity`
    // (REPLICA IDENTITY FULL sends the whole old row; only the key is kept).
    let old_keys = identity.as_ref().map(|identity| {
        identity
            .iter()
            .filter(|(name, _)| pk.contains(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect::<Columns>()
    });
    let mut data = raw.columns.map(columns);
    // wal2json leaves unchanged TOASTed columns out of an UPDATE's new row.
    // When the old row has them (REPLICA IDENTITY FULL: PostgreSQL logs it
    // detoasted), unchanged means equal to the old value: the UPDATE becomes
    // a full row image, which needs no earlier image to apply.
    if let (Op::Update, Some(data), Some(identity)) = (op, data.as_mut(), identity) {
        for (name, value) in identity {
            data.entry(name).or_insert(value);
        }
    }
    let change = match op {
        Op::Insert => Change {
            data: Some(data.ok_or(DecodeError::Missing("columns"))?),
            old_keys: None,
            schema,
            table,
            op,
        },
        Op::Update => Change {
            data: Some(data.ok_or(DecodeError::Missing("columns"))?),
            old_keys: old_keys.filter(|k| !k.is_empty()),
            schema,
            table,
            op,
        },
        Op::Delete => {
            let keys = old_keys.filter(|k| k.len() == pk.len());
            match keys {
                Some(keys) => Change {
                    data: None,
                    old_keys: Some(keys),
                    schema,
                    table,
                    op,
                },
                // No replica identity to say which row went.
                None => {
                    return Ok(Event::NoKey {
                        schema,
                        table,
                        op,
                        has_pk: true,
                    })
                }
            }
        }
        Op::Truncate => unreachable!("handled above"),
    };
    Ok(Event::Change(change))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows captured from wal2json 2.5 on PostgreSQL 15 (the project's
    /// reference samples, TOAST values shortened), in decoding order.
    const SAMPLE: &str = r#"{"action":"B","xid":731,"timestamp":"2026-11-22 03:01:56.411546+00","lsn":"0/1542FF8","nextlsn":"0/1543028"}
{"action":"I","xid":731,"timestamp":"2026-11-22 03:01:56.411546+00","lsn":"0/15409C8","schema":"public","table":"items","columns":[{"name":"id","type":"integer","value":1},{"name":"name","type":"text","value":"alpha"},{"name":"qty","type":"integer","value":5},{"name":"big","type":"text","value":"9dd4e461268c8034"}],"pk":[{"name":"id","type":"integer"}]}
{"action":"C","xid":731,"timestamp":"2026-11-22 03:01:56.411546+00","lsn":"0/1542FF8","nextlsn":"0/1543028"}
{"action":"B","xid":732,"timestamp":"2026-11-22 03:01:56.412665+00","lsn":"0/1543170","nextlsn":"0/15431A0"}
{"action":"U","xid":732,"timestamp":"2026-11-22 03:01:56.412665+00","lsn":"0/1543060","schema":"public","table":"items","columns":[{"name":"id","type":"integer","value":1},{"name":"name","type":"text","value":"alpha"},{"name":"qty","type":"integer","value":6}],"identity":[{"name":"id","type":"integer","value":1}],"pk":[{"name":"id","type":"integer"}]}
{"action":"U","xid":732,"timestamp":"2026-11-22 03:01:56.412665+00","lsn":"0/15430C8","schema":"public","table":"items","columns":[{"name":"id","type":"integer","value":20},{"name":"name","type":"text","value":"beta2"},{"name":"qty","type":"integer","value":7},{"name":"big","type":"text","value":"small"}],"identity":[{"name":"id","type":"integer","value":2}],"pk":[{"name":"id","type":"integer"}]}
{"action":"C","xid":732,"timestamp":"2026-11-22 03:01:56.412665+00","lsn":"0/1543170","nextlsn":"0/15431A0"}
{"action":"B","xid":733,"timestamp":"2026-11-22 03:01:56.4131+00","lsn":"0/1545330","nextlsn":"0/1545360"}
{"action":"U","xid":733,"timestamp":"2026-11-22 03:01:56.4131+00","lsn":"0/15431D8","schema":"public","table":"items_full","columns":[{"name":"id","type":"integer","value":1},{"name":"name","type":"text","value":"alpha"},{"name":"qty","type":"integer","value":6}],"identity":[{"name":"id","type":"integer","value":1},{"name":"name","type":"text","value":"alpha"},{"name":"qty","type":"integer","value":5},{"name":"big","type":"text","value":"415290769594460e"}],"pk":[{"name":"id","type":"integer"}]}
{"action":"U","xid":733,"timestamp":"2026-11-22 03:01:56.4131+00","lsn":"0/1545278","schema":"public","table":"items_full","columns":[{"name":"id","type":"integer","value":20},{"name":"name","type":"text","value":"beta2"},{"name":"qty","type":"integer","value":7},{"name":"big","type":"text","value":"small"}],"identity":[{"name":"id","type":"integer","value":2},{"name":"name","type":"text","value":"beta"},{"name":"qty","type":"integer","value":7},{"name":"big","type":"text","value":"small"}],"pk":[{"name":"id","type":"integer"}]}
{"action":"C","xid":733,"timestamp":"2026-11-22 03:01:56.4131+00","lsn":"0/1545330","nextlsn":"0/1545360"}
{"action":"B","xid":735,"timestamp":"2026-11-22 03:01:56.41336+00","lsn":"0/1547558","nextlsn":"0/1547588"}
{"action":"D","xid":735,"timestamp":"2026-11-22 03:01:56.41336+00","lsn":"0/15453D0","schema":"public","table":"items_full","identity":[{"name":"id","type":"integer","value":1},{"name":"name","type":"text","value":"alpha"},{"name":"qty","type":"integer","value":6},{"name":"big","type":"text","value":"41529076"}],"pk":[{"name":"id","type":"integer"}]}
{"action":"C","xid":735,"timestamp":"2026-11-22 03:01:56.41336+00","lsn":"0/1547558","nextlsn":"0/1547588"}
{"action":"B","xid":736,"timestamp":"2026-11-22 03:01:56.414302+00","lsn":"0/1548128","nextlsn":"0/1548298"}
{"action":"T","xid":736,"timestamp":"2026-11-22 03:01:56.414302+00","lsn":"0/15480F8","schema":"public","table":"items"}
{"action":"C","xid":736,"timestamp":"2026-11-22 03:01:56.414302+00","lsn":"0/1548128","nextlsn":"0/1548298"}
{"action":"B","xid":737,"timestamp":"2026-11-22 03:01:56.415064+00","lsn":"0/15482D8","nextlsn":"0/1548308"}
{"action":"I","xid":737,"timestamp":"2026-11-22 03:01:56.415064+00","lsn":"0/1548298","schema":"public","table":"nopk","columns":[{"name":"a","type":"integer","value":1},{"name":"b","type":"text","value":"one"}],"pk":[]}
{"action":"C","xid":737,"timestamp":"2026-11-22 03:01:56.415064+00","lsn":"0/15482D8","nextlsn":"0/1548308"}
{"action":"B","xid":740,"timestamp":"2026-11-22 03:01:56.416392+00","lsn":"0/15486B0","nextlsn":"0/15486E0"}
{"action":"I","xid":740,"timestamp":"2026-11-22 03:01:56.416392+00","lsn":"0/1548458","schema":"public","table":"types_demo","columns":[{"name":"id","type":"bigint","value":1},{"name":"j","type":"jsonb","value":"{\"k\": [1, 2, {\"x\": null}]}"},{"name":"ts","type":"timestamp with time zone","value":"2024-01-02 03:04:05.678+00"},{"name":"n","type":"numeric(10,2)","value":12.50},{"name":"u","type":"uuid","value":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},{"name":"arr","type":"text[]","value":"{a,\"b\\\"q\"}"},{"name":"b","type":"bytea","value":"deadbeef"},{"name":"flag","type":"boolean","value":true},{"name":"f","type":"double precision","value":1.5e+300},{"name":"big","type":"numeric","value":123456789012345678901234567890.123456789}],"pk":[{"name":"id","type":"bigint"}]}
{"action":"M","xid":740,"timestamp":"2026-11-22 03:01:56.416392+00","lsn":"0/15486B0","transactional":true,"prefix":"myapp","content":"hello-transactional"}
{"action":"C","xid":740,"timestamp":"2026-11-22 03:01:56.416392+00","lsn":"0/15486B0","nextlsn":"0/15486E0"}
{"action":"M","xid":null,"timestamp":null,"lsn":"0/1548730","transactional":false,"prefix":"myapp","content":"hello-nontransactional"}"#;

    /// What the archiver does with a stream of rows, minus the files.
    fn records(rows: &str) -> (Vec<Record>, Vec<String>) {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        let mut tx = None;
        let mut seq = 0;
        for row in rows.lines() {
            match decode(row).unwrap() {
                Event::Begin { commit, ts, .. } => {
                    tx = Some((commit, ts));
                    seq = 0;
                }
                Event::Change(c) => {
                    let (commit, ts) = tx.clone().unwrap();
                    out.push(c.into_record(Version::new(commit, seq), ts));
                    seq += 1;
                }
                Event::NoKey { table, .. } => {
                    skipped.push(table);
                    seq += 1;
                }
                Event::Commit { .. } | Event::Message => {}
            }
        }
        (out, skipped)
    }

    #[test]
    fn every_change_kind_becomes_a_record_at_its_commit_version() {
        let (records, skipped) = records(SAMPLE);
        assert_eq!(skipped, ["nopk"]);
        let lines: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.to_json()).unwrap())
            .collect();
        let expected = [
            r#"{"schema":"public","table":"items","op":"INSERT","data":{"big":"9dd4e461268c8034","id":1,"name":"alpha","qty":5},"lsn":"0/1542FF8","seq":0,"ts":"2026-11-22T03:01:56.411546Z"}"#,
            // Default replica identity: the unchanged TOASTed column stays out.
            r#"{"schema":"public","table":"items","op":"UPDATE","data":{"id":1,"name":"alpha","qty":6},"old_keys":{"id":1},"lsn":"0/1543170","seq":0,"ts":"2026-11-22T03:01:56.412665Z"}"#,
            r#"{"schema":"public","table":"items","op":"UPDATE","data":{"big":"small","id":20,"name":"beta2","qty":7},"old_keys":{"id":2},"lsn":"0/1543170","seq":1,"ts":"2026-11-22T03:01:56.412665Z"}"#,
            // REPLICA IDENTITY FULL: the unchanged TOASTed column comes from the old row.
            r#"{"schema":"public","table":"items_full","op":"UPDATE","data":{"big":"415290769594460e","id":1,"name":"alpha","qty":6},"old_keys":{"id":1},"lsn":"0/1545330","seq":0,"ts":"2026-11-22T03:01:56.4131Z"}"#,
            r#"{"schema":"public","table":"items_full","op":"UPDATE","data":{"big":"small","id":20,"name":"beta2","qty":7},"old_keys":{"id":2},"lsn":"0/1545330","seq":1,"ts":"2026-11-22T03:01:56.4131Z"}"#,
            r#"{"schema":"public","table":"items_full","op":"DELETE","old_keys":{"id":1},"lsn":"0/1547558","seq":0,"ts":"2026-11-22T03:01:56.41336Z"}"#,
            r#"{"schema":"public","table":"items","op":"TRUNCATE","lsn":"0/1548128","seq":0,"ts":"2026-11-22T03:01:56.414302Z"}"#,
            r#"{"schema":"public","table":"types_demo","op":"INSERT","data":{"arr":"{a,\"b\\\"q\"}","b":"deadbeef","big":123456789012345678901234567890.123456789,"f":1.5e+300,"flag":true,"id":1,"j":"{\"k\": [1, 2, {\"x\": null}]}","n":12.50,"ts":"2024-01-02 03:04:05.678+00","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},"lsn":"0/15486B0","seq":0,"ts":"2026-11-22T03:01:56.416392Z"}"#,
        ];
        assert_eq!(lines, expected);
        // Every line is a valid record for the producer.
        for line in &lines {
            Record::parse(line.as_bytes()).unwrap();
        }
    }

    #[test]
    fn begin_and_commit_carry_commit_and_end_lsn() {
        let first = SAMPLE.lines().next().unwrap();
        assert_eq!(
            decode(first).unwrap(),
            Event::Begin {
                commit: "0/1542FF8".parse().unwrap(),
                end: "0/1543028".parse().unwrap(),
                ts: Some("2026-11-22T03:01:56.411546Z".to_owned()),
            }
        );
        let err = decode(r#"{"action":"B"}"#).unwrap_err().to_string();
        assert!(err.contains("include-lsn"), "{err}");
        assert!(decode(r#"{"action":"X"}"#).is_err());
        assert!(decode("not json").is_err());
    }

    #[test]
    fn a_delete_without_replica_identity_is_not_archived() {
        let row = r#"{"action":"D","lsn":"0/1","schema":"public","table":"t","pk":[{"name":"id","type":"integer"}]}"#;
        assert!(matches!(
            decode(row).unwrap(),
            Event::NoKey { op: Op::Delete, .. }
        ));
    }
}

#[cfg(test)]
mod numbers_as_strings {
    use super::*;

    /// What wal2json writes with numeric-data-types-as-string.
    const ROW: &str = r#"{"action":"I","schema":"public","table":"nums","columns":[{"name":"id","type":"integer","value":"7"},{"name":"n","type":"numeric(40,9)","value":"123456789012345678901234567890.123456789"},{"name":"f","type":"double precision","value":"NaN"},{"name":"r","type":"real","value":"-Infinity"},{"name":"g","type":"numeric","value":"Infinity"},{"name":"e","type":"double precision","value":"1.5e+300"},{"name":"t","type":"text","value":"42"},{"name":"z","type":"numeric","value":null}],"pk":[{"name":"id","type":"integer"}]}"#;

    #[test]
    fn numbers_come_back_bare_and_nan_and_infinity_stay_text() {
        let Event::Change(c) = decode(ROW).unwrap() else {
            panic!("a change")
        };
        let data = c.data.unwrap();
        let raw = |k: &str| data[k].raw().to_owned();
        // As the snapshot writes them (snapshot::json_value): numbers bare,
        // digits exact; NaN and ±Infinity as strings; text stays text.
        assert_eq!(raw("id"), "7");
        assert_eq!(raw("n"), "123456789012345678901234567890.123456789");
        assert_eq!(raw("f"), r#""NaN""#);
        assert_eq!(raw("r"), r#""-Infinity""#);
        assert_eq!(raw("g"), r#""Infinity""#);
        assert_eq!(raw("e"), "1.5e+300");
        assert_eq!(raw("t"), r#""42""#);
        assert_eq!(raw("z"), "null");
        assert_eq!(data["f"].to_pg_text().as_deref(), Some("NaN"));
        assert_eq!(c.old_keys, None);
    }
}
