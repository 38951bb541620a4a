//! The AWS SDK's shared configuration, and what its errors mean to the rotation engine.
//!
//! The HTTPS client is hyper with rustls on *ring* (the SDK's default pulls in aws-lc-sys,
//! which doubles the build). Credentials come from the SDK's default chain: environment,
//! profile, web identity (IRSA), the ECS task role, instance metadata.

use crate::config::AwsSourceConfig;
use crate::secrets::provider::SourceError;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use std::time::Duration;

/// Connecting to an AWS endpoint gives up after this long (then the SDK retries).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One Secrets Manager call gives up after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The SDK configuration for this source: region from config, else from the secret's ARN,
/// else the SDK's chain; `endpoint_url` (a local emulator, a VPC endpoint) when set.
pub async fn load(cfg: &AwsSourceConfig) -> anyhow::Result<SdkConfig> {
    let region = cfg.region.clone().or_else(|| region_of(&cfg.secret_id));
    load_for(region, cfg.endpoint_url.as_deref())
        .await
        .map_err(|e| {
            e.context("set credentials.aws.region, give secret_id as an ARN, or set AWS_REGION")
        })
}

/// The SDK's configuration: its credential chain, `region` (else the SDK's chain) and an
/// endpoint for every call (tests).
pub async fn load_for(
    region: Option<String>,
    endpoint_url: Option<&str>,
) -> anyhow::Result<SdkConfig> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(CALL_TIMEOUT)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts);
    if let Some(region) = region {
        loader = loader.region(Region::new(region));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    anyhow::ensure!(sdk.region().is_some(), "no AWS region");
    Ok(sdk)
}

/// The region in a Secrets Manager ARN (`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME`).
fn region_of(secret_id: &str) -> Option<String> {
    let mut parts = secret_id.strip_prefix("arn:")?.split(':');
    let (_partition, service, region) = (parts.next()?, parts.next()?, parts.next()?);
    (service == "secretsmanager" && !region.is_empty()).then(|| region.to_owned())
}

/// Service error codes that retrying soon will not cure: the engine counts them as failed,
/// logs them loudly and keeps serving the last good credential.
const REFUSALS: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "ResourceNotFoundException",
    "DecryptionFailure",
    "InvalidRequestException",
    "InvalidParameterException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
];

/// Classifies an SDK error: throttling, timeouts, network and server errors are transient
/// ([`SourceError::Unavailable`]); refusals are not ([`SourceError::Refused`]). The text is
/// the error chain, which never holds a secret value.
pub fn source_error<E, R>(what: &str, e: &SdkError<E, R>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = format!("{what}: {}", DisplayErrorContext(e));
    let refused = match e {
        SdkError::ServiceError(s) => s.err().code().is_some_and(|c| REFUSALS.contains(&c)),
        SdkError::ConstructionFailure(_) => true,
        _ => false,
    };
    if refused {
        SourceError::Refused(text)
    } else {
        SourceError::Unavailable(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_comes_from_a_secrets_manager_arn() {
        assert_eq!(
            region_of("arn:aws:secretsmanager:eu-west-2:123456789012:secret:db-AbC123").as_deref(),
            Some("eu-west-2")
        );
        assert_eq!(region_of("prod/app/db"), None);
        assert_eq!(region_of("arn:aws:sqs:eu-west-2:1:q"), None);
    }
}
