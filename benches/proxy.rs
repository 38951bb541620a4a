//! pgbench through direct PostgreSQL, rotagate and (when installed) PgBouncer, side by side in
//! one run against the same private cluster, with the same pool size and client auth (SCRAM).
//! Prints TPS, mean latency, proxy CPU per transaction in µs ("total/user": user + system, then
//! the user-space share) and rotagate/PgBouncer ratios, for rotagate with one worker (`w1`) and
//! two (`w2`).
//!
//!     cargo bench --bench proxy                 # 10 s per run
//!     BENCH_SECONDS=30 cargo bench --bench proxy
//!     BENCH_BASELINE=/path/to/older/rotagate cargo bench --bench proxy   # "before" columns too
//!
//! PgBouncer: `apt-get install pgbouncer`; it runs as the `postgres` user when we are root.
//! pg_doorman: set PG_DOORMAN to its binary (see benches/support/doorman.rs); its columns are
//! `pgd` (one worker thread, the same pool and SCRAM client auth).
//! BENCH_PREPARE_UNNAMED=1: transaction-mode rows also run rotagate with
//! `pool.prepare_unnamed = true` (`on`), and print PostgreSQL's CPU per transaction behind
//! each proxy (`pg us`).

#[path = "support/doorman.rs"]
mod doorman;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use support::pg::{Pg, free_port, give_to_pg};
use support::pgbench::{Result, Target, pgbench, pgbench_with};
use support::{PASSWORD, USER, wait_port};

const UP_USER: &str = "app_owner";
const UP_PASSWORD: &str = "upstream-pw-1";
/// Pool size for both proxies. Session mode gets one connection per client (40 >= 32
/// clients): a session-mode client holds its connection, and pgbench connects every client
/// before it starts.
const POOL: u32 = 16;
const SESSION_POOL: u32 = 40;

fn pool_for(mode: &str) -> u32 {
    if mode == "session" {
        SESSION_POOL
    } else {
        POOL
    }
}

fn start_rotagate(
    dir: &Path,
    pg: &Pg,
    mode: &str,
    bin: Option<&Path>,
    workers: usize,
    pool_extra: &str,
) -> (Child, u16) {
    let secret = dir.join("secret.json");
    std::fs::write(
        &secret,
        format!(r#"{{"username":"{UP_USER}","password":"{UP_PASSWORD}"}}"#),
    )
    .unwrap();
    let bin = bin.unwrap_or(env!("CARGO_BIN_EXE_rotagate").as_ref());
    let (child, port, _) = support::start_binary_admin(
        bin,
        dir,
        pg,
        &secret,
        mode,
        pool_for(mode),
        workers,
        pool_extra,
    );
    (child, port)
}

fn start_pgbouncer(dir: &Path, pg: &Pg, mode: &str) -> Option<(Child, u16)> {
    let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port();
    let bdir = dir.join(format!("pgbouncer-{mode}"));
    std::fs::create_dir_all(&bdir).unwrap();
    // A SCRAM verifier, as rotagate's [[clients]] hold, not the plain password: with a plain
    // one PgBouncer runs PBKDF2 at every login, and the -C rows would compare unlike work.
    // PgBouncer 1.18 then logs in upstream with the client's SCRAM keys whatever user and
    // password the database line names, so its clients are the upstream role, with the
    // server's own verifier (as PgBouncer's docs advise).
    let verifier = pg.sql(&format!(
        "SELECT rolpassword FROM pg_authid WHERE rolname = '{UP_USER}'"
    ));
    std::fs::write(
        bdir.join("userlist.txt"),
        format!("\"{UP_USER}\" \"{verifier}\"\n"),
    )
    .unwrap();
    std::fs::write(
        bdir.join("pgbouncer.ini"),
        format!(
            "[databases]\nappdb = host=127.0.0.1 port={} dbname=appdb\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {}/userlist.txt\npool_mode = {mode}\n\
             default_pool_size = {}\nmax_client_conn = 2000\nlogfile = {}/pgbouncer.log\n",
            pg.port,
            bdir.display(),
            pool_for(mode),
            bdir.display()
        ),
    )
    .unwrap();
    give_to_pg(&bdir);
    let mut cmd = if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", bin]);
        c
    } else {
        Command::new(bin)
    };
    let mut child = cmd
        .arg(bdir.join("pgbouncer.ini"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, &mut child, "pgbouncer");
    Some((child, port))
}

/// The pgbouncer process itself (runuser forks it as a child).
fn real_pid(child: &Child) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(child.id())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Opens `n` idle clients (logged in, then silent) and reports rotagate's memory per client.
fn idle_clients(port: u16, pid: u32, n: usize) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let before = rss_kib(pid);
    let url = format!(
        "host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname=appdb sslmode=disable"
    );
    let held = rt.block_on(async {
        use futures::StreamExt;
        futures::stream::iter(0..n)
            .map(|_| {
                let url = url.clone();
                async move {
                    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .ok()?;
                    tokio::spawn(conn);
                    Some(client)
                }
            })
            .buffer_unordered(64)
            .filter_map(|c| async move { c })
            .collect::<Vec<_>>()
            .await
    });
    let after = rss_kib(pid);
    println!(
        "idle clients: {} of {n} held open; rotagate RSS {before} KiB -> {after} KiB = {:.1} KiB per idle client",
        held.len(),
        (after.saturating_sub(before)) as f64 / held.len().max(1) as f64
    );
    drop(held);
    drop(rt);
}

