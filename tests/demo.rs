//! `rotagate demo` as a new user runs it: it starts, a client connects to the printed URL, a
//! rotation happens while the client stays connected, and Ctrl-C removes everything.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_serves_rotates_and_cleans_up() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rotagate"))
        .args(["demo", "--every", "2s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Should an assertion fail, Ctrl-C the demo so that it still removes its PostgreSQL.
    let _interrupt = Interrupt(child.id().unwrap());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the demo went quiet for 60 s")
            .unwrap()
            .expect("the demo ended early")
    };
    let (mut url, mut files) = (String::new(), String::new());
    while url.is_empty() || files.is_empty() {
        let line = next().await;
        if let Some(u) = line.trim().strip_prefix("DATABASE_URL=") {
            url = u.to_owned();
        }
        if let Some(f) = line.trim().strip_prefix("files:") {
            files = f.split_whitespace().next().unwrap().to_owned();
        }
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client.simple_query("SELECT current_user").await.unwrap();
    let user = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(user.as_deref(), Some("app_owner"));
    loop {
        let line = next().await;
        assert!(!line.contains("not swapped"), "{line}");
        if line.starts_with("rotation 1:") {
            assert!(line.contains("generation 2"), "{line}");
            break;
        }
    }
    // The same client, still connected, and a new one, both served after the rotation.
    client.simple_query("SELECT 1").await.unwrap();
    let (again, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    again.simple_query("SELECT 1").await.unwrap();
    drop((client, again));
    drop(_interrupt);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the demo did not stop within 30 s of Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !std::path::Path::new(&files).exists(),
        "{files} left behind"
    );
}

struct Interrupt(u32);

impl Drop for Interrupt {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.0.to_string()])
            .status();
    }
}
