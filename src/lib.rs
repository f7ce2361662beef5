//! syncdata core: the change record, versions, NATS names, configuration and
//! the apply engine shared by `syncdata-producer` and `syncdata`.

pub mod apply;
pub mod config;
pub mod failure;
pub mod nats;
pub mod record;
pub mod retry;
pub mod store;
pub mod subject;
pub mod table;
pub mod telemetry;
pub mod version;
pub mod workload;
