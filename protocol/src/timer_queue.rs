//! A queue of deadlines for many keyed state machines (the DTLS server's associations, the
//! cloud's devices) with lazy invalidation: a state machine whose deadline moves later keeps its
//! entry, which is moved when it comes up; one whose deadline moves earlier gets a new entry;
//! entries of removed keys are dropped when they come up. An idle key costs nothing per
//! timeout, and the earliest deadline is a peek.
//!
//! The queue owns only the heap. Each key's state lives with its owner as two values the queue
//! reads through a lens ([`TimerEntry`]): the deadline the state machine wants now, and the time
//! of its live entry in the heap ([`Scheduled`]). An entry is live while its time equals the
//! key's `Scheduled`; any other entry of that key is stale and dropped when it comes up.
//!
//! After every call that changes deadlines, the owner calls [`TimerQueue::tidy`]: the top of the
//! heap is then a live, exact entry, so [`TimerQueue::next`] answers without a walk.
//! [`TimerQueue::compact`] rebuilds the heap from the live entries once stale ones outnumber the
//! keys, so the heap stays within about twice the number of keys whatever the rate of changes.

use core::time::Duration;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The time of a key's live entry in a [`TimerQueue`] (`None`: it has none). Kept by the
/// owner next to the key's state; only the queue changes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scheduled(Option<Duration>);

impl Scheduled {
    pub fn at(self) -> Option<Duration> {
        self.0
    }
}

/// What the queue reads and writes of one key: the deadline its state machine wants now
/// (`None`: nothing due) and the time of its live entry.
#[derive(Debug)]
pub struct TimerEntry<'a> {
    pub deadline: Option<Duration>,
    pub scheduled: &'a mut Scheduled,
}

/// Heap entries allowed beyond twice the keys before [`TimerQueue::compact`] rebuilds.
const SLACK: usize = 64;

/// Deadlines of many keys, earliest first. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct TimerQueue<K> {
    heap: BinaryHeap<Reverse<(Duration, K)>>,
}

