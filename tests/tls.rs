//! TLS on both sides: clients to rotagate (optional or required), rotagate to PostgreSQL in
//! every `upstream.tls` mode, with certificates made by the test.

mod common;

use common::pg::{Pg, give_to_pg};
use common::pki::{Pki, pki};
use common::*;
use std::path::Path;

/// `[listen]` lines serving the test certificate, plus `extra`.
fn tls_listen(pki: &Pki, extra: &str) -> String {
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}",
        pki.cert.display(),
        pki.key.display()
    )
}

/// psql connection options that verify the server's certificate for "localhost" against `ca`.
fn verify_full(ca: &Path) -> String {
    format!(
        "sslmode=verify-full host=localhost sslrootcert={}",
        ca.display()
    )
}

/// A cluster serving TLS with the test certificate from `dir` (made readable to it).
fn tls_cluster(dir: &Path) -> (Pg, Pki) {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pki = pki(dir);
    give_to_pg(dir);
    let pg = Pg::start_with(&[
        ("ssl", "on".into()),
        ("ssl_cert_file", pki.cert.display().to_string()),
        ("ssl_key_file", pki.key.display().to_string()),
    ]);
    pg.app_db(APP_USER, APP_PASSWORD);
    (pg, pki)
}

async fn upstream_uses_ssl(proxy: &TestProxy) -> bool {
    let client = proxy.client().await;
    let rows = client
        .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .unwrap();
    matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_modes_encrypt_and_verify_as_libpq_does() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, pki) = tls_cluster(dir.path());
    let ca = pki.ca.display();
    let good = [
        ("127.0.0.1", "tls = \"require\"".to_owned()),
        // SCRAM-SHA-256-PLUS: PostgreSQL checks the tls-server-end-point binding, and require
        // refuses any login without it.
        (
            "127.0.0.1",
            "tls = \"require\"\nchannel_binding = \"require\"".to_owned(),
        ),
        ("127.0.0.1", "tls = \"prefer\"".to_owned()),
        (
            "127.0.0.1",
            format!("tls = \"verify-ca\"\nca_file = \"{ca}\""),
        ),
        (
            "localhost",
            format!("tls = \"verify-full\"\nca_file = \"{ca}\""),
        ),
    ];
    for (host, tls) in good {
        let proxy = TestProxy::builder(&pg)
            .upstream_host(host)
            .upstream_tls(&tls)
            .start()
            .await;
        assert!(
            upstream_uses_ssl(&proxy).await,
            "{tls}: the upstream connection is not encrypted"
        );
        proxy.stop().await.unwrap();
    }
    let bad = [
        (
            "127.0.0.1",
            format!("tls = \"verify-full\"\nca_file = \"{ca}\""),
            "certificate not valid for name",
        ),
        (
            "localhost",
            format!(
                "tls = \"verify-full\"\nca_file = \"{}\"",
                pki.other_ca.display()
            ),
            "invalid peer certificate",
        ),
        (
            "localhost",
            format!(
                "tls = \"verify-ca\"\nca_file = \"{}\"",
                pki.other_ca.display()
            ),
            "invalid peer certificate",
        ),
    ];
    for (host, tls, why) in bad {
        let proxy = TestProxy::builder(&pg)
            .upstream_host(host)
            .upstream_tls(&tls)
            .pool("acquire_timeout = \"1s\"")
            .start_unready()
            .await;
        let e = proxy.connect(&proxy.url()).await.unwrap_err();
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        // The client is told the kind of failure; the reason (which may name the host) is for
        // the operator, in /status and the log.
        assert!(
            msg.contains("TLS to the upstream server failed"),
            "{tls}: {msg:?}"
        );
        assert!(
            !msg.contains(host),
            "{tls}: the client sees the upstream host: {msg:?}"
        );
        assert!(
            last_reason(&proxy).await.contains(why),
            "{tls}: expected {why}"
        );
        assert_eq!(proxy.get("/readyz").await.0, 503);
        proxy.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_upstream_refuses_a_plain_server() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .upstream_tls("tls = \"require\"")
        .pool("acquire_timeout = \"1s\"")
        .start_unready()
        .await;
    let e = proxy.connect(&proxy.url()).await.unwrap_err();
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("TLS to the upstream server failed"), "{msg}");
    assert!(last_reason(&proxy).await.contains("does not accept TLS"));
    proxy.stop().await.unwrap();
    // prefer falls back to plain.
    let proxy = TestProxy::builder(&pg)
        .upstream_tls("tls = \"prefer\"")
        .start()
        .await;
    assert!(!upstream_uses_ssl(&proxy).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_can_use_tls_and_require_tls_refuses_plain_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, pg, proxy) = client_tls(dir.path()).await;
    let (ok, out, err) = psql(&proxy, "sslmode=require", &["-c", "\\conninfo"]).await;
    assert!(ok && out.contains("SSL connection"), "{out}{err}");
    let (ok, out, err) = psql(&proxy, &verify_full(&pki.ca), &["-qAt", "-c", "SELECT 1"]).await;
    assert!(ok && out.trim() == "1", "{out}{err}");
    let (ok, _, _) = psql(&proxy, "sslmode=disable", &["-c", "SELECT 1"]).await;
    assert!(ok, "TLS is optional unless required");
    proxy.stop().await.unwrap();

    let proxy = TestProxy::builder(&pg)
        .listen(&tls_listen(&pki, "require_tls = true"))
        .start()
        .await;
    let (ok, _, err) = psql(&proxy, "sslmode=disable", &["-c", "SELECT 1"]).await;
    assert!(!ok && err.contains("rotagate requires TLS"), "{err}");
    let (ok, _, err) = psql(&proxy, "sslmode=require", &["-c", "SELECT 1"]).await;
    assert!(ok, "{err}");
}

