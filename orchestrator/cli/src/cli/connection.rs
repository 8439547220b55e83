//! How the CLI's client commands reach the server: the token and TLS from the
//! global flags, applied to every gRPC channel they open.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Global flags: who the CLI is, and how it trusts the server.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// API token for a server that runs with --auth-file.
    #[arg(long, global = true, help_heading = super::GLOBAL, env = "SAGAFLOW_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the API token from this file (keeps it out of the process list and shell history).
    #[arg(long, global = true, help_heading = super::GLOBAL, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate; use with an https:// --server.
    #[arg(long, global = true, help_heading = super::GLOBAL, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires mTLS.
    #[arg(long, global = true, help_heading = super::GLOBAL, value_name = "PEM", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, help_heading = super::GLOBAL, value_name = "PEM", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

/// What every channel gets; resolved once from the flags.
#[derive(Clone, Default)]
pub struct Connection {
    pub token: Option<String>,
    pub tls: Option<ClientTlsConfig>,
}

/// Set once before any command runs. Kept process-wide so that the many
/// client commands keep their `(command, server, output)` signatures.
static CONNECTION: OnceLock<Connection> = OnceLock::new();

impl ClientArgs {
    pub fn resolve(&self) -> anyhow::Result<Connection> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let tls = if self.tls_ca.is_some() || self.tls_client_cert.is_some() {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
                tls = tls.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
            }
            Some(tls)
        } else {
            None
        };
        Ok(Connection { token, tls })
    }
}

pub fn read_pem(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn install(connection: Connection) {
    let _ = CONNECTION.set(connection);
}

pub fn current() -> Connection {
    CONNECTION.get().cloned().unwrap_or_default()
}

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A channel that carries the CLI's token.
pub type Conn = InterceptedService<Channel, Bearer>;

/// A channel to `server`: one URL, or the comma-separated nodes of a cluster.
/// Of several nodes the first that serves is used: one that cannot be
/// reached, or that answers its health check with anything but `SERVING`
/// (a standby whose serving node just died answers `UNAVAILABLE` until one
/// takes over), is passed over for the next.
pub async fn connect_channel(server: &str) -> anyhow::Result<Conn> {
    let connection = current();
    // A mistyped URL is an error even when another node would serve.
    let nodes = server
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(|node| endpoint(node, &connection).map(|endpoint| (node, endpoint)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut passed_over = Vec::new();
    for (node, endpoint) in &nodes {
        let reached = match endpoint.connect().await {
            Ok(channel) if nodes.len() == 1 => Ok(channel),
            Ok(channel) => serving(channel.clone())
                .await
                .map(|()| channel)
                .map_err(|e| e.context(format!("the server at {node} cannot serve"))),
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot reach the server at {node}"))),
        };
        match reached {
            Ok(channel) => return with_token(channel, connection.token.as_deref()),
            Err(e) => passed_over.push(e),
        }
    }
    match passed_over.len() {
        0 => anyhow::bail!("no server URL in {server:?}"),
        1 => Err(passed_over.remove(0)),
        _ => {
            let reasons: Vec<String> = passed_over.iter().map(|e| format!("{e:#}")).collect();
            anyhow::bail!("no node of {server} serves: {}", reasons.join("; "))
        }
    }
}

fn endpoint(node: &str, connection: &Connection) -> anyhow::Result<Endpoint> {
    let mut endpoint = Channel::from_shared(node.to_owned())
        .with_context(|| format!("{node:?} is not a server URL (expected http://HOST:PORT or https://HOST:PORT)"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = &connection.tls {
        endpoint = endpoint.tls_config(tls.clone()).context("invalid TLS settings")?;
    }
    Ok(endpoint)
}

/// Whether the node at `channel` serves: its gRPC health check (which needs
/// no token) answers `SERVING` within a few seconds.
async fn serving(channel: Channel) -> anyhow::Result<()> {
    let mut health = HealthClient::new(channel);
    let check = health.check(HealthCheckRequest { service: String::new() });
    let answer = tokio::time::timeout(HEALTH_CHECK_WITHIN, check)
        .await
        .map_err(|_| anyhow::anyhow!("its health check got no answer within {HEALTH_CHECK_WITHIN:?}"))?
        .map_err(|status| anyhow::anyhow!("its health check failed: {}: {}", status.code(), status.message()))?;
    let status = ServingStatus::try_from(answer.into_inner().status).unwrap_or(ServingStatus::Unknown);
    anyhow::ensure!(status == ServingStatus::Serving, "it does not serve (health: {})", status.as_str_name());
    Ok(())
}

const HEALTH_CHECK_WITHIN: Duration = Duration::from_secs(3);

/// `channel`, carrying `token` (none: no `authorization` header).
pub fn with_token(channel: Channel, token: Option<&str>) -> anyhow::Result<Conn> {
    let bearer = match token {
        Some(token) => {
            let mut value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| anyhow::anyhow!("the token must be printable ASCII"))?;
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}
