//! The production (source) database: connecting, the checks every
//! source-side command makes before it relies on logical decoding
//! (`wal_level`, the output plugin, privileges, primary keys), and
//! `syncdata-producer setup-source`.
//!
//! Every failed check says what is wrong *and* the command that fixes it.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use syncdata_core::catalog;
use syncdata_core::config::Config;
use syncdata_core::table::{quote_ident, TableName};

/// What the source-side commands need from the configuration.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub url: String,
    pub slot: String,
    pub plugin: String,
    /// pgoutput's publication.
    pub publication: String,
}

/// PostgreSQL's built-in output plugin (see `archiver::pgoutput`).
pub const PGOUTPUT: &str = "pgoutput";
/// The wal2json extension (format-version 2).
pub const WAL2JSON: &str = "wal2json";
/// `source.plugin = "auto"` (the default): an existing slot's own plugin,
/// else [`plugin_for_new_slot`].
pub const AUTO: &str = "auto";

/// The plugin a slot about to be created gets. `auto` picks pgoutput (no
/// extension; NaN and ±Infinity arrive exact) when the tables are known,
/// because pgoutput sends only what its publication lists; with no table
/// list (every table of the database) it falls back to wal2json, with the
/// reason: a publication FOR ALL TABLES would make the source refuse
/// UPDATE and DELETE on any table without a replica identity.
pub fn plugin_for_new_slot(configured: &str, tables: &[TableName]) -> (String, Option<String>) {
    if configured != AUTO {
        return (configured.to_owned(), None);
    }
    if tables.is_empty() {
        (
            WAL2JSON.to_owned(),
            Some(
                "source.plugin = auto without a table list: using wal2json, which writes NaN and                  ±Infinity in numeric/float columns as null. Fix: list the tables (--tables or                  source.tables) to get pgoutput, which keeps them exact"
                    .to_owned(),
            ),
        )
    } else {
        (PGOUTPUT.to_owned(), None)
    }
}

impl SourceSettings {
    /// `--source` wins over `producer.source_url`.
    pub fn from_config(config: &Config, url: Option<String>) -> anyhow::Result<SourceSettings> {
        let url = url.or_else(|| config.producer.source_url.clone()).context(
            "no source database: pass --source postgres://USER@HOST/DB or set producer.source_url",
        )?;
        Ok(SourceSettings {
            url,
            slot: config.source.slot.clone(),
            plugin: config.source.plugin.clone(),
            publication: config.source.publication.clone(),
        })
    }
}

/// The URL without its password (userinfo or `password=`), for messages.
pub fn redact_url(url: &str) -> String {
    syncdata_core::redact::redact_url(url)
}

/// Connects to the source with settings that make wal2json's and COPY's
/// text output deterministic: UTC timestamps, ISO dates, hex bytea.
pub async fn connect(url: &str, application: &str) -> anyhow::Result<PgConnection> {
    let shown = redact_url(url);
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("invalid source URL {shown}"))?
        .application_name(application)
        .log_statements(tracing::log::LevelFilter::Trace);
    let mut conn = tokio::time::timeout(Duration::from_secs(30), options.connect())
        .await
        .map_err(|_| anyhow::anyhow!("connecting to the source database {shown} timed out"))?
        .with_context(|| format!("cannot connect to the source database {shown}"))?;
    sqlx::raw_sql(
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
         SET bytea_output = 'hex'; SET extra_float_digits = 1",
    )
    .execute(&mut conn)
    .await
    .context("cannot set the session settings on the source")?;
    Ok(conn)
}

/// `wal_level` must be `logical` for a logical replication slot.
pub async fn check_wal_level(conn: &mut PgConnection) -> anyhow::Result<()> {
    let level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(&mut *conn)
        .await?;
    if level != "logical" {
        bail!(
            "the source has wal_level = {level}; logical decoding needs wal_level = logical. \
             Fix: as a superuser run `ALTER SYSTEM SET wal_level = logical;` and restart \
             PostgreSQL (e.g. `sudo systemctl restart postgresql`); check \
             max_replication_slots >= 1 and max_wal_senders >= 1 at the same time"
        );
    }
    Ok(())
}

