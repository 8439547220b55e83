//! The in-memory layers that keep sled off the commit path.
//!
//! Every write lands here first, in an ordered map (the active layer), and is
//! made durable by the write-ahead log. When a log segment fills, the active
//! layer is frozen together with it: the frozen layer holds exactly the
//! writes of that segment. A checkpoint then applies it to sled in bulk,
//! flushes sled, deletes the segment and drops the layer. sled thus sees one
//! large batch per segment instead of a small one per decision, and a value
//! that is written and deleted within one segment (a task, a lease, a timer)
//! never reaches it.
//!
//! Readers see the newest value: the active layer, then frozen layers from
//! newest to oldest, then sled. A deletion is kept as a tombstone (`None`) so
//! that it hides what sled still holds.

use std::collections::{BTreeMap, VecDeque, btree_map};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use super::kv_store::Write;

/// Keys to their newest value in one layer; `None` is a deletion.
pub type Layer = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What the overlay knows of the greatest key under an appended prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The greatest key, live.
    Live(Vec<u8>),
    /// The newest write there is a deletion: ask the full merge.
    Deleted,
    /// Nothing in memory: ask the engine below.
    Absent,
}

#[derive(Default)]
struct Layers {
    active: Layer,
    /// Oldest first; each waits for its checkpoint.
    frozen: VecDeque<Arc<Layer>>,
    /// Log records of writes applied to the layers and not yet handed to the
    /// log, in the order they were applied (one lock keeps both orders).
    unlogged: Vec<u8>,
}

#[derive(Default)]
pub struct Overlay(RwLock<Layers>);

/// One entry of a source during a merge: a key and its value or tombstone.
type Entry<'a> = (&'a [u8], Option<&'a [u8]>);

impl Overlay {
    /// Applies `writes` and queues their log `record`, atomically.
    pub fn apply(&self, writes: Vec<Write>, record: &[u8]) {
        let mut layers = self.write();
        for (key, value) in writes {
            layers.active.insert(key, value);
        }
        layers.unlogged.extend_from_slice(record);
    }

    /// Takes the records not yet logged. When `fills_segment` says that they
    /// fill the log segment, the active layer is frozen at the same instant
    /// and returned: it then holds exactly the writes of that segment.
    pub fn take_unlogged(&self, fills_segment: impl FnOnce(usize) -> bool) -> (Vec<u8>, Option<Arc<Layer>>) {
        let mut layers = self.write();
        let records = std::mem::take(&mut layers.unlogged);
        if !fills_segment(records.len()) {
            return (records, None);
        }
        let layer = Arc::new(std::mem::take(&mut layers.active));
        layers.frozen.push_back(Arc::clone(&layer));
        (records, Some(layer))
    }

    /// Drops the oldest frozen layer once the base holds its writes.
    pub fn retire(&self, layer: &Arc<Layer>) {
        let mut layers = self.write();
        if layers.frozen.front().is_some_and(|oldest| Arc::ptr_eq(oldest, layer)) {
            layers.frozen.pop_front();
        }
    }

