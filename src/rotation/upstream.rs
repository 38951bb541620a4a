//! The seam between the rotation engine and the pools it publishes to: validate a credential,
//! publish it, adopt a validated connection, wait for a generation to drain, and be told of a
//! refused login. [`Pools`] implements it with real logins; the engine's unit tests use a fake
//! that runs in paused time.

use super::checks::health_check;
use super::writer::{self, Probe};
use crate::backend::{ServerConn, UpstreamTarget};
use crate::config::{HostPort, TargetSessionAttrs};
use crate::pool::Pools;
use crate::secrets::Credentials;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Notify;

/// How long the periodic writer check waits for a host on its kept probe session.
const RECHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub trait Upstream: Send + Sync + 'static {
    /// What a successful validation leaves behind (a logged-in connection) for the pool.
    type Proof: Send + 'static;

    /// The generation being served.
    fn generation(&self) -> u64;
    /// The credential being served.
    fn current(&self) -> Arc<Credentials>;
    /// The host the current generation logs in to.
    fn serving(&self) -> HostPort;
    /// Logs in to `host` with `creds` as generation `generation` the way client connections
    /// will, and checks the session works. The error is for the log and the audit event.
    fn validate(
        &self,
        creds: &Credentials,
        generation: u64,
        host: &HostPort,
    ) -> impl Future<Output = Result<Self::Proof, String>> + Send;
    /// Logs in to every host in `hosts` at once with `creds` and asks each what it is, until
    /// the choice `attrs` makes is settled (`writer::probe_all`).
    fn probe(
        &self,
        hosts: &[HostPort],
        creds: &Credentials,
        attrs: TargetSessionAttrs,
    ) -> impl Future<Output = Vec<Probe>> + Send;
    /// Probe sessions kept open between periodic writer checks (see `probes.rs`).
    type Probes: Default + Send + 'static;
    /// Every host's role, asked on the probe sessions in `kept` (a fresh login where a host has
    /// none); None when a host could not answer, which calls for a full search.
    fn recheck(
        &self,
        kept: &mut Self::Probes,
        hosts: &[HostPort],
        creds: &Credentials,
    ) -> impl Future<Output = Option<Vec<Probe>>> + Send;
    /// Makes `creds` the next generation, on the host `proof` was validated on, with `proof`
    /// as its first connection; the old one starts draining. Returns the new generation.
    fn publish(&self, creds: Credentials, proof: Self::Proof) -> u64;
    /// Gives the current generation a connection validated with its own credential.
    fn adopt(&self, proof: Self::Proof);
    /// How long a retired generation's connections may stay in use (`pool.drain_timeout`).
    fn drain_timeout(&self) -> std::time::Duration;
    /// Resolves once `generation` has no connection left (the engine bounds the wait).
    fn drained(&self, generation: u64) -> impl Future<Output = ()> + Send;
    /// Told when an upstream login of the current generation is refused.
    fn auth_failed(&self) -> Arc<Notify>;
    /// Told when the serving host may be gone or no longer the writer.
    fn writer_doubt(&self) -> Arc<Notify>;
    /// Whether a server said it is read-only since the last call.
    fn take_read_only(&self) -> bool;

    /// Which server a validated connection reached (see `Probe::identity`).
    fn server_of(&self, proof: &Self::Proof) -> Option<String>;
}

/// The validated connection, the server it is logged in to, and which server that is.
pub(super) type ReaderProof = (ServerConn, Arc<UpstreamTarget>, Option<String>);

impl Upstream for Pools {
    type Proof = ReaderProof;
    type Probes = super::probes::Kept;

    async fn recheck(
        &self,
        kept: &mut Self::Probes,
        hosts: &[HostPort],
        creds: &Credentials,
    ) -> Option<Vec<Probe>> {
        let base = self.target();
        let targets: Vec<_> = hosts.iter().map(|h| base.at(h).ok()).collect();
        // Short: the engine waits on this, and a host that is slow to answer is a reason for
        // the full search (whose patience with silent hosts is its own) anyway.
        let timeout = base.connect_timeout.min(RECHECK_WAIT);
        let readings = kept.ask_all(&targets, creds, timeout).await;
        let checked = std::time::SystemTime::now();
        (hosts.iter().zip(readings))
            .map(|(h, r)| {
                Some(Probe {
                    host: h.clone(),
                    role: Ok(r.role.ok()?),
                    refused_login: false,
                    checked,
                    identity: None,
                })
            })
            .collect()
    }

    fn generation(&self) -> u64 {
        Pools::generation(self)
    }

    fn current(&self) -> Arc<Credentials> {
        self.current_creds()
    }

    fn serving(&self) -> HostPort {
        self.target().address()
    }

    async fn validate(
        &self,
        creds: &Credentials,
        generation: u64,
        host: &HostPort,
    ) -> Result<Self::Proof, String> {
        if let Some(spread) = self.spread()
            && *host == self.serving()
        {
            return super::readers::validate(self, spread, creds, generation).await;
        }
        let current = self.target();
        let target = match current.address() == *host {
            true => current,
            false => Arc::new(current.at(host).map_err(|e| e.to_string())?),
        };
        let mut conn = health_check(&target, creds, generation, self.database())
            .await
            .map_err(|e| e.to_string())?;
        let server = writer::server_identity(&mut conn).await;
        if let Some(query) = target.parity_query.clone() {
            super::parity::check(self, &mut conn, &query, target.connect_timeout).await?;
        }
        Ok((conn, target, server))
    }

    async fn probe(
        &self,
        hosts: &[HostPort],
        creds: &Credentials,
        attrs: TargetSessionAttrs,
    ) -> Vec<Probe> {
        writer::probe_all(&self.target(), hosts, creds, attrs).await
    }

    fn publish(&self, creds: Credentials, (conn, target, _): Self::Proof) -> u64 {
        Pools::publish_to(self, creds, target, conn)
    }

    fn adopt(&self, (conn, target, _): Self::Proof) {
        Pools::adopt(self, conn, &target)
    }

    fn drain_timeout(&self) -> std::time::Duration {
        self.config().drain_timeout
    }

    async fn drained(&self, generation: u64) {
        Pools::drained(self, generation).await
    }

    fn auth_failed(&self) -> Arc<Notify> {
        self.auth_failed.clone()
    }

    fn writer_doubt(&self) -> Arc<Notify> {
        self.writer_doubt.clone()
    }

    fn take_read_only(&self) -> bool {
        self.read_only_seen
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    fn server_of(&self, proof: &Self::Proof) -> Option<String> {
        proof.2.clone()
    }
}
