//! The Rust SDK's side of the shared worker scenarios (worker/python/tests/scenarios.py): it serves
//! the `t.*` activities of worker/python/tests/sagas.json as the Python test worker does, and writes
//! what happens to the same journal (one JSON object a line), so that one list of scenarios checks
//! both SDKs against a real `sagaflow server`.
//!
//! ```sh
//! cargo run -p sagaflow-worker --example scenario_worker -- --server URL --journal FILE \
//!     [--worker-id ID] [--max-concurrency N]
//! ```
//!
//! Each `*_first` activity misbehaves on its first attempt only, so that a retry can succeed.
#![allow(clippy::print_stderr)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use serde_json::{Value, json};

/// The journal the scenarios read; shared by every handler.
#[derive(Clone)]
struct Journal {
    path: Arc<PathBuf>,
    worker_id: Arc<str>,
}

impl Journal {
    fn write(&self, event: &str, ctx: &ActivityContext) {
        let line = json!({
            "event": event,
            "worker_id": &*self.worker_id,
            "pid": std::process::id(),
            "workflow_id": ctx.workflow_id(),
            "task_id": ctx.task_id(),
            "activity_type": ctx.activity_type(),
            "attempt": ctx.attempt(),
            "key": ctx.idempotency_key(),
            "correlation_id": ctx.correlation_id(),
            "traceparent": ctx.traceparent(),
            "compensation": ctx.is_compensation(),
        });
        // One write a line, straight to the OS: a SIGKILL loses nothing already written.
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(&*self.path).expect("open the journal");
        file.write_all(format!("{line}\n").as_bytes()).expect("write the journal");
    }
}

/// Writes `cancelled` if dropped before being disarmed: the SDK stops a cancelled handler by
/// dropping its future, so this is how a Rust handler sees the cancellation.
struct OnCancel {
    journal: Journal,
    ctx: ActivityContext,
    armed: bool,
}

impl Drop for OnCancel {
    fn drop(&mut self) {
        if self.armed {
            self.journal.write("cancelled", &self.ctx);
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let args: Vec<String> = std::env::args().collect();
    let server = arg(&args, "--server").ok_or("--server is required")?;
    let path = PathBuf::from(arg(&args, "--journal").ok_or("--journal is required")?);
    let worker_id = arg(&args, "--worker-id").unwrap_or_else(|| format!("rust-test-{}", std::process::id()));
    let max_concurrency: u32 = arg(&args, "--max-concurrency").map_or(Ok(4), |n| n.parse())?;
    let journal = Journal { path: Arc::new(path), worker_id: Arc::from(worker_id.as_str()) };

    let j = journal.clone();
    let echo = move |ctx: ActivityContext, _input: Value| {
        let j = j.clone();
        async move {
            j.write("started", &ctx);
            j.write("completed", &ctx);
            Ok::<_, ActivityError>(json!({ "key": ctx.idempotency_key(), "attempt": ctx.attempt() }))
        }
    };
    let j = journal.clone();
    let undo = move |ctx: ActivityContext, _input: Value| {
        let j = j.clone();
        async move {
            j.write("started", &ctx);
            Ok::<_, ActivityError>(json!({ "undone": true }))
        }
    };
    let j = journal.clone();
    let decline = move |ctx: ActivityContext, _input: Value| {
        let j = j.clone();
        async move {
            j.write("started", &ctx);
            Err::<Value, _>(ActivityError::non_retryable("CardDeclined", "the card was declined"))
        }
    };
    let j = journal.clone();
    let block_first = move |ctx: ActivityContext, _input: Value| {
        let j = j.clone();
        async move {
            j.write("started", &ctx);
            if ctx.attempt() == 1 {
                std::future::pending::<()>().await; // until the process is killed
            }
            j.write("completed", &ctx);
            Ok::<_, ActivityError>(json!({ "attempt": ctx.attempt() }))
        }
    };
    let j = journal.clone();
    let silent_first = move |ctx: ActivityContext, _input: Value| {
        let j = j.clone();
        async move {
            j.write("started", &ctx);
            if ctx.attempt() == 1 {
                // Never heartbeats: the server times the attempt out and cancels it.
                let _guard = OnCancel { journal: j.clone(), ctx: ctx.clone(), armed: true };
                std::future::pending::<()>().await;
            }
            ctx.heartbeat(json!({ "progress": 1 }));
            j.write("completed", &ctx);
            Ok::<_, ActivityError>(json!({ "attempt": ctx.attempt() }))
        }
    };
    let j = journal.clone();
    let gate = move |ctx: ActivityContext, input: Value| {
        let j = j.clone();
        async move {
            j.write("started", &ctx);
            let release = input["input"]["release"].as_str().unwrap_or_default().to_owned();
            while !Path::new(&release).exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            j.write("completed", &ctx);
            Ok::<_, ActivityError>(json!({ "attempt": ctx.attempt() }))
        }
    };

    let worker = Worker::builder(server)
        .worker_id(worker_id)
        .max_concurrency(max_concurrency)
        .drain_timeout(Duration::from_secs(20))
        .activity("t.echo", echo)
        .activity("t.undo", undo)
        .activity("t.decline", decline)
        .activity("t.block_first", block_first)
        .activity("t.silent_first", silent_first)
        .activity("t.gate", gate)
        .build()?;
    worker
        .run_until(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}
