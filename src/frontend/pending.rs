//! Connections that have not authenticated yet, bounded by `listen.max_pending_auth`. A new
//! connection beyond the bound drops the oldest pending one, preferring one that has not sent
//! its startup packet: a flood of silent or dribbling sockets is pushed out by newer ones and
//! cannot hold a real client out, and a client that has said who it is outlives them.
//! Authenticated sessions are bounded separately, by `listen.max_clients`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The pending set, shared by the accept loop and every pending connection.
pub struct Pending {
    cap: usize,
    /// The gauge of this set's size, and the counter of its evictions.
    names: (&'static str, &'static str),
    inner: Mutex<Stages>,
}

#[derive(Default)]
struct Stages {
    next: u64,
    /// Accepted, no startup packet yet; by age.
    greeting: BTreeMap<u64, oneshot::Sender<()>>,
    /// Startup packet read, authenticating; by age.
    authenticating: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Stages {
    fn len(&self) -> usize {
        self.greeting.len() + self.authenticating.len()
    }
}

/// A connection's place in the pending set. Dropping it leaves the set.
pub struct Ticket {
    set: Arc<Pending>,
    id: u64,
}

/// Resolves when a newer connection has pushed this one out of the pending set.
pub struct Evicted(oneshot::Receiver<()>);

impl Evicted {
    pub async fn wait(&mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Pending {
    /// The client listener's set; its size is `rotagate_pending_auth_connections`.
    pub fn new(cap: usize) -> Arc<Self> {
        Self::named(
            cap,
            (
                "rotagate_pending_auth_connections",
                "rotagate_pending_auth_evicted_total",
            ),
        )
    }

    /// A set whose gauge and eviction counter have these names.
    pub fn named(cap: usize, names: (&'static str, &'static str)) -> Arc<Self> {
        Arc::new(Self {
            names,
            cap: cap.max(1),
            inner: Mutex::new(Stages::default()),
        })
    }

    /// Enters a new connection, first dropping the oldest one when the set is full.
    pub fn enter(self: &Arc<Self>) -> (Ticket, Evicted) {
        let (tx, rx) = oneshot::channel();
        let mut s = self.inner.lock().expect("pending lock");
        while s.len() >= self.cap {
            let oldest = match s.greeting.pop_first() {
                Some(e) => e,
                None => s
                    .authenticating
                    .pop_first()
                    .expect("a full set has an entry"),
            };
            // The receiver may be gone already; dropping the sender is the signal either way.
            drop(oldest);
            metrics::counter!(self.names.1).increment(1);
        }
        let id = s.next;
        s.next += 1;
        s.greeting.insert(id, tx);
        metrics::gauge!(self.names.0).set(s.len() as f64);
        drop(s);
        let ticket = Ticket {
            set: self.clone(),
            id,
        };
        (ticket, Evicted(rx))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("pending lock").len()
    }
}

impl Ticket {
    /// The startup packet (or a request) is in: this connection is now evicted only after every
    /// silent one.
    pub fn greeted(&self) {
        let mut s = self.set.inner.lock().expect("pending lock");
        if let Some(tx) = s.greeting.remove(&self.id) {
            s.authenticating.insert(self.id, tx);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.set.inner.lock().expect("pending lock");
        if s.greeting.remove(&self.id).is_none() {
            s.authenticating.remove(&self.id);
        }
        metrics::gauge!(self.set.names.0).set(s.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;
    use futures::FutureExt;

    #[test]
    fn the_oldest_silent_connection_goes_first() {
        let set = Pending::new(3);
        let (a, mut ae) = set.enter();
        let (b, mut be) = set.enter();
        let (c, mut ce) = set.enter();
        a.greeted();
        let _d = set.enter();
        assert_eq!(set.len(), 3);
        assert!(
            be.wait().now_or_never().is_some(),
            "b was the oldest silent one"
        );
        assert!(ae.wait().now_or_never().is_none(), "a greeted client stays");
        assert!(ce.wait().now_or_never().is_none());
        drop(b);
        assert_eq!(set.len(), 3, "an evicted ticket has left already");
        let _e = set.enter();
        assert!(ce.wait().now_or_never().is_some());
        assert!(ae.wait().now_or_never().is_none());
        drop(c);
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn greeted_connections_go_oldest_first_when_nothing_else_is_left() {
        let set = Pending::new(2);
        let (a, mut ae) = set.enter();
        let (b, _be) = set.enter();
        a.greeted();
        b.greeted();
        let _c = set.enter();
        assert!(ae.wait().now_or_never().is_some());
        drop(b);
        drop(a);
        assert_eq!(set.len(), 1);
    }
}
