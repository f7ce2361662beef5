//! syncdata-producer: tails the change archive and publishes every record to
//! JetStream, one subject per table. It owns the production side of delivery:
//! a record's checkpoint advances only after its PubAck, lines that cannot be
//! published are quarantined (never dropped silently), and any failure
//! rewinds to the last acknowledged line.
//!
//! Along the data flow: [`archiver`] writes the archive from the source's
//! replication slot ([`snapshot`] adds a table's current rows), [`tail`]
//! reads it, [`sanitize`] (rules, then `transform`) rewrites or holds each
//! record, [`publisher`] sends it through a [`sink`] and advances the
//! [`checkpoint`]; lines that are not records go to [`quarantine`]. Each
//! command lives in its own module under [`cmd`]; `main.rs` only parses the
//! command line.

pub mod archiver;
pub mod backlog;
pub mod checkpoint;
pub mod cmd;
pub mod halt_status;
pub(crate) mod publisher;
pub mod quarantine;
pub mod sanitize;
pub mod scram;
pub(crate) mod sink;
pub(crate) mod snapshot;
pub mod source;
pub mod state_lock;
pub(crate) mod status;
pub mod tail;

pub use crate::status::{status, Status};
