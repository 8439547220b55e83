//! The hostile client of a chaos run (issue 26, ADR 0017): a second tenant,
//! `mallory`, with a client token of its own, tries during the run every
//! attack of the issue on the shop front end's checkouts (the load), and
//! holds a flood of idle connections while the load goes on. It counts what
//! got through: an attack the server did not refuse, or a new client the
//! server did not serve during the flood. The report must show 0.
//!
//! An answer of the kind a restart gives (`UNAVAILABLE`, a deadline) proves
//! nothing either way: it is counted as inconclusive, and the attack is tried
//! again next round. A flood probe is not judged while the schedule has the
//! orchestrator down or recovering.

use std::collections::BTreeMap;
use std::time::Duration;

use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{GetCheckoutRequest, Item, RefundCheckoutRequest, StartCheckoutRequest};
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    CancelWorkflowRequest, DescribeWorkflowRequest, GetWorkflowHistoryRequest, SignalWorkflowRequest,
    StartWorkflowRequest, TerminateWorkflowRequest,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::Conn;
use super::load::Shared;
use super::plan::{Action, Planned, Target};
use super::system::{HOSTILE_TENANT, SHOP_TENANT, Tokens};

/// Idle connections held on the gRPC and the HTTP port: past the caps of a
/// server limited to 1,024 open files (576 and 96), as in the issue.
const FLOOD_GRPC: usize = 1_100;
const FLOOD_HTTP: usize = 200;
/// How long the flood is held, and how long a new client may take meanwhile.
const FLOOD_HOLD: Duration = Duration::from_secs(6);
const SERVED_WITHIN: Duration = Duration::from_secs(5);
/// Between two rounds of attacks: a pace, not a wait for anything.
const ROUND_GAP: Duration = Duration::from_secs(2);
/// After a restart, the time the orchestrator may take to replay its log
/// and serve again, during which a flood probe is not judged.
const RECOVERY: Duration = Duration::from_secs(10);

/// One attack's counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttackCount {
    pub attempts: u64,
    /// Refused with the expected code (or, for a squat, kept in the attacker's namespace).
    pub refused: u64,
    /// Answered as a restart answers: proves nothing.
    pub inconclusive: u64,
    /// Refused, but with another code than the expected one.
    pub unexpected: u64,
    /// The attack worked.
    pub got_through: u64,
    /// The expected code.
    pub expected: String,
}

/// What the hostile client did and what got through.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Hostile {
    pub attacks: BTreeMap<String, AttackCount>,
    /// Idle connections held at once during the flood.
    pub flood_connections: u64,
    /// New clients tried while the flood was held, served, not served, and
    /// not judged (the orchestrator was down or recovering).
    pub flood_probes: u64,
    pub flood_served: u64,
    pub flood_not_served: u64,
    pub flood_not_judged: u64,
    /// Silent connections the server closed to make room for new ones.
    pub flood_evicted: u64,
}

impl Hostile {
    /// Attacks that worked, and new clients not served during the flood.
    pub fn got_through(&self) -> u64 {
        self.attacks.values().map(|a| a.got_through).sum::<u64>() + self.flood_not_served
    }

    pub fn attempts(&self) -> u64 {
        self.attacks.values().map(|a| a.attempts).sum()
    }

    fn count(&mut self, attack: &str, expected: String) -> &mut AttackCount {
        let count = self.attacks.entry(attack.to_owned()).or_default();
        if count.expected.is_empty() {
            count.expected = expected;
        }
        count.attempts += 1;
        count
    }

    /// Judges an answer that should be a refusal with one of `expected`.
    fn judge<T>(&mut self, attack: &str, expected: &[Code], answer: Result<T, tonic::Status>) {
        let named = expected.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(" or ");
        let count = self.count(attack, named);
        match answer {
            Ok(_) => {
                count.got_through += 1;
                tracing::error!(attack, "chaos: a hostile client's attack got through");
            }
            Err(status) if expected.contains(&status.code()) => count.refused += 1,
            Err(status) if transient(status.code()) => count.inconclusive += 1,
            Err(status) => {
                count.unexpected += 1;
                tracing::warn!(attack, %status, "chaos: a hostile client's attack was refused with an unexpected code");
            }
        }
    }
}

fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::ResourceExhausted
    )
}

