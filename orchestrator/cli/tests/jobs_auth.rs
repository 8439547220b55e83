//! The jobs under `--auth-file`: the orchestrator's own jobs worker passes
//! the auth layer with the token it minted for itself (no token file entry
//! needed), the shop workers serve their job steps with their worker token,
//! and an operator runs every job.
#![allow(clippy::unwrap_used)]

mod common;

use common::secure::{OPERATOR, WORKER, write_auth_file};
use common::shop::{GROUPS, Shop, checkout};
use common::status_of;
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_runs_under_auth() {
    let auth_dir = tempfile::tempdir().unwrap();
    let auth_file = write_auth_file(auth_dir.path());
    let worker_token: &[&str] = &["--token", WORKER];
    let extra: Vec<(&str, &[&str])> = GROUPS.iter().map(|g| (*g, worker_token)).collect();
    let shop = Shop::start(&["--auth-file", auth_file.to_str().unwrap()], &extra).await;

    let channel = tonic::transport::Channel::from_shared(shop.server().url.clone()).unwrap().connect().await.unwrap();
    let mut checkouts = CheckoutServiceClient::with_interceptor(channel, |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", format!("Bearer {OPERATOR}").parse().unwrap());
        Ok(request)
    });
    let checkout_id =
        checkouts.start_checkout(checkout("auth-1", "mia", &[("sku-mug", 1)])).await.unwrap().into_inner().checkout_id;

    // Without a token the job is refused before it starts.
    let (_, ok) = shop.job_raw("check-invariants", &[]).await;
    assert!(!ok, "a job run without a token is refused");

    let token: &[&str] = &["--token", OPERATOR];
    let (stuck, ok) = shop.job("detect-stuck-sagas", token).await;
    assert!(ok, "the orchestrator's own jobs worker is let in: {stuck}");
    assert_eq!(stuck["stuck"], 0, "{stuck}");
    let (released, ok) = shop.job("release-expired-inventory", token).await;
    assert!(ok, "{released}");
    let mut workflows = shop.server().client().await;
    let end = workflows
        .await_workflow(common::secure::with_token(
            sagaflow_proto::v1::AwaitWorkflowRequest { workflow_id: checkout_id.clone(), timeout_ms: 30_000 },
            Some(OPERATOR),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(&end), "COMPLETED");
    let (reconciled, ok) = shop.job("reconcile-payments-vs-orders", &["--token", OPERATOR, "--grace", "0s"]).await;
    assert!(ok, "{reconciled}");
    let (checked, ok) = shop.job("check-invariants", &["--token", OPERATOR, "--grace", "0s"]).await;
    assert!(ok, "{checked}");
    assert_eq!(checked["steps"]["orders"]["checked_orders"], 1, "{checked}");
}
