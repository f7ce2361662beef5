//! The `syncdata` commands, one file each.

pub mod add_tables;
pub mod dlq;
pub mod list_tables;
pub mod remove_tables;
