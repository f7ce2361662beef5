//! Rules compiled with the key, applied to records. Invariants: a record of
//! a replicated table is published only when every column it carries, in
//! `data` and in `old_keys`, has a rule; `old_keys` go through exactly the
//! transforms `data` does; NULL stays NULL (except under `drop`, which
//! removes the column); no error message ever holds a value.

use std::collections::HashMap;
use std::fmt;

use syncdata_core::record::{Columns, Record, Value};
use syncdata_core::table::TableName;

use super::dates;
use super::fake;
use super::json_path::{self, Leaf};
use super::key::{hex, KeyError, Keyed, SecretKey};
use super::rules::{HmacOutput, Mode, Rules, Transform, Unlisted};

/// Why a record cannot be published now. Its table halts until the rules
/// change, unless the record itself is at fault. The message names table
/// and columns, never values, and is at most [`MAX_REASON_BYTES`] long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaltReason {
    pub reason: String,
    /// The record is at fault, not the rules (no rule change could make it
    /// publishable): it is quarantined and its table goes on.
    pub quarantine: bool,
}

/// Longest reason a halt carries (and logs): the list of columns without a
/// rule is cut short well before this.
pub const MAX_REASON_BYTES: usize = 2048;

/// At most this many column names are listed in a reason.
const MAX_LISTED: usize = 20;

impl HaltReason {
    /// A halt of the table (the rules must change), its reason bounded.
    pub fn table(reason: String) -> HaltReason {
        HaltReason {
            reason: bounded(reason),
            quarantine: false,
        }
    }

    /// The record is quarantined, its reason bounded.
    pub fn record(reason: String) -> HaltReason {
        HaltReason {
            reason: bounded(reason),
            quarantine: true,
        }
    }
}

/// `reason` cut to [`MAX_REASON_BYTES`] (on a character boundary).
fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES - "…".len();
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

impl fmt::Display for HaltReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// What to do with a record that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Publish it (its values are now transformed).
    Publish,
    /// The table is excluded: never publish it.
    Exclude,
}

/// A transform ready to run (with its subkey when keyed).
#[derive(Debug, Clone)]
enum Compiled {
    Keep,
    Drop,
    Null,
    Const(Value),
    Hmac(Keyed, HmacOutput),
    Fake {
        keyed: Keyed,
        kind: fake::FakeKind,
        unique: bool,
        max_length: Option<usize>,
    },
    Mask {
        keep_first: usize,
        keep_last: usize,
        mask_char: char,
        email: Option<bool>,
    },
    Regex(regex::Regex, String),
    Json(Vec<(json_path::JsonPath, Compiled)>),
    DateShift {
        keyed: Keyed,
        max_days: u32,
        key: Vec<String>,
    },
}

/// Rules by name, found once or more per record: hashed with foldhash
/// (the names are the rules file's; a record's names are only looked up).
type ByName<V> = HashMap<String, V, foldhash::fast::RandomState>;

#[derive(Debug)]
struct CompiledTable {
    exclude: bool,
    columns: ByName<Compiled>,
}

/// The rules of one generation, compiled with the key.
#[derive(Debug)]
pub struct CompiledRules {
    unlisted: Unlisted,
    /// schema -> table -> rules (looked up without allocating).
    tables: ByName<ByName<CompiledTable>>,
}

impl CompiledRules {
    /// Compiles `rules`; keyed transforms need `key`.
    pub fn new(rules: &Rules, key: Option<&SecretKey>) -> Result<CompiledRules, KeyError> {
        if rules.uses_keyed_transforms() && key.is_none() {
            return Err(KeyError::Missing);
        }
        let mut tables: ByName<ByName<CompiledTable>> = ByName::default();
        for (name, t) in &rules.tables {
            let mut columns = ByName::default();
            if t.mode == Mode::Replicate {
                for (col, rule) in &t.columns {
                    columns.insert(col.clone(), compile(&rule.transform, key));
                }
            }
            tables.entry(name.schema.clone()).or_default().insert(
                name.table.clone(),
                CompiledTable {
                    exclude: t.mode == Mode::Exclude,
                    columns,
                },
            );
        }
        Ok(CompiledRules {
            unlisted: rules.unlisted,
            tables,
        })
    }

