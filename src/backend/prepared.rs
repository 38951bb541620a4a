//! rotagate's named statements on one upstream connection, least recently used first out.
//!
//! Each statement has a name of this connection's own (`rotagate_` and a number), the key of
//! the statement it prepares (a digest of the query text and parameter types, given by the
//! frontend) and, once known, the digest of what the server described for it (parameter types
//! and result columns, as they were when it was prepared). Two statements with the same key and
//! description behave alike in every way a client can see, so each (key, description) is kept
//! once: a duplicate is closed at the connection's next hand-over. Which client calls a
//! statement what is the frontend's business, not this connection's.

use std::collections::HashMap;
use std::sync::Arc;

/// A statement's identity as the frontend computes it: a digest of its Parse body.
pub type Key = u128;
/// A digest of a statement's description (parameter types, result columns).
pub type DescDigest = u64;

/// How many keys [`Known`] keeps before it starts over.
const MAX_KNOWN: usize = 10_000;

/// Statement keys that prepared (and were described) on an upstream. While every connection is
/// kept by a client inside a transaction block (or pinned), a client's Parse of one is answered
/// without a connection (its description is learned where it is first used): a client that
/// prepares with a blocking call while another client on its thread holds a connection in a
/// transaction (pgbench `-M prepared` does) does not hold that one up.
#[derive(Debug, Default)]
pub struct Known {
    keys: std::sync::Mutex<std::collections::HashSet<Key>>,
}

impl Known {
    pub fn insert(&self, key: Key) {
        let mut keys = self.keys.lock().expect("known statements lock");
        if keys.len() >= MAX_KNOWN && !keys.contains(&key) {
            keys.clear();
        }
        keys.insert(key);
    }

    pub fn contains(&self, key: Key) -> bool {
        self.keys
            .lock()
            .expect("known statements lock")
            .contains(&key)
    }
}

/// When statements were prepared, in one order for every connection and client: a client's
/// statement is served only by an upstream statement prepared no earlier than the client's own
/// Parse. PostgreSQL does not invalidate a plan whose query refers to a type dropped and made
/// again (only its parameter types show in a description), so an older statement of the same
/// description may fail where the client's own would work.
static PREPARED_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The next point in [`PREPARED_AT`]'s order.
pub fn now() -> u64 {
    PREPARED_AT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What this connection knows of one of its statements.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub key: Key,
    /// Known once the server described it.
    pub desc: Option<DescDigest>,
    /// When its Parse was sent ([`now`]).
    pub born: u64,
    tick: u64,
}

/// How many unnamed keys a connection remembers having seen before it starts over.
const MAX_SEEN: usize = 4096;

/// A statement prepared once on a connection for clients' unnamed Parses of one text and
/// parameter types: its name, and the frontend's statement (with what the server described).
#[derive(Clone)]
pub struct Shared {
    pub name: Arc<str>,
    pub stmt: Arc<dyn std::any::Any + Send + Sync>,
}

/// Statements taken by a statement that drops them all (DISCARD ALL, DEALLOCATE ALL), to be
/// put back if it fails.
#[derive(Debug, Default)]
pub struct Taken {
    names: HashMap<Arc<str>, Slot>,
}

/// Prepared statements of one upstream connection. Counted in `rotagate_prepared_statements`
/// while the connection lives.
pub struct Prepared {
    names: HashMap<Arc<str>, Slot>,
    /// (key, description) -> the statement kept for it.
    index: HashMap<(Key, DescDigest), Arc<str>>,
    /// Use counter: each lookup or insert takes the next tick.
    tick: u64,
    /// Statements used at or after this tick serve the current pipeline (since the last Sync
    /// sent) and are not evicted: closing one would close a portal bound to it.
    in_use_from: u64,
    /// The number in the next statement name.
    next: u64,
    /// Duplicates to close when the connection next serves a client (no portal uses them then).
    to_close: Vec<Arc<str>>,
    /// Statements prepared for clients' unnamed Parses (`pool.prepare_unnamed`), by a cheap
    /// digest of their text and types (the frontend compares the texts).
    shared: HashMap<u64, Shared>,
    /// Digests of unnamed Parses seen on this connection (the second one is prepared).
    seen: std::collections::HashSet<u64>,
    /// Whose statement the connection's unnamed statement is: (client id, the client's serial
    /// of that Parse); None when it is nobody's that rotagate can vouch for.
    pub unnamed: Option<(u64, u64)>,
    gauge: metrics::Gauge,
    /// `rotagate_statement_prepares_total` of the connection's database.
    prepares: metrics::Counter,
}

