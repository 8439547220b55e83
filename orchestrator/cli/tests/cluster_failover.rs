//! Three `sagaflow server` nodes on one PostgreSQL, the shop's workers and a
//! stream of checkouts pointed at all three. One node serves, two stand by.
//! The serving node is killed (`kill -9`); a standby serves within 10 s.
//! That one is then paused (`SIGSTOP`) until the third took over, and woken:
//! fenced off, it stops instead of writing. A node started again stands by,
//! and takes over when the third is killed in turn. Every acknowledged start
//! completes or compensates, no effect is applied twice, no reservation
//! leaks, and `check-invariants` finds nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::shop::{Shop, checkout};
use common::{Node, ServerProcess};
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{AwaitWorkflowRequest, WorkflowStatus};
use sagaflow_server::store::Store as _;
use sagaflow_store_postgres::PostgresStore;
use sagaflow_store_postgres::testing::TestDb;
use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use sagaflow_workflows::{SagaDefinition, Step};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The bound on a takeover: a dead node's lease runs out (5 s)
/// and a standby, asking every second, takes the store and recovers.
const TAKEOVER: Duration = Duration::from_secs(10);

impl Node {
    /// Starts it; the handle resolves once it serves (a standby waits).
    fn start(&self, db: &TestDb, within: Duration) -> JoinHandle<ServerProcess> {
        self.start_with(db, within, &[])
    }

    fn start_with(&self, db: &TestDb, within: Duration, extra: &[&str]) -> JoinHandle<ServerProcess> {
        self.start_on(&db.url, within, extra)
    }

    /// Starts it on the store at `url`.
    fn start_on(&self, url: &str, within: Duration, extra: &[&str]) -> JoinHandle<ServerProcess> {
        let (dir, listen) = (self.dir.clone(), self.listen.clone());
        let args: Vec<String> =
            ["--store", url, "--placement", "one-node"].iter().chain(extra).map(|a| (*a).to_owned()).collect();
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ServerProcess::start_standby(&dir, &listen, &args, within).await
        })
    }
}

/// A file with one saga definition, `name`, of one step on `activity`; the
/// arguments that apply it at start.
fn one_step_saga(root: &Path, name: &str, activity: &str) -> [String; 2] {
    let definition = SagaDefinition::builder(name, 1).step(Step::activity("only", activity)).build().unwrap();
    let file = root.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_string(&[definition]).unwrap()).unwrap();
    ["--definitions".to_owned(), file.to_str().unwrap().to_owned()]
}

/// A worker that completes `test.quick` at once, connected to `servers`.
fn quick_worker(servers: &str, token: Option<&str>) -> JoinHandle<()> {
    let mut builder = Worker::builder(servers.to_owned());
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let worker = builder
        .activity("test.quick", |_ctx: ActivityContext, _input: Value| async { Ok::<_, ActivityError>(json!({})) })
        .build()
        .unwrap();
    tokio::spawn(async move {
        let _ = worker.run().await;
    })
}

/// What `sagaflow cluster status` says: the serving address and epoch of
/// the cluster's `shards` shards, which move together, and the addresses
/// of the nodes alive (seen within 2.5 s).
async fn cluster_status(db: &TestDb, shards: usize) -> (Option<String>, u64, Vec<String>) {
    let output = tokio::process::Command::new(common::BIN)
        .args(["cluster", "status", "--store", &db.url, "--output", "json"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["placement"], "one-node", "{status}");
    let all = status["shards"].as_array().unwrap();
    assert_eq!(all.len(), shards, "{status}");
    let shard = &all[0];
    assert_eq!(shard["shard"], 0, "{status}");
    for other in all {
        let held = |s: &Value| (s["address"].clone(), s["epoch"].clone(), s["served"].clone());
        assert_eq!(held(other), held(shard), "one node holds every shard, each at the same epoch: {status}");
    }
    let address = shard["served"].as_bool().unwrap().then(|| shard["address"].as_str().unwrap().to_owned());
    let mut alive: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| node["alive"] == true)
        .map(|node| node["address"].as_str().unwrap().to_owned())
        .collect();
    alive.sort();
    (address, shard["epoch"].as_u64().unwrap(), alive)
}

