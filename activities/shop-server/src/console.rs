//! The checkout page of the operator console (`/checkouts/{id}`): what the
//! customer bought and paid, the payment and its ledger (the capture and the
//! refunds, from their histories), the reservation, the shipment, the
//! refunds and the domain events. Plugged in through
//! `Extension::console_routes`; the platform knows nothing of checkouts.
//!
//! Read as `GetCheckout` reads ([`read_checkout`]): a client sees only its
//! own checkouts, and an operator every one.

use axum::Router;
use axum::extract::Path;
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{HistoryEvent, WorkflowSummary};
use sagaflow_server::console::{self, ConsoleError, Link, Page, Viewer, format};
use sagaflow_server::runtime::Runtime;
use sagaflow_workflows::shop::{CHECKOUT, REFUND};
use serde_json::Value;

use crate::checkout::{RefundRow, read_checkout, refund_rows};

/// The console's routes of the shop.
pub(crate) fn routes(runtime: &Runtime) -> Router {
    Router::new().route("/checkouts/{id}", get(page)).layer(axum::Extension(runtime.clone()))
}

/// On a checkout's page, its checkout view; on a refund's, its checkout's.
pub(crate) fn links(summary: &WorkflowSummary) -> Vec<Link> {
    let checkout = match summary.workflow_type.as_str() {
        CHECKOUT => Some(summary.workflow_id.as_str()),
        REFUND => summary.labels.get("checkout").map(String::as_str),
        _ => None,
    };
    checkout
        .map(|id| Link { label: "Checkout view".into(), href: format!("/checkouts/{}", format::encode(id)) })
        .into_iter()
        .collect()
}

/// Cents as money: `1234` → `12.34`.
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

fn cents(value: &Value) -> i64 {
    value.as_i64().or_else(|| value.as_u64().and_then(|v| i64::try_from(v).ok())).unwrap_or(0)
}

/// When the forward (or undo) action of `step` completed, if it did.
fn completed_at(history: &[HistoryEvent], step: &str, compensation: bool) -> Option<i64> {
    let mut tasks = Vec::new();
    for event in history {
        match &event.attributes {
            Some(Attributes::ActivityScheduled(s)) if s.step == step && s.compensation == compensation => {
                tasks.push(s.task_id.clone());
            }
            Some(Attributes::ActivityCompleted(c)) if tasks.contains(&c.task_id) => return Some(event.time_ms),
            Some(Attributes::ActivityResolved(r))
                if r.step == step && r.compensation == compensation && r.outcome == "succeeded" =>
            {
                return Some(event.time_ms);
            }
            _ => {}
        }
    }
    None
}

