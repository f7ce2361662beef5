//! The `syncdata` commands, one file each.

pub mod add_tables;
pub mod check;
pub mod clear;
pub mod config;
pub mod dlq;
pub mod list_tables;
pub mod migrate;
pub mod remove_tables;
pub mod resync;
pub mod status;
pub mod stop;
pub mod verify;
