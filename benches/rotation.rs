//! pgbench through rotagate (transaction mode) for BENCH_SECONDS (default 60), once without
//! rotation and once while the credential rotates every 2 s the way single-user rotation does it
//! (ALTER ROLE first, the secret file half a second later). Prints TPS, failed transactions and
//! p50/p99 latency from pgbench's per-transaction log.
//!
//!     cargo bench --bench rotation

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::pg::{self, Pg};
use support::{PASSWORD, USER};

fn write_secret(path: &Path, pg: &Pg, password: &str) {
    let tmp = path.with_extension("tmp");
    let json = format!(
        r#"{{"username":"app_owner","password":"{password}","host":"127.0.0.1","port":{},"dbname":"appdb"}}"#,
        pg.port
    );
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// What one pgbench run measured.
struct Run {
    tps: f64,
    failed: u64,
    /// Clients pgbench reported aborted ("client N aborted"): each is a client that saw an
    /// error it could not retry.
    aborted: usize,
    p50: f64,
    p99: f64,
}

/// Runs pgbench with a per-transaction log. Its exit status is checked: 0, or 2 when clients
/// aborted (counted); anything else fails the benchmark.
fn pgbench(port: u16, secs: u64, logdir: &Path) -> Run {
    let prefix = logdir.join("tx");
    let out = Command::new("pgbench")
        .env("PGPASSWORD", PASSWORD)
        .args([
            "-n",
            "-M",
            "extended",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "-l",
            "--log-prefix",
        ])
        .arg(&prefix)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            USER,
            "appdb",
        ])
        .current_dir(logdir)
        .output()
        .expect("pgbench");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let aborted = text
        .lines()
        .filter(|l| l.contains("client ") && l.contains(" aborted"))
        .count();
    let code = out.status.code();
    assert!(
        code == Some(0) || (code == Some(2) && aborted > 0),
        "pgbench failed ({code:?}):\n{text}"
    );
    let grab = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    let mut lat: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(logdir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("tx") {
            let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
            lat.extend(
                body.lines()
                    .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
            );
            std::fs::remove_file(entry.path()).ok();
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(-1.0, |us| *us as f64 / 1000.0)
    };
    Run {
        tps: grab("tps = "),
        failed: grab("number of failed transactions: ").max(0.0) as u64,
        aborted,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn main() {
    let Some(secs) = support::bench_seconds(60) else {
        return;
    };
    let pg = Pg::start_with(&[("max_connections", "300".into())]);
    pg.app_db("app_owner", "pw-0");
    pg.pgbench_init("app_owner", "pw-0");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.json");
    write_secret(&secret, &pg, "pw-0");
    let bin = env!("CARGO_BIN_EXE_rotagate").as_ref();
    let (mut rg, port, admin) =
        support::start_binary_admin(bin, dir.path(), &pg, &secret, "transaction", 16, 1, "");
    let logs = tempfile::tempdir().unwrap();
    println!(
        "pgbench -M extended -c 16 -T {secs} (TPC-B-like, read-write) through rotagate, transaction mode, pool 16"
    );
    let base = pgbench(port, secs, logs.path());
    print_run("no rotation", &base);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rotator = {
        let (stop, secret, pg_port) = (stop.clone(), secret.clone(), pg.port);
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1500));
                n += 1;
                let pw = format!("pw-{n}");
                Command::new("psql")
                    .env("PGPASSWORD", pg::SUPERUSER_PASSWORD)
                    .args([
                        "-X",
                        "-q",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &pg_port.to_string(),
                        "-U",
                        "postgres",
                        "-c",
                    ])
                    .arg(format!("ALTER ROLE app_owner PASSWORD '{pw}'"))
                    .output()
                    .unwrap();
                std::thread::sleep(Duration::from_millis(500));
                let json = format!(
                    r#"{{"username":"app_owner","password":"{pw}","host":"127.0.0.1","port":{pg_port},"dbname":"appdb"}}"#
                );
                std::fs::write(secret.with_extension("tmp"), json).unwrap();
                std::fs::rename(secret.with_extension("tmp"), &secret).unwrap();
            }
            n
        })
    };
    let before = support::generation(admin).expect("/status answers");
    let rotating = pgbench(port, secs, logs.path());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = rotator.join().unwrap();
    // Rotations are what rotagate applied (its generations), not the secrets written.
    let applied = support::generation(admin).expect("/status answers") - before;
    print_run(
        &format!("rotating every 2 s ({applied} applied of {written} written)"),
        &rotating,
    );
    println!(
        "p99 ratio (rotating / not): {:.2}x   TPS ratio: {:.2}x",
        rotating.p99 / base.p99,
        rotating.tps / base.tps
    );
    let _ = rg.kill();
    let _ = rg.wait();
}

fn print_run(what: &str, r: &Run) {
    println!(
        "{what:<44} tps {:>9.0}  failed {:>3}  aborted clients {:>2}  p50 {:>7.2} ms  p99 {:>7.2} ms",
        r.tps, r.failed, r.aborted, r.p50, r.p99
    );
}
