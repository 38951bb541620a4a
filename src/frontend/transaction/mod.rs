//! Transaction mode: a client holds an upstream connection from its first message to the end
//! of its transaction, and only then, at rest, gives it back. Each hand-over:
//!
//! 1. wait, holding nothing, until the client has sent a whole message that needs the server
//!    (what rotagate answers itself is answered here: [`super::local`]);
//! 2. acquire a connection (a cancel from the client ends the wait with 57014);
//! 3. bring the connection to the client's settings (one query, none when they match);
//! 4. relay until the transaction ends; a pinned client keeps relaying until it leaves;
//! 5. if the transaction may have changed settings, read them back (one query);
//! 6. wait until no cancel for this client is on its way, then give the connection back.
//!
//! When the upstream connection goes mid-transaction, the client gets an error for the
//! transaction in flight and its session goes on; a pinned client's session ends with it.
//! When no connection can be had for a transaction, that request fails and the session goes on.

pub mod allowlist;
mod atrest;
pub mod checks;
pub mod class;
pub mod classify;
mod errnames;
pub mod flow;
pub mod incoming;
pub mod lexed;
pub mod lexer;
mod local;
pub mod named;
pub mod outgoing;
pub mod pins;
pub mod policy;
pub mod quick;
pub mod replies;
pub mod settings;
pub mod shared;
pub mod sqlnames;
pub mod stale;
pub mod statements;
pub mod tx;
pub mod unnamed;
pub mod view;
#[cfg(test)]
mod walk_tests;

use super::cancel::CancelKey;
use super::context::{Frontend, Route};
use super::error::FrontendError;
use super::error::wire_io;
use super::relay::limits::{Limits, Wait, timed_out};
use super::relay::side::ClientSide;
use super::relay::{End, close, relay};
use crate::backend::query;
use crate::pool::Pooled;
use crate::wire::msg;
use bytes::{Bytes, BytesMut};
use flow::{ClientState, Flow};
use local::Next;
use policy::Transaction;
use settings::{apply, fits};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn serve(
    client: &mut ClientSide,
    state: &mut ClientState,
    cancel: &CancelKey,
    fe: &Frontend,
    route: &Arc<Route>,
) -> Result<(), FrontendError> {
    let mut route = route.clone();
    let mut flow = Flow::default();
    // One shutdown watch for the whole session, not one per transaction.
    let mut stop = std::pin::pin!(fe.shutdown.cancelled());
    // The connection of a client the check after its transaction pinned: kept for it.
    let mut held: Option<Pooled> = None;
    loop {
        // Each turn is a transaction; other tasks get their turn between them too.
        tokio::task::consume_budget().await;
        let mut server = match held.take() {
            Some(server) => server,
            None => {
                if !wait_for_request(client, state, fe, &route, stop.as_mut()).await? {
                    return Ok(());
                }
                match ready_connection(client, state, cancel, fe, &mut route).await? {
                    Some(server) => server,
                    None => continue,
                }
            }
        };
        cancel.slot.attach(server.pid, server.key);
        cancel.slot.aim(&server.generation().target);
        let cfg = route.pools.config();
        flow.reset();
        let mut tx = Transaction {
            state,
            flow: &mut flow,
            cfg: &cfg,
            max_client_message: fe.listen.max_message_size,
            transactions: &route.transactions,
            known: &route.known,
        };
        let limits = Limits {
            idle_in_transaction: cfg.idle_transaction_timeout,
            client_idle: fe.listen.client_idle_timeout,
            query: cfg.query_timeout,
        };
        let end = relay(client, &mut server, &mut tx, &fe.shutdown, limits).await;
        if !cancel.slot.release() {
            cancel.slot.wait_cancels().await;
        }
        let end = end?;
        if !ended(client, state, &mut server, &mut flow, fe, &route, end).await? {
            return Ok(());
        }
        if state.pins.is_pinned() && !server.broken {
            held = Some(server);
        }
    }
}

