//! `sagaflow jobs run NAME`: run one self-healing job now.

use clap::Subcommand;
use sagaflow_orchestrator::relay;
use serde_json::json;

use super::Output;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Run one job now and print what it did.
    Run {
        /// The job: replay-failed-events.
        name: String,
        /// The NATS server with JetStream (for replay-failed-events).
        #[arg(long, env = "SAGAFLOW_NATS_URL", default_value = "nats://127.0.0.1:4222", value_parser = sagaflow_orchestrator::relay::parse_url)]
        nats_url: String,
    },
}

/// The jobs this command knows. The other self-healing jobs of the design
/// join this list as they are built.
const JOBS: &[&str] = &["replay-failed-events"];

pub async fn run(command: JobsCommand, output: Output) -> anyhow::Result<()> {
    let JobsCommand::Run { name, nats_url } = command;
    match name.as_str() {
        "replay-failed-events" => {
            let report = relay::replay_failed_events(&nats_url).await?;
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"job": name, "replayed": report.total(), "by_consumer": report.replayed, "skipped": report.skipped})
                ),
                Output::Text => {
                    let by: Vec<String> = report.replayed.iter().map(|(c, n)| format!("{c}: {n}")).collect();
                    let by = if by.is_empty() { String::new() } else { format!(" ({})", by.join(", ")) };
                    println!("replay-failed-events: re-drove {} dead-lettered events{by}", report.total());
                    if report.skipped > 0 {
                        println!("skipped {} dead letters without an original subject", report.skipped);
                    }
                }
            }
            Ok(())
        }
        other => anyhow::bail!("unknown job {other:?}; known jobs: {}", JOBS.join(", ")),
    }
}
