//! An in-memory engine for tests and embedding. Nothing survives the process.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::kv_store::{Kv, KvStore, Write};
use super::{Durable, Result};

#[derive(Default)]
pub struct MemoryKv(RwLock<BTreeMap<Vec<u8>, Vec<u8>>>);

/// The [`Store`](super::Store) kept in a `BTreeMap`.
pub type MemoryStore = KvStore<MemoryKv>;

impl MemoryStore {
    pub fn in_memory() -> Self {
        match KvStore::new(MemoryKv::default()) {
            Ok(store) => store,
            // An empty map has no outbox key to misread.
            Err(_) => unreachable!("an empty memory store always opens"),
        }
    }
}

impl Kv for MemoryKv {
    fn apply(&self, writes: Vec<Write>) -> Result<Durable> {
        let mut map = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, value) in writes {
            match value {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
        Ok(Durable::ready())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).cloned())
    }

    fn scan(&self, from: &[u8], prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let map = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, value) in map.range::<[u8], _>((Bound::Included(from), Bound::Unbounded)) {
            if !key.starts_with(prefix) || !visit(key, value) {
                break;
            }
        }
        Ok(())
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        let map = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(map
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .last()
            .map(|(k, _)| k.clone()))
    }

    fn barrier(&self) -> Durable {
        Durable::ready()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod conformance {
    use std::sync::Arc;

    use crate::{MemoryStore, Store};

    crate::store_conformance_suite!((Arc::new(MemoryStore::in_memory()) as Arc<dyn Store>, ()));
}
