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
    #[error("rotagate requires TLS: connect with sslmode=require")]
    TlsRequired,
    #[error("sorry, too many clients already")]
    TooManyClients,
    #[error("client authentication timed out")]
    AuthTimeout,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("timed out after {waited:?} waiting for an upstream connection (pool.acquire_timeout){}", last.as_ref().map(|l| format!("; last upstream error: {l}")).unwrap_or_default())]
    PoolTimeout {
        waited: Duration,
        last: Option<String>,
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
            FrontendError::TlsRequired => "28000",
            FrontendError::TooManyClients => "53300",
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

    /// Whether the client connection is still worth writing to.
    pub fn can_reply(&self) -> bool {
        !matches!(
            self,
            FrontendError::Wire(WireError::Closed | WireError::Io(_)) | FrontendError::Reported
        )
    }
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
}
