//! The role table: which roles may call which gRPC method, or which path of
//! the HTTP listener.
//!
//! Listed by full path so that a reader sees every method in one place. A
//! method missing from the table (one added later and forgotten here) is
//! operator-only: the table fails closed. The authorization matrix test
//! (`tests/security_auth.rs`) also fails for any method of the contract that
//! [`rule`] does not name, so a new RPC gets a deliberate entry.

use super::Role;

const CLIENT: &[Role] = &[Role::Client, Role::Operator];
const WORKER: &[Role] = &[Role::Worker, Role::Operator];
const OPERATOR: &[Role] = &[Role::Operator];
const EVERYONE: &[Role] = &[];

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
        // A client reads only what it started (`Principal::may_read`).
        "/sagaflow.v1.WorkflowService/StartWorkflow"
        | "/sagaflow.v1.WorkflowService/DescribeWorkflow"
        | "/sagaflow.v1.WorkflowService/GetWorkflowHistory"
        | "/sagaflow.v1.WorkflowService/AwaitWorkflow"
        | "/sagaflow.v1.WorkflowService/ExecuteWorkflow"
        | "/sagaflow.v1.WorkflowService/ListWorkflowTypes"
        | "/sagaflow.checkout.v1.CheckoutService/StartCheckout"
        | "/sagaflow.checkout.v1.CheckoutService/GetCheckout" => CLIENT,
        // Every message of the session is checked again against the
        // token's queues and the leases it holds (`runtime::dispatch`).
        "/sagaflow.v1.WorkerService/OpenSession" => WORKER,
        // Listing spans every client's workflows, events every checkout's
        // data, a refund moves money, and the rest steer workflows; the
        // metrics count every client's traffic.
        "/sagaflow.v1.WorkflowService/ListWorkflows"
        | "/sagaflow.v1.WorkflowService/SignalWorkflow"
        | "/sagaflow.v1.WorkflowService/CancelWorkflow"
        | "/sagaflow.v1.WorkflowService/TerminateWorkflow"
        | "/sagaflow.v1.WorkflowService/ResolveActivity"
        | "/sagaflow.v1.WorkflowService/ListQueues"
        | "/sagaflow.v1.EventService/StreamEvents"
        | "/sagaflow.checkout.v1.CheckoutService/RefundCheckout"
        | "/metrics" => OPERATOR,
        _ => return None,
    })
}

/// Who may call `path`: its [`rule`], and operators only for a path the
/// table does not name.
pub fn allowed(path: &str) -> &'static [Role] {
    rule(path).unwrap_or(OPERATOR)
}

/// Whether a call to `path` is control-plane work that an operator must be
/// able to do even while clients overload the server.
pub fn is_operator_only(path: &str) -> bool {
    allowed(path) == OPERATOR
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
}
