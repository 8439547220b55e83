//! A standby that answers: while another node holds the store, a standby
//! listens on its own gRPC address and forwards every request, streams
//! included (a worker's session), to the node that serves, whose address
//! the store's lease names (ADR 0030). Clients, workers and load balancers
//! may therefore be given any node.
//!
//! The forwarding is HTTP/2 frames in, HTTP/2 frames out: the serving node
//! authenticates, admits and answers as if the call had come to it, and its
//! status and trailers come back unchanged. When the standby takes the store
//! over, every forwarded connection gets a GOAWAY, so that its clients
//! reconnect (to this node, now serving), and the listener goes to the
//! server proper.
//!
//! Over TLS (`--tls-peer-ca`), the standby accepts with its own certificate
//! and dials the serving node as a TLS client that trusts the peers' CA and
//! shows its own certificate: the forwarded call keeps its token, which is
//! what authorises it.
//!
//! The same [`Dialer`] carries what a serving node sends to the others once
//! shards are spread: calls about their shards' workflows (`route.rs`) and
//! the worker sessions it relays (`api/relay.rs`), each marked forwarded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};

use crate::tls::Forwarding;

/// How long the forwarded connections' shutdown is waited for (in the
/// background) before saying that calls are still running.
const DRAIN: Duration = Duration::from_secs(1);
/// A serving node that does not accept within this is as good as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pings on the connection to the serving node, so that one that died
/// without closing it (a paused or cut-off machine) is noticed.
const UPSTREAM_KEEPALIVE: Duration = Duration::from_secs(5);
/// A connection that sends nothing (or finishes no TLS handshake) within
/// this is closed: silent ones would hold their slots for ever.
const GREETING: Duration = Duration::from_secs(10);

/// Marks a forwarded request. A standby never forwards a request that
/// carries it: when the lease still names a node that died at this very
/// address (a restarted node, before the old lease ran out), or two
/// standbys each believe the other serves, the call is refused instead of
/// going round.
const FORWARDED: &str = "x-sagaflow-forwarded";

/// Whether another node forwarded `request` here.
pub fn was_forwarded<B>(request: &Request<B>) -> bool {
    request.headers().contains_key(FORWARDED)
}

/// [`was_forwarded`], for a call's metadata.
pub fn was_forwarded_metadata(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata.contains_key(FORWARDED)
}

/// Marks a call this node makes on a caller's behalf as forwarded, so that
/// the node it reaches serves it there and sends it on nowhere.
pub fn mark_forwarded(metadata: &mut tonic::metadata::MetadataMap) {
    metadata.insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
}

/// Forwards what a standby's listener accepts, until [`Forwarder::stop`].
pub struct Forwarder {
    stop: oneshot::Sender<()>,
    task: JoinHandle<TcpListener>,
}

impl Forwarder {
    /// Forwards each request `listener` accepts to the `host:port` that
    /// `serving` holds at that moment (`None`: no node serves yet, and the
    /// call is answered `UNAVAILABLE`); at most `max_connections` at once;
    /// over TLS at both ends with `tls`.
    pub fn start(
        listener: TcpListener,
        serving: watch::Receiver<Option<String>>,
        max_connections: usize,
        tls: Option<Forwarding>,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let upstream = Upstream { serving, dialer: Dialer::new(tls.as_ref().map(|t| t.dial.clone())) };
        let accept_tls = tls.map(|t| t.accept);
        let task = tokio::spawn(accept(listener, Arc::new(upstream), accept_tls, max_connections, stopped));
        Self { stop, task }
    }

    /// Stops accepting, tells the forwarded connections to go away, and
    /// gives the listener back.
    pub async fn stop(self) -> std::io::Result<TcpListener> {
        let _ = self.stop.send(());
        self.task.await.map_err(std::io::Error::other)
    }
}

