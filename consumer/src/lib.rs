//! `syncdata`: applies the change stream to a local PostgreSQL. The daemon
//! lives in [`daemon`]; each CLI command in its own module under [`cmd`]; the
//! apply engine in [`apply`], the local bookkeeping in [`store`], how far each
//! table's durable is behind (pending, lag, dead letters) in `backlog`, and
//! the one transient-or-permanent decision in [`failure`].

pub mod apply;
mod attempts;
pub(crate) mod backlog;
mod budget;
mod chunk;
pub mod cmd;
pub mod daemon;
mod dead_letter;
pub mod failure;
pub(crate) mod freshness;
pub mod gc;
mod large;
pub mod local;
pub mod schema;
pub mod sqlite_cmd;
pub mod sqlite_gc;
pub mod sqlite_schema;
pub mod store;
mod supervise;
pub(crate) mod trust;
mod worker;
