//! A reader entry's choice of hosts (design 9.3), without I/O: each host's answer (role, WAL
//! position, replay age) becomes its lag behind the primary, and the answers together decide
//! which hosts are in rotation.
//!
//! Lag in bytes is the primary's `pg_current_wal_lsn()` less the standby's
//! `pg_last_wal_replay_lsn()`; with no primary among the hosts, the standby's own
//! `pg_last_wal_receive_lsn()` stands in for the primary's position (WAL still in flight on the
//! network is then not counted). Lag in time is taken only while the standby is behind in bytes
//! (an idle primary makes replay timestamps look old, so a caught-up standby is 0 s behind): it
//! is the smaller of the age of the last replayed transaction and how long ago the primary was
//! at the standby's replay position ([`WalClock`]). The second bounds the first after a long
//! idle stretch: one new write would otherwise make a standby look hours behind.

use super::writer::{Role, wants};
use crate::config::{ReadersConfig, TargetSessionAttrs};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// How much of the primary's WAL history [`WalClock`] keeps.
const HISTORY: Duration = Duration::from_secs(600);
const MOST_SAMPLES: usize = 4096;

/// One host's answer to the reader check.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Its role, or why it could not be asked (never a credential).
    pub role: Result<Role, String>,
    /// A primary's current WAL position, a standby's replay position.
    pub lsn: Option<u64>,
    /// A standby's time since its last replayed transaction committed on the primary.
    pub replay_age: Option<Duration>,
    /// A streaming standby's WAL received so far (`pg_last_wal_receive_lsn()`): where the
    /// primary was, as far as the standby knows, when the primary is not among the hosts.
    pub received: Option<u64>,
}

/// How far a standby is behind the primary; None where it cannot be told (the standby has
/// replayed nothing yet, or neither the primary nor the standby's receive position is known).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
}

/// The primary's WAL position over time, as the reader check saw it.
#[derive(Debug, Default)]
pub struct WalClock {
    samples: VecDeque<(Instant, u64)>,
}

impl WalClock {
    pub fn record(&mut self, now: Instant, lsn: u64) {
        while self.samples.len() >= MOST_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|(t, _)| now - *t > HISTORY)
        {
            self.samples.pop_front();
        }
        self.samples.push_back((now, lsn));
    }

    /// How long ago the primary was last seen at or before `lsn` (since the oldest sample
    /// kept, when it was never seen that far back).
    fn since(&self, now: Instant, lsn: u64) -> Option<Duration> {
        let at = (self.samples.iter().rev())
            .find(|(_, l)| *l <= lsn)
            .or(self.samples.front())?;
        Some(now - at.0)
    }
}

/// `X/Y` (two hexadecimal halves) as a 64-bit WAL position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u64::from(u32::MAX) && lo <= u64::from(u32::MAX)).then_some(hi << 32 | lo)
}

/// A standby's lag, given the primary's position now (`primary`), as described above.
pub fn lag(primary: Option<u64>, clock: &WalClock, standby: &Reading, now: Instant) -> Lag {
    let (Some(p), Some(r)) = (primary, standby.lsn) else {
        return Lag::default();
    };
    if r >= p {
        return Lag {
            bytes: Some(0),
            seconds: Some(0.0),
        };
    }
    let clocked = clock.since(now, r);
    let seconds = match (standby.replay_age, clocked) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    };
    Lag {
        bytes: Some(p - r),
        seconds: seconds.map(|d| d.as_secs_f64()),
    }
}

/// Whether a standby's lag is within the bounds (a lag that cannot be told is).
pub fn within(lag: &Lag, cfg: &ReadersConfig) -> bool {
    let time_ok = match (lag.seconds, cfg.max_lag) {
        (Some(s), Some(max)) => s <= max.as_secs_f64(),
        _ => true,
    };
    let bytes_ok = match (lag.bytes, cfg.max_lag_bytes) {
        (Some(b), Some(max)) => b <= max,
        _ => true,
    };
    time_ok && bytes_ok
}

