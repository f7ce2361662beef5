//! The client side of PostgreSQL's streaming replication protocol, as far
//! as the archiver needs it: a `replication=database` connection (TCP or
//! Unix socket; trust, password, md5 or SCRAM-SHA-256 authentication),
//! `START_REPLICATION SLOT … LOGICAL …`, then the CopyBoth stream of
//! XLogData (`w`) and keepalive (`k`) messages, answered with standby
//! status updates (`r`) that confirm the flush position.
//!
//! Written here on tokio instead of taken from a crate: the crates that
//! speak it (`pgwire-replication` and the replication forks of
//! `tokio-postgres`) hard-code the `pgoutput` plugin's options, or are
//! unmaintained forks, and none reads the `postgres://` URLs (Unix socket
//! directories, `password=`, `PGPASSWORD`) the rest of syncdata accepts
//! through sqlx. The protocol part is small: startup, authentication, one
//! query, then three message kinds.
//!
//! Messages are read by a task of their own and handed over through a
//! bounded channel, so the archiver can wait for a message or a timer
//! without ever cancelling a half-read message, and reading the socket
//! overlaps with writing segments.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sqlx::postgres::PgConnectOptions;
use syncdata_core::version::Lsn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// An error the server sent (`ErrorResponse`), with its SQLSTATE.
#[derive(Debug, thiserror::Error)]
#[error("{severity}: {message} (SQLSTATE {code})")]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// The connection or the server went away: worth a reconnect.
#[derive(Debug, thiserror::Error)]
#[error("replication connection lost: {0}")]
pub struct Lost(pub String);

/// What the stream delivers.
#[derive(Debug)]
pub enum Message {
    /// One output-plugin message (`w`): for wal2json format-version 2 one
    /// row; `start` is the WAL position of the record it came from.
    Data { start: Lsn, data: Bytes },
    /// The server's keepalive (`k`): everything it sent so far ends before
    /// `wal_end`; `reply` asks for a status update now.
    Keepalive { wal_end: Lsn, reply: bool },
}

/// A started replication stream.
pub struct Stream {
    writer: Writer,
    messages: mpsc::Receiver<anyhow::Result<Message>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Where and as whom to connect.
struct Target {
    host: String,
    port: u16,
    socket: Option<std::path::PathBuf>,
    user: String,
    database: String,
    password: Option<String>,
}

fn target(url: &str) -> anyhow::Result<Target> {
    let shown = crate::source::redact_url(url);
    let options =
        PgConnectOptions::from_str(url).with_context(|| format!("invalid source URL {shown}"))?;
    // sqlx keeps the password to itself: read it from the URL (userinfo or
    // `password=`), else PGPASSWORD.
    let parsed = url::Url::parse(url).ok();
    let from_url = parsed.as_ref().and_then(|u| {
        u.password()
            .map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .or_else(|| {
                u.query_pairs()
                    .find(|(k, _)| k == "password")
                    .map(|(_, v)| v.into_owned())
            })
    });
    let password = from_url.or_else(|| std::env::var("PGPASSWORD").ok());
    let host = options.get_host().to_owned();
    let user = options.get_username().to_owned();
    let database = options
        .get_database()
        .unwrap_or(options.get_username())
        .to_owned();
    let password = password.or_else(|| pgpass(&host, options.get_port(), &database, &user));
    let socket = options.get_socket().cloned().or_else(|| {
        let host = options.get_host();
        host.starts_with('/')
            .then(|| std::path::PathBuf::from(host))
    });
    Ok(Target {
        host,
        port: options.get_port(),
        socket,
        user,
        database,
        password,
    })
}

/// The password from `PGPASSFILE` or `~/.pgpass` (`host:port:db:user:password`,
/// `*` matches anything, `\` escapes), as libpq reads it.
fn pgpass(host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let ok = |f: &str, v: &str| f == "*" || f == v;
        if ok(&fields[0], host)
            && ok(&fields[1], &port)
            && ok(&fields[2], database)
            && ok(&fields[3], user)
        {
            return fields.pop();
        }
    }
    None
}

/// Reads one backend message: its tag and body.
async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Bytes)> {
    let tag = r.read_u8().await?;
    let len = r.read_i32().await?;
    if !(4..=1 << 30).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad message length {len} for message {:?}", tag as char),
        ));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    Ok((tag, Bytes::from(body)))
}

fn server_error(mut body: Bytes) -> ServerError {
    let mut e = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
    };
    while body.has_remaining() {
        let field = body.get_u8();
        if field == 0 {
            break;
        }
        let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
        let value = String::from_utf8_lossy(&body[..end]).into_owned();
        body.advance((end + 1).min(body.len()));
        match field {
            b'S' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            _ => {}
        }
    }
    e
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Microseconds since 2000-01-01, PostgreSQL's epoch.
fn pg_now() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - 946_684_800_000_000
}

/// Session settings that make the plugin's text output deterministic, as
/// `source::connect` sets them for SQL connections.
const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres \
     -c bytea_output=hex -c extra_float_digits=1";

