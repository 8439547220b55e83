//! The steady load of a chaos run: checkouts at a fixed rate, and now and
//! then a partial refund of one that shipped. A start counts as
//! acknowledged only when the server answered OK; a client whose call failed
//! retries with the same request id, as a real one would. The shop front end
//! starts and reads checkouts with its client token (a tenant); cancels and
//! refunds are the operator's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{
    CheckoutStatus, GetCheckoutRequest, Item, RefundCheckoutRequest, StartCheckoutRequest,
};
use sagaflow_proto::v1::CancelWorkflowRequest;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use tonic::transport::{Channel, Endpoint};

use super::Conn;

use super::plan::Rng;

/// Demo skus (the catalog's seed).
const SKUS: &[&str] = &["sku-mug", "sku-tee", "sku-hoodie", "sku-cap", "sku-stickers", "sku-notebook"];
/// Attempts of one start before the client gives up.
const START_ATTEMPTS: u32 = 4;

/// What the load did, shared with its tasks.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// (client request id, checkout id) of every acknowledged start.
    pub checkouts: Vec<(String, String)>,
    /// Starts the server never acknowledged, after every retry.
    pub unacknowledged: u64,
    /// Refund workflow ids of acknowledged refunds.
    pub refunds: Vec<String>,
    pub refunds_unacknowledged: u64,
    /// Cancels sent while a checkout ran, and how many were accepted (the
    /// others came after the pivot, or after the end).
    pub cancels_sent: u64,
    pub cancels_accepted: u64,
}

pub type Shared = Arc<Mutex<Ledger>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A channel that reconnects on its own after the orchestrator restarts.
pub fn channel(server_url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(server_url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

fn checkout_request(seed: u64, n: u64) -> StartCheckoutRequest {
    let mut rng = Rng::new(seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
    let lines = rng.between(1, 2);
    let items = (0..lines)
        .map(|_| Item {
            sku: SKUS[usize::try_from(rng.below(SKUS.len() as u64)).unwrap_or(0)].to_owned(),
            quantity: u32::try_from(rng.between(1, 3)).unwrap_or(1),
        })
        .collect();
    let roll = rng.below(100);
    StartCheckoutRequest {
        client_request_id: format!("chaos-{seed}-{n}"),
        customer_id: format!("cust-{}", n % 25),
        items,
        // A few declined cards: compensations without any fault.
        payment_method: if roll < 5 { "card_declined".into() } else { String::new() },
        coupon_code: if (5..25).contains(&roll) { "WELCOME10".into() } else { String::new() },
        shipping_address: "1 Chaos Lane".into(),
    }
}

async fn start_one(channel: Conn, request: StartCheckoutRequest, shared: Shared) {
    let mut client = CheckoutServiceClient::new(channel);
    for attempt in 0..START_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        if let Ok(answer) = client.start_checkout(request.clone()).await {
            lock(&shared).checkouts.push((request.client_request_id.clone(), answer.into_inner().checkout_id));
            return;
        }
    }
    lock(&shared).unacknowledged += 1;
}

/// A customer who gives up: cancels the checkout `after` its start, at
/// whatever step it is then.
async fn cancel_one(channel: Conn, checkout_id: String, after: Duration, shared: Shared) {
    tokio::time::sleep(after).await;
    let mut client = WorkflowServiceClient::new(channel);
    let request =
        CancelWorkflowRequest { workflow_id: checkout_id, reason: "customer gave up".into(), identity: "chaos".into() };
    let accepted = client.cancel_workflow(request).await.is_ok();
    let mut ledger = lock(&shared);
    ledger.cancels_sent += 1;
    ledger.cancels_accepted += u64::from(accepted);
}

async fn refund_one(channel: Conn, checkout_id: String, refund_id: String, shared: Shared) {
    let mut client = CheckoutServiceClient::new(channel);
    let Ok(checkout) = client.get_checkout(GetCheckoutRequest { checkout_id: checkout_id.clone() }).await else {
        return;
    };
    let checkout = checkout.into_inner();
    if checkout.status != CheckoutStatus::Shipped as i32 || checkout.total_cents < 4 {
        return;
    }
    let request = RefundCheckoutRequest { checkout_id, refund_id, amount_cents: checkout.total_cents / 4 };
    for attempt in 0..START_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        match client.refund_checkout(request.clone()).await {
            Ok(answer) => {
                lock(&shared).refunds.push(answer.into_inner().refund_workflow_id);
                return;
            }
            // Refused up front (nothing to refund): not a lost start.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => return,
            Err(_) => {}
        }
    }
    lock(&shared).refunds_unacknowledged += 1;
}

/// Runs the load for `duration` at `rate` checkouts a second, then waits for
/// the calls in flight.
pub async fn run(client: Conn, operator: Conn, seed: u64, rate: f64, duration: Duration, shared: Shared) {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::Instant::now() + duration;
    let mut calls = Vec::new();
    let mut n: u64 = 0;
    while tokio::time::Instant::now() < end {
        ticker.tick().await;
        calls.push(tokio::spawn(start_one(client.clone(), checkout_request(seed, n), Arc::clone(&shared))));
        // One checkout in twenty is cancelled while it runs, at a seeded moment.
        if n % 20 == 7 {
            let started = lock(&shared).checkouts.last().map(|(_, id)| id.clone());
            if let Some(checkout_id) = started {
                let after = Duration::from_millis(Rng::new(seed ^ n).below(2_500));
                calls.push(tokio::spawn(cancel_one(operator.clone(), checkout_id, after, Arc::clone(&shared))));
            }
        }
        // Every tenth tick, refund a quarter of a checkout started a while ago.
        if n % 10 == 9 {
            let earlier = lock(&shared).checkouts.iter().rev().nth(20).map(|(_, id)| id.clone());
            if let Some(checkout_id) = earlier {
                let refund_id = format!("chaos-rf-{seed}-{n}");
                calls.push(tokio::spawn(refund_one(operator.clone(), checkout_id, refund_id, Arc::clone(&shared))));
            }
        }
        n += 1;
        calls.retain(|c| !c.is_finished());
    }
    for call in calls {
        let _ = call.await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_seed_gives_the_same_checkouts() {
        assert_eq!(super::checkout_request(5, 17), super::checkout_request(5, 17));
        let run = |seed| (0..20).map(|n| super::checkout_request(seed, n).items).collect::<Vec<_>>();
        assert_ne!(run(5), run(6));
    }
}