/// Where the hostile client reaches the orchestrator.
pub struct Reach {
    /// A lazy channel to the gRPC listener.
    pub channel: Channel,
    pub grpc: String,
    pub http: String,
    pub server_url: String,
}

/// The intervals, from the start of the run, in which the schedule has the
/// orchestrator down or recovering.
pub fn orchestrator_down(schedule: &[Planned]) -> Vec<(Duration, Duration)> {
    schedule
        .iter()
        .filter_map(|step| match step.action {
            Action::Kill { target: Target::Orchestrator, down_for_ms } => Some((
                Duration::from_millis(step.at_ms.saturating_sub(1_000)),
                Duration::from_millis(step.at_ms + down_for_ms) + RECOVERY,
            )),
            _ => None,
        })
        .collect()
}

fn overlaps(down: &[(Duration, Duration)], from: Duration, to: Duration) -> bool {
    down.iter().any(|(start, end)| from < *end && *start < to)
}

/// The checkout id the server derives for a client request id, before ids
/// were scoped to a tenant and since: the attacker can compute both.
fn derived_checkout_ids(request_id: &str) -> [String; 2] {
    let checkout_id = |client_request_id: &str| sagaflow_shop_server::checkout::checkout_ids(client_request_id).0;
    [checkout_id(request_id), checkout_id(&format!("{SHOP_TENANT}:{request_id}"))]
}

fn with<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Runs the hostile client for `duration`: a round of attacks every
/// [`ROUND_GAP`], and one flood in the quietest moment the schedule leaves.
pub async fn run(
    target: Reach,
    tokens: Tokens,
    seed: u64,
    ledger: Shared,
    down: Vec<(Duration, Duration)>,
    duration: Duration,
) -> Hostile {
    let start = Instant::now();
    let mut report = Hostile::default();
    // The first moment past a quarter of the run (the load has built up)
    // whose flood window the schedule leaves alone, else the first one at
    // all; a third of the run if there is none (its probes are then judged
    // only outside the down windows).
    let window = FLOOD_HOLD + SERVED_WITHIN;
    let quiet = |at: &Duration| !overlaps(&down, *at, *at + window);
    let from = |first: Duration| {
        (0..).map(move |i| first + Duration::from_millis(500 * i)).take_while(move |at| *at + window <= duration)
    };
    let flood_at = from(duration / 4).find(quiet).or_else(|| from(Duration::ZERO).find(quiet)).unwrap_or(duration / 3);
    let mut flooded = false;
    let mut round = 0_u64;
    let mut victims = 0_u64;
    while start.elapsed() < duration {
        round += 1;
        victims += u64::from(attack(&target, &tokens, seed, round, &ledger, &mut report).await);
        // Not before one round found a victim: on a slow machine the load's
        // first checkout can come after the flood's moment, and the flood
        // holds the client for most of a short run.
        if !flooded && victims > 0 && start.elapsed() >= flood_at {
            flood(&target, &tokens, start, &down, &mut report).await;
            flooded = true;
        }
        tokio::time::sleep(ROUND_GAP).await;
    }
    if !flooded {
        flood(&target, &tokens, start, &down, &mut report).await;
    }
    report
}

