//! `sagaflow definition …`: saga definitions as data, registered on a running
//! server (`DefinitionService`) from YAML or JSON files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Subcommand;
use sagaflow_proto::v1::definition_service_client::DefinitionServiceClient;
use sagaflow_proto::v1::{
    DefinitionChange, DefinitionVersion, DeprecateDefinitionRequest, GetDefinitionRequest, ListDefinitionsRequest,
    RegisterDefinitionRequest,
};
use sagaflow_server::workflows::SagaDefinition;
use sagaflow_server::workflows::document::{canonical_json, content_hash, json_schema_text};
use serde_json::{Value, json};

use super::connection::{Conn, connect_channel};
use super::workflow::status_error;
use super::{Failure, Output, definition_files, render};

#[derive(Debug, Subcommand)]
pub enum DefinitionCommand {
    /// Register the definitions of FILEs on the server, all or none, in one durable commit.
    // In `after_help`, not a second doc paragraph: that would switch `--help` to
    // clap's long form, which lists the global flags without descriptions.
    #[command(after_help = "A file is YAML (several documents separated by `---` allowed) or, when its name ends \
                            in .json, JSON; each document is one definition or a list of them. A version is \
                            immutable: the same type and version with the same content again changes nothing; \
                            with other content the whole apply is refused (ALREADY_EXISTS). Operators only.")]
    Apply {
        /// Definition files (YAML, or JSON when the name ends in .json).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Show what `apply` would change, without changing anything.
    #[command(after_help = "Each definition is a new type, a new version, identical to the registered version, \
                            or a conflict (other content under a registered version: apply would be refused). \
                            A conflict lists the fields that differ and makes the command exit 1.")]
    Diff {
        /// Definition files, as for `apply`.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// List every definition type with its versions, content hashes and status.
    List,
    /// Print one definition as JSON.
    Get {
        /// The workflow type.
        workflow_type: String,
        /// The version; by default the latest.
        #[arg(long, value_name = "N")]
        version: Option<u32>,
    },
    /// Print the JSON Schema of the definition format.
    #[command(after_help = "The schema (JSON Schema draft 2020-12) is generated from the definition types of this \
                            build; docs/definitions/saga-definition.schema.json is the published copy. Point an \
                            editor at it for completion and checks as you type: with yaml-language-server, put \
                            `# yaml-language-server: $schema=<path or URL of the schema>` at the top of a file. \
                            `apply` and `diff` check every definition against it before anything is sent; the \
                            rules it cannot express (step kinds in order, pointers naming earlier steps) are \
                            checked after it. Needs no server.")]
    Schema,
    /// Deprecate a version: it can no longer be started; workflows running on it go on. Operators only.
    Deprecate {
        /// The workflow type.
        workflow_type: String,
        /// The version to deprecate.
        #[arg(long, value_name = "N")]
        version: u32,
    },
}

async fn connect(server: &str) -> anyhow::Result<DefinitionServiceClient<Conn>> {
    Ok(DefinitionServiceClient::new(connect_channel(server).await?))
}

/// A file error as a failure with a code, so that `--output json` says INVALID_ARGUMENT.
fn read_files(files: &[PathBuf]) -> anyhow::Result<Vec<SagaDefinition>> {
    definition_files::read_all(files)
        .map_err(|e| Failure::Status { code: "INVALID_ARGUMENT".into(), message: e.to_string() }.into())
}

fn change_name(change: DefinitionChange) -> &'static str {
    match change {
        DefinitionChange::NewType => "new type",
        DefinitionChange::NewVersion => "new version",
        DefinitionChange::Identical => "identical",
        DefinitionChange::Conflict => "conflict",
        DefinitionChange::Unspecified => "unknown",
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

pub async fn run(command: DefinitionCommand, server: &str, output: Output) -> anyhow::Result<()> {
    match command {
        DefinitionCommand::Apply { files } => apply(&files, server, output).await,
        DefinitionCommand::Diff { files } => diff(&files, server, output).await,
        DefinitionCommand::List => list(server, output).await,
        DefinitionCommand::Schema => {
            out!("{}", json_schema_text());
            Ok(())
        }
        DefinitionCommand::Get { workflow_type, version } => get(workflow_type, version, server, output).await,
        DefinitionCommand::Deprecate { workflow_type, version } => {
            let request = DeprecateDefinitionRequest { workflow_type: workflow_type.clone(), version };
            let response =
                connect(server).await?.deprecate_definition(request).await.map_err(status_error)?.into_inner();
            match output {
                Output::Json => outln!(
                    "{}",
                    json!({"workflow_type": workflow_type, "version": version, "already_deprecated": response.already_deprecated})
                ),
                Output::Text if response.already_deprecated => {
                    outln!("{workflow_type} v{version} was already deprecated");
                }
                Output::Text => outln!("{workflow_type} v{version} deprecated: it can no longer be started"),
            }
            Ok(())
        }
    }
}

async fn apply(files: &[PathBuf], server: &str, output: Output) -> anyhow::Result<()> {
    let definitions = read_files(files)?;
    let request =
        RegisterDefinitionRequest { definitions: definitions.iter().map(canonical_json).collect(), dry_run: false };
    let results = connect(server).await?.register_definition(request).await.map_err(status_error)?.into_inner().results;
    match output {
        Output::Json => {
            let items: Vec<Value> = results
                .iter()
                .map(|r| {
                    json!({"workflow_type": r.workflow_type, "version": r.version, "content_hash": r.content_hash,
                           "change": change_name(r.change()).replace(' ', "_")})
                })
                .collect();
            outln!("{}", json!({ "results": items }));
        }
        Output::Text => {
            for r in &results {
                let verb = match r.change() {
                    DefinitionChange::NewType | DefinitionChange::NewVersion => "registered",
                    _ => "unchanged",
                };
                outln!(
                    "{} v{} {verb} ({}, {})",
                    r.workflow_type,
                    r.version,
                    change_name(r.change()),
                    short(&r.content_hash)
                );
            }
        }
    }
    Ok(())
}

/// What applying one definition would change, judged here from the server's
/// list (a client may read it; only an operator may register).
struct Planned {
    definition: SagaDefinition,
    hash: String,
    change: DefinitionChange,
    registered_hash: Option<String>,
    /// JSON paths whose values differ, for a conflict.
    differences: Vec<String>,
}

async fn diff(files: &[PathBuf], server: &str, output: Output) -> anyhow::Result<()> {
    let definitions = read_files(files)?;
    let mut client = connect(server).await?;
    let listed = client.list_definitions(ListDefinitionsRequest {}).await.map_err(status_error)?.into_inner().types;
    let mut known: BTreeMap<String, BTreeMap<u32, String>> = listed
        .into_iter()
        .map(|t| (t.workflow_type, t.versions.into_iter().map(|v| (v.version, v.content_hash)).collect()))
        .collect();
    let mut planned = Vec::with_capacity(definitions.len());
    for definition in definitions {
        let canonical = canonical_json(&definition);
        let hash = content_hash(&canonical);
        let versions = known.get(&definition.name);
        let (change, registered_hash) = match versions.map(|v| v.get(&definition.version)) {
            None => (DefinitionChange::NewType, None),
            Some(None) => (DefinitionChange::NewVersion, None),
            Some(Some(registered)) if *registered == hash => (DefinitionChange::Identical, Some(registered.clone())),
            Some(Some(registered)) => (DefinitionChange::Conflict, Some(registered.clone())),
        };
        let differences = if change == DefinitionChange::Conflict {
            let request =
                GetDefinitionRequest { workflow_type: definition.name.clone(), version: Some(definition.version) };
            let stored = client.get_definition(request).await.map_err(status_error)?.into_inner().definition;
            let stored: Value = serde_json::from_str(&stored.unwrap_or_default().definition).unwrap_or(Value::Null);
            let mut paths = Vec::new();
            differing_paths("", &stored, &serde_json::from_str(&canonical).unwrap_or(Value::Null), &mut paths);
            paths
        } else {
            Vec::new()
        };
        // Later definitions of the same files see this one, as apply would.
        known.entry(definition.name.clone()).or_default().entry(definition.version).or_insert_with(|| hash.clone());
        planned.push(Planned { definition, hash, change, registered_hash, differences });
    }
    let conflicts = planned.iter().filter(|p| p.change == DefinitionChange::Conflict).count();
    match output {
        Output::Json => {
            let items: Vec<Value> = planned
                .iter()
                .map(|p| {
                    json!({"workflow_type": p.definition.name, "version": p.definition.version,
                           "content_hash": p.hash, "registered_hash": p.registered_hash,
                           "change": change_name(p.change).replace(' ', "_"), "differences": p.differences})
                })
                .collect();
            outln!("{}", json!({ "definitions": items, "conflicts": conflicts }));
        }
        Output::Text => {
            for p in &planned {
                outln!(
                    "{} v{}: {} ({})",
                    p.definition.name,
                    p.definition.version,
                    change_name(p.change),
                    short(&p.hash)
                );
                if let Some(registered) =
                    p.registered_hash.as_deref().filter(|_| p.change == DefinitionChange::Conflict)
                {
                    outln!(
                        "  registered with other content ({}); apply would be refused. Differs at:",
                        short(registered)
                    );
                    for path in &p.differences {
                        outln!("    {path}");
                    }
                }
            }
        }
    }
    if conflicts > 0 {
        return Err(Failure::Status {
            code: "ALREADY_EXISTS".into(),
            message: format!("{conflicts} definition(s) change the content of a registered version; bump the version"),
        }
        .into());
    }
    Ok(())
}

/// Where two JSON documents differ, as paths like `steps[1].retry.max_attempts`
/// (at most 50: enough to see what changed).
fn differing_paths(at: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    const MAX: usize = 50;
    if out.len() >= MAX || old == new {
        return;
    }
    let join = |key: &str| if at.is_empty() { key.to_owned() } else { format!("{at}.{key}") };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                differing_paths(
                    &join(key),
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let path = format!("{at}[{i}]");
                differing_paths(&path, a.get(i).unwrap_or(&Value::Null), b.get(i).unwrap_or(&Value::Null), out);
            }
        }
        _ => out.push(if at.is_empty() { ".".into() } else { at.to_owned() }),
    }
}

fn version_json(v: &DefinitionVersion) -> Value {
    let mut item = json!({"version": v.version, "content_hash": v.content_hash, "deprecated": v.deprecated,
                          "built_in": v.built_in});
    if !v.definition.is_empty() {
        item["workflow_type"] = json!(v.workflow_type);
        item["definition"] = render::json_text(&v.definition);
    }
    item
}

async fn list(server: &str, output: Output) -> anyhow::Result<()> {
    let types = connect(server)
        .await?
        .list_definitions(ListDefinitionsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .types;
    match output {
        Output::Json => {
            let items: Vec<Value> = types
                .iter()
                .map(|t| json!({"workflow_type": t.workflow_type, "versions": t.versions.iter().map(version_json).collect::<Vec<_>>()}))
                .collect();
            outln!("{}", Value::Array(items));
        }
        Output::Text => {
            let rows: Vec<Vec<String>> = types
                .iter()
                .flat_map(|t| t.versions.iter())
                .map(|v| {
                    vec![
                        v.workflow_type.clone(),
                        v.version.to_string(),
                        short(&v.content_hash).to_owned(),
                        if v.deprecated { "deprecated" } else { "active" }.to_owned(),
                        if v.built_in { "built-in" } else { "registered" }.to_owned(),
                    ]
                })
                .collect();
            out!("{}", render::table(&["TYPE", "VERSION", "HASH", "STATUS", "SOURCE"], &rows));
        }
    }
    Ok(())
}

async fn get(workflow_type: String, version: Option<u32>, server: &str, output: Output) -> anyhow::Result<()> {
    let request = GetDefinitionRequest { workflow_type, version };
    let found = connect(server).await?.get_definition(request).await.map_err(status_error)?.into_inner().definition;
    let Some(found) = found else { anyhow::bail!("the server answered without a definition") };
    match output {
        Output::Json => outln!("{}", version_json(&found)),
        Output::Text => {
            let status = if found.deprecated { ", deprecated" } else { "" };
            outln!("# {} v{} ({}{status})", found.workflow_type, found.version, found.content_hash);
            let pretty = serde_json::to_string_pretty(&render::json_text(&found.definition))?;
            outln!("{pretty}");
        }
    }
    Ok(())
}
