//! The client side: accept, negotiate TLS, authenticate against the static `[[clients]]`, then
//! run a session that borrows upstream connections from the pool and relays frames. Never
//! opens an upstream connection itself except to forward a CancelRequest.

pub mod cancel;
pub mod classify;
pub mod error;
mod flow;
mod frames;
pub mod incoming;
mod lane;
mod local;
pub mod outgoing;
mod pins;
mod relay;
pub mod replies;
pub mod scram;
mod session;
pub mod settings;
pub mod startup;
pub mod statements;
mod transaction;
#[cfg(test)]
mod walk_tests;

use crate::config::{ListenConfig, PoolMode};
use crate::pool::Pools;
use bytes::BytesMut;
use cancel::CancelRegistry;
use error::FrontendError;
use scram::ClientAuth;
use startup::Hello;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything a client session needs, shared by all sessions.
pub struct Frontend {
    pub listen: ListenConfig,
    pub mode: PoolMode,
    pub database: String,
    /// Swapped whole on reload (SIGHUP); each login reads the current one.
    pub auth: arc_swap::ArcSwap<ClientAuth>,
    pub pools: Arc<Pools>,
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

/// Accepts clients until shutdown. Each connection runs as a tracked task.
pub async fn serve(listener: TcpListener, fe: Arc<Frontend>, tracker: TaskTracker) {
    let slots = Arc::new(Semaphore::new(fe.listen.max_clients));
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = fe.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, _)) => {
                backoff = Duration::from_millis(10);
                let permit = slots.clone().try_acquire_owned().ok();
                tracker.spawn(connection(tcp, fe.clone(), permit));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// One client connection from accept to close.
async fn connection(tcp: TcpStream, fe: Arc<Frontend>, permit: Option<OwnedSemaphorePermit>) {
    let deadline = tokio::time::Instant::now() + fe.listen.auth_timeout;
    let hello = match tokio::time::timeout_at(
        deadline,
        startup::hello(tcp, fe.tls.load_full().map(|t| (*t).clone())),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return tracing::debug!(error = %e, "client handshake failed"),
        Err(_) => return tracing::debug!("client handshake timed out"),
    };
    let mut login = match hello {
        Hello::Login(login) => login,
        Hello::Cancel { pid, key } => return forward_cancel(&fe, pid, key).await,
        Hello::Nothing => return,
    };
    let refusal = if permit.is_none() {
        Some(FrontendError::TooManyClients)
    } else if fe.listen.require_tls && !login.tls {
        Some(FrontendError::TlsRequired)
    } else {
        match tokio::time::timeout_at(
            deadline,
            startup::authenticate(&mut login, &fe.auth.load(), fe.listen.max_message_size),
        )
        .await
        {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(FrontendError::AuthTimeout),
        }
    };
    if let Some(e) = refusal {
        tracing::info!(user = ?login.user, peer = %login.peer, error = %e, "client login refused");
        return report(&mut login.stream, &e).await;
    }
    metrics::gauge!("rotagate_client_connections").increment(1.0);
    session::serve(login, &fe).await;
    metrics::gauge!("rotagate_client_connections").decrement(1.0);
    drop(permit);
}

/// Sends a FATAL ErrorResponse the client can show, then closes.
async fn report(stream: &mut startup::ClientStream, e: &FrontendError) {
    if !e.can_reply() {
        return;
    }
    let mut out = BytesMut::new();
    crate::wire::msg::error(&mut out, "FATAL", e.sqlstate(), &e.client_text());
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

async fn forward_cancel(fe: &Frontend, pid: i32, key: i32) {
    let Some(slot) = fe.cancels.lookup(pid, key) else {
        return tracing::debug!("cancel request for no connected client");
    };
    let Some((upid, ukey)) = slot.begin() else {
        return tracing::debug!("cancel request for a client that holds no upstream connection");
    };
    // The client's connection is not handed on until this is done, even if this task is
    // dropped on the way.
    struct Finished<'a>(&'a cancel::CancelSlot);
    impl Drop for Finished<'_> {
        fn drop(&mut self) {
            self.0.finished();
        }
    }
    let _finished = Finished(&slot);
    if let Err(e) = crate::backend::cancel(fe.pools.target(), upid, ukey).await {
        tracing::warn!(error = %e, "forwarding a cancel request failed");
    }
}
