//! A TCP proxy that holds every byte a fixed time in each direction, so a
//! server on this machine answers as one a network round trip away. Used by
//! `syncdata-bench delay-proxy` (`scripts/bench.sh scaling`: a database ~2 ms
//! away) and by tests that need a slow link to NATS. Not `tc netem`: kernels
//! without `sch_netem` refuse that qdisc, and the proxy needs no root.
//!
//! Each direction of a connection is a reader that stamps what it read with
//! its due time and a writer that sends it no earlier: bytes keep their
//! order and throughput is not capped, only delayed. tokio's timer rounds
//! up to the next millisecond tick, so a hop takes `delay` to `delay` + 1 ms.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Accepts connections on `listener` for ever, each relayed to `target`
/// with `delay` in each direction.
pub async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    delay: Duration,
) -> std::io::Result<()> {
    loop {
        let (inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            let outbound = match TcpStream::connect(target).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("delay proxy: cannot connect to {target}: {e}");
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

/// Starts a proxy to `target` on a free loopback port of this runtime and
/// returns its address; it runs until the runtime ends.
pub async fn start(target: SocketAddr, delay: Duration) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, target, delay));
    Ok(addr)
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
