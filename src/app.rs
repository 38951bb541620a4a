//! Wiring only: build every part from [`Config`], bind the listeners, spawn the named tasks,
//! and shut down in order. The shutdown order lives here and nowhere else:
//!
//! 1. the shutdown token fires: `/readyz` answers 503 and the client listener stops accepting;
//! 2. idle sessions close with 57P01; sessions inside a transaction finish it first;
//! 3. after `listen.shutdown_timeout` the remaining sessions are dropped;
//! 4. the admin listener stops last.

use crate::admin::{self, AdminState};
use crate::backend::UpstreamTarget;
use crate::config::{Config, SourceKind};
use crate::frontend::{self, Frontend, cancel::CancelRegistry, scram::ClientAuth};
use crate::pool::Pools;
use crate::reload::Reloader;
use crate::rotation::breaker::Breaker;
use crate::rotation::{Engine, EngineParts, RotationHandle, RotationStatus};
use crate::secrets::cache::{Cache, CacheKey};
use crate::secrets::fallback::Fallback;
use crate::secrets::provider::{EventSource, FileProvider, FileWatcher, SecretProvider, Stage};
use crate::secrets::{Credentials, SecretString, aws, vault};
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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
        let (provider, events) = source(&cfg).await?;
        let cache = cache(&cfg)?;
        let creds = initial_credentials(provider.as_ref(), cache.as_ref()).await?;
        tracing::info!(source = provider.kind(), version = %creds.version, username = %creds.username, "credential loaded");
        let status = Arc::new(RotationStatus::new(
            provider.kind(),
            creds.version.clone(),
            creds.username.clone(),
        ));
        let target = Arc::new(UpstreamTarget::from_config(&cfg.upstream)?);
        let workers = worker_runtimes(cfg.listen.workers)?;
        let mut handles = vec![tokio::runtime::Handle::current()];
        handles.extend(workers.iter().map(|rt| rt.handle().clone()));
        let pools = Arc::new(Pools::new(cfg.pool.clone(), target, creds, handles));
        let ready = Arc::new(AtomicBool::new(false));
        let tracker = TaskTracker::new();
        let parts = EngineParts {
            provider,
            events,
            pools: pools.clone(),
            endpoint: cfg.upstream.clone(),
            allow_endpoint_change: cfg.credentials.allow_endpoint_change,
            refresh_interval: cfg.credentials.refresh_interval,
            breaker: Breaker::new(
                cfg.credentials.breaker_failures,
                cfg.credentials.breaker_cooldown,
            ),
            cache: cache.map(Arc::new),
            status: status.clone(),
            ready: ready.clone(),
        };
        let rotation = spawn_engine(parts, &shutdown, &tracker);

        let admin_stop = CancellationToken::new();
        let state = AdminState {
            ready,
            shutdown: shutdown.clone(),
            prometheus,
            pools: pools.clone(),
            status,
            rotation: rotation.clone(),
            token: admin_token(&cfg)?,
            started: SystemTime::now(),
            max_connections: cfg.admin.max_connections,
        };
        let admin_done = spawn_admin(self.admin, state, admin_stop.clone())?;
        let fe = frontend(&cfg, pools.clone(), &shutdown)?;
        if let Some(reloads) = self.reloads {
            let reloader = Reloader::new(cfg.clone(), fe.clone(), pools, rotation);
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
    tracing::info!(addr = %first.local_addr()?, mode = ?cfg.pool.mode, workers = cfg.listen.workers, "accepting clients");
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

/// Starts the rotation engine (the only writer of pool generations) as a tracked task.
fn spawn_engine(
    parts: EngineParts<Pools>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> RotationHandle {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tracker.spawn(Engine::new(parts).run(rx, shutdown.clone(), tracker.clone()));
    RotationHandle::new(tx)
}

fn frontend(
    cfg: &Config,
    pools: Arc<Pools>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Frontend>> {
    Ok(Arc::new(Frontend {
        tls: arc_swap::ArcSwapOption::new(client_tls(cfg)?.map(Arc::new)),
        auth: arc_swap::ArcSwap::from_pointee(ClientAuth::from_config(&cfg.clients)),
        mode: cfg.pool.mode,
        database: cfg.upstream.database.clone(),
        listen: cfg.listen.clone(),
        pools,
        slots: Arc::new(tokio::sync::Semaphore::new(cfg.listen.max_clients)),
        pending: frontend::pending::Pending::new(cfg.listen.max_pending_auth),
        cancels: Arc::new(CancelRegistry::default()),
        shutdown: shutdown.clone(),
        transactions: metrics::counter!("rotagate_transactions_total"),
        known: Default::default(),
        lists: Default::default(),
    }))
}

type Source = (Arc<dyn SecretProvider>, Vec<Box<dyn EventSource>>);

/// The configured credential sources (the primary, then fallbacks in order) and the events
/// that say the credential may have changed.
async fn source(cfg: &Config) -> anyhow::Result<Source> {
    let mut providers = Vec::new();
    let mut events = Vec::new();
    for kind in &cfg.credentials.sources {
        let (provider, mut more) = one_source(cfg, *kind).await?;
        providers.push(provider);
        events.append(&mut more);
    }
    let provider: Arc<dyn SecretProvider> = match providers.len() {
        1 => providers.remove(0),
        _ => Arc::new(Fallback::new(providers)),
    };
    Ok((provider, events))
}

async fn one_source(cfg: &Config, kind: SourceKind) -> anyhow::Result<Source> {
    let c = &cfg.credentials;
    match (kind, &c.file, &c.aws, &c.vault) {
        (SourceKind::File, Some(f), _, _) => {
            let watcher = FileWatcher {
                path: f.path.clone(),
                interval: Duration::from_millis(250),
            };
            let provider = FileProvider {
                path: f.path.clone(),
            };
            Ok((Arc::new(provider), vec![Box::new(watcher)]))
        }
        (SourceKind::Aws, _, Some(a), _) => {
            let (provider, listener) = aws::source(a).await?;
            let events: Vec<Box<dyn EventSource>> = match listener {
                Some(l) => vec![Box::new(l)],
                None => {
                    tracing::info!(every = ?c.refresh_interval, "no credentials.aws.queue_url: rotations are noticed by the periodic check only");
                    vec![]
                }
            };
            Ok((Arc::new(provider), events))
        }
        (SourceKind::Vault, _, _, Some(v)) => vault::source(v).await,
        (kind, ..) => anyhow::bail!("credential source {kind:?} has no section"),
    }
}

fn cache(cfg: &Config) -> anyhow::Result<Option<Cache>> {
    let Some(path) = &cfg.credentials.cache_file else {
        return Ok(None);
    };
    let key = match (&cfg.credentials.cache_key, &cfg.credentials.cache_key_file) {
        (Some(k), _) => CacheKey::from_base64(k)?,
        (None, Some(file)) => CacheKey::from_file(file)?,
        (None, None) => anyhow::bail!(
            "credentials.cache_file needs ROTAGATE_CACHE_KEY or credentials.cache_key_file"
        ),
    };
    Ok(Some(Cache::new(path.clone(), key, &cfg.upstream.database)))
}

/// The source's credential; when the source cannot be read, the last-known-good cache's. A
/// cache that does not decrypt stops the start: it is never served.
async fn initial_credentials(
    provider: &dyn SecretProvider,
    cache: Option<&Cache>,
) -> anyhow::Result<Credentials> {
    let err = match provider.fetch(Stage::Current).await {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let Some(cache) = cache else {
        anyhow::bail!(
            "cannot read the credential from the {} source: {err}",
            provider.kind()
        );
    };
    match cache.load()? {
        Some(c) => {
            tracing::warn!(error = %err, version = %c.version, "credential source unavailable; starting from the encrypted cache");
            Ok(c)
        }
        None => anyhow::bail!(
            "cannot read the credential from the {} source ({err}) and the cache is empty",
            provider.kind()
        ),
    }
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
