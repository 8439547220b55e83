//! The hostile client of `sagaflow chaos run` (issue 26) really attacks: in a
//! short run with no disruption (so that every answer is conclusive), each
//! tenant attack is tried and refused with the code it should get, the flood
//! holds more idle connections than the server's caps (it evicts some), and
//! every new client during the flood is served. The run's report counts 0
//! got through, and the run passes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::BIN;
use serde_json::Value;

/// Every attack the hostile client makes, by the name the report gives it.
const ATTACKS: &[&str] = &[
    "cancel_other_workflow",
    "describe_other_workflow",
    "forged_checkout",
    "forged_refund",
    "made_up_token",
    "no_token",
    "read_other_checkout",
    "read_other_history",
    "refund_other_checkout",
    "signal_other_workflow",
    "squat_checkout_id",
    "squat_refund_id",
    "worker_token_as_client",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_client_attacks_and_nothing_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(BIN)
        .args(["chaos", "run", "--duration", "12s", "--no-broker", "--mean-gap", "1h", "--rate", "2", "--seed", "11"])
        .args(["--settle", "60s", "--output", "json", "--dir"])
        .arg(dir.path().join("run"))
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run).await.expect("the run took 5 minutes").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("no report: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    let hostile = &report["hostile"];
    assert_eq!(report["must_be_zero"]["hostile_got_through"], 0, "{hostile:#}");
    assert!(output.status.success(), "{report:#}");

    let attacks = hostile["attacks"].as_object().unwrap();
    let mut names: Vec<&str> = attacks.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ATTACKS, "every attack is made");
    for (name, count) in attacks {
        let attempts = count["attempts"].as_u64().unwrap();
        assert!(attempts > 0, "{name}: {count}");
        // No process is killed in this run: every attempt has its expected refusal.
        assert_eq!(count["refused"], attempts, "{name} refused with {}: {count}", count["expected"]);
        assert_eq!(count["got_through"], 0, "{name}: {count}");
    }
    assert!(hostile["flood_connections"].as_u64().unwrap() >= 1_000, "{hostile}");
    assert!(hostile["flood_evicted"].as_u64().unwrap() > 0, "the flood met the server's caps: {hostile}");
    let probes = hostile["flood_probes"].as_u64().unwrap();
    assert!(probes > 0, "{hostile}");
    assert_eq!(hostile["flood_served"], probes, "every new client is served during the flood: {hostile}");
}
