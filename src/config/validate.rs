//! The one validation pass: raw config in, typed config out, or every error at once.

use super::raw::*;
use super::*;

/// Collects errors while converting; each conversion returns a fallback so checking goes on.
pub(super) struct Check {
    pub(super) errors: Vec<FieldError>,
    /// Put before every path: where the section being checked sits (`databases[1].`).
    pub(super) prefix: String,
}

impl Check {
    pub(super) fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: format!("{}{path}", self.prefix),
            message: message.into(),
        });
    }

    /// An optional duration: absent (or `"0"`) is off.
    pub(super) fn limit(&mut self, path: &str, v: Option<&String>) -> Option<Duration> {
        let v = v.filter(|s| s.trim() != "0")?;
        Some(self.duration(path, Some(v), Duration::ZERO)).filter(|d| !d.is_zero())
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        v: Option<&String>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.err(path, "must be longer than zero");
                    default
                }
                Err(_) => {
                    self.err(
                        path,
                        "must be a duration like \"5s\" or \"10m\" (the value is not shown)"
                            .to_owned(),
                    );
                    default
                }
            },
        }
    }

    pub(super) fn addr(&mut self, path: &str, v: Option<&String>, default: &str) -> SocketAddr {
        let s = v.map(String::as_str).unwrap_or(default);
        s.parse().unwrap_or_else(|_| {
            self.err(
                path,
                "must be an address like \"0.0.0.0:6432\" (the value is not shown)".to_owned(),
            );
            default.parse().expect("default address parses")
        })
    }

    pub(super) fn range(
        &mut self,
        path: &str,
        v: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> i64 {
        match v {
            None => default,
            Some(n) if (min..=max).contains(&n) => n,
            Some(n) => {
                self.err(path, format!("{n} is out of range {min}..={max}"));
                default
            }
        }
    }

    pub(super) fn required<'a>(&mut self, path: &str, v: Option<&'a String>) -> &'a str {
        match v {
            Some(s) if !s.trim().is_empty() => s,
            _ => {
                self.err(path, "is required");
                ""
            }
        }
    }
}

pub fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut c = Check {
        errors: Vec::new(),
        prefix: String::new(),
    };
    let listen = listen(&mut c, raw.listen.unwrap_or_default());
    let admin = admin(&mut c, raw.admin.unwrap_or_default());
    let pool_defaults =
        super::pool::pool(&mut c, raw.pool.unwrap_or_default(), &PoolConfig::default());
    let databases = if raw.databases.is_empty() {
        vec![single_database(
            &mut c,
            raw.upstream,
            raw.credentials,
            pool_defaults,
        )]
    } else {
        if raw.upstream.is_some() || raw.credentials.is_some() {
            c.err(
                "databases",
                "[[databases]] cannot be combined with the single-database [upstream] and \
                 [credentials] sections: move them into a [[databases]] entry",
            );
        }
        super::databases::databases(&mut c, raw.databases, &pool_defaults)
    };
    let clients = clients(&mut c, raw.clients, &databases);
    let log = log(&mut c, raw.log.unwrap_or_default());
    if c.errors.is_empty() {
        Ok(Config {
            listen,
            admin,
            clients,
            databases,
            log,
        })
    } else {
        Err(ConfigErrors(c.errors))
    }
}

/// `[upstream]` + `[credentials]`: one database, named as its upstream database.
fn single_database(
    c: &mut Check,
    upstream_raw: Option<RawUpstream>,
    credentials: Option<RawCredentials>,
    pool: PoolConfig,
) -> DatabaseConfig {
    let upstream = super::upstream::upstream(c, upstream_raw);
    let credentials = super::credentials::credentials(c, credentials);
    super::credentials::check_rds_iam(c, &upstream, &credentials);
    super::credentials::check_rds_events(c, &upstream, &credentials);
    DatabaseConfig {
        name: upstream.database.clone(),
        credentials,
        upstream,
        pool,
        origin: String::new(),
    }
}

fn log(c: &mut Check, r: RawLog) -> LogConfig {
    if let Some(f) = &r.filter {
        if tracing_subscriber::EnvFilter::try_new(f).is_err() {
            c.err(
                "log.filter",
                "must be a filter like \"info,rotagate=debug\" (the value is not shown)".to_owned(),
            );
        }
    }
    LogConfig { filter: r.filter }
}

