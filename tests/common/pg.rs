//! A private PostgreSQL cluster per test. `initdb` runs once per machine into a template that
//! each test copies; the copy starts on a free port with its own socket directory and is
//! stopped when the handle drops. As root, PostgreSQL runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const SUPERUSER_PASSWORD: &str = "test-super-pw";

pub struct Pg {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

use rotagate::demo::is_root;

/// Runs a PostgreSQL program, as `postgres` when we are root.
fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn check(out: std::io::Result<Output>, what: &str) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    found.pop().expect(
        "PostgreSQL server binaries not found: install them (apt-get install postgresql) or set PG_BIN; scripts/test does this",
    )
}

fn ensure_postgres_user() {
    if is_root()
        && !Command::new("id")
            .arg("postgres")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        check(
            Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "postgres",
                ])
                .output(),
            "useradd postgres",
        );
    }
}

/// Hands a path to the `postgres` user when we are root.
pub fn give_to_pg(path: &Path) {
    if is_root() {
        check(
            Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(path)
                .output(),
            "chown",
        );
    }
}

/// initdb once per machine and PostgreSQL version; later runs reuse the template.
fn template(bin: &Path) -> &'static PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        ensure_postgres_user();
        let version = bin
            .parent()
            .and_then(|p| p.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
        let dir =
            std::env::temp_dir().join(format!("rotagate-pg-template-{}-{version}", uid.trim()));
        if dir.join("ready").exists() {
            return dir.join("data");
        }
        let work = tempfile::Builder::new()
            .prefix("rotagate-pg-init")
            .tempdir_in(std::env::temp_dir())
            .unwrap()
            .keep();
        std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::write(work.join("pwfile"), SUPERUSER_PASSWORD).unwrap();
        give_to_pg(&work);
        check(
            as_pg(&bin.join("initdb"))
                .arg("-D")
                .arg(work.join("data"))
                .args([
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", work.join("pwfile").display()))
                .output(),
            "initdb",
        );
        std::fs::write(work.join("ready"), "").unwrap();
        // Another test process may have won the race; either template is fine.
        if std::fs::rename(&work, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&work);
        }
        dir.join("data")
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory for one cluster that the `postgres` user can enter.
fn cluster_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

impl Pg {
    /// A fresh cluster with scram-sha-256 auth and the given extra server settings.
    pub fn start_with(settings: &[(&str, String)]) -> Pg {
        let bin = pg_bin();
        let template = template(&bin);
        let dir = cluster_dir("rotagate-pg");
        check(
            Command::new("cp")
                .arg("-a")
                .arg(template)
                .arg(dir.path().join("data"))
                .output(),
            "copy template",
        );
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\nfsync = off\nsynchronous_commit = off\nmax_connections = 200\n",
        );
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            dir.path().join("sock").display()
        ));
        for (k, v) in settings {
            conf.push_str(&format!("{k} = '{v}'\n"));
        }
        std::fs::write(dir.path().join("data/postgresql.auto.conf"), conf).unwrap();
        give_to_pg(dir.path());
        let mut pg = Pg {
            port: free_port(),
            dir,
            bin,
        };
        pg.start_on_a_free_port();
        pg
    }

    pub fn start() -> Pg {
        Self::start_with(&[])
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`, as the failover acceptance
    /// script builds one), started on a port of its own.
    pub fn standby(&self) -> Pg {
        let dir = cluster_dir("rotagate-pg-standby");
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        give_to_pg(dir.path());
        check(
            as_pg(&self.bin.join("pg_basebackup"))
                .env("PGPASSWORD", SUPERUSER_PASSWORD)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                ])
                .arg(format!("-p{}", self.port))
                .arg("-D")
                .arg(dir.path().join("data"))
                .output(),
            "pg_basebackup",
        );
        let conf = dir.path().join("data/postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            dir.path().join("sock").display()
        ));
        std::fs::write(&conf, text).unwrap();
        give_to_pg(dir.path());
        let mut pg = Pg {
            port: free_port(),
            dir,
            bin: self.bin.clone(),
        };
        pg.start_on_a_free_port();
        pg
    }

    /// Promotes a standby and waits until it accepts writes.
    pub fn promote(&self) {
        check(self.pg_ctl(&["-w", "promote"]), "pg_ctl promote");
    }

    /// Stops the server as a crash would (`-m immediate`).
    pub fn crash(&self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    /// `pg_ctl -D <data> args...`, as the cluster's owner.
    fn pg_ctl(&self, args: &[&str]) -> std::io::Result<Output> {
        as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args)
            .output()
    }

    /// Replaces pg_hba.conf's TCP rule with `method` (md5, password, scram-sha-256) and reloads.
    pub fn set_hba_method(&self, method: &str) {
        let hba = format!("local all all scram-sha-256\nhost all all 127.0.0.1/32 {method}\n");
        let path = self.dir.path().join("data/pg_hba.conf");
        std::fs::write(&path, hba).unwrap();
        give_to_pg(&path);
        self.sql("SELECT pg_reload_conf()");
    }

    /// Lets clients from `cidr` log in (with SCRAM), besides 127.0.0.1.
    pub fn allow_host(&self, cidr: &str) {
        let path = self.dir.path().join("data/pg_hba.conf");
        let mut hba = std::fs::read_to_string(&path).unwrap();
        hba.push_str(&format!("host all all {cidr} scram-sha-256\n"));
        std::fs::write(&path, hba).unwrap();
        give_to_pg(&path);
        self.sql("SELECT pg_reload_conf()");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server on `port`, or, when another process took that port between
    /// `free_port` and the server's bind (PostgreSQL cannot be given port 0), on another one.
    fn start_on_a_free_port(&mut self) {
        for _ in 0..5 {
            let out = self.pg_ctl_start_output();
            if out.as_ref().is_ok_and(|o| o.status.success()) {
                return;
            }
            let log = std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default();
            if !log.contains("Address already in use") {
                check(out, "pg_ctl start");
            }
            self.port = free_port();
        }
        panic!("pg_ctl start: every port tried was taken");
    }

    fn pg_ctl_start(&self) {
        check(self.pg_ctl_start_output(), "pg_ctl start");
    }

    fn pg_ctl_start_output(&self) -> std::io::Result<Output> {
        as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("pg.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start")
            .output()
    }

    pub fn stop(&self) {
        let _ = self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Restarts the server (fast shutdown: every connection is terminated).
    pub fn restart(&self) {
        self.stop();
        self.pg_ctl_start();
    }

    /// Runs SQL as the superuser, directly; returns tuples-only output.
    pub fn sql_in(&self, db: &str, sql: &str) -> String {
        let out = check(
            Command::new("psql")
                .env("PGPASSWORD", SUPERUSER_PASSWORD)
                .args([
                    "-X",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    db,
                ])
                .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
                .output(),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn sql(&self, sql: &str) -> String {
        self.sql_in("postgres", sql)
    }

    /// Creates role `user` (LOGIN, password) owning database `appdb`.
    pub fn app_db(&self, user: &str, password: &str) {
        self.sql(&format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'"));
        self.sql(&format!("CREATE DATABASE appdb OWNER {user}"));
    }

    /// pgbench tables in appdb, owned by `user`.
    pub fn pgbench_init(&self, user: &str, password: &str) {
        check(
            Command::new("pgbench")
                .env("PGPASSWORD", password)
                .args([
                    "-q",
                    "-i",
                    "-s",
                    "1",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    user,
                    "appdb",
                ])
                .output(),
            "pgbench -i",
        );
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
