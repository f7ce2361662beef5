//! Synthetic change histories for the demo, tests and benchmarks, and an
//! in-order reference applier that gives the expected final state.
//!
//! * [`DEMO_DDL`] is a small but realistic schema: `customers` (with a large,
//!   TOAST-able `bio`), `orders` (huge `numeric`, large `note`, `text[]`,
//!   `jsonb`) and `order_lines` (composite primary key). No foreign keys, so
//!   changes may be applied in any order.
//! * [`generate`] writes a deterministic history over those tables exactly as
//!   our archiver would: every transaction has a strictly increasing commit
//!   LSN, every change its ordinal `seq`; UPDATEs may omit an unchanged large
//!   column (as wal2json does for unchanged TOASTed values), may change the
//!   primary key, and one TRUNCATE can sit in the middle of the history.
//! * [`apply_in_order`] is the oracle: it applies records one by one, in the
//!   order given, with plain SQL and no cleverness at all. Whatever a real
//!   consumer does (batches, parallelism, reordering) must end in the state
//!   this function produces, which [`table_fingerprint`] summarises.
//! * [`write_archive`] lays a history out as JSON-lines change files.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::hash::Hash;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use syncdata_core::record::{Columns, Op, Record, Value};
use syncdata_core::version::Lsn;

/// The demo schema (in `public`). Run it with `sqlx::raw_sql(DEMO_DDL)`.
pub const DEMO_DDL: &str = r#"
CREATE TABLE "public"."customers" (
    "id"         bigint PRIMARY KEY,
    "email"      text NOT NULL,
    "name"       text,
    "bio"        text,
    "balance"    numeric(20,6),
    "updated_at" timestamptz
);
CREATE TABLE "public"."orders" (
    "id"          bigint PRIMARY KEY,
    "customer_id" bigint,
    "amount"      numeric(30,9),
    "status"      text,
    "note"        text,
    "tags"        text[],
    "meta"        jsonb,
    "created_at"  timestamptz
);
CREATE TABLE "public"."order_lines" (
    "order_id" bigint,
    "line"     integer,
    "sku"      text,
    "qty"      integer,
    "price"    numeric(12,2),
    PRIMARY KEY ("order_id", "line")
);
"#;

/// The tables [`DEMO_DDL`] creates, all in schema `public`.
pub fn demo_tables() -> Vec<&'static str> {
    vec!["customers", "orders", "order_lines"]
}

/// What [`generate`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Same seed, same history, byte for byte.
    pub seed: u64,
    /// Number of records (TRUNCATE included).
    pub changes: usize,
    /// One TRUNCATE of one table at about 60% of the history.
    pub truncate: bool,
    /// UPDATEs that leave out the unchanged large column (`bio`, `note`).
    pub partial_updates: bool,
    /// UPDATEs that change the primary key (full new row in `data`).
    pub key_changes: bool,
}

impl WorkloadSpec {
    /// Everything on: the history the demo uses.
    pub fn full(seed: u64, changes: usize) -> Self {
        WorkloadSpec {
            seed,
            changes,
            truncate: true,
            partial_updates: true,
            key_changes: true,
        }
    }
}

/// A deterministic, realistic history over the [`DEMO_DDL`] tables.
///
/// Transactions hold 1 to 5 changes and share one commit LSN (strictly
/// increasing from one transaction to the next) and one commit timestamp;
/// `seq` numbers the changes inside a transaction from 0. Roughly 35%
/// INSERTs (some re-inserting deleted keys), 25% full UPDATEs, 15% partial
/// UPDATEs, 5% key-changing UPDATEs and 20% DELETEs; disabled kinds become
/// full UPDATEs. UPDATEs and DELETEs only touch rows live at that point.
pub fn generate(spec: &WorkloadSpec) -> Vec<Record> {
    Generator::new(spec).run()
}

// ---------------------------------------------------------------------------
// Generator

const CUSTOMERS: usize = 0;
const ORDERS: usize = 1;
const LINES: usize = 2;
const TABLE_NAMES: [&str; 3] = ["customers", "orders", "order_lines"];
/// The large, TOAST-able column of each table, if any.
const BIG_COLUMN: [Option<&str>; 3] = [Some("bio"), Some("note"), None];

/// 2026-01-05T08:00:00Z in microseconds since the Unix epoch.
const START_MICROS: i64 = 1_767_600_000_000_000;
/// Just below a 4 GiB boundary, so LSNs of a long history change both halves.
const START_LSN: u64 = 0x1_FF00_0000;
/// Size of the random text that large values are cut from.
const TEXT_POOL_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Id(i64),
    Line(i64, i32),
}

/// A set with O(1) insert, remove and uniform random pick, and a
/// deterministic iteration order (no hashing order leaks into the output).
#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    pos: HashMap<Key, usize>,
}

