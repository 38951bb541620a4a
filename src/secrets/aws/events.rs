//! Secrets Manager change events as they arrive on an SQS queue, from EventBridge directly or
//! through an SNS topic. Understood (design.md section 5):
//!
//! - `Secret Label Updated` with `detail.labelUpdated = "AWSCURRENT"`;
//! - `AWS Service Event via CloudTrail` with `eventName = RotationSucceeded` (secret id in
//!   `additionalEventData.SecretId`, `serviceEventDetails.secretId` or `resources`);
//! - `AWS API Call via CloudTrail` with `UpdateSecretVersionStage` to AWSCURRENT (secret id in
//!   `requestParameters.secretId`, or `responseElements.arn` / `aRN`);
//! - `PutSecretValue` to AWSPENDING, which only warrants a prefetch; to AWSCURRENT (or with no
//!   stages, which means AWSCURRENT) it is a change like the others.
//!
//! Anything else is ignored; a body that is not such JSON is invalid. Neither is ever retried.

use super::SecretMatcher;
use super::rds_events;
use serde_json::Value;

/// What to do with one queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventAction {
    /// AWSCURRENT moved for our secret: fetch and rotate (version id when the event names it).
    Rotate { version: Option<String> },
    /// A new AWSPENDING version of our secret: fetch it ahead of the switch.
    Prefetch { version: Option<String> },
    /// A well-formed event that is not for us or not a change of AWSCURRENT.
    Ignore(String),
    /// Not an event rotagate can read.
    Invalid(String),
    /// An RDS failover of the database's cluster or instance (this event ID): look for the
    /// writer now.
    Failover { event: String },
}

impl EventAction {
    /// The `outcome` label of `rotagate_events_total` before the attempt's own result.
    pub fn label(&self) -> &'static str {
        match self {
            EventAction::Rotate { .. }
            | EventAction::Prefetch { .. }
            | EventAction::Failover { .. } => "applied",
            EventAction::Ignore(_) => "ignored",
            EventAction::Invalid(_) => "invalid",
        }
    }
}

/// Classifies one message body for the secret `ours`.
pub fn classify(body: &str, ours: &SecretMatcher) -> EventAction {
    let Ok(mut v) = serde_json::from_str::<Value>(body) else {
        return EventAction::Invalid("the message body is not JSON".into());
    };
    // An SNS envelope carries the EventBridge event as a JSON string in `Message`; its topic
    // names the account that published it.
    let mut topic_account = None;
    if v.get("Type").and_then(Value::as_str) == Some("Notification") {
        topic_account = v
            .get("TopicArn")
            .and_then(Value::as_str)
            .and_then(arn_account)
            .map(str::to_owned);
        match v
            .get("Message")
            .and_then(Value::as_str)
            .map(serde_json::from_str::<Value>)
        {
            Some(Ok(inner)) => v = inner,
            _ => {
                return EventAction::Invalid(
                    "an SNS notification whose Message is not JSON".into(),
                );
            }
        }
    }
    if rds_events::is_subscription(&v) {
        // The same checks as any event: from RDS (the format says so) and from the secret's
        // account, told by the event's Source ARN and the SNS topic it came through.
        let source = v.get("Source ARN").and_then(Value::as_str);
        if let Some(want) = ours.expected_account() {
            let from = source.and_then(arn_account);
            if from != Some(want) || topic_account.as_deref().is_some_and(|t| t != want) {
                return EventAction::Ignore(
                    "an RDS event notification from another AWS account than the secret's \
                     (or with no Source ARN to tell)"
                        .into(),
                );
            }
        }
        if !source.is_some_and(|s| s.starts_with("arn:aws") && s.contains(":rds:")) {
            return EventAction::Ignore("an RDS event notification whose source is not RDS".into());
        }
        return rds_events::subscription(&v, ours.rds_ids());
    }
    let Some(detail_type) = v.get("detail-type").and_then(Value::as_str) else {
        return EventAction::Invalid("no detail-type: not an EventBridge event".into());
    };
    if v.get("source").and_then(Value::as_str) == Some("aws.rds") && !ours.rds_ids().is_empty() {
        return other_account(&v, ours)
            .unwrap_or_else(|| rds_events::eventbridge(&v, ours.rds_ids()));
    }
    if let Some(ignored) = foreign(&v, ours) {
        return ignored;
    }
    let detail = v.get("detail").cloned().unwrap_or(Value::Null);
    let ids = secret_ids(&v, &detail);
    if ids.is_empty() {
        return EventAction::Invalid(format!("a {detail_type:?} event that names no secret"));
    }
    if !ids.iter().any(|id| ours.matches(id)) {
        return EventAction::Ignore("an event for another secret".into());
    }
    action(detail_type, &detail)
}

