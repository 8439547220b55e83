//! A gRPC transport inside the process: the orchestrator's own jobs worker
//! reaches the worker service through it rather than through the public
//! listener. So it works the same whether that listener speaks TLS (with or
//! without client certificates) or not, and whatever address it is bound to.
//! Each connection is an in-memory duplex pipe; the worker side still goes
//! through the auth layer with its internal token.

use std::io;

use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Bytes buffered in each direction of one connection.
const PIPE_BYTES: usize = 256 * 1024;

/// Connections waiting for the server to accept them.
const BACKLOG: usize = 8;

/// The server's side: a stream of accepted connections, for
/// `serve_with_incoming_shutdown`.
pub type Incoming = ReceiverStream<io::Result<DuplexStream>>;

/// A channel whose connections land in the returned [`Incoming`]. The
/// channel connects lazily and reconnects like any other.
pub fn channel() -> (Channel, Incoming) {
    let (accept, incoming) = mpsc::channel(BACKLOG);
    let connector = tower::service_fn(move |_: Uri| {
        let accept = accept.clone();
        async move {
            let (client, server) = tokio::io::duplex(PIPE_BYTES);
            accept
                .send(Ok(server))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::ConnectionRefused, "the in-process server has stopped"))?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(client))
        }
    });
    // The URI only names the endpoint in logs; the connector ignores it.
    let channel = Endpoint::from_static(URI).connect_with_connector_lazy(connector);
    (channel, ReceiverStream::new(incoming))
}

/// How the in-process endpoint appears in the worker's logs.
pub const URI: &str = "http://in-process.sagaflow";
