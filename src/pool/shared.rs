//! What the workers' objects of one generation share: `pool.size`, counted across workers, and
//! the number of clients queued anywhere. A worker opens a connection only while the total is
//! below `pool.size`; at the limit it takes an idle connection from another worker, and a
//! connection given back where nobody waits goes to a worker where someone does. So a client is
//! never stuck behind its own worker's share while another worker has connections to spare.
//! The common hand-over touches none of this beyond one atomic load.

use super::generation::Generation;
use crate::backend::ServerConn;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};

pub(super) struct Shared {
    size: u32,
    /// Connections open or opening, on every worker.
    open: AtomicU32,
    /// Clients queued, on every worker (a hint: a queued client that gave up still counts until
    /// its place is cleared).
    pub waiting: AtomicU32,
    /// Connections a client keeps between its messages (in a transaction block, or pinned),
    /// on every worker; each connection counts itself ([`crate::backend::Kept`]).
    pub kept: Arc<crate::backend::KeptGauge>,
    /// Every worker's object of this generation, set once they all exist.
    siblings: OnceLock<Vec<Weak<Generation>>>,
}

impl Shared {
    pub fn new(size: u32) -> Self {
        Self {
            size,
            open: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            kept: Arc::default(),
            siblings: OnceLock::new(),
        }
    }

    pub fn set_siblings(&self, all: &[Arc<Generation>]) {
        let _ = self.siblings.set(all.iter().map(Arc::downgrade).collect());
    }

    /// Counts one more connection if `pool.size` allows it.
    pub fn try_open(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.size).then_some(n + 1)
            })
            .is_ok()
    }

    /// Connections open or opening on every worker (exact, unlike a sum of the workers' counts
    /// read one after another while connections move between them).
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// `pool.size`.
    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn closed(&self, n: u32) {
        self.open.fetch_sub(n, Ordering::AcqRel);
    }

    /// Whether every connection open (at `pool.size`) waits on its client.
    pub fn all_kept(&self) -> bool {
        self.kept.get() >= self.open()
    }

    pub fn someone_waits(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    fn others<'a>(&'a self, me: &'a Generation) -> impl Iterator<Item = Arc<Generation>> + 'a {
        self.siblings
            .get()
            .into_iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .filter(move |g| !std::ptr::eq(g.as_ref(), me))
    }
}

impl Generation {
    /// An idle connection of another worker, moved to this one (its socket stays registered
    /// with the other worker's event loop, which still delivers its readiness).
    pub(super) fn steal(self: &Arc<Self>) -> Option<Box<ServerConn>> {
        for other in self.shared.others(self) {
            let Some(idle) = other.take_one_idle() else {
                continue;
            };
            self.shelf().open += 1;
            return Some(idle);
        }
        None
    }

    /// Hands `conn` to a client queued on another worker; gives it back when none takes it.
    pub(super) fn offer(
        self: &Arc<Self>,
        mut conn: Box<ServerConn>,
    ) -> Result<(), Box<ServerConn>> {
        for other in self.shared.others(self) {
            match other.hand_to_waiter(conn) {
                Ok(()) => {
                    self.shelf().open -= 1;
                    return Ok(());
                }
                Err(back) => conn = back,
            }
        }
        Err(conn)
    }

    /// A place freed here: open a connection on a worker where a client waits.
    pub(super) fn reopen_elsewhere(self: &Arc<Self>) {
        for other in self.shared.others(self) {
            if other.open_for_waiter() {
                return;
            }
        }
    }
}