impl KeySet {
    fn insert(&mut self, key: Key) {
        if !self.pos.contains_key(&key) {
            self.pos.insert(key, self.keys.len());
            self.keys.push(key);
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(i) = self.pos.remove(&key) {
            self.keys.swap_remove(i);
            if let Some(moved) = self.keys.get(i) {
                self.pos.insert(*moved, i);
            }
        }
    }

    fn pick(&self, rng: &mut StdRng) -> Option<Key> {
        self.keys.choose(rng).copied()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn take_all(&mut self) -> Vec<Key> {
        self.pos.clear();
        std::mem::take(&mut self.keys)
    }
}

#[derive(Default)]
struct TableState {
    live: KeySet,
    /// Live rows whose large column currently holds a TOASTed value.
    large: KeySet,
    deleted: KeySet,
    next_id: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Insert,
    FullUpdate,
    PartialUpdate,
    KeyChange,
    Delete,
}

struct Generator<'a> {
    spec: &'a WorkloadSpec,
    rng: StdRng,
    tables: [TableState; 3],
    next_line: HashMap<i64, i32>,
    text_pool: String,
    lsn: u64,
    clock: i64,
    out: Vec<Record>,
}

const FIRST_NAMES: &[(&str, &str)] = &[
    ("Ada", "ada"),
    ("Grace", "grace"),
    ("Linus", "linus"),
    ("Zoë", "zoe"),
    ("José", "jose"),
    ("Chloé", "chloe"),
    ("Mateo", "mateo"),
    ("Aiko", "aiko"),
    ("Siobhán", "siobhan"),
    ("Ngozi", "ngozi"),
    ("Björn", "bjorn"),
    ("Priya", "priya"),
    ("Omar", "omar"),
    ("Wei", "wei"),
    ("Olivia", "olivia"),
    ("Noah", "noah"),
];
const LAST_NAMES: &[(&str, &str)] = &[
    ("Lovelace", "lovelace"),
    ("Hopper", "hopper"),
    ("Torvalds", "torvalds"),
    ("O'Brien", "obrien"),
    ("Müller", "mueller"),
    ("García", "garcia"),
    ("Nakamura", "nakamura"),
    ("Okafor", "okafor"),
    ("Kowalski", "kowalski"),
    ("Dubois", "dubois"),
    ("Smith", "smith"),
    ("Zhang", "zhang"),
    ("Johansson", "johansson"),
    ("Patel", "patel"),
];
const DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "mail.example.net",
    "corp.example",
];
const STATUSES: &[&str] = &[
    "pending",
    "paid",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
];
const TAGS: &[&str] = &[
    "gift",
    "express",
    "b2b",
    "fragile",
    "gift wrap",
    "say \"hi\"",
    r"back\slash",
    "a,b",
    "{braces}",
    "NULL",
    "",
    "ünïcödé",
];
const SMALL_TEXTS: &[&str] = &[
    "Prefers email.",
    "Called twice about \"late\" delivery; offered 10% off.",
    "Line one\nLine two\ttabbed",
    r"Path C:\Users\demo\notes.txt",
    "Loves 🚲 and ☕",
    "It's fine — really.",
    "",
    "VIP",
    "{not,an,array}",
    "50% off; code=SPRING",
];
const COLORS: &[&str] = &["RED", "BLU", "GRN", "BLK", "WHT"];

impl<'a> Generator<'a> {
    fn new(spec: &'a WorkloadSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut text_pool = String::with_capacity(TEXT_POOL_BYTES + 16);
        const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        while text_pool.len() < TEXT_POOL_BYTES {
            let word = rng.random_range(2..12);
            for _ in 0..word {
                text_pool.push(ALNUM[rng.random_range(0..ALNUM.len())] as char);
            }
            text_pool.push(if rng.random_bool(0.05) { '\n' } else { ' ' });
        }
        let mut tables: [TableState; 3] = Default::default();
        tables[CUSTOMERS].next_id = 1_000;
        tables[ORDERS].next_id = 500_000;
        tables[LINES].next_id = 0; // unused: lines are numbered per order
        Generator {
            spec,
            rng,
            tables,
            next_line: HashMap::new(),
            text_pool,
            lsn: START_LSN,
            clock: START_MICROS,
            out: Vec::with_capacity(spec.changes),
        }
    }

    fn run(mut self) -> Vec<Record> {
        let total = self.spec.changes;
        let mut truncate_at = (self.spec.truncate && total > 0).then_some(total * 6 / 10);
        while self.out.len() < total {
            self.clock += self.rng.random_range(1_000..250_000);
            self.lsn += self.rng.random_range(0x80..0x6000);
            let lsn = Lsn(self.lsn);
            let ts = rfc3339(self.clock);
            if let Some(at) = truncate_at {
                if self.out.len() >= at {
                    truncate_at = None;
                    let table = self.rng.random_range(0..3);
                    self.truncate(table);
                    self.out.push(Record {
                        schema: "public".to_owned(),
                        table: TABLE_NAMES[table].to_owned(),
                        op: Op::Truncate,
                        data: None,
                        old_keys: None,
                        lsn,
                        seq: Some(0),
                        ts: Some(ts),
                        snapshot: false,
                    });
                    continue;
                }
            }
            let mut n = self.rng.random_range(1..=5).min(total - self.out.len());
            if let Some(at) = truncate_at {
                n = n.min(at - self.out.len());
            }
            for seq in 0..n {
                let (table, op, data, old_keys) = self.change();
                self.out.push(Record {
                    schema: "public".to_owned(),
                    table: TABLE_NAMES[table].to_owned(),
                    op,
                    data,
                    old_keys,
                    lsn,
                    seq: Some(seq as u64),
                    ts: Some(ts.clone()),
                    snapshot: false,
                });
            }
        }
        self.out
    }

    fn truncate(&mut self, table: usize) {
        let t = &mut self.tables[table];
        t.large.take_all();
        for key in t.live.take_all() {
            t.deleted.insert(key);
        }
    }

