//! The demo's default path: a real source database. `setup-source` creates
//! a wal2json slot, `archive` streams the source's changes into segment
//! files while a small SQL workload runs (inserts, updates, deletes; e-mail
//! addresses and names included), `run` sanitizes them with the rules file
//! and publishes, N × `syncdata start` apply them, and `syncdata verify`
//! must find source and local copy equal outside the sanitized columns.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sqlx::postgres::{PgConnectOptions, PgPool};
use syncdata_testkit::harness::{self, Proc};
use syncdata_testkit::workload::DEMO_DDL;

use super::{
    config_toml, metrics_summary, nats_auth_lines, path_str, pool, print_log_tail,
    recreate_database, redact, reset_streams, start, start_publish_and_apply, write_secret, Args,
    LOCAL_DB, RULES,
};

/// The demo's source ("production") database on the same server.
const SOURCE_DB: &str = "syncdata_demo_source";
/// The demo's replication slot.
const SLOT: &str = "syncdata_demo";
/// The columns the shipped rules change (mask or null): left out of the
/// comparison.
const SANITIZED: &str = "customers.email,customers.name,customers.bio,orders.note";

pub(crate) async fn run(args: Args) -> Result<bool> {
    std::fs::create_dir_all(&args.workdir)
        .with_context(|| format!("cannot create {}", args.workdir.display()))?;
    let workdir = args.workdir.canonicalize()?;
    let archive = workdir.join("archive");
    let bin_dir = harness::bin_dir();
    let producer_bin = harness::bin_in(&bin_dir, "syncdata-producer")?;
    let consumer_bin = harness::bin_in(&bin_dir, "syncdata")?;

    // 1. Databases: a slot left by an earlier run pins the source database.
    let base = PgConnectOptions::from_str(&args.pg_url).context("--pg-url is not a valid URL")?;
    let admin = pool(base.clone(), 2)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(&args.pg_url)))?;
    let wal_level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&admin)
        .await?;
    if wal_level != "logical" {
        bail!("the server has wal_level = {wal_level}; the demo's source needs logical");
    }
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = $1 AND NOT active",
    )
    .bind(SLOT)
    .execute(&admin)
    .await
    .context("cannot drop the previous run's replication slot")?;
    for db in [SOURCE_DB, LOCAL_DB] {
        recreate_database(&admin, db).await?;
    }
    admin.close().await;
    let source = pool(base.clone().database(SOURCE_DB), 4).await?;
    let local = pool(base.clone().database(LOCAL_DB), 4).await?;
    for (db, p) in [(SOURCE_DB, &source), (LOCAL_DB, &local)] {
        sqlx::raw_sql(DEMO_DDL)
            .execute(p)
            .await
            .with_context(|| format!("cannot create the demo tables in {db}"))?;
    }
    println!("databases {SOURCE_DB} (the source) and {LOCAL_DB} created with the demo schema");
    let source_url = url_with_database(&args.pg_url, SOURCE_DB)?;

    // 2. Config: the shared file plus the source, wal2json and the rules.
    let rules_path = workdir.join("rules.toml");
    std::fs::write(&rules_path, RULES)
        .with_context(|| format!("cannot write {}", rules_path.display()))?;
    let key_file = match &args.signing_key {
        Some(key) => Some(write_secret(&workdir, "signing.key", key)?),
        None => {
            println!("no signing key in the environment: messages go unsigned and unverified");
            None
        }
    };
    let consumer_auth = nats_auth_lines(
        &workdir,
        "consumer",
        args.nats_consumer_user.as_deref(),
        args.nats_consumer_password.as_deref(),
        key_file.as_deref(),
    )?;
    let producer_auth = nats_auth_lines(
        &workdir,
        "producer",
        args.nats_producer_user.as_deref(),
        args.nats_producer_password.as_deref(),
        key_file.as_deref(),
    )?;
    if consumer_auth.contains("allow_open") {
        println!("no NATS credentials in the environment: running against an open server (nats.allow_open)");
    }
    let mut text = config_toml(
        &base,
        &args.pg_url,
        &args.nats_url,
        &consumer_auth,
        &archive,
        &rules_path,
    )?;
    text = text.replacen(
        "\n[producer]\n",
        &format!(
            "\n[producer]\nsource_url = {}\nrescan_ms = 200\n",
            harness::toml_str(&source_url)
        ),
        1,
    );
    text += &format!(
        "\n[source]\nplugin = \"wal2json\"\nslot = \"{SLOT}\"\n\
         tables = [\"customers\", \"orders\", \"order_lines\"]\nsegment_max_age_ms = 500\n"
    );
    // A SQLite target: the consumers apply into <workdir>/local.db, its
    // tables created from the demo's DDL (docs/sqlite.md).
    let sqlite_file = (args.target == "sqlite").then(|| workdir.join("local.db"));
    if let Some(file) = &sqlite_file {
        for f in [
            file.clone(),
            file.with_extension("db-wal"),
            file.with_extension("db-shm"),
        ] {
            if f.exists() {
                std::fs::remove_file(&f)
                    .with_context(|| format!("cannot remove {}", f.display()))?;
            }
        }
        text += &format!(
            "\n[target]\nurl = {}\n",
            harness::toml_str(&format!("sqlite://{}", path_str(file)?))
        );
    }
    let ddl_path = workdir.join("schema.sql");
    std::fs::write(&ddl_path, DEMO_DDL)?;
    let ddl_arg = path_str(&ddl_path)?.to_owned();
    let mut add_args = vec!["add-tables"];
    if sqlite_file.is_some() {
        add_args.extend(["--create-from", ddl_arg.as_str()]);
    }
    add_args.extend(["customers", "orders", "order_lines"]);
    let config_path = workdir.join("config.toml");
    std::fs::write(&config_path, &text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = syncdata_core::config::Config::load_from(&config_path, |_| None)
        .context("the demo wrote a config file the project does not accept")?;
    println!(
        "config written to {} (source.plugin = \"wal2json\", producer.rules_file = {})",
        config_path.display(),
        path_str(&rules_path)?
    );
    let mut admin_config = config.clone();
    if let (Some(user), Some(password)) = (&args.nats_admin_user, &args.nats_admin_password) {
        admin_config.nats.user = Some(user.clone());
        admin_config.nats.password_file = None;
        admin_config.nats.password = Some(syncdata_core::config::Secret(password.clone()));
    }
    reset_streams(&admin_config).await?;
    if archive.exists() {
        std::fs::remove_dir_all(&archive)
            .with_context(|| format!("cannot clear {}", archive.display()))?;
    }
    std::fs::create_dir_all(&archive)?;
    // The producer's files carry its own NATS user.
    let producer_config = workdir.join("producer-base.toml");
    std::fs::write(
        &producer_config,
        text.replace(&consumer_auth, &producer_auth),
    )?;

    // 3. setup-source, then the long-running processes.
    let tables = "customers,orders,order_lines";
    let mut once = Vec::new();
    for (name, bin, argv, cfg) in [
        (
            "setup-source",
            &producer_bin,
            vec!["setup-source", "--create-slot", "--tables", tables],
            &producer_config,
        ),
        ("add-tables", &consumer_bin, add_args.clone(), &config_path),
    ] {
        let mut p = start(&workdir, bin, &argv, name, cfg)?;
        let status = p.finish(Duration::from_secs(60)).await?;
        if !status.success() {
            print_log_tail(p.log_path());
            bail!("`{}` failed: {status}", argv.join(" "));
        }
        println!("`{}`: done", argv.join(" "));
        once.push(p);
    }
    let plugin: String =
        sqlx::query_scalar("SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1")
            .bind(SLOT)
            .fetch_one(&source)
            .await
            .context("setup-source left no replication slot")?;
    if plugin != "wal2json" {
        bail!("setup-source created slot {SLOT} with {plugin}, not wal2json");
    }
    println!("replication slot {SLOT} uses {plugin}");
    let mut endpoints = Vec::new();
    let mut procs = Vec::new();
    procs.push(start(
        &workdir,
        &producer_bin,
        &["archive"],
        "archiver",
        &producer_config,
    )?);
    endpoints.extend(start_publish_and_apply(
        &mut procs,
        &workdir,
        &config_path,
        (&producer_bin, &consumer_bin),
        (&consumer_auth, &producer_auth),
        args.consumers,
    )?);
    println!(
        "started syncdata-producer archive, syncdata-producer run and {} syncdata consumer(s); logs in {}",
        args.consumers,
        workdir.display()
    );

    // 4. The workload on the source, 5. verify until equal.
    let started = Instant::now();
    let outcome = async {
        let changes = workload_sql(&source, args.changes).await?;
        println!("workload: {changes} row changes written to {SOURCE_DB} with SQL");
        let out = verify_until_equal(
            &workdir,
            &consumer_bin,
            &config_path,
            &source_url,
            &mut procs,
            args.timeout_secs,
        )
        .await?;
        Ok::<_, anyhow::Error>(out.map(|out| (changes, out)))
    }
    .await;
    let elapsed = started.elapsed();
    let metrics = metrics_summary(&endpoints).await;
    let warnings = harness::stop_all(&mut procs, Duration::from_secs(20)).await;
    for w in &warnings {
        println!("warning: {w}");
    }
    let (changes, out) = match outcome {
        Ok(Some(v)) => v,
        Ok(None) | Err(_) => {
            for p in once.iter().chain(&procs) {
                print_log_tail(p.log_path());
            }
            return match outcome {
                Err(e) => Err(e),
                _ => {
                    println!("FAILED: source and local copy still differ");
                    Ok(false)
                }
            };
        }
    };
    println!();
    print!("{out}");
    println!();
    match &metrics {
        Ok(line) => println!("{line}"),
        Err(e) => println!("warning: {e}"),
    }
    if sqlite_file.is_none() {
        show_sanitized(&source, &local).await?;
    }
    println!(
        "{changes} changes synced in {:.2} s from a real source through wal2json, the archiver, \
         the producer (sanitized) and {} consumer(s)",
        elapsed.as_secs_f64(),
        args.consumers
    );
    println!("OK: every table matches the source (sanitized columns excluded: {SANITIZED})");
    if let Some(file) = &sqlite_file {
        super::show_sqlite_query(
            file,
            "select c.id, c.email, c.name, c.balance, o.amount, o.tags, o.created_at \
             from customers c join orders o on o.customer_id = c.id order by o.id limit 5",
        );
    }
    Ok(true)
}

