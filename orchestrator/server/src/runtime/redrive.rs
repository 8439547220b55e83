//! Redrive (ADR 0025): a FAILED or COMPENSATED workflow runs again, once its
//! cause is fixed, as a new run linked to the old one. The old run's history
//! stays as it ended; the new run takes over the steps that stand and runs
//! the rest with fresh idempotency keys.

use sagaflow_proto::v1::{CarriedStep, WorkflowStarted};
use sagaflow_workflows::REDRIVE_LABEL;

use super::{Error, Result, Runtime, StartRequest};
use crate::engine::redrive_plan;

/// What a start needs to know to be a redrive.
#[derive(Debug, Clone)]
pub struct RedriveStart {
    /// The run redriven.
    pub of: String,
    /// Its number in the chain: 1 for the first redrive of an original run.
    pub number: u32,
    pub carried: Vec<CarriedStep>,
}

/// The fields of `WorkflowStarted` a redrive sets (none for a plain start).
pub(super) fn started_fields(redrive: Option<RedriveStart>) -> WorkflowStarted {
    let Some(redrive) = redrive else { return WorkflowStarted::default() };
    WorkflowStarted {
        redrive_of: redrive.of,
        redrive: redrive.number,
        carried_steps: redrive.carried,
        ..WorkflowStarted::default()
    }
}

/// The new run of a redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    pub workflow_id: String,
    pub from_step: Option<String>,
    pub carried_steps: Vec<String>,
    /// The run had been redriven before: this is that redrive.
    pub already_redriven: bool,
}

/// The request id of the redrive of `workflow_id`: one per ended run, so that
/// redriving it again answers with the same new run.
fn redrive_request_id(workflow_id: &str) -> String {
    format!("sagaflow.redrive/{workflow_id}")
}

/// `ORIGINAL.redrive-N`: every run of a chain is named after the first.
fn redrive_id(original: &str, number: u32) -> String {
    format!("{original}.redrive-{number}")
}

impl Runtime {
    pub async fn redrive_workflow(&self, workflow_id: &str) -> Result<Redriven> {
        let (state, definition) = self.state(workflow_id).await?;
        let plan = redrive_plan(&state, &definition).map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        let (original, number) = match &state.redrive {
            Some((_, number)) => {
                let suffix = redrive_id("", *number);
                let original = state.workflow_id.strip_suffix(&suffix).ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "workflow {workflow_id} is redrive {number} of a chain but its id does not end in {suffix}"
                    ))
                })?;
                (original.to_owned(), number + 1)
            }
            None => (state.workflow_id.clone(), 1),
        };
        let mut labels: std::collections::HashMap<String, String> = state.labels.clone().into_iter().collect();
        labels.insert(REDRIVE_LABEL.to_owned(), state.workflow_id.clone());
        let carried_steps = plan.carried.iter().map(|c| c.step.clone()).collect();
        let request = StartRequest {
            workflow_type: state.workflow_type.clone(),
            request_id: redrive_request_id(&state.workflow_id),
            input: state.input.clone(),
            workflow_id: Some(redrive_id(&original, number)),
            labels,
            correlation_id: state.correlation_id.clone(),
            traceparent: state.traceparent.clone(),
            parent_workflow_id: String::new(),
            redrive: Some(RedriveStart { of: state.workflow_id.clone(), number, carried: plan.carried }),
        };
        let (new_id, already_redriven) = self.start_workflow_version(request, Some(state.version)).await?;
        tracing::info!(workflow_id, redriven_as = %new_id, already_redriven, "workflow redriven");
        Ok(Redriven { workflow_id: new_id, from_step: plan.from_step, carried_steps, already_redriven })
    }
}
