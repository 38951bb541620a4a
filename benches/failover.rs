//! Failover, side by side: rotagate (transaction mode, `hosts = [standby, primary]`) and
//! libpq's multi-host connection string straight to PostgreSQL
//! (`host=a,b target_session_attrs=read-write`). Each round builds a primary and a streaming
//! standby (`pg_basebackup -R`), runs CLIENTS clients writing one INSERT per transaction, each on
//! one connection (an error is counted and the next transaction goes on the same connection;
//! only a closed connection is replaced, counted as lost and re-made), and one more connection
//! left idle; stops the primary with `pg_ctl -m immediate` LOAD_BEFORE seconds in and promotes
//! the standby a second later. A `psql` (libpq) probe writes every 50 ms on a fresh
//! connection. Reported per round: the first probe write and the first load commit after
//! `pg_ctl promote` returned, failed transactions, connections lost / re-made, failed connection
//! attempts, whether the idle connection still answers, the longest transaction.
//!
//!     cargo bench --bench failover            # BENCH_SECONDS (default 10) after the promote
//!
//! The load uses tokio-postgres, whose multi-host strings and `target_session_attrs` follow
//! libpq's; the probe is psql itself.

#[path = "../tests/common/mod.rs"]
mod common;

use common::pg::Pg;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;
const LOAD_BEFORE: Duration = Duration::from_secs(5);
const INSERT: &str = "INSERT INTO fo (at) VALUES (clock_timestamp())";

#[derive(Default)]
struct Tally {
    commits: Vec<Instant>,
    failed: u64,
    lost: u64,
    remade: u64,
    connect_failures: u64,
    longest: Duration,
}

struct Row {
    name: &'static str,
    first_probe: Option<Duration>,
    first_commit: Option<Duration>,
    tally: Tally,
    idle_ok: bool,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let after: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rows = rt.block_on(async { vec![through_rotagate(after).await, direct(after).await] });
    let secs =
        |d: Option<Duration>| d.map_or("none".into(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!(
        "| | first psql write after promote | first load commit after promote | failed transactions | connections lost / re-made | failed connection attempts | idle connection afterwards | longest transaction |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let t = &r.tally;
        println!(
            "| {} | {} | {} | {} | {} / {} | {} | {} | {:.2} s |",
            r.name,
            secs(r.first_probe),
            secs(r.first_commit),
            t.failed,
            t.lost,
            t.remade,
            t.connect_failures,
            if r.idle_ok { "answers" } else { "broken" },
            t.longest.as_secs_f64()
        );
    }
}

async fn through_rotagate(after: u64) -> Row {
    let (primary, standby) = primary_and_standby();
    let hosts = format!(
        "hosts = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
        standby.port, primary.port
    );
    let rg = TestProxy::builder(&primary)
        .upstream_hosts(&hosts)
        .pool("acquire_timeout = \"20s\"")
        .pool_size(CLIENTS as u32)
        .spawn()
        .await;
    rg.ready().await;
    let url = rg.url();
    let row = round("rotagate", &url, &url, &primary, &standby, after).await;
    rg.stop().await;
    row
}

async fn direct(after: u64) -> Row {
    let (primary, standby) = primary_and_standby();
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user={APP_USER} password={APP_PASSWORD} \
         dbname=appdb target_session_attrs=read-write connect_timeout=5",
        standby.port, primary.port
    );
    round(
        "libpq multi-host, direct",
        &url,
        &url,
        &primary,
        &standby,
        after,
    )
    .await
}

async fn round(
    name: &'static str,
    load_url: &str,
    probe_url: &str,
    primary: &Pg,
    standby: &Pg,
    after: u64,
) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let idle = connect(load_url).await.expect("the idle connection");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(load_url.to_owned(), stop.clone(), tally.clone())))
        .collect();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let prober = std::thread::spawn({
        let (url, stop, probes) = (probe_url.to_owned(), stop.clone(), probes.clone());
        move || probe(&url, &stop, &probes)
    });
    tokio::time::sleep(LOAD_BEFORE).await;
    primary.crash();
    tokio::time::sleep(Duration::from_secs(1)).await;
    standby.promote();
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(after)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let _ = prober.join();
    let idle_ok = idle.simple_query("SELECT 1").await.is_ok();
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let first = |times: &[Instant]| {
        times
            .iter()
            .filter(|t| **t >= promoted)
            .min()
            .map(|t| *t - promoted)
    };
    let first_probe = first(&probes.lock().unwrap());
    Row {
        name,
        first_probe,
        first_commit: first(&tally.commits),
        tally,
        idle_ok,
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// One client: one INSERT per transaction on one connection; a closed connection is re-made.
async fn client(url: String, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    let mut conn = connect(&url).await.ok();
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_ref().filter(|c| !c.is_closed()) else {
            if conn.take().is_some() {
                tally.lock().unwrap().lost += 1;
            }
            match connect(&url).await {
                Ok(c) => {
                    conn = Some(c);
                    tally.lock().unwrap().remade += 1;
                }
                Err(_) => {
                    tally.lock().unwrap().connect_failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        let t0 = Instant::now();
        let done = c.simple_query(INSERT).await;
        let mut t = tally.lock().unwrap();
        match done {
            Ok(_) => {
                t.commits.push(Instant::now());
                t.longest = t.longest.max(t0.elapsed());
            }
            Err(_) => t.failed += 1,
        }
    }
}

/// psql writes on a fresh connection every 50 ms (5 s at most each); the times of the writes
/// that succeeded.
fn probe(url: &str, stop: &AtomicBool, ok: &Mutex<Vec<Instant>>) {
    while !stop.load(Ordering::Relaxed) {
        let out = std::process::Command::new("timeout")
            .args([
                "-k",
                "1",
                "5",
                "psql",
                "-X",
                "-qAt",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                INSERT,
            ])
            .env("PGPASSWORD", CLIENT_PASSWORD)
            .output();
        if out.is_ok_and(|o| o.status.success()) {
            ok.lock().unwrap().push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
