//! RDS IAM authentication (`source = "rds-iam"`): the password of each new upstream login is
//! an RDS auth token, a SigV4-presigned `connect` action for `host:port` and the database user,
//! valid 15 minutes: byte for byte what `aws rds generate-db-auth-token` prints. It is signed
//! with the AWS SDK's signer (`aws-sigv4`) and credential chain (`aws-config`: environment,
//! profile, IRSA web identity, container and instance credentials).
//!
//! A token is reused until 5 minutes before it, or the AWS credentials it was signed with,
//! expire; the next login then signs a fresh one. A new token is not a new credential: the
//! generation does not change and open connections stay. The token never leaves this module
//! except as the password of a login: `/status` sees only when it was signed and expires.

use super::sdk;
use crate::config::RdsIamSourceConfig;
use crate::secrets::credentials::TokenSource;
use crate::secrets::provider::{LoginToken, SecretProvider, SourceError, Stage, TokenStatus};
use crate::secrets::{Credentials, SecretString};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long RDS accepts a token.
pub const LIFETIME: Duration = Duration::from_secs(900);
/// A token (or the AWS credentials behind it) this close to expiry is replaced.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// The credential source: the configured user, with a [`TokenSigner`] for the passwords.
pub struct RdsIam {
    user: String,
    /// The first upstream host: a fetch signs a token for it, so a source that cannot sign
    /// fails there.
    endpoint: String,
    signer: Arc<TokenSigner>,
}

/// Signs (and reuses) tokens for the user, one per `host:port` logged in to (with several
/// `upstream.hosts`, each host's token names that host).
pub struct TokenSigner {
    user: String,
    region: String,
    credentials: SharedCredentialsProvider,
    current: Mutex<HashMap<String, Signed>>,
}

struct Signed {
    token: SecretString,
    signed_at: SystemTime,
    /// The token's own expiry, or the AWS credentials', whichever is first.
    valid_until: SystemTime,
}

/// The source for database `host:port` (the upstream) and `[credentials.rds_iam]`.
pub async fn source(cfg: &RdsIamSourceConfig, host: &str, port: u16) -> anyhow::Result<RdsIam> {
    let sdk = sdk::load_for(cfg.region.clone(), cfg.endpoint_url.as_deref()).await?;
    let credentials = sdk.credentials_provider().ok_or_else(|| {
        anyhow::anyhow!("no AWS credential chain for rds-iam (the SDK found no provider)")
    })?;
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
    let signer = TokenSigner {
        user: cfg.user.clone(),
        region,
        credentials,
        current: Mutex::new(HashMap::new()),
    };
    Ok(RdsIam {
        user: cfg.user.clone(),
        endpoint: format!("{host}:{port}"),
        signer: Arc::new(signer),
    })
}

impl SecretProvider for RdsIam {
    fn kind(&self) -> &'static str {
        "rds-iam"
    }

    /// Always the same credential (version "rds-iam"): the user, with the signer for its
    /// passwords. A token is signed now, so a source that cannot sign fails here.
    fn fetch(&self, _stage: Stage) -> BoxFuture<'_, Result<Credentials, SourceError>> {
        Box::pin(async move {
            self.signer.password(&self.endpoint).await?;
            Ok(Credentials {
                username: self.user.clone(),
                password: SecretString::new(String::new()),
                host: None,
                port: None,
                dbname: None,
                version: "rds-iam".into(),
                token: Some(TokenSource(self.signer.clone())),
            })
        })
    }

    fn current_version(&self) -> BoxFuture<'_, Result<Option<String>, SourceError>> {
        Box::pin(async { Ok(Some("rds-iam".into())) })
    }
}

impl TokenSigner {
    async fn sign_now(&self, endpoint: &str) -> Result<Signed, SourceError> {
        let creds = self.credentials.provide_credentials().await.map_err(|e| {
            SourceError::Unavailable(format!("no AWS credentials to sign an RDS auth token: {e}"))
        })?;
        let now = SystemTime::now();
        let token = sign_token(endpoint, &self.user, &self.region, &creds, now)
            .map_err(SourceError::Invalid)?;
        let mut valid_until = now + LIFETIME;
        if let Some(expiry) = creds.expiry() {
            valid_until = valid_until.min(expiry);
        }
        Ok(Signed {
            token: SecretString::new(token),
            signed_at: now,
            valid_until,
        })
    }
}

impl LoginToken for TokenSigner {
    fn password<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> BoxFuture<'a, Result<SecretString, SourceError>> {
        Box::pin(async move {
            let fresh_enough = SystemTime::now() + REFRESH_BEFORE;
            if let Some(s) = self.current.lock().expect("token lock").get(endpoint) {
                if s.valid_until > fresh_enough {
                    return Ok(s.token.clone());
                }
            }
            let signed = self.sign_now(endpoint).await?;
            let token = signed.token.clone();
            tracing::debug!(endpoint, "signed a new RDS auth token");
            let mut current = self.current.lock().expect("token lock");
            current.insert(endpoint.to_owned(), signed);
            Ok(token)
        })
    }

    /// The most recently signed token's times.
    fn status(&self) -> Option<TokenStatus> {
        let current = self.current.lock().expect("token lock");
        current
            .values()
            .max_by_key(|s| s.signed_at)
            .map(|s| TokenStatus {
                signed_at: s.signed_at,
                valid_until: s.valid_until,
            })
    }
}