    fn pick_kind(&mut self) -> Kind {
        let roll = self.rng.random_range(0..100);
        match roll {
            0..35 => Kind::Insert,
            35..60 => Kind::FullUpdate,
            60..75 if self.spec.partial_updates => Kind::PartialUpdate,
            75..80 if self.spec.key_changes => Kind::KeyChange,
            60..80 => Kind::FullUpdate,
            _ => Kind::Delete,
        }
    }

    fn pick_table(&mut self) -> usize {
        match self.rng.random_range(0..10) {
            0..3 => CUSTOMERS,
            3..7 => ORDERS,
            _ => LINES,
        }
    }

    /// One change: (table, op, data, old_keys).
    fn change(&mut self) -> (usize, Op, Option<Columns>, Option<Columns>) {
        let mut kind = self.pick_kind();
        let mut table = self.pick_table();
        if kind == Kind::PartialUpdate {
            // Only rows whose large column is TOASTed lose it from `data`.
            let candidates: Vec<usize> = [CUSTOMERS, ORDERS]
                .into_iter()
                .filter(|&t| !self.tables[t].large.is_empty())
                .collect();
            match candidates.choose(&mut self.rng) {
                Some(&t) => table = t,
                None => kind = Kind::FullUpdate,
            }
        }
        if kind != Kind::Insert && self.tables[table].live.is_empty() {
            kind = Kind::Insert;
        }
        match kind {
            Kind::Insert => {
                let key = self.insert_key(table);
                let (data, large) = self.row(table, key);
                self.add_live(table, key, large);
                (table, Op::Insert, Some(data), None)
            }
            Kind::FullUpdate => {
                let key = self.tables[table].live.pick(&mut self.rng).expect("live");
                let (data, large) = self.row(table, key);
                self.set_large(table, key, large);
                (table, Op::Update, Some(data), Some(key_columns(key)))
            }
            Kind::PartialUpdate => {
                let key = self.tables[table].large.pick(&mut self.rng).expect("large");
                let (mut data, _) = self.row(table, key);
                data.remove(BIG_COLUMN[table].expect("partial updates need a big column"));
                (table, Op::Update, Some(data), Some(key_columns(key)))
            }
            Kind::KeyChange => {
                let old = self.tables[table].live.pick(&mut self.rng).expect("live");
                let new = match old {
                    Key::Id(_) => self.fresh_id(table),
                    Key::Line(order, _) => self.fresh_line(order),
                };
                self.remove_live(table, old);
                let (data, large) = self.row(table, new);
                self.add_live(table, new, large);
                (table, Op::Update, Some(data), Some(key_columns(old)))
            }
            Kind::Delete => {
                let key = self.tables[table].live.pick(&mut self.rng).expect("live");
                self.remove_live(table, key);
                (table, Op::Delete, None, Some(key_columns(key)))
            }
        }
    }

    fn add_live(&mut self, table: usize, key: Key, large: bool) {
        let t = &mut self.tables[table];
        t.deleted.remove(key);
        t.live.insert(key);
        if large {
            t.large.insert(key);
        }
    }

    fn set_large(&mut self, table: usize, key: Key, large: bool) {
        let t = &mut self.tables[table];
        if large {
            t.large.insert(key);
        } else {
            t.large.remove(key);
        }
    }

    fn remove_live(&mut self, table: usize, key: Key) {
        let t = &mut self.tables[table];
        t.live.remove(key);
        t.large.remove(key);
        t.deleted.insert(key);
    }

    fn insert_key(&mut self, table: usize) -> Key {
        if self.rng.random_bool(0.15) {
            if let Some(key) = self.tables[table].deleted.pick(&mut self.rng) {
                return key;
            }
        }
        if table == LINES {
            let order = match self.tables[ORDERS].live.pick(&mut self.rng) {
                Some(Key::Id(id)) if self.rng.random_bool(0.9) => id,
                _ => self
                    .rng
                    .random_range(500_000..self.tables[ORDERS].next_id.max(500_001)),
            };
            self.fresh_line(order)
        } else {
            self.fresh_id(table)
        }
    }

    fn fresh_id(&mut self, table: usize) -> Key {
        let t = &mut self.tables[table];
        // Sequences have gaps (rolled-back transactions, cache).
        t.next_id += if self.rng.random_bool(0.05) { 3 } else { 1 };
        Key::Id(t.next_id)
    }

    fn fresh_line(&mut self, order: i64) -> Key {
        let line = self.next_line.entry(order).or_insert(0);
        *line += 1;
        Key::Line(order, *line)
    }

