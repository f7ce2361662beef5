//! The type mapping from PostgreSQL to SQLite (docs/sqlite.md). Pure.
//!
//! Every value reaches the target as PostgreSQL text (wal2json's output, or
//! PostgreSQL's own text form) and is stored so that nothing is lost:
//! integers as INTEGER, floats as REAL, booleans as 0/1, bytea as a BLOB,
//! numeric (exact), json/jsonb, uuid, enums and everything else as TEXT,
//! timestamps, dates and times as ISO-8601 text keeping their offset, arrays
//! as JSON arrays. The mapping is idempotent: a stored value read back as
//! text ([`from_sqlite`]) maps to itself, so values the engine carries over
//! (key changes, parked rows) are written unchanged.

/// How a column's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Integer,
    Real,
    Bool,
    Bytea,
    /// numeric/decimal: exact, as text.
    Numeric,
    Json,
    TimestampTz,
    Timestamp,
    Date,
    TimeTz,
    Time,
    Text,
    /// An array of the element kind, as a JSON array.
    Array(Elem),
}

/// The element kind of an array (one level of nesting is enough to pick
/// how elements are written: numbers, booleans or strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    Integer,
    Real,
    Bool,
    /// Everything else: a JSON string, mapped like a scalar of `scalar`.
    Text(Scalar),
}

/// Scalar kinds an array element keeps (timestamps get ISO-8601 too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    TimestampTz,
    Timestamp,
    TimeTz,
    Bytea,
    Plain,
}

/// A value ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Null,
    Int(i64),
    /// A finite float, parsed here (correctly rounded) rather than left to
    /// SQLite's text conversion.
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// The PostgreSQL type name without modifiers, lowercased, arrays as `T[]`.
pub fn normalize_type(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    let (mut base, mut array) = (t.clone(), false);
    if let Some(b) = base.strip_suffix(" array") {
        base = b.to_owned();
        array = true;
    }
    while let Some(b) = base.trim_end().strip_suffix("[]") {
        base = b.to_owned();
        array = true;
    }
    // Drop modifiers: numeric(30,9), varchar(10), timestamp(3) with time zone.
    let mut out = String::new();
    let mut depth = 0;
    for ch in base.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    let mut out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(elem) = out.strip_prefix('_') {
        // Internal array names: _int4, _text.
        out = elem.to_owned();
        array = true;
    }
    if array {
        format!("{out}[]")
    } else {
        out
    }
}

fn scalar_kind(t: &str) -> Kind {
    match t {
        "smallint" | "integer" | "int" | "bigint" | "int2" | "int4" | "int8" | "serial"
        | "smallserial" | "bigserial" | "serial2" | "serial4" | "serial8" | "oid" => Kind::Integer,
        "real" | "double precision" | "float4" | "float8" | "float" | "double" => Kind::Real,
        "boolean" | "bool" => Kind::Bool,
        "bytea" | "blob" => Kind::Bytea,
        "numeric" | "decimal" | "money" => Kind::Numeric,
        "json" | "jsonb" => Kind::Json,
        "timestamp with time zone" | "timestamptz" => Kind::TimestampTz,
        "timestamp" | "timestamp without time zone" | "datetime" => Kind::Timestamp,
        "date" => Kind::Date,
        "time with time zone" | "timetz" => Kind::TimeTz,
        "time" | "time without time zone" => Kind::Time,
        // SQLite's own declared types, for tables created by hand.
        t if t.contains("int") => Kind::Integer,
        t if t.contains("real") || t.contains("floa") || t.contains("doub") => Kind::Real,
        _ => Kind::Text,
    }
}

/// The kind of a column of (PostgreSQL or SQLite) type `t`.
pub fn kind_of(t: &str) -> Kind {
    let t = normalize_type(t);
    match t.strip_suffix("[]") {
        Some(elem) => Kind::Array(match scalar_kind(elem) {
            Kind::Integer => Elem::Integer,
            Kind::Real => Elem::Real,
            Kind::Bool => Elem::Bool,
            Kind::TimestampTz => Elem::Text(Scalar::TimestampTz),
            Kind::Timestamp => Elem::Text(Scalar::Timestamp),
            Kind::TimeTz => Elem::Text(Scalar::TimeTz),
            Kind::Bytea => Elem::Text(Scalar::Bytea),
            _ => Elem::Text(Scalar::Plain),
        }),
        None => scalar_kind(&t),
    }
}

/// The SQLite column type (and so affinity) a kind is stored with.
pub fn sqlite_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Integer | Kind::Bool => "INTEGER",
        Kind::Real => "REAL",
        Kind::Bytea => "BLOB",
        _ => "TEXT",
    }
}

