//! What the reader tests share (`tests/readers.rs`, `tests/readers_faults.rs`): a primary
//! with two streaming standbys, rotagate with a reader entry over them, and reading clients.

use super::pg::Pg;
use super::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The primary and two standbys.
pub fn three() -> (Pg, Pg, Pg) {
    let (primary, one) = primary_and_standby();
    let two = primary.standby();
    (primary, one, two)
}

/// rotagate with a reader entry over the three (primary first), checking every 200 ms.
pub async fn reader_proxy(hosts: [&Pg; 3], extra: &str) -> TestProxy {
    let proxy = reader_proxy_with(&hosts, "standby", extra).await;
    wait_until(20, "both standbys in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    proxy
}

/// rotagate with a reader entry over `hosts` under `attrs`, once a host is in rotation.
pub async fn reader_proxy_with(hosts: &[&Pg], attrs: &str, extra: &str) -> TestProxy {
    let list: Vec<String> = (hosts.iter())
        .map(|pg| format!("\"127.0.0.1:{}\"", pg.port))
        .collect();
    let lines = format!(
        "hosts = [{}]\ntarget_session_attrs = \"{attrs}\"\nload_balance_hosts = \"random\"\n\
         replica_check_interval = \"200ms\"\n{extra}",
        list.join(", ")
    );
    let proxy = TestProxy::builder(hosts[0])
        .upstream_hosts(&lines)
        .pool("acquire_timeout = \"20s\"")
        .start()
        .await;
    wait_until(20, "a host in rotation", || async {
        !in_rotation(&proxy).await.is_empty()
    })
    .await;
    proxy
}

/// The hosts `/status` shows in rotation.
pub async fn in_rotation(proxy: &TestProxy) -> Vec<String> {
    let s: serde_json::Value = serde_json::from_str(&proxy.get("/status").await.1).unwrap();
    let hosts = s["databases"][0]["upstream"]["hosts"].as_array().cloned();
    let hosts = hosts.or_else(|| s["upstream"]["hosts"].as_array().cloned());
    (hosts.unwrap_or_default().iter())
        .filter(|h| h["serving"] == true)
        .map(|h| h["host"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Sessions ever opened on `pg`'s appdb (`pg_stat_database.sessions`, flushed when each ends).
pub fn sessions(pg: &Pg) -> i64 {
    let n = pg.sql("SELECT sessions FROM pg_stat_database WHERE datname = 'appdb'");
    n.trim().parse().unwrap()
}

pub fn at(pg: &Pg) -> String {
    format!("127.0.0.1:{}", pg.port)
}

pub async fn port_of_read(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    let row = client.query_one("SELECT inet_server_port()", &[]).await?;
    Ok(row.get(0))
}

/// Reads through `client`, counted by the port that answered.
pub async fn reads(client: &tokio_postgres::Client, n: usize) -> HashMap<i32, usize> {
    let mut by_port = HashMap::new();
    for _ in 0..n {
        *by_port
            .entry(port_of_read(client).await.unwrap())
            .or_default() += 1;
    }
    by_port
}

/// The primary written to directly, until the returned flag is set.
pub fn keep_writing(primary: &Pg) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname=appdb sslmode=disable",
        primary.port
    );
    let flag = stop.clone();
    tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        while !flag.load(Ordering::Relaxed) {
            client
                .execute("INSERT INTO fo (at) VALUES (clock_timestamp())", &[])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    stop
}

/// Clients reading in a loop: reads by port, errors, and whether any connection closed.
pub struct ReadLoad {
    clients: Vec<Arc<tokio_postgres::Client>>,
    ports: Arc<Mutex<HashMap<i32, usize>>>,
    pub errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ReadLoad {
    pub async fn start(proxy: &TestProxy, n: usize) -> Self {
        let mut load = ReadLoad {
            clients: Vec::new(),
            ports: Arc::default(),
            errors: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        for _ in 0..n {
            let c = Arc::new(proxy.client().await);
            let (cc, ports, errors, stop) = (
                c.clone(),
                load.ports.clone(),
                load.errors.clone(),
                load.stop.clone(),
            );
            load.tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) && !cc.is_closed() {
                    match port_of_read(&cc).await {
                        Ok(p) => *ports.lock().unwrap().entry(p).or_default() += 1,
                        Err(e) => errors.lock().unwrap().push(format!("{e:?}")),
                    }
                }
            }));
            load.clients.push(c);
        }
        load
    }

    pub fn on(&self, pg: &Pg) -> usize {
        let ports = self.ports.lock().unwrap();
        ports.get(&i32::from(pg.port)).copied().unwrap_or(0)
    }

    /// Stops; the errors, after checking no client connection closed.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let closed = self.clients.iter().filter(|c| c.is_closed()).count();
        assert_eq!(closed, 0, "client connections closed");
        self.errors.lock().unwrap().clone()
    }
}

/// The three, a reader entry over them, and four clients reading on both standbys.
pub async fn under_read_load() -> ((Pg, Pg, Pg), TestProxy, ReadLoad) {
    let (primary, one, two) = three();
    let proxy = reader_proxy([&primary, &one, &two], "").await;
    let load = ReadLoad::start(&proxy, 4).await;
    wait_until(20, "reads on both standbys", || async {
        load.on(&one) >= 50 && load.on(&two) >= 50
    })
    .await;
    ((primary, one, two), proxy, load)
}