/// The role must be a superuser or have REPLICATION to use slots.
pub async fn check_replication_privilege(conn: &mut PgConnection) -> anyhow::Result<()> {
    let (user, superuser, replication): (String, bool, bool) = sqlx::query_as(
        "SELECT rolname::text, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !superuser && !replication {
        bail!(
            "role {user} may not use replication slots. Fix: as a superuser run \
             `ALTER ROLE {} WITH REPLICATION;`, or run `syncdata-producer setup-source \
             --create-user` as a superuser and connect as that user",
            quote_ident(&user)
        );
    }
    Ok(())
}

/// Major version and package name, for install hints.
async fn server_major(conn: &mut PgConnection) -> anyhow::Result<u32> {
    let num: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
        .fetch_one(&mut *conn)
        .await?;
    Ok(num.parse::<u32>().unwrap_or(0) / 10_000)
}

/// Turns "could not access file" (the plugin's shared library is missing)
/// into the fix.
async fn plugin_error(conn: &mut PgConnection, plugin: &str, err: sqlx::Error) -> anyhow::Error {
    let missing = err
        .as_database_error()
        .is_some_and(|e| e.code().as_deref() == Some("58P01"));
    if !missing {
        return anyhow::Error::new(err).context(format!("output plugin {plugin} failed"));
    }
    let major = server_major(conn).await.unwrap_or(0);
    let major = if major == 0 {
        "<major>".to_owned()
    } else {
        major.to_string()
    };
    anyhow::anyhow!(
        "the {plugin} output plugin is not installed on the source database server \
         (PostgreSQL: {}). Fix: install it on the database server, e.g. \
         `sudo apt-get install postgresql-{major}-wal2json` (Debian/Ubuntu) or \
         `sudo dnf install wal2json_{major}` (PGDG RPM); no restart is needed",
        err.as_database_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default()
    )
}

/// Proves the plugin loads (and accepts `options`) by starting a decoding
/// session on the existing slot that stops after its first WAL record.
pub async fn probe_slot(
    conn: &mut PgConnection,
    slot: &str,
    plugin: &str,
    options: &[String],
) -> anyhow::Result<()> {
    let probed = sqlx::query(
        "SELECT 1 FROM pg_logical_slot_peek_changes($1, '0/1'::pg_lsn, 1, VARIADIC $2::text[])",
    )
    .bind(slot)
    .bind(options)
    .fetch_all(&mut *conn)
    .await;
    match probed {
        Ok(_) => Ok(()),
        Err(err) => Err(plugin_error(conn, plugin, err).await),
    }
}

/// wal2json's option to write numbers as JSON strings: without it NaN and
/// ±Infinity (not JSON numbers) come out as null. wal2json 2.5 and older
/// do not know it and refuse to start with it.
pub const NUMERIC_AS_STRING: &str = "numeric-data-types-as-string";

/// Whether the slot's plugin accepts [`NUMERIC_AS_STRING`].
pub async fn supports_numeric_as_string(
    conn: &mut PgConnection,
    slot: &str,
) -> anyhow::Result<bool> {
    let probed = sqlx::query(
        "SELECT 1 FROM pg_logical_slot_peek_changes($1, '0/1'::pg_lsn, 1, \
         'format-version', '2', $2, '1')",
    )
    .bind(slot)
    .bind(NUMERIC_AS_STRING)
    .fetch_all(&mut *conn)
    .await;
    match probed {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e))
            if e.message().contains(NUMERIC_AS_STRING) && e.message().contains("unknown") =>
        {
            Ok(false)
        }
        Err(e) => Err(e).context("probing the slot's output plugin"),
    }
}

