//! Remembering what was computed from a range of flash until that range changes: what a
//! region holds (parse, CRC, SHA), and what a staged slot verifies to. Keyed by
//! [`ContentKey`], which names the exact sector buffers the result was computed from, so a
//! hit gives exactly what computing again would: nothing is guessed from addresses or sizes.
//!
//! A power-cut sweep boots thousands of forks of one device whose system part, bootloader and
//! staging area never change; with a cache shared by the forks each is parsed once. A cache
//! is shared by clones of a [`crate::device::Device`] and safe to use from several threads.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::flash::{ChipId, ContentKey, FlashArray, FlashError};

/// Entries kept; the oldest is dropped first. A sweep needs a handful (one per region, one
/// per staged module) plus the changed regions of the boots in flight.
const CAPACITY: usize = 24;

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

/// Entries of the same range whose bytes are compared with the range's when the key misses.
const COMPARED: usize = 4;

impl<V> ContentCache<V> {
    /// The remembered result for the contents of `chip:addr+len` in `flash`, or
    /// `compute()`'s, remembered. An entry whose key is current (the same sector buffers) is a
    /// hit; otherwise the few latest entries for the same range are asked whether the bytes
    /// they were computed from equal the range's bytes now ([`FlashArray::holds`]): a region
    /// rewritten with the same image gets the same result, the same `Arc`. `compute` runs
    /// without the lock held; two threads may compute the same entry, which only costs time.
    pub fn get_or_compute<E: From<FlashError>>(
        &self,
        tag: u64,
        flash: &FlashArray,
        (chip, addr, len): (ChipId, u32, u32),
        compute: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        // Fails exactly when reading the range would (power lost, out of range).
        flash.is_current(&ContentKey::empty(chip, addr, len))?;
        let (hit, candidates) = self.lookup(tag, (chip, addr, len), flash);
        if let Some(hit) = hit {
            return Ok(hit);
        }
        let key = flash.content_key(chip, addr, len)?;
        let mut found = None;
        for (candidate, value) in candidates {
            if flash.holds(&candidate)? {
                found = Some(value);
                break;
            }
        }
        let value = match found {
            Some(value) => value,
            None => Arc::new(compute()?),
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CAPACITY {
                entries.pop_front();
            }
            entries.push_back((tag, key, Arc::clone(&value)));
        }
        Ok(value)
    }

    /// The entry whose key is current in `flash`, or else the latest entries for the range.
    #[allow(clippy::type_complexity)]
    fn lookup(
        &self,
        tag: u64,
        range: (ChipId, u32, u32),
        flash: &FlashArray,
    ) -> (Option<Arc<V>>, Vec<(ContentKey, Arc<V>)>) {
        let Ok(entries) = self.entries.lock() else {
            return (None, Vec::new());
        };
        let mut candidates: Vec<(ContentKey, Arc<V>)> = Vec::new();
        for (t, k, v) in entries.iter().rev() {
            if *t != tag || k.range() != range {
                continue;
            }
            if flash.is_current(k).unwrap_or(false) {
                return (Some(Arc::clone(v)), Vec::new());
            }
            if candidates.len() < COMPARED
                && !candidates.iter().any(|(_, seen)| Arc::ptr_eq(seen, v))
            {
                candidates.push((k.clone(), Arc::clone(v)));
            }
        }
        (None, candidates)
    }
}
