//! Logs and traces. Logs go to stderr through `tracing`, as text or JSON.
//! Traces are exported over OTLP only when an endpoint is given: the
//! orchestrator exports one span per workflow, and each worker one span per
//! activity attempt under it (see [`sagaflow_worker::trace`]), so that one
//! checkout reads as one tree.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanProcessor};
use sagaflow_proto::status_name;
use sagaflow_proto::trace_context::{TraceParent, span_id_of, trace_id_of};
use sagaflow_worker::trace::{self, FinishedSpan};
use tracing_subscriber::EnvFilter;

use crate::engine::WorkflowState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the OTLP exporter for {endpoint} could not be built: {source}")]
    Exporter { endpoint: String, source: opentelemetry_otlp::ExporterBuildError },
}

/// Keeps the trace exporter alive; dropping it flushes the spans not yet sent.
#[derive(Debug, Default)]
pub struct Telemetry {
    exporting: bool,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(processor) = self.exporting.then(trace::stop_exporting).flatten()
            && let Err(e) = processor.shutdown()
        {
            tracing::warn!(error = %e, "spans could not be flushed at exit");
        }
    }
}

/// Installs the log subscriber and, with an OTLP endpoint, the span exporter.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>, service_name: &str) -> Result<Telemetry, Error> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,sled=warn,opentelemetry=warn"));
    // Colour only on a terminal: a log file or a pipe would keep the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // A second init in one process (tests, `dev`) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    let Some(endpoint) = otlp_endpoint else { return Ok(Telemetry::default()) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| Error::Exporter { endpoint: endpoint.to_owned(), source })?;
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(&Resource::builder().with_service_name(service_name.to_owned()).build());
    trace::export_to(Arc::new(processor));
    tracing::info!(%endpoint, service_name, "exporting spans over OTLP");
    Ok(Telemetry { exporting: true })
}

/// Where a workflow sits in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkflowTrace {
    /// The workflow span's own context; tasks carry it as their parent.
    pub context: TraceParent,
    /// The caller's span, when the start request carried a `traceparent`.
    pub parent_span_id: Option<u64>,
}

/// The workflow span's id is derived from the workflow id, so that every
/// decision, after any restart, hands out the same parent without storing
/// it. Without a caller's trace the workflow is the root of its own.
pub fn workflow_trace(workflow_id: &str, traceparent: &str) -> WorkflowTrace {
    let span_id = span_id_of(workflow_id);
    match TraceParent::parse(traceparent) {
        Some(caller) => WorkflowTrace { context: caller.with_span(span_id), parent_span_id: Some(caller.span_id) },
        None => WorkflowTrace {
            context: TraceParent { trace_id: trace_id_of(workflow_id), span_id, sampled: true },
            parent_span_id: None,
        },
    }
}

/// The workflow's trace id, as its log lines carry it.
pub fn trace_id_hex(state: &WorkflowState) -> String {
    workflow_trace(&state.workflow_id, &state.traceparent).context.trace_id_hex()
}

/// Exports the span of a workflow that has just closed.
pub fn export_workflow_span(state: &WorkflowState) {
    let WorkflowTrace { context, parent_span_id } = workflow_trace(&state.workflow_id, &state.traceparent);
    let at = |ms: i64| SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let status = status_name(state.status);
    trace::export(FinishedSpan {
        name: state.workflow_type.clone(),
        context,
        parent_span_id,
        kind: SpanKind::Server,
        start: at(state.started_ms),
        end: at(state.closed_ms.max(state.started_ms)),
        attributes: vec![
            KeyValue::new("sagaflow.workflow_id", state.workflow_id.clone()),
            KeyValue::new("sagaflow.status", status),
            KeyValue::new("sagaflow.correlation_id", state.correlation_id.clone()),
            KeyValue::new("sagaflow.history_length", i64::try_from(state.last_seq).unwrap_or(i64::MAX)),
        ],
        error: (status != "COMPLETED").then(|| format!("{status}: {}", state.reason)),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_trace_becomes_the_workflows_parent() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = workflow_trace("wf-1", caller);
        assert_eq!(trace.context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_span_id, Some(0x00f0_67aa_0ba9_02b7));
        assert_eq!(trace.context.span_id, span_id_of("wf-1"));
    }

    #[test]
    fn without_a_callers_trace_the_workflow_is_a_stable_root() {
        let first = workflow_trace("wf-1", "");
        assert_eq!(first, workflow_trace("wf-1", "not a traceparent"));
        assert_eq!(first.parent_span_id, None);
        assert_ne!(first.context.trace_id, workflow_trace("wf-2", "").context.trace_id);
    }
}
