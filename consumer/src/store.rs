//! The local database's own tables: migrations (seed-004 tables plus the
//! `syncdata` bookkeeping schema) and the `tables_to_sync` whitelist.
//!
//! Invariants: syncdata's migration history lives in
//! `syncdata._sqlx_migrations`, never in `public` (an application that uses
//! sqlx keeps its own history there); only [`connect_and_migrate`] (`start`,
//! `add-tables`, `migrate`) creates or changes anything, every other command
//! connects with [`connect`], which creates nothing. Every connection pins
//! the session settings that shape values' text form ([`SESSION_SETTINGS`]).

use std::time::Duration;

use std::sync::LazyLock;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use crate::apply::shape::{ShapeError, TableShape};
use syncdata_core::config::Config;
use syncdata_core::table::TableName;

/// syncdata's migrations, recorded in [`MIGRATIONS_TABLE`].
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut m = sqlx::migrate!("./migrations");
    m.create_schema("syncdata");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
});

/// Where syncdata records its applied migrations.
pub const MIGRATIONS_TABLE: &str = "syncdata._sqlx_migrations";

/// Session settings that shape how values are written as text. The apply
/// engine reads columns as text (carried-over columns of a key change,
/// parked rows) and writes them back through the column's input function, so
/// a database or role default such as `bytea_output = 'escape'` or
/// `IntervalStyle = 'sql_standard'` must not reach these connections.
pub const SESSION_SETTINGS: [(&str, &str); 5] = [
    ("bytea_output", "hex"),
    ("IntervalStyle", "postgres"),
    ("DateStyle", "ISO, MDY"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL at {host}:{port} database {database:?}: {source}")]
    Connect {
        host: String,
        port: u16,
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the syncdata tables: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("tables_to_sync holds {stored:?}, which is not a valid table name: {reason}")]
    BadWhitelistEntry { stored: String, reason: String },
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error(
        "syncdata is not set up in database {database:?} (none of its tables are there); \
         run `syncdata migrate` (or `add-tables`, or `start`) against it first, \
         or check pg_database / PG_DB_NAME"
    )]
    NotSetUp { database: String },
    #[error(
        "syncdata's tables in database {database:?} are older than this syncdata \
         ({applied} of {known} migrations applied); run `syncdata migrate`"
    )]
    Outdated {
        database: String,
        applied: usize,
        known: usize,
    },
    #[error("refused: {0}")]
    Denied(String),
}

/// Connects without creating or changing anything, after checking that
/// syncdata is set up and up to date in that database (for every command
/// but `start`, `add-tables` and `migrate`).
pub async fn connect(config: &Config) -> Result<PgPool, StoreError> {
    let pool = open(config).await?;
    let database = config.pg_database.clone().unwrap_or_default();
    let applied = applied_migrations(&pool).await?;
    let known = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count();
    match applied {
        None => Err(StoreError::NotSetUp { database }),
        Some(applied) if applied < known => Err(StoreError::Outdated {
            database,
            applied,
            known,
        }),
        Some(_) => Ok(pool),
    }
}

