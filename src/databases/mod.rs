//! The databases rotagate serves. Each configured database is a [`Database`]: its own
//! credential source, last-known-good entry, pools (one per credential generation), rotation
//! engine with its breaker and backoff, and the route clients reach it by. Nothing is shared
//! between databases except the cache file (one entry each) and the workers' event loops, so
//! a broken secret or a dead upstream stays with its database.
//!
//! [`Databases`] starts, adds and removes them (SIGHUP, in `reload.rs`); the admin API reads it.

mod start;

use crate::config::DatabaseConfig;
use crate::frontend::{Route, Routes};
use crate::pool::Pools;
use crate::rotation::{RotationHandle, RotationStatus};
use crate::secrets::aws::sqs::Queues;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One served database.
pub struct Database {
    pub cfg: DatabaseConfig,
    pub pools: Arc<Pools>,
    pub status: Arc<RotationStatus>,
    pub rotation: RotationHandle,
    /// Set once its credential has been validated.
    pub ready: Arc<AtomicBool>,
    pub route: Arc<Route>,
    /// Stops its rotation engine and event sources (when it is removed).
    stop: CancellationToken,
}

impl Database {
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Retired (removed or replaced), or rotagate is shutting down.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// Every served database, in config order, and what starting one needs.
pub struct Databases {
    all: ArcSwap<Vec<Arc<Database>>>,
    /// The client routes, the frontend's view of `all`.
    routes: Arc<ArcSwap<Routes>>,
    /// Started on reload, waiting to validate before they are routed to.
    pending: Mutex<Vec<Arc<Database>>>,
    workers: Vec<tokio::runtime::Handle>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The SQS queues listened to, shared by the databases whose events they carry.
    queues: Arc<Queues>,
}

impl Databases {
    pub fn new(
        workers: Vec<tokio::runtime::Handle>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            all: ArcSwap::from_pointee(Vec::new()),
            routes: Arc::new(ArcSwap::from_pointee(Routes::new())),
            pending: Mutex::new(Vec::new()),
            workers,
            shutdown,
            tracker,
            queues: Arc::default(),
        }
    }

    /// Starts every configured database (in order; the first one that cannot start stops the
    /// start) and routes clients to them at once: each serves while its engine validates.
    pub async fn start_all(&self, cfgs: &[DatabaseConfig]) -> anyhow::Result<()> {
        for cfg in cfgs {
            let db = self.start(cfg).await?;
            self.insert(db);
        }
        Ok(())
    }

    /// Starts one database: its source, cache entry, pools and engine (which validates the
    /// starting credential). It is not routed to yet.
    pub async fn start(&self, cfg: &DatabaseConfig) -> anyhow::Result<Arc<Database>> {
        start::database(
            cfg,
            self.workers.clone(),
            &self.shutdown,
            &self.tracker,
            &self.queues,
        )
        .await
    }

    /// Makes `db` (a started one) reachable by clients. One of the same name it replaces is
    /// retired: its sessions end as their transactions do, and its pools drain.
    pub fn insert(&self, db: Arc<Database>) {
        let mut all = Vec::clone(&self.all.load());
        let old = match all.iter_mut().find(|d| d.name() == db.name()) {
            Some(slot) => Some(std::mem::replace(slot, db)),
            None => {
                all.push(db);
                None
            }
        };
        self.publish(all);
        if let Some(old) = old {
            old.retire();
        }
    }

    /// Keeps `db` (started on reload) until it validates; one staged earlier under that name
    /// is retired.
    pub fn stage(&self, db: Arc<Database>) {
        let mut pending = self.pending.lock().expect("pending lock");
        if let Some(at) = pending.iter().position(|d| d.name() == db.name()) {
            pending.remove(at).retire();
        }
        pending.push(db);
    }

    /// Routes a staged database that has validated; false when it was replaced or removed
    /// meanwhile.
    pub fn promote(&self, db: &Arc<Database>) -> bool {
        let mut pending = self.pending.lock().expect("pending lock");
        let Some(at) = pending.iter().position(|d| Arc::ptr_eq(d, db)) else {
            return false;
        };
        pending.remove(at);
        self.insert(db.clone());
        true
    }

    /// Takes `name` off the routes (and drops a staged one): new clients get 3D000; its
    /// sessions end as their transactions do, its pools drain, its engine stops.
    pub fn remove(&self, name: &str) -> Option<Arc<Database>> {
        {
            let mut pending = self.pending.lock().expect("pending lock");
            if let Some(at) = pending.iter().position(|d| d.name() == name) {
                pending.remove(at).retire();
            }
        }
        let mut all = Vec::clone(&self.all.load());
        let at = all.iter().position(|d| d.name() == name)?;
        let db = all.remove(at);
        self.publish(all);
        db.retire();
        Some(db)
    }

    fn publish(&self, all: Vec<Arc<Database>>) {
        let routes = all
            .iter()
            .map(|d| (d.name().to_owned(), d.route.clone()))
            .collect();
        self.routes.store(Arc::new(routes));
        self.all.store(Arc::new(all));
    }

    /// Every served database, in config order.
    pub fn all(&self) -> Arc<Vec<Arc<Database>>> {
        self.all.load_full()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Database>> {
        self.all.load().iter().find(|d| d.name() == name).cloned()
    }

    /// The routes the frontend reads at each login.
    pub fn routes(&self) -> Arc<ArcSwap<Routes>> {
        self.routes.clone()
    }
}

impl Database {
    /// No longer served: clients waiting for a connection get an error, connections in use
    /// close when their transaction ends (or at `drain_timeout`), the engine stops.
    pub fn retire(&self) {
        self.pools.close();
        self.stop.cancel();
    }
}
