//! A real black hole between rotagate and PostgreSQL: the kernel drops every packet on a veth
//! pair, in both directions, for 5 s under load, then lets them through. The drop is a queue of
//! length 0 on each end (`tc qdisc add ... root pfifo limit 0`): `netem loss 100%` does the
//! same, but this machine's kernel has no netem, and a zero-length FIFO is in every kernel.
//! Nothing is refused or reset; TCP retransmits what was lost once the path is back. This is
//! what the fault proxy's black hole (tests/common/fault.rs) models by holding bytes: open
//! connections resume and nothing they carried is lost, new ones hang meanwhile. As there:
//! only transactions in flight may fail, no client loses its connection, every client is
//! served again.
//!
//! Topology: rotagate (this namespace) -> veth -> a TCP forwarder inside a network namespace
//! of the test's own -> veth -> PostgreSQL (this namespace, listening on the veth's address).
//! Needs root and iproute2 (`ip`, `tc`): `apt-get install iproute2`.

mod common;

use common::fault::Load;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (needs iproute2: apt-get install iproute2)",
                args[0]
            )
        });
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to this one by a veth pair; removed (with the pair) on drop.
struct Netns {
    name: String,
    /// The veth end here, and the one in the namespace.
    here: String,
    there: String,
    /// Addresses of the two ends.
    here_ip: String,
    there_ip: String,
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id();
        let n = Netns {
            name: format!("rgt{id}"),
            here: format!("rgt{id}a"),
            there: format!("rgt{id}b"),
            here_ip: format!("10.{}.{}.1", 200 + id % 50, (id / 50) % 250),
            there_ip: format!("10.{}.{}.2", 200 + id % 50, (id / 50) % 250),
        };
        let _ = Command::new("ip").args(["netns", "del", &n.name]).output();
        run(&["ip", "netns", "add", &n.name]);
        run(&[
            "ip", "link", "add", &n.here, "type", "veth", "peer", "name", &n.there,
        ]);
        run(&["ip", "link", "set", &n.there, "netns", &n.name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", n.here_ip),
            "dev",
            &n.here,
        ]);
        run(&["ip", "link", "set", &n.here, "up"]);
        n.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", n.there_ip),
            "dev",
            &n.there,
        ]);
        n.exec(&["ip", "link", "set", &n.there, "up"]);
        n.exec(&["ip", "link", "set", "lo", "up"]);
        n
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Every packet either way on the pair is dropped (true) or passes again (false).
    fn black_hole(&self, on: bool) {
        let verb = if on { "add" } else { "del" };
        let mut here = vec!["tc", "qdisc", verb, "dev", &self.here, "root"];
        let mut there = vec!["tc", "qdisc", verb, "dev", &self.there, "root"];
        if on {
            here.extend(["pfifo", "limit", "0"]);
            there.extend(["pfifo", "limit", "0"]);
        }
        run(&here);
        self.exec(&there);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_black_hole_costs_only_the_wait() {
    assert!(
        String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout).trim()
            == "0",
        "tests/netem.rs makes a network namespace: run it as root"
    );
    let ns = Netns::new();
    let pg =
        common::pg::Pg::start_with(&[("listen_addresses", format!("127.0.0.1,{}", ns.here_ip))]);
    pg.app_db(APP_USER, APP_PASSWORD);
    pg.allow_host(&format!("{}/32", ns.there_ip));
    // The forwarder, inside the namespace, on a port it picks and prints.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/forward.py");
    let mut forwarder = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "python3",
            script,
            &ns.there_ip,
            "0",
        ])
        .args([ns.here_ip.as_str(), &pg.port.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 for the forwarder");
    let mut ready = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::io::BufReader::new(forwarder.stdout.take().unwrap())
        .read_line(&mut ready)
        .await
        .unwrap();
    let port: u16 = ready
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the forwarder did not start: {ready:?}"));

    let proxy = TestProxy::builder(&pg)
        .upstream_host(&ns.there_ip)
        .upstream_port(port)
        .pool_size(4)
        .pool("acquire_timeout = \"30s\"")
        .start()
        .await;
    let load = Load::running(&proxy.url(), CLIENTS).await;

    ns.black_hole(true);
    let before = load.snapshot();
    // The fault's length, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = load.snapshot();
    ns.black_hole(false);
    let ended = Instant::now();
    assert!(
        during.ok - before.ok <= CLIENTS as u64,
        "transactions went through the black hole: {before:?} then {during:?}"
    );

    let recovery = load.recovered_after(ended, Duration::from_secs(60)).await;
    let cost = load.stop().await;
    println!("kernel black hole, 5 s: recovery {recovery:?}, {cost:?}");
    assert!(
        recovery.is_some(),
        "the clients were not served again: {cost:?}"
    );
    assert!(
        cost.failed <= CLIENTS as u64,
        "more than the in-flight failed: {cost:?}"
    );
    assert_eq!(cost.reconnects, 0, "a client lost its connection: {cost:?}");
    assert_eq!(one(&proxy.client().await, "SELECT 1").await, "1");
}
