//! A micro-benchmark of the PostgreSQL apply path: applies pgbench-shaped
//! batches straight through the engine (no NATS) and reports, per phase,
//! records/s and — when `pg_stat_statements` is preloaded on the server —
//! the statements that took the time.
//!
//! ```text
//! cargo run --release -p syncdata-consumer --example apply_bench -- \
//!     postgres://postgres@127.0.0.1:5432/postgres [rows] [batch sizes, comma-separated]
//! ```
//!
//! It creates a database of its own per run (`apply_bench_<pid>_<n>`) and
//! drops it afterwards. Each batch size runs three times, each on a fresh
//! copy of one template database, in alternating order: `before` (every
//! write through `unnest`, the planner free to choose its joins), `unnest`
//! (hash and merge joins off) and `copy` (every write through a staging
//! table, hash and merge joins off).
//!
//! Phases, each over `rows` keys in batches of the given size:
//! - `insert`: INSERTs of new keys (bookkeeping rows inserted, rows upserted);
//! - `update`: whole-row UPDATEs of every key (bookkeeping locked, read and
//!   updated; rows updated by key);
//! - `delete`: DELETEs of every key (rows deleted, tombstones written).

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use syncdata_consumer::apply::{Engine, Incoming, PgTarget};
use syncdata_consumer::store;
use syncdata_core::record::Record;
use syncdata_core::table::TableName;

const DDL: &str =
    "create table pgbench_accounts (aid int primary key, bid int, abalance int, filler char(84))";

/// Rows (and their bookkeeping) in the table before the phases run, so the
/// statements meet a table of realistic size.
const BACKGROUND: usize = 1_000_000;

/// The keys of a phase: new keys after the background ones for INSERT; a
/// spread-out permutation of the background keys for UPDATE and DELETE.
fn key(op: &str, i: usize) -> usize {
    if op == "INSERT" {
        BACKGROUND + i + 1
    } else {
        (i * 7919) % BACKGROUND + 1
    }
}

fn records(op: &str, rows: usize, lsn_base: u64) -> Vec<Record> {
    let filler = " ".repeat(84);
    (0..rows)
        .map(|i| {
            let aid = key(op, i);
            let lsn = lsn_base + i as u64 * 64;
            let line = match op {
                "DELETE" => format!(
                    r#"{{"table":"pgbench_accounts","op":"DELETE","old_keys":{{"aid":{aid}}},"lsn":"0/{lsn:X}","seq":0}}"#
                ),
                _ => format!(
                    r#"{{"table":"pgbench_accounts","op":"{op}","data":{{"aid":{aid},"bid":{},"abalance":{},"filler":"{filler}"}},"lsn":"0/{lsn:X}","seq":0}}"#,
                    aid / 100_000 + 1,
                    (lsn % 10_000) as i64 - 5_000,
                ),
            };
            Record::parse(line.as_bytes()).expect("record parses")
        })
        .collect()
}

async fn stats_reset(pool: &PgPool, on: bool) {
    if on {
        sqlx::query("select pg_stat_statements_reset()")
            .execute(pool)
            .await
            .expect("pg_stat_statements_reset");
    }
}

/// The statements of the phase by total time: calls, total ms, rows, text.
async fn stats(pool: &PgPool, on: bool) -> Vec<(i64, f64, i64, String)> {
    if !on {
        return Vec::new();
    }
    sqlx::query_as(
        "select calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) \
         from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database()) \
         and query not like '%pg_stat_statements%' order by total_exec_time desc limit 8",
    )
    .fetch_all(pool)
    .await
    .expect("pg_stat_statements")
}

