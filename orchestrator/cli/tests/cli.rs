//! The operator CLI: help that explains, one-line errors with a non-zero
//! exit, JSON for programs, and `history --follow` that ends with the workflow.
#![allow(clippy::unwrap_used)]

mod common;

use common::{BIN, ServerProcess, WorkerProcess, start_request};
use std::process::Output;

async fn sagaflow(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN).args(args).output().await.unwrap()
}

#[tokio::test]
async fn help_explains_every_command() {
    let help = sagaflow(&["--help"]).await;
    let text = String::from_utf8(help.stdout).unwrap();
    for command in ["server", "worker", "workflow", "admin"] {
        assert!(text.contains(command), "{command} missing from --help");
    }
    let list = String::from_utf8(sagaflow(&["workflow", "list", "--help"]).await.stdout).unwrap();
    assert!(list.contains("--stuck") && list.contains("--status") && list.contains("--output"), "{list}");
}

#[tokio::test]
async fn errors_are_one_line_with_a_failing_exit() {
    let unreachable = sagaflow(&["workflow", "list", "--server", "http://127.0.0.1:1"]).await;
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8(unreachable.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: cannot reach the server"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let missing = sagaflow(&["workflow", "describe", "nope", "--server", &server.url]).await;
    assert!(!missing.status.success());
    assert_eq!(String::from_utf8(missing.stderr).unwrap(), "error: NOT_FOUND: workflow nope not found\n");
    let bad_input =
        sagaflow(&["workflow", "start", "bench", "--request-id", "r", "--input", "{", "--server", &server.url]).await;
    assert!(!bad_input.status.success());
    assert!(String::from_utf8(bad_input.stderr).unwrap().starts_with("error: --input is not valid JSON"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_the_timeline_until_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let id = client.start_workflow(start_request("bench", "r-follow", "{}")).await.unwrap().into_inner().workflow_id;
    let follow = tokio::spawn({
        let url = server.url.clone();
        let id = id.clone();
        async move { sagaflow(&["workflow", "history", &id, "--follow", "--server", &url]).await }
    });
    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let followed = follow.await.unwrap();
    assert!(followed.status.success());
    let text = String::from_utf8(followed.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("#1") && lines[0].contains("WorkflowStarted"), "{text}");
    assert!(lines.last().unwrap().contains("WorkflowCompleted"), "{text}");

    let json = sagaflow(&["workflow", "describe", &id, "--output", "json", "--server", &server.url]).await;
    let described: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(described["status"], "COMPLETED");
    assert_eq!(described["history_length"], lines.len());
}

#[tokio::test]
async fn start_with_wait_prints_how_the_workflow_ended() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let start = |request_id: &'static str, wait: &'static str| {
        let url = server.url.clone();
        async move {
            sagaflow(&[
                "workflow",
                "start",
                "bench",
                "--request-id",
                request_id,
                "--wait",
                wait,
                "--output",
                "json",
                "--server",
                &url,
            ])
            .await
        }
    };
    // No worker: the wait runs out, the exit fails, and the workflow runs on.
    let waiting = start("r-wait-1", "300ms").await;
    assert_eq!(waiting.status.code(), Some(4));
    let error: serde_json::Value = serde_json::from_slice(&waiting.stderr).unwrap();
    assert_eq!(error["error"]["code"], "STILL_RUNNING");
    assert!(error["error"]["message"].as_str().unwrap().ends_with("is still RUNNING after 300ms"), "{error}");
    let running: serde_json::Value = serde_json::from_slice(&waiting.stdout).unwrap();
    assert_eq!((running["status"].as_str(), running["terminal"].as_bool()), (Some("RUNNING"), Some(false)));

    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let ended = start("r-wait-2", "30s").await;
    assert!(ended.status.success(), "{}", String::from_utf8_lossy(&ended.stderr));
    let ended: serde_json::Value = serde_json::from_slice(&ended.stdout).unwrap();
    assert_eq!((ended["status"].as_str(), ended["terminal"].as_bool()), (Some("COMPLETED"), Some(true)));
    assert_eq!(ended["already_started"].as_bool(), Some(false));
}

/// `sagaflow ARGS --server URL --output FORMAT`, with its exit code and both streams.
async fn run_at(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--server", url]);
    let out = sagaflow(&all).await;
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A server and one worker hosting the whole shop (`--services shop`).
async fn shop(dir: &std::path::Path, server_args: &[&str]) -> (ServerProcess, WorkerProcess) {
    let server = ServerProcess::start(&dir.join("orchestrator"), server_args).await;
    let data = dir.join("shop");
    let worker = WorkerProcess::start(
        &server.url,
        &["--services", "shop", "--data-dir", data.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"],
    )
    .await;
    (server, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_that_does_not_complete_fails_the_wait_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _worker) = shop(dir.path(), &[]).await;
    let start = |request_id: &'static str, item: &'static str, extra: &'static [&'static str]| {
        let url = server.url.clone();
        async move {
            let mut args = vec!["checkout", "start", "--request-id", request_id, "--customer", "c-1", "--item", item];
            args.extend_from_slice(extra);
            run_at(&url, &args).await
        }
    };

    let (code, stdout, stderr) = start("r-unknown", "sku-nope:1", &["--wait"]).await;
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stderr.starts_with("error: checkout chk-") && stderr.contains("CANCELLED"), "{stderr}");
    assert!(stderr.contains("UnknownSku") && stderr.contains("sku-nope"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Nothing was reserved or charged, so the view names no reservation and no payment.
    assert!(stdout.contains("Status        CANCELLED"), "{stdout}");
    assert!(!stdout.contains("Payment") && !stdout.contains("Reservation"), "{stdout}");
    // Its end is published too: a consumer that saw it start sees it end.
    let checkout_id = stdout.lines().next().unwrap().split_whitespace().nth(1).unwrap();
    let (_, events, _) = run_at(&server.url, &["events", "tail", "--output", "json"]).await;
    let kinds: Vec<String> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["workflow_id"] == checkout_id)
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["CheckoutStarted", "CheckoutFailed"]);

    let (code, _, stderr) =
        start("r-declined", "sku-mug:1", &["--payment-method", "card_declined", "--wait", "30s"]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("ended COMPENSATED, not COMPLETED"), "{stderr}");

    let (code, stdout, stderr) = start("r-ok", "sku-mug:1", &["--wait", "--output", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let shipped: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shipped["status"], "SHIPPED");

    // Refused up front: the gateway knows no bitcoin.
    let (code, _, stderr) = start("r-bitcoin", "sku-mug:1", &["--payment-method", "bitcoin"]).await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: INVALID_ARGUMENT: unknown payment_method \"bitcoin\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_start_wait_exits_3_unless_the_workflow_completed() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let _worker = WorkerProcess::start(&server.url, &["--fault", "bench.capture=fatal"]).await;
    let (code, stdout, stderr) =
        run_at(&server.url, &["workflow", "start", "bench", "--request-id", "r-fatal", "--wait", "10s"]).await;
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stdout.contains("COMPENSATED"), "{stdout}");
    assert!(stderr.contains("ended COMPENSATED, not COMPLETED: "), "{stderr}");
    // `await` reads the same outcome the same way.
    let id = stdout.split_whitespace().next().unwrap();
    let (code, _, _) = run_at(&server.url, &["workflow", "await", id]).await;
    assert_eq!(code, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_reports_the_stuck_flag_while_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    // No worker at all: the first step waits for one and is flagged NO_WORKER.
    let server =
        ServerProcess::start(dir.path(), &["--no-worker-after", "300ms", "--stuck-check-interval", "100ms"]).await;
    let (code, _, stderr) = run_at(
        &server.url,
        &["checkout", "start", "--request-id", "r-stuck", "--customer", "c", "--item", "sku-mug:1", "--wait", "6s"],
    )
    .await;
    assert_eq!(code, 4, "{stderr}");
    let waiting = stderr.lines().find(|l| l.starts_with("waiting: ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(waiting.contains("is stuck (NO_WORKER)") && waiting.contains("catalog.price_snapshot"), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: ") && last.contains("still RUNNING (stuck: NO_WORKER) after 6s"), "{stderr}");
}

/// Reads the first line a command prints, closes the pipe as `head -1`
/// does, has `more` make it print again, and returns how it exited.
async fn first_line_then_close(args: &[&str], more: impl Future<Output = ()>) -> (std::process::ExitStatus, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("a first line");
    assert!(!first.is_empty());
    drop(lines);
    more.await;
    let out =
        tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    (out.status, String::from_utf8(out.stderr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_tail_and_history_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    // Waits for a worker: its history has one event until one comes.
    let id = client.start_workflow(start_request("bench", "r-pipe", "{}")).await.unwrap().into_inner().workflow_id;
    let url = server.url.clone();
    let (status, stderr) = first_line_then_close(&["workflow", "history", &id, "--follow", "--server", &url], async {
        let worker = WorkerProcess::start(&url, &[]).await;
        common::await_end(&mut server.client().await, &id).await;
        drop(worker);
    })
    .await;
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr, "");

    // The outbox: a checkout's events, then more from a second one after the reader left.
    let checkouts = dir.path().join("checkouts");
    let (shop_server, _worker) = shop(&checkouts, &[]).await;
    let url = shop_server.url.clone();
    let checkout = |request_id: &'static str| {
        let url = url.clone();
        async move {
            let (code, _, stderr) = run_at(
                &url,
                &["checkout", "start", "--request-id", request_id, "--customer", "c", "--item", "sku-mug:1", "--wait"],
            )
            .await;
            assert_eq!(code, 0, "{stderr}");
        }
    };
    checkout("r-tail-1").await;
    let (status, stderr) =
        first_line_then_close(&["events", "tail", "--follow", "--server", &url], checkout("r-tail-2")).await;
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr, "");
}

#[tokio::test]
async fn errors_say_each_cause_once_and_take_host_port() {
    // A bare HOST:PORT is http://HOST:PORT: the error is about reaching it, not about the URL.
    let (code, _, stderr) = run_at("127.0.0.1:1", &["workflow", "list"]).await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: cannot reach the server at http://127.0.0.1:1"), "{stderr}");
    assert_eq!(stderr.matches("tcp connect error").count(), 1, "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("a"), &[]).await;
    let taken = server.host_port();
    let other = dir.path().join("b");
    let busy = sagaflow(&[
        "server",
        "--listen",
        &taken,
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        other.to_str().unwrap(),
    ])
    .await;
    let stderr = String::from_utf8(busy.stderr).unwrap();
    assert!(!busy.status.success());
    assert_eq!(stderr.matches("Address already in use").count(), 1, "{stderr}");
}

/// A listening node that does not serve, as a standby does while the node it
/// forwards to has died: its health check answers `NOT_SERVING`, and it
/// knows no other service. Its address, `http://…`.
async fn a_node_that_does_not_serve() -> String {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    format!("http://{address}")
}

#[tokio::test]
async fn help_never_prints_a_password_it_finds_in_the_environment() {
    for command in [&["server", "--help"][..], &["cluster", "status", "--help"], &["consumer", "search", "--help"]] {
        let out = tokio::process::Command::new(BIN)
            .args(command)
            .env("SAGAFLOW_STORE", "postgres://sagaflow:hunter2@db/sagaflow")
            .env("SAGAFLOW_NATS_URL", "nats://relay:hunter2@bus:4222")
            .output()
            .await
            .unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success() && help.contains("--"), "{command:?}: {help}");
        assert!(!help.contains("hunter2"), "{command:?} printed a password: {help}");
    }
}

#[tokio::test]
async fn of_several_nodes_the_cli_uses_the_first_that_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let standing_by = a_node_that_does_not_serve().await;
    let (code, stdout, stderr) =
        run_at(&format!("{standing_by},{}", server.url), &["workflow", "list", "--output", "json"]).await;
    assert_eq!(code, 0, "the serving node answers: {stderr}");
    assert!(stdout.trim_start().starts_with('{') || stdout.trim_start().starts_with('['), "{stdout}");

    let (code, _, stderr) = run_at(&format!("{standing_by},http://127.0.0.1:1"), &["workflow", "list"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no node of") && stderr.contains("NOT_SERVING"), "each node's reason: {stderr}");
    assert!(stderr.contains("cannot reach the server at http://127.0.0.1:1"), "{stderr}");

    let (code, _, stderr) = run_at(&format!("{},not a url", server.url), &["workflow", "list"]).await;
    assert_eq!(code, 1, "a mistyped node is an error, even when another serves: {stderr}");
    server.stop().await;
}

#[tokio::test]
async fn a_second_process_on_a_data_directory_names_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerProcess::start(dir.path(), &[]).await;
    let second = sagaflow(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    assert!(!second.status.success());
    let stderr = String::from_utf8(second.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is in use by another sagaflow process"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
    assert!(!stderr.contains("WouldBlock"), "{stderr}");
}

#[tokio::test]
async fn json_output_makes_errors_json_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let (code, stdout, stderr) = run_at(&server.url, &["workflow", "describe", "nope", "--output", "json"]).await;
    assert_eq!((code, stdout.as_str()), (1, ""));
    let error: serde_json::Value = serde_json::from_str(&stderr).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(error["error"]["code"], "NOT_FOUND");
    assert_eq!(error["error"]["message"], "NOT_FOUND: workflow nope not found");

    // A usage error too, when the command line asked for JSON.
    let (code, _, stderr) = run_at(&server.url, &["workflow", "describe", "--output", "json"]).await;
    assert_eq!(code, 2);
    let error: serde_json::Value = serde_json::from_str(&stderr).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(error["error"]["code"], "USAGE");
}

#[tokio::test]
async fn a_negative_quantity_is_called_out_of_range() {
    let (code, _, stderr) = run_at(
        "http://127.0.0.1:1",
        &["checkout", "start", "--request-id", "r", "--customer", "c", "--item", "sku-mug:-1"],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("the quantity must be from 1 to 10000, not -1"), "{stderr}");
    assert!(!stderr.contains("not a number"), "{stderr}");
}

#[tokio::test]
async fn fault_switches_for_unknown_services_or_operations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, worker) = shop(dir.path(), &[]).await;
    let admin = worker.admin.clone().unwrap();
    let set = |spec: &'static str| {
        let admin = admin.clone();
        async move { sagaflow(&["shop", "set-fault", spec, "--admin-url", &admin]).await }
    };
    let typo = set("payment.capture=error:1").await;
    assert!(!typo.status.success());
    let stderr = String::from_utf8(typo.stderr).unwrap();
    assert!(stderr.contains("no service \"payment\" here; one of catalog"), "{stderr}");
    let operation = set("payments.captur=error").await;
    assert!(String::from_utf8(operation.stderr).unwrap().contains("payments has no operation \"captur\""));
    let good = set("payments.capture=error:1").await;
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8(good.stdout).unwrap().contains("payments.capture=error:1"));

    // On a worker's command line as well.
    let refused = sagaflow(&["worker", "--server", "http://127.0.0.1:1", "--fault", "bench.captur=fatal"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8(refused.stderr).unwrap().contains("bench has no operation \"captur\""));
}

