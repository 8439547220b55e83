//! `sagaflow server` nodes on one PostgreSQL share a new cluster's 8 shards
//! out among themselves (the default placement, `spread`) instead of one
//! serving while the others stand by: three nodes hold 3, 3 and 2, and all serve at once. Any
//! node takes any call about any workflow, forwarding it to the node serving
//! the workflow's shard, and a worker on any node runs every shard's tasks.
//! A node killed with `kill -9` has its shards taken and served again by the
//! others within 10 s, and so does a second. A node paused past its leases
//! and woken does not exit: the database refuses its writes of the shards
//! the others took, and it rejoins with a share. A node that joins takes its
//! share from the others. Every acknowledged start completes, each history
//! is intact with its step completed once, and no effect is applied twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nats::wait_until;
use common::{Node, ServerProcess};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    AwaitWorkflowRequest, GetWorkflowHistoryRequest, HistoryEvent, StartWorkflowRequest, WorkflowStatus,
};
use sagaflow_server::store::shard_of;
use sagaflow_store_postgres::testing::TestDb;
use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use sagaflow_workflows::{SagaDefinition, Step, Timeouts};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

type Client = WorkflowServiceClient<Channel>;

const SHARDS: u32 = 8;

/// The bound on a takeover: a dead node's leases run out (5 s) and the
/// others, asking every second, take its shards, recover and serve them.
const TAKEOVER: Duration = Duration::from_secs(10);

/// How long the test waits for what it measures against [`TAKEOVER`]:
/// longer, so that a slow takeover is reported with its time.
const MEASURED_WITHIN: Duration = Duration::from_secs(30);

/// One call that gets no answer this long is tried again: a paused node
/// never answers what is forwarded to it.
const ATTEMPT: Duration = Duration::from_secs(5);

/// The `napping` saga's timer: it must still be armed when its shard moves
/// (a node joins, or the node holding it is paused).
const NAP: Duration = Duration::from_secs(4);

const ACTIVITY: &str = "spread.apply";

impl Node {
    /// Starts it, spread, on the cluster at `db`; a spread node serves at
    /// once, holding shards or not.
    async fn start(&self, db: &TestDb, definitions: &Path) -> ServerProcess {
        self.start_with(db, definitions, &[]).await
    }

    async fn start_with(&self, db: &TestDb, definitions: &Path, extra: &[&str]) -> ServerProcess {
        let shards = SHARDS.to_string();
        let mut args = vec!["--store", &db.url, "--shards", &shards, "--definitions", definitions.to_str().unwrap()];
        args.extend_from_slice(extra);
        ServerProcess::start_standby(&self.dir, &self.listen, &args, Duration::from_secs(30)).await
    }

    /// A client of this node alone, connecting at each call: it keeps
    /// failing, UNAVAILABLE, while the node is dead.
    fn client(&self) -> Client {
        WorkflowServiceClient::new(Channel::from_shared(self.url()).unwrap().connect_lazy())
    }
}

/// `spread`: one activity; `napping`: a durable timer, then the activity.
fn write_definitions(root: &Path) -> PathBuf {
    // Short, so that an attempt lost with its node is tried again in the test's time.
    let short = Timeouts { start_to_close_ms: 5_000, ..Timeouts::default() };
    let apply = || Step::activity("apply", ACTIVITY).timeouts(short);
    let spread = SagaDefinition::builder("spread", 1).step(apply()).build().unwrap();
    let napping = SagaDefinition::builder("napping", 1).step(Step::sleep("nap", NAP)).step(apply()).build().unwrap();
    let file = root.join("spread-sagas.json");
    std::fs::write(&file, serde_json::to_string(&[spread, napping]).unwrap()).unwrap();
    file
}

/// `n` workflow ids of `shard`.
fn ids_in(shard: u32, prefix: &str, n: usize) -> Vec<String> {
    (0..).map(|i| format!("{prefix}-{i}")).filter(|id| shard_of(id, SHARDS) == shard).take(n).collect()
}

/// `n` workflow ids of each shard.
fn ids_in_every_shard(prefix: &str, n: usize) -> Vec<String> {
    (0..SHARDS).flat_map(|shard| ids_in(shard, prefix, n)).collect()
}

