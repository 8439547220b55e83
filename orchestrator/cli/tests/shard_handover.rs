//! A shard changes hands between two running nodes on one PostgreSQL: the
//! node that gives it up forgets its tasks and timers and stops serving its
//! workflows; the node that takes it recovers that shard alone, while it
//! keeps serving its own, and drives its workflows to the end. A call that
//! reaches the node that does not serve its workflow's shard goes to the
//! node that does; a worker connected to one node runs every node's tasks.
//! Every activity runs once. (ADR 0030: what spreading the shards needs of
//! the runtime, the API and dispatch.)
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{SignalWorkflowRequest, StartWorkflowRequest};
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
const RELEASE: &str = "handover.release";
/// Fails for good, every time.
const DOOMED: &str = "handover.doomed";

/// `handover`: a nap (a durable timer), then one activity; `gate`: a wait
/// for the signal `go`, then the activity.
fn definitions() -> Vec<SagaDefinition> {
    let napping = SagaDefinition::builder("handover", 1)
        .step(Step::sleep("nap", Duration::from_millis(1_500)))
        .step(Step::activity("reserve", ACTIVITY))
        .build();
    let gated = SagaDefinition::builder("gate", 1)
        .step(Step::await_signal("go", "go", Duration::ZERO))
        .step(Step::activity("reserve", ACTIVITY))
        .build();
    // A child saga and two parents: one whose last step succeeds (it
    // releases its held child), one whose last step fails for good (it
    // compensates, and has its child undo itself).
    let kid =
        SagaDefinition::builder("kid", 1).step(Step::activity("reserve", ACTIVITY).compensate_with(RELEASE)).build();
    let family = |name: &str, last: &str| {
        SagaDefinition::builder(name, 1)
            .step(Step::child("kid", "kid"))
            .step(Step::await_signal("go", "go", Duration::ZERO))
            .step(Step::activity("last", last))
            .build()
            .unwrap()
    };
    vec![napping.unwrap(), gated.unwrap(), kid.unwrap(), family("family-ok", ACTIVITY), family("family-doomed", DOOMED)]
}

/// `n` workflow ids of `shard`.
fn ids_in(shard: u32, prefix: &str, n: usize) -> Vec<String> {
    (0..).map(|i| format!("{prefix}-{i}")).filter(|id| shard_of(id, SHARDS) == shard).take(n).collect()
}

/// A node on the shared database holding `shards`, its leases naming the
/// address it serves at, as a serving node's do. The lease key's directory
/// is shared, as the cluster's key is: a worker's lease token must be good
/// on either node. Returns the name its leases are held under.
async fn node(
    url: &str,
    name: &str,
    shards: &[u32],
    key_dir: &std::path::Path,
) -> (Server, Arc<PostgresStore>, String) {
    let listen = format!("127.0.0.1:{}", common::nats::free_port());
    let owner = format!("{name}@{listen}");
    let store = Arc::new(PostgresStore::connect_to_cluster(url, Some(SHARDS), None).await.unwrap());
    let leases = store.acquire_shards(shards, &owner, TTL_MS).await.unwrap();
    assert!(leases.iter().all(|l| l.owner == owner), "{owner} takes {shards:?}: {leases:?}");
    store.fence(&leases.iter().map(|l| Fence { shard: l.shard, epoch: l.epoch }).collect::<Vec<_>>());
    let mut registry = Registry::new();
    for definition in definitions() {
        registry.register(definition).unwrap();
    }
    let options = Options {
        storage: Storage::Sled(key_dir.to_owned()),
        listen: listen.parse().unwrap(),
        http_listen: None,
        ..Options::default()
    };
    let shared: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
    let server = Server::builder().options(options).store(shared).definitions(registry).start().await.unwrap();
    (server, store, owner)
}

type Node = (Server, Arc<PostgresStore>, String);