/// One round of the tenant attacks on the load's latest checkout; whether
/// there was one to attack.
async fn attack(target: &Reach, tokens: &Tokens, seed: u64, round: u64, ledger: &Shared, report: &mut Hostile) -> bool {
    let mallory = Some(tokens.mallory.as_str());
    let mut workflows = WorkflowServiceClient::new(target.channel.clone());
    let mut checkouts = CheckoutServiceClient::new(target.channel.clone());
    let victim = ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner).checkouts.last().cloned();

    // No token, a made-up one, a worker's: refused before anything else.
    let request = StartCheckoutRequest {
        client_request_id: format!("hostile-{seed}-{round}"),
        customer_id: "mallory".into(),
        items: vec![Item { sku: "sku-mug".into(), quantity: 1 }],
        shipping_address: "nowhere".into(),
        ..Default::default()
    };
    for (attack, token) in [("no_token", None), ("made_up_token", Some("not-a-token-of-this-server-0123456789"))] {
        let answer = checkouts.start_checkout(with(request.clone(), token)).await;
        report.judge(attack, &[Code::Unauthenticated], answer);
    }
    let answer = checkouts.start_checkout(with(request, Some(tokens.worker.as_str()))).await;
    report.judge("worker_token_as_client", &[Code::PermissionDenied], answer);

    // Squat the ids the load's next checkouts derive, and the refunds of its latest.
    let next = ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner).checkouts.len() as u64 + 5;
    let mut squats: Vec<(&str, String)> =
        derived_checkout_ids(&format!("chaos-{seed}-{next}")).into_iter().map(|id| ("squat_checkout_id", id)).collect();
    if let Some((_, checkout_id)) = &victim {
        squats.push(("squat_refund_id", format!("rfd-{checkout_id}-x")));
    }
    for (n, (attack, squatted)) in squats.into_iter().enumerate() {
        let start = StartWorkflowRequest {
            workflow_type: "bench".into(),
            request_id: format!("hostile-squat-{seed}-{round}-{n}"),
            input: br#"{"amount_cents": 1000000000}"#.to_vec(),
            workflow_id: squatted.clone(),
            ..Default::default()
        };
        let answer = workflows.start_workflow(with(start, mallory)).await;
        let scoped = format!("{HOSTILE_TENANT}:{squatted}");
        let count = report.count(attack, format!("kept as {HOSTILE_TENANT}:ID"));
        let started = match answer {
            Ok(started) => started.into_inner().workflow_id,
            Err(status) if transient(status.code()) => {
                count.inconclusive += 1;
                continue;
            }
            Err(status) => {
                count.unexpected += 1;
                tracing::warn!(attack, %status, "chaos: a squat was refused with an unexpected code");
                continue;
            }
        };
        if started == scoped {
            count.refused += 1;
        } else {
            count.got_through += 1;
            tracing::error!(attack, workflow_id = %started, "chaos: a squat took a derived id");
        }
        // The squatter is no saga of the run: the operator ends it. Only the
        // id the server named: the derived one may be the victim's own by now.
        let end = TerminateWorkflowRequest {
            workflow_id: started,
            reason: "chaos: the hostile client's squat".into(),
            identity: "chaos-operator".into(),
        };
        let _ = workflows.terminate_workflow(with(end, Some(tokens.operator.as_str()))).await;
    }

    let Some((_, checkout_id)) = victim else { return false };
    let suffix = checkout_id.strip_prefix("chk-").unwrap_or(&checkout_id).to_owned();
    // The victim's checkout, started raw with its keys and a declined card: its
    // compensation would release the victim's reservation. The refund saga, raw.
    let forged = serde_json::json!({
        "client_request_id": format!("hostile-forged-{round}"), "customer_id": "mallory",
        "items": [{"sku": "sku-mug", "quantity": 1}], "payment_method": "card_declined",
        "reservation_id": format!("res-{suffix}"), "payment_intent_id": format!("pi-{suffix}"),
    });
    for (attack, workflow_type, expected) in [
        ("forged_checkout", "checkout", &[Code::FailedPrecondition][..]),
        ("forged_refund", "refund", &[Code::FailedPrecondition, Code::PermissionDenied][..]),
    ] {
        let start = StartWorkflowRequest {
            workflow_type: workflow_type.into(),
            request_id: format!("hostile-{attack}-{seed}-{round}"),
            input: forged.to_string().into_bytes(),
            ..Default::default()
        };
        let answer = workflows.start_workflow(with(start, mallory)).await;
        report.judge(attack, expected, answer);
    }

    // Read, steer or refund another tenant's checkout.
    let get = GetCheckoutRequest { checkout_id: checkout_id.clone() };
    report.judge("read_other_checkout", &[Code::NotFound], checkouts.get_checkout(with(get, mallory)).await);
    let describe = DescribeWorkflowRequest { workflow_id: checkout_id.clone() };
    report.judge(
        "describe_other_workflow",
        &[Code::NotFound],
        workflows.describe_workflow(with(describe, mallory)).await,
    );
    let history = GetWorkflowHistoryRequest { workflow_id: checkout_id.clone(), ..Default::default() };
    report.judge("read_other_history", &[Code::NotFound], workflows.get_workflow_history(with(history, mallory)).await);
    let cancel = CancelWorkflowRequest {
        workflow_id: checkout_id.clone(),
        reason: "mallory".into(),
        identity: "mallory".into(),
    };
    report.judge(
        "cancel_other_workflow",
        &[Code::PermissionDenied],
        workflows.cancel_workflow(with(cancel, mallory)).await,
    );
    let signal = SignalWorkflowRequest {
        workflow_id: checkout_id.clone(),
        name: "sagaflow.retry".into(),
        input: Vec::new(),
        identity: "mallory".into(),
    };
    report.judge(
        "signal_other_workflow",
        &[Code::PermissionDenied],
        workflows.signal_workflow(with(signal, mallory)).await,
    );
    let refund = RefundCheckoutRequest { checkout_id, refund_id: format!("hostile-{round}"), amount_cents: 1 };
    report.judge(
        "refund_other_checkout",
        &[Code::PermissionDenied],
        checkouts.refund_checkout(with(refund, mallory)).await,
    );
    true
}

