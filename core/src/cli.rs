//! The command-line shell both binaries share: global flags, configuration
//! loading, logging, signals, pipe-safe output and the error reporter.
//!
//! Two rules hold for everything here:
//! - Nothing panics or stops because stderr or stdout is closed: a log line
//!   to a closed stderr is dropped, output to a closed stdout ends the
//!   command cleanly ([`OutputError::Closed`], exit status 0). So
//!   `syncdata-producer run 2>&1 | tee log` followed by Ctrl-C (which ends
//!   `tee` first) still stops the producer.
//! - The first SIGINT or SIGTERM cancels the command's token (a graceful
//!   stop, exit status 0); the second exits at once with status 130.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Role, CONFIG_ENV};

/// The flags every command of both binaries takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML) [default: the DATA_SYNC_CONFIG environment variable].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (-v info, -vv debug, -vvv trace).
    ///
    /// Commands log warnings and errors only, daemons also info; RUST_LOG,
    /// when set, decides instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q errors only, -qq nothing).
    #[arg(
        short,
        long,
        global = true,
        action = clap::ArgAction::Count,
        conflicts_with = "verbose"
    )]
    pub quiet: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What kind of command runs: daemons log at `info` by default, every
/// other command at `warn` (its output is its result, not its log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Command,
    Daemon,
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The log filter for `kind` and the -v/-q counts when RUST_LOG is unset.
/// PostgreSQL's notices ("relation already exists, skipping") stay out
/// below debug.
pub fn default_filter(kind: Kind, verbose: u8, quiet: u8) -> String {
    let base: i32 = match kind {
        Kind::Command => 2,
        Kind::Daemon => 3,
    };
    let level = (base + i32::from(verbose) - i32::from(quiet)).clamp(0, 5) as usize;
    if level < 4 {
        format!("{},sqlx::postgres::notice=warn", LEVELS[level])
    } else {
        LEVELS[level].to_owned()
    }
}

/// Colours only on a terminal, and never when `NO_COLOR` is set to
/// anything non-empty (no-color.org).
pub fn colour_wanted(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global log subscriber: stderr, text or JSON, the level from
/// RUST_LOG or else [`default_filter`]. Writes to a closed stderr are
/// dropped, never reported (reporting them would itself write to stderr and
/// panic the writing task).
pub fn init_logging(args: &GlobalArgs, kind: Kind) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::new(default_filter(kind, args.verbose, args.quiet)),
    };
    let ansi = colour_wanted(
        io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    if args.log_format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads the configuration for `role` from `--config`, else from
/// `DATA_SYNC_CONFIG`, and logs its warnings (deprecated keys).
pub fn load_config(args: &GlobalArgs, role: Role) -> Result<Config, ConfigError> {
    let config = load_config_quietly(args, role)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

/// [`load_config`] without logging its warnings (before logging is set up).
pub fn load_config_quietly(args: &GlobalArgs, role: Role) -> Result<Config, ConfigError> {
    match &args.config {
        Some(path) => Config::load_for(role, path, |k| std::env::var(k).ok()),
        None => {
            let path = std::env::var_os(CONFIG_ENV).ok_or(ConfigError::NoPath)?;
            Config::load_for(role, path.as_ref(), |k| std::env::var(k).ok())
        }
    }
}

/// Cancels `token` on the first SIGINT or SIGTERM; the second exits at once
/// with status 130. Must run inside a tokio runtime.
pub fn cancel_on_signals(token: CancellationToken) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down (signal again to exit at once)");
        token.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(130);
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// A failed write of a command's output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The reader went away (`… | head`): the command ends, successfully.
    #[error("standard output closed")]
    Closed,
    #[error("cannot write to standard output: {0}")]
    Io(#[source] io::Error),
}

/// Writes to stdout (what [`out!`](crate::out) and
/// [`outln!`](crate::outln) expand to).
pub fn write_out(args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => OutputError::Closed,
            _ => OutputError::Io(e),
        })
}

/// `print!` that returns [`OutputError`] instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(::std::format_args!($($arg)*))
    };
}

/// `println!` that returns [`OutputError`] instead of panicking.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::write_out(::std::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_out(::std::format_args!("{}\n", ::std::format_args!($($arg)*)))
    };
}

/// `eprintln!` that never fails nor panics: a line for the operator
/// (warnings, progress) is dropped when stderr is closed.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!($crate::cli::stderr(), $($arg)*);
    }};
}

/// Stderr whose failures are swallowed: for logs and progress lines, which
/// must never stop the program.
pub fn stderr() -> LossyStderr {
    LossyStderr
}

pub struct LossyStderr;

/// The log writer: each log line passes through [`crate::redact::redact`]
/// on its way to a lossy stderr, so a URL or setting with a credential in an
/// error message never reaches a log, whichever code path formatted it.
pub struct RedactingStderr;

/// One log line being written (see [`RedactingStderr`]).
pub struct RedactingLine(Vec<u8>);

impl Write for RedactingLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.0.is_empty() {
            let text = crate::redact::redact(&String::from_utf8_lossy(&self.0));
            self.0.clear();
            let _ = LossyStderr.write_all(text.as_bytes());
        }
        Ok(())
    }
}

