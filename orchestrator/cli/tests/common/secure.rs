//! Helpers for the security tests: token files, and calls with a token.

use std::path::{Path, PathBuf};

use sagaflow_server::auth::hash_token;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

pub const CLIENT: &str = "client-token-aaaaaaaaaaaaaaaa";
pub const OTHER_CLIENT: &str = "other-client-token-bbbbbbbbbbbb";
pub const WORKER: &str = "worker-token-cccccccccccccccc";
pub const BENCH_WORKER: &str = "bench-worker-token-dddddddddddd";
pub const OPERATOR: &str = "operator-token-eeeeeeeeeeeeeeee";

/// An auth file with one token per role, a second client, and a worker
/// confined to the bench queues.
pub fn write_auth_file(dir: &Path) -> PathBuf {
    let entry = |name: &str, role: &str, token: &str, queues: Option<&[&str]>| {
        let mut entry = serde_json::json!({"name": name, "role": role, "sha256": hash_token(token)});
        if let Some(queues) = queues {
            entry["queues"] = serde_json::json!(queues);
        }
        entry
    };
    let file = serde_json::json!({"tokens": [
        entry("shop", "client", CLIENT, None),
        entry("other-shop", "client", OTHER_CLIENT, None),
        entry("shop-workers", "worker", WORKER, None),
        entry("bench-workers", "worker", BENCH_WORKER, Some(&["bench.*"])),
        entry("oncall", "operator", OPERATOR, None),
    ]});
    let path = dir.join("auth.json");
    std::fs::write(&path, file.to_string()).unwrap();
    path
}

/// A server with [`write_auth_file`]'s tokens and `extra` arguments, in a
/// temporary directory that lives as long as the returned handle.
pub async fn start_server(extra: &[&str]) -> (super::ServerProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let auth = write_auth_file(dir.path());
    let mut args = vec!["--auth-file", auth.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = super::ServerProcess::start(&dir.path().join("data"), &args).await;
    (server, dir)
}

/// A request carrying `token` (if any) as a bearer token.
pub fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Calls any unary-shaped method by path with an empty message: enough to
/// see what the auth layer answers, whatever the method's real types.
pub async fn raw_call(channel: &Channel, path: &str, token: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = PathAndQuery::try_from(path.to_owned()).unwrap();
    match grpc.unary(with_token((), token), path, codec).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// Certificates made at test time: a CA, a server certificate for
/// localhost and 127.0.0.1 (good for client authentication too, as a node's
/// is: a standby shows it to the node it forwards to), a client certificate
/// from the same CA, and one from a CA the server does not trust.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// For localhost and 127.0.0.1 too, but good for serving only.
    pub serving_only_cert: PathBuf,
    pub serving_only_key: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

impl Pki {
    pub fn write(dir: &Path) -> Self {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let ca = authority("sagaflow test CA");
        let rogue_ca = authority("someone else's CA");
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (server_cert, server_key) = leaf(&ca, &["localhost", "127.0.0.1"], &[ServerAuth, ClientAuth]);
        let (client_cert, client_key) = leaf(&ca, &["worker-1"], &[ClientAuth]);
        let (serving_only_cert, serving_only_key) = leaf(&ca, &["localhost", "127.0.0.1"], &[ServerAuth]);
        let (rogue_cert, rogue_key) = leaf(&rogue_ca, &["intruder"], &[ClientAuth]);
        Self {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            serving_only_cert: write("serving-only.pem", serving_only_cert),
            serving_only_key: write("serving-only.key", serving_only_key),
            rogue_cert: write("rogue.pem", rogue_cert),
            rogue_key: write("rogue.key", rogue_key),
        }
    }

    /// `--tls-cert … --tls-key … --tls-client-ca …` for `sagaflow server`.
    pub fn server_args(&self) -> Vec<String> {
        [("--tls-cert", &self.server_cert), ("--tls-key", &self.server_key), ("--tls-client-ca", &self.ca)]
            .into_iter()
            .flat_map(|(flag, path)| [flag.to_owned(), path.to_str().unwrap().to_owned()])
            .collect()
    }

    /// `--tls-ca … --tls-client-cert … --tls-client-key …` for client commands.
    pub fn client_args(&self) -> Vec<String> {
        [("--tls-ca", &self.ca), ("--tls-client-cert", &self.client_cert), ("--tls-client-key", &self.client_key)]
            .into_iter()
            .flat_map(|(flag, path)| [flag.to_owned(), path.to_str().unwrap().to_owned()])
            .collect()
    }
}

fn authority(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names` signed by `issuer`, and its key, in PEM.
fn leaf(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    names: &[&str],
    usages: &[rcgen::ExtendedKeyUsagePurpose],
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
    params.extended_key_usages = usages.to_vec();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}