/// Inserts, updates and deletes on the demo tables in a few transactions,
/// about `changes` row changes in all; how many there were.
async fn workload_sql(source: &PgPool, changes: usize) -> Result<u64> {
    let n = (changes / 4).max(10) as i64;
    let statements: [(&str, i64); 7] = [
        (
            "INSERT INTO customers (id, email, name, bio, balance, updated_at) \
             SELECT g, 'customer' || g || '@mail.example', 'Customer ' || g, \
                    repeat('about me ', 20), g * 1.5, now() FROM generate_series(1, $1) g",
            n,
        ),
        (
            "INSERT INTO orders (id, customer_id, amount, status, note, tags, meta, created_at) \
             SELECT g, g, g * 10.25, 'new', 'call ' || g, ARRAY['web', 'eu'], \
                    jsonb_build_object('n', g), now() FROM generate_series(1, $1) g",
            n,
        ),
        (
            "INSERT INTO order_lines (order_id, line, sku, qty, price) \
             SELECT g, 1, 'SKU-' || g, (g % 9) + 1, 9.99 FROM generate_series(1, $1) g",
            n,
        ),
        (
            "UPDATE customers SET email = 'moved' || id || '@mail.example', balance = balance + 1 \
             WHERE id % 3 = 0 AND id <= $1",
            n,
        ),
        (
            "UPDATE orders SET status = 'paid', note = 'paid ' || id WHERE id % 2 = 0 AND id <= $1",
            n,
        ),
        (
            "DELETE FROM order_lines WHERE order_id % 5 = 0 AND order_id <= $1",
            n,
        ),
        ("DELETE FROM customers WHERE id % 7 = 0 AND id <= $1", n),
    ];
    let mut total = 0;
    for (sql, bind) in statements {
        total += sqlx::query(sql)
            .bind(bind)
            .execute(source)
            .await
            .with_context(|| format!("workload statement failed: {sql}"))?
            .rows_affected();
    }
    Ok(total)
}