#[tokio::test]
async fn help_describes_every_flag_once() {
    let commands: &[&[&str]] = &[
        &["checkout", "start"],
        &["checkout", "get"],
        &["checkout", "refund"],
        &["workflow", "start"],
        &["workflow", "list"],
        &["workflow", "describe"],
        &["workflow", "await"],
        &["workflow", "history"],
        &["workflow", "cancel"],
        &["workflow", "terminate"],
        &["workflow", "signal"],
        &["definition", "apply"],
        &["definition", "diff"],
        &["definition", "list"],
        &["definition", "get"],
        &["definition", "deprecate"],
        &["dev"],
        &["worker"],
        &["shop", "stock"],
        &["shop", "restock"],
        &["shop", "set-coupon"],
        &["shop", "set-fault"],
        &["shop", "clear-faults"],
        &["shop", "notifications"],
        &["events", "tail"],
        &["search", "orders"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let help = String::from_utf8(sagaflow(&args).await.stdout).unwrap();
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            // Flags and arguments (`--flag`, `<ARG>`, `[ARG]`); `[default: …]` continues a description.
            let entry = trimmed.starts_with('-')
                || trimmed.starts_with('<')
                || (trimmed.starts_with('[') && !trimmed.starts_with("[default"));
            if !line.starts_with("  ") || !entry {
                continue;
            }
            // A description follows the flag on its line, or on the lines under it.
            let same_line = trimmed.split_once("  ").is_some_and(|(_, rest)| !rest.trim().is_empty());
            let described = same_line
                || lines.get(i + 1).is_some_and(|next| {
                    let next = next.trim_start();
                    !next.is_empty() && !next.starts_with('-') && !next.starts_with('<')
                });
            assert!(described, "{command:?}: {trimmed} has no description\n{help}");
        }
        // Global flags are listed apart, under one heading.
        assert_eq!(help.matches("Global options:").count(), 1, "{command:?}\n{help}");
        assert_eq!(help.matches("--server <SERVER>").count(), 1, "{command:?}\n{help}");
    }
    // --admin-url after the subcommand, as --server is.
    let late = sagaflow(&["shop", "stock", "--admin-url", "http://127.0.0.1:1"]).await;
    let stderr = String::from_utf8(late.stderr).unwrap();
    assert!(stderr.starts_with("error: cannot reach the shop admin API at http://127.0.0.1:1"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_names_steps_and_describe_lists_results_in_step_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let (code, stdout, stderr) =
        run_at(&server.url, &["workflow", "start", "bench", "--request-id", "r-steps", "--wait"]).await;
    assert_eq!(code, 0, "{stderr}");
    let id = stdout.split_whitespace().next().unwrap();
    let (_, history, _) = run_at(&server.url, &["workflow", "history", id]).await;
    let started: Vec<&str> = history.lines().filter(|l| l.contains("ActivityStarted")).collect();
    assert!(started[0].contains("ActivityStarted      reserve by "), "{history}");
    assert!(!history.contains(".f."), "task ids instead of step names:\n{history}");

    let (_, described, _) = run_at(&server.url, &["workflow", "describe", id]).await;
    let results = described.split("Step results:").nth(1).unwrap();
    let order: Vec<&str> = results.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(order, ["reserve", "capture", "order", "ship"], "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_banner_follows_listen_and_piped_logs_have_no_colour() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let mut dev = tokio::process::Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--archive-dir")
        .arg(archive.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    while let Some(line) =
        tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap()
    {
        let last = line.contains("workflow list");
        banner.push(line);
        if last {
            break;
        }
    }
    let banner = banner.join("\n");
    let url = banner.split_whitespace().find(|w| w.starts_with("http://127.0.0.1:")).unwrap().trim_end_matches(',');
    assert_ne!(url, "http://127.0.0.1:50051");
    let tries: Vec<&str> = banner.lines().skip_while(|l| *l != "Try:").skip(1).collect();
    assert_eq!(tries.len(), 3, "{banner}");
    assert!(
        tries[0].ends_with(&format!("--server {url}")) && tries[2].ends_with(&format!("--server {url}")),
        "{banner}"
    );
    assert!(tries[1].contains("shop stock --admin-url http://127.0.0.1:"), "{banner}");
    // The first line works as printed.
    let args: Vec<&str> = tries[0].split_whitespace().skip(1).collect();
    let tried = sagaflow(&args).await;
    assert!(tried.status.success(), "{}", String::from_utf8_lossy(&tried.stderr));
    // dev takes server's retention flags: the checkout, deleted, is read back from --archive-dir.
    let (code, listed, stderr) = run_at(url, &["workflow", "list", "--output", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let checkout = listed["workflows"][0]["workflow_id"].as_str().unwrap().to_owned();
    let (code, _, stderr) = run_at(url, &["workflow", "delete", &checkout]).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, history, stderr) = run_at(url, &["workflow", "history", &checkout, "--archived"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(history.contains("WorkflowCompleted"), "{history}");

    dev.start_kill().unwrap();
    let out = dev.wait_with_output().await.unwrap();
    let logs = String::from_utf8(out.stderr).unwrap();
    assert!(logs.contains("INFO"), "{logs}");
    assert!(!logs.contains('\x1b'), "colour codes in a piped log:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_puts_the_newest_first_with_why_each_ended_and_hides_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let url = server.url.clone();
    let start = |request_id: &'static str| {
        let url = url.clone();
        async move { run_at(&url, &["workflow", "start", "bench", "--request-id", request_id, "--wait"]).await }
    };
    let worker = WorkerProcess::start(&server.url, &[]).await;
    let (_, first, _) = start("r-list-1").await;
    worker.stop().await;
    let _failing = WorkerProcess::start(&server.url, &["--fault", "bench.capture=fatal"]).await;
    let (code, second, _) = start("r-list-2").await;
    assert_eq!(code, 3);
    let (code, _, stderr) = run_at(&url, &["jobs", "run", "detect-stuck-sagas"]).await;
    assert_eq!(code, 0, "{stderr}");

    let (code, listed, stderr) = run_at(&url, &["workflow", "list"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[0].ends_with("STARTED                   CLOSED                    REASON"), "{listed}");
    assert_eq!(lines.len(), 3, "the job's workflow is hidden:\n{listed}");
    let id = |out: &str| out.split_whitespace().next().unwrap().to_owned();
    assert!(lines[1].starts_with(&id(&second)) && lines[1].contains("COMPENSATED"), "{listed}");
    assert!(lines[1].contains("bench.capture"), "the reason column: {listed}");
    assert!(lines[2].starts_with(&id(&first)), "{listed}");

    let (_, all, _) = run_at(&url, &["workflow", "list", "--all"]).await;
    assert!(all.contains("job.detect-stuck-sagas"), "{all}");
    let (_, jobs, _) = run_at(&url, &["workflow", "list", "--type", "job.*", "--output", "json"]).await;
    let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap();
    let types: Vec<&str> =
        jobs["workflows"].as_array().unwrap().iter().map(|w| w["workflow_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["job.detect-stuck-sagas"]);
    let (_, recent, _) = run_at(&url, &["workflow", "list", "--since", "1h", "--limit", "1"]).await;
    assert!(
        recent.lines().nth(1).unwrap().starts_with(&id(&second)) && recent.contains("the newest 1 of 2"),
        "{recent}"
    );
    let (_, none, _) = run_at(&url, &["workflow", "list", "--since", "1ms"]).await;
    assert_eq!(none, "no workflows match\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_names_the_step_that_timed_out_and_full_prints_whole_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = common::write_test_definitions(dir.path());
    let server =
        ServerProcess::start(&dir.path().join("data"), &["--definitions", definitions.to_str().unwrap()]).await;
    // The worker that holds the first attempt dies with it: only the
    // orchestrator's timer can end that attempt (a live worker's own timer
    // may report first, as a failure), and the history names who held it.
    let holder = WorkerProcess::start(&server.url, &["--fault", "bench.reserve=hang:1"]).await;
    let long = format!("{{\"note\":\"{}\"}}", "x".repeat(300));
    let (code, stdout, stderr) =
        run_at(&server.url, &["workflow", "start", "quick", "--request-id", "r-held", "--input", &long]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let id = stdout.split_whitespace().next().unwrap().to_owned();
    let id = id.as_str();
    let mut client = server.client().await;
    common::wait_until_leased(&mut client, id, "reserve").await;
    holder.kill9().await;
    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let (code, stdout, stderr) = run_at(&server.url, &["workflow", "await", id]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");

    let (_, history, _) = run_at(&server.url, &["workflow", "history", id]).await;
    let timed_out = history.lines().find(|l| l.contains("ActivityTimedOut")).unwrap_or_else(|| panic!("{history}"));
    // It names the step, and the worker that held the attempt when it timed out.
    assert!(timed_out.contains("ActivityTimedOut     reserve START_TO_CLOSE held by "), "{timed_out}");
    assert!(timed_out.contains(" (retry at "), "{timed_out}");
    assert!(!history.contains(&long) && history.contains("xxx…"), "payloads are cut by default:\n{history}");
    let (_, full, _) = run_at(&server.url, &["workflow", "history", id, "--full"]).await;
    assert!(full.contains(&long), "{full}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_id_is_scoped_to_its_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _worker) = shop(dir.path(), &[]).await;
    let mut checkouts = Vec::new();
    for request_id in ["r-rf-a", "r-rf-b"] {
        let (code, stdout, stderr) = run_at(
            &server.url,
            &[
                "checkout",
                "start",
                "--request-id",
                request_id,
                "--customer",
                "c",
                "--item",
                "sku-mug:1",
                "--wait",
                "--output",
                "json",
            ],
        )
        .await;
        assert_eq!(code, 0, "{stderr}");
        let checkout: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        checkouts.push(checkout["checkout_id"].as_str().unwrap().to_owned());
    }
    let refund = |checkout: String| {
        let url = server.url.clone();
        async move { run_at(&url, &["checkout", "refund", &checkout, "--refund-id", "rf-1", "--amount-cents", "100"]).await }
    };
    let (code, first, stderr) = refund(checkouts[0].clone()).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, second, stderr) = refund(checkouts[1].clone()).await;
    assert_eq!(code, 0, "rf-1 on another checkout is another refund: {stderr}");
    assert_ne!(first, second);
    // On its own checkout the id still names the one refund.
    let (code, again, _) = refund(checkouts[1].clone()).await;
    assert_eq!((code, again.as_str()), (0, second.as_str()));
    for (checkout, started) in checkouts.iter().zip([first, second]) {
        let refund_workflow = started.trim().trim_start_matches("refund started: ");
        let (code, _, stderr) = run_at(&server.url, &["workflow", "await", refund_workflow]).await;
        assert_eq!(code, 0, "{stderr}");
        let (_, got, _) = run_at(&server.url, &["checkout", "get", checkout, "--output", "json"]).await;
        let got: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(got["refunded_cents"], 100, "{checkout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_tables_read_naturally_and_the_delay_notice_is_written_for_the_customer() {
    let dir = tempfile::tempdir().unwrap();
    let (server, worker) = shop(dir.path(), &[]).await;
    let admin = worker.admin.clone().unwrap();
    let shop_cli = |args: &'static [&'static str]| {
        let admin = admin.clone();
        async move {
            let mut all = args.to_vec();
            all.extend_from_slice(&["--admin-url", &admin]);
            let out = sagaflow(&all).await;
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let stock = shop_cli(&["shop", "stock"]).await;
    assert!(stock.starts_with("SKU  "), "{stock}");
    // WELCOME10 is a percentage and FLAT5 an amount: both columns are there.
    let coupons = shop_cli(&["shop", "coupons"]).await;
    let header: Vec<&str> = coupons.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(&header[..4], ["CODE", "VERSION", "PERCENT_OFF", "AMOUNT_OFF_CENTS"], "{coupons}");
    let welcome = coupons.lines().find(|l| l.starts_with("WELCOME10")).unwrap();
    assert!(welcome.contains(" 10 "), "{coupons}");
    assert!(!coupons.contains("_MS") && !coupons.contains("1796"), "times read as times: {coupons}");

    // Five carrier errors: the shipment is delayed, and the customer told so.
    shop_cli(&["shop", "set-fault", "shipping.create_shipment=error:5"]).await;
    let (code, view, stderr) = run_at(
        &server.url,
        &[
            "checkout",
            "start",
            "--request-id",
            "r-late",
            "--customer",
            "carol",
            "--item",
            "sku-mug:2",
            "--coupon",
            "WELCOME10",
            "--wait",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    // The lines add up: 2 x 12.99 = 25.98, less 10%.
    assert!(view.contains("Subtotal      25.98\nDiscount      -2.59\nTotal         23.39\n"), "{view}");
    let notices = shop_cli(&["shop", "notifications", "--customer", "carol"]).await;
    let delayed = notices.lines().find(|l| l.contains("ShipmentDelayed")).unwrap_or_else(|| panic!("{notices}"));
    assert!(delayed.contains("is delayed: the carrier has not accepted the parcel yet"), "{notices}");
    assert!(
        !notices.contains("pi-") && !notices.contains('{'),
        "internal ids and JSON in a customer's notice: {notices}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_a_cancel_at_once_while_the_running_step_finishes() {
    use sagaflow_server::workflows::{SagaDefinition, Step, Timeouts};
    let dir = tempfile::tempdir().unwrap();
    // A reservation whose first attempt hangs, with a deadline far beyond the test.
    let slow = SagaDefinition::builder("slow", 1)
        .step(
            Step::activity("reserve", "bench.reserve")
                .compensate_with("bench.release")
                .timeouts(Timeouts { start_to_close_ms: 60_000, ..Timeouts::default() }),
        )
        .step(Step::activity("capture", "bench.capture").pivot())
        .build()
        .unwrap();
    let definitions = dir.path().join("slow.json");
    std::fs::write(&definitions, serde_json::to_string(&vec![slow]).unwrap()).unwrap();
    let server =
        ServerProcess::start(&dir.path().join("data"), &["--definitions", definitions.to_str().unwrap()]).await;
    let _worker = WorkerProcess::start(&server.url, &["--fault", "bench.reserve=hang:1"]).await;
    let mut client = server.client().await;
    let id = client.start_workflow(start_request("slow", "r-cancel", "{}")).await.unwrap().into_inner().workflow_id;
    common::wait_until_leased(&mut client, &id, "reserve").await;

    let (code, said, stderr) = run_at(&server.url, &["workflow", "cancel", &id, "--reason", "customer left"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(said.contains("finishes (or times out) first"), "{said}");
    let (_, described, _) = run_at(&server.url, &["workflow", "describe", &id]).await;
    assert!(described.contains("RUNNING (cancel requested; compensation follows the running step)"), "{described}");
    let cancel = described.lines().find(|l| l.starts_with("Cancel")).unwrap_or_else(|| panic!("{described}"));
    assert!(cancel.ends_with(": customer left"), "{described}");
    let (_, json, _) = run_at(&server.url, &["workflow", "describe", &id, "--output", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (json["status"].as_str(), json["cancel_requested"]["reason"].as_str()),
        (Some("RUNNING"), Some("customer left"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_list_shows_each_queue_with_its_workers_credit_in_flight_and_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let worker = WorkerProcess::start(&server.url, &["--fault", "bench.reserve=hang", "--concurrency", "8"]).await;
    let mut client = server.client().await;
    let held = client.start_workflow(start_request("bench", "r-held", "{}")).await.unwrap().into_inner().workflow_id;
    common::wait_until_leased(&mut client, &held, "reserve").await;
    // No shop worker: a checkout's first task waits in its queue.
    let (code, _, stderr) =
        run_at(&server.url, &["checkout", "start", "--request-id", "r-q", "--customer", "c", "--item", "sku-mug:1"])
            .await;
    assert_eq!(code, 0, "{stderr}");

    let (code, json, stderr) = run_at(&server.url, &["worker", "list", "--output", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let queues: serde_json::Value = serde_json::from_str(&json).unwrap();
    let queue = |name: &str| queues.as_array().unwrap().iter().find(|q| q["queue"] == name).cloned().unwrap();
    let reserve = queue("bench.reserve");
    assert_eq!(reserve["workers"][0]["worker_id"], worker.worker_id.as_str());
    assert_eq!((reserve["in_flight"].as_u64(), reserve["backlog"].as_u64()), (Some(1), Some(0)), "{queues}");
    // One task held of the eight it asked for.
    assert_eq!(reserve["workers"][0]["credit"], 7, "{queues}");
    let price = queue("catalog.price_snapshot");
    assert_eq!(price["workers"], serde_json::json!([]));
    assert_eq!((price["in_flight"].as_u64(), price["backlog"].as_u64()), (Some(0), Some(1)), "{queues}");

    let (_, text, _) = run_at(&server.url, &["worker", "list"]).await;
    assert!(text.starts_with("QUEUE") && text.contains("IN FLIGHT  BACKLOG"), "{text}");
    let line = text.lines().find(|l| l.starts_with("catalog.price_snapshot")).unwrap();
    assert!(line.contains("(none)") && line.ends_with(" 1"), "{text}");
}
