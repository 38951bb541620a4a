//! One authenticated client: finish the login with the upstream's real parameters, then serve
//! it in session mode (one upstream connection for its lifetime) or transaction mode
//! ([`super::transaction`]).

use super::cancel::CancelKey;
use super::context::{Frontend, Route};
use super::error::wire_io;
use super::error::{FrontendError, report};
use super::relay::budget::Budget;
use super::relay::lane::{Decision, ERROR_HEAD, Need, Policy, head_or_whole, walk};
use super::relay::limits::{Limits, Wait, timed_out};
use super::relay::side::ClientSide;
use super::relay::{End, Protocol, Signals, at_rest, close, relay};
use super::startup::Login;
use super::transaction::flow::ClientState;
use super::transaction::policy::{MAX_SERVER_MESSAGE, split_param};
use super::transaction::settings::{Settings, apply};
use crate::backend::{ServerConn, query};
use crate::config::PoolMode;
use crate::pool::Pooled;
use crate::wire::msg;
use crate::wire::scan::Header;
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
        id: 1 + fe
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        who: format!("{user}@{peer}"),
        settings,
        ..ClientState::default()
    };
    let budget = Budget::new(fe.message_budget.clone());
    let mut client = ClientSide::new(stream, rbuf, worker, budget);
    let mut state = state;
    state.pins.database = Some(route.pools.database().clone());
    state.pins.count = Some(route.pinned.clone());
    state.shadowed = Some(route.shadowed.clone());
    match run(&mut client, &mut state, fe, &route).await {
        Ok(()) | Err(FrontendError::Reported) => {}
        Err(e) => {
            tracing::info!(user = %user, error = %e, "client session ended with an error");
            report(&mut client.stream, &e).await;
        }
    }
}

async fn run(
    client: &mut ClientSide,
    state: &mut ClientState,
    fe: &Frontend,
    route: &Arc<Route>,
) -> Result<(), FrontendError> {
    let mut out = BytesMut::new();
    msg::auth_ok(&mut out);
    client.stream.write_all(&out).await.map_err(wire_io)?;

    let mut server = route.acquire(client.worker).await?;
    state.settings.fill_defaults(&server.params);
    apply(&state.settings, &mut server).await?;
    state.settings.settle(&server.params, &fe.lists);
    server.params.session = state.settings.list.clone();
    let session_pid = (route.mode == PoolMode::Session).then_some(server.pid);
    let cancel = fe.cancels.register(session_pid);
    cancel.slot.aim(&server.generation().target);
    greet(client, &server, &cancel).await?;
    match route.mode {
        PoolMode::Session => session_mode(client, server, &cancel, fe, route).await,
        PoolMode::Transaction => {
            drop(server);
            super::transaction::serve(client, state, &cancel, fe, route).await
        }
    }
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

async fn session_mode(
    client: &mut ClientSide,
    mut server: Pooled,
    cancel: &CancelKey,
    fe: &Frontend,
    route: &Route,
) -> Result<(), FrontendError> {
    let mut session = Session::new(&route.transactions, fe.listen.max_message_size);
    cancel.slot.attach(server.pid, server.key);
    cancel.slot.aim(&server.generation().target);
    let cfg = route.pools.config();
    let limits = Limits {
        idle_in_transaction: cfg.idle_transaction_timeout,
        client_idle: fe.listen.client_idle_timeout,
        query: None,
    };
    let end = relay(client, &mut server, &mut session, &fe.shutdown, limits).await;
    cancel.slot.detach().await;
    if matches!(end, Ok(End::IdleInTransaction)) {
        // The session ends with its transaction: the connection is not reused.
        close(&mut server, "idle_in_transaction");
    }
    if at_rest(client, &server, &session) {
        reset(&mut server).await;
    }
    match end? {
        End::Released | End::ClientGone => Ok(()),
        End::IdleInTransaction => Err(timed_out(Wait::InTransaction, route.pools.database())),
        End::ClientIdle => Err(timed_out(Wait::Client, route.pools.database())),
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

/// Session mode's [`Protocol`]: it only counts what is owed (each Query, FunctionCall and Sync
/// owes a ReadyForQuery) and watches ReadyForQuery, ParameterStatus and FATAL errors.
pub(super) struct Session<'a> {
    signals: Signals,
    /// Queries, FunctionCalls and Syncs whose ReadyForQuery has not come back.
    pub(super) pending: u32,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    transactions: &'a metrics::Counter,
    max_client_message: usize,
}

impl<'a> Session<'a> {
    pub(super) fn new(transactions: &'a metrics::Counter, max_client_message: usize) -> Self {
        Self {
            signals: Signals::default(),
            pending: 0,
            unsynced: false,
            transactions,
            max_client_message,
        }
    }

    /// The policy for the server's messages of connection `s`.
    pub(super) fn incoming<'b>(
        &'b mut self,
        tx_status: &'b mut u8,
        params: &'b mut crate::backend::ServerParams,
    ) -> Incoming<'b> {
        Incoming {
            signals: &mut self.signals,
            pending: &mut self.pending,
            tx_status,
            params,
            transactions: self.transactions,
        }
    }
}