/// Runs `syncdata verify` until it exits 0; its output, or None on timeout
/// or when a process exits early.
async fn verify_until_equal(
    workdir: &Path,
    consumer_bin: &Path,
    config: &Path,
    source_url: &str,
    procs: &mut [Proc],
    timeout_secs: u64,
) -> Result<Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let argv = [
        "verify",
        "--source",
        source_url,
        "--exclude-columns",
        SANITIZED,
    ];
    loop {
        let mut p = start(workdir, consumer_bin, &argv, "verify", config)?;
        let status = p.finish(Duration::from_secs(120)).await?;
        let out = p.log();
        if status.success() {
            return Ok(Some(out));
        }
        if let Some((name, status)) = procs
            .iter_mut()
            .find_map(|p| Some((p.name().to_owned(), p.exit_status()?)))
        {
            println!("FAILED: {name} exited early ({status})");
            return Ok(None);
        }
        if Instant::now() >= deadline {
            println!("no match within {timeout_secs} s; the last verify said:\n{out}");
            return Ok(None);
        }
        println!("waiting… verify: {}", out.lines().last().unwrap_or(""));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One customer's e-mail in the source and in the local copy.
async fn show_sanitized(source: &PgPool, local: &PgPool) -> Result<()> {
    let id: i64 = sqlx::query_scalar("SELECT min(id) FROM customers")
        .fetch_one(local)
        .await?;
    let q = "SELECT email, coalesce(name, 'NULL') FROM customers WHERE id = $1";
    let (src_email, src_name): (String, String) =
        sqlx::query_as(q).bind(id).fetch_one(source).await?;
    let (loc_email, loc_name): (String, String) =
        sqlx::query_as(q).bind(id).fetch_one(local).await?;
    if loc_email == src_email {
        bail!("customer {id}'s e-mail arrived unsanitized");
    }
    println!(
        "sanitized: customer {id} email {src_email:?} -> {loc_email:?}, name {src_name:?} -> {loc_name}"
    );
    Ok(())
}

/// `url` naming database `db` instead (query parameters kept).
fn url_with_database(url: &str, db: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("--pg-url is not a URL")?;
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out += "?";
        out += q;
    }
    Ok(out)
}
