//! Which of rotagate's named statements exist on one upstream connection, least recently used
//! first out. The names are rotagate's own (`rotagate_` and a digest of the statement); which
//! client calls a statement what is the frontend's business, not this connection's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// How many names [`Known`] keeps before it starts over.
const MAX_KNOWN: usize = 10_000;

/// Upstream statement names that prepared without error on this upstream. A client's Parse of
/// one is answered without taking a connection (rotagate prepares it where it is used); a
/// client that prepares while other clients wait for connections never holds them up.
#[derive(Debug, Default)]
pub struct Known {
    names: Mutex<HashSet<Arc<str>>>,
}

impl Known {
    pub fn insert(&self, name: &Arc<str>) {
        let mut names = self.names.lock().expect("known statements lock");
        if names.len() >= MAX_KNOWN && !names.contains(name) {
            names.clear();
        }
        names.insert(name.clone());
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names
            .lock()
            .expect("known statements lock")
            .contains(name)
    }
}

/// Prepared statements of one upstream connection. Counted in `rotagate_prepared_statements`
/// while the connection lives.
pub struct Prepared {
    names: HashMap<Arc<str>, u64>,
    /// Use counter: each lookup or insert takes the next tick.
    tick: u64,
    /// Statements used at or after this tick serve the current pipeline (since the last Sync
    /// sent) and are not evicted: closing one would close a portal bound to it.
    in_use_from: u64,
    gauge: metrics::Gauge,
    /// `rotagate_statement_prepares_total` of the connection's database.
    prepares: metrics::Counter,
}

impl Default for Prepared {
    fn default() -> Self {
        Self {
            names: HashMap::new(),
            tick: 0,
            in_use_from: 0,
            gauge: metrics::Gauge::noop(),
            prepares: metrics::Counter::noop(),
        }
    }
}

impl Prepared {
    /// Counts this connection's statements under its database (before any is prepared).
    pub fn count_for(&mut self, database: &str) {
        let db = database.to_owned();
        self.gauge = metrics::gauge!("rotagate_prepared_statements", "database" => db.clone());
        self.prepares = metrics::counter!("rotagate_statement_prepares_total", "database" => db);
    }

    /// A statement was prepared (sent as a Parse) on this connection.
    pub fn count_prepare(&self) {
        self.prepares.increment(1);
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("len", &self.names.len())
            .finish()
    }
}

impl Prepared {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `name` is prepared; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    pub fn insert(&mut self, name: Arc<str>) {
        self.tick += 1;
        if self.names.insert(name, self.tick).is_none() {
            self.gauge.increment(1.0);
        }
    }

    pub fn remove(&mut self, name: &str) -> bool {
        let gone = self.names.remove(name).is_some();
        if gone {
            self.gauge.decrement(1.0);
        }
        gone
    }

    /// Every statement is gone (DISCARD ALL, DEALLOCATE ALL upstream).
    pub fn clear(&mut self) {
        self.take_all();
    }

    /// Every statement is gone; returns their names for [`Prepared::restore`].
    pub fn take_all(&mut self) -> Vec<Arc<str>> {
        self.gauge.decrement(self.names.len() as f64);
        self.names.drain().map(|(n, _)| n).collect()
    }

    /// Puts back what [`Prepared::take_all`] took (the statement that would drop them failed).
    pub fn restore(&mut self, names: Vec<Arc<str>>) {
        for name in names {
            self.insert(name);
        }
    }

    /// A Sync was sent: statements used before now may be evicted again.
    pub fn new_pipeline(&mut self) {
        self.in_use_from = self.tick + 1;
    }

    /// The statement to close before one more is prepared, when `cap` are there already: the
    /// least recently used one that the current pipeline does not use.
    pub fn victim(&self, cap: usize) -> Option<Arc<str>> {
        if self.names.len() < cap {
            return None;
        }
        self.names
            .iter()
            .filter(|(_, t)| **t < self.in_use_from)
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.gauge.decrement(self.names.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_outside_the_pipeline() {
        let mut p = Prepared::default();
        p.insert("a".into());
        p.insert("b".into());
        assert_eq!(p.victim(3), None);
        assert_eq!(
            p.victim(2).as_deref(),
            None,
            "both serve the current pipeline"
        );
        p.new_pipeline();
        assert_eq!(p.victim(2).as_deref(), Some("a"));
        assert!(p.touch("a"));
        assert_eq!(p.victim(2).as_deref(), Some("b"));
        assert!(p.remove("b"));
        assert!(!p.touch("b"));
        assert_eq!(p.len(), 1);
        p.clear();
        assert!(p.is_empty());
    }
}