/// An event not from Secrets Manager, or from an account other than the secret's, is not
/// for rotagate whatever it names: anyone who can send to the queue could write one.
fn foreign(v: &Value, ours: &SecretMatcher) -> Option<EventAction> {
    match v.get("source").and_then(Value::as_str) {
        Some("aws.secretsmanager") => {}
        Some(_) => {
            return Some(EventAction::Ignore(
                "an event whose source is not aws.secretsmanager".into(),
            ));
        }
        None => {
            return Some(EventAction::Invalid(
                "no source: not an EventBridge event".into(),
            ));
        }
    }
    other_account(v, ours)
}

/// The account of an ARN (`arn:partition:service:region:account:...`).
fn arn_account(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// An event from another account than the secret's (when that is known).
fn other_account(v: &Value, ours: &SecretMatcher) -> Option<EventAction> {
    let want = ours.expected_account()?;
    (v.get("account").and_then(Value::as_str) != Some(want))
        .then(|| EventAction::Ignore("an event from another AWS account than the secret's".into()))
}

fn action(detail_type: &str, d: &Value) -> EventAction {
    let s = |path: &[&str]| {
        path.iter()
            .try_fold(d, |v, k| v.get(*k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let event_name = s(&["eventName"]).unwrap_or_default();
    match (detail_type, event_name.as_str()) {
        ("Secret Label Updated", _) if s(&["labelUpdated"]).as_deref() == Some("AWSCURRENT") => {
            EventAction::Rotate {
                version: s(&["versionId"]),
            }
        }
        ("AWS Service Event via CloudTrail", "RotationSucceeded") => {
            EventAction::Rotate { version: None }
        }
        ("AWS API Call via CloudTrail", "UpdateSecretVersionStage")
            if s(&["requestParameters", "versionStage"]).as_deref() == Some("AWSCURRENT") =>
        {
            EventAction::Rotate {
                version: s(&["requestParameters", "moveToVersionId"]),
            }
        }
        ("AWS API Call via CloudTrail", "PutSecretValue")
            if stages(d).iter().any(|st| st == "AWSCURRENT") =>
        {
            EventAction::Rotate {
                version: s(&["responseElements", "versionId"]),
            }
        }
        ("AWS API Call via CloudTrail", "PutSecretValue")
            if stages(d).iter().any(|st| st == "AWSPENDING") =>
        {
            EventAction::Prefetch {
                version: s(&["responseElements", "versionId"]),
            }
        }
        _ => EventAction::Ignore(format!(
            "{detail_type} {event_name} does not move AWSCURRENT"
        )),
    }
}

/// PutSecretValue's stages: `versionStages` as given, AWSCURRENT when none is given.
fn stages(d: &Value) -> Vec<String> {
    match d
        .pointer("/requestParameters/versionStages")
        .and_then(Value::as_array)
    {
        Some(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        None => vec!["AWSCURRENT".into()],
    }
}

/// Every place these events name a secret.
fn secret_ids(event: &Value, d: &Value) -> Vec<String> {
    let pointers = [
        "/secretId",
        "/secretArn",
        "/name",
        "/additionalEventData/SecretId",
        "/serviceEventDetails/secretId",
        "/requestParameters/secretId",
        "/responseElements/arn",
        "/responseElements/aRN",
    ];
    let mut ids: Vec<String> = pointers
        .iter()
        .filter_map(|p| d.pointer(p))
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if let Some(resources) = event.get("resources").and_then(Value::as_array) {
        ids.extend(
            resources
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned),
        );
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app/db-AbC123";

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/aws/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn sns(inner: &str) -> String {
        serde_json::json!({"Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:123456789012:rotagate", "Message": inner}).to_string()
    }

    #[test]
    fn every_event_shape_is_understood_directly_and_through_sns() {
        let ours = SecretMatcher::new("prod/app/db");
        let expected = [
            (
                "label-updated",
                EventAction::Rotate {
                    version: Some("v-new".into()),
                },
            ),
            (
                "rotation-succeeded-additional",
                EventAction::Rotate { version: None },
            ),
            (
                "rotation-succeeded-service-details",
                EventAction::Rotate { version: None },
            ),
            (
                "rotation-succeeded-resources",
                EventAction::Rotate { version: None },
            ),
            (
                "update-stage-secret-id",
                EventAction::Rotate {
                    version: Some("v-new".into()),
                },
            ),
            (
                "update-stage-arn",
                EventAction::Rotate {
                    version: Some("v-new".into()),
                },
            ),
            (
                "update-stage-arn-upper",
                EventAction::Rotate {
                    version: Some("v-new".into()),
                },
            ),
            (
                "put-pending",
                EventAction::Prefetch {
                    version: Some("v-pending".into()),
                },
            ),
        ];
        for (name, action) in expected {
            let body = fixture(name);
            assert_eq!(classify(&body, &ours), action, "{name}");
            assert_eq!(classify(&sns(&body), &ours), action, "{name} via SNS");
            assert_eq!(
                classify(&body, &SecretMatcher::new(ARN)),
                action,
                "{name} matched by ARN"
            );
        }
    }

    #[test]
    fn other_secrets_other_stages_and_garbage_are_not_rotations() {
        let ours = SecretMatcher::new("prod/app/db");
        let other = fixture("label-updated").replace("prod/app/db", "prod/other/db");
        assert!(matches!(classify(&other, &ours), EventAction::Ignore(_)));
        let pending_label = fixture("label-updated").replace("\"AWSCURRENT\"", "\"AWSPENDING\"");
        assert!(matches!(
            classify(&pending_label, &ours),
            EventAction::Ignore(_)
        ));
        let to_previous =
            fixture("update-stage-secret-id").replace("\"AWSCURRENT\"", "\"AWSPREVIOUS\"");
        assert!(matches!(
            classify(&to_previous, &ours),
            EventAction::Ignore(_)
        ));
        for garbage in [
            "",
            "not json",
            "{}",
            "[1,2]",
            r#"{"detail-type":"Secret Label Updated","detail":{}}"#,
            &sns("not json"),
        ] {
            assert!(
                matches!(classify(garbage, &ours), EventAction::Invalid(_)),
                "{garbage:?}"
            );
        }
        assert_eq!(classify("nope", &ours).label(), "invalid");
    }

    #[test]
    fn a_put_secret_value_that_moves_awscurrent_is_a_rotation() {
        let ours = SecretMatcher::new("prod/app/db");
        let unstaged = fixture("put-pending")
            .replace(r#","versionStages":["AWSPENDING"]"#, "")
            .replace("v-pending", "v-put");
        let rotate = EventAction::Rotate {
            version: Some("v-put".into()),
        };
        assert_eq!(classify(&unstaged, &ours), rotate);
        let current = fixture("put-pending").replace("AWSPENDING", "AWSCURRENT");
        assert!(matches!(
            classify(&current, &ours),
            EventAction::Rotate { .. }
        ));
    }

    #[test]
    fn events_from_another_source_or_account_are_dropped() {
        let body = fixture("label-updated");
        let by_name = SecretMatcher::new("prod/app/db");
        let spoofed = body.replace("\"aws.secretsmanager\"", "\"custom.app\"");
        assert!(matches!(
            classify(&spoofed, &by_name),
            EventAction::Ignore(_)
        ));
        let elsewhere = body.replace(
            "\"account\":\"123456789012\"",
            "\"account\":\"999999999999\"",
        );
        // By ARN the account is known; by name it is known once expected_account is set.
        assert!(matches!(
            classify(&elsewhere, &SecretMatcher::new(ARN)),
            EventAction::Ignore(_)
        ));
        assert!(matches!(
            classify(&elsewhere, &by_name),
            EventAction::Rotate { .. }
        ));
        let pinned = SecretMatcher::new("prod/app/db").account(Some("123456789012".into()));
        assert!(matches!(
            classify(&elsewhere, &pinned),
            EventAction::Ignore(_)
        ));
        assert!(matches!(
            classify(&body, &pinned),
            EventAction::Rotate { .. }
        ));
    }
}
