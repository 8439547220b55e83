//! The network between a worker group and the orchestrator: a TCP proxy per
//! group, through which that group's worker reaches the orchestrator, and
//! on which the run injects delay, loss and partitions (the seed's L3,
//! dependency level). A partition cuts the worker's stream while the worker
//! goes on running its activity; it then reconnects and claims its leases.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the link does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "fault")]
pub enum LinkFault {
    /// Every chunk, either way, waits this long.
    Delay { ms: u64 },
    /// Each chunk resets its connection with this chance, per thousand: TCP
    /// turns lost packets into stalls and resets, and a reset is what a
    /// worker sees of it.
    Loss { per_mille: u16 },
    /// Every connection is cut, and new ones are closed at once.
    Partition,
}

impl LinkFault {
    pub fn name(self) -> &'static str {
        match self {
            Self::Delay { .. } => "net-delay",
            Self::Loss { .. } => "net-loss",
            Self::Partition => "net-partition",
        }
    }
}

/// One group's link: where its worker connects, and the fault in force.
pub struct Link {
    pub addr: SocketAddr,
    fault: watch::Sender<Option<LinkFault>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    /// A link on loopback `port` (0: any free one), forwarding to `upstream`.
    pub async fn start(port: u16, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let (fault, watching) = watch::channel(None);
        let task = tokio::spawn(accept(listener, upstream, watching));
        Ok(Self { addr, fault, task })
    }

    /// Sets the fault in force; `None` heals the link.
    pub fn set(&self, fault: Option<LinkFault>) {
        self.fault.send_replace(fault);
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, fault: watch::Receiver<Option<LinkFault>>) {
    loop {
        let Ok((down, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(carry(down, upstream, fault.clone()));
    }
}

/// Carries one connection until either side closes it or a partition cuts it.
async fn carry(down: TcpStream, upstream: SocketAddr, mut fault: watch::Receiver<Option<LinkFault>>) {
    if matches!(*fault.borrow_and_update(), Some(LinkFault::Partition)) {
        return;
    }
    let Ok(up) = TcpStream::connect(upstream).await else { return };
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    let (down_read, down_write) = down.into_split();
    let (up_read, up_write) = up.into_split();
    let mut partitioned = fault.clone();
    tokio::select! {
        _ = pump(down_read, up_write, fault.clone()) => {}
        _ = pump(up_read, down_write, fault) => {}
        _ = partitioned.wait_for(|f| matches!(f, Some(LinkFault::Partition))) => {}
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, fault: watch::Receiver<Option<LinkFault>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = *fault.borrow();
        match current {
            Some(LinkFault::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Some(LinkFault::Loss { per_mille }) if rand::random_range(0..1000) < u32::from(per_mille) => return,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_link_carries_bytes_and_a_partition_cuts_and_refuses_connections() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = upstream.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let link = Link::start(0, upstream_addr).await.unwrap();
        let mut client = TcpStream::connect(link.addr).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        link.set(Some(LinkFault::Partition));
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await.unwrap();
        assert!(cut.is_ok_and(|n| n == 0) || rest.is_empty(), "the connection was cut");
        let mut refused = TcpStream::connect(link.addr).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut rest)).await.unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

        link.set(None);
        let mut healed = TcpStream::connect(link.addr).await.unwrap();
        healed.write_all(b"pong").await.unwrap();
        healed.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
}
