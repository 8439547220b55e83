//! The saga definitions a server knows, every version of each, held in memory
//! so that a start reads no definition from the store. A version is
//! immutable: it is known by its content hash, which every workflow started
//! on it pins, and it stays registered (deprecated at most) for as long as
//! workflows may run on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sagaflow_workflows::document::{canonical_json, content_hash};
use sagaflow_workflows::{DefinitionError, SagaDefinition};

/// One registered version.
#[derive(Debug, Clone)]
pub struct Entry {
    pub definition: Arc<SagaDefinition>,
    /// Canonical JSON, as stored and served.
    pub canonical: Arc<str>,
    /// Hex SHA-256 of `canonical`.
    pub hash: String,
    pub deprecated: bool,
    /// Compiled into the server (`Registry::register`) rather than registered
    /// through the API, so not in the store unless deprecated.
    pub built_in: bool,
}

impl Entry {
    pub fn new(definition: SagaDefinition, built_in: bool) -> Self {
        let canonical = canonical_json(&definition);
        let hash = content_hash(&canonical);
        Self { definition: Arc::new(definition), canonical: canonical.into(), hash, deprecated: false, built_in }
    }
}

/// What registering a definition would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    NewType,
    NewVersion,
    Identical,
}

/// The same type and version with other content: versions are immutable.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{workflow_type} version {version} is already registered with other content (hash {registered}, this one {offered}); register it under a new version"
)]
pub struct Conflict {
    pub workflow_type: String,
    pub version: u32,
    pub registered: String,
    pub offered: String,
}

