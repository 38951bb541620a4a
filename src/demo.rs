//! `rotagate demo`: a throwaway PostgreSQL, a file secret, rotagate in front of it, and a
//! single-user rotation every few seconds (the database first, the secret a moment later), so
//! that a user can connect and watch the password change under them without noticing.
//! Everything lives in one temporary directory, removed on exit.

use crate::app::App;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const SUPERUSER_PW: &str = "demo-superuser";
const CLIENT_PW: &str = "demo";

/// A private PostgreSQL cluster, stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

/// PostgreSQL's server binaries: `PG_BIN`, the directory of `initdb` on PATH, or the newest
/// `/usr/lib/postgresql/*/bin`.
fn pg_bin() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    });
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            let mut bins: Vec<PathBuf> = dirs
                .flatten()
                .map(|d| d.path().join("bin"))
                .filter(|b| b.join("initdb").is_file())
                .collect();
            bins.sort_by_key(|b| version_of(b));
            bins.pop()
        });
    std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .or(on_path)
        .or(debian)
        .context(
            "PostgreSQL's server is not installed. Install it (Debian/Ubuntu: sudo apt-get install \
             postgresql; Fedora: sudo dnf install postgresql-server; macOS: brew install postgresql) \
             or set PG_BIN to the directory holding initdb and pg_ctl",
        )
}

fn version_of(bin: &Path) -> u32 {
    bin.parent()
        .and_then(|v| v.file_name())
        .and_then(|v| v.to_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    fn start() -> anyhow::Result<Cluster> {
        let bin = pg_bin()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("rotagate-demo").tempdir()?;
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PW)?;
        if as_postgres {
            // PostgreSQL refuses to run as root: the cluster belongs to 'postgres'.
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()?;
            anyhow::ensure!(
                ok.success(),
                "running as root needs a 'postgres' user to own the cluster (useradd --system postgres)"
            );
        }
        let c = Cluster {
            bin,
            port: free_port()?,
            dir,
            as_postgres,
        };
        let data = c.dir.path().join("data");
        c.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            &[("--pwfile", &pwfile)],
        )?;
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            c.port,
            c.dir.path().display()
        );
        let log = c.dir.path().join("postgres.log");
        c.run(
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-w", "-o", &opts, "start"],
            &[("-l", &log)],
        )?;
        Ok(c)
    }

    /// Runs one of the cluster's programs, as 'postgres' when rotagate runs as root.
    fn run(&self, program: &str, args: &[&str], files: &[(&str, &Path)]) -> anyhow::Result<()> {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        for (flag, path) in files {
            match flag.strip_prefix("--") {
                Some(long) => cmd.arg(format!("--{long}={}", path.display())),
                None => cmd.arg(flag).arg(path),
            };
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// One SQL statement as the superuser, over TCP with psql.
    fn sql(&self, sql: &str) -> anyhow::Result<()> {
        let psql = Some(self.bin.join("psql"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| "psql".into());
        let out = Command::new(psql)
            .env("PGPASSWORD", SUPERUSER_PW)
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .context("cannot run psql")?;
        anyhow::ensure!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run(
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-m", "fast", "stop"],
            &[],
        );
    }
}

/// Whether this process runs as root (PostgreSQL refuses to; its programs then run as
/// `postgres`). Shared with the test harness.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Writes the RDS-style secret atomically, as a secret mount would change.
fn write_secret(path: &Path, port: u16, password: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let json = format!(
        r#"{{"username":"app_owner","password":"{password}","host":"127.0.0.1","port":{port},"dbname":"app"}}"#
    );
    std::fs::write(&tmp, json)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// `addr` when it can be bound, else any free port.
fn preferred(addr: &str) -> String {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr.to_owned(),
        Err(_) => "127.0.0.1:0".to_owned(),
    }
}

fn config(port: u16, secret: &Path) -> String {
    format!(
        "[listen]\naddr = \"{}\"\n[admin]\naddr = \"{}\"\n\
         [[clients]]\nuser = \"app\"\npassword = \"{CLIENT_PW}\"\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"app\"\ntls = \"disable\"\n\
         [pool]\nmode = \"transaction\"\nsize = 5\n\
         [credentials]\nsource = \"file\"\n[credentials.file]\npath = \"{}\"\n",
        preferred("127.0.0.1:6432"),
        preferred("127.0.0.1:9930"),
        secret.display()
    )
}

/// Runs the demo until `shutdown`, rotating every `every`.
pub async fn run(shutdown: CancellationToken, every: Duration) -> anyhow::Result<()> {
    println!("starting a throwaway PostgreSQL ...");
    let cluster = tokio::task::spawn_blocking(Cluster::start).await??;
    cluster.sql("CREATE ROLE app_owner LOGIN PASSWORD 'upstream-pw-0'")?;
    cluster.sql("CREATE DATABASE app OWNER app_owner")?;
    let secret = cluster.dir.path().join("secret.json");
    write_secret(&secret, cluster.port, "upstream-pw-0")?;
    let cfg = crate::config::parse(&config(cluster.port, &secret), [])
        .map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    let app = App::bind(cfg).await?;
    let (proxy, admin) = (app.proxy_addr(), app.admin_addr());
    println!("\n  DATABASE_URL=postgres://app:{CLIENT_PW}@{proxy}/app?sslmode=disable");
    println!("  try:     psql 'postgres://app:{CLIENT_PW}@{proxy}/app?sslmode=disable'");
    println!("  watch:   curl -s http://{admin}/status ; curl -s http://{admin}/metrics");
    println!(
        "  files:   {} (removed on exit)",
        cluster.dir.path().display()
    );
    println!("  the upstream password rotates every {every:?}; Ctrl-C stops everything\n");
    let task = tokio::spawn(app.run(shutdown.clone()));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        n += 1;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = rotate(&cluster, &secret, admin, n) => {
                if let Err(e) = r {
                    println!("rotation {n}: {e:#}");
                }
            }
        }
    }
    task.await??;
    drop(cluster);
    println!("stopped; the throwaway PostgreSQL and its files are gone");
    Ok(())
}

/// One single-user rotation: ALTER ROLE, a second later the secret, then the swap.
async fn rotate(cluster: &Cluster, secret: &Path, admin: SocketAddr, n: u64) -> anyhow::Result<()> {
    let before = generation(admin).await;
    let password = format!("{:024x}", rand::random::<u128>() >> 32);
    cluster.sql(&format!("ALTER ROLE app_owner PASSWORD '{password}'"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    write_secret(secret, cluster.port, &password)?;
    for _ in 0..100 {
        let g = generation(admin).await;
        if g > before {
            println!(
                "rotation {n}: database password changed, secret updated 1 s later; rotagate now serves generation {g}"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the new secret was not swapped in within 10 s (see rotagate's log)")
}

/// The generation `/status` reports (0 when it cannot be read).
async fn generation(admin: SocketAddr) -> u64 {
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return 0;
    };
    let _ = s
        .write_all(b"GET /status HTTP/1.0\r\nHost: demo\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(b).ok())
        .and_then(|v| v["generation"].as_u64())
        .unwrap_or(0)
}
