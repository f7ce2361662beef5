//! syncdata core: what both binaries share — the change record, versions,
//! NATS subjects and connection, table names, configuration, the retry policy
//! and telemetry. The apply engine and the local store live in the consumer.

pub mod config;
pub mod nats;
pub mod record;
pub mod retry;
pub mod signature;
pub mod subject;
pub mod table;
pub mod telemetry;
pub mod version;