    /// A full row image for `key`, and whether its large column is TOASTed.
    fn row(&mut self, table: usize, key: Key) -> (Columns, bool) {
        let mut c = Columns::new();
        let mut large = false;
        match (table, key) {
            (CUSTOMERS, Key::Id(id)) => {
                let &(first, first_ascii) = FIRST_NAMES.choose(&mut self.rng).expect("names");
                let &(last, last_ascii) = LAST_NAMES.choose(&mut self.rng).expect("names");
                let domain = DOMAINS.choose(&mut self.rng).expect("domains");
                c.insert("id".into(), number(id.to_string()));
                c.insert(
                    "email".into(),
                    text(&format!("{first_ascii}.{last_ascii}{id}@{domain}")),
                );
                let name = format!("{first} {last}");
                c.insert("name".into(), self.maybe_null(0.05, &name));
                let bio = match self.rng.random_range(0..100) {
                    0..30 => Value::from_text(None),
                    30..75 => text(SMALL_TEXTS.choose(&mut self.rng).expect("texts")),
                    _ => {
                        large = true;
                        self.large_text("customer", id)
                    }
                };
                c.insert("bio".into(), bio);
                let balance = if self.rng.random_bool(0.1) {
                    Value::from_text(None)
                } else {
                    let int: u64 = self.rng.random_range(0..100_000_000_000_000);
                    let frac: u32 = self.rng.random_range(0..1_000_000);
                    let sign = if self.rng.random_bool(0.15) { "-" } else { "" };
                    number(format!("{sign}{int}.{frac:06}"))
                };
                c.insert("balance".into(), balance);
                let updated = pg_timestamptz(self.clock - self.rng.random_range(0..5_000_000));
                c.insert("updated_at".into(), self.maybe_null(0.05, &updated));
            }
            (ORDERS, Key::Id(id)) => {
                c.insert("id".into(), number(id.to_string()));
                let customer = match self.tables[CUSTOMERS].live.pick(&mut self.rng) {
                    Some(Key::Id(cid)) if self.rng.random_bool(0.9) => number(cid.to_string()),
                    _ if self.rng.random_bool(0.5) => Value::from_text(None),
                    _ => number(self.rng.random_range(1_000..100_000i64).to_string()),
                };
                c.insert("customer_id".into(), customer);
                let amount = match self.rng.random_range(0..100) {
                    0..10 => Value::from_text(None),
                    10..60 => {
                        let int: u32 = self.rng.random_range(0..10_000);
                        let frac: u32 = self.rng.random_range(0..1_000_000_000);
                        number(format!("{int}.{frac:09}"))
                    }
                    _ => {
                        // Up to 21 integer digits: beyond f64's 15-17.
                        let hi: u64 = self.rng.random_range(1..1_000_000_000_000);
                        let lo: u64 = self.rng.random_range(0..1_000_000_000);
                        let frac: u32 = self.rng.random_range(0..1_000_000_000);
                        let sign = if self.rng.random_bool(0.1) { "-" } else { "" };
                        number(format!("{sign}{hi}{lo:09}.{frac:09}"))
                    }
                };
                c.insert("amount".into(), amount);
                let status = STATUSES.choose(&mut self.rng).expect("statuses");
                c.insert("status".into(), self.maybe_null(0.03, status));
                let note = match self.rng.random_range(0..100) {
                    0..40 => Value::from_text(None),
                    40..85 => text(SMALL_TEXTS.choose(&mut self.rng).expect("texts")),
                    _ => {
                        large = true;
                        self.large_text("order", id)
                    }
                };
                c.insert("note".into(), note);
                let tags = match self.rng.random_range(0..100) {
                    0..15 => Value::from_text(None),
                    15..25 => text("{}"),
                    _ => {
                        let n = self.rng.random_range(1..=4);
                        let items: Vec<Option<&str>> = (0..n)
                            .map(|_| {
                                if self.rng.random_bool(0.05) {
                                    None
                                } else {
                                    TAGS.choose(&mut self.rng).copied()
                                }
                            })
                            .collect();
                        text(&pg_text_array(&items))
                    }
                };
                c.insert("tags".into(), tags);
                let meta = if self.rng.random_bool(0.2) {
                    Value::from_text(None)
                } else {
                    let source = ["web", "app", "phone", "partner"][self.rng.random_range(0..4)];
                    let items = self.rng.random_range(1..20);
                    let coupon = if self.rng.random_bool(0.3) {
                        format!("\"C{}\"", self.rng.random_range(100..999))
                    } else {
                        "null".to_owned()
                    };
                    text(&format!(
                        r#"{{"source": "{source}", "items": {items}, "coupon": {coupon}, "flags": [true, false]}}"#
                    ))
                };
                c.insert("meta".into(), meta);
                let created = pg_timestamptz(self.clock - self.rng.random_range(0..86_400_000_000));
                c.insert("created_at".into(), text(&created));
            }
            (LINES, Key::Line(order, line)) => {
                c.insert("order_id".into(), number(order.to_string()));
                c.insert("line".into(), number(line.to_string()));
                let sku = format!(
                    "SKU-{:05}-{}",
                    self.rng.random_range(0..100_000),
                    COLORS.choose(&mut self.rng).expect("colors")
                );
                c.insert("sku".into(), text(&sku));
                let qty: i32 = if self.rng.random_bool(0.05) {
                    -self.rng.random_range(1..5) // a return
                } else {
                    self.rng.random_range(1..100)
                };
                c.insert("qty".into(), number(qty.to_string()));
                let price = if self.rng.random_bool(0.05) {
                    Value::from_text(None)
                } else {
                    let int: u32 = self.rng.random_range(0..100_000_000);
                    let cents: u32 = self.rng.random_range(0..100);
                    number(format!("{int}.{cents:02}"))
                };
                c.insert("price".into(), price);
            }
            _ => unreachable!("key kind matches its table"),
        }
        (c, large)
    }

    fn maybe_null(&mut self, p: f64, value: &str) -> Value {
        if self.rng.random_bool(p) {
            Value::from_text(None)
        } else {
            text(value)
        }
    }

    /// 3 to 9 KB of incompressible text (so PostgreSQL stores it out of
    /// line), as a JSON string value.
    fn large_text(&mut self, what: &str, id: i64) -> Value {
        let len = self.rng.random_range(3_000..9_000);
        let start = self.rng.random_range(0..self.text_pool.len() - len);
        // The pool is ASCII letters, digits, spaces and newlines: any byte
        // range is a char boundary, and only the newlines need escaping.
        let body = self.text_pool[start..start + len].replace('\n', "\\n");
        let json = format!("\"[{what} {id} @{}] {body}\"", self.clock);
        serde_json::from_str(&json).expect("escaped text is a JSON string")
    }
}

