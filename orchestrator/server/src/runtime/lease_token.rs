//! Lease tokens: what a worker shows to prove that it holds an attempt's lease.
//!
//! Task ids are predictable (`2.f.1` under a workflow id derived from a
//! request id), so an id alone must complete nothing. Each lease handed to a
//! worker carries a token: an HMAC over the worker token's name, the task and
//! the lease's start, under a key only this server knows. A worker echoes it
//! with its outcome, heartbeats and reconnect claims. The check needs no
//! lookup, so a late outcome (its lease already gone) is still attributed
//! to the worker it was issued to, like Temporal's task tokens.
//!
//! The key lives in the data directory (in the database, for a cluster on
//! PostgreSQL, where every node shares it), so that tokens survive a restart
//! and a takeover: a worker that kept running through one reports with the
//! token it holds.

use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const KEY_BYTES: usize = 32;
/// Half of SHA-256's tag: 2^-128 per forgery attempt is plenty, and tokens stay short.
const TAG_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read or write the lease key {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "the lease key {path} holds {len} bytes, not {KEY_BYTES}; remove it to make a new one (running workers then reconnect)"
    )]
    Corrupt { path: String, len: usize },
    #[error("the cluster's lease key in the database holds {len} bytes, not {KEY_BYTES}")]
    CorruptShared { len: usize },
}

/// The server's secret for lease tokens.
#[derive(Clone)]
pub struct LeaseKey([u8; KEY_BYTES]);

impl std::fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseKey(…)")
    }
}

impl LeaseKey {
    /// A key for this process only (the in-memory store).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// A fresh key's bytes, for a store that keeps the key itself.
    pub fn fresh_bytes() -> Vec<u8> {
        Self::random().0.to_vec()
    }

    /// The key a cluster keeps in its database.
    pub fn from_shared(bytes: &[u8]) -> Result<Self, Error> {
        bytes.try_into().map(Self).map_err(|_| Error::CorruptShared { len: bytes.len() })
    }

    /// Reads the key at `path`, or makes one there (mode 0600, synced and
    /// renamed into place, so that a crash never leaves half a key).
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io { path: path.display().to_string(), source };
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; KEY_BYTES] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt { path: path.display().to_string(), len: bytes.len() })?;
                return Ok(Self(key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let key = Self::random();
        let partial = path.with_extension("partial");
        let mut file = create_private(&partial).map_err(io)?;
        file.write_all(&key.0).and_then(|()| file.sync_all()).map_err(io)?;
        std::fs::rename(&partial, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(key)
    }

    fn mac(&self, holder: &str, workflow_id: &str, task_id: &str, started_ms: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        // Length-prefixed, so that no two field lists share an encoding.
        for field in [holder, workflow_id, task_id] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac.update(&started_ms.to_be_bytes());
        mac
    }

    /// The token the cluster's nodes present to each other (ADR 0030):
    /// every node holds the cluster's key, and no one else does. Its domain
    /// differs from any lease's, whose MAC starts with a field's length.
    pub fn node_token(&self) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(b"sagaflow node token v1");
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The token for a lease on `task_id` granted to the worker token `holder`.
    pub fn sign(&self, holder: &str, workflow_id: &str, task_id: &str, started_ms: i64) -> String {
        let tag = self.mac(holder, workflow_id, task_id, started_ms).finalize().into_bytes();
        let mut token = format!("{started_ms}.");
        for byte in &tag[..TAG_BYTES] {
            token.push_str(&format!("{byte:02x}"));
        }
        token
    }

    /// Whether `token` was issued by this server to `holder` for `task_id`.
    pub fn verify(&self, holder: &str, workflow_id: &str, task_id: &str, token: &str) -> bool {
        let Some((started, tag)) = token.split_once('.') else { return false };
        let (Ok(started_ms), Some(tag)) = (started.parse::<i64>(), decode_hex(tag)) else { return false };
        tag.len() == TAG_BYTES && self.mac(holder, workflow_id, task_id, started_ms).verify_truncated_left(&tag).is_ok()
    }
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_token_proves_the_holder_and_the_task_and_nothing_else() {
        let key = LeaseKey::random();
        let token = key.sign("shop-workers", "chk-1", "2.f.1", 1_000);
        assert!(key.verify("shop-workers", "chk-1", "2.f.1", &token));
        assert!(!key.verify("bench-workers", "chk-1", "2.f.1", &token), "another token's name");
        assert!(!key.verify("shop-workers", "chk-2", "2.f.1", &token), "another workflow");
        assert!(!key.verify("shop-workers", "chk-1", "2.f.2", &token), "another attempt");
        assert!(!LeaseKey::random().verify("shop-workers", "chk-1", "2.f.1", &token), "another server");
        let moved = token.replacen("1000.", "1001.", 1);
        assert!(!key.verify("shop-workers", "chk-1", "2.f.1", &moved), "another lease start");
        for junk in ["", ".", "1000", "1000.zz", "x.00", &token[..token.len() - 2]] {
            assert!(!key.verify("shop-workers", "chk-1", "2.f.1", junk), "{junk:?}");
        }
    }

    #[test]
    fn the_key_survives_a_restart_and_a_bad_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease.key");
        let first = LeaseKey::load_or_create(&path).unwrap();
        let token = first.sign("w", "wf", "0.f.1", 5);
        let again = LeaseKey::load_or_create(&path).unwrap();
        assert!(again.verify("w", "wf", "0.f.1", &token));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(LeaseKey::load_or_create(&path), Err(Error::Corrupt { len: 5, .. })));
    }
}
