//! A deadline queue for a single scheduler task.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

/// Ordered set of `(deadline, key)` with at most one deadline per key.
///
/// Keys with equal deadlines come out in key order, so the schedule is deterministic. All
/// operations are `O(log n)` except [`pop_due`](Self::pop_due), which is `O(k log n)` for the `k`
/// keys it returns.
#[derive(Clone, Debug)]
pub struct DeadlineQueue<K: Ord + Clone> {
    /// Sorted by deadline, then key: the scheduling order.
    by_deadline: BTreeSet<(SystemTime, K)>,
    /// Each key's current deadline, to find its entry in `by_deadline` when it is replaced.
    by_key: BTreeMap<K, SystemTime>,
}

impl<K: Ord + Clone> DeadlineQueue<K> {
    pub fn new() -> Self {
        DeadlineQueue {
            by_deadline: BTreeSet::new(),
            by_key: BTreeMap::new(),
        }
    }

    /// Schedules `key` at `at`, replacing any deadline it already had (earlier or later).
    pub fn schedule(&mut self, key: K, at: SystemTime) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.by_deadline.remove(&(old, key.clone()));
        }
        self.by_deadline.insert((at, key));
    }

    /// Removes `key`'s deadline; returns whether it had one.
    pub fn cancel(&mut self, key: &K) -> bool {
        match self.by_key.remove(key) {
            Some(at) => {
                self.by_deadline.remove(&(at, key.clone()));
                true
            }
            None => false,
        }
    }

    /// The earliest deadline, which is when the scheduler should next wake up.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// Removes and returns all keys whose deadline is at or before `now`, earliest first (equal
    /// deadlines in key order).
    pub fn pop_due(&mut self, now: SystemTime) -> Vec<K> {
        let mut due = Vec::new();
        while self.by_deadline.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, key)) = self.by_deadline.pop_first() {
                self.by_key.remove(&key);
                due.push(key);
            }
        }
        due
    }

    /// The deadline of `key`, if it is scheduled.
    pub fn deadline(&self, key: &K) -> Option<SystemTime> {
        self.by_key.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

impl<K: Ord + Clone> Default for DeadlineQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn queue(entries: &[(&'static str, u64)]) -> DeadlineQueue<&'static str> {
        let mut q = DeadlineQueue::new();
        for &(key, at) in entries {
            q.schedule(key, t(at));
        }
        q
    }

    #[test]
    fn empty_queue() {
        let mut q: DeadlineQueue<String> = DeadlineQueue::default();
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_deadline(), None);
        assert_eq!(q.pop_due(t(1_000_000)), Vec::<String>::new());
        assert!(!q.cancel(&"missing".to_string()));
        assert_eq!(q.deadline(&"missing".to_string()), None);
    }

    #[test]
    fn pop_due_table() {
        struct Case {
            name: &'static str,
            entries: &'static [(&'static str, u64)],
            now: u64,
            due: &'static [&'static str],
            left: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "earliest first regardless of insertion order",
                entries: &[("c", 30), ("a", 10), ("b", 20)],
                now: 100,
                due: &["a", "b", "c"],
                left: &[],
            },
            Case {
                name: "nothing due yet",
                entries: &[("a", 10), ("b", 20)],
                now: 9,
                due: &[],
                left: &["a", "b"],
            },
            Case {
                name: "deadline equal to now is due",
                entries: &[("a", 10), ("b", 20)],
                now: 10,
                due: &["a"],
                left: &["b"],
            },
            Case {
                name: "ties come out in key order",
                entries: &[("z", 10), ("m", 10), ("a", 10), ("late", 11)],
                now: 10,
                due: &["a", "m", "z"],
                left: &["late"],
            },
            Case {
                name: "tie broken by key after earlier deadlines",
                entries: &[("b", 5), ("y", 7), ("x", 7), ("a", 9)],
                now: 8,
                due: &["b", "x", "y"],
                left: &["a"],
            },
        ];
        for c in cases {
            let mut q = queue(c.entries);
            assert_eq!(q.pop_due(t(c.now)), c.due, "{}", c.name);
            assert_eq!(q.len(), c.left.len(), "{}", c.name);
            for key in c.left {
                assert!(q.deadline(key).is_some(), "{}: {key} lost", c.name);
            }
            for key in c.due {
                assert_eq!(q.deadline(key), None, "{}: {key} still there", c.name);
            }
            assert_eq!(
                q.pop_due(t(c.now)),
                Vec::<&str>::new(),
                "{}: popped twice",
                c.name
            );
        }
    }

    #[test]
    fn schedule_replaces_existing_deadline() {
        // Moving a key later.
        let mut q = queue(&[("a", 10), ("b", 20)]);
        q.schedule("a", t(30));
        assert_eq!(q.len(), 2);
        assert_eq!(q.deadline(&"a"), Some(t(30)));
        assert_eq!(q.next_deadline(), Some(t(20)));
        assert_eq!(q.pop_due(t(25)), vec!["b"]);
        assert_eq!(q.pop_due(t(30)), vec!["a"]);
        assert!(q.is_empty());

        // Moving a key earlier.
        let mut q = queue(&[("a", 10), ("b", 20)]);
        q.schedule("b", t(5));
        assert_eq!(q.next_deadline(), Some(t(5)));
        assert_eq!(q.pop_due(t(100)), vec!["b", "a"]);

        // Rescheduling at the same deadline keeps a single entry.
        let mut q = queue(&[("a", 10)]);
        q.schedule("a", t(10));
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_due(t(10)), vec!["a"]);
        assert!(q.is_empty());
    }

    #[test]
    fn cancel_removes_only_that_key() {
        let mut q = queue(&[("a", 10), ("b", 10), ("c", 20)]);
        assert!(q.cancel(&"a"));
        assert!(!q.cancel(&"a"), "second cancel finds nothing");
        assert_eq!(q.len(), 2);
        assert_eq!(q.deadline(&"a"), None);
        assert_eq!(q.deadline(&"b"), Some(t(10)));
        assert_eq!(q.next_deadline(), Some(t(10)));
        assert!(q.cancel(&"b"));
        assert_eq!(q.next_deadline(), Some(t(20)));
        assert_eq!(q.pop_due(t(100)), vec!["c"]);
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn cancelled_key_can_be_scheduled_again() {
        let mut q = queue(&[("a", 10)]);
        assert!(q.cancel(&"a"));
        q.schedule("a", t(15));
        assert_eq!(q.pop_due(t(10)), Vec::<&str>::new());
        assert_eq!(q.pop_due(t(15)), vec!["a"]);
    }

    #[test]
    fn many_keys_with_equal_deadlines() {
        let mut q = DeadlineQueue::new();
        for i in (0..100u32).rev() {
            q.schedule(i, t(u64::from(i % 3)));
        }
        assert_eq!(q.len(), 100);
        let first = q.pop_due(t(0));
        assert_eq!(first, (0..100).filter(|i| i % 3 == 0).collect::<Vec<_>>());
        let rest = q.pop_due(t(2));
        let want: Vec<u32> = (0..100)
            .filter(|i| i % 3 == 1)
            .chain((0..100).filter(|i| i % 3 == 2))
            .collect();
        assert_eq!(rest, want);
        assert!(q.is_empty());
    }
}
