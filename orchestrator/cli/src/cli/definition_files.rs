//! Definition files: YAML or JSON, one definition or a list, several YAML
//! documents (`---`) in one file. Each document is checked against the JSON
//! Schema of the format, then parsed and validated. Every error names the
//! file, the field path and the rule broken.

use std::path::{Path, PathBuf};

use sagaflow_server::workflows::SagaDefinition;
use sagaflow_server::workflows::document::{FieldError, parse_document};
use sagaflow_server::workflows::schema;
use serde::Deserialize;
use serde_json::Value;

/// A file that does not hold valid definitions.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: not {format}: {reason}")]
    Syntax { file: PathBuf, format: &'static str, reason: String },
    /// `path` is `.` for a document that is neither a definition nor a list.
    #[error("{file}: {path}: {rule}")]
    Invalid { file: PathBuf, path: String, rule: String },
    /// The document breaks a rule of the JSON Schema (`sagaflow definition schema`).
    #[error("{file}: {path}: {rule} (schema)")]
    Schema { file: PathBuf, path: String, rule: String },
}

/// The definitions of `file`, parsed and validated, in file order.
pub fn read(file: &Path) -> Result<Vec<SagaDefinition>, FileError> {
    let text = std::fs::read_to_string(file).map_err(|source| FileError::Read { file: file.into(), source })?;
    let json = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let documents = if json { json_documents(file, &text)? } else { yaml_documents(file, &text)? };
    let several = documents.len() > 1;
    let mut definitions = Vec::new();
    for (i, document) in documents.into_iter().enumerate() {
        // A multi-document YAML file: say which document.
        let at = |e: FieldError| if several { e.at_index(i) } else { e };
        schema::check(&document).map_err(|e| {
            let e = at(e);
            FileError::Schema { file: file.into(), path: e.path, rule: e.rule }
        })?;
        let parsed = parse_document(document).map_err(|e| {
            let e = at(e);
            FileError::Invalid { file: file.into(), path: e.path, rule: e.rule }
        })?;
        definitions.extend(parsed);
    }
    Ok(definitions)
}

/// The definitions of every file, in order.
pub fn read_all(files: &[PathBuf]) -> Result<Vec<SagaDefinition>, FileError> {
    let mut all = Vec::new();
    for file in files {
        all.extend(read(file)?);
    }
    Ok(all)
}

fn json_documents(file: &Path, text: &str) -> Result<Vec<Value>, FileError> {
    serde_json::from_str(text).map(|v| vec![v]).map_err(|e| FileError::Syntax {
        file: file.into(),
        format: "JSON",
        reason: e.to_string(),
    })
}

fn yaml_documents(file: &Path, text: &str) -> Result<Vec<Value>, FileError> {
    let syntax =
        |e: serde_norway::Error| FileError::Syntax { file: file.into(), format: "YAML", reason: e.to_string() };
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(syntax)?;
        // A trailing `---` gives an empty document: nothing to register.
        if !value.is_null() {
            documents.push(value);
        }
    }
    if documents.is_empty() {
        return Err(FileError::Invalid {
            file: file.into(),
            path: ".".into(),
            rule: "the file holds no definition".into(),
        });
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const TRIP: &str = "name: trip\nversion: 1\nsteps:\n  - name: hotel\n    kind: pivot\n    action: {type: activity, activity_type: hotel.book}\n";

    #[test]
    fn yaml_with_several_documents_and_json_lists_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = write(dir.path(), "t.yaml", &format!("{TRIP}---\n{}", TRIP.replace("version: 1", "version: 2")));
        let from_yaml = read(&yaml).unwrap();
        assert_eq!(from_yaml.iter().map(|d| d.version).collect::<Vec<_>>(), vec![1, 2]);
        let json = write(dir.path(), "t.json", &serde_json::to_string(&from_yaml).unwrap());
        assert_eq!(read(&json).unwrap(), from_yaml);
    }

    #[test]
    fn an_error_names_the_file_the_field_path_and_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write(dir.path(), "bad.yaml", &TRIP.replace("kind: pivot", "kind: retriable"));
        let message = read(&bad).unwrap_err().to_string();
        assert!(message.starts_with(&format!("{}: steps[0]: ", bad.display())), "{message}");
        assert!(message.contains("a retriable step belongs after the pivot"), "{message}");
        let bad = write(dir.path(), "bad2.yaml", &TRIP.replace("version: 1", "version: one"));
        let message = read(&bad).unwrap_err().to_string();
        assert!(message.contains("bad2.yaml: version: expected an integer, found \"one\" (schema)"), "{message}");
        let bad = write(dir.path(), "bad3.yaml", &format!("{TRIP}---\n{}", TRIP.replace("kind: pivot", "knd: pivot")));
        let message = read(&bad).unwrap_err().to_string();
        assert!(message.contains("bad3.yaml: [1].steps[0]: unknown field `knd`, expected one of "), "{message}");
    }
}
