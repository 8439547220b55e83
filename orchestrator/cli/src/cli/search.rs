//! `sagaflow search orders`: queries the search consumer's read model.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Output;
use super::render::timestamp;

#[derive(Debug, Subcommand)]
pub enum SearchCommand {
    /// Orders as the search read model sees them (eventually consistent with the orchestrator).
    Orders {
        /// Only this customer's orders.
        #[arg(long)]
        customer: Option<String>,
        /// A checkout status (PAID, SHIPPED, …) or, for other workflows, their last event type.
        #[arg(long)]
        status: Option<String>,
        /// At most this many rows, most recently updated first.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The search consumer's HTTP address.
        #[arg(long, env = "SAGAFLOW_SEARCH_URL", default_value = "http://127.0.0.1:9191")]
        search_url: String,
    },
}

/// The whole exchange, connect to last byte, is bounded.
const DEADLINE: Duration = Duration::from_secs(10);

pub async fn run(command: SearchCommand, output: Output) -> anyhow::Result<()> {
    let SearchCommand::Orders { customer, status, limit, search_url } = command;
    let mut query = vec![format!("limit={limit}")];
    if let Some(customer) = customer {
        query.push(format!("customer={}", encode(&customer)));
    }
    if let Some(status) = status {
        query.push(format!("status={}", encode(&status)));
    }
    let body = get(&search_url, &format!("/orders?{}", query.join("&"))).await?;
    let orders = body.get("orders").and_then(Value::as_array).context("the search service answered without orders")?;
    match output {
        Output::Json => outln!("{}", Value::Array(orders.clone())),
        Output::Text => out!("{}", table(orders)),
    }
    Ok(())
}

fn table(orders: &[Value]) -> String {
    let text = |row: &Value, field: &str| row.get(field).and_then(Value::as_str).unwrap_or("-").to_owned();
    let mut out = format!(
        "{:<38} {:<16} {:<20} {:>10} {:<24} {}\n",
        "CHECKOUT", "CUSTOMER", "STATUS", "TOTAL", "ORDER", "UPDATED"
    );
    for row in orders {
        let total = row
            .get("total_cents")
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_owned(), |c| format!("{}.{:02}", c / 100, c % 100));
        let updated = timestamp(row.get("updated_ms").and_then(Value::as_i64).unwrap_or(0));
        out.push_str(&format!(
            "{:<38} {:<16} {:<20} {:>10} {:<24} {}\n",
            text(row, "checkout_id"),
            text(row, "customer"),
            text(row, "status"),
            total,
            text(row, "order_id"),
            updated
        ));
    }
    if orders.is_empty() {
        out.push_str("(no orders)\n");
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One `GET` over HTTP/1.0 (the server closes the connection and never
/// chunks), returning the JSON body. A two-route local API does not need an
/// HTTP client crate.
async fn get(base: &str, path: &str) -> anyhow::Result<Value> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    anyhow::ensure!(!base.starts_with("https://"), "the search service speaks plain HTTP: {base}");
    let exchange = async {
        let mut stream =
            TcpStream::connect(host).await.with_context(|| format!("cannot reach the search service at {base}"))?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(DEADLINE, exchange)
        .await
        .with_context(|| format!("the search service at {base} did not answer within {DEADLINE:?}"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("the search service sent no HTTP response")?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    let json: Value =
        serde_json::from_str(body).with_context(|| format!("the search service sent no JSON (HTTP {status})"))?;
    if status != "200" {
        let error = json.get("error").and_then(Value::as_str).unwrap_or("unknown error");
        anyhow::bail!("the search service answered HTTP {status}: {error}");
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("ann lee/x&y"), "ann%20lee%2Fx%26y");
        assert_eq!(encode("PAID"), "PAID");
    }

    #[test]
    fn the_table_shows_missing_fields_as_dashes() {
        let rows = [serde_json::json!({"checkout_id": "q-1", "status": "QuickCompleted", "updated_ms": 0})];
        let table = table(&rows);
        assert!(table.lines().nth(1).is_some_and(|l| l.starts_with("q-1") && l.contains("QuickCompleted")));
        assert!(super::table(&[]).contains("(no orders)"));
    }
}
