//! `syncdata-bench delay-proxy LISTEN TARGET DELAY_US`: a TCP proxy that
//! holds every byte DELAY_US microseconds in each direction, so a database
//! on this machine answers as one a network round trip away. Used by
//! `scripts/bench.sh scaling` where the kernel has no `sch_netem` (`tc
//! qdisc … netem` fails with "Specified qdisc kind is unknown").
//!
//! Each direction of a connection is a reader that stamps what it read with
//! its due time and a writer that sends it no earlier: bytes keep their
//! order and throughput is not capped, only delayed. tokio's timer rounds
//! up to the next millisecond tick, so a hop takes DELAY_US to DELAY_US +
//! 1 ms: the script measures and prints the real round trip.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

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
    loop {
        let (inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            let outbound = match TcpStream::connect(target).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("delay-proxy: cannot connect to {target}: {e}");
                    return;
                }
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::join!(pipe(ri, wo, delay), pipe(ro, wi, delay));
        });
    }
}

/// Copies `from` to `to`, each read delivered `delay` after it arrived.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