/// Connects with `replication=database` and authenticates.
async fn connect(url: &str, application: &str) -> anyhow::Result<(Reader, Writer)> {
    let t = target(url)?;
    let shown = crate::source::redact_url(url);
    let (mut reader, mut writer): (Reader, Writer) = match &t.socket {
        Some(dir) => {
            #[cfg(unix)]
            {
                let path = dir.join(format!(".s.PGSQL.{}", t.port));
                let s = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| Lost(format!("cannot connect to {}: {e}", path.display())))?;
                let (r, w) = s.into_split();
                (
                    Box::new(BufReader::with_capacity(256 * 1024, r)),
                    Box::new(w),
                )
            }
            #[cfg(not(unix))]
            {
                bail!("Unix sockets are not supported here: {}", dir.display())
            }
        }
        None => {
            let s = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(|e| Lost(format!("cannot connect to {shown}: {e}")))?;
            let _ = s.set_nodelay(true);
            let (r, w) = s.into_split();
            (
                Box::new(BufReader::with_capacity(256 * 1024, r)),
                Box::new(w),
            )
        }
    };
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes()); // protocol 3.0
    for (k, v) in [
        ("user", t.user.as_str()),
        ("database", t.database.as_str()),
        ("replication", "database"),
        ("application_name", application),
        ("client_encoding", "UTF8"),
        ("options", SESSION_OPTIONS),
    ] {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut startup = Vec::with_capacity(body.len() + 4);
    startup.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    startup.extend_from_slice(&body);
    writer
        .write_all(&startup)
        .await
        .map_err(|e| Lost(e.to_string()))?;
    writer.flush().await.map_err(|e| Lost(e.to_string()))?;
    authenticate(&mut reader, &mut writer, &t).await?;
    Ok((reader, writer))
}

async fn authenticate(r: &mut Reader, w: &mut Writer, t: &Target) -> anyhow::Result<()> {
    let need_password = || {
        t.password.clone().with_context(|| {
            format!(
                "the source asks a password for {} and none was given (URL or PGPASSWORD)",
                t.user
            )
        })
    };
    let mut scram: Option<crate::scram::Client> = None;
    loop {
        let (tag, mut body) = read_message(r).await.map_err(|e| Lost(e.to_string()))?;
        match tag {
            b'R' => {
                let kind = body.get_i32();
                match kind {
                    0 => {}
                    3 => {
                        let mut m = Vec::new();
                        cstr(&mut m, &need_password()?);
                        w.write_all(&message(b'p', &m)).await?;
                    }
                    5 => {
                        use md5::{Digest, Md5};
                        let password = need_password()?;
                        let hex =
                            |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
                        let inner = hex(&Md5::digest(format!("{password}{}", t.user)));
                        let mut outer = inner.into_bytes();
                        outer.extend_from_slice(&body[..4.min(body.len())]);
                        let mut m = Vec::new();
                        cstr(&mut m, &format!("md5{}", hex(&Md5::digest(&outer))));
                        w.write_all(&message(b'p', &m)).await?;
                    }
                    10 => {
                        let mechanisms = String::from_utf8_lossy(&body).into_owned();
                        if !mechanisms.split('\0').any(|m| m == "SCRAM-SHA-256") {
                            bail!("the source offers no supported SASL mechanism ({mechanisms:?})");
                        }
                        let client = crate::scram::Client::new(&need_password()?);
                        let first = client.first_message();
                        let mut m = Vec::new();
                        cstr(&mut m, "SCRAM-SHA-256");
                        m.extend_from_slice(&(first.len() as i32).to_be_bytes());
                        m.extend_from_slice(first.as_bytes());
                        w.write_all(&message(b'p', &m)).await?;
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().context("SASL continue without SASL")?;
                        let reply = client.final_message(&String::from_utf8_lossy(&body))?;
                        w.write_all(&message(b'p', reply.as_bytes())).await?;
                    }
                    12 => {
                        let client = scram.as_ref().context("SASL final without SASL")?;
                        client.verify_server(&String::from_utf8_lossy(&body))?;
                    }
                    other => bail!("the source asks for an unsupported authentication ({other})"),
                }
                w.flush().await?;
            }
            b'E' => {
                return Err(anyhow::Error::new(server_error(body)))
                    .context("the source refused the replication connection")
            }
            b'Z' => return Ok(()),
            _ => {} // ParameterStatus, BackendKeyData, NoticeResponse
        }
    }
}

