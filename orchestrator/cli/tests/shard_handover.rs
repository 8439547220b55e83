//! A shard changes hands between two running nodes on one PostgreSQL: the
//! node that gives it up forgets its tasks and timers and refuses its
//! workflows; the node that takes it recovers that shard alone, while it
//! keeps serving its own, and drives its workflows to the end. Every
//! activity runs once. (ADR 0030: the runtime's half of spreading shards.)
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{CancelWorkflowRequest, StartWorkflowRequest};
use sagaflow_server::store::{Fence, Store, shard_of};
use sagaflow_server::workflows::{SagaDefinition, Step};
use sagaflow_server::{Options, Registry, Server, Storage};
use sagaflow_store_postgres::PostgresStore;
use sagaflow_store_postgres::testing::TestDb;
use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use serde_json::{Value, json};
use tonic::transport::Channel;

use common::nats::wait_until;

const SHARDS: u32 = 4;
const TTL_MS: i64 = 60_000;
const ACTIVITY: &str = "handover.reserve";

/// A nap (a durable timer), then one activity.
fn definition() -> SagaDefinition {
    SagaDefinition::builder("handover", 1)
        .step(Step::sleep("nap", Duration::from_millis(1_500)))
        .step(Step::activity("reserve", ACTIVITY))
        .build()
        .unwrap()
}

/// `n` workflow ids of `shard`.
fn ids_in(shard: u32, prefix: &str, n: usize) -> Vec<String> {
    (0..).map(|i| format!("{prefix}-{i}")).filter(|id| shard_of(id, SHARDS) == shard).take(n).collect()
}

/// A node on the shared database holding `shards`; the lease key's
/// directory is shared, as the cluster's key is (a worker's lease token
/// must be good on either node).
async fn node(url: &str, owner: &str, shards: &[u32], key_dir: &std::path::Path) -> (Server, Arc<PostgresStore>) {
    let store = Arc::new(PostgresStore::connect_to_cluster(url, Some(SHARDS)).await.unwrap());
    let leases = store.acquire_shards(shards, owner, TTL_MS).await.unwrap();
    assert!(leases.iter().all(|l| l.owner == owner), "{owner} takes {shards:?}: {leases:?}");
    store.fence(&leases.iter().map(|l| Fence { shard: l.shard, epoch: l.epoch }).collect::<Vec<_>>());
    let mut registry = Registry::new();
    registry.register(definition()).unwrap();
    let options = Options {
        storage: Storage::Sled(key_dir.to_owned()),
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: None,
        ..Options::default()
    };
    let dyn_store: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
    let server = Server::builder().options(options).store(dyn_store).definitions(registry).start().await.unwrap();
    (server, store)
}

/// A worker that counts each workflow's runs of the activity.
fn worker(url: &str, name: &str, runs: &Arc<Mutex<HashMap<String, usize>>>) -> tokio::task::JoinHandle<()> {
    let runs = Arc::clone(runs);
    let worker = Worker::builder(url)
        .worker_id(name)
        .activity(ACTIVITY, move |ctx: ActivityContext, _input: Value| {
            *runs.lock().unwrap().entry(ctx.workflow_id().to_owned()).or_default() += 1;
            async { Ok::<_, ActivityError>(json!({})) }
        })
        .build()
        .unwrap();
    tokio::spawn(async move { worker.run().await.unwrap() })
}

async fn start(
    client: &mut WorkflowServiceClient<Channel>,
    id: Option<&str>,
    request: &str,
) -> Result<String, tonic::Status> {
    let request = StartWorkflowRequest {
        workflow_type: "handover".into(),
        request_id: request.into(),
        input: "{}".into(),
        workflow_id: id.unwrap_or_default().into(),
        ..Default::default()
    };
    client.start_workflow(request).await.map(|r| r.into_inner().workflow_id)
}

