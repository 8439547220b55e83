//! `sagaflow checkout …`: the shop's checkout from the command line.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{
    Checkout, CheckoutStatus, GetCheckoutRequest, Item, RefundCheckoutRequest, StartCheckoutRequest,
};
use sagaflow_proto::v1::AwaitWorkflowRequest;
use serde_json::json;

use super::Output;
use super::workflow::{Conn, connect_channel, status_error};

#[derive(Debug, Subcommand)]
pub enum CheckoutCommand {
    /// Start a checkout (idempotent by --request-id). Prices come from the catalog.
    Start {
        /// The client's request id: "Pay" clicked twice starts one checkout.
        #[arg(long)]
        request_id: String,
        #[arg(long)]
        customer: String,
        /// SKU:QUANTITY; repeatable.
        #[arg(long = "item", value_parser = parse_item, required = true)]
        items: Vec<Item>,
        #[arg(long)]
        coupon: Option<String>,
        /// `card` by default; the demo gateway declines `card_declined`.
        #[arg(long)]
        payment_method: Option<String>,
        #[arg(long)]
        address: Option<String>,
        /// Wait until the checkout's saga ends, then print the checkout.
        #[arg(long)]
        wait: bool,
    },
    /// Show a checkout: status, lines, total, order, payment, shipment, refunds.
    Get { checkout_id: String },
    /// Refund part or all of a checkout's payment (idempotent by --refund-id).
    Refund {
        checkout_id: String,
        #[arg(long)]
        refund_id: String,
        #[arg(long)]
        amount_cents: i64,
    },
}

fn parse_item(text: &str) -> Result<Item, String> {
    let (sku, quantity) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not SKU:QUANTITY"))?;
    let quantity = quantity.parse().map_err(|_| format!("{text:?}: the quantity is not a number"))?;
    Ok(Item { sku: sku.to_owned(), quantity })
}

pub fn checkout_status_name(status: i32) -> &'static str {
    CheckoutStatus::try_from(status).unwrap_or_default().as_str_name().trim_start_matches("CHECKOUT_STATUS_")
}

fn checkout_json(checkout: &Checkout) -> serde_json::Value {
    json!({
        "checkout_id": checkout.checkout_id,
        "status": checkout_status_name(checkout.status),
        "workflow_status": checkout.workflow_status,
        "order_id": checkout.order_id,
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
            if wait {
                let ended = await_saga(channel, &started.checkout_id).await?;
                print_checkout(&mut client, &started.checkout_id, output).await?;
                if let Some(flag) = ended {
                    anyhow::bail!("checkout {} is open and flagged stuck: {flag}", started.checkout_id);
                }
                return Ok(());
            }
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"checkout_id": started.checkout_id, "status": checkout_status_name(started.status), "already_started": started.already_started})
                ),
                Output::Text => println!(
                    "{} {}{}",
                    started.checkout_id,
                    checkout_status_name(started.status),
                    if started.already_started { " (already started by this request id)" } else { "" }
                ),
            }
        }
        CheckoutCommand::Get { checkout_id } => print_checkout(&mut client, &checkout_id, output).await?,
        CheckoutCommand::Refund { checkout_id, refund_id, amount_cents } => {
            let response = client
                .refund_checkout(RefundCheckoutRequest { checkout_id, refund_id, amount_cents })
                .await
                .map_err(status_error)?
                .into_inner();
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"refund_workflow_id": response.refund_workflow_id, "already_started": response.already_started})
                ),
                Output::Text => println!("refund started: {}", response.refund_workflow_id),
            }
        }
    }
    Ok(())
}

/// Waits until the checkout's saga ends, or stops and is flagged stuck (a
/// capture whose outcome is unknown, say): then it returns the flag, since
/// only an operator moves it on.
async fn await_saga(channel: Conn, checkout_id: &str) -> anyhow::Result<Option<String>> {
    let mut workflows = sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = workflows
            .await_workflow(AwaitWorkflowRequest { workflow_id: checkout_id.to_owned(), timeout_ms: 1_000 })
            .await
            .map_err(status_error)?
            .into_inner();
        let summary = done.summary.unwrap_or_default();
        if done.terminal {
            return Ok(None);
        }
        if !summary.stuck_reason.is_empty() {
            // The message is printed with the checkout (`Stuck`, `why`).
            return Ok(Some(summary.stuck_reason));
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "checkout {checkout_id} is still running after 60 s");
    }
}

async fn print_checkout(
    client: &mut CheckoutServiceClient<Conn>,
    checkout_id: &str,
    output: Output,
) -> anyhow::Result<()> {
    let checkout = client
        .get_checkout(GetCheckoutRequest { checkout_id: checkout_id.to_owned() })
        .await
        .map_err(status_error)
        .context("cannot read the checkout")?
        .into_inner();
    match output {
        Output::Json => println!("{}", checkout_json(&checkout)),
        Output::Text => print!("{}", checkout_text(&checkout)),
    }
    Ok(())
}
