//! What every client session shares: configuration, client auth, the pools and the registries.
//! Sessions depend on this and on their siblings, never on the accept loop above them.

use super::cancel::CancelRegistry;
use super::error::FrontendError;
use super::scram::ClientAuth;
use crate::backend::prepared::Known;
use crate::config::{ListenConfig, PoolMode};
use crate::pool::{PoolError, Pooled, Pools};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Everything a client session needs, shared by all sessions.
pub struct Frontend {
    pub listen: ListenConfig,
    /// Swapped whole on reload (SIGHUP); each login reads the current one.
    pub auth: arc_swap::ArcSwap<ClientAuth>,
    /// The databases clients may open, by name; swapped whole when SIGHUP adds or removes one.
    /// A session keeps the route it logged in with.
    pub routes: Arc<arc_swap::ArcSwap<Routes>>,
    /// `listen.max_clients`: one permit per authenticated session, across all workers.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// `listen.message_memory`, in KiB: what clients' messages held whole may take at once.
    pub message_budget: Arc<tokio::sync::Semaphore>,
    /// The unauthenticated connections (`listen.max_pending_auth`), across all workers.
    pub pending: Arc<super::pending::Pending>,
    pub cancels: Arc<CancelRegistry>,
    /// Swapped on reload, so renewed certificates apply to new connections.
    pub tls: arc_swap::ArcSwapOption<TlsAcceptor>,
    pub shutdown: CancellationToken,
    /// Equal session-setting lists shared, so hand-overs compare them in one step.
    pub lists: crate::backend::Interner,
    /// Numbers client sessions (a connection's unnamed statement is told apart by it).
    pub sessions: std::sync::atomic::AtomicU64,
    /// Sessions open per user, for `[[clients]] max_connections`.
    pub per_user: Arc<std::sync::Mutex<HashMap<String, u32>>>,
}

/// One session of a user counted against its `max_connections`; uncounted when dropped.
pub struct UserSlot {
    counts: Arc<std::sync::Mutex<HashMap<String, u32>>>,
    user: String,
}

impl Frontend {
    /// A slot for one more session of `user`, or None when its `[[clients]] max_connections`
    /// sessions are open already.
    pub fn user_slot(&self, user: &str) -> Option<UserSlot> {
        let cap = self.auth.load().cap(user);
        let mut counts = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(user.to_owned()).or_insert(0);
        if cap.is_some_and(|c| *n >= c) {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            counts: self.per_user.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// The databases clients may open, by the name they ask for.
pub type Routes = HashMap<String, Arc<Route>>;

/// One database as sessions see it.
pub struct Route {
    pub pools: Arc<Pools>,
    /// Its `pool.mode`, fixed for the route's life (a change makes a new route).
    pub mode: PoolMode,
    /// Statements known to prepare on its upstream (transaction mode).
    pub known: Known,
    /// `rotagate_transactions_total{database}`.
    pub transactions: metrics::Counter,
    /// How many of its clients are pinned (held to `pool.max_pinned`).
    pub pinned: Arc<std::sync::atomic::AtomicU32>,
    /// Its functions that share a built-in's name (see `transaction/allowlist.rs`).
    pub shadowed: Arc<super::transaction::allowlist::Shadowed>,
}

impl Route {
    pub fn new(pools: Arc<Pools>) -> Self {
        let database = pools.database().to_string();
        Self {
            mode: pools.config().mode,
            known: Known::default(),
            pools,
            transactions: metrics::counter!("rotagate_transactions_total", "database" => database),
            pinned: Arc::default(),
            shadowed: Arc::default(),
        }
    }
}

impl Route {
    /// An upstream connection from `worker`'s share of the pools (waiting up to
    /// `pool.acquire_timeout`).
    pub async fn acquire(&self, worker: usize) -> Result<Pooled, FrontendError> {
        self.pools.acquire(worker).await.map_err(|e| match e {
            PoolError::Timeout { waited, last } => FrontendError::PoolTimeout { waited, last },
            PoolError::Backend(e) => FrontendError::Upstream(e),
            PoolError::Closed => FrontendError::DatabaseRemoved(self.pools.database().to_string()),
        })
    }
}
