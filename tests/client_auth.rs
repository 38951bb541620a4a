//! Client login: SCRAM against static credentials, refusals with the SQLSTATEs libpq users
//! know, limits on clients and on the time to authenticate.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

fn text(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_with_static_credentials_as_the_upstream_user() {
    let pg = app_cluster();
    for mode in ["transaction", "session"] {
        let proxy = TestProxy::builder(&pg).mode(mode).start().await;
        let client = proxy.client().await;
        let rows = client.simple_query("SELECT current_user").await.unwrap();
        let user = match &rows[1] {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(user, APP_USER, "{mode}");
        let row = client
            .query_typed_one(
                "SELECT $1::int + 1",
                &[(&41i32, tokio_postgres::types::Type::INT4)],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42, "{mode}");
        proxy.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_postgres_sqlstates_and_texts() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).start().await;

    let e = proxy
        .connect(&proxy.url_as(CLIENT_USER, "wrong", "appdb"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28P01");
    assert_eq!(text(&e), "password authentication failed for user \"app\"");

    let e = proxy
        .connect(&proxy.url_as("nobody", "x", "appdb"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28P01", "unknown users fail like wrong passwords");

    let e = proxy
        .connect(&proxy.url_as(CLIENT_USER, CLIENT_PASSWORD, "nosuchdb"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "3D000");
    assert_eq!(text(&e), "database \"nosuchdb\" does not exist");

    // The proxy still serves after refusals.
    proxy.client().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_scram_verifier_from_hash_password_logs_in() {
    let pg = app_cluster();
    let verifier = rotagate::frontend::scram::hash_password("verifier-pw");
    let proxy = TestProxy::builder(&pg)
        .clients(&format!(
            "[[clients]]\nuser = \"svc\"\nscram = \"{verifier}\"\n"
        ))
        .start()
        .await;
    let client = proxy
        .connect(&proxy.url_as("svc", "verifier-pw", "appdb"))
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    assert!(
        proxy
            .connect(&proxy.url_as("svc", "other", "appdb"))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_max_connections_caps_its_sessions_and_no_one_elses() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .clients(&format!(
            "[[clients]]\nuser = \"capped\"\npassword = \"pw\"\nmax_connections = 2\n\
             [[clients]]\nuser = \"{CLIENT_USER}\"\npassword = \"{CLIENT_PASSWORD}\"\n"
        ))
        .start()
        .await;
    let url = proxy.url_as("capped", "pw", "appdb");
    let (a, b) = (
        proxy.connect(&url).await.unwrap(),
        proxy.connect(&url).await.unwrap(),
    );
    let e = proxy.connect(&url).await.unwrap_err();
    let db = e.as_db_error().expect("an error response");
    assert_eq!(db.code().code(), "53300");
    assert!(db.message().contains("capped"), "{}", db.message());
    // Another user is not capped by it.
    let other = proxy.client().await;
    assert_eq!(one(&other, "SELECT 1").await, "1");
    assert_eq!(
        proxy
            .metric(
                "rotagate_clients_refused_total",
                "reason=\"max_connections\""
            )
            .await,
        1.0
    );
    // A session that ends gives its place back.
    drop(a);
    wait_until(10, "a capped session to be let in again", || async {
        proxy.connect(&url).await.is_ok()
    })
    .await;
    assert_eq!(one(&b, "SELECT 2").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_clients_get_53300() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .listen("max_clients = 2")
        .start()
        .await;
    let a = proxy.client().await;
    let b = proxy.client().await;
    let e = proxy.connect(&proxy.url()).await.unwrap_err();
    assert_eq!(code(&e), "53300");
    assert_eq!(text(&e), "sorry, too many clients already");
    drop((a, b));
    wait_until(10, "a slot to free up", || async {
        proxy.connect(&proxy.url()).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_auth_timeout() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .listen("auth_timeout = \"300ms\"")
        .start()
        .await;
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 16];
    // The proxy must close the socket by itself; the bound only keeps a broken build from hanging.
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), raw.read(&mut buf))
        .await
        .expect("closed by the proxy");
    assert_eq!(n.unwrap_or(0), 0);
}

/// A client that stalls in the middle of SASL (after the server's first message) is cut at
/// `listen.auth_timeout`, with the startup timeout far off: the auth bound is what closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalled_mid_sasl_is_closed_at_auth_timeout() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .listen("auth_timeout = \"500ms\"\nstartup_timeout = \"60s\"")
        .start()
        .await;
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    frontend::startup_message([("user", CLIENT_USER), ("database", "appdb")], &mut out).unwrap();
    raw.write_all(&out).await.unwrap();
    // AuthenticationSASL, then the client's first message.
    let mut head = [0u8; 5];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R');
    let mut body = vec![0u8; u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4];
    raw.read_exact(&mut body).await.unwrap();
    let scram = ScramSha256::new(CLIENT_PASSWORD.as_bytes(), ChannelBinding::unsupported());
    out.clear();
    frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out).unwrap();
    raw.write_all(&out).await.unwrap();
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R', "the server's first SASL message");
    let mut body = vec![0u8; u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4];
    raw.read_exact(&mut body).await.unwrap();
    assert_eq!(
        &body[..4],
        &11u32.to_be_bytes(),
        "AuthenticationSASLContinue"
    );
    // Now silent. The proxy answers with an error and closes; the bound only keeps a broken
    // build from hanging.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        raw.read_to_end(&mut rest),
    )
    .await
    .expect("closed by the proxy");
    assert!(read.is_ok());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "closed by auth_timeout, not the startup bound"
    );
    assert_eq!(
        rest.first(),
        Some(&b'E'),
        "an error before the close: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_without_harm() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .listen("max_message_size = 2048")
        .start()
        .await;
    let client = proxy.client().await;
    let big = format!("SELECT '{}'", "x".repeat(4096));
    let e = client.simple_query(&big).await.unwrap_err();
    assert_eq!(code(&e), "54000", "{e}");
    let small = format!("SELECT '{}'", "x".repeat(1000));
    proxy.client().await.simple_query(&small).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_md5_is_answered_only_when_allowed_and_cleartext_without_verified_tls_is_not() {
    let pg = app_cluster();
    // An md5-hashed password, so PostgreSQL can ask for md5.
    pg.sql(&format!(
        "SET password_encryption = 'md5'; ALTER ROLE {APP_USER} PASSWORD '{APP_PASSWORD}'"
    ));
    assert!(
        pg.sql(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{APP_USER}'"
        ))
        .starts_with("md5")
    );
    pg.set_hba_method("md5");
    // Off by default: refused, logged, not ready.
    let refused = TestProxy::builder(&pg).spawn().await;
    wait_until(10, "the md5 refusal in the log", || async {
        refused.log().contains("upstream.allow_md5")
    })
    .await;
    assert_eq!(refused.get("/readyz").await.0, 503);
    assert!(!refused.stop().await.contains(APP_PASSWORD));
    let proxy = TestProxy::builder(&pg)
        .upstream_tls("tls = \"disable\"\nallow_md5 = true")
        .start()
        .await;
    let client = proxy.client().await;
    assert_eq!(one(&client, "SELECT current_user").await, APP_USER);
    proxy.stop().await.unwrap();
    // Cleartext without verified TLS: the password is not sent (tests/tls.rs has the TLS side).
    pg.set_hba_method("password");
    let proxy = TestProxy::builder(&pg)
        .pool("acquire_timeout = \"1s\"")
        .start_unready()
        .await;
    assert_eq!(proxy.get("/readyz").await.0, 503);
    let e = proxy.connect(&proxy.url()).await.unwrap_err();
    assert!(!text(&e).contains(APP_USER), "{}", text(&e));
    proxy.stop().await.unwrap();
    pg.set_hba_method("scram-sha-256");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssapi_encryption_is_refused_and_the_client_may_go_on() {
    use tokio::io::AsyncWriteExt;
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).start().await;
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // GSSENCRequest: length 8, code 80877104.
    raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    // libpq's default (gssencmode=prefer) then carries on in the clear.
    let (ok, out, err) = psql(&proxy, "gssencmode=prefer", &["-qAt", "-c", "SELECT 7"]).await;
    assert!(ok && out.trim() == "7", "{err}");
}

/// Connections that never authenticate have their own bound (`listen.max_pending_auth`): past
/// it the oldest silent one is dropped for the newcomer, so a flood of them never keeps a real
/// client out, and none of them takes a `max_clients` slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_auth_flood_does_not_lock_real_clients_out() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .listen("max_clients = 3\nmax_pending_auth = 8\nstartup_timeout = \"60s\"\nauth_timeout = \"60s\"")
        .start()
        .await;
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    }
    // More silent connections than max_clients and than max_pending_auth: real clients still
    // log in, up to max_clients of them.
    let a = proxy.client().await;
    let b = proxy.client().await;
    let c = proxy.client().await;
    assert_eq!(one(&c, "SELECT 3").await, "3");
    let e = proxy.connect(&proxy.url()).await.unwrap_err();
    assert_eq!(
        code(&e),
        "53300",
        "the fourth authenticated client is over max_clients"
    );
    // The 32 oldest were dropped (the newest 8, or fewer, still wait).
    for (i, s) in silent.iter_mut().take(32).enumerate() {
        let mut b = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut b)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "silent connection {i} is still open"
        );
    }
    drop((a, b));
}