/// [`plugin_options`] for `tables` as the slot's plugin accepts them:
/// without [`NUMERIC_AS_STRING`] when it does not know that option, with a
/// warning saying what that costs and the fix.
pub async fn accepted_plugin_options(
    conn: &mut PgConnection,
    slot: &str,
    tables: &[TableName],
) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let mut options = plugin_options(tables);
    if supports_numeric_as_string(conn, slot).await? {
        return Ok((options, None));
    }
    if let Some(at) = options.iter().position(|o| o == NUMERIC_AS_STRING) {
        options.drain(at..at + 2);
    }
    let warning = format!(
        "this wal2json does not know {NUMERIC_AS_STRING} (wal2json 2.5 and older): it writes \
         NaN, Infinity and -Infinity in numeric and float columns as null, so through the \
         stream they arrive as NULL (a snapshot keeps them). Fix: install a wal2json that \
         supports {NUMERIC_AS_STRING}"
    );
    Ok((options, Some(warning)))
}

/// Tables of `publication` that are missing from it (all of `tables` when
/// it does not exist: `None`).
async fn publication_missing(
    conn: &mut PgConnection,
    publication: &str,
    tables: &[TableName],
) -> anyhow::Result<Option<Vec<TableName>>> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(publication)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        return Ok(None);
    }
    let listed: Vec<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
    )
    .bind(publication)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(
        tables
            .iter()
            .filter(|t| !listed.iter().any(|(s, n)| *s == t.schema && *n == t.table))
            .cloned()
            .collect(),
    ))
}

/// pgoutput sends what the publication holds: it must exist and hold every
/// archived table.
pub async fn require_publication(
    conn: &mut PgConnection,
    publication: &str,
    tables: &[TableName],
) -> anyhow::Result<()> {
    match publication_missing(conn, publication, tables).await? {
        None => bail!(
            "publication {publication} does not exist on the source (source.plugin = pgoutput \
             reads through it). Fix: run `syncdata-producer setup-source --create-slot --tables …`"
        ),
        Some(missing) if !missing.is_empty() => bail!(
            "publication {publication} lacks {}: their changes would not be sent. Fix: run \
             `syncdata-producer setup-source --create-slot --tables …` with every archived table",
            missing
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(_) => Ok(()),
    }
}

/// Creates the publication for `tables`, or adds the tables it lacks. Only
/// listed tables, never `FOR ALL TABLES`: a published table without a
/// replica identity makes the source refuse its UPDATEs and DELETEs.
async fn ensure_publication(
    conn: &mut PgConnection,
    publication: &str,
    tables: &[TableName],
    report: &mut Vec<String>,
) -> anyhow::Result<()> {
    let missing = publication_missing(conn, publication, tables).await?;
    let list = |ts: &[TableName]| ts.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    match missing {
        None => {
            if tables.is_empty() {
                bail!(
                    "source.plugin = pgoutput needs the tables to publish: pass --tables (or set \
                     source.tables). A publication FOR ALL TABLES would make the source refuse \
                     UPDATE and DELETE on tables without a replica identity"
                );
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(publication),
                list(tables)
            )))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("cannot create publication {publication}"))?;
            report.push(format!(
                "created: publication {publication} for {} table(s)",
                tables.len()
            ));
        }
        Some(missing) if !missing.is_empty() => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote_ident(publication),
                list(&missing)
            )))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("cannot add tables to publication {publication}"))?;
            report.push(format!(
                "ok: publication {publication}, added {} table(s)",
                missing.len()
            ));
        }
        Some(_) => report.push(format!("ok: publication {publication}")),
    }
    Ok(())
}

/// Proves the plugin loads by creating a temporary slot (dropped at once).
async fn probe_plugin_with_temporary_slot(
    conn: &mut PgConnection,
    plugin: &str,
) -> anyhow::Result<()> {
    let probe = format!("syncdata_probe_{}", std::process::id());
    let created = sqlx::query("SELECT pg_create_logical_replication_slot($1, $2, true)")
        .bind(&probe)
        .bind(plugin)
        .execute(&mut *conn)
        .await;
    match created {
        Ok(_) => {
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(&probe)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
        Err(err) => Err(plugin_error(conn, plugin, err).await),
    }
}

/// The slot as the server knows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: String,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<String>,
}

