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

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Either;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

/// How long the forwarded connections' shutdown is waited for (in the
/// background) before saying that calls are still running.
const DRAIN: Duration = Duration::from_secs(1);
/// A serving node that does not accept within this is as good as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pings on the connection to the serving node, so that one that died
/// without closing it (a paused or cut-off machine) is noticed.
const UPSTREAM_KEEPALIVE: Duration = Duration::from_secs(5);
/// A connection that sends nothing within this is closed: silent ones
/// would hold their slots for ever.
const GREETING: Duration = Duration::from_secs(10);

/// Marks a forwarded request. A standby never forwards a request that
/// carries it: when the lease still names a node that died at this very
/// address (a restarted node, before the old lease ran out), or two
/// standbys each believe the other serves, the call is refused instead of
/// going round.
const FORWARDED: &str = "x-sagaflow-forwarded";

type Upstream = Client<HttpConnector, Incoming>;
type Answer = Response<Either<Incoming, tonic::body::Body>>;

/// Forwards what a standby's listener accepts, until [`Forwarder::stop`].
pub struct Forwarder {
    stop: oneshot::Sender<()>,
    task: JoinHandle<TcpListener>,
}

impl Forwarder {
    /// Forwards each request `listener` accepts to the `host:port` that
    /// `serving` holds at that moment (`None`: no node serves yet, and the
    /// call is answered `UNAVAILABLE`); at most `max_connections` at once.
    pub fn start(listener: TcpListener, serving: watch::Receiver<Option<String>>, max_connections: usize) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept(listener, serving, max_connections, stopped));
        Self { stop, task }
    }

    /// Stops accepting, tells the forwarded connections to go away, and
    /// gives the listener back.
    pub async fn stop(self) -> std::io::Result<TcpListener> {
        let _ = self.stop.send(());
        self.task.await.map_err(std::io::Error::other)
    }
}

async fn accept(
    listener: TcpListener,
    serving: watch::Receiver<Option<String>>,
    max_connections: usize,
    mut stopped: oneshot::Receiver<()>,
) -> TcpListener {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    let upstream: Upstream = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(UPSTREAM_KEEPALIVE)
        .http2_keep_alive_timeout(UPSTREAM_KEEPALIVE)
        .build(connector);
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
        let (upstream, serving, watcher) = (upstream.clone(), serving.clone(), graceful.watcher());
        tokio::spawn(async move {
            let mut first = [0_u8; 1];
            if !matches!(tokio::time::timeout(GREETING, stream.peek(&mut first)).await, Ok(Ok(1..))) {
                return;
            }
            let service = service_fn(move |request| forward(upstream.clone(), serving.clone(), request));
            let connection = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(crate::connections::KEEPALIVE_INTERVAL)
                .keep_alive_timeout(crate::connections::KEEPALIVE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(connection).await;
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

async fn forward(
    upstream: Upstream,
    serving: watch::Receiver<Option<String>>,
    mut request: Request<Incoming>,
) -> Result<Answer, Infallible> {
    if request.headers().contains_key(FORWARDED) {
        return Ok(unavailable("forwarded to a node that stands by too; retry once the store's lease moved".into()));
    }
    let Some(address) = serving.borrow().clone() else {
        return Ok(unavailable(
            "this node stands by and knows no address of the serving node (none serves yet, or it gave no \
             --advertise); retry, or call the serving node"
                .into(),
        ));
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri = match Uri::builder().scheme("http").authority(address.as_str()).path_and_query(path).build() {
        Ok(uri) => uri,
        Err(e) => return Ok(unavailable(format!("the serving node's address {address:?} is not host:port: {e}"))),
    };
    *request.uri_mut() = uri;
    request.headers_mut().insert(FORWARDED, hyper::header::HeaderValue::from_static("1"));
    match upstream.request(request).await {
        Ok(response) => Ok(response.map(Either::Left)),
        Err(e) => Ok(unavailable(format!("this node stands by; forwarding to the serving node at {address}: {e}"))),
    }
}

fn unavailable(message: String) -> Answer {
    tonic::Status::unavailable(message).into_http::<tonic::body::Body>().map(Either::Right)
}
