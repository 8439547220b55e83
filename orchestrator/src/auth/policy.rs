//! The role table: which roles may call which gRPC method.
//!
//! Listed by full path so that a reader sees every method in one place. A
//! method missing from the table (one added later and forgotten here) is
//! operator-only: the table fails closed.

use super::Role;

const CLIENT: &[Role] = &[Role::Client, Role::Operator];
const WORKER: &[Role] = &[Role::Worker, Role::Operator];
const OPERATOR: &[Role] = &[Role::Operator];
const EVERYONE: &[Role] = &[];

/// Who may call `path` (`/package.Service/Method`). An empty slice means no
/// token is needed at all.
pub fn allowed(path: &str) -> &'static [Role] {
    match path {
        // Probes and tooling: they reveal nothing about workflows.
        p if p.starts_with("/grpc.health.v1.Health/") => EVERYONE,
        p if p.starts_with("/grpc.reflection.v1.ServerReflection/") => EVERYONE,
        p if p.starts_with("/grpc.reflection.v1alpha.ServerReflection/") => EVERYONE,
        "/sagaflow.v1.WorkflowService/StartWorkflow"
        | "/sagaflow.v1.WorkflowService/DescribeWorkflow"
        | "/sagaflow.v1.WorkflowService/GetWorkflowHistory"
        | "/sagaflow.v1.WorkflowService/AwaitWorkflow"
        | "/sagaflow.v1.WorkflowService/ExecuteWorkflow"
        | "/sagaflow.v1.WorkflowService/ListWorkflowTypes"
        | "/sagaflow.checkout.v1.CheckoutService/StartCheckout"
        | "/sagaflow.checkout.v1.CheckoutService/GetCheckout" => CLIENT,
        "/sagaflow.v1.WorkerService/OpenSession" => WORKER,
        // Listing spans every client's workflows, events every checkout's
        // data, and a refund moves money: operators only.
        _ => OPERATOR,
    }
}

/// Workflow types only an operator may start through `StartWorkflow`: a
/// refund moves money (its own method, `RefundCheckout`, is operator-only),
/// and the self-healing jobs are operator actions. Without this a client
/// could reach either by naming the type.
pub fn is_operator_only_workflow(workflow_type: &str) -> bool {
    workflow_type == sagaflow_workflows::shop::REFUND || sagaflow_workflows::jobs::NAMES.contains(&workflow_type)
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
        assert_eq!(allowed("/sagaflow.v1.JobsService/RunJob"), OPERATOR);
        assert_eq!(allowed("/nonsense"), OPERATOR);
        assert_eq!(allowed("/sagaflow.v1.WorkflowService/StartWorkflow"), CLIENT);
        assert!(allowed("/grpc.health.v1.Health/Check").is_empty());
        assert!(allowed("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").is_empty());
    }

    #[test]
    fn money_and_jobs_are_not_client_workflows() {
        assert!(is_operator_only_workflow("refund"));
        assert!(is_operator_only_workflow("check-invariants"));
        assert!(!is_operator_only_workflow("checkout"));
        assert!(!is_operator_only_workflow("bench"));
    }
}
