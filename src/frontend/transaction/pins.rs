//! Pinning: a client whose session holds state that cannot move to another upstream connection
//! (a temporary table, LISTEN, an SQL-prepared statement, a WITH HOLD cursor, a session advisory
//! lock) keeps its connection until it leaves, and that connection is then closed, never
//! reused. Counted in `rotagate_pinned_clients` and `rotagate_pins_total{reason}`; each reason
//! is logged once per client.

use super::classify::PinReason;

#[derive(Debug, Default)]
pub struct Pins {
    /// Bit per [`PinReason`] this client was pinned for.
    reasons: u8,
    /// The client's database (the `database` label of the pin metrics).
    pub database: Option<std::sync::Arc<str>>,
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

    /// Pins the client for `reason` (`who` names it in the log line).
    pub fn pin(&mut self, reason: PinReason, who: &str) {
        if self.has(reason) {
            return;
        }
        if !self.is_pinned() {
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
    }

    /// DISCARD ALL succeeded: nothing of the session is left to keep.
    pub fn unpin(&mut self) {
        if self.is_pinned() {
            metrics::gauge!("rotagate_pinned_clients", "database" => self.label()).decrement(1.0);
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
        let mut p = Pins::default();
        assert!(!p.is_pinned());
        p.pin(PinReason::Listen, "app@test");
        p.pin(PinReason::Listen, "app@test");
        p.pin(PinReason::TempTable, "app@test");
        assert!(p.has(PinReason::Listen) && p.has(PinReason::TempTable));
        assert!(!p.has(PinReason::WithHold));
        p.unpin();
        assert!(!p.is_pinned());
    }
}
