//! Upstream connections by credential generation, per worker. [`Pools`] hands out connections
//! of the current generation and keeps older ones until they drain. Only the rotation engine
//! publishes; everyone else only acquires.
//!
//! Each worker (one event loop, see `listen.workers`) has its own share of `pool.size` and its
//! own [`Generation`] objects, so a hand-over never touches another thread's state. A
//! generation is published to every worker at once.

#[cfg(test)]
mod clock_tests;
mod connector;
#[cfg(test)]
mod core_tests;
mod counts;
mod generation;
mod shared;
pub mod spread;

pub use counts::GenerationCounts;
pub use generation::{Generation, Limits, Pooled};
pub use spread::Spread;

use crate::backend::{BackendError, ServerConn, UpstreamTarget};
use crate::config::PoolConfig;
use crate::secrets::Credentials;
use arc_swap::ArcSwap;
use connector::Connector;
use shared::Shared;
use spread::Set;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

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
    /// The database was removed from the configuration: no new connection is handed out.
    #[error("the database is no longer served")]
    Closed,
}

/// One worker's generations (each one [`Generation`] per host).
struct Shard {
    connector: Arc<Connector>,
    current: ArcSwap<Set>,
    draining: Mutex<Vec<Arc<Set>>>,
}

pub struct Pools {
    /// Swapped on reload; each new generation is built from the current one.
    cfg: ArcSwap<PoolConfig>,
    current_id: AtomicU64,
    shards: Vec<Shard>,
    wait_seconds: metrics::Histogram,
    /// The configured database these pools serve (the `database` label of their metrics).
    database: Arc<str>,
    /// Set by [`Pools::close`]: the database was removed.
    closed: std::sync::atomic::AtomicBool,
    /// Signalled when an upstream login of the current generation is refused (28P01/28000).
    pub auth_failed: Arc<Notify>,
    /// Signalled when the serving host may be gone or changed role ([`Generation::doubt`]).
    pub writer_doubt: Arc<Notify>,
    /// Set by [`Generation::doubt_read_only`]; taken by the next search.
    pub read_only_seen: Arc<std::sync::atomic::AtomicBool>,
    /// The value `upstream.parity_query` last gave on the serving side (`rotation/parity.rs`).
    pub parity_seen: Mutex<Option<String>>,
    /// A reader entry's hosts in rotation; None for a writer entry (one host per generation).
    spread: Option<Arc<Spread>>,
    /// A reader entry's hosts, in configured order (each generation has one object per host).
    hosts: Vec<Arc<UpstreamTarget>>,
}