/// How a kind's values are stored, in words (`schema diff`, docs/sqlite.md).
pub fn stored_as(kind: Kind) -> &'static str {
    match kind {
        Kind::Integer => "INTEGER",
        Kind::Real => "REAL (NaN and infinities as text)",
        Kind::Bool => "INTEGER 0/1",
        Kind::Bytea => "BLOB",
        Kind::Numeric => "TEXT, the exact decimal",
        Kind::Json => "TEXT, the JSON document",
        Kind::TimestampTz => "TEXT, ISO-8601 with offset",
        Kind::Timestamp => "TEXT, ISO-8601",
        Kind::Date => "TEXT, ISO-8601 date",
        Kind::TimeTz => "TEXT, ISO-8601 time with offset",
        Kind::Time => "TEXT, ISO-8601 time",
        Kind::Text => "TEXT",
        Kind::Array(_) => "TEXT, a JSON array",
    }
}

/// A PostgreSQL text value (None: NULL) as the value to store.
pub fn to_sqlite(kind: Kind, text: Option<&str>) -> Bound {
    let Some(t) = text else {
        return Bound::Null;
    };
    match kind {
        Kind::Integer => t
            .trim()
            .parse::<i64>()
            .map(Bound::Int)
            .unwrap_or_else(|_| Bound::Text(t.to_owned())),
        Kind::Bool => match t {
            "t" | "true" | "1" | "TRUE" | "True" => Bound::Int(1),
            "f" | "false" | "0" | "FALSE" | "False" => Bound::Int(0),
            other => Bound::Text(other.to_owned()),
        },
        Kind::Bytea => match decode_hex(t.strip_prefix("\\x").unwrap_or(t)) {
            Some(bytes) => Bound::Blob(bytes),
            None => Bound::Text(t.to_owned()),
        },
        Kind::TimestampTz | Kind::Timestamp | Kind::Date => Bound::Text(iso_timestamp(t)),
        Kind::TimeTz | Kind::Time => Bound::Text(iso_offset(t)),
        Kind::Array(elem) => Bound::Text(array_to_json(t, elem).unwrap_or_else(|| t.to_owned())),
        // NaN and ±Infinity stay text (SQLite stores NaN as NULL).
        Kind::Real => match t.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Bound::Real(f),
            _ => Bound::Text(t.to_owned()),
        },
        Kind::Numeric | Kind::Json | Kind::Text => Bound::Text(t.to_owned()),
    }
}

/// A stored value back as text that [`to_sqlite`] maps to the same value.
pub fn from_sqlite(kind: Kind, value: Stored) -> Option<String> {
    Some(match value {
        Stored::Null => return None,
        Stored::Int(i) if kind == Kind::Bool => (if i != 0 { "true" } else { "false" }).to_owned(),
        Stored::Int(i) => i.to_string(),
        Stored::Real(f) => f.to_string(),
        Stored::Text(s) => s,
        Stored::Blob(b) => hex(&b),
    })
}

/// A value as SQLite returned it.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((digit(p[0])? << 4) | digit(p[1])?))
        .collect()
}

/// `2026-02-05 10:31:00.5+00` → `2026-02-05T10:31:00.5+00:00`. Values that
/// are not of that form (`infinity`, BC dates) stay as they are.
pub fn iso_timestamp(t: &str) -> String {
    let b = t.as_bytes();
    let dated = b.len() >= 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b[..4].iter().all(u8::is_ascii_digit)
        && !t.ends_with(" BC");
    if !dated {
        return t.to_owned();
    }
    if b.len() == 10 {
        return t.to_owned();
    }
    let mut s = t.to_owned();
    if b[10] == b' ' {
        s.replace_range(10..11, "T");
    }
    iso_offset(&s)
}

/// A trailing `+HH` / `-HH` offset becomes `+HH:00`; `Z` and `+HH:MM` stay.
pub fn iso_offset(t: &str) -> String {
    let b = t.as_bytes();
    let n = b.len();
    if n >= 3
        && (b[n - 3] == b'+' || b[n - 3] == b'-')
        && b[n - 2].is_ascii_digit()
        && b[n - 1].is_ascii_digit()
        // Not the date's own "-05" of a bare date.
        && t[..n - 3].contains(':')
    {
        return format!("{t}:00");
    }
    t.to_owned()
}

/// A PostgreSQL array literal (`{a,"b c",NULL}`, nested `{{1,2},{3,4}}`) as
/// JSON. JSON text (`[…]`) is returned as it is. None when the literal does
/// not parse (it is then stored as it came).
pub fn array_to_json(t: &str, elem: Elem) -> Option<String> {
    let t = t.trim();
    if t.starts_with('[') && serde_json::from_str::<serde_json::Value>(t).is_ok() {
        return Some(t.to_owned());
    }
    let mut chars = t.chars().peekable();
    let value = parse_array(&mut chars, elem)?;
    if chars.next().is_some() {
        return None;
    }
    Some(value.to_string())
}

