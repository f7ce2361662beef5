//! The `syncdata-producer` commands, one file each. `main.rs` parses the
//! command line and calls these; the work itself lives in the library
//! modules named in each file.

pub mod archive;
pub mod check_rules;
pub mod config;
pub mod run;
pub mod setup_source;
pub mod snapshot;
pub mod status;
