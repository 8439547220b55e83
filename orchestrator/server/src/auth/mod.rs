//! Who may call what: static bearer tokens with roles (ADR 0010).
//!
//! A request's story: [`AuthLayer`] reads `authorization: Bearer …`, finds the
//! token's [`Principal`] in [`Tokens`], checks the method against the role
//! table in [`policy`], and puts the principal in the request's extensions,
//! where the services read it for the finer checks (a worker's queues, a
//! client's own workflows).

mod layer;
pub mod policy;
mod tokens;

use std::path::PathBuf;

use serde::Deserialize;

pub use layer::{AuthLayer, guard_http};
pub use tokens::{MIN_TOKEN_BYTES, Tokens, hash_token};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the auth file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the auth file {path} is invalid: {reason}")]
    Config { path: PathBuf, reason: String },
}

/// What a token may do; see [`policy::allowed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Starts and reads its own workflows (not an `operator_only` saga's).
    Client,
    /// Serves task queues.
    Worker,
    /// Everything, including cancel, terminate, signal, `operator_only`
    /// sagas and events.
    Operator,
    /// Another node of the cluster, calling the node service only
    /// (`NodeService`, ADR 0030). No auth file grants it: a node's token is
    /// derived from the cluster's shared key.
    #[serde(skip_deserializing)]
    Node,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Operator => "operator",
            Role::Node => "node",
        }
    }
}

/// The caller of a request, as the auth layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name from the auth file; `anonymous` when auth is off.
    pub name: String,
    pub role: Role,
    /// The task queues a worker may serve; `None` is every queue.
    pub queues: Option<Vec<String>>,
}

/// The label that records which client token started a workflow, so that a
/// client reads only its own.
pub const OWNER_LABEL: &str = "sagaflow.owner";

/// Between a client token's name and an id it chose (`Principal::scoped`).
pub const TENANT_SEPARATOR: char = ':';

impl Principal {
    /// The caller when the server runs without auth (loopback only, or
    /// `--insecure`): it may do everything, as the single-user dev setup expects.
    pub fn anonymous() -> Self {
        Self { name: "anonymous".into(), role: Role::Operator, queues: None }
    }

    /// Whether this caller may serve `queue`.
    pub fn may_serve(&self, queue: &str) -> bool {
        match (self.role, &self.queues) {
            (Role::Operator, _) | (Role::Worker, None) => true,
            (Role::Worker, Some(queues)) => queues.iter().any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => queue.starts_with(prefix),
                None => queue == pattern,
            }),
            (Role::Client | Role::Node, _) => false,
        }
    }

    /// Whether this caller may read a workflow with these labels: operators
    /// read everything, clients what they started.
    pub fn may_read(&self, labels: &std::collections::HashMap<String, String>) -> bool {
        match self.role {
            Role::Client => labels.get(OWNER_LABEL) == Some(&self.name),
            Role::Worker | Role::Operator | Role::Node => true,
        }
    }

    /// The owner label a start by this caller carries: only clients are
    /// confined to what they own.
    pub fn owner_label(&self) -> Option<(String, String)> {
        (self.role == Role::Client).then(|| (OWNER_LABEL.to_owned(), self.name.clone()))
    }

    /// An id this caller chose (a request id, a workflow id), in its own
    /// namespace: `NAME:ID` for a client, as given for operators. Two
    /// clients' ids never meet, so one can neither squat nor replay another's
    /// (request ids, workflow ids, and the ids and idempotency keys derived
    /// from them). Ids the platform derives hold no `:`.
    pub fn scoped(&self, id: &str) -> String {
        match self.role {
            Role::Client => format!("{}{TENANT_SEPARATOR}{id}", self.name),
            Role::Worker | Role::Operator | Role::Node => id.to_owned(),
        }
    }
}

/// The principal the auth layer put on a request; anonymous when the server
/// runs without auth (no layer, no extension).
pub fn principal<T>(request: &tonic::Request<T>) -> Principal {
    request.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_queues_match_exactly_or_by_prefix() {
        let worker = Principal {
            name: "w".into(),
            role: Role::Worker,
            queues: Some(vec!["inventory.*".into(), "payments.capture".into()]),
        };
        assert!(worker.may_serve("inventory.reserve"));
        assert!(worker.may_serve("payments.capture"));
        assert!(!worker.may_serve("payments.refund"));
        assert!(!worker.may_serve("inventor"));
        assert!(Principal { queues: None, ..worker.clone() }.may_serve("anything"));
        assert!(!Principal { role: Role::Client, queues: None, ..worker }.may_serve("x"));
    }

    #[test]
    fn clients_read_only_what_they_own() {
        let client = Principal { name: "shop".into(), role: Role::Client, queues: None };
        let mine = std::collections::HashMap::from([(OWNER_LABEL.to_owned(), "shop".to_owned())]);
        let theirs = std::collections::HashMap::from([(OWNER_LABEL.to_owned(), "other".to_owned())]);
        assert!(client.may_read(&mine));
        assert!(!client.may_read(&theirs));
        assert!(!client.may_read(&std::collections::HashMap::new()));
        assert!(Principal::anonymous().may_read(&theirs));
    }
}
