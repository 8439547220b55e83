//! The docs stand alone: every relative link in README.md and docs/ names
//! a file of the repository, and none cites a design document kept elsewhere.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut files);
    files
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<&str> {
    text.match_indices("](").filter_map(|(at, _)| text[at + 2..].split_once(')').map(|(target, _)| target)).collect()
}

#[test]
fn relative_links_name_files_that_exist() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in links(&text) {
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() || path.contains("://") || path.starts_with("mailto:") {
                continue;
            }
            if !file.parent().unwrap().join(path).exists() {
                broken.push(format!("{}: {target}", file.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(broken.is_empty(), "links to files that do not exist:\n{}", broken.join("\n"));
}

#[test]
fn no_page_cites_a_design_document_outside_the_repository() {
    // Spelt in two pieces, so that this file is not itself a citation.
    let outside = concat!("DESIGN", ".md");
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(outside), "{} cites {outside}; the contract is docs/contract.md", file.display());
    }
    let contract = std::fs::read_to_string(root().join("docs/contract.md")).unwrap();
    for section in
        ["## Principles", "## Saga semantics", "## gRPC (contract)", "## CLI (contract)", "## Failure scenarios"]
    {
        assert!(contract.contains(section), "docs/contract.md lacks {section}");
    }
}

/// The definition reference: each YAML example that is a whole definition
/// passes the schema and the semantic rules, and every field of the schema
/// is named on the page.
#[test]
fn the_definition_reference_is_valid_and_complete() {
    use sagaflow_workflows::{document, schema};
    let page = std::fs::read_to_string(root().join("docs/definitions/reference.md")).unwrap();
    let mut whole = 0;
    for block in page.split("```yaml\n").skip(1).filter_map(|rest| rest.split_once("```").map(|(b, _)| b)) {
        let first = block.lines().find(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap_or_default();
        if !first.starts_with("name:") || !block.contains("\nsteps:") {
            continue;
        }
        let value: serde_json::Value = serde_norway::from_str(block).unwrap();
        schema::check(&value).unwrap_or_else(|e| panic!("{e}\n{block}"));
        document::parse_yaml(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        whole += 1;
    }
    assert!(whole >= 1, "the reference shows a whole definition");

    fn fields(schema: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match schema {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(properties)) = map.get("properties") {
                    out.extend(properties.keys().cloned());
                }
                map.values().for_each(|v| fields(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| fields(v, out)),
            _ => {}
        }
    }
    let mut all = std::collections::BTreeSet::new();
    fields(&document::json_schema(), &mut all);
    let missing: Vec<&String> = all.iter().filter(|f| !page.contains(&format!("`{f}`"))).collect();
    assert!(missing.is_empty(), "docs/definitions/reference.md does not describe {missing:?}");
}

/// The example's definition passes the schema and the semantic rules, so
/// that `definition apply` in the README's tour cannot be the step that fails.
#[test]
fn the_trip_booking_example_is_a_valid_definition() {
    use sagaflow_workflows::{document, schema};
    let text = std::fs::read_to_string(root().join("examples/trip-booking/trip.yaml")).unwrap();
    use serde::Deserialize;
    for document in serde_norway::Deserializer::from_str(&text) {
        schema::check(&serde_json::Value::deserialize(document).unwrap()).unwrap();
    }
    let definitions = document::parse_yaml(&text).unwrap();
    assert_eq!(definitions.len(), 2, "the trip and its insurance child");
    let trip = &definitions[0];
    let child = trip.steps.iter().find_map(|s| match &s.action {
        sagaflow_workflows::Action::Child { workflow_type, .. } => Some(workflow_type.as_str()),
        _ => None,
    });
    assert_eq!(child, Some(definitions[1].name.as_str()));
    assert!(definitions[1].pivot_index().is_none(), "a child saga has no pivot");
    let groups: Vec<_> = trip.steps.iter().filter_map(|s| s.parallel.as_deref()).collect();
    assert_eq!(groups, ["holds", "holds", "holds", "after-charge", "after-charge"]);
    assert_eq!(trip.steps.iter().filter(|s| s.when.is_some()).count(), 2);
}
