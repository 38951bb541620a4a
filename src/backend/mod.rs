//! The upstream side: one raw PostgreSQL connection ([`ServerConn`]) and how it is made
//! ([`connect`]: tcp -> tls -> startup -> authenticate -> read params). Knows nothing of
//! clients or pools; the only policy here is the wire protocol and the TLS mode.

mod auth;
mod connect;
mod endpoint;
pub mod prepared;
pub mod query;
mod settings;
pub mod stream;
pub mod tls;

pub use connect::{UpstreamTarget, cancel, connect};
pub use settings::{Interner, SettingList};

use bytes::BytesMut;
use prepared::Prepared;
use std::collections::HashMap;
use stream::Stream;
use tokio::time::Instant;

/// An authenticated upstream connection, ready for queries.
pub struct ServerConn {
    pub stream: Stream,
    /// Bytes read from the server and not yet consumed; empty whenever the connection is idle.
    pub rbuf: BytesMut,
    pub pid: i32,
    pub key: i32,
    pub params: ServerParams,
    /// The credential generation that logged this connection in.
    pub generation: u64,
    pub created: Instant,
    /// Set when the connection must not be reused (I/O error, dirty state, protocol surprise).
    pub broken: bool,
    /// The last ReadyForQuery status: b'I', b'T' or b'E'.
    pub tx_status: u8,
    /// rotagate's named statements prepared on this connection (transaction mode).
    pub prepared: Prepared,
    /// The configured database it serves (the `database` label of its metrics); set by the
    /// pool that opened it.
    pub database: std::sync::Arc<str>,
    /// Counts it, while a client keeps it between messages, in its pool's [`Kept`] gauge.
    pub kept: Kept,
}

impl ServerConn {
    /// A connection on `stream`, before its startup: no pid, key or parameters yet, idle,
    /// created now.
    pub fn on(stream: Stream, generation: u64) -> Self {
        ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            pid: 0,
            key: 0,
            params: ServerParams::default(),
            generation,
            created: Instant::now(),
            broken: false,
            tx_status: b'I',
            prepared: Default::default(),
            database: "".into(),
            kept: Default::default(),
        }
    }
}

/// Counts a connection in a gauge its pool shares while a client keeps it between messages
/// (inside a transaction block, or pinned): the pool tells a pool that is merely busy from one
/// whose every connection waits on its client (the pool's `saturated`). Leaving the gauge is certain:
/// dropping the connection does it.
#[derive(Debug, Default)]
pub struct Kept {
    gauge: Option<std::sync::Arc<KeptGauge>>,
    counted: bool,
}

/// How many of a pool's connections clients keep between messages; waiters hear each rise.
#[derive(Debug, Default)]
pub struct KeptGauge {
    count: std::sync::atomic::AtomicU32,
    rose: tokio::sync::Notify,
}

impl KeptGauge {
    pub fn get(&self) -> u32 {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Fires at the next rise; create it before looking at the count.
    pub fn rose(&self) -> tokio::sync::futures::Notified<'_> {
        self.rose.notified()
    }
}

impl Kept {
    /// Counts the connection in `gauge` from now on (the pool that opened it).
    pub fn count_in(&mut self, gauge: std::sync::Arc<KeptGauge>) {
        self.set(false);
        self.gauge = Some(gauge);
    }

    /// Whether a client keeps the connection now.
    pub fn set(&mut self, kept: bool) {
        use std::sync::atomic::Ordering;
        if kept == self.counted {
            return;
        }
        self.counted = kept;
        if let Some(g) = &self.gauge {
            if kept {
                g.count.fetch_add(1, Ordering::AcqRel);
                g.rose.notify_waiters();
            } else {
                g.count.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.set(false);
    }
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("pid", &self.pid)
            .field("generation", &self.generation)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Session settings of one upstream connection: what the server reported and what rotagate
/// brought the session to.
#[derive(Debug, Default, Clone)]
pub struct ServerParams {
    /// ParameterStatus values in the server's own spelling, in arrival order.
    pub reported: Vec<(String, String)>,
    /// Reported values right after login, by lowercase name: what a client that names none of
    /// them gets.
    pub defaults: HashMap<String, String>,
    /// Every session-level setting of the connection, as rotagate last set or read them.
    pub session: SettingList,
    /// Custom setting names that exist on the connection as placeholders; PostgreSQL keeps them
    /// until the session ends.
    pub placeholders: Vec<String>,
}

impl ServerParams {
    /// Records a ParameterStatus.
    pub fn report(&mut self, name: &str, value: &str) {
        match self.reported.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => value.clone_into(&mut slot.1),
            None => self.reported.push((name.to_owned(), value.to_owned())),
        }
    }

    /// The reported value of `name` (any case), if the server reports it.
    pub fn reported_value(&self, name: &str) -> Option<&str> {
        self.reported
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot reach the upstream server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("the upstream server refused the login ({code}): {message}")]
    Auth { code: String, message: String },
    #[error("the upstream server reported an error ({code}): {message}")]
    Server { code: String, message: String },
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// No password for the login (an RDS IAM token could not be signed).
    #[error("no password for the upstream login: {0}")]
    Password(String),
}

impl BackendError {
    /// The upstream refused the credential (wrong password, role gone): a reason to refetch.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, BackendError::Auth { code, .. } if code == "28P01" || code == "28000")
    }

    /// What went wrong, in words that name neither the upstream user nor its host: the text
    /// a client may see. The Display text (for the log) has the detail.
    pub fn summary(&self) -> &'static str {
        match self {
            BackendError::Io(_) => "rotagate cannot reach the upstream server",
            BackendError::Timeout(_) => "the upstream server did not answer in time",
            BackendError::Tls(_) => "TLS to the upstream server failed",
            BackendError::Auth { .. } => "the upstream server refused rotagate's login",
            BackendError::Server { .. } => "the upstream server reported an error",
            BackendError::Protocol(_) => "the upstream server broke the protocol",
            BackendError::Password(_) => "rotagate has no password for the upstream login",
        }
    }

    /// The host is down, going down, starting up or in recovery: connection refused or
    /// reset, no answer, or 57P01/57P02/57P03 ("the database system is starting up / shutting
    /// down / in recovery"). A reason to look for the writer again.
    pub fn is_host_trouble(&self) -> bool {
        match self {
            BackendError::Io(_) | BackendError::Timeout(_) => true,
            BackendError::Auth { code, .. } | BackendError::Server { code, .. } => {
                matches!(code.as_str(), "57P01" | "57P02" | "57P03")
            }
            _ => false,
        }
    }

    /// The SQLSTATE the server sent, when it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            BackendError::Auth { code, .. } | BackendError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BackendError;

    #[test]
    fn a_host_going_down_starting_up_or_in_recovery_is_host_trouble() {
        let server = |code: &str| BackendError::Server {
            code: code.into(),
            message: "the database system is starting up".into(),
        };
        for code in ["57P01", "57P02", "57P03"] {
            assert!(server(code).is_host_trouble(), "{code}");
        }
        assert!(BackendError::Io(std::io::ErrorKind::ConnectionRefused.into()).is_host_trouble());
        assert!(BackendError::Timeout(std::time::Duration::from_secs(1)).is_host_trouble());
        assert!(!server("42P01").is_host_trouble());
        let refused = BackendError::Auth {
            code: "28P01".into(),
            message: "password authentication failed".into(),
        };
        assert!(!refused.is_host_trouble(), "the credential, not the host");
    }
}
