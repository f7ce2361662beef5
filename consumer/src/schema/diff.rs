//! The differences between a table's definition in the stream and the
//! local table, each with the SQL that removes it and its class (pure; no
//! I/O). See `docs/schema.md` for the policy built on the classes.

use serde::Serialize;
use syncdata_core::table::quote_ident;
use syncdata_core::tabledef::{ColumnDef, TableDef};

/// What may be done about a difference without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Additive: the local table takes everything it took before and what
    /// the new definition sends (new column, widened type, new default,
    /// dropped NOT NULL, a missing table). Applied by the worker in version
    /// order; `schema migrate` prints it without `--allow-destructive`.
    Safe,
    /// The local table cannot follow without losing or reinterpreting data
    /// (a dropped or renamed column, a narrowed type, a new primary key):
    /// the table halts until the local table matches.
    Destructive,
    /// A tighter local constraint (NOT NULL, unique, foreign key) that may
    /// fail on the local rows, or a local-only constraint: never applied
    /// automatically and never halting (the local table takes the data as
    /// it is); `schema migrate --allow-destructive` applies it.
    Manual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Stream side vs local side, for people.
    pub detail: String,
    pub class: Class,
    /// One statement that removes the difference.
    pub sql: String,
}

/// A default that refers to a local object the copy does not have (a
/// sequence): not carried over, and not compared.
fn portable_default(c: &ColumnDef) -> Option<&str> {
    c.default.as_deref().filter(|d| !d.contains("nextval("))
}

/// `CREATE TABLE` for `def` (columns, NOT NULL, portable defaults, primary
/// key, unique constraints; foreign keys are separate differences).
pub fn create_table_sql(def: &TableDef) -> String {
    let mut parts: Vec<String> = def.columns.iter().map(column_sql).collect();
    if !def.primary_key.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", idents(&def.primary_key)));
    }
    for u in &def.unique {
        parts.push(format!("UNIQUE ({})", idents(&u.columns)));
    }
    format!(
        "CREATE TABLE {}.{} ({})",
        quote_ident(&def.schema),
        quote_ident(&def.table),
        parts.join(", ")
    )
}

fn column_sql(c: &ColumnDef) -> String {
    let mut s = format!("{} {}", quote_ident(&c.name), c.type_name);
    if let Some(d) = portable_default(c) {
        s.push_str(&format!(" DEFAULT {d}"));
    }
    if c.not_null {
        s.push_str(" NOT NULL");
    }
    s
}

