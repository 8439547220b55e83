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
