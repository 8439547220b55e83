//! Compiles the contract with protox, a pure-Rust protobuf compiler, so that a
//! build needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "sagaflow/v1/history.proto",
    "sagaflow/v1/workflow.proto",
    "sagaflow/v1/worker.proto",
    "sagaflow/v1/events.proto",
    "sagaflow/v1/node.proto",
    "sagaflow/checkout/v1/checkout.proto",
];

/// Fields that carry JSON text: shown as nested JSON, not as escaped strings,
/// when an event is serialised for `--output json` (and the archive, which
/// reads them back: an absent document there is the text `null`).
const JSON_FIELDS: &[&str] = &[
    ".sagaflow.v1.WorkflowStarted.input",
    ".sagaflow.v1.ActivityScheduled.input",
    ".sagaflow.v1.ActivityCompleted.result",
    ".sagaflow.v1.SignalReceived.input",
    ".sagaflow.v1.WorkflowCompleted.result",
    ".sagaflow.v1.StepSkipped.condition",
    ".sagaflow.v1.WorkflowHeld.result",
    ".sagaflow.v1.CarriedStep.result",
];

/// JSON text fields that are empty, not `null`, when there is no document:
/// a resolution as failed records no result.
const OPTIONAL_JSON_FIELDS: &[&str] = &[".sagaflow.v1.ActivityResolved.result"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("sagaflow_descriptor.bin");
    std::fs::write(&descriptor_path, descriptors.encode_to_vec())?;

    let mut builder = tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        // Matches the message and, by prefix, its `attributes` oneof. Both
        // ways: the archive stores events in their JSON form and the server
        // reads them back (orchestrator/server/src/history_json.rs).
        .type_attribute(".sagaflow.v1.HistoryEvent", "#[derive(serde::Serialize, serde::Deserialize)]");
    for message in [
        "WorkflowStarted",
        "ActivityScheduled",
        "ActivityStarted",
        "ActivityCompleted",
        "ActivityFailed",
        "ActivityTimedOut",
        "TimerStarted",
        "TimerFired",
        "SignalReceived",
        "CancelRequested",
        "CompensationStarted",
        "WorkflowCompleted",
        "WorkflowCompensated",
        "WorkflowFailed",
        "WorkflowCancelled",
        "WorkflowTerminated",
        "StuckDetected",
        "StuckCleared",
        "StepEscalated",
        "CompletionIgnored",
        "CancelRefused",
        "ActivityResolved",
        "StepSkipped",
        "WorkflowPaused",
        "WorkflowResumed",
        "WorkflowHeld",
        "CarriedStep",
    ] {
        // `default`: an archived event written before a field existed still reads.
        builder = builder.type_attribute(
            format!(".sagaflow.v1.{message}"),
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        );
    }
    for field in JSON_FIELDS {
        builder = builder.field_attribute(
            field,
            "#[serde(serialize_with = \"crate::json_text::serialize\", deserialize_with = \"crate::json_text::deserialize\")]",
        );
    }
    for field in OPTIONAL_JSON_FIELDS {
        builder = builder.field_attribute(
            field,
            "#[serde(serialize_with = \"crate::json_text::serialize\", deserialize_with = \"crate::json_text::deserialize_optional\")]",
        );
    }
    builder.compile_protos(PROTOS, &["."])?;
    Ok(())
}
