//! pg_doorman (github.com/ozontech/pg_doorman, on no registry) as a third peer in
//! benches/proxy.rs: started from the binary PG_DOORMAN names, with the same pool size, SCRAM
//! client auth (a verifier, as rotagate's clients and PgBouncer's auth_file hold) and one
//! worker thread. Build it once:
//!
//!     git clone https://github.com/ozontech/pg_doorman && cd pg_doorman
//!     RUSTUP_TOOLCHAIN=stable cargo build --release   # its toolchain file pins 1.87
//!     PG_DOORMAN=$PWD/target/release/pg_doorman cargo bench --bench proxy

use crate::support::pg::free_port;
use crate::support::wait_port;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Who logs in where.
pub struct Logins<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub up_user: &'a str,
    pub up_password: &'a str,
    pub pool: u32,
}

/// pg_doorman in `mode` in front of PostgreSQL on `pg_port`, or None without PG_DOORMAN.
pub fn start(dir: &Path, pg_port: u16, mode: &str, l: &Logins<'_>) -> Option<(Child, u16)> {
    let bin = std::env::var_os("PG_DOORMAN")?;
    let port = free_port();
    let ddir = dir.join(format!("pg_doorman-{mode}"));
    std::fs::create_dir_all(&ddir).unwrap();
    let verifier = rotagate::crypto::scram::hash_password(l.password);
    let config = format!(
        "[general]\nhost = \"127.0.0.1\"\nport = {port}\nworker_threads = 1\n\
         admin_username = \"admin\"\nadmin_password = \"admin-{port}\"\n\
         log_client_connections = false\nlog_client_disconnections = false\n\
         [pools.appdb]\nserver_host = \"127.0.0.1\"\nserver_port = {pg_port}\n\
         pool_mode = \"{mode}\"\n\
         [pools.appdb.users.0]\nusername = \"{}\"\npassword = \"{verifier}\"\n\
         pool_size = {}\nserver_username = \"{}\"\nserver_password = \"{}\"\n",
        l.user, l.pool, l.up_user, l.up_password
    );
    let path = ddir.join("pg_doorman.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(bin)
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run PG_DOORMAN");
    wait_port(port, &mut child, "pg_doorman");
    Some((child, port))
}