/// Connects and runs the migrations, first moving syncdata's history out of
/// `public._sqlx_migrations` where an earlier version kept it. Safe from
/// many processes at once (advisory locks).
pub async fn connect_and_migrate(config: &Config) -> Result<PgPool, StoreError> {
    let pool = open(config).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Runs syncdata's migrations on `pool` (see [`connect_and_migrate`]).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    adopt_legacy_history(pool).await?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

async fn open(config: &Config) -> Result<PgPool, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(config.consumer.pool_size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(
            config
                .pg_connect_options()
                .options(SESSION_SETTINGS)
                .options(guard_settings(config)),
        )
        .await;
    let pool = match pool {
        // The pool hides why no connection opened ("pool timed out"): one
        // direct attempt tells ("connection refused", a bad password, …).
        Err(sqlx::Error::PoolTimedOut) => {
            use sqlx::ConnectOptions;
            match tokio::time::timeout(
                Duration::from_secs(5),
                config.pg_connect_options().connect(),
            )
            .await
            {
                Ok(Err(e)) => Err(e),
                _ => Err(sqlx::Error::PoolTimedOut),
            }
        }
        other => other,
    };
    pool.map_err(|source| StoreError::Connect {
        host: config.pg_host.clone(),
        port: config.pg_port,
        database: config.pg_database.clone().unwrap_or_default(),
        source,
    })
}

/// Session settings that keep a stuck statement or a dead peer from
/// holding a table forever: `lock_timeout` and `statement_timeout` (their
/// failures are transient, the batch is retried) and the server side's TCP
/// keepalives (a connection whose client vanished is closed, releasing its
/// locks). `0` turns a timeout off.
fn guard_settings(config: &Config) -> [(&'static str, String); 5] {
    let c = &config.consumer;
    let keepalive = c.tcp_keepalive_secs.max(1);
    [
        ("lock_timeout", format!("{}ms", c.lock_timeout_ms)),
        ("statement_timeout", format!("{}ms", c.statement_timeout_ms)),
        ("tcp_keepalives_idle", keepalive.to_string()),
        (
            "tcp_keepalives_interval",
            keepalive.div_ceil(3).max(1).to_string(),
        ),
        ("tcp_keepalives_count", "3".to_owned()),
    ]
}

/// Whether a migration row (version, checksum) is one of syncdata's.
fn is_ours(version: i64, checksum: &[u8]) -> bool {
    MIGRATOR
        .iter()
        .any(|m| m.version == version && *m.checksum == *checksum)
}

/// How many of syncdata's migrations the database records as applied
/// (in its own table, or still in `public` from an earlier version); None
/// when syncdata was never set up there. Reads only.
pub async fn applied_migrations(pool: &PgPool) -> Result<Option<usize>, StoreError> {
    let mut found = None;
    for table in [MIGRATIONS_TABLE, "public._sqlx_migrations"] {
        let exists: bool = sqlx::query_scalar("select to_regclass($1) is not null")
            .bind(table)
            .fetch_one(pool)
            .await?;
        if !exists {
            continue;
        }
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select version, checksum from {table} where success"
        )))
        .fetch_all(pool)
        .await?;
        let ours = rows.iter().filter(|(v, c)| is_ours(*v, c)).count();
        if ours > 0 || table == MIGRATIONS_TABLE {
            found = Some(found.unwrap_or(0).max(ours));
        }
    }
    Ok(found)
}

/// Upgrade in place: an earlier syncdata recorded its migrations in
/// `public._sqlx_migrations`, where an application using sqlx keeps its
/// own. Moves syncdata's rows (same version and checksum as one of its
/// migrations) into [`MIGRATIONS_TABLE`], leaves every other row where it
/// is, and drops the public table only if that leaves it empty.
async fn adopt_legacy_history(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx: sqlx::Transaction<'_, Postgres> = pool.begin().await?;
    // One process at a time (several daemons may start together).
    sqlx::query("select pg_advisory_xact_lock(hashtext('syncdata.adopt_legacy_history'))")
        .execute(&mut *tx)
        .await?;
    let legacy: bool =
        sqlx::query_scalar("select to_regclass('public._sqlx_migrations') is not null")
            .fetch_one(&mut *tx)
            .await?;
    if !legacy {
        return Ok(());
    }
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("select version, checksum from public._sqlx_migrations")
            .fetch_all(&mut *tx)
            .await?;
    let ours: Vec<i64> = rows
        .iter()
        .filter(|(v, c)| is_ours(*v, c))
        .map(|(v, _)| *v)
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create schema if not exists syncdata; \
         create table if not exists {MIGRATIONS_TABLE} (\
             version bigint primary key, description text not null, \
             installed_on timestamptz not null default now(), success boolean not null, \
             checksum bytea not null, execution_time bigint not null)"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "insert into {MIGRATIONS_TABLE} \
         select version, description, installed_on, success, checksum, execution_time \
         from public._sqlx_migrations where version = any($1) on conflict (version) do nothing"
    )))
    .bind(&ours)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from public._sqlx_migrations where version = any($1)")
        .bind(&ours)
        .execute(&mut *tx)
        .await?;
    let left: i64 = sqlx::query_scalar("select count(*) from public._sqlx_migrations")
        .fetch_one(&mut *tx)
        .await?;
    if left == 0 {
        sqlx::query("drop table public._sqlx_migrations")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(
        moved = ours.len(),
        "moved syncdata's migration history from public._sqlx_migrations to {MIGRATIONS_TABLE}"
    );
    Ok(())
}

