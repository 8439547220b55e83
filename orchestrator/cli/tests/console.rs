//! The operator console in a real browser: Debian's chromium, headless,
//! driven through chromedriver (WebDriver, with fantoccini), against real
//! `sagaflow server` and `sagaflow worker` processes.
//!
//! chromedriver is required: a machine without it fails these tests with
//! the command that installs it (`cargo xtask test` installs it itself).
//! With `SAGAFLOW_CONSOLE_SCREENSHOTS=1` the pages are saved under
//! docs/console/ (list.png, workflow.png, workers.png, checkout.png).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::secure::{self, CLIENT, OPERATOR, OTHER_CLIENT, WORKER, with_token};
use common::{
    BIN, ServerProcess, WorkerProcess, apply_definitions, await_end, start_request, status_of, wait_for_event,
    write_test_definitions,
};
use fantoccini::{Client, ClientBuilder, Locator};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{DescribeWorkflowRequest, PauseWorkflowRequest, WorkflowStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A saga no worker of these tests serves: flagged NO_WORKER.
const ORPHAN: &str = r#"
name: orphan
version: 1
steps:
  - name: lonely
    action: {type: activity, activity_type: nobody.work}
    timeouts: {start_to_close_ms: 2000}
"#;

/// A running chromedriver, ended with the test.
struct Driver {
    _process: tokio::process::Child,
    url: String,
}

fn chromedriver() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/lib/chromium".into()])
        .map(|dir| dir.join("chromedriver"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromedriver is missing, and the console tests need a real browser: install Debian's chromium and \
                 its driver (apt-get install -y chromium chromium-driver), or run `cargo xtask test`, which installs \
                 them"
            )
        })
}

async fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let process = tokio::process::Command::new(chromedriver())
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Driver { _process: process, url };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not listen on {port} within 10 s");
}

/// A headless chromium session.
async fn browser(driver: &Driver) -> Client {
    let mut options = serde_json::json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
    });
    if std::path::Path::new("/usr/bin/chromium").is_file() {
        options["binary"] = "/usr/bin/chromium".into();
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), "chrome".into());
    capabilities.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("cannot open a chromium session through chromedriver: {e}"))
}

/// The text of `css`. A live refresh may replace the element between the
/// find and the read (a stale reference): then it is found again.
async fn text(client: &Client, css: &str) -> String {
    let mut last = None;
    for _ in 0..5 {
        let element = client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        match element.text().await {
            Ok(text) => return text,
            Err(e) => last = Some(e),
        }
    }
    panic!("{css}: {last:?}")
}

async fn count(client: &Client, css: &str) -> usize {
    client.find_all(Locator::Css(css)).await.unwrap().len()
}

/// The rows of the workflow list: `(id, status)`, top to bottom, read in
/// one script so that a live refresh cannot replace a row halfway.
async fn rows(client: &Client) -> Vec<(String, String)> {
    let script = "return Array.from(document.querySelectorAll('tr[data-workflow-id]'))
        .map(r => [r.getAttribute('data-workflow-id'), r.getAttribute('data-status')]);";
    let value = client.execute(script, Vec::new()).await.unwrap();
    serde_json::from_value(value).unwrap()
}

