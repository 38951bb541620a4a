//! Dynamic credentials from Vault's database secrets engine. Each issue is a lease (its id is
//! the credential's version). [`LeaseKeeper`] renews the served lease at two thirds of its
//! TTL; when Vault grants less than asked (the max TTL is near) or renewal fails, it asks the
//! engine for a rotation, and the next fetch issues new credentials, which go through the same
//! validated swap. A lease is revoked once its generation has drained (`retire`).

use super::client::Vault;
use crate::secrets::Credentials;
use crate::secrets::backoff::Backoff;
use crate::secrets::provider::{Change, EventSource, Note, SecretProvider, SourceError, Stage};
use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Lease {
    creds: Credentials,
    ttl: Duration,
    renewed_at: Instant,
}

#[derive(Default)]
struct State {
    current: Option<Lease>,
    /// Set when the served lease cannot be kept: the next fetch issues new credentials.
    reissue: bool,
}

/// Shared by the provider (which issues) and the keeper (which renews).
pub struct Leases {
    vault: Arc<Vault>,
    mount: String,
    role: String,
    state: Mutex<State>,
    issued: Notify,
}

impl Leases {
    pub fn new(vault: Arc<Vault>, mount: String, role: String) -> Arc<Self> {
        Arc::new(Self {
            vault,
            mount,
            role,
            state: Mutex::new(State::default()),
            issued: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lease state lock")
    }

    /// The held lease's credentials, or new ones when there is none or it cannot be kept.
    async fn fetch(&self) -> Result<Credentials, SourceError> {
        {
            let s = self.state();
            if let (Some(lease), false) = (&s.current, s.reissue) {
                return Ok(lease.creds.clone());
            }
        }
        let lease = self.issue().await?;
        let creds = lease.creds.clone();
        let mut s = self.state();
        s.current = Some(lease);
        s.reissue = false;
        drop(s);
        self.issued.notify_one();
        Ok(creds)
    }

    async fn issue(&self) -> Result<Lease, SourceError> {
        let path = format!("{}/creds/{}", self.mount, self.role);
        let v = self.vault.raw(Method::GET, &path, None).await?;
        let lease_id = v["lease_id"].as_str().unwrap_or_default().to_owned();
        if lease_id.is_empty() {
            return Err(SourceError::Invalid(format!("Vault {path}: no lease_id")));
        }
        let ttl = Duration::from_secs(v["lease_duration"].as_u64().unwrap_or(0));
        let bytes = zeroize::Zeroizing::new(serde_json::to_vec(&v["data"]).unwrap_or_default());
        drop(v);
        let creds = Credentials::from_json(&bytes, lease_id.clone())
            .map_err(|e| SourceError::Invalid(format!("Vault {path}: {e}")))?;
        tracing::info!(lease_id = %lease_id, username = %creds.username, ttl = ?ttl, "issued database credentials");
        Ok(Lease {
            creds,
            ttl,
            renewed_at: Instant::now(),
        })
    }

    /// Renews the served lease for its TTL; false when it cannot be kept (renewal failed, or
    /// Vault granted less than asked because the max TTL is near).
    async fn renew(&self) -> bool {
        let Some(lease) = self.state().current.clone() else {
            return true;
        };
        let body = json!({"lease_id": lease.creds.version, "increment": lease.ttl.as_secs()});
        let granted = match self
            .vault
            .raw(Method::PUT, "sys/leases/renew", Some(body))
            .await
        {
            Ok(v) => Duration::from_secs(v["lease_duration"].as_u64().unwrap_or(0)),
            Err(e) => {
                tracing::warn!(lease_id = %lease.creds.version, error = %e, "cannot renew the database lease; issuing new credentials");
                return false;
            }
        };
        if granted + Duration::from_secs(1) < lease.ttl {
            tracing::info!(lease_id = %lease.creds.version, granted = ?granted, "the database lease is near its max TTL; issuing new credentials");
            return false;
        }
        let mut s = self.state();
        if let Some(cur) = s
            .current
            .as_mut()
            .filter(|c| c.creds.version == lease.creds.version)
        {
            cur.renewed_at = Instant::now();
            cur.ttl = granted;
        }
        tracing::debug!(lease_id = %lease.creds.version, ttl = ?granted, "renewed the database lease");
        true
    }

    /// Revokes a lease whose generation has drained (never the one being served).
    async fn revoke(&self, lease_id: &str) {
        if self
            .state()
            .current
            .as_ref()
            .is_some_and(|c| c.creds.version == lease_id)
        {
            return;
        }
        let body = json!({"lease_id": lease_id});
        match self
            .vault
            .raw(Method::PUT, "sys/leases/revoke", Some(body))
            .await
        {
            Ok(_) => tracing::info!(lease_id, "revoked the drained generation's database lease"),
            Err(e) => {
                tracing::warn!(lease_id, error = %e, "cannot revoke a drained database lease; it ends at its TTL")
            }
        }
    }

    /// When the served lease should next be renewed.
    fn renew_at(&self) -> Option<Instant> {
        let s = self.state();
        let l = s.current.as_ref().filter(|_| !s.reissue)?;
        Some(l.renewed_at + l.ttl * 2 / 3)
    }
}

pub struct DatabaseProvider(pub Arc<Leases>);

impl SecretProvider for DatabaseProvider {
    fn kind(&self) -> &'static str {
        "vault"
    }

    /// Dynamic credentials have no stages: the served lease, or a new one.
    fn fetch(&self, _stage: Stage) -> BoxFuture<'_, Result<Credentials, SourceError>> {
        Box::pin(self.0.fetch())
    }

    fn retire(&self, version: &str) -> BoxFuture<'_, ()> {
        let version = version.to_owned();
        Box::pin(async move { self.0.revoke(&version).await })
    }
}

/// Renews the served lease; asks the engine for new credentials when it cannot be kept.
pub struct LeaseKeeper(pub Arc<Leases>);

impl LeaseKeeper {
    async fn keep(self, tx: mpsc::Sender<Note>, stop: CancellationToken) {
        let leases = self.0;
        let mut backoff = Backoff::default();
        loop {
            let at = leases.renew_at();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = leases.issued.notified() => continue,
                _ = until(at) => {}
            }
            if leases.renew().await {
                backoff.reset();
                continue;
            }
            leases.state().reissue = true;
            let note = Note {
                origin: "vault",
                change: Change::Current,
                version: None,
                counted: false,
            };
            if tx.send(note).await.is_err() {
                return;
            }
            // Until the engine has issued new credentials, look again after a backoff delay.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = leases.issued.notified() => {}
                _ = tokio::time::sleep(backoff.next_delay()) => {
                    leases.state().reissue = false;
                }
            }
        }
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl EventSource for LeaseKeeper {
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Note>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin((*self).keep(tx, stop))
    }
}
