//! The fault matrix (ADR 0006): `sagaflow chaos matrix` crosses every step of
//! the checkout and refund sagas, compensation included, with every fault
//! kind, once and past the retry budget, with and without a cancel, and checks
//! each cell against the ledgers. Every cell must pass, at time scale 0.05, in
//! well under ten minutes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cell_of_the_fault_matrix_passes() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("fault-matrix.md");
    let started = Instant::now();
    let run = tokio::process::Command::new(BIN)
        .args(["chaos", "matrix", "--lanes", "4", "--time-scale", "0.05", "--out"])
        .arg(&table)
        .arg("--dir")
        .arg(dir.path().join("run"))
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run).await.expect("the matrix ran past 10 minutes");
    let output = output.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text = std::fs::read_to_string(&table).unwrap_or_default();
    let failing: Vec<&str> = text.lines().filter(|l| l.contains("**FAIL**")).collect();
    assert!(
        output.status.success(),
        "{stdout}\n{}\nfailing cells:\n{}",
        String::from_utf8_lossy(&output.stderr),
        failing.join("\n")
    );
    let rows = text.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| #")).count();
    assert_eq!(rows, 11 * 5 * 2 * 2, "every cell has a row: {text}");
    assert!(failing.is_empty(), "{}", failing.join("\n"));
    assert!(text.contains("no violation in any lane"), "{text}");
    assert!(stdout.contains("220 passed, 0 failed"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(600));
}
