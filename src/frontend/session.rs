//! One authenticated client: finish the login with the upstream's real parameters, then serve
//! it in session mode (one upstream connection for its lifetime) or transaction mode
//! ([`super::transaction`]).

use super::cancel::CancelKey;
use super::context::{Frontend, Route};
use super::error::{FrontendError, report};
use super::flow::{ClientState, Flow};
use super::relay::{ClientSide, End, RelayCtx, at_rest, close, relay};
use super::settings::{Settings, sync_sql};
use super::startup::Login;
use crate::backend::query;
use crate::config::PoolMode;
use crate::pool::{PoolError, Pooled};
use crate::wire::msg;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Serves an authenticated client until it leaves, reporting any error to it.
pub async fn serve(login: Login, fe: &Frontend, worker: usize) {
    let Login {
        mut stream,
        rbuf,
        user,
        database,
        params,
        peer,
        ..
    } = login;
    let Some(route) = fe.routes.load().get(&database).cloned() else {
        return report(&mut stream, &FrontendError::NoDatabase(database)).await;
    };
    if !fe.auth.load().may_open(&user, &database) {
        tracing::info!(user = %user, database = %database, "client refused a database it may not open");
        let e = FrontendError::DatabaseNotAllowed(user, database);
        return report(&mut stream, &e).await;
    }
    let settings = match Settings::from_startup(&params) {
        Ok(s) => s,
        Err(e) => return report(&mut stream, &e).await,
    };
    let state = ClientState {
        who: format!("{user}@{peer}"),
        settings,
        ..ClientState::default()
    };
    let mut client = ClientSide::new(stream, rbuf, state, worker);
    client.state.pins.database = Some(route.pools.database().clone());
    match run(&mut client, fe, &route).await {
        Ok(()) | Err(FrontendError::Reported) => {}
        Err(e) => {
            tracing::info!(user = %user, error = %e, "client session ended with an error");
            report(&mut client.stream, &e).await;
        }
    }
}

async fn run(
    client: &mut ClientSide,
    fe: &Frontend,
    route: &Arc<Route>,
) -> Result<(), FrontendError> {
    let mut out = BytesMut::new();
    msg::auth_ok(&mut out);
    client.stream.write_all(&out).await.map_err(wire_io)?;

    let mut server = acquire(route, client.worker).await?;
    client.state.settings.fill_defaults(&server.params);
    apply(&client.state.settings, &mut server).await?;
    client.state.settings.settle(&server.params, &fe.lists);
    server.params.session = client.state.settings.list.clone();
    let session_pid = (route.mode == PoolMode::Session).then_some(server.pid);
    let cancel = fe.cancels.register(session_pid);
    cancel.slot.aim(&server.generation().target);
    greet(client, &server, &cancel).await?;
    match route.mode {
        PoolMode::Session => session_mode(client, server, &cancel, fe, route).await,
        PoolMode::Transaction => {
            drop(server);
            super::transaction::serve(client, &cancel, fe, route).await
        }
    }
}

pub(super) fn wire_io(e: std::io::Error) -> FrontendError {
    FrontendError::Wire(e.into())
}

pub(super) async fn acquire(route: &Route, worker: usize) -> Result<Pooled, FrontendError> {
    route.pools.acquire(worker).await.map_err(|e| match e {
        PoolError::Timeout { waited, last } => FrontendError::PoolTimeout { waited, last },
        PoolError::Backend(e) => FrontendError::Upstream(e),
        PoolError::Closed => FrontendError::DatabaseRemoved(route.pools.database().to_string()),
    })
}

/// Brings the upstream session to the client's settings, in one query when they differ. A
/// failure closes the connection.
pub(super) async fn apply(settings: &Settings, server: &mut Pooled) -> Result<(), FrontendError> {
    let Some(sql) = sync_sql(&settings.list, &server.params.session) else {
        return Ok(());
    };
    if let Err(e) = query::simple(server, &sql).await {
        close(server, "reset_failed");
        return Err(if server.broken && e.code().is_none() {
            FrontendError::UpstreamLost
        } else {
            FrontendError::Upstream(e)
        });
    }
    server.params.session = settings.list.clone();
    Ok(())
}

/// ParameterStatus as the upstream spells it, our BackendKeyData, ReadyForQuery.
async fn greet(
    client: &mut ClientSide,
    server: &Pooled,
    cancel: &CancelKey,
) -> Result<(), FrontendError> {
    let mut out = BytesMut::new();
    for (name, value) in &server.params.reported {
        msg::parameter_status(&mut out, name, value);
    }
    msg::backend_key_data(&mut out, cancel.pid, cancel.key);
    msg::ready_for_query(&mut out, b'I');
    client.stream.write_all(&out).await.map_err(wire_io)
}

pub(super) fn ctx<'a>(
    fe: &'a Frontend,
    route: &'a Route,
    cfg: &'a crate::config::PoolConfig,
) -> RelayCtx<'a> {
    RelayCtx {
        mode: route.mode,
        cfg,
        max_client_message: fe.listen.max_message_size,
        shutdown: &fe.shutdown,
        transactions: &route.transactions,
        known: &route.known,
    }
}

async fn session_mode(
    client: &mut ClientSide,
    mut server: Pooled,
    cancel: &CancelKey,
    fe: &Frontend,
    route: &Route,
) -> Result<(), FrontendError> {
    let cfg = route.pools.config();
    let mut flow = Flow::default();
    cancel.slot.attach(server.pid, server.key);
    cancel.slot.aim(&server.generation().target);
    let end = relay(client, &mut server, &mut flow, &ctx(fe, route, &cfg)).await;
    cancel.slot.detach().await;
    if at_rest(client, &server, &flow) {
        reset(&mut server).await;
    }
    match end? {
        End::Released | End::ClientGone => Ok(()),
        End::Shutdown => Err(FrontendError::Shutdown),
        End::Retired => Err(FrontendError::Retired),
        // The server's own FATAL went to the client; nothing more to say.
        End::ServerGone(Some(_)) => Err(FrontendError::Reported),
        End::ServerGone(None) => {
            tracing::warn!("upstream connection lost under a session-mode client");
            Err(FrontendError::UpstreamLost)
        }
    }
}

/// DISCARD ALL before a session-mode connection goes back; a failure closes it instead.
async fn reset(server: &mut Pooled) {
    match query::simple(server, "DISCARD ALL").await {
        Ok(()) => server.params.session = Default::default(),
        Err(e) => {
            tracing::debug!(error = %e, "DISCARD ALL failed; closing the connection");
            close(server, "reset_failed");
        }
    }
}
