//! Upstream connection pools by credential generation. [`Pools`] serves connections from the
//! current generation and keeps older ones until they drain. Only the rotation engine calls
//! [`Pools::publish`]; everyone else only acquires.

mod manager;

use crate::backend::{BackendError, ServerConn, UpstreamTarget};
use crate::config::PoolConfig;
use crate::secrets::Credentials;
use arc_swap::ArcSwap;
use bb8::{PooledConnection, RunError};
use manager::Manager;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// A checked-out upstream connection; dropping it checks it in (or closes it when broken).
pub type Pooled = PooledConnection<'static, Manager>;

/// One credential generation and its pool.
pub struct Generation {
    pub id: u64,
    pub creds: Arc<Credentials>,
    pub pool: bb8::Pool<Manager>,
    last_error: Arc<Mutex<Option<LastError>>>,
}

/// The last failed login of a generation: what kind of failure (safe to show a client) and
/// its full text (for the log only: it may name the upstream user or host).
pub type LastError = (&'static str, String);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("timed out after {waited:?} waiting for an upstream connection")]
    Timeout {
        waited: Duration,
        last: Option<LastError>,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Counts for one live generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerationCounts {
    pub generation: u64,
    pub connections: u32,
    pub idle: u32,
    pub current: bool,
}

pub struct Pools {
    /// Swapped on reload; each new generation is built from the current one.
    cfg: arc_swap::ArcSwap<PoolConfig>,
    target: Arc<UpstreamTarget>,
    current_id: Arc<AtomicU64>,
    current: ArcSwap<Generation>,
    draining: Mutex<Vec<Arc<Generation>>>,
    wait_seconds: metrics::Histogram,
    /// The current generation id, for waiters that must move to a newly published pool.
    changed: watch::Sender<u64>,
    /// Signalled when an upstream login of the current generation is refused (28P01/28000).
    pub auth_failed: Arc<Notify>,
}

impl Pools {
    /// Pools serving `creds` as generation 1. No connection is opened until needed (or
    /// `min_idle` asks for some).
    pub fn new(cfg: PoolConfig, target: Arc<UpstreamTarget>, creds: Credentials) -> Self {
        let current_id = Arc::new(AtomicU64::new(1));
        let auth_failed = Arc::new(Notify::new());
        let first = build(&cfg, &target, &current_id, &auth_failed, Arc::new(creds), 1);
        let cfg = arc_swap::ArcSwap::from_pointee(cfg);
        Self {
            cfg,
            target,
            current_id,
            current: ArcSwap::from_pointee(first),
            draining: Mutex::new(Vec::new()),
            wait_seconds: metrics::histogram!("rotagate_pool_wait_seconds"),
            changed: watch::channel(1).0,
            auth_failed,
        }
    }

    /// A connection from the current generation, waiting up to `pool.acquire_timeout` in all.
    /// A waiter moves to a generation published while it waits: during a rotation window the
    /// old credential's logins fail, and the new pool is where connections will come from.
    pub async fn acquire(&self) -> Result<Pooled, PoolError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.cfg.load().acquire_timeout;
        let mut changed = self.changed.subscribe();
        let result = loop {
            let generation = self.current.load_full();
            changed.borrow_and_update();
            let got = tokio::select! {
                biased;
                r = tokio::time::timeout_at(deadline, generation.pool.get_owned()) => r,
                _ = changed.changed() => continue,
            };
            break match got {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(RunError::User(e))) => Err(PoolError::Backend(e)),
                Ok(Err(RunError::TimedOut)) | Err(_) => Err(PoolError::Timeout {
                    waited: self.cfg.load().acquire_timeout,
                    last: generation
                        .last_error
                        .lock()
                        .expect("last_error lock")
                        .clone(),
                }),
            };
        };
        self.wait_seconds.record(started.elapsed().as_secs_f64());
        result
    }

    /// Resolves `pool.drain_timeout` after a generation newer than `generation` is published:
    /// the moment a connection of `generation` must close even if it is in use.
    pub fn retirement(
        &self,
        generation: u64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut changed = self.changed.subscribe();
        let drain = self.cfg.load().drain_timeout;
        async move {
            while *changed.borrow_and_update() <= generation {
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            tokio::time::sleep(drain).await;
        }
    }

    pub fn generation(&self) -> u64 {
        self.current_id.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub fn target(&self) -> &Arc<UpstreamTarget> {
        &self.target
    }

    /// Connection counts of the current and every still-draining generation.
    pub fn counts(&self) -> Vec<GenerationCounts> {
        let mut out = vec![counts(&self.current.load_full(), true)];
        out.extend(self.draining().iter().map(|g| counts(g, false)));
        out
    }

    /// Makes `creds` the current generation; `validated` is the connection that proved them and
    /// becomes the new pool's first. Only the rotation engine calls this.
    ///
    /// 1. build the new generation's pool and give it the validated connection;
    /// 2. raise the current-generation mark, so older connections close on check-in;
    /// 3. swap the pool clients acquire from, and wake waiters so they move to it;
    /// 4. close the old generation's idle connections now; in-flight ones close when checked
    ///    in; the old generation stays listed until its last connection is gone.
    pub fn publish(&self, creds: Credentials, validated: ServerConn) -> u64 {
        let id = self.current_id.load(Ordering::Acquire) + 1;
        let next = Arc::new(build(
            &self.cfg.load(),
            &self.target,
            &self.current_id,
            &self.auth_failed,
            Arc::new(creds),
            id,
        ));
        let mut validated = Box::new(validated);
        validated.generation = id;
        if next.pool.add(validated).is_err() {
            tracing::debug!("the new pool refused its first connection; it will open its own");
        }
        self.current_id.store(id, Ordering::Release);
        let old = self.current.swap(next);
        self.changed.send_replace(id);
        tokio::spawn(close_idle(old.clone()));
        self.draining.lock().expect("draining lock").push(old);
        id
    }

    /// Resolves once a retired generation has no connection left, or at `drain_timeout` (when
    /// the relays close what is left) plus a moment.
    pub async fn drained(&self, generation: &Generation) {
        let deadline =
            tokio::time::Instant::now() + self.cfg.load().drain_timeout + Duration::from_secs(1);
        while generation.pool.state().connections > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The pool settings new generations are built with.
    pub fn config(&self) -> Arc<PoolConfig> {
        self.cfg.load_full()
    }

    /// New pool settings (SIGHUP): they apply to the next generation published; the rotation
    /// engine publishes one at once for a reload (see `Trigger::Reload`).
    pub fn reconfigure(&self, cfg: PoolConfig) {
        self.cfg.store(Arc::new(cfg));
    }

    /// Retired generations whose connections are not all closed yet.
    pub fn draining(&self) -> Vec<Arc<Generation>> {
        let mut draining = self.draining.lock().expect("draining lock");
        draining.retain(|g| g.pool.state().connections > 0);
        draining.clone()
    }
}

/// Checks out and drops a retired pool's idle connections, so they close now rather than at
/// `idle_timeout`. Only idle ones: a checkout when none is idle would open a new connection.
async fn close_idle(generation: Arc<Generation>) {
    while generation.pool.state().idle_connections > 0 {
        match tokio::time::timeout(Duration::from_millis(50), generation.pool.get()).await {
            Ok(Ok(conn)) => drop(conn),
            _ => break,
        }
    }
}

fn counts(g: &Generation, current: bool) -> GenerationCounts {
    let s = g.pool.state();
    GenerationCounts {
        generation: g.id,
        connections: s.connections,
        idle: s.idle_connections,
        current,
    }
}

fn build(
    cfg: &PoolConfig,
    target: &Arc<UpstreamTarget>,
    current: &Arc<AtomicU64>,
    auth_failed: &Arc<Notify>,
    creds: Arc<Credentials>,
    id: u64,
) -> Generation {
    let last_error = Arc::new(Mutex::new(None));
    let manager = Manager {
        target: target.clone(),
        creds: creds.clone(),
        generation: id,
        current: current.clone(),
        last_error: last_error.clone(),
        auth_failed: auth_failed.clone(),
    };
    let pool = bb8::Pool::builder()
        .max_size(cfg.size)
        .min_idle(Some(cfg.min_idle).filter(|n| *n > 0))
        .connection_timeout(cfg.acquire_timeout)
        .idle_timeout(Some(cfg.idle_timeout))
        .max_lifetime(Some(cfg.max_lifetime))
        .queue_strategy(bb8::QueueStrategy::Lifo)
        .test_on_check_out(true)
        .build_unchecked(manager);
    Generation {
        id,
        creds,
        pool,
        last_error,
    }
}
