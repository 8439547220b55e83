//! Which workflow statuses end a workflow: the one definition every crate uses.

use crate::v1::WorkflowStatus;

impl WorkflowStatus {
    /// Whether a workflow in this status has ended: no step will run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed | Self::Cancelled | Self::Terminated)
    }
}

/// [`WorkflowStatus::is_terminal`] for the raw `i32` a message carries; an
/// unknown value is not terminal, so that nothing is taken for finished that
/// this version cannot read.
pub fn is_terminal(status: i32) -> bool {
    WorkflowStatus::try_from(status).is_ok_and(WorkflowStatus::is_terminal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_five_closing_statuses_are_terminal() {
        let terminal: Vec<_> = (0..20).filter(|s| is_terminal(*s)).collect();
        let expected = [
            WorkflowStatus::Completed,
            WorkflowStatus::Compensated,
            WorkflowStatus::Failed,
            WorkflowStatus::Cancelled,
            WorkflowStatus::Terminated,
        ]
        .map(|s| s as i32);
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        assert_eq!(terminal, expected);
        assert!(!WorkflowStatus::Running.is_terminal());
    }
}
