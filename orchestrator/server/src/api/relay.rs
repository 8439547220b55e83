//! A worker's session on one node takes the tasks of every shard (ADR 0030).
//!
//! When the shards are spread over the nodes, the node a worker connects to
//! opens a session of its own, on the worker's behalf and with its token, on
//! each other serving node, and relays: their tasks, acknowledgements and
//! cancellations go down the worker's stream; its outcomes and heartbeats
//! go to the node that serves the workflow's shard (here, or there). Those
//! sessions are marked forwarded, so the nodes they reach serve them alone.
//!
//! The worker's credit is the most tasks it holds at once, and stays so:
//! the relay keeps the credit the worker grants in a pool and hands it to
//! the sources (this node, each other node) a unit at a time, to the one
//! with the least left first, so that a source whose tasks flow is topped
//! up as it spends and an idle one holds at most [`PREFETCH`]. The sum it
//! has handed out and not seen spent never exceeds what the worker
//! granted; a source that goes away gives its unspent credit back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sagaflow_proto::v1::worker_service_client::WorkerServiceClient;
use sagaflow_proto::v1::{Credit, Register, ServerMessage, WorkerMessage, server_message, worker_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

use super::worker::Local;
use crate::forward::Dialer;
use crate::route::ShardMap;
use crate::runtime::dispatch::Outbound;
use crate::runtime::timers::now_ms;

/// The most credit a source holds unspent while others may need it.
const PREFETCH: u32 = 4;
/// How often a session looks for serving nodes it has no session on.
const LOOK_FOR_NODES: Duration = Duration::from_secs(1);
/// Messages queued towards another node.
const UPSTREAM_CAPACITY: usize = 1024;

/// Who serves each shard, and how to reach them.
pub struct Peers {
    map: Arc<ShardMap>,
    dialer: Arc<Dialer>,
}

impl Peers {
    pub fn new(map: Arc<ShardMap>, dialer: Arc<Dialer>) -> Self {
        Self { map, dialer }
    }
}

/// The caller's headers a relayed session carries: its token and its
/// correlation, which the other node checks and logs as its own.
pub(super) fn credentials(metadata: &MetadataMap) -> MetadataMap {
    let mut kept = MetadataMap::new();
    for name in ["authorization", sagaflow_proto::trace_context::CORRELATION_ID_HEADER] {
        if let Some(value) = metadata.get(name) {
            kept.insert(name, value.clone());
        }
    }
    kept
}

/// What a source did, for the relay's accounting.
enum Event {
    /// Handed the worker a task: one unit of its credit spent.
    Delivered(SourceId),
    /// Its session ended, or never opened: its unspent credit comes back.
    Ended(SourceId),
}

type SourceId = u64;
/// This node.
const HERE: SourceId = 0;

struct Source {
    /// `None` for this node.
    address: Option<String>,
    to: Option<mpsc::Sender<WorkerMessage>>,
    /// Credit handed to it and not yet spent.
    unspent: u32,
}

pub(super) struct Relay {
    peers: Arc<Peers>,
    local: Local,
    register: Register,
    credentials: MetadataMap,
    worker: Outbound,
    sources: BTreeMap<SourceId, Source>,
    next: SourceId,
    /// When a session on a node last ended or failed to open: it is not
    /// tried again for [`LOOK_FOR_NODES`].
    failed: HashMap<String, Instant>,
    pool: u32,
    events: (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
}

impl Relay {
    pub(super) fn new(
        peers: Arc<Peers>,
        local: Local,
        register: Register,
        credentials: MetadataMap,
        worker: Outbound,
    ) -> Self {
        let here = Source { address: None, to: None, unspent: 0 };
        Self {
            peers,
            local,
            register,
            credentials,
            worker,
            sources: BTreeMap::from([(HERE, here)]),
            next: HERE + 1,
            failed: HashMap::new(),
            pool: 0,
            events: mpsc::unbounded_channel(),
        }
    }

    /// Relays until the worker's stream ends.
    pub(super) async fn run(
        mut self,
        mut inbound: Streaming<WorkerMessage>,
        local_tasks: mpsc::Receiver<Result<ServerMessage, Status>>,
    ) {
        tokio::spawn(pass_down(HERE, ReceiverStream::new(local_tasks), self.worker.clone(), self.events.0.clone()));
        self.connect_new_nodes();
        let mut look = tokio::time::interval(LOOK_FOR_NODES);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(WorkerMessage { message: Some(message) })) => {
                        if !self.worker_said(message).await {
                            break;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                Some(event) = self.events.1.recv() => self.account(event),
                _ = look.tick() => self.connect_new_nodes(),
            }
        }
        // Dropping the senders ends the sessions on the other nodes.
        self.sources.clear();
        self.local.close();
    }

    async fn worker_said(&mut self, message: worker_message::Message) -> bool {
        let workflow_id = match &message {
            worker_message::Message::Credit(credit) => {
                self.pool = self.pool.saturating_add(credit.tasks);
                self.hand_out();
                return true;
            }
            worker_message::Message::Register(_) => return self.local.handle(message).await,
            worker_message::Message::Outcome(outcome) => outcome.workflow_id.clone(),
            worker_message::Message::Heartbeat(beat) => beat.workflow_id.clone(),
        };
        match self.source_serving(&workflow_id) {
            Some(to) => {
                if to.send(WorkerMessage { message: Some(message) }).await.is_err() {
                    // That node went away: the worker keeps an unacknowledged
                    // outcome and sends it again after a reconnect.
                    tracing::debug!(%workflow_id, "the node serving a relayed outcome went away");
                }
                true
            }
            None => self.local.handle(message).await,
        }
    }

    /// The session on the node serving `workflow_id`'s shard, when that is
    /// another node's; `None` to handle it here (this node serves it, or no
    /// node does, or that node cannot be reached, and this one says so).
    fn source_serving(&mut self, workflow_id: &str) -> Option<mpsc::Sender<WorkerMessage>> {
        let runtime = &self.local.runtime;
        let shard = runtime.shard_of(workflow_id);
        if runtime.serves_shard(shard) {
            return None;
        }
        let address = self.peers.map.owner(shard)?;
        let id = match self.source_at(&address) {
            Some(id) => id,
            None => self.connect(address)?,
        };
        self.sources.get(&id).and_then(|s| s.to.clone())
    }

    fn source_at(&self, address: &str) -> Option<SourceId> {
        self.sources.iter().find(|(_, s)| s.address.as_deref() == Some(address)).map(|(id, _)| *id)
    }

    fn account(&mut self, event: Event) {
        match event {
            Event::Delivered(id) => {
                if let Some(source) = self.sources.get_mut(&id) {
                    source.unspent = source.unspent.saturating_sub(1);
                }
            }
            Event::Ended(id) => {
                if let Some(source) = self.sources.remove(&id) {
                    self.pool = self.pool.saturating_add(source.unspent);
                    if let Some(address) = source.address {
                        self.failed.insert(address, Instant::now());
                    }
                }
            }
        }
        self.hand_out();
    }

    /// Hands the pool out a unit at a time, to the source with the least
    /// unspent credit, while that is under [`PREFETCH`].
    fn hand_out(&mut self) {
        let mut granted: BTreeMap<SourceId, u32> = BTreeMap::new();
        while self.pool > 0 {
            let Some((id, source)) = self.sources.iter_mut().min_by_key(|(_, s)| s.unspent) else { break };
            if source.unspent >= PREFETCH {
                break;
            }
            source.unspent += 1;
            *granted.entry(*id).or_default() += 1;
            self.pool -= 1;
        }
        for (id, tasks) in granted {
            let Some(source) = self.sources.get(&id) else { continue };
            match &source.to {
                None => self.local.runtime.dispatch().grant(self.local.session, tasks, now_ms()),
                Some(to) => {
                    let credit = WorkerMessage { message: Some(worker_message::Message::Credit(Credit { tasks })) };
                    if to.try_send(credit).is_err() {
                        // Full or gone: its end gives the credit back.
                        tracing::debug!(address = ?source.address, "could not relay credit");
                    }
                }
            }
        }
    }

    /// Opens a session on each serving node this one has none on.
    fn connect_new_nodes(&mut self) {
        let runtime = &self.local.runtime;
        let owners = self.peers.map.owners();
        let own: Vec<&String> = owners
            .iter()
            .enumerate()
            .filter(|(shard, _)| u32::try_from(*shard).is_ok_and(|shard| runtime.serves_shard(shard)))
            .filter_map(|(_, owner)| owner.as_ref())
            .collect();
        let mut others: Vec<String> = owners.iter().flatten().filter(|o| !own.contains(o)).cloned().collect();
        others.sort();
        others.dedup();
        for address in others {
            if self.source_at(&address).is_none() {
                self.connect(address);
            }
        }
    }

    /// Opens, in the background, a session on the node at `address` for
    /// this worker, claiming the tasks it held there; `None` when that node
    /// failed a moment ago.
    fn connect(&mut self, address: String) -> Option<SourceId> {
        if self.failed.get(&address).is_some_and(|at| at.elapsed() < LOOK_FOR_NODES) {
            return None;
        }
        let channel = match self.peers.dialer.channel(&address) {
            Ok(channel) => channel,
            Err(e) => {
                tracing::warn!(%address, error = %e, "cannot relay a worker's session");
                self.failed.insert(address, Instant::now());
                return None;
            }
        };
        let (map, count) = (&self.peers.map, self.local.runtime.shard_count());
        let there = |workflow_id: &str| map.owner(crate::store::shard_of(workflow_id, count));
        let held = self.register.held.iter().filter(|t| there(&t.workflow_id).as_deref() == Some(address.as_str()));
        let register = Register { held: held.cloned().collect(), ..self.register.clone() };
        let (to, from_relay) = mpsc::channel(UPSTREAM_CAPACITY);
        let _ = to.try_send(WorkerMessage { message: Some(worker_message::Message::Register(register)) });
        let mut request = tonic::Request::new(ReceiverStream::new(from_relay));
        *request.metadata_mut() = self.credentials.clone();
        crate::forward::mark_forwarded(request.metadata_mut());
        let id = self.next;
        self.next += 1;
        self.sources.insert(id, Source { address: Some(address.clone()), to: Some(to), unspent: 0 });
        let (worker, events, worker_id) = (self.worker.clone(), self.events.0.clone(), self.local.worker_id.clone());
        tokio::spawn(async move {
            let mut client = WorkerServiceClient::new(channel);
            let opened = tokio::time::timeout(OPEN_WITHIN, client.open_session(request));
            match opened.await {
                Ok(Ok(response)) => {
                    tracing::info!(%worker_id, %address, "relaying the worker's session to another node");
                    pass_down(id, response.into_inner(), worker, events).await;
                }
                Ok(Err(status)) => {
                    tracing::warn!(%address, %status, "another node refused a relayed worker session");
                    let _ = events.send(Event::Ended(id));
                }
                Err(_) => {
                    tracing::warn!(%address, "another node did not open a relayed worker session in time");
                    let _ = events.send(Event::Ended(id));
                }
            }
        });
        self.hand_out();
        Some(id)
    }
}

/// How long another node may take to open a relayed session.
const OPEN_WITHIN: Duration = Duration::from_secs(5);

/// Sends a source's messages down the worker's stream, counting its tasks.
async fn pass_down(
    id: SourceId,
    mut from: impl tokio_stream::Stream<Item = Result<ServerMessage, Status>> + Unpin,
    worker: Outbound,
    events: mpsc::UnboundedSender<Event>,
) {
    use tokio_stream::StreamExt;
    while let Some(Ok(message)) = from.next().await {
        match &message.message {
            // The worker has its own from the node it connected to.
            Some(server_message::Message::Registered(_)) | None => continue,
            Some(server_message::Message::Task(_)) => {
                let _ = events.send(Event::Delivered(id));
            }
            Some(_) => {}
        }
        if worker.send(Ok(message)).await.is_err() {
            break;
        }
    }
    let _ = events.send(Event::Ended(id));
}
