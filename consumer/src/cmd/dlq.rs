//! `syncdata dlq list|show|replay|purge|migrate`: look at and act on this
//! database's dead letters. Every local database (its instance id) has its
//! own dead-letter subjects, `<dlq_prefix>.<instance>.<schema>.<table>`: these
//! commands never see, replay or purge another database's.
//!
//! A replay applies the dead letter's record to this database through the
//! apply engine, with the same version guard as any change, so replaying an
//! old dead letter never overwrites newer data; nothing is published to the
//! shared change stream (which every other database consumes).

use std::collections::HashSet;

use anyhow::{bail, Context};
use async_nats::jetstream::{self, message::StreamMessage};
use async_nats::HeaderMap;
use futures::StreamExt;
use syncdata_core::config::Config;
use syncdata_core::signature::SigningKey;

use crate::trust::VersionMark;
use syncdata_core::nats;
use syncdata_core::record::Record;
use syncdata_core::subject::{
    decode_token, dlq_instance_filter, dlq_legacy_filter, dlq_message_id, dlq_subject, encode_token,
};
use syncdata_core::table::TableName;
use syncdata_core::{errln, outln};

use crate::apply::{Applier, Disposition, Engine, Incoming, Target};
use crate::dead_letter::{
    H_ATTEMPTS, H_CHUNK_INDEX, H_ERROR, H_INSTANCE, H_MSG_ID, H_PAYLOAD_REF, H_SEQUENCE,
    H_SIGNATURE, H_SQLSTATE, H_SUBJECT, H_TABLE,
};
use crate::local::{self, LocalStore};
use crate::{failure, store};

/// Which dead letters a command acts on.
pub enum Selection {
    All,
    Table(TableName),
    Id(u64),
}

impl Selection {
    pub fn from_args(table: Option<String>, id: Option<u64>) -> anyhow::Result<Selection> {
        Ok(match (table, id) {
            (Some(_), Some(_)) => bail!("give --table or an ID, not both"),
            (Some(t), None) => Selection::Table(TableName::parse(&t)?),
            (None, Some(id)) => Selection::Id(id),
            (None, None) => Selection::All,
        })
    }
}

/// This database's view of the dead-letter stream.
struct Dlq {
    stream: jetstream::stream::Stream,
    js: jetstream::Context,
    /// The local store: PostgreSQL, or a SQLite target's file.
    local: LocalStore,
    instance: String,
    prefix: String,
}

impl Dlq {
    async fn open(config: &Config) -> anyhow::Result<Dlq> {
        let local = LocalStore::open(config).await?;
        let instance = local.instance_id().await?;
        let client = nats::connect(&config.nats, "syncdata-dlq").await?;
        let js = jetstream::new(client);
        let stream = nats::ensure_stream(&js, nats::dlq_stream_config(&config.nats)).await?;
        let dlq = Dlq {
            stream,
            js,
            local,
            instance,
            prefix: config.nats.dlq_subject_prefix.clone(),
        };
        dlq.hint_legacy().await;
        Ok(dlq)
    }

    /// `<prefix>.<instance>.`: every subject of this database's dead letters
    /// starts so.
    fn own_prefix(&self) -> String {
        format!("{}.{}.", self.prefix, encode_token(&self.instance))
    }

    /// The table a dead letter of this database was filed under.
    fn table_of(&self, m: &StreamMessage) -> Option<TableName> {
        let rest = m.subject.as_str().strip_prefix(&self.own_prefix())?;
        let (schema, table) = rest.split_once('.')?;
        Some(TableName::new(decode_token(schema)?, decode_token(table)?))
    }

    /// Says so when dead letters of the old shared layout are waiting.
    async fn hint_legacy(&self) {
        let n = subject_count(&self.stream, &dlq_legacy_filter(&self.prefix))
            .await
            .unwrap_or(0);
        if n > 0 {
            errln!(
                "note: {n} dead letters are in the layout before per-database dead letters \
                 ({}.<schema>.<table>): `syncdata dlq migrate` copies them into this \
                 database's dead letters",
                self.prefix
            );
        }
    }

    /// The dead letter's original payload: its own, or, filed by reference
    /// (too large to go with its headers), the change stream's message at
    /// the original sequence, when it still is the same message.
    async fn payload(&self, m: &StreamMessage) -> Result<bytes::Bytes, String> {
        let Some(stream) = header(m, H_PAYLOAD_REF) else {
            return Ok(m.payload.clone());
        };
        let original = self.original(m, &stream).await?;
        match chunk_index(m)? {
            // A chunk's record: the record alone.
            Some(i) => syncdata_core::chunk::record_at(&original, i)
                .map(|r| original.slice_ref(r))
                .map_err(|e| format!("the original message: {e}")),
            None => Ok(original),
        }
    }

