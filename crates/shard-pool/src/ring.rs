//! A shard's replay ring: its latest dispatches, bounded by count and
//! bytes, for clients that resume.

use std::collections::VecDeque;

use crate::pipeline::Dispatch;

/// The latest dispatches of a shard, oldest first.
#[derive(Debug)]
pub(crate) struct Ring {
    events: VecDeque<Dispatch>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// Every dispatch after this index is in the ring (until the newest).
    floor: u64,
    /// Whether a dispatch has been dropped for room since the last reset.
    dropping: bool,
}

impl Ring {
    pub(crate) fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
            floor: 0,
            dropping: false,
        }
    }

    pub(crate) fn push(&mut self, dispatch: Dispatch) {
        self.bytes += dispatch.payload.len();
        self.events.push_back(dispatch);
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.payload.len();
            self.floor = old.index;
            self.dropping = true;
        }
    }

    /// A new session upstream: nothing before `index` can be replayed.
    pub(crate) fn reset(&mut self, index: u64) {
        self.events.clear();
        self.bytes = 0;
        self.floor = index;
        self.dropping = false;
    }

    /// The floor (every dispatch after it is held) and whether the ring
    /// has dropped dispatches for room since its last reset.
    pub(crate) fn window(&self) -> (u64, bool) {
        (self.floor, self.dropping)
    }

    /// The most dispatches it keeps.
    pub(crate) fn max_events(&self) -> usize {
        self.max_events
    }

    /// The dispatches after `index`, or `None` if some of them are gone.
    pub(crate) fn since(&self, index: u64) -> Option<Vec<Dispatch>> {
        if index < self.floor {
            return None;
        }
        let start = self.events.partition_point(|d| d.index <= index);
        Some(self.events.range(start..).cloned().collect())
    }

    /// Dispatches and payload bytes held.
    pub(crate) fn len_bytes(&self) -> (usize, usize) {
        (self.events.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn dispatch(index: u64, size: usize) -> Dispatch {
        let payload = Bytes::from(format!(
            r#"{{"t":"X","s":{index},"op":0,"d":"{}"}}"#,
            "x".repeat(size)
        ));
        let scan = seqpatch::scan(&payload).unwrap();
        Dispatch {
            index,
            payload,
            scan,
        }
    }

    #[test]
    fn it_replays_what_it_still_holds_and_says_when_it_does_not() {
        let mut ring = Ring::new(3, usize::MAX);
        for i in 1..=5 {
            ring.push(dispatch(i, 1));
        }
        let indexes =
            |v: Option<Vec<Dispatch>>| v.map(|v| v.iter().map(|d| d.index).collect::<Vec<_>>());
        assert_eq!(indexes(ring.since(2)), Some(vec![3, 4, 5]));
        assert_eq!(indexes(ring.since(4)), Some(vec![5]));
        assert_eq!(indexes(ring.since(5)), Some(vec![]));
        assert_eq!(indexes(ring.since(1)), None, "2 is gone");
        ring.reset(6);
        assert_eq!(indexes(ring.since(5)), None, "across a reset");
        assert_eq!(indexes(ring.since(6)), Some(vec![]));
    }

    #[test]
    fn bytes_bound_it_too() {
        let mut ring = Ring::new(usize::MAX, 200);
        for i in 1..=10 {
            ring.push(dispatch(i, 50));
        }
        let (events, bytes) = ring.len_bytes();
        assert!(
            bytes <= 200 && events == 2,
            "{events} events, {bytes} bytes"
        );
    }
}
