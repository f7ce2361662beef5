//! `syncdata-bench delay-proxy LISTEN TARGET DELAY_US`: a TCP proxy that
//! holds every byte DELAY_US microseconds in each direction
//! (`syncdata_testkit::delay`), so a database on this machine answers as
//! one a network round trip away. Used by `scripts/bench.sh scaling`, which
//! measures and prints the real round trip (tokio's timer rounds a hop up
//! to the next millisecond tick).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

/// Runs the proxy for ever (until killed).
pub async fn run(args: &[String]) -> Result<()> {
    let [listen, target, delay_us] = args else {
        anyhow::bail!("usage: syncdata-bench delay-proxy LISTEN_ADDR TARGET_ADDR DELAY_US");
    };
    let listen: SocketAddr = listen.parse().context("LISTEN_ADDR")?;
    let target: SocketAddr = target.parse().context("TARGET_ADDR")?;
    let delay = Duration::from_micros(delay_us.parse().context("DELAY_US")?);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    syncdata_testkit::delay::serve(listener, target, delay).await?;
    Ok(())
}
