//! Reader endpoints (design 9.3): a reader entry spreads transactions over the standbys in
//! rotation, holds them within `max_replica_lag`, loses only the transactions in flight on a
//! standby that dies, and rotates credentials under read load. A primary with two streaming
//! standbys, made by the harness.

mod common;

use common::pg::Pg;
use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The primary and two standbys.
fn three() -> (Pg, Pg, Pg) {
    let (primary, one) = primary_and_standby();
    let two = primary.standby();
    (primary, one, two)
}

/// rotagate with a reader entry over the three (primary first), checking every 200 ms.
async fn reader_proxy(hosts: [&Pg; 3], extra: &str) -> TestProxy {
    let proxy = reader_proxy_with(&hosts, "standby", extra).await;
    wait_until(20, "both standbys in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    proxy
}

/// rotagate with a reader entry over `hosts` under `attrs`, once a host is in rotation.
async fn reader_proxy_with(hosts: &[&Pg], attrs: &str, extra: &str) -> TestProxy {
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
async fn in_rotation(proxy: &TestProxy) -> Vec<String> {
    let s: serde_json::Value = serde_json::from_str(&proxy.get("/status").await.1).unwrap();
    let hosts = s["databases"][0]["upstream"]["hosts"].as_array().cloned();
    let hosts = hosts.or_else(|| s["upstream"]["hosts"].as_array().cloned());
    (hosts.unwrap_or_default().iter())
        .filter(|h| h["serving"] == true)
        .map(|h| h["host"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Sessions ever opened on `pg`'s appdb (`pg_stat_database.sessions`, flushed when each ends).
fn sessions(pg: &Pg) -> i64 {
    let n = pg.sql("SELECT sessions FROM pg_stat_database WHERE datname = 'appdb'");
    n.trim().parse().unwrap()
}

fn at(pg: &Pg) -> String {
    format!("127.0.0.1:{}", pg.port)
}

async fn port_of_read(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    let row = client.query_one("SELECT inet_server_port()", &[]).await?;
    Ok(row.get(0))
}

/// Reads through `client`, counted by the port that answered.
async fn reads(client: &tokio_postgres::Client, n: usize) -> HashMap<i32, usize> {
    let mut by_port = HashMap::new();
    for _ in 0..n {
        *by_port
            .entry(port_of_read(client).await.unwrap())
            .or_default() += 1;
    }
    by_port
}

/// The primary written to directly, until the returned flag is set.
fn keep_writing(primary: &Pg) -> Arc<AtomicBool> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_the_standbys_and_a_lagging_one_leaves_and_returns() {
    let (primary, one, two) = three();
    let proxy = reader_proxy([&primary, &one, &two], "max_replica_lag = \"1s\"").await;
    // Ten checks or more ask the kept probe sessions: no new session on any host.
    let status = || async {
        let s: serde_json::Value = serde_json::from_str(&proxy.get("/status").await.1).unwrap();
        s["upstream"]["hosts"][0]["checked_at"].as_u64().unwrap()
    };
    let first = status().await;
    let before = [sessions(&primary), sessions(&one), sessions(&two)];
    wait_until(10, "two seconds of checks", || async {
        status().await >= first + 2
    })
    .await;
    let after = [sessions(&primary), sessions(&one), sessions(&two)];
    for (b, a) in before.iter().zip(after) {
        assert!(
            a - b <= 2,
            "sessions opened by the checks: {before:?} -> {after:?}"
        );
    }
    let client = proxy.client().await;
    let spread = reads(&client, 1000).await;
    eprintln!("1,000 reads: {spread:?}");
    assert_eq!(
        spread.get(&i32::from(primary.port)),
        None,
        "no read on the primary"
    );
    for pg in [&one, &two] {
        let n = spread.get(&i32::from(pg.port)).copied().unwrap_or(0);
        assert!(n >= 350, "each standby takes at least 35%: {spread:?}");
    }
    let per_host = |pg: &Pg| format!("host=\"{}\"", at(pg));
    assert!(
        proxy
            .metric("rotagate_host_transactions_total", &per_host(&one))
            .await
            >= 350.0
    );

    // Replay paused on one standby while the primary writes: it leaves within 2 s of lagging
    // 1 s behind, and comes back after replay resumes.
    let writing = keep_writing(&primary);
    one.sql("SELECT pg_wal_replay_pause()");
    let paused = Instant::now();
    wait_until(10, "the paused standby out of rotation", || async {
        in_rotation(&proxy).await == [at(&two)]
    })
    .await;
    let out_after = paused.elapsed();
    eprintln!("paused standby out of rotation {out_after:?} after the pause (bound 1 s)");
    assert!(out_after <= Duration::from_secs(3), "{out_after:?}");
    assert!(
        proxy
            .metric("rotagate_replica_lag_seconds", &per_host(&one))
            .await
            > 1.0
    );
    let during = reads(&client, 100).await;
    assert_eq!(during.get(&i32::from(two.port)), Some(&100), "{during:?}");
    one.sql("SELECT pg_wal_replay_resume()");
    let resumed = Instant::now();
    wait_until(10, "the standby back in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    eprintln!(
        "standby back in rotation {:?} after replay resumed",
        resumed.elapsed()
    );
    writing.store(true, Ordering::Relaxed);
    assert_eq!(
        proxy
            .metric("rotagate_host_in_rotation", &per_host(&one))
            .await,
        1.0
    );
    // The dashboard's reader panels chart series a reader entry serves.
    let metrics = proxy.get("/metrics").await.1;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");
    let dashboard = std::fs::read_to_string(path).unwrap();
    for name in [
        "rotagate_host_in_rotation",
        "rotagate_host_transactions_total",
        "rotagate_replica_lag_seconds",
        "rotagate_replica_lag_bytes",
    ] {
        assert!(dashboard.contains(name), "the dashboard charts {name}");
        assert!(
            metrics.contains(&format!("\n{name}{{")),
            "/metrics serves {name}"
        );
    }
}

/// Clients reading in a loop: reads by port, errors, and whether any connection closed.
struct ReadLoad {
    clients: Vec<Arc<tokio_postgres::Client>>,
    ports: Arc<Mutex<HashMap<i32, usize>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ReadLoad {
    async fn start(proxy: &TestProxy, n: usize) -> Self {
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

    fn on(&self, pg: &Pg) -> usize {
        let ports = self.ports.lock().unwrap();
        ports.get(&i32::from(pg.port)).copied().unwrap_or(0)
    }

    /// Stops; the errors, after checking no client connection closed.
    async fn finish(self) -> Vec<String> {
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
async fn under_read_load() -> ((Pg, Pg, Pg), TestProxy, ReadLoad) {
    let (primary, one, two) = three();
    let proxy = reader_proxy([&primary, &one, &two], "").await;
    let load = ReadLoad::start(&proxy, 4).await;
    wait_until(20, "reads on both standbys", || async {
        load.on(&one) >= 50 && load.on(&two) >= 50
    })
    .await;
    ((primary, one, two), proxy, load)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_killed_under_read_load_fails_only_the_reads_in_flight() {
    let ((_primary, one, two), proxy, load) = under_read_load().await;
    one.crash();
    let on_two = load.on(&two);
    wait_until(20, "reads going on on the other standby", || async {
        load.on(&two) >= on_two + 200
    })
    .await;
    assert_eq!(in_rotation(&proxy).await, [at(&two)]);
    let errors = load.errors.lock().unwrap().clone();
    eprintln!(
        "standby killed under 4 reading clients: {} failed reads: {errors:?}",
        errors.len()
    );
    assert!(
        errors.len() <= 4,
        "at most one read in flight per client failed: {errors:?}"
    );

    // It comes back when it answers again.
    one.restart();
    wait_until(20, "the restarted standby back in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    let on_one = load.on(&one);
    wait_until(20, "reads on the restarted standby", || async {
        load.on(&one) >= on_one + 50
    })
    .await;
    let errors = load.finish().await;
    assert!(errors.len() <= 4, "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_under_read_load_fails_no_read() {
    let ((primary, one, two), proxy, load) = under_read_load().await;
    proxy.rotate_to(&primary, APP_USER, "rotated-pw-2").await;
    let (a, b) = (load.on(&one), load.on(&two));
    wait_until(
        20,
        "reads on both standbys with the new credential",
        || async { load.on(&one) >= a + 100 && load.on(&two) >= b + 100 },
    )
    .await;
    assert_eq!(in_rotation(&proxy).await.len(), 2);
    let errors = load.finish().await;
    assert_eq!(errors, Vec::<String>::new(), "no read failed");
}

/// Makes `pg` refuse TCP logins of `user` (a pg_hba.conf `reject` line first), or take them
/// again; reloads.
fn refuse(pg: &Pg, user: &str, on: bool) {
    let path = pg.dir().join("data/pg_hba.conf");
    let hba = std::fs::read_to_string(&path).unwrap();
    let line = format!("host all {user} 127.0.0.1/32 reject\n");
    let hba = match on {
        true => format!("{line}{hba}"),
        false => hba.replace(&line, ""),
    };
    std::fs::write(&path, hba).unwrap();
    common::pg::give_to_pg(&path);
    pg.sql("SELECT pg_reload_conf()");
}

/// A role made on the primary, once every standby has replayed it.
async fn second_role(primary: &Pg, standbys: &[&Pg]) -> (&'static str, &'static str) {
    let (user, password) = ("app_second", "second-pw-1");
    primary.sql(&format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'"));
    for pg in standbys {
        wait_until(20, "the role replayed", || async {
            pg.sql(&format!(
                "SELECT count(*) FROM pg_roles WHERE rolname = '{user}'"
            )) == "1"
        })
        .await;
    }
    (user, password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_refusing_a_new_credential_leaves_the_rotation_until_it_takes_it() {
    let (primary, one, two) = three();
    let proxy = reader_proxy([&primary, &one, &two], "").await;
    let (user, password) = second_role(&primary, &[&one, &two]).await;
    let load = ReadLoad::start(&proxy, 2).await;
    wait_until(20, "reads on both standbys", || async {
        load.on(&one) >= 20 && load.on(&two) >= 20
    })
    .await;

    // Every host refuses it: the rotation fails and both standbys keep serving.
    refuse(&one, user, true);
    refuse(&two, user, true);
    let before = proxy.generation().await;
    write_secret(&proxy.secret, &primary, user, password);
    wait_until(20, "the failed rotation", || async {
        proxy
            .metric("rotagate_rotations_total", "result=\"rejected\"")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(proxy.generation().await, before);
    assert_eq!(in_rotation(&proxy).await.len(), 2);

    // One takes it: the rotation is applied on that one, the other leaves the rotation.
    refuse(&one, user, false);
    // Now, or at the engine's own retry.
    let _ = proxy.post("/rotate", "").await;
    wait_until(20, "the rotation applied", || async {
        proxy.generation().await > before
    })
    .await;
    wait_until(5, "the refusing standby out of rotation", || async {
        in_rotation(&proxy).await == [at(&one)]
    })
    .await;
    let a = load.on(&one);
    wait_until(20, "reads on the standby that took it", || async {
        load.on(&one) >= a + 100
    })
    .await;

    // It comes back once it takes the credential.
    refuse(&two, user, false);
    wait_until(20, "the other standby back in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    let errors = load.finish().await;
    assert_eq!(errors, Vec::<String>::new(), "no read failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_leaves_and_prefer_standby_falls_back_to_the_primary() {
    let (primary, one, two) = three();
    let proxy = reader_proxy([&primary, &one, &two], "").await;
    two.promote();
    wait_until(20, "the promoted standby out of rotation", || async {
        in_rotation(&proxy).await == [at(&one)]
    })
    .await;
    drop(proxy);

    // prefer-standby: with its standby lagging, reads go to the primary, then back.
    let proxy = reader_proxy_with(
        &[&primary, &one],
        "prefer-standby",
        "max_replica_lag = \"1s\"",
    )
    .await;
    let client = proxy.client().await;
    assert_eq!(port_of_read(&client).await.unwrap(), i32::from(one.port));
    let writing = keep_writing(&primary);
    one.sql("SELECT pg_wal_replay_pause()");
    wait_until(10, "the primary in rotation instead", || async {
        in_rotation(&proxy).await == [at(&primary)]
    })
    .await;
    assert_eq!(
        port_of_read(&client).await.unwrap(),
        i32::from(primary.port)
    );
    one.sql("SELECT pg_wal_replay_resume()");
    wait_until(10, "the standby back, the primary out", || async {
        in_rotation(&proxy).await == [at(&one)]
    })
    .await;
    writing.store(true, Ordering::Relaxed);
    assert_eq!(port_of_read(&client).await.unwrap(), i32::from(one.port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_entry_beside_its_writer_entry_shares_the_secret_and_rotates_with_it() {
    let (primary, one, two) = three();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.json");
    write_secret(&secret, &primary, APP_USER, APP_PASSWORD);
    let hosts: Vec<String> = [&primary, &one, &two]
        .iter()
        .map(|pg| format!("\"127.0.0.1:{}\"", pg.port))
        .collect();
    let entry = |name: &str, lines: &str| {
        format!(
            "[[databases]]\nname = \"{name}\"\n[databases.upstream]\nhosts = [{}]\n\
             database = \"appdb\"\ntls = \"disable\"\n{lines}\n[databases.credentials]\n\
             source = \"file\"\n[databases.credentials.file]\npath = \"{}\"\n",
            hosts.join(", "),
            secret.display()
        )
    };
    let text = entry("app", "target_session_attrs = \"read-write\"")
        + &entry(
            "app_ro",
            "target_session_attrs = \"standby\"\nload_balance_hosts = \"random\"\n\
             replica_check_interval = \"200ms\"",
        );
    let proxy = TestProxy::builder(&primary).databases(&text).start().await;
    let writer = proxy
        .connect(&proxy.url_as(CLIENT_USER, CLIENT_PASSWORD, "app"))
        .await
        .unwrap();
    let reader = proxy
        .connect(&proxy.url_as(CLIENT_USER, CLIENT_PASSWORD, "app_ro"))
        .await
        .unwrap();
    assert_eq!(
        port_of_read(&writer).await.unwrap(),
        i32::from(primary.port)
    );
    let standbys = [i32::from(one.port), i32::from(two.port)];
    wait_until(20, "reads on both standbys", || async {
        let spread = reads(&reader, 20).await;
        standbys.iter().all(|p| spread.contains_key(p))
    })
    .await;

    // One change of the secret rotates both entries.
    primary.sql(&format!(
        "ALTER ROLE {APP_USER} PASSWORD 'shared-rotated-1'"
    ));
    write_secret(&secret, &primary, APP_USER, "shared-rotated-1");
    let generation = |name: &'static str| {
        let proxy = &proxy;
        async move {
            let s: serde_json::Value = serde_json::from_str(&proxy.get("/status").await.1).unwrap();
            s["databases"][name]["generation"].as_u64().unwrap_or(0)
        }
    };
    wait_until(20, "both entries on the new credential", || async {
        generation("app").await == 2 && generation("app_ro").await == 2
    })
    .await;
    assert_eq!(
        port_of_read(&writer).await.unwrap(),
        i32::from(primary.port)
    );
    let spread = reads(&reader, 50).await;
    assert!(spread.keys().all(|p| standbys.contains(p)), "{spread:?}");
}

/// Sets the custom setting `rotagate.migration` on `pg` (a stand-in for the newest migration a
/// server has) and reloads.
fn migration(pg: &Pg, version: &str) {
    let path = pg.dir().join("data/postgresql.auto.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("rotagate.migration"))
        .collect();
    let text = format!("{}\nrotagate.migration = '{version}'\n", kept.join("\n"));
    std::fs::write(&path, text).unwrap();
    common::pg::give_to_pg(&path);
    pg.sql("SELECT pg_reload_conf()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_parity_value_differs_stays_out_until_it_agrees() {
    let (primary, one, two) = three();
    for pg in [&primary, &one] {
        migration(pg, "41");
    }
    migration(&two, "40");
    let extra = "parity_query = \"SELECT current_setting('rotagate.migration', true)\"";
    let proxy = reader_proxy_with(&[&primary, &one, &two], "standby", extra).await;
    wait_until(10, "the mismatch counted", || async {
        proxy
            .metric_or_zero("rotagate_parity_mismatches_total", "appdb")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(in_rotation(&proxy).await, [at(&one)]);
    migration(&two, "41");
    wait_until(
        20,
        "the standby in rotation once it agrees (asked again after 5 s)",
        || async { in_rotation(&proxy).await.len() == 2 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_replicas_listed_lag_is_read_from_what_each_standby_received() {
    let (primary, one, two) = three();
    let proxy = reader_proxy_with(&[&one, &two], "standby", "max_replica_lag = \"1s\"").await;
    wait_until(20, "both standbys in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    let writing = keep_writing(&primary);
    one.sql("SELECT pg_wal_replay_pause()");
    let paused = Instant::now();
    wait_until(10, "the paused standby out of rotation", || async {
        in_rotation(&proxy).await == [at(&two)]
    })
    .await;
    let out_after = paused.elapsed();
    eprintln!("replicas only: paused standby out {out_after:?} after the pause (bound 1 s)");
    assert!(out_after <= Duration::from_secs(3), "{out_after:?}");
    one.sql("SELECT pg_wal_replay_resume()");
    wait_until(10, "the standby back in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    writing.store(true, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_session_mode_each_session_goes_to_a_standby_in_rotation() {
    let (primary, one, two) = three();
    let list = format!("\"127.0.0.1:{}\", \"127.0.0.1:{}\"", one.port, two.port);
    let proxy = TestProxy::builder(&primary)
        .mode("session")
        .pool_size(40)
        .upstream_hosts(&format!(
            "hosts = [{list}]\ntarget_session_attrs = \"standby\"\nload_balance_hosts = \"random\"\n\
             replica_check_interval = \"200ms\""
        ))
        .start()
        .await;
    wait_until(20, "both standbys in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    let mut by_port: HashMap<i32, usize> = HashMap::new();
    for _ in 0..40 {
        let c = proxy.client().await;
        // A session stays on its host.
        let first = port_of_read(&c).await.unwrap();
        assert_eq!(port_of_read(&c).await.unwrap(), first);
        *by_port.entry(first).or_default() += 1;
    }
    eprintln!("40 sessions: {by_port:?}");
    for pg in [&one, &two] {
        assert!(
            by_port.get(&i32::from(pg.port)).copied().unwrap_or(0) >= 5,
            "{by_port:?}"
        );
    }
}
