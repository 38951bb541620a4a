//! Configuration: TOML (plus `ROTAGATE_<SECTION>__<KEY>` environment overrides) parsed into
//! [`raw`] structs, then validated once into typed sub-configs. Every error is collected with
//! its field path and reported together. No other module reads the file or the environment.

mod credentials;
mod databases;
mod env;
mod pool;
mod raw;
mod readers;
mod upstream;
mod validate;

pub use readers::ReadersConfig;
pub use upstream::{ChannelBinding, HostPort, TargetSessionAttrs, UpstreamTls};

use crate::crypto::SecretString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::validate;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub admin: AdminConfig,
    pub clients: Vec<ClientUser>,
    /// The databases clients may open, in config order (at least one, distinct names). The
    /// single-database form (`[upstream]` + `[credentials]`) is one named `upstream.database`.
    pub databases: Vec<DatabaseConfig>,
    pub log: LogConfig,
}

/// One database clients open by `name`: its upstream, pool and credential source.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub name: String,
    pub upstream: UpstreamConfig,
    pub pool: PoolConfig,
    pub credentials: CredentialsConfig,
    /// Where it is in the file, before each key's path: `""` for the single-database form,
    /// `"databases[1]."` for the second `[[databases]]` entry.
    pub origin: String,
}

/// `[log]`: the log filter (`RUST_LOG` syntax), reloaded on SIGHUP. `RUST_LOG`, when set,
/// wins.
#[derive(Debug, Clone, Default)]
pub struct LogConfig {
    pub filter: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub require_tls: bool,
    /// Authenticated client sessions at once; one more is refused with 53300.
    pub max_clients: usize,
    /// Connections not yet authenticated, at once. A new one beyond it drops the oldest (one
    /// that has not sent its startup packet first), so a flood cannot lock real clients out.
    pub max_pending_auth: usize,
    /// From accept to a complete startup packet (TLS handshake included).
    pub startup_timeout: Duration,
    /// From accept to the end of authentication.
    pub auth_timeout: Duration,
    /// `listen.client_idle_timeout`: a client that sends nothing for this long while its
    /// session is between transactions is disconnected (57P05); None: never.
    pub client_idle_timeout: Option<Duration>,
    /// Largest message a client may send (bytes); larger ones are refused.
    pub max_message_size: usize,
    /// `listen.message_memory`: bytes all clients' messages held whole (a Query or Parse over
    /// 1 MiB, while rotagate reads it to decide on it) may take at once; a client whose message
    /// does not fit waits. At least `max_message_size`, so every message fits alone.
    pub message_memory: usize,
    /// How long shutdown waits for open transactions before closing sessions.
    pub shutdown_timeout: Duration,
    /// Threads running the event loop. 1 is a single-threaded loop (as PgBouncer's), the most
    /// CPU-efficient per transaction; more spread clients over more cores.
    pub workers: usize,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// Serve `POST /rotate` off loopback without a token (logged as a warning at start).
    pub allow_unauthenticated: bool,
    /// Admin connections open at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// `/metrics` needs the token too (`/status` always does when a token is set).
    pub metrics_require_token: bool,
}

/// A static client login. Its secret is a plain password or a stored SCRAM verifier.
#[derive(Debug, Clone)]
pub struct ClientUser {
    pub user: String,
    pub secret: ClientSecret,
    /// The databases this client may open; `None`: every one.
    pub databases: Option<Vec<String>>,
    /// `[[clients]] max_connections`: its sessions open at once; `None`: no cap of its own.
    pub max_connections: Option<u32>,
}

