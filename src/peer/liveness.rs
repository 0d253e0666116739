//! The liveness rule for one neighbour: a request every interval, a reply counts only if it
//! echoes one of our outstanding requests, and a request still unanswered `reply_timeout` after
//! it was sent is a miss; `misses` consecutive misses make the neighbour dead. Pure; the caller
//! passes the request timestamps and the time.
//!
//! Counting a miss at its reply deadline, not at the next interval, bounds detection by
//! `misses × interval + reply_timeout` after the last answered request.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::LivenessConfig;

/// Liveness for all neighbours: one tracker each and the round timer (every
/// `liveness.interval`, from the moment the peer has a neighbour or finished joining).
#[derive(Debug)]
pub struct Liveness {
    interval: Duration,
    misses: u32,
    reply_timeout: Duration,
    trackers: BTreeMap<SocketAddr, LivenessTracker>,
    next_round: Option<Instant>,
}

impl Liveness {
    pub fn new(config: &LivenessConfig) -> Self {
        Liveness {
            interval: config.interval,
            misses: config.misses,
            reply_timeout: config.reply_timeout,
            trackers: BTreeMap::new(),
            next_round: None,
        }
    }

    /// Starts the rounds unless they run: the wait until the first one, for its timer.
    pub fn arm(&mut self, now: Instant) -> Option<Duration> {
        if self.next_round.is_some() {
            return None;
        }
        self.next_round = Some(now + self.interval);
        Some(self.interval)
    }

    /// A new neighbour, or a new link to one: its count starts afresh.
    pub fn watch(&mut self, addr: SocketAddr) {
        self.trackers
            .insert(addr, LivenessTracker::new(self.misses, self.reply_timeout));
    }

    pub fn unwatch(&mut self, addr: &SocketAddr) {
        self.trackers.remove(addr);
    }

