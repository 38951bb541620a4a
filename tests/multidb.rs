//! Several databases behind one rotagate (`[[databases]]`): routing by name, per-client
//! database lists, independence of each database's rotation and breaker, `/status`,
//! `/rotate?database=`, `/readyz`, one cache file for all, and SIGHUP adding, removing and
//! changing databases.

mod common;

use common::pg::Pg;
use common::process::Rotagate;
use common::*;
use std::path::{Path, PathBuf};

/// Role `owner_X` (password `pw-X-1`) owning database `db_X`, for each X.
fn databases(pg: &Pg, names: &[&str]) {
    for x in names {
        pg.sql(&format!("CREATE ROLE owner_{x} LOGIN PASSWORD 'pw-{x}-1'"));
        pg.sql(&format!("CREATE DATABASE db_{x} OWNER owner_{x}"));
    }
}

/// db_X's secret file (its owner, `password`), replaced atomically.
fn secret(dir: &Path, pg: &Pg, x: &str, password: &str) -> PathBuf {
    let path = dir.join(format!("secret_{x}.json"));
    let tmp = path.with_extension("tmp");
    let json = format!(
        r#"{{"username":"owner_{x}","password":"{password}","host":"127.0.0.1","port":{},"dbname":"db_{x}"}}"#,
        pg.port
    );
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(tmp, &path).unwrap();
    path
}

/// `[[databases]]` entries for db_X with the secret files in `dir`; `extra` goes into each
/// `[databases.credentials]`.
fn entries(dir: &Path, pg: &Pg, names: &[&str], extra: &str) -> String {
    let mut out = String::new();
    for x in names {
        let path = dir.join(format!("secret_{x}.json"));
        if !path.exists() {
            secret(dir, pg, x, &format!("pw-{x}-1"));
        }
        out += &format!(
            "[[databases]]\nname = \"db_{x}\"\n[databases.upstream]\nhost = \"127.0.0.1\"\n\
             port = {}\ndatabase = \"db_{x}\"\ntls = \"disable\"\n\
             [databases.credentials]\nsource = \"file\"\n{extra}\n\
             [databases.credentials.file]\npath = \"{}\"\n\n",
            pg.port,
            path.display()
        );
    }
    out
}

const LIMITED: &str = "[[clients]]\nuser = \"app\"\npassword = \"static-client-pw\"\n\
                       [[clients]]\nuser = \"only_a\"\npassword = \"only-a-pw\"\n\
                       databases = [\"db_a\"]\n";

async fn who(r: &impl Endpoints, user: &str, password: &str, db: &str) -> Result<String, String> {
    let client = r
        .connect(&r.url_as(user, password, db))
        .await
        .map_err(|e| {
            e.as_db_error()
                .map(|d| d.code().code().to_owned())
                .unwrap_or(e.to_string())
        })?;
    Ok(one(&client, "SELECT current_database() || ' ' || current_user").await)
}

async fn status(r: &impl Endpoints) -> serde_json::Value {
    serde_json::from_str(&r.get("/status").await.1).unwrap()
}