/// Holds [`FLOOD_GRPC`] + [`FLOOD_HTTP`] silent connections for
/// [`FLOOD_HOLD`], and meanwhile checks that a new client is served within
/// [`SERVED_WITHIN`], again and again.
async fn flood(target: &Reach, tokens: &Tokens, start: Instant, down: &[(Duration, Duration)], report: &mut Hostile) {
    // This side needs 1,300 descriptors and more.
    sagaflow_server::connections::raise_open_file_limit();
    let evicted_before = evictions(target, tokens).await;
    let mut held = Vec::new();
    for (addr, n) in [(&target.grpc, FLOOD_GRPC), (&target.http, FLOOD_HTTP)] {
        for _ in 0..n {
            match TcpStream::connect(addr.as_str()).await {
                Ok(stream) => held.push(stream),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "chaos: the flood could open no more connections");
                    break;
                }
            }
        }
    }
    report.flood_connections = report.flood_connections.max(held.len() as u64);
    tracing::info!(connections = held.len(), "chaos: the hostile client holds its flood");
    let until = Instant::now() + FLOOD_HOLD;
    while Instant::now() < until {
        let from = start.elapsed();
        let served = tokio::time::timeout(SERVED_WITHIN, probe(target, tokens)).await;
        let to = start.elapsed();
        report.flood_probes += 1;
        match served {
            Ok(Ok(())) => report.flood_served += 1,
            _ if overlaps(down, from, to) => report.flood_not_judged += 1,
            failed => {
                report.flood_not_served += 1;
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("not within {SERVED_WITHIN:?}"),
                };
                tracing::error!(error = %why, "chaos: a new client was not served during the flood");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(held);
    // How many silent connections the server closed to make room: the flood
    // reached its caps, or this is 0.
    if let (Some(before), Some(after)) = (evicted_before, evictions(target, tokens).await) {
        report.flood_evicted += after.saturating_sub(before);
    }
}

/// `sagaflow_connections_evicted_total` over both listeners, from `/metrics`.
async fn evictions(target: &Reach, tokens: &Tokens) -> Option<u64> {
    let mut http = TcpStream::connect(target.http.as_str()).await.ok()?;
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: sagaflow\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        tokens.operator
    );
    http.write_all(head.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(SERVED_WITHIN, http.read_to_end(&mut answer)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&answer);
    let values = text
        .lines()
        .filter(|l| l.starts_with("sagaflow_connections_evicted_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    Some(values.sum::<f64>() as u64)
}

/// A new client, on new connections: health, a read of its own, `/healthz`.
async fn probe(target: &Reach, tokens: &Tokens) -> anyhow::Result<()> {
    let channel = Channel::from_shared(target.server_url.clone())?.connect().await?;
    let status = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await?;
    anyhow::ensure!(status.get_ref().status == 1, "health answers {:?}", status.get_ref().status);
    let mut operator: WorkflowServiceClient<Conn> =
        WorkflowServiceClient::new(super::super::connection::with_token(channel, Some(&tokens.operator))?);
    let list = sagaflow_proto::v1::ListWorkflowsRequest { page_size: 1, ..Default::default() };
    operator.list_workflows(list).await?;
    let mut http = TcpStream::connect(target.http.as_str()).await?;
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: sagaflow\r\nConnection: close\r\n\r\n").await?;
    let mut answer = Vec::new();
    http.read_to_end(&mut answer).await?;
    anyhow::ensure!(answer.starts_with(b"HTTP/1.1 200"), "/healthz answers {}", String::from_utf8_lossy(&answer));
    Ok(())
}
