//! `syncdata dlq list|show|replay|purge`: look at and act on dead letters.
//! A replay republishes the original record to its table's subject, so it
//! goes through the same version guard as any change: replaying an old dead
//! letter never overwrites newer data.

use anyhow::{bail, Context};
use async_nats::jetstream::{self, message::StreamMessage};
use syncdata_core::config::Config;
use syncdata_core::nats;
use syncdata_core::subject::table_subject;
use syncdata_core::table::TableName;
use syncdata_core::{errln, outln};

use crate::dead_letter::{H_ATTEMPTS, H_ERROR, H_SEQUENCE, H_SQLSTATE, H_SUBJECT, H_TABLE};

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

async fn dlq_stream(config: &Config) -> anyhow::Result<jetstream::stream::Stream> {
    let client = nats::connect(&config.nats, "syncdata-dlq").await?;
    let js = jetstream::new(client);
    Ok(nats::ensure_stream(&js, nats::dlq_stream_config(&config.nats)).await?)
}

fn header(m: &StreamMessage, name: &str) -> Option<String> {
    m.headers.get(name).map(|v| v.as_str().to_owned())
}

async fn select(
    config: &Config,
    stream: &jetstream::stream::Stream,
    sel: &Selection,
) -> anyhow::Result<Vec<StreamMessage>> {
    if let Selection::Id(id) = sel {
        let m = stream
            .get_raw_message(*id)
            .await
            .with_context(|| format!("no dead letter with id {id}"))?;
        return Ok(vec![m]);
    }
    let filter = match sel {
        Selection::Table(t) => table_subject(&config.nats.dlq_subject_prefix, &t.schema, &t.table),
        _ => format!("{}.>", config.nats.dlq_subject_prefix),
    };
    let mut out = Vec::new();
    let mut next = 1;
    // Walk the stream in order; "no message" ends the walk.
    while let Ok(m) = stream.get_first_raw_message_by_subject(&filter, next).await {
        next = m.sequence + 1;
        out.push(m);
    }
    Ok(out)
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
        "time": m.time.to_string(),
    })
}

pub async fn list(config: &Config, sel: Selection, json: bool) -> anyhow::Result<()> {
    let stream = dlq_stream(config).await?;
    let msgs = select(config, &stream, &sel).await?;
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
    let stream = dlq_stream(config).await?;
    let m = select(config, &stream, &Selection::Id(id)).await?.remove(0);
    let mut s = summary(&m);
    let payload = String::from_utf8_lossy(&m.payload).into_owned();
    s["record"] = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
    outln!("{}", serde_json::to_string_pretty(&s)?)?;
    Ok(())
}

pub async fn replay(config: &Config, sel: Selection) -> anyhow::Result<()> {
    let stream = dlq_stream(config).await?;
    let msgs = select(config, &stream, &sel).await?;
    let client = nats::connect(&config.nats, "syncdata-dlq").await?;
    let js = jetstream::new(client);
    let mut replayed = 0;
    for m in msgs {
        let Some(subject) = header(&m, H_SUBJECT) else {
            errln!(
                "dead letter {} has no original subject; skipped",
                m.sequence
            );
            continue;
        };
        if !subject.starts_with(&format!("{}.", config.nats.subject_prefix)) {
            errln!(
                "dead letter {} came from {subject}, outside {}; skipped",
                m.sequence,
                config.nats.subject_prefix
            );
            continue;
        }
        // No message id: the original id may still be in the duplicate
        // window, and the version guard makes a second copy harmless.
        js.publish(subject, m.payload.clone())
            .await?
            .await
            .with_context(|| format!("replaying dead letter {}", m.sequence))?;
        stream.delete_message(m.sequence).await?;
        replayed += 1;
    }
    outln!("replayed {replayed} dead letters")?;
    Ok(())
}

pub async fn purge(config: &Config, sel: Selection, yes: bool) -> anyhow::Result<()> {
    if !yes {
        bail!("purging deletes dead letters for good: add --yes to confirm");
    }
    let stream = dlq_stream(config).await?;
    let msgs = select(config, &stream, &sel).await?;
    for m in &msgs {
        stream.delete_message(m.sequence).await?;
    }
    outln!("purged {} dead letters", msgs.len())?;
    Ok(())
}
