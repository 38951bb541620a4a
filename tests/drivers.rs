//! Real drivers through transaction mode with their own defaults: psycopg 3 (prepared
//! statements from threads, pipeline mode, cache eviction with DEALLOCATE) and asyncpg (pool
//! with its statement cache, prepare, executemany, 3,000 parameters). They run from the venv
//! `scripts/test` makes (`tests/py/drivers.py`); a pool of 2 makes clients share connections.

mod common;

use common::*;
use std::path::PathBuf;

/// The venv's python, with psycopg and asyncpg (`ROTAGATE_TEST_PYTHON` elsewhere).
fn python() -> PathBuf {
    let path = std::env::var_os("ROTAGATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python")
        });
    let ok = std::process::Command::new(&path)
        .args(["-c", "import psycopg, asyncpg"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import psycopg and asyncpg: run scripts/test (it installs psycopg[binary]==3.3.9 \
         and asyncpg==0.32.0 into target/test-venv), or set ROTAGATE_TEST_PYTHON to a python that has them",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_asyncpg_run_clean_in_transaction_mode() {
    let python = python();
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(2).start().await;
    let out = tokio::process::Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/drivers.py"))
        .args([
            "127.0.0.1",
            &proxy.addr.port().to_string(),
            CLIENT_USER,
            CLIENT_PASSWORD,
            "appdb",
        ])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for check in [
        "psycopg_threads",
        "psycopg_pipeline",
        "psycopg_eviction",
        "asyncpg_pool",
    ] {
        assert!(text.contains(&format!("ok {check}")), "{check}: {text}");
    }
}