fn idents(cols: &[String]) -> String {
    cols.iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every difference between the stream's definition and the local table
/// (None: the table does not exist locally), in the order to apply them.
pub fn diff(stream: &TableDef, local: Option<&TableDef>) -> Vec<Difference> {
    let table = format!(
        "{}.{}",
        quote_ident(&stream.schema),
        quote_ident(&stream.table)
    );
    let alter = |rest: String| format!("ALTER TABLE {table} {rest}");
    let mut out = Vec::new();
    let Some(local) = local else {
        out.push(Difference {
            kind: "missing_table",
            column: None,
            detail: format!(
                "{} columns in the stream; no local table",
                stream.columns.len()
            ),
            class: Class::Safe,
            sql: create_table_sql(stream),
        });
        for fk in &stream.foreign_keys {
            out.push(add_fk(&alter, fk));
        }
        return out;
    };

    let added: Vec<&ColumnDef> = stream
        .columns
        .iter()
        .filter(|c| local.column(&c.name).is_none())
        .collect();
    let removed: Vec<&ColumnDef> = local
        .columns
        .iter()
        .filter(|c| stream.column(&c.name).is_none())
        .collect();
    // One column gone and one of the same type come: a rename (ambiguous,
    // so it halts either way; the SQL keeps the column's data).
    let renamed =
        (added.len() == 1 && removed.len() == 1 && added[0].type_name == removed[0].type_name)
            .then(|| (removed[0], added[0]));
    if let Some((from, to)) = renamed {
        out.push(Difference {
            kind: "rename_column",
            column: Some(to.name.clone()),
            detail: format!("local {:?} is {:?} in the stream", from.name, to.name),
            class: Class::Destructive,
            sql: alter(format!(
                "RENAME COLUMN {} TO {}",
                quote_ident(&from.name),
                quote_ident(&to.name)
            )),
        });
    } else {
        for c in &added {
            let mut s = format!("ADD COLUMN {} {}", quote_ident(&c.name), c.type_name);
            if let Some(d) = portable_default(c) {
                s.push_str(&format!(" DEFAULT {d}"));
                if c.not_null {
                    s.push_str(" NOT NULL");
                }
            }
            out.push(Difference {
                kind: "add_column",
                column: Some(c.name.clone()),
                detail: format!(
                    "{} {}{}{} in the stream; not local",
                    c.name,
                    c.type_name,
                    if c.not_null { " not null" } else { "" },
                    portable_default(c)
                        .map(|d| format!(" default {d}"))
                        .unwrap_or_default()
                ),
                class: Class::Safe,
                sql: alter(s),
            });
        }
        for c in &removed {
            out.push(Difference {
                kind: "drop_column",
                column: Some(c.name.clone()),
                detail: format!(
                    "local column {} {} is gone from the stream",
                    c.name, c.type_name
                ),
                class: Class::Destructive,
                sql: alter(format!("DROP COLUMN {}", quote_ident(&c.name))),
            });
        }
    }

    for s in &stream.columns {
        let Some(l) = local.column(&s.name) else {
            continue;
        };
        let col = || Some(s.name.clone());
        if s.type_name != l.type_name {
            let widening = widens(&l.type_name, &s.type_name);
            let using = if widening {
                String::new()
            } else {
                format!(" USING {}::{}", quote_ident(&s.name), s.type_name)
            };
            out.push(Difference {
                kind: if widening {
                    "widen_type"
                } else {
                    "narrow_type"
                },
                column: col(),
                detail: format!("{} in the stream, {} local", s.type_name, l.type_name),
                class: if widening {
                    Class::Safe
                } else {
                    Class::Destructive
                },
                sql: alter(format!(
                    "ALTER COLUMN {} TYPE {}{using}",
                    quote_ident(&s.name),
                    s.type_name
                )),
            });
        }
        if s.not_null != l.not_null {
            let (kind, class, verb) = if s.not_null {
                ("set_not_null", Class::Manual, "SET")
            } else {
                ("drop_not_null", Class::Safe, "DROP")
            };
            out.push(Difference {
                kind,
                column: col(),
                detail: format!(
                    "{} in the stream, {} local",
                    if s.not_null { "not null" } else { "nullable" },
                    if l.not_null { "not null" } else { "nullable" }
                ),
                class,
                sql: alter(format!(
                    "ALTER COLUMN {} {verb} NOT NULL",
                    quote_ident(&s.name)
                )),
            });
        }
        let (sd, ld) = (portable_default(s), portable_default(l));
        // A type change rewrites the default's cast: compared after it.
        if sd != ld && !(s.type_name != l.type_name && sd.is_some() && ld.is_some()) {
            out.push(match sd {
                Some(d) => Difference {
                    kind: "set_default",
                    column: col(),
                    detail: format!("default {d} in the stream, {} local", ld.unwrap_or("none")),
                    class: Class::Safe,
                    sql: alter(format!(
                        "ALTER COLUMN {} SET DEFAULT {d}",
                        quote_ident(&s.name)
                    )),
                },
                None => Difference {
                    kind: "drop_default",
                    column: col(),
                    detail: format!("no default in the stream, {} local", ld.unwrap_or("none")),
                    class: Class::Safe,
                    sql: alter(format!(
                        "ALTER COLUMN {} DROP DEFAULT",
                        quote_ident(&s.name)
                    )),
                },
            });
        }
    }

    if stream.primary_key != local.primary_key {
        let drop = local
            .primary_key_name
            .as_deref()
            .map(|n| format!("DROP CONSTRAINT {}, ", quote_ident(n)))
            .unwrap_or_default();
        out.push(Difference {
            kind: "primary_key",
            column: None,
            detail: format!(
                "({}) in the stream, ({}) local",
                stream.primary_key.join(", "),
                local.primary_key.join(", ")
            ),
            class: Class::Destructive,
            sql: alter(format!(
                "{drop}ADD PRIMARY KEY ({})",
                idents(&stream.primary_key)
            )),
        });
    }

    for u in &stream.unique {
        if !local.unique.iter().any(|l| l.columns == u.columns) {
            out.push(Difference {
                kind: "add_unique",
                column: None,
                detail: format!("unique ({}) in the stream; not local", u.columns.join(", ")),
                class: Class::Manual,
                sql: alter(format!("ADD UNIQUE ({})", idents(&u.columns))),
            });
        }
    }
    for l in &local.unique {
        if !stream.unique.iter().any(|u| u.columns == l.columns) {
            out.push(Difference {
                kind: "drop_unique",
                column: None,
                detail: format!(
                    "local unique {} ({}) is not in the stream",
                    l.name,
                    l.columns.join(", ")
                ),
                class: Class::Manual,
                sql: alter(format!(
                    "DROP CONSTRAINT IF EXISTS {}",
                    quote_ident(&l.name)
                )),
            });
        }
    }
    let same_fk = |a: &syncdata_core::tabledef::ForeignKey,
                   b: &syncdata_core::tabledef::ForeignKey| {
        a.columns == b.columns
            && a.ref_schema == b.ref_schema
            && a.ref_table == b.ref_table
            && a.ref_columns == b.ref_columns
    };
    for fk in &stream.foreign_keys {
        if !local.foreign_keys.iter().any(|l| same_fk(l, fk)) {
            out.push(add_fk(&alter, fk));
        }
    }
    for l in &local.foreign_keys {
        if !stream.foreign_keys.iter().any(|s| same_fk(s, l)) {
            out.push(Difference {
                kind: "drop_foreign_key",
                column: None,
                detail: format!(
                    "local foreign key {} ({}) is not in the stream",
                    l.name,
                    l.columns.join(", ")
                ),
                class: Class::Manual,
                sql: alter(format!(
                    "DROP CONSTRAINT IF EXISTS {}",
                    quote_ident(&l.name)
                )),
            });
        }
    }
    out
}

fn add_fk(
    alter: &dyn Fn(String) -> String,
    fk: &syncdata_core::tabledef::ForeignKey,
) -> Difference {
    Difference {
        kind: "add_foreign_key",
        column: None,
        detail: format!(
            "foreign key ({}) -> {}.{} ({}) in the stream; not local",
            fk.columns.join(", "),
            fk.ref_schema,
            fk.ref_table,
            fk.ref_columns.join(", ")
        ),
        class: Class::Manual,
        sql: alter(format!(
            "ADD FOREIGN KEY ({}) REFERENCES {}.{} ({})",
            idents(&fk.columns),
            quote_ident(&fk.ref_schema),
            quote_ident(&fk.ref_table),
            idents(&fk.ref_columns)
        )),
    }
}

/// `base(args)` and the array depth of a `format_type` text.
fn parse_type(t: &str) -> (String, Vec<u32>, usize) {
    let mut s = t.trim();
    let mut dims = 0;
    while let Some(rest) = s.strip_suffix("[]") {
        s = rest;
        dims += 1;
    }
    // `timestamp(3) without time zone`: the modifier sits inside.
    let (base, args) = match (s.find('('), s.find(')')) {
        (Some(open), Some(close)) if close > open => {
            let args = s[open + 1..close]
                .split(',')
                .filter_map(|a| a.trim().parse().ok())
                .collect();
            (format!("{}{}", &s[..open], &s[close + 1..]), args)
        }
        _ => (s.to_owned(), Vec::new()),
    };
    (base.trim().to_owned(), args, dims)
}

/// Whether every value of type `from` is a value of type `to` with the
/// same meaning (so `ALTER COLUMN … TYPE to` loses nothing).
pub fn widens(from: &str, to: &str) -> bool {
    let (fb, fa, fd) = parse_type(from);
    let (tb, ta, td) = parse_type(to);
    if fd != td {
        return false;
    }
    let ints = ["smallint", "integer", "bigint"];
    let rank = |b: &str| ints.iter().position(|i| *i == b);
    let texts = ["character varying", "character", "text"];
    match (fb.as_str(), tb.as_str()) {
        (f, t) if f == t => match (fa.as_slice(), ta.as_slice()) {
            (_, []) => true,
            ([], _) => false,
            ([n], [m]) => m >= n,
            ([p, s], [p2, s2]) if f == "numeric" => s2 >= s && p2 - s2 >= p - s,
            ([p], [p2, s2]) if f == "numeric" => p2 - s2 >= *p,
            _ => false,
        },
        (f, t) if rank(f).is_some() && rank(t).is_some() => rank(t) >= rank(f),
        (f, "numeric") if rank(f).is_some() => {
            let digits = [5, 10, 19][rank(f).expect("checked")];
            match ta.as_slice() {
                [] => true,
                [p] => *p >= digits,
                [p, s] => p - s >= digits,
                _ => false,
            }
        }
        ("real", "double precision") => true,
        ("character varying", "text") => true,
        (f, "character varying") if texts.contains(&f) && f != "character" => ta.is_empty(),
        ("timestamp without time zone", "timestamp without time zone")
        | ("time without time zone", "time without time zone") => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_told_from_narrowing() {
        for (a, b) in [
            ("character varying(10)", "character varying(20)"),
            ("character varying(10)", "character varying"),
            ("character varying(10)", "text"),
            ("integer", "bigint"),
            ("smallint", "numeric"),
            ("numeric(10,2)", "numeric(12,2)"),
            ("numeric(10,2)", "numeric(12,4)"),
            ("numeric(10,2)", "numeric"),
            ("real", "double precision"),
            ("integer[]", "bigint[]"),
            (
                "timestamp(3) without time zone",
                "timestamp(6) without time zone",
            ),
        ] {
            assert!(widens(a, b), "{a} -> {b} widens");
        }
        for (a, b) in [
            ("character varying(20)", "character varying(10)"),
            ("text", "character varying(10)"),
            ("bigint", "integer"),
            ("numeric(12,2)", "numeric(12,4)"),
            ("numeric", "numeric(10,2)"),
            ("double precision", "real"),
            ("integer", "text"),
            ("integer[]", "integer"),
            ("timestamp without time zone", "timestamp with time zone"),
        ] {
            assert!(!widens(a, b), "{a} -> {b} does not widen");
        }
    }
}