#[derive(Clone)]
pub enum ClientSecret {
    Password(SecretString),
    Scram(SecretString),
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password(_) => f.write_str("Password(***)"),
            Self::Scram(_) => f.write_str("Scram(***)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The first of `hosts`.
    pub host: String,
    pub port: u16,
    /// Every host, in order (`hosts`, or `host` and `port`); at least one.
    pub hosts: Vec<HostPort>,
    /// Which host to serve from, as libpq's `target_session_attrs`.
    pub target_session_attrs: TargetSessionAttrs,
    /// How often the hosts are looked at again for a silent promotion (several hosts, or a
    /// `target_session_attrs` other than `any`).
    pub writer_check_interval: Duration,
    /// The RDS cluster (Aurora, Multi-AZ DB cluster) or instance (Multi-AZ) whose failover
    /// events, on `credentials.aws.queue_url`, start a search for the writer at once.
    pub rds_cluster_id: Option<String>,
    pub rds_instance_id: Option<String>,
    pub database: String,
    pub tls: UpstreamTls,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub channel_binding: ChannelBinding,
    /// `upstream.allow_md5`: answer a server that asks for an md5 password (default false).
    pub allow_md5: bool,
    /// `upstream.parity_query`: a query whose one value (the newest migration, say) must be
    /// the same on a candidate connection as on the serving one before a new credential or a
    /// new writer is published.
    pub parity_query: Option<String>,
    /// A reader entry's settings (`load_balance_hosts = "random"`); None for a writer.
    pub readers: Option<ReadersConfig>,
    /// `upstream.tls` was set; otherwise each host's mode is its own default
    /// ([`UpstreamConfig::tls_for`]).
    pub tls_explicit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    Transaction,
}

/// `[pool] on_pin`: what transaction mode does with a statement that would pin its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPin {
    /// Keep the client on its upstream connection until it disconnects.
    Pin,
    /// Refuse the statement with 0A000.
    Error,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub mode: PoolMode,
    pub size: u32,
    pub min_idle: u32,
    pub on_pin: OnPin,
    /// `pool.max_pinned`: clients of the database that may be pinned at once; None for the
    /// default, `size - 1` (see [`PoolConfig::max_pinned`]).
    pub max_pinned: Option<u32>,
    /// `pool.prepared_statements_view`: what `pg_prepared_statements` shows a transaction-mode
    /// client: the upstream connection's statements (`false`, the default) or its own (`true`).
    pub client_view: bool,
    /// `pool.idle_transaction_timeout`: a client silent inside a transaction this long gets
    /// 25P03 and its transaction is rolled back; None: never.
    pub idle_transaction_timeout: Option<Duration>,
    /// `pool.query_timeout`: replies owed this long get the query cancelled (57014);
    /// transaction mode; None: never.
    pub query_timeout: Option<Duration>,
    /// rotagate's named statements kept per upstream connection (least recently used go).
    pub max_prepared_statements: usize,
    /// Bytes of named-statement text one client may keep in transaction mode.
    pub max_client_statement_bytes: usize,
    /// `pool.prepare_unnamed` (default false): an unnamed Parse of a text and parameter types
    /// seen before on the connection is served by a named statement prepared once there
    /// (transaction mode).
    pub prepare_unnamed: bool,
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub drain_timeout: Duration,
}

impl PoolConfig {
    /// Clients of the database that may be pinned at once: `pool.max_pinned`, by default one
    /// less than `pool.size`, so that pinned clients never hold the last upstream connection.
    pub fn max_pinned(&self) -> u32 {
        self.max_pinned.unwrap_or(self.size.saturating_sub(1))
    }
}

/// The defaults of every `[pool]` key.
impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            mode: PoolMode::Transaction,
            size: 20,
            min_idle: 0,
            on_pin: OnPin::Pin,
            max_pinned: None,
            client_view: false,
            idle_transaction_timeout: None,
            query_timeout: None,
            max_prepared_statements: 250,
            max_client_statement_bytes: 1 << 20,
            prepare_unnamed: false,
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    File,
    Aws,
    Vault,
    /// RDS IAM authentication tokens, signed for each new login.
    RdsIam,
}

#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    /// The primary source first, then the fallbacks, in order (at least one, no repeats).
    pub sources: Vec<SourceKind>,
    pub refresh_interval: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub cache_file: Option<PathBuf>,
    pub cache_key_file: Option<PathBuf>,
    pub allow_endpoint_change: bool,
    pub file: Option<FileSourceConfig>,
    pub aws: Option<AwsSourceConfig>,
    pub vault: Option<VaultSourceConfig>,
    pub rds_iam: Option<RdsIamSourceConfig>,
    /// From `ROTAGATE_CACHE_KEY` (base64 of 32 bytes), when set.
    pub cache_key: Option<SecretString>,
}

#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    pub path: PathBuf,
}

/// `[credentials.aws]`: the secret (name or ARN), and where to reach AWS. Without `region`
/// the region comes from the secret's ARN, else from the SDK's usual chain (`AWS_REGION`, the
/// profile, instance metadata). Without `queue_url` only the periodic check notices rotations.
#[derive(Debug, Clone)]
pub struct AwsSourceConfig {
    pub secret_id: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub queue_url: Option<String>,
    /// Events from any other AWS account are dropped; default: the account in `secret_id`
    /// when that is an ARN.
    pub expected_account: Option<String>,
}