/// What the worker saw of each workflow: how often its activity ran, and
/// how often its effect was applied, once per idempotency key as an
/// idempotent service applies it. Two keys for one workflow would have
/// applied its effect twice.
#[derive(Default)]
struct Ledger {
    runs: HashMap<String, usize>,
    applied: HashMap<String, usize>,
    keys: HashSet<String>,
}

/// A worker running [`ACTIVITY`] for every shard, connected to one of
/// `servers` at a time.
fn counting_worker(servers: &str, ledger: &Arc<Mutex<Ledger>>) -> JoinHandle<()> {
    let ledger = Arc::clone(ledger);
    let worker = Worker::builder(servers.to_owned())
        .max_concurrency(4)
        // What is measured is the cluster's takeover, not the worker's backoff
        // (up to 5 s by default) before it tries the next node.
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .activity(ACTIVITY, move |ctx: ActivityContext, _input: Value| {
            {
                let mut ledger = ledger.lock().unwrap();
                *ledger.runs.entry(ctx.workflow_id().to_owned()).or_default() += 1;
                if ledger.keys.insert(ctx.idempotency_key().to_owned()) {
                    *ledger.applied.entry(ctx.workflow_id().to_owned()).or_default() += 1;
                }
            }
            async {
                // Long enough that a node may die with attempts in hand.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, ActivityError>(json!({}))
            }
        })
        .build()
        .unwrap();
    tokio::spawn(async move {
        let _ = worker.run().await;
    })
}

/// A shard as `cluster status` shows it: the address of the node serving
/// it (`None` while no live lease holds it) and its epoch.
#[derive(Debug, Clone, PartialEq)]
struct Shard {
    served_by: Option<String>,
    epoch: u64,
}

async fn cluster_status(db: &TestDb) -> Vec<Shard> {
    let output = tokio::process::Command::new(common::BIN)
        .args(["cluster", "status", "--store", &db.url, "--output", "json"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["placement"], "spread", "{status}");
    let shards = status["shards"].as_array().unwrap();
    assert_eq!(shards.len(), SHARDS as usize, "{status}");
    shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            assert_eq!(shard["shard"], i, "{status}");
            let served = shard["served"].as_bool().unwrap();
            Shard {
                served_by: served.then(|| shard["address"].as_str().unwrap().to_owned()),
                epoch: shard["epoch"].as_u64().unwrap(),
            }
        })
        .collect()
}

/// How many shards each node serves, by address.
fn held(shards: &[Shard]) -> BTreeMap<String, usize> {
    let mut held = BTreeMap::new();
    for address in shards.iter().filter_map(|s| s.served_by.clone()) {
        *held.entry(address).or_default() += 1;
    }
    held
}

/// Every shard served, and the sorted counts of the nodes serving them.
fn split(shards: &[Shard]) -> Option<Vec<usize>> {
    let mut counts: Vec<usize> = held(shards).into_values().collect();
    counts.sort_unstable();
    shards.iter().all(|s| s.served_by.is_some()).then_some(counts)
}

/// The shards `node` serves.
fn shards_of(shards: &[Shard], node: &Node) -> Vec<u32> {
    (0..SHARDS).filter(|&i| shards[i as usize].served_by.as_deref() == Some(node.listen.as_str())).collect()
}

