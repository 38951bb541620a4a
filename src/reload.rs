//! What SIGHUP changes while rotagate runs, without dropping a connection: client users (and
//! the databases each may open), the client TLS certificate (re-read from its files), the
//! served databases and, in `main.rs`, the log filter. Per database:
//!
//! - added: started, and routed to once its credential validates;
//! - removed: new clients get 3D000, its sessions end as their transactions do, its pools
//!   drain, its engine stops;
//! - pool settings changed (size, timeouts): the serving credential is republished as a new
//!   generation built with them; the old one drains as in a rotation;
//! - upstream, credentials or pool mode changed: a new instance of the database is started
//!   and, once validated, replaces the old one, which drains.
//!
//! The listen and admin settings need a restart: they are reported and ignored.

use crate::app::client_tls;
use crate::config::{Config, DatabaseConfig};
use crate::databases::{Database, Databases};
use crate::frontend::{Frontend, scram::ClientAuth};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How often a database that has not validated yet is looked at before it is routed to.
const READY_POLL: Duration = Duration::from_millis(100);

pub struct Reloader {
    running: Mutex<Config>,
    frontend: Arc<Frontend>,
    databases: Arc<Databases>,
}

/// What a reload does to the databases.
#[derive(Default)]
struct Plan {
    removed: Vec<String>,
    /// New, or changed beyond pool settings: (re)started.
    started: Vec<DatabaseConfig>,
    /// Only pool settings changed.
    reconfigured: Vec<DatabaseConfig>,
}

impl Reloader {
    pub fn new(running: Config, frontend: Arc<Frontend>, databases: Arc<Databases>) -> Self {
        Self {
            running: Mutex::new(running),
            frontend,
            databases,
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
        let tls = self.reload_tls(&new);
        let plan = plan(&running.databases, &new.databases);
        *running = new.clone();
        drop(running);
        tracing::info!(
            clients = new.clients.len(),
            tls_reloaded = tls,
            databases_removed = ?plan.removed,
            databases_started = ?plan.started.iter().map(|d| &d.name).collect::<Vec<_>>(),
            pool_changed = ?plan.reconfigured.iter().map(|d| &d.name).collect::<Vec<_>>(),
            "configuration reloaded"
        );
        for name in &plan.removed {
            if self.databases.remove(name).is_some() {
                tracing::info!(database = %name, "database removed: new clients are refused, its pools drain");
            }
        }
        for cfg in plan.reconfigured {
            self.reconfigure(cfg).await;
        }
        for cfg in plan.started {
            self.start(cfg).await;
        }
    }

    fn reload_tls(&self, new: &Config) -> bool {
        match client_tls(new) {
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
        }
    }

    /// New pool settings for a running database: republished as a new generation.
    async fn reconfigure(&self, cfg: DatabaseConfig) {
        let Some(db) = self.databases.get(&cfg.name) else {
            return;
        };
        db.pools.reconfigure(cfg.pool.clone());
        match db.rotation.reload_pool().await {
            Some(r) => {
                tracing::info!(database = %cfg.name, outcome = ?r.outcome, generation = r.generation, reason = r.reason.as_deref().unwrap_or(""), "pool settings applied")
            }
            None => tracing::warn!(
                database = %cfg.name,
                "the rotation engine has stopped; pool settings apply at the next rotation"
            ),
        }
    }

    /// Starts a new or changed database; it is routed to (replacing the running one of that
    /// name) once its credential validates.
    async fn start(&self, cfg: DatabaseConfig) {
        let db = match self.databases.start(&cfg).await {
            Ok(db) => db,
            Err(e) => {
                tracing::error!(database = %cfg.name, error = format!("{e:#}"), "cannot start the database; the running configuration of it stays (a later SIGHUP tries again)");
                return self.forget(&cfg.name).await;
            }
        };
        self.databases.stage(db.clone());
        tokio::spawn(route_when_ready(self.databases.clone(), db));
    }
}

impl Reloader {
    /// Puts back what is really running for `name` (its old settings, or nothing for a
    /// database that never started), so the next reload sees the difference and tries again.
    async fn forget(&self, name: &str) {
        let serving = self.databases.get(name).map(|d| d.cfg.clone());
        let mut running = self.running.lock().await;
        let at = running.databases.iter().position(|d| d.name == name);
        match (at, serving) {
            (Some(i), Some(cfg)) => running.databases[i] = cfg,
            (Some(i), None) => {
                running.databases.remove(i);
            }
            (None, _) => {}
        }
    }
}

/// Routes `db` once it has validated, unless it was removed or replaced meanwhile.
async fn route_when_ready(databases: Arc<Databases>, db: Arc<Database>) {
    let mut logged = false;
    loop {
        if db.is_ready() {
            if databases.promote(&db) {
                tracing::info!(database = %db.name(), "database validated: serving it");
            }
            return;
        }
        if db.is_stopped() {
            return;
        }
        if !logged && db.status.view().last_attempt.is_some() {
            logged = true;
            tracing::warn!(database = %db.name(), "database not validated yet: it serves once its credential validates");
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Compares the running databases with the new ones, by name.
fn plan(old: &[DatabaseConfig], new: &[DatabaseConfig]) -> Plan {
    let mut p = Plan::default();
    for o in old {
        if !new.iter().any(|n| n.name == o.name) {
            p.removed.push(o.name.clone());
        }
    }
    let key = |d: &DatabaseConfig| format!("{:?}{:?}{:?}", d.upstream, d.credentials, d.pool.mode);
    for n in new {
        match old.iter().find(|o| o.name == n.name) {
            None => p.started.push(n.clone()),
            Some(o) if key(o) != key(n) => p.started.push(n.clone()),
            Some(o) if o.pool != n.pool => p.reconfigured.push(n.clone()),
            Some(_) => {}
        }
    }
    p
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
}