/// Clicks `css`, which leads to another page, and waits until that page
/// has loaded. A click can return before the browser has left the old page,
/// and a read right after it would see the old one.
async fn click_through(client: &Client, css: Locator<'_>) {
    client.execute("window.sagaflowLeftPage = false;", Vec::new()).await.unwrap();
    client.find(css).await.unwrap_or_else(|e| panic!("{css:?}: {e}")).click().await.unwrap();
    let arrived = "return window.sagaflowLeftPage === undefined && document.readyState === 'complete';";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // A script run while the browser is between pages may fail: not there yet.
    while !matches!(client.execute(arrived, Vec::new()).await, Ok(serde_json::Value::Bool(true))) {
        assert!(tokio::time::Instant::now() < deadline, "clicking {css:?} led to no new page within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the page shows `css` (a live refresh may bring it).
async fn wait_for(client: &Client, css: &str, within: Duration) {
    client
        .wait()
        .at_most(within)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} did not appear within {within:?}: {e}"));
}

fn screenshots() -> bool {
    std::env::var("SAGAFLOW_CONSOLE_SCREENSHOTS").is_ok_and(|v| v == "1")
}

/// Saves the page as docs/console/NAME.png, `height` pixels tall.
async fn screenshot(client: &Client, name: &str, height: u32) {
    if !screenshots() {
        return;
    }
    client.set_window_size(1280, height).await.unwrap();
    let png = client.screenshot().await.unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    client.set_window_size(1280, 1000).await.unwrap();
}

/// One raw HTTP/1.1 exchange; the status code and the body.
async fn http(base: &str, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap();
    (code, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_every_kind_of_workflow_and_its_actions_work() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--definitions",
            definitions.to_str().unwrap(),
            "--no-worker-after",
            "500ms",
            "--stuck-check-interval",
            "100ms",
        ],
    )
    .await;
    apply_definitions(&server, dir.path(), ORPHAN).await;
    // Reserve fails twice (retried with backoff), capture fails for good: compensated.
    let worker =
        WorkerProcess::start(&server.url, &["--fault", "bench.reserve=error:2", "--fault", "bench.capture=fatal"])
            .await;
    let mut client = server.client().await;
    let start = |kind: &str, request_id: &str, input: &str| start_request(kind, request_id, input);

    let hostile = r#"{"note": "<script>window.pwned = 1</script>", "html": "<img src=x onerror=window.pwned=2>"}"#;
    let compensated =
        client.start_workflow(start("quick", "r-compensated", hostile)).await.unwrap().into_inner().workflow_id;
    assert_eq!(status_of(&await_end(&mut client, &compensated).await), "COMPENSATED");
    let completed = client.start_workflow(start("sleepy", "r-completed", "{}")).await.unwrap().into_inner().workflow_id;
    assert_eq!(status_of(&await_end(&mut client, &completed).await), "COMPLETED");
    let stuck = client.start_workflow(start("orphan", "r-stuck", "{}")).await.unwrap().into_inner().workflow_id;
    wait_for_event(&mut client, &stuck, Duration::from_secs(15), |e| {
        matches!(e.attributes, Some(Attributes::StuckDetected(_)))
    })
    .await;
    let running = client.start_workflow(start("gated", "r-running", "{}")).await.unwrap().into_inner().workflow_id;
    wait_for_event(&mut client, &running, Duration::from_secs(15), |e| {
        matches!(e.attributes, Some(Attributes::ActivityCompleted(_)))
    })
    .await;

    let driver = start_driver().await;
    let browser = browser(&driver).await;
    let base = server.http.clone();

    // The list: newest first, each status, the stuck flag, why it was compensated.
    browser.goto(&format!("{base}/")).await.unwrap();
    let listed = rows(&browser).await;
    let expected: Vec<(String, String)> =
        [(&running, "RUNNING"), (&stuck, "RUNNING"), (&completed, "COMPLETED"), (&compensated, "COMPENSATED")]
            .iter()
            .map(|(id, status)| ((*id).clone(), (*status).to_owned()))
            .collect();
    assert_eq!(listed, expected, "newest first; the jobs' runs hidden");
    let stuck_row = text(&browser, &format!("tr[data-workflow-id='{stuck}']")).await;
    assert!(stuck_row.contains("NO_WORKER"), "{stuck_row}");
    let compensated_row = text(&browser, &format!("tr[data-workflow-id='{compensated}']")).await;
    assert!(compensated_row.contains("capture"), "the reason it was compensated: {compensated_row}");
    screenshot(&browser, "list", 900).await;

    // Filters and the search.
    browser.goto(&format!("{base}/?status=COMPLETED")).await.unwrap();
    assert_eq!(rows(&browser).await, vec![(completed.clone(), "COMPLETED".into())]);
    browser.goto(&format!("{base}/?stuck=1")).await.unwrap();
    assert_eq!(rows(&browser).await.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![stuck.clone()]);
    browser.goto(&format!("{base}/")).await.unwrap();
    browser.find(Locator::Id("f-q")).await.unwrap().send_keys("r-completed").await.unwrap();
    click_through(&browser, Locator::Css("form.filters button[type=submit]")).await;
    assert_eq!(rows(&browser).await.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![completed.clone()]);
    browser.goto(&format!("{base}/?jobs=1")).await.unwrap();
    assert!(rows(&browser).await.len() >= 4);

    // The compensated workflow: its timeline, its history, its hostile input kept inert.
    browser.goto(&format!("{base}/workflows/{compensated}")).await.unwrap();
    assert_eq!(text(&browser, "[data-testid=status]").await, "COMPENSATED");
    let reserve_outcomes = {
        let mut outcomes = Vec::new();
        for bar in
            browser.find_all(Locator::Css("g.lane[data-step=reserve]:not(.compensation) g.bar.attempt")).await.unwrap()
        {
            outcomes.push(bar.attr("data-outcome").await.unwrap().unwrap());
        }
        outcomes
    };
    assert_eq!(reserve_outcomes, ["failed", "failed", "completed"], "two retries, then the attempt that worked");
    assert!(count(&browser, "g.bar.backoff").await >= 2, "the backoffs between the attempts");
    assert_eq!(count(&browser, "g.lane.compensation g.bar.attempt.completed").await, 1, "reserve undone");
    assert_eq!(count(&browser, "g.lane[data-step=capture] g.bar.attempt.failed").await, 1);
    assert_eq!(count(&browser, "g.mark.workflow.compensation").await, 1);
    screenshot(&browser, "workflow", 1500).await;
    let history = common::full_history(&mut client, &compensated).await;
    assert_eq!(count(&browser, "table.history tbody tr").await, history.len());
    let pwned = browser.execute("return window.pwned === undefined;", vec![]).await.unwrap();
    assert_eq!(pwned, serde_json::Value::Bool(true), "the input's script ran");
    browser.find(Locator::Css("details#input > summary")).await.unwrap().click().await.unwrap();
    let input = text(&browser, "[data-testid=input]").await;
    assert!(input.contains("<script>window.pwned = 1</script>"), "shown as text: {input}");
    browser.find(Locator::Css("details#ev-1 > summary")).await.unwrap().click().await.unwrap();
    let payload = text(&browser, "details#ev-1 pre").await;
    assert!(payload.contains("\"workflow_type\": \"quick\""), "{payload}");
    assert!(count(&browser, "a[data-action=redrive]").await == 1, "a compensated workflow can be redriven");

    // The stuck one: the reason, and what to do next.
    browser.goto(&format!("{base}/workflows/{stuck}")).await.unwrap();
    let flag = text(&browser, "[data-testid=stuck]").await;
    assert!(flag.contains("NO_WORKER") && flag.contains("nobody.work") && flag.contains("Next step"), "{flag}");

    // The running one, parked on its signal: the wait is drawn, and the page
    // follows what happens elsewhere (a pause through the API) on its own.
    browser.goto(&format!("{base}/workflows/{running}")).await.unwrap();
    assert_eq!(count(&browser, "g.bar.waiting").await, 1, "waiting for the approve signal");
    client
        .pause_workflow(PauseWorkflowRequest {
            workflow_id: running.clone(),
            reason: "downstream maintenance".into(),
            identity: "test".into(),
        })
        .await
        .unwrap();
    wait_for(&browser, "section.callout.paused", Duration::from_secs(15)).await;
    assert!(text(&browser, "section.callout.paused").await.contains("downstream maintenance"));

    // Resume, then cancel, each through its confirmation.
    click_through(&browser, Locator::Css("a[data-action=resume]")).await;
    click_through(&browser, Locator::Css("form.action button[type=submit]")).await;
    wait_for(&browser, "p.notice", Duration::from_secs(10)).await;
    let summary = |id: &str| {
        let mut client = client.clone();
        let id = id.to_owned();
        async move {
            client
                .describe_workflow(DescribeWorkflowRequest { workflow_id: id })
                .await
                .unwrap()
                .into_inner()
                .summary
                .unwrap()
        }
    };
    assert!(summary(&running).await.paused_reason.is_empty(), "resumed through the console");
    click_through(&browser, Locator::Css("a[data-action=cancel]")).await;
    assert!(browser.current_url().await.unwrap().path().ends_with("/act/cancel"), "a confirmation comes first");
    assert_eq!(summary(&running).await.status, WorkflowStatus::Running as i32, "nothing happens before the confirm");
    browser.find(Locator::Id("reason")).await.unwrap().send_keys("customer changed their mind").await.unwrap();
    click_through(&browser, Locator::Css("form.action button[type=submit]")).await;
    wait_for(&browser, "p.notice", Duration::from_secs(10)).await;
    let ended = await_end(&mut client, &running).await;
    assert_eq!(status_of(&ended), "CANCELLED", "{ended:?}");
    assert_eq!(ended.reason, "customer changed their mind");

    // A refused action says why, on its confirmation page.
    browser.goto(&format!("{base}/workflows/{completed}/act/pause")).await.unwrap();
    browser.find(Locator::Id("reason")).await.unwrap().send_keys("too late").await.unwrap();
    click_through(&browser, Locator::Css("form.action button[type=submit]")).await;
    assert!(!text(&browser, "[data-testid=error]").await.is_empty());

    // Workers: the queues the worker serves, with its id.
    browser.goto(&format!("{base}/workers")).await.unwrap();
    let reserve = text(&browser, "tr[data-queue='bench.reserve']").await;
    assert!(reserve.contains(&worker.worker_id), "{reserve}");
    screenshot(&browser, "workers", 700).await;

    browser.close().await.unwrap();
    worker.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_a_client_sees_only_its_own_and_an_operator_acts_with_a_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let auth = secure::write_auth_file(dir.path());
    let definitions = write_test_definitions(dir.path());
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--auth-file", auth.to_str().unwrap(), "--definitions", definitions.to_str().unwrap()],
    )
    .await;
    let worker = WorkerProcess::start(&server.url, &["--token", WORKER]).await;
    let mut client = server.client().await;
    let mine = client
        .start_workflow(with_token(start_request("gated", "mine", "{}"), Some(CLIENT)))
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let theirs = client
        .start_workflow(with_token(start_request("gated", "theirs", "{}"), Some(OTHER_CLIENT)))
        .await
        .unwrap()
        .into_inner()
        .workflow_id;

    let driver = start_driver().await;
    let browser = browser(&driver).await;
    let base = server.http.clone();
    let sign_in = |token: &'static str| {
        let browser = browser.clone();
        let base = base.clone();
        async move {
            browser.goto(&format!("{base}/")).await.unwrap();
            assert!(browser.current_url().await.unwrap().path().ends_with("/login"), "sign in first");
            browser.find(Locator::Id("token")).await.unwrap().send_keys(token).await.unwrap();
            click_through(&browser, Locator::Css("form.login button[type=submit]")).await;
            wait_for(&browser, "table.workflows", Duration::from_secs(10)).await;
        }
    };

    // A client: its own workflow only, read-only.
    sign_in(CLIENT).await;
    let session = browser.get_named_cookie("sagaflow_session").await.unwrap();
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.same_site().map(|s| s.to_string()), Some("Strict".to_owned()));
    assert_eq!(rows(&browser).await.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![mine.clone()]);
    assert_eq!(count(&browser, "a[href='/workers']").await, 0);
    browser.goto(&format!("{base}/workflows/{mine}")).await.unwrap();
    assert_eq!(text(&browser, "[data-testid=status]").await, "RUNNING");
    assert_eq!(count(&browser, "a[data-action]").await, 0, "a client has no action buttons");
    browser.goto(&format!("{base}/workflows/{theirs}")).await.unwrap();
    assert!(text(&browser, "main").await.contains("not found"), "another client's workflow reads as missing");
    browser.goto(&format!("{base}/workers")).await.unwrap();
    assert!(text(&browser, "main").await.contains("operator"));
    browser.goto(&format!("{base}/workflows/{mine}/act/cancel")).await.unwrap();
    assert!(text(&browser, "main").await.contains("needs the role operator"));
    browser.goto(&format!("{base}/")).await.unwrap();
    click_through(&browser, Locator::Css("header form button")).await;
    wait_for(&browser, "form.login", Duration::from_secs(10)).await;

    // An operator sees both and acts.
    sign_in(OPERATOR).await;
    let mut ids: Vec<String> = rows(&browser).await.into_iter().map(|(id, _)| id).collect();
    ids.sort();
    let mut both = vec![mine.clone(), theirs.clone()];
    both.sort();
    assert_eq!(ids, both);

    // A POST without this session's CSRF token is refused, even with its cookie.
    let cookie = browser.get_named_cookie("sagaflow_session").await.unwrap();
    let headers =
        format!("Cookie: sagaflow_session={}\r\nContent-Type: application/x-www-form-urlencoded\r\n", cookie.value());
    let path = format!("/workflows/{theirs}/act/cancel");
    for body in ["reason=forged", "reason=forged&csrf=0123456789abcdef"] {
        let (code, page) = http(&base, "POST", &path, &headers, body).await;
        assert_eq!(code, 403, "{page}");
        assert!(page.contains("security token"), "{page}");
    }
    let cross_site = format!("{headers}Sec-Fetch-Site: cross-site\r\n");
    assert_eq!(http(&base, "POST", &path, &cross_site, "reason=forged").await.0, 403);
    let described = client
        .describe_workflow(with_token(DescribeWorkflowRequest { workflow_id: theirs.clone() }, Some(OPERATOR)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.summary.unwrap().status, WorkflowStatus::Running as i32, "the forged cancels did nothing");

    // The operator's own form works.
    browser.goto(&format!("{base}/workflows/{theirs}")).await.unwrap();
    click_through(&browser, Locator::Css("a[data-action=cancel]")).await;
    browser.find(Locator::Id("reason")).await.unwrap().send_keys("fraud check").await.unwrap();
    click_through(&browser, Locator::Css("form.action button[type=submit]")).await;
    wait_for(&browser, "p.notice", Duration::from_secs(10)).await;
    let ended = client
        .await_workflow(with_token(
            sagaflow_proto::v1::AwaitWorkflowRequest { workflow_id: theirs.clone(), timeout_ms: 30_000 },
            Some(OPERATOR),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.summary.map(|s| s.status), Some(WorkflowStatus::Cancelled as i32));

    // /healthz and /metrics keep their rules.
    assert_eq!(http(&base, "GET", "/healthz", "", "").await.0, 200);
    assert_eq!(http(&base, "GET", "/metrics", "", "").await.0, 401);
    assert_eq!(http(&base, "GET", "/", "", "").await.0, 303, "the console asks to sign in");

    browser.close().await.unwrap();
    worker.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkout_page_shows_what_was_bought_paid_and_published() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut dev = tokio::process::Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let grpc = banner.split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_end_matches(',').to_owned();
    let console = banner
        .split("console on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .trim_end_matches([',', '/'])
        .to_owned();
    let started = tokio::process::Command::new(BIN)
        .args(["--server", &grpc, "checkout", "start", "--request-id", "console-1", "--customer", "alice"])
        .args(["--item", "sku-mug:2", "--item", "sku-tee:1", "--coupon", "WELCOME10", "--wait", "--output", "json"])
        .output()
        .await
        .unwrap();
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let checkout: serde_json::Value = serde_json::from_slice(&started.stdout).unwrap();
    let id = checkout["checkout_id"].as_str().unwrap().to_owned();

    let driver = start_driver().await;
    let browser = browser(&driver).await;
    browser.goto(&format!("{console}/workflows/{id}")).await.unwrap();
    click_through(&browser, Locator::LinkText("Checkout view")).await;
    assert_eq!(text(&browser, "[data-testid=checkout-status]").await, "SHIPPED");
    assert_eq!(text(&browser, "[data-testid=total]").await, "45.88");
    assert_eq!(count(&browser, "table.lines tbody tr").await, 2);
    assert!(text(&browser, "table.lines tfoot").await.contains("WELCOME10"));
    assert!(text(&browser, "table.ledger").await.contains("capture"));
    assert!(text(&browser, "[data-testid=reservation]").await.contains("committed"));
    let mut events = Vec::new();
    for row in browser.find_all(Locator::Css("table.events tr[data-event]")).await.unwrap() {
        events.push(row.attr("data-event").await.unwrap().unwrap());
    }
    assert_eq!(events.first().map(String::as_str), Some("CheckoutStarted"), "{events:?}");
    assert!(
        events.contains(&"PaymentCaptured".to_owned()) && events.contains(&"CheckoutCompleted".to_owned()),
        "{events:?}"
    );
    screenshot(&browser, "checkout", 1300).await;
    browser.close().await.unwrap();
    dev.start_kill().unwrap();
    let _ = dev.wait().await;
}

/// Parked on a signal: 100,000 of them fill the store (open, as after a
/// busy day with a backlog), with no worker needed.
const PARKED: &str = r#"
name: console.parked
version: 1
steps:
  - name: park
    action: {type: await_signal, signal: go, timeout_ms: 0}
"#;

/// A step that fails 249 times (retried after 1 ms) before it completes:
/// 4 events an attempt, 1,001 events in all.
const CHURN: &str = r#"
name: console.churn
version: 1
steps:
  - name: flaky
    action: {type: activity, activity_type: bench.reserve}
    retry: {maximum_attempts: 0, initial_interval_ms: 1, maximum_interval_ms: 1, backoff_coefficient: 1.0}
    timeouts: {start_to_close_ms: 2000}
"#;

/// The server's own time for one GET, from the console's `Server-Timing` header, in ms.
async fn server_ms(base: &str, path: &str) -> f64 {
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{}", response.lines().next().unwrap_or_default());
    response
        .lines()
        .find_map(|l| l.strip_prefix("server-timing: app;dur="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let at = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[at]
}

/// `cargo test -p sagaflow-cli --test console -- --ignored --nocapture`:
/// the list's first page with 100,000 workflows in the store, and a
/// workflow page of 1,000 events, timed by the server (docs/performance.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fills a store with 100,000 workflows: a measurement, run by hand"]
async fn console_pages_are_fast_with_100000_workflows() {
    let workflows: usize =
        std::env::var("SAGAFLOW_CONSOLE_WORKFLOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    apply_definitions(&server, dir.path(), PARKED).await;
    apply_definitions(&server, dir.path(), CHURN).await;
    let filled = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let lanes = 32;
    for lane in 0..lanes {
        let mut client = server.client().await;
        tasks.spawn(async move {
            for i in (lane..workflows).step_by(lanes) {
                let request = start_request("console.parked", &format!("parked-{i}"), "{}");
                client.start_workflow(request).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    println!("filled {workflows} workflows in {:.1} s", filled.elapsed().as_secs_f64());
    let worker = WorkerProcess::start(&server.url, &["--fault", "bench.reserve=error:249"]).await;
    let mut client = server.client().await;
    let churn = client.start_workflow(start_request("console.churn", "churn", "{}")).await.unwrap().into_inner();
    let ended = await_end(&mut client, &churn.workflow_id).await;
    let events = ended.summary.unwrap().history_length;
    worker.stop().await;

    let base = server.http.clone();
    let first = server_ms(&base, "/").await;
    let mut list: Vec<f64> = Vec::new();
    for _ in 0..20 {
        list.push(server_ms(&base, "/").await);
    }
    let mut filtered: Vec<f64> = Vec::new();
    for _ in 0..5 {
        filtered.push(server_ms(&base, "/?status=COMPLETED").await);
    }
    let mut page: Vec<f64> = Vec::new();
    let path = format!("/workflows/{}", churn.workflow_id);
    for _ in 0..20 {
        page.push(server_ms(&base, &path).await);
    }
    let (list_p50, list_p95) = (percentile(&mut list, 0.5), percentile(&mut list, 0.95));
    let (page_p50, page_p95) = (percentile(&mut page, 0.5), percentile(&mut page, 0.95));
    println!("first visit (builds the index of {workflows} workflows): {first:.1} ms");
    println!("list, first page of 50:            p50 {list_p50:.1} ms  p95 {list_p95:.1} ms");
    println!(
        "list, filter matching 1 row:       p50 {:.1} ms (examines at most 20,000 rows)",
        percentile(&mut filtered, 0.5)
    );
    println!("workflow page, {events} events:       p50 {page_p50:.1} ms  p95 {page_p95:.1} ms");
    assert!(events >= 1000, "the churn workflow has {events} events");
    assert!(list_p95 < 200.0, "the list took {list_p95:.1} ms at p95");
    assert!(page_p95 < 300.0, "the workflow page took {page_p95:.1} ms at p95");
    server.stop().await;
}
