//! One credential generation's connections: a LIFO stack of idle ones (the warmest is reused
//! first), a FIFO of clients waiting for one, and the count of connections open or opening.
//!
//! The hand-over is a lock, a pop and an unlock: no allocation, no timer, no channel. Only a
//! client that finds the stack empty allocates a waiter (a oneshot) and starts a timer; a
//! connection coming back goes straight to the first waiter, else onto the stack. Opening and
//! reaping connections happen in tasks of their own ([`super::connector`]).

use super::LastError;
use super::connector::Connector;
use super::shared::Shared;
use crate::backend::{ServerConn, UpstreamTarget};
use crate::secrets::Credentials;
use futures::FutureExt;
use futures::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
// tokio's clock, so that tests run the pool in paused time.
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// What a generation's connections are aged by (from `[pool]`), and this worker's share of
/// `min_idle`. `pool.size` is counted across workers ([`super::shared`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub min_idle: u32,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
}

pub(super) struct Idle {
    pub conn: Box<ServerConn>,
    pub since: Instant,
}

#[derive(Default)]
pub(super) struct Shelf {
    pub idle: Vec<Idle>,
    pub waiters: VecDeque<oneshot::Sender<Box<ServerConn>>>,
    /// Connections open (idle or in use) or being opened.
    pub open: u32,
}

/// One credential generation and its connections.
pub struct Generation {
    pub id: u64,
    pub creds: Arc<Credentials>,
    /// The server its connections log in to (a failover publishes a generation for another).
    pub target: Arc<UpstreamTarget>,
    pub(super) limits: Limits,
    pub(super) shared: Arc<Shared>,
    pub(super) shelf: Mutex<Shelf>,
    pub(super) connector: Arc<Connector>,
    /// Set when a newer generation is published: connections close as they come back.
    retired: AtomicBool,
    /// Set `pool.drain_timeout` after retirement: connections still in use close. The relays
    /// using this generation's connections are woken then.
    expired: AtomicBool,
    relays: Mutex<Vec<Arc<AtomicWaker>>>,
    /// Told when a retired generation's last connection has closed.
    gone: Notify,
    pub(super) last_error: Mutex<Option<LastError>>,
}

/// A checked-out connection; dropping it gives it back (or closes it when it is not clean).
pub struct Pooled {
    conn: Option<Box<ServerConn>>,
    home: Arc<Generation>,
}

impl Generation {
    pub(super) fn new(
        id: u64,
        (creds, target): (Arc<Credentials>, Arc<UpstreamTarget>),
        limits: Limits,
        shared: Arc<Shared>,
        connector: Arc<Connector>,
    ) -> Self {
        Self {
            id,
            creds,
            target,
            limits,
            shared,
            shelf: Mutex::new(Shelf::default()),
            connector,
            retired: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            relays: Mutex::new(Vec::new()),
            gone: Notify::new(),
            last_error: Mutex::new(None),
        }
    }

    pub(super) fn shelf(&self) -> MutexGuard<'_, Shelf> {
        self.shelf.lock().expect("pool shelf lock")
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Whether this generation's connections must close even in use.
    pub fn is_expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    /// Wakes `relay` when the generation expires, until [`Generation::unwatch`]. A relay
    /// registers its task's waker in `relay` at each poll (an atomic, no lock) and checks
    /// [`Generation::is_expired`] after it.
    pub fn watch(&self, relay: &Arc<AtomicWaker>) {
        self.relays.lock().expect("relays lock").push(relay.clone());
    }

    pub fn unwatch(&self, relay: &Arc<AtomicWaker>) {
        let mut relays = self.relays.lock().expect("relays lock");
        if let Some(i) = relays.iter().position(|r| Arc::ptr_eq(r, relay)) {
            relays.swap_remove(i);
        }
    }

    fn expire(&self) {
        self.expired.store(true, Ordering::Release);
        for relay in self.relays.lock().expect("relays lock").iter() {
            relay.wake();
        }
    }

    /// The server this generation logs in to may be gone or no longer the one to serve from
    /// (a connection lost, a login refused as "starting up", a read-only error): rotation is
    /// told, unless a newer generation already serves.
    pub fn doubt(&self) {
        if !self.is_retired() {
            self.connector.writer_doubt.notify_one();
        }
    }

    /// A server of this generation said it is read-only (25006): as [`Generation::doubt`],
    /// and the next search starts a new pool even on the same host name.
    pub fn doubt_read_only(&self) {
        if !self.is_retired() {
            let seen = &self.connector.read_only_seen;
            seen.store(true, std::sync::atomic::Ordering::Release);
        }
        self.doubt();
    }

    /// (open, idle) connections.
    pub fn counts(&self) -> (u32, u32) {
        let s = self.shelf();
        (s.open, s.idle.len() as u32)
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().expect("last_error lock").clone()
    }

    /// The warmest idle connection that is still alive; dead ones found on the way close.
    pub(super) fn take_idle(self: &Arc<Self>) -> Option<Pooled> {
        loop {
            let mut conn = self.shelf().idle.pop()?.conn;
            if alive(&mut conn) {
                return Some(Pooled::new(conn, self.clone()));
            }
            self.doubt();
            self.discard(conn);
        }
    }

