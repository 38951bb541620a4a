//! Wiring only: build every part from [`Config`], bind the listeners, spawn the named tasks,
//! and shut down in order. The shutdown order lives here and nowhere else:
//!
//! 1. the shutdown token fires: `/readyz` answers 503 and the client listener stops accepting;
//! 2. idle sessions close with 57P01; sessions inside a transaction finish it first;
//! 3. after `listen.shutdown_timeout` the remaining sessions are dropped;
//! 4. the admin listener stops last.

use crate::admin::{self, AdminState};
use crate::backend::{UpstreamTarget, query};
use crate::config::{Config, SourceKind};
use crate::frontend::{self, Frontend, cancel::CancelRegistry, scram::ClientAuth};
use crate::pool::Pools;
use crate::secrets;
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A configured proxy with its listeners bound, ready to [`App::run`].
pub struct App {
    cfg: Config,
    proxy: TcpListener,
    admin: TcpListener,
}

impl App {
    /// Binds the client and admin listeners (port 0 picks a free port).
    pub async fn bind(cfg: Config) -> anyhow::Result<Self> {
        let proxy = TcpListener::bind(cfg.listen.addr)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen.addr))?;
        let admin = TcpListener::bind(cfg.admin.addr)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", cfg.admin.addr))?;
        Ok(Self { cfg, proxy, admin })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Runs until `shutdown` fires, then drains as the module comment says.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let prometheus = admin::metrics::install();
        let cfg = self.cfg;
        let creds = initial_credentials(&cfg)?;
        tracing::info!(source = "file", version = %creds.version, username = %creds.username, "credential loaded");
        let target = Arc::new(UpstreamTarget::from_config(&cfg.upstream)?);
        let pools = Arc::new(Pools::new(cfg.pool.clone(), target, creds));
        let ready = Arc::new(AtomicBool::new(false));
        let tracker = TaskTracker::new();
        let admin_stop = CancellationToken::new();

        let state = AdminState {
            ready: ready.clone(),
            shutdown: shutdown.clone(),
            prometheus,
            pools: pools.clone(),
            source: "file",
            started: SystemTime::now(),
        };
        let admin_task = tokio::spawn(serve_admin(self.admin, state, admin_stop.clone()));
        tracker.spawn(first_check(pools.clone(), ready.clone(), shutdown.clone()));

        let fe = Arc::new(Frontend {
            tls: client_tls(&cfg)?,
            auth: ClientAuth::from_config(&cfg.clients),
            mode: cfg.pool.mode,
            database: cfg.upstream.database.clone(),
            listen: cfg.listen.clone(),
            pools,
            cancels: Arc::new(CancelRegistry::default()),
            shutdown: shutdown.clone(),
            transactions: metrics::counter!("rotagate_transactions_total"),
        });
        tracing::info!(addr = %self.proxy.local_addr()?, mode = ?cfg.pool.mode, "accepting clients");
        frontend::serve(self.proxy, fe, tracker.clone()).await;

        tracing::info!("shutting down: draining client sessions");
        tracker.close();
        if tokio::time::timeout(cfg.listen.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?cfg.listen.shutdown_timeout, "sessions still open at the shutdown deadline; closing them");
        }
        admin_stop.cancel();
        let _ = admin_task.await;
        Ok(())
    }
}

fn initial_credentials(cfg: &Config) -> anyhow::Result<secrets::Credentials> {
    match (cfg.credentials.source, &cfg.credentials.file) {
        (SourceKind::File, Some(f)) => Ok(secrets::file::read_credentials(&f.path)?),
        (kind, _) => anyhow::bail!("credential source {kind:?} is not available in this build"),
    }
}

/// Readiness: the credential logs in and answers `SELECT 1`. Retries until it does.
async fn first_check(pools: Arc<Pools>, ready: Arc<AtomicBool>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let attempt = async {
            let mut conn = pools.acquire().await.map_err(|e| e.to_string())?;
            query::simple(&mut conn, "SELECT 1")
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                tracing::info!(
                    generation = pools.generation(),
                    "upstream login validated; ready"
                );
                return;
            }
            Err(e) => tracing::warn!(error = %e, "upstream not usable yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn serve_admin(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    let app = admin::router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin listener failed");
    }
}

fn client_tls(cfg: &Config) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let Some(files) = &cfg.listen.tls else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read listen.tls_cert {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read listen.tls_key {}", files.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::backend::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("listen.tls_cert and listen.tls_key do not form a usable certificate")?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}