/// `listen.message_memory`: default 256 MiB, or `max_message_size` when that is larger; never
/// below it (a message that fits in no budget would wait for ever).
fn message_memory(c: &mut Check, v: Option<i64>, max_message_size: usize) -> usize {
    let floor = max_message_size as i64;
    match v {
        None => (256 << 20).max(max_message_size),
        Some(n) if (floor..=1 << 40).contains(&n) => n as usize,
        Some(n) if n > floor => {
            c.err("listen.message_memory", format!("{n} is above 1 TiB"));
            max_message_size
        }
        Some(n) => {
            c.err(
                "listen.message_memory",
                format!("{n} is below listen.max_message_size ({floor}): a message that size could never be read"),
            );
            max_message_size
        }
    }
}

fn listen(c: &mut Check, r: RawListen) -> ListenConfig {
    let tls = match (r.tls_cert, r.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            c.err("listen.tls_key", "is required when listen.tls_cert is set");
            None
        }
        (None, Some(_)) => {
            c.err("listen.tls_cert", "is required when listen.tls_key is set");
            None
        }
    };
    let require_tls = r.require_tls.unwrap_or(false);
    if require_tls && tls.is_none() {
        c.err(
            "listen.require_tls",
            "needs listen.tls_cert and listen.tls_key",
        );
    }
    let max_message_size = c.range(
        "listen.max_message_size",
        r.max_message_size,
        64 << 20,
        1024,
        1 << 30,
    ) as usize;
    ListenConfig {
        addr: c.addr("listen.addr", r.addr.as_ref(), "0.0.0.0:6432"),
        tls,
        require_tls,
        max_clients: c.range("listen.max_clients", r.max_clients, 10_000, 1, 1_000_000) as usize,
        max_pending_auth: c.range(
            "listen.max_pending_auth",
            r.max_pending_auth,
            1_000,
            1,
            1_000_000,
        ) as usize,
        startup_timeout: c.duration(
            "listen.startup_timeout",
            r.startup_timeout.as_ref(),
            Duration::from_secs(5),
        ),
        auth_timeout: c.duration(
            "listen.auth_timeout",
            r.auth_timeout.as_ref(),
            Duration::from_secs(10),
        ),
        client_idle_timeout: c.limit("listen.client_idle_timeout", r.client_idle_timeout.as_ref()),
        max_message_size,
        message_memory: message_memory(c, r.message_memory, max_message_size),
        workers: c.range("listen.workers", r.workers, 1, 1, 256) as usize,
        shutdown_timeout: c.duration(
            "listen.shutdown_timeout",
            r.shutdown_timeout.as_ref(),
            Duration::from_secs(20),
        ),
    }
}

fn admin(c: &mut Check, r: RawAdmin) -> AdminConfig {
    let cfg = AdminConfig {
        addr: c.addr("admin.addr", r.addr.as_ref(), "127.0.0.1:9930"),
        token_file: r.token_file.map(PathBuf::from),
        allow_unauthenticated: r.allow_unauthenticated.unwrap_or(false),
        metrics_require_token: r.metrics_require_token.unwrap_or(false),
        max_connections: c.range("admin.max_connections", r.max_connections, 64, 1, 10_000)
            as usize,
    };
    if !cfg.addr.ip().is_loopback() && cfg.token_file.is_none() && !cfg.allow_unauthenticated {
        c.err(
            "admin.token_file",
            "is required when admin.addr is not a loopback address (anyone who reaches it could \
             POST /rotate); set admin.token_file, or admin.allow_unauthenticated = true to accept that",
        );
    }
    cfg
}