/// Node A holding shards 0 and 1 and node B holding 2 and 3, on a database
/// of their own; the database and the key's directory live as long as the
/// first two values.
async fn two_nodes() -> (TestDb, tempfile::TempDir, Node, Node) {
    let db = TestDb::create().await;
    let key_dir = tempfile::tempdir().unwrap();
    let a = node(&db.url, "node-a", &[0, 1], key_dir.path()).await;
    let b = node(&db.url, "node-b", &[2, 3], key_dir.path()).await;
    (db, key_dir, a, b)
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
    workflow_type: &str,
    id: Option<&str>,
    request_id: &str,
) -> Result<String, tonic::Status> {
    let request = StartWorkflowRequest {
        workflow_type: workflow_type.into(),
        request_id: request_id.into(),
        input: "{}".into(),
        workflow_id: id.unwrap_or_default().into(),
        ..Default::default()
    };
    client.start_workflow(request).await.map(|r| r.into_inner().workflow_id)
}

fn go(workflow_id: &str) -> SignalWorkflowRequest {
    SignalWorkflowRequest { workflow_id: workflow_id.into(), name: "go".into(), ..Default::default() }
}

fn backlog(server: &Server) -> usize {
    server.runtime().dispatch().queue_stats().iter().filter(|q| q.queue == ACTIVITY).map(|q| q.backlog).sum()
}

