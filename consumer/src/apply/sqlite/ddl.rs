//! Local tables from production's definitions: a PostgreSQL DDL file
//! (`pg_dump --schema-only`, or hand-written `CREATE TABLE`s) read for its
//! tables, enums and domains, and turned into SQLite tables under the type
//! mapping of [`super::values`]. Only what the mapping needs is read: column
//! names and types, and the primary key (inline, as a table constraint, or
//! `ALTER TABLE … ADD CONSTRAINT … PRIMARY KEY`). Defaults, checks, foreign
//! keys and indexes are left out: the rows come from production, which
//! enforced them.

use std::collections::HashMap;

use super::values;

/// A table read from the DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTable {
    /// `schema.table` with schema `public` when unqualified.
    pub schema: String,
    pub name: String,
    /// (column, PostgreSQL type with enums and domains resolved to their base).
    pub columns: Vec<(String, String)>,
    pub primary_key: Vec<String>,
}

impl PgTable {
    /// The SQLite `CREATE TABLE` for it, named `local`.
    pub fn create_sql(&self, local: &str) -> String {
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|(c, t)| {
                format!(
                    "{} {}",
                    super::quote(c),
                    values::sqlite_type(values::kind_of(t))
                )
            })
            .collect();
        let pk: Vec<String> = self.primary_key.iter().map(|c| super::quote(c)).collect();
        parts.push(format!("primary key ({})", pk.join(", ")));
        format!(
            "create table if not exists {} ({})",
            super::quote(local),
            parts.join(", ")
        )
    }
}

