//! Accepting connections without letting idle ones take the server down.
//!
//! A connection holds a file descriptor from the moment it is accepted. With
//! no cap, 1,100 silent TCP connections (no token needed) exhausted the usual
//! soft limit of 1,024 open files, and the accept loop then retried `EMFILE`
//! without pause while health checks and starts timed out. So:
//! - the process raises its own open-file limit as far as the hard limit
//!   allows ([`raise_open_file_limit`]);
//! - each listener has a [`Gate`] with a cap derived from that limit;
//! - a connection that has sent nothing yet is *silent*: it must speak within
//!   [`GREETING_TIMEOUT`], and while the listener is full, a new connection
//!   evicts the oldest silent one, so that a client that speaks at once is
//!   always served. Only when every connection has spoken is a new one
//!   refused;
//! - accept errors (`EMFILE` and the like) back off, and are counted.
//!
//! Past the greeting, idle connections are HTTP/2's to close: the server
//! pings every [`KEEPALIVE_INTERVAL`] and drops a peer that does not answer
//! within [`KEEPALIVE_TIMEOUT`] (half-open connections).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A new connection must send its first bytes within this long.
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the gRPC listener pings an idle connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept for the store, the log, logs and outgoing connections.
const RESERVED_FDS: u64 = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Raises the soft open-file limit to the hard one; returns the limit in force.
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    if hard != soft {
        let raised = rustix::process::Rlimit { current: hard, maximum: hard };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, ?soft, ?hard, "cannot raise the open-file limit");
            return soft.unwrap_or(u64::MAX);
        }
    }
    hard.unwrap_or(u64::MAX)
}

/// Connections each listener may hold, out of `open_files`: three quarters
/// of what is left after the reserve for gRPC, an eighth for HTTP.
pub fn caps(open_files: u64) -> (usize, usize) {
    let spare = open_files.saturating_sub(RESERVED_FDS).max(64);
    let share = |num: u64, den: u64| usize::try_from(spare.saturating_mul(num) / den).unwrap_or(usize::MAX).max(16);
    (share(3, 4), share(1, 8))
}

/// One listener's connections: how many are open, and which are still silent.
#[derive(Clone)]
pub struct Gate {
    name: &'static str,
    cap: usize,
    state: Arc<Mutex<GateState>>,
}

#[derive(Default)]
struct GateState {
    open: usize,
    next: u64,
    /// Silent connections by age, oldest first.
    silent: BTreeMap<u64, Arc<Eviction>>,
}

/// How a gate closes a silent connection from outside its task.
#[derive(Default)]
struct Eviction {
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Eviction {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        if let Some(waker) = self.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            waker.wake();
        }
    }
}

impl Gate {
    pub fn new(name: &'static str, cap: usize) -> Self {
        assert!(cap > 0, "a listener that admits no connection serves nothing");
        Self { name, cap, state: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a new connection, evicting the oldest silent one if the
    /// listener is full; `None` when it is full of connections that spoke.
    fn admit(&self, stream: TcpStream) -> Option<Guarded> {
        let mut state = self.lock();
        if state.open >= self.cap {
            let Some((_, oldest)) = state.silent.pop_first() else {
                metrics::counter!("sagaflow_connections_refused_total", "listener" => self.name).increment(1);
                return None;
            };
            oldest.evict();
            metrics::counter!("sagaflow_connections_evicted_total", "listener" => self.name).increment(1);
        }
        state.open += 1;
        state.next += 1;
        let id = state.next;
        let eviction = Arc::new(Eviction::default());
        state.silent.insert(id, Arc::clone(&eviction));
        metrics::gauge!("sagaflow_connections_open", "listener" => self.name).increment(1.0);
        Some(Guarded {
            inner: stream,
            gate: self.clone(),
            id,
            eviction: Some(eviction),
            greeting: Box::pin(tokio::time::sleep(GREETING_TIMEOUT)),
        })
    }

    fn spoke(&self, id: u64) {
        self.lock().silent.remove(&id);
    }

    fn closed(&self, id: u64) {
        let mut state = self.lock();
        state.silent.remove(&id);
        state.open -= 1;
        metrics::gauge!("sagaflow_connections_open", "listener" => self.name).decrement(1.0);
    }

    /// Accepts connections on `listener` for as long as the returned
    /// receiver lives, with no-delay set (small gRPC frames must not wait
    /// for Nagle's algorithm and a delayed ACK, ~40 ms).
    pub fn accept(self, listener: TcpListener) -> mpsc::Receiver<(Guarded, SocketAddr)> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut backoff = sagaflow_worker::Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        backoff.reset();
                        let _ = stream.set_nodelay(true);
                        if let Some(guarded) = self.admit(stream)
                            && tx.send((guarded, peer)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors, say: free a silent
                        // connection's and wait, instead of spinning.
                        let kind = if e.raw_os_error() == Some(24) { "emfile" } else { "other" };
                        metrics::counter!("sagaflow_accept_errors_total", "listener" => self.name, "kind" => kind)
                            .increment(1);
                        let delay = backoff.next_delay();
                        tracing::warn!(listener = self.name, error = %e, ?delay, "accept failed; backing off");
                        if let Some((_, oldest)) = self.lock().silent.pop_first() {
                            oldest.evict();
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
        rx
    }
}

/// An accepted connection, counted by its gate until dropped.
pub struct Guarded {
    inner: TcpStream,
    gate: Gate,
    id: u64,
    /// Present until the connection first speaks.
    eviction: Option<Arc<Eviction>>,
    greeting: Pin<Box<tokio::time::Sleep>>,
}

impl Guarded {
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.gate.closed(self.id);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(eviction) = &this.eviction {
            if eviction.evicted.load(Ordering::Acquire) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "evicted while silent")));
            }
            if this.greeting.as_mut().poll(cx).is_ready() {
                metrics::counter!("sagaflow_connections_evicted_total", "listener" => this.gate.name).increment(1);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "silent past the greeting timeout")));
            }
            *eviction.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cx.waker().clone());
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before && this.eviction.take().is_some() {
            this.gate.spoke(this.id);
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A gated listener for `axum::serve`.
pub struct GatedListener {
    rx: mpsc::Receiver<(Guarded, SocketAddr)>,
    addr: SocketAddr,
}

impl GatedListener {
    pub fn new(gate: Gate, listener: TcpListener) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        Ok(Self { rx: gate.accept(listener), addr })
    }
}

impl axum::serve::Listener for GatedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended: wait forever, as a listener with no more connections does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn caps_leave_a_reserve_and_never_reach_zero() {
        assert_eq!(caps(1024), (576, 96));
        assert_eq!(caps(20_000), (14_808, 2_468));
        assert!(caps(10).0 >= 16 && caps(10).1 >= 16);
    }

    #[tokio::test]
    async fn a_full_listener_evicts_its_oldest_silent_connection_and_keeps_those_that_spoke() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Gate::new("test", 2).accept(listener);
        // One speaks, one stays silent; both are accepted.
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let (mut talker_side, _) = accepted.recv().await.unwrap();
        talker.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        talker_side.read_exact(&mut buf).await.unwrap();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (mut silent_side, _) = accepted.recv().await.unwrap();
        // A third arrives: the silent one makes room.
        let _newcomer = TcpStream::connect(addr).await.unwrap();
        let (_newcomer_side, _) = accepted.recv().await.unwrap();
        let evicted = tokio::time::timeout(Duration::from_secs(5), silent_side.read(&mut buf)).await.unwrap();
        assert_eq!(evicted.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // The one that spoke is untouched.
        talker.write_all(b"again").await.unwrap();
        talker_side.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"again");
    }
}
