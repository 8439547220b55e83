//! Money safety when an outcome is unknown (ADR 0006, issue 16), with real
//! processes: a capture that timed out may have taken the money, so the
//! checkout is never compensated past it. It stays open and flagged
//! `PIVOT_OUTCOME_UNKNOWN` until the gateway answers (the retry signal) or an
//! operator records what happened (`sagaflow workflow resolve`); a cancel
//! during the capture waits for its outcome; a checkout never shows CANCELLED
//! while it kept money, and the invariants say so when it does.
//!
//! The server runs the shipped sagas at `--time-scale 0.05`: the capture's
//! 10 s start-to-close becomes 500 ms, so its five attempts time out in about
//! three seconds.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::Duration;

use common::shop::{eventually, ledger_entries};
use common::{
    BIN, ServerProcess, WorkerProcess, admin, await_end, event_names, full_history, metric_where, scrape, status_of,
    wait_for_event, wait_until_leased,
};
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{Checkout, CheckoutStatus, GetCheckoutRequest, Item, StartCheckoutRequest};
use sagaflow_proto::v1::HistoryEvent;
use sagaflow_proto::v1::history_event::Attributes;
use serde_json::{Value, json};
use tonic::transport::Channel;

const ALL: &str = "catalog,coupons,inventory,payments,orders,shipping,notifications";
const TEE_CENTS: i64 = 2499;

/// A server with the sagas at 1/20 of their durations, and one worker with
/// every shop service.
struct Shop {
    server: ServerProcess,
    worker: WorkerProcess,
    _dir: tempfile::TempDir,
}

impl Shop {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(
            &dir.path().join("orchestrator"),
            &["--time-scale", "0.05", "--stuck-check-interval", "200ms", "--jobs-interval", "0s"],
        )
        .await;
        let data = dir.path().join("shop");
        let worker = WorkerProcess::start(
            &server.url,
            &["--services", ALL, "--data-dir", data.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"],
        )
        .await;
        Self { server, worker, _dir: dir }
    }

    fn admin_url(&self) -> String {
        self.worker.admin.clone().unwrap()
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        admin(&self.admin_url(), method, path, body).await
    }

    async fn set_fault(&self, spec: &str) {
        self.admin("POST", "/faults", Some(json!({ "spec": spec }))).await;
    }

    async fn checkouts(&self) -> CheckoutServiceClient<Channel> {
        CheckoutServiceClient::connect(self.server.url.clone()).await.unwrap()
    }

    async fn start_checkout(&self, request_id: &str) -> String {
        let request = StartCheckoutRequest {
            client_request_id: request_id.into(),
            customer_id: "olga".into(),
            items: vec![Item { sku: "sku-tee".into(), quantity: 1 }],
            ..Default::default()
        };
        self.checkouts().await.start_checkout(request).await.unwrap().into_inner().checkout_id
    }

    async fn get(&self, checkout_id: &str) -> Checkout {
        let request = GetCheckoutRequest { checkout_id: checkout_id.into() };
        self.checkouts().await.get_checkout(request).await.unwrap().into_inner()
    }

    async fn history(&self, workflow_id: &str) -> Vec<HistoryEvent> {
        full_history(&mut self.server.client().await, workflow_id).await
    }

    /// `sagaflow ARGS --server URL`.
    async fn cli(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(BIN)
            .args(args)
            .args(["--server", &self.server.url])
            .env("SAGAFLOW_SHOP_ADMIN", self.admin_url())
            .output()
            .await
            .unwrap()
    }

    /// The ledger's capture entries for `payment_intent_id`.
    async fn captures(&self, payment_intent_id: &str) -> usize {
        let ledger = self.admin("GET", "/payments/ledger", None).await;
        ledger_entries(&ledger, "capture", payment_intent_id).len()
    }

