//! The liveness rule for one neighbour: a request every interval, a reply counts only if it
//! echoes one of our outstanding requests, and `misses` consecutive unanswered requests make
//! the neighbour dead. Pure; the caller passes the request timestamps.

use std::collections::VecDeque;

/// What to do for a neighbour at a liveness interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Send a request with this timestamp.
    Request(u64),
    /// `misses` requests in a row went unanswered.
    Dead { misses: u32 },
}

#[derive(Debug, Clone)]
pub struct LivenessTracker {
    /// Timestamps of requests not yet answered, oldest first (at most `max_misses`).
    outstanding: VecDeque<u64>,
    misses: u32,
    max_misses: u32,
}

impl LivenessTracker {
    pub fn new(max_misses: u32) -> Self {
        LivenessTracker {
            outstanding: VecDeque::new(),
            misses: 0,
            max_misses: max_misses.max(1),
        }
    }

    pub fn misses(&self) -> u32 {
        self.misses
    }

    /// Called every interval with the new request's timestamp. The previous request, if still
    /// unanswered, counts as a miss.
    pub fn on_interval(&mut self, ts_ms: u64) -> Check {
        if !self.outstanding.is_empty() {
            self.misses += 1;
        }
        if self.misses >= self.max_misses {
            return Check::Dead {
                misses: self.misses,
            };
        }
        self.outstanding.push_back(ts_ms);
        while self.outstanding.len() > self.max_misses as usize {
            self.outstanding.pop_front();
        }
        Check::Request(ts_ms)
    }

    /// A reply echoing `ts_ms`. A reply to any outstanding request, even a late one, proves the
    /// neighbour alive and clears the count; anything else is ignored.
    pub fn on_reply(&mut self, ts_ms: u64) -> bool {
        if self.outstanding.contains(&ts_ms) {
            self.outstanding.clear();
            self.misses = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_misses_in_a_row_are_dead() {
        let mut t = LivenessTracker::new(3);
        assert_eq!(t.on_interval(1), Check::Request(1));
        assert_eq!(t.on_interval(2), Check::Request(2)); // 1 missed
        assert_eq!(t.on_interval(3), Check::Request(3)); // 2 missed
        assert_eq!(t.on_interval(4), Check::Dead { misses: 3 });
    }

    #[test]
    fn answered_requests_never_count() {
        let mut t = LivenessTracker::new(3);
        for ts in 1..100 {
            assert_eq!(t.on_interval(ts), Check::Request(ts));
            assert!(t.on_reply(ts));
        }
        assert_eq!(t.misses(), 0);
    }

    #[test]
    fn a_late_reply_within_the_window_resets_the_count() {
        let mut t = LivenessTracker::new(3);
        t.on_interval(1);
        t.on_interval(2);
        t.on_interval(3);
        assert_eq!(t.misses(), 2);
        // The answer to the first request arrives late, before the third miss.
        assert!(t.on_reply(1));
        assert_eq!(t.misses(), 0);
        assert_eq!(t.on_interval(4), Check::Request(4));
        assert_eq!(t.on_interval(5), Check::Request(5));
        assert_eq!(t.misses(), 1);
    }

    #[test]
    fn replies_that_do_not_match_are_ignored() {
        let mut t = LivenessTracker::new(2);
        t.on_interval(10);
        assert!(!t.on_reply(11));
        assert!(!t.on_reply(9));
        t.on_interval(20);
        assert_eq!(t.on_interval(30), Check::Dead { misses: 2 });
        // A reply to a request older than the window does not help either.
        let mut t = LivenessTracker::new(1);
        t.on_interval(1);
        assert_eq!(t.on_interval(2), Check::Dead { misses: 1 });
    }
}