/// Statements of a DDL text, comments removed, split on `;` outside quotes,
/// parentheses and dollar quotes.
fn statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let b: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut depth = 0i32;
    while i < b.len() {
        let c = b[i];
        if c == '-' && b.get(i + 1) == Some(&'-') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && b.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
            cur.push(' ');
            continue;
        }
        if c == '\'' || c == '"' {
            cur.push(c);
            i += 1;
            while i < b.len() {
                cur.push(b[i]);
                if b[i] == c {
                    if b.get(i + 1) == Some(&c) {
                        cur.push(c);
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if c == '$' {
            // $tag$ … $tag$
            if let Some(end) = b[i + 1..].iter().position(|&x| x == '$') {
                let tag: String = b[i..i + end + 2].iter().collect();
                if tag[1..tag.len() - 1]
                    .chars()
                    .all(|x| x.is_alphanumeric() || x == '_')
                {
                    let rest: String = b[i + tag.len()..].iter().collect();
                    if let Some(close) = rest.find(&tag) {
                        cur.push_str(" '' ");
                        i += tag.len() + rest[..close].chars().count() + tag.len();
                        continue;
                    }
                }
            }
        }
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ';' if depth <= 0 => {
                out.push(std::mem::take(&mut cur));
                i += 1;
                continue;
            }
            _ => {}
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Words, quoted identifiers, and single punctuation characters.
fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            let mut t = String::from(c);
            i += 1;
            while i < b.len() {
                t.push(b[i]);
                if b[i] == c {
                    if b.get(i + 1) == Some(&c) {
                        t.push(c);
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            out.push(t);
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let mut t = String::new();
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                t.push(b[i]);
                i += 1;
            }
            out.push(t);
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// An identifier token as a name: quoted kept as written, bare lowercased.
fn ident(t: &str) -> String {
    match t.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => t.to_ascii_lowercase(),
    }
}

fn is(t: Option<&String>, word: &str) -> bool {
    t.is_some_and(|t| t.eq_ignore_ascii_case(word))
}

/// A possibly qualified name at `toks[*i..]`: (schema, name).
fn qualified(toks: &[String], i: &mut usize) -> Option<(String, String)> {
    let first = ident(toks.get(*i)?);
    *i += 1;
    if toks.get(*i).map(String::as_str) == Some(".") {
        let second = ident(toks.get(*i + 1)?);
        *i += 2;
        Some((first, second))
    } else {
        Some(("public".to_owned(), first))
    }
}

/// The comma-separated items at top level of the parenthesized list that
/// starts at `toks[*i]` (an opening parenthesis).
fn paren_items(toks: &[String], i: &mut usize) -> Option<Vec<Vec<String>>> {
    if toks.get(*i)? != "(" {
        return None;
    }
    *i += 1;
    let mut items = vec![Vec::new()];
    let mut depth = 0;
    while let Some(t) = toks.get(*i) {
        *i += 1;
        match t.as_str() {
            "(" => depth += 1,
            ")" if depth == 0 => return Some(items),
            ")" => depth -= 1,
            "," if depth == 0 => {
                items.push(Vec::new());
                continue;
            }
            _ => {}
        }
        items.last_mut()?.push(t.clone());
    }
    None
}

fn name_list(item: &[String]) -> Vec<String> {
    item.iter()
        .filter(|t| !matches!(t.as_str(), "(" | ")" | ","))
        .map(|t| ident(t))
        .collect()
}

const COLUMN_STOP: &[&str] = &[
    "not",
    "null",
    "default",
    "primary",
    "unique",
    "references",
    "check",
    "constraint",
    "collate",
    "generated",
];

/// Reads the tables of a PostgreSQL DDL text.
pub fn parse(text: &str) -> Result<Vec<PgTable>, String> {
    let mut enums: Vec<String> = Vec::new();
    let mut domains: HashMap<String, String> = HashMap::new();
    let mut tables: Vec<PgTable> = Vec::new();
    let mut alter_pks: Vec<((String, String), Vec<String>)> = Vec::new();
    for stmt in statements(text) {
        let toks = tokens(&stmt);
        let w = |i: usize| {
            toks.get(i)
                .map(|t| t.to_ascii_lowercase())
                .unwrap_or_default()
        };
        if w(0) == "create" && w(1) == "type" {
            let mut i = 2;
            if let Some((_, name)) = qualified(&toks, &mut i) {
                if is(toks.get(i), "as") && is(toks.get(i + 1), "enum") {
                    enums.push(name);
                }
            }
        } else if w(0) == "create" && w(1) == "domain" {
            let mut i = 2;
            if let Some((_, name)) = qualified(&toks, &mut i) {
                if is(toks.get(i), "as") {
                    i += 1;
                }
                let base = type_tokens(&toks[i.min(toks.len())..]);
                domains.insert(name, base);
            }
        } else if w(0) == "create"
            && (w(1) == "table"
                || (w(2) == "table" && matches!(w(1).as_str(), "unlogged" | "temporary" | "temp")))
        {
            let mut i = if w(1) == "table" { 2 } else { 3 };
            if w(i) == "if" {
                i += 3; // if not exists
            }
            let (schema, name) = qualified(&toks, &mut i).ok_or("CREATE TABLE without a name")?;
            let Some(items) = paren_items(&toks, &mut i) else {
                continue; // CREATE TABLE … AS / PARTITION OF: not read
            };
            let mut table = PgTable {
                schema,
                name,
                columns: Vec::new(),
                primary_key: Vec::new(),
            };
            for item in items {
                let mut j = 0;
                if is(item.first(), "constraint") {
                    j = 2;
                }
                match item.get(j).map(|t| t.to_ascii_lowercase()).as_deref() {
                    Some("primary") => {
                        table.primary_key = name_list(&item[j + 2..]);
                    }
                    Some("unique" | "check" | "foreign" | "exclude" | "like") | None => {}
                    Some(_) => {
                        let col = ident(&item[0]);
                        let ty = type_tokens(&item[1..]);
                        let rest: Vec<String> =
                            item.iter().map(|t| t.to_ascii_lowercase()).collect();
                        if rest.windows(2).any(|w| w[0] == "primary" && w[1] == "key") {
                            table.primary_key = vec![col.clone()];
                        }
                        table.columns.push((col, ty));
                    }
                }
            }
            tables.push(table);
        } else if w(0) == "alter" && w(1) == "table" {
            let mut i = 2;
            if w(i) == "only" {
                i += 1;
            }
            if w(i) == "if" {
                i += 2;
            }
            let Some(name) = qualified(&toks, &mut i) else {
                continue;
            };
            let lower: Vec<String> = toks.iter().map(|t| t.to_ascii_lowercase()).collect();
            if let Some(p) = lower
                .windows(2)
                .position(|w| w[0] == "primary" && w[1] == "key")
            {
                alter_pks.push((name, name_list(&toks[p + 2..])));
            }
        }
    }
    for ((schema, name), pk) in alter_pks {
        if let Some(t) = tables
            .iter_mut()
            .find(|t| t.schema == schema && t.name == name)
        {
            t.primary_key = pk;
        }
    }
    // Enums and domains become their base type.
    for t in &mut tables {
        for (_, ty) in &mut t.columns {
            let (base, array) = match ty.strip_suffix("[]") {
                Some(b) => (b.to_owned(), true),
                None => (ty.clone(), false),
            };
            let plain = base
                .rsplit('.')
                .next()
                .unwrap_or(&base)
                .trim_matches('"')
                .to_owned();
            let resolved = if enums.contains(&plain) {
                "text".to_owned()
            } else if let Some(d) = domains.get(&plain) {
                d.clone()
            } else {
                base
            };
            *ty = if array && !resolved.ends_with("[]") {
                format!("{resolved}[]")
            } else {
                resolved
            };
        }
    }
    Ok(tables)
}

/// The type at the start of a column definition's tokens, normalized.
fn type_tokens(toks: &[String]) -> String {
    let mut words = Vec::new();
    let mut depth = 0;
    for t in toks {
        let lower = t.to_ascii_lowercase();
        if depth == 0 && COLUMN_STOP.contains(&lower.as_str()) {
            break;
        }
        match t.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            _ => {}
        }
        words.push(if t.starts_with('"') { ident(t) } else { lower });
    }
    let joined = words
        .join(" ")
        .replace(" . ", ".")
        .replace("[ ]", "[]")
        .replace(" [", "[");
    values::normalize_type(&joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tables_enums_domains_and_keys() {
        let ddl = r#"
            -- a comment; with a semicolon
            CREATE TYPE public.mood AS ENUM ('sad', 'ok');
            CREATE DOMAIN money_amount AS numeric(30,9) CHECK (VALUE >= 0);
            CREATE TABLE "public"."orders" (
                "id" bigint NOT NULL,
                amount money_amount,
                tags text[] DEFAULT '{}'::text[],
                feeling mood,
                meta jsonb,
                created_at timestamp(3) with time zone DEFAULT now(),
                CONSTRAINT orders_amount CHECK (amount > 0)
            );
            ALTER TABLE ONLY public.orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id);
            CREATE TABLE lines (order_id bigint, line int, sku varchar(20), PRIMARY KEY (order_id, line));
            CREATE FUNCTION f() RETURNS int AS $$ select 1; $$ LANGUAGE sql;
        "#;
        let t = parse(ddl).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "orders");
        assert_eq!(t[0].primary_key, vec!["id"]);
        assert_eq!(
            t[0].columns,
            vec![
                ("id".into(), "bigint".into()),
                ("amount".into(), "numeric".into()),
                ("tags".into(), "text[]".into()),
                ("feeling".into(), "text".into()),
                ("meta".into(), "jsonb".into()),
                ("created_at".into(), "timestamp with time zone".into()),
            ]
        );
        assert_eq!(t[1].primary_key, vec!["order_id", "line"]);
        assert_eq!(t[1].columns[2].1, "varchar");
        assert!(t[0].create_sql("orders").contains("\"amount\" TEXT"));
    }
}