/// A connection brought to the client's settings, or None when this request got its answer
/// already (an error, the session goes on) or must start over (on a replacement route, or
/// because the connection was lost before the request went out: the request is still in the
/// client's buffer, and the next connection takes it).
async fn ready_connection(
    client: &ClientSide,
    state: &mut ClientState,
    cancel: &CancelKey,
    fe: &Frontend,
    route: &mut Arc<Route>,
) -> Result<Option<Pooled>, FrontendError> {
    let mut server = match acquire_or_cancel(client, state, cancel, route).await {
        Waited::Got(Ok(server)) => server,
        Waited::Canceled => {
            state.failure = Some(error("57014", "canceling statement due to user request"));
            return Ok(None);
        }
        // No connection for this transaction (the upstream refuses, is unreachable or the
        // pool stayed full): the request fails and the session goes on, so the client's next
        // transaction tries again. A database replaced on reload serves the request from its
        // new pools; a removed one ends the session.
        Waited::Stuck => return Ok(None),
        Waited::Got(Err(FrontendError::DatabaseRemoved(name))) => {
            *route = replacement(fe, route, name)?;
            return Ok(None);
        }
        Waited::Got(Err(e)) => {
            tracing::warn!(error = %e, "no upstream connection for a client's transaction");
            state.failure = Some(error(e.sqlstate(), &e.client_text()));
            return Ok(None);
        }
    };
    // Usually nothing to do: checked before any future is built (this runs per transaction).
    let applied = if state.settings.list == server.params.session && !server.prepared.has_to_close()
    {
        Ok(())
    } else {
        match apply(&state.settings, &mut server).await {
            Ok(()) => close_duplicates(&mut server).await,
            Err(e) => Err(e),
        }
    };
    match applied {
        Ok(()) => {
            if route.shadowed.claim() {
                read_shadowed(route, &mut server).await;
            }
            Ok(Some(server))
        }
        // Lost before the client's request went out (a failover).
        Err(FrontendError::UpstreamLost) => {
            server.generation().doubt();
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Reads which of the database's functions share a built-in's name, when the route's list is
/// due (see `allowlist.rs`; the caller claimed the reading). A failure leaves the old list (and
/// is read again next time).
async fn read_shadowed(route: &Route, server: &mut Pooled) {
    match query::rows(server, allowlist::SHADOW_SQL).await {
        Ok(rows) => {
            let list = rows
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().nth(1).flatten());
            route.shadowed.set(list.as_deref().unwrap_or(""));
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the database's functions that share a built-in's name");
            route.shadowed.retry();
        }
    }
}

/// Closes the statements that turned out to duplicate others (they are closed at rest, never
/// inside a transaction, where a portal made from one may be open). A failure closes the
/// connection.
async fn close_duplicates(server: &mut Pooled) -> Result<(), FrontendError> {
    if !server.prepared.has_to_close() {
        return Ok(());
    }
    let names: Vec<_> = server
        .prepared
        .take_to_close()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if let Err(e) = query::close_statements(server, &names).await {
        close(server, "reset_failed");
        return Err(if server.broken && e.code().is_none() {
            FrontendError::UpstreamLost
        } else {
            FrontendError::Upstream(e)
        });
    }
    Ok(())
}

/// After the relay: the connection goes back, or the transaction it carried fails and the
/// session goes on. False when the client left; an error when the session ends.
async fn ended(
    client: &mut ClientSide,
    state: &mut ClientState,
    server: &mut Pooled,
    flow: &mut Flow,
    fe: &Frontend,
    route: &Route,
    end: End,
) -> Result<bool, FrontendError> {
    let pinned = state.pins.is_pinned();
    match end {
        End::Released => {
            if flow.reread {
                atrest::check(state, server, &fe.lists, &route.pools.config()).await?;
            }
            client.budget.release(&mut client.buf);
        }
        End::ClientGone => return Ok(false),
        End::Shutdown => return Err(FrontendError::Shutdown),
        End::ClientIdle => return Err(timed_out(Wait::Client, route.pools.database())),
        End::IdleInTransaction => {
            roll_back(server, flow, pinned).await;
            return Err(timed_out(Wait::InTransaction, route.pools.database()));
        }
        End::Retired if pinned => return Err(FrontendError::Retired),
        End::ServerGone(Some(_)) if pinned => return Err(FrontendError::Reported),
        End::ServerGone(None) if pinned => return Err(FrontendError::UpstreamLost),
        End::Retired => lost(client, state, server, flow, &route.known, retired_error()).await?,
        End::ServerGone(fatal) => {
            tracing::warn!("upstream connection lost in the middle of a client's transaction");
            let e = match fatal {
                Some(body) => {
                    let mut b = BytesMut::new();
                    msg::error_with_severity(&mut b, &body, "ERROR");
                    b.freeze()
                }
                None => error("08006", "server closed the connection unexpectedly"),
            };
            lost(client, state, server, flow, &route.known, e).await?;
        }
    }
    Ok(true)
}

/// A client silent inside its transaction past `pool.idle_transaction_timeout`: the
/// transaction is rolled back and the connection goes back at rest. A pinned client's
/// connection, or one with extended messages not yet synced (a Sync would commit them), is
/// closed instead.
async fn roll_back(server: &mut Pooled, flow: &Flow, pinned: bool) {
    if pinned || flow.unsynced || !flow.replies.is_empty() {
        close(server, "idle_in_transaction");
        return;
    }
    if query::simple(server, "ROLLBACK").await.is_err() || server.tx_status != b'I' {
        close(server, "idle_in_transaction");
    }
}

/// The route now serving `name`, when SIGHUP replaced the session's one (its upstream or
/// credentials changed); the session carries on there. An error when the database was
/// removed, or now runs in session mode (the client reconnects into it).
fn replacement(fe: &Frontend, old: &Arc<Route>, name: String) -> Result<Arc<Route>, FrontendError> {
    match fe.routes.load().get(&name) {
        Some(next) if !Arc::ptr_eq(next, old) && next.mode == old.mode => Ok(next.clone()),
        _ => Err(FrontendError::DatabaseRemoved(name)),
    }
}

fn error(code: &str, message: &str) -> Bytes {
    let mut b = BytesMut::new();
    msg::error(&mut b, "ERROR", code, message);
    b.freeze()
}

fn retired_error() -> Bytes {
    error(
        "57P01",
        "terminating the transaction: its upstream connection's credential was retired and \
         pool.drain_timeout has passed",
    )
}

/// The connection went under a transaction: what the server had sent goes to the client, then
/// the errors owed. A reply cut in half cannot be finished: then the client's session ends.
async fn lost(
    client: &mut ClientSide,
    state: &mut ClientState,
    server: &mut Pooled,
    flow: &mut Flow,
    known: &crate::backend::prepared::Known,
    e: Bytes,
) -> Result<(), FrontendError> {
    close(server, "server_lost");
    if !client.down.at_boundary() {
        return Err(FrontendError::UpstreamLost);
    }
    let (a, b) = client.down.slices(&server.rbuf);
    let mut out = BytesMut::from(a);
    out.extend_from_slice(b);
    client.down.abandon(&mut server.rbuf);
    local::fail_in_flight(client, state, server, flow, known, e, &mut out);
    client.stream.write_all(&out).await.map_err(wire_io)?;
    client.stream.flush().await.map_err(wire_io)
}

/// A connection, unless a cancel from the client ended the wait or the client's Parse can be
/// answered without one. A connection that is there at once needs no cancel watch.
async fn acquire_or_cancel(
    client: &ClientSide,
    state: &ClientState,
    cancel: &CancelKey,
    route: &Route,
) -> Waited {
    use futures::FutureExt;
    let mut acquiring = std::pin::pin!(acquire_fitting(client, state, route));
    if let Some(r) = acquiring.as_mut().now_or_never() {
        return Waited::Got(r);
    }
    if !local::parse_first(&client.buf, state, &route.known) {
        return cancel
            .slot
            .cancellable(acquiring)
            .await
            .map_or(Waited::Canceled, Waited::Got);
    }
    // A Parse rotagate answers once every connection is kept by its client: the wait ends
    // then, and the Parse is answered (a client that prepares with a blocking call while
    // another client on its thread keeps a connection in a transaction must not hang).
    tokio::select! {
        r = cancel.slot.cancellable(acquiring) => r.map_or(Waited::Canceled, Waited::Got),
        () = route.pools.stuck(client.worker) => Waited::Stuck,
    }
}

/// How a wait for a connection ended.
enum Waited {
    Got(Result<Pooled, FrontendError>),
    /// A cancel from the client.
    Canceled,
    /// Every connection is kept by its client, and the client's Parse can be answered now.
    Stuck,
}

/// A connection this client may use: one holding a custom-setting placeholder the client never
/// made is closed (only a new session is rid of it) and another is taken.
async fn acquire_fitting(
    client: &ClientSide,
    state: &ClientState,
    route: &Route,
) -> Result<Pooled, FrontendError> {
    loop {
        let mut server = route.acquire(client.worker).await?;
        if fits(&server.params.placeholders, &state.settings.list) {
            return Ok(server);
        }
        close(&mut server, "placeholder");
    }
}

/// Waits, holding no upstream connection, until the client's next message needs one,
/// answering what rotagate answers itself. False when the client left; an error when
/// shutdown came first.
async fn wait_for_request(
    client: &mut ClientSide,
    state: &mut ClientState,
    fe: &Frontend,
    route: &Route,
    mut stop: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
) -> Result<bool, FrontendError> {
    let mut out = BytesMut::new();
    loop {
        let busy = || route.pools.saturated(client.worker).then_some(&route.known);
        let limits = local::Limits {
            max_message: fe.listen.max_message_size,
            statement_bytes: route.pools.config().max_client_statement_bytes,
            busy: &busy,
        };
        let next = local::answer(&mut client.buf, state, &limits, &mut out)?;
        if !out.is_empty() {
            client.stream.write_all(&out).await.map_err(wire_io)?;
            client.stream.flush().await.map_err(wire_io)?;
            out.clear();
        }
        let want = match next {
            Next::Connect => return Ok(true),
            Next::Terminate => return Ok(false),
            Next::Read(n) => n,
        };
        if want > 0 {
            // A large message waits for its share of listen.message_memory first.
            tokio::select! {
                biased;
                () = client.budget.room(client.buf.len() + want) => {}
                _ = stop.as_mut() => return Err(FrontendError::Shutdown),
            }
            client.buf.reserve(want);
        }
        let idle = fe.listen.client_idle_timeout;
        tokio::select! {
            // In order: no random start (and no thread-local RNG) per request.
            biased;
            r = client.stream.read_buf(&mut client.buf) => match r {
                Ok(0) | Err(_) => return Ok(false),
                Ok(_) => {}
            },
            _ = stop.as_mut() => return Err(FrontendError::Shutdown),
            () = async { match idle {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            } } => return Err(timed_out(Wait::Client, route.pools.database())),
        }
    }
}