fn clients(c: &mut Check, raw: Vec<RawClient>, databases: &[DatabaseConfig]) -> Vec<ClientUser> {
    if raw.is_empty() {
        c.err("clients", "at least one [[clients]] entry is required");
    }
    let mut out: Vec<ClientUser> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let path = format!("clients[{i}]");
        let user = c
            .required(&format!("{path}.user"), r.user.as_ref())
            .to_owned();
        if out.iter().any(|u| u.user == user) {
            c.err(
                &format!("{path}.user"),
                "repeats an earlier client's user".to_owned(),
            );
        }
        let secret = match (r.password.clone(), r.scram.clone()) {
            (Some(p), None) if !p.is_empty() => ClientSecret::Password(SecretString::new(p)),
            (None, Some(s)) => {
                if crate::crypto::scram::parse_verifier(&s).is_none() {
                    c.err(
                        &format!("{path}.scram"),
                        "is not a SCRAM-SHA-256 verifier (see `rotagate hash-password`)",
                    );
                }
                ClientSecret::Scram(SecretString::new(s))
            }
            (Some(_), Some(_)) => {
                c.err(&path, "set either password or scram, not both");
                continue;
            }
            _ => {
                c.err(&format!("{path}.password"), "password or scram is required");
                continue;
            }
        };
        let allowed = r.databases.inspect(|names| {
            for name in names {
                if !databases.iter().any(|d| &d.name == name) {
                    c.err(
                        &format!("{path}.databases"),
                        format!("names \"{name}\", which is not a configured database"),
                    );
                }
            }
        });
        let max_connections = r.max_connections.map(|_| {
            let key = format!("{path}.max_connections");
            c.range(&key, r.max_connections, 1, 1, 1_000_000) as u32
        });
        out.push(ClientUser {
            user,
            secret,
            databases: allowed,
            max_connections,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const GOOD: &str = r#"
[listen]
addr = "127.0.0.1:6432"
[[clients]]
user = "app"
password = "pw"
[upstream]
host = "db.example.com"
database = "app"
[credentials]
source = "file"
[credentials.file]
path = "/run/secrets/db.json"
"#;

    #[test]
    fn good_config_gets_defaults() {
        let c = parse(GOOD, []).unwrap();
        let db = &c.databases[0];
        assert_eq!(db.pool.size, 20);
        assert_eq!(db.pool.mode, super::PoolMode::Transaction);
        assert_eq!(db.upstream.tls, super::UpstreamTls::VerifyFull);
        assert_eq!(db.upstream.port, 5432);
        assert_eq!(c.listen.auth_timeout.as_secs(), 10);
    }

    #[test]
    fn message_memory_defaults_to_256_mib_and_holds_the_largest_message() {
        let c = parse(GOOD, []).unwrap();
        assert_eq!(c.listen.message_memory, 256 << 20);
        let big = GOOD.replace("[listen]\n", "[listen]\nmax_message_size = 536870912\n");
        assert_eq!(parse(&big, []).unwrap().listen.message_memory, 512 << 20);
        let low = GOOD.replace("[listen]\n", "[listen]\nmessage_memory = 1048576\n");
        let e = parse(&low, []).unwrap_err().to_string();
        assert!(
            e.contains("listen.message_memory") && e.contains("max_message_size"),
            "{e}"
        );
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let bad = "[listen]\naddr = \"not an address\"\n[pool]\nmode = \"sometimes\"\nacquire_timeout = \"soon\"\n";
        let e = parse(bad, []).unwrap_err().to_string();
        for path in [
            "listen.addr",
            "pool.mode",
            "pool.acquire_timeout",
            "upstream",
            "clients",
            "credentials",
        ] {
            assert!(e.contains(path), "{path} missing from: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse(&format!("{GOOD}\n[admin]\nport = 1\n"), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn env_overrides_apply_before_validation() {
        let vars = [("ROTAGATE_POOL__SIZE".to_owned(), "7".to_owned())];
        assert_eq!(parse(GOOD, vars).unwrap().databases[0].pool.size, 7);
        let vars = [("ROTAGATE_POOL__MODE".to_owned(), "nope".to_owned())];
        assert!(
            parse(GOOD, vars)
                .unwrap_err()
                .to_string()
                .contains("pool.mode")
        );
    }

    #[test]
    fn config_errors_never_echo_client_passwords() {
        let text = GOOD.replace("password = \"pw\"", "password = \"pw-leak\"\nscram = \"x\"");
        let e = parse(&text, []).unwrap_err().to_string();
        assert!(!e.contains("pw-leak"), "{e}");
    }

    #[test]
    fn type_errors_name_the_key_and_type_never_the_value() {
        for (from, to) in [
            (
                "database = \"app\"",
                "database = \"app\"\nport = \"hunter2-port\"",
            ),
            ("source = \"file\"", "source = \"hunter2-source\""),
            ("user = \"app\"", "user = 12345678"),
        ] {
            let e = parse(&GOOD.replace(from, to), []).unwrap_err().to_string();
            assert!(!e.contains("hunter2") && !e.contains("12345678"), "{e}");
            assert!(e.contains("expected") || e.contains("must be"), "{e}");
        }
        let e = parse(
            &GOOD.replace("database = \"app\"", "database = \"app\"\nport = \"x\""),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("port"), "the key is named: {e}");
    }

    #[test]
    fn an_admin_listener_off_loopback_needs_a_token_or_an_explicit_opt_out() {
        let open = format!("{GOOD}\n[admin]\naddr = \"0.0.0.0:9930\"\n");
        let e = parse(&open, []).unwrap_err().to_string();
        assert!(e.contains("admin.token_file"), "{e}");
        parse(&format!("{open}allow_unauthenticated = true\n"), []).unwrap();
        parse(
            &format!("{open}token_file = \"/run/secrets/admin-token\"\n"),
            [],
        )
        .unwrap();
        parse(&format!("{GOOD}\n[admin]\naddr = \"[::1]:9930\"\n"), []).unwrap();
    }
}