impl Pools {
    /// Pools serving `creds` as generation 1, one share per worker runtime in `workers` (at
    /// least one). No connection is opened until needed (or `min_idle` asks for some).
    /// `readers` lists a reader entry's hosts (each then has `pool.size` of its own); empty
    /// for a writer entry, served on `target` alone.
    pub fn new(
        database: &str,
        cfg: PoolConfig,
        (target, readers): (Arc<UpstreamTarget>, Vec<Arc<UpstreamTarget>>),
        creds: Credentials,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Self {
        assert!(!workers.is_empty(), "at least one worker");
        let auth_failed = Arc::new(Notify::new());
        let writer_doubt = Arc::new(Notify::new());
        let read_only_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let creds = Arc::new(creds);
        let database: Arc<str> = database.into();
        let connectors: Vec<_> = workers
            .into_iter()
            .map(|runtime| {
                Arc::new(Connector {
                    auth_failed: auth_failed.clone(),
                    writer_doubt: writer_doubt.clone(),
                    read_only_seen: read_only_seen.clone(),
                    runtime,
                    database: database.clone(),
                    dial: connector::upstream_dial(),
                })
            })
            .collect();
        let spread = (!readers.is_empty()).then(|| {
            let hosts = readers.iter().map(|t| t.address()).collect();
            Arc::new(Spread::new(&database, hosts))
        });
        let targets = match readers.is_empty() {
            true => vec![target],
            false => readers.clone(),
        };
        let firsts = generations(&connectors, &cfg, 1, creds, &targets);
        let shards = connectors
            .into_iter()
            .zip(firsts)
            .map(|(connector, first)| Shard {
                connector,
                current: ArcSwap::new(first),
                draining: Mutex::new(Vec::new()),
            })
            .collect();
        Self {
            cfg: ArcSwap::from_pointee(cfg),
            current_id: AtomicU64::new(1),
            shards,
            wait_seconds: metrics::histogram!("rotagate_pool_wait_seconds", "database" => database.to_string()),
            database,
            closed: Default::default(),
            auth_failed,
            writer_doubt,
            read_only_seen,
            parity_seen: Mutex::new(None),
            spread,
            hosts: readers,
        }
    }

    /// A reader entry's hosts in rotation (None for a writer entry).
    pub fn spread(&self) -> Option<&Arc<Spread>> {
        self.spread.as_ref()
    }

    /// The host an acquire goes to: a writer entry's only one, or one in rotation at random.
    fn pick(&self) -> Option<usize> {
        match &self.spread {
            None => Some(0),
            Some(s) => s.pick(),
        }
    }

    /// Counts a connection handed out on host `i` (a reader entry's per-host transactions).
    fn handed(&self, i: usize, conn: Pooled) -> Pooled {
        if let Some(s) = &self.spread {
            s.count(i);
        }
        conn
    }

    /// An idle connection of the current generation, if one is there now (no waiting).
    pub fn try_idle(&self) -> Option<Pooled> {
        let i = self.pick()?;
        self.shards
            .iter()
            .find_map(|shard| shard.current.load().gens[i].take_idle())
    }

    /// A connection of the current generation for `worker`. An idle one is handed over at once
    /// (no allocation, no timer); otherwise the client queues, up to `pool.acquire_timeout`,
    /// and moves to a generation published while it waits.
    pub async fn acquire(&self, worker: usize) -> Result<Pooled, PoolError> {
        let shard = &self.shards[worker];
        if let Some(i) = self.pick()
            && let Some(conn) = shard.current.load().gens[i].take_idle()
        {
            return Ok(self.handed(i, conn));
        }
        let started = Instant::now();
        let result = self.wait(shard).await;
        self.wait_seconds.record(started.elapsed().as_secs_f64());
        result
    }

    async fn wait(&self, shard: &Shard) -> Result<Pooled, PoolError> {
        let waited = self.cfg.load().acquire_timeout;
        let deadline = tokio::time::Instant::now() + waited;
        let mut last = None;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(PoolError::Closed);
            }
            // Created before the pick: a change of rotation from here on wakes this client.
            let changed = spread::changed(self.spread.as_deref());
            let Some(i) = self.pick() else {
                last = Some(spread::none_in_rotation());
                match tokio::time::timeout_at(deadline, changed).await {
                    Ok(()) => continue,
                    Err(_) => return Err(PoolError::Timeout { waited, last }),
                }
            };
            let g = shard.current.load().gens[i].clone();
            let rx = match g.take_or_wait() {
                Ok(Ok(conn)) => return Ok(self.handed(i, conn)),
                Ok(Err(rx)) => Waiter::new(rx, g.clone()),
                Err(()) => continue,
            };
            tokio::select! {
                got = tokio::time::timeout_at(deadline, rx.recv()) => match got {
                    Ok(Some(conn)) => return Ok(self.handed(i, Pooled::new(conn, g))),
                    // Retired while waiting: the current generation is where connections come from.
                    Ok(None) => continue,
                    Err(_) => {
                        let last = g.last_error().or(last);
                        return Err(PoolError::Timeout { waited, last });
                    }
                },
                // The rotation changed (this host may have left it): pick again. The place in
                // the queue is given up, and a connection handed to it meanwhile goes back.
                () = changed => continue,
            }
        }
    }

    /// Whether a client on `worker` would wait for a connection until another client moves:
    /// every connection is kept by a client between its messages.
    pub fn saturated(&self, worker: usize) -> bool {
        self.saturated_in(&self.shards[worker].current.load())
    }

    fn saturated_in(&self, set: &Set) -> bool {
        // With no host in rotation the wait is for the rotation, not for other clients.
        let mut gens = self.in_rotation(set).peekable();
        gens.peek().is_some() && gens.all(|g| g.saturated())
    }

    /// The objects of `set` for hosts in rotation (a writer entry's one).
    fn in_rotation<'a>(&'a self, set: &'a Set) -> impl Iterator<Item = &'a Arc<Generation>> + 'a {
        let on = move |i: &usize| self.spread.as_ref().is_none_or(|s| s.is_in(*i));
        (0..set.gens.len()).filter(on).map(|i| &set.gens[i])
    }

    /// Resolves once [`Self::saturated`] holds on `worker` (it is looked at again at every
    /// rise of the kept gauge of the generation current when this began).
    pub async fn stuck(&self, worker: usize) {
        let set = self.shards[worker].current.load_full();
        loop {
            let mut rises: Vec<_> = (set.gens.iter())
                .map(|g| Box::pin(g.kept_gauge().rose()))
                .collect();
            for r in &mut rises {
                r.as_mut().enable();
            }
            if self.saturated_in(&set) {
                return;
            }
            futures::future::select_all(rises).await;
        }
    }

    pub fn generation(&self) -> u64 {
        self.current_id.load(Ordering::Acquire)
    }

    /// The current generation and its credential, read together.
    pub fn current_login(&self) -> (u64, Arc<Credentials>) {
        let set = self.shards[0].current.load();
        (set.first().id, set.first().creds.clone())
    }

    /// The credential being served.
    pub fn current_creds(&self) -> Arc<Credentials> {
        self.shards[0].current.load().first().creds.clone()
    }

    /// The server the current generation logs in to.
    pub fn target(&self) -> Arc<UpstreamTarget> {
        self.shards[0].current.load().first().target.clone()
    }

    /// The configured database these pools serve.
    pub fn database(&self) -> &Arc<str> {
        &self.database
    }

    /// The database was removed: clients waiting or asking for a connection get
    /// [`PoolError::Closed`], idle connections close now, and connections in use close when
    /// given back (a transaction in flight finishes), or at `drain_timeout`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let drain = self.cfg.load().drain_timeout;
        for shard in &self.shards {
            for g in &shard.current.load().gens {
                g.retire(drain);
            }
        }
    }

    /// Makes `creds` the current generation on every worker; `validated` is the connection
    /// that proved them and becomes the first worker's first. Only the rotation engine calls
    /// this.
    ///
    /// 1. build the new generation for each worker, with its share of `pool.size`;
    /// 2. swap it in: clients acquire from it from now on;
    /// 3. retire the old one: its idle connections close now, its waiters move to the new one,
    ///    in-use connections close when given back, and all of them at `drain_timeout`.
    pub fn publish(&self, creds: Credentials, validated: ServerConn) -> u64 {
        self.publish_to(creds, self.target(), validated)
    }

    /// [`Pools::publish`] for connections to `target` (another server: a failover). A reader
    /// entry's generation covers all its hosts; `validated` joins the one on `target`.
    pub fn publish_to(
        &self,
        creds: Credentials,
        target: Arc<UpstreamTarget>,
        validated: ServerConn,
    ) -> u64 {
        let cfg = self.cfg.load_full();
        let id = self.current_id.load(Ordering::Acquire) + 1;
        let connectors: Vec<_> = self.shards.iter().map(|s| s.connector.clone()).collect();
        let targets = match self.hosts.is_empty() {
            true => vec![target.clone()],
            false => self.hosts.clone(),
        };
        let fresh = generations(&connectors, &cfg, id, Arc::new(creds), &targets);
        let mut validated = Box::new(validated);
        validated.generation = id;
        self.keep(&fresh[0], &target, validated);
        self.current_id.store(id, Ordering::Release);
        for (shard, set) in self.shards.iter().zip(fresh) {
            let old = shard.current.swap(set);
            for g in &old.gens {
                g.retire(cfg.drain_timeout);
            }
            let mut draining = shard.draining.lock().expect("draining lock");
            draining.retain(|set| set.gens.iter().any(|g| g.counts().0 > 0));
            draining.push(old);
        }
        id
    }

    /// Gives the current generation a connection the rotation engine validated on `target`.
    pub fn adopt(&self, mut conn: ServerConn, target: &UpstreamTarget) {
        conn.generation = self.generation();
        let set = self.shards[0].current.load();
        self.keep(&set, target, Box::new(conn));
    }

    /// Resolves once generation `id` has no connection left on any worker.
    pub async fn drained(&self, id: u64) {
        let olds: Vec<Arc<Generation>> = self
            .shards
            .iter()
            .flat_map(|s| s.draining.lock().expect("draining lock").clone())
            .flat_map(|set| set.gens.clone())
            .filter(|g| g.id == id)
            .collect();
        futures::future::join_all(olds.iter().map(|g| g.gone())).await;
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
}

