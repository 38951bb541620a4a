//! What the pgbench-driven benches share: a private PostgreSQL (the test harness's) and
//! starting the rotagate binary in front of it.

#[path = "../../tests/common/pg.rs"]
#[allow(dead_code)]
pub mod pg;
#[allow(dead_code)]
pub mod pgbench;

use pg::{Pg, free_port};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "app";
pub const PASSWORD: &str = "static-client-pw";

/// The run length in seconds (BENCH_SECONDS, else `default`), or None when this binary was
/// not started by `cargo bench` (`cargo test --benches` runs it too, and must not measure).
pub fn bench_seconds(default: u64) -> Option<u64> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    Some(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// Waits until `port` accepts connections; panics if `child` exits or 30 s pass.
pub fn wait_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "{what} exited early");
        assert!(
            Instant::now() < deadline,
            "{what} did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts rotagate in front of `pg` with the file secret at `secret`, in `mode` with a pool of
/// `pool`; returns the process and its client port.
#[allow(dead_code)] // not every bench uses it
pub fn start_rotagate(dir: &Path, pg: &Pg, secret: &Path, mode: &str, pool: u32) -> (Child, u16) {
    let (child, port, _) = start_binary_admin(
        env!("CARGO_BIN_EXE_rotagate").as_ref(),
        dir,
        pg,
        secret,
        mode,
        pool,
        1,
        "",
    );
    (child, port)
}

/// The generation rotagate's `/status` on admin port `admin` reports (None when it cannot be
/// read).
#[allow(dead_code)] // not every bench uses it
pub fn generation(admin: u16) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).ok()?;
    s.write_all(b"GET /status HTTP/1.0\r\nHost: rotagate\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = &text[text.find("\r\n\r\n")? + 4..];
    serde_json::from_str::<serde_json::Value>(body).ok()?["generation"].as_u64()
}

/// As [`start_rotagate`], with another build of rotagate (a baseline to compare with) and
/// `workers` event loops and `pool_extra` lines under `[pool]`; also returns the admin
/// listener's port.
#[allow(clippy::too_many_arguments)]
pub fn start_binary_admin(
    bin: &Path,
    dir: &Path,
    pg: &Pg,
    secret: &Path,
    mode: &str,
    pool: u32,
    workers: usize,
    pool_extra: &str,
) -> (Child, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let config = dir.join(format!("rotagate-{mode}-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\nworkers = {workers}\n[admin]\naddr = \"127.0.0.1:{admin}\"\n\
             [[clients]]\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
             [upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"appdb\"\ntls = \"disable\"\n\
             [pool]\nmode = \"{mode}\"\nsize = {pool}\n{pool_extra}\
             [credentials]\nsource = \"file\"\n[credentials.file]\npath = \"{}\"\n",
            pg.port,
            secret.display()
        ),
    )
    .unwrap();
    (spawn(bin, &config, port), port, admin)
}

/// Runs `bin` on the config file `config` (warnings only, to nowhere) and waits until it
/// listens on `port`.
pub fn spawn(bin: &Path, config: &Path, port: u16) -> Child {
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, &mut child, "rotagate");
    child
}
