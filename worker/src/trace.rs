//! Spans for OpenTelemetry. The ids come from the W3C `traceparent` that the
//! orchestrator hands out with every task (see
//! [`sagaflow_proto::trace_context`]), so the orchestrator's workflow span and
//! each worker's activity spans form one tree even though they are recorded
//! by different processes. A span is exported when it ends; nothing is
//! exported until the application installs a tracer provider and calls
//! [`export_to`].

use std::borrow::Cow;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use sagaflow_proto::trace_context::TraceParent;

static PROCESSOR: RwLock<Option<Arc<dyn SpanProcessor>>> = RwLock::new(None);

/// Sends every span that ends from now on to `processor` (an OTLP batch
/// processor, say). The span ids are ours, not the SDK's: the SDK's tracer
/// cannot be told which id to give a span, and the ids must agree across
/// processes.
pub fn export_to(processor: Arc<dyn SpanProcessor>) {
    *PROCESSOR.write().unwrap_or_else(PoisonError::into_inner) = Some(processor);
}

/// Stops exporting and returns the processor, to flush and shut it down.
pub fn stop_exporting() -> Option<Arc<dyn SpanProcessor>> {
    PROCESSOR.write().unwrap_or_else(PoisonError::into_inner).take()
}

/// A span that has ended, ready to export.
#[derive(Debug)]
pub struct FinishedSpan {
    pub name: String,
    /// This span's own trace and span id.
    pub context: TraceParent,
    /// The span it hangs under; `None` for a root.
    pub parent_span_id: Option<u64>,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// The failure, when the span's work failed.
    pub error: Option<String>,
}

pub fn export(span: FinishedSpan) {
    let guard = PROCESSOR.read().unwrap_or_else(PoisonError::into_inner);
    let Some(processor) = guard.as_ref() else { return };
    let flags = if span.context.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    processor.on_end(SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.context.trace_id.to_be_bytes()),
            SpanId::from_bytes(span.context.span_id.to_be_bytes()),
            flags,
            false,
            TraceState::default(),
        ),
        parent_span_id: span.parent_span_id.map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
        parent_span_is_remote: span.parent_span_id.is_some(),
        span_kind: span.kind,
        name: Cow::Owned(span.name),
        start_time: span.start,
        end_time: span.end,
        attributes: span.attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: span.error.map_or(Status::Unset, Status::error),
        instrumentation_scope: InstrumentationScope::builder("sagaflow").build(),
    });
}
