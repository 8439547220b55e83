//! `sagaflow cluster status`: which node serves each shard of a cluster on
//! PostgreSQL, at which epoch, and for how much longer, read from the
//! database itself, so that it answers when no node does.

use anyhow::Context;
use sagaflow_server::ownership::{address_of, cluster_view};
use sagaflow_server::store::{Placement, ShardLease};
use serde_json::json;

use super::Output;
use super::render::table;
use super::server::parse_store_url;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Who serves each shard: the node, the address standbys forward to, the epoch (it rises at
    /// every takeover) and the time left on its lease. Read from the database, so it answers
    /// while no node serves. Exits 0 once read, whatever it shows.
    Status {
        /// The cluster's database (postgres://…), as given to `server --store`.
        #[arg(long, env = "SAGAFLOW_STORE", hide_env_values = true, value_name = "URL", value_parser = parse_store_url)]
        store: String,
    },
}

fn placement_meaning(placement: Placement) -> &'static str {
    match placement {
        Placement::Spread => "each live node serves a share of the shards",
        Placement::OneNode => "one node serves every shard, the others stand by",
    }
}

/// A node not seen for this long has stopped or is cut off: nodes write
/// every second.
const ALIVE_WITHIN_MS: i64 = 2_500;

pub async fn run(command: ClusterCommand, output: Output) -> anyhow::Result<()> {
    let ClusterCommand::Status { store } = command;
    let view = cluster_view(&store).await.context("cannot read the cluster's state")?;
    let now_ms = view.now_ms;
    let serving: Vec<&str> = view
        .leases
        .iter()
        .filter(|lease| lease.expires_ms > now_ms && !lease.owner.is_empty())
        .map(|lease| lease.owner.as_str())
        .collect();
    match output {
        Output::Json => {
            let shards: Vec<_> = view.leases.iter().map(|lease| shard_json(lease, now_ms)).collect();
            let nodes: Vec<_> = view
                .nodes
                .iter()
                .map(|(owner, seen_ms)| {
                    let (node, address) = parts(owner);
                    let ago = now_ms - seen_ms;
                    json!({
                        "node": node,
                        "address": address,
                        "serving": NodeState::of(owner, ago, &serving) == NodeState::Serving,
                        "seen_ms_ago": ago,
                        "alive": ago <= ALIVE_WITHIN_MS,
                    })
                })
                .collect();
            let placement = view.placement.map(|p| p.name());
            outln!("{}", json!({ "placement": placement, "shards": shards, "nodes": nodes }));
        }
        // The first node to connect adds a free lease per shard before it takes them.
        Output::Text if view.leases.iter().all(|lease| lease.epoch == 0) => {
            outln!("no node has served this cluster yet: start one with `sagaflow server --store …`");
        }
        Output::Text => {
            let rows: Vec<(u32, Vec<String>)> = view
                .leases
                .iter()
                .map(|lease| {
                    let (node, address) = holder(lease);
                    let held = vec![
                        node.unwrap_or("none").to_owned(),
                        address.unwrap_or("-").to_owned(),
                        lease.epoch.to_string(),
                        lease_state(lease, now_ms),
                    ];
                    (lease.shard, held)
                })
                .collect();
            if let Some(placement) = view.placement {
                outln!("placement: {placement} ({})", placement_meaning(placement));
            }
            out!("{}", table(&["SHARDS", "NODE", "ADDRESS", "EPOCH", "LEASE"], &shard_ranges(rows)));
            let rows: Vec<Vec<String>> = view
                .nodes
                .iter()
                .map(|(owner, seen_ms)| {
                    let (node, address) = parts(owner);
                    let ago = now_ms - seen_ms;
                    let role = match NodeState::of(owner, ago, &serving) {
                        NodeState::Serving => "serving",
                        NodeState::StandingBy => "standing by",
                        NodeState::Gone => "gone (stopped, or cut off from the database)",
                    };
                    vec![
                        node.to_owned(),
                        address.unwrap_or("-").to_owned(),
                        role.to_owned(),
                        format!("{} ago", seconds(ago)),
                    ]
                })
                .collect();
            outln!("");
            if rows.is_empty() {
                outln!("no node seen in the last 15 minutes");
            } else {
                out!("{}", table(&["NODE", "ADDRESS", "STATE", "LAST SEEN"], &rows));
            }
        }
    }
    Ok(())
}

/// One row per run of consecutive shards held alike (`0-7`), so that a
/// cluster of many shards reads as the few holders it has.
fn shard_ranges(rows: Vec<(u32, Vec<String>)>) -> Vec<Vec<String>> {
    let mut runs: Vec<(u32, u32, Vec<String>)> = Vec::new();
    for (shard, held) in rows {
        match runs.last_mut() {
            Some((_, last, same)) if *last + 1 == shard && *same == held => *last = shard,
            _ => runs.push((shard, shard, held)),
        }
    }
    runs.into_iter()
        .map(|(first, last, held)| {
            let shards = if first == last { first.to_string() } else { format!("{first}-{last}") };
            std::iter::once(shards).chain(held).collect()
        })
        .collect()
}

/// What a node is doing, as far as the database can tell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Serving,
    StandingBy,
    Gone,
}

impl NodeState {
    /// `owner`, last seen `ago_ms` ago, while the owners of live leases are `serving`.
    fn of(owner: &str, ago_ms: i64, serving: &[&str]) -> Self {
        if serving.contains(&owner) {
            Self::Serving
        } else if ago_ms <= ALIVE_WITHIN_MS {
            Self::StandingBy
        } else {
            Self::Gone
        }
    }
}

/// A lease owner's node name and the address it serves at, if it gave one.
fn parts(owner: &str) -> (&str, Option<&str>) {
    (owner.split('@').next().unwrap_or(owner), address_of(owner))
}

/// The node holding `lease` and the address it serves at; `None` for a
/// lease released by a graceful stop.
fn holder(lease: &ShardLease) -> (Option<&str>, Option<&str>) {
    let (node, address) = parts(&lease.owner);
    (Some(node).filter(|node| !node.is_empty()), address)
}

fn seconds(ms: i64) -> String {
    format!("{:.1} s", ms.unsigned_abs() as f64 / 1000.0)
}

fn lease_state(lease: &ShardLease, now_ms: i64) -> String {
    let left_ms = lease.expires_ms - now_ms;
    match holder(lease).0 {
        None if lease.epoch == 0 => "free: no node took it yet".to_owned(),
        None => "released: the next standby to ask takes it (within a second)".to_owned(),
        Some(_) if left_ms > 0 => format!("held, {} left", seconds(left_ms)),
        Some(_) => {
            format!("expired {} ago: the node stopped renewing; a standby takes it within a second", seconds(left_ms))
        }
    }
}

fn shard_json(lease: &ShardLease, now_ms: i64) -> serde_json::Value {
    let (node, address) = holder(lease);
    let left_ms = lease.expires_ms - now_ms;
    json!({
        "shard": lease.shard,
        "node": node,
        "address": address,
        "epoch": lease.epoch,
        "expires_in_ms": left_ms,
        "served": node.is_some() && left_ms > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::shard_ranges;

    #[test]
    fn consecutive_shards_held_alike_share_a_row() {
        let held = |node: &str| vec![node.to_owned(), "a:1".to_owned(), "2".to_owned(), "held".to_owned()];
        let rows = vec![(0, held("a")), (1, held("a")), (2, held("b")), (3, held("a")), (5, held("a"))];
        let shards: Vec<String> = shard_ranges(rows).into_iter().map(|row| row[0].clone()).collect();
        assert_eq!(shards, ["0-1", "2", "3", "5"]);
    }
}