impl Protocol for Session<'_> {
    fn client(&mut self, c: &mut ClientSide, _: &mut ServerConn) -> Result<usize, FrontendError> {
        let max = self.max_client_message;
        Ok(walk(&mut c.buf, &mut c.up, max, &mut c.scratch, self)?)
    }

    fn server(&mut self, c: &mut ClientSide, s: &mut ServerConn) -> Result<usize, FrontendError> {
        let mut policy = self.incoming(&mut s.tx_status, &mut s.params);
        walk(
            &mut s.rbuf,
            &mut c.down,
            MAX_SERVER_MESSAGE,
            &mut c.scratch,
            &mut policy,
        )
        .map_err(|e| FrontendError::ServerProtocol(e.to_string()))
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }

    fn settled(&self) -> bool {
        self.pending == 0 && !self.unsynced
    }

    fn releases(&self) -> bool {
        false
    }

    fn pinned(&self) -> bool {
        false
    }
}

/// Client messages in session mode: counted, never changed.
impl Policy for Session<'_> {
    fn need(&self, _: u8) -> Need {
        Need::Nothing
    }

    fn decide(&mut self, h: Header, _: &[u8], _: &mut BytesMut) -> Decision {
        if self.signals.terminate || h.tag == b'X' {
            self.signals.terminate = true;
            return Decision::Stop;
        }
        match h.tag {
            b'Q' | b'F' => self.pending += 1,
            b'S' => {
                self.pending += 1;
                self.unsynced = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
            _ => {}
        }
        Decision::Pass
    }
}

/// Server messages in session mode: watched, never changed.
pub(super) struct Incoming<'a> {
    signals: &'a mut Signals,
    pending: &'a mut u32,
    tx_status: &'a mut u8,
    params: &'a mut crate::backend::ServerParams,
    transactions: &'a metrics::Counter,
}

impl Policy for Incoming<'_> {
    fn need(&self, tag: u8) -> Need {
        match tag {
            b'Z' | b'S' => Need::Whole,
            b'E' => Need::Head(ERROR_HEAD),
            _ => Need::Nothing,
        }
    }

    fn decide(&mut self, h: Header, m: &[u8], _: &mut BytesMut) -> Decision {
        if self.signals.fatal.is_some() {
            return Decision::Stop;
        }
        let body = head_or_whole(h, m);
        match h.tag {
            b'Z' => {
                let status = body.first().copied().unwrap_or(b'E');
                *self.pending = self.pending.saturating_sub(1);
                *self.tx_status = status;
                if status == b'I' {
                    self.transactions.increment(1);
                }
            }
            b'S' => {
                if let Some((name, value)) = split_param(body) {
                    self.params.report(name, value);
                }
            }
            b'E' => {
                if matches!(msg::severity(body), b"FATAL" | b"PANIC") {
                    self.signals.fatal = Some(msg::whole_body(body));
                }
                if msg::code(body) == b"25006" {
                    self.signals.read_only = true;
                }
            }
            _ => {}
        }
        Decision::Pass
    }
}