    /// Whether `schema.table` is replicated with `keep` for every column it
    /// has a rule for: a record of it that passed [`CompiledRules::apply`]
    /// is unchanged by it.
    pub fn keeps_every_column(&self, schema: &str, table: &str) -> bool {
        self.tables
            .get(schema)
            .and_then(|t| t.get(table))
            .is_some_and(|t| !t.exclude && t.columns.values().all(|c| matches!(c, Compiled::Keep)))
    }

    /// Transforms `record` in place, or says why it must wait. On error the
    /// record may be half transformed: it must not be published.
    pub fn apply(&self, record: &mut Record) -> Result<Verdict, HaltReason> {
        let name = || TableName::new(record.schema.clone(), record.table.clone());
        let Some(table) = self
            .tables
            .get(&record.schema)
            .and_then(|t| t.get(&record.table))
        else {
            return match self.unlisted {
                Unlisted::Exclude => Ok(Verdict::Exclude),
                Unlisted::Halt => Err(HaltReason::table(format!(
                    "table {} has no entry in the rules file (add it with mode = \"replicate\" and a rule for every column, or mode = \"exclude\")",
                    qualified(&name())
                ))),
            };
        };
        if table.exclude {
            return Ok(Verdict::Exclude);
        }
        // Every column needs a rule: report them all at once (the first
        // few by name). Linear: `data` and `old_keys` are each free of
        // duplicates, so only old keys also in `data` are left out.
        let data = record.data.as_ref();
        let missing: Vec<&str> = data
            .into_iter()
            .flat_map(|c| c.keys())
            .chain(
                record
                    .old_keys
                    .iter()
                    .flat_map(|c| c.keys())
                    .filter(|c| data.is_none_or(|d| !d.contains_key(*c))),
            )
            .filter(|c| !table.columns.contains_key(*c))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let mut list = missing
                .iter()
                .take(MAX_LISTED)
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            if missing.len() > MAX_LISTED {
                list.push_str(&format!(" and {} more", missing.len() - MAX_LISTED));
            }
            let (noun, verb) = if missing.len() == 1 {
                ("column", "has")
            } else {
                ("columns", "have")
            };
            return Err(HaltReason::table(format!(
                "table {}: {noun} {list} {verb} no rule in the rules file (fail closed: add a rule, `keep` included, to resume)",
                qualified(&name())
            )));
        }
        let err = |col: &str, why: String| {
            HaltReason::table(format!(
                "table {}: column {col:?}: {why} (change its rule to resume)",
                qualified(&name())
            ))
        };
        // A json value that is not Unicode text cannot pass any rule: the
        // record is quarantined (its table goes on).
        for (field, cols) in [("data", &record.data), ("old_keys", &record.old_keys)] {
            for (col, value) in cols.iter().flatten() {
                if matches!(table.columns.get(col), Some(Compiled::Json(_))) {
                    if let Some(code) = value
                        .to_pg_text()
                        .and_then(|t| syncdata_core::record::lone_surrogate(&t))
                    {
                        return Err(HaltReason::record(format!(
                            "table {}: {field}: json value of column {col:?} holds a lone UTF-16 surrogate escape \\u{code:04x} (not Unicode text)",
                            qualified(&name())
                        )));
                    }
                }
            }
        }
        // Date offsets come from the raw key values: computed first.
        let (data, old) = (&record.data, &record.old_keys);
        let data_days = match data {
            Some(cols) => date_offsets(table, cols, old.as_ref(), &err)?,
            None => Vec::new(),
        };
        let old_days = match old {
            Some(cols) => date_offsets(table, cols, data.as_ref(), &err)?,
            None => Vec::new(),
        };
        if let Some(cols) = &mut record.data {
            transform_image(table, cols, &data_days, &err)?;
        }
        if let Some(cols) = &mut record.old_keys {
            transform_image(table, cols, &old_days, &err)?;
        }
        Ok(Verdict::Publish)
    }
}

fn qualified(t: &TableName) -> String {
    format!("{}.{}", t.schema, t.table)
}

