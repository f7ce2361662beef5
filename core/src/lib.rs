//! syncdata core: what both binaries share — the change record, versions,
//! NATS subjects and connection, table names, the catalog reader, configuration,
//! the retry policy and telemetry, and the command-line shell of both binaries
//! (`cli`). The apply engine and the local store live in the consumer.

pub mod catalog;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod halts;
pub mod large;
pub mod nats;
pub mod private_fs;
pub mod progress;
pub mod record;
pub mod redact;
pub mod retry;
pub mod signature;
pub mod subject;
pub mod table;
pub mod tabledef;
pub mod target;
pub mod telemetry;
pub mod version;
