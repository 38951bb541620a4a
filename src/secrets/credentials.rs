//! The RDS secret JSON (`username`, `password`, optional `host`, `port`, `dbname`, `engine`)
//! parsed into [`Credentials`]. Parse errors never quote the input: it holds a password.

use super::SecretString;
use serde::Deserialize;
use std::fmt;
use zeroize::Zeroizing;

/// One upstream login. `Debug` redacts the password; `version` identifies the source version
/// (a file's content fingerprint, a Secrets Manager VersionId, a Vault KV version).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: SecretString,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    pub version: String,
    /// Where each login's password comes from when it is not `password` (RDS IAM tokens).
    pub token: Option<TokenSource>,
}

/// A source of login passwords (see [`LoginToken`]); equal only to itself.
#[derive(Clone)]
pub struct TokenSource(pub std::sync::Arc<dyn super::provider::LoginToken>);

impl PartialEq for TokenSource {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TokenSource {}

impl Credentials {
    /// The password for a login starting now: a fresh token, or the stored password.
    pub async fn login_password(
        &self,
        endpoint: &str,
    ) -> Result<SecretString, super::provider::SourceError> {
        match &self.token {
            Some(t) => t.0.password(endpoint).await,
            None => Ok(self.password.clone()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("version", &self.version)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("the secret is not a JSON object with the expected fields ({0})")]
    Malformed(String),
    #[error("the secret has no {0:?} field")]
    Missing(&'static str),
    #[error("the secret's {0:?} field is empty")]
    Empty(&'static str),
    #[error("the secret's port is not a valid TCP port")]
    BadPort,
}

#[derive(Deserialize)]
struct RawSecret {
    username: Option<String>,
    password: Option<Zeroizing<String>>,
    host: Option<String>,
    port: Option<serde_json::Value>,
    dbname: Option<String>,
    #[allow(dead_code)]
    engine: Option<String>,
}

impl Credentials {
    /// Parses the RDS secret JSON. `version` is recorded as given.
    pub fn from_json(bytes: &[u8], version: String) -> Result<Self, CredentialsError> {
        // serde_json's error text can quote input; keep only its category and position.
        let raw: RawSecret = serde_json::from_slice(bytes).map_err(|e| {
            CredentialsError::Malformed(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let username = raw.username.ok_or(CredentialsError::Missing("username"))?;
        let password = raw.password.ok_or(CredentialsError::Missing("password"))?;
        if username.is_empty() {
            return Err(CredentialsError::Empty("username"));
        }
        if password.is_empty() {
            return Err(CredentialsError::Empty("password"));
        }
        Ok(Self {
            username,
            password: SecretString::new(password.to_string()),
            host: raw.host.filter(|h| !h.is_empty()),
            port: raw.port.map(parse_port).transpose()?,
            dbname: raw.dbname.filter(|d| !d.is_empty()),
            version,
            token: None,
        })
    }
}

fn parse_port(v: serde_json::Value) -> Result<u16, CredentialsError> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|p| *p != 0)
    .ok_or(CredentialsError::BadPort)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rds_secret_with_numeric_or_string_port() {
        let c = Credentials::from_json(
            br#"{"engine":"postgres","username":"u","password":"p","host":"h","port":5432,"dbname":"d"}"#,
            "v1".into(),
        )
        .unwrap();
        assert_eq!(c.username, "u");
        assert_eq!(c.password.expose(), "p");
        assert_eq!(c.port, Some(5432));
        let c = Credentials::from_json(
            br#"{"username":"u","password":"p","port":"6543"}"#,
            "v".into(),
        )
        .unwrap();
        assert_eq!(c.port, Some(6543));
        assert_eq!(c.host, None);
    }

    #[test]
    fn rejects_missing_fields_without_quoting_the_secret() {
        let e = Credentials::from_json(br#"{"username":"u"}"#, "v".into()).unwrap_err();
        assert_eq!(e, CredentialsError::Missing("password"));
        let e = Credentials::from_json(br#"{"username":"u","password":"s3cr3t""#, "v".into())
            .unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"));
        let e = Credentials::from_json(
            br#"{"username":"u","password":"p","port":70000}"#,
            "v".into(),
        )
        .unwrap_err();
        assert_eq!(e, CredentialsError::BadPort);
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials::from_json(br#"{"username":"u","password":"topsecret"}"#, "v".into())
            .unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
