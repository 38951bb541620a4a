//! One logged-in Vault client: vaultrs for the typed endpoints (AppRole login, token lookup and
//! renewal, KV v2), the same HTTP client (reqwest with rustls on *ring*) for the raw ones
//! vaultrs lacks (database credentials with their lease, `sys/leases`).
//!
//! The token is renewed by [`super::token::TokenKeeper`]; a request refused with 403 logs in
//! again once and retries. Tokens never reach a log line or an error message.

use crate::config::{VaultAuth, VaultSourceConfig};
use crate::secrets::SecretString;
use crate::secrets::provider::SourceError;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::RwLock;
use tokio::time::Instant;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

/// One Vault call gives up after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The token's lifetime as last learned: when it was granted, for how long, renewable or not.
#[derive(Debug, Clone, Copy)]
pub struct TokenLife {
    pub granted_at: Instant,
    /// Zero for a token that does not expire.
    pub ttl: Duration,
    pub renewable: bool,
}

pub struct Vault {
    pub addr: String,
    http: reqwest::Client,
    client: RwLock<VaultClient>,
    auth: VaultAuth,
    life: Mutex<TokenLife>,
    /// Signalled on every login or renewal, so the keeper re-plans.
    pub changed: tokio::sync::Notify,
}

impl Vault {
    /// Builds the client and logs in (AppRole, the token file, or `VAULT_TOKEN`).
    pub async fn connect(cfg: &VaultSourceConfig) -> anyhow::Result<Arc<Vault>> {
        let http = http_client(cfg)?;
        let settings = VaultClientSettingsBuilder::default()
            .address(&cfg.addr)
            .timeout(Some(CALL_TIMEOUT))
            .build()?;
        let client = VaultClient {
            http: rustify::clients::reqwest::Client::new(&cfg.addr, http.clone()),
            middle: vaultrs::api::EndpointMiddleware {
                token: String::new(),
                version: "v1".into(),
                wrap: None,
                namespace: None,
            },
            settings,
        };
        let vault = Arc::new(Vault {
            addr: cfg.addr.clone(),
            http,
            client: RwLock::new(client),
            auth: cfg.auth.clone(),
            life: Mutex::new(TokenLife {
                granted_at: Instant::now(),
                ttl: Duration::ZERO,
                renewable: false,
            }),
            changed: tokio::sync::Notify::new(),
        });
        // Not fatal here: the first read logs in again (and may fall back to the cache or
        // another source), and the token keeper retries.
        if let Err(e) = vault.login().await {
            tracing::error!(addr = %cfg.addr, error = %e, "cannot log in to Vault; retrying");
        }
        Ok(vault)
    }

    pub fn life(&self) -> TokenLife {
        *self.life.lock().expect("token life lock")
    }

    fn set_life(&self, ttl_secs: u64, renewable: bool) {
        *self.life.lock().expect("token life lock") = TokenLife {
            granted_at: Instant::now(),
            ttl: Duration::from_secs(ttl_secs),
            renewable,
        };
        self.changed.notify_one();
    }

    /// Logs in afresh: AppRole with the secret_id file as it is now, or the token from its
    /// file (or `VAULT_TOKEN`), looked up for its lifetime.
    pub async fn login(&self) -> Result<(), SourceError> {
        match &self.auth {
            VaultAuth::AppRole {
                role_id,
                secret_id_file,
            } => {
                let secret_id = read_secret_file(secret_id_file)?;
                let mut client = self.client.write().await;
                let auth =
                    vaultrs::auth::approle::login(&*client, "approle", role_id, secret_id.expose())
                        .await
                        .map_err(|e| classify("AppRole login", e))?;
                client.set_token(&auth.client_token);
                self.set_life(auth.lease_duration, auth.renewable);
            }
            VaultAuth::Token { file, env } => {
                let token = match (file, env) {
                    (Some(path), _) => read_secret_file(path)?,
                    (None, Some(t)) => t.clone(),
                    (None, None) => {
                        return Err(SourceError::Refused("no Vault token configured".into()));
                    }
                };
                let mut client = self.client.write().await;
                client.set_token(token.expose());
                let me = vaultrs::token::lookup_self(&*client)
                    .await
                    .map_err(|e| classify("token lookup", e))?;
                self.set_life(me.ttl, me.renewable.unwrap_or(false));
            }
        }
        tracing::info!(addr = %self.addr, ttl = ?self.life().ttl, "logged in to Vault");
        Ok(())
    }

    /// Renews the token (renew-self, for its original TTL); returns the TTL granted.
    pub async fn renew(&self) -> Result<Duration, SourceError> {
        let asked = self.life().ttl;
        let client = self.client.read().await;
        let increment = format!("{}s", asked.as_secs());
        let auth = vaultrs::token::renew_self(&*client, Some(&increment))
            .await
            .map_err(|e| classify("token renewal", e))?;
        self.set_life(auth.lease_duration, auth.renewable);
        Ok(Duration::from_secs(auth.lease_duration))
    }

