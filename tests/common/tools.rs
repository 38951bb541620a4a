//! Clients the tests drive a proxy with: minimal HTTP for the admin listener, and psql and
//! pgbench as subprocesses.

use super::{CLIENT_PASSWORD, CLIENT_USER, Endpoints};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.0 request; (0, "") when the listener does not answer.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, "").await
}

/// `headers` are whole lines, each ending in CRLF.
pub async fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    http_body(addr, method, path, headers, "").await
}

/// A minimal HTTP/1.0 request with a body; (0, "") when the listener does not answer.
pub async fn http_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: test\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Runs psql against the proxy; (success, stdout, stderr).
pub async fn psql(
    proxy: &impl Endpoints,
    conn_extra: &str,
    args: &[&str],
) -> (bool, String, String) {
    let out = tokio::process::Command::new("psql")
        .env("PGPASSWORD", CLIENT_PASSWORD)
        .arg("-X")
        .arg(format!(
            "host=127.0.0.1 port={} user={CLIENT_USER} dbname=appdb {conn_extra}",
            proxy.proxy_addr().port()
        ))
        .args(args)
        .output()
        .await
        .expect("psql must be installed (apt-get install postgresql-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs pgbench against the proxy; (success, combined output).
pub async fn pgbench(proxy: &impl Endpoints, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("pgbench")
        .env("PGPASSWORD", CLIENT_PASSWORD)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.proxy_addr().port().to_string(),
            "-U",
            CLIENT_USER,
        ])
        .args(args)
        .arg("appdb")
        .output()
        .await
        .expect(
            "pgbench must be installed (apt-get install postgresql-contrib or postgresql-client)",
        );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
