//! Metrics, correlation ids and traces, with real server and worker processes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ServerProcess, WorkerProcess, scrape};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{Item, StartCheckoutRequest};
use sagaflow_proto::v1::AwaitWorkflowRequest;

const ALL: &str = "catalog,coupons,inventory,payments,orders,shipping,notifications";

fn checkout(request_id: &str, payment_method: &str) -> StartCheckoutRequest {
    StartCheckoutRequest {
        client_request_id: request_id.into(),
        customer_id: "alice".into(),
        items: vec![Item { sku: "sku-mug".into(), quantity: 1 }],
        shipping_address: "1 Test Street".into(),
        payment_method: payment_method.into(),
        ..Default::default()
    }
}

async fn run_checkout(server: &ServerProcess, request: tonic::Request<StartCheckoutRequest>) -> (String, &'static str) {
    let mut checkouts = CheckoutServiceClient::connect(server.url.clone()).await.unwrap();
    let checkout_id = checkouts.start_checkout(request).await.unwrap().into_inner().checkout_id;
    let done = server
        .client()
        .await
        .await_workflow(AwaitWorkflowRequest { workflow_id: checkout_id.clone(), timeout_ms: 60_000 })
        .await
        .unwrap()
        .into_inner();
    assert!(done.terminal, "{checkout_id} did not end");
    (checkout_id.clone(), common::status_of(&done))
}

/// The sum of the samples of `name` whose labels include all of `with` (0 when none).
fn value(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    common::metric_where(text, name, with).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_equal_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let data_dir = dir.path().to_str().unwrap();
    let _worker = WorkerProcess::start(&server.url, &["--services", ALL, "--data-dir", data_dir]).await;

    for i in 0..3 {
        let (id, status) = run_checkout(&server, tonic::Request::new(checkout(&format!("ok-{i}"), ""))).await;
        assert_eq!(status, "COMPLETED", "{id}");
    }
    let (id, status) = run_checkout(&server, tonic::Request::new(checkout("declined", "card_declined"))).await;
    assert_eq!(status, "COMPENSATED", "{id}");

    let text = scrape(&server.http).await;
    let checkout = [("type", "checkout")];
    assert_eq!(value(&text, "sagaflow_workflows_started_total", &checkout), 4.0);
    assert_eq!(
        value(&text, "sagaflow_workflows_finished_total", &[("type", "checkout"), ("status", "COMPLETED")]),
        3.0
    );
    assert_eq!(
        value(&text, "sagaflow_workflows_finished_total", &[("type", "checkout"), ("status", "COMPENSATED")]),
        1.0
    );

    let attempts = |activity: &str, outcome: &str| {
        value(&text, "sagaflow_activity_attempts_total", &[("activity_type", activity), ("outcome", outcome)])
    };
    assert_eq!(attempts("inventory.reserve", "completed"), 4.0);
    assert_eq!(attempts("payments.capture", "completed"), 3.0);
    assert_eq!(attempts("payments.capture", "failed"), 1.0, "the declined card is a non-retryable failure");
    assert_eq!(attempts("inventory.release", "completed"), 1.0, "one compensation");
    assert_eq!(attempts("orders.create", "completed"), 3.0);

    // Every attempt is timed, in the queue and in the worker.
    let reserve = [("activity_type", "inventory.reserve")];
    assert_eq!(value(&text, "sagaflow_activity_schedule_to_start_seconds_count", &reserve), 4.0);
    assert_eq!(value(&text, "sagaflow_activity_duration_seconds_count", &reserve), 4.0);
    assert!(value(&text, "sagaflow_history_append_seconds_count", &[]) > 0.0);
    assert!(value(&text, "sagaflow_store_flush_seconds_count", &[]) > 0.0);
    // A sled node is a cluster of one shard, which it serves (the alerts on unserved shards).
    assert_eq!(common::metric_where(&text, "sagaflow_shards_held", &[]), Some(1.0));
    assert_eq!(common::metric_where(&text, "sagaflow_cluster_shards", &[]), Some(1.0));

    // The business signals: three orders placed, one checkout compensated.
    let events = |event_type: &str| value(&text, "sagaflow_domain_events_total", &[("event_type", event_type)]);
    assert_eq!(events("CheckoutStarted"), 4.0);
    assert_eq!(events("OrderCreated"), 3.0);
    assert_eq!(events("CheckoutCompensated"), 1.0);
}