impl Default for Prepared {
    fn default() -> Self {
        Self {
            names: HashMap::new(),
            index: HashMap::new(),
            tick: 0,
            in_use_from: 0,
            next: 0,
            to_close: Vec::new(),
            shared: HashMap::new(),
            seen: std::collections::HashSet::new(),
            unnamed: None,
            gauge: metrics::Gauge::noop(),
            prepares: metrics::Counter::noop(),
        }
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
    /// Counts this connection's statements under its database (before any is prepared).
    pub fn count_for(&mut self, database: &str) {
        let db = database.to_owned();
        self.gauge = metrics::gauge!("rotagate_prepared_statements", "database" => db.clone());
        self.prepares = metrics::counter!("rotagate_statement_prepares_total", "database" => db);
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// What the connection knows of `name`.
    pub fn slot(&self, name: &str) -> Option<Slot> {
        self.names.get(name).copied()
    }

    /// A new statement of `key` is being prepared (a Parse is on its way): its name.
    pub fn fresh(&mut self, key: Key) -> Arc<str> {
        self.next += 1;
        self.tick += 1;
        let name: Arc<str> = format!("rotagate_{}", self.next).into();
        let slot = Slot {
            key,
            desc: None,
            born: now(),
            tick: self.tick,
        };
        self.names.insert(name.clone(), slot);
        self.gauge.increment(1.0);
        self.prepares.increment(1);
        name
    }

    /// The statement kept for `key` described as `desc`, prepared at `since` or later, marked
    /// used.
    pub fn find(&mut self, key: Key, desc: DescDigest, since: u64) -> Option<Arc<str>> {
        let name = self.index_of(key, desc, since)?.clone();
        self.touch(&name);
        Some(name)
    }

    /// The statement kept for `key` described as `desc`, prepared at `since` or later, not
    /// marked used.
    pub fn index_of(&self, key: Key, desc: DescDigest, since: u64) -> Option<&Arc<str>> {
        let name = self.index.get(&(key, desc))?;
        self.names
            .get(name)
            .is_some_and(|slot| slot.born >= since)
            .then_some(name)
    }

    /// Marks `name` used; false when the connection lacks it.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(slot) => {
                slot.tick = self.tick;
                true
            }
            None => false,
        }
    }

    /// The server described `name` as `desc`. It now stands for its key and description; the
    /// statement that did before is closed at the next hand-over. The newer one is kept because
    /// PostgreSQL does not invalidate a plan whose query refers to a type dropped and made again
    /// (only its parameter types show in a description): an older statement may fail where a
    /// newer one of the same description works. False when it replaced one.
    pub fn learned(&mut self, name: &Arc<str>, desc: DescDigest) -> bool {
        let Some(slot) = self.names.get_mut(name) else {
            return true;
        };
        slot.desc = Some(desc);
        match self.index.insert((slot.key, desc), name.clone()) {
            Some(older) if older != *name => {
                self.to_close.push(older);
                false
            }
            _ => true,
        }
    }

    /// Forgets `name` (its Parse failed, or it is being closed); what it was, to put it back.
    pub fn remove(&mut self, name: &str) -> Option<Slot> {
        let slot = self.names.remove(name)?;
        self.gauge.decrement(1.0);
        if let Some(desc) = slot.desc {
            if self
                .index
                .get(&(slot.key, desc))
                .is_some_and(|n| &**n == name)
            {
                self.index.remove(&(slot.key, desc));
            }
        }
        self.to_close.retain(|n| &**n != name);
        Some(slot)
    }

    /// Puts back what [`Prepared::remove`] took (a Close that the server skipped).
    pub fn restore(&mut self, name: Arc<str>, slot: Slot) {
        if let Some(desc) = slot.desc {
            self.index
                .entry((slot.key, desc))
                .or_insert_with(|| name.clone());
        }
        if self.names.insert(name, slot).is_none() {
            self.gauge.increment(1.0);
        }
    }

    /// `name` is of no use: it is closed at the next hand-over.
    pub fn discard(&mut self, name: &Arc<str>) {
        self.to_close.push(name.clone());
    }

    /// Duplicates to close now, with what they were (to put back if the Close is skipped).
    pub fn take_to_close(&mut self) -> Vec<(Arc<str>, Slot)> {
        let names = std::mem::take(&mut self.to_close);
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(slot) = self.names.remove(&name) {
                self.gauge.decrement(1.0);
                out.push((name, slot));
            }
        }
        out
    }

    /// Whether duplicates wait to be closed.
    pub fn has_to_close(&self) -> bool {
        !self.to_close.is_empty()
    }

    /// Every statement is gone (DISCARD ALL, DEALLOCATE ALL upstream).
    pub fn clear(&mut self) {
        self.take_all();
    }

    /// Every named statement is gone; returns them for [`Prepared::restore_all`].
    pub fn take_all(&mut self) -> Taken {
        self.gauge.decrement(self.names.len() as f64);
        self.index.clear();
        self.to_close.clear();
        Taken {
            names: std::mem::take(&mut self.names),
        }
    }

    /// Puts back what [`Prepared::take_all`] took (the statement that would drop them failed).
    pub fn restore_all(&mut self, taken: Taken) {
        for (name, slot) in taken.names {
            self.restore(name, slot);
        }
    }

    /// The statement prepared here for unnamed Parses of digest `key`, while the connection
    /// has it.
    pub fn shared(&self, key: u64) -> Option<&Shared> {
        let s = self.shared.get(&key)?;
        self.names.contains_key(&s.name).then_some(s)
    }

    /// `name` (just made with [`Prepared::fresh`]) serves unnamed Parses of `key`.
    /// Entries whose statement was closed since go once they outnumber the live ones.
    pub fn share(&mut self, key: u64, name: Arc<str>, stmt: Arc<dyn std::any::Any + Send + Sync>) {
        if self.shared.len() >= 2 * self.names.len().max(32) {
            let names = &self.names;
            self.shared.retain(|_, s| names.contains_key(&s.name));
        }
        self.shared.insert(key, Shared { name, stmt });
    }

    /// How many statements serve unnamed Parses (live or not yet forgotten).
    pub fn shared_len(&self) -> usize {
        self.shared.len()
    }

    /// `name` went stale (its plan must not change result type, or a type it uses is gone):
    /// it serves no more unnamed Parses and is closed at the next hand-over.
    pub fn unshare(&mut self, name: &Arc<str>) {
        let before = self.shared.len();
        self.shared.retain(|_, s| s.name != *name);
        if self.shared.len() != before && self.names.contains_key(name) {
            self.to_close.push(name.clone());
        }
    }

    /// Whether an unnamed Parse of `key` was seen here before (this one is remembered).
    pub fn seen(&mut self, key: u64) -> bool {
        if self.seen.len() >= MAX_SEEN && !self.seen.contains(&key) {
            self.seen.clear();
        }
        !self.seen.insert(key)
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
            .filter(|(_, s)| s.tick < self.in_use_from)
            .min_by_key(|(_, s)| s.tick)
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
        let a = p.fresh(1);
        let b = p.fresh(2);
        assert_eq!(p.victim(3), None);
        assert_eq!(p.victim(2), None, "both serve the current pipeline");
        p.new_pipeline();
        assert_eq!(p.victim(2).as_ref(), Some(&a));
        assert!(p.touch(&a));
        assert_eq!(p.victim(2).as_ref(), Some(&b));
        assert!(p.remove(&b).is_some());
        assert!(!p.touch(&b));
        assert_eq!(p.len(), 1);
        p.clear();
        assert!(p.is_empty());
    }

    #[test]
    fn one_statement_per_key_and_description_the_newest_and_the_rest_close_later() {
        let mut p = Prepared::default();
        let older = p.fresh(7);
        let newer = p.fresh(7);
        assert!(p.learned(&older, 100));
        assert!(!p.learned(&newer, 100), "the newer replaces the older");
        assert_eq!(p.find(7, 100, 0).as_ref(), Some(&newer));
        assert_eq!(
            p.find(7, 200, 0),
            None,
            "another description is another statement"
        );
        let closed: Vec<_> = p.take_to_close().into_iter().map(|(n, _)| n).collect();
        assert_eq!(closed, vec![older.clone()]);
        assert!(!p.contains(&older) && p.contains(&newer));
        let slot = p.remove(&newer).unwrap();
        assert_eq!(p.find(7, 100, 0), None);
        p.restore(newer.clone(), slot);
        assert_eq!(p.find(7, 100, 0).as_ref(), Some(&newer));
        let taken = p.take_all();
        assert!(p.is_empty() && p.find(7, 100, 0).is_none());
        p.restore_all(taken);
        assert_eq!(p.find(7, 100, 0), Some(newer));
    }

    #[test]
    fn statements_for_unnamed_parses_are_forgotten_once_closed() {
        let mut p = Prepared::default();
        for k in 0..1000u64 {
            let name = p.fresh(u128::from(k));
            p.share(k, name.clone(), Arc::new(k));
            assert!(p.shared(k).is_some());
            p.remove(&name);
            assert!(p.shared(k).is_none(), "closed: it serves no more");
        }
        assert!(p.shared_len() <= 64, "{} kept", p.shared_len());
        let name = p.fresh(7);
        p.share(7, name.clone(), Arc::new(7u64));
        p.unshare(&name);
        assert!(p.shared(7).is_none());
        assert_eq!(
            p.take_to_close().len(),
            1,
            "a stale one is closed at the next hand-over"
        );
    }

    #[test]
    fn a_statement_serves_only_clients_that_prepared_no_later_than_it() {
        let mut p = Prepared::default();
        let before = now();
        let name = p.fresh(7);
        let after = now();
        assert!(p.learned(&name, 100));
        assert_eq!(p.find(7, 100, before).as_ref(), Some(&name));
        assert_eq!(
            p.index_of(7, 100, after),
            None,
            "older than the client's Parse"
        );
        let newer = p.fresh(7);
        assert!(!p.learned(&newer, 100));
        assert_eq!(p.find(7, 100, after), Some(newer));
    }
}
