//! Saga definitions registered at runtime: validated, written to the store
//! in one atomic commit, and only then added to the in-memory registry that
//! starts read (so a start never reads a definition from the store).

use sagaflow_workflows::SagaDefinition;

use super::timers::now_ms;
use super::{Error, Result, Runtime};
use crate::registry::{Change, Conflict, Entry, Registry};
use crate::store::{Commit, DefinitionRecord, Store};

/// The outcome of registering one definition.
#[derive(Debug, Clone)]
pub struct Registered {
    pub workflow_type: String,
    pub version: u32,
    pub hash: String,
    /// `Err` only in a dry run's answer: a real registration is refused.
    pub change: Result<Change, Conflict>,
}

/// Why the stored definitions could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("stored definition {workflow_type} version {version} is not a valid definition: {reason}")]
    Invalid { workflow_type: String, version: u32, reason: String },
    #[error(
        "stored definition {workflow_type} version {version} has hash {computed}, its record says {recorded}: it was altered"
    )]
    HashMismatch { workflow_type: String, version: u32, computed: String, recorded: String },
    #[error("{0}; this build's built-in definition differs from the one stored")]
    Conflict(#[from] Conflict),
}

/// Adds every definition in `store` to `registry` (built-ins first, then
/// these): a restart needs no definition files.
pub async fn load_stored(store: &dyn Store, registry: &mut Registry) -> Result<usize, LoadError> {
    let records = store.definitions().await?;
    let count = records.len();
    for record in records {
        let entry = stored_entry(record)?;
        registry.check(&entry)?;
        registry.insert(entry);
    }
    Ok(count)
}

/// A stored definition as the registry keeps it, checked against its hash.
pub(super) fn stored_entry(record: DefinitionRecord) -> Result<Entry, LoadError> {
    let invalid = |reason: String| LoadError::Invalid {
        workflow_type: record.workflow_type.clone(),
        version: record.version,
        reason,
    };
    let value = serde_json::from_str(&record.json).map_err(|e| invalid(e.to_string()))?;
    let definition = sagaflow_workflows::document::parse_one(value).map_err(|e| invalid(e.to_string()))?;
    let mut entry = Entry::new(definition, false);
    if entry.hash != record.content_hash {
        return Err(LoadError::HashMismatch {
            workflow_type: record.workflow_type,
            version: record.version,
            computed: entry.hash,
            recorded: record.content_hash,
        });
    }
    entry.deprecated = record.deprecated;
    Ok(entry)
}

fn record(entry: &Entry) -> DefinitionRecord {
    DefinitionRecord {
        workflow_type: entry.definition.name.clone(),
        version: entry.definition.version,
        content_hash: entry.hash.clone(),
        json: entry.canonical.to_string(),
        deprecated: entry.deprecated,
        registered_ms: now_ms(),
    }
}

impl Runtime {
    /// Registers `definitions` (already validated) all or none, in one
    /// durable commit. A version already registered with other content is
    /// `AlreadyExists`, and nothing is registered; with the same content it
    /// is `Identical`. A dry run commits nothing and reports conflicts.
    pub async fn register_definitions(
        &self,
        definitions: Vec<SagaDefinition>,
        dry_run: bool,
    ) -> Result<Vec<Registered>> {
        // One registration at a time, so that the check and the insert below
        // see the same registry; starts only take the read lock, briefly.
        let _serialised = self.inner.registering.lock().await;
        let mut planned = self.registry().clone();
        let mut results = Vec::with_capacity(definitions.len());
        let mut new = Vec::new();
        for definition in definitions {
            let entry = Entry::new(definition, false);
            let change = planned.check(&entry);
            if let (Err(conflict), false) = (&change, dry_run) {
                return Err(Error::AlreadyExists(conflict.to_string()));
            }
            results.push(Registered {
                workflow_type: entry.definition.name.clone(),
                version: entry.definition.version,
                hash: entry.hash.clone(),
                change: change.clone(),
            });
            if matches!(change, Ok(Change::NewType | Change::NewVersion)) {
                // Later definitions of this request see it (a type's second
                // version is a new version, not a new type).
                planned.insert(entry.clone());
                new.push(entry);
            }
        }
        if dry_run || new.is_empty() {
            return Ok(results);
        }
        let records = new.iter().map(record).collect();
        self.inner.store.commit(Commit::definitions(records)).await?.wait().await?;
        let mut registry = self.registry_mut();
        for entry in new {
            tracing::info!(workflow_type = %entry.definition.name, version = entry.definition.version, hash = %entry.hash, "definition registered");
            registry.insert(entry);
        }
        Ok(results)
    }

    /// Marks a version deprecated, durably. Returns whether it already was.
    pub async fn deprecate_definition(&self, workflow_type: &str, version: u32) -> Result<bool> {
        let _serialised = self.inner.registering.lock().await;
        let Some(mut entry) = self.registry().entry(workflow_type, version).cloned() else {
            return Err(Error::NotFound(format!("{workflow_type} has no version {version}")));
        };
        if entry.deprecated {
            return Ok(true);
        }
        entry.deprecated = true;
        // A built-in version is stored too once deprecated, so that the mark
        // outlives a restart; its content is the built-in's own.
        self.inner.store.commit(Commit::definitions(vec![record(&entry)])).await?.wait().await?;
        self.registry_mut().deprecate(workflow_type, version);
        tracing::info!(workflow_type, version, "definition deprecated");
        Ok(false)
    }
}
