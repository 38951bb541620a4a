//! Keeps rotagate's Vault token alive: renews it (renew-self) at two thirds of its TTL, and
//! logs in again when it is not renewable, when renewal fails, or when Vault grants less than
//! asked (the token is near its max TTL). Failed logins back off from 2 s to 60 s.

use super::client::Vault;
use crate::secrets::backoff::Backoff;
use crate::secrets::provider::{EventSource, Note};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A token that does not expire is looked at again this often (it may be revoked and replaced
/// in its file).
const NO_EXPIRY_RECHECK: Duration = Duration::from_secs(3600);

pub struct TokenKeeper {
    pub vault: Arc<Vault>,
}

impl TokenKeeper {
    async fn keep(self, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let life = self.vault.life();
            let wait = if life.ttl.is_zero() {
                NO_EXPIRY_RECHECK
            } else {
                (life.granted_at + life.ttl * 2 / 3)
                    .saturating_duration_since(tokio::time::Instant::now())
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.vault.changed.notified() => continue,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.refresh().await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(addr = %self.vault.addr, error = %e, retry_in = ?delay, "cannot renew or replace the Vault token; retrying with backoff");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Renew when that gives the full TTL again; otherwise log in afresh.
    async fn refresh(&self) -> Result<(), crate::secrets::provider::SourceError> {
        let life = self.vault.life();
        if life.renewable && !life.ttl.is_zero() {
            match self.vault.renew().await {
                Ok(granted) if granted + Duration::from_secs(1) >= life.ttl => {
                    tracing::debug!(ttl = ?granted, "renewed the Vault token");
                    return Ok(());
                }
                Ok(granted) => {
                    tracing::info!(ttl = ?granted, "the Vault token is near its max TTL; logging in again")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the Vault token; logging in again")
                }
            }
        }
        self.vault.login().await
    }
}

impl EventSource for TokenKeeper {
    fn run(
        self: Box<Self>,
        _tx: mpsc::Sender<Note>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin((*self).keep(stop))
    }
}