/// The serving node, as a gRPC channel, for the address the lease names.
struct Upstream {
    serving: watch::Receiver<Option<String>>,
    dialer: Dialer,
}

impl Upstream {
    /// The serving node's address, or why there is none.
    fn address(&self) -> Result<String, String> {
        self.serving.borrow().clone().ok_or_else(|| {
            "this node stands by and knows no address of the serving node (none serves yet, or it gave \
             no --advertise); retry, or call the serving node"
                .into()
        })
    }
}

/// Channels to other nodes, by `host:port`: one HTTP/2 connection each,
/// made when first used and again whenever it breaks.
pub struct Dialer {
    tls: Option<tonic::transport::ClientTlsConfig>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Dialer {
    /// Plain HTTP/2, or TLS as `tls` says (the peers' CA and this node's
    /// client certificate, `--tls-peer-ca`).
    pub fn new(tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        Self { tls, channels: Mutex::default() }
    }

    pub fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let invalid = |e: tonic::transport::Error| format!("the node address {address:?}: {e}");
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(invalid)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(UPSTREAM_KEEPALIVE)
            .keep_alive_timeout(UPSTREAM_KEEPALIVE);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(invalid)?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Sends `request` on to the node at `address`, marked as forwarded,
    /// and answers with that node's response; `UNAVAILABLE` when it cannot
    /// be reached. A request already forwarded once is refused instead:
    /// two nodes that each believe the other serves must not pass a call
    /// round for ever.
    pub async fn forward<B>(&self, address: &str, mut request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        if was_forwarded(&request) {
            return unavailable("forwarded to a node that stands by too; retry once the store's lease moved".into());
        }
        let channel = match self.channel(address) {
            Ok(channel) => channel,
            Err(why) => return unavailable(why),
        };
        request.headers_mut().insert(FORWARDED, hyper::header::HeaderValue::from_static("1"));
        // The channel puts the node's scheme and authority in the URI.
        match tower::ServiceExt::oneshot(channel, request.map(Body::new)).await {
            Ok(response) => response,
            Err(e) => unavailable(format!("forwarding to the node at {address}: {e}")),
        }
    }
}

async fn accept(
    listener: TcpListener,
    upstream: Arc<Upstream>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    mut stopped: oneshot::Receiver<()>,
) -> TcpListener {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, usually: wait for some to close.
                tracing::warn!(error = %e, "standby: accepting a connection to forward");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(max_connections, "standby: too many forwarded connections; closing a new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (upstream, watcher, tls) = (Arc::clone(&upstream), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let served = match tls {
                Some(acceptor) => match tokio::time::timeout(GREETING, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve(stream, upstream, watcher).await,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "standby: TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                },
                None => {
                    let mut first = [0_u8; 1];
                    if !matches!(tokio::time::timeout(GREETING, stream.peek(&mut first)).await, Ok(Ok(1..))) {
                        return;
                    }
                    serve(stream, upstream, watcher).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "standby: a forwarded connection ended");
            }
            drop(slot);
        });
    }
    // GOAWAY now; the calls in flight finish (or fail, their node being
    // gone) on their own, without holding up the takeover.
    tokio::spawn(async move {
        if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
            tracing::info!("standby: forwarded calls still running after the takeover; they finish on their own");
        }
    });
    listener
}

/// One accepted connection, each of its requests forwarded, until it ends
/// or the takeover sends it away.
async fn serve<IO>(io: IO, upstream: Arc<Upstream>, watcher: Watcher) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| forward(Arc::clone(&upstream), request));
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(crate::connections::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(crate::connections::KEEPALIVE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    watcher.watch(connection).await
}

async fn forward(upstream: Arc<Upstream>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    Ok(match upstream.address() {
        Ok(address) => upstream.dialer.forward(&address, request).await,
        Err(why) => unavailable(why),
    })
}

fn unavailable(message: String) -> Response<Body> {
    tonic::Status::unavailable(message).into_http::<Body>()
}