    /// How many connections of this generation clients keep between messages.
    pub(super) fn kept_gauge(&self) -> &crate::backend::KeptGauge {
        &self.shared.kept
    }

    /// No connection here is idle, `pool.size` are open and every one of them waits on the
    /// client that keeps it (inside a transaction block, or pinned): a client would wait until
    /// one of those clients moves, not merely until a query in flight ends.
    pub fn saturated(&self) -> bool {
        self.shared.open() >= self.shared.size()
            && self.shared.all_kept()
            && self.shelf().idle.is_empty()
    }

    /// An idle connection, or a place in the queue. With room under `pool.size` a connection
    /// opens for the queued client; at the limit, another worker's idle connection is taken.
    /// `Err` when the generation is retired: look at the current one.
    pub(super) fn take_or_wait(
        self: &Arc<Self>,
    ) -> Result<Result<Pooled, oneshot::Receiver<Box<ServerConn>>>, ()> {
        if let Some(p) = self.take_idle() {
            return Ok(Ok(p));
        }
        let mut shelf = self.shelf();
        if self.is_retired() {
            return Err(());
        }
        let opening = self.shared.try_open();
        if opening {
            shelf.open += 1;
        }
        let (tx, rx) = oneshot::channel();
        self.prune(&mut shelf);
        shelf.waiters.push_back(tx);
        self.shared.waiting.fetch_add(1, Ordering::AcqRel);
        drop(shelf);
        if opening {
            self.connector.open(self.clone());
        } else if let Some(conn) = self.steal() {
            // Queued first, so a connection given back elsewhere meanwhile is offered here.
            self.put(conn);
        }
        Ok(Err(rx))
    }

    /// Whether a client is queued here.
    pub(super) fn has_waiters(&self) -> bool {
        let mut shelf = self.shelf();
        self.prune(&mut shelf);
        !shelf.waiters.is_empty()
    }

    /// Clears the places of clients that stopped waiting.
    fn prune(&self, shelf: &mut Shelf) {
        let before = shelf.waiters.len();
        shelf.waiters.retain(|w| !w.is_closed());
        let gone = (before - shelf.waiters.len()) as u32;
        if gone > 0 {
            self.shared.waiting.fetch_sub(gone, Ordering::AcqRel);
        }
    }

    /// Gives `conn` to the first client queued here that still waits.
    fn hand_over(
        &self,
        shelf: &mut Shelf,
        mut conn: Box<ServerConn>,
    ) -> Result<(), Box<ServerConn>> {
        while let Some(waiter) = shelf.waiters.pop_front() {
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
            match waiter.send(conn) {
                Ok(()) => return Ok(()),
                Err(back) => conn = back,
            }
        }
        Err(conn)
    }

    /// A connection comes back: to the first waiter here, else to a waiter on another worker,
    /// else onto the stack; closed when it is not clean, too old, or its generation is retired.
    pub(super) fn put(self: &Arc<Self>, mut conn: Box<ServerConn>) {
        let now = Instant::now();
        let too_old = now.saturating_duration_since(conn.created) >= self.limits.max_lifetime;
        if !reusable(&conn) || self.is_retired() || too_old {
            return self.discard(conn);
        }
        // A large reply (a 100 MB error message) grew the read buffer: an idle connection
        // gives that memory back (reusable: the buffer is empty).
        if conn.rbuf.capacity() > 64 * 1024 {
            conn.rbuf = bytes::BytesMut::with_capacity(8 * 1024);
        }
        let mut shelf = self.shelf();
        let Err(mut conn) = self.hand_over(&mut shelf, conn) else {
            return;
        };
        if self.shared.someone_waits() {
            drop(shelf);
            conn = match self.offer(conn) {
                Ok(()) => return,
                Err(back) => back,
            };
            shelf = self.shelf();
        }
        shelf.idle.push(Idle { conn, since: now });
    }

    /// Another worker takes this worker's warmest idle connection.
    pub(super) fn take_one_idle(&self) -> Option<Box<ServerConn>> {
        loop {
            let mut conn = {
                let mut shelf = self.shelf();
                let idle = shelf.idle.pop()?;
                shelf.open -= 1;
                idle.conn
            };
            if alive(&mut conn) {
                return Some(conn);
            }
            drop(conn);
            self.shared.closed(1);
        }
    }

    /// Another worker's connection, for a client queued here.
    pub(super) fn hand_to_waiter(&self, conn: Box<ServerConn>) -> Result<(), Box<ServerConn>> {
        let mut shelf = self.shelf();
        self.hand_over(&mut shelf, conn)?;
        shelf.open += 1;
        Ok(())
    }

    /// Opens a connection here if a client is queued here and `pool.size` has room.
    pub(super) fn open_for_waiter(self: &Arc<Self>) -> bool {
        let mut shelf = self.shelf();
        self.prune(&mut shelf);
        if self.is_retired() || shelf.waiters.is_empty() || !self.shared.try_open() {
            return false;
        }
        shelf.open += 1;
        drop(shelf);
        self.connector.open(self.clone());
        true
    }

