//! AWS Secrets Manager as a credential source.
//!
//! - [`secrets_manager`]: the provider (GetSecretValue with an explicit stage, DescribeSecret
//!   for the periodic check);
//! - [`sqs`]: the event listener, one per queue, routing each event to the databases whose
//!   secret it names (long polling; deletes every message it has read);
//! - [`events`]: the pure core that understands the change events arriving over SQS
//!   (EventBridge and CloudTrail shapes, optionally inside an SNS envelope), and
//!   [`SecretMatcher`], which decides whether an event names the configured secret;
//! - [`rds_iam`]: RDS IAM auth tokens as a credential source, signed for each login;
//! - `sdk`: the SDK's configuration (rustls on ring) and what its errors mean.

pub mod events;
pub mod rds_events;
pub mod rds_iam;
mod sdk;
pub mod secrets_manager;
pub mod sqs;

use crate::config::AwsSourceConfig;
use rds_events::RdsIds;
use secrets_manager::SecretsManager;
use sqs::{Queues, Subscription};
use std::sync::Arc;

/// The provider for database `database`'s `[credentials.aws]`, and its subscription to the
/// queue when `queue_url` is set.
pub async fn source(
    cfg: &AwsSourceConfig,
    database: &str,
    rds: RdsIds,
    queues: &Arc<Queues>,
) -> anyhow::Result<(SecretsManager, Option<Subscription>)> {
    let sdk = sdk::load(cfg).await?;
    let provider = SecretsManager::new(&sdk, cfg.secret_id.clone());
    let listener = cfg.queue_url.clone().map(|url| {
        let matcher = SecretMatcher::new(&cfg.secret_id)
            .account(cfg.expected_account.clone())
            .rds(rds);
        queues.subscribe(&sdk, url, database.to_owned(), matcher)
    });
    Ok((provider, listener))
}

/// The configured secret, by name or ARN, matched against the names and ARNs events carry.
/// Secrets Manager ARNs end in the name plus a random 6-character suffix (`prod/db-AbC123`).
#[derive(Debug, Clone)]
pub struct SecretMatcher {
    name: String,
    arn: Option<String>,
    /// The AWS account events must come from, when known.
    account: Option<String>,
    /// The RDS cluster or instance whose failover events concern the database.
    rds: RdsIds,
}

impl SecretMatcher {
    pub fn new(secret_id: &str) -> Self {
        match name_from_arn(secret_id) {
            Some(name) => Self {
                name,
                arn: Some(secret_id.to_owned()),
                account: secret_id.split(':').nth(4).map(str::to_owned),
                rds: RdsIds::default(),
            },
            None => Self {
                name: secret_id.to_owned(),
                arn: None,
                account: None,
                rds: RdsIds::default(),
            },
        }
    }

    /// Events must come from `account` (`credentials.aws.expected_account`); None keeps the
    /// account of the secret's ARN, if it was given as one.
    pub fn account(mut self, account: Option<String>) -> Self {
        if account.is_some() {
            self.account = account;
        }
        self
    }

    /// The account events must come from, when known.
    /// Failover events of this RDS cluster or instance concern the database too.
    pub fn rds(mut self, ids: RdsIds) -> Self {
        self.rds = ids;
        self
    }

    pub fn rds_ids(&self) -> &RdsIds {
        &self.rds
    }

    pub fn expected_account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    pub fn matches(&self, id: &str) -> bool {
        if let (Some(arn), true) = (&self.arn, id.starts_with("arn:")) {
            if arn == id {
                return true;
            }
        }
        match name_from_arn(id) {
            Some(name) => name == self.name,
            None => id == self.name,
        }
    }
}

/// The secret name in a Secrets Manager ARN, without the random suffix when there is one.
/// Full ARNs always carry the suffix; a partial ARN of a name that itself ends in `-` and six
/// letters or digits would lose them, so configure secrets by name or by full ARN.
fn name_from_arn(id: &str) -> Option<String> {
    let rest = id.strip_prefix("arn:")?;
    let (_, resource) = rest.split_once(":secret:")?;
    Some(strip_suffix(resource).to_owned())
}

fn strip_suffix(resource: &str) -> &str {
    match resource.rsplit_once('-') {
        Some((name, suffix))
            if suffix.len() == 6 && suffix.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            name
        }
        _ => resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app/db-AbC123";

    #[test]
    fn names_and_arns_match_each_other() {
        let by_name = SecretMatcher::new("prod/app/db");
        assert!(by_name.matches("prod/app/db"));
        assert!(by_name.matches(ARN));
        assert!(
            by_name.matches("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app/db")
        );
        assert!(!by_name.matches("prod/app/db2"));
        assert!(
            !by_name.matches(
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app/other-AbC123"
            )
        );
        let by_arn = SecretMatcher::new(ARN);
        assert!(by_arn.matches(ARN));
        assert!(by_arn.matches("prod/app/db"));
        assert!(!by_arn.matches("prod/app"));
    }

    #[test]
    fn a_name_ending_in_a_hyphenated_word_is_not_mistaken_for_a_suffix_only_when_short() {
        let m = SecretMatcher::new("svc-db");
        assert!(m.matches("svc-db"));
        assert!(m.matches("arn:aws:secretsmanager:eu-west-1:1:secret:svc-db-x9Y8z7"));
    }
}