    /// The change stream's message the dead letter came from (its payload),
    /// when the stream still holds it.
    async fn original(&self, m: &StreamMessage, stream: &str) -> Result<bytes::Bytes, String> {
        let seq: u64 = header(m, H_SEQUENCE)
            .and_then(|s| s.parse().ok())
            .ok_or("filed by reference without an original sequence")?;
        let original = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| format!("cannot open stream {stream} for the payload: {e}"))?
            .get_raw_message(seq)
            .await
            .map_err(|e| format!("payload no longer in stream {stream} at {seq}: {e}"))?;
        if Some(original.subject.as_str()) != header(m, H_SUBJECT).as_deref() {
            return Err(format!(
                "stream {stream} holds another message at {seq} than the dead letter's"
            ));
        }
        Ok(original.payload)
    }

    async fn select(&self, sel: &Selection) -> anyhow::Result<Vec<StreamMessage>> {
        if let Selection::Id(id) = sel {
            let m = self.stream.get_raw_message(*id).await.ok();
            return match m {
                Some(m) if self.table_of(&m).is_some() => Ok(vec![m]),
                _ => bail!("no dead letter with id {id} among this database's dead letters"),
            };
        }
        let filter = match sel {
            Selection::Table(t) => dlq_subject(&self.prefix, &self.instance, &t.schema, &t.table),
            _ => dlq_instance_filter(&self.prefix, &self.instance),
        };
        let msgs = walk(&self.stream, &filter).await?;
        // A typo must not read as "nothing to do": a table that is neither
        // whitelisted nor has dead letters here is an error (a removed
        // table's dead letters can still be listed, replayed and purged).
        if let Selection::Table(t) = sel {
            if msgs.is_empty() && !self.local.whitelist().await?.contains(t) {
                bail!("{t} is not in the whitelist and has no dead letters in this database");
            }
        }
        Ok(msgs)
    }
}

/// The messages on `filter`, in stream order. Only the server's "no
/// message found" ends the walk: any other failure (a timeout, a lost
/// connection) is an error, never a list, replay or purge that silently
/// stops part of the way.
async fn walk(
    stream: &jetstream::stream::Stream,
    filter: &str,
) -> anyhow::Result<Vec<StreamMessage>> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        match stream.get_first_raw_message_by_subject(filter, next).await {
            Ok(m) => {
                next = m.sequence + 1;
                out.push(m);
            }
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(out),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "reading the dead letters (stream sequence {next} on, {} read)",
                    out.len()
                )))
            }
        }
    }
}

async fn subject_count(stream: &jetstream::stream::Stream, filter: &str) -> anyhow::Result<u64> {
    let mut subjects = stream.info_with_subjects(filter).await?;
    let mut total = 0u64;
    while let Some(entry) = subjects.next().await {
        total += entry?.1 as u64;
    }
    Ok(total)
}

/// A chunk's record's place in it (None: a message of one record).
fn chunk_index(m: &StreamMessage) -> Result<Option<usize>, String> {
    header(m, H_CHUNK_INDEX)
        .map(|v| {
            v.parse()
                .map_err(|_| format!("malformed {H_CHUNK_INDEX}: {v}"))
        })
        .transpose()
}

fn header(m: &StreamMessage, name: &str) -> Option<String> {
    m.headers.get(name).map(|v| v.as_str().to_owned())
}

fn summary(m: &StreamMessage) -> serde_json::Value {
    serde_json::json!({
        "id": m.sequence,
        "table": header(m, H_TABLE),
        "error": header(m, H_ERROR),
        "sqlstate": header(m, H_SQLSTATE),
        "attempts": header(m, H_ATTEMPTS).and_then(|a| a.parse::<u64>().ok()),
        "original_subject": header(m, H_SUBJECT),
        "original_sequence": header(m, H_SEQUENCE).and_then(|a| a.parse::<u64>().ok()),
        "chunk_index": header(m, H_CHUNK_INDEX).and_then(|a| a.parse::<u64>().ok()),
        "instance": header(m, H_INSTANCE),
        "payload_in_stream": header(m, H_PAYLOAD_REF),
        "time": m.time.to_string(),
    })
}