async fn assert_completed(client: &mut WorkflowServiceClient<Channel>, ids: &[String]) {
    for id in ids {
        assert_eq!(common::status_of(&common::await_end(client, id).await), "COMPLETED", "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_changes_hands_between_running_nodes() {
    let (_db, _key_dir, (a, store_a, _), (b, store_b, owner_b)) = two_nodes().await;
    assert_eq!((a.runtime().served_shards(), b.runtime().served_shards()), (vec![0, 1], vec![2, 3]));
    let mut client_a = WorkflowServiceClient::connect(a.url()).await.unwrap();
    let mut client_b = WorkflowServiceClient::connect(b.url()).await.unwrap();
    let runs = Arc::new(Mutex::new(HashMap::new()));

    // A start without an id gets one in a shard of the node it reached.
    let mut free = Vec::new();
    for i in 0..8 {
        let id = start(&mut client_a, "handover", None, &format!("free-{i}")).await.unwrap();
        assert!(shard_of(&id, SHARDS) < 2, "{id} is in shard {}", shard_of(&id, SHARDS));
        free.push(id);
    }
    let (free_zero, free_one): (Vec<String>, Vec<String>) = free.into_iter().partition(|id| shard_of(id, SHARDS) == 0);
    // A start of a workflow of another node's shard goes to that node, once
    // A has read who serves it (B took its shards after A started).
    let foreign = ids_in(2, "foreign", 1);
    let started = |client: &WorkflowServiceClient<Channel>, workflow_type: &'static str, id: &str| {
        let (mut client, id) = (client.clone(), id.to_owned());
        async move {
            match start(&mut client, workflow_type, Some(&id), &id).await {
                Ok(started) => started == id,
                Err(status) if status.code() == tonic::Code::Unavailable => false,
                Err(status) => panic!("the start was refused: {status:?}"),
            }
        }
    };
    wait_until(Duration::from_secs(10), "A to forward shard 2's starts to B", || {
        started(&client_a, "handover", &foreign[0])
    })
    .await;

    // Node A: three workflows in each of its shards, their tasks queued
    // (A has no worker yet); then two more of shard 1, still napping, and
    // one of shard 1 that waits for a signal.
    let (zero, one) = (ids_in(0, "wf", 3), ids_in(1, "wf", 5));
    for id in zero.iter().chain(&one[..3]) {
        start(&mut client_a, "handover", Some(id), id).await.unwrap();
    }
    wait_until(Duration::from_secs(20), "the naps of A's workflows to end", || async { backlog(&a) == 6 + 8 }).await;
    for id in &one[3..] {
        start(&mut client_a, "handover", Some(id), id).await.unwrap();
    }
    let gate = ids_in(1, "gate", 1);
    start(&mut client_a, "gate", Some(&gate[0]), "gate").await.unwrap();
    // Node B has workflows of its own (no worker anywhere yet: one would
    // take A's tasks too, its session relayed).
    let theirs = [ids_in(3, "b", 2), foreign].concat();
    for id in &theirs[..2] {
        start(&mut client_b, "handover", Some(id), id).await.unwrap();
    }

    // A gives shard 1 up: it forgets its queued tasks at once and stops
    // serving its workflows; then it stops writing it, and releases the lease.
    let fences_a = store_a.fences().unwrap();
    a.runtime().give_up_shards(&[1]).await.unwrap();
    assert_eq!(a.runtime().served_shards(), [0]);
    assert_eq!(backlog(&a), 3 + free_zero.len(), "shard 1's queued tasks are gone from A, shard 0's stay");
    store_a.fence(&fences_a[..1]);
    store_a.release_shards(&fences_a[1..2]).await.unwrap();
    // No node serves shard 1 now: its calls are refused, retryably.
    let refused = client_a.signal_workflow(go(&gate[0])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("shard 1"), "{}", refused.message());

    // B takes it: a new epoch, fenced, then recovered into the running node.
    let taken = store_b.acquire_shards(&[1], &owner_b, TTL_MS).await.unwrap();
    assert_eq!((&taken[0].owner, taken[0].epoch), (&owner_b, 2));
    let mut fences_b = store_b.fences().unwrap();
    fences_b.push(Fence { shard: 1, epoch: taken[0].epoch });
    store_b.fence(&fences_b);
    b.runtime().take_shards(&[1]).await.unwrap();
    assert_eq!(b.runtime().served_shards(), [1, 2, 3]);
    // A sends shard 1's calls to B once it has read who serves it.
    wait_until(Duration::from_secs(10), "A to forward shard 1's calls to B", || {
        let (mut client_a, gate) = (client_a.clone(), gate[0].clone());
        async move {
            match client_a.signal_workflow(go(&gate)).await {
                Ok(_) => true,
                Err(status) if status.code() == tonic::Code::Unavailable => false,
                Err(status) => panic!("the signal was refused: {status:?}"),
            }
        }
    })
    .await;

    // B runs shard 1's queued tasks, the naps it re-armed, the signalled
    // workflow, and its own, given a worker.
    let worker_b = worker(&b.url(), "worker-b", &runs);
    let one = [one, free_one, gate].concat();
    assert_completed(&mut client_b, &[one.clone(), theirs.clone()].concat()).await;
    // Shard 0's workflows finish on A, the starts without an id among them
    // (B's worker takes them through its relayed session, or A's).
    let worker_a = worker(&a.url(), "worker-a", &runs);
    let zero = [zero, free_zero].concat();
    assert_completed(&mut client_a, &zero).await;
    let every = [one, zero, theirs].concat();
    let runs = runs.lock().unwrap().clone();
    for id in &every {
        common::assert_each_step_completed_once(id, &common::full_history(&mut client_b, id).await);
        assert_eq!(runs.get(id), Some(&1), "{id} ran its activity {:?} times: {runs:?}", runs.get(id));
    }
    // Nothing of shard 1 came back to A.
    assert_eq!(backlog(&a), 0);
    worker_a.abort();
    worker_b.abort();
    a.stop().await;
    b.stop().await;
}

/// A definition registered, deprecated, and a queue paused and resumed on
/// one node reach the other: the cluster's records are the store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_node_registers_or_pauses_every_node_learns() {
    let (_db, _key_dir, (a, _, _), (b, _, _)) = two_nodes().await;
    let mut client_a = WorkflowServiceClient::connect(a.url()).await.unwrap();

    let unknown = start(&mut client_a, "late", Some(&ids_in(0, "late", 1)[0]), "late-0").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "{unknown:?}");
    let late = SagaDefinition::builder("late", 1).step(Step::activity("reserve", ACTIVITY)).build().unwrap();
    b.runtime().register_definitions(vec![late], false).await.unwrap();
    // At once: a start naming a type A does not know reads the store.
    let id = &ids_in(0, "late", 2)[1];
    assert_eq!(&start(&mut client_a, "late", Some(id), id).await.unwrap(), id);

    b.runtime().deprecate_definition("late", 1).await.unwrap();
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    wait_until(Duration::from_secs(10), "A to learn the deprecation", || {
        let mut client_a = client_a.clone();
        // A new start each time: a retried one would answer with its workflow.
        let id = ids_in(0, "after", 1 + attempt.fetch_add(1, Ordering::Relaxed)).pop().unwrap();
        async move {
            let refused = start(&mut client_a, "late", Some(&id), &id).await;
            refused.is_err_and(|status| status.code() == tonic::Code::FailedPrecondition)
        }
    })
    .await;

    assert!(b.runtime().pause_queue(ACTIVITY, "the warehouse is down", "ops").await.unwrap());
    wait_until(Duration::from_secs(10), "A to learn the pause", || async {
        a.runtime().dispatch().is_paused(ACTIVITY)
    })
    .await;
    assert!(b.runtime().resume_queue(ACTIVITY, "ops").await.unwrap());
    wait_until(Duration::from_secs(10), "A to learn the resumption", || async {
        !a.runtime().dispatch().is_paused(ACTIVITY)
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// One worker, connected to node A alone, runs the tasks of B's shards as
/// well: A relays its session to B. It never holds more tasks than it
/// granted credit for, though two nodes hand them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_one_node_takes_the_tasks_of_every_shard() {
    const CONCURRENCY: u32 = 3;
    let (_db, _key_dir, (a, _, _), (b, _, _)) = two_nodes().await;
    let client_a = WorkflowServiceClient::connect(a.url()).await.unwrap();
    // Every shard's workflows, started through A (B's forwarded to B once
    // A has read who serves them).
    let ids: Vec<String> = (0..SHARDS).flat_map(|shard| ids_in(shard, "relayed", 4)).collect();
    for id in &ids {
        wait_until(Duration::from_secs(10), "a start through A", || {
            let (mut client_a, id) = (client_a.clone(), id.clone());
            async move {
                match start(&mut client_a, "handover", Some(&id), &id).await {
                    Ok(started) => started == id,
                    Err(status) if status.code() == tonic::Code::Unavailable => false,
                    Err(status) => panic!("the start was refused: {status:?}"),
                }
            }
        })
        .await;
    }
    // Activities running at once, and the most seen.
    let (running, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let runs = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let worker = {
        let (running, most, runs) = (Arc::clone(&running), Arc::clone(&most), Arc::clone(&runs));
        Worker::builder(a.url())
            .worker_id("only-on-a")
            .max_concurrency(CONCURRENCY)
            .activity(ACTIVITY, move |ctx: ActivityContext, _input: Value| {
                *runs.lock().unwrap().entry(ctx.workflow_id().to_owned()).or_default() += 1;
                let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                async move {
                    most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, ActivityError>(json!({}))
                }
            })
            .build()
            .unwrap()
    };
    let worker = tokio::spawn(async move { worker.run().await.unwrap() });
    let (mut client_a, mut client_b) = (client_a, WorkflowServiceClient::connect(b.url()).await.unwrap());
    for id in &ids {
        let client = if a.runtime().serves_shard(shard_of(id, SHARDS)) { &mut client_a } else { &mut client_b };
        assert_eq!(common::status_of(&common::await_end(client, id).await), "COMPLETED", "{id}");
    }
    let runs = runs.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(runs.get(id), Some(&1), "{id}: {runs:?}");
    }
    let most = most.load(Ordering::SeqCst);
    assert!((1..=CONCURRENCY).contains(&most), "the worker ran {most} at once, past its {CONCURRENCY}");
    worker.abort();
    a.stop().await;
    b.stop().await;
}

/// A worker of concurrency 4 on A, whose tasks all come from B: the credit
/// A's own queue holds idle (half the worker's, at first) is taken back and
/// sent to B, until the worker runs 4 of B's tasks at once. Without taking
/// it back, B's tasks never ran more than 2 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_node_gets_the_credit_an_idle_node_holds() {
    const CONCURRENCY: u32 = 4;
    let (_db, _key_dir, (a, _, _), (b, _, _)) = two_nodes().await;
    let mut client_b = WorkflowServiceClient::connect(b.url()).await.unwrap();
    let ids: Vec<String> = [2, 3].into_iter().flat_map(|shard| ids_in(shard, "busy", 4)).collect();
    for id in &ids {
        assert_eq!(start(&mut client_b, "handover", Some(id), id).await.unwrap(), *id);
    }
    let (running, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let worker = {
        let (running, most) = (Arc::clone(&running), Arc::clone(&most));
        Worker::builder(a.url())
            .worker_id("on-a-for-b")
            .max_concurrency(CONCURRENCY)
            .activity(ACTIVITY, move |_ctx: ActivityContext, _input: Value| {
                let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                async move {
                    most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    // Held until the worker is full, so that what runs at once is what B could send.
                    let full = async {
                        while running.load(Ordering::SeqCst) < CONCURRENCY {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(8), full).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, ActivityError>(json!({}))
                }
            })
            .build()
            .unwrap()
    };
    let worker = tokio::spawn(async move { worker.run().await.unwrap() });
    assert_completed(&mut client_b, &ids).await;
    let most = most.load(Ordering::SeqCst);
    assert_eq!(most, CONCURRENCY, "B's tasks ran at most {most} at once on a worker of {CONCURRENCY}");
    worker.abort();
    a.stop().await;
    b.stop().await;
}

/// A parent in A's shards whose child saga lands in B's: the child starts
/// on B (A asks B), is held there, and A's parent hears of it from the
/// store. One parent passes its last step and B releases its child; the
/// other fails for good, and A has B undo its child. Without the node
/// service, A's child step was refused (the child's shard is not A's) and
/// the parent never went past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_child_saga_in_another_nodes_shard_runs_there_and_is_released_or_undone_from_there() {
    let (_db, _key_dir, (a, _, _), (b, _, _)) = two_nodes().await;
    // Parents in A's shards whose children are in B's.
    let parent_in_a_child_in_b = |prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|id| shard_of(id, SHARDS) < 2 && shard_of(&format!("{id}.kid"), SHARDS) >= 2)
            .unwrap()
    };
    let (kept, undone) = (parent_in_a_child_in_b("kept"), parent_in_a_child_in_b("undone"));
    let runs = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let worker = {
        let count = |runs: &Arc<Mutex<HashMap<String, usize>>>, what: &'static str| {
            let runs = Arc::clone(runs);
            move |ctx: ActivityContext, _input: Value| {
                *runs.lock().unwrap().entry(format!("{what} {}", ctx.workflow_id())).or_default() += 1;
                async move {
                    if what == "doomed" {
                        return Err(ActivityError::non_retryable("Declined", "declined for good"));
                    }
                    Ok::<_, ActivityError>(json!({}))
                }
            }
        };
        Worker::builder(a.url())
            .worker_id("family-worker")
            .activity(ACTIVITY, count(&runs, "reserve"))
            .activity(RELEASE, count(&runs, "release"))
            .activity(DOOMED, count(&runs, "doomed"))
            .build()
            .unwrap()
    };
    let worker = tokio::spawn(async move { worker.run().await.unwrap() });
    let mut client_a = WorkflowServiceClient::connect(a.url()).await.unwrap();
    let mut client_b = WorkflowServiceClient::connect(b.url()).await.unwrap();
    assert_eq!(start(&mut client_a, "family-ok", Some(&kept), &kept).await.unwrap(), kept);
    assert_eq!(start(&mut client_a, "family-doomed", Some(&undone), &undone).await.unwrap(), undone);
    for parent in [&kept, &undone] {
        let child = format!("{parent}.kid");
        assert!(
            b.runtime().serves_shard(shard_of(&child, SHARDS)) && !a.runtime().serves_shard(shard_of(&child, SHARDS))
        );
        // Held on B, it completes the parent's child step on A.
        common::wait_for_event(&mut client_a, parent, Duration::from_secs(15), |e| {
            matches!(e.attributes, Some(Attributes::ActivityCompleted(_)))
        })
        .await;
        client_a.signal_workflow(go(parent)).await.unwrap();
    }
    let ended = |client: &mut WorkflowServiceClient<Channel>, id: String| {
        let mut client = client.clone();
        async move { common::status_of(&common::await_end(&mut client, &id).await) }
    };
    assert_eq!(ended(&mut client_a, kept.clone()).await, "COMPLETED");
    assert_eq!(ended(&mut client_b, format!("{kept}.kid")).await, "COMPLETED", "released by B");
    assert_eq!(ended(&mut client_a, undone.clone()).await, "COMPENSATED");
    assert_eq!(ended(&mut client_b, format!("{undone}.kid")).await, "COMPENSATED", "undone on A's word");
    let runs = runs.lock().unwrap().clone();
    for (what, times) in [
        (format!("reserve {kept}.kid"), 1),
        (format!("reserve {undone}.kid"), 1),
        (format!("release {undone}.kid"), 1),
        (format!("doomed {undone}"), 1),
        (format!("reserve {kept}"), 1),
    ] {
        assert_eq!(runs.get(&what), Some(&times), "{what}: {runs:?}");
    }
    assert_eq!(runs.get(&format!("release {kept}.kid")), None, "a released child is not undone: {runs:?}");
    worker.abort();
    a.stop().await;
    b.stop().await;
}

