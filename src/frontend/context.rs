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