/// Worker `k`'s share of `total` when `n` workers split it (the first ones get the remainder).
pub fn share(total: u32, k: usize, n: usize) -> u32 {
    let (n, k) = (n as u32, k as u32);
    total / n + u32::from(k < total % n)
}

impl Pools {
    /// Gives a validated connection on `target` to `set`'s object on that host; a reader
    /// entry's host out of rotation (the first credential is validated on every host) keeps
    /// none, which would only sit idle.
    fn keep(&self, set: &Set, target: &UpstreamTarget, conn: Box<ServerConn>) {
        let host = target.address();
        let Some(i) = set.gens.iter().position(|g| g.target.address() == host) else {
            return set.first().adopt(conn);
        };
        if self.spread.as_ref().is_none_or(|s| s.is_in(i)) {
            set.gens[i].adopt(conn);
        }
    }
}

/// Generation `id` for every worker, one object per host in `targets`, each host with its own
/// `pool.size` shared by the workers (and each object with its reaper).
fn generations(
    connectors: &[Arc<Connector>],
    cfg: &PoolConfig,
    id: u64,
    creds: Arc<Credentials>,
    targets: &[Arc<UpstreamTarget>],
) -> Vec<Arc<Set>> {
    let n = connectors.len();
    let mut sets: Vec<Set> = (0..n).map(|_| Set { gens: Vec::new() }).collect();
    for target in targets {
        let shared = Arc::new(Shared::new(cfg.size));
        let all: Vec<_> = connectors
            .iter()
            .enumerate()
            .map(|(k, connector)| {
                let limits = Limits {
                    min_idle: share(cfg.min_idle, k, n),
                    idle_timeout: cfg.idle_timeout,
                    max_lifetime: cfg.max_lifetime,
                };
                let login = (creds.clone(), target.clone());
                let g = Generation::new(id, login, limits, shared.clone(), connector.clone());
                Arc::new(g)
            })
            .collect();
        shared.set_siblings(&all);
        for ((g, connector), set) in all.into_iter().zip(connectors).zip(&mut sets) {
            connector.reap(&g);
            set.gens.push(g);
        }
    }
    sets.into_iter().map(Arc::new).collect()
}

/// A client's place in a generation's queue. Dropped early (timeout, cancel, client gone), it
/// takes back a connection that was handed to it at that moment, so none is lost.
struct Waiter {
    rx: oneshot::Receiver<Box<ServerConn>>,
    home: Arc<Generation>,
}

impl Waiter {
    fn new(rx: oneshot::Receiver<Box<ServerConn>>, home: Arc<Generation>) -> Self {
        Self { rx, home }
    }

    /// The connection handed over, or None when the generation was retired meanwhile.
    async fn recv(mut self) -> Option<Box<ServerConn>> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(conn) = self.rx.try_recv() {
            self.home.put(conn);
        }
    }
}
