//! What every client session shares: configuration, client auth, the pools and the registries.
//! Sessions depend on this and on their siblings, never on the accept loop above them.

use super::cancel::CancelRegistry;
use super::scram::ClientAuth;
use crate::config::{ListenConfig, PoolMode};
use crate::pool::Pools;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Everything a client session needs, shared by all sessions.
pub struct Frontend {
    pub listen: ListenConfig,
    pub mode: PoolMode,
    pub database: String,
    /// Swapped whole on reload (SIGHUP); each login reads the current one.
    pub auth: arc_swap::ArcSwap<ClientAuth>,
    pub pools: Arc<Pools>,
    /// `listen.max_clients`: one permit per authenticated session, across all workers.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// The unauthenticated connections (`listen.max_pending_auth`), across all workers.
    pub pending: Arc<super::pending::Pending>,
    pub cancels: Arc<CancelRegistry>,
    /// Swapped on reload, so renewed certificates apply to new connections.
    pub tls: arc_swap::ArcSwapOption<TlsAcceptor>,
    pub shutdown: CancellationToken,
    pub transactions: metrics::Counter,
    /// Statements known to prepare upstream (transaction mode).
    pub known: crate::backend::prepared::Known,
    /// Equal session-setting lists shared, so hand-overs compare them in one step.
    pub lists: crate::backend::Interner,
}