    /// At the round timer: if a round is due, the neighbours to send a request with timestamp
    /// `ts_ms` to (in address order; the next round is then `interval` away, the replies due
    /// within `reply_timeout`).
    pub fn round(&mut self, now: Instant, ts_ms: u64) -> Option<Vec<SocketAddr>> {
        if self.next_round.is_none_or(|at| now < at) {
            return None;
        }
        self.next_round = Some(now + self.interval);
        let mut asked = Vec::with_capacity(self.trackers.len());
        for (addr, t) in self.trackers.iter_mut() {
            t.on_request(ts_ms, now);
            asked.push(*addr);
        }
        Some(asked)
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn reply_timeout(&self) -> Duration {
        self.reply_timeout
    }

    /// A reply from `addr` echoing `ts_ms`; true if it answered one of our requests.
    pub fn on_reply(&mut self, addr: &SocketAddr, ts_ms: u64) -> bool {
        self.trackers
            .get_mut(addr)
            .is_some_and(|t| t.on_reply(ts_ms))
    }

    /// The neighbours whose last `misses` requests went unanswered, with the count, in
    /// address order.
    pub fn dead(&mut self, now: Instant) -> Vec<(SocketAddr, u32)> {
        self.trackers
            .iter_mut()
            .filter_map(|(addr, t)| t.check(now).map(|m| (*addr, m)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
struct Request {
    ts_ms: u64,
    deadline: Instant,
    counted: bool,
}

#[derive(Debug, Clone)]
pub struct LivenessTracker {
    /// Requests not yet answered, oldest first (at most `max_misses`).
    outstanding: VecDeque<Request>,
    misses: u32,
    max_misses: u32,
    reply_timeout: Duration,
}

impl LivenessTracker {
    pub fn new(max_misses: u32, reply_timeout: Duration) -> Self {
        LivenessTracker {
            outstanding: VecDeque::new(),
            misses: 0,
            max_misses: max_misses.max(1),
            reply_timeout,
        }
    }

    pub fn misses(&self) -> u32 {
        self.misses
    }

    /// A request with timestamp `ts_ms` is sent now.
    pub fn on_request(&mut self, ts_ms: u64, now: Instant) {
        self.outstanding.push_back(Request {
            ts_ms,
            deadline: now + self.reply_timeout,
            counted: false,
        });
        // Only the last `misses` requests matter; one that leaves the window unanswered before
        // its deadline (a reply timeout longer than the window) is a miss all the same.
        while self.outstanding.len() > self.max_misses as usize {
            if self.outstanding.pop_front().is_some_and(|r| !r.counted) {
                self.misses += 1;
            }
        }
    }

    /// Counts requests whose reply deadline has passed. `Some(misses)` once `misses` requests
    /// in a row went unanswered: the neighbour is dead.
    pub fn check(&mut self, now: Instant) -> Option<u32> {
        for r in self.outstanding.iter_mut() {
            if !r.counted && now >= r.deadline {
                r.counted = true;
                self.misses += 1;
            }
        }
        (self.misses >= self.max_misses).then_some(self.misses)
    }

    /// A reply echoing `ts_ms`. A reply to any outstanding request, even a late one, proves the
    /// neighbour alive and clears the count; anything else is ignored.
    pub fn on_reply(&mut self, ts_ms: u64) -> bool {
        if self.outstanding.iter().any(|r| r.ts_ms == ts_ms) {
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

    const I: Duration = Duration::from_secs(13);
    const T: Duration = Duration::from_secs(3);

    /// Sends a request at `at` (timestamp = seconds since t0) and checks at `at`.
    fn round(t: &mut LivenessTracker, t0: Instant, k: u64) -> Option<u32> {
        let at = t0 + I * k as u32;
        let dead = t.check(at);
        t.on_request(k, at);
        dead
    }

    #[test]
    fn three_misses_in_a_row_are_dead_at_the_third_reply_deadline() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new(3, T);
        assert_eq!(round(&mut t, t0, 1), None);
        assert_eq!(round(&mut t, t0, 2), None); // 1 missed
        assert_eq!(round(&mut t, t0, 3), None); // 2 missed
        assert_eq!(t.misses(), 2);
        // Not yet at the third deadline, then at it: 3 × 13 + 3 s after t0.
        assert_eq!(t.check(t0 + 3 * I + T - Duration::from_millis(1)), None);
        assert_eq!(t.check(t0 + 3 * I + T), Some(3));
    }

    #[test]
    fn answered_requests_never_count() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new(3, T);
        for k in 1..100 {
            assert_eq!(round(&mut t, t0, k), None);
            assert!(t.on_reply(k));
        }
        assert_eq!(t.misses(), 0);
    }

    #[test]
    fn a_late_reply_within_the_window_resets_the_count() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new(3, T);
        round(&mut t, t0, 1);
        round(&mut t, t0, 2);
        round(&mut t, t0, 3);
        assert_eq!(t.misses(), 2);
        // The answer to the first request arrives late, before the third miss.
        assert!(t.on_reply(1));
        assert_eq!(t.misses(), 0);
        round(&mut t, t0, 4);
        assert_eq!(round(&mut t, t0, 5), None);
        assert_eq!(t.misses(), 1);
    }

    #[test]
    fn replies_that_do_not_match_are_ignored() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new(2, T);
        round(&mut t, t0, 10);
        assert!(!t.on_reply(11));
        assert!(!t.on_reply(9));
        round(&mut t, t0, 20);
        assert_eq!(t.check(t0 + I * 20 + T), Some(2));
        // A reply to a request older than the window does not help either.
        let mut t = LivenessTracker::new(1, T);
        round(&mut t, t0, 1);
        round(&mut t, t0, 2);
        assert!(!t.on_reply(1));
    }

    #[test]
    fn a_reply_timeout_longer_than_the_interval_still_counts_each_request_once() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new(3, I * 2);
        for k in 1..=3 {
            assert_eq!(round(&mut t, t0, k), None);
        }
        assert_eq!(t.check(t0 + I * 4), None);
        assert_eq!(t.check(t0 + I * 5), Some(3));
    }
}
