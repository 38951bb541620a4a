//! Every way a client session can end badly, and the one mapping of those to the SQLSTATE and
//! text the client sees. Texts follow PostgreSQL's where libpq users know them; none carries a
//! credential.

use crate::backend::BackendError;
use crate::wire::WireError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("client connection: {0}")]
    Wire(#[from] WireError),
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    #[error("database \"{0}\" does not exist")]
    NoDatabase(String),
    #[error("user \"{0}\" may not open database \"{1}\"")]
    DatabaseNotAllowed(String, String),
    #[error("database \"{0}\" is no longer served by this proxy")]
    DatabaseRemoved(String),
    #[error("rotagate requires TLS: connect with sslmode=require")]
    TlsRequired,
    #[error("sorry, too many clients already")]
    TooManyClients,
    #[error("too many connections for role \"{0}\" ([[clients]] max_connections)")]
    TooManyForUser(String),
    #[error(
        "terminating connection due to idle-in-transaction timeout (pool.idle_transaction_timeout)"
    )]
    IdleInTransaction,
    #[error("terminating connection due to idle-session timeout (listen.client_idle_timeout)")]
    ClientIdle,
    #[error("client authentication timed out")]
    AuthTimeout,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("timed out after {waited:?} waiting for an upstream connection (pool.acquire_timeout){}", last.as_ref().map(|l| format!("; last upstream error: {}", l.1)).unwrap_or_default())]
    PoolTimeout {
        waited: Duration,
        last: Option<crate::pool::LastError>,
    },
    #[error("upstream: {0}")]
    Upstream(#[from] BackendError),
    #[error("server closed the connection unexpectedly")]
    UpstreamLost,
    #[error("the upstream server sent what rotagate cannot relay: {0}")]
    ServerProtocol(String),
    /// The client already has the error that ends its session (the server's own FATAL).
    #[error("the session ended with an error the client was sent")]
    Reported,
    #[error("terminating connection due to administrator command")]
    Shutdown,
    #[error(
        "terminating connection: the upstream credential was rotated and pool.drain_timeout has passed; reconnect"
    )]
    Retired,
}

impl FrontendError {
    /// The SQLSTATE sent to the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            FrontendError::Wire(WireError::TooLarge(_)) => "54000",
            FrontendError::Wire(_) | FrontendError::Protocol(_) => "08P01",
            FrontendError::AuthFailed(_) => "28P01",
            FrontendError::NoDatabase(_) => "3D000",
            FrontendError::DatabaseNotAllowed(..) => "28000",
            FrontendError::DatabaseRemoved(_) => "57P01",
            FrontendError::TlsRequired => "28000",
            FrontendError::TooManyClients | FrontendError::TooManyForUser(_) => "53300",
            FrontendError::IdleInTransaction => "25P03",
            FrontendError::ClientIdle => "57P05",
            FrontendError::AuthTimeout => "08006",
            FrontendError::Unsupported(_) => "0A000",
            FrontendError::PoolTimeout { .. } => "08006",
            FrontendError::Upstream(e) => match e.code() {
                // A client must not read a login refusal of rotagate's upstream user as its own.
                Some(code) if !e.is_auth_failure() => code,
                _ => "08006",
            },
            FrontendError::UpstreamLost
            | FrontendError::ServerProtocol(_)
            | FrontendError::Reported => "08006",
            FrontendError::Shutdown | FrontendError::Retired => "57P01",
        }
    }

    /// The text the client is sent. It names neither the upstream user nor the upstream host
    /// (the log line, written from the Display text, has those): an upstream failure is told
    /// by its kind, and only a server error about the client's own statement or settings is
    /// passed on as the server wrote it.
    pub fn client_text(&self) -> String {
        match self {
            FrontendError::Upstream(e) => match e {
                BackendError::Server { code, message } if !names_upstream(code) => message.clone(),
                e => format!("{}; rotagate's log has the detail", e.summary()),
            },
            FrontendError::PoolTimeout { waited, last } => format!(
                "timed out after {waited:?} waiting for an upstream connection \
                 (pool.acquire_timeout){}",
                last.as_ref()
                    .map(|l| format!("; last upstream error: {}", l.0))
                    .unwrap_or_default()
            ),
            other => other.to_string(),
        }
    }

    /// Whether the client connection is still worth writing to.
    pub fn can_reply(&self) -> bool {
        !matches!(
            self,
            FrontendError::Wire(WireError::Closed | WireError::Io(_)) | FrontendError::Reported
        )
    }
}

/// Server errors of these classes are about rotagate's own login or connection (they can name
/// its role, database or host), not about anything the client sent: connection exceptions,
/// authorization, invalid catalog, insufficient resources, operator intervention.
fn names_upstream(code: &str) -> bool {
    ["08", "28", "3D", "53", "57"]
        .iter()
        .any(|class| code.starts_with(class))
}

/// An I/O error on the client's stream, as a session error.
pub fn wire_io(e: std::io::Error) -> FrontendError {
    FrontendError::Wire(e.into())
}

/// Tells the client why its session ends (a FATAL error), when it can still be told, and
/// closes the connection.
pub async fn report(stream: &mut super::stream::ClientStream, e: &FrontendError) {
    use tokio::io::AsyncWriteExt;
    if !e.can_reply() {
        return;
    }
    let mut out = bytes::BytesMut::new();
    crate::wire::msg::error(&mut out, "FATAL", e.sqlstate(), &e.client_text());
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_texts_and_codes() {
        let e = FrontendError::AuthFailed("app".into());
        assert_eq!(
            (e.sqlstate(), e.to_string().as_str()),
            ("28P01", "password authentication failed for user \"app\"")
        );
        let e = FrontendError::NoDatabase("x".into());
        assert_eq!(
            (e.sqlstate(), e.to_string().as_str()),
            ("3D000", "database \"x\" does not exist")
        );
        assert_eq!(FrontendError::TooManyClients.sqlstate(), "53300");
        let up = BackendError::Auth {
            code: "28P01".into(),
            message: "m".into(),
        };
        assert_eq!(FrontendError::Upstream(up).sqlstate(), "08006");
    }

    #[test]
    fn client_texts_name_no_upstream_user_or_host() {
        let refused = BackendError::Auth {
            code: "28P01".into(),
            message: "password authentication failed for user \"app_owner\"".into(),
        };
        let too_many = BackendError::Server {
            code: "53300".into(),
            message: "too many connections for role \"app_owner\"".into(),
        };
        let gone = BackendError::Io(std::io::Error::other("db.internal:5432 refused"));
        for e in [refused, too_many, gone] {
            let text = FrontendError::Upstream(e).client_text();
            assert!(
                !text.contains("app_owner") && !text.contains("db.internal"),
                "{text}"
            );
        }
        let timeout = FrontendError::PoolTimeout {
            waited: Duration::from_secs(3),
            last: Some((
                "the upstream server refused rotagate's login",
                "user app_owner".into(),
            )),
        };
        assert!(!timeout.client_text().contains("app_owner"));
        assert!(
            timeout.to_string().contains("app_owner"),
            "the log keeps the detail"
        );
        let own = BackendError::Server {
            code: "22023".into(),
            message: "invalid value for parameter \"work_mem\": \"x\"".into(),
        };
        assert!(
            FrontendError::Upstream(own)
                .client_text()
                .contains("work_mem")
        );
    }
}
