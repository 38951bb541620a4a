//! Connections that have not authenticated yet, bounded by `listen.max_pending_auth`. A new
//! connection beyond the bound drops the pending connection that has waited longest since its
//! last step. The steps are its arrival, a TLS request, the startup packet and each SASL
//! message: a real client takes its steps within round trips, while a flood connection stalls
//! (silent, dribbling bytes, or after its startup packet), so a flood is pushed out by newer
//! connections and cannot hold a real client out, even one in the middle of its TLS handshake
//! (counted from its TLS request). Authenticated sessions are bounded separately, by
//! `listen.max_clients`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The pending set, shared by the accept loop and every pending connection.
pub struct Pending {
    cap: usize,
    /// The gauge of this set's size, and the counter of its evictions.
    names: (&'static str, &'static str),
    inner: Mutex<Steps>,
}

/// Each connection by the number of its last step (numbers are taken in order).
#[derive(Default)]
struct Steps {
    last: u64,
    by_step: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Steps {
    fn take_next(&mut self) -> u64 {
        self.last += 1;
        self.last
    }
}

/// A connection's place in the pending set. Dropping it leaves the set.
pub struct Ticket {
    set: Arc<Pending>,
    /// The number of its last step: its key in the set.
    key: AtomicU64,
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
            inner: Mutex::new(Steps::default()),
        })
    }

    /// Enters a new connection (its arrival is its first step), first dropping the one longest
    /// without a step when the set is full.
    pub fn enter(self: &Arc<Self>) -> (Ticket, Evicted) {
        let (tx, rx) = oneshot::channel();
        let mut s = self.inner.lock().expect("pending lock");
        while s.by_step.len() >= self.cap {
            // The receiver may be gone already; dropping the sender is the signal either way.
            drop(s.by_step.pop_first());
            metrics::counter!(self.names.1).increment(1);
        }
        let key = s.take_next();
        s.by_step.insert(key, tx);
        metrics::gauge!(self.names.0).set(s.by_step.len() as f64);
        drop(s);
        let ticket = Ticket {
            set: self.clone(),
            key: AtomicU64::new(key),
        };
        (ticket, Evicted(rx))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("pending lock").by_step.len()
    }
}

impl Ticket {
    /// The connection took a step (a TLS request, its startup packet, a SASL message, an HTTP
    /// request): it is now dropped only after every connection whose last step is older.
    pub fn progress(&self) {
        let mut s = self.set.inner.lock().expect("pending lock");
        let Some(tx) = s.by_step.remove(&self.key.load(Ordering::Relaxed)) else {
            return; // pushed out already
        };
        let next = s.take_next();
        s.by_step.insert(next, tx);
        self.key.store(next, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.set.inner.lock().expect("pending lock");
        s.by_step.remove(&self.key.load(Ordering::Relaxed));
        metrics::gauge!(self.set.names.0).set(s.by_step.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;
    use futures::FutureExt;

    #[test]
    fn the_connection_longest_without_a_step_goes_first() {
        let set = Pending::new(3);
        let (a, mut ae) = set.enter();
        let (b, mut be) = set.enter();
        let (c, mut ce) = set.enter();
        a.progress();
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
    fn connections_that_stepped_go_by_their_last_step() {
        let set = Pending::new(2);
        let (a, mut ae) = set.enter();
        let (b, _be) = set.enter();
        a.progress();
        b.progress();
        let _c = set.enter();
        assert!(ae.wait().now_or_never().is_some());
        drop(b);
        drop(a);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn a_client_in_its_handshake_outlives_connections_that_stalled_before_it() {
        let set = Pending::new(3);
        let (real, mut real_out) = set.enter();
        let (flood1, mut flood1_out) = set.enter();
        let (flood2, _f2) = set.enter();
        // The real client asked for TLS first; the flood then sent its startup packets.
        real.progress();
        flood1.progress();
        flood2.progress();
        // The real client's handshake is done and it sends its first SASL message.
        real.progress();
        let _newcomer = set.enter();
        assert!(
            flood1_out.wait().now_or_never().is_some(),
            "the stalled one goes"
        );
        assert!(
            real_out.wait().now_or_never().is_none(),
            "the stepping one stays"
        );
        drop(flood1);
        drop((real, flood2));
        assert_eq!(set.len(), 1);
    }
}