/// The answer of the first `call` that is not refused UNAVAILABLE: the
/// client's connection, forwarded by a standby that has since taken over,
/// is gone, so the first calls after a takeover may fail.
async fn once_served<T, F>(mut call: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for _ in 0..50 {
        match call().await {
            Ok(answer) => return answer.into_inner(),
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the client was not served within 5 s of the takeover");
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// The error output of a node started with `args` on `dir`, which must
/// refuse to start (exit 1) within 30 s; `why` names what it was given.
async fn refused_start(dir: &Path, args: &[&str], why: &str) -> String {
    let start = tokio::process::Command::new(common::BIN)
        .args(["server", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .kill_on_drop(true)
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(30), start)
        .await
        .unwrap_or_else(|_| panic!("a node with {why} started"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    stderr
}

/// Of two standbys, the one that takes over; the other keeps waiting.
async fn first_to_serve(
    mut a: JoinHandle<ServerProcess>,
    mut b: JoinHandle<ServerProcess>,
) -> (ServerProcess, JoinHandle<ServerProcess>) {
    tokio::select! {
        served = &mut a => (served.unwrap(), b),
        served = &mut b => (served.unwrap(), a),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_takes_over_and_a_woken_zombie_cannot_write() {
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let nodes = [Node::new(root.path(), "a"), Node::new(root.path(), "b"), Node::new(root.path(), "c")];
    let all = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");

    let first = nodes[0].start(&db, Duration::from_secs(30)).await.unwrap();
    // Long enough to stand by through the whole test.
    let standbys = (nodes[1].start(&db, Duration::from_secs(300)), nodes[2].start(&db, Duration::from_secs(300)));
    let shop = Shop::workers_for(&all).await;

    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (acked, done, all) = (Arc::clone(&acked), Arc::clone(&done), all.clone());
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for i in (0..2_000).take_while(|_| !done.load(Ordering::Relaxed)) {
                let (all, acked) = (all.clone(), Arc::clone(&acked));
                calls.push(tokio::spawn(async move {
                    let request_id = format!("ha-{i}");
                    let sku = ["sku-mug", "sku-tee", "sku-cap"][i % 3];
                    // Only a start the serving node said yes to was promised.
                    let Ok(channel) = common::channel_to_any(&all).await else { return };
                    let mut client = CheckoutServiceClient::new(channel);
                    if let Ok(answer) = client.start_checkout(checkout(&request_id, "kim", &[(sku, 1)])).await {
                        acked.lock().unwrap().insert(request_id, answer.into_inner().checkout_id);
                    }
                }));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for call in calls {
                let _ = call.await;
            }
        })
    };

    // 1. kill -9 the serving node: a standby serves within the bound.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let killed_at = Instant::now();
    first.kill9().await;
    let (second, third) = first_to_serve(standbys.0, standbys.1).await;
    let takeover = killed_at.elapsed();
    assert!(takeover < TAKEOVER, "the store was served again after {takeover:?}");

    // 2. Pause it past its lease: the third node takes over. Woken, the
    //    paused node finds its epoch fenced off and stops, non-zero.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let paused_at = Instant::now();
    signal(second.pid(), "STOP");
    let third = tokio::time::timeout(TAKEOVER, third).await.expect("no takeover from a paused node").unwrap();
    let paused_takeover = paused_at.elapsed();
    signal(second.pid(), "CONT");
    let logs = second.logs.clone();
    let status = second.exited(Duration::from_secs(15)).await;
    assert!(!status.success(), "a fenced-off node must not end as if all were well: {status}");
    logs.await_line("from the zombie saying why it stopped", Duration::from_secs(10), |l| l.contains("fenced off"))
        .await;

    // 3. The first node, started again, stands by; kill -9 the third and it serves.
    let again = nodes[0].start(&db, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let killed_at = Instant::now();
    third.kill9().await;
    let last = again.await.unwrap();
    let second_takeover = killed_at.elapsed();
    assert!(second_takeover < TAKEOVER, "the store was served again after {second_takeover:?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    println!(
        "takeovers after kill -9: {takeover:?}, {second_takeover:?}; after SIGSTOP: {paused_takeover:?}; {} acknowledged starts",
        acked.len()
    );
    assert!(acked.len() >= 30, "starts were acknowledged between the failovers: {}", acked.len());
    shop.assert_acknowledged_checkouts_ended_once(&acked).await;
    drop(last);
}

/// A task a worker holds when its node dies is finished once, by the node
/// that takes over. The lease key is the cluster's, kept in the database, so
/// the new node recognises the token the worker claims the task with when it
/// reconnects; with a key per node it refused the claim and ran the attempt
/// again after the reclaim grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_held_through_a_takeover_is_finished_once_by_the_new_node() {
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let nodes = [Node::new(root.path(), "a"), Node::new(root.path(), "b")];
    let all = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
    let definitions = one_step_saga(root.path(), "held", "test.held");
    let extra = definitions.each_ref().map(String::as_str);
    let first = nodes[0].start_with(&db, Duration::from_secs(30), &extra).await.unwrap();
    let standby = nodes[1].start_with(&db, Duration::from_secs(120), &extra);

    let runs = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let worker = Worker::builder(all.clone())
        .worker_id("holder")
        .activity("test.held", {
            let runs = Arc::clone(&runs);
            move |_ctx: ActivityContext, _input: Value| {
                let (runs, mut released) = (Arc::clone(&runs), released.clone());
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    released.wait_for(|r| *r).await.map_err(|e| ActivityError::retryable("Released", e.to_string()))?;
                    Ok::<_, ActivityError>(json!({ "done": true }))
                }
            }
        })
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run());

    let mut client = first.client().await;
    let id =
        client.start_workflow(common::start_request("held", "held-1", "{}")).await.unwrap().into_inner().workflow_id;
    common::wait_until_leased(&mut client, &id, "only").await;
    // The lease is a hint that rides the next transaction: wait until it is
    // in the database, where the next node will find it.
    let reader = PostgresStore::connect(&db.url).await.unwrap();
    common::nats::wait_until(Duration::from_secs(10), "the lease in the database", || async {
        reader.leases(None, 10).await.unwrap().iter().any(|(wf, _, _)| *wf == id)
    })
    .await;
    first.kill9().await;
    let second = tokio::time::timeout(TAKEOVER, standby).await.expect("no takeover").unwrap();
    release.send_replace(true);

    let mut client = second.client().await;
    let answer = client
        .await_workflow(AwaitWorkflowRequest { workflow_id: id.clone(), timeout_ms: 30_000 })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.terminal, "{id} did not end: {answer:?}");
    assert_eq!(answer.summary.as_ref().unwrap().status(), WorkflowStatus::Completed, "{answer:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the attempt the worker held ran once");
    let events = common::full_history(&mut client, &id).await;
    common::assert_each_step_completed_once(&id, &events);
    let names = common::event_names(&events);
    assert!(!names.iter().any(|n| n.contains("TimedOut") || n.contains("Failed")), "{names:?}");
    running.abort();
}

/// A node whose connections to the database break (the database restarted
/// or failed over; here `pg_terminate_backend`) steps down instead of
/// holding the lease while it cannot write: it gives the lease up and exits
/// non-zero, saying why, and the standby serves at once. Every start either
/// node acknowledged completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_database_connections_break_steps_down_for_a_standby() {
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let nodes = [Node::new(root.path(), "a"), Node::new(root.path(), "b")];
    let all = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
    let definitions = one_step_saga(root.path(), "quick", "test.quick");
    let extra = definitions.each_ref().map(String::as_str);
    // Each node names its connections, so that the test ends only the first's.
    let named =
        |name: &str| format!("{}{}application_name={name}", db.url, if db.url.contains('?') { '&' } else { '?' });
    let first = nodes[0].start_on(&named("node-a"), Duration::from_secs(30), &extra).await.unwrap();
    let standby = nodes[1].start_on(&named("node-b"), Duration::from_secs(120), &extra);
    let running = quick_worker(&all, None);

    let mut client = first.client().await;
    let mut acknowledged = vec![client.start_workflow(common::start_request("quick", "before", "{}")).await.unwrap()];
    let admin = sagaflow_store_postgres::testing::connect(&db.url).await;
    let ended: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'node-a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ended >= 5, "the writer's and the readers' connections were ended: {ended}");
    let broken_at = Instant::now();
    // A start in the moment of the break may still be acknowledged; one
    // that was must not be lost.
    if let Ok(started) = client.start_workflow(common::start_request("quick", "during", "{}")).await {
        acknowledged.push(started);
    }

    let logs = first.logs.clone();
    let status = first.exited(Duration::from_secs(15)).await;
    assert!(!status.success(), "a node that cannot write must not end as if all were well: {status}");
    logs.await_line("saying the connection broke", Duration::from_secs(10), |l| {
        l.contains("stopped serving") && l.contains("connection to PostgreSQL broke")
    })
    .await;
    let second = tokio::time::timeout(TAKEOVER, standby).await.expect("no takeover").unwrap();
    let takeover = broken_at.elapsed();
    println!("served again {takeover:?} after the first node's connections broke");
    // It gave the lease up rather than letting it run out.
    assert!(takeover < Duration::from_secs(4), "the standby served after {takeover:?}");

    let mut client = second.client().await;
    acknowledged.push(client.start_workflow(common::start_request("quick", "after", "{}")).await.unwrap());
    for started in acknowledged {
        let id = started.into_inner().workflow_id;
        let answer = client
            .await_workflow(AwaitWorkflowRequest { workflow_id: id.clone(), timeout_ms: 30_000 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.summary.as_ref().unwrap().status(), WorkflowStatus::Completed, "{id}: {answer:?}");
        common::assert_each_step_completed_once(&id, &common::full_history(&mut client, &id).await);
    }
    running.abort();
}

/// Any node takes any call: a standby listens and forwards every call and
/// worker session to the node that serves, which checks their tokens. A
/// client and a worker given only the standby's address are served through
/// it; when the serving node dies, the standby takes over and serves them
/// itself, on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_forwards_calls_and_worker_sessions_to_the_serving_node() {
    use common::secure::{CLIENT, OPERATOR, WORKER, raw_call, with_token, write_auth_file};
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let nodes = [Node::new(root.path(), "a"), Node::new(root.path(), "b")];
    let [definitions, file] = one_step_saga(root.path(), "quick", "test.quick");
    let auth = write_auth_file(root.path());
    let extra = [definitions.as_str(), file.as_str(), "--auth-file", auth.to_str().unwrap()];
    // The first node creates the cluster with 4 shards; the standby, given
    // no count, takes the cluster's.
    let first_extra = [&extra[..], &["--shards", "4"]].concat();
    let first = nodes[0].start_with(&db, Duration::from_secs(30), &first_extra).await.unwrap();
    let standby = nodes[1].start_with(&db, Duration::from_secs(120), &extra);
    let through = nodes[1].url();
    // A node asking for another count is refused: placement depends on it.
    let stderr = refused_start(&root.path().join("c"), &["--shards", "16", "--store", &db.url], "--shards 16").await;
    assert!(stderr.contains("created with 4 shards"), "says the cluster's count: {stderr}");

    // The standby's health check answers for the node that serves.
    common::nats::wait_until(Duration::from_secs(20), "a health check through the standby", || async {
        let Ok(channel) = tonic::transport::Channel::from_shared(through.clone()).unwrap().connect().await else {
            return false;
        };
        let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
        let answer = tonic_health::pb::health_client::HealthClient::new(channel).check(request).await;
        answer.is_ok_and(|a| a.into_inner().status == 1)
    })
    .await;
    let running = quick_worker(&through, Some(WORKER));
    let channel = tonic::transport::Channel::from_shared(through.clone()).unwrap().connect().await.unwrap();
    // The serving node checks the token of a forwarded call.
    let refused = raw_call(&channel, "/sagaflow.v1.WorkflowService/ListWorkflows", None).await;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let bearer: tonic::metadata::AsciiMetadataValue = format!("Bearer {CLIENT}").parse().unwrap();
    let mut client = WorkflowServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", bearer.clone());
        Ok(request)
    });
    let before = client.start_workflow(common::start_request("quick", "via-standby", "{}")).await.unwrap().into_inner();
    let answer = client
        .await_workflow(AwaitWorkflowRequest { workflow_id: before.workflow_id.clone(), timeout_ms: 30_000 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.summary.as_ref().unwrap().status(), WorkflowStatus::Completed, "{answer:?}");
    // The serving node ran it: the standby has no runtime of its own.
    let described = first
        .client()
        .await
        .describe_workflow(with_token(
            sagaflow_proto::v1::DescribeWorkflowRequest { workflow_id: before.workflow_id.clone() },
            Some(CLIENT),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.summary.unwrap().status(), WorkflowStatus::Completed);
    let mut both = vec![nodes[0].listen.clone(), nodes[1].listen.clone()];
    both.sort();
    // The standby writes its row when it first asks for the lease.
    common::nats::wait_until(Duration::from_secs(10), "`cluster status` shows both nodes alive", || async {
        cluster_status(&db, 4).await.2 == both
    })
    .await;
    let (serving, epoch, _) = cluster_status(&db, 4).await;
    assert_eq!(serving.as_deref(), Some(nodes[0].listen.as_str()), "`cluster status` names the serving node");
    // The serving node's metrics say how many shards it holds, and at which epochs.
    let shard_metrics = |text: &str| {
        let epochs: Vec<Option<f64>> = (0..4)
            .map(|shard| common::metric_where(text, "sagaflow_store_epoch", &[("shard", &shard.to_string())]))
            .collect();
        let shards = |name| common::metric_where(text, name, &[]);
        (shards("sagaflow_shards_held"), shards("sagaflow_cluster_shards"), epochs)
    };
    let held = shard_metrics(&common::scrape_as(&first.http, OPERATOR).await);
    assert_eq!(held, (Some(4.0), Some(4.0), vec![Some(epoch as f64); 4]));

    let killed_at = Instant::now();
    first.kill9().await;
    let second = tokio::time::timeout(TAKEOVER, standby).await.expect("no takeover").unwrap();
    println!("the standby served {:?} after the kill", killed_at.elapsed());
    let (serving, after_takeover, alive) = cluster_status(&db, 4).await;
    assert_eq!(serving.as_deref(), Some(nodes[1].listen.as_str()), "`cluster status` names the new node");
    assert_eq!(after_takeover, epoch + 1, "a takeover raises the epoch by one");
    let held = shard_metrics(&common::scrape_as(&second.http, OPERATOR).await);
    assert_eq!(held, (Some(4.0), Some(4.0), vec![Some(after_takeover as f64); 4]));
    assert_eq!(alive, [nodes[1].listen.clone()], "the killed node is no longer seen");
    // The same client, on the same address, now served by the node itself.
    let after = once_served(|| {
        let mut client = client.clone();
        async move { client.start_workflow(common::start_request("quick", "after-takeover", "{}")).await }
    })
    .await;
    for id in [&before.workflow_id, &after.workflow_id] {
        let answer = client
            .await_workflow(AwaitWorkflowRequest { workflow_id: id.clone(), timeout_ms: 30_000 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.summary.as_ref().unwrap().status(), WorkflowStatus::Completed, "{id}: {answer:?}");
    }
    running.abort();
    drop(second);
}

/// With TLS on the API and `--tls-peer-ca`, a standby listens too: it
/// accepts with its own certificate (requiring the client's, as the serving
/// node does) and forwards over TLS, checking the serving node's certificate
/// against the peers' CA and showing its own. A worker and a client given
/// only the standby's address are served through it; when the serving node
/// dies, the standby serves them itself, with TLS, on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_standby_forwards_over_tls_and_then_serves_on_the_same_address() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let pki = common::secure::Pki::write(root.path());
    let nodes = [Node::new(root.path(), "a"), Node::new(root.path(), "b")];
    let mut args = one_step_saga(root.path(), "quick", "test.quick").to_vec();
    args.extend(pki.server_args());
    args.extend(["--tls-peer-ca".to_owned(), pki.ca.to_str().unwrap().to_owned()]);
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = nodes[0].start_with(&db, Duration::from_secs(30), &extra).await.unwrap();
    assert!(first.url.starts_with("https://"), "{}", first.url);
    let standby = nodes[1].start_with(&db, Duration::from_secs(120), &extra);

    let pem = |path: &PathBuf| std::fs::read(path).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem(&pki.ca)))
        .identity(Identity::from_pem(pem(&pki.client_cert), pem(&pki.client_key)));
    let through = format!("https://{}", nodes[1].listen);
    let endpoint = tonic::transport::Channel::from_shared(through.clone()).unwrap().tls_config(tls.clone()).unwrap();
    // The standby's health check answers for the node that serves.
    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        if let Ok(channel) = endpoint.connect().await {
            let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
            let answer = tonic_health::pb::health_client::HealthClient::new(channel.clone()).check(request).await;
            if answer.is_ok_and(|a| a.into_inner().status == 1) {
                break channel;
            }
        }
        assert!(Instant::now() < deadline, "no TLS health check through the standby within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut client = WorkflowServiceClient::new(channel);
    let worker = Worker::builder(through.clone())
        .tls(tls.clone())
        .activity("test.quick", |_ctx: ActivityContext, _input: Value| async { Ok::<_, ActivityError>(json!({})) })
        .build()
        .unwrap();
    let running = tokio::spawn(async move {
        let _ = worker.run().await;
    });

    let before = client.start_workflow(common::start_request("quick", "tls-before", "{}")).await.unwrap().into_inner();
    let request = |id: &str| AwaitWorkflowRequest { workflow_id: id.to_owned(), timeout_ms: 30_000 };
    let answer = client.await_workflow(request(&before.workflow_id)).await.unwrap().into_inner();
    assert_eq!(answer.summary.as_ref().unwrap().status(), WorkflowStatus::Completed, "{answer:?}");
    assert!(!standby.is_finished(), "the standby still stands by: the first node ran it");

    first.kill9().await;
    let second = tokio::time::timeout(TAKEOVER, standby).await.expect("no takeover").unwrap();
    assert_eq!(second.url, through, "the standby serves on the address it forwarded from");
    let after = once_served(|| {
        let mut client = client.clone();
        async move { client.start_workflow(common::start_request("quick", "tls-after", "{}")).await }
    })
    .await;
    let answer = client.await_workflow(request(&after.workflow_id)).await.unwrap().into_inner();
    assert_eq!(answer.summary.as_ref().unwrap().status(), WorkflowStatus::Completed, "{answer:?}");
    running.abort();
    drop(second);

    // A node whose certificate is good for serving only could not show it
    // to the others, which require client certificates: it does not start.
    let serving_only = [
        "--store",
        db.url.as_str(),
        "--tls-cert",
        pki.serving_only_cert.to_str().unwrap(),
        "--tls-key",
        pki.serving_only_key.to_str().unwrap(),
        "--tls-client-ca",
        pki.ca.to_str().unwrap(),
        "--tls-peer-ca",
        pki.ca.to_str().unwrap(),
    ];
    let stderr = refused_start(&root.path().join("c"), &serving_only, "a certificate good for serving only").await;
    assert!(stderr.contains("clientAuth"), "says what the certificate lacks: {stderr}");
}

/// A node restarted at its own address while its old lease still runs finds
/// that lease naming its own address: a call it gets meanwhile is refused
/// (UNAVAILABLE), not forwarded round to itself, and once the old lease ran
/// out it takes the store and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_at_its_own_address_does_not_forward_to_itself() {
    let db = TestDb::create().await;
    let root = tempfile::tempdir().unwrap();
    let node = Node::new(root.path(), "a");
    node.start(&db, Duration::from_secs(30)).await.unwrap().kill9().await;
    let again = node.start(&db, Duration::from_secs(30));

    let health = |url: String| async move {
        let channel =
            tonic::transport::Channel::from_shared(url).unwrap().connect().await.map_err(|e| e.to_string())?;
        let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
        tonic_health::pb::health_client::HealthClient::new(channel).check(request).await.map_err(|s| format!("{s:?}"))
    };
    common::nats::wait_until(Duration::from_secs(10), "a refusal from the restarted node", || async {
        health(node.url()).await.is_err_and(|e| e.contains("Unavailable") && e.contains("stands by too"))
    })
    .await;
    let served = tokio::time::timeout(TAKEOVER, again).await.expect("the old lease never ran out").unwrap();
    assert_eq!(health(node.url()).await.unwrap().into_inner().status, 1, "SERVING once it holds the store");
    drop(served);
}