fn text(s: &str) -> Value {
    Value::from_text(Some(s))
}

/// A bare JSON number with exactly these digits.
fn number(digits: String) -> Value {
    serde_json::from_str(&digits).expect("generated numbers are valid JSON")
}

fn key_columns(key: Key) -> Columns {
    let mut c = Columns::new();
    match key {
        Key::Id(id) => {
            c.insert("id".into(), number(id.to_string()));
        }
        Key::Line(order, line) => {
            c.insert("order_id".into(), number(order.to_string()));
            c.insert("line".into(), number(line.to_string()));
        }
    }
    c
}

/// A PostgreSQL array literal of text elements (None is a NULL element).
fn pg_text_array(items: &[Option<&str>]) -> String {
    let mut s = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match item {
            None => s.push_str("NULL"),
            Some(v) => {
                let plain = !v.is_empty()
                    && !v.eq_ignore_ascii_case("null")
                    && !v
                        .chars()
                        .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
                if plain {
                    s.push_str(v);
                } else {
                    s.push('"');
                    for c in v.chars() {
                        if c == '"' || c == '\\' {
                            s.push('\\');
                        }
                        s.push(c);
                    }
                    s.push('"');
                }
            }
        }
    }
    s.push('}');
    s
}

/// (year, month, day, hour, minute, second, microsecond) in UTC.
fn civil(micros: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = micros.div_euclid(1_000_000);
    let us = micros.rem_euclid(1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    // Days since 1970-01-01 to a proleptic Gregorian date, by 400-year eras
    // starting on March 1st (leap day last).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, sod / 3600, sod / 60 % 60, sod % 60, us)
}

/// `2026-01-05T08:00:00.123456Z`
fn rfc3339(micros: i64) -> String {
    let (y, mo, d, h, mi, s, us) = civil(micros);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
}

/// `2026-01-05 08:00:00.123456+00`, as wal2json prints a timestamptz.
fn pg_timestamptz(micros: i64) -> String {
    let (y, mo, d, h, mi, s, us) = civil(micros);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}+00")
}

// ---------------------------------------------------------------------------
// Reference applier

/// Double-quotes an identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

struct TableMeta {
    qualified: String,
    /// Column name -> `format_type` (e.g. `numeric(30,9)`), in column order.
    columns: Vec<(String, String)>,
    types: HashMap<String, String>,
    /// Primary key columns in key order (empty when the table has none).
    pk: Vec<String>,
}

async fn table_meta(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    table: &str,
) -> Result<TableMeta, sqlx::Error> {
    let name = syncdata_core::table::TableName::new(schema, table);
    let Some(def) = syncdata_core::catalog::table(&mut *conn, &name).await? else {
        return Err(sqlx::Error::InvalidArgument(format!(
            "table {schema}.{table} does not exist"
        )));
    };
    let columns: Vec<(String, String)> = def
        .columns
        .into_iter()
        .map(|c| (c.name, c.sql_type))
        .collect();
    Ok(TableMeta {
        qualified: format!("{}.{}", quote_ident(schema), quote_ident(table)),
        types: columns.iter().cloned().collect(),
        columns,
        pk: def.primary_key,
    })
}

impl TableMeta {
    fn cast(&self, column: &str, param: usize) -> Result<String, sqlx::Error> {
        let ty = self.types.get(column).ok_or_else(|| {
            sqlx::Error::InvalidArgument(format!(
                "column {column:?} does not exist in {}",
                self.qualified
            ))
        })?;
        Ok(format!("${param}::{ty}"))
    }

    fn require_pk(&self) -> Result<(), sqlx::Error> {
        if self.pk.is_empty() {
            return Err(sqlx::Error::InvalidArgument(format!(
                "{} has no primary key",
                self.qualified
            )));
        }
        Ok(())
    }

    /// The primary key of a record: from `old_keys` when it holds the whole
    /// key, otherwise from `data`.
    fn key_of<'r>(&self, record: &'r Record) -> Result<Vec<(&str, &'r Value)>, sqlx::Error> {
        self.require_pk()?;
        let holds_key = |cols: &Option<Columns>| {
            cols.as_ref()
                .is_some_and(|c| self.pk.iter().all(|k| c.contains_key(k)))
        };
        let source = if holds_key(&record.old_keys) {
            record.old_keys.as_ref()
        } else if holds_key(&record.data) {
            record.data.as_ref()
        } else {
            return Err(sqlx::Error::InvalidArgument(format!(
                "{} record at {} carries no complete primary key",
                record.op, record.lsn
            )));
        };
        let source = source.expect("checked above");
        Ok(self.pk.iter().map(|k| (k.as_str(), &source[k])).collect())
    }
}

