//! The rules file: parsed from TOML into [`Rules`], with every problem
//! collected (not just the first) and located (`public.users.email`), so
//! `check-rules` and a reload can report them all at once.
//!
//! ```toml
//! unlisted_tables = "halt"          # or "exclude"
//! [tables."public.users"]
//! mode = "replicate"                # or "exclude"
//! key = ["id"]
//! [tables."public.users".columns]
//! id = { transform = "hmac", output = "integer" }
//! email = { transform = "fake", kind = "email", unique = true }
//! plan = "keep"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regex::Regex;
use syncdata_core::table::TableName;
use toml::Value as Toml;

use super::fake::FakeKind;
use super::json_path::JsonPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One finding about the rules, located at a table, column or key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// `public.users.email`, `public.users`, or a top-level key.
    pub at: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{s}: {}: {}", self.at, self.message)
    }
}

#[derive(Default)]
pub(crate) struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn error(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            severity: Severity::Error,
            at: at.into(),
            message: message.into(),
        });
    }

    pub fn warning(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            severity: Severity::Warning,
            at: at.into(),
            message: message.into(),
        });
    }
}

/// What happens to records of a table the rules file does not mention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlisted {
    /// The table halts with an error until an entry is added (the default).
    Halt,
    /// Never published.
    Exclude,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Replicate,
    Exclude,
}

#[derive(Debug, Clone)]
pub struct Rules {
    pub unlisted: Unlisted,
    pub tables: BTreeMap<TableName, TableRules>,
}

#[derive(Debug, Clone)]
pub struct TableRules {
    pub mode: Mode,
    /// The declared primary key (default key of `date_shift`).
    pub key: Option<Vec<String>>,
    pub columns: BTreeMap<String, ColumnRule>,
    /// Columns whose rule is in error (left out of `columns`).
    pub invalid_columns: BTreeSet<String>,
}

/// A column's rule after `same_as` is resolved.
#[derive(Debug, Clone)]
pub struct ColumnRule {
    pub transform: Transform,
    /// The column this rule was copied from (`same_as`), for reports.
    pub same_as: Option<ColumnRef>,
}

/// `schema.table.column`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ColumnRef {
    pub table: TableName,
    pub column: String,
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.table.schema, self.table.table, self.column
        )
    }
}