    /// Gives a validated connection to the generation (the rotation engine's proof).
    pub(super) fn adopt(self: &Arc<Self>, mut conn: Box<ServerConn>) {
        if !self.shared.try_open() {
            return;
        }
        conn.kept.count_in(self.shared.kept.clone());
        self.shelf().open += 1;
        self.put(conn);
    }

    /// Closes a connection and frees its place: a waiter still queued gets a new connection
    /// opening for it; a retired generation's last connection tells [`Generation::gone`].
    pub(super) fn discard(self: &Arc<Self>, conn: Box<ServerConn>) {
        drop(conn);
        self.release_slot();
    }

    /// One open-or-opening connection fewer; its place goes to a client queued here, else to
    /// one queued on another worker.
    pub(super) fn release_slot(self: &Arc<Self>) {
        self.shared.closed(1);
        let mut shelf = self.shelf();
        shelf.open -= 1;
        let retired = self.is_retired();
        self.prune(&mut shelf);
        let reopen = !retired && !shelf.waiters.is_empty() && self.shared.try_open();
        if reopen {
            shelf.open += 1;
        }
        let empty = shelf.open == 0;
        drop(shelf);
        if reopen {
            self.connector.open(self.clone());
        } else if retired && empty {
            self.gone.notify_waiters();
        } else if !retired && self.shared.someone_waits() {
            self.reopen_elsewhere();
        }
    }

    /// A newer generation is published: idle connections close now, waiters move on (their
    /// receivers see the sender dropped), in-use ones close as they come back, and all of them
    /// at `drain`.
    pub(super) fn retire(self: &Arc<Self>, drain: Duration) {
        let (idle, waiters) = {
            let mut shelf = self.shelf();
            self.retired.store(true, Ordering::Release);
            let idle = std::mem::take(&mut shelf.idle);
            shelf.open -= idle.len() as u32;
            self.shared.closed(idle.len() as u32);
            let waiters = std::mem::take(&mut shelf.waiters);
            self.shared
                .waiting
                .fetch_sub(waiters.len() as u32, Ordering::AcqRel);
            (idle, waiters)
        };
        drop(waiters);
        drop(idle);
        if self.counts().0 == 0 {
            self.gone.notify_waiters();
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            if let Some(g) = me.upgrade() {
                g.expire();
            }
        });
    }

    /// Resolves once this retired generation has no connection left.
    pub async fn gone(&self) {
        loop {
            let notified = self.gone.notified();
            if self.is_retired() && self.counts().0 == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Closes idle connections past `idle_timeout` or `max_lifetime` (keeping `min_idle`);
    /// returns how many connections to open to get back to `min_idle`.
    pub(super) fn reap(self: &Arc<Self>) -> u32 {
        let (now, limits) = (Instant::now(), self.limits);
        let mut closed = Vec::new();
        let mut shelf = self.shelf();
        let mut spare = shelf.idle.len().saturating_sub(limits.min_idle as usize);
        // Bottom of the stack first: the coldest connections.
        for idle in std::mem::take(&mut shelf.idle) {
            let old = now.duration_since(idle.conn.created) >= limits.max_lifetime;
            let stale = spare > 0 && now.duration_since(idle.since) >= limits.idle_timeout;
            if old || stale {
                spare = spare.saturating_sub(1);
                closed.push(idle);
            } else {
                shelf.idle.push(idle);
            }
        }
        shelf.open -= closed.len() as u32;
        self.shared.closed(closed.len() as u32);
        let mut want = 0;
        if !self.is_retired() {
            let missing = limits.min_idle.saturating_sub(shelf.idle.len() as u32);
            while want < missing && self.shared.try_open() {
                want += 1;
            }
        }
        shelf.open += want;
        drop(shelf);
        drop(closed);
        want
    }
}

/// Nothing to read on an idle connection: data or EOF means the server closed it (restart,
/// idle timeout, termination). Tokio answers from its readiness flags, without a syscall,
/// unless the socket became readable.
fn alive(conn: &mut ServerConn) -> bool {
    if conn.broken {
        return false;
    }
    let mut probe = [0u8; 1];
    if conn.stream.read(&mut probe).now_or_never().is_some() {
        conn.broken = true;
        return false;
    }
    true
}

fn reusable(conn: &ServerConn) -> bool {
    !conn.broken && conn.tx_status == b'I' && conn.rbuf.is_empty()
}

impl Pooled {
    pub(super) fn new(conn: Box<ServerConn>, home: Arc<Generation>) -> Self {
        Self {
            conn: Some(conn),
            home,
        }
    }

    /// The generation this connection belongs to.
    pub fn generation(&self) -> &Arc<Generation> {
        &self.home
    }
}

impl std::ops::Deref for Pooled {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn
            .as_ref()
            .expect("a pooled connection is present until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("a pooled connection is present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.home.put(conn);
        }
    }
}
