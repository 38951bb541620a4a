//! The fakes the engine's paused-time tests run against: pools that "log in" by looking a
//! version up, a source serving a version (or unavailable), and an event source a test feeds.

use super::upstream::Upstream;
use super::writer::{Probe, Role};
use crate::config::HostPort;
use crate::secrets::Credentials;
use crate::secrets::provider::{EventSource, Note, SecretProvider, SourceError, Stage};
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const LOGIN: Duration = Duration::from_millis(20);
pub const DRAIN: Duration = Duration::from_secs(10);

pub fn creds(version: &str) -> Credentials {
    let json = format!(r#"{{"username":"app","password":"pw-{version}"}}"#);
    Credentials::from_json(json.as_bytes(), version.into()).unwrap()
}

/// Pools that log in by looking the version up in `good`, after `LOGIN`.
pub struct FakePools {
    generation: AtomicU64,
    current: Mutex<Arc<Credentials>>,
    good: Mutex<HashSet<String>>,
    published: Mutex<Vec<(u64, String, Instant)>>,
    pub adopted: AtomicU64,
    /// Generations that have drained (none until a test says so).
    drained: Mutex<HashSet<u64>>,
    drain_changed: Notify,
    pub auth: Arc<Notify>,
    pub doubt: Arc<Notify>,
    pub read_only: std::sync::atomic::AtomicBool,
    /// Each host's role; a host not listed is down. Logins need the host up.
    roles: Mutex<HashMap<String, Role>>,
    serving: Mutex<HostPort>,
    /// Which server a host name leads to (default: the name itself); a failover behind one
    /// name changes it.
    servers: Mutex<HashMap<String, String>>,
}

pub fn host(name: &str) -> HostPort {
    HostPort {
        host: name.into(),
        port: 5432,
    }
}

impl FakePools {
    pub fn serving(version: &str) -> Arc<Self> {
        Arc::new(Self {
            generation: AtomicU64::new(1),
            current: Mutex::new(Arc::new(creds(version))),
            good: Mutex::new(HashSet::new()),
            published: Mutex::default(),
            adopted: AtomicU64::new(0),
            drained: Mutex::default(),
            drain_changed: Notify::new(),
            auth: Arc::new(Notify::new()),
            doubt: Arc::new(Notify::new()),
            read_only: Default::default(),
            roles: Mutex::new(HashMap::from([("db".to_owned(), Role::Primary)])),
            serving: Mutex::new(host("db")),
            servers: Mutex::default(),
        })
    }

    /// The name `host` now leads to another server (an RDS failover behind its endpoint).
    pub fn moved_behind(&self, host: &str, server: &str) {
        self.servers
            .lock()
            .unwrap()
            .insert(host.into(), server.into());
    }

    /// `name` is up as `role`, or down (None).
    pub fn set_role(&self, name: &str, role: Option<Role>) {
        let mut roles = self.roles.lock().unwrap();
        match role {
            Some(r) => roles.insert(name.into(), r),
            None => roles.remove(name),
        };
    }

    /// Before the engine starts: the pools serve from `name`.
    pub fn start_on(&self, name: &str) {
        *self.serving.lock().unwrap() = host(name);
    }

    /// The host the current generation is on.
    pub fn on(&self) -> String {
        self.serving.lock().unwrap().host.clone()
    }

    pub fn accept(&self, version: &str) {
        self.good.lock().unwrap().insert(version.into());
    }

    /// Logins with `version` are refused from now on (revoked).
    pub fn forget(&self, version: &str) {
        self.good.lock().unwrap().remove(version);
    }

    pub fn published(&self) -> Vec<(u64, String, Instant)> {
        self.published.lock().unwrap().clone()
    }

    pub fn drain(&self, generation: u64) {
        self.drained.lock().unwrap().insert(generation);
        self.drain_changed.notify_waiters();
    }
}

impl Upstream for FakePools {
    type Proof = HostPort;
    type Probes = ();

    /// No kept sessions: every periodic check is a full search.
    async fn recheck(&self, _: &mut (), _: &[HostPort], _: &Credentials) -> Option<Vec<Probe>> {
        None
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn current(&self) -> Arc<Credentials> {
        self.current.lock().unwrap().clone()
    }

    fn serving(&self) -> HostPort {
        self.serving.lock().unwrap().clone()
    }

    async fn validate(
        &self,
        creds: &Credentials,
        _generation: u64,
        host: &HostPort,
    ) -> Result<HostPort, String> {
        tokio::time::sleep(LOGIN).await;
        if !self.roles.lock().unwrap().contains_key(&host.host) {
            return Err("connection refused".into());
        }
        match self.good.lock().unwrap().contains(&creds.version) {
            true => Ok(host.clone()),
            false => Err("password authentication failed".into()),
        }
    }

    async fn probe(
        &self,
        hosts: &[HostPort],
        creds: &Credentials,
        _attrs: crate::config::TargetSessionAttrs,
    ) -> Vec<Probe> {
        tokio::time::sleep(LOGIN).await;
        let good = self.good.lock().unwrap().contains(&creds.version);
        let roles = self.roles.lock().unwrap();
        hosts
            .iter()
            .map(|h| {
                let role = match roles.get(&h.host) {
                    Some(_) if !good => Err("password authentication failed".to_owned()),
                    Some(r) => Ok(*r),
                    None => Err("connection refused".to_owned()),
                };
                let identity = role.is_ok().then(|| {
                    let servers = self.servers.lock().unwrap();
                    servers
                        .get(&h.host)
                        .cloned()
                        .unwrap_or_else(|| h.host.clone())
                });
                Probe {
                    host: h.clone(),
                    refused_login: roles.contains_key(&h.host) && !good,
                    role,
                    checked: std::time::SystemTime::now(),
                    identity,
                }
            })
            .collect()
    }

    fn server_of(&self, proof: &HostPort) -> Option<String> {
        let servers = self.servers.lock().unwrap();
        Some(
            servers
                .get(&proof.host)
                .cloned()
                .unwrap_or_else(|| proof.host.clone()),
        )
    }

    fn publish(&self, creds: Credentials, proof: HostPort) -> u64 {
        *self.serving.lock().unwrap() = proof;
        let id = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let version = creds.version.clone();
        *self.current.lock().unwrap() = Arc::new(creds);
        self.published
            .lock()
            .unwrap()
            .push((id, version, Instant::now()));
        id
    }

    fn adopt(&self, _proof: HostPort) {
        self.adopted.fetch_add(1, Ordering::SeqCst);
    }

    fn drain_timeout(&self) -> Duration {
        DRAIN
    }

    async fn drained(&self, generation: u64) {
        loop {
            let changed = self.drain_changed.notified();
            if self.drained.lock().unwrap().contains(&generation) {
                return;
            }
            changed.await;
        }
    }

    fn auth_failed(&self) -> Arc<Notify> {
        self.auth.clone()
    }

    fn writer_doubt(&self) -> Arc<Notify> {
        self.doubt.clone()
    }

    fn take_read_only(&self) -> bool {
        self.read_only.swap(false, Ordering::SeqCst)
    }
}

/// A source serving `current` (None: unavailable), recording when it was read and what it was
/// told to retire.
#[derive(Default)]
pub struct FakeSource {
    current: Mutex<Option<String>>,
    fetches: Mutex<Vec<Instant>>,
    retired: Mutex<Vec<(String, Instant)>>,
}

impl FakeSource {
    pub fn serve(&self, version: Option<&str>) {
        *self.current.lock().unwrap() = version.map(str::to_owned);
    }

    pub fn fetches(&self) -> Vec<Instant> {
        self.fetches.lock().unwrap().clone()
    }

    pub fn retired(&self) -> Vec<(String, Instant)> {
        self.retired.lock().unwrap().clone()
    }
}

impl SecretProvider for FakeSource {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn fetch(&self, _stage: Stage) -> BoxFuture<'_, Result<Credentials, SourceError>> {
        self.fetches.lock().unwrap().push(Instant::now());
        let answer = match self.current.lock().unwrap().as_deref() {
            Some(v) => Ok(creds(v)),
            None => Err(SourceError::Unavailable("connection refused".into())),
        };
        Box::pin(async move { answer })
    }

    fn retire(&self, version: &str) -> BoxFuture<'_, ()> {
        self.retired
            .lock()
            .unwrap()
            .push((version.to_owned(), Instant::now()));
        Box::pin(async {})
    }
}

/// Forwards notes a test sends, as a real event source would.
pub struct FakeEvents(pub mpsc::Receiver<Note>);

impl EventSource for FakeEvents {
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Note>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let mut rx = self.0;
        Box::pin(async move {
            while let Some(note) =
                tokio::select! { n = rx.recv() => n, _ = stop.cancelled() => None }
            {
                let _ = tx.send(note).await;
            }
        })
    }
}