fn compile(t: &Transform, key: Option<&SecretKey>) -> Compiled {
    let sub = |purpose: &str, domain: &str| {
        key.expect("checked: keyed transforms have a key")
            .subkey(purpose, domain)
    };
    match t {
        Transform::Keep => Compiled::Keep,
        Transform::Drop => Compiled::Drop,
        Transform::Null => Compiled::Null,
        Transform::Const { value } => {
            Compiled::Const(serde_json::from_str(value).expect("const values are valid JSON"))
        }
        Transform::Hmac { output, domain } => Compiled::Hmac(sub("hmac", domain), output.clone()),
        Transform::Fake {
            kind,
            unique,
            max_length,
            domain,
        } => Compiled::Fake {
            keyed: sub("fake", domain),
            kind: *kind,
            unique: *unique,
            max_length: *max_length,
        },
        Transform::Mask {
            keep_first,
            keep_last,
            mask_char,
            email,
        } => Compiled::Mask {
            keep_first: *keep_first,
            keep_last: *keep_last,
            mask_char: *mask_char,
            email: *email,
        },
        Transform::RegexReplace {
            pattern,
            replacement,
        } => Compiled::Regex(pattern.clone(), replacement.clone()),
        Transform::Json { paths } => Compiled::Json(
            paths
                .iter()
                .map(|(p, t)| (p.clone(), compile(t, key)))
                .collect(),
        ),
        Transform::DateShift {
            max_days,
            key: cols,
            domain,
        } => Compiled::DateShift {
            keyed: sub("date_shift", domain),
            max_days: *max_days,
            key: cols.clone(),
        },
    }
}

/// Transforms one image (`data` or `old_keys`) in place; `days` holds the
/// offsets of its non-NULL date_shift columns, in column order.
fn transform_image(
    table: &CompiledTable,
    cols: &mut Columns,
    days: &[i64],
    err: &dyn Fn(&str, String) -> HaltReason,
) -> Result<(), HaltReason> {
    let mut dropped = Vec::new();
    let mut days = days.iter();
    for (name, value) in cols.iter_mut() {
        // Every column has a rule (checked by the caller) and every non-NULL
        // date_shift column an offset: a miss is an error, never a panic.
        let Some(rule) = table.columns.get(name) else {
            return Err(err(name, "no rule".to_owned()));
        };
        match rule {
            Compiled::Keep => {}
            Compiled::Drop => dropped.push(name.clone()),
            _ if is_null(value) => {}
            Compiled::DateShift { .. } => {
                let Some(&d) = days.next() else {
                    return Err(err(name, "date_shift: no offset for the value".to_owned()));
                };
                *value = shift_value(value, d).map_err(|e| err(name, e))?;
            }
            rule => match transform_value(rule, value).map_err(|e| err(name, e))? {
                Some(v) => *value = v,
                None => dropped.push(name.clone()),
            },
        }
    }
    for name in dropped {
        cols.remove(&name);
    }
    Ok(())
}

/// The day offsets of the non-NULL date_shift columns of `image`, from the
/// raw values of their key columns (in `image`, else in `other`).
fn date_offsets(
    table: &CompiledTable,
    image: &Columns,
    other: Option<&Columns>,
    err: &dyn Fn(&str, String) -> HaltReason,
) -> Result<Vec<i64>, HaltReason> {
    let mut out = Vec::new();
    for (name, value) in image {
        let Some(Compiled::DateShift {
            keyed,
            max_days,
            key,
        }) = table.columns.get(name)
        else {
            continue;
        };
        if is_null(value) {
            continue;
        }
        let mut parts = Vec::with_capacity(key.len());
        for k in key {
            let v = image.get(k).or_else(|| other.and_then(|o| o.get(k))).ok_or_else(|| {
                err(
                    name,
                    format!("date_shift key column {k:?} is not in the record, so its offset is unknown"),
                )
            })?;
            parts.push(v.to_pg_text());
        }
        let d = keyed.digest_parts(parts.iter().map(Option::as_deref));
        let draw = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
        out.push(dates::offset_days(draw, *max_days));
    }
    Ok(out)
}

fn string_value(s: &str) -> Value {
    Value::from_text(Some(s))
}

/// A raw JSON text as a value.
fn raw_value(raw: String) -> Value {
    serde_json::from_str(&raw).expect("built as valid JSON")
}

fn is_null(v: &Value) -> bool {
    v.raw().trim() == "null"
}

