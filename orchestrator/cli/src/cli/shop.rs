//! `sagaflow shop …`: reads and steers the reference shop through the admin
//! API of a worker process (`--admin-listen`) or of `sagaflow dev`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Output;

#[derive(Debug, Args)]
pub struct ShopArgs {
    /// The shop admin API of a worker (its `--admin-listen`) or of `sagaflow dev`; also after the subcommand.
    #[arg(long, global = true, env = "SAGAFLOW_SHOP_ADMIN", default_value = "http://127.0.0.1:9091")]
    pub admin_url: String,
    #[command(subcommand)]
    pub command: ShopCommand,
}

#[derive(Debug, Subcommand)]
pub enum ShopCommand {
    /// Stock per SKU: available, reserved, sold, initial, restocked.
    Stock,
    /// Add stock to a SKU.
    Restock {
        /// The SKU to restock, such as sku-mug.
        sku: String,
        /// How many units to add.
        quantity: u64,
    },
    /// Payment intents with what was captured and refunded; `--ledger` for every entry.
    Payments {
        /// Every ledger entry (captures and refunds, in order) instead of one row per intent.
        #[arg(long)]
        ledger: bool,
    },
    /// Orders, or one order.
    Orders {
        /// Only this order, with its lines and refunds.
        order_id: Option<String>,
    },
    /// Shipments.
    Shipments,
    /// Coupon rules (latest versions), or every version of one code.
    Coupons {
        /// Every version of this coupon code.
        code: Option<String>,
    },
    /// Add a new version of a coupon rule.
    SetCoupon {
        /// The coupon code, such as WELCOME10.
        code: String,
        /// A percentage off the subtotal.
        #[arg(long, conflicts_with = "amount_off_cents")]
        percent_off: Option<u32>,
        /// A fixed amount off, in cents.
        #[arg(long)]
        amount_off_cents: Option<i64>,
        /// The smallest subtotal, in cents, the coupon applies to.
        #[arg(long)]
        min_subtotal_cents: Option<i64>,
    },
    /// The active fault switches.
    Faults,
    /// Set a fault switch: SERVICE.OPERATION=KIND[:COUNT].
    SetFault {
        /// SERVICE.OPERATION=KIND[:COUNT], such as payments.capture=error:2; KIND is error, fatal,
        /// hang, hang-after-effect or crash-after-effect; the service must be one this process hosts.
        spec: String,
    },
    /// Clear fault switches (all, or one target's).
    ClearFaults {
        /// Only the switches of this SERVICE.OPERATION.
        #[arg(long)]
        target: Option<String>,
    },
    /// Notifications sent, for one customer or all.
    Notifications {
        /// Only this customer's.
        #[arg(long)]
        customer: Option<String>,
    },
    /// Check the shop's invariants: the `check-invariants` job, run now on the server (--server),
    /// so that both give the same answer. Stock conserved, captured once, refunds within
    /// captures, every capture with an order or a refund, no CANCELLED checkout that kept
    /// money, no finished checkout that holds stock.
    Invariants {
        /// A finding younger than this (a capture on its way to its order) is not yet a violation.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
}

/// `shop invariants`: the `check-invariants` job, on the server.
async fn invariants(server: &str, grace: std::time::Duration, output: Output) -> anyhow::Result<()> {
    let grace_ms = Some(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
    let input = sagaflow_server::jobs::JobInput { grace_ms, ..Default::default() };
    let name = sagaflow_server::workflows::jobs::CHECK_INVARIANTS;
    let report = super::jobs::run_job(server, name, &input, std::time::Duration::from_secs(120)).await?;
    super::jobs::print_report(&report, output)
}

pub async fn run(args: ShopArgs, server: &str, output: Output) -> anyhow::Result<()> {
    let (method, path, body) = match &args.command {
        ShopCommand::Invariants { grace } => return invariants(server, *grace, output).await,
        ShopCommand::Stock => ("GET", "/stock".to_owned(), None),
        ShopCommand::Restock { sku, quantity } => {
            ("POST", format!("/stock/{sku}/restock"), Some(json!({ "quantity": quantity })))
        }
        ShopCommand::Payments { ledger: true } => ("GET", "/payments/ledger".to_owned(), None),
        ShopCommand::Payments { ledger: false } => ("GET", "/payments".to_owned(), None),
        ShopCommand::Orders { order_id: Some(id) } => ("GET", format!("/orders/{id}"), None),
        ShopCommand::Orders { order_id: None } => ("GET", "/orders".to_owned(), None),
        ShopCommand::Shipments => ("GET", "/shipments".to_owned(), None),
        ShopCommand::Coupons { code: Some(code) } => ("GET", format!("/coupons/{code}"), None),
        ShopCommand::Coupons { code: None } => ("GET", "/coupons".to_owned(), None),
        ShopCommand::SetCoupon { code, percent_off, amount_off_cents, min_subtotal_cents } => {
            if percent_off.is_none() && amount_off_cents.is_none() {
                bail!("give --percent-off or --amount-off-cents");
            }
            let rule = json!({
                "percent_off": percent_off, "amount_off_cents": amount_off_cents, "min_subtotal_cents": min_subtotal_cents,
            });
            ("PUT", format!("/coupons/{code}"), Some(rule))
        }
        ShopCommand::Faults => ("GET", "/faults".to_owned(), None),
        ShopCommand::SetFault { spec } => ("POST", "/faults".to_owned(), Some(json!({ "spec": spec }))),
        ShopCommand::ClearFaults { target: Some(target) } => ("DELETE", format!("/faults?target={target}"), None),
        ShopCommand::ClearFaults { target: None } => ("DELETE", "/faults".to_owned(), None),
        ShopCommand::Notifications { customer: Some(c) } => ("GET", format!("/notifications?customer={c}"), None),
        ShopCommand::Notifications { customer: None } => ("GET", "/notifications".to_owned(), None),
    };
    let answer = request(&args.admin_url, method, &path, body.as_ref()).await?;
    match output {
        Output::Json => outln!("{answer}"),
        Output::Text => out!("{}", render(&answer)),
    }
    Ok(())
}

/// One HTTP/1.1 exchange with the admin API: JSON in, JSON out.
pub(super) async fn request(base: &str, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("cannot reach the shop admin API at {base}"))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.context("the shop admin API closed the connection")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP answer")?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status")?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    if status >= 400 {
        bail!("{}", value["error"].as_str().map_or_else(|| format!("HTTP {status}"), str::to_owned));
    }
    Ok(value)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

/// Columns that lead a table, in this order: what a row is about first
/// (SKU, code, ids), then its figures and state. Others follow alphabetically,
/// and times come last.
const LEADING: &[&str] = &[
    "sku",
    "code",
    "version",
    "seq",
    "notification_id",
    "shipment_id",
    "order_id",
    "payment_intent_id",
    "checkout_id",
    "customer_id",
    "kind",
    "status",
    "available",
    "reserved",
    "sold",
    "initial",
    "restocked",
    "percent_off",
    "amount_off_cents",
    "min_subtotal_cents",
    "amount_cents",
    "captured_cents",
    "refunded_cents",
    "total_cents",
    "text",
];

/// Columns a person does not need in a table (`--output json` keeps them):
/// the raw message a notification was sent with, its idempotency key.
const HIDDEN: &[&str] = &["message", "key"];

fn is_time(column: &str) -> bool {
    column.ends_with("_at_ms")
}

/// Every field of every row (a row without one shows it empty), in the order above.
fn columns(rows: &[Value]) -> Vec<String> {
    let mut columns: Vec<String> = Vec::new();
    for row in rows {
        for key in row.as_object().into_iter().flat_map(|o| o.keys()) {
            if !columns.contains(key) && !HIDDEN.contains(&key.as_str()) {
                columns.push(key.clone());
            }
        }
    }
    let rank = |c: &str| match LEADING.iter().position(|l| *l == c) {
        Some(i) => (0, i),
        None if is_time(c) => (2, 0),
        None => (1, 0),
    };
    columns.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    columns
}

fn header(column: &str) -> String {
    column.strip_suffix("_ms").filter(|_| is_time(column)).unwrap_or(column).to_uppercase()
}

fn cell(column: &str, value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Number(ms) if is_time(column) => ms.as_i64().map_or_else(|| ms.to_string(), super::render::timestamp),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An array of objects as an aligned table; an object as `key  value` lines.
fn render(value: &Value) -> String {
    match value {
        Value::Array(rows) if rows.iter().all(Value::is_object) && !rows.is_empty() => {
            let columns = columns(rows);
            let cells: Vec<Vec<String>> =
                rows.iter().map(|row| columns.iter().map(|c| cell(c, &row[c.as_str()])).collect()).collect();
            let headers: Vec<String> = columns.iter().map(|c| header(c)).collect();
            let widths: Vec<usize> = headers
                .iter()
                .enumerate()
                .map(|(i, h)| cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).max(h.len()))
                .collect();
            let line = |values: &[String]| {
                let padded: Vec<String> =
                    values.iter().enumerate().map(|(i, v)| format!("{v:<w$}", w = widths[i])).collect();
                format!("{}\n", padded.join("  ").trim_end())
            };
            let mut out = line(&headers);
            for row in &cells {
                out.push_str(&line(row));
            }
            out
        }
        Value::Array(items) if items.is_empty() => "(none)\n".into(),
        Value::Array(items) => items.iter().map(|i| format!("{}\n", cell("", i))).collect(),
        Value::Object(map) => map.iter().map(|(k, v)| format!("{:<18}{}\n", header(k), cell(k, v))).collect(),
        other => format!("{}\n", cell("", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_lead_with_what_a_row_is_about_and_show_every_field() {
        let rows = serde_json::json!([
            {"code": "FLAT5", "amount_off_cents": 500, "created_at_ms": 0, "version": 1},
            {"code": "WELCOME10", "percent_off": 10, "created_at_ms": 1_796_204_023_854_i64, "version": 1},
        ]);
        let table = render(&rows);
        let lines: Vec<&str> = table.lines().collect();
        let headers: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(headers, ["CODE", "VERSION", "PERCENT_OFF", "AMOUNT_OFF_CENTS", "CREATED_AT"]);
        assert!(lines[2].starts_with("WELCOME10") && lines[2].contains(" 10 "), "{table}");
        assert!(lines[2].ends_with("2026-12-02T09:33:43.854Z"), "{table}");
    }
}