async fn generation_of(r: &impl Endpoints, db: &str) -> u64 {
    status(r).await["databases"][db]["generation"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_each_database_by_name_within_their_lists() {
    let pg = Pg::start();
    databases(&pg, &["a", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let r = TestProxy::builder(&pg)
        .clients(LIMITED)
        .databases(&entries(dir.path(), &pg, &["a", "b"], ""))
        .start()
        .await;
    for x in ["a", "b"] {
        let got = who(&r, CLIENT_USER, CLIENT_PASSWORD, &format!("db_{x}")).await;
        assert_eq!(got, Ok(format!("db_{x} owner_{x}")));
    }
    assert_eq!(
        who(&r, "only_a", "only-a-pw", "db_a").await,
        Ok("db_a owner_a".into())
    );
    assert_eq!(
        who(&r, "only_a", "only-a-pw", "db_b").await,
        Err("28000".into())
    );
    assert_eq!(
        who(&r, CLIENT_USER, CLIENT_PASSWORD, "db_zz").await,
        Err("3D000".into())
    );

    let s = status(&r).await;
    assert_eq!(s["ready"], true, "{s}");
    for db in ["db_a", "db_b"] {
        assert_eq!(s["databases"][db]["generation"], 1, "{s}");
        assert_eq!(
            s["databases"][db]["credential"]["username"],
            db.replace("db_", "owner_")
        );
    }
    assert!(
        s.get("generation").is_none(),
        "no top-level fields with two databases: {s}"
    );
    assert_eq!(r.get("/readyz").await.0, 200);
    assert_eq!(r.post("/rotate?database=db_zz", "").await.0, 404);
    let (code, body) = r.post("/rotate", "").await;
    assert_eq!(code, 200, "{body}");
    let both: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(both["databases"]["db_a"]["outcome"].is_string(), "{both}");
    let metrics = r.get("/metrics").await.1;
    for db in ["db_a", "db_b"] {
        let line = format!("rotagate_credential_generation{{database=\"{db}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing");
    }
    r.stop().await.unwrap();
}

/// A broken secret for db_b opens db_b's breaker; db_a rotates and serves as if nothing
/// happened; db_b's clients stay on its last good credential.
/// Its own database names (x, y): the metrics registry is the test process's, shared with the
/// other tests here, whose db_a and db_b gauges would race with these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_secret_stays_with_its_database() {
    let pg = Pg::start();
    databases(&pg, &["x", "y"]);
    let dir = tempfile::tempdir().unwrap();
    let extra = "breaker_failures = 2\nbreaker_cooldown = \"60s\"";
    let r = TestProxy::builder(&pg)
        .databases(&entries(dir.path(), &pg, &["x", "y"], extra))
        .start()
        .await;
    let a = r
        .connect(&r.url_as(CLIENT_USER, CLIENT_PASSWORD, "db_x"))
        .await
        .unwrap();
    let b = r
        .connect(&r.url_as(CLIENT_USER, CLIENT_PASSWORD, "db_y"))
        .await
        .unwrap();
    for attempt in 1..=2 {
        secret(dir.path(), &pg, "y", &format!("wrong-{attempt}"));
        wait_until(20, "db_y's rejected attempt", || async {
            r.metric(
                "rotagate_rotations_total",
                "result=\"rejected\",database=\"db_y\"",
            )
            .await
                >= f64::from(attempt)
        })
        .await;
    }
    wait_until(20, "db_y's breaker to open", || async {
        r.metric("rotagate_breaker_open", "database=\"db_y\"").await == 1.0
    })
    .await;
    assert_eq!(
        r.metric("rotagate_breaker_open", "database=\"db_x\"").await,
        0.0
    );
    assert_eq!(
        status(&r).await["databases"]["db_x"]["breaker"]["state"],
        "closed"
    );
    assert_eq!(one(&b, "SELECT current_user").await, "owner_y");

    // db_x rotates on; db_y's generation does not move.
    pg.sql("ALTER ROLE owner_x PASSWORD 'pw-x-2'");
    secret(dir.path(), &pg, "x", "pw-x-2");
    wait_until(20, "db_x's new generation", || async {
        generation_of(&r, "db_x").await == 2
    })
    .await;
    assert_eq!(generation_of(&r, "db_y").await, 1);
    assert_eq!(one(&a, "SELECT current_user").await, "owner_x");
    assert_eq!(
        r.metric_or_zero(
            "rotagate_rotations_total",
            "result=\"rejected\",database=\"db_x\""
        )
        .await,
        0.0
    );
    assert_eq!(r.get("/readyz").await.0, 200);
    r.stop().await.unwrap();
}

/// One cache file holds both databases' last good credentials: with both secret files gone,
/// a restart serves each database from its own entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cache_file_serves_every_database_after_a_restart() {
    let pg = Pg::start();
    databases(&pg, &["a", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("lkg.bin");
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let extra = format!("cache_file = \"{}\"", cache.display());
    let text = entries(dir.path(), &pg, &["a", "b"], &extra);
    let builder = || {
        TestProxy::builder(&pg)
            .databases(&text)
            .var("ROTAGATE_CACHE_KEY", key)
    };
    let r = builder().start().await;
    wait_until(20, "both entries in the cache", || async {
        let bytes = std::fs::read(&cache).unwrap_or_default();
        bytes.windows(4).any(|w| w == b"db_a") && bytes.windows(4).any(|w| w == b"db_b")
    })
    .await;
    r.stop().await.unwrap();
    for x in ["a", "b"] {
        std::fs::remove_file(dir.path().join(format!("secret_{x}.json"))).unwrap();
    }
    let r = builder().start().await;
    for x in ["a", "b"] {
        let got = who(&r, CLIENT_USER, CLIENT_PASSWORD, &format!("db_{x}")).await;
        assert_eq!(got, Ok(format!("db_{x} owner_{x}")));
    }
    let bytes = std::fs::read(&cache).unwrap();
    assert!(
        !bytes.windows(6).any(|w| w == b"pw-a-1"),
        "a password in clear"
    );
    r.stop().await.unwrap();
}

async fn wait_serves(r: &Rotagate, db: &str, expect: Result<String, String>) {
    let mut last = Err(String::new());
    for _ in 0..200 {
        last = who(r, CLIENT_USER, CLIENT_PASSWORD, db).await;
        if last == expect {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{db}: {last:?}, want {expect:?}\n{}", r.log());
}

/// SIGHUP adds db_c (served once validated), removes db_b (new clients get 3D000, a
/// transaction in flight finishes) and changes db_a's pool size (a new generation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_removes_and_changes_databases() {
    let pg = Pg::start();
    databases(&pg, &["a", "b", "c"]);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let r = TestProxy::builder(&pg)
        .databases(&entries(dir, &pg, &["a", "b"], ""))
        .clients(LIMITED)
        .spawn()
        .await;
    r.ready().await;
    let config_with = |names: &[&str], pool: &str, credentials: &str| {
        let text = std::fs::read_to_string(r.config_path()).unwrap();
        let head = &text[..text.find("[[databases]]").unwrap()];
        let head = head.replace("size = 4", pool);
        std::fs::write(
            r.config_path(),
            head + &entries(dir, &pg, names, credentials),
        )
        .unwrap();
    };
    let config = |names: &[&str], pool: &str| config_with(names, pool, "");
    wait_serves(&r, "db_b", Ok("db_b owner_b".into())).await;
    assert_eq!(
        who(&r, CLIENT_USER, CLIENT_PASSWORD, "db_c").await,
        Err("3D000".into())
    );
    let b = r
        .connect(&r.url_as(CLIENT_USER, CLIENT_PASSWORD, "db_b"))
        .await
        .unwrap();
    b.simple_query("BEGIN").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    let g = generation_of(&r, "db_a").await;

    config(&["a", "c"], "size = 5");
    r.signal("-HUP");
    wait_serves(&r, "db_c", Ok("db_c owner_c".into())).await;
    wait_serves(&r, "db_b", Err("3D000".into())).await;
    // The transaction in flight on db_b finishes; the session ends after it.
    assert_eq!(one(&b, "SELECT 2").await, "2");
    b.simple_query("COMMIT").await.unwrap();
    assert!(b.simple_query("SELECT 3").await.is_err());
    wait_until(20, "db_a's pool settings as a new generation", || async {
        generation_of(&r, "db_a").await == g + 1
    })
    .await;
    assert_eq!(
        who(&r, "only_a", "only-a-pw", "db_c").await,
        Err("28000".into())
    );
    let s = status(&r).await;
    let names: Vec<&String> = s["databases"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["db_a", "db_c"], "{s}");

    // db_a's credential settings change: a new instance replaces it once validated, and a
    // transaction-mode client connected before goes on there.
    let a = r
        .connect(&r.url_as(CLIENT_USER, CLIENT_PASSWORD, "db_a"))
        .await
        .unwrap();
    assert_eq!(one(&a, "SELECT current_user").await, "owner_a");
    config_with(&["a", "c"], "size = 5", "breaker_failures = 4");
    r.signal("-HUP");
    wait_until(
        20,
        "db_a replaced (a new instance starts at generation 1)",
        || async { generation_of(&r, "db_a").await == 1 },
    )
    .await;
    assert_eq!(one(&a, "SELECT 4").await, "4");

    // A database that cannot start (its secret file is missing) is reported; once the file
    // exists, the same configuration on the next SIGHUP starts it.
    pg.sql("CREATE ROLE owner_e LOGIN PASSWORD 'pw-e-1'");
    pg.sql("CREATE DATABASE db_e OWNER owner_e");
    let with_e = entries(dir, &pg, &["a", "c", "e"], "breaker_failures = 4");
    std::fs::remove_file(dir.join("secret_e.json")).unwrap();
    let text = std::fs::read_to_string(r.config_path()).unwrap();
    let head = text[..text.find("[[databases]]").unwrap()].to_owned();
    std::fs::write(r.config_path(), head + &with_e).unwrap();
    r.signal("-HUP");
    wait_until(20, "the failed start of db_e in the log", || async {
        r.log().contains("cannot start the database")
    })
    .await;
    assert_eq!(
        who(&r, CLIENT_USER, CLIENT_PASSWORD, "db_e").await,
        Err("3D000".into())
    );
    secret(dir, &pg, "e", "pw-e-1");
    r.signal("-HUP");
    wait_serves(&r, "db_e", Ok("db_e owner_e".into())).await;
    let log = r.stop().await;
    assert!(log.contains("database removed"), "{log}");
}

/// The shipped configurations are valid: the example (one database) and the compose stack's
/// (two databases, one queue).
#[test]
fn the_shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let vars = || [("VAULT_TOKEN".to_owned(), "x".to_owned())];
    let example = rotagate::config::load(&root.join("config/rotagate.example.toml"), vars());
    assert_eq!(example.unwrap().databases.len(), 1);
    let compose =
        rotagate::config::load(&root.join("config/compose/rotagate.toml"), vars()).unwrap();
    let names: Vec<&str> = compose.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["app", "reports"]);
}
