//! Human names for generated enums and event kinds, as the contract spells them.

use crate::v1::{WorkflowStatus, history_event::Attributes};

/// The contract name of a status: `RUNNING`, `COMPENSATED`, …
pub fn status_name(status: WorkflowStatus) -> &'static str {
    status.as_str_name().trim_start_matches("WORKFLOW_STATUS_")
}

/// The contract name of a history event's type, such as `ActivityCompleted`.
pub trait EventName {
    fn event_name(&self) -> &'static str;
}

impl EventName for Attributes {
    fn event_name(&self) -> &'static str {
        match self {
            Attributes::WorkflowStarted(_) => "WorkflowStarted",
            Attributes::ActivityScheduled(_) => "ActivityScheduled",
            Attributes::ActivityStarted(_) => "ActivityStarted",
            Attributes::ActivityCompleted(_) => "ActivityCompleted",
            Attributes::ActivityFailed(_) => "ActivityFailed",
            Attributes::ActivityTimedOut(_) => "ActivityTimedOut",
            Attributes::TimerStarted(_) => "TimerStarted",
            Attributes::TimerFired(_) => "TimerFired",
            Attributes::SignalReceived(_) => "SignalReceived",
            Attributes::CancelRequested(_) => "CancelRequested",
            Attributes::CompensationStarted(_) => "CompensationStarted",
            Attributes::WorkflowCompleted(_) => "WorkflowCompleted",
            Attributes::WorkflowCompensated(_) => "WorkflowCompensated",
            Attributes::WorkflowFailed(_) => "WorkflowFailed",
            Attributes::WorkflowCancelled(_) => "WorkflowCancelled",
            Attributes::WorkflowTerminated(_) => "WorkflowTerminated",
            Attributes::StuckDetected(_) => "StuckDetected",
            Attributes::StuckCleared(_) => "StuckCleared",
            Attributes::StepEscalated(_) => "StepEscalated",
            Attributes::CompletionIgnored(_) => "CompletionIgnored",
            Attributes::CancelRefused(_) => "CancelRefused",
            Attributes::ActivityResolved(_) => "ActivityResolved",
            Attributes::StepSkipped(_) => "StepSkipped",
            Attributes::WorkflowPaused(_) => "WorkflowPaused",
            Attributes::WorkflowResumed(_) => "WorkflowResumed",
            Attributes::WorkflowHeld(_) => "WorkflowHeld",
        }
    }
}