/// `[credentials.rds_iam]`: the database user the tokens are for. Without `region` the SDK's
/// chain decides (`AWS_REGION`, the profile, instance metadata); `endpoint_url` is for the
/// credential chain's STS calls (tests).
#[derive(Debug, Clone)]
pub struct RdsIamSourceConfig {
    pub user: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// `[credentials.vault]`: where Vault is, how rotagate logs in, and which secret it reads.
#[derive(Debug, Clone)]
pub struct VaultSourceConfig {
    pub addr: String,
    pub auth: VaultAuth,
    pub mode: VaultMode,
    /// A CA bundle for Vault's TLS certificate; default: the bundled Mozilla roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum VaultAuth {
    /// A token from this file (re-read when it can no longer be renewed), or from
    /// `VAULT_TOKEN` when no file is configured.
    Token {
        file: Option<PathBuf>,
        /// `VAULT_TOKEN`, read with the configuration.
        env: Option<SecretString>,
    },
    AppRole {
        role_id: String,
        secret_id_file: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub enum VaultMode {
    /// A KV v2 secret holding the RDS JSON, polled for new versions.
    Kv { mount: String, path: String },
    /// Dynamic credentials from the database secrets engine, leased and renewed.
    Database { mount: String, role: String },
}

/// Every problem found in a config, each with the path of the field it concerns.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<FieldError>);

#[derive(Debug)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![FieldError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

/// Loads `path`, applies `ROTAGATE_*` overrides from `vars`, and validates.
pub fn load(
    path: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one("config", format!("cannot read {}: {e}", path.display())))?;
    parse(&text, vars)
}

/// Parses TOML text, applies overrides, validates.
pub fn parse(
    text: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let mut value: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigErrors::one("config", toml_message(&e)))?;
    let vars: Vec<(String, String)> = vars.into_iter().collect();
    let cache_key = vars
        .iter()
        .find(|(k, _)| k == "ROTAGATE_CACHE_KEY")
        .map(|(_, v)| SecretString::new(v.clone()));
    let vault_token = vars
        .iter()
        .find(|(k, v)| k == "VAULT_TOKEN" && !v.is_empty())
        .map(|(_, v)| SecretString::new(v.clone()));
    env::apply_overrides(&mut value, vars)?;
    let raw: raw::RawConfig = deserialize(value)?;
    let mut cfg = validate(raw)?;
    let mut errors = ConfigErrors::default();
    for db in &mut cfg.databases {
        secrets_from_env(db, &vault_token, &cache_key, &mut errors);
    }
    if !errors.0.is_empty() {
        return Err(errors);
    }
    Ok(cfg)
}

/// `VAULT_TOKEN` and `ROTAGATE_CACHE_KEY` into one database's credentials, with the errors
/// of a source that cannot log in or a cache without a key.
fn secrets_from_env(
    db: &mut DatabaseConfig,
    vault_token: &Option<SecretString>,
    cache_key: &Option<SecretString>,
    errors: &mut ConfigErrors,
) {
    let at = |key: &str| format!("{}credentials.{key}", db.origin);
    if let Some(VaultSourceConfig {
        auth: VaultAuth::Token { file: None, env },
        ..
    }) = &mut db.credentials.vault
    {
        *env = vault_token.clone();
        if env.is_none() {
            errors.0.push(FieldError {
                path: at("vault"),
                message: "needs a way to log in: token_file, approle_role_id + approle_secret_id_file, or VAULT_TOKEN".into(),
            });
        }
    }
    if let Some(key) = cache_key {
        if crate::crypto::key_from_base64(key).is_none() {
            if !errors.0.iter().any(|e| e.path == "ROTAGATE_CACHE_KEY") {
                errors.0.push(FieldError {
                    path: "ROTAGATE_CACHE_KEY".into(),
                    message: "must be base64 of exactly 32 bytes".into(),
                });
            }
            return;
        }
        db.credentials.cache_key = Some(key.clone());
    } else if db.credentials.cache_file.is_some() && db.credentials.cache_key_file.is_none() {
        errors.0.push(FieldError {
            path: at("cache_file"),
            message: "needs a key: set ROTAGATE_CACHE_KEY (base64 of 32 bytes) or credentials.cache_key_file".into(),
        });
    }
}

fn deserialize(value: toml::Table) -> Result<raw::RawConfig, ConfigErrors> {
    serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(
        |e: serde_path_to_error::Error<toml::de::Error>| {
            let path = e.path().to_string();
            let path = if path == "." {
                "config".to_owned()
            } else {
                path
            };
            ConfigErrors::one(path, toml_message(e.inner()))
        },
    )
}

/// serde quotes the value it refused ("invalid type: string \"...\", expected u16"), and a
/// secret pasted under the wrong key would be printed: the message keeps the key and the
/// kinds, never the value.
fn toml_message(e: &toml::de::Error) -> String {
    without_value(e.message().trim())
}

fn without_value(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "unknown variant "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (got, expected) = rest.split_once(", expected").unwrap_or((rest, ""));
            let kind = match got.split_once([' ', '`', '"']) {
                Some((kind, _)) if !kind.is_empty() => kind,
                _ => "value",
            };
            let expected = if expected.is_empty() {
                String::new()
            } else {
                format!(", expected{expected}")
            };
            return format!("{prefix}{kind} (not shown){expected}");
        }
    }
    message.to_owned()
}
