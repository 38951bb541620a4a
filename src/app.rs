//! Wiring only: build every part from [`Config`], bind the listeners, spawn the named tasks,
//! and shut down in order. The shutdown order lives here and nowhere else:
//!
//! 1. the shutdown token fires: `/readyz` answers 503 and the client listener stops accepting;
//! 2. idle sessions close with 57P01; sessions inside a transaction finish it first;
//! 3. after `listen.shutdown_timeout` the remaining sessions are dropped;
//! 4. the admin listener stops last.

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::databases::Databases;
use crate::frontend::{self, Frontend, cancel::CancelRegistry, scram::ClientAuth};
use crate::reload::Reloader;
use crate::secrets::SecretString;
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A configured proxy with its listeners bound, ready to [`App::run`].
pub struct App {
    cfg: Config,
    /// One client listener per worker (`listen.workers`), the first on the caller's runtime.
    proxy: Vec<TcpListener>,
    admin: TcpListener,
    reloads: Option<tokio::sync::mpsc::Receiver<Config>>,
}

impl App {
    /// Binds the client and admin listeners (port 0 picks a free port).
    pub async fn bind(cfg: Config) -> anyhow::Result<Self> {
        crate::secrets::private::check(&cfg)?;
        let proxy = bind_proxy(cfg.listen.addr, cfg.listen.workers)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen.addr))?;
        let admin = TcpListener::bind(cfg.admin.addr)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", cfg.admin.addr))?;
        Ok(Self {
            cfg,
            proxy,
            admin,
            reloads: None,
        })
    }

    /// Where new configurations go while running (SIGHUP in `main.rs`): see [`Reloader`].
    pub fn reloads(&mut self) -> tokio::sync::mpsc::Sender<Config> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        self.reloads = Some(rx);
        tx
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy[0]
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
        let workers = worker_runtimes(cfg.listen.workers)?;
        let mut handles = vec![tokio::runtime::Handle::current()];
        handles.extend(workers.iter().map(|rt| rt.handle().clone()));
        let tracker = TaskTracker::new();
        let databases = Arc::new(Databases::new(handles, shutdown.clone(), tracker.clone()));
        databases.start_all(&cfg.databases).await?;

        let admin_stop = CancellationToken::new();
        let state = AdminState {
            databases: databases.clone(),
            shutdown: shutdown.clone(),
            prometheus,
            token: admin_token(&cfg)?,
            started: SystemTime::now(),
            max_connections: cfg.admin.max_connections,
            metrics_require_token: cfg.admin.metrics_require_token,
        };
        let admin_done = spawn_admin(self.admin, state, admin_stop.clone())?;
        let fe = frontend(&cfg, databases.routes(), &shutdown)?;
        if let Some(reloads) = self.reloads {
            let reloader = Reloader::new(cfg.clone(), fe.clone(), databases);
            tokio::spawn(reloader.serve(reloads));
        }
        serve_clients(self.proxy, workers, fe, &tracker, &cfg).await?;
        admin_stop.cancel();
        let _ = tokio::time::timeout(ADMIN_STOP, admin_done).await;
        Ok(())
    }
}

/// The client listeners: one socket, or with several workers one per worker on the same
/// address (SO_REUSEPORT: the kernel spreads new connections over them).
async fn bind_proxy(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<TcpListener>> {
    if workers == 1 {
        return Ok(vec![TcpListener::bind(addr).await?]);
    }
    let first = reuseport(addr)?;
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(reuseport(addr)?);
    }
    Ok(all)
}

fn reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The event loops of workers 1..N (worker 0 is the caller's): one thread each, started by
/// [`serve_clients`].
fn worker_runtimes(workers: usize) -> anyhow::Result<Vec<tokio::runtime::Runtime>> {
    (1..workers)
        .map(|_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a worker's event loop")
        })
        .collect()
}

