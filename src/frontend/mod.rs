//! The client side: accept, negotiate TLS, authenticate against the static `[[clients]]`, then
//! run a session that borrows upstream connections from the pool and relays frames. Never
//! opens an upstream connection itself except to forward a CancelRequest.

pub mod cancel;
mod context;
pub mod error;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod pending;
pub mod relay;
pub mod scram;
mod session;
pub mod startup;
pub mod stream;
pub mod transaction;

pub use context::{Frontend, Route, Routes};
pub(crate) use error::report;

use error::FrontendError;
use pending::Ticket;
use startup::Hello;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

/// Accepts clients for `worker` until shutdown. Each connection runs as a tracked task on the
/// worker's event loop and takes upstream connections from the worker's share of the pools.
pub async fn serve(listener: TcpListener, fe: Arc<Frontend>, tracker: TaskTracker, worker: usize) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = fe.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, _)) => {
                backoff = Duration::from_millis(10);
                // Replies go out as they come: with Nagle's algorithm a small write waits for
                // the client's (delayed) ACK of the one before (notices, a reply in parts).
                let _ = tcp.set_nodelay(true);
                metrics::counter!("rotagate_client_connections_accepted_total", "worker" => worker.to_string())
                    .increment(1);
                let ticket = fe.pending.enter();
                tracker.spawn(connection(tcp, fe.clone(), worker, ticket));
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

/// One client connection from accept to close. It holds a place in the pending set until it
/// has authenticated, and a `max_clients` slot only after that.
async fn connection(
    tcp: TcpStream,
    fe: Arc<Frontend>,
    worker: usize,
    (ticket, mut evicted): (Ticket, pending::Evicted),
) {
    let login = tokio::select! {
        biased;
        _ = evicted.wait() => {
            return tracing::debug!("pending connection dropped for a newer one (listen.max_pending_auth)");
        }
        login = pre_auth(tcp, &fe, &ticket) => login,
    };
    drop(ticket);
    let Some(mut login) = login else { return };
    let Ok(permit) = fe.slots.clone().try_acquire_owned() else {
        tracing::info!(user = ?login.user, peer = %login.peer, "client refused: listen.max_clients sessions are open");
        return report(&mut login.stream, &FrontendError::TooManyClients).await;
    };
    let Some(user_slot) = fe.user_slot(&login.user) else {
        tracing::info!(user = ?login.user, peer = %login.peer, "client refused: its [[clients]] max_connections sessions are open");
        metrics::counter!("rotagate_clients_refused_total", "reason" => "max_connections")
            .increment(1);
        let e = FrontendError::TooManyForUser(login.user.clone());
        return report(&mut login.stream, &e).await;
    };
    metrics::gauge!("rotagate_client_connections").increment(1.0);
    session::serve(login, &fe, worker).await;
    drop(user_slot);
    metrics::gauge!("rotagate_client_connections").decrement(1.0);
    drop(permit);
}

/// TLS, the startup packet (within `listen.startup_timeout`) and authentication (within
/// `listen.auth_timeout`, both from accept). None when the connection ended here: it was a
/// cancel request, it closed, or it was refused (and told why when it can be).
async fn pre_auth(tcp: TcpStream, fe: &Frontend, ticket: &Ticket) -> Option<startup::Login> {
    let accepted = tokio::time::Instant::now();
    let startup_deadline = accepted + fe.listen.startup_timeout.min(fe.listen.auth_timeout);
    let auth_deadline = accepted + fe.listen.auth_timeout;
    // Nothing is allocated for a connection before its first byte.
    let first = tokio::time::timeout_at(startup_deadline, tcp.peek(&mut [0u8; 1])).await;
    if !matches!(first, Ok(Ok(1..))) {
        return None;
    }
    if asks_for_tls(&tcp).await {
        ticket.progress();
    }
    let tls = fe.tls.load_full().map(|t| (*t).clone());
    let hello = tokio::time::timeout_at(startup_deadline, startup::hello(tcp, tls)).await;
    let mut login = match hello {
        Ok(Ok(Hello::Login(login))) => login,
        Ok(Ok(Hello::Cancel { pid, key })) => {
            forward_cancel(fe, pid, key).await;
            return None;
        }
        Ok(Ok(Hello::Nothing)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "client handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!("client startup timed out (listen.startup_timeout)");
            return None;
        }
    };
    ticket.progress();
    let refusal = if fe.listen.require_tls && !login.tls {
        Some(FrontendError::TlsRequired)
    } else {
        let users = fe.auth.load();
        let step = || ticket.progress();
        let auth = startup::authenticate(&mut login, &users, fe.listen.max_message_size, &step);
        match tokio::time::timeout_at(auth_deadline, auth).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(FrontendError::AuthTimeout),
        }
    };
    if let Some(e) = refusal {
        tracing::info!(user = ?login.user, peer = %login.peer, error = %e, "client login refused");
        report(&mut login.stream, &e).await;
        return None;
    }
    Some(login)
}

/// The bytes in are a whole SSLRequest, or the start of a direct TLS handshake: the client is
/// taking a step (see `pending.rs`). Looks without reading.
async fn asks_for_tls(tcp: &TcpStream) -> bool {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut head = [0u8; 8];
    match tcp.peek(&mut head).await {
        Ok(n) if n >= 1 && head[0] == 0x16 => true,
        Ok(8) => head == SSL_REQUEST,
        _ => false,
    }
}

/// Sends a FATAL ErrorResponse the client can show, then closes.
async fn forward_cancel(fe: &Frontend, pid: i32, key: i32) {
    let Some(slot) = fe.cancels.lookup(pid, key) else {
        return tracing::debug!("cancel request for no connected client");
    };
    let Some(upstream) = slot.upstream() else {
        return tracing::debug!("cancel request for a client with no upstream");
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
    if let Err(e) = crate::backend::cancel(&upstream, upid, ukey).await {
        tracing::warn!(error = %e, "forwarding a cancel request failed");
    }
}