fn backlog(server: &Server) -> usize {
    server.runtime().dispatch().queue_stats().iter().filter(|q| q.queue == ACTIVITY).map(|q| q.backlog).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_changes_hands_between_running_nodes() {
    let db = TestDb::create().await;
    let key_dir = tempfile::tempdir().unwrap();
    let (a, store_a) = node(&db.url, "node-a", &[0, 1], key_dir.path()).await;
    let (b, store_b) = node(&db.url, "node-b", &[2, 3], key_dir.path()).await;
    assert_eq!((a.runtime().served_shards(), b.runtime().served_shards()), (vec![0, 1], vec![2, 3]));
    let mut client_a = WorkflowServiceClient::connect(a.url()).await.unwrap();
    let mut client_b = WorkflowServiceClient::connect(b.url()).await.unwrap();
    let runs = Arc::new(Mutex::new(HashMap::new()));

    // A start without an id gets one in a shard of the node it reached.
    let mut free = Vec::new();
    for i in 0..8 {
        let id = start(&mut client_a, None, &format!("free-{i}")).await.unwrap();
        assert!(shard_of(&id, SHARDS) < 2, "{id} is in shard {}", shard_of(&id, SHARDS));
        free.push(id);
    }
    let (free_zero, free_one): (Vec<String>, Vec<String>) = free.into_iter().partition(|id| shard_of(id, SHARDS) == 0);
    // A workflow of another node's shard is refused, retryably, and not started.
    let foreign = &ids_in(2, "foreign", 1)[0];
    let refused = start(&mut client_a, Some(foreign), "foreign").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("shard 2"), "{}", refused.message());
    assert_eq!(store_a.last_seq(foreign).await.unwrap(), 0);

    // Node A: three workflows in each of its shards, their tasks queued
    // (A has no worker yet); then two more of shard 1, still napping.
    let (zero, one) = (ids_in(0, "wf", 3), ids_in(1, "wf", 5));
    for id in zero.iter().chain(&one[..3]) {
        start(&mut client_a, Some(id), id).await.unwrap();
    }
    wait_until(Duration::from_secs(20), "the naps of A's workflows to end", || async { backlog(&a) == 6 + 8 }).await;
    for id in &one[3..] {
        start(&mut client_a, Some(id), id).await.unwrap();
    }
    // Node B drives its own shards meanwhile.
    let worker_b = worker(&b.url(), "worker-b", &runs);
    let theirs = ids_in(3, "b", 2);
    for id in &theirs {
        start(&mut client_b, Some(id), id).await.unwrap();
    }

    // A gives shard 1 up: it forgets its queued tasks at once and refuses
    // its workflows; then it stops writing it, and releases the lease.
    let fences_a = store_a.fences().unwrap();
    a.runtime().give_up_shards(&[1]).await;
    assert_eq!(a.runtime().served_shards(), [0]);
    assert_eq!(backlog(&a), 3 + free_zero.len(), "shard 1's queued tasks are gone from A, shard 0's stay");
    store_a.fence(&fences_a[..1]);
    store_a.release_shards(&fences_a[1..2]).await.unwrap();
    let refused = client_a.cancel_workflow(CancelWorkflowRequest {
        workflow_id: one[0].clone(),
        reason: "test".into(),
        ..Default::default()
    });
    let refused = refused.await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // B takes it: a new epoch, fenced, then recovered into the running node.
    let taken = store_b.acquire_shards(&[1], "node-b", TTL_MS).await.unwrap();
    assert_eq!((taken[0].owner.as_str(), taken[0].epoch), ("node-b", 2));
    let mut fences_b = store_b.fences().unwrap();
    fences_b.push(Fence { shard: 1, epoch: taken[0].epoch });
    store_b.fence(&fences_b);
    b.runtime().take_shards(&[1]).await.unwrap();
    assert_eq!(b.runtime().served_shards(), [1, 2, 3]);

    // B runs shard 1's queued tasks and the naps it re-armed, and its own.
    let (zero, one) = ([zero, free_zero].concat(), [one, free_one].concat());
    for id in one.iter().chain(&theirs) {
        let ended = common::await_end(&mut client_b, id).await;
        assert_eq!(common::status_of(&ended), "COMPLETED", "{id}");
    }
    // A, given a worker, finishes shard 0 and the starts without an id.
    let worker_a = worker(&a.url(), "worker-a", &runs);
    for id in &zero {
        let ended = common::await_end(&mut client_a, id).await;
        assert_eq!(common::status_of(&ended), "COMPLETED", "{id}");
    }
    for id in one.iter().chain(&zero).chain(&theirs) {
        common::assert_each_step_completed_once(id, &common::full_history(&mut client_b, id).await);
    }
    let runs = runs.lock().unwrap().clone();
    for id in one.iter().chain(&zero).chain(&theirs) {
        assert_eq!(runs.get(id), Some(&1), "{id} ran its activity {:?} times: {runs:?}", runs.get(id));
    }
    // Nothing of shard 1 came back to A.
    assert_eq!(backlog(&a), 0);
    worker_a.abort();
    worker_b.abort();
    a.stop().await;
    b.stop().await;
}
