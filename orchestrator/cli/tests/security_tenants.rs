//! One client cannot touch another's effects (real server and worker
//! processes, auth on): the shop's sagas start only through their API, and a
//! client's request ids and workflow ids, with every id and idempotency key
//! derived from them, live in that client's own namespace.
#![allow(clippy::unwrap_used)]

mod common;

use common::secure::{self, BENCH_WORKER, CLIENT, OPERATOR, OTHER_CLIENT, WORKER, with_token};
use common::{ServerProcess, WorkerProcess, start_request};
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{CheckoutStatus, GetCheckoutRequest, StartCheckoutRequest};
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{AwaitWorkflowRequest, DeleteWorkflowRequest, GetWorkflowHistoryRequest};
use tonic::Code;
use tonic::transport::Channel;

async fn secured() -> (ServerProcess, Channel, tempfile::TempDir) {
    let (server, dir) = secure::start_server(&[]).await;
    let channel = Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    (server, channel, dir)
}

/// The checkout id the server derived before ids were scoped to a tenant, and the one a
/// tenant named `tenant` gets: an attacker can compute both.
fn derived_checkout_ids(tenant: &str, request_id: &str) -> [String; 2] {
    let id = |name: String| format!("chk-{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).simple());
    [id(format!("sagaflow:checkout:{request_id}")), id(format!("sagaflow:checkout:{tenant}:{request_id}"))]
}

#[tokio::test]
async fn the_shops_sagas_start_only_through_the_checkout_api() {
    let (_server, channel, _dir) = secured().await;
    let mut workflows = WorkflowServiceClient::new(channel);
    // A checkout carrying someone else's reservation and payment intent, with a declined card.
    let forged = r#"{"client_request_id":"x","customer_id":"mallory","items":[{"sku":"sku-mug","quantity":1}],
        "payment_method":"card_declined","reservation_id":"res-victim","payment_intent_id":"pi-victim"}"#;
    for token in [CLIENT, OPERATOR] {
        let refused = workflows
            .start_workflow(with_token(start_request("checkout", "forged-1", forged), Some(token)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("CheckoutService"), "{refused:?}");
    }
    let refund = start_request("refund", "forged-2", r#"{"payment_intent_id":"pi-victim","amount_cents":1}"#);
    let refused = workflows.start_workflow(with_token(refund, Some(OPERATOR))).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}

#[tokio::test]
async fn a_clients_ids_never_meet_another_clients() {
    let (_server, channel, _dir) = secured().await;
    let mut workflows = WorkflowServiceClient::new(channel.clone());
    // The other client takes the request id first, with another input.
    let theirs = workflows
        .start_workflow(with_token(start_request("bench", "order-7", r#"{"x":1}"#), Some(OTHER_CLIENT)))
        .await
        .unwrap()
        .into_inner();
    let mine = workflows
        .start_workflow(with_token(start_request("bench", "order-7", "{}"), Some(CLIENT)))
        .await
        .unwrap()
        .into_inner();
    assert!(!mine.already_started, "the other client's start answered mine");
    assert_ne!(mine.workflow_id, theirs.workflow_id);
    // It squats the ids my next checkout would get, whichever way they are derived.
    for squatted in derived_checkout_ids("shop", "victim-1") {
        let mut squat = start_request("bench", &format!("squat-{squatted}"), "{}");
        squat.workflow_id = squatted.clone();
        let started =
            workflows.start_workflow(with_token(squat, Some(OTHER_CLIENT))).await.unwrap().into_inner().workflow_id;
        assert_eq!(started, format!("other-shop:{squatted}"), "a client's chosen id is in its namespace");
    }
    let request = StartCheckoutRequest {
        client_request_id: "victim-1".into(),
        customer_id: "alice".into(),
        items: vec![sagaflow_proto::checkout::v1::Item { sku: "sku-mug".into(), quantity: 1 }],
        ..Default::default()
    };
    let started = CheckoutServiceClient::new(channel)
        .start_checkout(with_token(request, Some(CLIENT)))
        .await
        .unwrap()
        .into_inner();
    assert!(!started.already_started);
    assert!(!started.checkout_id.contains(':'), "a derived id holds no tenant separator: {}", started.checkout_id);
}

#[tokio::test]
async fn another_client_cannot_take_my_checkouts_keys() {
    let (server, channel, dir) = secured().await;
    let shop = "catalog,coupons,inventory,payments,orders,shipping,notifications";
    let data = dir.path().join("shop");
    let _worker = WorkerProcess::start(
        &server.url,
        &["--services", shop, "--data-dir", data.to_str().unwrap(), "--token", WORKER],
    )
    .await;
    let mut checkouts = CheckoutServiceClient::new(channel.clone());
    let mut workflows = WorkflowServiceClient::new(channel);
    // The other client runs a checkout first under the request id I will use:
    // same reservation, payment intent and order keys, were they not scoped.
    let mut ids = Vec::new();
    for token in [OTHER_CLIENT, CLIENT] {
        let request = common::shop::checkout("next-order", "bob", &[("sku-mug", 1)]);
        let id = checkouts.start_checkout(with_token(request, Some(token))).await.unwrap().into_inner().checkout_id;
        let ended = workflows
            .await_workflow(with_token(
                AwaitWorkflowRequest { workflow_id: id.clone(), timeout_ms: 60_000 },
                Some(token),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(ended.terminal, "{ended:?}");
        let checkout = checkouts
            .get_checkout(with_token(GetCheckoutRequest { checkout_id: id.clone() }, Some(token)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(checkout.status(), CheckoutStatus::Shipped, "{checkout:?}");
        ids.push((id, checkout.order_id, checkout.payment_intent_id, checkout.reservation_id));
    }
    let (theirs, mine) = (&ids[0], &ids[1]);
    assert_ne!(theirs.0, mine.0, "one checkout each");
    assert_ne!(theirs.1, mine.1, "one order each");
    assert_ne!(theirs.2, mine.2, "one payment intent each");
    assert_ne!(theirs.3, mine.3, "one reservation each");
}

/// An archived history (`--archive-dir`) is read under the live history's
/// rule: a client reads the workflows it started, and another client's reads
/// as missing, in the same words as an id never archived.
#[tokio::test]
async fn a_client_reads_only_its_own_archived_workflows() {
    let archive = tempfile::tempdir().unwrap();
    let (server, _dir) = secure::start_server(&["--archive-dir", archive.path().to_str().unwrap()]).await;
    let channel = Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let _worker = WorkerProcess::start(&server.url, &["--services", "bench", "--token", BENCH_WORKER]).await;
    let mut workflows = WorkflowServiceClient::new(channel);
    let mine = workflows
        .start_workflow(with_token(start_request("bench", "archived-1", "{}"), Some(CLIENT)))
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let ended = workflows
        .await_workflow(with_token(
            AwaitWorkflowRequest { workflow_id: mine.clone(), timeout_ms: 60_000 },
            Some(CLIENT),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ended.terminal, "{ended:?}");
    let delete = DeleteWorkflowRequest { workflow_id: mine.clone() };
    assert_eq!(
        workflows.delete_workflow(with_token(delete.clone(), Some(CLIENT))).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    workflows.delete_workflow(with_token(delete, Some(OPERATOR))).await.unwrap();

    let archived =
        |id: &str| GetWorkflowHistoryRequest { workflow_id: id.into(), archived: true, ..Default::default() };
    for token in [CLIENT, OPERATOR] {
        let page = workflows.get_workflow_history(with_token(archived(&mine), Some(token))).await.unwrap().into_inner();
        assert!(page.terminal && !page.events.is_empty(), "{token}: {page:?}");
    }
    let theirs = workflows.get_workflow_history(with_token(archived(&mine), Some(OTHER_CLIENT))).await.unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    let unknown = format!("{}x", mine);
    let never = workflows.get_workflow_history(with_token(archived(&unknown), Some(OTHER_CLIENT))).await.unwrap_err();
    assert_eq!(theirs.message().replace(&mine, "ID"), never.message().replace(&unknown, "ID"));
    // A worker token has no business with histories, archived or not.
    let worker = workflows.get_workflow_history(with_token(archived(&mine), Some(WORKER))).await.unwrap_err();
    assert_eq!(worker.code(), Code::PermissionDenied);
}
