//! Opening and reaping connections, off the hand-over path: a task per connection being
//! opened (it retries while a client still waits for it) and a reaper per generation that
//! closes idle connections past `idle_timeout` or `max_lifetime` and keeps `min_idle` open.

use super::generation::Generation;
use crate::backend::{self, BackendError, ServerConn, UpstreamTarget};
use crate::secrets::Credentials;
use futures::future::BoxFuture;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// First and longest pause between failed attempts to open a connection a client waits for.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How often a generation's idle connections are looked over.
const REAP_EVERY_MAX: Duration = Duration::from_secs(30);

/// How a connection is opened: a login to `target` with `creds`, for generation `id`.
/// [`backend::connect`] in production; tests give the pool connections of their own.
pub type Dial = Arc<
    dyn Fn(
            Arc<UpstreamTarget>,
            Arc<Credentials>,
            u64,
        ) -> BoxFuture<'static, Result<ServerConn, BackendError>>
        + Send
        + Sync,
>;

/// The production [`Dial`]: a login upstream.
pub fn upstream_dial() -> Dial {
    Arc::new(|target, creds, id| {
        Box::pin(async move { backend::connect(&target, &creds, id).await })
    })
}

/// Where and how connections are opened; shared by every generation of one worker.
pub struct Connector {
    /// Told when a login of the current generation is refused, so rotation refetches at once.
    pub auth_failed: Arc<Notify>,
    /// Told when the current generation's host looks gone or changed role (see
    /// [`Generation::doubt`]), so rotation looks for the writer at once.
    pub writer_doubt: Arc<Notify>,
    /// Set when a server said it is read-only (25006): connections that resolved a name to
    /// a demoted writer must go even if the name now answers as the writer.
    pub read_only_seen: Arc<std::sync::atomic::AtomicBool>,
    /// The runtime the connections are used on (each worker has its own).
    pub runtime: tokio::runtime::Handle,
    /// The configured database (the `database` label of the login metrics).
    pub database: Arc<str>,
    /// Opens a connection.
    pub dial: Dial,
}

impl Connector {
    /// Opens one connection for `g` (its place is already counted in `open`).
    pub(super) fn open(&self, g: Arc<Generation>) {
        self.runtime.spawn(open(g));
    }

    /// Starts the reaper of `g`; it stops when the generation is gone.
    pub(super) fn reap(&self, g: &Arc<Generation>) {
        let every = (g.limits.idle_timeout.min(g.limits.max_lifetime) / 2)
            .clamp(Duration::from_millis(100), REAP_EVERY_MAX);
        let weak = Arc::downgrade(g);
        let fill = g.limits.min_idle > 0;
        self.runtime.spawn(reaper(weak, every, fill));
    }
}

async fn reaper(g: Weak<Generation>, every: Duration, fill_now: bool) {
    if fill_now {
        fill(&g);
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if !fill(&g) {
            return;
        }
    }
}

/// One reaping pass; false when the generation is gone or retired.
fn fill(g: &Weak<Generation>) -> bool {
    let Some(g) = g.upgrade() else { return false };
    if g.is_retired() {
        return false;
    }
    for _ in 0..g.reap() {
        g.connector.open(g.clone());
    }
    true
}

/// Opens a connection and hands it over; on failure tries again, with a growing pause, as
/// long as a client waits and the generation is current; otherwise gives its place back.
async fn open(g: Arc<Generation>) {
    let mut pause = RETRY_FIRST;
    loop {
        match login(&g).await {
            Ok(mut conn) => {
                conn.kept.count_in(g.shared.kept.clone());
                return g.put(Box::new(conn));
            }
            Err(_) if wanted(&g) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            Err(_) => return g.release_slot(),
        }
    }
}

fn wanted(g: &Generation) -> bool {
    !g.is_retired() && g.has_waiters()
}

async fn login(g: &Generation) -> Result<ServerConn, BackendError> {
    let c = &g.connector;
    let db = c.database.to_string();
    match (c.dial)(g.target.clone(), g.creds.clone(), g.id).await {
        Ok(mut conn) => {
            metrics::counter!("rotagate_server_logins_total", "result" => "success", "database" => db)
                .increment(1);
            conn.prepared.count_for(&c.database);
            conn.database = c.database.clone();
            Ok(conn)
        }
        Err(e) => {
            if e.is_auth_failure() {
                metrics::counter!("rotagate_backend_auth_failures_total", "database" => db.clone())
                    .increment(1);
                if !g.is_retired() {
                    c.auth_failed.notify_one();
                }
            }
            if e.is_host_trouble() {
                g.doubt();
            }
            metrics::counter!("rotagate_server_logins_total", "result" => "failure", "database" => db.clone())
                .increment(1);
            tracing::warn!(database = %db, generation = g.id, error = %e, "upstream login failed");
            *g.last_error.lock().expect("last_error lock") = Some((e.summary(), e.to_string()));
            Err(e)
        }
    }
}