/// Why a start cannot use a definition.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unstartable {
    #[error("unknown workflow type {0:?}; known types: {1}")]
    UnknownType(String, String),
    #[error("{0} has no version {1}")]
    UnknownVersion(String, u32),
    #[error("{0} version {1} is deprecated: it cannot be started (workflows already running on it go on)")]
    Deprecated(String, u32),
    #[error("every version of {0} is deprecated: register a new version to start it")]
    AllDeprecated(String),
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: HashMap<String, BTreeMap<u32, Entry>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a built-in definition after validating it. Registering the same
    /// name and version twice is accepted only when both are identical.
    pub fn register(&mut self, definition: SagaDefinition) -> Result<(), DefinitionError> {
        definition.validate()?;
        let entry = Entry::new(definition, true);
        self.check(&entry)
            .map_err(|conflict| DefinitionError::InvalidStep { step: String::new(), reason: conflict.to_string() })?;
        self.insert(entry);
        Ok(())
    }

    /// What adding `entry` would change, or why it may not be added.
    pub fn check(&self, entry: &Entry) -> Result<Change, Conflict> {
        let Some(versions) = self.types.get(&entry.definition.name) else { return Ok(Change::NewType) };
        match versions.get(&entry.definition.version) {
            None => Ok(Change::NewVersion),
            Some(existing) if existing.hash == entry.hash => Ok(Change::Identical),
            Some(existing) => Err(Conflict {
                workflow_type: entry.definition.name.clone(),
                version: entry.definition.version,
                registered: existing.hash.clone(),
                offered: entry.hash.clone(),
            }),
        }
    }

    /// Adds `entry`, keeping a deprecation already recorded for it and the
    /// built-in mark of an identical built-in version. Call [`check`](Self::check) first.
    pub fn insert(&mut self, mut entry: Entry) {
        let versions = self.types.entry(entry.definition.name.clone()).or_default();
        if let Some(existing) = versions.get(&entry.definition.version) {
            entry.deprecated |= existing.deprecated;
            entry.built_in |= existing.built_in;
        }
        versions.insert(entry.definition.version, entry);
    }

    /// Marks a version deprecated; `None` when there is no such version.
    pub fn deprecate(&mut self, name: &str, version: u32) -> Option<&Entry> {
        let entry = self.types.get_mut(name)?.get_mut(&version)?;
        entry.deprecated = true;
        Some(entry)
    }

    pub fn latest(&self, name: &str) -> Option<Arc<SagaDefinition>> {
        self.latest_entry(name).map(|e| Arc::clone(&e.definition))
    }

    pub fn latest_entry(&self, name: &str) -> Option<&Entry> {
        self.types.get(name).and_then(|v| v.values().next_back())
    }

    pub fn get(&self, name: &str, version: u32) -> Option<Arc<SagaDefinition>> {
        self.entry(name, version).map(|e| Arc::clone(&e.definition))
    }

    pub fn entry(&self, name: &str, version: u32) -> Option<&Entry> {
        self.types.get(name).and_then(|v| v.get(&version))
    }

    /// The version a new start runs: the one named, or the latest that is not
    /// deprecated.
    pub fn to_start(&self, name: &str, version: Option<u32>) -> Result<&Entry, Unstartable> {
        let versions =
            self.types.get(name).ok_or_else(|| Unstartable::UnknownType(name.to_owned(), self.names().join(", ")))?;
        let entry = match version {
            Some(v) => versions.get(&v).ok_or_else(|| Unstartable::UnknownVersion(name.to_owned(), v))?,
            None => versions
                .values()
                .rev()
                .find(|e| !e.deprecated)
                .ok_or_else(|| Unstartable::AllDeprecated(name.to_owned()))?,
        };
        if entry.deprecated {
            return Err(Unstartable::Deprecated(name.to_owned(), entry.definition.version));
        }
        Ok(entry)
    }

    /// Names in alphabetical order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.types.keys().cloned().collect();
        names.sort();
        names
    }

    /// Every version of one type, oldest first.
    pub fn versions(&self, name: &str) -> Vec<&Entry> {
        self.types.get(name).map(|v| v.values().collect()).unwrap_or_default()
    }

    pub fn all(&self) -> Vec<Arc<SagaDefinition>> {
        let mut all: Vec<_> = self.types.values().flat_map(|v| v.values().map(|e| Arc::clone(&e.definition))).collect();
        all.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        all
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use sagaflow_workflows::Step;

    use super::*;

    fn trip(version: u32, description: &str) -> SagaDefinition {
        let mut d = SagaDefinition::builder("trip", version)
            .step(Step::activity("hotel", "hotel.book").pivot())
            .build()
            .unwrap();
        d.description = description.into();
        d
    }

    #[test]
    fn a_version_is_immutable_and_the_same_content_again_is_identical() {
        let mut registry = Registry::new();
        let first = Entry::new(trip(1, ""), false);
        assert_eq!(registry.check(&first).unwrap(), Change::NewType);
        registry.insert(first.clone());
        assert_eq!(registry.check(&first).unwrap(), Change::Identical);
        assert!(registry.check(&Entry::new(trip(1, "other"), false)).is_err());
        assert_eq!(registry.check(&Entry::new(trip(2, "other"), false)).unwrap(), Change::NewVersion);
    }

    #[test]
    fn a_start_takes_the_latest_version_that_is_not_deprecated() {
        let mut registry = Registry::new();
        registry.insert(Entry::new(trip(1, ""), false));
        registry.insert(Entry::new(trip(2, ""), false));
        assert_eq!(registry.to_start("trip", None).unwrap().definition.version, 2);
        registry.deprecate("trip", 2).unwrap();
        assert_eq!(registry.to_start("trip", None).unwrap().definition.version, 1);
        assert!(matches!(registry.to_start("trip", Some(2)), Err(Unstartable::Deprecated(_, 2))));
        assert_eq!(registry.to_start("trip", Some(1)).unwrap().definition.version, 1);
        registry.deprecate("trip", 1).unwrap();
        assert!(matches!(registry.to_start("trip", None), Err(Unstartable::AllDeprecated(_))));
        // Deprecated versions stay readable for the workflows running on them.
        assert!(registry.get("trip", 2).is_some());
        assert!(matches!(registry.to_start("nope", None), Err(Unstartable::UnknownType(..))));
    }
}
