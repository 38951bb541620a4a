//! Reads through a reader entry, against reads straight to one standby: read-only pgbench
//! (`-S`) on a primary with two streaming standbys, rotagate in transaction mode with
//! `hosts = [primary, standby 1, standby 2]`, `target_session_attrs = "standby"` and
//! `load_balance_hosts = "random"`, SCRAM client auth. Prints TPS, mean latency, rotagate's CPU
//! per transaction (user + system, then the user-space share), each standby's PostgreSQL CPU
//! per transaction, and how the reads spread. This machine has 2 cores: two standbys share
//! them with pgbench and rotagate, so the TPS shows the cost of the hop, not scaling.
//!
//!     cargo bench --bench readers            # BENCH_SECONDS (default 10) per run

mod support;

use std::process::Child;
use support::pg::{Pg, free_port};
use support::pgbench::{Result, Target, cluster_ticks, pgbench};
use support::{PASSWORD, USER};

const UP_USER: &str = "app_owner";
const UP_PASSWORD: &str = "upstream-pw-1";
const POOL: u32 = 8;

fn postmaster(pg: &Pg) -> u32 {
    std::fs::read_to_string(pg.dir().join("data/postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .expect("postmaster.pid")
}

/// rotagate with a reader entry over `hosts`; the process, its client and admin ports.
fn start(dir: &std::path::Path, hosts: &[&Pg]) -> (Child, u16, u16) {
    let secret = dir.join("secret.json");
    std::fs::write(
        &secret,
        format!(r#"{{"username":"{UP_USER}","password":"{UP_PASSWORD}"}}"#),
    )
    .unwrap();
    let list: Vec<String> = hosts
        .iter()
        .map(|pg| format!("\"127.0.0.1:{}\"", pg.port))
        .collect();
    let (port, admin) = (free_port(), free_port());
    let config = dir.join("readers.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\nworkers = 1\n[admin]\naddr = \"127.0.0.1:{admin}\"\n\
             [[clients]]\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
             [upstream]\nhosts = [{}]\ndatabase = \"appdb\"\ntls = \"disable\"\n\
             target_session_attrs = \"standby\"\nload_balance_hosts = \"random\"\n\
             [pool]\nmode = \"transaction\"\nsize = {POOL}\n\
             [credentials]\nsource = \"file\"\n[credentials.file]\npath = \"{}\"\n",
            list.join(", "),
            secret.display()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_rotagate").as_ref();
    (support::spawn(bin, &config, port), port, admin)
}

/// The admin listener's answer to `GET path` (empty when it cannot be read).
fn get(admin: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin)) else {
        return String::new();
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: rotagate\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// Polls `/metrics` until `n` hosts are in rotation (30 s at most).
fn wait_for_rotation(admin: u16, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = get(admin, "/metrics");
        let on = (text.lines())
            .filter(|l| l.starts_with("rotagate_host_in_rotation{") && l.ends_with(" 1"))
            .count();
        if on >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} hosts in rotation within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `rotagate_host_transactions_total` per host, from the admin listener.
fn spread(admin: u16) -> Vec<(String, f64)> {
    let text = get(admin, "/metrics");
    text.lines()
        .filter(|l| l.starts_with("rotagate_host_transactions_total{"))
        .filter_map(|l| {
            let host = l.split("host=\"").nth(1)?.split('"').next()?.to_owned();
            Some((host, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// A cluster's CPU so far, in clock ticks: its live processes' own, and the postmaster's
/// children that have ended (reaped into its cutime and cstime), so a backend that ends during
/// a run counts for the part it spent in the run.
fn cluster_cpu(pg: &Pg) -> u64 {
    let pm = postmaster(pg);
    let live: u64 = cluster_ticks(pm).values().sum();
    let stat = std::fs::read_to_string(format!("/proc/{pm}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17 of the whole line: 14 and 15 after "(comm) ".
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    live + field(13) + field(14)
}

/// Every standby's PostgreSQL CPU, in clock ticks, spent while `run` runs.
fn standby_ticks<T>(standbys: &[&Pg], run: impl FnOnce() -> T) -> (T, Vec<u64>) {
    let before: Vec<u64> = standbys.iter().map(|s| cluster_cpu(s)).collect();
    let out = run();
    let spent = (standbys.iter().zip(before)).map(|(s, b)| cluster_cpu(s).saturating_sub(b));
    (out, spent.collect())
}

fn row(name: &str, r: &Result, pg_ticks: &[u64], secs: u64) {
    let txs = r.tps * secs as f64;
    let per_tx = |t: u64| t as f64 / 100.0 * 1e6 / txs.max(1.0);
    let proxy = match (r.cpu_us_per_tx, r.user_us_per_tx) {
        (Some(c), Some(u)) => format!("{c:.1}/{u:.1}"),
        _ => "-".into(),
    };
    let pg: Vec<String> = pg_ticks
        .iter()
        .map(|t| format!("{:.1}", per_tx(*t)))
        .collect();
    println!(
        "{name:<28} {:>9.0} {:>8.3} {:>12} {:>16}",
        r.tps,
        r.latency_ms,
        proxy,
        pg.join(" + ")
    );
}

fn main() {
    let Some(secs) = support::bench_seconds(10) else {
        return;
    };
    let primary = Pg::start_with(&[("max_connections", "200".into())]);
    primary.app_db(UP_USER, UP_PASSWORD);
    primary.sql(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"));
    primary.sql_in("appdb", &format!("GRANT pg_read_all_data TO {USER}"));
    primary.pgbench_init(UP_USER, UP_PASSWORD);
    let (one, two) = (primary.standby(), primary.standby());
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port, admin) = start(dir.path(), &[&primary, &one, &two]);
    wait_for_rotation(admin, 2);
    println!(
        "pgbench -S -T {secs} -c 8, transaction mode, pool.size {POOL} per host, SCRAM clients; \
         PostgreSQL {}",
        primary.sql("SHOW server_version")
    );
    println!(
        "{:<28} {:>9} {:>8} {:>12} {:>16}",
        "target", "tps", "ms", "proxy us/user", "standby pg us/tx"
    );
    let standbys = [&one, &two];
    let args = ["-S", "-c", "8", "-j", "2"];
    for _ in 0..2 {
        let direct = Target {
            name: "direct",
            port: one.port,
            user: USER,
            password: PASSWORD,
            pid: None,
        };
        let (r, t) = standby_ticks(&standbys, || pgbench(&direct, &args, secs));
        row("direct to standby 1", &r, &t, secs);
        let through = Target {
            name: "rotagate",
            port,
            user: USER,
            password: PASSWORD,
            pid: Some(child.id()),
        };
        let (r, t) = standby_ticks(&standbys, || pgbench(&through, &args, secs));
        row("rotagate, 2 standbys", &r, &t, secs);
    }
    for (host, n) in spread(admin) {
        println!("reads on {host}: {n:.0}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
