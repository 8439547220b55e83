//! Health tells the truth when the disk is full (a real tmpfs of 24 MiB, a
//! real server process): once a flush fails the store refuses writes, and
//! gRPC health, `/healthz` and the metrics say so, with the reason, so that a
//! supervisor restarts the server instead of sending it traffic.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ServerProcess, start_request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A tmpfs of `size`, unmounted when dropped (before its mount point's directory goes).
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` where mounting is not allowed (not root): said on stderr.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        Some(Self { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes zeros into `dir` until the disk is full.
fn fill(dir: &Path) {
    let mut file = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
}

#[tokio::test]
async fn a_full_disk_turns_health_to_not_serving_with_the_reason() {
    let Some(disk) = SmallDisk::mount("24m") else { return };
    let data = disk.path.join("data");
    let server = ServerProcess::start(&data, &[]).await;
    // The log's next segment is made ahead of time; let it be whole before the disk fills.
    let spare = data.join("orchestrator/wal/spare");
    common::shop::eventually(Duration::from_secs(10), "the spare log segment", || {
        let len = std::fs::metadata(&spare).map(|m| m.len()).unwrap_or(0);
        async move { len == 4 * 1024 * 1024 }
    })
    .await;
    fill(&disk.path);

    // Starts with big inputs fill the current segment and the spare: the
    // segment after them cannot be made, and that flush fails.
    let mut client = server.client().await;
    let input = format!(r#"{{"blob":"{}"}}"#, "x".repeat(200 * 1024));
    let mut refused = None;
    for i in 0..200 {
        if let Err(status) = client.start_workflow(start_request("bench", &format!("big-{i}"), &input)).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("a start on a full disk was refused");
    assert!(refused.message().contains("read-only") || refused.message().contains("space"), "{refused:?}");

    let channel = tonic::transport::Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    common::shop::eventually(Duration::from_secs(5), "gRPC health NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
            status.status == 2
        }
    })
    .await;
    let named =
        health.check(HealthCheckRequest { service: "sagaflow.v1.WorkflowService".into() }).await.unwrap().into_inner();
    assert_eq!(named.status, 2, "NOT_SERVING");
    let healthz = common::http(&server.http, "GET", "/healthz", "").await;
    assert!(healthz.starts_with("HTTP/1.1 503"), "{healthz}");
    assert!(healthz.contains("NOT_SERVING: the store refuses writes"), "{healthz}");
    let metrics = common::scrape(&server.http).await;
    assert!(metrics.contains("sagaflow_store_writable 0"), "{metrics}");
    drop(server);
}