async fn upsert(
    conn: &mut sqlx::PgConnection,
    meta: &TableMeta,
    data: &Columns,
) -> Result<(), sqlx::Error> {
    meta.require_pk()?;
    let mut names = Vec::with_capacity(data.len());
    let mut values = Vec::with_capacity(data.len());
    for (i, column) in data.keys().enumerate() {
        names.push(quote_ident(column));
        values.push(meta.cast(column, i + 1)?);
    }
    let sets: Vec<String> = data
        .keys()
        .filter(|c| !meta.pk.contains(c))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .collect();
    let conflict = meta
        .pk
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let action = if sets.is_empty() {
        "NOTHING".to_owned()
    } else {
        format!("UPDATE SET {}", sets.join(", "))
    };
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({conflict}) DO {action}",
        meta.qualified,
        names.join(", "),
        values.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for v in data.values() {
        q = q.bind(v.to_pg_text());
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

async fn apply_one(
    conn: &mut sqlx::PgConnection,
    meta: &TableMeta,
    record: &Record,
) -> Result<(), sqlx::Error> {
    match record.op {
        Op::Insert => {
            let data = record.data.as_ref().ok_or_else(|| {
                sqlx::Error::InvalidArgument(format!("INSERT at {} has no data", record.lsn))
            })?;
            upsert(conn, meta, data).await
        }
        Op::Update => {
            let data = record.data.as_ref().ok_or_else(|| {
                sqlx::Error::InvalidArgument(format!("UPDATE at {} has no data", record.lsn))
            })?;
            let key = meta.key_of(record)?;
            let mut sets = Vec::with_capacity(data.len());
            for (i, column) in data.keys().enumerate() {
                sets.push(format!(
                    "{} = {}",
                    quote_ident(column),
                    meta.cast(column, i + 1)?
                ));
            }
            let mut conds = Vec::with_capacity(key.len());
            for (j, (column, _)) in key.iter().enumerate() {
                conds.push(format!(
                    "{} = {}",
                    quote_ident(column),
                    meta.cast(column, data.len() + j + 1)?
                ));
            }
            let sql = format!(
                "UPDATE {} SET {} WHERE {}",
                meta.qualified,
                sets.join(", "),
                conds.join(" AND ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for v in data.values() {
                q = q.bind(v.to_pg_text());
            }
            for (_, v) in &key {
                q = q.bind(v.to_pg_text());
            }
            let matched = q.execute(&mut *conn).await?.rows_affected();
            let full = meta.columns.iter().all(|(c, _)| data.contains_key(c));
            if matched == 0 && full {
                upsert(conn, meta, data).await?;
            }
            Ok(())
        }
        Op::Delete => {
            let key = meta.key_of(record)?;
            let mut conds = Vec::with_capacity(key.len());
            for (j, (column, _)) in key.iter().enumerate() {
                conds.push(format!(
                    "{} = {}",
                    quote_ident(column),
                    meta.cast(column, j + 1)?
                ));
            }
            let sql = format!(
                "DELETE FROM {} WHERE {}",
                meta.qualified,
                conds.join(" AND ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (_, v) in &key {
                q = q.bind(v.to_pg_text());
            }
            q.execute(&mut *conn).await?;
            Ok(())
        }
        Op::Truncate => {
            let sql = format!("TRUNCATE {}", meta.qualified);
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
    }
}

/// The reference applier: every record, one statement at a time, in the
/// order given, in one transaction.
///
/// INSERT is an upsert; UPDATE sets the columns present in `data` on the row
/// named by `old_keys` (or by `data`'s key), and inserts the row when none
/// matched and `data` holds every column; DELETE deletes by key; TRUNCATE
/// truncates. Values are bound as text and cast to the column's catalog type.
pub async fn apply_in_order(pool: &sqlx::PgPool, records: &[Record]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut metas: HashMap<(String, String), TableMeta> = HashMap::new();
    for record in records {
        let id = (record.schema.clone(), record.table.clone());
        if !metas.contains_key(&id) {
            let meta = table_meta(&mut tx, &record.schema, &record.table).await?;
            metas.insert(id.clone(), meta);
        }
        apply_one(&mut tx, &metas[&id], record).await?;
    }
    tx.commit().await
}

/// Row count and an md5 over every row's text form, in primary key order
/// (md5 of the empty string for an empty table).
pub async fn table_fingerprint(
    pool: &sqlx::PgPool,
    schema: &str,
    table: &str,
) -> Result<(i64, String), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let meta = table_meta(&mut conn, schema, table).await?;
    let order = if meta.pk.is_empty() {
        "t::text".to_owned()
    } else {
        meta.pk
            .iter()
            .map(|c| format!("t.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sql = format!(
        "SELECT count(*)::int8, coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {order})), md5('')) \
         FROM {} AS t",
        meta.qualified
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut *conn)
        .await
}

// ---------------------------------------------------------------------------
// Archive files

/// The name of the `n`th archive file (from 1): `changes-000001.jsonl`.
pub fn archive_file_name(n: usize) -> String {
    format!("changes-{n:06}.jsonl")
}

/// Writes `records` as JSON-lines files of `per_file` records each, named
/// `changes-000001.jsonl`, … in `dir` (created if missing). Each file is
/// written under a hidden temporary name (`.changes-000001.jsonl.tmp`),
/// fsynced and renamed, so a reader never sees a partial file.
pub fn write_archive(
    dir: &Path,
    records: &[Record],
    per_file: usize,
) -> std::io::Result<Vec<PathBuf>> {
    let per_file = per_file.max(1);
    fs::create_dir_all(dir)?;
    let mut paths = Vec::new();
    for (i, chunk) in records.chunks(per_file).enumerate() {
        let name = archive_file_name(i + 1);
        let tmp = dir.join(format!(".{name}.tmp"));
        let path = dir.join(&name);
        let mut file = std::io::BufWriter::new(File::create(&tmp)?);
        for record in chunk {
            file.write_all(&record.to_json())?;
            file.write_all(b"\n")?;
        }
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &path)?;
        paths.push(path);
    }
    // Make the renames durable.
    File::open(dir)?.sync_all()?;
    Ok(paths)
}

/// Summary counts of a history, for messages.
pub fn describe(records: &[Record]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        let kind = match r.op {
            Op::Insert => "insert",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Update => {
                let full = r.data.as_ref().is_some_and(|d| {
                    !BIG_COLUMN
                        .iter()
                        .zip(TABLE_NAMES)
                        .any(|(big, t)| t == r.table && big.is_some_and(|b| !d.contains_key(b)))
                });
                let key_change = match (&r.old_keys, &r.data) {
                    (Some(old), Some(data)) => old.iter().any(|(k, v)| data.get(k) != Some(v)),
                    _ => false,
                };
                match (key_change, full) {
                    (true, _) => "update (key change)",
                    (false, true) => "update (full)",
                    (false, false) => "update (partial)",
                }
            }
        };
        *m.entry(kind).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn spec(seed: u64, changes: usize) -> WorkloadSpec {
        WorkloadSpec::full(seed, changes)
    }

    #[test]
    fn same_seed_same_history() {
        let a = generate(&spec(7, 3_000));
        let b = generate(&spec(7, 3_000));
        assert_eq!(a.len(), 3_000);
        assert_eq!(a, b);
        let bytes = |rs: &[Record]| rs.iter().flat_map(|r| r.to_json()).collect::<Vec<u8>>();
        assert_eq!(bytes(&a), bytes(&b));
        let c = generate(&spec(8, 3_000));
        assert_ne!(a, c);
    }

    #[test]
    fn lsns_increase_per_transaction_and_versions_are_unique() {
        let records = generate(&spec(1, 5_000));
        let mut versions = HashSet::new();
        let mut prev: Option<&Record> = None;
        for r in &records {
            let seq = r.seq.expect("every change has an ordinal");
            assert!(
                versions.insert(r.version(0)),
                "duplicate version {}",
                r.version(0)
            );
            assert!(r
                .ts
                .as_deref()
                .is_some_and(|t| t.ends_with('Z') && t.contains('T')));
            match prev {
                Some(p) if p.lsn == r.lsn => {
                    assert_eq!(seq, p.seq.unwrap() + 1, "ordinals count up");
                    assert_eq!(p.ts, r.ts, "one commit time per transaction");
                }
                Some(p) => {
                    assert!(r.lsn > p.lsn, "commit LSNs strictly increase");
                    assert_eq!(seq, 0);
                }
                None => assert_eq!(seq, 0),
            }
            prev = Some(r);
        }
        // Transactions hold 1 to 5 changes.
        let mut sizes: HashMap<Lsn, usize> = HashMap::new();
        for r in &records {
            *sizes.entry(r.lsn).or_default() += 1;
        }
        assert!(sizes.values().all(|&n| (1..=5).contains(&n)));
        assert!(sizes.values().any(|&n| n > 1));
    }

    #[test]
    fn the_mix_has_every_kind_of_change() {
        let records = generate(&spec(3, 20_000));
        let counts = describe(&records);
        let share = |k: &str| counts.get(k).copied().unwrap_or(0) as f64 / records.len() as f64;
        assert!((0.30..0.45).contains(&share("insert")), "{counts:?}");
        assert!((0.15..0.25).contains(&share("delete")), "{counts:?}");
        assert!(share("update (partial)") > 0.08, "{counts:?}");
        assert!(share("update (key change)") > 0.03, "{counts:?}");
        assert!(share("update (full)") > 0.2, "{counts:?}");
        assert_eq!(counts.get("truncate"), Some(&1));
        for t in demo_tables() {
            assert!(records.iter().any(|r| r.table == t), "{t} appears");
        }
        // Some inserts re-insert a key deleted earlier.
        let mut deleted = HashSet::new();
        let mut reinserted = 0;
        for r in &records {
            let key = |c: &Columns| {
                let mut k: Vec<String> = vec![r.table.clone()];
                for col in ["id", "order_id", "line"] {
                    if let Some(v) = c.get(col) {
                        k.push(v.raw().to_owned());
                    }
                }
                k
            };
            match r.op {
                Op::Delete => {
                    deleted.insert(key(r.old_keys.as_ref().unwrap()));
                }
                Op::Insert if deleted.contains(&key(r.data.as_ref().unwrap())) => reinserted += 1,
                _ => {}
            }
        }
        assert!(reinserted > 50, "{reinserted}");
        // Large values of 3 to 9 KB are present.
        let large = records
            .iter()
            .filter_map(|r| r.data.as_ref())
            .flat_map(|d| d.values())
            .filter(|v| v.raw().len() > 3_000)
            .count();
        assert!(large > 500, "{large}");
        assert!(records
            .iter()
            .filter_map(|r| r.data.as_ref())
            .all(|d| d.values().all(|v| v.raw().len() < 10_000)));
    }

    #[test]
    fn partial_updates_lack_the_big_column_and_key_changes_are_full() {
        let records = generate(&spec(11, 10_000));
        let mut partial = 0;
        let mut key_changes = 0;
        for r in records.iter().filter(|r| r.op == Op::Update) {
            let data = r.data.as_ref().unwrap();
            let old = r.old_keys.as_ref().expect("updates carry old_keys");
            let key_changed = old.iter().any(|(k, v)| data.get(k) != Some(v));
            let expected_cols = match r.table.as_str() {
                "customers" => 6,
                "orders" => 8,
                _ => 5,
            };
            if key_changed {
                key_changes += 1;
                assert_eq!(data.len(), expected_cols, "key change carries the full row");
            } else if data.len() < expected_cols {
                partial += 1;
                assert_eq!(data.len(), expected_cols - 1);
                let big = if r.table == "customers" {
                    "bio"
                } else {
                    "note"
                };
                assert!(!data.contains_key(big), "only the big column is left out");
                assert!(data.contains_key("id"));
            }
        }
        assert!(partial > 500, "{partial}");
        assert!(key_changes > 200, "{key_changes}");

        // Switched off, they do not appear.
        let plain = generate(&WorkloadSpec {
            seed: 11,
            changes: 5_000,
            truncate: false,
            partial_updates: false,
            key_changes: false,
        });
        let counts = describe(&plain);
        assert_eq!(counts.get("update (partial)"), None, "{counts:?}");
        assert_eq!(counts.get("update (key change)"), None, "{counts:?}");
        assert_eq!(counts.get("truncate"), None, "{counts:?}");
    }

    #[test]
    fn exactly_one_truncate_near_sixty_percent() {
        for (seed, n) in [(1, 1_000), (2, 20_000), (3, 1), (4, 7)] {
            let records = generate(&spec(seed, n));
            assert_eq!(records.len(), n);
            let at: Vec<usize> = records
                .iter()
                .enumerate()
                .filter(|(_, r)| r.op == Op::Truncate)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(at, vec![n * 6 / 10], "seed {seed}");
            let t = &records[at[0]];
            assert!(t.data.is_none() && t.old_keys.is_none());
        }
        assert!(generate(&spec(1, 0)).is_empty());
    }

    #[test]
    fn updates_and_deletes_target_live_rows() {
        let records = generate(&spec(5, 10_000));
        let mut live: HashSet<(String, Vec<String>)> = HashSet::new();
        let key = |table: &str, c: &Columns| {
            let cols: &[&str] = if table == "order_lines" {
                &["order_id", "line"]
            } else {
                &["id"]
            };
            (
                table.to_owned(),
                cols.iter()
                    .map(|k| c[*k].raw().to_owned())
                    .collect::<Vec<_>>(),
            )
        };
        for r in &records {
            match r.op {
                Op::Insert => {
                    assert!(live.insert(key(&r.table, r.data.as_ref().unwrap())));
                }
                Op::Update => {
                    let old = key(&r.table, r.old_keys.as_ref().unwrap());
                    assert!(live.remove(&old), "update of a live row");
                    assert!(live.insert(key(&r.table, r.data.as_ref().unwrap())));
                }
                Op::Delete => {
                    assert!(live.remove(&key(&r.table, r.old_keys.as_ref().unwrap())));
                }
                Op::Truncate => live.retain(|(t, _)| *t != r.table),
            }
        }
    }

    #[test]
    fn values_have_the_expected_shapes() {
        let records = generate(&spec(9, 5_000));
        let mut saw_big_numeric = false;
        for r in &records {
            let Some(d) = &r.data else { continue };
            for (col, v) in d {
                let raw = v.raw();
                match col.as_str() {
                    "id" | "order_id" | "line" | "qty" | "customer_id" | "amount" | "balance"
                    | "price"
                        if raw != "null" =>
                    {
                        assert!(
                            raw.bytes()
                                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-'),
                            "{col} is a bare number: {raw}"
                        );
                        if col == "amount" && raw.split('.').next().unwrap().len() > 17 {
                            saw_big_numeric = true;
                        }
                    }
                    "updated_at" | "created_at" if raw != "null" => {
                        assert!(raw.ends_with("+00\""), "{raw}");
                    }
                    "tags" if raw != "null" => {
                        let t = v.to_pg_text().unwrap();
                        assert!(t.starts_with('{') && t.ends_with('}'), "{t}");
                    }
                    "meta" if raw != "null" => {
                        let t = v.to_pg_text().unwrap();
                        serde_json::from_str::<serde_json::Value>(&t).unwrap();
                    }
                    _ => {}
                }
            }
        }
        assert!(saw_big_numeric);
        assert_eq!(
            pg_text_array(&[
                Some("a"),
                Some("b c"),
                None,
                Some("NULL"),
                Some(r#"q"\"#),
                Some("")
            ]),
            r#"{a,"b c",NULL,"NULL","q\"\\",""}"#
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(START_MICROS), "2026-01-05T08:00:00.000000Z");
        assert_eq!(
            pg_timestamptz(951_827_696_789_012),
            "2000-02-29 12:34:56.789012+00"
        );
    }

    #[test]
    fn every_record_round_trips() {
        for r in generate(&spec(13, 5_000)) {
            r.validate().unwrap();
            let again = Record::parse(&r.to_json()).unwrap();
            assert_eq!(again, r);
        }
    }

    #[test]
    fn twenty_thousand_changes_generate_quickly() {
        let start = std::time::Instant::now();
        let records = generate(&spec(21, 20_000));
        let took = start.elapsed();
        eprintln!("generated 20,000 changes in {took:?}");
        assert_eq!(records.len(), 20_000);
        // Generous for unoptimised test builds; release builds take ~50 ms.
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn archive_files_are_complete_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let records = generate(&spec(17, 1_050));
        let paths = write_archive(dir.path(), &records, 500).unwrap();
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "changes-000001.jsonl",
                "changes-000002.jsonl",
                "changes-000003.jsonl"
            ]
        );
        let mut back = Vec::new();
        for p in &paths {
            let text = fs::read(p).unwrap();
            assert!(text.ends_with(b"\n"));
            for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                back.push(Record::parse(line).unwrap());
            }
        }
        assert_eq!(back, records);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
