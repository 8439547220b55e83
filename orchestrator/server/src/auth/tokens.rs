//! The token file and the check of a presented bearer token against it.
//!
//! The file holds SHA-256 hashes, never tokens: a leaked config file (a
//! backup, a support bundle) must not let anyone call the server. Tokens are
//! long random strings, so an unsalted fast hash is enough: there is no
//! dictionary to try, unlike with passwords.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Error, Principal, Role};

/// A token shorter than this is refused by `hash-token`: it could be guessed.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Bounds what one request makes the server hash; real tokens are far shorter.
const MAX_TOKEN_BYTES: usize = 1024;
/// Bounds the per-request scan over entries; a deployment needs a handful.
const MAX_ENTRIES: usize = 1024;

/// `--auth-file`: `{"tokens": [{"name", "role", "sha256", "queues"?}]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    /// Who holds the token; appears in logs and metrics instead of the token.
    name: String,
    role: Role,
    /// Hex SHA-256 of the token, as `sagaflow auth hash-token` prints it.
    sha256: String,
    /// For workers: the task queues (activity types) it may serve. `*` at
    /// the end matches a prefix; absent means every queue.
    #[serde(default)]
    queues: Option<Vec<String>>,
}

/// The tokens a server accepts. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Tokens {
    entries: Vec<(Principal, [u8; 32])>,
}

impl Tokens {
    /// Reads and checks a token file.
    ///
    /// # Errors
    /// [`Error::Read`] or [`Error::Config`] naming what is wrong.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|reason| Error::Config { path: path.to_owned(), reason })
    }

    /// Parses the JSON text of a token file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokenFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.tokens.is_empty() {
            return Err("no tokens: every call would be refused".into());
        }
        if file.tokens.len() > MAX_ENTRIES {
            return Err(format!("{} tokens; the limit is {MAX_ENTRIES}", file.tokens.len()));
        }
        let mut entries = Vec::with_capacity(file.tokens.len());
        for entry in file.tokens {
            if entry.name.is_empty() || entry.name.len() > 255 || entry.name.chars().any(char::is_control) {
                return Err(format!("token name {:?} must be 1 to 255 printable bytes", entry.name));
            }
            // A client's ids are `NAME:ID` (`Principal::scoped`): with a `:`
            // in a name, two tenants could share an id.
            if entry.role == Role::Client && entry.name.contains(super::TENANT_SEPARATOR) {
                return Err(format!(
                    "client token name {:?} must not contain {:?}",
                    entry.name,
                    super::TENANT_SEPARATOR
                ));
            }
            let hash = parse_hex(&entry.sha256)
                .ok_or_else(|| format!("token {:?}: sha256 must be 64 hex digits", entry.name))?;
            if entries.iter().any(|(p, h): &(Principal, [u8; 32])| p.name == entry.name || *h == hash) {
                return Err(format!("token {:?} is listed twice (same name or same hash)", entry.name));
            }
            if entry.queues.is_some() && entry.role != Role::Worker {
                return Err(format!("token {:?}: queues apply to the worker role only", entry.name));
            }
            entries.push((Principal { name: entry.name, role: entry.role, queues: entry.queues }, hash));
        }
        Ok(Self { entries })
    }

    /// The principal whose hash matches `token`. Every entry is compared, in
    /// constant time, so the timing says nothing about which one (if any) matched.
    pub fn find(&self, token: &str) -> Option<&Principal> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let presented = sha256(token);
        let mut found = None;
        for (principal, hash) in &self.entries {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(principal);
            }
        }
        found
    }

    /// These tokens and one more, held in memory only: the worker role for
    /// `queues`, under `name`. The orchestrator gives it to its own in-process
    /// jobs worker, so that this worker passes the same checks as any other.
    pub fn with_internal_worker(&self, name: &str, token: &str, queues: Vec<String>) -> Self {
        let mut entries = self.entries.clone();
        entries.push((Principal { name: name.to_owned(), role: Role::Worker, queues: Some(queues) }, sha256(token)));
        Self { entries }
    }

    /// The same tokens, and `token` for the cluster's other nodes: a
    /// [`Role::Node`] principal that may call the node service only.
    pub fn with_peer_nodes(&self, token: &str) -> Self {
        let mut entries = self.entries.clone();
        entries.push((Principal { name: NODE_NAME.to_owned(), role: Role::Node, queues: None }, sha256(token)));
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The name the cluster's nodes call each other under.
pub const NODE_NAME: &str = "sagaflow.node";

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The hex SHA-256 that a token file stores for `token`.
pub fn hash_token(token: &str) -> String {
    sha256(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &str) -> String {
        format!(r#"{{"tokens": [{entries}]}}"#)
    }

    #[test]
    fn a_token_is_found_by_its_hash_only() {
        let text = file(&format!(
            r#"{{"name": "shop", "role": "client", "sha256": "{}"}},
               {{"name": "ops", "role": "operator", "sha256": "{}"}}"#,
            hash_token("client-secret-0123456789"),
            hash_token("operator-secret-0123456789")
        ));
        let tokens = Tokens::parse(&text).expect("valid file");
        assert_eq!(tokens.find("client-secret-0123456789").map(|p| p.role), Some(Role::Client));
        assert_eq!(tokens.find("operator-secret-0123456789").map(|p| p.name.as_str()), Some("ops"));
        assert!(tokens.find("client-secret-012345678").is_none());
        assert!(tokens.find("").is_none());
        assert!(tokens.find(&"x".repeat(4096)).is_none());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let h = hash_token("a-token-of-some-length");
        let cases = [
            (file(""), "no tokens"),
            (file(r#"{"name": "a", "role": "client", "sha256": "abc"}"#), "64 hex digits"),
            (file(&format!(r#"{{"name": "a", "role": "root", "sha256": "{h}"}}"#)), "unknown variant"),
            (
                file(&format!(
                    r#"{{"name": "a", "role": "client", "sha256": "{h}"}}, {{"name": "b", "role": "worker", "sha256": "{h}"}}"#
                )),
                "listed twice",
            ),
            (file(&format!(r#"{{"name": "a", "role": "client", "sha256": "{h}", "queues": ["x"]}}"#)), "worker role"),
            (file(&format!(r#"{{"name": "", "role": "client", "sha256": "{h}"}}"#)), "token name"),
        ];
        for (text, expected) in cases {
            let error = Tokens::parse(&text).expect_err(&text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        // SHA-256 of "abc", FIPS 180-2 appendix B.1.
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(parse_hex(&hash_token("abc")), Some(sha256("abc")));
        assert_eq!(parse_hex("zz"), None);
    }
}