/// The first `cluster status` that `expected`, and when it was read; panics
/// with the last one read if none did within `within`.
async fn await_status(
    db: &TestDb,
    within: Duration,
    what: &str,
    expected: impl Fn(&[Shard]) -> bool,
) -> (Vec<Shard>, Instant) {
    let deadline = Instant::now() + within;
    loop {
        let shards = cluster_status(db).await;
        if expected(&shards) {
            return (shards, Instant::now());
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}; `cluster status`: {shards:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each node's metrics say how many shards it serves, as `cluster status`
/// does, and how many the cluster has.
async fn assert_metrics_agree(db: &TestDb, nodes: &[(&Node, &ServerProcess)]) {
    let metrics = |process: &ServerProcess| {
        let http = process.http.clone();
        async move {
            let text = common::scrape(&http).await;
            let count = |name| common::metric_where(&text, name, &[]);
            (count("sagaflow_shards_held"), count("sagaflow_cluster_shards"))
        }
    };
    // A node's gauges follow its leases within a renewal.
    wait_until(Duration::from_secs(5), "every node's metrics to agree with `cluster status`", || async {
        let held = held(&cluster_status(db).await);
        for (node, process) in nodes {
            let expected = held.get(&node.listen).copied().unwrap_or(0) as f64;
            if metrics(process).await != (Some(expected), Some(f64::from(SHARDS))) {
                return false;
            }
        }
        true
    })
    .await;
}

/// The answer of the first `call` (given its attempt's number) not refused
/// UNAVAILABLE nor left unanswered: a shard whose node died is served by no
/// one until its leases run out, and a node reads who serves a shard a
/// moment after it moved.
async fn until_served<T, F>(within: Duration, what: &str, mut call: impl FnMut(usize) -> F) -> T
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + within;
    let mut attempt = 0;
    loop {
        let failed = match tokio::time::timeout(ATTEMPT, call(attempt)).await {
            Ok(Ok(answer)) => return answer.into_inner(),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => format!("{status:?}"),
            Ok(Err(status)) => panic!("{what}: refused: {status:?}"),
            Err(_) => format!("no answer within {ATTEMPT:?}"),
        };
        assert!(Instant::now() < deadline, "{what}: not served within {within:?}; the last attempt: {failed}");
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `workflow_type` as `id` through `nodes`, one after another.
/// Retrying is safe: the id makes the start idempotent.
async fn start(nodes: &[Client], workflow_type: &str, id: &str, within: Duration) {
    let request = StartWorkflowRequest {
        workflow_type: workflow_type.into(),
        request_id: id.into(),
        input: b"{}".to_vec(),
        workflow_id: id.into(),
        ..Default::default()
    };
    let answer = until_served(within, &format!("the start of {id}"), |attempt| {
        let (mut client, request) = (nodes[attempt % nodes.len()].clone(), request.clone());
        async move { client.start_workflow(request).await }
    })
    .await;
    assert_eq!(answer.workflow_id, id);
}

/// Waits, through `nodes`, until `id` completed.
async fn await_completed(nodes: &[Client], id: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = until_served(left, &format!("awaiting {id}"), |attempt| {
            let mut client = nodes[attempt % nodes.len()].clone();
            let request = AwaitWorkflowRequest { workflow_id: id.to_owned(), timeout_ms: 2_000 };
            async move { client.await_workflow(request).await }
        })
        .await;
        if answer.terminal {
            let status = answer.summary.as_ref().map(|s| s.status());
            assert_eq!(status, Some(WorkflowStatus::Completed), "{id}: {answer:?}");
            return;
        }
        assert!(Instant::now() < deadline, "{id} did not end within {within:?}: {answer:?}");
    }
}

async fn history(nodes: &[Client], id: &str) -> Vec<HistoryEvent> {
    let page = until_served(Duration::from_secs(10), &format!("the history of {id}"), |attempt| {
        let mut client = nodes[attempt % nodes.len()].clone();
        let request = GetWorkflowHistoryRequest { workflow_id: id.to_owned(), page_size: 500, ..Default::default() };
        async move { client.get_workflow_history(request).await }
    })
    .await;
    assert!(page.terminal, "{id}: its whole history in one page");
    page.events
}

/// Each of `ids` completed, with an intact history in which its step
/// completed once and each timer (its nap, a retry's backoff) fired once,
/// and its effect was applied once. `strict`: its activity also ran once,
/// as it must when no node failed. Returns how many ran again.
async fn assert_completed_once(nodes: &[Client], ids: &[String], ledger: &Mutex<Ledger>, strict: bool) -> usize {
    for id in ids {
        await_completed(nodes, id, Duration::from_secs(30)).await;
        let events = history(nodes, id).await;
        common::assert_intact(id, &events);
        common::assert_each_step_completed_once(id, &events);
        let mut fired = HashSet::new();
        for event in &events {
            if let Some(Attributes::TimerFired(timer)) = &event.attributes {
                assert!(fired.insert(&timer.timer_id), "{id}: a timer fired twice: {:?}", common::event_names(&events));
            }
        }
    }
    let ledger = ledger.lock().unwrap();
    let mut again = 0;
    for id in ids {
        let runs = ledger.runs.get(id).copied().unwrap_or(0);
        assert!(runs >= 1, "{id} completed without its activity running");
        assert_eq!(ledger.applied.get(id), Some(&1), "{id}: its effect applied once, under one key ({runs} runs)");
        assert!(!strict || runs == 1, "{id}: its activity ran {runs} times, though no node died");
        again += usize::from(runs > 1);
    }
    again
}

/// Kills `victim` (`kill -9`) and measures until `cluster status` shows
/// every shard served by one of `survivors` and a fresh workflow of each of
/// the shards the victim served was started and completed through them.
/// Returns that time and the fresh workflows' ids.
async fn kill_and_measure(
    db: &TestDb,
    (node, victim): (&Node, ServerProcess),
    survivors: &[&Node],
    prefix: &str,
) -> (Duration, Vec<String>) {
    let theirs = shards_of(&cluster_status(db).await, node);
    assert!(!theirs.is_empty(), "{} serves a share before it dies", node.listen);
    let live: Vec<String> = survivors.iter().map(|n| n.listen.clone()).collect();
    let clients: Vec<Client> = survivors.iter().map(|n| n.client()).collect();
    let probes: Vec<String> = theirs.iter().map(|&shard| ids_in(shard, prefix, 1).remove(0)).collect();

    let killed_at = Instant::now();
    victim.kill9().await;
    let running: Vec<JoinHandle<Instant>> = probes
        .iter()
        .map(|id| {
            let (clients, id) = (clients.clone(), id.clone());
            tokio::spawn(async move {
                start(&clients, "spread", &id, MEASURED_WITHIN).await;
                await_completed(&clients, &id, MEASURED_WITHIN).await;
                Instant::now()
            })
        })
        .collect();
    let (_, held_at) = await_status(db, MEASURED_WITHIN, "every shard served by a live node", |shards| {
        shards.iter().all(|s| s.served_by.as_ref().is_some_and(|address| live.contains(address)))
    })
    .await;
    let mut served_at = held_at;
    for probe in running {
        served_at = served_at.max(probe.await.unwrap());
    }
    (served_at - killed_at, probes)
}

/// On a failure, prints the last lines each node logged: what the nodes
/// did is in their logs, which the test holds.
#[derive(Default)]
struct LogsOnFailure(Vec<(String, common::LogLines)>);

impl LogsOnFailure {
    fn watch(&mut self, node: &Node, process: &ServerProcess) {
        self.0.push((node.listen.clone(), process.logs.clone()));
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (node, logs) in &self.0 {
                let lines = logs.lines();
                let last = &lines[lines.len().saturating_sub(60)..];
                eprintln!("--- the last lines node {node} logged ---\n{}", last.join("\n"));
            }
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Whether the process runs: it exists and has not ended (an ended child
/// stays a zombie until the test reaps it).
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command's name, which is in parentheses.
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    state.is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_spread_over_three_nodes_and_a_killed_nodes_shards_are_served_again_within_10s() {
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let definitions = write_definitions(root.path());
    let nodes = [Node::new(root.path(), "a"), Node::new(root.path(), "b"), Node::new(root.path(), "c")];
    let all = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
    // The first creates the cluster; the others join it together.
    let a = nodes[0].start(&db, &definitions).await;
    let (b, c) = tokio::join!(nodes[1].start(&db, &definitions), nodes[2].start(&db, &definitions));
    let mut logs = LogsOnFailure::default();
    for (node, process) in nodes.iter().zip([&a, &b, &c]) {
        logs.watch(node, process);
    }
    await_status(&db, Duration::from_secs(20), "8 shards spread 3, 3 and 2", |s| split(s) == Some(vec![2, 3, 3])).await;
    assert_metrics_agree(&db, &[(&nodes[0], &a), (&nodes[1], &b), (&nodes[2], &c)]).await;

    let ledger = Arc::default();
    let worker = counting_worker(&all, &ledger);
    // Starts through the nodes in turn, each tried once: only a start a
    // node said yes to was promised.
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let load = {
        let (clients, acked) = (nodes.iter().map(Node::client).collect::<Vec<_>>(), Arc::clone(&acked));
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for i in 0..60 {
                let (mut client, acked) = (clients[i % clients.len()].clone(), Arc::clone(&acked));
                calls.push(tokio::spawn(async move {
                    let id = format!("load-{i}");
                    let request = StartWorkflowRequest {
                        workflow_type: "spread".into(),
                        request_id: id.clone(),
                        input: b"{}".to_vec(),
                        workflow_id: id.clone(),
                        ..Default::default()
                    };
                    if let Ok(Ok(_)) = tokio::time::timeout(ATTEMPT, client.start_workflow(request)).await {
                        acked.lock().unwrap().push((id, Instant::now()));
                    }
                }));
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
            for call in calls {
                call.await.unwrap();
            }
        })
    };

    // 1. kill -9 a node a third of the way into the load (the worker's first
    //    node, so that it must find another): the two others serve its shards.
    wait_until(Duration::from_secs(20), "20 acknowledged starts", || async { acked.lock().unwrap().len() >= 20 }).await;
    let killed_at = Instant::now();
    let (first, mut probes) = kill_and_measure(&db, (&nodes[0], a), &[&nodes[1], &nodes[2]], "probe-1").await;
    assert!(first < TAKEOVER, "the killed node's shards were served again after {first:?}");
    let while_down = acked.lock().unwrap().iter().filter(|(_, at)| *at > killed_at).count();
    assert!(while_down >= 5, "the live nodes kept serving their own shards meanwhile: {while_down} starts");
    // Each aims at its share of the 8.
    await_status(&db, Duration::from_secs(15), "the two live nodes to hold 4 each", |s| split(s) == Some(vec![4, 4]))
        .await;

    // 2. kill -9 a second: the last node serves all 8.
    let (second, more) = kill_and_measure(&db, (&nodes[1], b), &[&nodes[2]], "probe-2").await;
    assert!(second < TAKEOVER, "the second killed node's shards were served again after {second:?}");
    probes.extend(more);
    assert_metrics_agree(&db, &[(&nodes[2], &c)]).await;

    load.await.unwrap();
    let acked: Vec<String> = acked.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
    let through_last = [nodes[2].client()];
    let again = assert_completed_once(&through_last, &[acked.clone(), probes].concat(), &ledger, false).await;
    println!(
        "served again after kill -9: {first:?}, then {second:?}; {} acknowledged starts ({while_down} while a node was \
         down), {again} activities run again with their key",
        acked.len()
    );
    worker.abort();
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_node_loses_its_shards_cannot_write_and_rejoins() {
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let definitions = write_definitions(root.path());
    let nodes = [Node::new(root.path(), "a"), Node::new(root.path(), "b"), Node::new(root.path(), "c")];
    let a = nodes[0].start(&db, &definitions).await;
    let (b, c) = tokio::join!(nodes[1].start(&db, &definitions), nodes[2].start(&db, &definitions));
    let mut logs = LogsOnFailure::default();
    for (node, process) in nodes.iter().zip([&a, &b, &c]) {
        logs.watch(node, process);
    }
    let (before, _) =
        await_status(&db, Duration::from_secs(20), "8 shards spread 3, 3 and 2", |s| split(s) == Some(vec![2, 3, 3]))
            .await;
    // The worker is on the nodes that stay awake: its session on the paused
    // one would hang until HTTP/2 keep-alive gave up on it (30 s).
    let ledger = Arc::default();
    let worker = counting_worker(&format!("{},{}", nodes[0].url(), nodes[1].url()), &ledger);
    let (awake, through_c) = ([nodes[0].client(), nodes[1].client()], [nodes[2].client()]);

    // Workflows of c's shards, their timers armed on c when it stops:
    // woken, it fires them and writes, under epochs no longer its own.
    let theirs = shards_of(&before, &nodes[2]);
    let napping: Vec<String> = theirs.iter().flat_map(|&shard| ids_in(shard, "napping", 2)).collect();
    for id in &napping {
        start(&through_c, "napping", id, Duration::from_secs(10)).await;
    }
    let paused_at = Instant::now();
    signal(c.pid(), "STOP");
    // Meanwhile, through the nodes awake, workflows of every shard: those of
    // c's start once the others took them. A start forwarded to c in vain
    // reaches it when it wakes, a write it must not make either.
    let during = ids_in_every_shard("during", 2);
    let starts = async {
        for id in &during {
            start(&awake, "spread", id, Duration::from_secs(20)).await;
        }
    };
    let live = [nodes[0].listen.clone(), nodes[1].listen.clone()];
    let taken =
        await_status(&db, Duration::from_secs(15), "the nodes awake to hold every shard, c's at new epochs", |s| {
            s.iter().all(|s| s.served_by.as_ref().is_some_and(|address| live.contains(address)))
                && theirs.iter().all(|&shard| s[shard as usize].epoch > before[shard as usize].epoch)
        });
    let ((), (_, taken_at)) = tokio::join!(starts, taken);
    let taken = taken_at - paused_at;
    signal(c.pid(), "CONT");

    // Woken, it gives up what it lost instead of exiting, and takes a share again.
    await_status(&db, Duration::from_secs(15), "the woken node to hold a share again", |s| {
        split(s) == Some(vec![2, 3, 3]) && !shards_of(s, &nodes[2]).is_empty()
    })
    .await;
    let rejoined = paused_at.elapsed();
    assert!(running(c.pid()), "the woken node exited");
    // It serves and forwards: workflows of every shard, through it alone.
    let after = ids_in_every_shard("after", 1);
    for id in &after {
        start(&through_c, "spread", id, Duration::from_secs(10)).await;
    }
    let every = [napping, during, after].concat();
    // Not strict: the paused node may have been handed attempts it could not
    // see through, which run again elsewhere, under the same key.
    let again = assert_completed_once(&through_c, &every, &ledger, false).await;
    assert_metrics_agree(&db, &[(&nodes[0], &a), (&nodes[1], &b), (&nodes[2], &c)]).await;
    assert!(running(c.pid()), "the woken node exited");
    println!(
        "the paused node's shards were taken after {taken:?}; it held a share again {rejoined:?} after the pause; \
         {again} activities run again with their key"
    );
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_joins_takes_its_share_from_the_others() {
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let definitions = write_definitions(root.path());
    let nodes = [Node::new(root.path(), "a"), Node::new(root.path(), "b")];
    let a = nodes[0].start(&db, &definitions).await;
    let mut logs = LogsOnFailure::default();
    logs.watch(&nodes[0], &a);
    await_status(&db, Duration::from_secs(15), "the only node to hold all 8", |s| {
        held(s).get(&nodes[0].listen) == Some(&(SHARDS as usize))
    })
    .await;
    // While a node runs, a node that would stand by instead is refused: it
    // would wait for every shard, and hold the share the others leave it.
    let refused = tokio::process::Command::new(common::BIN)
        .args(["server", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.path().join("one-node"))
        .args(["--store", &db.url, "--placement", "one-node"])
        .kill_on_drop(true)
        .output();
    let refused =
        tokio::time::timeout(Duration::from_secs(30), refused).await.expect("a one-node node started").unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the cluster's shards are placed spread"), "{stderr}");
    let ledger = Arc::default();
    let worker = counting_worker(&format!("{},{}", nodes[0].url(), nodes[1].url()), &ledger);

    // Napping on the first node while half its shards move to the second.
    let via_a = [nodes[0].client()];
    let before = ids_in_every_shard("before", 2);
    for id in &before {
        start(&via_a, "napping", id, Duration::from_secs(10)).await;
    }
    let b = nodes[1].start(&db, &definitions).await;
    let joined_at = Instant::now();
    logs.watch(&nodes[1], &b);
    await_status(&db, Duration::from_secs(10), "the shards split 4 and 4", |s| split(s) == Some(vec![4, 4])).await;
    let moved = joined_at.elapsed();
    assert_metrics_agree(&db, &[(&nodes[0], &a), (&nodes[1], &b)]).await;

    let via_b = [nodes[1].client()];
    let after = ids_in_every_shard("after", 2);
    for (i, id) in after.iter().enumerate() {
        start(if i % 2 == 0 { &via_a } else { &via_b }, "spread", id, Duration::from_secs(10)).await;
    }
    assert_completed_once(&via_b, &[before, after].concat(), &ledger, true).await;
    println!("the shards split 4 and 4 {moved:?} after the second node served");
    worker.abort();
}

/// The shop under spread shards, relaying its events to NATS: checkouts
/// start through any node (the checkout's workflow is started on the node
/// serving its shard), the shop's workers connect to all three, and the
/// node serving shard 0, the one that relays the outbox, is killed with
/// `kill -9` midway. The node that takes shard 0 relays from then on, and
/// only one node ever relays at a time. Every acknowledged checkout
/// completes or compensates, each step once; no payment is captured twice,
/// no reservation leaks, `check-invariants` finds nothing, the outbox
/// drains, and the stream holds each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shops_checkouts_end_once_across_a_kill_9_of_a_spread_node() {
    use common::nats::{NatsServer, free_port, outbox_len, read_stream};
    const RELAYING: &str = "outbox relay started";
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_on(free_port(), &root.path().join("nats")).await;
    let definitions = write_definitions(root.path());
    let nodes = [Node::new(root.path(), "a"), Node::new(root.path(), "b"), Node::new(root.path(), "c")];
    let mut processes = Vec::new();
    for node in &nodes {
        processes.push(node.start_with(&db, &definitions, &["--nats-url", &nats.url]).await);
    }
    let mut logs = LogsOnFailure::default();
    for (node, process) in nodes.iter().zip(&processes) {
        logs.watch(node, process);
    }
    let (shards, _) =
        await_status(&db, Duration::from_secs(20), "8 shards over three nodes", |s| split(s) == Some(vec![2, 3, 3]))
            .await;
    // The node serving shard 0 relays; the others do not.
    let relaying = nodes.iter().position(|n| shards[0].served_by.as_deref() == Some(n.listen.as_str())).unwrap();
    processes[relaying]
        .logs
        .await_line("the relay of shard 0's node", Duration::from_secs(10), |l| l.contains(RELAYING))
        .await;
    let relays = |processes: &[ServerProcess]| {
        processes.iter().filter(|p| p.logs.lines().iter().any(|l| l.contains(RELAYING))).count()
    };
    assert_eq!(relays(&processes), 1, "one relay for the cluster");
    let all = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
    let shop = common::shop::Shop::workers_for(&all).await;

    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (acked, done) = (Arc::clone(&acked), Arc::clone(&done));
        let urls: Vec<String> = nodes.iter().map(Node::url).collect();
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for i in (0..2_000).take_while(|_| !done.load(std::sync::atomic::Ordering::Relaxed)) {
                let (acked, url) = (Arc::clone(&acked), urls[i % urls.len()].clone());
                calls.push(tokio::spawn(async move {
                    let request_id = format!("spread-{i}");
                    let sku = ["sku-mug", "sku-tee", "sku-cap"][i % 3];
                    let channel = Channel::from_shared(url).unwrap().connect_lazy();
                    let mut client =
                        sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient::new(channel);
                    let request = common::shop::checkout(&request_id, "kim", &[(sku, 1)]);
                    // Only a start a node said yes to was promised.
                    if let Ok(Ok(answer)) = tokio::time::timeout(ATTEMPT, client.start_checkout(request)).await {
                        acked.lock().unwrap().insert(request_id, answer.into_inner().checkout_id);
                    }
                }));
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            for call in calls {
                let _ = call.await;
            }
        })
    };
    // Midway through the load, the relaying node dies with its shards.
    wait_until(Duration::from_secs(30), "checkouts acknowledged before the kill", || {
        let acked = Arc::clone(&acked);
        async move { acked.lock().unwrap().len() >= 15 }
    })
    .await;
    let victim = processes.remove(relaying);
    let live: Vec<String> =
        nodes.iter().enumerate().filter(|(i, _)| *i != relaying).map(|(_, n)| n.listen.clone()).collect();
    let killed_at = Instant::now();
    victim.kill9().await;
    await_status(&db, TAKEOVER, "every shard served by a live node", |shards| {
        shards.iter().all(|s| s.served_by.as_ref().is_some_and(|address| live.contains(address)))
    })
    .await;
    let taken_over = killed_at.elapsed();
    wait_until(Duration::from_secs(10), "the node that took shard 0 to relay", || async { relays(&processes) == 1 })
        .await;
    let acked_at_kill = acked.lock().unwrap().len();
    wait_until(Duration::from_secs(30), "checkouts acknowledged after the takeover", || {
        let acked = Arc::clone(&acked);
        async move { acked.lock().unwrap().len() >= acked_at_kill + 15 }
    })
    .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    println!("the relaying node's shards served again after {taken_over:?}; {} checkouts acknowledged", acked.len());
    shop.assert_acknowledged_checkouts_ended_once(&acked).await;
    let survivor = processes[0].url.clone();
    wait_until(Duration::from_secs(30), "the outbox to drain into the stream", || {
        let survivor = survivor.clone();
        async move { outbox_len(&survivor).await == 0 }
    })
    .await;
    let stored = read_stream(&nats.jetstream().await, "SAGAFLOW_EVENTS").await;
    let ids: HashSet<&str> = stored.iter().map(|m| m.header("Sagaflow-Event-Id")).collect();
    assert_eq!(ids.len(), stored.len(), "an event stored twice");
    assert!(stored.len() >= acked.len(), "{} events for {} checkouts", stored.len(), acked.len());
    assert_eq!(relays(&processes), 1, "one relay for the cluster");
    drop(processes);
}

/// Under auth, a parent on node a whose child saga lands in node b's shard:
/// a asks b to start the child (and b's node service takes only the
/// token the cluster's nodes derive from its shared key), and b releases
/// the child once a's parent completed. Without the node's token, b
/// refused a's call and the parent waited at its child step for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_auth_a_child_saga_starts_on_the_node_serving_its_shard() {
    use common::secure::{OPERATOR, WORKER, with_token};
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let auth = common::secure::write_auth_file(root.path());
    let kid = SagaDefinition::builder("kid", 1).step(Step::activity("apply", ACTIVITY)).build().unwrap();
    let family = SagaDefinition::builder("family", 1)
        .step(Step::child("kid", "kid"))
        .step(Step::activity("apply", ACTIVITY))
        .build()
        .unwrap();
    let definitions = root.path().join("family.json");
    std::fs::write(&definitions, serde_json::to_string(&[kid, family]).unwrap()).unwrap();
    let nodes = [Node::new(root.path(), "a"), Node::new(root.path(), "b")];
    let extra = ["--auth-file", auth.to_str().unwrap()];
    let mut processes = Vec::new();
    for node in &nodes {
        processes.push(node.start_with(&db, &definitions, &extra).await);
    }
    let mut logs = LogsOnFailure::default();
    for (node, process) in nodes.iter().zip(&processes) {
        logs.watch(node, process);
    }
    let (shards, _) =
        await_status(&db, Duration::from_secs(20), "8 shards over two nodes", |s| split(s) == Some(vec![4, 4])).await;
    let (a_shards, b_shards) = (shards_of(&shards, &nodes[0]), shards_of(&shards, &nodes[1]));
    let parent = (0..)
        .map(|i| format!("family-{i}"))
        .find(|id| {
            a_shards.contains(&shard_of(id, SHARDS)) && b_shards.contains(&shard_of(&format!("{id}.kid"), SHARDS))
        })
        .unwrap();
    let all = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
    let worker = Worker::builder(&all)
        .worker_id("family-worker")
        .token(WORKER)
        .activity(ACTIVITY, |_ctx: ActivityContext, _input: Value| async { Ok::<_, ActivityError>(json!({})) })
        .build()
        .unwrap();
    let worker = tokio::spawn(async move { worker.run().await.unwrap() });
    let mut client = nodes[0].client();
    let request = StartWorkflowRequest {
        workflow_type: "family".into(),
        request_id: parent.clone(),
        input: "{}".into(),
        workflow_id: parent.clone(),
        ..Default::default()
    };
    client.start_workflow(with_token(request, Some(OPERATOR))).await.unwrap();
    for id in [parent.clone(), format!("{parent}.kid")] {
        let awaited = AwaitWorkflowRequest { workflow_id: id.clone(), timeout_ms: 20_000 };
        let end = client.await_workflow(with_token(awaited, Some(OPERATOR))).await.unwrap().into_inner();
        assert_eq!(end.summary.map(|s| s.status), Some(WorkflowStatus::Completed as i32), "{id}");
    }
    worker.abort();
    drop(processes);
}