/// Spans as an OTLP collector receives them: (service, name, trace, span, parent).
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(AnyValue::StringValue(s)) => s.clone(),
            Some(AnyValue::IntValue(i)) => i.to_string(),
            Some(AnyValue::BoolValue(b)) => b.to_string(),
            _ => String::new(),
        };
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span.attributes.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const CORRELATION_ID: &str = "corr-obs-7";
const DEBUG_LOGS: &str = "warn,sagaflow=debug,sagaflow_server=debug,sagaflow_worker=debug,sagaflow_activities=debug";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkout_is_one_trace_and_every_log_line_carries_its_correlation_id() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let dir = tempfile::tempdir().unwrap();
    let telemetry = ["--log-format", "json", "--otlp-endpoint", endpoint.as_str()];
    let server = ServerProcess::start_logged(dir.path(), &telemetry, DEBUG_LOGS).await;
    let data_dir = dir.path().to_str().unwrap();
    let mut worker_args = vec!["--services", ALL, "--data-dir", data_dir];
    worker_args.extend_from_slice(&telemetry);
    let worker = WorkerProcess::start_logged(&server.url, &worker_args, DEBUG_LOGS).await;

    let mut request = tonic::Request::new(checkout("traced", ""));
    request.metadata_mut().insert("x-correlation-id", CORRELATION_ID.parse().unwrap());
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01").parse().unwrap());
    let (checkout_id, status) = run_checkout(&server, request).await;
    assert_eq!(status, "COMPLETED");

    // A clean stop flushes the spans each process still holds.
    let (server_logs, worker_logs) = (server.logs.clone(), worker.logs.clone());
    worker.stop().await;
    server.stop().await;

    // The trace: the client's span, then the checkout, then one span per activity.
    let spans: Vec<ReceivedSpan> = collector.0.lock().unwrap().clone();
    let workflow = spans
        .iter()
        .find(|s| s.name == "checkout" && s.service == "sagaflow-orchestrator")
        .unwrap_or_else(|| panic!("no checkout span among {spans:#?}"));
    assert_eq!(workflow.trace_id, TRACE_ID);
    assert_eq!(workflow.parent_span_id, CLIENT_SPAN, "the checkout hangs under the caller's span");
    assert_eq!(workflow.attributes.get("sagaflow.workflow_id"), Some(&checkout_id));
    assert_eq!(workflow.attributes.get("sagaflow.correlation_id").map(String::as_str), Some(CORRELATION_ID));
    let activities: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.service == "sagaflow-worker").collect();
    for span in &activities {
        assert_eq!(span.trace_id, TRACE_ID, "{span:?}");
        assert_eq!(span.parent_span_id, workflow.span_id, "{span:?} hangs under the checkout");
        assert_eq!(span.attributes.get("sagaflow.correlation_id").map(String::as_str), Some(CORRELATION_ID));
    }
    let names: Vec<&str> = activities.iter().map(|s| s.name.as_str()).collect();
    for expected in ["inventory.reserve", "payments.capture", "orders.create", "shipping.create_shipment"] {
        assert_eq!(names.iter().filter(|n| **n == expected).count(), 1, "{expected} once among {names:?}");
    }

    // The logs: every line about this checkout, in either process, carries its correlation id.
    for (process, logs) in [("orchestrator", server_logs), ("worker", worker_logs)] {
        logs.await_line(&format!("from the {process} about {checkout_id}"), Duration::from_secs(10), |l| {
            l.contains(&checkout_id)
        })
        .await;
        let lines = logs.lines();
        let about: Vec<&String> = lines.iter().filter(|l| l.contains(&checkout_id)).collect();
        for line in about {
            let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(
                line.contains(&format!("\"correlation_id\":\"{CORRELATION_ID}\"")),
                "a {process} line without the correlation id: {parsed}"
            );
            assert!(line.contains(TRACE_ID), "a {process} line without the trace id: {parsed}");
        }
    }
}
