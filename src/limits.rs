//! Rate rules against abuse, as plain state with time passed in: a token bucket for what one
//! connection may send, and the controller that raises the proof-of-work difficulty while a
//! node is flooded with handshakes and lowers it again when calm.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate_per_s: u32, burst: u32, now: Instant) -> Self {
        RateLimiter {
            rate: rate_per_s as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    /// Takes one token; false when the bucket is empty (the caller refuses the work).
    pub fn allow(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A change of the admission difficulty, to be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DifficultyChange {
    pub from: u8,
    pub to: u8,
    /// Handshakes started in the last window.
    pub rate: u32,
}

/// Raises the difficulty one step for every window in which more than `threshold`
/// handshakes started, up to `max`; lowers it one step for every calm window (at most half the
/// threshold), down to `base`. Each step doubles or halves what a connection costs.
#[derive(Debug, Clone)]
pub struct DifficultyController {
    base: u8,
    max: u8,
    threshold: u32,
    window: Duration,
    current: u8,
    window_start: Instant,
    count: u32,
}

impl DifficultyController {
    pub fn new(base: u8, max: u8, threshold: u32, window: Duration, now: Instant) -> Self {
        DifficultyController {
            base,
            max: max.max(base),
            threshold: threshold.max(1),
            window,
            current: base,
            window_start: now,
            count: 0,
        }
    }

    pub fn current(&self) -> u8 {
        self.current
    }

    /// A handshake starts now; returns the difficulty to ask for and any change to log.
    pub fn on_handshake(&mut self, now: Instant) -> (u8, Option<DifficultyChange>) {
        let change = self.roll(now);
        self.count += 1;
        (self.current, change)
    }

    /// Closes finished windows (also call it on a timer so the difficulty comes down when the
    /// flood stops and no handshake arrives to trigger it).
    pub fn roll(&mut self, now: Instant) -> Option<DifficultyChange> {
        let mut change = None;
        while now.saturating_duration_since(self.window_start) >= self.window {
            let from = self.current;
            let rate = self.count;
            if self.count > self.threshold && self.current < self.max {
                self.current += 1;
            } else if self.count <= self.threshold / 2 && self.current > self.base {
                self.current -= 1;
            }
            if self.current != from {
                change = Some(DifficultyChange {
                    from: change.map_or(from, |c: DifficultyChange| c.from),
                    to: self.current,
                    rate,
                });
            }
            self.count = 0;
            self.window_start += self.window;
            // After a long quiet spell, every missed window counts as calm, one step each.
            if self.current == self.base {
                let behind = now.saturating_duration_since(self.window_start);
                if behind >= self.window {
                    self.window_start = now;
                }
            }
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut b = RateLimiter::new(10, 5, t0);
        assert_eq!((0..5).filter(|_| b.allow(t0)).count(), 5);
        assert!(!b.allow(t0));
        // 100 ms later: one more token.
        assert!(b.allow(t0 + Duration::from_millis(100)));
        assert!(!b.allow(t0 + Duration::from_millis(100)));
        // Long idle: back to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.allow(later)).count(), 5);
    }

    #[test]
    fn difficulty_rises_under_a_flood_and_falls_when_calm() {
        let t0 = Instant::now();
        let w = Duration::from_secs(1);
        let mut c = DifficultyController::new(8, 11, 10, w, t0);
        // Window 1: 50 handshakes.
        for i in 0..50 {
            c.on_handshake(t0 + Duration::from_millis(i * 10));
        }
        let (d, change) = c.on_handshake(t0 + w);
        assert_eq!(d, 9);
        assert_eq!(
            change,
            Some(DifficultyChange {
                from: 8,
                to: 9,
                rate: 50
            })
        );
        // Keep flooding: one step per window, capped at 11.
        for k in 1..6u32 {
            for i in 0..50u32 {
                c.on_handshake(t0 + w * k + Duration::from_millis(i as u64 * 10));
            }
        }
        assert_eq!(c.current(), 11);
        // Calm: one step down per window, back to the base and no lower.
        assert_eq!(c.roll(t0 + w * 7).map(|x| x.to), Some(10));
        c.roll(t0 + w * 60);
        assert_eq!(c.current(), 8);
        assert_eq!(c.roll(t0 + w * 120), None);
    }

    #[test]
    fn honest_traffic_leaves_the_difficulty_alone() {
        let t0 = Instant::now();
        let mut c = DifficultyController::new(20, 28, 50, Duration::from_secs(1), t0);
        for i in 0..600u64 {
            let (d, change) = c.on_handshake(t0 + Duration::from_millis(i * 100));
            assert_eq!((d, change), (20, None));
        }
    }
}