/// A cluster and rotagate serving the test certificate to clients.
async fn client_tls(dir: &Path) -> (Pki, Pg, TestProxy) {
    let pki = pki(dir);
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .listen(&tls_listen(&pki, ""))
        .start()
        .await;
    (pki, pg, proxy)
}

/// A TLS client trusting the test CA, offering ALPN `postgresql`.
fn tls_connector(pki: &Pki) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(&pki.ca).unwrap();
    let ca = rustls::pki_types::pem::PemObject::from_pem_slice(&ca_pem).unwrap();
    roots.add(ca).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(rotagate::backend::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

fn localhost() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").unwrap()
}

fn startup_packet() -> bytes::BytesMut {
    let mut startup = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", CLIENT_USER), ("database", "appdb")],
        &mut startup,
    )
    .unwrap();
    startup
}

/// Bytes sent with an SSLRequest, before the handshake, are not taken as if they had come over
/// TLS (the CVE-2021-23214 class): the connection is closed after the handshake, as
/// PostgreSQL does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_before_the_tls_handshake_close_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (pki, _pg, proxy) = client_tls(dir.path()).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut injected = bytes::BytesMut::from(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..]);
    injected.extend_from_slice(&startup_packet());
    tcp.write_all(&injected).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let outcome = match tls_connector(&pki).connect(localhost(), tcp).await {
        Err(_) => 0,
        Ok(mut tls) => tls.read(&mut [0u8; 64]).await.unwrap_or(0),
    };
    assert_eq!(outcome, 0, "closed, not an answer to the injected startup");
    // The control: the same startup sent after the handshake is answered.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut tls = tls_connector(&pki).connect(localhost(), tcp).await.unwrap();
    tls.write_all(&startup_packet()).await.unwrap();
    assert_eq!(tls.read_u8().await.unwrap(), b'R');
}

