//! The saga definitions a server knows, every version of each. A workflow is
//! pinned to the version it started with, so old versions stay registered
//! for as long as workflows may run on them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sagaflow_workflows::{DefinitionError, SagaDefinition};

#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: HashMap<String, BTreeMap<u32, Arc<SagaDefinition>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a definition after validating it. Registering the same name and
    /// version twice replaces the first only when both are identical.
    pub fn register(&mut self, definition: SagaDefinition) -> Result<(), DefinitionError> {
        definition.validate()?;
        let versions = self.types.entry(definition.name.clone()).or_default();
        if let Some(existing) = versions.get(&definition.version)
            && **existing != definition
        {
            return Err(DefinitionError::InvalidStep {
                step: String::new(),
                reason: format!(
                    "{} version {} is already registered with a different body; bump the version",
                    definition.name, definition.version
                ),
            });
        }
        versions.insert(definition.version, Arc::new(definition));
        Ok(())
    }

    pub fn latest(&self, name: &str) -> Option<Arc<SagaDefinition>> {
        self.types.get(name).and_then(|v| v.values().next_back()).cloned()
    }

    pub fn get(&self, name: &str, version: u32) -> Option<Arc<SagaDefinition>> {
        self.types.get(name).and_then(|v| v.get(&version)).cloned()
    }

    /// Names in alphabetical order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.types.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn all(&self) -> Vec<Arc<SagaDefinition>> {
        let mut all: Vec<_> = self.types.values().flat_map(|v| v.values().cloned()).collect();
        all.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        all
    }
}