/// plugin, database, active_pid, confirmed_flush_lsn
type SlotRow = (Option<String>, Option<String>, Option<i32>, Option<String>);

pub async fn slot_info(conn: &mut PgConnection, slot: &str) -> anyhow::Result<Option<SlotInfo>> {
    let row: Option<SlotRow> = sqlx::query_as(
        "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(
        row.map(|(plugin, database, active_pid, confirmed_flush)| SlotInfo {
            plugin: plugin.unwrap_or_default(),
            database,
            active_pid,
            confirmed_flush,
        }),
    )
}

/// The slot must exist, be a logical slot of this database and use the
/// configured plugin.
pub async fn require_slot(
    conn: &mut PgConnection,
    slot: &str,
    plugin: &str,
) -> anyhow::Result<SlotInfo> {
    let info = slot_info(conn, slot).await?.with_context(|| {
        format!(
            "replication slot {slot} does not exist on the source. Fix: run \
             `syncdata-producer setup-source --create-slot`"
        )
    })?;
    check_slot_matches(conn, slot, plugin, &info).await?;
    Ok(info)
}

async fn check_slot_matches(
    conn: &mut PgConnection,
    slot: &str,
    plugin: &str,
    info: &SlotInfo,
) -> anyhow::Result<()> {
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut *conn)
        .await?;
    if info.database.as_deref() != Some(db.as_str()) {
        bail!(
            "replication slot {slot} belongs to database {:?}, not {db:?} (or is a physical slot). \
             Fix: connect to that database, or set source.slot to another name",
            info.database.as_deref().unwrap_or("<none>")
        );
    }
    let known = info.plugin == PGOUTPUT || info.plugin == WAL2JSON;
    if plugin == AUTO && !known {
        bail!(
            "replication slot {slot} uses output plugin {:?}; syncdata reads pgoutput or \
             wal2json. Fix: drop it (`SELECT pg_drop_replication_slot('{slot}')`) and run \
             `syncdata-producer setup-source --create-slot`, or set source.slot to another name",
            info.plugin
        );
    }
    if plugin != AUTO && info.plugin != plugin {
        bail!(
            "replication slot {slot} uses output plugin {:?}, not {plugin:?}. Fix: drop it \
             (`SELECT pg_drop_replication_slot('{slot}')`) and run `syncdata-producer \
             setup-source --create-slot`, or set source.slot to another name",
            info.plugin
        );
    }
    Ok(())
}

/// A table of the source: its columns and primary key.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub name: TableName,
    pub columns: Vec<SourceColumn>,
    /// Primary key columns in key order.
    pub key: Vec<String>,
    /// `reltuples`, when the table was ever analyzed.
    pub estimated_rows: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct SourceColumn {
    pub name: String,
    /// `pg_type.typcategory` of the column's (base) type: `N` numeric,
    /// `B` boolean, ...
    pub category: char,
    pub is_bytea: bool,
}

async fn check_replica_identity(conn: &mut PgConnection, name: &TableName) -> anyhow::Result<()> {
    let (ident, identity_is_pk): (String, Option<bool>) =
        sqlx::query_as(syncdata_core::table::REPLICA_IDENTITY_SQL)
            .bind(&name.schema)
            .bind(&name.table)
            .fetch_one(&mut *conn)
            .await?;
    match syncdata_core::table::replica_identity_problem(name, &ident, identity_is_pk) {
        Some(problem) => bail!("{problem}"),
        None => Ok(()),
    }
}

