//! `sagaflow consumer search|notifications`: one read model per process,
//! fed by its own durable JetStream consumer and served over a tiny HTTP
//! JSON API. Each has its own store, so one being down or broken touches
//! neither the orchestrator nor the other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::{Args, Subcommand};
use sagaflow_server::relay::{self, ConsumerOptions};
use sagaflow_shop_server::{OrderFilter, Projection, ReadModel};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Logging;

#[derive(Debug, Subcommand)]
pub enum ConsumerCommand {
    /// The search read model: orders by customer and status, on `GET /orders?customer=&status=`.
    Search(ConsumerArgs),
    /// The notifications feed: messages per customer, on `GET /feed?customer=`.
    Notifications(ConsumerArgs),
}

#[derive(Debug, Args)]
pub struct ConsumerArgs {
    /// The NATS server with JetStream.
    #[arg(long, env = "SAGAFLOW_NATS_URL", hide_env_values = true, default_value = "nats://127.0.0.1:4222", value_parser = sagaflow_server::relay::parse_url)]
    pub nats_url: String,
    /// Where this consumer's own store lives (in a sub-folder named after it).
    #[arg(long, default_value = "./sagaflow-consumers")]
    pub data_dir: PathBuf,
    /// HTTP listen address [default: 127.0.0.1:9191 for search, 127.0.0.1:9192 for notifications].
    /// It has no auth: a loopback address, unless --insecure.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Allow --listen beyond loopback, although the read model's HTTP has no auth.
    #[arg(long)]
    pub insecure: bool,
    /// Deliveries after which a failing event goes to the dead-letter subject.
    #[arg(long, default_value_t = 5)]
    pub max_deliveries: i64,
}

pub async fn run(command: ConsumerCommand, logging: &Logging) -> anyhow::Result<()> {
    let _telemetry = logging.init("sagaflow-consumer")?;
    let (projection, args, default_port) = match command {
        ConsumerCommand::Search(args) => (Projection::Search, args, 9191),
        ConsumerCommand::Notifications(args) => (Projection::Notifications, args, 9192),
    };
    anyhow::ensure!(args.max_deliveries >= 1, "--max-deliveries must be at least 1");
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let model = Arc::new(ReadModel::open(&args.data_dir, projection)?);
    let listen = args.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
    super::check_unauthenticated("read model's HTTP listener", listen, args.insecure)?;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().with_context(|| format!("cannot listen on {listen}"))?;
    sagaflow_server::http::prometheus();
    let app = routes(Arc::clone(&model)).merge(sagaflow_server::http::router());

    let (stop, stopped) = watch::channel(false);
    let options =
        ConsumerOptions { max_deliveries: args.max_deliveries, ..ConsumerOptions::new(args.nats_url.clone()) };
    let mut consumer = tokio::spawn(relay::run_consumer(options, Arc::clone(&model), stopped.clone()));
    let mut http_stopped = stopped;
    let http = tokio::spawn(async move {
        let shutdown = async move {
            let _ = http_stopped.wait_for(|s| *s).await;
        };
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await
    });
    let shutdown = super::shutdown_signal();
    println!(
        "sagaflow consumer {} listening on http://{bound} ({}; events from {}); data in {}",
        projection.name(),
        super::exposure(bound),
        args.nats_url,
        args.data_dir.display()
    );
    let outcome = tokio::select! {
        () = shutdown => None,
        finished = &mut consumer => Some(finished),
    };
    let _ = stop.send(true);
    let finished = match outcome {
        Some(finished) => finished,
        None => consumer.await,
    };
    http.await.context("the HTTP listener panicked")?.context("the HTTP listener failed")?;
    finished.context("the consumer panicked")??;
    Ok(())
}

fn routes(model: Arc<ReadModel>) -> Router {
    let stats = {
        let model = Arc::clone(&model);
        move || async move {
            respond(model.processed().map(|n| json!({"consumer": model.projection().name(), "processed": n})))
        }
    };
    let router = Router::new().route("/stats", get(stats));
    match model.projection() {
        Projection::Search => router.route(
            "/orders",
            get(move |uri: Uri| async move {
                let query = Query::parse(&uri);
                let filter = OrderFilter {
                    customer: query.get("customer"),
                    status: query.get("status"),
                    limit: query.get("limit").and_then(|l| l.parse().ok()),
                };
                respond(model.orders(&filter).map(|orders| json!({"orders": orders})))
            }),
        ),
        Projection::Notifications => router.route(
            "/feed",
            get(move |uri: Uri| async move {
                let query = Query::parse(&uri);
                let Some(customer) = query.get("customer").filter(|c| !c.is_empty()) else {
                    return json_response(StatusCode::BAD_REQUEST, &json!({"error": "customer is required"}));
                };
                let limit = query.get("limit").and_then(|l| l.parse().ok());
                respond(
                    model.feed(&customer, limit).map(|messages| json!({"customer": customer, "messages": messages})),
                )
            }),
        ),
    }
}

fn respond(result: relay::Result<Value>) -> Response {
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": e.to_string()})),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A URL query string, decoded (`+` and `%XX`). The HTTP API takes a few
/// plain parameters, which does not warrant axum's query feature.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(uri: &Uri) -> Self {
        let pairs = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(name), decode(value))
            })
            .collect();
        Self(pairs)
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        let uri: Uri = "/orders?customer=ann+lee%2Fx&status=PAID&bad=%zz&end=%4".parse().unwrap_or_default();
        let query = Query::parse(&uri);
        assert_eq!(query.get("customer").as_deref(), Some("ann lee/x"));
        assert_eq!(query.get("status").as_deref(), Some("PAID"));
        assert_eq!(query.get("bad").as_deref(), Some("%zz"));
        assert_eq!(query.get("end").as_deref(), Some("%4"));
        assert_eq!(query.get("missing"), None);
    }
}
