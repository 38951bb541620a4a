//! Pinning: a client whose session holds state that cannot move to another upstream connection
//! (a temporary table, LISTEN, an SQL-prepared statement, a WITH HOLD cursor, a session advisory
//! lock) keeps its connection until it leaves, and that connection is then closed, never
//! reused. Counted in `rotagate_pinned_clients` and `rotagate_pins_total{reason}`; each reason
//! is logged once per client. At most `pool.max_pinned` clients of a database are pinned at
//! once (by default one less than `pool.size`): a pin past it is refused, so pinned clients
//! never hold the last upstream connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::classify::PinReason;

#[derive(Debug, Default)]
pub struct Pins {
    /// Bit per [`PinReason`] this client was pinned for.
    reasons: u8,
    /// The client's database (the `database` label of the pin metrics).
    pub database: Option<Arc<str>>,
    /// How many of the database's clients are pinned (shared by its sessions).
    pub count: Option<Arc<AtomicU32>>,
}

impl Pins {
    fn label(&self) -> String {
        self.database.as_deref().unwrap_or("").to_owned()
    }
}

fn bit(reason: PinReason) -> u8 {
    1 << PinReason::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("every reason is listed")
}

impl Pins {
    pub fn is_pinned(&self) -> bool {
        self.reasons != 0
    }

    pub fn has(&self, reason: PinReason) -> bool {
        self.reasons & bit(reason) != 0
    }

    /// Pins the client for `reason` (`who` names it in the log line). False when the client was
    /// not pinned yet and `max` clients of its database are pinned already.
    pub fn pin(&mut self, reason: PinReason, who: &str, max: u32) -> bool {
        if self.has(reason) {
            return true;
        }
        if !self.is_pinned() {
            if let Some(count) = &self.count {
                let add = |n: u32| (n < max).then_some(n + 1);
                if count
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, add)
                    .is_err()
                {
                    return false;
                }
            }
            metrics::gauge!("rotagate_pinned_clients", "database" => self.label()).increment(1.0);
        }
        self.reasons |= bit(reason);
        metrics::counter!("rotagate_pins_total", "reason" => reason.label(), "database" => self.label())
            .increment(1);
        tracing::info!(
            client = who,
            reason = reason.label(),
            statement = reason.statement(),
            "client pinned to its upstream connection until it disconnects"
        );
        true
    }

    /// DISCARD ALL succeeded: nothing of the session is left to keep.
    pub fn unpin(&mut self) {
        if self.is_pinned() {
            metrics::gauge!("rotagate_pinned_clients", "database" => self.label()).decrement(1.0);
            if let Some(count) = &self.count {
                count.fetch_sub(1, Ordering::AcqRel);
            }
            self.reasons = 0;
        }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        self.unpin();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_accumulate_and_unpin_clears() {
        let count = Arc::new(AtomicU32::new(0));
        let mut p = Pins::default();
        p.count = Some(count.clone());
        assert!(!p.is_pinned());
        assert!(p.pin(PinReason::Listen, "app@test", 1));
        assert!(p.pin(PinReason::Listen, "app@test", 1));
        assert!(p.pin(PinReason::TempTable, "app@test", 1));
        assert!(p.has(PinReason::Listen) && p.has(PinReason::TempTable));
        assert!(!p.has(PinReason::WithHold));
        assert_eq!(count.load(Ordering::Relaxed), 1);
        let mut q = Pins::default();
        q.count = Some(count.clone());
        assert!(
            !q.pin(PinReason::Listen, "other@test", 1),
            "the limit holds"
        );
        assert!(!q.is_pinned());
        p.unpin();
        assert!(!p.is_pinned());
        assert_eq!(count.load(Ordering::Relaxed), 0);
        assert!(q.pin(PinReason::Listen, "other@test", 1));
    }
}