impl ColumnRef {
    /// `schema.table.column` or `table.column` (schema `public`); the column
    /// is what follows the last dot.
    pub fn parse(s: &str) -> Option<ColumnRef> {
        let (table, column) = s.rsplit_once('.')?;
        let column = column
            .strip_prefix('"')
            .and_then(|c| c.strip_suffix('"'))
            .unwrap_or(column);
        if column.is_empty() {
            return None;
        }
        Some(ColumnRef {
            table: TableName::parse(table).ok()?,
            column: column.to_owned(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HmacOutput {
    /// `length` lower-case hex digits.
    Hex { length: usize },
    /// An integer in `min..=max`.
    Integer { min: i64, max: i64 },
    /// A UUID (version 8, "custom").
    Uuid,
}

#[derive(Debug, Clone)]
pub enum Transform {
    Keep,
    Drop,
    Null,
    /// The raw JSON of the constant.
    Const {
        value: String,
    },
    Hmac {
        output: HmacOutput,
        domain: String,
    },
    Fake {
        kind: FakeKind,
        unique: bool,
        max_length: Option<usize>,
        domain: String,
    },
    Mask {
        keep_first: usize,
        keep_last: usize,
        mask_char: char,
        /// None: mask the local part only when the value holds an `@`.
        email: Option<bool>,
    },
    RegexReplace {
        pattern: Regex,
        replacement: String,
    },
    Json {
        paths: Vec<(JsonPath, Transform)>,
    },
    DateShift {
        max_days: u32,
        key: Vec<String>,
        domain: String,
    },
}

impl Transform {
    pub fn name(&self) -> &'static str {
        match self {
            Transform::Keep => "keep",
            Transform::Drop => "drop",
            Transform::Null => "null",
            Transform::Const { .. } => "const",
            Transform::Hmac { .. } => "hmac",
            Transform::Fake { .. } => "fake",
            Transform::Mask { .. } => "mask",
            Transform::RegexReplace { .. } => "regex_replace",
            Transform::Json { .. } => "json",
            Transform::DateShift { .. } => "date_shift",
        }
    }

    /// Needs the secret key.
    pub fn is_keyed(&self) -> bool {
        match self {
            Transform::Hmac { .. } | Transform::Fake { .. } | Transform::DateShift { .. } => true,
            Transform::Json { paths } => paths.iter().any(|(_, t)| t.is_keyed()),
            _ => false,
        }
    }

    /// The keyed domain, for transforms that have one.
    pub fn domain(&self) -> Option<&str> {
        match self {
            Transform::Hmac { domain, .. }
            | Transform::Fake { domain, .. }
            | Transform::DateShift { domain, .. } => Some(domain),
            _ => None,
        }
    }

    /// Bits of distinct outputs, as a measure of injectivity: None when
    /// the transform maps distinct inputs to distinct outputs (keep), or
    /// Some(bits) of a hash-like output; Some(0) when it is not injective at
    /// all.
    pub fn output_bits(&self) -> Option<f64> {
        match self {
            Transform::Keep => None,
            Transform::Hmac { output, .. } => Some(match output {
                HmacOutput::Hex { length } => 4.0 * *length as f64,
                HmacOutput::Integer { min, max } => ((*max as f64) - (*min as f64) + 1.0).log2(),
                HmacOutput::Uuid => 122.0,
            }),
            Transform::Fake {
                kind: FakeKind::Email,
                unique: true,
                max_length: None,
                ..
            } => Some(64.0),
            _ => Some(0.0),
        }
    }

    /// Same outputs for the same inputs (transform, parameters and domain).
    pub fn same_outputs_as(&self, other: &Transform) -> bool {
        match (self, other) {
            (Transform::Keep, Transform::Keep) => true,
            (
                Transform::Hmac {
                    output: a,
                    domain: da,
                },
                Transform::Hmac {
                    output: b,
                    domain: db,
                },
            ) => a == b && da == db,
            (
                Transform::Fake {
                    kind: ka,
                    unique: ua,
                    max_length: ma,
                    domain: da,
                },
                Transform::Fake {
                    kind: kb,
                    unique: ub,
                    max_length: mb,
                    domain: db,
                },
            ) => ka == kb && ua == ub && ma == mb && da == db,
            (Transform::Null, Transform::Null) | (Transform::Drop, Transform::Drop) => true,
            (Transform::Const { value: a }, Transform::Const { value: b }) => a == b,
            (
                Transform::Mask {
                    keep_first: fa,
                    keep_last: la,
                    mask_char: ca,
                    email: ea,
                },
                Transform::Mask {
                    keep_first: fb,
                    keep_last: lb,
                    mask_char: cb,
                    email: eb,
                },
            ) => fa == fb && la == lb && ca == cb && ea == eb,
            (
                Transform::RegexReplace {
                    pattern: pa,
                    replacement: ra,
                },
                Transform::RegexReplace {
                    pattern: pb,
                    replacement: rb,
                },
            ) => pa.as_str() == pb.as_str() && ra == rb,
            _ => false,
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            Transform::Hmac { output, domain } => {
                let out = match output {
                    HmacOutput::Hex { length } => format!("hex({length})"),
                    HmacOutput::Integer { min, max } => format!("integer {min}..={max}"),
                    HmacOutput::Uuid => "uuid".to_owned(),
                };
                format!("hmac {out} in domain {domain:?}")
            }
            Transform::Fake { kind, domain, .. } => {
                format!("fake {kind:?} in domain {domain:?}")
            }
            other => other.name().to_owned(),
        }
    }
}

pub const TRANSFORMS: &[&str] = &[
    "keep",
    "drop",
    "null",
    "const",
    "hmac",
    "fake",
    "mask",
    "regex_replace",
    "json",
    "date_shift",
    "same_as",
];

fn params_of(transform: &str) -> &'static [&'static str] {
    match transform {
        "keep" | "drop" | "null" => &[],
        "const" => &["value"],
        "hmac" => &["output", "length", "min", "max", "domain"],
        "fake" => &["kind", "unique", "max_length", "domain"],
        "mask" => &["keep_first", "keep_last", "char", "email"],
        "regex_replace" => &["pattern", "replacement"],
        "json" => &["paths"],
        "date_shift" => &["max_days", "key", "domain"],
        "same_as" => &["column"],
        _ => &[],
    }
}

/// Parses a rules file. Returns the rules when there is no error, and every
/// problem found (warnings too).
pub fn parse(text: &str) -> (Option<Rules>, Vec<Problem>) {
    let (rules, problems) = parse_all(text);
    let ok = !problems.iter().any(|x| x.severity == Severity::Error);
    (rules.filter(|_| ok), problems)
}

/// Like [`parse`], but returns what could be parsed even when some rules
/// are wrong (rules in error are left out), for `check-rules` to check the
/// rest. None only when the file is not TOML.
pub fn parse_all(text: &str) -> (Option<Rules>, Vec<Problem>) {
    let mut p = Problems::default();
    let rules = match text.parse::<toml::Table>() {
        Ok(doc) => Some(parse_doc(&doc, &mut p)),
        Err(e) => {
            p.error("rules file", format!("not valid TOML: {e}"));
            None
        }
    };
    (rules, p.0)
}

/// A raw column rule before `same_as` is resolved.
enum Raw {
    Rule(Transform),
    SameAs(ColumnRef),
}

fn parse_doc(doc: &toml::Table, p: &mut Problems) -> Rules {
    let mut unlisted = Unlisted::Halt;
    let mut raw: BTreeMap<TableName, RawTable> = BTreeMap::new();
    for (k, v) in doc {
        match k.as_str() {
            "unlisted_tables" => match v.as_str() {
                Some("halt") => unlisted = Unlisted::Halt,
                Some("exclude") => unlisted = Unlisted::Exclude,
                _ => p.error("unlisted_tables", "must be \"halt\" or \"exclude\""),
            },
            "tables" => {
                let Some(tables) = v.as_table() else {
                    p.error("tables", "must be a table of tables");
                    continue;
                };
                for (name, spec) in tables {
                    let table = match TableName::parse(name) {
                        Ok(t) => t,
                        Err(e) => {
                            p.error(format!("tables.{name:?}"), e.to_string());
                            continue;
                        }
                    };
                    let at = format!("{}.{}", table.schema, table.table);
                    if raw.contains_key(&table) {
                        p.error(&at, "listed twice (under different spellings)");
                        continue;
                    }
                    let Some(spec) = spec.as_table() else {
                        p.error(&at, "must be a table with mode, key and columns");
                        continue;
                    };
                    let parsed = parse_table(&table, spec, p);
                    raw.insert(table, parsed);
                }
            }
            "key" | "secret" | "salt" | "sanitize_key" => p.error(
                k.as_str(),
                "the key never belongs in the rules file: set SYNCDATA_SANITIZE_KEY or \
                 producer.sanitize_key_file",
            ),
            other => p.error(
                other,
                "unknown top-level key (expected unlisted_tables, tables)",
            ),
        }
    }
    let tables = resolve(raw, p);
    check_date_shift_keys(&tables, p);
    Rules { unlisted, tables }
}

/// A table's entry before `same_as` is resolved.
struct RawTable {
    mode: Mode,
    key: Option<Vec<String>>,
    columns: BTreeMap<String, Raw>,
    invalid: BTreeSet<String>,
}

fn parse_table(table: &TableName, spec: &toml::Table, p: &mut Problems) -> RawTable {
    let at = format!("{}.{}", table.schema, table.table);
    let mut mode = Mode::Replicate;
    let mut key = None;
    let mut columns = BTreeMap::new();
    let mut invalid = BTreeSet::new();
    for (k, v) in spec {
        match k.as_str() {
            "mode" => match v.as_str() {
                Some("replicate") => mode = Mode::Replicate,
                Some("exclude") => mode = Mode::Exclude,
                _ => p.error(format!("{at}.mode"), "must be \"replicate\" or \"exclude\""),
            },
            "key" => key = string_list(v, &format!("{at}.key"), p),
            "columns" => {
                let Some(cols) = v.as_table() else {
                    p.error(format!("{at}.columns"), "must be a table");
                    continue;
                };
                for (col, rule) in cols {
                    let cat = format!("{at}.{col}");
                    let default_domain = cat.clone();
                    match parse_rule(rule, &cat, &default_domain, table, true, p) {
                        Some(r) => {
                            columns.insert(col.clone(), r);
                        }
                        None => {
                            invalid.insert(col.clone());
                        }
                    }
                }
            }
            other => p.error(
                format!("{at}.{other}"),
                "unknown key (expected mode, key, columns)",
            ),
        }
    }
    if mode == Mode::Replicate && !spec.contains_key("columns") {
        p.error(
            &at,
            "a replicated table needs a [columns] table with a rule for every column",
        );
    }
    RawTable {
        mode,
        key,
        columns,
        invalid,
    }
}

fn string_list(v: &Toml, at: &str, p: &mut Problems) -> Option<Vec<String>> {
    let list = v.as_array().and_then(|a| {
        a.iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
    });
    match list {
        Some(l) if !l.is_empty() => Some(l),
        _ => {
            p.error(at, "must be a non-empty list of column names");
            None
        }
    }
}

/// One rule: a shorthand string (`"keep"`) or a table with `transform`.
fn parse_rule(
    v: &Toml,
    at: &str,
    default_domain: &str,
    table: &TableName,
    top_level: bool,
    p: &mut Problems,
) -> Option<Raw> {
    let empty = toml::Table::new();
    let (name, params) = match v {
        Toml::String(s) => (s.as_str(), &empty),
        Toml::Table(t) => match t.get("transform").and_then(Toml::as_str) {
            Some(n) => (n, t),
            None => {
                p.error(at, "a rule table needs `transform = \"…\"`");
                return None;
            }
        },
        _ => {
            p.error(at, "a rule is a transform name or a table with `transform`");
            return None;
        }
    };
    if !TRANSFORMS.contains(&name) {
        p.error(
            at,
            format!(
                "unknown transform {name:?} (known: {})",
                TRANSFORMS.join(", ")
            ),
        );
        return None;
    }
    let allowed = params_of(name);
    let mut bad_param = false;
    for k in params.keys() {
        if k != "transform" && !allowed.contains(&k.as_str()) {
            bad_param = true;
            let expected = if allowed.is_empty() {
                "it takes none".to_owned()
            } else {
                format!("expected {}", allowed.join(", "))
            };
            p.error(
                at,
                format!("unknown parameter {k:?} for transform {name} ({expected})"),
            );
        }
    }
    if bad_param {
        return None;
    }
    let before = p.0.len();
    let mut prm = Params {
        params,
        at,
        p,
        transform: name,
    };
    let domain = || prm_domain(params, default_domain);
    let t = match name {
        "keep" => Transform::Keep,
        "drop" => Transform::Drop,
        "null" => Transform::Null,
        "const" => match params.get("value") {
            Some(Toml::String(s)) => Transform::Const {
                value: serde_json::to_string(s).expect("a string serializes"),
            },
            Some(Toml::Integer(i)) => Transform::Const {
                value: i.to_string(),
            },
            Some(Toml::Float(f)) if f.is_finite() => Transform::Const {
                value: f.to_string(),
            },
            Some(Toml::Boolean(b)) => Transform::Const {
                value: b.to_string(),
            },
            _ => {
                prm.p.error(
                    at,
                    "const needs `value` (a string, number or boolean; use transform \"null\" for NULL)",
                );
                return None;
            }
        },
        "hmac" => {
            let output = match prm.string("output").as_deref().unwrap_or("hex") {
                "hex" => {
                    if params.contains_key("min") || params.contains_key("max") {
                        prm.p
                            .error(at, "min and max apply to output = \"integer\" only");
                    }
                    let length = prm.int("length", 8, 64).unwrap_or(32) as usize;
                    HmacOutput::Hex { length }
                }
                "integer" => {
                    if params.contains_key("length") {
                        prm.p.error(at, "length applies to output = \"hex\" only");
                    }
                    let min = prm.int("min", i64::MIN, i64::MAX).unwrap_or(1);
                    let max = prm.int("max", i64::MIN, i64::MAX).unwrap_or(i64::MAX);
                    if min >= max {
                        prm.p
                            .error(at, format!("min ({min}) must be below max ({max})"));
                    }
                    HmacOutput::Integer { min, max }
                }
                "uuid" => {
                    for k in ["length", "min", "max"] {
                        if params.contains_key(k) {
                            prm.p
                                .error(at, format!("{k} does not apply to output = \"uuid\""));
                        }
                    }
                    HmacOutput::Uuid
                }
                other => {
                    prm.p.error(
                        at,
                        format!("unknown hmac output {other:?} (expected hex, integer, uuid)"),
                    );
                    return None;
                }
            };
            Transform::Hmac {
                output,
                domain: domain(),
            }
        }
        "fake" => {
            let kind = match prm.string("kind") {
                Some(k) => match FakeKind::parse(&k) {
                    Some(kind) => kind,
                    None => {
                        let known: Vec<_> = FakeKind::ALL.iter().map(|(n, _)| *n).collect();
                        prm.p.error(
                            at,
                            format!("unknown fake kind {k:?} (known: {})", known.join(", ")),
                        );
                        return None;
                    }
                },
                None => {
                    prm.p.error(at, "fake needs `kind`");
                    return None;
                }
            };
            let unique = prm.bool("unique").unwrap_or(false);
            if unique && kind != FakeKind::Email {
                prm.p
                    .error(at, "unique = true is supported for kind = \"email\" only");
            }
            let max_length = prm.int("max_length", 1, 100_000).map(|n| n as usize);
            Transform::Fake {
                kind,
                unique,
                max_length,
                domain: domain(),
            }
        }
        "mask" => {
            let keep_first = prm.int("keep_first", 0, 1000).unwrap_or(0) as usize;
            let keep_last = prm.int("keep_last", 0, 1000).unwrap_or(0) as usize;
            let mask_char = match prm.string("char") {
                None => '*',
                Some(c) if c.chars().count() == 1 => c.chars().next().expect("one char"),
                Some(_) => {
                    prm.p.error(at, "char must be a single character");
                    '*'
                }
            };
            Transform::Mask {
                keep_first,
                keep_last,
                mask_char,
                email: prm.bool("email"),
            }
        }
        "regex_replace" => {
            let Some(pattern) = prm.string("pattern") else {
                prm.p.error(at, "regex_replace needs `pattern`");
                return None;
            };
            let pattern = match Regex::new(&pattern) {
                Ok(r) => r,
                Err(e) => {
                    prm.p.error(at, format!("invalid pattern: {e}"));
                    return None;
                }
            };
            let replacement = prm.string("replacement").unwrap_or_default();
            Transform::RegexReplace {
                pattern,
                replacement,
            }
        }
        "json" => {
            if !top_level {
                prm.p.error(at, "json cannot be nested inside json");
                return None;
            }
            let Some(list) = params.get("paths").and_then(Toml::as_array) else {
                prm.p.error(
                    at,
                    "json needs `paths = [{ path = \"$.a\", transform = … }, …]`",
                );
                return None;
            };
            let mut paths = Vec::new();
            for (i, item) in list.iter().enumerate() {
                let pat = format!("{at}.paths[{i}]");
                let Some(t) = item.as_table() else {
                    prm.p.error(&pat, "must be a table with path and transform");
                    continue;
                };
                let path = match t.get("path").and_then(Toml::as_str).map(JsonPath::parse) {
                    Some(Ok(path)) => path,
                    Some(Err(e)) => {
                        prm.p.error(&pat, e);
                        continue;
                    }
                    None => {
                        prm.p.error(&pat, "needs `path`");
                        continue;
                    }
                };
                let mut rest = t.clone();
                rest.remove("path");
                let nested_domain = format!("{default_domain}{path}");
                match parse_rule(
                    &Toml::Table(rest),
                    &pat,
                    &nested_domain,
                    table,
                    false,
                    prm.p,
                ) {
                    Some(Raw::Rule(Transform::DateShift { .. })) => {
                        prm.p
                            .error(&pat, "date_shift is a column transform, not a json one");
                    }
                    Some(Raw::Rule(t)) => paths.push((path, t)),
                    Some(Raw::SameAs(_)) => {
                        prm.p
                            .error(&pat, "same_as is a column transform, not a json one");
                    }
                    None => {}
                }
            }
            Transform::Json { paths }
        }
        "date_shift" => {
            if !top_level {
                prm.p
                    .error(at, "date_shift is a column transform, not a json one");
                return None;
            }
            let max_days = prm.int("max_days", 1, 3650).unwrap_or(365) as u32;
            let key = match params.get("key") {
                Some(v) => string_list(v, &format!("{at}.key"), prm.p).unwrap_or_default(),
                None => Vec::new(), // filled from the table's key
            };
            let domain = prm_domain(params, &format!("{}.{}", table.schema, table.table));
            Transform::DateShift {
                max_days,
                key,
                domain,
            }
        }
        "same_as" => {
            if !top_level {
                prm.p
                    .error(at, "same_as is a column transform, not a json one");
                return None;
            }
            let Some(c) = prm.string("column") else {
                prm.p
                    .error(at, "same_as needs `column = \"schema.table.column\"`");
                return None;
            };
            match ColumnRef::parse(&c) {
                Some(r) => return Some(Raw::SameAs(r)),
                None => {
                    prm.p
                        .error(at, format!("column {c:?} is not schema.table.column"));
                    return None;
                }
            }
        }
        _ => unreachable!("checked against TRANSFORMS"),
    };
    if p.0.len() > before && p.0[before..].iter().any(|x| x.severity == Severity::Error) {
        return None;
    }
    Some(Raw::Rule(t))
}

fn prm_domain(params: &toml::Table, default: &str) -> String {
    params
        .get("domain")
        .and_then(Toml::as_str)
        .filter(|d| !d.is_empty())
        .unwrap_or(default)
        .to_owned()
}

/// Typed access to a rule's parameters, reporting wrong types.
struct Params<'a> {
    params: &'a toml::Table,
    at: &'a str,
    p: &'a mut Problems,
    transform: &'a str,
}

impl Params<'_> {
    fn string(&mut self, k: &str) -> Option<String> {
        match self.params.get(k)? {
            Toml::String(s) => Some(s.clone()),
            _ => {
                self.p.error(
                    self.at,
                    format!("{} parameter {k} must be a string", self.transform),
                );
                None
            }
        }
    }

    fn bool(&mut self, k: &str) -> Option<bool> {
        match self.params.get(k)? {
            Toml::Boolean(b) => Some(*b),
            _ => {
                self.p.error(
                    self.at,
                    format!("{} parameter {k} must be true or false", self.transform),
                );
                None
            }
        }
    }

    fn int(&mut self, k: &str, min: i64, max: i64) -> Option<i64> {
        match self.params.get(k)? {
            Toml::Integer(i) if (min..=max).contains(i) => Some(*i),
            _ => {
                self.p.error(
                    self.at,
                    format!(
                        "{} parameter {k} must be an integer from {min} to {max}",
                        self.transform
                    ),
                );
                None
            }
        }
    }
}

/// Where a `same_as` chain ends.
#[derive(Clone)]
enum End {
    Rule(Transform),
    /// The chain reaches a column without a rule.
    Missing(ColumnRef),
    /// The chain reaches a date_shift column.
    DateShift(ColumnRef),
    /// The chain comes back to this column.
    Loop(ColumnRef),
}

/// Follows the `same_as` chain from `first`. Every column passed is
/// remembered in `ends` with where its chain ends, so resolving every
/// column of a file takes linear time, however long the chains.
fn follow<'a>(
    first: &ColumnRef,
    lookup: &dyn Fn(&ColumnRef) -> Option<&'a Raw>,
    ends: &mut BTreeMap<ColumnRef, End>,
) -> End {
    let mut path = Vec::new();
    let mut on_path = BTreeSet::new();
    let mut target = first.clone();
    let end = loop {
        if let Some(end) = ends.get(&target) {
            break end.clone();
        }
        if !on_path.insert(target.clone()) {
            break End::Loop(target);
        }
        path.push(target.clone());
        match lookup(&target) {
            None => break End::Missing(target),
            Some(Raw::SameAs(next)) => target = next.clone(),
            Some(Raw::Rule(Transform::DateShift { .. })) => break End::DateShift(target),
            Some(Raw::Rule(t)) => break End::Rule(t.clone()),
        }
    };
    for column in path {
        ends.insert(column, end.clone());
    }
    end
}