impl Drop for RedactingLine {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingLine;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingLine(Vec::with_capacity(256))
    }
}

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Shell completions and man pages (from the clap definition)
// ---------------------------------------------------------------------------

pub use clap_complete::Shell;

/// Prints the completion script of `cmd` for `shell` (`syncdata
/// completions bash > /etc/bash_completion.d/syncdata`).
pub fn print_completions(mut cmd: clap::Command, shell: Shell) -> Result<(), OutputError> {
    let name = cmd.get_name().to_owned();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    write_out(format_args!("{}", String::from_utf8_lossy(&buf)))
}

/// Prints the man page of `cmd` (roff); with `dir`, writes one page per
/// command into it instead (`syncdata.1`, `syncdata-status.1`, …) and names
/// them.
pub fn man_pages(cmd: clap::Command, dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let name = cmd.get_name().to_owned();
    let Some(dir) = dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        write_out(format_args!("{}", String::from_utf8_lossy(&buf)))?;
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| anyhow::anyhow!("cannot write man pages into {}: {e}", dir.display()))?;
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name) && n.ends_with(".1"))
        .collect();
    names.sort();
    for n in names {
        write_out(format_args!("{}\n", dir.join(n).display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// The error and its causes on one line, each cause once (many messages
/// already include their source's text).
pub fn error_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if cause.is_empty() || out.contains(&cause) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause);
    }
    out
}

/// A hint that fits `err`, if one does.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    err.chain()
        .find_map(|cause| match cause.downcast_ref::<ConfigError>() {
            Some(ConfigError::NoPath) => Some(format!(
                "pass --config PATH or set {CONFIG_ENV} to the configuration file"
            )),
            _ => None,
        })
}

/// A result with its own exit status (`status --check`, `verify`): its
/// message, when not empty, is printed as the `error:` line.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    /// Exit with `code`, printing nothing more.
    pub fn silent(code: u8) -> Exit {
        Exit {
            code,
            message: String::new(),
        }
    }
}

/// The exit status of a command's result; an error is reported as one
/// `error:` line (plus a fitting hint). A closed stdout is a success.
/// Daemons logging JSON also log the error, for the log collector.
pub fn finish(result: anyhow::Result<()>, args: &GlobalArgs, kind: Kind) -> ExitCode {
    finish_with(result, args, kind, 1)
}

/// [`finish`], with `error_code` for errors other than an [`Exit`].
pub fn finish_with(
    result: anyhow::Result<()>,
    args: &GlobalArgs,
    kind: Kind,
    error_code: u8,
) -> ExitCode {
    let err = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(err) => err,
    };
    if err
        .chain()
        .any(|c| matches!(c.downcast_ref(), Some(OutputError::Closed)))
    {
        return ExitCode::SUCCESS;
    }
    if let Some(exit) = err.downcast_ref::<Exit>() {
        if !exit.message.is_empty() {
            let _ = writeln!(stderr(), "error: {}", exit.message);
        }
        return ExitCode::from(exit.code);
    }
    let line = crate::redact::redact(&error_line(&err));
    if kind == Kind::Daemon && args.log_format == LogFormat::Json {
        tracing::error!(error = %line, "stopped by an error");
    }
    let mut e = stderr();
    let _ = writeln!(e, "error: {line}");
    if let Some(hint) = hint(&err) {
        let _ = writeln!(e, "hint: {hint}");
    }
    ExitCode::from(error_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_warn_daemons_inform_and_flags_shift_the_level() {
        assert_eq!(
            default_filter(Kind::Command, 0, 0),
            "warn,sqlx::postgres::notice=warn"
        );
        assert_eq!(
            default_filter(Kind::Daemon, 0, 0),
            "info,sqlx::postgres::notice=warn"
        );
        assert_eq!(default_filter(Kind::Command, 2, 0), "debug");
        assert_eq!(default_filter(Kind::Daemon, 9, 0), "trace");
        assert_eq!(
            default_filter(Kind::Command, 0, 1),
            "error,sqlx::postgres::notice=warn"
        );
        assert!(default_filter(Kind::Daemon, 0, 5).starts_with("off,"));
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
    }

    #[test]
    fn error_line_names_each_cause_once() {
        let io = io::Error::new(io::ErrorKind::NotFound, "No such file or directory");
        let err = anyhow::Error::new(ConfigError::Read {
            path: "/x.toml".into(),
            source: io,
        })
        .context("cannot load the configuration");
        assert_eq!(
            error_line(&err),
            "cannot load the configuration: cannot read configuration file /x.toml: \
             No such file or directory"
        );
        assert_eq!(hint(&err), None);
    }

    #[test]
    fn the_config_hint_only_when_no_config_was_named() {
        let err = anyhow::Error::new(ConfigError::NoPath).context("cannot load");
        assert!(hint(&err).unwrap().contains("--config"));
        let err = anyhow::anyhow!("database unreachable");
        assert_eq!(hint(&err), None);
    }
}
