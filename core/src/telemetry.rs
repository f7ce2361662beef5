//! Metrics, set up the same way by both binaries (logging is set up by
//! [`crate::cli::init_logging`]). Logs go to stderr as text or JSON and
//! never carry column values (they may be personal data). Metrics follow `syncdata_<noun>_<unit>[_total]` with
//! low-cardinality labels and are served for Prometheus when an address is
//! configured.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

/// Serves `/metrics` on `addr`. Must run inside a tokio runtime.
pub fn init_metrics(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}