/// One value through one (non date-shift) transform. Ok(None): drop it.
fn transform_value(rule: &Compiled, value: &Value) -> Result<Option<Value>, String> {
    if matches!(rule, Compiled::Drop) {
        return Ok(None);
    }
    if is_null(value) {
        return Ok(Some(value.clone()));
    }
    Ok(Some(match rule {
        Compiled::Keep => value.clone(),
        Compiled::Drop => unreachable!("handled above"),
        Compiled::Null => Value::from_text(None),
        Compiled::Const(v) => v.clone(),
        Compiled::Hmac(keyed, output) => {
            let text = value.to_pg_text().unwrap_or_default();
            let d = keyed.digest(text.as_bytes());
            hmac_output(&d, output)
        }
        Compiled::Fake {
            keyed,
            kind,
            unique,
            max_length,
        } => {
            let text = value.to_pg_text().unwrap_or_default();
            let d = keyed.digest(text.as_bytes());
            let mut s = fake::generate(*kind, &d, *unique);
            if let Some(n) = max_length {
                if let Some((cut, _)) = s.char_indices().nth(*n) {
                    s.truncate(cut);
                }
            }
            string_value(&s)
        }
        Compiled::Mask {
            keep_first,
            keep_last,
            mask_char,
            email,
        } => {
            let text = value.to_pg_text().unwrap_or_default();
            string_value(&mask(&text, *keep_first, *keep_last, *mask_char, *email))
        }
        Compiled::Regex(re, replacement) => {
            let text = value.to_pg_text().unwrap_or_default();
            string_value(&re.replace_all(&text, replacement.as_str()))
        }
        Compiled::Json(paths) => return json(value, paths).map(Some),
        Compiled::DateShift { .. } => unreachable!("date_shift is applied with its row"),
    }))
}