/// Resolves `same_as` (following chains, refusing cycles) and fills in
/// `date_shift` keys from the table's key.
fn resolve(
    raw: BTreeMap<TableName, RawTable>,
    p: &mut Problems,
) -> BTreeMap<TableName, TableRules> {
    let lookup = |r: &ColumnRef| raw.get(&r.table).and_then(|t| t.columns.get(&r.column));
    let mut ends = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (table, t) in &raw {
        let mut columns = BTreeMap::new();
        let mut invalid = t.invalid.clone();
        let key = &t.key;
        for (col, rule) in &t.columns {
            let at = format!("{}.{}.{col}", table.schema, table.table);
            let resolved = match rule {
                Raw::Rule(t) => Some(ColumnRule {
                    transform: t.clone(),
                    same_as: None,
                }),
                Raw::SameAs(first) => match follow(first, &lookup, &mut ends) {
                    End::Loop(target) => {
                        p.error(&at, format!("same_as chain loops at {target}"));
                        None
                    }
                    End::Missing(target) => {
                        p.error(
                            &at,
                            format!("same_as refers to {target}, which has no rule in this file"),
                        );
                        None
                    }
                    End::DateShift(target) => {
                        p.error(
                            &at,
                            format!("same_as refers to {target}, a date_shift column; declare date_shift here (with its key and domain) instead"),
                        );
                        None
                    }
                    End::Rule(t) => Some(ColumnRule {
                        transform: t,
                        same_as: Some(first.clone()),
                    }),
                },
            };
            if let Some(mut r) = resolved {
                if let Transform::DateShift { key: k, .. } = &mut r.transform {
                    if k.is_empty() {
                        match key {
                            Some(table_key) => k.clone_from(table_key),
                            None => {
                                p.error(
                                    &at,
                                    "date_shift needs `key = [\"…\"]` here or on the table (the row's key; one offset per key)",
                                );
                                invalid.insert(col.clone());
                                continue;
                            }
                        }
                    }
                }
                columns.insert(col.clone(), r);
            } else {
                invalid.insert(col.clone());
            }
        }
        out.insert(
            table.clone(),
            TableRules {
                mode: t.mode,
                key: key.clone(),
                columns,
                invalid_columns: invalid,
            },
        );
    }
    out
}