    /// `sagaflow shop invariants --grace 0s --output json`: the report and whether it exited 0.
    async fn invariants(&self) -> (Value, bool) {
        let output = self.cli(&["shop", "invariants", "--grace", "0s", "--output", "json"]).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|_| panic!("no report: {stdout} / {}", String::from_utf8_lossy(&output.stderr)));
        (report, output.status.success())
    }

    async fn wait_stuck(&self, workflow_id: &str, reason: &str) {
        let mut client = self.server.client().await;
        wait_for_event(
            &mut client,
            workflow_id,
            Duration::from_secs(30),
            |e| matches!(&e.attributes, Some(Attributes::StuckDetected(s)) if s.reason == reason),
        )
        .await;
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn invariants_of(report: &Value) -> Vec<String> {
    report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("{} {}", v["invariant"].as_str().unwrap(), v["subject"].as_str().unwrap()))
        .collect()
}

fn count(events: &[HistoryEvent], name: &str) -> usize {
    event_names(events).iter().filter(|n| **n == name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_that_hangs_after_taking_the_money_stays_open_and_flagged_then_ships_once() {
    // The reproduction: the gateway takes the money, then hangs, five times.
    let shop = Shop::start().await;
    shop.set_fault("payments.capture=hang-after-effect:5").await;
    let started = shop
        .cli(&["checkout", "start", "--request-id", "flaky-gw", "--customer", "olga", "--item", "sku-tee:1", "--wait"])
        .await;
    let (stdout, stderr) = (text(&started.stdout), text(&started.stderr));
    assert!(!started.status.success(), "a stuck checkout is not a success: {stdout}");
    assert!(stderr.contains("flagged stuck: PIVOT_OUTCOME_UNKNOWN"), "{stderr}");
    assert!(stdout.contains("Status        RESERVED (saga RUNNING)"), "{stdout}");
    assert!(stdout.contains("Stuck         PIVOT_OUTCOME_UNKNOWN"), "{stdout}");
    let checkout_id = stdout.lines().next().unwrap().split_whitespace().nth(1).unwrap().to_owned();

    // Open and flagged, for as long as the gateway hangs: never compensated.
    let held = shop.get(&checkout_id).await;
    assert_eq!(held.status, CheckoutStatus::Reserved as i32);
    assert_eq!((held.workflow_status.as_str(), held.stuck_reason.as_str()), ("RUNNING", "PIVOT_OUTCOME_UNKNOWN"));
    assert!(held.stuck_message.contains("sagaflow.retry"), "{}", held.stuck_message);
    let history = shop.history(&checkout_id).await;
    assert_eq!(count(&history, "CompensationStarted"), 0, "{:?}", event_names(&history));
    // Each attempt timed out: the orchestrator's timer or the worker's own
    // (a StartToCloseTimeout failure), whichever came first.
    let cut_off = history
        .iter()
        .filter(|e| match &e.attributes {
            Some(Attributes::ActivityTimedOut(_)) => true,
            Some(Attributes::ActivityFailed(f)) => f.outcome_unknown,
            _ => false,
        })
        .count();
    assert_eq!(cut_off, 5, "{:?}", event_names(&history));
    let keys: std::collections::BTreeSet<&str> = history
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(Attributes::ActivityScheduled(s)) if s.step == "capture" => Some(s.idempotency_key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(keys.into_iter().collect::<Vec<_>>(), [held.payment_intent_id.as_str()], "one key for every attempt");
    assert_eq!(shop.captures(&held.payment_intent_id).await, 1, "the money is taken, once");
    // The alert's metric, and the operator's list.
    eventually(Duration::from_secs(10), "the stuck metric", || async {
        let metrics = scrape(&shop.server.http).await;
        metric_where(&metrics, "sagaflow_stuck_workflows", &[("reason", "PIVOT_OUTCOME_UNKNOWN")]) == Some(1.0)
    })
    .await;
    let stuck = shop.cli(&["workflow", "list", "--stuck"]).await;
    assert!(text(&stuck.stdout).contains(&checkout_id), "{}", text(&stuck.stdout));
    // The checks see the money without an order; a refund is refused while
    // the capture is not settled.
    let (report, ok) = shop.invariants().await;
    assert!(!ok);
    assert_eq!(invariants_of(&report), [format!("capture_has_order_or_refund {}", held.payment_intent_id)], "{report}");
    let amount = TEE_CENTS.to_string();
    let refund = shop.cli(&["checkout", "refund", &checkout_id, "--refund-id", "r1", "--amount-cents", &amount]).await;
    assert!(!refund.status.success());
    assert!(text(&refund.stderr).contains("not settled"), "{}", text(&refund.stderr));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(shop.get(&checkout_id).await.workflow_status, "RUNNING");

    // The gateway is back; the operator sends the retry signal.
    shop.admin("DELETE", "/faults", None).await;
    let retried = shop.cli(&["workflow", "signal", &checkout_id, "sagaflow.retry"]).await;
    assert!(retried.status.success(), "{}", text(&retried.stderr));
    let done = await_end(&mut shop.server.client().await, &checkout_id).await;
    assert_eq!(status_of(&done), "COMPLETED");
    let shipped = shop.get(&checkout_id).await;
    assert_eq!(shipped.status, CheckoutStatus::Shipped as i32);
    assert_eq!(shipped.stuck_reason, "");
    assert_eq!(shop.captures(&held.payment_intent_id).await, 1, "exactly one capture");
    let history = shop.history(&checkout_id).await;
    assert_eq!(count(&history, "StuckCleared"), 1);
    let metrics = scrape(&shop.server.http).await;
    assert_eq!(metric_where(&metrics, "sagaflow_domain_events_total", &[("event_type", "PaymentCaptured")]), Some(1.0));
    let (report, ok) = shop.invariants().await;
    assert!(ok, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_capture_waits_for_its_outcome() {
    let shop = Shop::start().await;
    let mut workflows = shop.server.client().await;

    // The capture takes the money and hangs once; the cancel arrives meanwhile.
    shop.set_fault("payments.capture=hang-after-effect:1").await;
    let kept = shop.start_checkout("race-kept").await;
    wait_until_leased(&mut workflows, &kept, "capture").await;
    let cancelled = shop.cli(&["workflow", "cancel", &kept, "--reason", "customer left"]).await;
    assert!(cancelled.status.success(), "{}", text(&cancelled.stderr));
    assert!(text(&cancelled.stdout).contains("waits for step capture"), "{}", text(&cancelled.stdout));
    // The retry finds the capture: the cancel is refused, on the record, and it ships.
    let done = await_end(&mut workflows, &kept).await;
    assert_eq!(status_of(&done), "COMPLETED");
    let history = shop.history(&kept).await;
    let refused = history
        .iter()
        .find_map(|e| match &e.attributes {
            Some(Attributes::CancelRefused(c)) => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no CancelRefused: {:?}", event_names(&history)));
    assert_eq!((refused.reason.as_str(), refused.step.as_str()), ("customer left", "capture"));
    let timeline = shop.cli(&["workflow", "history", &kept]).await;
    assert!(text(&timeline.stdout).contains("CancelRefused"), "{}", text(&timeline.stdout));
    let shipped = shop.get(&kept).await;
    assert_eq!(shipped.status, CheckoutStatus::Shipped as i32);
    assert_eq!(shop.captures(&shipped.payment_intent_id).await, 1);

    // The capture hangs before taking anything, then the card is declined for
    // good: the cancel compensates, and nothing is kept.
    shop.set_fault("payments.capture=hang:1").await;
    let dropped = shop.start_checkout("race-dropped").await;
    wait_until_leased(&mut workflows, &dropped, "capture").await;
    shop.cli(&["workflow", "cancel", &dropped, "--reason", "customer left"]).await;
    shop.set_fault("payments.capture=fatal").await;
    let done = await_end(&mut workflows, &dropped).await;
    assert_eq!(status_of(&done), "CANCELLED");
    let cancelled = shop.get(&dropped).await;
    assert_eq!(cancelled.status, CheckoutStatus::Cancelled as i32);
    assert_eq!(shop.captures(&cancelled.payment_intent_id).await, 0, "nothing kept");
    let reservation = shop.admin("GET", &format!("/reservations/{}", cancelled.reservation_id), None).await;
    assert_eq!(reservation["status"], "RELEASED");
    shop.admin("DELETE", "/faults", None).await;
    let (report, ok) = shop.invariants().await;
    assert!(ok, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_records_what_the_gateway_did() {
    let shop = Shop::start().await;
    let mut workflows = shop.server.client().await;

    // The gateway took the money; the operator saw it in its dashboard.
    shop.set_fault("payments.capture=hang-after-effect:5").await;
    let taken = shop.start_checkout("resolve-taken").await;
    shop.wait_stuck(&taken, "PIVOT_OUTCOME_UNKNOWN").await;
    let resolved = shop
        .cli(&[
            "workflow",
            "resolve",
            &taken,
            "--step",
            "capture",
            "--outcome",
            "succeeded",
            "--reason",
            "gateway dashboard: captured 24.99, ref GW-1",
        ])
        .await;
    assert!(resolved.status.success(), "{}", text(&resolved.stderr));
    assert!(text(&resolved.stdout).contains("resolved as succeeded"), "{}", text(&resolved.stdout));
    assert_eq!(status_of(&await_end(&mut workflows, &taken).await), "COMPLETED");
    let history = shop.history(&taken).await;
    let decision = history
        .iter()
        .find_map(|e| match &e.attributes {
            Some(Attributes::ActivityResolved(r)) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!((decision.step.as_str(), decision.outcome.as_str()), ("capture", "succeeded"));
    assert_eq!(decision.reason, "gateway dashboard: captured 24.99, ref GW-1");
    assert!(decision.identity.starts_with("anonymous"), "who decided: {}", decision.identity);
    let shipped = shop.get(&taken).await;
    assert_eq!(shipped.status, CheckoutStatus::Shipped as i32);
    assert_eq!(shop.captures(&shipped.payment_intent_id).await, 1);
    // A closed workflow takes no decision; nor does a step that is not there.
    let again = shop
        .cli(&["workflow", "resolve", &taken, "--step", "capture", "--outcome", "failed", "--reason", "oops"])
        .await;
    assert!(!again.status.success());
    assert!(text(&again.stderr).starts_with("error: FAILED_PRECONDITION"), "{}", text(&again.stderr));

    // The gateway took nothing (it hung before the effect): resolved failed,
    // the checkout compensates and the stock comes back.
    shop.set_fault("payments.capture=hang:5").await;
    let nothing = shop.start_checkout("resolve-nothing").await;
    shop.wait_stuck(&nothing, "PIVOT_OUTCOME_UNKNOWN").await;
    let unknown_step =
        shop.cli(&["workflow", "resolve", &nothing, "--step", "charge", "--outcome", "failed", "--reason", "x"]).await;
    assert!(text(&unknown_step.stderr).starts_with("error: INVALID_ARGUMENT"), "{}", text(&unknown_step.stderr));
    let no_reason = shop.cli(&["workflow", "resolve", &nothing, "--step", "capture", "--outcome", "failed"]).await;
    assert!(!no_reason.status.success());
    let resolved = shop
        .cli(&["workflow", "resolve", &nothing, "--step", "capture", "--outcome", "failed", "--reason", "no charge"])
        .await;
    assert!(resolved.status.success(), "{}", text(&resolved.stderr));
    assert_eq!(status_of(&await_end(&mut workflows, &nothing).await), "COMPENSATED");
    let cancelled = shop.get(&nothing).await;
    assert_eq!(cancelled.status, CheckoutStatus::Cancelled as i32);
    assert_eq!(shop.captures(&cancelled.payment_intent_id).await, 0);
    let (report, ok) = shop.invariants().await;
    assert!(ok, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariants_catch_a_checkout_that_lies_and_an_operator_refunds_it() {
    let shop = Shop::start().await;
    let mut workflows = shop.server.client().await;

    // An operator's mistake: the capture is resolved failed, though the
    // gateway took the money. The checkout compensates and says CANCELLED.
    shop.set_fault("payments.capture=hang-after-effect:5").await;
    let wrong = shop.start_checkout("wrongly-resolved").await;
    shop.wait_stuck(&wrong, "PIVOT_OUTCOME_UNKNOWN").await;
    shop.cli(&["workflow", "resolve", &wrong, "--step", "capture", "--outcome", "failed", "--reason", "misread"]).await;
    assert_eq!(status_of(&await_end(&mut workflows, &wrong).await), "COMPENSATED");
    let lying = shop.get(&wrong).await;
    assert_eq!(lying.status, CheckoutStatus::Cancelled as i32);
    assert_eq!(shop.captures(&lying.payment_intent_id).await, 1);

    // A checkout stopped by hand while its capture hangs: not CANCELLED (the
    // capture may still land), and its stock is still held.
    shop.set_fault("payments.capture=hang").await;
    let stopped = shop.start_checkout("terminated-mid-capture").await;
    wait_until_leased(&mut workflows, &stopped, "capture").await;
    let terminated = shop.cli(&["workflow", "terminate", &stopped, "--reason", "ops drill"]).await;
    assert!(terminated.status.success(), "{}", text(&terminated.stderr));
    let doubtful = shop.get(&stopped).await;
    assert_eq!(doubtful.workflow_status, "TERMINATED");
    assert_eq!(doubtful.status, CheckoutStatus::Reserved as i32, "never CANCELLED with the capture in doubt");

    // `shop invariants` and the job are one check; both see both.
    let (report, ok) = shop.invariants().await;
    assert!(!ok);
    let mut found = invariants_of(&report);
    found.sort();
    let mut expected = vec![
        format!("capture_has_order_or_refund {}", lying.payment_intent_id),
        format!("cancelled_checkout_kept_no_money {wrong}"),
        format!("finished_checkout_holds_no_stock {}", doubtful.reservation_id),
    ];
    expected.sort();
    assert_eq!(found, expected, "{report}");
    let job = shop.cli(&["jobs", "run", "check-invariants", "--grace", "0s", "--output", "json"]).await;
    let job: Value = serde_json::from_str(text(&job.stdout).trim()).unwrap();
    assert_eq!(job["violations"], report["violations"]);
    // Within the grace period they are pending, not violations.
    let graced = shop.cli(&["shop", "invariants", "--grace", "10m", "--output", "json"]).await;
    assert!(graced.status.success(), "{}", text(&graced.stdout));

    // The runbook's command works as written: refund the money the cancelled
    // checkout kept.
    shop.admin("DELETE", "/faults", None).await;
    let refund =
        shop.cli(&["checkout", "refund", &wrong, "--refund-id", "r1", "--amount-cents", &TEE_CENTS.to_string()]).await;
    assert!(refund.status.success(), "{}", text(&refund.stderr));
    let refund_id = text(&refund.stdout).trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(status_of(&await_end(&mut workflows, &refund_id).await), "COMPLETED");
    let refunded = shop.get(&wrong).await;
    assert_eq!((refunded.status, refunded.refunded_cents), (CheckoutStatus::Cancelled as i32, TEE_CENTS));
    let payment = shop.admin("GET", &format!("/payments/{}", refunded.payment_intent_id), None).await;
    assert_eq!(payment["refunded_cents"], TEE_CENTS);
    // The stopped checkout's stock waits for its reservation's TTL.
    let (report, _) = shop.invariants().await;
    assert_eq!(
        invariants_of(&report),
        [format!("finished_checkout_holds_no_stock {}", doubtful.reservation_id)],
        "{report}"
    );
}
