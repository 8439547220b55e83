//! `sagaflow queue pause|resume`: hold a whole activity queue while its
//! downstream is broken. `sagaflow worker list` shows which queues are paused.

use super::Output;
use super::workflow::{connect, identity, status_error};

#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// Hold an activity queue: its tasks stay queued, handed to no worker and failed by no
    /// schedule-to-start or schedule-to-close deadline, until it is resumed. Attempts already
    /// running finish. Durable across restarts. Operators only.
    Pause {
        /// The queue: an activity type, such as payments.capture.
        queue: String,
        /// Why, shown by `worker list` while it is paused.
        #[arg(long)]
        reason: String,
    },
    /// Let a paused queue go: its held tasks go to workers, and their queue-side deadlines
    /// start again with the budgets they had. Operators only.
    Resume {
        /// The queue: an activity type.
        queue: String,
    },
}

pub async fn run(command: QueueCommand, server: &str, output: Output) -> anyhow::Result<()> {
    let mut client = connect(server).await?;
    let (queue, paused, changed) = match command {
        QueueCommand::Pause { queue, reason } => {
            let request = sagaflow_proto::v1::PauseQueueRequest { queue: queue.clone(), reason, identity: identity() };
            let changed = client.pause_queue(request).await.map_err(status_error)?.into_inner().changed;
            (queue, true, changed)
        }
        QueueCommand::Resume { queue } => {
            let request = sagaflow_proto::v1::ResumeQueueRequest { queue: queue.clone(), identity: identity() };
            let changed = client.resume_queue(request).await.map_err(status_error)?.into_inner().changed;
            (queue, false, changed)
        }
    };
    match output {
        Output::Json => outln!("{}", serde_json::json!({"queue": queue, "paused": paused, "changed": changed})),
        Output::Text => match (paused, changed) {
            (true, true) => outln!(
                "queue {queue} paused: its tasks wait, handed to no worker; `sagaflow queue resume {queue}` lets them go"
            ),
            (true, false) => outln!("queue {queue} was already paused; nothing changed"),
            (false, true) => outln!("queue {queue} resumed"),
            (false, false) => outln!("queue {queue} was not paused; nothing changed"),
        },
    }
    Ok(())
}
