//! Remembering what was computed from a range of flash until that range changes: what a
//! region holds (parse, CRC, SHA), and what a staged slot verifies to. Keyed by
//! [`ContentKey`], which names the exact sector versions the result was computed from, so a
//! hit gives exactly what computing again would: nothing is guessed from addresses or sizes.
//!
//! A power-cut sweep boots thousands of forks of one device whose system part, bootloader and
//! staging area never change; with a cache shared by the forks each is parsed once. A cache
//! is shared by clones of a [`crate::device::Device`] and safe to use from several threads.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::flash::ContentKey;

/// Entries kept; the oldest is dropped first. A sweep needs a handful (one per region, one
/// per staged module) plus the changed regions of the boots in flight.
const CAPACITY: usize = 64;

/// Results computed from flash contents, by [`ContentKey`] and a caller's tag (which
/// computation; the region or slot).
#[derive(Debug)]
pub struct ContentCache<V> {
    entries: Mutex<VecDeque<(u64, ContentKey, Arc<V>)>>,
}

impl<V> Default for ContentCache<V> {
    fn default() -> Self {
        ContentCache {
            entries: Mutex::new(VecDeque::new()),
        }
    }
}

impl<V> ContentCache<V> {
    /// The remembered result for `key`, or `compute()`'s, remembered. `compute` runs without
    /// the lock held; two threads may compute the same entry, which only costs time.
    pub fn get_or_compute<E>(
        &self,
        tag: u64,
        key: ContentKey,
        compute: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        if let Some(hit) = self.get(tag, &key) {
            return Ok(hit);
        }
        let value = Arc::new(compute()?);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CAPACITY {
                entries.pop_front();
            }
            entries.push_back((tag, key, Arc::clone(&value)));
        }
        Ok(value)
    }

    fn get(&self, tag: u64, key: &ContentKey) -> Option<Arc<V>> {
        let entries = self.entries.lock().ok()?;
        entries
            .iter()
            .rev()
            .find(|(t, k, _)| *t == tag && k == key)
            .map(|(_, _, v)| Arc::clone(v))
    }
}
