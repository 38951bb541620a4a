//! Exponential backoff for source errors (the rotation engine's fetches, an event source's
//! reconnects): 2 s base, doubling, 60 s cap, with full jitter in the
//! upper half (so retries from many replicas spread out). Pure: randomness is injected.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(2), Duration::from_secs(60))
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay; `unit` in [0, 1) picks a point in [ceiling/2, ceiling).
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_two_seconds_to_a_sixty_second_cap() {
        let mut b = Backoff::default();
        let tops: Vec<u64> = (0..8).map(|_| b.next_with(0.999_999).as_secs()).collect();
        assert_eq!(tops, [1, 3, 7, 15, 31, 59, 59, 59]);
        let mut b = Backoff::default();
        assert_eq!(b.next_with(0.0), Duration::from_secs(1));
        assert_eq!(b.next_with(0.0), Duration::from_secs(2));
        b.reset();
        assert_eq!(b.next_with(0.0), Duration::from_secs(1));
    }
}
