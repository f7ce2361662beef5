//! syncdata core: the change record, versions, NATS names, configuration and
//! the apply engine shared by `syncdata-producer` and `syncdata`.

pub mod config;
pub mod nats;
pub mod record;
pub mod subject;
pub mod version;
pub mod workload;
