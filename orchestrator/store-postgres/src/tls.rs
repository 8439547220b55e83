//! TLS to the database, as libpq spells it in the URL: `sslmode`,
//! `sslrootcert`, and `sslcert` with `sslkey` for a client certificate, over
//! rustls.
//!
//! - `sslmode=disable`: plain.
//! - `sslmode=prefer` (the default): plain, unless `sslrootcert` is given;
//!   then TLS when the server offers it.
//! - `sslmode=require`, `verify-ca` or `verify-full`: TLS, and the server's
//!   certificate is always verified against `sslrootcert`, its host name
//!   included. libpq's `require` skips the check; a store that trusts an
//!   unverified server with every history would only look safe, so the CA is
//!   required instead of guessed.
//! - `sslcert` and `sslkey` (PEM, both or neither): the certificate the
//!   client proves itself with, for a server whose `pg_hba.conf` says `cert`
//!   (or `clientcert=verify-full`). Only on an encrypted connection: given
//!   where the connection would be plain, they are refused, not ignored.
//!
//! tokio-postgres knows none of these files nor the `verify-*` modes: they
//! are taken out of the URL before it is parsed.

use std::sync::Arc;

use sagaflow_store::{Error, Result};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// How to reach the database: its parsed configuration, and the TLS
/// connector when the connection is to be encrypted.
pub(crate) struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Option<MakeRustlsConnect>,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let invalid = |why: String| Error::Engine(format!("the database URL: {why}"));
        let (url, files) = take_libpq_only(url);
        let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| invalid(format!("{e}")))?;
        let identity = match (files.cert, files.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(invalid("sslcert and sslkey go together: the certificate and its private key".into())),
        };
        let encrypt = match config.get_ssl_mode() {
            SslMode::Disable if files.root_cert.is_some() || identity.is_some() => {
                return Err(invalid("sslrootcert, sslcert or sslkey with sslmode=disable".into()));
            }
            SslMode::Disable => false,
            SslMode::Prefer => files.root_cert.is_some(),
            _ => true,
        };
        if !encrypt && identity.is_some() {
            return Err(invalid(
                "sslcert and sslkey need an encrypted connection: add sslrootcert=FILE (and sslmode=verify-full)"
                    .into(),
            ));
        }
        let tls = match (encrypt, files.root_cert) {
            (false, _) => None,
            (true, Some(path)) => Some(MakeRustlsConnect::new(client_config(&path, identity.as_ref())?)),
            (true, None) => {
                return Err(invalid(
                    "sslmode=require (or verify-ca, verify-full) needs sslrootcert=FILE, the CA that signed the \
                     database's certificate: Sagaflow always verifies it, host name included"
                        .into(),
                ));
            }
        };
        Ok(Self { config, tls })
    }
}

/// The files libpq's URL names and tokio-postgres does not know.
#[derive(Debug, Default, PartialEq)]
struct Files {
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// The URL without the files' parameters and with a `verify-*` mode as
/// `require` (which, here, verifies as `verify-full` does), and the files.
fn take_libpq_only(url: &str) -> (String, Files) {
    let mut files = Files::default();
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), files) };
    let kept: Vec<String> = query
        .split('&')
        .filter_map(|pair| {
            let slot = match pair.split_once('=') {
                Some(("sslrootcert", path)) => Some((&mut files.root_cert, path)),
                Some(("sslcert", path)) => Some((&mut files.cert, path)),
                Some(("sslkey", path)) => Some((&mut files.key, path)),
                Some(("sslmode", "verify-ca" | "verify-full")) => return Some("sslmode=require".to_owned()),
                _ => None,
            };
            match slot {
                Some((slot, path)) => {
                    *slot = Some(percent_decode(path));
                    None
                }
                None => Some(pair.to_owned()),
            }
        })
        .collect();
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (url, files)
}

/// `%2F` and the like, as a path in a URL may be written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// rustls' configuration: the roots from `root_cert`, and the client's
/// certificate and key (paths) when given.
fn client_config(root_cert: &str, identity: Option<&(String, String)>) -> Result<ClientConfig> {
    let unusable = |why: String| Error::Engine(format!("sslrootcert {root_cert}: {why}"));
    let pem = std::fs::read(root_cert).map_err(|e| unusable(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| unusable(format!("not PEM certificates: {e}")))?;
        roots.add(cert).map_err(|e| unusable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(unusable("holds no certificate".into()));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?
        .with_root_certificates(roots);
    let Some((cert, key)) = identity else { return Ok(config.with_no_client_auth()) };
    let (chain, key_der) = client_identity(cert, key)?;
    config
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| Error::Engine(format!("sslcert {cert} with sslkey {key}: {e}")))
}

fn client_identity(cert: &str, key: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let unusable = |which: &str, path: &str, why: String| Error::Engine(format!("{which} {path}: {why}"));
    let pem = std::fs::read(cert).map_err(|e| unusable("sslcert", cert, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| unusable("sslcert", cert, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(unusable("sslcert", cert, "holds no certificate".into()));
    }
    let pem = std::fs::read(key).map_err(|e| unusable("sslkey", key, e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| unusable("sslkey", key, format!("not a PEM private key: {e}")))?;
    Ok((chain, key_der))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn libpq_only_parameters_are_taken_out() {
        let roots = |path: &str| Files { root_cert: Some(path.into()), ..Files::default() };
        assert_eq!(take_libpq_only("postgres://u@h/db"), ("postgres://u@h/db".into(), Files::default()));
        assert_eq!(
            take_libpq_only("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x"),
            ("postgres://u@h/db?sslmode=require&application_name=x".into(), roots("/etc/ca.pem"))
        );
        assert_eq!(
            take_libpq_only("postgres://u@h/db?sslrootcert=/ca.pem"),
            ("postgres://u@h/db".into(), roots("/ca.pem"))
        );
        assert_eq!(
            take_libpq_only("postgres://u@h/db?sslcert=/c.pem&sslmode=require&sslkey=/k.pem&sslrootcert=/ca.pem"),
            (
                "postgres://u@h/db?sslmode=require".into(),
                Files { root_cert: Some("/ca.pem".into()), cert: Some("/c.pem".into()), key: Some("/k.pem".into()) }
            )
        );
    }

    #[test]
    fn an_encrypted_mode_without_a_root_certificate_is_refused() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let refused = Target::parse(&format!("postgres://u@h/db?sslmode={mode}")).err().unwrap();
            assert!(refused.to_string().contains("needs sslrootcert"), "{mode}: {refused}");
        }
        assert!(Target::parse("postgres://u@h/db?sslmode=disable&sslrootcert=/x").is_err());
        let missing = Target::parse("postgres://u@h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem");
        assert!(missing.err().unwrap().to_string().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_an_encrypted_connection() {
        let refused = |url: &str| Target::parse(url).err().unwrap().to_string();
        assert!(refused("postgres://u@h/db?sslmode=require&sslrootcert=/ca&sslcert=/c").contains("go together"));
        assert!(refused("postgres://u@h/db?sslkey=/k").contains("go together"));
        assert!(refused("postgres://u@h/db?sslcert=/c&sslkey=/k").contains("need an encrypted connection"));
        assert!(refused("postgres://u@h/db?sslmode=disable&sslcert=/c&sslkey=/k").contains("sslmode=disable"));
    }

    #[test]
    fn plain_unless_asked() {
        assert!(Target::parse("postgres://u@h/db").unwrap().tls.is_none());
        assert!(Target::parse("postgres://u@h/db?sslmode=disable").unwrap().tls.is_none());
    }
}
