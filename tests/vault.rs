//! Vault as the credential source, against an OpenBao dev server: the real binary logs in with
//! AppRole, follows a KV v2 secret's versions, keeps dynamic database credentials leased,
//! renewed and re-issued, rides out Vault being unresponsive, and stands in for an
//! unreachable primary source.

mod common;

use common::bao::Bao;
use common::pg::{Pg, free_port};
use common::process::Rotagate;
use common::*;

const KV_POLICY: &str = r#"path "secret/data/app/db" { capabilities = ["read"] }
path "secret/metadata/app/db" { capabilities = ["read"] }"#;
const DB_POLICY: &str = r#"path "database/creds/app-dyn" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }"#;

struct World {
    pg: Pg,
    bao: Bao,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let pg = app_cluster();
    let bao = Bao::start().await;
    World {
        pg,
        bao,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl World {
    /// The `[credentials.vault]` section logging in as AppRole `name`, plus `mode` lines.
    async fn section(&self, name: &str, policy: &str, ttl: (u64, u64), mode: &str) -> String {
        let (role_id, secret_file) = self.bao.approle(name, policy, ttl, self.dir.path()).await;
        format!(
            "[credentials.vault]\naddr = \"{}\"\napprole_role_id = \"{role_id}\"\n\
             approle_secret_id_file = \"{}\"\n{mode}\n",
            self.bao.addr,
            secret_file.display()
        )
    }

    async fn rotagate(&self, source: &str, section: &str, refresh: &str) -> Rotagate {
        let r = TestProxy::builder(&self.pg)
            .pool_size(8)
            .source(source, section)
            .credentials(&format!("refresh_interval = \"{refresh}\""))
            .spawn()
            .await;
        r.ready().await;
        r
    }

    async fn kv_rotagate(&self, token_ttl: (u64, u64)) -> Rotagate {
        self.bao.kv_put(&self.pg, APP_USER, APP_PASSWORD).await;
        let section = self
            .section(
                "rotagate-kv",
                KV_POLICY,
                token_ttl,
                "kv_mount = \"secret\"\nkv_path = \"app/db\"",
            )
            .await;
        self.rotagate("vault", &section, "1s").await
    }

    /// The single-user order: the database first, then a new KV version.
    async fn rotate_kv(&self, password: &str) -> u64 {
        self.pg
            .sql(&format!("ALTER ROLE {APP_USER} PASSWORD '{password}'"));
        self.bao.kv_put(&self.pg, APP_USER, password).await
    }
}

async fn served_version(r: &Rotagate) -> String {
    let status: serde_json::Value = serde_json::from_str(&r.get("/status").await.1).unwrap();
    status["credential"]["version"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_versions_rotate_under_load_with_no_failed_transaction() {
    let w = world().await;
    w.pg.pgbench_init(APP_USER, APP_PASSWORD);
    let r = w.kv_rotagate((3600, 7200)).await;
    assert_eq!(served_version(&r).await, "1");
    assert_eq!(
        one(&r.client().await, "SELECT current_user").await,
        APP_USER
    );
    let load = pgbench(&r, &["-n", "-c", "8", "-j", "2", "-T", "8"]);
    let rotations = async {
        for n in 0..3 {
            let version = w.rotate_kv(&format!("kv-pw-{n}")).await;
            wait_until(10, "the KV version to be served", || async {
                served_version(&r).await == version.to_string()
            })
            .await;
        }
    };
    let ((ok, out), ()) = tokio::join!(load, rotations);
    assert!(ok && pgbench_clean(&out), "{out}");
    let log = r.stop().await;
    for n in 0..3 {
        assert!(
            !log.contains(&format!("kv-pw-{n}")),
            "a password in the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_renewed_then_replaced_by_a_new_login() {
    let w = world().await;
    // Tokens live 2 s, renewable up to 4 s: renewals, then new logins, again and again.
    let r = w.kv_rotagate((2, 4)).await;
    wait_until(20, "two fresh logins after the first", || async {
        r.log().matches("logged in to Vault").count() >= 3
    })
    .await;
    let version = w.rotate_kv("after-relogin-pw").await;
    wait_until(10, "the KV version read with the new token", || async {
        served_version(&r).await == version.to_string()
    })
    .await;
    let log = r.stop().await;
    assert!(log.contains("renewed the Vault token"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_credentials_are_renewed_reissued_and_revoked_under_load() {
    let w = world().await;
    w.pg.pgbench_init(APP_USER, APP_PASSWORD);
    // Leases of 6 s, at most 20 s: renewed at 4, 8 and 12 s, re-issued at 16 s (the renewal
    // then grants less than asked), 4 s before Vault revokes the first lease; 4 s/10 s left
    // only 2 s, which a starved machine once overran.
    w.bao.database_engine(&w.pg, "6s", "20s").await;
    let section = w
        .section(
            "rotagate-dyn",
            DB_POLICY,
            (3600, 7200),
            "database_mount = \"database\"\ndatabase_role = \"app-dyn\"",
        )
        .await;
    let r = w.rotagate("vault", &section, "1h").await;
    let first = one(&r.client().await, "SELECT current_user").await;
    assert!(first.starts_with("v-"), "{first}");
    let g = r.generation().await;
    let (ok, out) = pgbench(&r, &["-n", "-c", "8", "-j", "2", "-T", "22"]).await;
    assert!(ok && pgbench_clean(&out), "{out}");
    assert!(
        r.generation().await > g,
        "re-issued before the 20 s max TTL"
    );
    let now = one(&r.client().await, "SELECT current_user").await;
    assert!(now.starts_with("v-") && now != first, "{first} -> {now}");
    // The first lease is revoked once its generation drained: Vault drops its role.
    wait_until(20, "the first dynamic role to be dropped", || async {
        w.pg.sql(&format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{first}'"
        )) == "0"
    })
    .await;
    let log = r.stop().await;
    assert!(log.contains("renewed the database lease"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_unresponsive_for_a_while_clients_keep_being_served_then_it_recovers() {
    let w = world().await;
    let r = w.kv_rotagate((3600, 7200)).await;
    let client = r.client().await;
    w.bao.pause();
    wait_until(30, "a failed read while Vault is frozen", || async {
        r.metric("rotagate_rotations_total", "result=\"failed\"")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(one(&client, "SELECT 1").await, "1");
    assert_eq!(
        one(&r.client().await, "SELECT current_user").await,
        APP_USER
    );
    w.bao.resume();
    let version = w.rotate_kv("after-outage-pw").await;
    wait_until(60, "the rotation after Vault is back", || async {
        served_version(&r).await == version.to_string()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_primary_falls_back_to_vault() {
    let w = world().await;
    w.bao.kv_put(&w.pg, APP_USER, APP_PASSWORD).await;
    let vault = w
        .section(
            "rotagate-kv",
            KV_POLICY,
            (3600, 7200),
            "kv_mount = \"secret\"\nkv_path = \"app/db\"",
        )
        .await;
    let aws = format!(
        "[credentials.aws]\nsecret_id = \"app/db\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{}\"\n",
        free_port()
    );
    let r = TestProxy::builder(&w.pg)
        .source("[\"aws\", \"vault\"]", &format!("{aws}{vault}"))
        .var("AWS_ACCESS_KEY_ID", "testing")
        .var("AWS_SECRET_ACCESS_KEY", "testing")
        .var("AWS_EC2_METADATA_DISABLED", "true")
        .spawn()
        .await;
    r.ready().await;
    assert_eq!(served_version(&r).await, "vault:1");
    assert_eq!(
        one(&r.client().await, "SELECT current_user").await,
        APP_USER
    );
    let log = r.stop().await;
    assert!(log.contains("using a fallback"), "{log}");
}
