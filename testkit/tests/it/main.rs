//! syncdata's integration tests, one binary: every module runs the real
//! binaries against the real PostgreSQL 15 and nats-server that
//! `scripts/test.sh` starts (or private servers for tests that kill one).
//!
//! Run one area with `cargo test -p syncdata-testkit --test it -- apply::`.

mod apply;
mod apply_copy;
mod catalog;
mod check;
mod chunks;
mod cli;
mod cluster;
mod compose;
mod data_protection;
mod failures;
mod large_rows;
mod operations;
mod operator;
mod outputs;
mod pipeline;
mod producer;
mod readme;
mod report;
mod retention;
mod sanitize;
mod schema;
mod snapshot;
mod source;
mod sqlite;
mod streaming;
mod support_smoke;
mod trust;
mod values;
mod workload;
