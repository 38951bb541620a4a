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

/// Runs pgbench with a per-transaction log; returns (tps, failed, p50 ms, p99 ms).
fn pgbench(port: u16, secs: u64, logdir: &Path) -> (f64, u64, f64, f64) {
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
    (
        grab("tps = "),
        grab("number of failed transactions: ") as u64,
        pct(0.50),
        pct(0.99),
    )
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
    let (mut rg, port) = support::start_rotagate(dir.path(), &pg, &secret, "transaction", 16);
    let logs = tempfile::tempdir().unwrap();
    println!(
        "pgbench -M extended -c 16 -T {secs} (TPC-B-like, read-write) through rotagate, transaction mode, pool 16"
    );
    let (tps, failed, p50, p99) = pgbench(port, secs, logs.path());
    println!(
        "{:<28} tps {tps:>9.0}  failed {failed:>3}  p50 {p50:>7.2} ms  p99 {p99:>7.2} ms",
        "no rotation"
    );

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
    let (rtps, rfailed, rp50, rp99) = pgbench(port, secs, logs.path());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    println!(
        "{:<28} tps {rtps:>9.0}  failed {rfailed:>3}  p50 {rp50:>7.2} ms  p99 {rp99:>7.2} ms",
        format!("rotating every 2 s ({rotations}x)")
    );
    println!(
        "p99 ratio (rotating / not): {:.2}x   TPS ratio: {:.2}x",
        rp99 / p99,
        rtps / tps
    );
    let _ = rg.kill();
    let _ = rg.wait();
}