/// PostgreSQL 17's direct TLS (`sslnegotiation=direct`): a TLS ClientHello with ALPN
/// `postgresql` instead of an SSLRequest. psql 15 cannot do it, so the test speaks it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_reaches_authentication() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (pki, _pg, proxy) = client_tls(dir.path()).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut tls = tls_connector(&pki).connect(localhost(), tcp).await.unwrap();
    tls.write_all(&startup_packet()).await.unwrap();
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R', "an authentication request over direct TLS");
    assert_eq!(
        u32::from_be_bytes([head[5], head[6], head[7], head[8]]),
        10,
        "SASL"
    );
}

/// SIGHUP re-reads the client TLS certificate from its files: renewed in place, the new one is
/// served to new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_client_certificate() {
    let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (old_pki, new_pki) = (pki(old.path()), pki(new.path()));
    let pg = app_cluster();
    let r = TestProxy::builder(&pg)
        .listen(&tls_listen(&old_pki, ""))
        .spawn()
        .await;
    r.ready().await;
    assert!(
        psql(&r, &verify_full(&old_pki.ca), &["-c", "SELECT 1"])
            .await
            .0
    );
    std::fs::copy(&new_pki.cert, &old_pki.cert).unwrap();
    std::fs::copy(&new_pki.key, &old_pki.key).unwrap();
    r.signal("-HUP");
    wait_until(20, "the reload", || async {
        r.log().contains("configuration reloaded")
    })
    .await;
    assert!(r.log().contains("\"tls_reloaded\":true"), "{}", r.log());
    let (ok, _, err) = psql(&r, &verify_full(&new_pki.ca), &["-c", "SELECT 1"]).await;
    assert!(ok, "the renewed certificate is served: {err}");
    let (ok, _, _) = psql(&r, &verify_full(&old_pki.ca), &["-c", "SELECT 1"]).await;
    assert!(!ok, "the old certificate is no longer served");
}

/// The reason of the last rotation attempt, as /status shows it, once there is one.
async fn last_reason(proxy: &TestProxy) -> String {
    let reason = || async {
        let status: serde_json::Value =
            serde_json::from_str(&proxy.get("/status").await.1).unwrap();
        status["last_attempt"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    wait_until(20, "a failed attempt's reason in /status", || async {
        !reason().await.is_empty()
    })
    .await;
    reason().await
}

/// A cleartext password request is answered only over TLS whose certificate was verified: over
/// unverified TLS (or none) the request could come from anyone, so the password is not sent,
/// the proxy is not ready, and the log says why. channel_binding = require refuses a login
/// without SCRAM-SHA-256-PLUS even over verified TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleartext_password_goes_only_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, pki) = tls_cluster(dir.path());
    pg.set_hba_method("password");
    let verified = format!("tls = \"verify-full\"\nca_file = \"{}\"", pki.ca.display());
    let proxy = TestProxy::builder(&pg)
        .upstream_host("localhost")
        .upstream_tls(&verified)
        .start()
        .await;
    assert_eq!(one(&proxy.client().await, "SELECT 1").await, "1");
    proxy.stop().await.unwrap();
    for tls in ["tls = \"require\"", "tls = \"prefer\""] {
        let proxy = TestProxy::builder(&pg)
            .upstream_tls(tls)
            .pool("acquire_timeout = \"1s\"")
            .start_unready()
            .await;
        assert_eq!(proxy.get("/readyz").await.0, 503, "{tls}");
        let reason = last_reason(&proxy).await;
        assert!(reason.contains("cleartext"), "{tls}: {reason}");
        proxy.stop().await.unwrap();
    }
    let proxy = TestProxy::builder(&pg)
        .upstream_host("localhost")
        .upstream_tls(&format!("{verified}\nchannel_binding = \"require\""))
        .pool("acquire_timeout = \"1s\"")
        .start_unready()
        .await;
    assert!(last_reason(&proxy).await.contains("channel_binding"));
    proxy.stop().await.unwrap();
}