async fn page(
    axum::Extension(runtime): axum::Extension<Runtime>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let (view, summary, history) = read_checkout(&runtime, &id, &viewer.principal).await?;
    let refunds = refund_rows(&runtime, &id).await?;
    let refunded_cents: i64 = refunds.iter().filter(|r| r.refunded).map(|r| r.amount_cents).sum();
    let mut events = runtime.domain_events_of(&id).await?;
    for refund in &refunds {
        events.extend(runtime.domain_events_of(&refund.summary.workflow_id).await?);
    }
    events.sort_by_key(|e| (e.time_ms, e.workflow_seq));
    let status = view.status(refunded_cents);
    let price = view.steps.get("price").cloned().unwrap_or(Value::Null);
    let body = html! {
        dl class="summary" {
            dt { "Checkout status" }
            dd { strong data-testid="checkout-status" { (status.as_str_name().trim_start_matches("CHECKOUT_STATUS_")) } }
            dt { "Saga" }
            dd {
                a href=(format::workflow_url(&id)) { "workflow " span class="mono" { (id) } }
                " " span class={ "badge " (format::status_class(summary.status)) } { (format::status(summary.status)) }
            }
            dt { "Customer" }
            dd class="mono" { (view.input["customer_id"].as_str().unwrap_or_default()) }
            dt { "Started" }
            dd { (format::timestamp(summary.started_ms)) }
            @if !summary.stuck_reason.is_empty() {
                dt { "Stuck" }
                dd class="flag" { (summary.stuck_reason) ": " (summary.stuck_message) }
            }
        }
        (lines(&price))
        (payment(&view, &history, &refunds))
        (reservation(&view, &history))
        (shipment(&view))
        (refund_table(&refunds))
        section aria-labelledby="events-h" {
            h2 id="events-h" { "Domain events" }
            @if events.is_empty() { p class="muted" { "None yet." } }
            @else {
                div class="scroll" {
                    table class="events" {
                        thead { tr { th scope="col" { "Time" } th scope="col" { "Event" } th scope="col" { "Workflow" } th scope="col" { "Payload" } } }
                        tbody {
                            @for event in &events {
                                tr data-event=(event.event_type) {
                                    td class="when" { (format::timestamp(event.time_ms)) }
                                    td { (event.event_type) }
                                    td class="mono" { a href=(format::workflow_url(&event.workflow_id)) { (event.workflow_id) } " #" (event.workflow_seq) }
                                    td { details { summary { "JSON" } pre { (format::pretty_json(&event.payload)) } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(console::page(&viewer, Page::Other, &format!("Checkout {id}"), body))
}

fn lines(price: &Value) -> Markup {
    let lines = price["lines"].as_array().cloned().unwrap_or_default();
    html! {
        section aria-labelledby="lines-h" {
            h2 id="lines-h" { "Lines" }
            @if price.is_null() { p class="muted" { "Not priced yet." } }
            @else {
                div class="scroll" {
                    table class="lines" {
                        thead { tr {
                            th scope="col" { "SKU" } th scope="col" { "Item" } th scope="col" { "Quantity" }
                            th scope="col" { "Unit price" } th scope="col" { "Line total" }
                        } }
                        tbody {
                            @for line in &lines {
                                tr {
                                    td class="mono" { (line["sku"].as_str().unwrap_or_default()) }
                                    td { (line["name"].as_str().unwrap_or_default()) }
                                    td class="num" { (line["quantity"].as_u64().unwrap_or(0)) }
                                    td class="num" { (money(cents(&line["unit_price_cents"]))) }
                                    td class="num" { (money(cents(&line["line_total_cents"]))) }
                                }
                            }
                        }
                        tfoot {
                            tr { th scope="row" colspan="4" { "Subtotal" } td class="num" { (money(cents(&price["subtotal_cents"]))) } }
                            tr {
                                th scope="row" colspan="4" {
                                    "Discount"
                                    @if let Some(code) = price["coupon"]["code"].as_str() { " (" span class="mono" { (code) } ")" }
                                }
                                td class="num" { "-" (money(cents(&price["discount_cents"]))) }
                            }
                            tr { th scope="row" colspan="4" { "Total" } td class="num" data-testid="total" { strong { (money(cents(&price["total_cents"]))) } } }
                        }
                    }
                }
            }
        }
    }
}

fn payment(view: &crate::CheckoutView, history: &[HistoryEvent], refunds: &[RefundRow]) -> Markup {
    let capture = view.steps.get("capture");
    let captured_at = completed_at(history, "capture", false);
    // (time, entry, amount), then each with the balance after it.
    let mut entries: Vec<(i64, String, i64)> = Vec::new();
    if let (Some(capture), Some(at)) = (capture, captured_at) {
        entries.push((at, "capture".into(), cents(&capture["captured_cents"])));
    }
    for refund in refunds.iter().filter(|r| r.refunded) {
        let id = refund.view.input["refund_id"].as_str().unwrap_or_default();
        entries.push((refund.refunded_ms, format!("refund {id}"), -refund.amount_cents));
    }
    entries.sort_by_key(|(at, _, _)| *at);
    let mut balance = 0;
    let ledger: Vec<(i64, String, i64, i64)> = entries
        .into_iter()
        .map(|(at, entry, amount)| {
            balance += amount;
            (at, entry, amount, balance)
        })
        .collect();
    html! {
        section aria-labelledby="payment-h" {
            h2 id="payment-h" { "Payment and ledger" }
            dl class="summary" {
                dt { "Payment intent" }
                dd class="mono" { (view.id_once_attempted("capture", "payment_intent_id")) }
                dt { "Method" }
                dd { (view.input["payment_method"].as_str().unwrap_or("card")) }
                dt { "Capture" }
                dd {
                    @if let Some(capture) = capture {
                        (money(cents(&capture["captured_cents"]))) " " (capture["status"].as_str().unwrap_or_default())
                    } @else if view.capture_in_doubt {
                        span class="flag" { "in doubt: an attempt may have taken the money" }
                    } @else if view.capture_attempted {
                        "not captured"
                    } @else {
                        span class="muted" { "not attempted" }
                    }
                }
            }
            p class="muted" { "The ledger as the histories record it (the capture, then each refund's completed refund step)." }
            div class="scroll" {
                table class="ledger" {
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Entry" } th scope="col" { "Amount" } th scope="col" { "Balance" } } }
                    tbody {
                        @for (at, entry, amount, balance) in &ledger {
                            tr {
                                td class="when" { (format::timestamp(*at)) }
                                td { (entry) }
                                td class="num" { (money(*amount)) }
                                td class="num" { (money(*balance)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn reservation(view: &crate::CheckoutView, history: &[HistoryEvent]) -> Markup {
    let reserved = view.steps.get("reserve");
    let state = if completed_at(history, "reserve", true).is_some() {
        "released (compensated)"
    } else if view.steps.contains_key("commit") {
        "committed: the stock is sold"
    } else if reserved.is_some() {
        "held"
    } else {
        "none"
    };
    html! {
        section aria-labelledby="reservation-h" {
            h2 id="reservation-h" { "Reservation" }
            dl class="summary" {
                dt { "Reservation" }
                dd class="mono" { (view.id_once_attempted("reserve", "reservation_id")) }
                dt { "State" }
                dd data-testid="reservation" { (state) }
                @if let (Some(expires), "held") = (reserved.and_then(|r| r["expires_at_ms"].as_i64()), state) {
                    dt { "Held until" }
                    dd { (format::timestamp(expires)) }
                }
            }
        }
    }
}

fn shipment(view: &crate::CheckoutView) -> Markup {
    let ship = view.steps.get("ship");
    html! {
        section aria-labelledby="shipment-h" {
            h2 id="shipment-h" { "Shipment" }
            dl class="summary" {
                dt { "Order" }
                dd class="mono" { (view.order_id()) }
                dt { "Status" }
                dd { (view.shipment_status()) }
                @if let Some(ship) = ship {
                    dt { "Shipment" }
                    dd class="mono" { (ship["shipment_id"].as_str().unwrap_or_default()) }
                    dt { "Carrier" }
                    dd { (ship["carrier"].as_str().unwrap_or_default()) " " span class="mono" { (ship["tracking_number"].as_str().unwrap_or_default()) } }
                }
            }
        }
    }
}

fn refund_table(refunds: &[RefundRow]) -> Markup {
    html! {
        section aria-labelledby="refunds-h" {
            h2 id="refunds-h" { "Refunds" }
            @if refunds.is_empty() { p class="muted" { "None." } }
            @else {
                div class="scroll" {
                    table class="refunds" {
                        thead { tr { th scope="col" { "Refund" } th scope="col" { "Amount" } th scope="col" { "Saga" } th scope="col" { "Started" } } }
                        tbody {
                            @for refund in refunds {
                                tr {
                                    td class="mono" { (refund.view.input["refund_id"].as_str().unwrap_or_default()) }
                                    td class="num" { (money(refund.amount_cents)) }
                                    td {
                                        a class="mono" href=(format::workflow_url(&refund.summary.workflow_id)) { (refund.summary.workflow_id) }
                                        " " span class={ "badge " (format::status_class(refund.summary.status)) } { (format::status(refund.summary.status)) }
                                    }
                                    td class="when" { (format::timestamp(refund.summary.started_ms)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_reads_as_money() {
        assert_eq!(money(4588), "45.88");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(-1000), "-10.00");
    }

    #[test]
    fn checkouts_and_refunds_link_to_the_checkout_view() {
        let checkout =
            WorkflowSummary { workflow_id: "chk-1".into(), workflow_type: CHECKOUT.into(), ..Default::default() };
        assert_eq!(links(&checkout)[0].href, "/checkouts/chk-1");
        let refund = WorkflowSummary {
            workflow_id: "rfd-1-x".into(),
            workflow_type: REFUND.into(),
            labels: [("checkout".to_owned(), "chk-1".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(links(&refund)[0].href, "/checkouts/chk-1");
        assert!(links(&WorkflowSummary { workflow_type: "quick".into(), ..Default::default() }).is_empty());
    }
}
