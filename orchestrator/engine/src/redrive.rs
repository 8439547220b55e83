//! What a redrive of an ended run carries over (ADR 0025). Pure: the runtime
//! starts the new run with it.

use sagaflow_proto::v1::{CarriedStep, WorkflowStatus};
use sagaflow_workflows::SagaDefinition;

use crate::state::{StepStatus, WorkflowState};

/// The new run's plan: the steps it takes over, and the first one it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RedrivePlan {
    pub carried: Vec<CarriedStep>,
    /// `None` when every step stands (nothing left to run but the close).
    pub from_step: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unredrivable {
    #[error("workflow {0} is {1}: only a FAILED or COMPENSATED workflow can be redriven")]
    Status(String, &'static str),
    #[error("workflow {0} is a child saga of {1}: its parent decides whether it runs again, so redrive the parent")]
    Child(String, String),
    #[error("step {step} of workflow {workflow_id} completed and can be undone, yet was never undone")]
    Undoable { workflow_id: String, step: String },
}

/// The longest prefix of steps the ended run completed or skipped and never
/// undid. A later step that stands is run again anyway: it may have read a
/// step before it that is run again.
pub fn redrive_plan(state: &WorkflowState, definition: &SagaDefinition) -> Result<RedrivePlan, Unredrivable> {
    if !matches!(state.status, WorkflowStatus::Failed | WorkflowStatus::Compensated) {
        return Err(Unredrivable::Status(state.workflow_id.clone(), sagaflow_proto::status_name(state.status)));
    }
    if let Some(parent) = &state.parent {
        return Err(Unredrivable::Child(state.workflow_id.clone(), parent.clone()));
    }
    let mut carried = Vec::new();
    for (index, (step, progress)) in definition.steps.iter().zip(&state.steps).enumerate() {
        let skipped = match progress.status {
            StepStatus::Completed => false,
            StepStatus::Skipped => true,
            _ => {
                return Ok(RedrivePlan { carried, from_step: Some(step.name.clone()) });
            }
        };
        // Before the pivot, a failure undoes every step that ran and can be
        // undone, so one left standing means the history does not fit.
        if !skipped && step.undoes() {
            return Err(Unredrivable::Undoable { workflow_id: state.workflow_id.clone(), step: step.name.clone() });
        }
        let result = if skipped {
            String::new()
        } else {
            state
                .context
                .0
                .get("steps")
                .and_then(|steps| steps.get(&step.name))
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        carried.push(CarriedStep {
            step_index: u32::try_from(index).unwrap_or(u32::MAX),
            step: step.name.clone(),
            result,
            skipped,
        });
    }
    Ok(RedrivePlan { carried, from_step: None })
}