/// Serves clients until shutdown, then drains them as the module comment says. Workers 1..N
/// each run their listener and their clients on their own thread and event loop; worker 0 runs
/// here, beside the rotation engine.
async fn serve_clients(
    proxy: Vec<TcpListener>,
    workers: Vec<tokio::runtime::Runtime>,
    fe: Arc<Frontend>,
    tracker: &TaskTracker,
    cfg: &Config,
) -> anyhow::Result<()> {
    let mut listeners = proxy.into_iter();
    let first = listeners.next().context("no client listener")?;
    for (k, (listener, runtime)) in listeners.zip(workers).enumerate() {
        let (listener, fe, tracker) = (listener.into_std()?, fe.clone(), tracker.clone());
        std::thread::Builder::new()
            .name(format!("rotagate-worker-{}", k + 1))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => frontend::serve(l, fe, tracker.clone(), k + 1).await,
                        Err(e) => tracing::error!(error = %e, "a worker cannot listen"),
                    }
                    // Its sessions live on this event loop: keep it running until they end.
                    tracker.wait().await;
                });
            })?;
    }
    let databases: Vec<&str> = cfg.databases.iter().map(|d| d.name.as_str()).collect();
    tracing::info!(addr = %first.local_addr()?, ?databases, workers = cfg.listen.workers, "accepting clients");
    frontend::serve(first, fe, tracker.clone(), 0).await;
    tracing::info!("shutting down: draining client sessions");
    tracker.close();
    if tokio::time::timeout(cfg.listen.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?cfg.listen.shutdown_timeout, "sessions still open at the shutdown deadline; closing them");
    }
    Ok(())
}

fn frontend(
    cfg: &Config,
    routes: Arc<arc_swap::ArcSwap<frontend::Routes>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Frontend>> {
    Ok(Arc::new(Frontend {
        tls: arc_swap::ArcSwapOption::new(client_tls(cfg)?.map(Arc::new)),
        auth: arc_swap::ArcSwap::from_pointee(ClientAuth::from_config(&cfg.clients)),
        listen: cfg.listen.clone(),
        routes,
        slots: Arc::new(tokio::sync::Semaphore::new(cfg.listen.max_clients)),
        message_budget: crate::frontend::relay::budget::semaphore(cfg.listen.message_memory),
        pending: frontend::pending::Pending::new(cfg.listen.max_pending_auth),
        cancels: Arc::new(CancelRegistry::default()),
        shutdown: shutdown.clone(),
        lists: Default::default(),
        sessions: Default::default(),
        per_user: Default::default(),
    }))
}

fn admin_token(cfg: &Config) -> anyhow::Result<Option<SecretString>> {
    let Some(path) = &cfg.admin.token_file else {
        if !cfg.admin.addr.ip().is_loopback() {
            tracing::warn!(
                addr = %cfg.admin.addr,
                "admin.allow_unauthenticated: the admin listener is off loopback without a token; \
                 anyone who reaches it can POST /rotate"
            );
        }
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read admin.token_file {}", path.display()))?;
    let token = text.trim().to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "admin.token_file {} is empty",
        path.display()
    );
    Ok(Some(SecretString::new(token)))
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// How long the admin listener gets to finish its requests once told to stop.
const ADMIN_STOP: Duration = Duration::from_secs(1);

/// The admin listener runs on a thread and event loop of its own: health, readiness and
/// metrics answer whatever the client sessions are doing. The receiver resolves when it has
/// stopped.
fn spawn_admin(
    listener: TcpListener,
    state: AdminState,
    stop: CancellationToken,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let listener = listener.into_std()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("rotagate-admin".into())
        .spawn(move || {
            runtime.block_on(serve_admin(listener, state, stop));
            let _ = done.send(());
        })?;
    Ok(finished)
}

async fn serve_admin(listener: std::net::TcpListener, state: AdminState, stop: CancellationToken) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "admin listener failed"),
    };
    let max = state.max_connections;
    // Histogram samples wait in the recorder until folded in: without a scrape they would pile
    // up (8 bytes each), so fold them in every few seconds.
    let recorder = state.prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        loop {
            every.tick().await;
            recorder.run_upkeep();
        }
    });
    let app = admin::listener::limited(admin::router(state));
    admin::listener::serve(listener, app, max, stop, ADMIN_STOP).await;
}

pub(crate) fn client_tls(cfg: &Config) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
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
