//! Tables the producer holds back (sanitization halted them), told to the
//! consumers through a small JetStream key-value bucket, `<stream>_STATUS`:
//! the producer keeps one key, [`HALTS_KEY`], holding every halted table of
//! its stream (an empty list once none is); `syncdata status` reads it and
//! shows such a table as "halted at the producer".
//!
//! A bucket rather than a status subject: a consumer that was not listening
//! when the halt happened (every `syncdata status` run) still learns of it,
//! the newest value is all anyone needs (history 1), and the producer's
//! restart re-writes it. Only the producer may write the bucket; consumers
//! read it (docs/trust.md). One producer per stream, as for the checkpoint.

use async_nats::jetstream::{self, kv};

use serde::{Deserialize, Serialize};

use crate::config::NatsConfig;
use crate::table::TableName;

/// The key holding the halted tables.
pub const HALTS_KEY: &str = "halts";

/// One halted table, as the producer reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerHalt {
    pub schema: String,
    pub table: String,
    /// Why (names the table and its columns, never values).
    pub reason: String,
}

impl ProducerHalt {
    pub fn is(&self, t: &TableName) -> bool {
        self.schema == t.schema && self.table == t.table
    }
}

/// The value of [`HALTS_KEY`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halts {
    pub tables: Vec<ProducerHalt>,
}

/// The bucket of `stream`: `<stream>_STATUS`.
pub fn bucket_name(cfg: &NatsConfig) -> String {
    format!("{}_STATUS", cfg.stream)
}

/// The bucket's stream, as a key-value bucket's (the newest value per key,
/// rollups, direct get), file storage, the stream's replicas. Made here
/// rather than by `create_key_value`, which first asks for account
/// information that nats-server 2.9 answers in a form the client cannot
/// read.
pub fn stream_config(cfg: &NatsConfig) -> jetstream::stream::Config {
    let bucket = bucket_name(cfg);
    jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("syncdata: tables the producer holds back".to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_message_size: 1 << 20,
        storage: jetstream::stream::StorageType::File,
        num_replicas: cfg.replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// The producer's side: the bucket, created when missing.
pub async fn open_for_writing(
    js: &jetstream::Context,
    cfg: &NatsConfig,
) -> anyhow::Result<kv::Store> {
    if js.get_key_value(bucket_name(cfg)).await.is_err() {
        crate::nats::ensure_stream(js, stream_config(cfg))
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot create key-value bucket {}: {e}", bucket_name(cfg))
            })?;
    }
    js.get_key_value(bucket_name(cfg))
        .await
        .map_err(|e| anyhow::anyhow!("cannot open key-value bucket {}: {e}", bucket_name(cfg)))
}

/// Writes the halted tables.
pub async fn publish(store: &kv::Store, halts: &Halts) -> anyhow::Result<()> {
    let value = serde_json::to_vec(halts)?;
    store
        .put(HALTS_KEY, value.into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot write the halted tables: {e}"))?;
    Ok(())
}

/// The consumer's side: the halted tables the producer reported; empty
/// when the bucket or key does not exist (no producer ran yet, or one of a
/// version without it).
pub async fn read(js: &jetstream::Context, cfg: &NatsConfig) -> anyhow::Result<Halts> {
    let store = match js.get_key_value(bucket_name(cfg)).await {
        Ok(store) => store,
        Err(e) => {
            // Missing (no halts ever written) or not readable: tell apart.
            let missing = match js.get_stream(format!("KV_{}", bucket_name(cfg))).await {
                Err(se) => matches!(
                    se.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ),
                Ok(_) => false,
            };
            if missing {
                return Ok(Halts::default());
            }
            return Err(anyhow::anyhow!(
                "cannot read key-value bucket {}: {e}",
                bucket_name(cfg)
            ));
        }
    };
    match store.get(HALTS_KEY).await {
        Ok(Some(value)) => Ok(serde_json::from_slice(&value).map_err(|e| {
            anyhow::anyhow!(
                "the halted tables in {} are not valid: {e}",
                bucket_name(cfg)
            )
        })?),
        Ok(None) => Ok(Halts::default()),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read {HALTS_KEY} in {}: {e}",
            bucket_name(cfg)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_round_trips_and_matches_tables_by_schema_and_name() {
        let h = Halts {
            tables: vec![ProducerHalt {
                schema: "public".into(),
                table: "users".into(),
                reason: "column \"ssn\" has no rule".into(),
            }],
        };
        let back: Halts = serde_json::from_slice(&serde_json::to_vec(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        let users = TableName {
            schema: "public".into(),
            table: "users".into(),
        };
        let other = TableName {
            schema: "sales".into(),
            table: "users".into(),
        };
        assert!(h.tables[0].is(&users));
        assert!(!h.tables[0].is(&other));
        let cfg = NatsConfig {
            stream: "SYNCDATA_CHANGES".into(),
            ..Default::default()
        };
        assert_eq!(bucket_name(&cfg), "SYNCDATA_CHANGES_STATUS");
        let stream = stream_config(&cfg);
        assert_eq!(stream.name, "KV_SYNCDATA_CHANGES_STATUS");
        assert_eq!(stream.subjects, ["$KV.SYNCDATA_CHANGES_STATUS.>"]);
        assert_eq!(stream.max_messages_per_subject, 1);
    }
}
