//! Logs and metrics, set up the same way by both binaries. Logs go to
//! stderr as text or JSON and never carry column values (they may be
//! personal data). Metrics follow `syncdata_<noun>_<unit>[_total]` with
//! low-cardinality labels and are served for Prometheus when an address is
//! configured.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

/// Installs the global tracing subscriber (`RUST_LOG` filters; default info).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Log lines pass through [`crate::redact::redact`] on their way to stderr:
/// a URL or setting with a credential in an error message never reaches a
/// log, whichever code path formatted it.
struct RedactingStderr;

struct RedactingWriter(Vec<u8>);

impl std::io::Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.0.is_empty() {
            let text = crate::redact::redact(&String::from_utf8_lossy(&self.0));
            self.0.clear();
            std::io::stderr().lock().write_all(text.as_bytes())?;
        }
        Ok(())
    }
}

impl Drop for RedactingWriter {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(Vec::with_capacity(256))
    }
}

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