/// CPU µs per transaction as "total/user".
fn fmt_cpu(r: &Result) -> String {
    match (r.cpu_us_per_tx, r.user_us_per_tx) {
        (Some(c), Some(u)) => format!("{c:.1}/{u:.1}"),
        _ => "-".into(),
    }
}

/// (mode, label, pgbench arguments) for every measured run.
fn scenarios() -> Vec<(&'static str, String, Vec<String>)> {
    let mut scenarios: Vec<(&'static str, String, Vec<String>)> = Vec::new();
    for mode in ["transaction", "session"] {
        for proto in ["simple", "extended", "prepared"] {
            for clients in ["8", "32"] {
                let args = vec![
                    "-S".into(),
                    "-M".into(),
                    proto.into(),
                    "-c".into(),
                    clients.into(),
                    "-j".into(),
                    "2".into(),
                ];
                scenarios.push((mode, format!("{mode} -S -M {proto} -c {clients}"), args));
            }
        }
        let churn = vec![
            "-S".into(),
            "-C".into(),
            "-c".into(),
            "8".into(),
            "-j".into(),
            "2".into(),
        ];
        scenarios.push((mode, format!("{mode} -S -C -c 8 (new conn/tx)"), churn));
    }
    scenarios
}

/// The targets of one mode: direct, rotagate, PgBouncer (when installed) and an older
/// rotagate (BENCH_BASELINE, when set).
struct Targets {
    direct: Target,
    rg: Target,
    /// rotagate with `listen.workers = 2`.
    rg2: Target,
    pgb: Option<Target>,
    /// pg_doorman (PG_DOORMAN, when set).
    pgd: Option<Target>,
    base: Option<Target>,
    /// rotagate (one worker) with `pool.prepare_unnamed = true` (BENCH_PREPARE_UNNAMED, transaction
    /// mode), and the postmaster, whose processes' CPU is then counted for every target.
    pu: Option<(Target, u32)>,
}

/// One scenario against each target, printed as one table row. PgBouncer 1.18 has no prepared
/// statements in transaction mode: those rows leave it out.
fn row(mode: &str, label: &str, args: &[String], t: &Targets, secs: u64) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let unsupported = mode == "transaction" && args.contains(&"prepared");
    let d = pgbench(&t.direct, &args, secs);
    let pm = t.pu.as_ref().map(|(_, pm)| *pm);
    let r = pgbench_with(&t.rg, &args, secs, pm);
    let r2 = pgbench(&t.rg2, &args, secs);
    let b = match &t.pgb {
        Some(p) if !unsupported => pgbench_with(p, &args, secs, pm),
        _ => Result::default(),
    };
    let base = t.base.as_ref().map(|p| pgbench(p, &args, secs));
    let pm = t.pu.as_ref().map(|(_, pm)| *pm);
    let dm = t.pgd.as_ref().map(|p| pgbench_with(p, &args, secs, pm));
    let ratio = |x: &Result| {
        if b.tps > 0.0 {
            format!("{:.2}x", x.tps / b.tps)
        } else {
            "-".into()
        }
    };
    let (ratio, ratio2) = (ratio(&r), ratio(&r2));
    let before = base
        .map(|x| format!(" {:>10.0} {:>11}", x.tps, fmt_cpu(&x)))
        .unwrap_or_default();
    let doorman = dm
        .map(|x| {
            let vs = if x.tps > 0.0 {
                format!("{:.2}x", r.tps / x.tps)
            } else {
                "-".into()
            };
            format!(" {:>8.0} {vs:>7} {:>11}", x.tps, fmt_cpu(&x))
        })
        .unwrap_or_default();
    let pu =
        t.pu.as_ref()
            .map(|(p, pm)| {
                prepared_once(
                    &pgbench_with(p, &args, secs, Some(*pm)),
                    &r,
                    &b,
                    dm.as_ref(),
                )
            })
            .unwrap_or_default();
    println!(
        "{label:<34} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {ratio:>7} {ratio2:>7} {:>7.3} {:>7.3} {:>11} {:>11} {:>11}{doorman}{before}{pu}",
        d.tps,
        r.tps,
        r2.tps,
        b.tps,
        r.latency_ms,
        b.latency_ms,
        fmt_cpu(&r),
        fmt_cpu(&r2),
        fmt_cpu(&b)
    );
}