fn parse_array(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    elem: Elem,
) -> Option<serde_json::Value> {
    use serde_json::Value;
    if chars.next()? != '{' {
        return None;
    }
    let mut items = Vec::new();
    if chars.peek() == Some(&'}') {
        chars.next();
        return Some(Value::Array(items));
    }
    loop {
        match chars.peek()? {
            '{' => items.push(parse_array(chars, elem)?),
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                items.push(element(&s, elem, true));
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                let s = s.trim();
                if s.eq_ignore_ascii_case("null") {
                    items.push(Value::Null);
                } else {
                    items.push(element(s, elem, false));
                }
            }
        }
        match chars.next()? {
            ',' => continue,
            '}' => return Some(Value::Array(items)),
            _ => return None,
        }
    }
}

fn element(s: &str, elem: Elem, _quoted: bool) -> serde_json::Value {
    use serde_json::Value;
    match elem {
        Elem::Integer => s
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.to_owned())),
        Elem::Real => match serde_json::from_str::<serde_json::Number>(s) {
            Ok(n) => Value::Number(n),
            Err(_) => Value::String(s.to_owned()),
        },
        Elem::Bool => match s {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => Value::String(s.to_owned()),
        },
        Elem::Text(Scalar::TimestampTz | Scalar::Timestamp) => Value::String(iso_timestamp(s)),
        Elem::Text(Scalar::TimeTz) => Value::String(iso_offset(s)),
        Elem::Text(Scalar::Bytea) => Value::String(s.strip_prefix("\\x").unwrap_or(s).to_owned()),
        Elem::Text(Scalar::Plain) => Value::String(s.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind_of("numeric(30,9)"), Kind::Numeric);
        assert_eq!(kind_of("timestamp(3) with time zone"), Kind::TimestampTz);
        assert_eq!(kind_of("text[]"), Kind::Array(Elem::Text(Scalar::Plain)));
        assert_eq!(kind_of("_int4"), Kind::Array(Elem::Integer));
        assert_eq!(kind_of("integer ARRAY"), Kind::Array(Elem::Integer));
        assert_eq!(kind_of("character varying(20)"), Kind::Text);
        assert_eq!(kind_of("INTEGER"), Kind::Integer);
    }

    #[test]
    fn mapping_is_exact_and_idempotent() {
        let cases = [
            (Kind::Numeric, "123456789012345678901234567890.123456789"),
            (Kind::TimestampTz, "2026-02-05 10:31:00.123456+05:30"),
            (Kind::TimestampTz, "2026-02-05 10:31:00+00"),
            (Kind::TimestampTz, "infinity"),
            (Kind::Date, "2026-02-05"),
            (Kind::TimeTz, "10:31:00+02"),
            (Kind::Bool, "t"),
            (Kind::Bytea, "\\xdeadbeef"),
            (Kind::Bytea, "00ff"),
            (
                Kind::Array(Elem::Text(Scalar::Plain)),
                r#"{a,"b c",NULL,"q\"uote","NULL"}"#,
            ),
            (Kind::Array(Elem::Integer), "{{1,2},{3,NULL}}"),
            (Kind::Json, r#"{"a": [1, "😀"]}"#),
            (Kind::Real, "1.5e+300"),
            (Kind::Real, "NaN"),
            (Kind::Real, "-Infinity"),
        ];
        for (kind, text) in cases {
            let once = to_sqlite(kind, Some(text));
            let back = from_sqlite(kind, stored(&once));
            assert_eq!(to_sqlite(kind, back.as_deref()), once, "{kind:?} {text}");
        }
        assert_eq!(
            to_sqlite(Kind::TimestampTz, Some("2026-02-05 10:31:00+00")),
            Bound::Text("2026-02-05T10:31:00+00:00".into())
        );
        assert_eq!(
            to_sqlite(
                Kind::Array(Elem::Text(Scalar::Plain)),
                Some(r#"{a,"b c",NULL,"q\"uote","NULL"}"#)
            ),
            Bound::Text(r#"["a","b c",null,"q\"uote","NULL"]"#.into())
        );
        assert_eq!(to_sqlite(Kind::Bool, Some("f")), Bound::Int(0));
        assert_eq!(
            to_sqlite(Kind::Bytea, Some("\\x00ff")),
            Bound::Blob(vec![0, 255])
        );
    }

    fn stored(b: &Bound) -> Stored {
        match b {
            Bound::Null => Stored::Null,
            Bound::Int(i) => Stored::Int(*i),
            Bound::Real(f) => Stored::Real(*f),
            Bound::Text(t) => Stored::Text(t.clone()),
            Bound::Blob(b) => Stored::Blob(b.clone()),
        }
    }
}
