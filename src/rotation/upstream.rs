//! The seam between the rotation engine and the pools it publishes to: validate a credential,
//! publish it, adopt a validated connection, wait for a generation to drain, and be told of a
//! refused login. [`Pools`] implements it with real logins; the engine's unit tests use a fake
//! that runs in paused time.

use super::checks::health_check;
use crate::backend::ServerConn;
use crate::pool::Pools;
use crate::secrets::Credentials;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Notify;

pub trait Upstream: Send + Sync + 'static {
    /// What a successful validation leaves behind (a logged-in connection) for the pool.
    type Proof: Send + 'static;

    /// The generation being served.
    fn generation(&self) -> u64;
    /// The credential being served.
    fn current(&self) -> Arc<Credentials>;
    /// Logs in with `creds` as generation `generation` the way client connections will, and
    /// checks the session works. The error is for the log and the audit event.
    fn validate(
        &self,
        creds: &Credentials,
        generation: u64,
    ) -> impl Future<Output = Result<Self::Proof, String>> + Send;
    /// Makes `creds` the next generation, with `proof` as its first connection; the old one
    /// starts draining. Returns the new generation.
    fn publish(&self, creds: Credentials, proof: Self::Proof) -> u64;
    /// Gives the current generation a connection validated with its own credential.
    fn adopt(&self, proof: Self::Proof);
    /// How long a retired generation's connections may stay in use (`pool.drain_timeout`).
    fn drain_timeout(&self) -> std::time::Duration;
    /// Resolves once `generation` has no connection left (the engine bounds the wait).
    fn drained(&self, generation: u64) -> impl Future<Output = ()> + Send;
    /// Told when an upstream login of the current generation is refused.
    fn auth_failed(&self) -> Arc<Notify>;
}

impl Upstream for Pools {
    type Proof = ServerConn;

    fn generation(&self) -> u64 {
        Pools::generation(self)
    }

    fn current(&self) -> Arc<Credentials> {
        self.current_creds()
    }

    async fn validate(&self, creds: &Credentials, generation: u64) -> Result<ServerConn, String> {
        health_check(&self.target(), creds, generation, self.database())
            .await
            .map_err(|e| e.to_string())
    }

    fn publish(&self, creds: Credentials, proof: ServerConn) -> u64 {
        Pools::publish(self, creds, proof)
    }

    fn adopt(&self, proof: ServerConn) {
        Pools::adopt(self, proof)
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
}