/// The RDS auth token for `endpoint` (`host:port`) and `user`, signed at `at`: the query of a
/// presigned `GET https://host:port/?Action=connect&DBUser=user` (empty body) for service
/// `rds-db`, valid 900 s, without the scheme, its parameters in botocore's order.
pub fn sign_token(
    endpoint: &str,
    user: &str,
    region: &str,
    creds: &aws_credential_types::Credentials,
    at: SystemTime,
) -> Result<String, String> {
    let identity: Identity = creds.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(LIFETIME);
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| format!("RDS auth token signing parameters: {e}"))?
        .into();
    let operation = format!("Action=connect&DBUser={}", encode(user));
    let url = format!("https://{endpoint}/?{operation}");
    let request = SignableRequest::new(
        "GET",
        url,
        std::iter::once(("host", endpoint)),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| format!("RDS auth token request: {e}"))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| format!("signing an RDS auth token: {e}"))?
        .into_parts();
    // aws-sigv4 lists the signature before the session token; botocore puts it last.
    let (signature, auth): (Vec<_>, Vec<_>) = instructions
        .params()
        .iter()
        .partition(|(k, _)| *k == "X-Amz-Signature");
    let mut token = format!("{endpoint}/?{operation}");
    for (k, v) in auth.into_iter().chain(signature) {
        token.push('&');
        token.push_str(k);
        token.push('=');
        token.push_str(&encode(v));
    }
    Ok(token)
}

/// Percent-encoding as SigV4 (and botocore's query strings) spell it: all but A-Z a-z 0-9
/// `-` `_` `.` `~`, upper-case hex.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case of the fixture botocore made (tests/fixtures/rds_iam/make.py), byte for byte.
    #[test]
    fn tokens_are_what_botocore_generates() {
        let text = include_str!("../../../tests/fixtures/rds_iam/tokens.json");
        let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 2);
        for c in cases {
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            let mut creds = aws_credential_types::Credentials::builder()
                .access_key_id(s("access_key"))
                .secret_access_key(s("secret_key"))
                .provider_name("fixture");
            if let Some(t) = c["session_token"].as_str() {
                creds = creds.session_token(t);
            }
            let at = humantime::parse_rfc3339(&s("at")).unwrap();
            let endpoint = format!("{}:{}", s("host"), c["port"]);
            let token = sign_token(&endpoint, &s("user"), &s("region"), &creds.build(), at);
            assert_eq!(token.unwrap(), s("token"));
        }
    }

    fn signer(expiry: Option<SystemTime>) -> TokenSigner {
        let mut creds = aws_credential_types::Credentials::builder()
            .access_key_id("AKIDEXAMPLE")
            .secret_access_key("secret")
            .provider_name("test");
        if let Some(at) = expiry {
            creds = creds.expiry(at);
        }
        TokenSigner {
            user: "app_iam".into(),
            region: "us-east-1".into(),
            credentials: SharedCredentialsProvider::new(creds.build()),
            current: Mutex::new(HashMap::new()),
        }
    }

    const DB: &str = "db:5432";

    /// Changes the times of the token held for DB.
    fn age(s: &TokenSigner, f: impl FnOnce(&mut Signed)) {
        f(s.current.lock().unwrap().get_mut(DB).unwrap());
    }

    /// Each host gets a token naming it; a second host's login does not replace the first's.
    #[tokio::test]
    async fn each_host_gets_its_own_token() {
        let s = signer(None);
        let a = s.password(DB).await.unwrap();
        let b = s.password("db-2:5432").await.unwrap();
        assert!(a.expose().starts_with("db:5432/?") && b.expose().starts_with("db-2:5432/?"));
        assert_eq!(s.password(DB).await.unwrap().expose(), a.expose(), "reused");
    }

    /// A token is reused while it has 5 minutes left; credentials that expire sooner make
    /// every login sign anew, and the token never outlives them.
    #[tokio::test]
    async fn tokens_are_reused_until_they_or_their_credentials_near_expiry() {
        let lasting = signer(None);
        assert!(lasting.status().is_none());
        let first = lasting.password(DB).await.unwrap();
        let status = lasting.status().unwrap();
        assert_eq!(status.valid_until, status.signed_at + LIFETIME);
        age(&lasting, |s| s.signed_at -= Duration::from_secs(1));
        assert_eq!(lasting.password(DB).await.unwrap().expose(), first.expose());
        // Ten minutes on, 5 remain: the next login gets a fresh token.
        let aged = SystemTime::now() + REFRESH_BEFORE - Duration::from_secs(1);
        age(&lasting, |s| s.valid_until = aged);
        lasting.password(DB).await.unwrap();
        assert!(lasting.status().unwrap().valid_until > aged);

        let expiring = SystemTime::now() + Duration::from_secs(120);
        let short = signer(Some(expiring));
        short.password(DB).await.unwrap();
        let s1 = short.status().unwrap();
        assert_eq!(s1.valid_until, expiring, "not past the credentials' expiry");
        age(&short, |s| s.signed_at -= Duration::from_secs(1));
        short.password(DB).await.unwrap();
        assert!(short.status().unwrap().signed_at > s1.signed_at - Duration::from_secs(1));
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode("x y+z/=@"), "x%20y%2Bz%2F%3D%40");
    }
}
