//! `syncdata`: applies the change stream to a local PostgreSQL. The daemon
//! lives in [`daemon`]; each CLI command in its own module under [`cmd`]; the
//! apply engine in [`apply`], the local bookkeeping in [`store`], and the one
//! transient-or-permanent decision in [`failure`].

pub mod apply;
pub mod cmd;
pub mod daemon;
mod dead_letter;
pub mod failure;
pub mod progress;
pub mod store;
mod trust;
mod worker;
