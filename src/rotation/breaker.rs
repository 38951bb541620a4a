//! The circuit breaker: `failures` consecutive failed rotation attempts open it for
//! `cooldown`; while open no attempt is made; when the cool-down ends the engine re-reads the
//! source at once (half-open) and one success closes it, one failure re-opens it. Pure: the
//! caller passes the time.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            consecutive_failures: 0,
            open_until: None,
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether an attempt may run now (closed or half-open).
    pub fn allows(&self, now: Instant) -> bool {
        self.state(now) != BreakerState::Open
    }

    /// When the cool-down ends, if the breaker is open.
    pub fn reopens_at(&self) -> Option<Instant> {
        self.open_until
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.open_until = None;
    }

    /// Records a failed attempt; true when this failure opened (or re-opened) the breaker.
    pub fn record_failure(&mut self, now: Instant) -> bool {
        self.consecutive_failures += 1;
        let half_open = self.state(now) == BreakerState::HalfOpen;
        if half_open || self.consecutive_failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_blocks_until_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(300));
        assert!(!b.record_failure(t0));
        assert!(!b.record_failure(t0));
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert!(b.record_failure(t0));
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.allows(t0 + Duration::from_secs(299)));
        assert_eq!(
            b.state(t0 + Duration::from_secs(300)),
            BreakerState::HalfOpen
        );
        assert!(b.allows(t0 + Duration::from_secs(300)));
    }

    #[test]
    fn half_open_closes_on_success_and_reopens_on_one_failure() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(10));
        b.record_failure(t0);
        b.record_failure(t0);
        let later = t0 + Duration::from_secs(10);
        assert!(
            b.record_failure(later),
            "a failed half-open attempt re-opens at once"
        );
        assert_eq!(b.state(later + Duration::from_secs(9)), BreakerState::Open);
        b.record_success();
        assert_eq!(b.state(later), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert!(
            !b.record_failure(later),
            "counting starts again after a success"
        );
    }
}
