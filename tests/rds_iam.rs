//! `source = "rds-iam"`: rotagate logs in with RDS auth tokens. PostgreSQL cannot check one,
//! so a stub plays RDS: TLS with a certificate for "localhost", a cleartext password request,
//! the token checked with botocore (tests/py/rds_token.py) for the stub's host:port, the user
//! and the test's AWS keys, then the real PostgreSQL behind it (which trusts the stub).

mod common;

use common::pg::Pg;
use common::pki::pki;
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ACCESS_KEY: &str = "AKIATESTRDSIAM000001";
const SECRET_KEY: &str = "rds-iam-test-secret-key-0123456789abcdefg";
const REGION: &str = "us-east-1";

/// What the stub decided for each login: "ok" or the reason it refused.
type Verdicts = Arc<Mutex<Vec<String>>>;

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test (it installs boto3 with moto into target/test-venv)",
        p.display()
    );
    p
}

async fn read_message(s: &mut (impl AsyncReadExt + Unpin), typed: bool) -> (u8, Vec<u8>) {
    let tag = if typed { s.read_u8().await.unwrap() } else { 0 };
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}

/// The stub on a free port: TLS, a cleartext password, botocore's verdict, then PostgreSQL.
async fn stub(cert: &Path, key: &Path, pg_port: u16) -> (u16, Verdicts) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let verdicts = Verdicts::default();
    let seen = verdicts.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(login(tcp, acceptor, port, pg_port, seen));
        }
    });
    (port, verdicts)
}

async fn login(
    mut tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    port: u16,
    pg_port: u16,
    seen: Verdicts,
) {
    let (_, ssl_request) = read_message(&mut tcp, false).await;
    assert_eq!(ssl_request, [4, 210, 22, 47], "the stub requires TLS");
    tcp.write_all(b"S").await.unwrap();
    let mut tls = acceptor.accept(tcp).await.unwrap();
    let (_, startup) = read_message(&mut tls, false).await;
    let fields: Vec<&[u8]> = startup[4..].split(|b| *b == 0).collect();
    let field = |name: &[u8]| {
        let at = fields.iter().position(|f| *f == name).unwrap();
        String::from_utf8(fields[at + 1].to_vec()).unwrap()
    };
    let (user, database) = (field(b"user"), field(b"database"));
    tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])
        .await
        .unwrap();
    let (tag, password) = read_message(&mut tls, true).await;
    assert_eq!(tag, b'p');
    let token = String::from_utf8(password[..password.len() - 1].to_vec()).unwrap();
    let out = tokio::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/rds_token.py"
        ))
        .args([
            &token,
            "localhost",
            &port.to_string(),
            &user,
            REGION,
            ACCESS_KEY,
            SECRET_KEY,
        ])
        .output()
        .await
        .unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    seen.lock().unwrap().push(verdict.clone());
    if verdict != "ok" {
        let mut e = b"SFATAL\0C28P01\0M".to_vec();
        e.extend_from_slice(format!("stub: {verdict}\0\0").as_bytes());
        let mut msg = vec![b'E'];
        msg.extend_from_slice(&(e.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(&e);
        let _ = tls.write_all(&msg).await;
        return;
    }
    // PostgreSQL trusts the stub: its answer (AuthenticationOk, parameters, ready) goes back.
    let mut pg = TcpStream::connect(("127.0.0.1", pg_port)).await.unwrap();
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user.as_str()), ("database", database.as_str())] {
        body.extend_from_slice(format!("{k}\0{v}\0").as_bytes());
    }
    body.push(0);
    let mut msg = (body.len() as u32 + 4).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    pg.write_all(&msg).await.unwrap();
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut pg).await;
}

/// rotagate with `source = "rds-iam"` in front of the stub: every new upstream login (a
/// connection lives 1 s) carries a fresh-enough token botocore accepts; tokens are not
/// rotations; nothing of a token reaches /status, /metrics or the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_use_tokens_botocore_accepts_and_no_token_shows() {
    python(); // fails here, saying what to install, rather than in the stub
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let pg = Pg::start();
    pg.set_hba_method("trust");
    pg.sql("CREATE ROLE iam_user LOGIN");
    pg.sql("CREATE DATABASE appdb OWNER iam_user");
    let (port, verdicts) = stub(&pki.cert, &pki.key, pg.port).await;
    let r = TestProxy::builder(&pg)
        .upstream_host("localhost")
        .upstream_port(port)
        .upstream_tls(&format!(
            "tls = \"verify-full\"\nca_file = \"{}\"",
            pki.ca.display()
        ))
        .pool("max_lifetime = \"1s\"")
        .source("rds-iam", "[credentials.rds_iam]\nuser = \"iam_user\"\n")
        .var("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .var("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .var("AWS_REGION", REGION)
        .var("AWS_EC2_METADATA_DISABLED", "true")
        .var("AWS_CONFIG_FILE", "/nonexistent")
        .var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .spawn()
        .await;
    r.ready().await;
    let client = r.client().await;
    assert_eq!(one(&client, "SELECT current_user").await, "iam_user");
    let g = r.generation().await;
    // Connections expire after 1 s: keep querying until several new logins happened.
    wait_until(30, "four verified logins", || async {
        one(&client, "SELECT 1").await;
        verdicts.lock().unwrap().len() >= 4
    })
    .await;
    let all = verdicts.lock().unwrap().clone();
    assert!(all.iter().all(|v| v == "ok"), "{all:?}");
    assert_eq!(r.generation().await, g, "a token is not a rotation");
    let status: serde_json::Value = serde_json::from_str(&r.get("/status").await.1).unwrap();
    let token = &status["token"];
    assert!(token["age_seconds"].as_u64().unwrap() < 900, "{status}");
    assert!(token["valid_until"].as_u64().unwrap() > token["signed_at"].as_u64().unwrap());
    assert_eq!(status["credential"]["source"], "rds-iam");
    let shown = format!("{status}{}", r.get("/metrics").await.1);
    let log = r.stop().await;
    for secret in [
        "X-Amz-Signature",
        "X-Amz-Credential",
        SECRET_KEY,
        "Action=connect",
    ] {
        assert!(
            !shown.contains(secret) && !log.contains(secret),
            "{secret} shows"
        );
    }
}
