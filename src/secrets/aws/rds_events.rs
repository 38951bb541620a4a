//! RDS failover events on the same SQS queue as the secret's: `"source": "aws.rds"` from
//! EventBridge (directly or through SNS), or an RDS event subscription's own SNS notification.
//! An event in the failover category, for the configured `upstream.rds_cluster_id` or
//! `upstream.rds_instance_id`, starts a search for the writer at once (design 8.4).
//!
//! The event IDs are AWS's published ones ("Amazon RDS event categories and event messages"):
//!
//! - DB cluster (Aurora, Multi-AZ DB cluster): RDS-EVENT-0070 promoting the previous primary
//!   again, 0071 failover completed, 0072 same-AZ failover started, 0073 cross-AZ failover
//!   started;
//! - DB instance (Multi-AZ instance): RDS-EVENT-0013 failover started, 0015 failover to the
//!   standby complete, 0049 failover completed, 0050 activation started, 0051 activation
//!   completed, 0065 recovered from a partial failover.
//!
//! Others of the category move nothing (0034 abandons a requested failover, 0069 a failed
//! cluster failover leaves the writer where it was) and are ignored, as is anything for
//! another cluster or instance.

use super::events::EventAction;
use serde_json::Value;

const CLUSTER_EVENTS: &[&str] = &[
    "RDS-EVENT-0070",
    "RDS-EVENT-0071",
    "RDS-EVENT-0072",
    "RDS-EVENT-0073",
];
const INSTANCE_EVENTS: &[&str] = &[
    "RDS-EVENT-0013",
    "RDS-EVENT-0015",
    "RDS-EVENT-0049",
    "RDS-EVENT-0050",
    "RDS-EVENT-0051",
    "RDS-EVENT-0065",
];

/// The cluster and instance whose failovers concern a database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RdsIds {
    pub cluster: Option<String>,
    pub instance: Option<String>,
}

impl RdsIds {
    pub fn is_empty(&self) -> bool {
        self.cluster.is_none() && self.instance.is_none()
    }
}

/// An EventBridge event from `aws.rds` (the account already checked).
pub fn eventbridge(v: &Value, ours: &RdsIds) -> EventAction {
    let d = v.get("detail").unwrap_or(&Value::Null);
    let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("");
    let kind = match s("SourceType") {
        "CLUSTER" => Kind::Cluster,
        "DB_INSTANCE" => Kind::Instance,
        other => return EventAction::Ignore(format!("an RDS event about a {other:?}")),
    };
    let id = s("SourceIdentifier");
    let id = match id {
        "" => s("SourceArn").rsplit(':').next().unwrap_or(""),
        id => id,
    };
    decide(kind, id, s("EventID"), ours)
}

/// An RDS event subscription's notification, as SNS delivers it (`Message` already parsed):
/// `Event Source`, `Source ID`, and the event ID at the end of `Event ID`'s link.
pub fn subscription(v: &Value, ours: &RdsIds) -> EventAction {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let kind = match s("Event Source") {
        "db-cluster" => Kind::Cluster,
        "db-instance" => Kind::Instance,
        other => return EventAction::Ignore(format!("an RDS event about a {other:?}")),
    };
    let event = s("Event ID").rsplit('#').next().unwrap_or("");
    decide(kind, s("Source ID"), event, ours)
}

/// Whether an SNS message is an RDS event subscription's notification.
pub fn is_subscription(v: &Value) -> bool {
    v.get("Event ID").is_some() && v.get("Source ID").is_some()
}

#[derive(Clone, Copy)]
enum Kind {
    Cluster,
    Instance,
}