/// `'value'` with quotes doubled.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"name"` with quotes doubled.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Connects, starts logical replication on `slot` from `start` (0/0: where
/// the slot is confirmed) with the plugin `options` (name, value, …).
pub async fn start(
    url: &str,
    application: &str,
    slot: &str,
    start: Lsn,
    options: &[String],
) -> anyhow::Result<Stream> {
    let (mut reader, mut writer) = connect(url, application).await?;
    let opts: Vec<String> = options
        .chunks(2)
        .map(|kv| format!("{} {}", ident(&kv[0]), literal(kv.get(1).map_or("", |v| v))))
        .collect();
    let mut sql = format!("START_REPLICATION SLOT {} LOGICAL {start}", ident(slot));
    if !opts.is_empty() {
        sql.push_str(&format!(" ({})", opts.join(", ")));
    }
    let mut q = Vec::new();
    cstr(&mut q, &sql);
    writer.write_all(&message(b'Q', &q)).await?;
    writer.flush().await?;
    loop {
        let (tag, body) = read_message(&mut reader)
            .await
            .map_err(|e| Lost(e.to_string()))?;
        match tag {
            b'W' => break,
            b'E' => {
                return Err(anyhow::Error::new(server_error(body)))
                    .context("START_REPLICATION failed")
            }
            _ => {}
        }
    }
    let (tx, rx) = mpsc::channel(4096);
    let reader = tokio::spawn(read_loop(reader, tx));
    Ok(Stream {
        writer,
        messages: rx,
        reader,
    })
}

async fn read_loop(mut r: Reader, tx: mpsc::Sender<anyhow::Result<Message>>) {
    loop {
        let item = match read_message(&mut r).await {
            Err(e) => Err(anyhow::Error::new(Lost(e.to_string()))),
            Ok((b'd', body)) => parse_copy_data(body),
            Ok((b'E', body)) => Err(anyhow::Error::new(server_error(body))),
            Ok((b'c', _)) => Err(anyhow::Error::new(Lost(
                "the server ended the replication stream".into(),
            ))),
            Ok(_) => continue, // NoticeResponse, ParameterStatus
        };
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            return;
        }
    }
}

fn parse_copy_data(mut body: Bytes) -> anyhow::Result<Message> {
    let short = || anyhow::anyhow!("short replication message");
    if body.is_empty() {
        return Err(short());
    }
    match body.get_u8() {
        b'w' => {
            if body.len() < 24 {
                return Err(short());
            }
            let start = Lsn(body.get_u64());
            let _end = body.get_u64();
            let _time = body.get_i64();
            Ok(Message::Data { start, data: body })
        }
        b'k' => {
            if body.len() < 17 {
                return Err(short());
            }
            let wal_end = Lsn(body.get_u64());
            let _time = body.get_i64();
            let reply = body.get_u8() != 0;
            Ok(Message::Keepalive { wal_end, reply })
        }
        other => bail!("unknown replication message {:?}", other as char),
    }
}

impl Stream {
    /// The next message; `None` never comes before an error does.
    pub async fn next(&mut self) -> anyhow::Result<Message> {
        match self.messages.recv().await {
            Some(m) => m,
            None => Err(anyhow::Error::new(Lost("the reader stopped".into()))),
        }
    }

    /// Standby status update: received and flushed up to `flushed` (the
    /// slot's confirmed position moves there), applied the same.
    pub async fn confirm(&mut self, flushed: Lsn, reply: bool) -> anyhow::Result<()> {
        let mut b = BytesMut::with_capacity(34);
        b.put_u8(b'r');
        b.put_u64(flushed.0);
        b.put_u64(flushed.0);
        b.put_u64(flushed.0);
        b.put_i64(pg_now());
        b.put_u8(u8::from(reply));
        self.writer
            .write_all(&message(b'd', &b))
            .await
            .map_err(|e| Lost(e.to_string()))?;
        self.writer.flush().await.map_err(|e| Lost(e.to_string()))?;
        Ok(())
    }

    /// Ends the stream cleanly: CopyDone, then waits (bounded) for the
    /// server's end of the stream, so every status update sent before was
    /// processed, then Terminate.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.writer.write_all(&message(b'c', &[])).await?;
        self.writer.flush().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        // Until the server's CopyDone (reported as an error) or a closed
        // connection: the server is through with this stream.
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.messages.recv()).await {}
        let _ = self.writer.write_all(&message(b'X', &[])).await;
        let _ = self.writer.flush().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts_and_password() {
        let t = target("postgres://u:p%40ss@127.0.0.1:5433/src").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.user.as_str(),
                t.database.as_str()
            ),
            ("127.0.0.1", 5433, "u", "src")
        );
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert!(t.socket.is_none());
        let t = target("postgres://u@localhost/db?host=/tmp/sock&password=x").unwrap();
        assert_eq!(t.socket.as_deref(), Some(std::path::Path::new("/tmp/sock")));
        assert_eq!(t.password.as_deref(), Some("x"));
    }

    #[test]
    fn keepalive_and_data_parse() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0x1_0000_0010);
        b.put_i64(0);
        b.put_u8(1);
        match parse_copy_data(b.freeze()).unwrap() {
            Message::Keepalive { wal_end, reply } => {
                assert_eq!(wal_end.to_string(), "1/10");
                assert!(reply);
            }
            m => panic!("{m:?}"),
        }
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(5);
        b.put_u64(6);
        b.put_i64(0);
        b.put_slice(b"{}");
        match parse_copy_data(b.freeze()).unwrap() {
            Message::Data { start, data } => {
                assert_eq!(start, Lsn(5));
                assert_eq!(&data[..], b"{}");
            }
            m => panic!("{m:?}"),
        }
        assert!(parse_copy_data(Bytes::from_static(b"w12")).is_err());
    }
}
