//! TLS to the database, as libpq spells it in the URL: `sslmode` and
//! `sslrootcert`, over rustls.
//!
//! - `sslmode=disable`: plain.
//! - `sslmode=prefer` (the default): plain, unless `sslrootcert` is given;
//!   then TLS when the server offers it.
//! - `sslmode=require`, `verify-ca` or `verify-full`: TLS, and the server's
//!   certificate is always verified against `sslrootcert`, its host name
//!   included. libpq's `require` skips the check; a store that trusts an
//!   unverified server with every history would only look safe, so the CA is
//!   required instead of guessed.
//!
//! tokio-postgres knows neither `sslrootcert` nor the `verify-*` modes: they
//! are taken out of the URL before it is parsed.

use std::sync::Arc;

use sagaflow_store::{Error, Result};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
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
        let (url, root_cert) = take_libpq_only(url);
        let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| invalid(format!("{e}")))?;
        let encrypt = match config.get_ssl_mode() {
            SslMode::Disable if root_cert.is_some() => {
                return Err(invalid("sslrootcert with sslmode=disable".into()));
            }
            SslMode::Disable => false,
            SslMode::Prefer => root_cert.is_some(),
            _ => true,
        };
        let tls = match (encrypt, root_cert) {
            (false, _) => None,
            (true, Some(path)) => Some(MakeRustlsConnect::new(client_config(&path)?)),
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

/// The URL without `sslrootcert` and with a `verify-*` mode as `require`
/// (which, here, verifies as `verify-full` does), and the root certificate's
/// path.
fn take_libpq_only(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let mut root_cert = None;
    let kept: Vec<String> = query
        .split('&')
        .filter_map(|pair| match pair.split_once('=') {
            Some(("sslrootcert", path)) => {
                root_cert = Some(percent_decode(path));
                None
            }
            Some(("sslmode", "verify-ca" | "verify-full")) => Some("sslmode=require".to_owned()),
            _ => Some(pair.to_owned()),
        })
        .collect();
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (url, root_cert)
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

fn client_config(root_cert: &str) -> Result<ClientConfig> {
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
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn libpq_only_parameters_are_taken_out() {
        assert_eq!(take_libpq_only("postgres://u@h/db"), ("postgres://u@h/db".into(), None));
        assert_eq!(
            take_libpq_only("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x"),
            ("postgres://u@h/db?sslmode=require&application_name=x".into(), Some("/etc/ca.pem".into()))
        );
        assert_eq!(
            take_libpq_only("postgres://u@h/db?sslrootcert=/ca.pem"),
            ("postgres://u@h/db".into(), Some("/ca.pem".into()))
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
    fn plain_unless_asked() {
        assert!(Target::parse("postgres://u@h/db").unwrap().tls.is_none());
        assert!(Target::parse("postgres://u@h/db?sslmode=disable").unwrap().tls.is_none());
    }
}