    /// The client, for one vaultrs call (see [`with_relogin!`]).
    pub async fn client(&self) -> tokio::sync::RwLockReadGuard<'_, VaultClient> {
        self.client.read().await
    }

    /// After a 403: the token expired or was revoked; log in again.
    pub async fn relogin(&self) -> Result<(), SourceError> {
        tracing::warn!(addr = %self.addr, "Vault refused the token; logging in again");
        self.login().await
    }

    /// A raw request to `/v1/{path}` with the token; the JSON answer. 403 logs in once again.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, SourceError> {
        match self.raw_once(&method, path, body.as_ref()).await {
            Err(RawError::Forbidden) => {
                self.relogin().await?;
                self.raw_once(&method, path, body.as_ref())
                    .await
                    .map_err(|e| e.into_source(path))
            }
            other => other.map_err(|e| e.into_source(path)),
        }
    }

    async fn raw_once(
        &self,
        method: &reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, RawError> {
        let token = self.client.read().await.settings.token.clone();
        let mut req = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token)
            .header("X-Vault-Request", "true");
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RawError::Network(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| RawError::Network(e.to_string()))?;
        match status {
            200..=299 if text.trim().is_empty() => Ok(Value::Null),
            200..=299 => serde_json::from_str(&text)
                .map_err(|_| RawError::Status(status, "an answer that is not JSON".into())),
            403 => Err(RawError::Forbidden),
            _ => Err(RawError::Status(status, api_errors(&text))),
        }
    }
}

/// Runs a vaultrs call; on 403 logs in once and runs it again. Errors become [`SourceError`].
macro_rules! with_relogin {
    ($vault:expr, $what:expr, $call:expr) => {
        match $call.await {
            Err(vaultrs::error::ClientError::APIError { code: 403, .. }) => {
                $vault.relogin().await?;
                $call.await
            }
            other => other,
        }
        .map_err(|e| $crate::secrets::vault::client::classify($what, e))
    };
}
pub(crate) use with_relogin;

enum RawError {
    Network(String),
    Forbidden,
    Status(u16, String),
}

impl RawError {
    fn into_source(self, path: &str) -> SourceError {
        match self {
            RawError::Network(e) => SourceError::Unavailable(format!("Vault {path}: {e}")),
            RawError::Forbidden => {
                SourceError::Refused(format!("Vault {path}: permission denied (403)"))
            }
            RawError::Status(code, errors) => by_code(&format!("Vault {path}"), code, &errors),
        }
    }
}

/// Vault's `{"errors": [...]}` as one line (they name paths and reasons, never secrets).
fn api_errors(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["errors"].as_array().cloned())
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

fn by_code(what: &str, code: u16, errors: &str) -> SourceError {
    let text = format!("{what}: HTTP {code} {errors}");
    match code {
        429 | 500..=599 => SourceError::Unavailable(text),
        _ => SourceError::Refused(text),
    }
}

/// vaultrs errors: API errors by status; anything else (connect, timeout) is transient.
pub fn classify(what: &str, e: ClientError) -> SourceError {
    match e {
        ClientError::APIError { code, errors } => by_code(what, code, &errors.join("; ")),
        other => SourceError::Unavailable(format!("Vault {what}: {other}")),
    }
}

fn read_secret_file(path: &std::path::Path) -> Result<SecretString, SourceError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SourceError::Unavailable(format!("cannot read {}: {e}", path.display())))?;
    let value = SecretString::new(text.trim().to_owned());
    drop(zeroize::Zeroizing::new(text));
    if value.expose().is_empty() {
        return Err(SourceError::Refused(format!("{} is empty", path.display())));
    }
    Ok(value)
}

/// Whether `addr` is `http://` to a host other than localhost or a loopback address.
pub fn plain_http_off_loopback(addr: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(addr) else {
        return false;
    };
    if url.scheme() != "http" {
        return false;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => !host.eq_ignore_ascii_case("localhost"),
    }
}

/// reqwest with rustls on *ring*: the bundled Mozilla roots, plus `ca_file` when set.
fn http_client(cfg: &VaultSourceConfig) -> anyhow::Result<reqwest::Client> {
    if plain_http_off_loopback(&cfg.addr) {
        tracing::warn!(
            addr = %cfg.addr,
            "credentials.vault.addr is plain HTTP to a host that is not loopback: the Vault token \
             and the database credential cross the network unencrypted; use https"
        );
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("cannot read credentials.vault.ca_file: {e}"))?
        {
            roots.add(cert?)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::crypto::tls_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(CALL_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        .build()?)
}

#[cfg(test)]
mod address_tests {
    #[test]
    fn plain_http_is_flagged_only_off_loopback() {
        for (addr, flagged) in [
            ("http://vault.internal:8200", true),
            ("http://10.0.0.5:8200", true),
            ("http://127.0.0.1:8200", false),
            ("http://[::1]:8200", false),
            ("http://localhost:8200", false),
            ("https://vault.internal:8200", false),
        ] {
            assert_eq!(super::plain_http_off_loopback(addr), flagged, "{addr}");
        }
    }
}
