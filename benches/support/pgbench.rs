//! pgbench runs against a target, with the CPU a proxy (and PostgreSQL) spent per transaction
//! read from /proc.

use std::process::Command;

/// Where pgbench connects, and the proxy process whose CPU is counted (None: direct).
pub struct Target {
    pub name: &'static str,
    pub port: u16,
    pub user: &'static str,
    pub password: &'static str,
    pub pid: Option<u32>,
}

#[derive(Default, Clone, Copy)]
pub struct Result {
    pub tps: f64,
    pub latency_ms: f64,
    pub cpu_us_per_tx: Option<f64>,
    /// The user-space share of `cpu_us_per_tx` (the rest is the kernel's: syscalls, TCP).
    pub user_us_per_tx: Option<f64>,
    /// PostgreSQL's CPU per transaction, all its processes (when asked for).
    pub pg_us_per_tx: Option<f64>,
}

/// (user, user + system) clock ticks the process has used.
pub fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after "(comm) ".
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field(11), field(11) + field(12))
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

pub fn pgbench(t: &Target, args: &[&str], secs: u64) -> Result {
    pgbench_with(t, args, secs, None)
}

/// CPU clock ticks (user + system) of each process under `postmaster` (backends, and the
/// postmaster's own helpers), and of the postmaster.
pub fn cluster_ticks(postmaster: u32) -> std::collections::HashMap<u32, u64> {
    let children =
        std::fs::read_to_string(format!("/proc/{postmaster}/task/{postmaster}/children"))
            .unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .chain(std::iter::once(postmaster))
        .map(|p| (p, cpu_ticks(p).1))
        .collect()
}

/// The ticks spent between two [`cluster_ticks`] readings by the processes alive at the second
/// (one that ended in between, a backend of the run before, counts for nothing).
fn spent(
    before: &std::collections::HashMap<u32, u64>,
    after: &std::collections::HashMap<u32, u64>,
) -> u64 {
    after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

/// [`pgbench`], counting PostgreSQL's CPU too when `postmaster` is given (backends that end
/// during the run are not counted: not for `-C`).
pub fn pgbench_with(t: &Target, args: &[&str], secs: u64, postmaster: Option<u32>) -> Result {
    let before = t.pid.map(cpu_ticks);
    let pg_before = postmaster.map(cluster_ticks);
    let out = Command::new("pgbench")
        .env("PGPASSWORD", t.password)
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &t.port.to_string(),
            "-U",
            t.user,
            "-T",
            &secs.to_string(),
        ])
        .args(args)
        .arg("appdb")
        .output()
        .expect("pgbench");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let grab = |key: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    if !out.status.success() || !text.contains("failed transactions: 0 ") {
        eprintln!("{}: pgbench {:?} had failures:\n{text}", t.name, args);
    }
    let tps = grab("tps = ");
    let txs = tps * secs as f64;
    let per_tx = |ticks: u64| ticks as f64 / ticks_per_second() * 1e6 / txs;
    let (user, cpu) = match (t.pid, before) {
        (Some(pid), Some((bu, bt))) if txs > 0.0 => {
            let (u, total) = cpu_ticks(pid);
            (Some(per_tx(u - bu)), Some(per_tx(total - bt)))
        }
        _ => (None, None),
    };
    let pg_cpu = match (postmaster, pg_before) {
        (Some(pm), Some(b)) if txs > 0.0 => Some(per_tx(spent(&b, &cluster_ticks(pm)))),
        _ => None,
    };
    Result {
        tps,
        latency_ms: grab("latency average = "),
        cpu_us_per_tx: cpu,
        user_us_per_tx: user,
        pg_us_per_tx: pg_cpu,
    }
}