/// Reads a table's columns and primary key (through the one catalog reader,
/// [`catalog::table`]); errors clearly when the table does not exist, has no
/// primary key, or has a replica identity that loses changes
/// (`syncdata_core::table::replica_identity_problem`).
pub async fn source_table(
    conn: &mut PgConnection,
    name: &TableName,
) -> anyhow::Result<SourceTable> {
    let Some(def) = catalog::table(&mut *conn, name).await? else {
        bail!("table {name} does not exist on the source (or is not a table)");
    };
    if def.primary_key.is_empty() {
        bail!(
            "table {name} has no primary key: wal2json cannot identify its rows, so its UPDATEs \
             and DELETEs cannot be synced. Fix: add a primary key (`ALTER TABLE {} ADD PRIMARY \
             KEY (...)`), or leave the table out of --tables",
            name.quoted()
        );
    }
    check_replica_identity(conn, name).await?;
    Ok(SourceTable {
        name: name.clone(),
        // Generated columns are not replicated (wal2json leaves them out).
        columns: def
            .columns
            .into_iter()
            .filter(|c| !c.generated)
            .map(|c| SourceColumn {
                name: c.name,
                category: c.category,
                is_bytea: c.is_bytea,
            })
            .collect(),
        key: def.primary_key,
        estimated_rows: def.estimated_rows,
    })
}

