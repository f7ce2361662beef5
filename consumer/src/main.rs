//! `syncdata`: the consumer-side binary. Thin: parses the command line and
//! calls the command's module under `syncdata_consumer::cmd`; the shell
//! (flags, config, logging, signals, errors) is `syncdata_core::cli`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use syncdata_consumer::{cmd, daemon};
use syncdata_core::cli::{self, GlobalArgs, Kind};
use syncdata_core::config::Role;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "syncdata",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("SYNCDATA_GIT_REV"), ")"),
    about = "Keep chosen tables of a local PostgreSQL in step with production"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add tables to the whitelist (each must exist locally with a primary key).
    AddTables {
        #[arg(required = true)]
        tables: Vec<String>,
        /// Create each table missing locally from production's definition
        /// as the stream carries it (docs/schema.md).
        #[arg(long)]
        create: bool,
        /// SQLite target: create the tables first from this PostgreSQL DDL
        /// file (e.g. `pg_dump --schema-only`), under the type mapping of
        /// docs/sqlite.md.
        #[arg(long, value_name = "FILE.sql")]
        create_from: Option<std::path::PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare local tables with production's definitions in the stream, and migrate them.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// List the whitelisted tables.
    ListTables {
        #[arg(long)]
        json: bool,
    },
    /// Remove tables from the whitelist (local rows stay).
    RemoveTables {
        #[arg(required = true)]
        tables: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create or upgrade syncdata's own tables in the local database.
    Migrate,
    /// Run the sync daemon in the foreground (SIGINT/SIGTERM stop it gracefully).
    Start,
    /// Stop the running daemons of this database, here and on other machines.
    Stop {
        /// How long to wait for in-flight batches, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show sync status: the daemons, and per table pending, lag and dead letters.
    Status {
        #[arg(long)]
        json: bool,
        /// Exit 2 when anything needs attention (no daemon, NATS not
        /// reachable, a table halted at the producer, with dead letters,
        /// stopped or waiting for data), else 0; 1 when the status cannot be read.
        #[arg(long)]
        check: bool,
    },
    /// Empty a table locally and replay its whole history from the stream.
    Resync {
        table: String,
        /// Return at once instead of showing progress until done.
        #[arg(long)]
        no_wait: bool,
        /// Confirm: the table is emptied before its history is replayed.
        #[arg(long)]
        yes: bool,
        /// Resync with no daemon running: empty now, replay on the next `start`.
        #[arg(long)]
        offline: bool,
    },
    /// Compare local tables with the source, chunk by chunk over the primary
    /// key, and list the keys that differ. Exit status 0 when equal, 1 when
    /// a table differs, 2 on an error (a table that cannot be compared
    /// included).
    Verify {
        /// Tables to compare (default: every whitelisted table).
        tables: Vec<String>,
        /// The source (production) database URL (default: verify.source_url,
        /// else producer.source_url).
        #[arg(long, value_name = "URL")]
        source: Option<String>,
        /// Columns sanitization changes, left out of the comparison: col or table.col, comma separated.
        #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
        exclude_columns: Vec<String>,
        /// Differing keys listed per table, at most.
        #[arg(long, default_value_t = 20)]
        max_rows: usize,
        /// Keys per compared chunk.
        #[arg(long, default_value_t = cmd::verify::DEFAULT_CHUNK_ROWS)]
        chunk_rows: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Integrity of the local copy: orphans (foreign keys to rows missing
    /// locally), duplicates on unenforced unique constraints, NOT NULL and
    /// CHECK violations, against local and production constraints. Exit
    /// status 0 only when clean.
    Check {
        /// Tables to check (default: every whitelisted table).
        tables: Vec<String>,
        /// The source (production) database URL, for production's
        /// constraints (default: verify.source_url, else producer.source_url;
        /// none: local constraints only).
        #[arg(long, value_name = "URL")]
        source: Option<String>,
        /// Sample keys listed per finding.
        #[arg(long, default_value_t = 5)]
        samples: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// What the sync did over a period, per table: records applied by op,
    /// superseded deliveries, parked rows, deletes of missing rows,
    /// failures, dead letters, lag and freshness (and row drift with
    /// --source); as text, JSON or a self-contained HTML page.
    Report {
        /// Tables to report on (default: every whitelisted table).
        tables: Vec<String>,
        /// The period, back from now: 30m, 24h, 7d, …
        #[arg(long, default_value = "24h")]
        since: String,
        /// The source (production) database URL: adds row drift (source
        /// rows minus local rows).
        #[arg(long, value_name = "URL")]
        source: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Print a self-contained HTML page (a chart per table).
        #[arg(long)]
        html: bool,
    },
    /// Empty every synced table and reset its bookkeeping.
    Clear {
        #[arg(long)]
        yes: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script (bash, zsh, fish, elvish,
    /// powershell): `syncdata completions bash > ~/.local/share/bash-completion/completions/syncdata`.
    Completions {
        #[arg(value_enum)]
        shell: cli::Shell,
    },
    /// Print the man page (roff: `syncdata man | man -l -`); with --dir,
    /// write one page per command into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Dead letters: records that failed permanently.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// The stream's newest definition vs the local table, one line per
    /// difference (exit 1 when any table differs, 2 on error).
    Diff {
        /// Tables to compare (default: every whitelisted table).
        tables: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// The SQL that brings the local tables in line (only the safe part
    /// unless --allow-destructive); runs it unless --dry-run.
    Migrate {
        /// Tables to migrate (default: every whitelisted table).
        tables: Vec<String>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        allow_destructive: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (file plus environment) and print it, secrets redacted.
    Check,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters.
    List {
        #[arg(long)]
        table: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its record.
    Show { id: u64 },
    /// Apply dead letters to this database again, through the version guard
    /// (all, one table, or one ID); those that apply are removed.
    Replay {
        #[arg(long)]
        table: Option<String>,
        id: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters for good (all, one table, or one ID).
    Purge {
        #[arg(long)]
        table: Option<String>,
        id: Option<u64>,
        #[arg(long)]
        yes: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy the dead letters of the old shared layout into this database's.
    Migrate {
        /// Then delete the old ones (when every database has migrated).
        #[arg(long)]
        remove_old: bool,
    },
}

async fn dispatch(global: &GlobalArgs, command: Command) -> anyhow::Result<()> {
    let config = cli::load_config(global, Role::Consumer)?;
    let command = match dispatch_either(&config, command).await {
        Ok(done) => return done,
        Err(command) => command,
    };
    if let Some(target) = config.sqlite_target() {
        return dispatch_sqlite(config, target, command).await;
    }
    match command {
        Command::AddTables {
            create_from: Some(_),
            ..
        } => anyhow::bail!("--create-from is for a SQLite target (docs/sqlite.md)"),
        Command::AddTables {
            tables,
            create,
            json,
            ..
        } => cmd::add_tables::run(&config, &tables, create, json).await,
        Command::Schema {
            command: SchemaCommand::Diff { tables, json },
        } => match cmd::schema::diff(&config, &tables, json).await? {
            0 => Ok(()),
            code => Err(cli::Exit::silent(code).into()),
        },
        Command::Schema {
            command:
                SchemaCommand::Migrate {
                    tables,
                    dry_run,
                    allow_destructive,
                },
        } => cmd::schema::migrate(&config, &tables, dry_run, allow_destructive).await,
        Command::Migrate => cmd::migrate::run(&config).await,
        Command::ListTables { json } => cmd::list_tables::run(&config, json).await,
        Command::RemoveTables { tables, json } => {
            cmd::remove_tables::run(&config, &tables, json).await
        }
        Command::Stop { timeout, json } => {
            cmd::stop::run(&config, std::time::Duration::from_secs(timeout), json).await
        }
        Command::Status { json, check } => match cmd::status::run(&config, json, check).await? {
            0 => Ok(()),
            code => Err(cli::Exit::silent(code).into()),
        },
        Command::Resync {
            table,
            no_wait,
            yes,
            offline,
        } => cmd::resync::run(&config, &table, !no_wait, yes, offline).await,
        Command::Verify {
            tables,
            source,
            exclude_columns,
            max_rows,
            chunk_rows,
            json,
        } => {
            let args = cmd::verify::VerifyArgs {
                tables,
                source,
                exclude_columns,
                max_rows,
                chunk_rows,
                json,
            };
            cmd::verify::run(&config, args).await
        }
        Command::Clear { yes, json } => cmd::clear::run(&config, yes, json).await,
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::Config { .. }
        | Command::Dlq { .. }
        | Command::Report { .. }
        | Command::Check { .. } => {
            unreachable!("handled by dispatch_either")
        }
        Command::Start => {
            let token = CancellationToken::new();
            cli::cancel_on_signals(token.clone())
                .map_err(|e| anyhow::anyhow!("cannot install the signal handlers: {e}"))?;
            daemon::run(config, token).await
        }
    }
}

/// `dlq …`, on either target: the dead letters are NATS's, the local store
/// (whitelist, instance, the engine a replay applies through) the target's.
async fn dlq(config: &syncdata_core::config::Config, command: DlqCommand) -> anyhow::Result<()> {
    use cmd::dlq::{self, Selection};
    match command {
        DlqCommand::List { table, json } => {
            dlq::list(config, Selection::from_args(table, None)?, json).await
        }
        DlqCommand::Show { id } => dlq::show(config, id).await,
        DlqCommand::Replay { table, id, json } => {
            dlq::replay(config, Selection::from_args(table, id)?, json).await
        }
        DlqCommand::Purge {
            table,
            id,
            yes,
            json,
        } => dlq::purge(config, Selection::from_args(table, id)?, yes, json).await,
        DlqCommand::Migrate { remove_old } => dlq::migrate(config, remove_old).await,
    }
}

/// The commands that read and write the local store through `LocalStore`
/// and so work alike on either target; any other command is handed back.
async fn dispatch_either(
    config: &syncdata_core::config::Config,
    command: Command,
) -> Result<anyhow::Result<()>, Command> {
    Ok(match command {
        Command::Config {
            command: ConfigCommand::Check,
        } => cmd::config::check(config),
        Command::Dlq { command } => dlq(config, command).await,
        Command::Report {
            tables,
            since,
            source,
            json,
            html,
        } => {
            let args = cmd::report::ReportArgs {
                tables,
                since,
                json,
                html,
                source,
            };
            cmd::report::run(config, args).await
        }
        Command::Check {
            tables,
            source,
            samples,
            json,
        } => {
            let args = cmd::check::CheckArgs {
                tables,
                source,
                samples,
                json,
            };
            cmd::check::run(config, args).await
        }
        other => return Err(other),
    })
}

/// The commands against a SQLite target (`target = "sqlite:///…"`).
async fn dispatch_sqlite(
    config: syncdata_core::config::Config,
    target: syncdata_core::target::SqliteTarget,
    command: Command,
) -> anyhow::Result<()> {
    use syncdata_consumer::sqlite_cmd as sq;
    match command {
        Command::AddTables {
            tables,
            create,
            create_from,
            json,
        } => {
            sq::add_tables(
                &config,
                &target,
                &tables,
                create,
                create_from.as_deref(),
                json,
            )
            .await
        }
        Command::ListTables { json } => sq::list_tables(&target, json).await,
        Command::RemoveTables { tables, json } => sq::remove_tables(&target, &tables, json).await,
        Command::Migrate => sq::open(&target).await.map(|_| ()),
        Command::Start => {
            let token = CancellationToken::new();
            cli::cancel_on_signals(token.clone())
                .map_err(|e| anyhow::anyhow!("cannot install the signal handlers: {e}"))?;
            sq::start(config, target, token).await
        }
        Command::Stop { timeout, json } => {
            sq::stop(
                &config,
                &target,
                std::time::Duration::from_secs(timeout),
                json,
            )
            .await
        }
        Command::Status { json, check } => match sq::status(&config, &target, json, check).await? {
            0 => Ok(()),
            code => Err(cli::Exit::silent(code as u8).into()),
        },
        Command::Resync { table, yes, .. } => sq::resync(&config, &target, &table, yes).await,
        Command::Clear { yes, json } => sq::clear(&target, yes, json).await,
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::Config { .. }
        | Command::Dlq { .. }
        | Command::Report { .. }
        | Command::Check { .. } => {
            unreachable!("handled by dispatch_either")
        }
        Command::Verify {
            tables,
            source,
            exclude_columns,
            max_rows,
            json,
            ..
        } => {
            sq::verify(
                &config,
                &target,
                &tables,
                source,
                &exclude_columns,
                max_rows,
                json,
            )
            .await
        }
        Command::Schema {
            command: SchemaCommand::Diff { tables, json },
        } => match syncdata_consumer::sqlite_schema::diff(&config, &target, &tables, json).await? {
            0 => Ok(()),
            code => Err(cli::Exit::silent(code).into()),
        },
        Command::Schema {
            command:
                SchemaCommand::Migrate {
                    tables,
                    dry_run,
                    allow_destructive,
                },
        } => {
            syncdata_consumer::sqlite_schema::migrate(
                &config,
                &target,
                &tables,
                dry_run,
                allow_destructive,
            )
            .await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The runtime's threads come from the configuration
    // (`consumer.worker_threads`) when it loads; a configuration that does
    // not load is reported by the command itself.
    let threads =
        cli::load_config_quietly(&cli.global, Role::Consumer).map_or(1, |c| c.worker_threads());
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(Cli { global, command }: Cli) -> ExitCode {
    // Generated from the command-line definition; need no configuration.
    match &command {
        Command::Completions { shell } => {
            let result = cli::print_completions(Cli::command(), *shell).map_err(Into::into);
            return cli::finish(result, &global, Kind::Command);
        }
        Command::Man { dir } => {
            let result = cli::man_pages(Cli::command(), dir.as_deref());
            return cli::finish(result, &global, Kind::Command);
        }
        _ => {}
    }
    let kind = match command {
        Command::Start => Kind::Daemon,
        _ => Kind::Command,
    };
    // verify: 1 means "differs", so its errors exit 2.
    let error_code = match command {
        Command::Verify { .. } => 2,
        Command::Schema {
            command: SchemaCommand::Diff { .. },
        } => 2,
        _ => 1,
    };
    cli::init_logging(&global, kind);
    let result = dispatch(&global, command).await;
    cli::finish_with(result, &global, kind, error_code)
}