/// A date_shift key column must be a column the table has a rule for (it
/// is read from the same record).
fn check_date_shift_keys(tables: &BTreeMap<TableName, TableRules>, p: &mut Problems) {
    for (table, t) in tables {
        for (col, rule) in &t.columns {
            if let Transform::DateShift { key, .. } = &rule.transform {
                for k in key {
                    if !t.columns.contains_key(k) && !t.invalid_columns.contains(k) {
                        p.error(
                            format!("{}.{}.{col}", table.schema, table.table),
                            format!("date_shift key column {k:?} has no rule in this table"),
                        );
                    }
                }
            }
        }
        if let Some(key) = &t.key {
            for k in key {
                if t.mode == Mode::Replicate
                    && !t.columns.contains_key(k)
                    && !t.invalid_columns.contains(k)
                {
                    p.error(
                        format!("{}.{}.key", table.schema, table.table),
                        format!("key column {k:?} has no rule"),
                    );
                }
            }
        }
    }
}

impl Rules {
    pub fn uses_keyed_transforms(&self) -> bool {
        self.tables
            .values()
            .filter(|t| t.mode == Mode::Replicate)
            .flat_map(|t| t.columns.values())
            .any(|c| c.transform.is_keyed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let (rules, problems) = parse(text);
        let errs: Vec<String> = problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| p.to_string())
            .collect();
        assert_eq!(rules.is_some(), errs.is_empty(), "{errs:?}");
        errs
    }