fn decide(kind: Kind, id: &str, event: &str, ours: &RdsIds) -> EventAction {
    // EventBridge has shown identifiers both bare and as "rds:name".
    let id = id.strip_prefix("rds:").unwrap_or(id);
    let (want, events) = match kind {
        Kind::Cluster => (&ours.cluster, CLUSTER_EVENTS),
        Kind::Instance => (&ours.instance, INSTANCE_EVENTS),
    };
    if want.as_deref() != Some(id) || id.is_empty() {
        return EventAction::Ignore("an RDS event for another cluster or instance".into());
    }
    if !events.contains(&event) {
        return EventAction::Ignore(format!("RDS {event} does not move the writer"));
    }
    EventAction::Failover {
        event: event.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::SecretMatcher;
    use super::super::events::{EventAction, classify};
    use super::RdsIds;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/rds/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn sns(body: &str) -> String {
        serde_json::json!({"Type": "Notification", "MessageId": "m", "Message": body}).to_string()
    }

    fn ours(cluster: Option<&str>, instance: Option<&str>) -> SecretMatcher {
        SecretMatcher::new("prod/app/db").rds(RdsIds {
            cluster: cluster.map(str::to_owned),
            instance: instance.map(str::to_owned),
        })
    }

    fn failover(event: &str) -> EventAction {
        EventAction::Failover {
            event: event.into(),
        }
    }

    #[test]
    fn failover_events_of_the_configured_cluster_or_instance_start_a_search() {
        let both = ours(Some("app-cluster"), Some("app-db"));
        for (name, want) in [
            ("cluster-failover-started", failover("RDS-EVENT-0073")),
            ("cluster-failover-completed", failover("RDS-EVENT-0071")),
            ("instance-failover-completed", failover("RDS-EVENT-0049")),
        ] {
            let body = fixture(name);
            assert_eq!(classify(&body, &both), want, "{name}");
            assert_eq!(classify(&sns(&body), &both), want, "{name} via SNS");
        }
        // An RDS event subscription's own notification, through SNS.
        let note = sns(&fixture("subscription-instance-failover"));
        assert_eq!(classify(&note, &both), failover("RDS-EVENT-0015"));
    }

    #[test]
    fn other_clusters_other_events_and_unconfigured_ids_are_ignored() {
        let ignored =
            |body: &str, m: &SecretMatcher| matches!(classify(body, m), EventAction::Ignore(_));
        let cluster = ours(Some("app-cluster"), None);
        assert!(
            ignored(&fixture("cluster-failover-failed"), &cluster),
            "0069 moves nothing"
        );
        assert!(
            ignored(&fixture("instance-failover-completed"), &cluster),
            "no instance configured"
        );
        let instance = ours(None, Some("app-db"));
        assert!(
            ignored(&fixture("instance-failover-abandoned"), &instance),
            "0034"
        );
        assert!(ignored(&fixture("cluster-failover-started"), &instance));
        let other = ours(Some("other-cluster"), Some("other-db"));
        for name in ["cluster-failover-started", "instance-failover-completed"] {
            assert!(ignored(&fixture(name), &other), "{name}");
        }
        // Without RDS ids an aws.rds event is just another source's.
        assert!(ignored(
            &fixture("cluster-failover-started"),
            &ours(None, None)
        ));
        // From another account than the secret's: not ours, whatever it names.
        let pinned = ours(Some("app-cluster"), None).account(Some("999999999999".into()));
        assert!(ignored(&fixture("cluster-failover-started"), &pinned));
    }

    #[test]
    fn subscription_notifications_pass_the_same_source_and_account_checks() {
        let ignored =
            |body: &str, m: &SecretMatcher| matches!(classify(body, m), EventAction::Ignore(_));
        let note = fixture("subscription-instance-failover");
        let mine = ours(None, Some("app-db")).account(Some("123456789012".into()));
        let topic = |account: &str| {
            serde_json::json!({"Type": "Notification", "MessageId": "m", "Message": note,
                "TopicArn": format!("arn:aws:sns:us-east-1:{account}:rds-events")})
            .to_string()
        };
        assert_eq!(
            classify(&topic("123456789012"), &mine),
            failover("RDS-EVENT-0015")
        );
        assert!(
            ignored(&topic("999999999999"), &mine),
            "another account's topic"
        );
        let other = ours(None, Some("app-db")).account(Some("999999999999".into()));
        assert!(ignored(&sns(&note), &other), "another account's instance");
        let mut v: serde_json::Value = serde_json::from_str(&note).unwrap();
        v.as_object_mut().unwrap().remove("Source ARN");
        assert!(
            ignored(&sns(&v.to_string()), &mine),
            "no Source ARN to tell"
        );
        v["Source ARN"] = "arn:aws:ec2:us-east-1:123456789012:instance/i-1".into();
        assert!(ignored(&sns(&v.to_string()), &mine), "not an RDS source");
    }
}
