//! Saga definitions as durable data (issue 19), through real processes: a
//! definition applied to a running server with `sagaflow definition apply`
//! outlives a `kill -9` and a restart with no definition file, and the
//! workflow running on it goes on; a version is immutable; a deprecated
//! version is not started; `definition diff` says what apply would change;
//! the shipped definition files are what the server runs; a file is checked
//! against the published JSON Schema before anything is sent.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{BIN, ServerProcess, WorkerProcess, await_end, full_history, start_request, status_of, wait_for_event};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{SignalWorkflowRequest, StartWorkflowRequest};
use serde_json::Value;
use tonic::Code;

/// A trip on the bench activities: reserve, wait for an approval, capture
/// (the pivot), order. The wait keeps it running across a restart.
fn trip_yaml(version: u32, description: &str) -> String {
    format!(
        "name: trip
version: {version}
description: {description}
steps:
  - name: hold
    kind: compensable
    action: {{type: activity, activity_type: bench.reserve}}
    compensation: {{activity_type: bench.release}}
  - name: approve
    action: {{type: await_signal, signal: approve, timeout_ms: 0}}
  - name: charge
    kind: pivot
    action: {{type: activity, activity_type: bench.capture}}
  - name: book
    kind: retriable
    action: {{type: activity, activity_type: bench.order}}
"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn sagaflow(server: &ServerProcess, args: &[&str]) -> Output {
    tokio::process::Command::new(BIN).arg("--server").arg(&server.url).args(args).output().await.unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command that must succeed and returns its JSON output.
async fn json(server: &ServerProcess, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let output = sagaflow(server, &all).await;
    assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

fn pinned_hash(events: &[sagaflow_proto::v1::HistoryEvent]) -> (u32, String) {
    match events.first().and_then(|e| e.attributes.as_ref()) {
        Some(Attributes::WorkflowStarted(started)) => (started.definition_version, started.definition_hash.clone()),
        other => panic!("the history starts with {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_definition_outlives_kill9_and_its_workflow_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let worker = WorkerProcess::start(&server.url, &[]).await;
    let file = write(dir.path(), "trip.yaml", &trip_yaml(1, "a weekend away"));
    let file = file.to_str().unwrap();

    let diff = json(&server, &["definition", "diff", file]).await;
    assert_eq!(diff["definitions"][0]["change"], "new_type", "{diff}");
    let applied = sagaflow(&server, &["definition", "apply", file]).await;
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert!(stdout(&applied).starts_with("trip v1 registered (new type, "), "{}", stdout(&applied));
    let hash = json(&server, &["definition", "get", "trip"]).await["content_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);

    let mut client = server.client().await;
    let id = client.start_workflow(start_request("trip", "trip-1", "{}")).await.unwrap().into_inner().workflow_id;
    wait_for_event(&mut client, &id, Duration::from_secs(30), |e| {
        matches!(&e.attributes, Some(Attributes::ActivityCompleted(_)))
    })
    .await;
    assert_eq!(pinned_hash(&full_history(&mut client, &id).await), (1, hash.clone()));

    // No shutdown, no flush on the way out; then a start with no definition file.
    let url = server.url.clone();
    server.kill9().await;
    let server = ServerProcess::start_on(dir.path(), &url, &[]).await;
    let listed = json(&server, &["definition", "list"]).await;
    let trip = listed.as_array().unwrap().iter().find(|t| t["workflow_type"] == "trip").expect("trip survives");
    assert_eq!(trip["versions"][0]["content_hash"], Value::String(hash.clone()));
    assert_eq!(trip["versions"][0]["built_in"], false);

    // The running workflow goes on where it was, served by the same worker.
    let mut client = server.client().await;
    let approve = SignalWorkflowRequest { workflow_id: id.clone(), name: "approve".into(), ..Default::default() };
    client.signal_workflow(approve).await.unwrap();
    assert_eq!(status_of(&await_end(&mut client, &id).await), "COMPLETED");
    // And the type starts anew, with no file anywhere.
    let again = client.start_workflow(start_request("trip", "trip-2", "{}")).await.unwrap().into_inner().workflow_id;
    assert_eq!(pinned_hash(&full_history(&mut client, &again).await).1, hash);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_is_immutable_and_a_deprecated_one_is_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let v1 = write(dir.path(), "v1.yaml", &trip_yaml(1, "first"));
    let changed = write(dir.path(), "changed.yaml", &trip_yaml(1, "edited in place"));
    let v2 = write(dir.path(), "v2.json", &{
        let yaml: Value = serde_norway::from_str(&trip_yaml(2, "second")).unwrap();
        yaml.to_string()
    });
    let (v1, changed, v2) = (v1.to_str().unwrap(), changed.to_str().unwrap(), v2.to_str().unwrap());
    assert!(sagaflow(&server, &["definition", "apply", v1]).await.status.success());

    // The same content again changes nothing.
    let again = json(&server, &["definition", "apply", v1]).await;
    assert_eq!(again["results"][0]["change"], "identical", "{again}");

    // Other content under version 1: diff names the field, apply is refused whole.
    let diff = sagaflow(&server, &["definition", "diff", changed, v2]).await;
    assert_eq!(diff.status.code(), Some(1), "{}", stdout(&diff));
    let text = stdout(&diff);
    assert!(text.contains("trip v1: conflict"), "{text}");
    assert!(text.contains("    description\n"), "{text}");
    assert!(text.contains("trip v2: new version"), "{text}");
    let refused = sagaflow(&server, &["definition", "apply", "--output", "json", v2, changed]).await;
    assert_eq!(refused.status.code(), Some(1));
    let error: Value = serde_json::from_str(&stderr(&refused)).unwrap();
    assert_eq!(error["error"]["code"], "ALREADY_EXISTS", "{error}");
    let versions = json(&server, &["definition", "list"]).await;
    let trip = versions.as_array().unwrap().iter().find(|t| t["workflow_type"] == "trip").unwrap().clone();
    assert_eq!(trip["versions"].as_array().unwrap().len(), 1, "v2 rode in the refused apply: {trip}");

    // A new version is the one a start takes by default.
    let applied = json(&server, &["definition", "apply", v2]).await;
    assert_eq!(applied["results"][0]["change"], "new_version");
    let mut client = server.client().await;
    let latest = client.start_workflow(start_request("trip", "t-latest", "{}")).await.unwrap().into_inner();
    assert_eq!(pinned_hash(&full_history(&mut client, &latest.workflow_id).await).0, 2);

    // Deprecated: not started by default nor by name; the running one stays readable.
    let deprecated = json(&server, &["definition", "deprecate", "trip", "--version", "2"]).await;
    assert_eq!(deprecated["already_deprecated"], false);
    let by_default = client.start_workflow(start_request("trip", "t-default", "{}")).await.unwrap().into_inner();
    assert_eq!(pinned_hash(&full_history(&mut client, &by_default.workflow_id).await).0, 1);
    let named = StartWorkflowRequest { definition_version: Some(2), ..start_request("trip", "t-named", "{}") };
    let status = client.start_workflow(named).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let got = json(&server, &["definition", "get", "trip", "--version", "2"]).await;
    assert_eq!(got["deprecated"], true);
    assert!(json(&server, &["definition", "deprecate", "trip", "--version", "1"]).await["already_deprecated"] == false);
    let status = client.start_workflow(start_request("trip", "t-none", "{}")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("every version of trip is deprecated"), "{}", status.message());
    // A retried start from before the deprecation still answers with its workflow.
    let retried = client.start_workflow(start_request("trip", "t-latest", "{}")).await.unwrap().into_inner();
    assert_eq!((retried.workflow_id, retried.already_started), (latest.workflow_id.clone(), true));

    // A deprecation is stored like the definitions.
    let url = server.url.clone();
    server.kill9().await;
    let server = ServerProcess::start_on(dir.path(), &url, &[]).await;
    let mut client = server.client().await;
    let status = client.start_workflow(start_request("trip", "t-after", "{}")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test]
async fn an_invalid_file_names_the_file_the_field_path_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let bad = write(dir.path(), "bad.yaml", &trip_yaml(1, "x").replace("kind: pivot", "kind: retriable"));
    let output = sagaflow(&server, &["definition", "apply", bad.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("{}: steps[2]: a retriable step belongs after the pivot", bad.display())),
        "{message}"
    );
    let typo = write(dir.path(), "typo.yaml", &trip_yaml(1, "x").replace("version: 1", "version: one"));
    let output = sagaflow(&server, &["definition", "apply", typo.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("typo.yaml: version: expected an integer, found \"one\" (schema)"),
        "{}",
        stderr(&output)
    );
    // Nothing was registered.
    let listed = json(&server, &["definition", "list"]).await;
    assert!(listed.as_array().unwrap().iter().all(|t| t["workflow_type"] != "trip"), "{listed}");
}

#[tokio::test]
async fn definitions_at_boot_are_applied_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "trip.yaml", &trip_yaml(3, "from the command line"));
    let server = ServerProcess::start(dir.path(), &["--definitions", file.to_str().unwrap()]).await;
    let url = server.url.clone();
    server.kill9().await;
    std::fs::remove_file(&file).unwrap();
    let server = ServerProcess::start_on(dir.path(), &url, &[]).await;
    let got = json(&server, &["definition", "get", "trip"]).await;
    assert_eq!(got["version"], 3);
    assert_eq!(got["definition"]["description"], "from the command line");
    // A boot file changing a stored version's content stops the start.
    let changed = write(dir.path(), "trip.yaml", &trip_yaml(3, "edited"));
    server.kill9().await;
    let refused = tokio::process::Command::new(BIN)
        .args(["server", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--definitions", changed.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("already registered with other content"), "{}", stderr(&refused));
}

/// Policies as fields of a definition: a file's `defaults` fill in the
/// policies its steps leave out, and what is registered (and hashed, and
/// shown) is each step's effective policy.
#[tokio::test]
async fn defaults_are_resolved_into_each_steps_effective_policy() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let file = write(
        dir.path(),
        "trip.yaml",
        "name: trip
version: 1
defaults:
  retry: {initial_interval_ms: 1000, maximum_attempts: 3}
  timeouts: {start_to_close_ms: 5000}
  compensation_retry: {maximum_attempts: 20}
steps:
  - name: hold
    action: {type: activity, activity_type: bench.reserve}
    compensation: {activity_type: bench.release}
  - name: charge
    kind: pivot
    action: {type: activity, activity_type: bench.capture}
    retry: {maximum_attempts: 5}
  - name: book
    kind: retriable
    action: {type: activity, activity_type: bench.order}
    timeouts: {start_to_close_ms: 100}
",
    );
    let file = file.to_str().unwrap();
    let applied = sagaflow(&server, &["definition", "apply", file]).await;
    assert!(applied.status.success(), "{}", stderr(&applied));

    let got = json(&server, &["definition", "get", "trip"]).await;
    let steps = &got["definition"]["steps"];
    // hold: the definition's defaults, its compensation the compensation default.
    assert_eq!(steps[0]["retry"]["initial_interval_ms"], 1000, "{got}");
    assert_eq!(steps[0]["retry"]["maximum_attempts"], 3);
    assert_eq!(steps[0]["retry"]["backoff_coefficient"], 2.0, "a default's other fields are the built-in's");
    assert_eq!(steps[0]["timeouts"]["start_to_close_ms"], 5000);
    assert_eq!(steps[0]["compensation"]["retry"]["maximum_attempts"], 20);
    assert_eq!(steps[0]["compensation"]["retry"]["initial_interval_ms"], 200);
    assert_eq!(steps[0]["compensation"]["timeouts"]["start_to_close_ms"], 30_000, "no default: the built-in");
    // charge: its own retry, whole; the default timeouts.
    assert_eq!(steps[1]["retry"]["initial_interval_ms"], 200);
    assert_eq!(steps[1]["retry"]["maximum_attempts"], 5);
    assert_eq!(steps[1]["timeouts"]["start_to_close_ms"], 5000);
    // book: retriable, so the default's intervals without a limit; its own timeouts.
    assert_eq!(steps[2]["retry"]["initial_interval_ms"], 1000);
    assert_eq!(steps[2]["retry"]["maximum_attempts"], 0);
    assert_eq!(steps[2]["timeouts"]["start_to_close_ms"], 100);
    // The defaults are shown too, and the file is what was registered.
    assert_eq!(got["definition"]["defaults"]["retry"]["maximum_attempts"], 3, "{got}");
    let again = json(&server, &["definition", "apply", file]).await;
    assert_eq!(again["results"][0]["change"], "identical", "{again}");

    // The same effective policies written on each step is other content:
    // the document differs (no defaults), though the steps do not.
    let mut spelled = got["definition"].clone();
    spelled.as_object_mut().unwrap().remove("defaults");
    spelled["version"] = 2.into();
    let spelled_file = write(dir.path(), "spelled.json", &spelled.to_string());
    let applied = json(&server, &["definition", "apply", spelled_file.to_str().unwrap()]).await;
    assert_eq!(applied["results"][0]["change"], "new_version", "{applied}");
    let v2 = json(&server, &["definition", "get", "trip", "--version", "2"]).await;
    assert_eq!(v2["definition"]["steps"], *steps);

    // A default breaking a step's rule is refused with its path.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "name: bad\nversion: 1\ndefaults: {retry: {backoff_coefficient: 0.5}}\nsteps:\n  - name: a\n    action: {type: activity, activity_type: bench.reserve}\n",
    );
    let output = sagaflow(&server, &["definition", "apply", bad.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        // The schema catches it first, with the same path.
        stderr(&output).contains("bad.yaml: defaults.retry.backoff_coefficient: 0.5 is less than the minimum of 1"),
        "{}",
        stderr(&output)
    );
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// A newcomer applies the shipped files to a server: they are what it runs.
#[tokio::test]
async fn the_shipped_definition_files_are_what_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let checkout = repo_file("workflows/definitions/checkout.yaml");
    let refund = repo_file("workflows/definitions/refund.yaml");
    let files = [checkout.to_str().unwrap(), refund.to_str().unwrap()];
    let diff = json(&server, &["definition", "diff", files[0], files[1]]).await;
    assert_eq!(diff["conflicts"], 0, "{diff}");
    let applied = json(&server, &["definition", "apply", files[0], files[1]]).await;
    let results = applied["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{applied}");
    for (result, name) in results.iter().zip(["checkout", "refund"]) {
        assert_eq!((result["workflow_type"].as_str(), result["change"].as_str()), (Some(name), Some("identical")));
    }
    let text = sagaflow(&server, &["definition", "apply", files[0]]).await;
    assert!(stdout(&text).starts_with("checkout v1 unchanged (identical, "), "{}", stdout(&text));
}

/// `definition schema` prints the published schema, and says how to use it.
#[tokio::test]
async fn the_schema_command_prints_the_published_schema() {
    let output = tokio::process::Command::new(BIN).args(["definition", "schema"]).output().await.unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let published = std::fs::read_to_string(repo_file("docs/definitions/saga-definition.schema.json")).unwrap();
    assert!(
        stdout(&output) == published,
        "docs/definitions/saga-definition.schema.json is stale; regenerate it with\n  \
         cargo run -p sagaflow-cli -- definition schema > docs/definitions/saga-definition.schema.json"
    );
    let schema: Value = serde_json::from_str(&published).unwrap();
    assert_eq!(schema["title"], "SagaDefinition");
    let help = tokio::process::Command::new(BIN).args(["definition", "schema", "--help"]).output().await.unwrap();
    assert!(help.status.success());
    assert!(stdout(&help).contains("yaml-language-server"), "{}", stdout(&help));
    assert!(stdout(&help).contains("docs/definitions/saga-definition.schema.json"), "{}", stdout(&help));
}

/// A file that breaks the schema is refused before anything is sent: the
/// error names the file, the field path and the rule, and the exit is 1.
#[tokio::test]
async fn a_schema_error_names_the_file_the_field_path_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    // A misspelt field would otherwise be dropped, silently: the default
    // retry policy would replace the one meant.
    let misspelt = write(
        dir.path(),
        "misspelt.yaml",
        &trip_yaml(1, "x").replace(
            "    compensation: {activity_type: bench.release}\n",
            "    compensation: {activity_type: bench.release}\n    retyr: {maximum_attempts: 3}\n",
        ),
    );
    let slow = write(
        dir.path(),
        "slow.yaml",
        &trip_yaml(1, "x").replace("    kind: pivot\n", "    kind: pivot\n    retry: {backoff_coefficient: 0.5}\n"),
    );
    for (file, path, rule) in [
        (&misspelt, "steps[0]", "unknown field `retyr`, expected one of `action`, "),
        (&slow, "steps[2].retry.backoff_coefficient", "0.5 is less than the minimum of 1"),
    ] {
        for command in ["apply", "diff"] {
            let output = sagaflow(&server, &["definition", command, file.to_str().unwrap()]).await;
            assert_eq!(output.status.code(), Some(1), "{command}: {}", stdout(&output));
            let message = stderr(&output);
            assert!(message.contains(&format!("{}: {path}: {rule}", file.display())), "{command}: {message}");
            assert!(message.contains("(schema)"), "{message}");
        }
    }
    let refused = sagaflow(&server, &["definition", "apply", "--output", "json", slow.to_str().unwrap()]).await;
    assert_eq!(refused.status.code(), Some(1));
    let error: Value = serde_json::from_str(&stderr(&refused)).unwrap();
    assert_eq!(error["error"]["code"], "INVALID_ARGUMENT", "{error}");
    // Nothing was registered.
    let listed = json(&server, &["definition", "list"]).await;
    assert!(listed.as_array().unwrap().iter().all(|t| t["workflow_type"] != "trip"), "{listed}");
}
