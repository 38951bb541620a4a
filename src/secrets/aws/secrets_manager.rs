//! Secrets Manager as a [`SecretProvider`]: GetSecretValue with an explicit `VersionStage`
//! (AWSCURRENT, or AWSPENDING after a refused login or for a prefetch), the VersionId kept as
//! the credential's version; DescribeSecret for the cheap periodic check.

use super::sdk::source_error;
use crate::secrets::Credentials;
use crate::secrets::provider::{SecretProvider, SourceError, Stage};
use aws_config::SdkConfig;
use aws_sdk_secretsmanager::Client;
use futures::future::BoxFuture;
use zeroize::Zeroizing;

pub struct SecretsManager {
    client: Client,
    secret_id: String,
}

impl SecretsManager {
    pub fn new(sdk: &SdkConfig, secret_id: String) -> Self {
        Self {
            client: Client::new(sdk),
            secret_id,
        }
    }

    async fn get(&self, stage: Stage) -> Result<Credentials, SourceError> {
        let label = stage_label(stage);
        let mut out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .version_stage(label)
            .send()
            .await
            .map_err(|e| source_error(&format!("GetSecretValue ({label})"), &e))?;
        let version = out.version_id.take().ok_or_else(|| {
            SourceError::Invalid(format!("GetSecretValue ({label}) returned no VersionId"))
        })?;
        // Taken out of the response and zeroized when parsed (the SDK's own buffers are not).
        let bytes = Zeroizing::new(match (out.secret_string.take(), out.secret_binary.take()) {
            (Some(s), _) => s.into_bytes(),
            (None, Some(b)) => b.into_inner(),
            (None, None) => {
                return Err(SourceError::Invalid(format!(
                    "version {version} ({label}) of the secret holds no value"
                )));
            }
        });
        Credentials::from_json(&bytes, version.clone()).map_err(|e| {
            SourceError::Invalid(format!("version {version} ({label}) of the secret: {e}"))
        })
    }

    async fn describe(&self) -> Result<Option<String>, SourceError> {
        let out = self
            .client
            .describe_secret()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| source_error("DescribeSecret", &e))?;
        let current = out.version_ids_to_stages().and_then(|m| {
            m.iter()
                .find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT"))
                .map(|(version, _)| version.clone())
        });
        match current {
            Some(v) => Ok(Some(v)),
            None => Err(SourceError::Invalid(
                "DescribeSecret shows no version labelled AWSCURRENT".into(),
            )),
        }
    }
}

fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Current => "AWSCURRENT",
        Stage::Pending => "AWSPENDING",
    }
}

impl SecretProvider for SecretsManager {
    fn kind(&self) -> &'static str {
        "aws"
    }

    fn fetch(&self, stage: Stage) -> BoxFuture<'_, Result<Credentials, SourceError>> {
        Box::pin(self.get(stage))
    }

    fn current_version(&self) -> BoxFuture<'_, Result<Option<String>, SourceError>> {
        Box::pin(self.describe())
    }
}
