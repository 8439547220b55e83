//! The crate graph of docs/architecture.md holds: no crate depends on a
//! Sagaflow crate its row does not allow. The engine's purity and the
//! platform's ignorance of the shop are checked here, not hoped for.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each workspace crate and the Sagaflow crates it may depend on (normal
/// dependencies; tests and benches may use more).
const ALLOWED: &[(&str, &[&str])] = &[
    ("sagaflow-proto", &[]),
    ("sagaflow-workflows", &[]),
    ("sagaflow-engine", &["sagaflow-proto", "sagaflow-workflows"]),
    ("sagaflow-store", &["sagaflow-proto"]),
    ("sagaflow-store-postgres", &["sagaflow-proto", "sagaflow-store"]),
    ("sagaflow-worker", &["sagaflow-proto"]),
    ("sagaflow-relay", &["sagaflow-store", "sagaflow-worker"]),
    (
        "sagaflow-server",
        &[
            "sagaflow-proto",
            "sagaflow-workflows",
            "sagaflow-engine",
            "sagaflow-store",
            "sagaflow-store-postgres",
            "sagaflow-relay",
            "sagaflow-worker",
        ],
    ),
    ("sagaflow-activities", &["sagaflow-worker"]),
    (
        "sagaflow-shop-server",
        &[
            "sagaflow-server",
            "sagaflow-relay",
            "sagaflow-activities",
            "sagaflow-proto",
            "sagaflow-worker",
            "sagaflow-workflows",
        ],
    ),
    (
        "sagaflow-cli",
        &[
            "sagaflow-server",
            "sagaflow-shop-server",
            "sagaflow-activities",
            "sagaflow-proto",
            "sagaflow-worker",
            "sagaflow-workflows",
            "sagaflow-relay",
        ],
    ),
    (
        "sagaflow-examples",
        &["sagaflow-server", "sagaflow-shop-server", "sagaflow-activities", "sagaflow-proto", "sagaflow-worker"],
    ),
    ("sagaflow-faultfs", &[]),
    ("xtask", &[]),
];

/// Each workspace crate's normal dependencies on Sagaflow crates, from `cargo metadata`.
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut graph = BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        let deps = package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str())
            .filter(|name| name.starts_with("sagaflow-"))
            .map(str::to_owned)
            .collect();
        graph.insert(package["name"].as_str().unwrap().to_owned(), deps);
    }
    graph
}

#[test]
fn every_crate_depends_only_on_what_the_architecture_allows() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(name, deps)| (*name, deps.iter().copied().collect())).collect();
    let graph = workspace_graph();
    let mut broken = Vec::new();
    for (name, deps) in &graph {
        let Some(permitted) = allowed.get(name.as_str()) else {
            broken.push(format!("{name} is not in the table of docs/architecture.md (and of this test)"));
            continue;
        };
        for dep in deps.iter().filter(|d| !permitted.contains(d.as_str())) {
            broken.push(format!("{name} depends on {dep}, which its row does not allow"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    // The platform never reaches the shop.
    for platform in ["sagaflow-server", "sagaflow-engine", "sagaflow-store", "sagaflow-relay"] {
        let deps = &graph[platform];
        assert!(
            !deps.contains("sagaflow-activities") && !deps.contains("sagaflow-shop-server"),
            "{platform}: {deps:?}"
        );
    }
}
