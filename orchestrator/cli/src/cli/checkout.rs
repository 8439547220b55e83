//! `sagaflow checkout …`: the shop's checkout from the command line.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{
    Checkout, CheckoutStatus, GetCheckoutRequest, Item, RefundCheckoutRequest, StartCheckoutRequest,
};
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use serde_json::json;

use super::Output;
use super::workflow::{Conn, connect_channel, outcome_failure, status_error, wait_for_end};

#[derive(Debug, Subcommand)]
pub enum CheckoutCommand {
    /// Start a checkout (idempotent by --request-id). Prices come from the catalog.
    Start {
        /// The client's request id: "Pay" clicked twice starts one checkout.
        #[arg(long)]
        request_id: String,
        /// The customer's id; their checkouts and notifications are filed under it.
        #[arg(long)]
        customer: String,
        /// SKU:QUANTITY, such as sku-mug:2 (quantity 1 to 10000); repeatable.
        #[arg(long = "item", value_name = "SKU:QTY", value_parser = parse_item, required = true)]
        items: Vec<Item>,
        /// A coupon code (see `shop coupons`), applied to the price snapshot at the start.
        #[arg(long)]
        coupon: Option<String>,
        /// `card` (the default), or `card_declined`, which the demo gateway declines.
        #[arg(long)]
        payment_method: Option<String>,
        /// The shipping address, free text.
        #[arg(long)]
        address: Option<String>,
        /// Wait for the checkout's saga to end (60s, or the given duration such as 5m), then print
        /// the checkout; exits 3 unless it COMPLETED, 4 if it still runs.
        #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "60s", value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
    /// Show a checkout: status, lines, total, order, payment, shipment, refunds.
    Get {
        /// The checkout's id (chk-…), as `checkout start` printed it.
        checkout_id: String,
    },
    /// Refund part or all of a checkout's payment (idempotent by --refund-id).
    Refund {
        /// The checkout's id (chk-…).
        checkout_id: String,
        /// The caller's id for this refund: a retry with the same id is the same refund, never a second one.
        #[arg(long)]
        refund_id: String,
        /// How much to refund, in cents (1000 is 10.00); at most what was captured and not yet refunded.
        #[arg(long)]
        amount_cents: i64,
    },
}

fn parse_item(text: &str) -> Result<Item, String> {
    let (sku, quantity) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not SKU:QUANTITY"))?;
    if sku.is_empty() {
        return Err(format!("{text:?} has no SKU before the ':'"));
    }
    // Parsed wide first, so that -1 or 0 is told apart from text that is no number.
    let quantity: i64 = quantity.parse().map_err(|_| format!("{text:?}: the quantity {quantity:?} is not a number"))?;
    u32::try_from(quantity)
        .ok()
        .filter(|q| (1..=MAX_QUANTITY).contains(q))
        .map(|quantity| Item { sku: sku.to_owned(), quantity })
        .ok_or_else(|| format!("{text:?}: the quantity must be from 1 to {MAX_QUANTITY}, not {quantity}"))
}

/// The server's bound on one line's quantity, checked here to say so before a round trip.
const MAX_QUANTITY: u32 = 10_000;

pub fn checkout_status_name(status: i32) -> &'static str {
    CheckoutStatus::try_from(status).unwrap_or_default().as_str_name().trim_start_matches("CHECKOUT_STATUS_")
}

fn checkout_json(checkout: &Checkout) -> serde_json::Value {
    json!({
        "checkout_id": checkout.checkout_id,
        "status": checkout_status_name(checkout.status),
        "workflow_status": checkout.workflow_status,
        "order_id": checkout.order_id,
        "subtotal_cents": subtotal_cents(checkout),
        "discount_cents": subtotal_cents(checkout) - checkout.total_cents,
        "total_cents": checkout.total_cents,
        "lines": checkout.lines.iter().map(|l| json!({
            "sku": l.sku, "quantity": l.quantity, "unit_price_cents": l.unit_price_cents, "line_total_cents": l.line_total_cents,
        })).collect::<Vec<_>>(),
        "payment_intent_id": checkout.payment_intent_id,
        "reservation_id": checkout.reservation_id,
        "shipment_status": checkout.shipment_status,
        "refunded_cents": checkout.refunded_cents,
        "stuck_reason": checkout.stuck_reason,
        "stuck_message": checkout.stuck_message,
    })
}

