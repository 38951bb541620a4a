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

/// A checked-out upstream connection; dropping it checks it in (or closes it when broken).
pub type Pooled = PooledConnection<'static, Manager>;

/// One credential generation and its pool.
pub struct Generation {
    pub id: u64,
    pub creds: Arc<Credentials>,
    pub pool: bb8::Pool<Manager>,
    pub published: Instant,
    last_error: Arc<Mutex<Option<String>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("timed out after {waited:?} waiting for an upstream connection")]
    Timeout {
        waited: Duration,
        last: Option<String>,
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
    cfg: PoolConfig,
    target: Arc<UpstreamTarget>,
    current_id: Arc<AtomicU64>,
    current: ArcSwap<Generation>,
    draining: Mutex<Vec<Arc<Generation>>>,
    wait_seconds: metrics::Histogram,
}

impl Pools {
    /// Pools serving `creds` as generation 1. No connection is opened until needed (or
    /// `min_idle` asks for some).
    pub fn new(cfg: PoolConfig, target: Arc<UpstreamTarget>, creds: Credentials) -> Self {
        let current_id = Arc::new(AtomicU64::new(1));
        let first = build(&cfg, &target, &current_id, Arc::new(creds), 1);
        Self {
            cfg,
            target,
            current_id,
            current: ArcSwap::from_pointee(first),
            draining: Mutex::new(Vec::new()),
            wait_seconds: metrics::histogram!("rotagate_pool_wait_seconds"),
        }
    }

    /// A connection from the current generation, waiting up to `pool.acquire_timeout`.
    pub async fn acquire(&self) -> Result<Pooled, PoolError> {
        let generation = self.current.load_full();
        let started = Instant::now();
        let result = generation.pool.get_owned().await;
        self.wait_seconds.record(started.elapsed().as_secs_f64());
        result.map_err(|e| match e {
            RunError::User(e) => PoolError::Backend(e),
            RunError::TimedOut => PoolError::Timeout {
                waited: self.cfg.acquire_timeout,
                last: generation
                    .last_error
                    .lock()
                    .expect("last_error lock")
                    .clone(),
            },
        })
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
        let current = self.current.load_full();
        let mut out = vec![counts(&current, true)];
        let mut draining = self.draining.lock().expect("draining lock");
        draining.retain(|g| g.pool.state().connections > 0);
        out.extend(draining.iter().map(|g| counts(g, false)));
        out
    }

    /// Makes `creds` the current generation. The caller has validated them.
    ///
    /// 1. build the new generation's pool (connections open lazily);
    /// 2. raise the current-generation mark, so older connections close on check-in;
    /// 3. swap the pool clients acquire from;
    /// 4. keep the old generation listed until its last connection is gone.
    pub fn publish(&self, creds: Credentials) -> u64 {
        let id = self.current_id.load(Ordering::Acquire) + 1;
        let next = Arc::new(build(
            &self.cfg,
            &self.target,
            &self.current_id,
            Arc::new(creds),
            id,
        ));
        self.current_id.store(id, Ordering::Release);
        let old = self.current.swap(next);
        self.draining.lock().expect("draining lock").push(old);
        id
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
        published: Instant::now(),
        last_error,
    }
}

/// Marks a connection so that checking it in closes it.
pub fn discard(conn: &mut ServerConn) {
    conn.broken = true;
}
