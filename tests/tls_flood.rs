//! TLS clients under a pre-auth flood (issue 23, item 1): connections that send a plaintext
//! startup packet and then stall, about 400 a second, must not push real clients out of the
//! pending set while they are in their TLS handshake. Each real client is libpq (psql) with
//! `sslmode=require`, and must log in within 5 s. The same holds under a flood of silent
//! connections.

mod common;

use common::pki::pki;
use common::*;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Flood connections kept open at once on the test's side; older ones were pushed out of the
/// pending set by then (it holds 200) and are closed here.
const KEEP: usize = 300;

/// Opens a connection every 2.5 ms (400 a second), each sending a plaintext startup packet
/// (when `startup`) and then nothing, until `stop` is cancelled, counting them in `opened`.
async fn flood(addr: SocketAddr, startup: bool, stop: CancellationToken, opened: Arc<AtomicUsize>) {
    let mut packet = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", CLIENT_USER), ("database", "appdb")],
        &mut packet,
    )
    .unwrap();
    let mut open = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_micros(2_500));
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        if !startup || s.write_all(&packet).await.is_ok() {
            opened.fetch_add(1, Ordering::Relaxed);
            open.push_back(s);
        }
        if open.len() > KEEP {
            open.pop_front();
        }
    }
}

/// 30 TLS logins one after another while the flood runs: how many succeeded within 5 s each.
async fn tls_logins_under_flood(proxy: &TestProxy, startup: bool) -> (usize, usize) {
    let stop = CancellationToken::new();
    let opened = Arc::new(AtomicUsize::new(0));
    let flooding = tokio::spawn(flood(proxy.addr, startup, stop.clone(), opened.clone()));
    // At strength: more connections than the pending set holds (200).
    wait_until(20, "the flood to open 300 connections", || async {
        opened.load(Ordering::Relaxed) >= 300
    })
    .await;
    let mut good = 0;
    for _ in 0..30 {
        let started = Instant::now();
        let login = tokio::time::timeout(
            Duration::from_secs(5),
            psql(proxy, "sslmode=require", &["-qAt", "-c", "SELECT 1"]),
        )
        .await;
        let ok = matches!(login, Ok((true, ref out, _)) if out.trim() == "1");
        if !ok {
            eprintln!("login failed: {login:?}");
        }
        if ok && started.elapsed() < Duration::from_secs(5) {
            good += 1;
        }
    }
    stop.cancel();
    flooding.await.unwrap();
    (good, opened.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_log_in_under_a_flood_of_stalled_startup_packets() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let pg = app_cluster();
    for (extra, startup) in [("", true), ("require_tls = true\n", true), ("", false)] {
        let listen = format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nmax_pending_auth = 200\n\
             auth_timeout = \"60s\"\nstartup_timeout = \"60s\"\n{extra}",
            pki.cert.display(),
            pki.key.display()
        );
        let proxy = TestProxy::builder(&pg).listen(&listen).start().await;
        let (good, opened) = tls_logins_under_flood(&proxy, startup).await;
        let what = format!("{extra:?}, flood sends its startup packet: {startup}");
        eprintln!("{what}: {good}/30 TLS logins within 5 s; the flood opened {opened}");
        assert!(
            good >= 29,
            "{what}: only {good}/30 TLS logins within 5 s under the flood"
        );
        assert!(opened > 600, "the flood ran: {opened} connections");
        proxy.stop().await.unwrap();
    }
}