fn hmac_output(d: &[u8; 32], output: &HmacOutput) -> Value {
    match output {
        HmacOutput::Hex { length } => string_value(&hex(d)[..*length]),
        HmacOutput::Integer { min, max } => {
            let span = (i128::from(*max) - i128::from(*min) + 1) as u128;
            let draw = u128::from_be_bytes(d[..16].try_into().expect("16 bytes"));
            let n = i128::from(*min) + (draw % span) as i128;
            raw_value(n.to_string())
        }
        HmacOutput::Uuid => {
            let mut b: [u8; 16] = d[..16].try_into().expect("16 bytes");
            b[6] = (b[6] & 0x0f) | 0x80; // version 8: custom
            b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
            let h = hex(&b);
            string_value(&format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
    }
}

/// Keeps the first and last characters and masks the rest; when nothing
/// would be masked, masks everything. Email-aware: only the local part is
/// masked, the domain stays.
fn mask(text: &str, first: usize, last: usize, c: char, email: Option<bool>) -> String {
    let at = text.rfind('@');
    let as_email = email.unwrap_or(at.is_some()) && at.is_some();
    let (part, rest) = match at {
        Some(i) if as_email => (&text[..i], &text[i..]),
        _ => (text, ""),
    };
    let mut out = String::with_capacity(text.len());
    if part.is_ascii() {
        // Byte offsets are character offsets.
        let n = part.len();
        if first + last >= n {
            out.extend(std::iter::repeat_n(c, n));
        } else {
            out.push_str(&part[..first]);
            out.extend(std::iter::repeat_n(c, n - first - last));
            out.push_str(&part[n - last..]);
        }
    } else {
        let n = part.chars().count();
        if first + last >= n {
            out.extend(std::iter::repeat_n(c, n));
        } else {
            for (i, ch) in part.chars().enumerate() {
                out.push(if i < first || i >= n - last { ch } else { c });
            }
        }
    }
    out.push_str(rest);
    out
}

fn json(value: &Value, paths: &[(json_path::JsonPath, Compiled)]) -> Result<Value, String> {
    // wal2json sends json/jsonb as a string holding the JSON text; other
    // producers may send the object itself.
    let raw = value.raw().trim_start();
    let (mut text, wrapped) = if raw.starts_with('"') {
        (value.to_pg_text().unwrap_or_default(), true)
    } else {
        (raw.to_owned(), false)
    };
    for (path, rule) in paths {
        let mut leaf = |v: &str| -> Result<Leaf, String> {
            let inner: Value = serde_json::from_str(v).map_err(|e| e.to_string())?;
            Ok(match transform_value(rule, &inner)? {
                None => Leaf::Remove,
                Some(n) if n == inner => Leaf::Keep,
                Some(n) => Leaf::Replace(n.raw().to_owned()),
            })
        };
        match json_path::apply(&text, path, &mut leaf) {
            Ok(Some(new)) => text = new,
            Ok(None) => {}
            Err(json_path::ApplyError::NotJson) => {
                return Err("json transform: the value is not valid JSON".to_owned())
            }
            Err(json_path::ApplyError::Leaf(e)) => return Err(format!("at {path}: {e}")),
        }
    }
    Ok(if wrapped {
        string_value(&text)
    } else {
        raw_value(text)
    })
}

/// A non-NULL date or timestamp moved by `days`.
fn shift_value(value: &Value, days: i64) -> Result<Value, String> {
    let text = value.to_pg_text().unwrap_or_default();
    let shifted = dates::shift(&text, days)
        .ok_or_else(|| "date_shift: the value is not a date or timestamp in ISO form".to_owned())?;
    Ok(string_value(&shifted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sanitize::rules;

    fn key() -> SecretKey {
        SecretKey::new(b"test-key-test-key-test-key-test-key!", "test").unwrap()
    }

    fn compiled(text: &str) -> CompiledRules {
        let (r, p) = rules::parse(text);
        let r = r.unwrap_or_else(|| panic!("{p:?}"));
        CompiledRules::new(&r, Some(&key())).unwrap()
    }

    fn record(line: &str) -> Record {
        Record::parse(line.as_bytes()).unwrap()
    }

    const RULES: &str = r##"
[tables.users]
key = ["id"]
[tables.users.columns]
id = { transform = "hmac", output = "integer", min = 1, max = 9007199254740991 }
email = { transform = "fake", kind = "email", unique = true }
name = { transform = "fake", kind = "name" }
phone = { transform = "mask", keep_last = 2 }
card = { transform = "mask", keep_last = 4 }
contact = { transform = "mask", keep_first = 1 }
notes = "null"
secret = "drop"
plan = "keep"
country = { transform = "const", value = "XX" }
born = { transform = "date_shift", max_days = 30 }
seen = { transform = "date_shift", max_days = 30 }
code = { transform = "regex_replace", pattern = "[0-9]", replacement = "#" }
ext = { transform = "hmac", output = "uuid" }
tag = { transform = "hmac", length = 12 }
profile = { transform = "json", paths = [
  { path = "$.address.street", transform = "fake", kind = "address" },
  { path = "$.contacts[*].email", transform = "hmac" },
  { path = "$.ssn", transform = "drop" },
] }
[tables.orders.columns]
id = "keep"
user_id = { transform = "same_as", column = "public.users.id" }
[tables.vault]
mode = "exclude"
"##;

    /// Issue 21: a record with many columns without a rule took quadratic
    /// time, and the halt listed every one of them.
    #[test]
    fn a_wide_record_halts_at_once_with_a_bounded_reason() {
        let c = compiled("[tables.t.columns]\nid = \"keep\"\n");
        // The widest a record can be (Record::validate caps images at
        // MAX_COLUMNS), in data and again in old_keys.
        let n = syncdata_core::record::MAX_COLUMNS;
        let cols: Vec<String> = (0..n).map(|i| format!(r#""column_{i}":{i}"#)).collect();
        let line = format!(
            r#"{{"table":"t","op":"UPDATE","lsn":"0/1","data":{{{0}}},"old_keys":{{{0}}}}}"#,
            cols.join(",")
        );
        let mut r = record(&line);
        let started = std::time::Instant::now();
        let halt = c.apply(&mut r).unwrap_err();
        let took = started.elapsed();
        assert!(!halt.quarantine);
        assert!(
            halt.reason.len() <= MAX_REASON_BYTES,
            "{}",
            halt.reason.len()
        );
        assert!(
            halt.reason
                .contains(&format!("and {} more have no rule", n - MAX_LISTED)),
            "{}",
            halt.reason
        );
        assert!(
            halt.reason.contains("\"column_0\", \"column_1\""),
            "{}",
            halt.reason
        );
        assert!(took.as_millis() < 1000, "{took:?}");
        // One column without a rule is named alone.
        let mut one = record(r#"{"table":"t","op":"INSERT","lsn":"0/1","data":{"id":1,"x":2}}"#);
        let halt = c.apply(&mut one).unwrap_err();
        assert!(
            halt.reason.contains(r#"column "x" has no rule"#),
            "{}",
            halt.reason
        );
        // Reasons of any length are cut on a character boundary.
        let long = HaltReason::table("é".repeat(MAX_REASON_BYTES));
        assert!(long.reason.len() <= MAX_REASON_BYTES && long.reason.ends_with('…'));
    }

    /// Issue 21: the json transform decoded a leaf holding a lone surrogate
    /// escape with a panic. The record is quarantined; the table goes on.
    #[test]
    fn a_json_value_with_a_lone_surrogate_is_quarantined() {
        let c = compiled(
            r#"
[tables.t.columns]
id = "keep"
j = { transform = "json", paths = [{ path = "$.a", transform = "mask" }] }
"#,
        );
        for j in [
            r#""{\"a\": \"\\ud800\"}""#,
            r#""{\"b\": [\"\\udc00x\"], \"a\": 1}""#,
        ] {
            let mut r = record(&format!(
                r#"{{"table":"t","op":"INSERT","lsn":"0/1","data":{{"id":1,"j":{j}}}}}"#
            ));
            let halt = c.apply(&mut r).unwrap_err();
            assert!(halt.quarantine, "{halt:?}");
            assert!(
                halt.reason
                    .contains(r#"json value of column "j" holds a lone UTF-16 surrogate"#),
                "{}",
                halt.reason
            );
        }
        // A valid pair and an escaped backslash pass.
        let mut r = record(
            r#"{"table":"t","op":"INSERT","lsn":"0/1","data":{"id":1,"j":"{\"a\": \"\\ud83d\\ude00\\\\ud800\"}"}}"#,
        );
        assert_eq!(c.apply(&mut r), Ok(Verdict::Publish));
    }

    #[test]
    fn transforms_every_kind_of_column() {
        let c = compiled(RULES);
        let mut r = record(
            r#"{"table":"users","op":"INSERT","lsn":"0/1","data":{"id":7,"email":"zeb@corp.test","name":"Zebulon Q","phone":"+1-555-867-5309","card":"4111111111111111","contact":"zeb@corp.test","notes":"likes cats","secret":"s3cr3t","plan":"gold","country":"FR","born":"1980-05-17","seen":"2024-01-02 03:04:05.5+00","code":"AB12","ext":"x","tag":"t","profile":"{\"ssn\": \"123-45-6789\", \"n\": 1.00000000000000000001, \"address\": {\"street\": \"1 Secret Rd\"}, \"contacts\": [{\"email\": \"a@b.c\"}]}"}}"#,
        );
        assert_eq!(c.apply(&mut r), Ok(Verdict::Publish));
        let d = r.data.as_ref().unwrap();
        let text = |c: &str| d[c].to_pg_text();
        let id: i64 = text("id").unwrap().parse().unwrap();
        assert!((1..=9007199254740991).contains(&id) && id != 7);
        assert!(
            d["id"].raw().bytes().all(|b| b.is_ascii_digit()),
            "a JSON number"
        );
        let email = text("email").unwrap();
        assert!(
            email.contains("@example.") && !email.contains("zeb"),
            "{email}"
        );
        assert!(!text("name").unwrap().contains("Zebulon"));
        assert_eq!(text("phone").unwrap(), "*************09");
        assert_eq!(text("card").unwrap(), "************1111");
        assert_eq!(text("contact").unwrap(), "z**@corp.test");
        assert_eq!(text("notes"), None);
        assert!(!d.contains_key("secret"));
        assert_eq!(text("plan").unwrap(), "gold");
        assert_eq!(text("country").unwrap(), "XX");
        assert_eq!(text("code").unwrap(), "AB##");
        let ext = text("ext").unwrap();
        assert_eq!(ext.len(), 36);
        assert_eq!(&ext[14..15], "8", "version 8 uuid: {ext}");
        assert_eq!(text("tag").unwrap().len(), 12);
        // Both dates of the row move by the same number of days.
        let born = text("born").unwrap();
        let seen = text("seen").unwrap();
        assert_ne!(born, "1980-05-17");
        let days = |a: &str, b: &str| {
            let p = |s: &str| {
                time::Date::parse(
                    &s[..10],
                    time::macros::format_description!("[year]-[month]-[day]"),
                )
                .unwrap()
            };
            (p(b) - p(a)).whole_days()
        };
        let shift = days("1980-05-17", &born);
        assert!(shift != 0 && shift.abs() <= 30);
        assert_eq!(days("2024-01-02", &seen), shift);
        assert!(seen.ends_with(" 03:04:05.5+00"), "{seen}");
        let profile = text("profile").unwrap();
        assert!(!profile.contains("123-45-6789") && !profile.contains("ssn"));
        assert!(!profile.contains("Secret Rd") && !profile.contains("a@b.c"));
        assert!(
            profile.contains("1.00000000000000000001"),
            "numbers stay exact: {profile}"
        );
    }

    #[test]
    fn same_input_same_output_and_foreign_keys_join() {
        let c = compiled(RULES);
        let mut u = record(
            r#"{"table":"users","op":"INSERT","lsn":"0/1","data":{"id":42,"email":"a@b.c"}}"#,
        );
        let mut u2 = u.clone();
        let mut o =
            record(r#"{"table":"orders","op":"INSERT","lsn":"0/2","data":{"id":1,"user_id":42}}"#);
        c.apply(&mut u).unwrap();
        c.apply(&mut u2).unwrap();
        c.apply(&mut o).unwrap();
        assert_eq!(u, u2);
        assert_eq!(
            u.data.as_ref().unwrap()["id"],
            o.data.as_ref().unwrap()["user_id"]
        );
        assert_eq!(o.data.as_ref().unwrap()["id"].raw(), "1");
        // Another key, other values.
        let (r, _) = rules::parse(RULES);
        let other = SecretKey::new(&[b'z'; 40], "t").unwrap();
        let c2 = CompiledRules::new(&r.unwrap(), Some(&other)).unwrap();
        let mut u3 = record(
            r#"{"table":"users","op":"INSERT","lsn":"0/1","data":{"id":42,"email":"a@b.c"}}"#,
        );
        c2.apply(&mut u3).unwrap();
        assert_ne!(
            u.data.as_ref().unwrap()["id"],
            u3.data.as_ref().unwrap()["id"]
        );
    }

    #[test]
    fn old_keys_get_the_same_transforms_as_data() {
        let c = compiled(RULES);
        // A key-changing UPDATE: old key 5, new key 6.
        let mut upd = record(
            r#"{"table":"users","op":"UPDATE","lsn":"0/3","data":{"id":6,"email":"n@b.c","born":"2000-01-01"},"old_keys":{"id":5,"email":"o@b.c","born":"2000-01-01","secret":"x"}}"#,
        );
        let mut ins5 = record(
            r#"{"table":"users","op":"INSERT","lsn":"0/1","data":{"id":5,"email":"o@b.c","born":"2000-01-01"}}"#,
        );
        let mut ins6 = record(
            r#"{"table":"users","op":"INSERT","lsn":"0/2","data":{"id":6,"email":"n@b.c","born":"2000-01-01"}}"#,
        );
        for r in [&mut upd, &mut ins5, &mut ins6] {
            c.apply(r).unwrap();
        }
        let old = upd.old_keys.as_ref().unwrap();
        assert_eq!(
            old,
            ins5.data.as_ref().unwrap(),
            "old image = the row as inserted"
        );
        assert_eq!(upd.data.as_ref().unwrap(), ins6.data.as_ref().unwrap());
        assert!(!old.contains_key("secret"));
        let mut del = record(r#"{"table":"users","op":"DELETE","lsn":"0/4","old_keys":{"id":6}}"#);
        c.apply(&mut del).unwrap();
        assert_eq!(
            del.old_keys.as_ref().unwrap()["id"],
            ins6.data.as_ref().unwrap()["id"]
        );
    }

    #[test]
    fn missing_rules_and_unlisted_tables_halt_excluded_tables_skip() {
        let c = compiled(RULES);
        let mut r = record(
            r#"{"table":"users","op":"INSERT","lsn":"0/1","data":{"id":1,"ssn":"123-45-6789","iban":"DE00"}}"#,
        );
        let h = c.apply(&mut r).unwrap_err().to_string();
        assert!(
            h.contains("public.users") && h.contains("columns \"iban\", \"ssn\" have no rule"),
            "{h}"
        );
        assert!(!h.contains("123-45"), "{h}");
        let mut r =
            record(r#"{"table":"users","op":"DELETE","lsn":"0/1","old_keys":{"id":1,"ssn":"x"}}"#);
        assert!(c.apply(&mut r).unwrap_err().to_string().contains("\"ssn\""));
        let mut r = record(r#"{"table":"payments","op":"INSERT","lsn":"0/1","data":{"id":1}}"#);
        let h = c.apply(&mut r).unwrap_err().to_string();
        assert!(h.contains("public.payments has no entry"), "{h}");
        let mut r = record(r#"{"table":"vault","op":"INSERT","lsn":"0/1","data":{"anything":1}}"#);
        assert_eq!(c.apply(&mut r), Ok(Verdict::Exclude));
        let mut t = record(r#"{"table":"vault","op":"TRUNCATE","lsn":"0/1"}"#);
        assert_eq!(c.apply(&mut t), Ok(Verdict::Exclude));
        let excl = compiled("unlisted_tables = \"exclude\"\n");
        let mut r = record(r#"{"table":"payments","op":"INSERT","lsn":"0/1","data":{"id":1}}"#);
        assert_eq!(excl.apply(&mut r), Ok(Verdict::Exclude));
    }

    #[test]
    fn bad_values_halt_without_quoting_them() {
        let c = compiled(RULES);
        let mut r = record(
            r#"{"table":"users","op":"INSERT","lsn":"0/1","data":{"id":1,"born":"someday 1234"}}"#,
        );
        let h = c.apply(&mut r).unwrap_err().to_string();
        assert!(
            h.contains("\"born\"") && h.contains("not a date") && !h.contains("1234"),
            "{h}"
        );
        let mut r = record(
            r#"{"table":"users","op":"INSERT","lsn":"0/1","data":{"id":1,"profile":"{oops"}}"#,
        );
        let h = c.apply(&mut r).unwrap_err().to_string();
        assert!(h.contains("not valid JSON"), "{h}");
        // A date without its row key cannot be shifted consistently.
        let mut r =
            record(r#"{"table":"users","op":"UPDATE","lsn":"0/1","data":{"born":"2000-01-01"}}"#);
        assert!(c
            .apply(&mut r)
            .unwrap_err()
            .to_string()
            .contains("key column \"id\""));
    }

    #[test]
    fn nulls_stay_null_and_keyed_rules_need_a_key() {
        let c = compiled(RULES);
        let mut r = record(
            r#"{"table":"users","op":"INSERT","lsn":"0/1","data":{"id":1,"email":null,"born":null,"country":null,"profile":null}}"#,
        );
        c.apply(&mut r).unwrap();
        let d = r.data.unwrap();
        for col in ["email", "born", "country", "profile"] {
            assert_eq!(d[col].raw(), "null", "{col}");
        }
        let (rules, _) = rules::parse(RULES);
        let err = CompiledRules::new(&rules.unwrap(), None).unwrap_err();
        assert!(err.to_string().contains("SYNCDATA_SANITIZE_KEY"), "{err}");
        let (plain, _) = rules::parse("[tables.t.columns]\na = \"keep\"\nb = \"null\"\n");
        CompiledRules::new(&plain.unwrap(), None).unwrap();
    }

    #[test]
    fn mask_edge_cases() {
        assert_eq!(mask("abcdef", 1, 1, '*', None), "a****f");
        assert_eq!(mask("abc", 2, 2, '*', None), "***");
        assert_eq!(mask("jane@x.org", 1, 0, '#', None), "j###@x.org");
        assert_eq!(mask("jane@x.org", 1, 0, '#', Some(false)), "j#########");
        assert_eq!(mask("ünïcödé", 1, 1, '*', None), "ü*****é");
        assert_eq!(mask("", 0, 0, '*', None), "");
    }
}
