//! Guardrails on a relay that waits too long, each off unless configured: a client silent
//! inside a transaction (`pool.idle_transaction_timeout`), a client silent at rest while it
//! keeps its connection (`listen.client_idle_timeout`: session mode, or a pinned client), and
//! replies the server has owed for too long (`pool.query_timeout`: the query is cancelled
//! upstream, and the client gets the server's 57014). One timer, armed when the relay starts to
//! wait in one of these ways and kept while it goes on waiting that way.

use crate::frontend::error::FrontendError;
use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The session's end when a client limit ran out: counted, logged; the client gets 25P03
/// (inside a transaction) or 57P05 (at rest), as PostgreSQL's own timeouts say.
pub fn timed_out(wait: Wait, database: &str) -> FrontendError {
    let database = database.to_owned();
    if wait == Wait::InTransaction {
        tracing::warn!(database = %database, "a client sent nothing inside a transaction for pool.idle_transaction_timeout; its transaction is rolled back and its session ends");
        metrics::counter!("rotagate_idle_transaction_timeouts_total", "database" => database)
            .increment(1);
        return FrontendError::IdleInTransaction;
    }
    tracing::info!(database = %database, "a client sent nothing for listen.client_idle_timeout; its session ends");
    metrics::counter!("rotagate_client_idle_timeouts_total", "database" => database).increment(1);
    FrontendError::ClientIdle
}

/// The configured limits (None: off).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub idle_in_transaction: Option<Duration>,
    pub client_idle: Option<Duration>,
    pub query: Option<Duration>,
}

/// What the relay is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The client, inside a transaction (or with extended messages not yet synced).
    InTransaction,
    /// The client, with its connection at rest.
    Client,
    /// The server's replies.
    Server,
}

/// Where the relay stands, as far as the limits go.
pub struct State {
    /// Nothing is queued either way.
    pub drained: bool,
    /// The connection is at rest.
    pub at_rest: bool,
    /// The client has sent nothing that is not decided yet.
    pub client_silent: bool,
    /// Replies are owed by the server.
    pub owed: bool,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.idle_in_transaction.is_some() || self.client_idle.is_some() || self.query.is_some()
    }

    /// Which limit applies now, if any.
    pub fn applies(&self, st: &State) -> Option<(Wait, Duration)> {
        if st.owed {
            return self.query.map(|d| (Wait::Server, d));
        }
        if !st.drained || !st.client_silent {
            return None;
        }
        if st.at_rest {
            self.client_idle.map(|d| (Wait::Client, d))
        } else {
            self.idle_in_transaction.map(|d| (Wait::InTransaction, d))
        }
    }
}

/// The one timer.
#[derive(Default)]
pub struct Timer {
    kind: Option<Wait>,
    sleep: Option<Pin<Box<Sleep>>>,
    fired: bool,
}

impl Timer {
    /// Arms for `want` when the relay starts waiting that way; disarms when it stops waiting.
    pub fn set(&mut self, want: Option<(Wait, Duration)>) {
        match want {
            None => {
                self.kind = None;
                self.fired = false;
            }
            Some((kind, _)) if self.kind == Some(kind) => {}
            Some((kind, limit)) => {
                self.kind = Some(kind);
                self.fired = false;
                let deadline = Instant::now() + limit;
                match &mut self.sleep {
                    Some(s) => s.as_mut().reset(deadline),
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
        }
    }

    /// The wait that ran out, once.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Option<Wait> {
        let kind = self.kind.filter(|_| !self.fired)?;
        let sleep = self.sleep.as_mut()?;
        if sleep.as_mut().poll(cx).is_ready() {
            self.fired = true;
            return Some(kind);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(drained: bool, at_rest: bool, client_silent: bool, owed: bool) -> State {
        State {
            drained,
            at_rest,
            client_silent,
            owed,
        }
    }

    #[test]
    fn each_wait_has_its_limit() {
        let s = Duration::from_secs;
        let l = Limits {
            idle_in_transaction: Some(s(1)),
            client_idle: Some(s(2)),
            query: Some(s(3)),
        };
        assert_eq!(
            l.applies(&st(true, false, true, true)),
            Some((Wait::Server, s(3)))
        );
        assert_eq!(
            l.applies(&st(true, false, true, false)),
            Some((Wait::InTransaction, s(1)))
        );
        assert_eq!(
            l.applies(&st(true, true, true, false)),
            Some((Wait::Client, s(2)))
        );
        assert_eq!(l.applies(&st(true, false, false, false)), None);
        assert_eq!(l.applies(&st(false, false, true, false)), None);
        assert!(!Limits::default().any());
    }

    fn poll(t: &mut Timer) -> Option<Wait> {
        let once = std::future::poll_fn(|cx| std::task::Poll::Ready(t.poll(cx)));
        futures::FutureExt::now_or_never(once).flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_fires_once_per_wait_and_rearms_on_a_new_one() {
        let s = Duration::from_secs;
        let mut t = Timer::default();
        t.set(Some((Wait::Server, s(5))));
        assert_eq!(poll(&mut t), None);
        tokio::time::sleep(s(4)).await;
        // Still the same wait: the deadline stays.
        t.set(Some((Wait::Server, s(5))));
        tokio::time::sleep(s(2)).await;
        assert_eq!(poll(&mut t), Some(Wait::Server));
        assert_eq!(poll(&mut t), None, "once");
        t.set(None);
        t.set(Some((Wait::InTransaction, s(1))));
        assert_eq!(poll(&mut t), None);
        tokio::time::sleep(s(2)).await;
        assert_eq!(poll(&mut t), Some(Wait::InTransaction));
    }
}