    #[test]
    fn parses_a_complete_file() {
        let text = r##"
unlisted_tables = "exclude"
[tables.users]
key = ["id"]
[tables.users.columns]
id = { transform = "hmac", output = "integer", min = 1, max = 9007199254740991 }
email = { transform = "fake", kind = "email", unique = true }
name = { transform = "fake", kind = "name" }
phone = { transform = "mask", keep_last = 2 }
notes = "null"
secret = "drop"
plan = "keep"
country = { transform = "const", value = "XX" }
born = { transform = "date_shift", max_days = 30 }
code = { transform = "regex_replace", pattern = "[0-9]", replacement = "#" }
profile = { transform = "json", paths = [
  { path = "$.address.street", transform = "fake", kind = "address" },
  { path = "$.contacts[*].email", transform = "hmac" },
] }
[tables."sales.orders"]
[tables."sales.orders".columns]
id = "keep"
user_id = { transform = "same_as", column = "public.users.id" }
[tables.api_keys]
mode = "exclude"
"##;
        let (rules, problems) = parse(text);
        assert!(problems.is_empty(), "{problems:?}");
        let rules = rules.unwrap();
        assert_eq!(rules.unlisted, Unlisted::Exclude);
        assert!(rules.uses_keyed_transforms());
        let users = &rules.tables[&TableName::new("public", "users")];
        assert_eq!(users.columns.len(), 11);
        match &users.columns["born"].transform {
            Transform::DateShift { key, domain, .. } => {
                assert_eq!(key, &vec!["id".to_owned()]);
                assert_eq!(domain, "public.users");
            }
            other => panic!("{other:?}"),
        }
        let orders = &rules.tables[&TableName::new("sales", "orders")];
        let user_id = &orders.columns["user_id"];
        assert!(user_id
            .transform
            .same_outputs_as(&users.columns["id"].transform));
        assert_eq!(user_id.transform.domain(), Some("public.users.id"));
        assert_eq!(
            rules.tables[&TableName::new("public", "api_keys")].mode,
            Mode::Exclude
        );
    }

