//! Test harness: a private PostgreSQL ([`pg::Pg`]) and rotagate running in-process on port 0
//! ([`TestProxy`]). Waits poll a condition with a deadline; nothing sleeps to synchronise.
#![allow(dead_code)]

pub mod aws;
pub mod bao;
pub mod fault;
pub mod pg;
pub mod pki;
pub mod process;
pub mod readers;
pub mod tools;
pub mod wire;

#[allow(unused_imports)] // not every test uses every one
pub use tools::{http, http_body, http_with, pgbench, psql};

use pg::Pg;
use rotagate::app::App;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const APP_USER: &str = "app_owner";
pub const APP_PASSWORD: &str = "upstream-pw-1";
pub const CLIENT_USER: &str = "app";
pub const CLIENT_PASSWORD: &str = "static-client-pw";

/// Polls `cond` until it holds or `secs` pass.
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until a query whose text contains `marker` runs upstream (not this check's own).
pub async fn wait_running(pg: &Pg, marker: &str) {
    wait_until(10, "the query to run upstream", || async {
        pg.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
        )) == "1"
    })
    .await;
}

/// A cluster with the application role and database.
pub fn app_cluster() -> Pg {
    let pg = Pg::start();
    pg.app_db(APP_USER, APP_PASSWORD);
    pg
}

/// A primary with a table `fo` the app user writes to, and its streaming standby (as the
/// failover acceptance script builds them).
pub fn primary_and_standby() -> (Pg, Pg) {
    let primary = app_cluster();
    primary.sql_in(
        "appdb",
        &format!("CREATE TABLE fo (at timestamptz); ALTER TABLE fo OWNER TO {APP_USER}"),
    );
    let standby = primary.standby();
    (primary, standby)
}

pub fn write_secret(path: &std::path::Path, pg: &Pg, user: &str, password: &str) {
    let tmp = path.with_extension("tmp");
    let json = format!(
        r#"{{"engine":"postgres","username":"{user}","password":"{password}","host":"127.0.0.1","port":{},"dbname":"appdb"}}"#,
        pg.port
    );
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

pub struct Builder<'a> {
    pg: &'a Pg,
    databases: Option<String>,
    mode: &'static str,
    pool_size: u32,
    listen_extra: String,
    pool_extra: String,
    upstream_tls: String,
    upstream_host: String,
    upstream_port: Option<u16>,
    /// `[upstream]` lines instead of `host` and `port` (`hosts = [...]`, ...).
    upstream_hosts: Option<String>,
    clients: String,
    credentials_extra: String,
    admin_extra: String,
    vars: Vec<(String, String)>,
    secret_at: Option<PathBuf>,
    source: Option<(String, String)>,
}