pub async fn list(config: &Config, sel: Selection, json: bool) -> anyhow::Result<()> {
    let dlq = Dlq::open(config).await?;
    let msgs = dlq.select(&sel).await?;
    if json {
        let all: Vec<_> = msgs.iter().map(summary).collect();
        outln!("{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(());
    }
    if msgs.is_empty() {
        outln!("no dead letters")?;
        return Ok(());
    }
    outln!("{:>8}  {:<24}  {:>8}  error", "id", "table", "attempts")?;
    for m in &msgs {
        outln!(
            "{:>8}  {:<24}  {:>8}  {}{}",
            m.sequence,
            header(m, H_TABLE).unwrap_or_default(),
            header(m, H_ATTEMPTS).unwrap_or_default(),
            header(m, H_SQLSTATE)
                .map(|c| format!("[{c}] "))
                .unwrap_or_default(),
            header(m, H_ERROR).unwrap_or_default(),
        )?;
    }
    outln!("{} dead letters", msgs.len())?;
    Ok(())
}

pub async fn show(config: &Config, id: u64) -> anyhow::Result<()> {
    let dlq = Dlq::open(config).await?;
    let m = dlq.select(&Selection::Id(id)).await?.remove(0);
    let mut s = summary(&m);
    let payload = dlq
        .payload(&m)
        .await
        .unwrap_or_else(|e| e.into_bytes().into());
    let payload = String::from_utf8_lossy(&payload).into_owned();
    s["record"] = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
    outln!("{}", serde_json::to_string_pretty(&s)?)?;
    Ok(())
}

/// Applies each selected dead letter to this database (version guard
/// included) and removes the ones that applied or were superseded; the
/// others stay, with why on stderr.
/// With `json`, prints `{"replayed": N, "kept": [{"id", "reason"}]}`.
pub async fn replay(config: &Config, sel: Selection, json: bool) -> anyhow::Result<()> {
    let dlq = Dlq::open(config).await?;
    let msgs = dlq.select(&sel).await?;
    // Through the engine of the local store's target: the version guard
    // and the mapping of a SQLite file included.
    match &dlq.local {
        LocalStore::Pg(pool) => {
            let replica = store::may_set_replica_role(pool).await?;
            let applier = Applier::new(pool.clone(), replica);
            replay_all(config, &dlq, &applier, msgs, json).await
        }
        LocalStore::Sqlite(pool) => {
            let engine = Engine::with_target(crate::apply::sqlite::SqliteTarget::new(pool.clone()));
            replay_all(config, &dlq, &engine, msgs, json).await
        }
    }
}

async fn replay_all<T: Target>(
    config: &Config,
    dlq: &Dlq,
    applier: &Engine<T>,
    msgs: Vec<StreamMessage>,
    json: bool,
) -> anyhow::Result<()> {
    let whitelist: HashSet<TableName> = dlq.local.whitelist().await?.into_iter().collect();
    // A dead letter is trusted no more than the message it came from: with a
    // signing key, its original signature is checked again, and a change far
    // ahead of what the table has applied is held, as the worker does.
    let signer = SigningKey::load(config.nats.signing_key_file.as_deref(), |k| {
        std::env::var(k).ok()
    })?;
    let mut marks: std::collections::HashMap<TableName, VersionMark> = Default::default();
    let (mut replayed, mut kept) = (0, 0);
    let mut kept_list = Vec::new();
    for m in msgs {
        let id = m.sequence;
        let outcome: Result<(), String> = async {
            let table = dlq.table_of(&m).ok_or("not filed under a table")?;
            if let Some(reason) = table.denied() {
                return Err(reason);
            }
            if !whitelist.contains(&table) {
                return Err(format!("{table} is not whitelisted here"));
            }
            let payload = dlq.payload(&m).await?;
            if let Some(key) = &signer {
                let subject = header(&m, H_SUBJECT).unwrap_or_default();
                let msg_id = header(&m, H_MSG_ID).unwrap_or_default();
                // A chunk's record: the signature is the chunk's, checked
                // over the chunk the stream still holds, which must hold
                // this very record at its place.
                let signed = match chunk_index(&m)? {
                    None => payload.clone(),
                    Some(i) => {
                        let stream = header(&m, H_PAYLOAD_REF)
                            .unwrap_or_else(|| config.nats.stream.clone());
                        let chunk = dlq.original(&m, &stream).await.map_err(|e| {
                            format!("not applied: the signed chunk it came from is needed to check it: {e}")
                        })?;
                        let record = syncdata_core::chunk::record_at(&chunk, i)?;
                        if record != &payload[..] {
                            return Err("not applied: the record differs from its place in the signed chunk".to_owned());
                        }
                        chunk
                    }
                };
                key.verify(
                    &subject,
                    &msg_id,
                    &signed,
                    header(&m, H_SIGNATURE).as_deref(),
                )
                .map_err(|e| {
                    format!("not applied: {e} (only the producer's signed messages are applied)")
                })?;
            }
            // A large record's pointer (verified above) names it.
            let payload = crate::large::resolve(&dlq.js, &config.nats, &payload)
                .await
                .map_err(|e| e.to_string())?;
            let record = Record::parse(&payload).map_err(|e| e.to_string())?;
            let mark = marks.entry(table.clone()).or_default();
            local::ensure_mark(&dlq.local, mark, &table)
                .await
                .map_err(|e| format!("cannot read the table's applied versions: {e}"))?;
            mark.check(&table, record.lsn, config.consumer.max_version_jump)
                .map_err(|r| r.error)?;
            if record.schema != table.schema || record.table != table.table {
                return Err(format!(
                    "the record names another table than {table}, its dead-letter subject"
                ));
            }
            let seq = header(&m, H_SEQUENCE)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let incoming = [Incoming {
                record: &record,
                fallback_seq: seq,
            }];
            let report = applier
                .apply_batch(&table, &incoming, &format!("dlq replay {id}"))
                .await
                .map_err(|e| failure::describe(&e))?;
            match report.dispositions.first() {
                Some(Disposition::Applied | Disposition::Superseded) => Ok(()),
                Some(Disposition::Rejected(reason)) => Err(reason.clone()),
                None => Err("no outcome".to_owned()),
            }
        }
        .await;
        match outcome {
            Ok(()) => {
                dlq.stream
                    .delete_message(id)
                    .await
                    .with_context(|| format!("dead letter {id} applied, but not removed"))?;
                replayed += 1;
            }
            Err(why) => {
                if !json {
                    errln!("dead letter {id} kept: {why}");
                }
                kept_list.push(serde_json::json!({"id": id, "reason": why}));
                kept += 1;
            }
        }
    }
    if json {
        let out = serde_json::json!({"replayed": replayed, "kept": kept_list});
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        outln!("replayed {replayed} dead letters")?;
    }
    if kept > 0 {
        bail!("{kept} dead letters still fail and were kept");
    }
    Ok(())
}

/// With `json`, prints `{"purged": N}`.
pub async fn purge(config: &Config, sel: Selection, yes: bool, json: bool) -> anyhow::Result<()> {
    if !yes {
        bail!("purging deletes dead letters for good: add --yes to confirm");
    }
    let dlq = Dlq::open(config).await?;
    let msgs = dlq.select(&sel).await?;
    for m in &msgs {
        dlq.stream.delete_message(m.sequence).await?;
    }
    match json {
        true => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"purged": msgs.len()}))?
        )?,
        false => outln!("purged {} dead letters", msgs.len())?,
    }
    Ok(())
}

