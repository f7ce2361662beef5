//! `syncdata`: applies the change stream to a local PostgreSQL. The daemon
//! lives in [`daemon`]; each CLI command in its own module under [`cmd`].

pub mod cmd;
pub mod daemon;
mod dead_letter;
pub mod progress;
mod supervise;
mod worker;
