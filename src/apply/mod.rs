//! The apply engine: writes one table's batch of change records to the local
//! database in one transaction, with a few set-based statements.
//!
//! Invariants (DESIGN.md "Apply invariants"): the version guard and the data
//! change commit together; a change is applied only where it is newer
//! (per column, see [`merge`]); deletes leave tombstones; a TRUNCATE is a
//! floor for the whole table. So apply is idempotent and order-free, and any
//! number of processes may apply batches of one table at once: the rows a
//! batch touches are locked through their bookkeeping rows, in key order.

pub mod merge;
pub mod shape;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use tokio::sync::RwLock;

use crate::record::{Op, Record};
use crate::table::TableName;
use crate::version::Version;
use merge::{Cell, Change, Outcome, RowState, Val, Versioned};
use shape::{ShapeError, TableShape};

/// One record of a batch, with the ordinal to use when it carries no `seq`.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub record: &'a Record,
    pub fallback_seq: u64,
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// It changed the local state.
    Applied,
    /// Older than what was already applied (a duplicate, a replay, or a change
    /// that a later one overtook): nothing to do.
    Superseded,
    /// It cannot apply to this table as it is (unknown column, no key, …).
    /// The message says which record field is at fault; no values.
    Rejected(String),
}

#[derive(Debug, Default, Clone)]
pub struct BatchReport {
    pub dispositions: Vec<Disposition>,
    /// Applied records by op (seed 004's records_added/updated/deleted).
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Rows waiting for their image (partial UPDATE of a row not present).
    pub parked: u64,
    /// DELETEs of rows that were not present (seed 004: logged, skipped;
    /// the tombstone still stops a late INSERT).
    pub deletes_of_missing: u64,
    pub max_version: Option<Version>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error("applying to {table}: {source}")]
    Db {
        table: TableName,
        #[source]
        source: sqlx::Error,
    },
}

impl ApplyError {
    /// The SQLSTATE of a database error, if any.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            ApplyError::Db {
                source: sqlx::Error::Database(e),
                ..
            } => e.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// The text a row's key is stored under in the bookkeeping: the key value's
/// text for a one-column key, a JSON array of texts for a composite key.
pub fn key_text(parts: &[String]) -> String {
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        serde_json::to_string(parts).expect("strings serialize")
    }
}

/// Applies batches. Cheap to share: one per process.
pub struct Applier {
    pool: PgPool,
    replica_role: bool,
    shapes: RwLock<HashMap<TableName, Arc<TableShape>>>,
    /// Rows added/updated/deleted per table since the last `take_counts`.
    counts: std::sync::Mutex<HashMap<TableName, crate::store::Counts>>,
    applied_total: std::sync::atomic::AtomicU64,
}

struct Prepared {
    keys: Vec<Vec<String>>,
    key_ids: HashMap<String, usize>,
    changes: Vec<Versioned>,
    truncate: Option<Version>,
    /// Rows with columns on both sides of a TRUNCATE: they get a delete at
    /// the truncate's version before the batch's changes.
    truncate_rows: Vec<usize>,
    dispositions: Vec<Option<Disposition>>,
    versions: Vec<Version>,
    ops: Vec<Op>,
    /// A record named a column the cached shape does not have.
    unknown_column: bool,
}