/// Copies the dead letters of the old shared layout
/// (`<dlq_prefix>.<schema>.<table>`) into this database's. Which database
/// an old dead letter belonged to is not recorded, so every database that
/// runs this gets its own copy (once: copies are recognised by their
/// original subject and sequence); `remove_old` then deletes the old ones,
/// for the last database to migrate.
pub async fn migrate(config: &Config, remove_old: bool) -> anyhow::Result<()> {
    let dlq = Dlq::open(config).await?;
    let legacy = walk(&dlq.stream, &dlq_legacy_filter(&dlq.prefix)).await?;
    let own = dlq.select(&Selection::All).await?;
    let adopted: HashSet<(Option<String>, Option<String>)> = own
        .iter()
        .map(|m| (header(m, H_SUBJECT), header(m, H_SEQUENCE)))
        .collect();
    let (mut copied, mut already) = (0, 0);
    for m in &legacy {
        let Some(rest) = m.subject.as_str().strip_prefix(&format!("{}.", dlq.prefix)) else {
            continue;
        };
        let Some((schema, table)) = rest
            .split_once('.')
            .and_then(|(s, t)| Some((decode_token(s)?, decode_token(t)?)))
        else {
            errln!(
                "dead letter {} has an unreadable subject; left as is",
                m.sequence
            );
            continue;
        };
        let key = (header(m, H_SUBJECT), header(m, H_SEQUENCE));
        if adopted.contains(&key) {
            already += 1;
            continue;
        }
        let mut headers = HeaderMap::new();
        for name in [
            H_ERROR,
            H_SQLSTATE,
            H_ATTEMPTS,
            H_SUBJECT,
            H_SEQUENCE,
            H_TABLE,
            H_SIGNATURE,
            H_MSG_ID,
        ] {
            if let Some(v) = header(m, name) {
                headers.insert(name, v.as_str());
            }
        }
        headers.insert(H_INSTANCE, dlq.instance.as_str());
        let id = dlq_message_id(
            &dlq.instance,
            key.0.as_deref().unwrap_or(m.subject.as_str()),
            key.1
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(m.sequence),
        );
        headers.insert("Nats-Msg-Id", id.as_str());
        let subject = dlq_subject(&dlq.prefix, &dlq.instance, &schema, &table);
        dlq.js
            .publish_with_headers(subject, headers, m.payload.clone())
            .await?
            .await
            .with_context(|| format!("copying dead letter {}", m.sequence))?;
        copied += 1;
    }
    let mut removed = 0;
    if remove_old {
        for m in &legacy {
            dlq.stream.delete_message(m.sequence).await?;
            removed += 1;
        }
    }
    outln!(
        "copied {copied} dead letters of the old layout into this database's \
         ({already} copied before, {removed} old ones removed)"
    )?;
    Ok(())
}
