//! The soak phase against real processes, in its short CI form: phase c's
//! load for 40 s on a server whose retention is 3 s. Closed workflows are
//! deleted as fast as they are made, so the server's RSS and data level
//! off; the phase fails (exit 1) if either keeps growing. The 30-minute run
//! is `sagaflow bench --phase soak` by hand (docs/performance.md).
#![allow(clippy::unwrap_used)]

mod common;

use common::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_data_level_off_under_load_with_a_short_retention() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(BIN)
        .args(["bench", "--phase", "soak", "--duration", "40s", "--soak-retention", "3s"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the soak failed:\n{stdout}\n{stderr}");
    let result = stdout.lines().find(|l| l.starts_with("RESULT system=sagaflow phase=soak")).unwrap();
    let field = |name: &str| -> f64 {
        let value = result.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap();
        value.parse().unwrap()
    };
    assert!(field("sagas") > 1_000.0, "the load ran: {result}");
    assert!(stdout.contains("memory and data levelled off"), "{stdout}");
}