/// The sum of the lines, before any discount.
fn subtotal_cents(checkout: &Checkout) -> i64 {
    checkout.lines.iter().map(|l| l.line_total_cents).sum()
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

fn checkout_text(checkout: &Checkout) -> String {
    let mut out = format!(
        "Checkout      {}\nStatus        {} (saga {})\n",
        checkout.checkout_id,
        checkout_status_name(checkout.status),
        checkout.workflow_status
    );
    for line in &checkout.lines {
        out.push_str(&format!(
            "  {:<16} {:>4} x {:>9} = {:>10}\n",
            line.sku,
            line.quantity,
            money(line.unit_price_cents),
            money(line.line_total_cents)
        ));
    }
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("{name:<14}{value}\n"));
        }
    };
    // The lines add up to the subtotal; the coupon's discount takes it to the total.
    let subtotal = subtotal_cents(checkout);
    if subtotal != checkout.total_cents {
        field("Subtotal", money(subtotal));
        field("Discount", format!("-{}", money(subtotal - checkout.total_cents)));
    }
    field("Total", if checkout.total_cents > 0 { money(checkout.total_cents) } else { String::new() });
    field("Order", checkout.order_id.clone());
    field("Payment", checkout.payment_intent_id.clone());
    field("Reservation", checkout.reservation_id.clone());
    field("Shipment", checkout.shipment_status.clone());
    field("Refunded", if checkout.refunded_cents > 0 { money(checkout.refunded_cents) } else { String::new() });
    field("Stuck", checkout.stuck_reason.clone());
    field("  why", checkout.stuck_message.clone());
    out
}

pub async fn run(command: CheckoutCommand, server: &str, output: Output) -> anyhow::Result<()> {
    let channel = connect_channel(server).await?;
    let mut client = CheckoutServiceClient::new(channel.clone());
    match command {
        CheckoutCommand::Start { request_id, customer, items, coupon, payment_method, address, wait } => {
            let request = StartCheckoutRequest {
                client_request_id: request_id,
                customer_id: customer,
                items,
                coupon_code: coupon.unwrap_or_default(),
                payment_method: payment_method.unwrap_or_default(),
                shipping_address: address.unwrap_or_default(),
            };
            let started = client.start_checkout(request).await.map_err(status_error)?.into_inner();
            if let Some(timeout) = wait {
                let mut workflows = WorkflowServiceClient::new(channel);
                let ended = wait_for_end(&mut workflows, &started.checkout_id, timeout, None, output).await?;
                let checkout = print_checkout(&mut client, &started.checkout_id, output).await?;
                let what = format!("checkout {} ({})", started.checkout_id, checkout_status_name(checkout.status));
                return match outcome_failure(&ended, &what, timeout) {
                    Some(failure) => Err(failure.into()),
                    None => Ok(()),
                };
            }
            match output {
                Output::Json => outln!(
                    "{}",
                    json!({"checkout_id": started.checkout_id, "status": checkout_status_name(started.status), "already_started": started.already_started})
                ),
                Output::Text => outln!(
                    "{} {}{}",
                    started.checkout_id,
                    checkout_status_name(started.status),
                    if started.already_started { " (already started by this request id)" } else { "" }
                ),
            }
        }
        CheckoutCommand::Get { checkout_id } => {
            print_checkout(&mut client, &checkout_id, output).await?;
        }
        CheckoutCommand::Refund { checkout_id, refund_id, amount_cents } => {
            let response = client
                .refund_checkout(RefundCheckoutRequest { checkout_id, refund_id, amount_cents })
                .await
                .map_err(status_error)?
                .into_inner();
            match output {
                Output::Json => outln!(
                    "{}",
                    json!({"refund_workflow_id": response.refund_workflow_id, "already_started": response.already_started})
                ),
                Output::Text => outln!("refund started: {}", response.refund_workflow_id),
            }
        }
    }
    Ok(())
}

async fn print_checkout(
    client: &mut CheckoutServiceClient<Conn>,
    checkout_id: &str,
    output: Output,
) -> anyhow::Result<Checkout> {
    let checkout = client
        .get_checkout(GetCheckoutRequest { checkout_id: checkout_id.to_owned() })
        .await
        .map_err(status_error)
        .context("cannot read the checkout")?
        .into_inner();
    match output {
        Output::Json => outln!("{}", checkout_json(&checkout)),
        Output::Text => out!("{}", checkout_text(&checkout)),
    }
    Ok(checkout)
}
