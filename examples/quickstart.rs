//! The reference shop in one program: an embedded orchestrator, the shop's
//! services as a worker, a handful of checkouts (one of them declined, so it
//! compensates) and their histories.
//!
//! Run it with `cargo run -p sagaflow-examples --example quickstart`.

use sagaflow_activities::{Faults, Shop, ShopOptions};
use sagaflow_proto::EventName;
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{CheckoutStatus, GetCheckoutRequest, Item, StartCheckoutRequest};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{AwaitWorkflowRequest, GetWorkflowHistoryRequest};
use sagaflow_server::{Options, Server, Storage};
use sagaflow_shop_server::CheckoutExtension;
use sagaflow_worker::Worker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let options = Options {
        storage: Storage::Sled(data.path().to_owned()),
        listen: "127.0.0.1:0".parse()?,
        http_listen: None,
        ..Options::default()
    };
    let server = Server::builder()
        .options(options)
        .definitions(sagaflow_shop_server::registry())
        .extension(CheckoutExtension)
        .start()
        .await?;
    let shop = Shop::open(data.path().join("shop"), ShopOptions::default(), Faults::default())?;
    let worker = shop.register(Worker::builder(server.url()).worker_id("quickstart-shop")).build()?;
    let worker_handle = worker.handle();
    let worker_task = tokio::spawn(worker.run());

    let mut checkouts = CheckoutServiceClient::connect(server.url()).await?;
    let mut workflows = WorkflowServiceClient::connect(server.url()).await?;
    let orders = [
        ("alice", vec![("sku-mug", 2), ("sku-tee", 1)], "card"),
        ("bob", vec![("sku-hoodie", 1)], "card"),
        // The demo gateway declines this card: the reservation is released.
        ("carol", vec![("sku-cap", 3)], "card_declined"),
    ];
    for (i, (customer, items, payment_method)) in orders.into_iter().enumerate() {
        let request = StartCheckoutRequest {
            client_request_id: format!("quickstart-{i}"),
            customer_id: customer.into(),
            items: items.into_iter().map(|(sku, quantity)| Item { sku: sku.into(), quantity }).collect(),
            payment_method: payment_method.into(),
            shipping_address: "1 Example Street".into(),
            ..Default::default()
        };
        let checkout_id = checkouts.start_checkout(request).await?.into_inner().checkout_id;
        workflows.await_workflow(AwaitWorkflowRequest { workflow_id: checkout_id.clone(), timeout_ms: 30_000 }).await?;
        let checkout =
            checkouts.get_checkout(GetCheckoutRequest { checkout_id: checkout_id.clone() }).await?.into_inner();
        let status = CheckoutStatus::try_from(checkout.status)?.as_str_name().trim_start_matches("CHECKOUT_STATUS_");
        println!("\n{customer}: {checkout_id} {status}, total {:.2}", checkout.total_cents as f64 / 100.0);
        let history = workflows
            .get_workflow_history(GetWorkflowHistoryRequest { workflow_id: checkout_id, ..Default::default() })
            .await?
            .into_inner();
        for event in history.events {
            let Some(attributes) = &event.attributes else { continue };
            let detail = match attributes {
                Attributes::ActivityScheduled(s) if s.compensation => format!("undo {} ({})", s.step, s.activity_type),
                Attributes::ActivityScheduled(s) => format!("{} ({})", s.step, s.activity_type),
                Attributes::ActivityFailed(f) => format!("{}: {}", f.error_type, f.message),
                _ => String::new(),
            };
            println!("  #{:<3} {:<20} {detail}", event.seq, attributes.event_name());
        }
    }

    worker_handle.shutdown();
    worker_task.await??;
    server.stop().await;
    Ok(())
}
