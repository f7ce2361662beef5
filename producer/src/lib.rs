//! syncdata-producer: tails the change archive and publishes every record to
//! JetStream, one subject per table. It owns the production side of delivery:
//! a record's checkpoint advances only after its PubAck, lines that cannot be
//! published are quarantined (never dropped silently), and any failure
//! rewinds to the last acknowledged line.
//!
//! Each command lives in its own module under [`cmd`]; `main.rs` only
//! parses the command line.

pub mod archive;
pub mod archiver;
pub mod checkpoint;
pub mod cmd;
pub mod publisher;
pub mod quarantine;
pub mod sanitize;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod status;

pub use crate::status::{status, Status};