/// The whitelisted tables, in the order they were added.
pub async fn whitelist(pool: &PgPool) -> Result<Vec<TableName>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as("select table_name from tables_to_sync order by id")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|(stored,)| {
            TableName::parse(&stored).map_err(|e| StoreError::BadWhitelistEntry {
                stored,
                reason: e.reason.to_owned(),
            })
        })
        .collect()
}

/// Adds a table after checking it exists locally with a primary key.
/// Returns false when it was already listed.
pub async fn add_table(
    pool: &PgPool,
    name: &TableName,
    creator: Option<&str>,
) -> Result<bool, StoreError> {
    if let Some(reason) = name.denied() {
        return Err(StoreError::Denied(reason));
    }
    TableShape::load(pool, name).await?;
    let done = sqlx::query(
        "insert into tables_to_sync (table_name, creator) values ($1, $2) on conflict (table_name) do nothing",
    )
    .bind(name.to_string())
    .bind(creator)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a table from the whitelist. Returns false when it was not listed.
pub async fn remove_table(pool: &PgPool, name: &TableName) -> Result<bool, StoreError> {
    let done = sqlx::query("delete from tables_to_sync where table_name = $1")
        .bind(name.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Listed tables with who added them and when.
pub async fn list_tables(
    pool: &PgPool,
) -> Result<Vec<(String, Option<String>, Option<String>)>, StoreError> {
    Ok(sqlx::query_as(
        "select table_name, creator, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         from tables_to_sync order by id",
    )
    .fetch_all(pool)
    .await?)
}

/// Writes a FAILED row to `data_sync_logs`.
pub async fn log_failure(
    pool: &PgPool,
    table: &TableName,
    archive_ref: &str,
    error_detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into data_sync_logs (table_name, status, rows_synced, archive_ref, error_detail) \
         values ($1, 'FAILED', 0, $2, $3)",
    )
    .bind(table.to_string())
    .bind(archive_ref)
    .bind(error_detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether this role may apply with `session_replication_role = replica`:
/// a superuser, or (PostgreSQL 15 and later) a role granted
/// `SET ON PARAMETER session_replication_role` — the way to run the
/// consumer without superuser (docs/data-protection.md).
pub async fn may_set_replica_role(pool: &PgPool) -> Result<bool, StoreError> {
    let superuser: bool =
        sqlx::query_scalar("select rolsuper from pg_roles where rolname = current_user")
            .fetch_one(pool)
            .await?;
    if superuser {
        return Ok(true);
    }
    let version: i32 = sqlx::query_scalar("select current_setting('server_version_num')::int")
        .fetch_one(pool)
        .await?;
    if version < 150_000 {
        return Ok(false);
    }
    Ok(
        sqlx::query_scalar("select has_parameter_privilege('session_replication_role', 'SET')")
            .fetch_one(pool)
            .await?,
    )
}

/// This database's destination id (see migration 0003).
pub async fn instance_id(pool: &PgPool) -> Result<String, StoreError> {
    Ok(sqlx::query_scalar("select id from syncdata.instance")
        .fetch_one(pool)
        .await?)
}

/// Per-table counts of applied rows, for `data_sync_metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub added: u64,
    pub updated: u64,
    pub deleted: u64,
}

impl Counts {
    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// Adds counts to the FREQ row of the period starting at `period_start`
/// (unix seconds). Many daemons add to the same row.
pub async fn add_freq_metrics(
    pool: &PgPool,
    table: &str,
    period_start: i64,
    period_secs: i64,
    counts: Counts,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into data_sync_metrics (table_name, period_start, period_end, period_type, \
                                        records_added, records_updated, records_deleted) \
         values ($1, to_timestamp($2), to_timestamp($2 + $3), 'FREQ', $4, $5, $6) \
         on conflict (table_name, period_start, period_type) do update set \
            records_added = data_sync_metrics.records_added + excluded.records_added, \
            records_updated = data_sync_metrics.records_updated + excluded.records_updated, \
            records_deleted = data_sync_metrics.records_deleted + excluded.records_deleted",
    )
    .bind(table)
    .bind(period_start)
    .bind(period_secs)
    .bind(counts.added as i64)
    .bind(counts.updated as i64)
    .bind(counts.deleted as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Recomputes the WEEK and MONTH roll-ups from the FREQ rows (idempotent).
pub async fn roll_up_metrics(pool: &PgPool) -> Result<(), StoreError> {
    for (period, step) in [("WEEK", "1 week"), ("MONTH", "1 month")] {
        let unit = period.to_lowercase();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into data_sync_metrics (table_name, period_start, period_end, period_type, \
                                            records_added, records_updated, records_deleted) \
             select table_name, date_trunc('{unit}', period_start), \
                    date_trunc('{unit}', period_start) + interval '{step}', '{period}', \
                    sum(records_added), sum(records_updated), sum(records_deleted) \
             from data_sync_metrics where period_type = 'FREQ' group by 1, 2 \
             on conflict (table_name, period_start, period_type) do update set \
                records_added = excluded.records_added, \
                records_updated = excluded.records_updated, \
                records_deleted = excluded.records_deleted"
        )))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Registers a running daemon.
pub async fn register_daemon(
    pool: &PgPool,
    id: &uuid_like::Id,
    host: &str,
) -> Result<(), StoreError> {
    sqlx::query("insert into syncdata.daemons (id, host, pid) values ($1::uuid, $2, $3)")
        .bind(&id.0)
        .bind(host)
        .bind(std::process::id() as i32)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn heartbeat(
    pool: &PgPool,
    id: &uuid_like::Id,
    applied: u64,
    errors: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "update syncdata.daemons set last_seen = now(), records_applied = $2, errors = $3 where id = $1::uuid",
    )
    .bind(&id.0)
    .bind(applied as i64)
    .bind(errors as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that the worker of `table` in daemon `id` ended unexpectedly
/// with `error` and is being restarted (see migration 0006).
pub async fn worker_restarted(
    pool: &PgPool,
    id: &uuid_like::Id,
    table: &str,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into syncdata.worker_restarts (daemon_id, table_name, restarts, last_error) \
         values ($1::uuid, $2, 1, $3) \
         on conflict (daemon_id, table_name) do update set \
         restarts = worker_restarts.restarts + 1, last_error = excluded.last_error, last_at = now()",
    )
    .bind(&id.0)
    .bind(table)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn daemon_stopped(pool: &PgPool, id: &uuid_like::Id) -> Result<(), StoreError> {
    sqlx::query(
        "update syncdata.daemons set stopped_at = now(), last_seen = now() where id = $1::uuid",
    )
    .bind(&id.0)
    .execute(pool)
    .await?;
    Ok(())
}

/// Daemon ids as text (uuid without a uuid crate).
pub mod uuid_like {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Id(pub String);

    impl Id {
        pub fn random() -> Id {
            let b: [u8; 16] = rand::random();
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Id(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
    }
}

/// Seconds a daemon may go without a heartbeat and still count as running.
pub const DAEMON_ALIVE_SECS: i64 = 20;