impl<'a> Builder<'a> {
    pub fn mode(mut self, mode: &'static str) -> Self {
        self.mode = mode;
        self
    }
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }
    pub fn listen(mut self, line: &str) -> Self {
        self.listen_extra.push_str(line);
        self.listen_extra.push('\n');
        self
    }
    pub fn pool(mut self, line: &str) -> Self {
        self.pool_extra.push_str(line);
        self.pool_extra.push('\n');
        self
    }
    /// The `[upstream]` TLS lines (default `tls = "disable"`).
    pub fn upstream_tls(mut self, lines: &str) -> Self {
        self.upstream_tls = lines.to_owned();
        self
    }
    /// A line for `[credentials]` (breaker, cache, refresh settings).
    pub fn credentials(mut self, line: &str) -> Self {
        self.credentials_extra.push_str(line);
        self.credentials_extra.push('\n');
        self
    }
    /// A line for `[admin]`.
    pub fn admin(mut self, line: &str) -> Self {
        self.admin_extra.push_str(line);
        self.admin_extra.push('\n');
        self
    }
    /// An environment variable as the binary would see it (ROTAGATE_CACHE_KEY, overrides).
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.push((name.to_owned(), value.to_owned()));
        self
    }
    /// Use this secret file as it is (it may be missing), instead of writing a fresh one.
    pub fn secret_at(mut self, path: &std::path::Path) -> Self {
        self.secret_at = Some(path.to_owned());
        self
    }
    pub fn upstream_host(mut self, host: &str) -> Self {
        self.upstream_host = host.to_owned();
        self
    }
    /// Another upstream port than the cluster's (a fake upstream).
    pub fn upstream_port(mut self, port: u16) -> Self {
        self.upstream_port = Some(port);
        self
    }
    /// `[upstream]` lines that replace `host` and `port`: `hosts = [...]` and what goes with it.
    pub fn upstream_hosts(mut self, lines: &str) -> Self {
        self.upstream_hosts = Some(lines.to_owned());
        self
    }
    /// Another credential source than the secret file: `source = KIND` and its section.
    pub fn source(mut self, kind: &str, section: &str) -> Self {
        self.source = Some((kind.to_owned(), section.to_owned()));
        self
    }
    /// `[[databases]]` entries instead of the single-database `[upstream]` and
    /// `[credentials]`.
    pub fn databases(mut self, toml: &str) -> Self {
        self.databases = Some(toml.to_owned());
        self
    }
    /// Replaces the `[[clients]]` sections.
    pub fn clients(mut self, toml: &str) -> Self {
        self.clients = toml.to_owned();
        self
    }

    pub fn config_text(&self, secret: &std::path::Path) -> String {
        if let Some(databases) = &self.databases {
            return format!(
                "[listen]\naddr = \"127.0.0.1:0\"\n{}\n[admin]\naddr = \"127.0.0.1:0\"\n{}\n{}\n\
                 [pool]\nmode = \"{}\"\nsize = {}\n{}\n\n{databases}",
                self.listen_extra,
                self.admin_extra,
                self.clients,
                self.mode,
                self.pool_size,
                self.pool_extra,
            );
        }
        // A source name, or a TOML list of them (primary first).
        let (kind, section) = match &self.source {
            Some((kind, section)) if kind.starts_with('[') => (kind.clone(), section.clone()),
            Some((kind, section)) => (format!("\"{kind}\""), section.clone()),
            None => (
                "\"file\"".to_owned(),
                format!("[credentials.file]\npath = \"{}\"\n", secret.display()),
            ),
        };
        let hosts = self.upstream_hosts.clone().unwrap_or_else(|| {
            format!(
                "host = \"{}\"\nport = {}",
                self.upstream_host,
                self.upstream_port.unwrap_or(self.pg.port)
            )
        });
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n{}\n[admin]\naddr = \"127.0.0.1:0\"\n{}\n{}\n\
             [upstream]\n{hosts}\ndatabase = \"appdb\"\n{}\n\n\
             [pool]\nmode = \"{}\"\nsize = {}\n{}\n\n[credentials]\nsource = {kind}\n{}\n{section}",
            self.listen_extra,
            self.admin_extra,
            self.clients,
            self.upstream_tls,
            self.mode,
            self.pool_size,
            self.pool_extra,
            self.credentials_extra,
        )
    }

    pub async fn start(self) -> TestProxy {
        let proxy = self.start_unready().await;
        wait_until(30, "/readyz to answer 200", || async {
            proxy.get("/readyz").await.0 == 200
        })
        .await;
        proxy
    }

    /// Starts without waiting for readiness (for upstreams that are meant to fail).
    pub async fn start_unready(self) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let secret = match &self.secret_at {
            Some(path) => path.clone(),
            None => {
                let secret = dir.path().join("secret.json");
                write_secret(&secret, self.pg, APP_USER, APP_PASSWORD);
                secret
            }
        };
        let text = self.config_text(&secret);
        let cfg = rotagate::config::parse(&text, self.vars.clone())
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let app = App::bind(cfg).await.unwrap();
        let (addr, admin) = (app.proxy_addr(), app.admin_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        TestProxy {
            addr,
            admin,
            shutdown,
            task: Some(task),
            dir,
            secret,
        }
    }
}

pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: tempfile::TempDir,
    pub secret: PathBuf,
}