    /// The newest value of `key`; `base` is asked only when no layer has it.
    pub fn get<E>(
        &self,
        key: &[u8],
        base: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Option<Vec<u8>>, E> {
        {
            let layers = self.read();
            for layer in layers.newest_first() {
                if let Some(value) = layer.get(key) {
                    return Ok(value.clone());
                }
            }
        }
        // The lock is not held across the base lookup, which may wait for a
        // checkpoint's batch in sled: commits must not wait with it. This is
        // safe for one key: a layer retires only once the base holds its
        // writes, and a key in no layer at the check reaches the base later
        // only with a newer value.
        base(key)
    }

    /// Visits live keys `>= from` that start with `prefix`, in ascending
    /// order, merged with `base` (the base's entries in the same range, in
    /// the same order), until `visit` returns false.
    pub fn scan<B: AsRef<[u8]>, E>(
        &self,
        from: &[u8],
        prefix: &[u8],
        base: impl Iterator<Item = Result<(B, B), E>>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), E> {
        let layers = self.read();
        let sources = layers
            .newest_first()
            .map(|layer| {
                let range = layer.range::<[u8], _>((Bound::Included(from), Bound::Unbounded));
                Box::new(range.take_while(|(k, _)| k.starts_with(prefix)).map(entry)) as Source<'_>
            })
            .collect();
        merge(sources, base, Order::Ascending, visit)
    }

    /// The greatest live key that starts with `prefix`; `base` yields the
    /// base's keys under the prefix in descending order.
    pub fn last_with_prefix<B: AsRef<[u8]>, E>(
        &self,
        prefix: &[u8],
        base: impl Iterator<Item = Result<(B, B), E>>,
    ) -> Result<Option<Vec<u8>>, E> {
        let layers = self.read();
        let end = prefix_end(prefix);
        let sources = layers
            .newest_first()
            .map(|layer| Box::new(under(layer, prefix, &end).rev().map(entry)) as Source<'_>)
            .collect();
        let mut last = None;
        merge(sources, base, Order::Descending, &mut |key, _| {
            last = Some(key.to_vec());
            false
        })?;
        Ok(last)
    }

    /// The greatest key under `prefix` in the newest layer that has one, for
    /// keys that are only added in increasing order and deleted only all at
    /// once (a history, and a deleted workflow's): while that key is live it
    /// is also the greatest overall. A deletion on top leaves the answer to
    /// the full merge.
    pub fn last_appended(&self, prefix: &[u8]) -> Appended {
        let layers = self.read();
        let end = prefix_end(prefix);
        match layers.newest_first().find_map(|layer| under(layer, prefix, &end).next_back()) {
            Some((key, Some(_))) => Appended::Live(key.clone()),
            Some((_, None)) => Appended::Deleted,
            None => Appended::Absent,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let layers = self.read();
        layers.newest_first().map(BTreeMap::len).sum()
    }

    fn read(&self) -> RwLockReadGuard<'_, Layers> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Layers> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Layers {
    fn newest_first(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.active).chain(self.frozen.iter().rev().map(|layer| &**layer))
    }
}

type Source<'a> = Box<dyn Iterator<Item = Entry<'a>> + 'a>;

fn entry<'a>((key, value): (&'a Vec<u8>, &'a Option<Vec<u8>>)) -> Entry<'a> {
    (key.as_slice(), value.as_deref())
}

/// A layer's entries that start with `prefix`; `end` is [`prefix_end`] of it.
fn under<'a>(layer: &'a Layer, prefix: &[u8], end: &Option<Vec<u8>>) -> btree_map::Range<'a, Vec<u8>, Option<Vec<u8>>> {
    layer.range::<[u8], _>((Bound::Included(prefix), end.as_deref().map_or(Bound::Unbounded, Bound::Excluded)))
}

/// The smallest key that is greater than every key starting with `prefix`,
/// or `None` when there is none (the prefix is all `0xff`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[derive(Clone, Copy)]
enum Order {
    Ascending,
    Descending,
}

impl Order {
    fn before(self, a: &[u8], b: &[u8]) -> bool {
        match self {
            Self::Ascending => a < b,
            Self::Descending => a > b,
        }
    }
}

#[derive(Clone, Copy)]
enum Winner {
    Layer(usize),
    Base,
}

