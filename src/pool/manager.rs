//! bb8's `ManageConnection` over raw upstream connections of one credential generation.
//! A connection is discarded on check-in when it is broken, not idle-clean, or of a
//! generation older than the one being served.

use super::LastError;
use crate::backend::{self, BackendError, ServerConn, UpstreamTarget};
use crate::secrets::Credentials;
use futures::FutureExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;

pub struct Manager {
    pub target: Arc<UpstreamTarget>,
    pub creds: Arc<Credentials>,
    pub generation: u64,
    /// The generation currently served; older connections close on check-in.
    pub current: Arc<AtomicU64>,
    /// The most recent connect failure, for errors that would otherwise only say "timed out".
    pub last_error: Arc<Mutex<Option<LastError>>>,
    /// Told when a login of the current generation is refused, so rotation refetches at once.
    pub auth_failed: Arc<tokio::sync::Notify>,
}

impl bb8::ManageConnection for Manager {
    /// Boxed: a connection moves in and out of the pool at every hand-over.
    type Connection = Box<ServerConn>;
    type Error = BackendError;

    async fn connect(&self) -> Result<Box<ServerConn>, BackendError> {
        match backend::connect(&self.target, &self.creds, self.generation).await {
            Ok(c) => {
                metrics::counter!("rotagate_server_logins_total", "result" => "success")
                    .increment(1);
                Ok(Box::new(c))
            }
            Err(e) => {
                if e.is_auth_failure() {
                    metrics::counter!("rotagate_backend_auth_failures_total").increment(1);
                    if self.generation == self.current.load(Ordering::Acquire) {
                        self.auth_failed.notify_one();
                    }
                }
                metrics::counter!("rotagate_server_logins_total", "result" => "failure")
                    .increment(1);
                tracing::warn!(generation = self.generation, error = %e, "upstream login failed");
                *self.last_error.lock().expect("last_error lock") =
                    Some((e.summary(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Cheap liveness check on checkout: an idle connection must have nothing to read. Data or
    /// EOF means the server closed it (restart, idle timeout, admin termination).
    async fn is_valid(&self, conn: &mut Box<ServerConn>) -> Result<(), BackendError> {
        if conn.broken {
            return Err(BackendError::Protocol("connection marked broken".into()));
        }
        let mut probe = [0u8; 1];
        match conn.stream.read(&mut probe).now_or_never() {
            None => Ok(()),
            Some(_) => {
                conn.broken = true;
                Err(BackendError::Protocol(
                    "idle upstream connection was closed by the server".into(),
                ))
            }
        }
    }

    fn has_broken(&self, conn: &mut Box<ServerConn>) -> bool {
        conn.broken
            || conn.tx_status != b'I'
            || !conn.rbuf.is_empty()
            || conn.generation < self.current.load(Ordering::Acquire)
    }
}