/// The `pool.prepare_unnamed = true` columns: its TPS, its ratios to PgBouncer and
/// pg_doorman, its CPU, then PostgreSQL's CPU per transaction behind rotagate without it (the
/// default, `w1`) and with, PgBouncer and pg_doorman.
fn prepared_once(u: &Result, r: &Result, b: &Result, dm: Option<&Result>) -> String {
    let vs = |x: f64| {
        if x > 0.0 {
            format!("{:.2}x", u.tps / x)
        } else {
            "-".into()
        }
    };
    let pg = |x: Option<&Result>| {
        x.and_then(|x| x.pg_us_per_tx)
            .map_or("-".into(), |v| format!("{v:.1}"))
    };
    format!(
        " | on {:>8.0} {:>7} {:>7} {:>11} | pg us w1 {:>5} on {:>5} pgb {:>5} pgd {:>5}",
        u.tps,
        vs(b.tps),
        vs(dm.map_or(0.0, |d| d.tps)),
        fmt_cpu(u),
        pg(Some(r)),
        pg(Some(u)),
        pg(Some(b)),
        pg(dm)
    )
}

/// The postmaster's pid (the first line of `postmaster.pid`).
fn postmaster(pg: &Pg) -> u32 {
    std::fs::read_to_string(pg.dir().join("data/postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .expect("postmaster.pid")
}

fn main() {
    let Some(secs) = support::bench_seconds(10) else {
        return;
    };
    let pg = Pg::start_with(&[("max_connections", "400".into())]);
    pg.app_db(UP_USER, UP_PASSWORD);
    pg.sql(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"));
    pg.sql_in("appdb", &format!("GRANT pg_read_all_data TO {USER}"));
    pg.pgbench_init(UP_USER, UP_PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    println!(
        "pgbench -T {secs} against PostgreSQL {} (pool size {POOL}, session mode {SESSION_POOL}; SCRAM client auth everywhere)",
        pg.sql("SHOW server_version")
    );
    let baseline = std::env::var_os("BENCH_BASELINE").map(std::path::PathBuf::from);
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>11} {:>11} {:>11}{}{}",
        "scenario",
        "direct",
        "rg w1",
        "rg w2",
        "pgb",
        "w1/pgb",
        "w2/pgb",
        "w1 ms",
        "pgb ms",
        "w1 us/user",
        "w2 us/user",
        "pgb us/user",
        if std::env::var_os("PG_DOORMAN").is_some() {
            "      pgd  w1/pgd pgd us/user"
        } else {
            ""
        },
        if baseline.is_some() {
            "     before before us/user"
        } else {
            ""
        },
    );
    if std::env::var_os("BENCH_PREPARE_UNNAMED").is_some() {
        println!(
            "on: rotagate w1 with pool.prepare_unnamed = true (TPS, /pgb, /pgd, us/user); pg us: \
             PostgreSQL's CPU per transaction (all its processes) behind w1, on, pgb, pgd"
        );
    }
    let scenarios = scenarios();
    for mode in ["transaction", "session"] {
        let (mut rg, rg_port) = start_rotagate(dir.path(), &pg, mode, None, 1, "");
        let (mut rg2, rg2_port) = start_rotagate(dir.path(), &pg, mode, None, 2, "");
        let once = "prepare_unnamed = true\n";
        let mut pu = (mode == "transaction" && std::env::var_os("BENCH_PREPARE_UNNAMED").is_some())
            .then(|| start_rotagate(dir.path(), &pg, mode, None, 1, once));
        let bouncer = start_pgbouncer(dir.path(), &pg, mode);
        let logins = doorman::Logins {
            user: USER,
            password: PASSWORD,
            up_user: UP_USER,
            up_password: UP_PASSWORD,
            pool: pool_for(mode),
        };
        let mut dman = doorman::start(dir.path(), pg.port, mode, &logins);
        let mut base = baseline
            .as_deref()
            .map(|bin| start_rotagate(dir.path(), &pg, mode, Some(bin), 1, ""));
        let target = |name, port, pid| Target {
            name,
            port,
            user: USER,
            password: PASSWORD,
            pid,
        };
        let targets = Targets {
            direct: target("direct", pg.port, None),
            rg: target("rotagate", rg_port, Some(rg.id())),
            rg2: target("rotagate w2", rg2_port, Some(rg2.id())),
            pgb: bouncer.as_ref().map(|(c, p)| Target {
                user: UP_USER,
                password: UP_PASSWORD,
                ..target("pgbouncer", *p, Some(real_pid(c)))
            }),
            pgd: dman
                .as_ref()
                .map(|(c, p)| target("pg_doorman", *p, Some(c.id()))),
            base: base
                .as_ref()
                .map(|(c, p)| target("before", *p, Some(c.id()))),
            pu: pu.as_ref().map(|(c, p)| {
                (
                    target("prepare_unnamed on", *p, Some(c.id())),
                    postmaster(&pg),
                )
            }),
        };
        let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
        for (_, label, args) in scenarios
            .iter()
            .filter(|s| s.0 == mode && s.1.contains(&filter))
        {
            row(mode, label, args, &targets, secs);
        }
        if mode == "transaction" {
            let n = std::env::var("BENCH_IDLE")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(10_000);
            idle_clients(rg_port, rg.id(), n);
        }
        for p in [&mut rg, &mut rg2]
            .into_iter()
            .chain(pu.as_mut().map(|(c, _)| c))
        {
            let _ = p.kill();
            let _ = p.wait();
        }
        if let Some((c, _)) = dman.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((c, _)) = base.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((mut c, _)) = bouncer {
            let _ = Command::new("kill").arg(real_pid(&c).to_string()).status();
            let _ = c.wait();
        }
    }
    if !["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        println!("(PgBouncer not installed: apt-get install pgbouncer for the comparison)");
    }
}