/// Parses `a,b` lists (each entry a table name as `syncdata` accepts it).
pub fn parse_tables(list: &[String]) -> anyhow::Result<Vec<TableName>> {
    let mut out: Vec<TableName> = Vec::new();
    for entry in list {
        for part in split_list(entry) {
            let name = TableName::parse(&part)?;
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// Splits on commas outside double quotes; trims; drops empty parts.
fn split_list(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// What `setup-source` was asked to do.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    pub create_slot: bool,
    pub create_user: bool,
    pub user: String,
    /// Password for a created user (from SYNCDATA_USER_PASSWORD); none:
    /// authenticate it otherwise (certificates, pg_hba).
    pub password: Option<String>,
    pub tables: Vec<TableName>,
}

/// `syncdata-producer setup-source`: checks the source, then creates what
/// is missing. Idempotent: a second run changes nothing and says so.
/// Returns the lines of its report.
pub async fn setup(settings: &SourceSettings, opts: &SetupOptions) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    let mut conn = connect(&settings.url, "syncdata-setup-source").await?;
    let (version, db, user): (String, String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_database()::text, current_user::text",
    )
    .fetch_one(&mut conn)
    .await?;
    report.push(format!(
        "source: PostgreSQL {version}, database {db}, connected as {user}"
    ));
    check_wal_level(&mut conn).await?;
    report.push("ok: wal_level = logical".to_owned());
    let max_slots: String = sqlx::query_scalar("SELECT current_setting('max_replication_slots')")
        .fetch_one(&mut conn)
        .await?;
    if max_slots.trim() == "0" {
        bail!(
            "the source has max_replication_slots = 0. Fix: `ALTER SYSTEM SET \
             max_replication_slots = 10;` and restart PostgreSQL"
        );
    }
    check_replication_privilege(&mut conn).await?;
    report.push(format!("ok: {user} may use replication slots"));

    for table in &opts.tables {
        source_table(&mut conn, table).await?;
    }
    if !opts.tables.is_empty() {
        report.push(format!(
            "ok: {} table(s) exist with a primary key and a replica identity that carries it",
            opts.tables.len()
        ));
    }

    let slot = &settings.slot;
    let existing = slot_info(&mut conn, slot).await?;
    // An existing slot keeps its plugin; a new one gets the configured one
    // (`auto`: see plugin_for_new_slot).
    let plugin = match &existing {
        Some(info) => {
            check_slot_matches(&mut conn, slot, &settings.plugin, info).await?;
            info.plugin.clone()
        }
        None => {
            let (plugin, warning) = plugin_for_new_slot(&settings.plugin, &opts.tables);
            report.extend(warning.map(|w| format!("warning: {w}")));
            plugin
        }
    };
    let plugin = &plugin;
    if plugin == PGOUTPUT && (opts.create_slot || !opts.tables.is_empty()) {
        ensure_publication(&mut conn, &settings.publication, &opts.tables, &mut report).await?;
    }
    match existing {
        Some(info) => {
            match info.active_pid {
                Some(pid) => report.push(format!(
                    "ok: slot {slot} exists ({plugin}), in use by process {pid} (an archiver is running)"
                )),
                None if plugin == PGOUTPUT => report.push(format!(
                    "ok: slot {slot} exists ({plugin}), confirmed up to {}",
                    info.confirmed_flush.as_deref().unwrap_or("-")
                )),
                None => {
                    let (options, warning) = accepted_plugin_options(&mut conn, slot, &[]).await?;
                    probe_slot(&mut conn, slot, plugin, &options).await?;
                    report.extend(warning.map(|w| format!("warning: {w}")));
                    report.push(format!(
                        "ok: slot {slot} exists ({plugin} loads), confirmed up to {}",
                        info.confirmed_flush.as_deref().unwrap_or("-")
                    ));
                }
            }
        }
        None if opts.create_slot => {
            let created: Result<String, sqlx::Error> = sqlx::query_scalar(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, $2)",
            )
            .bind(slot)
            .bind(plugin)
            .fetch_one(&mut conn)
            .await;
            match created {
                Ok(lsn) => report.push(format!("created: slot {slot} ({plugin}) at {lsn}")),
                // A concurrent setup-source created it first.
                Err(e)
                    if e.as_database_error()
                        .is_some_and(|d| d.code().as_deref() == Some("42710")) =>
                {
                    report.push(format!("ok: slot {slot} exists"))
                }
                Err(e) => return Err(plugin_error(&mut conn, plugin, e).await),
            }
        }
        None => {
            probe_plugin_with_temporary_slot(&mut conn, plugin).await?;
            report.push(format!("ok: the {plugin} output plugin is installed"));
            report.push(format!(
                "missing: slot {slot}; run again with --create-slot to create it"
            ));
        }
    }

    if opts.create_user {
        create_user(&mut conn, &db, opts, &mut report).await?;
    }
    let _ = conn.close().await;
    Ok(report)
}

/// Creates (or completes) the archiver's role: LOGIN REPLICATION, CONNECT
/// on the database, SELECT on the listed tables (for `snapshot` and
/// `syncdata verify`).
async fn create_user(
    conn: &mut PgConnection,
    db: &str,
    opts: &SetupOptions,
    report: &mut Vec<String>,
) -> anyhow::Result<()> {
    let role = quote_ident(&opts.user);
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&opts.user)
            .fetch_one(&mut *conn)
            .await?;
    let verb = if exists { "ALTER" } else { "CREATE" };
    let no_privilege = |e: sqlx::Error| {
        let denied = e
            .as_database_error()
            .is_some_and(|d| d.code().as_deref() == Some("42501"));
        if denied {
            anyhow::anyhow!(
                "cannot {verb} ROLE {}: permission denied. Fix: run setup-source --create-user \
                 as a superuser (or a role with CREATEROLE)",
                opts.user
            )
        } else {
            anyhow::Error::new(e).context(format!("{verb} ROLE {} failed", opts.user))
        }
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{verb} ROLE {role} WITH LOGIN REPLICATION"
    )))
    .execute(&mut *conn)
    .await
    .map_err(no_privilege)?;
    if let Some(password) = &opts.password {
        // The verifier, computed here as psql's \password does: the
        // password itself never reaches the server, so no log and no
        // statistics view can hold it. Only base64, digits, '$' and ':'.
        let verifier =
            crate::scram::verifier(password).context("SYNCDATA_USER_PASSWORD cannot be used")?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER ROLE {role} PASSWORD '{verifier}'"
        )))
        .execute(&mut *conn)
        .await
        .map_err(no_privilege)?;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "GRANT CONNECT ON DATABASE {} TO {role}",
        quote_ident(db)
    )))
    .execute(&mut *conn)
    .await
    .map_err(no_privilege)?;
    for table in &opts.tables {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "GRANT USAGE ON SCHEMA {} TO {role}",
            quote_ident(&table.schema)
        )))
        .execute(&mut *conn)
        .await
        .map_err(no_privilege)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "GRANT SELECT ON TABLE {} TO {role}",
            table.quoted()
        )))
        .execute(&mut *conn)
        .await
        .map_err(no_privilege)?;
    }
    report.push(format!(
        "{}: role {} with LOGIN REPLICATION{}, CONNECT on {db}{}",
        if exists { "ok" } else { "created" },
        opts.user,
        if opts.password.is_some() {
            ", password set"
        } else {
            ""
        },
        if opts.tables.is_empty() {
            " (no --tables: grant SELECT on synced tables for snapshot and verify)".to_owned()
        } else {
            format!(", SELECT on {} table(s)", opts.tables.len())
        }
    ));
    Ok(())
}