/// Which hosts are in rotation: those `attrs` wants, standbys only within the lag bounds;
/// `prefer-standby` with no standby in rotation falls back to the hosts that answered.
pub fn choose(
    attrs: TargetSessionAttrs,
    cfg: &ReadersConfig,
    readings: &[(Reading, Lag)],
) -> Vec<bool> {
    let fresh = |(r, lag): &(Reading, Lag)| match r.role {
        Ok(Role::Standby) => within(lag, cfg),
        Ok(_) => true,
        Err(_) => false,
    };
    let pick = |want: &dyn Fn(Role) -> bool| -> Vec<bool> {
        (readings.iter())
            .map(|x| fresh(x) && x.0.role.as_ref().is_ok_and(|r| want(*r)))
            .collect()
    };
    let on = pick(&|r| wants(attrs, r));
    match attrs {
        TargetSessionAttrs::PreferStandby if !on.contains(&true) => pick(&|_| true),
        _ => on,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_lag: u64, bytes: Option<u64>) -> ReadersConfig {
        ReadersConfig {
            check_interval: Duration::from_secs(1),
            max_lag: Some(Duration::from_secs(max_lag)),
            max_lag_bytes: bytes,
        }
    }

    fn reading(role: Result<Role, &str>, lsn: u64, age: u64) -> Reading {
        Reading {
            role: role.map_err(str::to_owned),
            lsn: Some(lsn),
            replay_age: Some(Duration::from_secs(age)),
            received: None,
        }
    }

    #[test]
    fn lsns_parse_as_postgres_writes_them() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x300_0060));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/G"), None);
    }

    #[test]
    fn a_caught_up_standby_is_not_behind_however_old_its_last_replay() {
        let clock = WalClock::default();
        let now = Instant::now();
        let idle = reading(Ok(Role::Standby), 500, 3600);
        assert_eq!(lag(Some(500), &clock, &idle, now).seconds, Some(0.0));
        assert_eq!(lag(None, &clock, &idle, now), Lag::default());
    }

    #[test]
    fn time_behind_is_the_smaller_of_replay_age_and_the_primarys_clock() {
        let start = Instant::now();
        let mut clock = WalClock::default();
        for (s, lsn) in [(0, 100), (1, 100), (2, 200), (3, 300)] {
            clock.record(start + Duration::from_secs(s), lsn);
        }
        let now = start + Duration::from_secs(3);
        // Idle for an hour, then one write: the clock says at most 2 s.
        let after_idle = reading(Ok(Role::Standby), 150, 3600);
        let l = lag(Some(300), &clock, &after_idle, now);
        assert_eq!((l.bytes, l.seconds), (Some(150), Some(2.0)));
        // Paused while the primary writes: the replay age is the smaller.
        let paused = reading(Ok(Role::Standby), 100, 1);
        assert_eq!(lag(Some(300), &clock, &paused, now).seconds, Some(1.0));
    }

    #[test]
    fn standbys_beyond_the_bound_leave_and_prefer_standby_falls_back() {
        use TargetSessionAttrs::*;
        let fresh = Lag {
            bytes: Some(0),
            seconds: Some(0.0),
        };
        let late = Lag {
            bytes: Some(10 << 20),
            seconds: Some(9.0),
        };
        let hosts = [
            (reading(Ok(Role::Primary), 9, 0), Lag::default()),
            (reading(Ok(Role::Standby), 9, 0), fresh),
            (reading(Ok(Role::Standby), 1, 9), late),
            (reading(Err("refused"), 0, 0), Lag::default()),
        ];
        assert_eq!(
            choose(Standby, &cfg(5, None), &hosts),
            [false, true, false, false]
        );
        assert_eq!(
            choose(Standby, &cfg(10, None), &hosts),
            [false, true, true, false]
        );
        assert_eq!(
            choose(Standby, &cfg(10, Some(1 << 20)), &hosts),
            [false, true, false, false]
        );
        assert_eq!(
            choose(Any, &cfg(5, None), &hosts),
            [true, true, false, false]
        );
        let no_fresh_standby = &hosts[..1];
        assert_eq!(choose(Standby, &cfg(5, None), no_fresh_standby), [false]);
        assert_eq!(
            choose(PreferStandby, &cfg(5, None), no_fresh_standby),
            [true]
        );
        assert_eq!(
            choose(PreferStandby, &cfg(5, None), &hosts),
            [false, true, false, false]
        );
    }
}
