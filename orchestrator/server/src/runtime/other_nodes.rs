//! What a runtime asks of the node serving a shard it does not serve
//! (ADR 0030). Workflows are written only where their shard is served;
//! reading one is possible anywhere (the store is shared). So a runtime
//! that must start a workflow in another shard (a child saga, or a
//! checkout that arrived here) or have a child there undo its steps asks
//! that shard's node, through the node service; and a wait for such a
//! workflow's progress reads the store every [`POLL`], since its decisions
//! wake no one here.

use std::sync::Arc;
use std::time::Duration;

use super::{Result, Runtime, StartRequest};

/// How often a wait for a workflow of another node's shard reads it.
pub(super) const POLL: Duration = Duration::from_millis(200);

/// The cluster's other nodes, as the runtime reaches them
/// (`api/node.rs`). Each call goes to the node serving `shard`, which
/// serves it itself or answers [`super::Error::NotServed`].
#[tonic::async_trait]
pub trait OtherNodes: Send + Sync {
    /// Starts `request`, whose workflow id (chosen) is in `shard`, or finds
    /// the workflow its request id started.
    async fn start(&self, shard: u32, request: &StartRequest, version: Option<u32>) -> Result<(String, bool)>;

    /// Has the held child saga `child`, in `shard`, undo its steps.
    async fn compensate_child(&self, shard: u32, child: &str, reason: &str) -> Result<()>;
}

impl Runtime {
    /// Reaches the cluster's other nodes through `nodes` from now on.
    pub fn reach_other_nodes(&self, nodes: Arc<dyn OtherNodes>) {
        if self.inner.other_nodes.set(nodes).is_err() {
            tracing::warn!("the runtime already reaches the other nodes; the second way is ignored");
        }
    }

    /// The shard of `workflow_id` and the way to its node, when another
    /// node serves it (neither served nor being recovered here).
    pub(super) fn elsewhere(&self, workflow_id: &str) -> Option<(u32, &Arc<dyn OtherNodes>)> {
        let shard = self.inner.served.elsewhere(workflow_id)?;
        self.inner.other_nodes.get().map(|nodes| (shard, nodes))
    }
}