    #[test]
    fn reports_every_problem_with_its_place() {
        let errs = errors(
            r#"
salt = "abc"
colour = 1
[tables.users.columns]
a = "scramble"
b = { transform = "hmac", output = "integer", length = 8 }
c = { transform = "fake", kind = "pet" }
d = { transform = "mask", keep_frist = 2 }
e = { transform = "hmac", output = "base64" }
f = { transform = "same_as", column = "public.nowhere.id" }
g = { transform = "date_shift" }
h = { transform = "regex_replace", pattern = "(" }
i = { transform = "const" }
j = 5
k = { transform = "json", paths = [{ path = "nope", transform = "null" }] }
l = { transform = "hmac", min = 5 }
[tables.orders]
mode = "copy"
"#,
        );
        let expect = [
            "salt: the key never belongs in the rules file",
            "colour: unknown top-level key",
            "public.users.a: unknown transform \"scramble\"",
            "public.users.b: length applies to output = \"hex\" only",
            "public.users.c: unknown fake kind \"pet\"",
            "public.users.d: unknown parameter \"keep_frist\" for transform mask",
            "public.users.e: unknown hmac output \"base64\"",
            "public.users.f: same_as refers to public.nowhere.id",
            "public.users.g: date_shift needs `key",
            "public.users.h: invalid pattern",
            "public.users.i: const needs `value`",
            "public.users.j: a rule is a transform name",
            "public.users.k.paths[0]: JSON path \"nope\" must start with `$`",
            "public.users.l: min and max apply to output = \"integer\" only",
            "public.orders.mode: must be \"replicate\" or \"exclude\"",
            "public.orders: a replicated table needs a [columns] table",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|x| x.contains(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
        assert!(errors("not = [valid")
            .iter()
            .any(|e| e.contains("not valid TOML")));
    }

    #[test]
    fn same_as_cycles_are_errors() {
        let errs = errors(
            r#"
[tables.a.columns]
x = { transform = "same_as", column = "b.y" }
[tables.b.columns]
y = { transform = "same_as", column = "a.x" }
"#,
        );
        assert!(errs.iter().any(|e| e.contains("loops")), "{errs:?}");
    }

    /// Issue 21: chains resolved once per column took quadratic time (8,000
    /// links: 12 s). Each link's end is now remembered.
    #[test]
    fn long_same_as_chains_resolve_in_linear_time() {
        let n = 8_000;
        let mut text = String::from("[tables.t.columns]\nc0 = \"keep\"\n");
        for i in 1..n {
            text.push_str(&format!(
                "c{i} = {{ transform = \"same_as\", column = \"t.c{}\" }}\n",
                i - 1
            ));
        }
        let started = std::time::Instant::now();
        let (rules, problems) = parse(&text);
        let took = started.elapsed();
        assert!(problems.is_empty(), "{problems:?}");
        let t = &rules.unwrap().tables[&TableName::new("public", "t")];
        assert_eq!(t.columns.len(), n);
        assert!(matches!(t.columns["c7999"].transform, Transform::Keep));
        assert_eq!(t.columns["c7999"].same_as.as_ref().unwrap().column, "c7998");
        // Generous for a debug build on a shared machine (was 12 s).
        assert!(took.as_secs() < 5, "{took:?}");

        // A long chain into a loop, and one into nothing: every link says so.
        let mut text = String::from("[tables.t.columns]\n");
        for i in 0..2_000 {
            text.push_str(&format!(
                "c{i} = {{ transform = \"same_as\", column = \"t.c{}\" }}\n",
                (i + 1) % 2_000
            ));
            text.push_str(&format!(
                "d{i} = {{ transform = \"same_as\", column = \"t.d{}\" }}\n",
                i + 1
            ));
        }
        let errs = errors(&text);
        assert_eq!(errs.len(), 4_000);
        assert_eq!(
            errs.iter().filter(|e| e.contains("loops at")).count(),
            2_000
        );
        assert_eq!(
            errs.iter()
                .filter(|e| e.contains("refers to public.t.d2000, which has no rule"))
                .count(),
            2_000
        );
    }

    #[test]
    fn injectivity_measure() {
        let t = |s: &str| {
            let (r, p) = parse(&format!("[tables.t.columns]\nc = {s}\n"));
            assert!(p.is_empty(), "{p:?}");
            r.unwrap().tables[&TableName::new("public", "t")].columns["c"]
                .transform
                .clone()
        };
        assert_eq!(t("\"keep\"").output_bits(), None);
        assert_eq!(t("{ transform = \"hmac\" }").output_bits(), Some(128.0));
        assert_eq!(t("\"null\"").output_bits(), Some(0.0));
        let small = t("{ transform = \"hmac\", output = \"integer\", min = 1, max = 1000 }");
        assert!(small.output_bits().unwrap() < 10.0);
        assert_eq!(
            t("{ transform = \"fake\", kind = \"email\", unique = true }").output_bits(),
            Some(64.0)
        );
    }
}
