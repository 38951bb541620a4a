//! Failover (design 8.4): which host rotagate serves from among `upstream.hosts`, and how it
//! follows the writer. A primary and a streaming standby made by the harness, as the
//! acceptance script makes them.

mod common;

use common::aws::{Moto, rds_json};
use common::pg::Pg;
use common::*;
use rotagate::backend::UpstreamTarget;
use rotagate::config::{HostPort, TargetSessionAttrs};
use rotagate::rotation::writer::{Role, choose, probe_all};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_classified_and_the_writer_is_chosen_standby_first() {
    let primary = app_cluster();
    let standby = primary.standby();
    let host = |pg: &Pg| HostPort::parse(&format!("127.0.0.1:{}", pg.port)).unwrap();
    let hosts = [host(&standby), host(&primary)];
    let text = format!(
        "[[clients]]\nuser = \"a\"\npassword = \"b\"\n[upstream]\nhosts = [\"{}\", \"{}\"]\n\
         database = \"appdb\"\ntls = \"disable\"\n[credentials]\nsource = \"file\"\n\
         [credentials.file]\npath = \"/x\"\n",
        hosts[0], hosts[1]
    );
    let cfg = rotagate::config::parse(&text, []).unwrap();
    let base = UpstreamTarget::from_config(&cfg.databases[0].upstream).unwrap();
    let creds = rotagate::secrets::Credentials::from_json(
        format!(r#"{{"username":"{APP_USER}","password":"{APP_PASSWORD}"}}"#).as_bytes(),
        "v".into(),
    )
    .unwrap();
    let probes = probe_all(&base, &hosts, &creds, TargetSessionAttrs::ReadWrite).await;
    let roles: Vec<_> = probes.iter().map(|p| p.role.clone()).collect();
    assert_eq!(roles, [Ok(Role::Standby), Ok(Role::Primary)]);
    let writer = choose(TargetSessionAttrs::ReadWrite, &probes).unwrap();
    assert_eq!(writer.host, hosts[1]);
    assert_eq!(
        choose(TargetSessionAttrs::Any, &probes).unwrap().host,
        hosts[0]
    );

    // The primary goes, the standby is promoted: the writer is the first host now.
    primary.crash();
    standby.promote();
    let probes = probe_all(&base, &hosts, &creds, TargetSessionAttrs::ReadWrite).await;
    assert_eq!(probes[0].role, Ok(Role::Primary));
    assert!(probes[1].role.is_err(), "{:?}", probes[1]);
    assert_eq!(
        choose(TargetSessionAttrs::ReadWrite, &probes).unwrap().host,
        hosts[0]
    );
}

/// `hosts = [...]` for these clusters, in this order, with more `[upstream]` lines.
fn hosts_lines(order: &[&Pg], extra: &str) -> String {
    let list: Vec<String> = order
        .iter()
        .map(|pg| format!("\"127.0.0.1:{}\"", pg.port))
        .collect();
    format!("hosts = [{}]\n{extra}", list.join(", "))
}

/// rotagate on `lines`, and a client whose first write lands on `primary`.
async fn serving(primary: &Pg, lines: &str) -> (TestProxy, tokio_postgres::Client) {
    let proxy = TestProxy::builder(primary)
        .upstream_hosts(lines)
        .start()
        .await;
    let client = proxy.client().await;
    assert_eq!(write(&client).await.unwrap(), i32::from(primary.port));
    (proxy, client)
}

async fn status(proxy: &TestProxy) -> serde_json::Value {
    serde_json::from_str(&proxy.get("/status").await.1).unwrap()
}

/// The port of the server that answered an INSERT through `client`.
async fn write(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    let row = client
        .query_one(
            "INSERT INTO fo (at) VALUES (clock_timestamp()) RETURNING inet_server_port()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// One client writing in a loop on one connection: the port of each commit, and the errors.
struct Writer {
    client: Arc<tokio_postgres::Client>,
    ports: Arc<Mutex<Vec<i32>>>,
    task: tokio::task::JoinHandle<u32>,
}

impl Writer {
    fn start(client: tokio_postgres::Client, stop: Arc<AtomicBool>) -> Self {
        let client = Arc::new(client);
        let ports = Arc::new(Mutex::new(Vec::new()));
        let (c, p) = (client.clone(), ports.clone());
        let task = tokio::spawn(async move {
            let mut errors = 0;
            // A closed connection ends the loop (the test then fails on it) rather than
            // spinning on errors that come back at once.
            while !stop.load(Ordering::Relaxed) && !c.is_closed() {
                match write(&c).await {
                    Ok(port) => p.lock().unwrap().push(port),
                    Err(e) => {
                        errors += 1;
                        eprintln!("a writer's transaction failed: {e:?}");
                        tokio::task::yield_now().await;
                    }
                }
            }
            errors
        });
        Self {
            client,
            ports,
            task,
        }
    }

    fn commits_on(&self, port: u16) -> usize {
        let ports = self.ports.lock().unwrap();
        ports.iter().filter(|p| **p == i32::from(port)).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_under_load_keeps_every_client_connection() {
    let (primary, standby) = primary_and_standby();
    let proxy = TestProxy::builder(&primary)
        .upstream_hosts(&hosts_lines(&[&standby, &primary], ""))
        .pool("acquire_timeout = \"20s\"")
        .start()
        .await;
    let s = status(&proxy).await;
    assert_eq!(
        s["upstream"]["writer"],
        format!("127.0.0.1:{}", primary.port)
    );
    let idle = proxy.client().await;
    assert_eq!(write(&idle).await.unwrap(), i32::from(primary.port));
    // A named prepared statement, made on the old writer.
    let port_of = idle.prepare("SELECT inet_server_port()").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for _ in 0..4 {
        writers.push(Writer::start(proxy.client().await, stop.clone()));
    }
    wait_until(30, "every client writing through rotagate", || async {
        writers.iter().all(|w| w.commits_on(primary.port) >= 10)
    })
    .await;
    primary.crash();
    standby.promote();
    wait_until(
        30,
        "every client writing on the promoted standby",
        || async {
            let closed = writers.iter().filter(|w| w.client.is_closed()).count();
            assert_eq!(closed, 0, "client connections closed by the failover");
            writers.iter().all(|w| w.commits_on(standby.port) >= 10)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let errors = w.task.await.unwrap();
        assert!(!w.client.is_closed(), "the client connection stayed open");
        assert!(
            errors <= 2,
            "only the transaction in flight fails: {errors} errors"
        );
    }
    assert_eq!(
        write(&idle).await.unwrap(),
        i32::from(standby.port),
        "an idle client goes on after the failover"
    );
    let row = idle.query_one(&port_of, &[]).await.unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        i32::from(standby.port),
        "prepared again on the new writer"
    );
    assert!(proxy.metric("rotagate_failovers_total", "appdb").await >= 1.0);
    let writer_at = |port: u16| format!("host=\"127.0.0.1:{port}\"");
    assert_eq!(
        proxy
            .metric("rotagate_upstream_writer", &writer_at(standby.port))
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("rotagate_upstream_writer", &writer_at(primary.port))
            .await,
        0.0
    );
    let s = status(&proxy).await;
    assert_eq!(
        s["upstream"]["last_failover"]["to"],
        format!("127.0.0.1:{}", standby.port)
    );
    assert_eq!(s["upstream"]["hosts"][0]["role"], "primary");
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_a_standby_read_write_is_never_ready_and_any_serves_it() {
    let (primary, standby) = primary_and_standby();
    let only = hosts_lines(&[&standby], "target_session_attrs = \"read-write\"");
    let proxy = TestProxy::builder(&primary)
        .upstream_hosts(&only)
        .start_unready()
        .await;
    wait_until(30, "the standby to be looked at", || async {
        status(&proxy).await["upstream"]["hosts"][0]["role"] == "standby"
    })
    .await;
    // Looked at, and the credential validated on it: still not ready, as no host is writable.
    wait_until(30, "the credential to be validated", || async {
        status(&proxy).await["last_attempt"]["outcome"] == "validated"
    })
    .await;
    assert_eq!(proxy.get("/readyz").await.0, 503);
    let s = status(&proxy).await;
    assert!(s["upstream"]["writer"].is_null(), "{s}");
    let (code, body) = proxy.post("/failover", "").await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("no host is writable"), "{body}");
    proxy.stop().await.unwrap();

    let any = hosts_lines(&[&standby], "target_session_attrs = \"any\"");
    let proxy = TestProxy::builder(&primary)
        .upstream_hosts(&any)
        .start()
        .await;
    let client = proxy.client().await;
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "served from the standby");
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_failover_moves_to_a_host_promoted_silently() {
    let (primary, standby) = primary_and_standby();
    let lines = hosts_lines(&[&standby, &primary], "writer_check_interval = \"1h\"");
    let (proxy, client) = serving(&primary, &lines).await;
    // Promoted while the primary still runs: libpq's order says the first host now.
    standby.promote();
    let (code, body) = proxy.post("/failover", "").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("now serving from 127.0.0.1:{}", standby.port)),
        "{body}"
    );
    assert_eq!(write(&client).await.unwrap(), i32::from(standby.port));
    let (code, body) = proxy.post("/failover", "").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"outcome\":\"unchanged\""), "{body}");
    proxy.stop().await.unwrap();
}

/// Sessions ever opened on `pg`'s appdb (`pg_stat_database.sessions`, flushed when each ends).
fn sessions(pg: &Pg) -> i64 {
    let n = pg.sql("SELECT sessions FROM pg_stat_database WHERE datname = 'appdb'");
    n.trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_check_asks_kept_probe_sessions_and_still_finds_a_silent_promotion() {
    let (primary, standby) = primary_and_standby();
    let lines = hosts_lines(&[&standby, &primary], "writer_check_interval = \"100ms\"");
    let (proxy, client) = serving(&primary, &lines).await;
    let checked = |s: serde_json::Value| s["upstream"]["hosts"][0]["checked_at"].as_u64();
    let first = checked(status(&proxy).await).unwrap();
    let before = [sessions(&primary), sessions(&standby)];
    // About 20 checks: with a fresh login per host per check, 20 sessions on each.
    wait_until(10, "two seconds of checks", || async {
        checked(status(&proxy).await).unwrap() >= first + 2
    })
    .await;
    let after = [sessions(&primary), sessions(&standby)];
    for (b, a) in before.iter().zip(after) {
        // One for each psql that read the count, and at most one probe session opened again.
        assert!(
            a - b <= 3,
            "sessions opened during the checks: {before:?} -> {after:?}"
        );
    }
    // A promotion changes a role on a kept session: the full search finds it.
    standby.promote();
    wait_until(10, "writes on the promoted standby", || async {
        write(&client).await.ok() == Some(i32::from(standby.port))
    })
    .await;
    proxy.stop().await.unwrap();
}

/// An RDS event from `tests/fixtures/rds/NAME.json`.
fn rds_event(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/tests/fixtures/rds/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rds_failover_event_on_the_queue_starts_the_search_at_once() {
    let (primary, standby) = primary_and_standby();
    let moto = Moto::start().await;
    let aws = moto.clients().await;
    aws.create_secret("app/db", rds_json(&primary, APP_USER, APP_PASSWORD))
        .await;
    let queue = aws.create_queue("rds-events").await;
    aws.route_rds(&queue).await;
    // No periodic check to speak of: only the event can tell of the promotion.
    let lines = hosts_lines(
        &[&standby, &primary],
        "writer_check_interval = \"1h\"\nrds_cluster_id = \"app-cluster\"",
    );
    let mut b = TestProxy::builder(&primary)
        .upstream_hosts(&lines)
        .source("aws", &moto.section("app/db", Some(&queue)))
        .credentials("refresh_interval = \"1h\"");
    for (k, v) in moto.env() {
        b = b.var(&k, &v);
    }
    let r = b.spawn().await;
    r.ready().await;
    let client = r.client().await;
    assert_eq!(write(&client).await.unwrap(), i32::from(primary.port));
    // Another cluster's failover moves nothing.
    let mut other = rds_event("cluster-failover-completed");
    other["detail"]["SourceIdentifier"] = "other-cluster".into();
    aws.put_event(&other).await;
    wait_until(20, "the other cluster's event to be read", || async {
        aws.depth(&queue).await == 0
            && r.metric("rotagate_events_total", "outcome=\"ignored\"")
                .await
                >= 1.0
    })
    .await;
    standby.promote();
    aws.put_event(&rds_event("cluster-failover-completed"))
        .await;
    wait_until(20, "writes on the promoted standby", || async {
        write(&client).await.ok() == Some(i32::from(standby.port))
    })
    .await;
    assert_eq!(r.metric("rotagate_failovers_total", "appdb").await, 1.0);
    let applied = "outcome=\"applied\",database=\"appdb\"";
    assert_eq!(r.metric("rotagate_events_total", applied).await, 1.0);
    let log = r.stop().await;
    assert!(
        log.contains("RDS failover event") && log.contains("RDS-EVENT-0071"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_error_on_the_serving_host_starts_a_search() {
    let (primary, standby) = primary_and_standby();
    // The primary first; no periodic check to speak of.
    let lines = hosts_lines(&[&primary, &standby], "writer_check_interval = \"1h\"");
    let (proxy, client) = serving(&primary, &lines).await;
    // The standby is promoted and the old primary turns read-only, as a demoted node would.
    standby.promote();
    primary.sql("ALTER SYSTEM SET default_transaction_read_only = on");
    primary.sql("SELECT pg_reload_conf()");
    // Each pooled backend reads its configuration again only after the next message it is
    // already waiting for (PostgreSQL's loop), so writes may still succeed for a moment; the
    // first that fails must fail read-only.
    let first_error = std::sync::Mutex::new(None);
    wait_until(20, "a write to fail on the demoted primary", || async {
        if let Err(e) = write(&client).await {
            *first_error.lock().unwrap() = Some(e.code().cloned());
        }
        first_error.lock().unwrap().is_some()
    })
    .await;
    assert_eq!(
        first_error.into_inner().unwrap().flatten(),
        Some(tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );
    wait_until(20, "writes on the promoted standby", || async {
        write(&client).await.ok() == Some(i32::from(standby.port))
    })
    .await;
    let s = status(&proxy).await;
    assert_eq!(s["upstream"]["last_failover"]["trigger"], "upstream_lost");
    assert_eq!(s["upstream"]["hosts"][0]["role"], "read_only");
    proxy.stop().await.unwrap();
}

/// A line of /etc/hosts for one name, removed when dropped: how a test makes a name change
/// address (the resolver reads the file at every lookup). Editing it needs root, as CI runs.
struct HostsEntry {
    name: String,
}

const ETC_HOSTS: &str = "/etc/hosts";

impl HostsEntry {
    fn add(name: &str, addr: &str) -> Self {
        let entry = Self { name: name.into() };
        entry.set(addr);
        entry
    }

    /// Points the name at `addr` (rewriting the file in place: it may be a bind mount).
    fn set(&self, addr: &str) {
        let mut text = self.others();
        text.push_str(&format!("{addr} {}\n", self.name));
        std::fs::write(ETC_HOSTS, text).unwrap_or_else(|e| {
            panic!("this test changes a name's address in {ETC_HOSTS} and needs to write it (run as root, as CI does): {e}")
        });
    }

    fn others(&self) -> String {
        let text = std::fs::read_to_string(ETC_HOSTS).unwrap_or_default();
        text.lines()
            .filter(|l| !l.split_whitespace().skip(1).any(|n| n == self.name))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        let _ = std::fs::write(ETC_HOSTS, self.others());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_is_resolved_again_at_every_connect() {
    let pg = Pg::start_with(&[("listen_addresses", "127.0.0.1,127.0.0.2".into())]);
    pg.app_db(APP_USER, APP_PASSWORD);
    let name = format!("rotagate-dns-{}.test", std::process::id());
    let entry = HostsEntry::add(&name, "127.0.0.1");
    // A secret without a host: the name in the config is the endpoint.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.json");
    let json = format!(r#"{{"username":"{APP_USER}","password":"{APP_PASSWORD}"}}"#);
    std::fs::write(&secret, json).unwrap();
    let proxy = TestProxy::builder(&pg)
        .upstream_hosts(&format!("hosts = [\"{name}:{}\"]", pg.port))
        .secret_at(&secret)
        .start()
        .await;
    let client = proxy.client().await;
    let server_addr = || async {
        let row = client
            .query_one("SELECT host(inet_server_addr())", &[])
            .await?;
        Ok::<String, tokio_postgres::Error>(row.get(0))
    };
    assert_eq!(server_addr().await.unwrap(), "127.0.0.1");
    // The name moves; the pool's connections end (as a failover ends them): the next
    // connection goes to the new address.
    entry.set("127.0.0.2");
    pg.sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{APP_USER}'"
    ));
    wait_until(20, "a connection to the name's new address", || async {
        server_addr().await.ok().as_deref() == Some("127.0.0.2")
    })
    .await;
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_answers_does_not_hold_up_the_choice() {
    let (primary, _standby) = primary_and_standby();
    // Listed first: accepts TCP and then says nothing, as a host behind a dropped route does.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || silent.incoming().take(64).flatten().collect::<Vec<_>>());
    // Were the choice to wait for it, readiness would take connect_timeout (a minute).
    let lines = format!(
        "hosts = [\"127.0.0.1:{silent_port}\", \"127.0.0.1:{}\"]\nconnect_timeout = \"60s\"",
        primary.port
    );
    let proxy = TestProxy::builder(&primary)
        .upstream_hosts(&lines)
        .start_unready()
        .await;
    wait_until(20, "ready on the primary", || async {
        proxy.get("/readyz").await.0 == 200
    })
    .await;
    let s = status(&proxy).await;
    assert_eq!(
        s["upstream"]["writer"],
        format!("127.0.0.1:{}", primary.port)
    );
    let first = s["upstream"]["hosts"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(first.contains("no answer yet"), "{s}");
    let client = proxy.client().await;
    assert_eq!(write(&client).await.unwrap(), i32::from(primary.port));
    proxy.stop().await.unwrap();
    drop(held);
}
