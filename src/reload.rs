//! What SIGHUP changes while rotagate runs, without dropping a connection: client users, the
//! client TLS certificate (re-read from its files), pool size and timeouts (the serving
//! credential is republished as a new generation built with them; the old one drains as in a
//! rotation) and, in `main.rs`, the log filter. Settings that need a restart (listen and admin
//! addresses, the upstream, the pool mode, the credential sources) are reported and ignored.

use crate::app::client_tls;
use crate::config::Config;
use crate::frontend::{Frontend, scram::ClientAuth};
use crate::pool::Pools;
use crate::rotation::RotationHandle;
use std::sync::Arc;
use tokio::sync::Mutex;

pub struct Reloader {
    running: Mutex<Config>,
    frontend: Arc<Frontend>,
    pools: Arc<Pools>,
    rotation: RotationHandle,
}

impl Reloader {
    pub fn new(
        running: Config,
        frontend: Arc<Frontend>,
        pools: Arc<Pools>,
        rotation: RotationHandle,
    ) -> Self {
        Self {
            running: Mutex::new(running),
            frontend,
            pools,
            rotation,
        }
    }

    /// Applies each configuration that arrives (from SIGHUP in `main.rs`), in order.
    pub async fn serve(self, mut reloads: tokio::sync::mpsc::Receiver<Config>) {
        while let Some(new) = reloads.recv().await {
            self.apply(new).await;
        }
    }

    /// Applies what can change in place and reports the rest.
    pub async fn apply(&self, mut new: Config) {
        let mut running = self.running.lock().await;
        let ignored = needs_restart(&running, &new);
        if !ignored.is_empty() {
            tracing::warn!(fields = ?ignored, "these settings need a restart; the running values stay");
        }
        keep_restart_fields(&running, &mut new);
        self.frontend
            .auth
            .store(Arc::new(ClientAuth::from_config(&new.clients)));
        let tls = match client_tls(&new) {
            Ok(tls) => {
                self.frontend.tls.store(tls.map(Arc::new));
                new.listen.tls.is_some()
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "cannot reload the client TLS certificate; the old one stays"
                );
                false
            }
        };
        let pool_changed = format!("{:?}", running.pool) != format!("{:?}", new.pool);
        *running = new.clone();
        drop(running);
        tracing::info!(
            clients = new.clients.len(),
            tls_reloaded = tls,
            pool_changed,
            "configuration reloaded"
        );
        if pool_changed {
            self.pools.reconfigure(new.pool.clone());
            match self.rotation.reload_pool().await {
                Some(r) => {
                    tracing::info!(outcome = ?r.outcome, generation = r.generation, reason = r.reason.as_deref().unwrap_or(""), "pool settings applied")
                }
                None => tracing::warn!(
                    "the rotation engine has stopped; pool settings apply at the next rotation"
                ),
            }
        }
    }
}

/// The settings that differ and cannot change without a restart, by config path.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    // The TLS files may change (a renewed certificate); turning TLS on or off may not.
    let listen = |c: &Config| {
        let mut l = c.listen.clone();
        l.tls = None;
        (l, c.listen.tls.is_some())
    };
    let checks = [
        ("listen", differs(&listen(old), &listen(new))),
        ("admin", differs(&old.admin, &new.admin)),
        ("upstream", differs(&old.upstream, &new.upstream)),
        ("pool.mode", old.pool.mode != new.pool.mode),
        ("credentials", differs(&old.credentials, &new.credentials)),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(field, _)| field)
        .collect()
}

/// `new` with the running values of everything that needs a restart.
fn keep_restart_fields(old: &Config, new: &mut Config) {
    let tls_files = new.listen.tls.take().filter(|_| old.listen.tls.is_some());
    new.listen = old.listen.clone();
    new.listen.tls = tls_files.or_else(|| old.listen.tls.clone());
    new.admin = old.admin.clone();
    new.upstream = old.upstream.clone();
    new.pool.mode = old.pool.mode;
    new.credentials = old.credentials.clone();
}