/// Merges sorted sources: `layers` newest first, then `base`. On equal keys
/// the newest source wins; a winning tombstone hides the key.
fn merge<B: AsRef<[u8]>, E>(
    mut layers: Vec<Source<'_>>,
    mut base: impl Iterator<Item = Result<(B, B), E>>,
    order: Order,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), E> {
    let mut heads: Vec<Option<Entry<'_>>> = layers.iter_mut().map(Iterator::next).collect();
    let mut base_head = base.next().transpose()?;
    loop {
        let mut winner: Option<(Winner, &[u8])> = None;
        for (i, head) in heads.iter().enumerate() {
            if let Some((key, _)) = head
                && winner.is_none_or(|(_, best)| order.before(key, best))
            {
                winner = Some((Winner::Layer(i), key));
            }
        }
        if let Some((key, _)) = &base_head
            && winner.is_none_or(|(_, best)| order.before(key.as_ref(), best))
        {
            winner = Some((Winner::Base, key.as_ref()));
        }
        match winner.map(|(w, _)| w) {
            None => return Ok(()),
            Some(Winner::Base) => {
                let Some((key, value)) = base_head.take() else { return Ok(()) };
                base_head = base.next().transpose()?;
                if !visit(key.as_ref(), value.as_ref()) {
                    return Ok(());
                }
            }
            Some(Winner::Layer(i)) => {
                let Some((key, value)) = heads[i] else { return Ok(()) };
                // Older sources' entries for the same key are shadowed.
                for (head, source) in heads.iter_mut().zip(layers.iter_mut()) {
                    if head.is_some_and(|(k, _)| k == key) {
                        *head = source.next();
                    }
                }
                if base_head.as_ref().is_some_and(|(k, _)| k.as_ref() == key) {
                    base_head = base.next().transpose()?;
                }
                if let Some(value) = value
                    && !visit(key, value)
                {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type Base = BTreeMap<Vec<u8>, Vec<u8>>;

    fn ascending<'a>(base: &'a Base, from: &'a [u8]) -> impl Iterator<Item = Result<(&'a [u8], &'a [u8]), ()>> {
        base.range::<[u8], _>((Bound::Included(from), Bound::Unbounded)).map(|(k, v)| Ok((k.as_slice(), v.as_slice())))
    }

    fn scanned(overlay: &Overlay, base: &Base, from: &[u8], prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut seen = Vec::new();
        let base_range = ascending(base, from).take_while(|r| r.as_ref().is_ok_and(|(k, _)| k.starts_with(prefix)));
        overlay
            .scan(from, prefix, base_range, &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        seen
    }

    fn last(overlay: &Overlay, base: &Base, prefix: &[u8]) -> Option<Vec<u8>> {
        let base_keys = base
            .iter()
            .rev()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| Ok::<_, ()>((k.as_slice(), v.as_slice())));
        overlay.last_with_prefix(prefix, base_keys).unwrap()
    }

    fn put(key: &str, value: &str) -> Write {
        (key.as_bytes().to_vec(), Some(value.as_bytes().to_vec()))
    }

    fn delete(key: &str) -> Write {
        (key.as_bytes().to_vec(), None)
    }

    #[test]
    fn newer_layers_shadow_older_ones_and_tombstones_hide_the_base() {
        let base: Base = [(b"a1".to_vec(), b"base".to_vec()), (b"a2".to_vec(), b"base".to_vec())].into();
        let overlay = Overlay::default();
        overlay.apply(vec![put("a1", "old"), put("a3", "old")], b"");
        let _ = overlay.take_unlogged(|_| true);
        overlay.apply(vec![put("a3", "new"), delete("a2")], b"");
        let get = |k: &str| overlay.get(k.as_bytes(), |k| Ok::<_, ()>(base.get(k).cloned())).unwrap();
        assert_eq!(get("a1"), Some(b"old".to_vec()));
        assert_eq!(get("a2"), None);
        assert_eq!(get("a3"), Some(b"new".to_vec()));
        let pairs = scanned(&overlay, &base, b"a", b"a");
        assert_eq!(pairs, vec![(b"a1".to_vec(), b"old".to_vec()), (b"a3".to_vec(), b"new".to_vec())]);
        assert_eq!(last(&overlay, &base, b"a"), Some(b"a3".to_vec()));
        overlay.apply(vec![delete("a3")], b"");
        assert_eq!(last(&overlay, &base, b"a"), Some(b"a1".to_vec()));
    }

    /// A point read releases the lock before it asks the base. With a
    /// checkpointer moving layers into the base meanwhile, a reader must
    /// still never see a key's value go back in time or vanish.
    #[test]
    fn point_reads_racing_checkpoints_never_go_back_in_time() {
        const WRITES: u64 = 20_000;
        let overlay = Arc::new(Overlay::default());
        let base = Arc::new(RwLock::new(Base::new()));
        let (frozen_tx, frozen_rx) = std::sync::mpsc::channel::<Arc<Layer>>();
        let writer = std::thread::spawn({
            let overlay = Arc::clone(&overlay);
            move || {
                for v in 1..=WRITES {
                    overlay.apply(vec![(b"k".to_vec(), Some(v.to_be_bytes().to_vec()))], b"");
                    // Frozen after every write: the active layer is often
                    // empty, so reads often fall through to the base.
                    if let (_, Some(layer)) = overlay.take_unlogged(|_| true) {
                        frozen_tx.send(layer).unwrap();
                    }
                    // Lets the checkpointer catch up, so that every layer
                    // holding the key is often retired.
                    std::thread::yield_now();
                }
            }
        });
        let checkpointer = std::thread::spawn({
            let (overlay, base) = (Arc::clone(&overlay), Arc::clone(&base));
            move || {
                for layer in frozen_rx {
                    base.write().unwrap().extend(layer.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))));
                    overlay.retire(&layer);
                }
            }
        });
        let (mut last_seen, mut base_reads) = (0, 0);
        while last_seen < WRITES {
            let value = overlay
                .get(b"k", |k| {
                    base_reads += 1;
                    // A slow base read: the window in which layers move.
                    std::thread::yield_now();
                    Ok::<_, ()>(base.read().unwrap().get(k).cloned())
                })
                .unwrap();
            let seen = value.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
            assert!(seen >= last_seen, "read {seen} after {last_seen}");
            last_seen = seen;
        }
        writer.join().unwrap();
        checkpointer.join().unwrap();
        assert!(base_reads > 0, "no read reached the base; the race was not exercised");
    }

    #[test]
    fn a_frozen_layer_holds_exactly_the_writes_before_the_freeze_and_retires() {
        let overlay = Overlay::default();
        overlay.apply(vec![put("k", "1")], b"r1");
        let (records, frozen) = overlay.take_unlogged(|_| true);
        overlay.apply(vec![put("k", "2")], b"r2");
        let frozen = frozen.unwrap();
        assert_eq!(records, b"r1");
        assert_eq!(frozen.get(b"k".as_slice()), Some(&Some(b"1".to_vec())));
        assert_eq!(overlay.len(), 2);
        overlay.retire(&frozen);
        assert_eq!(overlay.len(), 1);
        assert_eq!(overlay.take_unlogged(|_| false).0, b"r2");
    }

    #[test]
    fn the_newest_layer_answers_for_appended_keys() {
        let overlay = Overlay::default();
        assert_eq!(overlay.last_appended(b"h"), Appended::Absent);
        overlay.apply(vec![put("h1", ""), put("h2", "")], b"");
        let _ = overlay.take_unlogged(|_| true);
        assert_eq!(overlay.last_appended(b"h"), Appended::Live(b"h2".to_vec()));
        overlay.apply(vec![put("h3", ""), put("x9", "")], b"");
        assert_eq!(overlay.last_appended(b"h"), Appended::Live(b"h3".to_vec()));
        // A deleted history: the newest write is a deletion.
        overlay.apply(vec![(b"h3".to_vec(), None), (b"h2".to_vec(), None)], b"");
        assert_eq!(overlay.last_appended(b"h"), Appended::Deleted);
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    proptest::proptest! {
        /// Any interleaving of writes and freezes reads like one map.
        #[test]
        fn reads_match_a_single_map(
            base_keys in proptest::collection::btree_map(0u8..24, 0u8..4, 0..12),
            steps in proptest::collection::vec((0u8..24, proptest::option::of(0u8..4), proptest::bool::weighted(0.2)), 0..60),
            from in 0u8..24,
        ) {
            let key = |k: u8| vec![b'p' + k / 12, b'0' + k % 12];
            let base: Base = base_keys.iter().map(|(k, v)| (key(*k), vec![*v])).collect();
            let mut model = base.clone();
            let overlay = Overlay::default();
            for (k, value, freeze) in steps {
                overlay.apply(vec![(key(k), value.map(|v| vec![v]))], b"");
                match value {
                    Some(v) => model.insert(key(k), vec![v]),
                    None => model.remove(&key(k)),
                };
                if freeze {
                    let _ = overlay.take_unlogged(|_| true);
                }
            }
            for prefix in [&b"p"[..], b"q", b""] {
                let from = [prefix, &key(from)[prefix.len().min(1)..]].concat();
                let expected: Vec<_> = model
                    .range::<[u8], _>((Bound::Included(from.as_slice()), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                proptest::prop_assert_eq!(scanned(&overlay, &base, &from, prefix), expected);
                let expected_last = model.keys().rev().find(|k| k.starts_with(prefix)).cloned();
                proptest::prop_assert_eq!(last(&overlay, &base, prefix), expected_last);
            }
            for k in 0..24 {
                let got = overlay.get(&key(k), |k| Ok::<_, ()>(base.get(k).cloned())).unwrap();
                proptest::prop_assert_eq!(got, model.get(&key(k)).cloned());
            }
        }
    }
}