impl TestProxy {
    pub fn builder(pg: &Pg) -> Builder<'_> {
        // Logs go to the test's captured output; RUST_LOG=debug for more.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
        Builder {
            pg,
            mode: "transaction",
            pool_size: 4,
            listen_extra: String::new(),
            pool_extra: String::new(),
            upstream_tls: "tls = \"disable\"".into(),
            upstream_host: "127.0.0.1".into(),
            upstream_port: None,
            upstream_hosts: None,
            credentials_extra: String::new(),
            admin_extra: String::new(),
            vars: Vec::new(),
            secret_at: None,
            source: None,
            databases: None,
            clients: format!(
                "[[clients]]\nuser = \"{CLIENT_USER}\"\npassword = \"{CLIENT_PASSWORD}\"\n"
            ),
        }
    }

    /// Rotates the way single-user rotation does: the database first, then the secret; waits
    /// until the proxy serves the new generation.
    pub async fn rotate_to(&self, pg: &Pg, user: &str, password: &str) {
        let before = self.generation().await;
        pg.sql(&format!("ALTER ROLE {user} PASSWORD '{password}'"));
        write_secret(&self.secret, pg, user, password);
        wait_until(20, "the new generation", || async {
            self.generation().await > before
        })
        .await;
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Graceful shutdown; returns the app's result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.take().unwrap().await.unwrap()
    }
}

/// What every running rotagate in these tests offers, in-process ([`TestProxy`]) or as the
/// real binary ([`process::Rotagate`]): a client address and an admin address.
#[allow(async_fn_in_trait)]
pub trait Endpoints {
    fn proxy_addr(&self) -> SocketAddr;
    fn admin_addr(&self) -> SocketAddr;

    fn url(&self) -> String {
        self.url_as(CLIENT_USER, CLIENT_PASSWORD, "appdb")
    }

    fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} sslmode=disable",
            self.proxy_addr().port()
        )
    }

    /// A tokio-postgres client through the proxy (its connection task runs in the background).
    async fn client(&self) -> tokio_postgres::Client {
        self.connect(&self.url())
            .await
            .expect("connect through the proxy")
    }

    async fn connect(&self, url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// POST on the admin listener with optional extra headers: (status, body).
    async fn post(&self, path: &str, headers: &str) -> (u16, String) {
        http_with(self.admin_addr(), "POST", path, headers).await
    }

    /// The generation /status reports.
    async fn generation(&self) -> u64 {
        let body = self.get("/status").await.1;
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["generation"].as_u64())
            .unwrap_or(0)
    }

    /// GET on the admin listener: (status, body).
    async fn get(&self, path: &str) -> (u16, String) {
        http(self.admin_addr(), "GET", path).await
    }

    /// A metric's value from /metrics (the first series whose labels contain `labels`). A
    /// series that is not there is NaN, not zero: every comparison with it fails, so `== 0.0`
    /// or `<= n` cannot pass on a series that was never exported (use [`Self::metric_or_zero`]
    /// where a counter not yet incremented counts as zero, as a baseline).
    async fn metric(&self, name: &str, labels: &str) -> f64 {
        self.metric_opt(name, labels).await.unwrap_or(f64::NAN)
    }

    /// As [`Self::metric`], absent as 0 (a baseline taken before a counter's first increment).
    async fn metric_or_zero(&self, name: &str, labels: &str) -> f64 {
        self.metric_opt(name, labels).await.unwrap_or(0.0)
    }

    /// The series' value, None when /metrics does not have it.
    async fn metric_opt(&self, name: &str, labels: &str) -> Option<f64> {
        let body = self.get("/metrics").await.1;
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .find(|l| l.contains(labels))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Endpoints for TestProxy {
    fn proxy_addr(&self) -> SocketAddr {
        self.addr
    }
    fn admin_addr(&self) -> SocketAddr {
        self.admin
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// pgbench's output shows no failed or aborted transaction.
pub fn pgbench_clean(out: &str) -> bool {
    out.contains("failed transactions: 0 ") && !out.contains("aborted")
}

/// The first column of the first row of a simple query.
pub async fn one(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(r.get(0).unwrap_or("NULL").to_owned())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row from {sql}"))
}
