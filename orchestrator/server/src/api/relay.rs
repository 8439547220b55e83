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
//! with the least left first (among equals, the one given credit longest
//! ago, so that under load, when every source hovers at none, each gets
//! its share of what comes back),
//! so that a source whose tasks flow is topped up as it spends and an idle
//! one holds at most its fair share of the credit not in use (at least
//! [`PREFETCH`]): with one source, all of it, so that a node that serves
//! every shard dispatches as freely as without the relay. The sum it has handed out and not seen
//! spent never exceeds what the worker granted; a source that goes away
//! gives its unspent credit back.
//!
//! Credit parked on an idle source would starve a busy one once the pool
//! is empty (a worker of concurrency 8 and two idle nodes holding 4 each).
//! So when a source has none left and the pool is empty, the relay takes
//! back ([`Withdraw`]) what an idle source holds beyond one unit; and when
//! the worker has fewer units than there are nodes, the last unit of an
//! idle source moves every [`ROTATE`] to one that has waited that long.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sagaflow_proto::v1::worker_service_client::WorkerServiceClient;
use sagaflow_proto::v1::{
    Credit, Register, ServerMessage, Withdraw, Withdrawn, WorkerMessage, server_message, worker_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

use super::worker::Local;
use crate::forward::Dialer;
use crate::route::ShardMap;
use crate::runtime::dispatch::Outbound;
use crate::runtime::timers::now_ms;

/// The least of the most credit a source may hold unspent: its fair share
/// of the credit not in use, or this if that is less.
const PREFETCH: u32 = 4;
/// How often a session looks again for serving nodes it has no session on
/// (besides whenever the map of who serves what changes), and how long a
/// node whose session failed is left alone.
const LOOK_FOR_NODES: Duration = Duration::from_secs(1);
/// How often credit parked on idle sources is looked at, and how long a
/// source must have neither spent nor been given credit to count as idle.
const IDLE: Duration = Duration::from_millis(250);
/// How long a source with no credit waits before an idle source's last
/// unit moves to it (a worker with fewer units than there are nodes).
const ROTATE: Duration = Duration::from_secs(1);
/// Messages queued towards another node.
const UPSTREAM_CAPACITY: usize = 1024;

/// Who serves each shard, and how to reach them.
pub struct Peers {
    map: Arc<ShardMap>,
    dialer: Arc<Dialer>,
    /// This node's shards move while it runs (`--spread-shards`): a
    /// session opened while it serves every shard relays too, for when it
    /// no longer does.
    pub(super) shards_move: bool,
    /// The address this node's leases name, when it says.
    own_address: Option<String>,
}

impl Peers {
    pub fn new(map: Arc<ShardMap>, dialer: Arc<Dialer>, shards_move: bool, own_address: Option<String>) -> Self {
        Self { map, dialer, shards_move, own_address }
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

/// Where an outcome or heartbeat goes.
enum Route {
    /// This node serves its workflow's shard, or says why not.
    Here,
    /// Another node does, through this relayed session.
    There(SourceId, mpsc::Sender<WorkerMessage>),
    /// No node is known to serve it now.
    Unknown,
}

/// The longest an outcome waits for a node known to serve its workflow
/// (a shard changing hands takes a second or two).
const PARK_AT_MOST: Duration = Duration::from_secs(10);

/// What a source did, for the relay's accounting.
enum Event {
    /// Handed the worker a task (of this workflow, with this id): one unit
    /// of its credit spent.
    Delivered(SourceId, TaskKey),
    /// Its session ended, or never opened: its unspent credit comes back.
    Ended(SourceId),
    /// It gave back this much of its unspent credit, as asked.
    Withdrawn(SourceId, u32),
    /// Its session is open: the node registered the worker.
    Opened(SourceId),
}

type SourceId = u64;
/// A task, by workflow id and task id.
type TaskKey = (String, String);
/// This node.
const HERE: SourceId = 0;

struct Source {
    /// `None` for this node.
    address: Option<String>,
    to: Option<mpsc::Sender<WorkerMessage>>,
    /// Credit handed to it and not yet spent.
    unspent: u32,
    /// A [`Withdraw`] is on its way to it.
    withdrawing: bool,
    /// The node registered the session (this node's always is): what is
    /// sent to one still opening may be lost with it, if the node is dead.
    open: bool,
    /// It has waited [`ROTATE`] without credit: the next unit is its own.
    turn: bool,
    /// When it last handed the worker a task, and was last given credit.
    spent_at: Instant,
    granted_at: Instant,
}

impl Source {
    fn new(address: Option<String>, to: Option<mpsc::Sender<WorkerMessage>>) -> Self {
        let now = Instant::now();
        let open = to.is_none();
        Self { address, to, unspent: 0, withdrawing: false, open, turn: false, spent_at: now, granted_at: now }
    }

    fn idle(&self, now: Instant, for_at_least: Duration) -> bool {
        now.duration_since(self.spent_at) >= for_at_least && now.duration_since(self.granted_at) >= for_at_least
    }
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
    /// Outcomes and heartbeats waiting for a node known to serve them.
    parked: Vec<(Instant, worker_message::Message)>,
    /// Which source handed the worker each task it may still report.
    delivered_by: HashMap<TaskKey, SourceId>,
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
        let here = Source::new(None, None);
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
            parked: Vec::new(),
            delivered_by: HashMap::new(),
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
        // A node that just took shards gets a session at once: its tasks
        // would otherwise wait for the next look.
        let mut map_changed = self.peers.map.changes();
        self.connect_new_nodes();
        let mut look = tokio::time::interval(LOOK_FOR_NODES);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rebalance = tokio::time::interval(IDLE);
        rebalance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                Ok(()) = map_changed.changed() => self.connect_new_nodes(),
                _ = rebalance.tick() => {
                    self.reclaim_idle_credit();
                    if !self.route_parked().await {
                        break;
                    }
                }
            }
        }
        // Dropping the senders ends the sessions on the other nodes.
        self.sources.clear();
        self.local.close();
    }

    async fn worker_said(&mut self, message: worker_message::Message) -> bool {
        match &message {
            worker_message::Message::Credit(credit) => {
                self.pool = self.pool.saturating_add(credit.tasks);
                self.hand_out();
                return true;
            }
            worker_message::Message::Register(_) => return self.local.handle(message).await,
            // A worker has no business withdrawing; it gets what the pool holds.
            worker_message::Message::Withdraw(withdraw) => {
                let tasks = withdraw.tasks.min(self.pool);
                self.pool -= tasks;
                let withdrawn = server_message::Message::Withdrawn(Withdrawn { tasks });
                return self.worker.send(Ok(ServerMessage { message: Some(withdrawn) })).await.is_ok();
            }
            worker_message::Message::Outcome(_) | worker_message::Message::Heartbeat(_) => {}
        }
        self.route(message, Instant::now()).await
    }

    /// Sends an outcome or heartbeat to the node serving its workflow. While
    /// no node is known to (the shard just changed hands, and the map of
    /// who serves what is a second old), it waits here, for at most
    /// [`PARK_AT_MOST`]: refused here, the worker would drop the outcome.
    async fn route(&mut self, message: worker_message::Message, since: Instant) -> bool {
        let task = match &message {
            worker_message::Message::Outcome(outcome) => (outcome.workflow_id.clone(), outcome.task_id.clone()),
            worker_message::Message::Heartbeat(beat) => (beat.workflow_id.clone(), beat.task_id.clone()),
            _ => return self.local.handle(message).await,
        };
        let route = self.route_of(&task);
        if matches!(message, worker_message::Message::Outcome(_)) {
            // A source whose outcomes flow is not idle: its workflows' next
            // steps come from it, and its credit stays.
            let id = match &route {
                Route::There(id, _) => Some(*id),
                Route::Here => Some(HERE),
                Route::Unknown => None,
            };
            if let Some(id) = id {
                self.delivered_by.remove(&task);
                if let Some(source) = self.sources.get_mut(&id) {
                    source.spent_at = Instant::now();
                }
            }
        }
        match route {
            Route::There(_, to) => {
                if to.send(WorkerMessage { message: Some(message) }).await.is_err() {
                    // That node went away: the worker keeps an unacknowledged
                    // outcome and sends it again after a reconnect.
                    tracing::debug!("the node serving a relayed outcome went away");
                }
                true
            }
            Route::Unknown if since.elapsed() < PARK_AT_MOST => {
                self.parked.push((since, message));
                true
            }
            // This node says why it cannot take it.
            Route::Here | Route::Unknown => self.local.handle(message).await,
        }
    }

    /// Routes again what waited for the map of who serves what.
    async fn route_parked(&mut self) -> bool {
        for (since, message) in std::mem::take(&mut self.parked) {
            if !self.route(message, since).await {
                return false;
            }
        }
        true
    }

    /// Where an outcome or heartbeat of `task` goes: here if this node
    /// serves its shard; to the node the map names; while the map names
    /// this node (it is taking the shard, or the map is a second behind),
    /// nowhere yet; while it names no node or one that cannot be reached
    /// (it died a moment ago), to the node that handed the task out.
    fn route_of(&mut self, task: &TaskKey) -> Route {
        let runtime = &self.local.runtime;
        let shard = runtime.shard_of(&task.0);
        if runtime.serves_shard(shard) {
            return Route::Here;
        }
        let mapped = match self.peers.map.owner(shard) {
            Some(address) if self.peers.own_address.as_deref() == Some(address.as_str()) => return Route::Unknown,
            Some(address) => self.source_at(&address).or_else(|| self.connect(address)),
            None => None,
        };
        let open =
            |id: SourceId| self.sources.get(&id).filter(|s| s.open).and_then(|s| s.to.clone()).map(|to| (id, to));
        let there = mapped.and_then(open).or_else(|| {
            let by = self.delivered_by.get(task).copied().filter(|id| *id != HERE)?;
            open(by)
        });
        match there {
            Some((id, to)) => Route::There(id, to),
            None => Route::Unknown,
        }
    }

    fn source_at(&self, address: &str) -> Option<SourceId> {
        self.sources.iter().find(|(_, s)| s.address.as_deref() == Some(address)).map(|(id, _)| *id)
    }

    fn account(&mut self, event: Event) {
        match event {
            Event::Delivered(id, task) => {
                if let Some(source) = self.sources.get_mut(&id) {
                    source.unspent = source.unspent.saturating_sub(1);
                    source.spent_at = Instant::now();
                    self.delivered_by.insert(task, id);
                }
            }
            Event::Opened(id) => {
                if let Some(source) = self.sources.get_mut(&id) {
                    source.open = true;
                }
            }
            Event::Withdrawn(id, tasks) => {
                if let Some(source) = self.sources.get_mut(&id) {
                    let tasks = tasks.min(source.unspent);
                    source.unspent -= tasks;
                    source.withdrawing = false;
                    self.pool = self.pool.saturating_add(tasks);
                }
            }
            Event::Ended(id) => {
                self.delivered_by.retain(|_, by| *by != id);
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
    /// unspent credit, while that is under its fair share of the credit not
    /// in use (at least [`PREFETCH`]). A cap of a few units would make a
    /// source wait for a round trip through the relay every few tasks,
    /// shrinking the batches its store commits.
    fn hand_out(&mut self) {
        let mut granted: BTreeMap<SourceId, u32> = BTreeMap::new();
        let now = Instant::now();
        let sources = u32::try_from(self.sources.len()).unwrap_or(u32::MAX).max(1);
        let not_in_use = self.sources.values().fold(self.pool, |sum, s| sum.saturating_add(s.unspent));
        let most = PREFETCH.max(not_in_use.div_ceil(sources));
        while self.pool > 0 {
            // Among equals, the one whose turn it is, then the one given
            // credit longest ago: under load every source hovers at none,
            // and each must get its share of what comes back.
            let least = self
                .sources
                .iter_mut()
                .filter(|(_, s)| !s.withdrawing)
                .min_by_key(|(_, s)| (s.unspent, !s.turn, s.granted_at));
            let Some((id, source)) = least else { break };
            if source.unspent >= most {
                break;
            }
            source.unspent += 1;
            source.granted_at = now;
            source.turn = false;
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

    /// When a source has no credit left and the pool is empty, takes back
    /// the credit an idle source holds beyond one unit; its last unit too
    /// once the source without has waited [`ROTATE`]. One at a time: the
    /// next look sees what that changed.
    fn reclaim_idle_credit(&mut self) {
        if self.pool > 0 {
            return;
        }
        let now = Instant::now();
        let waiting = self.sources.iter_mut().filter(|(_, s)| s.unspent == 0 && !s.withdrawing);
        let Some((_, longest)) = waiting.max_by_key(|(_, s)| now.duration_since(s.granted_at)) else { return };
        let keep = if now.duration_since(longest.granted_at) >= ROTATE {
            longest.turn = true;
            0
        } else {
            1
        };
        let idle = self
            .sources
            .iter_mut()
            .filter(|(_, s)| !s.withdrawing && s.unspent > keep && s.idle(now, if keep == 0 { ROTATE } else { IDLE }))
            .max_by_key(|(_, s)| s.unspent);
        let Some((id, source)) = idle else { return };
        let tasks = source.unspent - keep;
        match &source.to {
            None => {
                let taken = self.local.runtime.dispatch().withdraw(self.local.session, tasks);
                source.unspent -= taken.min(source.unspent);
                self.pool += taken;
                self.hand_out();
            }
            Some(to) => {
                let withdraw = WorkerMessage { message: Some(worker_message::Message::Withdraw(Withdraw { tasks })) };
                if to.try_send(withdraw).is_ok() {
                    source.withdrawing = true;
                } else {
                    tracing::debug!(source = id, "could not ask for idle credit back");
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
        self.sources.insert(id, Source::new(Some(address.clone()), Some(to)));
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
            Some(server_message::Message::Registered(_)) => {
                let _ = events.send(Event::Opened(id));
                continue;
            }
            None => continue,
            Some(server_message::Message::Task(task)) => {
                let _ = events.send(Event::Delivered(id, (task.workflow_id.clone(), task.task_id.clone())));
            }
            // The answer to the relay's own question: not the worker's.
            Some(server_message::Message::Withdrawn(withdrawn)) => {
                let _ = events.send(Event::Withdrawn(id, withdrawn.tasks));
                continue;
            }
            Some(_) => {}
        }
        if worker.send(Ok(message)).await.is_err() {
            break;
        }
    }
    let _ = events.send(Event::Ended(id));
}