async fn phase(
    engine: &Engine<PgTarget>,
    pool: &PgPool,
    stats_on: bool,
    records: &[Record],
    batch: usize,
) -> (Duration, Vec<(i64, f64, i64, String)>) {
    let table = TableName::new("public", "pgbench_accounts");
    stats_reset(pool, stats_on).await;
    let start = Instant::now();
    for chunk in records.chunks(batch) {
        let incoming: Vec<Incoming> = chunk
            .iter()
            .map(|r| Incoming {
                record: r,
                fallback_seq: 0,
            })
            .collect();
        let report = engine
            .apply_batch(&table, &incoming, "bench")
            .await
            .expect("batch applies");
        assert_eq!(report.applied as usize, chunk.len(), "every record applies");
    }
    let took = start.elapsed();
    (took, stats(pool, stats_on).await)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let admin_url = args
        .get(1)
        .expect("usage: apply_bench URL [rows] [batches]");
    let rows: usize = args.get(2).map_or(100_000, |s| s.parse().expect("rows"));
    let batches: Vec<usize> = args
        .get(3)
        .map_or("100,1000,10000", String::as_str)
        .split(',')
        .map(|s| s.parse().expect("batch size"))
        .collect();
    let mut admin = PgConnection::connect(admin_url).await.expect("connect");
    let stats_on: bool = sqlx::query_scalar(
        "select current_setting('shared_preload_libraries') like '%pg_stat_statements%'",
    )
    .fetch_one(&mut admin)
    .await
    .expect("shared_preload_libraries");
    if !stats_on {
        eprintln!("pg_stat_statements is not preloaded: timings only");
    }
    // `<base>/<database>[?<query>]`: the runs' databases replace <database>.
    let (path, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let base = path.rsplit_once('/').expect("URL with a database").0;
    let url_of = |db: &str| {
        if query.is_empty() {
            format!("{base}/{db}")
        } else {
            format!("{base}/{db}?{query}")
        }
    };
    let template = format!("apply_bench_{}_template", std::process::id());
    make_template(&mut admin, &url_of(&template), &template, stats_on).await;
    let mut run = 0;
    for &batch in &batches {
        // Alternate which variant runs first from one batch size to the next.
        // (name, copy_from, index_joins_from): the path before this
        // benchmark, unnest with index joins, COPY with index joins.
        let mut order = [
            ("before", usize::MAX, usize::MAX),
            ("unnest", usize::MAX, 1),
            ("copy", 1, 1),
        ];
        if batches.iter().position(|&b| b == batch).unwrap() % 2 == 1 {
            order.reverse();
        }
        for (variant, copy_from, index_joins_from) in order {
            run += 1;
            let name = format!("apply_bench_{}_{run}", std::process::id());
            sqlx::query(AssertSqlSafe(format!(
                "create database {name} template {template}"
            )))
            .execute(&mut admin)
            .await
            .expect("create database");
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect(&url_of(&name))
                .await
                .expect("connect to the bench database");
            let engine = Engine::with_target(
                PgTarget::new(pool.clone(), true)
                    .with_copy_from(copy_from)
                    .with_index_joins_from(index_joins_from),
            );
            for (op, lsn_base) in [
                ("INSERT", 0x100_0000),
                ("UPDATE", 0x1000_0000),
                ("DELETE", 0x2000_0000),
            ] {
                let recs = records(op, rows, lsn_base);
                let (took, top) = phase(&engine, &pool, stats_on, &recs, batch).await;
                println!(
                    "{variant:7} batch {batch:6} {op:6} {rows} records in {:.3} s = {:.0} records/s",
                    took.as_secs_f64(),
                    rows as f64 / took.as_secs_f64()
                );
                for (calls, ms, n, q) in top {
                    println!("    {calls:6} calls {ms:9.1} ms {n:8} rows  {q}");
                }
            }
            pool.close().await;
            sqlx::query(AssertSqlSafe(format!("drop database {name}")))
                .execute(&mut admin)
                .await
                .expect("drop database");
        }
    }
    sqlx::query(AssertSqlSafe(format!("drop database {template}")))
        .execute(&mut admin)
        .await
        .expect("drop database");
}

/// The database every run starts from: the bookkeeping schema and the
/// table with its background rows, each with its bookkeeping row.
async fn make_template(admin: &mut PgConnection, url: &str, name: &str, stats_on: bool) {
    sqlx::query(AssertSqlSafe(format!("create database {name}")))
        .execute(&mut *admin)
        .await
        .expect("create database");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to the template");
    store::MIGRATOR.run(&pool).await.expect("migrations");
    sqlx::raw_sql(DDL).execute(&pool).await.expect("ddl");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "insert into pgbench_accounts select g, g / 100000 + 1, 0, '' from generate_series(1, {BACKGROUND}) g;
         insert into syncdata.table_state (table_name) values ('pgbench_accounts');
         insert into syncdata.row_state (table_id, key, state, lsn, seq)
           select (select id from syncdata.table_state), g::text, 'L', 1, 0 from generate_series(1, {BACKGROUND}) g;"
    )))
    .execute(&pool)
    .await
    .expect("background rows");
    for sql in [
        "vacuum analyze pgbench_accounts",
        "vacuum analyze syncdata.row_state",
    ] {
        sqlx::raw_sql(sql).execute(&pool).await.expect("vacuum");
    }
    if stats_on {
        sqlx::query("create extension if not exists pg_stat_statements")
            .execute(&pool)
            .await
            .expect("create extension");
    }
    pool.close().await;
}