impl Applier {
    /// `replica_role`: apply with `session_replication_role = replica` so
    /// triggers and FK checks do not fire on replicated rows (needs a
    /// superuser; see [`Applier::detect_replica_role`]).
    pub fn new(pool: PgPool, replica_role: bool) -> Applier {
        Applier {
            pool,
            replica_role,
            shapes: RwLock::new(HashMap::new()),
            counts: std::sync::Mutex::new(HashMap::new()),
            applied_total: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Takes the per-table counts gathered since the last call.
    pub fn take_counts(&self) -> HashMap<TableName, crate::store::Counts> {
        std::mem::take(&mut *self.counts.lock().expect("counts lock"))
    }

    /// Records applied (changed local state) since the process started.
    pub fn applied_total(&self) -> u64 {
        self.applied_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn detect_replica_role(pool: &PgPool) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("select rolsuper from pg_roles where rolname = current_user")
            .fetch_one(pool)
            .await
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn shape(&self, table: &TableName) -> Result<Arc<TableShape>, ShapeError> {
        if let Some(s) = self.shapes.read().await.get(table) {
            return Ok(s.clone());
        }
        let shape = Arc::new(TableShape::load(&self.pool, table).await?);
        self.shapes
            .write()
            .await
            .insert(table.clone(), shape.clone());
        Ok(shape)
    }

    /// Forgets a cached shape (after a schema change or a failure that may
    /// come from one).
    pub async fn forget_shape(&self, table: &TableName) {
        self.shapes.write().await.remove(table);
    }

    /// Applies `batch` (records of `table` only) in one transaction.
    /// `archive_ref` goes into the SUCCESS row of `data_sync_logs`.
    pub async fn apply_batch(
        &self,
        table: &TableName,
        batch: &[Incoming<'_>],
        archive_ref: &str,
    ) -> Result<BatchReport, ApplyError> {
        let mut shape = self.shape(table).await?;
        let db = |source| ApplyError::Db {
            table: table.clone(),
            source,
        };
        let mut prepared = prepare(&shape, batch);
        if prepared.unknown_column {
            // The local table may have gained the column since the shape
            // was cached (the fix for such dead letters): look again once.
            self.forget_shape(table).await;
            shape = self.shape(table).await?;
            prepared = prepare(&shape, batch);
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        if self.replica_role {
            sqlx::query("set local session_replication_role = replica")
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let report = apply_in_tx(&mut tx, &shape, &mut prepared, archive_ref)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let applied = report
            .dispositions
            .iter()
            .filter(|d| **d == Disposition::Applied)
            .count() as u64;
        self.applied_total
            .fetch_add(applied, std::sync::atomic::Ordering::Relaxed);
        let mut counts = self.counts.lock().expect("counts lock");
        let c = counts.entry(table.clone()).or_default();
        c.added += report.inserted;
        c.updated += report.updated;
        c.deleted += report.deleted;
        Ok(report)
    }
}

/// Maps records to changes on key ids and column positions; rejects what
/// cannot apply to this shape.
fn prepare(shape: &TableShape, batch: &[Incoming<'_>]) -> Prepared {
    let mut p = Prepared {
        keys: Vec::new(),
        key_ids: HashMap::new(),
        changes: Vec::new(),
        truncate: None,
        truncate_rows: Vec::new(),
        dispositions: vec![None; batch.len()],
        versions: Vec::with_capacity(batch.len()),
        ops: Vec::with_capacity(batch.len()),
        unknown_column: false,
    };
    for (index, inc) in batch.iter().enumerate() {
        let r = inc.record;
        let version = r.version(inc.fallback_seq);
        p.versions.push(version);
        p.ops.push(r.op);
        match to_change(shape, r, &mut p.keys, &mut p.key_ids) {
            Ok(Some(change)) => p.changes.push(Versioned {
                version,
                index,
                change,
            }),
            Ok(None) => {
                // TRUNCATE
                p.truncate = p.truncate.max(Some(version));
                p.dispositions[index] = Some(Disposition::Applied);
            }
            Err(Rejection::UnknownColumn(reason)) => {
                p.unknown_column = true;
                p.dispositions[index] = Some(Disposition::Rejected(reason));
            }
            Err(Rejection::Other(reason)) => {
                p.dispositions[index] = Some(Disposition::Rejected(reason))
            }
        }
    }
    p
}

fn intern(
    keys: &mut Vec<Vec<String>>,
    ids: &mut HashMap<String, usize>,
    key: Vec<String>,
) -> usize {
    let text = key_text(&key);
    *ids.entry(text).or_insert_with(|| {
        keys.push(key);
        keys.len() - 1
    })
}

enum Rejection {
    UnknownColumn(String),
    Other(String),
}

fn to_change(
    shape: &TableShape,
    r: &Record,
    keys: &mut Vec<Vec<String>>,
    ids: &mut HashMap<String, usize>,
) -> Result<Option<Change>, Rejection> {
    to_change_inner(shape, r, keys, ids).map_err(|(unknown, reason)| {
        if unknown {
            Rejection::UnknownColumn(reason)
        } else {
            Rejection::Other(reason)
        }
    })
}

/// Errors: (names an unknown column, reason).
fn to_change_inner(
    shape: &TableShape,
    r: &Record,
    keys: &mut Vec<Vec<String>>,
    ids: &mut HashMap<String, usize>,
) -> Result<Option<Change>, (bool, String)> {
    let n = shape.columns.len();
    let values_of = |cols: &crate::record::Columns,
                     field: &str|
     -> Result<Vec<Option<Val>>, (bool, String)> {
        let mut values = vec![None; n];
        for (name, value) in cols {
            // Record::validate rejects these; a record that skipped it
            // is rejected here rather than decoded lossily.
            if let Some(code) = value.lone_surrogate() {
                return Err((
                        false,
                        format!("{field}: value of column {name:?} holds a lone UTF-16 surrogate escape \\u{code:04x}"),
                    ));
            }
            match shape.by_name.get(name) {
                Some(&c) => values[c] = Some(Val::Known(value.to_pg_text())),
                None if shape.generated.contains(name) => {}
                None => {
                    return Err((
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
    let key_of = |values: &[Option<Val>], field: &str| -> Result<Vec<String>, (bool, String)> {
        shape
            .key
            .iter()
            .map(|&c| match &values[c] {
                Some(Val::Known(Some(t))) => Ok(t.clone()),
                Some(_) => Err((
                    false,
                    format!("{field}: key column {:?} is null", shape.columns[c].name),
                )),
                None => Err((
                    false,
                    format!("{field} lacks key column {:?}", shape.columns[c].name),
                )),
            })
            .collect()
    };
    // Record::validate guarantees `data` for INSERT and UPDATE; a record
    // that skipped it is rejected, not a panic.
    let data = || {
        r.data
            .as_ref()
            .ok_or_else(|| (false, format!("{} without data", r.op)))
    };
    match r.op {
        Op::Truncate => Ok(None),
        Op::Insert => {
            let mut values = values_of(data()?, "data")?;
            let key = key_of(&values, "data")?;
            // An INSERT is a whole row: columns it leaves out are NULL.
            for v in &mut values {
                v.get_or_insert(Val::Known(None));
            }
            Ok(Some(Change::Image {
                key: intern(keys, ids, key),
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
                Some(old) if old != key => Some(intern(keys, ids, old)),
                _ => None,
            };
            Ok(Some(Change::Image {
                key: intern(keys, ids, key),
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
                key: intern(keys, ids, key),
            }))
        }
    }
}

type Tx<'c> = Transaction<'c, Postgres>;

/// The key values of `rows`, one vector per key column (for `unnest`).
fn key_columns<'a>(rows: impl Iterator<Item = &'a Vec<String>>, width: usize) -> Vec<Vec<String>> {
    let mut columns = vec![Vec::new(); width];
    for row in rows {
        for (column, value) in columns.iter_mut().zip(row) {
            column.push(value.clone());
        }
    }
    columns
}

/// A row's bookkeeping as read under lock.
struct Stored {
    state: String,
    version: Version,
    floor: Option<Version>,
    col_versions: Option<serde_json::Value>,
    parked: Option<serde_json::Value>,
}

/// `$1::text[], …, $n::text[]` and `c0, …, c{n-1}`: whole rows bound as one
/// text array per column, for `unnest`.
fn whole_row_params(n: usize) -> (String, String) {
    let params: Vec<String> = (0..n).map(|c| format!("${}::text[]", c + 1)).collect();
    let aliases: Vec<String> = (0..n).map(|c| format!("c{c}")).collect();
    (params.join(", "), aliases.join(", "))
}

/// Which rows need values from the target table that are not in hand.
fn values_needed(states: &[RowState], initial: &[RowState]) -> HashSet<usize> {
    let mut need = HashSet::new();
    for (id, st) in states.iter().enumerate() {
        if st == &initial[id] {
            continue;
        }
        let full_write = st.is_parked()
            || (st.is_live() && !st.cells.iter().flatten().any(|c| c.val == Val::InDb(id)));
        for cell in st.cells.iter().flatten() {
            if let Val::InDb(k) = cell.val {
                if k != id || full_write {
                    need.insert(k);
                }
            }
        }
    }
    need
}

/// The text of column `c` of a cell value, from the batch or from the
/// target rows read.
fn resolve(fetched: &HashMap<usize, Vec<Option<String>>>, c: usize, val: &Val) -> Option<String> {
    match val {
        Val::Known(v) => v.clone(),
        Val::InDb(k) => fetched.get(k).and_then(|row| row[c].clone()),
    }
}

async fn apply_in_tx(
    tx: &mut Tx<'_>,
    shape: &TableShape,
    p: &mut Prepared,
    archive_ref: &str,
) -> Result<BatchReport, sqlx::Error> {
    let table_name = shape.name.to_string();
    // The table's row in table_state: KEY SHARE for ordinary batches (they
    // run side by side), UPDATE for a TRUNCATE (it waits for them and holds
    // new ones off until it commits). Created on the table's first batch.
    let lock = if p.truncate.is_some() {
        "for update"
    } else {
        "for key share"
    };
    let select_state = format!(
        "select id, truncate_lsn, truncate_seq from syncdata.table_state where table_name = $1 {lock}"
    );
    let mut row: Option<(i32, i64, i64)> = sqlx::query_as(AssertSqlSafe(select_state.clone()))
        .bind(&table_name)
        .fetch_optional(&mut **tx)
        .await?;
    if row.is_none() {
        sqlx::query(
            "insert into syncdata.table_state (table_name) values ($1) on conflict (table_name) do nothing",
        )
        .bind(&table_name)
        .execute(&mut **tx)
        .await?;
        row = Some(
            sqlx::query_as(AssertSqlSafe(select_state))
                .bind(&table_name)
                .fetch_one(&mut **tx)
                .await?,
        );
    }
    let (table_id, t_lsn, t_seq) = row.expect("table_state row");
    let mut floor = Version::from_db(t_lsn, t_seq);

    if let Some(vt) = p.truncate.filter(|&vt| vt > floor) {
        truncate_barrier(tx, shape, table_id, vt, p).await?;
        floor = vt;
    }

    // Changes at or below the table's floor are dead.
    let mut live_changes = Vec::with_capacity(p.changes.len());
    for c in p.changes.drain(..) {
        if c.version <= floor {
            p.dispositions[c.index] = Some(Disposition::Superseded);
        } else {
            live_changes.push(c);
        }
    }

    let mut report = BatchReport::default();
    let n = shape.columns.len();
    let key_count = p.keys.len();
    let texts: Vec<String> = p.keys.iter().map(|k| key_text(k)).collect();
    // The bookkeeping row of each key as found under lock (None: no row).
    let mut stored: Vec<Option<Stored>> = (0..key_count).map(|_| None).collect();
    let mut exists = vec![false; key_count];
    // Bookkeeping rows this batch inserted for keys that had none.
    let mut inserted: Vec<Option<BookRow>> = vec![None; key_count];
    let mut pending: Vec<usize> = (0..key_count).collect();
    // Whether a key's target row needs looking up: not when the batch
    // brings a whole image newer than all that is known of it (the upsert
    // writes it either way); always for deletes, old keys of key changes and
    // rows a TRUNCATE reaches into.
    let mut whole_image: Vec<Option<Version>> = vec![None; key_count];
    let mut must_probe = vec![false; key_count];
    // Whether that newest whole image is an UPDATE (so the row is most
    // likely there: written by UPDATE first, not by an upsert).
    let mut by_update = vec![false; key_count];
    for &k in &p.truncate_rows {
        must_probe[k] = true;
    }
    for c in &live_changes {
        match &c.change {
            Change::Image { key, values, from } => {
                if values.iter().all(Option::is_some) && whole_image[*key] < Some(c.version) {
                    whole_image[*key] = Some(c.version);
                    by_update[*key] = p.ops[c.index] == Op::Update;
                }
                if let Some(old) = from {
                    must_probe[*old] = true;
                }
            }
            Change::Delete { key } => must_probe[*key] = true,
        }
    }
    // Keys without a bookkeeping row get theirs inserted with its final
    // state (no placeholder written and rewritten). A key another batch
    // inserted meanwhile conflicts: it is then locked and read like any
    // other and the merge runs again (rare: two processes, one new key).
    let (initial, states, outcomes, fetched) = loop {
        if !pending.is_empty() {
            let found = lock_existing(tx, table_id, &texts, &p.key_ids, &pending).await?;
            for (id, s) in found {
                stored[id] = Some(s);
            }
            let (probe, skip): (Vec<usize>, Vec<usize>) = pending.iter().partition(|&&id| {
                let known = stored[id].as_ref().map(|s| s.version);
                must_probe[id] || whole_image[id].is_none_or(|v| Some(v) <= known)
            });
            if !probe.is_empty() {
                let present = target_present(tx, shape, &p.keys, &probe).await?;
                for id in probe {
                    exists[id] = present.contains(&id);
                }
            }
            for id in skip {
                // Not looked up: assumed present when synced before (the
                // whole image overrides it either way).
                exists[id] = stored[id].is_some();
            }
        }
        let initial: Vec<RowState> = (0..key_count)
            .map(|id| initial_state(shape, id, stored[id].as_ref(), exists[id]))
            .collect();
        let mut states = initial.clone();
        for &k in &p.truncate_rows {
            states[k].apply_delete(floor);
        }
        let outcomes = merge::merge(&mut states, live_changes.clone());
        let need = values_needed(&states, &initial);
        let fetched = if need.is_empty() {
            HashMap::new()
        } else {
            read_rows(tx, shape, &p.keys, &need).await?
        };
        let mut new_rows = Vec::new();
        for id in 0..key_count {
            if stored[id].is_none() && inserted[id].is_none() && states[id] != initial[id] {
                if let Some(row) = BookRow::of(shape, &states[id], &|c, v| resolve(&fetched, c, v))
                {
                    new_rows.push((id, row));
                }
            }
        }
        if new_rows.is_empty() {
            break (initial, states, outcomes, fetched);
        }
        let done = insert_book(tx, table_id, &texts, &p.key_ids, &new_rows).await?;
        pending.clear();
        for (id, row) in new_rows {
            if done.contains(&id) {
                inserted[id] = Some(row);
            } else {
                pending.push(id);
            }
        }
        if pending.is_empty() {
            break (initial, states, outcomes, fetched);
        }
    };
    // The oldest image of each key in the batch: a DELETE after it deletes
    // a row the batch itself brought, not a missing one.
    let mut first_image: HashMap<usize, Version> = HashMap::new();
    for c in &live_changes {
        if let Change::Image { key, .. } = c.change {
            let v = first_image.entry(key).or_insert(c.version);
            *v = (*v).min(c.version);
        }
    }
    for c in &live_changes {
        let outcome = outcomes[&c.index];
        p.dispositions[c.index] = Some(match outcome {
            Outcome::Applied => Disposition::Applied,
            Outcome::Superseded => Disposition::Superseded,
        });
        if outcome == Outcome::Applied {
            match p.ops[c.index] {
                Op::Insert => report.inserted += 1,
                Op::Update => report.updated += 1,
                Op::Delete => report.deleted += 1,
                Op::Truncate => {}
            }
            if let Change::Delete { key } = c.change {
                let brought_here = first_image.get(&key).is_some_and(|&v| v < c.version);
                if !exists[key] && !brought_here && initial[key].cells.iter().all(Option::is_none) {
                    report.deletes_of_missing += 1;
                }
            }
        }
    }
    let resolve_cell = |c: usize, val: &Val| resolve(&fetched, c, val);

    let mut upserts: Vec<Vec<Option<String>>> = vec![Vec::new(); n];
    // Whole rows most likely present: an UPDATE by key, like native
    // replication, cheaper than an upsert; those it finds absent are upserted.
    let has_non_key = (0..n).any(|c| !shape.is_key(c));
    let mut updates: Vec<Vec<Option<String>>> = vec![Vec::new(); n];
    let mut update_ids: Vec<usize> = Vec::new();
    let mut partial_keys: Vec<Vec<String>> = vec![Vec::new(); shape.key.len()];
    let mut partial_vals: Vec<Vec<Option<String>>> = vec![Vec::new(); n];
    let mut partial_mask: Vec<Vec<bool>> = vec![Vec::new(); n];
    let mut deletes: Vec<Vec<String>> = vec![Vec::new(); shape.key.len()];
    let mut book = Bookkeeping::default();
    let mut book_removals: Vec<String> = Vec::new();

    for (id, st) in states.iter().enumerate() {
        if st == &initial[id] {
            continue;
        }
        let key = &p.keys[id];
        if st.is_live() {
            let own = st.cells.iter().flatten().any(|c| c.val == Val::InDb(id));
            if own && exists[id] {
                for (i, k) in key.iter().enumerate() {
                    partial_keys[i].push(k.clone());
                }
                for (c, cell) in st.cells.iter().enumerate() {
                    let cell = cell.as_ref().expect("live");
                    let write = cell.val != Val::InDb(id);
                    partial_mask[c].push(write);
                    partial_vals[c].push(if write {
                        resolve_cell(c, &cell.val)
                    } else {
                        None
                    });
                }
            } else {
                let likely_there = exists[id] || by_update[id];
                let into = if likely_there && has_non_key {
                    update_ids.push(id);
                    &mut updates
                } else {
                    &mut upserts
                };
                for (c, cell) in st.cells.iter().enumerate() {
                    into[c].push(resolve_cell(c, &cell.as_ref().expect("live").val));
                }
            }
        } else if exists[id] {
            for (i, k) in key.iter().enumerate() {
                deletes[i].push(k.clone());
            }
        }
        if st.is_parked() {
            report.parked += 1;
        }
        let row = BookRow::of(shape, st, &resolve_cell);
        if stored[id].is_some() {
            match row {
                Some(row) => book.push(texts[id].clone(), row),
                None => book_removals.push(texts[id].clone()),
            }
        } else if let Some(ins) = &inserted[id] {
            // Inserted above from an earlier round of the merge: bring it
            // up to date if a later round changed it.
            match row {
                Some(row) if row == *ins => {}
                Some(row) => book.push(texts[id].clone(), row),
                None => book_removals.push(texts[id].clone()),
            }
        }
    }

    if !deletes[0].is_empty() {
        let (params, aliases) = shape.key_params(1);
        let sql = format!(
            "delete from {} t using unnest({params}) as u({aliases}) where {}",
            shape.name.quoted(),
            shape.key_join("t", "u")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for col in deletes {
            q = q.bind(col);
        }
        q.execute(&mut **tx).await?;
    }
    if !update_ids.is_empty() {
        let (params, aliases) = whole_row_params(n);
        let sets: Vec<String> = (0..n)
            .filter(|&c| !shape.is_key(c))
            .map(|c| {
                format!(
                    "{} = {}",
                    shape.quoted_column(c),
                    shape.cast(c, &format!("u.c{c}"))
                )
            })
            .collect();
        let join: Vec<String> = shape
            .key
            .iter()
            .map(|&c| {
                format!(
                    "t.{} = {}",
                    shape.quoted_column(c),
                    shape.cast(c, &format!("u.c{c}"))
                )
            })
            .collect();
        let sql = format!(
            "update {} t set {} from unnest({params}) with ordinality as u({aliases}, i) where {} returning u.i",
            shape.name.quoted(),
            sets.join(", "),
            join.join(" and "),
        );
        let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
        for col in &updates {
            q = q.bind(col);
        }
        let found: HashSet<i64> = q.fetch_all(&mut **tx).await?.into_iter().collect();
        let absent: Vec<usize> = (0..update_ids.len())
            .filter(|&row| !found.contains(&(row as i64 + 1)))
            .collect();
        for (column, upsert) in updates.iter_mut().zip(upserts.iter_mut()) {
            upsert.extend(absent.iter().map(|&row| column[row].take()));
        }
    }
    if !upserts[0].is_empty() {
        let cols: Vec<String> = (0..n).map(|c| shape.quoted_column(c)).collect();
        let (params, aliases) = whole_row_params(n);
        let casts: Vec<String> = (0..n).map(|c| shape.cast(c, &format!("u.c{c}"))).collect();
        let key_cols: Vec<String> = shape.key.iter().map(|&c| shape.quoted_column(c)).collect();
        let sets: Vec<String> = (0..n)
            .filter(|&c| !shape.is_key(c))
            .map(|c| format!("{0} = excluded.{0}", shape.quoted_column(c)))
            .collect();
        let conflict = if sets.is_empty() {
            "do nothing".to_owned()
        } else {
            format!("do update set {}", sets.join(", "))
        };
        let sql = format!(
            "insert into {} ({}) overriding system value select {} from unnest({params}) as u({aliases}) on conflict ({}) {conflict}",
            shape.name.quoted(),
            cols.join(", "),
            casts.join(", "),
            key_cols.join(", "),
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for col in upserts {
            q = q.bind(col);
        }
        q.execute(&mut **tx).await?;
    }
    if !partial_keys[0].is_empty() {
        let written: Vec<usize> = (0..n)
            .filter(|&c| !shape.is_key(c) && partial_mask[c].iter().any(|&m| m))
            .collect();
        if !written.is_empty() {
            let nk = shape.key.len();
            let (kparams, kaliases) = shape.key_params(1);
            let mut params = vec![kparams];
            let mut aliases = vec![kaliases];
            let mut sets = Vec::new();
            for (j, &c) in written.iter().enumerate() {
                params.push(format!(
                    "${}::text[], ${}::bool[]",
                    nk + 2 * j + 1,
                    nk + 2 * j + 2
                ));
                aliases.push(format!("v{j}, m{j}"));
                let col = shape.quoted_column(c);
                sets.push(format!(
                    "{col} = case when u.m{j} then {} else t.{col} end",
                    shape.cast(c, &format!("u.v{j}"))
                ));
            }
            let sql = format!(
                "update {} t set {} from unnest({}) as u({}) where {}",
                shape.name.quoted(),
                sets.join(", "),
                params.join(", "),
                aliases.join(", "),
                shape.key_join("t", "u"),
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for col in partial_keys {
                q = q.bind(col);
            }
            for &c in &written {
                q = q
                    .bind(std::mem::take(&mut partial_vals[c]))
                    .bind(std::mem::take(&mut partial_mask[c]));
            }
            q.execute(&mut **tx).await?;
        }
    }
    book.write(tx, table_id).await?;
    if !book_removals.is_empty() {
        sqlx::query("delete from syncdata.row_state where table_id = $1 and key = any($2)")
            .bind(table_id)
            .bind(&book_removals)
            .execute(&mut **tx)
            .await?;
    }

    let applied = p
        .dispositions
        .iter()
        .filter(|d| matches!(d, Some(Disposition::Applied)))
        .count();
    report.max_version = p.versions.iter().copied().max();
    let first = p.versions.iter().copied().min();
    let archive_ref = match (first, report.max_version) {
        (Some(a), Some(b)) if archive_ref.is_empty() => format!("{}..{}", a.lsn, b.lsn),
        _ => archive_ref.to_owned(),
    };
    sqlx::query(
        "insert into data_sync_logs (table_name, status, rows_synced, archive_ref) values ($1, 'SUCCESS', $2, $3)",
    )
    .bind(&table_name)
    .bind(applied as i32)
    .bind(&archive_ref)
    .execute(&mut **tx)
    .await?;

    report.dispositions = p
        .dispositions
        .drain(..)
        .map(|d| d.expect("every record has a disposition"))
        .collect();
    Ok(report)
}

/// A TRUNCATE at `vt`: every row loses what is at or below it, as if each
/// row were deleted at `vt`. Rows wholly older go at once; rows with some
/// newer columns are added to the batch with a delete at `vt`.
async fn truncate_barrier(
    tx: &mut Tx<'_>,
    shape: &TableShape,
    table_id: i32,
    vt: Version,
    p: &mut Prepared,
) -> Result<(), sqlx::Error> {
    let (lsn, seq) = vt.to_db();
    let key_match: String = shape
        .key
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            format!(
                "t.{} = {}",
                shape.quoted_column(c),
                shape.key_from_text(i, "s.key")
            )
        })
        .collect::<Vec<_>>()
        .join(" and ");
    sqlx::query(AssertSqlSafe(format!(
        "delete from {} t where not exists (select 1 from syncdata.row_state s \
         where s.table_id = $1 and s.state = 'L' and (s.lsn, s.seq) > ($2, $3) and {key_match})",
        shape.name.quoted()
    )))
    .bind(table_id)
    .bind(lsn)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    sqlx::query("delete from syncdata.row_state where table_id = $1 and (lsn, seq) <= ($2, $3)")
        .bind(table_id)
        .bind(lsn)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    let mixed: Vec<(String,)> = sqlx::query_as(
        "select key from syncdata.row_state where table_id = $1 and col_versions is not null",
    )
    .bind(table_id)
    .fetch_all(&mut **tx)
    .await?;
    for (text,) in mixed {
        let parts = if shape.key.len() == 1 {
            vec![text]
        } else {
            serde_json::from_str(&text).unwrap_or_default()
        };
        let id = intern(&mut p.keys, &mut p.key_ids, parts);
        p.truncate_rows.push(id);
    }
    sqlx::query(
        "update syncdata.table_state set truncate_lsn = $2, truncate_seq = $3 where id = $1",
    )
    .bind(table_id)
    .bind(lsn)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// key, state, lsn, seq, floor_lsn, floor_seq, col_versions, parked
type StoredRow = (
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<serde_json::Value>,
    Option<serde_json::Value>,
);

/// Locks, in key order, the bookkeeping rows that exist for the keys
/// `ids`, and reads them. Returns (key id, row) for each row found.
///
/// Lock and read are one statement: a row lock waited for re-reads the
/// locked row itself (its newest version), which is all this reads. The
/// target table is read by a statement of its own once the locks are held:
/// under READ COMMITTED a statement that waits for a row lock re-reads only
/// the locked row, not the rows joined to it, so a target row committed by
/// the transaction it waited for would look absent (and one it deleted,
/// present).
async fn lock_existing(
    tx: &mut Tx<'_>,
    table_id: i32,
    texts: &[String],
    key_ids: &HashMap<String, usize>,
    ids: &[usize],
) -> Result<Vec<(usize, Stored)>, sqlx::Error> {
    let mut wanted: Vec<&str> = ids.iter().map(|&id| texts[id].as_str()).collect();
    wanted.sort_unstable();
    let rows: Vec<StoredRow> = sqlx::query_as(
        "select key, state::text, lsn, seq, floor_lsn, floor_seq, col_versions, parked \
         from syncdata.row_state where table_id = $1 and key = any($2) \
         order by key collate \"C\" for update",
    )
    .bind(table_id)
    .bind(&wanted)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, state, lsn, seq, fl, fs, cv, parked)| {
            let id = *key_ids.get(&key)?;
            Some((
                id,
                Stored {
                    state,
                    version: Version::from_db(lsn, seq),
                    floor: fl.zip(fs).map(|(l, s)| Version::from_db(l, s)),
                    col_versions: cv,
                    parked,
                },
            ))
        })
        .collect())
}

/// Which of the keys `ids` have a row in the target table.
async fn target_present(
    tx: &mut Tx<'_>,
    shape: &TableShape,
    keys: &[Vec<String>],
    ids: &[usize],
) -> Result<HashSet<usize>, sqlx::Error> {
    let (kparams, kaliases) = shape.key_params(1);
    let sql = format!(
        "select u.i from unnest({kparams}) with ordinality as u({kaliases}, i) join {} t on {}",
        shape.name.quoted(),
        shape.key_join("t", "u")
    );
    let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
    for column in key_columns(ids.iter().map(|&id| &keys[id]), shape.key.len()) {
        q = q.bind(column);
    }
    let rows = q.fetch_all(&mut **tx).await?;
    Ok(rows.into_iter().map(|i| ids[(i - 1) as usize]).collect())
}

/// Inserts the bookkeeping rows of keys that had none, in key order.
/// Returns the key ids inserted; the others were inserted by another
/// transaction meanwhile.
async fn insert_book(
    tx: &mut Tx<'_>,
    table_id: i32,
    texts: &[String],
    key_ids: &HashMap<String, usize>,
    rows: &[(usize, BookRow)],
) -> Result<HashSet<usize>, sqlx::Error> {
    let mut book = Bookkeeping::default();
    for (id, row) in rows {
        book.push(texts[*id].clone(), row.clone());
    }
    let done: Vec<String> = sqlx::query_scalar(
        "insert into syncdata.row_state (table_id, key, state, lsn, seq, floor_lsn, floor_seq, col_versions, parked) \
         select $1, u.key, u.state::\"char\", u.lsn, u.seq, u.fl, u.fs, u.cv::jsonb, u.pk::jsonb \
         from unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::text[], $9::text[]) \
              as u(key, state, lsn, seq, fl, fs, cv, pk) \
         order by u.key collate \"C\" \
         on conflict do nothing returning key",
    )
    .bind(table_id)
    .bind(book.keys)
    .bind(book.states)
    .bind(book.lsns)
    .bind(book.seqs)
    .bind(book.floor_lsns)
    .bind(book.floor_seqs)
    .bind(book.col_versions)
    .bind(book.parked)
    .fetch_all(&mut **tx)
    .await?;
    Ok(done
        .iter()
        .filter_map(|k| key_ids.get(k).copied())
        .collect())
}

fn version_of_json(v: &serde_json::Value) -> Option<Version> {
    let a = v.as_array()?;
    Some(Version::from_db(a.first()?.as_i64()?, a.get(1)?.as_i64()?))
}

fn initial_state(
    shape: &TableShape,
    id: usize,
    stored: Option<&Stored>,
    target_exists: bool,
) -> RowState {
    let n = shape.columns.len();
    let mut st = RowState::empty(n);
    let Some(s) = stored else {
        // No bookkeeping: a row present locally was loaded before syncing
        // began (known, at the lowest version); otherwise nothing is known.
        if target_exists {
            for cell in &mut st.cells {
                *cell = Some(Cell {
                    val: Val::InDb(id),
                    version: Version::ZERO,
                });
            }
        }
        return st;
    };
    let col_version = |c: usize| {
        s.col_versions
            .as_ref()
            .and_then(|m| m.get(&shape.columns[c].name))
            .and_then(version_of_json)
            .unwrap_or(s.version)
    };
    match s.state.as_str() {
        // A placeholder (written by earlier versions inside a transaction,
        // never committed): as if there were no bookkeeping.
        "N" if target_exists => {
            for cell in &mut st.cells {
                *cell = Some(Cell {
                    val: Val::InDb(id),
                    version: Version::ZERO,
                });
            }
        }
        "L" if target_exists => {
            for (c, cell) in st.cells.iter_mut().enumerate() {
                *cell = Some(Cell {
                    val: Val::InDb(id),
                    version: col_version(c),
                });
            }
            st.floor = s.floor;
        }
        "L" => {
            tracing::warn!(table = %shape.name, "a synced row was removed from the target by hand; it returns with its next full image (or run resync)");
            st.floor = s.floor;
        }
        "P" => {
            if let Some(serde_json::Value::Object(values)) = &s.parked {
                for (name, v) in values {
                    if let Some(&c) = shape.by_name.get(name) {
                        st.cells[c] = Some(Cell {
                            val: Val::Known(v.as_str().map(str::to_owned)),
                            version: col_version(c),
                        });
                    }
                }
            }
            st.floor = s.floor;
        }
        "D" => st.floor = Some(s.floor.unwrap_or(s.version)),
        _ => {}
    }
    st
}

/// Reads the current text of every column of the target rows of `ids`.
async fn read_rows(
    tx: &mut Tx<'_>,
    shape: &TableShape,
    keys: &[Vec<String>],
    ids: &HashSet<usize>,
) -> Result<HashMap<usize, Vec<Option<String>>>, sqlx::Error> {
    let ids: Vec<usize> = ids.iter().copied().collect();
    let (kparams, kaliases) = shape.key_params(1);
    let cols: Vec<String> = (0..shape.columns.len())
        .map(|c| format!("t.{}::text", shape.quoted_column(c)))
        .collect();
    let sql = format!(
        "select u.i, array[{}] from unnest({kparams}) with ordinality as u({kaliases}, i) join {} t on {}",
        cols.join(", "),
        shape.name.quoted(),
        shape.key_join("t", "u")
    );
    let mut q = sqlx::query_as::<_, (i64, Vec<Option<String>>)>(AssertSqlSafe(sql));
    for column in key_columns(ids.iter().map(|&id| &keys[id]), shape.key.len()) {
        q = q.bind(column);
    }
    let rows = q.fetch_all(&mut **tx).await?;
    Ok(rows
        .into_iter()
        .map(|(i, vals)| (ids[(i - 1) as usize], vals))
        .collect())
}

/// A row's bookkeeping as written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BookRow {
    state: &'static str,
    lsn: i64,
    seq: i64,
    floor: Option<(i64, i64)>,
    col_versions: Option<String>,
    parked: Option<String>,
}

impl BookRow {
    /// The bookkeeping of a merged row; None when nothing is known of it.
    fn of(
        shape: &TableShape,
        st: &RowState,
        resolve: &dyn Fn(usize, &Val) -> Option<String>,
    ) -> Option<BookRow> {
        let version = st.version()?;
        let state = if st.is_live() {
            "L"
        } else if st.is_parked() {
            "P"
        } else {
            "D"
        };
        let mut cv = BTreeMap::new();
        let mut parked = BTreeMap::new();
        for (c, cell) in st.cells.iter().enumerate() {
            if let Some(cell) = cell {
                if cell.version != version {
                    let (l, s) = cell.version.to_db();
                    cv.insert(shape.columns[c].name.clone(), serde_json::json!([l, s]));
                }
                if state == "P" {
                    parked.insert(
                        shape.columns[c].name.clone(),
                        serde_json::json!(resolve(c, &cell.val)),
                    );
                }
            }
        }
        let (lsn, seq) = version.to_db();
        Some(BookRow {
            state,
            lsn,
            seq,
            floor: st.floor.map(Version::to_db),
            col_versions: (!cv.is_empty())
                .then(|| serde_json::Value::Object(cv.into_iter().collect()).to_string()),
            parked: (state == "P")
                .then(|| serde_json::Value::Object(parked.into_iter().collect()).to_string()),
        })
    }
}

/// Bookkeeping rows as columns, for `unnest`.
#[derive(Default)]
struct Bookkeeping {
    keys: Vec<String>,
    states: Vec<&'static str>,
    lsns: Vec<i64>,
    seqs: Vec<i64>,
    floor_lsns: Vec<Option<i64>>,
    floor_seqs: Vec<Option<i64>>,
    col_versions: Vec<Option<String>>,
    parked: Vec<Option<String>>,
}

impl Bookkeeping {
    fn push(&mut self, key: String, row: BookRow) {
        self.keys.push(key);
        self.states.push(row.state);
        self.lsns.push(row.lsn);
        self.seqs.push(row.seq);
        self.floor_lsns.push(row.floor.map(|f| f.0));
        self.floor_seqs.push(row.floor.map(|f| f.1));
        self.col_versions.push(row.col_versions);
        self.parked.push(row.parked);
    }

    async fn write(self, tx: &mut Tx<'_>, table_id: i32) -> Result<(), sqlx::Error> {
        if self.keys.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "update syncdata.row_state s set state = u.state::\"char\", lsn = u.lsn, seq = u.seq, \
                    floor_lsn = u.fl, floor_seq = u.fs, col_versions = u.cv::jsonb, parked = u.pk::jsonb \
             from unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::text[], $9::text[]) \
                  as u(key, state, lsn, seq, fl, fs, cv, pk) \
             where s.table_id = $1 and s.key = u.key",
        )
        .bind(table_id)
        .bind(self.keys)
        .bind(self.states)
        .bind(self.lsns)
        .bind(self.seqs)
        .bind(self.floor_lsns)
        .bind(self.floor_seqs)
        .bind(self.col_versions)
        .bind(self.parked)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
