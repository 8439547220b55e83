//! Scenario 8: the search read model is down (`kill -9` of its consumer
//! process). Checkouts succeed meanwhile, and the read model catches up from
//! its durable JetStream consumer when it returns, each event once.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::nats::{ConsumerProcess, NatsServer, free_port, run_checkouts, wait_until};
use common::shop::Shop;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkouts_succeed_and_search_catches_up() {
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_on(free_port(), &nats_dir.path().join("nats")).await;
    let shop = Shop::start(&["--nats-url", &nats.url], &[]).await;
    let consumers = shop.dir.path().join("consumers");
    let search = ConsumerProcess::start("search", &nats.url, &consumers).await;

    let early = run_checkouts(&shop.server().url, "s8-early", 5).await;
    wait_until(Duration::from_secs(30), "the search model has the early checkouts", || async {
        search.orders("customer=c-down&status=SHIPPED").await.len() == early.len()
    })
    .await;

    search.kill9().await;
    let started = Instant::now();
    let late = run_checkouts(&shop.server().url, "s8-late", 15).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(60), "15 checkouts took {elapsed:?} with search down");

    let search = ConsumerProcess::start("search", &nats.url, &consumers).await;
    wait_until(Duration::from_secs(30), "the search model catches up", || async {
        search.orders("customer=c-down&status=SHIPPED").await.len() == early.len() + late.len()
    })
    .await;
    // Six domain events per checkout, each projected once across the outage.
    wait_until(Duration::from_secs(30), "every event is projected", || async { search.processed().await == 20 * 6 })
        .await;
    for row in search.orders("customer=c-down").await {
        assert_eq!(row["events"], 6, "{row}");
    }
    shop.assert_invariants_hold().await;
    nats.stop().await;
}