impl<K: Ord + Copy> Default for TimerQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + Copy> TimerQueue<K> {
    pub fn new() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
        }
    }

    /// Entries held, live and stale.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The earliest deadline (exact after [`TimerQueue::tidy`]).
    pub fn next(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes note of `key`'s deadline: an entry is pushed when it is earlier than the key's
    /// live entry (a later one is found when the live entry comes up).
    pub fn schedule(&mut self, key: K, entry: TimerEntry<'_>) {
        if let Some(t) = entry.deadline {
            if entry.scheduled.0.is_none_or(|s| t < s) {
                entry.scheduled.0 = Some(t);
                self.heap.push(Reverse((t, key)));
            }
        }
    }

    /// Makes the top of the heap a live, exact entry: entries of keys `lens` does not find or
    /// superseded by an earlier one are dropped, an entry whose key's deadline moved later is
    /// moved to it, one whose key has nothing due any more is dropped.
    pub fn tidy<M: ?Sized>(
        &mut self,
        map: &mut M,
        lens: impl for<'a> Fn(&'a mut M, K) -> Option<TimerEntry<'a>>,
    ) {
        while let Some(&Reverse((at, key))) = self.heap.peek() {
            let Some(e) = lens(map, key).filter(|e| e.scheduled.0 == Some(at)) else {
                self.heap.pop();
                continue;
            };
            match e.deadline {
                Some(t) if t <= at => break,
                Some(later) => {
                    e.scheduled.0 = Some(later);
                    self.heap.pop();
                    self.heap.push(Reverse((later, key)));
                }
                None => {
                    e.scheduled.0 = None;
                    self.heap.pop();
                }
            }
        }
    }

    /// Takes out the keys whose deadline is at or before `now`, in key order, each once; their
    /// live entries are gone (the owner schedules them again after running them). The heap is
    /// tidy afterwards.
    pub fn pop_due<M: ?Sized>(
        &mut self,
        now: Duration,
        map: &mut M,
        lens: impl for<'a> Fn(&'a mut M, K) -> Option<TimerEntry<'a>>,
    ) -> Vec<K> {
        let mut due = Vec::new();
        self.tidy(map, &lens);
        while let Some(&Reverse((at, key))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(e) = lens(map, key) {
                e.scheduled.0 = None;
                due.push(key);
            }
            self.tidy(map, &lens);
        }
        due.sort_unstable();
        due.dedup();
        due
    }

    /// Rebuilds the heap from the live entries (`scheduled`: every key and its
    /// [`Scheduled`]) when it holds more than twice `keys` entries (plus a small slack):
    /// superseded entries otherwise wait until their time comes up. Call [`TimerQueue::tidy`]
    /// after it.
    pub fn compact(&mut self, keys: usize, scheduled: impl IntoIterator<Item = (K, Scheduled)>) {
        if self.heap.len() > 2 * keys + SLACK {
            self.heap = scheduled
                .into_iter()
                .filter_map(|(k, s)| s.0.map(|at| Reverse((at, k))))
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Machine {
        deadline: Option<Duration>,
        scheduled: Scheduled,
    }

    fn lens(m: &mut BTreeMap<u32, Machine>, k: u32) -> Option<TimerEntry<'_>> {
        m.get_mut(&k).map(|x| TimerEntry {
            deadline: x.deadline,
            scheduled: &mut x.scheduled,
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sets a key's deadline and schedules it, as an owner does after a change.
    fn set(q: &mut TimerQueue<u32>, m: &mut BTreeMap<u32, Machine>, k: u32, at: Option<u64>) {
        let x = m.entry(k).or_default();
        x.deadline = at.map(ms);
        q.schedule(
            k,
            TimerEntry {
                deadline: x.deadline,
                scheduled: &mut x.scheduled,
            },
        );
        q.tidy(m, lens);
    }

    #[test]
    fn due_keys_come_out_in_key_order_once() {
        let mut q = TimerQueue::new();
        let mut m = BTreeMap::new();
        set(&mut q, &mut m, 3, Some(10));
        set(&mut q, &mut m, 1, Some(20));
        set(&mut q, &mut m, 2, Some(30));
        assert_eq!(q.next(), Some(ms(10)));
        assert_eq!(q.pop_due(ms(25), &mut m, lens), vec![1, 3]);
        assert_eq!(q.next(), Some(ms(30)));
        assert_eq!(m[&1].scheduled, Scheduled::default());
        assert_eq!(q.pop_due(ms(25), &mut m, lens), Vec::<u32>::new());
    }

    #[test]
    fn a_deadline_moved_earlier_gets_a_new_entry() {
        let mut q = TimerQueue::new();
        let mut m = BTreeMap::new();
        set(&mut q, &mut m, 1, Some(100));
        set(&mut q, &mut m, 1, Some(40));
        assert_eq!(q.next(), Some(ms(40)));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_due(ms(40), &mut m, lens), vec![1]);
        // The entry at 100 is stale: nothing is due there.
        assert_eq!(q.next(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn a_deadline_moved_later_is_moved_when_it_comes_up() {
        let mut q = TimerQueue::new();
        let mut m = BTreeMap::new();
        set(&mut q, &mut m, 1, Some(10));
        set(&mut q, &mut m, 2, Some(20));
        // Key 1 now wants 50: its entry at 10 stays until the top is tidied.
        set(&mut q, &mut m, 1, Some(50));
        assert_eq!(q.next(), Some(ms(20)));
        assert_eq!(m[&1].scheduled.at(), Some(ms(50)));
        assert_eq!(q.pop_due(ms(49), &mut m, lens), vec![2]);
        assert_eq!(q.pop_due(ms(50), &mut m, lens), vec![1]);
    }

    #[test]
    fn a_key_with_nothing_due_or_removed_drops_out() {
        let mut q = TimerQueue::new();
        let mut m = BTreeMap::new();
        set(&mut q, &mut m, 1, Some(10));
        set(&mut q, &mut m, 2, Some(20));
        set(&mut q, &mut m, 3, Some(30));
        set(&mut q, &mut m, 1, None);
        assert_eq!(q.next(), Some(ms(20)));
        m.remove(&2);
        q.tidy(&mut m, lens);
        assert_eq!(q.next(), Some(ms(30)));
        assert_eq!(q.pop_due(ms(1000), &mut m, lens), vec![3]);
    }

    #[test]
    fn compact_keeps_only_live_entries() {
        let mut q = TimerQueue::new();
        let mut m = BTreeMap::new();
        // Each key's deadline moves earlier again and again: stale entries pile up.
        for round in 0..100u64 {
            for k in 0..4u32 {
                set(&mut q, &mut m, k, Some(10_000 - round * 10 - k as u64));
            }
        }
        assert_eq!(q.len(), 400);
        q.compact(m.len(), m.iter().map(|(k, x)| (*k, x.scheduled)));
        q.tidy(&mut m, lens);
        assert_eq!(q.len(), 4);
        assert_eq!(q.next(), Some(ms(10_000 - 990 - 3)));
        assert_eq!(q.pop_due(ms(20_000), &mut m, lens), vec![0, 1, 2, 3]);
        // Below the threshold nothing is rebuilt.
        set(&mut q, &mut m, 0, Some(5));
        set(&mut q, &mut m, 0, Some(4));
        q.compact(m.len(), m.iter().map(|(k, x)| (*k, x.scheduled)));
        assert_eq!(q.len(), 2);
    }
}
