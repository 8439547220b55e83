//! The role table: which roles may call which gRPC method, or which path of
//! the HTTP listener.
//!
//! Listed by full path so that a reader sees every method in one place. A
//! method missing from the table (one added later and forgotten here) is
//! operator-only: the table fails closed. The authorization matrix test
//! (`tests/security_auth.rs`) also fails for any method of the contract that
//! [`rule`] does not name, so a new RPC gets a deliberate entry.

use std::collections::HashMap;

use super::Role;

/// Clients, and operators (who may do anything a client may).
pub const CLIENT: &[Role] = &[Role::Client, Role::Operator];
pub const WORKER: &[Role] = &[Role::Worker, Role::Operator];
pub const OPERATOR: &[Role] = &[Role::Operator];
/// No token needed.
pub const EVERYONE: &[Role] = &[];
/// The cluster's other nodes, and no one else.
pub const NODE: &[Role] = &[Role::Node];

/// Who may call `path` (`/package.Service/Method`), as the table names it;
/// `None` for a path it does not name. An empty slice means no token is
/// needed at all.
pub fn rule(path: &str) -> Option<&'static [Role]> {
    Some(match path {
        // Probes and tooling: they reveal nothing about workflows. Both
        // reflection versions (v1alpha for older tools).
        p if p.starts_with("/grpc.health.v1.Health/") => EVERYONE,
        p if p.starts_with("/grpc.reflection.v1.ServerReflection/") => EVERYONE,
        p if p.starts_with("/grpc.reflection.v1alpha.ServerReflection/") => EVERYONE,
        // A supervisor's liveness probe.
        "/healthz" => EVERYONE,
        p if p.starts_with("/sagaflow.v1.NodeService/") => NODE,
        // A client reads only what it started (`Principal::may_read`).
        "/sagaflow.v1.WorkflowService/StartWorkflow"
        | "/sagaflow.v1.WorkflowService/DescribeWorkflow"
        | "/sagaflow.v1.WorkflowService/GetWorkflowHistory"
        | "/sagaflow.v1.WorkflowService/AwaitWorkflow"
        | "/sagaflow.v1.WorkflowService/ExecuteWorkflow"
        | "/sagaflow.v1.WorkflowService/ListWorkflowTypes"
        // Definitions are the saga's shape, not any workflow's data.
        | "/sagaflow.v1.DefinitionService/GetDefinition"
        | "/sagaflow.v1.DefinitionService/ListDefinitions" => CLIENT,
        // Every message of the session is checked again against the
        // token's queues and the leases it holds (`runtime::dispatch`).
        "/sagaflow.v1.WorkerService/OpenSession" => WORKER,
        // Listing spans every client's workflows, events every workflow's
        // data, and the rest steer workflows; the metrics count every
        // client's traffic. Which sagas only an operator starts is a field
        // of their definitions (`operator_only`), read by StartWorkflow.
        "/sagaflow.v1.WorkflowService/ListWorkflows"
        | "/sagaflow.v1.WorkflowService/SignalWorkflow"
        | "/sagaflow.v1.WorkflowService/CancelWorkflow"
        | "/sagaflow.v1.WorkflowService/TerminateWorkflow"
        | "/sagaflow.v1.WorkflowService/DeleteWorkflow"
        | "/sagaflow.v1.WorkflowService/RedriveWorkflow"
        | "/sagaflow.v1.WorkflowService/PauseWorkflow"
        | "/sagaflow.v1.WorkflowService/ResumeWorkflow"
        | "/sagaflow.v1.WorkflowService/ResolveActivity"
        | "/sagaflow.v1.WorkflowService/ListQueues"
        | "/sagaflow.v1.WorkflowService/PauseQueue"
        | "/sagaflow.v1.WorkflowService/ResumeQueue"
        | "/sagaflow.v1.EventService/StreamEvents"
        // A definition decides what runs, with which keys and who may start
        // it (`operator_only`): registering one is an operator's act.
        | "/sagaflow.v1.DefinitionService/RegisterDefinition"
        | "/sagaflow.v1.DefinitionService/DeprecateDefinition"
        | "/metrics" => OPERATOR,
        _ => return None,
    })
}

/// Who may call `path`: its [`rule`], and operators only for a path the
/// table does not name.
pub fn allowed(path: &str) -> &'static [Role] {
    rule(path).unwrap_or(OPERATOR)
}

/// One server's role table: the platform's [`rule`]s, and those of the
/// services an application added ([`crate::Extension::rules`]). Fails closed
/// like the platform table.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    extensions: HashMap<String, &'static [Role]>,
}

impl Policy {
    /// The platform's table and `rules` (full method path, roles). A rule
    /// may not override the platform's: an extension cannot open a
    /// platform method to more callers.
    pub fn with_rules(rules: impl IntoIterator<Item = (String, &'static [Role])>) -> Self {
        let extensions = rules.into_iter().filter(|(path, _)| rule(path).is_none()).collect();
        Self { extensions }
    }

    pub fn rule(&self, path: &str) -> Option<&'static [Role]> {
        rule(path).or_else(|| self.extensions.get(path).copied())
    }

    pub fn allowed(&self, path: &str) -> &'static [Role] {
        self.rule(path).unwrap_or(OPERATOR)
    }

    /// Whether a call to `path` is control-plane work that an operator must
    /// be able to do even while clients overload the server.
    pub fn is_operator_only(&self, path: &str) -> bool {
        self.allowed(path) == OPERATOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_fails_closed() {
        assert_eq!(allowed("/sagaflow.v1.WorkflowService/CancelWorkflow"), OPERATOR);
        assert_eq!(rule("/sagaflow.v1.JobsService/RunJob"), None);
        assert_eq!(allowed("/sagaflow.v1.JobsService/RunJob"), OPERATOR);
        assert_eq!(allowed("/nonsense"), OPERATOR);
        assert_eq!(allowed("/"), OPERATOR);
        assert_eq!(allowed("/sagaflow.v1.WorkflowService/StartWorkflow"), CLIENT);
        assert!(allowed("/grpc.health.v1.Health/Check").is_empty());
        assert!(allowed("/healthz").is_empty());
        assert_eq!(allowed("/metrics"), OPERATOR);
        assert!(allowed("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").is_empty());
    }

    #[test]
    fn an_extension_adds_methods_but_cannot_reopen_the_platforms() {
        let policy = Policy::with_rules([
            ("/shop.Checkout/Start".to_owned(), CLIENT),
            ("/sagaflow.v1.WorkflowService/CancelWorkflow".to_owned(), EVERYONE),
        ]);
        assert_eq!(policy.allowed("/shop.Checkout/Start"), CLIENT);
        assert_eq!(policy.allowed("/shop.Checkout/Refund"), OPERATOR);
        assert_eq!(policy.allowed("/sagaflow.v1.WorkflowService/CancelWorkflow"), OPERATOR);
        assert!(!policy.is_operator_only("/shop.Checkout/Start"));
    }
}