/// The wal2json options every archiver read uses: format-version 2 with
/// each record carrying its LSN, primary key, types, xid and timestamp, and
/// the table filter pushed into the plugin.
pub fn plugin_options(tables: &[TableName]) -> Vec<String> {
    let mut options: Vec<String> = [
        ("format-version", "2"),
        ("include-lsn", "1"),
        ("include-pk", "1"),
        ("include-types", "1"),
        ("include-xids", "1"),
        ("include-timestamp", "1"),
        ("include-transaction", "1"),
        // NaN and ±Infinity are not JSON numbers: without this wal2json
        // writes them as null. The decoder turns the other numbers back
        // into bare JSON numbers (as the snapshot writes them).
        (NUMERIC_AS_STRING, "1"),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect();
    if !tables.is_empty() {
        options.push("add-tables".to_owned());
        options.push(add_tables_value(tables));
    }
    options
}

/// wal2json's `add-tables` list: `schema.table` entries separated by
/// commas, where a backslash escapes the next character. Every character
/// wal2json treats specially (`,` `.` `*` `\` and white space) is escaped.
pub fn add_tables_value(tables: &[TableName]) -> String {
    fn escape(part: &str, out: &mut String) {
        for c in part.chars() {
            if matches!(c, ',' | '.' | '*' | '\\') || c.is_whitespace() {
                out.push('\\');
            }
            out.push(c);
        }
    }
    let mut out = String::new();
    for (i, t) in tables.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape(&t.schema, &mut out);
        out.push('.');
        escape(&t.table, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_gives_new_slots_pgoutput_when_the_tables_are_known() {
        let t = vec![TableName::parse("public.a").unwrap()];
        assert_eq!(plugin_for_new_slot(AUTO, &t), (PGOUTPUT.to_owned(), None));
        let (plugin, warning) = plugin_for_new_slot(AUTO, &[]);
        assert_eq!(plugin, WAL2JSON);
        assert!(warning.unwrap().contains("NaN"));
        // An explicit choice is kept, silently.
        assert_eq!(
            plugin_for_new_slot(WAL2JSON, &t),
            (WAL2JSON.to_owned(), None)
        );
        assert_eq!(
            plugin_for_new_slot(PGOUTPUT, &[]),
            (PGOUTPUT.to_owned(), None)
        );
    }

    #[test]
    fn add_tables_escapes_what_wal2json_treats_specially() {
        let tables = parse_tables(&[
            "users,sales.orders".to_owned(),
            r#""odd.name, x""#.to_owned(),
            r#""*"."a\b""#.to_owned(),
        ])
        .unwrap();
        assert_eq!(tables.len(), 4);
        assert_eq!(
            add_tables_value(&tables),
            r"public.users,sales.orders,public.odd\.name\,\ x,\*.a\\b"
        );
    }

    #[test]
    fn table_lists_split_outside_quotes_and_dedupe() {
        let tables = parse_tables(&[" a , b".to_owned(), "a".to_owned(), String::new()]).unwrap();
        assert_eq!(
            tables,
            vec![TableName::new("public", "a"), TableName::new("public", "b")]
        );
        assert!(parse_tables(&["a.b.c".to_owned()]).is_err());
    }

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:<redacted>@h:5432/db?x=1"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
