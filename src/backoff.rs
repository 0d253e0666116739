//! Exponential backoff between reconnection attempts, shared by seeds (redialing other seeds)
//! and peers (reconnecting to their seeds). Pure: the caller adds the wait to its own clock.

use std::time::Duration;

/// First wait before trying again after losing a seed or failing to reach it; doubles up to
/// `SEED_BACKOFF_MAX`, so a seed that is down costs a dial every few seconds, not a stream.
pub const SEED_BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const SEED_BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// The seeds' backoff.
    fn default() -> Self {
        Backoff::new(SEED_BACKOFF_MIN, SEED_BACKOFF_MAX)
    }
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The wait before the next try; the one after will be twice as long, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        wait
    }

    /// A try succeeded: the next failure waits the minimum again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(200), ms(1000));
        let waits: Vec<_> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, vec![ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        b.reset();
        assert_eq!(b.next_wait(), ms(200));
    }
}
