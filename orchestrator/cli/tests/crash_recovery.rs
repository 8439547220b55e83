//! `kill -9` under load: every acknowledged start and signal survives, every
//! history stays contiguous, and nothing is duplicated.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    ServerProcess, WorkerProcess, assert_each_step_completed_once, assert_intact, await_end, full_history,
    start_request, status_of,
};
use rand::{Rng, SeedableRng};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{ListWorkflowsRequest, SignalWorkflowRequest};

const KILLS: usize = 20;
const CLIENTS: usize = 8;
const MIN_STARTS: usize = 500;
/// Starts per client per round: enough to be mid-flight at the kill, few
/// enough that verifying every one after each restart stays quick.
const STARTS_PER_ROUND: usize = 8;

/// What the server acknowledged for one request id.
#[derive(Clone)]
struct Started {
    workflow_id: String,
    input: String,
    signals: Vec<String>,
}

#[derive(Default)]
struct Acked {
    starts: HashMap<String, Started>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_kill_dash_nine() {
    let seed: u64 = std::env::var("SAGAFLOW_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("seed {seed} (set SAGAFLOW_TEST_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut verified: HashSet<String> = HashSet::new();

    // One worker for the whole run: it reconnects after every kill, so the
    // sagas really run while the server dies under them.
    let first = ServerProcess::start(dir.path(), &[]).await;
    let url = first.url.clone();
    let _worker = WorkerProcess::start(&url, &["--activity-latency-ms", "5"]).await;
    let mut first = Some(first);
    // At least KILLS kills, and as many more as it takes to acknowledge
    // MIN_STARTS starts on a slow machine.
    let mut kills = 0;
    for round in 0..KILLS * 5 {
        if round >= KILLS && acked.lock().unwrap().starts.len() >= MIN_STARTS {
            break;
        }
        kills += 1;
        let server = match first.take() {
            Some(server) => server,
            None => ServerProcess::start_on(dir.path(), &url, &[]).await,
        };
        // Everything acknowledged before this restart is still there.
        verify(&server, &acked, &mut verified).await;

        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let mut client = server.client().await;
            let acked = Arc::clone(&acked);
            clients.push(tokio::spawn(async move {
                for n in 0..STARTS_PER_ROUND {
                    let request_id = format!("r{round}-c{c}-n{n}");
                    let input = format!(r#"{{"round":{round},"client":{c},"n":{n}}}"#);
                    let Ok(response) = client.start_workflow(start_request("bench", &request_id, &input)).await else {
                        return;
                    };
                    let workflow_id = response.into_inner().workflow_id;
                    acked.lock().unwrap().starts.insert(
                        request_id.clone(),
                        Started { workflow_id: workflow_id.clone(), input, signals: Vec::new() },
                    );
                    for s in 0..2 {
                        let name = format!("sig-{s}");
                        let signal = SignalWorkflowRequest {
                            workflow_id: workflow_id.clone(),
                            name: name.clone(),
                            ..Default::default()
                        };
                        if client.signal_workflow(signal).await.is_err() {
                            return;
                        }
                        acked.lock().unwrap().starts.get_mut(&request_id).unwrap().signals.push(name);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..80))).await;
        server.kill9().await;
        for client in clients {
            client.await.unwrap();
        }
    }

    let server = ServerProcess::start_on(dir.path(), &url, &[]).await;
    verify(&server, &acked, &mut HashSet::new()).await;
    let total = acked.lock().unwrap().starts.len();
    assert!(total >= MIN_STARTS, "only {total} starts were acknowledged over {kills} kills");

    // No duplicates: every listed workflow has its own request id.
    let mut client = server.client().await;
    let mut request_ids = HashSet::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_workflows(ListWorkflowsRequest { page_size: 1000, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        for summary in page.workflows {
            assert!(
                request_ids.insert(summary.request_id.clone()),
                "request id {} started two workflows",
                summary.request_id
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(request_ids.len() >= total);

    // Every acknowledged saga finishes, and no step completed twice.
    let starts: Vec<Started> = acked.lock().unwrap().starts.values().cloned().collect();
    for started in starts {
        let end = await_end(&mut client, &started.workflow_id).await;
        assert_eq!(status_of(&end), "COMPLETED", "{}", started.workflow_id);
        let events = full_history(&mut client, &started.workflow_id).await;
        assert_each_step_completed_once(&started.workflow_id, &events);
    }
    println!("{total} acknowledged starts survived {kills} kill -9s; {} workflows in all", request_ids.len());
}

async fn verify(server: &ServerProcess, acked: &Arc<Mutex<Acked>>, verified: &mut HashSet<String>) {
    let snapshot: Vec<(String, Started)> =
        acked.lock().unwrap().starts.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut client = server.client().await;
    for (request_id, Started { workflow_id, input, signals }) in snapshot {
        // A round's workflows change only in that round: check each once
        // after the kill that ended it (and all of them again at the end).
        if verified.contains(&request_id) {
            continue;
        }
        let again = client.start_workflow(start_request("bench", &request_id, &input)).await.unwrap().into_inner();
        assert_eq!(again.workflow_id, workflow_id, "request {request_id} maps to another workflow after a restart");
        assert!(again.already_started);
        let events = full_history(&mut client, &workflow_id).await;
        assert_intact(&workflow_id, &events);
        let received: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.attributes {
                Some(Attributes::SignalReceived(s)) => Some(s.name.clone()),
                _ => None,
            })
            .collect();
        for name in &signals {
            assert!(received.contains(name), "{workflow_id}: acknowledged signal {name} is lost");
        }
        let unique: HashSet<&String> = received.iter().collect();
        assert_eq!(unique.len(), received.len(), "{workflow_id}: a signal was recorded twice");
        verified.insert(request_id);
    }
}
