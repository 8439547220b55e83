//! TLS on both listeners, with rustls: the server's certificate, and, when a
//! client CA is given, client certificates required (mTLS).
//!
//! gRPC uses tonic's own rustls acceptor; the HTTP listener (metrics, health)
//! gets the same certificate through [`TlsListener`], so one set of files
//! covers both ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer than this is dropped: a client that opens a
/// connection and says nothing must not hold a slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once on the HTTP port; more are dropped.
const MAX_HANDSHAKES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no {what} in PEM form")]
    Pem { path: PathBuf, what: &'static str },
    #[error("invalid TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client CA: {0}")]
    ClientCa(String),
    #[error("{0}")]
    NotForPeers(String),
    #[error("invalid gRPC TLS setup: {0}")]
    Tonic(#[from] tonic::transport::Error),
}

/// The PEM files, read once at start.
#[derive(Clone)]
pub struct TlsFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    peer_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("TlsFiles")
            .field("mtls", &self.client_ca.is_some())
            .field("forwards", &self.peer_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// The TLS of a standby's forwarding ([`TlsFiles::forwarding`]).
#[derive(Clone)]
pub struct Forwarding {
    pub accept: TlsAcceptor,
    pub dial: tonic::transport::ClientTlsConfig,
}

fn roots(pem: &[u8]) -> Result<RootCertStore, ()> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.map_err(|_| ())?).map_err(|_| ())?;
    }
    if roots.is_empty() { Err(()) } else { Ok(roots) }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read { path: path.to_owned(), source })
}

impl TlsFiles {
    /// Reads and checks the certificate chain, its key, and the optional client CA.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, Error> {
        let files =
            Self { cert: read(cert)?, key: read(key)?, client_ca: client_ca.map(read).transpose()?, peer_ca: None };
        // Fail at start, with the file's name, rather than at the first handshake.
        files.certs().map_err(|_| Error::Pem { path: cert.to_owned(), what: "certificate" })?;
        files.private_key().map_err(|_| Error::Pem { path: key.to_owned(), what: "private key" })?;
        if let Some(path) = client_ca {
            files.client_roots().map_err(|_| Error::Pem { path: path.to_owned(), what: "CA certificate" })?;
        }
        files.rustls()?;
        Ok(files)
    }

    /// Trusts the CA (PEM) that signed the other nodes' certificates, so
    /// that this node, standing by, forwards calls to the serving node over
    /// TLS ([`TlsFiles::forwarding`]).
    ///
    /// Where nodes require client certificates, this node's certificate
    /// is what it shows the serving node: it is checked now, as the other
    /// nodes will check it, so that a certificate not made for client
    /// authentication fails the start rather than the first failover.
    pub fn with_peer_ca(mut self, path: &Path) -> Result<Self, Error> {
        let pem = read(path)?;
        if roots(&pem).is_err() {
            return Err(Error::Pem { path: path.to_owned(), what: "CA certificate" });
        }
        self.peer_ca = Some(pem);
        self.check_client_authentication()?;
        Ok(self)
    }

    fn check_client_authentication(&self) -> Result<(), Error> {
        use tokio_rustls::rustls::pki_types::UnixTime;
        let Ok(Some(client_roots)) = self.client_roots() else { return Ok(()) };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider)
            .build()
            .map_err(|e| Error::ClientCa(e.to_string()))?;
        let chain = self.certs().map_err(|()| Error::ClientCa("no server certificate".into()))?;
        let (own, intermediates) =
            chain.split_first().ok_or_else(|| Error::ClientCa("no server certificate".into()))?;
        verifier.verify_client_cert(own, intermediates, UnixTime::now()).map(drop).map_err(|e| {
            Error::NotForPeers(format!(
                "--tls-cert's certificate cannot authenticate this node to the others, which require client \
                 certificates (--tls-client-ca): it needs the extended key usage clientAuth besides serverAuth, \
                 and a chain to the client CA ({e})"
            ))
        })
    }

    /// What a standby needs to forward over TLS: its own certificate to
    /// accept with, offering HTTP/2; and, to dial the serving node, the
    /// peers' CA and its own certificate as a client certificate (for a
    /// serving node that requires one). `None` without a peer CA.
    pub fn forwarding(&self) -> Result<Option<Forwarding>, Error> {
        let Some(peer_ca) = &self.peer_ca else { return Ok(None) };
        let mut accept = self.rustls()?;
        accept.alpn_protocols = vec![b"h2".to_vec()];
        let dial = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(peer_ca))
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key));
        Ok(Some(Forwarding { accept: TlsAcceptor::from(Arc::new(accept)), dial }))
    }

    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    fn certs(&self) -> Result<Vec<CertificateDer<'static>>, ()> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&self.cert).collect::<Result<_, _>>().map_err(|_| ())?;
        if certs.is_empty() { Err(()) } else { Ok(certs) }
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, ()> {
        PrivateKeyDer::from_pem_slice(&self.key).map_err(|_| ())
    }

    fn client_roots(&self) -> Result<Option<RootCertStore>, ()> {
        self.client_ca.as_deref().map(roots).transpose()
    }

    /// The rustls configuration of the HTTP listener.
    fn rustls(&self) -> Result<ServerConfig, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
        let builder = match self.client_roots() {
            Ok(Some(roots)) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| Error::ClientCa(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            Ok(None) => builder.with_no_client_auth(),
            Err(()) => return Err(Error::ClientCa("no certificate".into())),
        };
        let certs = self.certs().map_err(|()| Error::ClientCa("no server certificate".into()))?;
        let key = self.private_key().map_err(|()| Error::ClientCa("no private key".into()))?;
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The tonic configuration of the gRPC listener.
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        config
    }

    /// Wraps the HTTP listener: handshakes run in their own tasks, so a slow
    /// or silent client never blocks the accept loop.
    pub fn listener(&self, tcp: TcpListener) -> Result<TlsListener, Error> {
        let addr = tcp.local_addr().map_err(|source| Error::Read { path: PathBuf::from("<listener>"), source })?;
        let acceptor = TlsAcceptor::from(Arc::new(self.rustls()?));
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(TlsListener { rx, addr, task })
    }
}

async fn accept_loop(tcp: TcpListener, acceptor: TlsAcceptor, tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "https accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::debug!(%peer, "too many TLS handshakes in progress; dropped a connection");
            continue;
        };
        if tx.is_closed() {
            return;
        }
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    drop(permit);
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The HTTP listener's TLS side, for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (only when this listener is dropped): wait forever,
            // as a listener with no more connections does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
