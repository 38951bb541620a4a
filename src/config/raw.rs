//! The TOML shape of the config file: permissive leaf types (strings for addresses, modes and
//! durations) so that one validation pass can report every bad value with its path at once.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<RawListen>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub clients: Vec<RawClient>,
    pub upstream: Option<RawUpstream>,
    pub pool: Option<RawPool>,
    pub credentials: Option<RawCredentials>,
    #[serde(default)]
    pub databases: Vec<RawDatabase>,
    pub log: Option<RawLog>,
}

/// One `[[databases]]` entry: the name clients ask for, and that database's `[upstream]`,
/// `[pool]` overrides and `[credentials]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub name: Option<String>,
    pub upstream: Option<RawUpstream>,
    pub pool: Option<RawPool>,
    pub credentials: Option<RawCredentials>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub filter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub addr: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub require_tls: Option<bool>,
    pub max_clients: Option<i64>,
    pub max_pending_auth: Option<i64>,
    pub startup_timeout: Option<String>,
    pub auth_timeout: Option<String>,
    pub client_idle_timeout: Option<String>,
    pub max_message_size: Option<i64>,
    pub message_memory: Option<i64>,
    pub shutdown_timeout: Option<String>,
    pub workers: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub addr: Option<String>,
    pub token_file: Option<String>,
    pub allow_unauthenticated: Option<bool>,
    pub metrics_require_token: Option<bool>,
    pub max_connections: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub user: Option<String>,
    pub password: Option<String>,
    pub scram: Option<String>,
    pub databases: Option<Vec<String>>,
    pub max_connections: Option<i64>,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("scram", &self.scram.as_ref().map(|_| "***"))
            .field("databases", &self.databases)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub host: Option<String>,
    pub port: Option<i64>,
    pub hosts: Option<Vec<String>>,
    pub target_session_attrs: Option<String>,
    pub writer_check_interval: Option<String>,
    pub rds_cluster_id: Option<String>,
    pub rds_instance_id: Option<String>,
    pub database: Option<String>,
    pub tls: Option<String>,
    pub ca_file: Option<String>,
    pub connect_timeout: Option<String>,
    pub channel_binding: Option<String>,
    pub allow_md5: Option<bool>,
    pub parity_query: Option<String>,
    pub load_balance_hosts: Option<String>,
    pub replica_check_interval: Option<String>,
    pub max_replica_lag: Option<String>,
    pub max_replica_lag_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub mode: Option<String>,
    pub size: Option<i64>,
    pub min_idle: Option<i64>,
    pub acquire_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_lifetime: Option<String>,
    pub drain_timeout: Option<String>,
    pub on_pin: Option<String>,
    pub max_pinned: Option<i64>,
    pub idle_transaction_timeout: Option<String>,
    pub query_timeout: Option<String>,
    pub prepared_statements_view: Option<String>,
    pub max_prepared_statements: Option<i64>,
    pub max_client_statement_bytes: Option<i64>,
    pub prepare_unnamed: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    pub source: Option<OneOrMany>,
    pub refresh_interval: Option<String>,
    pub breaker_failures: Option<i64>,
    pub breaker_cooldown: Option<String>,
    pub cache_file: Option<String>,
    pub cache_key_file: Option<String>,
    pub allow_endpoint_change: Option<bool>,
    pub file: Option<RawFileSource>,
    pub aws: Option<RawAwsSource>,
    pub vault: Option<RawVaultSource>,
    pub rds_iam: Option<RawRdsIamSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRdsIamSource {
    pub user: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// `source = "aws"` or, with fallbacks in order, `source = ["aws", "vault"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileSource {
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAwsSource {
    pub secret_id: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub queue_url: Option<String>,
    pub expected_account: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVaultSource {
    pub addr: Option<String>,
    pub token_file: Option<String>,
    pub approle_role_id: Option<String>,
    pub approle_secret_id_file: Option<String>,
    pub kv_mount: Option<String>,
    pub kv_path: Option<String>,
    pub database_mount: Option<String>,
    pub database_role: Option<String>,
    pub ca_file: Option<String>,
}