/// A node that serves no shard (one more node than shards, or one that just
/// joined) writes nothing itself: it passes a definition's registration, a
/// queue's pause and a start without an id to a node that serves. Without
/// that, each was refused: the node holds no epoch to write them under.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_serving_no_shard_passes_on_what_it_cannot_write() {
    use sagaflow_proto::v1::definition_service_client::DefinitionServiceClient;
    use sagaflow_proto::v1::{PauseQueueRequest, RegisterDefinitionRequest, ResumeQueueRequest};
    let (db, key_dir, (a, _, _), (b, _, _)) = two_nodes().await;
    let (c, _, _) = node(&db.url, "node-c", &[], key_dir.path()).await;
    assert!(!c.runtime().serves_any_shard());
    let channel = Channel::from_shared(c.url()).unwrap().connect().await.unwrap();
    let fresh = SagaDefinition::builder("fresh", 1).step(Step::activity("reserve", ACTIVITY)).build().unwrap();
    let register =
        RegisterDefinitionRequest { definitions: vec![serde_json::to_string(&fresh).unwrap()], dry_run: false };
    DefinitionServiceClient::new(channel.clone()).register_definition(register).await.unwrap();
    let mut client_c = WorkflowServiceClient::new(channel);
    let pause = PauseQueueRequest { queue: ACTIVITY.into(), reason: "maintenance".into(), identity: "ops".into() };
    client_c.pause_queue(pause).await.unwrap();
    wait_until(Duration::from_secs(10), "A and B to learn the pause", || async {
        a.runtime().dispatch().is_paused(ACTIVITY) && b.runtime().dispatch().is_paused(ACTIVITY)
    })
    .await;
    client_c.resume_queue(ResumeQueueRequest { queue: ACTIVITY.into(), identity: "ops".into() }).await.unwrap();
    // Started without an id through C, the workflow lands in A's or B's shards.
    let id = start(&mut client_c, "fresh", None, "fresh-1").await.unwrap();
    assert!(!c.runtime().serves_shard(shard_of(&id, SHARDS)), "{id}");
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let worker = worker(&c.url(), "via-c", &runs);
    assert_completed(&mut client_c, &[id]).await;
    worker.abort();
    for server in [a, b, c] {
        server.stop().await;
    }
}
